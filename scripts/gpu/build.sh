#!/usr/bin/env bash
# Builds, on this machine (no GPU, same x86-64 as the device machine), what
# scripts/gpu/run.sh runs on the GPU machine, into target/gpu/ (an ignored path the
# device tool carries): the engine's test binary with the CUDA backend, and the llmd
# binary with it. The device machine has CUDA and Python but no Rust.
#
#   bash scripts/gpu/build.sh
#   then, with the device tool: command "bash scripts/gpu/run.sh", carry ["target/gpu"]
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p target/gpu
cargo build --release --features cuda --bin llmd
cp target/release/llmd target/gpu/llmd
cargo build --release -p llmd-engine --features cuda --example gpu_bench
cp target/release/examples/gpu_bench target/gpu/gpu_bench
# The engine's library tests (the GPU ones among them, under needs_hardware).
exe=$(cargo test --release -p llmd-engine --features cuda --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
[ -n "$exe" ] || { echo "no engine test binary built" >&2; exit 1; }
cp "$exe" target/gpu/engine-tests
strip target/gpu/llmd target/gpu/engine-tests target/gpu/gpu_bench
# The openai client's wheels, for a device machine without it (pure Python where they
# can be; pydantic-core for the device's CPython 3.10-3.13).
rm -rf target/gpu/wheels && mkdir -p target/gpu/wheels
for py in 3.10 3.11 3.12 3.13; do
    python3 -m pip download --quiet --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64 \
        -d target/gpu/wheels "openai==3.57.0" > /dev/null 2>&1 || echo "no openai wheels for Python $py" >&2
done
du -b target/gpu/* | awk '{s += $1; print} END {printf "total %.1f MiB (the device tool carries 64 MiB)\n", s / 1048576}'
