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

async fn gateway(engine: String, expose_destination: bool) -> String {
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e", engine, Role::Both));
    let sched = Scheduler::new(presets::preset("round-robin", &PluginRegistry::with_builtins()).unwrap(), 0);
    let picker = EndpointPicker::new(sched, store, PickerConfig::default(), None);
    let g = Gateway::new(picker, GatewayConfig { expose_destination, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    addr
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
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(r#"{"prompt": "hi"}"#)
        .send()
        .await
        .unwrap();
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

async fn gateway_over(engines: Vec<String>) -> String {
    let store = datastore(Arc::new(ManualClock::new()));
    for (i, e) in engines.into_iter().enumerate() {
        store.upsert(Endpoint::new(format!("e{i}"), e, Role::Both));
    }
    let sched = Scheduler::new(presets::preset("round-robin", &PluginRegistry::with_builtins()).unwrap(), 0);
    let g = Gateway::new(EndpointPicker::new(sched, store, PickerConfig::default(), None), GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
    addr
}

#[tokio::test]
async fn a_full_endpoint_429_is_retried_elsewhere_and_returned_when_none_is_left() {
    let client = reqwest::Client::new();
    let post = |base: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/v1/completions"))
                .header("content-type", "application/json")
                .body(r#"{"prompt": "hi"}"#)
                .send()
                .await
                .unwrap()
        }
    };
    // Round robin tries the full engine first; the request lands on the other.
    let base = gateway_over(vec![full().await, echo().await]).await;
    assert_eq!(post(base.clone()).await.status(), 200);
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("llmd_epp_retries_total 1"), "{metrics}");
    // Only full engines: the client gets the 429 (retry later), not a 503.
    let base = gateway_over(vec![full().await, full().await]).await;
    let resp = post(base).await;
    assert_eq!(resp.status(), 429);
    let v: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["type"], "RateLimitError");
}

#[tokio::test]
async fn the_gateway_asks_for_its_api_key() {
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("e", echo().await, Role::Both));
    let sched = Scheduler::new(presets::preset("round-robin", &PluginRegistry::with_builtins()).unwrap(), 0);
    let cfg = GatewayConfig { api_key: Some("k1".into()), ..Default::default() };
    let g = Gateway::new(EndpointPicker::new(sched, store, PickerConfig::default(), None), cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { g.serve(listener, std::future::pending()).await });
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
