//! Python face of `openledger_train`: LoRA / DoRA fine-tuning of a llama-family model
//! folder, with a per-step progress callback, evaluation, PEFT output and per-example
//! gradients for attribution.
//!
//! Examples are token-id lists (plain text: loss on every token), `(prompt, response)` pairs
//! of token-id lists (loss on the response only), or dicts of either naming the datanet record
//! they come from (`{"prompt", "response", "record", "datanet"}`), which the training log
//! records.

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::{PyArray1, ToPyArray};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, WeightFormat};
use openledger_train::{
    Example, LoraSettings, Schedule, TrainConfig, TrainError, TrainEvent, Trainer,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use openledger_core::{ContentId, U256};

use crate::error::{Error, Result, busy, invalid_arg};
use crate::trainlog::PyTrainLog;
use crate::types::{b256, b256_str, u256};

fn tokens(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<u32>> {
    obj.extract::<Vec<u32>>().map_err(|_| {
        invalid_arg(
            name,
            "expected a list of token ids (ints in 0 ..= 2**32 - 1)",
        )
    })
}

fn examples(name: &str, data: &Bound<'_, PyAny>) -> Result<Vec<Example>> {
    data.try_iter()
        .map_err(|_| invalid_arg(name, "expected a list of examples"))?
        .enumerate()
        .map(|(i, item)| {
            let item = item?;
            let at = format!("{name}[{i}]");
            if let Ok(d) = item.cast::<PyDict>() {
                return example_dict(&at, d);
            }
            if let Ok(pair) = item.cast::<PyTuple>() {
                if pair.len() != 2 {
                    return Err(invalid_arg(&at, "a tuple must be (prompt, response)"));
                }
                let prompt = tokens(&format!("{at}[0]"), &pair.get_item(0)?)?;
                let response = tokens(&format!("{at}[1]"), &pair.get_item(1)?)?;
                Ok(Example::prompt_response(&prompt, &response))
            } else {
                Ok(Example::text(&tokens(&at, &item)?))
            }
        })
        .collect()
}

/// An example given as a dict: `{"tokens": [...]}` or `{"prompt": [...], "response": [...]}`,
/// with the datanet record it comes from as `"record"` (its content hash) and `"datanet"` (the
/// datanet's id, default 0), which the training log records and grants are checked against.
fn example_dict(at: &str, d: &Bound<'_, PyDict>) -> Result<Example> {
    let get = |k: &str| d.get_item(k).ok().flatten();
    let ex = match (get("tokens"), get("prompt"), get("response")) {
        (Some(t), None, None) => Example::text(&tokens(&format!("{at}.tokens"), &t)?),
        (None, Some(p), Some(r)) => Example::prompt_response(
            &tokens(&format!("{at}.prompt"), &p)?,
            &tokens(&format!("{at}.response"), &r)?,
        ),
        _ => {
            return Err(invalid_arg(
                at,
                "a dict example holds \"tokens\", or \"prompt\" and \"response\"",
            ));
        }
    };
    match (get("record"), get("datanet")) {
        (None, None) => Ok(ex),
        (Some(r), datanet) => {
            let record = ContentId(b256(&format!("{at}.record"), &r)?);
            let datanet = match datanet {
                Some(n) => u256(&format!("{at}.datanet"), &n)?,
                None => U256::ZERO,
            };
            Ok(ex.with_source(datanet, record))
        }
        (None, Some(_)) => Err(invalid_arg(at, "\"datanet\" without \"record\"")),
    }
}

/// A `{regex: value}` dict as PEFT's `rank_pattern` / `alpha_pattern`, in its own order (the
/// first key matching a module wins); `value` reads one value (`None`: the wrong kind).
fn pattern<T>(
    name: &str,
    dict: Option<&Bound<'_, PyDict>>,
    value: impl Fn(&Bound<'_, PyAny>) -> Option<T>,
) -> Result<Vec<(String, T)>> {
    let Some(dict) = dict else {
        return Ok(Vec::new());
    };
    dict.iter()
        .map(|(k, v)| {
            let repr =
                |o: &Bound<'_, PyAny>| o.repr().map_or_else(|_| "?".into(), |r| r.to_string());
            let key: String = k
                .extract()
                .map_err(|_| invalid_arg(name, format!("key {} is not a str", repr(&k))))?;
            let v = value(&v).ok_or_else(|| {
                invalid_arg(
                    name,
                    format!("{key:?}: {} is not a number of the right kind", repr(&v)),
                )
            })?;
            Ok((key, v))
        })
        .collect()
}

fn event_dict<'py>(py: Python<'py>, e: &TrainEvent) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match e {
        TrainEvent::Step(s) => {
            d.set_item("kind", "step")?;
            d.set_item("step", s.step)?;
            d.set_item("total_steps", s.total_steps)?;
            d.set_item("loss", s.loss)?;
            d.set_item("learning_rate", s.learning_rate)?;
            d.set_item("grad_norm", s.grad_norm)?;
            d.set_item("tokens", s.tokens)?;
            d.set_item("tokens_per_sec", s.tokens_per_sec)?;
            d.set_item("eta_secs", s.eta_secs)?;
        }
        TrainEvent::Eval(r) => {
            d.set_item("kind", "eval")?;
            d.set_item("step", r.step)?;
            d.set_item("loss", r.loss)?;
            d.set_item("perplexity", r.perplexity)?;
            d.set_item("tokens", r.tokens)?;
        }
        TrainEvent::Checkpoint(c) => {
            d.set_item("kind", "checkpoint")?;
            d.set_item("step", c.step)?;
            d.set_item("id", c.id.to_string())?;
        }
    }
    Ok(d)
}

/// LoRA (or DoRA) fine-tuning of the model in a HF folder; the base stays frozen.
#[pyclass(name = "Trainer", module = "openledger", frozen)]
pub struct PyTrainer {
    inner: Mutex<Trainer>,
}

impl PyTrainer {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Trainer) -> std::result::Result<T, TrainError> + Send,
    ) -> Result<T> {
        py.detach(|| {
            let mut t = self.inner.try_lock().map_err(|_| busy("the trainer"))?;
            f(&mut t).map_err(Error::from)
        })
    }
}

#[pymethods]
impl PyTrainer {
    /// A trainer for `model_dir` (config.json + safetensors) adapting `targets` (projection
    /// names such as `"q_proj"`, or `["all-linear"]`) with rank `r` and `alpha`;
    /// `rank_pattern` / `alpha_pattern` (`{regex: value}`, as PEFT's) give some modules their
    /// own rank or alpha. `weights` is how the frozen base is held: `"f32"` (the default),
    /// `"stored"`, `"int8"` (QLoRA: the adapter trains over the dequantised int8 weights, and
    /// serves on the unquantised base too) or `"int8-g64"` / `"int8-g128"`.
    #[new]
    #[pyo3(signature = (
        model_dir, targets, r, alpha, *, use_rslora = false, use_dora = false, dropout = 0.0,
        rank_pattern = None, alpha_pattern = None,
        steps = 100, batch_size = 4, grad_accum = 1, learning_rate = 2e-4, warmup_steps = 0,
        schedule = "cosine", weight_decay = 0.0, max_grad_norm = Some(1.0), seed = 0,
        eval_every = None, checkpoint_steps = None, weights = "f32"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_dir: PathBuf,
        targets: Vec<String>,
        r: usize,
        alpha: f64,
        use_rslora: bool,
        use_dora: bool,
        dropout: f32,
        rank_pattern: Option<Bound<'_, PyDict>>,
        alpha_pattern: Option<Bound<'_, PyDict>>,
        steps: usize,
        batch_size: usize,
        grad_accum: usize,
        learning_rate: f64,
        warmup_steps: usize,
        schedule: &str,
        weight_decay: f64,
        max_grad_norm: Option<f64>,
        seed: u64,
        eval_every: Option<usize>,
        checkpoint_steps: Option<Vec<usize>>,
        weights: &str,
    ) -> Result<Self> {
        let weights: WeightFormat = weights.parse().map_err(|e| invalid_arg("weights", e))?;
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        let mut lora = LoraSettings::new(&targets, r, alpha);
        lora.use_rslora = use_rslora;
        lora.use_dora = use_dora;
        lora.dropout = dropout;
        lora.rank_pattern = pattern("rank_pattern", rank_pattern.as_ref(), |v| v.extract().ok())?;
        lora.alpha_pattern = pattern("alpha_pattern", alpha_pattern.as_ref(), |v| {
            v.extract().ok()
        })?;
        let mut cfg = TrainConfig::new(lora);
        cfg.steps = steps;
        cfg.batch_size = batch_size;
        cfg.grad_accum = grad_accum;
        cfg.learning_rate = learning_rate;
        cfg.warmup_steps = warmup_steps;
        cfg.schedule = schedule.parse::<Schedule>()?;
        cfg.weight_decay = weight_decay;
        cfg.max_grad_norm = max_grad_norm;
        cfg.seed = seed;
        cfg.eval_every = eval_every;
        cfg.checkpoint_steps = checkpoint_steps.unwrap_or_default();
        let trainer = py.detach(|| -> std::result::Result<Trainer, Error> {
            let model = Model::from_dir_with_format(&model_dir, weights, &mut |_| {})?;
            Ok(Trainer::new(&model, cfg)?)
        })?;
        Ok(Self {
            inner: Mutex::new(trainer),
        })
    }

    /// Trainable parameters.
    #[getter]
    fn num_parameters(&self, py: Python<'_>) -> Result<usize> {
        self.with(py, |t| Ok(t.num_parameters()))
    }

    /// Optimizer steps taken so far.
    #[getter]
    fn steps_taken(&self, py: Python<'_>) -> Result<usize> {
        self.with(py, |t| Ok(t.steps_taken()))
    }

    /// Trains on `train` (evaluating on `eval` every `eval_every` steps). `progress` is called
    /// with one dict per event: `{"kind": "step", "step", "total_steps", "loss",
    /// "learning_rate", "grad_norm", "tokens", "tokens_per_sec", "eta_secs"}`, `{"kind":
    /// "eval", "step", "loss", "perplexity", "tokens"}` or `{"kind": "checkpoint", "step",
    /// "id"}`. Returns `{"steps", "losses", "last_eval"}`.
    #[pyo3(signature = (train, eval = None, *, progress = None))]
    fn train<'py>(
        &self,
        py: Python<'py>,
        train: &Bound<'py, PyAny>,
        eval: Option<&Bound<'py, PyAny>>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let train = examples("train", train)?;
        let eval = match eval {
            Some(e) => examples("eval", e)?,
            None => Vec::new(),
        };
        let failed: Mutex<Option<PyErr>> = Mutex::new(None);
        let summary = self.with(py, |t| {
            t.train(&train, &eval, &mut |event| {
                let Some(cb) = &progress else { return };
                let mut failed = match failed.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                if failed.is_some() {
                    return;
                }
                Python::attach(|py| {
                    let r = event_dict(py, event).and_then(|d| cb.call1(py, (d,)));
                    if let Err(e) = r {
                        *failed = Some(e);
                    }
                });
            })
        })?;
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::from(e));
        }
        let out = PyDict::new(py);
        out.set_item("steps", summary.steps)?;
        out.set_item("losses", PyList::new(py, &summary.losses)?)?;
        match &summary.last_eval {
            Some(e) => out.set_item("last_eval", event_dict(py, &TrainEvent::Eval(e.clone()))?)?,
            None => out.set_item("last_eval", py.None())?,
        }
        Ok(out)
    }

    /// Loss and perplexity of the current adapter on `examples`.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        examples: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyDict>> {
        let ex = self::examples("examples", examples)?;
        let r = self.with(py, |t| t.evaluate(&ex))?;
        Ok(event_dict(py, &TrainEvent::Eval(r))?)
    }

    /// Writes the adapter as a PEFT folder (adapter_config.json + adapter_model.safetensors).
    fn save_adapter(&self, py: Python<'_>, path: PathBuf) -> Result<()> {
        self.with(py, |t| t.save_adapter(&path))
    }

    /// The flattened gradient of one example's loss with respect to every LoRA parameter, in
    /// the trainer's fixed layout (float32).
    fn example_gradient<'py>(
        &self,
        py: Python<'py>,
        example: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyArray1<f32>>> {
        let list = PyList::new(py, [example])?;
        let ex = examples("example", list.as_any())?;
        let g = self.with(py, |t| t.example_gradient(&ex[0]))?;
        Ok(g.to_pyarray(py))
    }

    /// Sets the trainable parameters from the PEFT adapter folder `path` (a checkpoint this
    /// run saved, or any adapter of the same modules, ranks and scales): influence features
    /// are taken at a checkpoint by loading it. Nothing changes on error.
    fn load_adapter(&self, py: Python<'_>, path: PathBuf) -> Result<()> {
        let adapter = py.detach(|| LoraAdapter::from_dir(&path, &LoadOptions::default()))?;
        self.with(py, |t| t.load_adapter(&adapter))
    }

    /// Starts a hash-chained training log for the base model `base_model` (its 32-byte id) and
    /// this run's adapter config: every optimizer step from now on appends an entry (the
    /// batch's record ids, loss, learning rate, checkpoint hash). Returns the log's genesis.
    fn start_log(&self, py: Python<'_>, base_model: &Bound<'_, PyAny>) -> Result<String> {
        let base = b256("base_model", base_model)?;
        self.with(py, |t| Ok(b256_str(&t.start_log(base))))
    }

    /// A copy of the training log (`TrainLog`), or None when none was started.
    fn training_log(&self, py: Python<'_>) -> Result<Option<PyTrainLog>> {
        self.with(py, |t| Ok(t.training_log().cloned().map(PyTrainLog::wrap)))
    }

    /// The `n` tokens greedy decoding appends to `prompt` with the current adapter.
    fn greedy(&self, py: Python<'_>, prompt: &Bound<'_, PyAny>, n: usize) -> Result<Vec<u32>> {
        let prompt = tokens("prompt", prompt)?;
        self.with(py, |t| t.greedy(&prompt, n))
    }
}

/// Adds the trainer to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrainer>()?;
    Ok(())
}
