//! DESIGN §3 rule 8: every shader parses and validates with naga, and none computes with
//! floats. The directory is globbed and compared with the embedded registry, so a new
//! shader file cannot slip past the lint (or be missing from the binary).

use std::collections::BTreeSet;

use ucw::backend::gpu::lint::{FLOAT_EXCEPTIONS, float_uses};
use ucw::backend::gpu::shaders::{Composed, SHADER_FILES, compose, validate};

fn shader_dir_files() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    std::fs::read_dir(dir)
        .expect("shaders/ directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".wgsl"))
        .collect()
}

fn composed_of(name: &str, src: &str) -> Composed {
    Composed {
        source: src.to_string(),
        parts: vec![(Box::leak(name.to_string().into_boxed_str()), 1, src.lines().count())],
    }
}

#[test]
fn every_shader_is_registered_valid_and_float_free() {
    let on_disk = shader_dir_files();
    let registered: BTreeSet<String> = SHADER_FILES.iter().map(|f| f.name.to_string()).collect();
    assert_eq!(
        on_disk, registered,
        "shaders/*.wgsl and SHADER_FILES (src/backend/gpu/shaders.rs) must list the same files"
    );
    let mut linted = 0;
    for f in SHADER_FILES {
        // The embedded copy is the file on disk (include_str!), checked anyway.
        let disk = std::fs::read_to_string(format!("{}/shaders/{}", env!("CARGO_MANIFEST_DIR"), f.name)).unwrap();
        assert_eq!(disk, f.source, "{}", f.name);
        let composed = compose(f.name).unwrap_or_else(|e| panic!("{e}"));
        let (module, info) = validate(&composed).unwrap_or_else(|e| panic!("{e}"));
        let uses = float_uses(&module, &info);
        let excepted = FLOAT_EXCEPTIONS.iter().any(|(name, _)| *name == f.name);
        assert!(excepted || uses.is_empty(), "shaders/{} uses floats:\n{}", f.name, uses.join("\n"));
        linted += 1;
    }
    assert_eq!(linted, on_disk.len());
    println!("linted {linted} shader files: {}", on_disk.into_iter().collect::<Vec<_>>().join(", "));
}

#[test]
fn lint_catches_float_arithmetic() {
    let bad = [
        ("float multiply", "fn f(x: u32) -> u32 { let y = f32(x) * 1.5; return u32(y); }"),
        (
            "float buffer",
            "@group(0) @binding(0) var<storage, read_write> b: array<f32>;\n\
             @compute @workgroup_size(1) fn main() { b[0] = b[1] + b[2]; }",
        ),
        ("bitcast then add", "fn g(x: u32) -> u32 { return bitcast<u32>(bitcast<f32>(x) + bitcast<f32>(x)); }"),
        ("float local", "fn h() -> i32 { var acc = 0.0; acc += 1.0; return i32(acc); }"),
    ];
    for (what, src) in bad {
        let (module, info) = validate(&composed_of("bad.wgsl", src)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let uses = float_uses(&module, &info);
        assert!(!uses.is_empty(), "{what}: not caught");
        println!("{what}: {}", uses[0]);
    }
    // And an integer-only snippet passes.
    let good = "fn k(x: u32) -> u32 { return (x * 3u) >> (x & 31u); }";
    let (module, info) = validate(&composed_of("good.wgsl", good)).unwrap();
    assert!(float_uses(&module, &info).is_empty());
}

#[test]
fn naga_errors_name_the_file_and_line() {
    // A composed kernel: the error is on line 2 of the second part.
    let src =
        "fn ok() -> u32 { return 1u; }\nfn also_ok() -> u32 { return 2u; }\nfn broken() -> u32 {\n  return nope;\n}\n";
    let c = Composed { source: src.to_string(), parts: vec![("lib.wgsl", 1, 2), ("kernel.wgsl", 3, 3)] };
    let err = validate(&c).unwrap_err().to_string();
    assert!(err.starts_with("shaders/kernel.wgsl:2:"), "{err}");
    let invalid = "fn f() -> u32 { return 1i; }\n";
    let err = validate(&composed_of("typed.wgsl", invalid)).unwrap_err().to_string();
    assert!(err.starts_with("shaders/typed.wgsl:1:"), "{err}");
}
