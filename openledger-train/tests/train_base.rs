//! "Train a base": a random tiny llama learns a synthetic language through a high-rank LoRA,
//! the adapter is merged into the base (in memory and as an HF folder), and a fresh LoRA is
//! then fine-tuned on top of the merged base.

use openledger_core::DType;
use openledger_lora::adapter::tensors::HostTensor;
use openledger_lora::model::RandomLlama;
use openledger_lora::model::{Model, ModelConfig, SeqInput, Tokenizer};
use openledger_train::{Example, LoraSettings, RecordText, TrainConfig, Trainer, tokenize};

const SHAPE: RandomLlama = RandomLlama {
    vocab: 48,
    hidden: 64,
    intermediate: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
};

/// Language A: after BOS (1), tokens follow `x → (x − 2 + 7) mod 32 + 2`.
fn language_a(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let mut t = vec![1u32, 2 + (i * 11 % 32) as u32];
            for _ in 0..10 {
                let x = *t.last().unwrap();
                t.push((x - 2 + 7) % 32 + 2);
            }
            Example::text(&t)
        })
        .collect()
}

/// Task B: a prompt `BOS x MARK` answered by `x + 3, x + 6` (mod 32, shifted by 2).
fn task_b(n: usize, salt: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let x = 2 + ((i * 5 + salt) % 32) as u32;
            let f = |k: u32| (x - 2 + k) % 32 + 2;
            Example::prompt_response(&[1, x, 40], &[f(3), f(6)])
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_high_rank_adapter_merged_into_a_random_base_then_a_fresh_lora_fine_tunes_on_top() {
    // The frozen head of a random base caps the logits (RMSNorm fixes |h| = √hidden): widen
    // it so that a confident next-token distribution is reachable through the projections.
    let tensors = SHAPE
        .tensors(21)
        .into_iter()
        .map(|(k, mut t)| {
            if k == "lm_head.weight" {
                t.data.iter_mut().for_each(|v| *v *= 8.0);
            }
            (k, HostTensor::from_f32(DType::F32, t.shape, &t.data))
        })
        .collect();
    let cfg = ModelConfig::from_json(SHAPE.config_json().as_bytes()).unwrap();
    let random = Model::from_tensors(cfg, tensors).unwrap();
    let mut c = TrainConfig::new(LoraSettings::new(&["all-linear"], 32, 32.0));
    c.steps = 80;
    c.batch_size = 16;
    c.learning_rate = 2e-2;
    c.warmup_steps = 5;
    c.seed = 4;
    let mut pre = Trainer::new(&random, c).unwrap();
    let lang = language_a(32);
    let before = pre.evaluate(&lang).unwrap().loss;
    pre.train(&lang, &[], &mut |_| {}).unwrap();
    let after = pre.evaluate(&lang).unwrap().loss;
    assert!(
        after < 0.25 * before,
        "pre-training loss {before} -> {after}"
    );

    // The merged base alone computes what base + adapter computed (f32 merge: 1e-4).
    let merged = pre.merged_model().unwrap();
    let seq: &[u32] = &[1, 9, 16, 23, 30, 5];
    let adapted = pre.forward(&[seq]).unwrap();
    let plain = merged
        .forward(&[SeqInput {
            adapter: None,
            tokens: seq,
        }])
        .unwrap();
    let d = max_diff(&adapted[0], &plain[0]);
    assert!(d <= 1e-4, "merged base differs by {d}");
    // ... also after a trip through an HF folder.
    let dir = tempfile::tempdir().unwrap();
    pre.save_merged_base(dir.path()).unwrap();
    let loaded = Model::from_dir(dir.path()).unwrap();
    let from_disk = loaded
        .forward(&[SeqInput {
            adapter: None,
            tokens: seq,
        }])
        .unwrap();
    assert_eq!(from_disk, plain);

    // Fine-tune a fresh low-rank LoRA on the merged base.
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj", "up_proj"], 4, 8.0));
    c.steps = 50;
    c.batch_size = 16;
    c.learning_rate = 1e-2;
    c.seed = 5;
    let mut fine = Trainer::new(&loaded, c).unwrap();
    let task = task_b(32, 0);
    let held_out = task_b(8, 1);
    let b_before = fine.evaluate(&held_out).unwrap().loss;
    let lang_before = fine.evaluate(&lang).unwrap().loss;
    assert!(
        (lang_before - after).abs() < 1e-3,
        "merged base lost the language"
    );
    fine.train(&task, &held_out, &mut |_| {}).unwrap();
    let b_after = fine.evaluate(&held_out).unwrap().loss;
    assert!(
        b_after < 0.5 * b_before,
        "fine-tuning loss {b_before} -> {b_after}"
    );
}

#[test]
fn a_random_llama_folder_with_its_tokenizer_loads_and_trains_on_text_records() {
    let dir = tempfile::tempdir().unwrap();
    SHAPE.write_dir(dir.path(), 9, true).unwrap();
    let model = Model::from_dir(dir.path()).unwrap();
    let direct = SHAPE.model(9).unwrap();
    let seq: &[u32] = &[1, 7, 8, 9];
    assert_eq!(
        model
            .forward(&[SeqInput {
                adapter: None,
                tokens: seq
            }])
            .unwrap(),
        direct
            .forward(&[SeqInput {
                adapter: None,
                tokens: seq
            }])
            .unwrap()
    );
    let tok = Tokenizer::from_model_dir(dir.path()).unwrap();
    let records = [
        RecordText::PromptResponse {
            prompt: "w3 w4 w5".into(),
            response: "w6 w7".into(),
        },
        RecordText::Text("w10 w11 w12 w13".into()),
    ];
    let data: Vec<Example> = records
        .iter()
        .map(|r| tokenize(&tok, r, Some(2)).unwrap())
        .collect();
    assert_eq!(data[0].tokens, vec![1, 3, 4, 5, 6, 7, 2]);
    assert_eq!(data[0].targets(), 3);
    let mut c = TrainConfig::new(LoraSettings::new(&["q_proj", "v_proj"], 2, 4.0));
    c.steps = 5;
    c.batch_size = 2;
    c.learning_rate = 2e-2;
    let mut t = Trainer::new(&model, c).unwrap();
    let s = t.train(&data, &[], &mut |_| {}).unwrap();
    assert!(s.losses[4] < s.losses[0], "{:?}", s.losses);
}
