//! Exact calibration statistics on the device (shaders/gram.wgsl): the i64 triangle of a
//! Gram accumulator stays in device buffers across windows and is read back once, when the
//! layer's statistics are complete. The host keeps what it needs to decide (the grid, the
//! exact diagonal, the widening to i128: codec/gram.rs); each window costs one upload of
//! its values and one submission.
//!
//! The triangle is split by columns into chunks that each fit one storage binding (whole
//! 32-column tiles, so a workgroup's tile never straddles two chunks), the window's tokens
//! into pieces that fit a binding and the driver's loop limit; every (piece, chunk) is one
//! dispatch of the same recording. Exact integer sums: no split changes a bit, and the tests
//! lower the binding limit to prove it.

use super::params as up;
use super::{Buf, GpuBackend, WORKGROUP, i64_at, words_le};
use crate::backend::{DeviceGram, check_gram_args};
use crate::error::Error;
use crate::fixed::tensor::tri_offset;

/// Rows and columns of one workgroup's tile (gram.wgsl's TILE).
pub(crate) const GRAM_TILE: usize = 32;
/// Tokens staged per step (gram.wgsl's STAGE).
pub(crate) const GRAM_STAGE: usize = 64;
/// Loop iterations of one invocation per stage: the stage loop itself, the staging steps
/// (TILE · STAGE / 64), the stage's tokens and the four rows' joins.
const GRAM_STAGE_LOOPS: usize = 1 + GRAM_TILE * GRAM_STAGE / WORKGROUP as usize + GRAM_STAGE + 4;
/// The 16 stores after the stages.
const GRAM_TAIL_LOOPS: usize = 16;

/// Columns [j0, j1) of the packed triangle, from entry `base` on.
struct Chunk {
    j0: usize,
    j1: usize,
    base: usize,
    buf: Buf,
}

/// A GPU backend's Gram accumulator (`DeviceGram`'s form).
struct GpuGram {
    chunks: Vec<Chunk>,
}

/// Bytes of the packed triangle's columns [j0, j1) of an `n`-input statistic.
fn column_bytes(n: usize, j0: usize, j1: usize) -> u64 {
    8 * (tri_offset(n, j1) - tri_offset(n, j0)) as u64
}

impl GpuBackend {
    /// Column chunks of an `n`-input triangle that each fit one binding.
    fn gram_chunks(&self, n: usize) -> Result<Vec<(usize, usize)>, Error> {
        let mut out = Vec::new();
        let mut j0 = 0;
        while j0 < n {
            let mut j1 = (j0 + GRAM_TILE).min(n);
            if column_bytes(n, j0, j1) > self.max_binding {
                return Err(bad_input!(
                    "{}: 32 columns of a {n}-input statistic exceed the device's {} byte storage binding",
                    self.info.name,
                    self.max_binding
                ));
            }
            while j1 < n && column_bytes(n, j0, (j1 + GRAM_TILE).min(n)) <= self.max_binding {
                j1 = (j1 + GRAM_TILE).min(n);
            }
            out.push((j0, j1));
            j0 = j1;
        }
        Ok(out)
    }

    pub(crate) fn gram_open_dev(&self, cols: usize) -> Result<Option<DeviceGram>, Error> {
        // tri_offset in u32 on the device: n·n < 2^32.
        if !self.gram_on_device() || cols == 0 || cols > 1 << 15 {
            return Ok(None);
        }
        let mut chunks = Vec::new();
        let mut bytes = 0;
        for (j0, j1) in self.gram_chunks(cols)? {
            let size = column_bytes(cols, j0, j1);
            chunks.push(Chunk { j0, j1, base: tri_offset(cols, j0), buf: self.zeroed("gram.acc", size) });
            bytes += size;
        }
        self.device_error("allocating a Gram accumulator")?;
        Ok(Some(DeviceGram::new(cols, bytes, Box::new(GpuGram { chunks }))))
    }

    fn gram_form<'g>(&self, acc: &'g DeviceGram) -> Result<&'g GpuGram, Error> {
        acc.form::<GpuGram>().ok_or_else(|| {
            bad_input!("internal error: a Gram accumulator of another backend given to {}", self.info.name)
        })
    }

    /// Tokens per dispatch: a piece of x fits a binding, and its stages the loop limit.
    fn gram_piece_tokens(&self, cols: usize) -> Result<usize, Error> {
        let by_binding = self.rows_per_chunk(cols, 4)?;
        let by_loops = match self.loop_limit {
            Some(limit) => ((limit as usize - GRAM_TAIL_LOOPS) / GRAM_STAGE_LOOPS) * GRAM_STAGE,
            None => usize::MAX,
        };
        Ok(by_binding.min(by_loops).max(1))
    }

    pub(crate) fn gram_add_dev(
        &self,
        acc: &mut DeviceGram,
        x: &[i32],
        tokens: usize,
        align: u32,
        shift: u32,
    ) -> Result<(), Error> {
        check_gram_args(acc, x, tokens, align, shift)?;
        let n = acc.cols;
        let g = self.gram_form(acc)?;
        let per = self.gram_piece_tokens(n)?;
        self.check_loops("gram", (per.min(tokens).div_ceil(GRAM_STAGE) * GRAM_STAGE_LOOPS + GRAM_TAIL_LOOPS) as u64)?;
        let mut rec = self.rec();
        let mut t0 = 0;
        let mut first = true;
        // An empty window still applies the alignment.
        while first || t0 < tokens {
            let t1 = (t0 + per).min(tokens);
            let xb = self.upload_i32("gram.x", &x[t0 * n..t1 * n]);
            for c in &g.chunks {
                let jtiles = (c.j1 - c.j0).div_ceil(GRAM_TILE);
                let it0 = c.j0 / GRAM_TILE;
                let units = (n.div_ceil(GRAM_TILE) - it0) * jtiles;
                let params = self.params(&up::Gram {
                    tokens: (t1 - t0) as u32,
                    cols: n as u32,
                    j0: c.j0 as u32,
                    jtiles: jtiles as u32,
                    it0: it0 as u32,
                    base: c.base as u32,
                    align: if first { align } else { 0 },
                    shift,
                    units: units as u32,
                    ..Default::default()
                });
                self.record(&mut rec, "gram.wgsl", "gram", &[&params, &xb, &c.buf], units as u64 * WORKGROUP as u64)?;
                rec.keep(params);
            }
            rec.keep(xb);
            first = false;
            t0 = t1;
        }
        self.submit(rec, "accumulating calibration statistics")
    }

    pub(crate) fn gram_read_dev(&self, acc: &DeviceGram) -> Result<Vec<i64>, Error> {
        let g = self.gram_form(acc)?;
        let bufs: Vec<&Buf> = g.chunks.iter().map(|c| &c.buf).collect();
        let parts = self.read_after(self.rec(), &bufs)?;
        let mut out = Vec::with_capacity(tri_offset(acc.cols, acc.cols));
        for (c, bytes) in g.chunks.iter().zip(parts) {
            let words = words_le(&bytes);
            let len = tri_offset(acc.cols, c.j1) - c.base;
            out.extend((0..len).map(|k| i64_at(&words, k)));
        }
        Ok(out)
    }
}
