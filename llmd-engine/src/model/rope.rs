//! Rotary position embeddings, with the scaling variants transformers implements
//! (`modeling_rope_utils.py`), applied in the "rotate half" layout Llama checkpoints use.

use super::config::{ModelConfig, RopeScaling};

/// Precomputed inverse frequencies and the cos/sin scale for one model.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    attention_scale: f32,
    dynamic: Option<(f64, f64)>, // (factor, base) for NTK-aware growth past max positions
    max_positions: usize,
    head_dim: usize,
}

fn base_inv_freq(base: f64, dim: usize) -> Vec<f64> {
    (0..dim / 2).map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64)).collect()
}

impl Rope {
    /// The RoPE of a model config.
    pub fn new(c: &ModelConfig) -> Self {
        let dim = c.head_dim;
        let base = c.rope_theta;
        let mut attention_scale = 1.0;
        let mut dynamic = None;
        let inv: Vec<f64> = match &c.rope_scaling {
            RopeScaling::Default => base_inv_freq(base, dim),
            RopeScaling::Linear { factor } => base_inv_freq(base, dim).into_iter().map(|f| f / factor).collect(),
            RopeScaling::Dynamic { factor } => {
                dynamic = Some((*factor, base));
                base_inv_freq(base, dim)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let old = *original_max_position_embeddings;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                base_inv_freq(base, dim)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 }
                };
                attention_scale = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                    }
                    _ => get_mscale(*factor, 1.0),
                } as f32;
                let d = dim as f64;
                let correction = |rot: f64| {
                    (d * (original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction(*beta_fast), correction(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                (0..dim / 2)
                    .map(|i| {
                        let pos_freq = base.powf((2 * i) as f64 / d);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor * pos_freq);
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        interpolation * (1.0 - extra_factor) + extrapolation * extra_factor
                    })
                    .collect()
            }
        };
        Rope {
            // transformers computes frequencies in float32.
            inv_freq: inv.into_iter().map(|f| f as f32).collect(),
            attention_scale,
            dynamic,
            max_positions: c.max_position_embeddings,
            head_dim: dim,
        }
    }

    /// The inverse frequencies for a sequence currently `seq_len` tokens long.
    fn freqs_for(&self, seq_len: usize) -> std::borrow::Cow<'_, [f32]> {
        match self.dynamic {
            Some((factor, base)) if seq_len > self.max_positions => {
                let d = self.head_dim as f64;
                let grown =
                    base * ((factor * seq_len as f64 / self.max_positions as f64) - (factor - 1.0)).powf(d / (d - 2.0));
                base_inv_freq(grown, self.head_dim).into_iter().map(|f| f as f32).collect::<Vec<_>>().into()
            }
            _ => self.inv_freq.as_slice().into(),
        }
    }

    /// The cos and sin tables (`head_dim / 2` each, attention scale applied) for
    /// position `pos` of a sequence `seq_len` tokens long. Computed once per token and
    /// forward pass, then applied in every layer.
    pub fn cos_sin(&self, pos: usize, seq_len: usize) -> (Vec<f32>, Vec<f32>) {
        // As transformers: the angle in f32, then cos/sin scaled.
        self.freqs_for(seq_len)
            .iter()
            .map(|&f| {
                let a = pos as f32 * f;
                (a.cos() * self.attention_scale, a.sin() * self.attention_scale)
            })
            .unzip()
    }

    /// Rotates `x` (`heads` vectors of `head_dim`, contiguous) in place with tables from
    /// [`cos_sin`](Self::cos_sin).
    pub fn apply(&self, x: &mut [f32], heads: usize, cos: &[f32], sin: &[f32]) {
        let half = self.head_dim / 2;
        for h in 0..heads {
            let v = &mut x[h * self.head_dim..(h + 1) * self.head_dim];
            for i in 0..half {
                let (a, b) = (v[i], v[i + half]);
                v[i] = a * cos[i] - b * sin[i];
                v[i + half] = b * cos[i] + a * sin[i];
            }
        }
    }
}
