//! Tokenizers and chat templates.
//!
//! A checkpoint's `tokenizer.json` is served by Hugging Face's `tokenizers` crate; its
//! chat template (`chat_template.jinja`, or `chat_template` in `tokenizer_config.json`)
//! is rendered with `minijinja` plus Python-compatible string methods, as transformers'
//! `apply_chat_template` does. The built-in model uses [`ByteTokenizer`].

use std::path::Path;

use minijinja::{Environment, context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EngineError, Result};

/// Text ↔ token ids.
pub trait Tokenize: Send + Sync {
    /// Encodes text; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (e.g. BOS).
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;
    /// Decodes ids to text, dropping special tokens when asked.
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String>;
    /// Vocabulary size including added tokens.
    fn vocab_size(&self) -> usize;
    /// Id of a token string, if it exists.
    fn token_to_id(&self, token: &str) -> Option<u32>;
}

/// A Hugging Face `tokenizer.json`.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer").field("vocab_size", &self.vocab_size()).finish()
    }
}

impl HfTokenizer {
    /// Loads `tokenizer.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(HfTokenizer { inner })
    }
}

impl Tokenize for HfTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

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
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 1);
        if add_special_tokens {
            ids.push(Self::BOS);
        }
        ids.extend(text.bytes().map(u32::from));
        Ok(ids)
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            match id {
                0..=255 => bytes.push(id as u8),
                Self::BOS | Self::EOS | Self::PAD if skip_special_tokens => {}
                Self::BOS => bytes.extend_from_slice(b"<s>"),
                Self::EOS => bytes.extend_from_slice(b"</s>"),
                Self::PAD => bytes.extend_from_slice(b"<pad>"),
                other => {
                    return Err(EngineError::Tokenizer(format!("token id {other} is outside the byte vocabulary")));
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

/// One chat message, as the OpenAI API and chat templates see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// A chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// The template of the built-in model (and of checkpoints without one).
pub const DEFAULT_CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

fn special(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        // Older files store {"content": "<s>", ...}.
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).unwrap_or_default().to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// A template from its source and special tokens.
    pub fn new(source: impl Into<String>, bos_token: impl Into<String>, eos_token: impl Into<String>) -> Self {
        ChatTemplate { source: source.into(), bos_token: bos_token.into(), eos_token: eos_token.into() }
    }

    /// The checkpoint's template: `chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates, taking
    /// `default`), else `None`.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| EngineError::config("tokenizer_config.json", "(document)", e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
            Err(e) => return Err(EngineError::io(cfg_path, e)),
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| EngineError::io(&jinja, e))?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                    .map(String::from),
                _ => None,
            }
        };
        Ok(source.map(|s| ChatTemplate::new(s, special(cfg.get("bos_token")), special(cfg.get("eos_token")))))
    }

    /// Renders messages to the prompt text.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| EngineError::Tokenizer(format!("chat template does not parse: {e}")))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| EngineError::Tokenizer(format!("chat template failed: {e}")))
    }
}
