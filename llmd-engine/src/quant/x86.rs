//! AVX2 dot products of encoded weight rows with 8-bit inputs, as llama.cpp's x86
//! kernels compute them: each block's 32 products summed by `maddubs` (unsigned × signed
//! bytes to 16-bit pairs) and `madd` (pairs to 32-bit), scaled in f32 lanes, one
//! horizontal sum per row. Up to four input rows share each unpacked weight block.
//! Q4_0 and Q4_1 matrices take [`packed_rows`] instead, over rows regrouped eight at a
//! time (`packed.rs`), whose vector lanes are output rows; with AVX-512 VNNI, Q8_0 ones
//! too, sixteen rows at a time ([`packed_rows_vnni`]).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::GgmlType;
use super::matmul::Q8Block;
use super::packed::Packed;
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

/// One block of 32 inputs quantized as llama.cpp's AVX2 `quantize_row_q8_0`/`q8_1`:
/// `d = max|x| / 127`, `q = x · (127 / max|x|)` rounded to nearest even, `Σq`, and
/// (`with_sum`) `s = d · Σq`, the scales rounded through f16 as llama.cpp stores them.
///
/// # Safety
/// The CPU must have AVX2 and F16C.
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(crate) unsafe fn quantize_block(x: &[f32; 32], with_sum: bool) -> Q8Block {
    // SAFETY (loads and store): `x` is 32 floats, `q` 32 bytes.
    let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = v.map(|v| _mm256_andnot_ps(sign, v));
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    // Rounded to nearest even, then exact conversions.
    let i = v.map(|v| {
        _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, id)))
    });
    // The packs work within 128-bit halves; a final permute restores the order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // Σq of the stored bytes (after saturation, so a NaN input cannot make it
    // disagree with q): 1 × q in 16-bit pairs, then 32-bit lanes.
    let total = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), packed), _mm256_set1_epi16(1));
    let t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256::<1>(total));
    let t = _mm_add_epi32(t, _mm_shuffle_epi32::<0b01_00_11_10>(t));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32::<0b10_11_00_01>(t)));
    let mut q = [0i8; 32];
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), packed) };
    let d = amax / 127.0;
    // d and d · Σq through f16 (round to nearest even) and back, in one conversion.
    let ds = _mm_cvtph_ps(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_setr_ps(d, sum as f32 * d, 0.0, 0.0)));
    let s = if with_sum { _mm_cvtss_f32(_mm_movehdup_ps(ds)) } else { 0.0 };
    Q8Block { d: _mm_cvtss_f32(ds), s, sum, q }
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
/// quantized input row: `out[8i..8i + 8]` gets input row `i`'s eight outputs. Each
/// block's sixteen products per lane pair are summed in 16 bits (at most
/// 8 · 2 · 15 · 127 = 30 480, so nothing saturates), widened once, and scaled by the
/// eight rows' scales as one vector.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `ty` is Q4_0 or Q4_1; `recs` holds whole
/// eight-lane records of `ty`, as many as each row of `xs` has blocks; `out` has eight
/// slots per row of `xs`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn packed_rows(ty: GgmlType, recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    let q4_1 = ty == GgmlType::Q4_1;
    let tiles = xs.chunks_exact(TILE);
    let rest = tiles.remainder();
    let mut outs = out.chunks_exact_mut(TILE * 8);
    // SAFETY (all calls): the caller's promises, tile by tile.
    for (xt, ot) in tiles.zip(&mut outs) {
        unsafe { if q4_1 { avx2_tile::<true, TILE>(recs, xt, ot) } else { avx2_tile::<false, TILE>(recs, xt, ot) } }
    }
    let ot = outs.into_remainder();
    unsafe {
        match (q4_1, rest.len()) {
            (_, 0) => {}
            (true, 1) => avx2_tile::<true, 1>(recs, rest, ot),
            (true, 2) => avx2_tile::<true, 2>(recs, rest, ot),
            (true, _) => avx2_tile::<true, 3>(recs, rest, ot),
            (false, 1) => avx2_tile::<false, 1>(recs, rest, ot),
            (false, 2) => avx2_tile::<false, 2>(recs, rest, ot),
            (false, _) => avx2_tile::<false, 3>(recs, rest, ot),
        }
    }
}

/// `N` input rows (`xt`) against one group's eight-lane records, into `ot` (`8 · N`
/// floats); Q4_1 where `Q4_1`, else Q4_0. Each size is compiled with its accumulators
/// in registers.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn avx2_tile<const Q4_1: bool, const N: usize>(recs: &[u8], xt: &[Vec<Q8Block>], ot: &mut [f32]) {
    const LANES: usize = 8;
    let ty = if Q4_1 { GgmlType::Q4_1 } else { GgmlType::Q4_0 };
    let (rec, nib) = (Packed::record(ty, LANES), Packed::weight_bytes(ty, LANES));
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let xt: &[Vec<Q8Block>; N] = xt.try_into().expect("a tile of N rows");
    let mut acc = [_mm256_setzero_ps(); N];
    for (bi, r) in recs.chunks_exact(rec).enumerate() {
        let mut w = [_mm256_setzero_si256(); 8];
        // SAFETY (loads): a record is `nib` bytes of nibbles (4 × 32), then 8 f16
        // scales, then (Q4_1) 8 f16 minimums.
        for p in 0..4 {
            let v = unsafe { _mm256_loadu_si256(r[p * 32..p * 32 + 32].as_ptr().cast()) };
            w[p] = _mm256_and_si256(v, low);
            w[p + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
        }
        let dw = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(r[nib..nib + 16].as_ptr().cast()) });
        let mw = if Q4_1 {
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(r[nib + 16..nib + 32].as_ptr().cast()) })
        } else {
            _mm256_setzero_ps()
        };
        for t in 0..N {
            let xb = &xt[t][bi];
            let mut s16 = _mm256_setzero_si256();
            for (g, wg) in w.iter().enumerate() {
                // SAFETY: bytes 4g..4g+4 of the block's 32; one broadcast load.
                let four = unsafe { xb.q.as_ptr().add(4 * g).cast::<i32>().read_unaligned() };
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(*wg, _mm256_set1_epi32(four)));
            }
            let mut s32 = _mm256_madd_epi16(s16, ones);
            if !Q4_1 {
                // Q4_0 stores w + 8: Σ (w + 8)·q − 8·Σq.
                s32 = _mm256_sub_epi32(s32, _mm256_set1_epi32(8 * xb.sum));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32), _mm256_mul_ps(dw, _mm256_set1_ps(xb.d)), acc[t]);
            if Q4_1 {
                acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xb.s), acc[t]);
            }
        }
    }
    for (a, o) in acc.iter().zip(ot.chunks_exact_mut(LANES)) {
        // SAFETY: `o` is eight floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), *a) };
    }
}

/// [`packed_rows`] with AVX-512 VNNI over sixteen-lane records, for Q4_0, Q4_1 and
/// Q8_0: `vpdpbusd` multiplies unsigned weight bytes by signed input bytes and adds
/// each four products into a 32-bit lane, so there is no 16-bit stage to saturate and
/// one instruction per 64 products. Q4_0's weights are stored `+ 8` and Q8_0's `+ 128`;
/// `offset · Σx` is taken off per block. Tiles of eight input rows share each unpacked
/// block, their accumulators in registers.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI; `ty` is Q4_0, Q4_1 or Q8_0; `recs` holds
/// whole sixteen-lane records of `ty`, as many as each row of `xs` has blocks; `out`
/// has sixteen slots per row of `xs`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn packed_rows_vnni(ty: GgmlType, recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    // SAFETY: the caller's promises, passed on.
    unsafe {
        match ty {
            GgmlType::Q4_0 => vnni_rows::<Q4_0>(recs, xs, out),
            GgmlType::Q4_1 => vnni_rows::<Q4_1>(recs, xs, out),
            _ => vnni_rows::<Q8_0>(recs, xs, out),
        }
    }
}

/// Encodings as const parameters, so each kernel is compiled without branches on it.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
/// Input rows per tile of the AVX-512 kernel: eight accumulators, eight weight
/// registers and the temporaries fit the 32 vector registers.
const WIDE_TILE: usize = 8;

/// [`packed_rows_vnni`] for one encoding: whole tiles, then the rest as one tile of
/// its own size (each size compiled with its accumulators in registers).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni_rows<const TY: u8>(recs: &[u8], xs: &[Vec<Q8Block>], out: &mut [f32]) {
    const LANES: usize = 16;
    let tiles = xs.chunks_exact(WIDE_TILE);
    let rest = tiles.remainder();
    let mut outs = out.chunks_exact_mut(WIDE_TILE * LANES);
    // SAFETY (all calls): the caller's promises, tile by tile.
    for (xt, ot) in tiles.zip(&mut outs) {
        unsafe { vnni_tile::<TY, WIDE_TILE>(recs, xt, ot) };
    }
    let ot = outs.into_remainder();
    unsafe {
        match rest.len() {
            0 => {}
            1 => vnni_tile::<TY, 1>(recs, rest, ot),
            2 => vnni_tile::<TY, 2>(recs, rest, ot),
            3 => vnni_tile::<TY, 3>(recs, rest, ot),
            4 => vnni_tile::<TY, 4>(recs, rest, ot),
            5 => vnni_tile::<TY, 5>(recs, rest, ot),
            6 => vnni_tile::<TY, 6>(recs, rest, ot),
            _ => vnni_tile::<TY, 7>(recs, rest, ot),
        }
    }
}

/// `N` input rows (`xt`) against one group's records, into `ot` (`16 · N` floats).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni_tile<const TY: u8, const N: usize>(recs: &[u8], xt: &[Vec<Q8Block>], ot: &mut [f32]) {
    const LANES: usize = 16;
    let ty = match TY {
        Q4_0 => GgmlType::Q4_0,
        Q4_1 => GgmlType::Q4_1,
        _ => GgmlType::Q8_0,
    };
    let (rec, wb) = (Packed::record(ty, LANES), Packed::weight_bytes(ty, LANES));
    let offset = match TY {
        Q4_0 => 8,
        Q8_0 => 128,
        _ => 0,
    };
    let low = _mm512_set1_epi8(0x0f);
    let xt: &[Vec<Q8Block>; N] = xt.try_into().expect("a tile of N rows");
    let mut acc = [_mm512_setzero_ps(); N];
    for (bi, r) in recs.chunks_exact(rec).enumerate() {
        let mut w = [_mm512_setzero_si512(); 8];
        // SAFETY (loads): a record is `wb` bytes of weights (4 or 8 registers of 64),
        // then 16 f16 scales, then (Q4_1) 16 f16 minimums.
        if TY == Q8_0 {
            for (p, wp) in w.iter_mut().enumerate() {
                *wp = unsafe { _mm512_loadu_si512(r[p * 64..p * 64 + 64].as_ptr().cast()) };
            }
        } else {
            for p in 0..4 {
                let v = unsafe { _mm512_loadu_si512(r[p * 64..p * 64 + 64].as_ptr().cast()) };
                w[p] = _mm512_and_si512(v, low);
                w[p + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), low);
            }
        }
        let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(r[wb..wb + 32].as_ptr().cast()) });
        let mw = if TY == Q4_1 {
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(r[wb + 32..wb + 64].as_ptr().cast()) })
        } else {
            _mm512_setzero_ps()
        };
        for t in 0..N {
            let xb = &xt[t][bi];
            // Two chains of four, so each waits on half the multiply-adds.
            let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for g in 0..4 {
                // SAFETY: bytes 4g..4g+4 and 16+4g..16+4g+4 of the block's 32.
                let (f0, f1) = unsafe {
                    let q = xb.q.as_ptr();
                    (q.add(4 * g).cast::<i32>().read_unaligned(), q.add(16 + 4 * g).cast::<i32>().read_unaligned())
                };
                s0 = _mm512_dpbusd_epi32(s0, w[g], _mm512_set1_epi32(f0));
                s1 = _mm512_dpbusd_epi32(s1, w[g + 4], _mm512_set1_epi32(f1));
            }
            let mut s32 = _mm512_add_epi32(s0, s1);
            if offset != 0 {
                s32 = _mm512_sub_epi32(s32, _mm512_set1_epi32(offset * xb.sum));
            }
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32), _mm512_mul_ps(dw, _mm512_set1_ps(xb.d)), acc[t]);
            if TY == Q4_1 {
                acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xb.s), acc[t]);
            }
        }
    }
    for (a, o) in acc.iter().zip(ot.chunks_exact_mut(LANES)) {
        // SAFETY: `o` is sixteen floats.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), *a) };
    }
}
