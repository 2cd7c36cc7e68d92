//! A fixed-capacity pool of KV blocks with reference counts and prefix caching.
//!
//! Blocks are indices (`BlockId`), never pointers. A block is either *in use*
//! (reference count > 0) or *free*; free blocks sit in one doubly linked list threaded
//! through the block table, so taking, returning and reviving a block is O(1). A full
//! block may carry a [`BlockHash`]; it then stays findable after it is freed, until it
//! is reused. Eviction order is least recently freed first; blocks freed without a hash
//! hold nothing worth keeping and go to the front, so they are reused before any cached
//! block is evicted.
//!
//! Events (`BlockStored`, `BlockRemoved`, `AllBlocksCleared`) go to the pool's
//! [`EventSink`]; a cached block being evicted is first offered to the [`Tier`] below.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{KvCacheError, Result};
use crate::events::{BlockRemoved, BlockStored, EventSink, ExternalBlockHash, KvEvent, MEDIUM_GPU, NullSink};
use crate::extra_keys::KeyValue;
use crate::hash::BlockHash;
use crate::tier::Tier;

/// Index of a block in its pool.
pub type BlockId = u32;

const NIL: u32 = u32::MAX;

/// Block hashes are already uniformly random: use eight of their bytes as the map hash
/// instead of running SipHash over all of them on every lookup.
#[derive(Debug, Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut w = [0u8; 8];
        let n = bytes.len().min(8);
        w[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(w);
    }
}

/// A map keyed by block hash, hashed by [`PrehashedHasher`] (the pool's own index).
pub type HashIndex<V> = HashMap<BlockHash, V, BuildHasherDefault<PrehashedHasher>>;

#[derive(Debug, Clone)]
struct Block {
    ref_cnt: u32,
    hash: Option<BlockHash>,
    // Free-list links; meaningful only while ref_cnt == 0.
    prev: u32,
    next: u32,
}

/// Counters kept by a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Blocks looked up by prefix queries.
    pub queries: u64,
    /// Of those, blocks found cached.
    pub hits: u64,
    /// Blocks handed out by `allocate`.
    pub allocations: u64,
    /// Cached blocks whose hash was dropped to reuse them.
    pub evictions: u64,
}

impl PoolStats {
    /// Hits over queries, 0 when nothing was queried.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 { 0.0 } else { self.hits as f64 / self.queries as f64 }
    }
}

/// How a run of newly full blocks entered the cache, for the `BlockStored` event.
#[derive(Debug, Clone, Default)]
pub struct StoredInfo<'a> {
    /// Hash of the block before the run, `None` at the start of a sequence.
    pub parent: Option<BlockHash>,
    /// The run's token ids, `block_size` per block.
    pub token_ids: &'a [u32],
    /// The request's LoRA adapter name.
    pub lora_name: Option<&'a str>,
    /// The request's integer LoRA id.
    pub lora_id: Option<i64>,
    /// Per-block untagged extra keys.
    pub extra_keys: Option<Vec<Option<Vec<KeyValue>>>>,
}

/// The block pool. `S` receives KV events; the default [`NullSink`] builds none.
pub struct BlockPool<S: EventSink = NullSink> {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    // The block lookups return for each cached hash.
    cached: HashIndex<BlockId>,
    // Further blocks holding a hash already in `cached` (two requests computed the same
    // block at once). Kept so the hash survives its first copy's eviction.
    dups: HashIndex<Vec<BlockId>>,
    block_size: u32,
    medium: String,
    int_hashes: bool,
    stats: PoolStats,
    sink: S,
    tier: Option<Box<dyn Tier + Send>>,
}

impl<S: EventSink> std::fmt::Debug for BlockPool<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool")
            .field("capacity", &self.blocks.len())
            .field("free", &self.num_free)
            .field("cached", &self.cached.len())
            .field("block_size", &self.block_size)
            .field("stats", &self.stats)
            .finish()
    }
}

impl BlockPool<NullSink> {
    /// A pool of `capacity` blocks of `block_size` tokens, with no events.
    pub fn new(capacity: usize, block_size: usize) -> Result<Self> {
        Self::with_sink(capacity, block_size, NullSink)
    }
}

impl<S: EventSink> BlockPool<S> {
    /// A pool reporting events to `sink`.
    pub fn with_sink(capacity: usize, block_size: usize, sink: S) -> Result<Self> {
        let max = (NIL - 1) as usize;
        if capacity == 0 || capacity > max {
            return Err(KvCacheError::BadCapacity { got: capacity, max });
        }
        if block_size == 0 {
            return Err(KvCacheError::ZeroBlockSize);
        }
        let block_size = u32::try_from(block_size).map_err(|_| KvCacheError::BlockSizeTooLarge(block_size))?;
        let mut pool = BlockPool {
            blocks: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashIndex::default(),
            dups: HashIndex::default(),
            block_size,
            medium: MEDIUM_GPU.to_string(),
            int_hashes: false,
            stats: PoolStats::default(),
            sink,
            tier: None,
        };
        pool.rebuild_free_list(capacity);
        Ok(pool)
    }

    fn rebuild_free_list(&mut self, capacity: usize) {
        self.blocks.clear();
        self.blocks.extend((0..capacity as u32).map(|i| Block {
            ref_cnt: 0,
            hash: None,
            prev: if i == 0 { NIL } else { i - 1 },
            next: if i as usize + 1 == capacity { NIL } else { i + 1 },
        }));
        self.head = 0;
        self.tail = capacity as u32 - 1;
        self.num_free = capacity;
    }

    /// Sets the medium named in events (default `"GPU"`).
    pub fn with_medium(mut self, medium: impl Into<String>) -> Self {
        self.medium = medium.into();
        self
    }

    /// Publishes hashes in events as 64-bit integers, like vLLM with
    /// `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1`.
    pub fn with_int_event_hashes(mut self, on: bool) -> Self {
        self.int_hashes = on;
        self
    }

    /// Sets the tier that cached blocks are offered to before eviction.
    pub fn set_tier(&mut self, tier: Box<dyn Tier + Send>) {
        self.tier = Some(tier);
    }

    /// Total blocks.
    pub fn capacity(&self) -> usize {
        self.blocks.len()
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size as usize
    }

    /// Free blocks (including cached blocks nobody holds).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Distinct hashes currently cached.
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    /// Fraction of blocks in use, as vLLM's `kv_cache_usage_perc` reports it (0..=1).
    pub fn usage(&self) -> f64 {
        1.0 - self.num_free as f64 / self.blocks.len() as f64
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        self.stats
    }

    /// The event sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The event sink, mutably (to drain buffered events).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// A block's reference count.
    pub fn ref_count(&self, id: BlockId) -> Result<u32> {
        self.block(id).map(|b| b.ref_cnt)
    }

    /// A block's hash, if it is cached.
    pub fn block_hash(&self, id: BlockId) -> Result<Option<BlockHash>> {
        self.block(id).map(|b| b.hash)
    }

    /// The block caching `hash`, if any.
    pub fn lookup(&self, hash: &BlockHash) -> Option<BlockId> {
        self.cached.get(hash).copied()
    }

    fn block(&self, id: BlockId) -> Result<&Block> {
        self.blocks.get(id as usize).ok_or(KvCacheError::NoSuchBlock(id))
    }

    /// The blocks caching the longest prefix of `hashes`, without counting it as a
    /// query or changing any state.
    pub fn peek_cached_prefix(&self, hashes: &[BlockHash]) -> Vec<BlockId> {
        hashes.iter().map_while(|h| self.cached.get(h).copied()).collect()
    }

    /// The blocks caching the longest prefix of `hashes`; counted in the hit statistics.
    /// O(prefix length). The blocks are not held: pass them to [`touch`](Self::touch).
    pub fn find_cached_prefix(&mut self, hashes: &[BlockHash]) -> Vec<BlockId> {
        let found = self.peek_cached_prefix(hashes);
        self.stats.queries += hashes.len() as u64;
        self.stats.hits += found.len() as u64;
        found
    }

    /// Takes a reference on each block, reviving free cached blocks.
    pub fn touch(&mut self, ids: &[BlockId]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.blocks.len()) {
            return Err(KvCacheError::NoSuchBlock(bad));
        }
        for &id in ids {
            if self.blocks[id as usize].ref_cnt == 0 {
                self.unlink(id);
            }
            self.blocks[id as usize].ref_cnt += 1;
        }
        Ok(())
    }

    /// Hands out `n` blocks with reference count 1, evicting the least recently freed
    /// cached blocks if needed. All or nothing: on error the pool is unchanged.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>> {
        if n > self.num_free {
            return Err(KvCacheError::OutOfBlocks { requested: n, free: self.num_free });
        }
        let mut out = Vec::with_capacity(n);
        let mut evicted = Vec::new();
        for _ in 0..n {
            let id = self.head;
            self.unlink(id);
            let b = &mut self.blocks[id as usize];
            b.ref_cnt = 1;
            if let Some(h) = b.hash.take() {
                self.stats.evictions += 1;
                if let Some(t) = self.tier.as_mut() {
                    t.offload(id, &h);
                }
                // Only the last copy of a hash leaving makes it "removed".
                if self.uncache(id, &h) && self.sink.enabled() {
                    evicted.push(ExternalBlockHash::from_hash(&h, self.int_hashes));
                }
            }
            out.push(id);
        }
        self.stats.allocations += n as u64;
        if !evicted.is_empty() {
            self.sink.emit(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: evicted,
                medium: Some(self.medium.clone()),
                ..Default::default()
            }));
        }
        Ok(out)
    }

    /// Drops `id`'s claim on `h`; returns whether no block holds `h` any more.
    fn uncache(&mut self, id: BlockId, h: &BlockHash) -> bool {
        if self.cached.get(h) == Some(&id) {
            match self.dups.get_mut(h).and_then(Vec::pop) {
                Some(next) => {
                    self.cached.insert(*h, next);
                    if self.dups.get(h).is_some_and(Vec::is_empty) {
                        self.dups.remove(h);
                    }
                    false
                }
                None => {
                    self.cached.remove(h);
                    true
                }
            }
        } else {
            if let Some(copies) = self.dups.get_mut(h) {
                copies.retain(|&b| b != id);
                if copies.is_empty() {
                    self.dups.remove(h);
                }
            }
            false
        }
    }

    /// Marks held, full blocks as caching `hashes` (pairwise) and emits one
    /// `BlockStored` for them. A hash another block already caches is recorded as a
    /// second copy: lookups keep finding the first, and the hash stays cached until the
    /// last copy is evicted.
    pub fn cache_blocks(&mut self, ids: &[BlockId], hashes: &[BlockHash], info: StoredInfo<'_>) -> Result<()> {
        if ids.len() != hashes.len() {
            return Err(KvCacheError::LengthMismatch {
                what: "hashes for blocks to cache",
                expected: ids.len(),
                got: hashes.len(),
            });
        }
        for (&id, h) in ids.iter().zip(hashes) {
            let b = self.block(id)?;
            if b.ref_cnt == 0 {
                return Err(KvCacheError::CachingFreeBlock(id));
            }
            if b.hash.is_some_and(|old| old != *h) {
                return Err(KvCacheError::AlreadyCached(id));
            }
        }
        for (&id, h) in ids.iter().zip(hashes) {
            if self.blocks[id as usize].hash.is_none() {
                self.blocks[id as usize].hash = Some(*h);
                match self.cached.entry(*h) {
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(id);
                    }
                    std::collections::hash_map::Entry::Occupied(_) => self.dups.entry(*h).or_default().push(id),
                }
            }
        }
        if self.sink.enabled() && !ids.is_empty() {
            let ih = self.int_hashes;
            self.sink.emit(KvEvent::BlockStored(BlockStored {
                block_hashes: hashes.iter().map(|h| ExternalBlockHash::from_hash(h, ih)).collect(),
                parent_block_hash: info.parent.map(|p| ExternalBlockHash::from_hash(&p, ih)),
                token_ids: info.token_ids.to_vec(),
                block_size: self.block_size,
                lora_id: info.lora_id,
                medium: Some(self.medium.clone()),
                lora_name: info.lora_name.map(str::to_string),
                extra_keys: info.extra_keys,
                ..Default::default()
            }));
        }
        Ok(())
    }

    /// Forgets the hashes of these blocks (their contents turned out not to be what the
    /// hash names, e.g. the computation that was to fill them failed). The blocks stay
    /// allocated; a hash no other block holds is announced as removed.
    pub fn uncache_blocks(&mut self, ids: &[BlockId]) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.blocks.len()) {
            return Err(KvCacheError::NoSuchBlock(bad));
        }
        let mut removed = Vec::new();
        for &id in ids {
            if let Some(h) = self.blocks[id as usize].hash.take()
                && self.uncache(id, &h)
                && self.sink.enabled()
            {
                removed.push(ExternalBlockHash::from_hash(&h, self.int_hashes));
            }
        }
        if !removed.is_empty() {
            self.sink.emit(KvEvent::BlockRemoved(BlockRemoved {
                block_hashes: removed,
                medium: Some(self.medium.clone()),
                ..Default::default()
            }));
        }
        Ok(())
    }

    /// Drops one reference from each block. Blocks reaching zero become free: cached
    /// ones at the back of the eviction order (in the order given, so pass a sequence's
    /// blocks tail first to evict its tail first), uncached ones at the front.
    /// All or nothing: a double free or unknown id leaves the pool unchanged.
    pub fn free(&mut self, ids: &[BlockId]) -> Result<()> {
        for (i, &id) in ids.iter().enumerate() {
            let failure = match self.blocks.get_mut(id as usize) {
                None => Some(KvCacheError::NoSuchBlock(id)),
                Some(b) if b.ref_cnt == 0 => Some(KvCacheError::DoubleFree(id)),
                Some(b) => {
                    b.ref_cnt -= 1;
                    None
                }
            };
            if let Some(e) = failure {
                for &done in &ids[..i] {
                    self.blocks[done as usize].ref_cnt += 1;
                }
                return Err(e);
            }
        }
        for &id in ids {
            let b = &self.blocks[id as usize];
            // A block listed twice reaches zero once; link it only if not yet linked.
            if b.ref_cnt == 0 && !self.is_linked(id) {
                if b.hash.is_some() {
                    self.push_back(id);
                } else {
                    self.push_front(id);
                }
            }
        }
        Ok(())
    }

    /// Drops every cached hash, as vLLM's `reset_prefix_cache`. Only possible when no
    /// block is in use; returns whether it happened.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.num_free != self.blocks.len() {
            return false;
        }
        self.rebuild_free_list(self.blocks.len());
        self.cached.clear();
        self.dups.clear();
        self.sink.emit(KvEvent::AllBlocksCleared { medium: None });
        true
    }

    fn is_linked(&self, id: BlockId) -> bool {
        let b = &self.blocks[id as usize];
        b.prev != NIL || b.next != NIL || self.head == id
    }

    fn unlink(&mut self, id: BlockId) {
        let (prev, next) = {
            let b = &self.blocks[id as usize];
            (b.prev, b.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.blocks[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.blocks[n as usize].prev = prev,
        }
        let b = &mut self.blocks[id as usize];
        b.prev = NIL;
        b.next = NIL;
        self.num_free -= 1;
    }

    fn push_back(&mut self, id: BlockId) {
        let old_tail = self.tail;
        {
            let b = &mut self.blocks[id as usize];
            b.prev = old_tail;
            b.next = NIL;
        }
        match old_tail {
            NIL => self.head = id,
            t => self.blocks[t as usize].next = id,
        }
        self.tail = id;
        self.num_free += 1;
    }

    fn push_front(&mut self, id: BlockId) {
        let old_head = self.head;
        {
            let b = &mut self.blocks[id as usize];
            b.prev = NIL;
            b.next = old_head;
        }
        match old_head {
            NIL => self.tail = id,
            h => self.blocks[h as usize].prev = id,
        }
        self.head = id;
        self.num_free += 1;
    }

    /// The free list from next-to-evict to last, for tests and debugging. O(capacity).
    pub fn free_list(&self) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(self.num_free);
        let mut cur = self.head;
        while cur != NIL && out.len() <= self.blocks.len() {
            out.push(cur);
            cur = self.blocks[cur as usize].next;
        }
        out
    }

    /// Checks every internal invariant; returns the first violation found. O(capacity).
    /// Used by the property tests; cheap enough for debug assertions in callers.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let list = self.free_list();
        if list.len() != self.num_free {
            return Err(format!("free list has {} blocks, counter says {}", list.len(), self.num_free));
        }
        let mut on_list = vec![false; self.blocks.len()];
        let mut prev = NIL;
        for &id in &list {
            if on_list[id as usize] {
                return Err(format!("block {id} twice on the free list"));
            }
            on_list[id as usize] = true;
            if self.blocks[id as usize].prev != prev {
                return Err(format!("block {id} has a broken back link"));
            }
            prev = id;
        }
        if self.tail != prev {
            return Err("tail does not end the free list".into());
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if (b.ref_cnt == 0) != on_list[i] {
                return Err(format!("block {i} has ref_cnt {} but free-list membership {}", b.ref_cnt, on_list[i]));
            }
            if let Some(h) = b.hash {
                let id = i as u32;
                let primary = self.cached.get(&h) == Some(&id);
                let copy = self.dups.get(&h).is_some_and(|c| c.contains(&id));
                if primary == copy {
                    return Err(format!(
                        "block {i} carries hash {h} but is indexed {} times",
                        u8::from(primary) + u8::from(copy)
                    ));
                }
            }
        }
        for (h, copies) in &self.dups {
            if copies.is_empty() || !self.cached.contains_key(h) {
                return Err(format!("second copies of {h} without a first"));
            }
            if copies.iter().any(|&c| self.blocks.get(c as usize).and_then(|b| b.hash) != Some(*h)) {
                return Err(format!("a second copy of {h} does not carry it"));
            }
        }
        for (h, &id) in &self.cached {
            if self.blocks.get(id as usize).and_then(|b| b.hash) != Some(*h) {
                return Err(format!("index maps {h} to block {id}, which does not carry it"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> BlockHash {
        BlockHash::from_bytes(&[i; 32]).unwrap()
    }

    /// Negative control for `check_invariants`: each kind of corruption is reported.
    #[test]
    fn invariant_checker_catches_corruption() {
        let fresh = || {
            let mut p = BlockPool::new(4, 1).unwrap();
            let ids = p.allocate(2).unwrap();
            p.cache_blocks(&ids[..1], &[h(1)], StoredInfo::default()).unwrap();
            p.check_invariants().unwrap();
            (p, ids)
        };
        let (mut p, ids) = fresh();
        p.blocks[ids[0] as usize].ref_cnt = 0; // in use, but claims to be free
        assert!(p.check_invariants().is_err());

        let (mut p, _) = fresh();
        p.num_free += 1; // counter drifts from the list
        assert!(p.check_invariants().is_err());

        let (mut p, ids) = fresh();
        p.cached.insert(h(9), ids[1]); // index points at a block without that hash
        assert!(p.check_invariants().is_err());

        let (mut p, _) = fresh();
        let last = p.tail;
        p.blocks[last as usize].prev = NIL; // broken back link
        assert!(p.check_invariants().is_err());
    }

    #[test]
    fn cached_blocks_are_evicted_lru_after_uncached_ones() {
        let mut p = BlockPool::new(4, 1).unwrap();
        let ids = p.allocate(4).unwrap();
        p.cache_blocks(&ids[..2], &[h(1), h(2)], StoredInfo::default()).unwrap();
        p.free(&[ids[1], ids[0], ids[2], ids[3]]).unwrap();
        // Uncached first (most recently freed at the front), then cached in free order.
        assert_eq!(p.free_list(), vec![ids[3], ids[2], ids[1], ids[0]]);
        let got = p.allocate(3).unwrap();
        assert_eq!(got, vec![ids[3], ids[2], ids[1]]);
        assert_eq!(p.lookup(&h(2)), None);
        assert_eq!(p.lookup(&h(1)), Some(ids[0]));
        assert_eq!(p.stats().evictions, 1);
    }

    #[test]
    fn events_describe_stores_and_evictions() {
        let mut p = BlockPool::with_sink(2, 2, Vec::new()).unwrap().with_int_event_hashes(true);
        let ids = p.allocate(2).unwrap();
        let info = StoredInfo { token_ids: &[1, 2, 3, 4], lora_name: Some("a"), ..Default::default() };
        p.cache_blocks(&ids, &[h(1), h(2)], info).unwrap();
        p.free(&ids).unwrap();
        p.allocate(1).unwrap();
        let ev = std::mem::take(p.sink_mut());
        let KvEvent::BlockStored(s) = &ev[0] else { panic!("{ev:?}") };
        assert_eq!(s.block_hashes, vec![ExternalBlockHash::Int(h(1).to_u64()), ExternalBlockHash::Int(h(2).to_u64())]);
        assert_eq!((s.token_ids.len(), s.block_size, s.lora_name.as_deref()), (4, 2, Some("a")));
        assert_eq!(s.medium.as_deref(), Some("GPU"));
        let KvEvent::BlockRemoved(r) = &ev[1] else { panic!("{ev:?}") };
        assert_eq!(r.block_hashes, vec![ExternalBlockHash::Int(h(1).to_u64())]);
    }

    #[test]
    fn a_hash_stays_cached_until_its_last_copy_is_evicted() {
        let mut p = BlockPool::with_sink(3, 1, Vec::new()).unwrap();
        let a = p.allocate(1).unwrap();
        let b = p.allocate(1).unwrap();
        p.cache_blocks(&a, &[h(1)], StoredInfo::default()).unwrap();
        p.cache_blocks(&b, &[h(1)], StoredInfo::default()).unwrap();
        p.free(&a).unwrap();
        p.free(&b).unwrap();
        p.check_invariants().unwrap();
        p.allocate(2).unwrap(); // the uncached block, then the first copy
        assert_eq!(p.lookup(&h(1)), Some(b[0]));
        let removed = |p: &mut BlockPool<Vec<KvEvent>>| {
            std::mem::take(p.sink_mut()).iter().filter(|e| matches!(e, KvEvent::BlockRemoved(_))).count()
        };
        assert_eq!(removed(&mut p), 0);
        p.allocate(1).unwrap();
        assert_eq!(p.lookup(&h(1)), None);
        assert_eq!(removed(&mut p), 1);
        p.check_invariants().unwrap();
    }

    #[test]
    fn bad_construction_is_rejected() {
        assert!(matches!(BlockPool::new(0, 16), Err(KvCacheError::BadCapacity { got: 0, .. })));
        assert_eq!(BlockPool::new(4, 0).unwrap_err(), KvCacheError::ZeroBlockSize);
    }
}
