//! Response bodies of the completions and chat endpoints, as vLLM sends them (with its
//! `stop_reason` and `prompt_tokens_details.cached_tokens`). Fields a server may leave
//! out read as their defaults, so a client can parse other servers' answers too.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::request::ChatMessage;

/// Reads `null` as the default, for fields some servers send as `null`.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// Cache details; vLLM sends `null` unless started with
    /// `--enable-prompt-tokens-details`.
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

impl Usage {
    /// Usage with its total and cache details filled in.
    pub fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: cached }),
        }
    }

    /// Prompt tokens served from the prefix cache (0 when not reported).
    pub fn cached_tokens(&self) -> usize {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }
}

/// Legacy completions logprobs: parallel lists, one entry per generated token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's logprob.
    pub token_logprobs: Vec<f32>,
    /// Each position's most likely tokens, text → logprob.
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Each token's byte offset in the completion text.
    pub text_offset: Vec<usize>,
}

/// One choice of a completion (or of a completion stream chunk).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionChoice {
    /// Its index (always 0 with `n = 1`).
    pub index: u32,
    /// The generated text (in a stream: this chunk's piece).
    pub text: String,
    /// Logprobs, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop`, `length`, `abort`, …; `None` until the last chunk.
    pub finish_reason: Option<String>,
    /// vLLM: the stop string or token id that ended it.
    pub stop_reason: Option<Value>,
}

/// A completion, or one chunk of a streamed completion (same shape).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompletionResponse {
    /// The request id (`cmpl-…`).
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The model that served it.
    pub model: String,
    /// The choices (none in a stream's usage-only last chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (in a stream: only on the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// vLLM: what a prefill engine hands the decode side (its KV connector's
    /// `kv_transfer_params`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_transfer_params: Option<Value>,
}

impl CompletionResponse {
    /// The `object` of completions and their chunks.
    pub const OBJECT: &'static str = "text_completion";

    /// A completion (or chunk) with `object` set.
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        choices: Vec<CompletionChoice>,
        usage: Option<Usage>,
    ) -> Self {
        CompletionResponse {
            id: id.into(),
            object: Self::OBJECT.into(),
            created,
            model: model.into(),
            choices,
            usage,
            kv_transfer_params: None,
        }
    }
}

/// One of a position's most likely tokens, in chat logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its logprob.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    #[serde(deserialize_with = "null_default")]
    pub bytes: Vec<u8>,
}

/// A generated token with its logprob, in chat logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its logprob.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    #[serde(deserialize_with = "null_default")]
    pub bytes: Vec<u8>,
    /// The position's most likely tokens.
    #[serde(deserialize_with = "null_default")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat logprobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    #[serde(deserialize_with = "null_default")]
    pub content: Vec<ChatTokenLogprob>,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatChoice {
    /// Its index (always 0 with `n = 1`).
    pub index: u32,
    /// The assistant's message.
    pub message: ChatMessage,
    /// Logprobs, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, `abort`, ….
    pub finish_reason: Option<String>,
    /// vLLM: the stop string or token id that ended it.
    pub stop_reason: Option<Value>,
}

/// A chat completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatCompletionResponse {
    /// The request id (`chatcmpl-…`).
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// The model that served it.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// vLLM: what a prefill engine hands the decode side (its KV connector's
    /// `kv_transfer_params`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_transfer_params: Option<Value>,
}

impl ChatCompletionResponse {
    /// The `object` of chat completions.
    pub const OBJECT: &'static str = "chat.completion";

    /// A chat completion with `object` set.
    pub fn new(
        id: impl Into<String>,
        created: u64,
        model: impl Into<String>,
        choices: Vec<ChatChoice>,
        usage: Usage,
    ) -> Self {
        ChatCompletionResponse {
            id: id.into(),
            object: Self::OBJECT.into(),
            created,
            model: model.into(),
            choices,
            usage,
            kv_transfer_params: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> Value {
        let text = serde_json::to_string(v).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), v, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn completion_serializes_as_the_engine_always_has() {
        let mut top = serde_json::Map::new();
        top.insert("a".into(), json!(-0.5));
        let r = CompletionResponse::new(
            "cmpl-1",
            7,
            "m",
            vec![CompletionChoice {
                index: 0,
                text: "a".into(),
                logprobs: Some(CompletionLogprobs {
                    tokens: vec!["a".into()],
                    token_logprobs: vec![-0.5],
                    top_logprobs: vec![top],
                    text_offset: vec![0],
                }),
                finish_reason: Some("length".into()),
                stop_reason: None,
            }],
            Some(Usage::new(3, 1, 2)),
        );
        assert_eq!(
            round_trip(&r),
            json!({"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m",
                "choices": [{"index": 0, "text": "a", "finish_reason": "length", "stop_reason": null,
                    "logprobs": {"tokens": ["a"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.5}], "text_offset": [0]}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                    "prompt_tokens_details": {"cached_tokens": 2}}})
        );
        // A chunk without usage leaves the key out.
        let chunk = CompletionResponse::new("c", 0, "m", vec![], None);
        assert!(round_trip(&chunk).get("usage").is_none());
    }

    #[test]
    fn chat_serializes_as_the_engine_always_has() {
        let lp = ChatLogprobs {
            content: vec![ChatTokenLogprob {
                token: "h".into(),
                logprob: -1.0,
                bytes: vec![104],
                top_logprobs: vec![TopLogprob { token: "h".into(), logprob: -1.0, bytes: vec![104] }],
            }],
        };
        let r = ChatCompletionResponse::new(
            "chatcmpl-1",
            9,
            "m",
            vec![ChatChoice {
                index: 0,
                message: ChatMessage::new("assistant", "h"),
                logprobs: Some(lp),
                finish_reason: Some("stop".into()),
                stop_reason: Some(json!(257)),
            }],
            Usage::new(5, 1, 0),
        );
        assert_eq!(
            round_trip(&r),
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 9, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "h"},
                    "logprobs": {"content": [{"token": "h", "logprob": -1.0, "bytes": [104],
                        "top_logprobs": [{"token": "h", "logprob": -1.0, "bytes": [104]}]}]},
                    "finish_reason": "stop", "stop_reason": 257}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6,
                    "prompt_tokens_details": {"cached_tokens": 0}}})
        );
    }

    #[test]
    fn other_servers_answers_parse() {
        // OpenAI: no stop_reason, null cache details, null bytes.
        let r: ChatCompletionResponse = serde_json::from_value(json!({
            "id": "x", "object": "chat.completion", "created": 1, "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": null},
                "logprobs": {"content": [{"token": "hi", "logprob": -0.1, "bytes": null, "top_logprobs": []}]},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3, "prompt_tokens_details": null},
        }))
        .unwrap();
        assert_eq!(r.choices[0].message.text(), "hi");
        assert_eq!((r.usage.cached_tokens(), r.choices[0].stop_reason.clone()), (0, None));
        let c: CompletionResponse = serde_json::from_value(json!({"choices": [{"text": "x"}]})).unwrap();
        assert_eq!((c.choices[0].text.as_str(), c.usage), ("x", None));
    }
}
