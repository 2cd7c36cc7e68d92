//! The engine's side of KV offloading ([`crate::offload`]): evicted blocks are copied
//! down before their memory is reused, and a waiting request's prefix that misses the
//! device pool but is held below is copied back up at admission (through the same
//! path as blocks pulled from a prefill engine, [`RemoteBlocks`]). Blocks on disk are
//! read off the engine thread first: the request leaves the waiting queue until they
//! are in, and others run meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use llmd_kvcache::BlockHash;

use super::transfer::RemoteBlocks;
use super::{Engine, KvLoadFailurePolicy};
use crate::error::{EngineError, Result};
use crate::offload::{
    DiskConfig, DiskTier, MEDIUM_CPU, Namespace, OffloadConfig, OffloadStats, Offloader, SecondaryTier,
};

/// A request's offloaded blocks while the disk's part is read.
#[derive(Debug)]
pub(super) struct PendingLoad {
    first_block: usize,
    host: Vec<Bytes>,
    disk: Vec<BlockHash>,
    ticket: u64,
    got: HashMap<BlockHash, Option<Bytes>>,
    // Once every read is in: the blocks to write, and how many came from disk.
    ready: Option<(Box<RemoteBlocks>, usize)>,
}

/// What offloading holds of a waiting request's prompt.
pub(super) enum Offloaded {
    /// Nothing past the device hit.
    None,
    /// Blocks to write in now (`from_disk` of them read from disk).
    Ready(Box<RemoteBlocks>, usize),
    /// Some are being read from disk: the request waits aside.
    Reading,
}

impl Engine {
    /// Turns KV offloading on: cached blocks the device pool evicts are kept in host
    /// memory (`cfg.cpu_bytes` of it) and written through to a disk tier if one is
    /// configured, and prompts whose prefix is held there get it copied back instead of
    /// computed. Fails when the backend cannot copy its blocks, the memory holds no
    /// block, or the disk tier's directory cannot be used.
    pub fn enable_offload(&mut self, cfg: &OffloadConfig) -> Result<()> {
        let layout = self.transfer_layout()?;
        let block_bytes = self.backend.kv_block_bytes().unwrap_or_else(|| layout.block_bytes());
        let mut off = Offloader::new(cfg, self.cfg.block_size, block_bytes)?;
        match cfg.secondary.as_slice() {
            [] => {}
            [SecondaryTier::Fs { root_dir, read_threads, write_threads, max_bytes, medium }] => {
                let cap = max_bytes.unwrap_or(cfg.cpu_bytes.saturating_mul(4));
                let unit = off.unit_bytes();
                let disk = DiskConfig {
                    root: root_dir.into(),
                    medium: medium.clone().unwrap_or_else(|| llmd_kvcache::MEDIUM_STORAGE.into()),
                    blocks: usize::try_from(cap / unit.max(1) as u64).unwrap_or(usize::MAX).max(1),
                    policy: cfg.eviction_policy,
                    read_threads: *read_threads,
                    write_threads: *write_threads,
                };
                let hasher = &self.cfg.hasher;
                let ns = Namespace {
                    // The built-in model's weights are drawn from the seed.
                    model: format!("{} seed {}", self.cfg.model_name, self.cfg.seed),
                    // Files of another group size hold other bytes under other hashes.
                    layout: if off.factor() == 1 {
                        format!("{layout:?}, {block_bytes} bytes a block")
                    } else {
                        format!("{layout:?}, {unit} bytes a block of {} device blocks", off.factor())
                    },
                    hasher: format!("{:?} none_hash {}", hasher.algo(), hasher.none_hash().to_hex()),
                };
                let tier = DiskTier::open(&disk, &ns)?;
                self.metrics.offload.set_capacity(tier.medium(), tier.capacity());
                self.metrics.offload.set_used(tier.medium(), tier.used());
                off.attach_disk(tier);
            }
            _ => {
                return Err(EngineError::config(
                    "kv-transfer-config",
                    "secondary_tiers",
                    "llmd takes one fs tier below host memory",
                ));
            }
        }
        // Groups of one are stored as they are evicted; larger ones once computed
        // (`store_computed`).
        if off.factor() == 1 {
            self.kv.set_tier(Box::new(off.eviction_queue()));
        }
        self.metrics.offload.set_capacity(MEDIUM_CPU, off.capacity());
        self.offload = Some(off);
        Ok(())
    }

    /// What offloading moved so far; `None` when it is off.
    pub fn offload_stats(&self) -> Option<OffloadStats> {
        self.offload.as_ref().map(Offloader::stats)
    }

    /// The disk tier's counters; `None` without one.
    pub fn offload_disk_stats(&self) -> Option<crate::offload::DiskStats> {
        self.offload.as_ref()?.disk().map(DiskTier::stats)
    }

    /// Waits (at most `timeout`) for the disk tier's queued writes, e.g. before a
    /// replica stops or another one reads the directory.
    pub fn flush_offload(&mut self, timeout: Duration) {
        let reads = match self.offload.as_mut().and_then(Offloader::disk_mut) {
            Some(d) => d.flush(timeout),
            None => return,
        };
        self.settle_reads(reads);
        self.emit_offload_events();
    }

    /// Copies the blocks the last allocation evicted down to host memory (and queues
    /// them for disk), before anything is written into them.
    pub(super) fn store_evicted(&mut self) {
        let Some(off) = self.offload.as_mut() else { return };
        let backend = &self.backend;
        let bytes_before = off.stats().stored_bytes;
        let stored = off.store_evicted(|b, out| backend.export_kv_blocks_into(&[b], out));
        // Most allocations evict nothing worth storing: nothing to count or announce.
        self.note_stored(stored, bytes_before);
    }

    /// Stores the groups of device blocks the step just run completed (offloaded
    /// blocks larger than the engine's; see [`Offloader::store_groups`]).
    pub(super) fn store_computed(&mut self, sched: &[(String, usize)]) {
        let Some(off) = self.offload.as_mut() else { return };
        let k = off.factor();
        if k == 1 {
            return;
        }
        let bs = self.cfg.block_size;
        let mut groups = Vec::new();
        for (id, n) in sched {
            let Some(st) = self.reqs.get_mut(id) else { continue };
            let hashes = st.seq.block_hashes();
            let done = ((st.num_computed + n) / bs).min(hashes.len()) / k;
            let Some(table) = self.kv.block_table(id) else { continue };
            for g in st.offload_groups..done {
                match (hashes.get(g * k + k - 1), table.get(g * k..(g + 1) * k)) {
                    (Some(key), Some(ids)) => groups.push((*key, ids.to_vec())),
                    _ => break,
                }
            }
            st.offload_groups = st.offload_groups.max(done);
        }
        if groups.is_empty() {
            return;
        }
        let backend = &self.backend;
        let bytes_before = off.stats().stored_bytes;
        let stored = off.store_groups(&groups, |ids, out| backend.export_kv_blocks_into(ids, out));
        self.note_stored(stored, bytes_before);
    }

    /// Counts and announces `stored` blocks just copied down (nothing when none were).
    fn note_stored(&mut self, stored: usize, bytes_before: u64) {
        let Some(off) = self.offload.as_ref() else { return };
        if stored == 0 {
            return;
        }
        let m = &self.metrics.offload;
        m.stored(MEDIUM_CPU, stored as u64, off.stats().stored_bytes - bytes_before);
        m.set_used(MEDIUM_CPU, off.used());
        self.emit_offload_events();
    }

    fn emit_offload_events(&mut self) {
        let Some(off) = self.offload.as_mut() else { return };
        let events = off.take_events();
        let block_size = (self.cfg.block_size * off.factor()) as u32;
        let sink = self.kv.sink_mut();
        for mut e in events {
            // As vLLM's offloader: the offloaded block size.
            if let llmd_kvcache::KvEvent::BlockStored(s) = &mut e {
                s.block_size = block_size;
            }
            sink.emit_ahead_of_removals(e);
        }
    }

    /// What offloading holds of a waiting request's prompt past its `local` device
    /// hit; counts the prompt's lookups toward the store threshold. A request that must
    /// wait for disk reads is moved from the waiting queue's front aside.
    pub(super) fn offloaded_prefix(&mut self, id: &str, local: usize) -> Offloaded {
        let Ok(layout) = self.transfer_layout() else { return Offloaded::None };
        let Some(st) = self.reqs.get_mut(id) else { return Offloaded::None };
        if let Some(ready) = st.load.take().and_then(|l| l.ready) {
            return Offloaded::Ready(ready.0, ready.1);
        }
        let Some(off) = self.offload.as_mut() else { return Offloaded::None };
        // As for a device hit, the prompt's last token is always computed.
        let full = (st.prompt_len.saturating_sub(1) / self.cfg.block_size).min(st.seq.block_hashes().len());
        // Offloaded blocks are held under their last device block's hash.
        let k = off.factor();
        let keys: Vec<BlockHash> = st.seq.block_hashes()[..full].iter().skip(k - 1).step_by(k).copied().collect();
        if st.scheduled_at.is_none() {
            off.note_lookups(&keys);
        }
        // From the group the device hit ends in: its blocks before `local` are not
        // written again.
        let first = local / k;
        let Some(rest) = keys.get(first..) else { return Offloaded::None };
        let plan = off.plan_onboard(rest);
        match plan.disk {
            None if plan.host.is_empty() => Offloaded::None,
            None => Offloaded::Ready(
                Box::new(RemoteBlocks {
                    layout,
                    first_block: first * k,
                    blocks: off.split(plan.host),
                    on_failure: KvLoadFailurePolicy::Recompute,
                }),
                0,
            ),
            Some((ticket, disk)) => {
                st.load = Some(PendingLoad {
                    first_block: first * k,
                    host: plan.host,
                    disk,
                    ticket,
                    got: HashMap::new(),
                    ready: None,
                });
                self.waiting.retain(|w| w != id);
                self.loading.push(id.to_string());
                Offloaded::Reading
            }
        }
    }

    /// Takes finished disk reads; requests whose blocks are all in go back to the front
    /// of the waiting queue.
    pub(super) fn poll_loads(&mut self) {
        let Some(disk) = self.offload.as_mut().and_then(Offloader::disk_mut) else { return };
        let reads = disk.poll();
        let (medium, used) = (disk.medium().to_string(), disk.used());
        self.metrics.offload.set_used(&medium, used);
        self.settle_reads(reads);
        self.emit_offload_events();
    }

    fn settle_reads(&mut self, reads: Vec<crate::offload::ReadResult>) {
        if reads.is_empty() {
            return;
        }
        let Ok(layout) = self.transfer_layout() else { return };
        let Some(off) = self.offload.as_ref() else { return };
        let by_ticket: HashMap<u64, String> =
            self.loading.iter().filter_map(|id| Some((self.reqs.get(id)?.load.as_ref()?.ticket, id.clone()))).collect();
        let mut done = Vec::new();
        for r in reads {
            let Some(id) = by_ticket.get(&r.ticket) else { continue };
            let Some(load) = self.reqs.get_mut(id).and_then(|st| st.load.as_mut()) else { continue };
            load.got.insert(r.hash, r.data);
            if load.got.len() == load.disk.len() {
                // The leading run that verified: a block missing or corrupt ends it.
                let mut blocks = std::mem::take(&mut load.host);
                let from_disk = load.disk.iter().map_while(|h| load.got.get(h).cloned().flatten()).count();
                blocks.extend(load.disk.iter().take(from_disk).filter_map(|h| load.got.remove(h).flatten()));
                let r = RemoteBlocks {
                    layout,
                    first_block: load.first_block,
                    blocks: off.split(blocks),
                    on_failure: KvLoadFailurePolicy::Recompute,
                };
                load.ready = Some((Box::new(r), from_disk * off.factor()));
                done.push(id.clone());
            }
        }
        // Back to the front, in the order they were parked.
        for id in self.loading.iter().filter(|id| done.contains(id)).rev() {
            self.waiting.push_front(id.clone());
        }
        self.loading.retain(|id| !done.contains(id));
    }

    /// Keeps blocks read back for a request that could not be admitted yet.
    pub(super) fn keep_loaded(&mut self, id: &str, r: Box<RemoteBlocks>, from_disk: usize) {
        if let Some(st) = self.reqs.get_mut(id) {
            st.load = Some(PendingLoad {
                first_block: r.first_block,
                host: Vec::new(),
                disk: Vec::new(),
                ticket: 0,
                got: HashMap::new(),
                ready: Some((r, from_disk)),
            });
        }
    }

    /// With nothing else to run: blocks briefly for the disk tier's next result.
    pub(super) fn wait_for_disk(&mut self) {
        if let Some(d) = self.offload.as_mut().and_then(Offloader::disk_mut) {
            d.wait(Duration::from_millis(20));
        }
    }

    /// Records a request admitted with `looked_up` prompt blocks past its device hit, of
    /// which `onboarded` were copied back up (`from_disk` of them read from disk) in
    /// `took`; for a simulated backend, the request waits for the modelled copy instead.
    pub(super) fn note_onboarded(
        &mut self,
        id: &str,
        looked_up: usize,
        onboarded: usize,
        from_disk: usize,
        took: Duration,
    ) {
        let Some(off) = self.offload.as_mut() else { return };
        let bs = self.cfg.block_size;
        let block_bytes = off.block_bytes();
        off.note_lookup(looked_up, onboarded);
        off.note_loaded(onboarded, onboarded * block_bytes);
        let disk_medium = off.disk().map(|d| d.medium().to_string());
        let m = &self.metrics.offload;
        let Some(st) = self.reqs.get_mut(id) else { return };
        m.external_queries.inc_by(st.prompt_len as u64);
        m.external_hits.inc_by((onboarded * bs) as u64);
        if onboarded == 0 {
            return;
        }
        let host = onboarded.saturating_sub(from_disk);
        m.loaded(MEDIUM_CPU, host as u64, (host * block_bytes) as u64);
        if let Some(dm) = &disk_medium {
            m.loaded(dm, from_disk as u64, (from_disk * block_bytes) as u64);
        }
        let took = match self.backend.simulated_onboard_time(onboarded * bs, from_disk * bs) {
            Some(d) => {
                st.ready_at = Some(self.clock.now() + d);
                d
            }
            None => took,
        };
        let medium = match (&disk_medium, from_disk) {
            (Some(dm), 1..) => dm.as_str(),
            _ => MEDIUM_CPU,
        };
        m.load_seconds(medium, took.as_secs_f64());
    }
}
