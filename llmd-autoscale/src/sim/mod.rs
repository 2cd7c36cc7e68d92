//! The trace simulator: replays an arrival trace against simulated replicas
//! (continuous batching with a variant's true performance profile, a
//! start-up delay, draining) routed as the picker does (least requests held; held in a
//! flow-control queue while no replica is ready), with a [`Policy`] deciding every
//! `interval` seconds on the metrics the replicas report, through a [`Stabilizer`].
//! Reports SLO attainment, replica-seconds (cost), scaling actions and a timeline.

mod replica;
pub mod scenario;
pub mod svg;
pub mod trace;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};
use crate::policy::Policy;
use crate::profile::PerfProfile;
use crate::snapshot::{Load, ModelSnapshot, ReplicaMetrics, VariantState};
use crate::stabilize::{StabilizeConfig, Stabilizer};
use replica::{Active, Phase, SimReplica};
pub use trace::{Rng, Shape, TraceRequest, TraceSpec, generate};

/// One variant as the simulator runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimVariant {
    /// Its name.
    pub name: String,
    /// Cost per replica-second.
    pub cost: f64,
    /// Its replicas' true performance (what the model-based policy has to learn).
    pub profile: PerfProfile,
    /// KV-cache capacity of a replica, tokens.
    pub kv_tokens: f64,
    /// Seconds from starting a replica to its first request.
    pub startup: f64,
    /// Fewest replicas.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// Replicas at the start (ready).
    pub initial: u32,
}

/// A simulation's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The model's variants.
    pub variants: Vec<SimVariant>,
    /// Seconds between decisions.
    pub interval: f64,
    /// The TTFT objective attainment is counted against, seconds.
    pub slo_ttft: f64,
    /// Seconds simulated (cost is counted to here for every policy alike).
    pub horizon: f64,
    /// Stabilization of the policy's decisions.
    pub stabilize: StabilizeConfig,
}

/// The system at one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds.
    pub t: f64,
    /// Replicas that exist (starting, ready, draining): what is paid for.
    pub replicas: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Requests held for want of a ready replica.
    pub queued: u32,
    /// Arrivals per second over the last interval.
    pub rate: f64,
    /// 90th percentile TTFT of first tokens in the last interval (NaN: none).
    pub ttft_p90: f64,
}

/// What a simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimReport {
    /// The policy.
    pub policy: String,
    /// Requests in the trace.
    pub requests: usize,
    /// Requests judged (those with time left to meet the TTFT objective by the horizon).
    pub judged: usize,
    /// Of them, first token within the objective.
    pub met_ttft: usize,
    /// `met_ttft / judged`.
    pub attainment: f64,
    /// Median TTFT of requests that got a first token, seconds.
    pub ttft_p50: f64,
    /// 99th percentile TTFT, seconds.
    pub ttft_p99: f64,
    /// Mean inter-token latency, seconds.
    pub itl_mean: f64,
    /// Replica-seconds paid for.
    pub replica_seconds: f64,
    /// Replica-seconds times each variant's cost.
    pub cost: f64,
    /// Decisions that changed a replica count.
    pub actions: u32,
    /// Requests that finished.
    pub finished: usize,
    /// The timeline, one sample per decision.
    pub timeline: Vec<Sample>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    trace: &'a [TraceRequest],
    arrivals: Vec<f64>,
    replicas: Vec<SimReplica>,
    queue: VecDeque<usize>,
    first_token: Vec<Option<f64>>,
    finished: usize,
    gaps: (f64, u64),
    replica_seconds: f64,
    cost: f64,
    named: u64,
}

impl Sim<'_> {
    fn start_replica(&mut self, variant: usize, now: f64, ready_at: f64) {
        let v = &self.cfg.variants[variant];
        self.named += 1;
        let name = format!("{}-{}", v.name, self.named);
        self.replicas.push(SimReplica::new(name, variant, v.profile, v.kv_tokens, now, ready_at));
    }

    fn retire(&mut self, i: usize, now: f64) {
        let r = self.replicas.swap_remove(i);
        let secs = now - r.started;
        self.replica_seconds += secs;
        self.cost += secs * self.cfg.variants[r.variant].cost;
    }

    fn active(&self, id: usize) -> Active {
        let r = self.trace[id];
        Active { id, input: r.input_tokens, output: r.output_tokens.max(1), generated: 0 }
    }

    /// To the ready replica holding the fewest requests, or the flow-control queue.
    fn dispatch(&mut self, id: usize, now: f64) {
        let best = self
            .replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| r.phase == Phase::Ready)
            .min_by_key(|(i, r)| (r.load(), *i))
            .map(|(i, _)| i);
        match best {
            Some(i) => {
                let a = self.active(id);
                self.replicas[i].waiting.push_back(a);
                self.replicas[i].maybe_start_step(now);
            }
            None => self.queue.push_back(id),
        }
    }

    fn release_queue(&mut self, now: f64) {
        while self.replicas.iter().any(|r| r.phase == Phase::Ready) {
            let Some(id) = self.queue.pop_front() else { break };
            self.dispatch(id, now);
        }
    }

    fn snapshot(&mut self, now: f64, window: (usize, usize), model: &str) -> ModelSnapshot {
        let cfg = self.cfg;
        let mut variants: Vec<VariantState> = cfg
            .variants
            .iter()
            .map(|v| VariantState { name: v.name.clone(), cost: v.cost, current: 0, ready: 0, min: v.min, max: v.max })
            .collect();
        let mut replicas = Vec::new();
        let (mut itl, mut ttft) = ((0.0, 0u32), (0.0, 0u32));
        for r in &mut self.replicas {
            let vs = &mut variants[r.variant];
            if r.phase == Phase::Draining {
                continue;
            }
            vs.current += 1;
            if r.phase != Phase::Ready {
                continue;
            }
            vs.ready += 1;
            let w = r.take_window(now);
            if let Some(i) = w.itl {
                itl = (itl.0 + i, itl.1 + 1);
            }
            if let Some(t) = w.ttft {
                ttft = (ttft.0 + t, ttft.1 + 1);
            }
            replicas.push(ReplicaMetrics {
                name: r.name.clone(),
                variant: vs.name.clone(),
                kv_usage: r.kv_usage(),
                waiting: r.waiting.len() as f64,
                running: r.running.len() as f64,
                itl: w.itl,
                ttft: w.ttft,
                prefill_time: w.prefill_time,
                prefill_rate: w.prefill_rate,
            });
        }
        let arrived = &self.trace[window.0..window.1];
        let n = arrived.len().max(1) as f64;
        let load = Load {
            arrival_rate: arrived.len() as f64 / cfg.interval,
            avg_input_tokens: arrived.iter().map(|r| f64::from(r.input_tokens)).sum::<f64>() / n,
            avg_output_tokens: arrived.iter().map(|r| f64::from(r.output_tokens)).sum::<f64>() / n,
            queued: self.queue.len() as f64,
            ttft: (ttft.1 > 0).then(|| ttft.0 / f64::from(ttft.1)),
            itl: (itl.1 > 0).then(|| itl.0 / f64::from(itl.1)),
        };
        ModelSnapshot { model: model.into(), now, variants, replicas, load }
    }

    /// Moves variant `v` from `current` to `desired` replicas: starts new ones, or
    /// removes starting ones first, then drains the ready ones holding the least.
    fn actuate(&mut self, v: usize, current: u32, desired: u32, now: f64) {
        if desired > current {
            let startup = self.cfg.variants[v].startup;
            for _ in current..desired {
                self.start_replica(v, now, now + startup);
            }
            if startup <= 0.0 {
                // Born ready: nothing marks them ready later, so held requests go now.
                self.release_queue(now);
            }
            return;
        }
        for _ in desired..current {
            let starting = self.replicas.iter().rposition(|r| r.variant == v && matches!(r.phase, Phase::Starting(_)));
            if let Some(i) = starting {
                self.retire(i, now);
                continue;
            }
            let ready = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.variant == v && r.phase == Phase::Ready)
                .min_by_key(|(i, r)| (r.load(), std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            let Some(i) = ready else { break };
            let r = &mut self.replicas[i];
            r.phase = Phase::Draining;
            // Its waiting requests go elsewhere; the running ones finish here.
            let moved: Vec<usize> = r.waiting.drain(..).map(|a| a.id).collect();
            for id in moved {
                self.dispatch(id, now);
            }
        }
        self.reap(now);
    }

    fn reap(&mut self, now: f64) {
        while let Some(i) = self.replicas.iter().position(|r| r.phase == Phase::Draining && r.load() == 0) {
            self.retire(i, now);
        }
    }
}

/// Runs `trace` under `policy` with `cfg`; see the module docs.
pub fn simulate(cfg: &SimConfig, trace: &[TraceRequest], policy: &mut dyn Policy) -> Result<SimReport> {
    if cfg.variants.is_empty() {
        return Err(AutoscaleError::config("variants", "no variant to simulate"));
    }
    if !(cfg.interval > 0.0 && cfg.horizon > 0.0 && cfg.slo_ttft > 0.0) {
        return Err(AutoscaleError::config("interval", "interval, horizon and sloTtft must be positive"));
    }
    for v in &cfg.variants {
        v.profile.validate()?;
        if !(v.kv_tokens > 0.0 && v.startup >= 0.0 && v.min <= v.max) {
            return Err(AutoscaleError::config(
                "variants",
                format!("variant {}: bad capacity, start-up or bounds", v.name),
            ));
        }
    }
    let mut stabilizer = Stabilizer::new(cfg.stabilize.clone())?;
    let mut sim = Sim {
        cfg,
        trace,
        arrivals: trace.iter().map(|r| r.arrival).collect(),
        replicas: Vec::new(),
        queue: VecDeque::new(),
        first_token: vec![None; trace.len()],
        finished: 0,
        gaps: (0.0, 0),
        replica_seconds: 0.0,
        cost: 0.0,
        named: 0,
    };
    for (i, v) in cfg.variants.iter().enumerate() {
        for _ in 0..v.initial.clamp(v.min, v.max) {
            sim.start_replica(i, 0.0, 0.0);
        }
    }
    let (mut next_arrival, mut window_start, mut next_tick) = (0usize, 0usize, cfg.interval);
    let mut actions = 0u32;
    let mut timeline = Vec::new();
    let mut window_ttfts: Vec<f64> = Vec::new();
    loop {
        let t_arr = sim.arrivals.get(next_arrival).copied().unwrap_or(f64::INFINITY);
        let (t_rep, who) = sim
            .replicas
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.next_event().map(|t| (t, i)))
            .fold((f64::INFINITY, usize::MAX), |a, b| if b.0 < a.0 { b } else { a });
        let now = t_arr.min(t_rep).min(next_tick);
        if now > cfg.horizon {
            break;
        }
        if t_arr == now {
            sim.dispatch(next_arrival, now);
            next_arrival += 1;
        } else if t_rep == now {
            let was_starting = matches!(sim.replicas[who].phase, Phase::Starting(_));
            let end = sim.replicas[who].on_event(now, &sim.arrivals);
            for (id, t) in end.first_tokens {
                sim.first_token[id] = Some(t);
                window_ttfts.push(t - sim.arrivals[id]);
            }
            sim.finished += end.finished.len();
            for (_, g) in end.token_gaps {
                sim.gaps = (sim.gaps.0 + g, sim.gaps.1 + 1);
            }
            if was_starting {
                sim.release_queue(now);
            }
            sim.reap(now);
        } else {
            let snap = sim.snapshot(now, (window_start, next_arrival), "sim");
            let decisions = policy.decide(&snap)?;
            let decisions = stabilizer.apply_bounded(now, &decisions, &snap.variants);
            for (v, d) in decisions.iter().enumerate() {
                if d.desired != d.current {
                    actions += 1;
                    sim.actuate(v, d.current, d.desired, now);
                }
            }
            window_ttfts.sort_by(f64::total_cmp);
            timeline.push(Sample {
                t: now,
                replicas: sim.replicas.len() as u32,
                ready: sim.replicas.iter().filter(|r| r.phase == Phase::Ready).count() as u32,
                queued: sim.queue.len() as u32,
                rate: snap.load.arrival_rate,
                ttft_p90: percentile(&window_ttfts, 0.9),
            });
            window_ttfts.clear();
            window_start = next_arrival;
            next_tick += cfg.interval;
        }
    }
    let horizon = cfg.horizon;
    while !sim.replicas.is_empty() {
        sim.retire(sim.replicas.len() - 1, horizon);
    }
    let mut ttfts: Vec<f64> = Vec::new();
    let (mut judged, mut met) = (0usize, 0usize);
    for (r, ft) in trace.iter().zip(&sim.first_token) {
        match ft {
            Some(t) => {
                let ttft = t - r.arrival;
                ttfts.push(ttft);
                judged += 1;
                met += usize::from(ttft <= cfg.slo_ttft);
            }
            // No first token by the horizon: a miss if the objective had passed.
            None if horizon - r.arrival > cfg.slo_ttft => judged += 1,
            None => {}
        }
    }
    ttfts.sort_by(f64::total_cmp);
    Ok(SimReport {
        policy: policy.name().to_string(),
        requests: trace.len(),
        judged,
        met_ttft: met,
        attainment: if judged > 0 { met as f64 / judged as f64 } else { 1.0 },
        ttft_p50: percentile(&ttfts, 0.5),
        ttft_p99: percentile(&ttfts, 0.99),
        itl_mean: if sim.gaps.1 > 0 { sim.gaps.0 / sim.gaps.1 as f64 } else { f64::NAN },
        replica_seconds: sim.replica_seconds,
        cost: sim.cost,
        actions,
        finished: sim.finished,
        timeline,
    })
}
