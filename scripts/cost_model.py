#!/usr/bin/env python3
"""Per-layer cost model of calibrated `ucw compress` on the CPU backend, fitted to measured
runs, and its prediction for another model's shapes.

    python3 scripts/cost_model.py --run CONFIG.json COMPRESS.json [--run ...] --predict CONFIG.json

Each --run pairs a model's config.json with the `ucw compress --json` report of a calibrated
compression of it (default settings: three candidate widths, rank auto). Every phase's time
is modelled as one coefficient times its work term (multiply-adds, or weights), summed over
the model's layers; the coefficient of each phase is fitted by least squares over the runs
(through the origin) and printed with its work terms, then the prediction for --predict.
The work terms (T calibration tokens, S window length, P weights of a layer's linears,
taps n ∈ {hidden, heads·head_dim, hidden, intermediate}, full statistics up to 32,768
inputs, `codec/gram.rs`):

  forward     T·P + T·S·heads·head_dim    teacher pass (calibrate) and, for every layer but
                                          the last, propagation: the same work
  accumulate  T·Σ n(n+1)/2                exact Gram products, full taps (T·n if diagonal)
  factorize   Σ n³/3                      Cholesky + triangular inverse, full taps
  quantize    3·P                         scale search, three widths
  feedback    3·Σ_linears rows·n²/2       error feedback, linears whose input is full
  overlay     P                           rank-auto fit (ranks capped at 32 per linear; the
                                          70B layer measured 9.3x this coefficient before
                                          b4f4e01 sped up its packed-metric down_proj)
  write       P                           reconstruction, digests, layer files

Why one coefficient per phase is enough: each phase's inner loop is the same kernel at every
size (the prediction is only as good as that assumption; the fitted coefficients of two sizes
are printed so a reader can see how far they agree).
"""
import argparse
import json

from shape_model import tensors

FULL_MAX = 32768
WIDTHS = 3


TAP = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "o_proj": "o", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "down"}


def shapes(cfg):
    """(rows, input width, tap) of each linear of a layer, the taps' widths, q's width and
    the layer count, from the tensor list shape_model.py writes."""
    linears = [(shape[0], shape[1], TAP[name.split(".")[-2]])
               for name, shape, _ in tensors(cfg)
               if name.startswith("model.layers.0.") and name.split(".")[-2] in TAP]
    taps = {t: n for _, n, t in linears}
    q = next(r for r, _, t in linears if t == "attn")
    return linears, taps, q, cfg["num_hidden_layers"]


def work(cfg, tokens, seq):
    linears, taps, q, layers = shapes(cfg)
    P = sum(r * n for r, n, _ in linears)
    full = {t: n <= FULL_MAX for t, n in taps.items()}
    per_layer = {
        "forward": tokens * P + tokens * seq * q,
        "accumulate": sum(tokens * (n * (n + 1) // 2 if full[t] else n) for t, n in taps.items()),
        "factorize": sum(n**3 / 3 for t, n in taps.items() if full[t]),
        "quantize": WIDTHS * P,
        "feedback": sum(WIDTHS * r * n * n / 2 for r, n, t in linears if full[t]),
        "overlay": P,
        "write": P,
    }
    # Whole run: every layer once, propagation for all but the last.
    total = {k: v * layers for k, v in per_layer.items()}
    total["forward"] = per_layer["forward"] * (2 * layers - 1)
    return per_layer, total, layers


def measured(report):
    p = report["phase_seconds"]
    return {
        "forward": p["calibrate"] - p["calibrate_accumulate"] - p["calibrate_factorize"] + p["propagate"],
        "accumulate": p["calibrate_accumulate"],
        "factorize": p["calibrate_factorize"],
        "quantize": p["quantize"],
        "feedback": p["fit_feedback"],
        "overlay": p["fit"] - p["fit_feedback"],
        "write": p["write"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs=2, action="append", metavar=("CONFIG", "REPORT"), required=True)
    ap.add_argument("--predict", metavar="CONFIG")
    ap.add_argument("--tokens", type=int, default=16384, help="calibration tokens (default 32 x 512)")
    ap.add_argument("--seq-len", type=int, default=512)
    a = ap.parse_args()
    runs = []
    for cpath, rpath in a.run:
        cfg, rep = json.load(open(cpath)), json.load(open(rpath))
        tokens = rep["calibration"]["tokens"]
        seq = rep["calibration"]["seq_len"]
        runs.append((cpath, work(cfg, tokens, seq)[1], measured(rep)))
    coef = {}
    print("phase        coefficient (s per unit)   per run: measured s / work -> coefficient")
    for ph in runs[0][1]:
        num = sum(w[ph] * m[ph] for _, w, m in runs)
        den = sum(w[ph] ** 2 for _, w, m in runs)
        coef[ph] = num / den if den else 0.0
        each = "; ".join(f"{m[ph]:.1f} s / {w[ph]:.3g} -> {m[ph] / w[ph]:.3g}" if w[ph] else "-" for _, w, m in runs)
        print(f"{ph:<12} {coef[ph]:<26.4g} {each}")
    if a.predict:
        cfg = json.load(open(a.predict))
        per_layer, total, layers = work(cfg, a.tokens, a.seq_len)
        print(f"\nprediction for {a.predict} ({layers} layers, {a.tokens} calibration tokens):")
        layer_s = 0.0
        for ph, w in per_layer.items():
            s = coef[ph] * w * (2 if ph == "forward" else 1)  # teacher + propagation
            layer_s += s
            print(f"  {ph:<12} {s:10.0f} s per layer" + ("  (teacher + propagation)" if ph == "forward" else ""))
        print(f"  per layer    {layer_s:10.0f} s = {layer_s / 3600:.2f} h")
        run_s = sum(coef[ph] * w for ph, w in total.items())
        print(f"  whole model  {run_s:10.0f} s = {run_s / 3600:.1f} h (plus hashing and the raw tensors)")


if __name__ == "__main__":
    main()
