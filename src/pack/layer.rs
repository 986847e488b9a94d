//! Quantized linears in layer files: three U8 tensors per linear and their codec
//! parameters in the file's `__metadata__` (docs/FORMAT.md).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

use rayon::prelude::*;

use super::stfile::OutTensor;
use super::{bits, rans};
use crate::digest::canonical_json;
use crate::dtype::DType;
use crate::error::Result;
use crate::fixed::quant::{MAX_GROUP_SIZE, MAX_RANK, OVERLAY_EXP_RANGE, Overlay, QuantParams, QuantTensor};
use crate::model::weights::SafetensorsFile;

pub const CODEC_NAME: &str = "ucw-q1";
pub const METADATA_KEY: &str = "ucw";

/// Per-tensor codec parameters stored in the layer file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantMeta {
    pub base_exp: i32,
    pub bits: u32,
    pub group_size: u32,
    pub out_dtype: DType,
    /// Exponent of the low-rank overlay; present exactly when rank > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_exp: Option<i32>,
    pub rank: u32,
    pub shape: [u64; 2],
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerMeta {
    pub codec: String,
    pub codec_version: u32,
    pub tensors: BTreeMap<String, QuantMeta>,
}

impl LayerMeta {
    pub fn new() -> Self {
        LayerMeta { codec: CODEC_NAME.into(), codec_version: crate::codec::CODEC_VERSION, tensors: BTreeMap::new() }
    }

    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        let json = String::from_utf8(canonical_json(self)).expect("canonical JSON is UTF-8");
        BTreeMap::from([(METADATA_KEY.to_string(), json)])
    }

    pub fn from_file(f: &SafetensorsFile) -> Result<LayerMeta> {
        let text = f
            .metadata
            .get(METADATA_KEY)
            .ok_or_else(|| bad_input!("{}: no \"{METADATA_KEY}\" entry in __metadata__", f.path.display()))?;
        let m: LayerMeta =
            serde_json::from_str(text).map_err(|e| bad_input!("{}: invalid codec metadata: {e}", f.path.display()))?;
        if m.codec != CODEC_NAME || !crate::codec::DECODES.contains(&m.codec_version) {
            return Err(bad_input!(
                "{}: codec {} version {}; this build decodes {CODEC_NAME} versions {} to {}",
                f.path.display(),
                m.codec,
                m.codec_version,
                crate::codec::DECODES.start(),
                crate::codec::DECODES.end()
            ));
        }
        Ok(m)
    }
}

impl Default for LayerMeta {
    fn default() -> Self {
        Self::new()
    }
}

/// Rows per rANS stream (FORMAT.md §4.1): streams decode independently, in parallel.
pub const ROWS_PER_STREAM: usize = 64;

/// A linear's codes as codec version 3 stores them (FORMAT.md §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedCodes {
    /// The streams, concatenated.
    pub rans: Vec<u8>,
    pub freq: Vec<u16>,
    /// Byte length of each stream.
    pub lens: Vec<u32>,
}

impl CodedCodes {
    /// Stored bytes of the three tensors.
    pub fn bytes(&self) -> u64 {
        (self.rans.len() + 2 * self.freq.len() + 4 * self.lens.len()) as u64
    }
}

/// The symbols of rows [r0, r1): each code relative to its group's zero point, offset to be
/// non-negative (q − z + 2^b − 1, below 2^(b+1) − 1).
fn symbols(q: &QuantTensor, r0: usize, r1: usize, out: &mut Vec<u16>) {
    let (g, gpr, off) = (q.params.group_size as usize, q.groups_per_row(), (1u16 << q.params.bits) - 1);
    out.clear();
    for r in r0..r1 {
        let (codes, zeros) = (&q.codes[r * q.cols..(r + 1) * q.cols], &q.zeros[r * gpr..(r + 1) * gpr]);
        out.extend(codes.iter().enumerate().map(|(c, &v)| v as u16 + off - zeros[c / g] as u16));
    }
}

/// Entropy-code a linear's codes: one frequency table for the tensor, one rANS stream per
/// ROWS_PER_STREAM rows (encoded in parallel; the bytes do not depend on the thread count).
pub fn code_codes(q: &QuantTensor) -> CodedCodes {
    let alphabet = (1usize << (q.params.bits + 1)) - 1;
    let streams: Vec<(usize, usize)> =
        (0..q.rows).step_by(ROWS_PER_STREAM).map(|r0| (r0, (r0 + ROWS_PER_STREAM).min(q.rows))).collect();
    let counts = streams
        .par_iter()
        .map(|&(r0, r1)| {
            let mut s = Vec::new();
            symbols(q, r0, r1, &mut s);
            let mut c = vec![0u64; alphabet];
            for &v in &s {
                c[v as usize] += 1;
            }
            c
        })
        .reduce(|| vec![0u64; alphabet], |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect());
    // Codes below 2^b and zero points below 2^b (QuantTensor's invariant) keep every symbol in
    // the alphabet; the table has at least one present symbol since rows, cols ≥ 1.
    let table = rans::FreqTable::from_counts(&counts).expect("a non-empty tensor's counts");
    let coded: Vec<Vec<u8>> = streams
        .par_iter()
        .map(|&(r0, r1)| {
            let mut s = Vec::new();
            symbols(q, r0, r1, &mut s);
            rans::encode(&s, &table).expect("every symbol was counted")
        })
        .collect();
    CodedCodes {
        lens: coded.iter().map(|c| c.len() as u32).collect(),
        rans: coded.concat(),
        freq: table.freqs().to_vec(),
    }
}

/// Inverse of `code_codes` for a tensor of `rows` × `cols` with its zero points (unpacked),
/// checking every rule of FORMAT.md §4.1; errors name the file and tensor.
pub fn decode_codes(
    c: &CodedCodes,
    zeros: &[u8],
    rows: usize,
    cols: usize,
    p: QuantParams,
    what: &str,
) -> Result<Vec<u8>> {
    let table = rans::FreqTable::from_freqs(c.freq.clone()).map_err(|e| bad_input!("{what}: {e}"))?;
    let total: u64 = c.lens.iter().map(|&l| l as u64).sum();
    if total != c.rans.len() as u64 {
        return Err(bad_input!("{what}: stream lengths sum to {total}, the streams hold {} bytes", c.rans.len()));
    }
    let (g, gpr, off) = (p.group_size as usize, cols.div_ceil(p.group_size as usize), (1i32 << p.bits) - 1);
    let mut starts = Vec::with_capacity(c.lens.len());
    let mut at = 0usize;
    for &l in &c.lens {
        starts.push(at);
        at += l as usize;
    }
    let mut codes = vec![0u8; rows * cols];
    codes.par_chunks_mut(ROWS_PER_STREAM * cols).zip(starts.par_iter().zip(&c.lens)).enumerate().try_for_each(
        |(k, (out, (&s, &l)))| -> Result<()> {
            let mut sym = vec![0u16; out.len()];
            rans::decode(&c.rans[s..s + l as usize], &table, &mut sym)
                .map_err(|e| bad_input!("{what}: stream {k}: {e}"))?;
            for (i, (o, &d)) in out.iter_mut().zip(&sym).enumerate() {
                let (r, col) = (k * ROWS_PER_STREAM + i / cols, i % cols);
                let q = d as i32 + zeros[r * gpr + col / g] as i32 - off;
                if !(0..=off).contains(&q) {
                    return Err(bad_input!("{what}: row {r} column {col}: code {q} outside 0..={off}"));
                }
                *o = q as u8;
            }
            Ok(())
        },
    )?;
    Ok(codes)
}

/// The stored tensors of one quantized linear (bytes owned), as codec version CODEC_VERSION
/// writes them: codes rANS-coded (§4.1), scales and zero points as bytes and bit-packed.
pub fn encode(name: &str, q: &QuantTensor) -> Vec<OutTensor<'static>> {
    let b = q.params.bits;
    let gpr = q.groups_per_row();
    let rows = q.rows as u64;
    let c = code_codes(q);
    let le = |v: &[u8]| Cow::Owned(v.to_vec());
    let mut out = vec![
        OutTensor { name: format!("{name}.rans"), dtype: "U8", shape: vec![c.rans.len() as u64], data: le(&c.rans) },
        OutTensor {
            name: format!("{name}.rans_freq"),
            dtype: "U16",
            shape: vec![c.freq.len() as u64],
            data: Cow::Owned(c.freq.iter().flat_map(|x| x.to_le_bytes()).collect()),
        },
        OutTensor {
            name: format!("{name}.rans_len"),
            dtype: "U32",
            shape: vec![c.lens.len() as u64],
            data: Cow::Owned(c.lens.iter().flat_map(|x| x.to_le_bytes()).collect()),
        },
        OutTensor {
            name: format!("{name}.scales"),
            dtype: "U8",
            shape: vec![rows, gpr as u64],
            data: Cow::Owned(q.scales.clone()),
        },
        OutTensor {
            name: format!("{name}.zeros"),
            dtype: "U8",
            shape: vec![rows, bits::row_bytes(gpr, b) as u64],
            data: Cow::Owned(bits::pack(&q.zeros, gpr, b)),
        },
    ];
    if let Some(o) = &q.overlay {
        let r = o.rank as u64;
        let le16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bytes8 = |v: &[i8]| v.iter().map(|&x| x as u8).collect::<Vec<u8>>();
        out.push(OutTensor {
            name: format!("{name}.u"),
            dtype: "I8",
            shape: vec![rows, r],
            data: Cow::Owned(bytes8(&o.u)),
        });
        out.push(OutTensor {
            name: format!("{name}.u_scale"),
            dtype: "U16",
            shape: vec![rows],
            data: Cow::Owned(le16(&o.mu)),
        });
        out.push(OutTensor {
            name: format!("{name}.v"),
            dtype: "I8",
            shape: vec![r, q.cols as u64],
            data: Cow::Owned(bytes8(&o.v)),
        });
        out.push(OutTensor {
            name: format!("{name}.v_scale"),
            dtype: "U16",
            shape: vec![r],
            data: Cow::Owned(le16(&o.mv)),
        });
    }
    out
}

/// Stored bytes of a linear's codes, scales and zero points (no overlay): what its width
/// costs, which compression needs before it chooses the width (§6).
pub fn base_stored_bytes(q: &QuantTensor) -> u64 {
    let gpr = q.groups_per_row();
    code_codes(q).bytes() + (q.rows * (gpr + bits::row_bytes(gpr, q.params.bits))) as u64
}

/// Read one quantized linear back, checking every shape against the metadata before
/// allocating (sizes are bounded by the tensor bytes actually in the file).
pub fn decode(f: &SafetensorsFile, meta: &LayerMeta, name: &str) -> Result<(QuantTensor, DType)> {
    let file = f.path.display();
    let m = meta.tensors.get(name).ok_or_else(|| bad_input!("{file}: no codec metadata for tensor \"{name}\""))?;
    // |base_exp| is bounded so exponent arithmetic cannot overflow; beyond ±4096 no value
    // is representable in any output dtype anyway.
    if !(2..=8).contains(&m.bits)
        || m.group_size == 0
        || m.group_size > MAX_GROUP_SIZE
        || m.rank as usize > MAX_RANK
        || (m.rank > 0) != m.overlay_exp.is_some()
        || m.overlay_exp.is_some_and(|e| !OVERLAY_EXP_RANGE.contains(&(e.saturating_sub(m.base_exp))))
        || m.base_exp.unsigned_abs() > 4096
    {
        return Err(bad_input!("{file}: tensor \"{name}\": unsupported parameters {m:?}"));
    }
    let (rows, cols) = (m.shape[0] as usize, m.shape[1] as usize);
    if rows == 0 || cols == 0 {
        return Err(bad_input!("{file}: tensor \"{name}\": empty shape {:?}", m.shape));
    }
    let gpr = cols.div_ceil(m.group_size as usize);
    let get = |suffix: &str, dtype: safetensors::Dtype, want: &[usize]| -> Result<&[u8]> {
        let full = format!("{name}.{suffix}");
        let v = f.tensor(&full).ok_or_else(|| bad_input!("{file}: missing tensor \"{full}\""))?;
        if v.dtype != dtype || v.shape != want {
            return Err(bad_input!(
                "{file}: tensor \"{full}\" is {} {:?}, expected {dtype:?} {want:?}",
                v.dtype_name(),
                v.shape
            ));
        }
        Ok(v.bytes)
    };
    use safetensors::Dtype::{I8, U8, U16, U32};
    let scales = get("scales", U8, &[rows, gpr])?;
    let zeros_b = get("zeros", U8, &[rows, bits::row_bytes(gpr, m.bits)])?;
    // Nothing of rows · cols elements is allocated before data in the file bounds it: the
    // scales matched [rows, ceil(cols / G)] with G ≤ 4096, so rows · cols ≤ 4096 × their
    // bytes (an rANS stream alone bounds nothing: one certain symbol costs no bytes).
    let params = QuantParams { bits: m.bits, group_size: m.group_size };
    let zeros = bits::unpack(zeros_b, rows, gpr, m.bits);
    let codes = if meta.codec_version >= 3 {
        let streams = rows.div_ceil(ROWS_PER_STREAM);
        let alphabet = (1usize << (m.bits + 1)) - 1;
        let rans =
            f.tensor(&format!("{name}.rans")).ok_or_else(|| bad_input!("{file}: missing tensor \"{name}.rans\""))?;
        if rans.dtype != U8 || rans.shape.len() != 1 {
            return Err(bad_input!(
                "{file}: tensor \"{name}.rans\" is {} {:?}, expected U8 [n]",
                rans.dtype_name(),
                rans.shape
            ));
        }
        let le16 = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>();
        let le32 =
            |b: &[u8]| b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<u32>>();
        let c = CodedCodes {
            rans: rans.bytes.to_vec(),
            freq: le16(get("rans_freq", U16, &[alphabet])?),
            lens: le32(get("rans_len", U32, &[streams])?),
        };
        if f.tensor(&format!("{name}.codes")).is_some() {
            return Err(bad_input!(
                "{file}: tensor \"{name}.codes\" in a codec version {} file (codes are rANS-coded)",
                meta.codec_version
            ));
        }
        decode_codes(&c, &zeros, rows, cols, params, &format!("{file}: tensor \"{name}\""))?
    } else {
        let codes_b = get("codes", U8, &[rows, bits::row_bytes(cols, m.bits)])?;
        bits::unpack(codes_b, rows, cols, m.bits)
    };
    let overlay = match m.overlay_exp {
        None => None,
        Some(exp) => {
            let r = m.rank as usize;
            let i8s = |b: &[u8]| b.iter().map(|&x| x as i8).collect::<Vec<i8>>();
            let u16s = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>();
            let u = i8s(get("u", I8, &[rows, r])?);
            let v = i8s(get("v", I8, &[r, cols])?);
            if u.iter().chain(&v).any(|&x| x == i8::MIN) {
                return Err(bad_input!("{file}: tensor \"{name}\": overlay value -128 is outside [-127, 127]"));
            }
            Some(Overlay {
                rank: r,
                exp,
                u,
                mu: u16s(get("u_scale", U16, &[rows])?),
                v,
                mv: u16s(get("v_scale", U16, &[r])?),
            })
        }
    };
    Ok((
        QuantTensor { rows, cols, params, base_exp: m.base_exp, codes, scales: scales.to_vec(), zeros, overlay },
        m.out_dtype,
    ))
}
