//! SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`: Llama 1 and 2,
//! Mistral, TinyLlama), encoded as llama.cpp's `llm_tokenizer_spm` does.
//!
//! llama.cpp escapes spaces to `▁`, puts a `▁` before each run of text (after the
//! start and after every special token) when `tokenizer.ggml.add_space_prefix` (default
//! true), splits the run into characters, and repeatedly merges the adjacent pair whose
//! concatenation is a vocabulary piece with the highest score, leftmost first on ties;
//! characters no piece covers become `<0xNN>` byte tokens. A Hugging Face BPE model
//! does the same given merges ranked by the merged piece's score (derived here from
//! the vocabulary, as transformers' `GGUFLlamaConverter` does) and `byte_fallback`; the
//! normalizer and decoder are transformers' `LlamaConverter`'s (legacy form):
//! `Prepend("▁")` + `Replace(" ", "▁")`, then `Replace("▁", " ")`, `ByteFallback`, `Fuse`
//! and `Strip` of the one leading space the prefix added.
//!
//! Where the two can differ (not seen on trained vocabularies: the fixture of
//! `scripts/gguf/spm_fixtures.py`, and Llama 2's own on 46 000 texts): distinct pieces
//! with equal scores compete by position in llama.cpp and by rank here; a character
//! outside the vocabulary that still occurs inside a piece can merge in llama.cpp but
//! takes the byte fallback here. llama.cpp's overrides by model name or token text
//! (Phi-3's `rstrip` after special tokens, `</s>` made a control token) are not copied.
//! Decoding skips special tokens before stripping the leading space, so a sequence
//! that starts with one (`<s>`, `<|im_start|>`) decodes without the space llama.cpp's
//! `llama_detokenize` keeps there; transformers and vLLM decode as here.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::{Built, CONTROL, GgufFile, UNKNOWN, USER_DEFINED, Vocab, added_token, opt_bool, post_processor};
use crate::error::Result;

const SPACE: &str = "▁";

fn scores(f: &GgufFile, n_tokens: usize) -> Result<Vec<f32>> {
    const KEY: &str = "tokenizer.ggml.scores";
    let v = f
        .get(KEY)
        .ok_or_else(|| f.error(format!("metadata {KEY} is missing (a SentencePiece vocabulary needs it)")))?;
    let scores = v
        .as_array()
        .and_then(|a| a.iter().map(|s| s.as_f64().map(|s| s as f32)).collect::<Option<Vec<f32>>>())
        .ok_or_else(|| f.error(format!("metadata {KEY} is not an array of numbers")))?;
    if scores.len() != n_tokens {
        return Err(f.error(format!("metadata {KEY} has {} scores for {n_tokens} tokens", scores.len())));
    }
    Ok(scores)
}

/// The merges that make a BPE model encode as SentencePiece: every split of a piece
/// into two pieces, ranked by the merged piece's score, highest first. Ties keep
/// transformers' order (piece id, then the halves' scores, highest first). Found by
/// looking up each piece's split points, not by pairing pieces: milliseconds for
/// Llama's 32 000.
pub(super) fn merges<'a>(tokens: &'a [String], scores: &[f32]) -> Vec<(&'a str, &'a str)> {
    // The last of duplicate texts wins, as in llama.cpp's and the JSON's maps.
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    // -0.0 and 0.0 tie in llama.cpp's comparison; NaN loses every comparison.
    let score = |i: usize| if scores[i].is_nan() { f32::NEG_INFINITY } else { scores[i] + 0.0 };
    let mut found = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if ids.get(t.as_str()) != Some(&i) {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(k);
            if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                found.push((i, li, ri));
            }
        }
    }
    // Stable: equal keys keep the split points' order.
    found.sort_by(|a, b| {
        score(b.0)
            .total_cmp(&score(a.0))
            .then(a.0.cmp(&b.0))
            .then(score(b.1).total_cmp(&score(a.1)))
            .then(score(b.2).total_cmp(&score(a.2)))
    });
    found.into_iter().map(|(_, l, r)| (tokens[l].as_str(), tokens[r].as_str())).collect()
}

/// The `tokenizer.json` of a SentencePiece vocabulary, with llama.cpp's defaults for
/// missing keys: BOS 1, EOS 2, unknown 0, BOS added, EOS not, space prefix added.
pub(super) fn build(f: &GgufFile, vocab: &Vocab) -> Result<Built> {
    let scores = scores(f, vocab.tokens.len())?;
    let bos = vocab.id(f, "tokenizer.ggml.bos_token_id", Some(1))?;
    let eos = vocab.id(f, "tokenizer.ggml.eos_token_id", Some(2))?;
    let unk = vocab.id(f, "tokenizer.ggml.unknown_token_id", Some(0))?;
    let add_bos = opt_bool(f, "tokenizer.ggml.add_bos_token", true)?;
    let add_eos = opt_bool(f, "tokenizer.ggml.add_eos_token", false)?;
    let space_prefix = opt_bool(f, "tokenizer.ggml.add_space_prefix", true)?;

    // llama.cpp matches control, unknown and user-defined tokens in the raw text and
    // renders only user-defined ones when decoding.
    let added: Vec<Json> = (vocab.tokens.iter().zip(&vocab.types).enumerate())
        .filter(|(_, (_, ty))| matches!(**ty, CONTROL | UNKNOWN | USER_DEFINED))
        .map(|(i, (t, ty))| added_token(i, t, *ty != USER_DEFINED, false))
        .collect();
    let replace = |from: &str, to: &str| json!({"type": "Replace", "pattern": {"String": from}, "content": to});
    let (normalizer, mut decoders) = if space_prefix {
        (
            json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace(" ", SPACE)]}),
            vec![replace(SPACE, " ")],
        )
    } else {
        (replace(" ", SPACE), vec![replace(SPACE, " ")])
    };
    decoders.extend([json!({"type": "ByteFallback"}), json!({"type": "Fuse"})]);
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let text_of = |id: Option<u32>, add: bool| id.filter(|_| add).zip(vocab.text(id));
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": post_processor(text_of(bos, add_bos), text_of(eos, add_eos)),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": vocab.text(unk), "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab.json_map(), "merges": merges(&vocab.tokens, &scores)},
    });
    Ok(Built { doc, bos, eos })
}
