//! Dequantization of ggml blocks, after ggml's reference `dequantize_row_*`.

use half::{bf16, f16};

use super::GgmlType;

#[inline]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, which must hold exactly the
/// elements they encode.
///
/// # Panics
/// If `out.len()` does not match `bytes.len()` for `ty` (a caller bug: the GGUF reader
/// and [`super::QMatrix`] check sizes before this runs).
pub fn dequantize_row(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (ty.block_elements(), ty.block_bytes());
    assert!(
        bytes.len().is_multiple_of(bb) && bytes.len() / bb * be == out.len(),
        "dequantize_row: {} bytes of {ty:?} for {} values",
        bytes.len(),
        out.len()
    );
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => {
            for (blk, o) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
                match ty {
                    GgmlType::Q8_0 => q8_0(blk, o),
                    GgmlType::Q4_0 => q4_0(blk, o),
                    GgmlType::Q4_1 => q4_1(blk, o),
                    GgmlType::Q5_0 => q5(blk, o, false),
                    GgmlType::Q5_1 => q5(blk, o, true),
                    GgmlType::Q4K => q4_k(blk, o),
                    GgmlType::Q5K => q5_k(blk, o),
                    GgmlType::Q6K => q6_k(blk, o),
                    GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => unreachable!("handled above"),
                }
            }
        }
    }
}

/// `d: f16, qs: [i8; 32]`.
#[inline]
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in o.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// `d: f16, qs: [u8; 16]`: low nibbles are values 0..16, high nibbles 16..32, each − 8.
#[inline]
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = o.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
        *l = (f32::from(q & 0x0f) - 8.0) * d;
        *h = (f32::from(q >> 4) - 8.0) * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`: `q · d + m`.
#[inline]
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = o.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
        *l = f32::from(q & 0x0f) * d + m;
        *h = f32::from(q >> 4) * d + m;
    }
}

/// Q5_0 `d: f16, qh: u32, qs: [u8; 16]` (`q · d` with `q − 16`) or, `with_min`, Q5_1
/// `d: f16, m: f16, qh: u32, qs: [u8; 16]` (`q · d + m`).
#[inline]
fn q5(b: &[u8], o: &mut [f32], with_min: bool) {
    let d = f16_at(b, 0);
    let (m, offset) = if with_min { (f16_at(b, 2), 0.0) } else { (0.0, 16.0) };
    for (o, q) in o.iter_mut().zip(q5_values(b, with_min)) {
        *o = (f32::from(q) - offset) * d + m;
    }
}

/// The 32 five-bit values (0..32) of a Q5_0 block, or (`with_min`) a Q5_1 block. Value
/// `j` of the low half is `qs[j] & 0xf` with bit `j` of `qh` as its fifth bit; value
/// `j` of the high half is `qs[j] >> 4` with bit `j + 16`.
#[inline]
pub(super) fn q5_values(b: &[u8], with_min: bool) -> [u8; 32] {
    let at = if with_min { 4 } else { 2 };
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut v = [0u8; 32];
    for (j, &q) in b[at + 4..at + 20].iter().enumerate() {
        v[j] = (q & 0x0f) | (((qh >> j) & 1) << 4) as u8;
        v[j + 16] = (q >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    v
}

/// The 6-bit scale and min of sub-block `j` from K-quants' 12 packed bytes.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    };
    (f32::from(d), f32::from(m))
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
#[inline]
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = out.split_at_mut(32);
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *l = d1 * f32::from(v & 0x0f) - m1;
            *h = d2 * f32::from(v >> 4) - m2;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
#[inline]
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (lo, hi) = out.split_at_mut(32);
        for (((l, h), &v), &high) in lo.iter_mut().zip(hi.iter_mut()).zip(q).zip(qh) {
            let b1 = if high & u1 != 0 { 16.0 } else { 0.0 };
            let b2 = if high & u2 != 0 { 16.0 } else { 0.0 };
            *l = d1 * (f32::from(v & 0x0f) + b1) - m1;
            *h = d2 * (f32::from(v >> 4) + b2) - m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
#[inline]
fn q6_k(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut o[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = i32::from((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) - 32;
            let q2 = i32::from((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
            let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            let s = |i: usize| d * f32::from(sc[i] as i8);
            out[l] = s(is) * q1 as f32;
            out[l + 32] = s(is + 2) * q2 as f32;
            out[l + 64] = s(is + 4) * q3 as f32;
            out[l + 96] = s(is + 6) * q4 as f32;
        }
    }
}
