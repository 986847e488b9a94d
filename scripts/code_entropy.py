#!/usr/bin/env python3
"""How many bits an entropy coder would save on a pack's quantized linears.

For every quantized linear of PACK: the order-0 entropy (per tensor) of its codes q, of the
codes relative to their group's zero point q - z, of its scale codes and of its zero points,
against the bits stored for them. The totals estimate what one static frequency table per
tensor with an ideal coder would store (rANS with a 2^12-total table comes within a few
thousandths of a bit; the table itself is under 2 KiB per tensor). Informative only: it
reads packs through scripts/ucw_decode.py and changes nothing.

Codec versions 1 and 2 store the codes bit-packed (b bits each); codec version 3 stores them
rANS-coded (docs/FORMAT.md §4.1), and there the stored code bits are 8 × the bytes of each
linear's .rans, .rans_freq and .rans_len (the codes are decoded from them to count).

    python3 scripts/code_entropy.py PACK [--per-tensor] [--json OUT]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ucw_decode as u  # noqa: E402


def entropy_bits(values: np.ndarray) -> float:
    """Order-0 entropy in bits per value of non-negative integers."""
    counts = np.bincount(values.ravel())
    p = counts[counts > 0] / values.size
    return float(-(p * np.log2(p)).sum())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("--per-tensor", action="store_true", help="print one line per quantized linear")
    ap.add_argument("--json", help="write the totals as JSON here")
    a = ap.parse_args()
    man, _ = u.load_manifest(a.pack)
    g = man["codec"]["parameters"]["group_size"]
    t = dict(weights=0, groups=0, code_bits=0, code_h=0.0, rel_h=0.0, meta_bits=0, scale_h=0.0, zero_h=0.0)
    files = {}
    for e in man["tensors"]:
        if e["kind"] == "raw":
            continue
        if e["file"] not in files:
            f = u.SafeTensorsFile(os.path.join(a.pack, e["file"]))
            version = json.loads(f.metadata["ucw"])["codec_version"]  # the layer file's own (§4)
            files[e["file"]] = (f, version)
        f, version = files[e["file"]]
        rows, cols = e["shape"]
        b = e["bits"]
        gpr = -(-cols // g)
        z, _ = u.unpack_rows(f.array(e["name"] + ".zeros", 0, rows), gpr, b)
        zc = z[:, np.arange(cols) // g]
        if version >= u.RANS_VERSION:
            # §4.1: decode the symbols d = q - z + 2^b - 1 from the streams (all rows at once).
            spec = u.QuantSpec(e["name"], rows, cols, b, g, 0, e["dtype"], codec_version=version)
            q = u.codes_from_symbols(u.RansCodes.from_file(f, spec).symbols(0, rows), zc, b, e["name"] + ".rans")
            code_bits = 8 * sum(f.tensors[e["name"] + sfx].end - f.tensors[e["name"] + sfx].begin
                                for sfx in (".rans", ".rans_freq", ".rans_len"))
        else:
            q, _ = u.unpack_rows(f.array(e["name"] + ".codes", 0, rows), cols, b)
            code_bits = rows * cols * b
        s = f.array(e["name"] + ".scales", 0, rows)
        rel = q.astype(np.int64) - zc + (1 << b) - 1
        hq, hr, hs, hz = entropy_bits(q), entropy_bits(rel), entropy_bits(s), entropy_bits(z)
        n, ng = rows * cols, rows * gpr
        t["weights"] += n
        t["groups"] += ng
        t["code_bits"] += code_bits
        t["code_h"] += n * hq
        t["rel_h"] += n * hr
        t["meta_bits"] += ng * (8 + b)
        t["scale_h"] += ng * hs
        t["zero_h"] += ng * hz
        if a.per_tensor:
            print(f"{e['name']:48s} {b} bits  stored {code_bits / n:.3f}  H(q) {hq:.3f}  H(q-z) {hr:.3f}  H(scale) {hs:.2f}  H(zero) {hz:.2f}")
    n = max(t["weights"], 1)
    out = {
        "weights": t["weights"],
        "codes_stored_bpw": t["code_bits"] / n,
        "codes_entropy_bpw": t["code_h"] / n,
        "codes_minus_zero_entropy_bpw": t["rel_h"] / n,
        "metadata_stored_bpw": t["meta_bits"] / n,
        "metadata_entropy_bpw": (t["scale_h"] + t["zero_h"]) / n,
    }
    print(
        f"{out['weights']} weights: codes {out['codes_stored_bpw']:.4f} bits/weight stored, order-0 entropy "
        f"{out['codes_entropy_bpw']:.4f} (q), {out['codes_minus_zero_entropy_bpw']:.4f} (q - z); scales and zero "
        f"points {out['metadata_stored_bpw']:.4f} stored, entropy {out['metadata_entropy_bpw']:.4f}"
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
