#!/usr/bin/env bash
# llama.cpp quantization baselines for a Hugging Face Llama-architecture model:
# builds llama.cpp (CPU, Release) from the llama-cpp-python sdist's vendored copy,
# converts MODEL_DIR to GGUF F32, quantizes it with llama-quantize's default mixes,
# then runs llama-perplexity (PPL, and KL divergence against the F32 logits) on each
# text in TEXT_DIR at two context settings and prints one TSV table on stdout.
#
# Usage: scripts/llama_cpp_compare.sh SDIST MODEL_DIR TEXT_DIR OUT_DIR
#   SDIST      llama_cpp_python-*.tar.gz (vendors llama.cpp under vendor/llama.cpp)
#   MODEL_DIR  HF directory (config.json, *.safetensors, tokenizer.json)
#   TEXT_DIR   holds the texts named in TEXTS (as NAME.txt)
#   OUT_DIR    src/ build/ models/ kld/ logs/ results.tsv go here; finished steps are
#              skipped when the script is rerun on the same OUT_DIR
# Env:
#   PYTHON     python with torch, transformers, numpy, pyyaml, tqdm, sentencepiece
#              (the converter imports sentencepiece even for BPE vocabularies; gguf-py is
#              taken from the vendored tree). Default python3.
#   CMAKE      cmake to use; if unset and none on PATH, cmake+ninja are pip-installed
#              into OUT_DIR/venv
#   TEXTS      default "eval drama tech"
#   FORMATS    default "Q8_0 Q6_K Q5_K_M Q5_0 Q5_1 Q4_K_M Q4_1 Q4_0"
#   SETTINGS   default "A B"; A = -c 512 --chunks 8, B = -c 1024 --chunks 30 (-b = -c)
#   FORMATS_B  formats run at setting B (default: FORMATS)
#   THREADS    llama-perplexity -t (default 2); JOBS build parallelism (default 2)
#   NICE       niceness of the heavy steps (default 19)
#   KEEP_BASE  1 keeps the F32 base logits (kld/base-TEXT-SETTING.kld, ~0.2 GB at A,
#              ~1.5 GB at B per text); default deletes each after its formats ran
#
# Notes: llama-perplexity tokenizes the whole text once (BOS only if the GGUF's
# tokenizer.ggml.add_bos_token is true; the script prints it), cuts it into chunks of
# -c tokens and scores the second half of each chunk (n_ctx/2 - 1 predictions per chunk).
# llama-quantize's bpw is over all tensors, token embedding included.
set -euo pipefail

if [ $# -ne 4 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
sdist=$(realpath "$1"); model=$(realpath "$2"); textdir=$(realpath "$3"); out=$4
mkdir -p "$out"; out=$(realpath "$out")
py=${PYTHON:-python3}
texts=${TEXTS:-eval drama tech}
formats=${FORMATS:-Q8_0 Q6_K Q5_K_M Q5_0 Q5_1 Q4_K_M Q4_1 Q4_0}
settings=${SETTINGS:-A B}
formats_b=${FORMATS_B:-$formats}
threads=${THREADS:-2}; jobs=${JOBS:-2}; nice_n=${NICE:-19}
keep_base=${KEEP_BASE:-0}
heavy() { nice -n "$nice_n" "$@"; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
mkdir -p "$out"/{src,models,kld,logs}

# ---- 1. sources -----------------------------------------------------------------
log "sdist sha256: $(sha256sum "$sdist" | cut -d' ' -f1)  $(basename "$sdist")"
if [ ! -f "$out/src/.extracted" ]; then
    tar -xzf "$sdist" -C "$out/src"
    touch "$out/src/.extracted"
fi
lcpp=$(ls -d "$out"/src/*/vendor/llama.cpp | head -n1)
[ -f "$lcpp/convert_hf_to_gguf.py" ] || { echo "no vendor/llama.cpp in $sdist" >&2; exit 1; }
if commit=$(git -C "$lcpp" rev-parse HEAD 2>/dev/null); then
    log "vendored llama.cpp commit: $commit"
fi

# ---- 2. build (CPU only, Release, two targets) ------------------------------------
bin=$out/build/bin
if [ ! -x "$bin/llama-perplexity" ] || [ ! -x "$bin/llama-quantize" ]; then
    cmake_bin=${CMAKE:-$(command -v cmake || true)}
    gen=()
    if [ -z "$cmake_bin" ]; then
        log "no cmake: installing cmake+ninja into $out/venv"
        python3 -m venv "$out/venv"
        "$out/venv/bin/pip" install -q cmake ninja
        cmake_bin=$out/venv/bin/cmake
        export PATH=$out/venv/bin:$PATH
    fi
    command -v ninja >/dev/null && gen=(-G Ninja)
    log "configure + build (logs/cmake-*.log)"
    heavy "$cmake_bin" -S "$lcpp" -B "$out/build" "${gen[@]}" \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
        > "$out/logs/cmake-configure.log" 2>&1
    heavy "$cmake_bin" --build "$out/build" --config Release \
        --target llama-perplexity llama-quantize -j "$jobs" > "$out/logs/cmake-build.log" 2>&1
fi
log "llama.cpp: $("$bin/llama-perplexity" --version 2>&1 | grep -m1 version || true)"

# ---- 3. convert to GGUF F32 --------------------------------------------------------
"$py" -c 'import torch, transformers, numpy, yaml, tqdm, sentencepiece' \
    || { echo "PYTHON=$py lacks torch/transformers/numpy/pyyaml/tqdm/sentencepiece" >&2; exit 1; }
name=$(basename "$model")
f32=$out/models/$name-F32.gguf
if [ ! -s "$f32" ]; then
    log "convert -> $f32"
    heavy "$py" "$lcpp/convert_hf_to_gguf.py" "$model" --outtype f32 --outfile "$f32.tmp" \
        > "$out/logs/convert.log" 2>&1
    mv "$f32.tmp" "$f32"
fi
PYTHONPATH=$lcpp/gguf-py "$py" - "$f32" >&2 <<'PY'
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_eos_token"):
    f = r.fields.get(k)
    print(f"  {k} = {f.contents() if f is not None else '(absent)'}")
PY

# ---- 4. quantize (default mixes, no --pure, no imatrix) ----------------------------
declare -A bpw size
bpw[F32]=32.00; size[F32]=$(stat -c %s "$f32")
for q in $formats; do
    g=$out/models/$name-$q.gguf
    if [ ! -s "$g" ] || ! grep -q "quant size" "$out/logs/quantize-$q.log" 2>/dev/null; then
        log "quantize $q"
        heavy "$bin/llama-quantize" "$f32" "$g" "$q" "$threads" > "$out/logs/quantize-$q.log" 2>&1
    fi
    bpw[$q]=$(sed -n 's/.*quant size *= *[0-9.]* MiB (\([0-9.]*\) BPW).*/\1/p' "$out/logs/quantize-$q.log")
    size[$q]=$(stat -c %s "$g")
    fb=$(sed -n 's/.*WARNING: \([0-9]* of [0-9]*\) tensor(s) required fallback.*/\1/p' "$out/logs/quantize-$q.log")
    log "  $q: ${size[$q]} bytes, ${bpw[$q]} bpw${fb:+, fallback quantization for $fb tensors}"
done

# ---- 5. perplexity / KL divergence grid --------------------------------------------
ctx_of() { case $1 in A) echo 512;; B) echo 1024;; *) echo "unknown setting $1" >&2; exit 1;; esac; }
chunks_of() { case $1 in A) echo 8;; B) echo 30;; esac; }
done_ok() { [ -s "$1" ] && grep -q "$2" "$1"; }
for s in $settings; do
    c=$(ctx_of "$s"); n=$(chunks_of "$s")
    fl=$formats; [ "$s" = B ] && fl=$formats_b
    for t in $texts; do
        txt=$textdir/$t.txt; base=$out/kld/base-$t-$s.kld
        common=(-c "$c" --chunks "$n" -b "$c" -t "$threads")
        lf=$out/logs/ppl-F32-$t-$s.log
        need=0
        for q in $fl; do done_ok "$out/logs/ppl-$q-$t-$s.log" "Same top p" || need=1; done
        if ! done_ok "$lf" "Final estimate" || { [ $need = 1 ] && [ ! -s "$base" ]; }; then
            log "F32 $t $s (base logits)"
            heavy "$bin/llama-perplexity" -m "$f32" -f "$txt" "${common[@]}" \
                --kl-divergence-base "$base" > "$lf" 2>&1
        fi
        for q in $fl; do
            lq=$out/logs/ppl-$q-$t-$s.log
            done_ok "$lq" "Same top p" && continue
            log "$q $t $s"
            heavy "$bin/llama-perplexity" -m "$out/models/$name-$q.gguf" -f "$txt" "${common[@]}" \
                --kl-divergence-base "$base" --kl-divergence > "$lq" 2>&1
        done
        [ "$keep_base" = 1 ] || rm -f "$base"
    done
done

# ---- 6. table ----------------------------------------------------------------------
num() { sed -n "s/^.*$2 *: *\([-0-9.e+]*\).*/\1/p" "$1" | head -n1; }
{
    printf 'format\tbpw\tsize_bytes\ttext\tsetting\tppl\tratio\tmean_kld\tp99_kld\tmax_kld\tsame_top_p_pct\n'
    for s in $settings; do
        fl=$formats; [ "$s" = B ] && fl=$formats_b
        for t in $texts; do
            lf=$out/logs/ppl-F32-$t-$s.log
            if [ -s "$lf" ]; then
                p=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$lf")
                printf 'F32\t%s\t%s\t%s\t%s\t%s\t1\t0\t0\t0\t100\n' "${bpw[F32]}" "${size[F32]}" "$t" "$s" "$p"
            fi
            for q in $fl; do
                lq=$out/logs/ppl-$q-$t-$s.log
                done_ok "$lq" "Same top p" || continue
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$q" "${bpw[$q]}" "${size[$q]}" "$t" "$s" \
                    "$(num "$lq" 'Mean PPL(Q)')" "$(num "$lq" 'Mean PPL(Q)\/PPL(base)')" \
                    "$(num "$lq" 'Mean    KLD')" "$(num "$lq" '99.0%   KLD')" "$(num "$lq" 'Maximum KLD')" \
                    "$(num "$lq" 'Same top p')"
            done
        done
    done
} | tee "$out/results.tsv"
