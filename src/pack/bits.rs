//! Fixed-width little-endian bit packing, row by row (docs/FORMAT.md): value k of a row
//! occupies bits [k*b, (k+1)*b) of the row's byte string, bit i of the string being bit
//! (i % 8) of byte i / 8; each row is padded with zero bits to a whole byte.

/// Bytes one packed row of `n` values of `bits` bits occupies.
pub fn row_bytes(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Pack `values` (each < 2^bits) as `rows` rows of `n`.
pub fn pack(values: &[u8], n: usize, bits: u32) -> Vec<u8> {
    let rb = row_bytes(n, bits);
    let rows = values.len().checked_div(n).unwrap_or(0);
    let mut out = vec![0u8; rows * rb];
    for (row, dst) in values.chunks(n.max(1)).zip(out.chunks_mut(rb.max(1))) {
        let mut bit = 0usize;
        for &v in row {
            let mut v = v as u32;
            let mut left = bits as usize;
            while left > 0 {
                let take = left.min(8 - bit % 8);
                dst[bit / 8] |= ((v & ((1 << take) - 1)) << (bit % 8)) as u8;
                v >>= take;
                bit += take;
                left -= take;
            }
        }
    }
    out
}

/// Inverse of `pack`; `packed` must hold `rows * row_bytes(n, bits)` bytes.
pub fn unpack(packed: &[u8], rows: usize, n: usize, bits: u32) -> Vec<u8> {
    let rb = row_bytes(n, bits);
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        let src = &packed[r * rb..(r + 1) * rb];
        let mut bit = 0usize;
        for _ in 0..n {
            let mut v = 0u32;
            let mut got = 0usize;
            while got < bits as usize {
                let take = (bits as usize - got).min(8 - bit % 8);
                v |= ((src[bit / 8] as u32 >> (bit % 8)) & ((1 << take) - 1)) << got;
                got += take;
                bit += take;
            }
            out.push(v as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_width_and_ragged_rows() {
        for bits in 1..=8u32 {
            for n in [1usize, 3, 7, 8, 64, 70] {
                let vals: Vec<u8> = (0..3 * n).map(|i| ((i * 37 + 11) % (1 << bits)) as u8).collect();
                let p = pack(&vals, n, bits);
                assert_eq!(p.len(), 3 * row_bytes(n, bits));
                assert_eq!(unpack(&p, 3, n, bits), vals, "bits {bits} n {n}");
            }
        }
        // The documented bit order: 5-bit values 1, 2 → bits 0-4 = 1, bits 5-9 = 2.
        assert_eq!(pack(&[1, 2], 2, 5), vec![0b0100_0001, 0b0000_0000]);
        assert_eq!(pack(&[31, 1], 2, 5), vec![0b0011_1111, 0b0000_0000]);
    }
}
