//! The multi-LoRA forward pass on the CPU (synthetic llama: hidden 1024, MLP 2816, 4 layers,
//! 16 heads / 4 key-value heads, vocabulary 8192; 8 adapters of rank 16 on all seven
//! projections), against two baselines measured in the same run:
//! (a) the base model alone on the same batch (what the LoRA updates cost on top);
//! (b) the same 8 sequences run one at a time, each with its adapter (what batching saves).
//!
//! `cargo bench -p openledger-benches --bench model_forward`

use std::collections::BTreeMap;

use openledger_benches::{Report, median_secs};
use openledger_core::DType;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::build::AdapterBuilder;
use openledger_lora::config::ConfigSpec;
use openledger_lora::model::{AdapterId, Model, ModelConfig, SeqInput};
use openledger_lora::tensors::HostTensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const H: usize = 1024;
const I: usize = 2816;
const LAYERS: usize = 4;
const KV: usize = 256;
const VOCAB: usize = 8192;
const ADAPTERS: usize = 8;
const RANK: usize = 16;
const TOKENS: usize = 32;

fn random(n: usize, amp: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

fn projections() -> [(&'static str, usize, usize); 7] {
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

fn model(rng: &mut ChaCha8Rng) -> Model {
    let cfg = ModelConfig::from_json(
        format!(
            r#"{{"model_type": "llama", "vocab_size": {VOCAB}, "hidden_size": {H},
            "intermediate_size": {I}, "num_hidden_layers": {LAYERS}, "num_attention_heads": 16,
            "num_key_value_heads": 4, "rms_norm_eps": 1e-5}}"#
        )
        .as_bytes(),
    )
    .expect("config");
    let mut t = BTreeMap::new();
    let mut put = |k: String, shape: Vec<usize>, v: Vec<f32>| {
        t.insert(k, HostTensor::from_f32(DType::F32, shape, &v));
    };
    put(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, H],
        random(VOCAB * H, 0.05, rng),
    );
    put(
        "lm_head.weight".into(),
        vec![VOCAB, H],
        random(VOCAB * H, 0.05, rng),
    );
    put("model.norm.weight".into(), vec![H], vec![1.0; H]);
    for l in 0..LAYERS {
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
    Model::from_tensors(cfg, t).expect("model")
}

fn adapter(seed: u64) -> LoraAdapter {
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let mut b = AdapterBuilder::new(ConfigSpec::new(RANK, 32.0, &targets));
    for l in 0..LAYERS {
        for (k, (n, i, o)) in projections().into_iter().enumerate() {
            b.random_lora(
                &format!("model.layers.{l}.{n}"),
                i,
                o,
                RANK,
                seed * 100 + (l * 7 + k) as u64,
            );
        }
    }
    let bytes = b.safetensors_bytes().expect("adapter bytes");
    LoraAdapter::from_bytes(b.config_json().as_bytes(), &bytes, &LoadOptions::default())
        .expect("adapter")
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut m = model(&mut rng);
    let ids: Vec<AdapterId> = (0..ADAPTERS)
        .map(|k| {
            m.attach_adapter(&format!("a{k}"), &adapter(k as u64))
                .expect("attach")
        })
        .collect();
    let seqs: Vec<Vec<u32>> = (0..ADAPTERS)
        .map(|_| {
            (0..TOKENS)
                .map(|_| rng.random_range(0..VOCAB as u32))
                .collect()
        })
        .collect();
    let mixed: Vec<SeqInput<'_>> = seqs
        .iter()
        .zip(&ids)
        .map(|(tokens, id)| SeqInput {
            adapter: Some(*id),
            tokens,
        })
        .collect();
    let base: Vec<SeqInput<'_>> = seqs
        .iter()
        .map(|tokens| SeqInput {
            adapter: None,
            tokens,
        })
        .collect();
    let runs = 9;
    let t_mixed = median_secs(runs, || m.forward(&mixed).expect("forward"));
    let t_base = median_secs(runs, || m.forward(&base).expect("forward"));
    let t_each = median_secs(runs, || {
        mixed
            .iter()
            .map(|s| m.forward(std::slice::from_ref(s)).expect("forward").len())
            .sum::<usize>()
    });
    let mut report = Report::new("model_forward");
    let tokens = (ADAPTERS * TOKENS) as f64;
    report.figure("mixed_batch_8x32_s", t_mixed);
    report.figure("mixed_batch_tokens_per_s", tokens / t_mixed);
    report.figure("base_only_batch_s", t_base);
    report.figure("one_sequence_at_a_time_s", t_each);
    report.ratio(
        "mixed_vs_base_only",
        t_mixed,
        t_base,
        "close to 1: LoRA adds little",
    );
    report.ratio(
        "mixed_vs_one_at_a_time",
        t_mixed,
        t_each,
        "< 1: batching pays",
    );
    match report.save() {
        Ok(p) => println!("saved {}", p.display()),
        Err(e) => eprintln!("could not save the report: {e}"),
    }
}
