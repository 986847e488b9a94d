#!/usr/bin/env python3
"""Independent computation of ucw's tensor and weights digests (DESIGN §5), stdlib only.

    python3 scripts/ucw_digest.py MODEL_DIR        # prints JSON: tensors + weights_digest

It shares no code with ucw: it parses the safetensors headers itself and hashes each
tensor's byte range with hashlib, so `ucw hash` can be checked against it (the tests do).

tensor digest  = sha256 of the tensor's bytes as stored (little-endian, row-major)
weights digest = sha256 of the RFC 8785 JSON array of
                 {"dtype", "name", "sha256", "shape"} per stored tensor, sorted by name
                 (a stored lm_head.weight is left out when config.json ties embeddings)
For these values (ASCII keys, strings, non-negative integers) RFC 8785 is exactly
json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False).
"""
import hashlib
import json
import os
import struct
import sys


def read_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return 8 + n, header


def tensor_digests(path):
    start, header = read_header(path)
    out = []
    with open(path, "rb") as f:
        for name, info in header.items():
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            h = hashlib.sha256()
            remaining = end - begin
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise SystemExit(f"{path}: tensor {name} runs past the end of the file")
                h.update(chunk)
                remaining -= len(chunk)
            out.append({"dtype": info["dtype"], "name": name, "sha256": h.hexdigest(), "shape": info["shape"]})
    return out


def model_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    return ["model.safetensors"]


def main():
    model_dir = sys.argv[1]
    entries = []
    for name in model_files(model_dir):
        entries.extend(tensor_digests(os.path.join(model_dir, name)))
    tied = False
    cfg = os.path.join(model_dir, "config.json")
    if os.path.exists(cfg):
        with open(cfg) as f:
            tied = json.load(f).get("tie_word_embeddings") is True
    if tied:
        entries = [e for e in entries if e["name"] != "lm_head.weight"]
    entries.sort(key=lambda e: e["name"].encode("utf-8"))
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    print(json.dumps({
        "tensors": {e["name"]: e["sha256"] for e in entries},
        "weights_digest": hashlib.sha256(canonical).hexdigest(),
    }, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
