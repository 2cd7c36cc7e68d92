//! The request-level API: prefix hits, all-or-nothing allocation, tail-first freeing,
//! and the events a pool emits staying consistent with what it caches.

use std::collections::HashSet;

use llmd_kvcache::codec::{decode_batch, encode_batch};
use llmd_kvcache::{
    BlockHash, BlockHasher, BlockPool, EventBatcher, ExternalBlockHash, KvCacheError, KvCacheManager, KvEvent, LoraKey,
    RequestKeys, Sequence,
};
use proptest::prelude::*;

const BS: usize = 4;

fn seq(id: &str, tokens: Vec<u32>, keys: RequestKeys) -> Sequence {
    Sequence::new(id, tokens, keys, BS, &BlockHasher::default()).unwrap()
}

fn run_prompt(kv: &mut KvCacheManager<impl llmd_kvcache::EventSink>, s: &Sequence) -> usize {
    let hit = kv.computed_blocks(s).unwrap();
    let n = hit.num_tokens();
    kv.allocate_slots(s, s.tokens().len() - n, hit).unwrap();
    n
}

#[test]
fn second_request_reuses_the_shared_prefix_but_computes_at_least_one_token() {
    let mut kv = KvCacheManager::new(32, BS).unwrap();
    let a = seq("a", (0..16).collect(), RequestKeys::new());
    assert_eq!(run_prompt(&mut kv, &a), 0);
    kv.free("a").unwrap();

    // Same 16 tokens: 4 full blocks cached, but only 3 may be reused (one token must run).
    let b = seq("b", (0..16).collect(), RequestKeys::new());
    assert_eq!(run_prompt(&mut kv, &b), 12);
    // A prompt sharing 9 tokens reuses 2 blocks.
    let c = seq("c", (0..9).chain(100..110).collect(), RequestKeys::new());
    assert_eq!(run_prompt(&mut kv, &c), 8);
    assert_eq!(kv.block_table("b").unwrap()[..2], kv.block_table("c").unwrap()[..2]);
}

#[test]
fn lora_and_salt_isolate_the_cache() {
    let mut kv = KvCacheManager::new(32, BS).unwrap();
    let toks: Vec<u32> = (0..12).collect();
    run_prompt(&mut kv, &seq("a", toks.clone(), RequestKeys::new()));
    let lora = RequestKeys::new().with_lora(LoraKey { name: "l".into(), path: "/l".into(), id: Some(1) });
    assert_eq!(run_prompt(&mut kv, &seq("b", toks.clone(), lora)), 0);
    assert_eq!(run_prompt(&mut kv, &seq("c", toks.clone(), RequestKeys::new().with_cache_salt("t"))), 0);
    assert_eq!(run_prompt(&mut kv, &seq("d", toks, RequestKeys::new())), 8);
}

#[test]
fn out_of_blocks_changes_nothing_and_decode_grows_the_table() {
    let mut kv = KvCacheManager::new(4, BS).unwrap();
    let hasher = BlockHasher::default();
    let mut a = seq("a", (0..7).collect(), RequestKeys::new());
    run_prompt(&mut kv, &a);
    assert_eq!(kv.block_table("a").unwrap().len(), 2);

    let big = seq("big", (50..70).collect(), RequestKeys::new());
    let hit = kv.computed_blocks(&big).unwrap();
    assert_eq!(kv.allocate_slots(&big, 20, hit), Err(KvCacheError::OutOfBlocks { requested: 5, free: 2 }));
    assert!(kv.block_table("big").is_none());
    assert_eq!(kv.pool().num_free(), 2);

    // Decode: one token at a time; the 8th token completes block 2 and caches it.
    a.extend(&[7], &hasher).unwrap();
    kv.allocate_slots(&a, 1, Default::default()).unwrap();
    assert_eq!(kv.block_table("a").unwrap().len(), 2);
    assert_eq!(kv.pool().num_cached(), 2);
    a.extend(&[8], &hasher).unwrap();
    kv.allocate_slots(&a, 1, Default::default()).unwrap();
    assert_eq!(kv.block_table("a").unwrap().len(), 3);

    assert_eq!(kv.free("nope"), Err(KvCacheError::UnknownRequest("nope".into())));
    kv.free("a").unwrap();
    assert_eq!(kv.pool().num_free(), 4);
    assert!(kv.reset_prefix_cache());
    assert_eq!(kv.pool().num_cached(), 0);
}

#[test]
fn freed_requests_lose_their_tail_blocks_first() {
    let mut kv = KvCacheManager::new(4, BS).unwrap();
    let a = seq("a", (0..13).collect(), RequestKeys::new());
    run_prompt(&mut kv, &a);
    kv.free("a").unwrap();
    // "b" needs two blocks: it takes a's uncached partial block, then a's tail block;
    // a's first two blocks, the ones other prompts are likeliest to share, survive.
    let b = seq("b", (100..108).collect(), RequestKeys::new());
    run_prompt(&mut kv, &b);
    let again = seq("a2", (0..13).collect(), RequestKeys::new());
    assert_eq!(kv.computed_blocks(&again).unwrap().num_tokens(), 8);
    assert_eq!(kv.pool().stats().evictions, 1);
}

/// Applies events to a set: what an external KV index would believe the pod holds.
fn apply(index: &mut HashSet<ExternalBlockHash>, events: Vec<KvEvent>) {
    for e in events {
        match e {
            KvEvent::BlockStored(s) => index.extend(s.block_hashes),
            KvEvent::BlockRemoved(r) => r.block_hashes.iter().for_each(|h| {
                index.remove(h);
            }),
            KvEvent::AllBlocksCleared { .. } => index.clear(),
            KvEvent::Unknown { .. } => {}
        }
    }
}

proptest! {
    /// Whatever the request mix, an index fed only by the pool's events (through the
    /// wire codec) always equals the set of hashes the pool caches.
    #[test]
    fn event_fed_index_equals_pool_contents(
        reqs in prop::collection::vec((0..3usize, 1..30usize, 0..8usize, any::<bool>()), 1..40)
    ) {
        let hasher = BlockHasher::default();
        let pool = BlockPool::with_sink(10, BS, EventBatcher::new(Some(0))).unwrap();
        let mut kv = KvCacheManager::with_pool(pool);
        let mut index = HashSet::new();
        let mut live: Vec<String> = Vec::new();
        let mut ts = 0.0;
        for (i, (family, len, decode, free_now)) in reqs.into_iter().enumerate() {
            // Three prompt families sharing prefixes within a family.
            let toks: Vec<u32> = (0..len as u32).map(|t| family as u32 * 1000 + t).collect();
            let id = format!("r{i}");
            let mut s = Sequence::new(id.clone(), toks, RequestKeys::new(), BS, &hasher).unwrap();
            let hit = kv.computed_blocks(&s).unwrap();
            let n = s.tokens().len() - hit.num_tokens();
            match kv.allocate_slots(&s, n, hit) {
                Ok(_) => {
                    for t in 0..decode as u32 {
                        s.extend(&[5000 + t], &hasher).unwrap();
                        if kv.allocate_slots(&s, 1, Default::default()).is_err() {
                            break;
                        }
                    }
                    live.push(id);
                }
                Err(KvCacheError::OutOfBlocks { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            }
            if free_now || live.len() > 2 {
                let victim = live.remove(0);
                kv.free(&victim).unwrap();
            }
            ts += 1.0;
            if let Some(batch) = kv.sink_mut().flush(ts) {
                let wire = decode_batch(&encode_batch(&batch).unwrap()).unwrap();
                prop_assert_eq!(&wire, &batch);
                apply(&mut index, wire.events);
            }
            let pool_hashes: HashSet<ExternalBlockHash> = (0..kv.pool().capacity() as u32)
                .filter_map(|b| kv.pool().block_hash(b).unwrap())
                .map(ExternalBlockHash::from)
                .collect();
            prop_assert_eq!(&index, &pool_hashes);
            kv.pool().check_invariants().map_err(TestCaseError::fail)?;
        }
        for id in live {
            kv.free(&id).unwrap();
        }
        prop_assert_eq!(kv.pool().num_free(), kv.pool().capacity());
    }

    /// The hand-written CBOR behind block hashes equals `ciborium`'s canonical encoding.
    #[test]
    fn block_hash_input_matches_ciborium(
        tokens in prop::collection::vec(any::<u32>(), 1..40),
        salt in proptest::option::of("[a-zé✓]{0,30}"),
        offset in any::<i64>(),
    ) {
        use ciborium::Value as C;
        use llmd_kvcache::ExtraKey;
        let hasher = BlockHasher::new(llmd_kvcache::HashAlgo::Sha256Cbor, "seed");
        let keys: Option<Vec<ExtraKey>> = salt.clone().map(|s| vec![
            ExtraKey::Mm { identifier: s.clone(), offset },
            ExtraKey::CacheSalt(s),
        ]);
        let got = hasher.hash_block(None, &tokens, keys.as_deref());

        let extra = match &salt {
            None => C::Null,
            Some(s) => C::Array(vec![
                C::Array(vec![C::Text("mm".into()), C::Text(s.clone()), C::Integer(offset.into())]),
                C::Array(vec![C::Text("cache_salt".into()), C::Text(s.clone())]),
            ]),
        };
        let value = C::Array(vec![
            C::Bytes(hasher.none_hash().as_bytes().to_vec()),
            C::Array(tokens.iter().map(|&t| C::Integer(t.into())).collect()),
            extra,
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).unwrap();
        let want = llmd_kvcache::HashAlgo::Sha256Cbor.digest(&bytes);
        prop_assert_eq!(got, want);
        let _: BlockHash = want;
    }
}

#[test]
fn stale_or_foreign_computed_blocks_are_rejected() {
    let mut kv = KvCacheManager::new(4, BS).unwrap();
    let a = seq("a", (0..9).collect(), RequestKeys::new());
    run_prompt(&mut kv, &a);
    kv.free("a").unwrap();
    // "b" finds a's two cached blocks, but before it allocates, "c" takes every block.
    let b = seq("b", (0..9).collect(), RequestKeys::new());
    let hit = kv.computed_blocks(&b).unwrap();
    assert_eq!(hit.blocks().len(), 2);
    let c = seq("c", (100..116).collect(), RequestKeys::new());
    run_prompt(&mut kv, &c);
    kv.free("c").unwrap();
    let err = kv.allocate_slots(&b, 1, hit).unwrap_err();
    assert!(matches!(err, KvCacheError::StaleComputedBlocks { index: 0, .. }), "{err}");
    assert!(kv.block_table("b").is_none());
    kv.pool().check_invariants().unwrap();
}

#[test]
fn mismatched_sequences_and_empty_allocations_are_errors() {
    let mut kv = KvCacheManager::new(8, BS).unwrap();
    let hasher = BlockHasher::default();
    let wide = Sequence::new("w", (0..16).collect(), RequestKeys::new(), 8, &hasher).unwrap();
    assert!(matches!(kv.computed_blocks(&wide), Err(KvCacheError::BlockSizeMismatch { sequence: 8, manager: 4, .. })));
    let mut s = seq("s", vec![1, 2], RequestKeys::new());
    let other = BlockHasher::new(llmd_kvcache::HashAlgo::XxHashCbor, "1");
    assert_eq!(s.extend(&[3], &other), Err(KvCacheError::HasherMismatch("s".into())));
    assert_eq!(kv.allocate_slots(&s, 0, Default::default()), Err(KvCacheError::EmptyAllocation("s".into())));
    assert_eq!(kv.num_requests(), 0);
}

#[test]
fn prefix_stats_count_tokens_once_per_request() {
    let mut kv = KvCacheManager::new(16, BS).unwrap();
    let a = seq("a", (0..12).collect(), RequestKeys::new());
    run_prompt(&mut kv, &a);
    let b = seq("b", (0..12).collect(), RequestKeys::new());
    // Looking up repeatedly (a waiting request) counts nothing.
    for _ in 0..3 {
        kv.computed_blocks(&b).unwrap();
    }
    run_prompt(&mut kv, &b);
    let st = kv.prefix_stats();
    assert_eq!((st.requests, st.queries, st.hits), (2, 24, 8));
}
