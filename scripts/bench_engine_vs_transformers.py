#!/usr/bin/env python3
"""One-replica throughput: llmd's engine vs transformers' CPU `generate`, same run.

Writes a random Llama checkpoint (about 60M parameters, f32) to a temporary directory,
then for batch 1 and batch 32 runs transformers `generate` (greedy, EOS ignored, torch
limited to the machine's cores) and `cargo run --release --example throughput` on the
same checkpoint and the same prompt token ids. Prints a Markdown table of output tokens/s
and the ratio. Needs torch and transformers (not a CI dependency).

    python scripts/bench_engine_vs_transformers.py [--prompt-len 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    # Same ids as examples/throughput.rs.
    return [[(b * 131 + j * 17) % (vocab - 10) + 5 for j in range(length)] for b in range(batch)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batches", default="1,32")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=2048,
    )
    rows = []
    with tempfile.TemporaryDirectory() as d:
        model = LlamaForCausalLM(cfg).eval()
        model.save_pretrained(d)
        params = sum(p.numel() for p in model.parameters())
        subprocess.run(["cargo", "build", "--release", "--example", "throughput"], check=True)
        for batch in [int(b) for b in args.batches.split(",")]:
            ids = torch.tensor(prompts(batch, args.prompt_len, cfg.vocab_size))
            with torch.no_grad():
                model.generate(ids[:, :8], max_new_tokens=2, do_sample=False)  # warm-up
                t = time.perf_counter()
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_tokens,
                    min_new_tokens=args.max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                )
                hf_s = time.perf_counter() - t
            hf_tokens = (out.shape[1] - args.prompt_len) * batch
            res = subprocess.run(
                ["cargo", "run", "-q", "--release", "--example", "throughput", "--", d, str(batch),
                 str(args.prompt_len), str(args.max_tokens)],
                check=True, capture_output=True, text=True,
            )
            ours = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append((batch, hf_tokens / hf_s, ours["output_tokens_per_s"]))
    print(f"checkpoint: random Llama, {params / 1e6:.0f}M params, f32; prompt {args.prompt_len} tokens, "
          f"{args.max_tokens} output tokens per sequence; torch {torch.__version__} with {torch.get_num_threads()} threads")
    print("| batch | transformers generate (tok/s) | llmd engine (tok/s) | llmd / transformers |")
    print("|---|---|---|---|")
    for batch, hf, ours in rows:
        print(f"| {batch} | {hf:.1f} | {ours:.1f} | {ours / hf:.2f}x |")


if __name__ == "__main__":
    main()
