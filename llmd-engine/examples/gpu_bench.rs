//! The CUDA backend's benchmarks, on one GPU, each beside the ceiling measured in the
//! same run (issue 15): a device-to-device copy's rate; decode attention's KV bytes/s
//! against copying the same bytes; decode tokens/s at batch 1, 32 and 128 against the
//! bandwidth bound of a step ((weight bytes + KV bytes read) / the copy rate counting
//! reads and writes); prefill tokens/s, and a prefill step against its GEMMs alone
//! through cuBLAS. Models are Llama-shaped with random weights
//! written on the device. Prints Markdown.
//!
//! `cargo run --release -p llmd-engine --features cuda --example gpu_bench -- 1b 8b`
//! (scripts/gpu/run.sh runs it on the device machine).

use std::time::{Duration, Instant};

use llmd_engine::backend::{Backend, LogitsWanted, SeqInput};
use llmd_engine::cuda::{AttentionQueries, CudaBackend, Kernels};
use llmd_engine::kv::KvDtype;
use llmd_engine::model::ModelConfig;

/// Llama-3.2-1B's and Llama-3.1-8B's shapes (config.json fields), context capped.
fn shape(name: &str) -> ModelConfig {
    let (h, inter, layers, heads, kv, tied) = match name {
        "1b" => (2048, 8192, 16, 32, 8, true),
        "8b" => (4096, 14336, 32, 32, 8, false),
        other => panic!("unknown shape {other} (1b or 8b)"),
    };
    let json = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"hidden_size":{h},"intermediate_size":{inter},
            "num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":{kv},
            "vocab_size":128256,"max_position_embeddings":8192,"rms_norm_eps":1e-5,"rope_theta":500000.0,
            "tie_word_embeddings":{tied},"torch_dtype":"bfloat16"}}"#
    );
    ModelConfig::from_json(&json).expect("a model config")
}

fn timed(mut f: impl FnMut(), k: &Kernels, iters: usize) -> Duration {
    f();
    k.synchronize().expect("sync");
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    k.synchronize().expect("sync");
    t.elapsed() / iters as u32
}

fn main() {
    let shapes: Vec<String> = std::env::args().skip(1).collect();
    let shapes = if shapes.is_empty() { vec!["1b".to_string(), "8b".to_string()] } else { shapes };
    let k = Kernels::new(0).expect("a GPU");
    println!(
        "# llmd CUDA backend on {} ({}, {} GiB)\n",
        k.device().name,
        k.device().arch,
        k.device().total_memory >> 30
    );

    // The copy ceiling: 1 GiB device to device.
    let n = 1usize << 30;
    let src = k.zeros::<u8>(n).expect("memory");
    let mut dst = k.zeros::<u8>(n).expect("memory");
    let copy = timed(|| k.copy(&src, &mut dst).expect("copy"), &k, 10);
    let rate_rw = 2.0 * n as f64 / copy.as_secs_f64();
    println!(
        "device-to-device copy of 1 GiB: {:.3} ms, {:.2} TB/s counting reads and writes\n",
        copy.as_secs_f64() * 1e3,
        rate_rw / 1e12
    );
    drop((src, dst));

    // Decode attention alone, bf16 KV: batch 128 × 1024 tokens of context, one layer.
    let (b, ctx, heads, kvh, hd, bs) = (128usize, 1024usize, 32usize, 8usize, 128usize, 16usize);
    let blocks = b * ctx / bs;
    let mut kc = k.zeros::<u16>(blocks * bs * kvh * hd).expect("memory");
    let mut vc = k.zeros::<u16>(blocks * bs * kvh * hd).expect("memory");
    k.fill_uniform("bf16", &mut kc, 1, 0.0, 1.0).expect("fill");
    k.fill_uniform("bf16", &mut vc, 2, 0.0, 1.0).expect("fill");
    let mut qs = AttentionQueries::default();
    for s in 0..b {
        qs.table_start.push(qs.tables.len() as u32);
        qs.tables.extend((0..ctx / bs).map(|i| (s * ctx / bs + i) as u32));
        qs.pos.push(ctx as u32 - 1);
        qs.window_start.push(0);
    }
    let q = k.upload(&vec![0.01f32; b * heads * hd]).expect("memory");
    let dqs = k.upload_queries(&qs).expect("memory");
    let mut out = k.zeros::<f32>(b * heads * hd).expect("memory");
    let attn = timed(
        || k.paged_attention("bf16", &q, &kc, &vc, &dqs, &mut out, heads, kvh, hd, bs, 0.088).expect("attention"),
        &k,
        20,
    );
    let kv_bytes = 2 * kc.len() * 2;
    let mut kv_copy = k.zeros::<u16>(kc.len()).expect("memory");
    let same = timed(
        || {
            k.copy(&kc, &mut kv_copy).expect("copy");
            k.copy(&vc, &mut kv_copy).expect("copy");
        },
        &k,
        20,
    );
    println!(
        "| decode attention, batch {b} × {ctx} tokens, GQA {heads}/{kvh}, bf16 | {:.3} ms | {:.2} TB/s of KV | copying the same bytes {:.3} ms | **{:.2}×** (target ≥ 0.7×) |\n",
        attn.as_secs_f64() * 1e3,
        kv_bytes as f64 / attn.as_secs_f64() / 1e12,
        same.as_secs_f64() * 1e3,
        same.as_secs_f64() / attn.as_secs_f64()
    );
    drop((kc, vc, kv_copy, q, out));

    println!("| shape | batch | context | step (ms) | tokens/s | bound tokens/s | of bound |");
    println!("|---|---|---|---|---|---|---|");
    for name in &shapes {
        let cfg = shape(name);
        let ctx = 512usize;
        let max_batch = 128usize;
        let blocks = max_batch * (ctx + 64) / bs + 8;
        let mut m = match CudaBackend::random(&cfg, 0, blocks, bs, KvDtype::BF16, 7) {
            Ok(m) => m,
            Err(e) => {
                println!("| {name} | - | - | {e} | | | |");
                continue;
            }
        };
        let per_seq = (ctx + 64).div_ceil(bs);
        let tables: Vec<Vec<u32>> =
            (0..max_batch).map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect()).collect();
        let prompt: Vec<u32> = (0..ctx as u32).map(|i| (i * 7919) % 128_000).collect();
        // Prefill every sequence's context (timed once, for prefill tokens/s).
        let t = Instant::now();
        for chunk in tables.chunks(4) {
            let inputs: Vec<SeqInput<'_>> = chunk
                .iter()
                .map(|tb| SeqInput { tokens: &prompt, start: 0, block_table: tb, logits: LogitsWanted::Last })
                .collect();
            m.execute(&inputs).expect("prefill");
        }
        let prefill = t.elapsed();
        println!(
            "| {name} prefill | {max_batch} × {ctx} | | {:.1} | {:.0} | | |",
            prefill.as_secs_f64() * 1e3,
            (max_batch * ctx) as f64 / prefill.as_secs_f64()
        );
        // One prefill step (4 × 512 tokens) against its GEMMs alone through the vendor
        // BLAS: the projections of every layer and the logits rows, same shapes.
        let step_inputs: Vec<SeqInput<'_>> = tables[..4]
            .iter()
            .map(|tb| SeqInput { tokens: &prompt, start: 0, block_table: tb, logits: LogitsWanted::Last })
            .collect();
        let reps = 5;
        m.execute(&step_inputs).expect("prefill");
        m.kernels().synchronize().expect("sync");
        let t = Instant::now();
        for _ in 0..reps {
            m.execute(&step_inputs).expect("prefill");
        }
        let step = t.elapsed() / reps;
        let kk = m.kernels();
        let rows = 4 * ctx;
        let (h, qd, kvd, inter) = (
            cfg.hidden_size,
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
            cfg.intermediate_size,
        );
        let projections = [(qd, h), (kvd, h), (kvd, h), (h, qd), (inter, h), (inter, h), (h, inter)];
        let w = kk.zeros::<u16>(inter * h.max(qd)).expect("memory");
        let x = kk.zeros::<u16>(rows * inter.max(h)).expect("memory");
        let mut y = kk.zeros::<f32>(rows * inter.max(h)).expect("memory");
        let lm_w = kk.zeros::<u16>(cfg.vocab_size * h).expect("memory");
        let mut lm_y = kk.zeros::<f32>(4 * cfg.vocab_size).expect("memory");
        let gemms = timed(
            || {
                for _ in 0..cfg.num_hidden_layers {
                    for &(o, i) in &projections {
                        kk.linear(KvDtype::BF16, &w, &x, &mut y, (o, rows, i), 0, o).expect("gemm");
                    }
                }
                kk.linear(KvDtype::BF16, &lm_w, &x, &mut lm_y, (cfg.vocab_size, 4, h), 0, cfg.vocab_size)
                    .expect("gemm");
            },
            kk,
            reps as usize,
        );
        println!(
            "| {name} prefill step | 4 × {ctx} | | {:.2} | {:.0} | its GEMMs alone {:.2} ms | **{:.2}×** |",
            step.as_secs_f64() * 1e3,
            rows as f64 / step.as_secs_f64(),
            gemms.as_secs_f64() * 1e3,
            gemms.as_secs_f64() / step.as_secs_f64()
        );
        drop((w, x, y, lm_w, lm_y));
        let weights = weight_bytes(&cfg);
        let kv_per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 2;
        for batch in [1usize, 32, 128] {
            let steps = 16;
            let tok = [17u32];
            let t = Instant::now();
            for s in 0..steps {
                let inputs: Vec<SeqInput<'_>> = tables[..batch]
                    .iter()
                    .map(|tb| SeqInput { tokens: &tok, start: ctx + s, block_table: tb, logits: LogitsWanted::Last })
                    .collect();
                m.execute(&inputs).expect("decode");
            }
            let step = t.elapsed() / steps as u32;
            let bytes = weights + batch * (ctx + steps / 2) * kv_per_token;
            let bound = batch as f64 / (bytes as f64 / rate_rw);
            let got = batch as f64 / step.as_secs_f64();
            println!(
                "| {name} | {batch} | {ctx} | {:.2} | {got:.0} | {bound:.0} | **{:.2}×** |",
                step.as_secs_f64() * 1e3,
                got / bound
            );
        }
    }
}

/// Bytes of a Llama shape's weights in bf16.
fn weight_bytes(c: &ModelConfig) -> usize {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let attn = h * c.num_attention_heads * hd * 2 + h * c.num_key_value_heads * hd * 2;
    let mlp = 3 * h * c.intermediate_size;
    let lm_head = if c.tie_word_embeddings { 0 } else { c.vocab_size * h };
    2 * (c.num_hidden_layers * (attn + mlp + 2 * h) + c.vocab_size * h + lm_head + h)
}
