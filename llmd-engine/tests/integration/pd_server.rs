//! Prefill/decode disaggregation between two `llmd serve` engines on loopback, driven
//! by vLLM NixlConnector's `kv_transfer_params` as llm-d's sidecar sends them: the
//! decode answer is exactly the one engine's answer (greedy), the prefill answer carries
//! vLLM's field names, what the decode side has cached is not pulled, and every fault
//! (prefiller gone, hold expired, corrupted or cut transfer, another block size) ends as
//! a recompute, or an error under `kv_load_failure_policy: fail`, with no blocks left
//! held on either side.

use std::sync::Arc;
use std::time::Duration;

use llmd_engine::server::{KvTransferConfig, Server, ServerConfig};
use llmd_engine::{EngineBuilder, KvDtype, KvLoadFailurePolicy, ManualClock};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{http, metric, post};

struct Engine {
    addr: String,
    clock: Arc<ManualClock>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    block_bytes: usize,
}

impl Engine {
    /// Stops the server and waits for it (its side channel closes with it).
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.served.take() {
            let _ = h.await;
        }
    }

    async fn metrics(&self) -> String {
        http(&self.addr, "GET", "/metrics", "").await.1
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics().await, series).unwrap_or(0.0)
    }

    /// KV blocks in use (`vllm:kv_cache_usage_perc`).
    async fn usage(&self) -> f64 {
        self.metric("vllm:kv_cache_usage_perc{model_name=\"llmd-tiny\",engine=\"0\"}").await
    }
}

/// `shm`: pull from a prefiller on this host through shared memory, else over TCP.
fn transfer(policy: KvLoadFailurePolicy, streams: usize, shm: bool) -> KvTransferConfig {
    KvTransferConfig {
        engine_id: "test-engine".into(),
        side_channel_host: "127.0.0.1".into(),
        side_channel_port: 0,
        load_failure_policy: policy,
        streams,
        same_host_shm: shm,
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn engine(block_size: usize, kv_transfer: Option<KvTransferConfig>) -> Engine {
    let clock = Arc::new(ManualClock::new());
    let built = EngineBuilder::builtin()
        .seed(1)
        .block_size(block_size)
        .num_blocks(256)
        .max_model_len(1024)
        .kv_dtype(KvDtype::F32)
        .clock(clock.clone())
        .build()
        .unwrap();
    let block_bytes = built.engine.kv_block_layout().unwrap().block_bytes();
    let cfg = ServerConfig { kv_transfer, ..Default::default() };
    let server = Server::start(built.engine, built.template, cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    Engine { addr, clock, stop: Some(tx), served: Some(served), block_bytes }
}

async fn pd_engine(policy: KvLoadFailurePolicy) -> Engine {
    engine(4, Some(transfer(policy, 4, true))).await
}

fn body(prompt: &str) -> Value {
    json!({"model": "llmd-tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": true})
}

/// The prefill leg as llm-d's sidecar sends it.
fn prefill_leg(mut b: Value) -> Value {
    b["max_tokens"] = json!(1);
    b["kv_transfer_params"] = json!({
        "do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
        "remote_block_ids": null, "remote_host": null, "remote_port": null
    });
    b
}

async fn prefill(p: &Engine, b: &Value) -> Value {
    let (status, answer) = post(&p.addr, "/v1/completions", prefill_leg(b.clone())).await;
    assert_eq!(status, 200, "{answer}");
    answer["kv_transfer_params"].clone()
}

async fn decode(d: &Engine, b: &Value, params: Value) -> (u16, Value) {
    let mut b = b.clone();
    b["kv_transfer_params"] = params;
    post(&d.addr, "/v1/completions", b).await
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["text"].as_str().unwrap()
}

const LONG: &str = "Prefill computes the prompt's keys and values once; the decode engine pulls them and \
                    generates the answer without computing the prompt again, so long prompts stop \
                    stalling the decodes of everyone else.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disaggregated_request_returns_the_one_engine_answer() {
    let alone = engine(4, None).await;
    let p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let d = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let d_tcp = engine(4, Some(transfer(KvLoadFailurePolicy::Recompute, 3, false))).await;
    for prompt in ["Hi", "Hello there, pods", &LONG[..61], LONG] {
        let b = body(prompt);
        let (_, want) = post(&alone.addr, "/v1/completions", b.clone()).await;
        // Over TCP (three streams)...
        let (status, got) = decode(&d_tcp, &b, prefill(&p, &b).await).await;
        assert_eq!((status, text(&got)), (200, text(&want)), "{prompt:?} over TCP");
        // ...and through shared memory, the prefiller being on this host.
        let params = prefill(&p, &b).await;
        let prompt_tokens = want["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
        // vLLM 0.33's pull-mode answer (its `request_finished`), naming every full
        // prompt block.
        let mut keys: Vec<&str> = params.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "dcp_size",
                "do_remote_decode",
                "do_remote_prefill",
                "pp_size",
                "remote_block_ids",
                "remote_blocks_expiry_time",
                "remote_engine_id",
                "remote_host",
                "remote_num_tokens",
                "remote_port",
                "remote_registration_generation",
                "remote_request_id",
                "tp_size",
                "transfer_mode"
            ]
        );
        let ids = params["remote_block_ids"][0].as_array().unwrap();
        assert_eq!(ids.len(), prompt_tokens / 4, "{prompt:?}: {params}");
        assert_eq!(params["do_remote_prefill"], json!(true));
        assert_eq!(params["remote_engine_id"], json!("test-engine"));
        assert_eq!(params["remote_host"], json!("127.0.0.1"));
        assert!(params["remote_request_id"].as_str().unwrap().starts_with("cmpl-"));
        let (status, got) = decode(&d, &b, params).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(text(&got), text(&want), "{prompt:?}: the decode answer is the one engine's");
        // The remote blocks count as cached prompt tokens, as vLLM counts them.
        let cached = got["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0) as usize;
        assert_eq!(cached, (prompt_tokens - 1) / 4 * 4, "{prompt:?}: {got}");
    }
    // Chat too.
    let chat = json!({"model": "llmd-tiny", "messages": [{"role": "user", "content": LONG}],
                      "max_tokens": 6, "temperature": 0, "ignore_eos": true});
    let (_, want) = post(&alone.addr, "/v1/chat/completions", chat.clone()).await;
    let (status, pre) = post(&p.addr, "/v1/chat/completions", prefill_leg(chat.clone())).await;
    assert_eq!(status, 200);
    let mut dec = chat.clone();
    dec["kv_transfer_params"] = pre["kv_transfer_params"].clone();
    let (status, got) = post(&d.addr, "/v1/chat/completions", dec).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["choices"][0]["message"], want["choices"][0]["message"]);

    // Every hold was pulled; no blocks stay in use on either side.
    assert_eq!(p.metric("llmd:kv_transfer_holds").await, 0.0);
    assert_eq!(p.metric("llmd:kv_transfer_holds_ended_total{outcome=\"pulled\"}").await, 9.0);
    assert_eq!(d.metric("llmd:kv_transfer_pulls_total{outcome=\"ok\"}").await, 5.0);
    assert_eq!(d_tcp.metric("llmd:kv_transfer_pulls_total{outcome=\"ok\"}").await, 4.0);
    assert_eq!(d.metric("llmd:kv_transfer_loads_total{outcome=\"imported\"}").await, 5.0);
    let pulled = d.metric("llmd:kv_transfer_pulled_bytes_total").await;
    assert!(pulled > 0.0);
    // Same host, both sides with shared memory: every byte read in place.
    assert_eq!(d.metric("llmd:kv_transfer_pulled_in_place_bytes_total").await, pulled);
    assert_eq!(d_tcp.metric("llmd:kv_transfer_pulled_in_place_bytes_total").await, 0.0);
    assert_eq!(p.usage().await, 0.0);
    assert_eq!(d.usage().await, 0.0);
    assert_eq!(d_tcp.usage().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_decode_side_has_cached_is_not_pulled() {
    let p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let d = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let b = body(LONG);
    // Half the prompt is cached on the decode side already.
    let (_, warm) = post(&d.addr, "/v1/completions", body(&LONG[..LONG.len() / 2])).await;
    let half_tokens = warm["usage"]["prompt_tokens"].as_u64().unwrap() as usize;
    let params = prefill(&p, &b).await;
    let n = params["remote_block_ids"][0].as_array().unwrap().len();
    let (status, _) = decode(&d, &b, params).await;
    assert_eq!(status, 200);
    let pulled = d.metric("llmd:kv_transfer_pulled_bytes_total").await as usize;
    assert_eq!(pulled, (n - half_tokens / 4) * d.block_bytes, "only the blocks not cached here");
    // All of it cached: nothing is pulled, and the prefiller's hold still ends.
    let params = prefill(&p, &b).await;
    let (status, _) = decode(&d, &b, params).await;
    assert_eq!(status, 200);
    assert_eq!(d.metric("llmd:kv_transfer_pulled_bytes_total").await as usize, pulled);
    assert_eq!(p.metric("llmd:kv_transfer_holds").await, 0.0);
    assert_eq!(p.metric("llmd:kv_transfer_holds_ended_total{outcome=\"pulled\"}").await, 2.0);
}

/// A side channel that answers one pull with `n` blocks of `size` bytes, having
/// flipped a byte (`corrupt`) or cut the connection half way.
async fn bad_side_channel(n: usize, size: usize, corrupt: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 10];
        sock.read_exact(&mut head).await.unwrap();
        let len = u16::from_be_bytes([head[8], head[9]]) as usize;
        let mut rest = vec![0u8; len + 32 + 12];
        sock.read_exact(&mut rest).await.unwrap();
        let id = String::from_utf8(rest[..len].to_vec()).unwrap();
        let hash: [u8; 32] = rest[len..len + 32].try_into().unwrap();
        let blocks: Vec<bytes::Bytes> = (0..n).map(|i| bytes::Bytes::from(vec![i as u8; size])).collect();
        let mut wire: Vec<u8> = llmd_transfer::frame::encode(&id, hash, &blocks).unwrap().concat();
        if corrupt {
            let last = wire.len() - 1;
            wire[last] ^= 0x40;
            sock.write_all(&wire).await.unwrap();
        } else {
            sock.write_all(&wire[..wire.len() / 2]).await.unwrap();
        }
        // Then the connection closes.
    });
    addr
}

fn params_for(addr: &str, n: usize) -> Value {
    let (host, port) = addr.rsplit_once(':').unwrap();
    json!({
        "do_remote_prefill": true, "do_remote_decode": false,
        "remote_block_ids": [(0..n).collect::<Vec<_>>()], "remote_engine_id": "elsewhere",
        "remote_request_id": "cmpl-gone", "remote_host": host, "remote_port": port.parse::<u16>().unwrap(),
        "tp_size": 1
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_end_in_a_recompute_or_an_error_and_nothing_stays_held() {
    let alone = engine(4, None).await;
    let b = body(LONG);
    let (_, want) = post(&alone.addr, "/v1/completions", b.clone()).await;
    // Over TCP, one stream (the misbehaving side channel below answers one connection).
    let recompute = engine(4, Some(transfer(KvLoadFailurePolicy::Recompute, 1, false))).await;
    let fail = engine(4, Some(transfer(KvLoadFailurePolicy::Fail, 1, false))).await;
    let recompute_shm = engine(4, Some(transfer(KvLoadFailurePolicy::Recompute, 1, true))).await;
    let n = want["usage"]["prompt_tokens"].as_u64().unwrap() as usize / 4;

    let mut faults: Vec<(&str, Value)> = Vec::new();
    // The prefiller dies after answering, before the pull.
    let mut p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let gone = prefill(&p, &b).await;
    let gone2 = prefill(&p, &b).await;
    p.kill().await;
    faults.push(("prefiller gone", gone));
    // The hold's lease runs out before the pull.
    let p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let expired = prefill(&p, &b).await;
    let expired2 = prefill(&p, &b).await;
    p.clock.advance(Duration::from_secs(31));
    faults.push(("hold expired", expired));
    // Another block size: the layouts differ, the prefiller refuses before any byte moves.
    let p8 = engine(8, Some(transfer(KvLoadFailurePolicy::Recompute, 4, true))).await;
    let mut other = prefill(&p8, &b).await;
    // (The ids name 8-token blocks; the decode side still asks, and is refused.)
    other["remote_block_ids"] = json!([(0..n).collect::<Vec<_>>()]);
    let other2 = prefill(&p8, &b).await;
    faults.push(("block size", other));

    for (what, params) in faults {
        let (status, got) = decode(&recompute, &b, params).await;
        assert_eq!(status, 200, "{what}: {got}");
        assert_eq!(text(&got), text(&want), "{what}: recomputed");
        assert_eq!(recompute.usage().await, 0.0, "{what}");
    }
    // The same faults on the same-host path.
    let mut p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let gone = prefill(&p, &b).await;
    p.kill().await;
    let p = pd_engine(KvLoadFailurePolicy::Recompute).await;
    let expired = prefill(&p, &b).await;
    p.clock.advance(Duration::from_secs(31));
    let mut other = prefill(&p8, &b).await;
    other["remote_block_ids"] = json!([(0..n).collect::<Vec<_>>()]);
    for (what, params) in [("prefiller gone", gone), ("hold expired", expired), ("block size", other)] {
        let (status, got) = decode(&recompute_shm, &b, params).await;
        assert_eq!((status, text(&got)), (200, text(&want)), "{what} (same host): recomputed");
        assert_eq!(recompute_shm.usage().await, 0.0, "{what} (same host)");
    }
    assert_eq!(recompute_shm.metric("llmd:kv_transfer_loads_total{outcome=\"recomputed\"}").await, 3.0);
    // The same under policy `fail`: an error, and nothing held.
    let mut other2 = other2;
    other2["remote_block_ids"] = json!([(0..n).collect::<Vec<_>>()]);
    for (what, params) in [("prefiller gone", gone2), ("hold expired", expired2), ("block size", other2)] {
        let (status, got) = decode(&fail, &b, params).await;
        assert_eq!(status, 500, "{what}: {got}");
        assert_eq!(got["error"]["param"], json!("kv_transfer_params"), "{what}: {got}");
        assert_eq!(fail.usage().await, 0.0, "{what}");
    }
    // Corrupted and cut transfers, from a side channel that misbehaves.
    for (what, corrupt) in [("checksum", true), ("cut", false)] {
        let side = bad_side_channel(n, recompute.block_bytes, corrupt).await;
        let (status, got) = decode(&recompute, &b, params_for(&side, n)).await;
        assert_eq!(status, 200, "{what}: {got}");
        assert_eq!(text(&got), text(&want), "{what}: recomputed");
        let side = bad_side_channel(n, fail.block_bytes, corrupt).await;
        let (status, got) = decode(&fail, &b, params_for(&side, n)).await;
        assert_eq!(status, 500, "{what}: {got}");
        let msg = got["error"]["message"].as_str().unwrap();
        assert!(!corrupt || msg.contains("checksum"), "{what}: {msg}");
    }
    assert_eq!(recompute.metric("llmd:kv_transfer_loads_total{outcome=\"recomputed\"}").await, 5.0);
    assert_eq!(fail.metric("llmd:kv_transfer_loads_total{outcome=\"failed\"}").await, 5.0);
    assert_eq!(recompute.usage().await, 0.0);
    assert_eq!(fail.usage().await, 0.0);
    // The fail-policy engine still serves.
    let (status, got) = post(&fail.addr, "/v1/completions", b.clone()).await;
    assert_eq!((status, text(&got)), (200, text(&want)));
    // The 8-token prefiller's holds ended in refusals' pulls: none left.
    assert_eq!(p8.metric("llmd:kv_transfer_holds").await, 0.0);
    assert_eq!(p8.usage().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_are_ignored_without_a_transfer_config_and_invalid_ones_recompute() {
    let plain = engine(4, None).await;
    let b = body(LONG);
    let (_, want) = post(&plain.addr, "/v1/completions", b.clone()).await;
    // Without --kv-transfer-config, as vLLM without a connector: served, no params back.
    let (status, got) = post(&plain.addr, "/v1/completions", prefill_leg(b.clone())).await;
    assert_eq!(status, 200);
    assert!(got.get("kv_transfer_params").is_none(), "{got}");
    // Params missing what a pull needs: vLLM's "Got invalid KVTransferParams", recomputed.
    let d = pd_engine(KvLoadFailurePolicy::Fail).await;
    let (status, got) = decode(&d, &b, json!({"do_remote_prefill": true, "remote_block_ids": [[1, 2]]})).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(text(&got), text(&want));
    // A streamed prefill leg is served, without holding anything.
    let mut streamed = prefill_leg(b.clone());
    streamed["stream"] = json!(true);
    let (status, _) = http(&d.addr, "POST", "/v1/completions", &streamed.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(d.metric("llmd:kv_transfer_holds").await, 0.0);
}
