//! The conformance harness itself (tests/common): a required device that would not be
//! compared fails, and a device whose output differs by one bit fails with the case, the
//! device, the element and both values. These are the standing negative controls that keep
//! "same bits on every device" from passing by accident.

mod common;

use std::process::Command;

use common::{Outputs, compare_outputs, select_devices};
use ucw::backend::Backend;
use ucw::backend::cpu::CpuBackend;
use ucw::backend::device::{DeviceInfo, Devices, Skipped};

fn info(index: usize, api: &str) -> DeviceInfo {
    let mut d = Devices::cpu_info();
    d.index = index;
    d.api = api.into();
    d.name = format!("{api} adapter");
    d
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(String::from).collect()
}

#[test]
fn a_required_device_that_the_filter_removes_fails() {
    let infos = [info(0, "cpu"), info(1, "vulkan"), info(2, "gl")];
    let (cpu, req) = (list("cpu"), list("cpu,vulkan,gl"));
    let e = select_devices(&infos, &[], Some(&cpu), Some(&req)).unwrap_err();
    assert!(e.contains("names vulkan") && e.contains("UCW_TEST_DEVICES=cpu filters it out"), "{e}");
    // The same filter without the requirement compares the CPU alone, as asked.
    assert_eq!(select_devices(&infos, &[], Some(&cpu), None).unwrap(), vec![0]);
    // Everything required and selected: compared.
    assert_eq!(select_devices(&infos, &[], None, Some(&req)).unwrap(), vec![0, 1, 2]);
    let vk = list("vulkan");
    assert_eq!(select_devices(&infos, &[], Some(&vk), Some(&list("vulkan"))).unwrap(), vec![0, 1]);
}

#[test]
fn a_required_device_that_is_refused_or_absent_fails() {
    let infos = [info(0, "cpu"), info(1, "vulkan")];
    let refused = Skipped {
        api: "gl".into(),
        name: "NVIDIA".into(),
        driver_info: String::new(),
        reason: "COMPUTE_SHADER pipeline failed".into(),
    };
    let req = list("cpu,vulkan,gl");
    let e = select_devices(&infos, std::slice::from_ref(&refused), None, Some(&req)).unwrap_err();
    assert!(e.contains("names gl") && e.contains("probe refused NVIDIA") && e.contains("COMPUTE_SHADER"), "{e}");
    let e = select_devices(&infos, &[], None, Some(&req)).unwrap_err();
    assert!(e.contains("names gl") && e.contains("not present"), "{e}");
}

/// Opens the devices under test, as every conformance test does; the test below runs this
/// binary again with chosen environments and looks at how this one ends.
#[test]
fn open_the_devices_under_test() {
    let labels: Vec<&str> = common::devices().iter().map(|d| d.label.as_str()).collect();
    println!("devices under test: {}", labels.join(", "));
}

fn run_self(test_devices: &str, require: &str) -> (bool, String) {
    let o = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "open_the_devices_under_test", "--nocapture", "--test-threads", "1"])
        .env("UCW_TEST_DEVICES", test_devices)
        .env("UCW_REQUIRE_DEVICES", require)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn the_harness_refuses_to_compare_the_cpu_with_itself_when_adapters_are_required() {
    // The old hole: the filter applied after the requirement check, so this passed with the
    // CPU compared against itself only.
    let (ok, out) = run_self("cpu", "cpu,vulkan");
    assert!(!ok, "UCW_TEST_DEVICES=cpu with UCW_REQUIRE_DEVICES=cpu,vulkan passed:\n{out}");
    assert!(out.contains("UCW_REQUIRE_DEVICES names vulkan"), "{out}");
    // The control: the same run requiring only what it compares passes.
    let (ok, out) = run_self("cpu", "cpu");
    assert!(ok && out.contains("devices under test: cpu#0\n"), "{out}");
}

/// A small matmul as a conformance body returns it.
fn body(b: &dyn Backend) -> Outputs {
    use ucw::fixed::tensor::{GroupFixed, IngestParams, TokenFixed};
    let mut rng = common::Rng(7);
    let x = TokenFixed {
        tokens: 3,
        width: 64,
        exps: vec![-3, 0, 5],
        mants: (0..192).map(|_| (rng.next_u32() as i32) >> 16).collect(),
    };
    let w = GroupFixed {
        rows: 5,
        cols: 64,
        params: IngestParams { group_size: 64, mantissa_bits: 16 },
        exponents: vec![-10; 5],
        mantissas: (0..320).map(|_| (rng.next_u32() as i32) >> 18).collect(),
    };
    let s = b.matmul(&x, &w).unwrap();
    let mut out = Outputs::new();
    out.add("3x64x5 sums", &s.sums);
    out.add("3x64x5 row_exps", &s.row_exps);
    out
}

#[test]
fn one_flipped_bit_on_one_device_fails_with_case_device_element_and_values() {
    let cpu = CpuBackend::new();
    let reference = body(&cpu);
    assert!(compare_outputs("t", &reference, "same", &body(&cpu)).is_ok());
    for bit in [0usize, 37, 63] {
        let mut got = body(&cpu);
        let elem = 11;
        got.cases[0].bytes[elem * 8 + bit / 8] ^= 1 << (bit % 8);
        let e = compare_outputs("flip", &reference, "faulty#9", &got).unwrap_err();
        let (a, b) = (
            i64::from_le_bytes(reference.cases[0].bytes[elem * 8..elem * 8 + 8].try_into().unwrap()),
            i64::from_le_bytes(got.cases[0].bytes[elem * 8..elem * 8 + 8].try_into().unwrap()),
        );
        let want = format!(
            "flip, case 3x64x5 sums: faulty#9 differs from the CPU twin at element {elem} of 15 (i64): cpu {a} ({a:#x}), faulty#9 {b} ({b:#x}) (1 elements differ)"
        );
        assert_eq!(e, want);
    }
    // A missing element and a missing case are failures too.
    let mut short = body(&cpu);
    short.cases[1].bytes.truncate(4 * 4);
    let e = compare_outputs("t", &reference, "d", &short).unwrap_err();
    assert!(e.contains("case 3x64x5 row_exps: d returned 4 i32 elements, the CPU twin 5"), "{e}");
    let mut fewer = body(&cpu);
    fewer.cases.pop();
    assert!(compare_outputs("t", &reference, "d", &fewer).unwrap_err().contains("returned cases"));
}

#[test]
fn assert_same_bits_panics_when_a_backend_differs_by_one_bit() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // The body runs on the reference first, then on each other device in order: the second
    // run is the faulty device's (CpuBackend is a zero-sized type, so the two cannot be
    // told apart by address).
    let (cpu, other) = (CpuBackend::new(), CpuBackend::new());
    let calls = AtomicUsize::new(0);
    let flipping = |b: &dyn Backend| {
        let mut o = body(b);
        if calls.fetch_add(1, Ordering::Relaxed) == 1 {
            o.cases[1].bytes[4] ^= 0x80;
        }
        o
    };
    let devs: [(&str, &dyn Backend); 2] = [("cpu#0", &cpu), ("faulty#1", &other)];
    common::assert_same_bits_on("control", &devs[..1], flipping);
    calls.store(0, Ordering::Relaxed);
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::assert_same_bits_on("control", &devs, flipping);
    }))
    .expect_err("a one-bit difference passed");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("control, case 3x64x5 row_exps: faulty#1 differs from the CPU twin at element 1 of 5 (i32)"),
        "{msg}"
    );
}
