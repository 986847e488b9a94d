//! Floating-point storage formats ucw reads and writes, described by their bit fields.
//!
//! Everything here is bit manipulation: a value is decoded to an exact `sig * 2^exp`
//! integer pair, never to a host float (DESIGN §3 rule 1).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    BF16,
    F16,
    F32,
}

/// An IEEE-style value decoded exactly: `(-1)^neg * sig * 2^exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Finite { neg: bool, sig: u32, exp: i32 },
    Inf { neg: bool },
    NaN,
}

impl DType {
    /// The spelling safetensors uses in its header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
        }
    }

    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::F32 => Some(DType::F32),
            _ => None,
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }

    /// Code used in shader parameter blocks (must match shaders/*.wgsl).
    pub fn shader_code(self) -> u32 {
        match self {
            DType::BF16 => 0,
            DType::F16 => 1,
            DType::F32 => 2,
        }
    }

    /// (exponent bits, fraction bits, bias)
    pub fn fields(self) -> (u32, u32, i32) {
        match self {
            DType::BF16 => (8, 7, 127),
            DType::F16 => (5, 10, 15),
            DType::F32 => (8, 23, 127),
        }
    }

    /// Raw bits of element `i` of little-endian storage.
    #[inline]
    pub fn load_bits(self, bytes: &[u8], i: usize) -> u32 {
        match self {
            DType::BF16 | DType::F16 => u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]) as u32,
            DType::F32 => u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
        }
    }

    /// Exact decode of a value's bits (the CPU twin of `decode` in shaders/ingest.wgsl).
    #[inline]
    pub fn decode(self, bits: u32) -> Decoded {
        let (eb, fb, bias) = self.fields();
        let neg = (bits >> (eb + fb)) & 1 == 1;
        let ef = (bits >> fb) & ((1 << eb) - 1);
        let frac = bits & ((1 << fb) - 1);
        if ef == (1 << eb) - 1 {
            return if frac == 0 { Decoded::Inf { neg } } else { Decoded::NaN };
        }
        if ef == 0 {
            Decoded::Finite { neg, sig: frac, exp: 1 - bias - fb as i32 }
        } else {
            Decoded::Finite { neg, sig: frac | (1 << fb), exp: ef as i32 - bias - fb as i32 }
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.safetensors_name())
    }
}
