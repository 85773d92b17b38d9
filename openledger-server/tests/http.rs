//! The server's endpoints through its router: PEFT's greedy tokens over HTTP, the engine's own
//! tokens for a seeded request, streaming, choices, stops, log-probabilities, adapters loaded and
//! unloaded at run time, keys and limits, and errors that name their field.

mod common;

use common::*;
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{Event, Request, SamplingParams};
use serde_json::{Value, json};

fn reference() -> Value {
    let text = std::fs::read_to_string(fixtures().join("peft/tiny-llama/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn models_lists_the_base_and_every_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let r = call(&s, "GET", "/v1/models", None, None).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["tiny-llama", "all-r8-rslora", "attn-patterns", "qv-r4"]
    );
    assert_eq!(v["data"][1]["parent"], "tiny-llama");
    assert_eq!(v["data"][0]["parent"], Value::Null);
    assert_eq!(call(&s, "GET", "/health", None, None).await.status, 200);
}

/// Greedy completions of token-id prompts over HTTP are PEFT's greedy tokens, for the base
/// model and each adapter (the model is float32; PEFT ran on the CPU in float32).
#[tokio::test]
async fn greedy_completions_are_pefts_tokens() {
    let dir = tempfile::tempdir().unwrap();
    greedy_tokens_are_pefts(&server(dir.path(), None)).await;
}

/// The same over the base quantised to int8 at load (`--weights int8`): the fixture's greedy
/// tokens survive it (openledger-lora's model_weights tests bound the logit gaps).
#[tokio::test]
async fn greedy_completions_over_an_int8_base_are_pefts_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let weights = openledger_server::WeightFormat::Int8 { group: 0 };
    greedy_tokens_are_pefts(&server_with_weights(dir.path(), None, weights)).await;
}

async fn greedy_tokens_are_pefts(s: &openledger_server::Server) {
    let refs = reference();
    let mut checked = 0;
    for (key, want) in refs["greedy"].as_object().unwrap() {
        let (model, seq) = key.rsplit_once('.').unwrap();
        let model = if model == "base" { "tiny-llama" } else { model };
        let prompt = &refs["sequences"][seq.parse::<usize>().unwrap()];
        let r = post(
            s,
            "/v1/completions",
            json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                   "logprobs": 0, "return_tokens_as_token_ids": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let got = token_ids(&v["choices"][0]["logprobs"]["tokens"]);
        let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(got, want, "{key}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 8);
        assert_eq!(
            v["usage"]["prompt_tokens"],
            prompt.as_array().unwrap().len()
        );
        checked += 1;
    }
    assert_eq!(checked, 12);
}

/// A `model` spelling an ensemble of loaded adapters (`qv-r4*0.7+all-r8-rslora*0.4`) gives
/// PEFT's greedy tokens of `add_weighted_adapter(..., combination_type="cat")` with those
/// weights; a member not loaded, the same member twice or a bad weight is 404
/// `model_not_found`, naming the member where one is missing.
#[tokio::test]
async fn ensembles_named_in_the_model_field_are_pefts_cat_combinations() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let refs = reference();
    let text = std::fs::read_to_string(fixtures().join("peft/tiny-llama/combined/reference.json"))
        .unwrap();
    let combined: Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (key, want) in combined["greedy"].as_object().unwrap() {
        let (name, seq) = key.rsplit_once('.').unwrap();
        let spec = &combined["combinations"][name];
        if spec["combination_type"] != "cat" {
            continue;
        }
        let model = spec["adapters"]
            .as_array()
            .unwrap()
            .iter()
            .zip(spec["weights"].as_array().unwrap())
            .map(|(a, w)| format!("{}*{}", a.as_str().unwrap(), w))
            .collect::<Vec<_>>()
            .join("+");
        let prompt = &refs["sequences"][seq.parse::<usize>().unwrap()];
        let r = post(
            &s,
            "/v1/completions",
            json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                   "logprobs": 0, "return_tokens_as_token_ids": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["model"], model);
        let got = token_ids(&v["choices"][0]["logprobs"]["tokens"]);
        let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(got, want, "{key} as {model}");
        checked += 1;
    }
    assert_eq!(checked, 6);
    for (model, named) in [
        ("qv-r4+nope", "nope"),
        ("qv-r4+qv-r4", "qv-r4+qv-r4"),
        ("qv-r4*-1+attn-patterns", "qv-r4*-1+attn-patterns"),
        ("qv-r4+../etc", "qv-r4+../etc"),
    ] {
        let r = post(
            &s,
            "/v1/completions",
            json!({"model": model, "prompt": "w5", "max_tokens": 1}),
        )
        .await;
        assert_eq!(r.status, 404, "{model}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "model_not_found");
        assert!(e["message"].as_str().unwrap().contains(named), "{e}");
    }
}

/// A seeded, sampled request gives over HTTP the tokens the in-process engine gives.
#[tokio::test]
async fn sampled_tokens_equal_the_in_process_engines() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let prompt = vec![1u32, 17, 42, 99, 3, 250, 7];
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "qv-r4", "prompt": prompt, "max_tokens": 12, "temperature": 0.9,
               "top_p": 0.95, "seed": 1234, "logprobs": 0, "return_tokens_as_token_ids": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let http = token_ids(&r.json()["choices"][0]["logprobs"]["tokens"]);
    let handle = s
        .served()
        .submit(Request {
            prompt,
            adapter: Some(AdapterId::new("qv-r4").unwrap()),
            sampling: SamplingParams {
                temperature: 0.9,
                top_p: Some(0.95),
                seed: 1234,
                max_new_tokens: 12,
                stop_tokens: vec![2],
                ..Default::default()
            },
        })
        .unwrap();
    let engine: Vec<u32> = handle
        .filter_map(|e| match e {
            Event::Token { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(http, engine);
    assert!(!http.is_empty());
}

#[tokio::test]
async fn chat_renders_the_template_and_logprobs_rank_the_greedy_token_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let messages = json!([{"role": "system", "content": "w10 w11"},
                          {"role": "user", "content": [{"type": "text", "text": "w12 w13"}]}]);
    let r = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "all-r8-rslora", "messages": messages, "max_completion_tokens": 6,
               "temperature": 0, "logprobs": true, "top_logprobs": 3}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "all-r8-rslora");
    // <|im_start|> system w10 w11 <|im_end|> <|im_start|> user w12 w13 <|im_end|> <|im_start|> assistant
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    let content = c["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len(),
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize
    );
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(
            top[0]["token"], t["token"],
            "greedy picks the most likely token"
        );
        assert_eq!(top[0]["logprob"], t["logprob"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    let words: Vec<String> = content
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(c["message"]["content"], words.join(" "));

    // The rendered prompt's token ids, as a completion, give the same answer.
    let ids = [3, 5, 10, 11, 4, 3, 6, 12, 13, 4, 3, 7];
    let r2 = post(
        &s,
        "/v1/completions",
        json!({"model": "all-r8-rslora", "prompt": ids, "max_tokens": 6, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(r2["choices"][0]["text"], c["message"]["content"]);
    // A completion's text gets the BOS token; the chat template writes none.
    let text = "<|im_start|> system w10 w11 <|im_end|> <|im_start|> user w12 w13 <|im_end|> <|im_start|> assistant";
    let r3 = post(
        &s,
        "/v1/completions",
        json!({"model": "all-r8-rslora", "prompt": text, "max_tokens": 1}),
    )
    .await
    .json();
    assert_eq!(r3["usage"]["prompt_tokens"], 13);
}

#[tokio::test]
async fn streams_carry_the_same_text_and_end_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let body = json!({"model": "qv-r4", "messages": [{"role": "user", "content": "w40 w41"}],
                      "max_tokens": 10, "temperature": 1.0, "seed": 5, "n": 2});
    let whole = post(&s, "/v1/chat/completions", body.clone()).await.json();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = post(&s, "/v1/chat/completions", streamed).await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut text = [String::new(), String::new()];
    let mut reasons = [None, None];
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["usage"], Value::Null);
        let ch = &c["choices"][0];
        let i = ch["index"].as_u64().unwrap() as usize;
        if let Some(t) = ch["delta"]["content"].as_str() {
            text[i] += t;
        }
        if let Some(r) = ch["finish_reason"].as_str() {
            reasons[i] = Some(r.to_owned());
        }
    }
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], whole["usage"]);
    for i in 0..2 {
        assert_eq!(
            text[i],
            whole["choices"][i]["message"]["content"].as_str().unwrap()
        );
        assert_eq!(
            reasons[i].as_deref(),
            whole["choices"][i]["finish_reason"].as_str()
        );
    }
    // The role comes first, once per choice.
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[1]["choices"][0]["delta"]["role"], "assistant");

    // Completions stream too.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w50 w51", "max_tokens": 5, "temperature": 0, "stream": true}),
    )
    .await;
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let whole = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w50 w51", "max_tokens": 5, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
}

#[tokio::test]
async fn seeded_choices_repeat_and_differ_and_stop_strings_cut_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let body = json!({"model": "attn-patterns", "prompt": "w60 w61 w62", "max_tokens": 12,
                      "temperature": 1.2, "seed": 99, "n": 3});
    let a = post(&s, "/v1/completions", body.clone()).await.json();
    let b = post(&s, "/v1/completions", body).await.json();
    assert_eq!(a["choices"], b["choices"]);
    let texts: Vec<&str> = a["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 3);
    assert!(
        texts[0] != texts[1] || texts[1] != texts[2],
        "three seeds, three draws: {texts:?}"
    );

    let greedy = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w70", "max_tokens": 8, "temperature": 0}),
    )
    .await
    .json();
    let full = greedy["choices"][0]["text"].as_str().unwrap().to_owned();
    let words: Vec<&str> = full.split(' ').collect();
    let stop = words[3];
    let first = full.find(stop).unwrap();
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w70", "max_tokens": 8, "temperature": 0,
               "stop": ["w9999", stop]}),
    )
    .await
    .json();
    assert_eq!(r["choices"][0]["text"], full[..first]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let one = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w70", "max_tokens": 8, "temperature": 0, "stop": stop}),
    )
    .await
    .json();
    assert_eq!(one["choices"][0]["text"], full[..first]);
}

#[tokio::test]
async fn bad_requests_get_4xx_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let chat = |extra: Value| {
        let mut b = json!({"model": "qv-r4", "messages": [{"role": "user", "content": "w9"}]});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases: Vec<(Value, u16, Option<&str>, Option<&str>)> = vec![
        (
            chat(json!({"model": "nope"})),
            404,
            Some("model_not_found"),
            Some("model"),
        ),
        (
            chat(json!({"model": "../qv-r4"})),
            404,
            Some("model_not_found"),
            Some("model"),
        ),
        (
            chat(json!({"max_tokens": 500})),
            400,
            Some("context_length_exceeded"),
            Some("max_tokens"),
        ),
        (
            chat(json!({"max_tokens": 0})),
            400,
            None,
            Some("max_tokens"),
        ),
        (
            chat(json!({"temperature": "hot"})),
            400,
            None,
            Some("temperature"),
        ),
        (
            chat(json!({"temperature": 3})),
            400,
            None,
            Some("temperature"),
        ),
        (chat(json!({"top_p": 0})), 400, None, Some("top_p")),
        (chat(json!({"n": 0})), 400, None, Some("n")),
        (chat(json!({"n": 17})), 400, None, Some("n")),
        (chat(json!({"stop": [""]})), 400, None, Some("stop")),
        (
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            None,
            Some("top_logprobs"),
        ),
        (
            chat(json!({"top_logprobs": 2})),
            400,
            None,
            Some("top_logprobs"),
        ),
        (
            chat(json!({"presence_penalty": 0.5})),
            400,
            None,
            Some("presence_penalty"),
        ),
        (
            chat(json!({"tools": [{"type": "function"}]})),
            400,
            None,
            Some("tools"),
        ),
        (chat(json!({"messages": []})), 400, None, Some("messages")),
        (
            chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
            400,
            None,
            Some("messages[0].content[0]"),
        ),
        (
            chat(json!({"messages": [{"role": "user"}], "n": "two"})),
            400,
            None,
            Some("n"),
        ),
    ];
    for (body, status, code, param) in cases {
        let r = post(&s, "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body} → {}", r.text());
        let (c, p, _) = error_of(&r);
        assert_eq!(c.as_deref(), code, "{body}");
        assert_eq!(p.as_deref(), param, "{body}");
    }
    let long: Vec<u32> = vec![9; 128];
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": long}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r).0.as_deref(), Some("context_length_exceeded"));
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": [1, 320]}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), error_of(&r).1.as_deref()),
        (400, Some("prompt"))
    );
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w5", "echo": true}),
    )
    .await;
    assert_eq!(error_of(&r).1.as_deref(), Some("echo"));
    for raw in ["{", "[]", "null", "{\"model\": 5}", "\u{0}\u{1}garbage"] {
        let r = call(&s, "POST", "/v1/chat/completions", Some(raw), None).await;
        assert_eq!(r.status, 400, "{raw:?}");
        error_of(&r);
    }
    let huge = format!(
        "{{\"model\": \"qv-r4\", \"prompt\": \"{}\"}}",
        "w9 ".repeat(30_000)
    );
    let r = call(&s, "POST", "/v1/completions", Some(&huge), None).await;
    assert_eq!(r.status, 413);
    error_of(&r);
    // The engine is still up and serving.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w5", "max_tokens": 2}),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn chat_without_a_template_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = model_and_adapters(dir.path());
    std::fs::remove_file(model.join("tokenizer_config.json")).unwrap();
    let s =
        openledger_server::Server::load(openledger_server::ServerConfig::new(model), &mut |_| {})
            .unwrap();
    let r = post(
        &s,
        "/v1/chat/completions",
        json!({"model": "tiny-llama", "messages": [{"role": "user", "content": "w9"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(error_of(&r).2.contains("no chat template"));
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "tiny-llama", "prompt": "w9", "max_tokens": 1}),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn adapters_load_and_unload_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let root = dir.path().join("adapters");
    // A new folder appears after the start: not a model until it is loaded.
    copy_dir(&root.join("qv-r4"), &root.join("team/new-one"));
    let ask =
        json!({"model": "team/new-one", "prompt": [1, 17, 42], "max_tokens": 3, "temperature": 0});
    assert_eq!(post(&s, "/v1/completions", ask.clone()).await.status, 404);
    let r = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "team/new-one", "lora_path": "team/new-one"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let same = post(&s, "/v1/completions", ask.clone()).await.json();
    let orig = post(
        &s,
        "/v1/completions",
        json!({"model": "qv-r4", "prompt": [1, 17, 42], "max_tokens": 3, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(same["choices"][0]["text"], orig["choices"][0]["text"]);
    let models = call(&s, "GET", "/v1/models", None, None).await.json();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "team/new-one")
    );
    // Loaded twice, outside the folder, missing, broken: refused, and nothing changes.
    let refused = [
        json!({"lora_name": "team/new-one", "lora_path": "team/new-one"}),
        json!({"lora_name": "x", "lora_path": "../adapters/../.."}),
        json!({"lora_name": "x", "lora_path": "/etc"}),
        json!({"lora_name": "x", "lora_path": "missing"}),
        json!({"lora_name": "../x", "lora_path": "qv-r4"}),
    ];
    for body in refused {
        let r = post(&s, "/v1/load_lora_adapter", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
    }
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/adapter_config.json"), "{not json").unwrap();
    let r = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "broken", "lora_path": "broken"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        post(
            &s,
            "/v1/completions",
            json!({"model": "broken", "prompt": "w5"})
        )
        .await
        .status,
        404
    );
    // Unloaded: gone.
    let r = post(
        &s,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "team/new-one"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(post(&s, "/v1/completions", ask).await.status, 404);
    let r = post(
        &s,
        "/v1/unload_lora_adapter",
        json!({"lora_name": "team/new-one"}),
    )
    .await;
    assert_eq!(r.status, 404);
    // The metrics saw the loads and the requests.
    let m = call(&s, "GET", "/metrics", None, None).await.text();
    assert!(
        m.contains("openledger_requests_total{model=\"team/new-one\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("openledger_adapter_load_failures_total 1"),
        "{m}"
    );
    assert!(
        m.contains("openledger_adapter_resident{adapter=\"qv-r4\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("openledger_time_to_first_token_seconds_count{model=\"qv-r4\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("openledger_generation_tokens_total{model=\"qv-r4\"} 3"),
        "{m}"
    );
    // The engine answered: nothing runs or waits now, every KV block is free, and its steps
    // ran the prompts and outputs.
    let value = |name: &str| -> f64 {
        let line = m
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing: {m}"));
        line[name.len() + 1..].parse().unwrap()
    };
    assert_eq!(value("openledger_engine_up"), 1.0);
    assert_eq!(value("openledger_num_requests_running"), 0.0);
    assert_eq!(value("openledger_num_requests_waiting"), 0.0);
    assert_eq!(value("openledger_kv_cache_usage_ratio"), 0.0);
    assert_eq!(
        value("openledger_kv_cache_blocks_free"),
        value("openledger_kv_cache_blocks")
    );
    assert!(value("openledger_kv_cache_bytes") > 0.0);
    assert!(value("openledger_engine_steps_total") > 0.0);
    assert!(value("openledger_engine_decode_tokens_total") >= 2.0);
    assert!(value("openledger_engine_prefill_tokens_total") >= 1.0);
    // A model on the CPU reports no device figures.
    assert!(!m.contains("openledger_device_"), "{m}");
}

#[tokio::test]
async fn keys_authenticate_rate_limit_and_guard_the_admin_calls() {
    let dir = tempfile::tempdir().unwrap();
    let keys =
        "sk-user-0123456789abcdef name=user rpm=3\nsk-admin-0123456789abcdef name=ops admin\n";
    let s = server(dir.path(), Some(keys));
    let body = json!({"model": "qv-r4", "prompt": "w5", "max_tokens": 1}).to_string();
    let r = call(&s, "POST", "/v1/completions", Some(&body), None).await;
    assert_eq!(
        (r.status.as_u16(), error_of(&r).0.as_deref()),
        (401, Some("invalid_api_key"))
    );
    let r = call(
        &s,
        "POST",
        "/v1/completions",
        Some(&body),
        Some("sk-wrong-0123456789abcdef"),
    )
    .await;
    assert_eq!(r.status, 401);
    let user = Some("sk-user-0123456789abcdef");
    assert_eq!(call(&s, "GET", "/v1/models", None, user).await.status, 200);
    assert_eq!(
        call(&s, "POST", "/v1/completions", Some(&body), user)
            .await
            .status,
        200
    );
    let load = json!({"lora_name": "again", "lora_path": "qv-r4"}).to_string();
    let r = call(&s, "POST", "/v1/load_lora_adapter", Some(&load), user).await;
    assert_eq!(r.status, 403);
    // Three requests a minute: the fourth waits.
    let r = call(&s, "POST", "/v1/completions", Some(&body), user).await;
    assert_eq!(r.status, 429);
    assert_eq!(error_of(&r).0.as_deref(), Some("rate_limit_exceeded"));
    assert!(r.headers.contains_key("retry-after"));
    let admin = Some("sk-admin-0123456789abcdef");
    let r = call(&s, "POST", "/v1/load_lora_adapter", Some(&load), admin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Health and metrics need no key.
    assert_eq!(call(&s, "GET", "/health", None, None).await.status, 200);
    assert_eq!(call(&s, "GET", "/metrics", None, None).await.status, 200);
}

/// `--device cuda`: served where the build, the driver and a GPU are there; anywhere else a
/// typed error naming the device and what is missing, before anything listens (a GGUF file:
/// `tests/gguf.rs`).
#[test]
fn a_cuda_device_serves_or_names_what_is_missing() {
    use openledger_server::{Device, Server, ServerConfig};
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = model_and_adapters(dir.path());
    let mut config = ServerConfig::new(model);
    config.device = Device::Cuda(0);
    config.serve.weights = openledger_lora::model::WeightFormat::Stored;
    match Server::load(config, &mut |_| {}) {
        Ok(s) => assert_eq!(s.model_name(), "tiny-llama"),
        Err(e) => assert_names_what_cuda_lacks(&e.to_string()),
    }
}
