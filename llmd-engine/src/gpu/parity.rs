//! The GPU parity checks, one body for every vendor: each kernel and the whole forward
//! pass against the CPU engine. `cuda::tests` and `rocm::tests` run them in their
//! `needs_hardware` modules (ignored where there is no GPU, with the reason).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::{AttentionQueries, GpuApi, GpuBackend, Kernels};
use crate::backend::{Backend, LogitsWanted, ModelBackend, SeqInput, StepLogits};
use crate::kv::KvDtype;
use crate::model::Rope;
use crate::{ByteTokenizer, Engine, EngineConfig, ManualClock, NewRequest, SamplingParams, builtin};

fn why<A: GpuApi>(e: impl std::fmt::Display) -> String {
    format!("needs a GPU with {}: {e}", A::VENDOR)
}

fn kernels<A: GpuApi>() -> Kernels<A> {
    Kernels::new(0).unwrap_or_else(|e| panic!("{}", why::<A>(e)))
}

/// Values in [-1, 1) from a seed, without a generator crate.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

/// softmax(q·K / √d)·V over each query's visible positions, read through its table.
#[allow(clippy::too_many_arguments)]
fn attention_reference(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    qs: &AttentionQueries,
    heads: usize,
    kvh: usize,
    hd: usize,
    bs: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    for (i, (&p, &w)) in qs.pos.iter().zip(&qs.window_start).enumerate() {
        let table = &qs.tables[qs.table_start[i] as usize..];
        for h in 0..heads {
            let kh = h / (heads / kvh);
            let qv = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            let at = |pos: u32| {
                let pos = pos as usize;
                ((table[pos / bs] as usize * bs + pos % bs) * kvh + kh) * hd
            };
            let scores: Vec<f32> = (w..=p)
                .map(|pos| {
                    qv.iter().zip(&kc[at(pos)..at(pos) + hd]).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                })
                .collect();
            let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            let o = &mut out[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            for (j, pos) in (w..=p).enumerate() {
                for (d, acc) in o.iter_mut().enumerate() {
                    *acc += e[j] / sum * vc[at(pos) + d];
                }
            }
        }
    }
    out
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

fn dense(s: &StepLogits) -> &[f32] {
    match s {
        StepLogits::Dense(v) => v,
        other => panic!("no logits: {other:?}"),
    }
}

/// Largest difference over the logits that matter (above -10: the built-in model
/// pushes non-printable tokens to -30), relative to their standard deviation.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let live: Vec<(f32, f32)> = a.iter().zip(b).filter(|(_, y)| **y > -10.0).map(|(x, y)| (*x, *y)).collect();
    let mean = live.iter().map(|p| p.1).sum::<f32>() / live.len().max(1) as f32;
    let sd = (live.iter().map(|p| (p.1 - mean).powi(2)).sum::<f32>() / live.len().max(1) as f32).sqrt().max(1e-6);
    live.iter().map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / sd
}

pub(crate) fn elementwise_kernels_match_the_cpu<A: GpuApi>() {
    let k = kernels::<A>();
    let (rows, hidden) = (5, 384);
    let (x, w) = (noise(rows * hidden, 1), noise(hidden, 2));
    let mut want = vec![0f32; rows * hidden];
    for r in 0..rows {
        crate::model::layers::rms_norm(
            &x[r * hidden..(r + 1) * hidden],
            &w,
            1e-5,
            &mut want[r * hidden..(r + 1) * hidden],
        );
    }
    let mut out = k.zeros::<f32>(rows * hidden).unwrap();
    k.rms_norm_f32(&k.upload(&x).unwrap(), &k.upload(&w).unwrap(), &mut out, rows, hidden, 1e-5).unwrap();
    close(&k.download(&out).unwrap(), &want, 1e-5, "rms_norm");

    // RoPE of the built-in model's config at positions 7..12.
    let cfg = builtin::config();
    let rope = Rope::new(&cfg);
    let (heads, hd) = (cfg.num_attention_heads, cfg.head_dim);
    let q = noise(rows * heads * hd, 3);
    let (mut cos, mut sin, mut want) = (Vec::new(), Vec::new(), q.clone());
    for r in 0..rows {
        let (c, s) = rope.cos_sin(7 + r, 12);
        rope.apply(&mut want[r * heads * hd..(r + 1) * heads * hd], heads, &c, &s);
        cos.extend(c);
        sin.extend(s);
    }
    let mut dq = k.upload(&q).unwrap();
    k.rope(&mut dq, &k.upload(&cos).unwrap(), &k.upload(&sin).unwrap(), rows, heads, hd).unwrap();
    close(&k.download(&dq).unwrap(), &want, 1e-5, "rope");

    let (tokens, inter) = (3, 100);
    let gu = noise(tokens * 2 * inter, 4);
    let want: Vec<f32> = (0..tokens * inter)
        .map(|i| {
            let (t, j) = (i / inter, i % inter);
            let (g, u) = (gu[t * 2 * inter + j], gu[t * 2 * inter + inter + j]);
            g / (1.0 + (-g).exp()) * u
        })
        .collect();
    let mut out = k.zeros::<f32>(tokens * inter).unwrap();
    k.silu_mul_f32(&k.upload(&gu).unwrap(), &mut out, tokens, inter).unwrap();
    close(&k.download(&out).unwrap(), &want, 1e-5, "silu_mul");
}

pub(crate) fn paged_attention_matches_the_reference_for_decode_and_chunked_prefill_with_gqa<A: GpuApi>() {
    let k = kernels::<A>();
    let (heads, kvh, hd, bs, blocks) = (8, 2, 64, 16, 32);
    let slot_len = kvh * hd;
    // Two sequences: one of 40 tokens through scattered blocks, decoding at 39; one
    // of 20 whose last 5 tokens are a prefill chunk (causal), the first with a
    // sliding window.
    let t1 = [5u32, 17, 2];
    let t2 = [30u32, 9];
    let mut qs = AttentionQueries::default();
    qs.tables.extend(t1);
    qs.tables.extend(t2);
    qs.table_start.push(0);
    qs.pos.push(39);
    qs.window_start.push(0);
    for p in 15..20 {
        qs.table_start.push(3);
        qs.pos.push(p);
        qs.window_start.push(p.saturating_sub(12));
    }
    // Fill the cache: every slot the tables name gets keys and values.
    let mut slots = Vec::new();
    for (t, len) in [(&t1[..], 40), (&t2[..], 20)] {
        for p in 0..len {
            slots.push(t[p / bs] * bs as u32 + (p % bs) as u32);
        }
    }
    let (kv_k, kv_v) = (noise(slots.len() * slot_len, 5), noise(slots.len() * slot_len, 6));
    let q = noise(qs.pos.len() * heads * hd, 7);
    for storage in ["f32", "f16", "bf16"] {
        // What the cache holds after rounding to its storage type.
        let round = |x: f32| match storage {
            "f16" => half::f16::from_f32(x).to_f32(),
            "bf16" => half::bf16::from_f32(x).to_f32(),
            _ => x,
        };
        let mut kc = vec![0f32; blocks * bs * slot_len];
        let mut vc = kc.clone();
        for (i, &s) in slots.iter().enumerate() {
            for d in 0..slot_len {
                kc[s as usize * slot_len + d] = round(kv_k[i * slot_len + d]);
                vc[s as usize * slot_len + d] = round(kv_v[i * slot_len + d]);
            }
        }
        let want = attention_reference(&q, &kc, &vc, &qs, heads, kvh, hd, bs);
        let (dk, dv, ds) = (k.upload(&kv_k).unwrap(), k.upload(&kv_v).unwrap(), k.upload(&slots).unwrap());
        let dq = k.upload(&q).unwrap();
        let dqs = k.upload_queries(&qs).unwrap();
        let mut out = k.zeros::<f32>(q.len()).unwrap();
        let scale = 1.0 / (hd as f32).sqrt();
        if storage == "f32" {
            let (mut ck, mut cv) = (k.zeros::<f32>(kc.len()).unwrap(), k.zeros::<f32>(kc.len()).unwrap());
            k.write_kv(storage, &dk, &dv, &ds, &mut ck, &mut cv, slots.len(), slot_len).unwrap();
            k.paged_attention(storage, &dq, &ck, &cv, &dqs, &mut out, heads, kvh, hd, bs, scale).unwrap();
        } else {
            let (mut ck, mut cv) = (k.zeros::<u16>(kc.len()).unwrap(), k.zeros::<u16>(kc.len()).unwrap());
            k.write_kv(storage, &dk, &dv, &ds, &mut ck, &mut cv, slots.len(), slot_len).unwrap();
            k.paged_attention(storage, &dq, &ck, &cv, &dqs, &mut out, heads, kvh, hd, bs, scale).unwrap();
        }
        close(&k.download(&out).unwrap(), &want, 1e-4, storage);
    }
}

pub(crate) fn the_forward_pass_matches_the_cpu_runner<A: GpuApi>() {
    for dtype in [KvDtype::BF16, KvDtype::F16] {
        let model = builtin::model(3).unwrap();
        let mut gpu = GpuBackend::<A>::new(&model, 0, 64, 16, dtype).unwrap_or_else(|e| panic!("{}", why::<A>(e)));
        let mut cpu = ModelBackend::new(builtin::model(3).unwrap(), 64, 16, KvDtype::F32).unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 + 3) % 200).collect();
        let table = [3u32, 7, 1, 9];
        let step = |b: &mut dyn Backend, toks: &[u32], start: usize| {
            b.execute(&[SeqInput { tokens: toks, start, block_table: &table, logits: LogitsWanted::Last }]).unwrap()
        };
        let (g, c) = (step(&mut gpu, &prompt, 0), step(&mut cpu, &prompt, 0));
        // bf16 rounds weights, KV and GEMM inputs to 8 bits of mantissa, f16 to 11.
        let tol = if dtype == KvDtype::BF16 { 0.15 } else { 0.03 };
        let d = rel_diff(dense(&g[0]), dense(&c[0]));
        assert!(d < tol, "{dtype:?}: prefill logits differ by {d} standard deviations");
        // Decode, both sides fed the CPU's greedy tokens: logits stay as close, and
        // the GPU's greedy choice is the CPU's wherever the CPU's top two are not
        // within rounding of each other.
        let mut tok = argmax(dense(&c[0]));
        for i in 0..8 {
            let (g, c) = (step(&mut gpu, &[tok], 40 + i), step(&mut cpu, &[tok], 40 + i));
            let (g, c) = (dense(&g[0]), dense(&c[0]));
            let d = rel_diff(g, c);
            assert!(d < tol, "{dtype:?}: step {i} logits differ by {d}");
            let mut sorted = c.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 0.1 {
                assert_eq!(argmax(g), argmax(c), "{dtype:?}: token {i}");
            }
            tok = argmax(c);
        }
        // Batched equals solo on the GPU: two sequences in one step.
        let other: Vec<u32> = (0..21).map(|i| (i * 11 + 5) % 200).collect();
        let t2 = [20u32, 21];
        let batched = gpu
            .execute(&[
                SeqInput { tokens: &other, start: 0, block_table: &t2, logits: LogitsWanted::Last },
                SeqInput { tokens: &[tok], start: 48, block_table: &table, logits: LogitsWanted::Last },
            ])
            .unwrap();
        let mut solo = GpuBackend::<A>::new(&model, 0, 64, 16, dtype).unwrap();
        let alone = solo
            .execute(&[SeqInput { tokens: &other, start: 0, block_table: &t2, logits: LogitsWanted::Last }])
            .unwrap();
        let d = rel_diff(dense(&batched[0]), dense(&alone[0]));
        assert!(d < 1e-3, "{dtype:?}: batched differs from solo by {d}");
    }
}

pub(crate) fn exported_blocks_continue_identically_and_engines_agree<A: GpuApi>() {
    let model = builtin::model(5).unwrap();
    let mut a = GpuBackend::<A>::new(&model, 0, 32, 16, KvDtype::BF16).unwrap_or_else(|e| panic!("{}", why::<A>(e)));
    let mut b = GpuBackend::<A>::new(&model, 0, 32, 16, KvDtype::BF16).unwrap();
    let prompt: Vec<u32> = (0..33).map(|i| (i * 13 + 1) % 200).collect();
    let table = [2u32, 4, 6];
    a.execute(&[SeqInput { tokens: &prompt[..32], start: 0, block_table: &table, logits: LogitsWanted::None }])
        .unwrap();
    let bytes = a.export_kv_blocks(&table[..2]).unwrap();
    let layout = a.kv_layout().unwrap();
    b.import_kv_blocks(&[10, 11], &layout, &bytes).unwrap();
    assert_eq!(b.export_kv_blocks(&[10, 11]).unwrap(), bytes, "imported blocks read back the same");
    let last = &prompt[32..];
    let la =
        a.execute(&[SeqInput { tokens: last, start: 32, block_table: &table, logits: LogitsWanted::Last }]).unwrap();
    let lb = b
        .execute(&[SeqInput { tokens: last, start: 32, block_table: &[10, 11, 12], logits: LogitsWanted::Last }])
        .unwrap();
    assert_eq!(la, lb, "the same blocks, the same logits");
    // The same bytes into the CPU engine (bf16 KV, the same layout) continue as the GPU
    // does, within bf16 rounding: a layout mistake made alike in export and import would
    // pass the GPU-to-GPU check above, not this one.
    let mut cpu = ModelBackend::new(builtin::model(5).unwrap(), 32, 16, KvDtype::BF16).unwrap();
    cpu.import_kv_blocks(&[10, 11], &layout, &bytes).unwrap();
    let lc = cpu
        .execute(&[SeqInput { tokens: last, start: 32, block_table: &[10, 11, 12], logits: LogitsWanted::Last }])
        .unwrap();
    let d = rel_diff(dense(&la[0]), dense(&lc[0]));
    assert!(d < 0.15, "GPU blocks continued on the CPU differ by {d} standard deviations");

    // Whole engines, greedy: the GPU engine's tokens are the CPU engine's.
    let run = |backend: Box<dyn Backend>| {
        let cfg = EngineConfig { block_size: 16, num_blocks: 32, max_model_len: 128, seed: 5, ..Default::default() };
        let mut e =
            Engine::new(cfg, backend, Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], Arc::new(ManualClock::new()))
                .unwrap();
        let params = SamplingParams { temperature: 0.0, max_tokens: 12, ignore_eos: true, ..Default::default() };
        let prompt: Vec<u32> = "the GPU engine answers as the CPU one".bytes().map(u32::from).collect();
        e.add_request(NewRequest {
            id: "r".into(),
            prompt,
            params,
            keys: Default::default(),
            kv_transfer: Default::default(),
        })
        .unwrap();
        let mut out = Vec::new();
        while e.has_work() {
            for o in e.step().unwrap() {
                out.extend(o.token_ids);
            }
        }
        out
    };
    let cpu = run(Box::new(ModelBackend::new(builtin::model(5).unwrap(), 32, 16, KvDtype::F32).unwrap()));
    // f16 (11 bits of mantissa): close enough to the f32 CPU engine for greedy tokens
    // to agree on this prompt; bf16's are compared by logits above.
    let gpu = run(Box::new(GpuBackend::<A>::new(&model, 0, 32, 16, KvDtype::F16).unwrap()));
    assert_eq!(gpu, cpu);
}
