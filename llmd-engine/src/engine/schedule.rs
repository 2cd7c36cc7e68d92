//! Scheduling policy, after vLLM's v1 scheduler: running requests first (decode or
//! their next prefill chunk) under the step's token budget, then waiting requests in
//! arrival order while the budget, `max_num_seqs` and free blocks allow (reusing their
//! cached prefix). When blocks run out, the most recently admitted running request is
//! preempted: its blocks are freed and it is recomputed later.

use llmd_kvcache::KvCacheError;

use super::offload::Offloaded;
use super::transfer::ImportPlan;
use super::{Engine, FinishReason, KvLoadFailurePolicy, KvTransfer, KvTransferOutcome};
use crate::error::{EngineError, Result};

fn lost() -> EngineError {
    EngineError::EngineDead("lost request".into())
}

impl Engine {
    /// Records what a request's remote blocks came to; they are not tried again.
    fn settle_import(&mut self, id: &str, outcome: KvTransferOutcome) {
        if let Some(st) = self.reqs.get_mut(id) {
            st.transfer = KvTransfer::None;
            st.transfer_outcome = Some(outcome);
        }
    }

    /// Fails a waiting request whose remote KV cannot be used (policy `fail`).
    fn end_at_admission(&mut self, id: &str, reason: String) {
        tracing::warn!(request = %id, %reason, "remote KV unusable; failing the request (kv_load_failure_policy fail)");
        self.settle_import(id, KvTransferOutcome::LoadFailed { reason, recomputed: false });
        if let Some(st) = self.reqs.get_mut(id) {
            let mut out = st.final_output(id, FinishReason::Error);
            out.kv_transfer = st.transfer_outcome.take().map(Box::new);
            self.ended_at_admission.push(out);
        }
        self.finish(id, FinishReason::Error);
    }

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
        self.poll_loads();
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut sched: Vec<(String, usize)> = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i].clone();
            let st = &self.reqs[&id];
            if st.ready_at.is_some_and(|t| t > self.clock.now()) {
                // Its offloaded blocks are still coming back (simulated copy time).
                i += 1;
                continue;
            }
            let n = (st.seq.tokens().len() - st.num_computed).min(budget);
            let have = self.kv.num_tokens(&id).unwrap_or(0);
            let need = (st.num_computed + n).saturating_sub(have);
            match self.kv.allocate_slots(&st.seq, need, Default::default()) {
                Ok(_) => {
                    self.store_evicted();
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
            let local = hit.blocks().len();
            let mut cached = hit.num_tokens();
            // Blocks from elsewhere extend the hit: remote ones (a decode of a prompt
            // prefilled elsewhere) or else this engine's own offloaded ones.
            let remote = matches!(st.transfer, KvTransfer::Import(_));
            let (offloaded, from_disk) = match self.offload.is_some() && !remote {
                false => (None, 0),
                true => match self.offloaded_prefix(&id, local) {
                    Offloaded::None => (None, 0),
                    Offloaded::Ready(r, from_disk) => (Some(r), from_disk),
                    // Aside until its blocks are read from disk; the next one may run.
                    Offloaded::Reading => continue,
                },
            };
            let st = &self.reqs[&id];
            let (plan, policy) = match (&st.transfer, &offloaded) {
                (KvTransfer::Import(r), _) => (self.import_plan(r, st.prompt_len, local), Some(r.on_failure)),
                (_, Some(r)) => (self.import_plan(r, st.prompt_len, local), None),
                _ => (ImportPlan::Nothing, None),
            };
            let remote_to = match plan {
                ImportPlan::Write { to } => to,
                ImportPlan::Nothing => local,
                ImportPlan::Refuse(reason) if !remote => {
                    tracing::warn!(request = %id, %reason, "offloaded KV unusable; computing the prompt");
                    local
                }
                ImportPlan::Refuse(reason) => {
                    if policy == Some(KvLoadFailurePolicy::Fail) {
                        self.end_at_admission(&id, reason);
                        continue;
                    }
                    tracing::warn!(request = %id, %reason, "remote KV unusable; computing the prompt here");
                    self.settle_import(&id, KvTransferOutcome::LoadFailed { reason, recomputed: true });
                    local
                }
            };
            let st = &self.reqs[&id];
            let bs = self.cfg.block_size;
            let looked_up = (st.prompt_len.saturating_sub(1) / bs).saturating_sub(local);
            let imported = (remote_to - local) * bs;
            let n = (st.seq.tokens().len() - cached - imported).min(budget);
            match self.kv.allocate_slots(&st.seq, imported + n, hit) {
                Ok(_) => {
                    self.store_evicted();
                    self.waiting.pop_front();
                    let mut n = n;
                    let mut onboarded = 0;
                    let started = self.clock.now();
                    if remote_to > local {
                        let r = match offloaded {
                            Some(r) => r,
                            None => match std::mem::take(&mut self.reqs.get_mut(&id).ok_or_else(lost)?.transfer) {
                                KvTransfer::Import(r) => r,
                                _ => return Err(lost()),
                            },
                        };
                        match self.write_remote(&id, &r, local, remote_to) {
                            Ok(()) => {
                                cached += imported;
                                if remote {
                                    self.settle_import(&id, KvTransferOutcome::Imported { blocks: remote_to - local });
                                } else {
                                    onboarded = remote_to - local;
                                }
                            }
                            Err(e) => {
                                // Their hashes were registered with the allocation.
                                if let Err(e) = self.kv.uncache_since(&id, local) {
                                    tracing::warn!(request = %id, error = %e, "cannot un-register blocks of a failed import");
                                }
                                if remote && r.on_failure == KvLoadFailurePolicy::Fail {
                                    self.end_at_admission(&id, e.to_string());
                                    continue;
                                }
                                tracing::warn!(request = %id, error = %e, "writing KV from elsewhere failed; computing the prompt");
                                if remote {
                                    let reason = e.to_string();
                                    self.settle_import(&id, KvTransferOutcome::LoadFailed { reason, recomputed: true });
                                }
                                // The slots allocated cover this many from the local hit.
                                n = (self.reqs[&id].seq.tokens().len() - cached).min(budget);
                            }
                        }
                    } else if matches!(self.reqs[&id].transfer, KvTransfer::Import(_)) {
                        // Usable, but all cached here already (a refusal was settled above).
                        self.settle_import(&id, KvTransferOutcome::Imported { blocks: 0 });
                    }
                    if !remote && self.offload.is_some() {
                        let took = self.clock.now().saturating_sub(started);
                        self.note_onboarded(&id, looked_up, onboarded, from_disk.min(onboarded), took);
                    }
                    let now = self.clock.now();
                    let st = self.reqs.get_mut(&id).ok_or_else(lost)?;
                    st.num_computed = cached;
                    if st.scheduled_at.is_none() {
                        st.scheduled_at = Some(now);
                        st.cached_tokens = cached;
                        self.metrics.queue_time.observe(now.saturating_sub(st.arrival).as_secs_f64());
                    }
                    // A request whose offloaded blocks are still coming back runs once
                    // they are in (simulated copy time).
                    let loading = st.ready_at.is_some_and(|t| t > now);
                    self.running.push(id.clone());
                    if !loading {
                        sched.push((id, n));
                        budget -= n;
                    }
                }
                Err(KvCacheError::OutOfBlocks { .. }) => {
                    // Blocks read from disk wait with the request rather than be read again.
                    if let Some(r) = offloaded.filter(|_| from_disk > 0) {
                        self.keep_loaded(&id, r, from_disk);
                    }
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sched)
    }
}
