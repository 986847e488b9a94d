#!/usr/bin/env python3
"""Independent decoder and verifier for ucw packs (format "ucw-pack" version 1, codec ucw-q1,
codec versions 1 to 4).

Written from docs/FORMAT.md and docs/DIGESTS.md alone; it shares no code with ucw. Section
references such as "§4" are to docs/FORMAT.md.

    python3 scripts/ucw_decode.py PACK_DIR [--export OUT.safetensors]
    python3 scripts/ucw_decode.py --self-test

Steps (the order of FORMAT.md §7):
  1. read ucw-manifest.json, refuse non-canonical bytes, unknown versions and invalid names (§2);
  2. compare every listed file's size and SHA-256, and look for missing or unexpected files (§1, §2);
  3. parse the safetensors files (§3); unpack the zero points and the codes: bit-packed in codec
     versions 1 and 2 (§4), rANS-coded in codec version 3 (§4.1: the frequency table and stream
     lengths are checked first, then each 64-row stream is decoded and must end on its last
     byte with the state at L, and every q = d + z − 2^b + 1 must lie in 0..2^b − 1); in codec
     version 4 the scale codes and zero points come from the same streams (§4.2: three tables
     back to back in .rans_freq, scale 256 + zero 2^b + code 2^(b+1) − 1 entries, each summing
     to M; per row, per group: the scale code, the zero point, then the group's code symbols);
     add the low-rank overlay where a tensor has one, and reconstruct every quantized tensor
     with exact integer arithmetic and a single round-to-nearest-even of the exact sum (§4);
  4. recompute every tensor digest, the weights digest and the pack digest (§5);
  5. print a JSON report on stdout.
With --export, every deployed tensor (reconstructed + raw) is also written to one safetensors
file, in the same pass.

Exit status: 0 everything matches, 1 some mismatch, 2 the pack cannot be read.

Report: {"pack_digest", "weights_digest" (recomputed from the decoded bytes), "tensors_checked",
"mismatches": [{"kind", "name", "expected"?, "actual"?, "detail"?}...], "ok"}, plus "error" when
the pack cannot be read. A file that cannot be parsed (whether or not it passed its
size/SHA-256 check) is a mismatch of the tensors it holds (exit 1, FORMAT.md §7).
With --export the output is written only when the pack verifies (to OUT.partial, then renamed).

Manifest checks (§2, §2.1, §2.2; a violation makes the pack unreadable, exit 2):
  - codec.parameters holds bits, group_size, out_dtype, rank; bit_alloc ("mixed") only when
    codec.calibration is not null; target_bpw {"bits", "weights" >= 1} exactly when rank is
    "auto" or bit_alloc is present; rank "<N>" is ASCII decimal without leading zeros;
  - each quantized tensor's bits is codec.parameters.bits, or within ±1 of it (and in 2..8)
    with bit_alloc "mixed"; its rank is in 0..32, at most N when the flag was "<N>". The
    codes and zero points of each linear are unpacked with that linear's own width (§4);
  - codec.version (= tool.codec_version) is 1, 2, 3 or 4; damp is present exactly in calibrated
    packs of version 2 or later; each layer file's codec_version equals it (§2, §4);
  - codec.calibration is null or exactly the §2.2 object (input "text"/"tokens", the matching
    <input>_sha256, tokenizer_sha256 (null for tokens), windows >= 1, seq_len >= 2, skip >= 0,
    tokens = windows × seq_len, propagate, statistic "exact-gram"); decoding does not use it.
Layer files (§4, §4.1, §4.2): each linear's tensors are exactly .codes, .scales, .zeros
(version 3: .rans U8 [n], .rans_freq U16 [2^(b+1) − 1], .rans_len U32 [ceil(R/64)], .scales,
.zeros; version 4: .rans, .rans_freq U16 [256 + 2^b + 2^(b+1) − 1], .rans_len, and no .scales
or .zeros), plus .u, .u_scale, .v, .v_scale when its rank is > 0; which set is the layer file's
own codec_version's (bits_per_weight.linears counts the stored ones). A broken §4.1/§4.2 rule
(Σ freq != 4096, in version 4 for each of the scale, zero and code tables, named in the
message; Σ len != n, a stream under 4 bytes, an initial state outside L..2^31-1, a missing or
left-over byte, a final state != L, q out of range) is a mismatch of kind "rans" naming the
stored tensor at fault (….rans_freq, ….rans_len or ….rans), and that linear is not
reconstructed.
Where FORMAT.md is silent this reader assumes (and checks, reporting a mismatch otherwise):
  - U and V values of −128 (outside §4's [−127, 127]) are reported as a mismatch, but the
    tensor is still decoded (the int64 bounds below hold for any I8/U16 contents);
  - safetensors header padding is the minimal 0..7 spaces, and no bytes follow the last tensor;
  - padding bits of packed rows must be zero (§4 says "padded with zero bits");
  - a layer-NNNNN file holds tensors named "….layers.<NNNNN as integer>.…";
  - every source tensor is deployed except a tied lm_head.weight, and a raw tensor's digest
    equals the source tensor's digest in source.tensors (§3: "stored exactly as in the source");
  - bits_per_weight.pack.weights counts the elements of the deployed tensors.

Not checked: §6 (informative) says how widths and "auto" ranks are chosen within target_bpw;
this reader does not recompute those choices, it only checks the ranges above.

Only the Python standard library and numpy (>= 1.24) are used. Memory: one row-chunk of one
tensor at a time (files are memory-mapped; raw tensors are hashed in slices); in codec versions
3 and 4 a chunk is a whole number of 64-row streams. The rANS loop is plain Python over a
4096-entry slot -> symbol table (three of them in version 4): about 3 million codes a second
on one core (CPython 3.11+), so a 135M-weight model's linears take about a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import re
import struct
import sys
from dataclasses import dataclass, field

import numpy as np

MANIFEST = "ucw-manifest.json"
SCAFFOLD = "scaffold.safetensors"
# §1: files copied from the model directory, each only if present there.
COPIED_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)
LAYER_FILE_RE = re.compile(r"layer-([0-9]{5})\.safetensors")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
# Codec versions this reader decodes (FORMAT.md §2: 1 and 2 differ only in how codes are
# chosen; 3 stores each linear's codes rANS-coded, §4.1, instead of bit-packed; 4 codes the
# scale codes and zero points in the same streams, §4.2).
CODEC_VERSIONS = (1, 2, 3, 4)
RANS_VERSION = 3  # the first codec version whose linears store .rans/.rans_freq/.rans_len
RANS_META_VERSION = 4  # the first whose streams also hold the scale codes and zero points
# codec.parameters.damp: a decimal without superfluous zeros ("1", "0.01", "2.5").
DAMP_RE = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")

# Safetensors dtype spellings and element sizes. Quantized outputs are BF16/F16/F32 (§4); raw
# scaffold tensors keep whatever dtype the source used (§3), so the usual ones are accepted.
DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
# §4: output formats (exponent bits, fraction bits, bias).
FLOAT_FORMATS = {"BF16": (8, 7, 127), "F16": (5, 10, 15), "F32": (8, 23, 127)}

HASH_SLICE = 16 << 20  # bytes of a raw tensor hashed at a time
CHUNK_ELEMS = 1 << 18  # weights reconstructed at a time (row granularity)

# §4.1 rANS parameters: M = 2^12 (frequency total), L = 2^23 (lower bound of the state),
# byte-wise renormalisation, one stream per 64 rows.
RANS_PROB_BITS = 12
RANS_M = 1 << RANS_PROB_BITS
RANS_L = 1 << 23
RANS_ROWS = 64


class PackUnreadable(Exception):
    """The pack cannot be read at all (exit 2)."""


class Malformed(Exception):
    """A data file violates §3/§4 so badly that its tensors cannot be decoded."""


# --------------------------------------------------------------------------------------------
# Canonical JSON (FORMAT.md "Conventions", RFC 8785 restricted to ucw's value types)
# --------------------------------------------------------------------------------------------


def canonical_json(value) -> bytes:
    """RFC 8785 bytes of a value made of objects, arrays, strings, integers and null.

    Keys are sorted by UTF-16 code units (RFC 8785 §3.2.3); strings use JSON's minimal escapes,
    which is what json.dumps(ensure_ascii=False) emits (it escapes '"', '\\' and control
    characters only, with lowercase \\u00xx). Floats and booleans never occur in ucw's JSON;
    they are rejected so that a manifest holding them fails the canonical comparison.
    """
    return _canon(value).encode("utf-8")


def _canon(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool) or isinstance(v, float):
        raise ValueError(f"value of unexpected JSON type: {v!r}")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ",".join(_canon(x) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(_canon(k) + ":" + _canon(v[k]) for k in keys) + "}"
    raise ValueError(f"value of unexpected type: {type(v).__name__}")


def _no_duplicate_keys(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def parse_canonical(raw: bytes, what: str):
    """Parse JSON bytes and require them to be exactly their canonical serialisation."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        canon = canonical_json(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{what}: not valid ucw JSON: {exc}") from None
    if canon != raw:
        raise ValueError(f"{what}: bytes are not canonical JSON (RFC 8785)")
    return value


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def name_key(name: str) -> bytes:
    """Bytewise order of names (§2 "sorted bytewise by name", §3 data order)."""
    return name.encode("utf-8")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    mismatches: list = field(default_factory=list)
    unreadable: bool = False  # a file that passed its hash check cannot be decoded (a FAIL, §7)
    tensors_checked: int = 0

    def mismatch(self, kind: str, name: str, detail: str = "", expected=None, actual=None):
        entry = {"kind": kind, "name": name}
        if expected is not None or actual is not None:
            entry["expected"] = expected
            entry["actual"] = actual
        if detail:
            entry["detail"] = detail
        self.mismatches.append(entry)


# --------------------------------------------------------------------------------------------
# Step 1: the manifest (§2)
# --------------------------------------------------------------------------------------------


def _require(cond: bool, msg: str):
    if not cond:
        raise PackUnreadable(msg)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_plain_name(name) -> bool:
    # §2: plain names: no '/', '\', ':', NUL, not '.' or '..' (and not empty).
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\:\0")
    )


def _check_file_list(files, where: str):
    _require(isinstance(files, list), f"{where} is not an array")
    for f in files:
        _require(
            isinstance(f, dict) and set(f) == {"name", "sha256", "size"},
            f"{where}: entry with wrong keys: {f!r}",
        )
        _require(_is_plain_name(f["name"]), f"{where}: not a plain file name: {f['name']!r}")
        _require(
            isinstance(f["sha256"], str) and HEX64_RE.fullmatch(f["sha256"]) is not None,
            f"{where}: bad sha256 for {f['name']!r}",
        )
        _require(_is_int(f["size"]) and f["size"] >= 0, f"{where}: bad size for {f['name']!r}")


def _check_shape(shape, what: str):
    _require(
        isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape),
        f"{what}: bad shape {shape!r}",
    )


def load_manifest(pack_dir: str) -> tuple[dict, bytes]:
    """Read and validate ucw-manifest.json (§2). Any failure: PackUnreadable (exit 2, §7)."""
    path = os.path.join(pack_dir, MANIFEST)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise PackUnreadable(f"cannot read {MANIFEST}: {exc}") from None
    try:
        m = parse_canonical(raw, MANIFEST)  # §2: canonical JSON bytes, no trailing newline
    except ValueError as exc:
        raise PackUnreadable(str(exc)) from None

    _require(isinstance(m, dict), "manifest is not an object")
    keys = {"format", "format_version", "tool", "codec", "source", "files", "tensors",
            "bits_per_weight", "weights_digest"}
    _require(set(m) == keys, f"manifest keys {sorted(m)} differ from {sorted(keys)}")
    _require(m["format"] == "ucw-pack", f"format is {m['format']!r}, not 'ucw-pack'")
    fv = m["format_version"]
    _require(_is_int(fv), f"format_version {fv!r} is not an integer")
    # §2: a reader must refuse a larger number. Versions below 1 were never defined either.
    _require(fv == 1, f"unsupported format_version {fv} (this reader knows 1)")
    codec = m["codec"]
    _require(
        isinstance(codec, dict) and set(codec) == {"calibration", "name", "parameters", "version"},
        "codec: wrong keys",
    )
    # §2: codec versions 1 and 2 decode alike (2 changed only how codes are chosen); version 3
    # entropy-codes the codes (§4.1), version 4 the scale codes and zero points too (§4.2). Each
    # layer file's codec_version is checked against this.
    _require(codec["name"] == "ucw-q1" and codec["version"] in CODEC_VERSIONS,
             f"unknown codec {codec['name']!r} version {codec['version']!r}")
    _require(m["tool"] == {"codec_version": codec["version"], "name": "ucw"}, f"unknown tool {m['tool']!r}")
    # §2.2: null (uncalibrated) or the calibration provenance. Decoding does not use it.
    calibration = codec["calibration"]
    if calibration is not None:
        check_calibration(calibration)
    params = codec["parameters"]
    # §2.1: bits, group_size, out_dtype, rank always; bit_alloc ("mixed") only in calibrated
    # packs; target_bpw exactly when rank is "auto" or bit_alloc is present.
    _require(isinstance(params, dict) and isinstance(params.get("rank"), str), "codec.parameters: no string rank")
    auto = params["rank"] == "auto"
    mixed = "bit_alloc" in params
    # §2.1: damp exactly in calibrated packs of codec version 2 or later (2, 3, 4).
    damped = codec["version"] >= 2 and calibration is not None
    base_keys = {"bits", "group_size", "out_dtype", "rank"}
    want_keys = (base_keys | ({"bit_alloc"} if mixed else set()) | ({"target_bpw"} if auto or mixed else set())
                 | ({"damp"} if damped else set()))
    _require(set(params) == want_keys,
             f"codec.parameters: keys {sorted(params)} differ from {sorted(want_keys)} (§2.1: target_bpw "
             "exactly when rank is \"auto\" or bit_alloc is present)")
    if damped:
        _require(isinstance(params["damp"], str) and DAMP_RE.fullmatch(params["damp"]) is not None
                 and DAMP_RE.fullmatch(params["damp"]).group(0) not in ("0",),
                 f"codec.parameters.damp {params['damp']!r} is not a positive decimal")
    if mixed:
        _require(params["bit_alloc"] == "mixed", f"codec.parameters.bit_alloc {params['bit_alloc']!r} is not \"mixed\"")
        _require(calibration is not None, "codec.parameters.bit_alloc is present in an uncalibrated pack (§2.1)")
    # §2.1 ranges: 2 <= bits <= 8, 1 <= group_size <= 4096.
    _require(_is_int(params["bits"]) and 2 <= params["bits"] <= 8, "codec.parameters.bits out of range")
    _require(_is_int(params["group_size"]) and 1 <= params["group_size"] <= 4096, "bad group_size")
    _require(params["out_dtype"] in ("source", "BF16", "F16", "F32"), "bad out_dtype")
    if auto or mixed:
        tb = params["target_bpw"]
        # §2.1: two integers, weights >= 1, not necessarily reduced (525/100).
        _require(isinstance(tb, dict) and set(tb) == {"bits", "weights"}
                 and _is_int(tb["bits"]) and tb["bits"] >= 0
                 and _is_int(tb["weights"]) and tb["weights"] >= 1,
                 f"codec.parameters.target_bpw is not a ratio of integers: {tb!r}")
    if auto:
        max_rank = 32  # §2.1: with "auto" each rank is in 0..32
    else:
        # §2.1: ASCII digits without leading zeros.
        _require(re.fullmatch(r"0|[1-9][0-9]*", params["rank"]) is not None,
                 f"codec.parameters.rank {params['rank']!r} is neither \"auto\" nor a decimal number")
        # §2.1: at most N and at most 32.
        max_rank = min(int(params["rank"]), 32)
    # §2.1: each tensor's width is bits, or (bit_alloc "mixed") bits - 1 .. bits + 1 within 2..8.
    spread = 1 if mixed else 0
    widths = {b for b in range(params["bits"] - spread, params["bits"] + spread + 1) if 2 <= b <= 8}

    src = m["source"]
    _require(
        isinstance(src, dict) and set(src) == {"files", "model_type", "tensors", "weights_digest"},
        "source: wrong keys",
    )
    _check_file_list(src["files"], "source.files")
    _require(src["model_type"] in ("llama", "mistral", "qwen2", "qwen3"), "unknown source.model_type")
    _require(isinstance(src["tensors"], list), "source.tensors is not an array")
    for t in src["tensors"]:
        _require(isinstance(t, dict) and set(t) == {"name", "sha256"}, "source.tensors: wrong keys")
        _require(isinstance(t["name"], str), "source.tensors: bad name")
        _require(isinstance(t["sha256"], str) and HEX64_RE.fullmatch(t["sha256"]) is not None,
                 "source.tensors: bad sha256")
    _require(isinstance(src["weights_digest"], str) and HEX64_RE.fullmatch(src["weights_digest"]) is not None,
             "source.weights_digest is not a digest")

    files = m["files"]
    _check_file_list(files, "files")
    names = [f["name"] for f in files]
    _require(MANIFEST not in names, "files lists the manifest itself")
    _require(names == sorted(names, key=name_key) and len(set(names)) == len(names),
             "files are not sorted by name / have duplicates")

    tensors = m["tensors"]
    _require(isinstance(tensors, list), "tensors is not an array")
    for t in tensors:
        _require(isinstance(t, dict), "tensors: entry is not an object")
        kind = t.get("kind")
        if kind == "quantized":
            _require(set(t) == {"bits", "dtype", "file", "kind", "name", "rank", "sha256", "shape"},
                     f"tensors: quantized entry with wrong keys: {sorted(t)}")
            _require(t["dtype"] in FLOAT_FORMATS, f"{t['name']!r}: bad dtype {t['dtype']!r}")
            _require(_is_int(t["bits"]) and t["bits"] in widths,
                     f"{t['name']!r}: bits {t['bits']!r} not among the widths codec.parameters allows "
                     f"({sorted(widths)}, §2.1)")
            # §2: the rank the tensor actually got (0 when the fit kept none), §4: 0..32.
            _require(_is_int(t["rank"]) and 0 <= t["rank"] <= max_rank,
                     f"{t['name']!r}: rank {t['rank']!r} outside 0..{max_rank} (codec rank {params['rank']!r})")
            _check_shape(t["shape"], repr(t["name"]))
            _require(len(t["shape"]) == 2 and min(t["shape"]) >= 1,
                     f"{t['name']!r}: a quantized linear must be 2-D with R, C >= 1 (§4)")
            if params["out_dtype"] != "source":
                _require(t["dtype"] == params["out_dtype"], f"{t['name']!r}: dtype differs from codec out_dtype")
        elif kind == "raw":
            _require(set(t) == {"dtype", "file", "kind", "name", "sha256", "shape"},
                     f"tensors: raw entry with wrong keys: {sorted(t)}")
            _require(t["dtype"] in DTYPE_SIZE, f"{t['name']!r}: unknown dtype {t['dtype']!r}")
            _check_shape(t["shape"], repr(t["name"]))
        else:
            raise PackUnreadable(f"tensors: unknown kind {kind!r}")
        _require(isinstance(t["name"], str) and t["name"] != "", "tensors: bad name")
        _require(_is_plain_name(t["file"]), f"{t['name']!r}: file is not a plain name: {t['file']!r}")
        _require(isinstance(t["sha256"], str) and HEX64_RE.fullmatch(t["sha256"]) is not None,
                 f"{t['name']!r}: bad sha256")
    tnames = [t["name"] for t in tensors]
    _require(tnames == sorted(tnames, key=name_key) and len(set(tnames)) == len(tnames),
             "tensors are not sorted bytewise by name / have duplicates")

    bpw = m["bits_per_weight"]
    _require(isinstance(bpw, dict) and set(bpw) == {"linears", "pack"}, "bits_per_weight: wrong keys")
    for k in ("linears", "pack"):
        _require(isinstance(bpw[k], dict) and set(bpw[k]) == {"bits", "weights"}
                 and _is_int(bpw[k]["bits"]) and _is_int(bpw[k]["weights"]),
                 f"bits_per_weight.{k}: wrong keys")
    _require(isinstance(m["weights_digest"], str) and HEX64_RE.fullmatch(m["weights_digest"]) is not None,
             "weights_digest is not a digest")
    return m, raw


def check_calibration(cal):
    """§2.2: the calibration provenance object, exactly its keys and their types."""
    _require(isinstance(cal, dict), f"codec.calibration is neither null nor an object: {cal!r}")
    inp = cal.get("input")
    _require(inp in ("text", "tokens"), f"codec.calibration.input {inp!r} is not \"text\" or \"tokens\"")
    keys = {"input", f"{inp}_sha256", "tokenizer_sha256", "windows", "seq_len", "skip", "tokens",
            "propagate", "statistic"}
    # §2.2: "builtin" names the compiled-in calibration text (`--calib default`).
    if inp == "text" and "builtin" in cal:
        keys.add("builtin")
        _require(cal["builtin"] == "ucw-mix-v1", f"codec.calibration.builtin {cal['builtin']!r} is unknown")
    _require(set(cal) == keys, f"codec.calibration: keys {sorted(cal)} differ from {sorted(keys)}")

    def hex64(v):
        return isinstance(v, str) and HEX64_RE.fullmatch(v) is not None

    _require(hex64(cal[f"{inp}_sha256"]), f"codec.calibration.{inp}_sha256 is not a digest")
    if inp == "tokens":
        _require(cal["tokenizer_sha256"] is None, "codec.calibration.tokenizer_sha256 must be null for tokens")
    else:
        _require(hex64(cal["tokenizer_sha256"]), "codec.calibration.tokenizer_sha256 is not a digest")
    _require(_is_int(cal["windows"]) and cal["windows"] >= 1, "codec.calibration.windows must be >= 1")
    _require(_is_int(cal["seq_len"]) and cal["seq_len"] >= 2, "codec.calibration.seq_len must be >= 2")
    _require(_is_int(cal["skip"]) and cal["skip"] >= 0, "codec.calibration.skip must be >= 0")
    _require(_is_int(cal["tokens"]) and cal["tokens"] == cal["windows"] * cal["seq_len"],
             "codec.calibration.tokens is not windows × seq_len")
    _require(cal["propagate"] in ("compressed", "teacher"), "codec.calibration.propagate is unknown")
    _require(cal["statistic"] == "exact-gram", "codec.calibration.statistic is not \"exact-gram\"")


# --------------------------------------------------------------------------------------------
# Step 2: the files (§1, §2 "files")
# --------------------------------------------------------------------------------------------


def file_sha256(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while True:
            block = fh.read(HASH_SLICE)
            if not block:
                break
            size += len(block)
            h.update(block)
    return size, h.hexdigest()


def check_files(pack_dir: str, manifest: dict, report: Report) -> set[str]:
    """Compare sizes and digests; flag missing and unexpected entries. Returns the names of the
    listed files whose size and SHA-256 match."""
    listed = {f["name"]: f for f in manifest["files"]}
    good = set()
    try:
        entries = sorted(os.scandir(pack_dir), key=lambda e: name_key(e.name))
    except OSError as exc:
        raise PackUnreadable(f"cannot list {pack_dir}: {exc}") from None
    present = set()
    for entry in entries:
        if entry.name == MANIFEST:
            continue
        present.add(entry.name)
        if entry.name not in listed:
            report.mismatch("unexpected-file", entry.name, "not listed in the manifest (§1: no other files)")
            continue
        if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            report.mismatch("unexpected-file", entry.name, "not a regular file (§1: one flat directory)")
            continue
        want = listed[entry.name]
        try:
            size, digest = file_sha256(entry.path)
        except OSError as exc:
            raise PackUnreadable(f"cannot read {entry.name}: {exc}") from None
        if size != want["size"]:
            report.mismatch("file-size", entry.name, expected=want["size"], actual=size)
        elif digest != want["sha256"]:
            report.mismatch("file-sha256", entry.name, expected=want["sha256"], actual=digest)
        else:
            good.add(entry.name)
    for name in listed:
        if name not in present:
            report.mismatch("missing-file", name, "listed in the manifest but absent")
        # §1: the only files a pack may hold.
        if not (name in COPIED_FILES or name == SCAFFOLD or LAYER_FILE_RE.fullmatch(name)):
            report.mismatch("unexpected-file", name, "listed, but not a file §1 allows in a pack")
    return good


# --------------------------------------------------------------------------------------------
# Step 3a: safetensors files as ucw writes them (§3)
# --------------------------------------------------------------------------------------------


@dataclass
class TensorInfo:
    dtype: str
    shape: list
    begin: int  # absolute file offsets
    end: int


class SafeTensorsFile:
    """A memory-mapped safetensors file. Parsing raises Malformed; deviations from ucw's fixed
    byte layout (§3) that do not prevent decoding are collected in `deviations`."""

    def __init__(self, path: str):
        self.path = path
        self.deviations: list[str] = []
        self._fh = open(path, "rb")
        size = os.fstat(self._fh.fileno()).st_size
        if size < 8:
            self._fh.close()
            raise Malformed("shorter than the 8-byte header length")
        self.mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(size)
        except Malformed:
            self.close()
            raise

    def _parse(self, size: int):
        (n,) = struct.unpack("<Q", self.mm[:8])
        if n > size - 8:
            raise Malformed(f"header length {n} exceeds the file")
        header = self.mm[8 : 8 + n]
        data_start = 8 + n
        data_len = size - data_start
        try:
            hdr = json.loads(header.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError) as exc:
            raise Malformed(f"header is not JSON: {exc}") from None
        if not isinstance(hdr, dict):
            raise Malformed("header is not an object")

        meta = hdr.get("__metadata__")
        if meta is not None and not (
            isinstance(meta, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        ):
            raise Malformed("__metadata__ must map strings to strings")
        self.metadata = meta
        self.tensors: dict[str, TensorInfo] = {}
        for name, t in hdr.items():
            if name == "__metadata__":
                continue
            if not (isinstance(t, dict) and set(t) == {"data_offsets", "dtype", "shape"}):
                raise Malformed(f"{name!r}: entry must hold exactly data_offsets, dtype, shape")
            dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
            if dtype not in DTYPE_SIZE:
                raise Malformed(f"{name!r}: unknown dtype {dtype!r}")
            if not (isinstance(shape, list) and all(_is_int(d) and d >= 0 for d in shape)):
                raise Malformed(f"{name!r}: bad shape")
            if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                    and 0 <= offs[0] <= offs[1] <= data_len):
                raise Malformed(f"{name!r}: data_offsets {offs!r} outside the data section")
            if offs[1] - offs[0] != int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZE[dtype]:
                raise Malformed(f"{name!r}: data_offsets do not match dtype and shape")
            self.tensors[name] = TensorInfo(dtype, shape, data_start + offs[0], data_start + offs[1])
        self.data_len = data_len

        # §3: ucw fixes the bytes completely. The header is the canonical JSON of the object,
        # then 0..7 spaces so that N is a multiple of 8.
        try:
            canon = canonical_json(hdr)
        except ValueError as exc:
            self.deviations.append(f"header cannot be canonical: {exc}")
        else:
            pad = n - len(canon)
            if not (header[: len(canon)] == canon and 0 <= pad < 8 and header[len(canon):] == b" " * pad):
                self.deviations.append("header is not canonical JSON padded with 0..7 spaces")
        if n % 8:
            self.deviations.append(f"header length {n} is not a multiple of 8")
        # §3: tensor data in bytewise name order, back to back from offset 0, no padding.
        pos = data_start
        for name in sorted(self.tensors, key=name_key):
            t = self.tensors[name]
            if t.begin != pos:
                self.deviations.append(f"{name!r} does not start right after the previous tensor")
            pos = t.end
        if pos != size:
            self.deviations.append(f"{size - pos} bytes after the last tensor")

    def array(self, name: str, row0: int, row1: int) -> np.ndarray:
        """Rows [row0, row1) of a 2-D U8 tensor, copied out of the map."""
        t = self.tensors[name]
        width = t.shape[1]
        raw = self.mm[t.begin + row0 * width : t.begin + row1 * width]
        return np.frombuffer(raw, dtype=np.uint8).reshape(row1 - row0, width)

    def rows(self, name: str, row0: int, row1: int) -> np.ndarray:
        """Rows [row0, row1) of a 1-D or 2-D integer tensor (I8, U8, U16, U32), as int64. A 1-D
        tensor's rows are its elements."""
        t = self.tensors[name]
        np_dtype = {"I8": "<i1", "U8": "<u1", "U16": "<u2", "U32": "<u4"}[t.dtype]
        size = DTYPE_SIZE[t.dtype]
        width = t.shape[1] if len(t.shape) == 2 else 1
        raw = self.mm[t.begin + row0 * width * size : t.begin + row1 * width * size]
        a = np.frombuffer(raw, dtype=np_dtype).astype(np.int64)
        return a.reshape(row1 - row0, width) if len(t.shape) == 2 else a

    def span(self, name: str, begin: int, end: int) -> bytes:
        """Bytes [begin, end) of a tensor's data (a 1-D U8 tensor: its elements)."""
        t = self.tensors[name]
        return self.mm[t.begin + begin : t.begin + end]

    def slices(self, name: str):
        t = self.tensors[name]
        for off in range(t.begin, t.end, HASH_SLICE):
            yield self.mm[off : min(off + HASH_SLICE, t.end)]

    def close(self):
        try:
            self.mm.close()
        finally:
            self._fh.close()


# --------------------------------------------------------------------------------------------
# Step 3b: bit unpacking and reconstruction (§4)
# --------------------------------------------------------------------------------------------


def packed_width(count: int, bits: int) -> int:
    """Bytes per row of `count` b-bit values (§4: each row padded to a whole byte)."""
    return (count * bits + 7) // 8


def unpack_rows(packed: np.ndarray, count: int, bits: int) -> tuple[np.ndarray, bool]:
    """§4 bit packing: value k of a row occupies bits k·b … k·b+b−1 of the row's byte string;
    bit i of the string is bit (i mod 8) of byte floor(i/8), least significant first, and the
    value's lowest bit goes to the lowest string bit. Example (b=5): 0x41 0x00 -> 1, 2.

    Returns (values as int64 [rows, count], whether the row padding bits are all zero)."""
    rows = packed.shape[0]
    stream = np.unpackbits(packed, axis=1, bitorder="little")  # bit i of the row string
    used = stream[:, : count * bits].reshape(rows, count, bits)
    values = np.zeros((rows, count), dtype=np.int64)
    for j in range(bits):  # value bit j is string bit k·b + j
        values |= used[:, :, j].astype(np.int64) << j
    padding_clean = not stream[:, count * bits :].any()
    return values, padding_clean


def bit_length(a: np.ndarray) -> np.ndarray:
    """Exact bit length of non-negative int64 values (0 -> 0). frexp of the float64 conversion
    is exact below 2^53; above, the conversion may round up to the next power of two, which
    makes frexp one too large, never too small, so one correction step suffices. (Such an a
    is within 2^(n−54) of 2^n and would round to 2^n in any target format anyway; the
    correction keeps the routine below honest rather than relying on that.)"""
    _, n = np.frexp(a.astype(np.float64))
    n = n.astype(np.int64)
    too_big = (a > 0) & ((a >> np.maximum(n - 1, 0)) == 0)
    return n - too_big


def round_to_float_bits(v: np.ndarray, e: np.ndarray, fmt: str) -> np.ndarray:
    """Round the exact values v · 2^e (v, e int64 arrays, |v| < 2^63) once to `fmt` with
    round-to-nearest, ties-to-even, and return the IEEE bit patterns (§4).

    Everything is integer arithmetic, so no floating-point cast is trusted: the conversion is
    done from the exact integer and exponent. (Without an overlay |v| < 2^13, and a float64
    detour would also work for F16/F32; with an overlay v may need 63 bits, which float64 cannot
    hold, and there is no numpy bf16 anyway. `--self-test` checks this routine against numpy's
    casts where they apply and against an exact Fraction-based reference on 63-bit values.)

    With a = |v| > 0 of bit length n, the value lies in [2^X, 2^(X+1)) with X = e + n − 1. The
    target's last-place unit is 2^Q with Q = max(X, emin) − fbits (emin = 1 − bias; the max
    covers subnormals). The value in units of 2^Q is a · 2^(e−Q): exact when Q <= e, otherwise
    a >> (Q − e) rounded to nearest, ties to even. With M that integer, the encoding is
    ((Q + fbits + bias − 1) << fbits) + M: the first term is 0 for subnormals, and when M
    rounds up to the next power of two the carry moves into the exponent field, as IEEE wants.
    """
    ebits, fbits, bias = FLOAT_FORMATS[fmt]
    a = np.abs(v)
    if np.any(a < 0):  # only −2^63, which no valid sum reaches (< 2^63, §4)
        raise Malformed("a reconstructed value does not fit in 63 bits")
    negative = v < 0
    n = bit_length(a)
    x = e + n - 1
    q = np.maximum(x, 1 - bias) - fbits
    shift = q - e
    # Exact case (shift <= 0): a << −shift, and −shift <= fbits + 1 − n, so the result has at
    # most fbits + 1 <= 24 bits. (Clipping only affects lanes whose result is not selected.)
    exact = a << np.clip(-shift, 0, 62)
    # Rounding case (1 <= shift <= 63): trunc << right <= a < 2^63 and half <= 2^62, so no
    # int64 overflow. shift >= 64 only happens deep in the subnormal range: a·2^−shift <
    # 2^63·2^−64 = 1/2 (strictly), so M = 0 (the `shift >= 64` case below).
    right = np.clip(shift, 0, 63)
    trunc = a >> right
    rem = a - (trunc << right)
    half = np.left_shift(np.int64(1), np.maximum(right - 1, 0))
    up = (right > 0) & ((rem > half) | ((rem == half) & ((trunc & 1) == 1)))
    mant = np.where(shift <= 0, exact, np.where(shift >= 64, 0, trunc + up))
    magnitude = ((q + fbits + bias - 1) << fbits) + mant
    magnitude = np.where(a == 0, 0, magnitude)  # exact zero: +0 (§4)
    if np.any(magnitude >= ((1 << ebits) - 1) << fbits):
        # §4: a value beyond the largest finite value is an error.
        raise Malformed(f"a reconstructed value overflows {fmt}")
    # A nonzero value that rounds to zero keeps its sign (−0), which the OR below does.
    return magnitude | (negative.astype(np.int64) << (ebits + fbits))


@dataclass
class QuantSpec:
    name: str
    rows: int
    cols: int
    bits: int
    group_size: int
    base_exp: int
    out_dtype: str
    rank: int = 0
    overlay_exp: int | None = None  # Eo, present exactly when rank > 0 (§4)
    codec_version: int = 1  # the layer file's: 3 stores the codes rANS-coded (§4.1), 4 the
                            # scale codes and zero points too (§4.2)


# Suffixes of the tensors a quantized linear stores (§4), without and with an overlay; in
# codec version 3 the bit-packed .codes are replaced by the three rANS tensors (§4.1), in
# version 4 the .scales and .zeros too (§4.2).
CODE_SUFFIXES = (".codes", ".scales", ".zeros")
RANS_SUFFIXES = (".rans", ".rans_freq", ".rans_len", ".scales", ".zeros")
RANS_META_SUFFIXES = (".rans", ".rans_freq", ".rans_len")
OVERLAY_SUFFIXES = (".u", ".u_scale", ".v", ".v_scale")


def linear_suffixes(rank: int, codec_version: int = 1) -> tuple[str, ...]:
    if codec_version >= RANS_META_VERSION:
        base = RANS_META_SUFFIXES
    elif codec_version >= RANS_VERSION:
        base = RANS_SUFFIXES
    else:
        base = CODE_SUFFIXES
    return base + (OVERLAY_SUFFIXES if rank > 0 else ())


def overlay_rows(mu: np.ndarray, u: np.ndarray, mv: np.ndarray, v: np.ndarray) -> np.ndarray:
    """O[i][j] = Σ_k (mu[i] · U[i][k] · mv[k]) · V[k][j] (§4), exactly, in int64.

    Bounds (for any I8/U16 contents, so even a damaged file cannot overflow): |mu·U·mv| <=
    65535·128·65535 < 2^39, times |V| <= 128 gives each term below 2^46 (65535²·128² =
    70366596661248 < 2^46 = 70368744177664), and r <= 32 terms give |O| < 2^51. Every
    intermediate is an int64 far from overflow, so numpy's integer matmul (no BLAS, no
    floating point) is exact whatever its summation order."""
    a = mu[:, None] * u * mv[None, :]  # [rows, r], each |.| < 2^39
    return a @ v                        # [rows, C], each |.| < 2^51


def exact_sum(w_int: np.ndarray, w_exp: np.ndarray, o_int: np.ndarray, o_exp: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact w_int·2^w_exp + o_int·2^o_exp as (integer, exponent) per element, aligned at
    the smaller of the two exponents (§4), in int64.

    Why it cannot overflow: |w_int| = |m·(q−z)| <= 31·255 < 2^13 with w_exp = E + (s>>4) in
    [E, E+15]; |o_int| < 2^51 (overlay_rows); the metadata check guarantees −34 <= Eo − E <= 11
    before decoding, so d = w_exp − Eo lies in [−11, 49].
      d >= 0: the sum is w_int·2^d + o_int, |.| < 2^13·2^49 + 2^51 = 2^62 + 2^51 < 2^63;
      d <  0: the sum is w_int + o_int·2^−d, |.| < 2^13 + 2^51·2^11 = 2^13 + 2^62 < 2^63.
    So both shifted terms and their sum fit a signed 64-bit integer."""
    lo = np.minimum(w_exp, o_exp)
    total = (w_int << (w_exp - lo)) + (o_int << (o_exp - lo))
    return total, lo


# --------------------------------------------------------------------------------------------
# Step 3c: entropy-coded codes (codec version 3, §4.1), scales and zero points too (4, §4.2)
# --------------------------------------------------------------------------------------------


class RansInvalid(Malformed):
    """A §4.1/§4.2 validity rule is broken. `tensor` names the stored tensor at fault (….rans,
    ….rans_freq or ….rans_len), `detail` says what is wrong with it."""

    def __init__(self, tensor: str, detail: str):
        super().__init__(f"{tensor}: {detail}")
        self.tensor = tensor
        self.detail = detail


SCALE_SYMBOLS = 256  # §4.2: the scale table has one entry per scale code (a byte)


def rans_freq_entries(bits: int, codec_version: int) -> int:
    """Entries of <name>.rans_freq: the code table's 2^(b+1) − 1 (§4.1); in codec version 4 the
    scale table's 256 and the zero table's 2^b before it (§4.2)."""
    n = (2 << bits) - 1
    if codec_version >= RANS_META_VERSION:
        n += SCALE_SYMBOLS + (1 << bits)
    return n


def rans_table(freq, where: str, label: str | None = None) -> tuple[list, list, list]:
    """The slot -> symbol lookup of §4.1's decoding step, from freq[s] (which must sum to M).

    Returns three lists of M entries indexed by slot = x mod M: the symbol s with cum[s] <= slot
    < cum[s] + freq[s], its freq[s], and slot − cum[s]. A decoding step is then
    x = freq_of[slot] · (x div M) + bias[slot]. A symbol of frequency 0 owns no slot, so it can
    never be decoded (§4.1: freq[s] >= 1). Raises RansInvalid unless Σ freq = M; `label` names
    the table in the message (codec version 4 has three, §4.2)."""
    freq = [int(v) for v in freq]
    total = sum(freq)
    if total != RANS_M:
        what = "the frequencies sum" if label is None else f"the {label} sums"
        raise RansInvalid(where, f"{what} to {total}, not M = {RANS_M} ({'§4.1' if label is None else '§4.2'})")
    sym, freq_of, bias = [], [], []
    for s, f in enumerate(freq):
        sym.extend([s] * f)
        freq_of.extend([f] * f)
        bias.extend(range(f))
    return sym, freq_of, bias


def rans_tables_v4(freq, bits: int, where: str) -> tuple[list, list, list]:
    """§4.2: the scale, zero and code tables of a codec-4 .rans_freq, each checked to sum to M,
    as one lookup of 3·M entries: table t's slot `slot` is entry t·M + slot. The symbols are
    each table's own (0..255, 0..2^b − 1, 0..2^(b+1) − 2)."""
    freq = [int(v) for v in freq]
    nz, nd = 1 << bits, (2 << bits) - 1
    if len(freq) != SCALE_SYMBOLS + nz + nd:
        raise RansInvalid(where, f"{len(freq)} entries, not 256 + 2^{bits} + 2^{bits + 1} − 1 = "
                                 f"{SCALE_SYMBOLS + nz + nd} (§4.2)")
    parts = (
        (freq[:SCALE_SYMBOLS], "scale table (entries 0..255)"),
        (freq[SCALE_SYMBOLS:SCALE_SYMBOLS + nz], f"zero table (entries 256..{255 + nz})"),
        (freq[SCALE_SYMBOLS + nz:], f"code table (entries {SCALE_SYMBOLS + nz}..{len(freq) - 1})"),
    )
    sym, freq_of, bias = [], [], []
    for part, label in parts:
        t = rans_table(part, where, label)
        sym += t[0]
        freq_of += t[1]
        bias += t[2]
    return sym, freq_of, bias


def rans_offsets(lens, n: int, where_len: str, where_rans: str) -> list[int]:
    """Start offsets of the streams in the .rans bytes, plus n at the end (§4.1 "Streams").
    Raises RansInvalid when a stream is shorter than its 4-byte state or Σ len != n."""
    offsets = [0]
    for k, length in enumerate(int(v) for v in lens):
        if length < 4:
            raise RansInvalid(where_len, f"stream {k} is {length} bytes long, fewer than the 4 bytes "
                                         "of its initial state (§4.1)")
        offsets.append(offsets[-1] + length)
    if offsets[-1] != n:
        raise RansInvalid(where_len, f"the stream lengths sum to {offsets[-1]}, but {where_rans} holds "
                                     f"{n} bytes (§4.1: n = Σ len)")
    return offsets


def rans_decode_stream(data: bytes, count: int, table, where: str, k: int = 0, offs=None,
                       describe=None) -> list[int]:
    """Decode `count` symbols from one stream's bytes (§4.1 "Decoding one stream"): the state x
    starts as the first 4 bytes, big-endian; per symbol, slot = x mod M picks s, x becomes
    freq[s]·(x div M) + slot − cum[s], then bytes are shifted in while x < L. Afterwards every
    byte must have been read and x must be L. Raises RansInvalid (naming stream k) otherwise.

    Codec version 4 (§4.2): `table` is rans_tables_v4's lookup of three tables and offs[i]
    (0, M or 2·M) selects symbol i's table; `describe(i)` names symbol i in messages."""
    sym, freq_of, bias = table
    n = len(data)
    if n < 4:
        raise RansInvalid(where, f"stream {k} is {n} bytes long, fewer than 4 (§4.1)")
    x = int.from_bytes(data[:4], "big")
    if not RANS_L <= x < 1 << 31:
        raise RansInvalid(where, f"stream {k} starts in state {x:#x}, outside L = 2^23 .. 2^31 - 1 (§4.1)")
    pos = 4
    out = [0] * count
    lower = RANS_L
    mask = RANS_M - 1
    shift = RANS_PROB_BITS
    i = -1
    try:
        if offs is None:  # one table (§4.1)
            for i in range(count):
                slot = x & mask
                out[i] = sym[slot]
                x = freq_of[slot] * (x >> shift) + bias[slot]
                while x < lower:
                    x = (x << 8) | data[pos]  # IndexError: the stream has no next byte
                    pos += 1
        else:  # each symbol with its own table (§4.2)
            assert len(offs) == count
            for i, off in enumerate(offs):
                j = (x & mask) + off
                out[i] = sym[j]
                x = freq_of[j] * (x >> shift) + bias[j]
                while x < lower:
                    x = (x << 8) | data[pos]  # IndexError: the stream has no next byte
                    pos += 1
    except IndexError:
        which = f" ({describe(i)})" if describe is not None else ""
        raise RansInvalid(where, f"stream {k} ({n} bytes) runs out of bytes while decoding its symbol {i}"
                                 f"{which} of {count} (§4.1: a missing byte)") from None
    problems = []
    if pos != n:
        problems.append(f"{n - pos} of its {n} bytes left over after its {count} symbols")
    if x != lower:
        problems.append(f"final state {x:#x}, not L = 2^23 = {lower:#x}")
    if problems:
        raise RansInvalid(where, f"stream {k}: " + " and ".join(problems) + " (§4.1)")
    return out


class RansCodes:
    """One linear's rANS streams, decoded a stream (64 rows) at a time: the symbols d of its
    codes (§4.1) and, in codec version 4, its scale codes and zero points too (§4.2).

    `read(begin, end)` returns bytes [begin, end) of the linear's .rans tensor, which holds n
    bytes. The frequency table(s) and the stream lengths are checked when this is built, before
    any stream is decoded. `bits` and `group_size` are needed for version 4 only (the order of
    a row's symbols depends on the groups)."""

    def __init__(self, name: str, freq, lens, n: int, rows: int, cols: int, read, bits: int | None = None,
                 group_size: int | None = None, codec_version: int = RANS_VERSION):
        self.where = name + ".rans"
        self.rows, self.cols, self.read = rows, cols, read
        self.v4 = codec_version >= RANS_META_VERSION
        if self.v4:
            self.table = rans_tables_v4(freq, bits, name + ".rans_freq")
            # §4.2 order of a row's symbols: per group g, the scale code (table 0), the zero point
            # (table 1), then the group's codes in column order (table 2). row_offs[j] selects
            # the table of the row's symbol j; the *_pos arrays pick each class out of a row.
            G, P = group_size, -(-cols // group_size)
            self.bits, self.groups = bits, P
            row_offs, scale_pos, zero_pos, code_pos = [], [], [], []
            for g in range(P):
                width = min((g + 1) * G, cols) - g * G
                scale_pos.append(len(row_offs))
                zero_pos.append(len(row_offs) + 1)
                code_pos.extend(range(len(row_offs) + 2, len(row_offs) + 2 + width))
                row_offs += [0, RANS_M] + [2 * RANS_M] * width
            self.row_offs = row_offs
            self.scale_pos, self.zero_pos, self.code_pos = (np.array(p, dtype=np.intp)
                                                            for p in (scale_pos, zero_pos, code_pos))
            self.code_group = np.arange(cols) // G  # the group of code column c
        else:
            self.table = rans_table(freq, name + ".rans_freq")
        self.offsets = rans_offsets(lens, n, name + ".rans_len", self.where)
        if len(self.offsets) - 1 != -(-rows // RANS_ROWS):
            raise RansInvalid(name + ".rans_len", f"{len(self.offsets) - 1} streams, not ceil({rows} / "
                                                  f"{RANS_ROWS}) (§4.1)")

    @classmethod
    def from_file(cls, f: "SafeTensorsFile", spec: "QuantSpec") -> "RansCodes":
        name = spec.name
        nfreq = rans_freq_entries(spec.bits, spec.codec_version)
        nstreams = -(-spec.rows // RANS_ROWS)
        return cls(name, f.rows(name + ".rans_freq", 0, nfreq), f.rows(name + ".rans_len", 0, nstreams),
                   f.tensors[name + ".rans"].shape[0], spec.rows, spec.cols,
                   lambda a, b: f.span(name + ".rans", a, b), spec.bits, spec.group_size, spec.codec_version)

    def _describe(self, k: int):
        """Names symbol i of stream k (codec version 4): its row, group and class."""
        plen = len(self.row_offs)

        def describe(i: int) -> str:
            r, j = divmod(i, plen)
            if j in self.scale_pos:
                what = f"the scale code of group {int(np.searchsorted(self.scale_pos, j))}"
            elif j in self.zero_pos:
                what = f"the zero point of group {int(np.searchsorted(self.zero_pos, j))}"
            else:
                c = int(np.searchsorted(self.code_pos, j))
                what = f"the code of column {c}"
            return f"{what} of row {k * RANS_ROWS + r}"

        return describe

    def decode(self, r0: int, r1: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(s, z, d) for rows [r0, r1): the scale codes s and zero points z [r1 − r0, P] (codec
        version 4; None before) and the code symbols d [r1 − r0, C], int64. r0 must start a
        stream and r1 end one (a multiple of 64, or R)."""
        R, C = self.rows, self.cols
        assert r0 % RANS_ROWS == 0 and (r1 % RANS_ROWS == 0 or r1 == R) and r0 < r1 <= R
        out = []
        for k in range(r0 // RANS_ROWS, -(-r1 // RANS_ROWS)):
            nrows = min(RANS_ROWS, R - k * RANS_ROWS)
            data = self.read(self.offsets[k], self.offsets[k + 1])
            if self.v4:
                out.extend(rans_decode_stream(data, nrows * len(self.row_offs), self.table, self.where, k,
                                              self.row_offs * nrows, self._describe(k)))
            else:
                out.extend(rans_decode_stream(data, nrows * C, self.table, self.where, k))
        if not self.v4:
            return None, None, np.array(out, dtype=np.int64).reshape(r1 - r0, C)
        a = np.array(out, dtype=np.int64).reshape(r1 - r0, len(self.row_offs))
        s, z, d = a[:, self.scale_pos], a[:, self.zero_pos], a[:, self.code_pos]
        # §4.2 refuses a zero point outside 0..2^b − 1. The zero table has exactly 2^b entries,
        # so rans_tables_v4's lookup holds no other zero symbol and this cannot fire; it costs
        # one comparison per group, so it stays as a guard against a bug in the lookup.
        if z.size and int(z.max()) >= 1 << self.bits:
            raise RansInvalid(self.where, f"a zero point {int(z.max())} outside 0..{(1 << self.bits) - 1} (§4.2)")
        return s, z, d

    def symbols(self, r0: int, r1: int) -> np.ndarray:
        """d[r][c] for rows [r0, r1), int64 [r1 − r0, C] (see decode)."""
        return self.decode(r0, r1)[2]


def codes_from_symbols(d: np.ndarray, z: np.ndarray, bits: int, where: str, r0: int = 0) -> np.ndarray:
    """q = d + z − 2^b + 1 (§4.1 "Symbols"), z already expanded to one zero point per column;
    refuses (RansInvalid) a q outside 0..2^b − 1."""
    q = d + z - ((1 << bits) - 1)
    bad = (q < 0) | (q >= (1 << bits))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise RansInvalid(where, f"row {r0 + i} column {j}: symbol {int(d[i, j])} with zero point "
                                 f"{int(z[i, j])} gives q = {int(q[i, j])}, outside 0..{(1 << bits) - 1} "
                                 f"(§4.1; {int(bad.sum())} such codes in rows {r0}..{r0 + d.shape[0] - 1})")
    return q


def decode_rans_codes(rans: bytes, freq, lens, zeros: np.ndarray, rows: int, cols: int, bits: int,
                      group_size: int, name: str = "tensor") -> np.ndarray:
    """All codes q [R, C] of one linear from its .rans bytes, freq, len and its unpacked zero
    points [R, ceil(C/G)] (§4.1, codec version 3), with every validity check. For tests
    (tests/rans_kat.py)."""
    codes = RansCodes(name, freq, lens, len(rans), rows, cols, lambda a, b: rans[a:b])
    z = np.asarray(zeros, dtype=np.int64).reshape(rows, -(-cols // group_size))
    z = z[:, np.arange(cols) // group_size]
    return codes_from_symbols(codes.symbols(0, rows), z, bits, name + ".rans")


def decode_rans_v4(rans: bytes, freq, lens, rows: int, cols: int, bits: int, group_size: int,
                   name: str = "tensor") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q [R, C], s [R, P], z [R, P]) of one codec-4 linear from its .rans bytes, its three
    concatenated tables and its stream lengths (§4.2), with every validity check. For tests."""
    codes = RansCodes(name, freq, lens, len(rans), rows, cols, lambda a, b: rans[a:b], bits, group_size,
                      RANS_META_VERSION)
    s, z, d = codes.decode(0, rows)
    q = codes_from_symbols(d, z[:, codes.code_group], bits, name + ".rans")
    return q, s, z


def reconstruct_chunks(f: SafeTensorsFile, spec: QuantSpec, report: Report):
    """Yield the reconstructed bytes of a quantized linear, a few rows at a time (§4).

    Codec version 3 (§4.1): the codes come from the rANS streams; the frequency table and the
    stream lengths are checked before the first chunk, and each chunk is a whole number of
    64-row streams (the last one possibly partial), decoded with the chunk. Codec version 4
    (§4.2): the scale codes and zero points come from the same streams (three tables)."""
    R, C, b, G = spec.rows, spec.cols, spec.bits, spec.group_size
    P = -(-C // G)  # ceil(C / G) groups per row
    col_group = np.arange(C, dtype=np.int64) // G  # group g covers columns g·G … min((g+1)·G, C) − 1
    out_le = "<u2" if spec.out_dtype in ("BF16", "F16") else "<u4"
    step = max(1, CHUNK_ELEMS // max(1, C))
    rans = None
    if spec.codec_version >= RANS_VERSION:
        rans = RansCodes.from_file(f, spec)  # raises RansInvalid on a bad freq or len table
        step = max(RANS_ROWS, step // RANS_ROWS * RANS_ROWS)  # chunks of whole streams
    dirty_padding = False
    if spec.rank > 0:
        # §4 low-rank overlay: V [r, C] and mv [r] are shared by all rows; U and mu per row.
        ov = f.rows(spec.name + ".v", 0, spec.rank)
        ov_scale = f.rows(spec.name + ".v_scale", 0, spec.rank)
        bad_values = bool(np.any(ov == -128))
    for r0 in range(0, R, step):
        r1 = min(R, r0 + step)
        if spec.codec_version >= RANS_META_VERSION:
            s, z, d = rans.decode(r0, r1)  # §4.2: scale, zero, codes per group, from the streams
            ok_z = True
        else:
            z, ok_z = unpack_rows(f.array(spec.name + ".zeros", r0, r1), P, b)
            s = f.array(spec.name + ".scales", r0, r1).astype(np.int64)
        z = z[:, col_group]  # one zero point per column
        if rans is None:
            q, ok_q = unpack_rows(f.array(spec.name + ".codes", r0, r1), C, b)
        else:
            if spec.codec_version < RANS_META_VERSION:
                d = rans.symbols(r0, r1)
            # §4.1: q = d + z − 2^b + 1, refused outside 0..2^b − 1.
            q, ok_q = codes_from_symbols(d, z, b, spec.name + ".rans", r0), True
        dirty_padding |= not (ok_q and ok_z)
        m = 16 + (s & 15)              # 4-bit mantissa with implicit 16: 16..31
        e = spec.base_exp + (s >> 4)   # 4-bit exponent over the tensor's base exponent
        # w = m · (q − z) · 2^e, exactly: an integer |m·(q−z)| <= 31·255 < 2^13 times 2^e.
        v = m[:, col_group] * (q - z)
        e = e[:, col_group]
        if spec.rank > 0:
            # w = m·(q−z)·2^e + O·2^Eo, summed exactly and rounded once (not term by term).
            u = f.rows(spec.name + ".u", r0, r1)
            mu = f.rows(spec.name + ".u_scale", r0, r1)
            bad_values |= bool(np.any(u == -128))
            v, e = exact_sum(v, e, overlay_rows(mu, u, ov_scale, ov), spec.overlay_exp)
        bits = round_to_float_bits(v, e, spec.out_dtype)
        yield bits.astype(out_le).tobytes()  # row-major, little-endian
    if dirty_padding:
        report.mismatch("packing", spec.name, "nonzero padding bits at the end of a packed row (§4)")
    if spec.rank > 0 and bad_values:
        report.mismatch("overlay", spec.name, "a U or V value is −128, outside [−127, 127] (§4)")


def quant_spec(name: str, entry: dict, f: SafeTensorsFile, ucw_meta: dict | None, codec_params: dict,
               report: Report) -> QuantSpec | None:
    """Cross-check a quantized entry against its layer file (§4) and build its QuantSpec.
    Returns None (after recording why) when the tensor cannot be decoded."""
    R, C = entry["shape"]
    if ucw_meta is None or name not in ucw_meta["tensors"]:
        report.mismatch("layer-metadata", name, f"no metadata for it in {entry['file']}")
        return None
    md = ucw_meta["tensors"][name]
    bits = md["bits"]
    G = md["group_size"]
    problems = []
    if md["shape"] != [R, C]:
        problems.append(f"shape {md['shape']} != manifest {[R, C]}")
    if bits != entry["bits"]:
        problems.append(f"bits {bits} != manifest {entry['bits']}")
    if md["out_dtype"] != entry["dtype"]:
        problems.append(f"out_dtype {md['out_dtype']} != manifest dtype {entry['dtype']}")
    if G != codec_params["group_size"]:
        problems.append(f"group_size {G} != codec {codec_params['group_size']}")
    if md["rank"] != entry["rank"]:
        problems.append(f"rank {md['rank']} != manifest {entry['rank']}")
    if problems:
        report.mismatch("layer-metadata", name, "; ".join(problems))
        return None
    P = -(-C // G)
    r = md["rank"]
    version = ucw_meta["codec_version"]
    expect = {}
    if version < RANS_META_VERSION:
        expect.update({
            ".scales": ("U8", [R, P]),
            ".zeros": ("U8", [R, packed_width(P, bits)]),
        })
    if version >= RANS_VERSION and R * C > 1 << 31:
        # §4.1: a coded linear has at most 2^31 elements (streams bound no size).
        report.mismatch("layer-metadata", name, f"shape {[R, C]}: {R * C} elements, beyond 2^31 for a coded linear")
        return None
    if version >= RANS_VERSION:
        # §4.1: the codes as S = ceil(R/64) rANS streams of n bytes in all, and the table of the
        # 2^(b+1) − 1 symbols' frequencies; no .codes. §4.2 (version 4): the streams hold the
        # scale codes and zero points too, the table is three (256 + 2^b + 2^(b+1) − 1 entries),
        # and there are no .scales and .zeros.
        t = f.tensors.get(name + ".rans")
        n = t.shape[0] if t is not None and len(t.shape) == 1 else "n"
        expect.update({
            ".rans": ("U8", [n]),
            ".rans_freq": ("U16", [rans_freq_entries(bits, version)]),
            ".rans_len": ("U32", [-(-R // RANS_ROWS)]),
        })
    else:
        expect[".codes"] = ("U8", [R, packed_width(C, bits)])
    if r > 0:  # §4 low-rank overlay
        expect.update({
            ".u": ("I8", [R, r]),
            ".u_scale": ("U16", [R]),
            ".v": ("I8", [r, C]),
            ".v_scale": ("U16", [r]),
        })
    for suffix, (dtype, shape) in expect.items():
        t = f.tensors.get(name + suffix)
        if t is None:
            report.mismatch("layer-tensor", name + suffix, f"missing from {entry['file']}")
            return None
        if t.dtype != dtype or t.shape != shape:
            report.mismatch("layer-tensor", name + suffix, "wrong dtype or shape",
                            expected={"dtype": dtype, "shape": shape},
                            actual={"dtype": t.dtype, "shape": t.shape})
            return None
    # parse_ucw_metadata already enforced −34 <= Eo − E <= 11 (exact_sum relies on it).
    return QuantSpec(name, R, C, bits, G, md["base_exp"], md["out_dtype"], r, md.get("overlay_exp"), version)


def parse_ucw_metadata(f: SafeTensorsFile, fname: str, report: Report) -> dict | None:
    """§4 "Metadata": one key "ucw", the canonical JSON of {codec, codec_version, tensors}."""
    meta = f.metadata
    if meta is None or set(meta) != {"ucw"}:
        report.mismatch("layer-metadata", fname, "__metadata__ must hold exactly the key \"ucw\"")
        if meta is None or "ucw" not in meta:
            return None
    try:
        ucw = parse_canonical(meta["ucw"].encode("utf-8"), f"{fname} metadata")
    except ValueError as exc:
        report.mismatch("layer-metadata", fname, str(exc))
        try:
            ucw = json.loads(meta["ucw"])
        except ValueError:
            return None
    ok = (
        isinstance(ucw, dict)
        and set(ucw) == {"codec", "codec_version", "tensors"}
        and ucw["codec"] == "ucw-q1"
        and ucw["codec_version"] in CODEC_VERSIONS
        and isinstance(ucw["tensors"], dict)
    )
    if ok:
        keys = {"base_exp", "bits", "group_size", "out_dtype", "rank", "shape"}
        for name, md in ucw["tensors"].items():
            # §4 ranges: 2 <= b <= 8, 1 <= G <= 4096, |E| <= 4096, R, C >= 1, 0 <= r <= 32,
            # −34 <= Eo − E <= 11, and overlay_exp present exactly when r > 0.
            ok = ok and (
                isinstance(md, dict)
                and _is_int(md.get("rank")) and 0 <= md["rank"] <= 32
                and set(md) == (keys | {"overlay_exp"} if md["rank"] > 0 else keys)
                and _is_int(md["base_exp"]) and -4096 <= md["base_exp"] <= 4096
                and _is_int(md["bits"]) and 2 <= md["bits"] <= 8
                and _is_int(md["group_size"]) and 1 <= md["group_size"] <= 4096
                and md["out_dtype"] in FLOAT_FORMATS
                and isinstance(md["shape"], list) and len(md["shape"]) == 2
                and all(_is_int(d) and d >= 1 for d in md["shape"])
                and (md["rank"] == 0 or (_is_int(md["overlay_exp"])
                                         and -34 <= md["overlay_exp"] - md["base_exp"] <= 11))
            )
    if not ok:
        report.mismatch("layer-metadata", fname, "ucw metadata does not have the §4 structure")
        return None
    return ucw


# --------------------------------------------------------------------------------------------
# Step 4: digests (§5, docs/DIGESTS.md)
# --------------------------------------------------------------------------------------------


def weights_digest(entries: list[dict]) -> str:
    """SHA-256 of the canonical JSON of [{dtype, name, sha256, shape}] sorted bytewise by name."""
    items = [{"dtype": t["dtype"], "name": t["name"], "sha256": t["sha256"], "shape": t["shape"]}
             for t in entries]
    items.sort(key=lambda t: name_key(t["name"]))
    return sha256_hex(canonical_json(items))


# --------------------------------------------------------------------------------------------
# Export (any valid safetensors layout; this one follows §3's)
# --------------------------------------------------------------------------------------------


class Exporter:
    def __init__(self, path: str, tensors: list[dict]):
        self.path = path
        self.tmp = path + ".partial"
        header = {}
        off = 0
        for t in tensors:  # the manifest order is bytewise name order (§2)
            size = int(np.prod(t["shape"], dtype=np.int64)) * DTYPE_SIZE[t["dtype"]]
            header[t["name"]] = {"data_offsets": [off, off + size], "dtype": t["dtype"], "shape": t["shape"]}
            off += size
        hbytes = canonical_json(header)
        hbytes += b" " * (-len(hbytes) % 8)
        self.fh = open(self.tmp, "wb")
        self.fh.write(struct.pack("<Q", len(hbytes)) + hbytes)

    def write(self, chunk: bytes):
        self.fh.write(chunk)

    def finish(self, keep: bool):
        self.fh.close()
        if keep:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


def verify_pack(pack_dir: str, export: str | None) -> tuple[dict, int]:
    report = Report()
    if not os.path.isdir(pack_dir):
        raise PackUnreadable(f"{pack_dir} is not a directory")

    # Step 1 (§2, §7).
    manifest, manifest_bytes = load_manifest(pack_dir)
    pack_digest = sha256_hex(manifest_bytes)  # §5: SHA-256 of the manifest bytes
    tensors = manifest["tensors"]
    params = manifest["codec"]["parameters"]
    listed_files = {f["name"] for f in manifest["files"]}

    # Step 2 (§7: before parsing any file).
    good_files = check_files(pack_dir, manifest, report)

    # §7: recompute the weights digest from the manifest's tensor list.
    if weights_digest(tensors) != manifest["weights_digest"]:
        report.mismatch("weights-digest-of-list", "weights_digest",
                        "manifest weights_digest does not match its own tensor list",
                        expected=manifest["weights_digest"], actual=weights_digest(tensors))

    # Consistency of the tensor list with the rest of the manifest and with config.json.
    check_tensor_list(pack_dir, manifest, listed_files, good_files, report)

    # Step 3: open the data files lazily, in manifest order (bytewise names interleave files).
    opened: dict[str, SafeTensorsFile | None] = {}
    ucw_meta: dict[str, dict | None] = {}

    def open_file(fname: str) -> SafeTensorsFile | None:
        if fname in opened:
            return opened[fname]
        f = None
        path = os.path.join(pack_dir, fname)
        if fname not in listed_files:
            report.mismatch("tensor-file", fname, "a tensor names a file the manifest does not list")
        elif not os.path.isfile(path):
            pass  # already reported as missing
        else:
            try:
                f = SafeTensorsFile(path)
            except (Malformed, OSError) as exc:
                report.mismatch("file-format", fname, str(exc))
                if fname in good_files:
                    report.unreadable = True
            else:
                for d in f.deviations:
                    report.mismatch("file-format", fname, d)
                if fname == SCAFFOLD:
                    if f.metadata is not None:
                        report.mismatch("file-format", fname, "scaffold must not carry metadata (§3)")
                else:
                    ucw_meta[fname] = parse_ucw_metadata(f, fname, report)
                    md = ucw_meta[fname]
                    if md is not None and md.get("codec_version") != manifest["codec"]["version"]:
                        report.mismatch("layer-metadata", fname,
                                        f"codec version {md.get('codec_version')}, the manifest says "
                                        f"{manifest['codec']['version']}")
        opened[fname] = f
        return f

    exporter = Exporter(export, tensors) if export else None
    export_ok = exporter is not None
    computed = []  # {dtype, name, sha256, shape} from the decoded bytes
    claimed = {}   # file -> set of its tensor names accounted for
    linear_bytes = linear_weights = 0
    try:
        for entry in tensors:
            name, fname = entry["name"], entry["file"]
            f = open_file(fname)
            digest = None
            if f is not None:
                if entry["kind"] == "raw":
                    digest = raw_digest(f, entry, exporter, report)
                    claimed.setdefault(fname, set()).add(name)
                else:
                    spec = quant_spec(name, entry, f, ucw_meta.get(fname), params, report)
                    # The linear's tensors (§4): codes, scales, zeros (codec version 3: rans,
                    # rans_freq, rans_len, scales, zeros, §4.1; version 4: rans, rans_freq,
                    # rans_len, §4.2), plus the overlay's four when the tensor has rank > 0. The
                    # layer file's own codec version decides which.
                    version = (ucw_meta.get(fname) or {}).get("codec_version", manifest["codec"]["version"])
                    claimed.setdefault(fname, set()).update(
                        name + s for s in linear_suffixes(entry["rank"], version))
                    if spec is not None:
                        digest = quant_digest(f, spec, exporter, report)
                        # §2 bits_per_weight.linears counts every one of them.
                        for s in linear_suffixes(spec.rank, spec.codec_version):
                            t = f.tensors[name + s]
                            linear_bytes += t.end - t.begin
                        linear_weights += spec.rows * spec.cols
            if digest is None:
                export_ok = False  # the export would lack this tensor's bytes: drop it
                computed.append(dict(entry, sha256="0" * 64))
                continue
            report.tensors_checked += 1
            if digest != entry["sha256"]:
                report.mismatch("tensor-sha256", name, expected=entry["sha256"], actual=digest)
            computed.append(dict(entry, sha256=digest))

        # Every tensor in every data file must be accounted for (§1, §3, §4).
        for fname, f in opened.items():
            if f is None:
                continue
            extra = sorted(set(f.tensors) - claimed.get(fname, set()), key=name_key)
            for t in extra:
                report.mismatch("unlisted-tensor", t, f"stored in {fname} but not in the manifest")
            md = ucw_meta.get(fname)
            if md is not None:
                own = {t["name"] for t in tensors if t["file"] == fname}
                for t in sorted(set(md["tensors"]) - own, key=name_key):
                    report.mismatch("layer-metadata", t, f"described in {fname} metadata but not in the manifest")
        for fname in sorted(listed_files, key=name_key):
            if (fname == SCAFFOLD or LAYER_FILE_RE.fullmatch(fname)) and fname not in opened:
                f = open_file(fname)
                if f is not None and f.tensors:
                    report.mismatch("unlisted-tensor", fname, "holds tensors the manifest does not list")

        # §2 bits_per_weight.
        check_bits_per_weight(manifest, opened, tensors, linear_bytes, linear_weights, report)
    except BaseException:
        if exporter is not None:
            exporter.finish(keep=False)
        raise
    finally:
        for f in opened.values():
            if f is not None:
                f.close()

    # Step 4 (§5).
    wd = weights_digest(computed)
    if wd != manifest["weights_digest"]:
        report.mismatch("weights-digest", "weights_digest", expected=manifest["weights_digest"], actual=wd)

    ok = not report.mismatches and not report.unreadable
    if exporter is not None:
        exporter.finish(keep=ok and export_ok)
        if not ok:
            print(f"ucw_decode: not writing {export}: the pack did not verify", file=sys.stderr)
    out = {
        "pack_digest": pack_digest,
        "weights_digest": wd,
        "tensors_checked": report.tensors_checked,
        "mismatches": report.mismatches,
        "ok": ok,
    }
    return out, (0 if ok else 1)


def raw_digest(f: SafeTensorsFile, entry: dict, exporter, report: Report) -> str | None:
    """§3: raw tensors are the source bytes; the digest is over the stored bytes (§5)."""
    name = entry["name"]
    t = f.tensors.get(name)
    if t is None:
        report.mismatch("raw-tensor", name, f"missing from {entry['file']}")
        return None
    if t.dtype != entry["dtype"] or t.shape != entry["shape"]:
        report.mismatch("raw-tensor", name, "dtype/shape differ from the manifest",
                        expected={"dtype": entry["dtype"], "shape": entry["shape"]},
                        actual={"dtype": t.dtype, "shape": t.shape})
        return None
    h = hashlib.sha256()
    for piece in f.slices(name):
        h.update(piece)
        if exporter is not None:
            exporter.write(piece)
    return h.hexdigest()


def quant_digest(f: SafeTensorsFile, spec: QuantSpec, exporter, report: Report) -> str | None:
    """§5: the digest of a quantized tensor is over its reconstructed bytes (§4)."""
    h = hashlib.sha256()
    try:
        for chunk in reconstruct_chunks(f, spec, report):
            h.update(chunk)
            if exporter is not None:
                exporter.write(chunk)
    except RansInvalid as exc:  # §4.1/§4.2 validity rules: named after the stored tensor at fault
        report.mismatch("rans", exc.tensor, exc.detail)
        return None
    except Malformed as exc:
        report.mismatch("reconstruction", spec.name, str(exc))
        return None
    return h.hexdigest()


def check_tensor_list(pack_dir: str, manifest: dict, listed_files: set, good_files: set, report: Report):
    """Checks of the manifest's tensor list against §1/§2/§3 and docs/DIGESTS.md."""
    tensors = manifest["tensors"]
    names = {t["name"] for t in tensors}
    for t in tensors:
        if t["kind"] == "raw" and t["file"] != SCAFFOLD:
            report.mismatch("tensor-file", t["name"], f"raw tensor in {t['file']}, not {SCAFFOLD} (§2)")
        if t["kind"] == "quantized":
            m = LAYER_FILE_RE.fullmatch(t["file"])
            if m is None:
                report.mismatch("tensor-file", t["name"], f"quantized tensor in {t['file']}, not a layer file (§1)")
            elif f".layers.{int(m.group(1))}." not in "." + t["name"]:
                # §1: layer-NNNNN holds the quantized linears of decoder layer NNNNN. (Assumes
                # the usual "…layers.<i>.…" tensor naming of the supported model types.)
                report.mismatch("tensor-file", t["name"], f"stored in {t['file']}, another layer's file")
    # §3: raw tensors are stored exactly as in the source, so their digests are the source's.
    source = {t["name"]: t["sha256"] for t in manifest["source"]["tensors"]}
    for t in tensors:
        if t["name"] not in source:
            report.mismatch("source", t["name"], "deployed tensor is not a source tensor")
        elif t["kind"] == "raw" and source[t["name"]] != t["sha256"]:
            report.mismatch("source", t["name"], "raw tensor differs from the source tensor",
                            expected=source[t["name"]], actual=t["sha256"])
    # docs/DIGESTS.md / §5: a tied lm_head is not a tensor of the deployed model; every other
    # source tensor is (quantized or raw).
    tied = False
    if "config.json" in good_files:
        try:
            with open(os.path.join(pack_dir, "config.json"), "rb") as fh:
                cfg = json.load(fh)
        except (OSError, ValueError):
            cfg = None
        tied = isinstance(cfg, dict) and cfg.get("tie_word_embeddings") is True
    if tied and "lm_head.weight" in names:
        report.mismatch("tied-lm-head", "lm_head.weight",
                        "config.json ties the embeddings, so lm_head.weight must not be deployed")
    allowed = {"lm_head.weight"} if tied else set()
    for n in sorted(set(source) - names - allowed, key=name_key):
        report.mismatch("source", n, "source tensor missing from the deployed model")


def check_bits_per_weight(manifest, opened, tensors, linear_bytes, linear_weights, report: Report):
    """§2 bits_per_weight: linears = 8 × bytes of codes+scales+zeros (codec version 3: rans,
    rans_freq, rans_len instead of codes; version 4: instead of all three; and u, u_scale, v,
    v_scale where present) over the linears' weights;
    pack = 8 × data-section bytes of all safetensors files over all deployed tensors' elements.
    Only checked when every data file could be parsed."""
    if any(f is None for f in opened.values()) or report.unreadable:
        return
    if any(t["kind"] == "quantized" for t in tensors) and linear_weights != sum(
        t["shape"][0] * t["shape"][1] for t in tensors if t["kind"] == "quantized"
    ):
        return  # some linear could not be decoded: already reported
    pack_bytes = sum(f.data_len for f in opened.values())
    elements = sum(int(np.prod(t["shape"], dtype=np.int64)) for t in tensors)
    want = manifest["bits_per_weight"]
    got = {"linears": {"bits": 8 * linear_bytes, "weights": linear_weights},
           "pack": {"bits": 8 * pack_bytes, "weights": elements}}
    if got != want:
        report.mismatch("bits-per-weight", "bits_per_weight", expected=want, actual=got)


# --------------------------------------------------------------------------------------------
# Self-test of the bit packing and rounding (no pack needed)
# --------------------------------------------------------------------------------------------


def self_test() -> int:
    # §4 example: b = 5, values 1, 2 -> bytes 0x41 0x00.
    vals, clean = unpack_rows(np.array([[0x41, 0x00]], dtype=np.uint8), 2, 5)
    assert vals.tolist() == [[1, 2]] and clean
    # Round trip of random packings for every b.
    rng = np.random.default_rng(1)
    for b in range(1, 9):
        for count in (1, 2, 3, 7, 8, 13, 64):
            x = rng.integers(0, 1 << b, size=(3, count))
            bitstr = np.zeros((3, packed_width(count, b) * 8), dtype=np.uint8)
            for j in range(b):
                bitstr[:, np.arange(count) * b + j] = (x >> j) & 1
            packed = np.packbits(bitstr, axis=1, bitorder="little")
            got, clean = unpack_rows(packed, count, b)
            assert clean and np.array_equal(got, x), (b, count)
    # Rounding against numpy's correctly rounded float64 -> float16/float32 casts. v·2^e is
    # exact in float64 here (|v| < 2^13, e in [-170, 100]).
    v = rng.integers(-(1 << 13) + 1, 1 << 13, size=200_000)
    v[:50] = 0
    for fmt, np_t, lo, hi in (("F16", np.float16, -45, 3), ("F32", np.float32, -170, 100)):
        e = rng.integers(lo, hi, size=v.size)
        want = (v.astype(np.float64) * np.exp2(e.astype(np.float64))).astype(np_t)
        want_bits = want.view(np.uint16 if np_t is np.float16 else np.uint32).astype(np.int64)
        got = round_to_float_bits(v.astype(np.int64), e.astype(np.int64), fmt)
        assert np.array_equal(got, want_bits), fmt
    # BF16 against RNE of exact float32 bits (exact: 13 significant bits, within f32's normal
    # range), then some hand-checked subnormal and signed-zero cases.
    e = rng.integers(-110, 100, size=v.size)
    f32 = (v.astype(np.float64) * np.exp2(e.astype(np.float64))).astype(np.float32)
    assert np.array_equal(f32.astype(np.float64), v * np.exp2(e.astype(np.float64)))
    u = f32.view(np.uint32).astype(np.int64)
    want = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    assert np.array_equal(round_to_float_bits(v.astype(np.int64), e.astype(np.int64), "BF16"), want)
    cases = [  # (v, e, bf16 bits)
        (1, -133, 0x0001),    # smallest bf16 subnormal, 2^-133
        (1, -134, 0x0000),    # exactly half of it: tie to even -> +0
        (3, -135, 0x0001),    # 0.75 ulp -> 1 ulp
        (-1, -135, 0x8000),   # a quarter ulp, negative -> -0
        (127, -133, 0x007F),  # largest subnormal
        (255, -133, 0x00FF),  # 255·2^-133 = (1 + 127/128)·2^-126, a normal
        (257, -134, 0x0080),  # 128.5 ulp -> tie to even 128 = smallest normal 2^-126
        (0, 5, 0x0000),       # exact zero -> +0
        (1, 0, 0x3F80),       # 1.0
        (-3, 0, 0xC040),      # -3.0
    ]
    for cv, ce, want_bits in cases:
        got = int(round_to_float_bits(np.array([cv]), np.array([ce]), "BF16")[0])
        assert got == want_bits, (cv, ce, hex(got), hex(want_bits))
    try:
        round_to_float_bits(np.array([1]), np.array([128]), "BF16")
    except Malformed:
        pass
    else:
        raise AssertionError("overflow not detected")
    _self_test_wide_rounding(rng)
    _self_test_overlay(rng)
    _self_test_rans()
    print("self-test ok")
    return 0


def _self_test_rans():
    """§4.1 decoding on two hand-checked streams (more in tests/rans_kat.py), and refusals."""
    # b = 2, one row, q = 1, 2, 0, one group with z = 1: d = 3, 4, 2, each once; freq = 1365
    # each plus the shortfall 1 on s = 2 (cum = 0, 1366, 2731). Encoding 2, 4, 3 in turn from
    # x = L = 8388608 (no renormalisation while x < 2^19·f): 6141·4096 + 2 = 25153538;
    # 18427·4096 + 683 + 2731 = 75480406; 55297·4096 + 1 + 1366 = 226497879 = 0x0D801557.
    freq = [0, 0, 1366, 1365, 1365, 0, 0]
    q = decode_rans_codes(bytes.fromhex("0d801557"), freq, [4], np.array([[1]]), 1, 3, 2, 4)
    assert q.tolist() == [[1, 2, 0]], q
    # One symbol (freq[7] = M): x stays L, the streams are the 4 state bytes alone. R = 65 rows
    # make two streams, the second of one row.
    one = [0] * 7 + [4096] + [0] * 7
    q = decode_rans_codes(bytes.fromhex("00800000" * 2), one, [4, 4], np.full((65, 1), 5), 65, 2, 3, 2)
    assert q.tolist() == [[5, 5]] * 65
    refusals = [
        ((bytes.fromhex("0d801558"), freq, [4], 1), "final state"),           # a flipped bit
        ((bytes.fromhex("0d801557"), freq[:-1] + [1], [4], 1), "sum to 4097"),  # Σ freq != M
        ((bytes.fromhex("0d80155700"), freq, [5], 1), "left over"),          # a byte too many
        ((bytes.fromhex("0d801557"), freq, [3], 1), "fewer than the 4"),     # len < 4
        ((bytes.fromhex("0d801557"), freq, [5], 1), "sum to 5"),             # Σ len != n
        ((bytes.fromhex("0d801557"), freq, [4], 0), "outside 0..3"),         # z = 0: d = 2 gives q = −1
        ((bytes.fromhex("000d801557"), freq, [5], 1), "starts in state"),      # a state below L
    ]
    for (rans, fr, lens, z), want in refusals:
        try:
            decode_rans_codes(rans, fr, lens, np.array([[z]]), 1, 3, 2, 4)
        except RansInvalid as exc:
            assert want in str(exc), (want, str(exc))
        else:
            raise AssertionError(f"not refused: {want}")
    _self_test_rans_v4()


def _self_test_rans_v4():
    """§4.2 (codec version 4) decoding on hand-checked streams, and its refusals."""
    # b = 2, one row, C = 2, G = 1 (P = 2 groups of one column). Group 0: scale 0x10, z = 1,
    # q = 2 (d = 2 − 1 + 3 = 4); group 1: scale 0x11, z = 2, q = 2 (d = 3). The stream's symbols:
    # S16 Z1 D4 S17 Z2 D3. Each table holds two symbols counted once each: 2048 apiece.
    #   scale table (256 entries): freq[16] = freq[17] = 2048, cum[16] = 0, cum[17] = 2048
    #   zero table (4 entries):    freq[1]  = freq[2]  = 2048, cum[1]  = 0, cum[2]  = 2048
    #   code table (7 entries):    freq[3]  = freq[4]  = 2048, cum[3]  = 0, cum[4]  = 2048
    # Encoding from the last symbol to the first, from x = L = 2^23, x = (x div f)·M + x mod f +
    # cum[s] with f = 2048 (no renormalisation: x stays below 2^19·2048 = 2^30; x mod f is 0 at
    # every step):
    #   D3:  2^12·4096 + 0                       = 2^24
    #   Z2:  2^13·4096 + 2048                    = 2^25 + 2048
    #   S17: (2^14 + 1)·4096 + 2048              = 2^26 + 6144           = 67115008
    #   D4:  (2^15 + 3)·4096 + 2048              = 2^27 + 14336          = 134232064
    #   Z1:  (2^16 + 7)·4096 + 0                 = 2^28 + 28672          = 268464128
    #   S16: (2^17 + 14)·4096 + 0                = 2^29 + 57344          = 0x2000E000
    # so the stream is the 4 bytes 20 00 e0 00. Decoding walks the states back: slot = x mod M
    # = 0 < 2048 picks S16, x = 2048·(2^17 + 14) + 0 = 2^28 + 28672; slot 0 again picks Z1,
    # x = 2048·(2^16 + 7) = 2^27 + 14336; slot 2048 picks D4 (cum 2048), x = 2048·(2^15 + 3) +
    # 0 = 2^26 + 6144; ... and after D3, x = 2048·2^12 = 2^23 = L with all 4 bytes read.
    freq = [0] * 256 + [0] * 4 + [0] * 7
    freq[16] = freq[17] = 2048
    freq[256 + 1] = freq[256 + 2] = 2048
    freq[260 + 3] = freq[260 + 4] = 2048
    q, s, z = decode_rans_v4(bytes.fromhex("2000e000"), freq, [4], 1, 2, 2, 1)
    assert q.tolist() == [[2, 2]] and s.tolist() == [[16, 17]] and z.tolist() == [[1, 2]], (q, s, z)
    # Every table with one symbol (scale 0x3a, z = 5, q = z, b = 3): each step leaves x = L, so
    # each stream is the bare state 00 80 00 00; R = 65 rows make two streams.
    one = [0] * (256 + 8 + 15)
    one[0x3A] = one[256 + 5] = one[264 + 7] = 4096
    q, s, z = decode_rans_v4(bytes.fromhex("00800000" * 2), one, [4, 4], 65, 3, 3, 2)
    assert q.tolist() == [[5] * 3] * 65 and s.tolist() == [[0x3A] * 2] * 65 and z.tolist() == [[5] * 2] * 65

    def bumped(i):
        out = list(freq)
        out[i] += 1
        return out

    v3_freq = [0, 0, 1366, 1365, 1365, 0, 0]  # the v3 case of _self_test_rans
    refusals = [  # (rans, freq, lens, rows, cols, bits, G), what the message must say
        ((bytes.fromhex("2000e000"), bumped(255), [4], 1, 2, 2, 1), "scale table (entries 0..255) sums to 4097"),
        ((bytes.fromhex("2000e000"), bumped(259), [4], 1, 2, 2, 1), "zero table (entries 256..259) sums to 4097"),
        ((bytes.fromhex("2000e000"), bumped(266), [4], 1, 2, 2, 1), "code table (entries 260..266) sums to 4097"),
        ((bytes.fromhex("2000e000"), freq[:-1], [4], 1, 2, 2, 1), "266 entries, not"),
        ((bytes.fromhex("2000e001"), freq, [4], 1, 2, 2, 1), "final state"),            # a flipped bit
        ((bytes.fromhex("2000e00000"), freq, [5], 1, 2, 2, 1), "left over"),           # a byte too many
        ((bytes.fromhex("2000e000"), freq, [4], 1, 2, 2, 2), "final state"),           # read with G = 2
        # The v3 stream of _self_test_rans (codes only) read as version 4 with these tables.
        ((bytes.fromhex("0d801557"), freq, [4], 1, 2, 2, 1), "runs out of bytes while decoding its symbol 4 (the zero point of group 1"),
        # A v3 table (7 entries) given as a version-4 .rans_freq.
        ((bytes.fromhex("0d801557"), v3_freq, [4], 1, 3, 2, 4), "7 entries, not 256 + 2^2 + 2^3 − 1 = 267"),
    ]
    for (rans, fr, lens, R, C, b, G), want in refusals:
        try:
            decode_rans_v4(rans, fr, lens, R, C, b, G)
        except RansInvalid as exc:
            assert want in str(exc), (want, str(exc))
        else:
            raise AssertionError(f"not refused: {want}")
    # The version-4 stream read as version 3 (codes only, the code table, z = 1, 2): refused.
    try:
        decode_rans_codes(bytes.fromhex("2000e000"), freq[260:], [4], np.array([[1, 2]]), 1, 2, 2, 1)
    except RansInvalid as exc:
        assert "final state" in str(exc), str(exc)
    else:
        raise AssertionError("a v4 stream read as v3 was not refused")


def _exact_of_bits(bits: int, fmt: str):
    """The exact value of a finite IEEE bit pattern, as a Fraction (reference for the tests)."""
    from fractions import Fraction

    ebits, fbits, bias = FLOAT_FORMATS[fmt]
    sign = -1 if bits >> (ebits + fbits) else 1
    ef = (bits >> fbits) & ((1 << ebits) - 1)
    frac = bits & ((1 << fbits) - 1)
    if ef == 0:
        return sign * Fraction(frac) * Fraction(2) ** (1 - bias - fbits)
    return sign * Fraction((1 << fbits) | frac) * Fraction(2) ** (ef - bias - fbits)


def _reference_round(v: int, e: int, fmt: str) -> int:
    """RNE of the exact v·2^e to `fmt` by a different method than round_to_float_bits: take a
    float64 guess, then pick among nearby magnitude patterns the one nearest to the exact value
    (ties to the even pattern). The guess is within an ulp or two of the answer, so a window of
    ±3 patterns suffices. Python ints and Fractions only; no overflow handling."""
    from fractions import Fraction

    ebits, fbits, _ = FLOAT_FORMATS[fmt]
    x = abs(Fraction(v) * Fraction(2) ** e)
    g = float(x)
    if fmt == "F32":
        guess = struct.unpack("<I", struct.pack("<f", g))[0] if g < 3.4e38 else 0x7F7FFFFF
    elif fmt == "F16":
        guess = int(np.array([g]).astype(np.float16).view(np.uint16)[0]) if g < 65504 else 0x7BFF
    else:
        guess = struct.unpack("<I", struct.pack("<f", g))[0] >> 16 if g < 3.4e38 else 0x7F7F
    top = ((1 << ebits) - 1) << fbits  # first non-finite magnitude pattern
    cands = [c for c in range(guess - 3, guess + 4) if 0 <= c < top]
    best = min(cands, key=lambda c: (abs(_exact_of_bits(c, fmt) - x), c & 1))
    if v == 0:
        return 0
    return best | ((1 << (ebits + fbits)) if v < 0 else 0)


def _self_test_wide_rounding(rng):
    """round_to_float_bits on values up to 63 bits (overlay sums), against _reference_round."""
    ranges = {"BF16": (-200, 70), "F16": (-90, -40), "F32": (-220, 60)}
    for fmt, (lo, hi) in ranges.items():
        cases = []
        for nbits in (1, 2, 13, 14, 24, 25, 52, 53, 54, 60, 62, 63):
            for _ in range(40):
                a = int(rng.integers(1 << (nbits - 1), (1 << nbits) - 1, endpoint=True))
                e = int(rng.integers(lo, hi))
                cases.append((a if rng.integers(2) else -a, e))
        # Exact ties and near-ties around the rounding point, with long tails of low bits.
        for a in ((1 << 62) + (1 << 38), (1 << 62) + (3 << 38), (1 << 62) + (1 << 38) + 1,
                  (1 << 62) + (1 << 38) - 1, (1 << 63) - 1, (1 << 55) + (1 << 31)):
            for e in (lo, -70, -60, 0, 5) if fmt != "F16" else (lo, -70, -60, -55, -50):
                cases.extend([(a, e), (-a, e)])
        vs = np.array([c[0] for c in cases], dtype=np.int64)
        es = np.array([c[1] for c in cases], dtype=np.int64)
        keep = [i for i, (v, e) in enumerate(cases)
                if abs(v) * 2.0 ** e < {"BF16": 3.38e38, "F16": 65504.0, "F32": 3.40e38}[fmt]]
        got = round_to_float_bits(vs[keep], es[keep], fmt)
        for k, i in enumerate(keep):
            want = _reference_round(*cases[i], fmt)
            assert int(got[k]) == want, (fmt, cases[i], hex(int(got[k])), hex(want))


def _self_test_overlay(rng):
    """exact_sum + overlay_rows + one rounding against Python-int arithmetic, at the extremes
    of §4's ranges (r = 32, |U|, |V| = 127, mu, mv up to 65535, Eo − E at −34 and 11, scale
    exponents 0 and 15), so the aligned sums reach 62 bits."""
    from fractions import Fraction

    R, C = 6, 9
    for rank, d_eo in ((32, -34), (32, 11), (1, -34), (7, 0), (32, -20)):
        E = int(rng.integers(-150, -40))
        Eo = E + d_eo
        u = rng.integers(-127, 128, size=(R, rank))
        v = rng.integers(-127, 128, size=(rank, C))
        mu = rng.integers(0, 65536, size=R)
        mv = rng.integers(0, 65536, size=rank)
        u[0], v[:, 0], mu[0], mv[:] = 127, 127, 65535, np.where(mv % 2 == 0, 65535, mv)
        w_int = rng.integers(-7905, 7906, size=(R, C))
        w_exp = E + rng.choice([0, 15, 7], size=(R, C))
        o = overlay_rows(mu.astype(np.int64), u.astype(np.int64), mv.astype(np.int64), v.astype(np.int64))
        total, lo = exact_sum(w_int.astype(np.int64), w_exp.astype(np.int64), o, Eo)
        for i in range(R):
            for j in range(C):
                o_ref = sum(int(mu[i]) * int(u[i, k]) * int(mv[k]) * int(v[k, j]) for k in range(rank))
                assert int(o[i, j]) == o_ref and abs(o_ref) < 1 << 51
                exact = Fraction(int(w_int[i, j])) * Fraction(2) ** int(w_exp[i, j]) + Fraction(o_ref) * Fraction(2) ** Eo
                assert Fraction(int(total[i, j])) * Fraction(2) ** int(lo[i, j]) == exact
                assert abs(int(total[i, j])) < 1 << 63
        for fmt in ("BF16", "F32"):
            got = round_to_float_bits(total, lo, fmt)
            for i in range(R):
                for j in range(C):
                    want = _reference_round(int(total[i, j]), int(lo[i, j]), fmt)
                    assert int(got[i, j]) == want, (fmt, rank, d_eo, i, j)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Independent ucw pack decoder/verifier (docs/FORMAT.md).")
    ap.add_argument("pack_dir", nargs="?", help="pack directory")
    ap.add_argument("--export", metavar="OUT.safetensors", help="write every deployed tensor to one file")
    ap.add_argument("--self-test", action="store_true", help="test bit packing and rounding, then exit")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.pack_dir:
        ap.error("PACK_DIR is required")
    try:
        out, code = verify_pack(args.pack_dir, args.export)
    except PackUnreadable as exc:
        out = {"pack_digest": None, "weights_digest": None, "tensors_checked": 0,
               "mismatches": [], "ok": False, "error": str(exc)}
        code = 2
    except Exception as exc:  # a bug here, or a pack shaped in a way not foreseen: not "ok"
        import traceback

        traceback.print_exc()
        out = {"pack_digest": None, "weights_digest": None, "tensors_checked": 0,
               "mismatches": [], "ok": False, "error": f"internal error: {exc!r}"}
        code = 2
    print(json.dumps(out, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
