//! The picker core (feature `runtime`): one [`EndpointPicker`] — scheduler, datastore,
//! data plane and metrics — that every front end shares. The HTTP gateway
//! ([`crate::gateway`]) and the Envoy external processor ([`crate::extproc`]) are thin
//! layers over it.
//!
//! - Endpoints come and go through the datastore (discovery sources write it,
//!   [`EndpointPicker::run_discovery`] runs one); adding an endpoint starts its metrics
//!   scraping and KV-event subscription, removing it stops them and forgets what the
//!   plugins learned about it (its prefix-index entries included).
//! - Each pick counts the request as in flight on the endpoints it chose until the
//!   returned [`Picked`] is dropped: front ends hold it until the response is done.
//! - Endpoints that fail attempts in a row (front ends report them) are ejected from
//!   picks for a while; active checks of each endpoint's `/health` take failing ones
//!   out and bring them back ([`crate::health`]).
//! - Staleness of scraped metrics and the expiry of in-flight entries whose end was
//!   never seen run on the datastore's injected clock.

mod dataplane;
mod metrics;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::datalayer::SourceKind;
use crate::datastore::{Change, DatastoreReader, DatastoreWriter, RequestTicket};
use crate::discovery::Discovery;
use crate::endpoint::Endpoint;
use crate::error::SchedulerError;
use crate::health::{Failure, HealthConfig};
use crate::plugin::{KvEventConsumer, PickObserver};
use crate::replication::{Capacity, ReplicationConfig, Replicator, WarmPlan};
use crate::request::LlmRequest;
use crate::scheduler::{PickResult, Scheduler};

use metrics::{EndpointLabel, OutcomeLabel, PickerMetrics, ReasonLabel, StatusLabel};

/// The header naming the prefill endpoint of a disaggregated request (llm-d's).
pub const PREFILL_HEADER: &str = "x-prefiller-host-port";
/// The header carrying the picked destination (llm-d's).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";

/// Headers only the picker sets: where a request goes (destination, the P/D sidecar's
/// prefill, encoder and KV-source targets, in llm-d's old and new spellings). A client
/// that sets one could steer a sidecar to any host, so front ends drop them.
pub const ROUTING_HEADERS: [&str; 7] = [
    DESTINATION_HEADER,
    PREFILL_HEADER,
    "x-llm-d-prefiller-host-port",
    "x-encoder-hosts-ports",
    "x-llm-d-encoder-hosts-ports",
    "x-llm-d-kv-cache-source-host-port",
    "x-data-parallel-host-port",
];

/// Whether `name` (any case) is one of the [`ROUTING_HEADERS`].
pub fn is_routing_header(name: &str) -> bool {
    ROUTING_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Picker settings.
#[derive(Debug, Clone)]
pub struct PickerConfig {
    /// How often to scrape each endpoint's metrics.
    pub scrape_interval: Duration,
    /// Per-scrape time limit.
    pub scrape_timeout: Duration,
    /// Metrics older than this are treated as unknown (zero load).
    pub staleness: Duration,
    /// How long a request counts as in flight when its end is never seen; `None` takes
    /// the scheduler config's (`active-request-scorer`'s `requestTimeout`).
    pub request_timeout: Option<Duration>,
    /// Passive ejection and active health checks.
    pub health: HealthConfig,
    /// Hot-prefix replication ([`crate::replication`]); `None` turns it off.
    pub replication: Option<ReplicationConfig>,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            scrape_interval: Duration::from_millis(200),
            scrape_timeout: Duration::from_secs(2),
            staleness: Duration::from_secs(5),
            request_timeout: None,
            health: HealthConfig::default(),
            replication: Some(ReplicationConfig::default()),
        }
    }
}

use crate::flowcontrol::admitter::Admitter;
use crate::flowcontrol::gate::{FlowGate, FlowPermit, GateOptions};
use crate::flowcontrol::{FlowControlConfig, FlowPlugin, FlowRejection, FlowRequest};
pub use crate::tokenproducer::PromptTokenizer;
use crate::tokenproducer::{Backend, RenderCall, Step, TokenProducer};

/// A request on its way to the endpoints picked for it. Counted as in flight there until
/// dropped: keep it until the response is complete (or has failed).
#[derive(Debug)]
pub struct Picked {
    /// What was picked.
    pub result: PickResult,
    inflight: InFlightGuard,
}

impl Picked {
    /// The destination's `host:port`.
    pub fn destination_address(&self) -> Option<&str> {
        self.result.destination().map(|d| d.address.as_str())
    }

    /// The prefill endpoint's `host:port`, for a disaggregated request.
    pub fn prefill_address(&self) -> Option<&str> {
        self.result.prefill().map(|p| p.address.as_str())
    }

    /// The response's first byte arrived (see [`InFlightGuard::first_byte`]).
    pub fn first_byte(&self) {
        self.inflight.first_byte();
    }

    /// Ends the in-flight count now (dropping does the same).
    pub fn finish(self) {
        drop(self.inflight);
    }

    /// Holds the request's flow-control permit until the request ends.
    pub fn hold(&mut self, permit: Option<FlowPermit>) {
        self.inflight.hold(permit);
    }

    /// A response chunk arrived (see [`InFlightGuard::chunk`]).
    pub fn chunk(&self) {
        self.inflight.chunk();
    }

    /// The response ended whole (see [`InFlightGuard::complete`]).
    pub fn complete(&self, output_tokens: Option<u64>) {
        self.inflight.complete(output_tokens);
    }

    /// Splits off the in-flight guard (to hold it in a response stream, say).
    pub fn into_parts(self) -> (PickResult, InFlightGuard) {
        (self.result, self.inflight)
    }
}

/// Counts a request as in flight until dropped (and holds its flow-control permit, if
/// it has one, released just after).
#[derive(Debug)]
pub struct InFlightGuard {
    writer: DatastoreWriter,
    ticket: RequestTicket,
    permit: Option<FlowPermit>,
    latency: Option<LatencyReport>,
}

/// What a request's latencies are reported to (the `predicted-latency-producer`s), and
/// the state of its response.
struct LatencyReport {
    observers: Vec<Arc<dyn crate::plugins::latency::LatencyObserver>>,
    request: String,
    sent: Instant,
    chunks: std::sync::atomic::AtomicU64,
    first: std::sync::atomic::AtomicBool,
    ended: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LatencyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyReport").field("request", &self.request).finish()
    }
}

impl InFlightGuard {
    /// The response's first byte arrived: the prompt is prefilled, its tokens no longer
    /// count as pending work on the endpoint. Idempotent.
    pub fn first_byte(&self) {
        self.writer.request_first_byte(self.ticket);
        if let Some(l) = &self.latency
            && !l.first.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let ttft = l.sent.elapsed();
            l.observers.iter().for_each(|o| o.observe_first_token(&l.request, ttft));
        }
    }

    /// A response chunk arrived (streamed responses count their tokens this way, as
    /// llm-d-router does without usage).
    pub fn chunk(&self) {
        if let Some(l) = &self.latency {
            l.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The response ended whole, with `output_tokens` when known (else the chunks
    /// counted): the latencies train the latency model.
    pub fn complete(&self, output_tokens: Option<u64>) {
        use std::sync::atomic::Ordering;
        if let Some(l) = &self.latency
            && !l.ended.swap(true, Ordering::Relaxed)
        {
            let e2e = l.sent.elapsed();
            let tokens = output_tokens.unwrap_or_else(|| l.chunks.load(Ordering::Relaxed));
            l.observers.iter().for_each(|o| o.observe_end(&l.request, e2e, tokens));
        }
    }

    /// Holds the request's flow-control permit until the request ends.
    pub fn hold(&mut self, permit: Option<FlowPermit>) {
        if permit.is_some() {
            self.permit = permit;
        }
    }

    /// Resolves when flow control evicts the request (never, without a permit).
    pub async fn evicted(&self) {
        match &self.permit {
            Some(p) => p.evicted().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.writer.request_finished(self.ticket);
        // Ended without `complete`: failed or cut, nothing to learn from.
        if let Some(l) = &self.latency
            && !l.ended.load(std::sync::atomic::Ordering::Relaxed)
        {
            l.observers.iter().for_each(|o| o.abandon(&l.request));
        }
    }
}

/// The picker core shared by the front ends.
pub struct EndpointPicker {
    scheduler: Scheduler,
    writer: DatastoreWriter,
    reader: DatastoreReader,
    // The config's token-producer, else the tokenizer the picker was given (as a
    // local backend).
    tokens: Option<Arc<TokenProducer>>,
    // Whether to produce token ids: a token-producer is configured (the router runs it
    // for every request), or a configured scorer reads them.
    needs_tokens: bool,
    consumers: Vec<Arc<dyn KvEventConsumer>>,
    observers: Vec<Arc<dyn PickObserver>>,
    cfg: PickerConfig,
    request_timeout: Duration,
    client: reqwest::Client,
    // Per data source (by index): its own client when it has TLS settings (`None`:
    // the shared client); an `Err` when that client could not be built (logged).
    source_clients: Vec<Option<Result<reqwest::Client, String>>>,
    metrics: PickerMetrics,
    // Per-endpoint data-plane tasks (scraper, KV subscriber).
    tasks: Mutex<HashMap<String, Vec<tokio::task::JoinHandle<()>>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    // Makes pick + in-flight count one step: two requests arriving together must not
    // both see the same idle endpoint (picks take microseconds, so serializing is cheap).
    picking: Mutex<()>,
    replicator: Option<Mutex<Replicator>>,
    // Flow control (gate on): started on the first request, inside the runtime.
    flow: std::sync::OnceLock<FlowGate>,
    flow_metrics: Option<crate::flowcontrol::metrics::FlowMetrics>,
    admitters: Vec<Arc<dyn Admitter>>,
    // The latency model's trainers: each request's latencies are reported to them.
    latency: Vec<Arc<dyn crate::plugins::latency::LatencyObserver>>,
    // The same producers, for their metrics on `/metrics`.
    latency_producers: Vec<Arc<crate::plugins::latency::PredictedLatencyProducer>>,
    // InferenceObjectives: request priorities.
    objectives: std::sync::RwLock<crate::objectives::Objectives>,
    // The burst producers' windows, joined before the pick.
    burst: Vec<crate::plugins::burst::BurstWindow>,
    // Requests that reached admission: an autoscaler's arrival count.
    arrived: std::sync::atomic::AtomicU64,
}

impl Drop for EndpointPicker {
    fn drop(&mut self) {
        // Discovery polling holds no reference to the picker: stop it with its owner.
        self.shutdown();
    }
}

impl std::fmt::Debug for EndpointPicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPicker").field("scheduler", &self.scheduler).field("datastore", &self.reader).finish()
    }
}

/// Parses a JSON request body (empty bodies count as `{}`). A lone UTF-16 surrogate
/// escape (which Python's `json` writes) becomes U+FFFD, as the engines read it.
pub fn parse_body(body: &[u8]) -> Result<Value, SchedulerError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    llmd_openai::json::from_slice(body)
        .map_err(|e| SchedulerError::Request(format!("request body is not valid JSON: {e}")))
}

impl EndpointPicker {
    /// A picker over the endpoints `writer` holds.
    pub fn new(
        scheduler: Scheduler,
        writer: DatastoreWriter,
        cfg: PickerConfig,
        tokenizer: Option<Arc<dyn PromptTokenizer>>,
    ) -> Arc<Self> {
        let plugins = &scheduler.config().plugins;
        let consumers: Vec<Arc<dyn KvEventConsumer>> = scheduler.config().data_layer.consumers();
        let observers: Vec<Arc<dyn PickObserver>> = plugins.values().filter_map(|h| h.observer.clone()).collect();
        let configured = plugins.values().find_map(|h| h.tokens.clone());
        if configured.is_some() && tokenizer.is_some() {
            tracing::info!("the config's token-producer replaces the tokenizer given to the picker");
        }
        let needs_tokens = configured.is_some()
            || !consumers.is_empty()
            || plugins.values().any(|h| h.scorer.as_ref().is_some_and(|s| s.wants_token_ids()));
        let tokens = configured.or_else(|| tokenizer.map(|t| Arc::new(TokenProducer::new(Backend::Local(t)))));
        let request_timeout = cfg.request_timeout.unwrap_or(scheduler.config().request_timeout);
        let replicator = cfg.replication.clone().map(|c| Mutex::new(Replicator::new(c)));
        // Detectors judge staleness on the datastore's clock.
        for h in plugins.values() {
            if let Some(f) = &h.flow {
                f.bind_clock(writer.reader().clock());
            }
        }
        let admitters = plugins
            .values()
            .filter_map(|h| match &h.flow {
                Some(FlowPlugin::Admitter(a)) => Some(a.clone()),
                _ => None,
            })
            .collect();
        scheduler.config().request_control.bind_clock(&writer.reader().clock());
        let producers = crate::plugins::latency::latency_producers(scheduler.config());
        for p in &producers {
            p.bind_clock(writer.reader().clock());
        }
        let latency =
            producers.iter().map(|p| p.clone() as Arc<dyn crate::plugins::latency::LatencyObserver>).collect();
        let latency_producers = producers;
        let burst = {
            let reader = writer.reader();
            let serving: crate::plugins::burst::ReplicaSource = Arc::new(move || {
                reader.with_endpoints(|all| {
                    all.iter().filter(|e| e.is_serving()).map(crate::plugins::burst::Replica::of).collect()
                })
            });
            plugins
                .values()
                .filter_map(|h| h.burst.clone())
                .map(|p| {
                    p.bind_clock(writer.reader().clock());
                    crate::plugins::burst::BurstWindow::new(p, serving.clone())
                })
                .collect()
        };
        let mut metrics = PickerMetrics::new();
        let flow_metrics = scheduler
            .config()
            .flow_control
            .as_ref()
            .filter(|f| f.enabled)
            .map(|_| crate::flowcontrol::metrics::FlowMetrics::register(&mut metrics.registry));
        let mut cfg = cfg;
        if let Some(fc) = scheduler.config().flow_control.as_ref().filter(|f| f.enabled)
            && cfg.scrape_interval > Duration::from_millis(50)
        {
            // The router scrapes every 50 ms; a slower scrape would leave the detector
            // reading metrics older than its staleness threshold, counted as saturated.
            tracing::info!(detector = %fc.detector_name, "flow control on: metrics scraped every 50 ms");
            cfg.scrape_interval = Duration::from_millis(50);
        }
        let source_clients = scheduler
            .config()
            .data_layer
            .sources
            .iter()
            .map(|b| match &b.kind {
                SourceKind::Metrics { tls: Some(tls), .. } => Some(dataplane::tls_client(tls).inspect_err(|e| {
                    tracing::error!(source = %b.name, error = %e, "cannot build the source's TLS client; it will not scrape")
                })),
                _ => None,
            })
            .collect();
        Arc::new(EndpointPicker {
            reader: writer.reader(),
            writer,
            scheduler,
            tokens,
            needs_tokens,
            consumers,
            observers,
            cfg,
            request_timeout,
            client: reqwest::Client::new(),
            source_clients,
            metrics,
            tasks: Mutex::default(),
            background: Mutex::default(),
            picking: Mutex::default(),
            replicator,
            flow: std::sync::OnceLock::new(),
            flow_metrics,
            admitters,
            latency,
            latency_producers,
            objectives: Default::default(),
            burst,
            arrived: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Starts the data plane: follows the datastore (a scraper and, where the endpoint
    /// publishes KV events and a plugin consumes them, a subscriber per endpoint) and a
    /// housekeeping loop (stale metrics, forgotten requests). Needs a tokio runtime;
    /// [`shutdown`](Self::shutdown) stops it all.
    pub fn start(self: &Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Change>();
        self.writer.subscribe(move |c| {
            let _ = tx.send(c.clone());
        });
        for e in self.reader.snapshot() {
            self.start_endpoint(&e);
        }
        let weak = Arc::downgrade(self);
        let follow = tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                let Some(p) = weak.upgrade() else { return };
                p.apply_change(change);
            }
        });
        let weak = Arc::downgrade(self);
        let interval = self.cfg.scrape_interval;
        let housekeeping = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(p) = weak.upgrade() else { return };
                p.writer.expire_stale_metrics(p.cfg.staleness);
                let n = p.writer.expire_requests(p.request_timeout);
                if n > 0 {
                    tracing::warn!(requests = n, timeout = ?p.request_timeout, "in-flight requests expired unseen");
                }
            }
        });
        self.background.lock().unwrap_or_else(|p| p.into_inner()).extend([follow, housekeeping]);
        // "Global socket" KV events: one bound socket every engine publishes to.
        let mut bound = HashSet::new();
        for (i, source) in self.scheduler.config().data_layer.sources.iter().enumerate() {
            for (zmq, topic) in source.consumers.iter().filter_map(|c| c.global_socket()) {
                if bound.insert(zmq.clone()) {
                    let task = tokio::spawn(dataplane::subscribe_global(Arc::downgrade(self), i, zmq, topic));
                    self.background.lock().unwrap_or_else(|p| p.into_inner()).push(task);
                }
            }
        }
        if let Some(every) = self.cfg.health.check_interval {
            let task = tokio::spawn(dataplane::health_checks(Arc::downgrade(self), every));
            self.background.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        }
    }

    /// Runs a discovery source: syncs now, then every poll interval, until
    /// [`shutdown`](Self::shutdown). Sync errors are logged and the datastore keeps the
    /// last good set. Returns the first sync's outcome.
    pub fn run_discovery(
        self: &Arc<Self>,
        mut source: Box<dyn Discovery>,
    ) -> Result<crate::discovery::SyncOutcome, SchedulerError> {
        let first = source.sync(&self.writer)?;
        if let Some(every) = source.poll_interval() {
            let writer = self.writer.clone();
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = source.sync(&writer) {
                        tracing::warn!(source = source.name(), error = %e, "discovery failed; keeping the endpoints");
                    }
                }
            });
            self.background.lock().unwrap_or_else(|p| p.into_inner()).push(task);
        }
        Ok(first)
    }

    /// Stops every task the picker started.
    pub fn shutdown(&self) {
        for t in self.background.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        for (_, ts) in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            ts.into_iter().for_each(|t| t.abort());
        }
    }

    fn apply_change(self: &Arc<Self>, change: Change) {
        match change {
            // Changes from different writers can arrive out of order: start tasks only
            // for an endpoint that is (still) there, as it is now.
            Change::Added(e) | Change::Updated(e) => {
                self.stop_endpoint(&e.id);
                if let Some(current) = self.reader.get(&e.id) {
                    self.start_endpoint(&current);
                }
            }
            Change::Removed(e) => {
                self.stop_endpoint(&e.id);
                for c in &self.consumers {
                    c.forget(&e.id);
                }
                for o in &self.observers {
                    o.forget(&e.id);
                }
                self.metrics.picks.remove(&EndpointLabel { endpoint: e.id.clone() });
                tracing::info!(endpoint = %e.id, "endpoint removed; its index entries forgotten");
            }
        }
    }

    fn start_endpoint(self: &Arc<Self>, e: &crate::endpoint::Endpoint) {
        let mut tasks = Vec::new();
        for (i, source) in self.scheduler.config().data_layer.sources.iter().enumerate() {
            match &source.kind {
                SourceKind::Metrics { .. } => {
                    tasks.push(tokio::spawn(dataplane::scrape(Arc::downgrade(self), i, e.id.clone())));
                }
                SourceKind::KvEvents => {
                    if let Some(zmq) = source.consumers.iter().find_map(|c| c.events_address(e)) {
                        tasks.push(tokio::spawn(dataplane::subscribe(Arc::downgrade(self), i, e.id.clone(), zmq)));
                    }
                }
            }
        }
        if let Some(old) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).insert(e.id.clone(), tasks) {
            old.into_iter().for_each(|t| t.abort());
        }
    }

    fn stop_endpoint(&self, id: &str) {
        if let Some(ts) = self.tasks.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
            ts.into_iter().for_each(|t| t.abort());
        }
    }

    /// The endpoints.
    pub fn datastore(&self) -> &DatastoreReader {
        &self.reader
    }

    /// Writes the endpoints (what discovery sources use).
    pub fn writer(&self) -> &DatastoreWriter {
        &self.writer
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The HTTP client used for scraping (and by the gateway for proxying).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Scrapes every endpoint once, now (tests and start-up; the data plane keeps
    /// scraping on its own).
    pub async fn scrape_once(&self) {
        for (i, source) in self.scheduler.config().data_layer.sources.iter().enumerate() {
            if matches!(source.kind, SourceKind::Metrics { .. }) {
                for e in self.reader.snapshot() {
                    dataplane::scrape_endpoint(self, i, &e.id).await;
                }
            }
        }
    }

    /// Admission before the pick, as llm-d-router's director does it: flow control
    /// (with the `flowControl` gate on, the request waits in its queue until dispatched
    /// or refused; off, the legacy check sheds sheddable requests of a saturated pool),
    /// then the configured admitters. The permit (gate on) is held until the request
    /// ends ([`InFlightGuard::hold`]). The request's priority is its InferenceObjective's
    /// ([`set_objectives`](Self::set_objectives)), 0 without one.
    pub async fn admit(&self, req: &LlmRequest, body_len: u64) -> Result<Option<FlowPermit>, FlowRejection> {
        self.arrived.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let priority = self.objectives.read().unwrap_or_else(|p| p.into_inner()).priority_of(&req.headers);
        let mut permit = None;
        if let Some(fc) = &self.scheduler.config().flow_control {
            if fc.enabled {
                let gate = self.flow.get_or_init(|| self.start_gate(fc));
                permit = Some(gate.admit(FlowRequest::from_llm_request(req, priority, body_len)).await?);
            } else if crate::flowcontrol::types::is_sheddable(priority) {
                let now = self.reader.clock().now();
                let sample = self.reader.with_endpoints(|all| {
                    let serving: Vec<&Endpoint> = all.iter().filter(|e| e.is_serving()).collect();
                    crate::flowcontrol::sample_pool(fc.detector.as_ref(), &serving, now)
                });
                crate::flowcontrol::admitter::legacy_admit(priority, sample.saturation)?;
            }
        }
        if !self.admitters.is_empty() {
            let draws = &self.scheduler;
            let denied = self.reader.with_endpoints(|all| {
                let serving: Vec<&Endpoint> = all.iter().filter(|e| e.is_serving()).collect();
                let mut draw = || draws.draw();
                self.admitters.iter().find_map(|a| a.admit(req, priority, &serving, &mut draw).err())
            });
            if let Some(d) = denied {
                tracing::info!(request = %req.id, reason = %d.message, "request not admitted");
                return Err(d.rejection());
            }
        }
        Ok(permit)
    }

    /// Requests that have reached admission since the picker started, admitted or not:
    /// what an autoscaler reads as the arrival count.
    pub fn requests_arrived(&self) -> u64 {
        self.arrived.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests the flow-control gate holds now (`llm_d_epp_flow_control_queue_size`
    /// summed over flows); 0 with flow control off.
    pub fn flow_queued(&self) -> usize {
        self.flow.get().map_or(0, FlowGate::queued)
    }

    /// Sets the InferenceObjectives requests name for their priority (replacing any
    /// before); the flow controller gets a band for each priority.
    pub fn set_objectives(&self, objectives: crate::objectives::Objectives) {
        if let Some(gate) = self.flow.get() {
            gate.set_desired_priorities(objectives.priorities());
        }
        *self.objectives.write().unwrap_or_else(|p| p.into_inner()) = objectives;
    }

    /// Joins the windows of the config's `burst-prefix-cache-producer`s: the request
    /// waits up to `windowDurationMs` so a burst of prompt-sharing requests is placed
    /// jointly, and the pick then reads its placement. Call after
    /// [`admit`](Self::admit), before the pick; without such a producer it returns at once.
    pub async fn burst_join(&self, req: &LlmRequest) {
        for w in &self.burst {
            w.join_request(req).await;
        }
    }

    fn start_gate(&self, fc: &FlowControlConfig) -> FlowGate {
        let reader = self.reader.clone();
        let detector = fc.detector.clone();
        let clock = self.reader.clock();
        let probe: crate::flowcontrol::gate::PoolProbe = Arc::new(move || {
            let now = clock.now();
            reader.with_endpoints(|all| {
                let serving: Vec<&Endpoint> = all.iter().filter(|e| e.is_serving()).collect();
                crate::flowcontrol::sample_pool(detector.as_ref(), &serving, now)
            })
        });
        let priorities = self.objectives.read().unwrap_or_else(|p| p.into_inner()).priorities();
        FlowGate::start(fc, probe, GateOptions { metrics: self.flow_metrics.clone(), priorities, ..Default::default() })
    }

    /// Builds the scheduler's view of a request: model, prompt text, token ids (from
    /// the body, or the token producer when one is configured or a scorer needs them),
    /// headers. A token producer that must call a render endpoint is skipped here: the
    /// front ends use [`parse_request_async`](Self::parse_request_async).
    pub fn parse_request(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
    ) -> Result<LlmRequest, SchedulerError> {
        let (req, step) = self.parse_untokenized(path, headers, body, None)?;
        Ok(match step {
            Some(Step::Done(ids)) => LlmRequest { token_ids: ids, ..req },
            _ => req,
        })
    }

    /// [`parse_request`](Self::parse_request), calling the token producer's render
    /// endpoint when it has one (within its timeout; a failure routes without token ids,
    /// as llm-d-router does).
    pub async fn parse_request_async(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
    ) -> Result<LlmRequest, SchedulerError> {
        let (req, step) = self.parse_untokenized(path, headers, body, None)?;
        self.produce_tokens(req, step, headers).await
    }

    /// [`parse_request_async`](Self::parse_request_async) with the raw body too, which
    /// the gRPC parsers read (vLLM's gRPC `Generate`, Vertex AI): `body` is the parsed
    /// JSON, `Null` for a body that is not JSON.
    pub async fn parse_request_raw(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
        raw: &[u8],
    ) -> Result<LlmRequest, SchedulerError> {
        let (req, step) = self.parse_untokenized(path, headers, body, Some(raw))?;
        self.produce_tokens(req, step, headers).await
    }

    /// Whether the parser for `path` reads a gRPC (protobuf) body rather than JSON.
    pub fn reads_grpc(&self, path: &str) -> bool {
        self.parser_for(path).is_ok_and(crate::parsers::BodyParser::is_grpc)
    }

    async fn produce_tokens(
        &self,
        req: LlmRequest,
        step: Option<Step>,
        headers: &BTreeMap<String, String>,
    ) -> Result<LlmRequest, SchedulerError> {
        let ids = match step {
            None => return Ok(req),
            Some(Step::Done(ids)) => ids,
            Some(Step::Render(call)) => match self.render(&call, headers).await {
                Ok(ids) => Some(ids),
                Err(e) => {
                    self.metrics.render_failed();
                    tracing::warn!(url = %call.url, error = %e, "token-producer render failed; routing without token ids");
                    None
                }
            },
        };
        Ok(LlmRequest { token_ids: ids, ..req })
    }

    async fn render(&self, call: &RenderCall, headers: &BTreeMap<String, String>) -> Result<Vec<u32>, String> {
        let body = serde_json::to_vec(&call.body).map_err(|e| format!("encoding the render body: {e}"))?;
        let mut rq =
            self.client.post(&call.url).header("content-type", "application/json").body(body).timeout(call.timeout);
        if let Some(id) = headers.get("x-request-id") {
            rq = rq.header("x-request-id", id);
        }
        let started = Instant::now();
        let resp = rq.send().await.map_err(|e| format!("post {}: {e}", call.url))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("reading the render answer: {e}"))?;
        self.metrics.render_seconds.observe(started.elapsed().as_secs_f64());
        if !status.is_success() {
            let snippet = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("vLLM render returned status {}: {snippet}", status.as_u16()));
        }
        crate::tokenproducer::parse_render(call.completions, &body)
    }

    // The request without producer-made token ids, and what producing them takes
    // (`None`: nothing to produce).
    fn parse_untokenized(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
        raw: Option<&[u8]>,
    ) -> Result<(LlmRequest, Option<Step>), SchedulerError> {
        let parser = self.parser_for(path)?;
        let id = headers.get("x-request-id").cloned().unwrap_or_default();
        if !parser.reads_body() {
            // The passthrough parser: routing sees the headers only.
            let mut req = LlmRequest::new(id, "", "");
            req.headers = headers.clone();
            self.request_control(&mut req)?;
            return Ok((req, None));
        }
        // gRPC parsers read the framed protobuf, the others the JSON.
        let p = match raw {
            Some(raw) if parser.is_grpc() => parser.parse_bytes(path, raw),
            _ => parser.parse(path, body),
        }
        .map_err(SchedulerError::Request)?;
        let mut req = LlmRequest::new(id, p.model, p.prompt);
        req.headers = headers.clone();
        req.multimodal = p.multimodal;
        req.mm_hashes = crate::request::multimodal_hashes(body);
        req.token_ids = p.token_ids;
        self.request_control(&mut req)?;
        if req.token_ids.is_some() || !self.needs_tokens || parser.is_grpc() {
            return Ok((req, None));
        }
        // Tokenizing costs far more than a pick: only when something reads the ids.
        let step = self.tokens.as_ref().map(|t| t.start(path, headers, body));
        Ok((req, step))
    }

    // Request control before admission and the pick: header processors (an error
    // fails the request), then data producers, writing the request's attributes.
    fn request_control(&self, req: &mut LlmRequest) -> Result<(), SchedulerError> {
        let chain = &self.scheduler.config().request_control;
        if chain.is_empty() {
            return Ok(());
        }
        chain.request_headers(&req.headers, &mut req.attributes).map_err(SchedulerError::Request)?;
        chain.produce(&req.headers, &mut req.attributes);
        Ok(())
    }

    /// Headers the request-control plugins add to the client's response (a session
    /// token, the rollout screener's), once `dest` answered the request `req` picked as
    /// `result`. `metadata`: Envoy's metadata for the request, by namespace (the HTTP
    /// gateway passes none and the served endpoint is `dest`'s address).
    pub fn response_headers(
        &self,
        req: &LlmRequest,
        result: &PickResult,
        metadata: Option<&Value>,
    ) -> BTreeMap<String, String> {
        let chain = &self.scheduler.config().request_control;
        let mut out = BTreeMap::new();
        if chain.is_empty() {
            return out;
        }
        let dest = result.destination();
        let target = dest.and_then(|d| self.reader.get(&d.endpoint));
        let served;
        let metadata = match metadata {
            Some(m) => Some(m),
            None => {
                served =
                    dest.map(|d| serde_json::json!({"envoy.lb": {"x-gateway-destination-endpoint-served": d.address}}));
                served.as_ref()
            }
        };
        let cx = crate::plugins::requestcontrol::ResponseContext {
            request: req,
            result: Some(result),
            target: target.as_ref(),
            metadata,
        };
        chain.response_headers(&cx, &mut out);
        out
    }

    // The parser for `path`: the configured ones (`requestHandler.parsers`), else the
    // router's defaults (OpenAI, Anthropic, vLLM generate, then passthrough).
    fn parser_for(&self, path: &str) -> Result<crate::parsers::BodyParser, SchedulerError> {
        let resolved = match &self.scheduler.config().parsers {
            Some(set) => set.resolve(path),
            None => crate::parsers::router_defaults().resolve(path),
        };
        resolved.ok_or_else(|| SchedulerError::Request(format!("no configured request parser takes the path {path:?}")))
    }

    /// Whether the parser for `path` reads the request body (`requestHandler.parsers`;
    /// without them, the router's default parsers). An error when no configured parser
    /// takes the path, as llm-d-router answers.
    pub fn reads_body(&self, path: &str) -> Result<bool, SchedulerError> {
        Ok(self.parser_for(path)?.reads_body())
    }

    /// Picks for an OpenAI request body arriving at `path` with `headers` (lower-case
    /// names), among the ready endpoints not in `exclude`. The request counts as in
    /// flight on every endpoint picked until the [`Picked`] is dropped.
    pub fn pick(
        &self,
        path: &str,
        headers: &BTreeMap<String, String>,
        body: &Value,
        exclude: &HashSet<String>,
    ) -> Result<Picked, SchedulerError> {
        let req = self.parse_request(path, headers, body)?;
        self.pick_request(&req, exclude)
    }

    /// [`pick`](Self::pick) for a request already parsed.
    pub fn pick_request(&self, req: &LlmRequest, exclude: &HashSet<String>) -> Result<Picked, SchedulerError> {
        self.pick_where(req, |e| !exclude.contains(&e.id), true)
    }

    // The pick among the serving endpoints `allowed` lets through.
    // `pre_request`: run the pre-request plugins (not for warm-up picks).
    fn pick_where(
        &self,
        req: &LlmRequest,
        allowed: impl Fn(&Endpoint) -> bool,
        pre_request: bool,
    ) -> Result<Picked, SchedulerError> {
        let serial = self.picking.lock().unwrap_or_else(|p| p.into_inner());
        for id in self.writer.refresh_load() {
            tracing::info!(endpoint = %id, "ejection over; endpoint back in picks");
        }
        let started = Instant::now();
        // Pick under the read lock: no copies of the endpoint list.
        let chain = &self.scheduler.config().request_control;
        let result = self.reader.with_endpoints(|all| {
            let mut cands: Vec<&Endpoint> = all.iter().filter(|e| e.is_serving() && allowed(e)).collect();
            if !chain.is_empty() {
                let pool: Vec<&Endpoint> = all.iter().collect();
                let before = cands.len();
                cands = chain.screen(req, &pool, cands, &mut || self.scheduler.draw());
                if before > 0 && cands.is_empty() {
                    return Err(SchedulerError::NoEndpoint("screeners eliminated all endpoint candidates".into()));
                }
            }
            self.scheduler.pick_among(req, cands)
        });
        self.metrics.pick_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(result) => {
                if let Some(d) = result.destination() {
                    self.metrics.picks.get_or_create(&EndpointLabel { endpoint: d.endpoint.clone() }).inc();
                }
                if pre_request && !chain.is_empty() {
                    chain.pre_request(req, &req.attributes, &result);
                }
                // Of the prompt, only what the destination's cache lacks is prefill work
                // queued there (when a prefix scorer knows).
                let prompt = req.prompt_tokens();
                let uncached = result.destination().and_then(|d| d.uncached_tokens).unwrap_or(prompt);
                let tokens = uncached.min(prompt) as u64;
                let ticket = self.writer.request_started(&result.endpoints(), tokens);
                drop(serial);
                Ok(Picked {
                    result,
                    inflight: InFlightGuard {
                        writer: self.writer.clone(),
                        ticket,
                        permit: None,
                        // Timed from the pick, as the router times from its PreRequest.
                        latency: (!self.latency.is_empty() && !req.id.is_empty()).then(|| LatencyReport {
                            observers: self.latency.clone(),
                            request: req.id.clone(),
                            sent: Instant::now(),
                            chunks: Default::default(),
                            first: Default::default(),
                            ended: Default::default(),
                        }),
                    },
                })
            }
            Err(e) => {
                self.metrics.pick_errors.get_or_create(&StatusLabel { status: e.http_status().to_string() }).inc();
                Err(e)
            }
        }
    }

    /// Hot-prefix replication ([`crate::replication`]): front ends call this once per
    /// request after its first pick, with the body they received at `path`. When the
    /// request's prefix draws more than its share of traffic onto too few holders, this
    /// sends a warm-up copy of the request (one token, answered to nobody) to another
    /// endpoint, counted as a pick there, in the background. Needs a tokio runtime;
    /// does nothing without one or with replication off.
    pub fn replicate(self: &Arc<Self>, path: &str, body: &Value, req: &LlmRequest, picked: &PickResult) {
        let Some(replicator) = &self.replicator else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let held = picked.destination().and_then(|d| d.held_prefix.as_ref());
        let now = self.reader.clock().now();
        let plan = {
            let mut r = replicator.lock().unwrap_or_else(|p| p.into_inner());
            // Most arrivals are only counted: the endpoints are read when a plan may follow.
            let judged = r.arrive(now, held);
            let Some(held) = held.filter(|_| judged) else { return };
            self.reader.with_endpoints(|all| {
                let serving: Vec<&Endpoint> = all.iter().filter(|e| e.is_serving()).collect();
                r.plan(now, held, &serving, |e| self.capacity(e))
            })
        };
        let Some(plan) = plan else { return };
        let Some(timeout) = self.cfg.replication.as_ref().map(|c| c.timeout) else { return };
        let mut warm = req.clone();
        warm.id = format!("{}-warm", req.id);
        let sent = match self.pick_where(&warm, |e| e.id == plan.endpoint, false) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(endpoint = %plan.endpoint, error = %e, "hot-prefix warm-up not sent");
                self.warm_finished(&plan, false);
                return;
            }
        };
        let Some(address) = sent.destination_address().map(String::from) else {
            self.warm_finished(&plan, false);
            return;
        };
        tracing::info!(
            endpoint = %plan.endpoint,
            prefix_tokens = plan.tokens,
            holders = ?held.map(|h| &h.holders),
            "hot prefix: warming another endpoint"
        );
        let mut request = self
            .client
            .post(format!("http://{address}{path}"))
            .header("content-type", "application/json")
            .body(warm_body(path, body).to_string())
            .timeout(timeout);
        if let Some(auth) = req.headers.get("authorization") {
            request = request.header("authorization", auth);
        }
        let picker = Arc::downgrade(self);
        runtime.spawn(async move {
            let ok = match request.send().await {
                Ok(resp) => {
                    sent.first_byte();
                    let status = resp.status();
                    resp.bytes().await.is_ok() && status.is_success()
                }
                Err(_) => false,
            };
            drop(sent);
            if let Some(p) = picker.upgrade() {
                p.warm_finished(&plan, ok);
            }
        });
    }

    fn warm_finished(&self, plan: &WarmPlan, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.metrics.replications.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
        if let Some(r) = &self.replicator {
            r.lock().unwrap_or_else(|p| p.into_inner()).finished(self.reader.clock().now(), plan, ok);
        }
    }

    // An endpoint's KV cache size (scraped) and the blocks the picker's index says it
    // holds: the precise index's (KV events) when there is one, else the approximate
    // index's (routing history). Both count blocks of the scorer's size, taken to be the
    // engine's.
    fn capacity(&self, e: &Endpoint) -> Capacity {
        let total_blocks =
            e.attribute(crate::datalayer::attributes::NUM_GPU_BLOCKS).and_then(|v| v.as_f64()).map(|v| v as u64);
        let held_blocks = if self.consumers.is_empty() {
            self.observers.iter().filter_map(|o| o.endpoint_blocks(&e.id)).map(|n| n as u64).max()
        } else {
            Some(self.consumers.iter().map(|c| c.endpoint_blocks(&e.id) as u64).sum())
        };
        Capacity { total_blocks, held_blocks }
    }

    /// A front end's report that an attempt on endpoint `id` failed; enough in a row
    /// eject it (see [`crate::health`]).
    pub fn record_failure(&self, id: &str, failure: Failure) {
        self.metrics.failures.get_or_create(&ReasonLabel { reason: failure.as_str().into() }).inc();
        if let Some(span) = self.writer.record_failure(id, &self.cfg.health) {
            self.metrics.ejections.inc();
            tracing::warn!(endpoint = %id, ?span, reason = failure.as_str(), "endpoint ejected after failing in a row");
        }
    }

    /// A front end's report that endpoint `id` answered.
    pub fn record_success(&self, id: &str) {
        self.writer.record_success(id);
    }

    /// The health settings.
    pub fn health_config(&self) -> &HealthConfig {
        &self.cfg.health
    }

    /// Counts a retry on another endpoint (front ends call it).
    pub fn record_retry(&self) {
        self.metrics.retries.inc();
    }

    /// The picker's metrics in Prometheus text format.
    pub fn metrics_text(&self) -> Result<String, SchedulerError> {
        let mut text = self
            .metrics
            .encode(&self.reader, &self.consumers)
            .map_err(|e| SchedulerError::Request(format!("encoding metrics: {e}")))?;
        // The latency producers and the profile handler (its P/D decisions) keep their own
        // counts; they go before OpenMetrics' end marker.
        let mut own = String::new();
        for p in &self.latency_producers {
            p.metrics().encode_text(p.name(), &mut own);
        }
        self.scheduler.config().handler.encode_metrics(&mut own);
        if !own.is_empty() {
            let end = text.strip_suffix("# EOF\n").map(str::len);
            text.truncate(end.unwrap_or(text.len()));
            text.push_str(&own);
            if end.is_some() {
                text.push_str("# EOF\n");
            }
        }
        Ok(text)
    }
}

/// The body of a warm-up: the request itself, made to compute its prompt and stop after
/// one token, unstreamed, with nothing extra to return.
fn warm_body(path: &str, body: &Value) -> Value {
    let mut warm = body.clone();
    if let Some(o) = warm.as_object_mut() {
        for key in ["stream_options", "min_tokens", "best_of", "logprobs", "top_logprobs", "prompt_logprobs", "echo"] {
            o.remove(key);
        }
        o.insert("stream".into(), Value::Bool(false));
        o.insert("n".into(), Value::from(1));
        o.insert("max_tokens".into(), Value::from(1));
        if path.contains("chat") || o.contains_key("max_completion_tokens") {
            o.insert("max_completion_tokens".into(), Value::from(1));
        }
    }
    warm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_up_computes_the_prompt_and_stops_after_one_token() {
        let body = serde_json::json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,
            "stream_options": {"include_usage": true}, "max_completion_tokens": 500, "n": 3,
            "logprobs": true, "top_logprobs": 5, "min_tokens": 10, "temperature": 0.7,
        });
        let warm = warm_body("/v1/chat/completions", &body);
        assert_eq!(
            warm,
            serde_json::json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false,
                "max_completion_tokens": 1, "max_tokens": 1, "n": 1, "temperature": 0.7,
            })
        );
        let warm = warm_body("/v1/completions", &serde_json::json!({"prompt": "p", "max_tokens": 9, "echo": true}));
        assert_eq!(warm, serde_json::json!({"prompt": "p", "max_tokens": 1, "stream": false, "n": 1}));
    }

    #[tokio::test]
    async fn p_d_decisions_are_on_the_metrics_page_under_the_router_s_names() {
        use crate::endpoint::{Endpoint, Role};
        let yaml = "plugins:\n- type: prefill-filter\n- type: decode-filter\n- type: always-disagg-pd-decider\n\
                    - type: disagg-profile-handler\n  name: pd\n  parameters: {deciders: {prefill: always-disagg-pd-decider}}\n\
                    schedulingProfiles:\n- name: prefill\n  plugins:\n  - pluginRef: prefill-filter\n\
                    - name: decode\n  plugins:\n  - pluginRef: decode-filter\n";
        let config = crate::config::SchedulerConfig::from_yaml(
            yaml,
            "epp.yaml",
            &crate::registry::PluginRegistry::with_builtins(),
        )
        .unwrap();
        let store = crate::datastore::datastore(Arc::new(crate::clock::ManualClock::new()));
        store.upsert(Endpoint::new("p", "127.0.0.1:8001", Role::Prefill));
        store.upsert(Endpoint::new("d", "127.0.0.1:8002", Role::Decode));
        let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
        let text = picker.metrics_text().unwrap();
        assert!(!text.contains("disagg_decision"), "nothing before the first decision");
        for id in ["a", "b"] {
            let picked = picker.pick_request(&LlmRequest::new(id, "m", "hello"), &Default::default()).unwrap();
            assert_eq!(picked.destination_address(), Some("127.0.0.1:8002"));
        }
        let text = picker.metrics_text().unwrap();
        let want = r#"llm_d_epp_disagg_decision_total{plugin_name="pd",plugin_type="disagg-profile-handler",model_name="m",decision_type="prefill-decode"} 2"#;
        assert!(text.lines().any(|l| l == want), "{text}");
        assert!(text.contains(
            r#"llm_d_inference_scheduler_disagg_decision_total{model_name="m",decision_type="prefill-decode"} 2"#
        ));
        assert!(text.ends_with("# EOF\n"), "the end marker stays last");
        assert_eq!(text.matches("# EOF").count(), 1);
    }
}
