//! The live set of endpoints: discovery sources write it, pickers and the data layer
//! read it.
//!
//! A [`DatastoreWriter`] adds, updates, drains and removes endpoints and records what
//! the data layer learned about them (metrics, attributes) and what the picker has in
//! flight on them; cheap cloneable [`DatastoreReader`]s pick over it. Listeners learn of
//! endpoints coming and going ([`Change`]), so a runtime can start and stop each
//! endpoint's metrics scraping and KV-event subscription. Nothing here needs an async
//! runtime; time comes from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use crate::clock::Clock;
use crate::endpoint::{AttributeValue, Endpoint, EndpointMetrics, EndpointStatus};
use crate::health::HealthConfig;

/// What changed in the endpoint set. Metric, attribute, status and in-flight updates
/// are not changes: they do not affect what runs per endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new endpoint.
    Added(Endpoint),
    /// An endpoint whose address or KV-event stream changed (restart what follows it).
    Updated(Endpoint),
    /// An endpoint that went away (forget what was learned about it).
    Removed(Endpoint),
}

/// Identifies one request the picker sent out, until it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestTicket(u64);

#[derive(Debug)]
struct Tracked {
    // (endpoint id, its generation when the request was sent).
    endpoints: Vec<(String, u64)>,
    tokens: u64,
    // Whether the response has started (the prompt's tokens are already released).
    prefilled: bool,
    started: Duration,
}

/// How fast an endpoint prefills, learned from when responses start: a fluid model of
/// its prefill queue, so the picker can tell a prefill about to finish from one just begun.
#[derive(Debug, Default, Clone, Copy)]
struct PrefillModel {
    // Tokens per second (EWMA); None until a first response byte was seen.
    rate: Option<f64>,
    // When the queued prefill work is expected to be done.
    free_at: Duration,
    last_first_byte: Option<Duration>,
}

impl PrefillModel {
    fn add(&mut self, tokens: u64, now: Duration) {
        if let Some(r) = self.rate {
            self.free_at = self.free_at.max(now) + Duration::from_secs_f64(tokens as f64 / r);
        }
    }

    fn first_byte(&mut self, tokens: u64, started: Duration, now: Duration, still_pending: u64) {
        // Service began when the request arrived or the previous response started,
        // whichever is later (prefills of one endpoint run one after another).
        let begun = self.last_first_byte.map_or(started, |t| t.max(started));
        let took = now.saturating_sub(begun).as_secs_f64();
        if took > 1e-3 && tokens > 0 {
            let sample = tokens as f64 / took;
            self.rate = Some(self.rate.map_or(sample, |r| 0.7 * r + 0.3 * sample));
        }
        self.last_first_byte = Some(now);
        match self.rate {
            _ if still_pending == 0 => self.free_at = now,
            // Work queued while the rate was unknown (or underestimated) is still ahead.
            Some(r) => self.free_at = self.free_at.max(now + Duration::from_secs_f64(still_pending as f64 / r)),
            None => {}
        }
    }

    // A request that never started its response is gone: so is its work.
    fn cancel(&mut self, tokens: u64, still_pending: u64, now: Duration) {
        if still_pending == 0 {
            self.free_at = now;
        } else if let Some(r) = self.rate {
            let less = self.free_at.saturating_sub(Duration::from_secs_f64(tokens as f64 / r));
            self.free_at = less.max(now);
        }
    }

    fn remaining(&self, pending: u64, now: Duration) -> u64 {
        match self.rate {
            None => pending,
            Some(r) => ((self.free_at.saturating_sub(now).as_secs_f64() * r).ceil() as u64).min(pending),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    // In insertion order, so picks and round robin see a stable order.
    endpoints: Vec<Endpoint>,
    // Which discovery source put each endpoint here (reconcile removes only its own).
    owners: HashMap<String, String>,
    requests: HashMap<RequestTicket, Tracked>,
    prefill: HashMap<String, PrefillModel>,
    // Each endpoint's incarnation: a request sent to an endpoint that was removed and
    // added again under the same id must not be counted against the new one.
    generations: HashMap<String, u64>,
    next_generation: u64,
    next_ticket: u64,
    version: u64,
}

impl Inner {
    fn push(&mut self, e: Endpoint) {
        self.next_generation += 1;
        self.generations.insert(e.id.clone(), self.next_generation);
        self.endpoints.push(e);
    }

    fn take(&mut self, i: usize) -> Endpoint {
        let e = self.endpoints.remove(i);
        self.generations.remove(&e.id);
        self.prefill.remove(&e.id);
        self.owners.remove(&e.id);
        e
    }

    // Whether `source` may write endpoint `id`: it is new, the source's own, or the
    // writer is not a discovery source ("").
    fn may_write(&self, source: &str, id: &str) -> bool {
        source.is_empty() || self.owners.get(id).is_none_or(|o| o == source || o.is_empty())
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.endpoints.iter().position(|e| e.id == id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Endpoint> {
        self.endpoints.iter_mut().find(|e| e.id == id)
    }
}

type Listener = Box<dyn Fn(&Change) + Send + Sync>;

struct Shared {
    inner: RwLock<Inner>,
    listeners: RwLock<Vec<Listener>>,
    clock: Arc<dyn Clock>,
}

/// Makes a new, empty datastore: its writer (which can hand out readers).
pub fn datastore(clock: Arc<dyn Clock>) -> DatastoreWriter {
    DatastoreWriter { shared: Arc::new(Shared { inner: RwLock::default(), listeners: RwLock::default(), clock }) }
}

/// Writes the endpoint set. Cloneable: each discovery source and data-layer task holds one.
#[derive(Clone)]
pub struct DatastoreWriter {
    shared: Arc<Shared>,
}

/// Reads the endpoint set. Cloneable and cheap.
#[derive(Clone)]
pub struct DatastoreReader {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for DatastoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreWriter").field("endpoints", &self.reader().len()).finish()
    }
}

impl std::fmt::Debug for DatastoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatastoreReader").field("endpoints", &self.len()).finish()
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    // Outside the lock: a listener may read the datastore.
    fn notify(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let listeners = self.listeners.read().unwrap_or_else(|p| p.into_inner());
        for c in changes {
            for l in listeners.iter() {
                l(c);
            }
        }
    }
}

// Discovery owns identity, address, role, labels and readiness; what the data layer
// and the picker learned (metrics, attributes, in-flight, a KV-event stream the
// endpoint advertised) survives an upsert.
fn merge(old: &mut Endpoint, new: Endpoint) -> Option<Change> {
    let kv_events = new.kv_events.or_else(|| old.kv_events.clone());
    let restart = old.address != new.address || old.kv_events != kv_events;
    old.address = new.address;
    old.role = new.role;
    old.labels = new.labels;
    old.kv_events = kv_events;
    old.status = new.status;
    restart.then(|| Change::Updated(old.clone()))
}

// Ends the ejections due by `now`; bumps the version when any did.
fn readmit(g: &mut Inner, now: Duration) -> Vec<String> {
    let mut back = Vec::new();
    for e in g.endpoints.iter_mut() {
        if e.health.readmit_if_due(now) {
            back.push(e.id.clone());
        }
    }
    if !back.is_empty() {
        g.version += 1;
    }
    back
}

impl DatastoreWriter {
    /// A reader over the same endpoints.
    pub fn reader(&self) -> DatastoreReader {
        DatastoreReader { shared: self.shared.clone() }
    }

    /// Calls `f` for every later [`Change`], after the change is visible to readers.
    /// Listeners must not block: hand the change to a channel.
    pub fn subscribe(&self, f: impl Fn(&Change) + Send + Sync + 'static) {
        self.shared.listeners.write().unwrap_or_else(|p| p.into_inner()).push(Box::new(f));
    }

    /// Adds `endpoint`, or updates the one with its id (keeping its metrics, attributes
    /// and in-flight count). Returns whether it was new.
    pub fn upsert(&self, endpoint: Endpoint) -> bool {
        self.upsert_from("", endpoint)
    }

    /// [`upsert`](Self::upsert) on behalf of discovery source `source`. An endpoint
    /// another source added is left alone (logged): two sources naming one id is a
    /// configuration mistake, and the first keeps it.
    pub fn upsert_from(&self, source: &str, endpoint: Endpoint) -> bool {
        let (added, change) = {
            let mut g = self.shared.write();
            if !g.may_write(source, &endpoint.id) {
                tracing::warn!(endpoint = %endpoint.id, source, "another discovery source owns this endpoint; ignored");
                return false;
            }
            if !source.is_empty() || !g.owners.contains_key(&endpoint.id) {
                g.owners.insert(endpoint.id.clone(), source.to_string());
            }
            g.version += 1;
            match g.position(&endpoint.id) {
                Some(i) => (false, merge(&mut g.endpoints[i], endpoint)),
                None => {
                    g.push(endpoint.clone());
                    (true, Some(Change::Added(endpoint)))
                }
            }
        };
        self.shared.notify(change.as_slice());
        added
    }

    /// Makes the endpoints `source` put here exactly `endpoints`: adds and updates
    /// those given, removes the rest of that source's. Returns (added, removed).
    pub fn reconcile(&self, source: &str, endpoints: Vec<Endpoint>) -> (usize, usize) {
        let mut changes = Vec::new();
        let mut added = 0;
        {
            let mut g = self.shared.write();
            g.version += 1;
            let keep: std::collections::HashSet<String> = endpoints.iter().map(|e| e.id.clone()).collect();
            let gone: Vec<String> = g
                .owners
                .iter()
                .filter(|(id, s)| *s == source && !keep.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                match g.position(&id) {
                    Some(i) => changes.push(Change::Removed(g.take(i))),
                    None => {
                        g.owners.remove(&id);
                    }
                }
            }
            let removed = changes.len();
            for e in endpoints {
                if !g.may_write(source, &e.id) {
                    tracing::warn!(endpoint = %e.id, source, "another discovery source owns this endpoint; ignored");
                    continue;
                }
                g.owners.insert(e.id.clone(), source.to_string());
                match g.position(&e.id) {
                    Some(i) => changes.extend(merge(&mut g.endpoints[i], e)),
                    None => {
                        added += 1;
                        g.push(e.clone());
                        changes.push(Change::Added(e));
                    }
                }
            }
            drop(g);
            self.shared.notify(&changes);
            (added, removed)
        }
    }

    /// Removes an endpoint at once; requests already sent to it run on.
    pub fn remove(&self, id: &str) -> Option<Endpoint> {
        let removed = {
            let mut g = self.shared.write();
            g.version += 1;
            let i = g.position(id)?;
            g.take(i)
        };
        self.shared.notify(&[Change::Removed(removed.clone())]);
        Some(removed)
    }

    /// Sets an endpoint's status; returns whether it exists.
    pub fn set_status(&self, id: &str, status: EndpointStatus) -> bool {
        let mut g = self.shared.write();
        g.version += 1;
        g.get_mut(id).map(|e| e.status = status).is_some()
    }

    /// Stops new picks to an endpoint while its requests finish.
    pub fn drain(&self, id: &str) -> bool {
        self.set_status(id, EndpointStatus::Draining)
    }

    /// Records a scrape of an endpoint's metrics, stamped with the clock.
    pub fn update_metrics(&self, id: &str, mut metrics: EndpointMetrics) -> bool {
        metrics.updated_at = Some(self.shared.clock.now());
        let mut g = self.shared.write();
        g.get_mut(id).map(|e| e.metrics = metrics).is_some()
    }

    /// Sets a named attribute on an endpoint (a data-layer extractor's output).
    pub fn set_attribute(&self, id: &str, name: &str, value: AttributeValue) -> bool {
        let mut g = self.shared.write();
        g.get_mut(id).map(|e| e.attributes.insert(name.to_string(), value)).is_some()
    }

    /// Sets the KV-event stream an endpoint publishes on (learned from its metrics, say);
    /// a change restarts its subscription.
    pub fn set_kv_events(&self, id: &str, zmq: Option<String>) -> bool {
        let change = {
            let mut g = self.shared.write();
            let Some(e) = g.get_mut(id) else { return false };
            if e.kv_events == zmq {
                return true;
            }
            e.kv_events = zmq;
            let c = Change::Updated(e.clone());
            g.version += 1;
            c
        };
        self.shared.notify(&[change]);
        true
    }

    /// Clears metrics not refreshed within `staleness`: a picture that no longer holds
    /// would steer traffic. Returns how many endpoints were cleared.
    pub fn expire_stale_metrics(&self, staleness: Duration) -> usize {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let mut n = 0;
        for e in &mut g.endpoints {
            if e.metrics.updated_at.is_some_and(|t| now.saturating_sub(t) > staleness) {
                // Extractors write attributes from the same scrapes: just as stale.
                e.metrics = EndpointMetrics::default();
                e.attributes.clear();
                n += 1;
            }
        }
        n
    }

    /// Counts a request sent to `endpoints` (one per profile that picked) with
    /// `prompt_tokens`, until [`request_finished`](Self::request_finished).
    pub fn request_started(&self, endpoints: &[&str], prompt_tokens: u64) -> RequestTicket {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let ticket = RequestTicket(g.next_ticket);
        g.next_ticket += 1;
        let mut ids: Vec<(String, u64)> = Vec::new();
        for id in endpoints {
            if ids.iter().any(|(i, _)| i == id) {
                continue;
            }
            let Some(&generation) = g.generations.get(*id) else { continue };
            if let Some(e) = g.get_mut(id) {
                e.inflight.requests += 1;
                e.inflight.prompt_tokens += prompt_tokens;
                e.inflight.prefill_remaining += prompt_tokens;
                e.inflight.last_sent = Some(now);
                g.prefill.entry(id.to_string()).or_default().add(prompt_tokens, now);
                ids.push((id.to_string(), generation));
            }
        }
        g.requests.insert(ticket, Tracked { endpoints: ids, tokens: prompt_tokens, prefilled: false, started: now });
        ticket
    }

    /// The request's response has started: its prompt is prefilled, so its tokens no
    /// longer count as pending work (the request still counts until it finishes).
    /// Idempotent.
    pub fn request_first_byte(&self, ticket: RequestTicket) {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let Some(t) = g.requests.get_mut(&ticket) else { return };
        if t.prefilled {
            return;
        }
        t.prefilled = true;
        let (ids, tokens, started) = (t.endpoints.clone(), t.tokens, t.started);
        for (id, generation) in &ids {
            if g.generations.get(id) != Some(generation) {
                continue;
            }
            let Some(e) = g.get_mut(id) else { continue };
            e.inflight.prompt_tokens = e.inflight.prompt_tokens.saturating_sub(tokens);
            let pending = e.inflight.prompt_tokens;
            let model = g.prefill.entry(id.clone()).or_default();
            model.first_byte(tokens, started, now, pending);
            let remaining = model.remaining(pending, now);
            if let Some(e) = g.get_mut(id) {
                e.inflight.prefill_remaining = remaining;
            }
        }
    }

    /// Records a failed attempt on endpoint `id` (connect failure, timeout, cut
    /// stream). When that makes `cfg.consecutive_failures` in a row it is ejected from
    /// picks, unless no other endpoint would be left serving. Returns the ejection's
    /// length when it was ejected.
    pub fn record_failure(&self, id: &str, cfg: &HealthConfig) -> Option<Duration> {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let others = g.endpoints.iter().filter(|e| e.id != id && e.is_serving()).count();
        let e = g.get_mut(id)?;
        if !e.health.failed(cfg) {
            return None;
        }
        if others == 0 {
            tracing::warn!(endpoint = %id, "endpoint keeps failing but is the last one serving; not ejected");
            return None;
        }
        let span = e.health.eject(cfg, now);
        g.version += 1;
        Some(span)
    }

    /// Records a successful attempt on endpoint `id`.
    pub fn record_success(&self, id: &str) {
        let mut g = self.shared.write();
        if let Some(e) = g.get_mut(id) {
            e.health.succeeded();
        }
    }

    /// Records an active health check's outcome. Returns `Some(serving)` when the
    /// endpoint's standing changed.
    pub fn record_check(&self, id: &str, ok: bool, cfg: &HealthConfig) -> Option<bool> {
        let mut g = self.shared.write();
        let changed = g.get_mut(id)?.health.checked(ok, cfg);
        if changed.is_some() {
            g.version += 1;
        }
        changed
    }

    /// Ends the ejections whose time has passed; returns the endpoints readmitted.
    pub fn readmit_due(&self) -> Vec<String> {
        let now = self.shared.clock.now();
        readmit(&mut self.shared.write(), now)
    }

    /// Brings the picker's view up to now before a pick, under one lock: ages every
    /// endpoint's pending prefill (`InFlightLoad::prefill_remaining`) and ends the
    /// ejections whose time has passed. Returns the endpoints readmitted.
    pub fn refresh_load(&self) -> Vec<String> {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let Inner { endpoints, prefill, .. } = &mut *g;
        // Only endpoints with prompts pending have anything to age.
        for e in endpoints.iter_mut().filter(|e| e.inflight.prompt_tokens > 0) {
            e.inflight.prefill_remaining =
                prefill.get(&e.id).map_or(e.inflight.prompt_tokens, |m| m.remaining(e.inflight.prompt_tokens, now));
        }
        readmit(&mut g, now)
    }

    /// The request finished (or failed, or its client went away). Idempotent.
    pub fn request_finished(&self, ticket: RequestTicket) {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        if let Some(t) = g.requests.remove(&ticket) {
            release(&mut g, &t, now);
        }
    }

    /// Forgets requests in flight longer than `timeout` (their completion was never
    /// seen: an Envoy that sends no response phase, say). Returns how many.
    pub fn expire_requests(&self, timeout: Duration) -> usize {
        let now = self.shared.clock.now();
        let mut g = self.shared.write();
        let old: Vec<RequestTicket> =
            g.requests.iter().filter(|(_, t)| now.saturating_sub(t.started) > timeout).map(|(k, _)| *k).collect();
        for k in &old {
            if let Some(t) = g.requests.remove(k) {
                release(&mut g, &t, now);
            }
        }
        old.len()
    }
}

fn release(g: &mut Inner, t: &Tracked, now: Duration) {
    for (id, generation) in &t.endpoints {
        if g.generations.get(id) != Some(generation) {
            continue;
        }
        let Some(e) = g.get_mut(id) else { continue };
        e.inflight.requests = e.inflight.requests.saturating_sub(1);
        if t.prefilled {
            continue;
        }
        // Never prefilled (cancelled, retried elsewhere, expired): its work is not coming.
        e.inflight.prompt_tokens = e.inflight.prompt_tokens.saturating_sub(t.tokens);
        e.inflight.prefill_remaining = e.inflight.prefill_remaining.min(e.inflight.prompt_tokens);
        let pending = e.inflight.prompt_tokens;
        if let Some(m) = g.prefill.get_mut(id) {
            m.cancel(t.tokens, pending, now);
        }
    }
}

impl DatastoreReader {
    /// Runs `f` over the endpoints under the read lock (no copies).
    pub fn with_endpoints<R>(&self, f: impl FnOnce(&[Endpoint]) -> R) -> R {
        f(&self.shared.read().endpoints)
    }

    /// A copy of every endpoint.
    pub fn snapshot(&self) -> Vec<Endpoint> {
        self.shared.read().endpoints.clone()
    }

    /// One endpoint.
    pub fn get(&self, id: &str) -> Option<Endpoint> {
        self.shared.read().endpoints.iter().find(|e| e.id == id).cloned()
    }

    /// How many endpoints there are, ready or not.
    pub fn len(&self) -> usize {
        self.shared.read().endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests in flight, over all endpoints.
    pub fn requests_in_flight(&self) -> usize {
        self.shared.read().requests.len()
    }

    /// Endpoints picks may choose now: ready, not ejected, passing health checks.
    pub fn serving(&self) -> usize {
        self.shared.read().endpoints.iter().filter(|e| e.is_serving()).count()
    }

    /// Grows with every change to the set or a status (not with metrics).
    pub fn version(&self) -> u64 {
        self.shared.read().version
    }

    /// The datastore's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.shared.clock.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::endpoint::Role;
    use std::sync::Mutex;

    fn ep(id: &str) -> Endpoint {
        Endpoint::new(id, format!("{id}:8000"), Role::Both)
    }

    #[test]
    fn failures_eject_until_due_but_never_the_last_serving_endpoint() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        w.upsert(ep("a"));
        w.upsert(ep("b"));
        let cfg =
            HealthConfig { consecutive_failures: 2, base_ejection: Duration::from_secs(10), ..Default::default() };
        assert_eq!(w.record_failure("a", &cfg), None);
        assert_eq!(w.record_failure("a", &cfg), Some(Duration::from_secs(10)));
        let r = w.reader();
        assert!(!r.get("a").unwrap().is_serving());
        assert_eq!(r.serving(), 1);
        // b is now the last one serving: its failures are counted but it stays.
        for _ in 0..5 {
            assert_eq!(w.record_failure("b", &cfg), None);
        }
        assert!(r.get("b").unwrap().is_serving());
        clock.advance(Duration::from_secs(9));
        assert!(w.readmit_due().is_empty());
        clock.advance(Duration::from_secs(1));
        assert_eq!(w.readmit_due(), vec!["a".to_string()]);
        assert_eq!(r.serving(), 2);
        // Rediscovery keeps the health state: an ejected endpoint stays ejected.
        w.record_failure("a", &cfg);
        w.record_failure("a", &cfg);
        w.upsert(ep("a"));
        assert!(!r.get("a").unwrap().is_serving());
        assert_eq!(w.record_check("a", true, &cfg), Some(true), "a passing check readmits");
    }

    #[test]
    fn upsert_keeps_learned_state_and_reports_changes() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        w.subscribe(move |c| s.lock().unwrap().push(c.clone()));
        assert!(w.upsert(ep("a")));
        w.update_metrics("a", EndpointMetrics { waiting: 3, ..Default::default() });
        assert!(!w.upsert(ep("a")), "same id is an update");
        let r = w.reader();
        assert_eq!(r.get("a").unwrap().metrics.waiting, 3, "metrics survive rediscovery");
        let mut moved = ep("a");
        moved.address = "elsewhere:1".into();
        w.upsert(moved);
        w.remove("a");
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen.as_slice(), [Change::Added(_), Change::Updated(u), Change::Removed(_)] if u.address == "elsewhere:1")
        );
        assert!(r.is_empty());
    }

    #[test]
    fn reconcile_removes_only_the_sources_own() {
        let w = datastore(Arc::new(ManualClock::new()));
        w.upsert_from("static", ep("s"));
        assert_eq!(w.reconcile("file", vec![ep("a"), ep("b")]), (2, 0));
        assert_eq!(w.reconcile("file", vec![ep("b"), ep("c")]), (1, 1));
        let ids: Vec<String> = w.reader().snapshot().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["s", "b", "c"]);
    }

    #[test]
    fn stale_metrics_expire_on_the_injected_clock() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        w.upsert(ep("a"));
        w.update_metrics("a", EndpointMetrics { waiting: 7, ..Default::default() });
        clock.advance(Duration::from_secs(2));
        assert_eq!(w.expire_stale_metrics(Duration::from_secs(5)), 0);
        clock.advance(Duration::from_secs(4));
        assert_eq!(w.expire_stale_metrics(Duration::from_secs(5)), 1);
        assert_eq!(w.reader().get("a").unwrap().metrics, EndpointMetrics::default());
    }

    #[test]
    fn in_flight_counts_rise_and_fall_and_expire() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        w.upsert(ep("a"));
        w.upsert(ep("b"));
        let t1 = w.request_started(&["a"], 100);
        let t2 = w.request_started(&["a", "b"], 10);
        let r = w.reader();
        assert_eq!((r.get("a").unwrap().inflight.requests, r.get("a").unwrap().inflight.prompt_tokens), (2, 110));
        // The first response byte releases the prompt's tokens, not the request.
        w.request_first_byte(t2);
        w.request_first_byte(t2);
        assert_eq!((r.get("a").unwrap().inflight.requests, r.get("a").unwrap().inflight.prompt_tokens), (2, 100));
        assert_eq!(r.get("b").unwrap().inflight.prompt_tokens, 0);
        w.request_finished(t1);
        assert_eq!(r.get("a").unwrap().inflight.prompt_tokens, 0);
        w.request_finished(t1);
        assert_eq!(r.get("a").unwrap().inflight.requests, 1, "finishing twice counts once");
        clock.advance(Duration::from_secs(121));
        assert_eq!(w.expire_requests(Duration::from_secs(120)), 1);
        assert_eq!(r.get("b").unwrap().inflight.requests, 0);
        assert_eq!(r.requests_in_flight(), 0);
    }

    #[test]
    fn pending_prefill_ages_at_the_learned_rate() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        w.upsert(ep("a"));
        let r = w.reader();
        // Unknown rate: the raw count.
        let t = w.request_started(&["a"], 1000);
        w.refresh_load();
        assert_eq!(r.get("a").unwrap().inflight.prefill_remaining, 1000);
        // 1000 tokens took 100 ms: 10 000 tokens/s.
        clock.advance(Duration::from_millis(100));
        w.request_first_byte(t);
        w.request_finished(t);
        // The next prompt is half done after 50 ms, done after 100 ms.
        let t = w.request_started(&["a"], 1000);
        clock.advance(Duration::from_millis(50));
        w.refresh_load();
        assert_eq!(r.get("a").unwrap().inflight.prefill_remaining, 500);
        clock.advance(Duration::from_millis(60));
        w.refresh_load();
        let a = r.get("a").unwrap().inflight;
        assert_eq!((a.prompt_tokens, a.prefill_remaining), (1000, 0), "not started yet, but due");
        w.request_first_byte(t);
        assert_eq!(r.get("a").unwrap().inflight.prompt_tokens, 0);
    }

    #[test]
    fn work_queued_before_the_rate_is_known_and_cancelled_work_are_counted_right() {
        let clock = Arc::new(ManualClock::new());
        let w = datastore(clock.clone());
        w.upsert(ep("a"));
        let r = w.reader();
        let first = w.request_started(&["a"], 1000);
        let second = w.request_started(&["a"], 1000);
        clock.advance(Duration::from_millis(100));
        w.request_first_byte(first);
        w.refresh_load();
        assert_eq!(r.get("a").unwrap().inflight.prefill_remaining, 1000, "the second prompt is still ahead");
        // The second request is cancelled before its response starts: nothing is left.
        w.request_finished(second);
        w.refresh_load();
        assert_eq!(r.get("a").unwrap().inflight.prefill_remaining, 0);
        let third = w.request_started(&["a"], 500);
        w.refresh_load();
        assert_eq!(r.get("a").unwrap().inflight.prefill_remaining, 500, "not queued behind cancelled work");
        w.request_finished(third);
        w.request_finished(first);
    }

    #[test]
    fn sources_keep_their_own_endpoints_and_re_added_ids_start_fresh() {
        let w = datastore(Arc::new(ManualClock::new()));
        w.reconcile("file:a", vec![ep("x"), ep("shared")]);
        w.reconcile("file:b", vec![ep("y"), ep("shared")]);
        w.upsert_from("static", ep("x"));
        assert_eq!(w.reconcile("file:b", vec![]), (0, 1), "b removes only y");
        let ids: Vec<String> = w.reader().snapshot().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["x", "shared"]);
        // A request sent to an endpoint that is removed and added again does not count
        // against the new one when it finishes.
        let t = w.request_started(&["x"], 10);
        w.remove("x");
        w.upsert(ep("x"));
        let fresh = w.request_started(&["x"], 10);
        w.request_finished(t);
        assert_eq!(w.reader().get("x").unwrap().inflight.requests, 1);
        w.request_finished(fresh);
        assert_eq!(w.reader().get("x").unwrap().inflight.requests, 0);
    }

    #[test]
    fn draining_endpoints_are_not_ready() {
        let w = datastore(Arc::new(ManualClock::new()));
        w.upsert(ep("a"));
        assert!(w.drain("a"));
        assert!(!w.reader().get("a").unwrap().is_ready());
        assert!(!w.drain("missing"));
    }
}
