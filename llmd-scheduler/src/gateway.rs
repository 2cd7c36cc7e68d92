//! The HTTP gateway (feature `gateway`): an OpenAI-compatible reverse proxy over the
//! [picker core](crate::picker).
//!
//! - Responses stream through unbuffered, SSE included; the request counts as in flight
//!   on its endpoint until the last byte has passed (or the client went away).
//! - A connection failure, an endpoint silent past the first-byte timeout (see
//!   [`GatewayConfig::first_byte_timeout`]) or a 429 from a full endpoint retries on
//!   another endpoint (up to `max_attempts`); when none is left, the last 429 is the
//!   answer. Failures are reported to the picker, which ejects endpoints failing in a
//!   row ([`crate::health`]).
//! - A stream silent past the idle timeout or broken off by its endpoint ends with an
//!   OpenAI error event and `[DONE]`.
//! - `/health` is readiness: 503 while no endpoint serves, or while draining
//!   ([`Gateway::begin_drain`]); [`Gateway::cut_streams`] ends the streams left at the
//!   drain deadline with an error event.
//! - No fitting endpoint gives an OpenAI-style 503; a body that cannot be routed, 400.
//! - For P/D picks the prefill endpoint travels in `x-prefiller-host-port`, llm-d's
//!   header for the routing sidecar. Clients cannot set it, nor any other routing
//!   header ([`ROUTING_HEADERS`](crate::picker::ROUTING_HEADERS)); hop-by-hop headers
//!   (and those `Connection` names) are dropped both ways. The destination goes back to
//!   the client only with [`GatewayConfig::expose_destination`].
//! - `/metrics` exports the picker's own metrics.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use llmd_openai::{ErrorBody, ErrorKind};
use tokio::sync::watch;

use crate::health::Failure;
use crate::picker::{DESTINATION_HEADER, EndpointPicker, InFlightGuard, PREFILL_HEADER, is_routing_header, parse_body};
use crate::plugin::ProfilePick;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Attempts per request, the first included (the retry budget): a refused
    /// connection, a 429 or an endpoint silent past the first-byte timeout moves the
    /// request to another endpoint while attempts are left.
    pub max_attempts: usize,
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// Time for an endpoint to send its response headers. A stream's come at once, so
    /// past this the endpoint counts as dead and the request moves on; a non-stream
    /// reply's come with the whole completion, so past this the endpoint's health path
    /// is asked, and only a failing one counts as dead.
    pub first_byte_timeout: Duration,
    /// Longest time for a live endpoint to start a non-stream reply; past it the client
    /// gets a 504.
    pub response_timeout: Duration,
    /// Longest silence between two chunks of a response; past it the stream ends with
    /// an error event.
    pub stream_idle_timeout: Duration,
    /// Tell clients which endpoint served them (`x-gateway-destination-endpoint` on the
    /// response). Off by default: it shows internal addresses.
    pub expose_destination: bool,
    /// Require `Authorization: Bearer <key>` on `/v1/...` (vLLM's `--api-key`).
    pub api_key: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_attempts: 3,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(60),
            expose_destination: false,
            api_key: None,
        }
    }
}

/// The HTTP front end.
pub struct Gateway {
    picker: Arc<EndpointPicker>,
    client: reqwest::Client,
    cfg: GatewayConfig,
    // Minting ids for requests that come without one.
    next_id: std::sync::atomic::AtomicU64,
    started_nanos: u64,
    // Shutting down: not ready, no new requests.
    draining: AtomicBool,
    // Set at the drain deadline: streams still running end with an error event.
    cut: watch::Sender<bool>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("picker", &self.picker).finish_non_exhaustive()
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    ErrorBody::new(kind, message).into_response()
}

/// Flow control's or an admitter's refusal: its status, the router's
/// `x-llm-d-request-dropped-reason` header, and its message in OpenAI's error shape.
fn flow_rejection(r: &crate::flowcontrol::FlowRejection) -> Response {
    let mut resp = ErrorBody::from_status(r.status(), r.body()).into_response();
    if let Some(reason) = r.reason
        && let Ok(v) = HeaderValue::from_str(reason)
    {
        resp.headers_mut().insert("x-llm-d-request-dropped-reason", v);
    }
    resp
}

impl Gateway {
    // A request id for a request that came without one: unique within the process and
    // across restarts (start time, then a counter).
    fn mint_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("llmd-{:x}-{n:x}", self.started_nanos)
    }

    /// A gateway over `picker`.
    pub fn new(picker: Arc<EndpointPicker>, cfg: GatewayConfig) -> Arc<Self> {
        let client = reqwest::Client::builder().connect_timeout(cfg.connect_timeout).build().unwrap_or_default();
        let started_nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Arc::new(Gateway {
            picker,
            client,
            cfg,
            draining: AtomicBool::new(false),
            cut: watch::channel(false).0,
            next_id: std::sync::atomic::AtomicU64::new(0),
            started_nanos,
        })
    }

    /// Starts draining: `/health` answers 503 (load balancers stop sending), new
    /// requests get a 503, requests in flight go on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ends every response still streaming with an error event (the drain deadline).
    pub fn cut_streams(&self) {
        self.cut.send_replace(true);
    }

    /// Ready to take requests: not draining, and some endpoint serving.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.picker.datastore().serving() > 0
    }

    /// The picker core.
    pub fn picker(&self) -> &Arc<EndpointPicker> {
        &self.picker
    }

    /// The routes: the OpenAI API (proxied), `/v1/models`, `/health`, `/metrics`.
    pub fn router(self: &Arc<Self>) -> Router {
        let router = Router::new()
            .route("/v1/completions", post(proxy))
            .route("/v1/chat/completions", post(proxy))
            // The other APIs llm-d-router's default parsers take: Anthropic's Messages,
            // vLLM's token-in generate, and the OpenAI ones engines serve beside chat.
            .route("/v1/messages", post(proxy))
            .route("/v1/messages/count_tokens", post(proxy))
            .route("/inference/v1/generate", post(proxy))
            .route("/v1/embeddings", post(proxy))
            .route("/v1/responses", post(proxy))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/metrics", get(own_metrics))
            .with_state(self.clone())
            // 404, 405, 413 and the like in the same OpenAI shape as every other error.
            .layer(axum::middleware::map_response(llmd_openai::http::json_errors));
        match &self.cfg.api_key {
            Some(key) => llmd_openai::http::require_api_key(router, key.clone()),
            None => router,
        }
    }

    /// Serves [`Gateway::router`] on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: &Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Relayed token streams are small writes: TCP_NODELAY (see `http::serve`).
        llmd_openai::http::serve(listener, self.router(), shutdown).await
    }
}

async fn models(State(g): State<Arc<Gateway>>) -> Response {
    // Every endpoint serves the same model; ask the first ready one that answers.
    for e in g.picker.datastore().snapshot().into_iter().filter(|e| e.is_serving()) {
        if let Ok(r) =
            g.client.get(format!("http://{}/v1/models", e.address)).timeout(Duration::from_secs(5)).send().await
            && r.status().is_success()
            && let Ok(b) = r.bytes().await
        {
            return ([(header::CONTENT_TYPE, "application/json")], b).into_response();
        }
    }
    error(ErrorKind::ServiceUnavailable, "no endpoint answered")
}

// Readiness, for the load balancer in front: 503 while no endpoint serves or while
// draining.
async fn health(State(g): State<Arc<Gateway>>) -> Response {
    if g.draining.load(Ordering::Relaxed) {
        return error(ErrorKind::ServiceUnavailable, "the gateway is shutting down");
    }
    if g.picker.datastore().serving() == 0 {
        return error(ErrorKind::ServiceUnavailable, "no endpoint is serving");
    }
    StatusCode::OK.into_response()
}

async fn own_metrics(State(g): State<Arc<Gateway>>) -> Response {
    match g.picker.metrics_text() {
        Ok(out) => ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out)
            .into_response(),
        Err(e) => error(ErrorKind::InternalServer, e.to_string()),
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 and the ones proxies have always treated so):
/// they describe one connection and are never forwarded.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers of `headers` that may cross the gateway: not hop-by-hop (nor named in
/// `Connection`), not framing the gateway redoes (`Host`, `Content-Length`), and not a
/// routing header only the picker may set.
fn forwardable(headers: &HeaderMap) -> impl Iterator<Item = (&header::HeaderName, &HeaderValue)> {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .collect();
    headers.iter().filter(move |(k, _)| {
        let k = k.as_str();
        !(HOP_BY_HOP.contains(&k)
            || named.iter().any(|n| n == k)
            || k == "host"
            || k == "content-length"
            || is_routing_header(k))
    })
}

/// What waiting for an endpoint's response headers came to.
enum Waited {
    /// It answered (or the connection failed).
    Answer(reqwest::Result<reqwest::Response>),
    /// Nothing by the first-byte timeout, and it is not alive: try another.
    Dead(String),
    /// Alive, but no answer by the response timeout.
    TooSlow(String),
}

impl Gateway {
    // A stream's headers come at once (vLLM and llmd send them before the first token),
    // so a silent stream past the first-byte timeout is a dead endpoint. A non-stream
    // reply's headers come only with the whole completion: past the first-byte timeout
    // the endpoint's health path decides between dead (retry elsewhere: nothing has
    // reached the client) and busy (wait up to the response timeout).
    async fn wait_headers(
        &self,
        endpoint: &str,
        address: &str,
        streaming: bool,
        send: impl std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Waited {
        tokio::pin!(send);
        let first = self.cfg.first_byte_timeout.min(self.cfg.response_timeout);
        if let Ok(r) = tokio::time::timeout(first, &mut send).await {
            return Waited::Answer(r);
        }
        let silent = format!("{endpoint} sent no response headers within {first:?}");
        if streaming {
            return Waited::Dead(silent);
        }
        let alive = {
            let h = self.picker.health_config();
            let probe = self.client.get(format!("http://{address}{}", h.check_path)).timeout(h.check_timeout).send();
            tokio::select! {
                r = &mut send => return Waited::Answer(r),
                p = probe => matches!(p, Ok(r) if r.status().is_success()),
            }
        };
        if !alive {
            return Waited::Dead(format!("{silent} and its health check fails"));
        }
        match tokio::time::timeout(self.cfg.response_timeout.saturating_sub(first), send).await {
            Ok(r) => Waited::Answer(r),
            Err(_) => Waited::TooSlow(format!("{endpoint} did not answer within {:?}", self.cfg.response_timeout)),
        }
    }
}

async fn proxy(State(g): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    if g.draining.load(Ordering::Relaxed) {
        return error(ErrorKind::ServiceUnavailable, "the gateway is shutting down");
    }
    let reads_body = match g.picker.reads_body(uri.path()) {
        Ok(r) => r,
        Err(e) => return ErrorBody::from_status(e.http_status(), e.to_string()).into_response(),
    };
    let parsed = match parse_body(&body) {
        Ok(v) => v,
        // A path the passthrough parser takes (the body is the backend's business), or a
        // gRPC parser's (it reads the protobuf).
        Err(_) if !reads_body || g.picker.reads_grpc(uri.path()) => serde_json::Value::Null,
        Err(e) => return error(ErrorKind::BadRequest, e.to_string()),
    };
    let streaming = parsed.get("stream").and_then(serde_json::Value::as_bool).unwrap_or(false);
    let mut header_map: BTreeMap<String, String> = forwardable(&headers)
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    // Every request gets an id, as Envoy gives one (plugins key per-request state by it:
    // latency training, burst windows); the engine sees the same id.
    let minted = (!header_map.contains_key("x-request-id")).then(|| g.mint_request_id());
    if let Some(id) = &minted {
        header_map.insert("x-request-id".into(), id.clone());
    }
    let req = match g.picker.parse_request_raw(uri.path(), &header_map, &parsed, &body).await {
        Ok(r) => r,
        Err(e) => return ErrorBody::from_status(e.http_status(), e.to_string()).into_response(),
    };
    // Flow control and admitters; the permit travels with the response.
    let mut permit = match g.picker.admit(&req, body.len() as u64).await {
        Ok(p) => p,
        Err(rejected) => return flow_rejection(&rejected),
    };
    g.picker.burst_join(&req).await;
    let mut excluded: HashSet<String> = HashSet::new();
    let mut last_err = String::new();
    // The status that failure would answer with (504 for a silent endpoint, 503 for a
    // refused connection, as Envoy answers); a 429 is kept whole in `busy` instead.
    let mut last_status: Option<u16> = None;
    // The last 429 seen: the answer when no other endpoint is left to try.
    let mut busy: Option<(reqwest::Response, ProfilePick, InFlightGuard, BTreeMap<String, String>)> = None;
    // The retry budget: every attempt, the first included, spends one.
    let attempts = g.cfg.max_attempts.max(1);
    for attempt in 0..attempts {
        let picked = match g.picker.pick_request(&req, &excluded) {
            Ok(p) => p,
            Err(_) if busy.is_some() => {
                let Some((resp, dest, inflight, extra)) = busy.take() else { break };
                return relay(&g, resp, dest, inflight, permit.take(), extra);
            }
            // Nothing left to try: after failed attempts, their failure is the answer.
            Err(e) => {
                return match last_status {
                    Some(status) => ErrorBody::from_status(status, format!("{last_err} (then: {e})")).into_response(),
                    None => ErrorBody::from_status(e.http_status(), e.to_string()).into_response(),
                };
            }
        };
        let prefill = picked.prefill_address().map(String::from);
        let (result, inflight) = picked.into_parts();
        if attempt == 0 {
            g.picker.replicate(uri.path(), &parsed, &req, &result);
        }
        let Some(dest) = result.destination().cloned() else {
            return error(ErrorKind::ServiceUnavailable, "no destination");
        };
        let mut out = g.client.post(format!("http://{}{}", dest.address, uri.path())).body(body.clone());
        for (k, v) in forwardable(&headers) {
            out = out.header(k, v);
        }
        if let Some(id) = &minted {
            out = out.header("x-request-id", id.as_str());
        }
        if !headers.contains_key(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(pf) = &prefill {
            out = out.header(PREFILL_HEADER, pf.as_str());
        }
        // The profile handler's own (data parallelism's rank); clients' copies were dropped.
        for (k, v) in &result.headers {
            out = out.header(k.as_str(), v.as_str());
        }
        let sent = match g.wait_headers(&dest.endpoint, &dest.address, streaming, out.send()).await {
            Waited::Answer(r) => r,
            Waited::Dead(msg) => {
                tracing::warn!(endpoint = %dest.endpoint, attempt, "{msg}; retrying elsewhere");
                g.picker.record_failure(&dest.endpoint, Failure::Timeout);
                g.picker.record_retry();
                last_err = msg;
                last_status = Some(504);
                excluded.insert(dest.endpoint);
                continue;
            }
            Waited::TooSlow(msg) => {
                g.picker.record_failure(&dest.endpoint, Failure::Timeout);
                return error(ErrorKind::GatewayTimeout, msg);
            }
        };
        match sent {
            // A full endpoint (429) has taken nothing: another may take the request.
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS && attempt + 1 < attempts => {
                tracing::info!(endpoint = %dest.endpoint, attempt, "endpoint overloaded (429); retrying elsewhere");
                g.picker.record_success(&dest.endpoint);
                g.picker.record_retry();
                last_err = format!("{}: 429 Too Many Requests", dest.endpoint);
                excluded.insert(dest.endpoint.clone());
                let extra = g.picker.response_headers(&req, &result, None);
                busy = Some((resp, dest, inflight, extra));
            }
            Ok(resp) => {
                g.picker.record_success(&dest.endpoint);
                return relay(&g, resp, dest, inflight, permit.take(), g.picker.response_headers(&req, &result, None));
            }
            // Nothing was sent to the client yet: another endpoint may take it.
            Err(e) if e.is_connect() || e.is_request() => {
                tracing::warn!(endpoint = %dest.endpoint, attempt, error = %e, "endpoint unreachable; retrying elsewhere");
                g.picker.record_failure(&dest.endpoint, Failure::Connect);
                g.picker.record_retry();
                last_err = format!("{}: {e}", dest.endpoint);
                last_status = Some(503);
                excluded.insert(dest.endpoint);
            }
            Err(e) => {
                g.picker.record_failure(&dest.endpoint, Failure::Cut);
                return error(ErrorKind::BadGateway, format!("{}: {e}", dest.endpoint));
            }
        }
    }
    if let Some((resp, dest, inflight, extra)) = busy {
        return relay(&g, resp, dest, inflight, permit.take(), extra);
    }
    ErrorBody::from_status(last_status.unwrap_or(502), format!("every attempt failed; last: {last_err}"))
        .into_response()
}

/// What the relay does next.
enum Next {
    Evicted,
    Chunk(Bytes),
    End,
    Failed(String),
    Idle,
    Cut,
}

// Resolves when the gateway cuts its streams (never, once the gateway is gone).
async fn cut_signal(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The end of an event stream that broke: an OpenAI error event, then `[DONE]`, as
/// vLLM ends a stream whose generation failed.
fn error_event(kind: ErrorKind, message: String) -> Bytes {
    Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", ErrorBody::new(kind, message).to_json()))
}

/// Streams the endpoint's response through, holding the in-flight count until the body
/// ends or the client goes away (dropping the stream drops the guard). A body silent
/// past the idle timeout, cut by the endpoint, or still running when the gateway cuts
/// its streams at the drain deadline ends with an error event when it is an event
/// stream (and is aborted otherwise: a truncated JSON body must not look whole).
fn relay(
    g: &Arc<Gateway>,
    resp: reqwest::Response,
    dest: ProfilePick,
    mut inflight: InFlightGuard,
    permit: Option<crate::flowcontrol::gate::FlowPermit>,
    extra: BTreeMap<String, String>,
) -> Response {
    inflight.hold(permit);
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in forwardable(resp.headers()) {
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    // Request-control plugins' response headers (a session token, say).
    for (k, v) in &extra {
        builder = builder.header(k.as_str(), v.as_str());
    }
    if g.cfg.expose_destination
        && let Ok(v) = HeaderValue::from_str(&dest.address)
    {
        builder = builder.header(DESTINATION_HEADER, v);
    }
    let sse = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    struct State {
        body: futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>,
        inflight: InFlightGuard,
        gateway: Arc<Gateway>,
        endpoint: String,
        cut: watch::Receiver<bool>,
        started: bool,
        done: bool,
        sse: bool,
    }
    let state = State {
        body: resp.bytes_stream().boxed(),
        inflight,
        gateway: g.clone(),
        endpoint: dest.endpoint,
        cut: g.cut.subscribe(),
        started: false,
        done: false,
        sse,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let idle = s.gateway.cfg.stream_idle_timeout;
        let next = tokio::select! {
            biased;
            _ = cut_signal(&mut s.cut) => Next::Cut,
            _ = s.inflight.evicted() => Next::Evicted,
            r = tokio::time::timeout(idle, s.body.next()) => match r {
                Ok(Some(Ok(b))) => Next::Chunk(b),
                Ok(Some(Err(e))) => Next::Failed(e.to_string()),
                Ok(None) => Next::End,
                Err(_) => Next::Idle,
            },
        };
        let (kind, message) = match next {
            Next::Chunk(b) => {
                // The first chunk means the prompt is prefilled (the guard itself lives
                // until the stream is dropped).
                if !std::mem::replace(&mut s.started, true) {
                    s.inflight.first_byte();
                }
                s.inflight.chunk();
                return Some((Ok(b), s));
            }
            Next::End => {
                s.inflight.complete(None);
                return None;
            }
            Next::Failed(e) => {
                s.gateway.picker.record_failure(&s.endpoint, Failure::Cut);
                (ErrorKind::BadGateway, format!("{} broke off the response: {e}", s.endpoint))
            }
            Next::Idle => {
                s.gateway.picker.record_failure(&s.endpoint, Failure::Cut);
                (ErrorKind::GatewayTimeout, format!("{} sent nothing for {idle:?}", s.endpoint))
            }
            Next::Cut => (ErrorKind::ServiceUnavailable, "the gateway is shutting down".to_string()),
            Next::Evicted => (ErrorKind::RateLimit, crate::flowcontrol::FlowRejection::evicted().body()),
        };
        tracing::warn!(endpoint = %s.endpoint, "{message}");
        s.done = true;
        if s.sse { Some((Ok(error_event(kind, message)), s)) } else { Some((Err(std::io::Error::other(message)), s)) }
    });
    builder.body(Body::from_stream(stream)).unwrap_or_else(|e| error(ErrorKind::BadGateway, e.to_string()))
}
