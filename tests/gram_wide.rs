//! Calibration statistics for wide inputs (issue 14, item 3): the full, exact Gram matrix
//! beyond the old 8192-input limit, its i64 triangle's overflow guard, and the fixed width
//! where the full matrix ends.

use ucw::codec::gram::{FULL_GRAM_MAX_COLS, Gram};
use ucw::fixed::tensor::TokenFixed;

/// A window of `tokens` tokens, all with exponent `exp` (so the window's grid holds every
/// value exactly: the statistic must equal the definition with no rounding at all).
fn window(tokens: usize, width: usize, seed: u64, exp: i32) -> TokenFixed {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as i64
    };
    let mants = (0..tokens * width).map(|_| (next() % ((1 << 18) + 1)) as i32 - (1 << 17)).collect();
    TokenFixed { tokens, width, exps: vec![exp; tokens], mants }
}

/// Checks every entry (i ≥ j) of `g` against Σ_t m_ti m_tj 2^(2 e_t), computed in i128 in
/// units of 2^grid, and the packed f64 triangle against one rounding of it.
#[allow(clippy::needless_range_loop)] // (i, j) index the statistic, the diagonal and the tokens
fn check_against_definition(g: Gram, ws: &[TokenFixed]) {
    let c = g.cols;
    let grid = g.grid();
    let d = g.diag_exact();
    let mut refs: Vec<i128> = Vec::new(); // a sample of exact entries for the f64 check
    for j in 0..c {
        for i in j..c {
            let mut want = 0i128;
            for w in ws {
                for t in 0..w.tokens {
                    let sh = 2 * w.exps[t] - grid;
                    assert!(sh >= 0);
                    want += ((w.mants[t * c + i] as i128) * (w.mants[t * c + j] as i128)) << sh;
                }
            }
            assert_eq!(g.entry_exact(i, j), want, "H[{i}, {j}]");
            if i == j {
                assert_eq!(d[j], want, "diag {j}");
            }
            if (i * 7919 + j) % 4099 == 0 || i == c - 1 {
                refs.push(want);
            }
        }
    }
    let p = g.into_f64_packed().expect("full statistic");
    let mut k = 0;
    for j in 0..c {
        for i in j..c {
            if (i * 7919 + j) % 4099 == 0 || i == c - 1 {
                assert_eq!(p.get(i, j).to_bits(), libm::ldexp(refs[k] as f64, grid).to_bits(), "f64 H[{i}, {j}]");
                assert_eq!(p.get(j, i).to_bits(), p.get(i, j).to_bits());
                k += 1;
            }
        }
    }
}

#[test]
fn full_gram_beyond_8192_inputs_equals_the_definition() {
    let c = 8200;
    let ws = [window(2, c, 1, 0), window(3, c, 2, 3), window(2, c, 3, -2)];
    let mut g = Gram::new(c);
    assert!(g.full);
    for w in &ws {
        g.add_window(w, "down").unwrap();
    }
    assert!(!g.widened(), "these windows fit the i64 triangle");
    assert_eq!(g.tokens, 7);
    check_against_definition(g, &ws);
}

#[test]
fn widened_full_gram_beyond_8192_inputs_equals_the_definition() {
    let c = 8200;
    // 30 binary orders apart: the largest diagonal entry passes 2^63 in the finer grid.
    let ws = [window(2, c, 4, -10), window(2, c, 5, 20)];
    let mut g = Gram::new(c);
    for w in &ws {
        g.add_window(w, "down").unwrap();
    }
    assert!(g.widened());
    check_against_definition(g, &ws);
}

/// The i64 triangle's guard at its edge: one token of 2^17 at exponent 12 beside a window at
/// exponent 0 makes H_00 = 2^38 · 2^24 + 16 = 2^62 + 16 (fits i64, kept); two such tokens
/// make 2^63 + 16 (passes i64::MAX: widened). Without the guard the second overflows.
#[test]
fn the_i64_guard_widens_exactly_when_an_entry_would_pass_i64() {
    for (tokens, widened) in [(1usize, false), (2, true)] {
        let big = TokenFixed { tokens, width: 2, exps: vec![12; tokens], mants: [1 << 17, 1].repeat(tokens) };
        let small = TokenFixed { tokens: 1, width: 2, exps: vec![0], mants: vec![1, 0] };
        for order in [[&big, &small], [&small, &big]] {
            let mut g = Gram::new(2);
            for w in order {
                g.add_window(w, "x").unwrap();
            }
            assert_eq!(g.widened(), widened, "{tokens} tokens");
            // Units of 2^grid, grid = 2·(0 − 2): the small window's value 1 is 4 units.
            assert_eq!(g.grid(), -4);
            assert_eq!(g.entry_exact(0, 0), (tokens as i128) << 62 | 16);
            assert_eq!(g.entry_exact(1, 0), (tokens as i128) << 45);
            assert_eq!(g.entry_exact(1, 1), (tokens as i128) << 28);
        }
    }
}

/// The full matrix ends at a fixed width (Llama-3.1-70B's down_proj, 28,672, is inside);
/// beyond it only the exact diagonal is kept, whatever the memory.
#[test]
fn full_statistics_end_at_a_fixed_width() {
    assert_eq!(FULL_GRAM_MAX_COLS, 32768);
    assert!(Gram::keeps_full(28672) && Gram::keeps_full(32768));
    assert!(!Gram::keeps_full(32769) && !Gram::keeps_full(53248));
    let c = 32769;
    let w = window(2, c, 9, 1);
    let mut g = Gram::new(c);
    assert!(!g.full);
    g.add_window(&w, "down").unwrap();
    let d = g.diag_exact();
    for (i, &di) in d.iter().enumerate() {
        let want: i128 = (0..2).map(|t| (w.mants[t * c + i] as i128).pow(2) << (2 * w.exps[t] - g.grid())).sum();
        assert_eq!(di, want, "H[{i}, {i}]");
    }
    assert!(g.to_f64_full().is_none());
    assert!(g.into_f64_packed().is_none());
}
