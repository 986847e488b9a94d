//! The WGSL sources, embedded in the binary, and their composition into kernels.
//!
//! WGSL has no include; a kernel file names the library files it needs on its first line
//! (`// requires: wide.wgsl`) and they are prepended. Errors from naga are mapped back to
//! the file and line they came from.

use crate::error::Error;

pub struct ShaderFile {
    pub name: &'static str,
    pub source: &'static str,
}

macro_rules! shader {
    ($name:literal) => {
        ShaderFile { name: $name, source: include_str!(concat!("../../../shaders/", $name)) }
    };
}

/// Every file in shaders/. The lint test asserts this matches the directory exactly.
pub const SHADER_FILES: &[ShaderFile] = &[
    shader!("wide.wgsl"),
    shader!("wide_ops.wgsl"),
    shader!("float_bits.wgsl"),
    shader!("expq.wgsl"),
    shader!("ingest.wgsl"),
    shader!("quantize.wgsl"),
    shader!("dequantize.wgsl"),
    shader!("matmul.wgsl"),
    shader!("matmul_reduce.wgsl"),
    shader!("gram.wgsl"),
    shader!("renorm.wgsl"),
    shader!("renorm_top.wgsl"),
    shader!("rmsnorm.wgsl"),
    shader!("swiglu.wgsl"),
    shader!("exp_add.wgsl"),
    shader!("rope.wgsl"),
    shader!("add.wgsl"),
    shader!("nll.wgsl"),
    shader!("nll_max.wgsl"),
    shader!("nll_sum.wgsl"),
    shader!("attn_lib.wgsl"),
    shader!("attn_block.wgsl"),
    shader!("attn_max.wgsl"),
    shader!("attn_sum.wgsl"),
    shader!("attention.wgsl"),
    shader!("attn_renorm.wgsl"),
];

pub fn file(name: &str) -> Option<&'static ShaderFile> {
    SHADER_FILES.iter().find(|f| f.name == name)
}

/// A kernel's full source and where each file's lines landed in it.
pub struct Composed {
    pub source: String,
    /// (file name, first line in `source` (1-based), number of lines)
    pub parts: Vec<(&'static str, usize, usize)>,
}

impl Composed {
    /// `file:line` for a 1-based line of the composed source.
    pub fn locate(&self, line: usize) -> String {
        for &(name, start, len) in &self.parts {
            if line >= start && line < start + len {
                return format!("shaders/{name}:{}", line - start + 1);
            }
        }
        format!("shaders/(composed):{line}")
    }
}

fn requires(src: &str) -> Vec<&str> {
    src.lines()
        .next()
        .and_then(|l| l.strip_prefix("// requires:"))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// Library files first (in the order named), then the kernel file itself.
pub fn compose(name: &str) -> Result<Composed, Error> {
    let main = file(name).ok_or_else(|| bad_input!("unknown shader file {name}"))?;
    let mut files = Vec::new();
    for dep in requires(main.source) {
        files.push(file(dep).ok_or_else(|| bad_input!("shaders/{name}: requires unknown file {dep}"))?);
    }
    files.push(main);
    let mut source = String::new();
    let mut parts = Vec::new();
    let mut line = 1;
    for f in files {
        let text = if f.source.ends_with('\n') { f.source.to_string() } else { format!("{}\n", f.source) };
        let n = text.lines().count();
        parts.push((f.name, line, n));
        line += n;
        source.push_str(&text);
    }
    Ok(Composed { source, parts })
}

/// Parse and validate a composed kernel with naga; errors name the shader file and line.
pub fn validate(composed: &Composed) -> Result<(naga::Module, naga::valid::ModuleInfo), Error> {
    let module = naga::front::wgsl::parse_str(&composed.source).map_err(|e| {
        let at = e.location(&composed.source).map(|l| composed.locate(l.line_number as usize));
        bad_input!("{}: WGSL parse error: {}", at.unwrap_or_else(|| "shaders".into()), e.message())
    })?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| {
            let at =
                e.spans().next().map(|(span, _)| composed.locate(span.location(&composed.source).line_number as usize));
            bad_input!("{}: WGSL validation error: {}", at.unwrap_or_else(|| "shaders".into()), e.as_inner())
        })?;
    Ok((module, info))
}
