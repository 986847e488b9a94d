//! 64-bit arithmetic from u32 pairs (shaders/wide.wgsl) against the CPU twin on every device,
//! and the CPU twin against i128 arithmetic.

mod common;

use common::Rng;
use ucw::backend::cpu::wide;
use ucw::backend::{WideCase, WideResult};

const A: &[i64] = &[
    0,
    1,
    -1,
    2,
    -2,
    3,
    -3,
    5,
    -5,
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
    0xffff_ffff,
    0x1_0000_0000,
    -0x1_0000_0000,
    0x7fff_ffff,
    -0x8000_0000,
    0x1_8000_0000,
    -0x1_8000_0000,
    0x0123_4567_89ab_cdef,
    -0x0123_4567_89ab_cdef,
];
const X: &[i32] =
    &[0, 1, -1, 2, -2, i32::MAX, i32::MIN, i32::MIN + 1, 0xffff, 0x10000, -0x10000, 0x7fff_0001, -46341, 46341];
const S: &[u32] = &[0, 1, 2, 3, 15, 16, 31, 32, 33, 47, 62, 63, 64, 65, 96, 127, u32::MAX];

fn cases() -> Vec<WideCase> {
    let mut v = Vec::new();
    for (i, &a) in A.iter().enumerate() {
        for (j, &b) in A.iter().enumerate() {
            let x = X[(i + j) % X.len()];
            let y = X[(i * 7 + j * 3) % X.len()];
            for &s in S {
                v.push(WideCase { a, b, x, y, s });
            }
        }
    }
    for &x in X {
        for &y in X {
            v.push(WideCase { a: x as i64, b: y as i64, x, y, s: 1 });
        }
    }
    // Exact halves at every shift, positive and negative, odd and even quotients.
    for k in 1..64u32 {
        for q in [0i64, 1, 2, 3, -1, -2, -3] {
            let half = 1i64 << (k - 1);
            let base = q.wrapping_shl(k);
            for a in [base.wrapping_add(half), base.wrapping_sub(half), base.wrapping_add(half).wrapping_add(1)] {
                v.push(WideCase { a, b: 0, x: 0, y: 0, s: k });
            }
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5000 {
        v.push(WideCase {
            a: rng.next_u64() as i64 >> rng.below(64),
            b: rng.next_u64() as i64,
            x: rng.next_u32() as i32 >> rng.below(32),
            y: rng.next_u32() as i32,
            s: rng.next_u32() % 70,
        });
    }
    v
}

/// Independent oracle in i128.
fn oracle(c: &WideCase) -> WideResult {
    let k = c.s & 63;
    let a = c.a as i128;
    let p = 1i128 << k;
    let q = a.div_euclid(p);
    let r = a - q * p;
    let rounded = if 2 * r > p || (2 * r == p && q % 2 != 0) { q + 1 } else { q };
    WideResult {
        add: (a + c.b as i128) as i64,
        sub: (a - c.b as i128) as i64,
        mul_i32: (c.x as i128 * c.y as i128) as i64,
        mul_u32: (c.x as u32 as u128 * c.y as u32 as u128) as u64,
        shl: (a << k) as i64,
        sar: q as i64,
        shr_round: rounded as i64,
        neg: (-a) as i64,
        mul_wu: (a * c.s as i128) as i64,
    }
}

#[test]
fn cpu_twin_matches_i128_oracle() {
    for c in cases() {
        assert_eq!(wide::eval(&c), oracle(&c), "case {c:?}");
    }
}

conformance!(wide_ops_same_bits_everywhere, |b| {
    let mut out = common::Outputs::new();
    for (i, x) in b.wide_ops(&cases()).expect("wide_ops").iter().enumerate() {
        out.add(format!("case {i} result words"), &x.to_words());
    }
    out
});

#[test]
fn wide_ops_split_over_small_bindings_and_2d_grid() {
    let cs = cases();
    let reference: Vec<WideResult> = cs.iter().map(wide::eval).collect();
    for (label, gpu) in common::gpu_backends() {
        // 64 KiB bindings → 910 cases (15 workgroups) per chunk; 5 workgroups per grid
        // dimension → 5×3 grids.
        let gpu = gpu.with_work_limits(65536, 5);
        use ucw::backend::Backend;
        let got = gpu.wide_ops(&cs[..2000]).expect("wide_ops");
        assert_eq!(got, reference[..2000], "{label}");
        println!("split wide_ops identical on {label}");
    }
}
