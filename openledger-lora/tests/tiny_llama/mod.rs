//! The tiny llama fixture (fixtures/peft/tiny-llama) and its transformers + PEFT references,
//! shared by the tests that serve it.

#![allow(dead_code)]

use std::path::PathBuf;

use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{Request, SamplingParams};

/// The fixture's model folder.
pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft/tiny-llama")
}

/// An adapter id that must be valid.
pub fn id(name: &str) -> AdapterId {
    AdapterId::new(name).unwrap()
}

/// `reference.json`: the reference sequences and PEFT's greedy tokens.
pub fn reference_json() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap()
}

/// A JSON array of token ids.
pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Reference sequence `i`.
pub fn sequence(i: usize) -> Vec<u32> {
    u32s(&reference_json()["sequences"][i])
}

/// PEFT's greedy tokens for `key` (`"<adapter or base>.<sequence>"`).
pub fn peft_greedy(key: &str) -> Vec<u32> {
    u32s(&reference_json()["greedy"][key])
}

/// A request for `max_new_tokens` greedy tokens after `prompt` with `adapter` (`None`: the
/// base model).
pub fn request(prompt: Vec<u32>, adapter: Option<&str>, max_new_tokens: usize) -> Request {
    Request {
        prompt,
        adapter: adapter.map(id),
        sampling: SamplingParams {
            max_new_tokens,
            ..Default::default()
        },
    }
}

/// Float32 logits by name from a reference safetensors file: `(shape, values)`.
pub fn reference_logits(
    path: &std::path::Path,
) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    openledger_lora::adapter::tensors::read_safetensors(path, false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, (t.shape().to_vec(), t.to_f32().into_owned())))
        .collect()
}

/// The largest absolute difference between `got` and reference logits `want` of a sequence of
/// `len` tokens (checking the reference's shape is `[len, vocab]`).
pub fn max_logit_diff(got: &[f32], want: &(Vec<usize>, Vec<f32>), len: usize, vocab: usize) -> f32 {
    assert_eq!(want.0, vec![len, vocab]);
    assert_eq!(got.len(), want.1.len());
    got.iter()
        .zip(&want.1)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
