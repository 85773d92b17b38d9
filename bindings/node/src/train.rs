//! JavaScript face of `openledger_train`: LoRA / DoRA fine-tuning of a llama-family model
//! folder, one Promise per call, with every training event (step, evaluation, checkpoint)
//! delivered to a callback before the call settles; evaluation, PEFT output, per-example
//! gradients for attribution and greedy decoding with the adapter being trained.
//!
//! Examples are objects: `{ tokens }` (plain text: loss on every token) or `{ prompt,
//! response }` (loss on the response only), each a `Uint32Array` or an array of token ids.

use std::path::PathBuf;

use napi::Either;
use napi::Status;
use napi::bindgen_prelude::{AsyncTask, Float32Array, Object, Uint32Array};
use napi::threadsafe_function::ThreadsafeFunction;
use napi_derive::napi;
use openledger_core::{ContentId, U256};
use openledger_lora::model::Model;
use openledger_train::{
    EvalReport, Example, LoraSettings, TrainConfig, TrainError, TrainEvent as RustEvent,
    Trainer as RustTrainer,
};

use crate::engine::token_ids;
use crate::error::{self, Result, ToJs, invalid_arg};
use crate::events::{Events, Exclusive};
use crate::task::{Float32Task, VoidTask, count, task};
use crate::trainlog::TrainLog;
use crate::types::{Amount, Bytes, b256, b256_str, u256};

/// How `Trainer.load` sets up fine-tuning; `targets`, `r` and `alpha` are required.
#[napi(object, object_to_js = false)]
pub struct TrainerOptions<'a> {
    /// Projection names (`"q_proj"`, ...) or `["all-linear"]`.
    pub targets: Vec<String>,
    /// LoRA rank.
    pub r: f64,
    /// LoRA alpha (the update is scaled by `alpha / r`, or `alpha / √r` with `useRslora`).
    pub alpha: f64,
    /// Scale by `alpha / √r` (rsLoRA).
    pub use_rslora: Option<bool>,
    /// Train DoRA (a magnitude vector per adapted layer) instead of plain LoRA.
    pub use_dora: Option<bool>,
    /// Dropout on the LoRA input, in [0, 1).
    pub dropout: Option<f64>,
    /// Ranks other than `r` for some modules, as PEFT's `rank_pattern`: `{ regex: rank }`,
    /// each key matched against the end of a module name (`"o_proj"`,
    /// `"layers.1.self_attn.v_proj"`); the first matching key, in the object's order, wins.
    #[napi(ts_type = "Record<string, number>")]
    pub rank_pattern: Option<Object<'a>>,
    /// Alphas other than `alpha` for some modules, as PEFT's `alpha_pattern`, matched as
    /// `rankPattern`.
    #[napi(ts_type = "Record<string, number>")]
    pub alpha_pattern: Option<Object<'a>>,
    /// Optimizer steps (default 100).
    pub steps: Option<f64>,
    /// Examples per micro-batch (default 4).
    pub batch_size: Option<f64>,
    /// Micro-batches per optimizer step (default 1).
    pub grad_accum: Option<f64>,
    /// Peak learning rate of AdamW (default 2e-4).
    pub learning_rate: Option<f64>,
    /// Steps of linear warm-up (default 0).
    pub warmup_steps: Option<f64>,
    /// Decay after warm-up: `"cosine"` (default), `"linear"` or `"constant"`.
    pub schedule: Option<String>,
    /// AdamW's decoupled weight decay (default 0).
    pub weight_decay: Option<f64>,
    /// Clip the gradient's global norm to this (default 1; 0 turns clipping off).
    pub max_grad_norm: Option<f64>,
    /// Seeds initialisation, dropout and the data order (default 0).
    pub seed: Option<f64>,
    /// Evaluate on the held-out examples every this many steps.
    pub eval_every: Option<f64>,
    /// Steps (1-based) after which a checkpoint event is sent.
    pub checkpoint_steps: Option<Vec<f64>>,
    /// How the frozen base is held: `"f32"` (the default), `"stored"`, `"int8"` (QLoRA: the
    /// adapter trains over the dequantised int8 weights) or `"int8-gN"`.
    pub weights: Option<String>,
}

/// One training example: `tokens` alone (loss on every token) or `prompt` and `response`
/// (loss on the response only); `record` (its content hash) and `datanet` (the datanet's id,
/// default 0) name the datanet record it comes from, which the training log records.
#[napi(object)]
pub struct TrainExample {
    /// The whole text's token ids.
    pub tokens: Option<Either<Uint32Array, Vec<f64>>>,
    /// The prompt's token ids.
    pub prompt: Option<Either<Uint32Array, Vec<f64>>>,
    /// The response's token ids.
    pub response: Option<Either<Uint32Array, Vec<f64>>>,
    /// The datanet record the example comes from (its content hash).
    pub record: Option<Bytes>,
    /// The datanet's id (needs `record`).
    pub datanet: Option<Amount>,
}

/// One event of a training run, as its `kind` says: `"step"` (every field but `perplexity`
/// and `id`), `"eval"` (`step`, `loss`, `perplexity`, `tokens`) or `"checkpoint"` (`step`, `id`:
/// the content id of the adapter's bytes at that step).
#[napi(object)]
#[derive(Clone, Debug, Default)]
pub struct TrainEvent {
    /// `"step"`, `"eval"` or `"checkpoint"`.
    pub kind: String,
    /// The optimizer step (1-based).
    pub step: f64,
    /// Steps the run will take.
    pub total_steps: Option<f64>,
    /// The step's training loss, or the evaluation loss.
    pub loss: Option<f64>,
    /// The step's learning rate.
    pub learning_rate: Option<f64>,
    /// The gradient's global norm before clipping.
    pub grad_norm: Option<f64>,
    /// Target tokens of the step or of the evaluation.
    pub tokens: Option<f64>,
    /// Training throughput so far.
    pub tokens_per_sec: Option<f64>,
    /// Seconds left, at the throughput so far.
    pub eta_secs: Option<f64>,
    /// `exp(loss)` of an evaluation.
    pub perplexity: Option<f64>,
    /// A checkpoint's content id (`0x` hex).
    pub id: Option<String>,
}

impl From<&EvalReport> for TrainEvent {
    fn from(r: &EvalReport) -> Self {
        TrainEvent {
            kind: "eval".into(),
            step: r.step as f64,
            loss: Some(r.loss),
            perplexity: Some(r.perplexity),
            tokens: Some(r.tokens as f64),
            ..Default::default()
        }
    }
}

impl From<&RustEvent> for TrainEvent {
    fn from(e: &RustEvent) -> Self {
        match e {
            RustEvent::Step(s) => TrainEvent {
                kind: "step".into(),
                step: s.step as f64,
                total_steps: Some(s.total_steps as f64),
                loss: Some(s.loss),
                learning_rate: Some(s.learning_rate),
                grad_norm: Some(s.grad_norm),
                tokens: Some(s.tokens as f64),
                tokens_per_sec: Some(s.tokens_per_sec),
                eta_secs: Some(s.eta_secs),
                ..Default::default()
            },
            RustEvent::Eval(r) => TrainEvent::from(r),
            RustEvent::Checkpoint(c) => TrainEvent {
                kind: "checkpoint".into(),
                step: c.step as f64,
                id: Some(c.id.to_string()),
                ..Default::default()
            },
        }
    }
}

/// What a training call did.
#[napi(object)]
pub struct TrainSummary {
    /// Optimizer steps taken by this call.
    pub steps: f64,
    /// The loss of each of those steps.
    pub losses: Vec<f64>,
    /// The last evaluation of the call, if any (`kind` `"eval"`).
    pub last_eval: Option<TrainEvent>,
}

/// The `onEvent` callback of `train`.
#[napi]
pub type TrainEventFn = ThreadsafeFunction<TrainEvent, (), TrainEvent, Status, false>;

task!(
    /// Resolves to a `Trainer`.
    TrainerTask => Trainer
);
task!(
    /// Resolves to a training summary.
    TrainSummaryTask => TrainSummary
);
task!(
    /// Resolves to an evaluation (`kind` `"eval"`).
    EvalTask => TrainEvent
);
task!(
    /// Resolves to a `Uint32Array` of token ids.
    TokensTask => Uint32Array
);

fn example(name: &str, e: TrainExample) -> Result<Example> {
    let ex = match (e.tokens, e.prompt, e.response) {
        (Some(t), None, None) => Example::text(&token_ids(&format!("{name}.tokens"), t)?),
        (None, Some(p), Some(r)) => Example::prompt_response(
            &token_ids(&format!("{name}.prompt"), p)?,
            &token_ids(&format!("{name}.response"), r)?,
        ),
        _ => {
            return Err(invalid_arg(
                name,
                "an example is { tokens } or { prompt, response }",
            ));
        }
    };
    match (e.record, e.datanet) {
        (None, None) => Ok(ex),
        (Some(r), datanet) => {
            let record = ContentId(b256(&format!("{name}.record"), &r)?);
            let datanet = match datanet {
                Some(d) => u256(&format!("{name}.datanet"), &d)?,
                None => U256::ZERO,
            };
            Ok(ex.with_source(datanet, record))
        }
        (None, Some(_)) => Err(invalid_arg(name, "datanet without record")),
    }
}

fn examples(name: &str, list: Vec<TrainExample>) -> Result<Vec<Example>> {
    list.into_iter()
        .enumerate()
        .map(|(i, e)| example(&format!("{name}[{i}]"), e))
        .collect()
}

/// The entries of a `{ regex: value }` pattern object in its key order; `value` checks one.
fn pattern<T>(
    name: &str,
    obj: Option<&Object<'_>>,
    value: impl Fn(&str, f64) -> Result<T>,
) -> Result<Vec<(String, T)>> {
    let Some(obj) = obj else {
        return Ok(Vec::new());
    };
    let keys = Object::keys(obj).map_err(|e| invalid_arg(name, e))?;
    keys.into_iter()
        .map(|k| {
            let v: Option<f64> = obj
                .get(&k)
                .map_err(|_| invalid_arg(name, format!("{k:?} is not a number")))?;
            let v = v.ok_or_else(|| invalid_arg(name, format!("{k:?} has no value")))?;
            let v = value(&format!("{name}.{k}"), v)?;
            Ok((k, v))
        })
        .collect()
}

fn config(o: TrainerOptions<'_>) -> Result<TrainConfig> {
    let targets: Vec<&str> = o.targets.iter().map(String::as_str).collect();
    let mut lora = LoraSettings::new(&targets, count("r", o.r)?, o.alpha);
    lora.use_rslora = o.use_rslora.unwrap_or(false);
    lora.use_dora = o.use_dora.unwrap_or(false);
    lora.dropout = o.dropout.unwrap_or(0.0) as f32;
    lora.rank_pattern = pattern("rankPattern", o.rank_pattern.as_ref(), count)?;
    lora.alpha_pattern = pattern("alphaPattern", o.alpha_pattern.as_ref(), |_, v| Ok(v))?;
    let mut c = TrainConfig::new(lora);
    if let Some(v) = o.steps {
        c.steps = count("steps", v)?;
    }
    if let Some(v) = o.batch_size {
        c.batch_size = count("batchSize", v)?;
    }
    if let Some(v) = o.grad_accum {
        c.grad_accum = count("gradAccum", v)?;
    }
    if let Some(v) = o.learning_rate {
        c.learning_rate = v;
    }
    if let Some(v) = o.warmup_steps {
        c.warmup_steps = count("warmupSteps", v)?;
    }
    if let Some(s) = o.schedule {
        c.schedule = s.parse().map_err(|e: TrainError| e.to_js())?;
    }
    if let Some(v) = o.weight_decay {
        c.weight_decay = v;
    }
    if let Some(v) = o.max_grad_norm {
        c.max_grad_norm = (v != 0.0).then_some(v);
    }
    if let Some(v) = o.seed {
        c.seed = count("seed", v)? as u64;
    }
    if let Some(v) = o.eval_every {
        c.eval_every = Some(count("evalEvery", v)?);
    }
    if let Some(v) = o.checkpoint_steps {
        c.checkpoint_steps = v
            .iter()
            .map(|&s| count("checkpointSteps", s))
            .collect::<Result<_>>()?;
    }
    // The trainer's own checks, so that a bad option throws at the call.
    c.validate().map_err(|e| e.to_js())?;
    Ok(c)
}

/// LoRA (or DoRA) fine-tuning of the model in a HF folder; the base stays frozen. One call at
/// a time: another call while one runs rejects (or throws) with `Busy`.
#[napi]
pub struct Trainer {
    inner: Exclusive<RustTrainer>,
}

#[napi]
impl Trainer {
    /// Loads the model folder `modelDir` (config.json, safetensors) and sets up a fresh
    /// adapter as `options` say. Bad options throw `InvalidArg`; an unreadable folder rejects.
    #[napi(catch_unwind)]
    pub fn load(model_dir: String, options: TrainerOptions<'_>) -> Result<AsyncTask<TrainerTask>> {
        error::guard(|| {
            let weights = crate::engine::weight_format(options.weights.as_deref())?;
            let cfg = config(options)?;
            Ok(TrainerTask::spawn(move || {
                let model =
                    Model::from_dir_with_format(&PathBuf::from(model_dir), weights, &mut |_| {})
                        .map_err(|e| e.to_js())?;
                let inner = RustTrainer::new(&model, cfg).map_err(|e| e.to_js())?;
                Ok(Trainer {
                    inner: Exclusive::new(inner, "trainer"),
                })
            }))
        })
    }

    /// Trainable parameters. Throws `Busy` while a call runs.
    #[napi(getter, catch_unwind)]
    pub fn num_parameters(&self) -> Result<f64> {
        error::guard(|| Ok(self.inner.lock()?.num_parameters() as f64))
    }

    /// Optimizer steps taken so far. Throws `Busy` while a call runs.
    #[napi(getter, catch_unwind)]
    pub fn steps_taken(&self) -> Result<f64> {
        error::guard(|| Ok(self.inner.lock()?.steps_taken() as f64))
    }

    /// Trains on `train` for the steps left (evaluating on `evalSet` every `evalEvery` steps);
    /// `onEvent` gets every step, evaluation and checkpoint, all of them before the promise
    /// settles. Examples are checked here (`InvalidArg`); a non-finite loss rejects with
    /// `Training` before that step's update.
    #[napi(catch_unwind)]
    pub fn train(
        &self,
        train: Vec<TrainExample>,
        eval_set: Option<Vec<TrainExample>>,
        on_event: Option<TrainEventFn>,
    ) -> Result<AsyncTask<TrainSummaryTask>> {
        error::guard(|| {
            let train = examples("train", train)?;
            let eval = examples("evalSet", eval_set.unwrap_or_default())?;
            let work = self.inner.claim(move |t| {
                let events = Events::new(on_event);
                let out = t.train(&train, &eval, &mut |e| events.send(TrainEvent::from(e)));
                events.flush();
                let s = out.map_err(|e| e.to_js())?;
                Ok(TrainSummary {
                    steps: s.steps as f64,
                    losses: s.losses,
                    last_eval: s.last_eval.as_ref().map(TrainEvent::from),
                })
            })?;
            Ok(TrainSummaryTask::spawn(work))
        })
    }

    /// Loss and perplexity of the current adapter on `examples`.
    #[napi(catch_unwind)]
    pub fn evaluate(&self, examples: Vec<TrainExample>) -> Result<AsyncTask<EvalTask>> {
        error::guard(|| {
            let ex = self::examples("examples", examples)?;
            let work = self.inner.claim(move |t| {
                let r = t.evaluate(&ex).map_err(|e| e.to_js())?;
                Ok(TrainEvent::from(&r))
            })?;
            Ok(EvalTask::spawn(work))
        })
    }

    /// Writes the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors)
    /// that PEFT's `PeftModel.from_pretrained` loads.
    #[napi(catch_unwind)]
    pub fn save_adapter(&self, dir: String) -> Result<AsyncTask<VoidTask>> {
        error::guard(|| {
            if dir.is_empty() {
                return Err(invalid_arg("dir", "an empty path"));
            }
            let work = self
                .inner
                .claim(move |t| t.save_adapter(&PathBuf::from(dir)).map_err(|e| e.to_js()))?;
            Ok(VoidTask::spawn(work))
        })
    }

    /// The flattened gradient of one example's loss with respect to every LoRA parameter, in
    /// the trainer's fixed layout.
    #[napi(catch_unwind)]
    pub fn example_gradient(&self, example: TrainExample) -> Result<AsyncTask<Float32Task>> {
        error::guard(|| {
            let ex = self::example("example", example)?;
            let work = self.inner.claim(move |t| {
                let g = t.example_gradient(&ex).map_err(|e| e.to_js())?;
                Ok(Float32Array::new(g))
            })?;
            Ok(Float32Task::spawn(work))
        })
    }

    /// Starts a hash-chained training log for the base model `baseModel` (its 32-byte id) and
    /// this run's adapter config: every optimizer step from now on appends an entry (the
    /// batch's record ids, loss, learning rate, checkpoint hash). Returns the log's genesis.
    /// Throws `Busy` while another call runs.
    #[napi(catch_unwind)]
    pub fn start_log(&self, base_model: Bytes) -> Result<String> {
        error::guard(|| {
            let base = b256("baseModel", &base_model)?;
            Ok(b256_str(&self.inner.lock()?.start_log(base)))
        })
    }

    /// A copy of the training log, or null when none was started. Throws `Busy` while another
    /// call runs.
    #[napi(catch_unwind)]
    pub fn training_log(&self) -> Result<Option<TrainLog>> {
        error::guard(|| {
            Ok(self
                .inner
                .lock()?
                .training_log()
                .cloned()
                .map(TrainLog::wrap))
        })
    }

    /// The `n` tokens greedy decoding appends to `prompt` with the current adapter.
    #[napi(catch_unwind)]
    pub fn greedy(
        &self,
        prompt: Either<Uint32Array, Vec<f64>>,
        n: f64,
    ) -> Result<AsyncTask<TokensTask>> {
        error::guard(|| {
            let prompt = token_ids("prompt", prompt)?;
            let n = count("n", n)?;
            let work = self.inner.claim(move |t| {
                let out = t.greedy(&prompt, n).map_err(|e| e.to_js())?;
                Ok(Uint32Array::new(out))
            })?;
            Ok(TokensTask::spawn(work))
        })
    }
}
