//! JavaScript face of `openledger::payable`: the Payable-AI loop (publish a datanet, fine-tune
//! adapters on it, serve a mixed batch, attribute and pay every answer, close the epoch), one
//! Promise per stage.
//!
//! The loop lives behind a lock; a stage runs on the libuv thread pool while its events reach
//! the `onEvent` callback on the JavaScript thread, every one of them before the stage's promise
//! settles. Stage reports cross as plain objects with the keys of the JSON report and amounts
//! (`*_wei` fields, a request's per-contributor pool, withdrawals) as `bigint`s.

use napi::bindgen_prelude::{AsyncTask, BigInt, Env, Null, Object, ToNapiValue, TypeName, sys};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Status, ValueType};
use napi_derive::napi;
use openledger::payable::{LoopConfig, LoopError, LoopEvent as RustEvent, PayableAi as RustLoop};
use openledger_chain::rpc::{anvil_dev_keys, parse_keys};
use openledger_core::U256;
use serde_json::Value;

use crate::error::{self, ErrorCode, JsResult, Result, ToJs, invalid_arg};
use crate::events::{Events, Exclusive};
use crate::task::{count, task};
use crate::types::bigint;

/// How `new PayableAi` configures the loop; only `workDir` is required.
#[napi(object)]
pub struct PayableAiOptions {
    /// Folder the adapters (PEFT folders) and influence feature stores are written to.
    pub work_dir: String,
    /// The smaller loop (two adapters, four requests, one for their ensemble) instead of the
    /// standard one (three adapters, eleven requests, one for an ensemble).
    pub quick: Option<bool>,
    /// Optimizer steps per adapter (at least 3: three checkpoints are kept for influence).
    pub steps: Option<f64>,
    /// Also measure what contributors would have earned before the near-duplicate copies were
    /// submitted and with no clustering (each adapter is trained again; default true).
    pub counterfactual: Option<bool>,
    /// Longest answer, in tokens.
    pub max_new_tokens: Option<f64>,
    /// Share of each data pool paid by training influence, in basis points (0..=10000); the
    /// rest is paid by RAG citations.
    pub influence_bps: Option<u32>,
    /// What a record flagged as harmful on the validation set costs its contributor: `"zero"`
    /// (it earns nothing) or `"carry_negative"` (the default: it earns nothing and the harm it
    /// does to each answer is charged as a debt, taken from later payouts or carried).
    pub harm_policy: Option<String>,
    /// A sentence-transformers folder (all-MiniLM-L6-v2, fetched by `scripts/fetch-models.sh`)
    /// that indexes the datanet for RAG and catches paraphrased copies; without it a
    /// feature-hashing bag of words does, and paraphrases go undetected.
    pub embedder: Option<String>,
    /// A llama-family GGUF chat model (SmolLM2-135M-Instruct) to fine-tune over instead of the
    /// random base: requests are answered from the records retrieved for them and ContextCite
    /// splits the RAG part (the counterfactual is off there).
    pub model: Option<String>,
    /// Settle on the node at this URL (JSON-RPC) instead of an in-process chain.
    pub rpc: Option<String>,
    /// The ten `0x` hex secret keys to act with on `rpc` (admin, treasury, operator, poster,
    /// datanet owner, payer, three model owners, the claims' relayer); anvil's dev keys when
    /// omitted.
    pub keys: Option<Vec<String>>,
    /// A deployment file (`cargo run --example deploy`) whose suite to use on `rpc` instead of
    /// deploying one; it is checked against the node first. A run on a deployment an earlier
    /// process used resumes from the chain (the report's `resumed` says what it found).
    pub deployment: Option<String>,
}

/// What the loop reports while a stage runs. `kind` is `"stage"` (a stage started: `name` is
/// `"datanet"`, `"fine-tune"`, `"serve"`, `"attribute-and-pay"` or `"epoch"`), `"progress"`
/// (`stage`, `item`, `done` of `total`, and `loss` while fine-tuning) or `"token"` (a word of
/// request `request`'s answer from adapter `adapter`, as soon as it is sampled).
#[napi(object)]
#[derive(Clone, Debug, PartialEq)]
pub struct LoopEvent {
    /// `"stage"`, `"progress"` or `"token"`.
    pub kind: String,
    /// The stage started (`stage` events).
    pub name: Option<String>,
    /// The stage advancing (`progress` events).
    pub stage: Option<String>,
    /// What is worked on: an adapter, the RAG index (`progress` events).
    pub item: Option<String>,
    /// Units done (`progress` events).
    pub done: Option<f64>,
    /// Units in all (`progress` events).
    pub total: Option<f64>,
    /// The training loss of the step (`progress` events of fine-tuning steps).
    pub loss: Option<f64>,
    /// The request's index (`token` events).
    pub request: Option<f64>,
    /// The request's adapter (`token` events).
    pub adapter: Option<String>,
    /// The word (`token` events).
    pub text: Option<String>,
}

impl From<&RustEvent> for LoopEvent {
    fn from(e: &RustEvent) -> Self {
        let mut out = Self {
            kind: String::new(),
            name: None,
            stage: None,
            item: None,
            done: None,
            total: None,
            loss: None,
            request: None,
            adapter: None,
            text: None,
        };
        match e {
            RustEvent::Stage { name } => {
                out.kind = "stage".into();
                out.name = Some(name.clone());
            }
            RustEvent::Progress {
                stage,
                item,
                done,
                total,
                loss,
            } => {
                out.kind = "progress".into();
                out.stage = Some(stage.clone());
                out.item = Some(item.clone());
                out.done = Some(*done as f64);
                out.total = Some(*total as f64);
                out.loss = *loss;
            }
            RustEvent::Token {
                request,
                adapter,
                text,
            } => {
                out.kind = "token".into();
                out.request = Some(*request as f64);
                out.adapter = Some(adapter.clone());
                out.text = Some(text.clone());
            }
        }
        out
    }
}

/// One request the loop serves.
#[napi(object)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoopRequest {
    /// The adapter's name.
    pub adapter: String,
    /// The prompt.
    pub prompt: String,
}

/// The `onEvent` callback of a stage.
#[napi]
pub type LoopEventFn = ThreadsafeFunction<LoopEvent, (), LoopEvent, Status, false>;

/// A report as JavaScript receives it: the JSON report's shape, amounts as `bigint`s.
pub enum ReportValue {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (counts, gas, losses, seconds, shares).
    Number(f64),
    /// A string (names, `0x` hex).
    String(String),
    /// An amount of wei.
    Amount(U256),
    /// An array.
    Array(Vec<ReportValue>),
    /// An object, its keys in the JSON report's order.
    Object(Vec<(String, ReportValue)>),
}

impl ReportValue {
    /// `v` with its amounts as [`ReportValue::Amount`]: the string values of `*_wei` keys, of
    /// a request's `contributors` map, and the third item of each `withdrawn` entry.
    pub fn from_json(v: Value) -> Self {
        Self::convert(v, false)
    }

    fn convert(v: Value, amount: bool) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::Bool(b) => Self::Bool(b),
            Value::Number(n) => Self::Number(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) if amount => match U256::from_str_radix(&s, 10) {
                Ok(x) => Self::Amount(x),
                Err(_) => Self::String(s),
            },
            Value::String(s) => Self::String(s),
            Value::Array(items) => Self::Array(
                items
                    .into_iter()
                    .map(|x| Self::convert(x, amount))
                    .collect(),
            ),
            Value::Object(fields) => Self::Object(
                fields
                    .into_iter()
                    .map(|(k, x)| {
                        let x = match (k.as_str(), x) {
                            // A request's pool per contributor (address → amount).
                            ("contributors", Value::Object(m))
                                if m.values().all(Value::is_string) =>
                            {
                                Self::Object(
                                    m.into_iter()
                                        .map(|(a, x)| (a, Self::convert(x, true)))
                                        .collect(),
                                )
                            }
                            // (account, name, amount) per withdrawal.
                            ("withdrawn", Value::Array(rows)) => Self::Array(
                                rows.into_iter()
                                    .map(|row| match row {
                                        Value::Array(mut t) if t.len() == 3 => {
                                            let amount =
                                                Self::convert(t.pop().unwrap_or(Value::Null), true);
                                            let mut out: Vec<Self> = t
                                                .into_iter()
                                                .map(|x| Self::convert(x, false))
                                                .collect();
                                            out.push(amount);
                                            Self::Array(out)
                                        }
                                        other => Self::convert(other, false),
                                    })
                                    .collect(),
                            ),
                            (key, x) => Self::convert(x, key.ends_with("_wei")),
                        };
                        (k, x)
                    })
                    .collect(),
            ),
        }
    }
}

impl ToNapiValue for ReportValue {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        // SAFETY (every call below): `env` is the live environment napi hands this conversion.
        unsafe {
            match val {
                Self::Null => Null::to_napi_value(env, Null),
                Self::Bool(b) => bool::to_napi_value(env, b),
                Self::Number(x) => f64::to_napi_value(env, x),
                Self::String(s) => String::to_napi_value(env, s),
                Self::Amount(x) => BigInt::to_napi_value(env, bigint(x)),
                Self::Array(items) => Vec::<Self>::to_napi_value(env, items),
                Self::Object(fields) => {
                    let mut obj = Object::new(&Env::from_raw(env))?;
                    for (k, x) in fields {
                        obj.set(k, x)?;
                    }
                    Object::to_napi_value(env, obj)
                }
            }
        }
    }
}

impl TypeName for ReportValue {
    fn type_name() -> &'static str {
        "Record<string, any>"
    }

    fn value_type() -> ValueType {
        ValueType::Object
    }
}

task!(
    /// Resolves to a stage report (an object, or an array of per-adapter / per-request objects).
    ReportTask => ReportValue
);

/// The stages, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    PublishDatanet,
    FineTune,
    Serve,
    AttributeAndPay,
    CloseEpoch,
}

impl Stage {
    const ALL: [Stage; 5] = [
        Stage::PublishDatanet,
        Stage::FineTune,
        Stage::Serve,
        Stage::AttributeAndPay,
        Stage::CloseEpoch,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    /// The JavaScript method's name.
    fn method(self) -> &'static str {
        match self {
            Stage::PublishDatanet => "publishDatanet",
            Stage::FineTune => "fineTune",
            Stage::Serve => "serve",
            Stage::AttributeAndPay => "attributeAndPay",
            Stage::CloseEpoch => "closeEpoch",
        }
    }

    /// Runs the stage, its report as JSON.
    fn run(self, l: &mut RustLoop, on: &mut dyn FnMut(&RustEvent)) -> Result<Value> {
        let json = |r: std::result::Result<Value, serde_json::Error>| {
            r.map_err(|e| error::error(ErrorCode::Loop, "the stage report", Some(&e)))
        };
        let out = match self {
            Stage::PublishDatanet => l.publish_datanet(on).map(serde_json::to_value),
            Stage::FineTune => l.fine_tune(on).map(serde_json::to_value),
            Stage::Serve => l.serve(on).map(serde_json::to_value),
            Stage::AttributeAndPay => l.attribute_and_pay(on).map(serde_json::to_value),
            Stage::CloseEpoch => l.close_epoch(on).map(serde_json::to_value),
        };
        json(out.map_err(|e| e.to_js())?)
    }
}

/// The loop and the stages it ran.
struct State {
    inner: RustLoop,
    /// Stages completed.
    done: usize,
}

/// The Payable-AI loop, end to end and in process: an embedded EVM running the real contracts,
/// a small random LLaMA, the shipped drug-facts datanet. Run the stages in order, each once;
/// one call at a time (another call while a stage runs rejects with `Busy`).
#[napi]
pub struct PayableAi {
    state: Exclusive<State>,
    requests: Vec<LoopRequest>,
}

impl PayableAi {
    fn stage(&self, stage: Stage, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        let work = self.state.claim(move |s| {
            let at = stage.index();
            if s.done > at {
                return Err(error::error(
                    ErrorCode::OutOfOrder,
                    format!("{} already ran", stage.method()),
                    None,
                ));
            }
            if s.done < at {
                return Err(error::error(
                    ErrorCode::OutOfOrder,
                    format!(
                        "{} needs {} first",
                        stage.method(),
                        Stage::ALL[s.done].method()
                    ),
                    None,
                ));
            }
            let events = Events::new(on_event);
            let out = stage.run(&mut s.inner, &mut |e| events.send(LoopEvent::from(e)));
            // Every event reaches the callback before the promise settles.
            events.flush();
            let report = out?;
            s.done += 1;
            Ok(ReportValue::from_json(report))
        });
        // A call made while another runs rejects its promise with `Busy`.
        match work {
            Ok(work) => ReportTask::spawn(work),
            Err(e) => ReportTask::spawn(move || Err(e)),
        }
    }
}

fn config(o: PayableAiOptions) -> Result<LoopConfig> {
    let dir = o.work_dir.into();
    let mut c = match (o.model, o.quick.unwrap_or(false)) {
        (None, true) => LoopConfig::quick(dir),
        (None, false) => LoopConfig::standard(dir),
        (Some(m), true) => LoopConfig::smollm2_quick(dir, m.into()),
        (Some(m), false) => LoopConfig::smollm2(dir, m.into()),
    };
    if let Some(steps) = o.steps {
        c.steps = count("steps", steps)?;
    }
    if let Some(on) = o.counterfactual {
        c.counterfactual = on;
    }
    if let Some(n) = o.max_new_tokens {
        c.max_new_tokens = count("maxNewTokens", n)?;
    }
    if let Some(bps) = o.influence_bps {
        c.influence_bps = u16::try_from(bps)
            .map_err(|_| invalid_arg("influenceBps", format!("{bps} is above 10000")))?;
    }
    if let Some(p) = o.harm_policy {
        c.harm = p
            .parse()
            .map_err(|e: LoopError| invalid_arg("harmPolicy", e.to_string()))?;
    }
    c.embedder = o.embedder.map(Into::into);
    Ok(c)
}

#[napi]
impl PayableAi {
    /// Deploys the contracts on a fresh embedded chain (or on the `rpc` node, or uses the suite
    /// of the `deployment` file there) and reads the datanet; nothing is published yet. Throws
    /// `InvalidArg` for unusable options and a chain error for an unreachable node or a
    /// deployment that does not match it.
    #[napi(constructor, catch_unwind)]
    pub fn new(options: PayableAiOptions) -> Result<Self> {
        error::guard(|| {
            let node = match options.rpc.clone() {
                Some(url) => {
                    let keys = match &options.keys {
                        Some(list) => parse_keys(&list.join(",")).js()?,
                        None => anvil_dev_keys(),
                    };
                    Some((url, keys, options.deployment.clone()))
                }
                None if options.keys.is_some() || options.deployment.is_some() => {
                    return Err(invalid_arg(
                        "rpc",
                        "keys and deployment need rpc (a node's URL)",
                    ));
                }
                None => None,
            };
            let config = config(options)?;
            let requests = config
                .requests
                .iter()
                .map(|r| LoopRequest {
                    adapter: r.adapter.clone(),
                    prompt: r.prompt.clone(),
                })
                .collect();
            let inner = match node {
                None => RustLoop::new(config),
                Some((url, keys, deployment)) => RustLoop::on_node(
                    config,
                    &url,
                    keys,
                    deployment.as_deref().map(std::path::Path::new),
                ),
            }
            .map_err(|e| e.to_js())?;
            Ok(Self {
                state: Exclusive::new(State { inner, done: 0 }, "loop"),
                requests,
            })
        })
    }

    /// The requests the loop serves, in order (`token` events name them by index).
    #[napi(getter, catch_unwind)]
    pub fn requests(&self) -> Vec<LoopRequest> {
        self.requests.clone()
    }

    /// Stages run so far (0 to 5). Throws `Busy` while a stage runs.
    #[napi(getter, catch_unwind)]
    pub fn stages_done(&self) -> Result<u32> {
        error::guard(|| Ok(self.state.lock()?.done as u32))
    }

    /// Stage 1: registers the datanet and publishes its version on chain, finds near-duplicate
    /// records, indexes the kept ones for RAG, and approves each model owner's training grant.
    /// Resolves to the datanet report.
    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, any>>")]
    pub fn publish_datanet(&self, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        self.stage(Stage::PublishDatanet, on_event)
    }

    /// Stage 2: fine-tunes every adapter under its grant, records the gradients of its
    /// checkpoints for influence, and registers it on chain with its training-log head and fee.
    /// Resolves to one report per adapter.
    #[napi(catch_unwind, ts_return_type = "Promise<Array<Record<string, any>>>")]
    pub fn fine_tune(&self, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        self.stage(Stage::FineTune, on_event)
    }

    /// Stage 3: serves every request in one continuous-batching engine, the adapters side by
    /// side, streaming `token` events. Resolves to one report per request (prompt, answer).
    #[napi(catch_unwind, ts_return_type = "Promise<Array<Record<string, any>>>")]
    pub fn serve(&self, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        self.stage(Stage::Serve, on_event)
    }

    /// Stage 4: attributes every answer (training influence and RAG citations), signs its
    /// EIP-712 receipt and pays the inference on chain. Resolves to one report per request
    /// (shares, signature, the data pool per contributor).
    #[napi(catch_unwind, ts_return_type = "Promise<Array<Record<string, any>>>")]
    pub fn attribute_and_pay(&self, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        self.stage(Stage::AttributeAndPay, on_event)
    }

    /// Stage 5: closes the epoch, posts the Merkle root of the contributors' claims, has every
    /// contributor claim with its proof and checks each balance to the wei. Resolves to the
    /// epoch report (`claims_match`, `near_duplicates`).
    #[napi(catch_unwind, ts_return_type = "Promise<Record<string, any>>")]
    pub fn close_epoch(&self, on_event: Option<LoopEventFn>) -> AsyncTask<ReportTask> {
        self.stage(Stage::CloseEpoch, on_event)
    }

    /// The report so far: the JSON report's keys, amounts as `bigint`s. Throws `Busy` while a
    /// stage runs.
    #[napi(catch_unwind, ts_return_type = "Record<string, any>")]
    pub fn report(&self) -> Result<ReportValue> {
        error::guard(|| {
            let v = serde_json::to_value(self.state.lock()?.inner.report())
                .map_err(|e| error::error(ErrorCode::Loop, "the report", Some(&e)))?;
            Ok(ReportValue::from_json(v))
        })
    }

    /// The report so far as indented JSON (amounts as decimal strings). Throws `Busy` while a
    /// stage runs.
    #[napi(catch_unwind)]
    pub fn report_json(&self) -> Result<String> {
        error::guard(|| Ok(self.state.lock()?.inner.report().to_json()))
    }
}
