//! Multimodal encoder-cache affinity, as llm-d-router's `mm-embeddings-cache-producer`
//! and `mm-embeddings-cache-scorer`: a request whose images (videos, audio) were recently
//! sent to an endpoint is steered back there, where the engine's encoder cache likely
//! still holds their embeddings.
//!
//! The producer keeps, per endpoint, an LRU of the multimodal item hashes recently
//! routed there (`cacheSizeInMBPerServer` MiB / 2 MiB entries each). During a pick it
//! matches the request's items ([`LlmRequest::mm_hashes`]) against every endpoint's LRU
//! once, caches the outcome in the [`CycleState`] (the router's `EncoderCacheMatchInfo`
//! endpoint attribute), and after the pick adds the items to the chosen endpoint's LRU
//! (the router's `PreRequest`). The scorer reads that match: the size of the items an
//! endpoint holds over the size of all the request's items (every item has size 1, so
//! the fraction of the request's distinct items), 0 for a request without items.
//!
//! llmd has no separate producer phase: the producer is shared by the scorers that name
//! it (`producerName`), which `bind` wires once every plugin of a file exists.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use lru::LruCache;
use serde_json::Value;

use super::Params;
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, PickObserver, PluginHandle, Scorer};
use crate::request::LlmRequest;

/// The producer's type name.
pub const PRODUCER_TYPE: &str = "mm-embeddings-cache-producer";
/// The scorer's type name.
pub const SCORER_TYPE: &str = "mm-embeddings-cache-scorer";
/// The router's data type name for the match (`EncoderCacheMatchInfoKey`), as its error
/// messages spell the data key.
pub const MATCH_INFO_DATA_TYPE: &str = "MultiModalEncoderCacheMatchInfoKey";
/// `cacheSizeInMBPerServer` when unset or not positive: 4 GiB.
pub const DEFAULT_CACHE_SIZE_MB: i64 = 4096;
/// The memory the router assumes one tracked item takes on the engine (2 MiB): the LRU
/// holds `cacheSizeInMBPerServer` MiB / 2 MiB entries per endpoint.
pub const BYTES_PER_ITEM: i64 = 2 * 1024 * 1024;
/// Upper bounds of `llm_d_epp_encoder_cache_hit_ratio`'s buckets (the router's).
pub const HIT_RATIO_BUCKETS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Prefix of the cycle-state key where a producer leaves its [`EncoderCacheMatch`]; the
/// producer's name follows (see [`MmEmbeddingsCacheProducer::state_key`]).
pub const STATE_KEY_PREFIX: &str = "mm-embeddings-cache/";

/// Entries per endpoint for a budget of `mb` MiB (`lruCapacityFromCacheSizeMB`): `mb`
/// MiB / 2 MiB, at least 1; `mb <= 0` takes the 4096 MiB default (2048 entries). Go
/// wraps around past 2^43 MiB; here the product saturates.
pub fn lru_capacity_from_cache_size_mb(mb: i64) -> usize {
    let mb = if mb <= 0 { DEFAULT_CACHE_SIZE_MB } else { mb };
    let n = mb.saturating_mul(1024 * 1024) / BYTES_PER_ITEM;
    usize::try_from(n).unwrap_or(usize::MAX).max(1)
}

// ---------------------------------------------------------------------------------
// Parameters.

/// `mm-embeddings-cache-producer`'s parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerParams {
    /// `cacheSizeInMBPerServer`: the per-endpoint budget in MiB (0: unset; not positive
    /// takes the default, 4096).
    pub cache_size_in_mb_per_server: i64,
}

impl ProducerParams {
    /// From `parameters`: `cacheSizeInMBPerServer` (an integer), decoded strictly as the
    /// router does. `cacheSizeInMB`, which the router's own sample config sets but its
    /// decoder refuses, is read as an alias (with a warning) so that file loads; the real
    /// key wins when both are set.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        Self::parse(p, true)
    }

    // `warn`: whether an alias is worth a warning (the loader parses twice).
    fn parse(p: &Value, warn: bool) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["cacheSizeInMBPerServer", "cacheSizeInMB"])?;
        let int = |key: &str| -> Result<Option<i64>, String> {
            match q.value(key) {
                None => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| format!("parameter {key}: expected an integer, got {v}")),
            }
        };
        let real = int("cacheSizeInMBPerServer")?;
        let alias = int("cacheSizeInMB")?;
        if alias.is_some() && warn {
            tracing::warn!(
                plugin = PRODUCER_TYPE,
                "parameter cacheSizeInMB is read as cacheSizeInMBPerServer, the router's field \
                 (llm-d-router refuses cacheSizeInMB)"
            );
        }
        Ok(ProducerParams { cache_size_in_mb_per_server: real.or(alias).unwrap_or(0) })
    }
}

/// `mm-embeddings-cache-scorer`'s parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScorerParams {
    /// `producerName`: the producer instance to read (empty: the default,
    /// `mm-embeddings-cache-producer`).
    pub producer_name: String,
}

impl ScorerParams {
    /// From `parameters`: `producerName` (a string), decoded strictly.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["producerName"])?;
        Ok(ScorerParams { producer_name: q.string("producerName")?.unwrap_or_default() })
    }

    /// The producer instance this scorer reads: `producerName`, or the default producer's.
    pub fn producer(&self) -> &str {
        if self.producer_name.is_empty() { PRODUCER_TYPE } else { &self.producer_name }
    }
}

// ---------------------------------------------------------------------------------
// The match (the router's EncoderCacheMatchInfo).

/// One multimodal item of a request (the router's `MatchItem`; its modality, a metric
/// label there, is not known here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchItem {
    /// Content hash.
    pub hash: String,
    /// Weight in the score (1 for every item the producer makes).
    pub size: usize,
}

/// What one endpoint holds of a request's items (`EncoderCacheMatchInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncoderCacheMatchInfo {
    matched: Vec<MatchItem>,
    request: Vec<MatchItem>,
}

impl EncoderCacheMatchInfo {
    /// A match of `matched` among the request's `request` items.
    pub fn new(matched: Vec<MatchItem>, request: Vec<MatchItem>) -> Self {
        EncoderCacheMatchInfo { matched, request }
    }

    /// The items the endpoint likely holds.
    pub fn matched_items(&self) -> &[MatchItem] {
        &self.matched
    }

    /// The request's items, each once.
    pub fn request_items(&self) -> &[MatchItem] {
        &self.request
    }

    /// The scorer's score: matched size over request size; 0 when the request's size is
    /// 0 (no items).
    pub fn score(&self) -> f64 {
        let total: usize = self.request.iter().map(|i| i.size).sum();
        if total == 0 {
            return 0.0;
        }
        let matched: usize = self.matched.iter().map(|i| i.size).sum();
        matched as f64 / total as f64
    }
}

/// A request's items and which endpoints held each when the pick began: what the
/// producer computed once per request (the router's `Produce`), kept in the cycle
/// state so every profile, and every endpoint, reads the same snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderCacheMatch {
    items: Vec<MatchItem>,
    // Endpoint id → indices into `items` of what it holds (endpoints holding none are
    // absent).
    holders: HashMap<String, Vec<usize>>,
    // Endpoints whose hit ratio was recorded for this request (once each, as Produce).
    observed: Vec<String>,
}

impl EncoderCacheMatch {
    /// The request's items, each once, in prompt order.
    pub fn items(&self) -> &[MatchItem] {
        &self.items
    }

    /// What `endpoint` held of them.
    pub fn info(&self, endpoint: &str) -> EncoderCacheMatchInfo {
        let matched =
            self.holders.get(endpoint).map_or_else(Vec::new, |ix| ix.iter().map(|&i| self.items[i].clone()).collect());
        EncoderCacheMatchInfo::new(matched, self.items.clone())
    }
}

// ---------------------------------------------------------------------------------
// Metrics.

/// A producer's counters, under the router's metric names (its labels `plugin_type`
/// and `plugin_name` are the producer's type and [`name`](MmEmbeddingsCacheProducer::name);
/// the `modality` label is not known here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderCacheMetrics {
    /// `llm_d_epp_encoder_cache_queries_total`: item lookups, one per distinct item of
    /// each request with items.
    pub queries_total: u64,
    /// `llm_d_epp_encoder_cache_hits_total` by endpoint (the `pod` label): lookups that
    /// found the item in that endpoint's LRU. A forgotten endpoint's count goes too.
    pub hits_total: BTreeMap<String, u64>,
    /// `llm_d_epp_encoder_cache_hit_ratio`: matched over total items, per request and
    /// endpoint scored.
    pub hit_ratio: RatioHistogram,
}

/// A histogram over [`HIT_RATIO_BUCKETS`], as Prometheus exposes one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RatioHistogram {
    /// Cumulative counts: `buckets[i]` observations were at most `HIT_RATIO_BUCKETS[i]`.
    pub buckets: [u64; 11],
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations (the `+Inf` bucket).
    pub count: u64,
}

impl RatioHistogram {
    fn observe(&mut self, v: f64) {
        for (b, bound) in self.buckets.iter_mut().zip(HIT_RATIO_BUCKETS) {
            if v <= bound {
                *b += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

// Every producer built by `bind`, for metrics readers (the router's metrics are
// process-wide too). Weak: a dropped configuration's producers go away.
static PRODUCERS: Mutex<Vec<Weak<MmEmbeddingsCacheProducer>>> = Mutex::new(Vec::new());

/// The live producers that configurations loaded in this process made (through
/// `bind`), for exporting their [`metrics`](MmEmbeddingsCacheProducer::metrics).
pub fn live_producers() -> Vec<Arc<MmEmbeddingsCacheProducer>> {
    let mut all = PRODUCERS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.iter().filter_map(Weak::upgrade).collect()
}

// ---------------------------------------------------------------------------------
// The producer.

// Keys are hex hashes; unbounded (the capacity is enforced on insert) because `lru`
// would preallocate the whole capacity, which a large budget makes enormous.
type ItemLru = LruCache<String, ()>;

/// `mm-embeddings-cache-producer`: per-endpoint LRUs of the multimodal items recently
/// routed to each endpoint.
#[derive(Debug)]
pub struct MmEmbeddingsCacheProducer {
    name: String,
    capacity: usize,
    // The profile whose pick is the destination, when the profile handler names one
    // (the decode profile): the router records the primary profile's target only.
    // `None`: every pick (one profile runs per request).
    primary_profile: Option<String>,
    caches: Mutex<HashMap<String, ItemLru>>,
    metrics: Mutex<EncoderCacheMetrics>,
}

impl MmEmbeddingsCacheProducer {
    /// A producer named `name`.
    pub fn new(name: impl Into<String>, params: ProducerParams) -> Self {
        MmEmbeddingsCacheProducer {
            name: name.into(),
            capacity: lru_capacity_from_cache_size_mb(params.cache_size_in_mb_per_server),
            primary_profile: None,
            caches: Mutex::new(HashMap::new()),
            metrics: Mutex::new(EncoderCacheMetrics::default()),
        }
    }

    /// Records only the picks of `profile` (the destination's), as the router records
    /// the primary profile's target; `None` records every pick.
    pub fn with_primary_profile(mut self, profile: Option<String>) -> Self {
        self.primary_profile = profile;
        self
    }

    // Shared, and listed for metrics readers.
    fn shared(self) -> Arc<Self> {
        let p = Arc::new(self);
        let mut all = PRODUCERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&p));
        p
    }

    /// Instance name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Entries each endpoint's LRU holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The cycle-state key of this producer's [`EncoderCacheMatch`].
    pub fn state_key(&self) -> String {
        format!("{STATE_KEY_PREFIX}{}", self.name)
    }

    /// The match this producer left in `state`, if it ran for the request and the
    /// request has items.
    pub fn cached_match<'a>(&self, state: &'a CycleState) -> Option<&'a EncoderCacheMatch> {
        state.get::<EncoderCacheMatch>(&self.state_key())
    }

    /// What each of `endpoints` holds of `req`'s items (an empty match when it has none).
    /// The first call of a pick matches the items against every endpoint's LRU and
    /// caches the outcome in `state`: later profiles (which may run after this request's
    /// own first pick was recorded) see the LRUs as they were when the pick began, as
    /// the router's producer runs once before scheduling.
    pub fn match_info(
        &self,
        state: &mut CycleState,
        req: &LlmRequest,
        endpoints: &[&Endpoint],
    ) -> Vec<EncoderCacheMatchInfo> {
        let key = self.state_key();
        let mut m = match state.get::<EncoderCacheMatch>(&key) {
            Some(m) => m.clone(),
            None => match self.snapshot(req) {
                Some(m) => m,
                // No items: the router attaches nothing and the scorer scores 0.
                None => return vec![EncoderCacheMatchInfo::default(); endpoints.len()],
            },
        };
        let infos: Vec<EncoderCacheMatchInfo> = endpoints.iter().map(|e| m.info(&e.id)).collect();
        // The hit ratio is observed once per request and endpoint, as Produce does.
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        for (e, info) in endpoints.iter().zip(&infos) {
            if !m.observed.contains(&e.id) {
                m.observed.push(e.id.clone());
                metrics.hit_ratio.observe(info.matched_items().len() as f64 / info.request_items().len() as f64);
            }
        }
        drop(metrics);
        state.put(&key, m);
        infos
    }

    // Matches the request's items against every endpoint's LRU, counting the lookups
    // (`recordItemLookups`); `None` without items. Lookups only peek: reading must not
    // refresh an endpoint's recency.
    fn snapshot(&self, req: &LlmRequest) -> Option<EncoderCacheMatch> {
        let mut items: Vec<MatchItem> = Vec::new();
        for h in req.mm_hashes.iter().filter(|h| !h.is_empty()) {
            if !items.iter().any(|i| i.hash == *h) {
                items.push(MatchItem { hash: h.clone(), size: 1 });
            }
        }
        if items.is_empty() {
            return None;
        }
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let mut holders: HashMap<String, Vec<usize>> = HashMap::new();
        for (endpoint, lru) in caches.iter() {
            let held: Vec<usize> = (0..items.len()).filter(|&i| lru.contains(&items[i].hash)).collect();
            if !held.is_empty() {
                holders.insert(endpoint.clone(), held);
            }
        }
        drop(caches);
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics.queries_total += items.len() as u64;
        for (endpoint, held) in &holders {
            *metrics.hits_total.entry(endpoint.clone()).or_default() += held.len() as u64;
        }
        Some(EncoderCacheMatch { items, holders, observed: Vec::new() })
    }

    /// Adds `hashes` to `endpoint`'s LRU (most recent last), evicting its least recent
    /// items past the capacity: what the router's `PreRequest` does for a target.
    pub fn record(&self, endpoint: &str, hashes: &[String]) {
        if hashes.iter().all(String::is_empty) {
            return;
        }
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let lru = caches.entry(endpoint.to_string()).or_insert_with(LruCache::unbounded);
        for h in hashes.iter().filter(|h| !h.is_empty()) {
            lru.put(h.clone(), ());
            while lru.len() > self.capacity {
                lru.pop_lru();
            }
        }
    }

    /// Whether `endpoint`'s LRU holds `hash` (without refreshing it).
    pub fn holds(&self, endpoint: &str, hash: &str) -> bool {
        self.caches.lock().unwrap_or_else(|p| p.into_inner()).get(endpoint).is_some_and(|l| l.contains(hash))
    }

    /// Items tracked per endpoint, most first, then by name (the router's `DumpState`
    /// view, which never shows the hashes).
    pub fn endpoint_items(&self) -> Vec<(String, usize)> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, usize)> = caches.iter().map(|(e, l)| (e.clone(), l.len())).collect();
        drop(caches);
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// A snapshot of the counters.
    pub fn metrics(&self) -> EncoderCacheMetrics {
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PickObserver for MmEmbeddingsCacheProducer {
    /// Records the request's items on the endpoint the destination profile chose.
    fn on_pick(&self, _: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint) {
        if self.primary_profile.as_deref().is_some_and(|p| p != profile) {
            return;
        }
        self.record(&chosen.id, &req.mm_hashes);
    }

    /// Drops an endpoint that went away (the router's endpoint-delete extractor).
    fn forget(&self, endpoint: &str) {
        self.caches.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
        self.metrics.lock().unwrap_or_else(|p| p.into_inner()).hits_total.remove(endpoint);
    }
}

// ---------------------------------------------------------------------------------
// The scorer.

/// `mm-embeddings-cache-scorer`: each endpoint's share of the request's multimodal items
/// it likely has encoded, as its producer matched them; 0 everywhere without a producer
/// or without items.
#[derive(Debug, Default)]
pub struct MmEmbeddingsCacheScorer {
    producer: Option<Arc<MmEmbeddingsCacheProducer>>,
}

impl MmEmbeddingsCacheScorer {
    /// A scorer reading `producer`.
    pub fn new(producer: Arc<MmEmbeddingsCacheProducer>) -> Self {
        MmEmbeddingsCacheScorer { producer: Some(producer) }
    }

    /// The producer it reads, once bound.
    pub fn producer(&self) -> Option<&Arc<MmEmbeddingsCacheProducer>> {
        self.producer.as_ref()
    }
}

impl Scorer for MmEmbeddingsCacheScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        match &self.producer {
            Some(p) => p.match_info(state, req, eps).iter().map(EncoderCacheMatchInfo::score).collect(),
            None => vec![0.0; eps.len()],
        }
    }
}

// ---------------------------------------------------------------------------------
// Registration and binding.

/// Registers both types. Their factories check the parameters; [`bind`] builds the
/// producers and hands each scorer the one it names.
pub(crate) fn register(r: &mut crate::registry::PluginRegistry) {
    fn handle(name: &str, type_name: &str) -> PluginHandle {
        PluginHandle { name: name.into(), type_name: type_name.into(), ..Default::default() }
    }
    r.register(PRODUCER_TYPE, |n, p| {
        ProducerParams::from_params(p)?;
        Ok(handle(n, PRODUCER_TYPE))
    });
    r.register(SCORER_TYPE, |n, p| {
        ScorerParams::from_params(p)?;
        // Scores 0 until `bind` gives it its producer.
        Ok(PluginHandle { scorer: Some(Arc::new(MmEmbeddingsCacheScorer::default())), ..handle(n, SCORER_TYPE) })
    });
}

/// Builds every `mm-embeddings-cache-producer` of a file and binds each
/// `mm-embeddings-cache-scorer` to the one its `producerName` names (default
/// `mm-embeddings-cache-producer`), as llm-d-router resolves the data key: a scorer of
/// the default producer with no plugin of that name gets one auto-created with default
/// parameters (`CreateMissingDataProducers`); a scorer naming a producer that does not
/// exist fails the load. The scorer's handle also carries the producer's observer, so
/// the profiles that run the scorer record their picks, and the producer's own handle
/// carries it so endpoint removals reach it. Picks are recorded for the profile handler's
/// destination (decode) profile only, as the router records the primary profile's
/// target. `named` is every plugin of the file: (name, type, parameters).
pub(crate) fn bind(
    named: &[(String, String, Value)],
    plugins: &mut BTreeMap<String, PluginHandle>,
) -> Result<(), (String, String)> {
    // One handler at most (the loader refuses more); none means one profile per request.
    let handlers: Vec<_> = plugins.values().filter_map(|h| h.profile_handler.clone()).collect();
    let primary = match handlers.as_slice() {
        [h] => h.roles().decode,
        _ => None,
    };
    let mut producers: BTreeMap<String, Arc<MmEmbeddingsCacheProducer>> = BTreeMap::new();
    for (name, _, params) in named.iter().filter(|(_, t, _)| t == PRODUCER_TYPE) {
        let parsed = ProducerParams::parse(params, false).map_err(|e| (name.clone(), e))?;
        let p = MmEmbeddingsCacheProducer::new(name.clone(), parsed).with_primary_profile(primary.clone()).shared();
        if let Some(h) = plugins.get_mut(name) {
            h.observer = Some(p.clone());
        }
        producers.insert(name.clone(), p);
    }
    for (name, _, params) in named.iter().filter(|(_, t, _)| t == SCORER_TYPE) {
        let want = ScorerParams::from_params(params).map_err(|e| (name.clone(), e))?.producer().to_string();
        let producer = match producers.get(&want) {
            Some(p) => Some(p.clone()),
            None if want == PRODUCER_TYPE && !plugins.contains_key(&want) => {
                let p = MmEmbeddingsCacheProducer::new(want.clone(), ProducerParams::default())
                    .with_primary_profile(primary.clone())
                    .shared();
                tracing::info!(producer = %want, consumer = %name, "auto-created default producer");
                plugins.insert(
                    want.clone(),
                    PluginHandle {
                        name: want.clone(),
                        type_name: PRODUCER_TYPE.into(),
                        observer: Some(p.clone()),
                        ..Default::default()
                    },
                );
                producers.insert(want.clone(), p.clone());
                Some(p)
            }
            // The default producer's name is taken by another plugin: the router creates
            // none and the scorer finds no match data (it scores 0).
            None if want == PRODUCER_TYPE => {
                tracing::warn!(
                    scorer = %name,
                    "plugin {want:?} is not an {PRODUCER_TYPE}: the scorer has no match data and scores 0"
                );
                None
            }
            None => {
                return Err((
                    name.clone(),
                    format!(
                        "no default producer found for missing data key {MATCH_INFO_DATA_TYPE}/{want}, consumed by \
                         {name} (producerName {want:?} names no {PRODUCER_TYPE})"
                    ),
                ));
            }
        };
        if let Some(h) = plugins.get_mut(name) {
            h.observer = producer.clone().map(|p| p as Arc<dyn PickObserver>);
            h.scorer = Some(Arc::new(MmEmbeddingsCacheScorer { producer }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::endpoint::Role;
    use crate::registry::PluginRegistry;

    fn ep(id: &str) -> Endpoint {
        Endpoint::new(id, format!("{id}:8000"), Role::Both)
    }

    fn producer(mb: i64) -> MmEmbeddingsCacheProducer {
        MmEmbeddingsCacheProducer::new("test", ProducerParams { cache_size_in_mb_per_server: mb })
    }

    fn req(hashes: &[&str]) -> LlmRequest {
        LlmRequest { id: "r".into(), mm_hashes: hashes.iter().map(|h| h.to_string()).collect(), ..Default::default() }
    }

    fn item(h: &str) -> MatchItem {
        MatchItem { hash: h.into(), size: 1 }
    }

    // Order-insensitive comparison, as testify's ElementsMatch.
    fn sorted(items: &[MatchItem]) -> Vec<String> {
        let mut v: Vec<String> = items.iter().map(|i| i.hash.clone()).collect();
        v.sort();
        v
    }

    /// Mirrors `TestLRUCapacityFromCacheSizeMB`.
    #[test]
    fn lru_capacity_follows_the_budget() {
        assert_eq!(lru_capacity_from_cache_size_mb(4), 2);
        assert_eq!(lru_capacity_from_cache_size_mb(2048), 1024);
        assert_eq!(lru_capacity_from_cache_size_mb(0), 2048);
        assert_eq!(lru_capacity_from_cache_size_mb(-5), 2048);
        assert_eq!(lru_capacity_from_cache_size_mb(1), 1);
        assert_eq!(lru_capacity_from_cache_size_mb(i64::MAX), (i64::MAX / BYTES_PER_ITEM) as usize);
        // And each endpoint's LRU stops there.
        let p = producer(20);
        assert_eq!(p.capacity(), 10);
        let hashes: Vec<String> = (0..25).map(|i| format!("h{i}")).collect();
        p.record("a", &hashes);
        p.record("b", &hashes[..3]);
        assert_eq!(p.endpoint_items(), [("a".to_string(), 10), ("b".to_string(), 3)]);
        assert!(p.holds("a", "h24") && p.holds("a", "h15") && !p.holds("a", "h14"));
    }

    /// Mirrors the producer's and the scorer's `TestFactory`, with strict decoding.
    #[test]
    fn parameters_decode_strictly() {
        let p = ProducerParams::from_params(&json!({"cacheSizeInMBPerServer": 4})).unwrap();
        assert_eq!(p.cache_size_in_mb_per_server, 4);
        let e = ProducerParams::from_params(&json!({"cacheSizeInMBPerServer": "bad"})).unwrap_err();
        assert!(e.contains("cacheSizeInMBPerServer"), "{e}");
        assert!(ProducerParams::from_params(&json!({"cacheSizeInMBPerServer": 4.5})).is_err());
        assert_eq!(ProducerParams::from_params(&Value::Null).unwrap(), ProducerParams::default());
        // The router's sample config's key, read as an alias; the real key wins.
        assert_eq!(
            ProducerParams::from_params(&json!({"cacheSizeInMB": 2048})).unwrap().cache_size_in_mb_per_server,
            2048
        );
        let both = json!({"cacheSizeInMB": 2048, "cacheSizeInMBPerServer": 8});
        assert_eq!(ProducerParams::from_params(&both).unwrap().cache_size_in_mb_per_server, 8);
        let e = ProducerParams::from_params(&json!({"cacheSize": 1})).unwrap_err();
        assert_eq!(e, r#"parameter "cacheSize" is not one of: cacheSizeInMBPerServer, cacheSizeInMB"#);

        assert_eq!(ScorerParams::from_params(&json!({})).unwrap().producer(), PRODUCER_TYPE);
        assert_eq!(ScorerParams::from_params(&json!({"producerName": ""})).unwrap().producer(), PRODUCER_TYPE);
        assert_eq!(ScorerParams::from_params(&json!({"producerName": "mm"})).unwrap().producer(), "mm");
        assert!(ScorerParams::from_params(&json!({"producerName": 3})).is_err());
        assert!(ScorerParams::from_params(&json!({"cacheSizeInMB": 3})).unwrap_err().contains("cacheSizeInMB"));

        let mut r = PluginRegistry::new();
        register(&mut r);
        let make = |t: &str, p: Value| r.get(t).map(|f| f("x", &p));
        let h = make(PRODUCER_TYPE, json!({"cacheSizeInMBPerServer": 4})).unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.type_name.as_str()), ("x", PRODUCER_TYPE));
        assert!(make(PRODUCER_TYPE, json!({"cacheSizeInMBPerServer": "bad"})).unwrap().is_err());
        let h = make(SCORER_TYPE, Value::Null).unwrap().unwrap();
        assert!(h.scorer.is_some());
        assert!(make(SCORER_TYPE, json!({"weight": 1})).unwrap().is_err());
    }

    /// Mirrors `TestExtractMMItemsFromTokenizedRequest` and the two nil/empty cases: an
    /// item repeated in a request counts once; no items, no match and no lookups.
    #[test]
    fn items_are_distinct_and_absent_without_media() {
        let p = producer(0);
        let (a, b) = (ep("a"), ep("b"));
        let mut st = CycleState::default();
        let infos = p.match_info(&mut st, &req(&["image-a", "image-b", "image-a"]), &[&a]);
        assert_eq!(infos[0].request_items(), [item("image-a"), item("image-b")]);
        assert!(infos[0].matched_items().is_empty());
        assert_eq!(p.cached_match(&st).map(|m| m.items().len()), Some(2));

        let mut st = CycleState::default();
        let before = p.metrics().queries_total;
        let infos = p.match_info(&mut st, &req(&[]), &[&a, &b]);
        assert_eq!(infos, vec![EncoderCacheMatchInfo::default(); 2]);
        assert!(p.cached_match(&st).is_none());
        assert_eq!(p.metrics().queries_total, before);
        assert_eq!(MmEmbeddingsCacheScorer::new(Arc::new(producer(0))).score(&mut st, &req(&[]), &[&a]), [0.0]);
    }

    /// Mirrors `TestProduceMatchesMultiplePodsAndPreRequestUpdatesPlacement`.
    #[test]
    fn matches_several_endpoints_and_the_pick_records_the_target() {
        let p = producer(0);
        p.record("default/pod-a", &["hash-a".into()]);
        p.record("default/pod-b", &["hash-a".into()]);
        let (a, b, c) = (ep("default/pod-a"), ep("default/pod-b"), ep("default/pod-c"));
        let r = req(&["hash-a", "hash-c"]);
        let mut st = CycleState::default();
        let infos = p.match_info(&mut st, &r, &[&a, &b, &c]);
        for info in &infos[..2] {
            assert_eq!(sorted(info.matched_items()), ["hash-a"]);
            assert_eq!(sorted(info.request_items()), ["hash-a", "hash-c"]);
        }
        assert!(infos[2].matched_items().is_empty());
        assert_eq!(sorted(infos[2].request_items()), ["hash-a", "hash-c"]);

        p.on_pick(&st, &r, "default", &c);
        for e in ["default/pod-a", "default/pod-b", "default/pod-c"] {
            assert!(p.holds(e, "hash-a"), "{e}");
        }
        assert!(p.holds("default/pod-c", "hash-c"));
        assert!(!p.holds("default/pod-a", "hash-c"));
        // The pick's own snapshot is unchanged: later profiles read what the pick began with.
        assert!(p.match_info(&mut st, &r, &[&c])[0].matched_items().is_empty());
    }

    /// Mirrors `TestLRUEviction`: 4 MiB hold two items per endpoint.
    #[test]
    fn the_least_recent_item_is_evicted() {
        let p = producer(4);
        let a = ep("default/pod-a");
        for h in ["hash-1", "hash-2", "hash-3"] {
            let r = req(&[h]);
            let mut st = CycleState::default();
            p.match_info(&mut st, &r, &[&a]);
            p.on_pick(&st, &r, "default", &a);
        }
        assert!(!p.holds("default/pod-a", "hash-1"));
        assert!(p.holds("default/pod-a", "hash-2"));
        assert!(p.holds("default/pod-a", "hash-3"));
    }

    /// Mirrors `TestStalePodCleanup` and `TestExtractEndpointRemovesDeletedPod`: a removed
    /// endpoint is forgotten (llmd learns removals from the datastore; the router also
    /// sweeps every two minutes).
    #[test]
    fn a_forgotten_endpoint_holds_nothing() {
        let p = producer(0);
        p.record("default/pod-a", &["hash-a".into()]);
        p.record("default/pod-b", &["hash-a".into()]);
        let (a, b) = (ep("default/pod-a"), ep("default/pod-b"));
        p.match_info(&mut CycleState::default(), &req(&["hash-a"]), &[&a, &b]);
        assert_eq!(p.metrics().hits_total.get("default/pod-b"), Some(&1));
        p.forget("default/pod-b");
        assert!(p.holds("default/pod-a", "hash-a"));
        assert!(!p.holds("default/pod-b", "hash-a"));
        assert_eq!(p.metrics().hits_total.get("default/pod-b"), None);
        let infos = p.match_info(&mut CycleState::default(), &req(&["hash-a"]), &[&a, &b]);
        assert_eq!(infos[0].matched_items(), [item("hash-a")]);
        assert!(infos[1].matched_items().is_empty());
        assert_eq!(infos[1].request_items(), [item("hash-a")]);
    }

    /// Mirrors `TestRecordItemLookupsMetrics`, `TestRecordHitRatioMetrics` and
    /// `TestProduceRecordsMetrics`.
    #[test]
    fn lookups_hits_and_ratios_are_counted() {
        let p = producer(0);
        // Lookups count without any endpoint to score.
        p.match_info(&mut CycleState::default(), &req(&["hash-1", "hash-2"]), &[]);
        let m = p.metrics();
        assert_eq!((m.queries_total, m.hits_total.len(), m.hit_ratio.count), (2, 0, 0));
        p.record("default/pod-a", &["hash-1".into()]);
        let a = ep("default/pod-a");
        let mut st = CycleState::default();
        p.match_info(&mut st, &req(&["hash-1", "hash-3"]), &[&a]);
        // A second profile scoring the same endpoint observes nothing more.
        p.match_info(&mut st, &req(&["hash-1", "hash-3"]), &[&a]);
        let m = p.metrics();
        assert_eq!(m.queries_total, 4);
        assert_eq!(m.hits_total.get("default/pod-a"), Some(&1));
        assert_eq!((m.hit_ratio.count, m.hit_ratio.sum), (1, 0.5));
        // 3 of 5 matched, 0 of 2: two more observations summing 0.6.
        let five = ["h1", "h2", "h3", "h4", "h5"].map(String::from);
        p.record("x", &five[..3]);
        let (x, y) = (ep("x"), ep("y"));
        p.match_info(&mut CycleState::default(), &req(&["h1", "h2", "h3", "h4", "h5"]), &[&x]);
        p.match_info(&mut CycleState::default(), &req(&["h8", "h9"]), &[&y]);
        let h = p.metrics().hit_ratio;
        assert_eq!(h.count, 3);
        assert!((h.sum - 1.1).abs() < 1e-9, "{}", h.sum);
        // Cumulative buckets: 0 ≤ 0.0; 0.5 first counts at 0.5; 0.6 at 0.6.
        assert_eq!(h.buckets, [1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3]);
    }

    /// Mirrors the scorer's `TestScoreFromProducedMatchInfo` and
    /// `TestScoreMissingOrInvalidMatchInfoReturnsZero`.
    #[test]
    fn scores_are_matched_over_total_size() {
        let request = vec![MatchItem { hash: "image".into(), size: 80 }, MatchItem { hash: "icon".into(), size: 20 }];
        let info = |m: &[MatchItem]| EncoderCacheMatchInfo::new(m.to_vec(), request.clone());
        assert_eq!(info(&request[..1]).score(), 0.8);
        assert_eq!(info(&request[1..]).score(), 0.2);
        assert_eq!(info(&[]).score(), 0.0);
        assert_eq!(EncoderCacheMatchInfo::new(vec![item("image")], Vec::new()).score(), 0.0);
        // No producer (no match info): 0.
        let (a, b) = (ep("a"), ep("b"));
        let unbound = MmEmbeddingsCacheScorer::default();
        assert_eq!(unbound.score(&mut CycleState::default(), &req(&["h"]), &[&a, &b]), [0.0, 0.0]);
    }

    /// A pick records the request's image on the chosen endpoint; the same image then
    /// scores 1 there and 0 elsewhere, a different one 0 everywhere.
    #[test]
    fn the_same_image_goes_back_where_it_went() {
        use crate::config::{Profile, SchedulerConfig};
        use crate::plugins::pickers::MaxScorePicker;
        let p = Arc::new(producer(0));
        let scorer = Arc::new(MmEmbeddingsCacheScorer::new(p.clone()));
        let body = |url: &str| json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]});
        let image = |url: &str| LlmRequest {
            id: "r".into(),
            mm_hashes: crate::request::multimodal_hashes(&body(url)),
            ..Default::default()
        };
        let eps = [ep("a"), ep("b"), ep("c")];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let config = SchedulerConfig {
            profiles: vec![Profile {
                name: "default".into(),
                filters: Vec::new(),
                scorers: vec![(SCORER_TYPE.into(), scorer.clone(), 1.0)],
                picker: ("max-score-picker".into(), Arc::new(MaxScorePicker::default())),
                observers: vec![p.clone()],
            }],
            handler: Arc::new(crate::plugins::profiles::SingleProfileHandler),
            feature_gates: Vec::new(),
            request_timeout: std::time::Duration::from_secs(60),
            discovery: None,
            data_layer: Default::default(),
            plugins: BTreeMap::new(),
            flow_control: None,
            request_control: Default::default(),
            parsers: None,
        };
        let sched = crate::Scheduler::new(config, 3);
        let first = sched.pick(&image("https://example.com/cat.png"), &eps).unwrap();
        let chosen = first.destination().map(|d| d.endpoint.clone()).unwrap_or_default();
        let scores = scorer.score(&mut CycleState::default(), &image("https://example.com/cat.png"), &refs);
        let want: Vec<f64> = eps.iter().map(|e| if e.id == chosen { 1.0 } else { 0.0 }).collect();
        assert_eq!(scores, want);
        let again = sched.pick(&image("https://example.com/cat.png"), &eps).unwrap();
        assert_eq!(again.destination().map(|d| d.endpoint.as_str()), Some(chosen.as_str()));
        let other = scorer.score(&mut CycleState::default(), &image("https://example.com/dog.png"), &refs);
        assert_eq!(other, [0.0; 3]);
        // The endpoint goes away: nothing is held any more.
        p.forget(&chosen);
        assert_eq!(scorer.score(&mut CycleState::default(), &image("https://example.com/cat.png"), &refs), [0.0; 3]);
    }

    fn load(plugins: &[(&str, &str, Value)]) -> Result<BTreeMap<String, PluginHandle>, (String, String)> {
        let mut r = PluginRegistry::with_builtins();
        register(&mut r);
        let named: Vec<(String, String, Value)> =
            plugins.iter().map(|(n, t, p)| (n.to_string(), t.to_string(), p.clone())).collect();
        let mut handles = BTreeMap::new();
        for (n, t, p) in &named {
            let f = r.get(t).ok_or_else(|| (n.clone(), format!("unknown type {t}")))?;
            handles.insert(n.clone(), f(n, p).map_err(|e| (n.clone(), e))?);
        }
        bind(&named, &mut handles)?;
        Ok(handles)
    }

    fn bound_producer(h: &PluginHandle) -> bool {
        h.observer.is_some()
    }

    /// The scorer finds its producer by name; the default one is auto-created when
    /// missing, a named one that is missing fails the load.
    #[test]
    fn scorers_bind_to_their_producers() {
        // The router's sample: the alias loads, the scorer is bound.
        let h = load(&[
            (PRODUCER_TYPE, PRODUCER_TYPE, json!({"cacheSizeInMB": 2048})),
            (SCORER_TYPE, SCORER_TYPE, Value::Null),
        ])
        .unwrap();
        assert!(bound_producer(&h[SCORER_TYPE]) && bound_producer(&h[PRODUCER_TYPE]));
        assert!(live_producers().iter().any(|p| p.capacity() == 1024));

        // No producer: the default one is created.
        let h = load(&[("s", SCORER_TYPE, json!({}))]).unwrap();
        assert_eq!(h[PRODUCER_TYPE].type_name, PRODUCER_TYPE);
        assert!(bound_producer(&h["s"]) && bound_producer(&h[PRODUCER_TYPE]));

        // A named producer.
        let h = load(&[
            ("mm", PRODUCER_TYPE, json!({"cacheSizeInMBPerServer": 8})),
            ("s", SCORER_TYPE, json!({"producerName": "mm"})),
        ])
        .unwrap();
        assert!(bound_producer(&h["s"]));
        assert!(!h.contains_key(PRODUCER_TYPE));

        // A producer under another name does not serve a scorer of the default key: the
        // default is created beside it.
        let h = load(&[("mm", PRODUCER_TYPE, json!({})), ("s", SCORER_TYPE, json!({}))]).unwrap();
        assert!(h.contains_key(PRODUCER_TYPE));

        // The default name taken by another type: no producer, the scorer scores 0.
        let h = load(&[(PRODUCER_TYPE, "queue-scorer", json!({})), ("s", SCORER_TYPE, json!({}))]).unwrap();
        assert!(!bound_producer(&h["s"]));

        // A named producer that does not exist, or is not a producer.
        let e = load(&[("s", SCORER_TYPE, json!({"producerName": "nope"}))]).unwrap_err();
        assert_eq!(e.0, "s");
        assert!(e.1.contains("no default producer found for missing data key MultiModalEncoderCacheMatchInfoKey/nope"));
        let e = load(&[("q", "queue-scorer", json!({})), ("s", SCORER_TYPE, json!({"producerName": "q"}))]);
        assert!(e.is_err());
    }

    /// With a P/D handler, only the destination (decode) profile's pick is recorded, as
    /// the router's PreRequest records the primary profile's target.
    #[test]
    fn only_the_destination_profile_records() {
        let h = load(&[("pd", "pd-profile-handler", json!({})), ("s", SCORER_TYPE, json!({}))]).unwrap();
        let Some(observer) = h["s"].observer.clone() else { panic!("scorer not bound") };
        let r = req(&["img"]);
        let (p1, d1) = (ep("p1"), ep("d1"));
        observer.on_pick(&CycleState::default(), &r, "prefill", &p1);
        observer.on_pick(&CycleState::default(), &r, "decode", &d1);
        let Some(scorer) = h["s"].scorer.clone() else { panic!("no scorer") };
        assert_eq!(scorer.score(&mut CycleState::default(), &r, &[&p1, &d1]), [0.0, 1.0]);
    }
}
