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
