//! Every kernel's uniform parameters (`var<uniform> p: Params` at binding 0) as a
//! `#[repr(C)]` struct of 32-bit fields, mirroring the WGSL struct field for field,
//! padding included. The test below parses each kernel with naga and requires the same
//! names, offsets, signedness and size, so a field added, moved or retyped on one side
//! only fails there instead of shifting every later word in silence. `GpuBackend::params`
//! makes the buffer, tagged with the kernels it serves; `record` refuses a dispatch whose
//! first binding is not a parameter buffer made for that kernel's file.

/// One field: its name, byte offset and whether it is `i32` (else `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub signed: bool,
}

/// The two field types WGSL parameters use here.
pub trait Word {
    const SIGNED: bool;
}
impl Word for u32 {
    const SIGNED: bool = false;
}
impl Word for i32 {
    const SIGNED: bool = true;
}

/// A kernel's uniform parameters.
pub trait Uniform: Copy {
    /// The shader files (kernels) whose `Params` this struct is.
    const FILES: &'static [&'static str];
    const FIELDS: &'static [Field];
    /// The struct's bytes as little-endian words (every field is 4 bytes, `repr(C)`: no
    /// padding the struct does not name).
    fn words(&self) -> Vec<u32>;
}

/// Parameters of kernels recorded in pieces by `record_split`: each piece's first element.
pub trait Split: Uniform {
    fn set_offset(&mut self, offset: u32);
}

macro_rules! uniforms {
    ($(
        $(#[$doc:meta])*
        $name:ident for [$($file:literal),+] $(split $off:ident)? {
            $($field:ident: $ty:ty),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name {
                $(pub $field: $ty),*
            }

            impl Uniform for $name {
                const FILES: &'static [&'static str] = &[$($file),+];
                const FIELDS: &'static [Field] = &[$(Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    signed: <$ty as Word>::SIGNED,
                }),*];
                fn words(&self) -> Vec<u32> {
                    vec![$(self.$field as u32),*]
                }
            }

            $(impl Split for $name {
                fn set_offset(&mut self, offset: u32) {
                    self.$off = offset;
                }
            })?
        )*

        /// Every parameter struct: (name, files, fields, size in bytes).
        #[cfg(test)]
        pub(crate) const ALL: &[(&str, &[&str], &[Field], usize)] = &[$(
            (stringify!($name), <$name as Uniform>::FILES, <$name as Uniform>::FIELDS, std::mem::size_of::<$name>())
        ),*];
    };
}

uniforms! {
    Add for ["add.wgsl"] { tokens: u32, width: u32, bits: u32, _pad: u32 }

    /// attn_lib.wgsl's, shared by the three passes over keys.
    Attn for ["attn_max.wgsl", "attn_sum.wgsl", "attention.wgsl"] split offset {
        tokens: u32, heads: u32, kv_heads: u32, head_dim: u32, scale_q30: u32, log2e_q30: u32,
        ln2_q30: u32, bits: u32, kc: u32, chunks: u32, offset: u32, _pad: u32,
    }

    AttnRenorm for ["attn_renorm.wgsl"] { tokens: u32, heads: u32, head_dim: u32, bits: u32 }

    Dequantize for ["dequantize.wgsl"] {
        rows: u32, cols: u32, group_size: u32, dtype: u32, base_exp: i32, groups_per_row: u32,
        count: u32, words: u32, rank: u32, overlay_exp: i32, _pad0: u32, _pad1: u32,
    }

    ExpAdd for ["exp_add.wgsl"] { tokens: u32, bias: i32, _pad1: u32, _pad2: u32 }

    Gram for ["gram.wgsl"] {
        tokens: u32, cols: u32, j0: u32, jtiles: u32, it0: u32, base: u32, align: u32, shift: u32,
        units: u32, _pad0: u32, _pad1: u32, _pad2: u32,
    }

    Ingest for ["ingest.wgsl"] {
        rows: u32, cols: u32, group_size: u32, mant_bits: u32, dtype: u32, groups_per_row: u32,
        total_groups: u32, _pad: u32,
    }

    Matmul for ["matmul.wgsl"] {
        tokens: u32, n: u32, k: u32, group_size: u32, groups_per_row: u32, units: u32,
        slice_groups: u32, slices: u32,
    }

    MatmulReduce for ["matmul_reduce.wgsl"] { total: u32, slices: u32, _pad0: u32, _pad1: u32 }

    Nll for ["nll.wgsl"] {
        tokens: u32, vocab: u32, chunks: u32, _pad0: u32, inv_ln2_q30: u32, ln2_q28: u32,
        _pad1: u32, _pad2: u32,
    }

    NllMax for ["nll_max.wgsl"] split offset {
        tokens: u32, vocab: u32, chunks: u32, offset: u32, chunk: u32, _pad0: u32, _pad1: u32,
        _pad2: u32,
    }

    NllSum for ["nll_sum.wgsl"] split offset {
        tokens: u32, vocab: u32, chunks: u32, log2e_q30: u32, ln2_q30: u32, offset: u32,
        chunk: u32, _pad2: u32,
    }

    Quantize for ["quantize.wgsl"] {
        rows: u32, cols: u32, group_size: u32, bits: u32, base_exp: i32, groups_per_row: u32,
        total_groups: u32, _pad: u32,
    }

    Renorm for ["renorm.wgsl"] split offset { tokens: u32, n: u32, bits: u32, offset: u32 }

    RenormTop for ["renorm_top.wgsl"] split offset {
        tokens: u32, n: u32, bits: u32, chunks: u32, offset: u32, chunk: u32, _pad1: u32,
        _pad2: u32,
    }

    RmsNorm for ["rmsnorm.wgsl"] {
        tokens: u32, width: u32, bits: u32, gamma_exp: i32, he_lo: u32, he_hi: u32, he_e: i32,
        sh_m: u32, sh_e: i32, _pad0: u32, _pad1: u32, _pad2: u32,
    }

    Rope for ["rope.wgsl"] { tokens: u32, width: u32, head_dim: u32, bits: u32 }

    Swiglu for ["swiglu.wgsl"] split offset {
        tokens: u32, width: u32, bits: u32, ln2_q30: u32, log2e_q30: u32, offset: u32,
        _pad1: u32, _pad2: u32,
    }

    WideOps for ["wide_ops.wgsl"] { count: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::shaders;
    use naga::{AddressSpace, ScalarKind, TypeInner};

    /// The WGSL side of one kernel: its uniform struct's fields and size, from naga.
    fn wgsl_params(file: &str) -> Option<(Vec<Field>, usize)> {
        let src = shaders::compose(file).unwrap().source;
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (_, var) = module.global_variables.iter().find(|(_, v)| v.space == AddressSpace::Uniform)?;
        let TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
            panic!("{file}: the uniform is not a struct");
        };
        let fields = members
            .iter()
            .map(|m| {
                let signed = match &module.types[m.ty].inner {
                    TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Sint => true,
                    TypeInner::Scalar(s) if s.width == 4 && s.kind == ScalarKind::Uint => false,
                    other => panic!("{file}: field {:?} is {other:?}, not u32 or i32", m.name),
                };
                Field { name: m.name.clone().unwrap().leak(), offset: m.offset as usize, signed }
            })
            .collect();
        Some((fields, *span as usize))
    }

    /// Each struct equals its kernels' WGSL struct (names, offsets, signedness, size), and
    /// every kernel (a file with an entry point) with a uniform has exactly one mirror.
    #[test]
    fn every_params_struct_matches_its_kernels_wgsl() {
        let mut mirrored = std::collections::BTreeMap::new();
        for &(name, files, fields, size) in ALL {
            for &file in files {
                let (want, span) = wgsl_params(file).unwrap_or_else(|| panic!("{name}: {file} has no uniform"));
                assert_eq!(fields, want.as_slice(), "{name} against {file}'s Params");
                assert_eq!(size, span, "{name}: size against {file}'s Params");
                assert!(mirrored.insert(file, name).is_none(), "{file} is mirrored twice");
            }
        }
        for f in shaders::SHADER_FILES {
            let module = naga::front::wgsl::parse_str(&shaders::compose(f.name).unwrap().source).unwrap();
            if !module.entry_points.is_empty() && wgsl_params(f.name).is_some() {
                assert!(mirrored.contains_key(f.name), "{} has uniform parameters but no struct here", f.name);
            }
        }
    }

    /// The words are the fields in declaration order, i32 as its two's-complement bits.
    #[test]
    fn words_are_the_fields_in_order() {
        let p = ExpAdd { tokens: 3, bias: -8, ..Default::default() };
        assert_eq!(p.words(), vec![3, (-8i32) as u32, 0, 0]);
        let mut r = Renorm { tokens: 1, n: 2, bits: 3, offset: 0 };
        r.set_offset(9);
        assert_eq!(r.words(), vec![1, 2, 3, 9]);
    }
}
