//! What runs without a GPU: the probe's error, and the kernels compiling with NVRTC.
//! Kernel results against the CPU reference need a GPU: `needs_hardware::`.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn asking_for_a_gpu_without_a_driver_says_so() {
    match probe(0) {
        Ok(d) => {
            // On a GPU machine: a real device.
            assert!(driver_available());
            assert!(d.total_memory > 0 && d.arch.starts_with("compute_"), "{d:?}");
        }
        Err(e) => {
            let e = e.to_string();
            if driver_available() {
                assert!(e.contains("CUDA"), "{e}");
            } else {
                assert!(e.contains("no CUDA driver found") && e.contains("--device cpu"), "{e}");
            }
        }
    }
}

#[test]
#[ignore = "needs NVRTC (scripts/test.sh installs pip's nvidia-cuda-nvrtc-cu12 and sets LD_LIBRARY_PATH)"]
fn the_kernels_compile_for_every_architecture_llmd_targets() {
    assert!(nvrtc_available(), "NVRTC could not be loaded: is its lib directory on LD_LIBRARY_PATH?");
    for arch in ["compute_80", "compute_90"] {
        let ptx = compile(arch).unwrap().to_src();
        assert!(ptx.contains(&format!(".target sm_{}", &arch[8..])), "{arch}");
        for k in kernel_names() {
            assert!(ptx.contains(&format!(".entry {k}(")), "{arch}: {k} missing from the PTX");
        }
    }
    // A kernel that does not compile comes back with the compiler's log.
    let err = cudarc::nvrtc::compile_ptx("extern \"C\" __global__ void k() { undeclared(); }").unwrap_err();
    assert!(format!("{err:?}").contains("undeclared"), "{err:?}");
}

/// Each kernel and the whole forward pass against the CPU engine, on a GPU
/// (`gpu::parity`). Run on one with
/// `cargo test -p llmd-engine --features cuda -- --ignored cuda::tests::needs_hardware::`
/// (scripts/gpu/run.sh does, on the device machine).
mod needs_hardware {
    use super::super::Cuda;
    use crate::gpu::parity;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn rms_norm_rope_and_silu_match_the_cpu() {
        parity::elementwise_kernels_match_the_cpu::<Cuda>();
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn paged_attention_matches_the_reference_for_decode_and_chunked_prefill_with_gqa() {
        parity::paged_attention_matches_the_reference_for_decode_and_chunked_prefill_with_gqa::<Cuda>();
    }

    /// The whole forward pass against the CPU runner: logits within bf16/f16 rounding,
    /// the same greedy tokens, batched equal to solo.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn the_gpu_forward_pass_matches_the_cpu_runner() {
        parity::the_forward_pass_matches_the_cpu_runner::<Cuda>();
    }

    /// KV blocks moved between two GPU engines continue identically; whole engines
    /// agree with the CPU one.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn blocks_exported_from_the_gpu_continue_identically_and_engines_agree() {
        parity::exported_blocks_continue_identically_and_engines_agree::<Cuda>();
    }
}
