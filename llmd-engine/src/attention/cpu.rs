//! The CPU attention kernel.
//!
//! Decode is bound by reading the KV cache, so each work item (one query token, one
//! key/value head, and the query heads sharing it) reads every key and value row of its
//! sequence once: positions are taken [`CHUNK`] at a time, scored against all the
//! item's query heads, folded into a running (online) softmax, and their value rows
//! added while the chunk is still in L1. f16 rows are widened inside the registers
//! (F16C) instead of into a copy, and the softmax uses a branch-free `exp` the compiler
//! vectorizes.

use rayon::prelude::*;

use super::AttentionInput;
use crate::kv::{KvElem, KvShape};
use half::{bf16, f16};

/// Positions scored and folded into the running softmax at a time.
pub(super) const CHUNK: usize = 16;

/// Row kernels for one element type. The portable versions widen each row into `tmp`;
/// f32 and f16 rows use AVX2/FMA(/F16C) kernels when given a [`Simd`] token.
pub(super) trait AttendElem: KvElem {
    /// `scores[g * CHUNK + j] = q_g · rows[j]` for every query head `g` in `q` (`hd`
    /// floats each) and every row `j`.
    fn scores(q: &[f32], hd: usize, rows: &[&[Self]], scores: &mut [f32], tmp: &mut [f32], simd: Option<Simd>) {
        let _ = simd;
        portable_scores(q, hd, rows, scores, tmp);
    }

    /// `acc_g += Σ_j w[g * CHUNK + j] · rows[j]` for every query head `g` in `acc`.
    fn accumulate(w: &[f32], hd: usize, rows: &[&[Self]], acc: &mut [f32], tmp: &mut [f32], simd: Option<Simd>) {
        let _ = simd;
        portable_accumulate(w, hd, rows, acc, tmp);
    }
}

/// Which row kernels run for a call: the widest the token allows whose shape check
/// ([`super::x86::fits_wide`], [`super::x86::fits`]) holds for these arguments.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Kernels {
    Portable,
    Narrow,
    Wide,
}

impl Kernels {
    fn pick<T>(simd: Option<Simd>, heads: &[f32], hd: usize, rows: &[&[T]], scores_len: usize) -> Kernels {
        #[cfg(target_arch = "x86_64")]
        if let Some(s) = simd {
            if s.wide && super::x86::fits_wide(heads, hd, rows, scores_len) {
                return Kernels::Wide;
            }
            if super::x86::fits(heads, hd, rows, scores_len) {
                return Kernels::Narrow;
            }
        }
        let _ = (simd, heads, hd, rows, scores_len);
        Kernels::Portable
    }
}

/// The SIMD row kernels for a type, where the token and the shapes allow them.
macro_rules! simd_rows {
    ($t:ty, $scores:ident, $accumulate:ident, $scores_wide:ident, $accumulate_wide:ident) => {
        impl AttendElem for $t {
            fn scores(q: &[f32], hd: usize, rows: &[&[Self]], scores: &mut [f32], tmp: &mut [f32], simd: Option<Simd>) {
                // SAFETY (both kernels): `pick` returns them only with a token, which
                // proves the CPU features, and after their shape check passed.
                match Kernels::pick(simd, q, hd, rows, scores.len()) {
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Wide => unsafe { super::x86::$scores_wide(q, hd, rows, scores) },
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Narrow => unsafe { super::x86::$scores(q, hd, rows, scores) },
                    _ => portable_scores(q, hd, rows, scores, tmp),
                }
            }

            fn accumulate(
                w: &[f32],
                hd: usize,
                rows: &[&[Self]],
                acc: &mut [f32],
                tmp: &mut [f32],
                simd: Option<Simd>,
            ) {
                // SAFETY: as in `scores`.
                match Kernels::pick(simd, acc, hd, rows, w.len()) {
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Wide => unsafe { super::x86::$accumulate_wide(w, hd, rows, acc) },
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Narrow => unsafe { super::x86::$accumulate(w, hd, rows, acc) },
                    _ => portable_accumulate(w, hd, rows, acc, tmp),
                }
            }
        }
    };
}

simd_rows!(f32, scores_f32, accumulate_f32, scores_f32_wide, accumulate_f32_wide);
simd_rows!(f16, scores_f16, accumulate_f16, scores_f16_wide, accumulate_f16_wide);

impl AttendElem for bf16 {}

pub(super) fn portable_scores<T: KvElem>(q: &[f32], hd: usize, rows: &[&[T]], scores: &mut [f32], tmp: &mut [f32]) {
    for (j, r) in rows.iter().enumerate() {
        T::widen(r, tmp);
        for (g, qg) in q.chunks_exact(hd).enumerate() {
            scores[g * CHUNK + j] = super::dot(qg, tmp);
        }
    }
}

pub(super) fn portable_accumulate<T: KvElem>(w: &[f32], hd: usize, rows: &[&[T]], acc: &mut [f32], tmp: &mut [f32]) {
    for (j, r) in rows.iter().enumerate() {
        T::widen(r, tmp);
        for (g, ag) in acc.chunks_exact_mut(hd).enumerate() {
            let wj = w[g * CHUNK + j];
            for (a, v) in ag.iter_mut().zip(tmp.iter()) {
                *a += wj * v;
            }
        }
    }
}

/// Proof that the CPU has AVX2, FMA and F16C (and, where `wide`, AVX-512 F): only
/// [`Simd::detect`] makes one, so the softmax steps taking it can be safe functions.
#[derive(Debug, Clone, Copy)]
pub(super) struct Simd {
    /// The sixteen-lane row kernels may run.
    wide: bool,
}

impl Simd {
    pub(super) fn detect() -> Option<Simd> {
        #[cfg(target_arch = "x86_64")]
        if super::x86::has_features() {
            return Some(Simd { wide: super::x86::has_wide() });
        }
        None
    }

    /// The same token with the sixteen-lane kernels off (the tests compare both).
    #[cfg(test)]
    pub(super) fn narrow(self) -> Simd {
        Simd { wide: false }
    }
}

/// `e^x` to about 2 ulp for the softmax, without branches or a libm call so loops over
/// it vectorize: `2^n · e^r` with `n = round(x / ln 2)` and a degree-6 Taylor
/// polynomial for `|r| ≤ ln 2 / 2` (truncation error below 1.3e-7 relative). Inputs
/// below -87 give about 1.6e-38 (the softmax never sees more than its maximum, so only
/// underflow matters), and NaN stays NaN.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `n` as an integer is the difference of the mantissa bits of `t` and `ROUND`
    // (no float-to-int conversion, whose saturating semantics stop vectorization); it
    // lies in -126..=127, so `n + 127` is a valid exponent field.
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// The largest of the first `n` scores. Whole-chunk lanes (the rest masked), so it
/// vectorizes.
#[inline]
pub(super) fn chunk_max(sc: &[f32; CHUNK], n: usize, simd: Option<Simd>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd.is_some() {
        // SAFETY: a `Simd` exists only where `x86::has_features` found AVX2, FMA and F16C.
        return unsafe { super::x86::chunk_max(sc, n) };
    }
    let _ = simd;
    let mut m = [f32::NEG_INFINITY; 8];
    for (i, x) in sc.iter().enumerate() {
        let x = if i < n { *x } else { f32::NEG_INFINITY };
        m[i % 8] = m[i % 8].max(x);
    }
    m.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Replaces the first `n` scores by `e^(x - max)` and the rest by 0; returns their sum.
/// Lane-wise sums keep the loop vectorizable.
#[inline]
pub(super) fn exp_chunk(sc: &mut [f32; CHUNK], n: usize, max: f32, simd: Option<Simd>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd.is_some() {
        // SAFETY: as in `chunk_max`.
        return unsafe { super::x86::exp_chunk(sc, n, max) };
    }
    let _ = simd;
    let mut sums = [0f32; 8];
    for (i, x) in sc.iter_mut().enumerate() {
        let e = exp(*x - max);
        *x = if i < n { e } else { 0.0 };
        sums[i % 8] += *x;
    }
    sums.iter().sum()
}

/// Asks for every cache line of `span` ahead of use (a hint; nothing on other CPUs).
#[inline]
fn prefetch<T>(span: &[T]) {
    #[cfg(target_arch = "x86_64")]
    super::x86::prefetch(span);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = span;
}

/// Where one sequence's rows are: the slot of each position, through the block table.
struct Seq<'a> {
    table: &'a [u32],
    /// The last position attended to.
    last: usize,
    slot_len: usize,
    bs: usize,
}

impl Seq<'_> {
    /// The offsets of the slots of the chunk starting at `start`; returns how many.
    /// One division per chunk: positions are consecutive, so the block and offset are
    /// stepped (a division per position cost about as much as the chunk's FMAs).
    fn fill(&self, start: usize, bases: &mut [usize; CHUNK]) -> usize {
        let end = (start + CHUNK).min(self.last + 1);
        let (mut blk, mut off) = (start / self.bs, start % self.bs);
        for b in bases.iter_mut().take(end.saturating_sub(start)) {
            *b = (self.table[blk] as usize * self.bs + off) * self.slot_len;
            off += 1;
            if off == self.bs {
                (blk, off) = (blk + 1, 0);
            }
        }
        end.saturating_sub(start)
    }
}

/// Per-thread scratch, reused across work items.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
    tmp: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// Key/value heads per work item: all of them when there are enough query tokens to
/// keep every thread busy, else the largest divisor of `kv_heads` that makes enough
/// items. A position's heads are adjacent in its slot, so an item reading several
/// reads one contiguous span per position, which streams from memory far better than
/// one head's row every `slot_len` elements.
pub(super) fn heads_per_item(kv_heads: usize, queries: usize, threads: usize) -> usize {
    let want = 2 * threads;
    (1..=kv_heads).rev().find(|&d| kv_heads.is_multiple_of(d) && queries * (kv_heads / d) >= want).unwrap_or(1)
}

pub(super) fn attend<T: AttendElem>(
    shape: &KvShape,
    kbuf: &[T],
    vbuf: &[T],
    input: &AttentionInput<'_>,
    out: &mut [f32],
) {
    let AttentionInput { heads, scale, q, queries } = *input;
    let hd = shape.head_dim;
    let kvh = shape.kv_heads;
    let group = heads / kvh;
    let slot_len = shape.slot_len();
    assert!(
        q.len() == queries.len() * heads * hd && out.len() == q.len() && kvh > 0 && heads.is_multiple_of(kvh),
        "attention input: {} query floats and {} output floats for {} tokens of {heads} heads of {hd} \
         ({kvh} key/value heads)",
        q.len(),
        out.len(),
        queries.len()
    );
    let simd = Simd::detect();
    let per = heads_per_item(kvh, queries.len(), rayon::current_num_threads());
    let items_per_query = kvh / per;
    // One work item per (query token, run of `per` key/value heads): the query heads
    // sharing those key heads are contiguous in `q` and `out`, and every key and value
    // row is read once for all of them.
    let width = per * group * hd;
    out.par_chunks_mut(width).zip(q.par_chunks(width)).enumerate().for_each_init(
        Scratch::default,
        |s, (item, (o, qi))| {
            let qp = &queries[item / items_per_query];
            let h0 = (item % items_per_query) * per;
            // The scale folded into the queries once, not applied to every score.
            s.q.clear();
            s.q.extend(qi.iter().map(|x| x * scale));
            s.acc.clear();
            s.acc.resize(width, 0.0);
            s.scores.resize(per * group * CHUNK, 0.0);
            s.tmp.resize(hd, 0.0);
            s.max.clear();
            s.max.resize(per * group, f32::NEG_INFINITY);
            s.sum.clear();
            s.sum.resize(per * group, 0.0);
            let seq = Seq { table: qp.block_table, last: qp.pos, slot_len, bs: shape.block_size };
            let (mut bases, mut next) = ([0usize; CHUNK], [0usize; CHUNK]);
            let mut rows: [&[T]; CHUNK] = [&[]; CHUNK];
            let span = h0 * hd..(h0 + per) * hd;
            let mut start = qp.window_start;
            let mut n = seq.fill(start, &mut bases);
            while start <= qp.pos {
                let end = start + n;
                // The next chunk's spans are requested from memory now, so their loads
                // overlap this chunk's arithmetic instead of stalling the next one.
                let n_next = if end <= qp.pos { seq.fill(end, &mut next) } else { 0 };
                for &b in &next[..n_next] {
                    prefetch(&kbuf[b + span.start..b + span.end]);
                    prefetch(&vbuf[b + span.start..b + span.end]);
                }
                for k in 0..per {
                    let off = (h0 + k) * hd;
                    let (qk, sk) = (&s.q[k * group * hd..(k + 1) * group * hd], k * group * CHUNK);
                    let scores = &mut s.scores[sk..sk + group * CHUNK];
                    for (r, &b) in rows.iter_mut().zip(&bases[..n]) {
                        *r = &kbuf[b + off..b + off + hd];
                    }
                    T::scores(qk, hd, &rows[..n], scores, &mut s.tmp, simd);
                    let acc = &mut s.acc[k * group * hd..(k + 1) * group * hd];
                    for (g, sc) in scores.chunks_exact_mut(CHUNK).enumerate() {
                        let Ok(sc) = <&mut [f32; CHUNK]>::try_from(sc) else { continue };
                        let h = k * group + g;
                        let old = s.max[h];
                        let new = old.max(chunk_max(sc, n, simd));
                        let total = exp_chunk(sc, n, new, simd);
                        // Earlier terms were taken against a smaller maximum: rescale them.
                        let correction = if old == f32::NEG_INFINITY { 0.0 } else { exp(old - new) };
                        if correction != 1.0 {
                            for a in &mut acc[g * hd..(g + 1) * hd] {
                                *a *= correction;
                            }
                        }
                        s.sum[h] = s.sum[h] * correction + total;
                        s.max[h] = new;
                    }
                    for (r, &b) in rows.iter_mut().zip(&bases[..n]) {
                        *r = &vbuf[b + off..b + off + hd];
                    }
                    T::accumulate(scores, hd, &rows[..n], acc, &mut s.tmp, simd);
                }
                std::mem::swap(&mut bases, &mut next);
                (start, n) = (end, n_next);
            }
            for ((og, ag), sum) in o.chunks_exact_mut(hd).zip(s.acc.chunks_exact(hd)).zip(&s.sum) {
                let inv = 1.0 / sum;
                for (o, a) in og.iter_mut().zip(ag) {
                    *o = a * inv;
                }
            }
        },
    );
}
