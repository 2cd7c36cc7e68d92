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

// llm-d's predicted-latency well-lit path with SLO headers (the guide's
// `predicted-latency-slo.values.yaml`, profile `default`): the producer predicts each
// endpoint's TTFT and TPOT from a model trained online on the requests' own TTFT and
// mean TPOT (`streamingMode: true`, which the SLO headers need); a strict affinity
// filter keeps endpoints holding ~all of the prompt, the tier filter those predicted to
// meet the request's `x-llm-d-slo-ttft-ms` / `x-llm-d-slo-tpot-ms` (with probability
// 0.99 when both tiers exist), a loose affinity filter those holding 80 % of it, and
// `latency-scorer` weighs what is left by headroom for `weighted-random-picker`;
// `latency-slo-admitter` sheds sheddable requests (priority < 0) no endpoint can serve
// in time. As the guide has it, but for what llmd does not need: the guide also declares
// `queue-scorer` and `kv-cache-utilization-scorer` (in no profile: no effect) and
// `metrics-data-source` → `core-metrics-extractor` (llmd's data-layer default, applied
// without them). `prefix-cache-scorer` is declared, as in the guide, in no profile: it is
// the prefix match the affinity filters and the producer read. The router creates
// `approx-prefix-cache-producer` with its defaults for it (matching up to 131 072
// tokens); llmd's scorer takes those limits only from a declared producer (else it
// matches the first 256 blocks, as `llm-d-prefix` does, and every prompt whose first
// 4 096 tokens are cached would pass the strict 0.99 filter), so it is declared here.
const PREDICTED_LATENCY: &str = "
plugins:
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
- type: predicted-latency-producer
  parameters:
    streamingMode: true
- type: prefix-cache-affinity-filter
  name: strict-affinity-filter
  parameters:
    affinityThreshold: 0.99
- type: prefix-cache-affinity-filter
  name: loose-affinity-filter
  parameters:
    affinityThreshold: 0.8
- type: latency-scorer
- type: weighted-random-picker
- type: slo-headroom-tier-filter
- type: latency-slo-admitter
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: predicted-latency-producer
  - pluginRef: strict-affinity-filter
  - pluginRef: slo-headroom-tier-filter
  - pluginRef: loose-affinity-filter
  - pluginRef: latency-scorer
  - pluginRef: weighted-random-picker
";

/// The names `--routing` accepts.
pub const PRESETS: [&str; 6] = ["round-robin", "load", "prefix", "precise-prefix", "llm-d-prefix", "predicted-latency"];

/// A named preset's EndpointPickerConfig YAML (`None` for an unknown name).
pub fn preset_yaml(name: &str) -> Option<&'static str> {
    Some(match name {
        "round-robin" => ROUND_ROBIN,
        "load" => LOAD,
        "prefix" => PREFIX,
        "precise-prefix" => PRECISE_PREFIX,
        "llm-d-prefix" => LLMD_PREFIX,
        "predicted-latency" => PREDICTED_LATENCY,
        _ => return None,
    })
}

/// The configuration of a named preset.
pub fn preset(name: &str, registry: &PluginRegistry) -> Result<SchedulerConfig> {
    let yaml = preset_yaml(name).ok_or_else(|| {
        SchedulerError::config(
            "--routing",
            name,
            format!("unknown routing preset (choose one of {})", PRESETS.join(", ")),
        )
    })?;
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

    #[test]
    fn predicted_latency_is_the_guides_slo_pipeline() {
        let r = PluginRegistry::with_builtins();
        let cfg = preset("predicted-latency", &r).unwrap();
        let p = &cfg.profiles[0];
        let filters: Vec<&str> = p.filters.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(filters, ["strict-affinity-filter", "slo-headroom-tier-filter", "loose-affinity-filter"]);
        let scorers: Vec<&str> = p.scorers.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(scorers, ["latency-scorer"]);
        assert_eq!(p.picker.0, "weighted-random-picker");
        // One producer, trained on streamed TTFT and TPOT, reading the declared prefix
        // scorer's index (the one the affinity filters read too).
        let producers = crate::plugins::latency::latency_producers(&cfg);
        assert_eq!(producers.len(), 1);
        assert!(producers[0].config().streaming_mode);
        assert_eq!(producers[0].prefix_source().map(|s| s.name()), Some("approx-prefix-cache-producer"));
        // The admitter is loaded as a flow plugin.
        assert!(cfg.plugins["latency-slo-admitter"].flow.is_some());
        // The match covers the whole prompt, as the router's default producer's does, not
        // its first 256 blocks: an endpoint holding the first 4 096 of 8 192 tokens holds
        // half of it.
        use crate::endpoint::{Endpoint, Role};
        use crate::plugin::CycleState;
        use crate::request::LlmRequest;
        let src = producers[0].prefix_source().unwrap();
        let eps = [Endpoint::new("a", "a:1", Role::Both), Endpoint::new("b", "b:1", Role::Both)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut held = LlmRequest::new("1", "m", "");
        held.token_ids = Some((0..4096).collect());
        src.observe(&CycleState::default(), &held, "default", &eps[0]);
        let mut longer = LlmRequest::new("2", "m", "");
        longer.token_ids = Some((0..8192).collect());
        assert_eq!(src.ratios(&mut CycleState::default(), &longer, &refs), [0.5, 0.0]);
    }
}
