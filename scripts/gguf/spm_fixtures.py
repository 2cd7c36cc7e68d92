"""SentencePiece (`tokenizer.ggml.model = "llama"`) fixtures for llmd's GGUF tokenizer,
from llama.cpp (llama-cpp-python) on a small vocabulary trained here.

1. Trains a SentencePiece BPE model (2000 pieces, byte fallback, Llama 2's options:
   identity normalization, extra whitespace kept, a dummy prefix, single digits) on a
   corpus made deterministically from this Python's own docstrings plus a few
   sentences in other Latin and Cyrillic scripts. CJK and emoji stay out of it, so
   they take the byte fallback.
2. Writes a vocabulary-only GGUF the way llama.cpp's `convert_hf_to_gguf.py`
   (`_create_vocab_sentencepiece`, `_set_vocab_sentencepiece`) does: every piece with
   its score and type (unknown 2, control 3, byte 6), then added tokens as a
   checkpoint's `added_tokens_decoder` gives them (score -1000: two control tokens and
   one user-defined), arch "llama" with the hyperparameters llama.cpp reads.
3. Loads it with `llama_cpp.Llama(vocab_only=True)` and records, for each text, the
   ids without and with the BOS (`tokenize(add_bos=..., special=True)`: control tokens
   in the text are parsed, as llmd's Hugging Face tokenizers always do) and
   `llama_detokenize(remove_special=True, unparse_special=False)` of both; the same
   ids with `tokenizer.ggml.add_space_prefix = false` (a second file, not kept); and
   SentencePiece's own `encode`, with whether it agrees.

    pip install llama-cpp-python==0.3.36 gguf==0.19.0 sentencepiece==0.2.3
    python3 scripts/gguf/spm_fixtures.py llmd-engine/tests/fixtures/gguf

writes `spm.gguf` and `spm.json` there. The corpus comes from the running Python's
docstrings (3.11.7 made the checked-in files): another version trains another vocabulary,
so regenerate both files together.
"""
import ctypes
import importlib
import inspect
import io
import json
import os
import platform
import sys
import tempfile

import gguf
import llama_cpp
import sentencepiece as spm
from llama_cpp import Llama

VOCAB = 2000
MODULES = ["builtins", "json", "re", "textwrap", "string", "collections", "itertools", "functools",
           "pathlib", "argparse", "datetime", "decimal", "fractions", "statistics", "heapq", "bisect"]
OTHER_SCRIPTS = [
    "Le café est près de la gare; l'hôtel était fermé à cause de la grève.",
    "Über den Wolken muß die Freiheit wohl grenzenlos sein, sagte der Züricher.",
    "El niño comió una manzana en la mañana, ¿verdad? ¡Sí!",
    "Привет, мир! Это простой пример текста на русском языке.",
    "Naïve coöperation: the résumé of a façade, déjà vu.",
]
# Tokens appended after the SentencePiece pieces, as a checkpoint's added_tokens_decoder
# would add them: (text, GGUF token type).
ADDED = [("<|im_start|>", 3), ("<|im_end|>", 3), ("<|sep|>", 4)]

TEXTS = [
    "",
    " ",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "Numbers: 1234567890, 3.14159, -42 and 1e10.",
    "Unicode: café, naïve, Zürich, 東京, Привет, 🦀🚀, ½ ≠ ∞",
    "<s>Hello</s> world<s>",
    "<|im_start|>user\nSpecial tokens inline<|im_end|>\n<|im_start|>assistant\n",
    "left<|sep|>right <|sep|> spaced",
    "<unk> is the unknown token",
    "def square(x):\n    return x ** 2  # a comment\n\n\nclass A(object):\n\tpass",
    "aaaaaaaaaaaa ====== ------ ...... ____",
    "a ▁literal ▁▁ marker",
    "emoji only: 🦀",
    "zero\u200bwidth and combining e\u0301",
]


def docstrings():
    lines = []
    for name in MODULES:
        mod = importlib.import_module(name)
        docs = [mod.__doc__]
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr)
            docs.append(inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None)
            if inspect.isclass(obj):
                for meth in sorted(vars(obj)):
                    if not meth.startswith("_"):
                        docs.append(inspect.getdoc(getattr(obj, meth, None)))
        for d in docs:
            if d:
                lines += [l.rstrip() for l in d.splitlines() if l.strip()]
    # Deduplicated in first-seen order: inherited docstrings repeat.
    return list(dict.fromkeys(lines))


def train():
    lines = docstrings() + OTHER_SCRIPTS * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=VOCAB,
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue()), len(lines)


def vocab(sp):
    """`_create_vocab_sentencepiece`: tokens, scores and types."""
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        t = 1
        if sp.IsUnknown(i):
            t = 2
        elif sp.IsControl(i):
            t = 3
        elif sp.IsUnused(i):
            t = 5
        elif sp.IsByte(i):
            t = 6
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        types.append(t)
    for text, t in ADDED:
        tokens.append(text)
        scores.append(-1000.0)
        types.append(t)
    return tokens, scores, types


def write_gguf(path, tokens, scores, types, add_space_prefix=None):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("spm-fixture")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    # What gguf.SpecialVocab writes for a Llama 2 checkpoint.
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if add_space_prefix is not None:
        w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def detokenize(llm, ids):
    """llama.cpp's own detokenizer, BOS/EOS removed as the vocabulary says, control
    tokens not rendered."""
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    buf = ctypes.create_string_buffer(64 * len(ids) + 16)
    n = llama_cpp.llama_detokenize(llm._model.vocab, arr, len(ids), buf, len(buf), True, False)
    assert n >= 0, n
    return buf.raw[:n].decode("utf-8")


def run(path, texts):
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    out = []
    for t in texts:
        ids = llm.tokenize(t.encode(), add_bos=False, special=True)
        ids_bos = llm.tokenize(t.encode(), add_bos=True, special=True)
        out.append({"text": t, "ids": ids, "ids_bos": ids_bos,
                    "decoded": detokenize(llm, ids), "decoded_bos": detokenize(llm, ids_bos)})
    return out


def main():
    out_dir = sys.argv[1]
    sp, n_lines = train()
    tokens, scores, types = vocab(sp)
    gguf_path = os.path.join(out_dir, "spm.gguf")
    write_gguf(gguf_path, tokens, scores, types)
    # Longer texts: corpus-like prose and code, to exercise many merges.
    texts = TEXTS + [inspect.getdoc(str.format_map) + "\n" + inspect.getdoc(sorted),
                     inspect.getsource(docstrings)]
    cases = run(gguf_path, texts)
    for c in cases:
        ids = sp.encode(c["text"])
        c["sentencepiece_agrees"] = ids == c["ids"]
        if ids != c["ids"]:
            c["sentencepiece"] = ids
    with tempfile.TemporaryDirectory() as tmp:
        plain = os.path.join(tmp, "spm-no-prefix.gguf")
        write_gguf(plain, tokens, scores, types, add_space_prefix=False)
        no_prefix = run(plain, texts)
    head = {
        "generator": "scripts/gguf/spm_fixtures.py",
        "llama_cpp_python": llama_cpp.__version__,
        "sentencepiece": spm.__version__,
        "python": platform.python_version(),
        "corpus_lines": n_lines,
        "n_vocab": len(tokens),
        "bos": 1, "eos": 2, "unk": 0,
    }
    # One case a line: diffs stay readable without an id a line.
    rows = lambda cs: ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cs)
    with open(os.path.join(out_dir, "spm.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2])
        f.write(f',\n "cases": [\n{rows(cases)}\n ],\n "no_space_prefix": [\n{rows(no_prefix)}\n ]\n}}\n')
    agree = sum(c["sentencepiece_agrees"] for c in cases)
    print(f"{len(tokens)} tokens, {n_lines} corpus lines, {os.path.getsize(gguf_path)} bytes of GGUF; "
          f"SentencePiece agrees with llama.cpp on {agree} of {len(cases)} texts", file=sys.stderr)


if __name__ == "__main__":
    main()
