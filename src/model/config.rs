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
        // RoPE: transformers ≥ 5 nests theta and type in `rope_parameters`; older configs
        // have a top-level `rope_theta` and an optional `rope_scaling`. Scaled variants
        // (llama3, yarn, ...) change the tables: refuse rather than run a different model.
        let params = raw.rope_parameters.as_ref().filter(|v| !v.is_null());
        if let Some(p) = params
            && !p.is_object()
        {
            return Err(bad_input!("rope_parameters {p} is not an object"));
        }
        for (key, v) in
            [("rope_parameters", params), ("rope_scaling", raw.rope_scaling.as_ref().filter(|v| !v.is_null()))]
        {
            if let Some(v) = v {
                let ty = v.get("rope_type").or_else(|| v.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
                if ty != "default" {
                    return Err(bad_input!(
                        "unsupported {key} {v} (only plain RoPE, rope_type \"default\", is implemented)"
                    ));
                }
            }
        }
        let nested_theta = match params.and_then(|p| p.get("rope_theta")) {
            None => None,
            Some(t) => Some(t.as_f64().ok_or_else(|| bad_input!("rope_parameters.rope_theta {t} is not a number"))?),
        };
        // transformers' default for all four architectures.
        let rope_theta = nested_theta.or(raw.rope_theta).unwrap_or(10000.0);
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-6);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(bad_input!("rope_theta {rope_theta} must be positive"));
        }
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(bad_input!("rms_norm_eps {rms_norm_eps} must be positive"));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            rope_theta,
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
