#!/usr/bin/env python3
"""Write a model directory with a real model's exact shapes and seeded random bf16 weights.

    python3 scripts/shape_model.py SRC_DIR OUT_DIR [--seed N] [--std S]

SRC_DIR needs only config.json and tokenizer.json (they are copied). Why: a device machine
that cannot take the real weights (no network, small transfers) can still run the same
amount of work as the real model, for tokens/s, and compare perplexity bits between its
devices. The weights are a pure function of the seed and the config (numpy's PCG64
Generator), and `ucw hash OUT_DIR` identifies them, so two machines can check they
evaluated the same model. Needs numpy only (the safetensors file is written by hand).
"""

import argparse
import json
import os
import shutil
import struct

import numpy as np


def bf16_bytes(x):
    """float32 array -> bf16 little-endian bytes, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype("<u2").tobytes()


def tensors(cfg):
    h = cfg["hidden_size"]
    inter = cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    hd = cfg.get("head_dim") or h // heads
    vocab = cfg["vocab_size"]
    yield "model.embed_tokens.weight", (vocab, h), "normal"
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,), "one"
        yield p + "self_attn.q_proj.weight", (heads * hd, h), "normal"
        yield p + "self_attn.k_proj.weight", (kv * hd, h), "normal"
        yield p + "self_attn.v_proj.weight", (kv * hd, h), "normal"
        yield p + "self_attn.o_proj.weight", (h, heads * hd), "normal"
        yield p + "post_attention_layernorm.weight", (h,), "one"
        yield p + "mlp.gate_proj.weight", (inter, h), "normal"
        yield p + "mlp.up_proj.weight", (inter, h), "normal"
        yield p + "mlp.down_proj.weight", (h, inter), "normal"
    yield "model.norm.weight", (h,), "one"
    if not cfg.get("tie_word_embeddings", False):
        yield "lm_head.weight", (vocab, h), "normal"


CHUNK = 1 << 24  # values drawn and converted at a time: bounds memory for 70B-size tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=20261204)
    ap.add_argument("--std", type=float, default=None,
                    help="standard deviation of the random matrices (default: config's initializer_range, else 0.02)")
    a = ap.parse_args()
    with open(os.path.join(a.src, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") not in ("llama", "mistral"):
        raise SystemExit(f"shape_model.py: model_type {cfg.get('model_type')!r}: only llama/mistral layouts")
    os.makedirs(a.out, exist_ok=True)
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(os.path.join(a.src, name), os.path.join(a.out, name))

    rng = np.random.Generator(np.random.PCG64(a.seed))
    std = a.std if a.std is not None else cfg.get("initializer_range", 0.02)
    # The header first (offsets follow from the shapes), then each tensor drawn and written
    # in chunks: the generator's stream is the same as one draw per tensor, and memory stays
    # a few chunks whatever the model's size.
    header, offset, plan = {}, 0, []
    for name, shape, kind in tensors(cfg):
        n = int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + 2 * n]}
        plan.append((n, kind))
        offset += 2 * n
    header["__metadata__"] = {"format": "pt", "ucw_shape_model_seed": str(a.seed)}
    if a.std is not None:
        header["__metadata__"]["ucw_shape_model_std"] = repr(a.std)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = os.path.join(a.out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n, kind in plan:
            for start in range(0, n, CHUNK):
                m = min(CHUNK, n - start)
                if kind == "normal":
                    x = rng.standard_normal(m, dtype=np.float32) * np.float32(std)
                else:
                    x = np.ones(m, np.float32)
                f.write(bf16_bytes(x))
    os.replace(tmp, os.path.join(a.out, "model.safetensors"))
    print(f"{a.out}: {offset} bytes of weights, seed {a.seed}, std {std}")


if __name__ == "__main__":
    main()
