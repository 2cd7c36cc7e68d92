//! Sending a planned run open-loop and timing every streamed response.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llmd_openai::stream::{StreamItem, parse_data};
use llmd_openai::{CommonParams, CompletionChunk, CompletionRequest, Prompt, SseDecoder, StreamOptions};
use serde::Serialize;

use super::scenario::{Planned, Slo};

/// One request's timings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Whether it completed with 200 and `[DONE]`, with no error inside the stream.
    pub ok: bool,
    /// Time to first token, seconds.
    pub ttft: f64,
    /// Mean gap between later tokens, seconds.
    pub itl: f64,
    /// Whole request, seconds.
    pub e2e: f64,
    /// Tokens generated.
    pub output_tokens: usize,
    /// Prompt tokens, from the final usage chunk.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache (`prompt_tokens_details.cached_tokens`).
    pub cached_tokens: usize,
    /// When it was sent, seconds from the run's start.
    pub sent_at: f64,
}

/// Sends every planned request at its time (open loop: arrivals do not wait for
/// responses) to `base`'s `/v1/completions`, streaming, with its own headers;
/// `progress` counts finished ones.
pub async fn run(
    client: &reqwest::Client,
    base: &str,
    model: Option<&str>,
    plan: &[Planned],
    progress: &indicatif::ProgressBar,
) -> Vec<Sample> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(plan.len());
    for p in plan {
        let client = client.clone();
        let url = format!("{base}/v1/completions");
        let body = CompletionRequest {
            prompt: Prompt::Text(p.prompt.clone()),
            max_tokens: Some(p.max_tokens),
            common: CommonParams {
                model: model.map(String::from),
                temperature: Some(0.0),
                stream: true,
                stream_options: Some(StreamOptions { include_usage: true }),
                ignore_eos: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let headers = p.headers.clone();
        let at = start + p.at;
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let sent_at = start.elapsed().as_secs_f64();
            let sample = Sample { sent_at, ..one(&client, &url, &headers, body).await };
            progress.inc(1);
            sample
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}

async fn one(client: &reqwest::Client, url: &str, headers: &[(String, String)], body: CompletionRequest) -> Sample {
    let sent = Instant::now();
    let Ok(body) = serde_json::to_string(&body) else { return Sample::default() };
    let mut rq = client.post(url).header("content-type", "application/json");
    for (k, v) in headers {
        rq = rq.header(k.as_str(), v.as_str());
    }
    let resp = match rq.body(body).send().await {
        Ok(r) if r.status().is_success() => r,
        _ => return Sample { e2e: sent.elapsed().as_secs_f64(), ..Default::default() },
    };
    let mut stream = resp.bytes_stream();
    let mut sse = SseDecoder::new();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let (mut chunks, mut tokens, mut done, mut failed) = (0usize, 0usize, false, false);
    let (mut prompt_tokens, mut cached_tokens) = (0usize, 0usize);
    while let Some(Ok(bytes)) = stream.next().await {
        for data in sse.decode(&bytes) {
            let chunk = match parse_data::<CompletionChunk>(&data) {
                Ok(StreamItem::Chunk(c)) => c,
                Ok(StreamItem::Done) => {
                    done = true;
                    continue;
                }
                // The server still ends a failed stream with `[DONE]`; this one did not complete.
                Ok(StreamItem::Error(_)) => {
                    failed = true;
                    continue;
                }
                Err(_) => continue,
            };
            if let Some(u) = chunk.usage {
                tokens = u.completion_tokens;
                prompt_tokens = u.prompt_tokens;
                cached_tokens = u.cached_tokens();
            }
            if chunk.choices.first().is_some_and(|c| !c.text.is_empty()) {
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
                chunks += 1;
            }
        }
    }
    let e2e = sent.elapsed().as_secs_f64();
    let ttft = first.map_or(e2e, |f| (f - sent).as_secs_f64());
    let itl = match (first, last) {
        (Some(f), Some(l)) if chunks > 1 => (l - f).as_secs_f64() / (chunks - 1) as f64,
        _ => 0.0,
    };
    Sample {
        ok: done && !failed,
        ttft,
        itl,
        e2e,
        output_tokens: tokens.max(chunks),
        prompt_tokens,
        cached_tokens,
        sent_at: 0.0,
    }
}

/// Percentiles and rates of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunStats {
    /// Requests sent.
    pub requests: usize,
    /// Requests that completed.
    pub completed: usize,
    /// Offered rate, requests/s.
    pub rate: f64,
    /// TTFT p50/p90/p99, ms.
    pub ttft_ms: [f64; 3],
    /// Mean ITL p50/p90/p99, ms.
    pub itl_ms: [f64; 3],
    /// End-to-end p50/p90/p99, ms.
    pub e2e_ms: [f64; 3],
    /// Output tokens per second over the run.
    pub output_tokens_per_s: f64,
    /// Requests per second meeting the SLO, when the load generator reports it.
    pub goodput: Option<f64>,
    /// Prefix-cache hit rate over the run: from the engines' `vllm:prefix_cache_*`
    /// counters when `llmd bench` started them, else cached over prompt tokens as the
    /// responses' usage reported them.
    pub hit_rate: Option<f64>,
    /// Prompt tokens copied back from KV offloading's tiers over those looked up (the
    /// engines' `vllm:external_prefix_cache_hits` over `vllm:prefix_cache_queries`),
    /// when offloading was on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_hit_rate: Option<f64>,
    /// The same figures over the steady state: the requests after the scenario's
    /// warm-up (caches filled, queues formed), rates over the time those requests took.
    /// Only where per-request figures exist (the built-in client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steady: Option<Box<RunStats>>,
    /// Requests left out of `steady` as warm-up.
    pub warmup_requests: usize,
    /// What each `predicted-latency-producer` of the routing learned over the whole run
    /// (warm-up included), when `llmd bench` started the cluster: its model's sample
    /// counts and refits, and the observed against the predicted (chosen endpoint's)
    /// TTFT and mean TPOT, count and sum in seconds (a request picked before the model
    /// was trained counts a prediction of 0), with the SLO violations it counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_model: Option<serde_json::Value>,
    /// Every request's own figures, in plan order (the built-in client's runs; the
    /// external tools keep theirs in their own reports).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

fn pct(v: &mut [f64]) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] * 1e3;
    [at(0.5), at(0.9), at(0.99)]
}

/// Summarises a run's samples; the hit rate is the responses' cached share of prompt
/// tokens (the caller prefers the engines' own counters when it has them). Requests
/// after the first `warmup` make the steady-state figures.
pub fn stats(samples: &[Sample], rate: f64, wall: Duration, slo: Slo, warmup: usize) -> RunStats {
    let mut whole = summarise(samples, rate, wall.as_secs_f64(), slo);
    let rest = samples.get(warmup..).unwrap_or_default();
    if warmup > 0 && !rest.is_empty() {
        // From the first steady request's send to the last one's end.
        let from = rest.iter().map(|s| s.sent_at).fold(f64::INFINITY, f64::min);
        let to = rest.iter().map(|s| s.sent_at + s.e2e).fold(0.0, f64::max);
        whole.steady = Some(Box::new(summarise(rest, rate, to - from, slo)));
    }
    whole.warmup_requests = warmup.min(samples.len());
    whole.samples = samples.to_vec();
    whole
}

fn summarise(samples: &[Sample], rate: f64, secs: f64, slo: Slo) -> RunStats {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
    let mut ttft: Vec<f64> = ok.iter().map(|s| s.ttft).collect();
    let mut itl: Vec<f64> = ok.iter().map(|s| s.itl).collect();
    let mut e2e: Vec<f64> = ok.iter().map(|s| s.e2e).collect();
    let secs = secs.max(1e-9);
    let good = ok.iter().filter(|s| s.ttft * 1e3 <= slo.ttft_ms && s.itl * 1e3 <= slo.itl_ms).count();
    RunStats {
        requests: samples.len(),
        completed: ok.len(),
        rate,
        ttft_ms: pct(&mut ttft),
        itl_ms: pct(&mut itl),
        e2e_ms: pct(&mut e2e),
        output_tokens_per_s: ok.iter().map(|s| s.output_tokens).sum::<usize>() as f64 / secs,
        goodput: Some(good as f64 / secs),
        hit_rate: usage_hit_rate(ok.iter().map(|s| s.cached_tokens).sum(), ok.iter().map(|s| s.prompt_tokens).sum()),
        ..Default::default()
    }
}

fn usage_hit_rate(cached: usize, prompt: usize) -> Option<f64> {
    (prompt > 0).then(|| cached as f64 / prompt as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_at: f64, ttft: f64) -> Sample {
        Sample { ok: true, ttft, itl: 0.001, e2e: ttft + 0.1, output_tokens: 4, sent_at, ..Default::default() }
    }

    #[test]
    fn steady_figures_leave_the_warm_up_out() {
        // Four slow first visits, then sixteen fast requests.
        let mut samples: Vec<Sample> = (0..4).map(|i| sample(i as f64 * 0.1, 0.5)).collect();
        samples.extend((4..20).map(|i| sample(i as f64 * 0.1, 0.01)));
        let slo = Slo { ttft_ms: 100.0, itl_ms: 50.0 };
        let st = stats(&samples, 10.0, Duration::from_secs(2), slo, 4);
        assert_eq!(st.warmup_requests, 4);
        assert_eq!(st.ttft_ms[2], 500.0, "the whole run's p99 is a warm-up request");
        let steady = st.steady.as_deref().unwrap();
        assert_eq!(steady.requests, 16);
        assert_eq!(steady.ttft_ms, [10.0, 10.0, 10.0]);
        // All sixteen meet the SLO, over the 0.4 s to 2.01 s they took.
        assert!((steady.goodput.unwrap() - 16.0 / 1.61).abs() < 1e-9, "{:?}", steady.goodput);
        // No warm-up: no steady figures.
        assert!(stats(&samples, 10.0, Duration::from_secs(2), slo, 0).steady.is_none());
    }

    #[tokio::test]
    async fn every_request_carries_its_own_headers() {
        use std::sync::{Arc, Mutex};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // A server that records each request's head and answers an empty stream.
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = sock.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            seen.lock().unwrap().push(head);
                            break;
                        }
                    }
                    let body = "data: [DONE]\n\n";
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        let slo = vec![("x-llm-d-slo-ttft-ms".to_string(), "250".to_string())];
        let plan: Vec<Planned> = (0..3)
            .map(|i| Planned {
                at: Duration::from_millis(i * 5),
                prompt: "hello".into(),
                max_tokens: 2,
                headers: if i == 2 { Vec::new() } else { slo.clone() },
            })
            .collect();
        let client = reqwest::Client::new();
        let samples = run(&client, &base, Some("m"), &plan, &indicatif::ProgressBar::hidden()).await;
        assert!(samples.iter().all(|s| s.ok), "{samples:?}");
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3);
        assert_eq!(heads.iter().filter(|h| h.contains("\r\nx-llm-d-slo-ttft-ms: 250")).count(), 2, "{heads:?}");
    }
}
