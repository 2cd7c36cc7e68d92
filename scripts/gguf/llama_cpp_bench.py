"""llama.cpp on a GGUF file, as gguf_bench measures llmd: prefill tokens/s of a 128-token
prompt and decode tokens/s at batch 1, 8 and 32 (one token per sequence per llama_decode
call, 64 steps after a warm-up), with the given threads. Prints a Markdown table row.

    pip install llama-cpp-python==0.3.36
    python3 scripts/gguf/llama_cpp_bench.py FILE.gguf THREADS
"""
import sys
import time

import llama_cpp as L

PROMPT, STEPS = 128, 64
path, threads = sys.argv[1], int(sys.argv[2])
L.llama_backend_init()
model = L.llama_model_load_from_file(path.encode(), L.llama_model_default_params())
vocab = L.llama_model_get_vocab(model)


def context(n_seq):
    p = L.llama_context_default_params()
    p.n_ctx = n_seq * (PROMPT + STEPS + 16)
    p.n_batch = max(PROMPT, n_seq)
    p.n_ubatch = max(PROMPT, n_seq)
    p.n_seq_max = n_seq
    p.n_threads = threads
    p.n_threads_batch = threads
    return L.llama_init_from_model(model, p)


def decode(ctx, batch, items):
    # items: (token, pos, seq, wants_logits)
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, logits) in enumerate(items):
        batch.token[i] = tok
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits
    rc = L.llama_decode(ctx, batch)
    assert rc == 0, f"llama_decode returned {rc}"


prompt = [1000 + i * 7 for i in range(PROMPT)]
row = f"| llama.cpp ({threads} threads) |"
ctx = context(1)
batch = L.llama_batch_init(max(PROMPT, 32), 0, 32)
for rnd in range(2):
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    t = time.perf_counter()
    decode(ctx, batch, [(tok, i, 0, i == PROMPT - 1) for i, tok in enumerate(prompt)])
    elapsed = time.perf_counter() - t
row += f" {PROMPT / elapsed:.0f} tok/s |"
L.llama_free(ctx)
for n in (1, 8, 32):
    ctx = context(n)
    for s in range(n):
        decode(ctx, batch, [(tok, i, s, i == PROMPT - 1) for i, tok in enumerate(prompt)])
    decode(ctx, batch, [(2000 + s, PROMPT, s, True) for s in range(n)])  # warm-up
    t = time.perf_counter()
    for step in range(1, STEPS + 1):
        decode(ctx, batch, [(2000 + s, PROMPT + step, s, True) for s in range(n)])
    row += f" {n * STEPS / (time.perf_counter() - t):.1f} tok/s |"
    L.llama_free(ctx)
print(row)
