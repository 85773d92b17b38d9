//! The server on a loopback socket: a streaming client that goes away cancels its sequences,
//! and a graceful shutdown lets a running stream finish before the server returns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start(
    root: &std::path::Path,
) -> (
    openledger_server::Server,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let s = server(root, None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(s.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    (s, addr, stop, task)
}

/// Sends a streaming chat request and reads until the first event arrived.
async fn open_stream(
    addr: std::net::SocketAddr,
    n: usize,
    max_tokens: usize,
) -> (TcpStream, String) {
    let body = json!({"model": "qv-r4", "messages": [{"role": "user", "content": "w20 w21"}],
                      "max_tokens": max_tokens, "temperature": 1.0, "seed": 3, "n": n, "stream": true})
    .to_string();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let k = conn.read(&mut buf).await.unwrap();
        assert!(k > 0, "closed before the first event");
        got.extend_from_slice(&buf[..k]);
    }
    (conn, String::from_utf8_lossy(&got).into_owned())
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (until `deadline`) for a cancelled sequence of `qv-r4` in the metrics, and checks that
/// fewer than `all` tokens were generated.
async fn assert_cancelled(s: &openledger_server::Server, deadline: Instant, all: u64) {
    let cancelled = "openledger_sequences_cancelled_total{model=\"qv-r4\"} ";
    let text = loop {
        let text = call(s, "GET", "/metrics", None, None).await.text();
        if metric(&text, cancelled) > 0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metric(&text, cancelled) > 0,
        "no sequence was cancelled:\n{text}"
    );
    let generated = metric(
        &text,
        "openledger_generation_tokens_total{model=\"qv-r4\"} ",
    );
    assert!(generated < all, "{generated} tokens: nothing was cut short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let (s, addr, stop, task) = start(dir.path()).await;
    let (n, max_tokens) = (16, 120);
    let (conn, head) = open_stream(addr, n, max_tokens).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(20);
    assert_cancelled(&s, deadline, (n * max_tokens) as u64).await;
    // The server still serves.
    let r = post(
        &s,
        "/v1/completions",
        json!({"model": "qv-r4", "prompt": "w5", "max_tokens": 2}),
    )
    .await;
    assert_eq!(r.status, 200);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_running_streams_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (_s, addr, stop, task) = start(dir.path()).await;
    let (mut conn, head) = open_stream(addr, 2, 40).await;
    let _ = stop.send(());
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    let all = head + &String::from_utf8_lossy(&rest);
    assert!(all.contains("data: [DONE]"), "the stream was cut:\n{all}");
    let finishes = all.matches("\"finish_reason\":\"").count();
    assert_eq!(finishes, 2, "{all}");
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_before_a_whole_answer_cancels_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let (s, addr, stop, task) = start(dir.path()).await;
    let body = json!({"model": "qv-r4", "messages": [{"role": "user", "content": "w20 w21"}],
                      "max_tokens": 120, "temperature": 1.0, "seed": 3, "n": 16})
    .to_string();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    // Wait until the engine has taken the request, then go away.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &call(&s, "GET", "/metrics", None, None).await.text(),
        "openledger_requests_total{model=\"qv-r4\"} ",
    ) == 0
    {
        assert!(Instant::now() < deadline, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(conn);
    assert_cancelled(&s, deadline, 16 * 120).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
