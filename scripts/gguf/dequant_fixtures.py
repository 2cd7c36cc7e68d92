"""Dequantization fixtures for llmd-engine's ggml block decoders.

Random blocks of each supported type (scales kept finite), dequantized by gguf-py,
llama.cpp's own Python package: an implementation independent of ours.

    pip install gguf==0.19.0 numpy
    python3 scripts/gguf/dequant_fixtures.py > llmd-engine/tests/fixtures/gguf/dequant.json
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

rng = np.random.default_rng(20261127)


def f16(x):
    return np.array([x], dtype=np.float16).tobytes()


def block(qtype):
    n, size = GGML_QUANT_SIZES[qtype]
    b = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    # Scales as finite halves: random bits could be NaN or infinity.
    if qtype in (T.Q8_0, T.Q4_0, T.Q5_0):
        b[0:2] = f16(rng.uniform(-0.1, 0.1))
    elif qtype in (T.Q4_1, T.Q5_1):
        b[0:2] = f16(rng.uniform(0.001, 0.1))
        b[2:4] = f16(rng.uniform(-1, 1))
    elif qtype in (T.Q4_K, T.Q5_K):
        b[0:2] = f16(rng.uniform(0.0001, 0.01))
        b[2:4] = f16(rng.uniform(0.0001, 0.01))
    elif qtype == T.Q6_K:
        b[208:210] = f16(rng.uniform(-0.01, 0.01))
    elif qtype == T.F16:
        b = bytearray(rng.normal(size=n).astype(np.float16).tobytes())
    elif qtype == T.BF16:
        f = rng.normal(size=n).astype(np.float32)
        b = bytearray((f.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    elif qtype == T.F32:
        b = bytearray(rng.normal(size=n).astype(np.float32).tobytes())
    return bytes(b)


cases = []
# Q5_0 and Q5_1 last, so the earlier cases keep the random draws they were made with.
for qtype in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1):
    n, _ = GGML_QUANT_SIZES[qtype]
    blocks = 3 if n > 1 else 40
    raw = b"".join(block(qtype) for _ in range(blocks))
    values = dequantize(np.frombuffer(raw, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
    cases.append({"type": qtype.name, "id": int(qtype), "hex": raw.hex(), "values": [float(v) for v in values]})
json.dump({"generator": "scripts/gguf/dequant_fixtures.py", "gguf_py": "0.19.0", "cases": cases}, sys.stdout)
