//! Building blocks: linear layers (dense through `gemm`, or kept in a ggml encoding),
//! RMSNorm, SiLU.

use std::borrow::Cow;
use std::sync::Arc;

use gemm::{Parallelism, gemm};

use super::weights::Tensor;
use crate::error::{EngineError, Result};
use crate::quant::QMatrix;

/// How a layer's weight is held.
#[derive(Debug, Clone)]
enum Store {
    /// f32, shared so a tied output projection reuses the embedding matrix.
    Dense(Arc<[f32]>),
    /// In its file's encoding (a view of the mapped GGUF file; clones share it).
    Quant(QMatrix),
}

/// `y = x · Wᵀ (+ b)` with `W` stored `[out, in]` as in PyTorch checkpoints.
#[derive(Debug, Clone)]
pub struct Linear {
    w: Store,
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
        Ok(Linear { w: Store::Dense(w.data.into()), b: b.map(|b| b.data), out_features, in_features })
    }

    /// A layer over a matrix kept in its ggml encoding (`[out, in]`), optional `[out]`
    /// bias.
    pub fn quantized(w: QMatrix, b: Option<Tensor>) -> Result<Self> {
        let (out_features, in_features) = (w.rows(), w.cols());
        if let Some(b) = &b
            && b.shape != [out_features]
        {
            return Err(EngineError::Weights(format!("bias shape {:?} for {out_features} outputs", b.shape)));
        }
        Ok(Linear { w: Store::Quant(w), b: b.map(|b| b.data), out_features, in_features })
    }

    /// A bias-free layer over an existing `[out, in]` matrix (tied embeddings).
    pub fn shared(w: Arc<[f32]>, out_features: usize, in_features: usize) -> Result<Self> {
        if w.len() != out_features * in_features {
            return Err(EngineError::Weights(format!("{} weights for a {out_features}×{in_features} layer", w.len())));
        }
        Ok(Linear { w: Store::Dense(w), b: None, out_features, in_features })
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The `[out, in]` weight, row-major, as f32 (dequantized into a new buffer when
    /// the layer keeps an encoded matrix).
    pub fn weight(&self) -> Cow<'_, [f32]> {
        match &self.w {
            Store::Dense(w) => Cow::Borrowed(w),
            Store::Quant(q) => Cow::Owned(q.to_f32()),
        }
    }

    /// The encoded matrix, when the layer keeps one.
    pub fn quantized_weight(&self) -> Option<&QMatrix> {
        match &self.w {
            Store::Quant(q) => Some(q),
            Store::Dense(_) => None,
        }
    }

    /// Row `r` of the weight into `out` (an embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let k = self.in_features;
        match &self.w {
            Store::Dense(w) => out.copy_from_slice(&w[r * k..(r + 1) * k]),
            Store::Quant(q) => q.dequantize_row_into(r, out),
        }
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
        let w = match &self.w {
            Store::Dense(w) => w,
            Store::Quant(q) => {
                q.matmul(x, m, y);
                self.add_bias(m, y);
                return;
            }
        };
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
                w.as_ptr(),
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
        self.add_bias(m, y);
    }

    /// Prepares what the CPU matmul would make on first use (see [`QMatrix::prepare`]).
    pub fn prepare(&self) {
        if let Store::Quant(q) = &self.w {
            q.prepare();
        }
    }

    /// [`forward`](Self::forward) of several layers over the same input, in one pass
    /// over the threads where their weights allow (see [`QMatrix::matmul_many`]).
    pub fn forward_many(linears: &[&Linear], x: &[f32], m: usize, ys: &mut [&mut [f32]]) {
        assert_eq!(linears.len(), ys.len(), "linear: one output per layer");
        let quant: Option<Vec<&QMatrix>> = linears.iter().map(|l| l.quantized_weight()).collect();
        match quant {
            Some(qs) if m > 0 => {
                QMatrix::matmul_many(&qs, x, m, ys);
                for (l, y) in linears.iter().zip(ys.iter_mut()) {
                    l.add_bias(m, y);
                }
            }
            _ => {
                for (l, y) in linears.iter().zip(ys.iter_mut()) {
                    l.forward(x, m, y);
                }
            }
        }
    }

    fn add_bias(&self, m: usize, y: &mut [f32]) {
        let n = self.out_features;
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

/// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU), vectorized where the CPU allows: a
/// libm `expf` per element was a few percent of a batched decode step.
pub(crate) fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        // SAFETY: the features were just detected.
        return unsafe { crate::simd::silu_mul(gate, up) };
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Activations, GgmlType};

    fn q4_0(rows: usize, seed: u8) -> QMatrix {
        let mut data = Vec::new();
        for r in 0..rows * 2 {
            data.extend_from_slice(&half::f16::from_f32(0.05).to_le_bytes());
            data.extend((0..16u8).map(|i| i.wrapping_mul(seed).wrapping_add(r as u8)));
        }
        QMatrix::new(GgmlType::Q4_0, rows, 64, data.into()).unwrap().with_activations(Activations::Int8)
    }

    fn bias(n: usize) -> Tensor {
        Tensor { shape: vec![n], data: (0..n).map(|i| i as f32 * 0.5 - 3.0).collect() }
    }

    /// The vectorized SwiGLU equals the scalar one to float rounding, over the
    /// clamped range's edges and a ragged tail.
    #[test]
    fn silu_mul_matches_the_scalar_formula() {
        let mut gate: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.37).collect();
        // Past the vector exp's clamp (-87..=88) on both sides.
        gate.extend([-95.0, -90.0, 90.0, 95.0, -88.5, 88.5, 0.0, -0.0, 1e-30]);
        let up: Vec<f32> = (0..gate.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut got = gate.clone();
        silu_mul(&mut got, &up);
        for ((g, u), y) in gate.iter().zip(&up).zip(&got) {
            let want = f64::from(*g) / (1.0 + (-f64::from(*g)).exp()) * f64::from(*u);
            // Relative to the value, or absolute near zero (below -87 the clamped exp
            // gives about 1e-37 where the true value is smaller still).
            assert!((f64::from(*y) - want).abs() <= 1e-6 * want.abs() + 1e-35, "{g}: {y} vs {want}");
        }
        let mut nan = [f32::NAN; 9];
        silu_mul(&mut nan, &[1.0; 9]);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    /// `forward_many` equals `forward` on each layer, biases included: fused (all
    /// quantized alike) and falling back (a dense layer among them).
    #[test]
    fn forward_many_equals_forward_with_biases() {
        let a = Linear::quantized(q4_0(16, 3), Some(bias(16))).unwrap();
        let b = Linear::quantized(q4_0(8, 7), None).unwrap();
        let w = Tensor { shape: vec![5, 64], data: (0..320).map(|i| ((i % 11) as f32 - 5.0) * 0.1).collect() };
        let d = Linear::new(w, Some(bias(5))).unwrap();
        for (layers, m) in [(vec![&a, &b], 1usize), (vec![&a, &b], 5), (vec![&a, &d], 3)] {
            let x: Vec<f32> = (0..m * 64).map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0).collect();
            let mut want: Vec<Vec<f32>> = layers.iter().map(|l| vec![0.0; m * l.out_features]).collect();
            for (l, y) in layers.iter().zip(want.iter_mut()) {
                l.forward(&x, m, y);
            }
            let mut got: Vec<Vec<f32>> = layers.iter().map(|l| vec![f32::NAN; m * l.out_features]).collect();
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
            Linear::forward_many(&layers, &x, m, &mut outs);
            assert_eq!(got, want, "m = {m}");
        }
    }
}
