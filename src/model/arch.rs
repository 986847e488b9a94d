//! The tensors each supported architecture must have, with their shapes.

use super::config::ModelConfig;

/// What a tensor is for; decides whether the codec quantizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Embedding,
    /// A decoder linear `[out, in]` (q/k/v/o, gate/up/down): the codec's input.
    Linear,
    LmHead,
    Norm,
    Bias,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
    /// Decoder layer index, None for the scaffold (embeddings, final norm, lm_head).
    pub layer: Option<usize>,
}

/// Every tensor the checkpoint must hold, in a fixed order (scaffold first, then per layer).
pub fn expected_tensors(c: &ModelConfig) -> Vec<ExpectedTensor> {
    let h = c.hidden_size;
    let q = c.num_attention_heads * c.head_dim;
    let kv = c.num_key_value_heads * c.head_dim;
    let ff = c.intermediate_size;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, role: Role, layer: Option<usize>| {
        out.push(ExpectedTensor { name, shape, role, layer })
    };
    push("model.embed_tokens.weight".into(), vec![c.vocab_size, h], Role::Embedding, None);
    push("model.norm.weight".into(), vec![h], Role::Norm, None);
    if !c.tie_word_embeddings {
        push("lm_head.weight".into(), vec![c.vocab_size, h], Role::LmHead, None);
    }
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let at = Some(l);
        push(format!("{p}.input_layernorm.weight"), vec![h], Role::Norm, at);
        push(format!("{p}.post_attention_layernorm.weight"), vec![h], Role::Norm, at);
        for (proj, out_dim, in_dim) in [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q)] {
            push(format!("{p}.self_attn.{proj}.weight"), vec![out_dim, in_dim], Role::Linear, at);
            let biased = if proj == "o_proj" { c.o_bias } else { c.qkv_bias };
            if biased {
                push(format!("{p}.self_attn.{proj}.bias"), vec![out_dim], Role::Bias, at);
            }
        }
        if c.qk_norm {
            push(format!("{p}.self_attn.q_norm.weight"), vec![c.head_dim], Role::Norm, at);
            push(format!("{p}.self_attn.k_norm.weight"), vec![c.head_dim], Role::Norm, at);
        }
        for (proj, out_dim, in_dim) in [("gate_proj", ff, h), ("up_proj", ff, h), ("down_proj", h, ff)] {
            push(format!("{p}.mlp.{proj}.weight"), vec![out_dim, in_dim], Role::Linear, at);
            if c.mlp_bias {
                push(format!("{p}.mlp.{proj}.bias"), vec![out_dim], Role::Bias, at);
            }
        }
    }
    out
}

/// Derived buffers some older checkpoints store; recomputed from the config, never used.
pub fn is_ignorable(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
}
