//! Dense building blocks: linear layers through `gemm`, RMSNorm, SiLU.

use std::sync::Arc;

use gemm::{Parallelism, gemm};

use super::weights::Tensor;
use crate::error::{EngineError, Result};

/// `y = x · Wᵀ (+ b)` with `W` stored `[out, in]` as in PyTorch checkpoints.
#[derive(Debug, Clone)]
pub struct Linear {
    // Shared so a tied output projection reuses the embedding matrix.
    w: Arc<[f32]>,
    b: Option<Vec<f32>>,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    /// A layer from a `[out, in]` weight and optional `[out]` bias.
    pub fn new(w: Tensor, b: Option<Tensor>) -> Result<Self> {
        let [out_features, in_features] = w.shape[..] else {
            return Err(EngineError::Weights(format!("linear weight must be 2-D, got {:?}", w.shape)));
        };
        if let Some(b) = &b
            && b.shape != [out_features]
        {
            return Err(EngineError::Weights(format!("bias shape {:?} for {out_features} outputs", b.shape)));
        }
        Ok(Linear { w: w.data.into(), b: b.map(|b| b.data), out_features, in_features })
    }

    /// A bias-free layer over an existing `[out, in]` matrix (tied embeddings).
    pub fn shared(w: Arc<[f32]>, out_features: usize, in_features: usize) -> Result<Self> {
        if w.len() != out_features * in_features {
            return Err(EngineError::Weights(format!("{} weights for a {out_features}×{in_features} layer", w.len())));
        }
        Ok(Linear { w, b: None, out_features, in_features })
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The `[out, in]` weight, row-major.
    pub fn weight(&self) -> &[f32] {
        &self.w
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.b.as_deref()
    }

    /// Applies the layer to `m` rows of `x`, writing `m` rows into `y`.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.out_features, self.in_features);
        assert!(x.len() >= m * k && y.len() >= m * n, "linear: buffers smaller than {m} rows");
        if m == 0 {
            return;
        }
        // SAFETY: the assert above bounds every access: `x` is read as an m×k row-major
        // matrix, `self.w` (n·k elements, checked at construction) as its k×n transpose
        // (row stride 1, column stride k), and `y` written as an m×n row-major matrix.
        unsafe {
            gemm(
                m,
                n,
                k,
                y.as_mut_ptr(),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                self.w.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                if m * n * k >= 1 << 15 { Parallelism::Rayon(0) } else { Parallelism::None },
            );
        }
        if let Some(b) = &self.b {
            for row in y[..m * n].chunks_mut(n) {
                for (o, bb) in row.iter_mut().zip(b) {
                    *o += bb;
                }
            }
        }
    }
}

/// RMSNorm over each row, as Llama computes it in `f32`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, o) in x.chunks(d).zip(out.chunks_mut(d)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// `silu(x) = x · sigmoid(x)`.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}
