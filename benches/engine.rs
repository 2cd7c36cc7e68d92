//! Micro-benchmarks of the engine's CPU kernels, each beside a baseline measured in the
//! same run:
//!
//! * `decode_attention/*`: one decode step of paged attention for a batch, reported as
//!   KV bytes read per second, against `memcpy` of the same number of bytes (the
//!   memory-bandwidth ceiling a decode kernel is bound by).
//! * `prefill_attention/*`: causal attention over a whole prompt (tokens/s), against the
//!   same arithmetic on contiguous (unpaged) K/V.
//!
//! Run: `cargo bench --bench engine`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmd::engine::attention::{AttentionBackend, AttentionInput, CpuAttention, QueryPos};
use llmd::engine::kv::{KvDtype, KvShape, PagedKvCache};

const BLOCK: usize = 16;
const KV_HEADS: usize = 8;
const HEADS: usize = 32;
const HEAD_DIM: usize = 128;

fn filled_cache(num_blocks: usize, dtype: KvDtype) -> (KvShape, PagedKvCache) {
    let shape = KvShape { num_blocks, block_size: BLOCK, kv_heads: KV_HEADS, head_dim: HEAD_DIM };
    let mut cache = PagedKvCache::new(1, shape, dtype).expect("cache");
    let slots: Vec<usize> = (0..num_blocks * BLOCK).collect();
    let vals: Vec<f32> = (0..slots.len() * shape.slot_len()).map(|i| ((i % 97) as f32 - 48.0) / 64.0).collect();
    CpuAttention.write_kv(&shape, cache.layer_mut(0), &slots, &vals, &vals);
    (shape, cache)
}

fn decode_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_attention");
    for (batch, ctx) in [(1usize, 2048usize), (16, 512)] {
        let blocks_per_seq = ctx / BLOCK;
        let (shape, cache) = filled_cache(batch * blocks_per_seq, KvDtype::F16);
        let tables: Vec<Vec<u32>> =
            (0..batch).map(|s| (s * blocks_per_seq..(s + 1) * blocks_per_seq).map(|b| b as u32).collect()).collect();
        let queries: Vec<QueryPos<'_>> =
            tables.iter().map(|t| QueryPos { block_table: t, pos: ctx - 1, window_start: 0 }).collect();
        let q = vec![0.01f32; batch * HEADS * HEAD_DIM];
        let mut out = vec![0f32; batch * HEADS * HEAD_DIM];
        let kv_bytes = (batch * ctx * shape.slot_len() * 2 * KvDtype::F16.size()) as u64;
        g.throughput(Throughput::Bytes(kv_bytes));
        let input = AttentionInput { heads: HEADS, scale: 1.0 / (HEAD_DIM as f32).sqrt(), q: &q, queries: &queries };
        g.bench_function(BenchmarkId::new("paged_f16", format!("b{batch}_ctx{ctx}")), |b| {
            b.iter(|| CpuAttention.attend(&shape, cache.layer(0), black_box(&input), &mut out))
        });
        let src = vec![1u8; kv_bytes as usize];
        let mut dst = vec![0u8; kv_bytes as usize];
        g.bench_function(BenchmarkId::new("memcpy_baseline", format!("b{batch}_ctx{ctx}")), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
    }
    g.finish();
}

fn prefill_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("prefill_attention");
    let n = 512;
    let blocks = n / BLOCK;
    let (shape, cache) = filled_cache(blocks, KvDtype::F32);
    let table: Vec<u32> = (0..blocks as u32).collect();
    let queries: Vec<QueryPos<'_>> =
        (0..n).map(|p| QueryPos { block_table: &table, pos: p, window_start: 0 }).collect();
    let q = vec![0.01f32; n * HEADS * HEAD_DIM];
    let mut out = vec![0f32; n * HEADS * HEAD_DIM];
    g.throughput(Throughput::Elements(n as u64));
    let input = AttentionInput { heads: HEADS, scale: 1.0 / (HEAD_DIM as f32).sqrt(), q: &q, queries: &queries };
    g.bench_function(BenchmarkId::new("paged_f32", n), |b| {
        b.iter(|| CpuAttention.attend(&shape, cache.layer(0), black_box(&input), &mut out))
    });
    // Baseline: the same causal attention with K/V contiguous per head (no block table).
    let kv: Vec<f32> = (0..n * KV_HEADS * HEAD_DIM).map(|i| ((i % 97) as f32 - 48.0) / 64.0).collect();
    g.bench_function(BenchmarkId::new("contiguous_f32_baseline", n), |b| {
        b.iter(|| contiguous_causal(black_box(&q), &kv, &kv, n, &mut out))
    });
    g.finish();
}

/// Straightforward causal attention over contiguous `[pos][kv_head][dim]` K/V.
fn contiguous_causal(q: &[f32], k: &[f32], v: &[f32], n: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    let group = HEADS / KV_HEADS;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    out.par_chunks_mut(HEADS * HEAD_DIM).zip(q.par_chunks(HEADS * HEAD_DIM)).enumerate().for_each(|(p, (o, qv))| {
        let mut s = vec![0f32; p + 1];
        for h in 0..HEADS {
            let kh = h / group;
            let qh = &qv[h * HEAD_DIM..(h + 1) * HEAD_DIM];
            for (j, sj) in s.iter_mut().enumerate() {
                let kr = &k[(j * KV_HEADS + kh) * HEAD_DIM..][..HEAD_DIM];
                *sj = qh.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
            }
            let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for x in s.iter_mut() {
                *x = (*x - m).exp();
                sum += *x;
            }
            let oh = &mut o[h * HEAD_DIM..(h + 1) * HEAD_DIM];
            oh.fill(0.0);
            for (j, w) in s.iter().enumerate() {
                let vr = &v[(j * KV_HEADS + kh) * HEAD_DIM..][..HEAD_DIM];
                for (a, b) in oh.iter_mut().zip(vr) {
                    *a += w / sum * b;
                }
            }
        }
    });
    let _ = n;
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = decode_attention, prefill_attention
}
criterion_main!(benches);
