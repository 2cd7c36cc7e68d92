//! Flow control for a gateway: [`FlowGate`] owns a [`FlowController`] behind a lock and
//! a driver task, and [`FlowGate::admit`] waits in the queue until the request is
//! dispatched (a [`FlowPermit`]) or refused (a [`FlowRejection`] with the router's HTTP
//! status and reason). A dispatch cycle runs on each arrival, each permit release and
//! each tick while anything waits (the router: each arrival and every millisecond);
//! budgets are swept every `expiry_cleanup_interval`. The pool is read through a probe
//! the caller supplies, so the gate knows nothing of datastores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot, watch};

use super::config::FlowControlConfig;
use super::controller::{FlowController, FlowEvent};
use super::metrics::FlowMetrics;
use super::policies::saturation::PoolSample;
use super::types::{FlowRejection, FlowRequest, ItemId, QueueItem, QueueOutcome, TokenUsage};
use crate::clock::Clock;

/// Reads the pool for a dispatch cycle: typically [`sample_pool`](super::sample_pool)
/// with the configured detector over the datastore's serving endpoints.
pub type PoolProbe = Arc<dyn Fn() -> PoolSample + Send + Sync>;

/// A clock on tokio's time, so a paused test runtime drives the controller too.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock { origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn unix_time(&self) -> f64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }
}

/// How a gate runs.
#[derive(Clone)]
pub struct GateOptions {
    /// Dispatch cycles run this often while anything waits (1ms, the router's ticker).
    pub tick: Duration,
    /// The `inference_pool` metric label.
    pub pool_name: String,
    /// The controller's clock ([`TokioClock`] by default).
    pub clock: Option<Arc<dyn Clock>>,
    /// Where to record the router's metrics, if anywhere.
    pub metrics: Option<FlowMetrics>,
    /// Priorities to provision bands for (the InferenceObjective priorities); others use
    /// band 0.
    pub priorities: Vec<i32>,
}

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            tick: Duration::from_millis(1),
            pool_name: String::new(),
            clock: None,
            metrics: None,
            priorities: Vec::new(),
        }
    }
}

impl std::fmt::Debug for GateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateOptions").field("tick", &self.tick).field("pool_name", &self.pool_name).finish()
    }
}

struct Dispatch {
    item: Arc<QueueItem>,
    waited: Duration,
    evicted: watch::Receiver<bool>,
}

type Reply = Result<Dispatch, FlowRejection>;

struct State {
    ctl: FlowController,
    waiters: HashMap<ItemId, oneshot::Sender<Reply>>,
    evictions: HashMap<ItemId, watch::Sender<bool>>,
    last_sweep: Duration,
}

struct Inner {
    state: Mutex<State>,
    probe: PoolProbe,
    wake: Notify,
    tick: Duration,
    cleanup: Duration,
    metrics: Option<FlowMetrics>,
    pool: String,
    detector: String,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // The router sweeps expired requests every `expiry_cleanup_interval`.
    fn sweep_if_due(&self, st: &mut State) {
        let now = st.ctl.clock().now();
        if now.saturating_sub(st.last_sweep) >= self.cleanup {
            st.last_sweep = now;
            st.ctl.sweep();
            self.deliver(st);
        }
    }

    // One dispatch cycle, then hand out what it decided.
    fn cycle(&self, st: &mut State) {
        let sample = (self.probe)();
        let started = Instant::now();
        st.ctl.dispatch_cycle(sample);
        if let Some(m) = &self.metrics {
            m.cycle(&sample, started.elapsed(), &self.pool, &self.detector);
            m.capacity(&st.ctl.band_stats(), st.ctl.totals(), st.ctl.limits(), &self.pool);
        }
        self.deliver(st);
    }

    fn deliver(&self, st: &mut State) {
        for event in st.ctl.drain_events() {
            match event {
                FlowEvent::Finalized(f) => {
                    if let Some(m) = &self.metrics {
                        m.finalized(&f, &self.pool);
                    }
                    let id = f.item.id();
                    let waiter = st.waiters.remove(&id);
                    if f.outcome == QueueOutcome::Dispatched {
                        let (tx, rx) = watch::channel(false);
                        let reply = Dispatch { item: f.item.clone(), waited: f.waited, evicted: rx };
                        match waiter.map(|w| w.send(Ok(reply))) {
                            Some(Ok(())) => {
                                st.evictions.insert(id, tx);
                            }
                            // Nobody waits any more: the request ends here.
                            _ => {
                                st.ctl.complete(id, None);
                            }
                        }
                    } else if let (Some(w), Some(r)) = (waiter, f.rejection(st.ctl.pool_empty())) {
                        let _ = w.send(Err(r));
                    }
                }
                FlowEvent::Revoked { id, .. } => {
                    if let Some(tx) = st.evictions.get(&id) {
                        tx.send_replace(true);
                    }
                }
            }
        }
        if let (Some(m), Some(p)) = (&self.metrics, st.ctl.take_reclaim_progress()) {
            m.reclamation(&self.pool, &p);
        }
    }
}

// Stops the driver when the last gate handle goes.
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Flow control for a gateway (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct FlowGate {
    inner: Arc<Inner>,
    _driver: Arc<Driver>,
}

impl std::fmt::Debug for FlowGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowGate").field("pool", &self.inner.pool).finish()
    }
}

impl FlowGate {
    /// Starts a gate for `config` reading the pool through `probe`. Must be called
    /// within a tokio runtime (it spawns the driver task).
    pub fn start(config: &FlowControlConfig, probe: PoolProbe, options: GateOptions) -> Self {
        let clock: Arc<dyn Clock> = options.clock.unwrap_or_else(|| Arc::new(TokioClock::default()));
        let mut ctl = FlowController::new(config, clock.clone());
        if !options.priorities.is_empty() {
            ctl.set_desired_priorities(options.priorities);
        }
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ctl,
                waiters: HashMap::new(),
                evictions: HashMap::new(),
                last_sweep: clock.now(),
            }),
            probe,
            wake: Notify::new(),
            tick: options.tick.max(Duration::from_micros(100)),
            cleanup: config.controller.expiry_cleanup_interval,
            metrics: options.metrics,
            pool: options.pool_name,
            detector: config.detector_name.clone(),
        });
        let driver = tokio::spawn(drive(inner.clone()));
        FlowGate { inner, _driver: Arc::new(Driver(driver)) }
    }

    /// Queues `req` and waits until it is dispatched or refused. Dropping the future
    /// (the client went away) takes the request out of the queue.
    pub async fn admit(&self, req: FlowRequest) -> Result<FlowPermit, FlowRejection> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut st = self.inner.lock();
            let started = Instant::now();
            let metrics_req = self.inner.metrics.as_ref().map(|_| req.clone());
            let id = match st.ctl.enqueue(req) {
                Ok(id) => id,
                Err(r) => {
                    if let (Some(m), Some(q)) = (&self.inner.metrics, &metrics_req) {
                        m.rejected(q, r.outcome, &self.inner.pool, started.elapsed());
                    }
                    return Err(r.rejection);
                }
            };
            if let (Some(m), Some(q)) = (&self.inner.metrics, &metrics_req) {
                m.enqueued(q, &self.inner.pool, started.elapsed());
            }
            st.waiters.insert(id, tx);
            // The router runs a cycle right after each arrival.
            self.inner.cycle(&mut st);
            id
        };
        self.inner.wake.notify_one();
        let mut waiting = Waiting { inner: Some(self.inner.clone()), id, rx };
        let reply = (&mut waiting.rx).await;
        let inner = waiting.inner.take();
        match (reply, inner) {
            (Ok(Ok(d)), Some(inner)) => {
                Ok(FlowPermit { inner, id, item: d.item, waited: d.waited, evicted: d.evicted, usage: None })
            }
            (Ok(Err(r)), _) => Err(r),
            _ => {
                Err(FlowRejection::from_outcome(QueueOutcome::EvictedOther, false)
                    .unwrap_or_else(FlowRejection::evicted))
            }
        }
    }

    /// Provisions bands for `priorities` (see
    /// [`FlowController::set_desired_priorities`]).
    pub fn set_desired_priorities(&self, priorities: impl IntoIterator<Item = i32>) {
        self.inner.lock().ctl.set_desired_priorities(priorities);
    }

    /// Requests waiting.
    pub fn queued(&self) -> usize {
        self.inner.lock().ctl.len()
    }

    /// Requests dispatched whose permit is still held.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().ctl.in_flight()
    }

    /// The controller's counts.
    pub fn stats(&self) -> super::controller::ControllerStats {
        self.inner.lock().ctl.stats()
    }

    /// Re-reads the pool and runs a dispatch cycle now (after something the probe reads
    /// changed, say), sweeping expired requests first when a sweep is due.
    pub fn poke(&self) {
        let mut st = self.inner.lock();
        self.inner.sweep_if_due(&mut st);
        self.inner.cycle(&mut st);
    }

    /// Refuses everything waiting and everything after (`rejected-shutting-down`).
    pub fn shutdown(&self) {
        let mut st = self.inner.lock();
        st.ctl.shutdown();
        self.inner.deliver(&mut st);
    }
}

async fn drive(inner: Arc<Inner>) {
    loop {
        let busy = {
            let st = inner.lock();
            !st.ctl.is_empty() || st.ctl.reclaim_pending()
        };
        if busy {
            tokio::select! {
                _ = tokio::time::sleep(inner.tick) => {}
                _ = inner.wake.notified() => {}
            }
        } else {
            inner.wake.notified().await;
        }
        let mut st = inner.lock();
        inner.sweep_if_due(&mut st);
        inner.cycle(&mut st);
    }
}

// A request waiting in `admit`; dropped before its reply, it leaves the queue.
struct Waiting {
    inner: Option<Arc<Inner>>,
    id: ItemId,
    rx: oneshot::Receiver<Reply>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        let mut st = inner.lock();
        st.waiters.remove(&self.id);
        if st.ctl.cancel(self.id) {
            inner.deliver(&mut st);
            return;
        }
        // Dispatched while the client was leaving: the request ends here.
        if let Ok(Ok(_)) = self.rx.try_recv() {
            st.evictions.remove(&self.id);
            st.ctl.complete(self.id, None);
            inner.cycle(&mut st);
        }
    }
}

/// A dispatched request's place: hold it while the request runs, drop it when the
/// request ends (after the datastore has counted the end, so the next dispatch cycle sees
/// the freed capacity).
pub struct FlowPermit {
    inner: Arc<Inner>,
    id: ItemId,
    item: Arc<QueueItem>,
    waited: Duration,
    evicted: watch::Receiver<bool>,
    usage: Option<TokenUsage>,
}

impl std::fmt::Debug for FlowPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowPermit").field("id", &self.id).field("waited", &self.waited).finish()
    }
}

impl FlowPermit {
    /// The controller's handle.
    pub fn id(&self) -> ItemId {
        self.id
    }

    /// The queued item (request, flow, enqueue time).
    pub fn item(&self) -> &QueueItem {
        &self.item
    }

    /// Time spent waiting in flow control.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Records the response's token usage (program-aware fairness charges it).
    pub fn set_usage(&mut self, usage: TokenUsage) {
        self.usage = Some(usage);
    }

    /// Whether flow control has revoked this request to free capacity.
    pub fn is_evicted(&self) -> bool {
        *self.evicted.borrow()
    }

    /// Resolves when flow control revokes this request (never, unless eviction is on):
    /// the caller aborts it and answers [`FlowRejection::evicted`].
    pub async fn evicted(&self) {
        let mut rx = self.evicted.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for FlowPermit {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.evictions.remove(&self.id);
        st.ctl.complete(self.id, self.usage.take());
        // Capacity was freed: look again now.
        self.inner.cycle(&mut st);
        drop(st);
        self.inner.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::clock::ManualClock;
    use crate::flowcontrol::config::{PriorityBandConfig, RegistryConfig};

    // A pool whose saturation the test sets.
    fn probe(sat: &Arc<AtomicU64>) -> PoolProbe {
        let sat = sat.clone();
        Arc::new(move || PoolSample::new(f64::from_bits(sat.load(Ordering::SeqCst)), 1))
    }

    fn level(v: f64) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(v.to_bits()))
    }

    fn set(sat: &AtomicU64, v: f64) {
        sat.store(v.to_bits(), Ordering::SeqCst);
    }

    fn start(cfg: &FlowControlConfig, sat: &Arc<AtomicU64>) -> (FlowGate, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        let opts = GateOptions { clock: Some(clock.clone()), ..Default::default() };
        (FlowGate::start(cfg, probe(sat), opts), clock)
    }

    async fn until(mut f: impl FnMut() -> bool) {
        while !f() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn admits_at_once_when_idle_and_queues_while_saturated() {
        let sat = level(0.0);
        let (gate, clock) = start(&FlowControlConfig::default(), &sat);
        let a = gate.admit(FlowRequest::new("a", "f", 0, 1)).await.unwrap();
        assert_eq!(a.waited(), Duration::ZERO);
        set(&sat, 1.0);
        let g = gate.clone();
        let b = tokio::spawn(async move { g.admit(FlowRequest::new("b", "f", 0, 1)).await });
        until(|| gate.queued() == 1).await;
        clock.advance(Duration::from_millis(50));
        set(&sat, 0.5);
        gate.poke();
        let b = b.await.unwrap().unwrap();
        assert_eq!(b.waited(), Duration::from_millis(50));
        assert_eq!(gate.in_flight(), 2);
        drop((a, b));
        assert_eq!(gate.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_released_permit_lets_the_next_request_through() {
        let sat = level(0.0);
        let (gate, _) = start(&FlowControlConfig::default(), &sat);
        let a = gate.admit(FlowRequest::new("a", "f", 0, 1)).await.unwrap();
        set(&sat, 1.0);
        let g = gate.clone();
        let b = tokio::spawn(async move { g.admit(FlowRequest::new("b", "f", 0, 1)).await });
        until(|| gate.queued() == 1).await;
        // The request ends and the pool reads free: the release itself dispatches.
        set(&sat, 0.0);
        drop(a);
        assert_eq!(gate.queued(), 0);
        assert!(b.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn rejections_carry_the_routers_status() {
        let mut cfg = FlowControlConfig {
            registry: RegistryConfig::new(BTreeMap::new(), PriorityBandConfig::new(0).with_capacity(0, 1), None),
            ..Default::default()
        };
        cfg.controller.default_request_ttl = Duration::from_secs(2);
        let sat = level(5.0);
        let (gate, clock) = start(&cfg, &sat);
        let g = gate.clone();
        let first = tokio::spawn(async move { g.admit(FlowRequest::new("a", "f", 0, 1)).await });
        until(|| gate.queued() == 1).await;
        let r = gate.admit(FlowRequest::new("b", "f", 0, 1)).await.unwrap_err();
        assert_eq!((r.status(), r.reason), (429, Some("rejected-saturated")));
        clock.advance(Duration::from_secs(2));
        gate.poke();
        let r = first.await.unwrap().unwrap_err();
        assert_eq!((r.status(), r.reason), (429, Some("rejected-ttl-expired")));
        assert_eq!(
            r.body(),
            "inference error: ResourceExhausted - request timed out in queue: request evicted from queue: request TTL expired"
        );
    }

    #[tokio::test]
    async fn a_client_that_leaves_takes_its_request_out() {
        let sat = level(2.0);
        let (gate, _) = start(&FlowControlConfig::default(), &sat);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.admit(FlowRequest::new("a", "f", 0, 1)).await });
        until(|| gate.queued() == 1).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(gate.queued(), 0);
        assert_eq!(gate.stats().outcomes.get(&(QueueOutcome::EvictedContextCancelled, 0)), Some(&1));
    }

    #[tokio::test]
    async fn shutdown_refuses_waiters() {
        let sat = level(2.0);
        let (gate, _) = start(&FlowControlConfig::default(), &sat);
        let g = gate.clone();
        let waiting = tokio::spawn(async move { g.admit(FlowRequest::new("a", "f", 0, 1)).await });
        until(|| gate.queued() == 1).await;
        gate.shutdown();
        let r = waiting.await.unwrap().unwrap_err();
        assert_eq!((r.status(), r.reason), (503, Some("rejected-shutting-down")));
    }

    #[tokio::test]
    async fn eviction_revokes_a_running_sheddable_request() {
        let mut cfg = FlowControlConfig::default();
        let bands = [10, 0, -1].into_iter().map(|p| (p, PriorityBandConfig::new(p))).collect();
        cfg.registry = RegistryConfig::new(bands, PriorityBandConfig::new(0), None);
        cfg.controller.enable_eviction = true;
        let sat = level(0.0);
        let (gate, _) = start(&cfg, &sat);
        let low = gate.admit(FlowRequest::new("batch", "bg", -1, 1)).await.unwrap();
        assert!(!low.is_evicted());
        set(&sat, 1.2);
        let g = gate.clone();
        let high = tokio::spawn(async move { g.admit(FlowRequest::new("chat", "fg", 10, 1)).await });
        until(|| gate.queued() == 1).await;
        low.evicted().await;
        assert!(low.is_evicted());
        assert_eq!(FlowRejection::evicted().reason, Some("evicted"));
        // The revoked request ends; the pool frees up; the urgent one goes.
        drop(low);
        set(&sat, 0.2);
        gate.poke();
        assert!(high.await.unwrap().is_ok());
        assert_eq!(gate.stats().revocations_confirmed, 1);
    }
}
