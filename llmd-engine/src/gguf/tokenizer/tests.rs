//! The SentencePiece path on the checked-in vocabulary (`scripts/gguf/spm_fixtures.py`)
//! rewritten with other metadata (llama.cpp's ids for `add_space_prefix = false`, its
//! defaults, bad metadata), the merges' order, and the byte-level BPE path on a tiny
//! vocabulary. `tests/integration/gguf.rs` holds the parity on the file as written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;
use crate::gguf::Value;
use crate::gguf::tests::{gguf_str, write_gguf};
use crate::tokenizer::{HfTokenizer, Tokenize};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn fixture() -> GgufFile {
    GgufFile::open(&fixture_dir().join("spm.gguf")).unwrap()
}

fn expected() -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("spm.json")).unwrap()).unwrap()
}

fn ids(v: &Json) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A metadata value's GGUF type id and encoding (integers as 64-bit, floats as f32:
/// the widths the reader does not keep).
fn encode(v: &Value) -> (u32, Vec<u8>) {
    match v {
        Value::U64(x) => (10, x.to_le_bytes().to_vec()),
        Value::I64(x) => (11, x.to_le_bytes().to_vec()),
        Value::F64(x) => (6, (*x as f32).to_le_bytes().to_vec()),
        Value::Bool(b) => (7, vec![u8::from(*b)]),
        Value::String(s) => (8, gguf_str(s)),
        Value::Array(a) => {
            let inner = a.first().map_or(4, |x| encode(x).0);
            let mut out = [&inner.to_le_bytes()[..], &(a.len() as u64).to_le_bytes()].concat();
            for x in a {
                out.extend(encode(x).1);
            }
            (9, out)
        }
    }
}

fn file_of(meta: &BTreeMap<String, Value>) -> GgufFile {
    let kv: Vec<(&str, u32, Vec<u8>)> = meta
        .iter()
        .map(|(k, v)| {
            let (ty, bytes) = encode(v);
            (k.as_str(), ty, bytes)
        })
        .collect();
    GgufFile::from_bytes(Path::new("edited.gguf"), write_gguf(&kv, &[]).into()).unwrap()
}

/// The fixture's metadata with `edit` applied, as a new file.
fn fixture_with(edit: impl FnOnce(&mut BTreeMap<String, Value>)) -> GgufFile {
    let mut meta = fixture().metadata().clone();
    edit(&mut meta);
    file_of(&meta)
}

fn hf(f: &GgufFile) -> HfTokenizer {
    HfTokenizer::from_bytes(from_gguf(f).unwrap().json.as_bytes()).unwrap()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

#[test]
fn rewriting_the_fixture_keeps_its_tokenizer() {
    assert_eq!(from_gguf(&fixture_with(|_| {})).unwrap(), from_gguf(&fixture()).unwrap());
}

#[test]
fn sentencepiece_without_space_prefix_matches_llama_cpp() {
    let f = fixture_with(|m| {
        m.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
    });
    let tok = hf(&f);
    let want = expected();
    let cases = want["no_space_prefix"].as_array().unwrap();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&c["ids"]), "tokens of {text:?}");
        assert_eq!(tok.encode(text, true).unwrap(), ids(&c["ids_bos"]), "tokens with BOS of {text:?}");
        // No prefix, no space to strip: decoding is llama.cpp's exactly.
        assert_eq!(tok.decode(&ids(&c["ids"]), true).unwrap(), c["decoded"].as_str().unwrap(), "{text:?}");
        assert_eq!(tok.decode(&ids(&c["ids_bos"]), true).unwrap(), c["decoded_bos"].as_str().unwrap(), "{text:?}");
    }
    assert!(cases.len() >= 10);
}

#[test]
fn missing_sentencepiece_keys_take_llama_cpps_defaults() {
    // BOS 1, EOS 2, unknown 0, BOS added, EOS not, space prefix added.
    let bare = fixture_with(|m| {
        for k in ["bos_token_id", "eos_token_id", "unknown_token_id", "add_bos_token", "add_eos_token"] {
            m.remove(&format!("tokenizer.ggml.{k}"));
        }
    });
    assert_eq!(from_gguf(&bare).unwrap(), from_gguf(&fixture()).unwrap());

    let want = expected();
    let hello = &want["cases"].as_array().unwrap()[2];
    assert_eq!(hello["text"], "Hello, world!");
    let eos_only = fixture_with(|m| {
        m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
        m.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    });
    let mut with_eos = ids(&hello["ids"]);
    with_eos.push(2);
    assert_eq!(hf(&eos_only).encode("Hello, world!", true).unwrap(), with_eos);
}

#[test]
fn bad_sentencepiece_metadata_is_refused_by_key() {
    let err = |edit: &dyn Fn(&mut BTreeMap<String, Value>)| {
        let e = from_gguf(&fixture_with(edit)).unwrap_err().to_string();
        assert!(e.contains("edited.gguf"), "{e}");
        e
    };
    let n = fixture().get("tokenizer.ggml.tokens").and_then(Value::as_array).unwrap().len();
    let truncate = |key: &'static str| {
        move |m: &mut BTreeMap<String, Value>| {
            if let Some(Value::Array(a)) = m.get_mut(key) {
                a.pop();
            }
        }
    };
    let e = err(&|m| {
        m.remove("tokenizer.ggml.scores");
    });
    assert!(e.contains("metadata tokenizer.ggml.scores is missing"), "{e}");
    let e = err(&truncate("tokenizer.ggml.scores"));
    assert!(e.contains(&format!("tokenizer.ggml.scores has {} scores for {n} tokens", n - 1)), "{e}");
    let e = err(&|m| {
        m.insert("tokenizer.ggml.scores".into(), strings(&["high"]));
    });
    assert!(e.contains("tokenizer.ggml.scores is not an array of numbers"), "{e}");
    let e = err(&|m| {
        m.remove("tokenizer.ggml.tokens");
    });
    assert!(e.contains("metadata tokenizer.ggml.tokens is missing"), "{e}");
    let e = err(&truncate("tokenizer.ggml.token_type"));
    assert!(e.contains(&format!("tokenizer.ggml.token_type has {} types for {n} tokens", n - 1)), "{e}");
    let e = err(&|m| {
        m.insert("tokenizer.ggml.bos_token_id".into(), Value::U64(n as u64));
    });
    assert!(e.contains("tokenizer.ggml.bos_token_id") && e.contains("not a token id"), "{e}");
    let e = err(&|m| {
        m.insert("tokenizer.ggml.add_space_prefix".into(), Value::String("yes".into()));
    });
    assert!(e.contains("tokenizer.ggml.add_space_prefix") && e.contains("expected a bool"), "{e}");
    for model in ["t5", "bert", "rwkv"] {
        let e = err(&|m| {
            m.insert("tokenizer.ggml.model".into(), Value::String(model.into()));
        });
        assert!(e.contains(&format!("tokenizer.ggml.model {model:?} is not supported")), "{e}");
    }
    let e = err(&|m| {
        m.remove("tokenizer.ggml.model");
    });
    assert!(e.contains("tokenizer.ggml.model is missing"), "{e}");
}

#[test]
fn merges_rank_by_the_merged_pieces_score() {
    let tokens: Vec<String> =
        ["a", "b", "c", "ab", "bc", "abc", "x", "ax", "cx", "zz"].iter().map(|s| s.to_string()).collect();
    let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0, 0.0, -4.0, -4.0, -0.5];
    // Each piece's splits into two pieces ("zz" has none), best merged score first;
    // "ax" before "cx" (equal scores: by id); "abc"'s splits by their halves' scores.
    let want = [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c"), ("a", "x"), ("c", "x")];
    assert_eq!(spm::merges(&tokens, &scores), want);
    // -0.0 ties with 0.0, as in llama.cpp's comparison: id order decides.
    let scores = [0.0, 0.0, 0.0, -0.0, 0.0, -3.0, 0.0, -4.0, -4.0, -0.5];
    assert_eq!(spm::merges(&tokens, &scores)[..2], [("a", "b"), ("b", "c")]);
}

#[test]
fn byte_level_bpe_vocabulary_still_works() {
    let tokens = ["h", "e", "l", "o", "Ġ", "he", "ll", "llo", "hello", "Ġhello", "<|endoftext|>"];
    let meta = BTreeMap::from([
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
        ("tokenizer.ggml.merges".to_string(), strings(&["h e", "l l", "ll o", "he llo", "Ġ hello"])),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array([1; 10].into_iter().chain([3]).map(Value::I64).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U64(10)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U64(10)),
        ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(true)),
    ]);
    let f = file_of(&meta);
    let built = from_gguf(&f).unwrap();
    assert_eq!((built.bos.as_deref(), built.eos), (Some("<|endoftext|>"), Some((10, "<|endoftext|>".into()))));
    let tok = hf(&f);
    assert_eq!(tok.encode("hello hello", false).unwrap(), [8, 9]);
    assert_eq!(tok.encode("hello<|endoftext|>hello", true).unwrap(), [10, 8, 10, 8]);
    assert_eq!(tok.decode(&[10, 8, 9], true).unwrap(), "hello hello");
}
