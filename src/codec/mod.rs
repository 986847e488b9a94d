//! The codec: float weights → fixed point → quantized codes (later issues) → reconstruction.

pub mod gptq;
pub mod gram;
pub mod ingest;
pub mod quant;

/// Version of everything that decides the bits the codec produces. Golden files record it;
/// a change in any produced bit requires bumping it (and regenerating golden/ on purpose).
/// 2: calibrated compression damps error feedback by `gptq::Damp::DEFAULT` (was GPTQ's 1%),
/// recorded in the manifest as `damp`; decoding is unchanged.
/// 3: codes are stored rANS-coded (docs/FORMAT.md §4.1), and mixed widths are priced by
/// their coded size, so calibrated packs choose different widths.
/// 4: scale codes and zero points are stored in the same rANS streams (§4.2), which also
/// lowers what each width costs.
pub const CODEC_VERSION: u32 = 4;

/// Codec versions whose packs this build rebuilds bit for bit (`ucw verify`, `export`,
/// `eval`): versions 1 and 2 differ only in which codes compression chooses; version 3 also
/// stores the codes entropy-coded, version 4 the scales and zero points too, and the
/// reader decodes every form, so a pack validated
/// under an earlier version still verifies.
pub const DECODES: std::ops::RangeInclusive<u32> = 1..=CODEC_VERSION;

/// Fixed-point format the forward pass and codec ingest weights with by default
/// (DESIGN §4: 16-bit mantissas per group of 64 input channels).
pub const DEFAULT_INGEST: crate::fixed::tensor::IngestParams =
    crate::fixed::tensor::IngestParams { group_size: 64, mantissa_bits: 16 };
pub mod lowrank;
