//! The seam between the device block pool and slower tiers (host memory, local disk,
//! shared storage).
//!
//! The pool knows block ids and hashes, not block contents: the engine owns the memory.
//! When the pool is about to reuse a cached block it first calls [`Tier::offload`] with
//! the block id and hash while the block's data is still intact, so an implementation
//! can copy it down (and later announce it with a `BlockStored` event whose medium is
//! `CPU` or `STORAGE`). A tier's own capacity is managed by an [`EvictionPolicy`]
//! (LRU or ARC, as vLLM's offloader offers them).

pub mod index;
pub mod policy;

pub use index::{LoadOp, StoreOp, TierConfig, TierEvent, TierIndex};
pub use policy::{Arc as ArcPolicy, EvictionPolicy, Lru, PolicyKind};

use crate::hash::BlockHash;
use crate::pool::BlockId;

/// A place evicted blocks can go.
pub trait Tier {
    /// The medium this tier reports in events, e.g. `"CPU"`.
    fn medium(&self) -> &str;

    /// Called once for each cached block the pool is about to reuse, before it is
    /// handed out; `block`'s contents are still those that `hash` names.
    fn offload(&mut self, block: BlockId, hash: &BlockHash);

    /// Whether the tier holds `hash` (so a lookup that misses the device pool can
    /// still be served by loading the block back).
    fn contains(&self, hash: &BlockHash) -> bool;
}
