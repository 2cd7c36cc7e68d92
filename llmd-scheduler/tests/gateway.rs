//! The HTTP gateway's header hygiene, against an endpoint that echoes what it receives.

#![cfg(feature = "gateway")]
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use axum::http::HeaderMap;
use llmd_scheduler::gateway::{Gateway, GatewayConfig};
use llmd_scheduler::picker::{EndpointPicker, PickerConfig};
use llmd_scheduler::{Endpoint, ManualClock, PluginRegistry, Role, Scheduler, datastore, presets};

/// An "engine" that answers with the request headers it got, and some hop-by-hop ones.
async fn echo() -> String {
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|headers: HeaderMap| async move {
            let names: Vec<String> = headers.keys().map(|k| k.as_str().to_string()).collect();
            ([("keep-alive", "timeout=5"), ("x-engine", "yes")], names.join(","))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A round-robin gateway over `engines` (ids e0, e1, …); returns its base URL.
async fn gateway_over(engines: Vec<String>, cfg: GatewayConfig) -> String {
    let store = datastore(Arc::new(ManualClock::new()));
    for (i, e) in engines.into_iter().enumerate() {
        store.upsert(Endpoint::new(format!("e{i}"), e, Role::Both));
    }
    let sched = Scheduler::new(presets::preset("round-robin", &PluginRegistry::with_builtins()).unwrap(), 0);
    let g = Gateway::new(EndpointPicker::new(sched, store, PickerConfig::default(), None), cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    addr
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
    let app = axum::Router::new().route(
        "/v1/completions",
        axum::routing::post(|| async {
            let body = r#"{"error": {"message": "full", "type": "RateLimitError", "param": null, "code": 429}}"#;
            (axum::http::StatusCode::TOO_MANY_REQUESTS, [("content-type", "application/json")], body)
        }),
    );
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
    // Silent: accepts, never answers; the response-start timeout gives a 504.
    let cfg = GatewayConfig { response_timeout: std::time::Duration::from_millis(300), ..Default::default() };
    let (status, v) = post(gateway_over(vec![bad_peer(false).await], cfg).await).await;
    assert_eq!((status, v["error"]["type"].as_str()), (504, Some("GatewayTimeoutError")), "{v}");
    // Hanging up: the connection fails before anything was sent; with no other endpoint
    // left the client gets an OpenAI error naming it, not a hang.
    let (status, v) = post(gateway_over(vec![bad_peer(true).await], GatewayConfig::default()).await).await;
    assert!(status == 502 || status == 503, "{status} {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("e0"), "{v}");
}
