//! Conformance harness: run one test body on the CPU twin and on every adapter found, and
//! require byte-identical outputs (the style of wgpu's shader tests and llama.cpp's
//! test-backend-ops).
//!
//! UCW_TEST_DEVICES=cpu,vulkan,gl restricts the devices by API; default: all present.
//! UCW_REQUIRE_DEVICES=cpu,vulkan,gl fails the test unless each named API is among the
//! devices actually compared: absent, refused by the adapter probe, or filtered out by
//! UCW_TEST_DEVICES, it is a failure (CI can never quietly compare the CPU with itself).
//! UCW_REQUIRE_REAL_DATA=1 turns the opt-in real-model tests' skip into a failure.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use ucw::backend::Backend;
use ucw::backend::device::{DeviceInfo, Devices, Skipped};
use ucw::backend::gpu::GpuBackend;

pub struct TestDevice {
    /// "cpu", "vulkan", "gl", ... plus the adapter index when an API has several.
    pub label: String,
    /// The device's index in `ucw devices` order (what `--device N` takes).
    pub index: usize,
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

/// Which devices a test compares: the CPU always, then every device whose API `wanted`
/// names (all when `None`). Every API `required` names must be among the result, whatever
/// removed it: absent here, refused by the probe (`skipped`), or filtered out by `wanted`.
/// Pure, so the rule itself is tested without adapters (tests/harness.rs).
pub fn select_devices(
    infos: &[DeviceInfo],
    skipped: &[Skipped],
    wanted: Option<&[String]>,
    required: Option<&[String]>,
) -> Result<Vec<usize>, String> {
    let chosen: Vec<usize> =
        infos.iter().filter(|d| d.index == 0 || wanted.is_none_or(|w| w.contains(&d.api))).map(|d| d.index).collect();
    for api in required.unwrap_or_default() {
        if chosen.iter().any(|&i| &infos[i].api == api) {
            continue;
        }
        let why = if infos.iter().any(|d| &d.api == api) {
            format!("UCW_TEST_DEVICES={} filters it out", wanted.unwrap_or_default().join(","))
        } else if let Some(s) = skipped.iter().find(|s| &s.api == api) {
            format!("the adapter probe refused {} ({}): {}", s.name, s.api, s.reason)
        } else {
            "it is not present here".to_string()
        };
        let present: Vec<String> = infos.iter().map(|d| format!("{} {}", d.index, d.api)).collect();
        return Err(format!(
            "UCW_REQUIRE_DEVICES names {api}, which would not be compared: {why} (present: {})",
            present.join(", ")
        ));
    }
    Ok(chosen)
}

/// Indices (in `ucw devices` order) of the devices under test; panics when a required
/// device would not be compared.
pub fn selected_indices() -> Vec<usize> {
    let d = discovered();
    let (wanted, required) = (env_list("UCW_TEST_DEVICES"), env_list("UCW_REQUIRE_DEVICES"));
    select_devices(&d.infos, &d.skipped, wanted.as_deref(), required.as_deref()).unwrap_or_else(|e| panic!("{e}"))
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
                TestDevice { label: format!("{}#{}", info.api, i), index: i, backend }
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

/// Say on the terminal that (part of) a test did not run, and why. Written to the stderr
/// handle directly: libtest captures `eprintln!` of passing tests, which would hide it.
pub fn report_skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// An opt-in test's input named by `var` (a path to real data): `None`, with a line saying
/// that the test was skipped and why, when it is unset; a failure instead when
/// UCW_REQUIRE_REAL_DATA is set, so a run that promised real data cannot skip it quietly.
pub fn opt_in(test: &str, var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("UCW_REQUIRE_REAL_DATA").is_err(),
                "{test}: UCW_REQUIRE_REAL_DATA is set but {var} is not ({what})"
            );
            report_skip(test, &format!("{var} is not set ({what})"));
            None
        }
    }
}

/// An element type a conformance case can report: its name and its bits as little-endian
/// bytes (what is compared), and how to print one element.
pub trait Elem: Copy + std::fmt::Display + std::fmt::LowerHex {
    const NAME: &'static str;
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Self;
}

macro_rules! elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const NAME: &'static str = stringify!($t);
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend(self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap())
            }
        }
    )*};
}
elem!(u8, u16, i32, u32, i64, u64);

/// One named case of a conformance body: its raw bits and how to print an element.
pub struct Case {
    pub name: String,
    pub elem: &'static str,
    pub size: usize,
    pub bytes: Vec<u8>,
    show: fn(&[u8]) -> String,
}

/// What a conformance body returns on one device: named cases in a fixed order. Only the
/// bytes are compared; names and element types make a failure readable.
#[derive(Default)]
pub struct Outputs {
    pub cases: Vec<Case>,
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Append `values` to case `name` (created at the end the first time it is named).
    pub fn add<T: Elem>(&mut self, name: impl Into<String>, values: &[T]) {
        let name = name.into();
        let i = match self.cases.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                let show = |b: &[u8]| {
                    let v = T::get(b);
                    format!("{v} ({v:#x})")
                };
                self.cases.push(Case { name, elem: T::NAME, size: T::SIZE, bytes: Vec::new(), show });
                self.cases.len() - 1
            }
        };
        assert_eq!(self.cases[i].elem, T::NAME, "case {} mixes element types", self.cases[i].name);
        for &v in values {
            v.put(&mut self.cases[i].bytes);
        }
    }

    /// A token-major result as two cases, "`name` exps" and "`name` mants".
    pub fn tokens(&mut self, name: &str, y: &ucw::fixed::tensor::TokenFixed) {
        self.add(format!("{name} exps"), &y.exps);
        self.add(format!("{name} mants"), &y.mants);
    }

    pub fn total_bytes(&self) -> usize {
        self.cases.iter().map(|c| c.bytes.len()).sum()
    }
}

/// Compare a device's outputs with the reference's, case by case: `Err` names the test,
/// the case, the device, the first differing element with both values, and how many differ.
pub fn compare_outputs(test: &str, reference: &Outputs, label: &str, got: &Outputs) -> Result<(), String> {
    let names = |o: &Outputs| o.cases.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(reference) != names(got) {
        return Err(format!("{test}: {label} returned cases {:?}, the CPU twin {:?}", names(got), names(reference)));
    }
    for (r, g) in reference.cases.iter().zip(&got.cases) {
        if r.bytes.len() != g.bytes.len() {
            return Err(format!(
                "{test}, case {}: {label} returned {} {} elements, the CPU twin {}",
                r.name,
                g.bytes.len() / g.size,
                g.elem,
                r.bytes.len() / r.size
            ));
        }
        let rs: Vec<&[u8]> = r.bytes.chunks_exact(r.size).collect();
        let gs: Vec<&[u8]> = g.bytes.chunks_exact(g.size).collect();
        let differ: Vec<usize> = (0..rs.len()).filter(|&i| rs[i] != gs[i]).collect();
        if let Some(&i) = differ.first() {
            return Err(format!(
                "{test}, case {}: {label} differs from the CPU twin at element {i} of {} ({}): cpu {}, {label} {} ({} elements differ)",
                r.name,
                rs.len(),
                r.elem,
                (r.show)(rs[i]),
                (g.show)(gs[i]),
                differ.len()
            ));
        }
    }
    Ok(())
}

/// Run `body` on every device under test; the CPU twin's outputs are the reference.
pub fn assert_same_bits(test: &str, body: impl Fn(&dyn Backend) -> Outputs) {
    let devs: Vec<(&str, &dyn Backend)> = devices().iter().map(|d| (d.label.as_str(), d.backend.as_ref())).collect();
    assert_same_bits_on(test, &devs, body);
}

/// `assert_same_bits` over the given (label, backend) pairs, the first being the reference.
pub fn assert_same_bits_on(test: &str, devs: &[(&str, &dyn Backend)], body: impl Fn(&dyn Backend) -> Outputs) {
    let reference = body(devs[0].1);
    assert!(reference.total_bytes() > 0, "{test}: the body produced no output to compare");
    let mut ran = vec![devs[0].0.to_string()];
    for &(label, backend) in &devs[1..] {
        let got = body(backend);
        if let Err(e) = compare_outputs(test, &reference, label, &got) {
            panic!("{e}");
        }
        ran.push(label.to_string());
    }
    let cases: Vec<&str> = reference.cases.iter().map(|c| c.name.as_str()).take(4).collect();
    let more = if reference.cases.len() > cases.len() { ", ..." } else { "" };
    println!(
        "{test}: {} bytes in {} cases ({}{more}) identical on {}",
        reference.total_bytes(),
        reference.cases.len(),
        cases.join(", "),
        ran.join(", ")
    );
}

/// A setting of a GPU backend's test knobs (binding size, grid, chunk sizes: each lowered
/// only to reach the splitting paths on small inputs) and its name for the report.
pub type Knob = (&'static str, fn(GpuBackend) -> GpuBackend);

/// The knob that changes nothing: the adapter as the product opens it.
pub const AS_OPENED: Knob = ("as opened", |g| g);

/// Run `body` on the CPU twin, then on every adapter under test once per knob setting
/// (opened afresh for each), and require the CPU's bits every time.
pub fn assert_same_bits_with_knobs(test: &str, knobs: &[Knob], body: impl Fn(&dyn Backend) -> Outputs) {
    let devs = devices();
    let reference = body(devs[0].backend.as_ref());
    assert!(reference.total_bytes() > 0, "{test}: the body produced no output to compare");
    let mut ran = vec![devs[0].label.clone()];
    for d in &devs[1..] {
        for (name, apply) in knobs {
            let gpu = apply(discovered().open_gpu(d.index).expect("open adapter"));
            let label = format!("{} ({name})", d.label);
            if let Err(e) = compare_outputs(test, &reference, &label, &body(&gpu)) {
                panic!("{e}");
            }
            ran.push(label);
        }
    }
    println!(
        "{test}: {} bytes in {} cases identical on {}",
        reference.total_bytes(),
        reference.cases.len(),
        ran.join(", ")
    );
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

/// A conformance test whose body must also give the CPU's bits on every adapter under each
/// knob setting (`assert_same_bits_with_knobs`).
#[macro_export]
macro_rules! conformance_with_knobs {
    ($name:ident, $knobs:expr, $body:expr) => {
        #[test]
        fn $name() {
            common::assert_same_bits_with_knobs(stringify!($name), $knobs, $body);
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

/// A random llama for tests that need other shapes than the fixtures': the llama-bf16
/// fixture's config (vocabulary 512, tied embeddings) with these sizes, its tokenizer, and
/// bf16 weights drawn from a fixed xorshift generator (uniform, half-width `scale(linear)`
/// for each linear, 1 ± 0.05 for the norms).
pub struct SyntheticLlama {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    /// `max_position_embeddings`, where the fixture's 256 is too few.
    pub max_positions: Option<usize>,
    pub seed: u64,
    /// The scale of a linear's weights from its name ("mlp.down_proj", ...).
    pub scale: fn(&str) -> f32,
}

impl SyntheticLlama {
    pub fn write(&self, dir: &std::path::Path) {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-bf16");
        let (h, ff, heads, kv, hd, vocab) =
            (self.hidden, self.intermediate, self.heads, self.kv_heads, self.head_dim, 512);
        std::fs::create_dir_all(dir).unwrap();
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
        cfg["hidden_size"] = h.into();
        cfg["intermediate_size"] = ff.into();
        cfg["num_attention_heads"] = heads.into();
        cfg["num_key_value_heads"] = kv.into();
        cfg["head_dim"] = hd.into();
        cfg["num_hidden_layers"] = self.layers.into();
        if let Some(m) = self.max_positions {
            cfg["max_position_embeddings"] = m.into();
        }
        std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        let mut state = self.seed;
        let mut bf16 = |n: usize, scale: f32, one: bool| -> Vec<u8> {
            (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                    let x = if one { 1.0 + 0.1 * u } else { scale * u };
                    half::bf16::from_f32(x).to_bits().to_le_bytes()
                })
                .collect()
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
            ("model.embed_tokens.weight".into(), vec![vocab, h], bf16(vocab * h, 1.0, false)),
            ("model.norm.weight".into(), vec![h], bf16(h, 0.0, true)),
        ];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for (n, r, c) in [
                ("self_attn.q_proj", heads * hd, h),
                ("self_attn.k_proj", kv * hd, h),
                ("self_attn.v_proj", kv * hd, h),
                ("self_attn.o_proj", h, heads * hd),
                ("mlp.gate_proj", ff, h),
                ("mlp.up_proj", ff, h),
                ("mlp.down_proj", h, ff),
            ] {
                tensors.push((format!("{p}.{n}.weight"), vec![r, c], bf16(r * c, (self.scale)(n), false)));
            }
            for n in ["input_layernorm", "post_attention_layernorm"] {
                tensors.push((format!("{p}.{n}.weight"), vec![h], bf16(h, 0.0, true)));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
            .iter()
            .map(|(n, s, b)| {
                (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap())
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    }
}

/// `ucw compress FIXTURE -o OUT` on the CPU, calibrated on tests/fixtures/text/sample.txt
/// with the golden settings (4 windows of 64 tokens from token 16), plus `extra` options;
/// fails the test when the command fails.
pub fn compress_calibrated(fixture: &str, out: &std::path::Path, extra: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (src, sample) = (root.join("tests/fixtures").join(fixture), root.join("tests/fixtures/text/sample.txt"));
    let mut args = vec!["compress", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "--device", "cpu"];
    args.extend(["--calib", sample.to_str().unwrap(), "--calib-windows", "4", "--calib-seq-len", "64"]);
    args.extend(["--calib-skip", "16"]);
    args.extend(extra);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ucw"))
        .args(&args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ucw {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
