//! Per-request block tables over a [`BlockPool`]: the operations vLLM's
//! `KVCacheManager` gives its scheduler.
//!
//! A request is a [`Sequence`]: its token ids and the hashes of its full blocks,
//! extended as tokens arrive. The manager finds the request's cached prefix, allocates
//! slots for new tokens (all or nothing), caches blocks as they fill, and frees a
//! request's blocks tail first so its least useful blocks are evicted first.

use std::collections::HashMap;

use crate::error::{KvCacheError, Result};
use crate::events::{EventSink, NullSink};
use crate::extra_keys::{ExtraKey, RequestKeys, to_event_extra_keys};
use crate::hash::{BlockHash, BlockHasher, HashAlgo};
use crate::pool::{BlockId, BlockPool, StoredInfo};

/// A request's tokens and the hashes of its full blocks.
#[derive(Debug, Clone)]
pub struct Sequence {
    id: String,
    tokens: Vec<u32>,
    hashes: Vec<BlockHash>,
    block_keys: Vec<Option<Vec<ExtraKey>>>,
    keys: RequestKeys,
    block_size: usize,
    // Which hasher the chain was built with: extending with another corrupts it.
    hasher: (HashAlgo, BlockHash),
}

impl Sequence {
    /// A sequence for request `id` with prompt `tokens`, hashed with `hasher`.
    pub fn new(
        id: impl Into<String>,
        tokens: Vec<u32>,
        keys: RequestKeys,
        block_size: usize,
        hasher: &BlockHasher,
    ) -> Result<Self> {
        let mut s = Sequence {
            id: id.into(),
            tokens: Vec::new(),
            hashes: Vec::new(),
            block_keys: Vec::new(),
            keys,
            block_size,
            hasher: (hasher.algo(), hasher.none_hash()),
        };
        s.extend(&tokens, hasher)?;
        Ok(s)
    }

    /// Appends tokens (e.g. a sampled one), hashing any blocks they complete. The hasher
    /// must be the one the sequence was created with.
    pub fn extend(&mut self, tokens: &[u32], hasher: &BlockHasher) -> Result<()> {
        if (hasher.algo(), hasher.none_hash()) != self.hasher {
            return Err(KvCacheError::HasherMismatch(self.id.clone()));
        }
        self.tokens.extend_from_slice(tokens);
        hasher.extend_hashes(&mut self.hashes, Some(&mut self.block_keys), &self.tokens, self.block_size, &self.keys)
    }

    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// All token ids so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Hashes of the full blocks so far.
    pub fn block_hashes(&self) -> &[BlockHash] {
        &self.hashes
    }

    /// The request's extra-key inputs.
    pub fn keys(&self) -> &RequestKeys {
        &self.keys
    }

    /// Tokens per block of the hash chain.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

/// Prefix-cache counters in tokens, as vLLM reports them
/// (`vllm:prefix_cache_queries`, `vllm:prefix_cache_hits`): each request counts once,
/// when its first blocks are allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Requests admitted.
    pub requests: u64,
    /// Prompt tokens looked up.
    pub queries: u64,
    /// Of those, tokens found cached.
    pub hits: u64,
}

/// The cached prefix found for a new request. Pass it to
/// [`KvCacheManager::allocate_slots`] before other allocations can evict it; a stale one
/// is rejected there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComputedBlocks {
    blocks: Vec<BlockId>,
    num_tokens: usize,
}

impl ComputedBlocks {
    /// Blocks holding the prefix, in order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Tokens they cover.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }
}

#[derive(Debug, Default)]
struct RequestState {
    blocks: Vec<BlockId>,
    num_tokens: usize,
    num_cached: usize,
}

/// Block tables for running requests over one pool.
#[derive(Debug)]
pub struct KvCacheManager<S: EventSink = NullSink> {
    pool: BlockPool<S>,
    requests: HashMap<String, RequestState>,
    caching: bool,
    prefix_stats: PrefixCacheStats,
    // Preempted requests: their re-admission is not a new prefix-cache query.
    preempted: std::collections::HashSet<String>,
}

impl KvCacheManager<NullSink> {
    /// A manager over `num_blocks` blocks of `block_size` tokens, without events.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self> {
        Ok(Self::with_pool(BlockPool::new(num_blocks, block_size)?))
    }
}

impl<S: EventSink> KvCacheManager<S> {
    /// A manager over an existing pool (with its sink, medium and tier).
    pub fn with_pool(pool: BlockPool<S>) -> Self {
        KvCacheManager {
            pool,
            requests: HashMap::new(),
            caching: true,
            prefix_stats: PrefixCacheStats::default(),
            preempted: Default::default(),
        }
    }

    /// Turns prefix caching off (no lookups, no hashes registered) or on.
    pub fn set_prefix_caching(&mut self, on: bool) {
        self.caching = on;
    }

    /// The pool.
    pub fn pool(&self) -> &BlockPool<S> {
        &self.pool
    }

    /// Sets the tier the pool offers cached blocks to before evicting them
    /// ([`BlockPool::set_tier`]).
    pub fn set_tier(&mut self, tier: Box<dyn crate::tier::Tier + Send>) {
        self.pool.set_tier(tier);
    }

    /// The pool's event sink, mutably (to drain or flush events).
    pub fn sink_mut(&mut self) -> &mut S {
        self.pool.sink_mut()
    }

    /// Prefix-cache counters in tokens.
    pub fn prefix_stats(&self) -> PrefixCacheStats {
        self.prefix_stats
    }

    /// Fraction of blocks in use (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        self.pool.usage()
    }

    /// Tokens a request has slots for.
    pub fn num_tokens(&self, request_id: &str) -> Option<usize> {
        self.requests.get(request_id).map(|r| r.num_tokens)
    }

    fn check_block_size(&self, seq: &Sequence) -> Result<()> {
        if seq.block_size != self.block_size() {
            return Err(KvCacheError::BlockSizeMismatch {
                id: seq.id.clone(),
                sequence: seq.block_size,
                manager: self.block_size(),
            });
        }
        Ok(())
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    /// A request's block table.
    pub fn block_table(&self, request_id: &str) -> Option<&[BlockId]> {
        self.requests.get(request_id).map(|r| r.blocks.as_slice())
    }

    /// Requests holding blocks.
    pub fn num_requests(&self) -> usize {
        self.requests.len()
    }

    /// The longest cached prefix of a new request. At least one prompt token is always
    /// left to compute, since the model needs it to produce the next token's logits.
    /// Looking up changes nothing, so a waiting request may look up again each step.
    pub fn computed_blocks(&self, seq: &Sequence) -> Result<ComputedBlocks> {
        self.check_block_size(seq)?;
        if !self.caching || seq.tokens.is_empty() {
            return Ok(ComputedBlocks::default());
        }
        let max_blocks = (seq.tokens.len() - 1) / self.block_size();
        let hashes = &seq.hashes[..seq.hashes.len().min(max_blocks)];
        let blocks = self.pool.peek_cached_prefix(hashes);
        let num_tokens = blocks.len() * self.block_size();
        Ok(ComputedBlocks { blocks, num_tokens })
    }

    /// Makes room for `num_new_tokens` more tokens of `seq` beyond those already
    /// allocated, taking `computed` (from [`computed_blocks`](Self::computed_blocks);
    /// only on a request's first call) as its prefix. Newly full blocks are cached.
    /// Returns the request's block table. All or nothing: on `OutOfBlocks` nothing
    /// changed and the request can be retried later.
    pub fn allocate_slots(
        &mut self,
        seq: &Sequence,
        num_new_tokens: usize,
        computed: ComputedBlocks,
    ) -> Result<&[BlockId]> {
        self.check_block_size(seq)?;
        let bs = self.block_size();
        let is_new = !self.requests.contains_key(&seq.id);
        let (have_blocks, have_tokens) = match self.requests.get(&seq.id) {
            Some(_) if !computed.blocks.is_empty() => {
                return Err(KvCacheError::LengthMismatch {
                    what: "computed blocks for a running request",
                    expected: 0,
                    got: computed.blocks.len(),
                });
            }
            Some(r) => (r.blocks.len(), r.num_tokens),
            None => (computed.blocks.len(), computed.num_tokens),
        };
        if num_new_tokens == 0 && have_tokens == 0 {
            return Err(KvCacheError::EmptyAllocation(seq.id.clone()));
        }
        // The prefix must still be what the lookup found: a block another request has
        // since reused would splice its KV into this one.
        for (i, &b) in computed.blocks.iter().enumerate() {
            let holds = seq.hashes.get(i).is_some_and(|h| self.pool.block_hash(b).ok().flatten() == Some(*h));
            if !holds || computed.blocks[..i].contains(&b) {
                return Err(KvCacheError::StaleComputedBlocks { id: seq.id.clone(), index: i, block: b });
            }
        }
        let total_tokens = have_tokens.checked_add(num_new_tokens).ok_or(KvCacheError::Overflow("token count"))?;
        let need = total_tokens.div_ceil(bs).saturating_sub(have_blocks);
        // Computed blocks nobody holds leave the free list when touched.
        let mut revived = 0;
        for &b in &computed.blocks {
            if self.pool.ref_count(b)? == 0 {
                revived += 1;
            }
        }
        let available = self.pool.num_free().saturating_sub(revived);
        if need > available {
            return Err(KvCacheError::OutOfBlocks { requested: need, free: available });
        }
        if is_new && !self.preempted.remove(&seq.id) {
            self.prefix_stats.requests += 1;
            self.prefix_stats.queries += seq.tokens.len() as u64;
            self.prefix_stats.hits += computed.num_tokens as u64;
        }
        self.pool.touch(&computed.blocks)?;
        let new = self.pool.allocate(need)?;
        let state = self.requests.entry(seq.id.clone()).or_default();
        if state.blocks.is_empty() {
            state.num_cached = computed.blocks.len();
        }
        state.blocks.extend(computed.blocks);
        state.blocks.extend(new);
        state.num_tokens = total_tokens;

        if self.caching {
            let full = (total_tokens.min(seq.tokens.len()) / bs).min(seq.hashes.len());
            if full > state.num_cached {
                let (from, to) = (state.num_cached, full);
                let info = StoredInfo {
                    parent: from.checked_sub(1).map(|p| seq.hashes[p]),
                    token_ids: &seq.tokens[from * bs..to * bs],
                    lora_name: seq.keys.lora().map(|l| l.name.as_str()),
                    lora_id: seq.keys.lora().and_then(|l| l.id),
                    extra_keys: if self.pool.sink().enabled() {
                        to_event_extra_keys(&seq.block_keys[from..to])
                    } else {
                        None
                    },
                };
                self.pool.cache_blocks(&state.blocks[from..to], &seq.hashes[from..to], info)?;
                state.num_cached = to;
            }
        }
        Ok(&state.blocks)
    }

    /// Blocks of a request whose hashes are registered in the cache.
    pub fn num_cached_blocks(&self, request_id: &str) -> Option<usize> {
        self.requests.get(request_id).map(|r| r.num_cached)
    }

    /// Un-registers the hashes of a request's blocks from `from_block` on: the step that
    /// was to compute them failed, so their contents must not be served to others.
    pub fn uncache_since(&mut self, request_id: &str, from_block: usize) -> Result<()> {
        let state =
            self.requests.get_mut(request_id).ok_or_else(|| KvCacheError::UnknownRequest(request_id.to_string()))?;
        if from_block < state.num_cached {
            self.pool.uncache_blocks(&state.blocks[from_block..state.num_cached])?;
            state.num_cached = from_block;
        }
        Ok(())
    }

    /// Frees a request that is being preempted (to be recomputed later): like
    /// [`free`](Self::free), but its re-admission is not counted as a new prefix-cache
    /// query, as in vLLM.
    pub fn free_preempted(&mut self, request_id: &str) -> Result<()> {
        self.free(request_id)?;
        self.preempted.insert(request_id.to_string());
        Ok(())
    }

    /// Releases a finished or aborted request's blocks, tail first.
    pub fn free(&mut self, request_id: &str) -> Result<()> {
        self.preempted.remove(request_id);
        let state =
            self.requests.remove(request_id).ok_or_else(|| KvCacheError::UnknownRequest(request_id.to_string()))?;
        let mut blocks = state.blocks;
        blocks.reverse();
        self.pool.free(&blocks)
    }

    /// Drops every cached hash if no request holds blocks; returns whether it did.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_prefix_cache()
    }
}
