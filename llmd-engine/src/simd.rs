//! x86-64 vector helpers the CPU kernels (attention, quantized matmuls, activations)
//! share.

use std::arch::x86_64::*;

/// The sum of a vector's eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn hsum(acc: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_add_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

/// `e^x` in eight lanes: the attention's portable `exp` with FMA (range reduction
/// by ln 2, a degree-6 polynomial; inputs clamped to -87..=88, NaN kept).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    // max/min return their second operand when either is NaN: the constant goes first
    // so a NaN score stays NaN, as in the portable `exp`.
    let x = _mm256_min_ps(_mm256_set1_ps(88.0), _mm256_max_ps(_mm256_set1_ps(-87.0), x));
    let round = _mm256_set1_ps(12_582_912.0);
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
    let n = _mm256_sub_ps(t, round);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(round)),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU), eight lanes at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (mut g8, mut u8) = (gate[..n].chunks_exact_mut(8), up[..n].chunks_exact(8));
    let one = _mm256_set1_ps(1.0);
    for (g, u) in g8.by_ref().zip(u8.by_ref()) {
        // SAFETY: both chunks are eight floats.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr());
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let y = _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), y);
        }
    }
    for (g, u) in g8.into_remainder().iter_mut().zip(u8.remainder()) {
        *g = crate::model::layers::silu(*g) * u;
    }
}
