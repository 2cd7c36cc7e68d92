//! `openai-parser`: llmd's reading of OpenAI bodies (model, prompt text, prompt ids,
//! multimodal parts, as the picker has read them), the router's request checks (which
//! the Vertex AI parser applies to the JSON it unwraps), and the router's usage
//! extraction from JSON bodies and SSE streams.

use serde_json::Value;

use super::gotypes::{self as go, R};
use super::{ParsedBody, Usage, match_path_suffix};

/// The OpenAI API a path addresses (the router's `determineAPITypeFromPath`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Api {
    Conversations,
    Responses,
    Chat,
    Completions,
    Embeddings,
    Images,
}

/// The API of `path`; completions for anything unknown, as the router defaults.
pub(super) fn api_type(path: &str) -> Api {
    let is = |s: &str| match_path_suffix(path, s);
    if is("/conversations") {
        Api::Conversations
    } else if is("/responses") {
        Api::Responses
    } else if is("/chat/completions") || is("/chat/completions/render") {
        Api::Chat
    } else if is("/completions") || is("/completions/render") {
        Api::Completions
    } else if is("/embeddings") {
        Api::Embeddings
    } else if is("/images/generations") {
        Api::Images
    } else {
        Api::Completions
    }
}

/// llmd's reading of an OpenAI body: model, prompt text and ids, multimodal parts (what
/// the picker has read, through the same llmd-openai functions), and the stream flag,
/// cache salt and output cap the router reads. Refuses nothing.
pub(super) fn parse(path: &str, body: &Value) -> ParsedBody {
    let max_output_tokens = match api_type(path) {
        Api::Chat => go::max_output_tokens(body, &["max_completion_tokens", "max_tokens"]),
        Api::Completions => go::max_output_tokens(body, &["max_tokens"]),
        Api::Responses => go::max_output_tokens(body, &["max_output_tokens"]),
        Api::Conversations | Api::Embeddings | Api::Images => None,
    };
    ParsedBody {
        model: body.get("model").and_then(Value::as_str).unwrap_or_default().to_string(),
        prompt: llmd_openai::prompt_text(body),
        token_ids: llmd_openai::prompt_token_ids(body),
        stream: go::map_stream(body),
        multimodal: crate::request::count_multimodal(body),
        cache_salt: body.get("cache_salt").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string),
        max_output_tokens,
        skip_response: false,
    }
}

/// The router's OpenAI parser on a decoded body: its refusals (`extractRequestBody`, whose
/// messages name only the missing field, whatever failed to decode), then llmd's reading.
pub(super) fn parse_checked(path: &str, body: &Value) -> R<ParsedBody> {
    go::top_level(body, "map[string]interface {}").map_err(|e| format!("error unmarshaling request bodyMap: {e}"))?;
    let api = api_type(path);
    let (ok, what) = match api {
        Api::Conversations => (conversations_ok(body), "invalid conversations request: must have items field"),
        Api::Responses => (responses_ok(body), "invalid responses request: must have input field"),
        Api::Chat => (chat_ok(body), "invalid chat completions request: must have valid messages field"),
        Api::Completions => (prompt_ok(body, "prompt"), "invalid completions request: must have prompt field"),
        Api::Embeddings => (prompt_ok(body, "input"), "invalid embeddings request: must have input field"),
        Api::Images => (images_ok(body), "invalid images generations request: must have prompt field"),
    };
    if !ok {
        return Err(what.to_string());
    }
    Ok(parse(path, body))
}

// `ChatCompletionsRequest` decodes and has a message.
fn chat_ok(body: &Value) -> bool {
    let decoded = || -> R<usize> {
        let f = |k| go::field(body, k);
        let messages = go::slice(f("messages"), "[]Message", "messages")?;
        for m in messages {
            go::structure(Some(m).filter(|m| !m.is_null()), "Message", "messages")?;
            go::string(go::field(m, "role"), "messages.role")?;
            content_ok(go::field(m, "content"))?;
            go::slice(go::field(m, "tool_calls"), "[]interface {}", "messages.tool_calls")?;
        }
        go::slice(f("tools"), "[]interface {}", "tools")?;
        go::slice(f("documents"), "[]interface {}", "documents")?;
        go::string(f("chat_template"), "chat_template")?;
        for k in ["return_assistant_tokens_mask", "continue_final_message", "add_generation_prompt"] {
            go::boolean(f(k), k)?;
        }
        go::map(f("chat_template_kwargs"), "map[string]interface {}", "chat_template_kwargs")?;
        go::string(f("cache_salt"), "cache_salt")?;
        Ok(messages.len())
    };
    decoded().is_ok_and(|n| n > 0)
}

// `Content.UnmarshalJSON`: a string, or content blocks.
fn content_ok(v: Option<&Value>) -> R<()> {
    let Some(Value::Array(blocks)) = v else {
        return match v {
            None | Some(Value::String(_)) => Ok(()),
            Some(_) => Err("content format not supported".into()),
        };
    };
    for b in blocks.iter().filter(|b| !b.is_null()) {
        go::structure(Some(b), "ContentBlock", "content")?;
        go::string(go::field(b, "type"), "type")?;
        go::string(go::field(b, "text"), "text")?;
        for (outer, inner) in
            [("image_url", &["url"][..]), ("input_audio", &["data", "format"]), ("video_url", &["url"])]
        {
            if let Some(o) = go::structure(go::field(b, outer), "struct", outer)? {
                for k in inner {
                    go::string(o.get(*k).filter(|v| !v.is_null()), k)?;
                }
            }
        }
    }
    Ok(())
}

// `ResponsesRequest` decodes and has an `input`.
fn responses_ok(body: &Value) -> bool {
    go::string(go::field(body, "cache_salt"), "cache_salt").is_ok() && go::field(body, "input").is_some()
}

// `ConversationsRequest` decodes and has an item.
fn conversations_ok(body: &Value) -> bool {
    let decoded = || -> R<usize> {
        let items = go::slice(go::field(body, "items"), "[]ConversationItem", "items")?;
        for i in items.iter().filter(|i| !i.is_null()) {
            go::structure(Some(i), "ConversationItem", "items")?;
            go::string(go::field(i, "type"), "items.type")?;
            go::string(go::field(i, "role"), "items.role")?;
        }
        go::map(go::field(body, "metadata"), "map[string]interface {}", "metadata")?;
        go::string(go::field(body, "cache_salt"), "cache_salt")?;
        Ok(items.len())
    };
    decoded().is_ok_and(|n| n > 0)
}

// `Prompt` / `EmbeddingsInput` decode (a string, or all strings, or all token ids) and
// are not empty.
fn prompt_ok(body: &Value, key: &str) -> bool {
    if go::string(go::field(body, "cache_salt"), "cache_salt").is_err() {
        return false;
    }
    match go::field(body, key) {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(items)) => match items.first() {
            Some(Value::String(_)) => items.iter().all(Value::is_string),
            Some(Value::Number(_)) => items.iter().all(|i| i.as_f64().is_some_and(token_id_ok)),
            _ => false,
        },
        _ => false,
    }
}

/// A float64 that `uint32(f)` round-trips: integral and in [0, 2^32).
fn token_id_ok(f: f64) -> bool {
    f.trunc() == f && (0.0..4_294_967_296.0).contains(&f)
}

// `ImagesGenerationsRequest` decodes and has a prompt.
fn images_ok(body: &Value) -> bool {
    let f = |k| go::field(body, k);
    let decoded = || -> R<bool> {
        go::int(f("n"), "n")?;
        go::string(f("size"), "size")?;
        go::int(f("num_inference_steps"), "num_inference_steps")?;
        Ok(!go::string(f("prompt"), "prompt")?.is_empty())
    };
    decoded() == Ok(true)
}

/// The router's OpenAI `ParseResponse`: an empty chunk reports nothing; an event stream
/// is searched for its usage event; any other body must be JSON.
pub(super) fn response(chunk: &[u8], event_stream: bool) -> R<Option<Usage>> {
    if chunk.is_empty() {
        return Ok(None);
    }
    if event_stream {
        return Ok(usage_streaming(chunk));
    }
    let v: Value = serde_json::from_slice(chunk).map_err(|e| e.to_string())?;
    usage_json(&v)
}

/// `extractUsage`: the body's `usage` read leniently (`prompt_tokens` or `input_tokens`,
/// `completion_tokens` or `output_tokens`, the cached tokens of `prompt_tokens_details`
/// or `input_tokens_details`, `total_tokens` as given; numbers or numeric strings).
pub(super) fn usage_json(body: &Value) -> R<Option<Usage>> {
    go::top_level(body, "struct { Usage map[string]interface {} }")?;
    let Some(usage) = go::map(go::field(body, "usage"), "map[string]interface {}", ".usage")? else {
        return Ok(None);
    };
    let first = |keys: [&str; 2]| keys.iter().find_map(|k| usage.get(*k).filter(|v| !v.is_null())).map_or(0, to_int);
    let mut out = Usage {
        prompt_tokens: first(["prompt_tokens", "input_tokens"]),
        completion_tokens: first(["completion_tokens", "output_tokens"]),
        total_tokens: usage.get("total_tokens").map_or(0, to_int),
        prompt_tokens_details: None,
    };
    for details in ["prompt_tokens_details", "input_tokens_details"] {
        if let Some(cached) = usage.get(details).and_then(Value::as_object).and_then(|d| d.get("cached_tokens")) {
            out.prompt_tokens_details = Some(llmd_openai::PromptTokensDetails { cached_tokens: to_int(cached) });
        }
    }
    Ok(Some(out))
}

/// The router's `toInt`: a number truncated, a numeric string parsed, else 0 (and, as
/// llmd's counts are unsigned, a negative count is 0).
fn to_int(v: &Value) -> usize {
    let f = match v {
        Value::Number(n) => n.as_f64().unwrap_or_default(),
        Value::String(s) => s.trim().parse::<f64>().unwrap_or_default(),
        _ => 0.0,
    };
    if f.is_finite() && f > 0.0 { f as usize } else { 0 }
}

/// `extractUsageStreaming`: the first `data: ` event carrying a `usage` (decoded as the
/// typed usage: llmd-openai's), or a Responses API `response.completed` event's
/// `response.usage` (read as [`usage_json`] reads it). The event's `type` and
/// `response.usage` carry over to later events that leave them out, as the router's
/// reused decode target carries them.
fn usage_streaming(chunk: &[u8]) -> Option<Usage> {
    let mut typ = String::new();
    let mut response_usage: Option<Value> = None;
    for line in chunk.split(|&b| b == b'\n') {
        let Some(content) = line.strip_prefix(b"data: ") else { continue };
        if is_terminator(content) || !contains(content, b"usage") {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(content) else { continue };
        // The router's decode target: a field of another type fails the whole event.
        let typed = go::top_level(&event, "struct")
            .and_then(|_| go::string(go::field(&event, "type"), "type"))
            .and_then(|_| go::structure(go::field(&event, "response"), "struct", "response"));
        if typed.is_err() {
            continue;
        }
        if let Some(u) = go::field(&event, "usage") {
            match serde_json::from_value::<Usage>(u.clone()) {
                Ok(u) => return Some(u),
                Err(_) => continue,
            }
        }
        if let Some(t) = go::field(&event, "type").and_then(Value::as_str) {
            typ = t.to_string();
        }
        if let Some(u) = go::field(&event, "response").and_then(|r| go::field(r, "usage")) {
            response_usage = Some(u.clone());
        }
        if typ == "response.completed"
            && let Some(u) = &response_usage
            && let Ok(Some(usage)) = usage_json(&serde_json::json!({ "usage": u }))
        {
            return Some(usage);
        }
    }
    None
}

/// The `[DONE]` terminator, with the `\r` a CRLF stream leaves.
fn is_terminator(content: &[u8]) -> bool {
    content.strip_suffix(b"\r").unwrap_or(content) == b"[DONE]"
}

/// `bytes.Contains`.
pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::BodyParser;
    use super::*;

    fn usage(p: usize, c: usize, t: usize, cached: Option<usize>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            prompt_tokens_details: cached.map(|cached_tokens| llmd_openai::PromptTokensDetails { cached_tokens }),
        })
    }

    /// llmd's OpenAI reading is the picker's (model, prompt text, ids, multimodal), plus
    /// the router's stream flag, salt and per-API output cap
    /// (`TestOpenAIParser_ParseRequest_MaxOutputTokens`).
    #[test]
    fn openai_bodies_read_as_the_picker_reads_them() {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]}],
            "stream": true, "cache_salt": "s", "max_tokens": 5, "max_completion_tokens": 7});
        let p = BodyParser::OpenAi.parse("/v1/chat/completions", &chat);
        let want = ParsedBody {
            model: "m".into(),
            prompt: "user\nhi\n".into(),
            token_ids: None,
            stream: true,
            multimodal: 1,
            cache_salt: Some("s".into()),
            max_output_tokens: Some(7),
            skip_response: false,
        };
        assert_eq!(p, Ok(want));
        let ids = json!({"model": "m", "prompt": [[1, 2, 3]], "max_tokens": 4, "max_completion_tokens": 9});
        let p = BodyParser::OpenAi.parse("/v1/completions", &ids).unwrap_or_default();
        assert_eq!((p.token_ids, p.max_output_tokens, p.stream), (Some(vec![1, 2, 3]), Some(4), false));
        let r = json!({"input": "x", "max_output_tokens": 3, "max_tokens": 8});
        assert_eq!(BodyParser::OpenAi.parse("/v1/responses", &r).map(|p| p.max_output_tokens), Ok(Some(3)));
        let e = json!({"input": "x", "max_tokens": 8});
        assert_eq!(BodyParser::OpenAi.parse("/v1/embeddings", &e).map(|p| p.max_output_tokens), Ok(None));
        // llmd's reading refuses nothing; the router's checks are what Vertex AI applies.
        assert!(BodyParser::OpenAi.parse("/v1/chat/completions", &json!({})).is_ok());
        let bad = BodyParser::OpenAi.parse_bytes("/v1/completions", b"{nope");
        assert!(bad.is_err_and(|e| e.starts_with("error unmarshaling request bodyMap: ")));
    }

    /// The router's refusals (`TestOpenAIParser_ParseRequest`'s error cases).
    #[test]
    fn the_routers_openai_checks() {
        let ok = |path: &str, body: Value| parse_checked(path, &body).map(|_| ());
        let err = |s: &str| Err(s.to_string());
        assert_eq!(ok("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "x"}]})), Ok(()));
        let chat_err = "invalid chat completions request: must have valid messages field";
        assert_eq!(ok("/v1/chat/completions", json!({"messages": []})), err(chat_err));
        assert_eq!(ok("/v1/chat/completions", json!({"messages": [{"content": 3}]})), err(chat_err));
        assert_eq!(ok("/v1/chat/completions", json!({"messages": [{"role": 1}]})), err(chat_err));
        assert_eq!(ok("/v1/chat/completions/render", json!({"model": "m"})), err(chat_err));
        assert_eq!(ok("/v1/completions", json!({"prompt": "x"})), Ok(()));
        assert_eq!(ok("/v1/completions", json!({"prompt": [1, 2]})), Ok(()));
        let prompt_err = "invalid completions request: must have prompt field";
        for bad in [json!({"prompt": ""}), json!({"prompt": [1, "a"]}), json!({"prompt": [1.5]}), json!({"prompt": 3})]
        {
            assert_eq!(ok("/v1/completions", bad), err(prompt_err));
        }
        assert_eq!(ok("/v1/responses", json!({"input": [{"x": 1}]})), Ok(()));
        assert_eq!(
            ok("/v1/responses", json!({"input": null})),
            err("invalid responses request: must have input field")
        );
        assert_eq!(
            ok("/v1/embeddings", json!({"input": []})),
            err("invalid embeddings request: must have input field")
        );
        assert_eq!(ok("/v1/conversations", json!({"items": [{"type": "message"}]})), Ok(()));
        assert_eq!(ok("/v1/conversations", json!({})), err("invalid conversations request: must have items field"));
        assert_eq!(ok("/v1/images/generations", json!({"prompt": "cat", "n": 1})), Ok(()));
        let img_err = "invalid images generations request: must have prompt field";
        assert_eq!(ok("/v1/images/generations", json!({"prompt": "cat", "n": 1.5})), err(img_err));
        assert!(ok("/v1/completions", json!([1])).is_err_and(|e| e.starts_with("error unmarshaling request bodyMap")));
        // An unknown path is read as completions.
        assert_eq!(ok("/v1/unknown", json!({"prompt": "x"})), Ok(()));
    }

    /// `TestOpenAIParser_ParseResponse` and `TestExtractUsage_*`.
    #[test]
    fn openai_json_usage() {
        let p = |b: &str| BodyParser::OpenAi.parse_response(b.as_bytes(), false);
        assert_eq!(
            p(r#"{"object":"chat.completion","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#),
            Ok(usage(10, 20, 30, None))
        );
        assert_eq!(
            p(r#"{"object":"conversation","usage":{"input_tokens":15,"output_tokens":25,"total_tokens":40}}"#),
            Ok(usage(15, 25, 40, None))
        );
        assert_eq!(
            p(
                r#"{"usage":{"prompt_tokens":100,"completion_tokens":50,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":40}}}"#
            ),
            Ok(usage(100, 50, 150, Some(40)))
        );
        assert_eq!(
            p(
                r#"{"object":"response","usage":{"input_tokens":100,"output_tokens":50,"total_tokens":150,"input_tokens_details":{"cached_tokens":40}}}"#
            ),
            Ok(usage(100, 50, 150, Some(40)))
        );
        assert_eq!(
            p(r#"{"object":"unknown_type","usage":{"input_tokens":5,"completion_tokens":5,"total_tokens":10}}"#),
            Ok(usage(5, 5, 10, None))
        );
        assert_eq!(p(r#"{"object": "chat.completion"}"#), Ok(None));
        assert!(p("{malformed").is_err());
        assert_eq!(p(""), Ok(None));
        // TestExtractUsage_MalformedFields_NoPanic and _StringCoercion.
        assert!(p(r#"{"object":"chat.completion","usage":"oops"}"#).is_err());
        assert_eq!(p(r#"{"usage":{"prompt_tokens_details":0,"prompt_tokens":7}}"#), Ok(usage(7, 0, 0, None)));
        assert_eq!(p(r#"{"usage":{"prompt_tokens":"1024"}}"#), Ok(usage(1024, 0, 0, None)));
        assert_eq!(
            p(r#"{"usage":{"prompt_tokens":"1024","completion_tokens":"7","total_tokens":"1031"}}"#),
            Ok(usage(1024, 7, 1031, None))
        );
    }

    /// `TestOpenAIParser_ParseResponse_Streaming` (the usage half; llmd does not count
    /// streamed events).
    #[test]
    fn openai_stream_usage() {
        let p = |b: &[u8]| BodyParser::OpenAi.parse_response(b, true);
        assert_eq!(
            p(b"data: {\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":10,\"total_tokens\":17}}\n"),
            Ok(usage(7, 10, 17, None))
        );
        assert_eq!(
            p(b"data: {\"usage\":{\"prompt_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":10}}}\ndata: [DONE]"),
            Ok(usage(10, 0, 0, Some(10)))
        );
        for none in [
            &br#"data: {"choices":[{"text":"hello"}]}"#[..],
            br#"data: {"choices":[{"delta":{"content":"usage"}}]}"#,
            b"data: [DONE]",
            b"data: {\"choices\":[{\"text\":\"a\"}]}\r\ndata: [DONE]\r\n",
            // A Go raw string: the `\n` is two characters, so this is one bad line.
            br#"data: {bad-json}\ndata: {\"usage\":{\"total_tokens\":5}}"#,
            b"event: response.in_progress\ndata: {\"response\":{\"usage\":{\"input_tokens\":31,\"output_tokens\":3}},\"type\":\"response.in_progress\"}",
        ] {
            assert_eq!(p(none), Ok(None), "{}", String::from_utf8_lossy(none));
        }
        assert_eq!(
            p(b"event: response.completed\ndata: {\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":31,\"input_tokens_details\":{\"cached_tokens\":16},\"output_tokens\":3,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":34}},\"type\":\"response.completed\"}"),
            Ok(usage(31, 3, 34, Some(16)))
        );
        assert_eq!(
            p(b"event: response.output_text.delta\ndata: {\"delta\":\"Hello\",\"type\":\"response.output_text.delta\"}\n\nevent: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":39,\"output_tokens\":10,\"total_tokens\":49}},\"type\":\"response.completed\"}"),
            Ok(usage(39, 10, 49, None))
        );
        // A whole body: the SSE form is recognized without a content type.
        let sse = b"data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\ndata: [DONE]\n\n";
        assert_eq!(BodyParser::OpenAi.parse_usage(sse), usage(3, 2, 5, None));
        assert_eq!(BodyParser::VllmHttp.parse_usage(br#" {"usage":{"prompt_tokens":3}}"#), usage(3, 0, 0, None));
    }
}
