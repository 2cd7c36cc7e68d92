#!/usr/bin/env python3
"""Measure the step costs the simulator's LatencyModel stands for, on a real GPU.

The simulator (llmd-engine/src/sim.rs) prices a step as
    step + prefill * prompt_tokens + sum over decoding sequences of (decode + context * cached_tokens)
and claims to stand for Llama-3.1-8B in bf16 on one H100. This script runs that model's
exact shapes (32 layers, hidden 4096, 32 query / 8 KV heads of 128, MLP 14336, vocabulary
128256) with random bf16 weights through PyTorch on the GPU, and fits the four constants:

- decode steps (one new token for each of B sequences with L cached tokens each) replayed
  as CUDA graphs, as vLLM runs decode, over a grid of B and L: least squares of
  t = step + decode * B + context * B * L;
- prefill of N prompt tokens (no cache), also replayed as CUDA graphs (vLLM V1 runs
  mixed steps as piecewise CUDA graphs; eager PyTorch would measure Python's launch
  overhead instead): slope = prefill;
- a prefill of N new tokens over a cached prefix of P tokens, to show what attending to
  a cached prefix adds to a hit.

It is not vLLM: no fused kernels beyond PyTorch's (flash attention through SDPA, cuBLAS
GEMMs), no paged KV. It measures what the hardware gives for this model's arithmetic
and memory traffic, which is what the constants stand for. Writes JSON to --out.

Usage: python3 scripts/gpu/calibrate_sim.py --out results.json [--small] [--device cpu]
(--small: a 2-layer toy shape, for checking the script where there is no GPU).
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

LLAMA_31_8B = dict(layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, mlp=14336, vocab=128256)
SMALL = dict(layers=2, hidden=256, heads=4, kv_heads=2, head_dim=64, mlp=512, vocab=1024)


class Model:
    """The decoder's arithmetic with random weights: RMSNorm, fused QKV, RoPE, GQA
    attention over a contiguous KV cache, O projection, SiLU-gated MLP, LM head on the
    rows that need logits."""

    def __init__(self, shape, device, dtype):
        self.s = shape
        self.device = device
        self.dtype = dtype
        g = torch.Generator(device=device)
        g.manual_seed(3)

        def w(rows, cols):
            t = torch.empty(rows, cols, device=device, dtype=dtype)
            t.normal_(0.0, 0.02, generator=g)
            return t

        h, hd = shape["hidden"], shape["head_dim"]
        qkv = (shape["heads"] + 2 * shape["kv_heads"]) * hd
        self.embed = w(shape["vocab"], h)
        self.lm_head = w(shape["vocab"], h)
        self.layers = []
        for _ in range(shape["layers"]):
            self.layers.append(
                dict(
                    ln1=torch.ones(h, device=device, dtype=dtype),
                    ln2=torch.ones(h, device=device, dtype=dtype),
                    qkv=w(qkv, h),
                    o=w(h, shape["heads"] * hd),
                    gate_up=w(2 * shape["mlp"], h),
                    down=w(h, shape["mlp"]),
                )
            )
        inv = 1.0 / (500000.0 ** (torch.arange(0, hd, 2, device=device, dtype=torch.float32) / hd))
        self.inv_freq = inv

    def weight_bytes(self):
        n = self.embed.numel() + self.lm_head.numel()
        for l in self.layers:
            n += sum(t.numel() for t in l.values())
        return n * self.embed.element_size()

    def kv_cache(self, batch, max_len):
        s = self.s
        shape = (batch, s["kv_heads"], max_len, s["head_dim"])
        return [
            (torch.zeros(shape, device=self.device, dtype=self.dtype), torch.zeros(shape, device=self.device, dtype=self.dtype))
            for _ in range(s["layers"])
        ]

    def rope(self, x, pos):
        # x: [B, H, T, D]; pos: [T] or [B, 1] positions
        f = pos.to(torch.float32)[..., None] * self.inv_freq  # [.., T, D/2]
        cos, sin = f.cos().to(x.dtype), f.sin().to(x.dtype)
        if cos.dim() == 2:
            cos, sin = cos[None, None], sin[None, None]
        else:
            cos, sin = cos[:, None], sin[:, None]
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    @staticmethod
    def rms(x, w):
        v = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(v + 1e-5)).to(x.dtype) * w

    def forward(self, ids, cache, start, logits_rows):
        """ids: [B, T]; cache rows hold `start` cached tokens (a python int, the same for
        every row, or a [B] tensor for decode with T == 1). Writes T new K/V at start.."""
        s = self.s
        B, T = ids.shape
        H, KV, D = s["heads"], s["kv_heads"], s["head_dim"]
        x = F.embedding(ids, self.embed)
        if isinstance(start, int):
            pos = torch.arange(start, start + T, device=self.device)
        else:
            pos = start[:, None]  # decode: [B, 1]
        for i, l in enumerate(self.layers):
            hx = self.rms(x, l["ln1"])
            qkv = hx @ l["qkv"].t()
            q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
            q = self.rope(q.view(B, T, H, D).transpose(1, 2), pos)
            k = self.rope(k.view(B, T, KV, D).transpose(1, 2), pos)
            v = v.view(B, T, KV, D).transpose(1, 2)
            kc, vc = cache[i]
            if isinstance(start, int):
                kc[:, :, start : start + T] = k
                vc[:, :, start : start + T] = v
                # GQA by repeating K/V heads (a copy; small against the prefill's GEMMs)
                keys = kc[:, :, :T].repeat_interleave(H // KV, dim=1) if start == 0 else None
                vals = vc[:, :, :T].repeat_interleave(H // KV, dim=1) if start == 0 else None
                # causal within the new tokens, everything cached before them visible
                if start == 0:
                    a = F.scaled_dot_product_attention(q, keys, vals, is_causal=True)
                else:
                    # A chunk after a cached prefix. PyTorch's causal flag aligns the mask
                    # top-left, and an explicit mask leaves the flash kernel: attend to
                    # every key instead (the chunk's last few causal positions over-
                    # counted), with the query heads of a KV head as its rows, so K/V are
                    # read once, as a paged prefill kernel does.
                    g = H // KV
                    qg = q.reshape(B, KV, g, T, D).reshape(B, KV, g * T, D)
                    a = F.scaled_dot_product_attention(qg, kc[:, :, : start + T], vc[:, :, : start + T])
                    a = a.reshape(B, KV, g, T, D).reshape(B, H, T, D)
            else:
                # decode: every row has the same length here (start is uniform), written in
                # place; the query heads sharing a KV head ride as its 'query rows', so K/V
                # are read once per KV head with no copy, as a GQA decode kernel does
                idx = start[0]
                kc.index_copy_(2, idx.view(1), k)
                vc.index_copy_(2, idx.view(1), v)
                a = F.scaled_dot_product_attention(q.reshape(B, KV, H // KV, D), kc, vc)
                a = a.reshape(B, H, 1, D)
            x = x + a.transpose(1, 2).reshape(B, T, H * D) @ l["o"].t()
            hx = self.rms(x, l["ln2"])
            gu = hx @ l["gate_up"].t()
            gate, up = gu.chunk(2, dim=-1)
            x = x + (F.silu(gate) * up) @ l["down"].t()
        last = x[:, -logits_rows:]
        return last @ self.lm_head.t()


def graphed(fn, device):
    """`fn` captured as a CUDA graph on a GPU (launch overhead gone, as vLLM's CUDA
    graphs and piecewise-compiled steps do), or `fn` itself elsewhere. Returns the callable
    and what must stay alive while it is used."""
    if device != "cuda":
        return (lambda: _nograd(fn)), None
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(s):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn()
    return graph.replay, graph


def _nograd(fn):
    with torch.no_grad():
        return fn()


def release(device):
    if device == "cuda":
        torch.cuda.empty_cache()


def timed(fn, device, warmup, iters):
    """Median seconds of `iters` calls after `warmup`, timed with CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    out = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
    else:
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(out), min(out), max(out)


def lstsq(rows, ys):
    """Least squares for y = rows · beta (small, plain Python via torch)."""
    A = torch.tensor(rows, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)[:, None]
    beta = torch.linalg.lstsq(A, y).solution[:, 0]
    fit = (A @ beta[:, None])[:, 0]
    resid = ((fit - y[:, 0]).abs() / y[:, 0]).max().item()
    return beta.tolist(), resid


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--small", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()
    dev = args.device
    shape = SMALL if args.small else LLAMA_31_8B
    dtype = torch.bfloat16
    torch.manual_seed(3)
    res = dict(shape=shape, dtype="bf16", torch=torch.__version__)
    if dev == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    t0 = time.time()
    m = Model(shape, dev, dtype)
    res["weight_bytes"] = m.weight_bytes()
    print(f"weights {m.weight_bytes() / 1e9:.2f} GB in {time.time() - t0:.1f}s", flush=True)

    # --- decode grid, CUDA graphs ---
    if args.small:
        batches, lengths = [1, 4, 8], [64, 256]
    else:
        batches, lengths = [1, 8, 32, 64, 128], [512, 2048, 4096]
    decode = []
    for L in lengths:
        for B in batches:
            kv_bytes = 2 * shape["layers"] * B * shape["kv_heads"] * (L + 1) * shape["head_dim"] * 2
            if kv_bytes > 40e9:
                continue
            cache = m.kv_cache(B, L + 1)
            ids = torch.zeros(B, 1, dtype=torch.long, device=dev)
            start = torch.full((B,), L, dtype=torch.long, device=dev)
            fn, keep = graphed(lambda: m.forward(ids, cache, start, 1), dev)
            med, lo, hi = timed(fn, dev, 3, args.iters)
            decode.append(dict(batch=B, context=L, seconds=med, min=lo, max=hi))
            print(f"decode B={B:4d} L={L:5d}: {med * 1e3:8.3f} ms (min {lo * 1e3:.3f}, max {hi * 1e3:.3f})", flush=True)
            del cache, fn, keep
            release(dev)
    (step, per_seq, per_ctx), dresid = lstsq([[1, d["batch"], d["batch"] * d["context"]] for d in decode], [d["seconds"] for d in decode])
    res["decode"] = decode
    res["decode_fit"] = dict(step_s=step, per_decode_seq_s=per_seq, per_context_token_s=per_ctx, max_rel_residual=dresid)
    print(f"decode fit: step {step * 1e3:.3f} ms, per seq {per_seq * 1e6:.2f} us, per context token {per_ctx * 1e9:.2f} ns (max residual {dresid:.1%})", flush=True)

    # --- prefill (one sequence, nothing cached), graphed like decode ---
    sizes = [32, 64, 128] if args.small else [16, 64, 256, 512, 1024, 2048, 4096, 8192]
    prefill = []
    for N in sizes:
        cache = m.kv_cache(1, N)
        ids = torch.randint(0, shape["vocab"], (1, N), device=dev)
        fn, keep = graphed(lambda: m.forward(ids, cache, 0, 1), dev)
        med, lo, hi = timed(fn, dev, 2, max(5, args.iters // 2))
        prefill.append(dict(tokens=N, seconds=med, min=lo, max=hi))
        print(f"prefill N={N:5d}: {med * 1e3:8.3f} ms ({N / med:,.0f} tokens/s)", flush=True)
        del cache, fn, keep
        release(dev)
    # the slope over the larger sizes: small prefills are weight-read bound like decode
    big = [d for d in prefill if d["tokens"] >= sizes[len(sizes) // 2]]
    (a0, a1), aresid = lstsq([[1, d["tokens"]] for d in prefill], [d["seconds"] for d in prefill])
    res["prefill_fit_all"] = dict(intercept_s=a0, per_prefill_token_s=a1, max_rel_residual=aresid)
    print(f"prefill fit (all N): {a1 * 1e6:.2f} us/token, intercept {a0 * 1e3:.2f} ms (max residual {aresid:.1%})", flush=True)
    (p0, per_tok), presid = lstsq([[1, d["tokens"]] for d in big], [d["seconds"] for d in big])
    res["prefill"] = prefill
    res["prefill_fit"] = dict(intercept_s=p0, per_prefill_token_s=per_tok, max_rel_residual=presid, over_tokens=[d["tokens"] for d in big])
    print(f"prefill fit (N >= {big[0]['tokens']}): {per_tok * 1e6:.2f} us/token, intercept {p0 * 1e3:.2f} ms", flush=True)

    # --- a hit: 128 new tokens over a cached prefix ---
    prefixes = [0, 64, 256] if args.small else [0, 512, 2048, 8192]
    news = [16, 32] if args.small else [16, 80, 128, 512]
    hit = []
    for N in news:
        for P in prefixes:
            cache = m.kv_cache(1, P + N)
            ids = torch.randint(0, shape["vocab"], (1, N), device=dev)
            fn, keep = graphed(lambda: m.forward(ids, cache, P, 1), dev)
            med, lo, hi = timed(fn, dev, 2, max(5, args.iters // 2))
            hit.append(dict(new_tokens=N, cached_prefix=P, seconds=med))
            print(f"chunk of {N} over cached {P:5d}: {med * 1e3:8.3f} ms", flush=True)
            del cache, fn, keep
            release(dev)
    res["prefill_over_prefix"] = hit

    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {args.out} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
