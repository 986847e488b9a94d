//! Exact calibration statistics on the device (shaders/gram.wgsl, issue 16 item 4): a Gram
//! accumulator opened on an adapter (`Gram::on`) gives, entry for entry, the integers of the
//! host's (codec/gram.rs, the CPU twin, itself checked against the i128 definition in its
//! unit tests and in tests/gram_wide.rs): across windows whose grids differ (the device
//! shifts its triangle), at the operand bound 2^19, through the widening to i128 (the
//! triangle comes back to the host mid-way), and with the triangle and the tokens split
//! over many bindings.

mod common;

use common::{Knob, Rng};
use ucw::backend::Backend;
use ucw::codec::gram::Gram;
use ucw::fixed::tensor::TokenFixed;

/// A window of `tokens` tokens of `width` inputs: exponents in [e0, e0 + spread], mantissas
/// of every size, a third at ±2^17 (the values reach ±2^19 on the window's grid).
fn window(tokens: usize, width: usize, seed: u64, e0: i32, spread: u64) -> TokenFixed {
    let mut rng = Rng(seed);
    let mants = (0..tokens * width)
        .map(|i| match (i + seed as usize) % 3 {
            0 => [1 << 17, -(1 << 17)][rng.below(2) as usize],
            _ => (rng.next_u32() as i32) >> (14 + rng.below(16) as u32),
        })
        .collect();
    let exps = (0..tokens).map(|_| e0 + rng.below(spread + 1) as i32).collect();
    TokenFixed { tokens, width, exps, mants }
}

/// Every entry of a settled statistic (i128 as two i64 words), its diagonal, grid and
/// whether it widened.
fn add_gram(out: &mut common::Outputs, case: &str, b: &dyn Backend, mut g: Gram) {
    if b.api() != "cpu" {
        assert!(g.on_device() || g.widened(), "{case}: the statistic is not on {}", b.api());
    }
    g.settle(b).unwrap();
    assert!(!g.on_device());
    let c = g.cols;
    let mut words = Vec::new();
    for j in 0..c {
        for i in j..c {
            let v = g.entry_exact(i, j);
            words.push(v as i64);
            words.push((v >> 64) as i64);
        }
    }
    out.add(format!("{case} entries"), &words);
    let d: Vec<i64> = g.diag_exact().iter().flat_map(|&v| [v as i64, (v >> 64) as i64]).collect();
    out.add(format!("{case} diag"), &d);
    out.add(format!("{case} grid, widened, tokens"), &[g.grid() as i64, g.widened() as i64, g.tokens as i64]);
}

// (width, windows as (tokens, first exponent, spread)): one input; partial and whole 32 ×
// 32 tiles; windows shorter and longer than a 64-token stage; a finer then a coarser grid
// (the triangle shifts on the device), an all-zero window between.
type Window = (usize, i32, u64);
const CASES: &[(usize, &[Window])] = &[
    (1, &[(5, -3, 2)]),
    (5, &[(37, 0, 3), (1, -3, 0)]),
    (33, &[(64, -20, 4), (100, -14, 1), (0, 0, 0)]),
    (45, &[(130, 4, 0), (7, 5, 2), (65, 1, 2)]),
    (96, &[(70, -1, 5), (33, -1, 0), (130, -3, 1)]),
];

fn body(b: &dyn Backend) -> common::Outputs {
    let mut out = common::Outputs::new();
    for (k, &(c, wins)) in CASES.iter().enumerate() {
        let mut g = Gram::on(b, c).unwrap();
        for (w, &(t, e0, spread)) in wins.iter().enumerate() {
            let mut x = window(t, c, 100 * k as u64 + w as u64, e0, spread);
            if t == 0 {
                x = TokenFixed { tokens: 3, width: c, exps: vec![5; 3], mants: vec![0; 3 * c] };
            }
            g.add_window_on(b, &x, "case").unwrap();
        }
        assert!(!g.widened(), "{c} inputs: the triangle must stay in i64 (on the device)");
        add_gram(&mut out, &format!("{c} inputs, {} windows", wins.len()), b, g);
    }
    // The i64 guard (tests/gram_wide.rs): one token of 2^17 at exponent 12 beside a window at
    // exponent 0 fits i64 (H_00 = 2^62 + 16); two pass it, so the triangle is read back and
    // widened to i128 on the host, in either order, and a later window adds there.
    for tokens in [1usize, 2] {
        for first_big in [true, false] {
            let big = TokenFixed { tokens, width: 2, exps: vec![12; tokens], mants: [1 << 17, 1].repeat(tokens) };
            let small = TokenFixed { tokens: 1, width: 2, exps: vec![0], mants: vec![1, 0] };
            let mut g = Gram::on(b, 2).unwrap();
            let order = if first_big { [&big, &small] } else { [&small, &big] };
            for w in order {
                g.add_window_on(b, w, "x").unwrap();
            }
            assert_eq!(g.widened(), tokens == 2, "{tokens} tokens");
            g.add_window_on(b, &window(3, 2, 7, 0, 1), "x").unwrap();
            add_gram(&mut out, &format!("guard {tokens} big first {first_big}"), b, g);
        }
    }
    out
}

/// Statistics on the device (a software adapter keeps them on the host by default:
/// `UCW_GPU_GRAM`), as they are and with small bindings and grids: the 96-input triangle
/// (37,248 bytes) splits into two chunks (32 columns, then 64), its windows of 70 and 130
/// tokens into pieces of 64 (24 KiB of values), and every dispatch over a 2-D grid of at
/// most 3 workgroups a side.
const KNOBS: &[Knob] = &[
    ("statistics on the device", |g| g.with_gram_on_device(true)),
    ("on the device, bindings of 24 KiB, grids of 3", |g| g.with_gram_on_device(true).with_work_limits(24 << 10, 3)),
];

conformance_with_knobs!(gram_same_bits_everywhere, KNOBS, body);
