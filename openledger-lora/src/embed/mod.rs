//! Sentence embeddings from a sentence-transformers folder (a BERT encoder such as
//! all-MiniLM-L6-v2): its tokenizer, the encoder, the pooling its `1_Pooling/config.json` names
//! and the unit-length normalisation its `modules.json` asks for, computed as
//! sentence-transformers computes them (vectors equal to 1e-5; see `tests/embedder.rs`).
//!
//! ```no_run
//! use openledger_lora::embed::SentenceEmbedder;
//!
//! let e = SentenceEmbedder::from_dir("target/models/all-MiniLM-L6-v2".as_ref()).unwrap();
//! let v = e.embed_batch(&["Ibuprofen eases pain.", "Pain is eased by ibuprofen."]).unwrap();
//! let cos: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
//! assert!(cos > 0.8);
//! ```

mod bert;

use std::path::{Component, Path, PathBuf};

use serde_json::Value;
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

pub use bert::BertConfig;
use bert::{Bert, BertTensors};

use crate::adapter::tensors::read_safetensors_where;
use crate::model::ModelError;
use crate::model::TOKENIZER_FILE;
use openledger_core::fsx::{MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES, read_regular};

/// The folder `scripts/fetch-models.sh` put model `name` in — `$OPENLEDGER_MODELS/name`, else
/// `models_root/name` (the scripts' default root is the workspace's `target/models`) — when
/// the fetch completed; `Err` with the folder looked at otherwise.
pub fn fetched_model(models_root: &Path, name: &str) -> Result<PathBuf, PathBuf> {
    let root = std::env::var_os("OPENLEDGER_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_root.to_path_buf());
    let dir = root.join(name);
    if dir.join(".complete").is_file() {
        Ok(dir)
    } else {
        Err(dir)
    }
}

/// What tests and examples do about model `name` (see [`fetched_model`]): `Ok(Some(dir))` when
/// it is fetched; `Ok(None)`, after printing that the caller is skipped, when it is absent;
/// `Err(message)` when it is absent and `OPENLEDGER_REQUIRE_MODELS=1` makes that a failure (as
/// the full test script sets after fetching the models).
pub fn fetched_model_or_skip(models_root: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    match fetched_model(models_root, name) {
        Ok(dir) => Ok(Some(dir)),
        Err(dir) if std::env::var("OPENLEDGER_REQUIRE_MODELS").as_deref() == Ok("1") => {
            Err(format!(
                "{} is absent and OPENLEDGER_REQUIRE_MODELS=1: run `bash scripts/fetch-models.sh`",
                dir.display()
            ))
        }
        Err(dir) => {
            eprintln!(
                "skipped: {} is absent (run `bash scripts/fetch-models.sh`)",
                dir.display()
            );
            Ok(None)
        }
    }
}

/// Sentences encoded per forward pass by [`SentenceEmbedder::embed_batch`].
pub const BATCH: usize = 32;

/// How token states become one sentence vector (`1_Pooling/config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the sentence's token states (`pooling_mode_mean_tokens`).
    Mean,
    /// The state of the first token, `[CLS]` (`pooling_mode_cls_token`).
    Cls,
    /// The element-wise maximum (`pooling_mode_max_tokens`).
    Max,
}

/// A sentence-transformers embedding model: text in, one vector per text out.
pub struct SentenceEmbedder {
    bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_seq_len: usize,
    dir: PathBuf,
}

impl std::fmt::Debug for SentenceEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEmbedder")
            .field("dir", &self.dir)
            .field("dim", &self.dim())
            .field("pooling", &self.pooling)
            .field("normalize", &self.normalize)
            .field("max_seq_len", &self.max_seq_len)
            .finish()
    }
}

fn read(dir: &Path, name: &str, limit: u64) -> Result<Vec<u8>, ModelError> {
    let path = dir.join(name);
    read_regular(&path, limit).map_err(|source| ModelError::Io { path, source })
}

fn read_json(dir: &Path, name: &str) -> Result<Option<Value>, ModelError> {
    if !dir.join(name).exists() {
        return Ok(None);
    }
    let bytes = read(dir, name, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ModelError::InvalidConfig {
            file: name.to_string(),
            reason: format!("not JSON: {e}"),
        })
}

/// A module folder named by `modules.json`: a relative path inside the model folder (no `..`,
/// no root), so that a hostile `modules.json` cannot point the loader elsewhere.
fn module_dir(path: &str) -> Result<PathBuf, ModelError> {
    let p = Path::new(path);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(p.to_path_buf())
    } else {
        Err(ModelError::InvalidConfig {
            file: "modules.json".into(),
            reason: format!("module path {path:?} leaves the model folder"),
        })
    }
}

fn pooling_of(v: &Value) -> Result<Pooling, ModelError> {
    let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let modes: Vec<Pooling> = [
        ("pooling_mode_mean_tokens", Pooling::Mean),
        ("pooling_mode_cls_token", Pooling::Cls),
        ("pooling_mode_max_tokens", Pooling::Max),
    ]
    .into_iter()
    .filter(|(k, _)| on(k))
    .map(|(_, m)| m)
    .collect();
    let others = [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    if let Some(k) = others.iter().find(|k| on(k)) {
        return Err(ModelError::Unsupported {
            what: format!("pooling {k} (mean, cls and max are run)"),
        });
    }
    match modes.as_slice() {
        [m] => Ok(*m),
        [] => Err(ModelError::InvalidConfig {
            file: "1_Pooling/config.json".into(),
            reason: "no pooling mode is set".into(),
        }),
        _ => Err(ModelError::Unsupported {
            what: format!("several pooling modes at once ({modes:?}), concatenated"),
        }),
    }
}

impl SentenceEmbedder {
    /// Loads a sentence-transformers folder: `config.json` (BERT), `model.safetensors`,
    /// `tokenizer.json`, and when present `modules.json` (a `Normalize` module makes vectors
    /// unit length), the pooling module's `config.json` (mean when absent) and
    /// `sentence_bert_config.json` (`max_seq_length`; the position table's size when absent).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let cfg = BertConfig::from_json(&read(dir, "config.json", MAX_CONFIG_BYTES)?)?;
        let modules = read_json(dir, "modules.json")?;
        let (mut pooling_dir, mut normalize) = (PathBuf::from("1_Pooling"), false);
        if let Some(m) = &modules {
            let list = m.as_array().ok_or_else(|| ModelError::InvalidConfig {
                file: "modules.json".into(),
                reason: "expected a list of modules".into(),
            })?;
            for module in list {
                let ty = module.get("type").and_then(Value::as_str).unwrap_or("");
                let path = module.get("path").and_then(Value::as_str).unwrap_or("");
                match ty.rsplit('.').next().unwrap_or("") {
                    "Transformer" => {}
                    "Pooling" => pooling_dir = module_dir(path)?,
                    "Normalize" => normalize = true,
                    other => {
                        return Err(ModelError::Unsupported {
                            what: format!(
                                "sentence-transformers module {other:?} (Transformer, Pooling and Normalize are run)"
                            ),
                        });
                    }
                }
            }
        }
        let pooling_file = pooling_dir.join("config.json");
        let pooling = match read_json(dir, &pooling_file.to_string_lossy())? {
            Some(v) => {
                let p = pooling_of(&v)?;
                if let Some(d) = v.get("word_embedding_dimension").and_then(Value::as_u64)
                    && d as usize != cfg.hidden_size
                {
                    return Err(ModelError::InvalidConfig {
                        file: pooling_file.display().to_string(),
                        reason: format!(
                            "word_embedding_dimension {d} differs from hidden_size {}",
                            cfg.hidden_size
                        ),
                    });
                }
                p
            }
            None => Pooling::Mean,
        };
        let max_seq_len = match read_json(dir, "sentence_bert_config.json")?
            .as_ref()
            .and_then(|v| v.get("max_seq_length").cloned())
        {
            None | Some(Value::Null) => cfg.max_position_embeddings,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 2 && n as usize <= cfg.max_position_embeddings => n as usize,
                _ => {
                    return Err(ModelError::InvalidConfig {
                        file: "sentence_bert_config.json".into(),
                        reason: format!(
                            "max_seq_length {v} is not in 2..={} (the model's positions)",
                            cfg.max_position_embeddings
                        ),
                    });
                }
            },
        };
        let tok_err = |what: &str, e: &dyn std::fmt::Display| ModelError::Tokenizer {
            what: what.to_string(),
            reason: e.to_string(),
        };
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(read(dir, TOKENIZER_FILE, MAX_TOKENIZER_BYTES)?)
                .map_err(|e| tok_err(TOKENIZER_FILE, &e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tok_err(TOKENIZER_FILE, &e))?;
        if tokenizer.get_vocab_size(true) > cfg.vocab_size {
            return Err(ModelError::InvalidConfig {
                file: TOKENIZER_FILE.into(),
                reason: format!(
                    "{} tokens, more than the model's vocab_size {}",
                    tokenizer.get_vocab_size(true),
                    cfg.vocab_size
                ),
            });
        }
        let tensors =
            read_safetensors_where(&dir.join("model.safetensors"), false, &BertTensors::wanted)?;
        let bert = Bert::build(cfg, BertTensors::new(tensors))?;
        Ok(SentenceEmbedder {
            bert,
            tokenizer,
            pooling,
            normalize,
            max_seq_len,
            dir: dir.to_path_buf(),
        })
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.bert.cfg.hidden_size
    }

    /// Tokens a text keeps (special tokens included); the rest is cut off, as
    /// sentence-transformers cuts it.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The pooling applied to token states.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether vectors are scaled to unit length.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// The encoder's configuration.
    pub fn config(&self) -> &BertConfig {
        &self.bert.cfg
    }

    /// The folder the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text` as the encoder sees them (`[CLS] … [SEP]`, truncated).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer {
                what: "encode".into(),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The vector of one text.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.embed_batch(&[text])?.remove(0))
    }

    /// The vectors of `texts`, in order, [`BATCH`] texts per forward pass.
    pub fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_batch_with_progress(texts, &mut |_, _| {})
    }

    /// [`Self::embed_batch`], calling `progress(done, total)` after each forward pass.
    pub fn embed_batch_with_progress(
        &self,
        texts: &[&str],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            let ids = chunk
                .iter()
                .map(|t| self.tokenize(t))
                .collect::<Result<Vec<_>, _>>()?;
            let states = self.bert.forward(&ids)?;
            let h = self.dim();
            let mut row = 0;
            for seq in &ids {
                let rows = &states[row * h..(row + seq.len()) * h];
                row += seq.len();
                let mut v = match self.pooling {
                    Pooling::Cls => rows[..h].to_vec(),
                    Pooling::Mean => {
                        let mut acc = vec![0f64; h];
                        for r in rows.chunks_exact(h) {
                            acc.iter_mut().zip(r).for_each(|(a, &x)| *a += x as f64);
                        }
                        acc.iter().map(|a| (a / seq.len() as f64) as f32).collect()
                    }
                    Pooling::Max => {
                        let mut acc = vec![f32::NEG_INFINITY; h];
                        for r in rows.chunks_exact(h) {
                            acc.iter_mut().zip(r).for_each(|(a, &x)| *a = a.max(x));
                        }
                        acc
                    }
                };
                if self.normalize {
                    let n = v
                        .iter()
                        .map(|&x| (x as f64) * (x as f64))
                        .sum::<f64>()
                        .sqrt();
                    let n = n.max(1e-12) as f32;
                    v.iter_mut().for_each(|x| *x /= n);
                }
                out.push(v);
            }
            progress(out.len(), texts.len());
        }
        Ok(out)
    }
}
