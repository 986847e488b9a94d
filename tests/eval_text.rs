//! Evaluation text: the Rust tokenizer gives the ids the fixture generator got from
//! Python `tokenizers` and transformers' AutoTokenizer, and bad inputs are clear errors.

mod common;

use std::path::{Path, PathBuf};

use ucw::forward::text::{Windows, choose_windows, read_token_file, tokenize_file};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn tokenizer_matches_the_python_ids_for_every_fixture() {
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("text/sample.tokens.json")).unwrap()).unwrap();
    let want: Vec<u32> = want["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(want.len(), 5682);
    for f in ["llama-bf16", "mistral-f16", "qwen2-f32", "qwen3-bf16-sharded"] {
        let ids = tokenize_file(&fixtures().join(f), &fixtures().join("text/sample.txt")).unwrap();
        assert_eq!(ids, want, "{f}");
        // The reference logits' token sequence is the first 64 of them.
        let bytes = std::fs::read(fixtures().join(f).join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tokens: Vec<u32> = st
            .tensor("tokens")
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        assert_eq!(tokens, want[..64], "{f}");
    }
}

#[test]
fn token_files_and_windows() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("ids.bin");
    std::fs::write(&p, [1u32, 2, 3, 70000].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    assert_eq!(read_token_file(&p).unwrap(), vec![1, 2, 3, 70000]);
    std::fs::write(&p, [0u8; 7]).unwrap();
    assert!(read_token_file(&p).unwrap_err().to_string().contains("not a whole number"));

    let ids: Vec<u32> = (0..1000).map(|i| i % 512).collect();
    assert_eq!(
        choose_windows(&ids, 512, 256, 3, 256, false).unwrap(),
        Windows { seq_len: 256, count: 3, truncated: false }
    );
    assert_eq!(
        choose_windows(&ids, 512, 256, 30, 256, false).unwrap(),
        Windows { seq_len: 256, count: 3, truncated: true }
    );
    let err = |r: ucw::Result<Windows>| r.unwrap_err().to_string();
    assert!(err(choose_windows(&ids, 512, 2000, 1, 4096, false)).contains("fewer than one window"));
    assert!(
        err(choose_windows(&ids, 512, 512, 1, 256, false)).contains("exceeds the model's max_position_embeddings 256")
    );
    assert!(choose_windows(&ids, 512, 512, 1, 256, true).is_ok());
    assert!(
        err(choose_windows(&ids, 500, 256, 1, 256, false))
            .contains("token 500 has id 500, outside the vocabulary of 500")
    );
    assert!(err(choose_windows(&ids, 512, 1, 1, 256, false)).contains("at least 2 tokens"));
    assert!(err(choose_windows(&[], 512, 256, 1, 256, false)).contains("fewer than one window"));
}

#[test]
fn missing_tokenizer_suggests_token_files() {
    let t = tempfile::tempdir().unwrap();
    let e = tokenize_file(t.path(), &fixtures().join("text/sample.txt")).unwrap_err();
    assert!(e.to_string().contains("no tokenizer.json (pass pre-tokenized ids with --tokens FILE"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

/// With the real data present (`UCW_DATA`, from ../shared/scripts/get-real-data.sh): the
/// eval text has the 123,587 SmolLM2 tokens that script's README states.
#[test]
fn real_eval_text_token_count() {
    let Some(data) = common::opt_in("real_eval_text_token_count", "UCW_DATA", "the folder get-real-data.sh fills")
    else {
        return;
    };
    let data = Path::new(&data);
    let ids = tokenize_file(&data.join("smollm2-135m"), &data.join("text/eval.txt")).unwrap();
    assert_eq!(ids.len(), 123_587);
}

/// Embedding rows come out as the residual stream's format, identical on every device, and
/// exact for bf16 weights (8 significant bits fit easily in 20-bit mantissas within 2^11
/// of each row's largest value).
#[test]
fn embedding_lookup_is_exact_and_device_independent() {
    let model = ucw::model::Model::open(&fixtures().join("llama-bf16")).unwrap();
    let ids: Vec<u32> = vec![0, 5, 511, 5, 300];
    let devices = common::devices();
    let cpu = &devices[0].backend;
    let x = ucw::forward::embed(cpu.as_ref(), &model, &ids, 20).unwrap();
    let e = model.tensor("model.embed_tokens.weight");
    for (t, &id) in ids.iter().enumerate() {
        let row = &e.bytes[id as usize * 128..(id as usize + 1) * 128];
        let vals: Vec<f64> =
            row.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f64()).collect();
        let top = vals.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (c, v) in vals.iter().enumerate() {
            if v.abs() * 2048.0 >= top {
                assert_eq!(x.mants[t * 64 + c] as f64 * 2f64.powi(x.exps[t]), *v, "token {t} channel {c}");
            }
        }
    }
    for d in &devices[1..] {
        assert_eq!(ucw::forward::embed(d.backend.as_ref(), &model, &ids, 20).unwrap(), x, "{}", d.label);
    }
    assert!(
        ucw::forward::embed(cpu.as_ref(), &model, &[512], 20)
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
}
