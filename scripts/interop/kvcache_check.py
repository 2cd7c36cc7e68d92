#!/usr/bin/env python3
"""Checks llmd-kvcache output with the libraries vLLM itself uses.

Usage: ``kvcache_check.py GOLDEN_HASHES_JSON < cases.json``. The JSON on stdin is
written by ``llmd-kvcache/tests/integration/python_interop.rs``:

* ``hash_cases``: a request as vLLM sees it (tokens, block size, algorithm, seed, LoRA
  adapter, multimodal spans, cache salt, raw prompt embeddings) and the block hashes
  llmd computed for it. Everything is recomputed here from the request alone: the
  number of full blocks, each block's extra keys, and the hash chain
  ``H(cbor2.dumps((parent, tuple(tokens), extra_keys), canonical=True))`` from
  ``NONE_HASH = H(cbor2.dumps(seed, canonical=True))``. llmd's own extra keys are only
  compared, never used.
* ``event_batches``: msgpack bytes llmd encoded. Decoded strictly with msgspec into
  structs declared as vLLM 0.33 declares ``KVEventBatch`` (so a vLLM-side consumer
  reads them), then re-encoded: the bytes must come back identical.

vLLM itself is not installed (it pulls CUDA torch), so the request hasher below follows
vLLM 0.33's ``vllm/v1/core/kv_cache_utils.py`` (``get_request_block_hasher``,
``generate_block_hash_extra_keys`` and its ``_gen_*_extra_hash_keys`` helpers,
``hash_block_tokens``) and ``vllm/utils/hashing.py`` (``sha256_cbor``,
``xxhash_cbor``). Before any llmd output is checked, it must reproduce every hash in
``GOLDEN_HASHES_JSON`` (``llmd-kvcache/tests/golden/hashes.json``, written by
``scripts/gen_kvcache_golden.py`` running vLLM's own hasher on real ``Request``
objects), so a port that drifts from vLLM fails here rather than agreeing with llmd.

Prints a one-line summary; exits 1 on the first mismatch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import cbor2
import msgspec
import xxhash


# --- vllm/utils/hashing.py ----------------------------------------------------------


def sha256_cbor(v: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(v, canonical=True)).digest()


def xxhash_cbor(v: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(v, canonical=True))


HASH_FNS = {"sha256_cbor": sha256_cbor, "xxhash_cbor": xxhash_cbor}

# vLLM's NONE_HASH seed when PYTHONHASHSEED is unset and the hash is cryptographic.
DEFAULT_NONE_HASH_SEED = "vllm-none-hash"


# --- the parts of vllm.v1.request.Request the block hasher reads ------------------


@dataclass
class MmSpan:
    identifier: str
    offset: int
    length: int


@dataclass
class Request:
    all_token_ids: list[int]
    lora: tuple[str, str] | None = None  # (lora_name, lora_path)
    mm_features: list[MmSpan] = field(default_factory=list)  # sorted by offset
    cache_salt: str | None = None
    # Raw float32 prompt embeddings, row-major, `embeds_row_bytes` per prompt token.
    prompt_embeds: bytes | None = None
    embeds_row_bytes: int = 0

    @classmethod
    def from_json(cls, tokens: list[int], r: dict) -> Request:
        lora = r.get("lora")
        embeds_hex = r.get("prompt_embeds_f32_hex")
        return cls(
            all_token_ids=list(tokens),
            lora=(lora["name"], lora["path"]) if lora else None,
            mm_features=[MmSpan(m["identifier"], m["offset"], m["length"]) for m in r.get("mm") or []],
            cache_salt=r.get("cache_salt"),
            prompt_embeds=None if embeds_hex is None else bytes.fromhex(embeds_hex),
            embeds_row_bytes=4 * (r.get("prompt_embeds_dim") or 0),
        )


# --- vllm/v1/core/kv_cache_utils.py ------------------------------------------------


def gen_mm_extra_hash_keys(req: Request, start: int, end: int, start_mm_idx: int) -> tuple[list, int]:
    """("mm", identifier, offset - start) for each item overlapping [start, end)."""
    keys: list = []
    mm = req.mm_features
    if not mm:
        return keys, start_mm_idx
    last = mm[-1]
    if last.offset + last.length <= start:
        return keys, start_mm_idx
    idx = start_mm_idx
    while idx < len(mm):
        item = mm[idx]
        if end > item.offset:
            if start >= item.offset + item.length:
                idx += 1  # the block is past this item
                continue
            keys.append(("mm", item.identifier, item.offset - start))
            if end >= item.offset + item.length:
                idx += 1  # the item ends in this block; the next may start in it too
            else:
                break
        else:
            break  # the block ends before this item starts
    return keys, idx


def gen_lora_extra_hash_keys(req: Request) -> list:
    return [] if req.lora is None else [("lora", req.lora[0], req.lora[1])]


def gen_prompt_embeds_extra_hash_keys(req: Request, start: int, end: int) -> list:
    if req.prompt_embeds is None:
        return []
    # `prompt_embeds[start:end]` as raw bytes: rows past the prompt are an empty slice.
    rows = req.prompt_embeds[start * req.embeds_row_bytes : end * req.embeds_row_bytes]
    return [("prompt_embeds", hashlib.sha256(rows).digest())]


def generate_block_hash_extra_keys(req: Request, start: int, end: int, start_mm_idx: int):
    mm_keys, next_mm_idx = gen_mm_extra_hash_keys(req, start, end, start_mm_idx)
    salt_keys = [("cache_salt", req.cache_salt)] if start == 0 and req.cache_salt else []
    keys = gen_lora_extra_hash_keys(req) + mm_keys + salt_keys + gen_prompt_embeds_extra_hash_keys(req, start, end)
    return (tuple(keys) if keys else None), next_mm_idx


def hash_block_tokens(hash_fn, none_hash: bytes, parent: bytes | None, tokens, extra_keys) -> bytes:
    return hash_fn((parent or none_hash, tuple(tokens), extra_keys))


def request_block_hashes(req: Request, block_size: int, hash_fn, none_hash: bytes):
    """Every full block's hash and extra keys, as `get_request_block_hasher` computes
    them for a request with no hashes yet (and no lookahead)."""
    hashes, extras = [], []
    start, mm_idx, parent = 0, 0, None
    while start + block_size <= len(req.all_token_ids):
        end = start + block_size
        extra, mm_idx = generate_block_hash_extra_keys(req, start, end, mm_idx)
        parent = hash_block_tokens(hash_fn, none_hash, parent, req.all_token_ids[start:end], extra)
        hashes.append(parent)
        extras.append(extra)
        start = end
    return hashes, extras


# --- checks --------------------------------------------------------------------------


def py(v):
    """JSON -> the Python values vLLM hashes (tuples, bytes from {"hex": ...})."""
    if isinstance(v, list):
        return tuple(py(x) for x in v)
    if isinstance(v, dict):
        return bytes.fromhex(v["hex"])
    return v


def check_chain(name: str, req: Request, block_size: int, algo: str, seed: str | None, want: list[str]) -> int:
    """Recomputes `req`'s block hashes; raises on any difference from `want` (hex).
    Returns the number of blocks."""
    fn = HASH_FNS[algo]
    if seed is None:
        if algo != "sha256_cbor":
            raise SystemExit(f"{name}: an unset seed is random for {algo}; nothing to compare")
        seed = DEFAULT_NONE_HASH_SEED
    none_hash = fn(seed)
    got, _ = request_block_hashes(req, block_size, fn, none_hash)
    expected_count = len(req.all_token_ids) // block_size
    if len(got) != expected_count:
        raise SystemExit(f"{name}: the Python hasher made {len(got)} hashes for {expected_count} full blocks")
    if len(want) != expected_count:
        raise SystemExit(
            f"{name}: {len(req.all_token_ids)} tokens in blocks of {block_size} are {expected_count} full blocks; "
            f"got {len(want)} hashes"
        )
    for i, (g, w) in enumerate(zip(got, want)):
        if g.hex() != w:
            raise SystemExit(f"{name}: block {i} hashes to {g.hex()} in Python, {w} in the case")
    return expected_count


def check_golden(path: str) -> int:
    """The Python hasher against vLLM's own output; returns the number of blocks."""
    with open(path, encoding="utf-8") as f:
        golden = json.load(f)
    blocks = 0
    for case in golden["cases"]:
        req = Request.from_json(case["tokens"], case)
        if req.prompt_embeds is not None:
            # Rows exist for the prompt only; tokens past it were generated.
            assert len(req.prompt_embeds) == case["prompt_len"] * req.embeds_row_bytes, case["name"]
        blocks += check_chain(
            f"golden {case['name']}", req, case["block_size"], case["hash_fn"], case["seed"], case["hashes"]
        )
    if blocks < 100 or not any(c.get("mm") for c in golden["cases"]):
        raise SystemExit(f"{path}: too few golden cases ({blocks} blocks) to trust the Python hasher")
    return blocks


def check_llmd(cases: list[dict]) -> tuple[int, int]:
    """llmd's hashes against the Python hasher; returns (blocks, blocks with extra keys)."""
    blocks = keyed = 0
    for case in cases:
        req = Request.from_json(case["tokens"], case["request"])
        bs = case["block_size"]
        blocks += check_chain(case["name"], req, bs, case["algo"], case["seed"], case["hashes"])
        # llmd's extra keys are not inputs above; compared here for a clearer message.
        fn = HASH_FNS[case["algo"]]
        _, extras = request_block_hashes(req, bs, fn, fn(case["seed"]))
        llmd_extras = [None if e is None else py(e) for e in case["extra_keys"]]
        if llmd_extras != extras:
            raise SystemExit(f"{case['name']}: extra keys differ:\n python {extras}\n llmd   {llmd_extras}")
        keyed += sum(e is not None for e in extras)
    return blocks, keyed


ExternalBlockHash = bytes | int


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None
    lookahead_token_ids: list[list[int]] | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


def check_events(batches: list[str]) -> int:
    dec = msgspec.msgpack.Decoder(KVEventBatch)
    enc = msgspec.msgpack.Encoder()
    events = 0
    for hexed in batches:
        raw = bytes.fromhex(hexed)
        batch = dec.decode(raw)
        again = enc.encode(batch)
        if again != raw:
            raise SystemExit(f"event bytes differ after a msgspec round trip:\n llmd   {hexed}\n python {again.hex()}")
        events += len(batch.events)
    return events


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    golden = check_golden(sys.argv[1])
    data = json.load(sys.stdin)
    blocks, keyed = check_llmd(data["hash_cases"])
    events = check_events(data["event_batches"])
    print(
        f"python interop: the Python hasher reproduces vLLM's {golden} golden block hashes; "
        f"llmd's {blocks} block hashes ({keyed} with extra keys) in {len(data['hash_cases'])} requests "
        f"and {events} events in {len(data['event_batches'])} batches agree "
        f"(cbor2 {md.version('cbor2')}, xxhash {md.version('xxhash')}, msgspec {md.version('msgspec')})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
