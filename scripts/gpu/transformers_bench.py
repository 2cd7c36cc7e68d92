"""Hugging Face transformers `generate` on the same Llama shapes as llmd's gpu_bench
(random bf16 weights, on the device), for the comparison issue 15 asks for. Runs on the
GPU machine (scripts/gpu/run.sh). Prints Markdown rows: decode tokens/s at batch 1, 32
and 128 after a 512-token prompt, timed as the difference between generating 65 and 1
tokens (so prefill is left out), eager attention.
"""

import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}


def gen(model, ids, n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    print(f"transformers on {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| shape | batch | context | step (ms) | tokens/s |")
    print("|---|---|---|---|---|")
    for name in sys.argv[1:] or ["1b", "8b"]:
        cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                          attn_implementation="eager", **SHAPES[name])
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16).eval()
        for batch in [1, 32, 128]:
            ids = torch.randint(0, 128000, (batch, 512), device="cuda")
            gen(model, ids, 2)  # warm-up
            step = (gen(model, ids, 65) - gen(model, ids, 1)) / 64
            print(f"| transformers {name} | {batch} | 512 | {step * 1e3:.2f} | {batch / step:.0f} |")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
