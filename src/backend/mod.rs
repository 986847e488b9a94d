//! The `Backend` trait: every kernel ucw runs, with a pure-Rust reference (`cpu`) and a
//! wgpu implementation (`gpu`) that must agree with it bit for bit (DESIGN §3 rule 7).
//!
//! Kernels take and return host data; `decoder_layer` takes a whole layer at once, so a
//! GPU backend can keep the layer's intermediates on the device (`layer`).
//!
//! The fixed-point types, quantized tensors and constant tables the kernels take and return
//! are `crate::fixed`'s, shared with every other layer.

pub mod cpu;
pub mod device;
pub mod gpu;
pub mod layer;
pub mod traffic;

use crate::dtype::DType;
use crate::error::Error;
use crate::fixed::quant::{MAX_GROUP_SIZE, MAX_IMPORTANCE, QuantParams, QuantTensor, SEARCH_MANTISSA_BITS};
use crate::fixed::tables::{ExpConsts, LogConsts, RmsConsts, RopeTables};
use crate::fixed::tensor::{
    ExactSums, GRAM_MAX_X, GroupFixed, IngestParams, MATMUL_MAX_ACT, MATMUL_MAX_COLS, TokenFixed, matmul_max_spread,
};

pub use device::{DeviceInfo, DeviceSpec};
pub use traffic::Traffic;

/// An exact Gram accumulator a backend keeps in its own memory (`Backend::gram_open`): the
/// lower triangle of Σ x xᵀ in i64 units, packed as `fixed::tensor::tri_offset` says, in
/// the backend's own form.
pub struct DeviceGram {
    pub cols: usize,
    /// Device bytes it holds.
    pub bytes: u64,
    form: Box<dyn std::any::Any + Send + Sync>,
}

impl DeviceGram {
    pub fn new(cols: usize, bytes: u64, form: Box<dyn std::any::Any + Send + Sync>) -> DeviceGram {
        DeviceGram { cols, bytes, form }
    }

    pub fn form<T: 'static>(&self) -> Option<&T> {
        self.form.downcast_ref()
    }
}

impl std::fmt::Debug for DeviceGram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceGram {{ cols: {}, bytes: {} }}", self.cols, self.bytes)
    }
}

/// A weight matrix ready for repeated products (`Backend::prepare_matmul`): the backend's
/// own layout of it, if any, and the ingested weights unless that layout replaces them (the
/// CPU's packed i16 pairs hold every weight, so the i32 mantissas, twice their size, are
/// dropped). Owning both keeps them together: a layout cannot outlive or miss its weights.
pub struct Prepared {
    rows: usize,
    cols: usize,
    weights: Option<GroupFixed>,
    form: Option<Box<dyn std::any::Any + Send + Sync>>,
    form_bytes: u64,
}

impl Prepared {
    /// The weights as they are, no layout of the backend's own.
    pub fn plain(w: GroupFixed) -> Prepared {
        Prepared { rows: w.rows, cols: w.cols, weights: Some(w), form: None, form_bytes: 0 }
    }

    /// `w` beside the backend's layout of it (`form_bytes` of host memory).
    pub fn with_form(w: GroupFixed, form: Box<dyn std::any::Any + Send + Sync>, form_bytes: u64) -> Prepared {
        Prepared { rows: w.rows, cols: w.cols, weights: Some(w), form: Some(form), form_bytes }
    }

    /// A `rows × cols` weight held only in the backend's layout, which must give every
    /// product `matmul` would.
    pub fn form_only(
        rows: usize,
        cols: usize,
        form: Box<dyn std::any::Any + Send + Sync>,
        form_bytes: u64,
    ) -> Prepared {
        Prepared { rows, cols, weights: None, form: Some(form), form_bytes }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The ingested weights, where kept.
    pub fn weights(&self) -> Option<&GroupFixed> {
        self.weights.as_ref()
    }

    /// The backend's layout, if it is a `T`.
    pub fn form<T: 'static>(&self) -> Option<&T> {
        self.form.as_ref().and_then(|f| f.downcast_ref::<T>())
    }

    /// Whether the backend keeps a layout of its own (on a GPU: the weights on the device).
    pub fn has_form(&self) -> bool {
        self.form.is_some()
    }

    /// Host bytes held: the ingested weights (mantissas and group exponents, 4 bytes each)
    /// where kept, plus the layout's host bytes (device memory is counted by
    /// `Backend::resident_weight_bytes`).
    pub fn bytes(&self) -> u64 {
        self.weights.as_ref().map_or(0, ingested_bytes) + self.form_bytes
    }
}

/// Bytes of ingested weights: mantissas and group exponents, 4 bytes each.
pub fn ingested_bytes(w: &GroupFixed) -> u64 {
    ((w.mantissas.len() + w.exponents.len()) * 4) as u64
}

/// Why a kernel did not produce a result.
#[derive(Debug)]
pub enum KernelError {
    /// Element `index` (row-major) is NaN or ±Inf; the caller names the tensor.
    NonFinite { index: usize },
    /// Element `index` does not fit the output dtype (beyond its largest finite value).
    Overflow { index: usize },
    /// The device failed or lacks what the job needs.
    Device(Error),
}

impl KernelError {
    /// The error for a kernel run on tensor `tensor` producing `dtype` values.
    pub fn for_tensor(self, tensor: &str, dtype: DType) -> Error {
        match self {
            KernelError::Overflow { index } => {
                bad_input!("tensor \"{tensor}\": reconstructed element {index} overflows {dtype}")
            }
            KernelError::NonFinite { index } => bad_input!("tensor \"{tensor}\": element {index} is not finite"),
            KernelError::Device(e) => bad_input!("tensor \"{tensor}\": {e}"),
        }
    }
}

impl From<Error> for KernelError {
    fn from(e: Error) -> Self {
        KernelError::Device(e)
    }
}

/// One case of the 64-bit arithmetic conformance kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WideCase {
    pub a: i64,
    pub b: i64,
    pub x: i32,
    pub y: i32,
    pub s: u32,
}

/// Results of every 64-bit operation on one case, as the kernel library computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WideResult {
    pub add: i64,
    pub sub: i64,
    pub mul_i32: i64,
    pub mul_u32: u64,
    pub shl: i64,
    pub sar: i64,
    pub shr_round: i64,
    pub neg: i64,
    /// a * (s as u64) modulo 2^64
    pub mul_wu: i64,
}

impl WideResult {
    pub const WORDS: usize = 18;

    pub fn to_words(&self) -> [u32; 18] {
        let vals = [
            self.add as u64,
            self.sub as u64,
            self.mul_i32 as u64,
            self.mul_u32,
            self.shl as u64,
            self.sar as u64,
            self.shr_round as u64,
            self.neg as u64,
            self.mul_wu as u64,
        ];
        let mut w = [0u32; 18];
        for (i, v) in vals.iter().enumerate() {
            w[2 * i] = *v as u32;
            w[2 * i + 1] = (*v >> 32) as u32;
        }
        w
    }

    pub fn from_words(w: &[u32]) -> WideResult {
        let v = |i: usize| (w[2 * i] as u64) | ((w[2 * i + 1] as u64) << 32);
        WideResult {
            add: v(0) as i64,
            sub: v(1) as i64,
            mul_i32: v(2) as i64,
            mul_u32: v(3),
            shl: v(4) as i64,
            sar: v(5) as i64,
            shr_round: v(6) as i64,
            neg: v(7) as i64,
            mul_wu: v(8) as i64,
        }
    }
}

pub trait Backend: Send + Sync {
    /// What `ucw devices` calls this backend, e.g. "cpu" or "vulkan: llvmpipe (LLVM 15.0.6, 256 bits)".
    fn describe(&self) -> String;

    /// Short label for test output: "cpu", "vulkan", "gl", ...
    fn api(&self) -> &'static str;

    /// How many windows the forward pass may run through this backend at once. Windows are
    /// independent, so this changes no bit; on the CPU two at a time let one window's
    /// serial steps (allocation, copies, argument checks) overlap the other's kernels. A GPU
    /// backend takes one (its buffers and peak-memory accounting are per call).
    fn concurrent_windows(&self) -> usize {
        1
    }

    /// Float bits `[rows, cols]` (little-endian storage of `dtype`) → fixed-point groups.
    fn ingest(
        &self,
        src: &[u8],
        dtype: DType,
        rows: usize,
        cols: usize,
        params: IngestParams,
    ) -> Result<GroupFixed, KernelError>;

    /// Quantize ingested weights (groups of `p.group_size`, 16-bit mantissas) with the
    /// codec-version-1 search; `importance` has one weight in [0, 2^12] per column.
    fn quantize(&self, x: &GroupFixed, importance: &[u32], p: QuantParams, base_exp: i32)
    -> Result<QuantTensor, Error>;

    /// Reconstruct a quantized tensor as `dtype` bits (little-endian, row-major).
    fn dequantize(&self, q: &QuantTensor, dtype: DType) -> Result<Vec<u8>, KernelError>;

    /// `y = x · wᵀ` exactly: x `[T, K]` activations, w `[N, K]` weights ingested with
    /// 16-bit mantissas in groups of <= 64 whose exponents lie within
    /// `matmul_max_spread(K)` of their row's largest (`align_row_exponents`), K <=
    /// `MATMUL_MAX_COLS`. Bounds: |x·m| <= 2^17 · 2^15 = 2^32, a group of <= 64 products
    /// <= 2^38, shifted <= S, over K columns: < K · 2^(32+S) <= 2^61 (16 for K <= 2^13,
    /// 13 at K = 2^16; `matmul_max_spread`): exact in i64.
    fn matmul(&self, x: &TokenFixed, w: &GroupFixed) -> Result<ExactSums, Error>;

    /// `w` laid out once in this backend's own form for repeated `matmul_prepared` calls
    /// (the forward pass multiplies every window by the same layer). Checks `w` as `matmul`
    /// does, and takes it: the backend keeps whichever form it multiplies.
    fn prepare_matmul(&self, w: GroupFixed) -> Result<Prepared, Error> {
        check_matmul_weights(&w)?;
        Ok(Prepared::plain(w))
    }

    /// An upper bound of the host bytes `prepare_matmul(w)` will hold (`Prepared::bytes`),
    /// for callers that size slices of a weight to a budget before preparing them. The
    /// default: the ingested weights as they are.
    fn prepared_bytes(&self, w: &GroupFixed) -> u64 {
        ingested_bytes(w)
    }

    /// Let `prepare_matmul` keep up to `bytes` of weights on the device (0, the default:
    /// none). Callers that bound device memory give it a share of their budget; a backend
    /// without device memory of its own ignores it.
    fn allow_resident_weights(&self, bytes: u64) {
        let _ = bytes;
    }

    /// Bytes of weights `prepare_matmul` keeps on the device now.
    fn resident_weight_bytes(&self) -> u64 {
        0
    }

    /// `matmul(x, w)` with `p = prepare_matmul(w)`: the same sums, bit for bit.
    fn matmul_prepared(&self, x: &TokenFixed, p: &Prepared) -> Result<ExactSums, Error> {
        self.matmul(x, p.weights().ok_or_else(|| bad_input!("matmul: weights prepared by another backend"))?)
    }

    /// Round exact sums to one exponent per token and `bits`-bit mantissas
    /// (|m| <= 2^(bits-1)), half to even: the one rounding point after a matmul.
    fn renorm(&self, s: &ExactSums, x_exps: &[i32], bits: u32) -> Result<TokenFixed, Error>;

    /// RMSNorm of each token with weights `gamma` (one row, one group, <= 16-bit
    /// mantissas) to `bits`-bit outputs; algorithm and bounds in `backend/cpu/norm.rs`.
    fn rms_norm(&self, x: &TokenFixed, gamma: &GroupFixed, c: &RmsConsts, bits: u32) -> Result<TokenFixed, Error>;

    /// SwiGLU `silu(gate) · up` per token to `bits`-bit outputs (|mantissas| <= 2^17);
    /// algorithm and bounds in `backend/cpu/act.rs`.
    fn swiglu(&self, gate: &TokenFixed, up: &TokenFixed, c: &ExpConsts, bits: u32) -> Result<TokenFixed, Error>;

    /// RoPE of each token (all heads, `positions[t]` its position) to `bits`-bit outputs;
    /// algorithm and bounds in `backend/cpu/rope.rs`.
    fn rope(&self, x: &TokenFixed, positions: &[u32], t: &RopeTables, bits: u32) -> Result<TokenFixed, Error>;

    /// Residual add `x + y` per token to `bits`-bit outputs (|mantissas| <= 2^23);
    /// alignment and rounding in `backend/cpu/add.rs`.
    fn add(&self, x: &TokenFixed, y: &TokenFixed, bits: u32) -> Result<TokenFixed, Error>;

    /// Negative log-likelihood (Q30) of each token's target under its row of logits
    /// (|mantissas| <= 2^23, exponents <= 8); algorithm and bounds in `backend/cpu/nll.rs`.
    fn nll(&self, logits: &TokenFixed, targets: &[u32], ec: &ExpConsts, lc: &LogConsts) -> Result<Vec<i64>, Error>;

    /// `nll(renorm(s, x_exps, bits), targets)` without keeping the logits (the lm_head's
    /// exact sums straight to each token's NLL): the same values.
    fn renorm_nll(
        &self,
        s: &ExactSums,
        x_exps: &[i32],
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        let logits = self.renorm(s, x_exps, bits)?;
        self.nll(&logits, targets, ec, lc)
    }

    /// `renorm_nll` of the products of `x` with prepared weights (`matmul_prepared`): the
    /// lm_head's activations straight to each token's NLL, the same values. A GPU keeps
    /// the sums and logits on the device.
    #[allow(clippy::too_many_arguments)]
    fn head_nll(
        &self,
        x: &TokenFixed,
        p: &Prepared,
        bits: u32,
        targets: &[u32],
        ec: &ExpConsts,
        lc: &LogConsts,
    ) -> Result<Vec<i64>, Error> {
        let s = self.matmul_prepared(x, p)?;
        self.renorm_nll(&s, &x.exps, bits, targets, ec, lc)
    }

    /// Causal grouped-query attention over one window (q, k, v of the same T tokens at
    /// positions 0..T), outputs `[T, heads·d]` at `bits`; algorithm in
    /// `backend/cpu/attention.rs`.
    fn attention(
        &self,
        q: &TokenFixed,
        k: &TokenFixed,
        v: &TokenFixed,
        s: &cpu::attention::AttnShape,
        ec: &ExpConsts,
        bits: u32,
    ) -> Result<TokenFixed, Error>;

    /// One decoder layer over one window (positions 0..T), `layer::compose`'s bits: the
    /// default composes the per-op methods, each product over at most `chunk` tokens (what
    /// the caller's memory budget allows); a GPU backend runs the layer on the device
    /// within `LayerWeights::product_grant(chunk)` bytes of intermediates and reads back
    /// only the output (and the four tap activations when `tap` is given).
    fn decoder_layer(
        &self,
        x: &TokenFixed,
        w: &layer::LayerWeights,
        chunk: usize,
        tap: Option<&mut layer::TapFn>,
    ) -> Result<TokenFixed, Error> {
        layer::compose(self, x, w, chunk, tap)
    }

    /// An exact Gram accumulator of `cols` inputs, all zeros, in this backend's own memory
    /// (`gram_add`, `gram_read`), or None where the host keeps the statistic: the default,
    /// and the CPU's, whose memory is the host's.
    fn gram_open(&self, cols: usize) -> Result<Option<DeviceGram>, Error> {
        let _ = cols;
        Ok(None)
    }

    /// `acc ← (acc << align) + (Σ_t x_t x_tᵀ) << shift` on every entry of the lower triangle
    /// (wrapping i64), x `[tokens, cols]` one window's values on its grid (|x| ≤
    /// `GRAM_MAX_X`), align and shift ≤ 63. The caller (codec/gram.rs, the CPU twin)
    /// guarantees every result fits in i64; the sums are then exact whatever the order.
    fn gram_add(&self, acc: &mut DeviceGram, x: &[i32], tokens: usize, align: u32, shift: u32) -> Result<(), Error> {
        let _ = (acc, x, tokens, align, shift);
        Err(bad_input!("internal error: {} keeps no Gram accumulators", self.describe()))
    }

    /// The accumulator's packed triangle, read back.
    fn gram_read(&self, acc: &DeviceGram) -> Result<Vec<i64>, Error> {
        let _ = acc;
        Err(bad_input!("internal error: {} keeps no Gram accumulators", self.describe()))
    }

    /// Largest number of bytes this backend held in device buffers at once so far; None
    /// for the CPU backend (its buffers are host memory, counted in the process RSS).
    fn peak_device_bytes(&self) -> Option<u64> {
        None
    }

    /// Queue submissions, bytes uploaded and bytes read back so far (since the backend was
    /// opened): the host ↔ device traffic a job costs is the difference of two snapshots.
    /// None for the CPU backend, which has no device queue and moves nothing (its
    /// "device" is host memory), as `peak_device_bytes` is None there; reports omit the
    /// figures rather than print zeros that would read as a measurement.
    fn traffic(&self) -> Option<Traffic> {
        None
    }

    /// Evaluate the 64-bit arithmetic library on each case.
    fn wide_ops(&self, cases: &[WideCase]) -> Result<Vec<WideResult>, Error>;
}

/// Shape and parameter checks shared by every backend's `ingest`.
pub(crate) fn check_ingest_args(
    src: &[u8],
    dtype: DType,
    rows: usize,
    cols: usize,
    params: IngestParams,
) -> Result<(), Error> {
    params.validate()?;
    let n = rows.checked_mul(cols).ok_or_else(|| bad_input!("tensor shape [{rows}, {cols}] overflows"))?;
    if n.checked_mul(dtype.size_bytes()) != Some(src.len()) {
        return Err(bad_input!("{} bytes do not hold [{rows}, {cols}] {dtype} elements", src.len()));
    }
    Ok(())
}

/// Argument checks shared by every backend's `quantize`.
pub(crate) fn check_quantize_args(x: &GroupFixed, importance: &[u32], p: QuantParams) -> Result<(), Error> {
    if !(2..=8).contains(&p.bits) {
        return Err(bad_input!("bits {} out of range 2..=8", p.bits));
    }
    if p.group_size == 0 || p.group_size > MAX_GROUP_SIZE {
        return Err(bad_input!("group size {} out of range 1..={MAX_GROUP_SIZE}", p.group_size));
    }
    if x.params != (IngestParams { group_size: p.group_size, mantissa_bits: SEARCH_MANTISSA_BITS }) {
        return Err(bad_input!("quantize needs weights ingested in groups of {} with 16-bit mantissas", p.group_size));
    }
    if importance.len() != x.cols {
        return Err(bad_input!("importance has {} entries for {} columns", importance.len(), x.cols));
    }
    if let Some(j) = importance.iter().position(|&h| h > MAX_IMPORTANCE) {
        return Err(bad_input!("importance of column {j} exceeds {MAX_IMPORTANCE}"));
    }
    Ok(())
}

/// Largest |m| of a slice (a fold without early exit, so it vectorises: the bound checks
/// below read every activation of every kernel call).
fn max_abs(m: &[i32]) -> u32 {
    m.iter().fold(0, |acc, &x| acc.max(x.unsigned_abs()))
}

pub(crate) fn check_matmul_args(x: &TokenFixed, w: &GroupFixed) -> Result<(), Error> {
    check_matmul_acts(x, w.rows, w.cols)?;
    check_matmul_weights(w)
}

/// The activations' half of `check_matmul_args` against `rows × cols` weights (what every
/// `matmul_prepared` call checks).
pub(crate) fn check_matmul_acts(x: &TokenFixed, rows: usize, cols: usize) -> Result<(), Error> {
    if x.width != cols || x.mants.len() != x.tokens * x.width || x.exps.len() != x.tokens {
        return Err(bad_input!(
            "matmul: activations [{}, {}] do not match weights [{rows}, {cols}]",
            x.tokens,
            x.width,
        ));
    }
    if max_abs(&x.mants) > MATMUL_MAX_ACT as u32 {
        return Err(bad_input!("matmul: activation mantissas exceed 2^17"));
    }
    Ok(())
}

/// The weights' half of `check_matmul_args` (what `prepare_matmul` checks once).
pub(crate) fn check_matmul_weights(w: &GroupFixed) -> Result<(), Error> {
    if w.params.mantissa_bits > 16 || w.params.group_size > 64 || w.cols > MATMUL_MAX_COLS {
        return Err(bad_input!(
            "matmul: weights need <= 16-bit mantissas, groups <= 64, <= {MATMUL_MAX_COLS} columns (got {} columns)",
            w.cols
        ));
    }
    let gpr = w.groups_per_row();
    let spread = matmul_max_spread(w.cols);
    for r in 0..w.rows {
        let row = &w.exponents[r * gpr..(r + 1) * gpr];
        let (lo, hi) = (row.iter().min().copied().unwrap_or(0), row.iter().max().copied().unwrap_or(0));
        if hi - lo > spread {
            return Err(bad_input!(
                "matmul: weight row {r} exponent spread {} > {spread} (the most for {} columns)",
                hi - lo,
                w.cols
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_renorm_args(s: &ExactSums, x_exps: &[i32], bits: u32) -> Result<(), Error> {
    if !(2..=30).contains(&bits) {
        return Err(bad_input!("renorm: {bits} bits out of range 2..=30"));
    }
    if x_exps.len() != s.tokens || s.sums.len() != s.tokens * s.n || s.row_exps.len() != s.n {
        return Err(bad_input!("renorm: inconsistent shapes"));
    }
    Ok(())
}

pub(crate) fn check_rms_args(x: &TokenFixed, gamma: &GroupFixed, c: &RmsConsts, bits: u32) -> Result<(), Error> {
    if gamma.rows != 1 || gamma.cols != x.width || gamma.exponents.len() != 1 || gamma.params.mantissa_bits > 16 {
        return Err(bad_input!("rms_norm: gamma must be one row of {} in one group with <= 16-bit mantissas", x.width));
    }
    if x.width == 0 || x.width > 1 << 16 || x.mants.len() != x.tokens * x.width || x.exps.len() != x.tokens {
        return Err(bad_input!("rms_norm: bad activation shape"));
    }
    if max_abs(&x.mants) > 1 << 23 {
        return Err(bad_input!("rms_norm: activation mantissas exceed 2^23"));
    }
    if !(2..=30).contains(&bits) || c.seed.len() != 192 || c.he_m == 0 {
        return Err(bad_input!("rms_norm: bad parameters"));
    }
    Ok(())
}

pub(crate) fn check_swiglu_args(g: &TokenFixed, u: &TokenFixed, bits: u32) -> Result<(), Error> {
    if g.tokens != u.tokens
        || g.width != u.width
        || g.mants.len() != g.tokens * g.width
        || u.mants.len() != g.mants.len()
    {
        return Err(bad_input!("swiglu: gate and up shapes differ"));
    }
    if g.exps.len() != g.tokens || u.exps.len() != u.tokens {
        return Err(bad_input!("swiglu: bad exponent arrays"));
    }
    if max_abs(&g.mants).max(max_abs(&u.mants)) > 1 << 17 {
        return Err(bad_input!("swiglu: mantissas exceed 2^17"));
    }
    if !(2..=30).contains(&bits) {
        return Err(bad_input!("swiglu: bad parameters"));
    }
    Ok(())
}

pub(crate) fn check_rope_args(x: &TokenFixed, positions: &[u32], t: &RopeTables, bits: u32) -> Result<(), Error> {
    if t.head_dim == 0 || !t.head_dim.is_multiple_of(2) || !x.width.is_multiple_of(t.head_dim) {
        return Err(bad_input!("rope: width {} is not a whole number of heads of {}", x.width, t.head_dim));
    }
    if positions.len() != x.tokens || positions.iter().any(|&p| p as usize >= t.positions) {
        return Err(bad_input!("rope: positions beyond the table of {}", t.positions));
    }
    if x.mants.len() != x.tokens * x.width || x.exps.len() != x.tokens {
        return Err(bad_input!("rope: bad activation shape"));
    }
    if max_abs(&x.mants) > 1 << 17 || !(2..=30).contains(&bits) {
        return Err(bad_input!("rope: mantissas exceed 2^17 or bad bits"));
    }
    Ok(())
}

pub(crate) fn check_add_args(x: &TokenFixed, y: &TokenFixed, bits: u32) -> Result<(), Error> {
    if x.tokens != y.tokens
        || x.width != y.width
        || x.mants.len() != x.tokens * x.width
        || y.mants.len() != x.mants.len()
    {
        return Err(bad_input!("add: shapes differ"));
    }
    if x.exps.len() != x.tokens || y.exps.len() != y.tokens {
        return Err(bad_input!("add: bad exponent arrays"));
    }
    if max_abs(&x.mants).max(max_abs(&y.mants)) > 1 << 23 || !(2..=30).contains(&bits) {
        return Err(bad_input!("add: mantissas exceed 2^23 or bad bits"));
    }
    Ok(())
}

/// Rows of logits as `nll` and the divergence (`cpu::kld`) accept them: a vocabulary of
/// 1..=2^20, |mantissas| <= 2^23, exponents <= 8; `what` names the caller in the error.
pub(crate) fn check_logits(l: &TokenFixed, what: &str) -> Result<(), Error> {
    if l.width == 0 || l.width > 1 << 20 || l.mants.len() != l.tokens * l.width || l.exps.len() != l.tokens {
        return Err(bad_input!("{what}: bad logits shape (vocabulary up to 2^20)"));
    }
    if max_abs(&l.mants) > 1 << 23 || l.exps.iter().any(|&e| e > 8) {
        return Err(bad_input!("{what}: logits mantissas exceed 2^23 or exponents exceed 8"));
    }
    Ok(())
}

pub(crate) fn check_nll_args(l: &TokenFixed, targets: &[u32]) -> Result<(), Error> {
    check_logits(l, "nll")?;
    if targets.len() != l.tokens || targets.iter().any(|&t| t as usize >= l.width) {
        return Err(bad_input!("nll: targets outside the vocabulary"));
    }
    Ok(())
}

pub(crate) fn check_gram_args(acc: &DeviceGram, x: &[i32], tokens: usize, align: u32, shift: u32) -> Result<(), Error> {
    if x.len() != tokens * acc.cols {
        return Err(bad_input!("gram: {} values for {tokens} tokens of {} inputs", x.len(), acc.cols));
    }
    if align > 63 || shift > 63 {
        return Err(bad_input!("gram: shifts {align} and {shift} beyond 63"));
    }
    if let Some(v) = x.iter().find(|v| v.unsigned_abs() > GRAM_MAX_X as u32) {
        return Err(bad_input!("gram: value {v} beyond 2^19"));
    }
    Ok(())
}

pub(crate) fn check_attention_args(
    q: &TokenFixed,
    k: &TokenFixed,
    v: &TokenFixed,
    s: &cpu::attention::AttnShape,
    bits: u32,
) -> Result<(), Error> {
    let (h, kv, d) = (s.heads, s.kv_heads, s.head_dim);
    if h == 0 || kv == 0 || !h.is_multiple_of(kv) || d == 0 || d > 256 {
        return Err(bad_input!("attention: {h} heads / {kv} kv heads / head_dim {d} unsupported"));
    }
    let t = q.tokens;
    if t == 0 || t > 1 << 14 || k.tokens != t || v.tokens != t {
        return Err(bad_input!("attention: q, k, v must hold the same 1..=16384 tokens"));
    }
    if q.width != h * d || k.width != kv * d || v.width != kv * d {
        return Err(bad_input!("attention: widths do not match the head layout"));
    }
    for x in [q, k, v] {
        if x.mants.len() != x.tokens * x.width || x.exps.len() != x.tokens {
            return Err(bad_input!("attention: bad activation shape"));
        }
        if max_abs(&x.mants) > 1 << 17 {
            return Err(bad_input!("attention: mantissas exceed 2^17"));
        }
    }
    if !(2..=30).contains(&bits) {
        return Err(bad_input!("attention: bad bits"));
    }
    Ok(())
}
