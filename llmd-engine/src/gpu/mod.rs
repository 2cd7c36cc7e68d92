//! The engine on GPUs, whatever their vendor: one forward pass ([`GpuBackend`]) and one
//! kernel source ([`kernel_source`]: CUDA C that also compiles as HIP) over a small
//! seam, [`GpuApi`] (memory, copies, kernel launches, one GEMM), which CUDA
//! (`llmd_engine::cuda`, feature `cuda`, through cudarc) and ROCm (`llmd_engine::rocm`,
//! feature `rocm`, through hip-sys) implement.
//!
//! Kernels are compiled when a device is opened, for that device (NVRTC or hiprtc), so
//! building llmd needs no GPU toolkit. The CPU engine is the reference: each kernel and
//! the whole forward pass are tested against it on a GPU (`needs_hardware::` tests).

mod backend;
mod buffer;
mod ops;
#[cfg(test)]
pub(crate) mod parity;

pub use backend::GpuBackend;
pub use buffer::{DeviceBuffer, Elem};
pub use ops::{AttentionQueries, DeviceQueries, Kernels};

use crate::error::{EngineError, Result};
use crate::kv::KvDtype;

/// The kernels, shared by every vendor.
pub const KERNELS: &str = include_str!("kernels.cu");
/// The CUDA prelude (NVRTC): warps of 32, PTX half conversions.
pub const CUDA_PRELUDE: &str = include_str!("cuda.cuh");
/// The HIP prelude (hiprtc): the architecture's wavefront width, `_Float16` conversions.
pub const HIP_PRELUDE: &str = include_str!("hip.cuh");

/// A vendor's prelude followed by the kernels: what the runtime compiler is given.
pub fn kernel_source(prelude: &str) -> String {
    format!("{prelude}\n{KERNELS}")
}

/// Kernel names per storage type (`_f32`, `_f16`, `_bf16` appended).
pub const TYPED_KERNELS: &[&str] = &[
    "embedding",
    "rms_norm",
    "rms_norm_f32_out",
    "silu_mul",
    "write_kv",
    "paged_attention",
    "to_storage",
    "fill_uniform",
];
/// Kernels with a single (f32) form.
pub const PLAIN_KERNELS: &[&str] =
    &["rope_f32", "add_f32", "add_bias_f32", "gather_rows_f32", "gather_blocks_u16", "scatter_blocks_u16"];

/// Every kernel entry point's name.
pub fn kernel_names() -> Vec<String> {
    let typed = TYPED_KERNELS.iter().flat_map(|k| ["f32", "f16", "bf16"].into_iter().map(move |t| format!("{k}_{t}")));
    typed.chain(PLAIN_KERNELS.iter().map(|k| k.to_string())).collect()
}

pub(crate) fn device_err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Device(what.to_string())
}

/// One GPU, as its vendor's probe finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its ordinal (`cuda:N`, `rocm:N`).
    pub ordinal: usize,
    /// Its name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// The architecture the kernels are compiled for, e.g. `compute_90` or `gfx90a`
    /// (empty where the runtime compiler picks the device's own).
    pub arch: String,
    /// Threads per warp (wavefront): 32 on NVIDIA and RDNA, 64 on CDNA.
    pub warp_size: u32,
    /// Memory in all, bytes.
    pub total_memory: usize,
    /// Memory free now, bytes.
    pub free_memory: usize,
}

/// One kernel argument, passed by value as the kernel's C signature has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A device address (a pointer parameter).
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
}

/// Where a kernel runs: `grid` blocks of `block` threads, `shared` bytes of dynamic
/// shared memory each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// Thread blocks.
    pub grid: u32,
    /// Threads per block (a multiple of the warp width).
    pub block: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared: u32,
}

/// `C = Aᵀ · B` in column-major terms, as BLAS sees our row-major `y = x · Wᵀ`: `A` is
/// the weight (`k × m`, leading dimension `lda`, 16-bit), `B` the activations (`k × n`,
/// 16-bit), `C` the output (`m × n`, leading dimension `ldc`, f32). Compute in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gemm {
    /// Output features.
    pub m: usize,
    /// Rows (tokens).
    pub n: usize,
    /// Input features.
    pub k: usize,
    /// The weight's address.
    pub a: u64,
    /// The weight's leading dimension (its input features).
    pub lda: usize,
    /// The activations' address.
    pub b: u64,
    /// The activations' leading dimension.
    pub ldb: usize,
    /// The output's address (may point inside a wider buffer).
    pub c: u64,
    /// The output's leading dimension (its row width).
    pub ldc: usize,
    /// The 16-bit type of `A` and `B`.
    pub input: KvDtype,
}

/// What a GPU vendor's runtime gives the forward pass. Every operation is ordered on one
/// stream; [`GpuApi::download`] and [`GpuApi::synchronize`] wait for it.
pub trait GpuApi: Send + Sized + 'static {
    /// Owns one allocation; dropping it frees the memory after the work queued so far.
    type Mem: Send;
    /// The vendor, for messages ("CUDA", "ROCm").
    const VENDOR: &'static str;

    /// Opens device `ordinal`, compiles and loads the kernels, and loads the BLAS.
    fn open(ordinal: usize) -> Result<Self>;
    /// The device.
    fn info(&self) -> &DeviceInfo;
    /// `bytes` zeroed bytes of device memory, and their address.
    fn alloc_zeroed(&self, bytes: usize) -> Result<(u64, Self::Mem)>;
    /// Copies `src` to device address `dst`; `src` may be reused when this returns.
    ///
    /// # Safety
    /// `dst` must be device memory of this device holding `src.len()` bytes.
    unsafe fn upload(&self, src: &[u8], dst: u64) -> Result<()>;
    /// Copies from device address `src` into `dst`, after the work queued so far.
    ///
    /// # Safety
    /// `src` must be device memory of this device holding `dst.len()` bytes.
    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` between device addresses.
    ///
    /// # Safety
    /// Both must be device memory of this device holding `bytes` bytes.
    unsafe fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()>;
    /// Queues kernel `name` with `args`.
    ///
    /// # Safety
    /// `args` must match the kernel's C signature, and every address must be valid for
    /// what the kernel reads and writes with them.
    unsafe fn launch(&self, name: &str, at: Launch, args: &[Arg]) -> Result<()>;
    /// Queues one GEMM.
    ///
    /// # Safety
    /// The addresses must hold the matrices `g`'s dimensions name.
    unsafe fn gemm(&self, g: &Gemm) -> Result<()>;
    /// Waits for everything queued.
    fn synchronize(&self) -> Result<()>;
}
