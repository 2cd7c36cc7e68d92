//! Pick latency of the scheduler, beside baselines measured in the same run.
//!
//! `pick/<routing>/<endpoints>`: one pick for an 8k-token prompt (token ids given, so
//! tokenization excluded) over 16, 256 and 1024 endpoints, with `precise-prefix` (index
//! holding 64 prefixes spread over the endpoints), `prefix` (approximate) and
//! `round-robin` (the baseline: no scoring). The presets match at most 256 blocks
//! (`maxPrefixBlocksToMatch`, llm-d's default): 4 096 of the prompt's 8 192 tokens.
//! `precise-prefix-8k` and `prefix-8k` are the same presets with
//! `maxPrefixBlocksToMatch: 512`, so the whole prompt is matched (checked before the
//! runs). `precise-prefix+tokenize` adds tokenizing the prompt text (about 8 000
//! tokens) with a BPE `tokenizer.json` on every pick; `+tokenize-warm` does the same
//! through the picker's prefix-cached tokenizer after the prompt was seen once, and
//! `+tokenize-next-turn` with the prompt grown by a new turn (only the new text is
//! tokenized). After criterion, p50/p99 over 20 000 picks (2 000 with tokenization) are
//! printed for each case (not under `--profile-time`, so a profile shows one case).
//!
//! Run: `cargo bench --bench scheduler`. Results go in BENCHMARKS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use llmd::engine::{HfTokenizer, Tokenize};
use llmd::kvcache::{BlockHash, BlockStored, ExternalBlockHash, KvEvent, KvEventBatch};
use llmd::scheduler::{Endpoint, LlmRequest, PluginRegistry, Role, Scheduler, SchedulerConfig, presets};

const PROMPT_TOKENS: usize = 8192;

/// Tokenizes a prompt text.
type Encode<'a> = dyn Fn(&str) -> Vec<u32> + 'a;

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let mut e = Endpoint::new(format!("pod-{i:04}"), format!("10.0.{}.{}:8000", i / 256, i % 256), Role::Both);
            e.metrics.waiting = (i * 7 % 13) as u64;
            e.metrics.kv_usage = (i % 10) as f64 / 10.0;
            e
        })
        .collect()
}

fn tokens(seed: u32) -> Vec<u32> {
    (0..PROMPT_TOKENS as u32).map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) % 32_000).collect()
}

/// The preset's configuration; for `<preset>-8k`, the same preset built with its
/// prefix scorers matching up to 512 blocks (the whole 8 192-token prompt) instead of
/// the default 256: the registry's factories get the parameter added, nothing else.
fn config(routing: &str) -> SchedulerConfig {
    let mut reg = PluginRegistry::with_builtins();
    let Some(base) = routing.strip_suffix("-8k") else { return presets::preset(routing, &reg).expect("preset") };
    for t in ["prefix-cache-scorer", "precise-prefix-cache-scorer"] {
        let factory = reg.get(t).expect("built-in").clone();
        reg.register(t, move |name, params| {
            let mut params = if params.is_object() { params.clone() } else { serde_json::json!({}) };
            params["maxPrefixBlocksToMatch"] = (PROMPT_TOKENS / 16).into();
            factory(name, &params)
        });
    }
    presets::preset(base, &reg).expect("preset")
}

/// A `BlockStored` event for the first `blocks` blocks of prompt `p`.
fn stored(p: u32, blocks: usize) -> KvEventBatch {
    let toks = tokens(p);
    let hashes: Vec<ExternalBlockHash> = (0..blocks)
        .map(|b| {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&p.to_le_bytes());
            bytes[4..8].copy_from_slice(&(b as u32).to_le_bytes());
            ExternalBlockHash::Bytes(BlockHash::from_bytes(&bytes).expect("hash"))
        })
        .collect();
    let ev = KvEvent::BlockStored(BlockStored {
        block_hashes: hashes,
        token_ids: toks[..blocks * 16].to_vec(),
        block_size: 16,
        medium: Some("GPU".into()),
        ..Default::default()
    });
    KvEventBatch { ts: 0.0, events: vec![ev], data_parallel_rank: None }
}

fn scheduler(routing: &str, eps: &[Endpoint]) -> Scheduler {
    let s = Scheduler::new(config(routing), 1);
    // Feed the precise index: 64 prompts, each cached (fully) on four endpoints.
    for c in s.config().plugins.values().filter_map(|h| h.kv_events.clone()) {
        for p in 0..64u32 {
            let batch = stored(p, PROMPT_TOKENS / 16);
            for k in 0..4 {
                c.apply(&eps[(p as usize * 4 + k) % eps.len()].id, None, &batch);
            }
        }
    }
    s
}

/// Checks that `<preset>-8k` matches the whole prompt where the preset matches half:
/// one endpoint holds the prompt's first 4 096 tokens, another all 8 192.
fn check_full_match() {
    let eps: Vec<Endpoint> =
        ["half", "full"].iter().map(|n| Endpoint::new(*n, format!("{n}:8000"), Role::Both)).collect();
    for (routing, full_wins) in [("precise-prefix", false), ("precise-prefix-8k", true)] {
        let s = Scheduler::new(config(routing), 1);
        for c in s.config().plugins.values().filter_map(|h| h.kv_events.clone()) {
            c.apply("half", None, &stored(7, PROMPT_TOKENS / 32));
            c.apply("full", None, &stored(7, PROMPT_TOKENS / 16));
        }
        let pick = s.pick(&request(true), &eps).expect("pick");
        let d = pick.destination().expect("destination");
        let raw = d.breakdown.iter().find(|b| b.scorer == "precise-prefix-cache-scorer").expect("scored").raw;
        assert_eq!(raw, 1.0, "{routing}: {d:?}");
        if full_wins {
            assert_eq!(d.endpoint, "full", "{routing} does not see past 4 096 tokens: {d:?}");
        }
    }
}

fn request(with_tokens: bool) -> LlmRequest {
    let mut r = LlmRequest::new("r", "m", "x".repeat(PROMPT_TOKENS * 4));
    if with_tokens {
        r.token_ids = Some(tokens(7));
    }
    r
}

fn percentiles(iters: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[t.len() * 99 / 100])
}

fn main() {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30)
        .configure_from_args();
    let tok_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("llmd-engine/tests/fixtures/llama-llama3rope-f32/tokenizer.json");
    let tokenizer = HfTokenizer::from_file(&tok_path).expect("tokenizer");
    let text = "Paged attention stores keys and values in blocks; the gateway picks a replica. ".repeat(500);
    let text_tokens = tokenizer.encode(&text, true).expect("encode").len();
    let profiling = std::env::args().any(|a| a == "--profile-time");
    // Criterion's name filter, if one was given, limits the percentile runs too.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-') && a.parse::<f64>().is_err());
    let wanted = |id: &str| filter.as_deref().is_none_or(|f| id.contains(f));
    let shared: std::sync::Arc<dyn Tokenize> =
        std::sync::Arc::new(HfTokenizer::from_file(&tok_path).expect("tokenizer"));
    let cached = llmd::scheduler::tokencache::PrefixCachedTokenizer::new(shared);
    // Warm: the prompt seen once (the verification runs encode whole, then cache).
    for _ in 0..20 {
        cached.encode(&text, true).expect("encode");
    }
    assert!(!cached.is_off(), "the prefix cache verifies on this tokenizer");
    let mut turn = 0u64;
    check_full_match();
    let mut rows = Vec::new();
    {
        let mut g = c.benchmark_group("pick");
        for n in [16usize, 256, 1024] {
            let eps = endpoints(n);
            for routing in ["round-robin", "prefix", "prefix-8k", "precise-prefix", "precise-prefix-8k"] {
                let s = scheduler(routing, &eps);
                let req = request(true);
                g.bench_function(BenchmarkId::new(routing, n), |b| {
                    b.iter(|| s.pick(black_box(&req), &eps).expect("pick"))
                });
                if profiling || !wanted(&format!("pick/{routing}/{n}")) {
                    continue;
                }
                let (p50, p99) = percentiles(20_000, || {
                    black_box(s.pick(&req, &eps).expect("pick"));
                });
                rows.push(format!(
                    "| {routing} | {n} | tokens given | {:.1} µs | {:.1} µs |",
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6
                ));
            }
            let s = scheduler("precise-prefix", &eps);
            g.bench_function(BenchmarkId::new("precise-prefix+tokenize", n), |b| {
                b.iter(|| {
                    let mut r = request(false);
                    r.token_ids = Some(tokenizer.encode(black_box(&text), true).expect("encode"));
                    s.pick(&r, &eps).expect("pick")
                })
            });
            g.bench_function(BenchmarkId::new("precise-prefix+tokenize-warm", n), |b| {
                b.iter(|| {
                    let mut r = request(false);
                    r.token_ids = Some(cached.encode(black_box(&text), true).expect("encode"));
                    s.pick(&r, &eps).expect("pick")
                })
            });
            // A conversation's next turn: the history is cached, the new text is not.
            let mut next_turn = || {
                turn += 1;
                format!("{text} User turn {turn}: and how does the picker choose among the replicas?")
            };
            g.bench_function(BenchmarkId::new("precise-prefix+tokenize-next-turn", n), |b| {
                b.iter_batched(
                    &mut next_turn,
                    |t| {
                        let mut r = request(false);
                        r.token_ids = Some(cached.encode(&t, true).expect("encode"));
                        s.pick(&r, &eps).expect("pick")
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
            if profiling {
                continue;
            }
            let cases: [(&str, &Encode); 3] = [
                ("precise-prefix + tokenize", &|t| tokenizer.encode(t, true).expect("encode")),
                ("precise-prefix + tokenize, prefix cache warm", &|t| cached.encode(t, true).expect("encode")),
                ("precise-prefix + tokenize, next turn", &|t| cached.encode(t, true).expect("encode")),
            ];
            for (label, encode) in cases {
                let id = format!(
                    "pick/{}/{n}",
                    label
                        .replace(" + ", "+")
                        .replace(", prefix cache warm", "-warm")
                        .replace(", next turn", "-next-turn")
                );
                if !wanted(&id) {
                    continue;
                }
                let next = label.ends_with("next turn");
                let texts: Vec<String> = (0..2_000).map(|_| if next { next_turn() } else { text.clone() }).collect();
                let mut i = 0;
                let (p50, p99) = percentiles(2_000, || {
                    let mut r = request(false);
                    r.token_ids = Some(encode(&texts[i]));
                    i += 1;
                    black_box(s.pick(&r, &eps).expect("pick"));
                });
                rows.push(format!(
                    "| {label} | {n} | {text_tokens}-token text | {:.1} µs | {:.1} µs |",
                    p50.as_secs_f64() * 1e6,
                    p99.as_secs_f64() * 1e6
                ));
            }
        }
        g.finish();
    }
    println!("\n| routing | endpoints | prompt | p50 | p99 |\n|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
