//! Scheduling policy, after vLLM's v1 scheduler: running requests first (decode or
//! their next prefill chunk) under the step's token budget, then waiting requests in
//! arrival order while the budget, `max_num_seqs` and free blocks allow (reusing their
//! cached prefix). When blocks run out, the most recently admitted running request is
//! preempted: its blocks are freed and it is recomputed later.

use llmd_kvcache::KvCacheError;

use super::Engine;
use crate::error::{EngineError, Result};

impl Engine {
    pub(super) fn preempt(&mut self, id: &str) {
        let _ = self.kv.free_preempted(id);
        if let Some(st) = self.reqs.get_mut(id) {
            st.num_computed = 0;
        }
        self.running.retain(|r| r != id);
        self.waiting.push_front(id.to_string());
        self.metrics.preemptions.inc();
        tracing::debug!(request = id, "preempted: out of KV blocks");
    }

    /// Chooses this step's work: `(request, tokens to run)`.
    pub(super) fn schedule(&mut self) -> Result<Vec<(String, usize)>> {
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut sched: Vec<(String, usize)> = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i].clone();
            let st = &self.reqs[&id];
            let n = (st.seq.tokens().len() - st.num_computed).min(budget);
            let have = self.kv.num_tokens(&id).unwrap_or(0);
            let need = (st.num_computed + n).saturating_sub(have);
            match self.kv.allocate_slots(&st.seq, need, Default::default()) {
                Ok(_) => {
                    sched.push((id, n));
                    budget -= n;
                    i += 1;
                }
                Err(KvCacheError::OutOfBlocks { .. }) => {
                    // Free the most recently admitted request and retry; if that is this
                    // request itself, it waits.
                    let victim = self.running.last().cloned().unwrap_or_default();
                    self.preempt(&victim);
                    preempted = true;
                    if victim == id {
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        // Requests preempted above may have been scheduled already this step.
        sched.retain(|(id, _)| self.running.contains(id));
        budget = self.cfg.max_num_batched_tokens - sched.iter().map(|s| s.1).sum::<usize>();

        // After a preemption, admitting waiting requests would only preempt again (vLLM
        // skips it too).
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(id) = self.waiting.front().cloned() else {
                break;
            };
            let st = &self.reqs[&id];
            let hit = self.kv.computed_blocks(&st.seq)?;
            let cached = hit.num_tokens();
            let n = (st.seq.tokens().len() - cached).min(budget);
            match self.kv.allocate_slots(&st.seq, n, hit) {
                Ok(_) => {
                    self.waiting.pop_front();
                    let now = self.clock.now();
                    let st = self.reqs.get_mut(&id).ok_or_else(|| EngineError::EngineDead("lost request".into()))?;
                    st.num_computed = cached;
                    if st.scheduled_at.is_none() {
                        st.scheduled_at = Some(now);
                        st.cached_tokens = cached;
                        self.metrics.queue_time.observe(now.saturating_sub(st.arrival).as_secs_f64());
                    }
                    self.running.push(id.clone());
                    sched.push((id, n));
                    budget -= n;
                }
                Err(KvCacheError::OutOfBlocks { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sched)
    }
}
