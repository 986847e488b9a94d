//! The CPU matmul on AMX int8 tiles (Intel Sapphire Rapids and later): the same sums as
//! `linear::matmul_rows`, bit for bit. It replaces the VNNI kernel (`matmul_vnni`, still the
//! path for CPUs without AMX) for prepared weights, where the eval's products spend most
//! time (BENCHMARKS.md "AMX": the products' share of a SmolLM2 eval drops from 39% to 30%).
//!
//! Why it is exact (every step is integer arithmetic that cannot overflow):
//! - Each weight is taken with its group's shift already applied, w' = m·2^s with s = the
//!   group's exponent above its row's smallest (0..=16) and |m| < 2^15 (the one value
//!   outside i16, +2^15, is stored as 0 and added afterwards in i64, as `matmul_vnni`
//!   does): |w'| <= 2^31, an i32. The groups then no longer matter: a row's sum is one dot
//!   product over all its columns, which is the reference's Σ_g (Σ a·m)·2^s exactly.
//! - w' is split into bytes, w' = Σ_j b_j·2^(8j), the top one signed, the others unsigned:
//!   four bytes, or three for row tiles whose shifts are all <= 7 (|w'| < 2^22 fits i24).
//!   Activations (|a| <= 2^17, `check_matmul_acts`) likewise into three, a = Σ_i c_i·2^(8i),
//!   c_2 = a >> 16 in [-2, 2].
//! - The byte products with the same scale 2^(8(i+j)) share one i32 tile accumulator C_s,
//!   s = i + j. Each C_s gathers at most two unsigned × unsigned byte products per column
//!   (|.| <= 255·255) and one with c_2 (|.| <= 2·255), over a slice of at most
//!   `MAX_COLS` = 8192 columns: |C_s| <= 8192·(2·65025 + 510) < 2^31. No lane wraps.
//! - Wider rows (up to `MATMUL_MAX_COLS` = 2^16) run the tiles slice by slice, 8192 columns
//!   (128 k-steps) at a time, each slice's C_s starting from zero; a slice's sum
//!   Σ_s C_s·2^(8s) (|.| <= 2^17·2^31·8192 = 2^61; the top classes hold only the small
//!   signed bytes, so every term C_s·2^(8s) stays below 2^62 too) is formed in i64 and the
//!   slices' sums are added in i64. Each slice's sum and every partial total is a sum of a
//!   subset of the reference's terms a·m·2^s, so below 2^61 (`fixed::tensor::matmul_max_spread`:
//!   K·2^(32+S) <= 2^61): no i64 overflow, and the total is the reference's sum exactly.
//!
//! Layout: weights are packed once (`Packed`), per tile of 16 rows and per k-step of 64
//! columns, byte plane by byte plane, each plane one 1 KiB B tile in AMX's pair-of-four
//! layout (row kk holds, for each of the 16 weight rows, columns 4kk..4kk+3). Activations are
//! packed per call, per tile of 16 tokens and k-step, three 1 KiB A tiles (16 tokens × 64
//! columns). Missing tokens, rows and columns are zero bytes, which add nothing. The output
//! is cut into fixed blocks of `TOKENS_PER_BLOCK` × `ROWS_PER_BLOCK`, one rayon task each.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::matmul_blocks::{add_fixes, blocked_sums, fix_value, write_tile};
use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// Tokens (A tile rows) and weight rows (C tile columns) per tile.
const TILE: usize = 16;
/// Columns per k-step (one A tile row of bytes).
const KSTEP: usize = 64;
/// Bytes of one tile.
const TILE_BYTES: usize = TILE * KSTEP;
/// Byte planes of an activation.
const A_PLANES: usize = 3;
/// Most columns per slice of tile products: keeps every C_s below 2^31 (module comment).
/// Wider rows are cut into slices of this many columns, combined exactly in i64.
pub const MAX_COLS: usize = 8192;
/// K-steps per slice.
const SLICE_KSTEPS: usize = MAX_COLS / KSTEP;
/// Output block of one rayon task (multiples of TILE).
const TOKENS_PER_BLOCK: usize = 96;
const ROWS_PER_BLOCK: usize = 96;
const _: () = assert!(TOKENS_PER_BLOCK.is_multiple_of(TILE) && ROWS_PER_BLOCK.is_multiple_of(TILE));

/// Whether this CPU has AMX-TILE and AMX-INT8, the kernel lets this process use the tile
/// registers (Linux asks each process to request them; checked once), and `isa::allows` AMX
/// (`UCW_CPU_AMX=0` or `UCW_CPU_KERNELS` below `amx` turns the kernel off, to measure or test
/// the VNNI path on such a CPU).
pub fn available() -> bool {
    super::isa::allows(super::isa::Isa::Amx) && cpu_has_amx()
}

/// The CPU and kernel side of `available`, whatever the cap.
pub fn cpu_has_amx() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            let l = std::arch::x86_64::__cpuid_count(7, 0);
            if l.edx >> 24 & 1 == 0 || l.edx >> 25 & 1 == 0 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Weights packed for the tiles, kept by `CpuBackend::prepare_matmul`.
pub struct Packed {
    rows: usize,
    cols: usize,
    group: usize,
    ksteps: usize,
    /// Per row tile: byte offset into `wp` and number of weight planes (3 or 4).
    tiles: Vec<(usize, usize)>,
    wp: Vec<u8>,
    /// (row, column) of the weights outside i16, stored as 0.
    fixes: Vec<(usize, usize)>,
    /// `linear::row_exps(w)`
    pub re: Vec<i32>,
}

impl Packed {
    /// Host bytes held.
    pub fn bytes(&self) -> u64 {
        (self.wp.len() + self.tiles.len() * 16 + self.fixes.len() * 16 + self.re.len() * 4) as u64
    }

    /// Expects `w` that passed `check_matmul_weights` and `re = linear::row_exps(w)`.
    pub fn new(w: &GroupFixed, re: &[i32]) -> Packed {
        let (k, g, gpr) = (w.cols, w.params.group_size as usize, w.groups_per_row());
        let ksteps = k.div_ceil(KSTEP);
        let shift = |r: usize, c: usize| (w.exponents[r * gpr + c / g] - re[r]) as u32;
        let ntiles = w.rows.div_ceil(TILE);
        let mut tiles = Vec::with_capacity(ntiles);
        let mut off = 0;
        for q in 0..ntiles {
            let max_shift = (q * TILE..((q + 1) * TILE).min(w.rows))
                .flat_map(|r| (0..gpr).map(move |gi| w.exponents[r * gpr + gi] - re[r]))
                .max()
                .unwrap_or(0);
            let planes = if max_shift <= 7 { 3 } else { 4 };
            tiles.push((off, planes));
            off += ksteps * planes * TILE_BYTES;
        }
        let mut wp = vec![0u8; off];
        let mut rest: &mut [u8] = &mut wp;
        let mut parts = Vec::with_capacity(ntiles);
        for &(_, planes) in &tiles {
            let (head, tail) = rest.split_at_mut(ksteps * planes * TILE_BYTES);
            parts.push(head);
            rest = tail;
        }
        let fixes = parts
            .into_par_iter()
            .enumerate()
            .flat_map_iter(|(q, dst)| {
                let planes = tiles[q].1;
                let mut fixes = Vec::new();
                for n in 0..TILE.min(w.rows - q * TILE) {
                    let r = q * TILE + n;
                    for c in 0..k {
                        let m = w.mantissas[r * k + c];
                        let v = match i16::try_from(m) {
                            Ok(m) => (m as i32) << shift(r, c),
                            Err(_) => {
                                fixes.push((r, c));
                                continue;
                            }
                        };
                        let (ks, kk) = (c / KSTEP, c % KSTEP);
                        // B tile: row kk/4, 4 bytes per weight row n, byte kk%4.
                        let at = kk / 4 * KSTEP + n * 4 + kk % 4;
                        for j in 0..planes {
                            dst[(ks * planes + j) * TILE_BYTES + at] = (v >> (8 * j)) as u8;
                        }
                    }
                }
                fixes
            })
            .collect();
        Packed { rows: w.rows, cols: w.cols, group: g, ksteps, tiles, wp, fixes, re: re.to_vec() }
    }

    /// Whether this was packed from weights of `w`'s shape (a cheap guard; the contract is
    /// that it was packed from `w` itself).
    pub fn fits(&self, w: &GroupFixed) -> bool {
        self.rows == w.rows && self.cols == w.cols && self.group == w.params.group_size as usize
    }
}

/// Activations as `[token tiles][k-steps][plane][16 tokens × 64 columns]` bytes.
fn pack_acts(x: &TokenFixed, ksteps: usize) -> Vec<u8> {
    let k = x.width;
    let per_tile = ksteps * A_PLANES * TILE_BYTES;
    // Zeros stay where tokens or columns are missing.
    let mut out = vec![0u8; x.tokens.div_ceil(TILE) * per_tile];
    out.par_chunks_mut(per_tile).enumerate().for_each(|(tt, dst)| {
        for lt in 0..TILE.min(x.tokens - tt * TILE) {
            let a = &x.mants[(tt * TILE + lt) * k..][..k];
            // A token's 64 columns of one k-step are contiguous in each plane.
            for (ks, cols) in a.chunks(KSTEP).enumerate() {
                let tile = &mut dst[ks * A_PLANES * TILE_BYTES..][..A_PLANES * TILE_BYTES];
                let (p0, rest) = tile.split_at_mut(TILE_BYTES);
                let (p1, p2) = rest.split_at_mut(TILE_BYTES);
                let at = lt * KSTEP..lt * KSTEP + cols.len();
                split_bytes(cols, &mut p0[at.clone()], &mut p1[at.clone()], &mut p2[at]);
            }
        }
    });
    out
}

simd_dispatch! {
    /// The three byte planes of activations (bits 0-7, 8-15, 16-23; the top one read as
    /// signed by the tiles).
    fn split_bytes(v: &[i32], b0: &mut [u8], b1: &mut [u8], b2: &mut [u8]) -> () {
        let n = v.len().min(b0.len()).min(b1.len()).min(b2.len());
        let (v, b0, b1, b2) = (&v[..n], &mut b0[..n], &mut b1[..n], &mut b2[..n]);
        for i in 0..n {
            b0[i] = v[i] as u8;
            b1[i] = (v[i] >> 8) as u8;
            b2[i] = (v[i] >> 16) as u8;
        }
    }
}

/// Exact sums `[x.tokens, w.rows]` (row-major), identical to `linear::matmul_rows`.
/// Expects arguments that passed `check_matmul_args`, `p` packed from `w`, and
/// `available()`.
pub fn matmul_packed(x: &TokenFixed, w: &GroupFixed, p: &Packed) -> Vec<i64> {
    assert!(available(), "matmul_amx without AMX");
    packed_sums(x, w, p, true)
}

/// `matmul_packed` on any CPU: the same packing, slicing and combination, with the tile
/// products computed by `emulate::tile` (plain Rust, the instructions' wrapping i32 lanes)
/// instead of AMX, so tests check everything around the tile instructions everywhere.
#[cfg(test)]
pub fn matmul_packed_emulated(x: &TokenFixed, w: &GroupFixed, p: &Packed) -> Vec<i64> {
    packed_sums(x, w, p, false)
}

/// `matmul_packed`'s body: the tiles on AMX where `hw`, else emulated (tests only).
fn packed_sums(x: &TokenFixed, w: &GroupFixed, p: &Packed, hw: bool) -> Vec<i64> {
    let (tokens, n, k) = (x.tokens, w.rows, w.cols);
    if n == 0 || tokens == 0 || k == 0 {
        return vec![0i64; tokens * n];
    }
    let ap = pack_acts(x, p.ksteps);
    let a_tile = p.ksteps * A_PLANES * TILE_BYTES;
    blocked_sums(tokens, n, TOKENS_PER_BLOCK, ROWS_PER_BLOCK, |t0, r0, out| {
        let (nt, nr) = (out.len(), out[0].len());
        let mut c = Tiles([[0i32; TILE * TILE]; 6]);
        let mut sum = [0i64; TILE * TILE];
        if hw {
            // SAFETY: `available()` (asserted by the caller); the operands are whole packed tiles.
            unsafe { amx::begin() };
        }
        for lr0 in (0..nr).step_by(TILE) {
            let (off, planes) = p.tiles[(r0 + lr0) / TILE];
            let b = &p.wp[off..off + p.ksteps * planes * TILE_BYTES];
            for lt0 in (0..nt).step_by(TILE) {
                let a = &ap[(t0 + lt0) / TILE * a_tile..][..a_tile];
                // Slices of at most SLICE_KSTEPS k-steps (MAX_COLS columns), so no C_s lane
                // wraps; their sums (each < 2^61) added exactly in i64.
                sum.fill(0);
                for ks0 in (0..p.ksteps).step_by(SLICE_KSTEPS) {
                    let ks1 = (ks0 + SLICE_KSTEPS).min(p.ksteps);
                    let a = &a[ks0 * A_PLANES * TILE_BYTES..ks1 * A_PLANES * TILE_BYTES];
                    let b = &b[ks0 * planes * TILE_BYTES..ks1 * planes * TILE_BYTES];
                    if hw {
                        // SAFETY: as above; `a` and `b` hold `ks1 - ks0` k-steps of whole tiles.
                        unsafe { amx::tile(a, b, ks1 - ks0, planes, &mut c) };
                    } else {
                        #[cfg(test)]
                        emulate::tile(a, b, ks1 - ks0, planes, &mut c);
                    }
                    combine(&c, A_PLANES + planes - 1, &mut sum);
                }
                write_tile(out, lt0, lr0, TILE, TILE, &sum);
            }
        }
        if hw {
            // SAFETY: pairs with `begin` above.
            unsafe { amx::end() };
        }
        add_fixes(x, &p.fixes, |i| fix_value(w, &p.re, p.fixes[i]), t0, r0, out);
    })
}

/// The six C tiles as stored (`[s][token·16 + row]`), 64-byte aligned for the stores.
#[repr(C, align(64))]
struct Tiles([[i32; TILE * TILE]; 6]);

simd_dispatch! {
    /// Add one slice's sums Σ_s C_s·2^(8s) in i64 into `out[token·16 + row]`, over `classes`
    /// tiles.
    fn combine(c: &Tiles, classes: usize, out: &mut [i64; TILE * TILE]) -> () {
        // Class by class over the whole tile: plain loops the compiler vectorises.
        for (s, cs) in c.0.iter().enumerate().take(classes) {
            for (o, &v) in out.iter_mut().zip(cs) {
                *o += (v as i64) << (8 * s);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{A_PLANES, TILE_BYTES, Tiles};
    use std::arch::asm;

    /// Palette 1, eight tiles of 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
            c[48 + t] = 16; // rows
            t += 1;
        }
        Config(c)
    };

    /// Load the tile configuration on this thread.
    ///
    /// # Safety
    /// AMX must be available and granted (`super::available()`).
    pub(super) unsafe fn begin() {
        // SAFETY: the caller guarantees AMX; CONFIG is a valid palette-1 configuration.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    }

    /// Release the tile state of this thread.
    ///
    /// # Safety
    /// After `begin` on this thread.
    pub(super) unsafe fn end() {
        // SAFETY: the caller guarantees AMX.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// One k-step's loads and byte products (`$ins`), with `{a}`, `{b}` the k-step's A and B
    /// tiles and `{s}` the 64-byte row stride.
    macro_rules! kstep {
        ($a:expr, $b:expr, $stride:expr, [$($ins:literal),*]) => {
            asm!($($ins),*, a = in(reg) $a, b = in(reg) $b, s = in(reg) $stride, options(nostack, readonly))
        };
    }

    /// One 16-token × 16-row tile: C_s = Σ over k-steps of the byte products of scale 2^(8s),
    /// stored into `c` (`c.0[s]` for s < 3 + planes - 1).
    ///
    /// # Safety
    /// After `begin` on this thread; `a` holds `ksteps · 3` tiles and `b` `ksteps · planes`.
    pub(super) unsafe fn tile(a: &[u8], b: &[u8], ksteps: usize, planes: usize, c: &mut Tiles) {
        assert!(a.len() == ksteps * A_PLANES * TILE_BYTES && b.len() == ksteps * planes * TILE_BYTES);
        assert!(planes == 3 || planes == 4);
        let stride = 64usize;
        // SAFETY: AMX is configured (caller); every load reads one whole 1 KiB tile inside
        // `a` or `b` (asserted lengths), every store writes one tile of `c`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                options(nostack, nomem)
            );
            for ks in 0..ksteps {
                let ap = a.as_ptr().add(ks * A_PLANES * TILE_BYTES);
                let bp = b.as_ptr().add(ks * planes * TILE_BYTES);
                // Offsets: A plane i at a + 1024·i, B plane j at b + 1024·j. Bytes: A planes 0, 1
                // and B planes below the top are unsigned; A plane 2 and the top B plane signed.
                if planes == 3 {
                    // Five classes leave three registers: A plane 0 in tmm5 and A plane 1 in
                    // tmm6 for the k-step, B planes alternating in tmm7/tmm6 so that no load
                    // waits for the product just issued (tile registers are not renamed).
                    kstep!(
                        ap,
                        bp,
                        stride,
                        [
                            "tileloadd tmm5, [{a} + {s}*1]",
                            "tileloadd tmm7, [{b} + {s}*1]",
                            "tdpbuud tmm0, tmm5, tmm7",
                            "tileloadd tmm6, [{a} + {s}*1 + 1024]",
                            "tdpbuud tmm1, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                            "tdpbuud tmm1, tmm5, tmm7",
                            "tdpbuud tmm2, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 2048]",
                            "tdpbusd tmm2, tmm5, tmm7",
                            "tdpbusd tmm3, tmm6, tmm7",
                            "tileloadd tmm5, [{a} + {s}*1 + 2048]",
                            "tdpbssd tmm4, tmm5, tmm7",
                            "tileloadd tmm6, [{b} + {s}*1 + 1024]",
                            "tdpbsud tmm3, tmm5, tmm6",
                            "tileloadd tmm7, [{b} + {s}*1]",
                            "tdpbsud tmm2, tmm5, tmm7"
                        ]
                    );
                } else {
                    // Six classes leave two registers: A in tmm6, B in tmm7, one at a time
                    // (rows shifted by 8 or more; none in SmolLM2-135M).
                    kstep!(
                        ap,
                        bp,
                        stride,
                        [
                            "tileloadd tmm6, [{a} + {s}*1]",
                            "tileloadd tmm7, [{b} + {s}*1]",
                            "tdpbuud tmm0, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                            "tdpbuud tmm1, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 2048]",
                            "tdpbuud tmm2, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                            "tdpbusd tmm3, tmm6, tmm7",
                            "tileloadd tmm6, [{a} + {s}*1 + 1024]",
                            "tileloadd tmm7, [{b} + {s}*1]",
                            "tdpbuud tmm1, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                            "tdpbuud tmm2, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 2048]",
                            "tdpbuud tmm3, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                            "tdpbusd tmm4, tmm6, tmm7",
                            "tileloadd tmm6, [{a} + {s}*1 + 2048]",
                            "tileloadd tmm7, [{b} + {s}*1]",
                            "tdpbsud tmm2, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                            "tdpbsud tmm3, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 2048]",
                            "tdpbsud tmm4, tmm6, tmm7",
                            "tileloadd tmm7, [{b} + {s}*1 + 3072]",
                            "tdpbssd tmm5, tmm6, tmm7"
                        ]
                    );
                }
            }
            let cp = c.0.as_mut_ptr() as *mut u8;
            asm!(
                "tilestored [{c} + {s}*1], tmm0",
                "tilestored [{c} + {s}*1 + 1024], tmm1",
                "tilestored [{c} + {s}*1 + 2048], tmm2",
                "tilestored [{c} + {s}*1 + 3072], tmm3",
                "tilestored [{c} + {s}*1 + 4096], tmm4",
                "tilestored [{c} + {s}*1 + 5120], tmm5",
                c = in(reg) cp, s = in(reg) stride, options(nostack)
            );
        }
    }
}

/// The tile products in plain Rust, for tests on CPUs without AMX.
#[cfg(test)]
mod emulate {
    use super::{A_PLANES, KSTEP, TILE, TILE_BYTES, Tiles};

    /// What `amx::tile` computes: C_s[t·16 + n] = Σ over k-steps, byte planes i + j = s and
    /// the k-step's 64 columns of A_i[t][col]·B_j[col / 4][4n + col % 4], A plane 2 and the
    /// top B plane signed, the others unsigned, in wrapping i32 lanes as the tiles add.
    pub fn tile(a: &[u8], b: &[u8], ksteps: usize, planes: usize, c: &mut Tiles) {
        assert!(a.len() == ksteps * A_PLANES * TILE_BYTES && b.len() == ksteps * planes * TILE_BYTES);
        for cs in c.0.iter_mut() {
            cs.fill(0);
        }
        let byte = |v: u8, signed: bool| if signed { v as i8 as i32 } else { v as i32 };
        for ks in 0..ksteps {
            for i in 0..A_PLANES {
                let ap = &a[(ks * A_PLANES + i) * TILE_BYTES..][..TILE_BYTES];
                for j in 0..planes {
                    let bp = &b[(ks * planes + j) * TILE_BYTES..][..TILE_BYTES];
                    let cs = &mut c.0[i + j];
                    for t in 0..TILE {
                        for n in 0..TILE {
                            let mut d = 0i32;
                            for col in 0..KSTEP {
                                let x = byte(ap[t * KSTEP + col], i == A_PLANES - 1);
                                let y = byte(bp[col / 4 * KSTEP + n * 4 + col % 4], j == planes - 1);
                                d = d.wrapping_add(x * y);
                            }
                            cs[t * TILE + n] = cs[t * TILE + n].wrapping_add(d);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod amx {
    //! Never called: `available()` is false off x86-64.
    use super::Tiles;
    pub(super) unsafe fn begin() {
        unreachable!()
    }
    pub(super) unsafe fn end() {
        unreachable!()
    }
    pub(super) unsafe fn tile(_: &[u8], _: &[u8], _: usize, _: usize, _: &mut Tiles) {
        unreachable!()
    }
}
