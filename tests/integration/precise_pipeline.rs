//! llm-d-router's split precise-prefix pipeline against real llmd engines: the
//! `token-producer` asks an engine's `/v1/*/render` for a prompt's ids, the
//! `precise-prefix-cache-producer` indexes the KV events the engines publish, and the
//! `prefix-cache-scorer` sends a repeated prompt back to the engine that holds it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use llmd::engine::server::{KvEventsConfig, Server, ServerConfig};
use llmd::engine::{EngineBuilder, KvDtype};
use llmd::scheduler::picker::{EndpointPicker, PickerConfig};
use llmd::scheduler::{Endpoint, PluginRegistry, Role, Scheduler, SchedulerConfig, SystemClock, datastore};
use serde_json::json;

/// An engine with blocks of 16 tokens publishing KV events on loopback; its
/// `host:port` and event stream.
async fn engine() -> (String, String) {
    let built = EngineBuilder::builtin()
        .seed(1)
        .num_blocks(256)
        .block_size(16)
        .max_model_len(1024)
        .kv_dtype(KvDtype::F32)
        .build()
        .unwrap();
    let cfg = ServerConfig { kv_events: Some(KvEventsConfig::on_host("127.0.0.1")), ..Default::default() };
    let server = Server::start(built.engine, built.template, cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let events = server.kv_events_endpoint().unwrap().to_string();
    tokio::spawn(server.serve(listener, std::future::pending()));
    (addr, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_rendered_by_the_engine_finds_the_engine_holding_its_blocks() {
    let (a, a_events) = engine().await;
    let (b, b_events) = engine().await;
    let yaml = format!(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n\
         - type: token-producer\n  parameters: {{modelName: llmd-tiny, vllm: {{url: \"http://{a}\"}}}}\n\
         - type: endpoint-notification-source\n\
         - type: precise-prefix-cache-producer\n  parameters: {{tokenProcessorConfig: {{blockSizeTokens: 16}}}}\n\
         - type: prefix-cache-scorer\n  parameters: {{prefixMatchInfoProducerName: precise-prefix-cache-producer}}\n\
         - type: queue-scorer\n\
         dataLayer:\n  sources:\n  - pluginRef: endpoint-notification-source\n    extractors: [{{pluginRef: precise-prefix-cache-producer}}]\n\
         schedulingProfiles:\n- name: default\n  plugins:\n  - {{pluginRef: prefix-cache-scorer, weight: 10}}\n  - {{pluginRef: queue-scorer}}\n"
    );
    let config = SchedulerConfig::from_yaml(&yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(SystemClock::default()));
    store.upsert(Endpoint::new("a", a.clone(), Role::Both).with_kv_events(a_events));
    store.upsert(Endpoint::new("b", b.clone(), Role::Both).with_kv_events(b_events));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    picker.start();

    // Engine b serves a chat request: its KV cache now holds the prompt's blocks.
    let chat = json!({"model": "llmd-tiny", "max_tokens": 2, "temperature": 0,
        "messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. ".repeat(4)}]});
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("http://{b}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat.to_string())
        .send()
        .await
        .unwrap();
    let served: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let prompt_tokens = served["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens >= 32, "{prompt_tokens} tokens: at least two full blocks");

    // The picker's ids come from engine a's render route: the same as b ran.
    let headers = BTreeMap::new();
    let req = picker.parse_request_async("/v1/chat/completions", &headers, &chat).await.unwrap();
    assert_eq!(req.token_ids.as_ref().map(|t| t.len() as u64), Some(prompt_tokens));
    let consumer = picker.scheduler().config().data_layer.consumers()[0].clone();
    let arrived = async {
        while consumer.endpoint_blocks("b") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), arrived).await.expect("b's KV events never arrived");
    assert_eq!(consumer.endpoint_blocks("a"), 0);
    let prefix_score = |picked: &llmd::scheduler::picker::Picked| {
        let dest = picked.result.destination().unwrap();
        dest.breakdown.iter().find(|s| s.scorer == "prefix-cache-scorer").unwrap().raw
    };
    for _ in 0..3 {
        let picked = picker.pick_request(&req, &Default::default()).unwrap();
        assert_eq!(picked.destination_address(), Some(b.as_str()), "the prompt's blocks are on b");
        let held = prefix_score(&picked);
        assert!(held > 0.9, "all full blocks matched: {held}");
    }
    // Negative control: the estimate backend's pseudo-tokens (packed bytes) are not the
    // engine's, so the same prompt matches nothing.
    let mut estimate = req.clone();
    estimate.token_ids = None;
    let estimated = json!({"prompt": chat["messages"][0]["content"]});
    estimate.token_ids = Some(
        llmd::scheduler::tokenproducer::TokenProducer::from_params(&json!({}))
            .map(|p| match p.start("/v1/completions", &headers, &estimated) {
                llmd::scheduler::tokenproducer::Step::Done(ids) => ids.unwrap(),
                other => panic!("{other:?}"),
            })
            .unwrap(),
    );
    let picked = picker.pick_request(&estimate, &Default::default()).unwrap();
    assert_eq!(prefix_score(&picked), 0.0);
    picker.shutdown();
}
