#!/usr/bin/env bash
# Side-by-side forward pass benchmark: `ucw eval` (CPU backend) and the reference
# transformers float32 run (`hf_ppl.py`, 2 threads) on the same model, text and windows,
# one after the other on the same machine, then the perplexity gap and the speed ratio.
#
# Usage: scripts/bench_eval.sh MODEL_DIR TEXT [SEQ_LEN=1024] [WINDOWS=30] [OUT_DIR=bench-eval]
# Env:   PYTHON (a python with torch + transformers, default python3)
#        HF_PPL (default ../shared/scripts/hf_ppl.py), UCW (default target/release/ucw)
set -euo pipefail
model=$1; text=$2; seq=${3:-1024}; win=${4:-30}; out=${5:-bench-eval}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
hf=${HF_PPL:-$here/../shared/scripts/hf_ppl.py}
ucw=${UCW:-$here/target/release/ucw}
mkdir -p "$out"
tag=$(basename "$model")-${win}x${seq}
echo "== ucw eval ($tag)" >&2
/usr/bin/time -v "$ucw" eval "$model" --text "$text" --seq-len "$seq" --windows "$win" --device cpu \
    -o "$out/ucw-$tag.json" 2> "$out/ucw-$tag.time" >/dev/null
echo "== hf_ppl.py ($tag)" >&2
/usr/bin/time -v "$py" "$hf" "$model" "$text" --seq-len "$seq" --windows "$win" --threads 2 \
    --json "$out/hf-$tag.json" > /dev/null 2> "$out/hf-$tag.time"
"$py" - "$out/ucw-$tag.json" "$out/hf-$tag.json" "$out/ucw-$tag.time" "$out/hf-$tag.time" <<'PY'
import json, re, sys
u, h = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
def rss(p):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(p).read())
    return int(m.group(1)) * 1024 if m else None
key = "ppl_all" if u["score"] == "all" else "ppl_llamacpp_style"
res = {
    "model": u["model"]["path"], "windows": u["windows"], "seq_len": u["seq_len"], "score": u["score"],
    "ucw_ppl": u["ppl"], "ucw_ppl_bits": u["ppl_bits"], "hf_ppl": h[key],
    "ppl_gap_percent": 100 * (u["ppl"] / h[key] - 1),
    "ucw_tokens_per_s": u["tokens_per_s"], "hf_tokens_per_s": h["tokens_per_s"],
    "speed_ratio": u["tokens_per_s"] / h["tokens_per_s"],
    "ucw_peak_rss_bytes": rss(sys.argv[3]), "hf_peak_rss_bytes": rss(sys.argv[4]),
    "ucw_device": u["device"],
}
print(json.dumps(res, indent=1))
PY
