//! A random llama-shaped model (hidden 1024, MLP 2816, 4 layers, 16 query / 4 key-value heads,
//! vocabulary 8192: ≈ 62M parameters) and random all-linear LoRA adapters for it, shared by the
//! model benches; [`model_with_layers`] and [`adapter_with_layers`] make deeper ones (8 layers:
//! ≈ 106M parameters).

use std::collections::BTreeMap;

use openledger_core::DType;
use openledger_lora::adapter::build::AdapterBuilder;
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::PROJECTIONS;
use openledger_lora::model::{Model, ModelConfig};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Hidden size.
pub const H: usize = 1024;
/// MLP intermediate size.
pub const I: usize = 2816;
/// Decoder layers.
pub const LAYERS: usize = 4;
/// Key/value projection width (4 key-value heads of 64).
pub const KV: usize = 256;
/// Vocabulary size.
pub const VOCAB: usize = 8192;

fn random(n: usize, amp: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// The seven linear projections of a layer: (name under the layer, in features, out features).
pub fn projections() -> [(&'static str, usize, usize); 7] {
    [
        ("self_attn.q_proj", H, H),
        ("self_attn.k_proj", H, KV),
        ("self_attn.v_proj", H, KV),
        ("self_attn.o_proj", H, H),
        ("mlp.gate_proj", H, I),
        ("mlp.up_proj", H, I),
        ("mlp.down_proj", I, H),
    ]
}

/// The model, with weights drawn from `rng` (uniform, small amplitude; norms at 1).
pub fn model(rng: &mut ChaCha8Rng) -> Model {
    model_with_layers(rng, LAYERS)
}

/// Parameters of the model with `layers` decoder layers.
pub fn parameters(layers: usize) -> usize {
    let per_layer: usize = projections().iter().map(|(_, i, o)| i * o).sum::<usize>() + 2 * H;
    2 * VOCAB * H + H + layers * per_layer
}

/// The model with `layers` decoder layers, weights drawn from `rng`.
pub fn model_with_layers(rng: &mut ChaCha8Rng, layers: usize) -> Model {
    let (cfg, t) = tensors_with_layers(rng, layers, DType::F32);
    Model::from_tensors(cfg, t).expect("model")
}

/// The configuration and the tensors (stored as `dtype`) of the model with `layers` decoder
/// layers, weights drawn from `rng`.
pub fn tensors_with_layers(
    rng: &mut ChaCha8Rng,
    layers: usize,
    dtype: DType,
) -> (ModelConfig, BTreeMap<String, HostTensor>) {
    let cfg = ModelConfig::from_json(
        format!(
            r#"{{"model_type": "llama", "vocab_size": {VOCAB}, "hidden_size": {H},
            "intermediate_size": {I}, "num_hidden_layers": {layers}, "num_attention_heads": 16,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-5}}"#
        )
        .as_bytes(),
    )
    .expect("config");
    let mut t = BTreeMap::new();
    let mut put = |k: String, shape: Vec<usize>, v: Vec<f32>| {
        t.insert(k, HostTensor::from_f32(dtype, shape, &v));
    };
    for key in ["model.embed_tokens.weight", "lm_head.weight"] {
        put(key.into(), vec![VOCAB, H], random(VOCAB * H, 0.05, rng));
    }
    put("model.norm.weight".into(), vec![H], vec![1.0; H]);
    for l in 0..layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            put(
                format!("model.layers.{l}.{n}.weight"),
                vec![H],
                vec![1.0; H],
            );
        }
        for (n, i, o) in projections() {
            put(
                format!("model.layers.{l}.{n}.weight"),
                vec![o, i],
                random(o * i, 0.03, rng),
            );
        }
    }
    (cfg, t)
}

/// A rank-`rank` adapter (alpha 32) on all seven projections of every layer, seeded by `seed`.
pub fn adapter(rank: usize, seed: u64) -> LoraAdapter {
    let b = adapter_builder(rank, seed, LAYERS, DType::F32);
    let bytes = b.safetensors_bytes().expect("adapter bytes");
    LoraAdapter::from_bytes(b.config_json().as_bytes(), &bytes, &LoadOptions::default())
        .expect("adapter")
}

/// [`adapter`] for the model with `layers` layers.
pub fn adapter_with_layers(rank: usize, seed: u64, layers: usize) -> LoraAdapter {
    let b = adapter_builder(rank, seed, layers, DType::F32);
    let bytes = b.safetensors_bytes().expect("adapter bytes");
    LoraAdapter::from_bytes(b.config_json().as_bytes(), &bytes, &LoadOptions::default())
        .expect("adapter")
}

/// The PEFT files of [`adapter_with_layers`], tensors stored as `dtype` (write them to a
/// folder with [`AdapterBuilder::write_dir`]).
pub fn adapter_builder(rank: usize, seed: u64, layers: usize, dtype: DType) -> AdapterBuilder {
    let mut b = AdapterBuilder::new(ConfigSpec::new(rank, 32.0, &PROJECTIONS)).with_dtype(dtype);
    for l in 0..layers {
        for (k, (n, i, o)) in projections().into_iter().enumerate() {
            b.random_lora(
                &format!("model.layers.{l}.{n}"),
                i,
                o,
                rank,
                seed * 100 + (l * 7 + k) as u64,
            );
        }
    }
    b
}
