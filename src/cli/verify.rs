use std::path::Path;

use super::{Common, print_json};
use crate::backend::Backend;
use crate::backend::device::{self, Devices};
use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::pack::verify::verify;

pub fn run(pack_dir: &Path, expect: Option<&str>, all_devices: bool, verbose: bool, common: &Common) -> Result<()> {
    let pack = Pack::open(pack_dir)?;
    let mut owned: Vec<(String, Box<dyn Backend>)> = Vec::new();
    if all_devices {
        let devices = Devices::discover();
        for i in 0..devices.infos.len() {
            owned.push((format!("{}#{i}", devices.infos[i].api), devices.open(i)?));
        }
    } else {
        let (info, b) = device::open(common.device)?;
        owned.push((format!("{}#{}", info.api, info.index), b));
    }
    let backends: Vec<(String, &dyn Backend)> = owned.iter().map(|(l, b)| (l.clone(), b.as_ref())).collect();
    let report = verify(&pack, &backends, expect)?;
    let pass = report.pass();
    if common.json {
        print_json(&serde_json::json!({
            "pack": pack_dir.display().to_string(),
            "pack_digest": report.pack_digest,
            "expect_ok": report.expect_ok,
            "file_problems": report.files.iter().map(|p| serde_json::json!({"file": p.file, "problem": p.problem})).collect::<Vec<_>>(),
            "weights_digest_ok": report.weights_digest_ok,
            "devices": backends.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
            "tensors": report.tensors.iter().filter(|t| verbose || !t.ok).map(|t| serde_json::json!({
                "name": t.name, "device": t.device, "ok": t.ok, "detail": t.detail})).collect::<Vec<_>>(),
            "tensors_checked": report.tensors.len(),
            "result": if pass { "PASS" } else { "FAIL" },
        }));
    } else {
        if report.expect_ok == Some(false) {
            println!("FAIL  pack digest sha256:{} is not the expected {}", report.pack_digest, expect.unwrap_or(""));
        }
        for p in &report.files {
            println!("FAIL  file {}: {}", p.file, p.problem);
        }
        if !report.weights_digest_ok {
            println!("FAIL  weights digest does not match the manifest's tensor list");
        }
        for t in &report.tensors {
            if verbose || !t.ok {
                println!("{}  [{}] {}: {}", if t.ok { "ok  " } else { "FAIL" }, t.device, t.name, t.detail);
            }
        }
        let ok = report.tensors.iter().filter(|t| t.ok).count();
        println!(
            "{} sha256:{} ({} of {} tensor checks passed on {})",
            if pass { "PASS" } else { "FAIL" },
            report.pack_digest,
            ok,
            report.tensors.len(),
            backends.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    if pass { Ok(()) } else { Err(Error::verify_fail("verification failed")) }
}
