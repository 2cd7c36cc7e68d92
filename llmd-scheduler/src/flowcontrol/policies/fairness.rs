//! Fairness policies without parameters: `global-strict-fairness-policy` (the default:
//! the band behaves as one queue in ordering-policy order) and
//! `round-robin-fairness-policy` (flows take turns). `program-aware-fairness` has its own
//! module.

use super::{BandState, FairnessPolicy};
use crate::flowcontrol::queue::{BandView, FlowQueue};
use crate::flowcontrol::types::{FlowKey, PolicyError};

/// `global-strict-fairness-policy`'s type name.
pub const GLOBAL_STRICT: &str = "global-strict-fairness-policy";
/// `round-robin-fairness-policy`'s type name.
pub const ROUND_ROBIN: &str = "round-robin-fairness-policy";

/// Picks the flow whose head item is best by the flows' ordering policy: no fairness,
/// strict global order (FCFS across flows with the default ordering).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalStrict;

impl FairnessPolicy for GlobalStrict {
    fn type_name(&self) -> &'static str {
        GLOBAL_STRICT
    }

    fn pick(&self, band: &BandView<'_>, _state: &mut BandState) -> Result<Option<String>, PolicyError> {
        let mut best: Option<&FlowQueue> = None;
        for q in band.active_queues() {
            let Some(item) = q.peek() else { continue };
            let Some(b) = best else {
                best = Some(q);
                continue;
            };
            // Items ordered by different policies cannot be compared.
            if q.ordering().type_name() != b.ordering().type_name() {
                return Err(PolicyError(format!(
                    "incompatible priority score type for comparison: expected {:?}, got {:?}",
                    b.ordering().type_name(),
                    q.ordering().type_name()
                )));
            }
            if let Some(head) = b.peek()
                && b.ordering().less(item, head)
            {
                best = Some(q);
            }
        }
        Ok(best.map(|q| q.flow_key().id.clone()))
    }
}

/// Flows take turns: a per-band cursor remembers the last flow served; the next pick is
/// the first flow after it (flows sorted by key) with work.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

// The cursor: the flow last selected in the band.
#[derive(Debug, Default)]
struct Cursor {
    last: Option<FlowKey>,
}

impl FairnessPolicy for RoundRobin {
    fn type_name(&self) -> &'static str {
        ROUND_ROBIN
    }

    fn new_state(&self) -> BandState {
        Box::new(Cursor::default())
    }

    fn pick(&self, band: &BandView<'_>, state: &mut BandState) -> Result<Option<String>, PolicyError> {
        let Some(cursor) = state.downcast_mut::<Cursor>() else {
            return Err(PolicyError("invalid state type for RoundRobin policy: expected a round-robin cursor".into()));
        };
        let mut keys = band.flow_keys();
        if keys.is_empty() {
            cursor.last = None;
            return Ok(None);
        }
        keys.sort();
        let start =
            cursor.last.as_ref().and_then(|l| keys.iter().position(|k| k == l)).map_or(0, |i| (i + 1) % keys.len());
        for i in 0..keys.len() {
            let key = &keys[(start + i) % keys.len()];
            if band.queue(&key.id).is_some_and(|q| !q.is_empty()) {
                cursor.last = Some(key.clone());
                return Ok(Some(key.id.clone()));
            }
        }
        cursor.last = None;
        Ok(None)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::flowcontrol::policies::OrderingPolicy;
    use crate::flowcontrol::policies::ordering::{Edf, Fcfs};
    use crate::flowcontrol::types::{FlowRequest, ItemId, QueueItem};

    /// A queue of `len` items of flow `id` whose head was enqueued at `head_ms`.
    pub(crate) fn queue(id: &str, len: usize, head_ms: u64, ordering: Arc<dyn OrderingPolicy>) -> FlowQueue {
        let key = FlowKey::new(id, 0);
        let mut q = FlowQueue::new(key.clone(), ordering);
        for i in 0..len {
            let at = Duration::from_millis(head_ms + i as u64);
            q.push(Arc::new(QueueItem::new(
                ItemId(i as u64),
                FlowRequest::new("r", id, 0, 1),
                key.clone(),
                at,
                Duration::ZERO,
            )));
        }
        q
    }

    pub(crate) fn band(queues: Vec<FlowQueue>) -> BTreeMap<String, FlowQueue> {
        queues.into_iter().map(|q| (q.flow_key().id.clone(), q)).collect()
    }

    fn pick(p: &dyn FairnessPolicy, b: &BTreeMap<String, FlowQueue>, st: &mut BandState) -> Option<String> {
        p.pick(&BandView::new(0, b, Duration::ZERO), st).unwrap()
    }

    #[test]
    fn global_strict_picks_the_globally_best_head() {
        // Mirrors global_strict_test.go TestGlobalStrict_Pick.
        let fcfs: Arc<dyn OrderingPolicy> = Arc::new(Fcfs);
        let better = || queue("flow1", 1, 0, fcfs.clone()); // enqueued 10 s before "now"
        let worse = || queue("flow2", 1, 5000, fcfs.clone());
        let empty = || queue("flowEmpty", 0, 0, fcfs.clone());
        let p = GlobalStrict;
        let mut st = p.new_state();
        assert_eq!(pick(&p, &band(vec![better(), worse()]), &mut st).as_deref(), Some("flow1"), "BasicSelection");
        assert_eq!(pick(&p, &band(vec![worse(), better()]), &mut st).as_deref(), Some("flow1"), "order-independent");
        assert_eq!(
            pick(&p, &band(vec![better(), empty(), worse()]), &mut st).as_deref(),
            Some("flow1"),
            "IgnoresEmpty"
        );
        assert_eq!(pick(&p, &band(vec![better()]), &mut st).as_deref(), Some("flow1"), "SingleNonEmptyQueue");
        assert_eq!(pick(&p, &band(vec![empty(), queue("flowEmpty2", 0, 0, fcfs.clone())]), &mut st), None, "AllEmpty");
        assert_eq!(pick(&p, &BTreeMap::new(), &mut st), None, "empty band");
        // OrderingPolicyCompatibility: two ordering types cannot be compared.
        let mixed = band(vec![queue("flow1", 1, 0, fcfs.clone()), queue("flow2", 1, 5000, Arc::new(Edf))]);
        let e = p.pick(&BandView::new(0, &mixed, Duration::ZERO), &mut st).unwrap_err();
        assert!(e.0.contains("incompatible priority score type"), "{e}");
    }

    #[test]
    fn round_robin_cycles_through_sorted_flows() {
        // Mirrors roundrobin_test.go TestRoundRobin_Pick_Cycle.
        let fcfs: Arc<dyn OrderingPolicy> = Arc::new(Fcfs);
        let b = band(vec![
            queue("flow3", 3, 0, fcfs.clone()),
            queue("flow1", 1, 0, fcfs.clone()),
            queue("flow2", 2, 0, fcfs),
        ]);
        let p = RoundRobin;
        let mut st = p.new_state();
        for _ in 0..2 {
            for want in ["flow1", "flow2", "flow3"] {
                assert_eq!(pick(&p, &b, &mut st).as_deref(), Some(want));
            }
        }
    }

    #[test]
    fn round_robin_skips_empty_queues() {
        // Mirrors roundrobin_test.go TestRoundRobin_Pick_SkipsEmptyQueues.
        let fcfs: Arc<dyn OrderingPolicy> = Arc::new(Fcfs);
        let b = band(vec![
            queue("flow1", 1, 0, fcfs.clone()),
            queue("flowEmpty", 0, 0, fcfs.clone()),
            queue("flow3", 3, 0, fcfs),
        ]);
        let p = RoundRobin;
        let mut st = p.new_state();
        for want in ["flow1", "flow3", "flow1"] {
            assert_eq!(pick(&p, &b, &mut st).as_deref(), Some(want));
        }
    }

    #[test]
    fn round_robin_follows_flows_that_come_and_go() {
        // Mirrors roundrobin_test.go TestRoundRobin_Pick_HandlesDynamicFlows.
        let fcfs: Arc<dyn OrderingPolicy> = Arc::new(Fcfs);
        let q = |id: &str| queue(id, 1, 0, fcfs.clone());
        let p = RoundRobin;
        let mut st = p.new_state();
        assert_eq!(pick(&p, &band(vec![q("flow1"), q("flow2")]), &mut st).as_deref(), Some("flow1"));
        let three = band(vec![q("flow1"), q("flow2"), q("flow3")]);
        assert_eq!(pick(&p, &three, &mut st).as_deref(), Some("flow2"), "continues from the last index");
        assert_eq!(pick(&p, &three, &mut st).as_deref(), Some("flow3"), "the new flow");
        assert_eq!(
            pick(&p, &band(vec![q("flow1"), q("flow3")]), &mut st).as_deref(),
            Some("flow1"),
            "wraps after removal"
        );
    }

    #[test]
    fn fairness_policies_conform_on_empty_bands() {
        // Mirrors fairness/functional_test.go TestFairnessPolicyConformance.
        let fcfs: Arc<dyn OrderingPolicy> = Arc::new(Fcfs);
        let policies: [&dyn FairnessPolicy; 2] = [&GlobalStrict, &RoundRobin];
        for p in policies {
            let mut st = p.new_state();
            assert_eq!(pick(p, &BTreeMap::new(), &mut st), None, "{}: empty band", p.type_name());
            let one = band(vec![queue("flow-empty", 0, 0, fcfs.clone())]);
            assert_eq!(pick(p, &one, &mut st), None, "{}: one empty queue", p.type_name());
            let two = band(vec![queue("flow-empty", 0, 0, fcfs.clone()), queue("flow-empty-2", 0, 0, fcfs.clone())]);
            assert_eq!(pick(p, &two, &mut st), None, "{}: two empty queues", p.type_name());
        }
    }
}
