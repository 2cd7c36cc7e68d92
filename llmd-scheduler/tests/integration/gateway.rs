//! The HTTP gateway's header hygiene, against an endpoint that echoes what it receives.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use llmd_scheduler::gateway::{Gateway, GatewayConfig};
use llmd_scheduler::picker::{EndpointPicker, PickerConfig};
use llmd_scheduler::{Endpoint, ManualClock, PluginRegistry, Role, Scheduler, datastore, presets};

/// An "engine" that answers with the request headers it got, and some hop-by-hop ones.
async fn echo() -> String {
    let app = axum::Router::new()
        .route(
            "/v1/completions",
            axum::routing::post(|headers: HeaderMap| async move {
                let names: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
                ([("keep-alive", "timeout=5"), ("x-engine", "yes")], names.join(","))
            }),
        )
        .route("/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A round-robin gateway over `engines` (ids e0, e1, …); returns its base URL.
async fn gateway_over(engines: Vec<String>, cfg: GatewayConfig) -> String {
    gateway_with(engines, cfg, PickerConfig::default(), false).await.0
}

/// [`gateway_over`] with picker settings, its data plane (health checks) running when
/// `start`; returns the base URL and the gateway.
async fn gateway_with(
    engines: Vec<String>,
    cfg: GatewayConfig,
    pcfg: PickerConfig,
    start: bool,
) -> (String, Arc<Gateway>) {
    gateway_routing(engines, "round-robin", cfg, pcfg, start).await
}

/// [`gateway_with`] under routing `preset`.
async fn gateway_routing(
    engines: Vec<String>,
    preset: &str,
    cfg: GatewayConfig,
    pcfg: PickerConfig,
    start: bool,
) -> (String, Arc<Gateway>) {
    let store = datastore(Arc::new(ManualClock::new()));
    for (i, e) in engines.into_iter().enumerate() {
        store.upsert(Endpoint::new(format!("e{i}"), e, Role::Both));
    }
    let sched = Scheduler::new(presets::preset(preset, &PluginRegistry::with_builtins()).unwrap(), 0);
    let picker = EndpointPicker::new(sched, store, pcfg, None);
    if start {
        picker.start();
    }
    let g = Gateway::new(picker, cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let served = g.clone();
    tokio::spawn(async move { served.serve(listener, std::future::pending()).await });
    (addr, g)
}

/// POSTs a small completion request to the gateway at `base`.
async fn post_hi(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(r#"{"prompt": "hi"}"#)
        .send()
        .await
        .unwrap()
}

async fn gateway(engine: String, expose_destination: bool) -> String {
    gateway_over(vec![engine], GatewayConfig { expose_destination, ..Default::default() }).await
}

#[tokio::test]
async fn hop_by_hop_and_routing_headers_do_not_cross_the_gateway() {
    let engine = echo().await;
    let base = gateway(engine.clone(), false).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "named in Connection")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-prefiller-host-port", "169.254.169.254:80")
        .header("X-LLM-D-Prefiller-Host-Port", "169.254.169.254:80")
        .header("x-gateway-destination-endpoint", "10.9.9.9:1")
        .header("x-request-id", "r-7")
        .header("authorization", "Bearer k")
        .body(r#"{"prompt": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("keep-alive").is_none(), "hop-by-hop headers stop at the gateway both ways");
    assert_eq!(resp.headers()["x-engine"], "yes");
    assert!(resp.headers().get("x-gateway-destination-endpoint").is_none(), "internal addresses stay inside");
    let got = resp.text().await.unwrap();
    let got: Vec<&str> = got.split(',').collect();
    for h in ["x-request-id", "authorization", "content-type"] {
        assert!(got.contains(&h), "{h} must pass: {got:?}");
    }
    for h in [
        "x-secret",
        "proxy-authorization",
        "te",
        "x-prefiller-host-port",
        "x-llm-d-prefiller-host-port",
        "x-gateway-destination-endpoint",
    ] {
        assert!(!got.contains(&h), "{h} must not pass: {got:?}");
    }

    // With the flag, the client learns where its request went.
    let base = gateway(engine.clone(), true).await;
    let resp = post_hi(&base).await;
    assert_eq!(resp.headers()["x-gateway-destination-endpoint"], engine.as_str());

    // The framework's own errors come in the OpenAI shape too.
    let resp = reqwest::Client::new().get(format!("{base}/v1/completions")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], 405);
    let resp = reqwest::Client::new().get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&resp.text().await.unwrap()).unwrap()["error"]["code"], 404);
}

/// An engine that is always full.
async fn full() -> String {
    let app = axum::Router::new()
        .route(
            "/v1/completions",
            axum::routing::post(|| async {
                let body = r#"{"error": {"message": "full", "type": "RateLimitError", "param": null, "code": 429}}"#;
                (axum::http::StatusCode::TOO_MANY_REQUESTS, [("content-type", "application/json")], body)
            }),
        )
        .route("/health", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn a_full_endpoint_429_is_retried_elsewhere_and_returned_when_none_is_left() {
    let client = reqwest::Client::new();
    // Round robin tries the full engine first; the request lands on the other.
    let base = gateway_over(vec![full().await, echo().await], GatewayConfig::default()).await;
    assert_eq!(post_hi(&base).await.status(), 200);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("llmd_epp_retries_total 1"), "{metrics}");
    // Only full engines: the client gets the 429 (retry later), not a 503.
    let base = gateway_over(vec![full().await, full().await], GatewayConfig::default()).await;
    let resp = post_hi(&base).await;
    assert_eq!(resp.status(), 429);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "RateLimitError");
}

#[tokio::test]
async fn the_gateway_asks_for_its_api_key() {
    let cfg = GatewayConfig { api_key: Some("k1".into()), ..Default::default() };
    let base = gateway_over(vec![echo().await], cfg).await;
    let client = reqwest::Client::new();
    let post = |key: &str| {
        client
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {key}"))
            .body(r#"{"prompt": "hi"}"#)
            .send()
    };
    assert_eq!(post("nope").await.unwrap().status(), 401);
    assert_eq!(post("k1").await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), 200);
}

/// Peers that accept and then say nothing, or hang up at once.
async fn bad_peer(hang_up: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            if hang_up {
                drop(sock);
            } else {
                held.push(sock);
            }
        }
    });
    addr
}

#[tokio::test]
async fn silent_and_hanging_up_endpoints_get_clean_errors() {
    let post = |base: String| async move {
        let r = post_hi(&base).await;
        let status = r.status().as_u16();
        (status, serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap())
    };
    // Silent: accepts, never answers (its health path neither); the response-start
    // timeout gives a 504.
    let cfg = GatewayConfig { response_timeout: Duration::from_millis(300), ..Default::default() };
    let (status, v) = post(gateway_over(vec![bad_peer(false).await], cfg).await).await;
    assert_eq!((status, v["error"]["type"].as_str()), (504, Some("GatewayTimeoutError")), "{v}");
    // Hanging up: the connection fails before anything was sent; with no other endpoint
    // left the client gets an OpenAI error naming it, not a hang.
    let (status, v) = post(gateway_over(vec![bad_peer(true).await], GatewayConfig::default()).await).await;
    assert!(status == 502 || status == 503, "{status} {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("e0"), "{v}");
}

/// Quick health checks and ejection for tests: checks every 50 ms (only where the data
/// plane runs), each given 200 ms; two failures in a row eject.
fn quick_health() -> PickerConfig {
    let mut p = PickerConfig::default();
    p.health.check_interval = Some(Duration::from_millis(50));
    p.health.check_timeout = Duration::from_millis(200);
    p.health.consecutive_failures = 2;
    p.health.unhealthy_threshold = 1;
    p
}

/// POSTs `body`; a gateway that would hang fails the test in 30 s instead.
async fn post_json(base: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let send = async {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    tokio::time::timeout(Duration::from_secs(30), send).await.expect("the gateway hung")
}

#[tokio::test]
async fn a_never_answering_endpoint_costs_one_first_byte_timeout_then_is_ejected() {
    let first_byte = Duration::from_millis(300);
    let cfg = GatewayConfig { first_byte_timeout: first_byte, ..Default::default() };
    // Round robin sends the first request to the silent endpoint (e0).
    let (base, _g) = gateway_with(vec![bad_peer(false).await, echo().await], cfg, quick_health(), false).await;
    // A non-stream request: past the first-byte timeout the silent endpoint's health
    // check fails too, so the request moves on instead of waiting for the 300 s cap.
    let t = Instant::now();
    let (status, body) = post_json(&base, r#"{"prompt": "hi"}"#).await;
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(took >= first_byte, "{took:?}");
    assert!(took < first_byte + Duration::from_millis(200) + Duration::from_secs(2), "{took:?}");
    // A stream: silence past the first-byte timeout is enough (headers come at once).
    let t = Instant::now();
    let (status, body) = post_json(&base, r#"{"prompt": "hi", "stream": true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(t.elapsed() < first_byte + Duration::from_secs(1), "{:?}", t.elapsed());
    // Two failures in a row: e0 is out of picks, and requests go straight to e1.
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"llmd_epp_endpoint_failures_total{reason="timeout"} 2"#), "{metrics}");
    assert!(metrics.contains("llmd_epp_endpoint_ejections_total 1"), "{metrics}");
    assert!(metrics.contains(r#"llmd_epp_endpoints{status="ejected"} 1"#), "{metrics}");
    for _ in 0..4 {
        assert_eq!(post_json(&base, r#"{"prompt": "hi"}"#).await.0, 200);
    }
    // Had e0 been tried, it would have timed out again and been picked again.
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"llmd_epp_endpoint_failures_total{reason="timeout"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"llmd_epp_picks_total{endpoint="e0"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"llmd_epp_picks_total{endpoint="e1"} 6"#), "{metrics}");
}

/// An engine that starts an event stream, sends one event, then breaks the connection
/// (`true`: the chunked body never ends) or goes silent (`false`).
async fn stream_then(break_off: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            // Read the request (headers and the small body arrive together).
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            let event = "data: {\"n\": 1}\n\n";
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let out = format!("{head}{:x}\r\n{event}\r\n", event.len());
            let _ = sock.write_all(out.as_bytes()).await;
            let _ = sock.flush().await;
            if break_off {
                drop(sock);
            } else {
                held.push(sock);
            }
        }
    });
    addr
}

/// The last event's data in an SSE body, before `[DONE]`.
fn error_before_done(body: &str) -> serde_json::Value {
    let datas: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{body}");
    assert_eq!(datas.first(), Some(&r#"{"n": 1}"#), "the event before the break passed through: {body}");
    serde_json::from_str(datas[datas.len() - 2]).unwrap()
}

#[tokio::test]
async fn streams_broken_off_or_gone_silent_end_with_an_error_event() {
    let cfg = GatewayConfig { stream_idle_timeout: Duration::from_millis(300), ..Default::default() };
    let (base, _g) = gateway_with(vec![stream_then(true).await], cfg.clone(), PickerConfig::default(), false).await;
    let (status, body) = post_json(&base, r#"{"prompt": "hi", "stream": true}"#).await;
    assert_eq!(status, 200);
    let v = error_before_done(&body);
    assert_eq!(v["error"]["type"], "BadGatewayError", "{v}");
    let (base, _g) = gateway_with(vec![stream_then(false).await], cfg, PickerConfig::default(), false).await;
    let t = Instant::now();
    let (_, body) = post_json(&base, r#"{"prompt": "hi", "stream": true}"#).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    let v = error_before_done(&body);
    assert_eq!(v["error"]["type"], "GatewayTimeoutError", "{v}");
}

#[tokio::test]
async fn draining_reports_not_ready_refuses_new_requests_and_cuts_streams_with_an_error_event() {
    let (base, g) =
        gateway_with(vec![stream_then(false).await], GatewayConfig::default(), PickerConfig::default(), false).await;
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    // A stream in flight (silent after its first event) when the drain begins.
    let mut resp = client
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(r#"{"prompt": "hi", "stream": true}"#)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains(r#"{"n": 1}"#));
    g.begin_drain();
    assert_eq!(client.get(format!("{base}/health")).send().await.unwrap().status(), 503);
    assert_eq!(post_json(&base, r#"{"prompt": "hi"}"#).await.0, 503);
    // The drain deadline: the stream ends, with an error event saying why.
    g.cut_streams();
    let rest = tokio::time::timeout(Duration::from_secs(5), resp.text()).await.unwrap().unwrap();
    let v = error_before_done(&format!("data: {{\"n\": 1}}\n\n{rest}"));
    assert_eq!(v["error"]["type"], "ServiceUnavailableError", "{v}");
}

#[tokio::test]
async fn readiness_follows_active_health_checks() {
    // One endpoint that refuses everything: active checks take it out, and the
    // gateway's own readiness goes with it.
    let (base, g) = gateway_with(vec![bad_peer(true).await], GatewayConfig::default(), quick_health(), true).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.is_ready() {
        assert!(Instant::now() < deadline, "the failing endpoint was never taken out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("no endpoint is serving"));
    // A healthy one: checks pass, ready.
    let (_, g) = gateway_with(vec![echo().await], GatewayConfig::default(), quick_health(), true).await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(g.is_ready());
    }
}

#[tokio::test]
async fn a_lone_surrogate_escape_is_routed_not_refused() {
    // Python's json.dumps writes an unpaired surrogate as an escape; serde_json alone
    // refuses it.
    let body = r#"{"prompt": "half a pair: \ud800 then text"}"#;
    assert!(serde_json::from_str::<serde_json::Value>(body).is_err(), "the control must fail");
    let base = gateway_over(vec![echo().await], GatewayConfig::default()).await;
    let (status, text) = post_json(&base, body).await;
    assert_eq!(status, 200, "{text}");
}

/// An "engine" that reports each completion body it gets, tagged with `name`, on `seen`.
async fn recorder(name: usize, seen: tokio::sync::mpsc::UnboundedSender<(usize, serde_json::Value)>) -> String {
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let _ = seen.send((name, serde_json::from_slice(&body).unwrap_or_default()));
                axum::Json(serde_json::json!({"choices": [{"text": "x", "index": 0, "finish_reason": "length"}]}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `n` requests sharing one long prompt through a `prefix`-routed gateway over 3
/// recording engines; returns what each engine got, in arrival order.
async fn one_hot_prefix(n: usize, replication: bool) -> (Vec<(usize, serde_json::Value)>, Arc<Gateway>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut engines = Vec::new();
    for i in 0..3 {
        engines.push(recorder(i, tx.clone()).await);
    }
    let pcfg = PickerConfig { replication: replication.then(Default::default), ..Default::default() };
    let (base, g) = gateway_routing(engines, "prefix", GatewayConfig::default(), pcfg, false).await;
    // 6 000 characters: ~1 500 tokens by the approximate scorer's estimate, past the
    // replication threshold of 1 024.
    let body =
        serde_json::json!({"prompt": "You are a helpful assistant. ".repeat(207), "max_tokens": 8, "stream": false});
    let mut got = Vec::new();
    for _ in 0..n {
        let (status, text) = post_json(&base, body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        // The user's request, and any warm-up it set off, arrive before the next one.
        got.push(tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap());
    }
    while let Ok(Some(more)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        got.push(more);
    }
    (got, g)
}

#[tokio::test]
async fn a_hot_prefix_is_warmed_on_another_endpoint_then_shared() {
    let (got, g) = one_hot_prefix(16, true).await;
    let warm: Vec<&(usize, serde_json::Value)> = got.iter().filter(|(_, b)| b["max_tokens"] == 1).collect();
    assert!(!warm.is_empty(), "no warm-up was sent: {got:?}");
    let holder = got[0].0;
    for (engine, body) in &warm {
        assert_ne!(*engine, holder, "a warm-up goes to an endpoint without the prefix");
        assert_eq!(body["stream"], false);
        assert_eq!(body["prompt"], got[0].1["prompt"]);
    }
    // After the warm-up, the prefix's own requests are spread over its holders.
    let users: Vec<usize> = got.iter().filter(|(_, b)| b["max_tokens"] == 8).map(|(e, _)| *e).collect();
    assert_eq!(users.len(), 16);
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "every request still went to one endpoint: {users:?}");
    let metrics = g.picker().metrics_text().unwrap();
    assert!(metrics.contains("llmd_epp_prefix_replications_total{outcome=\"ok\"}"), "{metrics}");
}

#[tokio::test]
async fn without_replication_a_hot_prefix_stays_on_one_endpoint() {
    // The control for the test above: the same traffic, replication off.
    let (got, _) = one_hot_prefix(16, false).await;
    assert_eq!(got.len(), 16, "no warm-ups: {got:?}");
    assert!(got.iter().all(|(e, _)| *e == got[0].0), "{got:?}");
}

#[tokio::test]
async fn data_parallel_picks_go_to_the_primary_port_with_the_rank_named() {
    // The pod's primary port answers with the rank header it got; the ranks' own ports
    // (the endpoints' addresses) have nothing listening.
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|headers: HeaderMap| async move {
            let rank = headers.get_all("x-data-parallel-host-port").iter().map(|v| v.to_str().unwrap().to_string());
            rank.collect::<Vec<_>>().join(";")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let primary = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let yaml = format!(
        "plugins:\n- type: data-parallel-profile-handler\n  parameters: {{primaryPort: {primary}}}\n\
         - type: max-score-picker\n  parameters: {{tieBreak: least-recent}}\n\
         schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: max-score-picker\n"
    );
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(&yaml, "dp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    for rank in 0..2 {
        store.upsert(Endpoint::new(format!("pod-rank-{rank}"), format!("127.0.0.1:{}", 1 + rank), Role::Both));
    }
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    let mut ranks = Vec::new();
    for _ in 0..2 {
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .header("x-data-parallel-host-port", "10.9.9.9:1")
            .body(r#"{"prompt": "hi"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        ranks.push(resp.text().await.unwrap());
    }
    ranks.sort();
    // One header each, the picker's (the client's is dropped), naming each rank in turn.
    assert_eq!(ranks, ["127.0.0.1:1", "127.0.0.1:2"]);
}

/// A gateway over one engine under the EndpointPickerConfig `yaml`; returns its base URL.
async fn gateway_config(engine: String, yaml: &str) -> String {
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e0", engine, Role::Both));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    base
}

#[tokio::test]
async fn request_parsers_decide_which_bodies_are_read() {
    // An engine that takes any path and body.
    let app = axum::Router::new().fallback(|body: String| async move { format!("got {} bytes", body.len()) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let engine = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let profile = "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: random-picker\n";
    let post = |base: String, path: &'static str, body: &'static str| async move {
        let resp = reqwest::Client::new().post(format!("{base}{path}")).body(body).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    // llm-d-router's payload-agnostic setup: nothing is read, any body passes.
    let passthrough = gateway_config(
        engine.clone(),
        &format!("plugins:\n- type: random-picker\n- type: passthrough-parser\nrequestHandler:\n  parsers:\n  - pluginRef: passthrough-parser\n{profile}"),
    )
    .await;
    assert_eq!(post(passthrough.clone(), "/v1/completions", "not json").await, (200, "got 8 bytes".into()));
    assert_eq!(post(passthrough, "/v1/chat/completions", "\u{1}\u{2}").await, (200, "got 2 bytes".into()));
    // Only the OpenAI parser: its paths are read (bad JSON refused), other paths refused.
    let openai = gateway_config(
        engine.clone(),
        &format!(
            "plugins:\n- type: random-picker\nrequestHandler:\n  parsers:\n  - pluginRef: openai-parser\n{profile}"
        ),
    )
    .await;
    assert_eq!(post(openai.clone(), "/v1/completions", r#"{"prompt": "hi"}"#).await.0, 200);
    assert_eq!(post(openai.clone(), "/v1/completions", "not json").await.0, 400);
    // (The gateway serves the OpenAI completion paths; Envoy, through ext-proc, brings
    // others, which the picker refuses when no configured parser takes them.)
}

#[tokio::test]
async fn gpu_utilization_from_a_dcgm_exporter_steers_picks() {
    // One DCGM exporter for the host both endpoints run on, labelling each GPU's pod.
    let util = Arc::new(std::sync::Mutex::new((95, 20)));
    let shared = util.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (a, b) = *shared.lock().unwrap();
            async move {
                format!("DCGM_FI_DEV_GPU_UTIL{{gpu=\"0\",pod=\"e0\"}} {a}\nDCGM_FI_DEV_GPU_UTIL{{gpu=\"1\",pod=\"e1\"}} {b}\n")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // llm-d-router's sim-epp-gpu-config, with the exporter's port.
    let file =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/llm-d-router/sim-epp-gpu-config.yaml");
    let yaml = std::fs::read_to_string(file).unwrap().replace("port: 9400", &format!("port: {port}"));
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(&yaml, "gpu.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    for i in 0..2 {
        // Nothing listens at the endpoints themselves: only the exporter is scraped here.
        store.upsert(Endpoint::new(format!("e{i}"), format!("127.0.0.1:{}", 1 + i), Role::Both));
    }
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let pick = |picker: &EndpointPicker| {
        let req = llmd_scheduler::LlmRequest::new("r", "m", "hi");
        picker.pick_request(&req, &Default::default()).unwrap().result.destination().unwrap().endpoint.clone()
    };
    picker.scrape_once().await;
    assert_eq!(
        picker.datastore().get("e0").unwrap().attributes.get("GPUUtilization"),
        Some(&llmd_scheduler::AttributeValue::Float(0.95))
    );
    for _ in 0..4 {
        assert_eq!(pick(&picker), "e1", "e0's GPU is past the filter's 0.90");
    }
    *util.lock().unwrap() = (10, 60);
    picker.scrape_once().await;
    for _ in 0..4 {
        assert_eq!(pick(&picker), "e0", "both pass; the scorer prefers the idler GPU");
    }
}

#[tokio::test]
async fn flow_control_holds_requests_while_saturated_and_sheds_them_at_their_ttl() {
    use llmd_scheduler::endpoint::EndpointMetrics;
    let yaml = "featureGates: [flowControl]\nflowControl: {defaultRequestTTL: 300ms}\nplugins:\n- type: queue-scorer\n";
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e0", echo().await, Role::Both));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store.clone(), PickerConfig::default(), None);
    let g = Gateway::new(picker.clone(), GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });

    // Never scraped: the utilization detector counts the pool as saturated, so the
    // request waits in its queue and is shed when its TTL runs out.
    let started = Instant::now();
    let r = post_hi(&base).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-llm-d-request-dropped-reason"], "rejected-ttl-expired");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Fresh metrics with room: dispatched at once.
    let room = EndpointMetrics { waiting: 0, kv_usage: 0.1, ..Default::default() };
    let full = EndpointMetrics { waiting: 50, kv_usage: 0.99, ..Default::default() };
    store.update_metrics("e0", room.clone());
    assert_eq!(post_hi(&base).await.status(), 200);
    // Saturated again: a request waits, and goes once the pool has room.
    store.update_metrics("e0", full);
    let waiting = tokio::spawn({
        let base = base.clone();
        async move { post_hi(&base).await.status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "held while the pool is saturated");
    store.update_metrics("e0", room);
    assert_eq!(waiting.await.unwrap(), 200);
    let metrics = picker.metrics_text().unwrap();
    assert!(metrics.contains("llm_d_epp_flow_control_request_queue_duration_seconds"), "{metrics}");
}

#[tokio::test]
async fn the_latency_model_learns_from_the_requests_the_gateway_relays() {
    let yaml = "plugins:\n- type: predicted-latency-producer\n- type: latency-scorer\n\
                schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: latency-scorer\n";
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let producers = llmd_scheduler::plugins::latency::latency_producers(&config);
    assert_eq!(producers.len(), 1);
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e0", echo().await, Role::Both));
    store.upsert(Endpoint::new("e1", echo().await, Role::Both));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    let client = reqwest::Client::new();
    for i in 0..40 {
        let r = client
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            // No x-request-id: the gateway mints one, so the request is still tracked.
            .body(format!(r#"{{"model":"m","prompt":"hello there {i}"}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    // Non-streaming: each end trains TTFT (the router's rule: TTFT := e2e).
    let stats = producers[0].model().unwrap().stats();
    assert_eq!(stats.ttft_seen, 40, "{stats:?}");
    // The producer's metrics are on the picker's /metrics, inside the OpenMetrics frame.
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let ttft = text
        .lines()
        .find(|l| l.starts_with("llm_d_epp_inference_request_metric{") && l.contains(r#"type="ttft""#))
        .unwrap_or_else(|| panic!("no observed-TTFT gauge in\n{text}"));
    assert!(
        ttft.contains(r#"plugin_type="predicted-latency-producer""#) && ttft.contains(r#"model_name="m""#),
        "{ttft}"
    );
    assert!(text.contains("# TYPE llm_d_epp_request_slo_violation counter"), "{text}");
    assert!(text.ends_with("# EOF\n") && text.matches("# EOF").count() == 1, "{text}");
}

#[tokio::test]
async fn a_burst_past_flow_control_capacity_is_shed_with_a_reason_and_nothing_admitted_is_lost() {
    use llmd_scheduler::endpoint::EndpointMetrics;
    let yaml = "featureGates: [flowControl]\nflowControl: {maxRequests: 3, defaultRequestTTL: 30s}\n\
                plugins:\n- type: queue-scorer\n";
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e0", echo().await, Role::Both));
    // Saturated: everything admitted waits in the queue.
    store.update_metrics("e0", EndpointMetrics { waiting: 50, kv_usage: 0.99, ..Default::default() });
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store.clone(), PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    // A burst of 8 against room for 3 queued requests.
    let sent: Vec<_> = (0..8)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move {
                let r = post_hi(&base).await;
                let reason = r.headers().get("x-llm-d-request-dropped-reason").map(|v| v.to_str().unwrap().to_string());
                (r.status().as_u16(), reason)
            })
        })
        .collect();
    // The shed ones answer at once; the queued ones wait until the pool has room.
    let five_shed = async {
        while sent.iter().filter(|h| h.is_finished()).count() < 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), five_shed).await.expect("the shed requests were answered");
    assert_eq!(sent.iter().filter(|h| h.is_finished()).count(), 5, "3 queued, 5 shed");
    store.update_metrics("e0", EndpointMetrics { waiting: 0, kv_usage: 0.1, ..Default::default() });
    let mut answers = Vec::new();
    for h in sent {
        answers.push(tokio::time::timeout(Duration::from_secs(30), h).await.unwrap().unwrap());
    }
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let rejected: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(ok, 3, "every queued request was served: {answers:?}");
    assert!(rejected.iter().all(|(s, r)| *s == 429 && r.as_deref() == Some("rejected-saturated")), "{answers:?}");
}

#[tokio::test]
async fn sheddable_objectives_are_dropped_while_the_pool_is_saturated() {
    let config = llmd_scheduler::SchedulerConfig::from_yaml(
        "plugins:\n- type: queue-scorer\n",
        "epp.yaml",
        &PluginRegistry::with_builtins(),
    )
    .unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e0", echo().await, Role::Both));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let manifests = "kind: InferenceObjective\napiVersion: inference.networking.x-k8s.io/v1alpha2\n\
                     metadata: {name: batch}\nspec: {priority: -1}\n";
    picker.set_objectives(llmd_scheduler::objectives::Objectives::from_manifests(manifests, "o.yaml").unwrap());
    let g = Gateway::new(picker, GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    let post = |objective: Option<&'static str>| {
        let base = base.clone();
        async move {
            let mut r = reqwest::Client::new()
                .post(format!("{base}/v1/completions"))
                .header("content-type", "application/json")
                .body(r#"{"model":"m","prompt":"hi"}"#);
            if let Some(o) = objective {
                r = r.header("x-llm-d-inference-objective", o);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    // Never scraped: the detector counts the pool as saturated. Flow control is off, so
    // the router's legacy admission applies: sheddable requests are dropped, others go.
    assert_eq!(post(Some("batch")).await, 429);
    assert_eq!(post(None).await, 200);
    assert_eq!(post(Some("unknown-objective")).await, 200, "an unknown objective is priority 0");
}

#[tokio::test]
async fn a_session_token_from_the_first_answer_brings_the_next_request_back() {
    let yaml = "plugins:\n- type: session-affinity-scorer\n- type: max-score-picker\n\
                schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: session-affinity-scorer\n    weight: 10\n  - pluginRef: max-score-picker\n";
    let config =
        llmd_scheduler::SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    for i in 0..3 {
        store.upsert(Endpoint::new(format!("ns/e{i}"), echo().await, Role::Both));
    }
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig { expose_destination: true, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    let first = post_hi(&base).await;
    let token = first.headers()["x-session-token"].to_str().unwrap().to_string();
    let served = first.headers()["x-gateway-destination-endpoint"].to_str().unwrap().to_string();
    // Every endpoint ties without the token; with it, every request comes back.
    for _ in 0..4 {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/completions"))
            .header("content-type", "application/json")
            .header("x-session-token", &token)
            .body(r#"{"model":"m","prompt":"hi"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-gateway-destination-endpoint"].to_str().unwrap(), served);
    }
}
