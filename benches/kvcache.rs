//! Micro-benchmarks of `llmd-kvcache`, each beside a baseline measured in the same run:
//!
//! * `hash/*`: block hashing (blocks/s) vs raw SHA-256 / XXH3 over the same CBOR bytes,
//!   so the ratio is the cost of building the input; for SHA-256 also the same digests
//!   chained (each waits on the previous one, as a prompt's block hashes must).
//! * `alloc_free/*`: pool allocate + free vs a bare `Vec` free list, at 1K and 1M blocks
//!   (equal times at both sizes show the operations are O(1)). Half the pool is free and
//!   uncached, so these allocations never evict.
//! * `alloc_evict/*`: the same with the pool full of cached blocks, so every allocation
//!   evicts (drops the least recently used hash from the index) and every block is
//!   cached again under a new hash before it is freed: allocate + cache + free, at 1K and
//!   1M blocks, vs a FIFO free list plus a hash map doing the same index removals and
//!   insertions.
//! * `prefix_lookup/*`: longest-cached-prefix lookup in a pool holding 1M cached blocks vs
//!   10K, for prefixes of 16 to 1024 blocks (time follows prefix length, not pool size).
//!
//! Run: `cargo bench --bench kvcache`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmd_kvcache::{BlockHash, BlockHasher, BlockPool, HashAlgo, StoredInfo};
use sha2::{Digest, Sha256};

const BLOCK: usize = 16;

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(salt) % 128_000).collect()
}

fn hashing(c: &mut Criterion) {
    let blocks = 256;
    let toks = tokens(blocks * BLOCK, 1);
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Elements(blocks as u64));
    for algo in [HashAlgo::Sha256Cbor, HashAlgo::XxHashCbor] {
        let hasher = BlockHasher::new(algo, "0");
        g.bench_function(BenchmarkId::new(algo.name(), "chain"), |b| {
            b.iter(|| hasher.hash_tokens(black_box(&toks), BLOCK))
        });
        // Baseline: the digest alone over the exact bytes the chain hashes.
        let chain = hasher.hash_tokens(&toks, BLOCK).expect("hash");
        let inputs: Vec<Vec<u8>> = (0..blocks)
            .map(|i| {
                let mut buf = Vec::new();
                let parent = i.checked_sub(1).map(|p| &chain[p]);
                hasher.block_input(&mut buf, parent, &toks[i * BLOCK..(i + 1) * BLOCK], None);
                buf
            })
            .collect();
        let baseline = match algo {
            HashAlgo::Sha256Cbor => "raw_sha256",
            _ => "raw_xxh3_128",
        };
        if algo == HashAlgo::Sha256Cbor {
            // A reference: the same digests chained as a prompt's hashes are, each input
            // waiting on the previous digest (copied in where CBOR puts the parent, and
            // hashed through `Digest`). It shows what the chain itself costs; it is not
            // a ceiling, as the hasher avoids the stall this copy causes.
            let mut chained = inputs.clone();
            g.bench_function(BenchmarkId::new("raw_sha256_chained", "same_bytes"), |b| {
                b.iter(|| {
                    let mut prev = [0u8; 32];
                    for (i, input) in chained.iter_mut().enumerate() {
                        if i > 0 {
                            input[3..35].copy_from_slice(&prev);
                        }
                        prev = Sha256::digest(black_box(&input[..])).into();
                    }
                    black_box(prev)
                })
            });
        }
        g.bench_function(BenchmarkId::new(baseline, "same_bytes"), |b| {
            b.iter(|| {
                for input in &inputs {
                    match algo {
                        HashAlgo::Sha256Cbor => {
                            black_box(Sha256::digest(input));
                        }
                        _ => {
                            black_box(algo.digest(input));
                        }
                    }
                }
            })
        });
    }
    g.finish();
}

fn alloc_free(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free");
    g.throughput(Throughput::Elements(16));
    for cap in [1_000usize, 1_000_000] {
        let mut pool = BlockPool::new(cap, BLOCK).expect("pool");
        // Make the pool realistic: half the blocks cached and free, half in use.
        let all = pool.allocate(cap).expect("alloc");
        let hashes =
            BlockHasher::new(HashAlgo::XxHashCbor, "0").hash_tokens(&tokens(cap / 2 * BLOCK, 2), BLOCK).expect("hash");
        pool.cache_blocks(&all[..cap / 2], &hashes, StoredInfo::default()).expect("cache");
        pool.free(&all[..cap / 2]).expect("free");
        g.bench_function(BenchmarkId::new("pool_16_blocks", cap), |b| {
            b.iter(|| {
                let ids = pool.allocate(16).expect("alloc");
                pool.free(black_box(&ids)).expect("free");
            })
        });
        let mut free: Vec<u32> = (0..cap as u32).collect();
        g.bench_function(BenchmarkId::new("vec_freelist_16_blocks", cap), |b| {
            b.iter(|| {
                let ids: Vec<u32> = free.drain(free.len() - 16..).collect();
                free.extend(black_box(ids));
            })
        });
    }
    g.finish();
}

/// The `n`th of a sequence of distinct 16-byte hashes (an `xxhash_cbor` hash's size),
/// uniformly spread like real ones: `n` through two rounds of a bijective mixer.
fn nth_hash(n: u64) -> BlockHash {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&mix(n).to_le_bytes());
    bytes[8..].copy_from_slice(&mix(!n).to_le_bytes());
    BlockHash::from_bytes(&bytes).expect("16 bytes")
}

fn alloc_evict(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_evict");
    g.throughput(Throughput::Elements(16));
    for cap in [1_000usize, 1_000_000] {
        // Every block cached and free: no allocation can be served without evicting.
        let mut pool = BlockPool::new(cap, BLOCK).expect("pool");
        let all = pool.allocate(cap).expect("alloc");
        let hashes: Vec<BlockHash> = (0..cap as u64).map(nth_hash).collect();
        pool.cache_blocks(&all, &hashes, StoredInfo::default()).expect("cache");
        pool.free(&all).expect("free");
        let mut next = cap as u64;
        let mut fresh = [nth_hash(0); 16];
        let before = pool.stats().evictions;
        g.bench_function(BenchmarkId::new("pool_full_16_blocks", cap), |b| {
            b.iter(|| {
                let ids = pool.allocate(16).expect("alloc");
                for h in &mut fresh {
                    *h = nth_hash(next);
                    next += 1;
                }
                pool.cache_blocks(&ids, &fresh, StoredInfo::default()).expect("cache");
                pool.free(black_box(&ids)).expect("free");
            })
        });
        // Every allocation above evicted: the path measured is the eviction path.
        let allocated = next - cap as u64;
        assert_eq!(pool.stats().evictions - before, allocated, "allocations that did not evict");
        assert_eq!((pool.num_cached(), pool.num_free()), (cap, cap));

        // Baseline: the bookkeeping eviction needs at the least, on plain structures: a
        // FIFO free list (least recently freed first, as the pool's LRU order) and a map
        // from hash to block.
        let mut free: std::collections::VecDeque<u32> = (0..cap as u32).collect();
        // The pool's own map type: the baseline pays no SipHash the pool does not.
        let mut index: llmd_kvcache::HashIndex<u32> = (0..cap as u32).map(|i| (nth_hash(u64::from(i)), i)).collect();
        let mut owner: Vec<BlockHash> = (0..cap as u64).map(nth_hash).collect();
        let mut next = cap as u64;
        g.bench_function(BenchmarkId::new("vec_freelist_hashmap_16_blocks", cap), |b| {
            b.iter(|| {
                let ids: Vec<u32> = free.drain(..16).collect();
                for &id in &ids {
                    index.remove(&owner[id as usize]);
                    let h = nth_hash(next);
                    next += 1;
                    owner[id as usize] = h;
                    index.insert(h, id);
                }
                free.extend(black_box(ids));
            })
        });
        assert_eq!(index.len(), cap);
    }
    g.finish();
}

/// A pool of `cap` blocks, all cached under chains of 1024 blocks, all free.
fn cached_pool(cap: usize) -> (BlockPool, Vec<BlockHash>) {
    let hasher = BlockHasher::new(HashAlgo::XxHashCbor, "0");
    let mut pool = BlockPool::new(cap, BLOCK).expect("pool");
    let ids = pool.allocate(cap).expect("alloc");
    let chain_len = 1024;
    let mut first_chain = Vec::new();
    for (c, chunk) in ids.chunks(chain_len).enumerate() {
        let hashes = hasher.hash_tokens(&tokens(chunk.len() * BLOCK, c as u32 * 7 + 3), BLOCK).expect("hash");
        pool.cache_blocks(chunk, &hashes, StoredInfo::default()).expect("cache");
        if c == 0 {
            first_chain = hashes;
        }
    }
    pool.free(&ids).expect("free");
    (pool, first_chain)
}

fn prefix_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("prefix_lookup");
    for cap in [10_240usize, 1_048_576] {
        let (pool, chain) = cached_pool(cap);
        assert_eq!(pool.num_cached(), cap);
        for len in [16usize, 128, 1024] {
            g.throughput(Throughput::Elements(len as u64));
            g.bench_function(BenchmarkId::new(format!("cached_{cap}"), len), |b| {
                b.iter(|| {
                    let found = pool.peek_cached_prefix(black_box(&chain[..len]));
                    assert_eq!(found.len(), len);
                    found
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(30);
    targets = hashing, alloc_free, alloc_evict, prefix_lookup
}
criterion_main!(benches);
