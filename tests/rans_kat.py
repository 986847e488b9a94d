#!/usr/bin/env python3
"""Known-answer tests for the rANS streams of codec versions 3 and 4 (docs/FORMAT.md §4.1, §4.2).

An independent reference ENCODER, written from the informative "Encoding" paragraphs of §4.1
and §4.2 alone, makes a handful of small cases; each is decoded again by the decoder of
scripts/ucw_decode.py (which follows the normative decoding procedure and validity rules) and
must give back the codes (and, in version 4, the scale codes and zero points) exactly. The
cases are written to tests/data/rans_kat.json so that another implementation (ucw's own
encoder and decoder) can be checked against the same bytes.

    python3 tests/rans_kat.py            # (re)write tests/data/rans_kat.json
    python3 tests/rans_kat.py --check    # re-encode; exit 1 if the committed file differs
    python3 tests/rans_kat.py --faults   # also print the decoder's refusal of each damaged input
    python3 tests/rans_kat.py --pack P   # verify codec-3 and codec-4 copies of the codec-1/2 pack
                                         # P (and damaged copies) with ucw_decode.py

Every run also feeds ucw_decode.py damaged inputs (a flipped byte, truncated streams, a byte
too many, a table not summing to M, wrong len, a stream under 4 bytes, a final state != L, q
out of range, a version-3 stream read as version 4 and the reverse, ...) and requires each to
be refused with a RansInvalid message.

The JSON file is a list of cases: first the six version-3 cases, then the same six as
version-4 cases (same codes; scale codes added, and in the single-symbol case constant zero
points), then one more hand-checked version-4 case. Each is an object with:
  name        a short description (unique; version-4 names start with "v4 ")
  version     3 (§4.1: the streams hold the codes) or 4 (§4.2: scale codes and zero points too)
  bits        b, the code width (2..8); code symbols are d = q − z + 2^b − 1 in 0..2^(b+1) − 2
  rows, cols  R, C of the linear
  group_size  G; P = ceil(C / G) groups per row
  codes       the R·C codes q[r][c], flattened row-major (index r·C + c)
  scales      version 4 only: the R·P scale codes s[r][g] (0..255), flattened row-major (r·P + g)
  zeros       the R·P zero points z[r][g], flattened row-major (index r·P + g)
  freq        the entries of <name>.rans_freq (U16 values): version 3 the 2^(b+1) − 1 of the code
              table; version 4 the scale table (256), the zero table (2^b) and the code table
              (2^(b+1) − 1), back to back
  len         the S = ceil(R / 64) entries of <name>.rans_len (U32 values)
  rans_hex    the n = Σ len bytes of <name>.rans, lowercase hex
In version 3 the scale codes and zero points are stored as .scales and bit-packed .zeros (§4),
so only the zero points, which the code symbols need, are in the case.

Encoder (§4.1, informative): cnt[s] over the whole tensor, N = the number of symbols counted;
freq[s] = max(1, cnt[s]·M div N) where cnt[s] > 0, else 0; while Σ freq > M, lower by one the
largest freq[s] > 1 (the lowest s among equals); add any shortfall M − Σ freq to the symbol with
the largest cnt[s] (the lowest s among equals). Each 64-row stream is encoded from its last
symbol to its first from x = L: with f = freq[s], while x >= 2^19·f emit x mod 256 and
x = x div 256; then x = (x div f)·M + x mod f + cum[s]. Then the 4 bytes of x, least
significant first; the stream is the emitted bytes reversed. Version 4 (§4.2) builds the three
tables each from its own symbols' counts over the whole tensor (N = R·P for the scale and zero
tables, R·C for the code table) and encodes each symbol with its own table; a stream's symbols
are, per row and per group, the scale code, the zero point, then the group's code symbols.

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
SCALES = 256      # §4.2: scale table entries


# --------------------------------------------------------------------------------------------
# Reference encoder (§4.1 and §4.2, informative paragraphs)
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


def table(symbols, nsym):
    """(freq, cum) of a table of nsym entries built from these symbols' counts."""
    assert all(0 <= s < nsym for s in symbols)
    cnt = [0] * nsym
    for s in symbols:
        cnt[s] += 1
    freq = normalise(cnt)
    cum = [0] * nsym
    for s in range(1, nsym):
        cum[s] = cum[s - 1] + freq[s - 1]
    return freq, cum


def encode_stream(fc) -> bytes:
    """One stream from its symbols, each given as (freq[s], cum[s]) of its own table."""
    x = L
    out = []
    for f, c in reversed(fc):  # from the last symbol to the first
        while x >= (1 << 19) * f:
            out.append(x % 256)
            x //= 256
        x = (x // f) * M + x % f + c
    out.extend([x & 255, (x >> 8) & 255, (x >> 16) & 255, (x >> 24) & 255])  # LS byte first
    return bytes(reversed(out))


def encode(codes, zeros, rows, cols, bits, group_size):
    """Codec version 3 (§4.1): (freq, len, rans bytes) of a linear's codes."""
    d = symbols_of(codes, zeros, rows, cols, bits, group_size)
    freq, cum = table(d, (2 << bits) - 1)
    streams = []
    for r0 in range(0, rows, STREAM_ROWS):
        r1 = min(rows, r0 + STREAM_ROWS)
        streams.append(encode_stream([(freq[s], cum[s]) for s in d[r0 * cols: r1 * cols]]))
    return freq, [len(s) for s in streams], b"".join(streams)


def encode_v4_symbols(scales, zeros, d, rows, cols, bits, group_size):
    """Codec version 4 (§4.2) from the three symbol classes (scale codes and zero points
    [R·P], code symbols d [R·C], row-major): (freq = the three tables, len, rans bytes)."""
    P = -(-cols // group_size)
    fs, cs = table(scales, SCALES)
    fz, cz = table(zeros, 1 << bits)
    fd, cd = table(d, (2 << bits) - 1)
    streams = []
    for r0 in range(0, rows, STREAM_ROWS):
        fc = []
        for r in range(r0, min(rows, r0 + STREAM_ROWS)):
            for g in range(P):
                s, z = scales[r * P + g], zeros[r * P + g]
                fc += [(fs[s], cs[s]), (fz[z], cz[z])]
                for c in range(g * group_size, min((g + 1) * group_size, cols)):
                    t = d[r * cols + c]
                    fc.append((fd[t], cd[t]))
        streams.append(encode_stream(fc))
    return fs + fz + fd, [len(s) for s in streams], b"".join(streams)


def encode_v4(codes, scales, zeros, rows, cols, bits, group_size):
    """Codec version 4 (§4.2): (freq, len, rans bytes) of a linear's codes, scales and zeros."""
    d = symbols_of(codes, zeros, rows, cols, bits, group_size)
    return encode_v4_symbols(scales, zeros, d, rows, cols, bits, group_size)


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
    """A codec version 3 case (§4.1)."""
    P = -(-cols // group_size)
    assert len(codes) == rows * cols and len(zeros) == rows * P
    assert all(0 <= v < (1 << bits) for v in codes + zeros)
    freq, lens, rans = encode(codes, zeros, rows, cols, bits, group_size)
    return {"name": name, "version": 3, "bits": bits, "rows": rows, "cols": cols, "group_size": group_size,
            "codes": codes, "zeros": zeros, "freq": freq, "len": lens, "rans_hex": rans.hex()}


def case_v4(name, bits, rows, cols, group_size, codes, scales, zeros):
    """A codec version 4 case (§4.2)."""
    P = -(-cols // group_size)
    assert len(codes) == rows * cols and len(zeros) == rows * P and len(scales) == rows * P
    assert all(0 <= v < (1 << bits) for v in codes + zeros) and all(0 <= v < SCALES for v in scales)
    freq, lens, rans = encode_v4(codes, scales, zeros, rows, cols, bits, group_size)
    return {"name": name, "version": 4, "bits": bits, "rows": rows, "cols": cols, "group_size": group_size,
            "codes": codes, "scales": scales, "zeros": zeros, "freq": freq, "len": lens,
            "rans_hex": rans.hex()}


def peaked(rng: Lcg, bits: int, zero: int, spread: int) -> int:
    """A code near `zero`: the zero point plus a difference of two small uniform draws (a
    triangular distribution, peaked at 0), clamped to the code range."""
    delta = rng.below(spread + 1) - rng.below(spread + 1)
    return min(max(zero + delta, 0), (1 << bits) - 1)


def peaked_scale(rng: Lcg, center: int, spread: int) -> int:
    """A scale code near `center` (triangular, like peaked), clamped to 0..255."""
    return min(max(center + rng.below(spread + 1) - rng.below(spread + 1), 0), SCALES - 1)


def make_cases():
    """The version-3 cases, then the version-4 ones (make_v4_cases)."""
    v3 = make_v3_cases()
    return v3 + make_v4_cases(v3)


def make_v3_cases():
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


def make_v4_cases(v3):
    """Each version-3 case as a version-4 case (§4.2): the same codes and zero points (except
    where said), plus scale codes drawn with the LCG, peaked around a per-case centre. Then
    the hand-checked case of ucw_decode.py's self-test."""
    by = {c["name"].split(" ")[0]: c for c in v3}
    cases = []

    def again(key, name, scales, codes=None, zeros=None):
        c = by[key]
        cases.append(case_v4("v4 " + name, c["bits"], c["rows"], c["cols"], c["group_size"],
                             c["codes"] if codes is None else codes, scales,
                             c["zeros"] if zeros is None else zeros))

    def drawn(key, seed, center, spread):
        c = by[key]
        rng = Lcg(seed)
        return [peaked_scale(rng, center, spread) for _ in c["zeros"]]

    # 1. One group: one scale code (0x47) and one zero point, so the scale and zero tables each
    #    have one symbol (freq = M). A one-symbol table leaves x unchanged (x = (x div M)·M +
    #    x mod M) and never renormalises (x < 2^31 = 2^19·M), so the stream is the version-3
    #    one, 0d 80 15 57, and the tables are freq[0x47] = 4096, freq[256 + 1] = 4096, then the
    #    version-3 code table.
    again("tiny", "tiny b=2 1x3 (one group: one-symbol scale and zero tables, stream as in v3)", [0x47])
    # 2. Every table one symbol: constant scale code 0x3a and zero point 5 (unlike the v3 case,
    #    whose zero points vary), q = z: each stream is the bare state 00 80 00 00.
    c = by["single"]
    P = -(-c["cols"] // c["group_size"])
    again("single", "single symbol b=3 3x7 G=4 (every table one symbol, stream 00800000)",
          [0x3A] * (c["rows"] * P), codes=[5] * (c["rows"] * c["cols"]), zeros=[5] * (c["rows"] * P))
    # 3. Constant zero point 8 (a one-symbol zero table), scales peaked around 0x68.
    again("rare", "rare symbols b=4 128x64 G=16 (one-symbol zero table, peaked scales)",
          drawn("rare", 103, 0x68, 3))
    # 4. Three streams, the last of 2 rows; a partial last group; uniform zeros, peaked scales.
    again("R=130", "R=130 b=4 130x5 G=2 (3 streams, the last 2 rows; peaked scales)",
          drawn("R=130", 1130, 0x50, 2))
    # 5. b = 8 (256-entry zero table); row 0's scale codes are 0 and 255, the table's ends.
    again("b=8", "b=8 6x256 G=128 (all 511 code symbols; scale codes 0 and 255)",
          [0, 255] + drawn("b=8", 108, 0x30, 4)[2:])
    # 6. Like the default codec: 5 bits, G = 32, peaked codes, zeros and scales.
    again("peaked", "peaked b=5 64x96 G=32 (LCG seed 5; peaked scales, LCG seed 105)",
          drawn("peaked", 105, 0x75, 3))
    # 7. The hand-checked stream of ucw_decode.py's self-test (the arithmetic is there): b = 2,
    #    1x2, G = 1; scales 0x10, 0x11, zeros 1, 2, codes 2, 2 (d = 4, 3); every table two
    #    symbols of 2048; the stream is 20 00 e0 00.
    cases.append(case_v4("v4 hand b=2 1x2 G=1 (two symbols per table, stream 2000e000)", 2, 1, 2, 1,
                         [2, 2], [0x10, 0x11], [1, 2]))
    return cases




# --------------------------------------------------------------------------------------------
# Round trip through scripts/ucw_decode.py, and the file
# --------------------------------------------------------------------------------------------


def decode_case(c, rans: bytes | None = None, freq=None, lens=None, version=None):
    """What ucw_decode.py decodes from a case (optionally with altered tensors, or read as the
    other codec version): {"codes"} in version 3, {"codes", "scales", "zeros"} in version 4,
    each flattened row-major."""
    import numpy as np

    rans = bytes.fromhex(c["rans_hex"]) if rans is None else rans
    freq = c["freq"] if freq is None else freq
    lens = c["len"] if lens is None else lens
    R, C, b, G = c["rows"], c["cols"], c["bits"], c["group_size"]
    if (c["version"] if version is None else version) >= 4:
        q, s, z = dec.decode_rans_v4(rans, freq, lens, R, C, b, G, name="kat")
        return {"codes": q.reshape(-1).tolist(), "scales": s.reshape(-1).tolist(), "zeros": z.reshape(-1).tolist()}
    zeros = np.array(c["zeros"], dtype=np.int64).reshape(R, -(-C // G))
    q = dec.decode_rans_codes(rans, freq, lens, zeros, R, C, b, G, name="kat")
    return {"codes": q.reshape(-1).tolist()}


def check_case(c):
    v, b = c["version"], c["bits"]
    assert v in (3, 4), c["name"]
    assert len(c["freq"]) == dec.rans_freq_entries(b, v), c["name"]
    if v == 4:  # three tables, each summing to M (§4.2)
        tables = (c["freq"][:SCALES], c["freq"][SCALES:SCALES + (1 << b)], c["freq"][SCALES + (1 << b):])
        assert [sum(t) for t in tables] == [M] * 3, c["name"]
        assert ("scales" in c) and len(c["scales"]) == len(c["zeros"]), c["name"]
    else:
        assert sum(c["freq"]) == M and "scales" not in c, c["name"]
    assert len(c["len"]) == -(-c["rows"] // STREAM_ROWS)
    assert sum(c["len"]) * 2 == len(c["rans_hex"])
    got = decode_case(c)
    for key, values in got.items():
        assert values == c[key], f"{c['name']}: ucw_decode.py does not give the {key} back"


def faults(cases, show: bool = False) -> int:
    """Damaged inputs that §4.1/§4.2 make invalid: each must be refused by ucw_decode.py with a
    message (RansInvalid, a Malformed). Returns the number of faults tried."""
    by_name = {c["name"].split(" ")[0]: c for c in cases if c["version"] == 3}
    by4 = {c["name"].split(" ")[1]: c for c in cases if c["version"] == 4}
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

    # Version 4 (§4.2).
    p4, r4, s4, hand = by4["peaked"], by4["R=130"], by4["single"], by4["hand"]
    b4 = p4["bits"]
    rans4 = bytes.fromhex(p4["rans_hex"])
    zt, ct = SCALES, SCALES + (1 << b4)  # where the zero and code tables start in freq

    def bump(c, lo, hi, delta=1):
        """freq with its largest entry in [lo, hi) changed by delta (that table's sum moves)."""
        f = list(c["freq"])
        f[max(range(lo, hi), key=lambda s: f[s])] += delta
        return f

    moved = list(p4["freq"])  # one unit moved from the scale table to the zero table: Σ all = 3·M
    moved[max(range(SCALES), key=lambda s: moved[s])] -= 1
    moved[max(range(zt, ct), key=lambda s: moved[s])] += 1
    flipped4 = bytearray(rans4)
    flipped4[len(rans4) // 2] ^= 0x10
    # A code out of range: the hand case's second group (z = 2) with code symbol 6 = 2^(b+1) − 2,
    # the table's last, gives q = 6 + 2 − 3 = 5 > 3. Encoded directly from the symbols.
    badq_freq, badq_len, badq = encode_v4_symbols([0x10, 0x11], [1, 2], [4, 6], 1, 2, 2, 1)
    hand_bad = dict(hand, freq=badq_freq, len=badq_len)
    l4 = r4["len"]
    rr4 = bytes.fromhex(r4["rans_hex"])
    tries += [
        ("v4: a flipped byte in a stream", p4, dict(rans=bytes(flipped4))),
        ("v4: the scale table summing to M + 1", p4, dict(freq=bump(p4, 0, SCALES))),
        ("v4: the zero table summing to M − 1", p4, dict(freq=bump(p4, zt, ct, -1))),
        ("v4: the code table summing to M + 1", p4, dict(freq=bump(p4, ct, len(p4["freq"])))),
        ("v4: a unit moved from the scale table to the zero table (Σ of all three = 3·M)", p4, dict(freq=moved)),
        ("v4: a .rans_freq one entry short", p4, dict(freq=p4["freq"][:-1])),
        ("v4: the v3 table (code table alone) as .rans_freq", p4, dict(freq=peak["freq"])),
        ("v4: the v3 stream (codes only) read as v4", p4, dict(rans=rans, lens=peak["len"])),
        ("v4: the v4 stream read as v3 (with the code table and the zero points)", p4,
         dict(freq=p4["freq"][ct:], version=3)),
        ("v4: a truncated stream (last byte cut, len too)", p4, dict(rans=rans4[:-1], lens=[p4["len"][0] - 1])),
        ("v4: a byte appended (len too)", p4, dict(rans=rans4 + b"\x00", lens=[p4["len"][0] + 1])),
        ("v4: streams 1 and 2 swapped", r4,
         dict(rans=rr4[: l4[0]] + rr4[l4[0] + l4[1]:] + rr4[l4[0]: l4[0] + l4[1]], lens=[l4[0], l4[2], l4[1]])),
        ("v4: a code decoding to q = 2^b + 1 (symbol 6 with z = 2, b = 2)", hand_bad, dict(rans=badq)),
        ("v4: a one-symbol stream whose state is L + 1", s4, dict(rans=bytes.fromhex("00800001"))),
    ]
    for what, c, kw in tries:
        try:
            got = decode_case(c, **kw)
        except dec.Malformed as exc:
            if show:
                print(f"  refused, {what}: {exc}")
            continue
        same = all(got[k] == c[k] for k in got)
        raise AssertionError(f"{what}: not refused (decoded {'the same' if same else 'other'} values)")
    return len(tries)


# --------------------------------------------------------------------------------------------
# A whole pack: re-store a codec version 1/2 pack's linears rANS-coded (codec version 3 or 4)
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


def to_rans_pack(src: str, dst: str, version: int, damage=None, claim: int | None = None):
    """Copy pack `src` (codec version 1 or 2) to `dst` as codec version `version`: 3 replaces
    every linear's .codes by .rans, .rans_freq, .rans_len from the reference encoder (§4.1); 4
    replaces .codes, .scales and .zeros by them (§4.2). Metadata, manifest versions, file list
    and bits_per_weight are updated; the reconstructed tensors, so their digests and the
    weights digest, are unchanged. `damage(name, tensors)` may alter a linear's new tensors (the
    file digests are then computed over the damaged bytes); `claim` writes another version
    number into the layer metadata and the manifest than the one the tensors follow."""
    import numpy as np

    assert version in (3, 4)
    with open(os.path.join(src, dec.MANIFEST), "rb") as fh:
        man = json.loads(fh.read())
    src_version = man["codec"]["version"]
    assert src_version in (1, 2), f"{src} is codec version {src_version}, not 1 or 2"
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
                q, z = q.reshape(-1).tolist(), z.reshape(-1).tolist()
                if version == 4:
                    s = f.array(lin + ".scales", 0, R).reshape(-1).tolist()
                    freq, lens, rans = encode_v4(q, s, z, R, C, b, G)
                    replaced = (".codes", ".scales", ".zeros")
                else:
                    freq, lens, rans = encode(q, z, R, C, b, G)
                    replaced = (".codes",)
                new = {lin + ".rans": ("U8", [len(rans)], rans),
                       lin + ".rans_freq": ("U16", [len(freq)], np.array(freq, "<u2").tobytes()),
                       lin + ".rans_len": ("U32", [len(lens)], np.array(lens, "<u4").tobytes())}
                if damage is not None:
                    damage(lin, new)
                delta_bytes += sum(len(v[2]) for v in new.values())
                delta_bytes -= sum(len(tensors.pop(lin + sfx)[2]) for sfx in replaced)
                tensors.update(new)
            meta["codec_version"] = version if claim is None else claim
        finally:
            f.close()
        write_safetensors(os.path.join(dst, name), tensors, {"ucw": dec.canonical_json(meta).decode()})
    for fentry in man["files"]:
        size, digest = dec.file_sha256(os.path.join(dst, fentry["name"]))
        fentry["size"], fentry["sha256"] = size, digest
    man["codec"]["version"] = man["tool"]["codec_version"] = version if claim is None else claim
    if man["codec"]["calibration"] is not None:
        # §2.1: calibrated packs of version 2 and later record damp; version 1 used 0.01.
        man["codec"]["parameters"].setdefault("damp", "0.01")
    man["bits_per_weight"]["linears"]["bits"] += 8 * delta_bytes
    man["bits_per_weight"]["pack"]["bits"] += 8 * delta_bytes
    with open(os.path.join(dst, dec.MANIFEST), "wb") as fh:
        fh.write(dec.canonical_json(man))


def pack_test(src: str) -> int:
    """Verify codec-3 and codec-4 copies of pack `src` with ucw_decode.py, then damaged copies."""
    import tempfile

    def alter(suffix, linear_end, edit):
        def damage(lin, new):
            if lin.endswith(linear_end):
                dtype, shape, data = new[lin + suffix]
                data = bytearray(data)
                edit(data)
                new[lin + suffix] = (dtype, shape, bytes(data))
        return damage

    def flip_middle(data):
        data[len(data) // 2] ^= 0x01

    def freq_v3(data):
        data[2 * (len(data) // 4)] ^= 0x01

    def table_entry(first):
        def edit(data):  # + 1 on the largest entry of the table that starts at entry `first`
            f = [int.from_bytes(data[i: i + 2], "little") for i in range(0, len(data), 2)]
            start = first if first >= 0 else SCALES + zeros_of(len(f))  # −1: the code table
            end = {0: SCALES, SCALES: SCALES + zeros_of(len(f))}.get(start, len(f))
            i = max(range(start, end), key=lambda s: f[s])
            data[2 * i: 2 * i + 2] = (f[i] + 1).to_bytes(2, "little")
        return edit

    def zeros_of(nfreq):  # 2^b from 256 + 2^b + 2^(b+1) − 1 entries
        return (nfreq - SCALES + 1) // 3

    failed = False
    with tempfile.TemporaryDirectory(prefix="rans_kat_") as tmp:
        want, _ = dec.verify_pack(src, None)
        for version in (3, 4):
            good = os.path.join(tmp, f"v{version}.ucw")
            to_rans_pack(src, good, version)
            out, code = dec.verify_pack(good, None)
            same = out["weights_digest"] == want["weights_digest"]
            with open(os.path.join(good, dec.MANIFEST), "rb") as fh:
                bpw = json.loads(fh.read())["bits_per_weight"]["linears"]
            print(f"v{version} copy of {src}: exit {code}, ok {out['ok']}, {out['tensors_checked']} tensors, "
                  f"weights digest {out['weights_digest']} ({'equal to' if same else 'DIFFERENT from'} the "
                  f"original's), linears {bpw['bits'] / bpw['weights']:.4f} bits/weight")
            failed |= code != 0 or not same
            if out["mismatches"]:
                print(json.dumps(out["mismatches"], indent=1))
        damaged = [
            ("v3 copy with a flipped .rans byte", 3, None,
             alter(".rans", "layers.1.mlp.up_proj.weight", flip_middle), "rans"),
            ("v3 copy with a changed frequency", 3, None,
             alter(".rans_freq", "layers.0.self_attn.k_proj.weight", freq_v3), "rans"),
            ("v4 copy with a flipped .rans byte", 4, None,
             alter(".rans", "layers.1.mlp.up_proj.weight", flip_middle), "rans"),
            ("v4 copy with its scale table summing to M + 1", 4, None,
             alter(".rans_freq", "layers.0.self_attn.k_proj.weight", table_entry(0)), "rans"),
            ("v4 copy with its zero table summing to M + 1", 4, None,
             alter(".rans_freq", "layers.0.self_attn.q_proj.weight", table_entry(SCALES)), "rans"),
            ("v4 copy with its code table summing to M + 1", 4, None,
             alter(".rans_freq", "layers.1.mlp.down_proj.weight", table_entry(-1)), "rans"),
            ("v3 layer files and manifest claiming codec version 4", 3, 4, None, "layer-tensor"),
            ("v4 layer files and manifest claiming codec version 3", 4, 3, None, "layer-tensor"),
        ]
        for what, version, claim, damage, kind in damaged:
            bad = os.path.join(tmp, what.replace(" ", "_"))
            to_rans_pack(src, bad, version, damage, claim)
            out, code = dec.verify_pack(bad, None)
            kinds = sorted({m["kind"] for m in out["mismatches"]})
            print(f"{what}: exit {code}, {len(out['mismatches'])} mismatches of kinds {kinds}; first: "
                  f"{json.dumps(out['mismatches'][0]) if out['mismatches'] else None}")
            failed |= code != 1 or kind not in kinds
    return 1 if failed else 0


def dump(cases) -> str:
    # One case per line keeps the diff of a changed case readable; compact inside.
    lines = [json.dumps(c, separators=(",", ":")) for c in cases]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="rANS known-answer tests (FORMAT.md §4.1, §4.2)")
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    ap.add_argument("--faults", action="store_true", help="print the decoder's message for each damaged input")
    ap.add_argument("--pack", metavar="PACK_DIR",
                    help="instead: verify codec-3 and codec-4 copies of this (codec 1 or 2) pack, and damaged copies")
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
