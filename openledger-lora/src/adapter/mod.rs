//! PEFT LoRA adapters: the formats and the math of one adapter, independent of any model.
//!
//! * this module: an adapter in memory ([`LoraAdapter`]): `adapter_config.json` +
//!   `adapter_model.safetensors`, loaded from a folder (memory-mapped, one copy) or from bytes;
//! * [`config`]: `adapter_config.json` and every field that changes the math;
//! * [`tensors`]: the safetensors decoder and host tensors in their stored dtype;
//! * [`base`]: a base model's module table from its headers, to validate adapters against;
//! * [`build`]: adapters made in code and written as PEFT folders;
//! * [`merge`]: merging into (and unmerging from) dense base weights;
//! * [`combine`]: PEFT's `add_weighted_adapter` (linear, cat, svd, ties, dare, magnitude prune).
//!
//! Layout: each targeted module is a [`LoraModule`] holding `A` as a row-major `[r, in]` tensor
//! and `B` as `[out, r]`, in the dtype of the file (bf16 adapters stay bf16, so
//! [`LoraAdapter::resident_bytes`] is what the adapter really costs), plus its scale
//! (`alpha / r`, or `alpha / sqrt(r)` with rsLoRA, after `rank_pattern` / `alpha_pattern`).
//! The module computes `y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ`.
//!
//! Orientation: PEFT always saves `lora_A` as `[r, in]` and `lora_B` as `[out, r]` (the
//! `nn.Linear` layout), also when `fan_in_fan_out` is set; that flag says the *base* weight is
//! stored `[in, out]` (GPT-2 `Conv1D`). The loader keeps A/B in that standard orientation and
//! records the flag on the module, so consumers never transpose factors; only merging into a
//! `[in, out]` base weight honours it. Factors written Conv1D-style (`A` `[in, r]`, `B`
//! `[r, out]`) under `fan_in_fan_out` are transposed into the standard orientation at load. Embedding modules (`lora_embedding_A` `[r, vocab]`,
//! `lora_embedding_B` `[hidden, r]`) use the same convention with `in = vocab`, `out = hidden`.
//!
//! ```
//! use openledger_lora::adapter::{LoadOptions, LoraAdapter};
//! use openledger_lora::adapter::build::AdapterBuilder;
//! use openledger_lora::adapter::config::ConfigSpec;
//!
//! let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &["q_proj"]));
//! b.random_lora("model.layers.0.self_attn.q_proj", 16, 32, 4, 7);
//! let (config, weights) = (b.config_json(), b.safetensors_bytes().unwrap());
//! let adapter = LoraAdapter::from_bytes(config.as_bytes(), &weights, &LoadOptions::default()).unwrap();
//! let m = adapter.module("model.layers.0.self_attn.q_proj").unwrap();
//! assert_eq!((m.rank(), m.in_features(), m.out_features(), m.scale()), (4, 16, 32, 2.0));
//! assert_eq!(adapter.resident_bytes(), (4 * 16 + 32 * 4) * 4);
//! ```

pub mod base;
pub mod build;
pub mod combine;
pub mod config;
pub mod merge;
pub mod tensors;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use openledger_core::fsx::{MAX_CONFIG_BYTES, open_regular, read_regular};

use crate::adapter::config::{BiasMode, CONFIG_FILE, LoraConfig};
use crate::adapter::tensors::{HostTensor, decode_all};
use crate::error::LoraError;

/// File name of the adapter weights inside an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Prefix PEFT puts in front of every saved key.
pub const KEY_PREFIX: &str = "base_model.model.";

/// Options for loading an adapter.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Accept NaN / infinite weights (default `false`: they are [`LoraError::NonFinite`]).
    pub allow_non_finite: bool,
}

/// What kind of base layer a LoRA module adapts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// An `nn.Linear` (or `Conv1D` with `fan_in_fan_out`).
    Linear,
    /// An `nn.Embedding` (`lora_embedding_A` / `lora_embedding_B`); `in` is the vocabulary.
    Embedding,
}

/// The LoRA factors of one module, in standard orientation.
#[derive(Clone, Debug)]
pub struct LoraModule {
    kind: ModuleKind,
    a: HostTensor,
    b: HostTensor,
    scale: f32,
    magnitude: Option<HostTensor>,
    lora_bias: Option<HostTensor>,
    fan_in_fan_out: bool,
}

impl LoraModule {
    /// Assembles a module from its parts; shapes must already agree (`A` `[r, in]`, `B`
    /// `[out, r]`, magnitude and bias `[out]`).
    pub(crate) fn new(
        kind: ModuleKind,
        a: HostTensor,
        b: HostTensor,
        scale: f32,
        magnitude: Option<HostTensor>,
        lora_bias: Option<HostTensor>,
        fan_in_fan_out: bool,
    ) -> Self {
        LoraModule {
            kind,
            a,
            b,
            scale,
            magnitude,
            lora_bias,
            fan_in_fan_out,
        }
    }

    /// Linear or embedding.
    pub fn kind(&self) -> ModuleKind {
        self.kind
    }

    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.shape()[0]
    }

    /// Input features (vocabulary size for embeddings).
    pub fn in_features(&self) -> usize {
        self.a.shape()[1]
    }

    /// Output features (hidden size for embeddings).
    pub fn out_features(&self) -> usize {
        self.b.shape()[0]
    }

    /// `A`, row-major `[r, in]`, in its file dtype.
    pub fn a(&self) -> &HostTensor {
        &self.a
    }

    /// `B`, row-major `[out, r]`, in its file dtype.
    pub fn b(&self) -> &HostTensor {
        &self.b
    }

    /// `A` as f32 (borrowed for f32 adapters).
    pub fn a_f32(&self) -> Cow<'_, [f32]> {
        self.a.to_f32()
    }

    /// `B` as f32 (borrowed for f32 adapters).
    pub fn b_f32(&self) -> Cow<'_, [f32]> {
        self.b.to_f32()
    }

    /// The scale applied to `B·A`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// DoRA magnitude vector `[out]`, when the adapter uses DoRA.
    pub fn magnitude(&self) -> Option<&HostTensor> {
        self.magnitude.as_ref()
    }

    /// `lora_B.bias` `[out]`, when the adapter has `lora_bias`; it adds `scale · bias`.
    pub fn lora_bias(&self) -> Option<&HostTensor> {
        self.lora_bias.as_ref()
    }

    /// Whether the base weight of this module is stored `[in, out]`.
    pub fn fan_in_fan_out(&self) -> bool {
        self.fan_in_fan_out
    }

    /// The dense delta `scale · B·A` as row-major `[out, in]` f32.
    pub fn delta(&self) -> Vec<f32> {
        let (r, n_in, n_out) = (self.rank(), self.in_features(), self.out_features());
        let (a, b) = (self.a_f32(), self.b_f32());
        let mut d = vec![0f32; n_out * n_in];
        for o in 0..n_out {
            let row = &mut d[o * n_in..(o + 1) * n_in];
            for k in 0..r {
                let w = b[o * r + k] * self.scale;
                if w == 0.0 {
                    continue;
                }
                let a_row = &a[k * n_in..(k + 1) * n_in];
                row.iter_mut().zip(a_row).for_each(|(y, x)| *y += w * x);
            }
        }
        d
    }

    /// Applies the LoRA path to `tokens` rows of `x` (`[tokens, in]`), adding
    /// `scale · (x·Aᵀ)·Bᵀ (+ scale · lora_bias)` into `y` (`[tokens, out]`).
    ///
    /// For DoRA modules this is only the low-rank term; the magnitude rescaling needs the base
    /// weight (see [`crate::adapter::merge`]).
    pub fn apply(&self, x: &[f32], y: &mut [f32]) -> Result<(), LoraError> {
        let (r, n_in, n_out) = (self.rank(), self.in_features(), self.out_features());
        if !x.len().is_multiple_of(n_in) || y.len() != x.len() / n_in * n_out {
            return Err(LoraError::arg(
                "x/y",
                format!(
                    "x has {} values, y {}; expected [t, {n_in}] and [t, {n_out}]",
                    x.len(),
                    y.len()
                ),
            ));
        }
        let (a, b) = (self.a_f32(), self.b_f32());
        let bias = self.lora_bias.as_ref().map(|t| t.to_f32());
        let mut h = vec![0f32; r];
        for (xt, yt) in x.chunks_exact(n_in).zip(y.chunks_exact_mut(n_out)) {
            for (k, hk) in h.iter_mut().enumerate() {
                *hk = a[k * n_in..(k + 1) * n_in]
                    .iter()
                    .zip(xt)
                    .map(|(p, q)| p * q)
                    .sum::<f32>()
                    * self.scale;
            }
            for (o, yo) in yt.iter_mut().enumerate() {
                let mut acc: f32 = b[o * r..(o + 1) * r]
                    .iter()
                    .zip(&h)
                    .map(|(p, q)| p * q)
                    .sum();
                if let Some(bias) = &bias {
                    acc += self.scale * bias[o];
                }
                *yo += acc;
            }
        }
        Ok(())
    }

    fn size_in_bytes(&self) -> usize {
        self.a.size_in_bytes()
            + self.b.size_in_bytes()
            + self.magnitude.as_ref().map_or(0, HostTensor::size_in_bytes)
            + self.lora_bias.as_ref().map_or(0, HostTensor::size_in_bytes)
    }
}

/// A loaded PEFT LoRA adapter.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    config: LoraConfig,
    modules: BTreeMap<String, LoraModule>,
    saved: BTreeMap<String, HostTensor>,
}

impl LoraAdapter {
    /// Loads `dir/adapter_config.json` and `dir/adapter_model.safetensors` (memory-mapped).
    pub fn from_dir(dir: &Path, opts: &LoadOptions) -> Result<LoraAdapter, LoraError> {
        let cfg_path = dir.join(CONFIG_FILE);
        let config = read_regular(&cfg_path, MAX_CONFIG_BYTES).map_err(|source| LoraError::Io {
            path: cfg_path,
            source,
        })?;
        let w_path = dir.join(WEIGHTS_FILE);
        let io = |source| LoraError::Io {
            path: w_path.clone(),
            source,
        };
        let (file, len) = open_regular(&w_path).map_err(io)?;
        if len < 8 {
            // Too short for a header (and an empty file cannot be mapped everywhere).
            let bytes = read_regular(&w_path, 8).map_err(io)?;
            return Self::from_bytes(&config, &bytes, opts);
        }
        // SAFETY: the map is read-only and dropped before returning; every tensor is copied
        // out of it. Another process truncating the file while we read it is outside what
        // any file-backed reader can defend against.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::from_bytes(&config, &map, opts)
    }

    /// Parses an adapter from the bytes of its config and of its safetensors file.
    pub fn from_bytes(
        config_json: &[u8],
        safetensors: &[u8],
        opts: &LoadOptions,
    ) -> Result<LoraAdapter, LoraError> {
        let config = LoraConfig::from_json(config_json)?;
        let tensors = decode_all(WEIGHTS_FILE, safetensors, opts.allow_non_finite)?;
        Self::from_tensors(config, tensors)
    }

    /// Assembles an adapter from a config and decoded `(key, tensor)` pairs, checking every key
    /// and shape against the config.
    pub fn from_tensors(
        config: LoraConfig,
        tensors: Vec<(String, HostTensor)>,
    ) -> Result<LoraAdapter, LoraError> {
        #[derive(Default)]
        struct Parts {
            a: Option<(String, HostTensor)>,
            b: Option<(String, HostTensor)>,
            mag: Option<(String, HostTensor)>,
            bias: Option<(String, HostTensor)>,
            embedding: bool,
        }
        let mut parts: BTreeMap<String, Parts> = BTreeMap::new();
        let mut saved = BTreeMap::new();
        for (key, t) in tensors {
            let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
                return Err(LoraError::KeyOutsidePrefix { key });
            };
            let rest = rest.to_string();
            let slot = [
                (".lora_A.weight", 0, false),
                (".lora_B.weight", 1, false),
                (".lora_embedding_A", 0, true),
                (".lora_embedding_B", 1, true),
                (".lora_magnitude_vector.weight", 2, false),
                (".lora_magnitude_vector", 2, false),
                (".lora_B.bias", 3, false),
            ]
            .into_iter()
            .find_map(|(suffix, slot, emb)| {
                rest.strip_suffix(suffix)
                    .map(|m| (m.to_string(), slot, emb))
            });
            let Some((module, slot, emb)) = slot else {
                check_saved_key(&config, &key, &rest)?;
                saved.insert(rest, t);
                continue;
            };
            let p = parts.entry(module).or_default();
            p.embedding |= emb;
            let dest = match slot {
                0 => &mut p.a,
                1 => &mut p.b,
                2 => &mut p.mag,
                _ => &mut p.bias,
            };
            *dest = Some((key, t));
        }

        let mut modules = BTreeMap::new();
        for (name, p) in parts {
            let (a_name, b_name) = if p.embedding {
                ("lora_embedding_A", "lora_embedding_B")
            } else {
                ("lora_A", "lora_B")
            };
            let ((ka, a), (kb, b)) = match (p.a, p.b) {
                (Some(a), Some(b)) => (a, b),
                (a, b) => {
                    let (present, missing) = match (a.is_some(), b.is_some()) {
                        (true, false) => (a_name, b_name),
                        (false, true) => (b_name, a_name),
                        _ => {
                            let what = if p.mag.is_some() {
                                "lora_magnitude_vector"
                            } else {
                                "lora_B.bias"
                            };
                            (what, "lora_A / lora_B")
                        }
                    };
                    return Err(LoraError::MissingFactor {
                        module: name,
                        present: present.into(),
                        missing: missing.into(),
                    });
                }
            };
            if !config.targets(&name) {
                return Err(LoraError::UntargetedModule { module: name });
            }
            for (k, t) in [(&ka, &a), (&kb, &b)] {
                if t.shape().len() != 2 {
                    return Err(LoraError::BadShape {
                        key: k.clone(),
                        expected: "a 2-D matrix".into(),
                        found: t.shape().to_vec(),
                    });
                }
            }
            let rank = config.rank_for(&name);
            // PEFT saves fan_in_fan_out factors in nn.Linear orientation already; factors
            // written Conv1D-style (A [in, r], B [r, out]) are turned into that orientation
            // here, so every loaded module has A [r, in] and B [out, r].
            let conv1d_style = |a: &HostTensor, b: &HostTensor| {
                a.shape()[0] != rank
                    && a.shape()[1] == rank
                    && b.shape()[0] == rank
                    && b.shape()[1] != rank
            };
            let (a, b) = if config.fan_in_fan_out() && !p.embedding && conv1d_style(&a, &b) {
                (a.transposed(), b.transposed())
            } else {
                (a, b)
            };
            for (k, r) in [(&ka, a.shape()[0]), (&kb, b.shape()[1])] {
                if r != rank {
                    return Err(LoraError::RankMismatch {
                        module: name,
                        key: k.clone(),
                        config_rank: rank,
                        tensor_rank: r,
                    });
                }
            }
            let out = b.shape()[0];
            let vector =
                |v: Option<(String, HostTensor)>| -> Result<Option<HostTensor>, LoraError> {
                    match v {
                        Some((k, t)) if t.shape() != [out] => Err(LoraError::BadShape {
                            key: k,
                            expected: format!("[out] = [{out}]"),
                            found: t.shape().to_vec(),
                        }),
                        other => Ok(other.map(|p| p.1)),
                    }
                };
            if let Some((k, _)) = &p.mag {
                if !config.use_dora() {
                    return Err(LoraError::UnexpectedTensor {
                        key: k.clone(),
                        reason: "a DoRA magnitude but use_dora is false".into(),
                    });
                }
                if p.embedding {
                    return Err(LoraError::Unsupported {
                        what: format!("DoRA on embedding module {name:?}"),
                    });
                }
            } else if config.use_dora() && !p.embedding {
                return Err(LoraError::MissingFactor {
                    module: name,
                    present: "lora_A / lora_B with use_dora".into(),
                    missing: "lora_magnitude_vector".into(),
                });
            }
            if let Some((k, _)) = &p.bias
                && !config.spec().lora_bias
            {
                return Err(LoraError::UnexpectedTensor {
                    key: k.clone(),
                    reason: "lora_B.bias but lora_bias is false".into(),
                });
            }
            let magnitude = vector(p.mag)?;
            let lora_bias = vector(p.bias)?;
            let kind = if p.embedding {
                ModuleKind::Embedding
            } else {
                ModuleKind::Linear
            };
            let scale = config.scale_for(&name);
            let m = LoraModule::new(
                kind,
                a,
                b,
                scale,
                magnitude,
                lora_bias,
                config.fan_in_fan_out() && kind == ModuleKind::Linear,
            );
            modules.insert(name, m);
        }
        if modules.is_empty() && saved.is_empty() {
            return Err(LoraError::EmptyAdapter {
                file: WEIGHTS_FILE.to_string(),
            });
        }
        // A bias saved under `lora_only` must belong to a module that has LoRA weights.
        if config.spec().bias == BiasMode::LoraOnly {
            for p in saved.keys() {
                if let Some(m) = p.strip_suffix(".bias")
                    && !config.is_saved_module(m)
                    && !modules.contains_key(m)
                {
                    return Err(LoraError::UnexpectedTensor {
                        key: format!("{KEY_PREFIX}{p}"),
                        reason: "bias = \"lora_only\" but the module has no LoRA weights".into(),
                    });
                }
            }
        }
        Ok(LoraAdapter {
            config,
            modules,
            saved,
        })
    }

    /// Bytes of weight data held in memory (factors, magnitudes, biases, saved modules).
    pub fn resident_bytes(&self) -> usize {
        self.modules
            .values()
            .map(LoraModule::size_in_bytes)
            .sum::<usize>()
            + self
                .saved
                .values()
                .map(HostTensor::size_in_bytes)
                .sum::<usize>()
    }

    /// The adapter's config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Every LoRA module, by name (without the `base_model.model.` prefix), in name order.
    pub fn modules(&self) -> impl ExactSizeIterator<Item = (&str, &LoraModule)> + '_ {
        self.modules.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// One module by name.
    pub fn module(&self, name: &str) -> Option<&LoraModule> {
        self.modules.get(name)
    }

    /// Number of LoRA modules.
    pub fn num_modules(&self) -> usize {
        self.modules.len()
    }

    /// Full replacement parameters (`modules_to_save` weights, saved biases), keyed by the base
    /// parameter name (`lm_head.weight`, `model.layers.0.self_attn.q_proj.bias`).
    pub fn saved_tensors(&self) -> impl ExactSizeIterator<Item = (&str, &HostTensor)> + '_ {
        self.saved.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Assembles an adapter from already-checked parts (used by weighted combination).
    pub(crate) fn from_parts(
        config: LoraConfig,
        modules: BTreeMap<String, LoraModule>,
        saved: BTreeMap<String, HostTensor>,
    ) -> Self {
        LoraAdapter {
            config,
            modules,
            saved,
        }
    }
}

/// Checks a key that is not a LoRA factor: it must be a `modules_to_save` parameter or a bias
/// the `bias` mode saves.
fn check_saved_key(config: &LoraConfig, key: &str, rest: &str) -> Result<(), LoraError> {
    let Some((module, _param)) = rest.rsplit_once('.') else {
        return Err(LoraError::UnexpectedTensor {
            key: key.to_string(),
            reason: "not a parameter of a module".into(),
        });
    };
    if config.is_saved_module(module) {
        return Ok(());
    }
    if rest.ends_with(".bias") && config.spec().bias != BiasMode::None {
        return Ok(());
    }
    Err(LoraError::UnexpectedTensor {
        key: key.to_string(),
        reason: format!(
            "neither a LoRA factor, a modules_to_save parameter, nor a bias saved by bias = {:?}",
            config.spec().bias
        ),
    })
}
