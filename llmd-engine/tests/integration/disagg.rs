//! Prefill/decode disaggregation at the request level: a prefill request marked
//! `KvTransfer::Export` hands out its prompt's blocks when it ends, and a decode request
//! carrying them as `KvTransfer::Import` writes them in at admission and returns exactly
//! the tokens one engine computes alone (greedy), for prompts of several lengths. Local
//! prefix hits shrink what is written; remote blocks that cannot be used end as a clean
//! recompute (or an error under policy `fail`), and no blocks stay held either way.

use std::sync::Arc;

use llmd_engine::engine::{KvLoadFailurePolicy, KvTransfer, KvTransferOutcome, RemoteBlocks};
use llmd_engine::{
    ByteTokenizer, Engine, EngineBuilder, EngineConfig, FinishReason, KvDtype, LatencyModel, ManualClock, ModelBackend,
    NewRequest, SamplingParams, Tokenize, builtin,
};
use llmd_kvcache::RequestKeys;

const BS: usize = 4;

fn engine_with(block_size: usize, num_blocks: usize, dtype: KvDtype) -> Engine {
    let cfg = EngineConfig { block_size, num_blocks, max_model_len: 256, kv_dtype: dtype, ..Default::default() };
    let backend = ModelBackend::new(builtin::model(7).unwrap(), num_blocks, block_size, dtype).unwrap();
    Engine::new(cfg, Box::new(backend), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], Arc::new(ManualClock::new()))
        .unwrap()
}

fn engine(dtype: KvDtype) -> Engine {
    engine_with(BS, 128, dtype)
}

/// A prompt of exactly `len` tokens.
fn prompt(len: usize) -> Vec<u32> {
    let text = "The decode side pulls the blocks the prefill side computed; ".repeat(8);
    let mut p = ByteTokenizer.encode(&text, true).unwrap();
    p.truncate(len);
    p
}

fn req(id: &str, prompt: Vec<u32>, max_tokens: usize, kv_transfer: KvTransfer) -> NewRequest {
    let params = SamplingParams { temperature: 0.0, max_tokens, ignore_eos: true, ..Default::default() };
    NewRequest { id: id.into(), prompt, params, keys: RequestKeys::new(), kv_transfer }
}

struct Done {
    tokens: Vec<u32>,
    finished: Option<FinishReason>,
    cached: usize,
    outcome: Option<KvTransferOutcome>,
}

fn run(e: &mut Engine, r: NewRequest) -> Done {
    e.add_request(r).unwrap();
    let mut d = Done { tokens: Vec::new(), finished: None, cached: 0, outcome: None };
    while e.has_work() {
        for o in e.step().unwrap() {
            d.tokens.extend(&o.token_ids);
            d.cached = o.cached_tokens;
            if o.finished.is_some() {
                d.finished = o.finished;
                d.outcome = o.kv_transfer.map(|b| *b);
            }
        }
    }
    assert_eq!(e.kv_usage(), 0.0, "no blocks stay held once the request ended");
    d
}

/// The prefill leg: one token, the prompt's blocks handed out.
fn prefill(dtype: KvDtype, p: &[u32]) -> (Vec<bytes::Bytes>, llmd_engine::KvBlockLayout, Vec<u32>) {
    let mut e = engine(dtype);
    let d = run(&mut e, req("p", p.to_vec(), 1, KvTransfer::Export));
    assert_eq!(d.finished, Some(FinishReason::Length));
    match d.outcome {
        Some(KvTransferOutcome::Exported { prefix, block_ids }) => {
            assert_eq!(block_ids.len(), p.len() / BS, "every full prompt block");
            assert_eq!(prefix.num_blocks(), block_ids.len());
            let layout = prefix.layout;
            (prefix.into_block_buffers(), layout, block_ids)
        }
        other => panic!("no export: {other:?}"),
    }
}

fn remote(layout: llmd_engine::KvBlockLayout, first_block: usize, blocks: Vec<bytes::Bytes>) -> KvTransfer {
    KvTransfer::Import(Box::new(RemoteBlocks {
        layout,
        first_block,
        blocks,
        on_failure: KvLoadFailurePolicy::Recompute,
    }))
}

#[test]
fn a_disaggregated_request_returns_the_tokens_of_one_engine() {
    for dtype in [KvDtype::F32, KvDtype::BF16] {
        for len in [3, 4, 5, 16, 17, 40, 63] {
            let p = prompt(len);
            let alone = run(&mut engine(dtype), req("alone", p.clone(), 12, KvTransfer::None));
            let (blocks, layout, _) = prefill(dtype, &p);
            let mut d = engine(dtype);
            let got = run(&mut d, req("d", p.clone(), 12, remote(layout, 0, blocks)));
            assert_eq!(got.tokens, alone.tokens, "{dtype}, {len} tokens");
            // The last prompt token is computed here; every full block before it comes
            // from the prefill side.
            let written = (len - 1) / BS;
            assert_eq!(got.outcome, Some(KvTransferOutcome::Imported { blocks: written }), "{dtype}, {len}");
            assert_eq!(got.cached, written * BS);
            assert_eq!(d.metrics().prefix_hits.get(), 0, "remote blocks are not local prefix hits");
        }
    }
}

#[test]
fn blocks_cached_on_the_decode_side_are_not_written_again() {
    let p = prompt(40);
    let alone = run(&mut engine(KvDtype::F32), req("alone", p.clone(), 8, KvTransfer::None));
    let (blocks, layout, _) = prefill(KvDtype::F32, &p);
    let mut d = engine(KvDtype::F32);
    // An earlier request shared the first 13 tokens: 3 full blocks are cached here.
    run(&mut d, req("earlier", p[..13].to_vec(), 1, KvTransfer::None));
    let k = d.cached_prefix_blocks(&p, &RequestKeys::new()).unwrap();
    assert_eq!(k, 3);
    // What the decode side pulls is what it lacks.
    let got = run(&mut d, req("d", p.clone(), 8, remote(layout, k, blocks[k..].to_vec())));
    assert_eq!(got.tokens, alone.tokens);
    assert_eq!(got.outcome, Some(KvTransferOutcome::Imported { blocks: (40 - 1) / BS - k }));
    assert_eq!(got.cached, (40 - 1) / BS * BS);
    // Nothing left to write when everything is cached.
    let again = run(&mut d, req("again", p.clone(), 8, remote(layout, (40 - 1) / BS, Vec::new())));
    assert_eq!(again.tokens, alone.tokens);
    assert_eq!(again.outcome, Some(KvTransferOutcome::Imported { blocks: 0 }));
}

#[test]
fn corrupted_remote_blocks_change_the_tokens() {
    // Negative control: the equality above would see blocks that were not written.
    let p = prompt(40);
    let alone = run(&mut engine(KvDtype::F32), req("alone", p.clone(), 12, KvTransfer::None));
    let (blocks, layout, _) = prefill(KvDtype::F32, &p);
    let zeros = blocks.iter().map(|b| bytes::Bytes::from(vec![0u8; b.len()])).collect();
    let got = run(&mut engine(KvDtype::F32), req("d", p, 12, remote(layout, 0, zeros)));
    assert_ne!(got.tokens, alone.tokens);
}

#[test]
fn unusable_remote_blocks_are_recomputed_or_fail_the_request() {
    let p = prompt(40);
    let alone = run(&mut engine(KvDtype::F16), req("alone", p.clone(), 6, KvTransfer::None));
    let (blocks, layout, _) = prefill(KvDtype::F16, &p);
    let short: Vec<_> = blocks.iter().map(|b| b.slice(1..)).collect();
    let mut other_size = layout;
    other_size.block_size = 8;
    let mut other_dtype = layout;
    other_dtype.dtype = KvDtype::F32;
    let cases: Vec<(&str, RemoteBlocks)> = vec![
        (
            "block_size",
            RemoteBlocks { layout: other_size, first_block: 0, blocks: blocks.clone(), on_failure: Default::default() },
        ),
        (
            "dtype",
            RemoteBlocks {
                layout: other_dtype,
                first_block: 0,
                blocks: blocks.clone(),
                on_failure: Default::default(),
            },
        ),
        ("bytes", RemoteBlocks { layout, first_block: 0, blocks: short, on_failure: Default::default() }),
        // Pulled from block 2 on, as if blocks 0 and 1 were cached here: they are not.
        (
            "evicted",
            RemoteBlocks { layout, first_block: 2, blocks: blocks[2..].to_vec(), on_failure: Default::default() },
        ),
    ];
    for (what, r) in cases {
        let got = run(&mut engine(KvDtype::F16), req("d", p.clone(), 6, KvTransfer::Import(Box::new(r.clone()))));
        assert_eq!(got.tokens, alone.tokens, "{what}: recomputed");
        assert_eq!(got.cached, 0, "{what}");
        match &got.outcome {
            Some(KvTransferOutcome::LoadFailed { reason, recomputed: true }) => {
                assert!(reason.contains(what) || what == "bytes" && reason.contains("bytes"), "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
        let fail = RemoteBlocks { on_failure: KvLoadFailurePolicy::Fail, ..r };
        let mut e = engine(KvDtype::F16);
        let got = run(&mut e, req("d", p.clone(), 6, KvTransfer::Import(Box::new(fail))));
        assert_eq!(got.finished, Some(FinishReason::Error), "{what}: policy fail");
        assert!(got.tokens.is_empty());
        assert!(matches!(got.outcome, Some(KvTransferOutcome::LoadFailed { recomputed: false, .. })), "{what}");
        // The engine goes on serving.
        assert_eq!(run(&mut e, req("next", p.clone(), 6, KvTransfer::None)).tokens, alone.tokens);
    }
}

#[test]
fn a_prefill_that_stops_before_its_length_hands_out_nothing() {
    // As vLLM's NixlConnector: params only for a prefill that ended length-capped.
    let p = prompt(20);
    let first = run(&mut engine(KvDtype::F32), req("alone", p.clone(), 1, KvTransfer::None)).tokens[0];
    let mut r = req("p", p, 4, KvTransfer::Export);
    r.params.stop_token_ids = vec![first];
    let got = run(&mut engine(KvDtype::F32), r);
    assert_eq!(got.finished, Some(FinishReason::Stop));
    assert_eq!(got.outcome, None);
}

#[test]
fn the_simulator_takes_part_with_empty_blocks() {
    let sim = || {
        EngineBuilder::sim(LatencyModel::default())
            .clock(Arc::new(ManualClock::new()))
            .block_size(BS)
            .num_blocks(64)
            .max_model_len(128)
            .build()
            .unwrap()
            .engine
    };
    let p = prompt(30);
    let alone = run(&mut sim(), req("alone", p.clone(), 5, KvTransfer::None));
    let mut pe = sim();
    let (blocks, layout) = match run(&mut pe, req("p", p.clone(), 1, KvTransfer::Export)).outcome {
        Some(KvTransferOutcome::Exported { prefix, .. }) => (prefix.clone().into_block_buffers(), prefix.layout),
        other => panic!("{other:?}"),
    };
    assert_eq!(blocks.len(), 30 / BS);
    assert!(blocks.iter().all(|b| b.is_empty()));
    let got = run(&mut sim(), req("d", p, 5, remote(layout, 0, blocks)));
    assert_eq!(got.tokens, alone.tokens);
    assert_eq!(got.outcome, Some(KvTransferOutcome::Imported { blocks: (30 - 1) / BS }));
}

#[test]
fn a_checkpoint_moves_between_engines_with_the_same_tokens() {
    // Hugging Face checkpoints (Qwen2 with biases and YaRN in f16; Llama with GQA, tied
    // embeddings, bf16, sharded), token ids from their own tokenizers.
    for name in ["qwen2-bias-yarn-f16", "llama-gqa-tied-bf16-sharded"] {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let build = || {
            EngineBuilder::checkpoint(&dir)
                .block_size(BS)
                .num_blocks(64)
                .max_model_len(128)
                .kv_dtype(KvDtype::F32)
                .clock(Arc::new(ManualClock::new()))
                .build()
                .unwrap()
                .engine
        };
        let first = build();
        let p = first
            .tokenizer()
            .encode("The prefill engine computes; the decode engine pulls and goes on.", false)
            .unwrap();
        assert!(p.len() > 2 * BS, "{name}: {} tokens", p.len());
        let alone = run(&mut build(), req("alone", p.clone(), 6, KvTransfer::None));
        let mut pe = first;
        let (blocks, layout) = match run(&mut pe, req("p", p.clone(), 1, KvTransfer::Export)).outcome {
            Some(KvTransferOutcome::Exported { prefix, .. }) => (prefix.clone().into_block_buffers(), prefix.layout),
            other => panic!("{name}: {other:?}"),
        };
        assert!(blocks.iter().all(|b| b.len() == layout.block_bytes() && !b.is_empty()));
        let got = run(&mut build(), req("d", p.clone(), 6, remote(layout, 0, blocks)));
        assert_eq!(got.tokens, alone.tokens, "{name}");
        assert_eq!(got.outcome, Some(KvTransferOutcome::Imported { blocks: (p.len() - 1) / BS }), "{name}");
    }
}
