//! `program-aware-fairness`: fairness between programs (fairness IDs) by what each has
//! consumed, not by turns. The LAS (least attained service) strategy charges each program
//! the weighted tokens of its finished requests (output tokens count twice), decays that
//! charge with a half-life, and dispatches from the program with the least, with head-of-
//! queue wait as the tie-breaker. It learns from the request lifecycle, so the controller
//! tells it of dispatches and the gateway of completions.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

use super::{BandState, FairnessPolicy};
use crate::flowcontrol::params;
use crate::flowcontrol::queue::BandView;
use crate::flowcontrol::types::{DEFAULT_FAIRNESS_ID, PolicyError, QueueItem, TokenUsage};
use crate::plugins::Params;

/// `program-aware-fairness`'s type name.
pub const PROGRAM_AWARE: &str = "program-aware-fairness";

/// The parameter keys.
pub const PARAMS: &[&str] = &[
    "strategy",
    "evictionTtlSeconds",
    "evictionSweepSeconds",
    "lasWeightService",
    "lasWeightHeadWait",
    "lasHalfLifeSeconds",
];

const WEIGHT_INPUT_TOKEN: f64 = 1.0;
const WEIGHT_OUTPUT_TOKEN: f64 = 2.0;

/// `program-aware-fairness`'s parameters (the router's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramAwareConfig {
    /// Scoring strategy: only `las`.
    pub strategy: String,
    /// A program with nothing in flight and no completion for this long is forgotten; 0
    /// keeps programs forever (3600).
    pub eviction_ttl_seconds: f64,
    /// How often forgotten programs are swept (300; must be > 0).
    pub eviction_sweep_seconds: f64,
    /// Weight of low attained service in a program's score (0.8).
    pub las_weight_service: f64,
    /// Weight of the head item's wait (0.2).
    pub las_weight_head_wait: f64,
    /// Half-life of attained service in seconds; 0 disables decay (60).
    pub las_half_life_seconds: f64,
}

impl Default for ProgramAwareConfig {
    fn default() -> Self {
        ProgramAwareConfig {
            strategy: "las".into(),
            eviction_ttl_seconds: 3600.0,
            eviction_sweep_seconds: 300.0,
            las_weight_service: 0.8,
            las_weight_head_wait: 0.2,
            las_half_life_seconds: 60.0,
        }
    }
}

impl ProgramAwareConfig {
    /// Reads and validates the parameters, with the router's messages.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(PARAMS)?;
        let d = ProgramAwareConfig::default();
        let c = ProgramAwareConfig {
            strategy: q.string("strategy")?.unwrap_or(d.strategy),
            eviction_ttl_seconds: params::float(&q, "evictionTtlSeconds")?.unwrap_or(d.eviction_ttl_seconds),
            eviction_sweep_seconds: params::float(&q, "evictionSweepSeconds")?.unwrap_or(d.eviction_sweep_seconds),
            las_weight_service: params::float(&q, "lasWeightService")?.unwrap_or(d.las_weight_service),
            las_weight_head_wait: params::float(&q, "lasWeightHeadWait")?.unwrap_or(d.las_weight_head_wait),
            las_half_life_seconds: params::float(&q, "lasHalfLifeSeconds")?.unwrap_or(d.las_half_life_seconds),
        };
        if c.eviction_ttl_seconds < 0.0 {
            return Err(format!("evictionTtlSeconds must be >= 0, got {}", c.eviction_ttl_seconds));
        }
        if c.eviction_sweep_seconds <= 0.0 {
            return Err(format!("evictionSweepSeconds must be > 0, got {}", c.eviction_sweep_seconds));
        }
        if c.las_weight_service < 0.0 {
            return Err(format!("lasWeightService must be >= 0, got {}", c.las_weight_service));
        }
        if c.las_weight_head_wait < 0.0 {
            return Err(format!("lasWeightHeadWait must be >= 0, got {}", c.las_weight_head_wait));
        }
        if c.las_half_life_seconds < 0.0 {
            return Err(format!("lasHalfLifeSeconds must be >= 0, got {}", c.las_half_life_seconds));
        }
        if !matches!(c.strategy.as_str(), "" | "las") {
            return Err(format!("unknown scoring strategy {:?}: only \"las\" is supported", c.strategy));
        }
        Ok(c)
    }
}

/// What the policy knows of one program.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgramMetrics {
    /// Requests dispatched.
    pub dispatched: i64,
    /// Requests dispatched and not yet finished.
    pub in_flight: i64,
    /// Dispatches whose queue wait is known.
    pub wait_count: i64,
    /// Running mean queue wait, milliseconds.
    pub average_wait_ms: f64,
    /// When a request of the program last finished (its creation until then).
    pub last_completion: Duration,
}

impl ProgramMetrics {
    fn record_dispatched(&mut self, enqueue: Option<Duration>, now: Duration) {
        self.in_flight += 1;
        self.dispatched += 1;
        let Some(at) = enqueue else { return };
        // Whole milliseconds, as Go's Duration.Milliseconds() truncates.
        let wait_ms = now.saturating_sub(at).as_millis() as f64;
        self.wait_count += 1;
        self.average_wait_ms += (wait_ms - self.average_wait_ms) / self.wait_count as f64;
    }

    fn record_completion(&mut self, now: Duration) {
        self.in_flight -= 1;
        self.last_completion = now;
    }
}

// A program's attained service, decayed lazily from its anchor.
#[derive(Debug, Clone, Default)]
struct LasState {
    service: f64,
    anchor: Option<Duration>,
}

impl LasState {
    fn decay(&mut self, now: Duration, half_life: f64) {
        let Some(anchor) = self.anchor else {
            self.anchor = Some(now);
            return;
        };
        if now <= anchor {
            return;
        }
        if half_life > 0.0 {
            self.service *= (-(now - anchor).as_secs_f64() / half_life).exp2();
        }
        self.anchor = Some(now);
    }

    fn service(&mut self, now: Duration, half_life: f64) -> f64 {
        self.decay(now, half_life);
        self.service
    }

    fn add(&mut self, cost: f64, now: Duration, half_life: f64) -> f64 {
        self.decay(now, half_life);
        self.service += cost;
        self.service
    }
}

#[derive(Debug, Default)]
struct Programs {
    metrics: BTreeMap<String, ProgramMetrics>,
    las: BTreeMap<String, LasState>,
    last_sweep: Option<Duration>,
}

impl Programs {
    fn metrics(&mut self, id: &str, now: Duration) -> &mut ProgramMetrics {
        self.metrics
            .entry(id.to_string())
            .or_insert_with(|| ProgramMetrics { last_completion: now, ..Default::default() })
    }
}

/// The policy (see the module docs).
#[derive(Debug)]
pub struct ProgramAware {
    cfg: ProgramAwareConfig,
    programs: Mutex<Programs>,
}

fn norm(v: f64, min: f64, max: f64) -> f64 {
    if max == min { 0.5 } else { (v - min) / (max - min) }
}

fn jain(sum: f64, sum_sq: f64, n: f64) -> f64 {
    if n <= 1.0 || sum_sq == 0.0 { 1.0 } else { (sum * sum) / (n * sum_sq) }
}

impl ProgramAware {
    /// A policy with `cfg`.
    pub fn new(cfg: ProgramAwareConfig) -> Self {
        ProgramAware { cfg, programs: Mutex::new(Programs::default()) }
    }

    /// Built from a config file's `parameters`.
    pub fn from_params(p: &Value) -> Result<Self, String> {
        ProgramAwareConfig::from_params(p).map(Self::new)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Programs> {
        self.programs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A program's metrics, if known.
    pub fn program(&self, id: &str) -> Option<ProgramMetrics> {
        self.lock().metrics.get(id).cloned()
    }

    /// A program's attained service at `now` (decayed), if known.
    pub fn attained_service(&self, id: &str, now: Duration) -> Option<f64> {
        let half_life = self.cfg.las_half_life_seconds;
        self.lock().las.get_mut(id).map(|s| s.service(now, half_life))
    }

    /// Jain's fairness index over the programs' mean waits (1.0: equal waits).
    pub fn fairness_index(&self) -> f64 {
        let g = self.lock();
        let waits: Vec<f64> = g.metrics.values().filter(|m| m.wait_count > 0).map(|m| m.average_wait_ms).collect();
        jain(waits.iter().sum(), waits.iter().map(|x| x * x).sum(), waits.len() as f64)
    }

    /// Forgets programs with nothing in flight and no completion within `ttl` of `now`.
    pub fn evict_idle(&self, ttl: Duration, now: Duration) {
        let mut g = self.lock();
        let gone: Vec<String> = g
            .metrics
            .iter()
            .filter(|(_, m)| m.in_flight == 0 && now.saturating_sub(m.last_completion) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            g.metrics.remove(&id);
            g.las.remove(&id);
        }
    }

    // The periodic sweep, run lazily from the policy's own calls.
    fn maybe_sweep(&self, now: Duration) {
        if self.cfg.eviction_ttl_seconds <= 0.0 {
            return;
        }
        let interval = Duration::from_secs_f64(self.cfg.eviction_sweep_seconds);
        let due = {
            let mut g = self.lock();
            let last = *g.last_sweep.get_or_insert(now);
            if now.saturating_sub(last) >= interval {
                g.last_sweep = Some(now);
                true
            } else {
                false
            }
        };
        if due {
            self.evict_idle(Duration::from_secs_f64(self.cfg.eviction_ttl_seconds), now);
        }
    }

    // The LAS score: low decayed service and a long-waiting head score high.
    fn las_pick(&self, band: &BandView<'_>) -> Option<String> {
        let now = band.now();
        let half_life = self.cfg.las_half_life_seconds;
        let mut g = self.lock();
        let mut entries: Vec<(String, f64, f64)> = Vec::new();
        for q in band.active_queues() {
            let id = q.flow_key().id.clone();
            g.metrics(&id, now);
            let service = g.las.entry(id.clone()).or_default().service(now, half_life);
            let wait_ms = q.peek().map_or(0.0, |h| now.saturating_sub(h.enqueue_time()).as_millis() as f64);
            entries.push((id, service, wait_ms));
        }
        let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(String, f64, f64)) -> f64| {
            entries.iter().map(pick).fold(init, f)
        };
        let (min_s, max_s) = (fold(f64::min, f64::INFINITY, |e| e.1), fold(f64::max, f64::NEG_INFINITY, |e| e.1));
        let (min_w, max_w) = (fold(f64::min, f64::INFINITY, |e| e.2), fold(f64::max, f64::NEG_INFINITY, |e| e.2));
        let mut best: Option<(&str, f64)> = None;
        for (id, service, wait) in &entries {
            let score = self.cfg.las_weight_service * (1.0 - norm(*service, min_s, max_s))
                + self.cfg.las_weight_head_wait * norm(*wait, min_w, max_w);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((id, score));
            }
        }
        best.map(|(id, _)| id.to_string())
    }
}

impl FairnessPolicy for ProgramAware {
    fn type_name(&self) -> &'static str {
        PROGRAM_AWARE
    }

    fn pick(&self, band: &BandView<'_>, _state: &mut BandState) -> Result<Option<String>, PolicyError> {
        self.maybe_sweep(band.now());
        Ok(self.las_pick(band))
    }

    fn on_dispatched(&self, item: &QueueItem, now: Duration) {
        let id = program_id(&item.request().fairness_id);
        self.lock().metrics(id, now).record_dispatched(Some(item.enqueue_time()), now);
    }

    fn on_completed(&self, fairness_id: &str, usage: Option<TokenUsage>, now: Duration) {
        let id = program_id(fairness_id);
        let u = usage.unwrap_or_default();
        let cost = WEIGHT_INPUT_TOKEN * u.prompt_tokens as f64 + WEIGHT_OUTPUT_TOKEN * u.completion_tokens as f64;
        let half_life = self.cfg.las_half_life_seconds;
        let mut g = self.lock();
        g.las.entry(id.to_string()).or_default().add(cost, now, half_life);
        g.metrics(id, now).record_completion(now);
        drop(g);
        self.maybe_sweep(now);
    }
}

fn program_id(fairness_id: &str) -> &str {
    if fairness_id.is_empty() { DEFAULT_FAIRNESS_ID } else { fairness_id }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::flowcontrol::policies::fairness::tests::{band, queue};
    use crate::flowcontrol::policies::ordering::Fcfs;
    use crate::flowcontrol::types::{FlowKey, FlowRequest, ItemId};

    const S: Duration = Duration::from_secs(1);

    fn las(service_w: f64, wait_w: f64, half_life: f64) -> ProgramAware {
        ProgramAware::new(ProgramAwareConfig {
            las_weight_service: service_w,
            las_weight_head_wait: wait_w,
            las_half_life_seconds: half_life,
            eviction_ttl_seconds: 0.0,
            ..Default::default()
        })
    }

    fn seed(p: &ProgramAware, id: &str, service: f64, anchor: Duration) {
        p.lock().las.insert(id.into(), LasState { service, anchor: Some(anchor) });
    }

    fn pick(p: &ProgramAware, queues: Vec<crate::flowcontrol::queue::FlowQueue>, now: Duration) -> Option<String> {
        let b = band(queues);
        p.pick(&BandView::new(0, &b, now), &mut p.new_state()).unwrap()
    }

    #[test]
    fn factory_checks_parameters_as_the_router_does() {
        // Mirrors plugin_test.go TestFactory_* .
        assert_eq!(ProgramAwareConfig::from_params(&json!({})).unwrap(), ProgramAwareConfig::default());
        let c = ProgramAwareConfig::from_params(
            &json!({"strategy": "las", "lasWeightService": 0.7, "lasWeightHeadWait": 0.3, "lasHalfLifeSeconds": 60}),
        )
        .unwrap();
        assert_eq!((c.las_weight_service, c.las_weight_head_wait), (0.7, 0.3));
        assert!(ProgramAwareConfig::from_params(&json!({"strategy": "wfq"})).unwrap_err().contains("only \"las\""));
        for bad in [
            json!({"evictionTtlSeconds": -1}),
            json!({"evictionSweepSeconds": 0}),
            json!({"lasWeightService": -0.1}),
            json!({"lasHalfLifeSeconds": -1}),
        ] {
            assert!(ProgramAwareConfig::from_params(&bad).is_err(), "{bad}");
        }
        assert!(
            ProgramAwareConfig::from_params(&json!({"lasDecayFactor": 0.99997}))
                .unwrap_err()
                .contains("lasDecayFactor")
        );
    }

    #[test]
    fn las_prefers_the_program_with_less_service() {
        // Mirrors strategy_las_test.go TestLAS_Pick_PrefersLowerService.
        let p = las(1.0, 0.0, 0.0);
        let now = 100 * S;
        seed(&p, "alpha", 1000.0, now);
        seed(&p, "beta", 10.0, now);
        let fcfs = Arc::new(Fcfs);
        assert_eq!(
            pick(&p, vec![queue("alpha", 1, 100_000, fcfs.clone()), queue("beta", 1, 100_000, fcfs)], now).as_deref(),
            Some("beta")
        );
    }

    #[test]
    fn las_breaks_cold_ties_by_head_wait() {
        // Mirrors strategy_las_test.go TestLAS_Pick_ColdStartUsesHeadWait.
        let p = las(1.0, 1.0, 0.0);
        let fcfs = Arc::new(Fcfs);
        let now = 100 * S;
        let got = pick(&p, vec![queue("alpha", 1, 99_500, fcfs.clone()), queue("beta", 1, 99_950, fcfs)], now);
        assert_eq!(got.as_deref(), Some("alpha"));
    }

    #[test]
    fn las_decays_idle_service_without_visits() {
        // Mirrors strategy_las_test.go TestLAS_Pick_UsesDecayedService and plugin_test.go
        // TestPick_IdleProgramServiceDecaysWithoutVisits.
        let p = las(1.0, 0.0, 1.0);
        let now = 100 * S;
        seed(&p, "heavy", 1000.0, now - 10 * S);
        seed(&p, "light", 10.0, now);
        let fcfs = Arc::new(Fcfs);
        let got = pick(&p, vec![queue("heavy", 1, 100_000, fcfs.clone()), queue("light", 1, 100_000, fcfs)], now);
        assert_eq!(got.as_deref(), Some("heavy"), "heavy decayed to ~1, below light's 10");
    }

    #[test]
    fn las_leaves_empty_programs_alone() {
        // Mirrors TestLAS_Pick_DoesNotCreateStateForEmptyEntries and TestPick_AllQueuesEmpty.
        let p = las(1.0, 0.0, 0.0);
        assert_eq!(pick(&p, vec![queue("ghost", 0, 0, Arc::new(Fcfs))], S), None);
        assert!(!p.lock().las.contains_key("ghost"));
    }

    #[test]
    fn completions_charge_weighted_tokens_after_pending_decay() {
        // Mirrors TestLAS_OnCompleted_AccumulatesWeightedCost, TestLAS_TimedDecay_HalvesAtHalfLife,
        // TestLAS_ZeroHalfLife_DisablesDecay and TestLAS_AddService_AppliesPendingDecayFirst.
        let p = las(1.0, 0.0, 0.0);
        let usage = TokenUsage { prompt_tokens: 100, completion_tokens: 50 };
        p.on_completed("alpha", Some(usage), S);
        assert_eq!(p.attained_service("alpha", S), Some(200.0), "1*100 + 2*50");
        let mut st = LasState { service: 100.0, anchor: Some(S) };
        assert!((st.service(2 * S, 1.0) - 50.0).abs() < 1e-3, "halves at the half-life");
        let mut flat = LasState { service: 100.0, anchor: Some(S) };
        assert_eq!(flat.service(3600 * S, 0.0), 100.0, "half-life 0 holds service flat");
        let mut pending = LasState { service: 100.0, anchor: Some(S) };
        assert!((pending.add(10.0, 2 * S, 1.0) - 60.0).abs() < 1e-3, "100 halves to 50 before +10");
    }

    #[test]
    fn dispatch_and_completion_track_programs() {
        // Mirrors TestPreRequest_RecordsDispatchAndWait, TestPreRequest_NoFairnessID_FallsBackToDefault,
        // TestResponseBody_FinalChunkOnly and TestEvictIdle_*.
        let p = las(1.0, 0.0, 0.0);
        let item = |fid: &str| {
            QueueItem::new(ItemId(1), FlowRequest::new("r", fid, 0, 1), FlowKey::new(fid, 0), 10 * S, Duration::ZERO)
        };
        p.on_dispatched(&item("alpha"), 10 * S + Duration::from_millis(50));
        let m = p.program("alpha").unwrap();
        assert_eq!((m.dispatched, m.in_flight, m.wait_count), (1, 1, 1));
        assert_eq!(m.average_wait_ms, 50.0);
        p.on_dispatched(&item(""), 11 * S);
        assert_eq!(p.program("default-flow").map(|m| m.dispatched), Some(1));
        p.on_completed("alpha", None, 12 * S);
        let m = p.program("alpha").unwrap();
        assert_eq!((m.in_flight, m.last_completion), (0, 12 * S));
        // Idle past the TTL: forgotten; in flight: kept.
        p.evict_idle(S, 20 * S);
        assert!(p.program("alpha").is_none());
        assert!(p.program("default-flow").is_some(), "still in flight");
    }

    #[test]
    fn fairness_index_is_jains_over_mean_waits() {
        // Mirrors TestComputeFairnessIndex_*.
        let p = las(1.0, 0.0, 0.0);
        assert_eq!(p.fairness_index(), 1.0, "no data");
        let item = |fid: &str| {
            QueueItem::new(
                ItemId(1),
                FlowRequest::new("r", fid, 0, 1),
                FlowKey::new(fid, 0),
                Duration::ZERO,
                Duration::ZERO,
            )
        };
        p.on_dispatched(&item("a"), Duration::from_millis(10));
        assert_eq!(p.fairness_index(), 1.0, "one program");
        p.on_dispatched(&item("b"), Duration::from_millis(1000));
        assert!(p.fairness_index() < 0.9, "skewed waits");
        assert_eq!(norm(5.0, 10.0, 10.0), 0.5);
        assert_eq!(norm(2.5, 0.0, 10.0), 0.25);
    }
}
