//! The flow controller as a plain state machine (no runtime, no threads): requests are
//! admitted into per-flow queues within priority bands (or refused at capacity), a
//! dispatch cycle releases at most one item (the highest band with work whose ceiling is
//! above the pool's saturation, its fairness policy choosing the flow, the flow's ordering
//! the item), queue-wait budgets shed what waits too long, and with eviction on, running
//! sheddable requests are revoked for blocked higher-priority work. Every accepted item
//! ends exactly once, as one [`FlowEvent::Finalized`]. Time comes from an injected clock.
//! The router's `controller`, `controller/internal/processor.go` and `registry`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::config::{ControllerConfig, FlowControlConfig, PriorityBandConfig, RegistryConfig};
use super::policies::eviction::{PriorityThenTime, SheddableFilter};
use super::policies::saturation::PoolSample;
use super::policies::{BandState, EvictionItem, FairnessPolicy, UsageLimitPolicy};
use super::queue::{BandView, FlowQueue};
use super::reclaim::{InFlightTracker, ReclaimConfig, Reclamation};
use super::types::{FlowKey, FlowRejection, FlowRequest, ItemId, QueueItem, QueueOutcome, TokenUsage};
use crate::clock::Clock;

/// Something the caller must act on.
#[derive(Debug, Clone)]
pub enum FlowEvent {
    /// An accepted request left its queue (dispatched or shed); exactly one per request.
    Finalized(Finalized),
    /// A running request was chosen for eviction: abort it (answer
    /// [`FlowRejection::evicted`]) and then [`complete`](FlowController::complete) it.
    Revoked {
        /// The request's handle.
        id: ItemId,
        /// Its request ID.
        request_id: String,
        /// Its priority.
        priority: i32,
    },
}

/// How an accepted request left its queue.
#[derive(Clone)]
pub struct Finalized {
    /// The item (its request, flow and enqueue time).
    pub item: Arc<QueueItem>,
    /// The outcome.
    pub outcome: QueueOutcome,
    /// Time spent in flow control.
    pub waited: Duration,
    /// The fairness policy of its band, for dispatched items (it hears of completion).
    pub fairness: Option<Arc<dyn FairnessPolicy>>,
}

impl std::fmt::Debug for Finalized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finalized")
            .field("item", &self.item)
            .field("outcome", &self.outcome)
            .field("waited", &self.waited)
            .field("fairness", &self.fairness.as_ref().map(|p| p.type_name()))
            .finish()
    }
}

impl Finalized {
    /// The answer to give, `None` when dispatched; `pool_empty` as in
    /// [`FlowRejection::from_outcome`].
    pub fn rejection(&self, pool_empty: bool) -> Option<FlowRejection> {
        FlowRejection::from_outcome(self.outcome, pool_empty)
    }
}

/// A request refused at enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The outcome (a `Rejected*`).
    pub outcome: QueueOutcome,
    /// The answer to give.
    pub rejection: FlowRejection,
}

/// A band's counts and capacities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandStats {
    /// The priority.
    pub priority: i32,
    /// Items queued.
    pub len: u64,
    /// Bytes queued.
    pub bytes: u64,
    /// Request capacity.
    pub max_requests: u64,
    /// Byte capacity.
    pub max_bytes: u64,
    /// Flows registered (empty ones included until collected).
    pub flows: usize,
}

/// A flow's queue length and bytes (the router's `flow_control_queue_size` and
/// `flow_control_queue_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    /// The flow.
    pub key: FlowKey,
    /// Items queued.
    pub len: u64,
    /// Bytes queued.
    pub bytes: u64,
}

/// What the router's flow-control metrics report, as counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerStats {
    /// Items queued.
    pub total_len: u64,
    /// Bytes queued.
    pub total_bytes: u64,
    /// Global request capacity (0: none).
    pub max_requests: u64,
    /// Global byte capacity (0: none).
    pub max_bytes: u64,
    /// Per band, highest priority first.
    pub bands: Vec<BandStats>,
    /// Per flow with items queued.
    pub flows: Vec<FlowStats>,
    /// Requests by outcome and (requested) priority (`flow_control_requests_total`).
    pub outcomes: BTreeMap<(QueueOutcome, i32), u64>,
    /// Requests dispatched and not completed.
    pub in_flight: usize,
    /// The last dispatch cycle's reading of the pool.
    pub pool: Option<PoolSample>,
    /// Revocations issued, by the priority of the demand they were for.
    pub revocations_issued: BTreeMap<i32, u64>,
    /// Revocations whose request was seen to end.
    pub revocations_confirmed: u64,
    /// Revocations retired by timeout.
    pub revocations_timed_out: u64,
    /// The last reclamation decision's saturation deficit.
    pub reclaim_target: f64,
    /// Saturation credit believed on its way out.
    pub pending_reclaim: f64,
}

/// Reclamation progress since the last report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReclaimProgress {
    /// Revocations issued, by the priority of the demand they were for.
    pub issued: Vec<(i32, u64)>,
    /// Revocations confirmed.
    pub confirmed: u64,
    /// Revocations retired by timeout.
    pub timed_out: u64,
    /// Delays from revocation to the revoked request's end.
    pub confirmation_times: Vec<Duration>,
    /// The last decision's saturation deficit.
    pub target: f64,
    /// Credit not yet visible in the saturation signal.
    pub pending: f64,
}

// A band's runtime state.
struct Band {
    cfg: PriorityBandConfig,
    queues: BTreeMap<String, FlowQueue>,
    state: BandState,
    len: u64,
    bytes: u64,
    // Provisioned at run time (not configured), so collectable once unwanted and idle.
    dynamic: bool,
    idle_since: Option<Duration>,
}

impl Band {
    fn new(cfg: PriorityBandConfig, dynamic: bool, now: Duration) -> Self {
        let state = cfg.fairness.new_state();
        Band { cfg, queues: BTreeMap::new(), state, len: 0, bytes: 0, dynamic, idle_since: Some(now) }
    }
}

// Where a queued item is, and its hard deadline (a client deadline, or the backstop the
// router sets at the larger budget plus two sweep intervals).
struct Entry {
    priority: i32,
    flow: String,
    hard_deadline: Option<Duration>,
}

struct InFlight {
    item: Arc<QueueItem>,
    fairness: Arc<dyn FairnessPolicy>,
}

// Whether the pool had endpoints, and since when (budgets restart at each change).
#[derive(Debug, Clone, Copy, Default)]
struct Regime {
    empty: bool,
    since: Option<Duration>,
}

/// The flow controller (see the module docs).
pub struct FlowController {
    clock: Arc<dyn Clock>,
    cfg: ControllerConfig,
    registry: RegistryConfig,
    usage_limit: Arc<dyn UsageLimitPolicy>,
    bands: BTreeMap<i32, Band>,
    desired: BTreeSet<i32>,
    index: HashMap<ItemId, Entry>,
    total_len: u64,
    total_bytes: u64,
    next_id: u64,
    regime: Regime,
    in_flight: HashMap<ItemId, InFlight>,
    eviction: Option<(InFlightTracker, Reclamation)>,
    events: Vec<FlowEvent>,
    outcomes: BTreeMap<(QueueOutcome, i32), u64>,
    last_pool: Option<PoolSample>,
    shut_down: bool,
}

impl std::fmt::Debug for FlowController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowController")
            .field("bands", &self.bands.keys().collect::<Vec<_>>())
            .field("queued", &self.total_len)
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl FlowController {
    /// A controller for `config` reading time from `clock`.
    pub fn new(config: &FlowControlConfig, clock: Arc<dyn Clock>) -> Self {
        Self::from_parts(config.controller.clone(), config.registry.clone(), config.usage_limit.clone(), clock)
    }

    /// A controller from its parts.
    pub fn from_parts(
        cfg: ControllerConfig,
        registry: RegistryConfig,
        usage_limit: Arc<dyn UsageLimitPolicy>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let now = clock.now();
        let bands = registry.priority_bands.iter().map(|(p, b)| (*p, Band::new(b.clone(), false, now))).collect();
        // The router wires these two whenever eviction is on; they are not configurable.
        let eviction = cfg.enable_eviction.then(|| {
            (
                InFlightTracker::new(Arc::new(SheddableFilter), Arc::new(PriorityThenTime)),
                Reclamation::new(ReclaimConfig {
                    max_per_decision: cfg.max_revocations_per_decision.max(1),
                    grace: cfg.eviction_confirmation_grace,
                    timeout: cfg.eviction_confirmation_timeout,
                }),
            )
        });
        FlowController {
            clock,
            cfg,
            registry,
            usage_limit,
            bands,
            desired: BTreeSet::new(),
            index: HashMap::new(),
            total_len: 0,
            total_bytes: 0,
            next_id: 0,
            regime: Regime::default(),
            in_flight: HashMap::new(),
            eviction,
            events: Vec::new(),
            outcomes: BTreeMap::new(),
            last_pool: None,
            shut_down: false,
        }
    }

    /// The controller's settings.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// The clock it reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `id` is queued.
    pub fn is_queued(&self, id: ItemId) -> bool {
        self.index.contains_key(&id)
    }

    /// Requests dispatched and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether the last dispatch cycle saw no endpoints.
    pub fn pool_empty(&self) -> bool {
        self.regime.empty
    }

    /// The band priorities, highest first.
    pub fn priorities(&self) -> Vec<i32> {
        self.bands.keys().rev().copied().collect()
    }

    /// Whether a reclamation decision is waiting on confirmations or grace (the caller
    /// keeps cycling while it is, so the pause ends on time).
    pub fn reclaim_pending(&self) -> bool {
        self.eviction.as_ref().is_some_and(|(_, r)| r.pending() > 0.0)
    }

    /// Takes the events since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<FlowEvent> {
        std::mem::take(&mut self.events)
    }

    /// Provisions a band for each priority in `priorities` (the InferenceObjective
    /// priorities in use) from the default band templates, and drops provisioned bands
    /// no longer wanted once they hold nothing. Configured bands always stay. A request
    /// whose priority has no band is queued in band 0, as the router does.
    pub fn set_desired_priorities(&mut self, priorities: impl IntoIterator<Item = i32>) {
        self.desired = priorities.into_iter().collect();
        let now = self.clock.now();
        for p in self.desired.clone() {
            if !self.bands.contains_key(&p) {
                self.bands.insert(p, Band::new(self.registry.template_for(p), true, now));
            }
        }
        self.bands.retain(|p, b| !b.dynamic || self.desired.contains(p) || b.len > 0);
    }

    /// Admits `req` into its flow's queue, or refuses it: at a capacity limit
    /// (`RejectedCapacity`, or `RejectedNoEndpoints` while the pool is empty), with an
    /// empty flow ID, or after shutdown (`RejectedOther`).
    pub fn enqueue(&mut self, req: FlowRequest) -> Result<ItemId, Rejected> {
        let requested = req.priority;
        let reject = |s: &mut Self, outcome: QueueOutcome, rejection: FlowRejection| {
            *s.outcomes.entry((outcome, requested)).or_default() += 1;
            Err(Rejected { outcome, rejection })
        };
        if self.shut_down {
            let r = FlowRejection::from_outcome(QueueOutcome::RejectedOther, self.regime.empty);
            return reject(self, QueueOutcome::RejectedOther, r.unwrap_or_else(FlowRejection::evicted));
        }
        if req.fairness_id.is_empty() {
            let r = FlowRejection::internal(
                QueueOutcome::RejectedOther,
                "request rejected pre-queue: flow ID cannot be empty",
            );
            return reject(self, QueueOutcome::RejectedOther, r);
        }
        // An unprovisioned priority falls back to band 0.
        let priority = if self.bands.contains_key(&req.priority) { req.priority } else { 0 };
        let now = self.clock.now();
        if !self.has_capacity(priority, req.byte_size) {
            let outcome =
                if self.regime.empty { QueueOutcome::RejectedNoEndpoints } else { QueueOutcome::RejectedCapacity };
            let r = FlowRejection::from_outcome(outcome, self.regime.empty);
            return reject(self, outcome, r.unwrap_or_else(FlowRejection::evicted));
        }
        let Some(band) = self.bands.get_mut(&priority) else {
            let r = FlowRejection::internal(
                QueueOutcome::RejectedOther,
                "request rejected pre-queue: priority band not found",
            );
            return reject(self, QueueOutcome::RejectedOther, r);
        };

        // The budget: the request's hint or the default; a client deadline shortens it.
        let budget = req.ttl_hint.filter(|t| !t.is_zero()).unwrap_or(self.cfg.default_request_ttl);
        let mut ttl = budget;
        if let Some(d) = req.deadline {
            let left = d.saturating_sub(now);
            if !left.is_zero() && (ttl.is_zero() || left < ttl) {
                ttl = left;
            }
        }
        let backstop = (!budget.is_zero() && !self.cfg.no_endpoint_request_ttl.is_zero())
            .then(|| now + budget.max(self.cfg.no_endpoint_request_ttl) + 2 * self.cfg.expiry_cleanup_interval);
        let hard_deadline = match (backstop, req.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        let id = ItemId(self.next_id);
        self.next_id += 1;
        let flow_id = req.fairness_id.clone();
        let key = FlowKey::new(flow_id.clone(), priority);
        let bytes = req.byte_size;
        let item = Arc::new(QueueItem::new(id, req, key.clone(), now, ttl));
        let ordering = band.cfg.ordering.clone();
        band.queues.entry(flow_id.clone()).or_insert_with(|| FlowQueue::new(key, ordering)).push(item);
        band.len += 1;
        band.bytes += bytes;
        band.idle_since = None;
        self.total_len += 1;
        self.total_bytes += bytes;
        self.index.insert(id, Entry { priority, flow: flow_id, hard_deadline });
        Ok(id)
    }

    // The router's `hasCapacity`: global limits, then the band's (0: unlimited).
    fn has_capacity(&self, priority: i32, bytes: u64) -> bool {
        let r = &self.registry;
        if r.max_bytes > 0 && self.total_bytes + bytes > r.max_bytes {
            return false;
        }
        if r.max_requests > 0 && self.total_len + 1 > r.max_requests {
            return false;
        }
        let Some(b) = self.bands.get(&priority) else { return false };
        if b.cfg.max_bytes > 0 && b.bytes + bytes > b.cfg.max_bytes {
            return false;
        }
        if b.cfg.max_requests > 0 && b.len + 1 > b.cfg.max_requests {
            return false;
        }
        true
    }

    // Takes a queued item out, booking the counts.
    fn take(&mut self, id: ItemId, now: Duration) -> Option<(Arc<QueueItem>, Arc<dyn FairnessPolicy>)> {
        let e = self.index.remove(&id)?;
        let band = self.bands.get_mut(&e.priority)?;
        let item = band.queues.get_mut(&e.flow)?.remove(id, now)?;
        band.len -= 1;
        band.bytes = band.bytes.saturating_sub(item.byte_size());
        if band.len == 0 {
            band.idle_since = Some(now);
        }
        self.total_len -= 1;
        self.total_bytes = self.total_bytes.saturating_sub(item.byte_size());
        Some((item, band.cfg.fairness.clone()))
    }

    fn finalize(
        &mut self,
        item: Arc<QueueItem>,
        outcome: QueueOutcome,
        now: Duration,
        fairness: Option<Arc<dyn FairnessPolicy>>,
    ) {
        *self.outcomes.entry((outcome, item.request().priority)).or_default() += 1;
        let waited = now.saturating_sub(item.enqueue_time());
        self.events.push(FlowEvent::Finalized(Finalized { item, outcome, waited, fairness }));
    }

    /// One dispatch cycle against `pool`: dispatches at most one item and returns its ID.
    /// Bands are visited highest first; the first whose ceiling (from the usage-limit
    /// policy) is at or below the saturation stops the cycle (lower bands wait too), and
    /// with eviction on may trigger a reclamation decision.
    pub fn dispatch_cycle(&mut self, pool: PoolSample) -> Option<ItemId> {
        let now = self.clock.now();
        if pool.empty != self.regime.empty {
            self.regime = Regime { empty: pool.empty, since: Some(now) };
        }
        self.last_pool = Some(pool);
        let saturation = pool.saturation;
        let priorities = self.priorities();
        let mut ceilings = vec![1.0; priorities.len()];
        self.usage_limit.compute_limit(saturation, &priorities, &mut ceilings);
        for (i, p) in priorities.iter().enumerate() {
            if saturation >= ceilings[i] {
                if self.eviction.is_some() {
                    self.maybe_reclaim(now, saturation, &priorities, &ceilings, i);
                }
                return None;
            }
            let Some(band) = self.bands.get_mut(p) else { continue };
            let view = BandView::new(*p, &band.queues, now);
            // A policy error skips the band for this cycle (the router logs it).
            let Ok(Some(flow)) = band.cfg.fairness.pick(&view, &mut band.state) else { continue };
            let Some(head) = band.queues.get(&flow).and_then(|q| q.peek()).map(|h| h.id()) else { continue };
            let Some((item, fairness)) = self.take(head, now) else { continue };
            fairness.on_dispatched(&item, now);
            if let Some((tracker, _)) = &mut self.eviction {
                let r = item.request();
                tracker.track(
                    head,
                    EvictionItem { request_id: r.request_id.clone(), priority: r.priority, dispatch_time: now },
                );
            }
            self.in_flight.insert(head, InFlight { item: item.clone(), fairness: fairness.clone() });
            self.finalize(item, QueueOutcome::Dispatched, now, Some(fairness));
            return Some(head);
        }
        None
    }

    // The router's `maybeReclaim`: band `blocked` is held back; revoke running victims
    // strictly below the first held-back band at or after it that has queued work, can
    // ever dispatch (ceiling > 0) and is blocked by saturation.
    fn maybe_reclaim(&mut self, now: Duration, saturation: f64, priorities: &[i32], ceilings: &[f64], blocked: usize) {
        let Some((tracker, reclaim)) = &mut self.eviction else { return };
        if !reclaim.gate_open(now) {
            return;
        }
        let Some(victim) = tracker.victim_priority() else { return };
        for j in blocked..priorities.len() {
            if priorities[j] <= victim {
                return;
            }
            if ceilings[j] <= 0.0 || saturation < ceilings[j] {
                continue;
            }
            if self.bands.get(&priorities[j]).is_none_or(|b| b.len == 0) {
                continue;
            }
            for (id, x) in reclaim.reclaim(now, tracker, saturation, ceilings[j], priorities[j]) {
                self.events.push(FlowEvent::Revoked { id, request_id: x.request_id, priority: x.priority });
            }
            return;
        }
    }

    /// A dispatched request finished (or was aborted): its fairness policy hears of it
    /// (with `usage` when the response reported it), and a revocation of it is
    /// confirmed. Returns whether `id` was in flight.
    pub fn complete(&mut self, id: ItemId, usage: Option<TokenUsage>) -> bool {
        let Some(f) = self.in_flight.remove(&id) else { return false };
        let now = self.clock.now();
        f.fairness.on_completed(&f.item.request().fairness_id, usage, now);
        if let Some((tracker, reclaim)) = &mut self.eviction {
            tracker.untrack(id);
            reclaim.confirm(id, now);
        }
        true
    }

    /// The client of queued request `id` went away: it leaves as
    /// `EvictedContextCancelled`. Returns whether it was queued.
    pub fn cancel(&mut self, id: ItemId) -> bool {
        let now = self.clock.now();
        let Some((item, _)) = self.take(id, now) else { return false };
        self.finalize(item, QueueOutcome::EvictedContextCancelled, now, None);
        true
    }

    /// Sheds queued items whose budget ran out (the router's periodic sweep): the budget
    /// of the regime in force (pool with endpoints: the item's TTL, `EvictedTTL`; without:
    /// `noEndpointRequestTTL`, `EvictedNoEndpoints`), charged from the later of its enqueue
    /// and the last regime change; and items past their hard deadline (`EvictedTTL`).
    /// Also collects idle flows and unwanted idle bands.
    pub fn sweep(&mut self) {
        let now = self.clock.now();
        let regime = self.regime;
        let no_ep = self.cfg.no_endpoint_request_ttl;
        let mut expired: Vec<(ItemId, QueueOutcome)> = Vec::new();
        for band in self.bands.values() {
            for q in band.queues.values() {
                for item in q.items() {
                    let hard = self.index.get(&item.id()).and_then(|e| e.hard_deadline);
                    if hard.is_some_and(|d| now >= d) {
                        expired.push((item.id(), QueueOutcome::EvictedTtl));
                    } else if let Some(outcome) = expiry(item, now, regime, no_ep) {
                        expired.push((item.id(), outcome));
                    }
                }
            }
        }
        for (id, outcome) in expired {
            if let Some((item, _)) = self.take(id, now) {
                self.finalize(item, outcome, now, None);
            }
        }
        let flow_gc = self.registry.flow_gc_timeout;
        let band_gc = self.registry.band_gc_timeout;
        for band in self.bands.values_mut() {
            band.queues.retain(|_, q| !q.is_empty() || q.idle_since().is_none_or(|t| now.saturating_sub(t) < flow_gc));
        }
        let desired = &self.desired;
        self.bands.retain(|p, b| {
            !(b.dynamic
                && !desired.contains(p)
                && b.len == 0
                && b.queues.is_empty()
                && b.idle_since.is_some_and(|t| now.saturating_sub(t) >= band_gc))
        });
    }

    /// Evicts everything queued (`EvictedOther`) and refuses what comes after
    /// (`RejectedOther`): the controller is shutting down.
    pub fn shutdown(&mut self) {
        self.shut_down = true;
        let now = self.clock.now();
        let ids: Vec<ItemId> = self.index.keys().copied().collect();
        let mut items: Vec<Arc<QueueItem>> = ids.into_iter().filter_map(|id| self.take(id, now).map(|x| x.0)).collect();
        items.sort_by_key(|x| x.id());
        for item in items {
            self.finalize(item, QueueOutcome::EvictedOther, now, None);
        }
    }

    /// Each band's counts and capacities, highest priority first.
    pub fn band_stats(&self) -> Vec<BandStats> {
        self.bands
            .values()
            .rev()
            .map(|b| BandStats {
                priority: b.cfg.priority,
                len: b.len,
                bytes: b.bytes,
                max_requests: b.cfg.max_requests,
                max_bytes: b.cfg.max_bytes,
                flows: b.queues.len(),
            })
            .collect()
    }

    /// (items, bytes) queued.
    pub fn totals(&self) -> (u64, u64) {
        (self.total_len, self.total_bytes)
    }

    /// The global (request, byte) capacities; 0: none.
    pub fn limits(&self) -> (u64, u64) {
        (self.registry.max_requests, self.registry.max_bytes)
    }

    /// The counts the router's metrics report.
    pub fn stats(&self) -> ControllerStats {
        let bands = self.band_stats();
        let flows = self
            .bands
            .values()
            .rev()
            .flat_map(|b| b.queues.values())
            .filter(|q| !q.is_empty())
            .map(|q| FlowStats { key: q.flow_key().clone(), len: q.len() as u64, bytes: q.byte_size() })
            .collect();
        let (issued, confirmed, timed_out, target, pending) = match &self.eviction {
            Some((_, r)) => (r.issued.clone(), r.confirmed, r.timed_out, r.last_target, r.pending()),
            None => (BTreeMap::new(), 0, 0, 0.0, 0.0),
        };
        ControllerStats {
            total_len: self.total_len,
            total_bytes: self.total_bytes,
            max_requests: self.registry.max_requests,
            max_bytes: self.registry.max_bytes,
            bands,
            flows,
            outcomes: self.outcomes.clone(),
            in_flight: self.in_flight.len(),
            pool: self.last_pool,
            revocations_issued: issued,
            revocations_confirmed: confirmed,
            revocations_timed_out: timed_out,
            reclaim_target: target,
            pending_reclaim: pending,
        }
    }

    /// Reclamation progress since the last call (for the metrics), `None` with eviction
    /// off or nothing new.
    pub fn take_reclaim_progress(&mut self) -> Option<ReclaimProgress> {
        let (_, r) = self.eviction.as_mut()?;
        let issued: Vec<(i32, u64)> = r
            .issued
            .iter()
            .map(|(p, n)| (*p, n - r.reported_issued.get(p).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let progress = ReclaimProgress {
            issued,
            confirmed: r.confirmed - r.reported_confirmed,
            timed_out: r.timed_out - r.reported_timed_out,
            confirmation_times: std::mem::take(&mut r.confirmation_times),
            target: r.last_target,
            pending: r.pending(),
        };
        r.reported_issued = r.issued.clone();
        r.reported_confirmed = r.confirmed;
        r.reported_timed_out = r.timed_out;
        let quiet = progress.issued.is_empty()
            && progress.confirmed == 0
            && progress.timed_out == 0
            && progress.confirmation_times.is_empty()
            && progress.pending == 0.0;
        (!quiet).then_some(progress)
    }
}

// The router's `isExpired`: the outcome if `item`'s budget in the regime in force ran out.
fn expiry(item: &QueueItem, now: Duration, regime: Regime, no_endpoint_ttl: Duration) -> Option<QueueOutcome> {
    let (budget, outcome) = if regime.empty {
        (no_endpoint_ttl, QueueOutcome::EvictedNoEndpoints)
    } else {
        (item.effective_ttl(), QueueOutcome::EvictedTtl)
    };
    if budget.is_zero() {
        return None;
    }
    let from = match regime.since {
        Some(s) if s > item.enqueue_time() => s,
        _ => item.enqueue_time(),
    };
    (now >= from + budget).then_some(outcome)
}

#[cfg(test)]
mod tests;
