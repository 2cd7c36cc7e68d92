//! One flow's queue, kept in its band's ordering-policy order, and the read-only view of
//! a priority band that fairness policies pick from (the router's `FlowQueueAccessor` and
//! `PriorityBandAccessor`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::policies::OrderingPolicy;
use super::types::{FlowKey, ItemId, QueueItem};

/// A flow's queue: items in dispatch order per its ordering policy (head first).
///
/// Kept as a sorted vector: an item goes after every item it does not precede, so items
/// the policy ranks equal leave in arrival order (the router's heap leaves them in no
/// particular order).
#[derive(Clone)]
pub struct FlowQueue {
    key: FlowKey,
    ordering: Arc<dyn OrderingPolicy>,
    items: Vec<Arc<QueueItem>>,
    bytes: u64,
    // When the queue last became empty (flows idle this long are collected).
    idle_since: Option<Duration>,
}

impl std::fmt::Debug for FlowQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowQueue")
            .field("key", &self.key)
            .field("ordering", &self.ordering.type_name())
            .field("len", &self.items.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl FlowQueue {
    /// An empty queue for `key` ordered by `ordering`.
    pub fn new(key: FlowKey, ordering: Arc<dyn OrderingPolicy>) -> Self {
        FlowQueue { key, ordering, items: Vec::new(), bytes: 0, idle_since: None }
    }

    /// The flow.
    pub fn flow_key(&self) -> &FlowKey {
        &self.key
    }

    /// The policy that orders it.
    pub fn ordering(&self) -> &Arc<dyn OrderingPolicy> {
        &self.ordering
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes queued.
    pub fn byte_size(&self) -> u64 {
        self.bytes
    }

    /// The item that leaves next.
    pub fn peek(&self) -> Option<&Arc<QueueItem>> {
        self.items.first()
    }

    /// The items, head first.
    pub fn items(&self) -> impl Iterator<Item = &Arc<QueueItem>> {
        self.items.iter()
    }

    /// Queues `item` in order.
    pub fn push(&mut self, item: Arc<QueueItem>) {
        let at = self.items.partition_point(|x| !self.ordering.less(&item, x));
        self.bytes += item.byte_size();
        self.items.insert(at, item);
        self.idle_since = None;
    }

    /// Removes the item `id`, if queued; `now` stamps the queue idle when it empties.
    pub(crate) fn remove(&mut self, id: ItemId, now: Duration) -> Option<Arc<QueueItem>> {
        let at = self.items.iter().position(|x| x.id == id)?;
        let item = self.items.remove(at);
        self.bytes = self.bytes.saturating_sub(item.byte_size());
        if self.items.is_empty() {
            self.idle_since = Some(now);
        }
        Some(item)
    }

    /// Since when the queue has been empty (`None` while it holds items, or if it never
    /// held any since it was made).
    pub(crate) fn idle_since(&self) -> Option<Duration> {
        self.idle_since
    }
}

/// A priority band as a fairness policy sees it: its flows and their queues.
#[derive(Debug, Clone, Copy)]
pub struct BandView<'a> {
    priority: i32,
    queues: &'a BTreeMap<String, FlowQueue>,
    now: Duration,
}

impl<'a> BandView<'a> {
    /// A view of the flows `queues` (by flow ID) of band `priority` at time `now`.
    pub fn new(priority: i32, queues: &'a BTreeMap<String, FlowQueue>, now: Duration) -> Self {
        BandView { priority, queues, now }
    }

    /// The band's priority.
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The current time on the controller's clock.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Every flow registered in the band, empty ones included (they stay until idle long
    /// enough to be collected), in ID order.
    pub fn flow_keys(&self) -> Vec<FlowKey> {
        self.queues.values().map(|q| q.key.clone()).collect()
    }

    /// A flow's queue by ID.
    pub fn queue(&self, id: &str) -> Option<&'a FlowQueue> {
        self.queues.get(id)
    }

    /// The active flows (those holding items), in ID order (the router's `IterateQueues`).
    pub fn active_queues(&self) -> impl Iterator<Item = &'a FlowQueue> + 'a {
        self.queues.values().filter(|q| !q.is_empty())
    }
}
