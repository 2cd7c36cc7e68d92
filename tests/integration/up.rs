//! `llmd up` end to end: engine replicas behind the gateway on loopback.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use llmd::cluster::{LocalCluster, Replica};
use llmd::engine::server::{Server, ServerConfig};
use llmd::engine::{LatencyModel, builtin};
use llmd::scheduler::gateway::{Gateway, GatewayConfig};
use llmd::scheduler::picker::{EndpointPicker, PickerConfig, PromptTokenizer};
use llmd::scheduler::{Endpoint, PluginRegistry, Role, Scheduler, SystemClock, datastore, presets};
use serde_json::{Value, json};

use crate::common::{openai_client_check, sim};

/// A picker over a fixed set of endpoints with a built-in routing.
fn picker(routing: &str, eps: Vec<Endpoint>, tokenizer: Option<Arc<dyn PromptTokenizer>>) -> Arc<EndpointPicker> {
    let reg = PluginRegistry::with_builtins();
    let store = datastore(Arc::new(SystemClock::default()));
    for e in eps {
        store.upsert(e);
    }
    EndpointPicker::new(
        Scheduler::new(presets::preset(routing, &reg).unwrap(), 0),
        store,
        PickerConfig::default(),
        tokenizer,
    )
}

fn tiny() -> Replica {
    Replica::builtin(256).unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, String) {
    post_raw(client, url, body.to_string()).await
}

async fn post_raw(client: &reqwest::Client, url: String, body: String) -> (u16, String) {
    let r = client.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_chat_and_streams_through_replicas() {
    let reg = PluginRegistry::with_builtins();
    let cluster = LocalCluster::start(vec![tiny(), tiny()], presets::preset("prefix", &reg).unwrap(), 0, "127.0.0.1:0")
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://{}", cluster.addr);
    let (status, body) = post(
        &client,
        format!("{base}/v1/chat/completions"),
        json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 6);
    let (status, body) =
        post(&client, format!("{base}/v1/completions"), json!({"prompt": "Once", "max_tokens": 4, "stream": true}))
            .await;
    assert_eq!(status, 200);
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // A body that is not JSON at all (`json!("{")` would send the valid JSON string
    // "{"), and valid JSON that is not a request object: both are the client's fault.
    for bad in ["{", "{\"prompt\": \"x\",", "\"{\"", "[1, 2]"] {
        let (status, body) = post_raw(&client, format!("{base}/v1/completions"), bad.into()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{bad}: not JSON ({e}): {body}"));
        assert_eq!(v["error"]["code"], 400, "{bad}: {v}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoints_are_retried_elsewhere_and_none_left_is_a_503() {
    let r = tiny();
    let server = Server::start(r.engine, r.template, ServerConfig::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    // A port bound but never listened on: connecting is refused, and as long as the
    // socket lives no other test can bind the port (a listener dropped here could see
    // its port handed to a parallel test's server).
    let dead_socket = tokio::net::TcpSocket::new_v4().unwrap();
    dead_socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = dead_socket.local_addr().unwrap().to_string();
    let eps = vec![Endpoint::new("a-dead", dead.clone(), Role::Both), Endpoint::new("b-live", live, Role::Both)];
    let gw = Gateway::new(picker("round-robin", eps, None), GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { gw.serve(listener, std::future::pending()).await });
    let client = reqwest::Client::new();
    // Round robin tries a-dead first; the request still succeeds on b-live.
    let (status, body) = post(&client, format!("{base}/v1/completions"), json!({"prompt": "x", "max_tokens": 2})).await;
    assert_eq!(status, 200, "{body}");
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("llmd_epp_retries_total 1"), "{metrics}");

    let only_dead = vec![Endpoint::new("a-dead", dead, Role::Both)];
    let gw = Gateway::new(picker("load", only_dead, None), GatewayConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { gw.serve(listener, std::future::pending()).await });
    let (status, body) = post(&client, format!("{base}/v1/completions"), json!({"prompt": "x"})).await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("a-dead"), "{v}");
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
    drop(dead_socket);
}

/// Sums a series over every replica's `/metrics`.
async fn sum_metric(client: &reqwest::Client, cluster: &LocalCluster, series: &str) -> f64 {
    let mut total = 0.0;
    for r in &cluster.replicas {
        let text = client.get(format!("http://{r}/metrics")).send().await.unwrap().text().await.unwrap();
        total +=
            text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok())).unwrap_or(0.0);
    }
    total
}

/// Runs a shared-prefix workload; returns (prefix-cache hit rate, mean TTFT seconds).
async fn shared_prefix_run(routing: &str) -> (f64, f64) {
    let reg = PluginRegistry::with_builtins();
    let replicas = (0..8).map(|_| sim()).collect();
    // Routing alone: no hot-prefix warm-ups, whose misses and first tokens would count
    // in the replicas' figures.
    let picker = PickerConfig { replication: None, ..Default::default() };
    let opts = llmd::cluster::ClusterOptions { picker, ..Default::default() };
    let cluster = LocalCluster::start_opts(replicas, presets::preset(routing, &reg).unwrap(), 7, "127.0.0.1:0", opts)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/completions", cluster.addr);
    // Three long system prompts ("tenants"; three, so round robin over eight replicas
    // does not line tenants up with replicas by accident), twelve questions each.
    let docs: Vec<String> =
        (0..3).map(|t| format!("Tenant {t} policy: ") + &"clause about data handling; ".repeat(24)).collect();
    for q in 0..12 {
        for (t, d) in docs.iter().enumerate() {
            let body = json!({"prompt": format!("{d} Question {q} from tenant {t}?"), "max_tokens": 4});
            let (status, text) = post(&client, url.clone(), body).await;
            assert_eq!(status, 200, "{text}");
        }
    }
    let labels = "{model_name=\"llmd-sim\",engine=\"0\"}";
    let hits = sum_metric(&client, &cluster, &format!("vllm:prefix_cache_hits_total{labels}")).await;
    let queries = sum_metric(&client, &cluster, &format!("vllm:prefix_cache_queries_total{labels}")).await;
    let ttft_sum = sum_metric(&client, &cluster, &format!("vllm:time_to_first_token_seconds_sum{labels}")).await;
    let ttft_n = sum_metric(&client, &cluster, &format!("vllm:time_to_first_token_seconds_count{labels}")).await;
    let gw = client.get(format!("http://{}/metrics", cluster.addr)).send().await.unwrap().text().await.unwrap();
    if routing == "precise-prefix" {
        // The index really was fed by the replicas' KV events.
        let blocks: f64 = gw
            .lines()
            .find_map(|l| l.strip_prefix("llmd_epp_kv_index_blocks ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0);
        assert!(blocks > 0.0, "{gw}");
    }
    cluster.shutdown().await;
    assert_eq!(ttft_n, 36.0);
    (hits / queries, ttft_sum / ttft_n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_routing_beats_round_robin_on_a_shared_prefix_workload() {
    let (rr_hits, rr_ttft) = shared_prefix_run("round-robin").await;
    let (px_hits, px_ttft) = shared_prefix_run("prefix").await;
    let (pp_hits, pp_ttft) = shared_prefix_run("precise-prefix").await;
    eprintln!("round-robin:    hit rate {rr_hits:.3}, mean TTFT {:.1} ms", rr_ttft * 1e3);
    eprintln!("prefix:         hit rate {px_hits:.3}, mean TTFT {:.1} ms", px_ttft * 1e3);
    eprintln!("precise-prefix: hit rate {pp_hits:.3}, mean TTFT {:.1} ms", pp_ttft * 1e3);
    for (name, hits, ttft) in [("prefix", px_hits, px_ttft), ("precise-prefix", pp_hits, pp_ttft)] {
        assert!(hits > rr_hits, "{name} routing should hit the cache more than round robin");
        assert!(ttft < rr_ttft, "{name} routing should reach the first token sooner than round robin");
    }
}

/// The README's main job: `llmd up`, then the `openai` client against the printed URL.
/// Needs the interop venv (`openai`), so ignored unless run by `scripts/test.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: run scripts/test.sh, or set LLMD_PYTHON"]
async fn the_openai_client_works_through_the_gateway() {
    let reg = PluginRegistry::with_builtins();
    let cluster = LocalCluster::start(vec![tiny(), tiny()], presets::preset("prefix", &reg).unwrap(), 0, "127.0.0.1:0")
        .await
        .unwrap();
    openai_client_check(&format!("http://{}/v1", cluster.addr), builtin::BUILTIN_MODEL_NAME).await;
    cluster.shutdown().await;
}

/// The precise index, fed only by the replicas' own KV events over ZMQ, knows which
/// replica holds which prompt.
/// Serves `replicas` on loopback, each publishing KV events, behind a picker with the
/// `routing` preset (started); the endpoints and what stops their servers.
async fn serve_with_events(
    routing: &str,
    replicas: Vec<Replica>,
) -> (Arc<EndpointPicker>, Vec<Endpoint>, Vec<tokio::sync::oneshot::Sender<()>>) {
    use llmd::engine::server::KvEventsConfig;
    use llmd::openai::PromptRenderer;

    let mut endpoints = Vec::new();
    let mut stops = Vec::new();
    let mut tokenizer: Option<Arc<dyn PromptTokenizer>> = None;
    for (i, r) in replicas.into_iter().enumerate() {
        if tokenizer.is_none() {
            tokenizer =
                Some(Arc::new(PromptRenderer { tokenizer: r.engine.tokenizer(), template: r.template.clone() }));
        }
        let events = KvEventsConfig { endpoint: "tcp://127.0.0.1:0".into(), topic: String::new() };
        let server =
            Server::start(r.engine, r.template, ServerConfig { kv_events: Some(events), ..Default::default() })
                .await
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut ep = Endpoint::new(format!("replica-{i}"), listener.local_addr().unwrap().to_string(), Role::Both);
        ep.kv_events = server.kv_events_endpoint().map(String::from);
        endpoints.push(ep);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        tokio::spawn(server.serve(listener, async move {
            let _ = stopped.await;
        }));
    }
    let gw = picker(routing, endpoints.clone(), tokenizer);
    gw.start();
    (gw, endpoints, stops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_index_learns_which_replica_holds_which_prefix() {
    let (gw, endpoints, stops) = serve_with_events("precise-prefix", vec![tiny(), tiny()]).await;
    let client = reqwest::Client::new();
    let prompts =
        ["Tenant zero: ".to_string() + &"alpha ".repeat(30), "Tenant one: ".to_string() + &"omega ".repeat(30)];
    // Each prompt goes straight to its own replica, bypassing the gateway; repeat until
    // the subscribers have joined (ZMQ drops what is published before that), bounded.
    for round in 0..50 {
        for (ep, p) in endpoints.iter().zip(&prompts) {
            let (status, _) =
                post(&client, format!("http://{}/v1/completions", ep.address), json!({"prompt": p, "max_tokens": 1}))
                    .await;
            assert_eq!(status, 200);
        }
        let picks: Vec<String> = prompts
            .iter()
            .map(|p| {
                let pick = gw.pick("/v1/completions", &Default::default(), &json!({"prompt": p}), &Default::default());
                let d = pick.unwrap().result.destination().unwrap().clone();
                let raw = d.breakdown.iter().find(|b| b.scorer == "precise-prefix-cache-scorer").unwrap().raw;
                if raw > 0.9 { d.endpoint } else { String::new() }
            })
            .collect();
        if picks == ["replica-0", "replica-1"] {
            gw.shutdown();
            for s in stops {
                let _ = s.send(());
            }
            return;
        }
        assert!(round < 49, "index never reproduced the placement: {picks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A streamed chat request counts its prompt as pending work until the first token: the
/// engine sends nothing (not even the role chunk) before its prefill is done, and the
/// gateway releases the prompt's tokens at the first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_tokens_count_until_the_first_streamed_byte() {
    use futures_util::StreamExt;
    let reg = PluginRegistry::with_builtins();
    // Default latency model: 160 µs a prompt token, so ~1 s of prefill for this prompt.
    let replica = Replica::simulated("llmd-sim", LatencyModel::default(), 2048).unwrap();
    let cluster =
        LocalCluster::start(vec![replica], presets::preset("load", &reg).unwrap(), 1, "127.0.0.1:0").await.unwrap();
    let body = json!({"messages": [{"role": "user", "content": "w".repeat(6000)}], "max_tokens": 2, "stream": true});
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{}/v1/chat/completions", cluster.addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let store = cluster.picker.datastore().clone();
    let load = store.get("replica-0").unwrap().inflight;
    assert_eq!(load.requests, 1);
    assert!(load.prompt_tokens > 0, "headers are back, the prefill is not: {load:?}");
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("assistant"), "the role comes with the first output");
    assert_eq!(store.get("replica-0").unwrap().inflight.prompt_tokens, 0, "released at the first byte");
    while stream.next().await.is_some() {}
    drop(stream);
    for _ in 0..200 {
        if store.get("replica-0").unwrap().inflight.requests == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.get("replica-0").unwrap().inflight.requests, 0, "released when the response ended");
    cluster.shutdown().await;
}

/// KV offloading end to end: a replica whose prefix was pushed out of its cache into
/// host memory still gets that prompt from the precise scorer (its CPU events, weighed
/// at llm-d's 0.8), and serves it from host memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offloaded_prefix_stays_routable_and_comes_back_from_host_memory() {
    use llmd::engine::offload::OffloadConfig;

    let offloading = Replica::builtin_with(256, Some(OffloadConfig::from_size_gib(0.25).unwrap())).unwrap();
    let (gw, endpoints, stops) = serve_with_events("precise-prefix", vec![offloading, tiny()]).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/completions", endpoints[0].address);
    let prompt = "Tenant zero's long system prompt: ".to_string() + &"alpha beta ".repeat(30);
    let score = |p: &str| {
        let pick = gw.pick("/v1/completions", &Default::default(), &json!({"prompt": p}), &Default::default());
        let d = pick.unwrap().result.destination().unwrap().clone();
        let raw = d.breakdown.iter().find(|b| b.scorer == "precise-prefix-cache-scorer").unwrap().raw;
        (d.endpoint, raw)
    };
    // Until the subscriber has joined (ZMQ drops what is published before), bounded.
    for round in 0.. {
        let (status, _) = post(&client, url.clone(), json!({"prompt": prompt, "max_tokens": 1})).await;
        assert_eq!(status, 200);
        let (ep, raw) = score(&prompt);
        if ep == "replica-0" && raw > 0.9 {
            break;
        }
        assert!(round < 49, "the index never learned the prefix");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Other prompts (16 of ~330 tokens) fill replica-0's 256 blocks of 16 tokens: the
    // prefix, freed first, goes to host memory.
    for i in 0..16 {
        let other = format!("Filler {i}: ") + &format!("gamma{i} delta ").repeat(30);
        let (status, _) = post(&client, url.clone(), json!({"prompt": other, "max_tokens": 1})).await;
        assert_eq!(status, 200);
    }
    // The index hears of the GPU eviction and the CPU store: the prompt still goes to
    // replica-0, with every block weighed as a host-memory one.
    for round in 0.. {
        let (ep, raw) = score(&prompt);
        if ep == "replica-0" && (raw - 0.8).abs() < 0.05 {
            break;
        }
        assert!(round < 100, "offloaded blocks not scored at the CPU weight: {ep} {raw}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = post(&client, url.clone(), json!({"prompt": prompt, "max_tokens": 1})).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 16 * 20, "served from host memory: {cached} cached tokens of {}", v["usage"]["prompt_tokens"]);
    gw.shutdown();
    for s in stops {
        let _ = s.send(());
    }
}
