#!/usr/bin/env python3
"""How many bits an entropy coder would save on a pack's quantized linears.

For every quantized linear of PACK: the order-0 entropy (per tensor) of its codes q, of the
codes relative to their group's zero point q - z, of its scale codes and of its zero points,
against the bits stored for them. The totals estimate what one static frequency table per
tensor with an ideal coder would store (rANS with a 2^12-total table comes within a few
thousandths of a bit; the table itself is under 2 KiB per tensor). Informative only: it
reads packs through scripts/ucw_decode.py and changes nothing.

What is stored, by codec version (docs/FORMAT.md §4, §4.1, §4.2):
  1, 2  codes bit-packed (R·C·b bits), scale codes and zero points as .scales and .zeros;
  3     codes rANS-coded: the stored code bits are 8 × the bytes of .rans, .rans_freq and
        .rans_len (the codes are decoded from them to count); .scales and .zeros as before;
  4     scale codes, zero points and codes all in the rANS streams: no bits are stored for
        the scale codes and zero points separately, so "codes stored" and "scales and zero
        points stored" are null and the streams' bytes (with their three tables and the
        stream lengths) are the stored total. That total is split by what each symbol class
        costs under its stored table, Σ log2(M / freq[s]) over the class's symbols (rANS
        stores within a few thousandths of a bit of it), the rest being the tables, the
        stream lengths, the 4-byte final states and the coder's rounding ("overhead").
In every version "stored total" = 8 × the bytes of all the tensors that hold codes, scale
codes and zero points (.scales and .zeros counted as stored, padding bits included) per weight.

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


def table_cost_bits(symbols: np.ndarray, freq: np.ndarray) -> float:
    """Σ log2(M / freq[s]) over the symbols: what they cost coded with this table."""
    counts = np.bincount(symbols.ravel(), minlength=freq.size)
    used = counts > 0
    return float((counts[used] * (u.RANS_PROB_BITS - np.log2(freq[used].astype(np.float64)))).sum())


def stored_bytes(f, name: str, suffixes) -> int:
    return sum(f.tensors[name + sfx].end - f.tensors[name + sfx].begin for sfx in suffixes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pack")
    ap.add_argument("--per-tensor", action="store_true", help="print one line per quantized linear")
    ap.add_argument("--json", help="write the totals as JSON here")
    a = ap.parse_args()
    man, _ = u.load_manifest(a.pack)
    g = man["codec"]["parameters"]["group_size"]
    t = dict(weights=0, groups=0, total_bits=0, code_bits=0, meta_bits=0, code_h=0.0, rel_h=0.0,
             scale_h=0.0, zero_h=0.0, v4_weights=0, v4_bits=0, share_s=0.0, share_z=0.0, share_d=0.0)
    files = {}
    versions = set()
    for e in man["tensors"]:
        if e["kind"] == "raw":
            continue
        if e["file"] not in files:
            f = u.SafeTensorsFile(os.path.join(a.pack, e["file"]))
            version = json.loads(f.metadata["ucw"])["codec_version"]  # the layer file's own (§4)
            files[e["file"]] = (f, version)
        f, version = files[e["file"]]
        versions.add(version)
        name = e["name"]
        rows, cols = e["shape"]
        b = e["bits"]
        gpr = -(-cols // g)
        col_group = np.arange(cols) // g
        spec = u.QuantSpec(name, rows, cols, b, g, 0, e["dtype"], codec_version=version)
        if version >= u.RANS_META_VERSION:
            # §4.2: scale codes, zero points and code symbols d = q - z + 2^b - 1 all from the
            # streams (all rows at once); the three tables back to back in .rans_freq.
            rc = u.RansCodes.from_file(f, spec)
            s, z, d = rc.decode(0, rows)
            q = u.codes_from_symbols(d, z[:, col_group], b, name + ".rans")
            total = 8 * stored_bytes(f, name, u.RANS_META_SUFFIXES)
            code_bits = meta_bits = None
            freq = f.rows(name + ".rans_freq", 0, u.rans_freq_entries(b, version)).astype(np.int64)
            nz = 1 << b
            share = (table_cost_bits(s, freq[:u.SCALE_SYMBOLS]),
                     table_cost_bits(z, freq[u.SCALE_SYMBOLS:u.SCALE_SYMBOLS + nz]),
                     table_cost_bits(d, freq[u.SCALE_SYMBOLS + nz:]))
        else:
            z, _ = u.unpack_rows(f.array(name + ".zeros", 0, rows), gpr, b)
            s = f.array(name + ".scales", 0, rows)
            if version >= u.RANS_VERSION:
                # §4.1: decode the symbols d = q - z + 2^b - 1 from the streams (all rows at once).
                d = u.RansCodes.from_file(f, spec).symbols(0, rows)
                q = u.codes_from_symbols(d, z[:, col_group], b, name + ".rans")
                code_bits = 8 * stored_bytes(f, name, (".rans", ".rans_freq", ".rans_len"))
            else:
                q, _ = u.unpack_rows(f.array(name + ".codes", 0, rows), cols, b)
                code_bits = rows * cols * b
            meta_bits = 8 * stored_bytes(f, name, (".scales", ".zeros"))
            total = code_bits + meta_bits
            share = None
        rel = q.astype(np.int64) - z[:, col_group] + (1 << b) - 1
        hq, hr, hs, hz = entropy_bits(q), entropy_bits(rel), entropy_bits(s), entropy_bits(z)
        n, ng = rows * cols, rows * gpr
        t["weights"] += n
        t["groups"] += ng
        t["total_bits"] += total
        t["code_h"] += n * hq
        t["rel_h"] += n * hr
        t["scale_h"] += ng * hs
        t["zero_h"] += ng * hz
        if share is None:
            t["code_bits"] += code_bits
            t["meta_bits"] += meta_bits
        else:
            t["v4_weights"] += n
            t["v4_bits"] += total
            t["share_s"] += share[0]
            t["share_z"] += share[1]
            t["share_d"] += share[2]
        if a.per_tensor:
            line = (f"{name:48s} v{version} {b} bits  stored {total / n:.3f}  H(q) {hq:.3f}  H(q-z) {hr:.3f}  "
                    f"H(scale) {hs:.2f}  H(zero) {hz:.2f} bits/group")
            if share is not None:
                line += (f"  [streams: codes {share[2] / n:.3f}, scales {share[0] / n:.3f}, zeros "
                         f"{share[1] / n:.3f}, overhead {(total - sum(share)) / n:.3f} bits/weight]")
            print(line)
    n = max(t["weights"], 1)
    ngr = max(t["groups"], 1)
    in_streams = t["v4_weights"] > 0
    out = {
        "weights": t["weights"],
        "groups": t["groups"],
        "codec_versions": sorted(versions),
        "stored_total_bpw": t["total_bits"] / n,
        # null where (some) scale codes and zero points are coded inside the streams (version 4)
        "codes_stored_bpw": None if in_streams else t["code_bits"] / n,
        "metadata_stored_bpw": None if in_streams else t["meta_bits"] / n,
        "codes_entropy_bpw": t["code_h"] / n,
        "codes_minus_zero_entropy_bpw": t["rel_h"] / n,
        "metadata_entropy_bpw": (t["scale_h"] + t["zero_h"]) / n,
        "scale_entropy_bits_per_group": t["scale_h"] / ngr,
        "zero_entropy_bits_per_group": t["zero_h"] / ngr,
    }
    if in_streams:
        nv = t["v4_weights"]
        out["streams_bpw"] = {
            "codes": t["share_d"] / nv,
            "scales": t["share_s"] / nv,
            "zeros": t["share_z"] / nv,
            "overhead": (t["v4_bits"] - t["share_d"] - t["share_s"] - t["share_z"]) / nv,
        }
    if in_streams:
        sp = out["streams_bpw"]
        stored = (f"codes, scales and zero points {out['stored_total_bpw']:.4f} bits/weight stored in the rANS "
                  f"streams (codes {sp['codes']:.4f}, scales {sp['scales']:.4f}, zero points {sp['zeros']:.4f}, "
                  f"tables, lengths and states {sp['overhead']:.4f})")
    else:
        stored = (f"codes {out['codes_stored_bpw']:.4f} bits/weight stored, scales and zero points "
                  f"{out['metadata_stored_bpw']:.4f} stored (total {out['stored_total_bpw']:.4f})")
    print(
        f"{out['weights']} weights, codec version {'/'.join(map(str, out['codec_versions']))}: {stored}; order-0 "
        f"entropy: codes {out['codes_entropy_bpw']:.4f} (q), {out['codes_minus_zero_entropy_bpw']:.4f} (q - z), scales "
        f"{out['scale_entropy_bits_per_group']:.2f} and zero points {out['zero_entropy_bits_per_group']:.2f} bits per "
        f"group of {g} ({out['metadata_entropy_bpw']:.4f} bits/weight)"
    )
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
