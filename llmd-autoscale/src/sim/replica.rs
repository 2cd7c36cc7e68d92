//! A simulated replica: continuous batching at step granularity. A step admits waiting
//! requests into the batch (up to `max_batch` and the KV capacity), takes
//! `ITL(batch) + Σ prefill(new prompts)` seconds, and gives every request in the batch
//! one token (a new one its first); finished requests leave at the step's end.

use std::collections::VecDeque;

use crate::profile::PerfProfile;

/// A request on a replica.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Active {
    /// Its index in the trace.
    pub(crate) id: usize,
    pub(crate) input: u32,
    pub(crate) output: u32,
    pub(crate) generated: u32,
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Phase {
    /// Loading; ready at this time.
    Starting(f64),
    /// Serving.
    Ready,
    /// Taking no new requests; gone once empty.
    Draining,
}

/// One replica.
#[derive(Debug, Clone)]
pub(crate) struct SimReplica {
    pub(crate) name: String,
    pub(crate) variant: usize,
    pub(crate) phase: Phase,
    pub(crate) started: f64,
    profile: PerfProfile,
    kv_tokens: f64,
    pub(crate) waiting: VecDeque<Active>,
    pub(crate) running: Vec<Active>,
    /// The step in flight: its start, its end, and the requests it admitted.
    step: Option<(f64, f64, usize)>,
    // Window statistics since the last metrics read.
    window_start: f64,
    itl_sum: f64,
    itl_n: u64,
    ttft_sum: f64,
    ttft_n: u64,
    prefill_sum: f64,
}

/// What a replica reports for a window, as vLLM's histograms would give it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    pub(crate) itl: Option<f64>,
    pub(crate) ttft: Option<f64>,
    pub(crate) prefill_time: Option<f64>,
    pub(crate) prefill_rate: Option<f64>,
}

/// What one step's end produced.
#[derive(Debug, Default)]
pub(crate) struct StepEnd {
    /// (request, time of its first token).
    pub(crate) first_tokens: Vec<(usize, f64)>,
    /// Requests that finished.
    pub(crate) finished: Vec<usize>,
    /// Inter-token gaps: (request, seconds) for tokens after the first.
    pub(crate) token_gaps: Vec<(usize, f64)>,
}

impl SimReplica {
    pub(crate) fn new(
        name: String,
        variant: usize,
        profile: PerfProfile,
        kv_tokens: f64,
        now: f64,
        ready_at: f64,
    ) -> Self {
        SimReplica {
            name,
            variant,
            phase: if ready_at > now { Phase::Starting(ready_at) } else { Phase::Ready },
            started: now,
            profile,
            kv_tokens,
            waiting: VecDeque::new(),
            running: Vec::new(),
            step: None,
            window_start: now,
            itl_sum: 0.0,
            itl_n: 0,
            ttft_sum: 0.0,
            ttft_n: 0,
            prefill_sum: 0.0,
        }
    }

    /// Requests held (running and waiting).
    pub(crate) fn load(&self) -> usize {
        self.running.len() + self.waiting.len()
    }

    fn context(&self) -> f64 {
        self.running.iter().map(|a| f64::from(a.input + a.generated)).sum()
    }

    /// KV-cache usage, 0..=1.
    pub(crate) fn kv_usage(&self) -> f64 {
        (self.context() / self.kv_tokens).min(1.0)
    }

    /// When the next event of this replica happens (a step's end, or becoming ready).
    pub(crate) fn next_event(&self) -> Option<f64> {
        match (self.phase, self.step) {
            (Phase::Starting(at), _) => Some(at),
            (_, Some((_, end, _))) => Some(end),
            _ => None,
        }
    }

    /// Starts a step at `now` if idle with work.
    pub(crate) fn maybe_start_step(&mut self, now: f64) {
        if self.step.is_some() || matches!(self.phase, Phase::Starting(_)) {
            return;
        }
        let mut context = self.context();
        let mut admitted = 0;
        let mut prefill = 0.0;
        while self.running.len() < self.profile.max_batch as usize {
            let Some(next) = self.waiting.front() else { break };
            let need = f64::from(next.input + next.output);
            // Admit while the KV cache holds the whole request (a lone request always).
            if !self.running.is_empty() && context + need > self.kv_tokens {
                break;
            }
            let Some(a) = self.waiting.pop_front() else { break };
            context += need;
            prefill += self.profile.prefill(f64::from(a.input));
            self.running.push(a);
            admitted += 1;
        }
        if self.running.is_empty() {
            return;
        }
        let duration = self.profile.itl(self.running.len() as f64) + prefill;
        self.step = Some((now, now + duration, admitted));
    }

    /// Handles this replica's event at `now` (it must be [`SimReplica::next_event`]).
    pub(crate) fn on_event(&mut self, now: f64, arrivals: &[f64]) -> StepEnd {
        let mut out = StepEnd::default();
        if let Phase::Starting(at) = self.phase {
            if now >= at {
                self.phase = Phase::Ready;
            }
            return out;
        }
        let Some((started, end, admitted)) = self.step.take() else { return out };
        let first_new = self.running.len() - admitted;
        for (i, a) in self.running.iter_mut().enumerate() {
            a.generated += 1;
            if i >= first_new {
                out.first_tokens.push((a.id, end));
                let ttft = end - arrivals[a.id];
                self.ttft_sum += ttft;
                self.ttft_n += 1;
                // Admitted at the step's start: its prefill time is the step.
                self.prefill_sum += end - started;
            } else {
                let gap = end - started;
                out.token_gaps.push((a.id, gap));
                self.itl_sum += gap;
                self.itl_n += 1;
            }
        }
        self.running.retain(|a| {
            if a.generated >= a.output {
                out.finished.push(a.id);
                false
            } else {
                true
            }
        });
        self.maybe_start_step(now);
        out
    }

    /// The window since the last call (ending at `now`), then a new one.
    pub(crate) fn take_window(&mut self, now: f64) -> Window {
        let n = self.ttft_n as f64;
        let secs = now - self.window_start;
        let w = Window {
            itl: (self.itl_n > 0).then(|| self.itl_sum / self.itl_n as f64),
            ttft: (self.ttft_n > 0).then(|| self.ttft_sum / n),
            prefill_time: (self.ttft_n > 0).then(|| self.prefill_sum / n),
            prefill_rate: (secs > 0.0).then(|| n / secs),
        };
        (self.itl_sum, self.itl_n, self.ttft_sum, self.ttft_n, self.prefill_sum) = (0.0, 0, 0.0, 0, 0.0);
        self.window_start = now;
        w
    }
}
