//! One lower tier's bookkeeping (host memory, local disk): which block hashes it holds
//! in which of its slots, what it gives up when full, and the copies that move blocks
//! in and out. It plans and the memory owner copies: [`TierIndex::plan_store`] and
//! [`TierIndex::plan_load`] return copy operations the engine runs (a GPU backend as
//! async copies), and [`TierIndex::store_done`] / [`TierIndex::load_done`] settle them,
//! so the allocator never waits on I/O.
//!
//! A block is in one state per tier: being stored (not yet readable), or ready (readable,
//! pinned while loads read it). A slot is reused only once its block is gone and no load
//! reads it. As vLLM's offloader, a store threshold can keep one-off blocks out: a block
//! is stored only after its hash was looked up that many times.

use std::collections::HashMap;

use super::policy::{EvictionPolicy, PolicyKind};
use crate::hash::BlockHash;
use crate::pool::BlockId;

/// A tier's shape and rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierConfig {
    /// The medium its events name (`CPU`, a storage name).
    pub medium: String,
    /// Slots (blocks it holds at most).
    pub blocks: usize,
    /// What it gives up when full.
    pub policy: PolicyKind,
    /// Lookups of a hash before its block is stored (vLLM's `store_threshold`; 0 or 1:
    /// every block).
    pub store_threshold: u32,
    /// Hashes whose lookups are counted at most (vLLM's `max_tracker_size`, 64 000); the
    /// counts start over when it fills.
    pub tracker_size: usize,
}

impl TierConfig {
    /// A tier of `blocks` slots on `medium`, LRU, no threshold.
    pub fn new(medium: impl Into<String>, blocks: usize) -> Self {
        TierConfig { medium: medium.into(), blocks, policy: PolicyKind::Lru, store_threshold: 0, tracker_size: 64_000 }
    }
}

/// Copy a device block into a tier slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOp {
    /// The block's hash.
    pub hash: BlockHash,
    /// The device block to read.
    pub block: BlockId,
    /// The tier slot to write.
    pub slot: u32,
}

/// Copy a tier slot into a device block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOp {
    /// The block's hash.
    pub hash: BlockHash,
    /// The tier slot to read.
    pub slot: u32,
    /// The device block to write.
    pub block: BlockId,
}

/// What a tier announces (as vLLM's offloader, `BlockStored`/`BlockRemoved` with its
/// medium).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierEvent {
    /// Readable in this tier from now on.
    Stored(BlockHash),
    /// Gone from this tier.
    Removed(BlockHash),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Storing,
    Ready { readers: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    slot: u32,
    state: State,
}

/// One tier's index.
pub struct TierIndex {
    cfg: TierConfig,
    free: Vec<u32>,
    entries: HashMap<BlockHash, Entry>,
    policy: Box<dyn EvictionPolicy<BlockHash>>,
    lookups: HashMap<BlockHash, u32>,
    events: Vec<TierEvent>,
}

impl std::fmt::Debug for TierIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierIndex")
            .field("medium", &self.cfg.medium)
            .field("used", &self.entries.len())
            .field("blocks", &self.cfg.blocks)
            .finish_non_exhaustive()
    }
}

impl TierIndex {
    /// An empty tier.
    pub fn new(cfg: TierConfig) -> Self {
        let n = u32::try_from(cfg.blocks).unwrap_or(u32::MAX);
        TierIndex {
            free: (0..n).rev().collect(),
            entries: HashMap::new(),
            policy: cfg.policy.build(cfg.blocks),
            lookups: HashMap::new(),
            events: Vec::new(),
            cfg,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TierConfig {
        &self.cfg
    }

    /// Slots holding or receiving a block.
    pub fn used(&self) -> usize {
        self.entries.len()
    }

    /// Counts lookups of `hashes` toward the store threshold.
    pub fn note_lookups(&mut self, hashes: &[BlockHash]) {
        if self.cfg.store_threshold <= 1 {
            return;
        }
        for h in hashes {
            if !self.lookups.contains_key(h) && self.lookups.len() >= self.cfg.tracker_size {
                self.lookups.clear();
            }
            *self.lookups.entry(*h).or_default() += 1;
        }
    }

    fn past_threshold(&self, h: &BlockHash) -> bool {
        self.cfg.store_threshold <= 1 || self.lookups.get(h).is_some_and(|&n| n >= self.cfg.store_threshold)
    }

    /// Plans storing device blocks (about to be reused on the device, their contents
    /// still intact): those not held here already and past the threshold get a slot,
    /// freeing ready blocks no load reads when full. Run the copies, then settle each
    /// with [`store_done`](Self::store_done).
    pub fn plan_store(&mut self, blocks: &[(BlockId, BlockHash)]) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for &(block, hash) in blocks {
            if self.entries.contains_key(&hash) || !self.past_threshold(&hash) {
                continue;
            }
            let Some(slot) = self.free_slot(&hash) else { break };
            self.entries.insert(hash, Entry { slot, state: State::Storing });
            ops.push(StoreOp { hash, block, slot });
        }
        ops
    }

    fn free_slot(&mut self, incoming: &BlockHash) -> Option<u32> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        let entries = &self.entries;
        let evictable =
            |h: &BlockHash| matches!(entries.get(h), Some(Entry { state: State::Ready { readers: 0 }, .. }));
        let victim = self.policy.victim(Some(incoming), &evictable)?;
        let e = self.entries.remove(&victim)?;
        self.events.push(TierEvent::Removed(victim));
        Some(e.slot)
    }

    /// Settles a store: readable from now on, or (copy failed) forgotten.
    pub fn store_done(&mut self, hash: &BlockHash, ok: bool) {
        let Some(e) = self.entries.get_mut(hash).filter(|e| e.state == State::Storing) else { return };
        if ok {
            e.state = State::Ready { readers: 0 };
            self.policy.insert(*hash);
            self.lookups.remove(hash);
            self.events.push(TierEvent::Stored(*hash));
        } else if let Some(e) = self.entries.remove(hash) {
            self.free.push(e.slot);
        }
    }

    /// How many leading blocks of `hashes` this tier can give back.
    pub fn lookup(&self, hashes: &[BlockHash]) -> usize {
        hashes
            .iter()
            .take_while(|h| matches!(self.entries.get(h), Some(Entry { state: State::Ready { .. }, .. })))
            .count()
    }

    /// Plans loading the first `blocks.len()` of `hashes` (as [`lookup`](Self::lookup)
    /// found them) into those device blocks; the slots stay pinned until
    /// [`load_done`](Self::load_done).
    pub fn plan_load(&mut self, hashes: &[BlockHash], blocks: &[BlockId]) -> Vec<LoadOp> {
        let mut ops = Vec::new();
        for (hash, &block) in hashes.iter().zip(blocks) {
            let Some(e) = self.entries.get_mut(hash) else { break };
            let State::Ready { readers } = &mut e.state else { break };
            *readers += 1;
            self.policy.hit(hash);
            ops.push(LoadOp { hash: *hash, slot: e.slot, block });
        }
        ops
    }

    /// Settles a load: the slot may be given up again.
    pub fn load_done(&mut self, hash: &BlockHash) {
        if let Some(Entry { state: State::Ready { readers }, .. }) = self.entries.get_mut(hash) {
            *readers = readers.saturating_sub(1);
        }
    }

    /// Forgets a ready block no load reads (e.g. it failed its checksum); whether it
    /// did.
    pub fn invalidate(&mut self, hash: &BlockHash) -> bool {
        match self.entries.get(hash) {
            Some(Entry { state: State::Ready { readers: 0 }, slot }) => {
                let slot = *slot;
                self.entries.remove(hash);
                self.policy.remove(hash);
                self.free.push(slot);
                self.events.push(TierEvent::Removed(*hash));
                true
            }
            _ => false,
        }
    }

    /// What happened since the last call.
    pub fn take_events(&mut self) -> Vec<TierEvent> {
        std::mem::take(&mut self.events)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn h(i: u32) -> BlockHash {
        BlockHash::from_bytes(&u64::from(i).to_be_bytes()).unwrap()
    }

    #[test]
    fn blocks_go_down_come_back_and_full_tiers_give_up_unpinned_ones() {
        let mut t = TierIndex::new(TierConfig::new("CPU", 2));
        let ops = t.plan_store(&[(5, h(1)), (6, h(2)), (7, h(3))]);
        assert_eq!(ops.len(), 2, "two slots, both free");
        assert_eq!(t.lookup(&[h(1)]), 0, "not readable while being stored");
        t.store_done(&h(1), true);
        t.store_done(&h(2), true);
        assert_eq!(t.take_events(), [TierEvent::Stored(h(1)), TierEvent::Stored(h(2))]);
        assert_eq!(t.lookup(&[h(1), h(2), h(3)]), 2);
        let loads = t.plan_load(&[h(1)], &[9]);
        assert_eq!(loads, [LoadOp { hash: h(1), slot: ops[0].slot, block: 9 }]);
        // Full: 1 is being read, so 2 goes.
        let ops = t.plan_store(&[(7, h(3))]);
        assert_eq!(ops.len(), 1);
        assert_eq!(t.take_events(), [TierEvent::Removed(h(2))]);
        // Nothing else may go while 1 is read and 3 is being stored.
        assert!(t.plan_store(&[(8, h(4))]).is_empty());
        t.load_done(&h(1));
        t.store_done(&h(3), false);
        assert_eq!(t.used(), 1, "a failed store frees its slot");
        assert!(t.invalidate(&h(1)));
        assert_eq!(t.used(), 0);
    }

    #[test]
    fn the_store_threshold_keeps_one_off_blocks_out() {
        let mut t = TierIndex::new(TierConfig { store_threshold: 2, ..TierConfig::new("CPU", 4) });
        t.note_lookups(&[h(1), h(2)]);
        t.note_lookups(&[h(1)]);
        let ops = t.plan_store(&[(1, h(1)), (2, h(2))]);
        assert_eq!(ops.iter().map(|o| o.hash).collect::<Vec<_>>(), [h(1)]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Store(Vec<u8>),
        Settle(u8, bool),
        Load(Vec<u8>),
        LoadDone(u8),
        Invalidate(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let keys = || proptest::collection::vec(0u8..16, 1..5);
        prop_oneof![
            3 => keys().prop_map(Op::Store),
            3 => (0u8..16, proptest::bool::weighted(0.9)).prop_map(|(k, ok)| Op::Settle(k, ok)),
            2 => keys().prop_map(Op::Load),
            2 => (0u8..16).prop_map(Op::LoadDone),
            1 => (0u8..16).prop_map(Op::Invalidate),
        ]
    }

    /// Runs the tier over a simulated memory (slot contents) and checks that every load
    /// reads what was stored for that hash, that slots are never shared, and that the
    /// capacity holds. `reuse_pinned` breaks the tier (a slot being read is handed to a
    /// new store): the negative control.
    fn run(kind: PolicyKind, ops: &[Op], reuse_pinned: bool) -> Result<(), TestCaseError> {
        let cap = 5;
        let mut t = TierIndex::new(TierConfig { policy: kind, ..TierConfig::new("CPU", cap) });
        let mut memory: Vec<Option<u8>> = vec![None; cap];
        let mut storing: HashMap<u8, u32> = HashMap::new();
        let mut reading: Vec<(u8, u32)> = Vec::new();
        for o in ops {
            match o {
                Op::Store(keys) => {
                    let blocks: Vec<(BlockId, BlockHash)> = keys.iter().map(|&k| (u32::from(k), h(k.into()))).collect();
                    let mut planned = t.plan_store(&blocks);
                    if reuse_pinned
                        && planned.is_empty()
                        && let Some(&(_, slot)) = reading.first()
                    {
                        planned.push(StoreOp { hash: h(99), block: 99, slot });
                    }
                    for p in planned {
                        // The copy writes the block's contents (its key) into the slot.
                        let k = u8::try_from(p.block).unwrap_or(99);
                        memory[p.slot as usize] = Some(k);
                        storing.insert(k, p.slot);
                    }
                }
                Op::Settle(k, ok) => {
                    if storing.remove(k).is_some() {
                        t.store_done(&h((*k).into()), *ok);
                    }
                }
                Op::Load(keys) => {
                    let hashes: Vec<BlockHash> = keys.iter().map(|&k| h(k.into())).collect();
                    let n = t.lookup(&hashes);
                    let loads = t.plan_load(&hashes[..n], &vec![0; n]);
                    prop_assert_eq!(loads.len(), n);
                    for (l, &k) in loads.iter().zip(keys) {
                        reading.push((k, l.slot));
                    }
                }
                Op::LoadDone(k) => {
                    if let Some(i) = reading.iter().position(|(x, _)| x == k) {
                        let (k, slot) = reading.remove(i);
                        // The copy out reads what the slot holds now: it must be k's.
                        prop_assert_eq!(memory[slot as usize], Some(k), "slot {} of {} was overwritten", slot, k);
                        t.load_done(&h(k.into()));
                    }
                }
                Op::Invalidate(k) => {
                    t.invalidate(&h((*k).into()));
                }
            }
            prop_assert!(t.used() <= cap);
            let mut slots: Vec<u32> = t.entries.values().map(|e| e.slot).collect();
            slots.sort_unstable();
            slots.dedup();
            prop_assert_eq!(slots.len(), t.used(), "two blocks share a slot");
        }
        // Every load still open reads its own block.
        for (k, slot) in reading {
            prop_assert_eq!(memory[slot as usize], Some(k));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn loads_read_what_was_stored_lru(ops in proptest::collection::vec(op(), 0..120)) {
            run(PolicyKind::Lru, &ops, false)?;
        }

        #[test]
        fn loads_read_what_was_stored_arc(ops in proptest::collection::vec(op(), 0..120)) {
            run(PolicyKind::Arc, &ops, false)?;
        }
    }

    #[test]
    fn negative_control_reusing_a_slot_being_read_is_caught() {
        let fill: Vec<Op> = (0..5).flat_map(|k| [Op::Store(vec![k]), Op::Settle(k, true)]).collect();
        let mut ops = fill;
        ops.push(Op::Load(vec![0, 1, 2, 3, 4]));
        ops.push(Op::Store(vec![9]));
        ops.push(Op::LoadDone(0));
        assert!(run(PolicyKind::Lru, &ops, false).is_ok());
        assert!(run(PolicyKind::Lru, &ops, true).is_err());
    }
}
