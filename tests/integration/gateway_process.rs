//! `llmd epp` and `llmd up` as processes facing faults: an endpoint that accepts and
//! never answers, and SIGTERM with streams in flight. Bounded real time: a process
//! must be signalled, and its timeouts are real.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common;

/// The `host:port` after `http://` in a start-up line.
fn http_addr(line: &str) -> String {
    line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string()
}

/// A peer that accepts connections and never says anything.
fn silent_peer() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept() {
            held.push(sock);
        }
    });
    addr
}

async fn post(base: &str, body: serde_json::Value) -> reqwest::Response {
    let send = reqwest::Client::new()
        .post(format!("http://{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send();
    tokio::time::timeout(Duration::from_secs(60), send).await.expect("no answer in 60 s").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epp_routes_around_an_endpoint_that_never_answers() {
    let (_engine, line) =
        common::start_llmd(&["serve".into(), "--sim".into(), "--port".into(), "0".into()], "llmd serve:").unwrap();
    let healthy = http_addr(&line);
    let silent = silent_peer();
    // A port for the gateway: free now, and retried if another test takes it first.
    let (_epp, gateway) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let args: Vec<String> = [
                "epp",
                "--routing",
                "round-robin",
                "--endpoint",
                &format!("silent={silent}"),
                "--endpoint",
                &format!("healthy={healthy}"),
                "--grpc-port",
                "0",
                "--grpc-health-port",
                "0",
                // The gateway serves /metrics too; the default metrics port is a fixed one.
                "--metrics-port",
                "0",
                "--http-port",
                &port.to_string(),
                "--first-byte-timeout",
                "0.5",
                // Only the failing requests themselves find the silent endpoint out.
                "--health-check-interval",
                "0",
            ]
            .map(String::from)
            .to_vec();
            common::start_llmd(&args, "llmd epp: HTTP gateway").map(|(p, l)| (p, http_addr(&l)))
        })
        .expect("llmd epp did not start");
    // Round robin sends one of the first two requests to the silent endpoint.
    let first_byte = Duration::from_millis(500);
    let probe = Duration::from_secs(2); // the health check's own timeout
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let t = Instant::now();
        let r = post(&gateway, json!({"prompt": "hello", "max_tokens": 4, "stream": stream})).await;
        assert_eq!(r.status(), 200, "request {i}");
        let body = r.text().await.unwrap();
        let took = t.elapsed();
        assert!(!body.contains("\"error\""), "request {i}: {body}");
        // At most one first-byte timeout (and, for a non-stream request, the health
        // probe that tells a dead endpoint from a busy one) plus the retry.
        let budget = first_byte + if stream { Duration::ZERO } else { probe } + Duration::from_secs(2);
        assert!(took < budget, "request {i} (stream {stream}) took {took:?}");
    }
    let metrics = reqwest::get(format!("http://{gateway}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"llmd_epp_endpoint_failures_total{reason="timeout"}"#), "{metrics}");
    assert!(metrics.contains("llmd_epp_retries_total"), "{metrics}");
}

/// `llmd up --sim` on a free port, with `extra` flags.
fn up(extra: &[&str]) -> (common::Llmd, String) {
    let mut args: Vec<String> = ["up", "--sim", "--replicas", "2", "--port", "0"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (p, line) = common::start_llmd(&args, "llmd up:").expect("llmd up did not start");
    (p, http_addr(&line))
}

/// Starts a stream of `max_tokens` and reads its first chunk.
async fn open_stream(base: &str, max_tokens: usize) -> reqwest::Response {
    let body = json!({"prompt": "Drain me.", "max_tokens": max_tokens, "stream": true, "ignore_eos": true});
    let mut r = post(base, body).await;
    assert_eq!(r.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(30), r.chunk()).await.unwrap().unwrap();
    assert!(first.is_some());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_up_lets_streams_finish_and_exits_zero() {
    let (mut p, base) = up(&[]);
    // Simulated decode steps of several ms each: still streaming when the signal lands.
    let streams = [open_stream(&base, 150).await, open_stream(&base, 150).await];
    let signalled = Instant::now();
    common::signal(&p.child, "TERM");
    for r in streams {
        let rest = tokio::time::timeout(Duration::from_secs(30), r.text()).await.unwrap().unwrap();
        assert!(rest.trim_end().ends_with("data: [DONE]"), "stream cut: {rest}");
        assert!(!rest.contains("\"error\""), "{rest}");
    }
    let status = common::wait_exit(&mut p.child, Duration::from_secs(25));
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_cuts_streams_at_the_drain_deadline_with_an_error_event() {
    let (mut p, base) = up(&["--shutdown-timeout", "1"]);
    // Far longer than the 1 s deadline.
    let r = open_stream(&base, 5000).await;
    common::signal(&p.child, "TERM");
    let rest = tokio::time::timeout(Duration::from_secs(30), r.text()).await.unwrap().unwrap();
    let datas: Vec<&str> = rest.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{rest}");
    let v: serde_json::Value = serde_json::from_str(datas[datas.len() - 2]).unwrap();
    assert_eq!(v["error"]["type"], "ServiceUnavailableError", "{v}");
    let status = common::wait_exit(&mut p.child, Duration::from_secs(10));
    assert_ne!(status.code(), Some(0), "a cut drain is not a clean exit: {status}");
}
