//! Paged attention kernels.
//!
//! [`AttentionBackend`] is the seam for accelerator kernels (CUDA through cudarc, ROCm
//! through hip-sys, behind features); [`CpuAttention`] is the reference they are tested
//! against. A query attends to every cached position of its sequence up to its own
//! (causal), reading keys and values through the sequence's block table, so prefill
//! over a cached prefix, chunked prefill and batched decode are the same operation.

mod cpu;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

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

/// The CPU kernel: `rayon` across (query token, run of key/value heads), one pass over
/// the keys and values with an online softmax, `f32` accumulation, AVX2/FMA/F16C row
/// kernels where the CPU has them.
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
/// The kernel folds scores into a running softmax instead; this two-pass form is kept
/// for references and benchmarks.
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
            (KvBuf::F32(k), KvBuf::F32(v)) => cpu::attend(shape, k, v, input, out),
            (KvBuf::F16(k), KvBuf::F16(v)) => cpu::attend(shape, k, v, input, out),
            (KvBuf::BF16(k), KvBuf::BF16(v)) => cpu::attend(shape, k, v, input, out),
            _ => unreachable!("keys and values share one dtype by construction"),
        }
    }
}
