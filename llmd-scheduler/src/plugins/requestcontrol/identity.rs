//! `agent-identity` (llm-d-router, alpha): a request-header processor that finds the
//! coding agent's session id in provider headers and publishes it as the request
//! attribute `agent-identity` (producer-agnostic key `agent-identity/`). The router's
//! director takes it as the request's fairness ID when the fairness header is absent
//! ([`super::fairness_id`]); a `session_id` session source can name it
//! (`attribute: agent-identity`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{DataKey, Fields, RequestAttributes, RequestHeaderProcessor};

/// `agent-identity`.
pub const AGENT_IDENTITY: &str = "agent-identity";
/// Claude Code's session header.
pub const CLAUDE_CODE_SESSION_HEADER: &str = "x-claude-code-session-id";
/// OpenCode's session header.
pub const OPENCODE_SESSION_HEADER: &str = "x-session-affinity";
/// Codex's session header (0.131.0 and later).
pub const CODEX_SESSION_HEADER: &str = "session-id";
/// Codex's session header before 0.131.0.
pub const CODEX_SESSION_HEADER_LEGACY: &str = "session_id";

/// The built-in headers, in priority order.
pub const DEFAULT_PRIORITY_HEADERS: [&str; 4] =
    [CLAUDE_CODE_SESSION_HEADER, OPENCODE_SESSION_HEADER, CODEX_SESSION_HEADER, CODEX_SESSION_HEADER_LEGACY];

/// The attribute key it writes: `agent-identity` from any producer.
pub fn agent_identity_key() -> DataKey {
    DataKey::new(AGENT_IDENTITY, "")
}

/// The request's agent identity, when a processor published a non-empty one.
pub fn agent_identity(attrs: &RequestAttributes) -> Option<&str> {
    attrs.get_str(&agent_identity_key()).filter(|s| !s.is_empty())
}

/// `agent-identity`: the first non-empty header of `additionalSessionHeaders`
/// (lower-cased, before the built-in ones) then [`DEFAULT_PRIORITY_HEADERS`], verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    headers: Vec<String>,
}

impl AgentIdentity {
    /// From `parameters`: `additionalSessionHeaders` (a list of header names).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let f = Fields::new(p, "", &["additionalSessionHeaders"])?;
        let extra = f.strings("additionalSessionHeaders")?;
        // Empty names and duplicates stay, as in the router: the first match wins anyway.
        let headers =
            extra.iter().map(String::as_str).chain(DEFAULT_PRIORITY_HEADERS).map(str::to_ascii_lowercase).collect();
        Ok(AgentIdentity { headers })
    }

    /// The headers checked, in order.
    pub fn priority_headers(&self) -> &[String] {
        &self.headers
    }
}

impl RequestHeaderProcessor for AgentIdentity {
    fn request_header(&self, headers: &BTreeMap<String, String>, attrs: &mut RequestAttributes) -> Result<(), String> {
        if let Some(id) = self.headers.iter().find_map(|h| headers.get(h).filter(|v| !v.is_empty())) {
            attrs.put(agent_identity_key(), Value::String(id.clone()));
        }
        Ok(())
    }
}
