//! The HTTP server end to end over real sockets on 127.0.0.1: the OpenAI routes,
//! streaming, every bad-input case with its status and error body, overload, metrics,
//! and a client that disconnects mid-stream.

use llmd_engine::server::{Server, ServerConfig};
use llmd_engine::{EngineBuilder, KvDtype};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{http, http_with, metric, post, post_with};

async fn start(max_queued: usize) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (addr, stop, _) = start_with(ServerConfig { max_queued_requests: max_queued, ..Default::default() }).await;
    (addr, stop)
}

async fn start_with(server_cfg: ServerConfig) -> (String, tokio::sync::oneshot::Sender<()>, Option<String>) {
    let (addr, stop, events, _) = start_full(server_cfg).await;
    (addr, stop, events)
}

/// Also returns the chat template the server renders with.
async fn start_full(
    server_cfg: ServerConfig,
) -> (String, tokio::sync::oneshot::Sender<()>, Option<String>, llmd_engine::ChatTemplate) {
    let built =
        EngineBuilder::builtin().seed(1).num_blocks(64).max_model_len(512).kv_dtype(KvDtype::F32).build().unwrap();
    let template = built.template.clone();
    let server = Server::start(built.engine, built.template, server_cfg).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let events = server.kv_events_endpoint().map(String::from);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    (addr, tx, events, template)
}

/// `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
}

#[tokio::test]
async fn chat_and_completions_work_streaming_and_not() {
    let (addr, _stop) = start(100).await;
    let (status, v) = post(
        &addr,
        "/v1/chat/completions",
        json!({"model": "llmd-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let body = json!({"prompt": "Once upon", "max_tokens": 12, "temperature": 0, "logprobs": 2});
    let (status, plain) = post(&addr, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{plain}");
    let text = plain["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(plain["choices"][0]["logprobs"]["top_logprobs"].as_array().unwrap().len(), 12);

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({"include_usage": true});
    let (status, raw) = http(&addr, "POST", "/v1/completions", &streaming.to_string()).await;
    assert_eq!(status, 200);
    let events = sse(&raw);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, text, "streamed text equals the non-streamed text");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 12);

    let mut chat_stream = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 5, "stream": true});
    chat_stream["temperature"] = json!(0);
    let (status, raw) = http(&addr, "POST", "/v1/chat/completions", &chat_stream.to_string()).await;
    assert_eq!(status, 200);
    let events = sse(&raw);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn bad_input_gets_openai_errors_with_the_right_status() {
    let (addr, _stop) = start(100).await;
    let long = "x".repeat(600);
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        ("/v1/completions", "{not json".into(), 400, None),
        ("/v1/completions", json!({"prompt": 5}).to_string(), 400, None),
        ("/v1/completions", json!({"model": "gpt-9", "prompt": "hi"}).to_string(), 404, Some("model")),
        ("/v1/completions", json!({"prompt": long}).to_string(), 400, Some("prompt")),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": long}]}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "presence_penalty": 0.5}).to_string(),
            400,
            Some("presence_penalty"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}).to_string(),
            400,
            Some("tools"),
        ),
        ("/v1/completions", json!({"prompt": "hi", "temperature": -2}).to_string(), 400, Some("temperature")),
        ("/v1/completions", json!({"prompt": "hi", "top_p": 0}).to_string(), 400, Some("top_p")),
        ("/v1/completions", json!({"prompt": "hi", "max_tokens": 0}).to_string(), 400, Some("max_tokens")),
        ("/v1/completions", json!({"prompt": "hi", "n": 3}).to_string(), 400, Some("n")),
        ("/v1/completions", json!({"prompt": [999999]}).to_string(), 400, Some("prompt")),
        ("/v1/completions", json!({"prompt": []}).to_string(), 400, Some("prompt")),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400, Some("messages")),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}).to_string(),
            400,
            Some("top_logprobs"),
        ),
    ];
    for (path, body, want, param) in cases {
        let (status, text) = http(&addr, "POST", path, &body).await;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{body}: non-JSON error {text}"));
        assert_eq!(status, want, "{body} -> {v}");
        assert_eq!(v["error"]["code"], want, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{body} -> {v}");
        }
    }
    // The server is still healthy after all of that.
    assert_eq!(http(&addr, "GET", "/health", "").await.0, 200);
}

#[tokio::test]
async fn overload_is_a_429() {
    let (addr, _stop) = start(0).await;
    let (status, v) = post(&addr, "/v1/completions", json!({"prompt": "hi"})).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "RateLimitError");
}

#[tokio::test]
async fn models_health_and_metrics() {
    let (addr, _stop) = start(100).await;
    let (status, models) = http(&addr, "GET", "/v1/models", "").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "llmd-tiny");
    assert_eq!(http(&addr, "GET", "/health", "").await.0, 200);
    let (status, v) = post(&addr, "/v1/completions", json!({"prompt": "hello", "max_tokens": 2})).await;
    assert_eq!(status, 200, "{v}");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_f64().unwrap();
    let (status, text) = http(&addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    // The request shows in the counters, and nothing is left running or holding blocks.
    let labels = "{model_name=\"llmd-tiny\",engine=\"0\"}";
    for (name, want) in [
        ("vllm:num_requests_running", 0.0),
        ("vllm:num_requests_waiting", 0.0),
        ("vllm:kv_cache_usage_perc", 0.0),
        ("vllm:prompt_tokens_total", prompt_tokens),
        ("vllm:generation_tokens_total", 2.0),
        ("vllm:e2e_request_latency_seconds_count", 1.0),
    ] {
        assert_eq!(metric(&text, &format!("{name}{labels}")), Some(want), "{name} in\n{text}");
    }
    let length = "vllm:request_success_total{model_name=\"llmd-tiny\",engine=\"0\",finished_reason=\"length\"}";
    assert_eq!(metric(&text, length), Some(1.0), "{text}");
    assert!(text.contains("vllm:cache_config_info{") && text.contains("num_gpu_blocks=\"64\""), "{text}");
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_blocks() {
    // A simulated engine at 100 ms a step: 480 tokens would take 48 s, so a request that
    // is not aborted cannot end (and free its blocks) within the 20 s allowed below,
    // and an abort has 20 s to land however slow the machine.
    let latency = llmd_engine::LatencyModel {
        step_overhead: std::time::Duration::from_millis(100),
        per_prefill_token: std::time::Duration::ZERO,
        per_decode_seq: std::time::Duration::ZERO,
        per_context_token: std::time::Duration::ZERO,
        per_transfer_token: std::time::Duration::ZERO,
        per_onboard_token: std::time::Duration::ZERO,
        per_disk_token: std::time::Duration::ZERO,
    };
    let built = EngineBuilder::sim(latency).num_blocks(64).max_model_len(512).build().unwrap();
    let server = Server::start(built.engine, built.template, ServerConfig::default()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let labels = "{model_name=\"llmd-sim\",engine=\"0\"}";
    let series = |name: &str| format!("{name}{labels}");

    let body = json!({"prompt": "a long story", "max_tokens": 480, "stream": true, "ignore_eos": true}).to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // Read until the first generated token has arrived: the request is running.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"text\"") {
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    let (_, text) = http(&addr, "GET", "/metrics", "").await;
    assert_eq!(metric(&text, &series("vllm:num_requests_running")), Some(1.0), "{text}");
    assert!(metric(&text, &series("vllm:kv_cache_usage_perc")).is_some_and(|u| u > 0.0), "{text}");
    drop(s);
    // The abort reaches the engine thread asynchronously: poll, bounded well below the
    // request's natural end.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = http(&addr, "GET", "/metrics", "").await;
        let running = metric(&text, &series("vllm:num_requests_running"));
        let usage = metric(&text, &series("vllm:kv_cache_usage_perc"));
        if running == Some(0.0) && usage == Some(0.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "request was not aborted after the client left:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    // Stopped early: fewer tokens than asked for, and no natural finish.
    let generated = metric(&text, &series("vllm:generation_tokens_total")).unwrap();
    assert!(generated < 480.0, "{text}");
    let finished = |reason: &str| {
        metric(
            &text,
            &format!("vllm:request_success_total{{model_name=\"llmd-sim\",engine=\"0\",finished_reason=\"{reason}\"}}"),
        )
    };
    assert_eq!((finished("length"), finished("abort")), (Some(0.0), Some(1.0)), "{text}");
}

#[tokio::test]
async fn kv_events_are_published_over_zmq_in_vllms_framing() {
    use llmd_kvcache::KvEvent;
    use llmd_kvcache::codec::decode_batch;
    use zeromq::{Socket, SocketRecv};

    let cfg = ServerConfig {
        kv_events: Some(llmd_engine::server::KvEventsConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            topic: "kv@test".into(),
        }),
        ..Default::default()
    };
    let (addr, _stop, endpoint) = start_with(cfg).await;
    let endpoint = endpoint.expect("publisher bound");
    let mut sub = zeromq::SubSocket::new();
    sub.connect(&endpoint).await.unwrap();
    sub.subscribe("").await.unwrap();
    // A subscriber misses what was sent before its subscription reached the publisher
    // (ZMQ's slow joiner): keep making events until one arrives, bounded.
    for i in 0..50 {
        let prompt = format!("{i} distinct prompt so that new blocks are stored: {}", "x".repeat(40));
        post(&addr, "/v1/completions", json!({"prompt": prompt, "max_tokens": 1})).await;
        let Ok(msg) = tokio::time::timeout(std::time::Duration::from_millis(200), sub.recv()).await else { continue };
        let frames = msg.unwrap().into_vec();
        assert_eq!(frames.len(), 3, "topic, sequence, payload");
        assert_eq!(&frames[0][..], b"kv@test");
        assert_eq!(frames[1].len(), 8, "8-byte big-endian sequence number");
        let batch = decode_batch(&frames[2]).unwrap();
        assert!(batch.events.iter().any(|e| matches!(e, KvEvent::BlockStored(s) if s.block_size == 16)), "{batch:?}");
        return;
    }
    panic!("no KV event batch arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_and_long_echoes_are_openai_json() {
    let (addr, _stop) = start(8).await;
    for (method, path, body, status) in [
        ("GET", "/v1/nothing-here", "", 404),
        ("GET", "/v1/completions", "", 405),
        ("POST", "/v1/completions", &"x".repeat(3 << 20), 413),
    ] {
        let (got, text) = http(&addr, method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {text}");
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        assert_eq!(v["error"]["code"], status, "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
    }
    // A huge bad field is not echoed back whole.
    let huge = "y".repeat(1_500_000);
    let (status, text) = http(&addr, "POST", "/v1/completions", &format!(r#"{{"prompt": "hi", "n": "{huge}"}}"#)).await;
    assert_eq!(status, 400);
    assert!(text.len() < 4096, "{} bytes came back", text.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_the_openai_routes_only() {
    let (addr, _stop, _) = start_with(ServerConfig { api_key: Some("s3cret".into()), ..Default::default() }).await;
    let body = r#"{"prompt": "hi", "max_tokens": 1}"#;
    for key in [None, Some("wrong"), Some("s3cret2"), Some("")] {
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        let (status, text) = http_with(&addr, "POST", "/v1/completions", body, &auth).await;
        assert_eq!(status, 401, "{key:?}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "AuthenticationError");
    }
    let (status, _) = http_with(&addr, "POST", "/v1/completions", body, "Authorization: Bearer s3cret\r\n").await;
    assert_eq!(status, 200);
    // Probes and scrapers need no key.
    assert_eq!(http(&addr, "GET", "/health", "").await.0, 200);
    assert_eq!(http(&addr, "GET", "/metrics", "").await.0, 200);
}

/// What tells that no request reached the engine: its request counters, all zero.
async fn assert_nothing_ran(addr: &str) {
    let (_, text) = http(addr, "GET", "/metrics", "").await;
    let labels = "{model_name=\"llmd-tiny\",engine=\"0\"}";
    for name in ["vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:e2e_request_latency_seconds_count"] {
        assert_eq!(metric(&text, &format!("{name}{labels}")), Some(0.0), "{name} in\n{text}");
    }
    for reason in ["length", "stop", "abort"] {
        let series =
            format!("vllm:request_success_total{{model_name=\"llmd-tiny\",engine=\"0\",finished_reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series} in\n{text}");
    }
}

fn bos(text: &str) -> Vec<u32> {
    use llmd_engine::Tokenize;
    llmd_engine::ByteTokenizer.encode(text, true).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v["token_ids"].clone()).unwrap()
}

/// A render answer with its id blanked, to compare the rest whole.
fn without_id(mut v: Value) -> Value {
    v["request_id"] = Value::Null;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_routes_answer_with_the_ids_the_generate_routes_run() {
    use llmd_engine::Tokenize;
    let (addr, _stop, _, template) = start_full(ServerConfig::default()).await;

    // A string: one GenerateRequest, every field vLLM 0.33 sends, the ids with BOS.
    let body = json!({"prompt": "Once upon", "max_tokens": 12, "temperature": 0});
    let (status, v) = post(&addr, "/v1/completions/render", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 1, "{v}");
    let id = list[0]["request_id"].as_str().unwrap();
    assert!(id.starts_with("cmpl-") && id.len() > 5 && !id[5..].contains('-'), "{id}");
    let want = json!({
        "request_id": null, "token_ids": bos("Once upon"), "token_offsets": null, "features": null,
        "content_parts": null,
        "sampling_params": {"temperature": 0.0, "stop": [], "stop_token_ids": [], "max_tokens": 12,
            "output_kind": 2, "skip_clone": true, "bad_words": [], "skip_reading_prefix_cache": false},
        "model": null, "reasoning_ended": null, "reasoning_parser_kwargs": null, "return_token_ids": null,
        "output_mode": "tokens", "parse_context": null, "stream": false, "stream_options": null,
        "cache_salt": null, "priority": 0, "kv_transfer_params": null, "ec_transfer_params": null,
    });
    assert_eq!(without_id(list[0].clone()), want);
    let once_upon = ids(&list[0]);

    // Several strings: one each, ids `-0`, `-1` on X-Request-Id's base.
    let (status, v) = post_with(
        &addr,
        "/v1/completions/render",
        json!({"prompt": ["a", "bc"], "model": "llmd-tiny", "request_id": "ignored"}),
        "X-Request-Id: trace-7\r\n",
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let got: Vec<(&str, Vec<u32>)> =
        v.as_array().unwrap().iter().map(|r| (r["request_id"].as_str().unwrap(), ids(r))).collect();
    assert_eq!(got, vec![("cmpl-trace-7-0", bos("a")), ("cmpl-trace-7-1", bos("bc"))]);
    assert_eq!(v[0]["model"], "llmd-tiny");
    assert!(v[0]["sampling_params"].get("max_tokens").is_none(), "16, vLLM's default, is left out: {v}");

    // Token ids pass through as sent; the body's request_id is the base without the header.
    let (status, v) = post(&addr, "/v1/completions/render", json!({"prompt": [[5, 6], [7]]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((ids(&v[0]), ids(&v[1])), (vec![5, 6], vec![7]));
    assert!(
        v[0]["request_id"].as_str().unwrap().ends_with("-0") && v[1]["request_id"].as_str().unwrap().ends_with("-1")
    );
    let (status, v) =
        post(&addr, "/v1/completions/render", json!({"prompt": [5, 6, 7], "request_id": "mine", "priority": -3})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v[0]["request_id"].as_str(), ids(&v[0]), &v[0]["priority"]),
        (Some("cmpl-mine"), vec![5, 6, 7], &json!(-3))
    );

    // Streaming, a salt, stops and seeds: what the engine would run, in vLLM's names.
    let (status, v) = post(
        &addr,
        "/v1/completions/render",
        json!({"prompt": "x", "stream": true, "stream_options": {"include_usage": true}, "cache_salt": "salt",
            "stop": ["END", "\n"], "stop_token_ids": [9, 9, 3], "seed": 4, "top_k": 5, "top_p": 0.5,
            "temperature": 0.7, "logprobs": 2, "ignore_eos": true, "max_tokens": 511, "return_token_ids": true}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v[0]["sampling_params"],
        json!({"temperature": 0.7, "top_p": 0.5, "top_k": 5, "seed": 4, "stop": ["END", "\n"],
            "stop_token_ids": [9, 3], "ignore_eos": true, "max_tokens": 510, "logprobs": 2, "output_kind": 1,
            "skip_clone": true, "output_text_buffer_length": 2, "bad_words": [], "skip_reading_prefix_cache": false}),
        "max_tokens clamped to the context as the engine does"
    );
    assert_eq!(v[0]["stream"], true);
    assert_eq!(v[0]["stream_options"], json!({"include_usage": true, "continuous_usage_stats": false}));
    assert_eq!((&v[0]["cache_salt"], &v[0]["return_token_ids"]), (&json!("salt"), &json!(true)));

    // Chat: the template rendered with the generation prompt, encoded without special
    // tokens; max_tokens what the context leaves.
    let messages = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]);
    let chat = json!({"messages": messages, "temperature": 0});
    let (status, v) = post_with(&addr, "/v1/chat/completions/render", chat.clone(), "X-Request-Id: abc\r\n").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["request_id"], "chatcmpl-abc");
    let msgs =
        [llmd_engine::ChatMessage::new("system", "Be brief."), llmd_engine::ChatMessage::new("user", "Hi there")];
    let direct = llmd_engine::ByteTokenizer.encode(&template.render(&msgs, true).unwrap(), false).unwrap();
    let chat_ids = ids(&v);
    assert_eq!(chat_ids, direct);
    assert_eq!(v["sampling_params"]["max_tokens"], 512 - chat_ids.len());
    assert_eq!(v["sampling_params"]["output_kind"], 2);
    assert_eq!(
        v["parse_context"],
        json!({"tools": null, "tool_choice": "none", "parallel_tool_calls": true, "include_reasoning": true,
            "chat_template_kwargs": {"add_generation_prompt": true, "continue_final_message": false},
            "history_tool_call_cnt": 0})
    );
    assert_eq!(
        (&v["features"], &v["stream_options"], &v["reasoning_ended"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    // Streaming without stream_options: none, as vLLM.
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let (status, v) = post(&addr, "/v1/chat/completions/render", streamed).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (&v["stream"], &v["stream_options"], &v["sampling_params"]["output_kind"]),
        (&json!(true), &Value::Null, &json!(1))
    );
    assert_eq!(ids(&v), chat_ids);
    let mut no_gen = chat.clone();
    no_gen["add_generation_prompt"] = json!(false);
    let (status, v) = post(&addr, "/v1/chat/completions/render", no_gen).await;
    assert_eq!(status, 200, "{v}");
    let direct = llmd_engine::ByteTokenizer.encode(&template.render(&msgs, false).unwrap(), false).unwrap();
    assert_eq!(ids(&v), direct);
    assert_ne!(ids(&v), chat_ids);
    assert_eq!(v["parse_context"]["chat_template_kwargs"]["add_generation_prompt"], false);
    let id = v["request_id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() > 9, "{id}");

    // None of that reached the engine.
    assert_nothing_ran(&addr).await;

    // The generate routes run those very ids: the same prompt counts, and the rendered
    // ids as a completions prompt give the same greedy text.
    let (status, done) = post(&addr, "/v1/completions", body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["usage"]["prompt_tokens"], once_upon.len());
    let (status, again) =
        post(&addr, "/v1/completions", json!({"prompt": once_upon, "max_tokens": 12, "temperature": 0})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["choices"][0]["text"], done["choices"][0]["text"]);

    let mut chat_run = chat.clone();
    chat_run["max_tokens"] = json!(6);
    let (status, done) = post(&addr, "/v1/chat/completions", chat_run).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["usage"]["prompt_tokens"], chat_ids.len());
    let (status, again) =
        post(&addr, "/v1/completions", json!({"prompt": chat_ids, "max_tokens": 6, "temperature": 0})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["choices"][0]["text"], done["choices"][0]["message"]["content"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_errors_are_the_generate_routes_openai_errors() {
    let (addr, _stop) = start(100).await;
    let long = "x".repeat(600);
    let (c, ch) = ("/v1/completions/render", "/v1/chat/completions/render");
    let cases: Vec<(&str, String, u16, Option<&str>)> = vec![
        (c, "{not json".into(), 400, None),
        (ch, "{not json".into(), 400, None),
        (c, json!({"prompt": 5}).to_string(), 400, None),
        (c, json!({"prompt": []}).to_string(), 400, Some("prompt")),
        (c, json!({"model": "gpt-9", "prompt": "hi"}).to_string(), 404, Some("model")),
        (
            ch,
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
            404,
            Some("model"),
        ),
        (ch, json!({"messages": []}).to_string(), 400, Some("messages")),
        (ch, json!({"messages": [{"role": "user", "content": long}]}).to_string(), 400, Some("messages")),
        (
            ch,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            400,
            Some("messages"),
        ),
        (c, json!({"prompt": long}).to_string(), 400, Some("prompt")),
        (c, json!({"prompt": ["ok", [1]]}).to_string(), 400, None),
        (c, json!({"prompt": [[1], [999999]]}).to_string(), 400, Some("prompt")),
        (c, json!({"prompt": "hi", "echo": true}).to_string(), 400, Some("echo")),
        (c, json!({"prompt": "hi", "presence_penalty": 0.5}).to_string(), 400, Some("presence_penalty")),
        (c, json!({"prompt": "hi", "use_beam_search": true}).to_string(), 400, Some("use_beam_search")),
        (c, json!({"prompt": "hi", "temperature": -2}).to_string(), 400, Some("temperature")),
        (c, json!({"prompt": "hi", "n": 2}).to_string(), 400, Some("n")),
        (c, json!({"prompt": "hi", "priority": "high"}).to_string(), 400, Some("priority")),
        (c, json!({"prompt": "hi", "request_id": 5}).to_string(), 400, Some("request_id")),
        (
            ch,
            json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}).to_string(),
            400,
            Some("top_logprobs"),
        ),
    ];
    for (path, body, want, param) in cases {
        let (status, text) = http(&addr, "POST", path, &body).await;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{body}: non-JSON error {text}"));
        assert_eq!(status, want, "{path} {body} -> {v}");
        assert_eq!(v["error"]["code"], want, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{path} {body} -> {v}");
        }
    }
    // A body that is not JSON by its media type, as vLLM's validate_json_request.
    for path in [c, ch] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let body = r#"{"prompt": "hi"}"#;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
        let v: Value = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(v["error"]["type"], "BadRequestError", "{v}");
    }
    // GET is not a route.
    assert_eq!(http(&addr, "GET", c, "").await.0, 405);
    assert_nothing_ran(&addr).await;
}
