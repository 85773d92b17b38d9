//! Python face of `openledger::payable`: the Payable-AI loop, a stage at a time.
//!
//! Each stage runs with the GIL released and reports its events to an optional Python callable
//! as dicts (`{"kind": "stage", "name"}`, `{"kind": "progress", "stage", "item", "done",
//! "total", "loss"}`, `{"kind": "token", "request", "adapter", "text"}`); it returns its report
//! as plain Python objects (amounts stay decimal strings of wei, hashes and addresses 0x-hex).
//! The first exception the callable raises stops further calls and is raised once the stage is
//! done (the stage itself is not interrupted halfway, so the loop's state stays consistent).

use std::path::PathBuf;
use std::sync::Mutex;

use openledger::chain::rpc::{anvil_dev_keys, parse_keys};
use openledger::payable::{LoopConfig, LoopError, LoopEvent, PayableAi};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, PayableAiError, Result, busy, invalid_arg};

/// A JSON value as the matching Python object (objects → dict, arrays → list, integers → int,
/// other numbers → float).
fn py_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any()
            } else {
                n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(py_json(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, py_json(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A serialisable report as Python objects.
fn py_report<'py>(py: Python<'py>, report: &impl Serialize) -> Result<Bound<'py, PyAny>> {
    let v = serde_json::to_value(report)
        .map_err(|e| Error::from(PayableAiError::new_err(format!("report: {e}"))))?;
    Ok(py_json(py, &v)?)
}

/// Calls a Python callable with each loop event from threads that do not hold the GIL, keeping
/// its first exception.
struct Events {
    callback: Option<Py<PyAny>>,
    failed: Mutex<Option<PyErr>>,
}

impl Events {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            failed: Mutex::new(None),
        }
    }

    fn send(&self, event: &LoopEvent) {
        let Some(cb) = &self.callback else { return };
        let mut failed = match self.failed.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if failed.is_some() {
            return;
        }
        Python::attach(|py| {
            let r = serde_json::to_value(event)
                .map_err(|e| PayableAiError::new_err(format!("event: {e}")))
                .and_then(|v| py_json(py, &v))
                .and_then(|d| cb.call1(py, (d,)));
            if let Err(e) = r {
                *failed = Some(e);
            }
        });
    }

    /// The callback's first exception, if any; otherwise `result`.
    fn finish<T>(self, result: Result<T>) -> Result<T> {
        match self.failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(Error::from(e)),
            None => result,
        }
    }
}

/// The loop's configuration from the constructor's arguments.
#[allow(clippy::too_many_arguments)] // Python's keyword arguments, passed through
fn config(
    work_dir: PathBuf,
    quick: bool,
    steps: Option<usize>,
    counterfactual: Option<bool>,
    max_new_tokens: Option<usize>,
    harm_policy: Option<&str>,
    embedder: Option<PathBuf>,
    model: Option<PathBuf>,
) -> Result<LoopConfig> {
    let mut c = match (model, quick) {
        (None, true) => LoopConfig::quick(work_dir),
        (None, false) => LoopConfig::standard(work_dir),
        (Some(m), true) => LoopConfig::smollm2_quick(work_dir, m),
        (Some(m), false) => LoopConfig::smollm2(work_dir, m),
    };
    if let Some(s) = steps {
        c.steps = s;
    }
    if let Some(on) = counterfactual {
        c.counterfactual = on;
    }
    if let Some(n) = max_new_tokens {
        c.max_new_tokens = n;
    }
    if let Some(p) = harm_policy {
        c.harm = p
            .parse()
            .map_err(|e: LoopError| invalid_arg("harm_policy", e.to_string()))?;
    }
    c.embedder = embedder;
    Ok(c)
}

/// The Payable-AI loop on an in-process chain: publish a datanet, fine-tune adapters on it,
/// serve a mixed batch of requests, attribute and pay every answer, close the epoch.
#[pyclass(name = "PayableAi", module = "openledger", frozen)]
pub struct PyPayableAi {
    inner: Mutex<PayableAi>,
}

impl PyPayableAi {
    /// Runs one stage with the GIL released, events to `on_event`, and returns its report.
    fn stage<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
        f: impl FnOnce(&mut PayableAi, &mut dyn FnMut(&LoopEvent)) -> Result<Value> + Send,
    ) -> Result<Bound<'py, PyAny>> {
        let events = Events::new(on_event);
        let value = py.detach(|| -> Result<Value> {
            let mut l = self.inner.try_lock().map_err(|_| busy("the loop"))?;
            f(&mut l, &mut |e| events.send(e))
        });
        let value = events.finish(value)?;
        Ok(py_json(py, &value)?)
    }
}

/// A stage's report as JSON, or its error as the matching Python exception.
fn json<R: Serialize + ?Sized>(stage: std::result::Result<&R, LoopError>) -> Result<Value> {
    serde_json::to_value(stage?)
        .map_err(|e| Error::from(PayableAiError::new_err(format!("report: {e}"))))
}

#[pymethods]
impl PyPayableAi {
    /// Deploys the contracts on a fresh embedded chain and reads the shipped datanet; adapters
    /// and feature stores are written under `work_dir`. `quick` runs two adapters and four
    /// requests (one for their ensemble); `steps` (optimizer steps per adapter),
    /// `counterfactual` (also train on the datanet before splitting and with no clustering, to
    /// report what contributors would have earned), `max_new_tokens` and `harm_policy` (what a record flagged as harmful on the
    /// validation set costs: `"zero"`, or `"carry_negative"`, the default, which also charges
    /// the harm it did as a debt) override the configuration. `embedder` names a
    /// sentence-transformers folder (all-MiniLM-L6-v2) that indexes the datanet for RAG and
    /// catches paraphrased copies; without it a feature-hashing bag of words does, and
    /// paraphrases go undetected. `model` names a llama-family GGUF chat model
    /// (SmolLM2-135M-Instruct) to fine-tune over instead of the random base: requests are
    /// answered from the records retrieved for them and ContextCite splits the RAG part (the
    /// counterfactual is off there). `rpc` settles on the node at that URL instead, acting with
    /// `keys` (ten `0x` hex secret keys: admin, treasury, operator, poster, datanet owner, payer,
    /// three model owners and the claims' relayer; anvil's dev keys when omitted), on the suite
    /// of the `deployment` file when given (checked against the node first) or on one it
    /// deploys; a run on a deployment an earlier process used resumes from the chain
    /// (`report()["resumed"]` says what it found).
    #[new]
    #[pyo3(signature = (work_dir, *, quick = false, steps = None, counterfactual = None, max_new_tokens = None, harm_policy = None, embedder = None, model = None, rpc = None, keys = None, deployment = None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn new(
        py: Python<'_>,
        work_dir: PathBuf,
        quick: bool,
        steps: Option<usize>,
        counterfactual: Option<bool>,
        max_new_tokens: Option<usize>,
        harm_policy: Option<&str>,
        embedder: Option<PathBuf>,
        model: Option<PathBuf>,
        rpc: Option<String>,
        keys: Option<Vec<String>>,
        deployment: Option<PathBuf>,
    ) -> Result<Self> {
        let c = config(
            work_dir,
            quick,
            steps,
            counterfactual,
            max_new_tokens,
            harm_policy,
            embedder,
            model,
        )?;
        if rpc.is_none() && (keys.is_some() || deployment.is_some()) {
            return Err(invalid_arg(
                "rpc",
                "keys and deployment need rpc (a node's URL)",
            ));
        }
        let keys = match keys {
            Some(list) => Some(parse_keys(&list.join(",")).map_err(Error::from)?),
            None => None,
        };
        let inner = py.detach(|| {
            match rpc {
                None => PayableAi::new(c),
                Some(url) => PayableAi::on_node(
                    c,
                    &url,
                    keys.unwrap_or_else(anvil_dev_keys),
                    deployment.as_deref(),
                ),
            }
            .map_err(Error::from)
        })?;
        Ok(Self {
            inner: Mutex::new(inner),
        })
    }

    /// Runs every stage in order and returns the report (a dict); the arguments are the
    /// constructor's, and `on_event` receives every event.
    #[staticmethod]
    #[pyo3(signature = (work_dir, *, quick = false, steps = None, counterfactual = None, max_new_tokens = None, harm_policy = None, embedder = None, model = None, on_event = None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn run<'py>(
        py: Python<'py>,
        work_dir: PathBuf,
        quick: bool,
        steps: Option<usize>,
        counterfactual: Option<bool>,
        max_new_tokens: Option<usize>,
        harm_policy: Option<&str>,
        embedder: Option<PathBuf>,
        model: Option<PathBuf>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        let c = config(
            work_dir,
            quick,
            steps,
            counterfactual,
            max_new_tokens,
            harm_policy,
            embedder,
            model,
        )?;
        let events = Events::new(on_event);
        let report = py.detach(|| PayableAi::run(c, &mut |e| events.send(e)).map_err(Error::from));
        let report = events.finish(report)?;
        py_report(py, &report)
    }

    /// Stage 1: commits, registers and publishes the datanet, finds near-duplicates, indexes
    /// the records for RAG and approves a training grant per model owner. Returns the datanet
    /// report.
    #[pyo3(signature = (on_event = None))]
    fn publish_datanet<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        self.stage(py, on_event, |l, on| json(l.publish_datanet(on)))
    }

    /// Stage 2: fine-tunes and registers every adapter. Returns a list of adapter reports.
    #[pyo3(signature = (on_event = None))]
    fn fine_tune<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        self.stage(py, on_event, |l, on| json(l.fine_tune(on)))
    }

    /// Stage 3: serves every request in one mixed batch, streaming tokens as `"token"` events.
    /// Returns a list of request reports (answers, not yet paid).
    #[pyo3(signature = (on_event = None))]
    fn serve<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        self.stage(py, on_event, |l, on| json(l.serve(on)))
    }

    /// Stage 4: attributes every answer, signs its receipt and pays it on chain. Returns the
    /// list of request reports with their attribution and payment.
    #[pyo3(signature = (on_event = None))]
    fn attribute_and_pay<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        self.stage(py, on_event, |l, on| json(l.attribute_and_pay(on)))
    }

    /// Stage 5: closes the epoch, posts the claims root, has every contributor claim and checks
    /// every balance to the wei. Returns the epoch report.
    #[pyo3(signature = (on_event = None))]
    fn close_epoch<'py>(
        &self,
        py: Python<'py>,
        on_event: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyAny>> {
        self.stage(py, on_event, |l, on| json(l.close_epoch(on)))
    }

    /// The report so far, as a dict.
    fn report<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyAny>> {
        let l = self.inner.try_lock().map_err(|_| busy("the loop"))?;
        py_report(py, l.report())
    }

    /// The report so far, as indented JSON.
    fn report_json(&self) -> Result<String> {
        let l = self.inner.try_lock().map_err(|_| busy("the loop"))?;
        Ok(l.report().to_json())
    }
}

/// Adds the loop to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPayableAi>()?;
    Ok(())
}
