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

    pub fn from_safetensors_name(s: &str) -> Option<DType> {
        match s {
            "BF16" => Some(DType::BF16),
            "F16" => Some(DType::F16),
            "F32" => Some(DType::F32),
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

impl DType {
    /// Bits of `(-1)^neg * mag * 2^exp` in this format, rounded once to nearest even
    /// (twin of `encode_float` in shaders/float_bits.wgsl). `None` when the value overflows
    /// the format's largest finite value. An exact zero
    /// (`mag == 0`) encodes as +0; a nonzero value that rounds to zero keeps its sign, as IEEE
    /// conversions do.
    pub fn encode(self, neg: bool, mag: u64, exp: i32) -> Option<u32> {
        let (eb, fb, bias) = self.fields();
        if mag == 0 {
            return Some(0);
        }
        let sign = u32::from(neg) << (eb + fb);
        let emax = (1i32 << eb) - 2 - bias;
        let emin = 1 - bias;
        let n = 64 - mag.leading_zeros() as i32;
        let mut e = exp + n - 1;
        if e >= emin {
            let shift = n - (fb as i32 + 1);
            let mut sig = if shift > 0 { shr_round_u64(mag, shift as u32) } else { mag << (-shift) as u32 };
            if sig >> (fb + 1) != 0 {
                // Rounded up to the next power of two.
                sig >>= 1;
                e += 1;
            }
            if e > emax {
                return None;
            }
            Some(sign | (((e + bias) as u32) << fb) | (sig as u32 & ((1 << fb) - 1)))
        } else {
            // Subnormal: units of 2^(emin - fb). A round-up to 2^fb lands exactly on the
            // smallest normal's encoding.
            let shift = emin - fb as i32 - exp;
            // shift <= 0 only for values with few significant bits, which fit exactly.
            let sig = if shift <= 0 { mag << (-shift) as u32 } else { shr_round_u64(mag, shift as u32) };
            Some(sign | sig as u32)
        }
    }
}

/// Unsigned `a / 2^s` rounded half to even, for `s` in 1..=63 (s >= 64 gives 0 when a < 2^63).
pub fn shr_round_u64(a: u64, s: u32) -> u64 {
    if s == 0 {
        return a;
    }
    if s >= 64 {
        return 0;
    }
    let q = a >> s;
    let rem = a & ((1u64 << s) - 1);
    let half = 1u64 << (s - 1);
    if rem > half || (rem == half && q & 1 == 1) { q + 1 } else { q }
}

/// Index of the first NaN or ±Inf among little-endian `dtype` values.
pub fn first_non_finite(bytes: &[u8], dtype: DType) -> Option<usize> {
    (0..bytes.len() / dtype.size_bytes())
        .find(|&i| !matches!(dtype.decode(dtype.load_bits(bytes, i)), Decoded::Finite { .. }))
}
