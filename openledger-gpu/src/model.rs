//! [`GpuModel`]: the llama-family decoder on a [`Runtime`]. Weights are copied from the
//! checkpoint's memory maps in their stored type (or converted once to the model's type)
//! through the runtime's copy stream (pinned staging on a device, each tensor's copy overlapping
//! the next one's read),
//! with q|k|v and gate|up fused into one matrix each; the paged KV cache lives in device
//! memory in the kernels' layout (per layer, K and V as `[blocks, kv_heads, block_size,
//! head_dim]`); a step runs the kernels of `openledger-kernels` and the runtime's GEMMs, and
//! only the rows that need logits go through the output head.
//!
//! Per layer: RMSNorm (fused with the residual add of the layer before), one GEMM for q|k|v,
//! RoPE fused with the write of k and v into the cache, paged attention (GQA, sliding window;
//! a prompt's rows in tiles on the tensor cores, flash-attention-2 style, where the type is
//! f16 / bf16; other rows one by one, split over the context when long), the output GEMM, RMSNorm fused with the residual, one
//! GEMM for gate|up, the gated activation, the down GEMM. Biases (Qwen2's q/k/v, Llama's
//! `attention_bias` and `mlp_bias`) are copied into the GEMM's output rows first and the GEMM
//! accumulates onto them; Gemma's norms scale by `1 + w` and its embeddings by √hidden.
//!
//! A step is prepared (its metadata staged, scratch buffers sized) and then issued (launches
//! and GEMMs only). A decode step of up to [`GpuOptions::graph_max_batch`] sequences is padded
//! to its batch-size bucket and issued once into a [`Graph`], then replayed: the graph's
//! addresses are those of the scratch buffers, the weights and the KV pool, so the graph is
//! kept by what it was captured for (bucket, parts of the split, the LoRA launches' rank and
//! modules, the pool) and dropped when a scratch buffer it holds is grown.

use crate::adapters::{AdapterBudget, DeviceAdapters, NPROJ, NormJob, SavedAt, proj_dims};
use crate::checkpoint::Checkpoint;
use crate::error::GpuError;
use crate::kv::DeviceKvStorage;
use crate::meta::{AttentionPlan, StepMeta, graph_bucket, graph_parts, i32_bytes, i64_bytes};
use crate::runtime::{Arg, Buffer, DevicePtr, Dtype, Gemm, Graph, LaunchDims, Runtime};
use openledger_lora::adapter::LoraAdapter;
use openledger_lora::model::ops::rope_inv_freq;
use openledger_lora::model::{Activation, Architecture, GgmlType, GgufFile, ModelConfig};
use openledger_lora::serve::{KvLayout, Sampler, SamplingParams, StepBatch};
use openledger_lora::sgmv::{LaunchTiles, SgmvPlan};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Threads per block of the per-row kernels (embedding, RMSNorm, activations).
const ROW_THREADS: u32 = 256;
/// Threads per block of the RoPE + KV write kernel.
const ROPE_THREADS: u32 = 128;
/// Threads per block of the attention kernels (`ATTN_THREADS` in attention.cu).
const ATTN_THREADS: u32 = 128;
/// The largest head the attention kernel holds (`ATTN_MAX_HD`).
const ATTN_MAX_HD: usize = 256;
/// Threads per block of the prefill attention kernel (`PF_THREADS` in prefill.cu).
const PREFILL_THREADS: u32 = 128;
/// Query rows per tile of the prefill attention kernel (`PF_ROWS`).
const PREFILL_ROWS: usize = 64;
/// The largest head the prefill attention kernel holds (`PF_MAX_HD`).
const PREFILL_MAX_HD: usize = 128;

/// Gives a tensor's bytes in the model's type by name and shape.
type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Cow<'a, [u8]>, GpuError> + 'a;

/// Threads per block of the sampling kernel (`SAMPLE_THREADS` in sample.cu).
const SAMPLE_THREADS: u32 = 256;
/// The largest top-k the sampling kernel sorts (`SAMPLE_MAX_K`).
const SAMPLE_MAX_K: usize = 256;

/// How one row of logits is sampled on the device: the request's parameters, the uniform draw
/// its seeded generator gives for this token (the CPU [`Sampler`] draws the same way, so the
/// same `u` picks the same token), and the sequence so far (for the repetition penalty).
#[derive(Debug, Clone, Copy)]
pub struct RowSampling<'a> {
    /// Temperature, top-k, top-p and the repetition penalty (the rest is not read).
    pub params: &'a SamplingParams,
    /// The draw in `[0, 1)` (unused when greedy).
    pub u: f32,
    /// Prompt and output so far.
    pub history: &'a [u32],
}

/// How a [`GpuModel`] is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// The type weights, activations and the KV cache are held in; `None`: the type the
    /// checkpoint stores its embeddings in.
    pub dtype: Option<Dtype>,
    /// Keys per part of the attention's split over the context: a row attending to more
    /// positions is split into parts run in parallel and merged.
    pub attention_part_len: usize,
    /// Device memory for adapters.
    pub adapters: AdapterBudget,
    /// A sequence with at least this many rows in a step (a prompt, or a chunk of one) has its
    /// attention computed on the tensor cores, in tiles of 64 rows that read each key once per
    /// tile; `0`: never. Only where that kernel applies (f16 or bf16, a head size that is a
    /// multiple of 16 up to 128, a device of compute capability 8.0 or later); elsewhere every
    /// row takes the row kernel.
    pub prefill_min_rows: usize,
    /// A decode step (every sequence one new token, each needing logits) of up to this many
    /// sequences runs as a graph — on a CUDA device one `cuGraphLaunch` in place of a launch
    /// per kernel — captured per batch-size bucket (1, 2, 4, 8, then multiples of 8, 32 and
    /// 64: [`graph_bucket`](crate::meta::graph_bucket)) the first time one is needed, the step
    /// padded to its bucket; `0`: every step is launched kernel by kernel.
    pub graph_max_batch: usize,
    /// Graphs held at most; past it the one used least recently is freed (each holds a
    /// capture of the whole decoder: some hundreds of nodes).
    pub max_graphs: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            dtype: None,
            attention_part_len: 512,
            adapters: AdapterBudget::default(),
            prefill_min_rows: 16,
            graph_max_batch: 512,
            max_graphs: 256,
        }
    }
}

/// One decoder layer's weights in device memory.
#[derive(Debug)]
struct Layer {
    input_norm: Buffer,
    /// `[q_out + 2 · kv_out, hidden]`: q, k, v rows one after another.
    qkv: Buffer,
    /// `[hidden, heads · head_dim]`.
    o: Buffer,
    post_norm: Buffer,
    /// `[2 · intermediate, hidden]`: gate rows, then up rows.
    gate_up: Buffer,
    /// `[hidden, intermediate]`.
    down: Buffer,
    /// Biases of q|k|v, o, gate|up and down, where the architecture has them (Qwen2's q, k and
    /// v; Llama's `attention_bias` and `mlp_bias`).
    qkv_bias: Option<Buffer>,
    o_bias: Option<Buffer>,
    gate_up_bias: Option<Buffer>,
    down_bias: Option<Buffer>,
}

/// Device memory held, by component, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryUse {
    /// Weights of the base model.
    pub weights: usize,
    /// Activations and step metadata (grown to the largest step so far).
    pub scratch: usize,
    /// The adapter slab and slot table.
    pub adapters: usize,
}

/// The llama-family model on a [`Runtime`] (see the module docs).
#[derive(Debug)]
pub struct GpuModel {
    rt: Arc<dyn Runtime>,
    cfg: ModelConfig,
    dtype: Dtype,
    embed: Buffer,
    layers: Vec<Layer>,
    norm: Buffer,
    lm_head: Option<Buffer>,
    inv_freq: Buffer,
    part_len: usize,
    /// `GpuOptions::prefill_min_rows` where the prefill kernel applies, else 0.
    prefill_min_rows: usize,
    adapters: DeviceAdapters,
    scratch: HashMap<&'static str, Buffer>,
    /// Whether any layer adds a bias to a projection (then each step needs `zero_ids`).
    has_bias: bool,
    /// Zero token ids for the bias gather, kept across steps and grown (never shrunk) with `t`.
    zero_ids: Option<Buffer>,
    /// [`GpuOptions::graph_max_batch`] (0 once the runtime turned graphs down).
    graph_max_batch: usize,
    /// The decode graphs captured, by what they were captured for, with the step each last
    /// ran in.
    graphs: HashMap<GraphKey, (Graph, u64)>,
    /// [`GpuOptions::max_graphs`].
    max_graphs: usize,
    graph_stats: GraphStats,
}

/// Threads per block of the SGMV kernels.
const SGMV_THREADS: u32 = 128;
/// Rank rows per shrink block (`SHRINK_WARPS` in shrink.cu).
const SHRINK_WARPS: usize = 4;
/// Rows per tile of the segment (SGMV) kernels; the row (BGMV) kernels take one.
const SGMV_ROWS: usize = 8;
/// Shared memory a block may take without opting in (the expand kernels stage rows × rank f32).
const SHARED_BYTES: usize = 48 << 10;

/// The launches of one (layer, projection)'s LoRA in a step.
#[derive(Debug, Clone, Copy)]
struct LoraLaunch {
    /// Offset of its tiles in the step's tile buffer, in words.
    tiles_at: usize,
    tiles: usize,
    max_rank: usize,
    /// Rows per tile: SGMV's eight, BGMV's one.
    per_tile: usize,
    /// Whether a slot of the step has a DoRA factor or a LoRA bias on this (layer, projection).
    epilogue: bool,
}

/// `len` values uniform in ±`scale` as `dtype`'s bytes: SplitMix64 streams seeded from `seed`
/// and each chunk's index, made on all cores.
fn random_bytes(len: usize, dtype: Dtype, scale: f32, seed: u64) -> Vec<u8> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 20;
    let chunks: Vec<Vec<u8>> = (0..len.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let n = CHUNK.min(len - c * CHUNK);
            let mut state = seed ^ (c as u64).wrapping_mul(0xd1b5_4a32_d192_ed03);
            let values: Vec<f32> = (0..n)
                .map(|_| {
                    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                    let mut z = state;
                    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    z ^= z >> 31;
                    let u = (z >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * scale
                })
                .collect();
            dtype.encode(&values)
        })
        .collect();
    chunks.concat()
}

/// Refuses what the kernels do not do yet, naming it.
fn check_supported(cfg: &ModelConfig) -> Result<(), GpuError> {
    let unsupported = |what: String| Err(GpuError::Unsupported { what });
    match cfg.arch {
        Architecture::Llama | Architecture::Mistral | Architecture::Qwen2 | Architecture::Gemma => {
        }
    }
    if !cfg.head_dim.is_multiple_of(2) || cfg.head_dim > ATTN_MAX_HD {
        return unsupported(format!(
            "head_dim {} (an even size up to {ATTN_MAX_HD} is needed)",
            cfg.head_dim
        ));
    }
    if cfg.num_kv_heads == 0 || !cfg.num_heads.is_multiple_of(cfg.num_kv_heads) {
        return unsupported(format!(
            "{} heads over {} KV heads",
            cfg.num_heads, cfg.num_kv_heads
        ));
    }
    Ok(())
}

impl GpuModel {
    /// Loads the checkpoint folder `dir` (`config.json` and safetensors weights) onto `rt`,
    /// reporting each tensor copied as `(done, total)` to `progress`.
    pub fn load(
        rt: Arc<dyn Runtime>,
        dir: &Path,
        opts: GpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read(&config_path).map_err(|source| GpuError::Io {
            path: config_path.clone(),
            source,
        })?;
        let cfg = ModelConfig::from_json(&text)?;
        check_supported(&cfg)?;
        let ck = Checkpoint::open(dir)?;
        let dtype = match opts.dtype {
            Some(d) => d,
            None => {
                ck.tensor(
                    "model.embed_tokens.weight",
                    &[cfg.vocab_size, cfg.hidden_size],
                )?
                .dtype
            }
        };
        // Stored bytes straight from the map (into the pinned staging), converted ones owned.
        let mut source = |key: &str, shape: &[usize]| -> Result<Cow<'_, [u8]>, GpuError> {
            ck.tensor(key, shape)?.bytes_as(key, dtype)
        };
        Self::build(rt, cfg, dtype, opts, &mut source, progress)
    }

    /// Loads a llama-family GGUF file onto `rt`: each tensor dequantized to f32 on the host as
    /// the CPU model reads it (llama.cpp's Q/K permutation undone), converted to the model's
    /// type and copied, one at a time, reporting each as `(done, total)`. The type is
    /// `opts.dtype`, or else the embedding's where the file stores it as f32, f16 or bf16, and
    /// f16 where it is quantized (the values of Q8_0, Q4_1 … rounded once to f16).
    pub fn from_gguf(
        rt: Arc<dyn Runtime>,
        file: &GgufFile,
        opts: GpuOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        let cfg = file.model_config()?;
        check_supported(&cfg)?;
        let dtype = match opts.dtype {
            Some(d) => d,
            None => match file
                .tensors()
                .iter()
                .find(|t| t.name == "token_embd.weight")
                .map(|t| t.ggml_type)
            {
                Some(GgmlType::F32) => Dtype::F32,
                Some(GgmlType::BF16) => Dtype::Bf16,
                _ => Dtype::F16,
            },
        };
        let mut source = move |key: &str, shape: &[usize]| -> Result<Cow<'_, [u8]>, GpuError> {
            let weight = |reason: String| GpuError::Weight {
                key: key.to_string(),
                reason,
            };
            let (_, got, values) = file
                .hf_tensor_f32(key)?
                .ok_or_else(|| weight("not in the GGUF file".into()))?;
            if got != shape {
                return Err(weight(format!("shape {got:?}, the model needs {shape:?}")));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(weight(format!("value {i} is {}", values[i])));
            }
            Ok(Cow::Owned(dtype.encode(&values)))
        };
        Self::build(rt, cfg, dtype, opts, &mut source, progress)
    }

    /// A model of `cfg`'s shape with random weights made on the host in chunks (uniform in
    /// ±`scale`, seeded; norms 1), for benchmarks: no checkpoint is read.
    pub fn random(
        rt: Arc<dyn Runtime>,
        cfg: ModelConfig,
        dtype: Dtype,
        opts: GpuOptions,
        seed: u64,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        check_supported(&cfg)?;
        let mut n = 0u64;
        let mut source =
            move |key: &str, shape: &[usize]| -> Result<Cow<'static, [u8]>, GpuError> {
                n += 1;
                let len: usize = shape.iter().product();
                if key.ends_with("norm.weight") {
                    return Ok(Cow::Owned(dtype.encode(&vec![1.0; len])));
                }
                Ok(Cow::Owned(random_bytes(
                    len,
                    dtype,
                    0.02,
                    seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )))
            };
        Self::build(rt, cfg, dtype, opts, &mut source, progress)
    }

    /// Builds the model from `source`, which gives each tensor's bytes in `dtype` by name and
    /// shape.
    fn build(
        rt: Arc<dyn Runtime>,
        cfg: ModelConfig,
        dtype: Dtype,
        opts: GpuOptions,
        source: &mut TensorSource<'_>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, GpuError> {
        if opts.attention_part_len == 0 {
            return Err(GpuError::InvalidArgument {
                name: "options",
                reason: "attention_part_len must be at least 1".into(),
            });
        }
        let (h, v, inter) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
        let hd = cfg.head_dim;
        let (q_out, kv_out) = (cfg.num_heads * hd, cfg.num_kv_heads * hd);
        let eb = dtype.bytes();
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        let total = 3 + cfg.num_layers * 9;
        let mut done = 0;
        let mut step = |progress: &mut dyn FnMut(usize, usize)| {
            done += 1;
            progress(done, total);
        };
        // Copies go through the runtime's copy stream (pinned staging on a device), overlapping
        // the next tensor's read and conversion; all have landed before the model is returned.
        let mut uploads = Vec::new();
        // The tensors `parts` (name, rows) stacked into one buffer: matrices of `cols`
        // columns, or one vector when `cols` is `None`.
        let mut tensor = |parts: &[(&str, usize)], cols: Option<usize>| {
            let width = cols.unwrap_or(1);
            let rows: usize = parts.iter().map(|p| p.1).sum();
            let mut b = Buffer::new(&rt, rows * width * eb)?;
            let mut at = 0;
            for &(key, n) in parts {
                let bytes = match cols {
                    Some(c) => source(key, &[n, c])?,
                    None => source(key, &[n])?,
                };
                uploads.push(b.write_async(at * width * eb, &bytes)?);
                at += n;
            }
            Ok::<Buffer, GpuError>(b)
        };
        let embed = tensor(&[("model.embed_tokens.weight", v)], Some(h))?;
        step(progress);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |n: &str| format!("model.layers.{l}.{n}");
            let input_norm = tensor(&[(&p("input_layernorm.weight"), h)], None)?;
            let qkv = tensor(
                &[
                    (&p("self_attn.q_proj.weight"), q_out),
                    (&p("self_attn.k_proj.weight"), kv_out),
                    (&p("self_attn.v_proj.weight"), kv_out),
                ],
                Some(h),
            )?;
            for _ in 0..4 {
                step(progress);
            }
            let o = tensor(&[(&p("self_attn.o_proj.weight"), h)], Some(q_out))?;
            let post_norm = tensor(&[(&p("post_attention_layernorm.weight"), h)], None)?;
            let gate_up = tensor(
                &[
                    (&p("mlp.gate_proj.weight"), inter),
                    (&p("mlp.up_proj.weight"), inter),
                ],
                Some(h),
            )?;
            let down = tensor(&[(&p("mlp.down_proj.weight"), h)], Some(inter))?;
            for _ in 0..5 {
                step(progress);
            }
            // Biases where the architecture has them: q|k|v, o, gate|up, down.
            let specs: [(bool, &[(&str, usize)]); 4] = [
                (
                    qkv_bias,
                    &[
                        ("self_attn.q_proj", q_out),
                        ("self_attn.k_proj", kv_out),
                        ("self_attn.v_proj", kv_out),
                    ],
                ),
                (cfg.attention_bias, &[("self_attn.o_proj", h)]),
                (
                    cfg.mlp_bias,
                    &[("mlp.gate_proj", inter), ("mlp.up_proj", inter)],
                ),
                (cfg.mlp_bias, &[("mlp.down_proj", h)]),
            ];
            let mut biases = [None, None, None, None];
            for ((on, parts), slot) in specs.into_iter().zip(&mut biases) {
                if on {
                    let keys: Vec<(String, usize)> = parts
                        .iter()
                        .map(|&(n, rows)| (p(&format!("{n}.bias")), rows))
                        .collect();
                    let keys: Vec<(&str, usize)> =
                        keys.iter().map(|(k, rows)| (k.as_str(), *rows)).collect();
                    *slot = Some(tensor(&keys, None)?);
                }
            }
            let [qkv_bias, o_bias, gate_up_bias, down_bias] = biases;
            layers.push(Layer {
                input_norm,
                qkv,
                o,
                post_norm,
                gate_up,
                down,
                qkv_bias,
                o_bias,
                gate_up_bias,
                down_bias,
            });
        }
        let norm = tensor(&[("model.norm.weight", h)], None)?;
        step(progress);
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(tensor(&[("lm_head.weight", v)], Some(h))?)
        };
        step(progress);
        for id in uploads {
            rt.wait_upload(id)?;
        }
        let inv = rope_inv_freq(hd, cfg.rope_theta, cfg.rope_scaling);
        let inv_freq = Buffer::from_bytes(&rt, &Dtype::F32.encode(&inv))?;
        let adapters = DeviceAdapters::new(&rt, &cfg, opts.adapters)?;
        let has_bias = layers.iter().any(|l| {
            l.qkv_bias.is_some()
                || l.o_bias.is_some()
                || l.gate_up_bias.is_some()
                || l.down_bias.is_some()
        });
        let mut model = Self {
            rt,
            cfg,
            dtype,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
            part_len: opts.attention_part_len,
            prefill_min_rows: 0,
            adapters,
            scratch: HashMap::new(),
            has_bias,
            zero_ids: None,
            graph_max_batch: opts.graph_max_batch,
            max_graphs: opts.max_graphs.max(1),
            graphs: HashMap::new(),
            graph_stats: GraphStats::default(),
        };
        model.set_prefill_min_rows(opts.prefill_min_rows);
        Ok(model)
    }

    /// Copies `adapter` to the device and serves batches naming `name` with it (a later
    /// attach under the same name replaces it). DoRA modules get their factor
    /// `magnitude / ‖W + s·B·A‖` computed on the device from the base weight (PEFT's weight
    /// norm), and LoRA biases are added with it after the module's product. Its saved
    /// parameters (`modules_to_save` copies of the embeddings, the output head, the norms and
    /// projections; saved biases) are held on the device and swapped in for its rows (a step
    /// with them runs without a graph). Refused with nothing changed: modules that are not this
    /// model's projections, a saved parameter the model has no place for
    /// ([`GpuError::Unsupported`]), a saved tensor of another size, a full slab or no free
    /// slot ([`GpuError::OutOfMemory`]).
    pub fn attach_adapter(&mut self, name: &str, adapter: &LoraAdapter) -> Result<(), GpuError> {
        self.attach_with(name, adapter, false)
    }

    /// Attaches `adapter` as `name` (its pages copied on the copy stream when `asynchronous`)
    /// and computes its DoRA factors.
    fn attach_with(
        &mut self,
        name: &str,
        adapter: &LoraAdapter,
        asynchronous: bool,
    ) -> Result<(), GpuError> {
        let cfg = self.cfg.clone();
        let (dtype, eb) = (self.dtype, self.dtype.bytes());
        let layers = &self.layers;
        // A projection's base bias, read back once for a saved bias.
        let mut base_bias = |l: usize, p: usize| -> Result<Option<Vec<f32>>, GpuError> {
            let (_, dout) = proj_dims(&cfg, p);
            let (_, col, bias) = projection_of(&cfg, &layers[l], p);
            let Some(bias) = bias else {
                return Ok(None);
            };
            let mut bytes = vec![0u8; dout * eb];
            bias.read(col * eb, &mut bytes)?;
            Ok(Some(dtype.decode(&bytes)))
        };
        let (_, jobs) =
            self.adapters
                .attach(&cfg, dtype, name, adapter, asynchronous, &mut base_bias)?;
        self.run_norm_jobs(name, jobs)
    }

    /// Computes the DoRA factors of an adapter just attached as `name` (detaching it when
    /// that fails).
    fn run_norm_jobs(&mut self, name: &str, jobs: Vec<NormJob>) -> Result<(), GpuError> {
        if jobs.is_empty() {
            return Ok(());
        }
        // The factors' buffers live until every kernel is done with them: one wait for all.
        let mut held = Vec::with_capacity(2 * jobs.len());
        let result = jobs
            .iter()
            .try_for_each(|j| self.dora_norm(j, &mut held))
            .and_then(|()| self.rt.synchronize());
        if let Err(e) = result {
            self.adapters.detach(name)?;
            return Err(e);
        }
        Ok(())
    }

    /// Launches one module's DoRA factor, `g = magnitude / ‖W + s·B·A‖` per output row, on the
    /// device; its factors' buffers go to `held`.
    fn dora_norm(&self, job: &NormJob, held: &mut Vec<Buffer>) -> Result<(), GpuError> {
        let (din, dout) = proj_dims(&self.cfg, job.proj);
        let (w, row, _) = self.projection(job.layer, job.proj);
        let a = Buffer::from_bytes(&self.rt, &Dtype::F32.encode(&job.a))?;
        let b = Buffer::from_bytes(&self.rt, &Dtype::F32.encode(&job.b))?;
        // SAFETY: `w` holds `dout` rows of `din` from `row`; `a` is [rank, din] and `b`
        // [dout, rank] f32, kept in `held` until the caller has waited; `g` holds the module's
        // `dout` magnitudes, which it overwrites.
        unsafe {
            self.launch(
                "dora_norm",
                (dout as u32, 1, 1),
                ROW_THREADS,
                &[
                    Arg::Ptr(job.g),
                    Arg::Ptr(w.at(row * din * self.dtype.bytes())),
                    Arg::I32(din as i32),
                    Arg::Ptr(a.ptr()),
                    Arg::Ptr(b.ptr()),
                    Arg::I32(job.rank as i32),
                    Arg::F32(job.scale),
                    Arg::Ptr(job.g),
                ],
            )?;
        }
        held.extend([a, b]);
        Ok(())
    }

    /// Projection `p` of layer `l` in the fused weights: its matrix (q|k|v, o, gate|up or
    /// down), the first of its rows there (which is also its first column in the fused
    /// output), and the matrix's bias where the architecture has one.
    fn projection(&self, l: usize, p: usize) -> (&Buffer, usize, Option<&Buffer>) {
        projection_of(&self.cfg, &self.layers[l], p)
    }

    /// As [`attach_adapter`](Self::attach_adapter), but the factors are copied on the
    /// runtime's copy stream while steps go on: [`adapter_landed`](Self::adapter_landed) says
    /// when they are there. A step naming the adapter before that waits for the copy first.
    pub fn attach_adapter_async(
        &mut self,
        name: &str,
        adapter: &LoraAdapter,
    ) -> Result<(), GpuError> {
        self.attach_with(name, adapter, true)
    }

    /// Serves batches naming `name` with the ensemble of `members`, each with its weight: one
    /// device adapter whose modules concatenate the members' factors (`A = [w₁s₁A₁; …]`,
    /// `B = [B₁ …]`, scale 1), adding `Σⱼ wⱼ·sⱼ·Bⱼ·Aⱼ·x` in one SGMV segment, as the CPU
    /// model's ensembles do. Refused as [`attach_adapter`](Self::attach_adapter) refuses a
    /// member.
    pub fn attach_ensemble(
        &mut self,
        name: &str,
        members: &[(&LoraAdapter, f32)],
    ) -> Result<(), GpuError> {
        self.attach_ensemble_with(name, members, false)
    }

    /// [`attach_ensemble`](Self::attach_ensemble), its copy on the copy stream when
    /// `asynchronous` (see [`attach_adapter_async`](Self::attach_adapter_async)).
    pub(crate) fn attach_ensemble_with(
        &mut self,
        name: &str,
        members: &[(&LoraAdapter, f32)],
        asynchronous: bool,
    ) -> Result<(), GpuError> {
        let cfg = self.cfg.clone();
        let (_, jobs) =
            self.adapters
                .attach_ensemble(&cfg, self.dtype, name, members, asynchronous)?;
        self.run_norm_jobs(name, jobs)
    }

    /// Whether adapter `name`'s factors are on the device (an adapter attached synchronously,
    /// or not attached, has nothing in flight); does not wait.
    pub fn adapter_landed(&mut self, name: &str) -> Result<bool, GpuError> {
        self.adapters.landed(name)
    }

    /// Adapters whose copies are still in flight.
    pub fn adapters_in_flight(&self) -> usize {
        self.adapters.in_flight()
    }

    /// Frees adapter `name`'s device memory (once a copy of it in flight has landed); false
    /// when it is not attached.
    pub fn detach_adapter(&mut self, name: &str) -> Result<bool, GpuError> {
        self.adapters.detach(name)
    }

    /// Names of the attached adapters.
    pub fn adapter_names(&self) -> Vec<&str> {
        self.adapters.names()
    }

    /// Adapters the device holds at once.
    pub fn adapter_slots(&self) -> usize {
        self.adapters.capacity()
    }

    /// Free pages of the adapter slab.
    pub fn free_adapter_pages(&self) -> usize {
        self.adapters.free_pages()
    }

    /// The LoRA launches of every (layer, projection) for rows running with `row_slots`
    /// (device slots), their tiles in one buffer uploaded once, and the largest intermediate.
    fn plan_lora(
        &mut self,
        row_slots: &[Option<usize>],
    ) -> Result<(Vec<Option<LoraLaunch>>, usize), GpuError> {
        let layers = self.cfg.num_layers;
        let mut launches = vec![None; layers * NPROJ];
        if row_slots.iter().all(Option::is_none) {
            return Ok((launches, 0));
        }
        let per_tile = if row_slots.len() > 1
            && row_slots.windows(2).any(|w| w[0].is_some() && w[0] == w[1])
        {
            SGMV_ROWS
        } else {
            1
        };
        let cap = self.adapters.capacity();
        let mut words: Vec<i64> = Vec::new();
        let mut v_len = 0;
        // (layer, projection)s with the same rows and ranks share their tiles.
        let mut seen: HashMap<(Vec<Option<usize>>, Vec<usize>), LoraLaunch> = HashMap::new();
        for l in 0..layers {
            for p in 0..NPROJ {
                let ranks: Vec<usize> = (0..cap).map(|s| self.adapters.rank(s, l, p)).collect();
                let rows: Vec<Option<usize>> = row_slots
                    .iter()
                    .map(|s| s.filter(|&s| ranks[s] > 0))
                    .collect();
                if rows.iter().all(Option::is_none) {
                    continue;
                }
                let epilogue = rows
                    .iter()
                    .flatten()
                    .any(|&s| self.adapters.has_extras(s, l, p));
                let key = (rows, ranks);
                if let Some(&launch) = seen.get(&key) {
                    launches[l * NPROJ + p] = Some(LoraLaunch { epilogue, ..launch });
                    continue;
                }
                let (rows, ranks) = &key;
                // SGMV's tiles stage their rows × the widest rank in shared memory: past what
                // fits, every row is a tile of its own (BGMV's kernels).
                let widest = rows.iter().flatten().map(|&s| ranks[s]).max().unwrap_or(0);
                let per_tile = if per_tile * widest * 4 > SHARED_BYTES {
                    1
                } else {
                    per_tile
                };
                let plan = SgmvPlan::from_row_slots(rows, ranks).map_err(|e| {
                    GpuError::InvalidArgument {
                        name: "adapters",
                        reason: e.to_string(),
                    }
                })?;
                let tiles: LaunchTiles =
                    plan.launch_tiles(per_tile)
                        .map_err(|e| GpuError::InvalidArgument {
                            name: "adapters",
                            reason: e.to_string(),
                        })?;
                if per_tile * tiles.max_rank * 4 > SHARED_BYTES {
                    return Err(GpuError::Unsupported {
                        what: format!(
                            "rank {} (the expand kernels stage rows × rank f32 in 48 KiB)",
                            tiles.max_rank
                        ),
                    });
                }
                v_len = v_len.max(plan.intermediate_len());
                let launch = LoraLaunch {
                    tiles_at: words.len(),
                    tiles: tiles.len(),
                    max_rank: tiles.max_rank,
                    per_tile,
                    epilogue,
                };
                words.extend_from_slice(&tiles.words);
                seen.insert(key, launch);
                launches[l * NPROJ + p] = Some(launch);
            }
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.staged("lora_tiles", &bytes)?;
        Ok((launches, v_len))
    }

    /// What a graph of a decode step over `row_slots` depends on of its adapters: the largest
    /// rank of their modules rounded up to a power of two, the (layer, projection)s one of
    /// them has, and those with an epilogue (DoRA or a LoRA bias).
    fn graph_modules(&self, row_slots: &[Option<usize>]) -> GraphModules {
        let lps = self.cfg.num_layers * NPROJ;
        let mut modules = GraphModules {
            rank: 0,
            launched: vec![false; lps],
            epilogue: vec![false; lps],
        };
        let mut slots: Vec<usize> = row_slots.iter().flatten().copied().collect();
        slots.sort_unstable();
        slots.dedup();
        for &s in &slots {
            for lp in 0..lps {
                let rank = self.adapters.rank(s, lp / NPROJ, lp % NPROJ);
                if rank > 0 {
                    modules.rank = modules.rank.max(rank);
                    modules.launched[lp] = true;
                }
                modules.epilogue[lp] |= self.adapters.has_extras(s, lp / NPROJ, lp % NPROJ);
            }
        }
        if modules.rank == 0 {
            return GraphModules::default();
        }
        modules.rank = modules.rank.next_power_of_two();
        modules
    }

    /// The LoRA launches of a decode step run as a graph: one BGMV tile per row (a row with no
    /// adapter takes the null slot, which the kernels pass over), the same tiles for every
    /// (layer, projection) that an adapter of the step has, the intermediate sized for the
    /// largest rank of the step's adapters rounded up to a power of two (so a graph serves
    /// other adapters up to that rank: `modules`, [`graph_modules`](Self::graph_modules)'
    /// answer). Returns the launches and the intermediate's length.
    fn plan_lora_graph(
        &mut self,
        row_slots: &[Option<usize>],
        modules: &GraphModules,
    ) -> Result<(Vec<Option<LoraLaunch>>, usize), GpuError> {
        let lps = self.cfg.num_layers * NPROJ;
        let rank = modules.rank;
        if rank == 0 {
            return Ok((vec![None; lps], 0));
        }
        let null = self.adapters.null_slot();
        let words: Vec<i64> = row_slots
            .iter()
            .enumerate()
            .flat_map(|(i, s)| [i as i64, 1, s.unwrap_or(null) as i64, (i * rank) as i64])
            .collect();
        self.staged("lora_tiles", &i64_bytes(&words))?;
        let launches = (0..lps)
            .map(|lp| {
                modules.launched[lp].then_some(LoraLaunch {
                    tiles_at: 0,
                    tiles: row_slots.len(),
                    max_rank: rank,
                    per_tile: 1,
                    epilogue: modules.epilogue[lp],
                })
            })
            .collect();
        Ok((launches, row_slots.len() * rank))
    }

    /// Adds projection `p`'s LoRA of layer `l` for the step's rows: `y[:, col..] += scale ·
    /// (x · Aᵀ) · Bᵀ`, through the intermediate `v`.
    ///
    /// # Safety
    /// `x` holds the step's rows of `in` features (stride `in`), `y` rows of `ldy` with the
    /// projection's outputs from `col`; `v` holds the plan's intermediate; the tiles of
    /// `launch` were uploaded by [`plan_lora`](Self::plan_lora) for this step.
    unsafe fn lora(
        &self,
        launch: Option<LoraLaunch>,
        l: usize,
        p: usize,
        io: ProjIo,
        v: DevicePtr,
    ) -> Result<(), GpuError> {
        let Some(launch) = launch else {
            return Ok(());
        };
        let ProjIo { x, y, ldy, col } = io;
        let per_tile = launch.per_tile;
        let (din, dout) = proj_dims(&self.cfg, p);
        let eb = self.dtype.bytes();
        let vec = 16 / eb;
        let (lda, ldb) = (din.next_multiple_of(vec), dout.next_multiple_of(vec));
        let table = self.adapters.table(l, p);
        let tiles = self.scratch["lora_tiles"].at(launch.tiles_at * 8);
        let kind = if per_tile == 1 { "bgmv" } else { "sgmv" };
        // SAFETY: as the caller promises; the tiles index slots of this (layer, projection)'s
        // table with their ranks.
        unsafe {
            self.rt.launch(
                &format!("{kind}_shrink_{}", self.dtype.suffix()),
                LaunchDims::new(
                    (
                        launch.tiles as u32,
                        launch.max_rank.div_ceil(SHRINK_WARPS) as u32,
                        1,
                    ),
                    SGMV_THREADS,
                ),
                &[
                    Arg::Ptr(v),
                    Arg::Ptr(x),
                    Arg::I64(din as i64),
                    Arg::Ptr(table),
                    Arg::Ptr(tiles),
                    Arg::I32(din as i32),
                    Arg::I32(lda as i32),
                ],
            )?;
            let per_block = SGMV_THREADS as usize * vec;
            self.rt.launch(
                &format!("{kind}_expand_{}", self.dtype.suffix()),
                LaunchDims {
                    grid: (launch.tiles as u32, dout.div_ceil(per_block) as u32, 1),
                    threads: SGMV_THREADS,
                    shared_bytes: (per_tile * launch.max_rank * 4) as u32,
                },
                &[
                    Arg::Ptr(y),
                    Arg::I64(ldy as i64),
                    Arg::I64(col as i64),
                    Arg::Ptr(v),
                    Arg::Ptr(table),
                    Arg::Ptr(tiles),
                    Arg::I32(dout as i32),
                    Arg::I32(ldb as i32),
                ],
            )?;
            if launch.epilogue {
                let (_, _, bias) = self.projection(l, p);
                self.rt.launch(
                    &format!("lora_epilogue_{}", self.dtype.suffix()),
                    LaunchDims::new(
                        (
                            launch.tiles as u32,
                            dout.div_ceil(ROW_THREADS as usize) as u32,
                            1,
                        ),
                        ROW_THREADS,
                    ),
                    &[
                        Arg::Ptr(y),
                        Arg::I64(ldy as i64),
                        Arg::I64(col as i64),
                        Arg::I32(dout as i32),
                        // The fused bias's part is at the projection's column too.
                        Arg::Ptr(bias.map_or(0, |b| b.at(col * eb))),
                        Arg::Ptr(tiles),
                        Arg::Ptr(self.adapters.extras_table(l, p)),
                    ],
                )?;
            }
            Ok(())
        }
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The type weights, activations and the cache are held in.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Whether the tensor-core prefill attention applies to this model on this device (f16 or
    /// bf16, a head size that is a multiple of 16 up to 128, compute capability 8.0 or later).
    pub fn prefill_kernel_applies(&self) -> bool {
        self.dtype != Dtype::F32
            && self.cfg.head_dim.is_multiple_of(16)
            && self.cfg.head_dim <= PREFILL_MAX_HD
            && self.rt.tensor_cores()
    }

    /// The fewest rows a sequence needs in a step to take the tensor-core prefill attention
    /// (see [`GpuOptions::prefill_min_rows`]); 0 when it never does.
    pub fn prefill_min_rows(&self) -> usize {
        self.prefill_min_rows
    }

    /// Sets [`prefill_min_rows`](Self::prefill_min_rows) (0: every row takes the row kernel);
    /// kept at 0 where the kernel does not apply. Returns the value now in force.
    pub fn set_prefill_min_rows(&mut self, rows: usize) -> usize {
        self.prefill_min_rows = if self.prefill_kernel_applies() {
            rows
        } else {
            0
        };
        self.prefill_min_rows
    }

    /// The largest decode step run as a graph ([`GpuOptions::graph_max_batch`]; 0: none).
    pub fn graph_max_batch(&self) -> usize {
        self.graph_max_batch
    }

    /// Sets [`graph_max_batch`](Self::graph_max_batch) (0 turns graphs off and frees those
    /// held). Returns the value now in force.
    pub fn set_graph_max_batch(&mut self, rows: usize) -> usize {
        self.graph_max_batch = rows;
        if rows == 0 {
            self.graphs.clear();
        }
        rows
    }

    /// Sets [`GpuOptions::max_graphs`] (at least 1), freeing the graphs used least recently
    /// past it. Returns the value now in force.
    pub fn set_max_graphs(&mut self, graphs: usize) -> usize {
        self.max_graphs = graphs.max(1);
        self.evict_graphs(self.max_graphs);
        self.max_graphs
    }

    /// Decode graphs held, captured and replayed so far.
    pub fn graph_stats(&self) -> GraphStats {
        GraphStats {
            held: self.graphs.len(),
            ..self.graph_stats.clone()
        }
    }

    /// The runtime it runs on.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.rt
    }

    /// The KV cache layout this model writes, with `block_size` positions per block.
    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        KvLayout {
            n_layers: self.cfg.num_layers,
            n_kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            block_size,
        }
    }

    /// A KV pool in device memory for this model: `num_blocks` blocks of `block_size`
    /// positions, in the model's type.
    pub fn kv_storage(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<DeviceKvStorage, GpuError> {
        if num_blocks == 0 || block_size == 0 {
            return Err(GpuError::InvalidArgument {
                name: "kv_storage",
                reason: "num_blocks and block_size must be at least 1".into(),
            });
        }
        DeviceKvStorage::new(&self.rt, self.kv_layout(block_size), num_blocks, self.dtype)
    }

    /// Device memory held, by component.
    pub fn memory(&self) -> MemoryUse {
        let weights = self.embed.len()
            + self.norm.len()
            + self.lm_head.as_ref().map_or(0, Buffer::len)
            + self.inv_freq.len()
            + self
                .layers
                .iter()
                .map(|l| {
                    let biases = [&l.qkv_bias, &l.o_bias, &l.gate_up_bias, &l.down_bias];
                    l.input_norm.len()
                        + l.qkv.len()
                        + l.o.len()
                        + l.post_norm.len()
                        + l.gate_up.len()
                        + l.down.len()
                        + biases
                            .iter()
                            .filter_map(|b| b.as_ref())
                            .map(Buffer::len)
                            .sum::<usize>()
                })
                .sum::<usize>();
        let scratch = self.scratch.values().map(Buffer::len).sum::<usize>()
            + self.zero_ids.as_ref().map_or(0, Buffer::len);
        MemoryUse {
            weights,
            scratch,
            adapters: self.adapters.bytes(),
        }
    }

    /// A scratch buffer of at least `bytes`, grown (never shrunk) as steps need. Growing one
    /// drops the graphs (they hold its old address).
    fn scratch(&mut self, name: &'static str, bytes: usize) -> Result<DevicePtr, GpuError> {
        self.reserve(name, bytes, bytes)
    }

    /// Scratch buffer `name` of at least `bytes`, made `alloc` bytes (at least `bytes`) when it
    /// has to grow; growing drops the graphs.
    fn reserve(
        &mut self,
        name: &'static str,
        bytes: usize,
        alloc: usize,
    ) -> Result<DevicePtr, GpuError> {
        let fits = self.scratch.get(name).is_some_and(|b| b.len() >= bytes);
        if !fits {
            self.graphs.clear();
            // Free the old one first, so the peak is the larger buffer alone.
            self.scratch.remove(name);
            self.scratch
                .insert(name, Buffer::new(&self.rt, alloc.max(bytes))?);
        }
        Ok(self.scratch[name].ptr())
    }

    /// `rows` zero token ids on the device: written once, and again only when a step has more
    /// rows than any before it.
    fn zero_ids(&mut self, rows: usize) -> Result<DevicePtr, GpuError> {
        let bytes = rows * 4;
        match &self.zero_ids {
            Some(b) if b.len() >= bytes => Ok(b.ptr()),
            _ => {
                self.graphs.clear();
                // Free the old one first, so the peak is the larger buffer alone.
                self.zero_ids = None;
                let b = Buffer::from_bytes(&self.rt, &vec![0u8; bytes])?;
                let p = b.ptr();
                self.zero_ids = Some(b);
                Ok(p)
            }
        }
    }

    /// A scratch buffer holding `data`. Metadata buffers grow to a power of two, so that a
    /// block table growing by a block at a time seldom moves them (and drops the graphs).
    fn staged(&mut self, name: &'static str, data: &[u8]) -> Result<DevicePtr, GpuError> {
        let p = self.reserve(name, data.len(), data.len().next_power_of_two())?;
        if let Some(b) = self.scratch.get_mut(name) {
            b.write(0, data)?;
        }
        Ok(p)
    }

    /// Launches `kernel` (the model's dtype suffix added).
    ///
    /// # Safety
    /// As [`Runtime::launch`].
    unsafe fn launch(
        &self,
        kernel: &str,
        grid: (u32, u32, u32),
        threads: u32,
        args: &[Arg],
    ) -> Result<(), GpuError> {
        let name = format!("{kernel}_{}", self.dtype.suffix());
        // SAFETY: as the caller promises.
        unsafe { self.rt.launch(&name, LaunchDims::new(grid, threads), args) }
    }

    /// RMSNorm of `rows` rows of `x` into `out` with weight `w` (the residual added into
    /// `residual` first, unless it is 0).
    ///
    /// # Safety
    /// The buffers hold `rows` rows of the hidden size.
    unsafe fn rms_norm(
        &self,
        rows: u32,
        out: DevicePtr,
        x: DevicePtr,
        residual: DevicePtr,
        w: DevicePtr,
    ) -> Result<(), GpuError> {
        let args = [
            Arg::Ptr(out),
            Arg::Ptr(x),
            Arg::Ptr(residual),
            Arg::Ptr(w),
            Arg::I32(self.cfg.hidden_size as i32),
            Arg::F32(self.cfg.rms_norm_eps),
            // Gemma's norms scale by 1 + w.
            Arg::I32(i32::from(self.cfg.arch == Architecture::Gemma)),
        ];
        // SAFETY: as the caller promises.
        unsafe { self.launch("rms_norm", (rows, 1, 1), ROW_THREADS, &args) }
    }

    /// `y = x · wᵀ + bias` for `m` rows (dense strides): the bias is copied into every row of
    /// `y` (the embedding gather over `zeros`, `m` zero ids) and the GEMM accumulates onto it,
    /// so the sum is taken in f32 and rounded once, as a fused bias epilogue would.
    ///
    /// # Safety
    /// As [`Runtime::gemm`]; `bias` holds `n` values and `zeros` `m` zero ids.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_bias(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: DevicePtr,
        w: DevicePtr,
        y: DevicePtr,
        bias: Option<&Buffer>,
        zeros: DevicePtr,
    ) -> Result<(), GpuError> {
        let Some(bias) = bias else {
            // SAFETY: as the caller promises.
            return unsafe { self.gemm(m, n, k, x, w, y) };
        };
        let args = [
            Arg::Ptr(y),
            Arg::Ptr(bias.ptr()),
            Arg::Ptr(zeros),
            Arg::I32(n as i32),
            Arg::F32(1.0),
        ];
        // SAFETY: as the caller promises: `y` holds `m` rows of `n`, every id is 0.
        unsafe {
            self.launch("embed", (m as u32, 1, 1), ROW_THREADS, &args)?;
            self.gemm_into(m, n, k, x, w, y, true)
        }
    }

    /// `y = x · wᵀ` for `m` rows (dense strides).
    ///
    /// # Safety
    /// As [`Runtime::gemm`].
    unsafe fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: DevicePtr,
        w: DevicePtr,
        y: DevicePtr,
    ) -> Result<(), GpuError> {
        // SAFETY: as the caller promises.
        unsafe { self.gemm_into(m, n, k, x, w, y, false) }
    }

    /// `y = x · wᵀ`, or `y += x · wᵀ` when `accumulate`, for `m` rows (dense strides).
    ///
    /// # Safety
    /// As [`Runtime::gemm`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_into(
        &self,
        m: usize,
        n: usize,
        k: usize,
        x: DevicePtr,
        w: DevicePtr,
        y: DevicePtr,
        accumulate: bool,
    ) -> Result<(), GpuError> {
        let g = Gemm {
            m,
            n,
            k,
            x,
            ldx: k,
            w,
            ldw: k,
            y,
            ldy: n,
            dtype: self.dtype,
            accumulate,
        };
        // SAFETY: as the caller promises.
        unsafe { self.rt.gemm(&g) }
    }

    /// Runs one step: every sequence's new tokens through the decoder (each position's K and
    /// V written into the pool through its block table), returning the logits of each
    /// sequence that needs them (its last token), `[rows, vocab]` row-major in f32. Nothing is
    /// written when the batch is refused (empty sequence, token outside the vocabulary, block
    /// table too short or outside the pool, an adapter not attached). Each sequence runs with
    /// its adapter (by name, [`attach_adapter`](Self::attach_adapter)) or the base model, all
    /// in one mixed batch: the SGMV kernels add every projection's LoRA into the fused
    /// outputs (segments of eight rows sharing an adapter; BGMV, one row per tile, for a
    /// batch of decodes).
    pub fn forward(
        &mut self,
        batch: &StepBatch,
        kv: &mut DeviceKvStorage,
    ) -> Result<Vec<f32>, GpuError> {
        let r = self.run(batch, kv)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; r * self.cfg.vocab_size * self.dtype.bytes()];
        self.scratch["logits"].read(0, &mut out)?;
        Ok(self.dtype.decode(&out))
    }

    /// Runs one step as [`forward`](Self::forward) does and samples each logits row on the
    /// device with `rows` (one per sequence that needs logits, in batch order), so only the
    /// token ids come back. A row whose parameters the kernel does not take (top-p without
    /// top-k, top-k above 256) is sampled on the host from its logits with the same draw.
    /// A NaN or +∞ logit, or a row with nothing to sample, is [`GpuError::Sample`] naming it.
    pub fn forward_sampled(
        &mut self,
        batch: &StepBatch,
        kv: &mut DeviceKvStorage,
        rows: &[RowSampling<'_>],
    ) -> Result<Vec<u32>, GpuError> {
        let want = batch.seqs.iter().filter(|s| s.needs_logits).count();
        if rows.len() != want {
            return Err(GpuError::InvalidArgument {
                name: "rows",
                reason: format!(
                    "{} sampling rows for {want} sequences that need logits",
                    rows.len()
                ),
            });
        }
        for (i, row) in rows.iter().enumerate() {
            Sampler::new(row.params).map_err(|e| GpuError::Sample {
                row: i,
                reason: e.to_string(),
            })?;
        }
        let r = self.run(batch, kv)?;
        if r == 0 {
            return Ok(Vec::new());
        }
        let v = self.cfg.vocab_size;
        let mut hist = Vec::new();
        let mut hist_off = vec![0i64];
        for row in rows {
            let mut seen = std::collections::HashSet::new();
            hist.extend(
                row.history
                    .iter()
                    .filter(|&&t| seen.insert(t))
                    .map(|&t| t as i32),
            );
            hist_off.push(hist.len() as i64);
        }
        let on_device = |p: &SamplingParams| p.top_k.is_none_or(|k| k <= SAMPLE_MAX_K);
        let temp: Vec<f32> = rows.iter().map(|x| x.params.temperature).collect();
        let top_k: Vec<i32> = rows
            .iter()
            .map(|x| x.params.top_k.map_or(0, |k| k.min(SAMPLE_MAX_K + 1) as i32))
            .collect();
        let top_p: Vec<f32> = rows.iter().map(|x| x.params.top_p.unwrap_or(1.0)).collect();
        let penalty: Vec<f32> = rows
            .iter()
            .map(|x| x.params.repetition_penalty.unwrap_or(1.0))
            .collect();
        let us: Vec<f32> = rows.iter().map(|x| x.u).collect();
        let f32s = |v: &[f32]| Dtype::F32.encode(v);
        let hist_p = self.staged("sample_hist", &i32_bytes(&hist))?;
        let off_p = self.staged("sample_hist_off", &i64_bytes(&hist_off))?;
        let temp_p = self.staged("sample_temp", &f32s(&temp))?;
        let k_p = self.staged("sample_top_k", &i32_bytes(&top_k))?;
        let p_p = self.staged("sample_top_p", &f32s(&top_p))?;
        let pen_p = self.staged("sample_penalty", &f32s(&penalty))?;
        let u_p = self.staged("sample_u", &f32s(&us))?;
        let scratch = self.scratch("sample_scratch", r * v * 4)?;
        let out = self.scratch("sample_out", r * 8)?;
        let logits = self.scratch["logits"].ptr();
        // SAFETY: `logits` holds `r` rows of the vocabulary (run), every per-row array `r`
        // entries, `hist_off` r + 1, the scratch r × vocab f32, `out` 2r ints.
        unsafe {
            self.launch(
                "sample",
                (r as u32, 1, 1),
                SAMPLE_THREADS,
                &[
                    Arg::Ptr(out),
                    Arg::Ptr(logits),
                    Arg::I32(v as i32),
                    Arg::Ptr(hist_p),
                    Arg::Ptr(off_p),
                    Arg::Ptr(temp_p),
                    Arg::Ptr(k_p),
                    Arg::Ptr(p_p),
                    Arg::Ptr(pen_p),
                    Arg::Ptr(u_p),
                    Arg::Ptr(scratch),
                ],
            )?;
        }
        let mut codes = vec![0u8; r * 8];
        self.scratch["sample_out"].read(0, &mut codes)?;
        let codes: Vec<i32> = codes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let mut tokens = Vec::with_capacity(r);
        for (i, row) in rows.iter().enumerate() {
            let (code, detail) = (codes[2 * i], codes[2 * i + 1]);
            let token = match code {
                t if t >= 0 && on_device(row.params) => t as u32,
                -1 => {
                    return Err(GpuError::Sample {
                        row: i,
                        reason: format!("logit {detail} is NaN or +inf"),
                    });
                }
                -2 => {
                    return Err(GpuError::Sample {
                        row: i,
                        reason: "every logit is -inf: nothing to sample".into(),
                    });
                }
                _ => self.sample_on_host(i, row)?,
            };
            tokens.push(token);
        }
        Ok(tokens)
    }

    /// Samples logits row `i` of the last step on the host with the CPU sampler's
    /// distribution and the row's draw.
    fn sample_on_host(&self, i: usize, row: &RowSampling<'_>) -> Result<u32, GpuError> {
        let v = self.cfg.vocab_size;
        let eb = self.dtype.bytes();
        let mut bytes = vec![0u8; v * eb];
        self.scratch["logits"].read(i * v * eb, &mut bytes)?;
        let logits = self.dtype.decode(&bytes);
        let sample_err = |e: openledger_lora::serve::SampleError| GpuError::Sample {
            row: i,
            reason: e.to_string(),
        };
        let sampler = Sampler::new(row.params).map_err(sample_err)?;
        let dist = sampler
            .distribution(&logits, row.history)
            .map_err(sample_err)?;
        Ok(Sampler::pick(&dist, row.u))
    }

    /// Runs the decoder over `batch` and leaves the logits of the rows that need them in the
    /// `logits` scratch buffer; returns how many rows. A decode step of up to
    /// [`GpuOptions::graph_max_batch`] sequences runs as the graph of its batch-size bucket
    /// (captured the first time it is needed), padded to that size.
    fn run(&mut self, batch: &StepBatch, kv: &DeviceKvStorage) -> Result<usize, GpuError> {
        let layout = kv.layout();
        if layout != self.kv_layout(layout.block_size) || kv.dtype() != self.dtype {
            return Err(GpuError::InvalidArgument {
                name: "kv",
                reason: format!(
                    "a pool of {layout:?} in {:?} does not fit the model ({:?} in {:?})",
                    kv.dtype(),
                    self.kv_layout(layout.block_size),
                    self.dtype
                ),
            });
        }
        let mut meta = StepMeta::pack(
            batch,
            self.cfg.vocab_size,
            layout.block_size,
            kv.num_blocks(),
            None,
        )?;
        // Adapters still being copied land before a kernel reads them.
        for s in &batch.seqs {
            if let Some(id) = &s.adapter {
                self.adapters.wait(id.as_str())?;
            }
        }
        let mut row_slots = Vec::with_capacity(meta.ids.len());
        let mut seq_slots = Vec::with_capacity(batch.seqs.len());
        for (n, s) in batch.seqs.iter().enumerate() {
            let slot = match &s.adapter {
                None => None,
                Some(id) => Some(self.adapters.slot(id.as_str()).ok_or_else(|| {
                    GpuError::InvalidArgument {
                        name: "batch",
                        reason: format!("sequence {n} ({:?}): adapter {id} is not attached", s.seq),
                    }
                })?),
            };
            row_slots.extend(std::iter::repeat_n(slot, s.tokens.len()));
            seq_slots.push(slot);
        }
        let saved = self.saved_plan(batch, &meta, &seq_slots);
        // A step swapping in saved parameters runs without a graph (their launches follow
        // the step's adapters).
        // So does one whose adapters' rank, rounded up to a power of two, is past what the
        // one-row kernels stage.
        let graph = if meta.is_decode() && saved.is_empty() {
            graph_bucket(meta.ids.len(), self.graph_max_batch)
                .map(|bucket| (bucket, self.graph_modules(&row_slots)))
                .filter(|(_, modules)| modules.rank * 4 <= SHARED_BYTES)
        } else {
            None
        };
        let Some((bucket, modules)) = graph else {
            let (lora, v_len) = self.plan_lora(&row_slots)?;
            let plan = meta.attention_plan(PREFILL_ROWS, self.prefill_min_rows);
            // The row kernel's rows see at most `rows_span` keys (the step's longest without
            // tiles).
            let parts = plan.rows_span.div_ceil(self.part_len).max(1);
            let step = self.prepare(&meta, &plan, parts, (lora, v_len), saved)?;
            // SAFETY: `prepare` sized every buffer for this step and staged its metadata,
            // checked by `StepMeta::pack`.
            unsafe { self.issue(&step, kv)? };
            if step.r == 0 {
                self.rt.synchronize()?;
            }
            return Ok(step.r);
        };
        let real = meta.logit_rows.len();
        meta.pad_decode(bucket);
        row_slots.resize(bucket, None);
        let (lora, v_len) = self.plan_lora_graph(&row_slots, &modules)?;
        // Every row on the row kernel, split over the context in a power of two of parts.
        let plan = meta.attention_plan(PREFILL_ROWS, 0);
        let parts = graph_parts(meta.max_span, self.part_len);
        let step = self.prepare(&meta, &plan, parts, (lora, v_len), SavedPlan::default())?;
        let key = GraphKey {
            rows: bucket,
            parts,
            modules,
            block_size: layout.block_size,
            kv: (0..self.cfg.num_layers)
                .flat_map(|l| [kv.layer(l).0.ptr(), kv.layer(l).1.ptr()])
                .collect(),
        };
        if !self.graphs.contains_key(&key) {
            // SAFETY: as for `issue` above; the capture only records.
            let captured = Graph::capture(&self.rt, || unsafe { self.issue(&step, kv) });
            match captured {
                Ok(g) => {
                    self.hold_graph(key.clone(), g);
                    self.graph_stats.captures += 1;
                }
                // A lost device is no reason to try without graphs.
                Err(e @ GpuError::ContextLost { .. }) => return Err(e),
                Err(e) => {
                    // A runtime without graphs, or a capture the device turned down (an
                    // operation it cannot record, no memory to instantiate): from here on
                    // every step runs as it comes, this one first.
                    self.graph_max_batch = 0;
                    self.graphs.clear();
                    self.graph_stats.failed_capture = Some(e.to_string());
                    // SAFETY: as above; the padded step is a step like any other.
                    unsafe { self.issue(&step, kv)? };
                    return Ok(real);
                }
            }
        }
        // SAFETY: the graph was captured with this step's addresses: the key holds the pool's
        // and the step's shape, and every scratch buffer it uses is still the one it was
        // captured with (growing one drops the graphs); the metadata in them is this step's.
        let stamp = self.graph_stats.replays as u64;
        if let Some((g, used)) = self.graphs.get_mut(&key) {
            *used = stamp;
            // SAFETY: as said above.
            unsafe { g.replay()? };
        }
        self.graph_stats.replays += 1;
        Ok(real)
    }

    /// Keeps graph `g` for `key`, freeing the one used least recently when
    /// [`GpuOptions::max_graphs`] are held.
    fn hold_graph(&mut self, key: GraphKey, g: Graph) {
        self.evict_graphs(self.max_graphs - 1);
        let stamp = self.graph_stats.replays as u64;
        self.graphs.insert(key, (g, stamp));
    }

    /// Frees the graphs used least recently until `keep` are held.
    fn evict_graphs(&mut self, keep: usize) {
        while self.graphs.len() > keep {
            let oldest = self
                .graphs
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.graphs.remove(&k);
            }
        }
    }

    /// Where `batch`'s sequences swap in their adapters' `modules_to_save` parameters.
    fn saved_plan(
        &self,
        batch: &StepBatch,
        meta: &StepMeta,
        seq_slots: &[Option<usize>],
    ) -> SavedPlan {
        let mut plan = SavedPlan::default();
        let mut logit_row = 0;
        for ((s, &(first, n)), slot) in batch.seqs.iter().zip(&meta.seqs).zip(seq_slots) {
            if let Some(slot) = slot.filter(|&k| self.adapters.has_saved(k)) {
                let at = |p| self.adapters.saved(slot, p);
                if let Some(p) = at(SavedAt::Embed) {
                    push_run(&mut plan.embed, first, n, p);
                }
                let norms = (0..self.cfg.num_layers)
                    .flat_map(|l| [SavedAt::InputNorm(l), SavedAt::PostNorm(l)])
                    .chain([SavedAt::FinalNorm]);
                for which in norms {
                    if let Some(p) = at(which) {
                        push_run(plan.norms.entry(which).or_default(), first, n, p);
                    }
                }
                if let Some(p) = at(SavedAt::Head).filter(|_| s.needs_logits) {
                    push_run(&mut plan.head, logit_row, 1, p);
                }
                let mut tile = None;
                for lp in 0..self.cfg.num_layers * NPROJ {
                    let (l, p) = (lp / NPROJ, lp % NPROJ);
                    if let Some(w) = at(SavedAt::Weight(l, p)) {
                        let runs = plan.projections.entry((l, p)).or_default();
                        push_run(&mut runs.weights, first, n, w);
                    }
                    if at(SavedAt::BiasAdd(l, p)).is_some()
                        && let Some(table) = self.adapters.add_table(slot, l, p)
                    {
                        // One tile (the sequence's rows, slot 0 of the adapter's table).
                        let t = *tile.get_or_insert_with(|| {
                            plan.tiles.extend([first as i64, n as i64, 0, 0]);
                            plan.tiles.len() / 4 - 1
                        });
                        let runs = plan.projections.entry((l, p)).or_default();
                        runs.adds.push((t, table));
                    }
                }
            }
            if s.needs_logits {
                logit_row += 1;
            }
        }
        plan
    }

    /// What adapters do to projection `p` of layer `l` after the base's GEMM, for the step's
    /// rows: saved weights project again, then the LoRA adds on (with its epilogue), then
    /// saved bias additions.
    ///
    /// # Safety
    /// As [`lora`](Self::lora) and [`saved_projection`](Self::saved_projection).
    unsafe fn adapt(
        &self,
        step: &StepPtrs,
        launch: Option<LoraLaunch>,
        (l, p): (usize, usize),
        io: ProjIo,
        v: DevicePtr,
    ) -> Result<(), GpuError> {
        // SAFETY: as the caller promises.
        unsafe {
            self.saved_projection(step, l, p, io, true)?;
            self.lora(launch, l, p, io, v)?;
            self.saved_projection(step, l, p, io, false)
        }
    }

    /// With `weights`, projects again, through their adapters' saved weight, the rows of `step`
    /// that have one for projection `p` of layer `l` (overwriting the base's outputs, before
    /// the LoRA adds onto them); else adds their adapters' bias additions (the epilogue kernel
    /// with no factor, after the LoRA's own epilogue).
    ///
    /// # Safety
    /// As [`lora`](Self::lora): `x` holds the step's rows of the projection's inputs (stride
    /// its input size), `y` rows of `ldy` with its outputs from `col`.
    unsafe fn saved_projection(
        &self,
        step: &StepPtrs,
        l: usize,
        p: usize,
        io: ProjIo,
        weights: bool,
    ) -> Result<(), GpuError> {
        let Some(runs) = step.saved.projections.get(&(l, p)) else {
            return Ok(());
        };
        let ProjIo { x, y, ldy, col } = io;
        let (din, dout) = proj_dims(&self.cfg, p);
        let eb = self.dtype.bytes() as u64;
        // SAFETY: the rows lie in the step's; each weight is `[dout, din]` of the model's type,
        // each table two words of an f32 addition of `dout` values, each tile one of
        // `step.saved.tiles`.
        unsafe {
            for &(first, n, w) in runs.weights.iter().filter(|_| weights) {
                self.rt.gemm(&Gemm {
                    m: n,
                    n: dout,
                    k: din,
                    x: x + (first * din) as u64 * eb,
                    ldx: din,
                    w,
                    ldw: din,
                    y: y + (first * ldy + col) as u64 * eb,
                    ldy,
                    dtype: self.dtype,
                    accumulate: false,
                })?;
            }
            for &(tile, table) in runs.adds.iter().filter(|_| !weights) {
                self.rt.launch(
                    &format!("lora_epilogue_{}", self.dtype.suffix()),
                    LaunchDims::new(
                        (1, dout.div_ceil(ROW_THREADS as usize) as u32, 1),
                        ROW_THREADS,
                    ),
                    &[
                        Arg::Ptr(y),
                        Arg::I64(ldy as i64),
                        Arg::I64(col as i64),
                        Arg::I32(dout as i32),
                        Arg::Ptr(0),
                        Arg::Ptr(step.saved.tiles_at + tile as u64 * 32),
                        Arg::Ptr(table),
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Normalises again, with their adapters' saved weight `which`, the rows of `step` that
    /// have one: `hidden = norm(residual) · w` (the residual already holds the sum).
    ///
    /// # Safety
    /// As [`issue`](Self::issue).
    unsafe fn saved_norms(
        &self,
        step: &StepPtrs,
        which: SavedAt,
        hid: DevicePtr,
        res: DevicePtr,
    ) -> Result<(), GpuError> {
        let row = (self.cfg.hidden_size * self.dtype.bytes()) as u64;
        for &(first, n, w) in step.saved.norms.get(&which).into_iter().flatten() {
            let off = first as u64 * row;
            // SAFETY: the rows lie in the step's; `w` holds the hidden size's values.
            unsafe { self.rms_norm(n as u32, hid + off, res + off, 0, w)? };
        }
        Ok(())
    }

    /// Stages a step's metadata (its LoRA tiles were staged by the planner that made `lora`;
    /// the tiles of `saved`'s bias additions are staged here) and sizes the scratch buffers for
    /// it (growing one drops the graphs captured with the old one).
    fn prepare(
        &mut self,
        meta: &StepMeta,
        plan: &AttentionPlan,
        parts: usize,
        (lora, v_len): (Vec<Option<LoraLaunch>>, usize),
        mut saved: SavedPlan,
    ) -> Result<StepPtrs, GpuError> {
        if !saved.tiles.is_empty() {
            saved.tiles_at = self.staged("saved_tiles", &i64_bytes(&saved.tiles))?;
        }
        let cfg = &self.cfg;
        let eb = self.dtype.bytes();
        let t = meta.ids.len();
        let (h, inter, hd, nh) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.head_dim,
            cfg.num_heads,
        );
        let (q_out, kv_out) = (nh * hd, cfg.num_kv_heads * hd);
        let width = q_out + 2 * kv_out;
        let (v, has_bias) = (cfg.vocab_size, self.has_bias);
        // The row kernel's rows (all, or a map of those the tiles leave).
        let (row_grid, row_map) = if plan.tiles.is_empty() {
            (t, 0)
        } else if plan.rows.is_empty() {
            (0, 0)
        } else {
            (
                plan.rows.len(),
                self.staged("attention_rows", &i32_bytes(&plan.rows))?,
            )
        };
        let tiles = if plan.tiles.is_empty() {
            0
        } else {
            self.staged("prefill_tiles", &i32_bytes(&plan.tiles))?
        };
        let r = meta.logit_rows.len();
        let part_stats = t * nh * parts * 4;
        Ok(StepPtrs {
            t,
            ids: self.staged("ids", &i32_bytes(&meta.ids))?,
            pos: self.staged("positions", &i32_bytes(&meta.positions))?,
            slots: self.staged("slots", &i64_bytes(&meta.slots))?,
            tables: self.staged("tables", &i32_bytes(&meta.tables))?,
            toff: self.staged("table_off", &i64_bytes(&meta.table_off))?,
            res: self.scratch("residual", t * h * eb)?,
            hid: self.scratch("hidden", t * h * eb)?,
            tmp: self.scratch("projected", t * h * eb)?,
            qkv: self.scratch("qkv", t * width * eb)?,
            attn: self.scratch("attention", t * q_out * eb)?,
            gu: self.scratch("gate_up", t * 2 * inter * eb)?,
            act: self.scratch("activation", t * inter * eb)?,
            pm: self.scratch("part_max", part_stats)?,
            pl: self.scratch("part_sum", part_stats)?,
            pacc: self.scratch("part_acc", part_stats * hd)?,
            lv: self.scratch("lora_v", v_len.max(1) * 4)?,
            zeros: if has_bias { self.zero_ids(t)? } else { 0 },
            row_grid,
            row_map,
            parts,
            tiles,
            num_tiles: plan.num_tiles(),
            r,
            picked: if r == 0 {
                0
            } else {
                self.staged("logit_rows", &i32_bytes(&meta.logit_rows))?
            },
            gathered: self.scratch("gathered", r.max(1) * h * eb)?,
            logits: self.scratch("logits", r.max(1) * v * eb)?,
            lora,
            saved,
        })
    }

    /// Issues a step's launches and GEMMs (nothing else: no copy, allocation or wait, so the
    /// same call is captured as a graph).
    ///
    /// # Safety
    /// `step` came from [`prepare`](Self::prepare) for a step over `kv`, and no scratch buffer
    /// was grown since.
    unsafe fn issue(&self, step: &StepPtrs, kv: &DeviceKvStorage) -> Result<(), GpuError> {
        let cfg = &self.cfg;
        let block_size = kv.layout().block_size;
        let t = step.t;
        let (h, inter, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);
        let (q_out, kv_out) = (nh * hd, nkv * hd);
        let width = q_out + 2 * kv_out;
        let rows = t as u32;
        let act_code = match cfg.activation {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
            Activation::Gelu => 2,
        };
        let scale = 1.0 / (hd as f32).sqrt();
        // Gemma scales its embeddings by √hidden, the factor rounded to the model's type first
        // (transformers multiplies by a tensor of the hidden states' dtype).
        let embed_scale = if cfg.arch == Architecture::Gemma {
            self.dtype.decode(&self.dtype.encode(&[(h as f32).sqrt()]))[0]
        } else {
            1.0
        };
        let StepPtrs {
            ids,
            pos,
            slots,
            tables,
            toff,
            res,
            hid,
            tmp,
            qkv,
            attn,
            gu,
            act,
            pm,
            pl,
            pacc,
            lv,
            zeros,
            row_grid,
            row_map,
            parts,
            tiles,
            ..
        } = *step;
        let lora = &step.lora;
        // SAFETY: every buffer was sized by `prepare` for `t` rows of this model; the metadata
        // was checked by `StepMeta::pack` (ids in the vocabulary, blocks in the pool, tables
        // covering every position); `zeros` holds `t` zero ids where a bias is added.
        unsafe {
            self.launch(
                "embed",
                (rows, 1, 1),
                ROW_THREADS,
                &[
                    Arg::Ptr(res),
                    Arg::Ptr(self.embed.ptr()),
                    Arg::Ptr(ids),
                    Arg::I32(h as i32),
                    Arg::F32(embed_scale),
                ],
            )?;
            let eb = self.dtype.bytes() as u64;
            // Rows of adapters with saved embeddings gather from their adapter's table.
            for &(first, n, table) in &step.saved.embed {
                self.launch(
                    "embed",
                    (n as u32, 1, 1),
                    ROW_THREADS,
                    &[
                        Arg::Ptr(res + first as u64 * h as u64 * eb),
                        Arg::Ptr(table),
                        Arg::Ptr(ids + first as u64 * 4),
                        Arg::I32(h as i32),
                        Arg::F32(embed_scale),
                    ],
                )?;
            }
            for (l, layer) in self.layers.iter().enumerate() {
                // Layer 0 normalises the embeddings; later layers add the MLP's output first.
                let (x, residual) = if l == 0 { (res, 0) } else { (tmp, res) };
                self.rms_norm(rows, hid, x, residual, layer.input_norm.ptr())?;
                self.saved_norms(step, SavedAt::InputNorm(l), hid, res)?;
                let qb = layer.qkv_bias.as_ref();
                self.gemm_bias(t, width, h, hid, layer.qkv.ptr(), qkv, qb, zeros)?;
                let at = |p: usize| lora[l * NPROJ + p];
                self.adapt(step, at(0), (l, 0), ProjIo::new(hid, qkv, width, 0), lv)?;
                self.adapt(step, at(1), (l, 1), ProjIo::new(hid, qkv, width, q_out), lv)?;
                self.adapt(
                    step,
                    at(2),
                    (l, 2),
                    ProjIo::new(hid, qkv, width, q_out + kv_out),
                    lv,
                )?;
                self.launch(
                    "rope_kv",
                    (rows, 1, 1),
                    ROPE_THREADS,
                    &[
                        Arg::Ptr(qkv),
                        Arg::I64(width as i64),
                        Arg::Ptr(kv.layer(l).0.ptr()),
                        Arg::Ptr(kv.layer(l).1.ptr()),
                        Arg::Ptr(self.inv_freq.ptr()),
                        Arg::Ptr(pos),
                        Arg::Ptr(slots),
                        Arg::I32(nh as i32),
                        Arg::I32(nkv as i32),
                        Arg::I32(hd as i32),
                        Arg::I32(block_size as i32),
                    ],
                )?;
                let window = cfg.layer_window(l).map_or(0, |w| w.min(i32::MAX as usize));
                let (k_cache, v_cache) = (kv.layer(l).0.ptr(), kv.layer(l).1.ptr());
                // The arguments both attention kernels begin with.
                let head = [
                    Arg::Ptr(attn),
                    Arg::I64(q_out as i64),
                    Arg::Ptr(qkv),
                    Arg::I64(width as i64),
                    Arg::Ptr(k_cache),
                    Arg::Ptr(v_cache),
                    Arg::Ptr(tables),
                    Arg::Ptr(toff),
                    Arg::Ptr(pos),
                ];
                let shape = [
                    Arg::I32(nkv as i32),
                    Arg::I32((nh / nkv) as i32),
                    Arg::I32(hd as i32),
                    Arg::I32(block_size as i32),
                    Arg::F32(scale),
                    Arg::I32(window as i32),
                ];
                if row_grid > 0 {
                    let tail = [
                        Arg::I32(self.part_len as i32),
                        Arg::Ptr(pm),
                        Arg::Ptr(pl),
                        Arg::Ptr(pacc),
                        Arg::Ptr(row_map),
                    ];
                    self.launch(
                        "attention",
                        (row_grid as u32, nh as u32, parts as u32),
                        ATTN_THREADS,
                        &[&head[..], &shape, &tail].concat(),
                    )?;
                    if parts > 1 {
                        self.launch(
                            "attention_reduce",
                            (row_grid as u32, nh as u32, 1),
                            ATTN_THREADS,
                            &[
                                Arg::Ptr(attn),
                                Arg::I64(q_out as i64),
                                Arg::Ptr(pm),
                                Arg::Ptr(pl),
                                Arg::Ptr(pacc),
                                Arg::I32(parts as i32),
                                Arg::I32(hd as i32),
                                Arg::Ptr(row_map),
                            ],
                        )?;
                    }
                }
                if tiles != 0 {
                    self.launch(
                        "prefill_attention",
                        (step.num_tiles as u32, nh as u32, 1),
                        PREFILL_THREADS,
                        &[&head[..], &[Arg::Ptr(tiles)], &shape].concat(),
                    )?;
                }
                let ob = layer.o_bias.as_ref();
                self.gemm_bias(t, h, q_out, attn, layer.o.ptr(), tmp, ob, zeros)?;
                self.adapt(step, at(3), (l, 3), ProjIo::new(attn, tmp, h, 0), lv)?;
                self.rms_norm(rows, hid, tmp, res, layer.post_norm.ptr())?;
                self.saved_norms(step, SavedAt::PostNorm(l), hid, res)?;
                let gb = layer.gate_up_bias.as_ref();
                self.gemm_bias(t, 2 * inter, h, hid, layer.gate_up.ptr(), gu, gb, zeros)?;
                self.adapt(step, at(4), (l, 4), ProjIo::new(hid, gu, 2 * inter, 0), lv)?;
                self.adapt(
                    step,
                    at(5),
                    (l, 5),
                    ProjIo::new(hid, gu, 2 * inter, inter),
                    lv,
                )?;
                self.launch(
                    "gated",
                    (rows, inter.div_ceil(ROW_THREADS as usize) as u32, 1),
                    ROW_THREADS,
                    &[
                        Arg::Ptr(act),
                        Arg::Ptr(gu),
                        Arg::I32(inter as i32),
                        Arg::I32(act_code),
                    ],
                )?;
                let db = layer.down_bias.as_ref();
                self.gemm_bias(t, h, inter, act, layer.down.ptr(), tmp, db, zeros)?;
                self.adapt(step, at(6), (l, 6), ProjIo::new(act, tmp, h, 0), lv)?;
            }
            self.rms_norm(rows, hid, tmp, res, self.norm.ptr())?;
            self.saved_norms(step, SavedAt::FinalNorm, hid, res)?;
            if step.r == 0 {
                return Ok(());
            }
            let head = self.lm_head.as_ref().unwrap_or(&self.embed).ptr();
            // The embedding gather doubles as a row gather of the final hidden states
            // (`picked` holds rows below `t`).
            self.launch(
                "embed",
                (step.r as u32, 1, 1),
                ROW_THREADS,
                &[
                    Arg::Ptr(step.gathered),
                    Arg::Ptr(hid),
                    Arg::Ptr(step.picked),
                    Arg::I32(h as i32),
                    Arg::F32(1.0),
                ],
            )?;
            let v = cfg.vocab_size;
            self.gemm(step.r, v, h, step.gathered, head, step.logits)?;
            // Logit rows of adapters with a saved head, again through theirs.
            for &(row0, n, head) in &step.saved.head {
                let x = step.gathered + (row0 * h) as u64 * eb;
                self.gemm(n, v, h, x, head, step.logits + (row0 * v) as u64 * eb)?;
            }
            Ok(())
        }
    }
}

/// Projection `p` of `layer`: its fused matrix, its first row there (its first column in the
/// fused output), and the fused bias.
fn projection_of<'a>(
    cfg: &ModelConfig,
    layer: &'a Layer,
    p: usize,
) -> (&'a Buffer, usize, Option<&'a Buffer>) {
    let (q_out, kv_out) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    let inter = cfg.intermediate_size;
    let (w, row, bias) = match p {
        0 => (&layer.qkv, 0, &layer.qkv_bias),
        1 => (&layer.qkv, q_out, &layer.qkv_bias),
        2 => (&layer.qkv, q_out + kv_out, &layer.qkv_bias),
        3 => (&layer.o, 0, &layer.o_bias),
        4 => (&layer.gate_up, 0, &layer.gate_up_bias),
        5 => (&layer.gate_up, inter, &layer.gate_up_bias),
        _ => (&layer.down, 0, &layer.down_bias),
    };
    (w, row, bias.as_ref())
}

/// Appends rows `first..first + n` with parameter `p` to `runs`, joining the last run where it
/// ends at `first` with the same parameter.
fn push_run(runs: &mut Vec<(usize, usize, DevicePtr)>, first: usize, n: usize, p: DevicePtr) {
    match runs.last_mut() {
        Some(last) if last.2 == p && last.0 + last.1 == first => last.1 += n,
        _ => runs.push((first, n, p)),
    }
}

/// Where a step swaps in its adapters' `modules_to_save` parameters: runs of consecutive rows
/// `(first row, rows, the parameter's address)`.
#[derive(Debug, Clone, Default)]
struct SavedPlan {
    /// Rows whose embeddings come from their adapter's table.
    embed: Vec<(usize, usize, DevicePtr)>,
    /// Rows normalised again with their adapter's weight, by norm.
    norms: HashMap<SavedAt, Vec<(usize, usize, DevicePtr)>>,
    /// Logit rows (indices among the step's) computed again through their adapter's head.
    head: Vec<(usize, usize, DevicePtr)>,
    /// Projections swapped or biased for some rows, by (layer, projection).
    projections: HashMap<(usize, usize), SavedRuns>,
    /// The epilogue tiles of the bias additions (`row0, rows, 0, 0` each), staged at
    /// `tiles_at`.
    tiles: Vec<i64>,
    tiles_at: DevicePtr,
}

/// A projection's saved weights and bias additions in a step.
#[derive(Debug, Clone, Default)]
struct SavedRuns {
    /// Rows projected through an adapter's weight instead: `(first row, rows, weight)`.
    weights: Vec<(usize, usize, DevicePtr)>,
    /// Bias additions: the tile of the rows, and the adapter's epilogue table.
    adds: Vec<(usize, DevicePtr)>,
}

impl SavedPlan {
    fn is_empty(&self) -> bool {
        self.embed.is_empty()
            && self.norms.is_empty()
            && self.head.is_empty()
            && self.projections.is_empty()
    }
}

/// Where a projection reads and writes for a step: its inputs `x` (the step's rows, stride
/// its input size) and outputs `y` (rows of `ldy`, the projection's from column `col`).
#[derive(Clone, Copy)]
struct ProjIo {
    x: DevicePtr,
    y: DevicePtr,
    ldy: usize,
    col: usize,
}

impl ProjIo {
    fn new(x: DevicePtr, y: DevicePtr, ldy: usize, col: usize) -> Self {
        Self { x, y, ldy, col }
    }
}

/// Device addresses and sizes of one step: what [`GpuModel::prepare`] staged and sized, and
/// what [`GpuModel::issue`] launches with.
#[derive(Debug, Clone)]
struct StepPtrs {
    t: usize,
    ids: DevicePtr,
    pos: DevicePtr,
    slots: DevicePtr,
    tables: DevicePtr,
    toff: DevicePtr,
    res: DevicePtr,
    hid: DevicePtr,
    tmp: DevicePtr,
    qkv: DevicePtr,
    attn: DevicePtr,
    gu: DevicePtr,
    act: DevicePtr,
    pm: DevicePtr,
    pl: DevicePtr,
    pacc: DevicePtr,
    lv: DevicePtr,
    zeros: DevicePtr,
    /// Rows of the row attention kernel, and its row map (0: rows 0..t).
    row_grid: usize,
    row_map: DevicePtr,
    /// Parts of the split over the context.
    parts: usize,
    /// The prefill kernel's tiles (0: none), and how many.
    tiles: DevicePtr,
    num_tiles: usize,
    /// Rows that need logits, which rows, the gathered hidden states and the logits.
    r: usize,
    picked: DevicePtr,
    gathered: DevicePtr,
    logits: DevicePtr,
    lora: Vec<Option<LoraLaunch>>,
    saved: SavedPlan,
}

/// What a decode graph was captured for: its batch size, split over the context, the LoRA
/// launches' shape (which (layer, projection)s, the rank they are sized for, where the
/// epilogue runs) and the KV pool's addresses and block size. Every other address it holds
/// is a weight (fixed for the model's life) or a scratch buffer (growing one drops the graphs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GraphKey {
    rows: usize,
    parts: usize,
    modules: GraphModules,
    block_size: usize,
    kv: Vec<DevicePtr>,
}

/// The LoRA launches of a decode graph: the rank their grids are sized for (0: none) and, per
/// (layer, projection), whether it has a launch and whether it has an epilogue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct GraphModules {
    rank: usize,
    launched: Vec<bool>,
    epilogue: Vec<bool>,
}

/// Decode graphs captured and replayed by a [`GpuModel`] (see
/// [`GpuOptions::graph_max_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphStats {
    /// Graphs held now.
    pub held: usize,
    /// Graphs captured so far (a capture again after a scratch buffer grew counts anew).
    pub captures: usize,
    /// Steps run by replaying a graph.
    pub replays: usize,
    /// Why a capture failed, which turned graphs off (every step since ran launch by launch;
    /// a runtime without graphs says so here too).
    pub failed_capture: Option<String>,
}
