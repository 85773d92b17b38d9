//! JavaScript face of `openledger_lora::serve` driving `openledger_lora::model::PagedModel`: a
//! model folder served by the continuous-batching engine on a thread of its own, adapters
//! attached from folders or taken from an `AdapterPool` on first use, and `generate` returning a
//! `TokenStream`, an async iterator of token ids, with cancellation and per-request statistics.
//! With the folder's `tokenizer.json` the engine also takes text prompts, stops on stop strings
//! and gives each stream's text.
//!
//! `openledger_lora::model::ServedModel` runs the Rust `Engine` on its thread and takes
//! commands between steps; requests are submitted without waiting, and each request's events
//! are pushed into a channel its stream awaits on napi's runtime, so the event loop never waits
//! for a step.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use napi::Either;
use napi::bindgen_prelude::Either3;
use napi::bindgen_prelude::{
    AsyncGenerator, AsyncTask, Env, Object, ToNapiValue, Uint32Array, Unknown, sys,
};
use napi_derive::napi;
use openledger::gpu::Device;
use openledger_lora::adapter::{LoadOptions, LoraAdapter as RustAdapter};
use openledger_lora::model::{
    FaultWatch, MetricKind, ModelError, PendingCancel, ServeOptions, ServedModel, ServedStats,
    TOKENIZER_FILE, Tokenizer, WeightFormat,
};
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{
    Event, Request, RequestStats as RustStats, SamplingParams, StreamEnd, StreamLog,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::adapters::LoraAdapter;
use crate::error::{self, Error, ErrorCode, JsResult, Result, ToJs, invalid_arg};
use crate::pool::{AdapterPool, id as adapter_id};
use crate::progress::{Progress, ProgressFn};
use crate::task::{VoidTask, count, task};

/// The adapter a request names: an id, or an ensemble's spelling.
fn request_adapter(s: &str) -> Result<AdapterId> {
    AdapterId::parse(s)
        .map_err(openledger_lora::pool::PoolError::from)
        .js()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Limits of an engine; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct EngineOptions {
    /// Sequences running at once (default 8).
    pub max_running: Option<f64>,
    /// Tokens one step may run, decode tokens plus prefill chunks (default 256).
    pub max_tokens_per_step: Option<f64>,
    /// Longest sequence, prompt and output (default 512).
    pub max_context: Option<f64>,
    /// Positions per KV cache block (default 16).
    pub block_size: Option<f64>,
    /// Blocks in the KV pool (default: enough for `maxRunning` sequences of `maxContext`).
    pub num_blocks: Option<f64>,
    /// How the base weights are held: `"f32"` (widened, the default), `"stored"` (bf16 / f16
    /// kept), `"int8"` (quantised per output channel), `"int8-g64"` / `"int8-g128"`.
    pub weights: Option<String>,
    /// Where the model runs: `"cpu"` (the default), `"cuda"` or `"cuda:N"` (weights `"stored"`
    /// or `"f32"`; needs a build with the `cuda` feature, the NVIDIA driver and a GPU, else an
    /// `Unsupported` error naming what is missing).
    pub device: Option<String>,
    /// On a GPU, device memory for the adapters it holds at once, in MiB (default 1024).
    pub device_adapter_mib: Option<f64>,
    /// On a GPU, adapters the device holds at once (default 128).
    pub device_adapter_slots: Option<f64>,
    /// On a GPU, the largest decode step (in sequences) run as a captured CUDA graph (default
    /// 512; 0: every step launched kernel by kernel).
    pub device_graph_max_batch: Option<f64>,
}

/// The `weights` option (`"f32"` when absent).
pub(crate) fn weight_format(v: Option<&str>) -> Result<WeightFormat> {
    v.unwrap_or("f32")
        .parse()
        .map_err(|e: String| invalid_arg("weights", e))
}

fn opt_count(name: &str, v: Option<f64>, default: usize) -> Result<usize> {
    v.map_or(Ok(default), |v| count(name, v))
}

task!(
    /// Resolves to an `Engine`.
    EngineTask => Engine
);
task!(
    /// Resolves to a list of strings.
    StringListTask => Vec<String>
);
task!(
    /// Resolves to an `EngineStats`.
    EngineStatsTask => EngineStats
);

/// One figure the model reports about itself (on a GPU: device memory by component, the
/// adapter tier, decode graphs), named as the server's Prometheus metrics name it.
#[napi(object, object_from_js = false)]
pub struct ModelMetric {
    /// The metric's name.
    pub name: String,
    /// What it measures.
    pub help: String,
    /// `"gauge"` (goes up and down) or `"counter"` (only grows).
    pub kind: String,
    /// Label names and values (e.g. `component: "weights"`).
    pub labels: std::collections::HashMap<String, String>,
    /// The value.
    pub value: f64,
}

/// The engine's load now, its counters since it started, and the model's own figures.
#[napi(object, object_from_js = false)]
pub struct EngineStats {
    /// Requests waiting to be admitted.
    pub waiting: f64,
    /// Requests running.
    pub running: f64,
    /// Requests preempted by swapping, their KV blocks on the host.
    pub swapped: f64,
    /// Blocks in the KV pool.
    pub kv_blocks: f64,
    /// Blocks of the KV pool free now.
    pub kv_blocks_free: f64,
    /// The share of the KV pool's blocks in use (0 to 1).
    pub kv_usage: f64,
    /// Bytes the KV pool holds.
    pub kv_bytes: f64,
    /// Steps that ran the model on a batch.
    pub steps: f64,
    /// Sequences preempted (by recompute or swap).
    pub preemptions: f64,
    /// Prompt tokens and recomputed output run.
    pub prefill_tokens: f64,
    /// Output tokens run one at a time.
    pub decode_tokens: f64,
    /// The model's own figures (none for a model on the CPU).
    pub metrics: Vec<ModelMetric>,
}

impl From<ServedStats> for EngineStats {
    fn from(s: ServedStats) -> Self {
        let e = s.engine;
        let metrics = s
            .model
            .into_iter()
            .map(|m| ModelMetric {
                name: m.name.into(),
                help: m.help.into(),
                kind: match m.kind {
                    MetricKind::Gauge => "gauge",
                    MetricKind::Counter => "counter",
                }
                .into(),
                labels: m.labels.into_iter().map(|(k, v)| (k.into(), v)).collect(),
                value: m.value,
            })
            .collect();
        Self {
            waiting: e.waiting as f64,
            running: e.running as f64,
            swapped: e.swapped as f64,
            kv_blocks: e.kv_blocks as f64,
            kv_blocks_free: e.kv_blocks_free as f64,
            kv_usage: e.kv_usage(),
            kv_bytes: e.kv_bytes as f64,
            steps: e.steps as f64,
            preemptions: e.preemptions as f64,
            prefill_tokens: e.prefill_tokens as f64,
            decode_tokens: e.decode_tokens as f64,
            metrics,
        }
    }
}

/// A base model served by the continuous-batching engine on a thread of its own. Requests for
/// different adapters are batched into the same forward passes.
#[napi]
pub struct Engine {
    inner: Arc<ServedModel>,
    model_dir: String,
    device: Device,
}

/// `what` needs a tokenizer the model folder `dir` lacks: a `Model` error saying so.
fn no_tokenizer(dir: &str, what: &str) -> Error {
    ModelError::Tokenizer {
        what: TOKENIZER_FILE.into(),
        reason: format!("the model folder {dir} has none: {what}"),
    }
    .to_js()
}

impl Engine {
    fn tokenizer(&self, what: &str) -> Result<&Arc<Tokenizer>> {
        self.inner.require_tokenizer(what).map_err(|e| e.to_js())
    }
}

/// How one request samples its tokens and when it stops; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct GenerateOptions {
    /// The adapter id to run with (default: the base model), or an ensemble of adapters spelled
    /// `a+b` or `a*0.7+b*0.3` (each weight multiplies its adapter's LoRA scale; served from the
    /// members in the same batch, with no merged copy).
    pub adapter: Option<String>,
    /// At most this many new tokens (default 16).
    pub max_new_tokens: Option<f64>,
    /// Softmax temperature; 0 (the default) is greedy.
    pub temperature: Option<f64>,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<f64>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`, in (0, 1].
    pub top_p: Option<f64>,
    /// Divide positive (multiply negative) logits of tokens already in the sequence by this.
    pub repetition_penalty: Option<f64>,
    /// Seeds the request's generator (default 0).
    pub seed: Option<f64>,
    /// Generating one of these ends the request (the stop token is not part of the output).
    pub stop_tokens: Option<Vec<u32>>,
    /// The request ends once its text contains one of these (needs the model's tokenizer).
    pub stop_strings: Option<Vec<String>>,
}

/// `ids` as token ids; anything else is an `InvalidArg` error naming `name`.
pub(crate) fn token_ids(name: &str, ids: Either<Uint32Array, Vec<f64>>) -> Result<Vec<u32>> {
    match ids {
        Either::A(a) => Ok(a.to_vec()),
        Either::B(v) => v
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t.is_finite() && t >= 0.0 && t.fract() == 0.0 && t <= f64::from(u32::MAX) {
                    Ok(t as u32)
                } else {
                    Err(invalid_arg(
                        name,
                        format!("item {i} is not a token id (an integer in 0 ..= 2**32 - 1): {t}"),
                    ))
                }
            })
            .collect(),
    }
}

/// The prompt as token ids: a string is encoded with `tokenizer` (special tokens such as BOS
/// added, as a model's own pipeline does).
fn prompt_ids(
    prompt: Either3<String, Uint32Array, Vec<f64>>,
    tokenizer: Option<&Arc<Tokenizer>>,
) -> Result<Vec<u32>> {
    match prompt {
        Either3::A(text) => match tokenizer {
            Some(tok) => tok
                .encode(&text, true)
                .map_err(|e| invalid_arg("prompt", e)),
            None => Err(invalid_arg(
                "prompt",
                format!(
                    "a string needs the model's {TOKENIZER_FILE}, which its folder lacks: pass \
                     token ids"
                ),
            )),
        },
        Either3::B(a) => token_ids("prompt", Either::A(a)),
        Either3::C(v) => token_ids("prompt", Either::B(v)),
    }
}

fn sampling(o: &GenerateOptions) -> Result<SamplingParams> {
    let d = SamplingParams::default();
    let p = SamplingParams {
        temperature: o.temperature.map_or(d.temperature, |t| t as f32),
        top_k: o.top_k.map(|k| count("topK", k)).transpose()?,
        top_p: o.top_p.map(|p| p as f32),
        repetition_penalty: o.repetition_penalty.map(|r| r as f32),
        seed: o
            .seed
            .map(|s| count("seed", s))
            .transpose()?
            .map_or(0, |s| s as u64),
        max_new_tokens: opt_count("maxNewTokens", o.max_new_tokens, d.max_new_tokens)?,
        stop_tokens: o.stop_tokens.clone().unwrap_or_default(),
        stop_strings: o.stop_strings.clone().unwrap_or_default(),
        logprobs: None,
    };
    // The crate's own range checks, so a bad parameter throws at the call.
    p.validate()
        .map_err(|e| error::error(ErrorCode::InvalidArg, e.to_string(), None))?;
    Ok(p)
}

#[napi]
impl Engine {
    /// Loads the model folder `modelDir` (config.json, safetensors) and starts its engine.
    /// With `pool`, requests may name any adapter registered there: it is loaded and attached
    /// on first use. `onProgress(n)` is called as weights are read.
    #[napi(catch_unwind)]
    pub fn load(
        model_dir: String,
        options: Option<EngineOptions>,
        pool: Option<&AdapterPool>,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<EngineTask>> {
        crate::error::guard(|| {
            let o = options.unwrap_or_default();
            let max_running = opt_count("maxRunning", o.max_running, 8)?;
            let max_tokens_per_step = opt_count("maxTokensPerStep", o.max_tokens_per_step, 256)?;
            let max_context = opt_count("maxContext", o.max_context, 512)?;
            let block_size = opt_count("blockSize", o.block_size, 16)?;
            if block_size == 0 {
                return Err(invalid_arg("blockSize", "must be at least 1"));
            }
            let num_blocks = o.num_blocks.map(|n| count("numBlocks", n)).transpose()?;
            let weights = weight_format(o.weights.as_deref())?;
            let device: Device = o
                .device
                .as_deref()
                .unwrap_or("cpu")
                .parse()
                .map_err(|e| invalid_arg("device", e))?;
            let adapter_mib = opt_count("deviceAdapterMib", o.device_adapter_mib, 1024)?;
            let options = ServeOptions {
                max_running,
                max_tokens_per_step,
                max_context,
                block_size,
                num_blocks,
                weights,
                device_adapter_bytes: adapter_mib
                    .checked_mul(1 << 20)
                    .ok_or_else(|| invalid_arg("deviceAdapterMib", "too large"))?,
                device_adapter_slots: opt_count("deviceAdapterSlots", o.device_adapter_slots, 128)?,
                device_graph_max_batch: opt_count(
                    "deviceGraphMaxBatch",
                    o.device_graph_max_batch,
                    512,
                )?,
            };
            let pool = pool.map(|p| p.inner.clone());
            let progress = Progress::new(on_progress);
            Ok(EngineTask::spawn(move || {
                let dir = PathBuf::from(&model_dir);
                let inner = openledger::gpu::serve(&dir, device, pool, &options, &mut |_| {
                    progress.advance(1)
                })
                .js()?;
                Ok(Engine {
                    inner: Arc::new(inner),
                    model_dir,
                    device,
                })
            }))
        })
    }

    /// Where the model runs: `"cpu"` or `"cuda:N"`.
    #[napi(getter, catch_unwind)]
    pub fn device(&self) -> String {
        self.device.to_string()
    }

    /// Tokens in the model's vocabulary.
    #[napi(getter, catch_unwind)]
    pub fn vocab_size(&self) -> u32 {
        self.inner.vocab_size() as u32
    }

    /// The longest sequence (prompt and output) the engine runs.
    #[napi(getter, catch_unwind)]
    pub fn max_context(&self) -> u32 {
        self.inner.max_context() as u32
    }

    /// Whether the model folder has a `tokenizer.json` (string prompts, `stopStrings`, `text`).
    #[napi(getter, catch_unwind)]
    pub fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer().is_some()
    }

    /// Token ids of `text` with the model's tokenizer (special tokens such as BOS added unless
    /// `addSpecialTokens` is false). Throws `Model` without a tokenizer.
    #[napi(catch_unwind)]
    pub fn encode(&self, text: String, add_special_tokens: Option<bool>) -> Result<Uint32Array> {
        crate::error::guard(|| {
            let tok = self.tokenizer("encode needs one")?;
            let ids = tok
                .encode(&text, add_special_tokens.unwrap_or(true))
                .map_err(|e| invalid_arg("text", e))?;
            Ok(Uint32Array::new(ids))
        })
    }

    /// Text of the token ids `ids` (special tokens left out unless `skipSpecialTokens` is
    /// false); an id outside the vocabulary is an `InvalidArg` error.
    #[napi(catch_unwind)]
    pub fn decode(
        &self,
        ids: Either<Uint32Array, Vec<f64>>,
        skip_special_tokens: Option<bool>,
    ) -> Result<String> {
        crate::error::guard(|| {
            let tok = self.tokenizer("decode needs one")?;
            let ids = token_ids("ids", ids)?;
            tok.decode(&ids, skip_special_tokens.unwrap_or(true))
                .map_err(|e| invalid_arg("ids", e))
        })
    }

    /// Whether the engine takes no more requests: `close` was called, or it stopped on an
    /// internal error.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Attaches `adapter` (a `LoraAdapter`, or the path of a PEFT adapter folder) under
    /// `adapterId`; requests may then name it. Rejects with `BaseMismatch` when it does not fit
    /// the model.
    #[napi(catch_unwind)]
    pub fn add_adapter(
        &self,
        adapter_id: String,
        adapter: Either<&LoraAdapter, String>,
    ) -> Result<AsyncTask<VoidTask>> {
        crate::error::guard(|| {
            let id = self::adapter_id(&adapter_id)?;
            // A closed engine throws here, before the folder is read.
            self.inner.ensure_open().js()?;
            let inner = Arc::clone(&self.inner);
            let adapter = match adapter {
                Either::A(a) => Either::A(a.inner.clone()),
                Either::B(path) => Either::B(PathBuf::from(path)),
            };
            Ok(VoidTask::spawn(move || {
                let adapter = match adapter {
                    Either::A(a) => a,
                    Either::B(path) => {
                        Arc::new(RustAdapter::from_dir(&path, &LoadOptions::default()).js()?)
                    }
                };
                inner.attach(id, adapter).js()
            }))
        })
    }

    /// Names of the adapters attached to the model.
    #[napi(catch_unwind)]
    pub fn adapters(&self) -> Result<AsyncTask<StringListTask>> {
        crate::error::guard(|| {
            self.inner.ensure_open().js()?;
            let inner = Arc::clone(&self.inner);
            Ok(StringListTask::spawn(move || inner.adapter_names().js()))
        })
    }

    /// The engine's load (waiting, running and swapped requests, KV blocks free), its counters
    /// since it started (steps, preemptions, tokens run) and the model's own figures, taken
    /// between two steps.
    #[napi(catch_unwind)]
    pub fn stats(&self) -> Result<AsyncTask<EngineStatsTask>> {
        crate::error::guard(|| {
            self.inner.ensure_open().js()?;
            let inner = Arc::clone(&self.inner);
            Ok(EngineStatsTask::spawn(move || {
                inner.stats().map(EngineStats::from).js()
            }))
        })
    }

    /// Submits a request for `prompt` (token ids, or a string when the model has a tokenizer)
    /// and returns its stream of output tokens. Options are checked here (an `InvalidArg`
    /// error, also for `stopStrings` without a tokenizer); what only the engine can judge (a
    /// token outside the vocabulary, an unknown adapter, a prompt too long) rejects the
    /// stream's first `next()` with a `Request` or `UnknownId` error.
    #[napi(catch_unwind)]
    pub fn generate(
        &self,
        prompt: Either3<String, Uint32Array, Vec<f64>>,
        options: Option<GenerateOptions>,
    ) -> Result<TokenStream> {
        crate::error::guard(|| {
            let o = options.unwrap_or_default();
            let tokenizer = self.inner.tokenizer();
            if o.stop_strings.as_ref().is_some_and(|s| !s.is_empty()) && tokenizer.is_none() {
                return Err(invalid_arg(
                    "stopStrings",
                    format!("they need the model's {TOKENIZER_FILE}, which its folder lacks"),
                ));
            }
            let req = Request {
                prompt: prompt_ids(prompt, tokenizer)?,
                adapter: o.adapter.as_deref().map(request_adapter).transpose()?,
                sampling: sampling(&o)?,
            };
            let read = StreamLog::new(&req.sampling.stop_strings);
            let (events, rx) = unbounded_channel();
            let cancel = self
                .inner
                .submit_with_callback(req, move |e| {
                    let _ = events.send(e.clone());
                })
                .js()?;
            Ok(TokenStream {
                cancel,
                events: Arc::new(tokio::sync::Mutex::new(rx)),
                read: Arc::new(Mutex::new(read)),
                fault: self.inner.fault_watch(),
                tokenizer: tokenizer.cloned(),
                model_dir: self.model_dir.clone(),
            })
        })
    }

    /// Stops the engine: requests still running end (their streams reject with a `Closed`
    /// error) and later calls throw `Closed`. Resolves once the engine thread has stopped.
    #[napi(catch_unwind)]
    pub fn close(&self) -> AsyncTask<VoidTask> {
        let thread = self.inner.close();
        VoidTask::spawn(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            Ok(())
        })
    }
}

/// Statistics of one request.
#[napi(object)]
#[derive(Clone)]
pub struct RequestStats {
    /// Seconds from submission to the first output token, if there was one.
    pub time_to_first_token_s: Option<f64>,
    /// Output tokens produced (stop tokens excluded).
    pub tokens_generated: u32,
    /// Times the request was preempted.
    pub preemptions: u32,
    /// Median gap between consecutive output tokens, in seconds.
    pub inter_token_p50_s: Option<f64>,
    /// 99th percentile of those gaps, in seconds.
    pub inter_token_p99_s: Option<f64>,
}

impl From<&RustStats> for RequestStats {
    fn from(s: &RustStats) -> Self {
        Self {
            time_to_first_token_s: s.time_to_first_token.map(|d| d.as_secs_f64()),
            tokens_generated: s.tokens_generated as u32,
            preemptions: s.preemptions as u32,
            inter_token_p50_s: s.inter_token_p50().map(|d| d.as_secs_f64()),
            inter_token_p99_s: s.inter_token_p99().map(|d| d.as_secs_f64()),
        }
    }
}

type Events = Arc<tokio::sync::Mutex<UnboundedReceiver<Event>>>;

/// One output token of a `TokenStream`.
#[napi(object, object_to_js = false, object_from_js = false)]
pub struct GeneratedToken {
    /// The token id.
    pub token: u32,
    /// Its index in the output, from 0.
    pub index: u32,
    /// Set instead when the request failed: the pending `next()` rejects with it.
    #[napi(skip)]
    pub failure: Option<Error>,
}

impl GeneratedToken {
    fn failed(e: Error) -> Self {
        Self {
            token: 0,
            index: 0,
            failure: Some(e),
        }
    }
}

impl ToNapiValue for GeneratedToken {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let env = Env::from_raw(env);
        if let Some(e) = val.failure {
            // Becomes the rejection of the `next()` promise, keeping `code` and `cause`.
            return Err(error::into_rejection(&env, e));
        }
        let mut obj = Object::new(&env)?;
        obj.set("token", val.token)?;
        obj.set("index", val.index)?;
        // SAFETY: `obj` was just made in this live environment.
        unsafe { Object::to_napi_value(env.raw(), obj) }
    }
}

/// The output of one request: an async iterator of `{ token, index }` (`for await (const t of
/// stream)`), ending when the request finishes; a failed request rejects the pending `next()`
/// with its error. Breaking out of the loop (or `cancel()`) stops the request.
#[napi(async_iterator)]
pub struct TokenStream {
    cancel: PendingCancel,
    events: Events,
    read: Arc<Mutex<StreamLog>>,
    fault: FaultWatch,
    tokenizer: Option<Arc<Tokenizer>>,
    model_dir: String,
}

impl TokenStream {
    /// The model's tokenizer, or the `Model` error saying there is none (`instead`: what to do).
    fn tokenizer(&self, instead: &str) -> Result<&Arc<Tokenizer>> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| no_tokenizer(&self.model_dir, instead))
    }

    fn cancel_now(&self) {
        self.cancel.cancel();
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        // Nobody can read the tokens any more.
        self.cancel_now();
    }
}

async fn next_step(
    events: Events,
    read: Arc<Mutex<StreamLog>>,
    fault: FaultWatch,
) -> Option<GeneratedToken> {
    let terminal = |end: &StreamEnd| match end {
        StreamEnd::Finished(..) => None,
        StreamEnd::Failed(e, _) => Some(GeneratedToken::failed(e.to_js())),
        StreamEnd::Closed => Some(GeneratedToken::failed(fault.stopped().to_js())),
    };
    // One `next()` reads at a time; the others wait their turn.
    let mut rx = events.lock().await;
    if let Some(end) = lock(&read).end() {
        return terminal(end);
    }
    let event = rx.recv().await;
    let index = match &event {
        Some(Event::Token { index, .. }) => *index as u32,
        _ => 0,
    };
    let mut log = lock(&read);
    match log.record(event) {
        Some(token) => Some(GeneratedToken {
            token,
            index,
            failure: None,
        }),
        None => log.end().and_then(terminal),
    }
}

#[napi]
impl AsyncGenerator for TokenStream {
    type Yield = GeneratedToken;
    type Next = Unknown<'static>;
    type Return = Unknown<'static>;

    fn next(
        &mut self,
        _value: Option<Self::Next>,
    ) -> impl Future<Output = napi::Result<Option<Self::Yield>>> + Send + 'static {
        let (events, read) = (self.events.clone(), self.read.clone());
        let fault = self.fault.clone();
        async move { Ok(next_step(events, read, fault).await) }
    }

    fn complete(
        &mut self,
        _value: Option<Self::Return>,
    ) -> impl Future<Output = napi::Result<Option<Self::Yield>>> + Send + 'static {
        // `break` out of `for await`: stop the request.
        self.cancel_now();
        async move { Ok(None) }
    }
}

#[napi]
impl TokenStream {
    /// Stops the request; the iteration then ends (finish reason `"cancelled"`).
    #[napi(catch_unwind)]
    pub fn cancel(&self) {
        self.cancel_now();
    }

    /// The tokens read so far.
    #[napi(getter, catch_unwind)]
    pub fn tokens(&self) -> Uint32Array {
        Uint32Array::new(lock(&self.read).tokens().to_vec())
    }

    /// The text of the tokens read so far (special tokens left out), with the model's
    /// tokenizer; a character whose bytes span tokens shows once they are all read. Once the
    /// request ended on a stop string, the text before it. Each read decodes only the tokens
    /// that arrived since the last one. Throws `Model` without a tokenizer.
    #[napi(getter, catch_unwind)]
    pub fn text(&self) -> Result<String> {
        crate::error::guard(|| {
            let tok = self.tokenizer("read `tokens`")?;
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            let text = lock(&self.read).text(decode);
            text.map_err(|e| invalid_arg("tokens", e))
        })
    }

    /// The answer's text that became final since the last call, for printing a stream as it
    /// comes: while the request runs, an end of the text that could still be the beginning of
    /// a stop string waits, and so does a character whose bytes are not all read; once the
    /// stream has ended, the rest (up to the stop string). Joined, the pieces are `text` at the
    /// end. Throws `Model` without a tokenizer.
    #[napi(catch_unwind)]
    pub fn new_text(&self) -> Result<String> {
        crate::error::guard(|| {
            let tok = self.tokenizer("read `tokens`")?;
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            let mut log = lock(&self.read);
            let piece = log.new_text(decode);
            Ok(piece.map_err(|e| invalid_arg("tokens", e))?.to_owned())
        })
    }

    /// The stop string that ended the request, if one did.
    #[napi(getter, catch_unwind)]
    pub fn stop_string(&self) -> Option<String> {
        lock(&self.read).stop_string().map(str::to_owned)
    }

    /// Why the request ended (`"stop_token"`, `"stop_string"`, `"max_new_tokens"`,
    /// `"max_context"`, `"cancelled"`, ...), or `null` while it runs or when it failed.
    #[napi(getter, catch_unwind)]
    pub fn finish_reason(&self) -> Option<String> {
        let log = lock(&self.read);
        log.finish_reason().map(|r| r.name().to_string())
    }

    /// The request's statistics once it has ended, else `null`.
    #[napi(getter, catch_unwind)]
    pub fn stats(&self) -> Option<RequestStats> {
        lock(&self.read).stats().map(RequestStats::from)
    }
}
