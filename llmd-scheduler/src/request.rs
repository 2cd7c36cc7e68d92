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
