"""An f32 reference for llmd's GGUF path: the file's tensors dequantized by gguf-py
(llama.cpp's own Python package) and run through a plain NumPy Llama in f32, which is
what transformers' GGUF loader computes (it dequantizes to f32 and runs the Hugging
Face model). For the prompts of smollm2.json: the last position's top 64 logits and 16
greedy tokens.

    pip install gguf==0.19.0 numpy
    path=$(bash scripts/gguf/fetch_smollm2.sh)
    python3 scripts/gguf/reference_f32.py "$path" > llmd-engine/tests/fixtures/gguf/smollm2_f32.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

reader = GGUFReader(sys.argv[1])
meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
arch = meta["general.architecture"]
layers = meta[f"{arch}.block_count"]
hidden = meta[f"{arch}.embedding_length"]
heads = meta[f"{arch}.attention.head_count"]
kv_heads = meta[f"{arch}.attention.head_count_kv"]
eps = np.float32(meta[f"{arch}.attention.layer_norm_rms_epsilon"])
theta = meta[f"{arch}.rope.freq_base"]
hd = hidden // heads
tensors = {t.name: t for t in reader.tensors}


def weight(name):
    t = tensors[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float32)
    return a.reshape([int(d) for d in reversed(t.shape)])


def unpermute(w, n):
    # llama.cpp's converter interleaved each head's RoPE halves; undo it.
    return w.reshape(n, hd // 2, 2, -1).swapaxes(1, 2).reshape(n * hd, -1)


W = {}
for i in range(layers):
    p = f"blk.{i}."
    W[i] = {
        "attn_norm": weight(p + "attn_norm.weight"), "ffn_norm": weight(p + "ffn_norm.weight"),
        "q": unpermute(weight(p + "attn_q.weight"), heads), "k": unpermute(weight(p + "attn_k.weight"), kv_heads),
        "v": weight(p + "attn_v.weight"), "o": weight(p + "attn_output.weight"),
        "gate": weight(p + "ffn_gate.weight"), "up": weight(p + "ffn_up.weight"), "down": weight(p + "ffn_down.weight"),
    }
embed = weight("token_embd.weight")
out_norm = weight("output_norm.weight")
lm_head = weight("output.weight") if "output.weight" in tensors else embed


def rms(x, w):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def forward(ids):
    n = len(ids)
    x = embed[ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(np.arange(n), inv)
    cos, sin = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]

    def rope(q):
        a, b = q[..., : hd // 2], q[..., hd // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for i in range(layers):
        w = W[i]
        xn = rms(x, w["attn_norm"])
        q = rope((xn @ w["q"].T).reshape(n, heads, hd))
        k = np.repeat(rope((xn @ w["k"].T).reshape(n, kv_heads, hd)), heads // kv_heads, 1)
        v = np.repeat((xn @ w["v"].T).reshape(n, kv_heads, hd), heads // kv_heads, 1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.float32(np.sqrt(hd)) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, hidden) @ w["o"].T
        xn = rms(x, w["ffn_norm"])
        g, u = xn @ w["gate"].T, xn @ w["up"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w["down"].T
    return rms(x[-1:], out_norm)[0] @ lm_head.T


fixture = json.load(open(__file__.rsplit("/", 3)[0] + "/llmd-engine/tests/fixtures/gguf/smollm2.json"))
runs = []
for run in fixture["runs"]:
    ids = list(run["ids"])
    last = forward(ids)
    top = np.argsort(-last)[:64]
    greedy, margins = [], []
    logits = last
    for _ in range(16):
        order = np.argsort(-logits)[:2]
        greedy.append(int(order[0]))
        margins.append(float(logits[order[0]] - logits[order[1]]))
        logits = forward(ids + greedy)
    runs.append({"ids": ids, "top_ids": [int(i) for i in top], "top_logits": [float(last[i]) for i in top],
                 "greedy": greedy, "greedy_margins": margins})
json.dump({"generator": "scripts/gguf/reference_f32.py", "runs": runs}, sys.stdout, indent=1)
