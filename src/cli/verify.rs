use std::path::PathBuf;

use super::{Common, print_json, write_json_atomic};
use crate::backend::Backend;
use crate::backend::device::{self, DeviceInfo, Devices};
use crate::error::{Error, Result};
use crate::pack::Pack;
use crate::pack::oms::{self, PublicKey, SignatureCheck};
use crate::pack::receipt::{self, Receipt};
use crate::pack::verify::verify;

#[derive(clap::Args)]
pub struct VerifyArgs {
    pub pack: PathBuf,
    /// Fail unless the pack digest equals this (optional sha256: prefix, any case).
    #[arg(long)]
    pub expect: Option<String>,
    /// Reconstruct on every device present and require all to agree.
    #[arg(long)]
    pub all_devices: bool,
    /// Print every tensor, not only failures.
    #[arg(long)]
    pub verbose: bool,
    /// Also check this OpenSSF Model Signing bundle (`model_signing sign key`) over the pack.
    #[arg(long, requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// The signer's ECDSA P-256 public key (PEM) for --signature.
    #[arg(long, requires = "signature")]
    pub public_key: Option<PathBuf>,
    /// Also write a verification receipt here, outside the pack (docs/RECEIPT.md).
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

/// The signature check, when asked for: everything that makes it impossible (an unreadable
/// key or bundle) ends the command with exit 2 before any tensor is rebuilt.
fn check_signature(a: &VerifyArgs, pack: &mut Pack) -> Result<Option<(String, SignatureCheck)>> {
    let (Some(sig), Some(key)) = (&a.signature, &a.public_key) else { return Ok(None) };
    pack.accept_signature_file(sig);
    let key = PublicKey::from_file(key)?;
    let bundle = std::fs::read(sig).map_err(|e| Error::io(sig, "cannot read", e))?;
    let what = sig.display().to_string();
    Ok(Some((what.clone(), oms::check(&bundle, &what, &key, &oms::pack_resources(pack))?)))
}

pub fn run(a: &VerifyArgs) -> Result<()> {
    let common = &a.common;
    let mut pack = Pack::open(&a.pack)?;
    if let Some(r) = &a.receipt {
        receipt::check_outside(r, &pack)?;
    }
    let mut signature = check_signature(a, &mut pack)?;
    let mut owned: Vec<(String, DeviceInfo, Box<dyn Backend>)> = Vec::new();
    if a.all_devices {
        let devices = Devices::discover();
        for (i, info) in devices.infos.iter().enumerate() {
            owned.push((format!("{}#{i}", info.api), info.clone(), devices.open(i)?));
        }
    } else {
        let (info, b) = device::open(common.device)?;
        owned.push((format!("{}#{}", info.api, info.index), info, b));
    }
    let backends: Vec<(String, &dyn Backend)> = owned.iter().map(|(l, _, b)| (l.clone(), b.as_ref())).collect();
    let report = verify(&pack, &backends, a.expect.as_deref())?;
    if let Some((file, s)) = signature.as_mut() {
        s.add_file_problems(file, &report.files);
    }
    let pass = report.pass() && signature.as_ref().is_none_or(|(_, s)| s.pass());
    if let Some(path) = &a.receipt {
        let infos: Vec<(String, DeviceInfo)> = owned.iter().map(|(l, i, _)| (l.clone(), i.clone())).collect();
        let sig = signature.as_ref().map(|(f, s)| (f.as_str(), s));
        write_json_atomic(path, &Receipt::new(&pack, &report, a.expect.as_deref(), &infos, sig, pass))?;
    }
    // A signature file in the pack that nobody asked to check: say so, it proves nothing yet.
    let unchecked: Vec<&String> =
        pack.signature_files.iter().filter(|n| pack.dir.join(n).exists() && signature.is_none()).collect();
    if common.json {
        print_json(&serde_json::json!({
            "pack": a.pack.display().to_string(),
            "pack_digest": report.pack_digest,
            "expect_ok": report.expect_ok,
            "file_problems": report.files.iter().map(|p| serde_json::json!({"file": p.file, "problem": p.problem})).collect::<Vec<_>>(),
            "weights_digest_ok": report.weights_digest_ok,
            "devices": backends.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>(),
            "tensors": report.tensors.iter().filter(|t| a.verbose || !t.ok).map(|t| serde_json::json!({
                "name": t.name, "device": t.device, "ok": t.ok, "detail": t.detail})).collect::<Vec<_>>(),
            "tensors_checked": report.tensors.len(),
            "signature": signature.as_ref().map(|(file, s)| serde_json::json!({
                "file": file, "result": if s.pass() { "PASS" } else { "FAIL" },
                "signer_fingerprint": s.signer_fingerprint, "problems": s.problems})),
            "unchecked_signature_files": unchecked,
            "receipt": a.receipt.as_ref().map(|p| p.display().to_string()),
            "result": if pass { "PASS" } else { "FAIL" },
        }));
    } else {
        if report.expect_ok == Some(false) {
            println!(
                "FAIL  pack digest sha256:{} is not the expected {}",
                report.pack_digest,
                a.expect.as_deref().unwrap_or("")
            );
        }
        for p in &report.files {
            println!("FAIL  file {}: {}", p.file, p.problem);
        }
        if !report.weights_digest_ok {
            println!("FAIL  weights digest does not match the manifest's tensor list");
        }
        for t in &report.tensors {
            if a.verbose || !t.ok {
                println!("{}  [{}] {}: {}", if t.ok { "ok  " } else { "FAIL" }, t.device, t.name, t.detail);
            }
        }
        for n in &unchecked {
            println!("note  {n} is not part of the pack and was not checked (give --signature and --public-key)");
        }
        if let Some((file, s)) = &signature {
            for p in &s.problems {
                println!("FAIL  signature {p}");
            }
            if s.pass() {
                println!(
                    "ok    signature {file}: signed by key sha256:{}, signs the manifest and exactly the files it lists",
                    s.signer_fingerprint
                );
            }
        }
        if let Some(p) = &a.receipt {
            println!("receipt written to {}", p.display());
        }
        let ok = report.tensors.iter().filter(|t| t.ok).count();
        println!(
            "{} sha256:{} ({} of {} tensor checks passed on {}{})",
            if pass { "PASS" } else { "FAIL" },
            report.pack_digest,
            ok,
            report.tensors.len(),
            backends.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join(", "),
            match &signature {
                Some((_, s)) if s.pass() => format!("; signer sha256:{}", s.signer_fingerprint),
                Some(_) => "; signature FAILED".to_string(),
                None => String::new(),
            }
        );
    }
    if pass { Ok(()) } else { Err(Error::verify_fail("verification failed")) }
}
