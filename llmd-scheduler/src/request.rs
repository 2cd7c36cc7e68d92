//! A request as the scheduler sees it.

use std::collections::BTreeMap;

/// What the picker knows about one inference request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRequest {
    /// Request id (`x-request-id`).
    pub id: String,
    /// Target model (or LoRA adapter) name.
    pub model: String,
    /// Prompt text (completions `prompt`, or chat messages flattened).
    pub prompt: String,
    /// Prompt token ids, when the caller tokenized (precise prefix scoring needs them).
    pub token_ids: Option<Vec<u32>>,
    /// Request headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// Multimodal items in the prompt (images, audio, video): the E/P/D encode stage
    /// runs for requests that have some.
    pub multimodal: usize,
}

/// The multimodal content parts of a chat body's messages (`image_url`, `video_url`,
/// `input_audio`, `audio_url`, and the Anthropic and Responses spellings), as
/// llm-d-router's token producer marks them.
pub fn count_multimodal(body: &serde_json::Value) -> usize {
    const KINDS: [&str; 8] =
        ["image_url", "video_url", "input_audio", "audio_url", "image", "input_image", "video", "audio"];
    let parts = |m: &serde_json::Value| -> usize {
        m.get("content").and_then(serde_json::Value::as_array).map_or(0, |a| {
            a.iter()
                .filter(|p| p.get("type").and_then(serde_json::Value::as_str).is_some_and(|t| KINDS.contains(&t)))
                .count()
        })
    };
    let in_list =
        |key: &str| body.get(key).and_then(serde_json::Value::as_array).map_or(0, |ms| ms.iter().map(parts).sum());
    in_list("messages") + in_list("input")
}

impl LlmRequest {
    /// A request for `model` with a text prompt.
    pub fn new(id: impl Into<String>, model: impl Into<String>, prompt: impl Into<String>) -> Self {
        LlmRequest { id: id.into(), model: model.into(), prompt: prompt.into(), ..Default::default() }
    }

    /// Prompt length in tokens: the token ids when known, else llm-d's estimate of a
    /// token per four characters.
    pub fn prompt_tokens(&self) -> usize {
        self.token_ids.as_ref().map_or(self.prompt.len().div_ceil(4), Vec::len)
    }
}
