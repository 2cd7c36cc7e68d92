//! What runs without an AMD GPU: the probe's error, and the kernels compiling with
//! hiprtc for the architectures llmd targets. Results against the CPU need a GPU:
//! `needs_hardware::`.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn asking_for_an_amd_gpu_without_one_says_so() {
    match probe(0) {
        Ok(d) => assert!(d.total_memory > 0 && d.arch.starts_with("gfx"), "{d:?}"),
        Err(e) => {
            let e = e.to_string();
            eprintln!("{e}");
            assert!(e.contains("no ROCm device"), "{e}");
            if e.contains("hipInit") {
                assert!(e.contains("--device cpu"), "{e}");
            }
        }
    }
}

/// ELF64 code objects holding every kernel's symbol.
fn assert_code_object(code: &[u8], arch: &str) {
    assert!(code.starts_with(b"\x7fELF"), "{arch}: not an ELF code object");
    for k in kernel_names() {
        let sym = format!("\0{k}\0");
        assert!(code.windows(sym.len()).any(|w| w == sym.as_bytes()), "{arch}: {k} missing from the code object");
    }
}

#[test]
#[ignore = "needs hiprtc (scripts/test.sh fetches Debian's ROCm runtime and sets LD_LIBRARY_PATH)"]
fn the_kernels_compile_for_every_architecture_llmd_targets() {
    assert!(hiprtc_available(), "hiprtc could not be loaded: is its lib directory on LD_LIBRARY_PATH?");
    // CDNA (MI100, MI200: wavefronts of 64) and RDNA 2 (wavefronts of 32), one after
    // another: hiprtc compiles one program at a time.
    for (arch, warp) in [("gfx908", Some(64)), ("gfx90a", None), ("gfx1030", Some(32))] {
        assert_code_object(&compile(arch, warp).unwrap(), arch);
    }
    // The prelude's width: the host's where given, else the compiler's per architecture.
    let width = |arch: &str, width: u32, given: Option<u32>| {
        let src =
            format!("{HIP_PRELUDE}\nstatic_assert(WARP == {width}, \"width\");\nextern \"C\" __global__ void k() {{}}");
        let mut opts = vec![format!("--offload-arch={arch}")];
        opts.extend(given.map(|w| format!("-DLLMD_WARP={w}")));
        hiprtc::compile(&src, &opts)
    };
    width("gfx90a", 64, None).unwrap();
    width("gfx1030", 32, None).unwrap();
    width("gfx1030", 32, Some(32)).unwrap();
    assert!(width("gfx90a", 64, Some(32)).is_err(), "the host's width wins");
    // Where the compiler has no macro (ROCm 7.2 on), HIP's warpSize stands in: the
    // kernels compile with it too.
    let src =
        kernels_source().replace("#if defined(LLMD_WARP)", "#if 0").replace("defined(__AMDGCN_WAVEFRONT_SIZE)", "0");
    assert!(src.contains("#if 0") && src.contains("#elif 0"), "the prelude's branches moved");
    assert_code_object(&hiprtc::compile(&src, &["--offload-arch=gfx90a".into()]).unwrap(), "gfx90a, warpSize");
    // A kernel that does not compile comes back with the compiler's log.
    let err = hiprtc::compile("extern \"C\" __global__ void k() { undeclared(); }", &["--offload-arch=gfx90a".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("undeclared"), "{err}");
}

/// Each kernel and the whole forward pass against the CPU engine, on an AMD GPU
/// (`gpu::parity`, the same checks as CUDA's). Run on one with
/// `cargo test -p llmd-engine --features rocm -- --ignored rocm::tests::needs_hardware::`.
mod needs_hardware {
    use super::super::Rocm;
    use crate::gpu::parity;

    #[test]
    #[ignore = "needs an AMD GPU with ROCm"]
    fn rms_norm_rope_and_silu_match_the_cpu() {
        parity::elementwise_kernels_match_the_cpu::<Rocm>();
    }

    #[test]
    #[ignore = "needs an AMD GPU with ROCm"]
    fn paged_attention_matches_the_reference_for_decode_and_chunked_prefill_with_gqa() {
        parity::paged_attention_matches_the_reference_for_decode_and_chunked_prefill_with_gqa::<Rocm>();
    }

    #[test]
    #[ignore = "needs an AMD GPU with ROCm"]
    fn the_gpu_forward_pass_matches_the_cpu_runner() {
        parity::the_forward_pass_matches_the_cpu_runner::<Rocm>();
    }

    #[test]
    #[ignore = "needs an AMD GPU with ROCm"]
    fn blocks_exported_from_the_gpu_continue_identically_and_engines_agree() {
        parity::exported_blocks_continue_identically_and_engines_agree::<Rocm>();
    }
}
