//! The tokenizer and chat template a GGUF file carries in its metadata
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`), turned into a Hugging Face
//! `tokenizer.json` so the same `tokenizers` code serves GGUF and safetensors models.
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported with the
//! pre-tokenizers llama.cpp names in `tokenizer.ggml.pre`: GPT-2's split (`default`,
//! `gpt2`), SmolLM's (`smollm`: single digits, then GPT-2's), Llama 3's (`llama3`,
//! `llama-bpe`) and Qwen2's (`qwen2`). Others are refused by name rather than guessed.

use serde_json::{Value as Json, json};

use super::GgufFile;
use crate::error::Result;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types.
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

fn pre_tokenizer(f: &GgufFile, pre: &str) -> Result<Json> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama3" | "llama-v3" | "llama-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
        other => {
            return Err(f.error(format!(
                "tokenizer.ggml.pre {other:?} is not supported (default, gpt2, smollm, llama3, llama-bpe, qwen2 are)"
            )));
        }
    })
}

/// Builds the tokenizer of `f`.
pub fn from_gguf(f: &GgufFile) -> Result<GgufTokenizer> {
    let model =
        f.opt_str("tokenizer.ggml.model")?.ok_or_else(|| f.error("metadata tokenizer.ggml.model is missing"))?;
    if model != "gpt2" {
        return Err(f.error(format!(
            "tokenizer.ggml.model {model:?} is not supported yet (byte-level BPE, \"gpt2\", is); \
             SentencePiece vocabularies (\"llama\") need the checkpoint's tokenizer.json"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        let v = f.get(key).ok_or_else(|| f.error(format!("metadata {key} is missing")))?;
        let a = v.as_array().ok_or_else(|| f.error(format!("metadata {key} is not an array")))?;
        a.iter()
            .map(|s| s.as_str().map(String::from).ok_or_else(|| f.error(format!("metadata {key} holds a non-string"))))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|t| t.as_i64()).collect::<Option<Vec<i64>>>())
            .ok_or_else(|| f.error("metadata tokenizer.ggml.token_type is not an array of integers"))?,
    };
    if types.len() != tokens.len() {
        return Err(f.error(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let pre = f.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let id = |key: &str| -> Result<Option<u32>> {
        match f.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64().and_then(|i| u32::try_from(i).ok()) {
                Some(i) if (i as usize) < tokens.len() => Ok(Some(i)),
                _ => Err(f.error(format!("metadata {key} is {v:?}, not a token id"))),
            },
        }
    };
    let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
    let add_bos = f.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(t.clone(), Json::from(i));
        if *ty == CONTROL || *ty == USER_DEFINED {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": *ty == USER_DEFINED, "special": *ty == CONTROL}));
        }
    }
    let text = |i: Option<u32>| i.map(|i| tokens[i as usize].clone());
    let post = match (add_bos, text(bos)) {
        (true, Some(b)) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b.clone(): {"id": b, "ids": [bos], "tokens": [b]}},
        }),
        _ => Json::Null,
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(f, pre)?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    Ok(GgufTokenizer {
        json: doc.to_string(),
        bos: text(bos),
        eos: eos.map(|e| (e, tokens[e as usize].clone())),
        chat_template: f.opt_str("tokenizer.chat_template")?.map(String::from),
    })
}
