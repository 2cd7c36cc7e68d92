//! `llmd sidecar` as a process in front of `llmd serve` engines, with the header the
//! picker sets: the request is prefilled on the named engine first (llm-d's nixlv2
//! leg: one token, `min_tokens` 1, non-streaming) and decoded on the engine beside the
//! sidecar; without the header it goes straight to decode. Engines that do not hold
//! blocks for a pull yet answer the prefill without `kv_transfer_params`, and the
//! decode engine computes the prompt itself.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use serde_json::{Value, json};

use crate::common;

fn engine() -> (common::Llmd, String) {
    let (p, line) =
        common::start_llmd(&["serve".into(), "--sim".into(), "--port".into(), "0".into()], "llmd serve:").unwrap();
    let addr = line.split("http://").nth(1).unwrap().split('/').next().unwrap().to_string();
    (p, addr)
}

async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(30), r.body(body.to_string()).send()).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap())
}

async fn metric(addr: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_prefills_on_the_named_engine_then_decodes_beside_it() {
    let (_p, prefill) = engine();
    let (_d, decode) = engine();
    let decode_port = decode.rsplit(':').next().unwrap().to_string();
    let (_s, sidecar) = (0..5)
        .find_map(|_| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let args: Vec<String> =
                ["sidecar", "--port", &port.to_string(), "--model-server-port", &decode_port, "--kv-connector=nixlv2"]
                    .map(String::from)
                    .to_vec();
            common::start_llmd(&args, "llmd sidecar:").map(|(p, _)| (p, format!("127.0.0.1:{port}")))
        })
        .expect("llmd sidecar did not start");
    let url = format!("http://{sidecar}/v1/completions");
    let body = json!({"prompt": "a long shared prompt ".repeat(8), "max_tokens": 5});

    // Straight to decode without the header.
    let (status, out) = post(&url, &[], body.clone()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(metric(&prefill, "vllm:request_success_total").await, 0.0);

    // With it: one prefill request of one token there, then the decode here.
    let (status, out) = post(&url, &[("x-prefiller-host-port", &prefill)], body.clone()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["usage"]["completion_tokens"], 5, "{out}");
    assert_eq!(metric(&prefill, "vllm:request_success_total").await, 1.0);
    assert_eq!(metric(&prefill, "vllm:generation_tokens_total").await, 1.0);
    assert_eq!(metric(&decode, "vllm:request_success_total").await, 2.0);

    // A prefill target that refuses (4xx) is answered as is; one that is down falls
    // back to decode alone.
    let (status, out) =
        post(&url, &[("x-prefiller-host-port", &prefill)], json!({"prompt": "x", "max_tokens": -1})).await;
    assert_eq!(status, 400, "{out}");
    let (status, out) = post(&url, &[("x-prefiller-host-port", "127.0.0.1:1")], body).await;
    assert_eq!(status, 200, "{out}");
}
