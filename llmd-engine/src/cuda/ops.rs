//! The kernels loaded on one device, with typed launches. The forward pass is built
//! from these; each is tested against its CPU counterpart on a GPU.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::{DeviceInfo, compile, kernel_names, probe};
use crate::error::{EngineError, Result};

fn err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: {e}"))
}

/// Threads per block for per-row kernels.
const ROW_THREADS: u32 = 256;
/// Threads per block of the attention kernel (its ATTN_THREADS).
const ATTN_THREADS: u32 = 128;

/// One device's context, stream and compiled kernels.
pub struct Kernels {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("device", &self.info).field("kernels", &self.functions.len()).finish()
    }
}

/// Where each query token of a [`Kernels::paged_attention`] call sits.
#[derive(Debug, Clone, Default)]
pub struct AttentionQueries {
    /// Every query's block table, one after another.
    pub tables: Vec<u32>,
    /// Where each query's table starts in `tables`.
    pub table_start: Vec<u32>,
    /// Each query's position.
    pub pos: Vec<u32>,
    /// Each query's first visible position.
    pub window_start: Vec<u32>,
}

/// [`AttentionQueries`] on the device ([`Kernels::upload_queries`]).
pub struct DeviceQueries {
    tables: CudaSlice<u32>,
    starts: CudaSlice<u32>,
    pos: CudaSlice<u32>,
    window: CudaSlice<u32>,
    n: usize,
}

impl std::fmt::Debug for DeviceQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceQueries").field("queries", &self.n).finish_non_exhaustive()
    }
}

impl Kernels {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn new(ordinal: usize) -> Result<Self> {
        let info = probe(ordinal)?;
        let ptx = compile(&info.arch())?;
        let ctx = CudaContext::new(ordinal).map_err(err("opening the device"))?;
        let stream = ctx.default_stream();
        let module = ctx.load_module(ptx).map_err(err("loading the kernels"))?;
        let mut functions = HashMap::new();
        for name in kernel_names() {
            let f = module.load_function(&name).map_err(err("loading a kernel"))?;
            functions.insert(name, f);
        }
        Ok(Kernels { info, ctx, stream, _module: module, functions })
    }

    /// The device.
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| EngineError::Device(format!("no kernel {name}")))
    }

    /// Copies `data` to the device.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).map_err(err("copying to the device"))
    }

    /// Copies `data` back.
    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(&self, data: &CudaSlice<T>) -> Result<Vec<T>> {
        self.stream.clone_dtoh(data).map_err(err("copying from the device"))
    }

    /// `n` zeroed values on the device.
    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros(n.max(1)).map_err(err("allocating device memory"))
    }

    fn rows(rows: usize) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.max(1) as u32, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// `out[t] = x[t] / rms(x[t]) * weight` for `rows` rows of `hidden` (f32 weights and output).
    pub fn rms_norm_f32(
        &self,
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        let f = self.function("rms_norm_f32_out_f32")?;
        let hidden = hidden as i32;
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(weight).arg(out).arg(&hidden).arg(&eps);
        // SAFETY: the argument list matches the kernel's signature, and the slices hold
        // `rows * hidden` floats (`hidden` for the weight).
        unsafe { b.launch(Self::rows(rows)) }.map_err(err("rms_norm"))?;
        Ok(())
    }

    /// Rotates `heads` heads of `head_dim` of each of `rows` rows in place with per-row
    /// `cos`/`sin` tables (`head_dim / 2` each).
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        rows: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        let f = self.function("rope_f32")?;
        let (heads, head_dim) = (heads as i32, head_dim as i32);
        let mut b = self.stream.launch_builder(f);
        b.arg(x).arg(cos).arg(sin).arg(&heads).arg(&head_dim);
        // SAFETY: as above; `x` holds rows * heads * head_dim floats, the tables rows *
        // head_dim / 2.
        unsafe { b.launch(Self::rows(rows)) }.map_err(err("rope"))?;
        Ok(())
    }

    /// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`.
    pub fn silu_mul_f32(
        &self,
        gate_up: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        tokens: usize,
        inter: usize,
    ) -> Result<()> {
        let f = self.function("silu_mul_f32")?;
        let (t, i) = (tokens as i32, inter as i32);
        let mut b = self.stream.launch_builder(f);
        b.arg(gate_up).arg(out).arg(&t).arg(&i);
        let cfg = LaunchConfig::for_num_elems((tokens * inter).max(1) as u32);
        // SAFETY: as above; gate_up holds tokens * 2 * inter floats, out tokens * inter.
        unsafe { b.launch(cfg) }.map_err(err("silu_mul"))?;
        Ok(())
    }

    /// Stores each token's keys and values (f32, `slot_len` each) at its slot of a
    /// cache whose elements are `T` (`f32`, or `u16` holding f16 / bf16 bits with the
    /// matching `storage` name).
    #[allow(clippy::too_many_arguments)]
    pub fn write_kv<T: cudarc::driver::DeviceRepr>(
        &self,
        storage: &str,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        slots: &CudaSlice<u32>,
        k_cache: &mut CudaSlice<T>,
        v_cache: &mut CudaSlice<T>,
        tokens: usize,
        slot_len: usize,
    ) -> Result<()> {
        let f = self.function(&format!("write_kv_{storage}"))?;
        let sl = slot_len as i32;
        let mut b = self.stream.launch_builder(f);
        b.arg(k).arg(v).arg(slots).arg(k_cache).arg(v_cache).arg(&sl);
        // SAFETY: as above; every slot is inside the cache (the engine's block tables).
        unsafe { b.launch(Self::rows(tokens)) }.map_err(err("write_kv"))?;
        Ok(())
    }

    /// `queries` on the device, once per step (every layer's attention reads them).
    pub fn upload_queries(&self, queries: &AttentionQueries) -> Result<DeviceQueries> {
        Ok(DeviceQueries {
            tables: self.upload(&queries.tables)?,
            starts: self.upload(&queries.table_start)?,
            pos: self.upload(&queries.pos)?,
            window: self.upload(&queries.window_start)?,
            n: queries.pos.len(),
        })
    }

    /// Paged attention of `q` ([queries, heads, head_dim] f32, RoPE applied) over a
    /// layer's cache; `out` gets [queries, heads, head_dim].
    #[allow(clippy::too_many_arguments)]
    pub fn paged_attention<T: cudarc::driver::DeviceRepr>(
        &self,
        storage: &str,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<T>,
        v_cache: &CudaSlice<T>,
        queries: &DeviceQueries,
        out: &mut CudaSlice<f32>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        scale: f32,
    ) -> Result<()> {
        if queries.n == 0 {
            return Ok(());
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(EngineError::Device(format!("{heads} query heads over {kv_heads} key/value heads")));
        }
        if head_dim > ATTN_THREADS as usize * 4 {
            return Err(EngineError::Device(format!("head_dim {head_dim} is larger than the attention kernel's 512")));
        }
        let f = self.function(&format!("paged_attention_{storage}"))?;
        let ints = [heads, kv_heads, head_dim, block_size].map(|v| v as i32);
        let mut b = self.stream.launch_builder(f);
        b.arg(q).arg(k_cache).arg(v_cache).arg(&queries.tables).arg(&queries.starts).arg(&queries.pos);
        b.arg(&queries.window).arg(out);
        for v in &ints {
            b.arg(v);
        }
        b.arg(&scale);
        let cfg = LaunchConfig {
            grid_dim: ((queries.n * heads) as u32, 1, 1),
            block_dim: (ATTN_THREADS, 1, 1),
            shared_mem_bytes: (head_dim * std::mem::size_of::<f32>()) as u32,
        };
        // SAFETY: as above; the tables name blocks inside the cache, and the dynamic
        // shared memory holds one query row.
        unsafe { b.launch(cfg) }.map_err(err("paged_attention"))?;
        Ok(())
    }

    /// Fills `out` (`storage` f16 or bf16 bits, or f32) with `offset + scale * u`, `u`
    /// uniform in [-1, 1) from `seed`.
    pub fn fill_uniform<T: cudarc::driver::DeviceRepr>(
        &self,
        storage: &str,
        out: &mut CudaSlice<T>,
        seed: u64,
        offset: f32,
        scale: f32,
    ) -> Result<()> {
        let f = self.function(&format!("fill_uniform_{storage}"))?;
        let n = out.len() as u64;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut *out).arg(&n).arg(&seed).arg(&offset).arg(&scale);
        // SAFETY: the kernel writes n elements of out's type.
        unsafe { b.launch(LaunchConfig::for_num_elems(n.clamp(1, 1 << 24) as u32)) }.map_err(err("fill_uniform"))?;
        Ok(())
    }

    /// Waits for everything launched so far.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("waiting for the device"))
    }
}
