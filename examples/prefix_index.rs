//! Two engine pods publish KV events; a router-side index built only from those events
//! says which pod holds the longest prefix of a new prompt.
//!
//! This is the core of precise prefix-cache routing, with the wire format in the middle:
//! the same index works when the events come from real vLLM pods.
//!
//! Run: `cargo run --example prefix_index`

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use llmd::kvcache::codec::{decode_batch, encode_batch};
use llmd::kvcache::{
    BlockHasher, BlockPool, EventBatcher, ExternalBlockHash, KvCacheManager, KvEvent, RequestKeys, Sequence,
};

const BLOCK: usize = 16;

/// One engine: a block manager whose pool batches KV events.
struct Pod {
    name: &'static str,
    kv: KvCacheManager<EventBatcher>,
}

impl Pod {
    fn new(name: &'static str) -> Result<Self> {
        let pool = BlockPool::with_sink(256, BLOCK, EventBatcher::new(None))?;
        Ok(Pod { name, kv: KvCacheManager::with_pool(pool) })
    }

    /// Serves a prompt (prefill only) and returns the step's events as wire bytes.
    fn serve(&mut self, id: &str, prompt: &[u32], hasher: &BlockHasher, ts: f64) -> Result<Option<Vec<u8>>> {
        let seq = Sequence::new(id, prompt.to_vec(), RequestKeys::new(), BLOCK, hasher)?;
        let hit = self.kv.computed_blocks(&seq)?;
        let new = seq.tokens().len() - hit.num_tokens();
        self.kv.allocate_slots(&seq, new, hit)?;
        self.kv.free(id)?;
        Ok(match self.kv.sink_mut().flush(ts) {
            Some(batch) => Some(encode_batch(&batch)?),
            None => None,
        })
    }
}

/// What a router knows: for each pod, the block hashes it reported holding.
#[derive(Default)]
struct Index {
    pods: HashMap<&'static str, HashSet<ExternalBlockHash>>,
}

impl Index {
    fn apply(&mut self, pod: &'static str, wire: &[u8]) -> Result<()> {
        let held = self.pods.entry(pod).or_default();
        for event in decode_batch(wire)?.events {
            match event {
                KvEvent::BlockStored(s) => held.extend(s.block_hashes),
                KvEvent::BlockRemoved(r) => r.block_hashes.iter().for_each(|h| {
                    held.remove(h);
                }),
                KvEvent::AllBlocksCleared { .. } => held.clear(),
                KvEvent::Unknown { .. } => {}
            }
        }
        Ok(())
    }

    /// Blocks of the prompt's prefix each pod holds.
    fn score(&self, prompt_hashes: &[ExternalBlockHash]) -> Vec<(&'static str, usize)> {
        let mut scores: Vec<_> = self
            .pods
            .iter()
            .map(|(pod, held)| (*pod, prompt_hashes.iter().take_while(|h| held.contains(h)).count()))
            .collect();
        scores.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        scores
    }
}

fn main() -> Result<()> {
    let hasher = BlockHasher::default();
    let system_prompt: Vec<u32> = (0..96).map(|t| 1000 + t).collect();
    let doc_a: Vec<u32> = system_prompt.iter().copied().chain(5000..5064).collect();
    let doc_b: Vec<u32> = system_prompt.iter().copied().chain(7000..7032).collect();

    let mut index = Index::default();
    let mut pods = [Pod::new("pod-a")?, Pod::new("pod-b")?];
    for (pod, prompt) in pods.iter_mut().zip([&doc_a, &doc_b]) {
        if let Some(wire) = pod.serve("warmup", prompt, &hasher, 1.0)? {
            println!("{} published {} bytes of KV events", pod.name, wire.len());
            index.apply(pod.name, &wire)?;
        }
    }

    // A follow-up question about document A: same system prompt, same document.
    let question: Vec<u32> = doc_a.iter().copied().chain(9000..9010).collect();
    let hashes: Vec<ExternalBlockHash> =
        hasher.hash_tokens(&question, BLOCK)?.into_iter().map(ExternalBlockHash::from).collect();
    println!("prompt: {} tokens, {} full blocks", question.len(), hashes.len());
    for (pod, blocks) in index.score(&hashes) {
        println!("  {pod}: {blocks} cached prefix blocks ({} tokens)", blocks * BLOCK);
    }
    Ok(())
}
