//! `Backend::decoder_layer` on the device: the window's hidden states uploaded once, the
//! layer's kernels recorded from buffers to buffers into one submission, and only the
//! layer's output read back (with the four tap activations when the caller takes them).
//! The kernels are the per-op methods' own (`*_dev`), in `backend::layer::compose`'s
//! order, so the bits are the composition's.

use super::kernels::Resident;
use super::{GpuBackend, Rec};
use crate::backend::layer::{LayerWeights, Tap, TapFn, compose};
use crate::error::Error;
use crate::fixed::tensor::{GroupFixed, TokenFixed};

/// A linear's weights as the device multiplies them: the host copy (shape, split-K) and
/// the resident buffers.
type DevLinear<'w> = (&'w GroupFixed, &'w Resident);

impl GpuBackend {
    /// The layer on the device where it can run there, else the per-op composition.
    pub(crate) fn decoder_layer_on_device(
        &self,
        x: &TokenFixed,
        w: &LayerWeights,
        chunk: usize,
        tap: Option<&mut TapFn>,
    ) -> Result<TokenFixed, Error> {
        match self.device_linears(x, w, chunk) {
            Some(lins) => self.run_layer(x, w, &lins, tap),
            None => compose(self, x, w, chunk, tap),
        }
    }

    /// The seven linears' resident weights when the whole layer can run on the device.
    /// None falls back to the composition of per-op calls, which gives the same bits and
    /// reports any bad argument: qk-norm (qwen3 merges its heads' exponents on the host),
    /// biases, weights not resident or sliced in several parts, a budget whose token chunk
    /// is smaller than the window or that does not grant the whole layer's intermediates
    /// (`LayerWeights::product_grant`), widths beyond what the kernels take from each other
    /// unchecked, shapes that do not chain, and windows whose buffers exceed a binding
    /// (the per-op calls split those by tokens).
    fn device_linears<'w>(&self, x: &TokenFixed, w: &'w LayerWeights, chunk: usize) -> Option<[DevLinear<'w>; 7]> {
        let (t, h) = (x.tokens, x.width);
        if w.qk_norm.is_some() || t == 0 || chunk < t || !widths_chain(w) {
            return None;
        }
        let mb = self.max_binding();
        let mut lins = Vec::with_capacity(7);
        for l in w.linears() {
            let ([p], None) = (l.parts, l.bias) else { return None };
            let (gw, r) = self.resident_of(p)?;
            let slices = self.matmul_slices(gw).1 as u64;
            if (t * gw.cols * 4) as u64 > mb || (t * gw.rows * 8) as u64 * slices > mb {
                return None;
            }
            lins.push((gw, r));
        }
        let lins: [DevLinear<'w>; 7] = lins.try_into().ok()?;
        let [q, k, v, o, gate, up, down] = lins.map(|(gw, _)| gw);
        let (a, rope) = (w.consts.attn, w.consts.rope);
        // What the per-op calls check of their arguments' shapes (`check_*_args`).
        let chained = [q, k, v, gate, up].iter().all(|l| l.cols == h)
            && o.cols == q.rows
            && down.cols == gate.rows
            && up.rows == gate.rows
            && o.rows == h
            && down.rows == h
            && q.rows == a.heads * a.head_dim
            && k.rows == a.kv_heads * a.head_dim
            && v.rows == k.rows
            && a.kv_heads > 0
            && a.heads.is_multiple_of(a.kv_heads)
            && (1..=256).contains(&a.head_dim)
            && t <= 1 << 14
            && rope.head_dim == a.head_dim
            && a.head_dim.is_multiple_of(2)
            && t <= rope.positions
            && [w.input_norm, w.post_norm]
                .iter()
                .all(|g| g.rows == 1 && g.cols == h && g.exponents.len() == 1 && g.params.mantissa_bits <= 16)
            && (t * gate.rows * 8) as u64 <= mb; // SwiGLU's exact products
        let fits = chained && self.layer_bytes(t, w, &lins).is_some_and(|b| b <= w.product_grant(chunk));
        fits.then_some(lins)
    }

    /// Device bytes of the layer's intermediates over `t` tokens, all held until the one
    /// submission: every token tensor (4 bytes per mantissa and per token), each product's
    /// exact sums (8 per output and split-K slice, the reduced sums beside partial ones)
    /// and initial maxima, attention's exponents, chunk maxima and partial sums, SwiGLU's
    /// exact products. None where attention cannot split this window here.
    fn layer_bytes(&self, t: usize, w: &LayerWeights, lins: &[DevLinear; 7]) -> Option<u64> {
        let [q, k, _, _, gate, _, _] = lins.map(|(gw, _)| gw);
        let (h, qw, kvw, ff) = (q.cols, q.rows, k.rows, gate.rows);
        let tensor = |width: usize| (4 * width + 4) as u64;
        // x, a, q, k, q and k after RoPE, v, attention output, o, x2, a2, gate, up, s, down, y
        let tensors = [h, h, qw, kvw, qw, kvw, kvw, qw, h, h, h, ff, ff, ff, h, h].map(tensor).iter().sum::<u64>();
        let sums: u64 = lins
            .iter()
            .map(|(gw, _)| {
                let slices = self.matmul_slices(gw).1 as u64;
                8 * gw.rows as u64 * (slices + u64::from(slices > 1)) + 4
            })
            .sum();
        let a = w.consts.attn;
        let plan = self.attention_plan(t, a).ok()?;
        let per_chunk = (a.heads * plan.chunks) as u64;
        let attention = 12 + per_chunk * (8 + 4 + 8 + 8 * a.head_dim as u64) + (4 * qw + 4 * a.heads) as u64;
        let swiglu = (8 * ff + 4) as u64;
        Some(t as u64 * (tensors + sums + attention + swiglu))
    }

    /// Every loop bound the layer's kernels have on this driver (`check_loops`): the
    /// per-op calls check the same.
    fn check_layer_loops(&self, x: &TokenFixed, w: &LayerWeights, lins: &[DevLinear; 7]) -> Result<(), Error> {
        self.check_rms_loops(x.width)?;
        for (gw, _) in lins {
            self.check_matmul_loops(gw)?;
        }
        self.check_renorm_loops()?;
        self.check_rope_loops(w.q.rows)?;
        self.check_add_loops(x.width)?;
        self.check_swiglu_loops()
    }

    /// The layer recorded into one submission: `compose`'s steps on device buffers.
    fn run_layer(
        &self,
        x: &TokenFixed,
        w: &LayerWeights,
        lins: &[DevLinear; 7],
        tap: Option<&mut TapFn>,
    ) -> Result<TokenFixed, Error> {
        // The input's checks; every later input is a kernel's output at a width the
        // consumer takes (`widths_chain`).
        crate::backend::check_rms_args(x, w.input_norm, w.consts.rms_hidden, w.bits.act)?;
        self.check_layer_loops(x, w, lins)?;
        let (k, bits, t) = (&w.consts, &w.bits, x.tokens);
        let plan = self.attention_plan(t, k.attn)?;
        let [q, kk, v, o, gate, up, down] = lins;
        let mut recording = self.rec();
        let rec = &mut recording;
        // Per window: the input, the two norms' weights, the constant tables, positions.
        let xd = self.upload_tokens("layer.x", x, 0, t);
        let seed = self.upload_words("rms.seed", &k.rms_hidden.seed);
        let gamma1 = self.upload_i32("rms.gamma", &w.input_norm.mantissas);
        let gamma2 = self.upload_i32("rms.gamma", &w.post_norm.mantissas);
        let table = self.upload_words("exp.table", &k.exp.table);
        let rope = self.upload_rope(k.rope);
        let pos = self.upload_words("rope.pos", &(0..t as u32).collect::<Vec<_>>());
        let linear = |rec: &mut Rec, x, (gw, r): &DevLinear, bits| self.linear_dev(rec, x, gw, r, bits);

        let a = self.rms_norm_dev(rec, &xd, &gamma1, w.input_norm.exponents[0], &seed, k.rms_hidden, bits.act)?;
        let qd = linear(rec, &a, q, bits.act)?;
        let kd = linear(rec, &a, kk, bits.act)?;
        let qd = self.rope_dev(rec, &qd, &pos, &rope, k.rope.head_dim, bits.qkv)?;
        let kd = self.rope_dev(rec, &kd, &pos, &rope, k.rope.head_dim, bits.qkv)?;
        let vd = linear(rec, &a, v, bits.qkv)?;
        let att = self.attention_dev(rec, &qd, &kd, &vd, &table, &plan, k.attn, k.exp, bits.act)?;
        let od = linear(rec, &att, o, bits.branch)?;
        let x2 = self.add_dev(rec, &xd, &od, bits.residual)?;
        let a2 = self.rms_norm_dev(rec, &x2, &gamma2, w.post_norm.exponents[0], &seed, k.rms_hidden, bits.act)?;
        let gd = linear(rec, &a2, gate, bits.act)?;
        let ud = linear(rec, &a2, up, bits.act)?;
        let s = self.swiglu_dev(rec, &gd, &ud, &table, k.exp, bits.act)?;
        let dd = linear(rec, &s, down, bits.branch)?;
        let y = self.add_dev(rec, &x2, &dd, bits.residual)?;

        // One submission: the layer and its readback (the taps' only where they are taken).
        let rec = recording;
        let Some(tap) = tap else {
            return self.read_token_tensor(rec, &y);
        };
        let mut read = self.read_tokens(rec, &y, &[&a, &att, &a2, &s])?.into_iter();
        let out = read.next().expect("the layer output read");
        for (which, act) in Tap::ALL.into_iter().zip(read) {
            tap(which, &act)?;
        }
        Ok(out)
    }
}

/// Whether each kernel's output is within what the next one takes without the host's
/// bound checks: matrix-product, RoPE, attention and SwiGLU inputs at most 18 bits (|m| <=
/// 2^17), residual adds of at most 24 (|m| <= 2^23).
fn widths_chain(w: &LayerWeights) -> bool {
    let b = &w.bits;
    [b.act, b.qkv].iter().all(|v| (2..=18).contains(v)) && [b.branch, b.residual].iter().all(|v| (2..=24).contains(v))
}
