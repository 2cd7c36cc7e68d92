//! The tokenizer and chat template a GGUF file carries in its metadata
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`), turned into a Hugging Face
//! `tokenizer.json` so the same `tokenizers` code serves GGUF and safetensors models.
//!
//! Two vocabulary kinds (`tokenizer.ggml.model`) are supported:
//! - `"gpt2"`, byte-level BPE (`tokenizer/bpe.rs`), with the pre-tokenizers llama.cpp
//!   names in `tokenizer.ggml.pre`: GPT-2's split (`default`, `gpt2`), SmolLM's
//!   (`smollm`: single digits, then GPT-2's), Llama 3's (`llama3`, `llama-bpe`) and
//!   Qwen2's (`qwen2`). Others are refused by name rather than guessed.
//! - `"llama"`, SentencePiece (`tokenizer/spm.rs`: Llama 1 and 2, Mistral, TinyLlama):
//!   pieces with `▁` for spaces, scores, `<0xNN>` byte tokens; encoded as llama.cpp's
//!   `llm_tokenizer_spm` does.
//!
//! Other models (`"bert"`, `"t5"`, …) are refused by name. Control tokens (and
//! SentencePiece's unknown token) become special added tokens: recognized in text and
//! skipped when decoding with `skip_special_tokens`, as llama.cpp parses and hides them.

mod bpe;
mod spm;
#[cfg(test)]
mod tests;

use serde_json::{Value as Json, json};

use super::GgufFile;
use crate::error::Result;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// What the GGUF says about its tokenizer beyond the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTokenizer {
    /// A `tokenizer.json` document.
    pub json: String,
    /// Beginning-of-sequence token text, if any.
    pub bos: Option<String>,
    /// End-of-sequence token id and text, if any.
    pub eos: Option<(u32, String)>,
    /// The chat template, if the file has one.
    pub chat_template: Option<String>,
}

/// The token texts and types every vocabulary kind has.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
}

impl Vocab {
    fn read(f: &GgufFile) -> Result<Self> {
        let mut tokens = strings(f, "tokenizer.ggml.tokens")?;
        // llama.cpp renames empty tokens so every text is a usable key.
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
            None => vec![NORMAL; tokens.len()],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|t| t.as_i64()).collect::<Option<Vec<i64>>>())
                .ok_or_else(|| f.error("metadata tokenizer.ggml.token_type is not an array of integers"))?,
        };
        if types.len() != tokens.len() {
            return Err(f.error(format!(
                "metadata tokenizer.ggml.token_type has {} types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        Ok(Vocab { tokens, types })
    }

    /// The `vocab` map of a `tokenizer.json` model.
    fn json_map(&self) -> serde_json::Map<String, Json> {
        self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), Json::from(i))).collect()
    }

    /// A token id from `key`, `default` when the key is absent (llama.cpp's defaults
    /// hold only if in range, as there).
    fn id(&self, f: &GgufFile, key: &str, default: Option<u32>) -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(default.filter(|&i| (i as usize) < self.tokens.len())),
            Some(v) => match v.as_u64().and_then(|i| u32::try_from(i).ok()) {
                Some(i) if (i as usize) < self.tokens.len() => Ok(Some(i)),
                _ => Err(f.error(format!("metadata {key} is {v:?}, not a token id below {}", self.tokens.len()))),
            },
        }
    }

    fn text(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|i| self.tokens.get(i as usize)).map(String::as_str)
    }
}

/// A model's `tokenizer.json` document and its BOS and EOS ids.
struct Built {
    doc: Json,
    bos: Option<u32>,
    eos: Option<u32>,
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    let v = f.get(key).ok_or_else(|| f.error(format!("metadata {key} is missing")))?;
    let a = v.as_array().ok_or_else(|| f.error(format!("metadata {key} is not an array")))?;
    a.iter()
        .map(|s| s.as_str().map(String::from).ok_or_else(|| f.error(format!("metadata {key} holds a non-string"))))
        .collect()
}

fn opt_bool(f: &GgufFile, key: &str, default: bool) -> Result<bool> {
    match f.get(key) {
        None => Ok(default),
        Some(v) => v.as_bool().ok_or_else(|| f.error(format!("metadata {key} is {v:?}, expected a bool"))),
    }
}

/// One `added_tokens` entry.
fn added_token(id: usize, content: &str, special: bool, normalized: bool) -> Json {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": normalized, "special": special})
}

/// A post-processor adding `bos` before and `eos` after the text (each when given), as
/// llama.cpp's `add_special` does; `null` when neither is added.
fn post_processor(bos: Option<(u32, &str)>, eos: Option<(u32, &str)>) -> Json {
    if bos.is_none() && eos.is_none() {
        return Json::Null;
    }
    let special =
        |t: Option<(u32, &str)>, type_id: u32| t.map(|(_, s)| json!({"SpecialToken": {"id": s, "type_id": type_id}}));
    let seq = |id: &str, type_id: u32| Some(json!({"Sequence": {"id": id, "type_id": type_id}}));
    let single: Vec<Json> = [special(bos, 0), seq("A", 0), special(eos, 0)].into_iter().flatten().collect();
    let pair: Vec<Json> =
        [special(bos, 0), seq("A", 0), special(eos, 0), special(bos, 1), seq("B", 1), special(eos, 1)]
            .into_iter()
            .flatten()
            .collect();
    let special_tokens: serde_json::Map<String, Json> = [bos, eos]
        .into_iter()
        .flatten()
        .map(|(id, s)| (s.to_string(), json!({"id": s, "ids": [id], "tokens": [s]})))
        .collect();
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

/// Builds the tokenizer of `f`.
pub fn from_gguf(f: &GgufFile) -> Result<GgufTokenizer> {
    let model =
        f.opt_str("tokenizer.ggml.model")?.ok_or_else(|| f.error("metadata tokenizer.ggml.model is missing"))?;
    // The kind first, so an unsupported vocabulary is named as such, not by whatever
    // else is wrong with its metadata.
    if !matches!(model, "gpt2" | "llama") {
        return Err(f.error(format!(
            "tokenizer.ggml.model {model:?} is not supported (\"gpt2\", byte-level BPE, and \"llama\", \
             SentencePiece, are)"
        )));
    }
    let vocab = Vocab::read(f)?;
    let built = if model == "gpt2" { bpe::build(f, &vocab)? } else { spm::build(f, &vocab)? };
    Ok(GgufTokenizer {
        json: built.doc.to_string(),
        bos: vocab.text(built.bos).map(String::from),
        eos: built.eos.zip(vocab.text(built.eos).map(String::from)),
        chat_template: f.opt_str("tokenizer.chat_template")?.map(String::from),
    })
}
