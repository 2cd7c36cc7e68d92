//! KV offloading's copy paths, each beside a baseline measured in the same run on the
//! same bytes (32 blocks of 2 MiB = 64 MiB: Llama-3.1-8B's 16-token blocks in f16, all
//! 32 layers):
//!
//! * `host/offload`: the engine's path down, [`Offloader::store_evicted`] reading each
//!   evicted block out of a [`PagedKvCache`] into host memory (full, so every block
//!   replaces one), vs `host/memcpy`: one copy of the same bytes.
//! * `host/onboard`: the path back up, [`Offloader::plan_onboard`] plus
//!   [`PagedKvCache::import_blocks`], vs the same memcpy.
//! * `disk/write`: the disk tier writing the blocks as checksummed files (temporary
//!   file, rename) and waiting for them, vs `disk/raw-write`: the same bytes written to
//!   one file. `disk/read` and `disk/raw-read` likewise, reading back (from the page
//!   cache: the files were just written; a cold read is the device's speed).
//!
//! Run: `cargo bench --bench offload`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use llmd::engine::offload::{DiskConfig, DiskTier, Namespace, OffloadConfig, Offloader};
use llmd::engine::{KvDtype, KvShape, PagedKvCache};
use llmd_kvcache::BlockHash;
use llmd_kvcache::tier::{PolicyKind, Tier};

const BLOCKS: usize = 32;
const SHAPE: KvShape = KvShape { num_blocks: BLOCKS, block_size: 16, kv_heads: 8, head_dim: 128 };
const LAYERS: usize = 32;

fn hash(i: usize) -> BlockHash {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b[8] = 0x5a;
    BlockHash::from_bytes(&b).expect("32 bytes")
}

fn cache() -> PagedKvCache {
    let mut c = PagedKvCache::new(LAYERS, SHAPE, KvDtype::F16).expect("cache");
    let layout = c.block_layout();
    let data: Vec<u8> = (0..BLOCKS * layout.block_bytes()).map(|i| (i * 31 % 251) as u8).collect();
    let ids: Vec<u32> = (0..BLOCKS as u32).collect();
    c.import_blocks(&ids, &layout, &data).expect("fill");
    c
}

fn bench_host(c: &mut Criterion) {
    let kv = cache();
    let layout = kv.block_layout();
    let bytes = BLOCKS * layout.block_bytes();
    let cfg = OffloadConfig { cpu_bytes: (bytes * 2) as u64, ..OffloadConfig::from_size_gib(1.0).expect("cfg") };
    let mut g = c.benchmark_group("host");
    g.throughput(Throughput::Bytes(bytes as u64)).sample_size(20).measurement_time(Duration::from_secs(5));
    let src: Vec<u8> = vec![7; bytes];
    let mut dst: Vec<u8> = vec![0; bytes];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    // Steady state: host memory full, each round's blocks replacing the last round's in
    // slots whose buffers are reused.
    let full = OffloadConfig { cpu_bytes: bytes as u64, ..cfg.clone() };
    let mut off = Offloader::new(&full, SHAPE.block_size, layout.block_bytes()).expect("offloader");
    let mut q = off.eviction_queue();
    let mut round = 0;
    g.bench_function("offload", |b| {
        b.iter(|| {
            round += 1;
            for i in 0..BLOCKS {
                q.offload(i as u32, &hash(round * BLOCKS + i));
            }
            assert_eq!(off.store_evicted(|b, out| kv.export_blocks_into(&[b], out)), BLOCKS);
        })
    });
    let mut off = Offloader::new(&cfg, SHAPE.block_size, layout.block_bytes()).expect("offloader");
    let mut q = off.eviction_queue();
    for i in 0..BLOCKS {
        q.offload(i as u32, &hash(i));
    }
    off.store_evicted(|b, out| kv.export_blocks_into(&[b], out));
    let hashes: Vec<BlockHash> = (0..BLOCKS).map(hash).collect();
    let mut target = cache();
    g.bench_function("onboard", |b| {
        b.iter(|| {
            let plan = off.plan_onboard(&hashes);
            assert_eq!(plan.host.len(), BLOCKS);
            for (i, block) in plan.host.iter().enumerate() {
                target.import_blocks(&[i as u32], &layout, block).expect("import");
            }
        })
    });
    g.finish();
}

fn bench_disk(c: &mut Criterion) {
    let kv = cache();
    let layout = kv.block_layout();
    let bytes = BLOCKS * layout.block_bytes();
    let blocks: Vec<(BlockHash, bytes::Bytes)> =
        (0..BLOCKS).map(|i| (hash(i), bytes::Bytes::from(kv.export_blocks(&[i as u32]).expect("export")))).collect();
    let root = std::env::temp_dir().join(format!("llmd-bench-offload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("dir");
    let cfg = |sub: &str| DiskConfig {
        root: root.join(sub),
        medium: "STORAGE".into(),
        blocks: BLOCKS * 4,
        policy: PolicyKind::Lru,
        read_threads: 4,
        write_threads: 4,
    };
    let ns = Namespace { model: "bench".into(), layout: format!("{layout:?}"), hasher: "bench".into() };
    let mut g = c.benchmark_group("disk");
    g.throughput(Throughput::Bytes(bytes as u64)).sample_size(10).measurement_time(Duration::from_secs(8));
    let raw = root.join("raw.bin");
    let all: Vec<u8> = blocks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    g.bench_function("raw-write", |b| b.iter(|| std::fs::write(&raw, black_box(&all)).expect("write")));
    let mut round = 0;
    g.bench_function("write", |b| {
        b.iter_batched(
            || {
                round += 1;
                DiskTier::open(&cfg(&format!("w{round}")), &ns).expect("tier")
            },
            |mut tier| {
                tier.store(&blocks);
                tier.flush(Duration::from_secs(60));
                assert_eq!(tier.stats().written_blocks, BLOCKS as u64);
                tier
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.bench_function("raw-read", |b| b.iter(|| black_box(std::fs::read(&raw).expect("read"))));
    let mut tier = DiskTier::open(&cfg("r"), &ns).expect("tier");
    tier.store(&blocks);
    tier.flush(Duration::from_secs(60));
    let hashes: Vec<BlockHash> = blocks.iter().map(|(h, _)| *h).collect();
    g.bench_function("read", |b| {
        b.iter(|| {
            assert_eq!(tier.lookup(&hashes), BLOCKS);
            tier.read(&hashes);
            let mut got = 0;
            while got < BLOCKS {
                tier.wait(Duration::from_millis(5));
                got += tier.poll().iter().filter(|r| r.data.is_some()).count();
            }
        })
    });
    g.finish();
    drop(tier);
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, bench_host, bench_disk);
criterion_main!(benches);
