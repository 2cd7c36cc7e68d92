//! The HTTP gateway (feature `gateway`): an OpenAI-compatible reverse proxy over the
//! [picker core](crate::picker).
//!
//! - Responses stream through unbuffered, SSE included; the request counts as in flight
//!   on its endpoint until the last byte has passed (or the client went away).
//! - A connection failure before any byte was sent, or a 429 from a full endpoint,
//!   retries on another endpoint (up to `max_attempts`); when none is left, the last
//!   429 is the answer.
//! - No fitting endpoint gives an OpenAI-style 503; a body that cannot be routed, 400.
//! - For P/D picks the prefill endpoint travels in `x-prefiller-host-port`, llm-d's
//!   header for the routing sidecar. Clients cannot set it, nor any other routing
//!   header ([`ROUTING_HEADERS`](crate::picker::ROUTING_HEADERS)); hop-by-hop headers
//!   (and those `Connection` names) are dropped both ways. The destination goes back to
//!   the client only with [`GatewayConfig::expose_destination`].
//! - `/metrics` exports the picker's own metrics.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use llmd_openai::{ErrorBody, ErrorKind};

use crate::picker::{DESTINATION_HEADER, EndpointPicker, InFlightGuard, PREFILL_HEADER, is_routing_header, parse_body};

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Attempts per request when endpoints refuse connections.
    pub max_attempts: usize,
    /// Time to connect to an endpoint.
    pub connect_timeout: Duration,
    /// Time for an endpoint to start its response (status and headers) once it has the
    /// request; past it the client gets a 504. Streams then run as long as they last.
    pub response_timeout: Duration,
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
            response_timeout: Duration::from_secs(300),
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
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("picker", &self.picker).finish_non_exhaustive()
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    ErrorBody::new(kind, message).into_response()
}

impl Gateway {
    /// A gateway over `picker`.
    pub fn new(picker: Arc<EndpointPicker>, cfg: GatewayConfig) -> Arc<Self> {
        let client = reqwest::Client::builder().connect_timeout(cfg.connect_timeout).build().unwrap_or_default();
        Arc::new(Gateway { picker, client, cfg })
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
            .route("/v1/models", get(models))
            .route("/health", get(|| async { StatusCode::OK }))
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
    for e in g.picker.datastore().snapshot().into_iter().filter(|e| e.is_ready()) {
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

async fn proxy(State(g): State<Arc<Gateway>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = match parse_body(&body) {
        Ok(v) => v,
        Err(e) => return error(ErrorKind::BadRequest, e.to_string()),
    };
    let header_map: BTreeMap<String, String> = forwardable(&headers)
        .filter_map(|(k, v)| Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_string())))
        .collect();
    let req = g.picker.parse_request(uri.path(), &header_map, &parsed);
    let mut excluded: HashSet<String> = HashSet::new();
    let mut last_err = String::new();
    // The last 429 seen: the answer when no other endpoint is left to try.
    let mut busy: Option<(reqwest::Response, String, InFlightGuard)> = None;
    let attempts = g.cfg.max_attempts.max(1);
    for attempt in 0..attempts {
        let picked = match g.picker.pick_request(&req, &excluded) {
            Ok(p) => p,
            Err(_) if busy.is_some() => {
                let Some((resp, address, inflight)) = busy.take() else { break };
                return relay(resp, g.cfg.expose_destination.then_some(address.as_str()), inflight);
            }
            Err(e) => {
                let msg = if last_err.is_empty() { e.to_string() } else { format!("{e} (after: {last_err})") };
                return ErrorBody::from_status(e.http_status(), msg).into_response();
            }
        };
        let prefill = picked.prefill_address().map(String::from);
        let (result, inflight) = picked.into_parts();
        let Some(dest) = result.destination().cloned() else {
            return error(ErrorKind::ServiceUnavailable, "no destination");
        };
        let mut out = g.client.post(format!("http://{}{}", dest.address, uri.path())).body(body.clone());
        for (k, v) in forwardable(&headers) {
            out = out.header(k, v);
        }
        if !headers.contains_key(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(pf) = &prefill {
            out = out.header(PREFILL_HEADER, pf.as_str());
        }
        let sent = match tokio::time::timeout(g.cfg.response_timeout, out.send()).await {
            Ok(r) => r,
            Err(_) => {
                let msg = format!("{} did not answer within {:?}", dest.endpoint, g.cfg.response_timeout);
                return error(ErrorKind::GatewayTimeout, msg);
            }
        };
        let shown = g.cfg.expose_destination.then_some(dest.address.as_str());
        match sent {
            // A full endpoint (429) has taken nothing: another may take the request.
            Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS && attempt + 1 < attempts => {
                tracing::info!(endpoint = %dest.endpoint, attempt, "endpoint overloaded (429); retrying elsewhere");
                g.picker.record_retry();
                last_err = format!("{}: 429 Too Many Requests", dest.endpoint);
                excluded.insert(dest.endpoint.clone());
                busy = Some((resp, dest.address.clone(), inflight));
            }
            Ok(resp) => return relay(resp, shown, inflight),
            // Nothing was sent to the client yet: another endpoint may take it.
            Err(e) if e.is_connect() || e.is_request() => {
                tracing::warn!(endpoint = %dest.endpoint, attempt, error = %e, "endpoint unreachable; retrying elsewhere");
                g.picker.record_retry();
                last_err = format!("{}: {e}", dest.endpoint);
                excluded.insert(dest.endpoint);
            }
            Err(e) => return error(ErrorKind::BadGateway, format!("{}: {e}", dest.endpoint)),
        }
    }
    if let Some((resp, address, inflight)) = busy {
        return relay(resp, g.cfg.expose_destination.then_some(address.as_str()), inflight);
    }
    error(ErrorKind::BadGateway, format!("every attempt failed; last: {last_err}"))
}

/// Streams the endpoint's response through, holding the in-flight count until the body
/// ends or the client goes away (dropping the stream drops the guard).
fn relay(resp: reqwest::Response, destination: Option<&str>, inflight: InFlightGuard) -> Response {
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (k, v) in forwardable(resp.headers()) {
        builder = builder.header(k.as_str(), v.as_bytes());
    }
    if let Some(v) = destination.and_then(|d| HeaderValue::from_str(d).ok()) {
        builder = builder.header(DESTINATION_HEADER, v);
    }
    let mut started = false;
    let stream = resp.bytes_stream().map(move |chunk| {
        // The first chunk means the prompt is prefilled (the guard itself lives until
        // the stream is dropped).
        if !std::mem::replace(&mut started, true) {
            inflight.first_byte();
        }
        chunk
    });
    builder.body(Body::from_stream(stream)).unwrap_or_else(|e| error(ErrorKind::BadGateway, e.to_string()))
}
