// requires: wide.wgsl
// Integer → float bits with one round-half-to-even, by bit manipulation only.
// CPU twin: DType::encode in src/dtype.rs.

struct Encoded {
    bits: u32,
    ok: bool,   // false when the value overflows the format's largest finite value
}

// Bits of (-1)^neg * mag * 2^exp in format `dtype` (0 bf16, 1 f16, 2 f32); mag < 2^63.
fn encode_float(neg: bool, mag: vec2<u32>, exp: i32, dtype: u32) -> Encoded {
    var eb = 8u;
    var fb = 7u;
    var bias = 127i;
    if (dtype == 1u) {
        eb = 5u;
        fb = 10u;
        bias = 15i;
    } else if (dtype == 2u) {
        fb = 23u;
    }
    var out: Encoded;
    out.ok = true;
    out.bits = 0u;
    if (mag.x == 0u && mag.y == 0u) {
        return out;
    }
    let sign = select(0u, 1u << ((eb + fb) & 31u), neg);
    let emax = i32((1u << eb) - 2u) - bias;
    let emin = 1i - bias;
    let n = i32(bitlen64(mag));
    var e = exp + n - 1i;
    if (e >= emin) {
        let shift = n - i32(fb + 1u);
        var sig: vec2<u32>;
        if (shift > 0i) {
            sig = w_shr_round(mag, u32(shift));
        } else {
            sig = w_shl(mag, u32(-shift));
        }
        if ((sig.x >> ((fb + 1u) & 31u)) != 0u) {
            sig.x = sig.x >> 1u;
            e = e + 1i;
        }
        if (e > emax) {
            out.ok = false;
            return out;
        }
        out.bits = sign | (u32(e + bias) << fb) | (sig.x & ((1u << fb) - 1u));
        return out;
    }
    let shift = emin - i32(fb) - exp;
    var sig = 0u;
    if (shift <= 0i) {
        // Few significant bits: exact.
        sig = w_shl(mag, u32(-shift)).x;
    } else if (shift < 64i) {
        sig = w_shr_round(mag, u32(shift)).x;
    }
    out.bits = sign | sig;
    return out;
}
