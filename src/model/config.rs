//! `config.json` → a typed description of a supported decoder architecture.

use serde::Deserialize;
use std::path::Path;

use crate::error::{Error, Result};

/// Architectures the forward pass and codec understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    /// q/k/v projections carry biases.
    Qwen2,
    /// q/k RMSNorm per head before RoPE, explicit head_dim.
    Qwen3,
}

pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    /// RoPE frequency scaling (`rope_parameters` / `rope_scaling`); tables from it in
    /// `backend/cpu/rope.rs`.
    pub rope_scaling: RopeScaling,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (qwen2 always; llama/mistral when `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o_proj (llama `attention_bias` only).
    pub o_bias: bool,
    /// Biases on gate/up/down (llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k (qwen3).
    pub qk_norm: bool,
    /// Attention window for sliding-window attention (mistral `sliding_window`, qwen
    /// `sliding_window` when `use_sliding_window`); None = full causal attention.
    pub sliding_window: Option<usize>,
}

/// The subset of config.json keys we read. Unknown keys are ignored: HF configs carry many
/// that do not change the computation (ids, dtype hints, architectures...).
#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    /// Top-level forms that transformers folds into the RoPE parameters.
    partial_rotary_factor: Option<serde_json::Value>,
    original_max_position_embeddings: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5 writes `{"rope_theta": .., "rope_type": ..}` here instead.
    rope_parameters: Option<serde_json::Value>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
}

impl ModelConfig {
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, "cannot read", e))?;
        Self::parse(&text).map_err(|e| Error::bad_input(format!("{}: {}", path.display(), e.message)))
    }

    pub fn parse(text: &str) -> Result<ModelConfig> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| bad_input!("invalid JSON: {e}"))?;
        let model_type = raw.model_type.as_deref().unwrap_or("(none)");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(bad_input!(
                    "unsupported model_type \"{other}\" (supported: {})",
                    SUPPORTED_MODEL_TYPES.join(", ")
                ));
            }
        };
        fn need(v: Option<usize>, key: &str) -> Result<usize> {
            match v {
                Some(0) => Err(bad_input!("\"{key}\" must be positive")),
                Some(x) => Ok(x),
                None => Err(bad_input!("missing \"{key}\"")),
            }
        }
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = match raw.num_key_value_heads {
            Some(kv) => need(Some(kv), "num_key_value_heads")?,
            None => num_attention_heads,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(bad_input!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            ));
        }
        let head_dim = match raw.head_dim {
            Some(h) => need(Some(h), "head_dim")?,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(bad_input!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads} and no head_dim is given"
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(bad_input!("head_dim {head_dim} must be even for RoPE"));
        }
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "silu"
        {
            return Err(bad_input!("unsupported hidden_act \"{act}\" (supported: silu)"));
        }
        let (rope_theta, rope_scaling) = parse_rope(&raw, arch, head_dim)?;
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(bad_input!("rms_norm_eps {rms_norm_eps} must be positive"));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let intermediate_size = need(raw.intermediate_size, "intermediate_size")?;
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        // Sizes the kernels accept (issue 14 item 2): a model beyond one gets a one-line
        // refusal naming the field here, before any weight is read.
        let k_max = crate::fixed::tensor::MATMUL_MAX_COLS;
        for (field, v, max, what) in [
            ("hidden_size", hidden_size, k_max, "matmul inner dimension and RMSNorm width"),
            ("intermediate_size", intermediate_size, k_max, "matmul inner dimension of down_proj"),
            ("num_attention_heads * head_dim", num_attention_heads * head_dim, k_max, "o_proj's inner dimension"),
            ("head_dim", head_dim, 256, "attention head size"),
            ("vocab_size", vocab_size, 1 << 20, "NLL vocabulary"),
        ] {
            if v > max {
                return Err(bad_input!("{field} {v} exceeds the supported {max} ({what})"));
            }
        }
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            rope_theta,
            rope_scaling,
            rms_norm_eps,
            // transformers' default for all four architectures is untied.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || (matches!(arch, Arch::Llama | Arch::Qwen3) && attention_bias),
            o_bias: matches!(arch, Arch::Llama | Arch::Qwen3) && attention_bias,
            mlp_bias: arch == Arch::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            sliding_window: match arch {
                Arch::Mistral => raw.sliding_window,
                Arch::Qwen2 | Arch::Qwen3 if raw.use_sliding_window.unwrap_or(false) => raw.sliding_window,
                _ => None,
            },
        })
    }
}

/// RoPE frequency scaling, as transformers' `modeling_rope_utils.py` (5.24) computes it for
/// llama, mistral, qwen2 and qwen3. Everything the config leaves to a default is resolved
/// here, so the table builder (`backend::cpu::rope::inv_freq`) only does arithmetic.
///
/// `Dynamic` and `LongRope` depend on the sequence length. transformers keeps that length
/// as mutable state (the longest `max(position_ids) + 1` seen so far, reset below the
/// original length); here the tables are a function of the evaluated window's length
/// only: the length a fresh transformers model sees in one forward pass over that window.
/// Every window of an evaluation has the same length, and chunking a window (attention or
/// matmul chunks) never changes it, so results do not depend on chunking or on what was
/// evaluated before.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// inv_freq_f = θ^(−2f/d).
    Default,
    /// inv_freq_f / factor.
    Linear { factor: f64 },
    /// NTK-aware: θ' = θ · (factor·L/max − (factor − 1))^(d/(d−2)), L = max(window, max).
    Dynamic { factor: f64, max_position_embeddings: f64 },
    /// Llama 3.1: low frequencies / factor, high ones kept, a smooth ramp between.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// YaRN: ramp between interpolated and extrapolated frequencies; cos and sin × attention_factor.
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
        attention_factor: f64,
    },
    /// LongRoPE: per-pair factors, long ones when the window exceeds the original length;
    /// cos and sin × attention_factor.
    LongRope {
        short_factor: Vec<f64>,
        long_factor: Vec<f64>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

impl RopeScaling {
    pub fn rope_type(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::LongRope { .. } => "longrope",
        }
    }
}

pub const SUPPORTED_ROPE_TYPES: &[&str] = &["default", "linear", "dynamic", "llama3", "yarn", "longrope"];

/// Largest cos/sin scale (yarn, longrope attention factor) the Q20 tables take: entries stay
/// at most 2^24 and rotated values (|m| ≤ 2^17) at most 2^42 (exact in the kernels' 64-bit sums).
pub const MAX_ROPE_ATTENTION_FACTOR: f64 = 16.0;

/// rope_theta and the scaling, following transformers' `convert_rope_params_to_dict` and
/// `standardize_rope_params`: a non-empty legacy `rope_scaling` wins over `rope_parameters`;
/// the dict's `rope_theta` over the top-level one (default 10000); the dict's
/// `partial_rotary_factor` over the top-level one; a top-level
/// `original_max_position_embeddings` over the dict's (re-standardised when the rotary
/// embedding is built), which defaults to `max_position_embeddings`.
fn parse_rope(raw: &RawConfig, arch: Arch, head_dim: usize) -> Result<(f64, RopeScaling)> {
    use serde_json::Value;
    // Python truthiness of the dict: null and {} count as absent.
    fn truthy(v: Option<&serde_json::Value>) -> Option<&serde_json::Value> {
        v.filter(|v| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())))
    }
    let (key, dict) = match (truthy(raw.rope_scaling.as_ref()), truthy(raw.rope_parameters.as_ref())) {
        (Some(v), _) => ("rope_scaling", Some(v)),
        (None, Some(v)) => ("rope_parameters", Some(v)),
        (None, None) => ("rope_parameters", None),
    };
    let empty = serde_json::Map::new();
    let d = match dict {
        None => &empty,
        Some(v) => v.as_object().ok_or_else(|| bad_input!("{key} {v} is not an object"))?,
    };
    if let Some((k, _)) = d.iter().find(|(_, v)| v.is_object()) {
        return Err(bad_input!("unsupported {key}.{k}: RoPE parameters per layer type are not implemented"));
    }
    let num = |name: &str| -> Result<Option<f64>> {
        match d.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(bad_input!("{key}.{name} {v} is not a number")),
            },
        }
    };
    let positive = |name: &str, x: f64| -> Result<f64> {
        if x > 0.0 { Ok(x) } else { Err(bad_input!("{key}.{name} {x} must be positive")) }
    };
    let ty = match (d.get("rope_type"), d.get("type")) {
        (Some(Value::String(t)), _) => t.as_str(),
        (Some(v), _) => return Err(bad_input!("{key}.rope_type {v} is not a string")),
        (None, Some(Value::String(t))) => t.as_str(),
        (None, Some(v)) => return Err(bad_input!("{key}.type {v} is not a string")),
        (None, None) => "default",
    };
    let field = if d.contains_key("rope_type") { "rope_type" } else { "type" };
    if !SUPPORTED_ROPE_TYPES.contains(&ty) {
        return Err(bad_input!("unsupported {key}.{field} \"{ty}\" (supported: {})", SUPPORTED_ROPE_TYPES.join(", ")));
    }
    let rope_theta = match d.get("rope_theta") {
        None => raw.rope_theta.unwrap_or(10000.0),
        Some(t) => t.as_f64().ok_or_else(|| bad_input!("{key}.rope_theta {t} is not a number"))?,
    };
    if !(rope_theta.is_finite() && rope_theta > 0.0) {
        return Err(bad_input!("rope_theta {rope_theta} must be positive"));
    }
    if ty == "default" {
        // transformers' default RoPE for these four models rotates the whole head and
        // reads no other key (partial_rotary_factor included).
        return Ok((rope_theta, RopeScaling::Default));
    }
    // Every other type builds inv_freq for int(head_dim · partial_rotary_factor) channels,
    // but llama/mistral/qwen2/qwen3 apply cos/sin to whole heads (`q * cos`): anything but
    // the whole head fails there, so it is refused here.
    let (prf_field, prf) = match (d.get("partial_rotary_factor"), raw.partial_rotary_factor.as_ref()) {
        (Some(v), _) => (format!("{key}.partial_rotary_factor"), Some(v)),
        (None, Some(v)) => ("partial_rotary_factor".to_string(), Some(v)),
        (None, None) => (String::new(), None),
    };
    if let Some(v) = prf.filter(|v| !v.is_null()) {
        let p = v.as_f64().filter(|p| p.is_finite()).ok_or_else(|| bad_input!("{prf_field} {v} is not a number"))?;
        let dim = (head_dim as f64 * p).trunc();
        if dim != head_dim as f64 {
            return Err(bad_input!(
                "unsupported {prf_field} {p} with {key}.rope_type \"{ty}\": partial rotary embedding is not implemented \
                 ({} rotates whole heads of {head_dim}; this would give cos/sin for {dim} channels)",
                arch.model_type()
            ));
        }
    }
    let max_pos = |why: &str| -> Result<f64> {
        match raw.max_position_embeddings {
            Some(m) if m > 0 => Ok(m as f64),
            _ => Err(bad_input!("missing \"max_position_embeddings\" ({key}.rope_type \"{ty}\" {why})")),
        }
    };
    // A top-level original_max_position_embeddings (Phi-3 style) overrides the dict's.
    let original_max = || -> Result<usize> {
        let (name, v) = match (&raw.original_max_position_embeddings, d.get("original_max_position_embeddings")) {
            (Some(v), _) if !v.is_null() => ("original_max_position_embeddings".to_string(), v),
            (_, Some(v)) if !v.is_null() => (format!("{key}.original_max_position_embeddings"), v),
            _ => return Ok(max_pos("uses it as original_max_position_embeddings")? as usize),
        };
        match v.as_u64() {
            Some(m) if m > 0 => Ok(m as usize),
            _ => Err(bad_input!("{name} {v} is not a positive integer")),
        }
    };
    let factor = || -> Result<f64> {
        positive("factor", num("factor")?.ok_or_else(|| bad_input!("missing {key}.factor (rope_type \"{ty}\")"))?)
    };
    let scaling = match ty {
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => {
            if head_dim <= 2 {
                return Err(bad_input!("{key}.rope_type \"dynamic\" needs head_dim > 2 (it raises to d/(d−2))"));
            }
            RopeScaling::Dynamic { factor: factor()?, max_position_embeddings: max_pos("scales from it")? }
        }
        "llama3" => {
            let need = |name: &str| -> Result<f64> {
                positive(name, num(name)?.ok_or_else(|| bad_input!("missing {key}.{name} (rope_type \"llama3\")"))?)
            };
            let (low, high) = (need("low_freq_factor")?, need("high_freq_factor")?);
            if low == high {
                return Err(bad_input!(
                    "{key}.high_freq_factor {high} equals low_freq_factor (the smoothing divides by their difference)"
                ));
            }
            RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original_max()? as f64,
            }
        }
        "yarn" => {
            let orig = original_max()? as f64;
            if !d.contains_key("factor") {
                return Err(bad_input!("missing {key}.factor (rope_type \"yarn\")"));
            }
            // factor null: max_position_embeddings / original (DeepSeek-V3 style).
            let factor = match num("factor")? {
                Some(f) => positive("factor", f)?,
                None => max_pos("derives factor from it")? / orig,
            };
            let get_mscale = |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * libm::log(scale) + 1.0 };
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None => match (num("mscale")?, num("mscale_all_dim")?) {
                    (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => get_mscale(factor, m) / get_mscale(factor, ma),
                    _ => get_mscale(factor, 1.0),
                },
            };
            // `get("beta_fast") or 32`: null and 0 take the default too.
            let beta_fast = num("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0);
            let beta_slow = num("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0);
            // `rope_parameters.get("truncate", True)`: an explicit null is falsy.
            let truncate = match d.get("truncate") {
                None => true,
                Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(bad_input!("{key}.truncate {v} is not a boolean")),
            };
            if rope_theta == 1.0 {
                return Err(bad_input!(
                    "rope_theta 1 with {key}.rope_type \"yarn\" (its correction range divides by ln θ)"
                ));
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            }
        }
        "longrope" => {
            let orig = original_max()?;
            let list = |name: &str| -> Result<Vec<f64>> {
                let v = d.get(name).ok_or_else(|| bad_input!("missing {key}.{name} (rope_type \"longrope\")"))?;
                let xs: Option<Vec<f64>> = v
                    .as_array()
                    .and_then(|a| a.iter().map(|x| x.as_f64().filter(|x| x.is_finite() && *x > 0.0)).collect());
                match xs {
                    Some(xs) if xs.len() == head_dim / 2 => Ok(xs),
                    _ => Err(bad_input!(
                        "{key}.{name} must be a list of {} positive numbers (head_dim / 2)",
                        head_dim / 2
                    )),
                }
            };
            let (short_factor, long_factor) = (list("short_factor")?, list("long_factor")?);
            let factor = match num("factor")? {
                Some(f) => f,
                None => max_pos("derives factor from it")? / orig as f64,
            };
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + libm::log(factor) / libm::log(orig as f64)).sqrt(),
            };
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                original_max_position_embeddings: orig,
                attention_factor,
            }
        }
        _ => unreachable!("checked against SUPPORTED_ROPE_TYPES"),
    };
    if let RopeScaling::Yarn { attention_factor: a, .. } | RopeScaling::LongRope { attention_factor: a, .. } = &scaling
        && !(a.is_finite() && *a > 0.0 && *a <= MAX_ROPE_ATTENTION_FACTOR)
    {
        return Err(bad_input!(
            "unsupported {key}.attention_factor {a} (cos/sin scale must be in (0, {MAX_ROPE_ATTENTION_FACTOR}])"
        ));
    }
    Ok((rope_theta, scaling))
}
