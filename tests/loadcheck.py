"""Driver for tests/loadcheck.rs: load an exported pack's weights the way a runtime would
(safetensors' numpy loader; ml_dtypes gives numpy a bfloat16) and run python/ucw_loadcheck.py
on the loaded arrays. Prints one JSON object.

  loadcheck.py EXPORT_DIR PACK                   digest and check of the loaded weights
  loadcheck.py EXPORT_DIR PACK TENSOR            the same after one bit of TENSOR changes
"""

import json
import pathlib
import sys

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
from safetensors.numpy import load_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import ucw_loadcheck  # noqa: E402


def main(export_dir, pack, change=None):
    d = pathlib.Path(export_dir)
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    tied = json.loads((d / "config.json").read_text()).get("tie_word_embeddings") is True
    if tied:
        # A transformers state_dict holds the tied lm_head as a second name for the
        # embeddings; the weights digest leaves it out.
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
    out = {"tensors": len(tensors), "tied": tied, "dtypes": sorted({str(t.dtype) for t in tensors.values()})}
    if change:
        t = tensors[change].copy()
        t.reshape(-1).view("uint8")[0] ^= 1
        tensors[change] = t
    out["digest"] = ucw_loadcheck.weights_digest(tensors, tie_word_embeddings=tied)
    try:
        ucw_loadcheck.check(tensors, pack, tie_word_embeddings=tied)
        out["check"] = "PASS"
    except ucw_loadcheck.WeightsMismatch as e:
        out.update(check="FAIL", tensor=e.tensor, message=str(e))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
