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
        // Scaled RoPE types are read now (see `rope_scaling_forms`); what remains refused is
        // there too. Missing keys of a supported type name the key.
        (
            format!("{{{base},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0}}}}"),
            "missing rope_scaling.low_freq_factor",
        ),
        (
            format!(
                "{{{base},\"rope_parameters\":{{\"rope_theta\":1e4,\"rope_type\":\"yarn\",\"original_max_position_embeddings\":64}}}}"
            ),
            "missing rope_parameters.factor",
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
/// RoPE as real checkpoints configure it (issue 14): transformers' `rope_parameters` and
/// legacy `rope_scaling` + `rope_theta`, with the defaults and precedences of transformers
/// 5.24's `standardize_rope_params` (checked against it when the fixtures were made: see
/// tests/fixtures/rope/inv_freq.json); everything else refused with the field named, exit 2.
#[test]
fn rope_scaling_forms() {
    use ucw::model::config::RopeScaling;
    let base = r#""model_type":"llama","hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":512,"max_position_embeddings":256"#;
    let parse =
        |extra: &str| ModelConfig::parse(&format!("{{{base},{extra}}}")).unwrap_or_else(|e| panic!("{extra}: {e}"));
    // Llama 3.1's hub form: legacy rope_scaling + top-level rope_theta.
    let c = parse(
        r#""rope_theta":500000.0,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}"#,
    );
    assert_eq!(c.rope_theta, 5e5);
    assert_eq!(
        c.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0
        }
    );
    // A top-level original_max_position_embeddings overrides the dict's; missing, it is
    // max_position_embeddings.
    let c = parse(
        r#""original_max_position_embeddings":16,"rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"}"#,
    );
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 16.0, .. }));
    let c = parse(r#""rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"rope_type":"llama3"}"#);
    assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { original_max_position_embeddings: 256.0, .. }));
    assert_eq!(c.rope_theta, 10000.0);
    // Legacy "type" key; a non-empty rope_scaling wins over rope_parameters (theta then
    // from the top level).
    let c = parse(
        r#""rope_theta":1000.0,"rope_parameters":{"rope_type":"default","rope_theta":500.0},"rope_scaling":{"type":"linear","factor":2.0}"#,
    );
    assert_eq!((c.rope_theta, c.rope_scaling), (1000.0, RopeScaling::Linear { factor: 2.0 }));
    // ... but a null or empty one does not.
    let c = parse(r#""rope_scaling":{},"rope_parameters":{"rope_type":"linear","rope_theta":500.0,"factor":3}"#);
    assert_eq!((c.rope_theta, c.rope_scaling), (500.0, RopeScaling::Linear { factor: 3.0 }));
    let c = parse(r#""rope_parameters":{"rope_type":"dynamic","rope_theta":1e4,"factor":2.0}"#);
    assert_eq!(c.rope_scaling, RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 256.0 });
    // yarn: transformers' defaults (beta 32/1, truncate, attention factor 0.1 ln(factor) + 1).
    let c = parse(
        r#""rope_parameters":{"rope_type":"yarn","rope_theta":1e6,"factor":4.0,"original_max_position_embeddings":64}"#,
    );
    let RopeScaling::Yarn {
        factor,
        original_max_position_embeddings,
        beta_fast,
        beta_slow,
        truncate,
        attention_factor,
    } = c.rope_scaling
    else {
        panic!("{:?}", c.rope_scaling)
    };
    assert_eq!(
        (factor, original_max_position_embeddings, beta_fast, beta_slow, truncate),
        (4.0, 64.0, 32.0, 1.0, true)
    );
    assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    // yarn factor null: max_position_embeddings / original.
    let c = parse(
        r#""rope_parameters":{"rope_type":"yarn","factor":null,"original_max_position_embeddings":64,"truncate":false}"#,
    );
    assert!(matches!(c.rope_scaling, RopeScaling::Yarn { factor: 4.0, truncate: false, .. }), "{:?}", c.rope_scaling);
    let c = parse(
        r#""rope_parameters":{"rope_type":"longrope","short_factor":[1,1,1,1,1,1,1,1],"long_factor":[2,2,2,2,2,2,2,2],"original_max_position_embeddings":64}"#,
    );
    let RopeScaling::LongRope { original_max_position_embeddings: 64, attention_factor, .. } = c.rope_scaling else {
        panic!("{:?}", c.rope_scaling)
    };
    assert!((attention_factor - (1.0 + 4f64.ln() / 64f64.ln()).sqrt()).abs() < 1e-15);
    // partial_rotary_factor: transformers' default RoPE for these models ignores it.
    let c = parse(r#""partial_rotary_factor":0.5,"rope_parameters":{"rope_type":"default","rope_theta":1e4}"#);
    assert_eq!(c.rope_scaling, RopeScaling::Default);
    let c = parse(r#""rope_parameters":{"rope_type":"linear","factor":2.0,"partial_rotary_factor":1.0}"#);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });

    let no_max = base.replace(r#","max_position_embeddings":256"#, "");
    let bad = [
        (
            format!("{{{base},\"rope_parameters\":{{\"rope_type\":\"proportional\",\"rope_theta\":1e4}}}}"),
            "unsupported rope_parameters.rope_type \"proportional\" (supported: default, linear, dynamic, llama3, yarn, longrope)",
        ),
        (
            format!("{{{base},\"rope_scaling\":{{\"type\":\"su\",\"factor\":2.0}}}}"),
            "unsupported rope_scaling.type \"su\"",
        ),
        // transformers builds cos/sin for int(head_dim · factor) channels and llama's
        // `q * cos` fails on them; refused, naming the field.
        (
            format!(
                "{{{base},\"rope_parameters\":{{\"rope_type\":\"linear\",\"factor\":2.0,\"partial_rotary_factor\":0.5}}}}"
            ),
            "unsupported rope_parameters.partial_rotary_factor 0.5 with rope_parameters.rope_type \"linear\"",
        ),
        (
            format!(
                "{{{base},\"partial_rotary_factor\":0.75,\"rope_scaling\":{{\"rope_type\":\"yarn\",\"factor\":2.0}}}}"
            ),
            "unsupported partial_rotary_factor 0.75 with rope_scaling.rope_type \"yarn\"",
        ),
        (
            format!(
                "{{{base},\"rope_parameters\":{{\"full_attention\":{{\"rope_type\":\"default\"}},\"sliding_attention\":{{\"rope_type\":\"default\"}}}}}}"
            ),
            "unsupported rope_parameters.full_attention: RoPE parameters per layer type are not implemented",
        ),
        (
            format!(
                "{{{base},\"rope_parameters\":{{\"rope_type\":\"yarn\",\"factor\":4.0,\"attention_factor\":100.0}}}}"
            ),
            "unsupported rope_parameters.attention_factor 100",
        ),
        (
            format!(
                "{{{base},\"rope_parameters\":{{\"rope_type\":\"longrope\",\"short_factor\":[1,1],\"long_factor\":[1,1],\"original_max_position_embeddings\":64}}}}"
            ),
            "rope_parameters.short_factor must be a list of 8 positive numbers",
        ),
        (
            format!("{{{no_max},\"rope_parameters\":{{\"rope_type\":\"dynamic\",\"factor\":2.0}}}}"),
            "missing \"max_position_embeddings\" (rope_parameters.rope_type \"dynamic\" scales from it)",
        ),
        (
            format!(
                "{{{no_max},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0}}}}"
            ),
            "missing \"max_position_embeddings\" (rope_scaling.rope_type \"llama3\" uses it as original_max_position_embeddings)",
        ),
        (
            format!("{{{base},\"rope_scaling\":{{\"rope_type\":\"linear\",\"factor\":\"2\"}}}}"),
            "rope_scaling.factor \"2\" is not a number",
        ),
        (
            format!("{{{base},\"rope_scaling\":{{\"rope_type\":\"linear\",\"factor\":0}}}}"),
            "rope_scaling.factor 0 must be positive",
        ),
        (
            format!(
                "{{{base},\"rope_scaling\":{{\"rope_type\":\"llama3\",\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192.5}}}}"
            ),
            "rope_scaling.original_max_position_embeddings 8192.5 is not a positive integer",
        ),
        (format!("{{{base},\"rope_scaling\":\"llama3\"}}"), "rope_scaling \"llama3\" is not an object"),
        (
            format!("{{{base},\"rope_parameters\":{{\"rope_type\":null}}}}"),
            "rope_parameters.rope_type null is not a string",
        ),
    ];
    for (text, want) in bad {
        let err = ModelConfig::parse(&text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{text}\n→ {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert_eq!(err.exit_code(), 2);
    }
}

/// The scaled-RoPE fixtures open with their scaling read (values from their config.json).
#[test]
fn scaled_rope_fixtures_open() {
    use ucw::model::config::RopeScaling;
    let m = Model::open(&fixture("llama-rope-llama3-bf16")).unwrap();
    assert_eq!(m.config.rope_theta, 5e5);
    assert_eq!(
        m.config.rope_scaling,
        RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16.0
        }
    );
    let m = Model::open(&fixture("qwen3-rope-yarn-bf16")).unwrap();
    assert_eq!((m.config.rope_theta, m.config.head_dim, m.config.max_position_embeddings), (1e4, 32, 128));
    assert!(
        matches!(
            m.config.rope_scaling,
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_position_embeddings: 32.0,
                beta_fast: 32.0,
                beta_slow: 1.0,
                truncate: true,
                ..
            }
        ),
        "{:?}",
        m.config.rope_scaling
    );
    let m = Model::open(&fixture("qwen2-rope-linear-bf16")).unwrap();
    assert_eq!((m.config.rope_theta, m.config.rope_scaling.clone()), (1e6, RopeScaling::Linear { factor: 4.0 }));
    assert!(m.config.qkv_bias);
    for f in ["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"] {
        assert_eq!(Model::open(&fixture(f)).unwrap().config.rope_scaling, RopeScaling::Default, "{f}");
    }
}

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
