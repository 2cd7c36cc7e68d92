//! The P/D profile handlers' routing-decision counters, as plain counts (no runtime):
//! the front ends export them under llm-d-router's names and labels
//! (`pkg/epp/framework/plugins/scheduling/profilehandler/disagg/metrics.go`).
//!
//! - `disagg-profile-handler` counts one decision per scheduled request once its
//!   stages are done and the decode stage found an endpoint:
//!   `llm_d_epp_disagg_decision_total{plugin_name, plugin_type, model_name,
//!   decision_type}`, `decision_type` one of `decode-only`, `prefill-decode`,
//!   `encode-decode`, `encode-prefill-decode` (a stage counts when its profile ran and
//!   found an endpoint).
//! - `pd-profile-handler` (deprecated) counts when its decider is asked, after a
//!   successful decode pick with the prefill stage still to run:
//!   `llm_d_epp_pd_decision_total{...}`, `decode-only` or `prefill-decode` (what the
//!   decider said).
//!
//! Each also has the router's deprecated twin in the `llm_d_inference_scheduler`
//! subsystem with labels `model_name`, `decision_type` only, incremented together.
//! An empty model name is counted as `unknown`, as in the router.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The router's metric names.
pub mod names {
    /// `disagg-profile-handler`'s decisions (counter).
    pub const DISAGG_DECISION: &str = "llm_d_epp_disagg_decision_total";
    /// `pd-profile-handler`'s decisions (counter).
    pub const PD_DECISION: &str = "llm_d_epp_pd_decision_total";
    /// Deprecated twin of [`DISAGG_DECISION`] (labels `model_name`, `decision_type`).
    pub const DEPRECATED_DISAGG_DECISION: &str = "llm_d_inference_scheduler_disagg_decision_total";
    /// Deprecated twin of [`PD_DECISION`] (labels `model_name`, `decision_type`).
    pub const DEPRECATED_PD_DECISION: &str = "llm_d_inference_scheduler_pd_decision_total";
}

/// A routing decision: which stages besides decode a request went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Decode only (no disaggregation).
    DecodeOnly,
    /// A separate prefill (P/D, or EP/D).
    PrefillDecode,
    /// A separate encode, prefill on the decode endpoint (E/PD).
    EncodeDecode,
    /// All three stages apart (E/P/D).
    EncodePrefillDecode,
}

impl Decision {
    /// The router's `DisaggDecisionType`: the decision for the stages used.
    pub fn of(encode_used: bool, prefill_used: bool) -> Self {
        match (encode_used, prefill_used) {
            (true, true) => Decision::EncodePrefillDecode,
            (true, false) => Decision::EncodeDecode,
            (false, true) => Decision::PrefillDecode,
            (false, false) => Decision::DecodeOnly,
        }
    }

    /// The `decision_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::DecodeOnly => "decode-only",
            Decision::PrefillDecode => "prefill-decode",
            Decision::EncodeDecode => "encode-decode",
            Decision::EncodePrefillDecode => "encode-prefill-decode",
        }
    }
}

/// Which of the router's two counters a handler feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionCounter {
    /// `llm_d_epp_disagg_decision_total` (`disagg-profile-handler`).
    Disagg,
    /// `llm_d_epp_pd_decision_total` (`pd-profile-handler`).
    Pd,
}

/// One handler's decision counts, by model and decision.
#[derive(Debug)]
pub struct DecisionMetrics {
    plugin_name: String,
    plugin_type: String,
    counter: DecisionCounter,
    counts: Mutex<BTreeMap<(String, Decision), u64>>,
}

impl DecisionMetrics {
    /// Counts for the handler `plugin_name` of type `plugin_type`, into `counter`.
    pub fn new(plugin_name: impl Into<String>, plugin_type: impl Into<String>, counter: DecisionCounter) -> Self {
        DecisionMetrics {
            plugin_name: plugin_name.into(),
            plugin_type: plugin_type.into(),
            counter,
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counter these counts go to.
    pub fn counter(&self) -> DecisionCounter {
        self.counter
    }

    /// Counts one `decision` for a request for `model` (`unknown` when empty).
    pub fn record(&self, model: &str, decision: Decision) {
        let model = if model.is_empty() { "unknown" } else { model };
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry((model.to_string(), decision)).or_insert(0) += 1;
    }

    /// The decisions counted for `model` (`unknown` for requests without one).
    pub fn count(&self, model: &str, decision: Decision) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&(model.to_string(), decision)).copied().unwrap_or(0)
    }

    /// Appends the counts to `out` in the Prometheus/OpenMetrics text format, under the
    /// router's name and its deprecated twin ([`names`]). Nothing is written before the
    /// first decision.
    pub fn encode_text(&self, out: &mut String) {
        use std::fmt::Write;
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if counts.is_empty() {
            return;
        }
        let (name, deprecated, help) = match self.counter {
            DecisionCounter::Disagg => (
                names::DISAGG_DECISION,
                names::DEPRECATED_DISAGG_DECISION,
                "Total number of disaggregation routing decisions made",
            ),
            DecisionCounter::Pd => {
                (names::PD_DECISION, names::DEPRECATED_PD_DECISION, "Total number of P/D disaggregation decisions made")
            }
        };
        // Writing to a String cannot fail.
        let family = name.trim_end_matches("_total");
        let _ = writeln!(out, "# HELP {family} [ALPHA] {help}.\n# TYPE {family} counter");
        for ((model, decision), n) in &counts {
            let _ = writeln!(
                out,
                "{name}{{plugin_name=\"{}\",plugin_type=\"{}\",model_name=\"{}\",decision_type=\"{}\"}} {n}",
                escape(&self.plugin_name),
                escape(&self.plugin_type),
                escape(model),
                decision.as_str()
            );
        }
        let family = deprecated.trim_end_matches("_total");
        let _ = writeln!(out, "# HELP {family} [ALPHA] [Deprecated: Use {name}] {help}.\n# TYPE {family} counter");
        for ((model, decision), n) in &counts {
            let _ = writeln!(
                out,
                "{deprecated}{{model_name=\"{}\",decision_type=\"{}\"}} {n}",
                escape(model),
                decision.as_str()
            );
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format wants.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_named_as_the_router_names_them() {
        assert_eq!(Decision::of(false, false).as_str(), "decode-only");
        assert_eq!(Decision::of(false, true).as_str(), "prefill-decode");
        assert_eq!(Decision::of(true, false).as_str(), "encode-decode");
        assert_eq!(Decision::of(true, true).as_str(), "encode-prefill-decode");
    }

    #[test]
    fn counts_encode_under_the_router_s_names_and_labels() {
        let m = DecisionMetrics::new("pd", "disagg-profile-handler", DecisionCounter::Disagg);
        let mut out = String::new();
        m.encode_text(&mut out);
        assert_eq!(out, "", "nothing before the first decision");
        m.record("llama \"3\"", Decision::PrefillDecode);
        m.record("llama \"3\"", Decision::PrefillDecode);
        m.record("", Decision::DecodeOnly);
        assert_eq!(m.count("llama \"3\"", Decision::PrefillDecode), 2);
        assert_eq!(m.count("unknown", Decision::DecodeOnly), 1);
        m.encode_text(&mut out);
        for line in [
            "# TYPE llm_d_epp_disagg_decision counter",
            r#"llm_d_epp_disagg_decision_total{plugin_name="pd",plugin_type="disagg-profile-handler",model_name="llama \"3\"",decision_type="prefill-decode"} 2"#,
            r#"llm_d_epp_disagg_decision_total{plugin_name="pd",plugin_type="disagg-profile-handler",model_name="unknown",decision_type="decode-only"} 1"#,
            "# TYPE llm_d_inference_scheduler_disagg_decision counter",
            r#"llm_d_inference_scheduler_disagg_decision_total{model_name="llama \"3\"",decision_type="prefill-decode"} 2"#,
        ] {
            assert!(out.lines().any(|l| l == line), "{line}\n{out}");
        }
        let pd = DecisionMetrics::new("h", "pd-profile-handler", DecisionCounter::Pd);
        pd.record("m", Decision::DecodeOnly);
        let mut out = String::new();
        pd.encode_text(&mut out);
        assert!(out.contains(r#"llm_d_epp_pd_decision_total{plugin_name="h",plugin_type="pd-profile-handler",model_name="m",decision_type="decode-only"} 1"#), "{out}");
        assert!(
            out.contains(
                r#"llm_d_inference_scheduler_pd_decision_total{model_name="m",decision_type="decode-only"} 1"#
            ),
            "{out}"
        );
        assert!(!out.contains("disagg_decision"), "{out}");
    }
}
