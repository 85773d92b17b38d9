//! Answers grounded in retrieved datanet records, on a real pretrained model, with their
//! sources credited by ContextCite.
//!
//! The flow OpenLedger describes for a RAG answer: a question → the datanet records nearest to
//! it (sentence embeddings, exact top-k) → the records go into the prompt, numbered, and the
//! model answers from them, citing `[n]` → each source is credited by how much the answer
//! depends on it → the contributors are paid by those shares.
//!
//! Crediting is ContextCite's (Cohen-Wang et al., 2024, "ContextCite: Attributing Model
//! Generation to Context"): the answer, held fixed, is scored under random ablations of the
//! sources (a dropped source is removed from the prompt; the others keep their numbers), every
//! ablated prompt in one mixed batch through [`Model::continuation_logprobs`]; a sparse linear
//! surrogate (Lasso) fitted to the scores gives one weight per source. As in the paper the score
//! is the logit of the answer's probability, `log p − log(1 − p)`. The surrogate is judged on
//! held-out masks (the Spearman correlation of its predictions with the model's scores, the
//! linear datamodeling score ContextCite reports) and by the drop in the answer's
//! log-probability when its top sources are removed.
//!
//! ```no_run
//! use openledger::grounded::{Grounded, GroundedConfig, SourceRecord};
//! use openledger::core::{Address, ContentId};
//!
//! let models = std::path::Path::new("target/models");
//! let mut g = Grounded::load(
//!     &models.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"),
//!     &models.join("all-MiniLM-L6-v2"),
//!     GroundedConfig::default(),
//! )?;
//! let text = "what does aspirin treat => pain and fever";
//! g.index(&[SourceRecord {
//!     record: ContentId::of(text.as_bytes()),
//!     contributor: Address::repeat_byte(1),
//!     text: text.into(),
//! }], &mut |_, _| {})?;
//! let sources = g.retrieve("What does aspirin treat?")?;
//! let answer = g.answer("What does aspirin treat?", &sources, &mut |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! let credit = g.cite(&answer, &mut |_, _| {})?;
//! println!("\nsource [1] weight {}", credit.weights[0]);
//! # Ok::<(), openledger::grounded::GroundedError>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use openledger_core::datanet::{Datanet, DatanetRecord};
use openledger_core::error::{Classify, ErrorKind};
use openledger_core::{Address, ContentId};
use openledger_lora::embed::SentenceEmbedder;
use openledger_lora::model::{
    ChatMessage, ChatTemplate, GgufFile, Model, ModelError, ScoreInput, TemplateError, Tokenizer,
};
use openledger_poa::PoaError;
use openledger_poa::contextcite::{
    ContextCiteConfig, SourceAttribution, ablation_masks, context_cite_batched, score_masks,
};
use openledger_poa::quality::{MinHashConfig, cluster_near_duplicates, merge_paraphrases};
use openledger_poa::rag::{RagIndex, Similarity};
use thiserror::Error;

use crate::attribution::metrics::spearman;

/// Why a grounded answer could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroundedError {
    /// The model, its tokenizer or the embedder failed.
    #[error(transparent)]
    Model(Box<ModelError>),
    /// The chat template failed to compile or render.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Retrieval or the ContextCite fit failed.
    #[error(transparent)]
    Attribution(#[from] PoaError),
    /// The model file carries no chat template, so a grounded prompt cannot be written.
    #[error("{path}: the model carries no chat template")]
    NoTemplate {
        /// The model file.
        path: PathBuf,
    },
    /// A setting out of range.
    #[error("invalid grounded-answer setting {name}: {reason}")]
    InvalidConfig {
        /// The setting.
        name: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// A question or a record text that cannot be used.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// What was given.
        what: String,
        /// Why it is refused.
        reason: String,
    },
}

impl From<ModelError> for GroundedError {
    fn from(e: ModelError) -> Self {
        GroundedError::Model(Box::new(e))
    }
}

impl Classify for GroundedError {
    fn kind(&self) -> ErrorKind {
        match self {
            GroundedError::Model(e) => e.kind(),
            GroundedError::Attribution(e) => e.kind(),
            GroundedError::Template(_) | GroundedError::NoTemplate { .. } => ErrorKind::ModelFormat,
            GroundedError::InvalidConfig { .. } | GroundedError::InvalidInput { .. } => {
                ErrorKind::InvalidArgument
            }
        }
    }
}

/// Result of this module.
pub type Result<T, E = GroundedError> = std::result::Result<T, E>;

/// How answers are grounded and credited.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundedConfig {
    /// Records retrieved per question (the sources in the prompt).
    pub top_k: usize,
    /// Tokens generated at most per answer.
    pub max_new_tokens: usize,
    /// The answer ends before the first of these (default a line break: a short answer is one
    /// line, and a small model goes on to invent more questions after it).
    pub stop_strings: Vec<String>,
    /// The system message.
    pub system: String,
    /// The ablation study: masks, keep probability, seed and the Lasso's penalty.
    pub context_cite: ContextCiteConfig,
    /// Held-out masks the surrogate is judged on (0: not judged).
    pub held_out: usize,
    /// Ablated prompts scored per model pass.
    pub ablation_batch: usize,
    /// Top sources removed for the top-k ablation drop.
    pub drop_top: usize,
    /// The longest prompt accepted, in tokens (questions and records past it are refused).
    pub max_prompt_tokens: usize,
}

impl Default for GroundedConfig {
    fn default() -> Self {
        Self {
            top_k: 4,
            max_new_tokens: 32,
            stop_strings: vec!["\n".into()],
            system: "Answer the question in a few words, from the sources. End with the number \
                     of the source you used, like [2]."
                .into(),
            context_cite: ContextCiteConfig {
                samples: 32,
                keep_probability: 0.5,
                seed: 0,
                alpha: 0.01,
                ..ContextCiteConfig::default()
            },
            held_out: 16,
            ablation_batch: 16,
            drop_top: 1,
            max_prompt_tokens: 2048,
        }
    }
}

/// A record the answers may be grounded in.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    /// The record.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// The text the model reads.
    pub text: String,
}

impl SourceRecord {
    /// A datanet record as a source: `Q: <prompt>? A: <response>.` when its metadata holds a
    /// `prompt` and a `response` (the shipped datanet's records), else its content.
    pub fn from_record(r: &DatanetRecord) -> Self {
        let field = |k: &str| r.metadata.get(k).and_then(|v| v.as_str()).map(str::trim);
        let text = match (field("prompt"), field("response")) {
            (Some(p), Some(a)) if !p.is_empty() && !a.is_empty() => {
                let q = if p.ends_with(['?', '.', '!']) {
                    ""
                } else {
                    "?"
                };
                let end = if a.ends_with(['?', '.', '!']) {
                    ""
                } else {
                    "."
                };
                format!("Q: {p}{q} A: {a}{end}")
            }
            _ => r.content.clone(),
        };
        Self {
            record: r.hash,
            contributor: r.contributor,
            text,
        }
    }
}

/// What [`Grounded::index_datanet`] indexed.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedDatanet {
    /// The records indexed: the first of each near-duplicate cluster, in datanet order.
    pub kept: Vec<ContentId>,
    /// Each copy left out, with the record whose cluster it joined.
    pub copies: Vec<(ContentId, ContentId)>,
}

/// A record retrieved for a question: source number `number` of the prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// Its number in the prompt, from 1.
    pub number: usize,
    /// The record.
    pub record: ContentId,
    /// Its contributor.
    pub contributor: Address,
    /// The text the model read.
    pub text: String,
    /// The cosine similarity of its embedding to the question's.
    pub relevance: f32,
}

/// An answer and what it was grounded in.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundedAnswer {
    /// The question.
    pub question: String,
    /// The sources in the prompt (empty: answered without retrieval).
    pub sources: Vec<Source>,
    /// The answer's text.
    pub text: String,
    /// The answer's tokens: those generated (the end-of-sequence token excluded), or, when a
    /// stop string cut the text, the text's own tokens.
    pub tokens: Vec<u32>,
    /// The source numbers the answer cites with `[n]`, in order of first mention (numbers with
    /// no source are left out).
    pub cited: Vec<usize>,
    /// Tokens of the prompt.
    pub prompt_tokens: usize,
}

/// ContextCite's credit of an answer's sources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceCredit {
    /// One weight per source, in source order: the increase in the answer's logit-probability
    /// the surrogate puts on keeping that source.
    pub weights: Vec<f64>,
    /// The surrogate's score with every source removed.
    pub intercept: f64,
    /// The answer's logit-probability with every source kept.
    pub full_score: f64,
    /// Spearman correlation of the surrogate's predictions with the model's scores on held-out
    /// masks (`None` when not judged, or the held-out scores do not vary).
    pub held_out_lds: Option<f64>,
    /// The answer's log-probability with every source minus with the `drop_top` best-weighted
    /// sources removed (nats).
    pub top_drop: f64,
    /// Prompts scored (ablations, held-out masks, the full prompt and the top-k ablation).
    pub prompts_scored: usize,
}

impl SourceCredit {
    /// The index of the best-weighted source, if any weight is positive.
    pub fn top_source(&self) -> Option<usize> {
        self.weights
            .iter()
            .enumerate()
            .filter(|(_, w)| **w > 0.0)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
    }

    /// Each source's share of the answer's data pool: its positive weight over the sum of the
    /// positive weights (a negative weight earns nothing); all zero when no weight is positive.
    pub fn shares(&self) -> Vec<f64> {
        let total: f64 = self.weights.iter().map(|w| w.max(0.0)).sum();
        self.weights
            .iter()
            .map(|w| if total > 0.0 { w.max(0.0) / total } else { 0.0 })
            .collect()
    }
}

/// A pretrained chat model, a sentence embedder and an index of records: grounded answers and
/// their credit (see [the module](self)).
pub struct Grounded {
    model: Model,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    eos: Vec<u32>,
    embedder: SentenceEmbedder,
    index: RagIndex,
    texts: HashMap<ContentId, String>,
    config: GroundedConfig,
}

impl std::fmt::Debug for Grounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grounded")
            .field("layers", &self.model.config().num_layers)
            .field("records", &self.index.len())
            .field("config", &self.config)
            .finish()
    }
}

impl Grounded {
    /// Loads a llama-family GGUF chat model (weights dequantized to f32, its tokenizer, chat
    /// template and end-of-sequence token from its metadata) and a sentence-transformers
    /// embedder folder; the index starts empty.
    pub fn load(gguf: &Path, embedder_dir: &Path, config: GroundedConfig) -> Result<Self> {
        Self::load_with_progress(gguf, embedder_dir, config, &mut |_, _| {})
    }

    /// [`load`](Self::load) with `progress(tensors_done, total)` while the model loads.
    pub fn load_with_progress(
        gguf: &Path,
        embedder_dir: &Path,
        config: GroundedConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        check_config(&config)?;
        let file = GgufFile::open(gguf)?;
        let template =
            ChatTemplate::from_gguf(&file)?.ok_or_else(|| GroundedError::NoTemplate {
                path: gguf.to_path_buf(),
            })?;
        let tokenizer = file.tokenizer()?;
        let eos = file.eos_token_ids();
        let model = file.to_model(progress)?;
        let embedder = SentenceEmbedder::from_dir(embedder_dir)?;
        let index = RagIndex::new(embedder.dim(), Similarity::Cosine)?;
        Ok(Self {
            model,
            tokenizer,
            template,
            eos,
            embedder,
            index,
            texts: HashMap::new(),
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GroundedConfig {
        &self.config
    }

    /// Replaces the settings (checked; nothing changes on error).
    pub fn set_config(&mut self, config: GroundedConfig) -> Result<()> {
        check_config(&config)?;
        self.config = config;
        Ok(())
    }

    /// The chat model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The chat model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The sentence embedder.
    pub fn embedder(&self) -> &SentenceEmbedder {
        &self.embedder
    }

    /// Records indexed.
    pub fn records(&self) -> usize {
        self.index.len()
    }

    /// Embeds and indexes `records` (`progress(done, total)` as batches finish), all or
    /// nothing: an empty text, or a record already indexed, is refused by its id.
    pub fn index(
        &mut self,
        records: &[SourceRecord],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<()> {
        self.check_new(records)?;
        let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
        let vectors = self.embedder.embed_batch_with_progress(&texts, progress)?;
        self.add_embedded(records, &vectors)
    }

    /// Indexes one record per near-duplicate cluster of `datanet`, as the Payable-AI loop
    /// trains on and cites them: records are clustered by MinHash (`minhash`), clusters whose
    /// sentence embeddings have cosine similarity ≥ `paraphrase_threshold` merge, and only the
    /// first committed record of each cluster is indexed — a copy, re-worded or not, is never
    /// retrieved, so its submitter is never credited. Records read as
    /// [`SourceRecord::from_record`]; `progress(done, total)` while they are embedded.
    pub fn index_datanet(
        &mut self,
        datanet: &Datanet,
        minhash: &MinHashConfig,
        paraphrase_threshold: f32,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<IndexedDatanet> {
        let records: Vec<SourceRecord> = datanet
            .records()
            .iter()
            .map(SourceRecord::from_record)
            .collect();
        let contents: Vec<&str> = datanet
            .records()
            .iter()
            .map(|r| r.content.as_str())
            .collect();
        let clusters = cluster_near_duplicates(&contents, minhash)?;
        let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
        let vectors = self.embedder.embed_batch_with_progress(&texts, progress)?;
        let (clusters, _) = merge_paraphrases(
            &clusters,
            &vectors.concat(),
            self.embedder.dim(),
            paraphrase_threshold,
        )?;
        let kept: Vec<usize> = (0..records.len())
            .filter(|&i| clusters.cluster_of[i] == i)
            .collect();
        let kept_records: Vec<SourceRecord> = kept.iter().map(|&i| records[i].clone()).collect();
        let kept_vectors: Vec<Vec<f32>> = kept.iter().map(|&i| vectors[i].clone()).collect();
        self.check_new(&kept_records)?;
        self.add_embedded(&kept_records, &kept_vectors)?;
        Ok(IndexedDatanet {
            kept: kept_records.iter().map(|r| r.record).collect(),
            copies: (0..records.len())
                .filter(|&i| clusters.cluster_of[i] != i)
                .map(|i| (records[i].record, records[clusters.cluster_of[i]].record))
                .collect(),
        })
    }

    fn check_new(&self, records: &[SourceRecord]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for r in records {
            if r.text.trim().is_empty() {
                return Err(GroundedError::InvalidInput {
                    what: format!("record {}", r.record),
                    reason: "its text is empty".into(),
                });
            }
            if self.texts.contains_key(&r.record) || !seen.insert(r.record) {
                return Err(GroundedError::InvalidInput {
                    what: format!("record {}", r.record),
                    reason: "it is already indexed".into(),
                });
            }
        }
        Ok(())
    }

    fn add_embedded(&mut self, records: &[SourceRecord], vectors: &[Vec<f32>]) -> Result<()> {
        let mut staged = self.index.clone();
        for (r, v) in records.iter().zip(vectors) {
            staged.add(r.record, r.contributor, &r.text, v)?;
        }
        self.index = staged;
        self.texts
            .extend(records.iter().map(|r| (r.record, r.text.clone())));
        Ok(())
    }

    /// The `top_k` records nearest to `question`, numbered from 1, best first.
    pub fn retrieve(&self, question: &str) -> Result<Vec<Source>> {
        check_question(question)?;
        let q = self.embedder.embed(question)?;
        let hits = self.index.search(&q, self.config.top_k)?;
        Ok(hits
            .into_iter()
            .enumerate()
            .map(|(i, c)| Source {
                number: i + 1,
                text: self.texts[&c.record].clone(),
                record: c.record,
                contributor: c.contributor,
                relevance: c.score,
            })
            .collect())
    }

    /// The prompt's tokens: the system message, then the sources kept by `keep` (all when
    /// `None`) under their own numbers, then the question; no sources at all gives the plain
    /// question with no system message (the model's own default).
    pub fn prompt(
        &self,
        question: &str,
        sources: &[Source],
        keep: Option<&[bool]>,
    ) -> Result<Vec<u32>> {
        check_question(question)?;
        let messages = if sources.is_empty() {
            vec![ChatMessage::new("user", question)]
        } else {
            let mut user = String::from("Sources:\n");
            for (i, s) in sources.iter().enumerate() {
                if keep.is_none_or(|k| k.get(i).copied().unwrap_or(false)) {
                    user.push_str(&format!("[{}] {}\n", s.number, s.text.trim()));
                }
            }
            user.push_str(&format!("\nQ: {}", question.trim()));
            vec![
                ChatMessage::new("system", self.config.system.clone()),
                ChatMessage::new("user", user),
            ]
        };
        let text = self.template.render(&messages, true)?;
        let tokens = self.tokenizer.encode(&text, false)?;
        if tokens.len() > self.config.max_prompt_tokens {
            return Err(GroundedError::InvalidInput {
                what: "prompt".into(),
                reason: format!(
                    "{} tokens, over the limit of {}",
                    tokens.len(),
                    self.config.max_prompt_tokens
                ),
            });
        }
        Ok(tokens)
    }

    /// Answers `question` from `sources` (none: without retrieval), greedily, streaming the
    /// text to `on_text` (returning `false` stops the answer there).
    pub fn answer(
        &self,
        question: &str,
        sources: &[Source],
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<GroundedAnswer> {
        let prompt = self.prompt(question, sources, None)?;
        let generated = self.model.greedy_generate(
            &self.tokenizer,
            None,
            &prompt,
            self.config.max_new_tokens,
            &self.eos,
            &self.config.stop_strings,
            on_text,
        )?;
        let cited = citations(&generated.text, sources.len());
        // Cut by a stop string, the tokens chosen run past the text: the answer credited is the
        // text, so it is scored as the tokenizer writes it.
        let tokens = if self.tokenizer.decode(&generated.tokens, true)? == generated.text {
            generated.tokens
        } else {
            self.tokenizer.encode(&generated.text, false)?
        };
        Ok(GroundedAnswer {
            question: question.to_owned(),
            sources: sources.to_vec(),
            text: generated.text,
            tokens,
            cited,
            prompt_tokens: prompt.len(),
        })
    }

    /// The answer's log-probability (nats) under the prompt of each mask, all in passes of
    /// `ablation_batch` prompts.
    pub fn answer_logprobs(
        &self,
        answer: &GroundedAnswer,
        masks: &[Vec<bool>],
    ) -> Result<Vec<f64>> {
        if answer.tokens.is_empty() {
            return Err(GroundedError::InvalidInput {
                what: "answer".into(),
                reason: "it has no tokens to score".into(),
            });
        }
        let mut out = Vec::with_capacity(masks.len());
        for chunk in masks.chunks(self.config.ablation_batch) {
            let prompts = chunk
                .iter()
                .map(|m| self.prompt(&answer.question, &answer.sources, Some(m)))
                .collect::<Result<Vec<_>>>()?;
            let batch: Vec<ScoreInput<'_>> = prompts
                .iter()
                .map(|p| ScoreInput {
                    adapter: None,
                    context: p,
                    continuation: &answer.tokens,
                })
                .collect();
            let lp = self.model.continuation_logprobs(&batch)?;
            out.extend(
                lp.iter()
                    .map(|t| t.iter().map(|&v| f64::from(v)).sum::<f64>()),
            );
        }
        Ok(out)
    }

    /// ContextCite's credit of the answer's sources (see [the module](self));
    /// `progress(done, total)` counts prompts scored.
    pub fn cite(
        &self,
        answer: &GroundedAnswer,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<SourceCredit> {
        let n = answer.sources.len();
        if n == 0 {
            return Err(GroundedError::InvalidInput {
                what: "answer".into(),
                reason: "it was given no sources to credit".into(),
            });
        }
        let cfg = &self.config;
        let cc = &cfg.context_cite;
        let total = cc.samples + cfg.held_out + 2;
        let mut done = 0;
        let mut score = |masks: &[Vec<bool>]| -> std::result::Result<Vec<f64>, PoaError> {
            let lp = self
                .answer_logprobs(answer, masks)
                .map_err(|e| PoaError::InvalidConfig {
                    what: "ablated prompt".into(),
                    reason: e.to_string(),
                })?;
            done += masks.len();
            progress(done, total);
            Ok(lp.into_iter().map(logit_probability).collect())
        };
        let fit: SourceAttribution =
            context_cite_batched(n, cfg.ablation_batch, &mut score, cc, |_, _| {})?;
        let held_out_lds = if cfg.held_out >= 2 {
            let masks = ablation_masks(n, cfg.held_out, cc.keep_probability, cc.seed ^ HELD_OUT);
            let actual = score_masks(&masks, cfg.ablation_batch, &mut score, &mut |_, _| {})?;
            let predicted: Vec<f64> = masks.iter().map(|m| fit.predict(m)).collect();
            spearman(&predicted, &actual)
        } else {
            None
        };
        // The full prompt, and the prompt without the best-weighted sources.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| fit.weights[b].total_cmp(&fit.weights[a]).then(a.cmp(&b)));
        let mut without_top = vec![true; n];
        for &i in order.iter().take(cfg.drop_top) {
            without_top[i] = false;
        }
        let two = self.answer_logprobs(answer, &[vec![true; n], without_top])?;
        done += 2;
        progress(done, total);
        Ok(SourceCredit {
            weights: fit.weights,
            intercept: fit.intercept,
            full_score: logit_probability(two[0]),
            held_out_lds,
            top_drop: two[0] - two[1],
            prompts_scored: done,
        })
    }
}

/// Seed offset of the held-out masks (so they differ from the fitted ones).
const HELD_OUT: u64 = 0x9e37_79b9_7f4a_7c15;

/// `log p − log(1 − p)` for `p = exp(lp)`, stable for `lp` near 0 and far below it.
pub fn logit_probability(lp: f64) -> f64 {
    if lp >= 0.0 {
        return f64::INFINITY;
    }
    lp - (-lp.exp_m1()).ln()
}

/// The source numbers `text` cites as `[n]` (also `[n, m]`), first mention first, only those in
/// `1..=sources`.
pub fn citations(text: &str, sources: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        for part in after[..close].split(',') {
            if let Ok(n) = part.trim().parse::<usize>()
                && (1..=sources).contains(&n)
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
        rest = &after[close..];
    }
    out
}

/// SQuAD's answer normalisation: lower case, punctuation removed, the articles `a`, `an`,
/// `the` removed, whitespace collapsed; the words that remain.
pub fn normalize_answer(text: &str) -> Vec<String> {
    let lower: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_punctuation() { ' ' } else { c })
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

/// 1.0 when `answer` and `gold` are equal after [`normalize_answer`], else 0.0 (SQuAD's exact
/// match). `[n]` citation markers are removed from the answer first.
pub fn exact_match(answer: &str, gold: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(&strip_citations(answer)) == normalize_answer(gold),
    ))
}

/// SQuAD's token F1 of `answer` against `gold`: the harmonic mean of the precision and recall
/// of their normalised words, counted as multisets. `[n]` markers are removed from the answer.
pub fn token_f1(answer: &str, gold: &str) -> f64 {
    let a = normalize_answer(&strip_citations(answer));
    let g = normalize_answer(gold);
    if a.is_empty() || g.is_empty() {
        return f64::from(u8::from(a == g));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &a {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = f64::from(common) / a.len() as f64;
    let recall = f64::from(common) / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `text` without its `[…]` markers whose insides are numbers and commas.
fn strip_citations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close)
                if !after[..close].trim().is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ') =>
            {
                rest = &after[close + 1..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn check_question(question: &str) -> Result<()> {
    if question.trim().is_empty() {
        return Err(GroundedError::InvalidInput {
            what: "question".into(),
            reason: "it is empty".into(),
        });
    }
    Ok(())
}

fn check_config(c: &GroundedConfig) -> Result<()> {
    let bad = |name, reason: &str| {
        Err(GroundedError::InvalidConfig {
            name,
            reason: reason.into(),
        })
    };
    if c.top_k == 0 {
        return bad("top_k", "must be at least 1");
    }
    if c.stop_strings.iter().any(String::is_empty) {
        return bad("stop_strings", "a stop string must not be empty");
    }
    if c.max_new_tokens == 0 {
        return bad("max_new_tokens", "must be at least 1");
    }
    if c.ablation_batch == 0 {
        return bad("ablation_batch", "must be at least 1");
    }
    if c.max_prompt_tokens == 0 {
        return bad("max_prompt_tokens", "must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_read_in_order_once_and_only_for_existing_sources() {
        assert_eq!(citations("pain and fever [2]", 4), vec![2]);
        assert_eq!(citations("a [3] b [1, 3] c [9] [x] [", 4), vec![3, 1]);
        assert_eq!(citations("no markers", 4), Vec::<usize>::new());
        assert_eq!(citations("[0] [5]", 4), Vec::<usize>::new());
    }

    #[test]
    fn answers_are_scored_as_squad_scores_them() {
        assert_eq!(exact_match("The salicylate. [2]", "salicylate"), 1.0);
        assert_eq!(exact_match("a salicylate drug", "salicylate"), 0.0);
        // answer words {pain, and, fever, relief}, gold {pain, and, fever}: P 3/4, R 1
        let f = token_f1("Pain and fever relief [1]", "pain and fever");
        assert!((f - 6.0 / 7.0).abs() < 1e-12, "{f}");
        assert_eq!(token_f1("nothing shared", "pain"), 0.0);
        assert_eq!(token_f1("the", "a"), 1.0);
        assert_eq!(strip_citations("x [1, 2] y [a] [] z"), "x  y [a] [] z");
    }

    #[test]
    fn the_logit_probability_is_stable_at_both_ends() {
        assert!((logit_probability((0.5f64).ln())).abs() < 1e-12);
        let lp = -50.0;
        assert!((logit_probability(lp) - lp).abs() < 1e-12);
        let p: f64 = 0.999_999;
        let want = (p / (1.0 - p)).ln();
        assert!((logit_probability(p.ln()) - want).abs() < 1e-6);
        assert_eq!(logit_probability(0.0), f64::INFINITY);
    }

    #[test]
    fn shares_and_the_top_source_follow_the_positive_weights() {
        let c = SourceCredit {
            weights: vec![0.5, -1.0, 1.5, 0.0],
            intercept: 0.0,
            full_score: 0.0,
            held_out_lds: None,
            top_drop: 0.0,
            prompts_scored: 0,
        };
        assert_eq!(c.top_source(), Some(2));
        assert_eq!(c.shares(), vec![0.25, 0.0, 0.75, 0.0]);
        let none = SourceCredit {
            weights: vec![-1.0, 0.0],
            ..c
        };
        assert_eq!(none.top_source(), None);
        assert_eq!(none.shares(), vec![0.0, 0.0]);
    }
}
