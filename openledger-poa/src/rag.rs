//! RAG attribution: an exact top-k index of datanet records by embedding, citations, and reward
//! weights from relevance.
//!
//! ```
//! use openledger_poa::rag::{RagIndex, Similarity, RelevanceWeighting, relevance_weights};
//! use openledger_core::{Address, ContentId};
//!
//! let mut index = RagIndex::new(2, Similarity::Cosine).unwrap();
//! index.add(ContentId::of(b"a"), Address::repeat_byte(1), "about cats", &[1.0, 0.0]).unwrap();
//! index.add(ContentId::of(b"b"), Address::repeat_byte(2), "about dogs", &[0.0, 1.0]).unwrap();
//! let hits = index.search(&[0.9, 0.1], 1).unwrap();
//! assert_eq!(hits[0].snippet, "about cats");
//! let w = relevance_weights(&hits, RelevanceWeighting::Normalised).unwrap();
//! assert_eq!(w, vec![(Address::repeat_byte(1), 1.0)]);
//! ```

use std::cmp::Ordering;
use std::collections::BTreeMap;

use openledger_core::datanet::Datanet;
use openledger_core::{Address, ContentId};
use rayon::prelude::*;

use crate::error::{PoaError, Result, check_dim, check_finite_f32};
use crate::influence::kernel::dot;

/// Turns text into an embedding (a model, a remote service, a test double).
pub trait Embedder {
    /// The embedding dimension.
    fn dim(&self) -> usize;
    /// Embeds `text`.
    fn embed(&self, text: &str) -> Result<Vec<f32>>;
}

/// How relevance is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Similarity {
    /// Cosine similarity (embeddings are normalised when added; zero vectors are rejected).
    Cosine,
    /// Raw inner product.
    Dot,
}

/// A retrieved record, cited in the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Citation {
    /// The record.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// Its relevance to the query.
    pub score: f32,
    /// The start of its content.
    pub snippet: String,
}

/// Characters of content kept as a citation snippet.
pub const SNIPPET_CHARS: usize = 200;

/// Exact nearest-neighbour index over record embeddings.
#[derive(Clone, Debug)]
pub struct RagIndex {
    dim: usize,
    similarity: Similarity,
    records: Vec<ContentId>,
    contributors: Vec<Address>,
    snippets: Vec<String>,
    data: Vec<f32>,
}

impl RagIndex {
    /// An empty index of `dim`-dimensional embeddings.
    pub fn new(dim: usize, similarity: Similarity) -> Result<Self> {
        if dim == 0 {
            return Err(PoaError::InvalidConfig {
                what: "embedding dimension".into(),
                reason: "must be positive".into(),
            });
        }
        Ok(Self {
            dim,
            similarity,
            records: Vec::new(),
            contributors: Vec::new(),
            snippets: Vec::new(),
            data: Vec::new(),
        })
    }

    /// Records indexed.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The stored embeddings, row-major (`len() × dim`; unit length under cosine similarity).
    pub fn embeddings(&self) -> &[f32] {
        &self.data
    }

    fn prepare(&self, what: impl Fn() -> String, v: &[f32]) -> Result<Vec<f32>> {
        check_dim(&what, self.dim, v.len())?;
        check_finite_f32(&what, v)?;
        match self.similarity {
            Similarity::Dot => Ok(v.to_vec()),
            Similarity::Cosine => {
                let n = dot(v, v).sqrt();
                if !(n > 0.0 && n.is_finite()) {
                    return Err(PoaError::InvalidConfig {
                        what: what(),
                        reason: format!("norm {n} has no direction for cosine similarity"),
                    });
                }
                Ok(v.iter().map(|x| x / n).collect())
            }
        }
    }

    /// Adds one record with its embedding; bad embeddings are rejected and nothing is added.
    pub fn add(
        &mut self,
        record: ContentId,
        contributor: Address,
        content: &str,
        embedding: &[f32],
    ) -> Result<()> {
        let v = self.prepare(|| format!("embedding of record {record}"), embedding)?;
        self.data.extend_from_slice(&v);
        self.records.push(record);
        self.contributors.push(contributor);
        self.snippets
            .push(content.chars().take(SNIPPET_CHARS).collect());
        Ok(())
    }

    /// Embeds and adds every record of `datanet`, all-or-nothing; `progress(done, total)`.
    pub fn add_datanet(
        &mut self,
        datanet: &Datanet,
        embedder: &dyn Embedder,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<()> {
        check_dim(|| "embedder dimension".into(), self.dim, embedder.dim())?;
        if datanet.records().is_empty() {
            return Err(PoaError::Empty {
                what: format!("datanet {:?}", datanet.name()),
            });
        }
        let mut staged = self.clone();
        let total = datanet.records().len();
        for (i, r) in datanet.records().iter().enumerate() {
            let e = embedder.embed(&r.content)?;
            staged.add(r.hash, r.contributor, &r.content, &e)?;
            progress(i + 1, total);
        }
        *self = staged;
        Ok(())
    }

    /// The `k` most relevant records (ties by insertion order), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Citation>> {
        if self.is_empty() {
            return Err(PoaError::Empty {
                what: "RAG index".into(),
            });
        }
        let q = self.prepare(|| "query embedding".into(), query)?;
        let top = top_k_dot(&self.data, self.dim, &q, k);
        Ok(top
            .into_iter()
            .map(|(i, score)| Citation {
                record: self.records[i],
                contributor: self.contributors[i],
                score,
                snippet: self.snippets[i].clone(),
            })
            .collect())
    }
}

fn better(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Exact top-`k` of `rows · q` over row-major `rows` (`dim` columns), in parallel chunks; `k`
/// past the number of rows gives every row (nothing is allocated for more).
pub fn top_k_dot(rows: &[f32], dim: usize, q: &[f32], k: usize) -> Vec<(usize, f32)> {
    const CHUNK: usize = 4096;
    if dim == 0 {
        return Vec::new();
    }
    let k = k.min(rows.len() / dim);
    let mut merged: Vec<(usize, f32)> = rows
        .par_chunks(CHUNK * dim)
        .enumerate()
        .flat_map_iter(|(c, block)| {
            let mut local: Vec<(usize, f32)> = Vec::with_capacity(2 * k.min(CHUNK) + 1);
            let mut floor = f32::NEG_INFINITY;
            for (r, row) in block.chunks_exact(dim).enumerate() {
                let s = dot(row, q);
                if local.len() < k || s > floor {
                    local.push((c * CHUNK + r, s));
                    if local.len() >= 2 * k.max(1) {
                        local.sort_by(better);
                        local.truncate(k);
                        floor = local.last().map_or(f32::NEG_INFINITY, |x| x.1);
                    }
                }
            }
            local.sort_by(better);
            local.truncate(k);
            local
        })
        .collect();
    merged.sort_by(better);
    merged.truncate(k);
    merged
}

/// How relevance becomes reward weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RelevanceWeighting {
    /// Scores clipped at 0 and divided by their sum.
    Normalised,
    /// `softmax(score / temperature)`.
    Softmax {
        /// Positive temperature; lower is sharper.
        temperature: f64,
    },
}

/// Per-contributor weights (summing to 1, sorted by address) from the citations of one answer.
pub fn relevance_weights(
    citations: &[Citation],
    weighting: RelevanceWeighting,
) -> Result<Vec<(Address, f64)>> {
    if citations.is_empty() {
        return Err(PoaError::Empty {
            what: "citations".into(),
        });
    }
    for (i, c) in citations.iter().enumerate() {
        if !c.score.is_finite() {
            return Err(PoaError::NonFinite {
                what: format!("score of citation {}", c.record),
                index: i,
                value: f64::from(c.score),
            });
        }
    }
    let raw: Vec<f64> = match weighting {
        RelevanceWeighting::Normalised => citations
            .iter()
            .map(|c| f64::from(c.score).max(0.0))
            .collect(),
        RelevanceWeighting::Softmax { temperature } => {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(PoaError::InvalidConfig {
                    what: "softmax temperature".into(),
                    reason: format!("must be finite and > 0, found {temperature}"),
                });
            }
            let max = citations
                .iter()
                .map(|c| f64::from(c.score))
                .fold(f64::NEG_INFINITY, f64::max);
            citations
                .iter()
                .map(|c| ((f64::from(c.score) - max) / temperature).exp())
                .collect()
        }
    };
    let total: f64 = raw.iter().sum();
    if total <= 0.0 {
        return Err(PoaError::ZeroTotalWeight {
            what: "citation relevance".into(),
        });
    }
    let mut per: BTreeMap<Address, f64> = BTreeMap::new();
    for (c, w) in citations.iter().zip(raw) {
        *per.entry(c.contributor).or_default() += w / total;
    }
    Ok(per.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededStream;

    #[test]
    fn search_returns_the_exact_top_k_of_a_brute_force_scan() {
        let mut s = SeededStream::new(3);
        let dim = 19;
        let mut index = RagIndex::new(dim, Similarity::Dot).unwrap();
        let mut all = Vec::new();
        for i in 0..10_000u32 {
            let e: Vec<f32> = (0..dim).map(|_| s.next_gaussian() as f32).collect();
            index
                .add(
                    ContentId::of(i.to_le_bytes()),
                    Address::with_last_byte((i % 3) as u8),
                    "x",
                    &e,
                )
                .unwrap();
            all.push(e);
        }
        let q: Vec<f32> = (0..dim).map(|_| s.next_gaussian() as f32).collect();
        let mut brute: Vec<(usize, f32)> = all
            .iter()
            .enumerate()
            .map(|(i, e)| (i, dot(e, &q)))
            .collect();
        brute.sort_by(better);
        let hits = index.search(&q, 10).unwrap();
        for (h, b) in hits.iter().zip(&brute) {
            assert_eq!(h.record, ContentId::of((b.0 as u32).to_le_bytes()));
        }
        assert_eq!(index.search(&q, 0).unwrap().len(), 0);
        assert_eq!(index.search(&q, 20_000).unwrap().len(), 10_000);
    }

    #[test]
    fn bad_embeddings_are_rejected_without_changing_the_index() {
        let mut index = RagIndex::new(3, Similarity::Cosine).unwrap();
        let id = ContentId::of(b"r");
        assert!(matches!(
            index.add(id, Address::ZERO, "", &[1.0, f32::NAN, 0.0]),
            Err(PoaError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            index.add(id, Address::ZERO, "", &[1.0, 0.0]),
            Err(PoaError::DimensionMismatch {
                expected: 3,
                found: 2,
                ..
            })
        ));
        assert!(matches!(
            index.add(id, Address::ZERO, "", &[0.0; 3]),
            Err(PoaError::InvalidConfig { .. })
        ));
        assert!(index.is_empty());
        assert!(matches!(
            index.search(&[1.0, 0.0, 0.0], 1),
            Err(PoaError::Empty { .. })
        ));
    }

    #[test]
    fn relevance_weights_normalise_or_softmax_per_contributor() {
        let c = |who: u8, score: f32| Citation {
            record: ContentId::of([who]),
            contributor: Address::repeat_byte(who),
            score,
            snippet: String::new(),
        };
        let cites = [c(1, 0.6), c(2, 0.2), c(1, 0.2), c(3, -0.5)];
        let w = relevance_weights(&cites, RelevanceWeighting::Normalised).unwrap();
        assert_eq!(w.len(), 3);
        assert!((w[0].1 - 0.8).abs() < 1e-6 && (w[1].1 - 0.2).abs() < 1e-6 && w[2].1 == 0.0);
        let s =
            relevance_weights(&cites, RelevanceWeighting::Softmax { temperature: 0.1 }).unwrap();
        assert!((s.iter().map(|x| x.1).sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(s[0].1 > s[1].1 && s[1].1 > s[2].1 && s[2].1 > 0.0);
        assert!(matches!(
            relevance_weights(&[c(1, -1.0)], RelevanceWeighting::Normalised),
            Err(PoaError::ZeroTotalWeight { .. })
        ));
        assert!(matches!(
            relevance_weights(&cites, RelevanceWeighting::Softmax { temperature: 0.0 }),
            Err(PoaError::InvalidConfig { .. })
        ));
    }
}
