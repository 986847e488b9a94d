//! A quantized linear's stored symbols as rANS streams (docs/FORMAT.md §4.1, §4.2): the codes
//! alone (codec version 3), or each group's scale code, zero point and codes (version 4), one
//! stream per ROWS_PER_STREAM rows so that streams encode and decode in parallel.

use rayon::prelude::*;

use super::rans::{self, Decoder, FreqTable};
use crate::error::Result;
use crate::fixed::quant::{QuantParams, QuantTensor};

/// Rows per stream.
pub const ROWS_PER_STREAM: usize = 64;

/// What a linear's streams hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The codes only; scales and zero points are stored as bytes and bit-packed (codec 3).
    Codes,
    /// Per group its scale code, its zero point, then its codes (codec 4).
    Whole,
}

impl Layout {
    /// The layout a layer file of this codec version uses (None: bit-packed codes).
    pub fn of_version(v: u32) -> Option<Layout> {
        match v {
            0..=2 => None,
            3 => Some(Layout::Codes),
            _ => Some(Layout::Whole),
        }
    }

    /// The symbol classes its streams hold, in the order `rans_freq` holds their tables.
    fn classes(self) -> &'static [u8] {
        match self {
            Layout::Codes => &[CODE],
            Layout::Whole => &[SCALE, ZERO, CODE],
        }
    }

    /// Alphabet sizes of the tables `rans_freq` holds, in order, for width `bits`.
    pub fn tables(self, bits: u32) -> Vec<usize> {
        self.classes().iter().map(|&c| alphabet(c, bits)).collect()
    }
}

/// The three stored tensors of a linear's streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    /// The streams, concatenated.
    pub rans: Vec<u8>,
    /// The tables' frequencies, back to back.
    pub freq: Vec<u16>,
    /// Byte length of each stream.
    pub lens: Vec<u32>,
}

impl Streams {
    /// Stored bytes of the three tensors.
    pub fn bytes(&self) -> u64 {
        (self.rans.len() + 2 * self.freq.len() + 4 * self.lens.len()) as u64
    }
}

// Symbol classes: which table a symbol is coded with (its index in `Layout::tables` for Whole).
const SCALE: u8 = 0;
const ZERO: u8 = 1;
const CODE: u8 = 2;
const CLASS_NAMES: [&str; 3] = ["scale", "zero", "code"];

/// Symbols a class has at width `bits`: scale codes are bytes, zero points b bits, code
/// symbols q − z + 2^b − 1 below 2^(b+1) − 1.
fn alphabet(class: u8, bits: u32) -> usize {
    match class {
        SCALE => 256,
        ZERO => 1 << bits,
        _ => (1 << (bits + 1)) - 1,
    }
}

/// The symbols of rows [r0, r1) in stream order, each with its class. A code's symbol is the
/// code relative to its group's zero point, offset to be non-negative (q − z + 2^b − 1).
fn items(q: &QuantTensor, layout: Layout, r0: usize, r1: usize, out: &mut Vec<(u16, u8)>) {
    let (g, gpr, off) = (q.params.group_size as usize, q.groups_per_row(), (1u16 << q.params.bits) - 1);
    out.clear();
    for r in r0..r1 {
        for k in 0..gpr {
            let (s, z) = (q.scales[r * gpr + k], q.zeros[r * gpr + k]);
            if layout == Layout::Whole {
                out.push((s as u16, SCALE));
                out.push((z as u16, ZERO));
            }
            let cols = r * q.cols + k * g..r * q.cols + ((k + 1) * g).min(q.cols);
            out.extend(q.codes[cols].iter().map(|&v| (v as u16 + off - z as u16, CODE)));
        }
    }
}

fn streams_of(rows: usize) -> Vec<(usize, usize)> {
    (0..rows).step_by(ROWS_PER_STREAM).map(|r0| (r0, (r0 + ROWS_PER_STREAM).min(rows))).collect()
}

/// Entropy-code a linear: one table per symbol class for the tensor (FORMAT.md §4.1's
/// normalisation), one stream per ROWS_PER_STREAM rows (in parallel; the bytes do not depend
/// on the thread count).
pub fn encode(q: &QuantTensor, layout: Layout) -> Streams {
    let sizes: Vec<usize> = [SCALE, ZERO, CODE].iter().map(|&c| alphabet(c, q.params.bits)).collect();
    let streams = streams_of(q.rows);
    let counts = streams
        .par_iter()
        .map(|&(r0, r1)| {
            let mut it = Vec::new();
            items(q, layout, r0, r1, &mut it);
            let mut c: Vec<Vec<u64>> = sizes.iter().map(|&n| vec![0u64; n]).collect();
            for &(s, class) in &it {
                c[class as usize][s as usize] += 1;
            }
            c
        })
        .reduce(
            || sizes.iter().map(|&n| vec![0u64; n]).collect(),
            |a, b| a.iter().zip(&b).map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect()).collect(),
        );
    // Codes and zero points below 2^b (QuantTensor's invariant) keep every symbol in its
    // alphabet; a class in use has at least one symbol since rows, cols ≥ 1.
    let used = layout.classes();
    let mut tables: Vec<Option<FreqTable>> = vec![None, None, None];
    for &c in used {
        tables[c as usize] = Some(FreqTable::from_counts(&counts[c as usize]).expect("a class in use has symbols"));
    }
    let coded: Vec<Vec<u8>> = streams
        .par_iter()
        .map(|&(r0, r1)| {
            let mut it = Vec::new();
            items(q, layout, r0, r1, &mut it);
            rans::encode_by(it.len(), |i| {
                let (s, c) = it[i];
                (s, tables[c as usize].as_ref().expect("table of a class in use"))
            })
            .expect("every symbol was counted")
        })
        .collect();
    Streams {
        lens: coded.iter().map(|c| c.len() as u32).collect(),
        rans: coded.concat(),
        freq: used.iter().flat_map(|&c| tables[c as usize].as_ref().unwrap().freqs().to_vec()).collect(),
    }
}

/// A linear's codes, scale codes and zero points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub codes: Vec<u8>,
    pub scales: Vec<u8>,
    pub zeros: Vec<u8>,
}

/// Inverse of `encode` for a [rows × cols] linear, checking every rule of FORMAT.md §4.1 and
/// §4.2; errors begin with `what` (file and tensor). For `Layout::Codes` the scale codes and
/// zero points come from the caller (`stored`, each `rows × ceil(cols / G)`) and are returned
/// as given.
pub fn decode(
    s: &Streams,
    layout: Layout,
    rows: usize,
    cols: usize,
    p: QuantParams,
    stored: Option<(&[u8], &[u8])>,
    what: &str,
) -> Result<Decoded> {
    let sizes = layout.tables(p.bits);
    if s.freq.len() != sizes.iter().sum::<usize>() {
        return Err(bad_input!("{what}: {} frequencies, expected {}", s.freq.len(), sizes.iter().sum::<usize>()));
    }
    let mut tables = Vec::with_capacity(3);
    let mut at = 0;
    for (&n, &class) in sizes.iter().zip(layout.classes()) {
        let name = CLASS_NAMES[class as usize];
        let t =
            FreqTable::from_freqs(s.freq[at..at + n].to_vec()).map_err(|e| bad_input!("{what}: {name} table: {e}"))?;
        tables.push(t);
        at += n;
    }
    let (st, zt, ct) = match layout {
        Layout::Whole => (Some(&tables[0]), Some(&tables[1]), &tables[2]),
        Layout::Codes => (None, None, &tables[0]),
    };
    let total: u64 = s.lens.iter().map(|&l| l as u64).sum();
    if total != s.rans.len() as u64 {
        return Err(bad_input!("{what}: stream lengths sum to {total}, the streams hold {} bytes", s.rans.len()));
    }
    let streams = streams_of(rows);
    if streams.len() != s.lens.len() {
        return Err(bad_input!("{what}: {} stream lengths for {} streams", s.lens.len(), streams.len()));
    }
    let (g, gpr, off) = (p.group_size as usize, cols.div_ceil(p.group_size as usize), (1i32 << p.bits) - 1);
    let mut starts = Vec::with_capacity(s.lens.len());
    let mut begin = 0usize;
    for &l in &s.lens {
        starts.push(begin);
        begin += l as usize;
    }
    let (mut scales, mut zeros) = match (layout, stored) {
        (Layout::Codes, Some((sc, z))) => (sc.to_vec(), z.to_vec()),
        (Layout::Codes, None) => panic!("Layout::Codes decodes with the stored scales and zero points"),
        (Layout::Whole, _) => (vec![0u8; rows * gpr], vec![0u8; rows * gpr]),
    };
    let mut codes = vec![0u8; rows * cols];
    let per = ROWS_PER_STREAM;
    codes
        .par_chunks_mut(per * cols)
        .zip(scales.par_chunks_mut(per * gpr).zip(zeros.par_chunks_mut(per * gpr)))
        .zip(starts.par_iter().zip(&s.lens))
        .enumerate()
        .try_for_each(|(k, ((codes, (scales, zeros)), (&b, &l)))| -> Result<()> {
            let fail = |e: rans::RansError| bad_input!("{what}: stream {k}: {e}");
            let mut d = Decoder::new(&s.rans[b..b + l as usize]).map_err(fail)?;
            for r in 0..codes.len() / cols {
                for j in 0..gpr {
                    if let (Some(st), Some(zt)) = (st, zt) {
                        scales[r * gpr + j] = d.get(st).map_err(fail)? as u8;
                        // The zero table has 2^b entries: a decoded zero point is in range.
                        zeros[r * gpr + j] = d.get(zt).map_err(fail)? as u8;
                    }
                    let z = zeros[r * gpr + j] as i32;
                    for c in j * g..((j + 1) * g).min(cols) {
                        let q = d.get(ct).map_err(fail)? as i32 + z - off;
                        if !(0..=off).contains(&q) {
                            let row = k * per + r;
                            return Err(bad_input!("{what}: row {row} column {c}: code {q} outside 0..={off}"));
                        }
                        codes[r * cols + c] = q as u8;
                    }
                }
            }
            d.finish().map_err(fail)
        })?;
    Ok(Decoded { codes, scales, zeros })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn linear(rows: usize, cols: usize, bits: u32, group_size: u32, seed: u64) -> QuantTensor {
        let gpr = cols.div_ceil(group_size as usize);
        let mut r = seed;
        let mut next = |n: u32| {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            // Peaked: the sum of two uniform draws.
            (((r >> 33) % n as u64 + (r >> 13) % n as u64) / 2) as u8
        };
        QuantTensor {
            rows,
            cols,
            params: QuantParams { bits, group_size },
            base_exp: 0,
            codes: (0..rows * cols).map(|_| next(1 << bits)).collect(),
            scales: (0..rows * gpr).map(|_| next(256)).collect(),
            zeros: (0..rows * gpr).map(|_| next(1 << bits)).collect(),
            overlay: None,
        }
    }

    proptest! {
        #[test]
        fn round_trip_both_layouts(rows in 1usize..150, cols in 1usize..80, bits in 2u32..=8, g in 1u32..40, seed in any::<u64>()) {
            let q = linear(rows, cols, bits, g, seed);
            for layout in [Layout::Codes, Layout::Whole] {
                let s = encode(&q, layout);
                prop_assert_eq!(s.lens.len(), rows.div_ceil(ROWS_PER_STREAM));
                prop_assert_eq!(s.freq.len(), layout.tables(bits).iter().sum::<usize>());
                let kept = (layout == Layout::Codes).then_some((q.scales.as_slice(), q.zeros.as_slice()));
                let d = decode(&s, layout, rows, cols, q.params, kept, "t").unwrap();
                prop_assert_eq!(&d.codes, &q.codes);
                prop_assert_eq!(&d.scales, &q.scales);
                prop_assert_eq!(&d.zeros, &q.zeros);
            }
        }
    }

    /// The bytes do not depend on how many threads encode the streams.
    #[test]
    fn same_bytes_on_one_thread() {
        let q = linear(300, 200, 5, 64, 7);
        let many = encode(&q, Layout::Whole);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(pool.install(|| encode(&q, Layout::Whole)), many);
    }
}
