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

fn attend_typed<T: KvElem>(shape: &KvShape, kbuf: &[T], vbuf: &[T], input: &AttentionInput<'_>, out: &mut [f32]) {
    let AttentionInput { heads, scale, q, queries } = *input;
    let hd = shape.head_dim;
    let kvh = shape.kv_heads;
    let group = heads / kvh;
    let slot_len = shape.slot_len();
    let bs = shape.block_size;
    out.par_chunks_mut(heads * hd).zip(q.par_chunks(heads * hd)).zip(queries.par_iter()).for_each(|((o, qv), qp)| {
        let n = qp.pos + 1 - qp.window_start;
        let mut scores = vec![0f32; group * n];
        let mut krow = vec![0f32; hd];
        for kh in 0..kvh {
            // Scores for the query heads sharing this key head.
            for (j, p) in (qp.window_start..=qp.pos).enumerate() {
                let slot = qp.block_table[p / bs] as usize * bs + p % bs;
                let base = slot * slot_len + kh * hd;
                for (d, s) in krow.iter_mut().zip(&kbuf[base..base + hd]) {
                    *d = s.to_f32();
                }
                for g in 0..group {
                    let h = kh * group + g;
                    let qh = &qv[h * hd..(h + 1) * hd];
                    scores[g * n + j] = qh.iter().zip(&krow).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
            }
            for g in 0..group {
                let s = &mut scores[g * n..(g + 1) * n];
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for x in s.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                for x in s.iter_mut() {
                    *x /= sum;
                }
            }
            for g in 0..group {
                let h = kh * group + g;
                o[h * hd..(h + 1) * hd].fill(0.0);
            }
            for (j, p) in (qp.window_start..=qp.pos).enumerate() {
                let slot = qp.block_table[p / bs] as usize * bs + p % bs;
                let base = slot * slot_len + kh * hd;
                for (d, s) in krow.iter_mut().zip(&vbuf[base..base + hd]) {
                    *d = s.to_f32();
                }
                for g in 0..group {
                    let h = kh * group + g;
                    let w = scores[g * n + j];
                    for (acc, v) in o[h * hd..(h + 1) * hd].iter_mut().zip(&krow) {
                        *acc += w * v;
                    }
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
