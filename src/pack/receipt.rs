//! Verification receipts: what `ucw verify --receipt FILE` writes for an auditor to file
//! (schema in docs/RECEIPT.md). A receipt names the pack by the same `pack_digest` and
//! `weights_digest` fields as `ucw eval`'s report, so one validation report joins many
//! deployment receipts. It lives outside the pack and never changes its digest; what varies
//! between runs (host, time, devices) belongs here and never in the manifest (DESIGN §5).

use std::path::Path;

use serde::Serialize;

use super::Pack;
use super::oms::SignatureCheck;
use super::verify::Report;
use crate::backend::device::DeviceInfo;
use crate::error::{Error, Result};

pub const RECEIPT_SCHEMA: &str = "ucw-verify-receipt";
/// Bumped when a field changes meaning or goes away; new fields may be added within one.
pub const RECEIPT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Receipt {
    pub schema: &'static str,
    pub schema_version: u32,
    /// "PASS" or "FAIL": the command's verdict (exit 0 or 1).
    pub result: &'static str,
    /// The pack directory as given on the command line.
    pub pack: String,
    pub pack_digest: String,
    /// The manifest's weights digest (the same value `ucw hash` gives the exported model).
    pub weights_digest: String,
    /// Whether the manifest's tensor list hashes to its weights digest.
    pub weights_digest_ok: bool,
    /// `--expect` and whether the pack digest equals it; null when not given.
    pub expect: Option<Expect>,
    pub file_problems: Vec<FileProblem>,
    pub devices: Vec<DeviceResult>,
    /// The OMS signature check; null when --signature was not given.
    pub signature: Option<SignatureResult>,
    pub tool: Tool,
    pub host: Host,
    /// When verification finished, UTC, RFC 3339 to the second.
    pub time_utc: String,
}

#[derive(Debug, Serialize)]
pub struct Expect {
    pub digest: String,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct FileProblem {
    pub file: String,
    pub problem: String,
}

#[derive(Debug, Serialize)]
pub struct DeviceResult {
    /// "api#index" as `ucw verify` prints it.
    pub label: String,
    pub api: String,
    pub name: String,
    pub driver: String,
    pub driver_info: String,
    pub tensors_checked: usize,
    pub tensors_failed: usize,
    /// The first few failing tensors with what went wrong (all are counted above).
    pub failures: Vec<String>,
    pub result: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SignatureResult {
    pub file: String,
    pub result: &'static str,
    /// SHA-256 (hex) of the public key's DER SubjectPublicKeyInfo (docs/SIGNING.md).
    pub signer_fingerprint: String,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
    pub codec_version: u32,
}

#[derive(Debug, Serialize)]
pub struct Host {
    /// `std::env::consts::OS`, e.g. "linux"
    pub os: &'static str,
    /// The distribution and kernel where known, e.g. "Debian GNU/Linux 12 (bookworm); 6.1.0-18-amd64".
    pub os_version: String,
    pub arch: &'static str,
    pub cpu: String,
    /// Worker threads of the CPU backend.
    pub threads: usize,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// How many failing tensors a device entry names (a damaged pack can fail thousands).
const FAILURES_NAMED: usize = 20;

impl Receipt {
    pub fn new(
        pack: &Pack,
        report: &Report,
        expect: Option<&str>,
        devices: &[(String, DeviceInfo)],
        signature: Option<(&str, &SignatureCheck)>,
        pass: bool,
    ) -> Receipt {
        let devices = devices
            .iter()
            .map(|(label, info)| {
                let mine: Vec<_> = report.tensors.iter().filter(|t| &t.device == label).collect();
                let failed: Vec<_> = mine.iter().filter(|t| !t.ok).collect();
                DeviceResult {
                    label: label.clone(),
                    api: info.api.clone(),
                    name: info.name.clone(),
                    driver: info.driver.clone(),
                    driver_info: info.driver_info.clone(),
                    tensors_checked: mine.len(),
                    tensors_failed: failed.len(),
                    failures: failed.iter().take(FAILURES_NAMED).map(|t| format!("{}: {}", t.name, t.detail)).collect(),
                    // A device passes only a pack whose files passed too.
                    result: verdict(failed.is_empty() && !mine.is_empty() && report.files.is_empty()),
                }
            })
            .collect();
        Receipt {
            schema: RECEIPT_SCHEMA,
            schema_version: RECEIPT_VERSION,
            result: verdict(pass),
            pack: pack.dir.display().to_string(),
            pack_digest: report.pack_digest.clone(),
            weights_digest: pack.manifest.weights_digest.clone(),
            weights_digest_ok: report.weights_digest_ok,
            expect: expect.zip(report.expect_ok).map(|(d, ok)| Expect { digest: d.to_string(), ok }),
            file_problems: report
                .files
                .iter()
                .map(|p| FileProblem { file: p.file.clone(), problem: p.problem.clone() })
                .collect(),
            devices,
            signature: signature.map(|(file, s)| SignatureResult {
                file: file.to_string(),
                result: verdict(s.pass()),
                signer_fingerprint: s.signer_fingerprint.clone(),
                problems: s.problems.clone(),
            }),
            tool: Tool {
                name: env!("CARGO_PKG_NAME"),
                version: env!("CARGO_PKG_VERSION"),
                codec_version: crate::codec::CODEC_VERSION,
            },
            host: Host {
                os: std::env::consts::OS,
                os_version: os_version(),
                arch: std::env::consts::ARCH,
                cpu: cpu_model(),
                threads: rayon::current_num_threads(),
            },
            time_utc: utc_now(),
        }
    }
}

/// Refuse a receipt inside the pack: the next verify would find a file the manifest does
/// not list.
pub fn check_outside(path: &Path, pack: &Pack) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let parent = parent.canonicalize().map_err(|e| Error::io(parent, "cannot open the receipt's directory", e))?;
    if pack.dir.canonicalize().is_ok_and(|d| d == parent) {
        return Err(bad_input!("{}: a receipt must be written outside the pack", path.display()));
    }
    Ok(())
}

fn cpu_model() -> String {
    // Linux names the model per logical CPU; other systems get their architecture only.
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("unknown {}", std::env::consts::ARCH))
}

fn os_version() -> String {
    let distro = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string()));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string());
    match (distro, kernel) {
        (Some(d), Some(k)) => format!("{d}; {k}"),
        (Some(v), None) | (None, Some(v)) => v,
        (None, None) => "unknown".into(),
    }
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    rfc3339_utc(secs)
}

/// Seconds since 1970 as "YYYY-MM-DDTHH:MM:SSZ" (proleptic Gregorian; the days-to-civil
/// conversion of H. Hinnant's chrono-compatible date algorithms), so no date crate is
/// needed for one timestamp.
pub fn rfc3339_utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::rfc3339_utc;

    /// Expected strings from GNU date (`date -u -d @N +%Y-%m-%dT%H:%M:%SZ`).
    #[test]
    fn utc_timestamps_match_gnu_date() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_399, "2000-02-28T23:59:59Z"),
            (951_868_800, "2000-03-01T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
            (1_796_600_000, "2026-12-06T23:33:20Z"),
        ] {
            assert_eq!(rfc3339_utc(secs), want, "{secs}");
        }
    }
}
