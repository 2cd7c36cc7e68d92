//! AVX2/FMA row kernels for attention over f32 and f16 (F16C) key/value rows. Rows are
//! widened in registers, eight lanes at a time; up to [`TILE`] query heads share each
//! loaded row, and two rows are in flight at once so the FMA chains overlap. With
//! AVX-512 and a head size that is a multiple of 16, the same kernels run sixteen lanes
//! at a time (`*_wide`): half the instructions, and twice the arithmetic on CPUs with
//! full-width units.

use std::arch::x86_64::*;

use crate::simd::{exp8, hsum};

use half::f16;

use super::cpu::CHUNK;

/// Query heads sharing one pass over a row (their accumulators stay in registers).
const TILE: usize = 4;

/// Whether the kernels' shapes hold (the CPU features are checked once per call, by
/// `cpu::Simd`): rows are `hd` wide with `hd` a multiple of 8, `heads` holds whole
/// heads, and `scores` (or weights) has `CHUNK` entries per head for at most `CHUNK`
/// rows.
pub(super) fn fits<T>(heads: &[f32], hd: usize, rows: &[&[T]], scores_len: usize) -> bool {
    hd > 0
        && hd.is_multiple_of(8)
        && heads.len().is_multiple_of(hd)
        && rows.len() <= CHUNK
        && scores_len >= heads.len() / hd * CHUNK
        && rows.iter().all(|r| r.len() == hd)
}

/// Whether the wide kernels' shapes hold: [`fits`], and `hd` a multiple of 16.
pub(super) fn fits_wide<T>(heads: &[f32], hd: usize, rows: &[&[T]], scores_len: usize) -> bool {
    hd.is_multiple_of(16) && fits(heads, hd, rows, scores_len)
}

/// Whether the CPU has AVX-512 F (for the wide kernels), besides [`has_features`].
pub(super) fn has_wide() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether the CPU has AVX2, FMA and F16C.
pub(super) fn has_features() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Prefetches every 64-byte line of `row` into all cache levels.
#[inline]
pub(super) fn prefetch<T>(row: &[T]) {
    let bytes = std::mem::size_of_val(row);
    let p = row.as_ptr().cast::<i8>();
    for off in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is a hint that never faults; the address is inside `row`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
    }
}

/// Eight f32 lanes from `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees eight readable floats at `p`.
    unsafe { _mm256_loadu_ps(p) }
}

/// Eight f16 values from `p`, widened.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees eight readable halves (16 bytes) at `p`.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}

/// The scores and accumulate kernels for one element type and one vector width: `$w`
/// lanes of `$v`, built from the given intrinsics under `$feat` (eight lanes with AVX2,
/// sixteen with AVX-512 F). `$fits` names the shape check the caller must have made.
macro_rules! row_kernels {
    (avx2 $scores:ident, $accumulate:ident, $t:ty, $load:ident) => {
        row_kernels!(
            @impl $scores, $accumulate, $t, $load, "avx2,fma,f16c", "fits", 8, __m256, _mm256_setzero_ps,
            _mm256_loadu_ps, _mm256_storeu_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_set1_ps, hsum
        );
    };
    (avx512 $scores:ident, $accumulate:ident, $t:ty, $load:ident) => {
        row_kernels!(
            @impl $scores, $accumulate, $t, $load, "avx512f", "fits_wide", 16, __m512, _mm512_setzero_ps,
            _mm512_loadu_ps, _mm512_storeu_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_set1_ps, _mm512_reduce_add_ps
        );
    };
    (
        @impl $scores:ident, $accumulate:ident, $t:ty, $load:ident, $feat:literal, $fits:literal,
        $w:literal, $v:ty, $zero:ident, $loadu:ident, $storeu:ident, $fmadd:ident, $add:ident, $set1:ident,
        $hsum:ident
    ) => {
        /// `scores[g * CHUNK + j] = q_g · rows[j]`.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $feat, " and [`", $fits, "`] holds for these arguments.")]
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $scores(q: &[f32], hd: usize, rows: &[&[$t]], scores: &mut [f32]) {
            /// One tile of `G` heads (a constant, so the accumulators stay in registers).
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile<const G: usize>(qt: &[f32], hd: usize, rows: &[&[$t]], scores: &mut [f32]) {
                for j in (0..rows.len()).step_by(2) {
                    let r0 = rows[j];
                    // An odd last row is paired with itself; its second result is dropped.
                    let r1 = rows.get(j + 1).copied().unwrap_or(r0);
                    let mut a: [[$v; 2]; G] = [[$zero(); 2]; G];
                    for d in (0..hd).step_by($w) {
                        // SAFETY: every row is `hd` long and `qt` holds `G` heads of `hd`.
                        let (k0, k1) = unsafe { ($load(r0.as_ptr().add(d)), $load(r1.as_ptr().add(d))) };
                        for (t, at) in a.iter_mut().enumerate() {
                            // SAFETY: `t < G` heads of `hd` floats, `d + $w <= hd`.
                            let qv = unsafe { $loadu(qt.as_ptr().add(t * hd + d)) };
                            at[0] = $fmadd(qv, k0, at[0]);
                            at[1] = $fmadd(qv, k1, at[1]);
                        }
                    }
                    for (t, at) in a.iter().enumerate() {
                        scores[t * CHUNK + j] = $hsum(at[0]);
                        if j + 1 < rows.len() {
                            scores[t * CHUNK + j + 1] = $hsum(at[1]);
                        }
                    }
                }
            }
            let group = q.len() / hd;
            for g0 in (0..group).step_by(TILE) {
                let gt = (group - g0).min(TILE);
                let (qt, st) = (&q[g0 * hd..(g0 + gt) * hd], &mut scores[g0 * CHUNK..(g0 + gt) * CHUNK]);
                // SAFETY: the tile holds `gt` heads and their score rows.
                unsafe {
                    match gt {
                        4 => tile::<4>(qt, hd, rows, st),
                        3 => tile::<3>(qt, hd, rows, st),
                        2 => tile::<2>(qt, hd, rows, st),
                        _ => tile::<1>(qt, hd, rows, st),
                    }
                }
            }
        }

        /// `acc_g += Σ_j w[g * CHUNK + j] · rows[j]`.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $feat, " and [`", $fits, "`] holds for these arguments.")]
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $accumulate(w: &[f32], hd: usize, rows: &[&[$t]], acc: &mut [f32]) {
            /// One tile of `G` heads over two vectors of the head dimension at a time
            /// (one where `hd` is an odd multiple of the width): each weight is
            /// broadcast once for two vectors.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn tile<const G: usize>(w: &[f32], hd: usize, rows: &[&[$t]], acc: &mut [f32]) {
                let mut d = 0;
                while d + 2 * $w <= hd {
                    let mut a: [[$v; 2]; G] = [[$zero(); 2]; G];
                    for (j, r) in rows.iter().enumerate() {
                        // SAFETY: every row is `hd` long.
                        let (v0, v1) = unsafe { ($load(r.as_ptr().add(d)), $load(r.as_ptr().add(d + $w))) };
                        for (t, at) in a.iter_mut().enumerate() {
                            let wt = $set1(w[t * CHUNK + j]);
                            at[0] = $fmadd(wt, v0, at[0]);
                            at[1] = $fmadd(wt, v1, at[1]);
                        }
                    }
                    for (t, at) in a.iter().enumerate() {
                        let dst = &mut acc[t * hd + d..t * hd + d + 2 * $w];
                        // SAFETY: `dst` is two vectors of floats.
                        unsafe {
                            let p = dst.as_mut_ptr();
                            $storeu(p, $add($loadu(p), at[0]));
                            $storeu(p.add($w), $add($loadu(p.add($w)), at[1]));
                        }
                    }
                    d += 2 * $w;
                }
                if d < hd {
                    let mut a: [$v; G] = [$zero(); G];
                    for (j, r) in rows.iter().enumerate() {
                        // SAFETY: as above; `hd - d` is one vector.
                        let v0 = unsafe { $load(r.as_ptr().add(d)) };
                        for (t, at) in a.iter_mut().enumerate() {
                            *at = $fmadd($set1(w[t * CHUNK + j]), v0, *at);
                        }
                    }
                    for (t, at) in a.iter().enumerate() {
                        let dst = &mut acc[t * hd + d..t * hd + d + $w];
                        // SAFETY: `dst` is one vector of floats.
                        unsafe { $storeu(dst.as_mut_ptr(), $add($loadu(dst.as_ptr()), *at)) };
                    }
                }
            }
            let group = acc.len() / hd;
            for g0 in (0..group).step_by(TILE) {
                let gt = (group - g0).min(TILE);
                let (wt, at) = (&w[g0 * CHUNK..(g0 + gt) * CHUNK], &mut acc[g0 * hd..(g0 + gt) * hd]);
                // SAFETY: the tile holds `gt` heads and their weight rows.
                unsafe {
                    match gt {
                        4 => tile::<4>(wt, hd, rows, at),
                        3 => tile::<3>(wt, hd, rows, at),
                        2 => tile::<2>(wt, hd, rows, at),
                        _ => tile::<1>(wt, hd, rows, at),
                    }
                }
            }
        }
    };
}

row_kernels!(avx2 scores_f32, accumulate_f32, f32, load_f32);
row_kernels!(avx2 scores_f16, accumulate_f16, f16, load_f16);
row_kernels!(avx512 scores_f32_wide, accumulate_f32_wide, f32, load_f32_wide);
row_kernels!(avx512 scores_f16_wide, accumulate_f16_wide, f16, load_f16_wide);

/// Lanes `i < n` of a 16-lane chunk, as masks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn live(n: usize) -> (__m256, __m256) {
    let n = _mm256_set1_epi32(n as i32);
    let lo = _mm256_cmpgt_epi32(n, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    let hi = _mm256_cmpgt_epi32(n, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
    (_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi))
}

/// The largest of the first `n` scores of a chunk.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn chunk_max(sc: &[f32; CHUNK], n: usize) -> f32 {
    const { assert!(CHUNK == 16) };
    let (lo, hi) = live(n);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    // SAFETY: `sc` is 16 floats.
    let (a, b) = unsafe { (_mm256_loadu_ps(sc.as_ptr()), _mm256_loadu_ps(sc.as_ptr().add(8))) };
    // NaN lanes are skipped, as `f32::max` skips them in the portable version (the
    // accumulator goes second, and max returns it when the lane is NaN).
    let m = _mm256_max_ps(_mm256_blendv_ps(ninf, a, lo), _mm256_max_ps(_mm256_blendv_ps(ninf, b, hi), ninf));
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)))
}

/// Replaces the first `n` scores by `e^(x - max)` and the rest by 0; returns the sum.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn exp_chunk(sc: &mut [f32; CHUNK], n: usize, max: f32) -> f32 {
    let (lo, hi) = live(n);
    let m = _mm256_set1_ps(max);
    let p = sc.as_mut_ptr();
    // SAFETY: `sc` is 16 floats.
    unsafe {
        let a = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m)), lo);
        let b = _mm256_and_ps(exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(8)), m)), hi);
        _mm256_storeu_ps(p, a);
        _mm256_storeu_ps(p.add(8), b);
        hsum(_mm256_add_ps(a, b))
    }
}

/// Sixteen f32 lanes from `p`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_f32_wide(p: *const f32) -> __m512 {
    // SAFETY: the caller guarantees sixteen readable floats at `p`.
    unsafe { _mm512_loadu_ps(p) }
}

/// Sixteen f16 values from `p`, widened.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_f16_wide(p: *const f16) -> __m512 {
    // SAFETY: the caller guarantees sixteen readable halves (32 bytes) at `p`.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
}
