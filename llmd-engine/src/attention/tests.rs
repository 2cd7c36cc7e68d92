use half::{bf16, f16};
use proptest::prelude::*;

use super::cpu::{self, AttendElem, CHUNK};
use super::*;
use crate::kv::{KvDtype, PagedKvCache};

/// Attention the textbook way, in f64, over the stored (rounded) keys and values.
fn reference(shape: &KvShape, k: &[f32], v: &[f32], input: &AttentionInput<'_>, skip_last: bool) -> Vec<f32> {
    let AttentionInput { heads, scale, q, queries } = *input;
    let (hd, kvh, bs) = (shape.head_dim, shape.kv_heads, shape.block_size);
    let group = heads / kvh;
    let mut out = vec![0f32; queries.len() * heads * hd];
    for (i, qp) in queries.iter().enumerate() {
        let last = if skip_last && qp.pos > qp.window_start { qp.pos - 1 } else { qp.pos };
        for h in 0..heads {
            let qh = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            let row = |buf: &[f32], p: usize| {
                let base = (qp.block_table[p / bs] as usize * bs + p % bs) * shape.slot_len() + (h / group) * hd;
                buf[base..base + hd].to_vec()
            };
            let scores: Vec<f64> = (qp.window_start..=last)
                .map(|p| {
                    row(k, p).iter().zip(qh).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() * f64::from(scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = w.iter().sum();
            let o = &mut out[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            for (p, wp) in (qp.window_start..=last).zip(&w) {
                for (od, vd) in o.iter_mut().zip(row(v, p)) {
                    *od += (wp / total * f64::from(vd)) as f32;
                }
            }
        }
    }
    out
}

/// Values as the cache stores them: written through the backend, read back widened.
fn stored(dtype: KvDtype, x: &[f32]) -> Vec<f32> {
    match dtype {
        KvDtype::F32 => x.to_vec(),
        KvDtype::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        KvDtype::BF16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    }
}

#[derive(Debug)]
struct Case {
    dtype: KvDtype,
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    block_size: usize,
    /// (position, window start) per query token.
    positions: Vec<(usize, usize)>,
    seed: u64,
    /// Multiplies the queries: large values make scores far beyond `exp`'s range.
    q_scale: f32,
}

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        })
        .collect()
}

/// Runs the kernel on `case` and returns (kernel output, reference, reference missing
/// each query's last position).
fn run(case: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let max_pos = case.positions.iter().map(|p| p.0).max().unwrap_or(0);
    let blocks_per_seq = max_pos / case.block_size + 1;
    let num_blocks = blocks_per_seq * case.positions.len();
    let shape = KvShape { num_blocks, block_size: case.block_size, kv_heads: case.kv_heads, head_dim: case.head_dim };
    let slots = num_blocks * case.block_size;
    let k = values(slots * shape.slot_len(), case.seed);
    let v = values(slots * shape.slot_len(), case.seed.wrapping_mul(31).wrapping_add(7));
    let mut cache = PagedKvCache::new(1, shape, case.dtype).expect("cache");
    let all: Vec<usize> = (0..slots).collect();
    CpuAttention.write_kv(&shape, cache.layer_mut(0), &all, &k, &v);
    // Each sequence's blocks, interleaved with the others' and in reverse, so the block
    // table matters.
    let tables: Vec<Vec<u32>> = (0..case.positions.len())
        .map(|s| (0..blocks_per_seq).rev().map(|b| (b * case.positions.len() + s) as u32).collect())
        .collect();
    let queries: Vec<QueryPos<'_>> = case
        .positions
        .iter()
        .zip(&tables)
        .map(|(&(pos, window_start), t)| QueryPos { block_table: t, pos, window_start })
        .collect();
    let heads = case.kv_heads * case.group;
    let q: Vec<f32> =
        values(queries.len() * heads * case.head_dim, case.seed ^ 0x5555).iter().map(|x| x * case.q_scale).collect();
    let scale = 1.0 / (case.head_dim as f32).sqrt();
    let input = AttentionInput { heads, scale, q: &q, queries: &queries };
    let mut out = vec![f32::NAN; q.len()];
    CpuAttention.attend(&shape, cache.layer(0), &input, &mut out);
    // One thread makes fewer, wider work items (several key/value heads each) than the
    // machine's pool may: both splits must give the same answer.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
    let mut single = vec![f32::NAN; q.len()];
    one.install(|| CpuAttention.attend(&shape, cache.layer(0), &input, &mut single));
    assert!(max_diff(&out, &single) < 1e-6, "the work split changed the result");
    let (ks, vs) = (stored(case.dtype, &k), stored(case.dtype, &v));
    let want = reference(&shape, &ks, &vs, &input, false);
    let wrong = reference(&shape, &ks, &vs, &input, true);
    (out, want, wrong)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(KvDtype::F32), Just(KvDtype::F16), Just(KvDtype::BF16)],
        1usize..4,
        1usize..7,
        // Multiples of 8 take the SIMD kernels; 12 and 4 the portable ones.
        prop_oneof![Just(8usize), Just(16), Just(24), Just(64), Just(12), Just(4)],
        1usize..20,
        prop::collection::vec((0usize..70, 0usize..70), 1..9),
        any::<u64>(),
    )
        .prop_map(|(dtype, kv_heads, group, head_dim, block_size, raw, seed)| Case {
            dtype,
            kv_heads,
            group,
            head_dim,
            block_size,
            positions: raw.into_iter().map(|(p, w)| (p, w.min(p))).collect(),
            seed,
            q_scale: 1.0,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Any shape, block size, window and block table: the one-pass kernel equals the
    /// two-pass f64 reference over the same stored values.
    #[test]
    fn attention_equals_the_reference(case in case_strategy()) {
        let (out, want, _) = run(&case);
        let d = max_diff(&out, &want);
        prop_assert!(d < 2e-5, "max difference {d}");
    }
}

/// Negative control: the comparison above notices a kernel that drops one position.
#[test]
fn a_kernel_missing_a_position_is_noticed() {
    let case = Case {
        dtype: KvDtype::F16,
        kv_heads: 2,
        group: 4,
        head_dim: 64,
        block_size: 16,
        positions: vec![(40, 0), (3, 0)],
        seed: 9,
        q_scale: 1.0,
    };
    let (out, want, wrong) = run(&case);
    assert!(max_diff(&out, &want) < 2e-5);
    assert!(max_diff(&out, &wrong) > 1e-3, "{}", max_diff(&out, &wrong));
}

/// Long contexts (many chunks, the running maximum rising and falling), and queries
/// scaled so scores reach the hundreds: `e^score` alone would overflow f32, so this
/// holds only if every chunk is taken against the running maximum and earlier chunks
/// are rescaled when it rises.
#[test]
fn long_contexts_and_large_scores() {
    for (pos, seed, q_scale) in
        [(2047usize, 1u64, 1.0f32), (CHUNK - 1, 2, 1.0), (CHUNK, 3, 1.0), (5 * CHUNK + 3, 4, 1.0), (300, 5, 150.0)]
    {
        let case = Case {
            dtype: KvDtype::F16,
            kv_heads: 1,
            group: 3,
            head_dim: 128,
            block_size: 16,
            positions: vec![(pos, 0)],
            seed,
            q_scale,
        };
        let (out, want, _) = run(&case);
        let d = max_diff(&out, &want);
        assert!(d < 2e-5 * q_scale.max(1.0).sqrt(), "pos {pos}, scale {q_scale}: {d}");
        assert!(out.iter().all(|x| x.is_finite()));
    }
}

/// A NaN key gives NaN for the heads that read it, on every path, as the reference
/// would; it is not quietly weighted to zero.
#[test]
fn a_nan_key_gives_nan() {
    let shape = KvShape { num_blocks: 4, block_size: 16, kv_heads: 2, head_dim: 16 };
    let slots = 64;
    let mut k = values(slots * shape.slot_len(), 1);
    let v = values(slots * shape.slot_len(), 2);
    // Position 20, key/value head 1.
    k[20 * shape.slot_len() + 16 + 3] = f32::NAN;
    let mut cache = PagedKvCache::new(1, shape, KvDtype::F32).expect("cache");
    CpuAttention.write_kv(&shape, cache.layer_mut(0), &(0..slots).collect::<Vec<_>>(), &k, &v);
    let table = [0u32, 1, 2, 3];
    let queries = [QueryPos { block_table: &table, pos: 40, window_start: 0 }];
    let q = values(4 * 16, 3);
    let input = AttentionInput { heads: 4, scale: 0.25, q: &q, queries: &queries };
    let mut out = vec![0f32; q.len()];
    CpuAttention.attend(&shape, cache.layer(0), &input, &mut out);
    // Heads 0 and 1 use key/value head 0; heads 2 and 3 use head 1.
    assert!(out[..32].iter().all(|x| x.is_finite()));
    assert!(out[32..].iter().all(|x| x.is_nan()));
}

#[test]
fn exp_is_accurate_over_the_softmax_range() {
    let mut worst = 0f64;
    for i in 0..=200_000 {
        let x = -87.0 + 87.0 * i as f32 / 200_000.0;
        let (got, want) = (f64::from(cpu::exp(x)), f64::from(x).exp());
        worst = worst.max(((got - want) / want).abs());
    }
    assert!(worst < 3e-7, "worst relative error {worst}");
    assert!(cpu::exp(f32::NAN).is_nan());
    assert_eq!(cpu::exp(0.0), 1.0);
}

/// The SIMD kernels against the portable ones, row by row (only where the CPU has them):
/// the eight-lane ones, and the sixteen-lane ones where the CPU has AVX-512, for head
/// sizes that are even and odd multiples of 16 and one (24) only the narrow ones take.
#[test]
fn simd_row_kernels_equal_the_portable_ones() {
    let Some(simd) = cpu::Simd::detect() else {
        eprintln!("skipped: this CPU lacks AVX2/FMA/F16C, so only the portable kernels exist");
        return;
    };
    for token in [simd, simd.narrow()] {
        for hd in [16, 24, 32, 48, 64] {
            row_kernels_at(hd, token);
        }
    }
}

fn row_kernels_at(hd: usize, simd: cpu::Simd) {
    let group = 6;
    let q = values(group * hd, 11);
    // Even seeds: `values` forces the low bit on, so consecutive seeds would repeat rows.
    let rows32: Vec<Vec<f32>> = (0..CHUNK as u64 - 3).map(|r| values(hd, 100 + 2 * r)).collect();
    let rows16: Vec<Vec<f16>> = rows32.iter().map(|r| r.iter().map(|&x| f16::from_f32(x)).collect()).collect();
    let w = values(group * CHUNK, 12);
    let mut tmp = vec![0f32; hd];
    let both = |q: &[f32], w: &[f32], hd: usize, rows: &[&[f32]], tmp: &mut [f32]| compare(q, w, hd, rows, tmp, simd);
    let both16 = |q: &[f32], w: &[f32], hd: usize, rows: &[&[f16]], tmp: &mut [f32]| compare(q, w, hd, rows, tmp, simd);
    fn compare<T: AttendElem>(q: &[f32], w: &[f32], hd: usize, rows: &[&[T]], tmp: &mut [f32], simd: cpu::Simd) -> f32 {
        let (mut s1, mut s2) = (vec![0f32; q.len() / hd * CHUNK], vec![0f32; q.len() / hd * CHUNK]);
        T::scores(q, hd, rows, &mut s1, tmp, Some(simd));
        cpu::portable_scores(q, hd, rows, &mut s2, tmp);
        let (mut a1, mut a2) = (vec![0.5f32; q.len()], vec![0.5f32; q.len()]);
        T::accumulate(w, hd, rows, &mut a1, tmp, Some(simd));
        cpu::portable_accumulate(w, hd, rows, &mut a2, tmp);
        let n = rows.len();
        let used = |s: &[f32]| s.chunks(CHUNK).flat_map(|c| c[..n].to_vec()).collect::<Vec<f32>>();
        max_diff(&used(&s1), &used(&s2)).max(max_diff(&a1, &a2))
    }
    for n in [1, 2, 7, CHUNK - 3] {
        let r32: Vec<&[f32]> = rows32[..n].iter().map(|r| r.as_slice()).collect();
        let r16: Vec<&[f16]> = rows16[..n].iter().map(|r| r.as_slice()).collect();
        assert!(both(&q, &w, hd, &r32, &mut tmp) < 1e-5);
        assert!(both16(&q, &w, hd, &r16, &mut tmp) < 1e-5);
    }
}

/// The SIMD softmax steps against the portable ones, for every live length.
#[test]
fn simd_softmax_steps_equal_the_portable_ones() {
    let Some(simd) = cpu::Simd::detect() else {
        eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
        return;
    };
    let base: Vec<f32> = values(CHUNK, 5).iter().map(|x| x * 20.0).collect();
    for n in 1..=CHUNK {
        let sc: [f32; CHUNK] = base.clone().try_into().unwrap();
        let (m_simd, m_port) = (cpu::chunk_max(&sc, n, Some(simd)), cpu::chunk_max(&sc, n, None));
        assert_eq!(m_simd, m_port, "n = {n}");
        let want = base[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(m_port, want);
        let (mut a, mut b) = (sc, sc);
        let (sa, sb) = (cpu::exp_chunk(&mut a, n, m_simd, Some(simd)), cpu::exp_chunk(&mut b, n, m_port, None));
        assert!((sa - sb).abs() <= 1e-6 * sb, "n = {n}: {sa} vs {sb}");
        assert!(max_diff(&a, &b) <= 1e-6, "n = {n}");
        assert!(a[n..].iter().all(|&x| x == 0.0) && b[n..].iter().all(|&x| x == 0.0));
    }
}

/// NaN scores: skipped by the maximum, NaN after `exp`, on both paths.
#[test]
fn nan_scores_in_the_softmax_steps() {
    let Some(simd) = cpu::Simd::detect() else {
        eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
        return;
    };
    for lane in [0, 5, 9, 15] {
        let mut sc = [1.0f32; CHUNK];
        sc[lane] = f32::NAN;
        sc[3] = 2.0;
        for path in [Some(simd), None] {
            assert_eq!(cpu::chunk_max(&sc, CHUNK, path), 2.0, "lane {lane}, {path:?}");
            let mut e = sc;
            let total = cpu::exp_chunk(&mut e, CHUNK, 2.0, path);
            assert!(total.is_nan() && e[lane].is_nan(), "lane {lane}, {path:?}");
        }
    }
}

#[test]
fn work_items_cover_runs_of_key_value_heads() {
    // (kv heads, query tokens, threads) -> heads per item
    for (kvh, queries, threads, want) in
        [(8, 1, 2, 2), (8, 1, 16, 1), (8, 16, 2, 8), (3, 1, 2, 1), (6, 5, 2, 6), (6, 1, 2, 1), (5, 100, 16, 5)]
    {
        assert_eq!(
            cpu::heads_per_item(kvh, queries, threads),
            want,
            "{kvh} heads, {queries} tokens, {threads} threads"
        );
    }
}
