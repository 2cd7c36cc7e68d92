#!/usr/bin/env bash
# llmd's CPU engine and llama.cpp on the same GGUF file and threads, in one run:
# prefill of a 128-token prompt, decode at batch 1, 8 and 32 (BENCHMARKS.md).
#   bash scripts/gguf/bench.sh [THREADS]      (default: all cores)
# Needs llama-cpp-python (pip install llama-cpp-python==0.3.36, built from source).
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
path=$(bash scripts/gguf/fetch_smollm2.sh)
cargo build --release --quiet -p llmd-engine --example gguf_bench
./target/release/examples/gguf_bench "$path" "$threads" | sed "s/^| F32 |/| llmd, f32 inputs ($threads threads) |/; s/^| Int8 |/| llmd, 8-bit inputs ($threads threads) |/"
python3 scripts/gguf/llama_cpp_bench.py "$path" "$threads" 2>/dev/null
