//! Each `ucw verify` check shown catching its own fault (DESIGN §6, §7), on packs with
//! low-rank overlays and mixed code widths (calibrated compression), on every device:
//! - a device that reconstructs one wrong bit fails that tensor on that device only;
//! - a reconstructed-digest mismatch is printed naming tensor and device (CLI);
//! - a flipped bit in every kind of pack file fails naming the file (and the tensor);
//! - every manifest field verify can check against the pack itself fails when edited,
//!   even self-consistently (canonical JSON, no `--expect`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use common::Rng;
use ucw::backend::cpu::attention::AttnShape;
use ucw::backend::{Backend, KernelError, Prepared, WideCase, WideResult};
use ucw::dtype::DType;
use ucw::error::Error;
use ucw::fixed::quant::{QuantParams, QuantTensor};
use ucw::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use ucw::fixed::tensor::{ExactSums, GroupFixed, IngestParams, TokenFixed};
use ucw::pack::verify::verify;
use ucw::pack::{Kind, MANIFEST_FILE, Pack};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ucw(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ucw")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Calibrated packs (4 windows of 64 tokens of the committed text, CPU):
/// "A": qwen3 (sharded source), `--target-bpw 4.75`: mixed widths and a rank-4 overlay on
/// every linear;
/// "B": mistral, `--target-bpw 6`: mixed widths 5/6 and overlays of several ranks (0 too).
fn packs() -> &'static [(String, PathBuf)] {
    static P: OnceLock<(tempfile::TempDir, Vec<(String, PathBuf)>)> = OnceLock::new();
    &P.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let mut v = Vec::new();
        for (name, fixture, extra) in [
            ("A", "qwen3-bf16-sharded", &["--rank", "4", "--target-bpw", "4.75"][..]),
            ("B", "mistral-f16", &["--target-bpw", "6"]),
        ] {
            let dir = t.path().join(name);
            common::compress_calibrated(fixture, &dir, extra);
            let m = Pack::open(&dir).unwrap().manifest;
            let q: Vec<_> = m.tensors.iter().filter(|t| t.kind == Kind::Quantized).collect();
            let widths: std::collections::BTreeSet<_> = q.iter().map(|t| t.bits.unwrap()).collect();
            assert!(widths.len() > 1, "pack {name}: one code width only {widths:?}");
            assert!(q.iter().any(|t| t.rank.unwrap() > 0), "pack {name}: no overlay");
            println!("pack {name} ({fixture} {}): widths {widths:?}, ranks {:?}", extra.join(" "), {
                let r: std::collections::BTreeSet<_> = q.iter().map(|t| t.rank.unwrap()).collect();
                r
            });
            v.push((name.to_string(), dir));
        }
        (t, v)
    })
    .1
}

fn inc(v: &mut serde_json::Value) {
    *v = (v.as_u64().unwrap() + 1).into();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn all_backends() -> Vec<(String, &'static dyn Backend)> {
    common::devices().iter().map(|d| (d.label.clone(), d.backend.as_ref())).collect()
}

/// A device that computes wrong bits: delegates every method to `inner`, but flips one bit
/// of the reconstruction of the one quantized tensor equal to `target`.
struct Flipping {
    inner: Arc<dyn Backend>,
    target: Option<QuantTensor>,
    bit: usize,
    flips: AtomicUsize,
}

impl Backend for Flipping {
    fn describe(&self) -> String {
        format!("{} (flipping one bit)", self.inner.describe())
    }
    fn api(&self) -> &'static str {
        self.inner.api()
    }
    fn concurrent_windows(&self) -> usize {
        self.inner.concurrent_windows()
    }
    fn ingest(
        &self,
        src: &[u8],
        dtype: DType,
        rows: usize,
        cols: usize,
        params: IngestParams,
    ) -> Result<GroupFixed, KernelError> {
        self.inner.ingest(src, dtype, rows, cols, params)
    }
    fn quantize(
        &self,
        x: &GroupFixed,
        importance: &[u32],
        p: QuantParams,
        base_exp: i32,
    ) -> Result<QuantTensor, Error> {
        self.inner.quantize(x, importance, p, base_exp)
    }
    fn dequantize(&self, q: &QuantTensor, dtype: DType) -> Result<Vec<u8>, KernelError> {
        let mut v = self.inner.dequantize(q, dtype)?;
        if self.target.as_ref() == Some(q) {
            let bit = self.bit % (8 * v.len());
            v[bit / 8] ^= 1 << (bit % 8);
            self.flips.fetch_add(1, Ordering::Relaxed);
        }
        Ok(v)
    }
    fn matmul(&self, x: &TokenFixed, w: &GroupFixed) -> Result<ExactSums, Error> {
        self.inner.matmul(x, w)
    }
    fn prepare_matmul(&self, w: GroupFixed) -> Result<Prepared, Error> {
        self.inner.prepare_matmul(w)
    }
    fn prepared_bytes(&self, w: &GroupFixed) -> u64 {
        self.inner.prepared_bytes(w)
    }
    fn allow_resident_weights(&self, bytes: u64) {
        self.inner.allow_resident_weights(bytes)
    }
    fn resident_weight_bytes(&self) -> u64 {
        self.inner.resident_weight_bytes()
    }
    fn matmul_prepared(&self, x: &TokenFixed, p: &Prepared) -> Result<ExactSums, Error> {
        self.inner.matmul_prepared(x, p)
    }
    fn renorm(&self, s: &ExactSums, x_exps: &[i32], bits: u32) -> Result<TokenFixed, Error> {
        self.inner.renorm(s, x_exps, bits)
    }
    fn rms_norm(&self, x: &TokenFixed, gamma: &GroupFixed, c: &RmsConsts, bits: u32) -> Result<TokenFixed, Error> {
        self.inner.rms_norm(x, gamma, c, bits)
    }
    fn swiglu(&self, gate: &TokenFixed, up: &TokenFixed, c: &ExpConsts, bits: u32) -> Result<TokenFixed, Error> {
        self.inner.swiglu(gate, up, c, bits)
    }
    fn rope(&self, x: &TokenFixed, positions: &[u32], t: &RopeTables, bits: u32) -> Result<TokenFixed, Error> {
        self.inner.rope(x, positions, t, bits)
    }
    fn add(&self, x: &TokenFixed, y: &TokenFixed, bits: u32) -> Result<TokenFixed, Error> {
        self.inner.add(x, y, bits)
    }
    fn nll(&self, logits: &TokenFixed, targets: &[u32], ec: &ExpConsts, lc: &LogConsts) -> Result<Vec<i64>, Error> {
        self.inner.nll(logits, targets, ec, lc)
    }
    fn renorm_nll(
        &self,
        s: &ExactSums,
        x_exps: &[i32],
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        self.inner.renorm_nll(s, x_exps, bits, targets, ec, lc)
    }
    fn head_nll(
        &self,
        x: &TokenFixed,
        p: &Prepared,
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        self.inner.head_nll(x, p, bits, targets, ec, lc)
    }
    fn attention(
        &self,
        q: &TokenFixed,
        k: &TokenFixed,
        v: &TokenFixed,
        s: &AttnShape,
        ec: &ExpConsts,
        bits: u32,
    ) -> Result<TokenFixed, Error> {
        self.inner.attention(q, k, v, s, ec, bits)
    }
    fn peak_device_bytes(&self) -> Option<u64> {
        self.inner.peak_device_bytes()
    }
    fn traffic(&self) -> Option<ucw::backend::Traffic> {
        self.inner.traffic()
    }
    fn wide_ops(&self, cases: &[WideCase]) -> Result<Vec<WideResult>, Error> {
        self.inner.wide_ops(cases)
    }
}

/// The quantized tensor to damage: one with an overlay and, where there is one, a code
/// width other than `--bits` (the mixed-width, rank > 0 path), read from its layer file.
fn target(pack: &Pack) -> (String, QuantTensor) {
    let m = &pack.manifest;
    let q: Vec<_> = m.tensors.iter().filter(|t| t.kind == Kind::Quantized && t.rank.unwrap() > 0).collect();
    let t = q.iter().find(|t| t.bits != Some(m.codec.parameters.bits)).unwrap_or(&q[0]);
    let f = ucw::model::weights::SafetensorsFile::open(&pack.dir.join(&t.file)).unwrap();
    let meta = ucw::pack::layer::LayerMeta::from_file(&f).unwrap();
    (t.name.clone(), ucw::pack::layer::decode(&f, &meta, &t.name).unwrap().0)
}

#[test]
fn a_device_computing_one_wrong_bit_fails_that_tensor_on_that_device() {
    let mut rng = Rng(13);
    for (name, dir) in packs() {
        let pack = Pack::open(dir).unwrap();
        let (tensor, q) = target(&pack);
        for (i, d) in common::devices().iter().enumerate() {
            let bad_label = format!("{}+flip", d.label);
            for flip in [false, true] {
                let fl = Flipping {
                    inner: d.backend.clone(),
                    target: flip.then(|| q.clone()),
                    bit: rng.below(1 << 20) as usize,
                    flips: AtomicUsize::new(0),
                };
                // Every device, with device i replaced by its flipping twin.
                let mut backends: Vec<(String, &dyn Backend)> = all_backends();
                backends[i] = (bad_label.clone(), &fl);
                let r = verify(&pack, &backends, None).unwrap();
                let failed: Vec<_> = r.tensors.iter().filter(|t| !t.ok).collect();
                if !flip {
                    assert!(r.pass(), "pack {name} on {bad_label} without a flip: {failed:?}");
                    continue;
                }
                assert_eq!(fl.flips.load(Ordering::Relaxed), 1, "pack {name}: {tensor} reconstructed once");
                assert!(!r.pass(), "pack {name}: a wrong bit on {bad_label} passed");
                assert!(r.files.is_empty() && r.weights_digest_ok, "pack {name}: only the tensor check fails");
                assert_eq!(failed.len(), 1, "pack {name}: {failed:?}");
                let f = failed[0];
                assert_eq!((f.name.as_str(), f.device.as_str()), (tensor.as_str(), bad_label.as_str()));
                assert!(f.detail.starts_with("reconstructed SHA-256"), "{}", f.detail);
                println!("pack {name}: [{}] {}: {}", f.device, f.name, f.detail);
            }
        }
    }
}

/// The CLI cannot be handed a faulty device, so the same check (reconstructed digest ≠
/// manifest digest) is made to fail there by a self-consistent manifest (the tensor's
/// digest and the weights digest both rewritten): `--all-devices` prints the tensor on
/// every device and exits 1.
#[test]
fn cli_names_tensor_and_device_for_a_reconstructed_digest_mismatch() {
    let t = tempfile::tempdir().unwrap();
    for (name, dir) in packs() {
        let pack = Pack::open(dir).unwrap();
        let (tensor, _) = target(&pack);
        let d = t.path().join(name);
        copy_dir(dir, &d);
        let mut m = pack.manifest.clone();
        let e = m.tensors.iter_mut().find(|e| e.name == tensor).unwrap();
        e.sha256 = ucw::digest::sha256_hex(b"some other tensor");
        m.weights_digest = ucw::digest::weights_digest(&m.tensors.iter().map(|t| t.digest()).collect::<Vec<_>>());
        std::fs::write(d.join(MANIFEST_FILE), m.to_bytes()).unwrap();
        let o = ucw(&["verify", d.to_str().unwrap(), "--all-devices"]);
        let text = out(&o);
        assert_eq!(o.status.code(), Some(1), "{text}");
        let last = text.lines().rfind(|l| l.starts_with("FAIL sha256:")).expect(&text);
        let devices: Vec<&str> = last.rsplit_once(" on ").unwrap().1.trim_end_matches(')').split(", ").collect();
        for d in common::devices() {
            assert!(devices.contains(&d.label.as_str()), "{} not verified: {last}", d.label);
        }
        let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL  ")).collect();
        assert_eq!(fails.len(), devices.len(), "pack {name}: one line per device\n{text}");
        for dev in &devices {
            let want = format!("FAIL  [{dev}] {tensor}: reconstructed SHA-256");
            assert!(fails.iter().any(|l| l.starts_with(&want)), "pack {name}: no `{want}`\n{text}");
        }
        println!("pack {name}: {}", fails.join(" | "));
    }
}

/// Flip one bit of each file of the pack (header and data of each safetensors file):
/// library verify with every device and `ucw verify --all-devices` fail, naming the file
/// and, for tensor data, the tensor holding the byte on every device.
#[test]
fn a_flipped_bit_in_every_file_kind_fails_on_every_device() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = Rng(2025);
    let backends = all_backends();
    let mut cases = 0;
    for (name, dir) in packs() {
        let pack = Pack::open(dir).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        for kind in [
            MANIFEST_FILE,
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "scaffold.safetensors",
            "layer-00000.safetensors",
            "layer-00001.safetensors",
        ] {
            assert!(names.iter().any(|n| n == kind), "pack {name} has no {kind}: {names:?}");
        }
        for file in &names {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            // (region, byte range, the manifest tensor owning the range's bytes if any)
            let mut regions: Vec<(String, std::ops::Range<usize>, Option<String>)> = Vec::new();
            if file == MANIFEST_FILE {
                // A decimal digit of a tensor's digest: the manifest stays canonical JSON,
                // so this reaches the reconstructed-digest comparison on every device.
                let (tensor, _) = target(&pack);
                let e = pack.manifest.tensors.iter().find(|e| e.name == tensor).unwrap();
                let at = std::str::from_utf8(&bytes).unwrap().find(&e.sha256).unwrap();
                let digit = e.sha256.bytes().position(|b| b.is_ascii_digit()).unwrap();
                regions.push(("digest digit".into(), at + digit..at + digit + 1, Some(tensor)));
            } else if file.ends_with(".safetensors") {
                let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
                regions.push(("header".into(), 0..n, None));
                // Independently of ucw's reader: the header's offsets of one tensor.
                let h: serde_json::Value = serde_json::from_slice(&bytes[8..n]).unwrap();
                let obj = h.as_object().unwrap();
                let stored: Vec<&String> = obj.keys().filter(|k| *k != "__metadata__").collect();
                let s = stored[rng.below(stored.len() as u64) as usize];
                let off = &obj[s]["data_offsets"];
                let (b, e) = (off[0].as_u64().unwrap() as usize, off[1].as_u64().unwrap() as usize);
                let owner =
                    if file == "scaffold.safetensors" { s.clone() } else { s.rsplit_once('.').unwrap().0.into() };
                regions.push((format!("data of {s}"), n + b..n + e, Some(owner)));
            } else {
                regions.push(("text".into(), 0..bytes.len(), None));
            }
            for (region, range, owner) in regions {
                let pos = range.start + rng.below(range.len() as u64) as usize;
                let d = t.path().join(format!("c{cases}"));
                copy_dir(dir, &d);
                let mut b = bytes.clone();
                b[pos] ^= if file == MANIFEST_FILE { 1 } else { 1 << rng.below(8) };
                std::fs::write(d.join(file), &b).unwrap();
                let what = format!("pack {name}, {file} {region}, byte {pos}");

                let damaged = Pack::open(&d).unwrap();
                let r = verify(&damaged, &backends, None).unwrap();
                assert!(!r.pass(), "{what}: passed");
                if file == MANIFEST_FILE {
                    assert!(r.files.is_empty(), "{what}: {:?}", r.files);
                    assert!(!r.weights_digest_ok, "{what}: weights digest");
                } else {
                    assert!(
                        r.files.iter().any(|p| &p.file == file && p.problem.starts_with("SHA-256")),
                        "{what}: {:?}",
                        r.files
                    );
                }
                if let Some(owner) = &owner {
                    for (label, _) in &backends {
                        assert!(
                            r.tensors.iter().any(|c| !c.ok && &c.name == owner && &c.device == label),
                            "{what}: {owner} not failed on {label}"
                        );
                    }
                }

                let o = ucw(&["verify", d.to_str().unwrap(), "--all-devices"]);
                let text = out(&o);
                assert_eq!(o.status.code(), Some(1), "{what}: {text}");
                if file != MANIFEST_FILE {
                    assert!(text.contains(&format!("FAIL  file {file}: SHA-256")), "{what}: {text}");
                }
                if let Some(owner) = &owner {
                    for (label, _) in &backends {
                        assert!(text.contains(&format!("FAIL  [{label}] {owner}: ")), "{what}: {label}\n{text}");
                    }
                }
                cases += 1;
            }
        }
    }
    let labels: Vec<_> = backends.iter().map(|b| b.0.as_str()).collect();
    println!("{cases} flipped-bit cases, every file kind of 2 packs: all fail on {}", labels.join(", "));
}

/// Every manifest field verify can check against the pack itself (docs/FORMAT.md §2),
/// edited with the manifest still canonical and no `--expect`: exit 1 and a line naming
/// the field. (Provenance — the source files, quantized tensors' source digests, the
/// calibration inputs — needs the source; `--expect` covers it: see tests/pack.rs.)
#[test]
fn self_consistent_manifest_edits_of_checkable_fields_fail() {
    let t = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for (name, dir) in packs() {
        let pack = Pack::open(dir).unwrap();
        let m = &pack.manifest;
        let q = m.tensors.iter().position(|e| e.kind == Kind::Quantized).unwrap();
        let raw = m.tensors.iter().position(|e| e.kind == Kind::Raw).unwrap();
        let qname = m.tensors[q].name.clone();
        let rname = m.tensors[raw].name.clone();
        let bits = m.tensors[q].bits.unwrap();
        let rank = m.tensors[q].rank.unwrap();
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let edits: Vec<(&str, Edit, String)> = vec![
            (
                "tensor bits",
                Box::new(move |v| v["tensors"][q]["bits"] = (if bits == 5 { 6 } else { 5 }).into()),
                format!("tensor \"{qname}\": bits"),
            ),
            (
                "tensor rank",
                Box::new(move |v| v["tensors"][q]["rank"] = (rank + 1).into()),
                format!("tensor \"{qname}\": bits"),
            ),
            (
                "raw tensor with bits",
                Box::new(move |v| v["tensors"][raw]["bits"] = 5.into()),
                format!("raw tensor \"{rname}\" has bits"),
            ),
            (
                "raw tensor's source digest",
                Box::new(move |v| {
                    for s in v["source"]["tensors"].as_array_mut().unwrap() {
                        if s["name"] == rname.as_str() {
                            s["sha256"] = ucw::digest::sha256_hex(b"x").into();
                        }
                    }
                }),
                "source.tensors digest is not its own".into(),
            ),
            ("group size", Box::new(|v| v["codec"]["parameters"]["group_size"] = 32.into()), "group size".into()),
            ("codec bits", Box::new(|v| v["codec"]["parameters"]["bits"] = 2.into()), "codec.parameters.bits".into()),
            (
                "uniform width claimed",
                Box::new(|v| {
                    v["codec"]["parameters"].as_object_mut().unwrap().remove("bit_alloc");
                }),
                "do not fit codec.parameters.bits".into(),
            ),
            ("fixed rank", Box::new(|v| v["codec"]["parameters"]["rank"] = "0".into()), "exceeds".into()),
            (
                "rank spelling",
                Box::new(|v| v["codec"]["parameters"]["rank"] = "04".into()),
                "codec.parameters.rank".into(),
            ),
            (
                "out dtype",
                Box::new(|v| v["codec"]["parameters"]["out_dtype"] = "F32".into()),
                "codec.parameters.out_dtype is F32".into(),
            ),
            (
                "target bpw",
                Box::new(|v| v["codec"]["parameters"]["target_bpw"]["weights"] = 0.into()),
                "target_bpw".into(),
            ),
            ("codec name", Box::new(|v| v["codec"]["name"] = "ucw-q2".into()), "codec is ucw-q2".into()),
            (
                "codec version unknown",
                Box::new(|v| v["codec"]["version"] = (ucw::codec::CODEC_VERSION + 1).into()),
                "codec is".into(),
            ),
            (
                "tool codec version",
                Box::new(|v| v["tool"]["codec_version"] = (ucw::codec::CODEC_VERSION + 1).into()),
                "tool.codec_version".into(),
            ),
            // An earlier version this build decodes, named by both fields: the layer files
            // still say which version wrote them.
            (
                "codec version earlier",
                Box::new(|v| {
                    v["codec"]["version"] = 1.into();
                    v["tool"]["codec_version"] = 1.into();
                }),
                format!("codec version {}, the manifest says 1", ucw::codec::CODEC_VERSION),
            ),
            (
                "linears bits",
                Box::new(move |v| inc(&mut v["bits_per_weight"]["linears"]["bits"])),
                "bits_per_weight.linears.bits".into(),
            ),
            (
                "linears weights",
                Box::new(move |v| inc(&mut v["bits_per_weight"]["linears"]["weights"])),
                "bits_per_weight.linears.weights".into(),
            ),
            (
                "pack bits",
                Box::new(move |v| inc(&mut v["bits_per_weight"]["pack"]["bits"])),
                "bits_per_weight.pack.bits".into(),
            ),
            (
                "pack weights",
                Box::new(move |v| inc(&mut v["bits_per_weight"]["pack"]["weights"])),
                "bits_per_weight.pack.weights".into(),
            ),
            (
                "copied file's source entry",
                Box::new(|v| {
                    for f in v["source"]["files"].as_array_mut().unwrap() {
                        if f["name"] == "config.json" {
                            inc(&mut f["size"]);
                        }
                    }
                }),
                "config.json: its source.files entry".into(),
            ),
            (
                "calibration tokenizer",
                Box::new(|v| v["codec"]["calibration"]["tokenizer_sha256"] = ucw::digest::sha256_hex(b"x").into()),
                "codec.calibration.tokenizer_sha256".into(),
            ),
        ];
        for (what, edit, want) in edits {
            let d = t.path().join(format!("e{cases}"));
            copy_dir(dir, &d);
            let p = d.join(MANIFEST_FILE);
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            let before = v.clone();
            edit(&mut v);
            assert_ne!(v, before, "pack {name}: {what} edited nothing");
            std::fs::write(&p, ucw::digest::canonical_json(&v)).unwrap();
            let o = ucw(&["verify", d.to_str().unwrap(), "--device", "cpu"]);
            let text = out(&o);
            assert_eq!(o.status.code(), Some(1), "pack {name}: {what}\n{text}");
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("FAIL  file {MANIFEST_FILE}: ")) && l.contains(&want))
                .unwrap_or_else(|| panic!("pack {name}: {what}: no manifest line with `{want}`\n{text}"));
            println!("pack {name}, {what}: {line}");
            // The commands that read a pack refuse it before reading anything else (exit 1,
            // naming the manifest), as they refuse a damaged file.
            let ds = d.to_str().unwrap();
            let x = t.path().join(format!("x{cases}"));
            let text = root().join("tests/fixtures/text/sample.txt");
            for args in [
                vec!["info", ds],
                vec!["export", ds, "-o", x.to_str().unwrap()],
                vec![
                    "eval",
                    ds,
                    "--text",
                    text.to_str().unwrap(),
                    "--seq-len",
                    "16",
                    "--windows",
                    "1",
                    "--device",
                    "cpu",
                ],
            ] {
                let o = ucw(&args);
                let text = out(&o);
                assert_eq!(o.status.code(), Some(1), "pack {name}: {what}: ucw {}\n{text}", args[0]);
                // They name the first problem; verify lists them all (checked above).
                let refused = format!("file {MANIFEST_FILE}");
                assert!(
                    text.contains(&refused) && text.contains("run `ucw verify`"),
                    "pack {name}: {what}: ucw {}\n{text}",
                    args[0]
                );
            }
            assert!(!x.exists(), "pack {name}: {what}: export wrote a directory");
            cases += 1;
        }
    }
    println!("{cases} self-consistent manifest edits: all exit 1 naming the field");
}
