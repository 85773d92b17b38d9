//! The inverse of loading: an HF model folder (`config.json` + `model.safetensors`) written
//! from a [`ModelConfig`] and named f32 tensors, so that a model made or changed in code (a
//! random base, a base with an adapter merged in) loads back with [`crate::model::Model::from_dir`]
//! and with `transformers`.
//!
//! ```
//! use openledger_lora::model::{Model, RandomLlama, model_config_json, write_model_dir};
//!
//! let shape = RandomLlama { vocab: 32, hidden: 16, intermediate: 32, layers: 1, heads: 4, kv_heads: 2 };
//! let model = shape.model(7).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! write_model_dir(dir.path(), &model_config_json(model.config()), &shape.tensors(7)).unwrap();
//! assert_eq!(Model::from_dir(dir.path()).unwrap().config(), model.config());
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use openledger_core::DType;
use serde_json::{Value, json};

use super::{Activation, Architecture, ModelConfig, ModelError, RopeScaling};
use crate::adapter::merge::DenseTensor;

/// The config file of an HF model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of an unsharded HF model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A `config.json` that [`ModelConfig::from_json`] (and `transformers`) read back as `cfg`.
pub fn model_config_json(cfg: &ModelConfig) -> String {
    let (model_type, arch) = match cfg.arch {
        Architecture::Llama => ("llama", "LlamaForCausalLM"),
        Architecture::Mistral => ("mistral", "MistralForCausalLM"),
        Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Architecture::Gemma => ("gemma", "GemmaForCausalLM"),
    };
    let act = match cfg.activation {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
        Activation::Gelu => "gelu",
    };
    let mut v = json!({
        "model_type": model_type,
        "architectures": [arch],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "max_position_embeddings": cfg.max_position_embeddings,
        "torch_dtype": "float32",
    });
    let obj = v.as_object_mut().expect("object literal");
    let act_key = if cfg.arch == Architecture::Gemma {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    obj.insert(act_key.into(), json!(act));
    if let RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings,
    } = cfg.rope_scaling
    {
        obj.insert(
            "rope_scaling".into(),
            json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings}),
        );
    }
    if let Some(w) = cfg.sliding_window {
        obj.insert("sliding_window".into(), json!(w));
        if cfg.arch == Architecture::Qwen2 {
            obj.insert("use_sliding_window".into(), Value::Bool(true));
            obj.insert(
                "max_window_layers".into(),
                json!(cfg.sliding_window_from_layer),
            );
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Writes `config.json` and `model.safetensors` (f32) into `dir` (created if missing).
pub fn write_model_dir(
    dir: &Path,
    config_json: &str,
    tensors: &BTreeMap<String, DenseTensor>,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.shape.clone(), DType::F32.encode_le(&t.data)))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ModelError::InvalidConfig {
            file: WEIGHTS_FILE.into(),
            reason: e.to_string(),
        })?;
    let data = safetensors::serialize(views, None).map_err(|e| ModelError::InvalidConfig {
        file: WEIGHTS_FILE.into(),
        reason: e.to_string(),
    })?;
    let cfg = dir.join(CONFIG_FILE);
    std::fs::write(&cfg, config_json).map_err(io(&cfg))?;
    let w = dir.join(WEIGHTS_FILE);
    std::fs::write(&w, data).map_err(io(&w))?;
    Ok(())
}

/// Files of a model folder other than its config and weights that a merged copy keeps.
const KEPT_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
];

/// Writes the HF model folder `model_dir` with `adapter` merged into its weights
/// (`W ← W + scale·B·A`, DoRA's rescaling, LoRA biases, `modules_to_save`) as a new folder
/// `out_dir`: `config.json` (with `torch_dtype` float32), `model.safetensors` in f32, and the
/// tokenizer and generation files copied, so the merged model serves without the adapter.
/// The adapter is validated against the base first; nothing is written when it does not fit.
/// `progress` sees each weight file read.
pub fn merge_adapter_into_dir(
    model_dir: &Path,
    adapter: &crate::adapter::LoraAdapter,
    out_dir: &Path,
    progress: &mut dyn FnMut(super::LoadProgress),
) -> Result<(), ModelError> {
    let incompatible = |source| ModelError::IncompatibleAdapter {
        name: "merged adapter".into(),
        source,
    };
    crate::adapter::base::BaseModel::from_dir(model_dir)?
        .validate(adapter)
        .map_err(incompatible)?;
    let cfg_path = model_dir.join(CONFIG_FILE);
    let cfg_bytes =
        openledger_core::fsx::read_regular(&cfg_path, openledger_core::fsx::MAX_CONFIG_BYTES)
            .map_err(|source| ModelError::Io {
                path: cfg_path.clone(),
                source,
            })?;
    let mut config: Value =
        serde_json::from_slice(&cfg_bytes).map_err(|e| ModelError::InvalidConfig {
            file: CONFIG_FILE.into(),
            reason: e.to_string(),
        })?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), json!("float32"));
    }
    let files = super::load::weight_files(model_dir)?;
    let mut tensors: BTreeMap<String, DenseTensor> =
        super::load::TensorMap::read(&files, progress)?
            .into_inner()?
            .into_iter()
            .map(|(k, t)| {
                let shape = t.shape().to_vec();
                (k, DenseTensor::new(shape, t.to_f32().into_owned()))
            })
            .collect();
    crate::adapter::merge::merge(adapter, &mut tensors).map_err(incompatible)?;
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    write_model_dir(out_dir, &text, &tensors)?;
    for name in KEPT_FILES {
        let from = model_dir.join(name);
        if from.is_file() {
            let to = out_dir.join(name);
            std::fs::copy(&from, &to).map_err(|source| ModelError::Write { path: to, source })?;
        }
    }
    Ok(())
}
