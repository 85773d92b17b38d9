//! Python face of `openledger_lora::serve` driving `openledger_lora::model::PagedModel`: a
//! model folder served by the continuous-batching engine on a thread of its own, adapters
//! attached from folders or taken from an `AdapterPool` on first use, and `generate` returning
//! a stream of tokens (an iterator and an async iterator) with cancellation and per-request
//! statistics. With the folder's `tokenizer.json` the engine also takes text prompts, stops on
//! stop strings and gives each stream's text.
//!
//! `openledger_lora::model::ServedModel` runs the Rust `Engine` on its thread and takes
//! commands between steps; Python calls wait for it and read tokens from each request's event
//! channel, always with the GIL released.

use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openledger::gpu::Device;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{
    ChatMessage, ChatTemplate, FaultWatch, MetricKind, ModelError, ServeOptions, ServedModel,
    TOKENIZER_FILE, TemplateError, Tokenizer, WeightFormat, eos_token_ids,
};
use openledger_lora::pool::{AdapterId, PoolError};
use openledger_lora::serve::{
    CancelHandle, FinishReason, Request, RequestError, RequestHandle, RequestStats, SamplingParams,
    StreamEnd, StreamLog,
};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::adapters::PyLoraAdapter;
use crate::error::{self, Result, invalid_arg};
use crate::pool::PyAdapterPool;
use crate::progress::Progress;

fn adapter_id(s: &str) -> Result<AdapterId> {
    Ok(AdapterId::new(s).map_err(PoolError::from)?)
}

/// The adapter a request names: an id or an ensemble's spelling (`"a+b"`, `"a*0.7+b*0.3"`),
/// or a list of `(id, weight)` pairs.
fn request_adapter(a: &Bound<'_, PyAny>) -> Result<AdapterId> {
    if let Ok(s) = a.cast::<PyString>() {
        return Ok(AdapterId::parse(&s.to_cow()?).map_err(PoolError::from)?);
    }
    let pairs: Vec<(String, f32)> = a.extract().map_err(|_| {
        invalid_arg(
            "adapter",
            format!(
                "expected an adapter id (str) or a list of (id, weight) pairs, got {}",
                type_name(a)
            ),
        )
    })?;
    let members = pairs
        .iter()
        .map(|(id, w)| Ok((adapter_id(id)?, *w)))
        .collect::<Result<Vec<_>>>()?;
    Ok(AdapterId::ensemble(&members).map_err(PoolError::from)?)
}

/// A base model served by the continuous-batching engine on a thread of its own. Requests for
/// different adapters are batched into the same forward passes.
#[pyclass(name = "Engine", module = "openledger", frozen)]
pub struct PyEngine {
    inner: ServedModel,
    /// Where the model runs.
    device: Device,
    /// The folder's chat template, when it has one.
    template: Option<ChatTemplate>,
    /// The ids that end a turn (`generation_config.json`'s `eos_token_id`).
    eos: Vec<u32>,
}

/// A model folder's unreadable template is a `ModelFormatError`; a conversation the template
/// refuses is an `InvalidArgumentError` naming `messages`.
fn template_error(e: TemplateError) -> error::Error {
    match e {
        TemplateError::Render(_) => invalid_arg("messages", e),
        _ => error::Error::from(error::ModelFormatError::new_err(e.to_string())),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PyEngine {
    /// The model's tokenizer; without one, a `ModelFormatError` saying so.
    fn tokenizer(&self) -> Result<&Arc<Tokenizer>> {
        Ok(self
            .inner
            .require_tokenizer("the engine takes token ids only")?)
    }
}

/// The prompt as token ids (a str is encoded with `tokenizer`, special tokens such as BOS
/// added); anything else is an `InvalidArgumentError` naming what is wrong.
fn prompt_ids(
    py: Python<'_>,
    prompt: &Bound<'_, PyAny>,
    tokenizer: Option<&Arc<Tokenizer>>,
) -> Result<Vec<u32>> {
    if let Ok(text) = prompt.cast::<PyString>() {
        let Some(tok) = tokenizer else {
            return Err(invalid_arg(
                "prompt",
                format!(
                    "a str needs the model's {TOKENIZER_FILE}, which its folder lacks: pass \
                     token ids"
                ),
            ));
        };
        let text = text.to_cow()?.into_owned();
        return py.detach(|| {
            tok.encode(&text, true)
                .map_err(|e| invalid_arg("prompt", e))
        });
    }
    let items = prompt.try_iter().map_err(|_| {
        invalid_arg(
            "prompt",
            format!(
                "expected a sequence of token ids, got {}",
                type_name(prompt)
            ),
        )
    })?;
    let mut ids = Vec::new();
    for (i, item) in items.enumerate() {
        let item = item?;
        let id = item.extract::<u32>().map_err(|_| {
            invalid_arg(
                "prompt",
                format!(
                    "item {i} is not a token id (an int in 0..2**32): {}",
                    item.repr()
                        .map_or_else(|_| type_name(&item), |r| r.to_string())
                ),
            )
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// `messages` as a list of dicts of `role`, `content` (str) and optionally `name`.
fn chat_messages(messages: &Bound<'_, PyAny>) -> Result<Vec<ChatMessage>> {
    let list: Vec<Bound<'_, PyDict>> = messages.extract().map_err(|_| {
        invalid_arg(
            "messages",
            format!("expected a list of dicts, got {}", type_name(messages)),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |key: &str| -> Result<Option<String>> {
                match m.get_item(key)? {
                    None => Ok(None),
                    Some(v) if v.is_none() && key == "name" => Ok(None),
                    Some(v) => v.extract::<String>().map(Some).map_err(|_| {
                        invalid_arg(
                            "messages",
                            format!("message {i}: {key} must be a str, got {}", type_name(&v)),
                        )
                    }),
                }
            };
            let need = |key: &str| -> Result<String> {
                field(key)?
                    .ok_or_else(|| invalid_arg("messages", format!("message {i} has no {key}")))
            };
            Ok(ChatMessage {
                role: need("role")?,
                content: need("content")?,
                name: field("name")?,
            })
        })
        .collect()
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

#[pymethods]
impl PyEngine {
    /// Loads the HF model folder `model_dir` (config.json + safetensors) and starts the engine.
    /// `weights` is how the base projections are held: `"f32"` (widened, the default),
    /// `"stored"` (bf16 / f16 kept as the file stores them), `"int8"` (quantised at load, one
    /// scale per output channel) or `"int8-g64"` / `"int8-g128"` (one scale per 64 / 128 inputs).
    /// Adapters registered in `pool` are loaded and attached when a request first names them.
    /// `device` is where the model runs: `"cpu"` (the default), `"cuda"` or `"cuda:N"` (the
    /// weights in device memory as `weights` asks, `"stored"` or `"f32"`; needs a build with
    /// the `cuda` feature, the NVIDIA driver and a GPU, else `UnsupportedError` naming what is
    /// missing); there the adapters the device holds at once take `device_adapter_mib` of its
    /// memory and `device_adapter_slots` slots (the host pool sits above them), and decode steps
    /// of up to `device_graph_max_batch` sequences run as captured CUDA graphs (0: none do).
    /// `progress(1)` is called after each weight file read and each layer (CPU) or tensor (GPU)
    /// loaded.
    #[new]
    #[pyo3(signature = (
        model_dir,
        pool = None,
        *,
        max_running = 8,
        max_tokens_per_step = 256,
        max_context = 512,
        block_size = 16,
        num_blocks = None,
        weights = "f32",
        device = "cpu",
        device_adapter_mib = 1024,
        device_adapter_slots = 128,
        device_graph_max_batch = 512,
        progress = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        pool: Option<PyRef<'_, PyAdapterPool>>,
        max_running: usize,
        max_tokens_per_step: usize,
        max_context: usize,
        block_size: usize,
        num_blocks: Option<usize>,
        weights: &str,
        device: &str,
        device_adapter_mib: usize,
        device_adapter_slots: usize,
        device_graph_max_batch: usize,
        progress: Option<Py<PyAny>>,
    ) -> Result<Self> {
        let weights: WeightFormat = weights.parse().map_err(|e| invalid_arg("weights", e))?;
        let device: Device = device.parse().map_err(|e| invalid_arg("device", e))?;
        if block_size == 0 {
            return Err(invalid_arg("block_size", "must be at least 1"));
        }
        let pool = pool.map(|p| p.inner.clone());
        let options = ServeOptions {
            max_running,
            max_tokens_per_step,
            max_context,
            block_size,
            num_blocks,
            weights,
            device_adapter_bytes: device_adapter_mib
                .checked_mul(1 << 20)
                .ok_or_else(|| invalid_arg("device_adapter_mib", "too large"))?,
            device_adapter_slots,
            device_graph_max_batch,
        };
        let (template, eos) = py
            .detach(|| {
                Ok::<_, TemplateError>((
                    ChatTemplate::from_model_dir(&model_dir)?,
                    eos_token_ids(&model_dir)?,
                ))
            })
            .map_err(template_error)?;
        let progress = Progress::new(progress);
        let inner = py.detach(|| {
            openledger::gpu::serve(&model_dir, device, pool, &options, &mut |_| {
                progress.advance(1)
            })
            .map_err(error::Error::from)
        });
        progress.finish()?;
        Ok(Self {
            inner: inner?,
            device,
            template,
            eos,
        })
    }

    /// Where the model runs: `"cpu"` or `"cuda:N"`.
    #[getter]
    fn device(&self) -> String {
        self.device.to_string()
    }

    /// Tokens in the model's vocabulary.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// Longest sequence (prompt and output) a request may reach.
    #[getter]
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }

    /// Whether the model folder has a `tokenizer.json` (text prompts, stop strings, `text`).
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.inner.tokenizer().is_some()
    }

    /// Token ids of `text` with the model's tokenizer (special tokens such as BOS added when
    /// `add_special_tokens`). Without a tokenizer: `ModelFormatError`.
    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode(&self, py: Python<'_>, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let tok = self.tokenizer()?;
        py.detach(|| {
            tok.encode(text, add_special_tokens)
                .map_err(|e| invalid_arg("text", e))
        })
    }

    /// Text of the token ids `ids` (special tokens left out when `skip_special_tokens`); an id
    /// outside the vocabulary is an `InvalidArgumentError`.
    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String> {
        let tok = self.tokenizer()?;
        py.detach(|| {
            tok.decode(&ids, skip_special_tokens)
                .map_err(|e| invalid_arg("ids", e))
        })
    }

    /// Whether the model folder has a chat template (`chat_template.jinja`, or
    /// `tokenizer_config.json`'s `chat_template`).
    #[getter]
    fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The ids that end a turn (`generation_config.json`'s `eos_token_id`, else
    /// `config.json`'s; empty when neither names one): pass them as `stop_tokens`.
    #[getter]
    fn eos_token_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    /// The prompt text of `messages` (dicts of `role`, `content` and optionally `name`, as
    /// transformers' `apply_chat_template(messages, tokenize=False)` takes them), ending with
    /// the assistant's opening when `add_generation_prompt`. A folder without a template is a
    /// `ModelFormatError`; a malformed message or one the template refuses an
    /// `InvalidArgumentError`.
    #[pyo3(signature = (messages, add_generation_prompt = true))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(error::Error::from(error::ModelFormatError::new_err(
                format!(
                    "{}: the model folder has no chat template",
                    self.inner.model_dir().display()
                ),
            )));
        };
        let messages = chat_messages(messages)?;
        py.detach(|| template.render(&messages, add_generation_prompt))
            .map_err(template_error)
    }

    /// Whether the engine takes no more requests: `close` was called, or it stopped on an
    /// internal error.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Attaches an adapter to the model under `adapter_id`: a PEFT folder path or a
    /// `LoraAdapter` (from `LoraAdapter.from_dir` or `AdapterPool.get`). An adapter made for
    /// another base model is a `BaseMismatchError`.
    fn add_adapter(
        &self,
        py: Python<'_>,
        adapter_id: &str,
        adapter: &Bound<'_, PyAny>,
    ) -> Result<()> {
        let id = self::adapter_id(adapter_id)?;
        let adapter = if let Ok(a) = adapter.cast::<PyLoraAdapter>() {
            Arc::clone(&a.get().inner)
        } else if let Ok(path) = adapter.extract::<PathBuf>() {
            Arc::new(py.detach(|| LoraAdapter::from_dir(&path, &LoadOptions::default()))?)
        } else {
            return Err(invalid_arg(
                "adapter",
                format!(
                    "expected a folder path or a LoraAdapter, got {}",
                    type_name(adapter)
                ),
            ));
        };
        Ok(py.detach(|| self.inner.attach(id, adapter))?)
    }

    /// Names of the adapters attached to the model now (directly or from the pool).
    fn adapters(&self, py: Python<'_>) -> Result<Vec<String>> {
        Ok(py.detach(|| self.inner.adapter_names())?)
    }

    /// The engine's load and counters, and the model's own figures, taken between two steps:
    /// a dict with `waiting`, `running`, `swapped` (requests), `kv_blocks`, `kv_blocks_free`,
    /// `kv_usage` (0 to 1), `kv_bytes`, `steps`, `preemptions`, `prefill_tokens`,
    /// `decode_tokens` (since the engine started) and `metrics`: a list of dicts with `name`,
    /// `help`, `kind` (`"gauge"` or `"counter"`), `labels` (a dict) and `value`, named as the
    /// server's Prometheus metrics (on a GPU: device memory by component, the adapter tier,
    /// decode graphs; none on the CPU).
    fn stats<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.stats())?;
        let e = s.engine;
        let d = PyDict::new(py);
        d.set_item("waiting", e.waiting)?;
        d.set_item("running", e.running)?;
        d.set_item("swapped", e.swapped)?;
        d.set_item("kv_blocks", e.kv_blocks)?;
        d.set_item("kv_blocks_free", e.kv_blocks_free)?;
        d.set_item("kv_usage", e.kv_usage())?;
        d.set_item("kv_bytes", e.kv_bytes)?;
        d.set_item("steps", e.steps)?;
        d.set_item("preemptions", e.preemptions)?;
        d.set_item("prefill_tokens", e.prefill_tokens)?;
        d.set_item("decode_tokens", e.decode_tokens)?;
        let mut metrics = Vec::with_capacity(s.model.len());
        for m in &s.model {
            let item = PyDict::new(py);
            item.set_item("name", m.name)?;
            item.set_item("help", m.help)?;
            let kind = match m.kind {
                MetricKind::Gauge => "gauge",
                MetricKind::Counter => "counter",
            };
            item.set_item("kind", kind)?;
            let labels = PyDict::new(py);
            for (k, v) in &m.labels {
                labels.set_item(*k, v)?;
            }
            item.set_item("labels", labels)?;
            item.set_item("value", m.value)?;
            metrics.push(item);
        }
        d.set_item("metrics", metrics)?;
        Ok(d)
    }

    /// Starts generating after `prompt` (token ids, or a str when the model has a tokenizer)
    /// with `adapter` (an attached or pooled adapter id; an ensemble of them spelled `"a+b"` or
    /// `"a*0.7+b*0.3"`, or given as `[("a", 0.7), ("b", 0.3)]`: each weight multiplies its
    /// adapter's LoRA scale, the members served in the same batch with no merged copy; `None`:
    /// the base model) and returns
    /// the stream of its tokens. Bad input (an empty or too long prompt, a token outside the
    /// vocabulary, an unknown adapter, invalid sampling parameters, stop strings without a
    /// tokenizer) raises here; an adapter that fails to load or does not fit the model raises
    /// from the stream. `temperature = 0` is greedy. The request ends at the first of
    /// `stop_tokens` (not part of the output) or once its text contains one of `stop_strings`.
    #[pyo3(signature = (
        prompt,
        adapter = None,
        *,
        max_new_tokens = 16,
        temperature = 0.0,
        top_k = None,
        top_p = None,
        repetition_penalty = None,
        seed = 0,
        stop_tokens = None,
        stop_strings = None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        adapter: Option<&Bound<'_, PyAny>>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        repetition_penalty: Option<f32>,
        seed: u64,
        stop_tokens: Option<Vec<u32>>,
        stop_strings: Option<Vec<String>>,
    ) -> Result<PyTokenStream> {
        let tokenizer = self.inner.tokenizer();
        let prompt = prompt_ids(py, prompt, tokenizer)?;
        let stop_strings = stop_strings.unwrap_or_default();
        let log = StreamLog::new(&stop_strings);
        if !stop_strings.is_empty() && tokenizer.is_none() {
            return Err(invalid_arg(
                "stop_strings",
                format!("they need the model's {TOKENIZER_FILE}, which its folder lacks"),
            ));
        }
        let adapter = match adapter {
            None => None,
            Some(a) if a.is_none() => None,
            Some(a) => Some(request_adapter(a)?),
        };
        let req = Request {
            prompt,
            adapter,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                repetition_penalty,
                seed,
                max_new_tokens,
                stop_tokens: stop_tokens.unwrap_or_default(),
                stop_strings,
                logprobs: None,
            },
        };
        let handle = py.detach(|| self.inner.submit(req))?;
        Ok(PyTokenStream {
            id: handle.id.0,
            cancel: handle.cancel.clone(),
            tokenizer: tokenizer.cloned(),
            fault: self.inner.fault_watch(),
            state: Mutex::new(StreamState { handle, log }),
        })
    }

    /// Stops the engine: requests still running end (their streams raise `EngineClosedError`)
    /// and later calls raise `EngineClosedError`. Idempotent.
    fn close(&self, py: Python<'_>) {
        if let Some(t) = self.inner.close() {
            py.detach(|| {
                let _ = t.join();
            });
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Py<PyAny>>,
        _exc: Option<Py<PyAny>>,
        _tb: Option<Py<PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(vocab_size={}, max_context={}, closed={})",
            self.inner.vocab_size(),
            self.inner.max_context(),
            self.closed()
        )
    }
}

struct StreamState {
    handle: RequestHandle,
    /// The tokens read, how the request ended, and the text `text` and `new_text` give.
    log: StreamLog,
}

/// What the next read of a stream gives.
enum Next {
    Token(u32),
    Done,
    Failed(RequestError),
    Closed,
    Timeout,
}

/// The tokens of one request, as they are generated: iterate it (`for t in stream`) or, under
/// asyncio, `async for t in stream`. Ends normally when the request finishes (see
/// `finish_reason` and `stats`); raises when it fails.
#[pyclass(name = "TokenStream", module = "openledger", frozen)]
pub struct PyTokenStream {
    id: u64,
    cancel: CancelHandle,
    tokenizer: Option<Arc<Tokenizer>>,
    /// The engine's panic, if it stopped on one (the stream then ends with its message).
    fault: FaultWatch,
    state: Mutex<StreamState>,
}

impl PyTokenStream {
    /// The model's tokenizer, or the error saying there is none.
    fn tokenizer(&self) -> Result<&Arc<Tokenizer>> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Tokenizer {
                what: TOKENIZER_FILE.into(),
                reason: "the engine's model folder has none: read `tokens`".into(),
            }
            .into()
        })
    }

    /// The error of a stream whose engine stopped before the request ended.
    fn closed_error(&self) -> error::Error {
        self.fault.stopped().into()
    }

    /// Waits up to `timeout` (None: for ever) for the next event, GIL released.
    fn read(&self, py: Python<'_>, timeout: Option<Duration>) -> Next {
        py.detach(|| {
            let mut st = lock(&self.state);
            let read = |end: &StreamEnd| match end {
                StreamEnd::Finished(..) => Next::Done,
                StreamEnd::Failed(e, _) => Next::Failed(e.clone()),
                StreamEnd::Closed => Next::Closed,
            };
            if let Some(end) = st.log.end() {
                return read(end);
            }
            let event = match timeout {
                Some(t) => match st.handle.next_timeout(t) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => return Next::Timeout,
                    Err(RecvTimeoutError::Disconnected) => None,
                },
                None => st.handle.next(),
            };
            match st.log.record(event) {
                Some(token) => Next::Token(token),
                None => st.log.end().map_or(Next::Closed, read),
            }
        })
    }

    /// The next token, `None` at the end; waits in slices so Ctrl-C is seen.
    fn next_token(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        loop {
            match self.read(py, Some(Duration::from_millis(100))) {
                Next::Token(t) => return Ok(Some(t)),
                Next::Done => return Ok(None),
                Next::Failed(e) => return Err(error::Error::from(e).into()),
                Next::Closed => return Err(self.closed_error().into()),
                Next::Timeout => py.check_signals()?,
            }
        }
    }
}

#[pymethods]
impl PyTokenStream {
    /// The request's id within its engine.
    #[getter]
    fn request_id(&self) -> u64 {
        self.id
    }

    /// Asks the engine to stop this request; the stream then ends with `finish_reason`
    /// `"cancelled"`. Safe from any thread.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// The tokens read from the stream so far.
    #[getter]
    fn tokens(&self, py: Python<'_>) -> Vec<u32> {
        py.detach(|| lock(&self.state).log.tokens().to_vec())
    }

    /// The text of the tokens read so far (special tokens left out), with the model's
    /// tokenizer; a character whose bytes span tokens shows once they are all read. Once the
    /// request ended on a stop string, the text before it (the string and what followed it in
    /// the last token are left out). Each read decodes only the tokens that arrived since the
    /// last one. Without a tokenizer: `ModelFormatError`.
    #[getter]
    fn text(&self, py: Python<'_>) -> Result<String> {
        let tok = self.tokenizer()?;
        py.detach(|| {
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            let text = lock(&self.state).log.text(decode);
            text.map_err(|e| invalid_arg("tokens", e))
        })
    }

    /// The answer's text that became final since the last call, for printing a stream as it
    /// comes: while the request runs, an end of the text that could still be the beginning of
    /// a stop string waits, and so does a character whose bytes are not all read; once the
    /// stream has ended, the rest (up to the stop string). Joined, the pieces are `text` at the
    /// end. Without a tokenizer: `ModelFormatError`.
    fn new_text(&self, py: Python<'_>) -> Result<String> {
        let tok = self.tokenizer()?;
        py.detach(|| {
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            let mut st = lock(&self.state);
            let piece = st.log.new_text(decode);
            Ok(piece.map_err(|e| invalid_arg("tokens", e))?.to_owned())
        })
    }

    /// The stop string that ended the request, if one did.
    #[getter]
    fn stop_string(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| lock(&self.state).log.stop_string().map(str::to_owned))
    }

    /// Why the request ended (`"max_new_tokens"`, `"stop_token"`, `"stop_string"`,
    /// `"max_context"`, `"cancelled"`), or `None` while it runs or when it failed.
    #[getter]
    fn finish_reason(&self, py: Python<'_>) -> Option<&'static str> {
        py.detach(|| {
            lock(&self.state)
                .log
                .finish_reason()
                .map(FinishReason::name)
        })
    }

    /// The request's statistics once it has ended (finished or failed), else `None`.
    #[getter]
    fn stats(&self, py: Python<'_>) -> Option<PyRequestStats> {
        py.detach(|| {
            let st = lock(&self.state);
            let inner = st.log.stats()?.clone();
            Some(PyRequestStats { inner })
        })
    }

    /// Reads the stream to its end and returns every token (raising as iteration does).
    fn collect(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        while self.next_token(py)?.is_some() {}
        Ok(self.tokens(py))
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<u32>> {
        self.next_token(py)
    }

    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// An awaitable of the next token: the blocking read runs in the event loop's default
    /// executor, so the loop goes on meanwhile.
    fn __anext__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let read = slf.getattr("_next_or_stop_async")?;
        event_loop.call_method1("run_in_executor", (py.None(), read))
    }

    /// The next token, raising `StopAsyncIteration` at the end (for `__anext__`).
    fn _next_or_stop_async(&self, py: Python<'_>) -> PyResult<u32> {
        // No signal checks here: this runs on an executor thread.
        match self.read(py, None) {
            Next::Token(t) => Ok(t),
            Next::Done => Err(PyStopAsyncIteration::new_err(())),
            Next::Failed(e) => Err(error::Error::from(e).into()),
            Next::Closed | Next::Timeout => Err(self.closed_error().into()),
        }
    }

    fn __repr__(&self) -> String {
        format!("TokenStream(request_id={})", self.id)
    }
}

/// Statistics of one request.
#[pyclass(name = "RequestStats", module = "openledger", frozen)]
pub struct PyRequestStats {
    inner: RequestStats,
}

#[pymethods]
impl PyRequestStats {
    /// Seconds from submission to the first token (`None` when no token was generated).
    #[getter]
    fn time_to_first_token(&self) -> Option<f64> {
        self.inner.time_to_first_token.map(|d| d.as_secs_f64())
    }

    /// Seconds between consecutive tokens.
    #[getter]
    fn inter_token_latencies(&self) -> Vec<f64> {
        self.inner
            .inter_token_latencies
            .iter()
            .map(Duration::as_secs_f64)
            .collect()
    }

    /// Tokens generated (stop tokens excluded).
    #[getter]
    fn tokens_generated(&self) -> usize {
        self.inner.tokens_generated
    }

    /// Times the request was preempted.
    #[getter]
    fn preemptions(&self) -> usize {
        self.inner.preemptions
    }

    /// Median inter-token latency in seconds (`None` with fewer than two tokens).
    #[getter]
    fn inter_token_p50(&self) -> Option<f64> {
        self.inner.inter_token_p50().map(|d| d.as_secs_f64())
    }

    /// 99th-percentile inter-token latency in seconds.
    #[getter]
    fn inter_token_p99(&self) -> Option<f64> {
        self.inner.inter_token_p99().map(|d| d.as_secs_f64())
    }

    /// Every statistic as a dict.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("time_to_first_token", self.time_to_first_token())?;
        d.set_item("inter_token_latencies", self.inter_token_latencies())?;
        d.set_item("tokens_generated", self.inner.tokens_generated)?;
        d.set_item("preemptions", self.inner.preemptions)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "RequestStats(tokens_generated={}, time_to_first_token={:?}, preemptions={})",
            self.inner.tokens_generated,
            self.time_to_first_token(),
            self.inner.preemptions
        )
    }
}

/// Registers the engine classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyTokenStream>()?;
    m.add_class::<PyRequestStats>()?;
    Ok(())
}
