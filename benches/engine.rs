//! Micro-benchmarks of the engine's CPU kernels, each beside a baseline measured in the
//! same run:
//!
//! * `decode_attention/*`: one decode step of paged attention for a batch, reported as
//!   KV bytes read per second, against `memcpy` of the same number of bytes (the
//!   memory-bandwidth ceiling a decode kernel is bound by).
//! * `prefill_attention/*`: causal attention over a whole prompt (tokens/s), against the
//!   same kernel written for contiguous (unpaged) K/V — the same work split (rayon over
//!   query token × KV head), the same eight-accumulator dot product, rows read in place
//!   instead of through a block table — so the ratio is the cost of paging. A naive
//!   scalar kernel (one pass per query head, iterator sums) is kept as a second,
//!   labelled reference.
//!
//! Run: `cargo bench --bench engine`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use llmd::engine::attention::{AttentionBackend, AttentionInput, CpuAttention, QueryPos, dot, softmax_rows};
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
    // Baseline: the same kernel over K/V contiguous as `[pos][kv_head][dim]`.
    let kv: Vec<f32> = (0..n * KV_HEADS * HEAD_DIM).map(|i| ((i % 97) as f32 - 48.0) / 64.0).collect();
    // Both compute the same attention (the cache holds the same values).
    let mut want = vec![0f32; out.len()];
    contiguous_causal(&q, &kv, &kv, &mut want);
    CpuAttention.attend(&shape, cache.layer(0), &input, &mut out);
    assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "kernels disagree");
    g.bench_function(BenchmarkId::new("contiguous_f32_baseline", n), |b| {
        b.iter(|| contiguous_causal(black_box(&q), &kv, &kv, &mut out))
    });
    g.bench_function(BenchmarkId::new("naive_scalar_contiguous_f32", n), |b| {
        b.iter(|| naive_causal(black_box(&q), &kv, &kv, &mut out))
    });
    g.finish();
}

/// Causal attention over contiguous `[pos][kv_head][dim]` K/V with the engine's earlier
/// (two-pass) paged kernel's structure: one work item per (query token, KV head), each
/// key and value row read once for the query heads sharing it, scores normalised in
/// place.
fn contiguous_causal(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    use rayon::prelude::*;
    let group = HEADS / KV_HEADS;
    let hd = HEAD_DIM;
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    out.par_chunks_mut(group * hd).zip(q.par_chunks(group * hd)).enumerate().for_each(|(item, (o, qg))| {
        let (pos, kh) = (item / KV_HEADS, item % KV_HEADS);
        let n = pos + 1;
        let mut scores = vec![0f32; group * n];
        for j in 0..n {
            let row = &k[(j * KV_HEADS + kh) * hd..][..hd];
            for g in 0..group {
                scores[g * n + j] = dot(&qg[g * hd..(g + 1) * hd], row) * scale;
            }
        }
        softmax_rows(&mut scores, n);
        o.fill(0.0);
        for j in 0..n {
            let row = &v[(j * KV_HEADS + kh) * hd..][..hd];
            for g in 0..group {
                let w = scores[g * n + j];
                for (acc, x) in o[g * hd..(g + 1) * hd].iter_mut().zip(row) {
                    *acc += w * x;
                }
            }
        }
    });
}

/// A naive reference: per query token, each query head in turn, iterator dot products,
/// key rows re-read for every head of a group. Not a fair baseline for the paged
/// kernel (it skips the kernel's optimisations); kept to show what those are worth.
fn naive_causal(q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1)).sample_size(20);
    targets = decode_attention, prefill_attention
}
criterion_main!(benches);
