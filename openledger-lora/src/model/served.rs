//! A model folder served by the continuous-batching engine on a thread of its own: what the
//! Python and Node engines are built on.
//!
//! [`ServedModel::load`] reads the folder (weights, and `tokenizer.json` when there is one),
//! wraps the model in a [`PagedModel`] (drawing adapters from an [`AdapterPool`] on first use
//! when one is given) and starts a thread that owns the [`Engine`]. Calls from any thread reach
//! it through a command channel and are taken between steps (but not from a request's
//! callback, which runs on the engine thread: a call there that waits for the engine would wait
//! for itself):
//!
//! - [`ServedModel::submit`] waits for the engine to take the request and returns its
//!   [`RequestHandle`] (bad input is refused there);
//! - [`ServedModel::submit_with_callback`] does not wait: the request's events go to a callback
//!   on the engine thread, and the returned [`PendingCancel`] stops it even before the engine has
//!   taken it (for callers such as an event loop that must never wait for a step);
//! - [`ServedModel::attach`], [`ServedModel::adapter_names`] and [`ServedModel::stats`] wait
//!   for their answer.
//!
//! Adapters attached directly are always ready; the others are the pool's, pinned while a
//! running request uses them and released through the pool even if the same id is attached
//! directly meanwhile. Closing (or dropping) the `ServedModel` closes the channel: the engine
//! stops, requests still running end with their event channels closed, and the adapters it held
//! are released. A panic on the engine thread stops it too; its message is kept
//! ([`ServedModel::fault`]) and every later call fails with [`ServedError::Panicked`].
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use openledger_lora::model::{ServeOptions, ServedModel};
//! use openledger_lora::serve::{Event, Request, SamplingParams};
//!
//! let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama");
//! let served = ServedModel::load(&dir, None, &ServeOptions::default(), &mut |_| {})?;
//! let sampling = SamplingParams { max_new_tokens: 4, ..Default::default() };
//! let handle = served.submit(Request { prompt: vec![1, 17, 42], adapter: None, sampling })?;
//! let tokens: Vec<u32> = handle
//!     .filter_map(|e| match e { Event::Token { token, .. } => Some(token), _ => None })
//!     .collect();
//! assert_eq!(tokens.len(), 4);
//! # Ok(()) }
//! ```

use openledger_core::error::{Classify, ErrorKind};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::adapter::LoraAdapter;
use crate::pool::{AdapterId, AdapterPool};
use crate::serve::{
    AdapterReadiness, CancelHandle, Engine, EngineConfig, EngineError, EngineLoad, Event, KvDtype,
    KvLayout, KvStorage, Preemption, Readiness, Request, RequestError, RequestHandle, RequestStats,
    StepModel,
};

use super::{LoadProgress, Model, ModelError, PagedModel, TOKENIZER_FILE, Tokenizer, WeightFormat};

/// Limits of a served model's engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Sequences running at once (default 8).
    pub max_running: usize,
    /// Tokens one step may run, decode tokens plus prefill chunks (default 256).
    pub max_tokens_per_step: usize,
    /// Longest sequence, prompt and output (default 512).
    pub max_context: usize,
    /// Positions per KV cache block (default 16).
    pub block_size: usize,
    /// Blocks in the KV pool (default: enough for `max_running` sequences of `max_context`).
    pub num_blocks: Option<usize>,
    /// How the base projections' weights are held (default f32).
    pub weights: WeightFormat,
    /// On a GPU (`openledger-gpu`'s `serve`), device memory for adapters: bytes of the adapter
    /// slab (default 1 GiB) — the device tier below the host pool. Not used on the CPU.
    pub device_adapter_bytes: usize,
    /// On a GPU, adapters the device tier holds at once (default 128). Not used on the CPU.
    pub device_adapter_slots: usize,
    /// On a GPU, the largest decode step (in sequences) run as a captured CUDA graph, replayed
    /// with one launch instead of one per kernel (default 512; 0: every step is launched
    /// kernel by kernel). Not used on the CPU.
    pub device_graph_max_batch: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_running: 8,
            max_tokens_per_step: 256,
            max_context: 512,
            block_size: 16,
            num_blocks: None,
            weights: WeightFormat::F32,
            device_adapter_bytes: 1 << 30,
            device_adapter_slots: 128,
            device_graph_max_batch: 512,
        }
    }
}

impl ServeOptions {
    /// The engine configuration for `model` (a block size of 0 is refused here, every other
    /// limit by [`Engine::new`]).
    fn engine_config<M: ServableModel>(&self, model: &M) -> Result<EngineConfig, ServedError> {
        if self.block_size == 0 {
            return Err(ServedError::Engine(EngineError::Config {
                reason: "block_size must be at least 1".into(),
            }));
        }
        let per_seq = self.max_context.div_ceil(self.block_size);
        Ok(EngineConfig {
            kv_layout: model.kv_layout(self.block_size),
            num_blocks: self
                .num_blocks
                .unwrap_or(self.max_running.saturating_mul(per_seq)),
            max_tokens_per_step: self.max_tokens_per_step,
            max_running: self.max_running,
            max_context: self.max_context,
            preemption: Preemption::Recompute,
            kv_dtype: model.kv_dtype(),
        })
    }
}

/// A model the serving engine can run on a thread of its own behind a [`ServedModel`]: a
/// [`StepModel`] that says its cache's shape and type, and takes adapters attached by id.
/// [`PagedModel`] (the CPU model) is one; the GPU model of `openledger-gpu` is another.
pub trait ServableModel:
    StepModel<Storage: KvStorage<Swapped: Send> + Send> + Send + 'static
{
    /// The KV cache's layout for blocks of `block_size` positions.
    fn kv_layout(&self, block_size: usize) -> KvLayout;
    /// The type the KV cache holds.
    fn kv_dtype(&self) -> KvDtype;
    /// Attaches `adapter` under `id`, replacing an adapter attached under that id before.
    fn attach_adapter(
        &mut self,
        id: &AdapterId,
        adapter: &Arc<LoraAdapter>,
    ) -> Result<(), ServedError>;
    /// Names of the adapters attached now (directly or from the pool).
    fn adapter_names(&self) -> Vec<String>;
    /// Figures of the model's own beyond the engine's (a device's memory by component, its
    /// CUDA graphs, its adapter tier): none unless the model says otherwise.
    fn metrics(&self) -> Vec<ModelMetric> {
        Vec::new()
    }
}

/// Whether a [`ModelMetric`] only grows (a counter) or goes up and down (a gauge), as
/// Prometheus distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Goes up and down.
    Gauge,
    /// Only grows while the model lives.
    Counter,
}

/// One figure a model reports about itself: a name (a Prometheus metric name, `_total` ending
/// the counters'), what it means, optional labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetric {
    /// The metric's name.
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// Label names and values (e.g. `component="weights"`).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl ModelMetric {
    /// A gauge without labels.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Gauge,
            labels: Vec::new(),
            value,
        }
    }

    /// A counter without labels.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            kind: MetricKind::Counter,
            ..Self::gauge(name, help, value)
        }
    }

    /// The same metric with label `name` set to `value`.
    pub fn with_label(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((name, value.into()));
        self
    }
}

/// What [`ServedModel::stats`] answers: the engine's load and counters, and the model's own
/// figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedStats {
    /// The engine's queues, KV pool and counters.
    pub engine: EngineLoad,
    /// The model's own figures ([`ServableModel::metrics`]).
    pub model: Vec<ModelMetric>,
}

impl ServableModel for PagedModel {
    fn kv_layout(&self, block_size: usize) -> KvLayout {
        PagedModel::kv_layout(self, block_size)
    }

    fn kv_dtype(&self) -> KvDtype {
        KvDtype::F32
    }

    fn attach_adapter(
        &mut self,
        id: &AdapterId,
        adapter: &Arc<LoraAdapter>,
    ) -> Result<(), ServedError> {
        self.attach(id.clone(), adapter)
            .map(drop)
            .map_err(ServedError::from)
    }

    fn adapter_names(&self) -> Vec<String> {
        let names = self.model().adapter_names();
        names.into_iter().map(str::to_string).collect()
    }
}

/// Why a [`ServedModel`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum ServedError {
    /// The model folder could not be loaded, or an adapter does not fit the model.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The engine's limits cannot work.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The engine refused the request (bad input, an unknown adapter).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The engine thread could not be started.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
    /// The engine was closed.
    #[error("the engine is closed")]
    Closed,
    /// An adapter id cannot be attached again while requests queued or running name it.
    #[error("adapter {id:?} has {requests} pending requests; attach it again once they end")]
    AdapterInUse {
        /// The adapter id.
        id: String,
        /// Requests pending (queued or running) with it.
        requests: usize,
    },
    /// The engine did not answer within the wait the call allows (it is in a long step, or
    /// stuck); the call's answer is dropped when it comes.
    #[error("the engine did not answer {what} within {waited_ms} ms")]
    Busy {
        /// The call.
        what: &'static str,
        /// How long it waited, in milliseconds.
        waited_ms: u64,
    },
    /// The engine thread stopped on a panic (a bug); every later call fails with this.
    #[error("the engine stopped on a panic: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The device the model was asked to run on refused or failed (a build without its
    /// support, a missing driver or device, device memory, something the device model does not
    /// do yet).
    #[error("device {device}: {source}")]
    Device {
        /// The device, as it was named (`cuda:0`).
        device: String,
        /// The kind of the device's error.
        kind: ErrorKind,
        /// The device's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Classify for ServedError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServedError::Model(e) => e.kind(),
            ServedError::Engine(e) => e.kind(),
            ServedError::Request(e) => e.kind(),
            ServedError::Thread(e) => ErrorKind::of_io(e),
            ServedError::Closed => ErrorKind::Closed,
            ServedError::AdapterInUse { .. } => ErrorKind::State,
            ServedError::Busy { .. } => ErrorKind::Busy,
            ServedError::Panicked { .. } => ErrorKind::Internal,
            ServedError::Device { kind, .. } => *kind,
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            ServedError::Model(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<ModelError> for ServedError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// Adapters attached to the model directly are always ready; the others are the pool's.
struct AttachedOrPooled {
    attached: HashSet<AdapterId>,
    pool: Option<AdapterPool>,
    /// Adapters this engine pinned in the pool, with how many pins it holds on each (an adapter
    /// held alone and as a member of an ensemble is pinned twice): released through the pool
    /// even if the id was attached directly meanwhile.
    pinned: HashMap<AdapterId, usize>,
}

impl AttachedOrPooled {
    /// The adapter `id` names that is neither attached nor registered (an ensemble: its first
    /// such member), if any.
    fn unknown(&self, id: &AdapterId) -> Option<AdapterId> {
        id.adapters().into_iter().find(|a| {
            !(self.attached.contains(a) || self.pool.as_ref().is_some_and(|p| p.is_registered(a)))
        })
    }
}

impl Drop for AttachedOrPooled {
    /// Pins still held (the engine releases each adapter when its last request ends; a step
    /// that panicked between pinning and recording the hold leaves one behind) go back to the
    /// pool, which may be shared with other engines.
    fn drop(&mut self) {
        if let Some(pool) = &mut self.pool {
            for (id, pins) in self.pinned.drain() {
                for _ in 0..pins {
                    pool.release(&id);
                }
            }
        }
    }
}

impl AdapterReadiness for AttachedOrPooled {
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
                    *self.pinned.entry(adapter.clone()).or_default() += 1;
                }
                r
            }
            (None, false) => Readiness::Unknown,
        }
    }

    fn release(&mut self, adapter: &AdapterId) {
        if let Some(pool) = &mut self.pool
            && let Some(pins) = self.pinned.get_mut(adapter)
        {
            *pins -= 1;
            if *pins == 0 {
                self.pinned.remove(adapter);
            }
            pool.release(adapter);
        }
    }
}

type Inner<M> = Engine<M, AttachedOrPooled>;

/// The cancel handle of a request submitted without waiting: filled in when the engine takes
/// the request; `requested` remembers a cancellation asked for before that.
#[derive(Default)]
struct CancelSlot {
    handle: Option<CancelHandle>,
    requested: bool,
}

/// Cancels a request submitted with [`ServedModel::submit_with_callback`], whether or not the
/// engine has taken it yet.
#[derive(Clone, Default)]
pub struct PendingCancel(Arc<Mutex<CancelSlot>>);

impl PendingCancel {
    /// Asks for the request to stop (at the engine's next step; a request the engine has not
    /// taken yet is cancelled as it is taken).
    pub fn cancel(&self) {
        let mut slot = lock(&self.0);
        slot.requested = true;
        if let Some(h) = &slot.handle {
            h.cancel();
        }
    }
}

impl std::fmt::Debug for PendingCancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = lock(&self.0);
        f.debug_struct("PendingCancel")
            .field("taken", &slot.handle.is_some())
            .field("requested", &slot.requested)
            .finish()
    }
}

type OnEvent = Box<dyn FnMut(&Event) + Send>;

enum Command {
    Submit(Request, Sender<Result<RequestHandle, RequestError>>),
    SubmitWithCallback(Request, OnEvent, PendingCancel),
    Attach(AdapterId, Arc<LoraAdapter>, Sender<Result<(), ServedError>>),
    Adapters(Sender<Vec<String>>),
    Stats(Sender<ServedStats>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the engine thread has stopped, and the message of the panic that stopped it.
#[derive(Default)]
struct Stop {
    stopped: bool,
    panic: Option<String>,
}

/// The engine thread's [`Stop`], and a signal for those waiting for it.
#[derive(Default)]
struct StopState {
    stop: Mutex<Stop>,
    changed: Condvar,
}

impl StopState {
    /// The panic message, without waiting.
    fn panic(&self) -> Option<String> {
        lock(&self.stop).panic.clone()
    }

    /// Why the engine takes no more calls, once its channel is seen closed: waits (up to a few
    /// seconds) for the thread to record how it stopped, since a panic drops reply channels
    /// and request sinks while it unwinds, before its message is recorded.
    fn gone(&self) -> ServedError {
        let stop = lock(&self.stop);
        let (stop, _) = self
            .changed
            .wait_timeout_while(stop, Duration::from_secs(5), |s| !s.stopped)
            .unwrap_or_else(|p| p.into_inner());
        match &stop.panic {
            Some(message) => ServedError::Panicked {
                message: message.clone(),
            },
            None => ServedError::Closed,
        }
    }
}

/// Runs the engine until the command channel closes, then drops it. A panic stops the engine;
/// either way the thread records how it stopped in `state`.
fn drive<M: ServableModel>(
    mut engine: Inner<M>,
    commands: Receiver<Command>,
    state: Arc<StopState>,
) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drive_loop(&mut engine, &commands)
    }));
    let panic = run.err().map(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into())
    });
    *lock(&state.stop) = Stop {
        stopped: true,
        panic,
    };
    state.changed.notify_all();
}

fn drive_loop<M: ServableModel>(engine: &mut Inner<M>, commands: &Receiver<Command>) {
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
            handle(engine, cmd);
            continue; // take every queued command before the next step
        }
        match engine.step() {
            // Every pending request waits on an adapter load: wait a little for commands.
            Ok(r) if r.batch_seqs == 0 && r.ended == 0 && r.preempted == 0 => {
                match commands.recv_timeout(Duration::from_millis(1)) {
                    Ok(cmd) => handle(engine, cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            // A failed forward pass failed the requests of its batch; the others go on.
            Ok(_) | Err(_) => {}
        }
    }
}

/// An adapter the request names but nobody knows: refused before it reaches the scheduler
/// (which would wait for a pool that will never load it).
fn unknown_adapter<M: ServableModel>(engine: &Inner<M>, req: &Request) -> Option<RequestError> {
    let adapter = engine.readiness().unknown(req.adapter.as_ref()?)?;
    Some(RequestError::UnknownAdapter { adapter })
}

fn handle<M: ServableModel>(engine: &mut Inner<M>, cmd: Command) {
    match cmd {
        Command::Submit(req, reply) => {
            if let Some(error) = unknown_adapter(engine, &req) {
                let _ = reply.send(Err(error));
                return;
            }
            let h = engine.submit(req);
            // Bad input is refused at submission: its failure is already in the channel.
            let answer = match h.try_next() {
                Some(Event::Failed { error, .. }) => Err(error),
                _ => Ok(h),
            };
            let _ = reply.send(answer);
        }
        Command::SubmitWithCallback(req, mut on_event, pending) => {
            if let Some(error) = unknown_adapter(engine, &req) {
                let stats = RequestStats::default();
                on_event(&Event::Failed { error, stats });
                return;
            }
            let (_, cancel) = engine.submit_with_callback(req, on_event);
            let mut slot = lock(&pending.0);
            if slot.requested {
                cancel.cancel();
            }
            slot.handle = Some(cancel);
        }
        Command::Attach(id, adapter, reply) => {
            // Requests running with the adapter keep it: swapping weights under them would mix
            // two adapters in one answer.
            // Requests still queued for it count too: they were submitted against the
            // adapter attached now.
            let r = match engine.requests_naming(&id) {
                requests @ 1.. => Err(ServedError::AdapterInUse {
                    id: id.to_string(),
                    requests,
                }),
                0 => engine.model_mut().attach_adapter(&id, &adapter),
            };
            if r.is_ok() {
                engine.readiness_mut().attached.insert(id);
            }
            let _ = reply.send(r);
        }
        Command::Adapters(reply) => {
            let _ = reply.send(engine.model().adapter_names());
        }
        Command::Stats(reply) => {
            let _ = reply.send(ServedStats {
                engine: engine.load(),
                model: engine.model().metrics(),
            });
        }
    }
}

/// A model folder served by the continuous-batching engine on a thread of its own: calls reach
/// the engine's thread through a command channel and are taken between steps
/// ([`load`](Self::load), [`submit`](Self::submit), [`attach`](Self::attach)). Every method
/// takes `&self`; it is `Send` and `Sync`.
pub struct ServedModel {
    commands: Mutex<Option<Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    state: Arc<StopState>,
    vocab_size: usize,
    max_context: usize,
    model_dir: PathBuf,
    tokenizer: Option<Arc<Tokenizer>>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("model_dir", &self.model_dir)
            .field("vocab_size", &self.vocab_size)
            .field("max_context", &self.max_context)
            .field("has_tokenizer", &self.tokenizer.is_some())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ServedModel {
    /// Loads the HF model folder `model_dir` (config.json and safetensors; `tokenizer.json`
    /// when present) and starts its engine. With `pool`, requests may name any adapter
    /// registered there: it is loaded and attached on first use. `progress` sees each weight
    /// file read and each layer built.
    pub fn load(
        model_dir: &Path,
        pool: Option<AdapterPool>,
        options: &ServeOptions,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ServedError> {
        let model = Model::from_dir_with_format(model_dir, options.weights, progress)?;
        let tokenizer = Tokenizer::in_model_dir(model_dir)?.map(Arc::new);
        Self::start(model, tokenizer, model_dir, pool, options)
    }

    /// Starts an engine serving `model` (loaded from `model_dir`, named in errors) with
    /// `tokenizer` for text, stop strings and streamed text.
    pub fn start(
        model: Model,
        tokenizer: Option<Arc<Tokenizer>>,
        model_dir: &Path,
        pool: Option<AdapterPool>,
        options: &ServeOptions,
    ) -> Result<Self, ServedError> {
        let paged = match &pool {
            Some(p) => PagedModel::with_pool(model, p.clone()),
            None => PagedModel::new(model),
        };
        Self::start_model(paged, tokenizer, model_dir, pool, options)
    }

    /// Starts an engine serving any [`ServableModel`] (a GPU model, say). With `pool`, the
    /// model must draw its adapters from a clone of the same pool (the engine checks their
    /// readiness there).
    pub fn start_model<M: ServableModel>(
        model: M,
        tokenizer: Option<Arc<Tokenizer>>,
        model_dir: &Path,
        pool: Option<AdapterPool>,
        options: &ServeOptions,
    ) -> Result<Self, ServedError> {
        let vocab_size = model.vocab_size();
        let config = options.engine_config(&model)?;
        let readiness = AttachedOrPooled {
            attached: HashSet::new(),
            pool,
            pinned: HashMap::new(),
        };
        let mut engine = Engine::new(model, readiness, config)?;
        if let Some(tok) = &tokenizer {
            engine = engine.with_detokenizer(Arc::clone(tok));
        }
        let (tx, rx) = mpsc::channel();
        let state = Arc::new(StopState::default());
        let st = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("openledger-engine".into())
            .spawn(move || drive(engine, rx, st))
            .map_err(ServedError::Thread)?;
        Ok(Self {
            commands: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            state,
            vocab_size,
            max_context: options.max_context,
            model_dir: model_dir.to_path_buf(),
            tokenizer,
        })
    }

    /// Tokens in the model's vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest sequence (prompt and output) a request may reach.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// The folder the model was loaded from.
    pub fn model_dir(&self) -> &Path {
        &self.model_dir
    }

    /// The model's tokenizer, if its folder has one.
    pub fn tokenizer(&self) -> Option<&Arc<Tokenizer>> {
        self.tokenizer.as_ref()
    }

    /// The model's tokenizer; without one, a [`ModelError::Tokenizer`] saying that `what`
    /// needs it.
    pub fn require_tokenizer(&self, what: &str) -> Result<&Arc<Tokenizer>, ModelError> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Tokenizer {
                what: TOKENIZER_FILE.into(),
                reason: format!(
                    "the model folder {} has none: {what}",
                    self.model_dir.display()
                ),
            })
    }

    /// Whether the engine takes no more calls: [`close`](Self::close) was called, or its thread
    /// stopped on a panic.
    pub fn is_closed(&self) -> bool {
        lock(&self.commands).is_none() || lock(&self.state.stop).stopped
    }

    /// The message of the panic that stopped the engine thread, if one did.
    pub fn fault(&self) -> Option<String> {
        self.state.panic()
    }

    /// A handle that tells, from elsewhere (a stream that outlives its engine's handle), why the
    /// engine stopped.
    pub fn fault_watch(&self) -> FaultWatch {
        FaultWatch(Arc::clone(&self.state))
    }

    /// Fails as later calls would once the engine is closed or stopped on a panic
    /// ([`ServedError::Closed`], [`ServedError::Panicked`]); `Ok` while it takes calls. For a
    /// caller that prepares work (reads a file, hands a call to another thread) before making
    /// the call, to fail first.
    pub fn ensure_open(&self) -> Result<(), ServedError> {
        self.sender().map(drop)
    }

    fn sender(&self) -> Result<Sender<Command>, ServedError> {
        if let Some(message) = self.fault() {
            return Err(ServedError::Panicked { message });
        }
        lock(&self.commands).clone().ok_or(ServedError::Closed)
    }

    /// Sends a command and waits for its answer.
    fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, ServedError> {
        let tx = self.sender()?;
        let (reply, answer) = mpsc::channel();
        tx.send(make(reply)).map_err(|_| self.state.gone())?;
        answer.recv().map_err(|_| self.state.gone())
    }

    /// Submits `req` and waits until the engine takes it (between two steps). Bad input (an
    /// empty or too long prompt, a token outside the vocabulary, an unknown adapter, invalid
    /// sampling parameters) is refused here with [`ServedError::Request`].
    pub fn submit(&self, req: Request) -> Result<RequestHandle, ServedError> {
        self.call(|reply| Command::Submit(req, reply))?
            .map_err(ServedError::Request)
    }

    /// Submits `req` without waiting: its events go to `on_event` on the engine thread (bad
    /// input arrives there as [`Event::Failed`]). The returned handle cancels it.
    pub fn submit_with_callback(
        &self,
        req: Request,
        on_event: impl FnMut(&Event) + Send + 'static,
    ) -> Result<PendingCancel, ServedError> {
        let tx = self.sender()?;
        let pending = PendingCancel::default();
        tx.send(Command::SubmitWithCallback(
            req,
            Box::new(on_event),
            pending.clone(),
        ))
        .map_err(|_| self.state.gone())?;
        Ok(pending)
    }

    /// Attaches `adapter` under `id`; requests may then name it. An adapter attached under `id`
    /// before is replaced when no request is running with it; while requests are,
    /// [`ServedError::AdapterInUse`] (nothing changes). An adapter made for another base is a
    /// [`ModelError`].
    pub fn attach(&self, id: AdapterId, adapter: Arc<LoraAdapter>) -> Result<(), ServedError> {
        self.call(|reply| Command::Attach(id, adapter, reply))?
    }

    /// Names of the adapters attached to the model now (directly or from the pool).
    pub fn adapter_names(&self) -> Result<Vec<String>, ServedError> {
        self.call(Command::Adapters)
    }

    /// The engine's load (waiting, running and swapped requests, KV blocks free), its counters
    /// since it started (steps, preemptions, tokens) and the model's own figures, taken
    /// between two steps.
    pub fn stats(&self) -> Result<ServedStats, ServedError> {
        self.call(Command::Stats)
    }

    /// [`stats`](Self::stats), waiting at most `wait` for the engine to take the call (a
    /// metrics scrape must not wait on a long step): [`ServedError::Busy`] past it.
    pub fn stats_within(&self, wait: Duration) -> Result<ServedStats, ServedError> {
        let tx = self.sender()?;
        let (reply, answer) = mpsc::channel();
        tx.send(Command::Stats(reply))
            .map_err(|_| self.state.gone())?;
        match answer.recv_timeout(wait) {
            Ok(stats) => Ok(stats),
            Err(RecvTimeoutError::Timeout) => Err(ServedError::Busy {
                what: "a stats call",
                waited_ms: wait.as_millis().try_into().unwrap_or(u64::MAX),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(self.state.gone()),
        }
    }

    /// Closes the command channel: the engine takes the commands already sent, finishes its
    /// current step and stops; requests still running end with their event channels closed,
    /// and later calls fail with [`ServedError::Closed`] (or [`ServedError::Panicked`] if the
    /// engine had stopped on a panic). Returns the engine thread the first time, for the
    /// caller to join where waiting suits it (never from a request's callback); `None` after
    /// that.
    pub fn close(&self) -> Option<JoinHandle<()>> {
        drop(lock(&self.commands).take());
        lock(&self.thread).take()
    }
}

impl Drop for ServedModel {
    fn drop(&mut self) {
        // Closing the channel stops the thread; it is not joined here (a drop may run on a
        // thread that must not wait for a step).
        lock(&self.commands).take();
    }
}

/// Tells why a [`ServedModel`]'s engine stopped, from a stream that outlives the handle.
#[derive(Clone)]
pub struct FaultWatch(Arc<StopState>);

impl FaultWatch {
    /// The panic message, if the engine thread stopped on a panic; without waiting.
    pub fn get(&self) -> Option<String> {
        self.0.panic()
    }

    /// Why a request's events stopped without a last event: the engine stopped, on a panic
    /// ([`ServedError::Panicked`]) or closed ([`ServedError::Closed`]). Waits (up to a few
    /// seconds) for the engine thread to record how it stopped.
    pub fn stopped(&self) -> ServedError {
        self.0.gone()
    }
}

impl std::fmt::Debug for FaultWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FaultWatch").field(&self.get()).finish()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Source;

    fn fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
    }

    /// An adapter pinned from the pool is unpinned when its last request ends even if the same
    /// id was attached directly meanwhile; one attached first is never pinned.
    #[test]
    fn pool_pins_are_released_after_a_direct_attach() {
        let pool: AdapterPool = AdapterPool::new(64 << 20);
        let id = AdapterId::new("qv-r4").unwrap();
        pool.register(id.clone(), Source::Dir(fixture().join("adapters/qv-r4")))
            .unwrap();
        let mut r = AttachedOrPooled {
            attached: HashSet::new(),
            pool: Some(pool.clone()),
            pinned: HashMap::new(),
        };
        while r.acquire(&id) == Readiness::Loading {
            std::thread::yield_now();
        }
        assert_eq!(pool.stats().pinned_count, 1);
        r.attached.insert(id.clone());
        r.release(&id);
        assert_eq!(pool.stats().pinned_count, 0, "pin leaked");
        assert_eq!(r.acquire(&id), Readiness::Ready);
        assert_eq!(
            pool.stats().pinned_count,
            0,
            "attached adapters are not pinned"
        );
        r.release(&id);
        assert_eq!(pool.stats().pinned_count, 0);
    }

    /// An adapter held twice (alone and as a member of an ensemble) keeps its pin until both
    /// holds are released.
    #[test]
    fn pins_held_twice_are_released_twice() {
        let pool: AdapterPool = AdapterPool::new(64 << 20);
        let id = AdapterId::new("qv-r4").unwrap();
        pool.register(id.clone(), Source::Dir(fixture().join("adapters/qv-r4")))
            .unwrap();
        let mut r = AttachedOrPooled {
            attached: HashSet::new(),
            pool: Some(pool.clone()),
            pinned: HashMap::new(),
        };
        while r.acquire(&id) == Readiness::Loading {
            std::thread::yield_now();
        }
        assert_eq!(r.acquire(&id), Readiness::Ready);
        r.release(&id);
        assert_eq!(pool.stats().pinned_count, 1, "one hold is left");
        assert!(matches!(
            pool.unregister(&id),
            Err(crate::pool::PoolError::Pinned { .. })
        ));
        r.release(&id);
        assert_eq!(pool.stats().pinned_count, 0);
        let ens = AdapterId::parse("qv-r4+nope").unwrap();
        assert_eq!(r.unknown(&ens), Some(AdapterId::new("nope").unwrap()));
        assert_eq!(r.unknown(&id), None);
    }
}
