//! KV offloading at the engine: blocks evicted from the device pool go to host memory,
//! and a prompt whose prefix was evicted gets it copied back instead of computed,
//! returning exactly the tokens a cold engine computes (built-in model, greedy). Host
//! memory announces what it holds as vLLM's offloader does (`BlockStored` with medium
//! `CPU`, no tokens, no parent; `BlockRemoved` with medium `CPU`), keeps to its size,
//! and the simulator charges the copy's modelled time.

use std::sync::Arc;
use std::time::Duration;

use llmd_engine::offload::OffloadConfig;
use llmd_engine::{ByteTokenizer, Clock, Engine, EngineConfig, KvDtype, LatencyModel, ManualClock, SimBackend};
use llmd_kvcache::{KvEvent, RequestKeys};

use super::{BLOCKS, BS, engine, events, offload, prompt, push_out, req, run};

fn medium_of(ev: &KvEvent) -> Option<&str> {
    match ev {
        KvEvent::BlockStored(s) => s.medium.as_deref(),
        KvEvent::BlockRemoved(r) => r.medium.as_deref(),
        _ => None,
    }
}

#[test]
fn an_evicted_prefix_comes_back_from_host_memory_with_the_same_tokens() {
    let a = prompt("alpha");
    let want = run(&mut engine(7), req("cold", a.clone())).0;

    let mut e = engine(7);
    let cfg = offload(&e, 64, None);
    e.enable_offload(&cfg).unwrap();
    let (first, cached) = run(&mut e, req("a1", a.clone()));
    assert_eq!((first.as_slice(), cached), (want.as_slice(), 0));
    push_out(&mut e, "1");
    assert_eq!(e.cached_prefix_blocks(&a, &RequestKeys::new()).unwrap(), 0, "alpha left the device");
    let stored = e.offload_stats().unwrap().stored_blocks;
    assert!(stored >= 10, "alpha's 10 full blocks went down: {stored}");

    let (again, cached) = run(&mut e, req("a2", a.clone()));
    assert_eq!(again, want, "tokens from onboarded blocks equal a cold run's");
    assert_eq!(cached, 40, "all 10 full blocks came back (the last token is always computed)");
    let s = e.offload_stats().unwrap();
    assert_eq!((s.hit_blocks, s.loaded_blocks), (10, 10));
    assert_eq!(s.loaded_bytes, 10 * e.kv_block_layout().unwrap().block_bytes() as u64);

    let mut registry = prometheus_client::registry::Registry::default();
    e.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let metric = |series: &str| -> f64 {
        let full = format!("{series}{{model_name=\"llmd-tiny\",engine=\"0\"");
        text.lines()
            .find(|l| l.starts_with(&full))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    // vLLM's connector counters, in tokens: 5 prompts of 41, alpha's 40 back.
    assert_eq!(metric("vllm:external_prefix_cache_queries_total"), 5.0 * 41.0);
    assert_eq!(metric("vllm:external_prefix_cache_hits_total"), 40.0);
    assert_eq!(metric("llmd:kv_offload_capacity_blocks"), 64.0);
    assert!(metric("llmd:kv_offload_used_blocks") >= 10.0);
    assert!(text.contains(
        "llmd:kv_offload_blocks_total{model_name=\"llmd-tiny\",engine=\"0\",medium=\"CPU\",direction=\"load\"} 10"
    ));
}

#[test]
fn host_memory_announces_what_it_holds_as_vllms_offloader_and_keeps_to_its_size() {
    let mut e = engine(7);
    let cfg = offload(&e, 6, None);
    e.enable_offload(&cfg).unwrap();
    for (i, p) in ["alpha", "bravo", "charlie", "delta"].iter().enumerate() {
        run(&mut e, req(&format!("r{i}"), prompt(p)));
    }
    let evs = events(&mut e);
    let cpu: Vec<&KvEvent> = evs.iter().filter(|ev| medium_of(ev) == Some("CPU")).collect();
    let stored: Vec<_> = cpu
        .iter()
        .filter_map(|ev| match ev {
            KvEvent::BlockStored(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(!stored.is_empty(), "offloads are announced");
    for s in &stored {
        // vLLM's OffloadingConnector: hashes only (located through the GPU events) and
        // the offloaded block size.
        assert!(s.token_ids.is_empty() && s.parent_block_hash.is_none() && s.block_size == BS as u32, "{s:?}");
        assert!(s.lora_id.is_none());
    }
    let removed: usize = cpu
        .iter()
        .map(|ev| match ev {
            KvEvent::BlockRemoved(r) => r.block_hashes.len(),
            _ => 0,
        })
        .sum();
    let added: usize = stored.iter().map(|s| s.block_hashes.len()).sum();
    assert!(removed > 0, "a full host tier gives blocks up, and says so");
    assert!(added - removed <= 6, "at most 6 blocks held: {added} stored, {removed} removed");
    // Every hash announced on the CPU was first announced on the GPU.
    let gpu: std::collections::HashSet<_> = evs
        .iter()
        .filter_map(|ev| match ev {
            KvEvent::BlockStored(s) if s.medium.as_deref() == Some("GPU") => Some(s.block_hashes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(stored.iter().flat_map(|s| &s.block_hashes).all(|h| gpu.contains(h)));
    // ... and is announced on the CPU before its removal from the GPU, as vLLM's
    // offloader orders them, so an index mapping blocks through the GPU events still
    // knows the block when the CPU store arrives.
    let at = |medium: &str, stored: bool, h| {
        evs.iter().position(|ev| match ev {
            KvEvent::BlockStored(s) if stored => s.medium.as_deref() == Some(medium) && s.block_hashes.contains(h),
            KvEvent::BlockRemoved(r) if !stored => r.medium.as_deref() == Some(medium) && r.block_hashes.contains(h),
            _ => false,
        })
    };
    for h in stored.iter().flat_map(|s| &s.block_hashes) {
        let (cpu, gone) = (at("CPU", true, h).unwrap(), at("GPU", false, h).unwrap());
        assert!(cpu < gone, "CPU store at {cpu} after the GPU removal at {gone}");
    }
}

#[test]
fn a_store_threshold_keeps_one_off_blocks_out() {
    let mut e = engine(7);
    let cfg = OffloadConfig { store_threshold: 2, ..offload(&e, 64, None) };
    e.enable_offload(&cfg).unwrap();
    // Looked up once each, then evicted: none stored.
    run(&mut e, req("alpha", prompt("alpha")));
    push_out(&mut e, "1");
    assert_eq!(e.offload_stats().unwrap().stored_blocks, 0);
    // Alpha looked up a second time, then evicted again: now it goes down.
    let a = prompt("alpha");
    run(&mut e, req("alpha2", a.clone()));
    push_out(&mut e, "2");
    assert!(e.offload_stats().unwrap().stored_blocks >= 10);
    let (_, cached) = run(&mut e, req("alpha3", a));
    assert_eq!(cached, 40);
}

#[test]
fn offloading_needs_a_backend_that_can_copy_blocks_and_memory_for_one() {
    let mut e = engine(7);
    let none = OffloadConfig { cpu_bytes: 1, ..offload(&e, 1, None) };
    let err = e.enable_offload(&none).unwrap_err().to_string();
    assert!(err.contains("cpu_bytes_to_use") && err.contains("no block"), "{err}");
    // Offloaded blocks are whole device blocks, as vLLM asserts.
    for odd in [BS + 1, BS / 2] {
        let cfg = OffloadConfig { block_size: Some(odd), ..offload(&e, 8, None) };
        let err = e.enable_offload(&cfg).unwrap_err().to_string();
        assert!(err.contains("block_size") && err.contains("multiple"), "{odd}: {err}");
    }
}

#[test]
fn offloaded_blocks_of_several_device_blocks_are_stored_once_computed_and_come_back_whole() {
    let a = prompt("alpha");
    let want = run(&mut engine(7), req("cold", a.clone())).0;
    for k in [2, 3] {
        let mut e = engine(7);
        // 64 device blocks' worth of host memory: 32 groups of two, 21 of three, room
        // for the four prompts' groups.
        let cfg = OffloadConfig { block_size: Some(k * BS), ..offload(&e, 64, None) };
        e.enable_offload(&cfg).unwrap();
        let (first, _) = run(&mut e, req("a1", a.clone()));
        assert_eq!(first, want);
        // Stored as computed, not at eviction: alpha's 41 prompt and 5 more tokens make
        // 11 full blocks, so 11 / k whole groups, before anything was evicted.
        let s = e.offload_stats().unwrap();
        assert_eq!(s.stored_blocks, (11 / k) as u64, "k={k}");
        assert_eq!(s.stored_bytes, (11 / k * k * e.kv_block_layout().unwrap().block_bytes()) as u64);
        let evs = events(&mut e);
        let hashes: Vec<_> = evs
            .iter()
            .filter_map(|ev| match ev {
                KvEvent::BlockStored(s) if s.medium.as_deref() == Some("GPU") => Some(s.block_hashes.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        let cpu: Vec<_> = evs
            .iter()
            .filter_map(|ev| match ev {
                KvEvent::BlockStored(s) if s.medium.as_deref() == Some("CPU") => {
                    // vLLM's offloader: the offloaded block size, hashes only.
                    assert_eq!(s.block_size, (k * BS) as u32);
                    assert!(s.token_ids.is_empty() && s.parent_block_hash.is_none());
                    Some(s.block_hashes.clone())
                }
                _ => None,
            })
            .flatten()
            .collect();
        // Each group under its last device block's hash.
        let want_keys: Vec<_> = hashes.iter().skip(k - 1).step_by(k).take(11 / k).cloned().collect();
        assert_eq!(cpu, want_keys, "k={k}");

        push_out(&mut e, "1");
        assert_eq!(e.cached_prefix_blocks(&a, &RequestKeys::new()).unwrap(), 0, "alpha left the device");
        let (again, cached) = run(&mut e, req("a2", a.clone()));
        assert_eq!(again, want, "k={k}: tokens from onboarded groups equal a cold run's");
        // Whole groups within the prompt's 10 full blocks (the last token is computed).
        assert_eq!(cached, 10 / k * k * BS, "k={k}");
        assert_eq!(e.offload_stats().unwrap().loaded_blocks, (10 / k * k) as u64, "device blocks written");
    }
}

#[test]
fn a_group_is_onboarded_from_where_the_device_hit_ends() {
    // Half of alpha stays on the device; the groups past it come back from host memory.
    let a = prompt("alpha");
    let want = run(&mut engine(7), req("cold", a.clone())).0;
    let mut e = engine(7);
    let cfg = OffloadConfig { block_size: Some(2 * BS), ..offload(&e, 64, None) };
    e.enable_offload(&cfg).unwrap();
    run(&mut e, req("a1", a.clone()));
    push_out(&mut e, "1");
    // Alpha's first 5 blocks (20 tokens) back on the device, computed.
    let (_, cached) = run(&mut e, req("head", a[..21].to_vec()));
    assert_eq!(cached, 16, "the first two groups came back from host memory");
    assert_eq!(e.cached_prefix_blocks(&a, &RequestKeys::new()).unwrap(), 5);
    let loaded = e.offload_stats().unwrap().loaded_blocks;
    let (again, cached) = run(&mut e, req("a2", a.clone()));
    assert_eq!(again, want);
    assert_eq!(cached, 40);
    // Block 5 was on the device; the group holding it (4, 5) and those after came up,
    // writing blocks 5..10: five device blocks.
    assert_eq!(e.offload_stats().unwrap().loaded_blocks - loaded, 5);
}

#[test]
fn the_simulator_charges_the_copy_back_and_it_beats_recomputing() {
    let clock = Arc::new(ManualClock::new());
    let latency: LatencyModel = "step=1ms,prefill=100us,decode=10us,context=0ns,onboard=10us".parse().unwrap();
    let sim = SimBackend::new(latency, clock.clone(), ByteTokenizer::VOCAB, 4096, 32..127, 1).with_block_size(BS);
    let cfg = EngineConfig { block_size: BS, num_blocks: BLOCKS, max_model_len: 80, ..Default::default() };
    let mut e = Engine::new(cfg, Box::new(sim), Arc::new(ByteTokenizer), vec![], clock.clone()).unwrap();
    // 64 blocks of the simulator's nominal 512 KiB (128 KiB a token, 4 tokens).
    e.enable_offload(&OffloadConfig { cpu_bytes: (64 * 512) << 10, ..OffloadConfig::from_size_gib(1.0).unwrap() })
        .unwrap();
    let a = prompt("alpha");
    let ttft = |e: &mut Engine, id: &str, p: Vec<u32>| {
        let t0 = clock.now();
        e.add_request(req(id, p)).unwrap();
        loop {
            if e.step().unwrap().iter().any(|o| !o.token_ids.is_empty()) {
                let t = clock.now() - t0;
                while e.has_work() {
                    e.step().unwrap();
                }
                return t;
            }
        }
    };
    let cold = ttft(&mut e, "a1", a.clone());
    for p in ["bravo", "charlie", "delta"] {
        ttft(&mut e, p, prompt(p));
    }
    let warm = ttft(&mut e, "a2", a);
    // Cold: 41 prompt tokens of prefill (4.1 ms). Warm: 40 tokens copied back (0.4 ms),
    // then one token's step after a cached prefix (1 ms + 10 µs).
    assert_eq!(cold, Duration::from_micros(4_100));
    assert_eq!(warm, Duration::from_micros(400 + 1_010));
}

#[test]
fn a_checkpoint_served_from_host_memory_gives_a_cold_runs_tokens() {
    // Hugging Face checkpoints (Qwen2 with biases and YaRN in f16; Llama with GQA, tied
    // embeddings, bf16, sharded), token ids from their own tokenizers.
    for name in ["qwen2-bias-yarn-f16", "llama-gqa-tied-bf16-sharded"] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let build = || {
            llmd_engine::EngineBuilder::checkpoint(&dir)
                .block_size(BS)
                .num_blocks(64)
                .max_model_len(256)
                .kv_dtype(KvDtype::F32)
                .clock(Arc::new(ManualClock::new()))
                .build()
                .unwrap()
                .engine
        };
        let mut e = build();
        let encode = |e: &Engine, s: &str| e.tokenizer().encode(s, false).unwrap();
        let p = encode(&e, "Blocks evicted from the cache come back from host memory, not from the model.");
        assert!(p.len() > 3 * BS, "{name}: {} tokens", p.len());
        let (want, _) = run(&mut build(), req("cold", p.clone()));
        let cfg = offload(&e, 64, None);
        e.enable_offload(&cfg).unwrap();
        assert_eq!(run(&mut e, req("first", p.clone())).0, want, "{name}");
        for i in 0..8 {
            let o = encode(&e, &format!("Other prompt number {i} takes the device's blocks one after another."));
            run(&mut e, req(&format!("other{i}"), o));
        }
        assert_eq!(e.cached_prefix_blocks(&p, &RequestKeys::new()).unwrap(), 0, "{name}: evicted");
        let (again, cached) = run(&mut e, req("again", p.clone()));
        assert_eq!(again, want, "{name}: onboarded blocks give the cold run's tokens");
        assert_eq!(cached, (p.len() - 1) / BS * BS, "{name}");
    }
}
