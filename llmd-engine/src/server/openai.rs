//! OpenAI API request and response bodies (the subset vLLM serves), plus vLLM's
//! extensions (`top_k`, `ignore_eos`, `stop_token_ids`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A prompt: text, texts, token ids, or lists of token ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Common {
    pub(crate) model: Option<String>,
    pub(crate) temperature: Option<f32>,
    pub(crate) top_p: Option<f32>,
    pub(crate) top_k: Option<i64>,
    pub(crate) n: Option<u32>,
    #[serde(default)]
    pub(crate) stream: bool,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) stop: Option<Stop>,
    pub(crate) seed: Option<u64>,
    #[serde(default)]
    pub(crate) ignore_eos: bool,
    #[serde(default)]
    pub(crate) stop_token_ids: Vec<u32>,
    pub(crate) cache_salt: Option<String>,
    /// Parameters vLLM or OpenAI accept that this server does not implement; a request
    /// setting one to a non-neutral value is refused rather than silently ignored.
    #[serde(flatten)]
    pub(crate) other: serde_json::Map<String, Value>,
}

/// Unimplemented parameters and the value that means "off".
const NEUTRAL: &[(&str, &str)] = &[
    ("presence_penalty", "0"),
    ("frequency_penalty", "0"),
    ("repetition_penalty", "1"),
    ("min_p", "0"),
    ("min_tokens", "0"),
    ("logit_bias", "{}"),
    ("best_of", "1"),
    ("use_beam_search", "false"),
    ("include_stop_str_in_output", "false"),
    ("response_format", "{\"type\":\"text\"}"),
    ("tools", "[]"),
    ("tool_choice", "\"none\""),
    ("guided_json", "null"),
    ("guided_regex", "null"),
    ("guided_choice", "null"),
    ("structured_outputs", "null"),
    ("suffix", "null"),
];

impl Common {
    /// The first unsupported parameter set to something other than its neutral value.
    pub(crate) fn unsupported(&self) -> Option<&'static str> {
        NEUTRAL.iter().find_map(|(name, neutral)| {
            let v = self.other.get(*name)?;
            let off: Value = serde_json::from_str(neutral).unwrap_or(Value::Null);
            let same = v.is_null() || *v == off || (v.is_number() && v.as_f64() == off.as_f64());
            (!same).then_some(*name)
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct CompletionRequest {
    pub(crate) prompt: Prompt,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) logprobs: Option<usize>,
    #[serde(default)]
    pub(crate) echo: bool,
    #[serde(flatten)]
    pub(crate) common: Common,
}

/// Chat message content: a string or a list of parts (only text parts are served).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct InMessage {
    pub(crate) role: String,
    pub(crate) content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChatRequest {
    pub(crate) messages: Vec<InMessage>,
    pub(crate) max_tokens: Option<usize>,
    pub(crate) max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub(crate) logprobs: bool,
    pub(crate) top_logprobs: Option<usize>,
    #[serde(default = "yes")]
    pub(crate) add_generation_prompt: bool,
    #[serde(flatten)]
    pub(crate) common: Common,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PromptTokensDetails {
    pub(crate) cached_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Usage {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) total_tokens: usize,
    pub(crate) prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    pub(crate) fn new(prompt: usize, completion: usize, cached: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: cached },
        }
    }
}

/// Legacy completions logprobs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CompletionLogprobs {
    pub(crate) tokens: Vec<String>,
    pub(crate) token_logprobs: Vec<f32>,
    pub(crate) top_logprobs: Vec<serde_json::Map<String, Value>>,
    pub(crate) text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompletionChoice {
    pub(crate) index: u32,
    pub(crate) text: String,
    pub(crate) logprobs: Option<CompletionLogprobs>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) stop_reason: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CompletionResponse {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TopLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatTokenLogprob {
    pub(crate) token: String,
    pub(crate) logprob: f32,
    pub(crate) bytes: Vec<u8>,
    pub(crate) top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ChatLogprobs {
    pub(crate) content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OutMessage {
    pub(crate) role: &'static str,
    pub(crate) content: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatChoice {
    pub(crate) index: u32,
    pub(crate) message: OutMessage,
    pub(crate) logprobs: Option<ChatLogprobs>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) stop_reason: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatResponse {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) choices: Vec<ChatChoice>,
    pub(crate) usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatChunkChoice {
    pub(crate) index: u32,
    pub(crate) delta: Delta,
    pub(crate) logprobs: Option<ChatLogprobs>,
    pub(crate) finish_reason: Option<&'static str>,
    pub(crate) stop_reason: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ChatChunk {
    pub(crate) id: String,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) choices: Vec<ChatChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Usage>,
}
