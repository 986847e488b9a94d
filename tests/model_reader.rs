//! Model reader: typed configs for every fixture, sharded and single-file checkpoints,
//! and a clear error (exit 2) for every kind of bad model directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};
use ucw::model::{Arch, Checkpoint, Model, ModelConfig};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn fixtures_open_with_typed_configs() {
    struct Want {
        dir: &'static str,
        arch: Arch,
        dtype: Dtype,
        head_dim: usize,
        rope_theta: f64,
        eps: f64,
        tied: bool,
        qkv_bias: bool,
        qk_norm: bool,
        files: usize,
    }
    let wants = [
        Want {
            dir: "llama-bf16",
            arch: Arch::Llama,
            dtype: Dtype::BF16,
            head_dim: 16,
            rope_theta: 1e4,
            eps: 1e-6,
            tied: true,
            qkv_bias: false,
            qk_norm: false,
            files: 1,
        },
        Want {
            dir: "mistral-f16",
            arch: Arch::Mistral,
            dtype: Dtype::F16,
            head_dim: 16,
            rope_theta: 1e5,
            eps: 1e-5,
            tied: false,
            qkv_bias: false,
            qk_norm: false,
            files: 1,
        },
        Want {
            dir: "qwen2-f32",
            arch: Arch::Qwen2,
            dtype: Dtype::F32,
            head_dim: 16,
            rope_theta: 1e6,
            eps: 1e-6,
            tied: true,
            qkv_bias: true,
            qk_norm: false,
            files: 1,
        },
        Want {
            dir: "qwen3-bf16-sharded",
            arch: Arch::Qwen3,
            dtype: Dtype::BF16,
            head_dim: 32,
            rope_theta: 1e6,
            eps: 1e-6,
            tied: false,
            qkv_bias: false,
            qk_norm: true,
            files: 3,
        },
    ];
    for w in wants {
        let m = Model::open(&fixture(w.dir)).unwrap_or_else(|e| panic!("{}: {e}", w.dir));
        let c = &m.config;
        assert_eq!(c.arch, w.arch, "{}", w.dir);
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (64, 160, 2), "{}", w.dir);
        assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 2, w.head_dim), "{}", w.dir);
        assert_eq!((c.vocab_size, c.max_position_embeddings), (512, 256), "{}", w.dir);
        assert_eq!((c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings), (w.rope_theta, w.eps, w.tied), "{}", w.dir);
        assert_eq!(
            (c.qkv_bias, c.o_bias, c.qk_norm, c.sliding_window),
            (w.qkv_bias, false, w.qk_norm, None),
            "{}",
            w.dir
        );
        assert_eq!(m.checkpoint.files.len(), w.files, "{}", w.dir);
        // 3 scaffold-or-2 + per layer: 2 norms + 7 linears (+3 biases) (+2 qk norms).
        let per_layer = 9 + if w.qkv_bias { 3 } else { 0 } + if w.qk_norm { 2 } else { 0 };
        let scaffold = if w.tied { 2 } else { 3 };
        assert_eq!(m.tensors.len(), scaffold + 2 * per_layer, "{}", w.dir);
        assert_eq!(m.checkpoint.len(), m.tensors.len(), "{}", w.dir);
        for t in &m.tensors {
            let v = m.tensor(&t.name);
            assert_eq!(v.dtype, w.dtype, "{} {}", w.dir, t.name);
            assert_eq!(v.bytes.len(), v.numel() * w.dtype.bitsize() / 8, "{} {}", w.dir, t.name);
        }
        let q = m.tensor("model.layers.1.self_attn.q_proj.weight");
        assert_eq!(q.shape, [4 * w.head_dim, 64]);
    }
}

#[test]
fn config_forms_old_and_new() {
    let base = r#""model_type":"llama","hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":512"#;
    // Legacy top-level rope_theta; defaults for kv heads, head_dim, tie, eps.
    let c = ModelConfig::parse(&format!("{{{base},\"rope_theta\":500000.0}}")).unwrap();
    assert_eq!(
        (c.rope_theta, c.num_key_value_heads, c.head_dim, c.tie_word_embeddings, c.rms_norm_eps),
        (5e5, 4, 16, false, 1e-6)
    );
    // transformers ≥ 5: nested rope_parameters wins.
    let c = ModelConfig::parse(&format!(
        "{{{base},\"rope_parameters\":{{\"rope_theta\":250.0,\"rope_type\":\"default\"}}}}"
    ))
    .unwrap();
    assert_eq!(c.rope_theta, 250.0);
    // Without either, transformers' default 10000.
    assert_eq!(ModelConfig::parse(&format!("{{{base}}}")).unwrap().rope_theta, 10000.0);
    // llama attention_bias puts biases on q/k/v and o.
    let c = ModelConfig::parse(&format!("{{{base},\"attention_bias\":true,\"mlp_bias\":true}}")).unwrap();
    assert!(c.qkv_bias && c.o_bias && c.mlp_bias);
    let bad = [
        (
            format!("{{{base},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0}}}}"),
            "unsupported rope_scaling",
        ),
        (
            format!("{{{base},\"rope_parameters\":{{\"rope_theta\":1e4,\"rope_type\":\"yarn\"}}}}"),
            "unsupported rope_parameters",
        ),
        (format!("{{{base},\"num_key_value_heads\":3}}"), "not a multiple of num_key_value_heads 3"),
        (format!("{{{base},\"hidden_act\":\"gelu\"}}"), "unsupported hidden_act \"gelu\""),
        (format!("{{{}}}", base.replace("\"hidden_size\":64,", "")), "missing \"hidden_size\""),
        ("{not json".to_string(), "invalid JSON"),
        (
            format!("{{{}}}", base.replace("llama", "gpt2")),
            "unsupported model_type \"gpt2\" (supported: llama, mistral, qwen2, qwen3)",
        ),
    ];
    for (text, want) in bad {
        let err = ModelConfig::parse(&text).unwrap_err();
        assert!(err.to_string().contains(want), "{text}\n→ {err}");
        assert_eq!(err.exit_code(), 2);
    }
}

/// Copy a fixture into a temp dir to damage it.
pub fn scratch_copy(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), t.path().join(e.file_name())).unwrap();
    }
    t
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.data[..]).into()
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Rewrite `model.safetensors` of a single-file model through `edit`.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Raw>)) {
    let path = dir.join("model.safetensors");
    let mut tensors: HashMap<String, Raw> = {
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(n, v)| (n, Raw { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
            .collect()
    };
    edit(&mut tensors);
    let out = safetensors::serialize(tensors.iter().map(|(n, r)| (n.clone(), r)), None).unwrap();
    std::fs::write(&path, out).unwrap();
}

fn open_err(dir: &Path) -> String {
    match Model::open(dir) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn missing_misshaped_extra_and_unsupported_tensors() {
    let t = scratch_copy("llama-bf16");
    rewrite(t.path(), |m| {
        m.remove("model.layers.1.mlp.down_proj.weight");
    });
    let e = open_err(t.path());
    assert!(
        e.contains("missing tensor \"model.layers.1.mlp.down_proj.weight\" (expected shape [64, 160] for llama)"),
        "{e}"
    );

    let t = scratch_copy("llama-bf16");
    rewrite(t.path(), |m| {
        let r = m.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        r.shape = vec![64, 32]; // transposed
    });
    let e = open_err(t.path());
    assert!(
        e.contains("tensor \"model.layers.0.self_attn.k_proj.weight\" has shape [64, 32], expected [32, 64]"),
        "{e}"
    );

    let t = scratch_copy("llama-bf16");
    rewrite(t.path(), |m| {
        let r = m.get_mut("model.norm.weight").unwrap();
        r.dtype = Dtype::I16;
    });
    let e = open_err(t.path());
    assert!(e.contains("tensor \"model.norm.weight\" has unsupported dtype I16 (supported: BF16, F16, F32)"), "{e}");

    let t = scratch_copy("llama-bf16");
    rewrite(t.path(), |m| {
        m.insert(
            "model.layers.0.mlp.extra.weight".into(),
            Raw { dtype: Dtype::BF16, shape: vec![2], data: vec![0; 4] },
        );
    });
    let e = open_err(t.path());
    assert!(e.contains("unexpected tensor \"model.layers.0.mlp.extra.weight\" for model_type llama"), "{e}");

    // Old checkpoints' rotary buffers are derived data and accepted.
    let t = scratch_copy("llama-bf16");
    rewrite(t.path(), |m| {
        m.insert(
            "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
            Raw { dtype: Dtype::F32, shape: vec![8], data: vec![0; 32] },
        );
    });
    Model::open(t.path()).unwrap();
}

#[test]
fn damaged_files_are_errors_naming_the_file() {
    // Truncated: the data section ends before the header says.
    let t = scratch_copy("mistral-f16");
    let p = t.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("model.safetensors: not a valid safetensors file"), "{e}");

    // Header length beyond the file.
    let mut forged = bytes.clone();
    forged[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    std::fs::write(&p, &forged).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("model.safetensors: not a valid safetensors file"), "{e}");

    // Tensor offsets beyond the data section.
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let grown = header.replacen("\"data_offsets\":[0,", "\"data_offsets\":[0,9", 1);
    assert_ne!(grown, header);
    let mut forged = (grown.len() as u64).to_le_bytes().to_vec();
    forged.extend(grown.as_bytes());
    forged.extend(&bytes[8 + n..]);
    std::fs::write(&p, &forged).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("not a valid safetensors file"), "{e}");

    // Empty file, and garbage.
    for junk in [&b""[..], &b"\x05\0\0\0\0\0\0\0{\"a\":"[..], &[0xffu8; 64][..]] {
        std::fs::write(&p, junk).unwrap();
        let e = open_err(t.path());
        assert!(e.contains("model.safetensors: not a valid safetensors file"), "{e}");
    }

    // No weights at all; not a directory.
    std::fs::remove_file(&p).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("no model.safetensors or model.safetensors.index.json"), "{e}");
    let e = open_err(&t.path().join("config.json"));
    assert!(e.contains("not a directory"), "{e}");

    // Missing and broken config.json.
    let t = scratch_copy("mistral-f16");
    std::fs::write(t.path().join("config.json"), "{\"model_type\": \"mistral\"").unwrap();
    let e = open_err(t.path());
    assert!(e.contains("config.json: invalid JSON"), "{e}");
    std::fs::remove_file(t.path().join("config.json")).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("config.json: cannot read"), "{e}");
}

#[test]
fn shard_index_problems() {
    let idx = "model.safetensors.index.json";
    let edit_index = |f: &dyn Fn(&mut serde_json::Value)| {
        let t = scratch_copy("qwen3-bf16-sharded");
        let p = t.path().join(idx);
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        t
    };
    // A shard the index names but which is missing.
    let t = scratch_copy("qwen3-bf16-sharded");
    std::fs::remove_file(t.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = open_err(t.path());
    assert!(e.contains("model-00002-of-00003.safetensors: cannot open"), "{e}");
    // The index places a tensor in the wrong shard.
    let t = edit_index(&|v| v["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors".into());
    let e = open_err(t.path());
    assert!(
        e.contains("places tensor \"model.norm.weight\" in model-00001-of-00003.safetensors, which does not hold it"),
        "{e}"
    );
    // A tensor stored in a shard but missing from the index.
    let t = edit_index(&|v| {
        v["weight_map"].as_object_mut().unwrap().remove("lm_head.weight");
    });
    let e = open_err(t.path());
    assert!(e.contains("tensor \"lm_head.weight\" is not listed in model.safetensors.index.json"), "{e}");
    // Shard names that leave the directory.
    for evil in ["../model-00001-of-00003.safetensors", "/etc/passwd", "sub/dir.safetensors"] {
        let t = edit_index(&|v| v["weight_map"]["model.norm.weight"] = evil.into());
        let e = open_err(t.path());
        assert!(e.contains("is not a plain file name"), "{e}");
    }
    // Invalid index JSON.
    let t = scratch_copy("qwen3-bf16-sharded");
    std::fs::write(t.path().join(idx), "{\"weight_map\": 3}").unwrap();
    let e = open_err(t.path());
    assert!(e.contains("invalid shard index"), "{e}");
}

#[test]
fn tensor_views_are_zero_copy_slices_of_the_file() {
    // The view's bytes are the exact file range (checked by reading the file independently).
    let dir = fixture("qwen3-bf16-sharded");
    let ck = Checkpoint::open(&dir).unwrap();
    for name in ["model.embed_tokens.weight", "model.layers.1.self_attn.k_norm.weight", "lm_head.weight"] {
        let v = ck.get(name).unwrap();
        let file = std::fs::read(v.file).unwrap();
        let off = v.file_offset as usize;
        assert_eq!(&file[off..off + v.bytes.len()], v.bytes, "{name}");
    }
}
