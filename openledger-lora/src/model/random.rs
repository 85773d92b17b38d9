//! Random llama-shaped models made in code, for tests, benchmarks and pre-training
//! experiments: a [`RandomLlama`] shape gives seeded weights, a [`Model`] or an HF model folder
//! (`config.json` + `model.safetensors`, written by [`write_model_dir`]).
//!
//! ```
//! use openledger_lora::model::RandomLlama;
//!
//! let shape = RandomLlama { vocab: 32, hidden: 16, intermediate: 32, layers: 1, heads: 4, kv_heads: 2 };
//! let model = shape.model(7).unwrap();
//! assert_eq!(model.config().num_kv_heads, 2);
//! assert_eq!(shape.parameters(), 2 * 32 * 16 + 16 + (2 * 16 + 16 * 16 * 2 + 2 * 16 * 8 + 3 * 16 * 32));
//!
//! let tok = openledger_lora::model::Tokenizer::from_bytes(shape.tokenizer_json().as_bytes()).unwrap();
//! assert_eq!(tok.encode("w5 w31", true).unwrap(), vec![1, 5, 31]);
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use openledger_core::DType;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{Model, ModelConfig, ModelError, TOKENIZER_FILE, write_model_dir};
use crate::adapter::merge::DenseTensor;
use crate::adapter::tensors::HostTensor;

/// The shape of a random LLaMA model (untied head, no biases, RMSNorm weights at 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RandomLlama {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP inner size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
}

impl RandomLlama {
    /// `config.json` of the shape.
    pub fn config_json(&self) -> String {
        format!(
            r#"{{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": {},
"hidden_size": {}, "intermediate_size": {}, "num_hidden_layers": {}, "num_attention_heads": {},
"num_key_value_heads": {}, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
"max_position_embeddings": 2048, "torch_dtype": "float32"}}"#,
            self.vocab, self.hidden, self.intermediate, self.layers, self.heads, self.kv_heads
        )
    }

    /// Parameters of the model.
    pub fn parameters(&self) -> usize {
        let (h, i) = (self.hidden, self.intermediate);
        let kv = h / self.heads * self.kv_heads;
        let layer = 2 * h + 2 * h * h + 2 * h * kv + 3 * h * i;
        2 * self.vocab * h + h + self.layers * layer
    }

    /// Seeded weights: embeddings and head uniform in ±0.05, projections uniform in
    /// `±1/√in`, norms at 1.
    pub fn tensors(&self, seed: u64) -> BTreeMap<String, DenseTensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut random = |n: usize, amp: f32| -> Vec<f32> {
            (0..n).map(|_| rng.random_range(-amp..amp)).collect()
        };
        let (h, i, v) = (self.hidden, self.intermediate, self.vocab);
        let kv = h / self.heads * self.kv_heads;
        let mut t = BTreeMap::new();
        t.insert(
            "model.embed_tokens.weight".to_string(),
            DenseTensor::new(vec![v, h], random(v * h, 0.05)),
        );
        t.insert(
            "lm_head.weight".to_string(),
            DenseTensor::new(vec![v, h], random(v * h, 0.05)),
        );
        t.insert(
            "model.norm.weight".to_string(),
            DenseTensor::new(vec![h], vec![1.0; h]),
        );
        for l in 0..self.layers {
            for n in ["input_layernorm", "post_attention_layernorm"] {
                t.insert(
                    format!("model.layers.{l}.{n}.weight"),
                    DenseTensor::new(vec![h], vec![1.0; h]),
                );
            }
            for (n, fin, fout) in [
                ("self_attn.q_proj", h, h),
                ("self_attn.k_proj", h, kv),
                ("self_attn.v_proj", h, kv),
                ("self_attn.o_proj", h, h),
                ("mlp.gate_proj", h, i),
                ("mlp.up_proj", h, i),
                ("mlp.down_proj", i, h),
            ] {
                let amp = 1.0 / (fin as f32).sqrt();
                t.insert(
                    format!("model.layers.{l}.{n}.weight"),
                    DenseTensor::new(vec![fout, fin], random(fout * fin, amp)),
                );
            }
        }
        t
    }

    /// The model with [`RandomLlama::tensors`] of `seed`.
    pub fn model(&self, seed: u64) -> Result<Model, ModelError> {
        let cfg = ModelConfig::from_json(self.config_json().as_bytes())?;
        let tensors = self
            .tensors(seed)
            .into_iter()
            .map(|(k, t)| (k, HostTensor::from_f32(DType::F32, t.shape, &t.data)))
            .collect();
        Model::from_tensors(cfg, tensors)
    }

    /// Writes the model of `seed` as an HF folder (`config.json` + `model.safetensors`), with
    /// [`RandomLlama::tokenizer_json`] as `tokenizer.json` when `with_tokenizer`.
    pub fn write_dir(&self, dir: &Path, seed: u64, with_tokenizer: bool) -> Result<(), ModelError> {
        write_model_dir(dir, &self.config_json(), &self.tensors(seed))?;
        if with_tokenizer {
            let path = dir.join(TOKENIZER_FILE);
            std::fs::write(&path, self.tokenizer_json())
                .map_err(|source| ModelError::Write { path, source })?;
        }
        Ok(())
    }

    /// A word-level `tokenizer.json` over the whole vocabulary: `<unk>` (0), `<s>` (1, added
    /// in front of every encoded text), `</s>` (2), then the words `w3`, `w4`, ... split on
    /// whitespace.
    pub fn tokenizer_json(&self) -> String {
        let mut vocab = serde_json::Map::new();
        for id in 0..self.vocab {
            let word = match id {
                0 => "<unk>".to_string(),
                1 => "<s>".to_string(),
                2 => "</s>".to_string(),
                _ => format!("w{id}"),
            };
            vocab.insert(word, json!(id));
        }
        let special = |id: usize, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let v = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
            },
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        serde_json::to_string(&v).unwrap_or_default()
    }
}
