#!/usr/bin/env python3
"""How far from trivial a (random) model's forward pass is, so that a perplexity agreement
measured on it means something: with transformers in float32 on the first window of TEXT,
report each layer's attention entropy against a uniform distribution over the same keys,
the largest attention weight, and the spread of the final logits.

    python3 scripts/spread_report.py MODEL_DIR TEXT [--seq-len 512]

A random model whose attention is nearly uniform and whose logits are nearly flat agrees
with any forward pass that gets the averages right; one whose attention concentrates on a
few keys and whose logits span several units does not. Needs torch + transformers
(scripts/requirements-fixtures.txt).
"""
import argparse
import json
import math

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--seq-len", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    ids = tok.encode(open(a.text, encoding="utf-8").read(), add_special_tokens=False).ids[: a.seq_len]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    layers = []
    for att in out.attentions:  # [1, heads, q, k], causal
        p = att[0].double()
        q = p.shape[-1]
        ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # [heads, q]
        # Uniform over the q+1 visible keys of query q: log(q + 1).
        uni = torch.log(torch.arange(1, q + 1, dtype=torch.float64)).expand_as(ent)
        later = slice(q // 2, q)  # queries that see at least half the window
        layers.append({
            "mean_entropy_over_uniform": round((ent[:, later].sum() / uni[:, later].sum()).item(), 4),
            "mean_max_weight": round(p.max(-1).values[:, later].mean().item(), 4),
            "uniform_weight_at_half": round(1.0 / (q // 2 + 1), 4),
        })
    lg = out.logits[0].double()
    res = {
        "model": a.model, "tokens": len(ids), "attention": layers,
        "logit_std": round(lg.std(-1).mean().item(), 3),
        "logit_range": round((lg.max(-1).values - lg.min(-1).values).mean().item(), 3),
        "top1_prob_mean": round(torch.softmax(lg, -1).max(-1).values.mean().item(), 4),
        "perplexity_of_window": round(math.exp(torch.nn.functional.cross_entropy(
            lg[:-1], torch.tensor(ids[1:])).item()), 3),
    }
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
