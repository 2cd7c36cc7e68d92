//! The built-in model's tokenizer exported as a Hugging Face `tokenizer.json` must count
//! and decode exactly as the byte tokenizer does, or load generators that tokenize
//! client-side (inference-perf, aiperf) would report other token counts than the server.

use llmd_engine::ByteTokenizer;
use llmd_engine::tokenizer::{HfTokenizer, Tokenize};
use proptest::prelude::*;

/// Exports the built-in tokenizer into a directory of the caller's own (`name`), so no
/// test reads a file another is rewriting, and loads it back.
fn exported(name: &str) -> HfTokenizer {
    let dir = std::env::temp_dir().join(format!("llmd-byte-tokenizer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    ByteTokenizer::write_hf_files(&dir).unwrap();
    assert!(dir.join("tokenizer_config.json").exists());
    let tok = HfTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    tok
}

/// The proptest's cases share one export (made once, in its own directory).
static EXPORTED_FOR_PROPTEST: std::sync::LazyLock<HfTokenizer> = std::sync::LazyLock::new(|| exported("proptest"));

#[test]
fn exported_tokenizer_matches_byte_tokenizer_on_fixed_cases() {
    let hf = exported("fixed-cases");
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
        let hf = &*EXPORTED_FOR_PROPTEST;
        prop_assert_eq!(hf.encode(&text, false).unwrap(), ByteTokenizer.encode(&text, false).unwrap());
        prop_assert_eq!(hf.decode(&ByteTokenizer.encode(&text, false).unwrap(), false).unwrap(), text);
    }
}
