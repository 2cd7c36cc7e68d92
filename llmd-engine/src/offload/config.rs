//! KV offloading settings, as vLLM takes them: the
//! shorthand `--kv-offloading-size GiB` / `--kv-offloading-backend native`, and the
//! explicit `--kv-transfer-config` of its OffloadingConnector:
//!
//! ```json
//! {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
//!  "kv_connector_extra_config": {"cpu_bytes_to_use": 107374182400, "block_size": 256,
//!   "eviction_policy": "arc", "store_threshold": 2,
//!   "secondary_tiers": [{"type": "fs", "root_dir": "/mnt/kv", "n_read_threads": 16, "n_write_threads": 16,
//!                        "max_bytes": 1099511627776, "medium": "SHARED_STORAGE"}]}}
//! ```
//!
//! `max_bytes` and `medium` are llmd's (vLLM's file tier has no cap). Keys vLLM accepts
//! and llmd does not use (`spec_name`, `spec_module_path`,
//! `hybrid_chunk_size`) are ignored; wrong types and other connectors are refused by name.

use serde_json::{Map, Value};

use crate::error::{EngineError, Result};
use llmd_kvcache::tier::PolicyKind;

/// A tier below host memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondaryTier {
    /// Files under a directory (local disk, or storage several replicas share).
    Fs {
        /// The directory.
        root_dir: String,
        /// Reader threads (vLLM's default 16).
        read_threads: usize,
        /// Writer threads (vLLM's default 16).
        write_threads: usize,
        /// Bytes of block files it keeps at most (llmd's `max_bytes`; default four
        /// times the host memory), the least recently used given up first.
        max_bytes: Option<u64>,
        /// The medium its events name (llmd's `medium`; default `STORAGE`, e.g.
        /// `SHARED_STORAGE` for a directory replicas share).
        medium: Option<String>,
    },
}

/// Where evicted KV blocks go, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffloadConfig {
    /// Host memory for offloaded blocks, bytes (`cpu_bytes_to_use`).
    pub cpu_bytes: u64,
    /// Tokens per offloaded block (`block_size`): a multiple of the engine's; `None`
    /// takes the engine's.
    pub block_size: Option<usize>,
    /// What a full tier gives up (`eviction_policy`).
    pub eviction_policy: PolicyKind,
    /// Lookups of a block before it is offloaded (`store_threshold`; 0: every block).
    pub store_threshold: u32,
    /// Hashes whose lookups are counted at most (`max_tracker_size`).
    pub tracker_size: usize,
    /// Tiers below host memory (`secondary_tiers`).
    pub secondary: Vec<SecondaryTier>,
}

fn bad(field: &str, reason: impl Into<String>) -> EngineError {
    EngineError::config("kv-transfer-config", field, reason)
}

impl OffloadConfig {
    /// `--kv-offloading-size GiB` with `--kv-offloading-backend native`: host memory only.
    pub fn from_size_gib(gib: f64) -> Result<Self> {
        if !(gib.is_finite() && gib > 0.0) {
            return Err(bad("kv_offloading_size", format!("{gib} is not a positive size in GiB")));
        }
        Ok(OffloadConfig {
            cpu_bytes: (gib * f64::from(1u32 << 30)) as u64,
            block_size: None,
            eviction_policy: PolicyKind::Lru,
            store_threshold: 0,
            tracker_size: 64_000,
            secondary: Vec::new(),
        })
    }

    /// vLLM's `--kv-transfer-config` for its OffloadingConnector.
    pub fn from_vllm_json(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).map_err(|e| bad("(json)", format!("not JSON: {e}")))?;
        let connector = v.get("kv_connector").and_then(Value::as_str).unwrap_or_default();
        if connector != "OffloadingConnector" {
            return Err(bad("kv_connector", format!("{connector:?} is not OffloadingConnector")));
        }
        let empty = Map::new();
        let extra = match v.get("kv_connector_extra_config") {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(other) => return Err(bad("kv_connector_extra_config", format!("expected an object, got {other}"))),
        };
        let uint = |k: &str| -> Result<Option<u64>> {
            match extra.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| bad(k, format!("{v} is not a non-negative integer"))),
            }
        };
        // vLLM's own words when it is missing.
        let cpu_bytes =
            uint("cpu_bytes_to_use")?.ok_or_else(|| bad("cpu_bytes_to_use", "cpu_bytes_to_use must be specified"))?;
        let block_size = uint("block_size")?.map(|b| b as usize).filter(|&b| b > 0);
        let eviction_policy = match extra.get("eviction_policy") {
            None | Some(Value::Null) => PolicyKind::Lru,
            Some(Value::String(s)) => s.parse().map_err(|e: String| bad("eviction_policy", e))?,
            Some(other) => return Err(bad("eviction_policy", format!("expected a string, got {other}"))),
        };
        let store_threshold =
            u32::try_from(uint("store_threshold")?.unwrap_or(0)).map_err(|_| bad("store_threshold", "too large"))?;
        let tracker_size = uint("max_tracker_size")?.map_or(64_000, |n| n as usize);
        let mut secondary = Vec::new();
        match extra.get("secondary_tiers") {
            None | Some(Value::Null) => {}
            Some(Value::Array(tiers)) => {
                for (i, t) in tiers.iter().enumerate() {
                    let field = format!("secondary_tiers[{i}]");
                    let kind = t.get("type").and_then(Value::as_str).unwrap_or_default();
                    if kind != "fs" {
                        return Err(bad(&field, format!("tier type {kind:?} (llmd has \"fs\")")));
                    }
                    let root_dir = t
                        .get("root_dir")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| bad(&field, "an fs tier needs root_dir"))?
                        .to_string();
                    let threads = |k: &str| t.get(k).and_then(Value::as_u64).map_or(16, |n| n.max(1) as usize);
                    let max_bytes = match t.get("max_bytes") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                            bad(&format!("{field}.max_bytes"), format!("{v} is not a positive integer"))
                        })?),
                    };
                    let medium = match t.get("medium") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(m)) if !m.is_empty() => Some(m.clone()),
                        Some(v) => return Err(bad(&format!("{field}.medium"), format!("{v} is not a medium name"))),
                    };
                    secondary.push(SecondaryTier::Fs {
                        root_dir,
                        read_threads: threads("n_read_threads"),
                        write_threads: threads("n_write_threads"),
                        max_bytes,
                        medium,
                    });
                }
            }
            Some(other) => return Err(bad("secondary_tiers", format!("expected a list, got {other}"))),
        }
        Ok(OffloadConfig { cpu_bytes, block_size, eviction_policy, store_threshold, tracker_size, secondary })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_shorthand_and_llm_ds_guide_configs_read_as_vllm_reads_them() {
        let c = OffloadConfig::from_size_gib(1.5).unwrap();
        assert_eq!(c.cpu_bytes, 3 << 29);
        // llm-d's tiered-prefix-cache guide, CPU (100 GiB).
        let c = OffloadConfig::from_vllm_json(
            r#"{"kv_connector":"OffloadingConnector","kv_role":"kv_both","kv_connector_extra_config":{"cpu_bytes_to_use":107374182400}}"#,
        )
        .unwrap();
        assert_eq!((c.cpu_bytes, c.eviction_policy, c.secondary.len()), (100 << 30, PolicyKind::Lru, 0));
        // ... and CPU + file system.
        let c = OffloadConfig::from_vllm_json(
            r#"{"kv_connector":"OffloadingConnector","kv_role":"kv_both","kv_connector_extra_config":
               {"spec_name":"TieringOffloadingSpec","cpu_bytes_to_use":1024,"block_size":256,"eviction_policy":"arc",
                "store_threshold":2,"secondary_tiers":[{"type":"fs","root_dir":"/mnt/kv","n_read_threads":8,"max_bytes":4096}]}}"#,
        )
        .unwrap();
        assert_eq!((c.block_size, c.eviction_policy, c.store_threshold), (Some(256), PolicyKind::Arc, 2));
        assert_eq!(
            c.secondary,
            [SecondaryTier::Fs {
                root_dir: "/mnt/kv".into(),
                read_threads: 8,
                write_threads: 16,
                max_bytes: Some(4096),
                medium: None
            }]
        );
    }

    #[test]
    fn what_cannot_be_followed_is_refused_by_name() {
        for (json, says) in [
            (r#"{"kv_connector":"NixlConnector"}"#, "OffloadingConnector"),
            (r#"{"kv_connector":"OffloadingConnector"}"#, "cpu_bytes_to_use must be specified"),
            (
                r#"{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":-1}}"#,
                "cpu_bytes_to_use",
            ),
            (
                r#"{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":1,"eviction_policy":"lfu"}}"#,
                "lfu",
            ),
            (
                r#"{"kv_connector":"OffloadingConnector","kv_connector_extra_config":{"cpu_bytes_to_use":1,"secondary_tiers":[{"type":"s3"}]}}"#,
                "secondary_tiers[0]",
            ),
        ] {
            let e = OffloadConfig::from_vllm_json(json).unwrap_err().to_string();
            assert!(e.contains(says), "{json}: {e}");
        }
        assert!(OffloadConfig::from_size_gib(0.0).is_err());
    }
}
