#!/usr/bin/env bash
# Runs on the GPU machine (after scripts/gpu/build.sh here): the GPU tests,
# `llmd serve --device cuda` answering the openai client, then the benchmarks (llmd's
# gpu_bench against the copy ceiling, transformers on the same shapes). Results go
# under $OUT.
# Each step has its own timeout, all well inside the device tool's 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
{ nvidia-smi; nvcc --version; } > "$OUT/device.txt" 2>&1

# NVRTC and cuBLAS: the pip wheels torch brings, then the CUDA toolkit's, which (put
# in front last) wins: its NVRTC matches the driver, so the PTX it makes loads.
for pkg in cuda_nvrtc cublas; do
    d=$(python3 -c "import nvidia.$pkg, os; print(os.path.join(nvidia.$pkg.__path__[0], 'lib'))" 2>/dev/null) &&
        export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >> "$OUT/device.txt"

echo "== GPU tests" >&2
timeout 240 target/gpu/engine-tests --include-ignored --test-threads 1 cuda:: > "$OUT/gpu-tests.txt" 2>&1
echo "gpu tests: exit $?" | tee -a "$OUT/summary.txt"

echo "== llmd serve --device cuda, then the openai client" >&2
target/gpu/llmd serve --device cuda --port 8123 > "$OUT/serve.log" 2>&1 &
serve=$!
for _ in $(seq 1 120); do
    curl -sf localhost:8123/health > /dev/null && break
    sleep 1
done
# The official client if the machine has it (wheels carried from here otherwise), else
# the same requests over plain HTTP, said so.
[ -d target/gpu/wheels ] && python3 -m pip install --quiet --no-index --find-links target/gpu/wheels openai > "$OUT/pip.txt" 2>&1
timeout 60 python3 - > "$OUT/openai.txt" 2>&1 <<'PY'
base = "http://127.0.0.1:8123/v1"
try:
    import openai
except ImportError:
    openai = None
if openai:
    c = openai.OpenAI(base_url=base, api_key="none")
    r = c.completions.create(model="llmd-tiny", prompt="The GPU says", max_tokens=12, temperature=0)
    print("openai", openai.__version__, "completion:", repr(r.choices[0].text), r.usage)
    r = c.chat.completions.create(model="llmd-tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0)
    print("chat:", repr(r.choices[0].message.content), r.usage)
else:
    import json, urllib.request
    print("no openai package here: plain HTTP instead")
    body = json.dumps({"model": "llmd-tiny", "prompt": "The GPU says", "max_tokens": 12, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/completions", body, {"Content-Type": "application/json"})
    print(urllib.request.urlopen(req, timeout=30).read().decode())
PY
echo "openai client: exit $?" | tee -a "$OUT/summary.txt"
kill -TERM "$serve" 2>/dev/null
wait "$serve" 2>/dev/null

echo "== benchmarks: llmd's kernels and decode against their ceilings, then transformers" >&2
timeout 240 target/gpu/gpu_bench 1b 8b > "$OUT/gpu_bench.md" 2>&1
echo "gpu_bench: exit $?" | tee -a "$OUT/summary.txt"
timeout 240 python3 scripts/gpu/transformers_bench.py 1b 8b > "$OUT/transformers.md" 2>&1
echo "transformers: exit $?" | tee -a "$OUT/summary.txt"
exit 0
