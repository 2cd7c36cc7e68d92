//! Cross-checks against the Python libraries vLLM itself uses (cbor2, xxhash, msgspec),
//! on random inputs rather than fixed fixtures: `scripts/interop/kvcache_check.py`
//! recomputes every block hash the way vLLM's `hash_block_tokens` does and decodes every
//! event batch strictly into vLLM 0.33's struct layout, then re-encodes it.
//!
//! Needs a Python with `scripts/interop/requirements.txt`: `$LLMD_PYTHON`, or the
//! workspace's `.venv` that `.ci/run` creates. Without one the test prints why and
//! passes, except under CI (`CI` set), where a missing interpreter is a failure.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use common::tagged_json;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use llmd_kvcache::codec::encode_batch;
use llmd_kvcache::{
    BlockHasher, BlockPool, EventBatcher, HashAlgo, KvCacheManager, LoraKey, MmSpan, RequestKeys, Sequence,
};
use serde_json::json;

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LLMD_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    venv.exists().then_some(venv)
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
type Rng = llmd_kvcache::rng::SplitMix64;

fn random_keys(rng: &mut Rng, len: usize, blocks: usize) -> RequestKeys {
    let mut keys = RequestKeys::new();
    if rng.below(3) == 0 {
        keys = keys.with_lora(LoraKey { name: format!("lora-{}", rng.below(5)), path: "/a/é".into(), id: Some(1) });
    }
    if rng.below(3) == 0 && len > 4 {
        let mut spans = Vec::new();
        let mut at = rng.below(4) as usize;
        while at + 2 < len {
            let length = 1 + rng.below((len - at) as u64 / 2 + 1) as usize;
            spans.push(MmSpan { identifier: format!("img{:x}", rng.next_u64()), offset: at, length });
            at += length + rng.below(6) as usize;
        }
        keys = keys.with_mm(spans).unwrap();
    }
    if rng.below(3) == 0 {
        keys = keys.with_cache_salt(format!("salt-{}-✓", rng.below(100)));
    }
    if rng.below(5) == 0 {
        keys = keys.with_prompt_embeds((0..blocks).map(|i| [i as u8 ^ rng.below(256) as u8; 32]).collect());
    }
    keys
}

#[test]
fn hashes_and_events_agree_with_vllms_python_libraries() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the interop Python: .ci/run creates .venv with scripts/interop/requirements.txt"
        );
        eprintln!("skipping Python interop: no $LLMD_PYTHON and no .venv (run .ci/run, or set LLMD_PYTHON)");
        return;
    };
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);

    let mut hash_cases = Vec::new();
    for i in 0..300 {
        let algo = if i % 2 == 0 { HashAlgo::Sha256Cbor } else { HashAlgo::XxHashCbor };
        let seed = if rng.below(4) == 0 { "vllm-none-hash".to_string() } else { rng.below(1 << 20).to_string() };
        let hasher = BlockHasher::new(algo, &seed);
        let block_size = [1, 2, 3, 16, 32][rng.below(5) as usize];
        let len = rng.below(200) as usize;
        // Token ids across CBOR's 1-, 2-, 3-, 5-byte integer widths.
        let tokens: Vec<u32> = (0..len).map(|_| (rng.next_u64() >> (rng.below(32) as u32)) as u32).collect();
        let keys = random_keys(&mut rng, len, len / block_size);
        let mut hashes = Vec::new();
        let mut extra = Vec::new();
        hasher.extend_hashes(&mut hashes, Some(&mut extra), &tokens, block_size, &keys).unwrap();
        hash_cases.push(json!({
            "name": format!("random-{i}"),
            "algo": algo.name(),
            "seed": seed,
            "block_size": block_size,
            "tokens": tokens,
            "extra_keys": extra.iter().map(|k| k.as_ref().map(|ks| ks.iter().map(tagged_json).collect::<Vec<_>>())).collect::<Vec<_>>(),
            "hashes": hashes.iter().map(|h| h.to_hex()).collect::<Vec<_>>(),
        }));
    }

    // Event batches from a pool under a random workload, with both hash forms.
    let mut event_batches = Vec::new();
    for int_hashes in [false, true] {
        let hasher = BlockHasher::default();
        let pool = BlockPool::with_sink(24, 4, EventBatcher::new(Some(1))).unwrap().with_int_event_hashes(int_hashes);
        let mut kv = KvCacheManager::with_pool(pool);
        for r in 0..60 {
            let len = 1 + rng.below(40) as usize;
            let family = rng.below(4) as u32;
            let tokens: Vec<u32> = (0..len as u32).map(|t| family * 7919 + t).collect();
            let keys = random_keys(&mut rng, len, len / 4);
            let seq = Sequence::new(format!("r{r}"), tokens, keys, 4, &hasher).unwrap();
            let hit = kv.computed_blocks(&seq).unwrap();
            let n = seq.tokens().len() - hit.num_tokens();
            if kv.allocate_slots(&seq, n, hit).is_ok() && rng.below(2) == 0 {
                kv.free(seq.id()).unwrap();
            }
            if r % 20 == 19 {
                for id in (0..=r).map(|i| format!("r{i}")) {
                    let _ = kv.free(&id);
                }
                if r == 39 {
                    assert!(kv.reset_prefix_cache());
                }
            }
            if let Some(b) = kv.sink_mut().flush(1_700_000_000.0 + r as f64 / 8.0) {
                event_batches.push(hex::encode(encode_batch(&b).unwrap()));
            }
        }
    }
    assert!(event_batches.len() > 50);

    let input = json!({"hash_cases": hash_cases, "event_batches": event_batches}).to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/interop/kvcache_check.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "Python interop check failed:\n{stdout}");
    assert!(stdout.contains("agree"), "{stdout}");
}
