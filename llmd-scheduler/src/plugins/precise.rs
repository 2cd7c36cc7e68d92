//! `precise-prefix-cache-scorer`: prefix-cache awareness from what the engines report.
//! Endpoints score the tier-weighted fraction of the request's leading blocks their
//! KV events say they hold (see [`crate::kvindex`]; the weights are
//! `indexerConfig.kvCacheBackendConfigs`). Needs the request's token ids (the gateway
//! tokenizes with the model's tokenizer).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmd_kvcache::KvEventBatch;

use super::Params;
use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::clock::{Clock, SystemClock};
use crate::endpoint::Endpoint;
use crate::kvindex::{BlockKey, KvBlockIndex, PrefixCredit, TierWeights, block_keys};
use crate::plugin::{CycleState, KvEventConsumer, PickObserver, Scorer};
use crate::request::LlmRequest;

/// The precise prefix scorer and its index.
pub struct PrecisePrefixCacheScorer {
    block_size: usize,
    max_blocks: usize,
    events: KvEventsConfig,
    index: Mutex<KvBlockIndex>,
    // `speculativeIndexing`: what a pick is about to put in the chosen endpoint's
    // cache, believed until the engine's own events have had time to say so.
    speculative: Option<Mutex<Speculative>>,
    clock: Arc<dyn Clock>,
}

/// Blocks believed held because a request was just sent there, until they expire.
#[derive(Debug)]
struct Speculative {
    ttl: Duration,
    // Endpoint → block → expiry (clock time).
    held: HashMap<String, HashMap<BlockKey, Duration>>,
    // What to expire, in expiry order (re-adding extends the entry in `held`).
    queue: VecDeque<(Duration, String, Vec<BlockKey>)>,
}

impl Speculative {
    fn expire(&mut self, now: Duration) {
        while self.queue.front().is_some_and(|(t, _, _)| *t <= now) {
            let Some((_, endpoint, keys)) = self.queue.pop_front() else { break };
            if let Some(held) = self.held.get_mut(&endpoint) {
                for k in keys {
                    if held.get(&k).is_some_and(|t| *t <= now) {
                        held.remove(&k);
                    }
                }
                if held.is_empty() {
                    self.held.remove(&endpoint);
                }
            }
        }
    }

    fn add(&mut self, now: Duration, endpoint: &str, keys: &[BlockKey]) {
        let until = now + self.ttl;
        let held = self.held.entry(endpoint.to_string()).or_default();
        for k in keys {
            held.insert(*k, until);
        }
        self.queue.push_back((until, endpoint.to_string(), keys.to_vec()));
    }
}

impl std::fmt::Debug for PrecisePrefixCacheScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrecisePrefixCacheScorer")
            .field("block_size", &self.block_size)
            .field("max_blocks", &self.max_blocks)
            .field("events", &self.events)
            .field("speculative", &self.speculative.is_some())
            .finish()
    }
}

/// Where KV events come from (`kvEventsConfig`): each endpoint's own publisher, and
/// optionally one socket all engines publish to.
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventsConfig {
    /// `zmqEndpoint`: a socket to bind, where engines publish with topics
    /// `kv@<pod>@<model>` ("global socket" mode).
    pub zmq_endpoint: Option<String>,
    /// `topicFilter` (default `kv@`) of that socket.
    pub topic_filter: String,
    /// `discoverPods` (default true): subscribe to every endpoint.
    pub discover_pods: bool,
    /// `podDiscoveryConfig.socketPort` (5557): the publisher's port on an endpoint that
    /// does not advertise its own. Only when `podDiscoveryConfig` is set: the router
    /// always derives this address, but llmd engines advertise theirs, and several on
    /// one host would otherwise be read from one engine's port until they do.
    pub socket_port: Option<u16>,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        KvEventsConfig { zmq_endpoint: None, topic_filter: "kv@".into(), discover_pods: true, socket_port: None }
    }
}

// The object at `key` of `p` (Null when absent) and the path errors name it by.
fn nested<'a>(p: &'a Params<'_>, key: &str) -> &'a serde_json::Value {
    static NULL: serde_json::Value = serde_json::Value::Null;
    p.value(key).unwrap_or(&NULL)
}

fn at(path: &str) -> impl Fn(String) -> String + '_ {
    move |e| e.replacen("parameter ", &format!("parameter {path}."), 1)
}

impl PrecisePrefixCacheScorer {
    /// From `parameters`, as llm-d-router's `precise-prefix-cache-producer` (and the
    /// scorer it replaces) reads them: `tokenProcessorConfig` {`blockSizeTokens` (16),
    /// `blockSize` (its older name), `hashSeed`, `hashAlgorithm` (`cbor-fnv`|`xxh64`)},
    /// `indexerConfig` {`kvBlockIndexConfig` {`inMemoryConfig`, `enableMetrics`,
    /// `metricsLoggingInterval`}, `kvCacheBackendConfigs`}, `kvEventsConfig`
    /// {`zmqEndpoint`, `topicFilter`, `concurrency`, `engineType` (vllm), `discoverPods`,
    /// `podDiscoveryConfig` {`socketPort`, `podLabelSelector`, `podNamespace`}},
    /// `speculativeIndexing`, `speculativeTTL`; and llmd's own `blockSize` and
    /// `maxPrefixBlocksToMatch` (256). `kvCacheBackendConfigs` (`[{name, weight}]`,
    /// llm-d's defaults gpu 1.0 and cpu 0.8) replaces the default tier weights entirely
    /// when given; tiers it does not name score 1.0, as in llm-d. The hash seed and
    /// algorithm shape the router's own block keys only; llmd keys blocks by its own
    /// hash of the tokens, on requests and events alike, so they change nothing here.
    /// What llmd does not build (a Redis or cost-aware index, the router's tokenizer
    /// pool, replay sockets, SGLang events) is refused.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let p = Params(p);
        p.check(&[
            "blockSize",
            "maxPrefixBlocksToMatch",
            "tokenProcessorConfig",
            "indexerConfig",
            "kvEventsConfig",
            "speculativeIndexing",
            "speculativeTTL",
        ])?;
        let tp = Params(nested(&p, "tokenProcessorConfig"));
        tp.check_at("tokenProcessorConfig", &["blockSizeTokens", "blockSize", "hashSeed", "hashAlgorithm"])?;
        let router = match tp.u64("blockSizeTokens", 0).map_err(at("tokenProcessorConfig"))? {
            0 => tp.u64("blockSize", 16).map_err(at("tokenProcessorConfig"))?,
            n => n,
        };
        tp.string("hashSeed").map_err(at("tokenProcessorConfig"))?;
        if let Some(a) = tp.string("hashAlgorithm").map_err(at("tokenProcessorConfig"))?
            && !["", "cbor-fnv", "xxh64"].contains(&a.as_str())
        {
            return Err(format!(
                "parameter tokenProcessorConfig.hashAlgorithm: unsupported hashAlgorithm {a:?}: accepted values are \"cbor-fnv\" and \"xxh64\""
            ));
        }
        let weights = Self::check_indexer(&Params(nested(&p, "indexerConfig")))?;
        let events = Self::events(&Params(nested(&p, "kvEventsConfig")))?;
        // llmd's own top-level key wins.
        let block_size = p.u64("blockSize", router)? as usize;
        if block_size == 0 {
            return Err("parameter blockSize: must be at least 1".into());
        }
        let ttl = match p.string("speculativeTTL")?.filter(|t| !t.is_empty()) {
            None => Duration::from_secs(2),
            Some(t) => crate::plugins::parse_duration(&t).map_err(|e| format!("parameter speculativeTTL: {e}"))?,
        };
        let speculative = p
            .bool("speculativeIndexing", false)?
            .then(|| Mutex::new(Speculative { ttl, held: HashMap::new(), queue: VecDeque::new() }));
        Ok(PrecisePrefixCacheScorer {
            block_size,
            max_blocks: p.u64("maxPrefixBlocksToMatch", 256)? as usize,
            events,
            index: Mutex::new(KvBlockIndex::with_weights(weights)),
            speculative,
            clock: Arc::new(SystemClock::default()),
        })
    }

    // The indexer's parameters, and the tier weights they give.
    fn check_indexer(ix: &Params<'_>) -> Result<TierWeights, String> {
        ix.check_at("indexerConfig", &["kvBlockIndexConfig", "kvCacheBackendConfigs", "tokenizersPoolConfig"])?;
        if ix.value("tokenizersPoolConfig").is_some() {
            return Err("parameter indexerConfig.tokenizersPoolConfig: tokenizersPoolConfig is not supported; \
                        configure a token-producer plugin instead"
                .into());
        }
        let kb = Params(nested(ix, "kvBlockIndexConfig"));
        kb.check_at(
            "indexerConfig.kvBlockIndexConfig",
            &["inMemoryConfig", "redisConfig", "costAwareMemoryConfig", "enableMetrics", "metricsLoggingInterval"],
        )?;
        for unbuilt in ["redisConfig", "costAwareMemoryConfig"] {
            if kb.value(unbuilt).is_some() {
                return Err(format!(
                    "parameter indexerConfig.kvBlockIndexConfig.{unbuilt}: not built in llmd (the index is in memory)"
                ));
            }
        }
        Params(nested(&kb, "inMemoryConfig"))
            .check_at("indexerConfig.kvBlockIndexConfig.inMemoryConfig", &["size", "podCacheSize"])?;
        kb.bool("enableMetrics", false).map_err(at("indexerConfig.kvBlockIndexConfig"))?;
        let Some(b) = ix.value("kvCacheBackendConfigs") else { return Ok(TierWeights::default()) };
        let list = b.as_array().ok_or("parameter indexerConfig.kvCacheBackendConfigs: expected a list")?;
        let mut tiers = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let q = Params(t);
            let path = format!("indexerConfig.kvCacheBackendConfigs[{i}]");
            q.check_at(&path, &["name", "weight"])?;
            let name = q.string("name").map_err(at(&path))?.unwrap_or_default();
            // A missing weight is 0, as Go's decoding leaves it in llm-d.
            let weight = q.f64("weight", 0.0).map_err(at(&path))?;
            tiers.push((name, weight));
        }
        // The given list replaces the defaults, as llm-d-kv-cache's indexer does.
        TierWeights::new(tiers).map_err(|e| match e {
            crate::SchedulerError::Config { what, reason, .. } => format!("parameter indexerConfig.{what}: {reason}"),
            other => other.to_string(),
        })
    }

    fn events(ev: &Params<'_>) -> Result<KvEventsConfig, String> {
        ev.check_at(
            "kvEventsConfig",
            &["zmqEndpoint", "topicFilter", "concurrency", "engineType", "discoverPods", "podDiscoveryConfig"],
        )?;
        let mut c = KvEventsConfig::default();
        let path = at("kvEventsConfig");
        c.zmq_endpoint = ev.string("zmqEndpoint").map_err(&path)?.filter(|s| !s.is_empty());
        if let Some(z) = &c.zmq_endpoint
            && !z.starts_with("tcp://")
        {
            return Err(format!("parameter kvEventsConfig.zmqEndpoint: {z:?} is not a tcp:// endpoint"));
        }
        if let Some(t) = ev.string("topicFilter").map_err(&path)? {
            c.topic_filter = t;
        }
        ev.u64("concurrency", 4).map_err(&path)?;
        if let Some(e) = ev.string("engineType").map_err(&path)?
            && !e.is_empty()
            && e != "vllm"
        {
            return Err(format!(
                "parameter kvEventsConfig.engineType: {e:?} events are not built in llmd yet (vllm only)"
            ));
        }
        c.discover_pods = ev.bool("discoverPods", true).map_err(&path)?;
        let pd = Params(nested(ev, "podDiscoveryConfig"));
        let pd_path = "kvEventsConfig.podDiscoveryConfig";
        pd.check_at(pd_path, &["podLabelSelector", "podNamespace", "socketPort", "replaySocketPort"])?;
        let port = pd.u64("socketPort", 5557).map_err(at(pd_path))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("parameter {pd_path}.socketPort: {port} is not a port"))?;
        c.socket_port = ev.value("podDiscoveryConfig").map(|_| port);
        if pd.u64("replaySocketPort", 0).map_err(at(pd_path))? > 0 {
            return Err(format!("parameter {pd_path}.replaySocketPort: event replay is not built in llmd yet"));
        }
        Ok(c)
    }

    /// Where KV events come from.
    pub fn events_config(&self) -> &KvEventsConfig {
        &self.events
    }

    /// The same scorer reading time from `clock` (speculative entries expire by it).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Whether picks seed speculative entries (`speculativeIndexing`).
    pub fn is_speculative(&self) -> bool {
        self.speculative.is_some()
    }

    /// Distinct blocks in the index.
    pub fn index_len(&self) -> usize {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Scorer for PrecisePrefixCacheScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let Some(tokens) = &req.token_ids else { return vec![0.0; eps.len()] };
        let keys = block_keys(tokens, self.block_size, self.max_blocks);
        let credit = {
            let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
            let mut credit = index.prefix_credit(&keys);
            if let Some(spec) = &self.speculative {
                let mut spec = spec.lock().unwrap_or_else(|p| p.into_inner());
                spec.expire(self.clock.now());
                // Where a pick just went, a block counts as held until its entry
                // expires, at full credit: the router's speculative entries have no
                // tier, so they weigh 1.0, the best of the block's tiers there.
                for (endpoint, held) in &spec.held {
                    let mut c = PrefixCredit::default();
                    for k in &keys {
                        let speculative = held.contains_key(k).then_some(1.0);
                        match (index.block_credit(*k, endpoint), speculative) {
                            (None, None) => break,
                            (x, y) => c.credit += x.unwrap_or(0.0).max(y.unwrap_or(0.0)),
                        }
                        c.blocks += 1;
                    }
                    // This walk covers the index's own prefix and goes on past it: the
                    // longer one is the whole answer.
                    if c.blocks > 0 {
                        let e = credit.entry(endpoint.clone()).or_default();
                        if c.blocks > e.blocks {
                            *e = c;
                        }
                    }
                }
            }
            credit
        };
        let n = keys.len() as f64;
        let mut hints = super::prefix::IdMap::default();
        let mut i = 0;
        let scores = super::prefix::for_candidates(&credit, eps, |e, c| {
            if c.is_some() {
                hints.insert(e.id.clone(), i);
            }
            i += 1;
            if n == 0.0 { 0.0 } else { c.map_or(0.0, |c| c.credit) / n }
        });
        // What each holds, in blocks whatever their tiers' weights: what a decider
        // counts as cached.
        let matched: super::prefix::IdMap<usize> = credit.into_iter().map(|(e, c)| (e, c.blocks)).collect();
        let prompt_tokens = tokens.len();
        state.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: keys, prompt_tokens, tokens_per_block: self.block_size, matched, hints },
        );
        scores
    }

    fn wants_token_ids(&self) -> bool {
        true
    }
}

impl PickObserver for PrecisePrefixCacheScorer {
    // As the router's PreRequest: the primary pick and a `prefill` pick hold the
    // request's blocks from now on, speculatively.
    fn on_pick(&self, state: &CycleState, _req: &LlmRequest, _profile: &str, chosen: &Endpoint) {
        let Some(spec) = &self.speculative else { return };
        let Some(m) = state.get::<PrefixMatch>(PREFIX_MATCH_KEY) else { return };
        if m.hashes.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut spec = spec.lock().unwrap_or_else(|p| p.into_inner());
        spec.expire(now);
        spec.add(now, &chosen.id, &m.hashes);
    }

    fn forget(&self, endpoint: &str) {
        if let Some(spec) = &self.speculative {
            spec.lock().unwrap_or_else(|p| p.into_inner()).held.remove(endpoint);
        }
    }
}

impl KvEventConsumer for PrecisePrefixCacheScorer {
    fn apply(&self, endpoint: &str, seq: Option<u64>, batch: &KvEventBatch) {
        let stats = self.index.lock().unwrap_or_else(|p| p.into_inner()).apply(endpoint, seq, batch);
        if stats.resynced {
            tracing::warn!(endpoint, "KV event sequence gap: resyncing this endpoint's blocks");
        }
    }

    fn forget(&self, endpoint: &str) {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).remove_endpoint(endpoint);
    }

    fn blocks(&self) -> usize {
        self.index_len()
    }

    fn endpoint_blocks(&self, endpoint: &str) -> usize {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).endpoint_blocks(endpoint)
    }

    fn endpoints(&self) -> Vec<String> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).endpoints()
    }

    fn events_address(&self, e: &Endpoint) -> Option<String> {
        if !self.events.discover_pods {
            return None;
        }
        // The address the endpoint advertises, else its host at the configured port
        // (vLLM's publisher binds `tcp://*:5557` by default).
        e.kv_events.clone().or_else(|| {
            let port = self.events.socket_port?;
            let host = e.address.rsplit_once(':').map_or(e.address.as_str(), |(h, _)| h);
            (!host.is_empty()).then(|| format!("tcp://{host}:{port}"))
        })
    }

    fn global_socket(&self) -> Option<(String, String)> {
        self.events.zmq_endpoint.clone().map(|z| (z, self.events.topic_filter.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_size_comes_from_the_router_s_token_processor_config() {
        let bs = |p: serde_json::Value| PrecisePrefixCacheScorer::from_params(&p).unwrap().block_size;
        assert_eq!(bs(serde_json::json!({})), 16);
        assert_eq!(bs(serde_json::json!({"tokenProcessorConfig": {"blockSize": 64}})), 64);
        assert_eq!(bs(serde_json::json!({"tokenProcessorConfig": {"blockSizeTokens": 32, "blockSize": 64}})), 32);
        assert_eq!(bs(serde_json::json!({"blockSize": 8, "tokenProcessorConfig": {"blockSizeTokens": 32}})), 8);
    }
    use crate::endpoint::Role;
    use llmd_kvcache::{BlockHash, BlockStored, ExternalBlockHash, KvEvent};

    #[test]
    fn scores_follow_the_events_and_need_token_ids() {
        let s = PrecisePrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 2})).unwrap();
        let stored = KvEvent::BlockStored(BlockStored {
            block_hashes: vec![ExternalBlockHash::Bytes(BlockHash::from_bytes(&[1; 32]).unwrap())],
            token_ids: vec![5, 6],
            block_size: 2,
            ..Default::default()
        });
        s.apply("b", Some(0), &KvEventBatch { ts: 0.0, events: vec![stored], data_parallel_rank: None });
        assert_eq!(s.blocks(), 1);
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut req = LlmRequest::new("r", "m", "");
        assert_eq!(s.score(&mut CycleState::default(), &req, &refs), vec![0.0, 0.0]);
        req.token_ids = Some(vec![5, 6, 7, 8]);
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 0.5]);
        assert_eq!(st.get::<PrefixMatch>(PREFIX_MATCH_KEY).unwrap().uncached_tokens("b"), 2);
        KvEventConsumer::forget(&s, "b");
        assert_eq!(s.blocks(), 0);
        assert!(PrecisePrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 0})).is_err());
    }

    #[test]
    fn router_parameters_are_read_and_what_is_not_built_is_refused() {
        use serde_json::json;
        let ok = json!({
            "tokenProcessorConfig": {"blockSize": 64, "hashSeed": "42", "hashAlgorithm": "xxh64"},
            "indexerConfig": {"kvBlockIndexConfig": {"enableMetrics": true, "inMemoryConfig": {"size": 100000000, "podCacheSize": 10}},
                              "kvCacheBackendConfigs": [{"name": "gpu", "weight": 1.0}, {"name": "cpu", "weight": 0.8}]},
            "kvEventsConfig": {"zmqEndpoint": "tcp://0.0.0.0:5557", "topicFilter": "kv@", "concurrency": 4, "engineType": "vllm",
                               "discoverPods": true, "podDiscoveryConfig": {"socketPort": 5600, "podLabelSelector": "app=vllm"}},
            "speculativeIndexing": true, "speculativeTTL": "500ms",
        });
        let s = PrecisePrefixCacheScorer::from_params(&ok).unwrap();
        assert_eq!(s.block_size, 64);
        assert!(s.is_speculative());
        assert_eq!(s.events_config().zmq_endpoint.as_deref(), Some("tcp://0.0.0.0:5557"));
        assert_eq!(s.events_config().socket_port, Some(5600));
        for (p, want) in [
            (json!({"indexerConfig": {"tokenizersPoolConfig": {}}}), "configure a token-producer plugin instead"),
            (json!({"indexerConfig": {"kvBlockIndexConfig": {"redisConfig": {"address": "r:6379"}}}}), "redisConfig"),
            (json!({"tokenProcessorConfig": {"hashAlgorithm": "sha256"}}), "unsupported hashAlgorithm"),
            (json!({"tokenProcessorConfig": {"blockSizeToken": 16}}), "tokenProcessorConfig.blockSizeToken"),
            (json!({"kvEventsConfig": {"engineType": "sglang"}}), "sglang"),
            (json!({"kvEventsConfig": {"podDiscoveryConfig": {"replaySocketPort": 5558}}}), "replay"),
            (json!({"kvEventsConfig": {"zmqEndpoint": "ipc:///tmp/x"}}), "tcp://"),
            (json!({"speculativeTTL": "soon"}), "speculativeTTL"),
        ] {
            let e = PrecisePrefixCacheScorer::from_params(&p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn kv_cache_backend_configs_weigh_the_tiers_and_replace_the_defaults() {
        use serde_json::json;
        let weights = |p: serde_json::Value| {
            let s = PrecisePrefixCacheScorer::from_params(&json!({"indexerConfig": p})).unwrap();
            let index = s.index.lock().unwrap();
            index.weights().iter().map(|(n, w)| (n.to_string(), w)).collect::<Vec<_>>()
        };
        let pairs = |v: &[(&str, f64)]| v.iter().map(|(n, w)| (n.to_string(), *w)).collect::<Vec<_>>();
        assert_eq!(weights(json!({})), pairs(&[("gpu", 1.0), ("cpu", 0.8)]), "llm-d's defaults");
        assert_eq!(weights(json!({"kvCacheBackendConfigs": null})), pairs(&[("gpu", 1.0), ("cpu", 0.8)]));
        assert_eq!(
            weights(
                json!({"kvCacheBackendConfigs": [{"name": "CPU", "weight": 0.5}, {"name": "shared_storage", "weight": 0.2}]})
            ),
            pairs(&[("cpu", 0.5), ("shared_storage", 0.2)]),
            "the list replaces the defaults (gpu is then unconfigured: 1.0)"
        );
        assert_eq!(weights(json!({"kvCacheBackendConfigs": [{"name": "cpu"}]})), pairs(&[("cpu", 0.0)]));
        assert_eq!(weights(json!({"kvCacheBackendConfigs": []})), pairs(&[]));
        for (p, want) in [
            (
                json!([{"name": "gpu", "weight": 1.0}, {"name": "", "weight": 0.5}]),
                "indexerConfig.kvCacheBackendConfigs[1]: name",
            ),
            (json!([{"weight": 0.5}]), "indexerConfig.kvCacheBackendConfigs[0]: name"),
            (json!([{"name": "cpu", "weight": -1}]), "indexerConfig.kvCacheBackendConfigs[0].weight"),
            (json!([{"name": "cpu", "weight": "high"}]), "indexerConfig.kvCacheBackendConfigs[0].weight"),
            (
                json!([{"name": "cpu", "weight": 0.8}, {"name": "Cpu", "weight": 0.5}]),
                "indexerConfig.kvCacheBackendConfigs[1]: name: tier \"cpu\" is already",
            ),
            (json!([{"name": "cpu", "weight": 0.8, "modelConfigs": {}}]), "kvCacheBackendConfigs[0].modelConfigs"),
            (json!([{"name": 7, "weight": 0.8}]), "kvCacheBackendConfigs[0].name"),
            (json!({"name": "cpu", "weight": 0.8}), "expected a list"),
        ] {
            let e = PrecisePrefixCacheScorer::from_params(&json!({"indexerConfig": {"kvCacheBackendConfigs": p}}))
                .unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }

    #[test]
    fn scores_weigh_each_block_by_the_best_tier_holding_it() {
        use llmd_kvcache::ExternalBlockHash;
        let tokens: Vec<u32> = (0..12).collect();
        let gpu_a = |s: &PrecisePrefixCacheScorer| {
            let ev = KvEvent::BlockStored(BlockStored {
                block_hashes: (0..4).map(ExternalBlockHash::Int).collect(),
                token_ids: tokens[..8].to_vec(),
                block_size: 2,
                medium: Some("GPU".into()),
                ..Default::default()
            });
            s.apply("a", None, &KvEventBatch { ts: 0.0, events: vec![ev], data_parallel_rank: None });
        };
        // B's blocks reach CPU memory as vLLM's offloader reports them: first stored on
        // GPU, then offloaded (hashes only), then evicted from GPU.
        let cpu_b = |s: &PrecisePrefixCacheScorer, tier: &str| {
            let hashes: Vec<ExternalBlockHash> = (10..16).map(ExternalBlockHash::Int).collect();
            let events = vec![
                KvEvent::BlockStored(BlockStored {
                    block_hashes: hashes.clone(),
                    token_ids: tokens.clone(),
                    block_size: 2,
                    ..Default::default()
                }),
                KvEvent::BlockStored(BlockStored {
                    block_hashes: hashes.clone(),
                    medium: Some(tier.into()),
                    ..Default::default()
                }),
                KvEvent::BlockRemoved(llmd_kvcache::BlockRemoved {
                    block_hashes: hashes,
                    medium: Some("GPU".into()),
                    ..Default::default()
                }),
            ];
            s.apply("b", None, &KvEventBatch { ts: 0.0, events, data_parallel_rank: None });
        };
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut req = LlmRequest::new("r", "m", "");
        req.token_ids = Some(tokens.clone());
        let run = |params: serde_json::Value, tier: &str| {
            let s = PrecisePrefixCacheScorer::from_params(&params).unwrap();
            gpu_a(&s);
            cpu_b(&s, tier);
            let mut st = CycleState::default();
            let scores = s.score(&mut st, &req, &refs);
            let m = st.get::<PrefixMatch>(PREFIX_MATCH_KEY).unwrap().clone();
            // Raw credit: the score is credit over the request's 6 blocks.
            (scores.iter().map(|x| (x * 6.0 * 1e9).round() / 1e9).collect::<Vec<_>>(), m)
        };
        // Defaults: A 4 × 1.0 = 4.0, B 6 × 0.8 = 4.8: B wins.
        let (raw, m) = run(serde_json::json!({"blockSize": 2}), "CPU");
        assert_eq!(raw, [4.0, 4.8]);
        // Matched blocks are counted whatever the weights.
        assert_eq!((m.matched["a"], m.matched["b"]), (4, 6));
        assert_eq!(m.uncached_tokens("b"), 0);
        // CPU at 0.5: B 3.0 < A 4.0.
        let half = serde_json::json!({"blockSize": 2,
            "indexerConfig": {"kvCacheBackendConfigs": [{"name": "gpu", "weight": 1.0}, {"name": "cpu", "weight": 0.5}]}});
        assert_eq!(run(half.clone(), "CPU").0, [4.0, 3.0]);
        // A tier nobody weighted: 1.0 (llm-d's default), with a warning to set one.
        assert_eq!(run(half, "SHARED_STORAGE").0, [4.0, 6.0]);
    }

    #[test]
    fn the_events_address_is_advertised_or_derived_only_when_configured() {
        use serde_json::json;
        let plain = PrecisePrefixCacheScorer::from_params(&json!({})).unwrap();
        let e = Endpoint::new("a", "10.0.0.1:8000", Role::Both);
        assert_eq!(plain.events_address(&e), None, "llmd engines advertise theirs");
        let adv = e.clone().with_kv_events("tcp://10.0.0.1:7000");
        assert_eq!(plain.events_address(&adv).as_deref(), Some("tcp://10.0.0.1:7000"));
        let derived =
            PrecisePrefixCacheScorer::from_params(&json!({"kvEventsConfig": {"podDiscoveryConfig": {}}})).unwrap();
        assert_eq!(derived.events_address(&e).as_deref(), Some("tcp://10.0.0.1:5557"));
        assert_eq!(derived.events_address(&adv).as_deref(), Some("tcp://10.0.0.1:7000"));
        let off = PrecisePrefixCacheScorer::from_params(&json!({"kvEventsConfig": {"discoverPods": false}})).unwrap();
        assert_eq!(off.events_address(&adv), None);
        assert_eq!(off.global_socket(), None);
    }

    #[test]
    fn speculative_entries_count_for_the_pick_until_their_ttl() {
        use crate::clock::ManualClock;
        let clock = Arc::new(ManualClock::new());
        let p = serde_json::json!({"blockSize": 4, "speculativeIndexing": true, "speculativeTTL": "2s"});
        let s = PrecisePrefixCacheScorer::from_params(&p).unwrap().with_clock(clock.clone());
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut req = LlmRequest::new("r", "m", "");
        req.token_ids = Some((1..=8).collect());
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 0.0]);
        s.on_pick(&st, &req, "default", &eps[1]);
        assert_eq!(s.score(&mut CycleState::default(), &req, &refs), vec![0.0, 1.0], "b is about to hold it");
        // A request sharing the first block only matches that block there.
        let mut other = req.clone();
        other.token_ids = Some(vec![1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(s.score(&mut CycleState::default(), &other, &refs), vec![0.0, 0.5]);
        clock.advance(Duration::from_millis(1999));
        assert_eq!(s.score(&mut CycleState::default(), &req, &refs)[1], 1.0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(
            s.score(&mut CycleState::default(), &req, &refs),
            vec![0.0, 0.0],
            "expired: the engine never said so"
        );
        // A block the engine reports in CPU memory (0.8), where a pick just went, counts
        // as the speculative entry does (1.0): the best of the two.
        let cpu = KvEvent::BlockStored(BlockStored {
            block_hashes: vec![ExternalBlockHash::Int(1)],
            token_ids: vec![1, 2, 3, 4],
            block_size: 4,
            medium: Some("CPU".into()),
            ..Default::default()
        });
        s.apply("b", None, &KvEventBatch { ts: 0.0, events: vec![cpu], data_parallel_rank: None });
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 0.4]);
        s.on_pick(&st, &req, "default", &eps[1]);
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 1.0]);
        assert_eq!(st.get::<PrefixMatch>(PREFIX_MATCH_KEY).unwrap().matched["b"], 2);
        // Without speculative indexing a pick leaves nothing behind.
        let plain = PrecisePrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 4})).unwrap();
        let mut st = CycleState::default();
        plain.score(&mut st, &req, &refs);
        plain.on_pick(&st, &req, "default", &eps[1]);
        assert_eq!(plain.score(&mut CycleState::default(), &req, &refs), vec![0.0, 0.0]);
    }
}
