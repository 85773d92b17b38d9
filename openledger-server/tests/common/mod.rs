//! The test model (PEFT's tiny llama with a word-level tokenizer and a ChatML template) and
//! calls to a server's router without a socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use openledger_server::{Server, ServerConfig};
use serde_json::Value;
use tower::ServiceExt;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A model folder `tiny-llama` and an adapters folder (the three PEFT adapters) in `root`.
pub fn model_and_adapters(root: &Path) -> (PathBuf, PathBuf) {
    let model = root.join("tiny-llama");
    std::fs::create_dir_all(&model).unwrap();
    let peft = fixtures().join("peft/tiny-llama");
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(peft.join(f), model.join(f)).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("server").join(f), model.join(f)).unwrap();
    }
    let adapters = root.join("adapters");
    copy_dir(&peft.join("adapters"), &adapters);
    (model, adapters)
}

/// A server of the test model, its adapters and, optionally, a key file's text.
pub fn server(root: &Path, keys: Option<&str>) -> Server {
    server_with_weights(root, keys, openledger_server::WeightFormat::F32)
}

/// [`server`] with the base weights held as `weights` asks.
pub fn server_with_weights(
    root: &Path,
    keys: Option<&str>,
    weights: openledger_server::WeightFormat,
) -> Server {
    let (model, adapters) = model_and_adapters(root);
    let mut config = ServerConfig::new(model).with_adapters(adapters);
    config.serve.weights = weights;
    config.serve.max_context = 128;
    config.max_body_bytes = 64 << 10;
    if let Some(text) = keys {
        let path = root.join("keys.txt");
        std::fs::write(&path, text).unwrap();
        config.api_keys = Some(path);
    }
    Server::load(config, &mut |_| {}).unwrap()
}

/// A call's status, headers and body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The data lines of a server-sent-event body.
    pub fn events(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_owned))
            .collect()
    }
}

pub async fn call(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let resp = server.router().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post(server: &Server, path: &str, body: Value) -> Reply {
    call(server, "POST", path, Some(&body.to_string()), None).await
}

/// The `(code, param)` of an OpenAI-shaped error body.
pub fn error_of(r: &Reply) -> (Option<String>, Option<String>, String) {
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].is_string(), "no error message in {v}");
    assert!(e["type"].is_string(), "no error type in {v}");
    (
        e["code"].as_str().map(str::to_owned),
        e["param"].as_str().map(str::to_owned),
        e["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Token ids of `token_id:N` strings.
pub fn token_ids(tokens: &Value) -> Vec<u32> {
    tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t.as_str()
                .and_then(|s| s.strip_prefix("token_id:"))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a token_id: {t}"))
        })
        .collect()
}

/// Asserts that `text` is `Server::load`'s error for CUDA device 0 on a machine or build without
/// one: the device named, then what is missing (the feature, a library, the device).
pub fn assert_names_what_cuda_lacks(text: &str) {
    assert!(text.starts_with("device cuda:0: "), "{text}");
    assert!(
        ["`cuda` feature", "cannot be loaded", "cannot be opened"]
            .iter()
            .any(|m| text.contains(m)),
        "{text}"
    );
}
