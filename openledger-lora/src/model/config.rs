//! `config.json` of an HF model folder, reduced to what the llama-family forward pass needs.
//!
//! ```
//! use openledger_lora::model::{Architecture, ModelConfig};
//!
//! let cfg = ModelConfig::from_json(br#"{"model_type": "mistral", "vocab_size": 32,
//!     "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
//!     "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 3}"#).unwrap();
//! assert_eq!(cfg.arch, Architecture::Mistral);
//! assert_eq!((cfg.head_dim, cfg.sliding_window), (4, Some(3)));
//! ```

use serde_json::Value;

use super::error::ModelError;

/// The supported members of the llama family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// LLaMA 1/2/3 (`LlamaForCausalLM`).
    Llama,
    /// Mistral (`MistralForCausalLM`): sliding-window attention.
    Mistral,
    /// Qwen2 (`Qwen2ForCausalLM`): q/k/v projections carry a bias.
    Qwen2,
    /// Gemma (`GemmaForCausalLM`): GeGLU, `(1 + w)` RMSNorm, embeddings scaled by √hidden.
    Gemma,
}

/// The MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (SwiGLU).
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// GELU, exact (erf).
    Gelu,
}

/// How rotary frequencies are set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// LLaMA 3.1 frequency-dependent scaling.
    Llama3 {
        /// `factor`.
        factor: f32,
        /// `low_freq_factor`.
        low_freq_factor: f32,
        /// `high_freq_factor`.
        high_freq_factor: f32,
        /// `original_max_position_embeddings`.
        original_max_position_embeddings: f32,
    },
}

/// The fields of `config.json` the forward pass uses.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The architecture (from `model_type`).
    pub arch: Architecture,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP inner size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: usize,
    /// Per-head dimension (explicit `head_dim`, else `hidden / heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE frequency scaling.
    pub rope_scaling: RopeScaling,
    /// MLP activation.
    pub activation: Activation,
    /// `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v/o projections carry a bias (Llama `attention_bias`).
    pub attention_bias: bool,
    /// Only q/k/v carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// MLP projections carry a bias (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Sliding attention window (a query at `i` sees keys `j` with `i - j < window`).
    pub sliding_window: Option<usize>,
    /// Layers from this index on use the sliding window (Qwen2 `max_window_layers`; 0 for all).
    pub sliding_window_from_layer: usize,
    /// The longest sequence the model was trained for (`max_position_embeddings`; 2048, as
    /// transformers' `LlamaConfig`, when absent): generation refuses to run past it.
    pub max_position_embeddings: usize,
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        file: "config.json".into(),
        reason: reason.into(),
    }
}

fn usize_field(v: &Value, key: &str) -> Result<Option<usize>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| bad(format!("`{key}` must be a non-negative integer, found {x}"))),
    }
}

fn required(v: &Value, key: &str) -> Result<usize, ModelError> {
    match usize_field(v, key)? {
        Some(n) if n > 0 => Ok(n),
        Some(_) => Err(bad(format!("`{key}` must be positive"))),
        None => Err(bad(format!("missing `{key}`"))),
    }
}

fn f32_field(v: &Value, key: &str) -> Result<Option<f32>, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| Some(f as f32))
            .ok_or_else(|| bad(format!("`{key}` must be a finite number, found {x}"))),
    }
}

fn bool_field(v: &Value, key: &str, default: bool) -> Result<bool, ModelError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| bad(format!("`{key}` must be a boolean, found {x}"))),
    }
}

fn activation(name: &str) -> Result<Activation, ModelError> {
    match name {
        "silu" | "swish" => Ok(Activation::Silu),
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::Gelu),
        other => Err(ModelError::Unsupported {
            what: format!("activation {other:?}"),
        }),
    }
}

/// The rope dictionary: transformers 5 `rope_parameters`, or older `rope_scaling`.
fn rope(v: &Value) -> Result<(f32, RopeScaling), ModelError> {
    let params = v.get("rope_parameters").filter(|p| p.is_object());
    let scaling = params.or_else(|| v.get("rope_scaling").filter(|p| p.is_object()));
    let theta = params
        .map(|p| f32_field(p, "rope_theta"))
        .transpose()?
        .flatten()
        .or(f32_field(v, "rope_theta")?)
        .unwrap_or(10_000.0);
    let Some(s) = scaling else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |key: &str| f32_field(s, key)?.ok_or_else(|| bad(format!("rope: missing `{key}`")));
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(ModelError::Unsupported {
                what: format!("rope type {other:?}"),
            });
        }
    };
    if theta <= 0.0 {
        return Err(bad("rope_theta must be positive"));
    }
    Ok((theta, scaling))
}

impl ModelConfig {
    /// Parses `config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Reads the fields from a parsed `config.json`.
    pub fn from_value(v: &Value) -> Result<Self, ModelError> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let architectures: Vec<String> = v
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "gemma" => Architecture::Gemma,
            _ => {
                return Err(ModelError::UnsupportedArchitecture {
                    model_type,
                    architectures,
                });
            }
        };
        let hidden_size = required(v, "hidden_size")?;
        let num_heads = required(v, "num_attention_heads")?;
        let num_kv_heads = usize_field(v, "num_key_value_heads")?.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(bad(format!(
                "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        let head_dim = match usize_field(v, "head_dim")? {
            Some(d) => d,
            None if hidden_size.is_multiple_of(num_heads) => hidden_size / num_heads,
            None => {
                return Err(bad(format!(
                    "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
                )));
            }
        };
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even and positive"
            )));
        }
        let act_name = match arch {
            Architecture::Gemma => v
                .get("hidden_activation")
                .and_then(Value::as_str)
                .unwrap_or("gelu_pytorch_tanh"),
            _ => v
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu"),
        };
        let (rope_theta, rope_scaling) = rope(v)?;
        let (sliding_window, sliding_window_from_layer) = match arch {
            Architecture::Mistral => (usize_field(v, "sliding_window")?, 0),
            Architecture::Qwen2 if bool_field(v, "use_sliding_window", false)? => (
                usize_field(v, "sliding_window")?,
                usize_field(v, "max_window_layers")?.unwrap_or(0),
            ),
            _ => (None, 0),
        };
        if sliding_window == Some(0) {
            return Err(bad("sliding_window must be positive"));
        }
        Ok(ModelConfig {
            arch,
            vocab_size: required(v, "vocab_size")?,
            hidden_size,
            intermediate_size: required(v, "intermediate_size")?,
            num_layers: required(v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f32_field(v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            activation: activation(act_name)?,
            tie_word_embeddings: bool_field(v, "tie_word_embeddings", arch == Architecture::Gemma)?,
            attention_bias: arch != Architecture::Qwen2 && bool_field(v, "attention_bias", false)?,
            qkv_bias: arch == Architecture::Qwen2,
            mlp_bias: bool_field(v, "mlp_bias", false)?,
            sliding_window,
            sliding_window_from_layer,
            max_position_embeddings: match usize_field(v, "max_position_embeddings")? {
                Some(0) => return Err(bad("`max_position_embeddings` must be positive")),
                Some(n) => n,
                None => 2048,
            },
        })
    }

    /// Refuses a generation of `n` tokens after a prompt of `prompt` tokens that would run past
    /// the model's context (`max_position_embeddings`), before anything is computed.
    pub fn check_context(&self, prompt: usize, n: usize) -> Result<(), ModelError> {
        let ctx = self.max_position_embeddings;
        if prompt.saturating_add(n) > ctx {
            return Err(ModelError::InvalidArgument {
                name: "max_new_tokens",
                reason: format!(
                    "a prompt of {prompt} tokens and {n} new tokens run past the model's context of {ctx} (max_position_embeddings)"
                ),
            });
        }
        Ok(())
    }

    /// Whether layer `layer` attends through the sliding window.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window
            .filter(|_| layer >= self.sliding_window_from_layer)
    }
}
