//! `llmd up --pd`: prefill and decode replicas, a routing sidecar per decode replica and
//! the gateway with llm-d's P/D routing, in one process on loopback. Every request is
//! prefilled on one engine and decoded on the other, and answers exactly what one
//! engine answers alone (greedy), streamed or not; the openai client works through it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use llmd::cluster::{ClusterOptions, LocalCluster, PD_ROUTING, Replica};
use llmd::engine::builtin;
use llmd::scheduler::{PluginRegistry, SchedulerConfig, presets};
use serde_json::{Value, json};

use crate::common::{openai_client_check, sim};

fn tiny() -> Replica {
    Replica::builtin(256).unwrap()
}

async fn pd_cluster(replicas: Vec<Replica>, prefill: usize) -> LocalCluster {
    let reg = PluginRegistry::with_builtins();
    let cfg = SchedulerConfig::from_yaml(PD_ROUTING, "pd", &reg).unwrap();
    let opts = ClusterOptions { pd_prefill: Some(prefill), ..Default::default() };
    LocalCluster::start_opts(replicas, cfg, 0, "127.0.0.1:0", opts).await.unwrap()
}

async fn alone(replica: Replica) -> LocalCluster {
    let reg = PluginRegistry::with_builtins();
    LocalCluster::start(vec![replica], presets::preset("round-robin", &reg).unwrap(), 0, "127.0.0.1:0").await.unwrap()
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, String) {
    let r = client.post(url).header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A series' value in one replica's `/metrics` (a decode replica's through its sidecar).
async fn metric(client: &reqwest::Client, replica: std::net::SocketAddr, series: &str) -> f64 {
    let text = client.get(format!("http://{replica}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// The generated text of a JSON answer or an SSE stream.
fn answer_text(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let c = &v["choices"][0];
        return c["text"].as_str().or(c["message"]["content"].as_str()).unwrap_or_default().to_string();
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            let c = &v["choices"][0];
            c["text"].as_str().or(c["delta"]["content"].as_str()).map(String::from)
        })
        .collect()
}

const PROMPTS: [&str; 3] = [
    "Hi",
    "Prefill computes the prompt's keys and values once",
    "Prefill computes the prompt's keys and values once; the decode engine pulls them and generates \
     the answer without computing the prompt again, so long prompts stop stalling other decodes.",
];

async fn same_answers(pd: &LocalCluster, one: &LocalCluster, model: &str) -> usize {
    let client = reqwest::Client::new();
    let mut sent = 0;
    for prompt in PROMPTS {
        for stream in [false, true] {
            let body = json!({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0,
                              "ignore_eos": true, "stream": stream});
            let (s1, want) = post(&client, format!("http://{}/v1/completions", one.addr), &body).await;
            let (s2, got) = post(&client, format!("http://{}/v1/completions", pd.addr), &body).await;
            assert_eq!((s1, s2), (200, 200), "{got}");
            assert_eq!(answer_text(&got), answer_text(&want), "{prompt:?} stream={stream}");
            sent += 1;
        }
        let chat = json!({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 6,
                          "temperature": 0, "ignore_eos": true});
        let (_, want) = post(&client, format!("http://{}/v1/chat/completions", one.addr), &chat).await;
        let (status, got) = post(&client, format!("http://{}/v1/chat/completions", pd.addr), &chat).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(answer_text(&got), answer_text(&want), "chat {prompt:?}");
        sent += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_prefilled_on_one_engine_and_decoded_on_the_other() {
    let pd = pd_cluster(vec![tiny(), tiny()], 1).await;
    let one = alone(tiny()).await;
    let sent = same_answers(&pd, &one, builtin::BUILTIN_MODEL_NAME).await;
    let client = reqwest::Client::new();
    let (prefill, decode) = (pd.replicas[0], pd.replicas[1]);
    // The prefiller answered every prefill leg and every hold was pulled...
    let pulled = metric(&client, prefill, "llmd:kv_transfer_holds_ended_total{outcome=\"pulled\"}").await;
    assert_eq!(pulled, sent as f64);
    assert_eq!(metric(&client, prefill, "llmd:kv_transfer_holds").await, 0.0);
    // ...and the decoder wrote the blocks in rather than computing the prompts.
    assert_eq!(metric(&client, decode, "llmd:kv_transfer_loads_total{outcome=\"imported\"}").await, sent as f64);
    assert_eq!(metric(&client, decode, "llmd:kv_transfer_loads_total{outcome=\"recomputed\"}").await, 0.0);
    // All replicas run in this process: the blocks were read in place from shared memory.
    let pulled = metric(&client, decode, "llmd:kv_transfer_pulled_bytes_total").await;
    assert!(pulled > 0.0);
    assert_eq!(metric(&client, decode, "llmd:kv_transfer_pulled_in_place_bytes_total").await, pulled);
    pd.shutdown().await;
    one.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_replicas_take_part_and_shapes_are_checked() {
    let pd = pd_cluster(vec![sim(), sim(), sim()], 2).await;
    let one = alone(sim()).await;
    let sent = same_answers(&pd, &one, "llmd-sim").await;
    let client = reqwest::Client::new();
    let imported = metric(&client, pd.replicas[2], "llmd:kv_transfer_loads_total{outcome=\"imported\"}").await;
    assert_eq!(imported, sent as f64);
    pd.shutdown().await;
    one.shutdown().await;
    // No prefill or no decode replica: refused.
    for prefill in [0, 2] {
        let reg = PluginRegistry::with_builtins();
        let cfg = SchedulerConfig::from_yaml(PD_ROUTING, "pd", &reg).unwrap();
        let opts = ClusterOptions { pd_prefill: Some(prefill), ..Default::default() };
        let err = LocalCluster::start_opts(vec![sim(), sim()], cfg, 0, "127.0.0.1:0", opts).await.unwrap_err();
        assert!(err.to_string().contains("prefill"), "{err}");
    }
}

/// The acceptance check: `llmd up --pd 1:1` serves the official `openai` client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop venv: run scripts/test.sh, or set LLMD_PYTHON"]
async fn the_openai_client_works_through_up_pd() {
    let pd = pd_cluster(vec![tiny(), tiny()], 1).await;
    openai_client_check(&format!("http://{}/v1", pd.addr), builtin::BUILTIN_MODEL_NAME).await;
    let client = reqwest::Client::new();
    let imported = metric(&client, pd.replicas[1], "llmd:kv_transfer_loads_total{outcome=\"imported\"}").await;
    assert!(imported > 0.0, "the decode engine imported nothing");
    pd.shutdown().await;
}
