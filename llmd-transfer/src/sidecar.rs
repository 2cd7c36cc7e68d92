//! The P/D routing sidecar that sits beside a decode engine, compatible with llm-d's
//! `pd-sidecar` (llm-d-inference-scheduler / llm-d-router `pkg/sidecar/proxy`), NIXL v2
//! flow.
//!
//! Routes:
//! - `GET /health` → 200;
//! - `POST /v1/chat/completions`, `/v1/completions`, `/v1/messages` and `/v1/responses`
//!   → the P/D handler;
//! - everything else → reverse-proxied to the model server unchanged (bodies streamed).
//!
//! The P/D handler reads the prefill target the EPP chose from
//! [`PREFILLER_HEADER`] (or the newer [`PREFILLER_HEADER_LLMD`]; the legacy spelling is
//! trusted first), removes the routing headers and, without a target, proxies straight
//! to the decoder. With one: it checks the SSRF allowlist, sends the prefill leg
//! (`kv_transfer_params` = [`KvTransferParams::prefill_request`], `stream: false`, no
//! `stream_options`, token limits 1) to `<scheme>://<target><path>`, then the decode leg
//! (the original body with the prefiller's `kv_transfer_params` verbatim) to the model
//! server, and streams the answer back with `usage.prompt_tokens_details.cached_tokens`
//! set to the prefiller's value. Both legs carry the same fresh `x-request-id`.
//!
//! A prefill answer with status 400–451 goes back to the client as it came; any other
//! failure (another status, no connection, timeout) falls back to decode-only with the
//! original body.

mod cached_tokens;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use crate::params::KvTransferParams;

/// The routing header the EPP sets on the decode request: the chosen prefill endpoint
/// `host:port` (repeated or comma-separated for several).
pub const PREFILLER_HEADER: &str = "x-prefiller-host-port";
/// The newer spelling of [`PREFILLER_HEADER`]; read when the legacy one is absent.
pub const PREFILLER_HEADER_LLMD: &str = "x-llm-d-prefiller-host-port";
/// Routing headers llm-d's P/D handler also removes; this sidecar ignores them (no E/P/D,
/// no P2P cache-source pulls).
const IGNORED_ROUTING_HEADERS: [&str; 4] = [
    "x-encoder-hosts-ports",
    "x-llm-d-encoder-hosts-ports",
    "x-kv-cache-source-host-port",
    "x-llm-d-kv-cache-source-host-port",
];
/// The request id header put on both legs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The 403 body when the SSRF allowlist refuses a prefill target (as llm-d).
pub const SSRF_FORBIDDEN: &str = "Forbidden: prefill target not allowed by SSRF protection";

/// Hop-by-hop headers, never forwarded (RFC 9110 §7.6.1, Go's `httputil.ReverseProxy`).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The KV connector between prefiller and decoder (llm-d `--kv-connector`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Connector {
    /// vLLM NixlConnector, llm-d's protocol v2 (`nixlv2`, llm-d's default).
    #[default]
    Nixlv2,
}

impl Connector {
    /// The names [`FromStr`] accepts.
    pub const SUPPORTED: &'static [&'static str] = &["nixlv2"];

    /// The flag value.
    pub fn name(self) -> &'static str {
        match self {
            Connector::Nixlv2 => "nixlv2",
        }
    }
}

impl fmt::Display for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connector name this sidecar does not implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedConnector(pub String);

impl fmt::Display for UnsupportedConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unsupported KV connector {:?}; supported: {}", self.0, Connector::SUPPORTED.join(", "))?;
        if matches!(self.0.as_str(), "shared-storage" | "sglang" | "mooncake" | "offloading" | "nixl" | "lmcache") {
            write!(f, " (llm-d's {:?} connector is not implemented here)", self.0)?;
        }
        Ok(())
    }
}

impl std::error::Error for UnsupportedConnector {}

impl FromStr for Connector {
    type Err = UnsupportedConnector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "nixlv2" => Ok(Connector::Nixlv2),
            other => Err(UnsupportedConnector(other.to_string())),
        }
    }
}

/// Picks one of `n` prefill candidates (returns an index below `n`); used with
/// [`SidecarConfig::enable_prefiller_sampling`].
#[derive(Clone)]
pub struct PrefillerSampler(Arc<dyn Fn(usize) -> usize + Send + Sync>);

impl PrefillerSampler {
    /// A sampler from a function (tests pass a fixed or seeded one).
    pub fn new(f: impl Fn(usize) -> usize + Send + Sync + 'static) -> Self {
        PrefillerSampler(Arc::new(f))
    }

    /// Uniform choice from a per-process random source (llm-d: `rand.IntN`).
    pub fn random() -> Self {
        let state = RandomState::new();
        let counter = Arc::new(AtomicU64::new(0));
        PrefillerSampler::new(move |n| {
            let mut h = state.build_hasher();
            h.write_u64(counter.fetch_add(1, Ordering::Relaxed));
            if n == 0 { 0 } else { (h.finish() % n as u64) as usize }
        })
    }

    fn pick(&self, n: usize) -> usize {
        (self.0)(n).min(n.saturating_sub(1))
    }
}

impl fmt::Debug for PrefillerSampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrefillerSampler(..)")
    }
}

/// Sidecar settings (llm-d `pkg/sidecar/proxy/options.go`).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Base URL of the local decode engine, e.g. `http://127.0.0.1:8200` (llm-d
    /// `--model-server-port`, deprecated `--vllm-port`).
    pub model_server: String,
    /// The P/D protocol (`--kv-connector`).
    pub connector: Connector,
    /// Scheme of the prefill leg: `http` (llm-d uses `https` with
    /// `--enable-tls=prefiller`; this build has no TLS client, so [`router`] refuses it).
    pub prefill_scheme: String,
    /// SSRF guard: the prefill targets allowed, each `host` (any port) or `host:port`;
    /// `None` turns the guard off. A refused target gets 403 [`SSRF_FORBIDDEN`].
    pub allowed_prefillers: Option<Vec<String>>,
    /// Pick one of several header values at random instead of the first.
    pub enable_prefiller_sampling: bool,
    /// The choice used when sampling; `None` = [`PrefillerSampler::random`].
    pub prefiller_sampler: Option<PrefillerSampler>,
    /// Longest wait for a TCP connection to any upstream.
    pub connect_timeout: Duration,
    /// Longest the whole prefill leg may take (answer read); past it the request falls
    /// back to decode-only.
    pub prefill_timeout: Duration,
    /// Longest silence on any other upstream exchange (decode leg and proxied requests,
    /// waiting for headers included), and the longest wait for a client's body.
    pub read_timeout: Duration,
    /// Largest request body the P/D handler reads into memory.
    pub max_body_bytes: usize,
}

impl SidecarConfig {
    /// Defaults: nixlv2, http, no SSRF guard, no sampling, 10 s connect, 10 min prefill,
    /// 1 h read silence, 64 MiB bodies.
    pub fn new(model_server: impl Into<String>) -> Self {
        SidecarConfig {
            model_server: model_server.into(),
            connector: Connector::Nixlv2,
            prefill_scheme: "http".to_string(),
            allowed_prefillers: None,
            enable_prefiller_sampling: false,
            prefiller_sampler: None,
            connect_timeout: Duration::from_secs(10),
            prefill_timeout: Duration::from_secs(600),
            read_timeout: Duration::from_secs(3600),
            max_body_bytes: 64 << 20,
        }
    }
}

/// Which token-limit fields an API has (llm-d `tokenLimitFieldsForAPIType`).
#[derive(Debug, Clone, Copy)]
enum Api {
    /// `/v1/chat/completions`, `/v1/completions`, `/v1/messages`.
    Chat,
    /// `/v1/responses`.
    Responses,
}

impl Api {
    fn token_limit_fields(self) -> &'static [&'static str] {
        match self {
            // llm-d-router #2041 added min_tokens: vLLM rejects min_tokens > max_tokens.
            Api::Chat => &["max_tokens", "max_completion_tokens", "min_tokens"],
            Api::Responses => &["max_output_tokens"],
        }
    }
}

struct Sidecar {
    cfg: SidecarConfig,
    client: reqwest::Client,
    model_server: String,
    sampler: PrefillerSampler,
}

/// The sidecar's routes. Fails when the HTTP client cannot be built, the prefill scheme
/// is neither `http` nor `https`, or is `https` (no TLS client in this build).
pub fn router(cfg: SidecarConfig) -> io::Result<Router> {
    match cfg.prefill_scheme.as_str() {
        "http" => {}
        "https" => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "prefill over https is not supported by this build (no TLS client); use http",
            ));
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("prefill scheme {other:?} is neither http nor https"),
            ));
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.read_timeout)
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(io::Error::other)?;
    let model_server = cfg.model_server.trim_end_matches('/').to_string();
    let sampler = cfg.prefiller_sampler.clone().unwrap_or_else(PrefillerSampler::random);
    let state = Arc::new(Sidecar { cfg, client, model_server, sampler });

    let pd = |api: Api| -> MethodRouter<Arc<Sidecar>> {
        post(move |State(s): State<Arc<Sidecar>>, req: Request| async move { s.pd(api, req).await })
            .fallback(proxy_handler)
    };
    Ok(Router::new()
        .route("/health", get(|| async { StatusCode::OK }).fallback(proxy_handler))
        .route("/v1/chat/completions", pd(Api::Chat))
        .route("/v1/completions", pd(Api::Chat))
        .route("/v1/messages", pd(Api::Chat))
        .route("/v1/responses", pd(Api::Responses))
        .fallback(proxy_handler)
        .with_state(state))
}

/// Serves [`router`] on `listener` until `stop` resolves (then drains in-flight requests).
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: SidecarConfig,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router(cfg)?;
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

async fn proxy_handler(State(s): State<Arc<Sidecar>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    s.to_decoder(&parts, forward_headers(&parts.headers), stream_body(body)).await
}

impl Sidecar {
    async fn pd(&self, api: Api, req: Request) -> Response {
        let (mut parts, body) = req.into_parts();
        let target = self.take_prefill_target(&mut parts.headers);
        for h in IGNORED_ROUTING_HEADERS {
            if parts.headers.remove(h).is_some() {
                tracing::debug!(header = h, "ignoring routing header (not supported)");
            }
        }
        let Some(target) = target else {
            tracing::debug!("no prefill header: decoder only");
            return self.to_decoder(&parts, forward_headers(&parts.headers), stream_body(body)).await;
        };
        if !self.allowed(&target) {
            tracing::error!(target = %target, path = parts.uri.path(), "SSRF protection: prefill target not in allowlist");
            return forbidden();
        }
        let raw = match tokio::time::timeout(self.cfg.read_timeout, axum::body::to_bytes(body, self.cfg.max_body_bytes))
            .await
        {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
            Err(_) => return (StatusCode::REQUEST_TIMEOUT, "timed out reading the request body").into_response(),
        };
        let request: Map<String, Value> = match serde_json::from_slice(&raw) {
            Ok(m) => m,
            Err(e) => return vllm_error(StatusCode::BAD_REQUEST, "BadRequestError", &e.to_string()),
        };
        match self.cfg.connector {
            Connector::Nixlv2 => self.nixlv2(api, parts, raw, request, &target).await,
        }
    }

    /// llm-d `handleNIXLV2` (serial path) with llm-d-inference-scheduler's
    /// `shouldFallbackToDecode`.
    async fn nixlv2(&self, api: Api, parts: Parts, raw: Bytes, request: Map<String, Value>, target: &str) -> Response {
        let request_id = new_request_id();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());

        let mut prefill = request.clone();
        prefill.insert("kv_transfer_params".into(), KvTransferParams::prefill_request().to_value());
        prefill.insert("stream".into(), Value::Bool(false));
        prefill.remove("stream_options");
        for field in api.token_limit_fields() {
            prefill.insert((*field).into(), json!(1));
        }
        let pbody = match serde_json::to_vec(&Value::Object(prefill)) {
            Ok(b) => b,
            Err(e) => return vllm_error(StatusCode::BAD_REQUEST, "BadRequestError", &e.to_string()),
        };
        let host_port = target.strip_prefix("http://").unwrap_or(target);
        let url = format!("{}://{}{}", self.cfg.prefill_scheme, host_port, path);
        let mut pheaders = forward_headers(&parts.headers);
        set_request_id(&mut pheaders, &request_id);
        tracing::debug!(to = %url, request_id = %request_id, "sending prefill request");

        let send = async {
            let resp = self
                .client
                .request(parts.method.clone(), &url)
                .headers(pheaders)
                .body(pbody)
                .timeout(self.cfg.prefill_timeout)
                .send()
                .await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, pheaders, presp) = match tokio::time::timeout(self.cfg.prefill_timeout, send).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::warn!(target = %target, request_id = %request_id, error = %e, "prefill failed, falling back to decode");
                return self.fallback(&parts, raw).await;
            }
            Err(_) => {
                tracing::warn!(target = %target, request_id = %request_id, "prefill timed out, falling back to decode");
                return self.fallback(&parts, raw).await;
            }
        };
        if !status.is_success() {
            if (400..=451).contains(&status.as_u16()) {
                tracing::warn!(target = %target, request_id = %request_id, status = status.as_u16(), "prefill refused the request; returning its answer");
                let mut resp = Response::new(Body::from(presp));
                *resp.status_mut() = status;
                *resp.headers_mut() = response_headers(&pheaders, false);
                return resp;
            }
            tracing::warn!(target = %target, request_id = %request_id, status = status.as_u16(), "prefill failed, falling back to decode");
            return self.fallback(&parts, raw).await;
        }
        let presp: Map<String, Value> = match serde_json::from_slice(&presp) {
            Ok(m) => m,
            Err(e) => return vllm_error(StatusCode::BAD_REQUEST, "BadRequestError", &e.to_string()),
        };
        let params = match presp.get("kv_transfer_params") {
            Some(p) => p.clone(),
            None => {
                tracing::info!(request_id = %request_id, "missing 'kv_transfer_params' in the prefiller's response");
                Value::Null
            }
        };
        let cached = cached_tokens::prefill_cached_tokens(&Value::Object(presp));

        let mut decode = request;
        decode.insert("kv_transfer_params".into(), params);
        let dbody = match serde_json::to_vec(&Value::Object(decode)) {
            Ok(b) => b,
            Err(e) => return vllm_error(StatusCode::BAD_REQUEST, "BadRequestError", &e.to_string()),
        };
        let mut dheaders = forward_headers(&parts.headers);
        set_request_id(&mut dheaders, &request_id);
        let upstream = match self
            .client
            .request(parts.method.clone(), format!("{}{}", self.model_server, path))
            .headers(dheaders)
            .body(dbody)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return decoder_error(&e, &self.model_server),
        };
        rewrite_response(upstream, cached).await
    }

    /// Decode-only with the original body (llm-d: the client's request, routing headers
    /// removed, no request id).
    async fn fallback(&self, parts: &Parts, raw: Bytes) -> Response {
        self.to_decoder(parts, forward_headers(&parts.headers), reqwest::Body::from(raw)).await
    }

    async fn to_decoder(&self, parts: &Parts, headers: HeaderMap, body: reqwest::Body) -> Response {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        match self
            .client
            .request(parts.method.clone(), format!("{}{}", self.model_server, path))
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(resp) => passthrough(resp),
            Err(e) => decoder_error(&e, &self.model_server),
        }
    }

    /// The prefill target from the routing headers (removed): legacy spelling first,
    /// all values split on commas, the first (or a sampled) non-empty one.
    fn take_prefill_target(&self, headers: &mut HeaderMap) -> Option<String> {
        let mut candidates = Vec::new();
        for name in [PREFILLER_HEADER, PREFILLER_HEADER_LLMD] {
            let values: Vec<String> = headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect();
            headers.remove(name);
            if candidates.is_empty() {
                candidates = values;
            }
        }
        let i = if self.cfg.enable_prefiller_sampling && candidates.len() > 1 {
            self.sampler.pick(candidates.len())
        } else {
            0
        };
        candidates.into_iter().nth(i)
    }

    fn allowed(&self, target: &str) -> bool {
        let Some(list) = &self.cfg.allowed_prefillers else {
            return true;
        };
        let host_port = target.strip_prefix("http://").unwrap_or(target);
        let host = split_host(host_port);
        list.iter().any(|entry| {
            let entry = entry.trim();
            entry.eq_ignore_ascii_case(host_port) || entry.trim_matches(['[', ']']).eq_ignore_ascii_case(host)
        })
    }
}

/// The host of `host:port` (`[v6]:port` too); the input when there is no port.
fn split_host(host_port: &str) -> &str {
    if let Some(rest) = host_port.strip_prefix('[') {
        return rest.split_once(']').map_or(host_port, |(h, _)| h);
    }
    match host_port.rsplit_once(':') {
        Some((h, _)) if !h.contains(':') => h,
        _ => host_port,
    }
}

fn stream_body(body: Body) -> reqwest::Body {
    reqwest::Body::wrap_stream(body.into_data_stream())
}

fn set_request_id(headers: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
}

/// Headers named in `Connection`, plus the fixed hop-by-hop ones.
fn hop_by_hop(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = HOP_BY_HOP.iter().map(|s| (*s).to_string()).collect();
    for v in headers.get_all(header::CONNECTION) {
        if let Ok(v) = v.to_str() {
            names.extend(v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()));
        }
    }
    names
}

/// A client's headers for an upstream leg: no hop-by-hop, `host` (set from the URL) or
/// `content-length` (recomputed).
fn forward_headers(src: &HeaderMap) -> HeaderMap {
    let mut out = src.clone();
    for name in hop_by_hop(src) {
        out.remove(name.as_str());
    }
    out.remove(header::HOST);
    out.remove(header::CONTENT_LENGTH);
    out
}

/// An upstream answer's headers for the client: no hop-by-hop; `content-length` kept
/// only when the body passes through unchanged.
fn response_headers(src: &HeaderMap, keep_length: bool) -> HeaderMap {
    let mut out = src.clone();
    for name in hop_by_hop(src) {
        out.remove(name.as_str());
    }
    if !keep_length {
        out.remove(header::CONTENT_LENGTH);
    }
    out
}

/// The upstream answer streamed back unchanged.
fn passthrough(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let headers = response_headers(upstream.headers(), true);
    let mut resp = Response::new(Body::from_stream(upstream.bytes_stream()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The decode answer with the prefiller's cached tokens: SSE rewritten line by line as
/// it streams, anything else read whole and rewritten as JSON.
async fn rewrite_response(upstream: reqwest::Response, cached: i64) -> Response {
    let status = upstream.status();
    let headers = response_headers(upstream.headers(), false);
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let body = if sse {
        let state = (upstream.bytes_stream().boxed(), cached_tokens::SseRewriter::new(cached), false);
        Body::from_stream(futures_util::stream::unfold(state, |(mut up, mut rw, done)| async move {
            if done {
                return None;
            }
            loop {
                match up.next().await {
                    Some(Ok(chunk)) => {
                        let out = rw.push(&chunk);
                        if !out.is_empty() {
                            return Some((Ok(Bytes::from(out)), (up, rw, false)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (up, rw, true))),
                    None => {
                        let out = rw.finish();
                        if out.is_empty() {
                            return None;
                        }
                        return Some((Ok(Bytes::from(out)), (up, rw, true)));
                    }
                }
            }
        }))
    } else {
        match upstream.bytes().await {
            Ok(b) => Body::from(cached_tokens::rewrite_body(&b, cached)),
            Err(e) => return vllm_error(StatusCode::BAD_GATEWAY, "BadGateway", &e.to_string()),
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// llm-d's decoder proxy `ErrorHandler`: 503 when the decoder refuses connections, 502
/// otherwise.
fn decoder_error(e: &reqwest::Error, model_server: &str) -> Response {
    if e.is_connect() {
        tracing::error!(decoder = model_server, error = %e, "failed to connect to the decoder");
        vllm_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The decode node is not ready. Please check that the vLLM service is running and the port configuration is correct.",
        )
    } else {
        tracing::error!(decoder = model_server, error = %e, "proxy error");
        vllm_error(StatusCode::BAD_GATEWAY, "BadGateway", &e.to_string())
    }
}

/// vLLM's error body (llm-d `sendError`).
fn vllm_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"object": "error", "message": message, "type": kind, "param": "", "code": status.as_u16()});
    (status, axum::Json(body)).into_response()
}

/// Go's `http.Error(w, msg, 403)`.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")],
        format!("{SSRF_FORBIDDEN}\n"),
    )
        .into_response()
}

/// A random (version 4 shaped) UUID from the std hasher's per-process random keys, a
/// counter and the clock.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut h = RandomState::new().build_hasher();
    h.write_u64(c);
    h.write_u128(t);
    let hi = h.finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(hi);
    h.write_u64(c);
    let lo = h.finish();
    let v = (u128::from(hi) << 64 | u128::from(lo)) & !(0xF << 76) & !(0x3 << 62);
    let v = v | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        v >> 96,
        (v >> 80) & 0xffff,
        (v >> 64) & 0xffff,
        (v >> 48) & 0xffff,
        v & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_shaped_and_unique() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn hosts() {
        assert_eq!(split_host("10.0.0.1:8000"), "10.0.0.1");
        assert_eq!(split_host("[::1]:8000"), "::1");
        assert_eq!(split_host("pod-a"), "pod-a");
        assert_eq!(split_host("::1"), "::1");
    }

    #[test]
    fn connectors() {
        assert_eq!("nixlv2".parse::<Connector>(), Ok(Connector::Nixlv2));
        let e = "sglang".parse::<Connector>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("supported: nixlv2"), "{e}");
    }
}
