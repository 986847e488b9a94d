//! Entropy-coded linears (docs/FORMAT.md §4.1 codec version 3, §4.2 version 4) against known
//! answers made by an independent encoder (tests/rans_kat.py, Python, written from the spec
//! alone): the Rust encoder must write exactly the same tables, stream lengths and stream
//! bytes, and decode them back to the codes, scale codes and zero points.

mod common;

use std::path::Path;
use std::process::Command;

use ucw::fixed::quant::{QuantParams, QuantTensor};
use ucw::pack::coded::{self, Layout, Streams};

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

/// A case's linear: codes, zero points and (version 4) scale codes from the file.
fn linear(c: &serde_json::Value) -> (QuantTensor, Layout, Streams) {
    let (rows, cols) = (c["rows"].as_u64().unwrap() as usize, c["cols"].as_u64().unwrap() as usize);
    let params =
        QuantParams { bits: c["bits"].as_u64().unwrap() as u32, group_size: c["group_size"].as_u64().unwrap() as u32 };
    let gpr = cols.div_ceil(params.group_size as usize);
    let layout = Layout::of_version(c["version"].as_u64().unwrap() as u32).expect("a coded version");
    let q = QuantTensor {
        rows,
        cols,
        params,
        base_exp: 0,
        codes: ints(&c["codes"]),
        scales: if c.get("scales").is_some() { ints(&c["scales"]) } else { vec![0; rows * gpr] },
        zeros: ints(&c["zeros"]),
        overlay: None,
    };
    let s = Streams {
        rans: hex::decode(c["rans_hex"].as_str().unwrap()).unwrap(),
        freq: ints(&c["freq"]),
        lens: ints(&c["len"]),
    };
    (q, layout, s)
}

#[test]
fn rust_encoder_writes_the_independent_known_answers() {
    let cases = cases();
    let v4 = cases.iter().filter(|c| c["version"] == 4).count();
    assert!(v4 >= 6, "known-answer file holds {v4} codec-4 cases");
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let (q, layout, want) = linear(c);
        let (rows, cols, params) = (q.rows, q.cols, q.params);
        let got = coded::encode(&q, layout);
        assert_eq!(got.freq, want.freq, "{name}: frequency tables ({layout:?}, bits {}, {rows}×{cols})", params.bits);
        assert_eq!(got.lens, want.lens, "{name}: stream lengths");
        assert_eq!(hex::encode(&got.rans), hex::encode(&want.rans), "{name}: stream bytes");
        let kept = (layout == Layout::Codes).then_some((q.scales.as_slice(), q.zeros.as_slice()));
        let back = coded::decode(&want, layout, rows, cols, params, kept, name).unwrap();
        assert_eq!((back.codes, back.scales, back.zeros), (q.codes, q.scales, q.zeros), "{name}: decoded");
        println!(
            "{name} ({layout:?}): {} stream bytes for {} codes, identical to the reference",
            got.rans.len(),
            rows * cols
        );
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
    let cases = cases();
    let c = cases.iter().rfind(|c| c["version"] == 4).unwrap();
    let (q, layout, good) = linear(c);
    let (rows, cols, params) = (q.rows, q.cols, q.params);
    let dec = |s: &Streams| coded::decode(s, layout, rows, cols, params, None, "T");
    let mut refused = 0;
    for i in 0..good.rans.len() * 8 {
        let mut bad = good.clone();
        bad.rans[i / 8] ^= 1 << (i % 8);
        match dec(&bad) {
            Err(e) => {
                assert!(e.to_string().starts_with("T: stream "), "{e}");
                refused += 1;
            }
            Ok(d) => assert_ne!(
                (d.codes, d.scales, d.zeros),
                (q.codes.clone(), q.scales.clone(), q.zeros.clone()),
                "bit {i} flipped and the same linear came back"
            ),
        }
    }
    println!("{refused} of {} single-bit flips refused, the others decode to another linear", good.rans.len() * 8);
    // Each of the three tables must sum to M.
    let sizes = layout.tables(params.bits);
    let mut at = 0;
    for (n, table) in sizes.iter().zip(["scale", "zero", "code"]) {
        let mut bad = good.clone();
        bad.freq[at] += 1;
        let e = dec(&bad).unwrap_err().to_string();
        assert!(e.contains(&format!("{table} table")) && e.contains("sum to 4097"), "{e}");
        at += n;
    }
    let mut bad = good.clone();
    bad.lens[0] -= 1;
    assert!(dec(&bad).unwrap_err().to_string().contains("lengths sum"));
    let mut bad = good.clone();
    bad.rans.pop();
    *bad.lens.last_mut().unwrap() -= 1;
    assert!(dec(&bad).is_err());
}
