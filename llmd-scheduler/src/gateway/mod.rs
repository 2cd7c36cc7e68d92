//! The HTTP gateway (feature `gateway`): an OpenAI-compatible reverse proxy that picks an
//! endpoint per request with the [`Scheduler`] and streams the response through.
//!
//! - Picks use the endpoints' scraped metrics (`vllm:` names; a background task scrapes
//!   each endpoint's `/metrics` at a set interval and marks metrics older than the
//!   staleness limit as unknown).
//! - Responses stream through unbuffered, SSE included.
//! - A connection failure before any byte was sent retries on another endpoint.
//! - No fitting endpoint gives an OpenAI-style 503.
//! - For P/D picks the prefill endpoint travels in `x-prefiller-host-port`, llm-d's
//!   header for the routing sidecar.
//! - `/metrics` exports the gateway's own counters: picks per endpoint, pick latency,
//!   retries.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::endpoint::Endpoint;
use crate::error::SchedulerError;
use crate::request::LlmRequest;
use crate::scheduler::PickResult;
use crate::scheduler::Scheduler;
use crate::scrape;

#[cfg(feature = "ext-proc")]
pub mod extproc;

/// The header naming the prefill endpoint of a disaggregated request (llm-d's).
pub const PREFILL_HEADER: &str = "x-prefiller-host-port";
/// The header the gateway reports its pick in (llm-d's destination header).
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How often to scrape each endpoint's `/metrics`.
    pub scrape_interval: Duration,
    /// Metrics older than this are treated as unknown (zero load).
    pub staleness: Duration,
    /// Attempts per request when endpoints refuse connections.
    pub max_attempts: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            scrape_interval: Duration::from_millis(200),
            staleness: Duration::from_secs(5),
            max_attempts: 3,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

struct Metrics {
    picks: Family<EndpointLabel, Counter>,
    retries: Counter,
    pick_seconds: Histogram,
    index_blocks: prometheus_client::metrics::gauge::Gauge,
    event_lag: Histogram,
    registry: Registry,
}

/// Turns an OpenAI request body into the prompt token ids the engine will see (the
/// precise prefix scorer hashes them). `path` tells completions from chat.
pub trait PromptTokenizer: Send + Sync {
    /// The token ids, or `None` when the body cannot be tokenized.
    fn tokenize(&self, path: &str, body: &Value) -> Option<Vec<u32>>;
}

/// Shared gateway state.
pub struct Gateway {
    scheduler: Scheduler,
    tokenizer: Option<Arc<dyn PromptTokenizer>>,
    // Whether a configured scorer reads token ids (only then is tokenizing worth it).
    needs_tokens: bool,
    endpoints: RwLock<Vec<Endpoint>>,
    client: reqwest::Client,
    cfg: GatewayConfig,
    origin: Instant,
    metrics: Metrics,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("scheduler", &self.scheduler).finish_non_exhaustive()
    }
}

fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"message": message.into(), "type": kind, "param": null, "code": status.as_u16()}});
    (status, axum::Json(body)).into_response()
}

/// The prompt text of an OpenAI request body, for prefix scoring.
fn prompt_text(body: &Value) -> String {
    if let Some(p) = body.get("prompt") {
        return match p {
            Value::String(s) => s.clone(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        };
    }
    let mut out = String::new();
    for m in body.get("messages").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = m.get("role").and_then(Value::as_str) {
            out.push_str(r);
            out.push('\n');
        }
        match m.get("content") {
            Some(Value::String(s)) => out.push_str(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        out.push_str(t);
                    }
                }
            }
            _ => {}
        }
        out.push('\n');
    }
    out
}

fn token_ids(body: &Value) -> Option<Vec<u32>> {
    body.get("prompt")?.as_array()?.iter().map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok())).collect()
}

impl Gateway {
    /// A gateway over `endpoints`.
    pub fn new(scheduler: Scheduler, endpoints: Vec<Endpoint>, cfg: GatewayConfig) -> Arc<Self> {
        Self::with_tokenizer(scheduler, endpoints, cfg, None)
    }

    /// A gateway that tokenizes prompts for precise prefix scoring.
    pub fn with_tokenizer(
        scheduler: Scheduler,
        endpoints: Vec<Endpoint>,
        cfg: GatewayConfig,
        tokenizer: Option<Arc<dyn PromptTokenizer>>,
    ) -> Arc<Self> {
        let mut registry = Registry::default();
        let picks = Family::<EndpointLabel, Counter>::default();
        let retries = Counter::default();
        let pick_seconds = Histogram::new([1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2]);
        registry.register("llmd_epp_picks", "Requests routed, by endpoint", picks.clone());
        registry.register("llmd_epp_retries", "Requests retried on another endpoint", retries.clone());
        registry.register("llmd_epp_pick_duration_seconds", "Time to pick an endpoint", pick_seconds.clone());
        let index_blocks = prometheus_client::metrics::gauge::Gauge::default();
        let event_lag = Histogram::new([1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]);
        registry.register("llmd_epp_kv_index_blocks", "Blocks in the precise prefix index", index_blocks.clone());
        registry.register(
            "llmd_epp_kv_event_lag_seconds",
            "Delay from an engine's KV event batch to its indexing",
            event_lag.clone(),
        );
        let needs_tokens = scheduler.config().plugins.values().any(|h| h.kv_events.is_some());
        Arc::new(Gateway {
            scheduler,
            tokenizer,
            needs_tokens,
            endpoints: RwLock::new(endpoints),
            client: reqwest::Client::new(),
            cfg,
            origin: Instant::now(),
            metrics: Metrics { picks, retries, pick_seconds, index_blocks, event_lag, registry },
        })
    }

    /// The routes: the OpenAI API (proxied), `/v1/models`, `/health`, `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/completions", post(proxy))
            .route("/v1/chat/completions", post(proxy))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { StatusCode::OK }))
            .route("/metrics", get(own_metrics))
            .with_state(self.clone())
    }

    /// Serves [`Gateway::router`] on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // The gateway relays token streams as small writes: without TCP_NODELAY, Nagle
        // holds each until the previous is acknowledged, adding milliseconds to TTFT.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown).await
    }

    /// Current endpoints (with their latest metrics).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Scrapes every endpoint once.
    pub async fn scrape_once(&self) {
        let targets: Vec<(String, String)> =
            self.endpoints().iter().map(|e| (e.id.clone(), e.address.clone())).collect();
        for (id, addr) in targets {
            let now = self.origin.elapsed();
            let res = self.client.get(format!("http://{addr}/metrics")).timeout(Duration::from_secs(2)).send().await;
            let text = match res {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            let mut eps = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = eps.iter_mut().find(|e| e.id == id) {
                match text {
                    Some(t) => {
                        e.metrics = scrape::parse(&t).metrics;
                        e.metrics.updated_at = Some(now);
                    }
                    None => tracing::debug!(endpoint = %id, "metrics scrape failed"),
                }
                // Stale numbers would steer traffic by a picture that no longer holds.
                if e.metrics.updated_at.is_some_and(|t| now.saturating_sub(t) > self.cfg.staleness) {
                    e.metrics = Default::default();
                }
            }
        }
    }

    /// Subscribes to the KV event stream of every endpoint that has one, feeding the
    /// configured plugins that consume events. Needs a tokio runtime.
    ///
    /// Returns the subscriber tasks: abort them when the endpoints go away, or their
    /// sockets keep reconnecting.
    pub fn start_kv_subscribers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let consumers: Vec<Arc<dyn crate::plugin::KvEventConsumer>> =
            self.scheduler.config().plugins.values().filter_map(|h| h.kv_events.clone()).collect();
        if consumers.is_empty() {
            return Vec::new();
        }
        self.endpoints()
            .into_iter()
            .filter_map(|e| {
                let zmq = e.kv_events.clone()?;
                Some(tokio::spawn(subscribe(self.clone(), e.id.clone(), zmq, consumers.clone())))
            })
            .collect()
    }

    /// Picks for an OpenAI request body arriving at `path` with `headers` (lower-case
    /// names). Errors carry the HTTP status to answer with.
    pub fn pick_for(
        &self,
        path: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: &Value,
        exclude: &HashSet<String>,
    ) -> Result<PickResult, (u16, String)> {
        let mut req = LlmRequest::new(
            headers.get("x-request-id").cloned().unwrap_or_default(),
            body.get("model").and_then(Value::as_str).unwrap_or_default(),
            prompt_text(body),
        );
        // Tokenizing costs far more than a pick: only when a scorer needs token ids.
        req.token_ids = token_ids(body).or_else(|| {
            self.needs_tokens.then(|| self.tokenizer.as_ref().and_then(|t| t.tokenize(path, body))).flatten()
        });
        req.headers = headers.clone();
        let started = Instant::now();
        // Pick under the read lock; copy the endpoint list only when some are excluded.
        let result = {
            let all = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
            if exclude.is_empty() {
                self.scheduler.pick(&req, &all)
            } else {
                let eps: Vec<Endpoint> = all.iter().filter(|e| !exclude.contains(&e.id)).cloned().collect();
                self.scheduler.pick(&req, &eps)
            }
        };
        self.metrics.pick_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(p) => {
                if let Some(d) = p.destination() {
                    self.metrics.picks.get_or_create(&EndpointLabel { endpoint: d.endpoint.clone() }).inc();
                }
                Ok(p)
            }
            Err(SchedulerError::NoEndpoint(m)) => Err((503, m)),
            Err(e) => Err((400, e.to_string())),
        }
    }

    /// Scrapes forever at the configured interval.
    pub async fn scrape_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.scrape_interval);
        loop {
            tick.tick().await;
            self.scrape_once().await;
        }
    }
}

async fn models(State(g): State<Arc<Gateway>>) -> Response {
    // Every endpoint serves the same model; ask the first that answers.
    for e in g.endpoints() {
        if let Ok(r) = g.client.get(format!("http://{}/v1/models", e.address)).send().await
            && r.status().is_success()
            && let Ok(b) = r.bytes().await
        {
            return ([(header::CONTENT_TYPE, "application/json")], b).into_response();
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError", "no endpoint answered")
}

async fn own_metrics(State(g): State<Arc<Gateway>>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &g.metrics.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", e.to_string());
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}

async fn proxy(State(g): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "BadRequestError", format!("request body is not valid JSON: {e}"));
        }
    };
    let header_map: std::collections::BTreeMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let mut excluded: HashSet<String> = HashSet::new();
    let mut last_err = String::new();
    for attempt in 0..g.cfg.max_attempts.max(1) {
        let pick = match g.pick_for(uri.path(), &header_map, &parsed, &excluded) {
            Ok(p) => p,
            Err((503, m)) => {
                let msg = if last_err.is_empty() { m } else { format!("{m} (after: {last_err})") };
                return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError", msg);
            }
            Err((_, m)) => return error(StatusCode::BAD_REQUEST, "BadRequestError", m),
        };
        let Some(dest) = pick.destination().cloned() else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailableError", "no destination");
        };
        let mut out = g
            .client
            .post(format!("http://{}{}", dest.address, uri.path()))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        for (k, v) in &headers {
            if k == header::HOST || k == header::CONTENT_LENGTH || k == header::CONTENT_TYPE {
                continue;
            }
            out = out.header(k, v);
        }
        if let Some(pf) = pick.picks.get("prefill").filter(|_| pick.primary != "prefill") {
            out = out.header(PREFILL_HEADER, pf.address.as_str());
        }
        match out.send().await {
            Ok(resp) => {
                let mut builder = Response::builder().status(resp.status().as_u16());
                for (k, v) in resp.headers() {
                    if k != header::CONTENT_LENGTH && k != header::TRANSFER_ENCODING && k != header::CONNECTION {
                        builder = builder.header(k.as_str(), v.as_bytes());
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&dest.address) {
                    builder = builder.header(DESTINATION_HEADER, v);
                }
                return builder
                    .body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|e| error(StatusCode::BAD_GATEWAY, "BadGatewayError", e.to_string()));
            }
            // Nothing was sent to the client yet: another endpoint may take it.
            Err(e) if e.is_connect() || e.is_request() => {
                tracing::warn!(endpoint = %dest.endpoint, attempt, error = %e, "endpoint unreachable; retrying elsewhere");
                g.metrics.retries.inc();
                last_err = format!("{}: {e}", dest.endpoint);
                excluded.insert(dest.endpoint);
            }
            Err(e) => return error(StatusCode::BAD_GATEWAY, "BadGatewayError", format!("{}: {e}", dest.endpoint)),
        }
    }
    error(StatusCode::BAD_GATEWAY, "BadGatewayError", format!("every attempt failed; last: {last_err}"))
}

/// Reads one endpoint's KV event stream into the consumers until it ends.
async fn subscribe(
    gw: Arc<Gateway>,
    endpoint: String,
    zmq: String,
    consumers: Vec<Arc<dyn crate::plugin::KvEventConsumer>>,
) {
    use zeromq::{Socket, SocketRecv};
    let mut sock = zeromq::SubSocket::new();
    if let Err(e) = sock.connect(&zmq).await {
        tracing::warn!(%endpoint, %zmq, error = %e, "cannot subscribe to KV events");
        return;
    }
    if let Err(e) = sock.subscribe("").await {
        tracing::warn!(%endpoint, error = %e, "KV event subscription failed");
        return;
    }
    tracing::info!(%endpoint, %zmq, "subscribed to KV events");
    loop {
        let msg = match sock.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%endpoint, error = %e, "KV event stream ended");
                return;
            }
        };
        let frames = msg.into_vec();
        // (topic, seq, payload) as vLLM publishes; a bare payload is accepted too.
        let (seq, payload) = match frames.as_slice() {
            [_, seq, payload] if seq.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(seq);
                (Some(u64::from_be_bytes(b)), payload)
            }
            [.., payload] => (None, payload),
            [] => continue,
        };
        match llmd_kvcache::codec::decode_batch(payload) {
            Ok(batch) => {
                for c in &consumers {
                    c.apply(&endpoint, seq, &batch);
                }
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                gw.metrics.event_lag.observe((now - batch.ts).max(0.0));
                gw.metrics.index_blocks.set(consumers.iter().map(|c| c.blocks()).sum::<usize>() as i64);
            }
            Err(e) => tracing::warn!(%endpoint, error = %e, "undecodable KV event batch"),
        }
    }
}
