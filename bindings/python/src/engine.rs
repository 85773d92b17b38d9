//! Python face of `openledger_lora::serve` driving `openledger_lora::model::PagedModel`: a
//! model folder served by the continuous-batching engine on a thread of its own, adapters
//! attached from folders or taken from an `AdapterPool` on first use, and `generate` returning
//! a stream of tokens (an iterator and an async iterator) with cancellation and per-request
//! statistics. With the folder's `tokenizer.json` the engine also takes text prompts, stops on
//! stop strings and gives each stream's text.
//!
//! The engine thread owns the Rust `Engine`; Python calls reach it through a command channel
//! and read tokens from each request's event channel, always with the GIL released.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, ModelError, PagedModel, TOKENIZER_FILE, Tokenizer};
use openledger_lora::pool::{AdapterId, AdapterPool, PoolError};
use openledger_lora::serve::{
    AdapterReadiness, CancelHandle, Engine, EngineConfig, Event, FinishReason, KvDtype, Preemption,
    Readiness, Request, RequestError, RequestHandle, RequestStats, SamplingParams, TextPieces,
};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::adapters::PyLoraAdapter;
use crate::error::{self, Result, engine_closed, invalid_arg};
use crate::pool::PyAdapterPool;
use crate::progress::Progress;

/// Adapters attached to the model directly are always ready; the others are the pool's.
struct Adapters {
    attached: HashSet<AdapterId>,
    pool: Option<AdapterPool>,
    /// Adapters this engine pinned in the pool (released through the pool even if the id was
    /// attached directly meanwhile).
    pinned: HashSet<AdapterId>,
}

impl AdapterReadiness for Adapters {
    fn readiness(&mut self, adapter: &AdapterId) -> Readiness {
        match (&mut self.pool, self.attached.contains(adapter)) {
            (_, true) => Readiness::Ready,
            (Some(pool), false) => pool.readiness(adapter),
            (None, false) => Readiness::Unknown,
        }
    }

    fn acquire(&mut self, adapter: &AdapterId) -> Readiness {
        match (&mut self.pool, self.attached.contains(adapter)) {
            (_, true) => Readiness::Ready,
            (Some(pool), false) => {
                let r = pool.acquire(adapter);
                if r == Readiness::Ready {
                    self.pinned.insert(adapter.clone());
                }
                r
            }
            (None, false) => Readiness::Unknown,
        }
    }

    fn release(&mut self, adapter: &AdapterId) {
        if let Some(pool) = &mut self.pool
            && self.pinned.remove(adapter)
        {
            pool.release(adapter);
        }
    }
}

type Inner = Engine<PagedModel, Adapters>;

enum Command {
    Submit(
        Request,
        Sender<std::result::Result<RequestHandle, RequestError>>,
    ),
    Attach(
        AdapterId,
        Arc<LoraAdapter>,
        Sender<std::result::Result<(), ModelError>>,
    ),
    Adapters(Sender<Vec<String>>),
}

/// Runs the engine until the command channel closes (then drops it: streams still open end
/// with `EngineClosedError`, adapters it held are released).
fn drive(mut engine: Inner, commands: Receiver<Command>) {
    loop {
        let cmd = if engine.pending() == 0 {
            match commands.recv() {
                Ok(c) => Some(c),
                Err(_) => return,
            }
        } else {
            match commands.try_recv() {
                Ok(c) => Some(c),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        };
        if let Some(cmd) = cmd {
            handle(&mut engine, cmd);
            continue; // take every queued command before the next step
        }
        match engine.step() {
            // Every pending request waits on an adapter load: wait a little for commands.
            Ok(r) if r.batch_seqs == 0 && r.ended == 0 && r.preempted == 0 => {
                match commands.recv_timeout(Duration::from_millis(1)) {
                    Ok(cmd) => handle(&mut engine, cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // A failed forward pass failed the requests of its batch; the others go on.
            Ok(_) | Err(_) => {}
        }
    }
}

fn handle(engine: &mut Inner, cmd: Command) {
    match cmd {
        Command::Submit(req, reply) => {
            if let Some(id) = &req.adapter {
                let r = engine.readiness();
                let known =
                    r.attached.contains(id) || r.pool.as_ref().is_some_and(|p| p.is_registered(id));
                if !known {
                    let adapter = id.clone();
                    let _ = reply.send(Err(RequestError::UnknownAdapter { adapter }));
                    return;
                }
            }
            let h = engine.submit(req);
            // Bad input is refused at submission: its failure is already in the channel.
            let answer = match h.try_next() {
                Some(Event::Failed { error, .. }) => Err(error),
                _ => Ok(h),
            };
            let _ = reply.send(answer);
        }
        Command::Attach(id, adapter, reply) => {
            let r = engine.model_mut().attach(id.clone(), &adapter).map(|_| ());
            if r.is_ok() {
                engine.readiness_mut().attached.insert(id);
            }
            let _ = reply.send(r);
        }
        Command::Adapters(reply) => {
            let names = engine.model().model().adapter_names();
            let _ = reply.send(names.into_iter().map(str::to_string).collect());
        }
    }
}

fn adapter_id(s: &str) -> Result<AdapterId> {
    Ok(AdapterId::new(s).map_err(PoolError::from)?)
}

/// A base model served by the continuous-batching engine on a thread of its own. Requests for
/// different adapters are batched into the same forward passes.
#[pyclass(name = "Engine", module = "openledger", frozen)]
pub struct PyEngine {
    commands: Mutex<Option<Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    vocab_size: usize,
    max_context: usize,
    model_dir: PathBuf,
    tokenizer: Option<Arc<Tokenizer>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PyEngine {
    /// The model's tokenizer; without one, a `ModelFormatError` saying so.
    fn tokenizer(&self) -> Result<&Arc<Tokenizer>> {
        self.tokenizer.as_ref().ok_or_else(|| {
            error::Error::from(ModelError::Tokenizer {
                what: TOKENIZER_FILE.into(),
                reason: format!(
                    "the model folder {} has none: the engine takes token ids only",
                    self.model_dir.display()
                ),
            })
        })
    }

    /// Sends `cmd` and waits (GIL released) for its answer.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        make: impl FnOnce(Sender<T>) -> Command + Send,
    ) -> Result<T> {
        let tx = lock(&self.commands).clone().ok_or_else(engine_closed)?;
        py.detach(move || {
            let (reply, answer) = mpsc::channel();
            tx.send(make(reply)).map_err(|_| engine_closed())?;
            answer.recv().map_err(|_| engine_closed())
        })
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

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map_or_else(|_| "?".into(), |n| n.to_string())
}

#[pymethods]
impl PyEngine {
    /// Loads the HF model folder `model_dir` (config.json + safetensors) and starts the engine.
    /// Adapters registered in `pool` are loaded and attached when a request first names them.
    /// `progress(1)` is called after each weight file read and each layer built.
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
        progress: Option<Py<PyAny>>,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(invalid_arg("block_size", "must be at least 1"));
        }
        let pool = pool.map(|p| p.inner.clone());
        let progress = Progress::new(progress);
        let model = py.detach(|| {
            Model::from_dir_with_progress(&model_dir, &mut |_| progress.advance(1))
                .map_err(error::Error::from)
        });
        progress.finish()?;
        let model = model?;
        let vocab_size = model.config().vocab_size;
        let tokenizer = py
            .detach(|| Tokenizer::in_model_dir(&model_dir).map_err(error::Error::from))?
            .map(Arc::new);
        let paged = match &pool {
            Some(p) => PagedModel::with_pool(model, p.clone()),
            None => PagedModel::new(model),
        };
        let num_blocks = num_blocks.unwrap_or(max_running * max_context.div_ceil(block_size));
        let config = EngineConfig {
            kv_layout: paged.kv_layout(block_size),
            num_blocks,
            max_tokens_per_step,
            max_running,
            max_context,
            preemption: Preemption::Recompute,
            kv_dtype: KvDtype::F32,
        };
        let readiness = Adapters {
            attached: HashSet::new(),
            pool,
            pinned: HashSet::new(),
        };
        let mut engine =
            Engine::new(paged, readiness, config).map_err(|e| invalid_arg("engine", e))?;
        if let Some(tok) = &tokenizer {
            engine = engine.with_detokenizer(Arc::clone(tok));
        }
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("openledger-engine".into())
            .spawn(move || drive(engine, rx))
            .map_err(|e| invalid_arg("engine", format!("cannot start its thread: {e}")))?;
        Ok(Self {
            commands: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            vocab_size,
            max_context,
            model_dir,
            tokenizer,
        })
    }

    /// Tokens in the model's vocabulary.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest sequence (prompt and output) a request may reach.
    #[getter]
    fn max_context(&self) -> usize {
        self.max_context
    }

    /// Whether the model folder has a `tokenizer.json` (text prompts, stop strings, `text`).
    #[getter]
    fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
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

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.commands).is_none()
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
        self.call(py, |reply| Command::Attach(id, adapter, reply))?
            .map_err(error::Error::from)
    }

    /// Names of the adapters attached to the model now (directly or from the pool).
    fn adapters(&self, py: Python<'_>) -> Result<Vec<String>> {
        self.call(py, Command::Adapters)
    }

    /// Starts generating after `prompt` (token ids, or a str when the model has a tokenizer)
    /// with `adapter` (an attached or pooled adapter id; `None`: the base model) and returns
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
        let prompt = prompt_ids(py, prompt, self.tokenizer.as_ref())?;
        let stop_strings = stop_strings.unwrap_or_default();
        let pieces = TextPieces::new(&stop_strings);
        if !stop_strings.is_empty() && self.tokenizer.is_none() {
            return Err(invalid_arg(
                "stop_strings",
                format!("they need the model's {TOKENIZER_FILE}, which its folder lacks"),
            ));
        }
        let adapter = match adapter {
            None => None,
            Some(a) if a.is_none() => None,
            Some(a) => {
                let s = a.cast::<PyString>().map_err(|_| {
                    invalid_arg(
                        "adapter",
                        format!("expected an adapter id (str), got {}", type_name(a)),
                    )
                })?;
                Some(self::adapter_id(&s.to_cow()?)?)
            }
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
            },
        };
        let handle = self
            .call(py, |reply| Command::Submit(req, reply))?
            .map_err(error::Error::from)?;
        Ok(PyTokenStream {
            id: handle.id.0,
            cancel: handle.cancel.clone(),
            tokenizer: self.tokenizer.clone(),
            state: Mutex::new(StreamState {
                handle,
                tokens: Vec::new(),
                end: None,
                pieces,
            }),
        })
    }

    /// Stops the engine: requests still running end (their streams raise `EngineClosedError`)
    /// and later calls raise `EngineClosedError`. Idempotent.
    fn close(&self, py: Python<'_>) {
        let tx = lock(&self.commands).take();
        drop(tx);
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
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
            self.vocab_size,
            self.max_context,
            self.closed()
        )
    }
}

impl Drop for PyEngine {
    fn drop(&mut self) {
        // Closing the channel stops the thread; it is not joined here (no GIL games in drop).
        lock(&self.commands).take();
    }
}

enum End {
    Finished(FinishReason, RequestStats),
    Failed(RequestError, RequestStats),
    Closed,
}

struct StreamState {
    handle: RequestHandle,
    tokens: Vec<u32>,
    end: Option<End>,
    /// The text of `tokens` and what of it `new_text` handed out, brought up to date by `text`
    /// and `new_text`.
    pieces: TextPieces,
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

    /// Waits up to `timeout` (None: for ever) for the next event, GIL released.
    fn read(&self, py: Python<'_>, timeout: Option<Duration>) -> Next {
        py.detach(|| {
            let mut st = lock(&self.state);
            if let Some(end) = &st.end {
                return match end {
                    End::Finished(..) => Next::Done,
                    End::Failed(e, _) => Next::Failed(e.clone()),
                    End::Closed => Next::Closed,
                };
            }
            let event = match timeout {
                Some(t) => match st.handle.next_timeout(t) {
                    Ok(e) => Some(e),
                    Err(RecvTimeoutError::Timeout) => return Next::Timeout,
                    Err(RecvTimeoutError::Disconnected) => None,
                },
                None => st.handle.next(),
            };
            match event {
                Some(Event::Token { token, .. }) => {
                    st.tokens.push(token);
                    Next::Token(token)
                }
                Some(Event::Finished { reason, stats }) => {
                    st.end = Some(End::Finished(reason, stats));
                    Next::Done
                }
                Some(Event::Failed { error, stats }) => {
                    st.end = Some(End::Failed(error.clone(), stats));
                    Next::Failed(error)
                }
                None => {
                    st.end = Some(End::Closed);
                    Next::Closed
                }
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
                Next::Closed => return Err(engine_closed().into()),
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
        py.detach(|| lock(&self.state).tokens.clone())
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
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            st.pieces
                .update(&st.tokens, st.end.is_some(), decode)
                .map_err(|e| invalid_arg("tokens", e))?;
            let text = st.pieces.text().to_owned();
            Ok(match &st.end {
                Some(End::Finished(reason, _)) => reason.visible_text(text),
                _ => text,
            })
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
            let mut guard = lock(&self.state);
            let st = &mut *guard;
            let decode = |t: &[u32]| tok.decode(t, true).map_err(|e| e.to_string());
            let piece = st.pieces.next_piece(&st.tokens, st.end.is_some(), decode);
            Ok(piece.map_err(|e| invalid_arg("tokens", e))?.to_owned())
        })
    }

    /// The stop string that ended the request, if one did.
    #[getter]
    fn stop_string(&self, py: Python<'_>) -> Option<String> {
        py.detach(|| match &lock(&self.state).end {
            Some(End::Finished(FinishReason::StopString(s), _)) => Some(s.clone()),
            _ => None,
        })
    }

    /// Why the request ended (`"max_new_tokens"`, `"stop_token"`, `"stop_string"`,
    /// `"max_context"`, `"cancelled"`), or `None` while it runs or when it failed.
    #[getter]
    fn finish_reason(&self, py: Python<'_>) -> Option<&'static str> {
        py.detach(|| match &lock(&self.state).end {
            Some(End::Finished(r, _)) => Some(match r {
                FinishReason::StopToken(_) => "stop_token",
                FinishReason::StopString(_) => "stop_string",
                FinishReason::MaxNewTokens => "max_new_tokens",
                FinishReason::MaxContext => "max_context",
                FinishReason::Cancelled => "cancelled",
                _ => "finished",
            }),
            _ => None,
        })
    }

    /// The request's statistics once it has ended (finished or failed), else `None`.
    #[getter]
    fn stats(&self, py: Python<'_>) -> Option<PyRequestStats> {
        py.detach(|| match &lock(&self.state).end {
            Some(End::Finished(_, s)) | Some(End::Failed(_, s)) => {
                Some(PyRequestStats { inner: s.clone() })
            }
            _ => None,
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
            Next::Closed | Next::Timeout => Err(engine_closed().into()),
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
