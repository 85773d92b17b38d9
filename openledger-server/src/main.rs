//! `openledger serve`: the OpenAI-compatible server of a model folder and its adapters.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openledger_core::B256;
use openledger_lora::model::{LoadProgress, ServeOptions};
use openledger_server::{AttributionConfig, ChainTarget, HubConfig, Server, ServerConfig};

/// The openledger command line.
#[derive(Parser, Debug)]
#[command(
    name = "openledger",
    version,
    about = "Payable AI: serve, attribute, settle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a model and its LoRA adapters over OpenAI's HTTP API.
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// The base model's HF folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// A folder of PEFT adapters, each a model of the API under its folder name.
    #[arg(long)]
    adapters: Option<PathBuf>,
    /// The base model's name in the API (default: its folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Address to bind (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to bind (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// A file of API keys (one per line: KEY [name=NAME] [rpm=N] [admin]).
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// Sequences the engine runs at once.
    #[arg(long, default_value_t = 8)]
    max_running: usize,
    /// Longest sequence, prompt and output, in tokens.
    #[arg(long, default_value_t = 512)]
    max_context: usize,
    /// Tokens one engine step may run.
    #[arg(long, default_value_t = 256)]
    max_tokens_per_step: usize,
    /// MiB of adapters kept resident.
    #[arg(long, default_value_t = 1024)]
    pool_mib: usize,
    /// Largest request body in KiB.
    #[arg(long, default_value_t = 1024)]
    max_body_kib: usize,
    /// A datanet (JSONL records) to attribute answers to: responses that ask for the
    /// `openledger` extension get citations, the fee split and a signed receipt.
    #[arg(long)]
    datanet: Option<PathBuf>,
    /// A sentence-transformers folder (all-MiniLM-L6-v2) for the datanet's retrieval (default:
    /// feature hashing).
    #[arg(long)]
    embedder: Option<PathBuf>,
    /// The fee of one inference in wei.
    #[arg(long, default_value = "1000000000000000")]
    fee_wei: String,
    /// The model owner's account.
    #[arg(long, default_value = "0x0000000000000000000000000000000000000000")]
    owner: String,
    /// The protocol treasury.
    #[arg(long, default_value = "0x0000000000000000000000000000000000000000")]
    protocol: String,
    /// The protocol's share of each fee, in basis points.
    #[arg(long, default_value_t = 500)]
    protocol_bps: u16,
    /// The data contributors' share of each fee, in basis points.
    #[arg(long, default_value_t = 3000)]
    data_pool_bps: u16,
    /// Pay each attributed inference on a chain: `embedded` (an in-process EVM running the
    /// contracts, deployed at start) or a node's JSON-RPC endpoint (`http(s)://…`, the
    /// contracts deployed there at start, sent from the keys in `OPENLEDGER_KEYS`, or from
    /// anvil's well-known dev keys when that is unset).
    #[arg(long)]
    chain: Option<String>,
    /// The chain id of the receipts' EIP-712 domain.
    #[arg(long, default_value_t = 31337)]
    chain_id: u64,
    /// The InferencePayments contract of the receipts' EIP-712 domain.
    #[arg(long, default_value = "0x0000000000000000000000000000000000000000")]
    payments_contract: String,
    /// A model hub to fetch adapters from (its `{repo}/resolve/{revision}/{file}` layout).
    #[arg(long)]
    hub: Option<String>,
    /// Where hub files are cached (default: `$XDG_CACHE_HOME/openledger/hub`, else
    /// `~/.cache/openledger/hub`).
    #[arg(long)]
    hub_cache: Option<PathBuf>,
    /// An adapter of the hub, `NAME=REPO[@REVISION]` (repeatable); fetched on first use.
    #[arg(long = "hub-adapter", value_name = "NAME=REPO[@REVISION]")]
    hub_adapters: Vec<String>,
    /// Worker threads of the HTTP runtime (default: one per core).
    #[arg(long)]
    http_threads: Option<usize>,
    /// How the base weights are held: `f32` (widened), `stored` (bf16 / f16 kept, a GGUF
    /// file's quantised blocks of 32 held as int8), `int8` (quantised per output channel) or
    /// `int8-gN` (one scale per N inputs).
    #[arg(long, default_value = "f32")]
    weights: openledger::lora::model::WeightFormat,
    /// Where the model runs: `cpu`, `cuda` or `cuda:N` (a CUDA device needs a build with the
    /// `cuda` feature; weights `stored` or `f32` there).
    #[arg(long, default_value = "cpu")]
    device: openledger_server::Device,
    /// On a GPU, device memory for the adapters it holds at once, in MiB (the host pool,
    /// `--pool-mib`, sits above it).
    #[arg(long, default_value_t = 1024)]
    device_adapter_mib: usize,
    /// On a GPU, adapters the device holds at once.
    #[arg(long, default_value_t = 128)]
    device_adapter_slots: usize,
    /// On a GPU, the largest decode step (in sequences) run as a captured CUDA graph (0: every
    /// step launched kernel by kernel).
    #[arg(long, default_value_t = 512)]
    device_graph_max_batch: usize,
}

/// The keys to pay from on a node: `OPENLEDGER_KEYS`, or anvil's dev keys.
fn chain_keys() -> Result<Vec<k256::ecdsa::SigningKey>, Box<dyn std::error::Error>> {
    let (keys, anvil) = openledger::chain::rpc::keys_from_env("OPENLEDGER_KEYS")?;
    if anvil {
        eprintln!("OPENLEDGER_KEYS is not set: paying from anvil's well-known dev keys");
    }
    Ok(keys)
}

fn main() -> ExitCode {
    // SAFETY: the first thing `main` does, before any other thread runs.
    unsafe { openledger::lora::fix_cpu_threads() };
    let cli = Cli::parse();
    let Command::Serve(args) = cli.command;
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(a: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = ServerConfig::new(a.model.clone());
    config.adapters_dir = a.adapters;
    config.model_name = a.served_model_name;
    config.api_keys = a.api_keys;
    config.serve = ServeOptions {
        max_running: a.max_running,
        max_tokens_per_step: a.max_tokens_per_step,
        max_context: a.max_context,
        weights: a.weights,
        device_adapter_bytes: a
            .device_adapter_mib
            .checked_mul(1 << 20)
            .ok_or("--device-adapter-mib is too large")?,
        device_adapter_slots: a.device_adapter_slots,
        device_graph_max_batch: a.device_graph_max_batch,
        ..ServeOptions::default()
    };
    config.device = a.device;
    config.pool_budget_bytes = a.pool_mib << 20;
    config.max_body_bytes = a.max_body_kib << 10;
    if let Some(endpoint) = a.hub.clone() {
        let cache = a.hub_cache.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            base.join("openledger").join("hub")
        });
        let mut adapters = Vec::new();
        for spec in &a.hub_adapters {
            let (name, repo) = spec
                .split_once('=')
                .ok_or_else(|| format!("--hub-adapter {spec:?}: expected NAME=REPO[@REVISION]"))?;
            adapters.push((name.to_owned(), repo.to_owned()));
        }
        config.hub = Some(HubConfig {
            endpoint,
            cache,
            adapters,
        });
    } else if !a.hub_adapters.is_empty() {
        return Err("--hub-adapter needs --hub".into());
    }
    if a.chain.is_some() && a.datanet.is_none() {
        return Err("--chain needs --datanet (payments carry the attribution's receipt)".into());
    }
    if let Some(datanet) = a.datanet.clone() {
        // The operator's key comes from the environment; without one, a fresh key per run.
        let key: B256 = match std::env::var("OPENLEDGER_OPERATOR_KEY") {
            Ok(hex) => hex
                .trim()
                .parse()
                .map_err(|_| "OPENLEDGER_OPERATOR_KEY must be 32 bytes of hex")?,
            Err(_) => B256::from(rand::random::<[u8; 32]>()),
        };
        let mut c = AttributionConfig::new(datanet, key);
        c.embedder = a.embedder.clone();
        c.fee_wei = a
            .fee_wei
            .parse()
            .map_err(|_| "--fee-wei must be an integer")?;
        c.owner = a.owner.parse().map_err(|_| "--owner must be an address")?;
        c.protocol = a
            .protocol
            .parse()
            .map_err(|_| "--protocol must be an address")?;
        c.protocol_bps = a.protocol_bps;
        c.data_pool_bps = a.data_pool_bps;
        c.chain_id = a.chain_id;
        c.payments_contract = a
            .payments_contract
            .parse()
            .map_err(|_| "--payments-contract must be an address")?;
        c.chain = match a.chain.as_deref() {
            None => None,
            Some("embedded") => Some(ChainTarget::Embedded),
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(ChainTarget::Rpc {
                    url: url.to_string(),
                    keys: chain_keys()?,
                })
            }
            Some(other) => {
                return Err(format!(
                    "--chain {other:?}: `embedded` or a node's http(s) JSON-RPC endpoint"
                )
                .into());
            }
        };
        config.attribution = Some(c);
    }
    let server = Server::load(config, &mut |p: LoadProgress| {
        if let LoadProgress::LayerBuilt { done, total } = p {
            eprint!("\rloading {}: layer {done}/{total}", a.model.display());
        }
    })?;
    eprintln!();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.http_threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(a.host, a.port)).await?;
        let addr = listener.local_addr()?;
        if let Some(op) = server.operator() {
            eprintln!("receipts signed by {op}");
        }
        println!(
            "serving {} ({} adapters) on http://{addr}",
            server.model_name(),
            server.adapter_names().len()
        );
        server.serve(listener, shutdown_signal()).await?;
        eprintln!("stopped");
        Ok(())
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
