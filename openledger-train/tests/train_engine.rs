//! The trainer against the inference engine: a saved adapter (LoRA and DoRA) attached to a
//! model loaded from disk gives the trainer's own logits, and runs are reproducible.

use std::path::{Path, PathBuf};

use openledger_lora::adapter::{LoadOptions, LoraAdapter};
use openledger_lora::model::{Model, SeqInput};
use openledger_train::{Example, LoraSettings, TrainConfig, Trainer};

fn tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

/// A small instruction set over the tiny vocabulary: the response repeats the prompt shifted.
fn dataset(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let p: Vec<u32> = (0..4).map(|k| 3 + ((i * 7 + k * 5) % 200) as u32).collect();
            let r: Vec<u32> = p.iter().map(|t| t + 50).collect();
            let mut prompt = vec![1];
            prompt.extend(&p);
            Example::prompt_response(&prompt, &r)
        })
        .collect()
}

fn config(lora: LoraSettings, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::new(lora);
    c.steps = steps;
    c.batch_size = 4;
    c.learning_rate = 5e-3;
    c.warmup_steps = 1;
    c.seed = 11;
    c
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Trains, saves, reloads through the engine and compares logits on two sequences. With
/// `OPENLEDGER_TRAIN_ADAPTER_OUT` set, the adapter is also saved under that folder as `name`
/// (for `scripts/check_trained_adapter.py`).
fn round_trip(name: &str, lora: LoraSettings) -> f32 {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let mut trainer = Trainer::new(&model, config(lora, 6)).unwrap();
    trainer.train(&dataset(16), &[], &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    trainer.save_adapter(dir.path()).unwrap();
    if let Some(out) = std::env::var_os("OPENLEDGER_TRAIN_ADAPTER_OUT") {
        trainer.save_adapter(&Path::new(&out).join(name)).unwrap();
    }
    let adapter = LoraAdapter::from_dir(dir.path(), &LoadOptions::default()).unwrap();
    let mut engine = Model::from_dir(&tiny_llama()).unwrap();
    let id = engine.attach_adapter("trained", &adapter).unwrap();
    let seqs: [&[u32]; 2] = [&[1, 17, 42, 99, 5, 250, 7], &[1, 3, 4]];
    let ours = trainer.forward(&seqs).unwrap();
    let theirs = engine
        .forward(&[
            SeqInput {
                adapter: Some(id),
                tokens: seqs[0],
            },
            SeqInput {
                adapter: Some(id),
                tokens: seqs[1],
            },
        ])
        .unwrap();
    let base = engine
        .forward(&[SeqInput {
            adapter: None,
            tokens: seqs[0],
        }])
        .unwrap();
    // The adapter changed the model, so agreeing with the engine is not agreeing with the base.
    assert!(max_diff(&ours[0], &base[0]) > 1e-3);
    max_diff(&ours[0], &theirs[0]).max(max_diff(&ours[1], &theirs[1]))
}

#[test]
fn saved_lora_adapter_gives_the_trainers_logits_in_the_engine() {
    let d = round_trip("lora-all-r4", LoraSettings::new(&["all-linear"], 4, 8.0));
    eprintln!("max |trainer - engine| = {d:e}");
    assert!(d <= 1e-5, "max |diff| {d}");
}

#[test]
fn saved_dora_adapter_gives_the_trainers_logits_in_the_engine() {
    let mut l = LoraSettings::new(&["q_proj", "v_proj", "down_proj"], 4, 8.0);
    l.use_dora = true;
    let d = round_trip("dora-qvd-r4", l);
    eprintln!("max |trainer - engine| = {d:e}");
    assert!(d <= 1e-5, "max |diff| {d}");
}

#[test]
fn rslora_scale_round_trips_through_the_engine() {
    let mut l = LoraSettings::new(&["q_proj", "k_proj", "o_proj", "up_proj"], 8, 4.0);
    l.use_rslora = true;
    let d = round_trip("rslora-r8", l);
    eprintln!("max |trainer - engine| = {d:e}");
    assert!(d <= 1e-5, "max |diff| {d}");
}

#[test]
fn same_seed_gives_identical_adapter_bytes_and_another_seed_does_not() {
    let model = Model::from_dir(&tiny_llama()).unwrap();
    let run = |seed: u64| {
        let mut l = LoraSettings::new(&["q_proj", "v_proj"], 4, 8.0);
        l.dropout = 0.1;
        let mut c = config(l, 4);
        c.seed = seed;
        let mut t = Trainer::new(&model, c).unwrap();
        t.train(&dataset(12), &[], &mut |_| {}).unwrap();
        t.adapter_files().unwrap().1
    };
    let a = run(5);
    assert_eq!(a, run(5));
    assert_ne!(a, run(6));
}
