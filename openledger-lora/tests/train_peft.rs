//! The trainer against PEFT itself, to 1e-5 absolute on logits:
//! - with the factors of the PEFT-made fixture adapters loaded, the trainer's differentiable
//!   forward reproduces the logits transformers + PEFT computed
//!   (`fixtures/peft/tiny-llama/reference.safetensors`);
//! - adapters the trainer made (LoRA and DoRA, `fixtures/peft/tiny-llama/trained/`) load in PEFT
//!   and give PEFT's logits (`trained/peft_logits.safetensors`) in both the trainer and the
//!   engine.

use std::path::{Path, PathBuf};

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, SeqInput};
use openledger_lora::tensors::read_safetensors;
use openledger_lora::train::{LoraSettings, TrainConfig, TrainError, Trainer};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

const SEQUENCES: [&[u32]; 3] = [
    &[1, 17, 42, 99, 3, 250, 7],
    &[1, 5, 6, 200, 31],
    &[1, 300, 12, 12, 77, 8, 9, 64, 111],
];

fn max_diff(ours: &[Vec<f32>], name: &str, reference: &Path) -> f32 {
    let reference = read_safetensors(reference, false).unwrap();
    let mut worst = 0.0f32;
    for (s, logits) in ours.iter().enumerate() {
        let key = format!("logits.{name}.{s}");
        let peft = reference
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap()
            .1
            .to_f32();
        assert_eq!(peft.len(), logits.len());
        let d = logits
            .iter()
            .zip(peft.iter())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        worst = worst.max(d);
    }
    worst
}

/// The trainer-made adapter `name`: trainer and engine against PEFT.
fn check_trained(name: &str, lora: LoraSettings) {
    let model = Model::from_dir(&dir()).unwrap();
    let folder = dir().join("trained").join(name);
    let adapter = LoraAdapter::from_dir(&folder, &LoadOptions::default()).unwrap();
    let mut t = Trainer::new(&model, TrainConfig::new(lora)).unwrap();
    t.load_adapter(&adapter).unwrap();
    let reference = dir().join("trained/peft_logits.safetensors");
    let d_trainer = max_diff(&t.forward(&SEQUENCES).unwrap(), name, &reference);
    let mut engine = model.clone();
    let id = engine.attach_adapter(name, &adapter).unwrap();
    let batch: Vec<SeqInput<'_>> = SEQUENCES
        .iter()
        .map(|s| SeqInput {
            adapter: Some(id),
            tokens: s,
        })
        .collect();
    let d_engine = max_diff(&engine.forward(&batch).unwrap(), name, &reference);
    eprintln!("{name}: max |trainer - PEFT| = {d_trainer:e}, max |engine - PEFT| = {d_engine:e}");
    assert!(
        d_trainer <= 1e-5 && d_engine <= 1e-5,
        "{d_trainer} {d_engine}"
    );
    // The adapter is trained: PEFT's logits are not the base's.
    let base: Vec<SeqInput<'_>> = SEQUENCES
        .iter()
        .map(|s| SeqInput {
            adapter: None,
            tokens: s,
        })
        .collect();
    assert!(max_diff(&engine.forward(&base).unwrap(), name, &reference) > 1e-2);
}

#[test]
fn a_trained_lora_adapter_gives_pefts_logits_in_trainer_and_engine() {
    check_trained("lora-all-r4", LoraSettings::new(&["all-linear"], 4, 8.0));
}

#[test]
fn a_trained_dora_adapter_gives_pefts_logits_in_trainer_and_engine() {
    let mut l = LoraSettings::new(&["q_proj", "v_proj", "down_proj"], 4, 8.0);
    l.use_dora = true;
    check_trained("dora-qvd-r4", l);
}

fn check(name: &str, lora: LoraSettings) {
    let model = Model::from_dir(&dir()).unwrap();
    let adapter =
        LoraAdapter::from_dir(&dir().join("adapters").join(name), &LoadOptions::default()).unwrap();
    let mut t = Trainer::new(&model, TrainConfig::new(lora)).unwrap();
    t.load_adapter(&adapter).unwrap();
    let worst = max_diff(
        &t.forward(&SEQUENCES).unwrap(),
        name,
        &dir().join("reference.safetensors"),
    );
    eprintln!("{name}: max |trainer - PEFT| = {worst:e}");
    assert!(worst <= 1e-5, "{name}: {worst}");
}

#[test]
fn trainer_forward_with_the_qv_fixture_factors_gives_pefts_logits() {
    check("qv-r4", LoraSettings::new(&["q_proj", "v_proj"], 4, 8.0));
}

#[test]
fn trainer_forward_with_the_rslora_all_linear_fixture_factors_gives_pefts_logits() {
    let mut l = LoraSettings::new(&["all-linear"], 8, 16.0);
    l.use_rslora = true;
    check("all-r8-rslora", l);
}

#[test]
fn an_adapter_of_another_shape_or_scale_is_refused_and_nothing_changes() {
    let model = Model::from_dir(&dir()).unwrap();
    let qv = LoraAdapter::from_dir(&dir().join("adapters/qv-r4"), &LoadOptions::default()).unwrap();
    for lora in [
        LoraSettings::new(&["q_proj"], 4, 8.0), // fewer modules
        LoraSettings::new(&["q_proj", "k_proj"], 4, 8.0), // other modules
        LoraSettings::new(&["q_proj", "v_proj"], 4, 16.0), // other scale
        LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0), // other rank, same scale
        {
            let mut l = LoraSettings::new(&["q_proj", "v_proj"], 4, 8.0);
            l.use_dora = true; // magnitudes expected
            l
        },
    ] {
        let mut t = Trainer::new(&model, TrainConfig::new(lora.clone())).unwrap();
        let before = t.parameters().unwrap();
        match t.load_adapter(&qv) {
            Err(TrainError::InvalidConfig {
                field: "adapter", ..
            }) => {}
            other => panic!("{lora:?}: {other:?}"),
        }
        assert_eq!(t.parameters().unwrap(), before);
    }
}
