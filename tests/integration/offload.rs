//! KV offloading as a user runs it: `llmd serve --kv-offloading-size GiB
//! --kv-offloading-dir DIR`, killed with SIGKILL while it is writing offloaded blocks
//! to disk as fast as requests evict them, then started again on the same directory.
//! Every prompt then gets the tokens a server without offloading gives (greedy), blocks
//! written before the kill are served from disk, and none is served damaged: the files
//! a kill or a crash left damaged are dropped and their blocks computed again.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, eventually};

/// `llmd serve` with the built-in model on 40 blocks of 16 tokens (so almost every
/// request evicts), `extra` flags, on a free port; the process and its HTTP address.
fn serve(extra: &[String]) -> (common::Llmd, String) {
    let mut args: Vec<String> =
        ["serve", "--port", "0", "--num-blocks", "40", "--max-model-len", "512", "--no-kv-events"]
            .map(String::from)
            .to_vec();
    args.extend(extra.iter().cloned());
    let (proc, line) = common::start_llmd(&args, "llmd serve:").expect("llmd serve did not start");
    let http = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    (proc, http)
}

fn offloading(dir: &Path) -> Vec<String> {
    // 1 MiB of host memory: 128 of the built-in model's 8 KiB blocks; the disk tier
    // holds four times as many.
    vec!["--kv-offloading-size".into(), "0.0009765625".into(), "--kv-offloading-dir".into(), dir.display().to_string()]
}

fn prompt(i: usize) -> String {
    format!("Request {i:03} brings its own long context: ") + &format!("topic {i} detail ").repeat(12)
}

/// The completion's text and cached prompt tokens.
async fn complete(client: &reqwest::Client, http: &str, prompt: &str) -> (String, u64) {
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
    let r = client
        .post(format!("http://{http}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
    (v["choices"][0]["text"].as_str().unwrap().to_string(), cached)
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let walk = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>();
    walk(dir)
        .iter()
        .flat_map(|ns| walk(ns))
        .flat_map(|sub| walk(&sub))
        .filter(|f| f.extension().is_some_and(|x| x == "kv"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_offload_restarts_on_its_files_and_serves_none_damaged() {
    let dir = std::env::temp_dir().join(format!("llmd-offload-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let client = reqwest::Client::new();
    let prompts: Vec<String> = (0..24).map(prompt).collect();

    // Heavy offloading: four clients send distinct prompts until the kill.
    let (mut victim, http) = serve(&offloading(&dir));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..4 {
        let (client, http, prompts, stop) = (client.clone(), http.clone(), prompts.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            for p in prompts.iter().skip(c).step_by(4).cycle() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let body = json!({"prompt": p, "max_tokens": 8, "temperature": 0});
                // Requests in flight at the kill fail; that is the point.
                let _ = client
                    .post(format!("http://{http}/v1/completions"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
            }
        }));
    }
    let d = dir.clone();
    assert!(
        eventually(Duration::from_secs(120), async || block_files(&d).len() >= 100).await,
        "the replica wrote too few blocks"
    );
    victim.child.kill().unwrap(); // SIGKILL, mid-write
    victim.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    drop(victim);
    // And what a power cut could leave besides: two files cut short.
    for f in block_files(&dir).iter().take(2) {
        let b = std::fs::read(f).unwrap();
        std::fs::write(f, &b[..b.len() / 2]).unwrap();
    }

    // The reference: the same model without offloading.
    let (_reference, plain) = serve(&[]);
    let (_restarted, http) = serve(&offloading(&dir));
    let mut from_disk = 0;
    for p in &prompts {
        let (want, _) = complete(&client, &plain, p).await;
        let (got, cached) = complete(&client, &http, p).await;
        assert_eq!(got, want, "{p}");
        from_disk += u64::from(cached > 0);
    }
    assert!(from_disk >= 5, "only {from_disk} of 24 prompts were served from the files");
    let metrics = client.get(format!("http://{http}/metrics")).send().await.unwrap().text().await.unwrap();
    let loaded = metrics
        .lines()
        .find(|l| l.starts_with("llmd:kv_offload_blocks_total{") && l.contains("medium=\"STORAGE\",direction=\"load\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(loaded > 0.0, "blocks loaded from disk after the restart:\n{metrics}");
    let _ = std::fs::remove_dir_all(&dir);
}
