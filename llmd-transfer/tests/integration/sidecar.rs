#![allow(clippy::unwrap_used)]
//! The P/D routing sidecar against stand-in prefill and decode engines on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use llmd_transfer::params::KvTransferParams;
use llmd_transfer::sidecar::{self, Connector, PrefillerSampler, SidecarConfig};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(10);

/// One request an engine received.
#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

type Answer = Arc<dyn Fn(&Recorded) -> Response + Send + Sync>;

struct Engine {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Recorded>,
}

impl Engine {
    async fn start(answer: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Engine {
        let answer: Answer = Arc::new(answer);
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(move |req: Request| {
            let (tx, answer) = (tx.clone(), answer.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    path: parts.uri.to_string(),
                    headers: parts.headers,
                    body,
                };
                let resp = answer(&rec);
                let _ = tx.send(rec);
                resp
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Engine { addr, rx }
    }

    async fn next(&mut self) -> Recorded {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("engine not called in time").unwrap()
    }

    fn assert_idle(&mut self) {
        assert!(self.rx.try_recv().is_err(), "engine was called");
    }

    fn host_port(&self) -> String {
        self.addr.to_string()
    }
}

/// vLLM NixlConnector's prefill answer params.
fn nixl_params() -> Value {
    json!({
        "do_remote_prefill": true,
        "do_remote_decode": false,
        "remote_block_ids": [[11, 12, 13]],
        "remote_engine_id": "engine-prefill-0",
        "remote_request_id": "chatcmpl-p-42",
        "remote_host": "10.0.0.7",
        "remote_port": 5600,
        "tp_size": 1
    })
}

fn prefill_ok(_: &Recorded) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-p-42",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13,
                  "prompt_tokens_details": {"cached_tokens": 8}},
        "kv_transfer_params": nixl_params()
    }))
    .into_response()
}

fn decode_json(_: &Recorded) -> Response {
    axum::Json(json!({
        "id": "chatcmpl-d",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15, "prompt_tokens_details": null}
    }))
    .into_response()
}

fn sse(body: &'static str) -> Response {
    ([("content-type", "text/event-stream")], body).into_response()
}

struct Sidecar {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start_sidecar(cfg: SidecarConfig) -> Sidecar {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        sidecar::serve(listener, cfg, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Sidecar { url, _stop: stop }
}

fn config(decode: &Engine) -> SidecarConfig {
    let mut cfg = SidecarConfig::new(format!("http://{}", decode.addr));
    cfg.connect_timeout = Duration::from_secs(5);
    cfg.prefill_timeout = Duration::from_secs(10);
    cfg.read_timeout = Duration::from_secs(10);
    cfg
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

async fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> reqwest::Response {
    let mut req = client().post(url).header("content-type", "application/json").body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// `base` with `kv_transfer_params` = `params` and the other fields given.
fn with(base: &Value, params: Value, fields: &[(&str, Value)]) -> Value {
    let mut v = base.clone();
    v["kv_transfer_params"] = params;
    for (k, f) in fields {
        v[*k] = f.clone();
    }
    v
}

fn assert_no_routing_headers(r: &Recorded) {
    for h in
        ["x-prefiller-host-port", "x-llm-d-prefiller-host-port", "x-encoder-hosts-ports", "x-kv-cache-source-host-port"]
    {
        assert!(r.header(h).is_none(), "{h} leaked to {}", r.path);
    }
}

#[tokio::test]
async fn chat_prefill_and_decode_legs() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "max_completion_tokens": 60,
        "temperature": 0.5
    });
    let resp = post(
        &format!("{}/v1/chat/completions?trace=1", sc.url),
        &[
            ("x-prefiller-host-port", &prefill.host_port()),
            ("x-encoder-hosts-ports", "10.9.9.9:1"),
            ("x-kv-cache-source-host-port", "10.9.9.9:2"),
            ("authorization", "Bearer t"),
            ("x-custom", "v"),
            ("x-request-id", "client-chosen"),
        ],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();

    let p = prefill.next().await;
    assert_eq!(p.method, "POST");
    assert_eq!(p.path, "/v1/chat/completions?trace=1");
    let expected_prefill = with(
        &body,
        KvTransferParams::prefill_request().to_value(),
        &[
            ("stream", json!(false)),
            ("max_tokens", json!(1)),
            ("max_completion_tokens", json!(1)),
            ("min_tokens", json!(1)),
        ],
    );
    assert_eq!(p.json(), expected_prefill);
    assert_eq!(p.json()["kv_transfer_params"]["do_remote_decode"], true);
    assert_eq!(p.json()["kv_transfer_params"]["remote_block_ids"], Value::Null);
    assert_eq!(p.header("authorization"), Some("Bearer t"));
    assert_eq!(p.header("x-custom"), Some("v"));
    assert_eq!(p.header("content-type"), Some("application/json"));
    assert_eq!(p.header("content-length"), Some(p.body.len().to_string().as_str()));
    assert_eq!(p.header("host"), Some(prefill.host_port().as_str()));
    assert_no_routing_headers(&p);

    let d = decode.next().await;
    assert_eq!(d.path, "/v1/chat/completions?trace=1");
    assert_eq!(d.json(), with(&body, nixl_params(), &[]));
    assert_eq!(d.header("authorization"), Some("Bearer t"));
    assert_eq!(d.header("content-length"), Some(d.body.len().to_string().as_str()));
    assert_no_routing_headers(&d);

    let id = p.header("x-request-id").unwrap();
    assert_eq!(d.header("x-request-id"), Some(id));
    assert_eq!(p.headers.get_all("x-request-id").iter().count(), 1);
    assert_ne!(id, "client-chosen");
    assert_eq!(id.len(), 36);

    // The prefiller's cached tokens replace the decoder's (null) details.
    assert_eq!(answer["usage"]["prompt_tokens_details"], json!({"cached_tokens": 8}));
    assert_eq!(answer["choices"][0]["message"]["content"], "hello");
    prefill.assert_idle();
    decode.assert_idle();
}

#[tokio::test]
async fn completions_stream_keeps_stream_fields_and_rewrites_usage_chunk() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(|_| {
        sse(concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"hi\"}],\"usage\":null}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
            "data: [DONE]\n\n"
        ))
    })
    .await;
    let sc = start_sidecar(config(&decode)).await;
    let body = json!({
        "model": "m",
        "prompt": "once upon",
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 16
    });
    let resp = post(
        &format!("{}/v1/completions", sc.url),
        &[("x-prefiller-host-port", &prefill.host_port())],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();

    let p = prefill.next().await;
    let mut expected = with(
        &body,
        KvTransferParams::prefill_request().to_value(),
        &[
            ("stream", json!(false)),
            ("max_tokens", json!(1)),
            ("max_completion_tokens", json!(1)),
            ("min_tokens", json!(1)),
        ],
    );
    expected.as_object_mut().unwrap().remove("stream_options");
    assert_eq!(p.json(), expected);

    let d = decode.next().await;
    assert_eq!(d.json(), with(&body, nixl_params(), &[]));
    assert_eq!(d.header("x-request-id"), p.header("x-request-id"));

    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[0], "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"text\":\"hi\"}],\"usage\":null}");
    let usage: Value = serde_json::from_str(events[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    assert_eq!(usage["usage"]["prompt_tokens"], 12);
    assert_eq!(events[2], "data: [DONE]");
}

#[tokio::test]
async fn responses_limits_max_output_tokens() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let body = json!({"model": "m", "input": "hi", "max_output_tokens": 40, "stream": false});
    let resp = post(
        &format!("{}/v1/responses", sc.url),
        &[("x-prefiller-host-port", &prefill.host_port())],
        &serde_json::to_vec(&body).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let p = prefill.next().await;
    assert_eq!(p.path, "/v1/responses");
    assert_eq!(
        p.json(),
        with(&body, KvTransferParams::prefill_request().to_value(), &[("max_output_tokens", json!(1))])
    );
    let d = decode.next().await;
    assert_eq!(d.path, "/v1/responses");
    assert_eq!(d.json(), with(&body, nixl_params(), &[]));
}

#[tokio::test]
async fn no_header_goes_straight_to_decode_unchanged() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let raw = b"{ \"model\": \"m\",  \"messages\": [], \"stream\": false }";
    let resp = post(&format!("{}/v1/chat/completions", sc.url), &[("x-custom", "1")], raw).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    // No prefill: the decoder's usage is not touched.
    assert_eq!(answer["usage"]["prompt_tokens_details"], Value::Null);
    let d = decode.next().await;
    assert_eq!(&d.body[..], &raw[..]);
    assert_eq!(d.header("x-custom"), Some("1"));
    assert!(d.header("x-request-id").is_none());
    prefill.assert_idle();

    // An empty header is no target either, and is removed.
    let resp = post(&format!("{}/v1/completions", sc.url), &[("x-prefiller-host-port", " , ")], raw).await;
    assert_eq!(resp.status(), 200);
    let d = decode.next().await;
    assert_eq!(&d.body[..], &raw[..]);
    assert_no_routing_headers(&d);
    prefill.assert_idle();
}

#[tokio::test]
async fn header_spellings_lists_and_sampling() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut other = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let url = format!("{}/v1/chat/completions", sc.url);
    let body = br#"{"model":"m","messages":[]}"#;
    let (p, o) = (prefill.host_port(), other.host_port());

    // The newer spelling alone.
    let resp = post(&url, &[("x-llm-d-prefiller-host-port", &p)], body).await;
    assert_eq!(resp.status(), 200);
    assert_no_routing_headers(&prefill.next().await);
    assert_no_routing_headers(&decode.next().await);

    // Both: the legacy spelling is trusted first.
    let resp = post(&url, &[("x-prefiller-host-port", &p), ("x-llm-d-prefiller-host-port", &o)], body).await;
    assert_eq!(resp.status(), 200);
    assert_no_routing_headers(&prefill.next().await);
    decode.next().await;
    other.assert_idle();

    // A comma list: the first.
    let resp = post(&url, &[("x-prefiller-host-port", &format!(" {p} , {o}"))], body).await;
    assert_eq!(resp.status(), 200);
    prefill.next().await;
    decode.next().await;
    other.assert_idle();

    // Repeated headers: the first.
    let resp = post(&url, &[("x-prefiller-host-port", &o), ("x-prefiller-host-port", &p)], body).await;
    assert_eq!(resp.status(), 200);
    other.next().await;
    decode.next().await;
    prefill.assert_idle();

    // Sampling picks with the injected sampler (here: the last candidate).
    let mut cfg = config(&decode);
    cfg.enable_prefiller_sampling = true;
    cfg.prefiller_sampler = Some(PrefillerSampler::new(|n| n - 1));
    let sampled = start_sidecar(cfg).await;
    let resp =
        post(&format!("{}/v1/chat/completions", sampled.url), &[("x-prefiller-host-port", &format!("{p},{o}"))], body)
            .await;
    assert_eq!(resp.status(), 200);
    other.next().await;
    decode.next().await;
    prefill.assert_idle();

    // Random sampling still lands on one of them.
    let mut cfg = config(&decode);
    cfg.enable_prefiller_sampling = true;
    let random = start_sidecar(cfg).await;
    let resp =
        post(&format!("{}/v1/chat/completions", random.url), &[("x-prefiller-host-port", &format!("{p},{o}"))], body)
            .await;
    assert_eq!(resp.status(), 200);
    decode.next().await;
    let (a, b) = (prefill.rx.try_recv().is_ok(), other.rx.try_recv().is_ok());
    assert!(a ^ b);
}

#[tokio::test]
async fn prefill_client_errors_are_returned_as_is() {
    for status in [StatusCode::TOO_MANY_REQUESTS, StatusCode::BAD_REQUEST] {
        let mut prefill = Engine::start(move |_| {
            (status, [("x-engine", "p"), ("content-type", "application/json")], r#"{"object":"error","code":1}"#)
                .into_response()
        })
        .await;
        let mut decode = Engine::start(decode_json).await;
        let sc = start_sidecar(config(&decode)).await;
        let resp = post(
            &format!("{}/v1/chat/completions", sc.url),
            &[("x-prefiller-host-port", &prefill.host_port())],
            br#"{"model":"m","messages":[]}"#,
        )
        .await;
        assert_eq!(resp.status(), status);
        assert_eq!(resp.headers()["x-engine"], "p");
        assert_eq!(&resp.bytes().await.unwrap()[..], br#"{"object":"error","code":1}"#);
        prefill.next().await;
        decode.assert_idle();
    }
}

#[tokio::test]
async fn prefill_server_error_falls_back_to_decode() {
    let mut prefill = Engine::start(|_| (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()).await;
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let raw = br#"{"model":"m", "messages":[], "max_tokens": 7, "stream": false}"#;
    let resp = post(
        &format!("{}/v1/chat/completions", sc.url),
        &[("x-prefiller-host-port", &prefill.host_port()), ("x-custom", "c")],
        raw,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "hello");
    prefill.next().await;
    let d = decode.next().await;
    assert_eq!(&d.body[..], &raw[..]);
    assert_eq!(d.header("x-custom"), Some("c"));
    assert_no_routing_headers(&d);
}

#[tokio::test]
async fn prefill_unreachable_falls_back_to_decode() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut decode = Engine::start(decode_json).await;
    let sc = start_sidecar(config(&decode)).await;
    let raw = br#"{"model":"m","prompt":"x","max_tokens":3}"#;
    let resp = post(&format!("{}/v1/completions", sc.url), &[("x-prefiller-host-port", &dead)], raw).await;
    assert_eq!(resp.status(), 200);
    let d = decode.next().await;
    assert_eq!(&d.body[..], &raw[..]);
}

#[tokio::test]
async fn prefill_timeout_falls_back_to_decode() {
    // A prefiller that accepts the connection and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let (held_tx, mut held_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((sock, _)) = silent.accept().await {
            let _ = held_tx.send(sock);
        }
    });
    let mut decode = Engine::start(decode_json).await;
    let mut cfg = config(&decode);
    cfg.prefill_timeout = Duration::from_millis(300);
    let sc = start_sidecar(cfg).await;
    let raw = br#"{"model":"m","prompt":"x"}"#;
    let resp = post(&format!("{}/v1/completions", sc.url), &[("x-prefiller-host-port", &silent_addr)], raw).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&decode.next().await.body[..], &raw[..]);
    assert!(tokio::time::timeout(WAIT, held_rx.recv()).await.unwrap().is_some());
}

#[tokio::test]
async fn streaming_decode_passes_through_chunk_by_chunk() {
    let mut prefill = Engine::start(prefill_ok).await;
    let (chunk_tx, chunk_rx) = mpsc::unbounded_channel::<Bytes>();
    let chunk_rx = Mutex::new(Some(chunk_rx));
    let mut decode =
        Engine::start(move |_| {
            let rx = chunk_rx.lock().unwrap().take().unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
            });
            ([("content-type", "text/event-stream")], Body::from_stream(stream)).into_response()
        })
        .await;
    let sc = start_sidecar(config(&decode)).await;
    let resp = post(
        &format!("{}/v1/chat/completions", sc.url),
        &[("x-prefiller-host-port", &prefill.host_port())],
        br#"{"model":"m","messages":[],"stream":true}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    prefill.next().await;
    assert_eq!(decode.next().await.json()["stream"], true);
    let mut stream = resp.bytes_stream();
    let mut next = async || tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();

    let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
    chunk_tx.send(Bytes::from_static(first.as_bytes())).unwrap();
    assert_eq!(next().await, first.as_bytes());
    // A line split over two chunks comes out whole once complete.
    chunk_tx.send(Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":")).unwrap();
    chunk_tx.send(Bytes::from_static(b"\"b\"}}]}\n\n")).unwrap();
    assert_eq!(next().await, &b"data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n"[..]);
    chunk_tx.send(Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12}}\n\n")).unwrap();
    let usage = next().await;
    let usage: Value = serde_json::from_slice(usage.strip_prefix(b"data: ").unwrap().trim_ascii()).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    chunk_tx.send(Bytes::from_static(b"data: [DONE]\n\n")).unwrap();
    assert_eq!(next().await, &b"data: [DONE]\n\n"[..]);
    drop(chunk_tx);
    assert!(tokio::time::timeout(WAIT, stream.next()).await.unwrap().is_none());
}

#[tokio::test]
async fn health_and_other_paths_are_proxied() {
    let mut decode = Engine::start(|r| match r.path.as_str() {
        "/v1/models?x=1" => ([("x-engine", "d")], r#"{"object":"list","data":[{"id":"m"}]}"#).into_response(),
        _ => (StatusCode::IM_A_TEAPOT, r.body.clone()).into_response(),
    })
    .await;
    let sc = start_sidecar(config(&decode)).await;

    let resp = client().get(format!("{}/health", sc.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    decode.assert_idle();

    let resp = client().get(format!("{}/v1/models?x=1", sc.url)).header("x-a", "b").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-engine"], "d");
    assert_eq!(&resp.bytes().await.unwrap()[..], br#"{"object":"list","data":[{"id":"m"}]}"#);
    let r = decode.next().await;
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/models?x=1"));
    assert_eq!(r.header("x-a"), Some("b"));

    // Other methods on P/D paths, and other paths, go through unchanged.
    let resp = client().get(format!("{}/v1/chat/completions", sc.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(decode.next().await.method, "GET");
    let resp = post(&format!("{}/tokenize", sc.url), &[("x-prefiller-host-port", "10.1.1.1:1")], b"abc").await;
    assert_eq!(resp.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"abc");
    let r = decode.next().await;
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/tokenize"));
}

#[tokio::test]
async fn ssrf_guard_refuses_unlisted_targets() {
    let mut prefill = Engine::start(prefill_ok).await;
    let mut decode = Engine::start(decode_json).await;
    let body = br#"{"model":"m","messages":[]}"#;
    for allow in [vec!["10.1.2.3".to_string()], vec![format!("127.0.0.1:{}", prefill.addr.port() + 1)]] {
        let mut cfg = config(&decode);
        cfg.allowed_prefillers = Some(allow);
        let sc = start_sidecar(cfg).await;
        let resp =
            post(&format!("{}/v1/chat/completions", sc.url), &[("x-prefiller-host-port", &prefill.host_port())], body)
                .await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.text().await.unwrap(), format!("{}\n", sidecar::SSRF_FORBIDDEN));
        prefill.assert_idle();
        decode.assert_idle();
    }
    for allow in ["127.0.0.1".to_string(), prefill.host_port()] {
        let mut cfg = config(&decode);
        cfg.allowed_prefillers = Some(vec!["10.1.2.3".into(), allow]);
        let sc = start_sidecar(cfg).await;
        let resp =
            post(&format!("{}/v1/chat/completions", sc.url), &[("x-prefiller-host-port", &prefill.host_port())], body)
                .await;
        assert_eq!(resp.status(), 200);
        prefill.next().await;
        decode.next().await;
    }
}

#[tokio::test]
async fn cached_tokens_from_prefill_missing_means_zero() {
    let mut prefill = Engine::start(|_| {
        axum::Json(json!({"choices": [], "usage": {"prompt_tokens": 3, "prompt_tokens_details": null},
                          "kv_transfer_params": nixl_params()}))
        .into_response()
    })
    .await;
    let mut decode = Engine::start(|_| {
        axum::Json(json!({"usage": {"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}}}))
            .into_response()
    })
    .await;
    let sc = start_sidecar(config(&decode)).await;
    let resp = post(
        &format!("{}/v1/completions", sc.url),
        &[("x-prefiller-host-port", &prefill.host_port())],
        br#"{"model":"m","prompt":"x"}"#,
    )
    .await;
    let answer: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    prefill.next().await;
    decode.next().await;
}

#[tokio::test]
async fn bad_json_and_decoder_down() {
    let mut prefill = Engine::start(prefill_ok).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let sc = start_sidecar(SidecarConfig::new(format!("http://{dead}"))).await;
    let url = format!("{}/v1/chat/completions", sc.url);
    let resp = post(&url, &[("x-prefiller-host-port", &prefill.host_port())], b"not json").await;
    assert_eq!(resp.status(), 400);
    let err: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(err["type"], "BadRequestError");
    prefill.assert_idle();

    let resp = post(&url, &[], br#"{"model":"m"}"#).await;
    assert_eq!(resp.status(), 503);
    let err: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(err["type"], "ServiceUnavailable");
}

#[test]
fn connector_names_and_schemes() {
    assert_eq!("nixlv2".parse::<Connector>().unwrap(), Connector::Nixlv2);
    let err = "shared-storage".parse::<Connector>().unwrap_err().to_string();
    assert!(err.contains("shared-storage") && err.contains("supported: nixlv2"), "{err}");
    let mut cfg = SidecarConfig::new("http://127.0.0.1:1");
    cfg.prefill_scheme = "ftp".into();
    assert!(sidecar::router(cfg).is_err());
}
