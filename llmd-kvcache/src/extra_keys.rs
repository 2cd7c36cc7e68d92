//! Extra keys: what besides token ids goes into a block's hash.
//!
//! vLLM mixes a request's LoRA adapter, the multimodal items overlapping the block, the
//! cache salt (first block only) and prompt-embedding digests into block hashes, so two
//! requests share cached blocks only when all of these agree. The rules here follow
//! `generate_block_hash_extra_keys` in `vllm/v1/core/kv_cache_utils.py`: keys are tagged
//! tuples, in the order LoRA, multimodal, cache salt, prompt embeddings. KV events carry
//! them untagged (`to_event_extra_keys`); [`ExtraKey::to_event_value`] gives that form.

use sha2::{Digest, Sha256};

use crate::cbor;
use crate::error::{KvCacheError, Result};

/// One tagged extra key, as it enters a block hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExtraKey {
    /// `("lora", name, path)`: the request's LoRA adapter.
    Lora {
        /// Adapter name.
        name: String,
        /// Adapter path, so re-pointing a name at new weights invalidates old blocks.
        path: String,
    },
    /// `("mm", identifier, offset)`: a multimodal item overlapping the block, with its
    /// start relative to the block's first token (negative when it began earlier).
    Mm {
        /// The item's content hash (vLLM's `MultiModalFeatureSpec.identifier`).
        identifier: String,
        /// Item offset minus block start.
        offset: i64,
    },
    /// `("cache_salt", salt)`: isolates tenants; only on a request's first block.
    CacheSalt(String),
    /// `("prompt_embeds", sha256)`: digest of the block's slice of prompt embeddings.
    PromptEmbeds([u8; 32]),
}

impl ExtraKey {
    /// Writes the tagged tuple as canonical CBOR.
    pub(crate) fn encode_cbor(&self, out: &mut Vec<u8>) {
        match self {
            ExtraKey::Lora { name, path } => {
                cbor::array(out, 3);
                cbor::text(out, "lora");
                cbor::text(out, name);
                cbor::text(out, path);
            }
            ExtraKey::Mm { identifier, offset } => {
                cbor::array(out, 3);
                cbor::text(out, "mm");
                cbor::text(out, identifier);
                cbor::int(out, *offset);
            }
            ExtraKey::CacheSalt(salt) => {
                cbor::array(out, 2);
                cbor::text(out, "cache_salt");
                cbor::text(out, salt);
            }
            ExtraKey::PromptEmbeds(digest) => {
                cbor::array(out, 2);
                cbor::text(out, "prompt_embeds");
                cbor::bytes(out, digest);
            }
        }
    }

    /// The untagged form KV events publish: the LoRA name, `(identifier, offset)`, the
    /// salt string, or the digest bytes.
    pub fn to_event_value(&self) -> KeyValue {
        match self {
            ExtraKey::Lora { name, .. } => KeyValue::Str(name.clone()),
            ExtraKey::Mm { identifier, offset } => {
                KeyValue::Array(vec![KeyValue::Str(identifier.clone()), KeyValue::Int(*offset)])
            }
            ExtraKey::CacheSalt(s) => KeyValue::Str(s.clone()),
            ExtraKey::PromptEmbeds(d) => KeyValue::Bytes(d.to_vec()),
        }
    }
}

/// Converts per-block tagged keys to the per-block untagged lists of a `BlockStored`
/// event, as vLLM's `to_event_extra_keys`: `None` only for no blocks at all; blocks
/// without keys are `None` entries.
pub fn to_event_extra_keys(per_block: &[Option<Vec<ExtraKey>>]) -> Option<Vec<Option<Vec<KeyValue>>>> {
    if per_block.is_empty() {
        return None;
    }
    Some(
        per_block
            .iter()
            .map(|keys| keys.as_ref().map(|ks| ks.iter().map(ExtraKey::to_event_value).collect()))
            .collect(),
    )
}

/// A loosely typed value inside an event's `extra_keys` (msgpack has no tuples, so
/// tuples arrive as arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    /// `nil`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// A byte string.
    Bytes(Vec<u8>),
    /// An array (a Python tuple or list).
    Array(Vec<KeyValue>),
}

/// The position of one multimodal item in a prompt's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MmSpan {
    /// The item's content hash (vLLM: `MultiModalFeatureSpec.identifier`).
    pub identifier: String,
    /// Index of the item's first placeholder token.
    pub offset: usize,
    /// Number of placeholder tokens.
    pub length: usize,
}

/// A LoRA adapter as it enters block hashes and events.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoraKey {
    /// Adapter name (`lora_name`).
    pub name: String,
    /// Adapter path (`lora_path`).
    pub path: String,
    /// vLLM's integer adapter id (`lora_int_id`), published as the deprecated `lora_id`.
    pub id: Option<i64>,
}

/// Everything about a request, besides its tokens, that its block hashes depend on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestKeys {
    lora: Option<LoraKey>,
    mm: Vec<MmSpan>,
    cache_salt: Option<String>,
    prompt_embeds: Vec<[u8; 32]>,
}

impl RequestKeys {
    /// No extra keys: plain token prompts.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the request's LoRA adapter.
    pub fn with_lora(mut self, lora: LoraKey) -> Self {
        self.lora = Some(lora);
        self
    }

    /// Sets the multimodal items; they must be sorted by offset and not overlap, as
    /// vLLM's processor guarantees.
    pub fn with_mm(mut self, spans: Vec<MmSpan>) -> Result<Self> {
        if let Some(m) = spans.iter().find(|m| m.offset.checked_add(m.length).is_none()) {
            return Err(KvCacheError::BadMultimodalSpans(format!("{:?} ends past usize::MAX", m.identifier)));
        }
        for w in spans.windows(2) {
            if w[0].offset + w[0].length > w[1].offset {
                return Err(KvCacheError::BadMultimodalSpans(format!(
                    "{:?} at {}+{} runs into {:?} at {}",
                    w[0].identifier, w[0].offset, w[0].length, w[1].identifier, w[1].offset
                )));
            }
        }
        self.mm = spans;
        Ok(self)
    }

    /// Sets the cache salt (an empty salt means none, as in vLLM).
    pub fn with_cache_salt(mut self, salt: impl Into<String>) -> Self {
        let salt = salt.into();
        self.cache_salt = (!salt.is_empty()).then_some(salt);
        self
    }

    /// Marks the request as prompted with embeddings, given the digest of each block's
    /// slice of them, the last (partial) block included — see
    /// [`prompt_embeds_block_digests`]. Blocks past the prompt (generated tokens) get the
    /// digest of an empty slice, as in vLLM.
    pub fn with_prompt_embeds(mut self, per_block_digests: Vec<[u8; 32]>) -> Self {
        self.prompt_embeds = per_block_digests;
        self
    }

    /// The LoRA adapter, if any.
    pub fn lora(&self) -> Option<&LoraKey> {
        self.lora.as_ref()
    }

    /// Whether no key applies: every block hashes with `None` extra keys.
    pub fn is_empty(&self) -> bool {
        self.lora.is_none() && self.mm.is_empty() && self.cache_salt.is_none() && self.prompt_embeds.is_empty()
    }

    /// Index of the first multimodal item that may overlap a block starting at
    /// `start` (vLLM scans forward from here).
    pub(crate) fn first_mm_index_at(&self, start: usize) -> usize {
        self.mm.partition_point(|m| m.offset + m.length <= start)
    }

    /// The extra keys of the block `[start, end)` (block number `block_index`), advancing
    /// the multimodal cursor `mm_idx` exactly as `generate_block_hash_extra_keys` does.
    pub(crate) fn block_keys(
        &self,
        block_index: usize,
        start: usize,
        end: usize,
        mm_idx: &mut usize,
    ) -> Option<Vec<ExtraKey>> {
        if self.is_empty() {
            return None;
        }
        let mut keys = Vec::new();
        if let Some(l) = &self.lora {
            keys.push(ExtraKey::Lora { name: l.name.clone(), path: l.path.clone() });
        }
        self.mm_keys(start, end, mm_idx, &mut keys);
        if start == 0
            && let Some(s) = &self.cache_salt
        {
            keys.push(ExtraKey::CacheSalt(s.clone()));
        }
        if !self.prompt_embeds.is_empty() {
            let d = self.prompt_embeds.get(block_index).copied().unwrap_or(EMPTY_SHA256);
            keys.push(ExtraKey::PromptEmbeds(d));
        }
        (!keys.is_empty()).then_some(keys)
    }

    fn mm_keys(&self, start: usize, end: usize, mm_idx: &mut usize, out: &mut Vec<ExtraKey>) {
        match self.mm.last() {
            None => return,
            Some(last) if last.offset + last.length <= start => return,
            Some(_) => {}
        }
        while let Some(item) = self.mm.get(*mm_idx) {
            if end <= item.offset {
                // The block ends before this item starts.
                break;
            }
            if start >= item.offset + item.length {
                // The block is past this item.
                *mm_idx += 1;
                continue;
            }
            out.push(ExtraKey::Mm { identifier: item.identifier.clone(), offset: item.offset as i64 - start as i64 });
            if end >= item.offset + item.length {
                // The item ends in this block; the next item may start in it too.
                *mm_idx += 1;
            } else {
                break;
            }
        }
    }
}

/// SHA-256 of no bytes: the prompt-embeds key of blocks past the prompt.
const EMPTY_SHA256: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// vLLM's digest of one block's prompt embeddings: SHA-256 of the tensor slice's raw
/// bytes in row-major order and its own dtype (`tensor_data(embeds[start:end])`).
pub fn prompt_embeds_digest(raw_bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(raw_bytes));
    out
}

/// Per-block digests of a prompt's embeddings (`raw_bytes`: all rows, `row_bytes` each),
/// the last partial block included, for [`RequestKeys::with_prompt_embeds`].
pub fn prompt_embeds_block_digests(raw_bytes: &[u8], row_bytes: usize, block_size: usize) -> Vec<[u8; 32]> {
    let chunk = row_bytes.saturating_mul(block_size).max(1);
    raw_bytes.chunks(chunk).map(prompt_embeds_digest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, offset: usize, length: usize) -> MmSpan {
        MmSpan { identifier: id.into(), offset, length }
    }

    #[test]
    fn overlapping_spans_are_rejected_with_names() {
        let err = RequestKeys::new().with_mm(vec![span("a", 0, 10), span("b", 5, 2)]).unwrap_err().to_string();
        assert!(err.contains("\"a\"") && err.contains("\"b\""), "{err}");
    }

    #[test]
    fn salt_only_on_first_block_and_empty_salt_is_none() {
        let k = RequestKeys::new().with_cache_salt("t");
        let mut i = 0;
        assert_eq!(k.block_keys(0, 0, 4, &mut i), Some(vec![ExtraKey::CacheSalt("t".into())]));
        assert_eq!(k.block_keys(1, 4, 8, &mut i), None);
        assert!(RequestKeys::new().with_cache_salt("").is_empty());
    }

    #[test]
    fn empty_digest_constant_is_sha256_of_nothing() {
        assert_eq!(prompt_embeds_digest(&[]), EMPTY_SHA256);
    }

    #[test]
    fn event_form_is_untagged() {
        let keys = vec![
            Some(vec![
                ExtraKey::Lora { name: "n".into(), path: "p".into() },
                ExtraKey::Mm { identifier: "i".into(), offset: -3 },
            ]),
            None,
        ];
        let ev = to_event_extra_keys(&keys).unwrap();
        assert_eq!(
            ev[0],
            Some(vec![KeyValue::Str("n".into()), KeyValue::Array(vec![KeyValue::Str("i".into()), KeyValue::Int(-3)])])
        );
        assert_eq!(ev[1], None);
        assert_eq!(to_event_extra_keys(&[None, None]), Some(vec![None, None]));
        assert_eq!(to_event_extra_keys(&[]), None);
    }
}
