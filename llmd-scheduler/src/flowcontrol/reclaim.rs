//! Demand-driven in-flight eviction (`enableEviction`): when a band is held back by
//! saturation while higher-priority work than some running sheddable request waits, the
//! controller revokes a few running requests, sized by the saturation deficit, then waits
//! for the revocations to land (and the saturation signal to show them) before deciding
//! again. The router's `controller/internal/reclamation.go` and `flowcontrol/eviction`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::policies::{EvictionFilterPolicy, EvictionItem, EvictionOrderingPolicy};
use super::types::ItemId;

/// The in-flight requests eviction may choose from (the router's `EvictionQueue`).
pub(crate) struct InFlightTracker {
    filter: Arc<dyn EvictionFilterPolicy>,
    ordering: Arc<dyn EvictionOrderingPolicy>,
    all: HashMap<ItemId, EvictionItem>,
}

impl InFlightTracker {
    pub(crate) fn new(filter: Arc<dyn EvictionFilterPolicy>, ordering: Arc<dyn EvictionOrderingPolicy>) -> Self {
        InFlightTracker { filter, ordering, all: HashMap::new() }
    }

    pub(crate) fn track(&mut self, id: ItemId, item: EvictionItem) {
        self.all.insert(id, item);
    }

    pub(crate) fn untrack(&mut self, id: ItemId) {
        self.all.remove(&id);
    }

    /// (tracked, evictable).
    pub(crate) fn stats(&self) -> (usize, usize) {
        (self.all.len(), self.all.values().filter(|x| self.filter.accept(x)).count())
    }

    // The first victim by the ordering policy (ties by ID, for determinism).
    fn victim(&self) -> Option<(ItemId, &EvictionItem)> {
        let mut best: Option<(ItemId, &EvictionItem)> = None;
        for (id, x) in self.all.iter().filter(|(_, x)| self.filter.accept(x)) {
            best = match best {
                Some((bid, b)) if !(self.ordering.less(x, b) || (!self.ordering.less(b, x) && *id < bid)) => {
                    Some((bid, b))
                }
                _ => Some((*id, x)),
            };
        }
        best
    }

    pub(crate) fn victim_priority(&self) -> Option<i32> {
        self.victim().map(|(_, x)| x.priority)
    }

    /// Takes up to `n` victims of priority strictly below `bound` out of tracking.
    pub(crate) fn evict(&mut self, n: usize, bound: i32) -> Vec<(ItemId, EvictionItem)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let Some((id, x)) = self.victim() else { break };
            if x.priority >= bound {
                break;
            }
            if let Some(item) = self.all.remove(&id) {
                out.push((id, item));
            }
        }
        out
    }
}

/// The reclamation settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReclaimConfig {
    pub(crate) max_per_decision: usize,
    pub(crate) grace: Duration,
    pub(crate) timeout: Duration,
}

/// The pacing state of reclamation (the router's `ReclamationController`).
#[derive(Debug)]
pub(crate) struct Reclamation {
    cfg: ReclaimConfig,
    // Revocations issued and not yet seen to end: their credit and when issued.
    outstanding: HashMap<ItemId, (f64, Duration)>,
    // Confirmed revocations still within their grace: credit and expiry.
    cooling: Vec<(f64, Duration)>,
    pending: f64,
    pub(crate) issued: BTreeMap<i32, u64>,
    pub(crate) confirmed: u64,
    pub(crate) timed_out: u64,
    pub(crate) last_target: f64,
    pub(crate) confirmation_times: Vec<Duration>,
    // What the metrics have been told.
    pub(crate) reported_issued: BTreeMap<i32, u64>,
    pub(crate) reported_confirmed: u64,
    pub(crate) reported_timed_out: u64,
}

impl Reclamation {
    pub(crate) fn new(cfg: ReclaimConfig) -> Self {
        Reclamation {
            cfg,
            outstanding: HashMap::new(),
            cooling: Vec::new(),
            pending: 0.0,
            issued: BTreeMap::new(),
            confirmed: 0,
            timed_out: 0,
            last_target: 0.0,
            confirmation_times: Vec::new(),
            reported_issued: BTreeMap::new(),
            reported_confirmed: 0,
            reported_timed_out: 0,
        }
    }

    /// Credit of saturation believed on its way out.
    pub(crate) fn pending(&self) -> f64 {
        self.pending
    }

    /// Whether a new decision may be made: nothing outstanding and no grace running.
    pub(crate) fn gate_open(&mut self, now: Duration) -> bool {
        let timed_out: Vec<ItemId> = self
            .outstanding
            .iter()
            .filter(|(_, (_, at))| now.saturating_sub(*at) >= self.cfg.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            if let Some((credit, _)) = self.outstanding.remove(&id) {
                self.cooling.push((credit, now + self.cfg.grace));
                self.timed_out += 1;
            }
        }
        let before = self.cooling.len();
        let mut freed = 0.0;
        self.cooling.retain(|(credit, until)| {
            let keep = now < *until;
            if !keep {
                freed += credit;
            }
            keep
        });
        if self.cooling.len() != before {
            self.pending = (self.pending - freed).max(0.0);
        }
        self.outstanding.is_empty() && self.cooling.is_empty()
    }

    /// Revokes enough victims below `demand_priority` to close the gap between
    /// `saturation` and `ceiling`, counting what earlier revocations will free; at least
    /// one, at most the configured cap and the evictable count.
    pub(crate) fn reclaim(
        &mut self,
        now: Duration,
        tracker: &mut InFlightTracker,
        saturation: f64,
        ceiling: f64,
        demand_priority: i32,
    ) -> Vec<(ItemId, EvictionItem)> {
        let (in_flight, evictable) = tracker.stats();
        if in_flight == 0 || evictable == 0 {
            return Vec::new();
        }
        let credit = saturation / in_flight as f64;
        if credit <= 0.0 || !credit.is_finite() {
            return Vec::new();
        }
        let target = saturation - ceiling;
        self.last_target = target;
        let net = target - self.pending;
        // At exactly zero deficit one revocation is still due (the gate blocks at
        // saturation == ceiling), unless earlier ones cover it.
        if net < 0.0 || (net == 0.0 && self.pending > 0.0) {
            return Vec::new();
        }
        let n = ((net / credit).ceil() as usize).max(1).min(self.cfg.max_per_decision).min(evictable);
        let evicted = tracker.evict(n, demand_priority);
        for (id, _) in &evicted {
            self.outstanding.insert(*id, (credit, now));
            self.pending += credit;
        }
        if !evicted.is_empty() {
            *self.issued.entry(demand_priority).or_default() += evicted.len() as u64;
        }
        evicted
    }

    /// A revoked request ended: its credit cools for the grace period.
    pub(crate) fn confirm(&mut self, id: ItemId, now: Duration) {
        if let Some((credit, at)) = self.outstanding.remove(&id) {
            self.cooling.push((credit, now + self.cfg.grace));
            self.confirmed += 1;
            self.confirmation_times.push(now.saturating_sub(at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowcontrol::policies::eviction::{PriorityThenTime, SheddableFilter};

    const CFG: ReclaimConfig =
        ReclaimConfig { max_per_decision: 2, grace: Duration::from_millis(100), timeout: Duration::from_secs(5) };

    // `in_flight` tracked requests, the first `evictable` of them sheddable.
    fn tracker(in_flight: usize, evictable: usize) -> InFlightTracker {
        let mut t = InFlightTracker::new(Arc::new(SheddableFilter), Arc::new(PriorityThenTime));
        for i in 0..in_flight {
            let priority = if i < evictable { -1 } else { 0 };
            t.track(
                ItemId(i as u64),
                EvictionItem { request_id: format!("req-{i}"), priority, dispatch_time: Duration::from_secs(i as u64) },
            );
        }
        t
    }

    #[test]
    fn decisions_are_sized_by_the_deficit() {
        // Mirrors reclamation_test.go TestReclamationController_Sizing.
        for (name, in_flight, evictable, sat, ceiling, want) in [
            ("SmallDeficit_EvictsOne", 6, 6, 1.2, 1.0, 1),
            ("DeepOverload_CappedByMaxPerDecision", 4, 4, 2.0, 1.0, 2),
            ("CappedByEvictable", 4, 1, 2.0, 1.0, 1),
            ("NoDeficit_NoEviction", 6, 6, 0.9, 1.0, 0),
            ("ExactBoundary_EvictsOne", 10, 10, 1.0, 1.0, 1),
            ("ZeroLeases_NoEviction", 0, 0, 1.5, 1.0, 0),
        ] {
            let mut t = tracker(in_flight, evictable);
            let mut r = Reclamation::new(CFG);
            assert_eq!(r.reclaim(Duration::ZERO, &mut t, sat, ceiling, 0).len(), want, "{name}");
        }
    }

    #[test]
    fn the_gate_waits_for_confirmations_and_grace() {
        // Mirrors TestReclamationController_GateLifecycle, _ConfirmUnknownID_Ignored,
        // _ConfirmationTimeout_ReopensGate and _PendingDebit_SuppressesRepeatDecision.
        let t0 = Duration::from_secs(1);
        let mut t = tracker(4, 4);
        let mut r = Reclamation::new(CFG);
        assert!(r.gate_open(t0));
        let ids: Vec<ItemId> = r.reclaim(t0, &mut t, 2.0, 1.0, 0).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids.len(), 2);
        assert!(!r.gate_open(t0), "closed while outstanding");
        assert!(r.reclaim(t0, &mut t, 2.0, 1.0, 0).is_empty(), "the pending debit covers the deficit");
        r.confirm(ids[0], t0);
        assert!(!r.gate_open(t0));
        r.confirm(ids[1], t0);
        assert!(!r.gate_open(t0), "grace");
        r.confirm(ItemId(99), t0);
        assert!(r.gate_open(t0 + CFG.grace + Duration::from_millis(1)));
        assert_eq!(r.confirmed, 2);

        let mut t = tracker(4, 4);
        let mut r = Reclamation::new(CFG);
        let ids: Vec<ItemId> = r.reclaim(t0, &mut t, 2.0, 1.0, 0).into_iter().map(|(id, _)| id).collect();
        let later = t0 + CFG.timeout + Duration::from_millis(1);
        assert!(!r.gate_open(later), "timed out entries retire, then grace runs");
        assert!(r.gate_open(later + CFG.grace + Duration::from_millis(1)));
        r.confirm(ids[0], later);
        assert!(r.gate_open(later + CFG.grace + Duration::from_millis(1)), "a late confirmation is ignored");
        assert_eq!(r.timed_out, 2);
    }

    #[test]
    fn victims_are_bounded_by_the_demand_priority() {
        // Mirrors request_evictor_test.go TestRequestEvictor_EvictN_PriorityBound and
        // TestReclaim_PassesDemandPriorityAsVictimBound.
        let mut t = tracker(4, 4);
        assert!(t.evict(2, -1).is_empty(), "victims at the bound are not evicted");
        let got = t.evict(2, 0);
        // Same priority: the most recently dispatched goes first.
        assert_eq!(got.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(t.stats(), (2, 2));
    }
}
