//! Calibration: the teacher (the source model) runs the integer forward pass over the
//! calibration windows one decoder layer at a time, and each linear input's exact Gram
//! statistic is gathered as the layer computes it (`codec::gram`).
//!
//! Hidden states of every calibration window stay on the host between layers (windows ×
//! seq_len × hidden i32), exactly like `forward::evaluate`; one layer's ingested weights and
//! its four statistics are the only other per-layer memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::codec::gram::Gram;
use crate::digest::sha256_hex;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fixed::tensor::TokenFixed;
use crate::forward::eval::{ResidentAllowance, budget_beside_resident, layer_residency};
use crate::forward::layer::{Consts, Layer, RESIDUAL_BITS, Tap};
use crate::forward::source::Patched;
use crate::forward::text::{parse_token_bytes, tokenize_bytes};
use crate::model::Model;

/// Where the calibration tokens come from.
#[derive(Debug, Clone)]
pub enum CalibInput {
    /// Text, tokenized with the model's tokenizer.json (no BOS added).
    Text(PathBuf),
    /// Little-endian u32 token ids.
    Tokens(PathBuf),
    /// The built-in mix of genres (`DEFAULT_MIX`), tokenized like `Text`.
    DefaultMix,
}

/// The default calibration text (`--calib default`): six genres of public-domain or
/// permissively licensed English interleaved in blocks of about 2,000 characters, disjoint
/// from every text ucw reports quality on; sources, licences and the script that rebuilds it
/// byte for byte in data/calib/README.md. Compiled in, so a pack's provenance never depends
/// on a file beside the binary; a new mix is a new name, never new bytes under this one.
pub const DEFAULT_MIX: &[u8] = include_bytes!("../../data/calib/mix-v1.txt");
/// Its name in the manifest and reports.
pub const DEFAULT_MIX_NAME: &str = "ucw-mix-v1";

/// Which hidden states feed the next layer's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagate {
    /// The source model's own outputs.
    Teacher,
    /// The outputs of the layer as compressed (the next layer then sees, and corrects for,
    /// the error the earlier layers made).
    Compressed,
}

impl Propagate {
    pub fn name(self) -> &'static str {
        match self {
            Propagate::Teacher => "teacher",
            Propagate::Compressed => "compressed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CalibSpec {
    pub input: CalibInput,
    pub windows: usize,
    pub seq_len: usize,
    /// Tokens skipped before the first window.
    pub skip: usize,
    pub propagate: Propagate,
}

/// What the manifest records about the calibration (integers and digests only).
#[derive(Debug, Clone)]
pub struct Provenance {
    pub input: &'static str,
    pub input_sha256: String,
    pub tokenizer_sha256: Option<String>,
    /// `DEFAULT_MIX_NAME` when the text is the built-in mix.
    pub builtin: Option<&'static str>,
    /// Windows used (fewer than asked when the text is short: `asked` keeps the request).
    pub windows: usize,
    pub asked_windows: usize,
    pub seq_len: usize,
    pub skip: usize,
    pub tokens: usize,
    pub propagate: Propagate,
}

impl Provenance {
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("input".into(), self.input.into());
        m.insert(format!("{}_sha256", self.input), self.input_sha256.clone().into());
        if let Some(b) = self.builtin {
            m.insert("builtin".into(), b.into());
        }
        m.insert(
            "tokenizer_sha256".into(),
            self.tokenizer_sha256.clone().map_or(serde_json::Value::Null, |s| s.into()),
        );
        m.insert("windows".into(), self.windows.into());
        m.insert("seq_len".into(), self.seq_len.into());
        m.insert("skip".into(), self.skip.into());
        m.insert("tokens".into(), self.tokens.into());
        m.insert("propagate".into(), self.propagate.name().into());
        m.insert("statistic".into(), "exact-gram".into());
        serde_json::Value::Object(m)
    }
}

/// The calibration state between layers.
pub struct Calibration {
    pub provenance: Provenance,
    hidden: Vec<TokenFixed>,
    consts: Consts,
    max_memory: u64,
}

/// Read the calibration tokens and choose the windows: `windows` non-overlapping windows of
/// `seq_len` from token `skip` on. Fewer tokens than one window is an error; fewer than
/// asked uses what fits (the provenance and the summary say so).
pub fn read_windows(model: &Model, spec: &CalibSpec) -> Result<(Vec<Vec<u32>>, Provenance)> {
    let c = &model.config;
    if spec.seq_len < 2 {
        return Err(bad_input!("--calib-seq-len {}: at least 2 tokens", spec.seq_len));
    }
    if spec.windows == 0 {
        return Err(bad_input!("--calib-windows 0: nothing to calibrate on"));
    }
    if spec.seq_len > c.max_position_embeddings {
        return Err(bad_input!(
            "--calib-seq-len {} exceeds the model's max_position_embeddings {}",
            spec.seq_len,
            c.max_position_embeddings
        ));
    }
    if spec.seq_len > crate::codec::gram::MAX_WINDOW_TOKENS {
        return Err(bad_input!("--calib-seq-len {}: at most {}", spec.seq_len, crate::codec::gram::MAX_WINDOW_TOKENS));
    }
    if let Some(sw) = c.sliding_window
        && spec.seq_len > sw
    {
        return Err(bad_input!("--calib-seq-len {} exceeds the model's sliding_window {sw}", spec.seq_len));
    }
    let dir = &model.checkpoint.dir;
    let text = |p: &Path, bytes: Vec<u8>| -> Result<_> {
        let sha = sha256_hex(&bytes);
        let ids = tokenize_bytes(dir, p, bytes)?;
        Ok((ids, "text", sha, crate::pack::sha256_file(&dir.join("tokenizer.json")).ok()))
    };
    let mix_path = PathBuf::from(format!("--calib default ({DEFAULT_MIX_NAME}, built in)"));
    let (ids, input, input_sha256, tokenizer_sha256) = match &spec.input {
        CalibInput::Text(p) => text(p, std::fs::read(p).map_err(|e| Error::io(p, "cannot read calibration text", e))?)?,
        CalibInput::DefaultMix => text(&mix_path, DEFAULT_MIX.to_vec())?,
        CalibInput::Tokens(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, "cannot read calibration tokens", e))?;
            (parse_token_bytes(p, &bytes)?, "tokens", sha256_hex(&bytes), None)
        }
    };
    let path = match &spec.input {
        CalibInput::Text(p) | CalibInput::Tokens(p) => p.display().to_string(),
        CalibInput::DefaultMix => mix_path.display().to_string(),
    };
    if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= c.vocab_size) {
        return Err(bad_input!("{path}: token {i} has id {id}, outside the vocabulary of {}", c.vocab_size));
    }
    let after = ids.len().saturating_sub(spec.skip);
    let fit = after / spec.seq_len;
    if fit == 0 {
        return Err(bad_input!(
            "{path}: {} tokens after skipping {} (--calib-skip), fewer than one calibration window of {}",
            after,
            spec.skip,
            spec.seq_len
        ));
    }
    let n = fit.min(spec.windows);
    let windows: Vec<Vec<u32>> =
        (0..n).map(|w| ids[spec.skip + w * spec.seq_len..spec.skip + (w + 1) * spec.seq_len].to_vec()).collect();
    let prov = Provenance {
        input,
        input_sha256,
        tokenizer_sha256,
        builtin: matches!(spec.input, CalibInput::DefaultMix).then_some(DEFAULT_MIX_NAME),
        windows: n,
        asked_windows: spec.windows,
        seq_len: spec.seq_len,
        skip: spec.skip,
        tokens: n * spec.seq_len,
        propagate: spec.propagate,
    };
    Ok((windows, prov))
}

/// The four statistics of one layer.
pub struct LayerStats {
    pub grams: BTreeMap<Tap, Gram>,
    /// Seconds spent adding windows to the statistics (inside the forward pass).
    pub accumulate_seconds: f64,
}

impl Calibration {
    /// Embed the calibration windows (the residual stream's format).
    pub fn start(
        backend: &dyn Backend,
        model: &Model,
        windows: &[Vec<u32>],
        provenance: Provenance,
        max_memory: u64,
    ) -> Result<Calibration> {
        let c = &model.config;
        let name = "model.embed_tokens.weight";
        let v = model.tensor(name);
        let hidden = windows
            .iter()
            .map(|w| {
                crate::forward::embed_rows(
                    backend,
                    name,
                    v.bytes,
                    model.dtype_of(name),
                    c.vocab_size,
                    c.hidden_size,
                    w,
                    RESIDUAL_BITS,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        model.checkpoint.release(name);
        Ok(Calibration { consts: Consts::new(c, provenance.seq_len), provenance, hidden, max_memory })
    }

    /// Host bytes of the cached hidden states.
    pub fn cache_bytes(&self) -> u64 {
        self.hidden.iter().map(|h| (h.mants.len() * 4 + h.exps.len() * 4) as u64).sum()
    }

    /// Let a GPU backend keep the layer's weights on the device for every window, as
    /// `ucw eval` does (`layer_residency`), so the whole layer runs there with the four
    /// taps read back in its one submission; withdrawn when the returned guard drops.
    /// Resident weights change no bit.
    fn allow_resident<'b>(&self, backend: &'b dyn Backend, c: &crate::model::ModelConfig) -> ResidentAllowance<'b> {
        ResidentAllowance::new(backend, layer_residency(self.max_memory, c))
    }

    /// Run the teacher's layer `l` over every window, gathering its statistics. With
    /// `Propagate::Teacher` the hidden states move on to the layer's outputs here.
    pub fn layer_stats(&mut self, backend: &dyn Backend, model: &Model, l: usize) -> Result<LayerStats> {
        let no_patches = BTreeMap::new();
        let mut src = Patched { model, patches: &no_patches };
        let _resident = self.allow_resident(backend, &model.config);
        let layer = Layer::load(backend, &mut src, l, budget_beside_resident(backend, self.max_memory))?;
        let chunk = layer.chunk(budget_beside_resident(backend, self.max_memory))?;
        let c = &model.config;
        let widths = [
            (Tap::Attn, c.hidden_size),
            (Tap::O, c.num_attention_heads * c.head_dim),
            (Tap::Mlp, c.hidden_size),
            (Tap::Down, c.intermediate_size),
        ];
        // A GPU keeps the triangles on the device while the windows go through (one upload
        // and one submission per window and tap) and they come back once, below.
        let mut grams = BTreeMap::new();
        for &(t, w) in &widths {
            grams.insert(t, Gram::on(backend, w)?);
        }
        let teacher = self.provenance.propagate == Propagate::Teacher;
        let mut accumulate_seconds = 0.0;
        for h in self.hidden.iter_mut() {
            let out = layer.forward_tapped(backend, h, &self.consts, chunk, &mut |tap, x| {
                let t0 = std::time::Instant::now();
                let g = grams.get_mut(&tap).expect("every tap has a statistic");
                let r = g.add_window_on(backend, x, &format!("model.layers.{l} {tap:?} input"));
                accumulate_seconds += t0.elapsed().as_secs_f64();
                r
            })?;
            if teacher {
                *h = out;
            }
        }
        let t0 = std::time::Instant::now();
        for g in grams.values_mut() {
            g.settle(backend)?;
        }
        accumulate_seconds += t0.elapsed().as_secs_f64();
        Ok(LayerStats { grams, accumulate_seconds })
    }

    /// With `Propagate::Compressed`: move the hidden states through layer `l` as compressed
    /// (`patches`: its reconstructed linears).
    pub fn propagate_compressed(
        &mut self,
        backend: &dyn Backend,
        model: &Model,
        l: usize,
        patches: &BTreeMap<String, (Vec<u8>, DType)>,
    ) -> Result<()> {
        if self.provenance.propagate != Propagate::Compressed {
            return Ok(());
        }
        let mut src = Patched { model, patches };
        let _resident = self.allow_resident(backend, &model.config);
        let layer = Layer::load(backend, &mut src, l, budget_beside_resident(backend, self.max_memory))?;
        let chunk = layer.chunk(budget_beside_resident(backend, self.max_memory))?;
        for h in self.hidden.iter_mut() {
            *h = layer.forward(backend, h, &self.consts, chunk)?;
        }
        Ok(())
    }
}
