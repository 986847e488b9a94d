//! `ucw verify`: file checks first, then every tensor rebuilt on each device and compared
//! with the manifest's digest (DESIGN §5, §7).

use std::collections::BTreeSet;

use super::{COPIED_FILES, FileProblem, Kind, OpenFiles, Pack, layer};
use crate::backend::Backend;
use crate::digest::{sha256_hex, weights_digest};
use crate::dtype::DType;
use crate::error::Result;
use crate::fixed::quant::MAX_RANK;

#[derive(Debug, Clone)]
pub struct TensorCheck {
    pub name: String,
    pub device: String,
    pub ok: bool,
    /// "reconstructed digest matches", or what went wrong.
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub pack_digest: String,
    pub expect_ok: Option<bool>,
    pub files: Vec<FileProblem>,
    pub weights_digest_ok: bool,
    pub tensors: Vec<TensorCheck>,
}

impl Report {
    pub fn pass(&self) -> bool {
        self.expect_ok != Some(false)
            && self.files.is_empty()
            && self.weights_digest_ok
            && self.tensors.iter().all(|t| t.ok)
    }
}

fn expected_len(dtype: &str, shape: &[u64]) -> Option<u64> {
    let size = match dtype {
        "BF16" | "F16" => 2,
        "F32" => 4,
        _ => return None,
    };
    shape.iter().try_fold(size, |acc: u64, &d| acc.checked_mul(d))
}

/// Verify `pack` on every backend given. Errors only for what cannot be checked at all.
pub fn verify(pack: &Pack, backends: &[(String, &dyn Backend)], expect: Option<&str>) -> Result<Report> {
    let pack_digest = pack.digest();
    let expect_ok = match expect {
        Some(d) => Some(super::manifest::normalize_digest(d)? == pack_digest),
        None => None,
    };
    // (A manifest problem puts the manifest in `bad_files`; no tensor lives in it.)
    let files = pack.check()?;
    let bad_files: BTreeSet<String> = files.iter().map(|p| p.file.clone()).collect();
    let m = &pack.manifest;
    let digests: Vec<_> = m.tensors.iter().map(|t| t.digest()).collect();
    let weights_digest_ok = weights_digest(&digests) == m.weights_digest;
    let listed: BTreeSet<&str> = m.files.iter().map(|f| f.name.as_str()).collect();
    let mut tensors = Vec::new();
    for (label, backend) in backends {
        let mut open = OpenFiles::default();
        for t in &m.tensors {
            let check =
                |ok: bool, detail: String| TensorCheck { name: t.name.clone(), device: label.clone(), ok, detail };
            if !listed.contains(t.file.as_str()) {
                tensors.push(check(false, format!("its file {} is not listed in the manifest", t.file)));
                continue;
            }
            // A file that failed its check is still read (bounded, after the check) so the
            // report can name the damaged tensors, but none of its tensors can pass.
            let file_failed = bad_files.contains(&t.file);
            if DType::from_safetensors_name(&t.dtype).is_none() {
                tensors.push(check(false, format!("unsupported dtype {}", t.dtype)));
                continue;
            }
            match pack.tensor_bytes(*backend, t, &mut open) {
                // A damaged entropy-coded stream is refused rather than decoded to other codes.
                Err(e) if file_failed => {
                    tensors.push(check(false, format!("damaged: {} failed its file check and {}", t.file, e.message)))
                }
                Err(e) => tensors.push(check(false, e.message)),
                Ok(bytes) if file_failed => {
                    let same = sha256_hex(&bytes) == t.sha256;
                    let detail = if same {
                        format!("digest matches, but {} failed its file check", t.file)
                    } else {
                        format!("damaged: {} failed its file check and this tensor's digest differs", t.file)
                    };
                    tensors.push(check(false, detail));
                }
                Ok(bytes) => {
                    let len_ok = expected_len(&t.dtype, &t.shape) == Some(bytes.len() as u64);
                    let sha = sha256_hex(&bytes);
                    if !len_ok {
                        tensors.push(check(
                            false,
                            format!("{} bytes do not match {} {:?}", bytes.len(), t.dtype, t.shape),
                        ));
                    } else if sha != t.sha256 {
                        tensors.push(check(false, format!("reconstructed SHA-256 {sha}, manifest says {}", t.sha256)));
                    } else {
                        tensors.push(check(true, "digest matches".into()));
                    }
                }
            }
        }
    }
    Ok(Report { pack_digest, expect_ok, files, weights_digest_ok, tensors })
}

/// What the manifest says about the pack's own content that the pack contradicts (docs/
/// FORMAT.md §2): each quantized entry's bits and rank against its layer file's metadata,
/// `codec` and its parameters against every tensor, `bits_per_weight` recounted from the
/// files, raw tensors' source digests (a raw tensor is the source tensor), the copied
/// files' source entries and the calibration's tokenizer digest against the pack's copies.
/// Files that failed their check are not read here (they are reported already). Pure
/// provenance (the source's weight files, quantized tensors' source digests, the source
/// weights digest, model type, calibration inputs, tool name) needs the source and is
/// covered by the pack digest (`--expect`) only.
fn opt(v: Option<u32>) -> String {
    v.map_or("none".into(), |v| v.to_string())
}

pub(crate) fn manifest_problems(pack: &Pack, bad_files: &BTreeSet<String>) -> Vec<String> {
    let m = &pack.manifest;
    let params = &m.codec.parameters;
    let mut p = Vec::new();
    if m.codec.name != layer::CODEC_NAME || !crate::codec::DECODES.contains(&m.codec.version) {
        p.push(format!(
            "codec is {} version {}; this build decodes {} versions {} to {}",
            m.codec.name,
            m.codec.version,
            layer::CODEC_NAME,
            crate::codec::DECODES.start(),
            crate::codec::DECODES.end()
        ));
    }
    if m.tool.codec_version != m.codec.version {
        p.push(format!("tool.codec_version {} is not codec.version {}", m.tool.codec_version, m.codec.version));
    }
    if !(2..=8).contains(&params.bits) {
        p.push(format!("codec.parameters.bits {} is outside 2..=8", params.bits));
    }
    let mixed = match params.bit_alloc.as_deref() {
        None => false,
        Some("mixed") if m.codec.calibration.is_some() => true,
        Some(other) => {
            p.push(format!("codec.parameters.bit_alloc \"{other}\" (only \"mixed\", in a calibrated pack)"));
            true
        }
    };
    let fixed_rank = match params.rank.as_str() {
        "auto" => None,
        s => match s.parse::<u32>() {
            Ok(n) if n.to_string() == s && n as usize <= MAX_RANK => Some(n),
            _ => {
                p.push(format!("codec.parameters.rank \"{s}\" is neither \"auto\" nor a rank 0..={MAX_RANK}"));
                None
            }
        },
    };
    let wants_target = params.rank == "auto" || params.bit_alloc.is_some();
    match params.target_bpw {
        Some(t) if !wants_target || t.weights == 0 => p.push(format!(
            "codec.parameters.target_bpw {}/{}: only with rank \"auto\" or bit_alloc, and weights >= 1",
            t.bits, t.weights
        )),
        None if wants_target => p.push("codec.parameters.target_bpw missing".into()),
        _ => {}
    }
    let out_dtype = match params.out_dtype.as_str() {
        "source" => None,
        s if DType::from_safetensors_name(s).is_some() => Some(s),
        s => {
            p.push(format!("codec.parameters.out_dtype \"{s}\" is not source, BF16, F16 or F32"));
            None
        }
    };
    let source: std::collections::BTreeMap<&str, &str> =
        m.source.tensors.iter().map(|t| (t.name.as_str(), t.sha256.as_str())).collect();
    let mut open = OpenFiles::default();
    // Layer files whose codec version differs from the manifest's, named once each.
    let mut versions_named = BTreeSet::new();
    // None once something could not be counted (a damaged file, reported elsewhere).
    let (mut linear_bits, mut linear_weights, mut all_weights) = (Some(0u64), Some(0u64), Some(0u64));
    let add = |acc: &mut Option<u64>, v: Option<u64>| *acc = acc.zip(v).and_then(|(a, b)| a.checked_add(b));
    for t in &m.tensors {
        let name = &t.name;
        let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        add(&mut all_weights, numel);
        if t.kind == Kind::Raw {
            if t.bits.is_some() || t.rank.is_some() {
                p.push(format!("raw tensor \"{name}\" has bits or rank"));
            }
            if source.get(name.as_str()) != Some(&t.sha256.as_str()) {
                p.push(format!("raw tensor \"{name}\": its source.tensors digest is not its own"));
            }
            continue;
        }
        if let Some(d) = out_dtype
            && t.dtype != d
        {
            p.push(format!("tensor \"{name}\": dtype {}, codec.parameters.out_dtype is {d}", t.dtype));
        }
        let meta = if bad_files.contains(&t.file) {
            None
        } else {
            match open.get(&pack.dir, &t.file, true) {
                Ok((f, Some(meta))) => {
                    if meta.codec_version != m.codec.version && versions_named.insert(t.file.clone()) {
                        p.push(format!(
                            "{}: codec version {}, the manifest says {}",
                            t.file, meta.codec_version, m.codec.version
                        ));
                    }
                    meta.tensors.get(name).map(|q| (f, q))
                }
                _ => None,
            }
        };
        // A tensor without readable metadata fails its own check; nothing to compare.
        let Some((f, q)) = meta else {
            linear_bits = None;
            continue;
        };
        if t.bits != Some(q.bits) || t.rank != Some(q.rank) {
            p.push(format!(
                "tensor \"{name}\": bits {} rank {}, {} metadata says bits {} rank {}",
                opt(t.bits),
                opt(t.rank),
                t.file,
                q.bits,
                q.rank
            ));
        }
        if q.group_size != params.group_size {
            p.push(format!(
                "tensor \"{name}\": group size {} in {}, codec.parameters.group_size is {}",
                q.group_size, t.file, params.group_size
            ));
        }
        if (!mixed && q.bits != params.bits) || q.bits.abs_diff(params.bits) > 1 {
            p.push(format!("tensor \"{name}\": bits {} do not fit codec.parameters.bits {}", q.bits, params.bits));
        }
        if fixed_rank.is_some_and(|n| q.rank > n) || q.rank as usize > MAX_RANK {
            p.push(format!("tensor \"{name}\": rank {} exceeds codec.parameters.rank {}", q.rank, params.rank));
        }
        let stored = ["codes", "rans", "rans_freq", "rans_len", "scales", "zeros", "u", "u_scale", "v", "v_scale"]
            .iter()
            .filter_map(|s| f.tensor(&format!("{name}.{s}")))
            .map(|v| v.bytes.len() as u64)
            .sum::<u64>();
        add(&mut linear_bits, stored.checked_mul(8));
        add(&mut linear_weights, numel);
    }
    // The pack figure counts every safetensors file's data bytes.
    let mut pack_bits = Some(0u64);
    for f in m.files.iter().filter(|f| f.name.ends_with(".safetensors")) {
        match (bad_files.contains(&f.name), open.get(&pack.dir, &f.name, false)) {
            (false, Ok((st, _))) => {
                let bytes: u64 = st.names().filter_map(|n| st.tensor(n)).map(|v| v.bytes.len() as u64).sum();
                add(&mut pack_bits, bytes.checked_mul(8));
            }
            _ => pack_bits = None,
        }
    }
    let bpw = &m.bits_per_weight;
    for (what, claimed, counted) in [
        ("linears.bits", bpw.linears.bits, linear_bits),
        ("linears.weights", bpw.linears.weights, linear_weights.filter(|_| linear_bits.is_some())),
        ("pack.bits", bpw.pack.bits, pack_bits),
        ("pack.weights", bpw.pack.weights, all_weights),
    ] {
        if let Some(c) = counted
            && c != claimed
        {
            p.push(format!("bits_per_weight.{what} is {claimed}, the pack holds {c}"));
        }
    }
    // Files copied verbatim: their source entries are the pack's entries.
    for name in COPIED_FILES {
        let in_pack = m.files.iter().find(|f| f.name == *name);
        let in_source = m.source.files.iter().find(|f| f.name == *name);
        if in_pack != in_source {
            p.push(format!("{name}: its source.files entry is not the copy in the pack"));
        }
    }
    if let Some(c) = m.codec.calibration.as_ref().filter(|c| c["input"] == "text") {
        let tok = m.files.iter().find(|f| f.name == "tokenizer.json").map(|f| f.sha256.as_str());
        if c["tokenizer_sha256"].as_str() != tok {
            p.push("codec.calibration.tokenizer_sha256 is not the digest of the pack's tokenizer.json".into());
        }
    }
    p
}
