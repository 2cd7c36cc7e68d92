//! The seam between the device block pool and slower tiers (host memory, local disk,
//! shared storage).
//!
//! The pool knows block ids and hashes, not block contents: the engine owns the memory.
//! When the pool is about to reuse a cached block it first calls [`Tier::offload`] with
//! the block id and hash while the block's data is still intact. The usual
//! implementation is an [`EvictionQueue`]: the pool only records, and the memory owner
//! drains the queue before it writes into the reallocated blocks, planning the copies
//! with a [`TierIndex`] (so the allocator never waits on a copy). A tier's own capacity
//! is managed by an [`EvictionPolicy`] (LRU or ARC, as vLLM's offloader offers them).

pub mod index;
pub mod policy;

use std::sync::{Arc as Shared, Mutex, PoisonError};

pub use index::{LoadOp, StoreOp, TierConfig, TierEvent, TierIndex};
pub use policy::{Arc as ArcPolicy, EvictionPolicy, Lru, PolicyKind};

use crate::hash::BlockHash;
use crate::pool::BlockId;

/// A place evicted blocks can go.
pub trait Tier {
    /// Called once for each cached block the pool is about to reuse, before it is
    /// handed out; `block`'s contents are still those that `hash` names, until the
    /// caller of the allocation writes into it.
    fn offload(&mut self, block: BlockId, hash: &BlockHash);
}

/// A [`Tier`] that records evicted blocks for their memory's owner to copy down: give a
/// clone to the pool ([`BlockPool::set_tier`](crate::BlockPool::set_tier)) and
/// [`take`](Self::take) after each allocation, before writing into the new blocks.
#[derive(Debug, Clone, Default)]
pub struct EvictionQueue {
    evicted: Shared<Mutex<Vec<(BlockId, BlockHash)>>>,
}

impl EvictionQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// The blocks evicted since the last call, in eviction order.
    pub fn take(&self) -> Vec<(BlockId, BlockHash)> {
        std::mem::take(&mut *self.evicted.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Tier for EvictionQueue {
    fn offload(&mut self, block: BlockId, hash: &BlockHash) {
        self.evicted.lock().unwrap_or_else(PoisonError::into_inner).push((block, *hash));
    }
}
