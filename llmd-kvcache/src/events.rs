//! KV cache events: what an engine tells the world about the blocks it caches.
//!
//! The types mirror `vllm/distributed/kv_events.py` field for field, so a batch decoded
//! from a vLLM engine and re-encoded by [`crate::codec`] gives back the same bytes. The
//! block pool reports through an [`EventSink`]; [`EventBatcher`] groups events into
//! [`KvEventBatch`]es for publishing.

use crate::extra_keys::KeyValue;
use crate::hash::BlockHash;

/// vLLM's `MEDIUM_GPU`: blocks in accelerator memory.
pub const MEDIUM_GPU: &str = "GPU";
/// vLLM's `MEDIUM_CPU`: blocks offloaded to host memory.
pub const MEDIUM_CPU: &str = "CPU";
/// vLLM's `MEDIUM_STORAGE`: blocks offloaded to disk or shared storage.
pub const MEDIUM_STORAGE: &str = "STORAGE";

/// A block hash as events carry it: the raw bytes, or the 64-bit integer form vLLM
/// sends with `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` (older engines also sent signed
/// Python hashes; negative values are kept as their two's-complement `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExternalBlockHash {
    /// Hash bytes.
    Bytes(BlockHash),
    /// 64-bit integer hash.
    Int(u64),
}

impl ExternalBlockHash {
    /// The form `hash` takes in events: bytes, or with `int_hashes` its low 64 bits.
    pub fn from_hash(hash: &BlockHash, int_hashes: bool) -> Self {
        if int_hashes { ExternalBlockHash::Int(hash.to_u64()) } else { ExternalBlockHash::Bytes(*hash) }
    }
}

impl From<BlockHash> for ExternalBlockHash {
    fn from(h: BlockHash) -> Self {
        ExternalBlockHash::Bytes(h)
    }
}

/// Blocks that became cached (vLLM's `BlockStored`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockStored {
    /// The hashes of the stored blocks, in sequence order.
    pub block_hashes: Vec<ExternalBlockHash>,
    /// The hash of the block before the first one, `None` at the start of a sequence.
    pub parent_block_hash: Option<ExternalBlockHash>,
    /// The token ids of all stored blocks, concatenated.
    pub token_ids: Vec<u32>,
    /// Tokens per block.
    pub block_size: u32,
    /// vLLM's deprecated integer LoRA id.
    pub lora_id: Option<i64>,
    /// Where the blocks live: [`MEDIUM_GPU`], [`MEDIUM_CPU`], [`MEDIUM_STORAGE`] or other.
    pub medium: Option<String>,
    /// The LoRA adapter name, the key hashes use.
    pub lora_name: Option<String>,
    /// Per-block untagged extra keys (see [`crate::to_event_extra_keys`]).
    pub extra_keys: Option<Vec<Option<Vec<KeyValue>>>>,
    /// KV cache group index (hybrid models have several).
    pub group_idx: Option<i64>,
    /// Kind of the group's cache spec, e.g. `full_attention`.
    pub kv_cache_spec_kind: Option<String>,
    /// Sliding window of the group's cache spec, if any.
    pub kv_cache_spec_sliding_window: Option<i64>,
    /// `LOCAL` or `REMOTE` relative to the publisher.
    pub locality: Option<String>,
    /// Secondary offloading tier that produced the event.
    pub ownership: Option<String>,
    /// Session whose request triggered the store.
    pub session_id: Option<String>,
    /// Tokens past each block that its hash covers (lookahead hashing), per block.
    pub lookahead_token_ids: Option<Vec<Vec<u32>>>,
}

/// Blocks that stopped being cached (vLLM's `BlockRemoved`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockRemoved {
    /// The removed hashes.
    pub block_hashes: Vec<ExternalBlockHash>,
    /// Where they were.
    pub medium: Option<String>,
    /// KV cache group index.
    pub group_idx: Option<i64>,
    /// `LOCAL` or `REMOTE` relative to the publisher.
    pub locality: Option<String>,
    /// Secondary offloading tier that produced the event.
    pub ownership: Option<String>,
}

/// One KV cache event.
// Most events are `BlockStored`; boxing it would add an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum KvEvent {
    /// Blocks cached.
    BlockStored(BlockStored),
    /// Blocks evicted or dropped.
    BlockRemoved(BlockRemoved),
    /// The whole prefix cache was reset, or (`medium` set) one tier of it. vLLM's
    /// event names no tier; newer engines' may name one (a trailing `medium` field,
    /// which older decoders ignore).
    AllBlocksCleared {
        /// The tier cleared (`None`: every tier).
        medium: Option<String>,
    },
    /// An event type this version does not know (a newer engine's); kept so one unknown
    /// event does not cost the rest of its batch. It cannot be re-encoded.
    Unknown {
        /// The event's type tag.
        tag: String,
    },
}

/// Events published together (vLLM's `KVEventBatch`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KvEventBatch {
    /// Unix time in seconds when the batch was made.
    pub ts: f64,
    /// The events, in order.
    pub events: Vec<KvEvent>,
    /// Data-parallel rank of the engine that made them.
    pub data_parallel_rank: Option<i64>,
}

/// Where the block pool reports events.
pub trait EventSink {
    /// Takes one event.
    fn emit(&mut self, event: KvEvent);

    /// Whether events are wanted at all; when `false` the pool does not build them.
    fn enabled(&self) -> bool {
        true
    }
}

/// A sink that drops everything and tells the pool not to build events.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&mut self, _event: KvEvent) {}

    fn enabled(&self) -> bool {
        false
    }
}

impl EventSink for Vec<KvEvent> {
    fn emit(&mut self, event: KvEvent) {
        self.push(event);
    }
}

impl<S: EventSink + ?Sized> EventSink for &mut S {
    fn emit(&mut self, event: KvEvent) {
        (**self).emit(event);
    }

    fn enabled(&self) -> bool {
        (**self).enabled()
    }
}

/// Collects events and cuts them into batches, like vLLM's engine does once per step.
/// The caller supplies the timestamp, so no clock is read here.
#[derive(Debug, Clone, Default)]
pub struct EventBatcher {
    pending: Vec<KvEvent>,
    data_parallel_rank: Option<i64>,
}

impl EventBatcher {
    /// A batcher stamping batches with `data_parallel_rank`.
    pub fn new(data_parallel_rank: Option<i64>) -> Self {
        EventBatcher { pending: Vec::new(), data_parallel_rank }
    }

    /// Events waiting for the next batch.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues a `BlockStored` ahead of the first pending `BlockRemoved` of any of its
    /// blocks (else last). An offloader copying blocks down as the device evicts them
    /// announces them where vLLM's does, before the device's removal: a consumer that
    /// maps blocks through the device's events (llm-d's precise index) still knows them.
    pub fn emit_ahead_of_removals(&mut self, event: KvEvent) {
        let at = match &event {
            KvEvent::BlockStored(s) => self.pending.iter().position(
                |e| matches!(e, KvEvent::BlockRemoved(r) if r.block_hashes.iter().any(|h| s.block_hashes.contains(h))),
            ),
            _ => None,
        };
        match at {
            Some(i) => self.pending.insert(i, event),
            None => self.pending.push(event),
        }
    }

    /// Takes the pending events as one batch stamped `ts`, or `None` if there are none.
    pub fn flush(&mut self, ts: f64) -> Option<KvEventBatch> {
        if self.pending.is_empty() {
            return None;
        }
        Some(KvEventBatch {
            ts,
            events: std::mem::take(&mut self.pending),
            data_parallel_rank: self.data_parallel_rank,
        })
    }
}

impl EventSink for EventBatcher {
    fn emit(&mut self, event: KvEvent) {
        self.pending.push(event);
    }
}
