//! `llmd serve` as a user runs it: two on one host start side by side, each publishing
//! KV events where its HTTP API listens (loopback by default) on a port of its own, and
//! a picker told only their HTTP addresses finds the event streams in their metrics.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::{Duration, Instant};

use llmd::scheduler::picker::{EndpointPicker, PickerConfig};
use llmd::scheduler::{Endpoint, PluginRegistry, Role, Scheduler, SystemClock, datastore, presets};
use serde_json::json;

use crate::common;

struct Serve {
    proc: common::Llmd,
    http: String,
    events: String,
}

/// Starts `llmd serve --sim` with default flags but for a free HTTP port, and reads
/// the addresses it prints.
fn serve() -> Serve {
    serve_with(&[])
}

fn serve_with(extra: &[&str]) -> Serve {
    let mut args: Vec<String> = ["serve", "--sim", "--port", "0"].map(String::from).to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let (proc, line) = common::start_llmd(&args, "llmd serve:").expect("llmd serve did not start");
    let http = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    let events = line.rsplit("KV events on ").next().unwrap().trim().to_string();
    Serve { proc, http, events }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serves_on_one_host_start_and_publish_events_on_loopback() {
    let (a, b) = (serve(), serve());
    for s in [&a, &b] {
        assert!(s.http.starts_with("127.0.0.1:"), "{}", s.http);
        assert!(s.events.starts_with("tcp://127.0.0.1:"), "events follow --host: {}", s.events);
    }
    assert_ne!(a.events, b.events);
    let client = reqwest::Client::new();
    let metrics = client.get(format!("http://{}/metrics", a.http)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("llmd:kv_events_info{{endpoint=\"{}\"", a.events)), "{metrics}");

    // A picker given only the HTTP addresses learns where the events are and indexes them.
    let store = datastore(Arc::new(SystemClock::default()));
    store.upsert(Endpoint::new("a", a.http.clone(), Role::Both));
    store.upsert(Endpoint::new("b", b.http.clone(), Role::Both));
    let sched = Scheduler::new(presets::preset("precise-prefix", &PluginRegistry::with_builtins()).unwrap(), 0);
    let picker = EndpointPicker::new(sched, store, PickerConfig::default(), None);
    picker.start();
    // A fresh prompt each round: events published before the subscription joined are
    // lost (ZMQ's slow joiner), and a repeated prompt is a cache hit that stores nothing.
    let mut sent: Vec<Vec<u32>> = Vec::new();
    let started = Instant::now();
    'learn: for round in 0u32.. {
        let prompt: Vec<u32> = (1..=64).map(|t| t + 64 * round).collect();
        let body = json!({"prompt": prompt, "max_tokens": 1}).to_string();
        let r = client
            .post(format!("http://{}/v1/completions", a.http))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        sent.push(prompt);
        let learned = picker.datastore().get("a").unwrap().kv_events;
        for p in &sent {
            let pick = picker.pick("/v1/completions", &Default::default(), &json!({"prompt": p}), &Default::default());
            let dest = pick.unwrap().result.destination().unwrap().clone();
            let precise = dest.breakdown.iter().find(|s| s.scorer == "precise-prefix-cache-scorer").unwrap().raw;
            if learned.as_deref() == Some(a.events.as_str()) && dest.endpoint == "a" && precise > 0.9 {
                break 'learn;
            }
        }
        // The scrape interval and ZMQ's subscription handshake: bounded polling.
        assert!(started.elapsed() < Duration::from_secs(30), "never learned a's KV events (learned: {learned:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    picker.shutdown();
}

async fn stream(s: &Serve, max_tokens: usize) -> reqwest::Response {
    let body = json!({"prompt": "Drain me.", "max_tokens": max_tokens, "stream": true, "ignore_eos": true});
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/completions", s.http))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_in_flight_finish_then_exits_cleanly() {
    use futures_util::StreamExt;
    let mut s = serve();
    // ~150 simulated decode steps of 8 ms: still streaming when the signal lands.
    let mut body = stream(&s, 150).await.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    common::signal(&s.proc.child, "TERM");
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = body.next().await {
        text += &String::from_utf8_lossy(&chunk.unwrap());
    }
    assert!(
        text.trim_end().ends_with("data: [DONE]"),
        "the stream finished: {}",
        &text[text.len().saturating_sub(200)..]
    );
    let status = common::wait_exit(&mut s.proc.child, Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    // New connections are refused once draining is over.
    assert!(reqwest::Client::new().get(format!("http://{}/health", s.http)).send().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_deadline_bounds_the_drain() {
    use futures_util::StreamExt;
    // A second signal: out at once, whatever is in flight.
    let mut s = serve_with(&["--shutdown-timeout", "600"]);
    let mut body = stream(&s, 5000).await.bytes_stream();
    body.next().await.unwrap().unwrap();
    common::signal(&s.proc.child, "TERM");
    std::thread::sleep(Duration::from_millis(200));
    common::signal(&s.proc.child, "INT");
    let status = common::wait_exit(&mut s.proc.child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(llmd::shutdown::FORCED_EXIT));
    // The drain deadline: a stream that would run ~40 s is cut after 1 s.
    let mut s = serve_with(&["--shutdown-timeout", "1"]);
    let mut body = stream(&s, 5000).await.bytes_stream();
    body.next().await.unwrap().unwrap();
    let signalled = Instant::now();
    common::signal(&s.proc.child, "TERM");
    let status = common::wait_exit(&mut s.proc.child, Duration::from_secs(10));
    assert!(!status.success(), "cut requests are reported: {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(8));
}

/// `--device cuda:99`: without an NVIDIA driver, "no CUDA driver found"; with one, "no
/// CUDA device 99". Either way a clear error and a non-zero exit, not a crash; likewise
/// an unknown device and an AMD GPU from a build without ROCm.
#[test]
fn asking_for_a_gpu_that_is_not_there_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["serve", "--device", "cuda:99", "--port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    if llmd_engine::cuda::driver_available() {
        assert!(err.contains("no CUDA device 99"), "{err}");
    } else {
        assert!(err.contains("no CUDA driver found") && err.contains("--device cpu"), "{err}");
    }
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_llmd")).args(["serve", "--device", "tpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected cpu, cuda, cuda:N, rocm or rocm:N"));
    // The test binary is built without `rocm` (it links ROCm's runtime): asking for an
    // AMD GPU says how to get one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["serve", "--device", "rocm", "--port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("built without ROCm support") && err.contains("--features rocm"), "{err}");
}
