//! The engine on NVIDIA GPUs (feature `cuda`), through cudarc.
//!
//! The CUDA driver, NVRTC and cuBLAS are loaded when first used, never linked: llmd
//! builds and runs on machines with no CUDA at all, and asking for the GPU there is a
//! clear error ([`probe`]: "no CUDA driver found"), not a crash. The kernels
//! ([`KERNELS`], CUDA C without headers) are compiled at start with NVRTC for the
//! device's architecture ([`compile`]), so no toolkit is needed at build time either.
//!
//! The CPU engine is the reference: every kernel has a CPU counterpart it is tested
//! against on a GPU (`needs_hardware::` tests), and CI, which has none, compiles the
//! kernels with NVRTC for the architectures llmd targets (sm_80, sm_90).

mod backend;
mod ops;

pub use backend::CudaBackend;
pub use ops::{AttentionQueries, DeviceQueries, Kernels};

use cudarc::driver::CudaContext;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{EngineError, Result};

/// The kernels' CUDA C source.
pub const KERNELS: &str = include_str!("kernels.cu");

/// Kernel names per storage type (`_f32`, `_f16`, `_bf16` appended), and the ones with
/// one form.
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
pub const PLAIN_KERNELS: &[&str] = &["rope_f32", "add_f32", "add_bias_f32", "gather_rows_f32"];

fn device_err(what: impl std::fmt::Display) -> EngineError {
    EngineError::Device(what.to_string())
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

/// One GPU, as [`probe`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Its name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// Compute capability, e.g. (9, 0).
    pub compute_capability: (u32, u32),
    /// Memory in all, bytes.
    pub total_memory: usize,
    /// Memory free now, bytes.
    pub free_memory: usize,
}

impl DeviceInfo {
    /// The NVRTC architecture to compile for: the device's own, `compute_XY`.
    pub fn arch(&self) -> String {
        format!("compute_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
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
    Ok(DeviceInfo {
        ordinal,
        name,
        compute_capability: (major.max(0) as u32, minor.max(0) as u32),
        total_memory,
        free_memory,
    })
}

/// Compiles [`KERNELS`] for `arch` (e.g. `compute_90`), as PTX the driver finishes for
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
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts)
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

/// Every kernel entry point's name.
pub fn kernel_names() -> Vec<String> {
    let typed = TYPED_KERNELS.iter().flat_map(|k| ["f32", "f16", "bf16"].into_iter().map(move |t| format!("{k}_{t}")));
    typed.chain(PLAIN_KERNELS.iter().map(|k| k.to_string())).collect()
}

#[cfg(test)]
mod tests;
