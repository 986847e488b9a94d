//! Byte-wise rANS (range asymmetric numeral systems) with a static frequency table: how
//! codec version 3 stores codes (docs/FORMAT.md §4.1, which fixes every byte).
//!
//! Hand-written rather than taken from an entropy-coding crate: the stream is part of the
//! pack format, so its bytes must be the ones FORMAT.md specifies (and an independent
//! decoder, scripts/ucw_decode.py, reproduces), not whatever a library version emits. It is
//! integer-only and deterministic: the same symbols and table give the same bytes anywhere.
//!
//! Parameters: probabilities in units of 1/M, M = 2^12; the state x lives in [L, 256·L),
//! L = 2^23, and is renormalised a byte at a time. An encoder starts from x = L and a valid
//! stream decodes back to exactly L with every byte read, which makes truncation and most
//! corruption detectable without a checksum (the manifest's digests catch the rest).

use std::fmt;

/// log2 of the frequency total M.
pub const PROB_BITS: u32 = 12;
/// Frequency total: the stored frequencies of a table sum to exactly this.
pub const PROB_TOTAL: u32 = 1 << PROB_BITS;
/// Lower bound of the normalised state (and the encoder's initial state).
pub const STATE_LOW: u32 = 1 << 23;
/// Largest alphabet a table may have (symbols of 8-bit codes relative to 8-bit zeros).
pub const MAX_SYMBOLS: usize = 511;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RansError {
    /// The frequencies do not sum to M (their sum).
    FreqSum(u64),
    /// More symbols than a table may have.
    Alphabet(usize),
    /// A symbol to encode has frequency 0 in the table.
    AbsentSymbol(u16),
    /// A stream shorter than its 4-byte state.
    Short(usize),
    /// An initial state outside [L, 256·L): no encoder writes one (FORMAT.md §4.1).
    InitialState(u32),
    /// The stream ended while the decoder still needed a byte.
    Truncated,
    /// Bytes left after the last symbol.
    LeftOver(usize),
    /// The final state is not L: the stream was not made from these frequencies.
    FinalState(u32),
}

impl fmt::Display for RansError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RansError::FreqSum(s) => write!(f, "rANS frequencies sum to {s}, not {PROB_TOTAL}"),
            RansError::Alphabet(n) => write!(f, "rANS table of {n} symbols (at most {MAX_SYMBOLS})"),
            RansError::AbsentSymbol(s) => write!(f, "symbol {s} has frequency 0"),
            RansError::Short(n) => write!(f, "rANS stream of {n} bytes (at least 4)"),
            RansError::InitialState(x) => write!(f, "rANS stream starts in state {x}, outside {STATE_LOW}..2^31"),
            RansError::Truncated => write!(f, "rANS stream ends before its last symbol"),
            RansError::LeftOver(n) => write!(f, "{n} bytes left after the rANS stream's last symbol"),
            RansError::FinalState(x) => write!(f, "rANS stream ends in state {x}, not {STATE_LOW}"),
        }
    }
}

/// A static table: `freq[s]` in units of 1/M, its cumulative starts, and (for decoding) the
/// symbol owning each of the M slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqTable {
    freq: Vec<u16>,
    cum: Vec<u32>,
    slot_symbol: Vec<u16>,
}

impl FreqTable {
    /// A stored table, checked: at most MAX_SYMBOLS entries summing to exactly M.
    pub fn from_freqs(freq: Vec<u16>) -> Result<FreqTable, RansError> {
        if freq.len() > MAX_SYMBOLS {
            return Err(RansError::Alphabet(freq.len()));
        }
        let sum: u64 = freq.iter().map(|&f| f as u64).sum();
        if sum != PROB_TOTAL as u64 {
            return Err(RansError::FreqSum(sum));
        }
        let mut cum = Vec::with_capacity(freq.len());
        let mut slot_symbol = Vec::with_capacity(PROB_TOTAL as usize);
        let mut c = 0u32;
        for (s, &f) in freq.iter().enumerate() {
            cum.push(c);
            c += f as u32;
            slot_symbol.extend(std::iter::repeat_n(s as u16, f as usize));
        }
        Ok(FreqTable { freq, cum, slot_symbol })
    }

    /// The table ucw writes for these symbol counts (FORMAT.md §4.1, "Encoding"):
    /// `max(1, cnt·M div N)` for every present symbol, the excess taken one at a time from
    /// the largest frequency above 1, the shortfall given to the most frequent symbol (lowest
    /// symbol among equals, both times). Every present symbol keeps a frequency ≥ 1.
    pub fn from_counts(counts: &[u64]) -> Result<FreqTable, RansError> {
        if counts.len() > MAX_SYMBOLS {
            return Err(RansError::Alphabet(counts.len()));
        }
        let total: u128 = counts.iter().map(|&c| c as u128).sum();
        if total == 0 {
            return Err(RansError::FreqSum(0));
        }
        let mut freq: Vec<u32> = counts
            .iter()
            .map(|&c| if c == 0 { 0 } else { ((c as u128 * PROB_TOTAL as u128 / total) as u32).max(1) })
            .collect();
        let mut sum: u32 = freq.iter().sum();
        // At most MAX_SYMBOLS ones were raised from 0, so the excess is below 512.
        while sum > PROB_TOTAL {
            let (i, _) = freq
                .iter()
                .enumerate()
                .filter(|(_, f)| **f > 1)
                .fold(None, |best: Option<(usize, u32)>, (i, &f)| match best {
                    Some((_, bf)) if bf >= f => best,
                    _ => Some((i, f)),
                })
                .expect("more than M ones is impossible with at most 511 symbols");
            freq[i] -= 1;
            sum -= 1;
        }
        if sum < PROB_TOTAL {
            let (i, _) = counts
                .iter()
                .enumerate()
                .fold((0usize, 0u64), |(bi, bc), (i, &c)| if c > bc { (i, c) } else { (bi, bc) });
            freq[i] += PROB_TOTAL - sum;
        }
        FreqTable::from_freqs(freq.into_iter().map(|f| f as u16).collect())
    }

    pub fn freqs(&self) -> &[u16] {
        &self.freq
    }
}

/// One stream of `n` symbols, symbol i with its own table (`item(i)`): encoded last to
/// first from state L, the state flushed, the bytes reversed so that a decoder reads the state
/// (big-endian) and then the renormalisation bytes in the order it needs them.
pub fn encode_by<'t>(n: usize, item: impl Fn(usize) -> (u16, &'t FreqTable)) -> Result<Vec<u8>, RansError> {
    let mut out: Vec<u8> = Vec::with_capacity(n * 5 / 8 + 8);
    let mut x: u32 = STATE_LOW;
    for i in (0..n).rev() {
        let (s, t) = item(i);
        let f = *t.freq.get(s as usize).ok_or(RansError::AbsentSymbol(s))? as u32;
        if f == 0 {
            return Err(RansError::AbsentSymbol(s));
        }
        // Keeps the state below 256·L after the step: x_max = (L / M) · 256 · f.
        let x_max = ((STATE_LOW >> PROB_BITS) << 8) as u64 * f as u64;
        while x as u64 >= x_max {
            out.push(x as u8);
            x >>= 8;
        }
        x = ((x / f) << PROB_BITS) + (x % f) + t.cum[s as usize];
    }
    out.extend_from_slice(&x.to_le_bytes());
    out.reverse();
    Ok(out)
}

/// One stream of symbols that all use table `t`.
pub fn encode(symbols: &[u16], t: &FreqTable) -> Result<Vec<u8>, RansError> {
    encode_by(symbols.len(), |i| (symbols[i], t))
}

/// Reads one whole stream symbol by symbol, each with the table the caller names.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    x: u32,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Self, RansError> {
        if bytes.len() < 4 {
            return Err(RansError::Short(bytes.len()));
        }
        let x = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if !(STATE_LOW..STATE_LOW << 8).contains(&x) {
            return Err(RansError::InitialState(x));
        }
        Ok(Decoder { bytes, pos: 4, x })
    }

    #[inline]
    pub fn get(&mut self, t: &FreqTable) -> Result<u16, RansError> {
        // x < 2^31 here, so freq · (x >> 12) + slot − cum < 2^31 (the decoding step inverts
        // an encoding step that kept x below 256·L).
        let slot = self.x & (PROB_TOTAL - 1);
        let s = t.slot_symbol[slot as usize];
        self.x = t.freq[s as usize] as u32 * (self.x >> PROB_BITS) + slot - t.cum[s as usize];
        while self.x < STATE_LOW {
            let b = *self.bytes.get(self.pos).ok_or(RansError::Truncated)?;
            self.x = (self.x << 8) | b as u32;
            self.pos += 1;
        }
        Ok(s)
    }

    /// After the last symbol: every byte read and the state back at L.
    pub fn finish(self) -> Result<(), RansError> {
        if self.pos != self.bytes.len() {
            return Err(RansError::LeftOver(self.bytes.len() - self.pos));
        }
        if self.x != STATE_LOW {
            return Err(RansError::FinalState(self.x));
        }
        Ok(())
    }
}

/// Decode exactly `out.len()` symbols of table `t` from one whole stream.
pub fn decode(bytes: &[u8], t: &FreqTable, out: &mut [u16]) -> Result<(), RansError> {
    let mut d = Decoder::new(bytes)?;
    for o in out.iter_mut() {
        *o = d.get(t)?;
    }
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalisation_keeps_rare_symbols_and_sums_to_m() {
        // 511 symbols, one of them dominant: many raised to 1, the excess taken back.
        let mut counts = vec![1u64; MAX_SYMBOLS];
        counts[7] = 1_000_000;
        let t = FreqTable::from_counts(&counts).unwrap();
        assert_eq!(t.freqs().iter().map(|&f| f as u32).sum::<u32>(), PROB_TOTAL);
        assert!(t.freqs().iter().all(|&f| f >= 1));
        assert_eq!(t.freqs()[7] as u32, PROB_TOTAL - 510);
        // Absent symbols get 0; a single symbol gets all of M.
        let t = FreqTable::from_counts(&[0, 5, 0]).unwrap();
        assert_eq!(t.freqs(), &[0, 4096, 0]);
        assert!(FreqTable::from_counts(&[0, 0]).is_err());
        assert_eq!(FreqTable::from_freqs(vec![4095]), Err(RansError::FreqSum(4095)));
    }

    #[test]
    fn a_single_symbol_stream_is_the_bare_state() {
        let t = FreqTable::from_counts(&[0, 9]).unwrap();
        let bytes = encode(&[1; 1000], &t).unwrap();
        assert_eq!(bytes, STATE_LOW.to_be_bytes());
        let mut out = vec![0u16; 1000];
        decode(&bytes, &t, &mut out).unwrap();
        assert!(out.iter().all(|&s| s == 1));
    }

    #[test]
    fn corruption_is_refused() {
        let counts = [50u64, 30, 15, 4, 1];
        let t = FreqTable::from_counts(&counts).unwrap();
        let syms: Vec<u16> = (0..400u32).map(|i| [0u16, 0, 1, 0, 2, 1, 0, 3, 0, 4][(i * 7 % 10) as usize]).collect();
        let bytes = encode(&syms, &t).unwrap();
        let mut out = vec![0u16; syms.len()];
        decode(&bytes, &t, &mut out).unwrap();
        assert_eq!(out, syms);
        assert_eq!(decode(&bytes[..3], &t, &mut out), Err(RansError::Short(3)));
        // The same single-symbol stream written as state 2^15 and the byte lifting it to L
        // would decode alike; the initial-state rule refuses the non-canonical one.
        let one = FreqTable::from_counts(&[1]).unwrap();
        assert_eq!(decode(&[0, 0, 0x80, 0, 0], &one, &mut [0u16; 3]), Err(RansError::InitialState(0x8000)));
        assert_eq!(decode(&[0x80, 0, 0, 0], &one, &mut [0u16; 3]), Err(RansError::InitialState(1 << 31)));
        assert_eq!(decode(&bytes[..bytes.len() - 1], &t, &mut out), Err(RansError::Truncated));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer, &t, &mut out), Err(RansError::LeftOver(_) | RansError::FinalState(_))));
        // Every single flipped bit is refused or decodes to different symbols.
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let mut o = vec![0u16; syms.len()];
            assert!(decode(&bad, &t, &mut o).is_err() || o != syms, "bit {i}");
        }
        // Fewer symbols than were encoded: the state is not back at L.
        let mut short = vec![0u16; syms.len() - 1];
        assert!(decode(&bytes, &t, &mut short).is_err());
        assert_eq!(encode(&[5], &t), Err(RansError::AbsentSymbol(5)));
    }

    proptest! {
        #[test]
        fn round_trip(counts in prop::collection::vec(0u64..50, 1..40), seed in any::<u64>(), n in 1usize..3000) {
            prop_assume!(counts.iter().any(|&c| c > 0));
            let t = FreqTable::from_counts(&counts).unwrap();
            let present: Vec<u16> = (0..counts.len() as u16).filter(|&s| counts[s as usize] > 0).collect();
            let mut r = seed;
            let syms: Vec<u16> = (0..n).map(|_| {
                r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                present[(r >> 33) as usize % present.len()]
            }).collect();
            let bytes = encode(&syms, &t).unwrap();
            let mut out = vec![0u16; n];
            decode(&bytes, &t, &mut out).unwrap();
            prop_assert_eq!(out, syms);
        }
    }
}
