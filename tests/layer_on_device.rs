//! `Backend::decoder_layer` (issue 16 item 1): a decoder layer run on the device from
//! buffers to buffers gives the CPU composition's bits, output and tap activations, on
//! every adapter, with the kernels' splitting knobs lowered, and where the GPU falls back
//! to the per-op composition (biases, qk-norm, a binding too small for a whole window). Its
//! traffic: one submission, and read back only the output, plus the taps when taken.

mod common;

use std::path::Path;

use ucw::backend::Backend;
use ucw::backend::gpu::ChunkSizes;
use ucw::fixed::tensor::TokenFixed;
use ucw::forward::Source;
use ucw::forward::layer::{Consts, Layer, RESIDUAL_BITS, Tap};

/// Tokens of every window here: crosses the 5-key attention chunks of the knob below.
const T: usize = 40;

/// llama: runs on the device; qwen2: q/k/v biases; qwen3: qk-norm (both fall back).
const FIXTURES: [&str; 3] = ["llama-bf16", "qwen2-f32", "qwen3-bf16-sharded"];

/// Layer 0 of `fixture` loaded with its weights on the device (where the backend keeps
/// weights there), and a window of embedded ids.
fn layer0(b: &dyn Backend, fixture: &str) -> (Layer, Consts, TokenFixed) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let mut src = Source::open(&dir).unwrap();
    let c = src.config().clone();
    let ids: Vec<u32> = (0..T).map(|i| (i * 37 % c.vocab_size) as u32).collect();
    let (emb, dt) = src.tensor_bytes(b, "model.embed_tokens.weight").unwrap();
    let emb = emb.into_owned();
    let x = ucw::forward::embed_rows(b, "embed", &emb, dt, c.vocab_size, c.hidden_size, &ids, RESIDUAL_BITS).unwrap();
    b.allow_resident_weights(u64::MAX);
    let l = Layer::load(b, &mut src, 0, u64::MAX).unwrap();
    b.allow_resident_weights(0);
    (l, Consts::new(&c, T), x)
}

/// The token chunk eval gives a product under its default budget (large enough for the
/// device to hold the whole layer's intermediates).
fn eval_chunk(l: &Layer) -> usize {
    l.chunk(ucw::forward::eval::DEFAULT_MAX_MEMORY).unwrap()
}

/// The layer's output and its four tap activations.
fn tapped(
    b: &dyn Backend,
    l: &Layer,
    k: &Consts,
    x: &TokenFixed,
    chunk: usize,
) -> (TokenFixed, Vec<(Tap, TokenFixed)>) {
    let mut taps = Vec::new();
    let y = l
        .forward_tapped(b, x, k, chunk, &mut |tap, a| {
            taps.push((tap, a.clone()));
            Ok(())
        })
        .unwrap();
    (y, taps)
}

/// The layer's output, with and without taps, and its four tap activations; at eval's
/// chunk and at 7 tokens per product (a budget too small for the whole layer on the
/// device: the per-op calls), which must agree.
fn layer_outputs(b: &dyn Backend) -> common::Outputs {
    let mut out = common::Outputs::new();
    for f in FIXTURES {
        let (l, k, x) = layer0(b, f);
        let (y, taps) = tapped(b, &l, &k, &x, eval_chunk(&l));
        assert_eq!(taps.iter().map(|t| t.0).collect::<Vec<_>>(), Tap::ALL, "{f}: every tap once, in order");
        assert_eq!(l.forward(b, &x, &k, eval_chunk(&l)).unwrap(), y, "{f}: the same output without taps");
        assert_eq!(tapped(b, &l, &k, &x, 7), (y.clone(), taps.clone()), "{f}: 7-token products");
        out.tokens(&format!("{f} layer 0"), &y);
        for (tap, a) in &taps {
            out.tokens(&format!("{f} tap {tap:?}"), a);
        }
    }
    out
}

const KNOBS: &[common::Knob] = &[
    common::AS_OPENED,
    // Attention a workgroup per block of queries (hardware's default; llvmpipe's is one
    // invocation per query, head and chunk).
    ("attention over workgroups", |g| g.with_attn_workgroups(true)),
    // The tiled products on packed 4×8-bit dot products (Vulkan and DX12 hardware's
    // default; software adapters run the split i32 products).
    ("packed dot products", |g| g.with_packed_dot(true)),
    // Split-K (down_proj's 160 columns in slices of one group, added by matmul_reduce),
    // renorm_top over 7-output chunks, 5-key attention chunks: all inside the recording.
    ("small chunks", |g| g.with_chunk_sizes(ChunkSizes { nll: 73, renorm: 7, attn_keys: 5, matmul_cols: 64 })),
    // Every weight fits a binding (and stays on the device) but SwiGLU's exact products
    // of the window do not: the layer falls back to the per-op calls, which split tokens.
    ("binding of one weight", |g| g.with_work_limits(160 * 64 * 4, 65535)),
];

conformance_with_knobs!(decoder_layer_on_device_same_bits_everywhere, KNOBS, layer_outputs);

#[test]
fn decoder_layer_reads_back_only_what_the_caller_takes() {
    let gpus = common::gpu_backends();
    if gpus.is_empty() {
        common::report_skip("decoder_layer_reads_back_only_what_the_caller_takes", "no adapter selected");
    }
    for (label, gpu) in &gpus {
        let b: &dyn Backend = gpu;
        let (l, k, x) = layer0(b, "llama-bf16");
        let h = x.width;
        let token_bytes = |width: usize| (T * width * 4 + T * 4) as u64;
        let chunk = eval_chunk(&l);
        let before = b.traffic().unwrap();
        l.forward(b, &x, &k, chunk).unwrap();
        let plain = b.traffic().unwrap().since(before);
        assert_eq!(plain.submissions, 1, "{label}: one submission per layer and window");
        assert_eq!(plain.readback_bytes, token_bytes(h), "{label}: only the layer output read back");
        let before = b.traffic().unwrap();
        l.forward_tapped(b, &x, &k, chunk, &mut |_, _| Ok(())).unwrap();
        let tapped = b.traffic().unwrap().since(before);
        let ff = l.gate.rows();
        let taps = token_bytes(h) + token_bytes(k.attn.heads * k.attn.head_dim) + token_bytes(h) + token_bytes(ff);
        assert_eq!(tapped.submissions, 1, "{label}: taps read in the same submission");
        assert_eq!(tapped.readback_bytes, token_bytes(h) + taps, "{label}: the output and the four taps");
        assert_eq!(tapped.uploaded_bytes, plain.uploaded_bytes, "{label}: taps upload nothing");
        // The per-op composition where the layer cannot run on the device (qwen2's biases):
        // one submission per kernel call, as before.
        let (l, k, x) = layer0(b, "qwen2-f32");
        let before = b.traffic().unwrap();
        l.forward(b, &x, &k, eval_chunk(&l)).unwrap();
        let fallback = b.traffic().unwrap().since(before);
        assert!(fallback.submissions > 10, "{label}: qwen2 falls back to per-op calls: {fallback:?}");
        println!("{label}: layer {plain:?}, tapped {tapped:?}, qwen2 fallback {fallback:?}");
    }
}
