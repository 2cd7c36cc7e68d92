//! rocBLAS, loaded at run time (`librocblas.so`): a handle on our stream and
//! `rocblas_gemm_ex`, whose C signature and enum values are stable since ROCm 3.

use std::ffi::{c_int, c_void};

use libloading::Library;

use crate::error::Result;
use crate::gpu::{Gemm, device_err};
use crate::kv::KvDtype;

const LIBRARIES: &[&str] = &["librocblas.so", "librocblas.so.5", "librocblas.so.4", "librocblas.so.3"];

// rocblas_operation, rocblas_datatype, rocblas_gemm_algo (rocblas-types.h).
const OP_NONE: c_int = 111;
const OP_TRANSPOSE: c_int = 112;
const F16: c_int = 150;
const F32: c_int = 151;
const BF16: c_int = 168;
const ALGO_STANDARD: c_int = 0;

type Handle = *mut c_void;
type CreateHandle = unsafe extern "C" fn(*mut Handle) -> c_int;
type DestroyHandle = unsafe extern "C" fn(Handle) -> c_int;
type SetStream = unsafe extern "C" fn(Handle, *mut c_void) -> c_int;
#[allow(clippy::type_complexity)]
type GemmEx = unsafe extern "C" fn(
    Handle,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    c_int,
    c_int,
    *const c_void,
    *const c_void,
    c_int,
    c_int,
    *mut c_void,
    c_int,
    c_int,
    c_int,
    c_int,
    i32,
    u32,
) -> c_int;

/// A rocBLAS handle bound to one stream.
pub(crate) struct RocBlas {
    handle: Handle,
    gemm_ex: GemmEx,
    destroy: DestroyHandle,
    // Keeps the functions above loaded.
    _lib: Library,
}

// SAFETY: a rocBLAS handle may be used from any thread, one call at a time; RocBlas is
// not Sync, so moving it is all that is allowed.
unsafe impl Send for RocBlas {}

impl RocBlas {
    /// Loads rocBLAS and makes a handle queueing on `stream` (a `hipStream_t`).
    pub(crate) fn new(stream: *mut c_void) -> Result<Self> {
        let lib = LIBRARIES
            .iter()
            // SAFETY: opening a shared library runs its initialisers; these are ROCm's own.
            .find_map(|n| unsafe { Library::new(*n) }.ok())
            .ok_or_else(|| {
                device_err(format!(
                    "rocBLAS not found (tried {}): install ROCm's rocblas and put its lib directory on \
                     LD_LIBRARY_PATH",
                    LIBRARIES.join(", ")
                ))
            })?;
        let missing = |s: &str| device_err(format!("rocBLAS has no {s}"));
        // SAFETY: the types are rocBLAS's C signatures (rocblas-functions.h, rocblas-auxiliary.h).
        let (create, destroy, set_stream, gemm_ex) = unsafe {
            (
                *lib.get::<CreateHandle>(b"rocblas_create_handle\0").map_err(|_| missing("rocblas_create_handle"))?,
                *lib.get::<DestroyHandle>(b"rocblas_destroy_handle\0")
                    .map_err(|_| missing("rocblas_destroy_handle"))?,
                *lib.get::<SetStream>(b"rocblas_set_stream\0").map_err(|_| missing("rocblas_set_stream"))?,
                *lib.get::<GemmEx>(b"rocblas_gemm_ex\0").map_err(|_| missing("rocblas_gemm_ex"))?,
            )
        };
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: handle is written by the call.
        let rc = unsafe { create(&mut handle) };
        if rc != 0 {
            return Err(device_err(format!("rocblas_create_handle failed (status {rc})")));
        }
        let blas = RocBlas { handle, gemm_ex, destroy, _lib: lib };
        // SAFETY: a live handle and stream.
        let rc = unsafe { set_stream(blas.handle, stream) };
        if rc != 0 {
            return Err(device_err(format!("rocblas_set_stream failed (status {rc})")));
        }
        Ok(blas)
    }

    /// Queues `g` (see [`Gemm`]): column-major `C = Aᵀ · B`, f32 out and compute.
    ///
    /// # Safety
    /// The addresses must hold the matrices `g`'s dimensions name.
    pub(crate) unsafe fn gemm(&self, g: &Gemm) -> Result<()> {
        let dt = if g.input == KvDtype::BF16 { BF16 } else { F16 };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let dim = |v: usize| c_int::try_from(v).map_err(|_| device_err(format!("GEMM dimension {v} too large")));
        let c = g.c as *mut c_void;
        // SAFETY: the caller's; alpha and beta are host scalars (rocBLAS's default
        // pointer mode); C and D are the same matrix (D = alpha·op(A)·op(B) + beta·C).
        let rc = unsafe {
            (self.gemm_ex)(
                self.handle,
                OP_TRANSPOSE,
                OP_NONE,
                dim(g.m)?,
                dim(g.n)?,
                dim(g.k)?,
                (&alpha as *const f32).cast(),
                g.a as *const c_void,
                dt,
                dim(g.lda)?,
                g.b as *const c_void,
                dt,
                dim(g.ldb)?,
                (&beta as *const f32).cast(),
                c,
                F32,
                dim(g.ldc)?,
                c,
                F32,
                dim(g.ldc)?,
                F32,
                ALGO_STANDARD,
                0,
                0,
            )
        };
        if rc != 0 {
            return Err(device_err(format!("rocblas_gemm_ex failed (status {rc})")));
        }
        Ok(())
    }
}

impl Drop for RocBlas {
    fn drop(&mut self) {
        // SAFETY: the handle was created by rocblas_create_handle and is destroyed once.
        unsafe { (self.destroy)(self.handle) };
    }
}
