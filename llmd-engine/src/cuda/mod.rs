//! The engine on NVIDIA GPUs (feature `cuda`), through cudarc: [`Cuda`] implements the
//! vendor-neutral seam ([`GpuApi`]) the forward pass ([`CudaBackend`]) and kernels
//! ([`Kernels`]) are written against.
//!
//! The CUDA driver, NVRTC and cuBLAS are loaded when first used, never linked: llmd
//! builds and runs on machines with no CUDA at all, and asking for the GPU there is a
//! clear error ([`probe`]: "no CUDA driver found"), not a crash. The kernels (CUDA C
//! without headers) are compiled at start with NVRTC for the device's architecture
//! ([`compile`]), so no toolkit is needed at build time either.
//!
//! The CPU engine is the reference: every kernel has a CPU counterpart it is tested
//! against on a GPU (`needs_hardware::` tests), and CI, which has none, compiles the
//! kernels with NVRTC for the architectures llmd targets (sm_80, sm_90).

mod api;

pub use api::Cuda;

use cudarc::driver::CudaContext;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::Result;
pub use crate::gpu::{AttentionQueries, DeviceInfo, GpuApi, kernel_names};
use crate::gpu::{CUDA_PRELUDE, device_err, kernel_source};

/// The Llama-family forward pass on one NVIDIA GPU.
pub type CudaBackend = crate::gpu::GpuBackend<Cuda>;
/// The kernels on one NVIDIA GPU.
pub type Kernels = crate::gpu::Kernels<Cuda>;
/// Attention queries on an NVIDIA GPU.
pub type DeviceQueries = crate::gpu::DeviceQueries<Cuda>;
/// Memory on an NVIDIA GPU.
pub type DeviceBuffer<T> = crate::gpu::DeviceBuffer<T, Cuda>;

/// The kernels' CUDA C source: the CUDA prelude, then the shared kernels.
pub fn kernels_source() -> String {
    kernel_source(CUDA_PRELUDE)
}

/// Whether the CUDA driver library (`libcuda.so`) can be loaded.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library by its names (dlopen); nothing is called.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (`libnvrtc.so`) can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: as above.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The GPU at `ordinal`: "no CUDA driver found" without a driver, "no CUDA device N"
/// past the last one.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    if !driver_available() {
        return Err(device_err(
            "no CUDA driver found (libcuda.so could not be loaded): run on a machine with an NVIDIA driver, or use \
             --device cpu",
        ));
    }
    let count = CudaContext::device_count().map_err(|e| device_err(format!("counting CUDA devices: {e}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(device_err(format!("no CUDA device {ordinal} (this machine has {count})")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| device_err(format!("opening CUDA device {ordinal}: {e}")))?;
    let attr = |a| ctx.attribute(a).map_err(|e| device_err(format!("reading CUDA device {ordinal}: {e}")));
    let major = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let name = ctx.name().map_err(|e| device_err(format!("reading CUDA device {ordinal}'s name: {e}")))?;
    let (free_memory, total_memory) =
        cudarc::driver::result::mem_get_info().map_err(|e| device_err(format!("reading device memory: {e}")))?;
    let warp = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?;
    Ok(DeviceInfo {
        ordinal,
        name,
        arch: format!("compute_{major}{minor}"),
        warp_size: warp.max(0) as u32,
        total_memory,
        free_memory,
    })
}

/// Compiles [`kernels_source`] for `arch` (e.g. `compute_90`), as PTX the driver finishes for
/// the device at load time: "NVRTC not found" without the library, the compiler's log
/// on an error.
pub fn compile(arch: &str) -> Result<Ptx> {
    if !nvrtc_available() {
        return Err(device_err(
            "NVRTC not found (libnvrtc.so could not be loaded): install the CUDA runtime's NVRTC, e.g. pip's \
             nvidia-cuda-nvrtc-cu12, and put its lib directory on LD_LIBRARY_PATH",
        ));
    }
    let opts = CompileOptions {
        // `arch` is a &'static str in cudarc's options; the handful of architectures
        // are interned once each.
        arch: Some(intern(arch)),
        use_fast_math: Some(false),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(kernels_source(), opts)
        .map_err(|e| device_err(format!("compiling the kernels for {arch}: {e:?}")))
}

fn intern(s: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut seen = SEEN.get_or_init(Mutex::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = seen.iter().find(|x| **x == s) {
        return s;
    }
    let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
    seen.push(leaked);
    leaked
}

#[cfg(test)]
mod tests;
