//! KV offloading, as vLLM's OffloadingConnector: blocks the device pool evicts are
//! copied down to host memory (and from there to files, see [`SecondaryTier`]), and a
//! later prompt whose prefix misses the device pool but hits a lower tier gets those
//! blocks copied back before anything is computed.
//!
//! The pool only records what it evicts (an [`EvictionQueue`]); the engine drains the
//! queue after each allocation, before it writes into the reused blocks, and
//! [`Offloader::store_evicted`] copies them while their contents are intact.
//!
//! Offloaded blocks may span several device blocks (`block_size` a multiple of the
//! engine's, vLLM's `block_size_factor`). Such a group is known only while one request
//! holds all its device blocks, so groups are stored as vLLM stores them, once
//! computed ([`Offloader::store_groups`]), under the hash of their last device block;
//! eviction-time stores are for groups of one. Capacity,
//! eviction (LRU or ARC) and the store threshold are [`TierIndex`]'s. Stored and removed
//! blocks are announced as vLLM's offloader announces them: `BlockStored` with medium
//! `CPU`, no tokens and no parent, and `BlockRemoved` with medium `CPU`.

mod config;
pub mod disk;
mod metrics;

pub use config::{OffloadConfig, SecondaryTier};
pub use disk::{DiskConfig, DiskStats, DiskTier, Namespace, ReadResult};
pub use metrics::OffloadMetrics;

use bytes::Bytes;
use llmd_kvcache::tier::{TierConfig, TierEvent, TierIndex};
use llmd_kvcache::{BlockHash, BlockId, BlockRemoved, BlockStored, EvictionQueue, ExternalBlockHash, KvEvent};

use crate::error::{EngineError, Result};

/// vLLM's medium name for host memory.
pub const MEDIUM_CPU: &str = llmd_kvcache::MEDIUM_CPU;

/// Counters of what moved, since the offloader was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadStats {
    /// Blocks copied down to host memory.
    pub stored_blocks: u64,
    /// Their bytes.
    pub stored_bytes: u64,
    /// Blocks copied back up.
    pub loaded_blocks: u64,
    /// Their bytes.
    pub loaded_bytes: u64,
    /// Blocks looked up below the device pool (a prompt's blocks past its device hit).
    pub queried_blocks: u64,
    /// Of those, found in host memory.
    pub hit_blocks: u64,
}

/// Host memory below one engine's device pool.
pub struct Offloader {
    queue: EvictionQueue,
    index: TierIndex,
    slots: Vec<Option<Bytes>>,
    block_bytes: usize,
    /// Device blocks per offloaded block.
    factor: usize,
    int_hashes: bool,
    events: Vec<KvEvent>,
    stats: OffloadStats,
    disk: Option<DiskTier>,
}

/// Where a prompt's blocks past its device hit are, below it.
#[derive(Debug, Default)]
pub struct Onboard {
    /// The leading ones host memory holds.
    pub host: Vec<Bytes>,
    /// The ones after those on disk, being read under this ticket.
    pub disk: Option<(u64, Vec<BlockHash>)>,
}

impl std::fmt::Debug for Offloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offloader")
            .field("index", &self.index)
            .field("block_bytes", &self.block_bytes)
            .field("factor", &self.factor)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Offloader {
    /// Host memory of `cfg.cpu_bytes` for device blocks of `block_bytes` (one device
    /// block's K and V, all layers) of `device_block_size` tokens, offloaded in groups
    /// of `cfg.block_size` tokens (a multiple of `device_block_size`; one device block
    /// when unset).
    pub fn new(cfg: &OffloadConfig, device_block_size: usize, block_bytes: usize) -> Result<Self> {
        let factor = match cfg.block_size {
            None => 1,
            Some(b) if device_block_size > 0 && b >= device_block_size && b.is_multiple_of(device_block_size) => {
                b / device_block_size
            }
            Some(b) => {
                // vLLM asserts the same: offloaded blocks are whole device blocks.
                return Err(EngineError::config(
                    "kv-transfer-config",
                    "block_size",
                    format!("{b} tokens is not a multiple of the engine's block size {device_block_size}"),
                ));
            }
        };
        if block_bytes == 0 {
            return Err(EngineError::config(
                "kv-transfer-config",
                "cpu_bytes_to_use",
                "the backend's blocks have no size",
            ));
        }
        let unit = block_bytes.saturating_mul(factor);
        let blocks = usize::try_from(cfg.cpu_bytes / unit as u64).unwrap_or(usize::MAX);
        if blocks == 0 {
            return Err(EngineError::config(
                "kv-transfer-config",
                "cpu_bytes_to_use",
                format!("{} bytes hold no block of {unit} bytes", cfg.cpu_bytes),
            ));
        }
        let tier = TierConfig {
            medium: MEDIUM_CPU.into(),
            blocks,
            policy: cfg.eviction_policy,
            store_threshold: cfg.store_threshold,
            tracker_size: cfg.tracker_size,
        };
        tracing::info!(
            blocks,
            block_bytes = unit,
            device_blocks_each = factor,
            policy = ?cfg.eviction_policy,
            store_threshold = cfg.store_threshold,
            "KV offloading to host memory"
        );
        Ok(Offloader {
            queue: EvictionQueue::new(),
            index: TierIndex::new(tier),
            slots: vec![None; blocks],
            block_bytes,
            factor,
            int_hashes: false,
            events: Vec::new(),
            stats: OffloadStats::default(),
            disk: None,
        })
    }

    /// Puts a disk tier below host memory: every block stored in host memory is also
    /// written there, and a prompt's blocks past what host memory holds are read back
    /// from it.
    pub fn attach_disk(&mut self, disk: DiskTier) {
        self.disk = Some(disk.with_int_event_hashes(self.int_hashes));
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
    }

    /// The disk tier, mutably.
    pub fn disk_mut(&mut self) -> Option<&mut DiskTier> {
        self.disk.as_mut()
    }

    /// Event hashes as 64-bit integers (as the device pool's, see
    /// [`BlockPool::with_int_event_hashes`](llmd_kvcache::BlockPool::with_int_event_hashes)).
    pub fn with_int_event_hashes(mut self, on: bool) -> Self {
        self.int_hashes = on;
        self
    }

    /// The queue to give the device pool ([`KvCacheManager::set_tier`](llmd_kvcache::KvCacheManager::set_tier)).
    pub fn eviction_queue(&self) -> EvictionQueue {
        self.queue.clone()
    }

    /// Blocks host memory holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Blocks held (or being stored).
    pub fn used(&self) -> usize {
        self.index.used()
    }

    /// Bytes one device block takes.
    pub fn block_bytes(&self) -> usize {
        self.block_bytes
    }

    /// Device blocks per offloaded block.
    pub fn factor(&self) -> usize {
        self.factor
    }

    /// Bytes one offloaded block takes.
    pub fn unit_bytes(&self) -> usize {
        self.block_bytes * self.factor
    }

    /// Offloaded blocks (each [`factor`](Self::factor) device blocks long, as held and
    /// loaded) cut back into device blocks, without copying.
    pub fn split(&self, units: Vec<Bytes>) -> Vec<Bytes> {
        if self.factor == 1 {
            return units;
        }
        let b = self.block_bytes;
        units.into_iter().flat_map(|u| (0..u.len() / b).map(move |i| u.slice(i * b..(i + 1) * b))).collect()
    }

    /// What moved so far.
    pub fn stats(&self) -> OffloadStats {
        self.stats
    }

    /// Copies the blocks the device pool evicted since the last call into host memory,
    /// reading each with `read` (its contents are still intact: call this before
    /// anything is written into reallocated blocks). Blocks held already, or under the
    /// store threshold, are skipped; a failed read stores nothing. Returns the blocks
    /// stored.
    pub fn store_evicted(&mut self, read: impl FnMut(BlockId, &mut Vec<u8>) -> Result<()>) -> usize {
        let evicted = self.queue.take();
        if evicted.is_empty() || self.factor > 1 {
            return 0;
        }
        self.store(&evicted, read)
    }

    /// Copies computed groups of device blocks into host memory: each `(key, blocks)`,
    /// `key` the hash of the group's last device block, `blocks` its
    /// [`factor`](Self::factor) device blocks, read into one buffer with `read`. Groups
    /// held already, or under the store threshold, are skipped. Returns the groups
    /// stored.
    pub fn store_groups(
        &mut self,
        groups: &[(BlockHash, Vec<BlockId>)],
        mut read: impl FnMut(&[BlockId], &mut Vec<u8>) -> Result<()>,
    ) -> usize {
        let items: Vec<(BlockId, BlockHash)> =
            groups.iter().enumerate().map(|(i, (h, _))| (i as BlockId, *h)).collect();
        self.store(&items, |i, out| match groups.get(i as usize) {
            Some((_, ids)) => read(ids, out),
            None => Err(EngineError::KvTransfer(format!("no group {i}"))),
        })
    }

    /// Stores `items` (a block to read, and the hash to keep it under).
    fn store(
        &mut self,
        items: &[(BlockId, BlockHash)],
        mut read: impl FnMut(BlockId, &mut Vec<u8>) -> Result<()>,
    ) -> usize {
        let mut stored = 0;
        // One at a time: each copy is settled before the next is planned, so a batch
        // larger than host memory still passes through it (and on to disk), the last
        // ones staying.
        for e in items {
            let Some(op) = self.index.plan_store(std::slice::from_ref(e)).pop() else { continue };
            // The slot's last buffer, when no reader still shares it: its memory is
            // already mapped (fresh pages cost more than the copy).
            let mut data = self.slots[op.slot as usize]
                .take()
                .and_then(|b| b.try_into_mut().ok())
                .map(Vec::from)
                .unwrap_or_default();
            match read(op.block, &mut data) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(block = op.block, error = %e, "cannot read an evicted block; not offloaded");
                    self.index.store_done(&op.hash, false);
                    continue;
                }
            };
            self.stats.stored_bytes += data.len() as u64;
            let data = Bytes::from(data);
            if let Some(d) = self.disk.as_mut() {
                d.store(&[(op.hash, data.clone())]);
            }
            self.slots[op.slot as usize] = Some(data);
            self.index.store_done(&op.hash, true);
            stored += 1;
        }
        self.stats.stored_blocks += stored as u64;
        self.collect_events();
        stored
    }

    /// Counts a prompt's lookups toward the store threshold.
    pub fn note_lookups(&mut self, hashes: &[BlockHash]) {
        self.index.note_lookups(hashes);
    }

    /// The longest leading run of `hashes` host memory holds, one buffer per block
    /// (shared, not copied). Counts as a use for the eviction policy.
    pub fn load_prefix(&mut self, hashes: &[BlockHash]) -> Vec<Bytes> {
        let n = self.index.lookup(hashes);
        if n == 0 {
            return Vec::new();
        }
        // The buffers are shared out at once, so no slot needs to stay pinned.
        let ops = self.index.plan_load(&hashes[..n], &vec![0; n]);
        let mut out = Vec::with_capacity(ops.len());
        for op in &ops {
            match self.slots.get(op.slot as usize).and_then(Clone::clone) {
                Some(b) => out.push(b),
                None => break,
            }
        }
        for op in &ops {
            self.index.load_done(&op.hash);
        }
        out
    }

    /// Where the leading run of `hashes` is held below the device: host memory's part
    /// shared out at once, the disk's part (the blocks right after it) being read.
    pub fn plan_onboard(&mut self, hashes: &[BlockHash]) -> Onboard {
        let host = self.load_prefix(hashes);
        let rest = &hashes[host.len()..];
        let disk = self.disk.as_mut().and_then(|d| {
            let n = d.lookup(rest);
            (n > 0).then(|| (d.read(&rest[..n]), rest[..n].to_vec()))
        });
        Onboard { host, disk }
    }

    /// Records a prompt admitted with `queried` blocks looked up below the device pool,
    /// `hits` of them found here.
    pub fn note_lookup(&mut self, queried: usize, hits: usize) {
        self.stats.queried_blocks += queried as u64;
        self.stats.hit_blocks += hits as u64;
    }

    /// Records blocks copied back up (after they were written into the device).
    pub fn note_loaded(&mut self, blocks: usize, bytes: usize) {
        self.stats.loaded_blocks += blocks as u64;
        self.stats.loaded_bytes += bytes as u64;
    }

    /// The events since the last call (`BlockStored`/`BlockRemoved`, medium `CPU`, then
    /// the disk tier's).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.collect_events();
        let mut out = std::mem::take(&mut self.events);
        if let Some(d) = self.disk.as_mut() {
            out.extend(d.take_events());
        }
        out
    }

    fn collect_events(&mut self) {
        let ih = self.int_hashes;
        for e in self.index.take_events() {
            // Runs of one kind go out as one event, as vLLM's offloader batches them.
            match (e, self.events.last_mut()) {
                (TierEvent::Stored(h), Some(KvEvent::BlockStored(s))) => {
                    s.block_hashes.push(ExternalBlockHash::from_hash(&h, ih));
                }
                (TierEvent::Removed(h), Some(KvEvent::BlockRemoved(r))) => {
                    r.block_hashes.push(ExternalBlockHash::from_hash(&h, ih));
                }
                (TierEvent::Stored(h), _) => self.events.push(KvEvent::BlockStored(BlockStored {
                    block_hashes: vec![ExternalBlockHash::from_hash(&h, ih)],
                    medium: Some(MEDIUM_CPU.into()),
                    ..Default::default()
                })),
                (TierEvent::Removed(h), _) => self.events.push(KvEvent::BlockRemoved(BlockRemoved {
                    block_hashes: vec![ExternalBlockHash::from_hash(&h, ih)],
                    medium: Some(MEDIUM_CPU.into()),
                    ..Default::default()
                })),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Random operation sequences across host memory and disk: capacities hold, and
    //! every block brought back equals what was offloaded (contents compared), with a
    //! negative control whose device copy misplaces one block.

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use llmd_kvcache::Tier;
    use llmd_kvcache::tier::PolicyKind;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    use super::*;

    const BLOCK: usize = 48;

    fn h(k: u8) -> BlockHash {
        BlockHash::from_bytes(&[k; 32]).unwrap()
    }

    /// What block `k` holds.
    fn contents(k: u8) -> Vec<u8> {
        (0..BLOCK).map(|i| k.wrapping_mul(31).wrapping_add(i as u8)).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The device pool evicts these blocks (device block id = key).
        Evict(Vec<u8>),
        /// A prompt made of these blocks is looked up and brought back.
        Onboard(Vec<u8>),
        /// Disk writes settle.
        Poll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => prop::collection::vec(0u8..16, 1..6).prop_map(Op::Evict),
            2 => prop::collection::vec(0u8..16, 1..8).prop_map(Op::Onboard),
            1 => Just(Op::Poll),
        ]
    }

    fn scratch() -> std::path::PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        std::env::temp_dir().join(format!("llmd-offload-prop-{}-{n}", std::process::id()))
    }

    /// `misplace`: the device copy of block 3 reads block 4's contents (the negative
    /// control). `factor` device blocks per offloaded block: above one, key `k` names a
    /// computed group of device blocks `k * factor ..`, stored whole.
    fn run(policy: PolicyKind, ops: &[Op], misplace: bool, factor: usize) -> Result<(), TestCaseError> {
        let cfg = OffloadConfig {
            cpu_bytes: (4 * BLOCK * factor) as u64,
            block_size: Some(16 * factor),
            eviction_policy: policy,
            ..OffloadConfig::from_size_gib(1.0).unwrap()
        };
        let mut off = Offloader::new(&cfg, 16, BLOCK).unwrap();
        let device = |d: usize| contents(if misplace && d == 3 { 4 } else { d as u8 });
        // What key `k`'s offloaded block holds: its device blocks, one after another.
        let unit =
            |k: u8| -> Vec<u8> { (0..factor).flat_map(|i| contents((usize::from(k) * factor + i) as u8)).collect() };
        let dir = scratch();
        let disk = DiskConfig {
            root: dir.clone(),
            medium: "STORAGE".into(),
            blocks: 7,
            policy,
            read_threads: 2,
            write_threads: 2,
        };
        let ns = Namespace { model: "m".into(), layout: "l".into(), hasher: "h".into() };
        off.attach_disk(DiskTier::open(&disk, &ns).unwrap());
        let mut queue = off.eviction_queue();
        let result = (|| {
            for o in ops {
                match o {
                    Op::Evict(keys) if factor == 1 => {
                        for &k in keys {
                            queue.offload(u32::from(k), &h(k));
                        }
                        off.store_evicted(|b, out| {
                            *out = device(b as usize);
                            Ok(())
                        });
                    }
                    Op::Evict(keys) => {
                        let groups: Vec<(BlockHash, Vec<BlockId>)> = keys
                            .iter()
                            .map(|&k| (h(k), (0..factor).map(|i| (usize::from(k) * factor + i) as BlockId).collect()))
                            .collect();
                        off.store_groups(&groups, |ids, out| {
                            out.clear();
                            for &d in ids {
                                out.extend(device(d as usize));
                            }
                            Ok(())
                        });
                    }
                    Op::Onboard(keys) => {
                        let hashes: Vec<BlockHash> = keys.iter().map(|&k| h(k)).collect();
                        let plan = off.plan_onboard(&hashes);
                        let n = plan.host.len();
                        for (i, b) in plan.host.iter().enumerate() {
                            prop_assert_eq!(&b[..], &unit(keys[i])[..], "host block {}", keys[i]);
                        }
                        // Cut back into device blocks, in order.
                        for (j, b) in off.split(plan.host).iter().enumerate() {
                            let d = usize::from(keys[j / factor]) * factor + j % factor;
                            prop_assert_eq!(&b[..], &contents(d as u8)[..], "device block {}", d);
                        }
                        prop_assert!(n <= keys.len());
                        if let Some((ticket, disk_hashes)) = plan.disk {
                            let d = off.disk_mut().unwrap();
                            let mut got = Vec::new();
                            for _ in 0..500 {
                                if got.len() == disk_hashes.len() {
                                    break;
                                }
                                d.wait(Duration::from_millis(10));
                                got.extend(d.poll().into_iter().filter(|r| r.ticket == ticket));
                            }
                            prop_assert_eq!(got.len(), disk_hashes.len(), "disk reads finished");
                            for r in got {
                                let k = r.hash.as_bytes()[0];
                                let data = r.data.unwrap();
                                prop_assert_eq!(&data[..], &unit(k)[..], "disk block {}", k);
                            }
                        }
                    }
                    Op::Poll => {
                        if let Some(d) = off.disk_mut() {
                            d.flush(Duration::from_secs(10));
                        }
                    }
                }
                prop_assert!(off.used() <= off.capacity(), "host memory over capacity");
                let d = off.disk().unwrap();
                prop_assert!(d.used() <= d.capacity(), "disk over capacity");
            }
            Ok(())
        })();
        drop(off);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    proptest! {
        #![proptest_config(Config { cases: 48, ..Config::default() })]

        #[test]
        fn onboarded_blocks_equal_what_was_offloaded(
            lru in any::<bool>(),
            factor in 1usize..=3,
            ops in prop::collection::vec(op(), 1..40),
        ) {
            run(if lru { PolicyKind::Lru } else { PolicyKind::Arc }, &ops, false, factor)?;
        }
    }

    #[test]
    fn negative_control_a_misplaced_copy_is_caught() {
        for factor in [1, 2] {
            let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
            let found = runner.run(&prop::collection::vec(op(), 1..40), |ops| run(PolicyKind::Lru, &ops, true, factor));
            assert!(found.is_err(), "factor {factor}: the property must catch a block copied from the wrong place");
        }
    }
}
