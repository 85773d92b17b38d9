//! The shapes of a base model, read from its `config.json` and safetensors headers only (the
//! 8-byte length and JSON header of each file; `model.safetensors` or the shards named by
//! `model.safetensors.index.json`), and validation of adapters against them.
//!
//! ```
//! use openledger_lora::adapter::base::BaseModel;
//! use openledger_lora::adapter::tensors::TensorMeta;
//!
//! let meta = |shape: Vec<usize>| TensorMeta { dtype: "F32".into(), shape };
//! let base = BaseModel::from_headers(vec![
//!     ("model.embed_tokens.weight".to_string(), meta(vec![320, 64])),
//!     ("model.layers.0.self_attn.q_proj.weight".to_string(), meta(vec![64, 64])),
//!     ("model.norm.weight".to_string(), meta(vec![64])),
//!     ("lm_head.weight".to_string(), meta(vec![320, 64])),
//! ]);
//! assert_eq!(base.linear_modules(), vec!["lm_head", "model.layers.0.self_attn.q_proj"]);
//! assert_eq!(base.output_layer(), Some("lm_head"));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::adapter::config::{LoraConfig, TargetModules, last_component};
use crate::adapter::tensors::{TensorMeta, read_header};
use crate::adapter::{LoraAdapter, ModuleKind};
use crate::error::LoraError;

/// What a weight-holding module of the base model is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseKind {
    /// A 2-D `weight` not named like an embedding: a linear layer.
    Linear,
    /// A 2-D `weight` of a module whose name contains `embed` (or `wte` / `wpe`).
    Embedding,
    /// Anything else (norms, 1-D or higher-rank weights, modules with only a bias).
    Other,
}

/// One module of the base model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseModule {
    /// Linear, embedding or other.
    pub kind: BaseKind,
    /// Shape of `<module>.weight` as stored (empty when the module has no weight).
    pub weight_shape: Vec<usize>,
    /// Shape of `<module>.bias`, when it has one.
    pub bias_shape: Option<Vec<usize>>,
}

/// Module names and shapes of a base model, without its weights.
#[derive(Clone, Debug, Default)]
pub struct BaseModel {
    params: BTreeMap<String, TensorMeta>,
    modules: BTreeMap<String, BaseModule>,
    config: Option<serde_json::Value>,
}

/// What [`BaseModel::validate`] found besides errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ValidationReport {
    /// Adapter modules checked against the base.
    pub modules_checked: usize,
    /// Base modules the config targets that carry no LoRA weights in the adapter (PEFT loads
    /// such adapters with a warning; the modules stay unchanged).
    pub targeted_without_weights: Vec<String>,
}

fn is_embedding_name(module: &str) -> bool {
    let last = last_component(module);
    last.contains("embed") || last == "wte" || last == "wpe"
}

impl BaseModel {
    /// Builds the module table from `(parameter name, shape)` pairs.
    pub fn from_headers(params: impl IntoIterator<Item = (String, TensorMeta)>) -> Self {
        let params: BTreeMap<String, TensorMeta> = params.into_iter().collect();
        let mut modules: BTreeMap<String, BaseModule> = BTreeMap::new();
        for (name, meta) in &params {
            let Some((module, param)) = name.rsplit_once('.') else {
                continue;
            };
            let entry = modules.entry(module.to_string()).or_insert(BaseModule {
                kind: BaseKind::Other,
                weight_shape: Vec::new(),
                bias_shape: None,
            });
            match param {
                "weight" => {
                    entry.weight_shape = meta.shape.clone();
                    entry.kind = match (meta.shape.len(), is_embedding_name(module)) {
                        (2, true) => BaseKind::Embedding,
                        (2, false) => BaseKind::Linear,
                        _ => BaseKind::Other,
                    };
                }
                "bias" => entry.bias_shape = Some(meta.shape.clone()),
                _ => {}
            }
        }
        BaseModel {
            params,
            modules,
            config: None,
        }
    }

    /// Reads `dir/config.json` and the safetensors headers of `dir/model.safetensors`, or of
    /// every shard listed in `dir/model.safetensors.index.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, LoraError> {
        let cfg_path = dir.join("config.json");
        let cfg_bytes =
            openledger_core::fsx::read_regular(&cfg_path, openledger_core::fsx::MAX_CONFIG_BYTES)
                .map_err(|source| LoraError::Io {
                path: cfg_path.clone(),
                source,
            })?;
        let config: serde_json::Value =
            serde_json::from_slice(&cfg_bytes).map_err(|e| LoraError::InvalidConfig {
                file: "config.json".into(),
                reason: e.to_string(),
            })?;
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            shard_files(dir, &index)?
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut params = Vec::new();
        for f in files {
            params.extend(read_header(&f)?);
        }
        check_config(&config, &params)?;
        let mut base = Self::from_headers(params);
        base.config = Some(config);
        Ok(base)
    }

    /// The base model's `config.json`, when read from a folder.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// Every module that holds a parameter, by name.
    pub fn modules(&self) -> &BTreeMap<String, BaseModule> {
        &self.modules
    }

    /// Shape and dtype of a parameter (`model.layers.0.self_attn.q_proj.weight`).
    pub fn param(&self, name: &str) -> Option<&TensorMeta> {
        self.params.get(name)
    }

    /// Names of the linear layers (including the output layer), in name order.
    pub fn linear_modules(&self) -> Vec<&str> {
        self.modules
            .iter()
            .filter(|(_, m)| m.kind == BaseKind::Linear)
            .map(|(k, _)| k.as_str())
            .collect()
    }

    /// The output layer (`lm_head`, or a linear module named `*.lm_head`), when present.
    pub fn output_layer(&self) -> Option<&str> {
        self.modules
            .iter()
            .find(|(k, m)| m.kind == BaseKind::Linear && last_component(k) == "lm_head")
            .map(|(k, _)| k.as_str())
    }

    /// The modules `config` targets in this base (PEFT's selection, `"all-linear"` expanded).
    pub fn targeted_modules(&self, config: &LoraConfig) -> Vec<String> {
        config.select_modules(
            self.modules.keys().map(String::as_str),
            &self.linear_modules(),
            self.output_layer(),
        )
    }

    /// Checks `adapter` against this base without touching any weight:
    /// - the config targets at least one module here ([`LoraError::TargetModuleAbsent`] naming
    ///   `target_modules` otherwise);
    /// - every LoRA module exists here ([`LoraError::TargetModuleAbsent`]), is a linear layer
    ///   or an embedding of the same kind ([`LoraError::UnsupportedTarget`]), is selected by
    ///   the config ([`LoraError::UntargetedModule`]) and has the base's in/out dimensions
    ///   ([`LoraError::ShapeMismatch`]);
    /// - every saved parameter exists with the same shape; `lora_bias` needs a base bias.
    pub fn validate(&self, adapter: &LoraAdapter) -> Result<ValidationReport, LoraError> {
        let config = adapter.config();
        let targeted: BTreeSet<String> = self.targeted_modules(config).into_iter().collect();
        if targeted.is_empty() && adapter.num_modules() > 0 {
            let what = match &config.spec().target_modules {
                TargetModules::Names(n) => format!("{n:?}"),
                TargetModules::Regex(r) => r.clone(),
                TargetModules::AllLinear => "all-linear".into(),
            };
            return Err(LoraError::TargetModuleAbsent { module: what });
        }
        for (name, m) in adapter.modules() {
            let Some(base) = self.modules.get(name) else {
                return Err(LoraError::TargetModuleAbsent {
                    module: name.to_string(),
                });
            };
            let want = match m.kind() {
                ModuleKind::Linear => BaseKind::Linear,
                ModuleKind::Embedding => BaseKind::Embedding,
            };
            if base.kind != want {
                return Err(LoraError::UnsupportedTarget {
                    module: name.to_string(),
                    kind: format!("{:?} with weight {:?}", base.kind, base.weight_shape),
                });
            }
            if !targeted.contains(name) {
                return Err(LoraError::UntargetedModule {
                    module: name.to_string(),
                });
            }
            // Stored layout: Linear [out, in]; Conv1D (fan_in_fan_out) and embeddings [in, out].
            let transposed = m.fan_in_fan_out() || m.kind() == ModuleKind::Embedding;
            let (o, i) = (m.out_features(), m.in_features());
            let expect = if transposed { [i, o] } else { [o, i] };
            if base.weight_shape != expect {
                return Err(LoraError::ShapeMismatch {
                    module: name.to_string(),
                    adapter_out: o,
                    adapter_in: i,
                    base_shape: base.weight_shape.clone(),
                });
            }
            if m.lora_bias().is_some() && base.bias_shape.is_none() {
                return Err(LoraError::Unsupported {
                    what: format!("lora_bias on {name:?}, whose base layer has no bias"),
                });
            }
        }
        for (param, t) in adapter.saved_tensors() {
            let Some(meta) = self.params.get(param) else {
                return Err(LoraError::TargetModuleAbsent {
                    module: param.to_string(),
                });
            };
            if meta.shape != t.shape() {
                return Err(LoraError::BadShape {
                    key: format!("{}{param}", crate::adapter::KEY_PREFIX),
                    expected: format!("the base shape {:?}", meta.shape),
                    found: t.shape().to_vec(),
                });
            }
        }
        let targeted_without_weights = targeted
            .into_iter()
            .filter(|t| {
                adapter.module(t).is_none()
                    && matches!(
                        self.modules.get(t).map(|m| &m.kind),
                        Some(BaseKind::Linear | BaseKind::Embedding)
                    )
            })
            .collect();
        Ok(ValidationReport {
            modules_checked: adapter.num_modules(),
            targeted_without_weights,
        })
    }
}

/// The shard files of a sharded checkpoint; names must be plain file names inside `dir`.
fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, LoraError> {
    let file = index
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = openledger_core::fsx::read_regular(index, openledger_core::fsx::MAX_CONFIG_BYTES)
        .map_err(|source| LoraError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| LoraError::InvalidConfig {
            file: file.clone(),
            reason: e.to_string(),
        })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LoraError::InvalidConfig {
            file: file.clone(),
            reason: "missing object `weight_map`".into(),
        })?;
    let mut shards = BTreeSet::new();
    for (param, shard) in map {
        let name = shard.as_str().unwrap_or_default();
        let plain = !name.is_empty()
            && !name.contains('/')
            && !name.contains('\\')
            && name != "."
            && name != "..";
        if !plain {
            return Err(LoraError::InvalidConfig {
                file: file.clone(),
                reason: format!(
                    "parameter {param:?} names shard {shard}, which is not a plain file name"
                ),
            });
        }
        shards.insert(name.to_string());
    }
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// The size fields of a `config.json` this check reads.
const SIZE_FIELDS: [&str; 8] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
];

/// Refuses a `config.json` whose sizes are not positive integers of a sane size, or disagree
/// with the weights: the number of decoder layers (`model.layers.<i>.` prefixes) and the
/// embedding's `[vocab_size, hidden_size]`.
fn check_config(
    config: &serde_json::Value,
    params: &[(String, TensorMeta)],
) -> Result<(), LoraError> {
    let bad = |reason: String| LoraError::BaseConfig { reason };
    let mut sizes = BTreeMap::new();
    for key in SIZE_FIELDS {
        match config.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 && n <= 1 << 31 => {
                    sizes.insert(key, n as usize);
                }
                _ => {
                    return Err(bad(format!(
                        "`{key}` is {v}, not a positive integer up to 2^31"
                    )));
                }
            },
        }
    }
    let layers: BTreeSet<usize> = params
        .iter()
        .filter_map(|(name, _)| {
            let rest = name.strip_prefix("model.layers.")?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    if let Some(&n) = sizes.get("num_hidden_layers")
        && !layers.is_empty()
        && layers.len() != n
    {
        return Err(bad(format!(
            "num_hidden_layers is {n} but the weights hold {} decoder layers",
            layers.len()
        )));
    }
    if let Some((_, meta)) = params
        .iter()
        .find(|(name, _)| name == "model.embed_tokens.weight")
        && let [v, h] = meta.shape[..]
    {
        for (key, want) in [("vocab_size", v), ("hidden_size", h)] {
            if let Some(&n) = sizes.get(key)
                && n != want
            {
                return Err(bad(format!(
                    "{key} is {n} but model.embed_tokens.weight has shape {:?}",
                    meta.shape
                )));
            }
        }
    }
    Ok(())
}
