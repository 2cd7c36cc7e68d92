//! Tests of the request-control plugins: each ported test names the llm-d-router Go
//! test whose inputs and expected outcomes it mirrors.

mod misc;
mod reporter;
mod screener;
mod session;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::endpoint::{Endpoint, Role};
use crate::plugin::{PluginHandle, ProfilePick};
use crate::registry::PluginRegistry;
use crate::request::LlmRequest;
use crate::scheduler::PickResult;

/// An endpoint named `id` at `address`.
fn ep_at(id: &str, address: &str) -> Endpoint {
    Endpoint::new(id, address, Role::Both)
}

/// An endpoint named `id`.
fn ep(id: &str) -> Endpoint {
    ep_at(id, "10.0.0.1:8000")
}

/// A request with `headers`.
fn req_with(id: &str, headers: &[(&str, &str)]) -> LlmRequest {
    let mut r = LlmRequest::new(id, "m", "");
    r.headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    r
}

/// Headers as a map.
fn headers(h: &[(&str, &str)]) -> BTreeMap<String, String> {
    h.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A pick of `endpoint` by `profile`, with `primary` the primary profile.
fn pick_result(primary: &str, picks: &[(&str, &str)]) -> PickResult {
    PickResult {
        primary: primary.into(),
        picks: picks
            .iter()
            .map(|(profile, endpoint)| {
                (
                    profile.to_string(),
                    ProfilePick {
                        endpoint: endpoint.to_string(),
                        address: "10.0.0.1:8000".into(),
                        score: 1.0,
                        breakdown: Vec::new(),
                        candidates: 1,
                        uncached_tokens: None,
                        held_prefix: None,
                    },
                )
            })
            .collect(),
        roles: Default::default(),
        headers: Vec::new(),
    }
}

/// The registry of this module's types alone.
fn registry() -> PluginRegistry {
    let mut r = PluginRegistry::new();
    super::register(&mut r);
    r
}

/// Builds plugin `type_name` from `params` through the registered factory.
fn build(type_name: &str, params: Value) -> Result<PluginHandle, String> {
    let r = registry();
    let f = r.get(type_name).ok_or_else(|| format!("{type_name} is not registered"))?;
    f("p", &params)
}
