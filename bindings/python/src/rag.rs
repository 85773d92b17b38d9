//! Python face of `openledger_poa::rag`: an exact top-k index of datanet records by embedding
//! (float32 numpy vectors in), citations, and reward weights from relevance.

use std::path::PathBuf;
use std::sync::RwLock;

use numpy::{PyArray2, PyReadonlyArray1, PyUntypedArray, PyUntypedArrayMethods};
use openledger::payable::HashingEmbedder;
use openledger_core::ContentId;
use openledger_lora::embed::SentenceEmbedder;
use openledger_poa::rag::{
    Citation, Embedder, RagIndex, RelevanceWeighting, Similarity, relevance_weights,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::error::{Error, Result, invalid_arg};
use crate::progress::Progress;
use crate::types::{address, address_str, b256};

/// A 1-D float32 numpy array, read in place when contiguous.
pub(crate) fn vector_f32(name: &str, obj: &Bound<'_, PyAny>) -> Result<Vec<f32>> {
    let Ok(untyped) = obj.cast::<PyUntypedArray>() else {
        let ty = obj.get_type().name()?;
        return Err(invalid_arg(
            name,
            format!("expected a 1-D float32 numpy array, found {ty}"),
        ));
    };
    let arr: PyReadonlyArray1<'_, f32> = obj.extract().map_err(|_| {
        invalid_arg(
            name,
            format!(
                "expected a 1-D float32 array, found {}-D {} of shape {:?}",
                untyped.ndim(),
                untyped.dtype(),
                untyped.shape()
            ),
        )
    })?;
    crate::types::aligned(name, &arr)?;
    Ok(match arr.as_slice() {
        Ok(s) => s.to_vec(),
        Err(_) => arr.as_array().iter().copied().collect(),
    })
}

fn lock_err(name: &str) -> crate::error::Error {
    invalid_arg(name, "the index was poisoned by a panic in another thread")
}

/// `ContentId.of(data)`: the content id (keccak-256) of `data`, as `0x` hex.
#[pyfunction]
pub(crate) fn content_id(data: &[u8]) -> String {
    ContentId::of(data).to_string()
}

/// Exact nearest-neighbour index over record embeddings (cosine or dot-product relevance).
#[pyclass(name = "RagIndex", module = "openledger", frozen)]
pub struct PyRagIndex {
    inner: RwLock<RagIndex>,
}

fn citation<'py>(py: Python<'py>, c: &Citation) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("record", c.record.to_string())?;
    d.set_item("contributor", address_str(&c.contributor))?;
    d.set_item("score", c.score)?;
    d.set_item("snippet", &c.snippet)?;
    Ok(d)
}

#[pymethods]
impl PyRagIndex {
    /// An empty index of `dim`-dimensional embeddings; `similarity` is `"cosine"` (embeddings
    /// normalised when added) or `"dot"`.
    #[new]
    #[pyo3(signature = (dim, similarity = "cosine"))]
    fn new(dim: usize, similarity: &str) -> Result<Self> {
        let similarity = match similarity {
            "cosine" => Similarity::Cosine,
            "dot" => Similarity::Dot,
            other => {
                return Err(invalid_arg(
                    "similarity",
                    format!("expected \"cosine\" or \"dot\", found {other:?}"),
                ));
            }
        };
        Ok(Self {
            inner: RwLock::new(RagIndex::new(dim, similarity)?),
        })
    }

    /// Records indexed.
    fn __len__(&self) -> Result<usize> {
        Ok(self.inner.read().map_err(|_| lock_err("index"))?.len())
    }

    /// Adds one record (its 32-byte id, its contributor's address, its content) with its
    /// float32 embedding; a bad embedding is refused and nothing is added.
    fn add(
        &self,
        py: Python<'_>,
        record: &Bound<'_, PyAny>,
        contributor: &Bound<'_, PyAny>,
        content: &str,
        embedding: &Bound<'_, PyAny>,
    ) -> Result<()> {
        let record = ContentId(b256("record", record)?);
        let contributor = address("contributor", contributor)?;
        let e = vector_f32("embedding", embedding)?;
        py.detach(|| {
            let mut index = self.inner.write().map_err(|_| lock_err("index"))?;
            Ok(index.add(record, contributor, content, &e)?)
        })
    }

    /// The stored embeddings as a `(len, dim)` float32 array (a copy; unit rows under cosine).
    fn embeddings<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyArray2<f32>>> {
        let index = self.inner.read().map_err(|_| lock_err("index"))?;
        let data = index.embeddings().to_vec();
        let rows = index.len();
        let dim = data.len().checked_div(rows).unwrap_or(0);
        let arr = numpy::ndarray::Array2::from_shape_vec((rows, dim), data)
            .map_err(|e| invalid_arg("embeddings", e))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }

    /// The `k` most relevant records for the float32 `query`, best first (ties by insertion
    /// order), each a dict `{"record", "contributor", "score", "snippet"}`.
    fn search<'py>(
        &self,
        py: Python<'py>,
        query: &Bound<'py, PyAny>,
        k: usize,
    ) -> Result<Bound<'py, PyList>> {
        let q = vector_f32("query", query)?;
        let hits = py.detach(|| {
            let index = self.inner.read().map_err(|_| lock_err("index"))?;
            Ok::<_, crate::error::Error>(index.search(&q, k)?)
        })?;
        let items = hits
            .iter()
            .map(|c| citation(py, c))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, items)?)
    }
}

/// Per-contributor reward weights (summing to 1, sorted by address) from the citations of one
/// answer (as `RagIndex.search` returns them): scores clipped at 0 and normalised, or
/// `softmax(score / temperature)` when `temperature` is given.
#[pyfunction(name = "relevance_weights")]
#[pyo3(signature = (citations, *, temperature = None))]
fn py_relevance_weights(
    py: Python<'_>,
    citations: &Bound<'_, PyAny>,
    temperature: Option<f64>,
) -> Result<Vec<(String, f64)>> {
    let cs = citations
        .try_iter()?
        .enumerate()
        .map(|(i, c)| {
            let c = c?;
            let name = format!("citations[{i}]");
            let field = |k: &str| {
                c.get_item(k)
                    .map_err(|_| invalid_arg(&name, format!("missing key {k:?}")))
            };
            let score: f32 = field("score")?
                .extract()
                .map_err(|_| invalid_arg(&name, "score must be a float"))?;
            let snippet: String = field("snippet")?.extract().unwrap_or_default();
            Ok(Citation {
                record: ContentId(b256(&name, &field("record")?)?),
                contributor: address(&name, &field("contributor")?)?,
                score,
                snippet,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let weighting = match temperature {
        Some(temperature) => RelevanceWeighting::Softmax { temperature },
        None => RelevanceWeighting::Normalised,
    };
    let w = py.detach(|| relevance_weights(&cs, weighting))?;
    Ok(w.iter().map(|(a, x)| (address_str(a), *x)).collect())
}

/// Adds the RAG classes and functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRagIndex>()?;
    m.add_class::<PySentenceEmbedder>()?;
    m.add_class::<PyHashingEmbedder>()?;
    m.add_function(wrap_pyfunction!(py_relevance_weights, m)?)?;
    m.add_function(wrap_pyfunction!(content_id, m)?)?;
    Ok(())
}

/// A feature-hashing bag-of-words embedder (what the server and the Payable-AI loop use without
/// a sentence model): each lower-cased word adds 1 to the coordinate its FNV-1a hash selects,
/// so under cosine similarity records rank by the words they share with the question.
#[pyclass(name = "HashingEmbedder", module = "openledger", frozen)]
pub struct PyHashingEmbedder {
    inner: HashingEmbedder,
}

#[pymethods]
impl PyHashingEmbedder {
    /// An embedder into `dim` coordinates (512, the server's, by default).
    #[new]
    #[pyo3(signature = (dim = 512))]
    fn new(dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(invalid_arg("dim", "must be at least 1"));
        }
        Ok(Self {
            inner: HashingEmbedder::new(dim),
        })
    }

    /// The embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The vectors of `texts` as a `(len(texts), dim)` float32 array (a text with no word is
    /// the zero vector).
    fn embed<'py>(&self, py: Python<'py>, texts: Vec<String>) -> Result<Bound<'py, PyArray2<f32>>> {
        let dim = self.inner.dim();
        let mut flat = Vec::with_capacity(texts.len() * dim);
        for t in &texts {
            flat.extend(self.inner.embed(t)?);
        }
        let arr = numpy::ndarray::Array2::from_shape_vec((texts.len(), dim), flat)
            .map_err(|e| invalid_arg("texts", e))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }

    fn __repr__(&self) -> String {
        format!("HashingEmbedder(dim={})", self.inner.dim())
    }
}

/// A sentence-transformers embedding model (a BERT folder such as all-MiniLM-L6-v2, fetched by
/// `scripts/fetch-models.sh`): texts in, one float32 vector per text out, equal to
/// sentence-transformers' `encode` to 1e-5.
#[pyclass(name = "SentenceEmbedder", module = "openledger", frozen)]
pub struct PySentenceEmbedder {
    inner: SentenceEmbedder,
}

#[pymethods]
impl PySentenceEmbedder {
    /// Loads the folder `path` (`config.json`, `model.safetensors`, `tokenizer.json`, and the
    /// sentence-transformers module files when present); raises `ModelFormatError` naming the
    /// file or weight otherwise.
    #[staticmethod]
    fn from_dir(py: Python<'_>, path: PathBuf) -> Result<Self> {
        let inner = py.detach(|| SentenceEmbedder::from_dir(&path).map_err(Error::from))?;
        Ok(Self { inner })
    }

    /// The embedding dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// Tokens a text keeps (longer texts are cut, as sentence-transformers cuts them).
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len()
    }

    /// The vectors of `texts` as a `(len(texts), dim)` float32 array; `progress` (e.g.
    /// `tqdm.update`) receives the number of texts embedded by each forward pass.
    #[pyo3(signature = (texts, progress = None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        progress: Option<Py<PyAny>>,
    ) -> Result<Bound<'py, PyArray2<f32>>> {
        let progress = Progress::new(progress);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = py.detach(|| {
            self.inner
                .embed_batch_with_progress(&refs, &mut progress.cumulative())
                .map_err(Error::from)
        })?;
        progress.finish()?;
        let dim = self.inner.dim();
        let arr = numpy::ndarray::Array2::from_shape_vec((texts.len(), dim), vectors.concat())
            .map_err(|e| invalid_arg("texts", e))?;
        Ok(PyArray2::from_owned_array(py, arr))
    }
}
