//! An OpenAI-compatible HTTP server over the multi-LoRA engine ([`ServedModel`]): the base
//! model and every adapter of the adapters folder are models of the API, chosen per request by
//! the `model` field, as vLLM, LoRAX and llama.cpp's server choose them. A `model` may also
//! spell an ensemble of loaded adapters, `a+b` or `a*0.7+b*0.3`
//! ([`AdapterId::parse`](openledger_lora::pool::AdapterId::parse)): served from its members in
//! the same batch as every other request, with no merged copy.
//!
//! - `GET /v1/models`: the base and every registered adapter (`parent`: the base).
//! - `POST /v1/chat/completions`: messages rendered with the model folder's chat template
//!   ([`ChatTemplate`]); `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`,
//!   `seed`, `stop` (a string or a list), `n`, `logprobs` / `top_logprobs`, `stream` over
//!   server-sent events with `stream_options.include_usage`.
//! - `POST /v1/completions`: a text, texts or token ids; `logprobs` as a count.
//! - `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter` (vLLM's names): adapters
//!   added and removed while the server runs, no restart.
//! - `GET /health`, and `GET /metrics` in Prometheus' text format ([`metrics`]).
//!
//! Bad input is a 4xx whose OpenAI-shaped body names the field (an unknown model is 404
//! `model_not_found`, a prompt past the context 400 `context_length_exceeded`); with an API
//! key file ([`auth`]) requests need a bearer key, are rate limited per key (429), and only admin
//! keys may load or unload adapters (403). A client that disconnects cancels its request (its
//! sequences stop at the engine's next step); a graceful shutdown waits for running streams.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use openledger_server::{Server, ServerConfig};
//!
//! let config = ServerConfig::new("models/base".into()).with_adapters("models/adapters".into());
//! let server = Server::load(config, &mut |_| {})?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod attribution;
pub mod auth;
pub mod error;
pub mod hub;
pub mod metrics;
mod routes;

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

pub use openledger::gpu::Device;
use openledger_lora::model::{
    GgufFile, LoadProgress, ModelError, ServeOptions, ServedError, ServedModel, Tokenizer,
};
use openledger_lora::pool::{AdapterId, AdapterPool, HubDir, PoolError, Source};
use parking_lot::Mutex;

pub use attribution::{AttributionConfig, ChainTarget};
pub use auth::{ApiKeys, KeyFileError, KeyInfo};
pub use error::ApiError;
pub use metrics::Metrics;
pub use openledger_lora::model::template;
pub use openledger_lora::model::{
    ChatMessage, ChatTemplate, TemplateError, WeightFormat, eos_token_ids,
};

/// Limits and sources of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The base model: an HF folder (config.json, safetensors, tokenizer.json, and the chat
    /// template in `tokenizer_config.json` or `chat_template.jinja`), or a llama-family GGUF
    /// file (weights dequantized to f32, its tokenizer and chat template from its metadata).
    pub model_dir: PathBuf,
    /// A folder of PEFT adapters (`NAME/` or `ORG/NAME/`, each with `adapter_config.json`),
    /// registered at start; adapters loaded at run time must lie inside it.
    pub adapters_dir: Option<PathBuf>,
    /// The base model's name in the API (default: its folder's name).
    pub model_name: Option<String>,
    /// The engine's limits.
    pub serve: ServeOptions,
    /// Where the model runs (default the CPU; `cuda:N` needs the `cuda` feature, a GGUF file
    /// runs on the CPU only).
    pub device: Device,
    /// Bytes of adapters the pool keeps resident (default 1 GiB).
    pub pool_budget_bytes: usize,
    /// A file of API keys ([`auth`]); none: every request is admitted.
    pub api_keys: Option<PathBuf>,
    /// The largest request body taken (default 1 MiB).
    pub max_body_bytes: usize,
    /// The most choices one request may ask for, prompts × `n` (default 16).
    pub max_choices: usize,
    /// The datanet, fee split and signer of the `openledger` extension; none: requests that
    /// ask for it are refused.
    pub attribution: Option<AttributionConfig>,
    /// A remote hub adapters are fetched from (registered here, or loaded at run time with a
    /// `lora_path` of `hub:REPO[@REVISION]`).
    pub hub: Option<HubConfig>,
}

/// A remote hub of adapters.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The hub's address (`http://` or `https://`), serving `{repo}/resolve/{revision}/{file}`.
    pub endpoint: String,
    /// Where fetched files are cached.
    pub cache: PathBuf,
    /// Adapters registered at start: `(name, "REPO[@REVISION]")`.
    pub adapters: Vec<(String, String)>,
}

impl ServerConfig {
    /// A server of the model in `model_dir` with default limits and no adapters.
    pub fn new(model_dir: PathBuf) -> Self {
        Self {
            model_dir,
            adapters_dir: None,
            model_name: None,
            serve: ServeOptions::default(),
            device: Device::Cpu,
            pool_budget_bytes: 1 << 30,
            api_keys: None,
            max_body_bytes: 1 << 20,
            max_choices: 16,
            attribution: None,
            hub: None,
        }
    }

    /// With the adapters of `dir`.
    pub fn with_adapters(mut self, dir: PathBuf) -> Self {
        self.adapters_dir = Some(dir);
        self
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model could not be loaded or its engine started.
    #[error(transparent)]
    Served(#[from] ServedError),
    /// The model folder has no `tokenizer.json`.
    #[error("the model folder {0} has no tokenizer.json: the server needs it for text")]
    NoTokenizer(PathBuf),
    /// The chat template could not be loaded.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The adapters folder could not be opened or scanned.
    #[error("adapters folder: {0}")]
    Adapters(#[from] PoolError),
    /// The API key file is unreadable or malformed.
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    /// The hub's address or an adapter's repository is not acceptable.
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    /// A hub adapter's name is not a valid adapter id.
    #[error("hub adapter {name:?}: {reason}")]
    HubAdapter {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// The GGUF model could not be read.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// A model file other than the weights is malformed.
    #[error("{path}: {reason}")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<ModelError> for ServerError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// What the handlers share.
pub(crate) struct State {
    served: ServedModel,
    tokenizer: Arc<Tokenizer>,
    pool: Option<AdapterPool>,
    adapters_root: Option<HubDir>,
    hub: Option<Arc<hub::HubClient>>,
    adapters: Mutex<BTreeSet<String>>,
    base_name: String,
    template: Option<ChatTemplate>,
    eos: Vec<u32>,
    keys: Option<ApiKeys>,
    metrics: Arc<Metrics>,
    max_body_bytes: usize,
    max_choices: usize,
    attributor: Option<attribution::Attributor>,
    created: u64,
    next_id: AtomicU64,
}

/// A loaded model and its adapters, ready to serve.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("model", &self.state.base_name)
            .field("served", &self.state.served)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads the model (reporting each weight file and layer to `progress`), registers the
    /// adapters folder's adapters and reads the key file.
    pub fn load(
        config: ServerConfig,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ServerError> {
        let keys = config
            .api_keys
            .as_deref()
            .map(ApiKeys::from_file)
            .transpose()?;
        let gguf = config.model_dir.is_file()
            && config
                .model_dir
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let gguf = if gguf {
            Some(GgufFile::open(&config.model_dir)?)
        } else {
            None
        };
        let (template, eos) = match &gguf {
            Some(g) => (ChatTemplate::from_gguf(g)?, g.eos_token_ids()),
            None => (
                ChatTemplate::from_model_dir(&config.model_dir)?,
                eos_token_ids(&config.model_dir)?,
            ),
        };
        let attributor = config
            .attribution
            .as_ref()
            .map(attribution::Attributor::load)
            .transpose()?;
        let remote = config
            .hub
            .as_ref()
            .map(|h| hub::HubClient::new(&h.endpoint, h.cache.clone()).map(Arc::new))
            .transpose()?;
        let pool = (config.adapters_dir.is_some() || remote.is_some())
            .then(|| AdapterPool::new(config.pool_budget_bytes));
        let mut names = BTreeSet::new();
        let root = match (&config.adapters_dir, &pool) {
            (Some(dir), Some(pool)) => {
                let root = HubDir::open(dir)?;
                pool.register_hub(&root)?;
                names.extend(root.ids()?.iter().map(|id| id.to_string()));
                Some(root)
            }
            _ => None,
        };
        if let (Some(h), Some(client), Some(pool)) = (&config.hub, &remote, &pool) {
            for (name, spec) in &h.adapters {
                let id = AdapterId::new(name).map_err(|e| ServerError::HubAdapter {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
                let source = hub::HubAdapter::parse(Arc::clone(client), spec)?;
                pool.register(id, Source::Custom(Arc::new(source)))?;
                names.insert(name.clone());
            }
        }
        let serve = if gguf.is_some() {
            openledger::gpu::serve_gguf
        } else {
            openledger::gpu::serve
        };
        let served = serve(
            &config.model_dir,
            config.device,
            pool.clone(),
            &config.serve,
            progress,
        )?;
        let tokenizer = served
            .tokenizer()
            .cloned()
            .ok_or_else(|| ServerError::NoTokenizer(config.model_dir.clone()))?;
        let base_name = config.model_name.clone().unwrap_or_else(|| {
            config
                .model_dir
                .canonicalize()
                .ok()
                .and_then(|p| {
                    // A GGUF file is named by its stem, a folder by its name.
                    let name = if gguf.is_some() {
                        p.file_stem()
                    } else {
                        p.file_name()
                    };
                    name.map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_else(|| "base".into())
        });
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            state: Arc::new(State {
                served,
                tokenizer,
                pool,
                adapters_root: root,
                hub: remote,
                adapters: Mutex::new(names),
                base_name,
                template,
                eos,
                keys,
                metrics: Arc::default(),
                max_body_bytes: config.max_body_bytes,
                max_choices: config.max_choices.max(1),
                attributor,
                created,
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// The base model's name in the API.
    pub fn model_name(&self) -> &str {
        &self.state.base_name
    }

    /// The engine, for in-process requests beside the HTTP ones.
    pub fn served(&self) -> &ServedModel {
        &self.state.served
    }

    /// The address that signs the receipts, when the server attributes.
    pub fn operator(&self) -> Option<openledger_core::Address> {
        self.state.attributor.as_ref().map(|a| a.operator())
    }

    /// The ids of the adapters requests may name.
    pub fn adapter_names(&self) -> Vec<String> {
        self.state.adapters.lock().iter().cloned().collect()
    }

    /// The HTTP routes, for a listener of the caller's or in-process calls.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.state))
    }

    /// Serves on `listener` until `shutdown` completes, then stops taking connections, waits
    /// for the requests and streams in flight to end, and closes the engine.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        if let Some(thread) = self.state.served.close() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        Ok(())
    }
}
