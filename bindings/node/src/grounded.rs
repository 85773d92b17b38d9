//! Answers grounded in retrieved datanet records on a pretrained GGUF chat model, and
//! ContextCite's credit of their sources (`openledger::grounded`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use napi::Status;
use napi::bindgen_prelude::AsyncTask;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use openledger::grounded::{
    Grounded as RustGrounded, GroundedAnswer as RustAnswer, GroundedConfig, Source,
};
use openledger::payable::{LoopConfig, PARAPHRASE_THRESHOLD};
use openledger_core::ContentId;

use crate::datanet::Datanet;
use crate::error::{JsResult, Result, busy, invalid_arg};
use crate::progress::{Progress, ProgressFn};
use crate::task::{count, task};
use crate::types::{address, address_str, b256};

/// A JavaScript function receiving an answer's text piece by piece as it is generated.
#[napi]
pub type TextFn = ThreadsafeFunction<String, (), String, Status, false>;

/// Settings of a grounded model; every field is optional.
#[napi(object)]
#[derive(Default)]
pub struct GroundedOptions {
    /// Records retrieved per question (default 4).
    pub top_k: Option<f64>,
    /// Tokens generated at most per answer (default 32).
    pub max_new_tokens: Option<f64>,
    /// ContextCite's ablations per answer (default 32).
    pub samples: Option<f64>,
    /// Held-out masks the surrogate is judged on (default 16).
    pub held_out: Option<f64>,
}

/// A record in the prompt.
#[napi(object)]
#[derive(Clone)]
pub struct GroundedSource {
    /// Its number in the prompt, from 1.
    pub number: u32,
    /// The record's 32-byte id (`0x` hex).
    pub record: String,
    /// The contributor's address (checksummed).
    pub contributor: String,
    /// The text the model read.
    pub text: String,
    /// Cosine similarity of its embedding to the question's.
    pub relevance: f64,
}

/// An answer and what it was grounded in.
#[napi(object)]
#[derive(Clone)]
pub struct GroundedAnswer {
    /// The question.
    pub question: String,
    /// The answer's text.
    pub text: String,
    /// The answer's token ids (the end-of-sequence token excluded).
    pub tokens: Vec<u32>,
    /// Source numbers the answer cites as `[n]`, first mention first.
    pub cited: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// The sources in the prompt (empty: answered without retrieval).
    pub sources: Vec<GroundedSource>,
}

/// ContextCite's credit of an answer's sources.
#[napi(object)]
pub struct SourceCredit {
    /// One surrogate weight per source, in source order.
    pub weights: Vec<f64>,
    /// Each source's share of the data pool (positive weights normalised).
    pub shares: Vec<f64>,
    /// The number of the best-weighted source (none when no weight is positive).
    pub top_source: Option<u32>,
    /// The surrogate's score with every source removed.
    pub intercept: f64,
    /// The answer's logit-probability with every source kept.
    pub full_score: f64,
    /// Spearman correlation of the surrogate with the model on held-out masks.
    pub held_out_lds: Option<f64>,
    /// Log-probability lost when the top source is removed (nats).
    pub top_drop: f64,
    /// Prompts scored.
    pub prompts_scored: u32,
}

/// What `indexDatanet` indexed.
#[napi(object)]
pub struct IndexedDatanet {
    /// Records indexed: the first of each near-duplicate cluster.
    pub kept: Vec<String>,
    /// Each copy left out, as `[copy, record whose cluster it joined]`.
    pub copies: Vec<Vec<String>>,
}

task!(
    /// Resolves to a grounded model.
    GroundedTask => Grounded
);
task!(
    /// Resolves to what was indexed.
    IndexedTask => IndexedDatanet
);
task!(
    /// Resolves to the sources retrieved.
    SourcesTask => Vec<GroundedSource>
);
task!(
    /// Resolves to an answer.
    AnswerTask => GroundedAnswer
);
task!(
    /// Resolves to a credit of sources.
    CreditTask => SourceCredit
);

fn source(s: &Source) -> GroundedSource {
    GroundedSource {
        number: s.number as u32,
        record: s.record.to_string(),
        contributor: address_str(&s.contributor),
        text: s.text.clone(),
        relevance: f64::from(s.relevance),
    }
}

fn answer_js(a: RustAnswer) -> GroundedAnswer {
    GroundedAnswer {
        sources: a.sources.iter().map(source).collect(),
        question: a.question,
        text: a.text,
        tokens: a.tokens,
        cited: a.cited.iter().map(|&n| n as u32).collect(),
        prompt_tokens: a.prompt_tokens as u32,
    }
}

fn answer_rust(a: GroundedAnswer) -> Result<RustAnswer> {
    let sources = a
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Ok(Source {
                number: s.number as usize,
                record: ContentId(b256(
                    &format!("sources[{i}].record"),
                    &napi::Either::A(s.record.clone()),
                )?),
                contributor: address(
                    &format!("sources[{i}].contributor"),
                    &napi::Either::A(s.contributor.clone()),
                )?,
                text: s.text.clone(),
                relevance: s.relevance as f32,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RustAnswer {
        question: a.question,
        sources,
        text: a.text,
        tokens: a.tokens,
        cited: a.cited.iter().map(|&n| n as usize).collect(),
        prompt_tokens: a.prompt_tokens as usize,
    })
}

/// A pretrained chat model (a llama-family GGUF file), a sentence embedder and an index of
/// datanet records: answers grounded in the records nearest to each question, and
/// ContextCite's credit of each source. Every call runs off the JavaScript thread.
#[napi]
pub struct Grounded {
    inner: Arc<RwLock<RustGrounded>>,
}

#[napi]
impl Grounded {
    /// Loads `gguf` (weights dequantized to float32; tokenizer, chat template and end token
    /// from its metadata) and the sentence-transformers folder `embedder`. `onProgress(n)` is
    /// called as tensors load.
    #[napi(catch_unwind)]
    pub fn load(
        gguf: String,
        embedder: String,
        options: Option<GroundedOptions>,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<GroundedTask>> {
        crate::error::guard(|| {
            let o = options.unwrap_or_default();
            let mut config = GroundedConfig::default();
            let opt = |name, v: Option<f64>, d: usize| v.map_or(Ok(d), |v| count(name, v));
            config.top_k = opt("topK", o.top_k, config.top_k)?;
            config.max_new_tokens = opt("maxNewTokens", o.max_new_tokens, config.max_new_tokens)?;
            config.held_out = opt("heldOut", o.held_out, config.held_out)?;
            config.context_cite.samples = opt("samples", o.samples, config.context_cite.samples)?;
            if config.context_cite.samples < 2 {
                return Err(invalid_arg(
                    "samples",
                    "ContextCite needs at least 2 ablations",
                ));
            }
            let progress = Progress::new(on_progress);
            Ok(GroundedTask::spawn(move || {
                let inner = RustGrounded::load_with_progress(
                    &PathBuf::from(gguf),
                    &PathBuf::from(embedder),
                    config,
                    &mut progress.cumulative(),
                )
                .js()?;
                Ok(Grounded {
                    inner: Arc::new(RwLock::new(inner)),
                })
            }))
        })
    }

    /// Records indexed.
    #[napi(getter, catch_unwind)]
    pub fn records(&self) -> Result<u32> {
        let g = self
            .inner
            .try_read()
            .map_err(|_| busy("the grounded model"))?;
        Ok(g.records() as u32)
    }

    /// Indexes one record per near-duplicate cluster of `datanet` (MinHash, then paraphrases
    /// merged by embedding, as the Payable-AI loop clusters them): copies are never retrieved.
    /// `onProgress(n)` is called as records are embedded.
    #[napi(catch_unwind)]
    pub fn index_datanet(
        &self,
        datanet: &Datanet,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<IndexedTask>> {
        crate::error::guard(|| {
            let snapshot = datanet.snapshot();
            let inner = self.inner.clone();
            let progress = Progress::new(on_progress);
            Ok(IndexedTask::spawn(move || {
                let mut g = inner.try_write().map_err(|_| busy("the grounded model"))?;
                let minhash = LoopConfig::standard(std::env::temp_dir()).near_duplicates;
                let indexed = g
                    .index_datanet(
                        &snapshot,
                        &minhash,
                        PARAPHRASE_THRESHOLD,
                        &mut progress.cumulative(),
                    )
                    .js()?;
                Ok(IndexedDatanet {
                    kept: indexed.kept.iter().map(|r| r.to_string()).collect(),
                    copies: indexed
                        .copies
                        .iter()
                        .map(|(c, o)| vec![c.to_string(), o.to_string()])
                        .collect(),
                })
            }))
        })
    }

    /// Resolves to the `topK` records nearest to `question`, best first, numbered from 1.
    #[napi(catch_unwind)]
    pub fn retrieve(&self, question: String) -> AsyncTask<SourcesTask> {
        let inner = self.inner.clone();
        SourcesTask::spawn(move || {
            let g = inner.try_read().map_err(|_| busy("the grounded model"))?;
            Ok(g.retrieve(&question).js()?.iter().map(source).collect())
        })
    }

    /// Resolves to the greedy answer to `question` from the records retrieved for it
    /// (`retrieve: false`: from the model alone). `onText(piece)` receives the text as it is
    /// generated, in order, before the promise resolves.
    #[napi(catch_unwind)]
    pub fn answer(
        &self,
        question: String,
        retrieve: Option<bool>,
        on_text: Option<TextFn>,
    ) -> AsyncTask<AnswerTask> {
        let inner = self.inner.clone();
        AnswerTask::spawn(move || {
            let g = inner.try_read().map_err(|_| busy("the grounded model"))?;
            let sources = if retrieve.unwrap_or(true) {
                g.retrieve(&question).js()?
            } else {
                Vec::new()
            };
            let answer = g
                .answer(&question, &sources, &mut |piece| {
                    if let Some(f) = &on_text {
                        f.call(piece.to_owned(), ThreadsafeFunctionCallMode::Blocking);
                    }
                    true
                })
                .js()?;
            Ok(answer_js(answer))
        })
    }

    /// Resolves to ContextCite's credit of `answer`'s sources. `onProgress(n)` is called as
    /// ablated prompts are scored.
    #[napi(catch_unwind)]
    pub fn cite(
        &self,
        answer: GroundedAnswer,
        on_progress: Option<ProgressFn>,
    ) -> Result<AsyncTask<CreditTask>> {
        crate::error::guard(|| {
            let answer = answer_rust(answer)?;
            let inner = self.inner.clone();
            let progress = Progress::new(on_progress);
            Ok(CreditTask::spawn(move || {
                let g = inner.try_read().map_err(|_| busy("the grounded model"))?;
                let c = g.cite(&answer, &mut progress.cumulative()).js()?;
                Ok(SourceCredit {
                    shares: c.shares(),
                    top_source: c.top_source().map(|i| i as u32 + 1),
                    weights: c.weights,
                    intercept: c.intercept,
                    full_score: c.full_score,
                    held_out_lds: c.held_out_lds,
                    top_drop: c.top_drop,
                    prompts_scored: c.prompts_scored as u32,
                })
            }))
        })
    }
}
