//! The engine on AMD GPUs (feature `rocm`): [`Rocm`] implements the vendor-neutral seam
//! ([`GpuApi`]) over HIP, so [`RocmBackend`] is the same forward pass and the same
//! kernels as CUDA's.
//!
//! - The HIP runtime comes through hip-sys, which links `libamdhip64`: building with
//!   `rocm` needs HIP's headers and library (`HIP_PATH`; Debian's `libamdhip64-dev`
//!   will do, see `scripts/rocm/fetch.sh`), and the binary needs ROCm to start.
//! - The kernels are compiled when a device is opened with hiprtc (loaded at run time),
//!   for the device's own architecture (`gcnArchName`), from the kernels' source with
//!   the HIP prelude (the wavefront width of that architecture, 64 on CDNA, 32 on RDNA).
//! - GEMMs go to rocBLAS (`rocblas_gemm_ex`, loaded at run time).
//!
//! CI, which has no AMD GPU, builds this module and compiles the kernels with hiprtc for
//! gfx908, gfx90a and gfx1030. It has not yet run on AMD hardware.

mod hiprtc;
mod rocblas;

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::Arc;

use hip_sys::hiprt as hip;

use crate::error::{EngineError, Result};
use crate::gpu::{Arg, HIP_PRELUDE, Launch, device_err, kernel_source};
pub use crate::gpu::{AttentionQueries, DeviceInfo, Gemm, GpuApi, kernel_names};
use rocblas::RocBlas;

pub use hiprtc::available as hiprtc_available;

/// The Llama-family forward pass on one AMD GPU.
pub type RocmBackend = crate::gpu::GpuBackend<Rocm>;
/// The kernels on one AMD GPU.
pub type Kernels = crate::gpu::Kernels<Rocm>;
/// Memory on an AMD GPU.
pub type DeviceBuffer<T> = crate::gpu::DeviceBuffer<T, Rocm>;

/// The kernels' HIP source: the HIP prelude, then the shared kernels.
pub fn kernels_source() -> String {
    kernel_source(HIP_PRELUDE)
}

fn check(rc: hip::hipError_t, what: &str) -> Result<()> {
    if rc == hip::hipError_t::hipSuccess {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr(hip::hipGetErrorString(rc)) }.to_string_lossy().into_owned();
    Err(EngineError::Device(format!("{what}: {text}")))
}

fn c_text(bytes: &[c_char]) -> String {
    let bytes: Vec<u8> = bytes.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The AMD GPU at `ordinal`: "no ROCm device found" without a driver or device, "no
/// ROCm device N" past the last one.
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    // SAFETY: plain HIP calls with valid out-pointers.
    unsafe {
        let rc = hip::hipInit(0);
        if rc != hip::hipError_t::hipSuccess {
            return Err(device_err(format!(
                "no ROCm device found (hipInit: {}): run on a machine with an AMD GPU and its driver (amdgpu, \
                 /dev/kfd), or use --device cpu",
                CStr::from_ptr(hip::hipGetErrorString(rc)).to_string_lossy()
            )));
        }
        let mut count = 0;
        check(hip::hipGetDeviceCount(&mut count), "counting ROCm devices")?;
        if ordinal >= count.max(0) as usize {
            return Err(device_err(format!("no ROCm device {ordinal} (this machine has {count})")));
        }
        let id = ordinal as i32;
        // The plain symbol fills the pre-6.0 layout these bindings describe, on every
        // ROCm release (6.0 added hipGetDevicePropertiesR0600 beside it).
        let mut props = hip::hipDeviceProp_t::default();
        check(hip::hipGetDeviceProperties(&mut props, id), "reading the ROCm device")?;
        check(hip::hipSetDevice(id), "selecting the ROCm device")?;
        let (mut free, mut total) = (0usize, 0usize);
        check(hip::hipMemGetInfo(&mut free, &mut total), "reading device memory")?;
        Ok(DeviceInfo {
            ordinal,
            name: c_text(&props.name),
            arch: c_text(&props.gcnArchName),
            warp_size: props.warpSize.max(0) as u32,
            total_memory: total,
            free_memory: free,
        })
    }
}

/// Compiles [`kernels_source`] for `arch` (e.g. `gfx90a`, or a device's full
/// `gcnArchName` such as `gfx90a:sramecc+:xnack-`) into a code object; `warp`, the
/// device's wavefront width where known (else the compiler's for the architecture).
pub fn compile(arch: &str, warp: Option<u32>) -> Result<Vec<u8>> {
    let mut options = vec![format!("--offload-arch={arch}"), "-std=c++17".into(), "-O3".into()];
    options.extend(warp.map(|w| format!("-DLLMD_WARP={w}")));
    hiprtc::compile(&kernels_source(), &options)
}

/// A HIP stream, destroyed last (after every buffer freed on it).
struct Stream(hip::hipStream_t);

// SAFETY: HIP streams may be used from any thread.
unsafe impl Send for Stream {}
// SAFETY: as above; HIP serialises work queued on one stream.
unsafe impl Sync for Stream {}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: created by hipStreamCreateWithFlags, destroyed once, after its users
        // (every holder keeps an Arc).
        unsafe {
            hip::hipStreamSynchronize(self.0);
            hip::hipStreamDestroy(self.0);
        }
    }
}

/// One allocation, freed in stream order when dropped (or at once, after the stream's
/// work, where the device has no stream-ordered allocator).
pub struct HipMem {
    ptr: *mut c_void,
    stream: Arc<Stream>,
    pooled: bool,
}

// SAFETY: device memory is not tied to a host thread.
unsafe impl Send for HipMem {}

impl Drop for HipMem {
    fn drop(&mut self) {
        // SAFETY: allocated on this stream (hipMallocAsync) or by hipMalloc, freed once
        // after the work queued on the stream.
        unsafe {
            if self.pooled {
                hip::hipFreeAsync(self.ptr, self.stream.0);
            } else {
                hip::hipStreamSynchronize(self.stream.0);
                hip::hipFree(self.ptr);
            }
        }
    }
}

/// One AMD GPU: a stream, the compiled kernels and rocBLAS.
pub struct Rocm {
    info: DeviceInfo,
    functions: HashMap<String, hip::hipFunction_t>,
    module: hip::hipModule_t,
    blas: RocBlas,
    stream: Arc<Stream>,
}

// SAFETY: the module and function handles are plain handles HIP lets any thread use;
// Rocm is not Sync, so it is used by one thread at a time.
unsafe impl Send for Rocm {}

impl std::fmt::Debug for Rocm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rocm").field("device", &self.info).field("kernels", &self.functions.len()).finish()
    }
}

impl Drop for Rocm {
    fn drop(&mut self) {
        // SAFETY: loaded once by hipModuleLoadData; the kernels are no longer launched.
        unsafe {
            hip::hipStreamSynchronize(self.stream.0);
            hip::hipModuleUnload(self.module);
        }
    }
}

impl Rocm {
    /// HIP's device index is per host thread: set it before each call.
    fn select(&self) -> Result<()> {
        // SAFETY: a plain HIP call.
        check(unsafe { hip::hipSetDevice(self.info.ordinal as i32) }, "selecting the ROCm device")
    }
}

impl GpuApi for Rocm {
    type Mem = HipMem;
    const VENDOR: &'static str = "ROCm";

    fn open(ordinal: usize) -> Result<Self> {
        let info = probe(ordinal)?;
        let code = compile(&info.arch, Some(info.warp_size).filter(|&w| w > 0))?;
        // SAFETY: plain HIP calls with valid out-pointers; the code object outlives the load.
        unsafe {
            let mut s: hip::hipStream_t = std::ptr::null_mut();
            check(hip::hipStreamCreateWithFlags(&mut s, hip::hipStreamNonBlocking), "creating a stream")?;
            let stream = Arc::new(Stream(s));
            let mut module: hip::hipModule_t = std::ptr::null_mut();
            check(hip::hipModuleLoadData(&mut module, code.as_ptr().cast()), "loading the kernels")?;
            let mut functions = HashMap::new();
            for name in kernel_names() {
                let c = CString::new(name.as_str()).map_err(|_| device_err("a kernel name holds a NUL byte"))?;
                let mut f: hip::hipFunction_t = std::ptr::null_mut();
                if let Err(e) = check(hip::hipModuleGetFunction(&mut f, module, c.as_ptr()), "loading a kernel") {
                    hip::hipModuleUnload(module);
                    return Err(e);
                }
                functions.insert(name, f);
            }
            let blas = match RocBlas::new(s.cast()) {
                Ok(b) => b,
                Err(e) => {
                    hip::hipModuleUnload(module);
                    return Err(e);
                }
            };
            Ok(Rocm { info, functions, module, blas, stream })
        }
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<(u64, Self::Mem)> {
        self.select()?;
        let mut ptr: *mut c_void = std::ptr::null_mut();
        let bytes = bytes.max(1);
        // SAFETY: ptr is written by the calls; the memset covers the allocation.
        unsafe {
            // Stream-ordered where the device has a memory pool (beta in ROCm 5), else
            // plain.
            let pooled = hip::hipMallocAsync(&mut ptr, bytes, self.stream.0) == hip::hipError_t::hipSuccess;
            if !pooled {
                check(hip::hipMalloc(&mut ptr, bytes), "allocating device memory")?;
            }
            let mem = HipMem { ptr, stream: self.stream.clone(), pooled };
            check(hip::hipMemsetAsync(ptr, 0, bytes, self.stream.0), "zeroing device memory")?;
            Ok((ptr as u64, mem))
        }
    }

    unsafe fn upload(&self, src: &[u8], dst: u64) -> Result<()> {
        self.select()?;
        // SAFETY: dst holds src.len() bytes; the stream is synchronised before returning,
        // so src may be reused (HIP may read pageable memory after an async call returns).
        unsafe {
            check(
                hip::hipMemcpyHtoDAsync(dst as *mut c_void, src.as_ptr() as *mut c_void, src.len(), self.stream.0),
                "copying to the device",
            )?;
        }
        self.synchronize()
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.select()?;
        // SAFETY: src holds dst.len() bytes; the stream is synchronised before dst is read.
        unsafe {
            check(
                hip::hipMemcpyDtoHAsync(dst.as_mut_ptr().cast(), src as *mut c_void, dst.len(), self.stream.0),
                "copying from the device",
            )?;
        }
        self.synchronize()
    }

    unsafe fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.select()?;
        // SAFETY: both hold `bytes` bytes.
        unsafe {
            check(
                hip::hipMemcpyDtoDAsync(dst as *mut c_void, src as *mut c_void, bytes, self.stream.0),
                "copying on the device",
            )
        }
    }

    unsafe fn launch(&self, name: &str, at: Launch, args: &[Arg]) -> Result<()> {
        let f = *self.functions.get(name).ok_or_else(|| device_err(format!("no kernel {name}")))?;
        self.select()?;
        // Each argument's value in 8 bytes; the kernel reads its own width from the
        // start of each (little-endian).
        let mut values: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(v) | Arg::U64(v) => v,
                Arg::I32(v) => v as u32 as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut params: Vec<*mut c_void> = values.iter_mut().map(|v| (v as *mut u64).cast()).collect();
        // SAFETY: the caller's (GpuApi::launch); params point into `values`, alive for
        // the call (HIP copies the arguments at launch).
        let rc = unsafe {
            hip::hipModuleLaunchKernel(
                f,
                at.grid,
                1,
                1,
                at.block,
                1,
                1,
                at.shared,
                self.stream.0,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(rc, &format!("launching {name}"))
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        self.select()?;
        // SAFETY: the caller's.
        unsafe { self.blas.gemm(g) }
    }

    fn synchronize(&self) -> Result<()> {
        self.select()?;
        // SAFETY: a live stream.
        check(unsafe { hip::hipStreamSynchronize(self.stream.0) }, "waiting for the device")
    }
}

#[cfg(test)]
mod tests;
