//! The global KV block index: which endpoint holds which prompt prefix, learned from the
//! engines' KV events (vLLM's wire format).
//!
//! Engines name blocks by their own hashes, which the scheduler may not be able to
//! reproduce (another seed, vLLM's pickle-based hashes, 64-bit event hashes). So the
//! index keys blocks on the scheduler's own chained hash of the *tokens* the events
//! carry, and keeps, per endpoint, the mapping from the engine's hash to its key — needed
//! to follow parent links and to apply removals. Requests are hashed the same way, so
//! lookups work whatever the engines' hashing.
//!
//! Sequence gaps (a lost batch) and `AllBlocksCleared` drop what is known about that
//! endpoint, which then rebuilds from new events.

use std::collections::HashMap;

use llmd_kvcache::{BlockStored, ExternalBlockHash, KvEvent, KvEventBatch};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Where a block lives; lower tiers earn less credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Medium {
    /// Accelerator memory.
    Gpu,
    /// Host memory.
    Cpu,
    /// Disk or shared storage.
    Storage,
}

impl Medium {
    fn parse(m: Option<&str>) -> Self {
        match m.map(str::to_ascii_uppercase).as_deref() {
            Some("CPU") => Medium::Cpu,
            Some("STORAGE") | Some("DISK") => Medium::Storage,
            _ => Medium::Gpu,
        }
    }

    /// Credit a cached block on this tier earns, relative to GPU.
    pub fn credit(self) -> f64 {
        match self {
            Medium::Gpu => 1.0,
            Medium::Cpu => 0.8,
            Medium::Storage => 0.5,
        }
    }
}

/// The scheduler's key for a block: a chained hash of its tokens.
pub type BlockKey = u64;

/// Chained keys of the first `max_blocks` full blocks of `tokens`.
pub fn block_keys(tokens: &[u32], block_size: usize, max_blocks: usize) -> Vec<BlockKey> {
    let mut prev = 0u64;
    tokens
        .chunks_exact(block_size.max(1))
        .take(max_blocks)
        .map(|c| {
            prev = key_of(prev, c);
            prev
        })
        .collect()
}

/// A block's key: xxh3 over its tokens' little-endian bytes, seeded by its parent's key.
fn key_of(parent: BlockKey, tokens: &[u32]) -> BlockKey {
    xxh3_64_with_seed(&le_bytes(tokens), parent ^ 0x6c6c_6d64)
}

/// Token ids as little-endian bytes: borrowed where memory already holds them so (the
/// prompt is hashed on every pick, and the copy cost more than the hash).
pub(crate) fn le_bytes(ids: &[u32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(ids))
    } else {
        std::borrow::Cow::Owned(ids.iter().flat_map(|t| t.to_le_bytes()).collect())
    }
}

#[derive(Debug, Default)]
struct EndpointState {
    // Engine hash → (our key, medium).
    engine_to_key: HashMap<ExternalBlockHash, (BlockKey, Medium)>,
    last_seq: Option<u64>,
}

/// What one event batch did to the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Blocks added.
    pub stored: usize,
    /// Blocks removed.
    pub removed: usize,
    /// Stored blocks skipped because their parent was unknown.
    pub orphaned: usize,
    /// Whether a sequence gap reset the endpoint first.
    pub resynced: bool,
}

// Block keys are already uniform hashes: they are their own map hash.
type KeyMap<V> = HashMap<BlockKey, V, std::hash::BuildHasherDefault<llmd_kvcache::PrehashedHasher>>;

/// Block → endpoints index fed by KV events.
#[derive(Debug, Default)]
pub struct KvBlockIndex {
    // Holders per block, as interned endpoint numbers: a lookup walks a short vector of
    // small integers instead of hashing endpoint names.
    blocks: KeyMap<Vec<(u32, Medium)>>,
    endpoints: HashMap<String, EndpointState>,
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl KvBlockIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct blocks known.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Blocks known for an endpoint.
    pub fn endpoint_blocks(&self, endpoint: &str) -> usize {
        self.endpoints.get(endpoint).map_or(0, |s| s.engine_to_key.len())
    }

    /// Endpoints with blocks in the index.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().filter(|(_, s)| !s.engine_to_key.is_empty()).map(|(k, _)| k.clone()).collect()
    }

    fn intern(&mut self, endpoint: &str) -> u32 {
        if let Some(&id) = self.ids.get(endpoint) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(endpoint.to_string());
        self.ids.insert(endpoint.to_string(), id);
        id
    }

    /// Forgets an endpoint (it went away, or its event stream had a gap).
    pub fn remove_endpoint(&mut self, endpoint: &str) {
        let Some(&id) = self.ids.get(endpoint) else { return };
        if let Some(st) = self.endpoints.remove(endpoint) {
            for (key, _) in st.engine_to_key.values() {
                self.drop_holder(*key, id);
            }
        }
    }

    fn drop_holder(&mut self, key: BlockKey, id: u32) {
        if let Some(holders) = self.blocks.get_mut(&key) {
            holders.retain(|(e, _)| *e != id);
            if holders.is_empty() {
                self.blocks.remove(&key);
            }
        }
    }

    /// Applies one batch from `endpoint`, published with sequence number `seq` (`None`
    /// when the transport has none).
    pub fn apply(&mut self, endpoint: &str, seq: Option<u64>, batch: &KvEventBatch) -> ApplyStats {
        let mut stats = ApplyStats::default();
        let last = self.endpoints.get(endpoint).and_then(|s| s.last_seq);
        if let (Some(prev), Some(seq)) = (last, seq)
            && seq != prev.wrapping_add(1)
        {
            // Missed batches: what we know may be wrong; start over from here.
            self.remove_endpoint(endpoint);
            stats.resynced = true;
        }
        for ev in &batch.events {
            match ev {
                KvEvent::BlockStored(s) => self.stored(endpoint, s, &mut stats),
                KvEvent::BlockRemoved(r) => {
                    for h in &r.block_hashes {
                        let removed = self.endpoints.get_mut(endpoint).and_then(|st| st.engine_to_key.remove(h));
                        if let Some((key, _)) = removed {
                            let id = self.intern(endpoint);
                            self.drop_holder(key, id);
                            stats.removed += 1;
                        }
                    }
                }
                KvEvent::AllBlocksCleared => self.remove_endpoint(endpoint),
                KvEvent::Unknown { .. } => {}
            }
        }
        self.endpoints.entry(endpoint.to_string()).or_default().last_seq = seq.or(last);
        stats
    }

    fn stored(&mut self, endpoint: &str, s: &BlockStored, stats: &mut ApplyStats) {
        let bs = s.block_size as usize;
        if bs == 0 || s.token_ids.len() < s.block_hashes.len() * bs {
            stats.orphaned += s.block_hashes.len();
            return;
        }
        let medium = Medium::parse(s.medium.as_deref());
        let id = self.intern(endpoint);
        let st = self.endpoints.entry(endpoint.to_string()).or_default();
        let mut parent = match &s.parent_block_hash {
            None => 0,
            Some(p) => match st.engine_to_key.get(p) {
                Some((k, _)) => *k,
                None => {
                    stats.orphaned += s.block_hashes.len();
                    return;
                }
            },
        };
        let mut added = Vec::new();
        for (h, toks) in s.block_hashes.iter().zip(s.token_ids.chunks_exact(bs)) {
            let key = key_of(parent, toks);
            st.engine_to_key.insert(*h, (key, medium));
            added.push(key);
            parent = key;
        }
        for key in added {
            let holders = self.blocks.entry(key).or_default();
            match holders.iter_mut().find(|(e, _)| *e == id) {
                Some((_, m)) => *m = (*m).min(medium),
                None => holders.push((id, medium)),
            }
            stats.stored += 1;
        }
    }

    /// The credit `endpoint` earns for block `key` (its best tier), `None` when it does
    /// not hold it.
    pub fn block_credit(&self, key: BlockKey, endpoint: &str) -> Option<f64> {
        let id = *self.ids.get(endpoint)?;
        self.blocks.get(&key)?.iter().filter(|(e, _)| *e == id).map(|(_, m)| m.credit()).reduce(f64::max)
    }

    /// For each endpoint holding a prefix of `keys`: the credit-weighted length of the
    /// longest prefix it holds (GPU blocks count 1, lower tiers less).
    pub fn prefix_credit(&self, keys: &[BlockKey]) -> crate::plugins::prefix::IdMap<f64> {
        // Endpoints still matching every block so far, with their running credit; the
        // set only shrinks, so it is filtered in place without allocating per block.
        let mut active: Vec<(u32, f64)> = Vec::new();
        let mut done: Vec<(u32, f64)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(holders) = self.blocks.get(key) else { break };
            if i == 0 {
                active = holders.iter().map(|(e, m)| (*e, m.credit())).collect();
            } else if holders.len() == active.len() && holders.iter().zip(&active).all(|(h, a)| h.0 == a.0) {
                // The usual case along a shared prefix: the same holders in the same order.
                for (a, (_, m)) in active.iter_mut().zip(holders) {
                    a.1 += m.credit();
                }
            } else {
                let mut j = 0;
                while j < active.len() {
                    match holders.iter().find(|(e, _)| *e == active[j].0) {
                        Some((_, m)) => {
                            active[j].1 += m.credit();
                            j += 1;
                        }
                        None => done.push(active.swap_remove(j)),
                    }
                }
            }
            if active.is_empty() {
                break;
            }
        }
        done.into_iter().chain(active).map(|(e, c)| (self.names[e as usize].clone(), c)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_kvcache::{BlockHash, BlockRemoved};

    fn h(i: u8) -> ExternalBlockHash {
        ExternalBlockHash::Bytes(BlockHash::from_bytes(&[i; 32]).unwrap())
    }

    fn stored(hashes: &[ExternalBlockHash], parent: Option<ExternalBlockHash>, tokens: Vec<u32>) -> KvEvent {
        KvEvent::BlockStored(BlockStored {
            block_hashes: hashes.to_vec(),
            parent_block_hash: parent,
            token_ids: tokens,
            block_size: 2,
            medium: Some("GPU".into()),
            ..Default::default()
        })
    }

    fn batch(events: Vec<KvEvent>) -> KvEventBatch {
        KvEventBatch { ts: 0.0, events, data_parallel_rank: None }
    }

    #[test]
    fn keys_follow_tokens_not_engine_hashes() {
        let mut idx = KvBlockIndex::new();
        // Two pods report the same tokens under unrelated engine hashes.
        idx.apply("a", Some(0), &batch(vec![stored(&[h(1), h(2)], None, vec![1, 2, 3, 4])]));
        idx.apply("b", Some(0), &batch(vec![stored(&[ExternalBlockHash::Int(9)], None, vec![1, 2])]));
        let keys = block_keys(&[1, 2, 3, 4, 5, 6], 2, usize::MAX);
        let credit = idx.prefix_credit(&keys);
        assert_eq!((credit["a"], credit["b"]), (2.0, 1.0));
        // A continuation through a parent link.
        idx.apply(
            "b",
            Some(1),
            &batch(vec![stored(&[ExternalBlockHash::Int(10)], Some(ExternalBlockHash::Int(9)), vec![3, 4])]),
        );
        assert_eq!(idx.prefix_credit(&keys)["b"], 2.0);
        // Removal by engine hash.
        idx.apply(
            "a",
            Some(1),
            &batch(vec![KvEvent::BlockRemoved(BlockRemoved { block_hashes: vec![h(1)], ..Default::default() })]),
        );
        assert!(!idx.prefix_credit(&keys).contains_key("a"));
    }

    #[test]
    fn gaps_and_clears_reset_an_endpoint_and_tiers_earn_less() {
        let mut idx = KvBlockIndex::new();
        idx.apply("a", Some(0), &batch(vec![stored(&[h(1)], None, vec![1, 2])]));
        let stats = idx.apply("a", Some(5), &batch(vec![]));
        assert!(stats.resynced);
        assert_eq!(idx.endpoint_blocks("a"), 0);
        let mut cpu = stored(&[h(2)], None, vec![1, 2]);
        if let KvEvent::BlockStored(s) = &mut cpu {
            s.medium = Some("CPU".into());
        }
        idx.apply("a", Some(6), &batch(vec![cpu]));
        assert_eq!(idx.prefix_credit(&block_keys(&[1, 2], 2, usize::MAX))["a"], 0.8);
        idx.apply("a", Some(7), &batch(vec![KvEvent::AllBlocksCleared]));
        assert!(idx.is_empty());
        // An orphan (unknown parent) is skipped, not misfiled.
        let s = idx.apply("a", Some(8), &batch(vec![stored(&[h(3)], Some(h(99)), vec![5, 6])]));
        assert_eq!((s.stored, s.orphaned), (0, 1));
    }
}
