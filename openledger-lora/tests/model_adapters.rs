//! DoRA and `modules_to_save` in the multi-LoRA forward pass: an adapter applied at run time
//! (SGMV + DoRA factor + replacement weights) gives the logits of the base model with that
//! adapter merged into its weights by `merge` (itself checked against PEFT's merged weights),
//! alone and inside a mixed batch. Tolerance: 1e-4 absolute on logits (f32).

use std::collections::BTreeMap;
use std::path::PathBuf;

use openledger_core::DType;
use openledger_lora::adapter::build::{AdapterBuilder, random_values};
use openledger_lora::adapter::config::ConfigSpec;
use openledger_lora::adapter::merge::{DenseTensor, merge};
use openledger_lora::adapter::tensors::{HostTensor, read_safetensors};
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, ModelConfig, SeqInput};
use openledger_lora::model::{PROJECTIONS, module_name};

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

fn base_weights() -> BTreeMap<String, DenseTensor> {
    read_safetensors(&fixture().join("model.safetensors"), false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            (
                k,
                DenseTensor::new(t.shape().to_vec(), t.to_f32().into_owned()),
            )
        })
        .collect()
}

fn config() -> ModelConfig {
    ModelConfig::from_json(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap()
}

fn model_from(weights: &BTreeMap<String, DenseTensor>) -> Model {
    let tensors = weights
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                HostTensor::from_f32(DType::F32, t.shape.clone(), &t.data),
            )
        })
        .collect();
    Model::from_tensors(config(), tensors).unwrap()
}

fn adapter(b: &AdapterBuilder) -> LoraAdapter {
    LoraAdapter::from_bytes(
        b.config_json().as_bytes(),
        &b.safetensors_bytes().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap()
}

fn dora_adapter() -> LoraAdapter {
    let mut spec = ConfigSpec::new(4, 8.0, &["q_proj", "v_proj", "down_proj"]);
    spec.use_dora = true;
    let mut b = AdapterBuilder::new(spec);
    for l in 0..2 {
        for (m, i, o, seed) in [
            ("self_attn.q_proj", 64, 64, 1),
            ("self_attn.v_proj", 64, 32, 2),
            ("mlp.down_proj", 128, 64, 3),
        ] {
            let name = format!("model.layers.{l}.{m}");
            b.random_lora(&name, i, o, 4, seed + 10 * l as u64);
            let mag: Vec<f32> = (0..o).map(|k| 0.5 + (k % 7) as f32 * 0.1).collect();
            b.magnitude(&name, &mag);
        }
    }
    adapter(&b)
}

fn saved_head_adapter() -> LoraAdapter {
    let mut spec = ConfigSpec::new(2, 4.0, &["k_proj"]);
    spec.modules_to_save = vec!["lm_head".into()];
    let mut b = AdapterBuilder::new(spec);
    b.random_lora("model.layers.1.self_attn.k_proj", 64, 32, 2, 5);
    let head: Vec<f32> = (0..320 * 64)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.004)
        .collect();
    b.saved("lm_head.weight", vec![320, 64], &head);
    adapter(&b)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SEQS: [&[u32]; 2] = [&[1, 17, 42, 99, 3, 250, 7], &[1, 300, 12, 12, 77]];

#[test]
fn dora_and_saved_modules_at_run_time_equal_merged_weights_in_one_mixed_batch() {
    let (dora, saved) = (dora_adapter(), saved_head_adapter());
    let mut model = Model::from_dir(&fixture()).unwrap();
    let dora_id = model.attach_adapter("dora", &dora).unwrap();
    let saved_id = model.attach_adapter("saved-head", &saved).unwrap();
    let mut merged = Vec::new();
    for a in [&dora, &saved] {
        let mut w = base_weights();
        merge(a, &mut w).unwrap();
        merged.push(model_from(&w));
    }
    let plain = model_from(&base_weights());
    let batch: Vec<SeqInput<'_>> = SEQS
        .iter()
        .flat_map(|tokens| {
            [None, Some(dora_id), Some(saved_id)].map(|adapter| SeqInput { adapter, tokens })
        })
        .collect();
    let got = model.forward(&batch).unwrap();
    for (i, tokens) in SEQS.iter().enumerate() {
        let one = |m: &Model| {
            m.forward(&[SeqInput {
                adapter: None,
                tokens,
            }])
            .unwrap()
            .remove(0)
        };
        let (base, d, s) = (one(&plain), one(&merged[0]), one(&merged[1]));
        assert!(max_diff(&got[3 * i], &base) <= TOL);
        let e = max_diff(&got[3 * i + 1], &d);
        assert!(e <= TOL, "dora seq {i}: {e}");
        let e = max_diff(&got[3 * i + 2], &s);
        assert!(e <= TOL, "saved lm_head seq {i}: {e}");
        // the adapters really change the output
        assert!(max_diff(&d, &base) > 1e-2 && max_diff(&s, &base) > 1e-2);
    }
}

/// A rank-4 adapter on all seven projections of both layers, its values rounded by `round`
/// (to a half-precision grid) and stored as `dtype`.
fn all_linear_adapter(dtype: DType, round: fn(f32) -> f32) -> LoraAdapter {
    let c = config();
    let (h, kv, mlp) = (
        c.hidden_size,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let ins_outs = [
        (h, h),
        (h, kv),
        (h, kv),
        (h, h),
        (h, mlp),
        (h, mlp),
        (mlp, h),
    ];
    let mut b = AdapterBuilder::new(ConfigSpec::new(4, 8.0, &PROJECTIONS)).with_dtype(dtype);
    for l in 0..c.num_layers {
        for (k, (i, o)) in ins_outs.into_iter().enumerate() {
            let seed = (10 * l + k) as u64;
            let a: Vec<f32> = random_values(4 * i, seed).into_iter().map(round).collect();
            let bb: Vec<f32> = random_values(o * 4, seed + 100)
                .into_iter()
                .map(round)
                .collect();
            b.lora(&module_name(l, k), i, o, 4, &a, &bb);
        }
    }
    adapter(&b)
}

/// bf16 and f16 adapters are attached in their stored dtype (half the bytes of f32 copies)
/// and give exactly the logits of the same values held as f32 (the kernels widen them
/// exactly), alone and beside each other in one mixed batch.
#[test]
fn half_precision_adapters_run_in_their_dtype_with_the_logits_of_their_f32_values() {
    let to_bf16: fn(f32) -> f32 = |v| half::bf16::from_f32(v).to_f32();
    let to_f16: fn(f32) -> f32 = |v| half::f16::from_f32(v).to_f32();
    let mut model = Model::from_dir(&fixture()).unwrap();
    let mut ids = Vec::new();
    let mut bytes = Vec::new();
    for (dtype, round) in [
        (DType::BF16, to_bf16),
        (DType::F32, to_bf16),
        (DType::F16, to_f16),
        (DType::F32, to_f16),
    ] {
        let a = all_linear_adapter(dtype, round);
        assert_eq!(
            a.module("model.layers.0.mlp.up_proj").unwrap().a().dtype(),
            dtype
        );
        let before = model.attached_bytes();
        ids.push(model.attach_adapter(&format!("{dtype:?}"), &a).unwrap());
        bytes.push(model.attached_bytes() - before);
    }
    // 2 layers × (64+64 + 64+32 + 64+32 + 64+64 + 64+128 + 64+128 + 128+64) × rank 4 values
    let values = 2 * 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192);
    // plus one 64-byte cache line after each of the 4 rank rows of each module's Bᵀ (the padded
    // layout the model serves with)
    let padding = 2 * 7 * 4 * 64;
    assert_eq!(
        bytes,
        [2 * values, 4 * values, 2 * values, 4 * values].map(|b| b + padding)
    );

    let one = |adapter, tokens| {
        model
            .forward(&[SeqInput {
                adapter: Some(adapter),
                tokens,
            }])
            .unwrap()
            .remove(0)
    };
    let batch: Vec<SeqInput<'_>> = SEQS
        .iter()
        .flat_map(|tokens| {
            ids.iter().map(|&id| SeqInput {
                adapter: Some(id),
                tokens,
            })
        })
        .collect();
    let mixed = model.forward(&batch).unwrap();
    for (s, tokens) in SEQS.iter().enumerate() {
        let base = model
            .forward(&[SeqInput {
                adapter: None,
                tokens,
            }])
            .unwrap()
            .remove(0);
        for pair in [0, 2] {
            let half = one(ids[pair], tokens);
            let full = one(ids[pair + 1], tokens);
            assert_eq!(half, full, "seq {s}, adapter {pair}: bitwise equal alone");
            assert!(
                max_diff(&half, &base) > 1e-2,
                "the adapter changes the logits"
            );
            for k in [pair, pair + 1] {
                let e = max_diff(&mixed[s * ids.len() + k], &full);
                assert!(e <= 1e-5, "seq {s}, adapter {k} in the mixed batch: {e}");
            }
        }
    }
}
