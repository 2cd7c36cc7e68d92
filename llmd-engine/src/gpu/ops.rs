//! The kernels on one device, with typed launches: the forward pass is built from these,
//! and each is tested against its CPU counterpart on a GPU.

use super::buffer::{bytes, bytes_mut};
use super::{Arg, DeviceBuffer, DeviceInfo, Elem, Gemm, GpuApi, Launch};
use crate::error::{EngineError, Result};

/// Threads per block of the per-row kernels (a multiple of every warp width).
const ROW_THREADS: u32 = 256;
/// Threads per block of the elementwise kernels, which stride over the grid.
const ELEM_THREADS: u32 = 256;
/// The most blocks an elementwise launch uses (the kernels stride past it).
const MAX_ELEM_BLOCKS: usize = 1 << 16;
/// Threads per block of the attention kernel (its ATTN_THREADS).
const ATTN_THREADS: u32 = 128;
/// The largest head_dim the attention kernel takes (ATTN_THREADS * MAX_DIMS_PER_THREAD).
const MAX_HEAD_DIM: usize = 512;

/// A device with the kernels loaded.
pub struct Kernels<A: GpuApi> {
    api: A,
}

impl<A: GpuApi> std::fmt::Debug for Kernels<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("vendor", &A::VENDOR).field("device", self.api.info()).finish()
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
pub struct DeviceQueries<A: GpuApi> {
    tables: DeviceBuffer<u32, A>,
    starts: DeviceBuffer<u32, A>,
    pos: DeviceBuffer<u32, A>,
    window: DeviceBuffer<u32, A>,
    n: usize,
}

impl<A: GpuApi> std::fmt::Debug for DeviceQueries<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceQueries").field("queries", &self.n).finish_non_exhaustive()
    }
}

/// One block per row; no blocks (nothing launched) for no rows.
fn rows(rows: usize) -> Launch {
    Launch { grid: rows as u32, block: ROW_THREADS, shared: 0 }
}

/// Enough blocks for `n` values, at most MAX_ELEM_BLOCKS (the kernels stride); none for
/// no values.
fn elementwise(n: usize) -> Launch {
    Launch { grid: n.div_ceil(ELEM_THREADS as usize).min(MAX_ELEM_BLOCKS) as u32, block: ELEM_THREADS, shared: 0 }
}

/// The kernels' storage suffix must name `T`'s width: f32 in 4 bytes, f16 and bf16 bits
/// in 2.
fn check_storage<T: Elem>(storage: &str) -> Result<()> {
    let width = match storage {
        "f32" => 4,
        "f16" | "bf16" => 2,
        other => return Err(EngineError::Device(format!("no storage type {other:?} (f32, f16 or bf16)"))),
    };
    if std::mem::size_of::<T>() != width {
        return Err(EngineError::Device(format!(
            "{storage} values are {width} bytes, the buffer's {}",
            std::mem::size_of::<T>()
        )));
    }
    Ok(())
}

fn int(v: usize, what: &str) -> Result<Arg> {
    i32::try_from(v).map(Arg::I32).map_err(|_| EngineError::Device(format!("{what} {v} is too large for a kernel")))
}

impl<A: GpuApi> Kernels<A> {
    /// Opens device `ordinal` and compiles the kernels for it.
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(Kernels { api: A::open(ordinal)? })
    }

    /// The device.
    pub fn device(&self) -> &DeviceInfo {
        self.api.info()
    }

    /// The vendor runtime underneath.
    pub fn api(&self) -> &A {
        &self.api
    }

    /// `n` zeroed values on the device (at least one is allocated).
    pub fn zeros<T: Elem>(&self, n: usize) -> Result<DeviceBuffer<T, A>> {
        let (ptr, mem) = self.api.alloc_zeroed(n.max(1) * std::mem::size_of::<T>())?;
        Ok(DeviceBuffer::new(ptr, n, mem))
    }

    /// Copies `data` to a new buffer.
    pub fn upload<T: Elem>(&self, data: &[T]) -> Result<DeviceBuffer<T, A>> {
        let buf = self.zeros::<T>(data.len())?;
        // SAFETY: buf holds data.len() values.
        unsafe { self.api.upload(bytes(data), buf.ptr())? };
        Ok(buf)
    }

    /// Copies `data` into `buf` from value `at`.
    pub fn upload_into<T: Elem>(&self, data: &[T], buf: &mut DeviceBuffer<T, A>, at: usize) -> Result<()> {
        if at + data.len() > buf.len() {
            return Err(EngineError::Device(format!(
                "copying {} values at {at} into a buffer of {}",
                data.len(),
                buf.len()
            )));
        }
        // SAFETY: the values from `at` on hold data (checked above).
        unsafe { self.api.upload(bytes(data), buf.ptr_at(at)) }
    }

    /// Copies `buf` back.
    pub fn download<T: Elem>(&self, buf: &DeviceBuffer<T, A>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); buf.len()];
        // SAFETY: buf holds out.len() values.
        unsafe { self.api.download(buf.ptr(), bytes_mut(&mut out))? };
        Ok(out)
    }

    /// Copies `out.len()` values of `buf` from value `at` into `out`.
    pub fn download_from<T: Elem>(&self, buf: &DeviceBuffer<T, A>, at: usize, out: &mut [T]) -> Result<()> {
        if at + out.len() > buf.len() {
            return Err(EngineError::Device(format!(
                "copying {} values at {at} out of a buffer of {}",
                out.len(),
                buf.len()
            )));
        }
        // SAFETY: the values from `at` on cover out (checked above).
        unsafe { self.api.download(buf.ptr_at(at), bytes_mut(out)) }
    }

    /// A new buffer of `T` holding `bytes` as the device lays them out (little-endian on
    /// every GPU llmd runs on): wire data straight in, no host conversion.
    pub fn upload_bytes<T: Elem>(&self, bytes: &[u8]) -> Result<DeviceBuffer<T, A>> {
        let size = std::mem::size_of::<T>();
        if !bytes.len().is_multiple_of(size) {
            return Err(EngineError::Device(format!("{} bytes are not whole {size}-byte values", bytes.len())));
        }
        let buf = self.zeros::<T>(bytes.len() / size)?;
        // SAFETY: buf holds bytes.len() bytes.
        unsafe { self.api.upload(bytes, buf.ptr())? };
        Ok(buf)
    }

    /// `buf`'s bytes as the device lays them out, into `out` (exactly its length).
    pub fn download_bytes<T: Elem>(&self, buf: &DeviceBuffer<T, A>, out: &mut [u8]) -> Result<()> {
        if out.len() != buf.byte_len() {
            return Err(EngineError::Device(format!("{} bytes into a buffer of {}", buf.byte_len(), out.len())));
        }
        // SAFETY: buf holds out.len() bytes (checked).
        unsafe { self.api.download(buf.ptr(), out) }
    }

    /// Copies `src` into `dst` on the device (the shorter one's length).
    pub fn copy<T: Elem>(&self, src: &DeviceBuffer<T, A>, dst: &mut DeviceBuffer<T, A>) -> Result<()> {
        // SAFETY: both hold at least the shorter one's bytes.
        unsafe { self.api.copy(src.ptr(), dst.ptr(), src.byte_len().min(dst.byte_len())) }
    }

    /// Waits for everything launched so far.
    pub fn synchronize(&self) -> Result<()> {
        self.api.synchronize()
    }

    /// # Safety
    /// As [`GpuApi::launch`]. A launch of no blocks does nothing.
    unsafe fn launch(&self, name: &str, at: Launch, args: &[Arg]) -> Result<()> {
        if at.grid == 0 {
            return Ok(());
        }
        // SAFETY: passed on to the caller.
        unsafe { self.api.launch(name, at, args) }
    }

    fn check_len<T: Elem>(buf: &DeviceBuffer<T, A>, need: usize, what: &str) -> Result<()> {
        if buf.len() < need {
            return Err(EngineError::Device(format!("{what}: {} values where {need} are needed", buf.len())));
        }
        Ok(())
    }

    /// `out[t] = table[ids[t]]` (rows of `hidden`), f32 out; `storage` names `T`.
    pub fn embedding<T: Elem>(
        &self,
        storage: &str,
        table: &DeviceBuffer<T, A>,
        ids: &DeviceBuffer<u32, A>,
        out: &mut DeviceBuffer<f32, A>,
        hidden: usize,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        Self::check_len(out, ids.len() * hidden, "embedding")?;
        let args = [Arg::Ptr(table.ptr()), Arg::Ptr(ids.ptr()), Arg::Ptr(out.ptr()), int(hidden, "hidden")?];
        // SAFETY: the arguments match embedding_T's signature; out holds ids * hidden
        // values, and every id is inside the table (the caller checks ids against the
        // vocabulary).
        unsafe { self.launch(&format!("embedding_{storage}"), rows(ids.len()), &args) }
    }

    /// RMSNorm of `rows` rows of `hidden` into `out`, whose element (the next GEMM's
    /// input) is the weight's `T`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm<T: Elem>(
        &self,
        storage: &str,
        x: &DeviceBuffer<f32, A>,
        weight: &DeviceBuffer<T, A>,
        out: &mut DeviceBuffer<T, A>,
        n_rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        Self::check_len(x, n_rows * hidden, "rms_norm input")?;
        Self::check_len(out, n_rows * hidden, "rms_norm output")?;
        Self::check_len(weight, hidden, "rms_norm weight")?;
        let args =
            [Arg::Ptr(x.ptr()), Arg::Ptr(weight.ptr()), Arg::Ptr(out.ptr()), int(hidden, "hidden")?, Arg::F32(eps)];
        // SAFETY: matches rms_norm_T; lengths checked above.
        unsafe { self.launch(&format!("rms_norm_{storage}"), rows(n_rows), &args) }
    }

    /// `out[t] = x[t] / rms(x[t]) * weight` for `rows` rows of `hidden` (f32 weights and output).
    pub fn rms_norm_f32(
        &self,
        x: &DeviceBuffer<f32, A>,
        weight: &DeviceBuffer<f32, A>,
        out: &mut DeviceBuffer<f32, A>,
        n_rows: usize,
        hidden: usize,
        eps: f32,
    ) -> Result<()> {
        Self::check_len(x, n_rows * hidden, "rms_norm input")?;
        Self::check_len(out, n_rows * hidden, "rms_norm output")?;
        Self::check_len(weight, hidden, "rms_norm weight")?;
        let args =
            [Arg::Ptr(x.ptr()), Arg::Ptr(weight.ptr()), Arg::Ptr(out.ptr()), int(hidden, "hidden")?, Arg::F32(eps)];
        // SAFETY: matches rms_norm_f32_out_f32; lengths checked above.
        unsafe { self.launch("rms_norm_f32_out_f32", rows(n_rows), &args) }
    }

    /// Rotates `heads` heads of `head_dim` of each of `rows` rows in place with per-row
    /// `cos`/`sin` tables (`head_dim / 2` each).
    pub fn rope(
        &self,
        x: &mut DeviceBuffer<f32, A>,
        cos: &DeviceBuffer<f32, A>,
        sin: &DeviceBuffer<f32, A>,
        n_rows: usize,
        heads: usize,
        head_dim: usize,
    ) -> Result<()> {
        Self::check_len(x, n_rows * heads * head_dim, "rope input")?;
        Self::check_len(cos, n_rows * head_dim / 2, "rope cos")?;
        Self::check_len(sin, n_rows * head_dim / 2, "rope sin")?;
        let args = [
            Arg::Ptr(x.ptr()),
            Arg::Ptr(cos.ptr()),
            Arg::Ptr(sin.ptr()),
            int(heads, "heads")?,
            int(head_dim, "head_dim")?,
        ];
        // SAFETY: matches rope_f32; lengths checked above.
        unsafe { self.launch("rope_f32", rows(n_rows), &args) }
    }

    /// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`; `out`'s element is `storage`'s.
    pub fn silu_mul<T: Elem>(
        &self,
        storage: &str,
        gate_up: &DeviceBuffer<f32, A>,
        out: &mut DeviceBuffer<T, A>,
        tokens: usize,
        inter: usize,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        Self::check_len(gate_up, tokens * 2 * inter, "silu_mul input")?;
        Self::check_len(out, tokens * inter, "silu_mul output")?;
        let args =
            [Arg::Ptr(gate_up.ptr()), Arg::Ptr(out.ptr()), int(tokens, "tokens")?, int(inter, "intermediate size")?];
        // SAFETY: matches silu_mul_T; lengths checked above.
        unsafe { self.launch(&format!("silu_mul_{storage}"), elementwise(tokens * inter), &args) }
    }

    /// [`Kernels::silu_mul`] with an f32 output.
    pub fn silu_mul_f32(
        &self,
        gate_up: &DeviceBuffer<f32, A>,
        out: &mut DeviceBuffer<f32, A>,
        tokens: usize,
        inter: usize,
    ) -> Result<()> {
        self.silu_mul("f32", gate_up, out, tokens, inter)
    }

    /// `x += y` over `n` values.
    pub fn add(&self, x: &mut DeviceBuffer<f32, A>, y: &DeviceBuffer<f32, A>, n: usize) -> Result<()> {
        Self::check_len(x, n, "add")?;
        Self::check_len(y, n, "add")?;
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(y.ptr()), Arg::U64(n as u64)];
        // SAFETY: matches add_f32; lengths checked above.
        unsafe { self.launch("add_f32", elementwise(n), &args) }
    }

    /// `y[r, col..col + cols] += bias` for `rows` rows `ldy` wide.
    pub fn add_bias(
        &self,
        y: &mut DeviceBuffer<f32, A>,
        bias: &DeviceBuffer<f32, A>,
        n_rows: usize,
        cols: usize,
        col: usize,
        ldy: usize,
    ) -> Result<()> {
        if col + cols > ldy {
            return Err(EngineError::Device(format!("a bias of {cols} at column {col} of rows {ldy} wide")));
        }
        Self::check_len(y, n_rows * ldy, "add_bias output")?;
        Self::check_len(bias, cols, "add_bias bias")?;
        let args = [
            Arg::Ptr(y.ptr()),
            Arg::Ptr(bias.ptr()),
            Arg::U64(n_rows as u64),
            int(cols, "columns")?,
            int(col, "column")?,
            int(ldy, "row width")?,
        ];
        // SAFETY: matches add_bias_f32; lengths checked above.
        unsafe { self.launch("add_bias_f32", elementwise(n_rows * cols), &args) }
    }

    /// f32 values to `storage` (the next GEMM's input) over `n` values.
    pub fn to_storage<T: Elem>(
        &self,
        storage: &str,
        x: &DeviceBuffer<f32, A>,
        out: &mut DeviceBuffer<T, A>,
        n: usize,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        Self::check_len(x, n, "to_storage input")?;
        Self::check_len(out, n, "to_storage output")?;
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(out.ptr()), Arg::U64(n as u64)];
        // SAFETY: matches to_storage_T; lengths checked above.
        unsafe { self.launch(&format!("to_storage_{storage}"), elementwise(n), &args) }
    }

    /// `out[i] = x[rows[i]]` (rows of `hidden`).
    pub fn gather_rows(
        &self,
        x: &DeviceBuffer<f32, A>,
        row_ids: &[u32],
        out: &mut DeviceBuffer<f32, A>,
        hidden: usize,
    ) -> Result<()> {
        if let Some(r) = row_ids.iter().find(|&&r| (r as usize + 1) * hidden > x.len()) {
            return Err(EngineError::Device(format!("row {r} is outside the activations")));
        }
        Self::check_len(out, row_ids.len() * hidden, "gather_rows output")?;
        let d_rows = self.upload(row_ids)?;
        let args = [Arg::Ptr(x.ptr()), Arg::Ptr(d_rows.ptr()), Arg::Ptr(out.ptr()), int(hidden, "hidden")?];
        // SAFETY: matches gather_rows_f32; every row is inside x (checked), out holds
        // rows * hidden. d_rows is freed after the launch in stream order.
        unsafe { self.launch("gather_rows_f32", rows(row_ids.len()), &args) }
    }

    /// Packs whole blocks of a 16-bit cache (`part` values each) into `packed`: block
    /// `blocks[i]` lands at `packed[i * stride + offset..][..part]` (the export layout,
    /// one layer's K or V at a time).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_blocks(
        &self,
        cache: &DeviceBuffer<u16, A>,
        blocks: &DeviceBuffer<u32, A>,
        packed: &mut DeviceBuffer<u16, A>,
        part: usize,
        stride: usize,
        offset: usize,
    ) -> Result<()> {
        self.blocks_op("gather_blocks_u16", cache, blocks, packed, part, stride, offset)
    }

    /// The inverse of [`Kernels::gather_blocks`]: `packed`'s blocks into the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn scatter_blocks(
        &self,
        packed: &DeviceBuffer<u16, A>,
        blocks: &DeviceBuffer<u32, A>,
        cache: &mut DeviceBuffer<u16, A>,
        part: usize,
        stride: usize,
        offset: usize,
    ) -> Result<()> {
        self.blocks_op("scatter_blocks_u16", cache, blocks, packed, part, stride, offset)
    }

    /// Checks and launches a block gather or scatter; the block ids themselves are
    /// checked by the caller against the cache's blocks.
    #[allow(clippy::too_many_arguments)]
    fn blocks_op(
        &self,
        name: &str,
        cache: &DeviceBuffer<u16, A>,
        blocks: &DeviceBuffer<u32, A>,
        packed: &DeviceBuffer<u16, A>,
        part: usize,
        stride: usize,
        offset: usize,
    ) -> Result<()> {
        let n = blocks.len();
        if n == 0 {
            return Ok(());
        }
        if offset + part > stride {
            return Err(EngineError::Device(format!("blocks of {part} at {offset} in strides of {stride}")));
        }
        Self::check_len(packed, (n - 1) * stride + offset + part, "packed blocks")?;
        let (first, second) = if name.starts_with("gather") { (cache, packed) } else { (packed, cache) };
        let args = [
            Arg::Ptr(first.ptr()),
            Arg::Ptr(blocks.ptr()),
            Arg::Ptr(second.ptr()),
            Arg::U64(n as u64),
            Arg::U64(part as u64),
            Arg::U64(stride as u64),
            Arg::U64(offset as u64),
        ];
        // SAFETY: matches gather_blocks_u16 / scatter_blocks_u16; packed's length is
        // checked above, and the caller checks every block id against the cache.
        unsafe { self.launch(name, elementwise(n * part), &args) }
    }

    /// Stores each token's keys and values (f32, `slot_len` each) at its slot of a
    /// cache whose elements are `T` (`f32`, or `u16` holding f16 / bf16 bits with the
    /// matching `storage` name).
    #[allow(clippy::too_many_arguments)]
    pub fn write_kv<T: Elem>(
        &self,
        storage: &str,
        k: &DeviceBuffer<f32, A>,
        v: &DeviceBuffer<f32, A>,
        slots: &DeviceBuffer<u32, A>,
        k_cache: &mut DeviceBuffer<T, A>,
        v_cache: &mut DeviceBuffer<T, A>,
        tokens: usize,
        slot_len: usize,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        Self::check_len(k, tokens * slot_len, "write_kv keys")?;
        Self::check_len(v, tokens * slot_len, "write_kv values")?;
        Self::check_len(slots, tokens, "write_kv slots")?;
        let args = [
            Arg::Ptr(k.ptr()),
            Arg::Ptr(v.ptr()),
            Arg::Ptr(slots.ptr()),
            Arg::Ptr(k_cache.ptr()),
            Arg::Ptr(v_cache.ptr()),
            int(slot_len, "slot length")?,
        ];
        // SAFETY: matches write_kv_T; every slot is inside the cache (the engine's block
        // tables, checked against the cache's blocks).
        unsafe { self.launch(&format!("write_kv_{storage}"), rows(tokens), &args) }
    }

    /// `queries` on the device, once per step (every layer's attention reads them).
    pub fn upload_queries(&self, queries: &AttentionQueries) -> Result<DeviceQueries<A>> {
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
    pub fn paged_attention<T: Elem>(
        &self,
        storage: &str,
        q: &DeviceBuffer<f32, A>,
        k_cache: &DeviceBuffer<T, A>,
        v_cache: &DeviceBuffer<T, A>,
        queries: &DeviceQueries<A>,
        out: &mut DeviceBuffer<f32, A>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        block_size: usize,
        scale: f32,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        if queries.n == 0 {
            return Ok(());
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(EngineError::Device(format!("{heads} query heads over {kv_heads} key/value heads")));
        }
        if head_dim > MAX_HEAD_DIM {
            return Err(EngineError::Device(format!(
                "head_dim {head_dim} is larger than the attention kernel's {MAX_HEAD_DIM}"
            )));
        }
        Self::check_len(q, queries.n * heads * head_dim, "attention queries")?;
        Self::check_len(out, queries.n * heads * head_dim, "attention output")?;
        let args = [
            Arg::Ptr(q.ptr()),
            Arg::Ptr(k_cache.ptr()),
            Arg::Ptr(v_cache.ptr()),
            Arg::Ptr(queries.tables.ptr()),
            Arg::Ptr(queries.starts.ptr()),
            Arg::Ptr(queries.pos.ptr()),
            Arg::Ptr(queries.window.ptr()),
            Arg::Ptr(out.ptr()),
            int(heads, "heads")?,
            int(kv_heads, "kv_heads")?,
            int(head_dim, "head_dim")?,
            int(block_size, "block_size")?,
            Arg::F32(scale),
        ];
        let at = Launch {
            grid: (queries.n * heads) as u32,
            block: ATTN_THREADS,
            shared: (head_dim * std::mem::size_of::<f32>()) as u32,
        };
        // SAFETY: matches paged_attention_T; the tables name blocks inside the cache,
        // and the dynamic shared memory holds one query row.
        unsafe { self.launch(&format!("paged_attention_{storage}"), at, &args) }
    }

    /// Fills `out` (`storage` f16 or bf16 bits, or f32) with `offset + scale * u`, `u`
    /// uniform in [-1, 1) from `seed`.
    pub fn fill_uniform<T: Elem>(
        &self,
        storage: &str,
        out: &mut DeviceBuffer<T, A>,
        seed: u64,
        offset: f32,
        scale: f32,
    ) -> Result<()> {
        check_storage::<T>(storage)?;
        let n = out.len();
        let args = [Arg::Ptr(out.ptr()), Arg::U64(n as u64), Arg::U64(seed), Arg::F32(offset), Arg::F32(scale)];
        // SAFETY: matches fill_uniform_T, which writes n values.
        unsafe { self.launch(&format!("fill_uniform_{storage}"), elementwise(n), &args) }
    }

    /// `y[r, col..col + m] = x[r] · Wᵀ` for `n` rows: `w` is `[m, k]` 16-bit (`input`),
    /// `x` `[n, k]` 16-bit, `y` f32 rows `ldy` wide.
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        input: crate::kv::KvDtype,
        w: &DeviceBuffer<u16, A>,
        x: &DeviceBuffer<u16, A>,
        y: &mut DeviceBuffer<f32, A>,
        (m, n, k): (usize, usize, usize),
        col: usize,
        ldy: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        Self::check_len(w, m * k, "GEMM weight")?;
        Self::check_len(x, n * k, "GEMM input")?;
        if col + m > ldy {
            return Err(EngineError::Device(format!("a GEMM of {m} columns at {col} of rows {ldy} wide")));
        }
        Self::check_len(y, n * ldy, "GEMM output")?;
        let g = Gemm { m, n, k, a: w.ptr(), lda: k, b: x.ptr(), ldb: k, c: y.ptr_at(col), ldc: ldy, input };
        // SAFETY: the lengths are checked above against the dimensions.
        unsafe { self.api.gemm(&g) }
    }
}
