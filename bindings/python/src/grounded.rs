//! Python face of `openledger::grounded`: answers grounded in retrieved datanet records on a
//! pretrained GGUF chat model, and ContextCite's credit of their sources.

use std::path::PathBuf;
use std::sync::RwLock;

use openledger::grounded::{Grounded, GroundedAnswer, GroundedConfig, Source, SourceCredit};
use openledger::payable::{LoopConfig, PARAPHRASE_THRESHOLD};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::datanet::PyDatanet;
use crate::error::{Error, Result, busy, invalid_arg};
use crate::progress::Progress;
use crate::types::address_str;

/// Adds the grounded-answer classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGrounded>()?;
    m.add_class::<PyGroundedAnswer>()?;
    Ok(())
}

fn source_dict<'py>(py: Python<'py>, s: &Source) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("number", s.number)?;
    d.set_item("record", s.record.to_string())?;
    d.set_item("contributor", address_str(&s.contributor))?;
    d.set_item("text", &s.text)?;
    d.set_item("relevance", s.relevance)?;
    Ok(d)
}

fn credit_dict<'py>(py: Python<'py>, c: &SourceCredit) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("weights", c.weights.clone())?;
    d.set_item("shares", c.shares())?;
    d.set_item("top_source", c.top_source().map(|i| i + 1))?;
    d.set_item("intercept", c.intercept)?;
    d.set_item("full_score", c.full_score)?;
    d.set_item("held_out_lds", c.held_out_lds)?;
    d.set_item("top_drop", c.top_drop)?;
    d.set_item("prompts_scored", c.prompts_scored)?;
    Ok(d)
}

/// An answer and what it was grounded in (made by `Grounded.answer`).
#[pyclass(name = "GroundedAnswer", module = "openledger", frozen)]
pub struct PyGroundedAnswer {
    inner: GroundedAnswer,
}

#[pymethods]
impl PyGroundedAnswer {
    /// The question.
    #[getter]
    fn question(&self) -> &str {
        &self.inner.question
    }

    /// The answer's text.
    #[getter]
    fn text(&self) -> &str {
        &self.inner.text
    }

    /// The answer's token ids (the end-of-sequence token excluded).
    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.inner.tokens.clone()
    }

    /// Source numbers the answer cites as `[n]`, first mention first.
    #[getter]
    fn cited(&self) -> Vec<usize> {
        self.inner.cited.clone()
    }

    /// Tokens of the prompt.
    #[getter]
    fn prompt_tokens(&self) -> usize {
        self.inner.prompt_tokens
    }

    /// The sources in the prompt: `{"number", "record", "contributor", "text", "relevance"}`.
    #[getter]
    fn sources<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let items = self
            .inner
            .sources
            .iter()
            .map(|s| source_dict(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    fn __repr__(&self) -> String {
        format!(
            "GroundedAnswer(text={:?}, sources={})",
            self.inner.text,
            self.inner.sources.len()
        )
    }
}

/// A pretrained chat model (a llama-family GGUF file), a sentence embedder folder and an index
/// of datanet records: answers grounded in the records nearest to each question, and
/// ContextCite's credit of each source (ablations scored in batches, a Lasso surrogate judged
/// on held-out masks). Calls release the GIL.
#[pyclass(name = "Grounded", module = "openledger", frozen)]
pub struct PyGrounded {
    inner: RwLock<Grounded>,
}

impl PyGrounded {
    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, Grounded>> {
        self.inner
            .try_read()
            .map_err(|_| busy("the grounded model"))
    }
}

#[pymethods]
impl PyGrounded {
    /// Loads `gguf` (weights dequantized to float32; tokenizer, chat template and end token
    /// from its metadata) and the sentence-transformers folder `embedder`. `top_k` sources per
    /// question, `max_new_tokens` per answer, `samples` ablations and `held_out` held-out masks
    /// per ContextCite; `progress` receives tensors loaded.
    #[staticmethod]
    #[pyo3(signature = (gguf, embedder, *, top_k = 4, max_new_tokens = 32, samples = 32, held_out = 16, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        gguf: PathBuf,
        embedder: PathBuf,
        top_k: usize,
        max_new_tokens: usize,
        samples: usize,
        held_out: usize,
        progress: Option<Py<PyAny>>,
    ) -> Result<Self> {
        let mut config = GroundedConfig {
            top_k,
            max_new_tokens,
            held_out,
            ..GroundedConfig::default()
        };
        config.context_cite.samples = samples;
        if samples < 2 {
            return Err(invalid_arg(
                "samples",
                "ContextCite needs at least 2 ablations",
            ));
        }
        let progress = Progress::new(progress);
        let inner = py.detach(|| {
            Grounded::load_with_progress(&gguf, &embedder, config, &mut progress.cumulative())
                .map_err(Error::from)
        })?;
        progress.finish()?;
        Ok(Self {
            inner: RwLock::new(inner),
        })
    }

    /// Records indexed.
    #[getter]
    fn records(&self) -> Result<usize> {
        Ok(self.read()?.records())
    }

    /// Indexes one record per near-duplicate cluster of `datanet` (MinHash, then paraphrases
    /// merged by embedding, as the Payable-AI loop clusters them): copies are never retrieved.
    /// Returns `{"kept": [record], "copies": [(copy, of)]}`; `progress` receives records
    /// embedded.
    #[pyo3(signature = (datanet, progress = None))]
    fn index_datanet<'py>(
        &self,
        py: Python<'py>,
        datanet: PyRef<'_, PyDatanet>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let snapshot = datanet.snapshot();
        let minhash = LoopConfig::standard(std::env::temp_dir()).near_duplicates;
        let progress = Progress::new(progress);
        let indexed = py.detach(|| {
            let mut g = self
                .inner
                .try_write()
                .map_err(|_| busy("the grounded model"))?;
            g.index_datanet(
                &snapshot,
                &minhash,
                PARAPHRASE_THRESHOLD,
                &mut progress.cumulative(),
            )
            .map_err(Error::from)
        })?;
        progress.finish()?;
        let d = PyDict::new(py);
        d.set_item(
            "kept",
            indexed
                .kept
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
        )?;
        d.set_item(
            "copies",
            indexed
                .copies
                .iter()
                .map(|(c, o)| (c.to_string(), o.to_string()))
                .collect::<Vec<_>>(),
        )?;
        Ok(d)
    }

    /// The `top_k` records nearest to `question`, best first, numbered from 1.
    fn retrieve<'py>(&self, py: Python<'py>, question: &str) -> Result<Bound<'py, PyList>> {
        let g = self.read()?;
        let sources = py.detach(|| g.retrieve(question).map_err(Error::from))?;
        let items = sources
            .iter()
            .map(|s| source_dict(py, s))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?)
    }

    /// Answers `question` greedily from the records retrieved for it (`retrieve=False`: from
    /// the model alone). `on_text` receives the answer in pieces as it is generated; returning
    /// `False` stops it there.
    #[pyo3(signature = (question, *, retrieve = true, on_text = None))]
    fn answer(
        &self,
        py: Python<'_>,
        question: &str,
        retrieve: bool,
        on_text: Option<Py<PyAny>>,
    ) -> Result<PyGroundedAnswer> {
        let g = self.read()?;
        let mut failed: Option<PyErr> = None;
        let inner = py.detach(|| {
            let sources = if retrieve {
                g.retrieve(question)?
            } else {
                Vec::new()
            };
            g.answer(question, &sources, &mut |piece| {
                let Some(cb) = &on_text else { return true };
                Python::attach(|py| match cb.call1(py, (piece,)) {
                    Ok(v) => !matches!(v.extract::<bool>(py), Ok(false)),
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                })
            })
        });
        if let Some(e) = failed {
            return Err(e.into());
        }
        Ok(PyGroundedAnswer {
            inner: inner.map_err(Error::from)?,
        })
    }

    /// ContextCite's credit of `answer`'s sources: `{"weights", "shares", "top_source",
    /// "intercept", "full_score", "held_out_lds", "top_drop", "prompts_scored"}` (`top_source`
    /// is a source number, or `None` when no weight is positive); `progress` receives prompts
    /// scored.
    #[pyo3(signature = (answer, progress = None))]
    fn cite<'py>(
        &self,
        py: Python<'py>,
        answer: PyRef<'_, PyGroundedAnswer>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyDict>> {
        let g = self.read()?;
        let answer = answer.inner.clone();
        let progress = Progress::new(progress);
        let credit = py.detach(|| {
            g.cite(&answer, &mut progress.cumulative())
                .map_err(Error::from)
        })?;
        progress.finish()?;
        Ok(credit_dict(py, &credit)?)
    }
}
