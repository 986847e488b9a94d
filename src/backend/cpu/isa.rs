//! Which instruction-set variants the CPU backend may use: `UCW_CPU_KERNELS` caps them, so
//! tests can run every variant this CPU has (tests/cpu_kernels.rs) and benches can time one.
//! Every variant gives the same bits; the cap changes speed only.
//!
//! `UCW_CPU_KERNELS=portable|avx2|avx512|amx`: portable is plain Rust (every
//! `simd_dispatch!` kernel's plain build, the f64 matmul without AVX2, no packed weights);
//! avx2 adds the AVX2 builds and the AVX2 + FMA matmul; avx512 the AVX-512 builds and the
//! VNNI matmul; amx (the default: no cap) the AMX tile matmul. `UCW_CPU_AMX=0` is the same as
//! `avx512` (kept from before the switch). A variant the CPU lacks is never used whatever
//! the cap says: `in_use()` names the one that runs.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
    Amx,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Amx => "amx",
        }
    }

    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == s.trim().to_ascii_lowercase())
    }

    /// Whether this CPU has everything the variant's kernels need (ignoring the cap).
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let f = |n: &str| match n {
                "avx2" => is_x86_feature_detected!("avx2"),
                "fma" => is_x86_feature_detected!("fma"),
                "avx512f" => is_x86_feature_detected!("avx512f"),
                "avx512vl" => is_x86_feature_detected!("avx512vl"),
                "avx512dq" => is_x86_feature_detected!("avx512dq"),
                "avx512cd" => is_x86_feature_detected!("avx512cd"),
                "avx512bw" => is_x86_feature_detected!("avx512bw"),
                "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
                _ => false,
            };
            match self {
                Isa::Portable => true,
                Isa::Avx2 => f("avx2") && f("fma"),
                Isa::Avx512 => {
                    Isa::Avx2.supported()
                        && ["avx512f", "avx512vl", "avx512dq", "avx512cd", "avx512bw", "avx512vnni"]
                            .iter()
                            .all(|n| f(n))
                }
                Isa::Amx => Isa::Avx512.supported() && super::matmul_amx::cpu_has_amx(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }
}

/// The cap from the environment, read once (`Isa::Amx`, no cap, when unset). An unknown
/// value is refused loudly rather than ignored: a test that asked for a variant must not run
/// another.
pub fn cap() -> Isa {
    static CAP: OnceLock<Isa> = OnceLock::new();
    *CAP.get_or_init(|| {
        if let Ok(v) = std::env::var("UCW_CPU_KERNELS") {
            return Isa::parse(&v).unwrap_or_else(|| {
                eprintln!("ucw: UCW_CPU_KERNELS={v} is not one of portable, avx2, avx512, amx; ignoring it");
                Isa::Amx
            });
        }
        if std::env::var("UCW_CPU_AMX").is_ok_and(|v| v == "0") { Isa::Avx512 } else { Isa::Amx }
    })
}

/// Whether kernels of `isa` may run (the CPU's support is checked where they are chosen).
pub fn allows(isa: Isa) -> bool {
    isa <= cap()
}

/// The best variant that runs here: the cap, lowered to what this CPU supports.
pub fn in_use() -> Isa {
    Isa::ALL.into_iter().rev().find(|&i| allows(i) && i.supported()).unwrap_or(Isa::Portable)
}
