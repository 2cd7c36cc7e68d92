//! AVX2 dot products of encoded weight rows with 8-bit inputs, as llama.cpp's x86
//! kernels compute them: each block's 32 products summed by `maddubs` (unsigned × signed
//! bytes to 16-bit pairs) and `madd` (pairs to 32-bit), scaled in f32 lanes, one
//! horizontal sum per row. Up to four input rows share each unpacked weight block.
//! Q4_0 and Q4_1 matrices take [`packed_rows`] instead, over rows regrouped eight at a
//! time (`packed.rs`), whose vector lanes are output rows.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::GgmlType;
use super::matmul::Q8Block;
use super::packed::{NIBBLES, Packed8, ROWS};
use crate::simd::hsum;

/// Input rows sharing one pass over a weight row.
const TILE: usize = 4;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(b: &[u8]) -> f32 {
    // F16C: one conversion instruction instead of a call per block.
    let v = _mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[0], b[1]])));
    _mm_cvtss_f32(_mm_cvtph_ps(v))
}

/// One weight row `w` in `ty` against every quantized input row of `xs`: `out[i]` gets
/// `Σ` over blocks of `scale(w) · scale(x) · Σ w·x` (+ `min(w) · s(x)` for Q4_1).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold as many whole blocks of `ty` as
/// each row of `xs`, and `ty` must be Q4_0, Q4_1 or Q8_0.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows(ty: GgmlType, w: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    let bb = ty.block_bytes();
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let eight = _mm256_set1_epi8(8);
    for (xt, ot) in xs.chunks(TILE).zip(out.chunks_mut(TILE)) {
        let n = xt.len();
        let mut acc = [_mm256_setzero_ps(); TILE];
        let mut mins = [0.0f32; TILE];
        for (bi, b) in w.chunks_exact(bb).enumerate() {
            // SAFETY (loads below): a block holds its scale(s) and 32 bytes (Q8_0) or 16
            // bytes of nibbles (Q4_0 at 2, Q4_1 at 4); `xb.q` is 32 bytes.
            let dw = f16_to_f32(b);
            // Weights as bytes, and whether they are signed.
            let (wq, signed) = match ty {
                GgmlType::Q8_0 => (unsafe { _mm256_loadu_si256(b[2..34].as_ptr().cast()) }, true),
                _ => {
                    let off = if ty == GgmlType::Q4_0 { 2 } else { 4 };
                    let packed = unsafe { _mm_loadu_si128(b[off..off + 16].as_ptr().cast()) };
                    // Low nibbles are elements 0..16, high nibbles 16..32.
                    let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low);
                    if ty == GgmlType::Q4_0 { (_mm256_sub_epi8(nib, eight), true) } else { (nib, false) }
                }
            };
            let (wabs, mw) = if signed { (_mm256_sign_epi8(wq, wq), 0.0) } else { (wq, f16_to_f32(&b[2..4])) };
            for t in 0..n {
                let xb = &xt[t][bi];
                let y = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
                // Signed × signed through maddubs: |w| times y with w's sign.
                let y = if signed { _mm256_sign_epi8(y, wq) } else { y };
                let sum32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, y), ones);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb.d), _mm256_cvtepi32_ps(sum32), acc[t]);
                mins[t] += mw * xb.s;
            }
        }
        for t in 0..n {
            ot[t] = hsum(acc[t]) + mins[t];
        }
    }
}

/// One group of eight regrouped Q4_0/Q4_1 rows (`recs`, see `packed.rs`) against every
/// quantized input row: `out[i]` gets input row `i`'s eight outputs. Each block's
/// sixteen products per lane pair are summed in 16 bits (at most 8 · 2 · 15 · 127 =
/// 30 480, so nothing saturates), widened once, and scaled by the eight rows' scales
/// as one vector.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `ty` is Q4_0 or Q4_1; `recs` holds whole
/// records of `ty`, as many as each row of `xs` has blocks; `out` has a slot per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn packed_rows(ty: GgmlType, recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [[f32; ROWS]]) {
    let rec = Packed8::record(ty);
    let q4_1 = ty == GgmlType::Q4_1;
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    for (xt, ot) in xs.chunks(TILE).zip(out.chunks_mut(TILE)) {
        let mut acc = [_mm256_setzero_ps(); TILE];
        for (bi, r) in recs.chunks_exact(rec).enumerate() {
            let mut w = [_mm256_setzero_si256(); 8];
            // SAFETY (loads): a record is `NIBBLES` bytes of nibbles (4 × 32), then 8
            // f16 scales, then (Q4_1) 8 f16 minimums.
            for p in 0..4 {
                let v = unsafe { _mm256_loadu_si256(r[p * 32..p * 32 + 32].as_ptr().cast()) };
                w[p] = _mm256_and_si256(v, low);
                w[p + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
            }
            let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(r[NIBBLES..NIBBLES + 16].as_ptr().cast()) });
            let mw = if q4_1 {
                _mm256_cvtph_ps(unsafe { _mm_loadu_si128(r[NIBBLES + 16..NIBBLES + 32].as_ptr().cast()) })
            } else {
                _mm256_setzero_ps()
            };
            for (a, x) in acc.iter_mut().zip(xt) {
                let xb = &x[bi];
                let mut s16 = _mm256_setzero_si256();
                for (g, wg) in w.iter().enumerate() {
                    // SAFETY: bytes 4g..4g+4 of the block's 32; one broadcast load.
                    let four = unsafe { xb.q.as_ptr().add(4 * g).cast::<i32>().read_unaligned() };
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*wg, _mm256_set1_epi32(four)));
                }
                let mut s32 = _mm256_madd_epi16(s16, ones);
                if !q4_1 {
                    // Q4_0 stores w + 8: Σ (w + 8)·q − 8·Σq.
                    s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(8 * xb.sum));
                }
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), *a);
                if q4_1 {
                    *a = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), *a);
                }
            }
        }
        for (a, o) in acc.iter().zip(ot.iter_mut()) {
            // SAFETY: `o` is eight floats.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
        }
    }
}
