#!/usr/bin/env python3
"""Known-answer tests for the rANS-coded codes of codec version 3 (docs/FORMAT.md §4.1).

An independent reference ENCODER, written from §4.1's informative "Encoding" paragraph alone,
makes a handful of small cases; each is decoded again by the decoder of scripts/ucw_decode.py
(which follows §4.1's normative decoding procedure and validity rules) and must give back the
codes exactly. The cases are written to tests/data/rans_kat.json so that another
implementation (ucw's own encoder and decoder) can be checked against the same bytes.

    python3 tests/rans_kat.py            # (re)write tests/data/rans_kat.json
    python3 tests/rans_kat.py --check    # re-encode; exit 1 if the committed file differs
    python3 tests/rans_kat.py --faults   # also print the decoder's refusal of each damaged input
    python3 tests/rans_kat.py --pack P   # verify a codec-3 copy of the codec-1/2 pack P (and two
                                         # damaged copies) with ucw_decode.py

Every run also feeds ucw_decode.py damaged inputs (a flipped byte, truncated streams, a byte
too many, freq not summing to M, wrong len, a stream under 4 bytes, a final state != L, q out
of range, ...) and requires each to be refused with a RansInvalid message.

The JSON file is a list of cases, each an object with:
  name        a short description
  bits        b, the code width (2..8); symbols are d = q − z + 2^b − 1 in 0..2^(b+1) − 2
  rows, cols  R, C of the linear
  group_size  G; P = ceil(C / G) zero points per row
  codes       the R·C codes q[r][c], flattened row-major (index r·C + c)
  zeros       the R·P zero points z[r][g], flattened row-major (index r·P + g)
  freq        the 2^(b+1) − 1 entries of <name>.rans_freq (U16 values)
  len         the S = ceil(R / 64) entries of <name>.rans_len (U32 values)
  rans_hex    the n = Σ len bytes of <name>.rans, lowercase hex

Encoder (§4.1, informative): cnt[s] over the whole tensor, N = R·C; freq[s] = max(1, cnt[s]·M
div N) where cnt[s] > 0, else 0; while Σ freq > M, lower by one the largest freq[s] > 1 (the
lowest s among equals); add any shortfall M − Σ freq to the symbol with the largest cnt[s] (the
lowest s among equals). Each 64-row stream is encoded from its last symbol to its first from
x = L: with f = freq[s], while x >= 2^19·f emit x mod 256 and x = x div 256; then
x = (x div f)·M + x mod f + cum[s]. Then the 4 bytes of x, least significant first; the stream
is the emitted bytes reversed.

Pseudo-random cases use a 32-bit LCG (Numerical Recipes constants), not numpy's generators,
so the file is reproducible from this script alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import ucw_decode as dec  # noqa: E402

KAT_PATH = os.path.join(HERE, "data", "rans_kat.json")

M = 4096          # §4.1: M = 2^12
L = 1 << 23       # §4.1: L = 2^23
STREAM_ROWS = 64  # §4.1: one stream per 64 rows


# --------------------------------------------------------------------------------------------
# Reference encoder (§4.1, informative paragraph)
# --------------------------------------------------------------------------------------------


def symbols_of(codes, zeros, rows, cols, bits, group_size):
    """d[r][c] = q[r][c] − z[r][c div G] + 2^b − 1, row-major."""
    P = -(-cols // group_size)
    off = (1 << bits) - 1
    return [codes[r * cols + c] - zeros[r * P + c // group_size] + off
            for r in range(rows) for c in range(cols)]


def normalise(cnt):
    """freq[s] from the symbol counts, exactly as §4.1 says ucw does it."""
    n = sum(cnt)
    freq = [max(1, c * M // n) if c > 0 else 0 for c in cnt]
    while sum(freq) > M:
        # the largest freq[s] > 1, the lowest s among equals (list.index finds the lowest)
        top = max(f for f in freq if f > 1)
        freq[freq.index(top)] -= 1
    short = M - sum(freq)
    if short > 0:
        freq[cnt.index(max(cnt))] += short  # largest cnt[s], the lowest s among equals
    return freq


def encode_stream(syms, freq, cum) -> bytes:
    x = L
    out = []
    for s in reversed(syms):  # from the last symbol to the first
        f = freq[s]
        while x >= (1 << 19) * f:
            out.append(x % 256)
            x //= 256
        x = (x // f) * M + x % f + cum[s]
    out.extend([x & 255, (x >> 8) & 255, (x >> 16) & 255, (x >> 24) & 255])  # LS byte first
    return bytes(reversed(out))


def encode(codes, zeros, rows, cols, bits, group_size):
    """(freq, len, rans bytes) of a linear's codes."""
    d = symbols_of(codes, zeros, rows, cols, bits, group_size)
    nsym = (2 << bits) - 1
    assert all(0 <= s < nsym for s in d)
    cnt = [0] * nsym
    for s in d:
        cnt[s] += 1
    freq = normalise(cnt)
    cum = [0] * nsym
    for s in range(1, nsym):
        cum[s] = cum[s - 1] + freq[s - 1]
    streams = []
    for r0 in range(0, rows, STREAM_ROWS):
        r1 = min(rows, r0 + STREAM_ROWS)
        streams.append(encode_stream(d[r0 * cols : r1 * cols], freq, cum))
    return freq, [len(s) for s in streams], b"".join(streams)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


class Lcg:
    """x = 1664525·x + 1013904223 mod 2^32; draws use the top bits."""

    def __init__(self, seed: int):
        self.x = seed & 0xFFFFFFFF

    def next(self) -> int:
        self.x = (1664525 * self.x + 1013904223) & 0xFFFFFFFF
        return self.x

    def below(self, k: int) -> int:
        return (self.next() >> 16) * k >> 16


def case(name, bits, rows, cols, group_size, codes, zeros):
    P = -(-cols // group_size)
    assert len(codes) == rows * cols and len(zeros) == rows * P
    assert all(0 <= v < (1 << bits) for v in codes + zeros)
    freq, lens, rans = encode(codes, zeros, rows, cols, bits, group_size)
    return {"name": name, "bits": bits, "rows": rows, "cols": cols, "group_size": group_size,
            "codes": codes, "zeros": zeros, "freq": freq, "len": lens, "rans_hex": rans.hex()}


def peaked(rng: Lcg, bits: int, zero: int, spread: int) -> int:
    """A code near `zero`: the zero point plus a difference of two small uniform draws (a
    triangular distribution, peaked at 0), clamped to the code range."""
    delta = rng.below(spread + 1) - rng.below(spread + 1)
    return min(max(zero + delta, 0), (1 << bits) - 1)


def make_cases():
    cases = []

    # 1. Hand-checkable: b = 2, one row of three codes, one group with z = 1. d = q − 1 + 3 =
    #    3, 4, 2; each once, so freq = 4096·1 div 3 = 1365 each (sum 4095) and the shortfall 1
    #    goes to the lowest of the equally counted symbols, s = 2: freq[2..4] = 1366, 1365, 1365.
    cases.append(case("tiny b=2 1x3 (shortfall tie to the lowest symbol)", 2, 1, 3, 4, [1, 2, 0], [1]))

    # 2. One symbol only: every code equals its zero point, so d = 2^b − 1 everywhere and
    #    freq[2^b − 1] = M. Each step leaves x = L unchanged: no renormalisation bytes, each
    #    stream is just the state 00 80 00 00.
    rows, cols, G = 3, 7, 4
    zeros = [(5 * r + 3 * g + 1) % 8 for r in range(rows) for g in range(2)]
    codes = [zeros[r * 2 + c // G] for r in range(rows) for c in range(cols)]
    cases.append(case("single symbol b=3 3x7 G=4 (q = z everywhere)", 3, rows, cols, G, codes, zeros))

    # 3. Rare symbols: N = 128·64 = 8192 = 2M codes, z = 8, b = 4. d = 14 and d = 15 occur 3000
    #    times each, d = 16 2188 times (cnt·M div N = 1500, 1500, 1094, exact) and d = 7, 9, 20,
    #    22 once each (cnt·M div N = 0, so max(1, ·) = 1). Σ freq = 4098 > M: lowered by one
    #    twice, first the lower of the two equal largest (s = 14), then s = 15, giving 1499,
    #    1499, 1094 and four 1s. The rare symbols sit at the first and last position of each of
    #    the two streams; with f = 1 they make the encoder emit, and the decoder read,
    #    renormalisation bytes right at the streams' ends.
    rng = Lcg(3)
    rows, cols, G, b = 128, 64, 16, 4
    P = -(-cols // G)
    zeros = [8] * (rows * P)
    codes = [7] * 3000 + [8] * 3000 + [9] * 2188  # d = q − 8 + 15
    for i in range(len(codes) - 1, 0, -1):  # Fisher-Yates shuffle with the LCG
        j = rng.below(i + 1)
        codes[i], codes[j] = codes[j], codes[i]
    for pos, q in ((0, 0), (4095, 2), (4096, 13), (8191, 15)):  # d = 7, 9, 20, 22
        codes.insert(pos, q)
    cases.append(case("rare symbols b=4 128x64 G=16 (freq 1 at stream ends, sum over M lowered)",
                      b, rows, cols, G, codes, zeros))

    # 4. R = 130: three streams of 64, 64 and 2 rows; C = 5 with G = 2 (last group partial).
    rng = Lcg(130)
    rows, cols, G, b = 130, 5, 2, 4
    P = -(-cols // G)
    zeros = [rng.below(16) for _ in range(rows * P)]
    codes = [peaked(rng, b, zeros[r * P + c // G], 3) for r in range(rows) for c in range(cols)]
    cases.append(case("R=130 b=4 130x5 G=2 (3 streams, the last 2 rows)", b, rows, cols, G, codes, zeros))

    # 5. b = 8: 511 symbols, every one of them used. Row 0 has z = 255 and q = 0..255 (d = 0..255),
    #    row 1 z = 0 and q = 0..255 (d = 255..510); rows 2..5 are peaked around varying zeros.
    rng = Lcg(8)
    rows, cols, G, b = 6, 256, 128, 8
    zeros = [255, 255, 0, 0] + [rng.below(256) for _ in range(8)]
    codes = list(range(256)) + list(range(256))
    for r in range(2, rows):
        codes += [peaked(rng, b, zeros[r * 2 + c // G], 6) for c in range(cols)]
    cases.append(case("b=8 6x256 G=128 (all 511 symbols)", b, rows, cols, G, codes, zeros))

    # 6. Pseudo-random 5-bit 64x96, G = 32, peaked around per-group zero points (like the
    #    default codec's codes): one full stream, freq with a shortfall.
    rng = Lcg(5)
    rows, cols, G, b = 64, 96, 32, 5
    P = -(-cols // G)
    zeros = [8 + rng.below(16) for _ in range(rows * P)]
    codes = [peaked(rng, b, zeros[r * P + c // G], 4) for r in range(rows) for c in range(cols)]
    cases.append(case("peaked b=5 64x96 G=32 (LCG seed 5)", b, rows, cols, G, codes, zeros))
    return cases


# --------------------------------------------------------------------------------------------
# Round trip through scripts/ucw_decode.py, and the file
# --------------------------------------------------------------------------------------------


def decode_case(c, rans: bytes | None = None, freq=None, lens=None):
    """The codes ucw_decode.py decodes from a case (optionally with altered tensors)."""
    import numpy as np

    rans = bytes.fromhex(c["rans_hex"]) if rans is None else rans
    P = -(-c["cols"] // c["group_size"])
    zeros = np.array(c["zeros"], dtype=np.int64).reshape(c["rows"], P)
    q = dec.decode_rans_codes(rans, c["freq"] if freq is None else freq, c["len"] if lens is None else lens,
                              zeros, c["rows"], c["cols"], c["bits"], c["group_size"], name="kat")
    return q.reshape(-1).tolist()


def check_case(c):
    assert sum(c["freq"]) == M, c["name"]
    assert len(c["freq"]) == (2 << c["bits"]) - 1
    assert len(c["len"]) == -(-c["rows"] // STREAM_ROWS)
    assert sum(c["len"]) * 2 == len(c["rans_hex"])
    got = decode_case(c)
    assert got == c["codes"], f"{c['name']}: ucw_decode.py does not give the codes back"


def faults(cases, show: bool = False) -> int:
    """Damaged inputs that §4.1 makes invalid: each must be refused by ucw_decode.py with a
    message (RansInvalid, a Malformed). Returns the number of faults tried."""
    by_name = {c["name"].split(" ")[0]: c for c in cases}
    peak, r130, tiny = by_name["peaked"], by_name["R=130"], by_name["tiny"]
    rans = bytes.fromhex(peak["rans_hex"])
    rans130 = bytes.fromhex(r130["rans_hex"])
    l130 = r130["len"]
    flipped = bytearray(rans)
    flipped[len(rans) // 2] ^= 0x10
    # q = 1, 2, 3 with z = 1 encode d = 3, 4, 5; decoded with z = 2 instead, d = 5 gives q = 4.
    tinyq_freq, _, tiny_bad = encode([1, 2, 3], [1], 1, 3, 2, 4)
    tinyq = dict(tiny, codes=[1, 2, 3], zeros=[2])
    single = by_name["single"]
    # Σ freq = M + 1 through a symbol no slot below M reaches (the last one, unused): decoding
    # itself is unaffected, only the Σ freq rule refuses it.
    freq_tail = list(peak["freq"])
    assert freq_tail[-1] == 0
    freq_tail[-1] = 1
    # A stream whose last byte is 0x00: cut it and a decoder that read zeros past the end would
    # decode the same codes; only "it must have one" (a missing byte) refuses it.
    rng = Lcg(0)
    while True:
        zcase = dict(tiny, cols=40, codes=[peaked(rng, 2, 1, 1) for _ in range(40)], zeros=[1] * 10,
                     group_size=4)
        zfreq, zlen, zrans = encode(zcase["codes"], zcase["zeros"], 1, 40, 2, 4)
        if zrans[-1] == 0 and zlen[0] > 5:
            break
    zcase.update(freq=zfreq, len=zlen)
    freq_plus = list(peak["freq"])
    freq_plus[max(range(len(freq_plus)), key=lambda s: freq_plus[s])] += 1
    freq_moved = list(peak["freq"])  # still Σ = M, but the table the streams were not coded with
    top = max(range(len(freq_moved)), key=lambda s: freq_moved[s])
    freq_moved[top] -= 1
    freq_moved[top + 1] += 1
    tries = [
        ("a flipped byte in a stream", peak, dict(rans=bytes(flipped))),
        ("the state's first byte flipped", peak, dict(rans=bytes([rans[0] ^ 1]) + rans[1:])),
        ("a truncated stream (last byte cut, len too)", peak,
         dict(rans=rans[:-1], lens=[peak["len"][0] - 1])),
        ("a truncated .rans (len unchanged)", peak, dict(rans=rans[:-1])),
        ("a byte appended to the stream (len too)", peak, dict(rans=rans + b"\x00", lens=[peak["len"][0] + 1])),
        ("freq summing to M + 1", peak, dict(freq=freq_plus)),
        ("freq summing to M + 1 via an unused last symbol", peak, dict(freq=freq_tail)),
        ("freq summing to M but not the coding table", peak, dict(freq=freq_moved)),
        ("len summing to more than n", r130, dict(lens=[l130[0], l130[1], l130[2] + 1])),
        ("len moving a byte between streams 0 and 1", r130, dict(lens=[l130[0] + 1, l130[1] - 1, l130[2]])),
        ("a stream shorter than 4 bytes", r130,
         dict(rans=rans130[: l130[0] + l130[1]] + rans130[-3:], lens=[l130[0], l130[1], 3])),
        ("streams 1 and 2 swapped", r130,
         dict(rans=rans130[: l130[0]] + rans130[l130[0] + l130[1]:] + rans130[l130[0]: l130[0] + l130[1]],
              lens=[l130[0], l130[2], l130[1]])),
        ("a code decoding to q = 2^b (symbol 5 with z = 2, b = 2)", tinyq,
         dict(rans=tiny_bad, freq=tinyq_freq)),
        ("a one-symbol stream whose state is L + 1", single, dict(rans=bytes.fromhex("00800001"))),
        ("a one-symbol stream of 3 bytes, 80 00 00 (len 3)", single, dict(rans=bytes.fromhex("800000"), lens=[3])),
        ("a stream's trailing 0x00 byte cut (len too)", zcase, dict(rans=zrans[:-1], lens=[zlen[0] - 1])),
    ]
    for what, c, kw in tries:
        try:
            got = decode_case(c, **kw)
        except dec.Malformed as exc:
            if show:
                print(f"  refused, {what}: {exc}")
            continue
        raise AssertionError(f"{what}: not refused (decoded {'the same' if got == c['codes'] else 'other'} codes)")
    return len(tries)


# --------------------------------------------------------------------------------------------
# A whole pack: re-store a codec version 1/2 pack's codes rANS-coded (codec version 3)
# --------------------------------------------------------------------------------------------


def write_safetensors(path: str, tensors: dict, metadata: dict | None):
    """§3: canonical JSON header padded with 0..7 spaces, data in bytewise name order."""
    header, off, order = {}, 0, sorted(tensors, key=dec.name_key)
    for name in order:
        dtype, shape, data = tensors[name]
        header[name] = {"data_offsets": [off, off + len(data)], "dtype": dtype, "shape": shape}
        off += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = dec.canonical_json(header)
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fh:
        fh.write(len(h).to_bytes(8, "little") + h)
        for name in order:
            fh.write(tensors[name][2])


def to_v3_pack(src: str, dst: str, damage=None):
    """Copy pack `src` (codec version 1 or 2) to `dst` as codec version 3: every linear's
    .codes replaced by .rans, .rans_freq, .rans_len from the reference encoder; metadata,
    manifest versions, file list and bits_per_weight updated. The reconstructed tensors, so
    their digests and the weights digest, are unchanged. `damage(name, tensors)` may alter a
    linear's new tensors (the file digests are then computed over the damaged bytes)."""
    import numpy as np

    with open(os.path.join(src, dec.MANIFEST), "rb") as fh:
        man = json.loads(fh.read())
    os.makedirs(dst, exist_ok=True)
    delta_bytes = 0
    for fentry in man["files"]:
        name = fentry["name"]
        if not dec.LAYER_FILE_RE.fullmatch(name):
            with open(os.path.join(src, name), "rb") as a, open(os.path.join(dst, name), "wb") as b:
                b.write(a.read())
            continue
        f = dec.SafeTensorsFile(os.path.join(src, name))
        try:
            meta = json.loads(f.metadata["ucw"])
            tensors = {n: (t.dtype, t.shape, f.mm[t.begin:t.end]) for n, t in f.tensors.items()}
            for lin, md in meta["tensors"].items():
                (R, C), b, G = md["shape"], md["bits"], md["group_size"]
                P = -(-C // G)
                q, _ = dec.unpack_rows(f.array(lin + ".codes", 0, R), C, b)
                z, _ = dec.unpack_rows(f.array(lin + ".zeros", 0, R), P, b)
                freq, lens, rans = encode(q.reshape(-1).tolist(), z.reshape(-1).tolist(), R, C, b, G)
                new = {lin + ".rans": ("U8", [len(rans)], rans),
                       lin + ".rans_freq": ("U16", [len(freq)], np.array(freq, "<u2").tobytes()),
                       lin + ".rans_len": ("U32", [len(lens)], np.array(lens, "<u4").tobytes())}
                if damage is not None:
                    damage(lin, new)
                delta_bytes += sum(len(v[2]) for v in new.values()) - len(tensors.pop(lin + ".codes")[2])
                tensors.update(new)
            meta["codec_version"] = 3
        finally:
            f.close()
        write_safetensors(os.path.join(dst, name), tensors, {"ucw": dec.canonical_json(meta).decode()})
    for fentry in man["files"]:
        size, digest = dec.file_sha256(os.path.join(dst, fentry["name"]))
        fentry["size"], fentry["sha256"] = size, digest
    man["codec"]["version"] = man["tool"]["codec_version"] = 3
    if man["codec"]["calibration"] is not None:
        man["codec"]["parameters"].setdefault("damp", "1")  # §2.1: calibrated version 3 has damp
    man["bits_per_weight"]["linears"]["bits"] += 8 * delta_bytes
    man["bits_per_weight"]["pack"]["bits"] += 8 * delta_bytes
    with open(os.path.join(dst, dec.MANIFEST), "wb") as fh:
        fh.write(dec.canonical_json(man))


def pack_test(src: str) -> int:
    """Verify a codec-3 copy of pack `src` with ucw_decode.py, then damaged copies."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rans_kat_") as tmp:
        good = os.path.join(tmp, "v3.ucw")
        to_v3_pack(src, good)
        out, code = dec.verify_pack(good, None)
        want, _ = dec.verify_pack(src, None)
        print(f"v3 copy of {src}: exit {code}, ok {out['ok']}, {out['tensors_checked']} tensors, weights digest "
              f"{'equal to' if out['weights_digest'] == want['weights_digest'] else 'DIFFERENT from'} the original's")
        failed = code != 0 or out["weights_digest"] != want["weights_digest"]
        if out["mismatches"]:
            print(json.dumps(out["mismatches"], indent=1))

        def flip(lin, new):
            if lin.endswith("layers.1.mlp.up_proj.weight"):
                dtype, shape, data = new[lin + ".rans"]
                data = bytearray(data)
                data[len(data) // 2] ^= 0x01
                new[lin + ".rans"] = (dtype, shape, bytes(data))

        def freq(lin, new):
            if lin.endswith("layers.0.self_attn.k_proj.weight"):
                dtype, shape, data = new[lin + ".rans_freq"]
                data = bytearray(data)
                data[2 * (len(data) // 4)] ^= 0x01
                new[lin + ".rans_freq"] = (dtype, shape, bytes(data))

        for what, damage in (("a flipped .rans byte", flip), ("a changed frequency", freq)):
            bad = os.path.join(tmp, what.replace(" ", "_"))
            to_v3_pack(src, bad, damage)
            out, code = dec.verify_pack(bad, None)
            print(f"v3 copy with {what}: exit {code}, mismatches {json.dumps(out['mismatches'])}")
            failed |= code != 1 or not any(m["kind"] == "rans" for m in out["mismatches"])
    return 1 if failed else 0


def dump(cases) -> str:
    # One case per line keeps the diff of a changed case readable; compact inside.
    lines = [json.dumps(c, separators=(",", ":")) for c in cases]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="rANS known-answer tests (FORMAT.md §4.1)")
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    ap.add_argument("--faults", action="store_true", help="print the decoder's message for each damaged input")
    ap.add_argument("--pack", metavar="PACK_DIR",
                    help="instead: verify a codec-3 copy of this (codec 1 or 2) pack, and damaged copies")
    args = ap.parse_args(argv)
    if args.pack:
        return pack_test(args.pack)
    cases = make_cases()
    for c in cases:
        check_case(c)
    nfaults = faults(cases, show=args.faults)
    text = dump(cases)
    if args.check:
        try:
            with open(KAT_PATH, encoding="utf-8") as fh:
                committed_text = fh.read()
            committed = json.loads(committed_text)
        except (OSError, ValueError) as exc:
            print(f"rans_kat: cannot read {KAT_PATH}: {exc}", file=sys.stderr)
            return 1
        bad = False
        names = [c["name"] for c in cases]
        if [c.get("name") for c in committed] != names:
            print(f"rans_kat: the committed cases are {[c.get('name') for c in committed]}, the encoder "
                  f"makes {names}", file=sys.stderr)
            bad = True
        for new, old in zip(cases, committed):
            for key in new:
                if new[key] != old.get(key):
                    print(f"rans_kat: case {new['name']!r}: {key} differs from the committed file",
                          file=sys.stderr)
                    bad = True
            for key in set(old) - set(new):
                print(f"rans_kat: case {old.get('name')!r}: unexpected key {key!r}", file=sys.stderr)
                bad = True
        # The committed cases must decode too (whatever the encoder says).
        for old in committed:
            try:
                check_case(old)
            except (AssertionError, dec.Malformed, KeyError, TypeError, ValueError) as exc:
                print(f"rans_kat: committed case {old.get('name')!r} does not decode: {exc}", file=sys.stderr)
                bad = True
        if not bad and committed_text != text:
            print("rans_kat: same values, but the committed file's bytes differ (layout)", file=sys.stderr)
            bad = True
        if bad:
            return 1
        print(f"rans_kat: {len(cases)} cases match {os.path.relpath(KAT_PATH, ROOT)} and round-trip; "
              f"{nfaults} damaged inputs refused")
        return 0
    os.makedirs(os.path.dirname(KAT_PATH), exist_ok=True)
    with open(KAT_PATH, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"rans_kat: wrote {len(cases)} cases ({len(text)} bytes) to {os.path.relpath(KAT_PATH, ROOT)}; "
          f"each round-trips through scripts/ucw_decode.py; {nfaults} damaged inputs refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
