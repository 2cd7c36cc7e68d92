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
    let q = values(queries.len() * heads * case.head_dim, case.seed ^ 0x5555);
    let scale = 1.0 / (case.head_dim as f32).sqrt();
    let input = AttentionInput { heads, scale, q: &q, queries: &queries };
    let mut out = vec![f32::NAN; q.len()];
    CpuAttention.attend(&shape, cache.layer(0), &input, &mut out);
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
    };
    let (out, want, wrong) = run(&case);
    assert!(max_diff(&out, &want) < 2e-5);
    assert!(max_diff(&out, &wrong) > 1e-3, "{}", max_diff(&out, &wrong));
}

/// Long contexts (many chunks, the running maximum rising and falling) and large
/// scores that would overflow a softmax without the running maximum.
#[test]
fn long_contexts_and_large_scores() {
    for (pos, seed) in [(2047usize, 1u64), (CHUNK - 1, 2), (CHUNK, 3), (5 * CHUNK + 3, 4)] {
        let case = Case {
            dtype: KvDtype::F16,
            kv_heads: 1,
            group: 3,
            head_dim: 128,
            block_size: 16,
            positions: vec![(pos, 0)],
            seed,
        };
        let (out, want, _) = run(&case);
        assert!(max_diff(&out, &want) < 2e-5, "pos {pos}: {}", max_diff(&out, &want));
    }
    let scores = [300.0f32, 299.0, -400.0];
    let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f32> = scores.iter().map(|s| cpu::exp(s - m)).collect();
    assert!((w[1] - (-1f32).exp()).abs() < 1e-7 && w[2] < 1e-37 && w[0] == 1.0);
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

/// The SIMD kernels against the portable ones, row by row (only where the CPU has them).
#[test]
fn simd_row_kernels_equal_the_portable_ones() {
    let hd = 32;
    let group = 6;
    let q = values(group * hd, 11);
    let rows32: Vec<Vec<f32>> = (0..CHUNK as u64 - 3).map(|r| values(hd, 100 + r)).collect();
    let rows16: Vec<Vec<f16>> = rows32.iter().map(|r| r.iter().map(|&x| f16::from_f32(x)).collect()).collect();
    let w = values(group * CHUNK, 12);
    let mut tmp = vec![0f32; hd];
    fn both<T: AttendElem>(q: &[f32], w: &[f32], hd: usize, rows: &[&[T]], tmp: &mut [f32]) -> f32 {
        let (mut s1, mut s2) = (vec![0f32; q.len() / hd * CHUNK], vec![0f32; q.len() / hd * CHUNK]);
        T::scores(q, hd, rows, &mut s1, tmp);
        cpu::portable_scores(q, hd, rows, &mut s2, tmp);
        let (mut a1, mut a2) = (vec![0.5f32; q.len()], vec![0.5f32; q.len()]);
        T::accumulate(w, hd, rows, &mut a1, tmp);
        cpu::portable_accumulate(w, hd, rows, &mut a2, tmp);
        let n = rows.len();
        let used = |s: &[f32]| s.chunks(CHUNK).flat_map(|c| c[..n].to_vec()).collect::<Vec<f32>>();
        max_diff(&used(&s1), &used(&s2)).max(max_diff(&a1, &a2))
    }
    for n in [1, 2, 7, CHUNK - 3] {
        let r32: Vec<&[f32]> = rows32[..n].iter().map(|r| r.as_slice()).collect();
        let r16: Vec<&[f16]> = rows16[..n].iter().map(|r| r.as_slice()).collect();
        assert!(both(&q, &w, hd, &r32, &mut tmp) < 1e-5);
        assert!(both(&q, &w, hd, &r16, &mut tmp) < 1e-5);
    }
}

/// The SIMD softmax steps against the portable ones, for every live length.
#[test]
fn simd_softmax_steps_equal_the_portable_ones() {
    #[cfg(target_arch = "x86_64")]
    if !super::x86::has_features() {
        eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
        return;
    }
    let base: Vec<f32> = values(CHUNK, 5).iter().map(|x| x * 20.0).collect();
    for n in 1..=CHUNK {
        let sc: [f32; CHUNK] = base.clone().try_into().unwrap();
        let (m_simd, m_port) = (cpu::chunk_max(&sc, n, true), cpu::chunk_max(&sc, n, false));
        assert_eq!(m_simd, m_port, "n = {n}");
        let want = base[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(m_port, want);
        let (mut a, mut b) = (sc, sc);
        let (sa, sb) = (cpu::exp_chunk(&mut a, n, m_simd, true), cpu::exp_chunk(&mut b, n, m_port, false));
        assert!((sa - sb).abs() <= 1e-6 * sb, "n = {n}: {sa} vs {sb}");
        assert!(max_diff(&a, &b) <= 1e-6, "n = {n}");
        assert!(a[n..].iter().all(|&x| x == 0.0) && b[n..].iter().all(|&x| x == 0.0));
    }
}
