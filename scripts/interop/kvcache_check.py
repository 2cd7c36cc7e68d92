#!/usr/bin/env python3
"""Checks llmd-kvcache output with the libraries vLLM itself uses.

Reads JSON from stdin, written by `llmd-kvcache/tests/python_interop.rs`:

* ``hash_cases``: tokens, block size, algorithm, seed, tagged extra keys per block, and
  the hashes llmd computed. Recomputed here as vLLM's ``hash_block_tokens`` does:
  ``H(cbor2.dumps((parent, tuple(tokens), extra_keys), canonical=True))`` with
  ``NONE_HASH = H(cbor2.dumps(seed, canonical=True))``.
* ``event_batches``: msgpack bytes llmd encoded. Decoded strictly with msgspec into
  structs declared as vLLM 0.33 declares ``KVEventBatch`` (so a vLLM-side consumer
  reads them), then re-encoded: the bytes must come back identical.

Prints a one-line summary; exits 1 on the first mismatch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import sys
from typing import Any

import cbor2
import msgspec
import xxhash


def sha256_cbor(v: Any) -> bytes:
    return hashlib.sha256(cbor2.dumps(v, canonical=True)).digest()


def xxhash_cbor(v: Any) -> bytes:
    return xxhash.xxh3_128_digest(cbor2.dumps(v, canonical=True))


HASH_FNS = {"sha256_cbor": sha256_cbor, "xxhash_cbor": xxhash_cbor}


def py(v):
    """JSON -> the Python values vLLM hashes (tuples, bytes from {"hex": ...})."""
    if isinstance(v, list):
        return tuple(py(x) for x in v)
    if isinstance(v, dict):
        return bytes.fromhex(v["hex"])
    return v


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


def main() -> int:
    data = json.load(sys.stdin)
    blocks = 0
    for case in data["hash_cases"]:
        fn = HASH_FNS[case["algo"]]
        parent = fn(case["seed"])
        bs = case["block_size"]
        toks = case["tokens"]
        for i, want in enumerate(case["hashes"]):
            extra = case["extra_keys"][i]
            got = fn((parent, tuple(toks[i * bs : (i + 1) * bs]), None if extra is None else py(extra)))
            if got.hex() != want:
                print(f"hash mismatch in case {case['name']} block {i}: python {got.hex()} llmd {want}")
                return 1
            parent = got
            blocks += 1
    dec = msgspec.msgpack.Decoder(KVEventBatch)
    enc = msgspec.msgpack.Encoder()
    events = 0
    for hexed in data["event_batches"]:
        raw = bytes.fromhex(hexed)
        batch = dec.decode(raw)
        again = enc.encode(batch)
        if again != raw:
            print(f"event bytes differ after a msgspec round trip:\n llmd   {hexed}\n python {again.hex()}")
            return 1
        events += len(batch.events)
    print(f"python interop: {blocks} block hashes and {events} events in "
          f"{len(data['event_batches'])} batches agree (cbor2 {md.version('cbor2')}, msgspec {md.version('msgspec')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
