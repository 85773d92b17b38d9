//! PEFT LoRA adapters (`openledger_lora::adapter`) and the base model they are checked against
//! (`openledger_lora::adapter::base`): what an app needs to inspect an adapter it downloaded before it
//! runs it.

use std::path::Path;
use std::sync::Arc;

use openledger_lora::adapter::base;
use openledger_lora::adapter::{self, LoadOptions};

use crate::error::OpenLedgerError;

/// One adapted module: its shape and the scale its update is multiplied by.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct LoraModuleInfo {
    /// The base module's name (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    /// The rank of its factors.
    pub rank: u64,
    /// Input features of the base module.
    pub in_features: u64,
    /// Output features of the base module.
    pub out_features: u64,
    /// `lora_alpha / r` (or `/ √r` with rsLoRA), patterns applied.
    pub scale: f32,
}

/// What a successful validation against a base model checked.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ValidationReport {
    /// Adapter modules checked against the base.
    pub modules_checked: u64,
    /// Base modules the config targets that carry no LoRA weights in the adapter.
    pub targeted_without_weights: Vec<String>,
}

/// A loaded PEFT LoRA adapter.
#[derive(Debug, uniffi::Object)]
pub struct LoraAdapter {
    pub(crate) inner: adapter::LoraAdapter,
}

#[uniffi::export]
impl LoraAdapter {
    /// Loads `adapter_config.json` and `adapter_model.safetensors` from a folder.
    #[uniffi::constructor]
    pub fn from_dir(path: String) -> Result<Arc<Self>, OpenLedgerError> {
        let inner = adapter::LoraAdapter::from_dir(Path::new(&path), &LoadOptions::default())?;
        Ok(Arc::new(Self { inner }))
    }

    /// Parses an adapter from the bytes of its config and of its safetensors file (as
    /// downloaded, without touching the file system).
    #[uniffi::constructor]
    pub fn from_bytes(
        config_json: Vec<u8>,
        safetensors: Vec<u8>,
    ) -> Result<Arc<Self>, OpenLedgerError> {
        let inner =
            adapter::LoraAdapter::from_bytes(&config_json, &safetensors, &LoadOptions::default())?;
        Ok(Arc::new(Self { inner }))
    }

    /// The config's rank `r`.
    pub fn r(&self) -> u64 {
        self.inner.config().r() as u64
    }

    /// The config's `lora_alpha`.
    pub fn lora_alpha(&self) -> f64 {
        self.inner.config().lora_alpha()
    }

    /// Whether the scale is `alpha / √r` (rsLoRA).
    pub fn use_rslora(&self) -> bool {
        self.inner.config().spec().use_rslora
    }

    /// Whether the adapter is DoRA.
    pub fn use_dora(&self) -> bool {
        self.inner.config().use_dora()
    }

    /// Number of adapted modules.
    pub fn module_count(&self) -> u64 {
        self.inner.num_modules() as u64
    }

    /// Bytes the adapter holds in memory.
    pub fn resident_bytes(&self) -> u64 {
        self.inner.resident_bytes() as u64
    }

    /// The adapted modules, by name.
    pub fn modules(&self) -> Vec<LoraModuleInfo> {
        self.inner
            .modules()
            .map(|(name, m)| LoraModuleInfo {
                name: name.to_string(),
                rank: m.rank() as u64,
                in_features: m.in_features() as u64,
                out_features: m.out_features() as u64,
                scale: m.scale(),
            })
            .collect()
    }
}

/// A base model's module table (read from the safetensors headers of an HF model folder).
#[derive(Debug, uniffi::Object)]
pub struct BaseModel {
    inner: base::BaseModel,
}

#[uniffi::export]
impl BaseModel {
    /// Reads `config.json` and the safetensors headers of an HF model folder.
    #[uniffi::constructor]
    pub fn from_dir(path: String) -> Result<Arc<Self>, OpenLedgerError> {
        Ok(Arc::new(Self {
            inner: base::BaseModel::from_dir(Path::new(&path))?,
        }))
    }

    /// The base's linear modules (what `target_modules` can name).
    pub fn linear_modules(&self) -> Vec<String> {
        self.inner
            .linear_modules()
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Checks that `adapter` fits this base: every module exists with the right shape;
    /// [`OpenLedgerError::BaseMismatch`] names the first one that does not.
    pub fn validate(&self, adapter: Arc<LoraAdapter>) -> Result<ValidationReport, OpenLedgerError> {
        let r = self.inner.validate(&adapter.inner)?;
        Ok(ValidationReport {
            modules_checked: r.modules_checked as u64,
            targeted_without_weights: r.targeted_without_weights,
        })
    }
}
