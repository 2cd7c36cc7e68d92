//! Transfer throughput of `llmd-transfer`, each beside a baseline measured in the same
//! run on the same bytes (64 blocks of 512 KiB = 32 MiB, a long prompt's KV on a small
//! model):
//!
//! * `tcp/pull/N`: a [`TcpPuller`] pulling from a loopback server over N streams
//!   (frames, checksums on both sides, the hold table's bookkeeping) vs `tcp/raw`: the
//!   same bytes written over one loopback connection and read into one buffer, nothing
//!   else.
//! * `shm/pull`: a same-host pull of blocks held in a shared-memory arena (the side
//!   channel's round trip, the puller's checksum pass over its mapping of the arena, the
//!   loan ended when the views are dropped) vs `shm/memcpy`: one copy of the bytes. The
//!   copy into the arena is made when the hold is, outside the pull, as the TCP path's
//!   hold is made outside its pull.
//!
//! Run: `cargo bench --bench transfer`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use llmd_transfer::shm::{ShmArena, ShmMaps};
use llmd_transfer::tcp::{BlockSource, HeldBlocks, ServeOptions, TcpPuller, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BLOCKS: usize = 64;
const BLOCK_BYTES: usize = 512 << 10;
const HASH: [u8; 32] = [1; 32];

/// Hands out the same blocks to every pull (a real source ends a hold; here every
/// iteration needs one), checksummed once as a hold is.
struct Always(HeldBlocks);

impl BlockSource for Always {
    fn take(&self, _request: &str) -> llmd_transfer::Result<HeldBlocks> {
        Ok(self.0.clone())
    }
}

fn payload() -> Vec<Bytes> {
    (0..BLOCKS).map(|i| Bytes::from((0..BLOCK_BYTES).map(|j| (i * 131 + j * 7) as u8).collect::<Vec<u8>>())).collect()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let blocks = payload();
    let total = (BLOCKS * BLOCK_BYTES) as u64;
    let arena = ShmArena::new(BLOCK_BYTES, BLOCKS).expect("a shared-memory arena");
    let in_arena = arena.copy_in(&blocks).expect("room for the blocks");
    let serve_on = |held: HeldBlocks, arena: Option<ShmArena>| {
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let addr = listener.local_addr().expect("an address").to_string();
            let opts = ServeOptions { shm: arena, ..ServeOptions::default() };
            tokio::spawn(serve(listener, Arc::new(Always(held)), opts, std::future::pending()));
            addr
        })
    };
    let addr = serve_on(HeldBlocks::new(HASH, blocks.clone()), None);
    let shm_addr = serve_on(HeldBlocks::new(HASH, in_arena), Some(arena));
    // The baseline's peer: reads everything a connection sends, then answers one byte.
    let raw = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let addr = listener.local_addr().expect("an address").to_string();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; BLOCKS * BLOCK_BYTES];
                    while sock.read_exact(&mut buf).await.is_ok() {
                        if sock.write_all(&[1]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    });

    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(total)).sample_size(20).measurement_time(Duration::from_secs(8));
    for streams in [1, 4] {
        let puller = TcpPuller { streams, ..TcpPuller::default() };
        g.bench_function(format!("pull/{streams}"), |b| {
            b.iter(|| rt.block_on(puller.pull(&addr, "r", HASH)).expect("a pull"))
        });
    }
    let mut sock = rt.block_on(tokio::net::TcpStream::connect(&raw)).expect("a connection");
    g.bench_function("raw", |b| {
        b.iter(|| {
            rt.block_on(async {
                for blk in &blocks {
                    sock.write_all(blk).await.expect("a write");
                }
                let mut ack = [0u8; 1];
                sock.read_exact(&mut ack).await.expect("an answer");
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("shm");
    g.throughput(Throughput::Bytes(total)).sample_size(20).measurement_time(Duration::from_secs(8));
    let puller = TcpPuller::default();
    let maps = ShmMaps::default();
    g.bench_function("pull", |b| {
        b.iter(|| drop(rt.block_on(puller.pull_shm(&shm_addr, "r", HASH, &maps)).expect("a pull")))
    });
    let mut dst = vec![0u8; BLOCKS * BLOCK_BYTES];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for (i, blk) in blocks.iter().enumerate() {
                dst[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES].copy_from_slice(blk);
            }
            black_box(&dst);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
