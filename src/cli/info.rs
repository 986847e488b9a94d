use std::path::Path;

use super::{Common, print_json};
use crate::error::Result;
use crate::model::Model;

pub fn run(path: &Path, common: &Common) -> Result<()> {
    let m = Model::open(path)?;
    let c = &m.config;
    let tensors: Vec<serde_json::Value> = m
        .tensors
        .iter()
        .map(|t| {
            let v = m.tensor(&t.name);
            serde_json::json!({
                "name": t.name,
                "dtype": v.dtype_name(),
                "shape": t.shape,
                "role": format!("{:?}", t.role).to_lowercase(),
                "bytes": v.bytes.len(),
                "file": v.file.file_name().map(|f| f.to_string_lossy().to_string()),
            })
        })
        .collect();
    let total: usize = m.tensors.iter().map(|t| m.tensor(&t.name).bytes.len()).sum();
    let summary = serde_json::json!({
        "kind": "model",
        "model_type": c.arch.model_type(),
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "files": m.checkpoint.files.iter().map(|f| f.path.file_name().map(|n| n.to_string_lossy().to_string())).collect::<Vec<_>>(),
        "tensor_bytes": total,
        "tensors": tensors,
    });
    if common.json {
        print_json(&summary);
        return Ok(());
    }
    println!(
        "{}: {} layers, hidden {}, intermediate {}, {} heads / {} kv heads, head_dim {}, vocab {}",
        c.arch.model_type(),
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.vocab_size
    );
    println!(
        "rope_theta {}, rms_norm_eps {}, tied embeddings: {}",
        c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings
    );
    println!("{} tensors, {} bytes in {} file(s)", m.tensors.len(), total, m.checkpoint.files.len());
    for t in &m.tensors {
        let v = m.tensor(&t.name);
        println!("  {:<5} {:<14} {}", v.dtype_name(), format!("{:?}", t.shape), t.name);
    }
    Ok(())
}
