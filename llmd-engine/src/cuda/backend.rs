//! [`CudaBackend`]: the Llama-family forward pass on one GPU, step for step the CPU
//! runner's (`model::llama`), over a paged KV cache in device memory.
//!
//! Weights and the KV cache are stored in f16 or bf16; activations and accumulation
//! stay in f32. Each projection is one cuBLAS GEMM over every token of the step
//! (`cublasGemmEx`: 16-bit inputs, f32 output and compute); the rest are the kernels of
//! `kernels.cu`. Exported KV blocks have the CPU cache's layout ([`KvBlockLayout`]), so
//! blocks move between CPU and GPU engines alike.

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{AttentionQueries, Kernels};
use crate::backend::{Backend, SeqInput, StepLogits};
use crate::error::{EngineError, Result};
use crate::kv::{KvBlockLayout, KvDtype, check_block_ids};
use crate::model::{Linear, LlamaModel, ModelConfig, Rope};

fn dev(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: {e}"))
}

/// A linear layer on the device: `[out, in]` weight in 16-bit, f32 bias.
struct DevLinear {
    w: CudaSlice<u16>,
    b: Option<CudaSlice<f32>>,
    out: usize,
    inp: usize,
}

/// The weights before the cache is allocated.
struct Weights {
    embed: CudaSlice<u16>,
    norm: CudaSlice<u16>,
    lm_head: DevLinear,
    layers: Vec<DevLayer>,
}

struct DevLayer {
    input_norm: CudaSlice<u16>,
    post_norm: CudaSlice<u16>,
    q: DevLinear,
    k: DevLinear,
    v: DevLinear,
    o: DevLinear,
    gate: DevLinear,
    up: DevLinear,
    down: DevLinear,
}

/// A Llama-family model on one NVIDIA GPU.
pub struct CudaBackend {
    k: Kernels,
    blas: CudaBlas,
    config: ModelConfig,
    rope: Rope,
    dtype: KvDtype,
    embed: CudaSlice<u16>,
    norm: CudaSlice<u16>,
    lm_head: DevLinear,
    layers: Vec<DevLayer>,
    k_cache: Vec<CudaSlice<u16>>,
    v_cache: Vec<CudaSlice<u16>>,
    num_blocks: usize,
    block_size: usize,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", self.k.device())
            .field("dtype", &self.dtype)
            .field("blocks", &self.num_blocks)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// Copies `model` to GPU `ordinal` in `dtype` (f16 or bf16) with a KV cache of
    /// `num_blocks` blocks of `block_size` tokens.
    pub fn new(
        model: &LlamaModel,
        ordinal: usize,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDtype,
    ) -> Result<Self> {
        if dtype == KvDtype::F32 {
            return Err(EngineError::Device("the CUDA backend stores weights and KV in f16 or bf16".into()));
        }
        let k = Kernels::new(ordinal)?;
        let blas = blas(&k)?;
        let c = model.config().clone();
        let w = model.weights();
        let half = |x: &[f32]| -> Result<CudaSlice<u16>> { k.upload(&to_bits(x, dtype)) };
        let linear = |l: &Linear| -> Result<DevLinear> {
            Ok(DevLinear {
                w: half(l.weight())?,
                b: l.bias().map(|b| k.upload(b)).transpose()?,
                out: l.out_features(),
                inp: l.in_features(),
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
                gate: linear(l.gate)?,
                up: linear(l.up)?,
                down: linear(l.down)?,
            });
        }
        let embed = half(w.embed)?;
        let norm = half(w.norm)?;
        let lm_head = linear(w.lm_head)?;
        let weights = Weights { embed, norm, lm_head, layers };
        Self::assemble(k, blas, c, model.rope().clone(), dtype, weights, num_blocks, block_size)
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
        if dtype == KvDtype::F32 {
            return Err(EngineError::Device("the CUDA backend stores weights and KV in f16 or bf16".into()));
        }
        let k = Kernels::new(ordinal)?;
        let blas = blas(&k)?;
        let st = if dtype == KvDtype::BF16 { "bf16" } else { "f16" };
        let mut n = 0u64;
        let mut fill = |len: usize, offset: f32, scale: f32| -> Result<CudaSlice<u16>> {
            let mut out = k.zeros::<u16>(len)?;
            n += 1;
            let f = k.function(&format!("fill_uniform_{st}"))?;
            let (len64, s) = (len as u64, seed.wrapping_mul(1_000_003).wrapping_add(n));
            let mut l = k.stream().launch_builder(f);
            l.arg(&mut out).arg(&len64).arg(&s).arg(&offset).arg(&scale);
            // SAFETY: out holds len elements.
            unsafe { l.launch(LaunchConfig::for_num_elems(len.clamp(1, 1 << 24) as u32)) }.map_err(dev("fill"))?;
            Ok(out)
        };
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (qd, kvd, inter) = (c.num_attention_heads * hd, c.num_key_value_heads * hd, c.intermediate_size);
        // Uniform with the variance of a 1/sqrt(fan-in) init, norms near one.
        fn lin(
            fill: &mut impl FnMut(usize, f32, f32) -> Result<CudaSlice<u16>>,
            out: usize,
            inp: usize,
        ) -> Result<DevLinear> {
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
                gate: lin(&mut fill, inter, h)?,
                up: lin(&mut fill, inter, h)?,
                down: lin(&mut fill, h, inter)?,
            });
        }
        let lm_head = lin(&mut fill, c.vocab_size, h)?;
        let embed = fill(c.vocab_size * h, 0.0, 1.0)?;
        let norm = fill(h, 1.0, 0.1)?;
        let weights = Weights { embed, norm, lm_head, layers };
        Self::assemble(k, blas, c.clone(), Rope::new(c), dtype, weights, num_blocks, block_size)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        k: Kernels,
        blas: CudaBlas,
        config: ModelConfig,
        rope: Rope,
        dtype: KvDtype,
        w: Weights,
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
        tracing::info!(device = %k.device().name, ?dtype, num_blocks, block_size, "model on the GPU");
        Ok(CudaBackend {
            rope,
            blas,
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
            k,
        })
    }

    /// The kernels (for benchmarks that time one alone).
    pub fn kernels(&self) -> &Kernels {
        &self.k
    }

    /// Bytes `model`'s weights take on the GPU (16-bit, biases in f32).
    pub fn weight_bytes(model: &LlamaModel) -> usize {
        let w = model.weights();
        let lin = |l: &Linear| l.weight().len() * 2 + l.bias().map_or(0, |b| b.len() * 4);
        let layers: usize = w
            .layers
            .iter()
            .map(|l| {
                (l.input_norm.len() + l.post_norm.len()) * 2
                    + [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].into_iter().map(lin).sum::<usize>()
            })
            .sum();
        layers + (w.embed.len() + w.norm.len()) * 2 + lin(w.lm_head)
    }

    fn storage(&self) -> &'static str {
        if self.dtype == KvDtype::BF16 { "bf16" } else { "f16" }
    }

    fn data_type(&self) -> cudaDataType {
        if self.dtype == KvDtype::BF16 { cudaDataType::CUDA_R_16BF } else { cudaDataType::CUDA_R_16F }
    }

    /// `y[r, col..col + out] = x[r] · Wᵀ (+ b)` for `rows` rows; `y`'s rows are `ldy`
    /// wide (the gate and up projections share one buffer).
    fn gemm(
        &self,
        l: &DevLinear,
        x: &CudaSlice<u16>,
        rows: usize,
        y: &mut CudaSlice<f32>,
        col: usize,
        ldy: usize,
    ) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let stream = self.k.stream();
        let (alpha, beta) = (1.0f32, 0.0f32);
        let dt = self.data_type();
        {
            let (w_ptr, _w) = l.w.device_ptr(stream);
            let (x_ptr, _x) = x.device_ptr(stream);
            let (y_ptr, _y) = y.device_ptr_mut(stream);
            let y_ptr = y_ptr + (col * std::mem::size_of::<f32>()) as u64;
            // Column-major: Yᵀ (out × rows, leading dimension ldy) = W (stored as in ×
            // out, transposed) · Xᵀ (in × rows).
            // SAFETY: the pointers are live device allocations of the sizes the
            // dimensions name (weights out·in, x rows·in, y rows·ldy from col), on the
            // stream the handle uses; alpha and beta are host scalars (the default
            // pointer mode).
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    l.out as i32,
                    rows as i32,
                    l.inp as i32,
                    (&alpha as *const f32).cast(),
                    w_ptr as *const _,
                    dt,
                    l.inp as i32,
                    x_ptr as *const _,
                    dt,
                    l.inp as i32,
                    (&beta as *const f32).cast(),
                    y_ptr as *mut _,
                    cudaDataType::CUDA_R_32F,
                    ldy as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| EngineError::Device(format!("cuBLAS GEMM: {e}")))?;
        }
        if let Some(b) = &l.b {
            self.add_bias(y, b, rows, l.out, col, ldy)?;
        }
        Ok(())
    }

    fn add_bias(
        &self,
        y: &mut CudaSlice<f32>,
        b: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        col: usize,
        ldy: usize,
    ) -> Result<()> {
        let f = self.k.function("add_bias_f32")?;
        let (n, c, col, ldy) = (rows as u64, cols as i32, col as i32, ldy as i32);
        let mut l = self.k.stream().launch_builder(f);
        l.arg(y).arg(b).arg(&n).arg(&c).arg(&col).arg(&ldy);
        // SAFETY: y holds rows * ldy floats (col + cols <= ldy), b cols.
        unsafe { l.launch(LaunchConfig::for_num_elems((rows * cols) as u32)) }.map_err(dev("add_bias"))?;
        Ok(())
    }

    fn launch_rows(rows: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    /// RMSNorm of `rows` rows of `x` into the 16-bit GEMM input `out`.
    fn norm(&self, x: &CudaSlice<f32>, w: &CudaSlice<u16>, out: &mut CudaSlice<u16>, rows: usize) -> Result<()> {
        let f = self.k.function(&format!("rms_norm_{}", self.storage()))?;
        let (h, eps) = (self.config.hidden_size as i32, self.config.rms_norm_eps as f32);
        let mut l = self.k.stream().launch_builder(f);
        l.arg(x).arg(w).arg(out).arg(&h).arg(&eps);
        // SAFETY: x and out hold rows * hidden, w hidden.
        unsafe { l.launch(Self::launch_rows(rows)) }.map_err(dev("rms_norm"))?;
        Ok(())
    }

    fn add(&self, x: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
        let f = self.k.function("add_f32")?;
        let n64 = n as u64;
        let mut l = self.k.stream().launch_builder(f);
        l.arg(x).arg(y).arg(&n64);
        // SAFETY: both hold n floats.
        unsafe { l.launch(LaunchConfig::for_num_elems(n.max(1) as u32)) }.map_err(dev("add"))?;
        Ok(())
    }

    fn to_storage(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<u16>, n: usize) -> Result<()> {
        let f = self.k.function(&format!("to_storage_{}", self.storage()))?;
        let n64 = n as u64;
        let mut l = self.k.stream().launch_builder(f);
        l.arg(x).arg(out).arg(&n64);
        // SAFETY: both hold n elements.
        unsafe { l.launch(LaunchConfig::for_num_elems(n.max(1) as u32)) }.map_err(dev("to_storage"))?;
        Ok(())
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

/// cuBLAS on the kernels' stream; a clear error, not cudarc's panic, when the library
/// cannot be loaded.
fn blas(k: &Kernels) -> Result<CudaBlas> {
    // SAFETY: only tries to open the library by its names (dlopen).
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(EngineError::Device(
            "cuBLAS not found (libcublas.so could not be loaded): install the CUDA toolkit's or pip's \
             nvidia-cublas-cu12, and put its lib directory on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    CudaBlas::new(k.stream().clone()).map_err(|e| EngineError::Device(format!("cuBLAS: {e}")))
}

/// f32 values as f16 or bf16 bits.
fn to_bits(x: &[f32], dtype: KvDtype) -> Vec<u16> {
    match dtype {
        KvDtype::BF16 => x.iter().map(|v| half::bf16::from_f32(*v).to_bits()).collect(),
        _ => x.iter().map(|v| half::f16::from_f32(*v).to_bits()).collect(),
    }
}

impl Backend for CudaBackend {
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
        let mut x = k.zeros::<f32>(t * h)?;
        {
            let f = k.function(&format!("embedding_{st}"))?;
            let hh = h as i32;
            let mut l = k.stream().launch_builder(f);
            l.arg(&self.embed).arg(&d_ids).arg(&mut x).arg(&hh);
            // SAFETY: ids are below the vocabulary (checked), x holds t * hidden.
            unsafe { l.launch(Self::launch_rows(t)) }.map_err(dev("embedding"))?;
        }
        let mut xn = k.zeros::<u16>(t * h.max(nh * hd))?;
        let mut q = k.zeros::<f32>(t * nh * hd)?;
        let mut kk = k.zeros::<f32>(t * nkv * hd)?;
        let mut vv = k.zeros::<f32>(t * nkv * hd)?;
        let mut attn = k.zeros::<f32>(t * nh * hd)?;
        let mut proj = k.zeros::<f32>(t * h)?;
        let mut gate_up = k.zeros::<f32>(t * 2 * inter)?;
        let mut act = k.zeros::<u16>(t * inter)?;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            self.norm(&x, &layer.input_norm, &mut xn, t)?;
            self.gemm(&layer.q, &xn, t, &mut q, 0, nh * hd)?;
            self.gemm(&layer.k, &xn, t, &mut kk, 0, nkv * hd)?;
            self.gemm(&layer.v, &xn, t, &mut vv, 0, nkv * hd)?;
            k.rope(&mut q, &d_cos, &d_sin, t, nh, hd)?;
            k.rope(&mut kk, &d_cos, &d_sin, t, nkv, hd)?;
            let (kc, vc) = (&mut self.k_cache[li], &mut self.v_cache[li]);
            k.write_kv(st, &kk, &vv, &d_slots, kc, vc, t, nkv * hd)?;
            k.paged_attention(st, &q, kc, vc, &d_queries, &mut attn, nh, nkv, hd, bs, scale)?;
            self.to_storage(&attn, &mut xn, t * nh * hd)?;
            self.gemm(&layer.o, &xn, t, &mut proj, 0, h)?;
            self.add(&mut x, &proj, t * h)?;

            self.norm(&x, &layer.post_norm, &mut xn, t)?;
            self.gemm(&layer.gate, &xn, t, &mut gate_up, 0, 2 * inter)?;
            self.gemm(&layer.up, &xn, t, &mut gate_up, inter, 2 * inter)?;
            {
                let f = k.function(&format!("silu_mul_{st}"))?;
                let (tt, ii) = (t as i32, inter as i32);
                let mut l = k.stream().launch_builder(f);
                l.arg(&gate_up).arg(&mut act).arg(&tt).arg(&ii);
                // SAFETY: gate_up holds t * 2 * inter, act t * inter.
                unsafe { l.launch(LaunchConfig::for_num_elems((t * inter).max(1) as u32)) }.map_err(dev("silu_mul"))?;
            }
            self.gemm(&layer.down, &act, t, &mut proj, 0, h)?;
            self.add(&mut x, &proj, t * h)?;
        }

        // Logits for the rows asked for, in one GEMM (as on the CPU).
        let (rows, counts) = crate::backend::logits_rows(seqs);
        let rows: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
        let vocab = c.vocab_size;
        let logits = if rows.is_empty() {
            Vec::new()
        } else {
            let r = rows.len();
            let d_rows = k.upload(&rows)?;
            let mut sel = k.zeros::<f32>(r * h)?;
            {
                let f = k.function("gather_rows_f32")?;
                let hh = h as i32;
                let mut l = k.stream().launch_builder(f);
                l.arg(&x).arg(&d_rows).arg(&mut sel).arg(&hh);
                // SAFETY: every row index is below t; sel holds r * hidden.
                unsafe { l.launch(Self::launch_rows(r)) }.map_err(dev("gather_rows"))?;
            }
            let mut seln = k.zeros::<u16>(r * h)?;
            self.norm(&sel, &self.norm, &mut seln, r)?;
            let mut out = k.zeros::<f32>(r * vocab)?;
            self.gemm(&self.lm_head, &seln, r, &mut out, 0, vocab)?;
            k.download(&out)?
        };
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
        let part = layout.part_len();
        out.clear();
        out.reserve(blocks.len() * layout.block_bytes());
        let mut host = vec![0u16; part];
        for &b in blocks {
            let range = b as usize * part..(b as usize + 1) * part;
            for (kc, vc) in self.k_cache.iter().zip(&self.v_cache) {
                for buf in [kc, vc] {
                    self.k.stream().memcpy_dtoh(&buf.slice(range.clone()), &mut host).map_err(dev("exporting KV"))?;
                    // Sized once, then filled in fixed chunks (a plain copy once compiled,
                    // as the CPU cache's export).
                    let start = out.len();
                    out.resize(start + host.len() * 2, 0);
                    for (d, v) in out[start..].chunks_exact_mut(2).zip(&host) {
                        d.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
        self.k.synchronize()
    }

    fn import_kv_blocks(&mut self, blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        let ours = self.kv_layout().ok_or_else(|| EngineError::KvTransfer("no layout".into()))?;
        ours.check_import(layout, blocks.len(), data.len())?;
        check_block_ids(blocks, self.num_blocks)?;
        let part = ours.part_len();
        let mut chunks = data.chunks_exact(part * ours.dtype.size());
        let stream = self.k.stream().clone();
        for &b in blocks {
            let range = b as usize * part..(b as usize + 1) * part;
            for (kc, vc) in self.k_cache.iter_mut().zip(self.v_cache.iter_mut()) {
                for buf in [kc, vc] {
                    let bytes = chunks.next().unwrap_or_default();
                    let host: Vec<u16> = bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]])).collect();
                    stream.memcpy_htod(&host, &mut buf.slice_mut(range.clone())).map_err(dev("importing KV"))?;
                }
            }
        }
        self.k.synchronize()
    }
}
