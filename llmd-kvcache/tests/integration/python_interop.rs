//! Cross-checks against the Python libraries vLLM itself uses (cbor2, xxhash, msgspec),
//! on random inputs rather than fixed fixtures: `scripts/interop/kvcache_check.py`
//! recomputes, from each random request alone (tokens, LoRA, multimodal spans, cache
//! salt, raw prompt embeddings), how many full blocks it has, their extra keys and their
//! hashes, the way vLLM's request block hasher does — after first reproducing vLLM's own
//! golden hashes — and decodes every event batch strictly into vLLM 0.33's struct
//! layout, then re-encodes it.
//!
//! Needs a Python with `scripts/interop/requirements.txt`, so it is `#[ignore]`d: plain
//! `cargo test` lists it as ignored; `scripts/test.sh` creates the venv and runs it
//! (`-- --include-ignored`). Run that way, a missing interpreter is a failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use llmd_kvcache::codec::encode_batch;
use llmd_kvcache::{
    BlockHasher, BlockPool, EventBatcher, HashAlgo, KvCacheManager, LoraKey, MmSpan, RequestKeys, Sequence,
    prompt_embeds_block_digests,
};
use serde_json::{Value, json};

use crate::common::tagged_json;

/// `$LLMD_PYTHON`, else the workspace's `.venv`; a test that needs it fails without it.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LLMD_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.exists(),
        "no $LLMD_PYTHON and no {}: run scripts/test.sh (it creates .venv from scripts/interop/requirements.txt)",
        venv.display()
    );
    venv
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
type Rng = llmd_kvcache::rng::SplitMix64;

/// Random extra keys for a request of `len` tokens in blocks of `block_size`, and the
/// same request as the Python side reads it (raw inputs only, nothing llmd derived).
fn random_keys(rng: &mut Rng, len: usize, block_size: usize) -> (RequestKeys, Value) {
    let mut keys = RequestKeys::new();
    let mut desc = json!({});
    if rng.below(3) == 0 {
        let lora = LoraKey { name: format!("lora-{}", rng.below(5)), path: "/a/é".into(), id: Some(1) };
        desc["lora"] = json!({"name": lora.name, "path": lora.path});
        keys = keys.with_lora(lora);
    }
    if rng.below(3) == 0 && len > 4 {
        let mut spans = Vec::new();
        let mut at = rng.below(4) as usize;
        while at + 2 < len {
            let length = 1 + rng.below((len - at) as u64 / 2 + 1) as usize;
            spans.push(MmSpan { identifier: format!("img{:x}", rng.next_u64()), offset: at, length });
            at += length + rng.below(6) as usize;
        }
        desc["mm"] =
            spans.iter().map(|m| json!({"identifier": m.identifier, "offset": m.offset, "length": m.length})).collect();
        keys = keys.with_mm(spans).unwrap();
    }
    if rng.below(3) == 0 {
        let salt = format!("salt-{}-✓", rng.below(100));
        desc["cache_salt"] = json!(salt);
        keys = keys.with_cache_salt(salt);
    }
    if rng.below(5) == 0 && len > 0 {
        // Embeddings for the prompt; tokens past it count as generated (their blocks
        // hash an empty slice of embeddings, as in vLLM).
        let dim = 1 + rng.below(4) as usize;
        let prompt_len = 1 + rng.below(len as u64) as usize;
        let raw: Vec<u8> =
            (0..prompt_len * dim).flat_map(|_| (rng.next_u64() as u32 as f32 / 7.0).to_le_bytes()).collect();
        desc["prompt_embeds_dim"] = json!(dim);
        desc["prompt_embeds_f32_hex"] = json!(hex::encode(&raw));
        keys = keys.with_prompt_embeds(prompt_embeds_block_digests(&raw, dim * 4, block_size));
    }
    (keys, desc)
}

/// Runs the check script on `input`.
fn run_check(python: &PathBuf, input: &str) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python)
        .arg(dir.join("../scripts/interop/kvcache_check.py"))
        .arg(dir.join("tests/golden/hashes.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "needs the interop venv: run scripts/test.sh, or set LLMD_PYTHON"]
fn hashes_and_events_agree_with_vllms_python_libraries() {
    let python = python();
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
        let (keys, request) = random_keys(&mut rng, len, block_size);
        let mut hashes = Vec::new();
        let mut extra = Vec::new();
        hasher.extend_hashes(&mut hashes, Some(&mut extra), &tokens, block_size, &keys).unwrap();
        hash_cases.push(json!({
            "name": format!("random-{i}"),
            "algo": algo.name(),
            "seed": seed,
            "block_size": block_size,
            "tokens": tokens,
            "request": request,
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
            let (keys, _) = random_keys(&mut rng, len, 4);
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

    let input = json!({"hash_cases": hash_cases, "event_batches": event_batches});
    let out = run_check(&python, &input.to_string());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "Python interop check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("agree"), "{stdout}");

    // Negative controls: one hash short, or one hash wrong, and the check fails.
    let case = hash_cases.iter().position(|c| c["hashes"].as_array().unwrap().len() > 2).unwrap();
    let mut short = input.clone();
    short["hash_cases"][case]["hashes"].as_array_mut().unwrap().pop();
    let out = run_check(&python, &short.to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("full blocks"), "{stderr}");
    let mut wrong = input;
    let h = &mut wrong["hash_cases"][case]["hashes"][1];
    *h = json!(h.as_str().unwrap().replacen(|c| c != '0', "0", 1));
    let out = run_check(&python, &wrong.to_string());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("block 1 hashes to"), "{stderr}");
}
