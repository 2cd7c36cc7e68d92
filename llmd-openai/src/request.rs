//! Request bodies of `POST /v1/completions` and `POST /v1/chat/completions` (the subset
//! vLLM serves, with its extensions `top_k`, `ignore_eos`, `stop_token_ids`,
//! `cache_salt`), and the lenient readers routers use on raw JSON bodies
//! ([`prompt_text`], [`prompt_token_ids`], [`chat_messages`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{OpenAiError, Result};

/// A completion prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// `"text"`.
    Text(String),
    /// `["text", ...]` (also what `[]` reads as).
    Texts(Vec<String>),
    /// `[1, 2, 3]`.
    Tokens(Vec<u32>),
    /// `[[1, 2], [3]]`.
    TokenLists(Vec<Vec<u32>>),
}

impl Default for Prompt {
    fn default() -> Self {
        Prompt::Text(String::new())
    }
}

/// One prompt, as a server that takes one prompt per request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinglePrompt {
    /// Text to tokenize (with special tokens, as vLLM does for completions).
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
}

impl Prompt {
    /// The single prompt this holds: a string, ids, or a list of exactly one of either.
    /// `[]` is [`OpenAiError::EmptyPrompt`]; several prompts are
    /// [`OpenAiError::BatchedPrompt`].
    pub fn single(self) -> Result<SinglePrompt> {
        match self {
            Prompt::Text(t) => Ok(SinglePrompt::Text(t)),
            Prompt::Tokens(ids) => Ok(SinglePrompt::Tokens(ids)),
            Prompt::Texts(v) if v.is_empty() => Err(OpenAiError::EmptyPrompt),
            Prompt::TokenLists(v) if v.is_empty() => Err(OpenAiError::EmptyPrompt),
            Prompt::Texts(v) => one(v).map(SinglePrompt::Text),
            Prompt::TokenLists(v) => one(v).map(SinglePrompt::Tokens),
        }
    }

    /// Every prompt this holds, in order (vLLM's batched completions: one per string or
    /// list of ids). `[]` is [`OpenAiError::EmptyPrompt`].
    pub fn into_prompts(self) -> Result<Vec<SinglePrompt>> {
        let all: Vec<SinglePrompt> = match self {
            Prompt::Text(t) => vec![SinglePrompt::Text(t)],
            Prompt::Tokens(ids) => vec![SinglePrompt::Tokens(ids)],
            Prompt::Texts(v) => v.into_iter().map(SinglePrompt::Text).collect(),
            Prompt::TokenLists(v) => v.into_iter().map(SinglePrompt::Tokens).collect(),
        };
        if all.is_empty() { Err(OpenAiError::EmptyPrompt) } else { Ok(all) }
    }
}

fn one<T>(v: Vec<T>) -> Result<T> {
    let mut it = v.into_iter();
    match (it.next(), it.next()) {
        (Some(x), None) => Ok(x),
        (None, _) => Err(OpenAiError::EmptyPrompt),
        (Some(_), Some(_)) => Err(OpenAiError::BatchedPrompt),
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// `"stop"`.
    One(String),
    /// `["a", "b"]`.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the request's usage (and no choices).
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling and streaming fields both endpoints share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommonParams {
    /// The model to use; `None` lets the server pick its only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature; 0 is greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// vLLM: sample from the `top_k` most likely tokens (0 or -1: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Completions per prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Streaming options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Stop strings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// vLLM: keep generating past end-of-sequence tokens.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    /// vLLM: token ids that also stop generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_token_ids: Vec<u32>,
    /// vLLM: salt mixed into the prefix-cache hashes of this request's blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_salt: Option<String>,
    /// Every other field, kept as sent, so a server can refuse parameters it does not
    /// implement instead of silently ignoring them.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Tokens to generate at most (vLLM's default is 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Return this many most likely tokens' logprobs per position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
    /// Echo the prompt before the completion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub echo: bool,
    /// The fields shared with chat.
    #[serde(flatten)]
    pub common: CommonParams,
}

/// One part of a chat message's content: `{"type": "text", "text": "..."}`, or another
/// kind (`image_url`, `input_audio`, …) kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    /// The part's `type`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A text part's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The part's other fields (`image_url`, …).
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart { kind: Some("text".into()), text: Some(text.into()), other: Default::default() }
    }

    /// The text of a text part; `None` for any other part.
    pub fn as_text(&self) -> Option<&str> {
        match (self.kind.as_deref(), &self.text) {
            (Some("text"), Some(t)) => Some(t),
            _ => None,
        }
    }
}

/// A chat message's content: a string or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// `"content": "text"`.
    Text(String),
    /// `"content": [{"type": "text", "text": "..."}, ...]`.
    Parts(Vec<ContentPart>),
}

impl MessageContent {
    /// The text: the string, or the text parts concatenated, other parts skipped (what
    /// a router needs to score a prompt).
    pub fn text(&self) -> String {
        match self {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Parts(parts) => parts.iter().filter_map(ContentPart::as_text).collect(),
        }
    }

    /// The text, refusing any part that is not text (what a text-only server needs).
    pub fn text_only(&self) -> Result<String> {
        match self {
            MessageContent::Text(t) => Ok(t.clone()),
            MessageContent::Parts(parts) => parts
                .iter()
                .map(|p| p.as_text().ok_or_else(|| OpenAiError::UnsupportedContentPart { kind: p.kind.clone() }))
                .collect(),
        }
    }
}

/// One chat message, in requests, responses and chat templates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The content; `None` when absent or `null`.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

impl ChatMessage {
    /// A message with text content.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: Some(MessageContent::Text(text.into())) }
    }

    /// The content as text, non-text parts skipped; empty when there is none.
    pub fn text(&self) -> String {
        self.content.as_ref().map(MessageContent::text).unwrap_or_default()
    }

    /// The content as text, refusing non-text parts; empty when there is none.
    pub fn text_only(&self) -> Result<String> {
        self.content.as_ref().map_or(Ok(String::new()), MessageContent::text_only)
    }

    /// The same message with its content flattened to a string (strictly: non-text
    /// parts are an error), the form chat templates expect.
    pub fn flattened(&self) -> Result<ChatMessage> {
        Ok(ChatMessage::new(self.role.clone(), self.text_only()?))
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Tokens to generate at most (deprecated name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// Tokens to generate at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    /// Return the sampled tokens' logprobs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// With `logprobs`: this many most likely tokens per position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<usize>,
    /// vLLM: end the rendered prompt with the assistant's turn opening (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub add_generation_prompt: bool,
    /// The fields shared with completions.
    #[serde(flatten)]
    pub common: CommonParams,
}

impl Default for ChatCompletionRequest {
    fn default() -> Self {
        ChatCompletionRequest {
            messages: Vec::new(),
            max_tokens: None,
            max_completion_tokens: None,
            logprobs: false,
            top_logprobs: None,
            add_generation_prompt: true,
            common: CommonParams::default(),
        }
    }
}

/// The content of a raw message's `content` as text: a string, or its text parts
/// concatenated; anything else is empty.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The text of a raw request body, for routers that score prompts by text: `prompt`
/// when present (a string, or its strings joined by `\n`), else every message as
/// `role\ncontent\n` (text parts only). Never fails; unreadable parts are skipped.
pub fn prompt_text(body: &Value) -> String {
    if let Some(p) = body.get("prompt") {
        return match p {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        };
    }
    let mut out = String::new();
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = m.get("role").and_then(Value::as_str) {
            out.push_str(r);
            out.push('\n');
        }
        out.push_str(&content_text(m.get("content")));
        out.push('\n');
    }
    out
}

/// The token ids of a raw completions body whose `prompt` is ids (`[1, 2]`) or a list
/// of one list of ids (`[[1, 2]]`); `None` for text, empty or batched prompts, or ids
/// that do not fit `u32`.
pub fn prompt_token_ids(body: &Value) -> Option<Vec<u32>> {
    let ids = |v: &Value| -> Option<Vec<u32>> {
        v.as_array()?.iter().map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok())).collect()
    };
    let prompt = body.get("prompt")?.as_array()?;
    let out = match prompt.as_slice() {
        [only @ Value::Array(_)] => ids(only)?,
        _ => ids(body.get("prompt")?)?,
    };
    (!out.is_empty()).then_some(out)
}

/// The messages of a raw chat body with their content flattened to text (text parts
/// only), as a router renders them; `None` when `messages` is missing or a message has
/// no string `role`.
pub fn chat_messages(body: &Value) -> Option<Vec<ChatMessage>> {
    body.get("messages")?
        .as_array()?
        .iter()
        .map(|m| Some(ChatMessage::new(m.get("role")?.as_str()?, content_text(m.get("content")))))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(v: Value) -> ChatMessage {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn content_flattens_strings_and_text_parts() {
        let s = msg(json!({"role": "user", "content": "hi"}));
        assert_eq!((s.text(), s.text_only().unwrap()), ("hi".to_string(), "hi".to_string()));
        let parts =
            msg(json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}));
        assert_eq!(parts.text(), "ab");
        assert_eq!(parts.text_only().unwrap(), "ab");
        assert_eq!(parts.flattened().unwrap(), ChatMessage::new("user", "ab"));
    }

    #[test]
    fn non_text_parts_are_skipped_leniently_and_refused_strictly() {
        let m = msg(json!({"role": "user", "content": [
            {"type": "text", "text": "look: "},
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
            {"type": "text", "text": "ok"},
        ]}));
        assert_eq!(m.text(), "look: ok");
        match m.text_only() {
            Err(OpenAiError::UnsupportedContentPart { kind }) => assert_eq!(kind.as_deref(), Some("image_url")),
            other => panic!("{other:?}"),
        }
        // A text part without text, and a part without a type, are not text.
        for bad in [json!({"type": "text"}), json!({"text": "x"})] {
            let m = msg(json!({"role": "user", "content": [bad]}));
            assert_eq!(m.text(), "");
            assert!(m.text_only().is_err(), "{m:?}");
        }
    }

    #[test]
    fn missing_or_null_content_is_empty() {
        for m in [msg(json!({"role": "assistant"})), msg(json!({"role": "assistant", "content": null}))] {
            assert_eq!(m.content, None);
            assert_eq!((m.text(), m.text_only().unwrap()), (String::new(), String::new()));
        }
    }

    #[test]
    fn prompt_forms_parse_and_reduce_to_one() {
        let p = |v: Value| serde_json::from_value::<Prompt>(v).unwrap();
        assert_eq!(p(json!("hi")), Prompt::Text("hi".into()));
        assert_eq!(p(json!(["a", "b"])), Prompt::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(p(json!([1, 2])), Prompt::Tokens(vec![1, 2]));
        assert_eq!(p(json!([[1], [2, 3]])), Prompt::TokenLists(vec![vec![1], vec![2, 3]]));
        assert_eq!(p(json!([])), Prompt::Texts(vec![]));
        assert!(serde_json::from_value::<Prompt>(json!(5)).is_err());
        assert!(serde_json::from_value::<Prompt>(json!([-1])).is_err());

        assert_eq!(p(json!("hi")).single().unwrap(), SinglePrompt::Text("hi".into()));
        assert_eq!(p(json!(["hi"])).single().unwrap(), SinglePrompt::Text("hi".into()));
        assert_eq!(p(json!([7, 8])).single().unwrap(), SinglePrompt::Tokens(vec![7, 8]));
        assert_eq!(p(json!([[7, 8]])).single().unwrap(), SinglePrompt::Tokens(vec![7, 8]));
        assert!(matches!(p(json!([])).single(), Err(OpenAiError::EmptyPrompt)));
        assert!(matches!(p(json!(["a", "b"])).single(), Err(OpenAiError::BatchedPrompt)));
        assert!(matches!(p(json!([[1], [2]])).single(), Err(OpenAiError::BatchedPrompt)));

        let text = |t: &str| SinglePrompt::Text(t.into());
        assert_eq!(p(json!("hi")).into_prompts().unwrap(), vec![text("hi")]);
        assert_eq!(p(json!(["a", "b"])).into_prompts().unwrap(), vec![text("a"), text("b")]);
        assert_eq!(p(json!([7, 8])).into_prompts().unwrap(), vec![SinglePrompt::Tokens(vec![7, 8])]);
        assert_eq!(
            p(json!([[1], [2, 3]])).into_prompts().unwrap(),
            vec![SinglePrompt::Tokens(vec![1]), SinglePrompt::Tokens(vec![2, 3])]
        );
        assert!(matches!(p(json!([])).into_prompts(), Err(OpenAiError::EmptyPrompt)));
    }

    #[test]
    fn raw_bodies_give_router_text_and_ids() {
        assert_eq!(prompt_text(&json!({"prompt": "abc"})), "abc");
        assert_eq!(prompt_text(&json!({"prompt": ["a", "b"]})), "a\nb");
        assert_eq!(prompt_text(&json!({"prompt": [1, 2]})), "");
        let chat = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant"},
        ]});
        assert_eq!(prompt_text(&chat), "system\nbe brief\nuser\nhi\nassistant\n\n");
        assert_eq!(prompt_text(&json!({})), "");

        assert_eq!(prompt_token_ids(&json!({"prompt": [1, 2, 3]})), Some(vec![1, 2, 3]));
        assert_eq!(prompt_token_ids(&json!({"prompt": [[4, 5]]})), Some(vec![4, 5]));
        for none in [
            json!({"prompt": "text"}),
            json!({"prompt": []}),
            json!({"prompt": [[1], [2]]}),
            json!({"prompt": [1, -2]}),
            json!({"prompt": [5_000_000_000u64]}),
            json!({"messages": []}),
        ] {
            assert_eq!(prompt_token_ids(&none), None, "{none}");
        }

        assert_eq!(
            chat_messages(&chat).unwrap(),
            vec![
                ChatMessage::new("system", "be brief"),
                ChatMessage::new("user", "hi"),
                ChatMessage::new("assistant", "")
            ]
        );
        assert_eq!(chat_messages(&json!({"messages": [{"content": "no role"}]})), None);
        assert_eq!(chat_messages(&json!({"prompt": "x"})), None);
    }

    /// Through text, as a client sends it (`to_value` would widen `f32`s).
    fn wire<T: Serialize>(v: &T) -> Value {
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    #[test]
    fn requests_round_trip_and_keep_unknown_fields() {
        let body = json!({
            "prompt": [[1, 2]], "max_tokens": 4, "logprobs": 2, "echo": true, "model": "m", "temperature": 0.5,
            "top_p": 0.9, "top_k": 5, "n": 1, "stream": true, "stream_options": {"include_usage": true},
            "stop": ["x", "y"], "seed": 3, "ignore_eos": true, "stop_token_ids": [9], "cache_salt": "s",
            "presence_penalty": 0.1,
        });
        let r: CompletionRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(r.common.other.get("presence_penalty"), Some(&json!(0.1)));
        assert_eq!(r.common.stop.clone().map(Stop::into_vec), Some(vec!["x".to_string(), "y".to_string()]));
        assert_eq!(wire(&r), body);

        let chat = json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}]}],
            "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 2, "add_generation_prompt": false,
            "stop": "\n", "tools": [],
        });
        let r: ChatCompletionRequest = serde_json::from_value(chat.clone()).unwrap();
        assert!(!r.add_generation_prompt);
        assert_eq!(r.messages[0].text(), "hi");
        assert_eq!(wire(&r), chat);

        // Defaults: generation prompt on, nothing streamed; defaults are left out.
        let r: ChatCompletionRequest = serde_json::from_value(json!({"messages": []})).unwrap();
        assert!(r.add_generation_prompt && !r.common.stream);
        assert_eq!(r, ChatCompletionRequest::default());
        assert_eq!(serde_json::to_value(&r).unwrap(), json!({"messages": []}));
        assert_eq!(serde_json::to_value(CompletionRequest::default()).unwrap(), json!({"prompt": ""}));
    }
}
