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

// llm-d's default inference-scheduling profile.
const PREFIX: &str = "
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

// Prefix scoring from the engines' own KV events.
const PRECISE_PREFIX: &str = "
plugins:
- type: precise-prefix-cache-scorer
  parameters:
    blockSize: 16
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: precise-prefix-cache-scorer
    weight: 3
  - pluginRef: queue-scorer
  - pluginRef: kv-cache-utilization-scorer
  - pluginRef: max-score-picker
";

/// The names `--routing` accepts.
pub const PRESETS: [&str; 4] = ["round-robin", "load", "prefix", "precise-prefix"];

/// The configuration of a named preset.
pub fn preset(name: &str, registry: &PluginRegistry) -> Result<SchedulerConfig> {
    let yaml = match name {
        "round-robin" => ROUND_ROBIN,
        "load" => LOAD,
        "prefix" => PREFIX,
        "precise-prefix" => PRECISE_PREFIX,
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
