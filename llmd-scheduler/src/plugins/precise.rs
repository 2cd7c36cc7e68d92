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
    /// `maxPrefixBlocksToMatch` (default 256), both llmd's. llm-d-router's keys
    /// (`tokenProcessorConfig`, `indexerConfig`, `kvEventsConfig`, `speculativeIndexing`,
    /// `speculativeTTL`) are accepted and not read; others are refused.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let p = Params(p);
        p.check(&[
            "blockSize",
            "maxPrefixBlocksToMatch",
            "tokenProcessorConfig",
            "indexerConfig",
            "kvEventsConfig",
            "speculativeIndexing",
            "speculativeTTL",
        ])?;
        // llm-d-router sets the engines' block size in tokenProcessorConfig
        // (`blockSizeTokens`, or the older `blockSize`); llmd's own top-level key wins.
        let nested = p.0.get("tokenProcessorConfig").cloned().unwrap_or(serde_json::Value::Null);
        let tp = Params(&nested);
        let router = match tp.u64("blockSizeTokens", 0)? {
            0 => tp.u64("blockSize", 16)?,
            n => n,
        };
        let block_size = p.u64("blockSize", router)? as usize;
        p.unbuilt("speculativeIndexing", &false.into(), "only false")?;
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
        let n = keys.len() as f64;
        state.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: keys, prompt_tokens: tokens.len(), tokens_per_block: self.block_size, matched },
        );
        eps.iter().map(|e| if n == 0.0 { 0.0 } else { credit.get(&e.id).copied().unwrap_or(0.0) / n }).collect()
    }

    fn wants_token_ids(&self) -> bool {
        true
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

    fn endpoint_blocks(&self, endpoint: &str) -> usize {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).endpoint_blocks(endpoint)
    }

    fn endpoints(&self) -> Vec<String> {
        self.index.lock().unwrap_or_else(|p| p.into_inner()).endpoints()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_size_comes_from_the_router_s_token_processor_config() {
        let bs = |p: serde_json::Value| PrecisePrefixCacheScorer::from_params(&p).unwrap().block_size;
        assert_eq!(bs(serde_json::json!({})), 16);
        assert_eq!(bs(serde_json::json!({"tokenProcessorConfig": {"blockSize": 64}})), 64);
        assert_eq!(bs(serde_json::json!({"tokenProcessorConfig": {"blockSizeTokens": 32, "blockSize": 64}})), 32);
        assert_eq!(bs(serde_json::json!({"blockSize": 8, "tokenProcessorConfig": {"blockSizeTokens": 32}})), 8);
    }
    use crate::endpoint::Role;
    use llmd_kvcache::{BlockHash, BlockStored, ExternalBlockHash, KvEvent};

    #[test]
    fn scores_follow_the_events_and_need_token_ids() {
        let s = PrecisePrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 2})).unwrap();
        let stored = KvEvent::BlockStored(BlockStored {
            block_hashes: vec![ExternalBlockHash::Bytes(BlockHash::from_bytes(&[1; 32]).unwrap())],
            token_ids: vec![5, 6],
            block_size: 2,
            ..Default::default()
        });
        s.apply("b", Some(0), &KvEventBatch { ts: 0.0, events: vec![stored], data_parallel_rank: None });
        assert_eq!(s.blocks(), 1);
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut req = LlmRequest::new("r", "m", "");
        assert_eq!(s.score(&mut CycleState::default(), &req, &refs), vec![0.0, 0.0]);
        req.token_ids = Some(vec![5, 6, 7, 8]);
        let mut st = CycleState::default();
        assert_eq!(s.score(&mut st, &req, &refs), vec![0.0, 0.5]);
        assert_eq!(st.get::<PrefixMatch>(PREFIX_MATCH_KEY).unwrap().uncached_tokens("b"), 2);
        s.forget("b");
        assert_eq!(s.blocks(), 0);
        assert!(PrecisePrefixCacheScorer::from_params(&serde_json::json!({"blockSize": 0})).is_err());
    }
}
