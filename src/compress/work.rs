//! One layer's work, in the order `compress` runs it: the calibration statistics turned
//! into the metrics the codec reads (`metrics`), every candidate width quantized
//! (`candidates`), each priced by error feedback and one chosen per linear (`choose`), and
//! the low-rank overlays fitted to what the codes leave (`fit_overlays`).

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::calib::LayerStats;
use super::{FIT_ROUNDS, Options, Rank, source_f64};
use crate::backend::Backend;
use crate::codec::gptq;
use crate::codec::gram::SymPacked;
use crate::codec::lowrank::{self, LayerItem, Metric};
use crate::codec::quant::quantize_tensor;
use crate::error::Result;
use crate::fixed::quant::{MAX_IMPORTANCE, QuantParams, QuantTensor, step};
use crate::forward::layer::Tap;
use crate::model::Model;
use crate::model::arch::ExpectedTensor;
use crate::pack::layer;

/// One linear input's calibration statistic in the forms the codec uses.
pub(super) struct TapMetric {
    /// H (f64, packed triangle: 8·n(n+1)/2 bytes) where the full matrix is kept.
    packed: Option<SymPacked>,
    /// Error feedback's factorisation of H (with `packed`; dropped once the codes are
    /// chosen).
    feedback: Option<gptq::Feedback>,
    diag: Vec<f64>,
    /// diag(H) scaled for the scale search.
    importance: Vec<u32>,
}

/// The layer's metrics by input (empty without calibration).
pub(super) type Metrics = BTreeMap<Tap, TapMetric>;

fn metric_of<'m>(metrics: &'m Metrics, name: &str) -> Option<&'m TapMetric> {
    Tap::of_linear(name).and_then(|t| metrics.get(&t))
}

/// Widest input whose statistic the overlay fit reads as a full matrix (2 GiB at 16,384);
/// wider ones are read packed. Either gives the same bits: memory only.
const FULL_METRIC_MAX_COLS: usize = 16384;

/// Calibration statistics as f64 metrics: the full H where kept (error feedback and the
/// overlay use it), else its diagonal. Each statistic is consumed as it is converted (its
/// i64 triangle becomes the f64 one in place); memory per input in codec/gram.rs and
/// codec/gptq.rs.
pub(super) fn metrics(stats: Option<LayerStats>, damp: gptq::Damp) -> Metrics {
    stats.map_or_else(BTreeMap::new, |s| {
        s.grams
            .into_iter()
            .map(|(t, g)| {
                let diag = g.to_f64_diag();
                let importance = g.importance(MAX_IMPORTANCE);
                let packed = g.into_f64_packed();
                let m = TapMetric {
                    feedback: packed.as_ref().and_then(|p| gptq::Feedback::from_packed(p, damp)),
                    packed,
                    diag,
                    importance,
                };
                (t, m)
            })
            .collect()
    })
}

/// Widths tried per linear: --bits, and its neighbours when the bits are allocated.
pub(super) fn widths(opts: &Options, mixed: bool) -> Vec<u32> {
    if mixed {
        (opts.bits.saturating_sub(1)..=opts.bits + 1).filter(|b| (2..=8).contains(b)).collect()
    } else {
        vec![opts.bits]
    }
}

/// Every linear quantized at every width (scale search weighted by the calibration's
/// importance where there is one): `[linear][width]`.
pub(super) fn candidates(
    backend: &dyn Backend,
    model: &Model,
    linears: &[&ExpectedTensor],
    metrics: &Metrics,
    params: QuantParams,
    widths: &[u32],
) -> Result<Vec<Vec<QuantTensor>>> {
    let mut candidates = Vec::with_capacity(linears.len());
    for t in linears {
        let v = model.tensor(&t.name);
        let mut per = Vec::with_capacity(widths.len());
        for &b in widths {
            per.push(quantize_tensor(
                backend,
                &t.name,
                v.bytes,
                model.dtype_of(&t.name),
                t.shape[0],
                t.shape[1],
                QuantParams { bits: b, ..params },
                metric_of(metrics, &t.name).map(|m| m.importance.as_slice()),
            )?);
        }
        candidates.push(per);
    }
    Ok(candidates)
}

/// The exact source weights of one linear as f64, made where needed: holding a whole
/// layer's would add 8 bytes per weight to the peak (6.9 GB on a Llama-3.1-70B layer).
fn source_of(model: &Model, t: &ExpectedTensor) -> Vec<f64> {
    source_f64(model.tensor(&t.name).bytes, model.dtype_of(&t.name), t.shape[0] * t.shape[1])
}

/// Error feedback under the full statistic for every candidate (codes re-chosen, scales
/// kept), its loss (output squared error under H) pricing each width; inputs with only the
/// diagonal kept (wider than FULL_GRAM_MAX_COLS) are priced by the diag(H)-weighted error
/// of their nearest-rounded codes. Then one width per linear: within `mixed_target`
/// (bits per weight, each candidate priced at its stored size, codes entropy-coded as
/// written), else `--bits`. Error feedback's factorisations are dropped after.
pub(super) fn choose(
    model: &Model,
    linears: &[&ExpectedTensor],
    mut candidates: Vec<Vec<QuantTensor>>,
    metrics: &mut Metrics,
    opts: &Options,
    mixed_target: Option<(u64, u64)>,
    widths: &[u32],
) -> Vec<QuantTensor> {
    let mut losses: Vec<Vec<f64>> = Vec::with_capacity(linears.len());
    for (t, per) in linears.iter().zip(candidates.iter_mut()) {
        let w = &source_of(model, t);
        losses.push(
            per.iter_mut()
                .map(|q| match metric_of(metrics, &t.name) {
                    Some(TapMetric { feedback: Some(f), .. }) => f.refine(q, w),
                    Some(TapMetric { diag, .. }) => diag_weighted_error(q, w, diag),
                    None => 0.0,
                })
                .collect(),
        );
    }
    // U is not needed past this point.
    for m in metrics.values_mut() {
        m.feedback = None;
    }
    let choice: Vec<usize> = match mixed_target {
        Some((bits, weights)) => {
            let n: u64 = linears.iter().map(|t| (t.shape[0] * t.shape[1]) as u64).sum();
            let budget = bits as i128 * n as i128 / weights.max(1) as i128;
            let costs: Vec<Vec<i128>> = candidates
                .iter()
                .map(|per| per.iter().map(|q| 8 * layer::base_stored_bytes(q) as i128).collect())
                .collect();
            allocate_bits(&costs, &losses, budget)
        }
        _ => vec![widths.iter().position(|&b| b == opts.bits).unwrap_or(0); linears.len()],
    };
    candidates.into_iter().zip(&choice).map(|(per, &i)| per.into_iter().nth(i).expect("chosen width")).collect()
}

/// Greedy width allocation: every linear starts at its narrowest candidate; while the
/// budget allows, widen the linear whose next width lowers its loss most per stored bit
/// (ties to the earlier linear). `costs[t][i]` is candidate i's stored bits (candidates
/// ascend in width), `losses[t][i]` its loss. Deterministic (fixed-order f64, fixed
/// tie-break).
fn allocate_bits(costs: &[Vec<i128>], losses: &[Vec<f64>], budget_bits: i128) -> Vec<usize> {
    let mut pick = vec![0usize; costs.len()];
    let mut remaining = budget_bits - costs.iter().map(|c| c[0]).sum::<i128>();
    loop {
        let mut best: Option<(f64, usize)> = None;
        for (t, c) in costs.iter().enumerate() {
            let i = pick[t];
            if i + 1 >= c.len() {
                continue;
            }
            let dc = c[i + 1] - c[i];
            if dc > remaining || dc <= 0 {
                continue;
            }
            let ratio = (losses[t][i] - losses[t][i + 1]) / dc as f64;
            if ratio > 0.0 && best.is_none_or(|(b, _)| ratio > b) {
                best = Some((ratio, t));
            }
        }
        let Some((_, t)) = best else { break };
        remaining -= costs[t][pick[t] + 1] - costs[t][pick[t]];
        pick[t] += 1;
    }
    pick
}

/// Overlays: a common rank, or (auto) this layer's share of the budget spent where it
/// lowers the error most. Residuals live for this layer only.
pub(super) fn fit_overlays(
    model: &Model,
    linears: &[&ExpectedTensor],
    quantized: &mut [QuantTensor],
    metrics: &mut Metrics,
    rank: Rank,
) {
    if rank == Rank::Fixed(0) {
        return;
    }
    // The overlay fit reads H as a full row-major matrix (8·n² bytes, its fastest
    // products) up to FULL_METRIC_MAX_COLS inputs, each packed triangle dropped as its
    // full matrix is made; wider inputs keep the packed triangle (half the memory; the
    // same bits, `Metric::Packed`).
    let fulls: BTreeMap<Tap, Vec<f64>> = metrics
        .iter_mut()
        .filter(|(_, m)| m.packed.as_ref().is_some_and(|p| p.n <= FULL_METRIC_MAX_COLS))
        .filter_map(|(&t, m)| m.packed.take().map(|p| (t, p.to_full())))
        .collect();
    let full_of = |name: &str| Tap::of_linear(name).and_then(|t| fulls.get(&t));
    let residuals: Vec<Vec<f64>> =
        linears.iter().zip(quantized.iter()).map(|(t, q)| residual(&source_of(model, t), q)).collect();
    let items: Vec<LayerItem> = linears
        .iter()
        .zip(quantized.iter())
        .zip(&residuals)
        .map(|((t, q), r)| LayerItem {
            residual: r,
            rows: q.rows,
            cols: q.cols,
            base_exp: q.base_exp,
            metric: match (full_of(&t.name), metric_of(metrics, &t.name)) {
                (Some(h), _) => Metric::Full(h),
                (None, Some(TapMetric { packed: Some(p), .. })) => Metric::Packed(p),
                (None, Some(TapMetric { diag, .. })) => Metric::Diagonal(diag),
                (None, None) => Metric::Identity,
            },
        })
        .collect();
    let overlays = match rank {
        Rank::Fixed(r) => items
            .iter()
            .map(|it| lowrank::fit(it.residual, it.rows, it.cols, r as usize, it.base_exp, FIT_ROUNDS, it.metric))
            .collect(),
        Rank::Auto { bits, weights } => {
            let n: u64 = quantized.iter().map(|q| (q.rows * q.cols) as u64).sum();
            let base: u64 = quantized.iter().map(|q| 8 * layer::base_stored_bytes(q)).sum();
            let budget = bits as i128 * n as i128 / weights.max(1) as i128 - base as i128;
            lowrank::allocate_layer(&items, budget, FIT_ROUNDS)
        }
    };
    for (q, o) in quantized.iter_mut().zip(overlays) {
        q.overlay = o;
    }
}

/// Σ_ij (w_ij − ŵ_ij)² · d_j (f64, ascending index): the error under diag(H).
fn diag_weighted_error(q: &QuantTensor, w: &[f64], d: &[f64]) -> f64 {
    let mut total = 0.0;
    for (i, e) in residual(w, q).iter().enumerate() {
        total += e * e * d[i % q.cols];
    }
    total
}

/// Exact f64 residual source − quantized (every term is an exact f64).
fn residual(w: &[f64], q: &QuantTensor) -> Vec<f64> {
    let gpr = q.groups_per_row();
    let g = q.params.group_size as usize;
    w.par_iter()
        .enumerate()
        .map(|(i, &w)| {
            let gi = (i / q.cols) * gpr + (i % q.cols) / g;
            let (m, e) = step(q.scales[gi], q.base_exp);
            w - libm::ldexp(m as f64 * (q.codes[i] as f64 - q.zeros[gi] as f64), e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pack::bits;

    /// Bit-packed bytes of codes, scales and zeros of a [rows×cols] linear.
    fn base_bytes(rows: usize, cols: usize, p: QuantParams) -> u64 {
        let gpr = cols.div_ceil(p.group_size as usize);
        (rows * (bits::row_bytes(cols, p.bits) + gpr + bits::row_bytes(gpr, p.bits))) as u64
    }

    /// Widening costs cols · 1 bit + one zero-point bit per group; the greedy takes the
    /// best loss drop per bit while it fits, and never exceeds the budget.
    #[test]
    fn allocate_bits_spends_the_budget_where_a_bit_buys_most() {
        let c: Vec<Vec<i128>> = (0..3)
            .map(|_| (4..=6).map(|bits| 8 * base_bytes(1, 640, QuantParams { bits, group_size: 64 }) as i128).collect())
            .collect();
        let cost = |t: &[usize]| -> i128 { t.iter().zip(&c).map(|(&i, cc)| cc[i]).sum() };
        // Linear 1 gains most from each bit, linear 2 least.
        let losses = vec![vec![16.0, 4.0, 1.0], vec![64.0, 16.0, 8.0], vec![2.0, 1.9, 1.8]];
        let narrow = cost(&[0, 0, 0]);
        let step = cost(&[1, 0, 0]) - narrow;
        assert_eq!(allocate_bits(&c, &losses, narrow - 1), vec![0, 0, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + step), vec![0, 1, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 2 * step), vec![1, 1, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 3 * step), vec![1, 2, 0]);
        assert_eq!(allocate_bits(&c, &losses, narrow + 4 * step), vec![2, 2, 0]);
        let all = allocate_bits(&c, &losses, i128::MAX / 2);
        assert_eq!(all, vec![2, 2, 2]);
        for budget in [narrow, narrow + step / 2, narrow + 5 * step + 7] {
            assert!(cost(&allocate_bits(&c, &losses, budget)) <= budget);
        }
    }
}
