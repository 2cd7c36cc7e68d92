//! llm-d-router's split precise-prefix pipeline: `token-producer` (vLLM's render API) →
//! `precise-prefix-cache-producer` (KV events, per endpoint or on one bound socket) →
//! `prefix-cache-scorer`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use llmd_kvcache::{BlockHash, BlockStored, ExternalBlockHash, KvEvent, KvEventBatch};
use llmd_scheduler::picker::{EndpointPicker, PickerConfig};
use llmd_scheduler::{Endpoint, ManualClock, PluginRegistry, Role, Scheduler, SchedulerConfig, datastore};
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A render server like `vllm launch render`: completions answer an array, chat one
/// object; ids 1..=n for a prompt of n characters (chat: of its messages' contents).
/// Records each body it gets.
async fn render_server(seen: UnboundedSender<(String, Value)>) -> String {
    fn ids(n: usize) -> Vec<u32> {
        (1..=n as u32).collect()
    }
    let s1 = seen.clone();
    let app = axum::Router::new()
        .route(
            "/v1/completions/render",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let seen = s1.clone();
                async move {
                    let n = body["prompt"].as_str().map_or(0, str::len);
                    let _ = seen.send(("completions".into(), body));
                    axum::Json(json!([{"request_id": "cmpl-x", "token_ids": ids(n), "features": null}]))
                }
            }),
        )
        .route(
            "/v1/chat/completions/render",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let seen = seen.clone();
                async move {
                    let n = body["messages"]
                        .as_array()
                        .map_or(0, |ms| ms.iter().map(|m| m["content"].as_str().map_or(0, str::len)).sum());
                    let _ = seen.send(("chat".into(), body));
                    axum::Json(json!({"request_id": "chatcmpl-x", "token_ids": ids(n)}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A peer that accepts and never answers.
async fn silent() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

/// The split pipeline over endpoints `a` (127.0.0.1:8000) and `b` (127.0.0.2:8000),
/// tokens from `render`, blocks of 4 tokens; `events` adds to kvEventsConfig.
fn picker(render: &str, timeout: &str, events: &str) -> Arc<EndpointPicker> {
    let yaml = format!(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n\
         - type: token-producer\n  parameters:\n    modelName: base-model\n    vllm: {{url: \"{render}\", timeout: {timeout}}}\n\
         - type: endpoint-notification-source\n\
         - type: precise-prefix-cache-producer\n  parameters:\n    tokenProcessorConfig: {{blockSizeTokens: 4}}\n    kvEventsConfig: {{{events}}}\n\
         - type: prefix-cache-scorer\n  parameters: {{prefixMatchInfoProducerName: precise-prefix-cache-producer}}\n\
         - type: max-score-picker\n\
         dataLayer:\n  sources:\n  - pluginRef: endpoint-notification-source\n    extractors:\n    - pluginRef: precise-prefix-cache-producer\n\
         schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: prefix-cache-scorer\n  - pluginRef: max-score-picker\n"
    );
    let config = SchedulerConfig::from_yaml(&yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    store.upsert(Endpoint::new("a", "127.0.0.1:8000", Role::Both));
    store.upsert(Endpoint::new("b", "127.0.0.2:8000", Role::Both));
    EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None)
}

fn stored(tokens: Vec<u32>) -> KvEventBatch {
    let hashes = tokens
        .chunks(4)
        .enumerate()
        .map(|(i, _)| ExternalBlockHash::Bytes(BlockHash::from_bytes(&[i as u8 + 1; 32]).unwrap()))
        .collect();
    let ev = KvEvent::BlockStored(BlockStored {
        block_hashes: hashes,
        token_ids: tokens,
        block_size: 4,
        ..Default::default()
    });
    KvEventBatch { ts: 0.0, events: vec![ev], data_parallel_rank: None }
}

async fn next(rx: &mut UnboundedReceiver<(String, Value)>) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn tokens_come_from_the_render_api_and_blocks_from_kv_events() {
    let (tx, mut rx) = unbounded_channel();
    let p = picker(&render_server(tx).await, "5s", "");
    let h = BTreeMap::from([("x-request-id".to_string(), "r1".to_string())]);
    // Completions: the body goes to the render route with the base model stamped in.
    let body = json!({"model": "my-lora", "prompt": "0123456789ab", "max_tokens": 3});
    let req = p.parse_request_async("/v1/completions", &h, &body).await.unwrap();
    assert_eq!(req.token_ids, Some((1..=12).collect::<Vec<u32>>()));
    let (route, sent) = next(&mut rx).await;
    assert_eq!((route.as_str(), &sent["model"], &sent["max_tokens"]), ("completions", &json!("base-model"), &json!(3)));
    // Chat goes to the chat route.
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let req = p.parse_request_async("/v1/chat/completions", &h, &chat).await.unwrap();
    assert_eq!(req.token_ids, Some(vec![1, 2, 3, 4, 5]));
    assert_eq!(next(&mut rx).await.0, "chat");
    // Ids the client sent need no render call.
    let req = p.parse_request_async("/v1/completions", &h, &json!({"prompt": [9, 9]})).await.unwrap();
    assert_eq!(req.token_ids, Some(vec![9, 9]));
    assert!(rx.try_recv().is_err(), "no render call for token ids");

    // Endpoint b reports the prompt's first two blocks: the prefix-cache-scorer, reading
    // the producer's index, sends the prompt there.
    let consumers = p.scheduler().config().data_layer.consumers();
    assert_eq!(consumers.len(), 1, "one KV-event source feeds the producer, not two");
    consumers[0].apply("b", Some(0), &stored((1..=8).collect()));
    let req = p.parse_request_async("/v1/completions", &h, &body).await.unwrap();
    let picked = p.pick_request(&req, &Default::default()).unwrap();
    assert_eq!(picked.destination_address(), Some("127.0.0.2:8000"));
}

#[tokio::test]
async fn a_render_that_fails_or_times_out_routes_without_token_ids() {
    let p = picker(&silent().await, "200ms", "");
    let body = json!({"prompt": "abc"});
    let started = std::time::Instant::now();
    let req = p.parse_request_async("/v1/completions", &BTreeMap::new(), &body).await.unwrap();
    assert_eq!(req.token_ids, None);
    assert!(started.elapsed() < Duration::from_secs(5), "the render timeout holds");
    assert!(p.metrics_text().unwrap().contains("llmd_epp_token_render_failures_total 1"));
    // Nothing listening at all: the same, at once.
    let p = picker("http://127.0.0.1:9", "5s", "");
    let req = p.parse_request_async("/v1/completions", &BTreeMap::new(), &body).await.unwrap();
    assert_eq!(req.token_ids, None);
    assert!(p.pick_request(&req, &Default::default()).is_ok(), "the request is still routed");
    let metrics = p.metrics_text().unwrap();
    assert!(metrics.contains("llmd_epp_token_render_failures_total 1"), "{metrics}");
}

#[tokio::test]
async fn engines_publishing_to_one_bound_socket_are_told_apart_by_topic() {
    use zeromq::{Socket, SocketSend};
    // A free port for the picker to bind.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let zmq = format!("tcp://127.0.0.1:{port}");
    let (tx, _rx) = unbounded_channel();
    let p = picker(&render_server(tx).await, "5s", &format!("zmqEndpoint: \"{zmq}\", discoverPods: false"));
    p.start();
    let consumer = p.scheduler().config().data_layer.consumers()[0].clone();
    let mut publisher = zeromq::PubSocket::new();
    // The picker binds in the background: connect once it is there.
    let connect = async {
        loop {
            if publisher.connect(&zmq).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connect).await.unwrap();
    // Subscriptions travel after the connection: publish until the events land.
    let deliver = async {
        for seq in 0u64.. {
            let frames =
                llmd_kvcache::frames::encode_message(b"kv@127.0.0.2@base-model", seq, &stored((1..=8).collect()))
                    .unwrap();
            let [topic, seq, payload] = frames;
            let mut msg = zeromq::ZmqMessage::from(topic);
            msg.push_back(seq.into());
            msg.push_back(payload.into());
            publisher.send(msg).await.unwrap();
            if consumer.endpoint_blocks("b") > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), deliver).await.expect("events never arrived");
    assert_eq!(consumer.endpoint_blocks("a"), 0, "the topic names b's host");
    p.shutdown();
}
