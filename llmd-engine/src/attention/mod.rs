//! Paged attention kernels.
//!
//! [`AttentionBackend`] is the seam for accelerator kernels (CUDA through cudarc, ROCm
//! through hip-sys, behind features); [`CpuAttention`] is the reference they are tested
//! against. A query attends to every cached position of its sequence up to its own
//! (causal), reading keys and values through the sequence's block table, so prefill
//! over a cached prefix, chunked prefill and batched decode are the same operation.

use rayon::prelude::*;

use crate::kv::{KvBuf, KvElem, KvShape, LayerKv};

/// Where one query token sits.
#[derive(Debug, Clone, Copy)]
pub struct QueryPos<'a> {
    /// The sequence's block table.
    pub block_table: &'a [u32],
    /// The token's position; it attends to positions `window_start..=pos`.
    pub pos: usize,
    /// First position visible (non-zero only with sliding-window attention).
    pub window_start: usize,
}

/// The queries of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionInput<'a> {
    /// Query heads (a multiple of the cache's key/value heads).
    pub heads: usize,
    /// Score scale, usually `1/sqrt(head_dim)`.
    pub scale: f32,
    /// `heads * head_dim` floats per query token, RoPE applied.
    pub q: &'a [f32],
    /// Where each query token sits.
    pub queries: &'a [QueryPos<'a>],
}

/// A paged attention implementation.
pub trait AttentionBackend: Send + Sync {
    /// Stores keys and values (`slot_len` floats per token) at the given cache slots.
    fn write_kv(&self, shape: &KvShape, layer: &mut LayerKv, slots: &[usize], k: &[f32], v: &[f32]);

    /// Attention for each query token; `out` receives `heads * head_dim` floats per query.
    fn attend(&self, shape: &KvShape, layer: &LayerKv, input: &AttentionInput<'_>, out: &mut [f32]);
}

/// The CPU reference kernel: `rayon` across query tokens, `f32` accumulation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuAttention;

fn write<T: KvElem>(dst: &mut [T], slot_len: usize, slots: &[usize], src: &[f32]) {
    for (i, &slot) in slots.iter().enumerate() {
        let d = &mut dst[slot * slot_len..(slot + 1) * slot_len];
        for (o, &x) in d.iter_mut().zip(&src[i * slot_len..(i + 1) * slot_len]) {
            *o = T::from_f32(x);
        }
    }
}

/// Dot product with eight independent accumulators, so it vectorizes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Softmax in place over each row of `n` scores (max-subtracted, so it cannot overflow).
pub fn softmax_rows(scores: &mut [f32], n: usize) {
    for s in scores.chunks_mut(n.max(1)) {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in s.iter_mut() {
            *x *= inv;
        }
    }
}

fn attend_typed<T: KvElem>(shape: &KvShape, kbuf: &[T], vbuf: &[T], input: &AttentionInput<'_>, out: &mut [f32]) {
    let AttentionInput { heads, scale, q, queries } = *input;
    let hd = shape.head_dim;
    let kvh = shape.kv_heads;
    let group = heads / kvh;
    let slot_len = shape.slot_len();
    let bs = shape.block_size;
    // One work item per (query token, key/value head): the query heads sharing that key
    // head are contiguous in `q` and `out`, and every key row is read once for all of
    // them. Splitting by head too keeps both cores busy on a single decoding sequence.
    out.par_chunks_mut(group * hd).zip(q.par_chunks(group * hd)).enumerate().for_each(|(item, (o, qg))| {
        let qp = &queries[item / kvh];
        let kh = item % kvh;
        let n = qp.pos + 1 - qp.window_start;
        let mut scores = vec![0f32; group * n];
        let mut row = vec![0f32; hd];
        for (j, p) in (qp.window_start..=qp.pos).enumerate() {
            let base = (qp.block_table[p / bs] as usize * bs + p % bs) * slot_len + kh * hd;
            T::widen(&kbuf[base..base + hd], &mut row);
            for g in 0..group {
                scores[g * n + j] = dot(&qg[g * hd..(g + 1) * hd], &row) * scale;
            }
        }
        softmax_rows(&mut scores, n);
        o.fill(0.0);
        for (j, p) in (qp.window_start..=qp.pos).enumerate() {
            let base = (qp.block_table[p / bs] as usize * bs + p % bs) * slot_len + kh * hd;
            T::widen(&vbuf[base..base + hd], &mut row);
            for g in 0..group {
                let w = scores[g * n + j];
                for (acc, v) in o[g * hd..(g + 1) * hd].iter_mut().zip(&row) {
                    *acc += w * v;
                }
            }
        }
    });
}

impl AttentionBackend for CpuAttention {
    fn write_kv(&self, shape: &KvShape, layer: &mut LayerKv, slots: &[usize], k: &[f32], v: &[f32]) {
        let sl = shape.slot_len();
        match layer.parts_mut() {
            (KvBuf::F32(kb), KvBuf::F32(vb)) => {
                write(kb, sl, slots, k);
                write(vb, sl, slots, v);
            }
            (KvBuf::F16(kb), KvBuf::F16(vb)) => {
                write(kb, sl, slots, k);
                write(vb, sl, slots, v);
            }
            (KvBuf::BF16(kb), KvBuf::BF16(vb)) => {
                write(kb, sl, slots, k);
                write(vb, sl, slots, v);
            }
            _ => unreachable!("keys and values share one dtype by construction"),
        }
    }

    fn attend(&self, shape: &KvShape, layer: &LayerKv, input: &AttentionInput<'_>, out: &mut [f32]) {
        match layer.parts() {
            (KvBuf::F32(k), KvBuf::F32(v)) => attend_typed(shape, k, v, input, out),
            (KvBuf::F16(k), KvBuf::F16(v)) => attend_typed(shape, k, v, input, out),
            (KvBuf::BF16(k), KvBuf::BF16(v)) => attend_typed(shape, k, v, input, out),
            _ => unreachable!("keys and values share one dtype by construction"),
        }
    }
}
