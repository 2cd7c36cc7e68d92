#!/usr/bin/env python3
"""Make llmd-engine's parity fixtures with Hugging Face transformers.

Writes small random checkpoints in the three layouts llmd serves — Llama (with llama3
RoPE scaling, f32 weights), a grouped-query Mistral-style Llama (tied embeddings, bf16,
sharded safetensors) and Qwen2 (q/k/v biases, yarn RoPE, f16) — each with a tiny BPE
tokenizer and a chat template, then runs transformers' model in float32 on CPU and
records, per checkpoint:

* ``logits.json``: the prompt's token ids, the logits of every prompt position, and 32
  greedy tokens from ``generate`` (EOS ignored so all 32 are produced);
* ``tokenizer_cases.json``: texts with their token ids, and a rendered chat template.

Needs torch, transformers and tokenizers (several GB with CUDA wheels, so CI does not
run this; the outputs are checked in):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install torch transformers tokenizers
    /tmp/tf/bin/python scripts/gen_engine_fixtures.py llmd-engine/tests/fixtures
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Prefix caching lets a server reuse the attention keys and values of a shared prompt.",
    "Kubernetes schedules pods; an inference gateway picks the replica for each request.",
    "Paged attention stores the KV cache in fixed-size blocks addressed by a block table.",
    "Hello, world! Numbers 0123456789 and punctuation: ;:'\"()[]{}<>?/\\|~`!@#$%^&*-_=+",
] * 20

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] | trim }}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

PROMPT = (
    "Hello, world! Kubernetes schedules pods and the quick brown fox reads 0123456789; "
    "paged attention stores keys and values in blocks."
)

TOKENIZER_TEXTS = [
    "The quick brown fox",
    "Paged attention stores the KV cache in blocks.",
    "  leading spaces and UTF-8: café, 東京 ✓",
    "",
]

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  What is prefix caching?  "},
]


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=CHAT_TEMPLATE
    )


def checkpoints():
    common = dict(
        vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-5,
    )
    yield "llama-llama3rope-f32", LlamaConfig(
        **common, num_attention_heads=4, num_key_value_heads=4,
        rope_parameters={"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
    ), LlamaForCausalLM, torch.float32, None
    yield "llama-gqa-tied-bf16-sharded", LlamaConfig(
        **common, num_attention_heads=8, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    ), LlamaForCausalLM, torch.bfloat16, "200KB"
    yield "qwen2-bias-yarn-f16", Qwen2Config(
        **common, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64},
    ), Qwen2ForCausalLM, torch.float16, None


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "llmd-engine/tests/fixtures")
    torch.manual_seed(0)
    for name, config, cls, dtype, shard in checkpoints():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        model = cls(config).eval()
        with torch.no_grad():
            # Random init leaves norms at 1 and biases at 0; perturb them so they matter.
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif pname.endswith("bias"):
                    p.copy_(0.05 * torch.randn_like(p))
                else:
                    p.copy_(0.08 * torch.randn_like(p))
        model.to(dtype).save_pretrained(d, max_shard_size=shard or "50GB")
        tok = make_tokenizer(config.vocab_size)
        tok.save_pretrained(d)

        # Reference run in float32 from the saved (possibly rounded) weights.
        ref = cls.from_pretrained(d, dtype=torch.float32).eval()
        prompt = tok(PROMPT)["input_ids"]
        ids = torch.tensor([prompt])
        with torch.no_grad():
            logits = ref(ids).logits[0]
            gen = ref.generate(
                ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(prompt):].tolist()
            # Margins of each greedy pick over the runner-up: exact token parity is only
            # meaningful where no step is a near tie.
            full = ref(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1 : -1]
            top2 = torch.topk(full, 2, dim=-1).values
            min_gap = float((top2[:, 0] - top2[:, 1]).min())
        assert min_gap > 1e-3, f"{name}: a greedy step is a near tie ({min_gap}); change the seed"
        (d / "logits.json").write_text(json.dumps({
            "transformers": transformers.__version__, "torch": torch.__version__,
            "prompt_ids": prompt,
            "logits": [[round(float(x), 5) for x in row] for row in logits],
            "greedy_32": gen,
            "greedy_min_top2_gap": min_gap,
        }) + "\n")
        cases = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_TEXTS]
        chat = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
        (d / "tokenizer_cases.json").write_text(json.dumps(
            {"encode": cases, "messages": MESSAGES, "chat_rendered": chat,
             "decode": {"ids": gen, "text": tok.decode(gen)}}, ensure_ascii=False, indent=1) + "\n")
        size = sum(f.stat().st_size for f in d.iterdir())
        print(f"{name}: {size / 1024:.0f} KiB, prompt {len(prompt)} tokens, min greedy gap {min_gap:.4f}, "
              f"greedy {gen[:8]}...")


if __name__ == "__main__":
    main()
