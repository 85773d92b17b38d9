//! Loading the weights of an HF model folder (`model.safetensors` or the shards named by
//! `model.safetensors.index.json`) into f32, checking each against the shape the config implies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::error::ModelError;
use super::quant::{BaseWeight, WeightFormat};
use crate::adapter::tensors::{HostTensor, read_header, read_safetensors_where};
use crate::error::LoraError;

/// Progress of [`crate::model::Model::from_dir_with_progress`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadProgress {
    /// A safetensors file was read and decoded.
    FileRead {
        /// The file.
        file: PathBuf,
        /// Files read so far.
        done: usize,
        /// Files to read.
        total: usize,
    },
    /// A decoder layer's weights were converted and checked.
    LayerBuilt {
        /// Layers built so far.
        done: usize,
        /// Layers in the model.
        total: usize,
    },
}

/// A dense projection `y = x·Wᵀ (+ b)`; `W` is held as [`WeightFormat`] asks (f32 as a
/// transposed view `[in, out]` of the row-major `W`, for the matmul backend).
#[derive(Debug, Clone)]
pub struct Linear {
    /// Module name (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// `W` as held in memory.
    pub weight: BaseWeight,
    /// The bias, when the projection has one.
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    /// `Wᵀ` (`[in, out]`) in f32: the held tensor, or a widened / dequantised copy.
    pub fn wt(&self) -> Result<Tensor, ModelError> {
        self.weight.wt(self.in_features, self.out_features)
    }
}

/// One decoder layer's frozen weights.
#[derive(Debug, Clone)]
pub struct Layer {
    /// `input_layernorm` (as stored; Gemma's `1 + w` is applied by the forward pass).
    pub input_norm: Vec<f32>,
    /// `post_attention_layernorm` (as stored).
    pub post_norm: Vec<f32>,
    /// `self_attn.q_proj`.
    pub q: Linear,
    /// `self_attn.k_proj`.
    pub k: Linear,
    /// `self_attn.v_proj`.
    pub v: Linear,
    /// `self_attn.o_proj`.
    pub o: Linear,
    /// `mlp.gate_proj`.
    pub gate: Linear,
    /// `mlp.up_proj`.
    pub up: Linear,
    /// `mlp.down_proj`.
    pub down: Linear,
}

/// All base weights, as the forward pass (and the trainer's differentiable copy of it) reads
/// them.
#[derive(Debug, Clone)]
pub struct Weights {
    /// `embed_tokens`, `[vocab, hidden]` row-major in f32; `None` where the output head is tied
    /// to the embeddings: the head then holds them (in the model's weight format) and a token's
    /// row is read from it ([`Weights::embed_row`]), so they are not held twice.
    pub embed: Option<Vec<f32>>,
    /// The decoder layers.
    pub layers: Vec<Layer>,
    /// The final norm.
    pub norm: Vec<f32>,
    /// The output head (the embeddings again when they are tied).
    pub lm_head: Linear,
}

impl Weights {
    /// The embedding of `token` (`< vocab`) in f32, into `out` (`hidden` values).
    pub fn embed_row(&self, token: usize, out: &mut [f32]) {
        let h = out.len();
        match &self.embed {
            Some(e) => out.copy_from_slice(&e[token * h..(token + 1) * h]),
            None => self.lm_head.weight.row_f32(h, token, out),
        }
    }

    /// Every embedding, `[vocab, hidden]` row-major in f32 (a widened copy where the head holds
    /// them).
    pub fn embed_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match &self.embed {
            Some(e) => std::borrow::Cow::Borrowed(e),
            None => std::borrow::Cow::Owned(
                self.lm_head
                    .weight
                    .to_f32_rows(self.lm_head.in_features, self.lm_head.out_features),
            ),
        }
    }
}

/// The safetensors files of a model folder; shard names must be plain file names.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Ok(vec![dir.join("model.safetensors")]);
    }
    let bytes = openledger_core::fsx::read_regular(&index, openledger_core::fsx::MAX_CONFIG_BYTES)
        .map_err(|source| ModelError::Io {
            path: index.clone(),
            source,
        })?;
    let bad = |reason: String| ModelError::InvalidConfig {
        file: "model.safetensors.index.json".into(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing object `weight_map`".into()))?;
    let mut shards = BTreeSet::new();
    for (param, shard) in map {
        let name = shard.as_str().unwrap_or_default();
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(bad(format!(
                "parameter {param:?} names shard {shard}, which is not a plain file name"
            )));
        }
        shards.insert(name.to_string());
    }
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// A tensor held in memory, or named in a file's header and read when taken.
enum Entry {
    Held(HostTensor),
    InFile(PathBuf),
    /// Decoded by the closure when taken (a GGUF tensor: dequantised from the mapped file), or
    /// taken as held weights directly when the format asks for what it stores.
    Deferred(Deferred),
}

/// Decodes one tensor when the model takes it.
pub(crate) type DecodeTensor = Box<dyn FnOnce() -> Result<HostTensor, ModelError>>;

/// A tensor decoded when the model takes it.
pub(crate) struct Deferred {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, decoded.
    pub decode: DecodeTensor,
    /// Its bytes as held weights with no decoding (a GGUF Q8_0 tensor as int8 in groups of
    /// 32), for the formats that ask for what they store: the format test and the builder.
    pub direct: Option<(FormatTest, DirectWeight)>,
}

/// Whether a format takes a tensor's bytes as they are.
pub(crate) type FormatTest = fn(WeightFormat) -> bool;

/// Builds held weights straight from a file's bytes.
pub(crate) type DirectWeight = Box<dyn FnOnce() -> Result<BaseWeight, ModelError>>;

/// Tensors by name, taken out one at a time with shape checks. Read from files, a tensor is
/// decoded only when it is taken (the file mapped for that read alone), so loading holds the
/// weights built so far and one tensor, not every tensor of the checkpoint at once.
pub(crate) struct TensorMap(BTreeMap<String, Entry>);

impl TensorMap {
    /// Indexes the tensors of `files` (their headers are read and checked against the files'
    /// sizes; the data is read when each tensor is taken).
    pub fn read(
        files: &[PathBuf],
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self, ModelError> {
        let mut map = BTreeMap::new();
        for (done, f) in files.iter().enumerate() {
            for (name, _) in read_header(f)? {
                map.insert(name, Entry::InFile(f.clone()));
            }
            progress(LoadProgress::FileRead {
                file: f.clone(),
                done: done + 1,
                total: files.len(),
            });
        }
        Ok(TensorMap(map))
    }

    pub fn from_map(map: BTreeMap<String, HostTensor>) -> Self {
        TensorMap(map.into_iter().map(|(k, t)| (k, Entry::Held(t))).collect())
    }

    /// Tensors each decoded by its closure when taken.
    pub fn deferred(map: BTreeMap<String, Deferred>) -> Self {
        TensorMap(
            map.into_iter()
                .map(|(k, f)| (k, Entry::Deferred(f)))
                .collect(),
        )
    }

    /// Every tensor, decoded.
    pub fn into_inner(mut self) -> Result<BTreeMap<String, HostTensor>, ModelError> {
        let keys: Vec<String> = self.0.keys().cloned().collect();
        keys.into_iter()
            .map(|k| {
                let t = self.remove(&k)?.expect("a listed key");
                Ok((k, t))
            })
            .collect()
    }

    /// Takes `key` out, decoding it from its file when it is not held.
    fn remove(&mut self, key: &str) -> Result<Option<HostTensor>, ModelError> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(Entry::Held(t)) => Ok(Some(t)),
            Some(Entry::Deferred(d)) => (d.decode)().map(Some),
            Some(Entry::InFile(path)) => {
                let mut found = read_safetensors_where(&path, false, &|name| name == key)?;
                Ok(found.pop().map(|(_, t)| t))
            }
        }
    }

    /// Refuses weights the config has no place for (a config listing fewer layers than the
    /// checkpoint holds would otherwise serve another model). Buffers transformers may save
    /// beside the weights (RoPE's `inv_freq`) and a tied model's saved `lm_head` are ignored.
    fn check_all_used(&self, cfg: &ModelConfig) -> Result<(), ModelError> {
        let unused: Vec<&str> = self
            .0
            .keys()
            .map(String::as_str)
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .filter(|k| !(cfg.tie_word_embeddings && *k == "lm_head.weight"))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(first) => Err(ModelError::InvalidConfig {
                file: "config.json".into(),
                reason: format!(
                    "the checkpoint holds {} weights this config has no place for (first: {first:?}); does num_hidden_layers ({}) match the weights?",
                    unused.len(),
                    cfg.num_layers
                ),
            }),
        }
    }

    /// The names left.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Takes out `key`, checking its shape and that every value is finite, as f32.
    pub(crate) fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        Ok(self.take_host(key, shape)?.to_f32().into_owned())
    }

    /// Takes out `key`, checking its shape and that every value is finite, as stored.
    fn take_host(&mut self, key: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        let t = self.remove(key)?.ok_or_else(|| ModelError::MissingWeight {
            key: key.to_string(),
        })?;
        if t.shape() != shape {
            return Err(ModelError::WeightShape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        if let Some((index, value)) = t.first_non_finite() {
            return Err(ModelError::Weights(LoraError::NonFinite {
                key: key.to_string(),
                index,
                value,
            }));
        }
        Ok(t)
    }

    /// Takes out the `[out, in]` weights `key` held as `format` asks.
    fn take_weight(
        &mut self,
        key: &str,
        out_features: usize,
        in_features: usize,
        format: WeightFormat,
    ) -> Result<BaseWeight, ModelError> {
        if let WeightFormat::Int8 { group } = format
            && group > 0
            && !in_features.is_multiple_of(group)
        {
            return Err(ModelError::InvalidArgument {
                name: "weights",
                reason: format!(
                    "int8 groups of {group} inputs do not divide the {in_features} inputs of {key}"
                ),
            });
        }
        if let Some(Entry::Deferred(Deferred {
            shape,
            direct: Some((applies, _)),
            ..
        })) = self.0.get(key)
            && applies(format)
            && shape[..] == [out_features, in_features]
            && let Some(Entry::Deferred(Deferred {
                direct: Some((_, build)),
                ..
            })) = self.0.remove(key)
        {
            return build();
        }
        let t = self.take_host(key, &[out_features, in_features])?;
        Ok(match (format, t.as_bf16(), t.as_f16()) {
            (WeightFormat::Stored, Some(w), _) => BaseWeight::Bf16(w.to_vec()),
            (WeightFormat::Stored, _, Some(w)) => BaseWeight::F16(w.to_vec()),
            _ => BaseWeight::from_f32(t.to_f32().into_owned(), out_features, in_features, format),
        })
    }

    fn linear(
        &mut self,
        name: String,
        in_features: usize,
        out_features: usize,
        bias: bool,
        format: WeightFormat,
    ) -> Result<Linear, ModelError> {
        let weight =
            self.take_weight(&format!("{name}.weight"), out_features, in_features, format)?;
        let bias = if bias {
            Some(self.take(&format!("{name}.bias"), &[out_features])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            name,
            in_features,
            out_features,
            bias,
        })
    }
}

/// `[rows, cols]` row-major data → tensor `[cols, rows]`, a transposed view of the data as
/// given (no copy): the projections multiply the row-major `W` on the left
/// (`lora::matmul`), which candle's CPU matmul runs faster for decode batches.
pub(crate) fn transposed(w: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor, ModelError> {
    Ok(Tensor::from_vec(w, (rows, cols), &Device::Cpu)?.t()?)
}

/// Builds every weight of `cfg` from `tensors`, the projections held as `format` asks (the
/// norms stay f32, the embeddings too unless a tied head holds them).
pub(crate) fn build(
    cfg: &ModelConfig,
    mut tensors: TensorMap,
    format: WeightFormat,
    progress: &mut dyn FnMut(LoadProgress),
) -> Result<Weights, ModelError> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd) = (
        cfg.num_heads * cfg.head_dim,
        cfg.num_kv_heads * cfg.head_dim,
    );
    // A tied head holds the embeddings as `format` asks (16-bit kept by `stored`, a GGUF file's
    // Q8_0 blocks as int8) and the forward pass reads token rows from it: held once, not
    // widened to f32 beside it.
    let (embed, tied_head) = if cfg.tie_word_embeddings {
        let head = tensors.take_weight("model.embed_tokens.weight", cfg.vocab_size, h, format)?;
        (None, Some(head))
    } else {
        let held = tensors.take_host("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        (Some(held.to_f32().into_owned()), None)
    };
    let mut layers = Vec::with_capacity(cfg.num_layers);
    for l in 0..cfg.num_layers {
        let p = |n: &str| format!("model.layers.{l}.{n}");
        let qkv_bias = cfg.attention_bias || cfg.qkv_bias;
        layers.push(Layer {
            input_norm: tensors.take(&p("input_layernorm.weight"), &[h])?,
            post_norm: tensors.take(&p("post_attention_layernorm.weight"), &[h])?,
            q: tensors.linear(p("self_attn.q_proj"), h, qd, qkv_bias, format)?,
            k: tensors.linear(p("self_attn.k_proj"), h, kvd, qkv_bias, format)?,
            v: tensors.linear(p("self_attn.v_proj"), h, kvd, qkv_bias, format)?,
            o: tensors.linear(p("self_attn.o_proj"), qd, h, cfg.attention_bias, format)?,
            gate: tensors.linear(p("mlp.gate_proj"), h, i, cfg.mlp_bias, format)?,
            up: tensors.linear(p("mlp.up_proj"), h, i, cfg.mlp_bias, format)?,
            down: tensors.linear(p("mlp.down_proj"), i, h, cfg.mlp_bias, format)?,
        });
        progress(LoadProgress::LayerBuilt {
            done: l + 1,
            total: cfg.num_layers,
        });
    }
    let norm = tensors.take("model.norm.weight", &[h])?;
    let lm_head = match tied_head {
        Some(weight) => Linear {
            name: "lm_head".into(),
            in_features: h,
            out_features: cfg.vocab_size,
            weight,
            bias: None,
        },
        None => tensors.linear("lm_head".into(), h, cfg.vocab_size, false, format)?,
    };
    tensors.check_all_used(cfg)?;
    Ok(Weights {
        embed,
        layers,
        norm,
        lm_head,
    })
}
