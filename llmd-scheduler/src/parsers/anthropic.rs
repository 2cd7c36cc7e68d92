//! `anthropic-parser`: Anthropic Messages bodies (`/v1/messages`), decoded as the router
//! decodes them into its `MessagesRequest`; `count_tokens` bodies are forwarded unread.
//! Usage comes from a message's `usage` or a stream's `message_start` and
//! `message_delta` events.

use serde_json::Value;

use super::gotypes::{self as go, R};
use super::openai::contains;
use super::{ParsedBody, Usage};

const CONTENT_ERR: &str = "anthropic content: must be a string or an array of content blocks";

/// Whether the path is `count_tokens`'s, which the router forwards unread.
pub(super) fn is_count_tokens(path: &str) -> bool {
    path.ends_with("/messages/count_tokens")
}

/// The router's refusal of a path that is not `.../messages`.
pub(super) fn check_path(path: &str) -> R<()> {
    if path.ends_with("/messages") { Ok(()) } else { Err(format!("unsupported API endpoint: {path}")) }
}

/// Reads a Messages body (`None` only for `count_tokens`, whose body is not read).
pub(super) fn parse(path: &str, body: Option<&Value>) -> R<ParsedBody> {
    if is_count_tokens(path) {
        return Ok(ParsedBody { skip_response: true, ..ParsedBody::default() });
    }
    check_path(path)?;
    let body = body.unwrap_or(&Value::Null);
    go::top_level(body, "map[string]interface {}").map_err(|e| format!("error unmarshaling request body: {e}"))?;
    let req = decode(body).map_err(|e| format!("error parsing messages request: {e}"))?;
    if req.messages == 0 {
        return Err("invalid messages request: must have at least one message".into());
    }
    Ok(ParsedBody {
        model: go::map_string(body, "model").unwrap_or_default().to_string(),
        prompt: req.prompt,
        token_ids: None,
        stream: go::map_stream(body),
        multimodal: crate::request::count_multimodal(body),
        cache_salt: Some(req.cache_salt).filter(|s| !s.is_empty()),
        max_output_tokens: go::max_output_tokens(body, &["max_tokens"]),
        skip_response: false,
    })
}

/// What is read from a decoded `MessagesRequest`.
struct Decoded {
    messages: usize,
    /// `system\n<system>\n` when there is a system prompt, then `role\ncontent\n` per
    /// message (text blocks only), the shape `llmd_openai::prompt_text` gives OpenAI chat.
    prompt: String,
    cache_salt: String,
}

// `json.Unmarshal` into `MessagesRequest`: every field it has must have its Go type.
fn decode(body: &Value) -> R<Decoded> {
    let f = |k| go::field(body, k);
    let messages = go::slice(f("messages"), "[]requesthandling.AnthropicMessage", "MessagesRequest.messages")?;
    let system = content(f("system"))?;
    let mut prompt = String::new();
    if !system.is_empty() {
        prompt.push_str("system\n");
        prompt.push_str(&system);
        prompt.push('\n');
    }
    for m in messages {
        go::structure(
            Some(m).filter(|m| !m.is_null()),
            "requesthandling.AnthropicMessage",
            "MessagesRequest.messages",
        )?;
        let role = go::field(m, "role");
        let role_text = go::string(role, "MessagesRequest.messages.role")?;
        let text = content(go::field(m, "content"))?;
        if role.is_some() {
            prompt.push_str(role_text);
            prompt.push('\n');
        }
        prompt.push_str(&text);
        prompt.push('\n');
    }
    for t in go::slice(f("tools"), "[]requesthandling.AnthropicTool", "MessagesRequest.tools")? {
        go::structure(Some(t).filter(|t| !t.is_null()), "requesthandling.AnthropicTool", "MessagesRequest.tools")?;
        go::string(go::field(t, "name"), "MessagesRequest.tools.name")?;
        go::string(go::field(t, "description"), "MessagesRequest.tools.description")?;
        go::boolean(go::field(t, "strict"), "MessagesRequest.tools.strict")?;
        go::boolean(go::field(t, "defer_loading"), "MessagesRequest.tools.defer_loading")?;
    }
    let cache_salt = go::string(f("cache_salt"), "MessagesRequest.cache_salt")?.to_string();
    Ok(Decoded { messages: messages.len(), prompt, cache_salt })
}

// `AnthropicContent.UnmarshalJSON`: a string, or content blocks (any failure inside is
// the one error); its text: the string, or the `text` blocks' texts.
fn content(v: Option<&Value>) -> R<String> {
    match v {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for b in blocks.iter().filter(|b| !b.is_null()) {
                block(b).map_err(|_| CONTENT_ERR.to_string())?;
                if go::field(b, "type").and_then(Value::as_str) == Some("text") {
                    text.push_str(go::field(b, "text").and_then(Value::as_str).unwrap_or_default());
                }
            }
            Ok(text)
        }
        Some(_) => Err(CONTENT_ERR.into()),
    }
}

// An `AnthropicContentBlock`.
fn block(b: &Value) -> R<()> {
    go::structure(Some(b), "requesthandling.AnthropicContentBlock", "content")?;
    for k in ["type", "text", "id", "name", "tool_use_id", "thinking"] {
        go::string(go::field(b, k), k)?;
    }
    if let Some(source) = go::structure(go::field(b, "source"), "requesthandling.AnthropicImageSource", "source")? {
        for k in ["type", "media_type", "data", "url"] {
            go::string(source.get(k).filter(|v| !v.is_null()), k)?;
        }
    }
    content(go::field(b, "content")).map(|_| ())
}

/// The router's Anthropic `ParseResponse`.
pub(super) fn response(chunk: &[u8], event_stream: bool) -> R<Option<Usage>> {
    if chunk.is_empty() {
        return Ok(None);
    }
    if event_stream {
        return Ok(usage_streaming(chunk));
    }
    let body: Value = serde_json::from_slice(chunk).map_err(|e| e.to_string())?;
    go::top_level(&body, "map[string]interface {}")?;
    let Some(usage) = body.get("usage").filter(|u| u.is_object()) else {
        return Ok(None);
    };
    let mut out = Usage {
        prompt_tokens: count(usage, "input_tokens").unwrap_or(0),
        completion_tokens: count(usage, "output_tokens").unwrap_or(0),
        ..Usage::default()
    };
    out.total_tokens = out.prompt_tokens + out.completion_tokens;
    out.prompt_tokens_details =
        count(usage, "cache_read_input_tokens").map(|cached_tokens| llmd_openai::PromptTokensDetails { cached_tokens });
    Ok(Some(out))
}

/// `usage[key].(float64)` as a count (a negative count is 0).
fn count(usage: &Value, key: &str) -> Option<usize> {
    usage.get(key).and_then(Value::as_f64).map(|f| if f > 0.0 { f as usize } else { 0 })
}

/// The stream's usage: `message_start`'s `message.usage` (input and cached tokens) and
/// `message_delta`'s `usage` (output tokens); `None` when neither event is in the chunk.
fn usage_streaming(chunk: &[u8]) -> Option<Usage> {
    let mut out: Option<Usage> = None;
    for line in chunk.split(|&b| b == b'\n') {
        let Some(content) = line.strip_prefix(b"data: ") else { continue };
        if !contains(content, b"usage") {
            continue;
        }
        let Ok(event) = serde_json::from_slice::<Value>(content) else { continue };
        // The router's decode target: a field of another type fails the whole event.
        let typed = || -> R<(&str, Option<&Value>, Option<&Value>)> {
            go::top_level(&event, "struct")?;
            let typ = go::string(go::field(&event, "type"), "type")?;
            let message = go::field(&event, "message");
            go::structure(message, "struct", "message")?;
            let start = message.and_then(|m| go::field(m, "usage"));
            go::map(start, "map[string]interface {}", "message.usage")?;
            let delta = go::field(&event, "usage");
            go::map(delta, "map[string]interface {}", "usage")?;
            Ok((typ, start, delta))
        };
        let Ok((typ, start, delta)) = typed() else { continue };
        match (typ, start, delta) {
            ("message_start", Some(u), _) => {
                let o = out.get_or_insert_with(Usage::default);
                if let Some(n) = count(u, "input_tokens") {
                    o.prompt_tokens = n;
                }
                if let Some(cached_tokens) = count(u, "cache_read_input_tokens") {
                    o.prompt_tokens_details = Some(llmd_openai::PromptTokensDetails { cached_tokens });
                }
            }
            ("message_delta", _, Some(u)) => {
                let o = out.get_or_insert_with(Usage::default);
                if let Some(n) = count(u, "output_tokens") {
                    o.completion_tokens = n;
                }
            }
            _ => {}
        }
    }
    out.map(|o| Usage { total_tokens: o.prompt_tokens + o.completion_tokens, ..o })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::BodyParser;
    use super::*;

    fn parse(path: &str, body: Value) -> R<ParsedBody> {
        BodyParser::Anthropic.parse(path, &body)
    }

    fn usage(p: usize, c: usize, cached: Option<usize>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
            prompt_tokens_details: cached.map(|cached_tokens| llmd_openai::PromptTokensDetails { cached_tokens }),
        })
    }

    /// `TestAnthropicParser_ParseRequest`: what each body yields, and the refusals.
    #[test]
    fn messages_bodies() {
        let hello = |extra: Value| {
            let mut b = json!({"model": "claude-sonnet-4-6", "max_tokens": 1024,
                "messages": [{"role": "user", "content": "Hello"}]});
            if let (Some(b), Value::Object(extra)) = (b.as_object_mut(), extra) {
                b.extend(extra);
            }
            b
        };
        let base = ParsedBody {
            model: "claude-sonnet-4-6".into(),
            prompt: "user\nHello\n".into(),
            max_output_tokens: Some(1024),
            ..ParsedBody::default()
        };
        assert_eq!(parse("/v1/messages", hello(json!({}))), Ok(base.clone()));
        // Structured content, and an image (counted as multimodal).
        let blocks = json!({"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "text", "text": "What is in this image?"}]}]});
        let want = ParsedBody { prompt: "user\nWhat is in this image?\n".into(), multimodal: 1, ..base.clone() };
        assert_eq!(parse("/v1/messages", blocks), Ok(want));
        // The system prompt, as a string or as blocks.
        let sys = ParsedBody { prompt: "system\nYou are a helpful assistant.\nuser\nHello\n".into(), ..base.clone() };
        assert_eq!(parse("/v1/messages", hello(json!({"system": "You are a helpful assistant."}))), Ok(sys.clone()));
        let sys_blocks = json!({"system": [{"type": "text", "text": "You are a helpful assistant."}]});
        assert_eq!(parse("/v1/messages", hello(sys_blocks)), Ok(sys));
        let tools = json!({"tools": [{"name": "get_weather", "description": "Get the weather"}]});
        assert_eq!(parse("/v1/messages", hello(tools)), Ok(base.clone()));
        let streamed = ParsedBody { stream: true, ..base.clone() };
        assert_eq!(parse("/v1/messages", hello(json!({"stream": true}))), Ok(streamed));
        let salted = ParsedBody { cache_salt: Some("test-salt-123".into()), ..base.clone() };
        assert_eq!(parse("/v1/messages", hello(json!({"cache_salt": "test-salt-123"}))), Ok(salted));
        // "path from x-original-path header": any prefix, and the query is not the path's.
        assert_eq!(parse("/proxy/v1/messages?beta=true", hello(json!({}))), Ok(base.clone()));
        // TestAnthropicParser_ParseRequest_MaxOutputTokens.
        let no_cap = json!({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "Hello"}]});
        assert_eq!(parse("/v1/messages", no_cap).map(|p| p.max_output_tokens), Ok(None));

        let one = "invalid messages request: must have at least one message";
        assert_eq!(parse("/v1/messages", json!({"model": "m", "max_tokens": 1024, "messages": []})), Err(one.into()));
        assert_eq!(parse("/v1/messages", json!({"model": "m", "max_tokens": 1024})), Err(one.into()));
        assert_eq!(parse("/v1/messages", Value::Null), Err(one.into()));
        let wrong_path = parse("/v1/chat/completions", hello(json!({})));
        assert_eq!(wrong_path, Err("unsupported API endpoint: /v1/chat/completions".into()));
        // The router's parser does not trim a trailing slash (its registry does).
        assert!(parse("/v1/messages/", hello(json!({}))).is_err());
    }

    /// Bodies Go's decoder refuses: a field of the wrong type anywhere in the
    /// `MessagesRequest`, content that is neither a string nor blocks.
    #[test]
    fn malformed_messages_are_refused_as_go_decodes_them() {
        let content_err = format!("error parsing messages request: {CONTENT_ERR}");
        for (body, want) in [
            (json!({"messages": [{"role": "user", "content": 3}]}), content_err.as_str()),
            (json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}), &content_err),
            (json!({"messages": [{"role": "user", "content": ["x"]}]}), &content_err),
            (json!({"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]}), &content_err),
            (json!({"messages": [{"role": "user", "content": "x"}], "system": 5}), &content_err),
            (json!({"messages": "hi"}), "error parsing messages request: json: cannot unmarshal string"),
            (
                json!({"messages": [{"role": 1, "content": "x"}]}),
                "error parsing messages request: json: cannot unmarshal number",
            ),
            (json!({"messages": [{"role": "user"}], "tools": [{"name": 1}]}), "error parsing messages request: json"),
            (
                json!({"messages": [{"role": "user"}], "tools": [{"strict": "yes"}]}),
                "error parsing messages request: json",
            ),
            (json!({"messages": [{"role": "user"}], "cache_salt": 1}), "error parsing messages request: json"),
            (json!([1]), "error unmarshaling request body: json: cannot unmarshal array"),
        ] {
            let got = parse("/v1/messages", body.clone());
            assert!(got.as_ref().is_err_and(|e| e.starts_with(want)), "{body}: {got:?}");
        }
        // Case-variant keys name the struct's fields; `null` is a zero value.
        let ok = json!({"Messages": [{"ROLE": "user", "content": null}], "system": null, "tools": null});
        assert_eq!(parse("/v1/messages", ok).map(|p| p.prompt), Ok("user\n\n".into()));
        // Fields the struct lacks are not checked (`stream` is read from the map, if a bool).
        let loose = json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes", "metadata": 1});
        assert_eq!(parse("/v1/messages", loose).map(|p| p.stream), Ok(false));
    }

    /// `TestParseRequest_ToolBlocks`: tool use, tool results and thinking decode; only
    /// text blocks make the prompt text.
    #[test]
    fn tool_blocks_decode() {
        let body = r#"{
            "model": "claude-sonnet-4-6", "max_tokens": 1024,
            "tools": [{"name": "get_weather", "description": "Get the weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "messages": [
                {"role": "user", "content": "Weather in Zurich?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "need the tool"},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Zurich"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "Sunny"}]}]}
            ]}"#;
        let p = BodyParser::Anthropic.parse_bytes("/v1/messages", body.as_bytes());
        assert_eq!(p.map(|p| p.prompt), Ok("user\nWeather in Zurich?\nassistant\n\nuser\n\n".into()));
    }

    /// `TestAnthropicParser_ParseRequest_CountTokens`: forwarded unread, whatever the body.
    #[test]
    fn count_tokens_is_forwarded_unread() {
        let skip = Ok(ParsedBody { skip_response: true, ..ParsedBody::default() });
        for body in [
            &br#"{"model":"test-model","system":"You are a helpful assistant.","messages":[{"role":"user","content":"Hello"}]}"#[..],
            b"",
            b"not-json",
            b"{}",
        ] {
            assert_eq!(BodyParser::Anthropic.parse_bytes("/v1/messages/count_tokens", body), skip);
        }
        assert_eq!(BodyParser::Anthropic.parse("/v1/messages/count_tokens", &json!({})), skip);
        assert!(
            BodyParser::Anthropic
                .parse_bytes("/v1/messages", b"not-json")
                .is_err_and(|e| e.starts_with("error unmarshaling request body: "))
        );
        assert!(
            BodyParser::Anthropic
                .parse_bytes("/v1/chat", b"not-json")
                .is_err_and(|e| e.starts_with("unsupported API endpoint"))
        );
    }

    /// `TestAnthropicParser_ParseResponse`.
    #[test]
    fn message_usage() {
        let p = |b: &str| BodyParser::Anthropic.parse_response(b.as_bytes(), false);
        let standard = r#"{"id":"msg_123","type":"message","role":"assistant","content":[{"type":"text","text":"Hello"}],
            "usage":{"input_tokens":25,"output_tokens":15}}"#;
        assert_eq!(p(standard), Ok(usage(25, 15, None)));
        let cached = r#"{"id":"msg_123","type":"message","usage":{"input_tokens":100,"output_tokens":50,"cache_read_input_tokens":80}}"#;
        assert_eq!(p(cached), Ok(usage(100, 50, Some(80))));
        assert_eq!(p(r#"{"id": "msg_123", "type": "message"}"#), Ok(None));
        assert!(p("{malformed").is_err());
        assert_eq!(p(""), Ok(None));
        assert_eq!(BodyParser::Anthropic.parse_usage(cached.as_bytes()), usage(100, 50, Some(80)));
    }

    /// `TestAnthropicParser_ParseResponse_Streaming`.
    #[test]
    fn stream_usage() {
        let p = |b: &str| BodyParser::Anthropic.parse_response(b.as_bytes(), true);
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_123\",\"usage\":{\"input_tokens\":25}}}";
        assert_eq!(p(start), Ok(usage(25, 0, None)));
        let delta = "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}";
        assert_eq!(p(delta), Ok(usage(0, 15, None)));
        let full = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}";
        assert_eq!(p(full), Ok(usage(25, 15, None)));
        let cached = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"cache_read_input_tokens\":80}}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50}}";
        assert_eq!(p(cached), Ok(usage(100, 50, Some(80))));
        for none in [
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"usage\"}}",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}",
        ] {
            assert_eq!(p(none), Ok(None), "{none}");
        }
        // A whole stream without a content type is recognized as one.
        assert_eq!(BodyParser::Anthropic.parse_usage(cached.as_bytes()), usage(100, 50, Some(80)));
    }
}
