#!/usr/bin/env python3
"""Generate the committed test fixtures under tests/fixtures/.

What it writes (and nothing else; each output is deleted and rewritten):

  tests/fixtures/text/sample.txt        Chapter I of Alice in Wonderland (public domain)
  tests/fixtures/text/sample.tokens.json  all token ids of sample.txt (fixture tokenizer)
  tests/fixtures/llama-bf16/            tiny random llama,   bfloat16, tied embeddings
  tests/fixtures/mistral-f16/           tiny random mistral, float16,  untied lm_head
  tests/fixtures/qwen2-f32/             tiny random qwen2,   float32,  q/k/v biases, tied
  tests/fixtures/qwen3-bf16-sharded/    tiny random qwen3,   bfloat16, q/k norms, head_dim 32,
                                        untied, sharded into several safetensors files

Every model directory holds the Hugging Face files (config.json, generation_config.json,
model*.safetensors [+ index]), the shared byte-level BPE tokenizer (tokenizer.json,
tokenizer_config.json), and reference.safetensors with `tokens` (I64 [64]) and the
transformers `logits` (F32 [64, 512]) for those tokens.

Text source: the Canterbury corpus files alice29.txt and lcet10.txt, taken from the
brotli 1.2.1 sdist on PyPI (the only outside source reachable here).  The script fetches
it with `pip download` unless --sdist points at an already downloaded copy; the file
hashes are checked so a different sdist cannot silently change the fixtures.

Run (CPU only, deterministic; see tests/fixtures/README.md):
    python3 -m venv /tmp/fx
    /tmp/fx/bin/pip install -r scripts/requirements-fixtures.txt
    /tmp/fx/bin/python scripts/make_fixtures.py
"""

from __future__ import annotations

import os

# Determinism first: these must be set before tokenizers / torch spin up thread pools.
# The BPE trainer counts pairs in parallel (rayon); one thread removes any chance of
# order-dependent tie breaking.  CUDA is hidden so nothing ever runs off the CPU.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"

import argparse
import hashlib
import json
import math
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import tokenizers
import torch
import transformers
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

# --- text source -------------------------------------------------------------------------
BROTLI_SDIST = "brotli==1.2.1"
SDIST_NAME = "brotli-1.2.1.tar.gz"
CORPUS_MEMBERS = {
    # member path inside the sdist -> sha256 of the file as shipped (CRLF line endings)
    "brotli-1.2.1/tests/testdata/alice29.txt": "7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0",
    "brotli-1.2.1/tests/testdata/lcet10.txt": "5314ba1dbb03f471df88bec6cd120a938ef60d0fd3511c5c1dce61bf7463245f",
}

# --- tokenizer ---------------------------------------------------------------------------
VOCAB_SIZE = 512
EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN]  # id 0
N_REF_TOKENS = 64

# --- weight initialisation -----------------------------------------------------------------
# Much larger than the usual 0.02 on purpose: with std 0.02 a 2-layer, 64-wide random
# model has almost uniform attention and near-constant logits, so a wrong RMSNorm weight,
# a wrong RoPE or a skipped layer would hardly move the reference logits.  0.15 already
# gives per-position logit std ~1.2; 0.2 gives ~1.6 and clearly peaked attention
# (see the statistics the script prints).
LINEAR_STD = 0.2
BIAS_STD = 0.10
NORM_STD = 0.10  # norm weights are 1 + N(0, NORM_STD)

COMMON_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=160,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    # The tokenizer has a single special token, id 0; the library defaults (1/2) would
    # point at ordinary byte tokens.
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=None,
    use_cache=True,
)


@dataclass
class Fixture:
    name: str  # directory under tests/fixtures
    model_type: str
    dtype: torch.dtype
    seed: int
    config: dict = field(default_factory=dict)  # overrides of COMMON_CONFIG
    max_shard_size: str | None = None  # None: single model.safetensors
    # Rewrite config.json's `rope_parameters` into the legacy (transformers 4 / hub) form:
    # top-level `rope_theta` plus this `rope_scaling` dict.  The reference logits come from
    # the directory reloaded from disk, so transformers itself parses the legacy form.
    legacy_rope_scaling: dict | None = None


FIXTURE_SPECS = [
    Fixture(
        name="llama-bf16",
        model_type="llama",
        dtype=torch.bfloat16,
        seed=1001,
        config=dict(tie_word_embeddings=True, rope_theta=10000.0, attention_bias=False, mlp_bias=False),
    ),
    Fixture(
        name="mistral-f16",
        model_type="mistral",
        dtype=torch.float16,
        seed=1002,
        # rms_norm_eps varied here so an implementation that hard-codes eps is caught.
        config=dict(tie_word_embeddings=False, rope_theta=100000.0, sliding_window=None, rms_norm_eps=1e-5),
    ),
    Fixture(
        name="qwen2-f32",
        model_type="qwen2",
        dtype=torch.float32,
        seed=1003,
        config=dict(tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False, sliding_window=None),
    ),
    Fixture(
        name="qwen3-bf16-sharded",
        model_type="qwen3",
        dtype=torch.bfloat16,
        seed=1004,
        # head_dim 32 != hidden_size / num_heads (16): q_proj is 64 -> 128, o_proj 128 -> 64.
        config=dict(
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            head_dim=32,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
        ),
        # ~350 KB of bf16 weights -> several shards.
        max_shard_size="150KB",
    ),
    # --- scaled RoPE (issue 14).  Each scaling is chosen so that it changes the logits at
    # the 64-token reference length (see "RoPE scaling ignored" in the README).
    Fixture(
        name="llama-rope-llama3-bf16",
        model_type="llama",
        dtype=torch.bfloat16,
        seed=1005,
        # Llama 3.1's keys and theta, written the way its hub config.json writes them, but
        # original_max_position_embeddings 16 (not 8192) so the smoothing band (wavelengths
        # 16/4 = 4 to 16/1 = 16) and the /8 region both fall on this head's frequencies.
        config=dict(
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            rope_parameters=dict(
                rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=16,
            ),
        ),
        legacy_rope_scaling=dict(
            factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16, rope_type="llama3",
        ),
    ),
    Fixture(
        name="qwen3-rope-yarn-bf16",
        model_type="qwen3",
        dtype=torch.bfloat16,
        seed=1006,
        # Qwen3's documented YaRN keys (rope_type, factor, original_max_position_embeddings)
        # in the transformers 5 `rope_parameters` form.  theta 1e4 and original length 32
        # (max_position_embeddings 128 = 4 x 32, as YaRN expects) put the ramp on pairs
        # 0..3 of 16, so interpolated pairs turn by radians within 64 tokens; the attention
        # factor is 0.1 ln 4 + 1.
        config=dict(
            tie_word_embeddings=False,
            head_dim=32,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            max_position_embeddings=128,
            rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32),
        ),
    ),
    Fixture(
        name="qwen2-rope-linear-bf16",
        model_type="qwen2",
        dtype=torch.bfloat16,
        seed=1007,
        # Legacy `{"type": "linear", "factor": 4.0}` (the pre-`rope_type` key) with a
        # top-level rope_theta: positions divided by 4.
        config=dict(
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters=dict(rope_type="linear", rope_theta=1000000.0, factor=4.0),
        ),
        legacy_rope_scaling=dict(type="linear", factor=4.0),
    ),
]

# The new RoPE fixtures are also regenerated on their own (`--only`), leaving the others.

# Files save_pretrained may write that we keep; anything else is deleted.
KEEP_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "reference.safetensors",
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# =========================================================================================
# Step 1: corpus
# =========================================================================================
def fetch_corpus(sdist: Path | None) -> dict[str, str]:
    """Return {basename: text with \\n line endings} for alice29.txt and lcet10.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        if sdist is None:
            # --no-binary :all: forces the sdist (the wheels do not contain the test data).
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--no-binary", ":all:", "--dest", tmp, BROTLI_SDIST],
                check=True,
            )
            sdist = Path(tmp) / SDIST_NAME
        out = {}
        with tarfile.open(sdist, "r:gz") as tar:
            for member, want in CORPUS_MEMBERS.items():
                data = tar.extractfile(member).read()
                got = sha256_bytes(data)
                if got != want:
                    raise SystemExit(f"{member}: sha256 {got} != expected {want}")
                # The Canterbury files are CRLF ASCII; normalise to \n once, here.
                out[Path(member).name] = data.decode("ascii").replace("\r\n", "\n")
    return out


def make_sample_text(alice: str) -> str:
    """Chapter I of Alice (about 11 KB), from its heading, ending in one newline.

    The title page is skipped so that the 64 reference tokens are mostly ordinary prose.
    The Canterbury file centres headings and indents paragraphs with spaces; that layout
    is dropped (lines are stripped) so the text reads like ordinary prose.  Inner runs of
    spaces (two after a colon or full stop) remain.
    """
    start = alice.index("CHAPTER I\n")
    end = alice.index("CHAPTER II\n")
    lines = [line.strip() for line in alice[start:end].split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


# =========================================================================================
# Step 2: tokenizer
# =========================================================================================
# The pre-tokenizer split regex of the Qwen2 / Llama-3 family (byte-level BPE after it).
# Using it rather than GPT-2's built-in ByteLevel regex matters for transformers 5.x:
# AutoTokenizer on a model_type=qwen2 directory ignores tokenizer_config.json and
# rebuilds the tokenizer as Qwen2Tokenizer (NFC + this regex + ByteLevel).  With the same
# pipeline here, tokenizer.json and AutoTokenizer agree for every fixture directory.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_tokenizer(corpus: dict[str, str]) -> Tokenizer:
    """Byte-level BPE, vocab exactly 512 = 1 special + 256 byte symbols + 255 merges."""
    tok = Tokenizer(models.BPE())  # no unk token: byte-level covers every input
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        # add_prefix_space=False: text is encoded verbatim, as in Llama-3 / Qwen2.
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        # All 256 byte symbols, so any UTF-8 input is encodable even if unseen in training.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Fixed order of training texts (sorted names) for reproducibility.
    texts = [corpus[name] for name in sorted(corpus)]
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer vocab {tok.get_vocab_size()} != {VOCAB_SIZE}")
    if tok.token_to_id(EOS_TOKEN) != 0:
        raise SystemExit("expected <|endoftext|> to be id 0")
    return tok


def tokenizer_json(tok: Tokenizer) -> str:
    # The library's own layout (vocab listed in id order, merges in rank order).
    return tok.to_str(pretty=True) + "\n"


def tokenizer_config_json() -> str:
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "unk_token": None,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": COMMON_CONFIG["max_position_embeddings"],
    }
    return json.dumps(cfg, indent=2) + "\n"


def check_saved_tokenizer(model_dir: Path, sample: str, ids: list[int]) -> None:
    """The files on disk, loaded both ways a user would, give the same ids."""
    if Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(sample, add_special_tokens=False).ids != ids:
        raise SystemExit(f"{model_dir}: tokenizer.json does not reproduce the ids")
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if hf_tok(sample, add_special_tokens=True)["input_ids"] != ids:
        raise SystemExit(f"{model_dir}: AutoTokenizer adds tokens or encodes differently")


# =========================================================================================
# Step 3: models
# =========================================================================================
def build_config(spec: Fixture):
    cfg = dict(COMMON_CONFIG)
    cfg.update(spec.config)
    # Eager attention: the reference must be the plain softmax(QK^T/sqrt(d))V path.
    return transformers.AutoConfig.for_model(spec.model_type, attn_implementation="eager", **cfg)


def is_rms_norm(module: torch.nn.Module) -> bool:
    # LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Qwen3RMSNorm (incl. q_norm/k_norm).
    return type(module).__name__.endswith("RMSNorm")


@torch.no_grad()
def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter, in module order, from one seeded generator.

    Linear/Embedding weights ~ N(0, LINEAR_STD), biases ~ N(0, BIAS_STD),
    RMSNorm weights ~ 1 + N(0, NORM_STD).  A parameter shared by two modules (tied
    lm_head / embed_tokens) is drawn once.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seen: set[int] = set()
    unhandled = {id(p): n for n, p in model.named_parameters()}

    def fill(p: torch.Tensor, mean: float, std: float) -> None:
        if id(p) in seen:
            return
        seen.add(id(p))
        unhandled.pop(id(p), None)
        sample = torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean
        p.copy_(sample.to(p.dtype))

    for _, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            fill(module.weight, 0.0, LINEAR_STD)
            if getattr(module, "bias", None) is not None:
                fill(module.bias, 0.0, BIAS_STD)
        elif is_rms_norm(module):
            fill(module.weight, 1.0, NORM_STD)
    if unhandled:
        raise SystemExit(f"parameters not initialised: {sorted(unhandled.values())}")


def save_model(spec: Fixture, out_dir: Path) -> None:
    config = build_config(spec)
    torch.manual_seed(spec.seed)  # the library's own init is overwritten anyway; belt and braces
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    init_weights(model, spec.seed)
    # Cast after init so every dtype starts from the same float32 draws, rounded once.
    model = model.to(spec.dtype)
    model.config.dtype = spec.dtype
    kwargs = {}
    if spec.max_shard_size is not None:
        kwargs["max_shard_size"] = spec.max_shard_size
    model.save_pretrained(out_dir, **kwargs)
    if spec.legacy_rope_scaling is not None:
        path = out_dir / "config.json"
        cfg = json.loads(path.read_text())
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope["rope_theta"]
        cfg["rope_scaling"] = spec.legacy_rope_scaling
        # transformers' own layout (`to_json_string`): indent 2, sorted keys, final newline.
        path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8", newline="\n")


def load_model(model_dir: Path) -> torch.nn.Module:
    """Reload from disk exactly as a user would, upcasting the stored weights to float32."""
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.float32,
        attn_implementation="eager",
        output_loading_info=True,
        local_files_only=True,
    )
    # A missing key would be silently random-initialised; an unexpected one ignored.
    problems = {k: v for k, v in info.items() if v}
    if problems:
        raise SystemExit(f"{model_dir}: loading problems {problems}")
    model.eval()
    return model


# =========================================================================================
# Step 4: reference logits and sanity statistics
# =========================================================================================
@torch.no_grad()
def forward(model, tokens: torch.Tensor, output_attentions: bool = False):
    return model(input_ids=tokens[None, :], use_cache=False, output_attentions=output_attentions)


@torch.no_grad()
def logits_stats(model, tokens: torch.Tensor) -> dict:
    """Numbers that show the fixture is sensitive to the things we want to test."""
    out = forward(model, tokens, output_attentions=True)
    logits = out.logits[0].float()
    n = tokens.shape[0]

    # Attention: compare each row's max weight with the uniform 1/(i+1) it would have
    # with causal masking and no signal.  Skip row 0 (always exactly 1).
    rows = torch.arange(1, n)
    uniform = 1.0 / (rows + 1).float()
    max_ratio, entropy_ratio = [], []
    for att in out.attentions:  # [1, heads, n, n]
        a = att[0, :, 1:, :]
        max_ratio.append((a.max(dim=-1).values / uniform).mean().item())
        ent = -(a.clamp_min(1e-30).log() * a).sum(-1)
        entropy_ratio.append((ent / (rows + 1).float().log()).mean().item())

    stats = {
        "logits_min": logits.min().item(),
        "logits_max": logits.max().item(),
        "per_pos_std_mean": logits.std(dim=-1).mean().item(),
        "per_pos_std_min": logits.std(dim=-1).min().item(),
        "per_pos_range_mean": (logits.max(-1).values - logits.min(-1).values).mean().item(),
        "attn_max_over_uniform": [round(x, 2) for x in max_ratio],
        "attn_entropy_over_uniform": [round(x, 3) for x in entropy_ratio],
    }
    stats.update(perturbation_deltas(model, tokens, logits))
    return stats


@torch.no_grad()
def perturbation_deltas(model, tokens: torch.Tensor, ref: torch.Tensor) -> dict:
    """Max |delta logits| caused by mistakes an implementation could make.

    Each perturbation is applied in place and undone afterwards.
    """
    deltas = {}
    inner = model.model
    attn_mods = [layer.self_attn for layer in inner.layers]

    def delta() -> float:
        return (forward(model, tokens).logits[0].float() - ref).abs().max().item()

    def with_swapped(tensors_and_values, name):
        saved = [t.clone() for t, _ in tensors_and_values]
        for t, v in tensors_and_values:
            t.copy_(v)
        deltas[name] = delta()
        for (t, _), s in zip(tensors_and_values, saved):
            t.copy_(s)

    # Norm weights ignored (treated as all ones).
    w = inner.norm.weight
    with_swapped([(w, torch.ones_like(w))], "d_final_norm_ones")
    w = inner.layers[0].input_layernorm.weight
    with_swapped([(w, torch.ones_like(w))], "d_layer0_input_norm_ones")
    if hasattr(attn_mods[0], "q_norm"):
        ws = [m.q_norm.weight for m in attn_mods] + [m.k_norm.weight for m in attn_mods]
        with_swapped([(w, torch.ones_like(w)) for w in ws], "d_qk_norm_ones")

    # RMSNorm epsilon ten times too large (shows how visible a wrong eps is; expected small).
    norms = [m for m in model.modules() if is_rms_norm(m)]
    for m in norms:
        m.variance_epsilon *= 10
    deltas["d_eps_x10"] = delta()
    for m in norms:
        m.variance_epsilon /= 10

    # Last layer dropped.
    layers = inner.layers
    inner.layers = layers[:-1]
    deltas["d_drop_last_layer"] = delta()
    inner.layers = layers

    # RoPE ignored: all positions 0 (rotation by angle 0).  Note that shifting all
    # positions by a constant is *not* detectable: RoPE scores depend on i - j only.
    out = model(input_ids=tokens[None, :], position_ids=torch.zeros_like(tokens)[None, :], use_cache=False)
    deltas["d_no_rope"] = (out.logits[0].float() - ref).abs().max().item()

    # RoPE scaling ignored: plain inv_freq from rope_theta and cos/sin unscaled.
    inv = inner.rotary_emb.inv_freq
    if model.config.rope_parameters.get("rope_type", "default") != "default":
        theta, dim = model.config.rope_parameters["rope_theta"], inv.shape[0] * 2
        rot = inner.rotary_emb
        saved_scaling = rot.attention_scaling
        rot.attention_scaling = 1.0
        plain_inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        with_swapped([(inv, plain_inv)], "d_rope_scaling_ignored")
        rot.attention_scaling = saved_scaling

    # Wrong rope_theta: 10000 where the config says otherwise, else 1e6.
    theta = model.config.rope_parameters["rope_theta"]
    wrong = 1.0e6 if theta == 10000.0 else 10000.0
    dim = inv.shape[0] * 2
    with_swapped([(inv, 1.0 / (wrong ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)))], "d_wrong_rope_theta")

    # Interleaved (GPT-J style, pairs (2i, 2i+1)) instead of half-split (pairs (i, i+d/2))
    # rotation.  Running the half-split RoPE on q/k rows permuted by [0,2,4,..,1,3,5,..]
    # within each head is exactly the interleaved RoPE on the original weights (q.k is
    # invariant under the same permutation of q and k; q_norm/k_norm are elementwise).
    head_dim = dim
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    swaps = []
    for m in attn_mods:
        for proj in (m.q_proj, m.k_proj):
            rows = torch.arange(proj.weight.shape[0]).view(-1, head_dim)[:, perm].reshape(-1)
            swaps.append((proj.weight, proj.weight[rows]))
            if proj.bias is not None:
                swaps.append((proj.bias, proj.bias[rows]))
        for norm_name in ("q_norm", "k_norm"):
            if hasattr(m, norm_name):
                w = getattr(m, norm_name).weight
                swaps.append((w, w[perm]))
    with_swapped(swaps, "d_rope_interleaved")
    return deltas


def save_safetensors_sorted(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file whose header JSON has sorted keys.

    safetensors.torch.save_file serialises __metadata__ from a Rust HashMap, so with more
    than one metadata key the byte order of the header changes from run to run.  The
    format is simple enough to write directly: u64 LE header length, JSON header (padded
    with spaces to a multiple of 8), then the raw little-endian tensor bytes.
    """
    assert sys.byteorder == "little"
    dtypes = {torch.int64: "I64", torch.float32: "F32"}
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        data = t.numpy().tobytes()  # native order; checked to be little-endian below
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))

    # Read it back with the official library to prove the file is valid.
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)


def write_reference(model_dir: Path, tokens: torch.Tensor) -> dict:
    model = load_model(model_dir)
    logits = forward(model, tokens).logits[0].float().contiguous()
    assert logits.shape == (N_REF_TOKENS, VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    metadata = {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "tokenizers_version": tokenizers.__version__,
        "safetensors_version": safetensors.__version__,
        "description": (
            f"tokens: first {N_REF_TOKENS} ids of tests/fixtures/text/sample.txt "
            "(no special tokens); logits: transformers eager forward of this directory "
            "reloaded with dtype=float32"
        ),
    }
    save_safetensors_sorted(model_dir / "reference.safetensors", {"tokens": tokens.clone(), "logits": logits}, metadata)
    return logits_stats(model, tokens)


# =========================================================================================
# Step 5: independent check of the reference
# =========================================================================================
@torch.no_grad()
def plain_forward(model_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """The forward pass written out from the files alone, in float64.

    It reads config.json and the safetensors files directly (no transformers), so it
    checks that the reference means what the README says: pre-norm RMSNorm blocks,
    half-split RoPE, GQA, optional q/k/v biases and q_norm/k_norm, SiLU-gated MLP,
    tied or untied lm_head.  It is the spec a reimplementation has to match.
    """
    cfg = json.loads((model_dir / "config.json").read_text())
    w: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                w[k] = st.get_tensor(k).to(torch.float64)
    n_heads, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
    eps = cfg["rms_norm_eps"]
    # transformers: a legacy rope_scaling wins over rope_parameters; theta from the dict,
    # else top level.
    rope = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))

    def rms(x, weight):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    n = tokens.shape[0]
    pos = torch.arange(n, dtype=torch.float64)
    inv, scale = plain_inv_freq(rope_type, rope, theta, hd, cfg)
    ang = torch.cat([pos[:, None] * inv[None, :]] * 2, dim=-1)  # [n, hd]
    cos, sin = ang.cos() * scale, ang.sin() * scale

    def rotate(x):  # x: [heads, n, hd]; pairs (i, i + hd/2)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    x = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = lin(h, p + "self_attn.q_proj").view(n, n_heads, hd).transpose(0, 1)
        k = lin(h, p + "self_attn.k_proj").view(n, n_kv, hd).transpose(0, 1)
        v = lin(h, p + "self_attn.v_proj").view(n, n_kv, hd).transpose(0, 1)
        if p + "self_attn.q_norm.weight" in w:  # qwen3: per-head RMSNorm before RoPE
            q = rms(q, w[p + "self_attn.q_norm.weight"])
            k = rms(k, w[p + "self_attn.k_norm.weight"])
        q, k = rotate(q), rotate(k)
        rep = n_heads // n_kv  # query head j uses kv head j // rep
        k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / hd**0.5 + mask, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(n, n_heads * hd)
        x = x + lin(o, p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        x = x + lin(torch.nn.functional.silu(g) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"])
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    assert ("lm_head.weight" not in w) == cfg["tie_word_embeddings"]
    return x @ head.T


def plain_inv_freq(rope_type: str, rope: dict, theta: float, hd: int, cfg: dict) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies and cos/sin scale in float64, written from the papers'
    formulas as transformers' modeling_rope_utils states them (not by calling it)."""
    f = torch.arange(0, hd, 2, dtype=torch.float64)
    inv = 1.0 / theta ** (f / hd)
    if rope_type == "default":
        return inv, 1.0
    if rope_type == "linear":
        return inv / rope["factor"], 1.0
    orig = rope.get("original_max_position_embeddings", cfg["max_position_embeddings"])
    if rope_type == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - low) / (high - low)
        out = torch.where(wavelen > orig / low, inv / factor, inv)
        medium = (wavelen >= orig / high) & (wavelen <= orig / low)
        return torch.where(medium, (1 - smooth) * inv / factor + smooth * inv, out), 1.0
    if rope_type == "yarn":
        factor = rope["factor"]
        scale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
        dim_of = lambda rot: hd * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(theta))
        low = max(math.floor(dim_of(rope.get("beta_fast") or 32)), 0)
        high = min(math.ceil(dim_of(rope.get("beta_slow") or 1)), hd - 1)
        ramp = ((torch.arange(hd // 2, dtype=torch.float64) - low) / (high - low if high != low else 0.001)).clamp(0, 1)
        return inv / factor * ramp + inv * (1 - ramp), scale
    raise SystemExit(f"plain_forward: rope_type {rope_type} not written out")


def check_reference(model_dir: Path) -> float:
    with safe_open(str(model_dir / "reference.safetensors"), framework="pt") as f:
        tokens, logits = f.get_tensor("tokens"), f.get_tensor("logits")
    diff = (plain_forward(model_dir, tokens) - logits.double()).abs().max().item()
    # float32 (transformers) vs float64 (here): expect ~1e-5 on logits of size ~5.
    if diff > 1e-3:
        raise SystemExit(f"{model_dir}: reference disagrees with the plain forward by {diff}")
    return diff


# =========================================================================================
# Step 6: RoPE inverse frequencies of every rope_type, straight from transformers
# =========================================================================================
ROPE_DIR_NAME = "rope"  # tests/fixtures/rope/inv_freq.json; `--only rope` writes just it
_ROPE_BASE = dict(model_type="llama", hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
_LLAMA31 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
_SHORT = [1.0, 1.0, 1.1, 1.3, 1.7, 2.5, 4.0, 6.0]
_LONG = [1.0, 1.2, 1.9, 3.1, 5.3, 9.0, 15.0, 24.0]
# (name, config.json overrides, evaluated length).  head_dim is 16 unless overridden.
ROPE_CASES = [
    ("default", dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0)), 64),
    ("linear-legacy-type", dict(rope_theta=1e6, rope_scaling=dict(type="linear", factor=4.0)), 64),
    ("dynamic-within-max", dict(max_position_embeddings=64,
                                rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)), 48),
    ("dynamic-beyond-max", dict(max_position_embeddings=32,
                                rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0)), 64),
    ("llama3-llama3.1", dict(head_dim=128, hidden_size=512, max_position_embeddings=131072, rope_theta=500000.0,
                             rope_scaling=_LLAMA31), 64),
    ("llama3-short-context", dict(rope_theta=500000.0, rope_scaling=dict(_LLAMA31, original_max_position_embeddings=16)),
     64),
    ("llama3-top-level-original", dict(rope_theta=500000.0, original_max_position_embeddings=16,
                                       rope_scaling=_LLAMA31), 64),
    ("yarn-qwen3", dict(model_type="qwen3", head_dim=128, max_position_embeddings=131072,
                        rope_parameters=dict(rope_type="yarn", rope_theta=1e6, factor=4.0,
                                             original_max_position_embeddings=32768)), 64),
    ("yarn-legacy-short", dict(model_type="qwen2", head_dim=32, max_position_embeddings=128, rope_theta=10000.0,
                               rope_scaling=dict(type="yarn", factor=4.0, original_max_position_embeddings=32)), 64),
    ("yarn-no-truncate-betas", dict(head_dim=32, max_position_embeddings=128, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32, truncate=False,
        beta_fast=16, beta_slow=2)), 64),
    ("yarn-mscale", dict(head_dim=32, max_position_embeddings=1280, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=40.0, original_max_position_embeddings=32, mscale=0.707,
        mscale_all_dim=1.0)), 64),
    ("yarn-attention-factor-null-factor", dict(head_dim=32, max_position_embeddings=256, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=None, original_max_position_embeddings=32,
        attention_factor=1.25)), 64),
    ("longrope-short", dict(max_position_embeddings=128, rope_parameters=dict(
        rope_type="longrope", rope_theta=10000.0, short_factor=_SHORT, long_factor=_LONG,
        original_max_position_embeddings=32)), 32),
    ("longrope-long", dict(max_position_embeddings=128, rope_parameters=dict(
        rope_type="longrope", rope_theta=10000.0, short_factor=_SHORT, long_factor=_LONG,
        original_max_position_embeddings=32)), 64),
    ("rope-scaling-wins", dict(rope_theta=1000.0, rope_parameters=dict(rope_type="default", rope_theta=500.0),
                               rope_scaling=dict(rope_type="linear", factor=2.0)), 64),
]


@torch.no_grad()
def write_rope_reference(out_dir: Path) -> None:
    """For each case: the config.json it is read from, the evaluated length, and what
    transformers' rotary embedding uses for a fresh model's one forward pass over
    positions 0..len-1 (`inv_freq` after the dynamic/longrope update, float32 values as
    exact decimals, and `attention_scaling`)."""
    cases = []
    for name, overrides, seq_len in ROPE_CASES:
        cfg = dict(_ROPE_BASE)
        cfg.update(overrides)
        with tempfile.TemporaryDirectory() as tmp:
            # Read from a config.json, as a checkpoint's is (legacy keys included).
            (Path(tmp) / "config.json").write_text(json.dumps(cfg))
            config = transformers.AutoConfig.from_pretrained(tmp, local_files_only=True)
        rot = AutoModelForCausalLM.from_config(config).model.rotary_emb
        x = torch.zeros(1, seq_len, 1, dtype=torch.float32)
        rot(x, torch.arange(seq_len)[None, :])
        cases.append({
            "name": name,
            "config": cfg,
            "seq_len": seq_len,
            "inv_freq": [float(v) for v in rot.inv_freq.tolist()],
            "attention_scaling": float(rot.attention_scaling),
        })
        print(f"  {name}: attention_scaling {float(rot.attention_scaling):.6g}, "
              f"inv_freq[:3] {[f'{v:.6g}' for v in rot.inv_freq.tolist()[:3]]}")
    (out_dir / "inv_freq.json").write_text(
        json.dumps({"transformers_version": transformers.__version__, "torch_version": torch.__version__,
                    "cases": cases}, indent=1, sort_keys=True) + "\n", encoding="utf-8", newline="\n")


# =========================================================================================
# Driver
# =========================================================================================
def reset_dir(path: Path) -> None:
    # Only ever removes one of our own fixture directories.
    assert path.parent == FIXTURES, path
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def prune(model_dir: Path) -> None:
    for p in sorted(model_dir.iterdir()):
        keep = p.name in KEEP_FILES or (p.name.startswith("model-") and p.name.endswith(".safetensors"))
        if not keep:
            print(f"  removing {p.name}")
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def write_random_model(out: Path, layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int,
                       vocab: int, tokenizer_from: Path | None) -> None:
    """A random llama of any shape (bfloat16, untied lm_head), for memory and speed
    benchmarks of `ucw compress` at sizes that are never committed (e.g. a 1B-class shape:
    --layers 16 --hidden 2048 --intermediate 8192 --heads 32 --kv-heads 8 --vocab 49152).
    One layer at a time is generated and written to its own shard, so this needs little
    memory; weights ~ N(0, 0.02), norms ~ 1 + N(0, 0.1)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    head_dim = hidden // heads
    g = torch.Generator().manual_seed(1234)

    def rnd(*shape: int, one: bool = False) -> torch.Tensor:
        t = torch.randn(*shape, generator=g, dtype=torch.float32)
        return (1.0 + 0.1 * t if one else 0.02 * t).to(torch.bfloat16)

    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "vocab_size": vocab, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 0, "eos_token_id": 0,
    }
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    weight_map: dict[str, str] = {}
    shards = layers + 1
    total = 0

    def shard(i: int, tensors: dict[str, torch.Tensor]) -> None:
        nonlocal total
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        for k, v in tensors.items():
            weight_map[k] = name
            total += v.numel() * 2

    shard(0, {"model.embed_tokens.weight": rnd(vocab, hidden), "model.norm.weight": rnd(hidden, one=True),
              "lm_head.weight": rnd(vocab, hidden)})
    q, kv = heads * head_dim, kv_heads * head_dim
    for l in range(layers):
        p = f"model.layers.{l}"
        shard(l + 1, {
            f"{p}.self_attn.q_proj.weight": rnd(q, hidden), f"{p}.self_attn.k_proj.weight": rnd(kv, hidden),
            f"{p}.self_attn.v_proj.weight": rnd(kv, hidden), f"{p}.self_attn.o_proj.weight": rnd(hidden, q),
            f"{p}.mlp.gate_proj.weight": rnd(intermediate, hidden), f"{p}.mlp.up_proj.weight": rnd(intermediate, hidden),
            f"{p}.mlp.down_proj.weight": rnd(hidden, intermediate),
            f"{p}.input_layernorm.weight": rnd(hidden, one=True),
            f"{p}.post_attention_layernorm.weight": rnd(hidden, one=True),
        })
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    if tokenizer_from is not None:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            if (tokenizer_from / f).exists():
                shutil.copy(tokenizer_from / f, out / f)
    print(f"{out}: {layers} layers, {total / 1e9:.2f} GB of bf16 weights")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, help=f"path to an already downloaded {SDIST_NAME}")
    ap.add_argument("--random-model", type=Path, metavar="DIR",
                    help="write only a random llama of the shape below to DIR (benchmarks; never committed)")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--tokenizer-from", type=Path, help="copy tokenizer.json (+ config) from this model directory")
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help="regenerate only these model fixtures (text/ and the others are left as they are)")
    args = ap.parse_args()
    if args.random_model is not None:
        write_random_model(args.random_model, args.layers, args.hidden, args.intermediate, args.heads,
                           args.kv_heads, args.vocab, args.tokenizer_from)
        return

    torch.set_num_threads(1)  # identical float reductions run to run
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}")

    corpus = fetch_corpus(args.sdist)

    only = set(args.only.split(",")) if args.only else None
    known = {spec.name for spec in FIXTURE_SPECS} | {ROPE_DIR_NAME}
    if only is not None and not only <= known:
        raise SystemExit(f"--only: unknown fixtures {sorted(only - known)}")
    text_dir = FIXTURES / "text"
    sample = make_sample_text(corpus["alice29.txt"])
    if only is None:
        reset_dir(text_dir)
        (text_dir / "sample.txt").write_text(sample, encoding="utf-8", newline="\n")
    elif (text_dir / "sample.txt").read_text(encoding="utf-8") != sample:
        raise SystemExit("--only: tests/fixtures/text/sample.txt is not what this script writes")
    print(f"sample.txt: {len(sample.encode())} bytes")

    tok = train_tokenizer(corpus)
    tok_json = tokenizer_json(tok)
    tok_cfg = tokenizer_config_json()
    ids = tok.encode(sample, add_special_tokens=False).ids
    if tok.decode(ids) != sample:
        raise SystemExit("tokenizer does not round-trip sample.txt")
    # All ids of the sample, for tests of tokenizer integration on the whole text.
    tokens_json = json.dumps({"tokenizer": "tokenizer.json of any model fixture (all identical)",
                              "add_special_tokens": False, "ids": ids}) + "\n"
    if only is None:
        (text_dir / "sample.tokens.json").write_text(tokens_json, encoding="utf-8", newline="\n")
    elif (text_dir / "sample.tokens.json").read_text(encoding="utf-8") != tokens_json:
        raise SystemExit("--only: tests/fixtures/text/sample.tokens.json is not what this script writes")
    tokens = torch.tensor(ids[:N_REF_TOKENS], dtype=torch.int64)
    print(f"sample.txt: {len(ids)} tokens; first {N_REF_TOKENS}: {tokens.tolist()}")
    print(f"  = {tok.decode(tokens.tolist())!r}")

    written = [text_dir] if only is None else []
    for spec in FIXTURE_SPECS:
        if only is not None and spec.name not in only:
            continue
        out_dir = FIXTURES / spec.name
        written.append(out_dir)
        print(f"== {spec.name} ({spec.model_type}, {spec.dtype})")
        reset_dir(out_dir)
        save_model(spec, out_dir)
        (out_dir / "tokenizer.json").write_text(tok_json, encoding="utf-8", newline="\n")
        (out_dir / "tokenizer_config.json").write_text(tok_cfg, encoding="utf-8", newline="\n")
        prune(out_dir)
        check_saved_tokenizer(out_dir, sample, ids)
        stats = write_reference(out_dir, tokens)
        stats["max_abs_diff_vs_plain_f64_forward"] = check_reference(out_dir)
        for k, v in stats.items():
            print(f"  {k}: {v if isinstance(v, list) else f'{v:.4g}'}")
        # The point of the large init: the fixture must be sensitive.  Fail loudly if not.
        if stats["per_pos_std_min"] <= 1.0:
            raise SystemExit(f"{spec.name}: logits too flat (per-position std {stats['per_pos_std_min']:.3f})")
        if max(stats["attn_entropy_over_uniform"]) > 0.95:
            raise SystemExit(f"{spec.name}: attention too close to uniform")

    if only is None or ROPE_DIR_NAME in only:
        print(f"== {ROPE_DIR_NAME}: inv_freq and attention_scaling of every rope_type")
        rope_dir = FIXTURES / ROPE_DIR_NAME
        written.append(rope_dir)
        reset_dir(rope_dir)
        write_rope_reference(rope_dir)

    print("== files (sha256, bytes, path)")
    total = 0
    for d in written:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                total += len(data)
                print(f"{sha256_bytes(data)}  {len(data):>8}  {p.relative_to(REPO_ROOT)}")
    print(f"total {total} bytes")

if __name__ == "__main__":
    main()
