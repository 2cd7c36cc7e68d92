//! Golden vectors made by vLLM 0.33 itself (`scripts/gen_kvcache_golden.py`): block
//! hashes for many requests and KV event batches encoded by vLLM's msgspec classes.

use llmd_kvcache::codec::{decode_batch, encode_batch};
use llmd_kvcache::{
    BlockHash, BlockHasher, ExternalBlockHash, HashAlgo, KvEvent, KvEventBatch, LoraKey, MmSpan, RequestKeys,
    prompt_embeds_block_digests, to_event_extra_keys,
};
use serde_json::{Value, json};

use crate::common::{kv_json, tagged_json};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// The parts of a hash case every test needs.
struct Case<'a> {
    name: &'a str,
    hasher: BlockHasher,
    block_size: usize,
    tokens: Vec<u32>,
    want: Vec<&'a str>,
}

fn case(c: &Value) -> Case<'_> {
    let algo: HashAlgo = c["hash_fn"].as_str().unwrap().parse().unwrap();
    let nums = |k: &str| -> Vec<u64> { c[k].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect() };
    Case {
        name: c["name"].as_str().unwrap(),
        hasher: BlockHasher::resolve(algo, c["seed"].as_str(), [0; 32]),
        block_size: c["block_size"].as_u64().unwrap() as usize,
        tokens: nums("tokens").into_iter().map(|t| t as u32).collect(),
        want: c["hashes"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect(),
    }
}

fn request_keys(case: &Value, block_size: usize) -> RequestKeys {
    let mut keys = RequestKeys::new();
    if let Some(l) = case.get("lora") {
        keys = keys.with_lora(LoraKey {
            name: l["name"].as_str().unwrap().into(),
            path: l["path"].as_str().unwrap().into(),
            id: l["id"].as_i64(),
        });
    }
    if let Some(mm) = case.get("mm") {
        let spans = mm
            .as_array()
            .unwrap()
            .iter()
            .map(|m| MmSpan {
                identifier: m["identifier"].as_str().unwrap().into(),
                offset: m["offset"].as_u64().unwrap() as usize,
                length: m["length"].as_u64().unwrap() as usize,
            })
            .collect();
        keys = keys.with_mm(spans).unwrap();
    }
    if let Some(s) = case.get("cache_salt") {
        keys = keys.with_cache_salt(s.as_str().unwrap());
    }
    if let Some(raw) = case.get("prompt_embeds_f32_hex") {
        // Recompute vLLM's per-block digests from the raw float32 rows of the prompt.
        let raw = hex_bytes(raw);
        let row = case["prompt_embeds_dim"].as_u64().unwrap() as usize * 4;
        let digests = prompt_embeds_block_digests(&raw, row, block_size);
        keys = keys.with_prompt_embeds(digests);
    }
    keys
}

#[test]
fn block_hashes_match_vllm() {
    let golden = load("hashes.json");
    assert_eq!(golden["meta"]["vllm"], "0.33.0");
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 100, "only {} cases", cases.len());
    let mut blocks_checked = 0;
    for c in cases {
        let Case { name, hasher, block_size, tokens, want } = case(c);
        assert_eq!(hasher.none_hash().to_hex(), c["none_hash"].as_str().unwrap(), "{name}: NONE_HASH");
        let keys = request_keys(c, block_size);

        let mut hashes = Vec::new();
        let mut extra = Vec::new();
        hasher.extend_hashes(&mut hashes, Some(&mut extra), &tokens, block_size, &keys).unwrap();

        let got_extra: Vec<Value> = extra
            .iter()
            .map(|k| k.as_ref().map_or(Value::Null, |ks| Value::Array(ks.iter().map(tagged_json).collect())))
            .collect();
        assert_eq!(Value::Array(got_extra), c["extra_keys"], "{name}: extra keys");

        let got_event_keys = to_event_extra_keys(&extra).map_or(Value::Null, |blocks| {
            Value::Array(
                blocks
                    .iter()
                    .map(|b| b.as_ref().map_or(Value::Null, |vs| Value::Array(vs.iter().map(kv_json).collect())))
                    .collect(),
            )
        });
        assert_eq!(got_event_keys, c["event_extra_keys"], "{name}: event extra keys");

        let got: Vec<String> = hashes.iter().map(BlockHash::to_hex).collect();
        assert_eq!(got, want, "{name}: block hashes");
        let got_u64: Vec<u64> = hashes.iter().map(BlockHash::to_u64).collect();
        let want_u64: Vec<u64> = c["hashes_u64"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(got_u64, want_u64, "{name}: 64-bit event hashes");

        // The one-shot API gives the same chain as the incremental one.
        assert_eq!(hasher.hash_prompt(&tokens, block_size, &keys).unwrap(), hashes, "{name}");
        blocks_checked += hashes.len();
    }
    assert!(blocks_checked >= 700, "only {blocks_checked} blocks checked");
}

#[test]
fn incremental_hashing_matches_vllm_one_token_at_a_time() {
    let golden = load("hashes.json");
    for c in golden["cases"].as_array().unwrap().iter().filter(|c| c.get("mm").is_some()) {
        let Case { name, hasher, block_size, tokens, want } = case(c);
        let keys = request_keys(c, block_size);
        let mut hashes = Vec::new();
        for n in 0..=tokens.len() {
            hasher.extend_hashes(&mut hashes, None, &tokens[..n], block_size, &keys).unwrap();
        }
        let got: Vec<String> = hashes.iter().map(BlockHash::to_hex).collect();
        assert_eq!(got, want, "{name}");
    }
}

fn hash_json(h: &ExternalBlockHash) -> Value {
    match h {
        ExternalBlockHash::Bytes(b) => json!({"hex": b.to_hex()}),
        ExternalBlockHash::Int(i) => json!(i),
    }
}

/// The decoded batch in the shape msgspec gives for vLLM 0.33's wire format.
fn batch_json(b: &KvEventBatch) -> Value {
    let events: Vec<Value> = b
        .events
        .iter()
        .map(|e| match e {
            KvEvent::BlockStored(s) => {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), json!("BlockStored"));
                m.insert("block_hashes".into(), Value::Array(s.block_hashes.iter().map(hash_json).collect()));
                m.insert("parent_block_hash".into(), s.parent_block_hash.as_ref().map_or(Value::Null, hash_json));
                m.insert("token_ids".into(), json!(s.token_ids));
                m.insert("block_size".into(), json!(s.block_size));
                m.insert("lora_id".into(), json!(s.lora_id));
                m.insert("medium".into(), json!(s.medium));
                m.insert("lora_name".into(), json!(s.lora_name));
                if let Some(k) = &s.extra_keys {
                    let v = k
                        .iter()
                        .map(|b| b.as_ref().map_or(Value::Null, |vs| Value::Array(vs.iter().map(kv_json).collect())))
                        .collect();
                    m.insert("extra_keys".into(), Value::Array(v));
                }
                let opt = [
                    ("group_idx", json!(s.group_idx)),
                    ("kv_cache_spec_kind", json!(s.kv_cache_spec_kind)),
                    ("kv_cache_spec_sliding_window", json!(s.kv_cache_spec_sliding_window)),
                    ("locality", json!(s.locality)),
                    ("ownership", json!(s.ownership)),
                    ("session_id", json!(s.session_id)),
                    ("lookahead_token_ids", json!(s.lookahead_token_ids)),
                ];
                for (k, v) in opt {
                    if !v.is_null() {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            }
            KvEvent::BlockRemoved(r) => {
                let mut m = serde_json::Map::new();
                m.insert("type".into(), json!("BlockRemoved"));
                m.insert("block_hashes".into(), Value::Array(r.block_hashes.iter().map(hash_json).collect()));
                m.insert("medium".into(), json!(r.medium));
                for (k, v) in [
                    ("group_idx", json!(r.group_idx)),
                    ("locality", json!(r.locality)),
                    ("ownership", json!(r.ownership)),
                ] {
                    if !v.is_null() {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            }
            KvEvent::AllBlocksCleared { .. } => json!({"type": "AllBlocksCleared"}),
            KvEvent::Unknown { tag } => json!({"type": tag}),
        })
        .collect();
    json!([b.ts, events, b.data_parallel_rank])
}

#[test]
fn event_batches_from_vllm_decode_and_reencode_byte_for_byte() {
    let golden = load("events.json");
    let batches = golden["batches"].as_array().unwrap();
    assert!(batches.len() >= 9);
    for b in batches.iter().filter(|b| b["legacy"] != true) {
        let name = b["name"].as_str().unwrap();
        let bytes = hex_bytes(&b["hex"]);
        let batch = decode_batch(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(batch_json(&batch), b["raw"], "{name}: decoded values");
        assert_eq!(hex::encode(encode_batch(&batch).unwrap()), b["hex"].as_str().unwrap(), "{name}: re-encoded bytes");
    }
}

#[test]
fn legacy_array_form_events_decode() {
    let golden = load("events.json");
    let b = golden["batches"].as_array().unwrap().iter().find(|b| b["legacy"] == true).unwrap();
    let batch = decode_batch(&hex_bytes(&b["hex"])).unwrap();
    assert_eq!(batch.ts, 4.5);
    assert_eq!(batch.data_parallel_rank, Some(2));
    let KvEvent::BlockStored(s) = &batch.events[0] else { panic!("{:?}", batch.events[0]) };
    assert_eq!(s.block_hashes[1], ExternalBlockHash::Int(17));
    assert_eq!((s.token_ids.as_slice(), s.block_size, s.medium.as_deref()), (&[3, 4][..], 1, Some("GPU")));
    assert_eq!((s.lora_name.as_deref(), s.extra_keys.as_ref()), (None, None));
    let KvEvent::BlockRemoved(r) = &batch.events[1] else { panic!() };
    assert_eq!((r.block_hashes.len(), r.medium.as_deref()), (1, None));
    assert_eq!(batch.events[2], KvEvent::AllBlocksCleared { medium: None });
    // Re-encoding writes the current map form, which decodes to the same values.
    assert_eq!(decode_batch(&encode_batch(&batch).unwrap()).unwrap(), batch);
}
