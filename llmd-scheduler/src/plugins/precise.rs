//! `precise-prefix-cache-scorer`: prefix-cache awareness from what the engines report.
//! Endpoints score the credit-weighted fraction of the request's leading blocks their
//! KV events say they hold (see [`crate::kvindex`]). Needs the request's token ids
//! (the gateway tokenizes with the model's tokenizer).

use std::collections::HashMap;
use std::sync::Mutex;

use llmd_kvcache::KvEventBatch;

use super::Params;
use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::endpoint::Endpoint;
use crate::kvindex::{KvBlockIndex, block_keys};
use crate::plugin::{CycleState, KvEventConsumer, Scorer};
use crate::request::LlmRequest;

/// The precise prefix scorer and its index.
#[derive(Debug)]
pub struct PrecisePrefixCacheScorer {
    block_size: usize,
    max_blocks: usize,
    index: Mutex<KvBlockIndex>,
}

impl PrecisePrefixCacheScorer {
    /// From `parameters`: `blockSize` (the engines' block size in tokens, default 16),
    /// `maxPrefixBlocksToMatch` (default 256).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let p = Params(p);
        let block_size = p.u64("blockSize", 16)? as usize;
        if block_size == 0 {
            return Err("parameter blockSize: must be at least 1".into());
        }
        Ok(PrecisePrefixCacheScorer {
            block_size,
            max_blocks: p.u64("maxPrefixBlocksToMatch", 256)? as usize,
            index: Mutex::new(KvBlockIndex::new()),
        })
    }

    /// Distinct blocks in the index.
    pub fn index_len(&self) -> usize {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Scorer for PrecisePrefixCacheScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let Some(tokens) = &req.token_ids else { return vec![0.0; eps.len()] };
        let keys = block_keys(tokens, self.block_size, self.max_blocks);
        let credit = self.index.lock().unwrap_or_else(|p| p.into_inner()).prefix_credit(&keys);
        let matched: HashMap<String, usize> = credit.iter().map(|(e, c)| (e.clone(), c.round() as usize)).collect();
        state.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: Vec::new(), prompt_tokens: tokens.len(), tokens_per_block: self.block_size, matched },
        );
        eps.iter()
            .map(|e| if keys.is_empty() { 0.0 } else { credit.get(&e.id).copied().unwrap_or(0.0) / keys.len() as f64 })
            .collect()
    }
}

impl KvEventConsumer for PrecisePrefixCacheScorer {
    fn apply(&self, endpoint: &str, seq: Option<u64>, batch: &KvEventBatch) {
        let stats = self.index.lock().unwrap_or_else(|p| p.into_inner()).apply(endpoint, seq, batch);
        if stats.resynced {
            tracing::warn!(endpoint, "KV event sequence gap: resyncing this endpoint's blocks");
        }
    }

    fn forget(&self, endpoint: &str) {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).remove_endpoint(endpoint);
    }

    fn blocks(&self) -> usize {
        self.index_len()
    }
}
