//! What the VNNI and AMX matmul kernels share: the split of the `[tokens, rows]` output into
//! fixed blocks (one rayon task each, independent of the thread count, never overlapping),
//! written without zeroing first, and the exact i64 corrections for weights outside i16.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// The `[tokens, n]` sums, `tokens_per_block × rows_per_block` at a time:
/// `tile(t0, r0, out)` must write every element of its block `out` (one slice per token,
/// rows `r0..r0 + out[0].len()`), which is why the buffer is never zeroed (zeroing the
/// outputs cost about a tenth of the products).
pub fn blocked_sums(
    tokens: usize,
    n: usize,
    tokens_per_block: usize,
    rows_per_block: usize,
    tile: impl Fn(usize, usize, &mut [&mut [MaybeUninit<i64>]]) + Sync,
) -> Vec<i64> {
    let mut sums: Vec<i64> = Vec::with_capacity(tokens * n);
    if n > 0 {
        let uninit = &mut sums.spare_capacity_mut()[..tokens * n];
        uninit.par_chunks_mut(tokens_per_block * n).enumerate().for_each(|(tb, chunk)| {
            // Each block's rectangle of the output, as one slice per token.
            let mut blocks: Vec<Vec<&mut [MaybeUninit<i64>]>> =
                (0..n.div_ceil(rows_per_block)).map(|_| Vec::new()).collect();
            for row in chunk.chunks_mut(n) {
                for (b, part) in blocks.iter_mut().zip(row.chunks_mut(rows_per_block)) {
                    b.push(part);
                }
            }
            blocks.into_par_iter().enumerate().for_each(|(rb, mut out)| {
                tile(tb * tokens_per_block, rb * rows_per_block, &mut out);
            });
        });
    }
    // SAFETY: every one of the tokens·n elements was written above (the token blocks cover
    // the tokens, the row blocks the rows, and `tile` each block).
    unsafe { sums.set_len(tokens * n) };
    sums
}

/// Write one tile's sums (`acc[token · row_tile + row]`) into the block `out` at token
/// `lt0`, row `lr0`, clipped to the block. Tiles cover a block exactly, so every (token,
/// row) is written once.
#[inline]
pub fn write_tile(
    out: &mut [&mut [MaybeUninit<i64>]],
    lt0: usize,
    lr0: usize,
    tok_tile: usize,
    row_tile: usize,
    acc: &[i64],
) {
    let (nt, nr) = (out.len(), out[0].len());
    let len = row_tile.min(nr - lr0);
    for (lt, dst) in out[lt0..(lt0 + tok_tile).min(nt)].iter_mut().enumerate() {
        for (d, &v) in dst[lr0..lr0 + len].iter_mut().zip(&acc[lt * row_tile..][..len]) {
            d.write(v);
        }
    }
}

/// Add a·v exactly into the block's sums for each weight listed in `fixes` (sorted (row,
/// column) pairs of weights stored as 0 because they do not fit i16) whose row lies in the
/// block starting at token `t0`, row `r0`; `v = value(i)` is fix i's m·2^shift (its mantissa
/// times 2 to its group's exponent above the row's smallest).
pub fn add_fixes(
    x: &TokenFixed,
    fixes: &[(usize, usize)],
    value: impl Fn(usize) -> i64,
    t0: usize,
    r0: usize,
    out: &mut [&mut [MaybeUninit<i64>]],
) {
    let k = x.width;
    let nr = out.first().map_or(0, |o| o.len());
    let start = fixes.partition_point(|&(r, _)| r < r0);
    for (i, &(r, c)) in fixes.iter().enumerate().skip(start).take_while(|&(_, &(r, _))| r < r0 + nr) {
        let v = value(i);
        for (lt, dst) in out.iter_mut().enumerate() {
            let a = x.mants[(t0 + lt) * k + c] as i64;
            // SAFETY: the caller wrote the whole block before.
            let s = unsafe { dst[r - r0].assume_init() };
            dst[r - r0].write(s.wrapping_add(a * v));
        }
    }
}

/// `add_fixes`' value of a fix read from the ingested weights: m·2^(group exponent − the
/// row's smallest, `re[row]`).
pub fn fix_value(w: &GroupFixed, re: &[i32], (r, c): (usize, usize)) -> i64 {
    let (k, g, gpr) = (w.cols, w.params.group_size as usize, w.groups_per_row());
    (w.mantissas[r * k + c] as i64) << (w.exponents[r * gpr + c / g] - re[r])
}
