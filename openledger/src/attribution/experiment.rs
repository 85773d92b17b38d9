//! The influence experiment, end to end on a model made in code:
//!
//! 1. a random tiny LLaMA ([`RandomLlama`]) is taught the synthetic key→value language
//!    ([`KeyValueTask`]) with one lookup table by a LoRA that is then merged into it — the
//!    pre-trained base;
//! 2. a fresh LoRA is fine-tuned on a datanet of sentences labelled by a *second* table, a
//!    fraction of them with flipped labels, under an approved access grant and with a training
//!    log and checkpoints;
//! 3. an [`AdapterInfluence`] of the checkpoints scores every record: self-influence, and
//!    TracIn-CP / DataInf influence on held-out queries (prompt + the model's answer);
//! 4. noisy-label detection is judged by the AUC of each ranking against the flipped labels,
//!    with the records' final training loss as the baseline;
//! 5. the linear datamodeling score (LDS) retrains on random subsets and correlates, per
//!    query, the sum of the subset's attribution scores with the retrained model's
//!    negative query loss.
//!
//! Every draw comes from [`ExperimentConfig::seed`], so the figures reproduce.

use openledger_core::error::{Classify, ErrorKind};
use std::path::Path;
use std::time::Instant;

use openledger_core::DType;
use openledger_core::grant::Grants;
use openledger_core::{Address, B256, ContentId, U256};
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::model::RandomLlama;
use openledger_lora::model::{Model, ModelConfig};
use openledger_train::{Example, LoraSettings, TrainConfig, TrainEvent, Trainer};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::metrics::{auc, lds, roc_curve};
use super::{AdapterInfluence, AttributionError};
use crate::synthetic::{KeyValueTask, LabeledDatanet, SyntheticError};
use openledger_poa::PoaError;
use openledger_poa::influence::{FeatureSpace, Method, Progress, tracin_weights};
use openledger_train::CheckpointCollector;

/// Settings of one LoRA training run of the experiment.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Optimizer steps.
    pub steps: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// LoRA rank.
    pub r: usize,
    /// LoRA alpha.
    pub alpha: f64,
}

impl RunSettings {
    fn config(&self, seed: u64) -> TrainConfig {
        let mut c = TrainConfig::new(LoraSettings::new(&["all-linear"], self.r, self.alpha));
        c.steps = self.steps;
        c.batch_size = self.batch_size;
        c.learning_rate = self.learning_rate;
        c.warmup_steps = 0;
        c.seed = seed;
        c
    }
}

/// Everything the experiment draws and trains.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentConfig {
    /// The language.
    pub task: KeyValueTask,
    /// Hidden size, MLP size, layers, heads, KV heads of the random LLaMA (its vocabulary is
    /// the task's).
    pub shape: (usize, usize, usize, usize, usize),
    /// Factor on the random output head (uniform in ±0.05 before scaling).
    pub head_scale: f32,
    /// Sentences the base is pre-trained on.
    pub pretrain_examples: usize,
    /// The pre-training run (its LoRA is merged into the base).
    pub pretrain: RunSettings,
    /// Records in the datanet.
    pub records: usize,
    /// Fraction of records with flipped labels.
    pub flip_fraction: f64,
    /// Contributors the records are spread over.
    pub contributors: usize,
    /// The fine-tuning run.
    pub finetune: RunSettings,
    /// Steps (1-based) whose checkpoints TracIn-CP uses.
    pub checkpoints: Vec<usize>,
    /// Held-out queries.
    pub queries: usize,
    /// DataInf's λ scale.
    pub datainf_lambda: f64,
    /// Also score DataInf per query, for its LDS (one DataInf pass per query).
    pub datainf_lds: bool,
    /// Random subsets retrained for the LDS (0 skips it).
    pub lds_subsets: usize,
    /// Fraction of the records in each subset.
    pub lds_fraction: f64,
    /// Seed of every draw.
    pub seed: u64,
    /// A folder to write the run into for a peer to repeat it: the pre-trained base as an HF
    /// folder (`base/`), and `task.json` — the training examples (token ids, loss masks,
    /// flipped or not), the queries, the fine-tune's settings, the LDS subsets with each
    /// retrained model's query outputs, and our scores, figures and seconds
    /// (`scripts/dattri_side_by_side.py` reads it).
    pub export: Option<std::path::PathBuf>,
}

/// The detection and LDS figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentReport {
    /// Parameters of the base model.
    pub base_parameters: usize,
    /// Trainable LoRA parameters of the fine-tune (the gradient dimension).
    pub lora_parameters: usize,
    /// Accuracy of the pre-trained base on held-out sentences of its own table.
    pub base_accuracy: f64,
    /// Accuracy of the fine-tuned model on the held-out queries (true labels).
    pub finetune_accuracy: f64,
    /// Records and how many were flipped.
    pub records: usize,
    /// Flipped records.
    pub flipped: usize,
    /// Noisy-label AUC of self-influence (TracIn-CP, higher = more suspicious).
    pub auc_self_influence: f64,
    /// Noisy-label AUC of harmfulness on the query set (minus summed TracIn-CP).
    pub auc_tracin_queries: f64,
    /// Noisy-label AUC of harmfulness on the query set (minus summed DataInf).
    pub auc_datainf_queries: f64,
    /// Noisy-label AUC of the final training loss (the baseline).
    pub auc_loss: f64,
    /// Per record: self-influence, TracIn harm, loss, flipped (for plots).
    pub per_record: Vec<(f64, f64, f64, bool)>,
    /// Per contributor: address, summed TracIn influence on the query set, flipped records.
    pub per_contributor: Vec<(Address, f64, usize)>,
    /// LDS of TracIn-CP and the number of queries that entered it (with ≥ 2 retrainings).
    pub lds_tracin: Option<(f64, usize)>,
    /// LDS of DataInf (when [`ExperimentConfig::datainf_lds`]).
    pub lds_datainf: Option<(f64, usize)>,
    /// Retrainings done for the LDS.
    pub retrainings: usize,
    /// The training log's head (what `registerModel` would commit to).
    pub log_head: B256,
    /// Wall seconds per phase: pre-training, fine-tuning, index, queries and scores, LDS.
    pub seconds: [f64; 5],
}

impl ExperimentReport {
    /// ROC points of a ranking: 0 self-influence, 1 TracIn harm, 2 loss.
    pub fn roc(&self, which: usize) -> Vec<(f64, f64)> {
        let s: Vec<f64> = self
            .per_record
            .iter()
            .map(|r| [r.0, r.1, r.2][which.min(2)])
            .collect();
        let p: Vec<bool> = self.per_record.iter().map(|r| r.3).collect();
        roc_curve(&s, &p)
    }
}

/// Why the experiment stopped (large causes are boxed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// Attribution failed.
    #[error(transparent)]
    Attribution(Box<AttributionError>),
    /// The trainer failed.
    #[error(transparent)]
    Train(Box<openledger_train::TrainError>),
    /// The influence index refused.
    #[error(transparent)]
    Poa(Box<PoaError>),
    /// The base model could not be built.
    #[error(transparent)]
    Model(Box<openledger_lora::model::ModelError>),
    /// The access grant could not be set up.
    #[error(transparent)]
    Grant(Box<openledger_core::grant::GrantError>),
    /// The training log does not verify.
    #[error(transparent)]
    Log(Box<openledger_core::trainlog::TrainLogError>),
    /// The data could not be generated.
    #[error(transparent)]
    Synthetic(Box<SyntheticError>),
    /// A metric was undefined (e.g. no flipped record), or the trainer kept no log.
    #[error("metric undefined: {0}")]
    Metric(String),
}

impl Classify for ExperimentError {
    fn kind(&self) -> ErrorKind {
        match self {
            ExperimentError::Attribution(e) => e.kind(),
            ExperimentError::Train(e) => e.kind(),
            ExperimentError::Poa(e) => e.kind(),
            ExperimentError::Model(e) => e.kind(),
            ExperimentError::Grant(e) => e.kind(),
            ExperimentError::Log(e) => e.kind(),
            ExperimentError::Synthetic(e) => e.kind(),
            ExperimentError::Metric(_) => ErrorKind::InvalidArgument,
        }
    }
}

macro_rules! boxed_from {
    ($($variant:ident($t:ty)),* $(,)?) => {$(
        impl From<$t> for ExperimentError {
            fn from(e: $t) -> Self {
                ExperimentError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Attribution(AttributionError),
    Train(openledger_train::TrainError),
    Poa(PoaError),
    Model(openledger_lora::model::ModelError),
    Grant(openledger_core::grant::GrantError),
    Log(openledger_core::trainlog::TrainLogError),
    Synthetic(SyntheticError),
);

/// The random LLaMA of `shape` and `seed` with its output head scaled by `head_scale`: the
/// adapters of the experiment cannot train the head, so its range bounds how confident (and
/// how able to memorise) the model can become.
pub fn base_model(
    shape: &RandomLlama,
    head_scale: f32,
    seed: u64,
) -> Result<Model, ExperimentError> {
    let cfg = ModelConfig::from_json(shape.config_json().as_bytes())?;
    let tensors = shape
        .tensors(seed)
        .into_iter()
        .map(|(k, mut t)| {
            if k == "lm_head.weight" {
                t.data.iter_mut().for_each(|v| *v *= head_scale);
            }
            (k, HostTensor::from_f32(DType::F32, t.shape, &t.data))
        })
        .collect();
    Ok(Model::from_tensors(cfg, tensors)?)
}

/// Mean loss of each example at the trainer's current parameters.
fn losses(trainer: &Trainer, examples: &[Example]) -> Result<Vec<f64>, ExperimentError> {
    examples
        .iter()
        .map(|e| Ok(trainer.evaluate(std::slice::from_ref(e))?.loss))
        .collect()
}

/// Greedy accuracy on `(prompt, value token)` pairs.
fn accuracy(trainer: &Trainer, pairs: &[(Vec<u32>, u32)]) -> Result<f64, ExperimentError> {
    let mut ok = 0;
    for (p, v) in pairs {
        if trainer.greedy(p, 1)?[0] == *v {
            ok += 1;
        }
    }
    Ok(ok as f64 / pairs.len().max(1) as f64)
}

fn need(v: Option<f64>, what: &str) -> Result<f64, ExperimentError> {
    v.ok_or_else(|| ExperimentError::Metric(what.to_string()))
}

/// Runs the experiment; `dir` holds the feature store; `progress` hears every phase.
pub fn run(
    cfg: &ExperimentConfig,
    dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExperimentReport, ExperimentError> {
    let task = cfg.task;
    let (hidden, intermediate, layers, heads, kv_heads) = cfg.shape;
    let shape = RandomLlama {
        vocab: task.vocab(),
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
    };
    let mut seconds = [0.0; 5];

    // 1. Pre-train the base on table 0, merge the LoRA in.
    let t0 = Instant::now();
    let random = base_model(&shape, cfg.head_scale, cfg.seed)?;
    let table0 = task.table(cfg.seed ^ 0x7ab1e0);
    let pre = task.sentences(&table0, cfg.pretrain_examples + 200, cfg.seed ^ 0x94e)?;
    let pre_train: Vec<Example> = pre[..cfg.pretrain_examples]
        .iter()
        .map(|s| task.sentence_example(s))
        .collect();
    let mut pt = Trainer::new(&random, cfg.pretrain.config(cfg.seed ^ 1))?;
    let steps = cfg.pretrain.steps;
    pt.train(&pre_train, &[], &mut |e| {
        if let TrainEvent::Step(s) = e {
            progress(Progress {
                stage: "pre-training",
                done: s.step,
                total: steps,
            })
        }
    })?;
    let held: Vec<(Vec<u32>, u32)> = pre[cfg.pretrain_examples..]
        .iter()
        .map(|s| (task.prompt(s), task.value_token(s.value)))
        .collect();
    let base_accuracy = accuracy(&pt, &held)?;
    let base: Model = pt.merged_model()?;
    if let Some(dir) = &cfg.export {
        pt.save_merged_base(&dir.join("base"))?;
    }
    // The base's id: the random shape and seed plus the merged adapter.
    let base_id = ContentId::of_parts(&[
        shape.config_json().as_bytes(),
        &cfg.seed.to_le_bytes(),
        pt.checkpoint()?.id.as_bytes(),
    ]);
    drop(pt);
    seconds[0] = t0.elapsed().as_secs_f64();

    // 2. The datanet (table 1, flipped labels), access grant, logged fine-tune.
    let t1 = Instant::now();
    let table1 = task.table(cfg.seed ^ 0x7ab1e1);
    let LabeledDatanet { datanet, labels } = task.datanet(
        "kv-finetune",
        &table1,
        cfg.records,
        cfg.flip_fraction,
        cfg.contributors,
        cfg.seed ^ 0xda7a,
    )?;
    let owner = Address::repeat_byte(0x0d);
    let trainer_account = Address::repeat_byte(0x7e);
    let mut grants = Grants::new();
    let datanet_id: U256 = grants.register_datanet(owner);
    grants.request(
        datanet_id,
        trainer_account,
        ContentId::of(b"influence audit").0,
    )?;
    grants.approve(datanet_id, owner, trainer_account)?;
    let train: Vec<Example> = datanet
        .records()
        .iter()
        .map(|r| Ok(task.example(&r.content)?.with_source(datanet_id, r.hash)))
        .collect::<Result<_, SyntheticError>>()?;
    let mut ft_cfg = cfg.finetune.config(cfg.seed ^ 2);
    ft_cfg.checkpoint_steps = cfg.checkpoints.clone();
    let mut trainer = Trainer::new(&base, ft_cfg)?;
    trainer.require_grants(grants, trainer_account);
    trainer.start_log(base_id.0);
    let mut kept = CheckpointCollector::new(&trainer);
    let steps = cfg.finetune.steps;
    trainer.train(&train, &[], &mut |e| {
        kept.observe(e);
        if let TrainEvent::Step(s) = e {
            progress(Progress {
                stage: "fine-tuning",
                done: s.step,
                total: steps,
            });
        }
    })?;
    let checkpoints = kept.finish()?;
    let log = trainer
        .training_log()
        .cloned()
        .ok_or_else(|| ExperimentError::Metric("training log missing".into()))?;
    let log_head = log.verify()?;
    let weights = tracin_weights(&log, &cfg.checkpoints)?;
    let loss = losses(&trainer, &train)?;
    seconds[1] = t1.elapsed().as_secs_f64();

    // 3. The influence index over the checkpoints.
    let t2 = Instant::now();
    let influence = AdapterInfluence::build(
        &dir.join("features.olfs"),
        &mut trainer,
        &train,
        &datanet,
        checkpoints.into_iter().zip(weights).collect(),
        FeatureSpace::Exact,
        progress,
    )?;
    seconds[2] = t2.elapsed().as_secs_f64();

    // 4. Queries: held-out prompts with the fine-tuned model's answer.
    let t3 = Instant::now();
    let q_sent = task.sentences(&table1, cfg.queries + cfg.records * 4, cfg.seed ^ 0x9e41)?;
    let used: std::collections::HashSet<String> = datanet
        .records()
        .iter()
        .map(|r| r.content.clone())
        .collect();
    let q_sent: Vec<_> = q_sent
        .into_iter()
        .filter(|s| {
            // Exclude prompts present in the datanet under any label.
            (0..task.values).all(|v| {
                !used.contains(&task.text(&crate::synthetic::Sentence {
                    value: v,
                    ..s.clone()
                }))
            })
        })
        .take(cfg.queries)
        .collect();
    let mut queries = Vec::with_capacity(q_sent.len());
    let mut truth = Vec::with_capacity(q_sent.len());
    for s in &q_sent {
        let p = task.prompt(s);
        let answer = trainer.greedy(&p, 1)?;
        truth.push((p.clone(), task.value_token(s.value)));
        queries.push((p, answer));
    }
    let finetune_accuracy = accuracy(&trainer, &truth)?;
    // Seconds of each attribution step, for the export: featurising the queries, TracIn
    // scores, self-influence, DataInf scores.
    let mut split = [0f64; 4];
    let t = Instant::now();
    let features = influence.featurize(&mut trainer, &queries, progress)?;
    split[0] = t.elapsed().as_secs_f64();
    let index = influence.index();
    let t = Instant::now();
    let tracin = index.scores(&features, Method::TracIn, progress)?;
    split[1] = t.elapsed().as_secs_f64();
    let datainf_method = Method::DataInf {
        lambda_scale: cfg.datainf_lambda,
    };
    let t = Instant::now();
    let datainf_set = index.query_set_scores(&features, datainf_method)?;
    let datainf = if cfg.datainf_lds {
        Some(index.scores(&features, datainf_method, progress)?)
    } else {
        None
    };
    split[3] = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let self_inf = index.self_influence()?;
    split[2] = t.elapsed().as_secs_f64();
    let flipped: Vec<bool> = labels.iter().map(|l| l.flipped).collect();
    let tracin_harm: Vec<f64> = (0..train.len())
        .map(|i| -tracin.iter().map(|q| q[i]).sum::<f64>())
        .collect();
    let datainf_harm: Vec<f64> = datainf_set.iter().map(|v| -v).collect();
    let auc_self_influence = need(auc(&self_inf, &flipped), "self-influence AUC")?;
    let auc_tracin_queries = need(auc(&tracin_harm, &flipped), "TracIn AUC")?;
    let auc_datainf_queries = need(auc(&datainf_harm, &flipped), "DataInf AUC")?;
    let auc_loss = need(auc(&loss, &flipped), "loss AUC")?;
    let attribution = index.attribution(&tracin)?;
    let per_contributor = attribution
        .per_contributor
        .iter()
        .map(|&(who, s)| {
            let bad = labels
                .iter()
                .filter(|l| l.contributor == who && l.flipped)
                .count();
            (who, s, bad)
        })
        .collect();
    seconds[3] = t3.elapsed().as_secs_f64();

    // 5. LDS: retrain on random subsets, compare predicted and actual query outputs.
    let t4 = Instant::now();
    let query_examples: Vec<Example> = queries
        .iter()
        .map(|(p, a)| Example::prompt_response(p, a))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1d5);
    let size = ((cfg.lds_fraction * train.len() as f64).round() as usize).clamp(1, train.len());
    let (mut pred_t, mut pred_d, mut actual) = (Vec::new(), Vec::new(), Vec::new());
    let mut subsets = Vec::new();
    for j in 0..cfg.lds_subsets {
        let mut idx: Vec<usize> = (0..train.len()).collect();
        idx.shuffle(&mut rng);
        idx.truncate(size);
        idx.sort_unstable();
        subsets.push(idx.clone());
        let subset: Vec<Example> = idx.iter().map(|&i| train[i].clone()).collect();
        let mut sub_cfg = cfg.finetune.config(cfg.seed ^ 2);
        sub_cfg.checkpoint_steps.clear();
        let mut t = Trainer::new(&base, sub_cfg)?;
        t.train(&subset, &[], &mut |_| {})?;
        actual.push(losses(&t, &query_examples)?.iter().map(|l| -l).collect());
        let predict = |s: &[Vec<f64>]| -> Vec<f64> {
            s.iter().map(|q| idx.iter().map(|&i| q[i]).sum()).collect()
        };
        pred_t.push(predict(&tracin));
        if let Some(d) = &datainf {
            pred_d.push(predict(d));
        }
        progress(Progress {
            stage: "retraining",
            done: j + 1,
            total: cfg.lds_subsets,
        });
    }
    let (lds_tracin, lds_datainf) = if cfg.lds_subsets >= 2 {
        (
            lds(&pred_t, &actual),
            datainf.as_ref().and_then(|_| lds(&pred_d, &actual)),
        )
    } else {
        (None, None)
    };
    seconds[4] = t4.elapsed().as_secs_f64();

    if let Some(dir) = &cfg.export {
        let example =
            |e: &Example| serde_json::json!({"tokens": e.tokens, "loss_mask": e.loss_mask});
        let f = &cfg.finetune;
        let doc = serde_json::json!({
            "train": train.iter().zip(&flipped).map(|(e, &flip)| {
                let mut v = example(e);
                v["flipped"] = flip.into();
                v
            }).collect::<Vec<_>>(),
            "queries": query_examples.iter().map(example).collect::<Vec<_>>(),
            "finetune": {
                "steps": f.steps, "batch_size": f.batch_size, "learning_rate": f.learning_rate,
                "r": f.r, "alpha": f.alpha, "targets": "all-linear", "optimizer": "adamw",
                "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 0,
                "schedule": "cosine", "max_grad_norm": 1.0, "checkpoints": cfg.checkpoints,
            },
            "lds": {"fraction": cfg.lds_fraction, "subsets": subsets, "actual": actual},
            "ours": {
                "self_influence": self_inf,
                "tracin": tracin,
                "datainf": datainf,
                "auc_self_influence": auc_self_influence,
                "auc_tracin_queries": auc_tracin_queries,
                "auc_datainf_queries": auc_datainf_queries,
                "auc_loss": auc_loss,
                "lds_tracin": lds_tracin.map(|l| l.0),
                "lds_datainf": lds_datainf.map(|l| l.0),
                "finetune_accuracy": finetune_accuracy,
                "seconds": {"pretrain": seconds[0], "finetune": seconds[1],
                    "index": seconds[2], "queries": seconds[3], "lds": seconds[4],
                    "featurize": split[0], "tracin": split[1], "self_influence": split[2],
                    "datainf": split[3]},
            },
        });
        let path = dir.join("task.json");
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, doc.to_string()))
            .map_err(|e| {
                ExperimentError::Metric(format!("cannot write {}: {e}", path.display()))
            })?;
    }

    Ok(ExperimentReport {
        base_parameters: shape.parameters(),
        lora_parameters: trainer.num_parameters(),
        base_accuracy,
        finetune_accuracy,
        records: train.len(),
        flipped: flipped.iter().filter(|&&f| f).count(),
        auc_self_influence,
        auc_tracin_queries,
        auc_datainf_queries,
        auc_loss,
        per_record: (0..train.len())
            .map(|i| (self_inf[i], tracin_harm[i], loss[i], flipped[i]))
            .collect(),
        per_contributor,
        lds_tracin,
        lds_datainf,
        retrainings: cfg.lds_subsets,
        log_head,
        seconds,
    })
}

impl ExperimentConfig {
    /// The configuration the integration test and the `influence_audit` example run, with
    /// `lds_subsets` retrainings for the LDS.
    pub fn standard(lds_subsets: usize) -> Self {
        ExperimentConfig {
            task: KeyValueTask {
                keys: 16,
                values: 8,
                alphabet: 12,
                distractors: 3,
            },
            shape: (64, 128, 2, 4, 2),
            head_scale: 10.0,
            pretrain_examples: 1024,
            pretrain: RunSettings {
                steps: 300,
                batch_size: 32,
                learning_rate: 1e-2,
                r: 16,
                alpha: 16.0,
            },
            records: 200,
            flip_fraction: 0.2,
            contributors: 10,
            finetune: RunSettings {
                steps: 150,
                batch_size: 16,
                learning_rate: 5e-3,
                r: 8,
                alpha: 8.0,
            },
            checkpoints: vec![30, 60, 90, 120, 150],
            queries: 32,
            datainf_lambda: 0.1,
            datainf_lds: true,
            lds_subsets,
            lds_fraction: 0.5,
            seed: 7,
            export: None,
        }
    }
}
