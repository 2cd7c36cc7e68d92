//! Byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`): tokens in GPT-2's
//! byte-to-unicode alphabet, `tokenizer.ggml.merges` in rank order, and a pre-tokenizer
//! named by `tokenizer.ggml.pre`.

use serde_json::{Value as Json, json};

use super::{Built, CONTROL, GgufFile, USER_DEFINED, Vocab, added_token, opt_bool, post_processor, strings};
use crate::error::Result;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

/// The `tokenizer.json` of a byte-level BPE vocabulary.
pub(super) fn build(f: &GgufFile, vocab: &Vocab) -> Result<Built> {
    let merges = strings(f, "tokenizer.ggml.merges")?;
    let pre = f.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let bos = vocab.id(f, "tokenizer.ggml.bos_token_id", None)?;
    let eos = vocab.id(f, "tokenizer.ggml.eos_token_id", None)?;
    let add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token", false)?;

    let added: Vec<Json> = (vocab.tokens.iter().zip(&vocab.types).enumerate())
        .filter(|(_, (_, ty))| **ty == CONTROL || **ty == USER_DEFINED)
        .map(|(i, (t, ty))| added_token(i, t, *ty == CONTROL, *ty == USER_DEFINED))
        .collect();
    let prepend = bos.filter(|_| add_bos).zip(vocab.text(bos));
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(f, pre)?,
        "post_processor": post_processor(prepend, None),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab.json_map(), "merges": merges},
    });
    Ok(Built { doc, bos, eos })
}
