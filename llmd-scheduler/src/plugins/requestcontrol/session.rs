//! Session affinity, as llm-d-router has it:
//!
//! - `session-id-producer` reads a session identifier from a header or a cookie and
//!   publishes it as the request attribute `SessionIDDataKey/<plugin name>`.
//! - `session-affinity-filter` (and the `session-affinity-scorer`) pin a session's
//!   requests to one endpoint, by either strategy:
//!   - `encoded_endpoint_header` (the default): the client resends the token the
//!     previous response carried (`x-session-token`, the endpoint id in standard
//!     base64); stateless.
//!   - `session_id`: an opaque client session id (from headers or request attributes,
//!     `sessionIdConfig.sources`) maps to an endpoint in a TTL-evicted binding store
//!     ([`SessionBindings`]), bound before the request is sent.
//!
//! The filter keeps only the session's endpoint when it is a candidate, else all of
//! them: it never empties a non-empty set. The scorer gives the session's endpoint 1
//! and the others 0.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use super::{
    DataKey, DataProducer, Fields, PreRequest, RequestAttributes, RequestControl, ResponseContext,
    ResponseHeaderProcessor, attributes_of, handle, with_roles,
};
use crate::clock::{Clock, SystemClock};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter, PluginHandle, Scorer};
use crate::request::LlmRequest;
use crate::scheduler::PickResult;

/// `session-id-producer`.
pub const SESSION_ID_PRODUCER: &str = "session-id-producer";
/// `session-affinity-filter`.
pub const SESSION_AFFINITY_FILTER: &str = "session-affinity-filter";
/// `multicluster-session-affinity-filter`: the router's alpha name for the same filter
/// in a cluster-scoped picker (its endpoints are peer clusters).
pub const MULTICLUSTER_SESSION_AFFINITY_FILTER: &str = "multicluster-session-affinity-filter";
/// `session-affinity-scorer`.
pub const SESSION_AFFINITY_SCORER: &str = "session-affinity-scorer";
/// The header carrying the encoded endpoint token (request and response).
pub const DEFAULT_TOKEN_HEADER: &str = "x-session-token";
/// The header a `session_id` strategy reads when no sources are configured.
pub const DEFAULT_SESSION_ID_HEADER: &str = "x-session-id";
/// The data type of the session-id attribute (`SessionIDDataKey`).
pub const SESSION_ID_DATA_TYPE: &str = "SessionIDDataKey";
/// `strategy: encoded_endpoint_header`.
pub const STRATEGY_ENCODED_ENDPOINT_HEADER: &str = "encoded_endpoint_header";
/// `strategy: session_id`.
pub const STRATEGY_SESSION_ID: &str = "session_id";

/// How long a pick's record of whether the bound endpoint was a candidate waits for its
/// pre-request call (the router's plugin-state staleness).
const PRESENCE_STALENESS: Duration = Duration::from_secs(300);

/// `session-id-producer`: the session id from `headerName` (lower-cased) or from the
/// cookie `cookieName` of the `cookie` header, trimmed, published as
/// `SessionIDDataKey/<plugin name>`; nothing when there is none.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionIdProducer {
    key: DataKey,
    header: String,
    cookie: String,
}

impl SessionIdProducer {
    /// From the plugin's name and `parameters`: exactly one of `headerName` or
    /// `cookieName`.
    pub fn from_params(name: &str, p: &Value) -> Result<Self, String> {
        let f = Fields::new(p, "", &["headerName", "cookieName"])?;
        let header = f.string("headerName")?.trim().to_ascii_lowercase();
        let cookie = f.string("cookieName")?.trim().to_string();
        match (header.is_empty(), cookie.is_empty()) {
            (true, true) => {
                Err(format!("'{SESSION_ID_PRODUCER}' requires exactly one of headerName or cookieName to be set"))
            }
            (false, false) => Err(format!(
                "'{SESSION_ID_PRODUCER}' requires exactly one of headerName or cookieName to be set, not both"
            )),
            _ => Ok(SessionIdProducer {
                key: DataKey::new(SESSION_ID_DATA_TYPE, SESSION_ID_PRODUCER).with_producer(name),
                header,
                cookie,
            }),
        }
    }

    /// The attribute key it writes.
    pub fn key(&self) -> &DataKey {
        &self.key
    }

    /// The session id of a request with `headers`, if any.
    pub fn extract(&self, headers: &BTreeMap<String, String>) -> Option<String> {
        let id = if self.header.is_empty() {
            cookie_value(headers.get("cookie").map_or("", String::as_str), &self.cookie)
        } else {
            headers.get(&self.header).map_or("", String::as_str)
        };
        Some(id.trim().to_string()).filter(|s| !s.is_empty())
    }
}

impl DataProducer for SessionIdProducer {
    fn produce(&self, headers: &BTreeMap<String, String>, attrs: &mut RequestAttributes) {
        if let Some(id) = self.extract(headers) {
            attrs.put(self.key.clone(), Value::String(id));
        }
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), `""` when absent;
/// pairs without `=` are skipped, values are not trimmed here.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> &'a str {
    if header.is_empty() || name.is_empty() {
        return "";
    }
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
        .unwrap_or("")
}

/// One place a session id can be read from: a request header, or a request attribute
/// (`attribute` published by `producer`; no producer: the producer-agnostic key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionIdSource {
    /// A request header name.
    pub header: String,
    /// A request-attribute data type.
    pub attribute: String,
    /// The plugin publishing the attribute (empty: any).
    pub producer: String,
}

/// `sessionIdConfig`: where the session id comes from and how long bindings last.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionIdConfig {
    /// Sources in priority order; the first non-empty value wins.
    pub sources: Vec<SessionIdSource>,
    /// How long an unused binding lives (`evictionTtlSeconds`, 300).
    pub eviction_ttl_seconds: f64,
    /// How often expired bindings are swept (`evictionSweepSeconds`, 10).
    pub eviction_sweep_seconds: f64,
}

impl Default for SessionIdConfig {
    fn default() -> Self {
        SessionIdConfig {
            sources: vec![SessionIdSource { header: DEFAULT_SESSION_ID_HEADER.into(), ..Default::default() }],
            eviction_ttl_seconds: 300.0,
            eviction_sweep_seconds: 10.0,
        }
    }
}

impl SessionIdConfig {
    /// Decoded from `v` (at path `at`) as written: no defaults applied.
    pub fn decode(v: &Value, at: &str) -> Result<Self, String> {
        let f = Fields::new(v, at, &["sources", "evictionTtlSeconds", "evictionSweepSeconds"])?;
        let mut sources = Vec::new();
        for (i, s) in f.list("sources")?.iter().enumerate() {
            let sf = Fields::new(s, &format!("{}[{i}]", f.path("sources")), &["header", "attribute", "producer"])?;
            sources.push(SessionIdSource {
                header: sf.string("header")?,
                attribute: sf.string("attribute")?,
                producer: sf.string("producer")?,
            });
        }
        Ok(SessionIdConfig {
            sources,
            eviction_ttl_seconds: f.number("evictionTtlSeconds")?,
            eviction_sweep_seconds: f.number("evictionSweepSeconds")?,
        })
    }

    /// Fills unset fields: no sources reads `x-session-id`; a zero TTL or sweep takes
    /// 300 s or 10 s.
    pub fn apply_defaults(&mut self) {
        let d = SessionIdConfig::default();
        if self.sources.is_empty() {
            self.sources = d.sources;
        }
        if self.eviction_ttl_seconds == 0.0 {
            self.eviction_ttl_seconds = d.eviction_ttl_seconds;
        }
        if self.eviction_sweep_seconds == 0.0 {
            self.eviction_sweep_seconds = d.eviction_sweep_seconds;
        }
    }

    /// The router's checks, after [`apply_defaults`](Self::apply_defaults): each source
    /// sets exactly one of `header` or `attribute`; TTL and sweep are positive.
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.sources.iter().enumerate() {
            if s.header.is_empty() == s.attribute.is_empty() {
                return Err(format!("sources[{i}]: exactly one of header or attribute must be set"));
            }
        }
        if self.eviction_ttl_seconds.is_nan() || self.eviction_ttl_seconds <= 0.0 {
            return Err(format!("evictionTtlSeconds must be > 0, got {}", self.eviction_ttl_seconds));
        }
        if self.eviction_sweep_seconds.is_nan() || self.eviction_sweep_seconds <= 0.0 {
            return Err(format!("evictionSweepSeconds must be > 0, got {}", self.eviction_sweep_seconds));
        }
        Ok(())
    }
}

/// A session-header name as the router normalizes it: trimmed, lower-case, and
/// `x-session-token` when empty.
pub fn normalize_header(name: &str) -> String {
    let h = name.trim().to_ascii_lowercase();
    if h.is_empty() { DEFAULT_TOKEN_HEADER.to_string() } else { h }
}

/// The session id of a request by `sources` (first non-empty, trimmed), if any. An
/// attribute counts only when it is a string.
pub fn resolve_session_id(
    sources: &[SessionIdSource],
    headers: &BTreeMap<String, String>,
    attrs: Option<&RequestAttributes>,
) -> Option<String> {
    for s in sources {
        let value = if !s.header.is_empty() {
            headers.get(&normalize_header(&s.header)).map(String::as_str)
        } else {
            attrs.and_then(|a| a.get_str(&DataKey::new(&s.attribute, "").with_producer(&s.producer)))
        };
        if let Some(id) = value.map(str::trim).filter(|v| !v.is_empty()) {
            return Some(id.to_string());
        }
    }
    None
}

/// A session's endpoint and when that pin was last used.
#[derive(Debug, Clone, PartialEq)]
struct Binding {
    endpoint: String,
    last_seen: Duration,
}

#[derive(Debug, Default)]
struct BindingState {
    bindings: HashMap<String, Binding>,
    // Per request id: whether the session's bound endpoint was among the candidates of
    // its pick, and when that was recorded (the router's Choose -> PreRequest handoff).
    presence: HashMap<String, (bool, Duration)>,
    // When the next sweep is due (`None`: not started).
    next_sweep: Option<Duration>,
}

/// The `session_id` strategy's binding store, shared by the filter and the scorer:
/// [`choose`](Self::choose) finds the session's endpoint among the candidates (and
/// notes whether its bound endpoint was one), [`pre_request`](Self::pre_request) binds
/// or refreshes after the pick. Bindings unused for longer than the TTL are swept every
/// sweep interval, as the router's ticker sweeps them (here on the next access after a
/// sweep falls due, as of that sweep's time, on the injected clock).
pub struct SessionBindings {
    sources: Vec<SessionIdSource>,
    profile: String,
    ttl: Duration,
    sweep: Duration,
    clock: RwLock<Arc<dyn Clock>>,
    state: Mutex<BindingState>,
}

impl std::fmt::Debug for SessionBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBindings")
            .field("sources", &self.sources)
            .field("profile", &self.profile)
            .field("ttl", &self.ttl)
            .field("sweep", &self.sweep)
            .finish()
    }
}

impl SessionBindings {
    /// A store for a validated `config`, binding the pick of `profile` (empty: the
    /// primary profile), on the system clock until [`bind_clock`](Self::bind_clock).
    pub fn new(config: &SessionIdConfig, profile: &str) -> Self {
        SessionBindings {
            sources: config.sources.clone(),
            profile: profile.to_string(),
            ttl: Duration::from_secs_f64(config.eviction_ttl_seconds),
            sweep: Duration::from_secs_f64(config.eviction_sweep_seconds),
            clock: RwLock::new(Arc::new(SystemClock::default())),
            state: Mutex::default(),
        }
    }

    /// Keeps time by `clock` from now on (the sweep schedule restarts on it).
    pub fn bind_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(|p| p.into_inner()) = clock;
        self.lock().next_sweep = None;
    }

    fn now(&self) -> Duration {
        self.clock.read().unwrap_or_else(|p| p.into_inner()).now()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BindingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session id of a request (see [`resolve_session_id`]).
    pub fn resolve(&self, headers: &BTreeMap<String, String>, attrs: Option<&RequestAttributes>) -> Option<String> {
        resolve_session_id(&self.sources, headers, attrs)
    }

    // Runs the sweeps due by `now`: the last one due sees what every earlier one would
    // have (nothing is refreshed between accesses), so one pass as of its time does.
    fn sweep_due(&self, st: &mut BindingState, now: Duration) {
        let due = *st.next_sweep.get_or_insert(now + self.sweep);
        if now < due {
            return;
        }
        let ticks = ((now - due).as_nanos() / self.sweep.as_nanos().max(1)) as u32;
        let at = due + self.sweep * ticks;
        let ttl = self.ttl;
        st.bindings.retain(|_, b| at.saturating_sub(b.last_seen) <= ttl);
        st.presence.retain(|_, (_, t)| at.saturating_sub(*t) <= PRESENCE_STALENESS);
        st.next_sweep = Some(at + self.sweep);
    }

    /// Runs any sweep due now (for a housekeeping loop; every access does it too).
    pub fn sweep(&self) {
        let now = self.now();
        let mut st = self.lock();
        self.sweep_due(&mut st, now);
    }

    /// The endpoint `session` is bound to.
    pub fn bound(&self, session: &str) -> Option<String> {
        let now = self.now();
        let mut st = self.lock();
        self.sweep_due(&mut st, now);
        st.bindings.get(session).map(|b| b.endpoint.clone())
    }

    /// Bindings held.
    pub fn len(&self) -> usize {
        self.lock().bindings.len()
    }

    /// Whether no binding is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index in `candidates` of the session's bound endpoint, when the request has
    /// a session, the session is bound, and its endpoint is a candidate; `None`
    /// otherwise (the session expresses no usable preference). Records for
    /// [`pre_request`](Self::pre_request) whether a bound endpoint was a candidate.
    /// Changes no binding.
    pub fn choose(
        &self,
        request_id: &str,
        headers: &BTreeMap<String, String>,
        attrs: Option<&RequestAttributes>,
        candidates: &[&Endpoint],
    ) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let session = self.resolve(headers, attrs)?;
        let now = self.now();
        let mut st = self.lock();
        self.sweep_due(&mut st, now);
        let bound = st.bindings.get(&session)?.endpoint.clone();
        let target = candidates.iter().rposition(|e| e.id == bound);
        st.presence.insert(request_id.to_string(), (target.is_some(), now));
        target
    }

    /// The endpoint this store binds for `result`: its `profile`'s pick, else the
    /// primary pick.
    pub fn picked<'a>(&self, result: &'a PickResult) -> Option<&'a str> {
        let profile = if self.profile.is_empty() { &result.primary } else { &self.profile };
        result.picks.get(profile).map(|p| p.endpoint.as_str())
    }

    /// Binds the request's session to the endpoint picked for it, or refreshes the
    /// binding; a bound session moves only when this request's own
    /// [`choose`](Self::choose) found its endpoint absent from the candidates (a pick
    /// that merely outvoted it, or no record at all, keeps the pin).
    pub fn pre_request(
        &self,
        request_id: &str,
        headers: &BTreeMap<String, String>,
        attrs: Option<&RequestAttributes>,
        result: &PickResult,
    ) {
        let Some(session) = self.resolve(headers, attrs) else { return };
        let Some(endpoint) = self.picked(result) else { return };
        let now = self.now();
        let mut st = self.lock();
        self.sweep_due(&mut st, now);
        let absent = st.presence.remove(request_id).is_some_and(|(present, _)| !present);
        let fresh = Binding { endpoint: endpoint.to_string(), last_seen: now };
        match st.bindings.get_mut(&session) {
            None => {
                tracing::debug!(endpoint, "session affinity: session bound");
                st.bindings.insert(session, fresh);
            }
            Some(b) if b.endpoint == endpoint => b.last_seen = now,
            Some(b) if absent => {
                tracing::debug!(from = %b.endpoint, to = endpoint, "session affinity: session moved");
                *b = fresh;
            }
            Some(_) => {}
        }
    }
}

/// Standard base64 with padding (Go's `base64.StdEncoding`).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64 as Go's `base64.StdEncoding.DecodeString` does
/// (line breaks ignored; anything else malformed is an error).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let sym = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = s.bytes().filter(|c| *c != b'\r' && *c != b'\n').collect();
    if !clean.len().is_multiple_of(4) {
        return Err("illegal base64 data: length is not a multiple of 4".into());
    }
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    let quads = clean.len() / 4;
    for (q, quad) in clean.chunks(4).enumerate() {
        let pads = quad.iter().rev().take_while(|c| **c == b'=').count();
        if pads > 2 || (pads > 0 && q + 1 != quads) {
            return Err(format!("illegal base64 data at input byte {}", q * 4 + 4 - pads));
        }
        let mut n = 0u32;
        for (i, c) in quad[..4 - pads].iter().enumerate() {
            n |= sym(*c).ok_or_else(|| format!("illegal base64 data at input byte {}", q * 4 + i))? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pads]);
    }
    Ok(out)
}

/// The endpoint id a session token names: `""` when the token is empty or not valid
/// base64 (the router logs and ignores it).
pub fn decode_token(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    match base64_decode(token) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => {
            tracing::debug!(error = %e, "session affinity: session token is not base64");
            String::new()
        }
    }
}

/// How a session-affinity plugin pins sessions.
#[derive(Debug)]
pub enum Strategy {
    /// `encoded_endpoint_header`: the endpoint named by the token in `header`.
    EncodedEndpointHeader {
        /// The normalized header name.
        header: String,
    },
    /// `session_id`: the endpoint bound to the session in the store.
    SessionId(Box<SessionBindings>),
}

/// `session-affinity-filter` and `session-affinity-scorer`: a filter, a scorer, a
/// pre-request plugin (binding, `session_id`) and a response-header writer (the token,
/// `encoded_endpoint_header`).
#[derive(Debug)]
pub struct SessionAffinity {
    type_name: &'static str,
    profile: String,
    strategy: Strategy,
}

impl SessionAffinity {
    /// From `parameters` of a plugin of `type_name` (`session-affinity-filter` or
    /// `-scorer`): `strategy` (`encoded_endpoint_header` | `session_id`),
    /// `encodedEndpointHeaderConfig.header` (`x-session-token`), `sessionIdConfig`
    /// ([`SessionIdConfig`]), `profileName` (`""`: the primary profile's pick). Only the
    /// chosen strategy's config is defaulted and validated; both are decoded strictly.
    pub fn from_params(type_name: &'static str, p: &Value) -> Result<Self, String> {
        let f = Fields::new(p, "", &["strategy", "encodedEndpointHeaderConfig", "sessionIdConfig", "profileName"])?;
        let strategy = match f.value("strategy") {
            None => STRATEGY_ENCODED_ENDPOINT_HEADER.to_string(),
            Some(_) => f.string("strategy")?,
        };
        let encoded = match f.value("encodedEndpointHeaderConfig") {
            Some(v) => Fields::new(v, "encodedEndpointHeaderConfig", &["header"])?.string("header")?,
            None => String::new(),
        };
        let mut session = match f.value("sessionIdConfig") {
            Some(v) => SessionIdConfig::decode(v, "sessionIdConfig")?,
            None => SessionIdConfig { sources: Vec::new(), eviction_ttl_seconds: 0.0, eviction_sweep_seconds: 0.0 },
        };
        let profile = f.string("profileName")?;
        let strategy = match strategy.as_str() {
            STRATEGY_ENCODED_ENDPOINT_HEADER => Strategy::EncodedEndpointHeader { header: normalize_header(&encoded) },
            STRATEGY_SESSION_ID => {
                session.apply_defaults();
                session.validate().map_err(|e| format!("parameter sessionIdConfig: {e}"))?;
                Strategy::SessionId(Box::new(SessionBindings::new(&session, &profile)))
            }
            other => {
                return Err(format!(
                    "parameter strategy: must be {STRATEGY_ENCODED_ENDPOINT_HEADER:?} or {STRATEGY_SESSION_ID:?}, got {other:?}"
                ));
            }
        };
        Ok(SessionAffinity { type_name, profile, strategy })
    }

    /// The plugin type.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// The strategy.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// The session's endpoint among `candidates` (its index), if any.
    pub fn choose(
        &self,
        req: &LlmRequest,
        attrs: Option<&RequestAttributes>,
        candidates: &[&Endpoint],
    ) -> Option<usize> {
        match &self.strategy {
            Strategy::EncodedEndpointHeader { header } => {
                let id = decode_token(req.headers.get(header).map_or("", String::as_str));
                if id.is_empty() {
                    return None;
                }
                candidates.iter().position(|e| e.id == id)
            }
            Strategy::SessionId(store) => store.choose(&req.id, &req.headers, attrs, candidates),
        }
    }
}

impl Filter for SessionAffinity {
    fn filter<'a>(&self, state: &mut CycleState, req: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        match self.choose(req, attributes_of(state, req), &endpoints) {
            Some(i) => vec![endpoints[i]],
            None => endpoints,
        }
    }
}

impl Scorer for SessionAffinity {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, endpoints: &[&Endpoint]) -> Vec<f64> {
        let mut scores = vec![0.0; endpoints.len()];
        match &self.strategy {
            // Every candidate the token names (ids are unique, so at most one).
            Strategy::EncodedEndpointHeader { header } => {
                let id = decode_token(req.headers.get(header).map_or("", String::as_str));
                for (s, e) in scores.iter_mut().zip(endpoints) {
                    if e.id == id {
                        *s = 1.0;
                    }
                }
            }
            Strategy::SessionId(_) => {
                if let Some(i) = self.choose(req, attributes_of(state, req), endpoints) {
                    scores[i] = 1.0;
                }
            }
        }
        scores
    }
}

impl PreRequest for SessionAffinity {
    fn pre_request(&self, req: &LlmRequest, attrs: &RequestAttributes, result: &PickResult) {
        if let Strategy::SessionId(store) = &self.strategy {
            store.pre_request(&req.id, &req.headers, Some(attrs), result);
        }
    }

    fn bind_clock(&self, clock: Arc<dyn Clock>) {
        if let Strategy::SessionId(store) = &self.strategy {
            store.bind_clock(clock);
        }
    }
}

impl ResponseHeaderProcessor for SessionAffinity {
    /// `encoded_endpoint_header`: the token of the destination (or of `profileName`'s
    /// pick, nothing when that profile did not run); `session_id`: nothing (the client
    /// owns its id).
    fn response_header(&self, cx: &ResponseContext<'_>, headers: &mut BTreeMap<String, String>) {
        let Strategy::EncodedEndpointHeader { header } = &self.strategy else { return };
        let endpoint = if self.profile.is_empty() {
            cx.result
                .and_then(PickResult::destination)
                .map(|d| d.endpoint.as_str())
                .or(cx.target.map(|t| t.id.as_str()))
        } else {
            cx.result.and_then(|r| r.picks.get(&self.profile)).map(|p| p.endpoint.as_str())
        };
        match endpoint {
            Some(id) => {
                headers.insert(header.clone(), base64_encode(id.as_bytes()));
            }
            None => {
                tracing::debug!(plugin = self.type_name, request = %cx.request.id, "session affinity: no endpoint to write")
            }
        }
    }
}

/// The roles of a session-affinity plugin.
fn roles(s: &Arc<SessionAffinity>) -> RequestControl {
    RequestControl { pre_request: Some(s.clone()), response_header: Some(s.clone()), ..Default::default() }
}

/// A `session-affinity-filter` plugin handle.
pub fn filter_handle(name: &str, p: &Value) -> Result<PluginHandle, String> {
    typed_filter_handle(SESSION_AFFINITY_FILTER, name, p)
}

/// A `multicluster-session-affinity-filter` plugin handle: the session-affinity filter
/// (same parameters and behaviour) under the multicluster type name, as the router
/// delegates it.
pub fn multicluster_filter_handle(name: &str, p: &Value) -> Result<PluginHandle, String> {
    typed_filter_handle(MULTICLUSTER_SESSION_AFFINITY_FILTER, name, p)
}

fn typed_filter_handle(type_name: &'static str, name: &str, p: &Value) -> Result<PluginHandle, String> {
    let s = Arc::new(SessionAffinity::from_params(type_name, p)?);
    let rc = roles(&s);
    Ok(with_roles(PluginHandle { filter: Some(s), ..handle(name, type_name) }, rc))
}

/// A `session-affinity-scorer` plugin handle, both strategies (the registry's factory
/// for the type can be this).
pub fn scorer_handle(name: &str, p: &Value) -> Result<PluginHandle, String> {
    let s = Arc::new(SessionAffinity::from_params(SESSION_AFFINITY_SCORER, p)?);
    let rc = roles(&s);
    Ok(with_roles(PluginHandle { scorer: Some(s), ..handle(name, SESSION_AFFINITY_SCORER) }, rc))
}
