use std::path::Path;

use super::{Common, print_json};
use crate::error::Result;
use crate::model::hash_model_dir;

pub fn run(dir: &Path, common: &Common) -> Result<()> {
    let d = hash_model_dir(dir)?;
    if common.json {
        print_json(&serde_json::json!({
            "model_dir": dir.display().to_string(),
            "tensors": d.tensors,
            "weights_digest": d.weights_digest,
        }));
        return Ok(());
    }
    let mut sorted: Vec<_> = d.tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for t in sorted {
        println!("{}  {:<5} {:<16} {}", t.sha256, t.dtype, format!("{:?}", t.shape), t.name);
    }
    println!("weights digest: {}", d.weights_digest);
    Ok(())
}
