#!/usr/bin/env bash
# Calibrated compression quality benchmark: compress MODEL_DIR once per setting (CPU
# backend, calibration on TEXT from token SKIP on, which the evaluation does not score), then
# `ucw eval` each pack and the source model on the first WINDOWS windows of SEQ_LEN tokens of
# TEXT, for every SCORE, and print perplexity ratios (pack / source), bits per weight and
# compression time per phase as one JSON line per pack and score.
#
# Usage: scripts/bench_compress.sh MODEL_DIR TEXT OUT_DIR [SEQ_LEN=512] [WINDOWS=8] [SCORES="all"]
# Env:   SKIP (default 61440: past the first 30x1024 tokens, as the issue's float recipes
#        calibrate), SETTINGS (';'-separated compress flag sets, default below),
#        UCW (default target/release/ucw)
set -euo pipefail
model=$1; text=$2; out=$3; seq=${4:-512}; win=${5:-8}; scores=${6:-all}
here=$(cd "$(dirname "$0")/.." && pwd)
ucw=${UCW:-$here/target/release/ucw}
skip=${SKIP:-61440}
settings=${SETTINGS:-"--bits 5;--bits 4;--bits 3;--bits 5 --rank 0;--bits 5 --no-calib"}
mkdir -p "$out"
ppl() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ppl"], d["ppl_bits"])' "$1"; }
for s in $scores; do
    base="$out/source-${win}x${seq}-$s.json"
    [ -s "$base" ] || "$ucw" eval "$model" --text "$text" --seq-len "$seq" --windows "$win" --score "$s" \
        --device cpu -o "$base" >/dev/null 2>&1
done
IFS=';' read -ra sets <<< "$settings"
for flags in "${sets[@]}"; do
    tag=$(echo "$flags" | tr -d ' -' )
    pack="$out/pack-$tag"
    calib=(--calib "$text" --calib-skip "$skip")
    f=($flags)
    if [[ " ${f[*]} " == *" --no-calib "* ]]; then
        calib=(); f=("${f[@]/--no-calib}")
    fi
    if [ ! -s "$pack.compress.json" ]; then
        /usr/bin/time -v "$ucw" compress "$model" -o "$pack" --force --device cpu "${calib[@]}" ${f[@]} --json \
            > "$pack.compress.json" 2> "$pack.compress.time"
    fi
    for s in $scores; do
        r="$pack-${win}x${seq}-$s.json"
        [ -s "$r" ] || "$ucw" eval "$pack" --text "$text" --seq-len "$seq" --windows "$win" --score "$s" \
            --device cpu -o "$r" >/dev/null 2>&1
        python3 - "$flags" "$s" "$pack.compress.json" "$pack.compress.time" "$r" "$out/source-${win}x${seq}-$s.json" <<'PY'
import json, re, sys
flags, score, cj, ct, r, b = sys.argv[1:]
c, e, base = json.load(open(cj)), json.load(open(r)), json.load(open(b))
bl, bp = c["bits_per_weight"]["linears"], c["bits_per_weight"]["pack"]
m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(ct).read())
print(json.dumps({
    "flags": flags, "score": score, "windows": e["windows"], "seq_len": e["seq_len"],
    "ppl": e["ppl"], "source_ppl": base["ppl"], "ratio": round(e["ppl"] / base["ppl"], 5),
    "bpw_linears": round(bl["bits"] / bl["weights"], 4), "bpw_pack": round(bp["bits"] / bp["weights"], 4),
    "calibrated": c["calibrated"], "compress_seconds": round(c["seconds"], 1),
    "phase_seconds": {k: round(v, 1) for k, v in c["phase_seconds"].items()},
    "compress_peak_rss_bytes": int(m.group(1)) * 1024 if m else None,
    "pack_digest": c["pack_digest"],
}))
PY
    done
done
