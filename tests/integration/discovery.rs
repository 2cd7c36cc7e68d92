//! Endpoints that come and go at run time: an endpoints file rewritten while load flows
//! through the gateway.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use llmd::cluster::LocalCluster;
use llmd::scheduler::gateway::GatewayConfig;
use llmd::scheduler::{Endpoint, FileDiscovery, PluginRegistry, presets};
use serde_json::json;

use crate::common::{eventually, sim};

fn file_text(eps: &[&Endpoint]) -> String {
    let mut s = String::from("endpoints:\n");
    for e in eps {
        let (host, port) = e.address.rsplit_once(':').unwrap();
        s += &format!(
            "- name: {}\n  address: \"{host}\"\n  port: \"{port}\"\n  kvEvents: {}\n",
            e.id,
            e.kv_events.as_deref().unwrap()
        );
    }
    s
}

async fn gateway_metrics(client: &reqwest::Client, cluster: &LocalCluster) -> String {
    client.get(format!("http://{}/metrics", cluster.addr)).send().await.unwrap().text().await.unwrap()
}

fn endpoint_blocks(metrics: &str, id: &str) -> Option<f64> {
    let prefix = format!("llmd_epp_kv_index_endpoint_blocks{{endpoint=\"{id}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoints_file_adds_and_removes_endpoints_while_load_flows() {
    let reg = PluginRegistry::with_builtins();
    let cluster = LocalCluster::start_with(
        (0..3).map(|_| sim()).collect(),
        presets::preset("precise-prefix", &reg).unwrap(),
        3,
        "127.0.0.1:0",
        false,
        // The test reads where each request went.
        GatewayConfig { expose_destination: true, ..Default::default() },
    )
    .await
    .unwrap();
    let [r0, r1, r2] = [&cluster.endpoints[0], &cluster.endpoints[1], &cluster.endpoints[2]];
    let dir = std::env::temp_dir().join(format!("llmd-endpoints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("endpoints.yaml");
    std::fs::write(&path, file_text(&[r0, r1])).unwrap();
    let first =
        cluster.picker.run_discovery(Box::new(FileDiscovery::new(&path, Some(Duration::from_millis(20))))).unwrap();
    assert_eq!(first.added, 2);

    // Load: four clients, distinct prompts, until told to stop (bounded).
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{}/v1/completions", cluster.addr);
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, url) = (stop.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen = Vec::new();
            for i in 0..1500 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let started = Instant::now();
                let prompt = format!("client {c} request {i}: ") + &"tokens for the index ".repeat(4);
                let body = json!({"prompt": prompt, "max_tokens": 2}).to_string();
                let r = client.post(&url).header("content-type", "application/json").body(body).send().await.unwrap();
                let dest = r.headers()["x-gateway-destination-endpoint"].to_str().unwrap().to_string();
                let status = r.status().as_u16();
                r.bytes().await.unwrap();
                seen.push((started, dest, status));
            }
            seen
        }));
    }
    let client = reqwest::Client::new();
    // Both listed replicas get traffic and their KV events reach the index.
    assert!(
        eventually(Duration::from_secs(20), async || {
            let m = gateway_metrics(&client, &cluster).await;
            endpoint_blocks(&m, &r0.id).unwrap_or(0.0) > 0.0 && endpoint_blocks(&m, &r1.id).unwrap_or(0.0) > 0.0
        })
        .await,
        "the index never learned both replicas' blocks"
    );

    // Replace replica-0 with replica-2 in the file, under load.
    std::fs::write(&path, file_text(&[r1, r2])).unwrap();
    let store = cluster.picker.datastore().clone();
    assert!(
        eventually(Duration::from_secs(10), async || store.get(&r0.id).is_none() && store.get(&r2.id).is_some()).await,
        "the file change was never applied"
    );
    let removed_at = Instant::now();
    // Let load run on the new set for a while, then stop.
    let after = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), async || {
            let m = gateway_metrics(&client, &cluster).await;
            endpoint_blocks(&m, &r2.id).unwrap_or(0.0) > 0.0 && after.elapsed() > Duration::from_millis(300)
        })
        .await,
        "the new replica never got traffic"
    );
    stop.store(true, Ordering::SeqCst);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let late_count = all.iter().filter(|(t, _, _)| *t >= removed_at).count();
    eprintln!("{} requests, {late_count} after the change", all.len());
    assert!(all.iter().all(|(_, _, s)| *s == 200), "every request succeeded across the change");
    let late: Vec<&(Instant, String, u16)> = all.iter().filter(|(t, _, _)| *t >= removed_at).collect();
    assert!(late.len() >= 10, "load kept flowing after the change: {} requests", late.len());
    assert!(late.iter().all(|(_, d, _)| *d != r0.address), "a request reached the removed endpoint");
    assert!(late.iter().any(|(_, d, _)| *d == r2.address), "the added endpoint got traffic");
    assert!(all.iter().any(|(t, d, _)| *t < removed_at && *d == r0.address), "replica-0 served before removal");
    // Its index entries are gone (the per-endpoint gauge drops it), the others' stay.
    let m = gateway_metrics(&client, &cluster).await;
    assert_eq!(endpoint_blocks(&m, &r0.id), None, "{m}");
    assert!(endpoint_blocks(&m, &r1.id).unwrap() > 0.0);
    cluster.shutdown().await;
    std::fs::remove_dir_all(&dir).ok();
}
