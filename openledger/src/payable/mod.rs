//! The Payable-AI loop, end to end, on one machine: a datanet is published and a training grant
//! approved on chain; adapters are fine-tuned on it and registered with their training-log heads
//! and fees; a mixed batch of requests for different adapters is served with streaming; every
//! answer is attributed (influence from the gradients recorded during fine-tuning, and RAG
//! citations over the datanet), a receipt is signed (EIP-712) and the inference paid on chain;
//! the epoch closes into a Merkle root that every contributor claims from, checked to the wei.
//!
//! [`PayableAi`] runs the loop a stage at a time (so a caller can show each stage's output) and
//! [`PayableAi::run`] runs all of it. Everything happens in process: the chain is an
//! [`EmbeddedChain`] running the real contract bytecode, the base model a small random LLaMA
//! made from a seed, the data the shipped [`DRUG_FACTS_JSONL`] (or any JSONL datanet whose
//! records carry a `prompt` and `response` in their metadata, or `prompt => response` content).
//!
//! Near-duplicates: records are clustered by MinHash and only the first committed record of each
//! cluster is trained on and cited (later copies add no information, and would pay their
//! contributor again), so a contributor who splits a record into re-worded copies earns no more
//! than with the record alone, and one who copies someone else's records, under any number of
//! addresses, earns nothing and takes nothing from them: the copies are flagged in the
//! [`DatanetReport`], and the vocabulary of the simulated base model comes from the kept records
//! only, so even the model is the same as without them. With [`LoopConfig::counterfactual`] the loop measures that: it attributes the
//! same answers as the datanet before splitting ([`LoopConfig::before_splitting_jsonl`]) would
//! have them — training again when the clustering did not keep exactly its records — and as
//! adapters trained on every record with no clustering would, and reports what each contributor
//! would have earned.
//!
//! ```no_run
//! use openledger::payable::{LoopConfig, PayableAi};
//!
//! let config = LoopConfig::standard("target/payable-ai".into());
//! let report = PayableAi::run(config, &mut |event| println!("{event:?}"))?;
//! assert!(report.epoch.as_ref().is_some_and(|e| e.claims_match));
//! # Ok::<(), openledger::payable::LoopError>(())
//! ```

mod base;
pub mod paraphrase;
mod report;
mod serving;
mod settle;
mod train;
mod vocab;

use openledger_core::error::{Classify, ErrorKind};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use alloy_primitives::keccak256;
use alloy_sol_types::SolValue;
use k256::ecdsa::SigningKey;
use openledger_chain::ChainError;
use openledger_chain::bindings::{
    AttributionRewards, DatanetRegistry, InferencePayments, ModelRegistry, TestToken,
};
use openledger_chain::chain::{Chain, ChainExt, LogFilter};
use openledger_chain::claims::EpochClaims;
use openledger_chain::deploy::{DeployConfig, Deployment, DeploymentFile};
use openledger_chain::evm::{EmbeddedChain, TxOutcome};
use openledger_chain::receipt::{AttributionReceipt, OperatorSigner, weights_hash};
use openledger_core::datanet::{Datanet, DatanetError};
use openledger_core::grant::AccessStatus;
use openledger_core::{Address, B256, ContentId, U256};
use openledger_lora::adapter::LoraAdapter;
use openledger_lora::embed::SentenceEmbedder;
use openledger_lora::model::RandomLlama;
use openledger_lora::model::{ModelError, PagedModel};
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{
    AllReady, Engine, EngineConfig, EngineError, Event, FinishReason, KvDtype, Preemption, Request,
    SamplingParams,
};
use openledger_poa::PoaError;
use openledger_poa::quality::{
    ClusterShare, Clusters, MinHashConfig, ParaphraseLink, Shingle, cluster_near_duplicates,
    cluster_rewards, merge_paraphrases,
};
use openledger_poa::rag::{Embedder, RagIndex, RelevanceWeighting, Similarity, relevance_weights};
use openledger_poa::record::{AttributionMethod, AttributionRecord, Epoch};
use openledger_poa::reputation::{Outcome, Reputation, ReputationConfig};
use openledger_poa::split::SplitPolicy;
use openledger_train::{Example, LoraSettings, TrainConfig, TrainError, TrainEvent, Trainer};
use thiserror::Error;

use crate::attribution::{AdapterInfluence, AttributionError};
use crate::provenance::{ModelRegistration, ProvenanceError, grants_from_chain, register_model};
use openledger_poa::influence::{FeatureSpace, Method, tracin_weights};
use openledger_train::CheckpointCollector;

pub use report::{
    AdapterReport, ContributorReport, CopyReport, DatanetReport, DebtReport, EpochReport, HarmFlag,
    NearDuplicateCheck, PlantedCheck, PoolPart, Report, ReputationReport, RequestReport, Resumed,
    ServingReport, Share, ValidationReport, wei,
};
pub use vocab::{HashingEmbedder, Vocab};

/// The shipped datanet: 20 drugs × 3 questions from five contributors, the fifth of whom also
/// submits two re-worded copies of each of her records, then a lightly edited copy of each of
/// alice's records from each of mallory's three addresses (`scripts/make_drug_facts.py`).
pub const DRUG_FACTS_JSONL: &str = include_str!("../../data/drug-facts.jsonl");

/// The datanet owner's gold answers to the shipped datanet's sixty questions, as users ask them
/// (`{"prompt", "response"}` per line): what every trained record's influence is measured on.
pub const DRUG_FACTS_VALIDATION_JSONL: &str =
    include_str!("../../data/drug-facts-validation.jsonl");

/// Coordinates of the RAG index's hashing embedder.
const EMBED_DIM: usize = 1024;

/// The lines of a JSONL datanet whose record metadata has no `copy_of` field: for the shipped
/// datanet, the records as they were before erin re-worded copies of hers and mallory copied
/// alice's.
pub fn without_copies(jsonl: &str) -> String {
    jsonl
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|v| v["metadata"].get("copy_of").is_none())
                .unwrap_or(true)
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Pairs of sentences about the shipped datanet's facts labelled paraphrase or not
/// (`{"a", "b", "label", "kind", "split"}` per line; `scripts/make_paraphrase_pairs.py`): the
/// paraphrase threshold is chosen on the `tune` half and measured on the `test` half.
pub const PARAPHRASE_PAIRS_JSONL: &str = include_str!("../../data/paraphrase-pairs.jsonl");

/// pat's records: a prose re-wording of each of bob's twelve records in the shipped datanet,
/// copies that MinHash misses and sentence embeddings catch.
pub const DRUG_FACTS_PARAPHRASED_JSONL: &str =
    include_str!("../../data/drug-facts-paraphrased.jsonl");

/// The cosine similarity of all-MiniLM-L6-v2 embeddings at which two records are one
/// cluster: the F0.5-best threshold on the tuning half of [`PARAPHRASE_PAIRS_JSONL`]
/// ([`paraphrase::calibrate`] recomputes it; F0.5 because a false positive takes an honest
/// contributor's pay).
pub const PARAPHRASE_THRESHOLD: f32 = 0.84;

/// What embeds the datanet's records and the answers for RAG.
enum LoopEmbedder {
    /// A feature-hashing bag of words (no model given).
    Hashing(HashingEmbedder),
    /// A sentence-transformers model, with every record's vector (rows in datanet order).
    Sentence {
        model: Box<SentenceEmbedder>,
        records: Vec<f32>,
    },
}

impl LoopEmbedder {
    fn dim(&self) -> usize {
        match self {
            LoopEmbedder::Hashing(h) => h.dim(),
            LoopEmbedder::Sentence { model, .. } => model.dim(),
        }
    }

    fn name(&self) -> String {
        match self {
            LoopEmbedder::Hashing(h) => format!(
                "feature hashing ({} dims; no sentence model given, paraphrases go undetected)",
                h.dim()
            ),
            LoopEmbedder::Sentence { model, .. } => format!(
                "{} ({} dims)",
                model
                    .dir()
                    .file_name()
                    .map_or_else(|| "sentence model".into(), |n| n.to_string_lossy()),
                model.dim()
            ),
        }
    }

    /// Record `i`'s vector.
    fn record(&self, i: usize, content: &str) -> Result<Vec<f32>> {
        match self {
            LoopEmbedder::Hashing(h) => Ok(h.embed(content)?),
            LoopEmbedder::Sentence { model, records } => {
                let d = model.dim();
                Ok(records[i * d..(i + 1) * d].to_vec())
            }
        }
    }

    /// The vector of a text.
    fn text(&self, text: &str) -> Result<Vec<f32>> {
        match self {
            LoopEmbedder::Hashing(h) => Ok(h.embed(text)?),
            LoopEmbedder::Sentence { model, .. } => {
                model.embed(text).map_err(|e| LoopError::Model(e.into()))
            }
        }
    }
}

/// Why the loop stopped. Nothing on chain is rolled back (each transaction either succeeded or
/// changed nothing); the error names the stage and what it refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoopError {
    /// The datanet refused its input.
    #[error("datanet: {0}")]
    Datanet(#[from] DatanetError),
    /// A record carries no prompt and response.
    #[error(
        "record {index} ({content:?}) has neither metadata prompt/response nor `prompt => response` content"
    )]
    RecordShape {
        /// Record index in the datanet.
        index: usize,
        /// The start of its content.
        content: String,
    },
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
    /// A chain call failed or reverted.
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    /// A transaction reverted.
    #[error("{call} reverted: {reason}")]
    Reverted {
        /// The call.
        call: String,
        /// The decoded reason.
        reason: String,
    },
    /// Reading grants or registering a model failed.
    #[error(transparent)]
    Provenance(#[from] ProvenanceError),
    /// The training log does not verify.
    #[error("training log: {0}")]
    TrainLog(#[from] openledger_core::trainlog::TrainLogError),
    /// Training refused.
    #[error("fine-tuning: {0}")]
    Train(#[from] TrainError),
    /// Influence scoring refused.
    #[error("attribution: {0}")]
    Attribution(#[from] AttributionError),
    /// Splits, clustering or RAG refused.
    #[error("proof of attribution: {0}")]
    Poa(#[from] PoaError),
    /// The serving model refused.
    #[error("model: {0}")]
    Model(Box<ModelError>),
    /// The serving engine failed.
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    /// A request failed.
    #[error("request {index} ({adapter}): {reason}")]
    Request {
        /// Request index.
        index: usize,
        /// Its adapter.
        adapter: String,
        /// Why.
        reason: String,
    },
    /// A stage ran before the one it needs.
    #[error("{stage} needs {needs} first")]
    OutOfOrder {
        /// The stage called.
        stage: &'static str,
        /// The stage it needs.
        needs: &'static str,
    },
    /// An amount did not add up (a bug, reported rather than paid).
    #[error("accounting: {0}")]
    Accounting(String),
    /// Writing the work folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl Classify for LoopError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoopError::Datanet(e) => e.kind(),
            LoopError::RecordShape { .. } | LoopError::Config(_) => ErrorKind::InvalidArgument,
            LoopError::Chain(e) => e.kind(),
            LoopError::Reverted { .. } => ErrorKind::Transaction,
            LoopError::Provenance(e) => e.kind(),
            LoopError::TrainLog(e) => e.kind(),
            LoopError::Train(e) => e.kind(),
            LoopError::Attribution(e) => e.kind(),
            LoopError::Poa(e) => e.kind(),
            LoopError::Model(e) => e.kind(),
            LoopError::Engine(e) => e.kind(),
            LoopError::Request { .. } => ErrorKind::Generation,
            LoopError::OutOfOrder { .. } => ErrorKind::OutOfOrder,
            LoopError::Accounting(_) => ErrorKind::Loop,
            LoopError::Io { source, .. } => ErrorKind::of_io(source),
        }
    }

    fn io_source(&self) -> Option<(&std::path::Path, &std::io::Error)> {
        match self {
            LoopError::Io { path, source } => Some((path, source)),
            LoopError::Train(e) => e.io_source(),
            LoopError::Attribution(e) => e.io_source(),
            LoopError::Poa(e) => e.io_source(),
            LoopError::Model(e) => e.io_source(),
            LoopError::TrainLog(e) => e.io_source(),
            _ => None,
        }
    }
}

impl From<ModelError> for LoopError {
    fn from(e: ModelError) -> Self {
        Self::Model(Box::new(e))
    }
}

/// Result of the loop's stages.
pub type Result<T, E = LoopError> = std::result::Result<T, E>;

/// One adapter to fine-tune and register.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterPlan {
    /// Its name (requests name it; the model id is `keccak256("openledger:model:" + name)`).
    pub name: String,
    /// Modules to adapt (`"all-linear"`, `"q_proj"`, ...).
    pub targets: Vec<String>,
    /// LoRA rank.
    pub rank: usize,
    /// LoRA alpha.
    pub alpha: f64,
    /// Weight-decomposed LoRA.
    pub use_dora: bool,
    /// Fee per call, in wei of the payment token.
    pub fee: U256,
    /// Training seed.
    pub seed: u64,
}

impl AdapterPlan {
    /// LoRA of rank `rank` (alpha `2·rank`) on every linear layer.
    pub fn lora(name: &str, rank: usize, fee: U256, seed: u64) -> Self {
        Self {
            name: name.into(),
            targets: vec!["all-linear".into()],
            rank,
            alpha: 2.0 * rank as f64,
            use_dora: false,
            fee,
            seed,
        }
    }
}

/// One request: an adapter (or an ensemble of adapters) by name and a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPlan {
    /// The adapter's name, or an ensemble of planned LoRA adapters spelled as
    /// [`AdapterId::parse`] reads it: `a+b`, or with weights `a*0.6+b*0.4`. An ensemble is
    /// served with one SGMV segment per member, paid with `payForEnsemble` (the owners' part
    /// split by the weights), and its data pool's influence part is split among the members by
    /// weight, each member's part over its own training records by TracIn.
    pub adapter: String,
    /// The prompt text.
    pub prompt: String,
}

/// What a record flagged as harmful on the validation set costs its contributor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HarmPolicy {
    /// The record earns nothing: its helpful influence on answers is not paid and it is not
    /// cited. Its contributor's other records are paid as usual.
    Zero,
    /// As [`HarmPolicy::Zero`], and the harm it does to each answer is charged to its
    /// contributor: where its TracIn score on an answer is negative, it owes the influence part
    /// of that answer's pool times its |score| over the helpful records' total (at most the
    /// whole part) — what it would earn had it helped as much as it hurt. Debts are taken out
    /// of the contributor's payouts when the epoch closes and shared among those who owe
    /// nothing; what cannot be taken is carried as a negative balance to later epochs
    /// ([`openledger_poa::split::DebtLedger`]).
    #[default]
    CarryNegative,
}

impl HarmPolicy {
    /// The policy's name (`"zero"`, `"carry_negative"`).
    pub fn name(self) -> &'static str {
        match self {
            HarmPolicy::Zero => "zero",
            HarmPolicy::CarryNegative => "carry_negative",
        }
    }
}

impl std::str::FromStr for HarmPolicy {
    type Err = LoopError;

    /// A policy by [`HarmPolicy::name`].
    fn from_str(s: &str) -> Result<Self> {
        [HarmPolicy::Zero, HarmPolicy::CarryNegative]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                LoopError::Config(format!(
                    "harm policy {s:?} is not \"zero\" or \"carry_negative\""
                ))
            })
    }
}

/// Everything the loop runs on.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// The datanet's name.
    pub datanet_name: String,
    /// Its records as JSONL (`content`, `contributor`, `license`, optional `metadata`).
    pub datanet_jsonl: String,
    /// The base model's shape (its vocabulary is set from the datanet).
    pub base: RandomLlama,
    /// The base model's seed.
    pub base_seed: u64,
    /// A pretrained llama-family GGUF chat model to fine-tune the adapters over and serve
    /// instead of the random base (SmolLM2-135M-Instruct: `bash scripts/fetch-models.sh`, then
    /// [`LoopConfig::smollm2`]). Its own tokenizer reads the datanet; each request is answered
    /// from the records retrieved for it, numbered in the prompt, and the RAG part of the pool
    /// is split by ContextCite over those records instead of by relevance.
    pub pretrained: Option<PathBuf>,
    /// ContextCite's ablations per answer on a pretrained base.
    pub context_cite_samples: usize,
    /// Adapters to fine-tune, register and serve.
    pub adapters: Vec<AdapterPlan>,
    /// Optimizer steps per adapter.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Checkpoints kept for influence (evenly spaced, the last at the final step).
    pub checkpoints: usize,
    /// Requests served in one mixed batch.
    pub requests: Vec<RequestPlan>,
    /// Longest answer.
    pub max_new_tokens: usize,
    /// Share of each inference's data pool paid by training influence, in basis points; the
    /// rest is paid by RAG citations.
    pub influence_bps: u16,
    /// Citations per answer.
    pub rag_top_k: usize,
    /// Softmax temperature turning citation relevance into weights.
    pub rag_temperature: f64,
    /// How near-duplicates are found.
    pub near_duplicates: MinHashConfig,
    /// Report what contributors would have earned from the datanet before splitting and with
    /// no near-duplicate clustering (each adapter is trained again on every record).
    pub counterfactual: bool,
    /// The datanet as it was before its near-duplicate copies were submitted (JSONL), for the
    /// counterfactual; its records must all be in the datanet.
    pub before_splitting_jsonl: Option<String>,
    /// Gold answers (JSONL lines `{"prompt", "response"}`) that each trained record's influence
    /// is measured on after fine-tuning (TracIn over every adapter's checkpoints, summed): a
    /// record that makes them less likely is harmful. `None` measures and flags nothing.
    pub validation_jsonl: Option<String>,
    /// What a record flagged as harmful costs its contributor.
    pub harm: HarmPolicy,
    /// A record is flagged when its validation influence is negative and below the records'
    /// median by more than `harm_z` robust standard deviations (1.4826 × the median absolute
    /// deviation): a modified z-score, for which Iglewicz and Hoaglin (1993) recommend 3.5,
    /// the standard configuration's value.
    pub harm_z: f64,
    /// The contributors' reputation so far (earlier epochs' histories under its prior): this
    /// run adds every record's outcome after validation (accepted, harmful, or a copy of
    /// someone else's), and every contributor's weight in every split is multiplied by its
    /// score ([`openledger_poa::reputation`]). `None` weights nobody by reputation.
    pub reputation: Option<Reputation>,
    /// A sentence-transformers folder (all-MiniLM-L6-v2: `bash scripts/fetch-models.sh`)
    /// whose embeddings index the datanet for RAG and catch paraphrased copies that MinHash
    /// misses. `None`: a feature-hashing bag of words indexes the datanet and paraphrases go
    /// undetected (the report says which embedder ran).
    pub embedder: Option<PathBuf>,
    /// Two records whose sentence embeddings have at least this cosine similarity are one
    /// cluster (the later a copy of the earlier): [`PARAPHRASE_THRESHOLD`], chosen on
    /// [`PARAPHRASE_PAIRS_JSONL`]. Unused without `embedder`.
    pub paraphrase_threshold: f32,
    /// Where adapters and feature stores are written.
    pub work_dir: PathBuf,
}

impl LoopConfig {
    /// The shipped datanet, three adapters (LoRA r8 and DoRA r4 on every linear layer, LoRA r16
    /// on the MLP) on a 2-layer random LLaMA, eleven requests (the fourth for an ensemble of
    /// the two LoRA adapters, weighted 0.6 and 0.4), the counterfactual on.
    pub fn standard(work_dir: PathBuf) -> Self {
        let milli = |m: u64| U256::from(m) * U256::from(1_000_000_000_000_000u64);
        let mut dora = AdapterPlan::lora("pharma-dora-r4", 4, milli(3) + U256::from(1), 12);
        dora.use_dora = true;
        let mut mlp = AdapterPlan::lora("pharma-mlp-r16", 16, milli(1) + U256::from(7), 13);
        mlp.targets = ["gate_proj", "up_proj", "down_proj"]
            .map(String::from)
            .to_vec();
        let request = |adapter: &str, prompt: &str| RequestPlan {
            adapter: adapter.into(),
            prompt: prompt.into(),
        };
        let ensemble = "pharma-lora-r8*0.6+pharma-mlp-r16*0.4";
        Self {
            datanet_name: "drug-facts".into(),
            datanet_jsonl: DRUG_FACTS_JSONL.into(),
            base: RandomLlama {
                vocab: 0,
                hidden: 64,
                intermediate: 128,
                layers: 2,
                heads: 4,
                kv_heads: 2,
            },
            base_seed: 5,
            pretrained: None,
            context_cite_samples: 32,
            adapters: vec![
                AdapterPlan::lora("pharma-lora-r8", 8, milli(2) + U256::from(3), 11),
                dora,
                mlp,
            ],
            steps: 300,
            batch_size: 16,
            learning_rate: 1e-2,
            checkpoints: 3,
            requests: vec![
                request("pharma-lora-r8", "what does aspirin treat"),
                request("pharma-dora-r4", "how does metformin work"),
                request("pharma-mlp-r16", "how does prednisone work"),
                request(ensemble, "what does lisinopril treat"),
                request("pharma-lora-r8", "what does sertraline treat"),
                request("pharma-dora-r4", "what class is warfarin"),
                request("pharma-mlp-r16", "what class is omeprazole"),
                request("pharma-lora-r8", "what does allopurinol treat"),
                request("pharma-dora-r4", "how does donepezil work"),
                request("pharma-mlp-r16", "what class is sumatriptan"),
                request("pharma-lora-r8", "what does ondansetron treat"),
            ],
            max_new_tokens: 8,
            influence_bps: 5_000,
            rag_top_k: 3,
            rag_temperature: 0.1,
            near_duplicates: MinHashConfig {
                shingle: Shingle::Chars(5),
                bands: 32,
                rows: 4,
                threshold: 0.5,
                seed: 0x6d69_6e68,
            },
            counterfactual: true,
            before_splitting_jsonl: Some(without_copies(DRUG_FACTS_JSONL)),
            validation_jsonl: Some(DRUG_FACTS_VALIDATION_JSONL.into()),
            harm: HarmPolicy::CarryNegative,
            harm_z: 3.5,
            reputation: Some(
                Reputation::new(ReputationConfig::default()).expect("the default prior is valid"),
            ),
            embedder: None,
            paraphrase_threshold: PARAPHRASE_THRESHOLD,
            work_dir,
        }
    }

    /// The shipped datanet on a pretrained GGUF chat model (SmolLM2-135M-Instruct from
    /// `bash scripts/fetch-models.sh`): adapters fine-tuned over it for a few minutes on two
    /// cores (the standard three, with the LoRA and the DoRA on the attention's q/v only; 40
    /// steps of 8), ten requests answered from the records retrieved for them, the RAG part
    /// split by ContextCite; the counterfactual off (it trains every adapter again).
    pub fn smollm2(work_dir: PathBuf, gguf: PathBuf) -> Self {
        let mut c = Self::standard(work_dir);
        c.pretrained = Some(gguf);
        for a in &mut c.adapters[..2] {
            a.targets = ["q_proj", "v_proj"].map(String::from).to_vec();
        }
        c.steps = 40;
        c.batch_size = 8;
        c.learning_rate = 1e-3;
        c.checkpoints = 2;
        c.max_new_tokens = 16;
        c.counterfactual = false;
        c
    }

    /// [`smollm2`](Self::smollm2) made smaller: the two LoRA adapters, four requests (one for
    /// their ensemble), 24 steps.
    pub fn smollm2_quick(work_dir: PathBuf, gguf: PathBuf) -> Self {
        let mut c = Self::smollm2(work_dir, gguf).shrunk();
        c.steps = 24;
        c
    }

    /// The two LoRA adapters (no DoRA: it cannot be an ensemble's member) and the first four
    /// requests for them, the ensemble of both among them.
    fn shrunk(mut self) -> Self {
        self.adapters.retain(|a| !a.use_dora);
        self.adapters.truncate(2);
        let planned = |r: &RequestPlan| self.members_of(r).is_ok();
        let kept: Vec<RequestPlan> = self
            .requests
            .iter()
            .filter(|r| planned(r))
            .take(4)
            .cloned()
            .collect();
        self.requests = kept;
        self
    }

    /// A smaller run for tests: the two LoRA adapters, four requests (one for their ensemble).
    pub fn quick(work_dir: PathBuf) -> Self {
        Self::standard(work_dir).shrunk()
    }

    /// Checks that the configuration can run: at least one adapter (distinct names) and one
    /// request (each naming a planned adapter), `1 ≤ checkpoints ≤ steps`, a batch, an answer
    /// and a citation of at least one, basis points ≤ 10,000, a finite positive learning rate
    /// and citation temperature, a work folder. [`PayableAi::new`] calls it.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(LoopError::Config(reason));
        if self.adapters.is_empty() || self.requests.is_empty() {
            return bad("at least one adapter and one request are needed".into());
        }
        if self.influence_bps > 10_000 {
            return bad(format!(
                "influence_bps {} is above 10000",
                self.influence_bps
            ));
        }
        if self.steps == 0 || self.checkpoints == 0 || self.checkpoints > self.steps {
            return bad(format!(
                "steps {} and checkpoints {} must satisfy 1 <= checkpoints <= steps",
                self.steps, self.checkpoints
            ));
        }
        for (name, value) in [
            ("batch_size", self.batch_size),
            ("max_new_tokens", self.max_new_tokens),
            ("rag_top_k", self.rag_top_k),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        for (name, value) in [
            ("learning_rate", self.learning_rate),
            ("rag_temperature", self.rag_temperature),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return bad(format!(
                    "{name} must be a finite positive number, found {value}"
                ));
            }
        }
        if self.work_dir.as_os_str().is_empty() {
            return bad("work_dir is an empty path".into());
        }
        if self.pretrained.is_some() && self.counterfactual {
            return bad(
                "the counterfactual (every adapter trained again without clustering) runs on the \
                 random base only: set counterfactual to false with a pretrained model"
                    .into(),
            );
        }
        if self.pretrained.is_some() && self.context_cite_samples < 2 {
            return bad(format!(
                "context_cite_samples must be at least 2, found {}",
                self.context_cite_samples
            ));
        }
        if !(self.harm_z.is_finite() && self.harm_z >= 0.0) {
            return bad(format!(
                "harm_z must be a finite number >= 0, found {}",
                self.harm_z
            ));
        }
        for r in &self.requests {
            self.members_of(r)?;
        }
        let mut names: Vec<&str> = self.adapters.iter().map(|a| a.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return bad("adapter names must be distinct".into());
        }
        Ok(())
    }
}

impl LoopConfig {
    /// The planned adapters `request` is served with (their indices in `adapters`) and their
    /// weights: one adapter with weight 1, or an ensemble's members. An unknown adapter, a
    /// malformed spelling, or a DoRA adapter in an ensemble is [`LoopError::Config`] naming it.
    pub fn members_of(&self, request: &RequestPlan) -> Result<Vec<(usize, f32)>> {
        let bad = |reason: String| {
            LoopError::Config(format!(
                "request {:?} names adapter {:?}: {reason}",
                request.prompt, request.adapter
            ))
        };
        let id = AdapterId::parse(&request.adapter).map_err(|e| bad(e.to_string()))?;
        let members = id.members().unwrap_or_else(|| vec![(id.clone(), 1.0)]);
        let mut out = Vec::with_capacity(members.len());
        for (member, weight) in members {
            let k = self
                .adapters
                .iter()
                .position(|a| a.name == member.as_str())
                .ok_or_else(|| bad(format!("{member} is not planned")))?;
            if id.is_ensemble() && self.adapters[k].use_dora {
                return Err(bad(format!(
                    "{member} is a DoRA adapter, which cannot be a member of an ensemble"
                )));
            }
            out.push((k, weight));
        }
        if id.is_ensemble() {
            // The weights as the receipt will commit to them (in millionths), checked now
            // rather than after training and serving.
            openledger_chain::receipt::ensemble_shares(
                &out.iter().map(|m| m.1).collect::<Vec<_>>(),
            )
            .map_err(|e| bad(e.to_string()))?;
        }
        Ok(out)
    }
}

/// What the loop reports while it runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LoopEvent {
    /// A stage started.
    Stage {
        /// `"datanet"`, `"fine-tune"`, `"serve"`, `"attribute-and-pay"`, `"epoch"`.
        name: String,
    },
    /// Progress within a stage.
    Progress {
        /// The stage.
        stage: String,
        /// What is being worked on (an adapter, a request).
        item: String,
        /// Units done.
        done: usize,
        /// Units in all.
        total: usize,
        /// The training loss, while fine-tuning.
        loss: Option<f64>,
    },
    /// A token of a served answer, as soon as it is sampled.
    Token {
        /// The request's index.
        request: usize,
        /// Its adapter.
        adapter: String,
        /// The word.
        text: String,
    },
}

/// The chain accounts the loop acts as (dev accounts of the embedded chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Accounts {
    datanet_owner: Address,
    payer: Address,
    relayer: Address,
    model_owners: [Address; 3],
}

/// One training record: where it sits in the datanet and its prompt and answer.
#[derive(Clone, Debug)]
struct Item {
    prompt: String,
    response: String,
}

/// A fine-tuned adapter with the influence index of its training records.
struct Tuned {
    trainer: Trainer,
    index: AdapterInfluence,
    /// Datanet record index of each training example.
    records: Vec<usize>,
}

struct Served {
    /// The adapters it was served with (indices in the plan) and their weights: one with weight
    /// 1, or an ensemble's members.
    members: Vec<(usize, f32)>,
    /// Its adapter's slot in the ContextCite scorer (an ensemble's own slot).
    slot: usize,
    /// Whether the request spelled an ensemble (even of one weighted adapter, `a*0.5`): paid
    /// with `payForEnsemble`, as the server pays it.
    ensemble: bool,
    /// The request's question.
    question: String,
    prompt: Vec<u32>,
    answer: Vec<u32>,
    /// The records in the prompt, numbered from 1 in this order (datanet indices; empty on
    /// the random base).
    sources: Vec<usize>,
}

/// The gold answers of a validation JSONL: one `{"prompt", "response"}` object per line.
fn parse_validation(jsonl: &str) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    for (i, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |reason: String| LoopError::Config(format!("validation line {}: {reason}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .filter(|x| !x.trim().is_empty())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{k:?} is not a non-empty string")))
        };
        out.push(Item {
            prompt: field("prompt")?,
            response: field("response")?,
        });
    }
    if out.is_empty() {
        return Err(LoopError::Config(
            "the validation set has no answers".into(),
        ));
    }
    Ok(out)
}

/// The loop's state, stage by stage.
pub struct PayableAi {
    config: LoopConfig,
    chain: Box<dyn Chain>,
    /// The keys the loop acts with (dev account `i` of the embedded chain, or the keys given).
    keys: Vec<SigningKey>,
    deployment: Deployment,
    deploy_config: DeployConfig,
    operator: OperatorSigner,
    accounts: Accounts,
    datanet: Datanet,
    items: Vec<Item>,
    base: base::Base,
    /// The base with every adapter attached (slot = adapter index), scoring ablated prompts
    /// for ContextCite; made when the requests are served on a pretrained base.
    scorer: Option<openledger_lora::model::Model>,
    datanet_id: U256,
    version: u64,
    /// The block the deployment starts at: logs are read back from it.
    since_block: u64,
    /// Near-duplicate clusters of the datanet's records.
    clusters: Clusters,
    /// Records trained on and cited: the first committed record of each near-duplicate
    /// cluster.
    kept: Vec<usize>,
    /// What embeds records and answers for RAG.
    embedder: LoopEmbedder,
    /// Clusters joined because their records paraphrase each other.
    paraphrases: Vec<ParaphraseLink>,
    /// The gold answers every trained record's influence is measured on.
    validation: Vec<Item>,
    /// Records flagged as harmful on the validation set (datanet indices).
    flagged: std::collections::BTreeSet<usize>,
    /// Debts charged to the contributors of flagged records by this epoch's answers.
    debts: Option<openledger_poa::split::DebtLedger>,
    /// The contributors' reputation, this run's outcomes added after validation.
    reputation: Option<Reputation>,
    /// Records of the datanet as it was before splitting (when given).
    before: Option<Vec<usize>>,
    rag: Option<RagIndex>,
    rag_all: Option<RagIndex>,
    rag_before: Option<RagIndex>,
    tuned: Vec<Tuned>,
    /// Adapters trained on the datanet before splitting, when that is another training set.
    before_tuned: Vec<Tuned>,
    /// Adapters trained on every record, copies included (no clustering).
    naive: Vec<Tuned>,
    model_ids: Vec<B256>,
    served: Vec<Served>,
    epochs: Option<[Epoch; 3]>,
    report: Report,
}

fn revert(call: &str, out: &TxOutcome) -> LoopError {
    LoopError::Reverted {
        call: call.into(),
        reason: format!(
            "{:?}",
            openledger_chain::abi::decode_revert_any(&out.output)
        ),
    }
}

fn send<C: alloy_sol_types::SolCall>(
    chain: &mut dyn Chain,
    from: Address,
    to: Address,
    call: &C,
    name: &str,
) -> Result<TxOutcome> {
    let out = chain.send(from, to, call)?;
    if !out.is_success() {
        return Err(revert(name, &out));
    }
    Ok(out)
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> LoopError + '_ {
    move |source| LoopError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl PayableAi {
    /// Deploys the contracts on a fresh embedded chain, funds the payer and reads the datanet
    /// (nothing is published yet).
    pub fn new(config: LoopConfig) -> Result<Self> {
        let keys = EmbeddedChain::dev_keys()
            .into_iter()
            .map(|a| a.key)
            .collect();
        Self::on_chain(config, Box::new(EmbeddedChain::new(31337)), keys)
    }

    /// [`new`](Self::new) on `chain` (an [`RpcChain`](openledger_chain::rpc::RpcChain) on a
    /// node, or an embedded chain), acting with `keys` (at least ten, the chain able to send
    /// from each and each holding ether for gas): key 0 deploys and administers, 1 is the
    /// treasury, 2 the operator who signs receipts, 3 the epoch poster, 4 the datanet owner, 5
    /// the payer, 6–8 the model owners and 9 the relayer of claims.
    pub fn on_chain(
        config: LoopConfig,
        chain: Box<dyn Chain>,
        keys: Vec<SigningKey>,
    ) -> Result<Self> {
        Self::make(config, chain, keys, None)
    }

    /// [`on_chain`](Self::on_chain) with the suite of `deployment` instead of a new one: it is
    /// checked against the chain first (chain id, code, roles), and keys 0–3 must be its admin,
    /// treasury, operator and poster.
    pub fn on_deployment(
        config: LoopConfig,
        mut chain: Box<dyn Chain>,
        keys: Vec<SigningKey>,
        deployment: &DeploymentFile,
    ) -> Result<Self> {
        deployment.check(&mut *chain)?;
        let c = &deployment.config;
        for (i, (role, want)) in [
            ("admin", c.admin),
            ("treasury", c.treasury),
            ("operator", c.operator),
            ("poster", c.poster),
        ]
        .into_iter()
        .enumerate()
        {
            let got = keys.get(i).map(Address::from_private_key);
            if got != Some(want) {
                return Err(LoopError::Config(format!(
                    "key {i} must be the deployment's {role} {want}, is {got:?}"
                )));
            }
        }
        Self::make(config, chain, keys, Some(deployment))
    }

    /// The loop settling on the node at `url` (JSON-RPC) with `keys` (see
    /// [`on_chain`](Self::on_chain) for the ten roles): on the suite of the deployment file at
    /// `deployment` when given (checked first, see [`on_deployment`](Self::on_deployment)),
    /// else on a suite it deploys. A run on a deployment an earlier process used resumes from
    /// the chain (see [`Resumed`]).
    #[cfg(feature = "rpc")]
    pub fn on_node(
        config: LoopConfig,
        url: &str,
        keys: Vec<SigningKey>,
        deployment: Option<&std::path::Path>,
    ) -> Result<Self> {
        let chain = Box::new(openledger_chain::rpc::RpcChain::connect(url, keys.clone())?);
        match deployment {
            Some(path) => {
                let file = DeploymentFile::read(path)?;
                Self::on_deployment(config, chain, keys, &file)
            }
            None => Self::on_chain(config, chain, keys),
        }
    }

    fn make(
        config: LoopConfig,
        mut chain: Box<dyn Chain>,
        keys: Vec<SigningKey>,
        existing: Option<&DeploymentFile>,
    ) -> Result<Self> {
        if keys.len() < 10 {
            return Err(LoopError::Config(format!(
                "the loop acts with ten accounts, {} keys given",
                keys.len()
            )));
        }
        config.validate()?;
        let mut datanet = Datanet::new(config.datanet_name.clone());
        datanet.import_jsonl(config.datanet_jsonl.as_bytes())?;
        let items = datanet
            .records()
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let field = |k: &str| r.metadata.get(k).and_then(|v| v.as_str());
                let (prompt, response) = match (field("prompt"), field("response")) {
                    (Some(p), Some(a)) => (p.to_string(), a.to_string()),
                    _ => match r.content.split_once(" => ") {
                        Some((p, a)) => (p.to_string(), a.to_string()),
                        None => {
                            return Err(LoopError::RecordShape {
                                index,
                                content: r.content.chars().take(60).collect(),
                            });
                        }
                    },
                };
                if prompt.trim().is_empty() || response.trim().is_empty() {
                    return Err(LoopError::RecordShape {
                        index,
                        content: r.content.chars().take(60).collect(),
                    });
                }
                Ok(Item { prompt, response })
            })
            .collect::<Result<Vec<_>>>()?;
        if items.is_empty() {
            return Err(LoopError::Config("the datanet has no records".into()));
        }
        let texts: Vec<&str> = datanet
            .records()
            .iter()
            .map(|r| r.content.as_str())
            .collect();
        let minhash = cluster_near_duplicates(&texts, &config.near_duplicates)?;
        let embedder = match &config.embedder {
            Some(dir) => {
                let e = SentenceEmbedder::from_dir(dir).map_err(|e| LoopError::Model(e.into()))?;
                let vectors = e
                    .embed_batch(&texts)
                    .map_err(|e| LoopError::Model(e.into()))?
                    .concat();
                LoopEmbedder::Sentence {
                    model: Box::new(e),
                    records: vectors,
                }
            }
            None => LoopEmbedder::Hashing(HashingEmbedder::new(EMBED_DIM)),
        };
        let (clusters, paraphrases) = match &embedder {
            LoopEmbedder::Sentence { model, records } => {
                merge_paraphrases(&minhash, records, model.dim(), config.paraphrase_threshold)?
            }
            LoopEmbedder::Hashing(_) => (minhash, Vec::new()),
        };
        // Kept: the first committed record of each cluster (its representative, the smallest
        // index); later copies are neither trained on nor cited, whoever submitted them.
        let kept: Vec<usize> = (0..texts.len())
            .filter(|&i| clusters.cluster_of[i] == i)
            .collect();
        // The vocabulary (the simulated base model's tokenizer) is made of the kept records,
        // the validation set and the requests: like a real model's tokenizer it does not change
        // when copies are submitted, so copies cannot change the base model under everyone
        // else. Words found only in copies read as `<unk>`.
        let validation = match &config.validation_jsonl {
            Some(jsonl) => parse_validation(jsonl)?,
            None => Vec::new(),
        };
        let vocab = Vocab::from_texts(
            kept.iter()
                .map(|&i| &items[i])
                .chain(&validation)
                .flat_map(|it| [it.prompt.as_str(), it.response.as_str()])
                .chain(config.requests.iter().map(|r| r.prompt.as_str())),
        );
        let base = match &config.pretrained {
            Some(path) => base::Base::pretrained(path)?,
            None => {
                let mut shape = config.base;
                shape.vocab = vocab.len();
                base::Base::Random {
                    vocab,
                    shape,
                    seed: config.base_seed,
                }
            }
        };

        let at = |i: usize| Address::from_private_key(&keys[i]);
        let (deploy_config, deployment, since_block) = match existing {
            Some(f) => (
                f.config.clone(),
                f.contracts,
                f.transactions.iter().map(|t| t.block).min().unwrap_or(0),
            ),
            None => {
                let c = DeployConfig::with_accounts([at(0), at(1), at(2), at(3)]);
                let since = chain.head()?.number;
                let d = Deployment::deploy(&mut *chain, &c)?;
                (c, d, since)
            }
        };
        let operator = OperatorSigner::new(keys[2].clone());
        let accounts = Accounts {
            datanet_owner: at(4),
            payer: at(5),
            model_owners: [at(6), at(7), at(8)],
            relayer: at(9),
        };
        let mut report = Report::new(
            chain.chain_id(),
            &deployment,
            &deploy_config,
            accounts.datanet_owner,
            accounts.payer,
            accounts.relayer,
        );
        report.base_model = base.describe();
        let reputation = config.reputation.clone();
        Ok(Self {
            config,
            chain,
            keys,
            deployment,
            deploy_config,
            operator,
            accounts,
            datanet,
            items,
            base,
            scorer: None,
            datanet_id: U256::ZERO,
            version: 0,
            since_block,
            clusters,
            kept,
            embedder,
            paraphrases,
            validation,
            flagged: std::collections::BTreeSet::new(),
            debts: None,
            reputation,
            before: None,
            rag: None,
            rag_all: None,
            rag_before: None,
            tuned: Vec::new(),
            before_tuned: Vec::new(),
            naive: Vec::new(),
            model_ids: Vec::new(),
            served: Vec::new(),
            epochs: None,
            report,
        })
    }

    /// Every `E` the contract at `contract` emitted since the deployment, read back from the
    /// chain's logs (in pages on a node): what lets a new process resume from the chain.
    fn events_of<E: alloy_sol_types::SolEvent>(&mut self, contract: Address) -> Result<Vec<E>> {
        let filter = LogFilter {
            addresses: vec![contract],
            topic0: vec![E::SIGNATURE_HASH],
            from_block: self.since_block,
            to_block: None,
        };
        self.chain
            .logs(&filter)?
            .iter()
            .map(|l| {
                E::decode_log(&l.log).map(|e| e.data).map_err(|e| {
                    LoopError::Accounting(format!("a {} log does not decode: {e}", E::SIGNATURE))
                })
            })
            .collect()
    }

    /// The whole loop: every stage in order, then the report.
    pub fn run(config: LoopConfig, on: &mut dyn FnMut(&LoopEvent)) -> Result<Report> {
        Self::new(config)?.run_stages(on)
    }

    /// Every stage in order on a loop made with [`on_chain`](Self::on_chain) (or
    /// [`new`](Self::new)), then the report.
    pub fn run_stages(mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<Report> {
        self.publish_datanet(on)?;
        self.fine_tune(on)?;
        self.serve(on)?;
        self.attribute_and_pay(on)?;
        self.close_epoch(on)?;
        Ok(self.report)
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// The chain (read balances, replay calls).
    pub fn chain(&mut self) -> &mut dyn Chain {
        &mut *self.chain
    }

    /// The address of the loop's account `i` (see [`on_chain`](Self::on_chain) for the roles).
    pub fn account(&self, i: usize) -> Option<Address> {
        self.keys.get(i).map(Address::from_private_key)
    }

    /// Who administers, receives the protocol share, signs receipts and posts roots, and the
    /// split.
    pub fn deploy_config(&self) -> &DeployConfig {
        &self.deploy_config
    }

    /// The deployed contracts.
    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The datanet.
    pub fn datanet(&self) -> &Datanet {
        &self.datanet
    }

    /// Stage 1: commits the datanet, registers it and publishes the version on chain, finds
    /// near-duplicates, indexes the records for RAG, and has each model owner request a
    /// training grant that the datanet owner approves.
    pub fn publish_datanet(&mut self, on: &mut dyn FnMut(&LoopEvent)) -> Result<&DatanetReport> {
        let t = Instant::now();
        on(&LoopEvent::Stage {
            name: "datanet".into(),
        });
        if self.datanet_id != U256::ZERO {
            return Err(LoopError::Config("the datanet is already published".into()));
        }
        let version = self.datanet.commit()?;
        let registry = self.deployment.datanets;
        let owner = self.accounts.datanet_owner;
        let metadata = keccak256(self.config.datanet_jsonl.as_bytes());
        // What an earlier process already did on this deployment (the same owner and metadata,
        // the same version) is read back from the registry's logs and not done again.
        let registered = self
            .events_of::<DatanetRegistry::DatanetRegistered>(registry)?
            .into_iter()
            .find(|e| e.owner == owner && e.metadataHash == metadata)
            .map(|e| e.datanetId);
        let id = match registered {
            Some(id) => id,
            None => {
                let out = send(
                    &mut *self.chain,
                    owner,
                    registry,
                    &DatanetRegistry::registerDatanetCall {
                        metadataHash: metadata,
                        uri: format!("openledger://datanets/{}", self.config.datanet_name),
                    },
                    "registerDatanet",
                )?;
                // Read from the events: a node's receipt carries no return data.
                out.events::<DatanetRegistry::DatanetRegistered>()
                    .first()
                    .map(|e| e.datanetId)
                    .ok_or_else(|| LoopError::Accounting("no DatanetRegistered event".into()))?
            }
        };
        let count = version.record_count as u64;
        let published = self
            .events_of::<DatanetRegistry::VersionPublished>(registry)?
            .into_iter()
            .find(|e| e.datanetId == id && e.recordsRoot == version.root && e.recordCount == count)
            .map(|e| e.version);
        self.report.resumed.datanet = registered.is_some() && published.is_some();
        self.version = match published {
            Some(v) => v,
            None => send(
                &mut *self.chain,
                owner,
                registry,
                &DatanetRegistry::publishVersionCall {
                    datanetId: id,
                    recordsRoot: version.root,
                    recordCount: count,
                },
                "publishVersion",
            )?
            .events::<DatanetRegistry::VersionPublished>()
            .first()
            .map(|e| e.version)
            .ok_or_else(|| LoopError::Accounting("no VersionPublished event".into()))?,
        };
        self.datanet_id = id;
        let n_owners = self.config.adapters.len().min(3);
        for &who in &self.accounts.model_owners[..n_owners] {
            let raw = self.chain.view(
                registry,
                &DatanetRegistry::accessStatusCall {
                    datanetId: id,
                    requester: who,
                },
            )?;
            let status = AccessStatus::from_u8(raw).ok_or_else(|| {
                LoopError::Accounting(format!("access status {raw} of {who} is not one we know"))
            })?;
            if status == AccessStatus::Approved {
                continue;
            }
            if status != AccessStatus::Requested {
                send(
                    &mut *self.chain,
                    who,
                    registry,
                    &DatanetRegistry::requestAccessCall {
                        datanetId: id,
                        purposeHash: keccak256("fine-tune: payable-ai"),
                    },
                    "requestAccess",
                )?;
            }
            send(
                &mut *self.chain,
                owner,
                registry,
                &DatanetRegistry::approveAccessCall {
                    datanetId: id,
                    requester: who,
                },
                "approveAccess",
            )?;
        }

        let n_records = self.datanet.records().len();
        if self.config.counterfactual
            && let Some(jsonl) = &self.config.before_splitting_jsonl
        {
            let mut before = Datanet::new("before splitting");
            before.import_jsonl(jsonl.as_bytes())?;
            let hashes: std::collections::HashSet<ContentId> =
                before.records().iter().map(|r| r.hash).collect();
            let idx: Vec<usize> = (0..n_records)
                .filter(|&i| hashes.contains(&self.datanet.records()[i].hash))
                .collect();
            if idx.len() != hashes.len() {
                return Err(LoopError::Config(format!(
                    "the datanet before splitting has {} records, {} of them in the datanet",
                    hashes.len(),
                    idx.len()
                )));
            }
            self.before = Some(idx);
        }
        let index = |records: &[usize], on: &mut dyn FnMut(&LoopEvent)| -> Result<RagIndex> {
            let mut rag = RagIndex::new(self.embedder.dim(), Similarity::Cosine)?;
            for (done, &i) in records.iter().enumerate() {
                let r = &self.datanet.records()[i];
                rag.add(
                    r.hash,
                    r.contributor,
                    &r.content,
                    &self.embedder.record(i, &r.content)?,
                )?;
                on(&LoopEvent::Progress {
                    stage: "datanet".into(),
                    item: "rag index".into(),
                    done: done + 1,
                    total: records.len(),
                    loss: None,
                });
            }
            Ok(rag)
        };
        let rag = index(&self.kept, on)?;
        let all: Vec<usize> = (0..n_records).collect();
        let (rag_all, rag_before) = if self.config.counterfactual {
            let before = match &self.before {
                Some(b) if *b != self.kept => Some(index(b, &mut |_| {})?),
                _ => None,
            };
            (Some(index(&all, &mut |_| {})?), before)
        } else {
            (None, None)
        };
        for r in self.datanet.records() {
            if let Some(name) = r.metadata.get("contributor_name").and_then(|v| v.as_str()) {
                self.report.accounts.insert(r.contributor, name.to_string());
            }
        }
        self.rag = Some(rag);
        self.rag_all = rag_all;
        self.rag_before = rag_before;
        self.report.datanet = Some(DatanetReport::new(
            &self.config.datanet_name,
            &self.datanet,
            id,
            self.version,
            report::Dedup {
                clusters: &self.clusters,
                distinct: self.kept.len(),
                embedder: self.embedder.name(),
                paraphrases: &self.paraphrases,
            },
            n_owners,
        )?);
        self.report
            .seconds
            .insert("datanet".into(), t.elapsed().as_secs_f64());
        Ok(self.report.datanet.as_ref().expect("just set"))
    }
}
