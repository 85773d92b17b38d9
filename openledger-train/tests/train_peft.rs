//! The trainer against PEFT itself, to 1e-5 absolute on logits:
//! - with the factors of the PEFT-made fixture adapters loaded, the trainer's differentiable
//!   forward reproduces the logits transformers + PEFT computed
//!   (`fixtures/peft/tiny-llama/reference.safetensors`);
//! - adapters the trainer made (LoRA and DoRA, `fixtures/peft/tiny-llama/trained/`) load in PEFT
//!   and give PEFT's logits (`trained/peft_logits.safetensors`) in both the trainer and the
//!   engine.

use std::path::{Path, PathBuf};

use openledger_lora::adapter::tensors::read_safetensors;
use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{AdapterSlot, Model, SeqInput};
use openledger_train::{Example, LoraSettings, TrainConfig, TrainError, Trainer};

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

/// The reference sequences for the engine, each with `adapter`.
fn batch(adapter: Option<AdapterSlot>) -> Vec<SeqInput<'static>> {
    SEQUENCES
        .iter()
        .map(|s| SeqInput { adapter, tokens: s })
        .collect()
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
    let d_engine = max_diff(&engine.forward(&batch(Some(id))).unwrap(), name, &reference);
    eprintln!("{name}: max |trainer - PEFT| = {d_trainer:e}, max |engine - PEFT| = {d_engine:e}");
    assert!(
        d_trainer <= 1e-5 && d_engine <= 1e-5,
        "{d_trainer} {d_engine}"
    );
    // The adapter is trained: PEFT's logits are not the base's.
    assert!(max_diff(&engine.forward(&batch(None)).unwrap(), name, &reference) > 1e-2);
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

/// The settings PEFT made the `attn-patterns` fixture with: r = 8, alpha = 8, `o_proj` at rank
/// 2, `k_proj` at alpha 32.
fn attn_patterns() -> LoraSettings {
    let mut l = LoraSettings::new(&["q_proj", "o_proj", "k_proj", "v_proj"], 8, 8.0);
    l.rank_pattern = vec![("o_proj".into(), 2)];
    l.alpha_pattern = vec![("k_proj".into(), 32.0)];
    l
}

#[test]
fn trainer_forward_with_rank_and_alpha_patterns_gives_pefts_logits() {
    check("attn-patterns", attn_patterns());
}

#[test]
fn an_adapter_trained_with_patterns_keeps_them_and_the_engine_agrees() {
    let model = Model::from_dir(&dir()).unwrap();
    let mut config = TrainConfig::new(attn_patterns());
    config.steps = 3;
    config.batch_size = 2;
    config.learning_rate = 1e-2;
    let mut t = Trainer::new(&model, config).unwrap();
    let layout = t.gradient_layout();
    let rank_of = |module: &str| {
        let name = format!("{module}.lora_A.weight");
        layout.iter().find(|p| p.name == name).unwrap().shape[0]
    };
    assert_eq!(rank_of("model.layers.0.self_attn.q_proj"), 8);
    assert_eq!(rank_of("model.layers.1.self_attn.o_proj"), 2);
    let data: Vec<Example> = SEQUENCES.iter().map(|s| Example::text(s)).collect();
    t.train(&data, &[], &mut |_| {}).unwrap();

    let out = std::env::temp_dir().join(format!("ol-patterns-{}", std::process::id()));
    t.save_adapter(&out).unwrap();
    let saved = LoraAdapter::from_dir(&out, &LoadOptions::default()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    for (module, rank, scale) in [
        ("model.layers.0.self_attn.q_proj", 8, 1.0),
        ("model.layers.1.self_attn.o_proj", 2, 4.0),
        ("model.layers.0.self_attn.k_proj", 8, 4.0),
    ] {
        let m = saved.module(module).unwrap();
        assert_eq!((m.rank(), m.scale()), (rank, scale), "{module}");
    }
    let mut engine = model.clone();
    let id = engine.attach_adapter("patterns", &saved).unwrap();
    let ours = t.forward(&SEQUENCES).unwrap();
    let engine_logits = engine.forward(&batch(Some(id))).unwrap();
    let worst = ours
        .iter()
        .flatten()
        .zip(engine_logits.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "trainer vs engine: {worst}");
}

#[test]
fn bad_patterns_are_refused_before_training() {
    let model = Model::from_dir(&dir()).unwrap();
    let mut zero = attn_patterns();
    zero.rank_pattern.push(("v_proj".into(), 0));
    let mut nan = attn_patterns();
    nan.alpha_pattern = vec![("q_proj".into(), f64::NAN)];
    for (lora, field) in [(zero, "lora.rank_pattern"), (nan, "lora.alpha_pattern")] {
        match Trainer::new(&model, TrainConfig::new(lora)) {
            Err(TrainError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} refused, got {other:?}"),
        }
    }
    let mut regex = attn_patterns();
    regex.rank_pattern = vec![("(unclosed".into(), 4)];
    match Trainer::new(&model, TrainConfig::new(regex)) {
        Err(e @ TrainError::Lora(_)) => assert!(e.to_string().contains("rank_pattern"), "{e}"),
        other => panic!("expected a bad pattern refused, got {other:?}"),
    }
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
