//! Route handlers: parse and validate, hand the request to the engine thread, and turn
//! its outputs into OpenAI responses or SSE streams. Errors are OpenAI-style bodies
//! `{"error": {"message", "type", "param", "code"}}` with a fitting status.

// Handlers bail out with a ready `Response`; it is large, but only on the error path.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::mpsc as tmpsc;

use super::AppState;
use super::openai::*;
use crate::engine::{FinishReason, KvTransfer, NewRequest, RequestOutput, StopReason};
use crate::error::EngineError;
use crate::handle::RequestStream;
use crate::sampling::{Sampled, SamplingParams};
use llmd_kvcache::RequestKeys;

pub(super) type Shared = State<Arc<AppState>>;

/// An OpenAI-style error response.
pub(crate) fn error(kind: ErrorKind, message: impl Into<String>, param: Option<&str>) -> Response {
    ErrorBody::new(kind, message).with_param_opt(param).into_response()
}

pub(super) fn bad_request(message: impl Into<String>, param: Option<&str>) -> Response {
    error(ErrorKind::BadRequest, message, param)
}

fn stop_reason(o: &RequestOutput) -> Option<Value> {
    match &o.stop_reason {
        None => None,
        Some(StopReason::Token(t)) => Some(Value::from(*t)),
        Some(StopReason::Text(s)) => Some(Value::from(s.clone())),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn engine_error(e: EngineError) -> Response {
    engine_error_for(e, "prompt")
}

/// `prompt_param` names where the prompt came from (`prompt` or `messages`).
pub(super) fn engine_error_for(e: EngineError, prompt_param: &str) -> Response {
    match e {
        EngineError::InvalidParam { param, message } => bad_request(message, Some(&param)),
        e @ EngineError::ContextTooLong { .. } => bad_request(e.to_string(), Some(prompt_param)),
        e @ EngineError::Overloaded { .. } => error(ErrorKind::RateLimit, e.to_string(), None),
        e @ EngineError::EngineDead(_) => error(ErrorKind::ServiceUnavailable, e.to_string(), None),
        e @ EngineError::Tokenizer(_) => bad_request(e.to_string(), None),
        e => error(ErrorKind::InternalServer, e.to_string(), None),
    }
}

/// vLLM's `validate_json_request` (`vllm/entrypoints/openai/utils.py`): a body whose
/// media type is not `application/json` is refused with a 400, before it is parsed.
pub(super) fn json_content_type(headers: &HeaderMap) -> Result<(), Response> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if media.as_deref() == Some("application/json") {
        Ok(())
    } else {
        Err(bad_request("Unsupported Media Type: Only 'application/json' is allowed", None))
    }
}

/// Parses a JSON body; lone UTF-16 surrogates (which Python's `json` writes) read as
/// U+FFFD rather than failing the request.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    llmd_openai::json::from_slice(body).map_err(|e| {
        let msg = if e.is_syntax() || e.is_eof() {
            format!("request body is not valid JSON: {e}")
        } else {
            format!("invalid request: {e}")
        };
        bad_request(msg, None)
    })
}

pub(super) fn check_common(s: &AppState, c: &Common) -> Result<(), Response> {
    if let Some(m) = &c.model
        && m != &s.model_name
    {
        return Err(error(ErrorKind::NotFound, format!("The model `{m}` does not exist."), Some("model")));
    }
    if c.n.is_some_and(|n| n != 1) {
        return Err(bad_request("only n=1 is supported", Some("n")));
    }
    if let Some(p) = c.unsupported() {
        return Err(bad_request(format!("{p} is not supported by this server"), Some(p)));
    }
    if !s.engine.is_alive() {
        return Err(engine_error(EngineError::EngineDead("the engine loop has stopped".into())));
    }
    Ok(())
}

/// The request's sampling parameters, with the checkpoint's generation defaults for
/// those it leaves out (as vLLM does).
fn sampling(s: &AppState, c: &Common, max_tokens: usize, logprobs: Option<usize>) -> Result<SamplingParams, Response> {
    let d = &s.defaults;
    let min_tokens = min_tokens(c).map_err(|m| bad_request(m, Some("min_tokens")))?;
    if min_tokens > max_tokens {
        return Err(bad_request(
            format!("min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}."),
            Some("min_tokens"),
        ));
    }
    Ok(SamplingParams {
        max_tokens,
        temperature: c.temperature.or(d.temperature).unwrap_or(1.0),
        top_k: c.top_k.or(d.top_k).unwrap_or(0),
        top_p: c.top_p.or(d.top_p).unwrap_or(1.0),
        seed: c.seed,
        stop_token_ids: c.stop_token_ids.clone(),
        stop: c.stop.clone().map(Stop::into_vec).unwrap_or_default(),
        ignore_eos: c.ignore_eos,
        min_tokens,
        logprobs,
    })
}

/// `min_tokens` as sent (vLLM's sampling parameter); `Err` names what is wrong.
fn min_tokens(c: &Common) -> Result<usize, String> {
    match c.other.get("min_tokens") {
        None | Some(serde_json::Value::Null) => Ok(0),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("min_tokens must be a non-negative integer, got {v}")),
    }
}

/// What a generate route hands the engine for one prompt: the prompt's token ids and
/// the sampling parameters. Its render route builds them with the same function, so
/// both see the same ids.
pub(super) struct Prepared {
    pub(super) prompt: Vec<u32>,
    pub(super) params: SamplingParams,
}

/// One prompt of a `/v1/completions` body made ready: text encoded with special tokens
/// (as vLLM does for completions), ids as sent; the body's sampling parameters.
pub(super) fn prepare_completion(
    s: &AppState,
    req: &CompletionRequest,
    prompt: SinglePrompt,
) -> Result<Prepared, Response> {
    let prompt = match prompt {
        SinglePrompt::Text(t) => s.tokenizer.encode(&t, true).map_err(|e| engine_error(e.into()))?,
        SinglePrompt::Tokens(ids) => ids,
    };
    if req.echo {
        return Err(bad_request("echo is not supported", Some("echo")));
    }
    let params = sampling(s, &req.common, req.max_tokens.unwrap_or(16), req.logprobs)?;
    Ok(Prepared { prompt, params })
}

/// A `/v1/chat/completions` body made ready: its messages (text only) rendered with the
/// chat template (`add_generation_prompt` as asked), encoded without special tokens
/// (the template writes them); `max_tokens` defaults to what the context leaves.
pub(super) fn prepare_chat(s: &AppState, req: &ChatRequest) -> Result<Prepared, Response> {
    let messages = chat_messages(req)?;
    let prompt = s
        .template
        .render(&messages, req.add_generation_prompt)
        .and_then(|text| s.tokenizer.encode(&text, false))
        .map_err(|e| engine_error(e.into()))?;
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or_else(|| s.max_model_len.saturating_sub(prompt.len()).max(1));
    if req.top_logprobs.is_some_and(|n| n > crate::sampling::MAX_LOGPROBS) {
        return Err(bad_request(
            format!("top_logprobs must be at most {}", crate::sampling::MAX_LOGPROBS),
            Some("top_logprobs"),
        ));
    }
    let logprobs = req.logprobs.then(|| req.top_logprobs.unwrap_or(0));
    let params = sampling(s, &req.common, max_tokens, logprobs)?;
    Ok(Prepared { prompt, params })
}

/// The body's cache salt as a prefix-cache key.
fn request_keys(c: &Common) -> RequestKeys {
    RequestKeys::new().with_cache_salt(c.cache_salt.clone().unwrap_or_default())
}

/// What the body's `kv_transfer_params` make of the request (a prefill for a decode
/// elsewhere, or a decode of a prompt prefilled elsewhere, whose blocks are pulled
/// here first); nothing when this server takes no part in disaggregation.
async fn kv_transfer(s: &AppState, p: &Prepared, c: &Common) -> Result<KvTransfer, Response> {
    let Some(pd) = &s.pd else {
        if c.other.get("kv_transfer_params").is_some_and(|v| !v.is_null()) {
            tracing::debug!("kv_transfer_params ignored: no --kv-transfer-config");
        }
        return Ok(KvTransfer::None);
    };
    pd.plan(&s.engine, c.other.get("kv_transfer_params"), c.stream, &p.prompt, &request_keys(c))
        .await
        .map_err(|e| error(ErrorKind::InternalServer, e.0, Some("kv_transfer_params")))
}

/// After a request: the `kv_transfer_params` its answer carries (a prefill's).
fn kv_transfer_answer(s: &AppState, id: &str, last: &mut RequestOutput) -> Option<Value> {
    s.pd.as_ref()?.finish(id, last.prompt_tokens, last.kv_transfer.take())
}

/// The engine request for a prepared prompt: `id`, and the body's cache salt as a
/// prefix-cache key.
pub(super) fn new_request(id: String, p: Prepared, c: &Common, kv_transfer: KvTransfer) -> NewRequest {
    NewRequest { id, prompt: p.prompt, params: p.params, keys: request_keys(c), kv_transfer }
}

/// Hands a request to the engine thread; the stream aborts it if dropped before its
/// end (client gone).
async fn submit(s: &AppState, req: NewRequest, prompt_param: &str) -> Result<RequestStream, Response> {
    s.engine.submit_async(req).await.map_err(|e| engine_error_for(e, prompt_param))
}

/// Names a new request, hands it to the engine, and returns its id and output channel.
async fn start(
    s: &AppState,
    id_prefix: &str,
    prepared: Prepared,
    c: &Common,
    prompt_param: &str,
) -> Result<(String, RequestStream), Response> {
    let transfer = kv_transfer(s, &prepared, c).await?;
    let id = s.request_id(id_prefix);
    let rx = submit(s, new_request(id.clone(), prepared, c, transfer), prompt_param).await?;
    Ok((id, rx))
}

fn token_text(s: &AppState, id: u32) -> String {
    s.tokenizer.decode(&[id], false).unwrap_or_default()
}

fn completion_logprobs(s: &AppState, items: &[(u32, Sampled)], offset: usize) -> CompletionLogprobs {
    let mut lp = CompletionLogprobs::default();
    let mut at = offset;
    for (tok, smp) in items {
        let text = token_text(s, *tok);
        lp.text_offset.push(at);
        at += text.len();
        lp.tokens.push(text);
        lp.token_logprobs.push(smp.logprob.unwrap_or(0.0));
        lp.top_logprobs
            .push(smp.top.iter().map(|t| (token_text(s, t.token), Value::from(f64::from(t.logprob)))).collect());
    }
    lp
}

fn chat_logprobs(s: &AppState, items: &[(u32, Sampled)]) -> ChatLogprobs {
    ChatLogprobs {
        content: items
            .iter()
            .map(|(tok, smp)| {
                let token = token_text(s, *tok);
                ChatTokenLogprob {
                    bytes: token.as_bytes().to_vec(),
                    logprob: smp.logprob.unwrap_or(0.0),
                    top_logprobs: smp
                        .top
                        .iter()
                        .map(|t| {
                            let token = token_text(s, t.token);
                            TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob: t.logprob }
                        })
                        .collect(),
                    token,
                }
            })
            .collect(),
    }
}

fn sampled_pairs(o: &RequestOutput) -> Vec<(u32, Sampled)> {
    o.token_ids.iter().copied().zip(o.logprobs.iter().cloned()).collect()
}

/// Why a request still in flight at the drain deadline ends.
const CUT: &str = "the server is shutting down: the request was still in flight at the drain deadline";

/// Collects a request's outputs to the end, or until `cut` (the drain deadline).
async fn collect(
    rx: &mut RequestStream,
    cut: impl Future<Output = ()>,
) -> Result<(String, Vec<(u32, Sampled)>, RequestOutput), Response> {
    let mut text = String::new();
    let mut lps = Vec::new();
    tokio::pin!(cut);
    loop {
        let o = tokio::select! {
            o = rx.recv() => o,
            () = &mut cut => return Err(error(ErrorKind::ServiceUnavailable, CUT, None)),
        };
        let Some(o) = o else { break };
        text.push_str(&o.text);
        lps.extend(sampled_pairs(&o));
        if o.finished.is_some() {
            if o.finished == Some(FinishReason::Error) {
                return Err(error(ErrorKind::InternalServer, "the model failed while computing this request", None));
            }
            return Ok((text, lps, o));
        }
    }
    Err(engine_error(EngineError::EngineDead("the engine stopped while serving the request".into())))
}

fn sse_json<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_else(|e| ErrorBody::internal(e.to_string()).to_json()))
}

/// Streams `render(output)` for each output, then `[DONE]`. A task moves events into
/// the response body; when the client goes away its send fails and the dropped stream
/// aborts the request. Nothing is sent before the first output: a picker in front
/// takes the first body byte as the end of the prefill (as vLLM behaves). At `cut` (the
/// drain deadline) the stream ends with an error event rather than a bare cut.
fn sse_stream(
    mut rx: RequestStream,
    cut: impl Future<Output = ()> + Send + 'static,
    mut render: impl FnMut(&RequestOutput) -> Vec<Event> + Send + 'static,
) -> Response {
    let (tx, events) = tmpsc::channel::<Event>(64);
    tokio::spawn(async move {
        tokio::pin!(cut);
        loop {
            let next = tokio::select! {
                o = rx.recv() => o,
                () = &mut cut => {
                    let _ = tx.send(Event::default().data(ErrorBody::unavailable(CUT).to_json())).await;
                    let _ = tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
            };
            let Some(o) = next else {
                let e = ErrorBody::unavailable("the engine stopped while streaming");
                let _ = tx.send(Event::default().data(e.to_json())).await;
                let _ = tx.send(Event::default().data("[DONE]")).await;
                return;
            };
            if o.finished == Some(FinishReason::Error) {
                let e = ErrorBody::internal("the model failed while computing this request");
                let _ = tx.send(Event::default().data(e.to_json())).await;
                let _ = tx.send(Event::default().data("[DONE]")).await;
                return;
            }
            let done = o.finished.is_some();
            for e in render(&o) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            if done {
                let _ = tx.send(Event::default().data("[DONE]")).await;
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(
            events,
            |mut r| async move { r.recv().await.map(|e| (Ok::<Event, Infallible>(e), r)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// The usage totals, on a request's last output.
fn final_usage(o: &RequestOutput) -> Option<Usage> {
    o.finished.is_some().then(|| Usage::new(o.prompt_tokens, o.completion_tokens, o.cached_tokens))
}

/// The events of one output: its choice chunk, if it says anything, then — after the
/// last output, when the client asked for usage — the usage chunk.
fn output_events<C, T: Serialize>(
    o: &RequestOutput,
    choice: Option<C>,
    usage: bool,
    chunk: &impl Fn(Vec<C>, Option<Usage>) -> T,
) -> Vec<Event> {
    let mut events: Vec<Event> = choice.map(|c| sse_json(&chunk(vec![c], None))).into_iter().collect();
    if let Some(u) = final_usage(o).filter(|_| usage) {
        events.push(sse_json(&chunk(Vec::new(), Some(u))));
    }
    events
}

fn include_usage(c: &Common) -> bool {
    c.stream_options.as_ref().is_some_and(|o| o.include_usage)
}

/// `POST /v1/completions`.
pub(crate) async fn completions(State(s): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = json_content_type(&headers) {
        return resp;
    }
    let mut req: CompletionRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_common(&s, &req.common) {
        return resp;
    }
    let prompt = match std::mem::take(&mut req.prompt).single() {
        Ok(p) => p,
        Err(e) => return ErrorBody::from(e).into_response(),
    };
    let prepared = match prepare_completion(&s, &req, prompt) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (id, mut rx) = match start(&s, "cmpl", prepared, &req.common, "prompt").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let model = s.model_name.clone();
    let created = now_secs();
    let want_logprobs = req.logprobs.is_some();
    if !req.common.stream {
        let (text, lps, mut last) = match collect(&mut rx, s.lifecycle.cut()).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        let kv_transfer_params = kv_transfer_answer(&s, &id, &mut last);
        let resp = CompletionResponse {
            id,
            object: CompletionResponse::OBJECT.into(),
            created,
            model,
            choices: vec![CompletionChoice {
                index: 0,
                text,
                logprobs: want_logprobs.then(|| completion_logprobs(&s, &lps, 0)),
                finish_reason: last.finished.map(|f| f.as_str().into()),
                stop_reason: stop_reason(&last),
            }],
            usage: Some(Usage::new(last.prompt_tokens, last.completion_tokens, last.cached_tokens)),
            kv_transfer_params,
        };
        return axum::Json(resp).into_response();
    }
    let usage = include_usage(&req.common);
    let st = s.clone();
    let mut offset = 0;
    let chunk = move |choices, usage| CompletionResponse {
        id: id.clone(),
        object: CompletionResponse::OBJECT.into(),
        created,
        model: model.clone(),
        choices,
        usage,
        kv_transfer_params: None,
    };
    sse_stream(rx, s.lifecycle.cut(), move |o| {
        if o.finished.is_some() {
            kv_transfer_answer(&st, &o.id, &mut o.clone());
        }
        let lp = want_logprobs.then(|| completion_logprobs(&st, &sampled_pairs(o), offset));
        offset += o.text.len();
        let choice = (!o.text.is_empty() || o.finished.is_some() || lp.is_some()).then(|| CompletionChoice {
            index: 0,
            text: o.text.clone(),
            logprobs: lp,
            finish_reason: o.finished.map(|f| f.as_str().into()),
            stop_reason: stop_reason(o),
        });
        output_events(o, choice, usage, &chunk)
    })
}

/// The messages with their content as text; a non-text part is refused.
pub(super) fn chat_messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, Response> {
    if req.messages.is_empty() {
        return Err(bad_request("messages must not be empty", Some("messages")));
    }
    req.messages.iter().map(|m| m.flattened().map_err(|e| ErrorBody::from(e).into_response())).collect()
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(s): Shared, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(resp) = json_content_type(&headers) {
        return resp;
    }
    let req: ChatRequest = match parse(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = check_common(&s, &req.common) {
        return resp;
    }
    let prepared = match prepare_chat(&s, &req) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (id, mut rx) = match start(&s, "chatcmpl", prepared, &req.common, "messages").await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let model = s.model_name.clone();
    let created = now_secs();
    if !req.common.stream {
        let (text, lps, mut last) = match collect(&mut rx, s.lifecycle.cut()).await {
            Ok(x) => x,
            Err(resp) => return resp,
        };
        let kv_transfer_params = kv_transfer_answer(&s, &id, &mut last);
        let resp = ChatResponse {
            id,
            object: ChatResponse::OBJECT.into(),
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: ChatMessage::new("assistant", text),
                logprobs: req.logprobs.then(|| chat_logprobs(&s, &lps)),
                finish_reason: last.finished.map(|f| f.as_str().into()),
                stop_reason: stop_reason(&last),
            }],
            usage: Usage::new(last.prompt_tokens, last.completion_tokens, last.cached_tokens),
            kv_transfer_params,
        };
        return axum::Json(resp).into_response();
    }
    let usage = include_usage(&req.common);
    let want_logprobs = req.logprobs;
    let chunk = move |choices, usage| ChatChunk {
        id: id.clone(),
        object: ChatChunk::OBJECT.into(),
        created,
        model: model.clone(),
        choices,
        usage,
    };
    let st = s.clone();
    let mut role_sent = false;
    sse_stream(rx, s.lifecycle.cut(), move |o| {
        if o.finished.is_some() {
            kv_transfer_answer(&st, &o.id, &mut o.clone());
        }
        let mut events = Vec::new();
        // The role chunk goes with the first output, after the prefill, as vLLM sends it.
        if !std::mem::replace(&mut role_sent, true) {
            let role = ChatChunkChoice {
                index: 0,
                delta: Delta { role: Some("assistant".into()), content: Some(String::new()) },
                logprobs: None,
                finish_reason: None,
                stop_reason: None,
            };
            events.push(sse_json(&chunk(vec![role], None)));
        }
        // A token whose text is held back still carries its logprobs.
        let say = !o.text.is_empty() || o.finished.is_some() || (want_logprobs && !o.logprobs.is_empty());
        let choice = say.then(|| ChatChunkChoice {
            index: 0,
            delta: Delta { role: None, content: (!o.text.is_empty()).then(|| o.text.clone()) },
            logprobs: want_logprobs.then(|| chat_logprobs(&st, &sampled_pairs(o))),
            finish_reason: o.finished.map(|f| f.as_str().into()),
            stop_reason: stop_reason(o),
        });
        events.extend(output_events(o, choice, usage, &chunk));
        events
    })
}

/// `GET /v1/models`.
pub(crate) async fn models(State(s): Shared) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_name,
            "object": "model",
            "created": s.created,
            "owned_by": "llmd",
            "root": s.model_name,
            "max_model_len": s.max_model_len,
        }]
    }))
    .into_response()
}

/// `GET /health`: 200 while the engine loop runs; 503 after it stopped, and from the
/// start of a drain (so that a load balancer stops sending before the server stops).
pub(crate) async fn health(State(s): Shared) -> Response {
    if s.lifecycle.is_draining() {
        return error(ErrorKind::ServiceUnavailable, "the server is shutting down", None);
    }
    if s.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        engine_error(EngineError::EngineDead("the engine loop has stopped".into()))
    }
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(s): Shared) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return error(ErrorKind::InternalServer, e.to_string(), None);
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
