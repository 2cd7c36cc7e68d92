//! Controller tests on a manual clock: priorities, fairness, capacity, budgets, regime
//! changes, cancellation, shutdown and eviction, each naming the router test it mirrors.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::flowcontrol::config::{FlowControlConfig, PriorityBandConfig, RegistryConfig};
use crate::flowcontrol::policies::fairness::{ROUND_ROBIN, RoundRobin};
use crate::flowcontrol::policies::usage::{HoldbackDomain, PriorityHoldback};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

fn open() -> PoolSample {
    PoolSample::new(0.0, 1)
}

fn saturated(s: f64) -> PoolSample {
    PoolSample::new(s, 1)
}

fn empty_pool() -> PoolSample {
    PoolSample::new(1.0, 0)
}

fn harness(cfg: FlowControlConfig) -> (FlowController, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new());
    clock.advance(S);
    (FlowController::new(&cfg, clock.clone()), clock)
}

fn bands(list: &[i32]) -> FlowControlConfig {
    let mut cfg = FlowControlConfig { enabled: true, ..Default::default() };
    let b: BTreeMap<i32, PriorityBandConfig> = list.iter().map(|p| (*p, PriorityBandConfig::new(*p))).collect();
    cfg.registry = RegistryConfig::new(b, PriorityBandConfig::new(0), None);
    cfg
}

fn req(id: &str, flow: &str, priority: i32) -> FlowRequest {
    FlowRequest::new(id, flow, priority, 10)
}

// The request IDs of the events, with their outcomes.
fn finals(c: &mut FlowController) -> Vec<(String, QueueOutcome)> {
    c.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            FlowEvent::Finalized(f) => Some((f.item.request().request_id.clone(), f.outcome)),
            FlowEvent::Revoked { .. } => None,
        })
        .collect()
}

fn dispatch_all(c: &mut FlowController, pool: PoolSample) -> Vec<String> {
    let mut out = Vec::new();
    while c.dispatch_cycle(pool).is_some() {}
    for (id, o) in finals(c) {
        assert_eq!(o, QueueOutcome::Dispatched);
        out.push(id);
    }
    out
}

#[test]
fn higher_bands_dispatch_first() {
    // Mirrors processor_test.go "should guarantee strict priority by starving lower priority items".
    let (mut c, _) = harness(bands(&[20, 10]));
    for i in 0..3 {
        c.enqueue(req(&format!("high-{i}"), "flow-high", 20)).unwrap();
        c.enqueue(req(&format!("low-{i}"), "flow-low", 10)).unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..6 {
        assert!(c.dispatch_cycle(open()).is_some());
        order.extend(finals(&mut c).into_iter().map(|(id, _)| id));
    }
    assert_eq!(order, ["high-0", "high-1", "high-2", "low-0", "low-1", "low-2"]);
    assert!(c.dispatch_cycle(open()).is_none(), "nothing left");
}

#[test]
fn round_robin_alternates_flows() {
    let mut cfg = bands(&[]);
    cfg.registry.priority_bands.insert(0, PriorityBandConfig::new(0).with_fairness(ROUND_ROBIN, Arc::new(RoundRobin)));
    let (mut c, clock) = harness(cfg);
    for i in 0..3 {
        c.enqueue(req(&format!("a{i}"), "a", 0)).unwrap();
        clock.advance(MS);
    }
    for i in 0..3 {
        c.enqueue(req(&format!("b{i}"), "b", 0)).unwrap();
        clock.advance(MS);
    }
    assert_eq!(dispatch_all(&mut c, open()), ["a0", "b0", "a1", "b1", "a2", "b2"]);
}

#[test]
fn round_robin_keeps_its_turn_while_a_drained_flow_is_registered() {
    // An emptied flow stays registered until collected, so the cursor keeps its place
    // (the router's flows live until idle for the flow GC timeout).
    let mut cfg = bands(&[]);
    cfg.registry.priority_bands.insert(0, PriorityBandConfig::new(0).with_fairness(ROUND_ROBIN, Arc::new(RoundRobin)));
    let (mut c, _) = harness(cfg);
    c.enqueue(req("a0", "a", 0)).unwrap();
    c.enqueue(req("a1", "a", 0)).unwrap();
    c.enqueue(req("b0", "b", 0)).unwrap();
    c.enqueue(req("c0", "c", 0)).unwrap();
    assert_eq!(dispatch_all(&mut c, open()), ["a0", "b0", "c0", "a1"]);
}

#[test]
fn global_strict_is_fcfs_across_flows() {
    let (mut c, clock) = harness(bands(&[]));
    for (id, flow) in [("a0", "a"), ("b0", "b"), ("a1", "a"), ("c0", "c"), ("b1", "b")] {
        c.enqueue(req(id, flow, 0)).unwrap();
        clock.advance(MS);
    }
    assert_eq!(dispatch_all(&mut c, open()), ["a0", "b0", "a1", "c0", "b1"]);
}

#[test]
fn nothing_dispatches_at_saturation() {
    // Mirrors processor_test.go dispatchCycle: the default static ceiling is 1.0.
    let (mut c, _) = harness(bands(&[]));
    c.enqueue(req("r", "f", 0)).unwrap();
    assert!(c.dispatch_cycle(saturated(1.0)).is_none());
    assert!(c.dispatch_cycle(saturated(1.5)).is_none());
    assert!(c.dispatch_cycle(saturated(0.99)).is_some());
}

#[test]
fn a_gated_band_blocks_the_bands_below_it() {
    // Head-of-line blocking: the cycle stops at the first band whose ceiling is reached.
    let mut cfg = bands(&[10, 0, -10]);
    cfg.usage_limit = Arc::new(PriorityHoldback { domain: HoldbackDomain::Rank, min_ceiling: 0.4, max_ceiling: 1.0 });
    let (mut c, _) = harness(cfg);
    // Ceilings at three bands: [1.0, 0.7, 0.4].
    c.enqueue(req("high", "f", 10)).unwrap();
    c.enqueue(req("mid", "f", 0)).unwrap();
    c.enqueue(req("low", "f", -10)).unwrap();
    assert_eq!(dispatch_all(&mut c, saturated(0.8)), ["high"], "mid and low are held at 0.8");
    assert_eq!(dispatch_all(&mut c, saturated(0.5)), ["mid"]);
    assert_eq!(dispatch_all(&mut c, saturated(0.3)), ["low"]);
}

#[test]
fn capacity_limits_refuse_with_the_routers_answers() {
    // Mirrors processor_test.go hasCapacity and "should reject item when at capacity".
    let mut cfg = bands(&[]);
    cfg.registry.priority_bands.insert(0, PriorityBandConfig::new(0).with_capacity(25, 2));
    cfg.registry.max_requests = 3;
    let (mut c, _) = harness(cfg);
    c.enqueue(req("a", "f", 0)).unwrap();
    c.enqueue(req("b", "f", 0)).unwrap();
    let r = c.enqueue(req("c", "f", 0)).unwrap_err();
    assert_eq!(r.outcome, QueueOutcome::RejectedCapacity, "band request capacity");
    assert_eq!((r.rejection.status(), r.rejection.reason), (429, Some("rejected-saturated")));
    c.dispatch_cycle(open());
    let r = c.enqueue(FlowRequest::new("big", "f", 0, 16)).unwrap_err();
    assert_eq!(r.outcome, QueueOutcome::RejectedCapacity, "band bytes: 10 + 16 > 25");
    c.enqueue(FlowRequest::new("fits", "f", 0, 15)).unwrap();
    // With the pool empty, a full queue is unavailability.
    c.dispatch_cycle(empty_pool());
    let r = c.enqueue(req("d", "f", 0)).unwrap_err();
    assert_eq!((r.outcome, r.rejection.status()), (QueueOutcome::RejectedNoEndpoints, 503));
    assert_eq!(c.stats().outcomes[&(QueueOutcome::RejectedCapacity, 0)], 2);
}

#[test]
fn global_limits_count_every_band() {
    // Mirrors processor_test.go hasCapacity global cases.
    let mut cfg = bands(&[5]);
    cfg.registry.max_bytes = 25;
    let (mut c, _) = harness(cfg);
    c.enqueue(req("a", "f", 5)).unwrap();
    c.enqueue(req("b", "g", 0)).unwrap();
    assert_eq!(c.enqueue(FlowRequest::new("c", "g", 0, 6)).unwrap_err().outcome, QueueOutcome::RejectedCapacity);
    c.enqueue(FlowRequest::new("exact", "g", 0, 5)).unwrap();
    let s = c.stats();
    assert_eq!((s.total_len, s.total_bytes, s.max_bytes), (3, 25, 25));
}

#[test]
fn a_priority_without_a_band_queues_in_band_zero() {
    // Mirrors controller_test.go TestFlowController_EnqueueAndWait_FallbackRewritesItemPriority.
    let (mut c, _) = harness(bands(&[]));
    c.enqueue(req("x", "f", 7)).unwrap();
    assert_eq!(c.stats().bands.iter().find(|b| b.priority == 0).map(|b| b.len), Some(1));
    c.set_desired_priorities([7, -3]);
    assert_eq!(c.priorities(), [7, 0, -3]);
    c.enqueue(req("y", "f", 7)).unwrap();
    assert_eq!(dispatch_all(&mut c, open()), ["y", "x"], "the provisioned band is higher");
    c.set_desired_priorities([]);
    assert_eq!(c.priorities(), [0], "unwanted idle bands go");
}

#[test]
fn budgets_expire_by_regime() {
    // Mirrors processor_test.go TestProcessor_QueueWaitBudget "budget in force".
    let t0 = Duration::from_secs(10);
    let item =
        |ttl: Duration| QueueItem::new(ItemId(0), FlowRequest::new("r", "f", 0, 1), FlowKey::new("f", 0), t0, ttl);
    let (sat_ttl, no_ep) = (100 * MS, 2 * S);
    let r = |empty, since: Option<Duration>| Regime { empty, since };
    // (name, item TTL, empty-pool TTL, regime, elapsed, outcome)
    type Case = (&'static str, Duration, Duration, Regime, Duration, Option<QueueOutcome>);
    let cases: [Case; 9] = [
        ("holds within the saturation budget", sat_ttl, no_ep, r(false, None), sat_ttl - MS, None),
        ("sheds at the saturation budget", sat_ttl, no_ep, r(false, None), sat_ttl, Some(QueueOutcome::EvictedTtl)),
        ("empty pool holds past it", sat_ttl, no_ep, r(true, None), no_ep - MS, None),
        (
            "empty pool sheds at its budget",
            sat_ttl,
            no_ep,
            r(true, None),
            no_ep,
            Some(QueueOutcome::EvictedNoEndpoints),
        ),
        ("empty pool, zero budget: waits", sat_ttl, Duration::ZERO, r(true, None), 3600 * S, None),
        ("zero saturation budget: waits", Duration::ZERO, no_ep, r(false, None), 3600 * S, None),
        ("pool came up: fresh budget", sat_ttl, no_ep, r(false, Some(t0 + S)), S + sat_ttl - MS, None),
        (
            "pool came up: sheds after it",
            sat_ttl,
            no_ep,
            r(false, Some(t0 + S)),
            S + sat_ttl,
            Some(QueueOutcome::EvictedTtl),
        ),
        (
            "earlier change does not extend",
            sat_ttl,
            no_ep,
            r(false, Some(t0 - sat_ttl)),
            sat_ttl,
            Some(QueueOutcome::EvictedTtl),
        ),
    ];
    for (name, ttl, no_ep, regime, elapsed, want) in cases {
        assert_eq!(expiry(&item(ttl), t0 + elapsed, regime, no_ep), want, "{name}");
    }
}

#[test]
fn queued_requests_shed_when_their_budget_runs_out() {
    let mut cfg = bands(&[]);
    cfg.controller.default_request_ttl = S;
    let (mut c, clock) = harness(cfg);
    c.enqueue(req("r", "f", 0)).unwrap();
    c.dispatch_cycle(saturated(2.0));
    clock.advance(999 * MS);
    c.sweep();
    assert!(finals(&mut c).is_empty());
    clock.advance(MS);
    c.sweep();
    let ev = c.drain_events();
    let Some(FlowEvent::Finalized(f)) = ev.first() else { panic!("{ev:?}") };
    assert_eq!((f.outcome, f.waited), (QueueOutcome::EvictedTtl, S));
    let r = f.rejection(c.pool_empty()).unwrap();
    assert_eq!((r.status(), r.reason), (429, Some("rejected-ttl-expired")));
    assert!(c.is_empty());
}

#[test]
fn a_request_waits_across_a_scale_from_zero() {
    // Mirrors TestProcessor_QueueWaitBudget "sweep holds a queued request across a
    // scale-from-zero" and "sweep sheds an empty-pool request as unavailability".
    let mut cfg = bands(&[]);
    cfg.controller.default_request_ttl = 100 * MS;
    cfg.controller.no_endpoint_request_ttl = 2 * S;
    let (mut c, clock) = harness(cfg);
    c.dispatch_cycle(empty_pool());
    c.enqueue(req("cold", "f", 0)).unwrap();
    clock.advance(200 * MS);
    c.sweep();
    assert!(finals(&mut c).is_empty(), "the empty-pool budget governs");
    // The pool comes up (saturated): a fresh saturation budget starts now.
    c.dispatch_cycle(saturated(1.0));
    c.sweep();
    assert!(finals(&mut c).is_empty(), "not shed the moment it became dispatchable");
    clock.advance(100 * MS);
    c.sweep();
    assert_eq!(finals(&mut c), [("cold".to_string(), QueueOutcome::EvictedTtl)]);

    c.dispatch_cycle(empty_pool());
    c.enqueue(req("never", "f", 0)).unwrap();
    clock.advance(2 * S);
    c.sweep();
    assert_eq!(finals(&mut c), [("never".to_string(), QueueOutcome::EvictedNoEndpoints)]);
}

#[test]
fn the_hard_deadline_caps_the_wait() {
    // The router's backstop: the larger budget plus two sweep intervals; and a client
    // deadline, which also shortens the budget (EDF reads it).
    let mut cfg = bands(&[]);
    cfg.controller.default_request_ttl = S;
    cfg.controller.no_endpoint_request_ttl = 3 * S;
    let (mut c, clock) = harness(cfg);
    let mut r = req("deadline", "f", 0);
    r.deadline = Some(clock.now() + 300 * MS);
    c.enqueue(r).unwrap();
    c.enqueue(req("backstop", "f", 0)).unwrap();
    c.dispatch_cycle(empty_pool());
    // Flap the regime so the per-regime budget keeps restarting.
    for _ in 0..10 {
        clock.advance(500 * MS);
        c.dispatch_cycle(saturated(2.0));
        c.sweep();
        clock.advance(MS);
        c.dispatch_cycle(empty_pool());
    }
    let got = finals(&mut c);
    assert_eq!(got[0], ("deadline".to_string(), QueueOutcome::EvictedTtl));
    assert_eq!(got[1], ("backstop".to_string(), QueueOutcome::EvictedTtl));
}

#[test]
fn cancelled_and_shut_down_requests_end_once() {
    // Mirrors processor_test.go "should evict a queued item on shutdown" and
    // "should reject item if enqueued during shutdown".
    let (mut c, _) = harness(bands(&[]));
    let a = c.enqueue(req("a", "f", 0)).unwrap();
    c.enqueue(req("b", "f", 0)).unwrap();
    assert!(c.cancel(a));
    assert!(!c.cancel(a), "only once");
    c.shutdown();
    assert_eq!(
        finals(&mut c),
        [("a".to_string(), QueueOutcome::EvictedContextCancelled), ("b".to_string(), QueueOutcome::EvictedOther)]
    );
    let r = c.enqueue(req("late", "f", 0)).unwrap_err();
    assert_eq!((r.outcome, r.rejection.reason), (QueueOutcome::RejectedOther, Some("rejected-shutting-down")));
    let r = FlowController::new(&bands(&[]), Arc::new(ManualClock::new())).enqueue(req("x", "", 0)).unwrap_err();
    assert_eq!((r.outcome, r.rejection.status()), (QueueOutcome::RejectedOther, 500), "empty flow ID");
}

#[test]
fn idle_flows_are_collected() {
    let (mut c, clock) = harness(bands(&[]));
    c.enqueue(req("a", "f", 0)).unwrap();
    c.dispatch_cycle(open());
    assert_eq!(c.stats().bands[0].flows, 1);
    clock.advance(299 * S);
    c.sweep();
    assert_eq!(c.stats().bands[0].flows, 1);
    clock.advance(S);
    c.sweep();
    assert_eq!(c.stats().bands[0].flows, 0);
}

#[test]
fn a_burst_is_shed_at_capacity_and_nothing_is_lost() {
    let mut cfg = bands(&[]);
    cfg.registry.priority_bands.insert(0, PriorityBandConfig::new(0).with_capacity(0, 10));
    cfg.controller.default_request_ttl = 5 * S;
    let (mut c, clock) = harness(cfg);
    let mut accepted = Vec::new();
    let mut rejected = 0;
    for i in 0..100 {
        match c.enqueue(req(&format!("r{i}"), &format!("t{}", i % 3), 0)) {
            Ok(id) => accepted.push(id),
            Err(r) => {
                assert_eq!(r.outcome, QueueOutcome::RejectedCapacity);
                assert_eq!(r.rejection.reason, Some("rejected-saturated"));
                rejected += 1;
            }
        }
        // Saturated most of the time: one dispatch every tenth arrival.
        c.dispatch_cycle(if i % 10 == 9 { open() } else { saturated(1.2) });
        clock.advance(10 * MS);
    }
    assert_eq!(accepted.len() + rejected, 100);
    assert!(rejected > 70, "{rejected}");
    clock.advance(10 * S);
    c.sweep();
    let mut ended: Vec<ItemId> = c
        .drain_events()
        .into_iter()
        .filter_map(|e| match e {
            FlowEvent::Finalized(f) => Some(f.item.id()),
            FlowEvent::Revoked { .. } => None,
        })
        .collect();
    ended.sort();
    assert_eq!(ended, accepted, "every accepted request ends exactly once");
    assert!(c.is_empty());
}

fn evicting() -> FlowControlConfig {
    let mut cfg = bands(&[10, 0, -1]);
    cfg.controller.enable_eviction = true;
    cfg.controller.eviction_confirmation_grace = 100 * MS;
    cfg.controller.eviction_confirmation_timeout = 5 * S;
    cfg
}

fn revoked(c: &mut FlowController) -> Vec<ItemId> {
    c.drain_events()
        .into_iter()
        .filter_map(|e| match e {
            FlowEvent::Revoked { id, .. } => Some(id),
            FlowEvent::Finalized(_) => None,
        })
        .collect()
}

#[test]
fn blocked_higher_priority_work_revokes_sheddable_requests() {
    // Mirrors reclamation_test.go TestDispatchCycle_HoLBlock_TriggersReclamation and
    // TestDispatchCycle_GateClosed_SkipsDemandScan.
    let (mut c, clock) = harness(evicting());
    let mut running = Vec::new();
    for i in 0..6 {
        let priority = if i < 3 { -1 } else { 0 };
        c.enqueue(req(&format!("run{i}"), "bg", priority)).unwrap();
        clock.advance(MS);
    }
    while let Some(id) = c.dispatch_cycle(open()) {
        running.push(id);
        clock.advance(MS);
    }
    c.drain_events();
    c.enqueue(req("urgent", "fg", 10)).unwrap();
    assert!(c.dispatch_cycle(saturated(1.2)).is_none());
    // credit 1.2/6 = 0.2; deficit 0.2: one revocation, of the sheddable request
    // dispatched last (band 0 went first).
    let got = revoked(&mut c);
    assert_eq!(got, running[5..]);
    for _ in 0..10 {
        c.dispatch_cycle(saturated(1.2));
    }
    assert!(revoked(&mut c).is_empty(), "paused until confirmed and the grace ends");
    assert!(c.complete(got[0], None));
    clock.advance(50 * MS);
    c.dispatch_cycle(saturated(1.2));
    assert!(revoked(&mut c).is_empty(), "grace");
    clock.advance(51 * MS);
    c.dispatch_cycle(saturated(1.2));
    assert_eq!(revoked(&mut c).len(), 1, "decides again");
    let s = c.stats();
    assert_eq!((s.revocations_issued.get(&10).copied(), s.revocations_confirmed), (Some(2), 1));
}

#[test]
fn reclamation_needs_queued_demand_above_a_victim() {
    // Mirrors TestDispatchCycle_NoQueuedDemand_NoReclamation,
    // TestDispatchCycle_VictimNotStrictlyLower_NoReclamation and
    // TestDispatchCycle_NoVictims_NoReclamation.
    let (mut c, _) = harness(evicting());
    c.enqueue(req("bg", "bg", -1)).unwrap();
    c.dispatch_cycle(open());
    c.drain_events();
    c.dispatch_cycle(saturated(1.2));
    assert!(revoked(&mut c).is_empty(), "no queued demand");
    c.enqueue(req("same", "bg", -1)).unwrap();
    c.dispatch_cycle(saturated(1.2));
    assert!(revoked(&mut c).is_empty(), "demand must outrank the victim");

    let (mut c, _) = harness(evicting());
    c.enqueue(req("safe", "bg", 0)).unwrap();
    c.dispatch_cycle(open());
    c.enqueue(req("urgent", "fg", 10)).unwrap();
    c.dispatch_cycle(saturated(1.2));
    assert!(revoked(&mut c).is_empty(), "no sheddable victims");
}

#[test]
fn without_eviction_nothing_is_revoked() {
    let (mut c, _) = harness(bands(&[10, -1]));
    c.enqueue(req("bg", "bg", -1)).unwrap();
    c.dispatch_cycle(open());
    c.enqueue(req("urgent", "fg", 10)).unwrap();
    c.dispatch_cycle(saturated(5.0));
    assert!(revoked(&mut c).is_empty());
    assert_eq!(c.in_flight(), 1);
    assert!(c.complete(ItemId(0), None));
    assert!(!c.complete(ItemId(0), None));
}

#[test]
fn fairness_policies_hear_of_dispatch_and_completion() {
    use crate::flowcontrol::policies::program_aware::{ProgramAware, ProgramAwareConfig};
    let pa = Arc::new(ProgramAware::new(ProgramAwareConfig::default()));
    let mut cfg = bands(&[]);
    cfg.registry.priority_bands.insert(0, PriorityBandConfig::new(0).with_fairness("pa", pa.clone()));
    let (mut c, clock) = harness(cfg);
    let id = c.enqueue(req("r", "prog", 0)).unwrap();
    clock.advance(40 * MS);
    c.dispatch_cycle(open());
    let m = pa.program("prog").unwrap();
    assert_eq!((m.dispatched, m.in_flight, m.average_wait_ms), (1, 1, 40.0));
    c.complete(id, Some(TokenUsage { prompt_tokens: 10, completion_tokens: 5 }));
    assert_eq!(pa.program("prog").map(|m| m.in_flight), Some(0));
    assert_eq!(pa.attained_service("prog", clock.now()), Some(20.0));
}

#[test]
fn stats_report_queues_by_flow_and_band() {
    let (mut c, _) = harness(bands(&[5]));
    c.enqueue(req("a", "x", 5)).unwrap();
    c.enqueue(req("b", "x", 5)).unwrap();
    c.enqueue(req("c", "y", 0)).unwrap();
    let s = c.stats();
    assert_eq!(
        s.flows,
        [
            FlowStats { key: FlowKey::new("x", 5), len: 2, bytes: 20 },
            FlowStats { key: FlowKey::new("y", 0), len: 1, bytes: 10 }
        ]
    );
    assert_eq!(s.bands.iter().map(|b| (b.priority, b.len)).collect::<Vec<_>>(), [(5, 2), (0, 1)]);
    c.dispatch_cycle(saturated(0.25));
    let s = c.stats();
    assert_eq!(s.pool.map(|p| p.saturation), Some(0.25));
    assert_eq!(s.outcomes.get(&(QueueOutcome::Dispatched, 5)), Some(&1));
}
