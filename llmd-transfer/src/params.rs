//! vLLM NixlConnector's `kv_transfer_params`, the request/response field that drives a
//! disaggregated request (vLLM `distributed/kv_transfer/kv_connector/v1/nixl`):
//!
//! - the routing sidecar sends the prefill leg [`KvTransferParams::prefill_request`]
//!   (`do_remote_decode: true`, the remote fields null);
//! - the prefill engine answers with [`KvTransferParams::prefill_response`]
//!   (`do_remote_prefill: true`, its block ids, engine id, request id, side-channel host
//!   and port, `tp_size`);
//! - the sidecar copies that verbatim into the decode leg, and the decode engine reads
//!   it with [`KvTransferParams::remote_prefill`], which refuses params missing a field
//!   the pull needs (vLLM logs "Got invalid KVTransferParams" and recomputes).
//!
//! Keys this version does not know pass through unchanged (`extra`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, TransferError};

/// `remote_block_ids`: one list per KV-cache group (vLLM's hybrid allocator writes
/// `[[...], [...]]`), or the flat list older vLLM wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlockIds {
    /// `[[g0 ids], [g1 ids], ...]`.
    Groups(Vec<Vec<u32>>),
    /// `[ids]` (one group).
    Flat(Vec<u32>),
}

impl BlockIds {
    /// One list per group.
    pub fn groups(&self) -> Vec<Vec<u32>> {
        match self {
            BlockIds::Groups(g) => g.clone(),
            BlockIds::Flat(f) => vec![f.clone()],
        }
    }

    /// Block ids over all groups.
    pub fn len(&self) -> usize {
        match self {
            BlockIds::Groups(g) => g.iter().map(Vec::len).sum(),
            BlockIds::Flat(f) => f.len(),
        }
    }

    /// No block ids (a full prefix hit on the decode side still notifies the prefiller).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The params object. Fields are vLLM's names; absent booleans are false.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KvTransferParams {
    /// Prefill here, decode elsewhere: stop after the prompt and hold the blocks.
    #[serde(default)]
    pub do_remote_decode: bool,
    /// The prompt's KV was computed elsewhere: pull it before decoding.
    #[serde(default)]
    pub do_remote_prefill: bool,
    /// The prefiller's KV block ids (its paged-pool indices, not hashes).
    #[serde(default)]
    pub remote_block_ids: Option<BlockIds>,
    /// The prefiller's engine id.
    #[serde(default)]
    pub remote_engine_id: Option<String>,
    /// The prefill request's id there (what the blocks are held under); left out when
    /// unset, as llm-d's sidecar leaves it out of the prefill leg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_request_id: Option<String>,
    /// The prefiller's side-channel host.
    #[serde(default)]
    pub remote_host: Option<String>,
    /// The prefiller's side-channel port.
    #[serde(default)]
    pub remote_port: Option<u16>,
    /// The prefiller's tensor-parallel size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp_size: Option<u32>,
    /// Prompt tokens whose KV the prefiller computed (vLLM 0.33's `remote_num_tokens`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_num_tokens: Option<u64>,
    /// Keys this version does not read (`remote_block_size`, `dcp_size`, lease fields...),
    /// kept as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What the decode side needs to pull, read from params that ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePrefill {
    /// Block ids per group.
    pub block_ids: Vec<Vec<u32>>,
    /// The prefiller's engine id.
    pub engine_id: String,
    /// The prefill request's id there.
    pub request_id: String,
    /// Side-channel host.
    pub host: String,
    /// Side-channel port.
    pub port: u16,
    /// The prefiller's tensor-parallel size (1 when not given).
    pub tp_size: u32,
}

impl RemotePrefill {
    /// The side channel's `host:port` (IPv6 hosts bracketed).
    pub fn side_channel(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl KvTransferParams {
    /// Reads the request or response field; errors name what is wrong.
    pub fn from_value(v: &Value) -> Result<Self> {
        if !v.is_object() {
            return Err(TransferError::InvalidParams(format!("expected an object, got {v}")));
        }
        serde_json::from_value(v.clone()).map_err(|e| TransferError::InvalidParams(e.to_string()))
    }

    /// As JSON, the way vLLM writes it (unset remote fields as `null`).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// What llm-d's sidecar puts on the prefill leg.
    pub fn prefill_request() -> Self {
        KvTransferParams { do_remote_decode: true, ..Self::default() }
    }

    /// What a prefill engine returns for a request that asked for remote decode: the
    /// keys vLLM 0.33's NixlConnector returns in pull mode (its `request_finished`;
    /// `tests/fixtures/vllm-0.33-nixl-pull-request-finished.py` in this crate), with
    /// `remote_num_tokens` from [`KvTransferParams::with_num_tokens`].
    pub fn prefill_response(
        block_ids: Vec<Vec<u32>>,
        engine_id: &str,
        request_id: &str,
        host: &str,
        port: u16,
        tp_size: u32,
    ) -> Self {
        // What vLLM writes for a single-rank, no-context-parallel prefiller in pull
        // mode; llmd's decode side reads none of them but passes them on.
        let extra: Map<String, Value> = [
            ("dcp_size", Value::from(1)),
            ("pp_size", Value::from(1)),
            ("remote_blocks_expiry_time", Value::Null),
            ("remote_registration_generation", Value::from(0)),
            ("transfer_mode", Value::from("pull")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        KvTransferParams {
            do_remote_decode: false,
            do_remote_prefill: true,
            remote_block_ids: Some(BlockIds::Groups(block_ids)),
            remote_engine_id: Some(engine_id.to_string()),
            remote_request_id: Some(request_id.to_string()),
            remote_host: Some(host.to_string()),
            remote_port: Some(port),
            tp_size: Some(tp_size),
            remote_num_tokens: Some(0),
            extra,
        }
    }

    /// Sets `remote_num_tokens`: the prompt tokens the prefiller computed.
    pub fn with_num_tokens(mut self, tokens: u64) -> Self {
        self.remote_num_tokens = Some(tokens);
        self
    }

    /// For the decode side: `None` when the params do not ask for a remote prefill;
    /// the pull's coordinates when they do; an error naming every missing field when
    /// they ask but cannot be followed (the caller recomputes, or fails under
    /// `kv_load_failure_policy: fail`).
    pub fn remote_prefill(&self) -> Result<Option<RemotePrefill>> {
        if !self.do_remote_prefill {
            return Ok(None);
        }
        let mut missing = Vec::new();
        if self.remote_block_ids.is_none() {
            missing.push("remote_block_ids");
        }
        if self.remote_engine_id.as_deref().is_none_or(str::is_empty) {
            missing.push("remote_engine_id");
        }
        if self.remote_request_id.as_deref().is_none_or(str::is_empty) {
            missing.push("remote_request_id");
        }
        if self.remote_host.as_deref().is_none_or(str::is_empty) {
            missing.push("remote_host");
        }
        if self.remote_port.is_none_or(|p| p == 0) {
            missing.push("remote_port");
        }
        if !missing.is_empty() {
            return Err(TransferError::InvalidParams(format!(
                "do_remote_prefill is set but {} {} missing",
                missing.join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            )));
        }
        Ok(Some(RemotePrefill {
            block_ids: self.remote_block_ids.as_ref().map(BlockIds::groups).unwrap_or_default(),
            engine_id: self.remote_engine_id.clone().unwrap_or_default(),
            request_id: self.remote_request_id.clone().unwrap_or_default(),
            host: self.remote_host.clone().unwrap_or_default(),
            port: self.remote_port.unwrap_or_default(),
            tp_size: self.tp_size.unwrap_or(1),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_prefill_leg_is_what_llm_ds_sidecar_sends() {
        assert_eq!(
            KvTransferParams::prefill_request().to_value(),
            json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
                   "remote_block_ids": null, "remote_host": null, "remote_port": null})
        );
    }

    #[test]
    fn the_prefill_answer_carries_vllms_field_names_and_reads_back() {
        let p = KvTransferParams::prefill_response(vec![vec![7, 8, 9]], "engine-p", "req-1", "10.0.0.5", 5600, 1);
        let v = p.to_value();
        assert_eq!(
            v,
            json!({"do_remote_prefill": true, "do_remote_decode": false, "remote_block_ids": [[7, 8, 9]],
                   "remote_engine_id": "engine-p", "remote_request_id": "req-1", "remote_host": "10.0.0.5",
                   "remote_port": 5600, "tp_size": 1, "dcp_size": 1, "pp_size": 1, "remote_num_tokens": 0,
                   "remote_blocks_expiry_time": null, "remote_registration_generation": 0, "transfer_mode": "pull"})
        );
        let r = KvTransferParams::from_value(&v).unwrap().remote_prefill().unwrap().unwrap();
        assert_eq!(r.block_ids, vec![vec![7, 8, 9]]);
        assert_eq!(r.side_channel(), "10.0.0.5:5600");
    }

    /// The keys of the `dict(...)` vLLM 0.33's NixlConnector returns from
    /// `request_finished` in pull mode (the checked-in source lines), against ours.
    #[test]
    fn the_prefill_answer_has_exactly_the_keys_vllm_returns() {
        let src = include_str!("../tests/fixtures/vllm-0.33-nixl-pull-request-finished.py");
        let call = src.rsplit("dict(").next().unwrap();
        let body = &call[..call.find("\n        )").unwrap()];
        let mut theirs: Vec<&str> =
            body.lines().filter_map(|l| l.trim().split_once('=').map(|(k, _)| k.trim())).collect();
        theirs.sort_unstable();
        let ours =
            KvTransferParams::prefill_response(vec![vec![1]], "e", "r", "h", 1, 1).with_num_tokens(16).to_value();
        let mut ours: Vec<&str> = ours.as_object().unwrap().keys().map(String::as_str).collect();
        ours.sort_unstable();
        assert_eq!(ours, theirs);
        assert!(theirs.len() >= 14, "{theirs:?}");
    }

    #[test]
    fn older_flat_block_ids_and_unknown_keys_pass() {
        let v = json!({"do_remote_prefill": true, "remote_block_ids": [1, 2], "remote_engine_id": "e",
                       "remote_request_id": "r", "remote_host": "::1", "remote_port": 5601,
                       "remote_blocks_expiry_time": 1234.5, "dcp_size": 1});
        let p = KvTransferParams::from_value(&v).unwrap();
        let r = p.remote_prefill().unwrap().unwrap();
        assert_eq!((r.side_channel(), r.block_ids, r.tp_size), ("[::1]:5601".to_string(), vec![vec![1, 2]], 1));
        // Unknown keys come back out unchanged.
        let out = p.to_value();
        assert_eq!(out["remote_blocks_expiry_time"], json!(1234.5));
        assert_eq!(out["dcp_size"], json!(1));
    }

    #[test]
    fn params_missing_what_a_pull_needs_are_refused_by_name() {
        let v = json!({"do_remote_prefill": true, "remote_block_ids": [[1]], "remote_engine_id": "e"});
        let err = KvTransferParams::from_value(&v).unwrap().remote_prefill().unwrap_err().to_string();
        assert!(err.contains("remote_request_id, remote_host, remote_port are missing"), "{err}");
        // Not asking for a remote prefill is not an error.
        assert_eq!(KvTransferParams::prefill_request().remote_prefill().unwrap(), None);
        // An empty list is a full prefix hit on the decode side: valid.
        let hit = KvTransferParams::prefill_response(vec![vec![]], "e", "r", "h", 1, 1);
        assert!(hit.remote_prefill().unwrap().unwrap().block_ids[0].is_empty());
        // Wrong types name the field.
        let bad = KvTransferParams::from_value(&json!({"remote_port": "x"})).unwrap_err().to_string();
        assert!(bad.contains("invalid"), "{bad}");
        assert!(KvTransferParams::from_value(&json!([1])).is_err());
    }
}
