//! KV-cache building blocks shared by llmd's engine and scheduler, usable on their own.
//!
//! * **Block hashing identical to vLLM's prefix caching** ([`BlockHasher`]): chained
//!   `sha256_cbor` / `xxhash_cbor` hashes over full blocks, with vLLM's seed rules and
//!   extra keys (LoRA, multimodal items, cache salt, prompt embeddings). Checked against
//!   golden vectors produced by vLLM 0.33 itself.
//! * **A block pool** ([`BlockPool`]): fixed capacity, reference counts, cached blocks
//!   reusable after free, O(1) LRU eviction through a free list threaded through the
//!   block table, longest-cached-prefix lookup in O(prefix length); and
//!   [`KvCacheManager`], the per-request operations vLLM's scheduler uses.
//! * **KV events** ([`KvEvent`], [`KvEventBatch`]) and a msgpack [`codec`] byte-compatible
//!   with vLLM's `KVEventBatch`, so an index fed by vLLM engines and one fed by llmd
//!   engines are the same thing.
//! * The [`Tier`] seam that offloading to host memory and storage plugs into.
//!
//! No async runtime and no I/O: everything here is plain, deterministic code.
//!
//! ```
//! use llmd_kvcache::{BlockHasher, HashAlgo, KvCacheManager, RequestKeys, Sequence};
//!
//! # fn main() -> Result<(), llmd_kvcache::KvCacheError> {
//! // Hashes a vLLM engine with default settings would compute for these tokens.
//! let hasher = BlockHasher::default();
//! assert_eq!(hasher.algo(), HashAlgo::Sha256Cbor);
//! let prompt: Vec<u32> = (0..40).collect();
//! let hashes = hasher.hash_tokens(&prompt, 16)?;
//! assert_eq!(hashes.len(), 2); // the last 8 tokens do not fill a block
//!
//! // Serve the prompt twice: the second request finds the first one's blocks.
//! let mut kv = KvCacheManager::new(64, 16)?;
//! for id in ["a", "b"] {
//!     let seq = Sequence::new(id, prompt.clone(), RequestKeys::new(), 16, &hasher)?;
//!     let hit = kv.computed_blocks(&seq)?;
//!     let new_tokens = prompt.len() - hit.num_tokens();
//!     kv.allocate_slots(&seq, new_tokens, hit)?;
//!     kv.free(id)?;
//! }
//! assert_eq!(kv.prefix_stats().hits, 32); // tokens: 2 blocks of 16
//! # Ok(())
//! # }
//! ```

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod cbor;
pub mod clock;
pub mod codec;
mod error;
pub mod events;
mod extra_keys;
pub mod frames;
mod hash;
mod manager;
mod pool;
pub mod rng;
mod sha256;
pub mod tier;

pub use error::{KvCacheError, Result};
pub use events::{
    BlockRemoved, BlockStored, EventBatcher, EventSink, ExternalBlockHash, KvEvent, KvEventBatch, MEDIUM_CPU,
    MEDIUM_GPU, MEDIUM_STORAGE, NullSink,
};
pub use extra_keys::{
    ExtraKey, KeyValue, LoraKey, MmSpan, RequestKeys, prompt_embeds_block_digests, prompt_embeds_digest,
    to_event_extra_keys,
};
pub use hash::{BlockHash, BlockHasher, DEFAULT_NONE_HASH_SEED, HashAlgo};
pub use manager::{ComputedBlocks, KvCacheManager, PrefixCacheStats, Sequence};
pub use pool::{BlockId, BlockPool, HashIndex, PoolStats, PrehashedHasher, StoredInfo};
pub use tier::{EvictionPolicy, EvictionQueue, PolicyKind, Tier};
