#![allow(clippy::unwrap_used)]
//! The built-in model's tokenizer exported as a Hugging Face `tokenizer.json` must count
//! and decode exactly as the byte tokenizer does, or load generators that tokenize
//! client-side (inference-perf, aiperf) would report other token counts than the server.

use llmd_engine::ByteTokenizer;
use llmd_engine::tokenizer::{HfTokenizer, Tokenize};
use proptest::prelude::*;

static EXPORTED: std::sync::LazyLock<HfTokenizer> = std::sync::LazyLock::new(exported);

fn exported() -> HfTokenizer {
    let dir = std::env::temp_dir().join(format!("llmd-byte-tokenizer-{}", std::process::id()));
    ByteTokenizer::write_hf_files(&dir).unwrap();
    assert!(dir.join("tokenizer_config.json").exists());
    HfTokenizer::from_file(&dir.join("tokenizer.json")).unwrap()
}

#[test]
fn exported_tokenizer_matches_byte_tokenizer_on_fixed_cases() {
    // The shared instance: a second export into the same directory would race the
    // proptest's reads of it.
    let hf = &*EXPORTED;
    assert_eq!(hf.vocab_size(), ByteTokenizer::VOCAB);
    for text in ["", "hello world", "  two  spaces\n\ttab", "naïve café ✓ 日本語 🚀", "\u{0}\u{7f}", "a</s"] {
        for special in [false, true] {
            assert_eq!(hf.encode(text, special).unwrap(), ByteTokenizer.encode(text, special).unwrap(), "{text:?}");
        }
        let ids = ByteTokenizer.encode(text, true).unwrap();
        assert_eq!(hf.decode(&ids, true).unwrap(), text);
    }
    assert_eq!(hf.token_to_id("</s>"), Some(ByteTokenizer::EOS));
    // Negative control: a tokenizer with one merge is no longer byte-for-byte.
    let mut v: serde_json::Value = serde_json::from_str(&ByteTokenizer::hf_tokenizer_json()).unwrap();
    v["model"]["vocab"]["he"] = 300.into();
    v["model"]["merges"] = serde_json::json!([["h", "e"]]);
    let merged = tokenizers::Tokenizer::from_bytes(v.to_string().as_bytes()).unwrap();
    assert_ne!(merged.encode("hello", false).unwrap().get_ids(), ByteTokenizer.encode("hello", false).unwrap());
}

proptest! {
    #[test]
    fn exported_tokenizer_matches_byte_tokenizer(text in ".{0,64}") {
        let hf = &*EXPORTED;
        prop_assert_eq!(hf.encode(&text, false).unwrap(), ByteTokenizer.encode(&text, false).unwrap());
        prop_assert_eq!(hf.decode(&ByteTokenizer.encode(&text, false).unwrap(), false).unwrap(), text);
    }
}
