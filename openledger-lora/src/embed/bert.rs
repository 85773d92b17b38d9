//! A BERT encoder (HF `BertModel`: absolute positions, post-LayerNorm, GELU) on row-major f32,
//! for sentence embeddings. Sequences of a batch are packed one after another (no padding): the
//! projections run over every token of the batch at once and attention runs per sequence, which
//! is what an attention mask over padded rows computes, without the padded rows.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde_json::Value;

use crate::adapter::tensors::HostTensor;
use crate::model::Activation;
use crate::model::ops::activate;
use crate::model::{ModelError, TensorMap};

/// Largest hidden size, layer count, head count, vocabulary and position table accepted from a
/// `config.json` (far above any BERT published; they bound what a hostile file can make us
/// allocate before the weights are checked against it).
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 512;
const MAX_VOCAB: usize = 1 << 22;

/// `config.json` of a BERT encoder, reduced to what the forward pass needs.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size (the embedding dimension).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Rows of the position table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// The feed-forward activation.
    pub activation: Activation,
}

fn invalid(reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        file: "config.json".into(),
        reason: reason.into(),
    }
}

impl BertConfig {
    /// Parses `config.json` bytes; a model type other than BERT's, a missing or out-of-range
    /// size, or a feature this encoder does not run is an error naming it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "bert" {
            return Err(ModelError::UnsupportedArchitecture {
                model_type: model_type.to_string(),
                architectures: v
                    .get("architectures")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
        let size = |key: &str, max: usize, default: Option<usize>| -> Result<usize, ModelError> {
            match v.get(key) {
                None | Some(Value::Null) => {
                    default.ok_or_else(|| invalid(format!("`{key}` is missing")))
                }
                Some(x) => match x.as_u64() {
                    Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
                    _ => Err(invalid(format!(
                        "`{key}` is {x}, expected an integer in 1..={max}"
                    ))),
                },
            }
        };
        let hidden_size = size("hidden_size", MAX_DIM, None)?;
        let num_heads = size("num_attention_heads", MAX_DIM, None)?;
        if hidden_size % num_heads != 0 {
            return Err(invalid(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_heads}"
            )));
        }
        let activation = match v.get("hidden_act").and_then(Value::as_str) {
            None | Some("gelu") => Activation::Gelu,
            Some("gelu_new" | "gelu_pytorch_tanh") => Activation::GeluTanh,
            Some(other) => {
                return Err(ModelError::Unsupported {
                    what: format!("hidden_act {other:?} (BERT encoders here run gelu, gelu_new)"),
                });
            }
        };
        match v.get("position_embedding_type").and_then(Value::as_str) {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(ModelError::Unsupported {
                    what: format!("position_embedding_type {other:?} (only \"absolute\")"),
                });
            }
        }
        let eps = match v.get("layer_norm_eps") {
            None => 1e-12,
            Some(x) => match x.as_f64() {
                Some(e) if e > 0.0 && e < 1.0 => e as f32,
                _ => {
                    return Err(invalid(format!(
                        "`layer_norm_eps` is {x}, expected 0 < eps < 1"
                    )));
                }
            },
        };
        Ok(BertConfig {
            vocab_size: size("vocab_size", MAX_VOCAB, None)?,
            hidden_size,
            num_layers: size("num_hidden_layers", MAX_LAYERS, None)?,
            num_heads,
            intermediate_size: size("intermediate_size", MAX_DIM, None)?,
            max_position_embeddings: size("max_position_embeddings", MAX_DIM, Some(512))?,
            type_vocab_size: size("type_vocab_size", MAX_DIM, Some(2))?,
            layer_norm_eps: eps,
            activation,
        })
    }
}

/// A projection `y = x·Wᵀ + b`, `W` held transposed (`[in, out]`, contiguous).
#[derive(Debug, Clone)]
struct Dense {
    wt: Tensor,
    bias: Vec<f32>,
}

impl Dense {
    fn forward(&self, x: &[f32], rows: usize) -> Result<Vec<f32>, ModelError> {
        let (n_in, _) = self.wt.dims2()?;
        let xt = Tensor::from_slice(x, (rows, n_in), &Device::Cpu)?;
        let mut y = xt.matmul(&self.wt)?.flatten_all()?.to_vec1::<f32>()?;
        for row in y.chunks_exact_mut(self.bias.len()) {
            row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    /// LayerNorm of every row in place (biased variance, as torch computes it).
    fn apply(&self, x: &mut [f32], eps: f32) {
        let n = self.weight.len();
        x.par_chunks_exact_mut(n).for_each(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = row
                .iter()
                .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                .sum::<f64>()
                / n as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
                *v = ((*v as f64 - mean) * inv) as f32 * w + b;
            }
        });
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// The weights of a BERT encoder.
#[derive(Debug, Clone)]
pub(crate) struct Bert {
    pub(crate) cfg: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<EncoderLayer>,
}

/// The tensors of a checkpoint by name, with BERT's optional `bert.` prefix (a `BertForX`
/// checkpoint) taken off.
pub(crate) struct BertTensors {
    map: TensorMap,
}

impl BertTensors {
    pub(crate) fn new(tensors: Vec<(String, HostTensor)>) -> Self {
        let map = tensors
            .into_iter()
            .map(|(k, t)| (k.strip_prefix("bert.").map(str::to_string).unwrap_or(k), t))
            .collect();
        BertTensors {
            map: TensorMap::from_map(map),
        }
    }

    /// Whether the encoder reads a tensor of this name (`position_ids` buffers, poolers and
    /// task heads are left in the file).
    pub(crate) fn wanted(key: &str) -> bool {
        let key = key.strip_prefix("bert.").unwrap_or(key);
        (key.starts_with("embeddings.") || key.starts_with("encoder."))
            && !key.ends_with("position_ids")
    }

    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        self.map.take(key, shape)
    }

    fn norm(&mut self, name: &str, n: usize) -> Result<Norm, ModelError> {
        Ok(Norm {
            weight: self.take(&format!("{name}.weight"), &[n])?,
            bias: self.take(&format!("{name}.bias"), &[n])?,
        })
    }

    /// `W` of one or more projections stacked along the output (`[Σout, in]`) → `Wᵀ`.
    fn dense(&mut self, names: &[String], n_in: usize, n_out: usize) -> Result<Dense, ModelError> {
        let mut w = Vec::with_capacity(names.len() * n_out * n_in);
        let mut bias = Vec::with_capacity(names.len() * n_out);
        for name in names {
            w.extend(self.take(&format!("{name}.weight"), &[n_out, n_in])?);
            bias.extend(self.take(&format!("{name}.bias"), &[n_out])?);
        }
        let rows = names.len() * n_out;
        let wt = Tensor::from_vec(w, (rows, n_in), &Device::Cpu)?
            .t()?
            .contiguous()?;
        Ok(Dense { wt, bias })
    }
}

impl Bert {
    /// Builds the encoder of `cfg` from `tensors`.
    pub(crate) fn build(cfg: BertConfig, mut t: BertTensors) -> Result<Self, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let word = t.take("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let position = t.take(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
        )?;
        let token_type = t.take(
            "embeddings.token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
        )?;
        let embed_norm = t.norm("embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |n: &str| format!("encoder.layer.{l}.{n}");
            let qkv = [
                p("attention.self.query"),
                p("attention.self.key"),
                p("attention.self.value"),
            ];
            layers.push(EncoderLayer {
                qkv: t.dense(&qkv, h, h)?,
                attn_out: t.dense(&[p("attention.output.dense")], h, h)?,
                attn_norm: t.norm(&p("attention.output.LayerNorm"), h)?,
                up: t.dense(&[p("intermediate.dense")], h, i)?,
                down: t.dense(&[p("output.dense")], i, h)?,
                out_norm: t.norm(&p("output.LayerNorm"), h)?,
            });
        }
        if let Some(extra) = t.map.keys().find(|k| BertTensors::wanted(k)) {
            return Err(invalid(format!(
                "the checkpoint holds encoder weight {extra:?} this config has no place for; does num_hidden_layers ({}) match the weights?",
                cfg.num_layers
            )));
        }
        Ok(Bert {
            cfg,
            word,
            position,
            token_type,
            embed_norm,
            layers,
        })
    }

    /// The last hidden state of every token of `seqs` (packed: `[Σlen, hidden]`). Every
    /// sequence is non-empty, no longer than the position table, and its ids are in the
    /// vocabulary (the caller's tokenizer guarantees it; checked here all the same).
    pub(crate) fn forward(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
        let h = self.cfg.hidden_size;
        let total: usize = seqs.iter().map(Vec::len).sum();
        let mut x = vec![0f32; total * h];
        let mut row = 0;
        for (s, ids) in seqs.iter().enumerate() {
            if ids.is_empty() {
                return Err(ModelError::EmptySequence { seq: s });
            }
            if ids.len() > self.cfg.max_position_embeddings {
                return Err(ModelError::InvalidArgument {
                    name: "sequence",
                    reason: format!(
                        "sequence {s} holds {} tokens, more than the {} positions of the model",
                        ids.len(),
                        self.cfg.max_position_embeddings
                    ),
                });
            }
            for (p, &id) in ids.iter().enumerate() {
                let id = id as usize;
                if id >= self.cfg.vocab_size {
                    return Err(ModelError::TokenOutOfVocab {
                        seq: s,
                        position: p,
                        token: id as u32,
                        vocab: self.cfg.vocab_size,
                    });
                }
                let out = &mut x[row * h..(row + 1) * h];
                let w = &self.word[id * h..(id + 1) * h];
                let pos = &self.position[p * h..(p + 1) * h];
                let tt = &self.token_type[..h];
                for j in 0..h {
                    out[j] = w[j] + pos[j] + tt[j];
                }
                row += 1;
            }
        }
        let eps = self.cfg.layer_norm_eps;
        self.embed_norm.apply(&mut x, eps);
        let spans: Vec<(usize, usize)> = seqs
            .iter()
            .scan(0, |start, s| {
                let span = (*start, s.len());
                *start += s.len();
                Some(span)
            })
            .collect();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x, total)?;
            let ctx = self.attention(&qkv, &spans, total);
            let mut a = layer.attn_out.forward(&ctx, total)?;
            a.iter_mut().zip(&x).for_each(|(v, r)| *v += r);
            layer.attn_norm.apply(&mut a, eps);
            let mut up = layer.up.forward(&a, total)?;
            let act = self.cfg.activation;
            up.par_iter_mut().for_each(|v| *v = activate(act, *v));
            let mut y = layer.down.forward(&up, total)?;
            y.iter_mut().zip(&a).for_each(|(v, r)| *v += r);
            layer.out_norm.apply(&mut y, eps);
            x = y;
        }
        Ok(x)
    }

    /// Bidirectional softmax attention within each sequence of the packed `qkv`
    /// (`[total, 3·hidden]`: query, key, value) → `[total, hidden]`.
    fn attention(&self, qkv: &[f32], spans: &[(usize, usize)], total: usize) -> Vec<f32> {
        let h = self.cfg.hidden_size;
        let heads = self.cfg.num_heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let jobs: Vec<(usize, usize)> = (0..spans.len())
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        let parts: Vec<(usize, usize, Vec<f32>)> = jobs
            .par_iter()
            .map(|&(s, hd)| {
                let (start, len) = spans[s];
                let q = |t: usize| &qkv[(start + t) * 3 * h + hd * d..][..d];
                let k = |t: usize| &qkv[(start + t) * 3 * h + h + hd * d..][..d];
                let v = |t: usize| &qkv[(start + t) * 3 * h + 2 * h + hd * d..][..d];
                let mut out = vec![0f32; len * d];
                let mut p = vec![0f32; len];
                for i in 0..len {
                    let qi = q(i);
                    let mut max = f32::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        let s = qi.iter().zip(k(j)).map(|(a, b)| a * b).sum::<f32>() * scale;
                        *pj = s;
                        max = max.max(s);
                    }
                    let mut sum = 0f32;
                    for pj in p.iter_mut() {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    let o = &mut out[i * d..(i + 1) * d];
                    for (j, &pj) in p.iter().enumerate() {
                        let w = pj / sum;
                        o.iter_mut().zip(v(j)).for_each(|(a, b)| *a += w * b);
                    }
                }
                (s, hd, out)
            })
            .collect();
        let mut ctx = vec![0f32; total * h];
        for (s, hd, out) in parts {
            let (start, len) = spans[s];
            for t in 0..len {
                ctx[(start + t) * h + hd * d..][..d].copy_from_slice(&out[t * d..(t + 1) * d]);
            }
        }
        ctx
    }
}
