//! The Llama-family decoder (Llama, Mistral, Qwen2) over a paged KV cache.

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use super::config::ModelConfig;
use super::layers::{Linear, rms_norm, silu_mul};
use super::rope::Rope;
use super::weights::Weights;
use crate::attention::{AttentionBackend, AttentionInput, QueryPos};
use crate::backend::SeqInput;
use crate::error::{EngineError, Result};
use crate::kv::PagedKvCache;

/// A token's RoPE cosines and sines.
type CosSin = (Vec<f32>, Vec<f32>);

/// Tokens per task in a step's per-token parallel loops (RoPE, SwiGLU): below this a
/// parallel section costs more than the work, so a few tokens stay on one thread.
const MIN_TOKENS: usize = 4;

pub(super) struct Layer {
    pub(super) input_norm: Vec<f32>,
    pub(super) post_norm: Vec<f32>,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
}

/// One decoder layer's weights, borrowed ([`LlamaModel::weights`]).
#[derive(Debug, Clone, Copy)]
pub struct LayerWeights<'a> {
    /// RMSNorm before attention.
    pub input_norm: &'a [f32],
    /// RMSNorm before the MLP.
    pub post_norm: &'a [f32],
    /// Query projection.
    pub q: &'a Linear,
    /// Key projection.
    pub k: &'a Linear,
    /// Value projection.
    pub v: &'a Linear,
    /// Attention output projection.
    pub o: &'a Linear,
    /// MLP gate.
    pub gate: &'a Linear,
    /// MLP up.
    pub up: &'a Linear,
    /// MLP down.
    pub down: &'a Linear,
}

/// A model's weights, borrowed ([`LlamaModel::weights`]).
#[derive(Debug, Clone)]
pub struct ModelWeights<'a> {
    /// Token embeddings, `[vocab, hidden]`.
    pub embed: &'a Linear,
    /// The final RMSNorm.
    pub norm: &'a [f32],
    /// The output projection (the embeddings when tied).
    pub lm_head: &'a Linear,
    /// The decoder layers.
    pub layers: Vec<LayerWeights<'a>>,
}

/// A Llama-family model with `f32` weights.
pub struct LlamaModel {
    config: ModelConfig,
    /// `[vocab, hidden]`, read a row per token.
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    rope: Rope,
}

impl std::fmt::Debug for LlamaModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaModel").field("config", &self.config).finish_non_exhaustive()
    }
}

impl LlamaModel {
    /// Loads `config.json` and the safetensors weights of a checkpoint directory.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let weights = Weights::load_dir(dir)?;
        Self::from_weights(config, weights)
    }

    /// Builds the model from a config and named weights (Hugging Face names).
    pub fn from_weights(config: ModelConfig, mut w: Weights) -> Result<Self> {
        let c = &config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let linear = |w: &mut Weights, name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let weight = w.take(&format!("{name}.weight"), &[out, inp])?;
            let b = if bias { Some(w.take(&format!("{name}.bias"), &[out])?) } else { None };
            Linear::new(weight, b)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Layer {
                input_norm: w.take(&format!("{p}.input_layernorm.weight"), &[h])?.data,
                post_norm: w.take(&format!("{p}.post_attention_layernorm.weight"), &[h])?.data,
                q: linear(&mut w, &format!("{p}.self_attn.q_proj"), qd, h, c.attention_bias)?,
                k: linear(&mut w, &format!("{p}.self_attn.k_proj"), kvd, h, c.attention_bias)?,
                v: linear(&mut w, &format!("{p}.self_attn.v_proj"), kvd, h, c.attention_bias)?,
                o: linear(&mut w, &format!("{p}.self_attn.o_proj"), h, qd, false)?,
                gate: linear(&mut w, &format!("{p}.mlp.gate_proj"), c.intermediate_size, h, c.mlp_bias)?,
                up: linear(&mut w, &format!("{p}.mlp.up_proj"), c.intermediate_size, h, c.mlp_bias)?,
                down: linear(&mut w, &format!("{p}.mlp.down_proj"), h, c.intermediate_size, c.mlp_bias)?,
            });
        }
        let embed: Arc<[f32]> = w.take("model.embed_tokens.weight", &[c.vocab_size, h])?.data.into();
        let embed = Linear::shared(embed, c.vocab_size, h)?;
        let lm_head = match w.take_opt("lm_head.weight", &[c.vocab_size, h])? {
            Some(t) => Linear::new(t, w.take_opt("lm_head.bias", &[c.vocab_size])?)?,
            None if c.tie_word_embeddings => embed.clone(),
            None => return Err(EngineError::Weights("missing tensor lm_head.weight (embeddings are not tied)".into())),
        };
        Ok(LlamaModel {
            rope: Rope::new(c),
            norm: w.take("model.norm.weight", &[h])?.data,
            embed,
            layers,
            lm_head,
            config,
        })
    }

    /// A model from parts already built and checked against `config` (the GGUF loader).
    pub(super) fn assemble(
        config: ModelConfig,
        embed: Linear,
        layers: Vec<Layer>,
        norm: Vec<f32>,
        lm_head: Linear,
    ) -> Self {
        LlamaModel { rope: Rope::new(&config), norm, embed, layers, lm_head, config }
    }

    /// Makes the weight layouts the CPU kernels use (see [`Linear::prepare`]) for every
    /// matrix that is multiplied: the embedding, read by row, is left alone.
    pub fn prepare(&self) {
        self.layers.par_iter().for_each(|l| {
            for lin in [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down] {
                lin.prepare();
            }
        });
        self.lm_head.prepare();
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Its weights, borrowed, for a backend that copies them elsewhere (a GPU).
    pub fn weights(&self) -> ModelWeights<'_> {
        ModelWeights {
            embed: &self.embed,
            norm: &self.norm,
            lm_head: &self.lm_head,
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    input_norm: &l.input_norm,
                    post_norm: &l.post_norm,
                    q: &l.q,
                    k: &l.k,
                    v: &l.v,
                    o: &l.o,
                    gate: &l.gate,
                    up: &l.up,
                    down: &l.down,
                })
                .collect(),
        }
    }

    /// Its rotary embedding.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    fn check(&self, seqs: &[SeqInput<'_>], cache: &PagedKvCache) -> Result<()> {
        let shape = cache.shape();
        if cache.num_layers() != self.layers.len()
            || shape.kv_heads != self.config.num_key_value_heads
            || shape.head_dim != self.config.head_dim
        {
            return Err(EngineError::Input(format!("KV cache {shape:?} does not fit this model")));
        }
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(EngineError::Input(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.config.vocab_size
                )));
            }
            let need = (s.start + s.tokens.len()).div_ceil(shape.block_size);
            if s.block_table.len() < need {
                return Err(EngineError::Input(format!(
                    "sequence {i}: {} blocks for {} tokens",
                    s.block_table.len(),
                    s.start + s.tokens.len()
                )));
            }
            if let Some(&b) = s.block_table[..need].iter().find(|&&b| b as usize >= shape.num_blocks) {
                return Err(EngineError::Input(format!("sequence {i}: block {b} is outside the cache")));
            }
        }
        Ok(())
    }

    /// Runs new tokens of several sequences through the model, writing their keys and
    /// values into `cache`. Returns, per sequence, the requested logits rows (each
    /// `vocab_size` long, concatenated).
    pub fn forward(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut PagedKvCache,
        attn: &dyn AttentionBackend,
    ) -> Result<Vec<Vec<f32>>> {
        self.check(seqs, cache)?;
        // The step runs on one of rayon's threads: each of its parallel sections (about
        // ten a layer) is then shared with the other workers directly, instead of this
        // thread handing it to the pool and sleeping until it is done.
        if rayon::current_thread_index().is_none() {
            return rayon::join(|| self.forward_checked(seqs, cache, attn), || ()).0;
        }
        self.forward_checked(seqs, cache, attn)
    }

    fn forward_checked(
        &self,
        seqs: &[SeqInput<'_>],
        cache: &mut PagedKvCache,
        attn: &dyn AttentionBackend,
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_attention_heads, c.num_key_value_heads);
        let shape = cache.shape();
        let bs = shape.block_size;
        let t: usize = seqs.iter().map(|s| s.tokens.len()).sum();

        // Per token: its sequence, position, cache slot.
        let mut queries = Vec::with_capacity(t);
        let mut slots = Vec::with_capacity(t);
        let mut seq_len_of = Vec::with_capacity(t);
        for s in seqs {
            let seq_len = s.start + s.tokens.len();
            for i in 0..s.tokens.len() {
                let pos = s.start + i;
                let window_start = c.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                queries.push(QueryPos { block_table: s.block_table, pos, window_start });
                slots.push(s.block_table[pos / bs] as usize * bs + pos % bs);
                seq_len_of.push(seq_len);
            }
        }

        let rope: Vec<CosSin> = queries
            .par_iter()
            .zip(seq_len_of.par_iter())
            .with_min_len(MIN_TOKENS)
            .map(|(qp, &len)| self.rope.cos_sin(qp.pos, len))
            .collect();
        let mut x = vec![0f32; t * h];
        for (&tok, row) in seqs.iter().flat_map(|s| s.tokens).zip(x.chunks_exact_mut(h)) {
            self.embed.row_into(tok as usize, row);
        }
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut normed = vec![0f32; t * h];
        let mut q = vec![0f32; t * nh * hd];
        let mut k = vec![0f32; t * nkv * hd];
        let mut v = vec![0f32; t * nkv * hd];
        let mut attn_out = vec![0f32; t * nh * hd];
        let mut proj = vec![0f32; t * h];
        let mut gate = vec![0f32; t * c.intermediate_size];
        let mut up = vec![0f32; t * c.intermediate_size];

        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.input_norm, eps, &mut normed);
            Linear::forward_many(&[&layer.q, &layer.k, &layer.v], &normed, t, &mut [&mut q, &mut k, &mut v]);
            q.par_chunks_mut(nh * hd)
                .zip(k.par_chunks_mut(nkv * hd))
                .zip(rope.par_iter())
                .with_min_len(MIN_TOKENS)
                .for_each(|((qt, kt), (cos, sin))| {
                    self.rope.apply(qt, nh, cos, sin);
                    self.rope.apply(kt, nkv, cos, sin);
                });
            attn.write_kv(&shape, cache.layer_mut(li), &slots, &k, &v);
            let input = AttentionInput { heads: nh, scale, q: &q, queries: &queries };
            attn.attend(&shape, cache.layer(li), &input, &mut attn_out);
            layer.o.forward(&attn_out, t, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }

            rms_norm(&x, &layer.post_norm, eps, &mut normed);
            Linear::forward_many(&[&layer.gate, &layer.up], &normed, t, &mut [&mut gate, &mut up]);
            let n = c.intermediate_size;
            gate.par_chunks_mut(n).zip(up.par_chunks(n)).with_min_len(MIN_TOKENS).for_each(|(g, u)| silu_mul(g, u));
            layer.down.forward(&gate, t, &mut proj);
            for (a, b) in x.iter_mut().zip(&proj) {
                *a += b;
            }
        }

        // Logits only for the rows asked for, in one GEMM over all sequences: the output
        // projection is the largest matrix, and reading it once per sequence would make
        // batched decode memory-bound on it.
        let (rows, counts) = crate::backend::logits_rows(seqs);
        let mut hidden = Vec::with_capacity(rows.len() * h);
        for r in &rows {
            hidden.extend_from_slice(&x[r * h..(r + 1) * h]);
        }
        let mut hn = vec![0f32; hidden.len()];
        rms_norm(&hidden, &self.norm, eps, &mut hn);
        let v = c.vocab_size;
        let mut logits = vec![0f32; rows.len() * v];
        self.lm_head.forward(&hn, rows.len(), &mut logits);
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for n in counts {
            out.push(logits[at * v..(at + n) * v].to_vec());
            at += n;
        }
        Ok(out)
    }
}
