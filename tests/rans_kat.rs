//! Codec version 3's entropy-coded codes (docs/FORMAT.md §4.1) against known answers made by
//! an independent encoder (tests/rans_kat.py, Python, written from the spec alone): the Rust
//! encoder must write exactly the same table, stream lengths and stream bytes, and decode
//! them back to the codes.

mod common;

use std::path::Path;
use std::process::Command;

use ucw::fixed::quant::{QuantParams, QuantTensor};
use ucw::pack::layer::{CodedCodes, code_codes, decode_codes};

fn cases() -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rans_kat.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn ints<T: TryFrom<u64>>(v: &serde_json::Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array().unwrap().iter().map(|x| T::try_from(x.as_u64().unwrap()).unwrap()).collect()
}

#[test]
fn rust_encoder_writes_the_independent_known_answers() {
    let cases = cases();
    assert!(cases.len() >= 6, "known-answer file holds {} cases", cases.len());
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (rows, cols) = (c["rows"].as_u64().unwrap() as usize, c["cols"].as_u64().unwrap() as usize);
        let params = QuantParams {
            bits: c["bits"].as_u64().unwrap() as u32,
            group_size: c["group_size"].as_u64().unwrap() as u32,
        };
        let gpr = cols.div_ceil(params.group_size as usize);
        let q = QuantTensor {
            rows,
            cols,
            params,
            base_exp: 0,
            codes: ints(&c["codes"]),
            scales: vec![0; rows * gpr],
            zeros: ints(&c["zeros"]),
            overlay: None,
        };
        let want = CodedCodes {
            rans: hex::decode(c["rans_hex"].as_str().unwrap()).unwrap(),
            freq: ints(&c["freq"]),
            lens: ints(&c["len"]),
        };
        let got = code_codes(&q);
        assert_eq!(got.freq, want.freq, "{name}: frequency table (bits {}, {rows}×{cols})", params.bits);
        assert_eq!(got.lens, want.lens, "{name}: stream lengths");
        assert_eq!(hex::encode(&got.rans), hex::encode(&want.rans), "{name}: stream bytes");
        let back = decode_codes(&want, &q.zeros, rows, cols, params, name).unwrap();
        assert_eq!(back, q.codes, "{name}: decoded codes");
        println!("{name}: {} stream bytes for {} codes, identical to the reference", got.rans.len(), rows * cols);
    }
}

/// The committed answers are what the reference encoder writes now (it re-encodes every case).
#[test]
fn known_answers_are_the_reference_encoders_output() {
    let Some(py) = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).args(["-c", "import numpy"]).output().is_ok_and(|o| o.status.success()))
    else {
        assert!(
            std::env::var("UCW_REQUIRE_PYTHON").is_err(),
            "UCW_REQUIRE_PYTHON is set but python3 with numpy is missing"
        );
        common::report_skip("known_answers_are_the_reference_encoders_output", "no python3 with numpy");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new(py).arg(root.join("tests/rans_kat.py")).arg("--check").output().unwrap();
    assert!(
        o.status.success(),
        "tests/rans_kat.py --check: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Damaged streams are refused with the tensor named, never decoded into other codes.
#[test]
fn damaged_streams_are_refused() {
    let c = &cases()[5];
    let (rows, cols) = (c["rows"].as_u64().unwrap() as usize, c["cols"].as_u64().unwrap() as usize);
    let params =
        QuantParams { bits: c["bits"].as_u64().unwrap() as u32, group_size: c["group_size"].as_u64().unwrap() as u32 };
    let zeros: Vec<u8> = ints(&c["zeros"]);
    let good = CodedCodes {
        rans: hex::decode(c["rans_hex"].as_str().unwrap()).unwrap(),
        freq: ints(&c["freq"]),
        lens: ints(&c["len"]),
    };
    let want: Vec<u8> = ints(&c["codes"]);
    let mut refused = 0;
    for i in 0..good.rans.len() * 8 {
        let mut bad = good.clone();
        bad.rans[i / 8] ^= 1 << (i % 8);
        match decode_codes(&bad, &zeros, rows, cols, params, "T") {
            Err(e) => {
                assert!(e.to_string().starts_with("T: stream 0:"), "{e}");
                refused += 1;
            }
            Ok(codes) => assert_ne!(codes, want, "bit {i} flipped and the same codes came back"),
        }
    }
    println!("{refused} of {} single-bit flips refused, the others decode to other codes", good.rans.len() * 8);
    let mut bad = good.clone();
    bad.freq[0] += 1;
    assert!(decode_codes(&bad, &zeros, rows, cols, params, "T").unwrap_err().to_string().contains("sum to 4097"));
    let mut bad = good.clone();
    bad.lens[0] -= 1;
    assert!(decode_codes(&bad, &zeros, rows, cols, params, "T").unwrap_err().to_string().contains("lengths sum"));
    let mut bad = good.clone();
    bad.rans.pop();
    bad.lens[0] -= 1;
    assert!(decode_codes(&bad, &zeros, rows, cols, params, "T").is_err());
}
