#!/usr/bin/env bash
# Installs the field load generators `llmd bench --driver` runs, each in its own venv at
# the repository root:
#   .venv-inference-perf  inference-perf (llm-d's benchmark tool; needs Python >= 3.12)
#   .venv-aiperf          aiperf (needs Python >= 3.10; no torch)
# Neither needs a GPU or a download at run time: `llmd bench` hands them a local
# tokenizer and the scenario's prompts. guidellm is not installed: it pulls CUDA torch.
# Prints the two programs' paths as LLMD_INFERENCE_PERF=... / LLMD_AIPERF=... lines.
set -euo pipefail
cd "$(dirname "$0")/../.."

# A working python of the first listed version found under pyenv or on PATH (a pyenv
# shim on PATH may exist and still refuse to run).
find_python() {
    local v p
    for v in "$@"; do
        for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" "$(command -v "python$v" || true)"; do
            if [ -n "$p" ] && [ -x "$p" ] && "$p" --version >/dev/null 2>&1; then echo "$p"; return 0; fi
        done
    done
    return 1
}

install() { # venv python requirements
    local venv=$1 python=$2 reqs=$3
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
}

py312=$(find_python 3.12 3.13) || { echo "inference-perf needs Python 3.12 or 3.13 (PATH or pyenv)" >&2; exit 1; }
py311=$(find_python 3.11 3.12 3.13) || { echo "aiperf needs Python 3.11+ (PATH or pyenv)" >&2; exit 1; }
echo "== inference-perf on $("$py312" --version)" >&2
install .venv-inference-perf "$py312" scripts/loadgen/inference-perf.txt
echo "== aiperf on $("$py311" --version)" >&2
install .venv-aiperf "$py311" scripts/loadgen/aiperf.txt
echo "LLMD_INFERENCE_PERF=$PWD/.venv-inference-perf/bin/inference-perf"
echo "LLMD_AIPERF=$PWD/.venv-aiperf/bin/aiperf"
