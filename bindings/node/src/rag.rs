//! JavaScript face of `openledger_poa::rag`: an exact top-k index of datanet records by
//! embedding (`Float32Array`s in), citations, and reward weights from relevance.

use std::path::Path;
use std::sync::{Arc, RwLock};

use napi::bindgen_prelude::{AsyncTask, Buffer, Float32Array};
use napi_derive::napi;
use openledger_core::ContentId;
use openledger_lora::embed::SentenceEmbedder as RustEmbedder;
use openledger_poa::rag::{
    Citation as RustCitation, RagIndex as RustIndex, RelevanceWeighting, Similarity,
    relevance_weights as rust_relevance_weights,
};

use crate::error::{JsResult, Result, busy, invalid_arg};
use crate::task::{Float32Task, count, task};
use crate::types::{Bytes, address, address_str, b256};

/// One retrieved record: its id, its contributor, its relevance score and a snippet of it.
#[napi(object)]
#[derive(Clone)]
pub struct Citation {
    /// The record's 32-byte id (`0x` hex).
    pub record: String,
    /// The contributor's address (checksummed).
    pub contributor: String,
    /// Relevance (cosine similarity or dot product).
    pub score: f64,
    /// The start of the record's content.
    pub snippet: String,
}

task!(
    /// Resolves to citations.
    CitationsTask => Vec<Citation>
);

fn citation(c: &RustCitation) -> Citation {
    Citation {
        record: c.record.to_string(),
        contributor: address_str(&c.contributor),
        score: f64::from(c.score),
        snippet: c.snippet.clone(),
    }
}

/// The content id (keccak-256) of `data`, as `0x` hex.
#[napi(catch_unwind)]
pub fn content_id(data: Buffer) -> String {
    ContentId::of(&data).to_string()
}

/// Exact nearest-neighbour index over record embeddings (cosine or dot-product relevance).
#[napi]
pub struct RagIndex {
    inner: Arc<RwLock<RustIndex>>,
}

#[napi]
impl RagIndex {
    /// An empty index of `dim`-dimensional embeddings; `similarity` is `"cosine"` (the default:
    /// embeddings are normalised when added) or `"dot"`.
    #[napi(constructor, catch_unwind)]
    pub fn new(dim: f64, similarity: Option<String>) -> Result<Self> {
        crate::error::guard(|| {
            let similarity = match similarity.as_deref() {
                None | Some("cosine") => Similarity::Cosine,
                Some("dot") => Similarity::Dot,
                Some(other) => {
                    return Err(invalid_arg(
                        "similarity",
                        format!("expected \"cosine\" or \"dot\", found {other:?}"),
                    ));
                }
            };
            Ok(Self {
                inner: Arc::new(RwLock::new(
                    RustIndex::new(count("dim", dim)?, similarity).js()?,
                )),
            })
        })
    }

    /// Records indexed.
    #[napi(getter, catch_unwind)]
    pub fn length(&self) -> Result<u32> {
        crate::error::guard(|| {
            let index = self.inner.try_read().map_err(|_| busy("the index"))?;
            Ok(index.len() as u32)
        })
    }

    /// Adds one record (its 32-byte id, its contributor's address, its content) with its
    /// embedding; a bad embedding (wrong length, NaN) is refused and nothing is added.
    #[napi(catch_unwind)]
    pub fn add(
        &self,
        record: Bytes,
        contributor: Bytes,
        content: String,
        embedding: Float32Array,
    ) -> Result<()> {
        crate::error::guard(|| {
            let record = ContentId(b256("record", &record)?);
            let contributor = address("contributor", &contributor)?;
            let mut index = self.inner.try_write().map_err(|_| busy("the index"))?;
            index.add(record, contributor, &content, &embedding).js()
        })
    }

    /// The stored embeddings, row-major `[length, dim]` (a copy; unit rows under cosine).
    #[napi(catch_unwind)]
    pub fn embeddings(&self) -> Result<Float32Array> {
        crate::error::guard(|| {
            let index = self.inner.try_read().map_err(|_| busy("the index"))?;
            Ok(Float32Array::new(index.embeddings().to_vec()))
        })
    }

    /// The `k` most relevant records for `query`, best first (ties by insertion order).
    #[napi(catch_unwind)]
    pub fn search(&self, query: Float32Array, k: f64) -> Result<AsyncTask<CitationsTask>> {
        crate::error::guard(|| {
            let (q, k) = (query.to_vec(), count("k", k)?);
            let inner = self.inner.clone();
            Ok(CitationsTask::spawn(move || {
                let index = inner.read().map_err(|_| busy("the index"))?;
                Ok(index.search(&q, k).js()?.iter().map(citation).collect())
            }))
        })
    }
}

/// A contributor's share of one answer's reward.
#[napi(object)]
pub struct ContributorWeight {
    /// The contributor (checksummed).
    pub contributor: String,
    /// Its weight; the weights of one answer sum to 1.
    pub weight: f64,
}

/// Per-contributor reward weights (summing to 1, sorted by address) from the citations of one
/// answer: scores clipped at 0 and normalised, or `softmax(score / temperature)` when
/// `temperature` is given.
#[napi(catch_unwind)]
pub fn relevance_weights(
    citations: Vec<Citation>,
    temperature: Option<f64>,
) -> Result<Vec<ContributorWeight>> {
    crate::error::guard(|| {
        let cs = citations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = format!("citations[{i}]");
                Ok(RustCitation {
                    record: ContentId(b256(&name, &napi::Either::A(c.record.clone()))?),
                    contributor: address(&name, &napi::Either::A(c.contributor.clone()))?,
                    score: c.score as f32,
                    snippet: c.snippet.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let weighting = match temperature {
            Some(temperature) => RelevanceWeighting::Softmax { temperature },
            None => RelevanceWeighting::Normalised,
        };
        let w = rust_relevance_weights(&cs, weighting).js()?;
        Ok(w.iter()
            .map(|(a, x)| ContributorWeight {
                contributor: address_str(a),
                weight: *x,
            })
            .collect())
    })
}

/// A sentence-transformers embedding model (a BERT folder such as all-MiniLM-L6-v2, fetched by
/// `scripts/fetch-models.sh`): texts in, vectors equal to sentence-transformers' `encode` to
/// 1e-5 out.
#[napi]
pub struct SentenceEmbedder {
    inner: Arc<RustEmbedder>,
}

#[napi]
impl SentenceEmbedder {
    /// Loads the folder `path` (`config.json`, `model.safetensors`, `tokenizer.json`, and the
    /// sentence-transformers module files when present); throws `ModelFormat` (or the
    /// file-system code) naming the file or weight otherwise.
    #[napi(factory, catch_unwind)]
    pub fn from_dir(path: String) -> Result<Self> {
        crate::error::guard(|| {
            Ok(Self {
                inner: Arc::new(RustEmbedder::from_dir(Path::new(&path)).js()?),
            })
        })
    }

    /// The embedding dimension.
    #[napi(getter, catch_unwind)]
    pub fn dim(&self) -> u32 {
        self.inner.dim() as u32
    }

    /// Tokens a text keeps (longer texts are cut, as sentence-transformers cuts them).
    #[napi(getter, catch_unwind)]
    pub fn max_seq_len(&self) -> u32 {
        self.inner.max_seq_len() as u32
    }

    /// Resolves to the vectors of `texts`, row-major `[texts.length, dim]`, computed off the
    /// JavaScript thread.
    #[napi(catch_unwind)]
    pub fn embed(&self, texts: Vec<String>) -> Result<AsyncTask<Float32Task>> {
        crate::error::guard(|| {
            let inner = self.inner.clone();
            Ok(Float32Task::spawn(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                Ok(Float32Array::new(inner.embed_batch(&refs).js()?.concat()))
            }))
        })
    }
}
