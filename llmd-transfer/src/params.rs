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
    /// The prefill request's id there (what the blocks are held under).
    #[serde(default)]
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

    /// What a prefill engine returns for a request that asked for remote decode.
    pub fn prefill_response(
        block_ids: Vec<Vec<u32>>,
        engine_id: &str,
        request_id: &str,
        host: &str,
        port: u16,
        tp_size: u32,
    ) -> Self {
        KvTransferParams {
            do_remote_decode: false,
            do_remote_prefill: true,
            remote_block_ids: Some(BlockIds::Groups(block_ids)),
            remote_engine_id: Some(engine_id.to_string()),
            remote_request_id: Some(request_id.to_string()),
            remote_host: Some(host.to_string()),
            remote_port: Some(port),
            tp_size: Some(tp_size),
            extra: Map::new(),
        }
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
                   "remote_block_ids": null, "remote_host": null, "remote_port": null, "remote_request_id": null})
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
                   "remote_port": 5600, "tp_size": 1})
        );
        let r = KvTransferParams::from_value(&v).unwrap().remote_prefill().unwrap().unwrap();
        assert_eq!(r.block_ids, vec![vec![7, 8, 9]]);
        assert_eq!(r.side_channel(), "10.0.0.5:5600");
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
