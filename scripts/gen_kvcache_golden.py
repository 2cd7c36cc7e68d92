#!/usr/bin/env python3
"""Make llmd-kvcache's golden fixtures with vLLM's own code.

Run in a venv that has vLLM installed (no GPU needed):

    python -m venv /tmp/vllm && /tmp/vllm/bin/pip install vllm==0.33.0
    /tmp/vllm/bin/python scripts/gen_kvcache_golden.py llmd-kvcache/tests/golden

It writes:

* ``hashes.json``: per case, the request description, the extra keys vLLM generated for
  every full block (tagged, as hashed), their untagged event form, the NONE_HASH, and the
  block hashes (bytes and the 64-bit event form). Hashes come from vLLM's
  ``get_request_block_hasher`` run over a real ``vllm.v1.request.Request``, so the
  extra-key rules (LoRA, multimodal spans, cache salt, prompt embeds) are vLLM's too.
* ``events.json``: KV event batches encoded by vLLM's ``msgspec`` classes, as hex bytes,
  with the decoded values llmd must read from them.

CI does not run this: the outputs are checked in and the Rust tests read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import msgspec
import torch

import vllm
from vllm.distributed import kv_events as ev
from vllm.lora.request import LoRARequest
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange
from vllm.sampling_params import SamplingParams
from vllm.utils.hashing import get_hash_fn_by_name
from vllm.v1.core import kv_cache_utils as kcu
from vllm.v1.request import Request


def jsonable(v):
    """Python value -> JSON, with bytes as {"hex": ...} so the Rust side can tell them apart."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return {"hex": v.hex()}
    if isinstance(v, (tuple, list)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    raise TypeError(f"unexpected {type(v)}")


def tokens(n, start=1, step=7, mod=151_000):
    # Deterministic ids spanning 1..mod so CBOR sees 1-, 2-, 3- and 5-byte integers.
    return [(start + i * step * 1009) % mod for i in range(n)]


def make_request(case):
    lora = case.get("lora")
    lora_request = (
        LoRARequest(lora_name=lora["name"], lora_int_id=lora["id"], lora_path=lora["path"])
        if lora
        else None
    )
    mm = [
        MultiModalFeatureSpec(
            data=None,
            modality="image",
            identifier=m["identifier"],
            mm_position=PlaceholderRange(offset=m["offset"], length=m["length"]),
        )
        for m in case.get("mm", [])
    ]
    embeds = None
    if case.get("prompt_embeds_dim"):
        g = torch.Generator().manual_seed(1234)
        embeds = torch.randn(len(case["tokens"]), case["prompt_embeds_dim"], generator=g)
    return Request(
        request_id=case["name"],
        prompt_token_ids=None if embeds is not None else case["tokens"],
        sampling_params=SamplingParams(max_tokens=1),
        pooling_params=None,
        prompt_embeds=embeds,
        mm_features=mm or None,
        lora_request=lora_request,
        cache_salt=case.get("cache_salt"),
    )


def hash_case(case):
    fn = get_hash_fn_by_name(case["hash_fn"])
    if case["seed"] is None:
        os.environ.pop("PYTHONHASHSEED", None)
    else:
        os.environ["PYTHONHASHSEED"] = case["seed"]
    kcu.init_none_hash(fn)
    req = make_request(case)
    if case.get("output_tokens"):
        # Generated tokens: blocks past the prompt still get prompt-embeds keys.
        req.append_output_token_ids(case["output_tokens"])
    bs = case["block_size"]
    hasher = kcu.get_request_block_hasher(bs, fn)
    hashes = hasher(req)

    # The extra keys vLLM used for each full block, regenerated the way the hasher does.
    extra, mm_idx = [], 0
    for i in range(len(hashes)):
        keys, mm_idx = kcu.generate_block_hash_extra_keys(req, i * bs, (i + 1) * bs, mm_idx)
        extra.append(keys)
    # Cross-check: the chain from these keys is the hasher's chain.
    parent = None
    for i, h in enumerate(hashes):
        toks = req.all_token_ids[i * bs : (i + 1) * bs]
        assert kcu.hash_block_tokens(fn, parent, toks, extra[i]) == h
        parent = h

    out = dict(case)
    out.pop("prompt_embeds_dim", None)
    if req.prompt_embeds is not None:
        # The raw float32 embeddings, so the Rust side can recompute vLLM's per-block
        # digests (`tensor_data` of each block's rows) before hashing.
        out["tokens"] = list(req.all_token_ids)
        out["prompt_len"] = req.num_prompt_tokens
        out["prompt_embeds_dim"] = case["prompt_embeds_dim"]
        out["prompt_embeds_f32_hex"] = bytes(kcu.tensor_data(req.prompt_embeds)).hex()
    out["none_hash"] = kcu.NONE_HASH.hex()
    out["extra_keys"] = [jsonable(k) for k in extra]
    out["event_extra_keys"] = jsonable(kcu.to_event_extra_keys(extra))
    out["hashes"] = [h.hex() for h in hashes]
    out["hashes_u64"] = [int.from_bytes(h, "big") & ((1 << 64) - 1) for h in hashes]
    return out


def hash_cases():
    cases = []
    for hash_fn in ("sha256_cbor", "xxhash_cbor"):
        seeds = ["0", "42", "llmd"] + ([None] if hash_fn == "sha256_cbor" else [])
        for seed in seeds:
            for bs in (1, 4, 16, 64):
                for n in (0, bs - 1, bs, 3 * bs + (bs // 2), 20 * bs + 1):
                    if n < 0:
                        continue
                    cases.append(
                        {
                            "name": f"plain-{hash_fn}-seed{seed}-bs{bs}-n{n}",
                            "hash_fn": hash_fn,
                            "seed": seed,
                            "block_size": bs,
                            "tokens": tokens(n, start=n + bs),
                        }
                    )
        base = {"hash_fn": hash_fn, "seed": "7", "block_size": 16}
        cases += [
            {**base, "name": f"lora-{hash_fn}", "tokens": tokens(50),
             "lora": {"name": "sql-adapter", "id": 3, "path": "/adapters/sql"}},
            {**base, "name": f"lora-short-{hash_fn}", "tokens": tokens(33),
             "lora": {"name": "x", "id": 1, "path": "p"}},
            {**base, "name": f"salt-{hash_fn}", "tokens": tokens(40), "cache_salt": "tenant-a"},
            {**base, "name": f"salt-unicode-{hash_fn}", "tokens": tokens(20), "cache_salt": "clé-✓"},
            {**base, "name": f"mm-{hash_fn}", "tokens": tokens(80),
             "mm": [{"identifier": "img-aaaa", "offset": 3, "length": 20},
                    {"identifier": "img-bbbb", "offset": 30, "length": 2},
                    {"identifier": "img-cccc", "offset": 33, "length": 40}]},
            {**base, "name": f"mm-adjacent-{hash_fn}", "tokens": tokens(64),
             "mm": [{"identifier": "a", "offset": 0, "length": 16},
                    {"identifier": "a", "offset": 16, "length": 16}]},
            {**base, "name": f"all-{hash_fn}", "tokens": tokens(70),
             "lora": {"name": "chat", "id": 9, "path": "/l/chat"}, "cache_salt": "s",
             "mm": [{"identifier": "m1", "offset": 10, "length": 30}]},
            {**base, "name": f"embeds-{hash_fn}", "tokens": tokens(40), "prompt_embeds_dim": 8},
            {**base, "name": f"embeds-decode-{hash_fn}", "tokens": tokens(20), "prompt_embeds_dim": 8,
             "output_tokens": tokens(45, start=9)},
        ]
    return cases


def event_cases():
    Stored, Removed, Cleared, Batch = ev.BlockStored, ev.BlockRemoved, ev.AllBlocksCleared, ev.KVEventBatch
    h = lambda i: hashlib.sha256(bytes([i])).digest()  # noqa: E731
    enc = msgspec.msgpack.Encoder()
    batches = {
        "stored-minimal": Batch(ts=1700000000.25, events=[
            Stored(block_hashes=[h(1), h(2)], parent_block_hash=None, token_ids=list(range(32)),
                   block_size=16, lora_id=None, medium="GPU", lora_name=None)]),
        "stored-int-hashes": Batch(ts=12.5, events=[
            Stored(block_hashes=[2**64 - 1, 1, 300], parent_block_hash=2**63, token_ids=[1, 2, 3, 4, 5, 6],
                   block_size=2, lora_id=None, medium=None, lora_name=None)], data_parallel_rank=3),
        "stored-full": Batch(ts=0.0, events=[
            Stored(block_hashes=[h(3)], parent_block_hash=h(2), token_ids=[100000, 7, 65536, 255],
                   block_size=4, lora_id=2, medium="CPU", lora_name="sql",
                   extra_keys=[("sql", ("img", 0), "salt", b"\x01\x02")], group_idx=1,
                   kv_cache_spec_kind="full_attention", kv_cache_spec_sliding_window=4096,
                   locality="LOCAL", ownership="tier-1", session_id="sess-9",
                   lookahead_token_ids=[[5, 6]])], data_parallel_rank=0),
        "stored-extra-none": Batch(ts=3.0, events=[
            Stored(block_hashes=[h(4), h(5)], parent_block_hash=None, token_ids=[1] * 8,
                   block_size=4, lora_id=None, medium="GPU", lora_name=None, extra_keys=[None, ("s",)])]),
        "removed": Batch(ts=5.75, events=[Removed(block_hashes=[h(1), h(2), h(3)], medium="GPU")]),
        "removed-full": Batch(ts=5.0, events=[
            Removed(block_hashes=[7], medium="STORAGE", group_idx=2, locality="REMOTE", ownership="o")]),
        "cleared": Batch(ts=9.0, events=[Cleared()]),
        "mixed": Batch(ts=1.0, events=[
            Stored(block_hashes=[h(9)], parent_block_hash=None, token_ids=[1, 2], block_size=2,
                   lora_id=None, medium="GPU", lora_name=None),
            Removed(block_hashes=[h(9)], medium="GPU"), Cleared()], data_parallel_rank=1),
        "empty": Batch(ts=2.0, events=[]),
    }

    # Engines before the map-form events sent each event as a tagged positional array
    # (`array_like=True`). Reproduce that layout with msgspec so decoding it stays tested.
    class LegacyEvent(msgspec.Struct, array_like=True, omit_defaults=True, tag=True):
        pass

    class BlockStored(LegacyEvent):  # noqa: D101
        block_hashes: list
        parent_block_hash: object
        token_ids: list
        block_size: int
        lora_id: object
        medium: object

    class BlockRemoved(LegacyEvent):  # noqa: D101
        block_hashes: list
        medium: object

    class AllBlocksCleared(LegacyEvent):  # noqa: D101
        pass

    class LegacyBatch(msgspec.Struct, array_like=True, omit_defaults=True):  # noqa: D101
        ts: float
        events: list
        data_parallel_rank: object = None

    batches["legacy-array-events"] = LegacyBatch(ts=4.5, events=[
        BlockStored(block_hashes=[h(1), 17], parent_block_hash=None, token_ids=[3, 4], block_size=1,
                    lora_id=None, medium="GPU"),
        BlockRemoved(block_hashes=[h(1)], medium=None), AllBlocksCleared()], data_parallel_rank=2)

    out = []
    for name, batch in batches.items():
        data = enc.encode(batch)
        out.append({"name": name, "hex": data.hex(),
                    "raw": jsonable(msgspec.msgpack.decode(data)),
                    "legacy": name.startswith("legacy")})
    return out


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "llmd-kvcache/tests/golden")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "scripts/gen_kvcache_golden.py", "vllm": vllm.__version__,
            "msgspec": msgspec.__version__}
    cases = [hash_case(c) for c in hash_cases()]
    (out / "hashes.json").write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
    evs = event_cases()
    (out / "events.json").write_text(json.dumps({"meta": meta, "batches": evs}, indent=1) + "\n")
    print(f"wrote {len(cases)} hash cases and {len(evs)} event batches to {out}")


if __name__ == "__main__":
    main()
