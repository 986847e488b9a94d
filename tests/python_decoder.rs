//! The independent decoder (scripts/ucw_decode.py, Python + numpy, written from
//! docs/FORMAT.md alone) reconstructs fixture packs and reproduces every digest.
//! Skipped when python3 with numpy is absent, unless UCW_REQUIRE_PYTHON is set (CI).

use std::path::Path;
use std::process::Command;

use ucw::backend::cpu::CpuBackend;
use ucw::compress::{Options, Rank, compress};
use ucw::dtype::DType;
use ucw::pack::Pack;

fn python_with_numpy() -> Option<&'static str> {
    let found = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        assert!(
            std::env::var("UCW_REQUIRE_PYTHON").is_err(),
            "UCW_REQUIRE_PYTHON is set but python3 with numpy is missing"
        );
    }
    found
}

#[test]
fn independent_decoder_reproduces_the_manifest_digests() {
    let Some(py) = python_with_numpy() else {
        eprintln!("skipped: no python3 with numpy");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cases: &[(&str, Options)] = &[
        ("llama-bf16", Options::default()),
        ("mistral-f16", Options::default()),
        ("qwen2-f32", Options::default()),
        ("qwen3-bf16-sharded", Options::default()),
        ("llama-bf16", Options { out_dtype: Some(DType::F32), ..Options::default() }),
        ("qwen2-f32", Options { out_dtype: Some(DType::F16), bits: 3, ..Options::default() }),
        ("mistral-f16", Options { bits: 8, group_size: 7, out_dtype: Some(DType::BF16), ..Options::default() }),
        ("qwen3-bf16-sharded", Options { bits: 2, group_size: 100, ..Options::default() }),
        ("qwen3-bf16-sharded", Options { rank: Rank::Fixed(4), ..Options::default() }),
        ("qwen2-f32", Options { rank: Rank::Fixed(32), out_dtype: Some(DType::F32), ..Options::default() }),
        ("mistral-f16", Options { rank: Rank::Fixed(1), bits: 3, ..Options::default() }),
    ];
    let t = tempfile::tempdir().unwrap();
    for (i, (fixture, opts)) in cases.iter().enumerate() {
        let out = t.path().join(format!("p{i}"));
        compress(&root.join("tests/fixtures").join(fixture), &out, &CpuBackend::new(), opts, &mut |_| {}).unwrap();
        let pack = Pack::open(&out).unwrap();
        let o = Command::new(py).arg(root.join("scripts/ucw_decode.py")).arg(&out).output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{fixture} {opts:?}: {stdout}{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["ok"], true, "{fixture} {opts:?}: {stdout}");
        assert_eq!(v["pack_digest"], pack.digest());
        assert_eq!(v["weights_digest"], pack.manifest.weights_digest);
        assert_eq!(v["tensors_checked"], pack.manifest.tensors.len());
        println!(
            "{fixture} {} bits g{} {:?}: Python decoder reproduced all {} digests",
            opts.bits,
            opts.group_size,
            opts.out_dtype,
            pack.manifest.tensors.len()
        );
    }
}
