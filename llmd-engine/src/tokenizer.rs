//! Tokenizers and chat templates.
//!
//! The [`Tokenize`] trait, Hugging Face tokenizers ([`HfTokenizer`]), chat templates
//! ([`ChatTemplate`]) and the checkpoint loader ([`PromptRenderer::from_dir`]) live in
//! `llmd-openai` (feature `render`), shared with the gateway and the benchmark client;
//! they are re-exported here. The built-in model uses [`ByteTokenizer`].

use std::path::Path;

use serde_json::Value;

pub use llmd_openai::render::{ChatTemplate, DEFAULT_CHAT_TEMPLATE, HfTokenizer, PromptRenderer, Tokenize};
pub use llmd_openai::request::ChatMessage;

use crate::error::{EngineError, Result};

/// The built-in model's tokenizer: one token per byte (ids 0–255) plus `<s>` (256),
/// `</s>` (257) and `<pad>` (258). Needs no files and round-trips any text.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// Beginning of sequence.
    pub const BOS: u32 = 256;
    /// End of sequence.
    pub const EOS: u32 = 257;
    /// Padding.
    pub const PAD: u32 = 258;
    /// Vocabulary size.
    pub const VOCAB: usize = 259;
}

impl ByteTokenizer {
    /// The same tokenizer as a Hugging Face `tokenizer.json`: byte-level, no merges, so
    /// `transformers`, `tokenizers` and the load generators that use them (inference-perf,
    /// aiperf) count exactly the tokens the built-in model sees. One difference: the HF
    /// form treats the literal text `<s>`, `</s>` and `<pad>` as the special tokens.
    pub fn hf_tokenizer_json() -> String {
        // GPT-2's byte-to-unicode table: printable bytes stand for themselves, the rest
        // move to U+0100 upwards, so every byte has a visible one-character token.
        let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let mut vocab = serde_json::Map::new();
        let mut shifted = 0u32;
        for b in 0..256u32 {
            let c = if printable(b) {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            let ch = char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
            vocab.insert(ch.to_string(), Value::from(b));
        }
        let special = |id: u32, content: &str| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        };
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
        serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(Self::BOS, "<s>"), special(Self::EOS, "</s>"), special(Self::PAD, "<pad>")],
            "normalizer": null,
            "pre_tokenizer": byte_level,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [Self::BOS], "tokens": ["<s>"]}},
            },
            "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": []},
        })
        .to_string()
    }

    /// The `tokenizer_config.json` that goes beside [`ByteTokenizer::hf_tokenizer_json`]
    /// so `transformers.AutoTokenizer` loads the directory.
    pub fn hf_tokenizer_config_json() -> String {
        serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "model_max_length": 4096,
            "clean_up_tokenization_spaces": false,
        })
        .to_string()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if
    /// missing): a tokenizer directory any Hugging Face-based tool can load offline.
    pub fn write_hf_files(dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| EngineError::Tokenizer(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::write(dir.join("tokenizer.json"), Self::hf_tokenizer_json()).map_err(io)?;
        std::fs::write(dir.join("tokenizer_config.json"), Self::hf_tokenizer_config_json()).map_err(io)?;
        Ok(())
    }
}

impl Tokenize for ByteTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> llmd_openai::Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 1);
        if add_special_tokens {
            ids.push(Self::BOS);
        }
        ids.extend(text.bytes().map(u32::from));
        Ok(ids)
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> llmd_openai::Result<String> {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            match id {
                0..=255 => bytes.push(id as u8),
                Self::BOS | Self::EOS | Self::PAD if skip_special_tokens => {}
                Self::BOS => bytes.extend_from_slice(b"<s>"),
                Self::EOS => bytes.extend_from_slice(b"</s>"),
                Self::PAD => bytes.extend_from_slice(b"<pad>"),
                other => {
                    return Err(llmd_openai::OpenAiError::Tokenizer(format!(
                        "token id {other} is outside the byte vocabulary"
                    )));
                }
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn vocab_size(&self) -> usize {
        Self::VOCAB
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        match token {
            "<s>" => Some(Self::BOS),
            "</s>" => Some(Self::EOS),
            "<pad>" => Some(Self::PAD),
            t if t.len() == 1 => Some(u32::from(t.as_bytes()[0])),
            _ => None,
        }
    }
}
