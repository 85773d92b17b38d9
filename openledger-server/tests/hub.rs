//! Adapters from a hub: a local HTTP server serves a folder in the hub's file layout
//! (`{repo}/resolve/{revision}/{file}`, with `ETag` / `X-Linked-Etag` SHA-256 and sizes, as
//! large files are served), and the server fetches adapters from it through the pool, caches
//! them, uses the cache again, refetches a corrupted cached file, and refuses bad hashes,
//! missing files and hostile names.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Path as AxPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use common::*;
use openledger_server::{HubConfig, Server, ServerConfig};
use serde_json::json;
use sha2::{Digest, Sha256};

struct Hub {
    root: PathBuf,
    hits: AtomicUsize,
}

/// `GET /{org}/{name}/resolve/{rev}/{file}` from `root/{org}/{name}/{rev}/{file}`. The repo
/// `team/bad-hash` names a wrong SHA-256; `team/short` announces more bytes than it sends
/// (in `X-Linked-Size`).
async fn serve_file(
    State(hub): State<Arc<Hub>>,
    AxPath((org, name, rev, file)): AxPath<(String, String, String, String)>,
) -> axum::response::Response {
    hub.hits.fetch_add(1, Ordering::SeqCst);
    let path = hub.root.join(&org).join(&name).join(&rev).join(&file);
    let Ok(bytes) = std::fs::read(&path) else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let mut h = HeaderMap::new();
    let mut sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if name == "bad-hash" {
        sha = "0".repeat(64);
    }
    h.insert(
        "x-linked-etag",
        HeaderValue::from_str(&format!("\"{sha}\"")).unwrap(),
    );
    let size = bytes.len() + usize::from(name == "short");
    h.insert("x-linked-size", HeaderValue::from(size));
    (h, bytes).into_response()
}

async fn start_hub(root: &Path) -> (String, Arc<Hub>) {
    let hub = Arc::new(Hub {
        root: root.to_path_buf(),
        hits: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .route(
            "/{org}/{name}/resolve/{rev}/{file}",
            axum::routing::get(serve_file),
        )
        .with_state(Arc::clone(&hub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), hub)
}

fn publish(hub_root: &Path, repo: &str, rev: &str, from: &Path) {
    copy_dir(from, &hub_root.join(repo).join(rev));
}

fn hub_server(root: &Path, endpoint: &str, cache: &Path) -> Server {
    let (model, _) = model_and_adapters(root);
    let mut config = ServerConfig::new(model);
    config.serve.max_context = 128;
    config.hub = Some(HubConfig {
        endpoint: endpoint.to_owned(),
        cache: cache.to_path_buf(),
        adapters: vec![("remote-qv".into(), "team/qv-r4@v1".into())],
    });
    Server::load(config, &mut |_| {}).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_come_from_the_hub_once_and_then_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let hub_root = dir.path().join("hub");
    let peft = fixtures().join("peft/tiny-llama/adapters");
    publish(&hub_root, "team/qv-r4", "v1", &peft.join("qv-r4"));
    publish(&hub_root, "team/bad-hash", "main", &peft.join("qv-r4"));
    publish(&hub_root, "team/short", "main", &peft.join("qv-r4"));
    publish(
        &hub_root,
        "team/all-r8",
        "main",
        &peft.join("all-r8-rslora"),
    );
    let (endpoint, hub) = start_hub(&hub_root).await;
    let cache = dir.path().join("cache");

    let s = hub_server(&dir.path().join("a"), &endpoint, &cache);
    assert_eq!(
        hub.hits.load(Ordering::SeqCst),
        0,
        "registered, not fetched yet"
    );
    let ask = |model: &str| {
        json!({"model": model, "prompt": [1, 17, 42, 99, 3, 250, 7], "max_tokens": 8, "temperature": 0,
               "logprobs": 0, "return_tokens_as_token_ids": true})
    };
    let r = post(&s, "/v1/completions", ask("remote-qv")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same tokens as PEFT computed for the adapter.
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/tiny-llama/reference.json")).unwrap(),
    )
    .unwrap();
    let want: Vec<u32> = serde_json::from_value(refs["greedy"]["qv-r4.0"].clone()).unwrap();
    assert_eq!(
        token_ids(&r.json()["choices"][0]["logprobs"]["tokens"]),
        want
    );
    assert_eq!(hub.hits.load(Ordering::SeqCst), 2);

    // Loaded at run time from the hub under another name.
    let r = post(
        &s,
        "/v1/load_lora_adapter",
        json!({"lora_name": "rslora", "lora_path": "hub:team/all-r8"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(post(&s, "/v1/completions", ask("rslora")).await.status, 200);
    assert_eq!(hub.hits.load(Ordering::SeqCst), 4);
    // Refused: a wrong hash, a short body, a missing repo, hostile names; nothing registered.
    for (path, needle) in [
        ("hub:team/bad-hash", "SHA-256"),
        ("hub:team/short", "bytes received"),
        ("hub:team/missing", "HTTP 404"),
        ("hub:../etc", "invalid repository id"),
        ("hub:team/qv-r4@../../x", "invalid revision"),
    ] {
        let r = post(
            &s,
            "/v1/load_lora_adapter",
            json!({"lora_name": "x", "lora_path": path}),
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(error_of(&r).2.contains(needle), "{path}: {}", r.text());
        assert_eq!(post(&s, "/v1/completions", ask("x")).await.status, 404);
    }
    assert!(
        !cache
            .join("team--bad-hash/main/adapter_model.safetensors")
            .exists()
    );

    // A second server on the same cache fetches nothing.
    let hits = hub.hits.load(Ordering::SeqCst);
    let s2 = hub_server(&dir.path().join("b"), &endpoint, &cache);
    assert_eq!(
        post(&s2, "/v1/completions", ask("remote-qv")).await.status,
        200
    );
    assert_eq!(hub.hits.load(Ordering::SeqCst), hits);
    // A cached file whose bytes changed is fetched again.
    let cached = cache.join("team--qv-r4/v1/adapter_model.safetensors");
    let mut bytes = std::fs::read(&cached).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&cached, bytes).unwrap();
    let s3 = hub_server(&dir.path().join("c"), &endpoint, &cache);
    let r = post(&s3, "/v1/completions", ask("remote-qv")).await;
    assert_eq!(
        token_ids(&r.json()["choices"][0]["logprobs"]["tokens"]),
        want
    );
    assert_eq!(hub.hits.load(Ordering::SeqCst), hits + 1);
}
