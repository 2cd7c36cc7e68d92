//! The nouns of flow control: flows, the requests that enter them, the items queued for
//! them, the final outcomes, and how an outcome is answered over HTTP. Kept apart from
//! the policies and the controller so both (and the gateway) share one vocabulary, with
//! llm-d-router's names (`pkg/epp/flowcontrol/types`, `framework/interface/flowcontrol`).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::request::LlmRequest;

/// The fairness-ID header (llm-d-router `metadata.FlowFairnessIDKey`).
pub const FAIRNESS_ID_HEADER: &str = "x-llm-d-inference-fairness-id";
/// The deprecated alias of [`FAIRNESS_ID_HEADER`].
pub const OLD_FAIRNESS_ID_HEADER: &str = "x-gateway-inference-fairness-id";
/// The header naming the request's InferenceObjective (whose priority it gets).
pub const OBJECTIVE_HEADER: &str = "x-llm-d-inference-objective";
/// The deprecated alias of [`OBJECTIVE_HEADER`].
pub const OLD_OBJECTIVE_HEADER: &str = "x-gateway-inference-objective";
/// The time-to-first-token SLO header, integer milliseconds (`slo-deadline-ordering-policy`).
pub const TTFT_SLO_HEADER: &str = "x-llm-d-slo-ttft-ms";
/// The deprecated alias of [`TTFT_SLO_HEADER`].
pub const OLD_TTFT_SLO_HEADER: &str = "x-slo-ttft-ms";
/// The fairness ID of a request that names none (`metadata.DefaultFairnessID`).
pub const DEFAULT_FAIRNESS_ID: &str = "default-flow";
/// The header that tells the client why a request was dropped.
pub const DROPPED_REASON_HEADER: &str = "x-llm-d-request-dropped-reason";

/// A header's value by its current name, else by its deprecated alias (as the router's
/// `metadata.GetLowerCaseHeaderValue`). `headers` has lower-case names.
pub fn header<'a>(headers: &'a BTreeMap<String, String>, name: &str, alias: &str) -> Option<&'a str> {
    headers.get(name).or_else(|| headers.get(alias)).map(String::as_str)
}

/// The InferenceObjective a request names (`x-llm-d-inference-objective`, or its alias),
/// whose `priority` the caller looks up; no objective means priority 0.
pub fn objective_name(headers: &BTreeMap<String, String>) -> Option<&str> {
    header(headers, OBJECTIVE_HEADER, OLD_OBJECTIVE_HEADER).filter(|s| !s.is_empty())
}

/// The fairness ID of a request: its fairness header, else [`DEFAULT_FAIRNESS_ID`] (the
/// router also consults an `agent-identity` attribute, which llmd does not produce).
pub fn fairness_id(headers: &BTreeMap<String, String>) -> &str {
    header(headers, FAIRNESS_ID_HEADER, OLD_FAIRNESS_ID_HEADER).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_FAIRNESS_ID)
}

/// Whether a request may be shed first (`request.IsSheddable`): negative priority.
pub fn is_sheddable(priority: i32) -> bool {
    priority < 0
}

/// One flow: a fairness ID at one priority. Flows with the same ID at different
/// priorities are distinct (each has its own queue).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Logical grouping (tenant, program).
    pub id: String,
    /// Priority band; higher is more important.
    pub priority: i32,
}

impl FlowKey {
    /// A flow key.
    pub fn new(id: impl Into<String>, priority: i32) -> Self {
        FlowKey { id: id.into(), priority }
    }
}

impl Ord for FlowKey {
    // The router's `FlowKey.Compare`: higher priority first, then ID ascending.
    fn cmp(&self, other: &Self) -> Ordering {
        other.priority.cmp(&self.priority).then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.id, self.priority)
    }
}

/// A request submitted to flow control (the router's `FlowControlRequest`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlowRequest {
    /// Request ID, for logs and eviction bookkeeping.
    pub request_id: String,
    /// Fairness ID (the flow's logical ID).
    pub fairness_id: String,
    /// Priority (from the request's InferenceObjective; 0 by default).
    pub priority: i32,
    /// Size in bytes, booked against byte capacities (the router uses the body size).
    pub byte_size: u64,
    /// When the gateway received it, on the controller's clock; `None`: at enqueue.
    pub received: Option<Duration>,
    /// A queue-wait budget hint replacing `defaultRequestTTL` (the router plumbs none).
    pub ttl_hint: Option<Duration>,
    /// An absolute deadline on the controller's clock (a client or gateway timeout): the
    /// request is shed as TTL-expired there, and its budget never runs past it.
    pub deadline: Option<Duration>,
    /// Request headers, lower-case names (ordering policies read SLO headers).
    pub headers: BTreeMap<String, String>,
    /// The model the client asked for (metric label `model_name`).
    pub model: String,
    /// The model or adapter served (metric label `target_model_name`).
    pub target_model: String,
}

impl FlowRequest {
    /// A request in flow `fairness_id` at `priority` of `byte_size` bytes.
    pub fn new(request_id: impl Into<String>, fairness_id: impl Into<String>, priority: i32, byte_size: u64) -> Self {
        FlowRequest {
            request_id: request_id.into(),
            fairness_id: fairness_id.into(),
            priority,
            byte_size,
            ..Default::default()
        }
    }

    /// The flow-control request for `req` at `priority` (its objective's), `byte_size`
    /// bytes of body: the fairness ID from its headers, as the router's director does.
    pub fn from_llm_request(req: &LlmRequest, priority: i32, byte_size: u64) -> Self {
        FlowRequest {
            request_id: req.id.clone(),
            // The header, else the agent identity request control found, else the default.
            fairness_id: crate::plugins::requestcontrol::fairness_id(&req.headers, &req.attributes).to_string(),
            priority,
            byte_size,
            headers: req.headers.clone(),
            model: req.model.clone(),
            target_model: req.model.clone(),
            ..Default::default()
        }
    }
}

/// The controller's handle on one accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId(pub u64);

/// A queued request as policies see it (the router's `QueueItemAccessor`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItem {
    pub(crate) id: ItemId,
    pub(crate) request: FlowRequest,
    pub(crate) flow: FlowKey,
    pub(crate) enqueue_time: Duration,
    pub(crate) effective_ttl: Duration,
    pub(crate) received: Duration,
}

impl QueueItem {
    /// An item as the controller makes one: `flow` is the flow it is queued in (priority
    /// 0 when its own priority has no band), `effective_ttl` zero for none. Public for
    /// policy tests.
    pub fn new(
        id: ItemId,
        request: FlowRequest,
        flow: FlowKey,
        enqueue_time: Duration,
        effective_ttl: Duration,
    ) -> Self {
        let received = request.received.unwrap_or(enqueue_time);
        QueueItem { id, request, flow, enqueue_time, effective_ttl, received }
    }

    /// The controller's handle.
    pub fn id(&self) -> ItemId {
        self.id
    }

    /// The request as submitted.
    pub fn request(&self) -> &FlowRequest {
        &self.request
    }

    /// The flow it is queued in.
    pub fn flow(&self) -> &FlowKey {
        &self.flow
    }

    /// When the controller accepted it (its clock).
    pub fn enqueue_time(&self) -> Duration {
        self.enqueue_time
    }

    /// Its queue-wait budget while the pool has endpoints; zero: none.
    pub fn effective_ttl(&self) -> Duration {
        self.effective_ttl
    }

    /// When the gateway received it (its enqueue time unless told).
    pub fn received(&self) -> Duration {
        self.received
    }

    /// Its size in bytes.
    pub fn byte_size(&self) -> u64 {
        self.request.byte_size
    }
}

/// How a request left flow control (the router's `QueueOutcome`; `as_str` gives the
/// metric label values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueOutcome {
    /// Dispatched: the caller proceeds to scheduling.
    Dispatched,
    /// Refused at enqueue: a capacity limit was reached.
    RejectedCapacity,
    /// Refused at enqueue at a capacity limit while the pool had no endpoints.
    RejectedNoEndpoints,
    /// Refused at enqueue for another reason (empty flow ID, shutdown).
    RejectedOther,
    /// Queued, then shed: its queue-wait budget ran out while the pool had endpoints.
    EvictedTtl,
    /// Queued, then shed: its budget ran out while the pool had no endpoints.
    EvictedNoEndpoints,
    /// Queued, then the client went away.
    EvictedContextCancelled,
    /// Queued, then removed for another reason (shutdown).
    EvictedOther,
}

impl QueueOutcome {
    /// Every outcome, in the router's order.
    pub const ALL: [QueueOutcome; 8] = [
        QueueOutcome::Dispatched,
        QueueOutcome::RejectedCapacity,
        QueueOutcome::RejectedNoEndpoints,
        QueueOutcome::RejectedOther,
        QueueOutcome::EvictedTtl,
        QueueOutcome::EvictedNoEndpoints,
        QueueOutcome::EvictedContextCancelled,
        QueueOutcome::EvictedOther,
    ];

    /// The router's `QueueOutcome.String()` (the `outcome` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOutcome::Dispatched => "Dispatched",
            QueueOutcome::RejectedCapacity => "RejectedCapacity",
            QueueOutcome::RejectedNoEndpoints => "RejectedNoEndpoints",
            QueueOutcome::RejectedOther => "RejectedOther",
            QueueOutcome::EvictedTtl => "EvictedTTL",
            QueueOutcome::EvictedNoEndpoints => "EvictedNoEndpoints",
            QueueOutcome::EvictedContextCancelled => "EvictedContextCancelled",
            QueueOutcome::EvictedOther => "EvictedOther",
        }
    }

    /// Whether the request never entered a queue.
    pub fn is_rejection(self) -> bool {
        matches!(self, QueueOutcome::RejectedCapacity | QueueOutcome::RejectedNoEndpoints | QueueOutcome::RejectedOther)
    }
}

/// The router's error text for an outcome other than dispatch (what `EnqueueAndWait`
/// returns, wrapping its sentinel errors).
pub(crate) fn outcome_error(outcome: QueueOutcome) -> &'static str {
    match outcome {
        QueueOutcome::Dispatched => "",
        QueueOutcome::RejectedCapacity => "request rejected pre-queue: queue at capacity",
        QueueOutcome::RejectedNoEndpoints => "request rejected pre-queue: no endpoints available",
        QueueOutcome::RejectedOther => "request rejected pre-queue: flow controller is not running",
        QueueOutcome::EvictedTtl => "request evicted from queue: request TTL expired",
        QueueOutcome::EvictedNoEndpoints => "request evicted from queue: request TTL expired: no endpoints available",
        QueueOutcome::EvictedContextCancelled => {
            "request evicted from queue: request context cancelled: context canceled"
        }
        QueueOutcome::EvictedOther => "request evicted from queue: flow controller is not running",
    }
}

/// The router's error codes (`pkg/common/error`) that flow control answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// HTTP 429.
    ResourceExhausted,
    /// HTTP 503.
    ServiceUnavailable,
    /// HTTP 500.
    Internal,
}

impl ErrorCode {
    /// The code's name, as in the router's error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ResourceExhausted => "ResourceExhausted",
            ErrorCode::ServiceUnavailable => "ServiceUnavailable",
            ErrorCode::Internal => "Internal",
        }
    }

    /// The HTTP status the router's ext-proc answers (`BuildErrResponse`).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::ServiceUnavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// A request flow control did not let through, answered as the router answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRejection {
    /// The outcome; `None` for in-flight eviction and legacy admission.
    pub outcome: Option<QueueOutcome>,
    /// The error code (gives the HTTP status).
    pub code: ErrorCode,
    /// The `x-llm-d-request-dropped-reason` header value, when the router sets one.
    pub reason: Option<&'static str>,
    /// The message.
    pub message: String,
}

impl FlowRejection {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.code.http_status()
    }

    /// The response body, as the router writes it (`inference error: <code> - <msg>`).
    pub fn body(&self) -> String {
        format!("inference error: {} - {}", self.code.as_str(), self.message)
    }

    /// The answer for `outcome` (the admission adapter's `translateFlowControlOutcome`);
    /// `pool_empty`: whether the pool has no endpoints now (a TTL shed then reads as
    /// unavailability, 503, not backpressure, 429). `None` for `Dispatched`.
    pub fn from_outcome(outcome: QueueOutcome, pool_empty: bool) -> Option<Self> {
        let msg = outcome_error(outcome);
        let (code, reason, message) = match outcome {
            QueueOutcome::Dispatched => return None,
            QueueOutcome::RejectedCapacity => (ErrorCode::ResourceExhausted, "rejected-saturated", msg.to_string()),
            QueueOutcome::RejectedNoEndpoints => {
                (ErrorCode::ServiceUnavailable, "rejected-no-endpoints", format!("no endpoints available: {msg}"))
            }
            QueueOutcome::EvictedNoEndpoints => (
                ErrorCode::ServiceUnavailable,
                "rejected-no-endpoints",
                format!("request timed out in queue and no endpoints are available: {msg}"),
            ),
            QueueOutcome::EvictedTtl if pool_empty => (
                ErrorCode::ServiceUnavailable,
                "rejected-no-endpoints",
                format!("request timed out in queue and no endpoints are available: {msg}"),
            ),
            QueueOutcome::EvictedTtl => {
                (ErrorCode::ResourceExhausted, "rejected-ttl-expired", format!("request timed out in queue: {msg}"))
            }
            QueueOutcome::EvictedContextCancelled => {
                (ErrorCode::ServiceUnavailable, "rejected-context-cancelled", format!("client disconnected: {msg}"))
            }
            QueueOutcome::RejectedOther | QueueOutcome::EvictedOther => (
                ErrorCode::ServiceUnavailable,
                "rejected-shutting-down",
                format!("flow controller shutting down: {msg}"),
            ),
        };
        Some(FlowRejection { outcome: Some(outcome), code, reason: Some(reason), message })
    }

    /// A refusal for a reason the router reports as an internal error (an empty flow ID).
    pub(crate) fn internal(outcome: QueueOutcome, err: &str) -> Self {
        FlowRejection {
            outcome: Some(outcome),
            code: ErrorCode::Internal,
            reason: None,
            message: format!("internal flow control error: {err}"),
        }
    }

    /// The answer to an in-flight request flow control evicted to free capacity for
    /// higher-priority work (the router's ext-proc: 429, reason `evicted`).
    pub fn evicted() -> Self {
        FlowRejection {
            outcome: None,
            code: ErrorCode::ResourceExhausted,
            reason: Some("evicted"),
            message: "request evicted by flow control".into(),
        }
    }

    /// The legacy admission's refusal (flow control gate off): a sheddable request while
    /// the pool is saturated.
    pub fn sheddable_dropped() -> Self {
        FlowRejection {
            outcome: None,
            code: ErrorCode::ResourceExhausted,
            reason: None,
            message: "system saturated, sheddable request dropped".into(),
        }
    }
}

impl std::fmt::Display for FlowRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.body())
    }
}

impl std::error::Error for FlowRejection {}

/// Token usage of a finished request (program-aware fairness charges it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// A policy failed in a way that skips its band for this cycle (the router logs and
/// moves on to the next band).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_keys_sort_by_priority_then_id() {
        // Mirrors flow.go's FlowKey.Compare: higher priority first, then ID ascending.
        let mut keys = vec![FlowKey::new("b", 0), FlowKey::new("a", 0), FlowKey::new("z", 10)];
        keys.sort();
        assert_eq!(keys, [FlowKey::new("z", 10), FlowKey::new("a", 0), FlowKey::new("b", 0)]);
        assert_eq!(FlowKey::new("t", 10).to_string(), "t:10");
    }

    #[test]
    fn outcomes_answer_as_the_admission_adapter_translates_them() {
        // Mirrors admission_test.go TestTranslateFlowControlOutcome.
        let r = |o, empty| FlowRejection::from_outcome(o, empty).unwrap();
        assert!(FlowRejection::from_outcome(QueueOutcome::Dispatched, false).is_none());
        let cap = r(QueueOutcome::RejectedCapacity, false);
        assert_eq!((cap.status(), cap.reason), (429, Some("rejected-saturated")));
        assert_eq!(cap.body(), "inference error: ResourceExhausted - request rejected pre-queue: queue at capacity");
        assert_eq!(r(QueueOutcome::RejectedNoEndpoints, false).status(), 503);
        let ttl = r(QueueOutcome::EvictedTtl, false);
        assert_eq!((ttl.status(), ttl.reason), (429, Some("rejected-ttl-expired")));
        assert!(ttl.message.starts_with("request timed out in queue: "));
        let ttl_empty = r(QueueOutcome::EvictedTtl, true);
        assert_eq!((ttl_empty.status(), ttl_empty.reason), (503, Some("rejected-no-endpoints")));
        assert_eq!(r(QueueOutcome::EvictedNoEndpoints, false).reason, Some("rejected-no-endpoints"));
        let gone = r(QueueOutcome::EvictedContextCancelled, false);
        assert_eq!((gone.status(), gone.reason), (503, Some("rejected-context-cancelled")));
        let down = r(QueueOutcome::EvictedOther, false);
        assert_eq!((down.status(), down.reason), (503, Some("rejected-shutting-down")));
        assert_eq!(FlowRejection::evicted().status(), 429);
        assert_eq!(QueueOutcome::EvictedTtl.as_str(), "EvictedTTL");
    }

    #[test]
    fn fairness_and_objective_come_from_headers_or_their_aliases() {
        let mut h = BTreeMap::new();
        assert_eq!(fairness_id(&h), "default-flow");
        h.insert(OLD_FAIRNESS_ID_HEADER.to_string(), "old".to_string());
        assert_eq!(fairness_id(&h), "old");
        h.insert(FAIRNESS_ID_HEADER.to_string(), "new".to_string());
        assert_eq!(fairness_id(&h), "new");
        assert_eq!(objective_name(&h), None);
        h.insert(OLD_OBJECTIVE_HEADER.to_string(), "batch".to_string());
        assert_eq!(objective_name(&h), Some("batch"));
        assert!(is_sheddable(-1) && !is_sheddable(0));
    }
}
