//! hiprtc, HIP's runtime compiler, loaded at run time: its own library since ROCm 5.3
//! (`libhiprtc.so`), part of `libamdhip64.so` before. Only the handful of calls the
//! kernels' compile needs are declared (their C signatures are stable across releases).

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::OnceLock;

use libloading::{Library, Symbol};

use crate::error::Result;
use crate::gpu::device_err;

/// Where hiprtc may live, newest first.
const LIBRARIES: &[&str] =
    &["libhiprtc.so", "libhiprtc.so.7", "libhiprtc.so.6", "libhiprtc.so.5", "libamdhip64.so", "libamdhip64.so.5"];

type Program = *mut c_void;
type Create = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type Compile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type Size = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type Get = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type Destroy = unsafe extern "C" fn(*mut Program) -> c_int;

/// hiprtc, loaded once and kept (it brings the compiler, LLVM, which is costly to load
/// and unload).
fn open() -> Result<&'static Library> {
    static LIB: OnceLock<Option<Library>> = OnceLock::new();
    let lib = LIB.get_or_init(|| {
        LIBRARIES.iter().find_map(|name| {
            // SAFETY: opening a shared library runs its initialisers; these are ROCm's own.
            let lib = unsafe { Library::new(*name) }.ok()?;
            // SAFETY: only checks that the symbol exists.
            unsafe { lib.get::<Create>(b"hiprtcCreateProgram\0") }.is_ok().then_some(lib)
        })
    });
    lib.as_ref().ok_or_else(|| {
        device_err(format!(
            "hiprtc not found (tried {}): install ROCm's hiprtc (e.g. Debian's libamdhip64-5, or ROCm's \
             hip-runtime-amd) and put its lib directory on LD_LIBRARY_PATH",
            LIBRARIES.join(", ")
        ))
    })
}

/// Whether hiprtc can be loaded.
pub fn available() -> bool {
    open().is_ok()
}

/// Compiles HIP C++ `source` with `options` (e.g. `--offload-arch=gfx90a`) into a code
/// object for `hipModuleLoadData`; a failed compile comes back with the compiler's log.
pub(crate) fn compile(source: &str, options: &[String]) -> Result<Vec<u8>> {
    let lib = open()?;
    let sym = |name: &[u8]| device_err(format!("hiprtc has no {}", String::from_utf8_lossy(&name[..name.len() - 1])));
    // SAFETY: the types are hiprtc's C signatures (hiprtc.h), unchanged since ROCm 4.
    let (create, compile, log_size, log, code_size, code, destroy) = unsafe {
        (
            lib.get::<Create>(b"hiprtcCreateProgram\0").map_err(|_| sym(b"hiprtcCreateProgram\0"))?,
            lib.get::<Compile>(b"hiprtcCompileProgram\0").map_err(|_| sym(b"hiprtcCompileProgram\0"))?,
            lib.get::<Size>(b"hiprtcGetProgramLogSize\0").map_err(|_| sym(b"hiprtcGetProgramLogSize\0"))?,
            lib.get::<Get>(b"hiprtcGetProgramLog\0").map_err(|_| sym(b"hiprtcGetProgramLog\0"))?,
            lib.get::<Size>(b"hiprtcGetCodeSize\0").map_err(|_| sym(b"hiprtcGetCodeSize\0"))?,
            lib.get::<Get>(b"hiprtcGetCode\0").map_err(|_| sym(b"hiprtcGetCode\0"))?,
            lib.get::<Destroy>(b"hiprtcDestroyProgram\0").map_err(|_| sym(b"hiprtcDestroyProgram\0"))?,
        )
    };
    let src = CString::new(source).map_err(|_| device_err("the kernel source holds a NUL byte"))?;
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| device_err(format!("compiler option {o:?} holds a NUL byte"))))
        .collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: Program = std::ptr::null_mut();
    // SAFETY: prog is written by the call; the strings are NUL-terminated and outlive it.
    let rc =
        unsafe { create(&mut prog, src.as_ptr(), c"llmd_kernels.hip".as_ptr(), 0, std::ptr::null(), std::ptr::null()) };
    if rc != 0 {
        return Err(device_err(format!("hiprtcCreateProgram failed ({rc})")));
    }
    let result = (|| {
        // SAFETY: prog is live; the option pointers outlive the call.
        let rc = unsafe { compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr()) };
        if rc != 0 {
            let text = program_log(prog, &log_size, &log);
            return Err(device_err(format!("compiling the kernels with hiprtc ({}): {text}", options.join(" "))));
        }
        let mut n = 0usize;
        // SAFETY: prog is live and compiled; n is written by the call.
        if unsafe { code_size(prog, &mut n) } != 0 || n == 0 {
            return Err(device_err("hiprtc produced no code object"));
        }
        let mut out = vec![0u8; n];
        // SAFETY: out holds the n bytes the previous call reported.
        if unsafe { code(prog, out.as_mut_ptr().cast()) } != 0 {
            return Err(device_err("hiprtc could not hand over the code object"));
        }
        Ok(out)
    })();
    // SAFETY: prog was created above and is destroyed once.
    unsafe { destroy(&mut prog) };
    result
}

fn program_log(prog: Program, size: &Symbol<'_, Size>, get: &Symbol<'_, Get>) -> String {
    let mut n = 0usize;
    // SAFETY: prog is live; n is written by the call.
    if unsafe { size(prog, &mut n) } != 0 || n == 0 {
        return "(no log)".into();
    }
    let mut buf = vec![0u8; n];
    // SAFETY: buf holds the n bytes the previous call reported.
    if unsafe { get(prog, buf.as_mut_ptr().cast()) } != 0 {
        return "(no log)".into();
    }
    String::from_utf8_lossy(&buf).trim_end_matches('\0').trim().to_string()
}
