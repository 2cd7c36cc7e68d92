//! vLLM's render routes (`vllm/entrypoints/scale_out/render/`):
//! `POST /v1/completions/render` and `POST /v1/chat/completions/render` take the body
//! of `/v1/completions` / `/v1/chat/completions` and answer with what the engine would
//! be asked to run instead of running it: vLLM's `GenerateRequest`, a list of them (one
//! per prompt) for completions, one for chat. llm-d's router (its `token-producer`, vLLM
//! backend) reads their `token_ids` to score endpoints by cached prefix.
//!
//! The prompt and sampling parameters come from the same functions the generate routes
//! use ([`prepare_completion`], [`prepare_chat`]), and the engine's admission checks run
//! here, on the handler's task ([`EngineHandle::validate`](crate::EngineHandle::validate)):
//! a render answers 200 exactly when its generate call would be admitted (queue limits
//! aside), and submits nothing.
//!
//! Every field vLLM sends is sent. Always `null` here, as llmd cannot fill them:
//! `token_offsets` (llmd's tokenizer interface gives no character offsets; vLLM fills
//! it only on `return_token_offsets`), `features` and `content_parts` (prompts are text
//! only; image parts are refused), `reasoning_ended` and `reasoning_parser_kwargs` (no
//! reasoning parser: vLLM's `null` too), `kv_transfer_params` and `ec_transfer_params`
//! (the engine does not act on a body's transfer parameters, so it would not run them).
//! `sampling_params` is what the engine runs, in vLLM's names and serialization (only
//! what differs from vLLM's defaults, plus what vLLM always sets); vLLM's parameters
//! that llmd does not implement are never sent: those with a neutral value (penalties,
//! `min_p`, `n`, `logit_bias`, `structured_outputs`, …) are refused when set, as by the
//! generate routes, and the rest (`skip_special_tokens`, `stream_interval`,
//! `thinking_token_budget`, `extra_args`, …) are ignored by the engine, so their
//! defaults are the truth. One value differs from vLLM by design: vLLM raises a
//! temperature in (0, 0.01) to 0.01, llmd runs it and sends it as asked.

// Handlers bail out with a ready `Response`; it is large, but only on the error path.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use llmd_openai::generate::{
    GenerateRequest, GenerateSamplingParams, GenerateStreamOptions, OutputMode, ParseContext, RequestOutputKind,
};
use serde_json::{Map, Value};

use super::AppState;
use super::handlers::{
    Shared, bad_request, check_common, engine_error_for, json_content_type, new_request, parse, prepare_chat,
    prepare_completion,
};
use super::openai::{ChatRequest, Common, CompletionRequest, ErrorBody};
use crate::engine::{KvTransfer, NewRequest};

/// vLLM's request fields that llmd's generate routes accept and do not act on (they sit
/// in [`Common::other`]), read for the render answer as vLLM's pydantic model would.
struct Extras {
    /// `X-Request-Id`, else the body's `request_id`; `None`: a fresh one.
    base_id: Option<String>,
    priority: i64,
    return_token_ids: Option<bool>,
}

impl Extras {
    fn read(headers: &HeaderMap, c: &Common) -> Result<Self, Response> {
        let body_id = match c.other.get("request_id") {
            None => None,
            Some(Value::String(id)) => Some(id.clone()),
            Some(_) => return Err(bad_request("request_id must be a string", Some("request_id"))),
        };
        // vLLM's `_base_request_id`: the header wins, even when empty.
        let header_id = headers.get("x-request-id").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let priority = match c.other.get("priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| bad_request("priority must be an integer", Some("priority")))?,
        };
        let return_token_ids = match c.other.get("return_token_ids") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_bool()
                    .ok_or_else(|| bad_request("return_token_ids must be a boolean", Some("return_token_ids")))?,
            ),
        };
        Ok(Extras { base_id: header_id.or(body_id), priority, return_token_ids })
    }

    fn base_id(&self, s: &AppState) -> String {
        self.base_id.clone().unwrap_or_else(|| s.base_id())
    }
}

/// An engine request, checked as the engine would admit it, as vLLM's `GenerateRequest`.
fn generate_request(
    s: &AppState,
    r: NewRequest,
    c: &Common,
    extras: &Extras,
    parse_context: Option<ParseContext>,
) -> GenerateRequest {
    let max_tokens = s.engine.admitted_max_tokens(&r);
    let p = r.params;
    // vLLM's SamplingParams.__post_init__: greedy ignores top-p and top-k, so they read
    // as off; duplicate stop ids go (order kept); streamed text holds back one character
    // less than the longest stop string.
    let greedy = p.temperature == 0.0;
    let mut stop_token_ids = Vec::with_capacity(p.stop_token_ids.len());
    for t in p.stop_token_ids {
        if !stop_token_ids.contains(&t) {
            stop_token_ids.push(t);
        }
    }
    let output_text_buffer_length = p.stop.iter().map(|s| s.chars().count()).max().map_or(0, |n| n.saturating_sub(1));
    let sampling_params = GenerateSamplingParams {
        temperature: p.temperature,
        top_p: if greedy { 1.0 } else { p.top_p },
        top_k: if greedy { 0 } else { p.top_k },
        seed: p.seed,
        stop: p.stop,
        stop_token_ids,
        ignore_eos: p.ignore_eos,
        max_tokens: Some(max_tokens),
        logprobs: p.logprobs.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        // Set by vLLM's `to_sampling_params` for every request, as llmd delivers them.
        output_kind: if c.stream { RequestOutputKind::Delta } else { RequestOutputKind::FinalOnly },
        skip_clone: true,
        output_text_buffer_length,
        bad_words: Vec::new(),
        // llmd has no prompt logprobs, so every request reads the prefix cache.
        skip_reading_prefix_cache: Some(false),
        other: Map::new(),
    };
    GenerateRequest {
        request_id: r.id,
        token_ids: r.prompt,
        token_offsets: None,
        features: None,
        content_parts: None,
        sampling_params,
        model: c.model.clone(),
        reasoning_ended: None,
        reasoning_parser_kwargs: None,
        return_token_ids: extras.return_token_ids,
        output_mode: OutputMode::Tokens,
        parse_context,
        stream: c.stream,
        // vLLM: the body's options when it streams. llmd never sends per-chunk usage, so
        // `continuous_usage_stats` is false.
        stream_options: c
            .stream_options
            .as_ref()
            .filter(|_| c.stream)
            .map(|o| GenerateStreamOptions { include_usage: o.include_usage, continuous_usage_stats: false }),
        // The engine treats an empty salt as none.
        cache_salt: c.cache_salt.clone().filter(|s| !s.is_empty()),
        priority: extras.priority,
        kv_transfer_params: None,
        ec_transfer_params: None,
    }
}

/// `POST /v1/completions/render`: one `GenerateRequest` per prompt, ids `cmpl-{base}`,
/// or `cmpl-{base}-{i}` when the body holds several prompts.
pub(crate) async fn completions(State(s): Shared, headers: HeaderMap, body: Bytes) -> Response {
    render_completions(&s, &headers, &body).map_or_else(|resp| resp, |out| axum::Json(out).into_response())
}

fn render_completions(s: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<Vec<GenerateRequest>, Response> {
    json_content_type(headers)?;
    let mut req: CompletionRequest = parse(body)?;
    check_common(s, &req.common)?;
    let extras = Extras::read(headers, &req.common)?;
    let prompts = std::mem::take(&mut req.prompt).into_prompts().map_err(|e| ErrorBody::from(e).into_response())?;
    let base = format!("cmpl-{}", extras.base_id(s));
    let n = prompts.len();
    let mut out = Vec::with_capacity(n);
    for (i, prompt) in prompts.into_iter().enumerate() {
        let prepared = prepare_completion(s, &req, prompt)?;
        let id = if n == 1 { base.clone() } else { format!("{base}-{i}") };
        let r = new_request(id, prepared, &req.common, KvTransfer::None);
        s.engine.validate(&r).map_err(|e| engine_error_for(e, "prompt"))?;
        out.push(generate_request(s, r, &req.common, &extras, None));
    }
    Ok(out)
}

/// `POST /v1/chat/completions/render`: one `GenerateRequest`, id `chatcmpl-{base}`.
pub(crate) async fn chat(State(s): Shared, headers: HeaderMap, body: Bytes) -> Response {
    render_chat(&s, &headers, &body).map_or_else(|resp| resp, |out| axum::Json(out).into_response())
}

fn render_chat(s: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<GenerateRequest, Response> {
    json_content_type(headers)?;
    let req: ChatRequest = parse(body)?;
    check_common(s, &req.common)?;
    let extras = Extras::read(headers, &req.common)?;
    let prepared = prepare_chat(s, &req)?;
    let r = new_request(format!("chatcmpl-{}", extras.base_id(s)), prepared, &req.common, KvTransfer::None);
    s.engine.validate(&r).map_err(|e| engine_error_for(e, "messages"))?;
    // What the template was rendered with: llmd passes it `add_generation_prompt` only
    // (so never continues the final message), and has no tools (refused) and no
    // reasoning parser.
    let chat_template_kwargs = Map::from_iter([
        ("add_generation_prompt".to_string(), Value::Bool(req.add_generation_prompt)),
        ("continue_final_message".to_string(), Value::Bool(false)),
    ]);
    let ctx = ParseContext { chat_template_kwargs, ..ParseContext::default() };
    Ok(generate_request(s, r, &req.common, &extras, Some(ctx)))
}
