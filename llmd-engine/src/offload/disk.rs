//! The disk tier: KV blocks as files under a directory, which several replicas may
//! share (llm-d's shared-storage tier).
//!
//! - **Namespaced**: blocks live under `<root>/<namespace>/`, the namespace a hash of
//!   the model, the block layout and the block hasher, which `config.json` there spells
//!   out. Blocks of another model or layout are never looked at, let alone served.
//! - **Crash-safe**: a block is written to a temporary file and renamed into place, so
//!   a reader sees a whole file or none. Each file carries its hash, length and an
//!   xxh3 checksum of its contents; a file that fails them (a crash mid-write on a file
//!   system without ordered renames, bit rot, a truncation) is deleted and its block
//!   computed again, never served.
//! - **Rebuilt at start**: the index is rebuilt from the files present (their contents
//!   are checked when read); temporary files a crashed writer left are removed once
//!   they are old enough not to be another replica's write in progress.
//! - **Shared safely**: two replicas writing the same block each write their own
//!   temporary file and rename it over the other's; both hold the same block.
//! - **Bounded**: a cap in blocks with LRU or ARC eviction (eviction deletes the file).
//! - **Off the engine thread**: reads and writes run on thread pools; results come back
//!   through [`DiskTier::poll`]. Jobs for one block always go to the same writer, so a
//!   delete and a later write of it cannot swap.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use llmd_kvcache::tier::{PolicyKind, TierConfig, TierEvent, TierIndex};
use llmd_kvcache::{BlockHash, BlockRemoved, BlockStored, ExternalBlockHash, KvEvent};
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{EngineError, Result};

const MAGIC: &[u8; 8] = b"LLMDKV01";
const HEADER: usize = 8 + 1 + 32 + 8 + 8;
/// Writes queued per writer thread at most.
const WRITES_PER_THREAD: usize = 64;
/// Temporary files older than this are a crashed writer's, not a live one's.
const STALE_TMP: Duration = Duration::from_secs(600);

/// What blocks in a directory were computed with: a different value means a different
/// namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The model and whatever else decides its weights (e.g. the built-in model's seed).
    pub model: String,
    /// The block layout, spelled out.
    pub layout: String,
    /// The block hasher (algorithm and seed), spelled out.
    pub hasher: String,
}

impl Namespace {
    fn describe(&self) -> String {
        format!(
            "{{\"format\": \"llmd-kv-v1\", \"model\": {:?}, \"layout\": {:?}, \"hasher\": {:?}}}\n",
            self.model, self.layout, self.hasher
        )
    }

    fn dir_name(&self) -> String {
        let safe: String = self
            .model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
            .take(48)
            .collect();
        format!("{safe}_{:016x}", xxh3_64(self.describe().as_bytes()))
    }
}

/// The disk tier's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The directory (shared or not).
    pub root: PathBuf,
    /// The medium its events name (`STORAGE`, or e.g. `SHARED_STORAGE`).
    pub medium: String,
    /// Blocks it holds at most.
    pub blocks: usize,
    /// What it gives up when full.
    pub policy: PolicyKind,
    /// Reader threads.
    pub read_threads: usize,
    /// Writer threads.
    pub write_threads: usize,
}

enum WriteJob {
    Write(BlockHash, Bytes),
    Delete(BlockHash),
}

struct ReadJob {
    ticket: u64,
    hash: BlockHash,
}

enum Done {
    Wrote(BlockHash, bool),
    Deleted(BlockHash),
    Read { ticket: u64, hash: BlockHash, data: std::result::Result<Bytes, String> },
}

/// One block read back, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    /// The ticket [`DiskTier::read`] gave.
    pub ticket: u64,
    /// The block.
    pub hash: BlockHash,
    /// Its contents, verified; `None` if missing or corrupt (then forgotten).
    pub data: Option<Bytes>,
}

/// Counters of the disk tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Blocks written.
    pub written_blocks: u64,
    /// Their bytes.
    pub written_bytes: u64,
    /// Blocks read back and verified.
    pub read_blocks: u64,
    /// Their bytes.
    pub read_bytes: u64,
    /// Files found corrupt or missing when read (dropped, recomputed).
    pub bad_blocks: u64,
    /// Files found at start.
    pub adopted_blocks: u64,
    /// Blocks not written because the write queue was full.
    pub skipped_blocks: u64,
}

/// Block files under one namespace directory.
pub struct DiskTier {
    dir: PathBuf,
    medium: String,
    index: TierIndex,
    writers: Vec<Sender<WriteJob>>,
    reads: Option<Sender<ReadJob>>,
    done: Receiver<Done>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pending_writes: HashMap<BlockHash, usize>,
    // Files given up whose deletion has not run yet: not to be adopted again from disk.
    deleting: HashMap<BlockHash, u32>,
    // Results taken off the channel by `wait`, for the next `poll`.
    buffered: Vec<Done>,
    next_ticket: u64,
    int_hashes: bool,
    events: Vec<KvEvent>,
    stats: DiskStats,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier").field("dir", &self.dir).field("index", &self.index).finish_non_exhaustive()
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> EngineError {
    EngineError::config("kv-transfer-config", "secondary_tiers", format!("{what} {}: {e}", path.display()))
}

fn file_name(hash: &BlockHash) -> String {
    format!("{}.kv", hash.to_hex())
}

fn block_path(dir: &Path, hash: &BlockHash) -> PathBuf {
    let hex = hash.to_hex();
    dir.join(&hex[..2.min(hex.len())]).join(file_name(hash))
}

fn parse_hex(s: &str) -> Option<BlockHash> {
    if !s.len().is_multiple_of(2) || s.len() > 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    BlockHash::from_bytes(&bytes?)
}

/// A block's file contents: magic, hash, length, checksum, data.
fn encode(hash: &BlockHash, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + data.len());
    out.extend_from_slice(MAGIC);
    let h = hash.as_bytes();
    out.push(h.len() as u8);
    let mut padded = [0u8; 32];
    padded[..h.len()].copy_from_slice(h);
    out.extend_from_slice(&padded);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxh3_64(data).to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// Checks a file's contents against the hash it should hold; the data if whole.
fn decode(hash: &BlockHash, file: Vec<u8>) -> std::result::Result<Bytes, String> {
    if file.len() < HEADER || &file[..8] != MAGIC {
        return Err(format!("not a block file ({} bytes)", file.len()));
    }
    let n = file[8] as usize;
    if n > 32 || &file[9..9 + n] != hash.as_bytes() {
        return Err("holds another block's hash".into());
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&file[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (len, sum) = (word(41), word(49));
    let data = &file[HEADER..];
    if data.len() as u64 != len {
        return Err(format!("{} bytes of data, header says {len}", data.len()));
    }
    if xxh3_64(data) != sum {
        return Err("checksum mismatch".into());
    }
    // The file's buffer, not a copy of it.
    Ok(Bytes::from(file).slice(HEADER..))
}

fn write_block(dir: &Path, tmp_dir: &Path, hash: &BlockHash, data: &[u8], seq: u64) -> std::io::Result<()> {
    let path = block_path(dir, hash);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    // Unique per process and write: a concurrent writer of the same block (another
    // replica on a shared directory) renames its own file, never half of ours.
    let tmp = tmp_dir.join(format!("{}.{}.{seq}.tmp", hash.to_hex(), std::process::id()));
    let mut f = fs::File::create(&tmp)?;
    let result = f.write_all(&encode(hash, data)).and_then(|()| fs::rename(&tmp, &path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn read_block(dir: &Path, hash: &BlockHash) -> std::result::Result<Bytes, String> {
    let path = block_path(dir, hash);
    let mut buf = Vec::new();
    fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(hash, buf)
}

impl DiskTier {
    /// Opens (creating) the namespace directory under `cfg.root`, adopts the block
    /// files already there (up to the cap), and starts the thread pools.
    pub fn open(cfg: &DiskConfig, ns: &Namespace) -> Result<Self> {
        let dir = cfg.root.join(ns.dir_name());
        let tmp_dir = dir.join(".tmp");
        fs::create_dir_all(&tmp_dir).map_err(|e| io("cannot create", &tmp_dir, e))?;
        let described = ns.describe();
        let config = dir.join("config.json");
        match fs::read_to_string(&config) {
            Ok(s) if s == described => {}
            Ok(s) => {
                return Err(EngineError::config(
                    "kv-transfer-config",
                    "secondary_tiers",
                    format!(
                        "{} describes other blocks ({}) than this engine's ({})",
                        config.display(),
                        s.trim(),
                        described.trim()
                    ),
                ));
            }
            Err(_) => {
                // Renamed into place, as blocks are: concurrent starters agree.
                let tmp = tmp_dir.join(format!("config.{}.tmp", std::process::id()));
                fs::write(&tmp, &described)
                    .and_then(|()| fs::rename(&tmp, &config))
                    .map_err(|e| io("cannot write", &config, e))?;
            }
        }
        let mut index = TierIndex::new(TierConfig {
            medium: cfg.medium.clone(),
            blocks: cfg.blocks,
            policy: cfg.policy,
            store_threshold: 0,
            tracker_size: 0,
        });
        let mut stats = DiskStats::default();
        let now = SystemTime::now();
        // Old temporary files are a crashed writer's.
        if let Ok(entries) = fs::read_dir(&tmp_dir) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP);
                if old {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let mut found = Vec::new();
        for sub in fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))?.flatten() {
            if !sub.file_type().is_ok_and(|t| t.is_dir()) || sub.file_name() == ".tmp" {
                continue;
            }
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                let name = f.file_name();
                let Some(hash) = name.to_str().and_then(|n| n.strip_suffix(".kv")).and_then(parse_hex) else {
                    continue;
                };
                let mtime = f.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
                found.push((mtime, hash));
            }
        }
        // Oldest first, so the recency order the policy starts with is the files'.
        found.sort();
        for (_, hash) in found.into_iter().take(cfg.blocks) {
            for op in index.plan_store(&[(0, hash)]) {
                index.store_done(&op.hash, true);
                stats.adopted_blocks += 1;
            }
        }
        // What adopting announced is the state at start, not news.
        index.take_events();
        tracing::info!(dir = %dir.display(), blocks = stats.adopted_blocks, cap = cfg.blocks, "KV disk tier opened");

        let (done_tx, done) = crossbeam_channel::unbounded();
        let mut threads = Vec::new();
        let mut writers = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f).map_err(|e| io("cannot start a thread for", &cfg.root, e))
        };
        for i in 0..cfg.write_threads.max(1) {
            let (tx, rx) = crossbeam_channel::unbounded::<WriteJob>();
            writers.push(tx);
            let (dir, tmp_dir, done) = (dir.clone(), tmp_dir.clone(), done_tx.clone());
            threads.push(spawn(
                format!("kv-disk-w{i}"),
                Box::new(move || {
                    let mut seq = 0u64;
                    for job in rx {
                        match job {
                            WriteJob::Write(hash, data) => {
                                seq += 1;
                                let ok = match write_block(&dir, &tmp_dir, &hash, &data, seq) {
                                    Ok(()) => true,
                                    Err(e) => {
                                        tracing::warn!(error = %e, block = %hash, "cannot write a KV block to disk");
                                        false
                                    }
                                };
                                if done.send(Done::Wrote(hash, ok)).is_err() {
                                    return;
                                }
                            }
                            WriteJob::Delete(hash) => {
                                let _ = fs::remove_file(block_path(&dir, &hash));
                                if done.send(Done::Deleted(hash)).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }),
            )?);
        }
        let (read_tx, read_rx) = crossbeam_channel::unbounded::<ReadJob>();
        for i in 0..cfg.read_threads.max(1) {
            let (dir, rx, done) = (dir.clone(), read_rx.clone(), done_tx.clone());
            threads.push(spawn(
                format!("kv-disk-r{i}"),
                Box::new(move || {
                    for ReadJob { ticket, hash } in rx {
                        let data = read_block(&dir, &hash);
                        if done.send(Done::Read { ticket, hash, data }).is_err() {
                            return;
                        }
                    }
                }),
            )?);
        }
        Ok(DiskTier {
            dir,
            medium: cfg.medium.clone(),
            index,
            writers,
            reads: Some(read_tx),
            done,
            threads,
            pending_writes: HashMap::new(),
            deleting: HashMap::new(),
            buffered: Vec::new(),
            next_ticket: 0,
            int_hashes: false,
            events: Vec::new(),
            stats,
        })
    }

    /// Event hashes as 64-bit integers.
    pub fn with_int_event_hashes(mut self, on: bool) -> Self {
        self.int_hashes = on;
        self
    }

    /// The namespace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The medium its events name.
    pub fn medium(&self) -> &str {
        &self.medium
    }

    /// Blocks held or being written.
    pub fn used(&self) -> usize {
        self.index.used()
    }

    /// Blocks it holds at most.
    pub fn capacity(&self) -> usize {
        self.index.config().blocks
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    fn writer(&self, hash: &BlockHash) -> Option<&Sender<WriteJob>> {
        let n = self.writers.len().max(1);
        self.writers.get(hash.as_bytes().first().map_or(0, |&b| b as usize) % n)
    }

    /// Queues blocks to be written (those not held already); a full tier gives up
    /// blocks no read is using, deleting their files.
    pub fn store(&mut self, blocks: &[(BlockHash, Bytes)]) {
        // A disk slower than evictions: the blocks stay in host memory only, rather
        // than queueing without bound.
        let room = (self.writers.len() * WRITES_PER_THREAD).saturating_sub(self.pending_writes.len());
        if blocks.len() > room {
            self.stats.skipped_blocks += (blocks.len() - room) as u64;
        }
        let blocks = &blocks[..blocks.len().min(room)];
        let plan: Vec<_> = blocks.iter().map(|(h, _)| (0, *h)).collect();
        let ops = self.index.plan_store(&plan);
        self.flush_removals();
        for op in ops {
            let Some(data) = blocks.iter().find(|(h, _)| *h == op.hash).map(|(_, d)| d.clone()) else { continue };
            *self.pending_writes.entry(op.hash).or_default() = data.len();
            let sent = self.writer(&op.hash).is_some_and(|w| w.send(WriteJob::Write(op.hash, data)).is_ok());
            if !sent {
                self.pending_writes.remove(&op.hash);
                self.index.store_done(&op.hash, false);
            }
        }
    }

    fn delete(&mut self, h: BlockHash) {
        let sent = self.writer(&h).is_some_and(|w| w.send(WriteJob::Delete(h)).is_ok());
        if sent {
            *self.deleting.entry(h).or_default() += 1;
        }
    }

    fn flush_removals(&mut self) {
        let ih = self.int_hashes;
        for e in self.index.take_events() {
            match e {
                TierEvent::Removed(h) => {
                    self.delete(h);
                    match self.events.last_mut() {
                        Some(KvEvent::BlockRemoved(r)) => r.block_hashes.push(ExternalBlockHash::from_hash(&h, ih)),
                        _ => self.events.push(KvEvent::BlockRemoved(BlockRemoved {
                            block_hashes: vec![ExternalBlockHash::from_hash(&h, ih)],
                            medium: Some(self.medium.clone()),
                            ..Default::default()
                        })),
                    }
                }
                TierEvent::Stored(h) => match self.events.last_mut() {
                    Some(KvEvent::BlockStored(s)) => s.block_hashes.push(ExternalBlockHash::from_hash(&h, ih)),
                    _ => self.events.push(KvEvent::BlockStored(BlockStored {
                        block_hashes: vec![ExternalBlockHash::from_hash(&h, ih)],
                        medium: Some(self.medium.clone()),
                        ..Default::default()
                    })),
                },
            }
        }
    }

    /// How many leading blocks of `hashes` are on disk. A block this tier has not
    /// written may have been written by another replica sharing the directory: the
    /// first one the index lacks is looked for on disk (one `stat`), and adopted if
    /// there.
    pub fn lookup(&mut self, hashes: &[BlockHash]) -> usize {
        let mut n = self.index.lookup(hashes);
        while let Some(h) = hashes.get(n) {
            if self.deleting.contains_key(h) || !block_path(&self.dir, h).is_file() {
                break;
            }
            if !self.adopt(h) {
                break;
            }
            n += 1;
            n += self.index.lookup(&hashes[n..]);
        }
        n
    }

    /// Takes a file found on disk into the index; whether it is readable now.
    fn adopt(&mut self, hash: &BlockHash) -> bool {
        for op in self.index.plan_store(&[(0, *hash)]) {
            self.index.store_done(&op.hash, true);
        }
        self.index.lookup(std::slice::from_ref(hash)) == 1
    }

    /// Starts reading the first `n` of `hashes` (as [`lookup`](Self::lookup) found
    /// them); their results come back from [`poll`](Self::poll) under the returned
    /// ticket. They cannot be given up while being read.
    pub fn read(&mut self, hashes: &[BlockHash]) -> u64 {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        let ops = self.index.plan_load(hashes, &vec![0; hashes.len()]);
        for op in ops {
            let sent = self.reads.as_ref().is_some_and(|r| r.send(ReadJob { ticket, hash: op.hash }).is_ok());
            if !sent {
                self.index.load_done(&op.hash);
            }
        }
        ticket
    }

    /// Settles finished writes and returns finished reads. A block that failed its
    /// checks is forgotten and its file deleted.
    pub fn poll(&mut self) -> Vec<ReadResult> {
        let mut out = Vec::new();
        let mut buffered = std::mem::take(&mut self.buffered).into_iter();
        while let Some(d) = buffered.next().or_else(|| self.done.try_recv().ok()) {
            out.extend(self.settle(d));
        }
        self.flush_removals();
        out
    }

    fn settle(&mut self, d: Done) -> Option<ReadResult> {
        match d {
            Done::Wrote(hash, ok) => {
                let bytes = self.pending_writes.remove(&hash).unwrap_or(0);
                if ok {
                    self.stats.written_blocks += 1;
                    self.stats.written_bytes += bytes as u64;
                }
                self.index.store_done(&hash, ok);
                None
            }
            Done::Deleted(hash) => {
                if let Some(n) = self.deleting.get_mut(&hash) {
                    *n -= 1;
                    if *n == 0 {
                        self.deleting.remove(&hash);
                    }
                }
                None
            }
            Done::Read { ticket, hash, data } => {
                self.index.load_done(&hash);
                let data = match data {
                    Ok(d) => {
                        self.stats.read_blocks += 1;
                        self.stats.read_bytes += d.len() as u64;
                        Some(d)
                    }
                    Err(reason) => {
                        tracing::warn!(block = %hash, %reason, "dropping a KV block file that fails its checks");
                        self.stats.bad_blocks += 1;
                        if self.index.invalidate(&hash) {
                            // `invalidate` announced the removal; the delete follows.
                            self.flush_removals();
                        }
                        None
                    }
                };
                Some(ReadResult { ticket, hash, data })
            }
        }
    }

    /// Blocks until a write or read finishes, or `timeout` passes (for an engine with
    /// nothing to do but wait for reads).
    pub fn wait(&mut self, timeout: Duration) {
        if let Ok(d) = self.done.recv_timeout(timeout) {
            self.buffered.push(d);
        }
    }

    /// Whether writes are still in flight.
    pub fn busy(&self) -> bool {
        !self.pending_writes.is_empty()
    }

    /// Writes queued or in flight.
    pub fn queued_writes(&self) -> usize {
        self.pending_writes.len()
    }

    /// The events since the last call (`BlockStored`/`BlockRemoved` with this tier's
    /// medium).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.flush_removals();
        std::mem::take(&mut self.events)
    }

    /// Waits for queued writes to finish (at shutdown, and in tests); reads that
    /// finish meanwhile are returned.
    pub fn flush(&mut self, timeout: Duration) -> Vec<ReadResult> {
        let deadline = std::time::Instant::now() + timeout;
        let mut reads = self.poll();
        while self.busy() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(d) = self.done.recv_timeout(left.min(Duration::from_millis(50))) {
                reads.extend(self.settle(d));
            }
        }
        self.flush_removals();
        reads
    }
}

impl Drop for DiskTier {
    fn drop(&mut self) {
        // Closing the queues ends the workers once they finish what is queued.
        self.writers.clear();
        self.reads = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn h(i: u32) -> BlockHash {
        BlockHash::from_bytes(&[i.to_be_bytes().as_slice(), &[7u8; 28]].concat()).unwrap()
    }

    #[test]
    fn files_round_trip_and_damage_of_any_kind_is_caught() {
        let data = b"keys and values".to_vec();
        let f = encode(&h(1), &data);
        assert_eq!(decode(&h(1), f.clone()).unwrap(), Bytes::from(data));
        assert!(decode(&h(2), f.clone()).unwrap_err().contains("another block"));
        for cut in [0, 5, HEADER - 1, f.len() - 1] {
            assert!(decode(&h(1), f[..cut].to_vec()).is_err(), "truncated at {cut}");
        }
        for i in [0, 9, 41, 49, HEADER, f.len() - 1] {
            let mut bad = f.clone();
            bad[i] ^= 0x40;
            assert!(decode(&h(1), bad).is_err(), "flipped byte {i}");
        }
        assert_eq!(parse_hex(&h(3).to_hex()), Some(h(3)));
        assert_eq!(parse_hex("zz"), None);
    }
}
