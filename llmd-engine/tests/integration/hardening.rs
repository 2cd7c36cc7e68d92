//! The engine server under conditions a deployment meets: bodies that are not JSON by
//! content type, lone UTF-16 surrogates from Python clients, clients that leave
//! mid-stream (counted as aborts, with vLLM's label), and a drain whose deadline cuts
//! open streams. A simulated model on the system clock (20 ms steps) keeps streams
//! running until the test ends them; every wait is bounded.

use std::time::{Duration, Instant};

use llmd_engine::server::{Phase, ServeConfig, Server, ServerConfig};
use llmd_engine::{EngineBuilder, LatencyModel};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::common::metric;

const BOUND: Duration = Duration::from_secs(20);

fn sim_server_engine() -> llmd_engine::BuiltEngine {
    let latency = LatencyModel {
        step_overhead: Duration::from_millis(20),
        per_prefill_token: Duration::ZERO,
        per_decode_seq: Duration::ZERO,
        per_context_token: Duration::ZERO,
        per_transfer_token: Duration::ZERO,
        per_onboard_token: Duration::ZERO,
        per_disk_token: Duration::ZERO,
    };
    EngineBuilder::sim(latency).seed(1).num_blocks(512).max_model_len(8192).build().unwrap()
}

struct Running {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The same router on a listener that outlives the drain, to ask `/health` while
    /// the main one no longer accepts.
    probe: String,
    metrics: std::sync::Arc<llmd_engine::EngineMetrics>,
    lifecycle: llmd_engine::server::Lifecycle,
}

async fn start(cfg: ServeConfig) -> Running {
    let built = sim_server_engine();
    let server = Server::start(built.engine, built.template, ServerConfig::default()).await.unwrap();
    let metrics = server.handle().metrics();
    let lifecycle = server.lifecycle().clone();
    let probe_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probe = probe_listener.local_addr().unwrap().to_string();
    tokio::spawn(llmd_openai::http::serve(probe_listener, server.router(), std::future::pending()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let served = tokio::spawn(server.serve_with(
        listener,
        async move {
            let _ = rx.await;
        },
        cfg,
    ));
    Running { addr, stop: Some(tx), served, probe, metrics, lifecycle }
}

/// One request on its own connection; the whole response.
async fn http(addr: &str, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ct = content_type.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(BOUND, s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

const ABORTS: &str = "vllm:request_success_total{model_name=\"llmd-sim\",engine=\"0\",finished_reason=\"abort\"}";

/// Starts a stream that would run for minutes and reads up to its first event.
async fn open_stream(addr: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({"prompt": "hi", "max_tokens": 5000, "stream": true, "ignore_eos": true}).to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the first event: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    (s, seen)
}

#[tokio::test]
async fn bodies_not_sent_as_json_get_vllms_400_in_openai_json() {
    let srv = start(ServeConfig::default()).await;
    let body = json!({"prompt": "hi", "max_tokens": 2}).to_string();
    for (path, ct) in [
        ("/v1/completions", Some("text/plain")),
        ("/v1/chat/completions", Some("text/plain; charset=utf-8")),
        ("/v1/completions", Some("application/x-www-form-urlencoded")),
        ("/v1/completions", None),
    ] {
        let (status, text) = http(&srv.addr, "POST", path, ct, body.as_bytes()).await;
        assert_eq!(status, 400, "{path} {ct:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "BadRequestError", "{text}");
        assert_eq!(v["error"]["code"], 400);
        assert!(v["error"]["message"].as_str().unwrap().contains("Only 'application/json' is allowed"), "{text}");
    }
    // Control: JSON with parameters and any case is accepted.
    let (status, text) =
        http(&srv.addr, "POST", "/v1/completions", Some("Application/JSON; charset=utf-8"), body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_lone_surrogate_from_python_reads_as_the_replacement_character() {
    let srv = start(ServeConfig::default()).await;
    // What Python's json.dumps writes for a string cut inside an emoji.
    let body = br#"{"messages": [{"role": "user", "content": "half an emoji: \ud83d"}], "max_tokens": 2}"#;
    assert!(serde_json::from_slice::<Value>(body).is_err(), "the control body must be one serde_json refuses");
    let (status, text) = http(&srv.addr, "POST", "/v1/chat/completions", Some("application/json"), body).await;
    assert_eq!(status, 200, "{text}");
    let body = br#"{"prompt": "x\udc00y", "max_tokens": 2}"#;
    let (status, text) = http(&srv.addr, "POST", "/v1/completions", Some("application/json"), body).await;
    assert_eq!(status, 200, "{text}");
    // Escaped backslashes are text, not escapes; invalid JSON is still refused.
    let (status, _) =
        http(&srv.addr, "POST", "/v1/completions", Some("application/json"), br#"{"prompt": "\\ud800""#).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_counted_as_an_abort() {
    let srv = start(ServeConfig::default()).await;
    let (_, before) = http(&srv.addr, "GET", "/metrics", None, b"").await;
    assert_eq!(metric(&before, ABORTS), Some(0.0), "{before}");
    let (s, _) = open_stream(&srv.addr).await;
    drop(s);
    // The abort reaches the engine thread at its next step: poll, bounded.
    let t = Instant::now();
    loop {
        let (_, text) = http(&srv.addr, "GET", "/metrics", None, b"").await;
        if metric(&text, ABORTS) == Some(1.0) {
            // Aborts are not finished requests for the latency histograms.
            let e2e = "vllm:e2e_request_latency_seconds_count{model_name=\"llmd-sim\",engine=\"0\"}";
            assert_eq!(metric(&text, e2e), Some(0.0), "{text}");
            break;
        }
        assert!(t.elapsed() < BOUND, "no abort counted after the client left:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_drain_reports_not_ready_and_ends_cut_streams_with_an_error_event() {
    let drain = Duration::from_millis(500);
    let mut srv = start(ServeConfig { drain_timeout: Some(drain), ..Default::default() }).await;
    assert_eq!(http(&srv.probe, "GET", "/health", None, b"").await.0, 200);
    let (mut s, mut seen) = open_stream(&srv.addr).await;
    let t = Instant::now();
    srv.stop.take().unwrap().send(()).unwrap();

    // Draining: not ready, while the stream still runs.
    let ready = Instant::now();
    loop {
        let (status, text) = http(&srv.probe, "GET", "/health", None, b"").await;
        if status == 503 {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["type"], "ServiceUnavailableError");
            break;
        }
        assert!(ready.elapsed() < BOUND, "/health still ready during the drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, s.read(&mut buf)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    assert!(t.elapsed() >= drain - Duration::from_millis(50), "cut before the deadline");
    let text = String::from_utf8_lossy(&seen);
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let n = events.len();
    assert!(n >= 3, "{text}");
    assert_eq!(events[n - 1], "[DONE]", "{text}");
    let last: Value = serde_json::from_str(events[n - 2]).unwrap();
    assert_eq!(last["error"]["type"], "ServiceUnavailableError", "{text}");
    assert!(last["error"]["message"].as_str().unwrap().contains("drain deadline"), "{text}");
    // Tokens streamed before the cut.
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");

    let err = tokio::time::timeout(BOUND, srv.served).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    // The cut request counts as aborted.
    let aborts = srv
        .metrics
        .request_success
        .get_or_create(&llmd_engine::metrics::FinishLabel { finished_reason: "abort".into() });
    assert_eq!(aborts.get(), 1);
    assert_eq!(srv.lifecycle.phase(), Phase::Cut);
}
