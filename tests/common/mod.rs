//! Conformance harness: run one test body on the CPU twin and on every adapter found, and
//! require byte-identical outputs (the style of wgpu's shader tests and llama.cpp's
//! test-backend-ops).
//!
//! UCW_TEST_DEVICES=cpu,vulkan,gl restricts the devices by API; default: all present.
//! UCW_REQUIRE_DEVICES=cpu,vulkan,gl fails the test when a named API is absent, so CI can
//! never quietly compare the CPU with itself.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use ucw::backend::Backend;
use ucw::backend::device::Devices;
use ucw::backend::gpu::GpuBackend;

pub struct TestDevice {
    /// "cpu", "vulkan", "gl", ... plus the adapter index when an API has several.
    pub label: String,
    pub backend: Arc<dyn Backend>,
}

fn env_list(var: &str) -> Option<Vec<String>> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect())
}

fn discovered() -> &'static Devices {
    static D: OnceLock<Devices> = OnceLock::new();
    D.get_or_init(Devices::discover)
}

/// Indices (in `ucw devices` order) of the devices under test, after the env filters.
fn selected_indices() -> Vec<usize> {
    let devices = discovered();
    let wanted = env_list("UCW_TEST_DEVICES");
    if let Some(required) = env_list("UCW_REQUIRE_DEVICES") {
        for api in &required {
            assert!(
                devices.infos.iter().any(|d| &d.api == api),
                "UCW_REQUIRE_DEVICES names {api}, which is not present here (present: {})",
                devices.summary()
            );
        }
    }
    devices
        .infos
        .iter()
        .filter(|d| d.index == 0 || wanted.as_ref().is_none_or(|w| w.contains(&d.api)))
        .map(|d| d.index)
        .collect()
}

/// The CPU twin first, then every selected adapter. Opened once per test binary.
pub fn devices() -> &'static [TestDevice] {
    static ALL: OnceLock<Vec<TestDevice>> = OnceLock::new();
    ALL.get_or_init(|| {
        let devices = discovered();
        selected_indices()
            .into_iter()
            .map(|i| {
                let info = &devices.infos[i];
                let backend: Arc<dyn Backend> = Arc::from(
                    devices.open(i).unwrap_or_else(|e| panic!("cannot open device {i} ({}): {e}", info.name)),
                );
                TestDevice { label: format!("{}#{}", info.api, i), backend }
            })
            .collect()
    })
}

/// Every selected adapter opened afresh as a wgpu backend (for the GPU-only knobs).
pub fn gpu_backends() -> Vec<(String, GpuBackend)> {
    let devices = discovered();
    selected_indices()
        .into_iter()
        .filter(|&i| i > 0)
        .map(|i| (format!("{}#{}", devices.infos[i].api, i), devices.open_gpu(i).expect("open adapter")))
        .collect()
}

/// Where two byte strings first differ, for a readable failure.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Run `body` on every device; the CPU twin's bytes are the reference.
pub fn assert_same_bits(test: &str, body: impl Fn(&dyn Backend) -> Vec<u8>) {
    let devs = devices();
    let reference = body(devs[0].backend.as_ref());
    let mut ran = vec![devs[0].label.clone()];
    for d in &devs[1..] {
        let got = body(d.backend.as_ref());
        if let Some(at) = first_difference(&reference, &got) {
            panic!(
                "{test}: {} differs from the CPU twin at byte {at} (lengths {} vs {})",
                d.label,
                got.len(),
                reference.len()
            );
        }
        ran.push(d.label.clone());
    }
    println!("{test}: {} bytes identical on {}", reference.len(), ran.join(", "));
}

/// Declare a conformance test: one body, run on every device, outputs compared bytewise.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            common::assert_same_bits(stringify!($name), $body);
        }
    };
}

/// Deterministic xorshift generator for test inputs (no dependency, same on every OS).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub fn i32s_to_bytes(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Pinned settings of the golden packs (golden/<fixture>.json, golden/eval.json): spelled
/// out rather than `Options::default()` so a change of defaults cannot move a golden digest.
pub fn golden_pack_options() -> ucw::compress::Options {
    ucw::compress::Options {
        bits: 5,
        group_size: 64,
        rank: ucw::compress::Rank::Fixed(0),
        out_dtype: None,
        force: false,
        ..Default::default()
    }
}

/// Run `compute(device, budget)` on every device under test at every budget and require
/// `golden`; the CPU at `budgets[0]` is skipped (the caller computed it as the reference).
/// Returns "label (budget B)" for every combination checked, for the test's summary line.
pub fn check_devices_and_budgets(
    budgets: &[u64],
    golden: &serde_json::Value,
    compute: impl Fn(&dyn Backend, u64) -> serde_json::Value,
) -> Vec<String> {
    let mut ran = Vec::new();
    for (i, d) in devices().iter().enumerate() {
        for &budget in budgets {
            if i > 0 || budget != budgets[0] {
                let got = compute(d.backend.as_ref(), budget);
                assert_eq!(&got, golden, "{} with a {budget}-byte budget differs from golden", d.label);
            }
            ran.push(format!("{} ({budget} B)", d.label));
        }
    }
    ran
}
