//! vLLM's token-in / token-out request (`GenerateRequest`, from
//! `vllm/entrypoints/scale_out/token_in_token_out/protocol.py`): what
//! `POST /v1/completions/render` (a list, one per prompt) and
//! `POST /v1/chat/completions/render` (one) answer, and what vLLM's
//! `/inference/v1/generate` takes. Routers read `token_ids` (and `features` for
//! multimodal prompts) to score endpoints by cached prefix.
//!
//! Every field is sent, `null` included, as vLLM's `model_dump()` does; inside
//! `sampling_params` only the fields that differ from vLLM's `SamplingParams` defaults
//! are sent (msgspec's `omit_defaults`), except those vLLM always sets. Fields a server
//! leaves out read as vLLM's defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One prompt ready for the engine: its token ids, sampling parameters, and the
/// request-level fields that go with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// `{prefix}-{base}`: `cmpl-…` (with `-{i}` per prompt when a completions body holds
    /// several) or `chatcmpl-…`; the base is `X-Request-Id`, else the body's
    /// `request_id`, else fresh.
    #[serde(default)]
    pub request_id: String,
    /// The prompt's token ids, exactly as the engine computes on them.
    pub token_ids: Vec<u32>,
    /// Character `(start, end)` per token, when asked for and known.
    #[serde(default)]
    pub token_offsets: Option<Vec<(usize, usize)>>,
    /// Multimodal hashes and placeholder positions; `null` for text prompts.
    #[serde(default)]
    pub features: Option<MultiModalFeatures>,
    /// Raw multimodal input, exclusive with `features`.
    #[serde(default)]
    pub content_parts: Option<Vec<Value>>,
    /// The sampling parameters.
    pub sampling_params: GenerateSamplingParams,
    /// The body's `model`, as sent (`null` when it named none).
    #[serde(default)]
    pub model: Option<String>,
    /// Whether reasoning ended before the first generated token (`null`: the engine
    /// checks).
    #[serde(default)]
    pub reasoning_ended: Option<bool>,
    /// The reasoning parser's kwargs, when the server has a reasoning parser.
    #[serde(default)]
    pub reasoning_parser_kwargs: Option<Value>,
    /// The body's `return_token_ids`.
    #[serde(default)]
    pub return_token_ids: Option<bool>,
    /// What the generate step answers with.
    #[serde(default)]
    pub output_mode: OutputMode,
    /// Chat context for parsing the output (chat only).
    #[serde(default)]
    pub parse_context: Option<ParseContext>,
    /// Whether the request streams.
    #[serde(default)]
    pub stream: bool,
    /// The body's `stream_options` when it streams, else `null`.
    #[serde(default)]
    pub stream_options: Option<GenerateStreamOptions>,
    /// Prefix-cache salt.
    #[serde(default)]
    pub cache_salt: Option<String>,
    /// Scheduling priority (lower first).
    #[serde(default)]
    pub priority: i64,
    /// KV transfer parameters for disaggregated serving.
    #[serde(default)]
    pub kv_transfer_params: Option<Value>,
    /// Encoder-cache transfer parameters.
    #[serde(default)]
    pub ec_transfer_params: Option<Value>,
}

/// `output_mode`: how much the generate step answers with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Token ids only (vLLM's default).
    #[default]
    Tokens,
    /// Also the text and logprobs with token strings.
    Text,
    /// The parsed assistant message.
    Derender,
}

/// vLLM's `SamplingParams` on the wire. Sent: what differs from vLLM's defaults, plus
/// `stop`, `stop_token_ids`, `bad_words` (lists after vLLM's `__post_init__`),
/// `output_kind`, `skip_clone` and `skip_reading_prefix_cache`, which vLLM's
/// `to_sampling_params` always sets. The rest (penalties, `n`, `min_p`, …) is kept in
/// `other`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSamplingParams {
    /// Sampling temperature; 0 is greedy (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub temperature: f32,
    /// Nucleus mass (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub top_p: f32,
    /// Top-k; 0 or -1 is off (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub top_k: i64,
    /// Sampling seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Token ids that stop generation (duplicates removed, in order).
    #[serde(default)]
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past end-of-sequence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
    /// Tokens to generate at most (default 16; `null`: up to the context).
    #[serde(default = "sixteen", skip_serializing_if = "is_sixteen")]
    pub max_tokens: Option<usize>,
    /// Alternatives to return logprobs for per token (-1: the whole vocabulary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<i64>,
    /// How outputs are delivered.
    #[serde(default, skip_serializing_if = "RequestOutputKind::is_cumulative")]
    pub output_kind: RequestOutputKind,
    /// vLLM's "safe to reuse without a deep copy" flag; its request handlers set it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_clone: bool,
    /// Characters held back from streamed text until stop strings are ruled out: the
    /// longest stop string's length less one.
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub output_text_buffer_length: usize,
    /// Words that may not be generated.
    #[serde(default)]
    pub bad_words: Vec<String>,
    /// Whether the request skips reading the prefix cache (vLLM: when it asks for
    /// prompt logprobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reading_prefix_cache: Option<bool>,
    /// Every other parameter, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for GenerateSamplingParams {
    fn default() -> Self {
        GenerateSamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            max_tokens: Some(16),
            logprobs: None,
            output_kind: RequestOutputKind::Cumulative,
            skip_clone: false,
            output_text_buffer_length: 0,
            bad_words: Vec::new(),
            skip_reading_prefix_cache: None,
            other: Map::new(),
        }
    }
}

fn one() -> f32 {
    1.0
}

fn is_one(v: &f32) -> bool {
    *v == 1.0
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

fn sixteen() -> Option<usize> {
    Some(16)
}

fn is_sixteen(v: &Option<usize>) -> bool {
    *v == Some(16)
}

/// vLLM's `RequestOutputKind`, sent as its number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum RequestOutputKind {
    /// 0: every output holds everything so far.
    #[default]
    Cumulative,
    /// 1: each output holds what is new (streaming).
    Delta,
    /// 2: one output at the end (not streaming).
    FinalOnly,
}

impl RequestOutputKind {
    /// Whether this is the default, [`Cumulative`](Self::Cumulative).
    pub fn is_cumulative(&self) -> bool {
        *self == RequestOutputKind::Cumulative
    }
}

impl From<RequestOutputKind> for u8 {
    fn from(k: RequestOutputKind) -> u8 {
        match k {
            RequestOutputKind::Cumulative => 0,
            RequestOutputKind::Delta => 1,
            RequestOutputKind::FinalOnly => 2,
        }
    }
}

impl TryFrom<u8> for RequestOutputKind {
    type Error = String;

    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(RequestOutputKind::Cumulative),
            1 => Ok(RequestOutputKind::Delta),
            2 => Ok(RequestOutputKind::FinalOnly),
            v => Err(format!("output_kind {v} is not 0, 1 or 2")),
        }
    }
}

/// vLLM's `StreamOptions`, both fields always sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateStreamOptions {
    /// A last chunk carries the usage.
    pub include_usage: bool,
    /// Every chunk carries the usage so far.
    pub continuous_usage_stats: bool,
}

/// Multimodal items' hashes and where their placeholder tokens sit, per modality.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MultiModalFeatures {
    /// Item hashes, e.g. `{"image": ["abc", "def"]}`.
    pub mm_hashes: BTreeMap<String, Vec<String>>,
    /// Placeholder ranges in `token_ids`, parallel to `mm_hashes`.
    pub mm_placeholders: BTreeMap<String, Vec<PlaceholderRange>>,
    /// Serialized item data (base64), parallel to `mm_hashes`; `null` items come from
    /// the cache.
    #[serde(default)]
    pub kwargs_data: Option<BTreeMap<String, Vec<Option<String>>>>,
    /// Serialized placeholder metadata for disaggregated prefill.
    #[serde(default)]
    pub mm_metadata: Option<BTreeMap<String, Vec<Option<String>>>>,
}

/// Where one multimodal item's placeholder tokens sit in the prompt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceholderRange {
    /// Index of the first placeholder token.
    pub offset: usize,
    /// Number of placeholder tokens.
    pub length: usize,
}

/// What a generate server needs to parse a chat answer (vLLM's `ParseContext`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParseContext {
    /// The request's tools.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// The request's `tool_choice` (default `"none"`).
    #[serde(default = "tool_choice_none")]
    pub tool_choice: Value,
    /// The request's `parallel_tool_calls` (default true).
    #[serde(default = "some_true")]
    pub parallel_tool_calls: Option<bool>,
    /// Whether reasoning is returned (default true).
    #[serde(default = "yes")]
    pub include_reasoning: bool,
    /// The kwargs the chat template was rendered with.
    #[serde(default)]
    pub chat_template_kwargs: Map<String, Value>,
    /// Tool calls already in the conversation.
    #[serde(default)]
    pub history_tool_call_cnt: u64,
    /// Fields from newer servers, kept as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl Default for ParseContext {
    fn default() -> Self {
        ParseContext {
            tools: None,
            tool_choice: tool_choice_none(),
            parallel_tool_calls: Some(true),
            include_reasoning: true,
            chat_template_kwargs: Map::new(),
            history_tool_call_cnt: 0,
            other: Map::new(),
        }
    }
}

fn tool_choice_none() -> Value {
    Value::from("none")
}

fn some_true() -> Option<bool> {
    Some(true)
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_are_left_out_of_sampling_params_and_read_back() {
        let sp = GenerateSamplingParams {
            output_kind: RequestOutputKind::FinalOnly,
            skip_clone: true,
            skip_reading_prefix_cache: Some(false),
            ..Default::default()
        };
        // What vLLM 0.33 sends for a body that sets nothing.
        let want = json!({"stop": [], "stop_token_ids": [], "output_kind": 2, "skip_clone": true,
            "bad_words": [], "skip_reading_prefix_cache": false});
        assert_eq!(serde_json::to_value(&sp).unwrap(), want);
        assert_eq!(serde_json::from_value::<GenerateSamplingParams>(want).unwrap(), sp);
        let set = GenerateSamplingParams {
            temperature: 0.0,
            top_k: -1,
            max_tokens: None,
            logprobs: Some(2),
            other: Map::from_iter([("n".to_string(), json!(2))]),
            ..Default::default()
        };
        let v = serde_json::to_value(&set).unwrap();
        assert_eq!(v["temperature"], 0.0);
        assert_eq!(v["top_k"], -1);
        assert_eq!(v["max_tokens"], Value::Null);
        assert_eq!(v["n"], 2);
        assert!(v.get("output_kind").is_none() && v.get("top_p").is_none(), "{v}");
        assert_eq!(serde_json::from_value::<GenerateSamplingParams>(v).unwrap(), set);
        assert!(serde_json::from_value::<GenerateSamplingParams>(json!({"output_kind": 3})).is_err());
    }

    #[test]
    fn every_request_field_is_sent_and_a_minimal_answer_reads() {
        let r: GenerateRequest = serde_json::from_value(json!({"token_ids": [1, 2], "sampling_params": {}})).unwrap();
        assert_eq!((r.output_mode, r.priority, r.stream), (OutputMode::Tokens, 0, false));
        // In vLLM's order (pydantic's field order), read off the text.
        let text = serde_json::to_string(&r).unwrap();
        let want = [
            "request_id",
            "token_ids",
            "token_offsets",
            "features",
            "content_parts",
            "sampling_params",
            "model",
            "reasoning_ended",
            "reasoning_parser_kwargs",
            "return_token_ids",
            "output_mode",
            "parse_context",
            "stream",
            "stream_options",
            "cache_salt",
            "priority",
            "kv_transfer_params",
            "ec_transfer_params",
        ];
        let at: Vec<usize> = want.iter().map(|k| text.find(&format!("\"{k}\":")).unwrap()).collect();
        assert!(at.is_sorted(), "{text}");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v.as_object().unwrap().len(), want.len());
        assert_eq!(v["output_mode"], "tokens");
        assert_eq!(v["features"], Value::Null);

        let ctx = serde_json::to_value(ParseContext::default()).unwrap();
        assert_eq!(
            ctx,
            json!({"tools": null, "tool_choice": "none", "parallel_tool_calls": true, "include_reasoning": true,
                "chat_template_kwargs": {}, "history_tool_call_cnt": 0})
        );
        let mm = json!({"mm_hashes": {"image": ["h"]}, "mm_placeholders": {"image": [{"offset": 3, "length": 4}]},
            "kwargs_data": null, "mm_metadata": null});
        let f: MultiModalFeatures = serde_json::from_value(mm.clone()).unwrap();
        assert_eq!(f.mm_placeholders["image"][0], PlaceholderRange { offset: 3, length: 4 });
        assert_eq!(serde_json::to_value(&f).unwrap(), mm);
    }
}
