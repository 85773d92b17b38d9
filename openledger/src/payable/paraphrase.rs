//! Choosing and measuring the paraphrase threshold: sentence embeddings of labelled pairs
//! ([`super::PARAPHRASE_PAIRS_JSONL`]), the F-β-best cosine threshold on the `tune` half, and
//! its precision and recall on the `test` half (other drugs than the tuning half's).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use openledger_lora::embed::SentenceEmbedder;
use openledger_poa::quality::{Calibration, choose_threshold, precision_recall};
use serde::{Deserialize, Serialize};

use super::{LoopError, Result};

/// One labelled pair.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LabelledPair {
    /// First sentence.
    pub a: String,
    /// Second sentence.
    pub b: String,
    /// Whether `b` says what `a` says.
    pub label: bool,
    /// What kind of pair (`paraphrase`, `other_question`, `other_drug`, `other_answer`).
    pub kind: String,
    /// `tune` or `test`.
    pub split: String,
}

/// Parses labelled pairs (JSONL); a bad line is an error naming it.
pub fn parse_pairs(jsonl: &str) -> Result<Vec<LabelledPair>> {
    jsonl
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let p: LabelledPair = serde_json::from_str(l)
                .map_err(|e| LoopError::Config(format!("labelled pairs, line {}: {e}", i + 1)))?;
            if p.split != "tune" && p.split != "test" {
                return Err(LoopError::Config(format!(
                    "labelled pairs, line {}: split {:?} is not \"tune\" or \"test\"",
                    i + 1,
                    p.split
                )));
            }
            Ok(p)
        })
        .collect()
}

/// The threshold and how well it separates.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParaphraseCalibration {
    /// The threshold chosen on the tuning half, with its precision and recall there.
    pub tune: Calibration,
    /// The same threshold's precision and recall on the test half.
    pub test: Calibration,
    /// Per kind of test pair: `(pairs, called paraphrases)`.
    pub test_by_kind: BTreeMap<String, (usize, usize)>,
    /// Distinct sentences embedded.
    pub sentences: usize,
    /// Seconds spent embedding.
    pub embed_seconds: f64,
}

/// Embeds every sentence of `pairs` once, scores each pair by cosine similarity, chooses the
/// F-`beta`-best threshold on the `tune` half and measures it on the `test` half.
/// `progress(done, total)` follows the embedding.
pub fn calibrate(
    model: &SentenceEmbedder,
    pairs: &[LabelledPair],
    beta: f64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ParaphraseCalibration> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut sentences: Vec<&str> = Vec::new();
    for p in pairs {
        for s in [p.a.as_str(), p.b.as_str()] {
            index.entry(s).or_insert_with(|| {
                sentences.push(s);
                sentences.len() - 1
            });
        }
    }
    let t = Instant::now();
    let vectors = model
        .embed_batch_with_progress(&sentences, progress)
        .map_err(|e| LoopError::Model(e.into()))?;
    let embed_seconds = t.elapsed().as_secs_f64();
    let cosine = |a: &[f32], b: &[f32]| -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb).max(f32::MIN_POSITIVE)
    };
    let scores: Vec<f32> = pairs
        .iter()
        .map(|p| cosine(&vectors[index[p.a.as_str()]], &vectors[index[p.b.as_str()]]))
        .collect();
    let half = |name: &str| -> (Vec<f32>, Vec<bool>) {
        pairs
            .iter()
            .zip(&scores)
            .filter(|(p, _)| p.split == name)
            .map(|(p, &s)| (s, p.label))
            .unzip()
    };
    let (tune_s, tune_l) = half("tune");
    let (test_s, test_l) = half("test");
    let tune = choose_threshold(&tune_s, &tune_l, beta)?;
    let test = precision_recall(&test_s, &test_l, tune.threshold)?;
    let mut test_by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (p, &s) in pairs.iter().zip(&scores).filter(|(p, _)| p.split == "test") {
        let e = test_by_kind.entry(p.kind.clone()).or_default();
        e.0 += 1;
        e.1 += (s >= tune.threshold) as usize;
    }
    Ok(ParaphraseCalibration {
        tune,
        test,
        test_by_kind,
        sentences: sentences.len(),
        embed_seconds,
    })
}
