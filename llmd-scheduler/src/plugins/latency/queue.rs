//! The router's per-endpoint running-request queue (`running_request_tpot_slo_queue.go`):
//! the requests the picker sent to an endpoint, ordered by their TPOT SLO, so the
//! tightest SLO among them (which a new request must not break) is at hand, and their
//! number tells idle endpoints apart.

use std::collections::{BTreeSet, HashMap};

/// A TPOT SLO ordered by `f64::total_cmp` (SLOs are finite and ≥ 0 once admitted).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slo(f64);

impl Eq for Slo {}

impl PartialOrd for Slo {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slo {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Requests by TPOT SLO (lowest first), removable by id.
#[derive(Debug, Clone, Default)]
pub struct RequestPriorityQueue {
    // (SLO, arrival, id): equal SLOs keep arrival order.
    items: BTreeSet<(Slo, u64, String)>,
    lookup: HashMap<String, (Slo, u64)>,
    arrivals: u64,
}

impl RequestPriorityQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` with TPOT SLO `tpot`; false (and nothing added) for an empty id, a
    /// negative or NaN SLO, or an id already queued.
    pub fn add(&mut self, id: &str, tpot: f64) -> bool {
        if id.is_empty() || tpot.is_nan() || tpot < 0.0 || self.lookup.contains_key(id) {
            return false;
        }
        self.arrivals += 1;
        let key = (Slo(tpot), self.arrivals);
        self.items.insert((key.0, key.1, id.to_string()));
        self.lookup.insert(id.to_string(), key);
        true
    }

    /// Changes a queued request's SLO; false when it is not queued or `tpot` is invalid.
    pub fn update(&mut self, id: &str, tpot: f64) -> bool {
        if tpot.is_nan() || tpot < 0.0 {
            return false;
        }
        let Some(&(slo, arrival)) = self.lookup.get(id) else { return false };
        self.items.remove(&(slo, arrival, id.to_string()));
        self.items.insert((Slo(tpot), arrival, id.to_string()));
        self.lookup.insert(id.to_string(), (Slo(tpot), arrival));
        true
    }

    /// Removes `id`, returning its SLO.
    pub fn remove(&mut self, id: &str) -> Option<f64> {
        let (slo, arrival) = self.lookup.remove(id)?;
        self.items.remove(&(slo, arrival, id.to_string()));
        Some(slo.0)
    }

    /// The request with the lowest SLO, and the SLO.
    pub fn peek(&self) -> Option<(&str, f64)> {
        self.items.first().map(|(s, _, id)| (id.as_str(), s.0))
    }

    /// Requests queued.
    pub fn len(&self) -> usize {
        self.lookup.len()
    }

    /// Whether none are queued.
    pub fn is_empty(&self) -> bool {
        self.lookup.is_empty()
    }

    /// Whether `id` is queued.
    pub fn contains(&self, id: &str) -> bool {
        self.lookup.contains_key(id)
    }
}

/// The queues of every endpoint (an endpoint without requests has none).
#[derive(Debug, Clone, Default)]
pub struct RunningRequests {
    queues: HashMap<String, RequestPriorityQueue>,
}

impl RunningRequests {
    /// Queues `id` on `endpoint`.
    pub fn add(&mut self, endpoint: &str, id: &str, tpot: f64) -> bool {
        self.queues.entry(endpoint.to_string()).or_default().add(id, tpot)
    }

    /// Removes `id` from `endpoint`, dropping the queue when it empties.
    pub fn remove(&mut self, endpoint: &str, id: &str) {
        if let Some(q) = self.queues.get_mut(endpoint) {
            q.remove(id);
            if q.is_empty() {
                self.queues.remove(endpoint);
            }
        }
    }

    /// Requests queued on `endpoint` (the router's `DispatchedRequestCount`).
    pub fn count(&self, endpoint: &str) -> usize {
        self.queues.get(endpoint).map_or(0, RequestPriorityQueue::len)
    }

    /// The tightest TPOT SLO on `endpoint`, 0 when it has no requests.
    pub fn min_tpot_slo(&self, endpoint: &str) -> f64 {
        self.queues.get(endpoint).and_then(RequestPriorityQueue::peek).map_or(0.0, |(_, s)| s)
    }

    /// Forgets an endpoint that went away.
    pub fn forget(&mut self, endpoint: &str) {
        self.queues.remove(endpoint);
    }

    /// Requests queued on any endpoint.
    pub fn total(&self) -> usize {
        self.queues.values().map(RequestPriorityQueue::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_refuses_duplicates_empty_ids_and_negative_slos() {
        // Mirrors running_request_tpot_slo_queue_test.go TestNewRequestPriorityQueue, TestAdd.
        let mut q = RequestPriorityQueue::new();
        assert!(q.is_empty() && q.peek().is_none());
        assert!(q.add("req1", 2.5));
        assert_eq!(q.len(), 1);
        assert!(!q.add("req1", 3.0));
        assert_eq!(q.len(), 1);
        assert!(!q.add("", 1.0));
        assert!(!q.add("req2", -1.0));
        assert!(!q.add("req3", f64::NAN), "llmd also refuses NaN");
        assert!(q.add("req4", 0.0), "no TPOT SLO is queued at 0");
    }

    #[test]
    fn lowest_slo_comes_first() {
        // Mirrors TestPriorityOrdering and TestLargeQueue.
        let mut q = RequestPriorityQueue::new();
        q.add("high", 1.0);
        q.add("medium", 5.0);
        q.add("low", 10.0);
        for (id, tpot) in [("high", 1.0), ("medium", 5.0), ("low", 10.0)] {
            assert_eq!(q.peek(), Some((id, tpot)));
            assert_eq!(q.remove(id), Some(tpot));
        }
        let mut big = RequestPriorityQueue::new();
        for i in (0..1000).rev() {
            big.add(&format!("r{i}"), f64::from(i));
        }
        assert_eq!(big.len(), 1000);
        for i in 0..1000 {
            assert_eq!(big.peek().map(|(_, s)| s), Some(f64::from(i)));
            big.remove(&format!("r{i}"));
        }
        assert!(big.is_empty());
    }

    #[test]
    fn remove_update_contains() {
        // Mirrors TestRemove, TestUpdate, TestContains.
        let mut q = RequestPriorityQueue::new();
        assert_eq!(q.remove("nonexistent"), None);
        q.add("req1", 1.0);
        q.add("req2", 2.0);
        q.add("req3", 3.0);
        assert_eq!(q.remove("req2"), Some(2.0));
        assert_eq!(q.len(), 2);
        assert_eq!(q.remove("req2"), None);
        assert_eq!(q.peek().map(|(id, _)| id), Some("req1"));
        assert!(!q.update("nonexistent", 1.0));
        assert!(q.update("req3", 0.5));
        assert_eq!(q.peek(), Some(("req3", 0.5)));
        assert!(!q.update("req1", -1.0));
        assert!(q.contains("req1") && !q.contains("req2"));
        q.remove("req1");
        assert!(!q.contains("req1"));
    }

    #[test]
    fn endpoint_queues_count_and_give_the_tightest_slo() {
        // Mirrors plugin_test.go TestPredictedLatency_GetPodRunningRequestCount and
        // TestPredictedLatency_GetPodMinTPOTSLO.
        let mut r = RunningRequests::default();
        assert_eq!((r.count("a"), r.min_tpot_slo("a")), (0, 0.0));
        r.add("a", "1", 50.0);
        r.add("a", "2", 20.0);
        r.add("b", "3", 30.0);
        assert_eq!((r.count("a"), r.min_tpot_slo("a")), (2, 20.0));
        r.remove("a", "2");
        assert_eq!((r.count("a"), r.min_tpot_slo("a")), (1, 50.0));
        r.remove("a", "1");
        assert_eq!((r.count("a"), r.total()), (0, 1));
        r.forget("b");
        assert_eq!(r.total(), 0);
    }
}
