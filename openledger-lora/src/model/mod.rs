//! The model half of the multi-LoRA engine: a llama-family decoder (LLaMA 1/2/3, Mistral,
//! Qwen2, Gemma) loaded from an HF model folder, run over a batch of sequences in which every
//! sequence names its own adapter (or none).
//!
//! Weights (f32, f16 or bf16 on disk) are held in f32; dense projections go through candle's
//! CPU matmul; every LoRA update of the batch is applied through the SGMV operator
//! ([`crate::sgmv`]) with the batch's rows grouped in one segment per sequence, never by
//! merging. DoRA adapters get their `m / ‖W + ΔW‖` factor precomputed per module when they are
//! attached; `modules_to_save` parameters replace the base's for that adapter's rows.
//! [`Model::forward`] is a full prefill with a causal (and, for Mistral / Qwen2, sliding-window)
//! mask; [`Model::forward_cached`] continues sequences incrementally from a contiguous
//! per-sequence [`ContiguousKvCache`]. [`PagedModel`] serves the model through the continuous-batching
//! [`crate::serve::Engine`] over a paged KV cache; [`ServedModel`] runs that engine on a thread
//! of its own behind a command channel, as the Python and Node engines do.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use openledger_lora::adapter::{LoadOptions, LoraAdapter};
//! use openledger_lora::model::{Model, SeqInput};
//!
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
//! let mut model = Model::from_dir(&dir)?;
//! let adapter = LoraAdapter::from_dir(&dir.join("adapters/qv-r4"), &LoadOptions::default())?;
//! let qv = model.attach_adapter("qv-r4", &adapter)?;
//! let logits = model.forward(&[
//!     SeqInput { adapter: None, tokens: &[1, 17, 42] },
//!     SeqInput { adapter: Some(qv), tokens: &[1, 5] },
//! ])?;
//! assert_eq!(logits[0].len(), 3 * model.config().vocab_size);
//! assert_eq!(logits[1].len(), 2 * model.config().vocab_size);
//! # Ok(()) }
//! ```

mod config;
mod error;
mod generate;
pub mod gguf;
mod load;
mod lora;
pub mod ops;
mod paged;
mod quant;
mod random;
mod save;
mod served;
pub mod template;
mod tokenizer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub use config::{Activation, Architecture, ModelConfig, RopeScaling};
pub use error::ModelError;
pub use generate::Generated;
pub use gguf::{GgmlType, GgufFile, GgufTensorInfo, GgufValue};
pub use load::{Layer, Linear, LoadProgress, Weights};
pub use paged::{PagedError, PagedModel};
pub use quant::{BaseWeight, Int8Weight, WeightFormat};
pub use random::RandomLlama;
pub use save::{
    CONFIG_FILE, WEIGHTS_FILE, merge_adapter_into_dir, model_config_json, write_model_dir,
};
pub use served::{
    FaultWatch, MetricKind, ModelMetric, PendingCancel, ServableModel, ServeOptions, ServedError,
    ServedModel, ServedStats,
};
pub use template::{ChatMessage, ChatTemplate, TemplateError, eos_token_ids};
pub use tokenizer::{TOKENIZER_FILE, Tokenizer};

use crate::adapter::LoraAdapter;
use crate::adapter::base::BaseModel;
use crate::adapter::tensors::HostTensor;
pub(crate) use load::TensorMap;
use lora::{PreparedAdapter, Span, project};
use ops::AttentionShape;

/// The projections of a decoder layer, in the fixed order the engine and the trainer
/// use everywhere.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The full module name of projection `proj` (an index into [`PROJECTIONS`]) of layer `layer`.
pub fn module_name(layer: usize, proj: usize) -> String {
    let group = if proj < 4 { "self_attn" } else { "mlp" };
    format!("model.layers.{layer}.{group}.{}", PROJECTIONS[proj])
}

/// The slot of an adapter attached to a [`Model`] (its index in attach order; a detached
/// adapter's slot is reused). Not to be confused with the pool's string
/// [`AdapterId`](crate::pool::AdapterId), which names an adapter wherever it is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdapterSlot(pub usize);

/// One sequence of a batch: its tokens and the adapter it runs with (`None`: the base model).
#[derive(Clone, Copy, Debug)]
pub struct SeqInput<'a> {
    /// The adapter, or `None` for the base model.
    pub adapter: Option<AdapterSlot>,
    /// Token ids (at least one).
    pub tokens: &'a [u32],
}

/// One sequence to score: the log-probability of `continuation` after `context`, under
/// `adapter` (see [`Model::continuation_logprobs`]).
#[derive(Clone, Copy, Debug)]
pub struct ScoreInput<'a> {
    /// The adapter, or `None` for the base model.
    pub adapter: Option<AdapterSlot>,
    /// The tokens conditioned on (at least one).
    pub context: &'a [u32],
    /// The tokens scored.
    pub continuation: &'a [u32],
}

/// The keys and values of one sequence's earlier positions, every layer, held contiguously
/// (`[len, kv_heads · head_dim]` per layer), for incremental decoding with
/// [`Model::forward_cached`]. Made by [`Model::new_cache`] for one adapter.
#[derive(Clone, Debug)]
pub struct ContiguousKvCache {
    adapter: Option<AdapterSlot>,
    len: usize,
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl ContiguousKvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The adapter the sequence runs with.
    pub fn adapter(&self) -> Option<AdapterSlot> {
        self.adapter
    }
}

/// A loaded base model with its attached adapters.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    base: BaseModel,
    weights: Weights,
    inv_freq: Vec<f32>,
    adapters: Vec<PreparedAdapter>,
    /// Slots of detached adapters, reused by the next attach.
    vacant: BTreeSet<usize>,
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors` (or the shards of
    /// `dir/model.safetensors.index.json`).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        Self::from_dir_with_progress(dir, &mut |_| {})
    }

    /// [`Model::from_dir`], reporting each file read and each layer built to `progress`.
    pub fn from_dir_with_progress(
        dir: &Path,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ModelError> {
        Self::from_dir_with_format(dir, WeightFormat::F32, progress)
    }

    /// [`Model::from_dir_with_progress`] with the projections' weights held as `format` asks
    /// (kept as stored, or quantised to int8; the norms stay f32, and the embeddings too unless
    /// the head is tied to them, when the head holds them as `format` asks).
    pub fn from_dir_with_format(
        dir: &Path,
        format: WeightFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ModelError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let bytes =
            openledger_core::fsx::read_regular(&cfg_path, openledger_core::fsx::MAX_CONFIG_BYTES)
                .map_err(|source| ModelError::Io {
                path: cfg_path,
                source,
            })?;
        let config = ModelConfig::from_json(&bytes)?;
        let files = load::weight_files(dir)?;
        let base = BaseModel::from_dir(dir)?;
        let tensors = TensorMap::read(&files, progress)?;
        Self::build(config, base, tensors, format, progress)
    }

    /// Builds a model from a config and named tensors held in memory.
    pub fn from_tensors(
        config: ModelConfig,
        tensors: BTreeMap<String, HostTensor>,
    ) -> Result<Self, ModelError> {
        Self::from_tensors_with_format(config, tensors, WeightFormat::F32)
    }

    /// [`Model::from_tensors`] with the projections' weights held as `format` asks.
    pub fn from_tensors_with_format(
        config: ModelConfig,
        tensors: BTreeMap<String, HostTensor>,
        format: WeightFormat,
    ) -> Result<Self, ModelError> {
        let base = BaseModel::from_headers(tensors.iter().map(|(k, t)| {
            (
                k.clone(),
                crate::adapter::tensors::TensorMeta {
                    dtype: format!("{:?}", t.dtype()).to_uppercase(),
                    shape: t.shape().to_vec(),
                },
            )
        }));
        Self::build(
            config,
            base,
            TensorMap::from_map(tensors),
            format,
            &mut |_| {},
        )
    }

    /// [`from_tensors_with_format`](Self::from_tensors_with_format) over tensors decoded one at
    /// a time as the model takes them (`headers`: each tensor's dtype and shape as stored).
    pub(crate) fn from_deferred(
        config: ModelConfig,
        headers: Vec<(String, crate::adapter::tensors::TensorMeta)>,
        tensors: BTreeMap<String, load::Deferred>,
        format: WeightFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ModelError> {
        let base = BaseModel::from_headers(headers);
        Self::build(config, base, TensorMap::deferred(tensors), format, progress)
    }

    fn build(
        config: ModelConfig,
        base: BaseModel,
        tensors: TensorMap,
        format: WeightFormat,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ModelError> {
        let weights = load::build(&config, tensors, format, progress)?;
        let inv_freq = ops::rope_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling);
        Ok(Model {
            config,
            base,
            weights,
            inv_freq,
            adapters: Vec::new(),
            vacant: BTreeSet::new(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The frozen base weights in f32 (read by the trainer's differentiable forward).
    pub fn base_weights(&self) -> &Weights {
        &self.weights
    }

    /// The base model's module table (used to validate adapters).
    pub fn base(&self) -> &BaseModel {
        &self.base
    }

    /// Names of the attached adapters, by [`AdapterSlot`] order.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.vacant.contains(i))
            .map(|(_, a)| a.name.as_str())
            .collect()
    }

    /// Bytes held by the attached adapters' prepared copies (LoRA factors in their stored dtype,
    /// DoRA factors, saved parameters).
    pub fn attached_bytes(&self) -> usize {
        self.adapters.iter().map(PreparedAdapter::bytes).sum()
    }

    /// Detaches adapter `id`, freeing its prepared copies; the next attach may reuse its id.
    /// An id not attached is [`ModelError::UnknownAdapter`].
    /// An adapter that is a member of an attached ensemble is refused
    /// ([`ModelError::InvalidArgument`]) until the ensemble is detached.
    pub fn detach_adapter(&mut self, id: AdapterSlot) -> Result<(), ModelError> {
        self.check_attached(0, id)?;
        if let Some(e) = self.ensemble_of(id) {
            return Err(ModelError::InvalidArgument {
                name: "id",
                reason: format!(
                    "adapter {} ({}) is a member of the ensemble {e}: detach the ensemble first",
                    id.0, self.adapters[id.0].name
                ),
            });
        }
        self.adapters[id.0] = PreparedAdapter::vacant();
        self.vacant.insert(id.0);
        Ok(())
    }

    fn check_attached(&self, seq: usize, AdapterSlot(id): AdapterSlot) -> Result<(), ModelError> {
        if id >= self.adapters.len() || self.vacant.contains(&id) {
            return Err(ModelError::UnknownAdapter {
                seq,
                id,
                held: self.adapters.len() - self.vacant.len(),
            });
        }
        Ok(())
    }

    fn linears(&self) -> HashMap<&str, &Linear> {
        let mut m = HashMap::new();
        for l in &self.weights.layers {
            for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                m.insert(lin.name.as_str(), lin);
            }
        }
        m.insert(self.weights.lm_head.name.as_str(), &self.weights.lm_head);
        m
    }

    /// Validates `adapter` against this base ([`BaseModel::validate`]: targets, shapes, saved
    /// parameters) and prepares it for the forward pass; returns its id. An adapter made for
    /// another base is [`ModelError::IncompatibleAdapter`].
    pub fn attach_adapter(
        &mut self,
        name: &str,
        adapter: &LoraAdapter,
    ) -> Result<AdapterSlot, ModelError> {
        self.base
            .validate(adapter)
            .map_err(|source| ModelError::IncompatibleAdapter {
                name: name.to_string(),
                source,
            })?;
        let prepared = lora::prepare(name, adapter, &self.linears())?;
        if let Some(slot) = self.vacant.pop_first() {
            self.adapters[slot] = prepared;
            return Ok(AdapterSlot(slot));
        }
        self.adapters.push(prepared);
        Ok(AdapterSlot(self.adapters.len() - 1))
    }

    /// Attaches an ensemble of attached adapters, each with a weight, and returns its id: a
    /// sequence run with it gets `Σⱼ wⱼ·sⱼ·Bⱼ·Aⱼ·x` on every module (`sⱼ` member `j`'s scale),
    /// one SGMV segment per member in the same mixed batch as everything else. No merged copy
    /// is made ([`Model::attached_bytes`] does not grow): the ensemble costs its members' LoRA
    /// FLOPs. This is PEFT's `add_weighted_adapter(..., combination_type="cat")`; other
    /// combinations (`linear`, TIES, DARE, SVD) make a new adapter
    /// ([`add_weighted_adapter`](crate::adapter::combine::add_weighted_adapter)) to attach.
    ///
    /// Members must be attached adapters of their own (not ensembles) with plain LoRA modules:
    /// a DoRA module, a LoRA bias or a `modules_to_save` parameter is
    /// [`ModelError::IncompatibleAdapter`]. No members, an unknown member
    /// ([`ModelError::UnknownAdapter`]) or a non-finite weight are refused; nothing changes on
    /// error. A member cannot be detached while the ensemble is attached.
    pub fn attach_ensemble(
        &mut self,
        name: &str,
        members: &[(AdapterSlot, f32)],
    ) -> Result<AdapterSlot, ModelError> {
        if members.is_empty() {
            return Err(ModelError::InvalidArgument {
                name: "members",
                reason: format!("the ensemble {name} names no adapter"),
            });
        }
        for (j, &(slot, weight)) in members.iter().enumerate() {
            self.check_attached(j, slot)?;
            let m = &self.adapters[slot.0];
            if !weight.is_finite() {
                return Err(ModelError::InvalidArgument {
                    name: "members",
                    reason: format!("member {j} ({}) has weight {weight}", m.name),
                });
            }
            if !m.members.is_empty() {
                return Err(ModelError::InvalidArgument {
                    name: "members",
                    reason: format!("member {j} ({}) is itself an ensemble", m.name),
                });
            }
            let what = if !m.saved.is_empty() {
                Some("modules_to_save parameters")
            } else if m.modules.values().any(|p| p.dora.is_some()) {
                Some("DoRA modules")
            } else if m.modules.values().any(|p| p.bias.is_some()) {
                Some("LoRA biases")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(ModelError::IncompatibleAdapter {
                    name: m.name.clone(),
                    source: crate::error::LoraError::Unsupported {
                        what: format!("{what} in a member of the ensemble {name}"),
                    },
                });
            }
        }
        let prepared = PreparedAdapter {
            name: name.to_string(),
            members: members.iter().map(|&(s, w)| (s.0, w)).collect(),
            ..PreparedAdapter::vacant()
        };
        if let Some(slot) = self.vacant.pop_first() {
            self.adapters[slot] = prepared;
            return Ok(AdapterSlot(slot));
        }
        self.adapters.push(prepared);
        Ok(AdapterSlot(self.adapters.len() - 1))
    }

    /// The members (adapter, weight) of ensemble `id`, or `None` for an adapter of its own or
    /// an id not attached.
    pub fn ensemble_members(&self, id: AdapterSlot) -> Option<Vec<(AdapterSlot, f32)>> {
        let a = self
            .adapters
            .get(id.0)
            .filter(|_| !self.vacant.contains(&id.0))?;
        (!a.members.is_empty()).then(|| {
            a.members
                .iter()
                .map(|&(s, w)| (AdapterSlot(s), w))
                .collect()
        })
    }

    /// The name of an attached ensemble that has adapter `id` as a member, if any.
    pub fn ensemble_of(&self, id: AdapterSlot) -> Option<&str> {
        self.adapters
            .iter()
            .find(|a| a.members.iter().any(|&(m, _)| m == id.0))
            .map(|a| a.name.as_str())
    }

    pub(crate) fn check_batch(&self, batch: &[SeqInput<'_>]) -> Result<Vec<Span>, ModelError> {
        let mut spans = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (seq, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::EmptySequence { seq });
            }
            if let Some((position, &token)) = s
                .tokens
                .iter()
                .enumerate()
                .find(|(_, t)| **t as usize >= self.config.vocab_size)
            {
                return Err(ModelError::TokenOutOfVocab {
                    seq,
                    position,
                    token,
                    vocab: self.config.vocab_size,
                });
            }
            if let Some(id) = s.adapter {
                self.check_attached(seq, id)?;
            }
            spans.push(Span {
                start,
                end: start + s.tokens.len(),
                adapter: s.adapter.map(|a| a.0),
            });
            start += s.tokens.len();
        }
        Ok(spans)
    }

    /// A norm / embedding parameter for `span`: the adapter's saved copy or the base's.
    fn param<'a>(&'a self, span: &Span, key: &str, base: &'a [f32]) -> &'a [f32] {
        span.adapter
            .and_then(|id| self.adapters[id].saved.get(key))
            .map_or(base, |s| &s.data[..])
    }

    fn norm(&self, x: &mut [f32], spans: &[Span], key: &str, base: &[f32]) {
        let h = self.config.hidden_size;
        let gemma = self.config.arch == Architecture::Gemma;
        for s in spans {
            let w = self.param(s, key, base);
            ops::rms_norm(
                &mut x[s.start * h..s.end * h],
                w,
                self.config.rms_norm_eps,
                gemma,
            );
        }
    }

    /// Full-sequence forward pass of a mixed batch: returns, for each sequence, its logits
    /// `[len, vocab]` row-major. Errors name the offending sequence (empty, token out of the
    /// vocabulary, unknown adapter); nothing is computed then.
    pub fn forward(&self, batch: &[SeqInput<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let spans = self.check_batch(batch)?;
        let past = vec![None; batch.len()];
        Ok(self.run(batch, &spans, &past)?.0)
    }

    /// The log-probability of each continuation token given everything before it, for a mixed
    /// batch of (context, continuation) pairs run as one pass: `out[n][i] = log p(c_i | context,
    /// c_<i)` for sequence `n`. The vocabulary projection and the log-softmax (in f64) run only
    /// on the rows that predict a continuation token, so a long context costs no more than its
    /// decoder layers. An empty continuation scores as an empty vector; an empty context is an
    /// error naming the sequence.
    pub fn continuation_logprobs(
        &self,
        batch: &[ScoreInput<'_>],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if let Some(seq) = batch.iter().position(|s| s.context.is_empty()) {
            return Err(ModelError::EmptySequence { seq });
        }
        let joined: Vec<Vec<u32>> = batch
            .iter()
            .map(|s| [s.context, s.continuation].concat())
            .collect();
        let inputs: Vec<SeqInput<'_>> = batch
            .iter()
            .zip(&joined)
            .map(|(s, tokens)| SeqInput {
                adapter: s.adapter,
                tokens,
            })
            .collect();
        let spans = self.check_batch(&inputs)?;
        let (x, _) = self.run_hidden(&inputs, &spans, &vec![None; batch.len()])?;
        // Keep the rows context_len − 1 .. len − 1 of each sequence: those predict the
        // continuation's tokens.
        let h = self.config.hidden_size;
        let mut kept = Vec::new();
        let mut kept_spans = Vec::with_capacity(spans.len());
        for (s, input) in spans.iter().zip(batch) {
            let start = kept.len() / h;
            let first = s.start + input.context.len() - 1;
            kept.extend_from_slice(&x[first * h..(first + input.continuation.len()) * h]);
            kept_spans.push(Span {
                start,
                end: start + input.continuation.len(),
                adapter: s.adapter,
            });
        }
        let logits = self.lm_head(&kept, &kept_spans)?;
        let vocab = self.config.vocab_size;
        Ok(logits
            .iter()
            .zip(batch)
            .map(|(rows, input)| {
                input
                    .continuation
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        let row = &rows[i * vocab..(i + 1) * vocab];
                        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                        let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
                        (f64::from(row[t as usize] - max) - sum.ln()) as f32
                    })
                    .collect()
            })
            .collect())
    }

    /// An empty contiguous key/value cache for a sequence run with `adapter`.
    pub fn new_cache(&self, adapter: Option<AdapterSlot>) -> Result<ContiguousKvCache, ModelError> {
        if let Some(id) = adapter {
            self.check_attached(0, id)?;
        }
        Ok(ContiguousKvCache {
            adapter,
            len: 0,
            layers: vec![(Vec::new(), Vec::new()); self.config.num_layers],
        })
    }

    /// Incremental forward pass of a mixed batch: each entry appends `tokens` to its sequence,
    /// whose earlier positions are held in its [`ContiguousKvCache`] (the cache fixes the adapter).
    /// Returns the logits of the new tokens only; the caches grow by the new tokens. On error
    /// no cache is changed.
    pub fn forward_cached(
        &self,
        batch: &mut [(&[u32], &mut ContiguousKvCache)],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let inputs: Vec<SeqInput<'_>> = batch
            .iter()
            .map(|(tokens, cache)| SeqInput {
                adapter: cache.adapter,
                tokens,
            })
            .collect();
        let spans = self.check_batch(&inputs)?;
        let past: Vec<Option<&ContiguousKvCache>> = batch.iter().map(|(_, c)| Some(&**c)).collect();
        let (logits, new_kv) = self.run(&inputs, &spans, &past)?;
        for ((tokens, cache), kv) in batch.iter_mut().zip(new_kv) {
            for ((k, v), (nk, nv)) in cache.layers.iter_mut().zip(kv) {
                k.extend_from_slice(&nk);
                v.extend_from_slice(&nv);
            }
            cache.len += tokens.len();
        }
        Ok(logits)
    }

    /// The pass itself with contiguous attention over `past`; also returns each sequence's new
    /// keys and values per layer.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        batch: &[SeqInput<'_>],
        spans: &[Span],
        past: &[Option<&ContiguousKvCache>],
    ) -> Result<(Vec<Vec<f32>>, Vec<Vec<(Vec<f32>, Vec<f32>)>>), ModelError> {
        let (x, new_kv) = self.run_hidden(batch, spans, past)?;
        Ok((self.lm_head(&x, spans)?, new_kv))
    }

    /// [`run`](Self::run) up to the final norm: the hidden states `[rows, hidden]` and each
    /// sequence's new keys and values per layer.
    #[allow(clippy::type_complexity)]
    fn run_hidden(
        &self,
        batch: &[SeqInput<'_>],
        spans: &[Span],
        past: &[Option<&ContiguousKvCache>],
    ) -> Result<(Vec<f32>, Vec<Vec<(Vec<f32>, Vec<f32>)>>), ModelError> {
        let mut new_kv: Vec<Vec<(Vec<f32>, Vec<f32>)>> = vec![Vec::new(); batch.len()];
        let starts: Vec<usize> = past.iter().map(|c| c.map_or(0, |c| c.len)).collect();
        let (qd, kvd) = (
            self.config.num_heads * self.config.head_dim,
            self.config.num_kv_heads * self.config.head_dim,
        );
        let mut attend = |l: usize,
                          shape: AttentionShape,
                          q: &[f32],
                          k: &[f32],
                          v: &[f32],
                          attn: &mut [f32]|
         -> Result<(), ModelError> {
            for (n, s) in spans.iter().enumerate() {
                let qs = &q[s.start * qd..s.end * qd];
                let ks = &k[s.start * kvd..s.end * kvd];
                let vs = &v[s.start * kvd..s.end * kvd];
                let out = match past[n] {
                    Some(c) => {
                        let (ck, cv) = &c.layers[l];
                        let all_k = [&ck[..], ks].concat();
                        let all_v = [&cv[..], vs].concat();
                        new_kv[n].push((ks.to_vec(), vs.to_vec()));
                        ops::attention(qs, &all_k, &all_v, shape, c.len)
                    }
                    None => ops::attention(qs, ks, vs, shape, 0),
                };
                attn[s.start * qd..s.end * qd].copy_from_slice(&out);
            }
            Ok(())
        };
        let x = self.hidden(batch, spans, &starts, &mut attend)?;
        Ok((x, new_kv))
    }

    /// The decoder stack over a mixed batch: embeds every sequence's tokens, runs each layer
    /// (LoRA through SGMV on every projection, rope at positions `starts[n]..` for sequence
    /// `n`, attention by `attend`) and returns the final-normed hidden states `[rows, hidden]`.
    ///
    /// `attend(layer, shape, q, k, v, out)` gets the batch's roped queries `[rows, heads·d]`,
    /// roped keys and values `[rows, kv_heads·d]`, and writes the attention output
    /// `[rows, heads·d]` to `out`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn hidden<E: From<ModelError>>(
        &self,
        batch: &[SeqInput<'_>],
        spans: &[Span],
        starts: &[usize],
        attend: &mut dyn FnMut(
            usize,
            AttentionShape,
            &[f32],
            &[f32],
            &[f32],
            &mut [f32],
        ) -> Result<(), E>,
    ) -> Result<Vec<f32>, E> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        let rows = spans.last().map_or(0, |s| s.end);
        if rows == 0 {
            return Ok(Vec::new());
        }
        let ad = &self.adapters[..];
        let mut x = vec![0f32; rows * h];
        let emb_scale = if cfg.arch == Architecture::Gemma {
            (h as f64).sqrt() as f32
        } else {
            1.0
        };
        for (s, seq) in spans.iter().zip(batch) {
            // An adapter's saved embeddings, else the base's (read through a tied head).
            let saved = s
                .adapter
                .and_then(|id| self.adapters[id].saved.get("model.embed_tokens.weight"));
            for (r, &tok) in seq.tokens.iter().enumerate() {
                let dst = &mut x[(s.start + r) * h..(s.start + r + 1) * h];
                let tok = tok as usize;
                match saved {
                    Some(t) => dst.copy_from_slice(&t.data[tok * h..(tok + 1) * h]),
                    None => self.weights.embed_row(tok, dst),
                }
                dst.iter_mut().for_each(|d| *d *= emb_scale);
            }
        }
        let (qd, kvd) = (
            cfg.num_heads * cfg.head_dim,
            cfg.num_kv_heads * cfg.head_dim,
        );
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let mut xn = x.clone();
            let key = format!("model.layers.{l}.input_layernorm.weight");
            self.norm(&mut xn, spans, &key, &layer.input_norm);
            let mut q = project(&layer.q, &xn, spans, ad)?;
            let mut k = project(&layer.k, &xn, spans, ad)?;
            let v = project(&layer.v, &xn, spans, ad)?;
            let shape = AttentionShape {
                heads: cfg.num_heads,
                kv_heads: cfg.num_kv_heads,
                head_dim: cfg.head_dim,
                window: cfg.layer_window(l),
            };
            for (s, &first) in spans.iter().zip(starts) {
                let qs = &mut q[s.start * qd..s.end * qd];
                let ks = &mut k[s.start * kvd..s.end * kvd];
                ops::apply_rope(qs, cfg.num_heads, &self.inv_freq, first);
                ops::apply_rope(ks, cfg.num_kv_heads, &self.inv_freq, first);
            }
            let mut attn = vec![0f32; rows * qd];
            attend(l, shape, &q, &k, &v, &mut attn)?;
            let o = project(&layer.o, &attn, spans, ad)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let mut xn = x.clone();
            let key = format!("model.layers.{l}.post_attention_layernorm.weight");
            self.norm(&mut xn, spans, &key, &layer.post_norm);
            let mut gate = project(&layer.gate, &xn, spans, ad)?;
            let up = project(&layer.up, &xn, spans, ad)?;
            ops::gated(cfg.activation, &mut gate, &up);
            let down = project(&layer.down, &gate, spans, ad)?;
            x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
        self.norm(&mut x, spans, "model.norm.weight", &self.weights.norm);
        Ok(x)
    }

    /// Logits of hidden rows `x` (`[rows, hidden]`, laid out by `spans`), one `[len, vocab]`
    /// block per span, with each span's adapter on the head.
    pub(crate) fn lm_head(&self, x: &[f32], spans: &[Span]) -> Result<Vec<Vec<f32>>, ModelError> {
        if x.is_empty() {
            return Ok(vec![Vec::new(); spans.len()]);
        }
        let logits = project(&self.weights.lm_head, x, spans, &self.adapters)?;
        let vocab = self.config.vocab_size;
        Ok(spans
            .iter()
            .map(|s| logits[s.start * vocab..s.end * vocab].to_vec())
            .collect())
    }

    /// Greedy decoding of `n` tokens after `prompt` (ties go to the lowest token id), with a
    /// [`ContiguousKvCache`]: see [`greedy_streaming`](Self::greedy_streaming).
    pub fn greedy(
        &self,
        adapter: Option<AdapterSlot>,
        prompt: &[u32],
        n: usize,
    ) -> Result<Vec<u32>, ModelError> {
        self.greedy_streaming(adapter, prompt, n, &mut |_, _| true)
    }

    /// Greedy decoding of up to `n` tokens after `prompt` (ties go to the lowest token id) with
    /// a [`ContiguousKvCache`]: the prompt runs once, then each step runs only the token just chosen, so
    /// `n` tokens cost `prompt + n − 1` token rows instead of a pass over the whole prefix per
    /// token. `on_token(index, token)` sees each token as soon as it is chosen; returning `false`
    /// stops there (that token is the last one returned).
    pub fn greedy_streaming(
        &self,
        adapter: Option<AdapterSlot>,
        prompt: &[u32],
        n: usize,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<u32>, ModelError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        self.config.check_context(prompt.len(), n)?;
        let vocab = self.config.vocab_size;
        let mut cache = self.new_cache(adapter)?;
        let mut out = Vec::with_capacity(n);
        let mut next: Vec<u32> = prompt.to_vec();
        for index in 0..n {
            let logits = self.forward_cached(&mut [(&next[..], &mut cache)])?;
            let rows = &logits[0];
            let best = greedy_token(&rows[rows.len() - vocab..]);
            out.push(best);
            if !on_token(index, best) {
                break;
            }
            next = vec![best];
        }
        Ok(out)
    }
}

/// The greedy choice from one row of logits: the id of the highest logit (ties go to the lowest
/// id; `total_cmp` order, so a NaN counts as the highest). Empty logits give 0.
pub fn greedy_token(logits: &[f32]) -> u32 {
    (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
        .unwrap_or(0) as u32
}
