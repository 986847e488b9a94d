//! Quantized linears in layer files: each linear's rANS streams (codec version 4; versions
//! 1–3 are read too) and overlay, and their codec parameters in the file's `__metadata__`
//! (docs/FORMAT.md §4).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

use super::bits;
use super::coded::{self, Layout, Streams};
use super::stfile::OutTensor;
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

/// The stored tensors of one quantized linear (bytes owned), as codec version CODEC_VERSION
/// writes them: codes, scale codes and zero points in rANS streams (FORMAT.md §4.2), the
/// overlay as bytes.
pub fn encode(name: &str, q: &QuantTensor) -> Vec<OutTensor<'static>> {
    let rows = q.rows as u64;
    let c = coded::encode(q, Layout::Whole);
    let mut out = vec![
        OutTensor {
            name: format!("{name}.rans"),
            dtype: "U8",
            shape: vec![c.rans.len() as u64],
            data: Cow::Owned(c.rans),
        },
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
    coded::encode(q, Layout::Whole).bytes()
}

/// Most elements a quantized linear may have when its codes are rANS-coded (2^31, over twice
/// the largest linear of a 405B-parameter model): the bound on what reading one allocates.
pub const MAX_CODED_ELEMENTS: usize = 1 << 31;

/// Read one quantized linear back, checking every shape against the metadata before
/// allocating (bit-packed sizes are bounded by the tensor bytes actually in the file, coded
/// ones by MAX_CODED_ELEMENTS).
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
    let params = QuantParams { bits: m.bits, group_size: m.group_size };
    let what = format!("{file}: tensor \"{name}\"");
    // The stored scale codes and zero points (bit-packed), where the layout keeps them out of
    // the streams.
    let stored = || -> Result<(Vec<u8>, Vec<u8>)> {
        let scales = get("scales", U8, &[rows, gpr])?.to_vec();
        let zeros = bits::unpack(get("zeros", U8, &[rows, bits::row_bytes(gpr, m.bits)])?, rows, gpr, m.bits);
        Ok((scales, zeros))
    };
    let (codes, scales, zeros) = match Layout::of_version(meta.codec_version) {
        None => {
            // Nothing of rows · cols is allocated before the packed codes' bytes bound it.
            let codes_b = get("codes", U8, &[rows, bits::row_bytes(cols, m.bits)])?;
            let (scales, zeros) = stored()?;
            (bits::unpack(codes_b, rows, cols, m.bits), scales, zeros)
        }
        Some(layout) => {
            // An rANS stream bounds no size (a certain symbol costs no bytes), so the shape
            // is bounded outright before anything that size is allocated.
            if rows.checked_mul(cols).is_none_or(|n| n > MAX_CODED_ELEMENTS) {
                return Err(bad_input!("{what}: shape {:?} beyond {MAX_CODED_ELEMENTS} elements", m.shape));
            }
            for absent in if layout == Layout::Whole { &["codes", "scales", "zeros"][..] } else { &["codes"][..] } {
                if f.tensor(&format!("{name}.{absent}")).is_some() {
                    return Err(bad_input!(
                        "{file}: tensor \"{name}.{absent}\" in a codec version {} file (stored in its rANS streams)",
                        meta.codec_version
                    ));
                }
            }
            let rans = f
                .tensor(&format!("{name}.rans"))
                .ok_or_else(|| bad_input!("{file}: missing tensor \"{name}.rans\""))?;
            if rans.dtype != U8 || rans.shape.len() != 1 {
                return Err(bad_input!(
                    "{file}: tensor \"{name}.rans\" is {} {:?}, expected U8 [n]",
                    rans.dtype_name(),
                    rans.shape
                ));
            }
            let le16 = |b: &[u8]| b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect::<Vec<u16>>();
            let le32 = |b: &[u8]| {
                b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<u32>>()
            };
            let streams = Streams {
                rans: rans.bytes.to_vec(),
                freq: le16(get("rans_freq", U16, &[layout.tables(m.bits).iter().sum()])?),
                lens: le32(get("rans_len", U32, &[rows.div_ceil(coded::ROWS_PER_STREAM)])?),
            };
            let kept = if layout == Layout::Codes { Some(stored()?) } else { None };
            let d = coded::decode(
                &streams,
                layout,
                rows,
                cols,
                params,
                kept.as_ref().map(|(s, z)| (s.as_slice(), z.as_slice())),
                &what,
            )?;
            (d.codes, d.scales, d.zeros)
        }
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
    Ok((QuantTensor { rows, cols, params, base_exp: m.base_exp, codes, scales, zeros, overlay }, m.out_dtype))
}
