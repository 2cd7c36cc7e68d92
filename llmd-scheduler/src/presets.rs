//! Built-in routing configurations for `llmd up --routing` and `llmd epp --routing`.

use crate::config::SchedulerConfig;
use crate::error::{Result, SchedulerError};
use crate::registry::PluginRegistry;

const ROUND_ROBIN: &str = "
plugins:
- type: round-robin-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: round-robin-picker
";

// The picker's own in-flight counts, exact and immediate where scrapes lag: prompt
// tokens still to prefill (aged by each endpoint's observed prefill rate: what delays
// the next first token) lead, requests in flight (the decode batch) follow, and ties go
// to the endpoint sent a request longest ago. The scraped queue and cache usage are
// left out: 200 ms stale, they scramble exactly the close calls this preset makes (add
// them in a config when other pickers share the endpoints).
const LOAD: &str = "
plugins:
- type: token-load-scorer
  parameters:
    queueThresholdTokens: 1024
- type: active-request-scorer
- type: max-score-picker
  parameters:
    tieBreak: least-recent
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: token-load-scorer
    weight: 3
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
";

// Prefix affinity weighed against load in one unit: `prefill-cost-scorer` scores each
// endpoint by the prefill a request would wait behind plus the part of its prompt that
// endpoint's cache lacks (llm-d's approximate prefix index says which), so a cache hit
// wins until the queue in front of it costs more than a miss elsewhere, and prefixes no
// one holds go to the least loaded endpoint. The prefix score itself (weight 1) breaks
// near-ties toward the holder, keeping one copy of a prefix in the fleet rather than
// several; in-flight requests (the decode batch) follow, then the endpoint sent a
// request longest ago. Scraped queue and cache usage are left out, as in `load`.
const PREFIX: &str = "
plugins:
- type: prefix-cache-scorer
  parameters:
    blockSizeTokens: 16
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: prefill-cost-scorer
- type: active-request-scorer
- type: max-score-picker
  parameters:
    tieBreak: least-recent
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 1
  - pluginRef: prefill-cost-scorer
    weight: 3
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
";

// As `prefix`, with what each endpoint's cache holds taken from the engines' own KV
// events (exact, evictions included) instead of the picker's guess.
const PRECISE_PREFIX: &str = "
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    blockSize: 16
- type: prefill-cost-scorer
- type: active-request-scorer
- type: max-score-picker
  parameters:
    tieBreak: least-recent
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 1
  - pluginRef: prefill-cost-scorer
    weight: 3
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
";

// llm-d's inference-scheduling well-lit path as it ships: prefix affinity weighed
// against scraped queue length and KV usage.
const LLMD_PREFIX: &str = "
plugins:
- type: prefix-cache-scorer
  parameters:
    blockSizeTokens: 16
    maxPrefixBlocksToMatch: 256
    lruCapacityPerServer: 31250
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: max-score-picker
";

/// The names `--routing` accepts.
pub const PRESETS: [&str; 5] = ["round-robin", "load", "prefix", "precise-prefix", "llm-d-prefix"];

/// The configuration of a named preset.
pub fn preset(name: &str, registry: &PluginRegistry) -> Result<SchedulerConfig> {
    let yaml = match name {
        "round-robin" => ROUND_ROBIN,
        "load" => LOAD,
        "prefix" => PREFIX,
        "precise-prefix" => PRECISE_PREFIX,
        "llm-d-prefix" => LLMD_PREFIX,
        other => {
            return Err(SchedulerError::config(
                "--routing",
                other,
                format!("unknown routing preset (choose one of {})", PRESETS.join(", ")),
            ));
        }
    };
    SchedulerConfig::from_yaml(yaml, &format!("preset {name}"), registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_loads() {
        let r = PluginRegistry::with_builtins();
        for p in PRESETS {
            preset(p, &r).unwrap();
        }
        assert!(preset("fastest", &r).unwrap_err().to_string().contains("round-robin"));
    }
}
