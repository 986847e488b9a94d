"""Driver for tests/loadcheck.rs: load an exported pack's weights the way a runtime would
(safetensors' numpy loader; ml_dtypes gives numpy a bfloat16) and run python/ucw_loadcheck.py
on the loaded arrays. Prints one JSON object.

  loadcheck.py EXPORT_DIR PACK                   digest and check of the loaded weights
  loadcheck.py EXPORT_DIR PACK TENSOR            the same after one bit of TENSOR changes
  loadcheck.py --transformers EXPORT_DIR PACK [TENSOR]
                                                 loaded with transformers instead (a
                                                 python with torch and transformers)
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import ucw_loadcheck  # noqa: E402


def with_transformers(export_dir, pack, change=None):
    """The model as a serving process holds it: AutoModelForCausalLM in its exported dtype,
    checked through its state_dict (check_model)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype="auto")
    sd = model.state_dict()
    out = {"tensors": len(sd), "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in sd.values()})}
    if change:
        with torch.no_grad():
            flat = model.get_parameter(change).data.view(-1)
            bits = flat[:1].view(torch.uint8)
            bits[0] ^= 1
    try:
        ucw_loadcheck.check_model(model, pack)
        out["check"] = "PASS"
    except ucw_loadcheck.WeightsMismatch as e:
        out.update(check="FAIL", tensor=e.tensor, message=str(e))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    out["tied"] = tied
    out["digest"] = ucw_loadcheck.weights_digest(model.state_dict(), tie_word_embeddings=tied)
    print(json.dumps(out))


def main(export_dir, pack, change=None):
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
    from safetensors.numpy import load_file

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
    if sys.argv[1] == "--transformers":
        with_transformers(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
