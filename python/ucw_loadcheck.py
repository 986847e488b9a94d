"""Load-time check: is the model this process loaded the validated ucw pack?

The weights digest (docs/DIGESTS.md) of the tensors a serving process holds, computed from
the tensors themselves (a transformers model's ``state_dict()``, a dict of tensors, or the
``(name, tensor)`` stream a fused loader consumes), compared with a pack's manifest. It is
byte-identical to ``ucw hash`` of the directory ``ucw export`` writes. Standard library
only; torch is imported only when handed torch tensors (numpy arrays and raw
``(dtype, shape, bytes)`` triples work without it).

    import ucw_loadcheck
    model = AutoModelForCausalLM.from_pretrained(exported_dir, dtype="auto")
    ucw_loadcheck.check_model(model, "/srv/packs/model.ucw")   # raises WeightsMismatch

    python3 python/ucw_loadcheck.py EXPORTED_DIR PACK_OR_MANIFEST   # the same, from a shell

docs/LOADCHECK.md says where a serving stack calls it.
"""

import hashlib
import json
import os
import sys

__all__ = ["WeightsHasher", "WeightsMismatch", "weights_digest", "check", "check_model", "read_manifest"]

# Names as safetensors spells them (the manifest's `dtype`).
_TORCH_DTYPES = {"torch.bfloat16": "BF16", "torch.float16": "F16", "torch.float32": "F32"}
_NUMPY_DTYPES = {"float16": "F16", "float32": "F32", "bfloat16": "BF16"}


class WeightsMismatch(Exception):
    """The loaded weights are not the manifest's; ``tensor`` names the first that differs."""

    def __init__(self, message, tensor=None):
        super().__init__(message)
        self.tensor = tensor


def _entry(name, value):
    """(dtype, shape, little-endian row-major bytes) of one tensor."""
    if isinstance(value, tuple) and len(value) == 3:
        dtype, shape, data = value
        return dtype, [int(d) for d in shape], bytes(data)
    kind = type(value).__module__.split(".")[0]
    if kind == "torch":
        dtype = _TORCH_DTYPES.get(str(value.dtype))
        if dtype is None:
            raise WeightsMismatch(f"tensor {name}: dtype {value.dtype} is not BF16, F16 or F32", name)
        if sys.byteorder != "little":
            raise RuntimeError("ucw_loadcheck reads torch tensors as little-endian bytes; this host is big-endian")
        import torch

        flat = value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        try:
            data = flat.numpy().tobytes()
        except (ImportError, RuntimeError):  # torch without numpy
            data = bytes(flat.tolist())
        return dtype, list(value.shape), data
    if kind == "numpy" or hasattr(value, "tobytes"):
        dtype = _NUMPY_DTYPES.get(value.dtype.name)
        if dtype is None:
            raise WeightsMismatch(f"tensor {name}: dtype {value.dtype} is not BF16, F16 or F32", name)
        little = value.astype(value.dtype.newbyteorder("<"), copy=False)
        return dtype, list(value.shape), little.tobytes(order="C")
    raise TypeError(f"tensor {name}: cannot read a {type(value).__name__}")


class WeightsHasher:
    """Hashes tensors one at a time, as they pass, so a loader that fuses or converts
    tensors (vLLM's qkv_proj, gate_up_proj) can hash each checkpoint tensor before it does:
    hasher.add(name, tensor) in the weight iterator, hasher.check(pack) after loading."""

    def __init__(self, tie_word_embeddings=False):
        # With tied embeddings the deployed model holds no separate lm_head copy; the
        # weights digest leaves a stored one out (docs/DIGESTS.md).
        self.tied = bool(tie_word_embeddings)
        self.entries = {}

    def add(self, name, tensor):
        if self.tied and name == "lm_head.weight":
            return
        if name in self.entries:
            raise WeightsMismatch(f"tensor {name} is given twice", name)
        dtype, shape, data = _entry(name, tensor)
        self.entries[name] = {"dtype": dtype, "name": name, "sha256": hashlib.sha256(data).hexdigest(), "shape": shape}

    def sorted_entries(self):
        return [self.entries[n] for n in sorted(self.entries, key=lambda n: n.encode("utf-8"))]

    def digest(self):
        # RFC 8785 for ASCII keys, strings and non-negative integers (docs/DIGESTS.md).
        canon = json.dumps(self.sorted_entries(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canon.encode("utf-8")).hexdigest()

    def check(self, pack_or_manifest):
        """Return the weights digest when it is the manifest's; raise WeightsMismatch
        naming the first tensor (in name order) that is missing, extra or different."""
        manifest = read_manifest(pack_or_manifest)
        want = manifest["weights_digest"]
        got = self.digest()
        if got == want:
            return got
        expected = {t["name"]: t for t in manifest["tensors"]}
        for name in sorted(set(expected) | set(self.entries), key=lambda n: n.encode("utf-8")):
            e, g = expected.get(name), self.entries.get(name)
            if g is None:
                raise WeightsMismatch(f"tensor {name} is in the pack but was not loaded", name)
            if e is None:
                raise WeightsMismatch(f"tensor {name} was loaded but is not in the pack", name)
            for key in ("dtype", "shape", "sha256"):
                if e[key] != g[key]:
                    raise WeightsMismatch(f"tensor {name}: loaded {key} {g[key]}, the pack's is {e[key]}", name)
        raise WeightsMismatch(f"weights digest {got} is not the pack's {want}")


def read_manifest(pack_or_manifest):
    """A pack directory, its ucw-manifest.json, or an already parsed manifest dict."""
    if isinstance(pack_or_manifest, dict):
        return pack_or_manifest
    path = os.fspath(pack_or_manifest)
    if os.path.isdir(path):
        path = os.path.join(path, "ucw-manifest.json")
    with open(path, "rb") as f:
        return json.load(f)


def weights_digest(tensors, tie_word_embeddings=False):
    """Weights digest of a ``{name: tensor}`` mapping or an iterable of (name, tensor)."""
    h = WeightsHasher(tie_word_embeddings)
    for name, t in tensors.items() if hasattr(tensors, "items") else tensors:
        h.add(name, t)
    return h.digest()


def check(tensors, pack_or_manifest, tie_word_embeddings=False):
    h = WeightsHasher(tie_word_embeddings)
    for name, t in tensors.items() if hasattr(tensors, "items") else tensors:
        h.add(name, t)
    return h.check(pack_or_manifest)


def check_model(model, pack_or_manifest):
    """Check a loaded transformers model (its state_dict, tied embeddings per its config)."""
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    return check(model.state_dict(), pack_or_manifest, tie_word_embeddings=tied)


def _main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: ucw_loadcheck.py MODEL_DIR PACK_OR_MANIFEST   (needs torch and transformers)", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(argv[1], dtype="auto")
    try:
        digest = check_model(model, argv[2])
    except WeightsMismatch as e:
        print(f"FAIL  {e}")
        return 1
    print(f"PASS  weights digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
