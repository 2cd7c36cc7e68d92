//! `burst-prefix-cache-producer` (llm-d-router, alpha): co-locates bursts of
//! prompt-sharing requests (the `n` samples of an RL rollout step, say) so a shared
//! prompt is prefilled once instead of being scattered over cold replicas.
//!
//! Requests arriving within `windowDurationMs` are placed jointly ([`assign`], the
//! router's algorithm): identical prompt prefixes form groups, kept on one replica (or
//! up to `maxPerReplica` per replica, then spilled to the least loaded); with
//! `minColocateBlocks > 0`, units sharing that many leading blocks are steered together
//! within a fair share of the batch. The placement reaches the pick as prefix match
//! information: the producer, bound to the `prefix-cache-scorer` that names it in
//! `prefixMatchInfoProducerName`, scores 1 on the assigned replica and 0 elsewhere and
//! leaves a [`PrefixMatch`] with a full match there.
//!
//! llmd's pick is synchronous, so the waiting happens before it: the front end joins a
//! `BurstWindow` (feature `runtime`), which collects the window's requests, assigns
//! them, records each assignment by request id for a short while
//! ([`ASSIGNMENT_TTL`]), and answers each waiter; the pick that follows reads the
//! record. [`Batcher`] is the window's bookkeeping without a runtime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use xxhash_rust::xxh64::{Xxh64, xxh64};

use super::Params;
use super::prefix::{IdMap, PREFIX_MATCH_KEY, PrefixMatch};
use crate::clock::{Clock, SystemClock};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, PluginHandle, Scorer};
use crate::registry::PluginRegistry;
use crate::request::LlmRequest;

/// The plugin type.
pub const TYPE: &str = "burst-prefix-cache-producer";

/// How long a request's assignment stays readable after its window sealed: the pick
/// follows the join at once, and a retry of the same request soon after.
pub const ASSIGNMENT_TTL: Duration = Duration::from_secs(10);

/// The router's bound on `windowDurationMs`: every request waits up to the window, so
/// a large value is refused rather than stalling every request.
const MAX_WINDOW_MS: i64 = 10_000;

/// Leading blocks that form a group key when `maxPrefixTokensToMatch` is 0.
const DEFAULT_MAX_PREFIX_BLOCKS: usize = 2048;

/// The router's parameter names.
const PARAMS: &[&str] = &[
    "windowDurationMs",
    "maxPerReplica",
    "blockSizeTokens",
    "maxPrefixTokensToMatch",
    "minColocateBlocks",
    "maxBatchSize",
    "balanceBy",
];

/// The quantity balanced across replicas within a window (`balanceBy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceBy {
    /// By request count (`requests`, the default).
    #[default]
    Requests,
    /// By prefix blocks (`tokens`): a unit's prefix is charged once per replica it
    /// lands on, less the leading blocks already placed there in this window.
    Tokens,
}

impl BalanceBy {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceBy::Requests => "requests",
            BalanceBy::Tokens => "tokens",
        }
    }
}

/// The producer's configuration, as the router's `config` (defaults in parentheses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BurstConfig {
    /// `windowDurationMs` (100): how long a window collects requests (1..=10000 ms).
    pub window: Duration,
    /// `maxPerReplica` (-1): most samples of one group per replica; `None` is -1,
    /// unlimited (a whole group on one replica).
    pub max_per_replica: Option<usize>,
    /// `blockSizeTokens` (64): tokens per prefix block.
    pub block_size_tokens: usize,
    /// `maxPrefixTokensToMatch` (0): cap on hashed prefix tokens; 0 hashes up to 2048
    /// blocks.
    pub max_prefix_tokens_to_match: usize,
    /// `minColocateBlocks` (0): shared leading blocks that steer distinct units together
    /// and give a lone request an affinity; 0 places identical groups only.
    pub min_colocate_blocks: usize,
    /// `maxBatchSize` (1000): most requests one window takes (later ones get no
    /// affinity); `None` is -1, unlimited.
    pub max_batch_size: Option<usize>,
    /// `balanceBy` (`requests`).
    pub balance_by: BalanceBy,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            window: Duration::from_millis(100),
            max_per_replica: None,
            block_size_tokens: 64,
            max_prefix_tokens_to_match: 0,
            min_colocate_blocks: 0,
            max_batch_size: Some(1000),
            balance_by: BalanceBy::Requests,
        }
    }
}

/// An integer parameter as Go decodes it into an `int`: a JSON integer of any sign (a
/// fraction is refused).
fn int(p: &Params<'_>, key: &str, default: i64) -> Result<i64, String> {
    match p.value(key) {
        None => Ok(default),
        Some(v) => v.as_i64().ok_or_else(|| format!("parameter {key}: expected an integer, got {v}")),
    }
}

impl BurstConfig {
    /// From `parameters`, with the router's defaults and checks (unknown keys refused).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let p = Params(p);
        p.check(PARAMS)?;
        let window = int(&p, "windowDurationMs", 100)?;
        let per_replica = int(&p, "maxPerReplica", -1)?;
        let block = int(&p, "blockSizeTokens", 64)?;
        let max_tokens = int(&p, "maxPrefixTokensToMatch", 0)?;
        let min_colocate = int(&p, "minColocateBlocks", 0)?;
        let batch = int(&p, "maxBatchSize", 1000)?;
        let balance = p.string("balanceBy")?.unwrap_or_default();
        // The router's checks, in its order.
        if window <= 0 {
            return Err(format!("parameter windowDurationMs: must be > 0 (current value: {window})"));
        }
        if window > MAX_WINDOW_MS {
            return Err(format!("parameter windowDurationMs: must be <= {MAX_WINDOW_MS} (current value: {window})"));
        }
        if per_replica != -1 && per_replica < 1 {
            return Err(format!(
                "parameter maxPerReplica: must be -1 (unlimited) or >= 1 (current value: {per_replica})"
            ));
        }
        if block <= 0 {
            return Err(format!("parameter blockSizeTokens: must be > 0 (current value: {block})"));
        }
        if max_tokens < 0 {
            return Err(format!("parameter maxPrefixTokensToMatch: must be >= 0 (current value: {max_tokens})"));
        }
        if max_tokens > 0 && max_tokens < block {
            return Err(format!(
                "parameter maxPrefixTokensToMatch: {max_tokens} must be 0 or >= blockSizeTokens ({block}); a smaller \
                 positive value yields zero prefix blocks"
            ));
        }
        if min_colocate < 0 {
            return Err(format!("parameter minColocateBlocks: must be >= 0 (current value: {min_colocate})"));
        }
        if batch != -1 && batch < 1 {
            return Err(format!("parameter maxBatchSize: must be -1 (unlimited) or >= 1 (current value: {batch})"));
        }
        let balance_by = match balance.as_str() {
            "" | "requests" => BalanceBy::Requests,
            "tokens" => BalanceBy::Tokens,
            other => {
                return Err(format!(
                    "parameter balanceBy: must be \"requests\" or \"tokens\" (current value: {other:?})"
                ));
            }
        };
        // Every value is checked positive (or -1) above, so the conversions hold.
        let size = |v: i64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(BurstConfig {
            window: Duration::from_millis(window.unsigned_abs()),
            max_per_replica: (per_replica != -1).then(|| size(per_replica)),
            block_size_tokens: size(block),
            max_prefix_tokens_to_match: size(max_tokens),
            min_colocate_blocks: size(min_colocate),
            max_batch_size: (batch != -1).then(|| size(batch)),
            balance_by,
        })
    }

    /// Leading blocks hashed per request: `maxPrefixTokensToMatch / blockSizeTokens`, or
    /// 2048 when that is 0.
    pub fn max_blocks(&self) -> usize {
        match self.max_prefix_tokens_to_match {
            0 => DEFAULT_MAX_PREFIX_BLOCKS,
            t => t / self.block_size_tokens.max(1),
        }
    }
}

/// A prompt's chained block hashes, as the router's `prefixhash.GetBlockHashes` makes
/// them (the same values): the chain starts from XXH64 of the model name and cache salt;
/// each block of `block_size_tokens` tokens (the last one may be partial) hashes to
/// XXH64 of its tokens' little-endian bytes, and its chain hash is XXH64 of that and its
/// predecessor's (both little-endian). At most `max_blocks` are kept. Equal hashes at
/// block `i` mean equal prompts up to block `i`.
pub fn prefix_hashes(
    model: &str,
    cache_salt: &str,
    tokens: &[u32],
    block_size_tokens: usize,
    max_blocks: usize,
) -> Vec<u64> {
    if tokens.is_empty() || block_size_tokens == 0 {
        return Vec::new();
    }
    let mut seed = Xxh64::new(0);
    seed.update(model.as_bytes());
    seed.update(cache_salt.as_bytes());
    let mut prev = seed.digest();
    let mut bytes = Vec::with_capacity(block_size_tokens * 4);
    tokens
        .chunks(block_size_tokens)
        .take(max_blocks)
        .map(|block| {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|t| t.to_le_bytes()));
            let mut link = [0u8; 16];
            link[..8].copy_from_slice(&xxh64(&bytes, 0).to_le_bytes());
            link[8..].copy_from_slice(&prev.to_le_bytes());
            prev = xxh64(&link, 0);
            prev
        })
        .collect()
}

/// A candidate replica of a window's placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Endpoint id.
    pub id: String,
    /// Requests running there: only breaks ties between equally loaded replicas.
    pub running: u64,
}

impl Replica {
    /// The replica an endpoint is (its id and running-request count).
    pub fn of(e: &Endpoint) -> Self {
        Replica { id: e.id.clone(), running: e.metrics.running }
    }
}

/// Which replicas hold each block placed so far in the batch. A unit's whole prefix is
/// added at once, so holding block `i` implies holding blocks before it.
#[derive(Default)]
struct BatchIndex {
    holders: HashMap<u64, Vec<usize>>,
}

impl BatchIndex {
    fn add(&mut self, hashes: &[u64], replica: usize) {
        for h in hashes {
            let holders = self.holders.entry(*h).or_default();
            if !holders.contains(&replica) {
                holders.push(replica);
            }
        }
    }

    /// Per replica, the leading blocks of `hashes` it holds (the walk stops at the first
    /// block nobody holds).
    fn longest_prefix(&self, hashes: &[u64], replicas: usize) -> Vec<usize> {
        let mut res = vec![0; replicas];
        for h in hashes {
            match self.holders.get(h) {
                Some(holders) if !holders.is_empty() => holders.iter().for_each(|r| res[*r] += 1),
                _ => break,
            }
        }
        res
    }
}

/// One window's placement state (the router's `placeGroup` / `pickReplica` arguments).
struct Placer<'a> {
    replicas: &'a [Replica],
    per_replica_cap: Option<usize>,
    min_colocate: usize,
    max_share: usize,
    by_tokens: bool,
    load: Vec<usize>,
    index: BatchIndex,
}

impl Placer<'_> {
    /// Whether replica `a` is preferred to `b`: lower batch load, then fewer running
    /// requests, then lower id.
    fn less(&self, a: usize, b: usize) -> bool {
        let key = |r: usize| (self.load[r], self.replicas[r].running, &self.replicas[r].id);
        key(a) < key(b)
    }

    fn has_room(&self, per_replica: &[usize], r: usize) -> bool {
        self.per_replica_cap.is_none_or(|k| per_replica[r] < k)
    }

    /// The least loaded replica with room for this unit, else the least loaded one.
    fn least_loaded(&self, per_replica: &[usize]) -> usize {
        let best = |rs: &mut dyn Iterator<Item = usize>| rs.reduce(|b, r| if self.less(r, b) { r } else { b });
        let n = self.replicas.len();
        best(&mut (0..n).filter(|r| self.has_room(per_replica, *r))).or_else(|| best(&mut (0..n))).unwrap_or(0)
    }

    /// With `prefer_match`, the replica sharing the longest prefix (at least
    /// `min_colocate` blocks) that has room and is under its fair share; else the least
    /// loaded. The fair share keeps prefix-sharing units from stampeding onto one.
    fn pick(&self, per_replica: &[usize], matches: &[usize], prefer_match: bool) -> usize {
        if prefer_match {
            let mut best: Option<(usize, usize)> = None;
            for (r, &m) in matches.iter().enumerate() {
                if !self.has_room(per_replica, r) || self.load[r] >= self.max_share || m < self.min_colocate {
                    continue;
                }
                best = match best {
                    Some((b, bm)) if !(m > bm || (m == bm && self.less(r, b))) => Some((b, bm)),
                    _ => Some((r, m)),
                };
            }
            if let Some((b, _)) = best {
                return b;
            }
        }
        self.least_loaded(per_replica)
    }

    /// Places one unit (an identical group, or a prefix-sharing single request): the
    /// first replica with the prefix preference, the rest of a capped group spilled to
    /// the least loaded; then records its blocks where it went.
    fn place(&mut self, members: &[usize], hashes: &[u64], cost: usize, out: &mut [Option<usize>]) {
        let n = self.replicas.len();
        let mut prefer_match = self.min_colocate > 0;
        let matches = if prefer_match || self.by_tokens { self.index.longest_prefix(hashes, n) } else { vec![0; n] };
        let mut per_replica = vec![0usize; n];
        let mut i = 0;
        while i < members.len() {
            let target = self.pick(&per_replica, &matches, prefer_match);
            let mut run = members.len() - i;
            if let Some(k) = self.per_replica_cap {
                // More members than k * replicas: one at a time, rebalancing.
                run = run.min(k.saturating_sub(per_replica[target]).max(1));
            }
            for m in &members[i..i + run] {
                out[*m] = Some(target);
            }
            let first_touch = per_replica[target] == 0;
            per_replica[target] += run;
            if !self.by_tokens {
                self.load[target] += run;
            } else if first_touch {
                // The prefix is prefilled once per replica, less what is already there.
                self.load[target] += cost.saturating_sub(matches[target]);
            }
            i += run;
            prefer_match = false;
        }
        for (r, _) in per_replica.iter().enumerate().filter(|(_, c)| **c > 0) {
            self.index.add(hashes, r);
        }
    }
}

/// Places one window's requests (each given by its prefix hashes, in arrival order) on
/// `replicas`, as llm-d-router's burst producer does; the answer is, per request, the
/// index into `replicas` it is steered to, or `None` (no affinity: a prompt no other
/// request of the batch shares, or an empty one). Only `max_per_replica`,
/// `min_colocate_blocks` and `balance_by` of `cfg` are read.
pub fn assign<H: AsRef<[u64]>>(batch: &[H], replicas: &[Replica], cfg: &BurstConfig) -> Vec<Option<usize>> {
    let mut out = vec![None; batch.len()];
    if replicas.is_empty() {
        return out;
    }
    // Identical prefix chains form a unit, in order of first arrival.
    let mut unit_of: HashMap<&[u64], usize> = HashMap::new();
    let mut units: Vec<(&[u64], Vec<usize>)> = Vec::new();
    for (i, h) in batch.iter().enumerate() {
        let h = h.as_ref();
        if h.is_empty() {
            continue;
        }
        let u = *unit_of.entry(h).or_insert_with(|| {
            units.push((h, Vec::new()));
            units.len() - 1
        });
        units[u].1.push(i);
    }
    // A single request is placeable only when it shares min_colocate leading blocks with
    // another request of the batch.
    let mc = cfg.min_colocate_blocks;
    let mut shared = vec![false; units.len()];
    if mc > 0 {
        let mut count: HashMap<&[u64], usize> = HashMap::new();
        for (h, members) in units.iter().filter(|(h, _)| h.len() >= mc) {
            *count.entry(&h[..mc]).or_default() += members.len();
        }
        for (s, (h, _)) in shared.iter_mut().zip(&units) {
            *s = h.len() >= mc && count.get(&h[..mc]).is_some_and(|c| *c >= 2);
        }
    }
    let mut groups: Vec<usize> = (0..units.len()).filter(|u| units[*u].1.len() >= 2).collect();
    let mut singles: Vec<usize> = (0..units.len()).filter(|u| units[*u].1.len() == 1 && shared[*u]).collect();
    if groups.is_empty() && singles.is_empty() {
        return out;
    }
    // Longest prefix first (stable): shorter units then match against the most blocks.
    groups.sort_by_key(|u| std::cmp::Reverse(units[*u].0.len()));
    singles.sort_by_key(|u| std::cmp::Reverse(units[*u].0.len()));
    let by_tokens = cfg.balance_by == BalanceBy::Tokens;
    let total: usize =
        groups.iter().chain(&singles).map(|u| if by_tokens { units[*u].0.len() } else { units[*u].1.len() }).sum();
    let mut placer = Placer {
        replicas,
        per_replica_cap: cfg.max_per_replica,
        min_colocate: mc,
        max_share: total.div_ceil(replicas.len()),
        by_tokens,
        load: vec![0; replicas.len()],
        index: BatchIndex::default(),
    };
    // Identical groups first: proven same-prompt co-location anchors the layout.
    for u in groups.iter().chain(&singles) {
        let (hashes, members) = &units[*u];
        placer.place(members, hashes, hashes.len(), &mut out);
    }
    out
}

/// One request waiting in a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    /// Request id (the pick reads the assignment under it).
    pub request_id: String,
    /// Its prefix hashes ([`BurstPrefixProducer::request_hashes`]).
    pub hashes: Vec<u64>,
    /// Its prompt tokens (for the [`PrefixMatch`] the pick leaves).
    pub prompt_tokens: usize,
}

/// A window sealed by [`Batcher::seal`]: its requests and their waiters, in arrival
/// order.
#[derive(Debug)]
pub struct SealedBatch<W> {
    /// The batch's number.
    pub id: u64,
    /// The requests.
    pub entries: Vec<BatchEntry>,
    /// Whatever answers each request (a channel), one per entry.
    pub waiters: Vec<W>,
}

/// What [`Batcher::push`] did with a request.
#[derive(Debug)]
pub enum Joined<W> {
    /// It opened batch `id`: the caller starts its window.
    Opened(u64),
    /// It joined the open batch `id`.
    Joined(u64),
    /// The open batch holds `maxBatchSize` requests: not taken (no affinity), waiter
    /// handed back.
    Full(W),
}

/// A window's bookkeeping without a runtime: requests join the open batch until it is
/// sealed (when its window closes); a full batch turns requests away, as the router's
/// does, rather than sealing early.
#[derive(Debug)]
pub struct Batcher<W> {
    max_batch_size: Option<usize>,
    open: Option<SealedBatch<W>>,
    next_id: u64,
}

impl<W> Batcher<W> {
    /// An empty batcher taking at most `max_batch_size` requests a window (`None`:
    /// unlimited).
    pub fn new(max_batch_size: Option<usize>) -> Self {
        Batcher { max_batch_size, open: None, next_id: 0 }
    }

    /// Adds a request to the open batch, opening one if none is.
    pub fn push(&mut self, entry: BatchEntry, waiter: W) -> Joined<W> {
        match &mut self.open {
            Some(b) if self.max_batch_size.is_some_and(|m| b.entries.len() >= m) => Joined::Full(waiter),
            Some(b) => {
                b.entries.push(entry);
                b.waiters.push(waiter);
                Joined::Joined(b.id)
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.open = Some(SealedBatch { id, entries: vec![entry], waiters: vec![waiter] });
                Joined::Opened(id)
            }
        }
    }

    /// Closes batch `id` and hands it over; `None` when it is not the open batch (already
    /// sealed). Later requests open a new batch.
    pub fn seal(&mut self, id: u64) -> Option<SealedBatch<W>> {
        match &self.open {
            Some(b) if b.id == id => self.open.take(),
            _ => None,
        }
    }

    /// The open batch's number and size.
    pub fn open_batch(&self) -> Option<(u64, usize)> {
        self.open.as_ref().map(|b| (b.id, b.entries.len()))
    }
}

/// A sealed window's answer for one request.
#[derive(Debug)]
struct Record {
    endpoint: Option<String>,
    hashes: Vec<u64>,
    prompt_tokens: usize,
    at: Duration,
}

/// The burst prefix cache producer: the placements of sealed windows, by request id,
/// and the scorer that reads them during the pick.
pub struct BurstPrefixProducer {
    config: BurstConfig,
    clock: RwLock<Arc<dyn Clock>>,
    records: Mutex<HashMap<String, Record>>,
}

impl std::fmt::Debug for BurstPrefixProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner()).len();
        f.debug_struct("BurstPrefixProducer").field("config", &self.config).field("records", &records).finish()
    }
}

impl BurstPrefixProducer {
    /// A producer on the system clock.
    pub fn new(config: BurstConfig) -> Self {
        BurstPrefixProducer { config, clock: RwLock::new(Arc::new(SystemClock::default())), records: Mutex::default() }
    }

    /// From `parameters` ([`BurstConfig::from_params`]).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        Ok(Self::new(BurstConfig::from_params(p)?))
    }

    /// Its configuration.
    pub fn config(&self) -> &BurstConfig {
        &self.config
    }

    /// Reads time from `clock` (the datastore's, or a manual one in tests): assignments
    /// expire [`ASSIGNMENT_TTL`] after their window sealed.
    pub fn bind_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = clock;
    }

    fn now(&self) -> Duration {
        self.clock.read().unwrap_or_else(|p| p.into_inner()).now()
    }

    /// The request's prefix hashes: its token ids (from the token producer) in blocks of
    /// `blockSizeTokens`, or without them its prompt text packed four bytes a token (the
    /// estimate backend's packing). The model seeds the chain; llmd's requests carry no
    /// cache salt.
    pub fn request_hashes(&self, req: &LlmRequest) -> Vec<u64> {
        let (block, max) = (self.config.block_size_tokens, self.config.max_blocks());
        match &req.token_ids {
            Some(ids) => prefix_hashes(&req.model, "", ids, block, max),
            None => {
                let packed = crate::tokenproducer::estimate::pack_bytes(req.prompt.as_bytes());
                prefix_hashes(&req.model, "", &packed, block, max)
            }
        }
    }

    /// Places a sealed window's requests on `replicas` ([`assign`]), records each
    /// placement under its request id for the pick, and returns the endpoint ids, in
    /// the entries' order.
    pub fn settle(&self, entries: Vec<BatchEntry>, replicas: &[Replica]) -> Vec<Option<String>> {
        let placed = assign(&entries.iter().map(|e| &e.hashes[..]).collect::<Vec<_>>(), replicas, &self.config);
        let answers: Vec<Option<String>> = placed.iter().map(|r| r.map(|r| replicas[r].id.clone())).collect();
        let now = self.now();
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        // Swept here, once a window: what the picks never read goes too.
        records.retain(|_, r| now.saturating_sub(r.at) <= ASSIGNMENT_TTL);
        for (e, endpoint) in entries.into_iter().zip(&answers) {
            // An id-less request can not be found by its pick.
            if !e.request_id.is_empty() {
                let record =
                    Record { endpoint: endpoint.clone(), hashes: e.hashes, prompt_tokens: e.prompt_tokens, at: now };
                records.insert(e.request_id, record);
            }
        }
        answers
    }

    /// The endpoint a sealed window assigned `request_id` to, while the record lasts.
    pub fn assignment(&self, request_id: &str) -> Option<String> {
        let now = self.now();
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.get(request_id).filter(|r| now.saturating_sub(r.at) <= ASSIGNMENT_TTL)?.endpoint.clone()
    }
}

impl Scorer for BurstPrefixProducer {
    /// 1 on the endpoint the request's window assigned it, 0 elsewhere (and everywhere
    /// for a request with no assignment); the [`PrefixMatch`] left says the assigned
    /// endpoint holds the whole prompt.
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let now = self.now();
        let found = (!req.id.is_empty())
            .then(|| {
                let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
                records
                    .get(&req.id)
                    .filter(|r| now.saturating_sub(r.at) <= ASSIGNMENT_TTL)
                    .map(|r| (r.endpoint.clone(), r.hashes.clone(), r.prompt_tokens))
            })
            .flatten();
        let (assigned, hashes, prompt_tokens) =
            found.unwrap_or_else(|| (None, self.request_hashes(req), req.prompt_tokens()));
        let mut matched = IdMap::default();
        let mut hints = IdMap::default();
        let scores = eps
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if !hashes.is_empty() && assigned.as_deref() == Some(e.id.as_str()) {
                    matched.insert(e.id.clone(), hashes.len());
                    hints.insert(e.id.clone(), i);
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let tokens_per_block = self.config.block_size_tokens;
        state.put(PREFIX_MATCH_KEY, PrefixMatch { hashes, prompt_tokens, tokens_per_block, matched, hints });
        scores
    }

    /// The router's producer consumes the token producer's tokens.
    fn wants_token_ids(&self) -> bool {
        true
    }
}

/// The candidates of a window's placement, asked when the window seals: the serving
/// endpoints, say.
pub type ReplicaSource = Arc<dyn Fn() -> Vec<Replica> + Send + Sync>;

#[cfg(feature = "runtime")]
pub use window::BurstWindow;

#[cfg(feature = "runtime")]
mod window {
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;
    use tokio::time::Instant;

    use super::{BatchEntry, Batcher, BurstPrefixProducer, Joined, ReplicaSource, SealedBatch};
    use crate::request::LlmRequest;

    type Waiter = oneshot::Sender<Option<String>>;

    struct State {
        batcher: Batcher<Waiter>,
        // The open batch and when its window closes.
        deadline: Option<(u64, Instant)>,
    }

    /// A producer's batch window on tokio time: front ends [`join`](Self::join) it
    /// before the pick.
    pub struct BurstWindow {
        producer: Arc<BurstPrefixProducer>,
        replicas: ReplicaSource,
        state: Mutex<State>,
    }

    impl std::fmt::Debug for BurstWindow {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("BurstWindow").field("producer", &self.producer).finish()
        }
    }

    impl BurstWindow {
        /// A window for `producer`, placing each batch on what `replicas` answers when
        /// the batch seals.
        pub fn new(producer: Arc<BurstPrefixProducer>, replicas: ReplicaSource) -> Self {
            let batcher = Batcher::new(producer.config().max_batch_size);
            BurstWindow { producer, replicas, state: Mutex::new(State { batcher, deadline: None }) }
        }

        /// Its producer.
        pub fn producer(&self) -> &Arc<BurstPrefixProducer> {
            &self.producer
        }

        /// [`join`](Self::join) with the request's id, hashes and prompt tokens.
        pub async fn join_request(&self, req: &LlmRequest) -> Option<String> {
            self.join(&req.id, self.producer.request_hashes(req), req.prompt_tokens()).await
        }

        /// Waits out the window the request falls in, then answers the endpoint it was
        /// assigned (also recorded for the pick), or `None`: no affinity, a full window,
        /// or no request id (the pick could not find the answer; front ends should give
        /// every request an id, as the router does).
        pub async fn join(&self, request_id: &str, hashes: Vec<u64>, prompt_tokens: usize) -> Option<String> {
            if request_id.is_empty() {
                return None;
            }
            let (tx, mut rx) = oneshot::channel();
            let entry = BatchEntry { request_id: request_id.to_string(), hashes, prompt_tokens };
            let now = Instant::now();
            let (batch, deadline, stale) = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                // A window whose waiters all went away is sealed by the next arrival.
                let stale = match st.deadline {
                    Some((id, at)) if now >= at => {
                        st.deadline = None;
                        st.batcher.seal(id)
                    }
                    _ => None,
                };
                match st.batcher.push(entry, tx) {
                    Joined::Opened(id) => {
                        let at = now + self.producer.config().window;
                        st.deadline = Some((id, at));
                        (id, at, stale)
                    }
                    Joined::Joined(id) => (id, st.deadline.map_or(now, |d| d.1), stale),
                    Joined::Full(_) => {
                        drop(st);
                        if let Some(s) = stale {
                            self.finish(s);
                        }
                        tracing::debug!(request = request_id, "burst window full (maxBatchSize): no affinity");
                        return None;
                    }
                }
            };
            if let Some(s) = stale {
                self.finish(s);
            }
            // Whichever waiter wakes first seals the batch for all: the window does not
            // depend on the request that opened it staying.
            tokio::select! {
                answer = &mut rx => return answer.ok().flatten(),
                () = tokio::time::sleep_until(deadline) => {}
            }
            let sealed = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.deadline.is_some_and(|d| d.0 == batch) {
                    st.deadline = None;
                }
                st.batcher.seal(batch)
            };
            if let Some(s) = sealed {
                self.finish(s);
            }
            tracing::debug!(request = request_id, wait = ?now.elapsed(), "burst batch sealed");
            rx.await.ok().flatten()
        }

        fn finish(&self, sealed: SealedBatch<Waiter>) {
            let replicas = (self.replicas)();
            let answers = self.producer.settle(sealed.entries, &replicas);
            for (tx, answer) in sealed.waiters.into_iter().zip(answers) {
                // A waiter that went away (its request cancelled) needs no answer.
                let _ = tx.send(answer);
            }
        }
    }
}

/// Registers `burst-prefix-cache-producer`. The producer is a scorer only through the
/// `prefix-cache-scorer` that names it (the config loader moves it there).
pub(crate) fn register(r: &mut PluginRegistry) {
    r.register(TYPE, |n, p| {
        let producer = Arc::new(BurstPrefixProducer::from_params(p)?);
        Ok(PluginHandle {
            name: n.into(),
            type_name: TYPE.into(),
            scorer: Some(producer.clone()),
            burst: Some(producer),
            ..Default::default()
        })
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ops::Range;

    use serde_json::json;

    use super::*;
    use crate::clock::ManualClock;
    use crate::endpoint::Role;

    fn replicas(names: &[&str]) -> Vec<Replica> {
        names.iter().map(|n| Replica { id: (*n).to_string(), running: 0 }).collect()
    }

    fn pods(n: usize) -> Vec<Replica> {
        (1..=n).map(|i| Replica { id: format!("pod{i}"), running: 0 }).collect()
    }

    /// A batch built group by group, as the Go tests' `group` and `concat` build theirs.
    #[derive(Default)]
    struct Batch(Vec<Vec<u64>>);

    impl Batch {
        /// `n` requests sharing the prompt prefix `prefix`; their indices.
        fn group(&mut self, n: usize, prefix: &[u64]) -> Range<usize> {
            let start = self.0.len();
            self.0.extend(std::iter::repeat_n(prefix.to_vec(), n));
            start..self.0.len()
        }
    }

    fn cfg(k: Option<usize>, min_colocate: usize, by_tokens: bool) -> BurstConfig {
        let balance_by = if by_tokens { BalanceBy::Tokens } else { BalanceBy::Requests };
        BurstConfig { max_per_replica: k, min_colocate_blocks: min_colocate, balance_by, ..BurstConfig::default() }
    }

    /// The replica name each request went to ("" for none).
    fn names(b: &Batch, reps: &[Replica], c: &BurstConfig) -> Vec<String> {
        assign(&b.0, reps, c).into_iter().map(|r| r.map_or(String::new(), |r| reps[r].id.clone())).collect()
    }

    fn counts(names: &[String]) -> BTreeMap<&str, usize> {
        let mut c = BTreeMap::new();
        for n in names {
            *c.entry(n.as_str()).or_default() += 1;
        }
        c
    }

    fn map(pairs: &[(&'static str, usize)]) -> BTreeMap<&'static str, usize> {
        pairs.iter().copied().collect()
    }

    // ---- assign_test.go ----

    #[test]
    fn unlimited_colocates_whole_group() {
        // TestAssign_UnlimitedColocatesWholeGroup
        let mut b = Batch::default();
        b.group(8, &[1, 2, 3]);
        assert!(names(&b, &pods(4), &cfg(None, 0, false)).iter().all(|n| n == "pod1"));
    }

    #[test]
    fn cap_spreads_evenly() {
        // TestAssign_CapSpreadsEvenly
        let mut b = Batch::default();
        b.group(8, &[1, 2, 3]);
        let n = names(&b, &pods(4), &cfg(Some(2), 0, false));
        assert_eq!(counts(&n), map(&[("pod1", 2), ("pod2", 2), ("pod3", 2), ("pod4", 2)]));
    }

    #[test]
    fn cap_fills_before_spilling() {
        // TestAssign_CapFillsBeforeSpilling: k=4 fills one replica before the next.
        let mut b = Batch::default();
        b.group(8, &[1, 2, 3]);
        assert_eq!(counts(&names(&b, &pods(4), &cfg(Some(4), 0, false))), map(&[("pod1", 4), ("pod2", 4)]));
    }

    #[test]
    fn singleton_gets_no_affinity() {
        // TestAssign_SingletonGetsNoAffinity
        let mut b = Batch::default();
        b.group(1, &[1, 2, 3]);
        assert_eq!(assign(&b.0, &pods(2), &cfg(None, 0, false)), [None]);
    }

    #[test]
    fn empty_prefix_gets_no_affinity() {
        // TestAssign_EmptyPrefixGetsNoAffinity
        let mut b = Batch::default();
        b.group(2, &[]);
        assert_eq!(assign(&b.0, &pods(2), &cfg(None, 0, false)), [None, None]);
    }

    #[test]
    fn distinct_groups_spread_across_replicas() {
        // TestAssign_DistinctGroupsSpreadAcrossReplicas
        let mut b = Batch::default();
        let a = b.group(8, &[1, 2, 3]);
        let g = b.group(8, &[9, 9, 9]);
        let n = names(&b, &pods(4), &cfg(None, 0, false));
        assert!(n[a].iter().all(|n| n == "pod1"));
        assert!(n[g].iter().all(|n| n == "pod2"));
    }

    #[test]
    fn shared_prefix_families_colocate_within_fair_share() {
        // TestAssign_SharedPrefixFamiliesColocateWithinFairShare
        let mut b = Batch::default();
        let x1 = b.group(2, &[1, 2, 3]);
        let x2 = b.group(2, &[1, 2, 4]);
        let y1 = b.group(2, &[7, 8, 5]);
        let y2 = b.group(2, &[7, 8, 6]);
        let n = names(&b, &pods(2), &cfg(None, 2, false));
        assert_eq!(n[x1.start], n[x2.start], "groups sharing >= minColocateBlocks leading blocks co-locate");
        assert_eq!(n[y1.start], n[y2.start]);
        assert_ne!(n[x1.start], n[y1.start], "distinct families spread across replicas");
        assert_eq!(counts(&n), map(&[("pod1", 4), ("pod2", 4)]));
    }

    #[test]
    fn fair_share_spreads_prefix_sharing_groups() {
        // TestAssign_FairShareSpreadsPrefixSharingGroups
        let mut b = Batch::default();
        for tail in 3..=6 {
            b.group(2, &[1, 2, tail]);
        }
        let n = names(&b, &pods(4), &cfg(None, 2, false));
        assert_eq!(counts(&n), map(&[("pod1", 2), ("pod2", 2), ("pod3", 2), ("pod4", 2)]));
    }

    #[test]
    fn singleton_attaches_to_overlapping_group() {
        // TestAssign_SingletonAttachesToOverlappingGroup
        let mut b = Batch::default();
        let gx = b.group(2, &[1, 2, 3]);
        let sx = b.group(1, &[1, 2, 8]);
        let gy = b.group(2, &[7, 8, 5]);
        let sy = b.group(1, &[7, 8, 9]);
        let n = names(&b, &pods(2), &cfg(None, 2, false));
        assert_eq!(n[gx.start], n[gx.start + 1], "an identical group is never broken");
        assert_eq!(n[gx.start], n[sx.start], "a prefix-sharing singleton attaches to the overlapping group");
        assert_eq!(n[gy.start], n[sy.start]);
        assert_eq!(counts(&n), map(&[("pod1", 3), ("pod2", 3)]));
    }

    #[test]
    fn lone_singleton_gets_no_affinity() {
        // TestAssign_LoneSingletonGetsNoAffinity
        let mut b = Batch::default();
        let g = b.group(2, &[1, 2, 3]);
        let lone = b.group(1, &[5, 5, 5]);
        let n = names(&b, &pods(2), &cfg(None, 2, false));
        assert_eq!(n[lone.start], "", "a request overlapping no other keeps no affinity");
        assert_eq!(n[g.start], n[g.start + 1]);
        assert_ne!(n[g.start], "");
    }

    #[test]
    fn overlapping_singletons_colocate_without_groups() {
        // TestAssign_OverlappingSingletonsColocateWithoutGroups
        let mut b = Batch::default();
        for tail in 3..=6 {
            b.group(1, &[1, 2, tail]);
        }
        let n = names(&b, &pods(2), &cfg(None, 2, false));
        assert!(n.iter().all(|n| !n.is_empty()));
        assert_eq!(counts(&n), map(&[("pod1", 2), ("pod2", 2)]));
    }

    #[test]
    fn shared_prefix_below_threshold_does_not_colocate() {
        // TestAssign_SharedPrefixBelowThresholdDoesNotColocate
        let mut b = Batch::default();
        let x1 = b.group(2, &[1, 2, 3]);
        let x2 = b.group(2, &[1, 2, 4]);
        b.group(2, &[7, 8, 5]);
        b.group(2, &[7, 8, 6]);
        let n = names(&b, &pods(2), &cfg(None, 3, false));
        assert_ne!(n[x1.start], n[x2.start], "a shared prefix below minColocateBlocks must not co-locate");
        assert_eq!(counts(&n), map(&[("pod1", 4), ("pod2", 4)]));
    }

    #[test]
    fn single_replica_places_everything() {
        // TestAssign_SingleReplicaPlacesEverything
        let mut b = Batch::default();
        b.group(4, &[1, 2, 3]);
        b.group(4, &[9, 9, 9]);
        assert!(names(&b, &pods(1), &cfg(None, 2, false)).iter().all(|n| n == "pod1"));
    }

    #[test]
    fn balance_by_tokens_spreads_large_prefix() {
        // TestAssign_BalanceByTokensSpreadsLargePrefix
        let mut b = Batch::default();
        let long = b.group(2, &[1, 2, 3, 4]);
        let short1 = b.group(2, &[5]);
        let short2 = b.group(2, &[6]);
        let by_req = names(&b, &pods(2), &cfg(None, 0, false));
        assert_eq!(by_req[long.start], by_req[short2.start], "by requests a short unit joins the long one");
        let by_tok = names(&b, &pods(2), &cfg(None, 0, true));
        assert_ne!(by_tok[long.start], by_tok[short1.start], "by tokens the long unit stays alone");
        assert_eq!(by_tok[short1.start], by_tok[short2.start], "and the short ones pack together");
    }

    #[test]
    fn balance_by_tokens_discounts_shared_prefix() {
        // TestAssign_BalanceByTokensDiscountsSharedPrefix
        let mut b = Batch::default();
        let a1 = b.group(2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let a2 = b.group(2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
        let a3 = b.group(2, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 12]);
        let n = names(&b, &pods(2), &cfg(None, 9, true));
        assert_eq!(n[a1.start], n[a2.start]);
        assert_eq!(n[a2.start], n[a3.start], "the shared-prefix discount keeps the third unit on the shared replica");
    }

    #[test]
    fn overflow_guard_balances_beyond_cap() {
        // TestAssign_OverflowGuardBalancesBeyondCap: 8 members, k=2, 2 replicas.
        let mut b = Batch::default();
        b.group(8, &[1, 2, 3]);
        let n = names(&b, &pods(2), &cfg(Some(2), 0, false));
        assert_eq!(counts(&n), map(&[("pod1", 4), ("pod2", 4)]));
    }

    #[test]
    fn ties_go_to_fewer_running_requests_then_the_lower_id() {
        // The router's `less`: batch load, then running requests, then name.
        let mut b = Batch::default();
        b.group(2, &[1]);
        let mut reps = replicas(&["a", "b", "c"]);
        reps[0].running = 3;
        reps[1].running = 1;
        reps[2].running = 1;
        assert_eq!(names(&b, &reps, &cfg(None, 0, false)), ["b", "b"]);
        assert_eq!(assign(&b.0, &[], &cfg(None, 0, false)), [None, None], "no replicas, no affinity");
    }

    // ---- plugin_test.go ----

    #[test]
    fn config_defaults_and_checks_are_the_routers() {
        // TestNew_RejectsInvalidConfig, and every other check of newDataProducer.
        let d = BurstConfig::from_params(&json!({})).unwrap();
        assert_eq!(d, BurstConfig::default());
        assert_eq!(
            (d.window, d.max_per_replica, d.block_size_tokens, d.max_blocks(), d.min_colocate_blocks, d.max_batch_size),
            (Duration::from_millis(100), None, 64, 2048, 0, Some(1000))
        );
        let c = BurstConfig::from_params(&json!({
            "windowDurationMs": 10000, "maxPerReplica": 2, "blockSizeTokens": 16, "maxPrefixTokensToMatch": 100,
            "minColocateBlocks": 3, "maxBatchSize": -1, "balanceBy": "tokens"
        }))
        .unwrap();
        assert_eq!(c.max_blocks(), 6, "100 tokens in blocks of 16");
        assert_eq!((c.max_per_replica, c.max_batch_size, c.balance_by), (Some(2), None, BalanceBy::Tokens));
        assert_eq!(BurstConfig::from_params(&json!({"balanceBy": ""})).unwrap().balance_by, BalanceBy::Requests);
        for (params, key) in [
            (json!({"windowDurationMs": 0}), "windowDurationMs"),
            (json!({"windowDurationMs": 10001}), "windowDurationMs"),
            (json!({"maxPerReplica": 0}), "maxPerReplica"),
            (json!({"maxPerReplica": -2}), "maxPerReplica"),
            (json!({"blockSizeTokens": 0}), "blockSizeTokens"),
            (json!({"maxPrefixTokensToMatch": -1}), "maxPrefixTokensToMatch"),
            (json!({"maxPrefixTokensToMatch": 63}), "maxPrefixTokensToMatch"),
            (json!({"minColocateBlocks": -1}), "minColocateBlocks"),
            (json!({"maxBatchSize": 0}), "maxBatchSize"),
            (json!({"balanceBy": "bogus"}), "balanceBy"),
            (json!({"balanceBy": "Tokens"}), "balanceBy"),
            (json!({"windowDurationMs": 1.5}), "windowDurationMs"),
            (json!({"windowDurationMs": "100"}), "windowDurationMs"),
            (json!({"windowDuration": 100}), "windowDuration"),
        ] {
            let e = BurstConfig::from_params(&params).unwrap_err();
            assert!(e.contains(key), "{params}: {e}");
        }
    }

    fn entry(id: &str, hashes: Vec<u64>) -> BatchEntry {
        BatchEntry { request_id: id.into(), prompt_tokens: hashes.len() * 4, hashes }
    }

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (1..=n).map(|i| Endpoint::new(format!("pod{i}"), format!("10.0.0.{i}:8000"), Role::Both)).collect()
    }

    fn score(p: &BurstPrefixProducer, id: &str, eps: &[Endpoint]) -> (Vec<f64>, PrefixMatch) {
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let req = LlmRequest { id: id.into(), model: "m".into(), token_ids: Some(vec![1; 8]), ..Default::default() };
        let mut st = CycleState::default();
        let s = p.score(&mut st, &req, &refs);
        (s, st.get::<PrefixMatch>(PREFIX_MATCH_KEY).cloned().unwrap_or_default())
    }

    #[test]
    fn a_sealed_window_colocates_an_identical_burst_and_the_pick_reads_it() {
        // TestProduce_ColocatesIdenticalPromptBurst and TestProduce_SingletonHasNoAffinity,
        // the window closed by hand.
        let p = BurstPrefixProducer::new(BurstConfig { block_size_tokens: 4, ..BurstConfig::default() });
        let shared = prefix_hashes("m", "", &[1, 2, 3, 4, 5, 6, 7, 8], 4, 2048);
        let mut batcher = Batcher::new(p.config().max_batch_size);
        for i in 0..8 {
            batcher.push(entry(&format!("s{i}"), shared.clone()), i);
        }
        batcher.push(entry("lone", prefix_hashes("m", "", &[9; 4], 4, 2048)), 8);
        let Some((id, 9)) = batcher.open_batch() else { panic!("one open batch of 9") };
        let sealed = batcher.seal(id).unwrap();
        assert_eq!(sealed.waiters, (0..9).collect::<Vec<_>>());
        let eps = endpoints(4);
        let answers = p.settle(sealed.entries, &eps.iter().map(Replica::of).collect::<Vec<_>>());
        assert!(answers[..8].iter().all(|a| a.as_deref() == Some("pod1")), "{answers:?}");
        assert_eq!(answers[8], None, "a lone request shares no prompt and is not steered");
        // The pick: 1 on the assigned replica, a full match there.
        let (s, m) = score(&p, "s3", &eps);
        assert_eq!(s, [1.0, 0.0, 0.0, 0.0]);
        assert_eq!((&m.hashes, m.matched.get("pod1").copied(), m.matched.len()), (&shared, Some(2), 1));
        assert_eq!((m.prompt_tokens, m.tokens_per_block, m.uncached_tokens("pod1")), (8, 4, 0));
        let (s, m) = score(&p, "lone", &eps);
        assert_eq!((s, m.matched.len(), m.hashes.len()), (vec![0.0; 4], 0, 1));
        // The assigned replica gone from the candidates: no affinity anywhere.
        assert_eq!(score(&p, "s0", &eps[1..]).0, [0.0; 3]);
        // A request that joined no window is scored 0, its hashes still left.
        let (s, m) = score(&p, "never", &eps);
        assert_eq!((s, m.hashes.len(), m.prompt_tokens), (vec![0.0; 4], 2, 8));
    }

    #[test]
    fn a_sealed_window_detaches_and_the_next_request_opens_another() {
        // TestProduce_SecondWindowAfterSeal, and the router's maxBatchSize refusal.
        let mut batcher = Batcher::new(Some(2));
        let Joined::Opened(first) = batcher.push(entry("a", vec![1]), ()) else { panic!("opened") };
        assert!(matches!(batcher.push(entry("b", vec![1]), ()), Joined::Joined(id) if id == first));
        assert!(matches!(batcher.push(entry("c", vec![1]), ()), Joined::Full(())), "maxBatchSize reached");
        assert_eq!(batcher.seal(first).map(|b| b.entries.len()), Some(2));
        assert!(batcher.seal(first).is_none(), "sealing twice hands nothing over");
        assert_eq!(batcher.open_batch(), None);
        let Joined::Opened(second) = batcher.push(entry("c", vec![1]), ()) else { panic!("a fresh batch") };
        assert_ne!(first, second);
        assert!(batcher.seal(first).is_none(), "a stale seal leaves the new batch open");
        assert_eq!(batcher.open_batch(), Some((second, 1)));
    }

    #[test]
    fn assignments_expire_on_the_clock() {
        let clock = Arc::new(ManualClock::new());
        let p = BurstPrefixProducer::new(BurstConfig::default());
        p.bind_clock(clock.clone());
        let eps = endpoints(2);
        let reps: Vec<Replica> = eps.iter().map(Replica::of).collect();
        p.settle(vec![entry("a", vec![1, 2]), entry("b", vec![1, 2]), entry("", vec![1, 2])], &reps);
        assert_eq!(p.assignment("a").as_deref(), Some("pod1"));
        assert_eq!(p.assignment(""), None, "an id-less request is not recorded");
        clock.advance(ASSIGNMENT_TTL);
        assert_eq!(score(&p, "b", &eps).0, [1.0, 0.0], "still readable at the TTL");
        clock.advance(Duration::from_millis(1));
        assert_eq!(p.assignment("a"), None);
        assert_eq!(score(&p, "b", &eps).0, [0.0, 0.0]);
        // The next window sweeps the expired records.
        p.settle(vec![entry("c", vec![3])], &reps);
        assert_eq!(p.records.lock().unwrap().len(), 1);
    }

    #[test]
    fn request_hashes_chain_token_blocks_as_the_router_does() {
        let p = BurstPrefixProducer::from_params(&json!({"blockSizeTokens": 4})).unwrap();
        let req = |model: &str, ids: Option<Vec<u32>>, prompt: &str| LlmRequest {
            model: model.into(),
            token_ids: ids,
            prompt: prompt.into(),
            ..Default::default()
        };
        // The router's values: XXH64(le(XXH64(block bytes)) ++ le(previous)), from XXH64(model).
        let first =
            xxh64(&[xxh64(&[1u8, 0, 0, 0, 2, 0, 0, 0], 0).to_le_bytes(), xxh64(b"m", 0).to_le_bytes()].concat(), 0);
        assert_eq!(prefix_hashes("m", "", &[1, 2, 3], 2, 8)[0], first);
        // A trailing partial block counts (TestGetKVCacheBlocksFromTokens).
        let ten = p.request_hashes(&req("m", Some((1..=10).collect()), ""));
        assert_eq!(ten.len(), 3);
        let eight = p.request_hashes(&req("m", Some((1..=8).collect()), ""));
        assert_eq!(ten[..2], eight[..], "a chain: equal leading blocks hash equal");
        let other_tail = p.request_hashes(&req("m", Some((1..=9).collect()), ""));
        assert_ne!(ten[2], other_tail[2], "a different partial tail is a different prompt");
        assert_ne!(ten, p.request_hashes(&req("m2", Some((1..=10).collect()), "")), "the model seeds the chain");
        assert_ne!(prefix_hashes("m", "salt", &[1, 2], 2, 8), prefix_hashes("m", "", &[1, 2], 2, 8));
        assert!(p.request_hashes(&req("m", Some(vec![]), "text")).is_empty(), "no tokens, no prefix");
        // Without token ids, the text packed four bytes a token: 16 bytes a block.
        assert_eq!(p.request_hashes(&req("m", None, &"x".repeat(33))).len(), 3);
        assert!(p.request_hashes(&req("m", None, "")).is_empty());
        // maxPrefixTokensToMatch caps the blocks.
        let capped = BurstPrefixProducer::from_params(&json!({"blockSizeTokens": 4, "maxPrefixTokensToMatch": 8}))
            .unwrap()
            .request_hashes(&req("m", Some((1..=10).collect()), ""));
        assert_eq!(capped, eight);
    }

    #[test]
    fn the_factory_takes_the_fixture_s_parameters() {
        let mut r = PluginRegistry::new();
        register(&mut r);
        let f = r.get(TYPE).unwrap();
        let h = f("burst", &json!({"windowDurationMs": 100, "maxPerReplica": -1, "minColocateBlocks": 0})).unwrap();
        assert_eq!((h.name.as_str(), h.type_name.as_str()), ("burst", TYPE));
        assert!(h.scorer.is_some_and(|s| s.wants_token_ids()));
        let e = f("burst", &json!({"maxPerReplicas": 2})).unwrap_err();
        assert!(e.starts_with("parameter \"maxPerReplicas\" is not one of: windowDurationMs"), "{e}");
    }

    #[cfg(feature = "runtime")]
    #[tokio::test]
    async fn the_window_answers_every_waiter_once_it_closes() {
        use futures_util::future::join_all;
        // TestProduce_ColocatesIdenticalPromptBurst and TestProduce_SecondWindowAfterSeal on
        // a real 20 ms window; TestProduce_CancelledContextBeforeSeal's counterpart: the
        // request that opened the window goes away, and the window still closes.
        let config = BurstConfig { window: Duration::from_millis(20), block_size_tokens: 4, ..BurstConfig::default() };
        let p = Arc::new(BurstPrefixProducer::new(config));
        let source: ReplicaSource = Arc::new(|| pods(4));
        let w = BurstWindow::new(p.clone(), source);
        let hashes = |t: u32| prefix_hashes("m", "", &[t; 8], 4, 2048);
        let ids: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let burst = ids.iter().map(|id| w.join(id, hashes(1), 8));
        let lone = w.join("lone", hashes(2), 8);
        let (first, lone) = futures_util::join!(join_all(burst), lone);
        assert!(first.iter().all(|a| a.as_deref() == Some("pod1")), "{first:?}");
        assert_eq!(lone, None);
        assert_eq!(p.assignment("s5").as_deref(), Some("pod1"));
        // The next window: its opener is dropped after 1 ms; the others close it.
        let dropped = tokio::time::timeout(Duration::from_millis(1), w.join("gone", hashes(3), 8));
        let rest = join_all((0..3).map(|i| w.join(["t0", "t1", "t2"][i], hashes(3), 8)));
        let (gone, second) = futures_util::join!(dropped, rest);
        assert!(gone.is_err(), "the opener timed out");
        assert!(second.iter().all(|a| a.is_some() && *a == second[0]), "{second:?}");
        assert_eq!(p.assignment("gone"), second[0], "it still counted in its window, as in the router");
        // A window everyone left is sealed by the next arrival.
        let _ = tokio::time::timeout(Duration::from_millis(1), w.join("x0", hashes(4), 8)).await;
        let _ = tokio::time::timeout(Duration::from_millis(1), w.join("x1", hashes(4), 8)).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(p.assignment("x0"), None, "nobody closed it yet");
        assert_eq!(w.join("late", hashes(5), 8).await, None);
        assert!(p.assignment("x0").is_some() && p.assignment("x0") == p.assignment("x1"));
        assert_eq!(w.join("", hashes(5), 8).await, None, "no id: no wait, no answer");
    }

    // ---- invariants ----

    /// What every placement must satisfy: one answer per request, a real replica;
    /// empty prompts unplaced; identical groups always placed, whole on one replica when
    /// unlimited, at most `k` per replica when they fit; a lone prompt placed exactly when
    /// it shares `minColocateBlocks` leading blocks with another request.
    fn check(batch: &[Vec<u64>], reps: &[Replica], c: &BurstConfig, out: &[Option<usize>]) -> Result<(), String> {
        if out.len() != batch.len() || out.iter().flatten().any(|r| *r >= reps.len()) {
            return Err(format!("bad answers {out:?}"));
        }
        let mut groups: BTreeMap<&[u64], Vec<usize>> = BTreeMap::new();
        for (i, h) in batch.iter().enumerate() {
            groups.entry(h).or_default().push(i);
        }
        for (h, members) in &groups {
            let placed: Vec<Option<usize>> = members.iter().map(|i| out[*i]).collect();
            if h.is_empty() || reps.is_empty() {
                if placed.iter().any(Option::is_some) {
                    return Err(format!("empty prompt or no replicas placed: {placed:?}"));
                }
                continue;
            }
            if members.len() >= 2 {
                let on: Vec<usize> = placed.iter().flatten().copied().collect();
                if on.len() != members.len() {
                    return Err(format!("group {h:?} not all placed: {placed:?}"));
                }
                match c.max_per_replica {
                    None if on.iter().any(|r| *r != on[0]) => return Err(format!("group {h:?} split: {on:?}")),
                    Some(k) if members.len() <= k * reps.len() => {
                        for r in 0..reps.len() {
                            if on.iter().filter(|x| **x == r).count() > k {
                                return Err(format!("group {h:?} over {k} on replica {r}: {on:?}"));
                            }
                        }
                    }
                    _ => {}
                }
            } else {
                let mc = c.min_colocate_blocks;
                let shares = mc > 0
                    && h.len() >= mc
                    && batch.iter().enumerate().any(|(j, o)| j != members[0] && o.len() >= mc && o[..mc] == h[..mc]);
                if placed[0].is_some() != shares {
                    return Err(format!("lone prompt {h:?} placed {placed:?}, shares {shares}"));
                }
            }
        }
        Ok(())
    }

    fn prompts(spec: &[(u8, u8, u8)]) -> Vec<Vec<u64>> {
        // Stem s repeated to length `stem` tokens, then tail t for `tail` tokens; blocks of 2.
        spec.iter()
            .map(|&(s, stem, t)| {
                let mut ids: Vec<u32> = vec![u32::from(s); usize::from(stem)];
                ids.extend(std::iter::repeat_n(100 + u32::from(t), usize::from(t % 3)));
                prefix_hashes("m", "", &ids, 2, 2048)
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn placements_keep_the_invariants(
            spec in proptest::collection::vec((0u8..3, 0u8..7, 0u8..5), 0..40),
            running in proptest::collection::vec(0u64..3, 0..5),
            k in proptest::option::of(1usize..4),
            mc in 0usize..4,
            by_tokens: bool,
        ) {
            let batch = prompts(&spec);
            let reps: Vec<Replica> =
                running.iter().enumerate().map(|(i, r)| Replica { id: format!("r{i}"), running: *r }).collect();
            let c = cfg(k, mc, by_tokens);
            let out = assign(&batch, &reps, &c);
            if let Err(e) = check(&batch, &reps, &c, &out) {
                return Err(proptest::test_runner::TestCaseError::fail(e));
            }
        }
    }

    #[test]
    fn the_invariant_check_catches_broken_placements() {
        // Negative control: a split group, a group over its cap, a lone prompt steered
        // without sharing, and a sharing one left out all fail the check the proptest runs.
        let reps = pods(2);
        let batch = prompts(&[(1, 4, 0), (1, 4, 0), (2, 4, 1)]);
        let unlimited = cfg(None, 0, false);
        let good = assign(&batch, &reps, &unlimited);
        assert_eq!(check(&batch, &reps, &unlimited, &good), Ok(()));
        assert!(check(&batch, &reps, &unlimited, &[Some(0), Some(1), None]).is_err(), "split group");
        assert!(check(&batch, &reps, &unlimited, &[Some(0), Some(0), Some(1)]).is_err(), "lone prompt steered");
        assert!(check(&batch, &reps, &unlimited, &[Some(0), None, None]).is_err(), "member unplaced");
        let capped = cfg(Some(1), 0, false);
        assert!(check(&batch, &reps, &capped, &[Some(0), Some(0), None]).is_err(), "over the cap");
        let sharing = cfg(None, 2, false);
        let batch = prompts(&[(1, 4, 0), (1, 4, 1)]);
        assert_eq!(check(&batch, &reps, &sharing, &assign(&batch, &reps, &sharing)), Ok(()));
        assert!(check(&batch, &reps, &sharing, &[Some(0), None]).is_err(), "sharing prompt left out");
    }
}
