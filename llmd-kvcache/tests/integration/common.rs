//! Helpers shared by the integration tests: extra keys and event values as the JSON
//! that the Python side (fixtures and interop script) writes.

use llmd_kvcache::{ExtraKey, KeyValue};
use serde_json::{Value, json};

/// A tagged extra key as vLLM's tuple, with bytes as `{"hex": ...}`.
pub(crate) fn tagged_json(k: &ExtraKey) -> Value {
    match k {
        ExtraKey::Lora { name, path } => json!(["lora", name, path]),
        ExtraKey::Mm { identifier, offset } => json!(["mm", identifier, offset]),
        ExtraKey::CacheSalt(s) => json!(["cache_salt", s]),
        ExtraKey::PromptEmbeds(d) => json!(["prompt_embeds", {"hex": hex::encode(d)}]),
    }
}

/// An untagged event value, with bytes as `{"hex": ...}`.
pub(crate) fn kv_json(v: &KeyValue) -> Value {
    match v {
        KeyValue::Nil => Value::Null,
        KeyValue::Bool(b) => json!(b),
        KeyValue::Int(i) => json!(i),
        KeyValue::UInt(u) => json!(u),
        KeyValue::Float(f) => json!(f),
        KeyValue::Str(s) => json!(s),
        KeyValue::Bytes(b) => json!({"hex": hex::encode(b)}),
        KeyValue::Array(a) => Value::Array(a.iter().map(kv_json).collect()),
    }
}
