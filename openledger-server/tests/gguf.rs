//! A pretrained model served from its GGUF file: SmolLM2-135M-Instruct (Q4_1, fetched by
//! `scripts/fetch-models.sh`) answers a chat over HTTP with the tokens transformers generates
//! for the same file, its chat template (from the file's metadata) rendered and tokenized to
//! transformers' ids (`fixtures/smollm2/reference.json`). Skipped with a message when the model
//! is absent, unless `OPENLEDGER_REQUIRE_MODELS=1`.

mod common;

use std::path::Path;

use common::*;
use openledger_server::{Server, ServerConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn smollm2_answers_as_transformers_does() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    let Some(dir) = openledger_lora::embed::fetched_model_or_skip(&root, "SmolLM2-135M-Instruct")
        .unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let file = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let chat = &refs["chat"];
    let mut config = ServerConfig::new(file);
    config.serve.max_context = 256;
    let s = Server::load(config, &mut |_| {}).unwrap();
    assert_eq!(s.model_name(), "SmolLM2-135M-Instruct.Q4_1");
    let r = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "SmolLM2-135M-Instruct.Q4_1", "messages": chat["messages"], "max_tokens": 16,
               "temperature": 0, "logprobs": true, "return_tokens_as_token_ids": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["usage"]["prompt_tokens"],
        chat["ids"].as_array().unwrap().len()
    );
    let answer: Vec<u32> = serde_json::from_value(chat["answer_ids"].clone()).unwrap();
    // transformers' answer ends with <|im_end|> (2), the stop token, which the API leaves out.
    let (last, body) = answer.split_last().unwrap();
    assert_eq!(*last, 2);
    let got: Vec<u32> = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["token"].as_str().unwrap()["token_id:".len()..]
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(got, body);
    assert_eq!(v["choices"][0]["message"]["content"], chat["answer"]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // The rendered prompt's ids as a completion give the same answer.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": chat["ids"], "max_tokens": 16, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(r["choices"][0]["text"], chat["answer"]);
}

/// The same file with `--device cuda`: served on a GPU where the build, the driver and a device
/// are there (weights dequantized on the host, f32 on the device), giving transformers' answer;
/// anywhere else a typed error naming the device and what is missing, before the file's
/// weights are read.
#[tokio::test]
async fn smollm2_on_a_cuda_device_answers_or_names_what_is_missing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models");
    let Some(dir) = openledger_lora::embed::fetched_model_or_skip(&root, "SmolLM2-135M-Instruct")
        .unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let refs: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2/reference.json")).unwrap(),
    )
    .unwrap();
    let chat = &refs["chat"];
    let mut config = ServerConfig::new(dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
    config.serve.max_context = 256;
    config.device = openledger_server::Device::Cuda(0);
    match Server::load(config, &mut |_| {}) {
        Ok(s) => {
            let r = post(
                &s,
                "/v1/completions",
                json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": chat["ids"],
                       "max_tokens": 16, "temperature": 0}),
            )
            .await
            .json();
            assert_eq!(r["choices"][0]["text"], chat["answer"]);
        }
        Err(e) => assert_names_what_cuda_lacks(&e.to_string()),
    }
}
