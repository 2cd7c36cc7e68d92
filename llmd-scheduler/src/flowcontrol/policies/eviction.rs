//! In-flight eviction policies: which dispatched requests may be revoked when higher-
//! priority work is blocked (`sheddable-eviction-filter`: negative priority only) and in
//! which order (`priority-then-time-eviction-order-policy`: lowest priority, then the
//! most recently dispatched, which has the least KV cache invested). The router wires
//! exactly these two whenever `enableEviction` is set; they take no parameters.

use super::{EvictionFilterPolicy, EvictionItem, EvictionOrderingPolicy};

/// `sheddable-eviction-filter`'s type name.
pub const SHEDDABLE_FILTER: &str = "sheddable-eviction-filter";
/// `priority-then-time-eviction-order-policy`'s type name.
pub const PRIORITY_THEN_TIME: &str = "priority-then-time-eviction-order-policy";

/// Only sheddable (negative-priority) requests may be evicted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SheddableFilter;

impl EvictionFilterPolicy for SheddableFilter {
    fn type_name(&self) -> &'static str {
        SHEDDABLE_FILTER
    }

    fn accept(&self, item: &EvictionItem) -> bool {
        item.priority < 0
    }
}

/// Lowest priority first; among equals, the most recently dispatched.
#[derive(Debug, Clone, Copy, Default)]
pub struct PriorityThenTime;

impl EvictionOrderingPolicy for PriorityThenTime {
    fn type_name(&self) -> &'static str {
        PRIORITY_THEN_TIME
    }

    fn less(&self, a: &EvictionItem, b: &EvictionItem) -> bool {
        if a.priority != b.priority {
            return a.priority < b.priority;
        }
        a.dispatch_time > b.dispatch_time
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn item(priority: i32, dispatched_s: u64) -> EvictionItem {
        EvictionItem { request_id: String::new(), priority, dispatch_time: Duration::from_secs(dispatched_s) }
    }

    #[test]
    fn only_sheddable_requests_are_evictable() {
        // Mirrors sheddable_test.go TestSheddableFilter_Accept.
        for (p, want) in [(-1, true), (-100, true), (0, false), (1, false), (100, false)] {
            assert_eq!(SheddableFilter.accept(&item(p, 0)), want, "priority {p}");
        }
    }

    #[test]
    fn lowest_priority_then_newest_dispatch_goes_first() {
        // Mirrors priority_time_test.go TestPriorityThenTimeOrdering_Less.
        let (low_old, low_new, mid, high) = (item(-2, 9), item(-2, 10), item(0, 10), item(5, 10));
        let o = PriorityThenTime;
        assert!(o.less(&low_old, &mid), "lower priority evicted first");
        assert!(!o.less(&high, &mid), "higher priority not first");
        assert!(o.less(&low_new, &low_old), "same priority: newer first");
        assert!(!o.less(&low_old, &low_new));
        assert!(!o.less(&mid, &mid), "same item: no preference");
    }
}
