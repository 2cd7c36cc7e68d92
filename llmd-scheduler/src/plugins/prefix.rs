//! `prefix-cache-scorer`: approximate prefix-cache awareness from the scheduler's own
//! routing history, as llm-d's scorer does. The prompt is cut into blocks (of
//! `blockSizeTokens` tokens when the request carries token ids, otherwise of
//! `blockSize` characters), hashed in a chain, and each endpoint keeps an LRU of the
//! block hashes of prompts recently sent to it. An endpoint scores the fraction of the
//! prompt's leading blocks it is believed to hold.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::num::NonZeroUsize;
use std::sync::Mutex;

use llmd_kvcache::PrehashedHasher;
use lru::LruCache;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Params;
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, PickObserver, Scorer};
use crate::request::LlmRequest;

/// Cycle-state key where the scorer leaves what it matched, for the P/D decider.
pub const PREFIX_MATCH_KEY: &str = "prefix-cache/match";

/// What the prefix scorer found for a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PrefixMatch {
    /// The prompt's block hashes.
    pub hashes: Vec<u64>,
    /// Prompt length in tokens (without token ids, [`LlmRequest::prompt_tokens`]'s
    /// estimate: bytes / 4 rounded up).
    pub prompt_tokens: usize,
    /// Tokens each block covers.
    pub tokens_per_block: usize,
    /// Matched leading blocks per endpoint id.
    pub matched: IdMap<usize>,
    /// Where each holder sat among the candidates the producer scored: later scorers in
    /// the cycle, given the same candidates, read holders there instead of looking
    /// every candidate up ([`PrefixMatch::blocks_for`]; each hint is checked against
    /// the id). Empty when the producer kept none.
    pub hints: IdMap<usize>,
}

impl PrefixMatch {
    /// The longest prefix of this prompt that some endpoint holds, and who holds it (all
    /// of it, or at least nine tenths: partial holders are near enough to share the
    /// load). `None` when nothing is held or the scorer left no hashes.
    pub fn longest_held(&self) -> Option<crate::replication::HeldPrefix> {
        let blocks = self.matched.values().copied().max().filter(|&b| b > 0)?.min(self.hashes.len());
        let key = *self.hashes.get(blocks.checked_sub(1)?)?;
        let near = blocks - blocks / 10;
        let mut holders: Vec<String> =
            self.matched.iter().filter(|&(_, &n)| n >= near).map(|(e, _)| e.clone()).collect();
        holders.sort();
        Some(crate::replication::HeldPrefix { key, tokens: blocks * self.tokens_per_block, blocks, holders })
    }

    /// Matched leading blocks for each of `eps` (distinct endpoints), in order (0 for
    /// non-holders).
    pub fn blocks_for(&self, eps: &[&Endpoint]) -> Vec<usize> {
        if self.hints.len() == self.matched.len() {
            let mut out = vec![0; eps.len()];
            let all_found = self.matched.iter().all(|(id, &blocks)| {
                let at = self.hints.get(id).copied().filter(|&i| eps.get(i).is_some_and(|e| e.id == *id));
                at.map(|i| out[i] = blocks).is_some()
            });
            if all_found {
                return out;
            }
        }
        for_candidates(&self.matched, eps, |_, b| b.unwrap_or(0))
    }

    /// Prompt tokens `endpoint` would have to compute.
    pub fn uncached_tokens(&self, endpoint: &str) -> usize {
        let hit = self.matched.get(endpoint).copied().unwrap_or(0) * self.tokens_per_block;
        self.prompt_tokens.saturating_sub(hit)
    }
}

/// A map keyed by endpoint id with a fast hasher: scorers look up every candidate (1 024
/// of them, say) in it on every pick, and SipHash over each id cost more than the rest
/// of the pick. Ids come from discovery, not from clients.
pub type IdMap<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// `f(candidate, map[candidate.id])` for every candidate, in order.
///
/// A prompt is usually held by a few endpoints among many candidates. With a few
/// entries, each candidate's id is reduced to its length and first and last eight bytes
/// (its tag); one bit of a 64-bit mask per holder rules most candidates out with a
/// single test, and the rest are compared by tag (and by bytes past 16). That costs
/// less than hashing every candidate's id; an empty map costs nothing per candidate, and
/// a large one is looked up by hash.
pub fn for_candidates<V: Copy, T>(
    map: &IdMap<V>,
    eps: &[&Endpoint],
    mut f: impl FnMut(&Endpoint, Option<V>) -> T,
) -> Vec<T> {
    const SCAN_MAX: usize = 16;
    if map.is_empty() {
        return eps.iter().map(|e| f(e, None)).collect();
    }
    if map.len() > SCAN_MAX {
        return eps.iter().map(|e| f(e, map.get(&e.id).copied())).collect();
    }
    let held: Vec<(IdTag, &str, V)> = map.iter().map(|(k, v)| (IdTag::of(k), k.as_str(), *v)).collect();
    let mask = held.iter().fold(0u64, |m, (t, _, _)| m | t.bit());
    eps.iter()
        .map(|e| {
            let tag = IdTag::of(&e.id);
            let v = if mask & tag.bit() == 0 {
                None
            } else {
                held.iter().find(|(t, k, _)| *t == tag && (e.id.len() <= 16 || *k == e.id)).map(|h| h.2)
            };
            f(e, v)
        })
        .collect()
}

/// An id's length with its first and last eight bytes (zero-padded): equal tags mean
/// equal ids up to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct IdTag(usize, u64, u64);

impl IdTag {
    #[inline]
    fn of(id: &str) -> Self {
        let b = id.as_bytes();
        let n = b.len();
        let mut head = [0u8; 8];
        let mut tail = [0u8; 8];
        if n >= 8 {
            // Fixed-length copies: two loads, not two memcpy calls.
            head.copy_from_slice(&b[..8]);
            tail.copy_from_slice(&b[n - 8..]);
        } else {
            for (h, x) in head.iter_mut().zip(b) {
                *h = *x;
            }
        }
        IdTag(n, u64::from_le_bytes(head), u64::from_le_bytes(tail))
    }

    /// One of 64 bits, chosen by a multiplicative hash of the tag.
    #[inline]
    fn bit(self) -> u64 {
        let h = (self.1 ^ self.2.rotate_left(29) ^ self.0 as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        1 << (h >> 58)
    }
}

/// `approx-prefix-cache-producer`'s parameters in llm-d-router: the index that llmd's
/// `prefix-cache-scorer` keeps itself, so it reads them too.
pub(crate) const APPROX_PREFIX_CACHE_PRODUCER_PARAMS: &[&str] = &[
    "autoTune",
    "blockSizeTokens",
    "blockSize",
    "maxPrefixBlocksToMatch",
    "maxPrefixTokensToMatch",
    "lruCapacityPerServer",
];

/// `prefix-cache-scorer`'s own parameters in llm-d-router (`prefixMatchInfoProducerName`,
/// `matchLengthWeight`, `matchLengthScaleTokens`, accepted and not built); it also takes
/// the producer's ([`APPROX_PREFIX_CACHE_PRODUCER_PARAMS`]), as llm-d's older scorer did.
const PREFIX_CACHE_SCORER_OWN_PARAMS: &[&str] =
    &["prefixMatchInfoProducerName", "matchLengthWeight", "matchLengthScaleTokens"];

/// The approximate prefix-cache scorer.
#[derive(Debug)]
pub struct PrefixCacheScorer {
    block_chars: usize,
    block_tokens: usize,
    max_blocks: usize,
    capacity: NonZeroUsize,
    index: Mutex<IdMap<BlockLru>>,
}

// Keys are xxh3 chain hashes already: hashing them again would only cost time.
type BlockLru = LruCache<u64, (), BuildHasherDefault<PrehashedHasher>>;

impl PrefixCacheScorer {
    /// From `parameters`: `blockSize` (characters, default 64), `blockSizeTokens`
    /// (default 16), `maxPrefixBlocksToMatch` (256), `lruCapacityPerServer` (31250).
    /// `autoTune` is accepted; block size and capacity are not inferred yet. The rest of
    /// the router's keys (`prefixMatchInfoProducerName`, `matchLengthWeight`,
    /// `matchLengthScaleTokens`, `maxPrefixTokensToMatch`) are accepted and not built
    /// here (the config loader reads a producer's limits).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let p = Params(p);
        p.check(&[PREFIX_CACHE_SCORER_OWN_PARAMS, APPROX_PREFIX_CACHE_PRODUCER_PARAMS].concat())?;
        p.unbuilt("matchLengthWeight", &0.into(), "only 0: the score is the matched fraction")?;
        let block_chars = p.u64("blockSize", 64)? as usize;
        let block_tokens = p.u64("blockSizeTokens", 16)? as usize;
        let max_blocks = p.u64("maxPrefixBlocksToMatch", 256)? as usize;
        let capacity = p.u64("lruCapacityPerServer", 31_250)? as usize;
        let _ = p.bool("autoTune", true)?;
        if block_chars == 0 || block_tokens == 0 {
            return Err("parameters blockSize and blockSizeTokens must be at least 1".into());
        }
        let capacity = NonZeroUsize::new(capacity).ok_or("parameter lruCapacityPerServer: must be at least 1")?;
        Ok(PrefixCacheScorer { block_chars, block_tokens, max_blocks, capacity, index: Mutex::new(IdMap::default()) })
    }

    fn hashes(&self, req: &LlmRequest) -> (Vec<u64>, usize, usize) {
        // The model name seeds the chain: the same prompt for two models shares nothing.
        let mut prev = xxh3_64_with_seed(req.model.as_bytes(), 0);
        let mut out = Vec::new();
        match &req.token_ids {
            Some(ids) => {
                for chunk in ids.chunks_exact(self.block_tokens).take(self.max_blocks) {
                    prev = xxh3_64_with_seed(&crate::kvindex::le_bytes(chunk), prev);
                    out.push(prev);
                }
                (out, ids.len(), self.block_tokens)
            }
            None => {
                for chunk in req.prompt.as_bytes().chunks_exact(self.block_chars).take(self.max_blocks) {
                    prev = xxh3_64_with_seed(chunk, prev);
                    out.push(prev);
                }
                // About four bytes a token, rounded up as llm-d-router's `estimate`
                // token producer packs them (the count the P/D decider reads).
                (out, req.prompt_tokens(), (self.block_chars / 4).max(1))
            }
        }
    }
}

/// How many of `hashes` (a prompt's chained block hashes) `lru` holds from the start.
/// Held blocks always form a prefix (see `on_pick`), so a binary search finds the end of
/// it: a few lookups instead of one per block, each a likely cache miss. Lookups only
/// peek: scoring must not refresh the history of endpoints the request does not go to.
fn held_blocks(lru: &BlockLru, hashes: &[u64]) -> usize {
    // Most endpoints hold none of a prompt: one lookup says so.
    match hashes.first() {
        Some(h) if lru.contains(h) => hashes.partition_point(|h| lru.contains(h)),
        _ => 0,
    }
}

impl Scorer for PrefixCacheScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let (hashes, prompt_tokens, tokens_per_block) = self.hashes(req);
        let index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let mut matched = IdMap::default();
        let mut hints = IdMap::default();
        let scores = eps
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let n = index.get(&e.id).map_or(0, |lru| held_blocks(lru, &hashes));
                // Endpoints holding nothing are left out: a miss reads as 0.
                if n > 0 {
                    matched.insert(e.id.clone(), n);
                    hints.insert(e.id.clone(), i);
                }
                if hashes.is_empty() { 0.0 } else { n as f64 / hashes.len() as f64 }
            })
            .collect();
        state.put(PREFIX_MATCH_KEY, PrefixMatch { hashes, prompt_tokens, tokens_per_block, matched, hints });
        scores
    }

    /// Token ids make its blocks exact (`blockSizeTokens`); without them it cuts the
    /// prompt's characters and estimates four to a token.
    fn wants_token_ids(&self) -> bool {
        true
    }
}

impl PickObserver for PrefixCacheScorer {
    fn on_pick(&self, state: &CycleState, _: &LlmRequest, _: &str, chosen: &Endpoint) {
        let Some(m) = state.get::<PrefixMatch>(PREFIX_MATCH_KEY) else { return };
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let lru = index
            .entry(chosen.id.clone())
            .or_insert_with(|| LruCache::with_hasher(self.capacity, BuildHasherDefault::default()));
        // Last block first, so a prompt's head is always at least as recent as its tail:
        // eviction then takes tails first (as an engine's cache does), and what an
        // endpoint holds of any prompt is a prefix of its blocks (`held_blocks`).
        for h in m.hashes.iter().rev() {
            lru.put(*h, ());
        }
    }

    /// Drops the routing history of an endpoint that went away.
    fn forget(&self, endpoint: &str) {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).remove(endpoint);
    }

    /// The blocks of prompts recently sent to `endpoint` (an upper bound on what its
    /// cache holds: the engine may have evicted some since).
    fn endpoint_blocks(&self, endpoint: &str) -> Option<usize> {
        Some(self.index.lock().unwrap_or_else(|p| p.into_inner()).get(endpoint).map_or(0, LruCache::len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    #[test]
    fn history_makes_the_previous_destination_score_higher() {
        let s = PrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 4})).unwrap();
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let req = LlmRequest::new("1", "m", "aaaabbbbccccdddd");
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 0.0]);
        s.on_pick(&st, &req, "default", &eps[1]);
        // Same first half, different second half: half the blocks match on b.
        let req2 = LlmRequest::new("2", "m", "aaaabbbbxxxxyyyy");
        let mut st2 = CycleState::default();
        assert_eq!(s.score(&mut st2, &req2, &refs), vec![0.0, 0.5]);
        let m = st2.get::<PrefixMatch>(PREFIX_MATCH_KEY).unwrap();
        assert_eq!((m.prompt_tokens, m.uncached_tokens("b"), m.uncached_tokens("a")), (4, 2, 4));
        // Another model shares nothing.
        let other = LlmRequest::new("3", "m2", "aaaabbbbccccdddd");
        assert_eq!(s.score(&mut CycleState::default(), &other, &refs), vec![0.0, 0.0]);
        // b goes away: its history goes with it.
        PickObserver::forget(&s, "b");
        assert_eq!(s.score(&mut CycleState::default(), &req2, &refs), vec![0.0, 0.0]);
    }

    #[test]
    fn the_longest_held_prefix_names_its_last_block_and_near_holders() {
        let matched = [("a", 10), ("b", 9), ("c", 8), ("d", 0)].into_iter().map(|(e, n)| (e.to_string(), n)).collect();
        let m = PrefixMatch {
            hashes: (100..120).collect(),
            prompt_tokens: 320,
            tokens_per_block: 16,
            matched,
            ..Default::default()
        };
        let held = m.longest_held().unwrap();
        // 10 blocks: the tenth hash; b holds 9 of 10 (near enough), c 8 (not).
        assert_eq!((held.key, held.tokens, held.blocks), (109, 160, 10));
        assert_eq!(held.holders, ["a", "b"]);
        let none = PrefixMatch { matched: [("a".to_string(), 0)].into_iter().collect(), ..m.clone() };
        assert_eq!(none.longest_held(), None);
        // A scorer that left no hashes names no prefix.
        assert_eq!(PrefixMatch { hashes: vec![], ..m }.longest_held(), None);
    }

    #[test]
    fn lru_capacity_bounds_memory() {
        let s =
            PrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 1, "lruCapacityPerServer": 3})).unwrap();
        let e = Endpoint::new("a", "a", Role::Both);
        let req = LlmRequest::new("1", "m", "abcdef");
        let mut st = CycleState::default();
        s.score(&mut st, &req, &[&e]);
        s.on_pick(&st, &req, "p", &e);
        // Only 3 block hashes survive: the prompt's head, as an engine would keep it.
        assert_eq!(s.score(&mut CycleState::default(), &req, &[&e]), vec![0.5]);
        assert!(PrefixCacheScorer::from_params(&serde_json::json!({"lruCapacityPerServer": 0})).is_err());
    }

    #[test]
    fn scoring_does_not_refresh_an_endpoint_s_history() {
        // Capacity 4, blocks of one character: "ab" then "cd" fill it.
        let s =
            PrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 1, "lruCapacityPerServer": 4})).unwrap();
        let e = Endpoint::new("a", "a", Role::Both);
        let send = |text: &str| {
            let req = LlmRequest::new("1", "m", text);
            let mut st = CycleState::default();
            s.score(&mut st, &req, &[&e]);
            s.on_pick(&st, &req, "p", &e);
        };
        send("ab");
        send("xy");
        // Scored ("ab" is held) but sent elsewhere: its blocks stay the oldest...
        let ab = LlmRequest::new("2", "m", "ab");
        assert_eq!(s.score(&mut CycleState::default(), &ab, &[&e]), vec![1.0]);
        // ...so the next prompt sent here evicts them.
        send("cd");
        assert_eq!(s.score(&mut CycleState::default(), &ab, &[&e]), vec![0.0]);
        assert_eq!(s.score(&mut CycleState::default(), &LlmRequest::new("3", "m", "xy"), &[&e]), vec![1.0]);
    }

    // Sends prompts drawn from a few shared stems to one endpoint with a small history
    // (through `on_pick` when `tail_first`, else inserted head first by hand);
    // returns, for probe prompts, (binary-search count, block-by-block count).
    fn counts(ops: &[(u8, u8)], capacity: u64, tail_first: bool) -> Vec<(usize, usize)> {
        let s = PrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 1, "lruCapacityPerServer": capacity}))
            .unwrap();
        let prompt = |stem: u8, len: u8| -> String { (0..len).map(|i| (b'a' + (stem + i) % 5) as char).collect() };
        let e = Endpoint::new("a", "a", Role::Both);
        for &(stem, len) in ops {
            let req = LlmRequest::new("1", "m", prompt(stem % 3, len % 12 + 1));
            if tail_first {
                // The scorer's own path.
                let mut st = CycleState::default();
                s.score(&mut st, &req, &[&e]);
                s.on_pick(&st, &req, "p", &e);
                continue;
            }
            let (hashes, ..) = s.hashes(&req);
            let mut index = s.index.lock().unwrap();
            let lru = index
                .entry("a".into())
                .or_insert_with(|| LruCache::with_hasher(s.capacity, BuildHasherDefault::default()));
            for h in hashes {
                lru.put(h, ());
            }
        }
        let index = s.index.lock().unwrap();
        let lru = &index["a"];
        (0..3u8)
            .map(|stem| {
                let (hashes, ..) = s.hashes(&LlmRequest::new("p", "m", prompt(stem, 12)));
                (held_blocks(lru, &hashes), hashes.iter().take_while(|h| lru.contains(h)).count())
            })
            .collect()
    }

    proptest::proptest! {
        #[test]
        fn held_blocks_agrees_with_a_block_by_block_scan(
            ops in proptest::collection::vec((0u8..3, 0u8..12), 1..40),
            capacity in 1u64..30,
        ) {
            for (fast, slow) in counts(&ops, capacity, true) {
                proptest::prop_assert_eq!(fast, slow);
            }
        }
    }

    #[test]
    fn the_binary_search_needs_tails_evicted_first() {
        // Negative control: inserted head first, a prompt's middle can be evicted while
        // its head (refreshed by a shorter prompt) stays, so the held blocks stop being
        // a prefix, which the proptest above would catch.
        let ops = [(0u8, 11u8), (0, 1), (1, 11)];
        let ok = counts(&ops, 21, true);
        assert!(ok.iter().all(|(f, s)| f == s), "{ok:?}");
        let broken = counts(&ops, 21, false);
        assert!(broken.iter().any(|(f, s)| f != s), "{broken:?}");
    }
}

#[cfg(test)]
mod lookup_tests {
    use super::*;
    use crate::endpoint::Role;
    use proptest::prelude::*;

    // Ids alike in length and in their first and last bytes, so that tags collide and
    // the byte comparison past 16 is what tells them apart.
    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-c]{0,3}",
            "pod-[0-9]{4}",
            "ns/pod-[ab]{1,12}-x",
            "llmd-[ab]{3}-decode-[0-9]-000000",
            "[a-b]{17,20}",
        ]
    }

    /// Held ids with candidates: unrelated ids, held ids themselves, and held ids with a
    /// middle byte changed (same length, head and tail: the same tag when longer than 16).
    fn held_and_candidates() -> impl Strategy<Value = (Vec<(String, usize)>, Vec<String>)> {
        (
            proptest::collection::vec((id(), 1usize..100), 1..24),
            proptest::collection::vec(id(), 0..32),
            proptest::collection::vec((any::<proptest::sample::Index>(), any::<bool>()), 0..32),
        )
            .prop_map(|(held, mut ids, picks)| {
                for (i, change) in picks {
                    let mut id = held[i.index(held.len())].0.clone().into_bytes();
                    if change && id.len() > 16 {
                        let mid = id.len() / 2;
                        id[mid] = if id[mid] == b'z' { b'y' } else { b'z' };
                    }
                    ids.push(String::from_utf8(id).unwrap_or_default());
                }
                (held, ids)
            })
    }

    fn naive(map: &IdMap<usize>, eps: &[&Endpoint]) -> Vec<Option<usize>> {
        eps.iter().map(|e| map.get(&e.id).copied()).collect()
    }

    proptest! {
        #[test]
        fn candidate_lookups_agree_with_the_map((held, ids) in held_and_candidates()) {
            let map: IdMap<usize> = held.into_iter().collect();
            let eps: Vec<Endpoint> = ids.iter().map(|i| Endpoint::new(i.clone(), "a:1", Role::Both)).collect();
            let refs: Vec<&Endpoint> = eps.iter().collect();
            prop_assert_eq!(for_candidates(&map, &refs, |_, v| v), naive(&map, &refs));
        }

        #[test]
        fn blocks_for_reads_hints_only_where_they_hold(
            held in proptest::collection::vec((id(), 1usize..100), 0..8),
            ids in proptest::collection::vec(id(), 0..32),
            shift in 0usize..3,
        ) {
            // Endpoint ids are unique within a pool.
            let ids: Vec<String> = ids.into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let eps: Vec<Endpoint> = ids.iter().map(|i| Endpoint::new(i.clone(), "a:1", Role::Both)).collect();
            let refs: Vec<&Endpoint> = eps.iter().collect();
            let matched: IdMap<usize> = held.into_iter().collect();
            // Hints from a candidate list shifted by `shift` (as another profile's list
            // would be): wrong ones must be noticed.
            let hints: IdMap<usize> =
                refs.iter().enumerate().filter(|(_, e)| matched.contains_key(&e.id)).map(|(i, e)| (e.id.clone(), i + shift)).collect();
            let m = PrefixMatch { matched, hints, ..Default::default() };
            let want: Vec<usize> = naive(&m.matched, &refs).into_iter().map(|v| v.unwrap_or(0)).collect();
            prop_assert_eq!(m.blocks_for(&refs), want);
        }
    }

    /// Negative control for the first property: the same strategy finds the fault in a
    /// lookup that trusts tags alone.
    #[test]
    fn the_lookup_property_catches_a_tag_only_lookup() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        // Seeded, so the control's outcome does not depend on the run.
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(Config { cases: 256, ..Config::default() }, rng);
        let result = runner.run(&held_and_candidates(), |(held, ids)| {
            let map: IdMap<usize> = held.into_iter().collect();
            let tags: Vec<(IdTag, usize)> = map.iter().map(|(k, v)| (IdTag::of(k), *v)).collect();
            for i in &ids {
                let tag_only = tags.iter().find(|(t, _)| *t == IdTag::of(i)).map(|t| t.1);
                prop_assert_eq!(tag_only, map.get(i).copied());
            }
            Ok(())
        });
        assert!(result.is_err(), "the strategy never produced ids that share a tag");
    }

    /// Negative control: a lookup that trusts tags without comparing bytes past 16
    /// confuses ids that share length, head and tail, which the strategy produces.
    #[test]
    fn tags_alone_do_not_tell_long_ids_apart() {
        let (a, b) = ("pod-aaaa-bbbb-cccc-0001-x", "pod-aaaa-dddd-cccc-0001-x");
        assert!(IdTag::of(a) == IdTag::of(b));
        let map: IdMap<usize> = [(a.to_string(), 7)].into_iter().collect();
        let eps = [Endpoint::new(b, "a:1", Role::Both)];
        assert_eq!(for_candidates(&map, &[&eps[0]], |_, v| v), vec![None]);
        // A hint pointing at the wrong candidate is refused, not read.
        let m = PrefixMatch { matched: map, hints: [(a.to_string(), 0)].into_iter().collect(), ..Default::default() };
        assert_eq!(m.blocks_for(&[&eps[0]]), vec![0]);
    }
}
