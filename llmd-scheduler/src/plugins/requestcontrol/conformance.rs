//! The router's conformance-test plugins (Gateway API Inference Extension conformance):
//!
//! - `header-based-testing-filter`: keeps the endpoints the request names in
//!   `test-epp-endpoint-selection` (a comma list of `IP` or `IP:port`, IPv6 with or
//!   without brackets), in header order, one per IP; none when the header is absent.
//! - `destination-endpoint-served-verifier`: copies the endpoint Envoy says served the
//!   request (`envoy.lb` / `x-gateway-destination-endpoint-served` in the request's
//!   metadata) into the response header `x-conformance-test-served-endpoint`, or a
//!   `fail: ...` reason.
//!
//! Both factories ignore their parameters, as the router's do.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::{ResponseContext, ResponseHeaderProcessor};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter};
use crate::request::LlmRequest;

/// `header-based-testing-filter`.
pub const HEADER_BASED_TESTING_FILTER: &str = "header-based-testing-filter";
/// `destination-endpoint-served-verifier`.
pub const SERVED_VERIFIER: &str = "destination-endpoint-served-verifier";
/// The request header naming the endpoints to keep.
pub const ENDPOINT_SELECTION_HEADER: &str = "test-epp-endpoint-selection";
/// The response header the verifier writes.
pub const SERVED_ENDPOINT_RESULT_HEADER: &str = "x-conformance-test-served-endpoint";
/// Envoy's metadata namespace for the destination.
pub const DESTINATION_ENDPOINT_NAMESPACE: &str = "envoy.lb";
/// The metadata key of the endpoint that served the request.
pub const DESTINATION_ENDPOINT_SERVED_KEY: &str = "x-gateway-destination-endpoint-served";

/// Go's `net.SplitHostPort`: `host:port` or `[host]:port` (the port may be empty);
/// `None` for a missing port or a bare IPv6 address.
pub fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if port.contains(':') || host.contains('[') || host.contains(']') {
            return None;
        }
        return Some((host, port));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') || host.contains('[') || host.contains(']') || port.contains(']') {
        return None;
    }
    Some((host, port))
}

/// An endpoint's IP and port from its `host:port` address (a bracketed IPv6 host
/// unbracketed; an address without a port is all IP).
pub fn endpoint_ip_port(address: &str) -> (&str, &str) {
    match split_host_port(address) {
        Some((h, p)) => (h, p),
        None => (address.trim_matches(|c| c == '[' || c == ']'), ""),
    }
}

/// `header-based-testing-filter`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderBasedTestingFilter;

impl Filter for HeaderBasedTestingFilter {
    fn filter<'a>(&self, _: &mut CycleState, req: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let Some(value) = req.headers.get(ENDPOINT_SELECTION_HEADER).filter(|v| !v.trim().is_empty()) else {
            return Vec::new();
        };
        let unbracket = |s: &str| s.trim_matches(|c| c == '[' || c == ']').to_string();
        // As the router's maps: the last endpoint with an IP (or IP:port) wins.
        let mut by_ip: HashMap<String, &'a Endpoint> = HashMap::new();
        let mut by_ip_port: HashMap<String, &'a Endpoint> = HashMap::new();
        for e in &endpoints {
            let (ip, port) = endpoint_ip_port(&e.address);
            let ip = unbracket(ip.trim());
            if ip.is_empty() {
                continue;
            }
            let port = port.trim();
            if !port.is_empty() {
                by_ip_port.insert(format!("{ip}:{port}"), e);
            }
            by_ip.insert(ip, e);
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (host, port) = split_host_port(item).unwrap_or((item, ""));
            let host = unbracket(host);
            let found = if port.is_empty() { by_ip.get(&host) } else { by_ip_port.get(&format!("{host}:{port}")) };
            if let Some(e) = found {
                // One endpoint per IP, the first named.
                if seen.insert(unbracket(endpoint_ip_port(&e.address).0)) {
                    out.push(*e);
                }
            }
        }
        out
    }
}

/// `destination-endpoint-served-verifier`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DestinationEndpointServedVerifier;

impl DestinationEndpointServedVerifier {
    /// The header value for Envoy request metadata `metadata`.
    pub fn verdict(metadata: Option<&Value>) -> String {
        let Some(lb) = metadata.and_then(|m| m.get(DESTINATION_ENDPOINT_NAMESPACE)).filter(|v| v.is_object()) else {
            return "fail: missing envoy lb metadata".into();
        };
        match lb.get(DESTINATION_ENDPOINT_SERVED_KEY).and_then(Value::as_str) {
            Some(served) => served.to_string(),
            None => "fail: missing destination endpoint served metadata".into(),
        }
    }
}

impl ResponseHeaderProcessor for DestinationEndpointServedVerifier {
    fn response_header(&self, cx: &ResponseContext<'_>, headers: &mut BTreeMap<String, String>) {
        headers.insert(SERVED_ENDPOINT_RESULT_HEADER.into(), Self::verdict(cx.metadata));
    }
}
