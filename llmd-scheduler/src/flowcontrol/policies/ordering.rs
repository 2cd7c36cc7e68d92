//! Ordering policies: which item of a flow leaves first (`fcfs-ordering-policy`, the
//! default; `edf-ordering-policy`; `slo-deadline-ordering-policy`). None takes parameters.

use std::time::Duration;

use super::OrderingPolicy;
use crate::flowcontrol::types::{OLD_TTFT_SLO_HEADER, QueueItem, TTFT_SLO_HEADER, header};

/// `fcfs-ordering-policy`'s type name.
pub const FCFS: &str = "fcfs-ordering-policy";
/// `edf-ordering-policy`'s type name.
pub const EDF: &str = "edf-ordering-policy";
/// `slo-deadline-ordering-policy`'s type name.
pub const SLO_DEADLINE: &str = "slo-deadline-ordering-policy";

/// First come, first served: earlier enqueue time first.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fcfs;

impl OrderingPolicy for Fcfs {
    fn type_name(&self) -> &'static str {
        FCFS
    }

    fn less(&self, a: &QueueItem, b: &QueueItem) -> bool {
        a.enqueue_time() < b.enqueue_time()
    }
}

/// Earliest deadline first: deadline = enqueue time + effective TTL (no TTL: after every
/// item that has one); ties by enqueue time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Edf;

// `None` is the far-future deadline of an item without one; it sorts last.
fn earlier(a: Option<Duration>, b: Option<Duration>) -> Option<bool> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Some(x < y),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
        _ => None,
    }
}

/// An item's EDF deadline, `None` when it has no TTL.
pub fn edf_deadline(item: &QueueItem) -> Option<Duration> {
    let ttl = item.effective_ttl();
    if ttl.is_zero() { None } else { item.enqueue_time().checked_add(ttl) }
}

impl OrderingPolicy for Edf {
    fn type_name(&self) -> &'static str {
        EDF
    }

    fn less(&self, a: &QueueItem, b: &QueueItem) -> bool {
        earlier(edf_deadline(a), edf_deadline(b)).unwrap_or(a.enqueue_time() < b.enqueue_time())
    }
}

/// SLO deadline: deadline = received time + the `x-llm-d-slo-ttft-ms` header (integer
/// milliseconds; missing, invalid or out of range: after every item that has one); ties
/// by received time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SloDeadline;

/// An item's SLO deadline, `None` when it has no valid TTFT header.
pub fn slo_deadline(item: &QueueItem) -> Option<Duration> {
    let raw = header(&item.request().headers, TTFT_SLO_HEADER, OLD_TTFT_SLO_HEADER)?;
    let ms: i64 = raw.trim().parse().ok()?;
    // The router refuses what would overflow a time.Duration of nanoseconds.
    if !(0..=i64::MAX / 1_000_000).contains(&ms) {
        return None;
    }
    item.received().checked_add(Duration::from_millis(ms as u64))
}

impl OrderingPolicy for SloDeadline {
    fn type_name(&self) -> &'static str {
        SLO_DEADLINE
    }

    fn less(&self, a: &QueueItem, b: &QueueItem) -> bool {
        earlier(slo_deadline(a), slo_deadline(b)).unwrap_or(a.received() < b.received())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flowcontrol::types::{FlowKey, FlowRequest, ItemId};

    fn item(enqueue_ms: u64, ttl_ms: u64) -> QueueItem {
        QueueItem::new(
            ItemId(0),
            FlowRequest::new("r", "test-flow", 0, 10),
            FlowKey::new("test-flow", 0),
            Duration::from_millis(enqueue_ms),
            Duration::from_millis(ttl_ms),
        )
    }

    // Go times are relative to `now`; these shift them by 10 s so none is negative.
    const NOW: u64 = 10_000;

    #[test]
    fn fcfs_orders_by_enqueue_time() {
        // Mirrors fcfs_test.go TestFCFS_Less (the nil cases have no Rust counterpart).
        let (a, b, c) = (item(NOW, 0), item(NOW + 1000, 0), item(NOW, 0));
        let p = Fcfs;
        assert!(p.less(&a, &b), "A before B");
        assert!(!p.less(&b, &a), "B after A");
        assert!(!p.less(&a, &c), "A same as C: not strictly before");
        assert!(!p.less(&c, &a), "C same as A: not strictly before");
    }

    #[test]
    fn edf_orders_by_deadline_then_enqueue_time() {
        // Mirrors edf_test.go TestEDF_Less and TestCalculateDeadline.
        let a = item(NOW, 10_000); // deadline now+10s
        let b = item(NOW + 1000, 5000); // enqueued 1s later, 5s TTL: deadline now+6s
        let c = item(NOW - 5000, 0); // no deadline
        let d = item(NOW - 1000, 7000); // exactly B's deadline, enqueued earlier
        let e = item(NOW - 10_000, 0); // no deadline, earlier than C
        let p = Edf;
        assert!(p.less(&b, &a) && !p.less(&a, &b), "earlier deadline first");
        assert!(p.less(&a, &c) && !p.less(&c, &a), "deadline-bound before none");
        assert!(p.less(&d, &b) && !p.less(&b, &d), "tie: earlier enqueue first");
        assert!(p.less(&e, &c) && !p.less(&c, &e), "no deadlines: FCFS");
        assert_eq!(edf_deadline(&a), Some(Duration::from_millis(NOW + 10_000)));
        assert_eq!(edf_deadline(&c), None, "zero TTL: far future");
    }

    fn slo_item(received_ms: u64, headers: &[(&str, &str)]) -> QueueItem {
        let mut req = FlowRequest::new("r", "test-flow", 0, 10);
        req.received = Some(Duration::from_millis(received_ms));
        req.headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        QueueItem::new(ItemId(0), req, FlowKey::new("test-flow", 0), Duration::from_millis(NOW), Duration::ZERO)
    }

    #[test]
    fn slo_deadline_orders_by_header_deadline_then_received() {
        // Mirrors slo_deadline_test.go TestSLODeadline_Less.
        let a = slo_item(NOW, &[(TTFT_SLO_HEADER, "100")]);
        let b = slo_item(NOW, &[(TTFT_SLO_HEADER, "50")]);
        let c = slo_item(NOW + 20, &[(TTFT_SLO_HEADER, "50")]);
        let d = slo_item(NOW, &[]);
        let e = slo_item(NOW - 1000, &[(TTFT_SLO_HEADER, "1050")]);
        let f = slo_item(NOW, &[(TTFT_SLO_HEADER, &i64::MAX.to_string())]);
        let p = SloDeadline;
        assert!(p.less(&b, &a) && !p.less(&a, &b));
        assert!(p.less(&c, &a), "received later but earlier deadline");
        assert!(p.less(&a, &d) && !p.less(&d, &a), "SLO-bound before no header");
        assert!(p.less(&e, &b) && !p.less(&b, &e), "same deadline: earlier received first");
        assert!(p.less(&a, &f) && !p.less(&f, &a), "overflowing TTFT is far future");
    }

    #[test]
    fn slo_deadline_reads_the_header_or_its_alias() {
        // Mirrors slo_deadline_test.go TestCalculateSLODeadline.
        let at = |ms| Some(Duration::from_millis(NOW + ms));
        assert_eq!(slo_deadline(&slo_item(NOW, &[(TTFT_SLO_HEADER, "200")])), at(200));
        assert_eq!(slo_deadline(&slo_item(NOW, &[(OLD_TTFT_SLO_HEADER, "150")])), at(150));
        assert_eq!(
            slo_deadline(&slo_item(NOW, &[(TTFT_SLO_HEADER, "200"), (OLD_TTFT_SLO_HEADER, "50")])),
            at(200),
            "the new header wins"
        );
        assert_eq!(slo_deadline(&slo_item(NOW, &[])), None);
        assert_eq!(slo_deadline(&slo_item(NOW, &[("x-some-header", "200")])), None);
        assert_eq!(slo_deadline(&slo_item(NOW, &[(TTFT_SLO_HEADER, "x")])), None);
        assert_eq!(slo_deadline(&slo_item(NOW, &[(TTFT_SLO_HEADER, "-5")])), None);
    }
}
