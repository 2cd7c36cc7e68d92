#!/usr/bin/env python3
"""Drives an llmd engine with the official `openai` Python client.

Usage: openai_client_check.py BASE_URL MODEL

Exercises models.list, completions and chat completions (plain and streaming, with
usage and logprobs) and the client's typed errors for a bad parameter, an unknown
model and an over-long prompt. Prints one summary line; exits 1 on the first failure.
"""

from __future__ import annotations

import sys

import openai


def main() -> int:
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
    checks = 0

    ids = [m.id for m in client.models.list()]
    assert ids == [model], ids
    checks += 1

    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=10, temperature=0, logprobs=2)
    assert c.choices[0].finish_reason == "length", c
    assert c.usage.completion_tokens == 10, c.usage
    assert len(c.choices[0].logprobs.token_logprobs) == 10
    text = c.choices[0].text
    checks += 1

    streamed = ""
    usage = None
    for chunk in client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            streamed += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert streamed == text, (streamed, text)
    assert usage is not None and usage.completion_tokens == 10, usage
    checks += 1

    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0,
        logprobs=True, top_logprobs=3, seed=1,
    )
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str), r
    assert len(r.choices[0].logprobs.content) == 8
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 3
    checks += 1

    parts = []
    finish = None
    for chunk in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8, temperature=0, stream=True,
    ):
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            finish = ch.finish_reason or finish
    assert "".join(parts) == msg.content, (parts, msg.content)
    assert finish == "length", finish
    checks += 1

    for kwargs, err in [
        (dict(model=model, prompt="hi", temperature=-1), openai.BadRequestError),
        (dict(model="no-such-model", prompt="hi"), openai.NotFoundError),
        (dict(model=model, prompt="x" * 100_000), openai.BadRequestError),
    ]:
        try:
            client.completions.create(**kwargs)
        except err as e:
            assert e.body and e.body.get("message"), e.body
            checks += 1
        else:
            raise AssertionError(f"{kwargs} did not raise {err.__name__}")

    print(f"openai client {openai.__version__}: {checks} checks passed against {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
