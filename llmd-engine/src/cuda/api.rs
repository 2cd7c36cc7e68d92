//! [`Cuda`]: the GPU seam on cudarc (driver, NVRTC, cuBLAS, all loaded at run time).

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::{compile, probe};
use crate::error::{EngineError, Result};
use crate::gpu::{Arg, DeviceInfo, Gemm, GpuApi, Launch, kernel_names};
use crate::kv::KvDtype;

fn err(what: &str) -> impl FnOnce(cudarc::driver::DriverError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: {e}"))
}

/// One NVIDIA GPU: its context, one stream, the compiled kernels and cuBLAS.
pub struct Cuda {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
    blas: CudaBlas,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda").field("device", &self.info).field("kernels", &self.functions.len()).finish()
    }
}

impl Cuda {
    /// The stream every operation is queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| EngineError::Device(format!("no kernel {name}")))
    }

    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(err("binding the CUDA context"))
    }
}

/// cuBLAS on `stream`; a clear error, not cudarc's panic, when the library cannot be
/// loaded.
fn blas(stream: &Arc<CudaStream>) -> Result<CudaBlas> {
    // SAFETY: only tries to open the library by its names (dlopen).
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(EngineError::Device(
            "cuBLAS not found (libcublas.so could not be loaded): install the CUDA toolkit's or pip's \
             nvidia-cublas-cu12, and put its lib directory on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    CudaBlas::new(stream.clone()).map_err(|e| EngineError::Device(format!("cuBLAS: {e}")))
}

impl GpuApi for Cuda {
    type Mem = CudaSlice<u8>;
    const VENDOR: &'static str = "CUDA";

    fn open(ordinal: usize) -> Result<Self> {
        let info = probe(ordinal)?;
        let ptx = compile(&info.arch)?;
        let ctx = CudaContext::new(ordinal).map_err(err("opening the device"))?;
        // One stream: nothing to order between streams, so no events per buffer use.
        // SAFETY: every operation goes to `stream` (GpuApi's contract).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let module = ctx.load_module(ptx).map_err(err("loading the kernels"))?;
        let mut functions = HashMap::new();
        for name in kernel_names() {
            let f = module.load_function(&name).map_err(err("loading a kernel"))?;
            functions.insert(name, f);
        }
        let blas = blas(&stream)?;
        Ok(Cuda { info, ctx, stream, _module: module, functions, blas })
    }

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn alloc_zeroed(&self, bytes: usize) -> Result<(u64, Self::Mem)> {
        let mem = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(err("allocating device memory"))?;
        let ptr = mem.device_ptr(&self.stream).0;
        Ok((ptr, mem))
    }

    unsafe fn upload(&self, src: &[u8], dst: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds src.len() bytes (the caller's contract); from pageable memory the
        // call returns once src has been staged, so src may be reused.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(err("copying to the device"))
    }

    unsafe fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds dst.len() bytes; the stream is synchronised before dst is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
            .map_err(err("copying from the device"))?;
        self.synchronize()
    }

    unsafe fn copy(&self, src: u64, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold `bytes` bytes (the caller's buffers).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(err("copying on the device"))
    }

    unsafe fn launch(&self, name: &str, at: Launch, args: &[Arg]) -> Result<()> {
        let f = self.function(name)?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(v) | Arg::U64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig { grid_dim: (at.grid, 1, 1), block_dim: (at.block, 1, 1), shared_mem_bytes: at.shared };
        // SAFETY: the caller's (GpuApi::launch).
        unsafe { b.launch(cfg) }.map_err(|e| EngineError::Device(format!("launching {name}: {e}")))?;
        Ok(())
    }

    unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        let dt = if g.input == KvDtype::BF16 { cudaDataType::CUDA_R_16BF } else { cudaDataType::CUDA_R_16F };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let dim = |v: usize| i32::try_from(v).map_err(|_| EngineError::Device(format!("GEMM dimension {v} too large")));
        // Column-major: C (m × n, ldc) = Aᵀ (A stored k × m) · B (k × n).
        // SAFETY: the caller's (GpuApi::gemm); alpha and beta are host scalars (the
        // default pointer mode), and the handle queues on our stream.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *self.blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                dim(g.m)?,
                dim(g.n)?,
                dim(g.k)?,
                (&alpha as *const f32).cast(),
                g.a as *const _,
                dt,
                dim(g.lda)?,
                g.b as *const _,
                dt,
                dim(g.ldb)?,
                (&beta as *const f32).cast(),
                g.c as *mut _,
                cudaDataType::CUDA_R_32F,
                dim(g.ldc)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| EngineError::Device(format!("cuBLAS GEMM: {e}")))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(err("waiting for the device"))
    }
}
