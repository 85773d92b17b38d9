//! `openledger serve` under load on loopback, against the in-process engine it wraps.
//!
//! A random llama-shaped model (hidden 1024, MLP 2816, 2 layers, 16 heads / 4 key-value heads,
//! vocabulary 8192) is written as an HF folder with a tokenizer, and 32 distinct rank-16 adapters
//! (bf16, all seven projections) as a hub folder. The server runs in this process on a free
//! loopback port (engine: 32 sequences at once). 256 concurrent clients, each over its own
//! connection, stream `/v1/completions` requests (16 random prompt tokens, 16 greedy output
//! tokens, `include_usage`), two each, cycling through the 32 adapters: 512 requests in all.
//! Every request must end with `[DONE]` and a usage of 16 tokens (errors and dropped tokens are
//! counted, and must be 0). The same 512 requests are then submitted to the same engine in
//! process, all at once, and its tokens/s measured; the server's tokens/s against it is the
//! overhead figure (target: ≤ 5 % overhead, i.e. ≥ 0.95×). The in-process run is done before
//! and after the HTTP run; the baseline is their mean.
//!
//! Figures: request latency p50 / p99, time to first token p50 / p99 (at the client), server
//! and in-process generated tokens/s. Writes `server.json` under `target/bench-results/` (or
//! `$OPENLEDGER_BENCH_OUT`).
//!
//! `cargo bench -p openledger-benches --bench server`

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use openledger_benches::Report;
use openledger_core::DType;
use openledger_lora::model::{RandomLlama, ServeOptions};
use openledger_lora::pool::AdapterId;
use openledger_lora::serve::{Event, Request, SamplingParams};
use openledger_server::{Server, ServerConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADAPTERS: usize = 32;
const CLIENTS: usize = 256;
const PER_CLIENT: usize = 2;
const PROMPT: usize = 16;
const NEW_TOKENS: usize = 16;
const LAYERS: usize = 2;

const SHAPE: RandomLlama = RandomLlama {
    vocab: 8192,
    hidden: 1024,
    intermediate: 2816,
    layers: LAYERS,
    heads: 16,
    kv_heads: 4,
};

/// One request: its prompt and adapter.
fn workload() -> Vec<(Vec<u32>, usize)> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..CLIENTS * PER_CLIENT)
        .map(|i| {
            let prompt = (0..PROMPT)
                .map(|_| rng.random_range(3..SHAPE.vocab as u32))
                .collect();
            (prompt, i % ADAPTERS)
        })
        .collect()
}

fn adapter_name(k: usize) -> String {
    format!("a{k:02}")
}

/// The in-process engine's generated tokens/s over the whole workload, submitted at once.
fn in_process(server: &Server, work: &[(Vec<u32>, usize)]) -> f64 {
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    for (prompt, a) in work {
        let tx = tx.clone();
        server
            .served()
            .submit_with_callback(
                Request {
                    prompt: prompt.clone(),
                    adapter: Some(AdapterId::new(&adapter_name(*a)).expect("id")),
                    sampling: SamplingParams {
                        max_new_tokens: NEW_TOKENS,
                        ..Default::default()
                    },
                },
                move |e: &Event| {
                    if let Event::Finished { stats, .. } = e {
                        let _ = tx.send(stats.tokens_generated);
                    } else if let Event::Failed { error, .. } = e {
                        panic!("in-process request failed: {error}");
                    }
                },
            )
            .expect("submit");
    }
    drop(tx);
    let tokens: usize = rx.iter().take(work.len()).sum();
    assert_eq!(tokens, work.len() * NEW_TOKENS);
    tokens as f64 / t.elapsed().as_secs_f64()
}

/// What one streamed request saw.
struct Seen {
    latency: Duration,
    ttft: Option<Duration>,
    tokens: usize,
    ok: bool,
}

async fn one_request(addr: std::net::SocketAddr, prompt: &[u32], adapter: usize) -> Seen {
    let body = format!(
        "{{\"model\":\"{}\",\"prompt\":{:?},\"max_tokens\":{NEW_TOKENS},\"temperature\":0,\
         \"stream\":true,\"stream_options\":{{\"include_usage\":true}}}}",
        adapter_name(adapter),
        prompt
    );
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let t = Instant::now();
    let mut seen = Seen {
        latency: Duration::ZERO,
        ttft: None,
        tokens: 0,
        ok: false,
    };
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return seen;
    };
    if conn.write_all(req.as_bytes()).await.is_err() {
        return seen;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if seen.ttft.is_none() && got.windows(7).any(|w| w == b"data: {") {
                    seen.ttft = Some(t.elapsed());
                }
            }
        }
    }
    seen.latency = t.elapsed();
    let text = String::from_utf8_lossy(&got);
    seen.ok = text.starts_with("HTTP/1.1 200") && text.contains("data: [DONE]");
    // The usage chunk's completion tokens.
    if let Some(i) = text.find("\"completion_tokens\":") {
        let rest = &text[i + 20..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        seen.tokens = rest[..end].parse().unwrap_or(0);
    }
    seen
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1].as_secs_f64() * 1e3
}

fn main() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let model = dir.path().join("model");
    SHAPE.write_dir(&model, 7, true).expect("model folder");
    let hub = dir.path().join("adapters");
    for k in 0..ADAPTERS {
        openledger_benches::synthetic::adapter_builder(16, 500 + k as u64, LAYERS, DType::BF16)
            .write_dir(&hub.join(adapter_name(k)))
            .expect("adapter");
    }
    let mut config = ServerConfig::new(model).with_adapters(hub);
    config.serve = ServeOptions {
        max_running: 32,
        max_tokens_per_step: 512,
        max_context: PROMPT + NEW_TOKENS,
        ..ServeOptions::default()
    };
    config.max_choices = 1;
    let server = Server::load(config, &mut |_| {}).expect("server");
    let work = Arc::new(workload());
    let mut report = Report::new("server");

    // Warm-up: every adapter loaded into the pool once.
    let warm: Vec<_> = (0..ADAPTERS).map(|k| (work[k].0.clone(), k)).collect();
    in_process(&server, &warm);
    let before = in_process(&server, &work);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (seen, wall) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        // Never shut down gracefully: that would close the engine, which the in-process run
        // after this one still needs; dropping the runtime stops the server.
        tokio::spawn(server.clone().serve(listener, std::future::pending::<()>()));
        let t = Instant::now();
        let mut clients = Vec::with_capacity(CLIENTS);
        for c in 0..CLIENTS {
            let work = Arc::clone(&work);
            clients.push(tokio::spawn(async move {
                let mut out = Vec::with_capacity(PER_CLIENT);
                for r in 0..PER_CLIENT {
                    let (prompt, adapter) = &work[r * CLIENTS + c];
                    out.push(one_request(addr, prompt, *adapter).await);
                }
                out
            }));
        }
        let mut seen = Vec::with_capacity(CLIENTS * PER_CLIENT);
        for c in clients {
            seen.extend(c.await.expect("client"));
        }
        (seen, t.elapsed().as_secs_f64())
    });
    drop(rt);
    let after = in_process(&server, &work);

    let errors = seen.iter().filter(|s| !s.ok).count();
    let tokens: usize = seen.iter().map(|s| s.tokens).sum();
    let dropped = seen.len() * NEW_TOKENS - tokens.min(seen.len() * NEW_TOKENS);
    let server_tps = tokens as f64 / wall;
    let baseline = (before + after) / 2.0;
    let mut lat: Vec<Duration> = seen.iter().map(|s| s.latency).collect();
    let mut ttft: Vec<Duration> = seen.iter().filter_map(|s| s.ttft).collect();
    report.figure("requests", seen.len() as f64);
    report.figure("errors", errors as f64);
    report.figure("dropped_tokens", dropped as f64);
    report.figure("latency_p50_ms", quantile(&mut lat, 0.5));
    report.figure("latency_p99_ms", quantile(&mut lat, 0.99));
    report.figure("ttft_p50_ms", quantile(&mut ttft, 0.5));
    report.figure("ttft_p99_ms", quantile(&mut ttft, 0.99));
    report.figure("in_process_tokens_per_s_before", before);
    report.figure("in_process_tokens_per_s_after", after);
    report.figure("server_tokens_per_s", server_tps);
    report.ratio("server_vs_in_process", server_tps, baseline, ">= 0.95");
    let path = report.save().expect("save");
    println!("wrote {}", path.display());
    assert_eq!(errors, 0, "requests failed");
    assert_eq!(dropped, 0, "tokens were dropped");
}
