use std::path::Path;

use super::{Common, print_json};
use crate::error::Result;
use crate::model::Model;
use crate::pack::{Kind, Pack};

pub fn run(path: &Path, common: &Common) -> Result<()> {
    if path.join(crate::pack::MANIFEST_FILE).exists() {
        return pack_info(path, common);
    }
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

fn pack_info(dir: &Path, common: &Common) -> Result<()> {
    let pack = Pack::open(dir)?;
    super::check_pack_files(&pack)?;
    let m = &pack.manifest;
    let digest = pack.digest();
    if common.json {
        let mut v = serde_json::to_value(m).expect("manifest serialises");
        v["kind"] = "pack".into();
        v["pack_digest"] = digest.into();
        v["layers"] = m.files.iter().filter(|f| f.name.starts_with("layer-")).count().into();
        v["reader_version"] = env!("CARGO_PKG_VERSION").into();
        print_json(&v);
        return Ok(());
    }
    let quantized = m.tensors.iter().filter(|t| t.kind == Kind::Quantized).count();
    let layers = m.files.iter().filter(|f| f.name.starts_with("layer-")).count();
    println!(
        "pack {} ({} format {}, written by {} codec v{}; read by ucw {})",
        dir.display(),
        m.format,
        m.format_version,
        m.tool.name,
        m.tool.codec_version,
        env!("CARGO_PKG_VERSION"),
    );
    println!("pack digest:     sha256:{digest}");
    println!("weights digest:  sha256:{}", m.weights_digest);
    println!("architecture:    {}, {} decoder layers", m.source.model_type, layers);
    println!("source weights:  sha256:{}", m.source.weights_digest);
    for f in &m.source.files {
        println!("                 {} {} bytes sha256:{}", f.name, f.size, f.sha256);
    }
    let p = &m.codec.parameters;
    println!(
        "codec:           {} v{}: {} bits, groups of {}, rank {}, output dtype {}, {}",
        m.codec.name,
        m.codec.version,
        p.bits,
        p.group_size,
        p.rank,
        p.out_dtype,
        if m.codec.calibration.is_some() { "calibrated" } else { "uncalibrated" }
    );
    if let Some(c) = &m.codec.calibration {
        // Provenance as recorded (canonical JSON, keys sorted): enough to redo the run.
        let fields: Vec<String> = c
            .as_object()
            .map(|o| {
                o.iter().map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string))).collect()
            })
            .unwrap_or_default();
        println!("calibration:     {}", fields.join(", "));
    }
    if p.bit_alloc.is_some() {
        let mut widths = std::collections::BTreeMap::new();
        for b in m.tensors.iter().filter_map(|t| t.bits) {
            *widths.entry(b).or_insert(0) += 1;
        }
        let w: Vec<String> = widths.iter().map(|(b, n)| format!("{n} × {b} bits")).collect();
        println!("code widths:     {} (allocated per linear)", w.join(", "));
    }
    println!(
        "bits per weight: {:.4} over the quantized linears ({} bits / {} weights), {:.4} over the pack",
        m.bits_per_weight.linears.value(),
        m.bits_per_weight.linears.bits,
        m.bits_per_weight.linears.weights,
        m.bits_per_weight.pack.value()
    );
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    println!("files:           {} ({} layer files), {} bytes", m.files.len(), layers, total);
    println!("tensors:         {} ({} quantized, {} raw)", m.tensors.len(), quantized, m.tensors.len() - quantized);
    for t in &m.tensors {
        let kind = match t.kind {
            Kind::Quantized => format!("q{} r{}", t.bits.unwrap_or(0), t.rank.unwrap_or(0)),
            Kind::Raw => "raw".into(),
        };
        println!("  {:<7} {:<5} {:<14} {:<24} {}", kind, t.dtype, format!("{:?}", t.shape), t.file, t.name);
    }
    Ok(())
}
