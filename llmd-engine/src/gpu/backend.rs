//! [`GpuBackend`]: the Llama-family forward pass on one GPU, step for step the CPU
//! runner's (`model::llama`), over a paged KV cache in device memory.
//!
//! Weights and the KV cache are stored in f16 or bf16; activations and accumulation
//! stay in f32. Each projection is one vendor BLAS GEMM over every token of the step
//! (16-bit inputs, f32 output and compute); the rest are the kernels of `kernels.cu`.
//! Exported KV blocks have the CPU cache's layout ([`KvBlockLayout`]), so blocks move
//! between CPU and GPU engines alike.

use super::{AttentionQueries, DeviceBuffer, GpuApi, Kernels};
use crate::backend::{Backend, SeqInput, StepLogits};
use crate::error::{EngineError, Result};
use crate::kv::{KvBlockLayout, KvDtype, check_block_ids};
use crate::model::{Linear, LlamaModel, ModelConfig, Rope};

/// A linear layer on the device: `[out, in]` weight in 16-bit, f32 bias.
struct DevLinear<A: GpuApi> {
    w: DeviceBuffer<u16, A>,
    b: Option<DeviceBuffer<f32, A>>,
    out: usize,
    inp: usize,
}

/// The weights before the cache is allocated.
struct Weights<A: GpuApi> {
    embed: DeviceBuffer<u16, A>,
    norm: DeviceBuffer<u16, A>,
    lm_head: DevLinear<A>,
    layers: Vec<DevLayer<A>>,
}

struct DevLayer<A: GpuApi> {
    input_norm: DeviceBuffer<u16, A>,
    post_norm: DeviceBuffer<u16, A>,
    q: DevLinear<A>,
    k: DevLinear<A>,
    v: DevLinear<A>,
    o: DevLinear<A>,
    /// The gate and up projections as one GEMM: gate's rows, then up's.
    gate_up: DevLinear<A>,
    down: DevLinear<A>,
}

/// Tokens the activations grow by.
const SCRATCH_STEP: usize = 256;

/// A step's activations, kept between steps (a step overwrites all it reads) and grown
/// when a step has more tokens than they hold.
struct Scratch<A: GpuApi> {
    tokens: usize,
    x: DeviceBuffer<f32, A>,
    xn: DeviceBuffer<u16, A>,
    q: DeviceBuffer<f32, A>,
    k: DeviceBuffer<f32, A>,
    v: DeviceBuffer<f32, A>,
    attn: DeviceBuffer<f32, A>,
    proj: DeviceBuffer<f32, A>,
    gate_up: DeviceBuffer<f32, A>,
    act: DeviceBuffer<u16, A>,
}

impl<A: GpuApi> Scratch<A> {
    fn new(k: &Kernels<A>, c: &ModelConfig, tokens: usize) -> Result<Self> {
        let (h, qd, kvd, inter) = (
            c.hidden_size,
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
            c.intermediate_size,
        );
        Ok(Scratch {
            tokens,
            x: k.zeros(tokens * h)?,
            xn: k.zeros(tokens * h.max(qd))?,
            q: k.zeros(tokens * qd)?,
            k: k.zeros(tokens * kvd)?,
            v: k.zeros(tokens * kvd)?,
            attn: k.zeros(tokens * qd)?,
            proj: k.zeros(tokens * h)?,
            gate_up: k.zeros(tokens * 2 * inter)?,
            act: k.zeros(tokens * inter)?,
        })
    }
}

/// A Llama-family model on one GPU of vendor `A` (`CudaBackend`, `RocmBackend`).
pub struct GpuBackend<A: GpuApi> {
    k: Kernels<A>,
    config: ModelConfig,
    rope: Rope,
    dtype: KvDtype,
    embed: DeviceBuffer<u16, A>,
    norm: DeviceBuffer<u16, A>,
    lm_head: DevLinear<A>,
    layers: Vec<DevLayer<A>>,
    k_cache: Vec<DeviceBuffer<u16, A>>,
    v_cache: Vec<DeviceBuffer<u16, A>>,
    num_blocks: usize,
    block_size: usize,
    scratch: Option<Scratch<A>>,
}

impl<A: GpuApi> std::fmt::Debug for GpuBackend<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("vendor", &A::VENDOR)
            .field("device", self.k.device())
            .field("dtype", &self.dtype)
            .field("blocks", &self.num_blocks)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl<A: GpuApi> GpuBackend<A> {
    /// Copies `model` to GPU `ordinal` in `dtype` (f16 or bf16) with a KV cache of
    /// `num_blocks` blocks of `block_size` tokens.
    pub fn new(
        model: &LlamaModel,
        ordinal: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        check_dtype::<A>(dtype)?;
        let k = Kernels::<A>::new(ordinal)?;
        let c = model.config().clone();
        let w = model.weights();
        let half = |x: &[f32]| -> Result<DeviceBuffer<u16, A>> { k.upload(&to_bits(x, dtype)) };
        let linear = |l: &Linear| -> Result<DevLinear<A>> {
            Ok(DevLinear {
                w: half(&l.weight())?,
                b: l.bias().map(|b| k.upload(b)).transpose()?,
                out: l.out_features(),
                inp: l.in_features(),
            })
        };
        // Linear layers over the same input as one: their weights' rows one after
        // another, their biases likewise (zeros for a layer without one).
        let stacked = |ls: &[&Linear]| -> Result<DevLinear<A>> {
            let weight: Vec<f32> = ls.iter().flat_map(|l| l.weight().into_owned()).collect();
            let bias = ls.iter().any(|l| l.bias().is_some()).then(|| {
                ls.iter()
                    .flat_map(|l| l.bias().map_or_else(|| vec![0.0; l.out_features()], <[f32]>::to_vec))
                    .collect::<Vec<f32>>()
            });
            Ok(DevLinear {
                w: half(&weight)?,
                b: bias.map(|b| k.upload(&b)).transpose()?,
                out: ls.iter().map(|l| l.out_features()).sum(),
                inp: ls.first().map_or(0, |l| l.in_features()),
            })
        };
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DevLayer {
                input_norm: half(l.input_norm)?,
                post_norm: half(l.post_norm)?,
                q: linear(l.q)?,
                k: linear(l.k)?,
                v: linear(l.v)?,
                o: linear(l.o)?,
                gate_up: stacked(&[l.gate, l.up])?,
                down: linear(l.down)?,
            });
        }
        let embed = half(&w.embed.weight())?;
        let norm = half(w.norm)?;
        let lm_head = linear(w.lm_head)?;
        let weights = Weights { embed, norm, lm_head, layers };
        Self::assemble(k, c, model.rope().clone(), dtype, weights, num_blocks, block_size)
    }

    /// A model of `config`'s shape with random weights written on GPU `ordinal` (no
    /// checkpoint, no host copy: the benchmarks' Llama-3.1-8B shape takes 16 GB in bf16).
    pub fn random(
        config: &ModelConfig,
        ordinal: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
        seed: u64,
    ) -> Result<Self> {
        check_dtype::<A>(dtype)?;
        let k = Kernels::<A>::new(ordinal)?;
        let st = storage_name(dtype);
        let mut n = 0u64;
        let mut fill = |len: usize, offset: f32, scale: f32| -> Result<DeviceBuffer<u16, A>> {
            let mut out = k.zeros::<u16>(len)?;
            n += 1;
            k.fill_uniform(st, &mut out, seed.wrapping_mul(1_000_003).wrapping_add(n), offset, scale)?;
            Ok(out)
        };
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd, inter) = (c.num_attention_heads * hd, c.num_key_value_heads * hd, c.intermediate_size);
        // Uniform with the variance of a 1/sqrt(fan-in) init, norms near one.
        fn lin<A: GpuApi>(
            fill: &mut impl FnMut(usize, f32, f32) -> Result<DeviceBuffer<u16, A>>,
            out: usize,
            inp: usize,
        ) -> Result<DevLinear<A>> {
            Ok(DevLinear { w: fill(out * inp, 0.0, (3.0 / inp as f32).sqrt())?, b: None, out, inp })
        }
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            layers.push(DevLayer {
                input_norm: fill(h, 1.0, 0.1)?,
                post_norm: fill(h, 1.0, 0.1)?,
                q: lin(&mut fill, qd, h)?,
                k: lin(&mut fill, kvd, h)?,
                v: lin(&mut fill, kvd, h)?,
                o: lin(&mut fill, h, qd)?,
                gate_up: lin(&mut fill, 2 * inter, h)?,
                down: lin(&mut fill, h, inter)?,
            });
        }
        let lm_head = lin(&mut fill, c.vocab_size, h)?;
        let embed = fill(c.vocab_size * h, 0.0, 1.0)?;
        let norm = fill(h, 1.0, 0.1)?;
        let weights = Weights { embed, norm, lm_head, layers };
        Self::assemble(k, c.clone(), Rope::new(c), dtype, weights, num_blocks, block_size)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        k: Kernels<A>,
        config: ModelConfig,
        rope: Rope,
        dtype: KvDtype,
        w: Weights<A>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        let cache_len = num_blocks * block_size * config.num_key_value_heads * config.head_dim;
        let mut k_cache = Vec::with_capacity(w.layers.len());
        let mut v_cache = Vec::with_capacity(w.layers.len());
        for _ in 0..w.layers.len() {
            k_cache.push(k.zeros::<u16>(cache_len)?);
            v_cache.push(k.zeros::<u16>(cache_len)?);
        }
        k.synchronize()?;
        tracing::info!(vendor = A::VENDOR, device = %k.device().name, ?dtype, num_blocks, block_size, "model on the GPU");
        Ok(GpuBackend {
            rope,
            config,
            dtype,
            embed: w.embed,
            norm: w.norm,
            lm_head: w.lm_head,
            layers: w.layers,
            k_cache,
            v_cache,
            num_blocks,
            block_size,
            scratch: None,
            k,
        })
    }

    /// The kernels (for benchmarks that time one alone).
    pub fn kernels(&self) -> &Kernels<A> {
        &self.k
    }

    /// Bytes `model`'s weights take on the GPU (16-bit, biases in f32).
    pub fn weight_bytes(model: &LlamaModel) -> usize {
        let w = model.weights();
        let lin = |l: &Linear| l.out_features() * l.in_features() * 2 + l.bias().map_or(0, |b| b.len() * 4);
        let layers: usize = w
            .layers
            .iter()
            .map(|l| {
                (l.input_norm.len() + l.post_norm.len()) * 2
                    + [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].into_iter().map(lin).sum::<usize>()
            })
            .sum();
        layers + (w.embed.out_features() * w.embed.in_features() + w.norm.len()) * 2 + lin(w.lm_head)
    }

    fn storage(&self) -> &'static str {
        storage_name(self.dtype)
    }

    /// `y[r, col..col + out] = x[r] · Wᵀ (+ b)` for `rows` rows; `y`'s rows are `ldy`
    /// wide (the gate and up projections share one buffer).
    fn gemm(
        &self,
        l: &DevLinear<A>,
        x: &DeviceBuffer<u16, A>,
        rows: usize,
        y: &mut DeviceBuffer<f32, A>,
        col: usize,
        ldy: usize,
    ) -> Result<()> {
        self.k.linear(self.dtype, &l.w, x, y, (l.out, rows, l.inp), col, ldy)?;
        if let Some(b) = &l.b {
            self.k.add_bias(y, b, rows, l.out, col, ldy)?;
        }
        Ok(())
    }

    /// RMSNorm of `rows` rows of `x` into the 16-bit GEMM input `out`.
    fn norm(
        &self,
        x: &DeviceBuffer<f32, A>,
        w: &DeviceBuffer<u16, A>,
        out: &mut DeviceBuffer<u16, A>,
        rows: usize,
    ) -> Result<()> {
        let (h, eps) = (self.config.hidden_size, self.config.rms_norm_eps as f32);
        self.k.rms_norm(self.storage(), x, w, out, rows, h, eps)
    }

    fn check(&self, seqs: &[SeqInput<'_>]) -> Result<()> {
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(EngineError::Input(format!("token id {t} is outside the vocabulary")));
            }
            let need = (s.start + s.tokens.len()).div_ceil(self.block_size);
            let Some(table) = s.block_table.get(..need) else {
                return Err(EngineError::Input(format!("sequence {i}: too few blocks")));
            };
            if let Some(b) = table.iter().find(|&&b| b as usize >= self.num_blocks) {
                return Err(EngineError::Input(format!("sequence {i}: block {b} is outside the cache")));
            }
        }
        Ok(())
    }
}

fn check_dtype<A: GpuApi>(dtype: KvDtype) -> Result<()> {
    if dtype == KvDtype::F32 {
        return Err(EngineError::Device(format!(
            "the {} backend stores weights and KV in f16 or bf16, not f32",
            A::VENDOR
        )));
    }
    Ok(())
}

/// The kernels' suffix for a 16-bit storage type.
fn storage_name(dtype: KvDtype) -> &'static str {
    if dtype == KvDtype::BF16 { "bf16" } else { "f16" }
}

/// f32 values as f16 or bf16 bits.
fn to_bits(x: &[f32], dtype: KvDtype) -> Vec<u16> {
    match dtype {
        KvDtype::BF16 => x.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect(),
        _ => x.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect(),
    }
}

impl<A: GpuApi> Backend for GpuBackend<A> {
    fn execute(&mut self, seqs: &[SeqInput<'_>]) -> Result<Vec<StepLogits>> {
        self.check(seqs)?;
        let c = &self.config;
        let (h, hd, nh, nkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let inter = c.intermediate_size;
        let bs = self.block_size;
        let t: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if t == 0 {
            return Ok(seqs.iter().map(|_| StepLogits::None).collect());
        }

        // The step's bookkeeping, on the host as on the CPU: ids, slots, where each
        // query sits, RoPE tables.
        let mut ids = Vec::with_capacity(t);
        let mut slots = Vec::with_capacity(t);
        let mut queries = AttentionQueries::default();
        let (mut cos, mut sin) = (Vec::with_capacity(t * hd / 2), Vec::with_capacity(t * hd / 2));
        for s in seqs {
            let start = queries.tables.len() as u32;
            queries.tables.extend_from_slice(s.block_table);
            let seq_len = s.start + s.tokens.len();
            for (i, &tok) in s.tokens.iter().enumerate() {
                let pos = s.start + i;
                ids.push(tok);
                slots.push(s.block_table[pos / bs] * bs as u32 + (pos % bs) as u32);
                queries.table_start.push(start);
                queries.pos.push(pos as u32);
                queries.window_start.push(c.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w)) as u32);
                let (cs, sn) = self.rope.cos_sin(pos, seq_len);
                cos.extend(cs);
                sin.extend(sn);
            }
        }
        let k = &self.k;
        let st = self.storage();
        let d_ids = k.upload(&ids)?;
        let d_slots = k.upload(&slots)?;
        let d_queries = k.upload_queries(&queries)?;
        let (d_cos, d_sin) = (k.upload(&cos)?, k.upload(&sin)?);
        let mut sc = match self.scratch.take() {
            Some(sc) if sc.tokens >= t => sc,
            // The old activations (dropped by the take) are freed before the new ones
            // are made; rounded up to a multiple of SCRATCH_STEP tokens so prefill
            // chunks of varying length do not regrow them each step.
            _ => Scratch::new(k, c, t.div_ceil(SCRATCH_STEP) * SCRATCH_STEP)?,
        };
        let Scratch { x, xn, q, k: kk, v: vv, attn, proj, gate_up, act, .. } = &mut sc;
        k.embedding(st, &self.embed, &d_ids, x, h)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            self.norm(x, &layer.input_norm, xn, t)?;
            self.gemm(&layer.q, xn, t, q, 0, nh * hd)?;
            self.gemm(&layer.k, xn, t, kk, 0, nkv * hd)?;
            self.gemm(&layer.v, xn, t, vv, 0, nkv * hd)?;
            k.rope(q, &d_cos, &d_sin, t, nh, hd)?;
            k.rope(kk, &d_cos, &d_sin, t, nkv, hd)?;
            let (kc, vc) = (&mut self.k_cache[li], &mut self.v_cache[li]);
            k.write_kv(st, kk, vv, &d_slots, kc, vc, t, nkv * hd)?;
            k.paged_attention(st, q, kc, vc, &d_queries, attn, nh, nkv, hd, bs, scale)?;
            k.to_storage(st, attn, xn, t * nh * hd)?;
            self.gemm(&layer.o, xn, t, proj, 0, h)?;
            k.add(x, proj, t * h)?;

            self.norm(x, &layer.post_norm, xn, t)?;
            self.gemm(&layer.gate_up, xn, t, gate_up, 0, 2 * inter)?;
            k.silu_mul(st, gate_up, act, t, inter)?;
            self.gemm(&layer.down, act, t, proj, 0, h)?;
            k.add(x, proj, t * h)?;
        }

        // Logits for the rows asked for, in one GEMM (as on the CPU).
        let (rows, counts) = crate::backend::logits_rows(seqs);
        let rows: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
        let vocab = c.vocab_size;
        let logits = if rows.is_empty() {
            Vec::new()
        } else {
            let r = rows.len();
            let mut sel = k.zeros::<f32>(r * h)?;
            k.gather_rows(&sc.x, &rows, &mut sel, h)?;
            let mut seln = k.zeros::<u16>(r * h)?;
            self.norm(&sel, &self.norm, &mut seln, r)?;
            let mut out = k.zeros::<f32>(r * vocab)?;
            self.gemm(&self.lm_head, &seln, r, &mut out, 0, vocab)?;
            k.download(&out)?
        };
        self.scratch = Some(sc);
        let mut out = Vec::with_capacity(seqs.len());
        let mut at = 0;
        for n in counts {
            out.push(if n == 0 {
                StepLogits::None
            } else {
                StepLogits::Dense(logits[at * vocab..(at + n) * vocab].to_vec())
            });
            at += n;
        }
        Ok(out)
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_context(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn kv_layout(&self) -> Option<KvBlockLayout> {
        Some(KvBlockLayout {
            num_layers: self.layers.len(),
            block_size: self.block_size,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
            dtype: self.dtype,
        })
    }

    fn export_kv_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.export_kv_blocks_into(blocks, &mut out)?;
        Ok(out)
    }

    fn export_kv_blocks_into(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<()> {
        let layout = self.kv_layout().ok_or_else(|| EngineError::KvTransfer("no layout".into()))?;
        check_block_ids(blocks, self.num_blocks)?;
        out.clear();
        if blocks.is_empty() {
            return Ok(());
        }
        // Every block of every layer packed on the device in the export layout (block by
        // block: each layer's K part, then its V part), then one copy back.
        let (part, layers) = (layout.part_len(), self.layers.len());
        let stride = layers * 2 * part;
        let ids = self.k.upload(blocks)?;
        let mut packed = self.k.zeros::<u16>(blocks.len() * stride)?;
        for (l, (kc, vc)) in self.k_cache.iter().zip(&self.v_cache).enumerate() {
            self.k.gather_blocks(kc, &ids, &mut packed, part, stride, 2 * l * part)?;
            self.k.gather_blocks(vc, &ids, &mut packed, part, stride, (2 * l + 1) * part)?;
        }
        // The device's bytes are the wire's (little-endian 16-bit values): straight in.
        out.resize(blocks.len() * layout.block_bytes(), 0);
        self.k.download_bytes(&packed, out)
    }

    fn import_kv_blocks(&mut self, blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        let ours = self.kv_layout().ok_or_else(|| EngineError::KvTransfer("no layout".into()))?;
        ours.check_import(layout, blocks.len(), data.len())?;
        check_block_ids(blocks, self.num_blocks)?;
        if blocks.is_empty() {
            return Ok(());
        }
        // The blocks are written in parallel: one named twice would get a mix of both.
        let mut seen = std::collections::HashSet::with_capacity(blocks.len());
        if let Some(b) = blocks.iter().find(|&&b| !seen.insert(b)) {
            return Err(EngineError::KvTransfer(format!("block {b} named twice in one import")));
        }
        let (part, layers) = (ours.part_len(), self.layers.len());
        let stride = layers * 2 * part;
        let packed = self.k.upload_bytes::<u16>(data)?;
        let ids = self.k.upload(blocks)?;
        for (l, (kc, vc)) in self.k_cache.iter_mut().zip(self.v_cache.iter_mut()).enumerate() {
            self.k.scatter_blocks(&packed, &ids, kc, part, stride, 2 * l * part)?;
            self.k.scatter_blocks(&packed, &ids, vc, part, stride, (2 * l + 1) * part)?;
        }
        self.k.synchronize()
    }
}
