//! The OpenAI wire types the handlers use (from `llmd-openai`, under the names the
//! handlers know), and which request parameters this server refuses.

use serde_json::Value;

pub(crate) use llmd_openai::request::{
    ChatCompletionRequest as ChatRequest, CommonParams as Common, CompletionRequest, SinglePrompt, Stop,
};
pub(crate) use llmd_openai::response::{
    ChatChoice, ChatCompletionResponse as ChatResponse, ChatLogprobs, ChatTokenLogprob, CompletionChoice,
    CompletionLogprobs, CompletionResponse, TopLogprob, Usage,
};
pub(crate) use llmd_openai::stream::{ChatChunkChoice, ChatCompletionChunk as ChatChunk, Delta};
pub(crate) use llmd_openai::{ChatMessage, ErrorBody, ErrorKind};

/// Unimplemented parameters and the value that means "off".
const NEUTRAL: &[(&str, &str)] = &[
    ("presence_penalty", "0"),
    ("frequency_penalty", "0"),
    ("repetition_penalty", "1"),
    ("min_p", "0"),
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

/// Parameters vLLM or OpenAI accept that this server does not implement: a request
/// setting one to a non-neutral value is refused rather than silently ignored.
pub(crate) trait Unsupported {
    /// The first unsupported parameter set to something other than its neutral value.
    fn unsupported(&self) -> Option<&'static str>;
}

impl Unsupported for Common {
    fn unsupported(&self) -> Option<&'static str> {
        NEUTRAL.iter().find_map(|(name, neutral)| {
            let v = self.other.get(*name)?;
            let off: Value = serde_json::from_str(neutral).unwrap_or(Value::Null);
            let same = v.is_null() || *v == off || (v.is_number() && v.as_f64() == off.as_f64());
            (!same).then_some(*name)
        })
    }
}
