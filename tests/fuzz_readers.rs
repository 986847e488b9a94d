//! No panic on any input: the manifest parser and the layer-file reader (header parse,
//! codec metadata, tensor decode) on random and mutated bytes (DESIGN §7).
//! Each property prints how many cases ran and how they were classified.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use ucw::model::weights::SafetensorsFile;
use ucw::pack::layer::{LayerMeta, decode};
use ucw::pack::manifest::Manifest;

const CASES: u32 = 3000;

/// A real pack of the llama fixture, compressed once for all properties.
fn pack_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-bf16");
        ucw::compress::compress(
            &src,
            &t.path().join("pack"),
            &ucw::backend::cpu::CpuBackend::new(),
            &Default::default(),
            &mut |_| {},
        )
        .unwrap();
        t
    })
    .path()
    .join("pack")
    .leak()
}

fn manifest_bytes() -> Vec<u8> {
    std::fs::read(pack_dir().join("ucw-manifest.json")).unwrap()
}

fn layer_bytes() -> Vec<u8> {
    std::fs::read(pack_dir().join("layer-00000.safetensors")).unwrap()
}

/// Byte-level mutations: flips, overwrites, truncation, insertion.
fn mutate(mut b: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, pos, val) in ops {
        if b.is_empty() {
            break;
        }
        let p = pos % b.len();
        match kind % 4 {
            0 => b[p] ^= 1 << (val % 8),
            1 => b[p] = val,
            2 => b.truncate(p),
            _ => b.insert(p, val),
        }
    }
    b
}

static MANIFEST_OK: AtomicUsize = AtomicUsize::new(0);
static MANIFEST_ERR: AtomicUsize = AtomicUsize::new(0);
static LAYER_OK: AtomicUsize = AtomicUsize::new(0);
static LAYER_ERR: AtomicUsize = AtomicUsize::new(0);

fn classify_manifest(b: &[u8]) {
    match Manifest::parse(b) {
        Ok(_) => MANIFEST_OK.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            assert_eq!(e.exit_code(), 2);
            MANIFEST_ERR.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// Open, read metadata and decode every quantized tensor the metadata names.
fn read_layer(bytes: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("layer.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let f = SafetensorsFile::open(&p).map_err(|e| e.message)?;
    let meta = LayerMeta::from_file(&f).map_err(|e| e.message)?;
    let mut n = 0;
    for name in meta.tensors.keys() {
        let (q, dtype) = decode(&f, &meta, name).map_err(|e| e.message)?;
        // Reconstruction of whatever decoded must not panic either (overflow is an error).
        use ucw::backend::Backend;
        let _ = ucw::backend::cpu::CpuBackend::new().dequantize(&q, dtype);
        n += 1;
    }
    Ok(n)
}

fn classify_layer(b: &[u8]) {
    match read_layer(b) {
        Ok(_) => LAYER_OK.fetch_add(1, Ordering::Relaxed),
        Err(_) => LAYER_ERR.fetch_add(1, Ordering::Relaxed),
    };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parser_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        classify_manifest(&b);
    }

    #[test]
    fn manifest_parser_never_panics_on_mutations(ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6)) {
        classify_manifest(&mutate(manifest_bytes(), &ops));
    }

    #[test]
    fn layer_reader_never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..256)) {
        classify_layer(&b);
    }

    #[test]
    fn layer_reader_never_panics_on_mutations(ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6)) {
        classify_layer(&mutate(layer_bytes(), &ops));
    }

    /// Mutations confined to the header, where the interesting parsing happens.
    #[test]
    fn layer_reader_never_panics_on_header_mutations(ops in proptest::collection::vec((any::<u8>(), any::<u16>(), any::<u8>()), 1..4)) {
        let b = layer_bytes();
        let n = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let mut head = b[..n].to_vec();
        for &(kind, pos, val) in &ops {
            let p = pos as usize % head.len();
            if kind % 2 == 0 { head[p] ^= 1 << (val % 8) } else { head[p] = val }
        }
        head.extend(&b[n..]);
        classify_layer(&head);
    }
}

#[test]
fn zz_report_counts() {
    // Runs after the properties only when tests run in one thread; the per-property
    // counts are printed by `cargo test --test fuzz_readers -- --test-threads 1 --nocapture`.
    println!(
        "manifest: {} accepted, {} rejected; layer files: {} decoded, {} rejected",
        MANIFEST_OK.load(Ordering::Relaxed),
        MANIFEST_ERR.load(Ordering::Relaxed),
        LAYER_OK.load(Ordering::Relaxed),
        LAYER_ERR.load(Ordering::Relaxed)
    );
}

#[test]
fn unmutated_inputs_are_accepted() {
    Manifest::parse(&manifest_bytes()).unwrap();
    assert_eq!(read_layer(&layer_bytes()).unwrap(), 7);
}

#[test]
fn extreme_metadata_values_are_errors() {
    let b = layer_bytes();
    let n = 8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(b[8..n].to_vec()).unwrap();
    let rewrite = |from: &str, to: &str| {
        let h = header.replacen(from, to, 1);
        assert_ne!(h, header, "{from}");
        let mut h = h.into_bytes();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(&b[n..]);
        out
    };
    // The first base_exp's full value, e.g. `\"base_exp\":-24`.
    let key = "\\\"base_exp\\\":";
    let at = header.find(key).unwrap() + key.len();
    let end = at + header[at..].find(',').unwrap();
    let base = header[..end][at - key.len()..].to_string();
    let huge = format!("{key}-2147483648");
    let big = format!("{key}2147483647");
    for (from, to) in [
        (base.as_str(), huge.as_str()),
        (base.as_str(), big.as_str()),
        ("\\\"bits\\\":5", "\\\"bits\\\":9"),
        ("\\\"group_size\\\":64", "\\\"group_size\\\":0"),
        ("\\\"rank\\\":0", "\\\"rank\\\":4"),
    ] {
        let bytes = rewrite(from, to);
        assert!(read_layer(&bytes).is_err(), "{to}");
    }
}
