//! Writing PEFT adapters: a builder that serialises a config and its tensors exactly as PEFT's
//! `save_pretrained` lays them out (`adapter_config.json` + `adapter_model.safetensors`, keys
//! under `base_model.model.`). Tests, benchmarks, fuzz seeds and tools use it to make adapters;
//! [`AdapterBuilder::raw_tensor`] also writes arbitrary keys and dtypes for negative tests.
//!
//! ```
//! use openledger_core::DType;
//! use openledger_lora::adapter::LoadOptions;
//! use openledger_lora::adapter::build::AdapterBuilder;
//! use openledger_lora::adapter::config::ConfigSpec;
//!
//! let mut b = AdapterBuilder::new(ConfigSpec::new(2, 4.0, &["v_proj"])).with_dtype(DType::BF16);
//! b.lora(
//!     "model.layers.0.self_attn.v_proj",
//!     3, 2, 2, // in, out, r
//!     &[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], // A [r=2, in=3]
//!     &[1.0, 2.0, 3.0, 4.0],           // B [out=2, r=2]
//! );
//! let adapter = b.build(&LoadOptions::default()).unwrap();
//! assert_eq!(adapter.resident_bytes(), (6 + 4) * 2);
//! ```

use std::path::Path;

use openledger_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};

use crate::adapter::config::{CONFIG_FILE, ConfigSpec};
use crate::adapter::tensors::HostTensor;
use crate::adapter::{KEY_PREFIX, LoadOptions, LoraAdapter, ModuleKind, WEIGHTS_FILE};
use crate::error::LoraError;

struct Entry {
    key: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Builds a PEFT adapter (config + safetensors) in memory or on disk.
pub struct AdapterBuilder {
    spec: ConfigSpec,
    dtype: DType,
    entries: Vec<Entry>,
    config_override: Option<String>,
}

impl AdapterBuilder {
    /// Starts an adapter with this config; tensors are written as f32 unless
    /// [`AdapterBuilder::with_dtype`] says otherwise.
    pub fn new(spec: ConfigSpec) -> Self {
        AdapterBuilder {
            spec,
            dtype: DType::F32,
            entries: Vec::new(),
            config_override: None,
        }
    }

    /// Sets the dtype of the tensors added after this call.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets the dtype of the tensors added after this call (by reference).
    pub fn set_dtype(&mut self, dtype: DType) -> &mut Self {
        self.dtype = dtype;
        self
    }

    /// The config being written.
    pub fn spec(&self) -> &ConfigSpec {
        &self.spec
    }

    /// Replaces the written config JSON with `json` verbatim (for malformed-config tests).
    pub fn config_override(&mut self, json: &str) -> &mut Self {
        self.config_override = Some(json.to_string());
        self
    }

    fn push(&mut self, key: String, shape: Vec<usize>, values: &[f32]) {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "{key}: shape {shape:?} does not hold {} values",
            values.len()
        );
        self.entries.push(Entry {
            key,
            dtype: self.dtype.safetensors_name().to_string(),
            shape,
            bytes: self.dtype.encode_le(values),
        });
    }

    /// Adds `lora_A` (`[r, in]`, row-major) and `lora_B` (`[out, r]`) for `module`
    /// (a base module name such as `model.layers.0.self_attn.q_proj`).
    ///
    /// # Panics
    /// When the slices do not hold `r·in` and `out·r` values.
    pub fn lora(
        &mut self,
        module: &str,
        in_features: usize,
        out_features: usize,
        r: usize,
        a: &[f32],
        b: &[f32],
    ) -> &mut Self {
        self.push(
            format!("{KEY_PREFIX}{module}.lora_A.weight"),
            vec![r, in_features],
            a,
        );
        self.push(
            format!("{KEY_PREFIX}{module}.lora_B.weight"),
            vec![out_features, r],
            b,
        );
        self
    }

    /// Adds random non-zero `lora_A` / `lora_B` (uniform in ±0.1, seeded) for `module`.
    pub fn random_lora(
        &mut self,
        module: &str,
        in_features: usize,
        out_features: usize,
        r: usize,
        seed: u64,
    ) -> &mut Self {
        let a = random_values(r * in_features, seed);
        let b = random_values(out_features * r, seed ^ 0x9e37_79b9_7f4a_7c15);
        self.lora(module, in_features, out_features, r, &a, &b)
    }

    /// Adds `lora_embedding_A` (`[r, vocab]`) and `lora_embedding_B` (`[hidden, r]`).
    pub fn embedding(
        &mut self,
        module: &str,
        vocab: usize,
        hidden: usize,
        r: usize,
        a: &[f32],
        b: &[f32],
    ) -> &mut Self {
        self.push(
            format!("{KEY_PREFIX}{module}.lora_embedding_A"),
            vec![r, vocab],
            a,
        );
        self.push(
            format!("{KEY_PREFIX}{module}.lora_embedding_B"),
            vec![hidden, r],
            b,
        );
        self
    }

    /// Adds a DoRA magnitude vector (`[out]`) for `module`.
    pub fn magnitude(&mut self, module: &str, m: &[f32]) -> &mut Self {
        self.push(
            format!("{KEY_PREFIX}{module}.lora_magnitude_vector.weight"),
            vec![m.len()],
            m,
        );
        self
    }

    /// Adds `lora_B.bias` (`[out]`) for `module` (needs `lora_bias` in the config).
    pub fn lora_bias(&mut self, module: &str, bias: &[f32]) -> &mut Self {
        self.push(
            format!("{KEY_PREFIX}{module}.lora_B.bias"),
            vec![bias.len()],
            bias,
        );
        self
    }

    /// Adds a full replacement parameter (`lm_head.weight` for `modules_to_save`, or a bias
    /// saved by the `bias` mode), keyed by its base parameter name.
    pub fn saved(&mut self, param: &str, shape: Vec<usize>, values: &[f32]) -> &mut Self {
        self.push(format!("{KEY_PREFIX}{param}"), shape, values);
        self
    }

    /// Adds a tensor with an exact key, any safetensors dtype name (`"F32"`, `"I64"`,
    /// `"F8_E4M3"`, ...) and raw little-endian bytes. The bytes must fit the shape and dtype.
    pub fn raw_tensor(
        &mut self,
        key: &str,
        dtype: &str,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) -> &mut Self {
        self.entries.push(Entry {
            key: key.to_string(),
            dtype: dtype.to_string(),
            shape,
            bytes,
        });
        self
    }

    /// The `adapter_config.json` text.
    pub fn config_json(&self) -> String {
        self.config_override
            .clone()
            .unwrap_or_else(|| self.spec.to_json())
    }

    /// The `adapter_model.safetensors` bytes.
    pub fn safetensors_bytes(&self) -> Result<Vec<u8>, LoraError> {
        let bad = |reason: String| LoraError::InvalidArgument {
            name: "tensors".into(),
            reason,
        };
        let mut views = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let dtype: Dtype = serde_json::from_value(serde_json::Value::String(e.dtype.clone()))
                .map_err(|_| bad(format!("{}: unknown dtype {}", e.key, e.dtype)))?;
            let view = TensorView::new(dtype, e.shape.clone(), &e.bytes)
                .map_err(|err| bad(format!("{}: {err}", e.key)))?;
            views.push((e.key.clone(), view));
        }
        safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if
    /// missing).
    pub fn write_dir(&self, dir: &Path) -> Result<(), LoraError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoraError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cfg = dir.join(CONFIG_FILE);
        std::fs::write(&cfg, self.config_json()).map_err(io(&cfg))?;
        let w = dir.join(WEIGHTS_FILE);
        std::fs::write(&w, self.safetensors_bytes()?).map_err(io(&w))?;
        Ok(())
    }

    /// Serialises and loads the adapter back.
    pub fn build(&self, opts: &LoadOptions) -> Result<LoraAdapter, LoraError> {
        LoraAdapter::from_bytes(
            self.config_json().as_bytes(),
            &self.safetensors_bytes()?,
            opts,
        )
    }
}

impl LoraAdapter {
    /// Serialises the adapter's tensors as PEFT saves them (`adapter_model.safetensors`
    /// bytes), in their held dtype and standard orientation.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, LoraError> {
        let mut b = AdapterBuilder::new(self.config().spec().clone());
        for (name, m) in self.modules() {
            let (a_key, b_key) = match m.kind() {
                ModuleKind::Linear => ("lora_A.weight", "lora_B.weight"),
                ModuleKind::Embedding => ("lora_embedding_A", "lora_embedding_B"),
            };
            let mut put = |suffix: &str, t: &HostTensor| {
                b.raw_tensor(
                    &format!("{KEY_PREFIX}{name}.{suffix}"),
                    t.dtype().safetensors_name(),
                    t.shape().to_vec(),
                    t.to_le_bytes(),
                );
            };
            put(a_key, m.a());
            put(b_key, m.b());
            if let Some(mag) = m.magnitude() {
                put("lora_magnitude_vector.weight", mag);
            }
            if let Some(bias) = m.lora_bias() {
                put("lora_B.bias", bias);
            }
        }
        for (param, t) in self.saved_tensors() {
            b.raw_tensor(
                &format!("{KEY_PREFIX}{param}"),
                t.dtype().safetensors_name(),
                t.shape().to_vec(),
                t.to_le_bytes(),
            );
        }
        b.safetensors_bytes()
    }

    /// Writes the adapter as a PEFT folder (`adapter_config.json` +
    /// `adapter_model.safetensors`) that [`LoraAdapter::from_dir`] and PEFT can load.
    pub fn save_dir(&self, dir: &Path) -> Result<(), LoraError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LoraError::Io { path, source }
        };
        let weights = self.to_safetensors()?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cfg = dir.join(CONFIG_FILE);
        std::fs::write(&cfg, self.config().spec().to_json()).map_err(io(&cfg))?;
        let w = dir.join(WEIGHTS_FILE);
        std::fs::write(&w, weights).map_err(io(&w))?;
        Ok(())
    }
}

/// `n` seeded values, uniform in ±0.1 and never exactly zero.
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(-0.1f32..0.1);
            if v == 0.0 { 0.05 } else { v }
        })
        .collect()
}
