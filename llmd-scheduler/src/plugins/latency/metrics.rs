//! The producer's metrics as plain counters and histograms (no runtime): the front end
//! exports them under the router's names ([`names`]), with the router's buckets.

use std::collections::BTreeMap;

/// The router's metric names (`predictedlatency/metrics.go`). Each `llm_d_epp_*`
/// metric has labels `plugin_name`, `plugin_type`, `model_name`, `target_model_name`;
/// each deprecated `inference_objective_*` twin has `model_name`, `target_model_name`.
/// The `*_request_metric` gauges add `type` ([`GaugeType`]); the violation counters add
/// `type` = `ttft` | `tpot`.
pub mod names {
    /// Predicted TTFT histogram (seconds).
    pub const PREDICTED_TTFT: &str = "llm_d_epp_request_predicted_ttft_seconds";
    /// Time to predict, per bulk prediction (seconds).
    pub const TTFT_PREDICTION_DURATION: &str = "llm_d_epp_request_ttft_prediction_duration_seconds";
    /// Predicted TPOT histogram (seconds).
    pub const PREDICTED_TPOT: &str = "llm_d_epp_request_predicted_tpot_seconds";
    /// Time to predict, per bulk prediction (seconds).
    pub const TPOT_PREDICTION_DURATION: &str = "llm_d_epp_request_tpot_prediction_duration_seconds";
    /// SLO violations (counter, `type` = ttft | tpot).
    pub const SLO_VIOLATION: &str = "llm_d_epp_request_slo_violation_total";
    /// Last value of each [`GaugeType`](super::GaugeType) (gauge).
    pub const REQUEST_METRIC: &str = "llm_d_epp_inference_request_metric";
    /// Deprecated twin of the director's `llm_d_epp_request_ttft_seconds` (observed TTFT).
    pub const DEPRECATED_TTFT: &str = "inference_objective_request_ttft_seconds";
    /// Deprecated twin of [`PREDICTED_TTFT`].
    pub const DEPRECATED_PREDICTED_TTFT: &str = "inference_objective_request_predicted_ttft_seconds";
    /// Deprecated twin of [`TTFT_PREDICTION_DURATION`].
    pub const DEPRECATED_TTFT_PREDICTION_DURATION: &str =
        "inference_objective_request_ttft_prediction_duration_seconds";
    /// Deprecated twin of the director's `llm_d_epp_request_streaming_tpot_seconds`.
    pub const DEPRECATED_TPOT: &str = "inference_objective_request_tpot_seconds";
    /// Deprecated twin of [`PREDICTED_TPOT`].
    pub const DEPRECATED_PREDICTED_TPOT: &str = "inference_objective_request_predicted_tpot_seconds";
    /// Deprecated twin of [`TPOT_PREDICTION_DURATION`].
    pub const DEPRECATED_TPOT_PREDICTION_DURATION: &str =
        "inference_objective_request_tpot_prediction_duration_seconds";
    /// Deprecated twin of [`SLO_VIOLATION`].
    pub const DEPRECATED_SLO_VIOLATION: &str = "inference_objective_request_slo_violation_total";
    /// Deprecated twin of [`REQUEST_METRIC`].
    pub const DEPRECATED_REQUEST_METRIC: &str = "inference_objective_inference_request_metric";
}

/// The router's latency buckets (seconds) for TTFT histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// The router's TPOT buckets (seconds).
pub const TPOT_BUCKETS: &[f64] = &[
    0.0005, 0.00205, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5,
    2.0, 3.0, 4.5, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 48.0, 60.0, 90.0, 120.0, 180.0, 270.0, 360.0,
];

/// The router's prediction-duration buckets (seconds).
pub const PREDICTION_DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];

/// A cumulative-bucket histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds (`le`), ascending; `+Inf` is implied.
    pub bounds: &'static [f64],
    /// Observations ≤ each bound (not cumulative: one count per bucket, the last for
    /// values above every bound).
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Records `v`.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// The `type` label values of the `*_inference_request_metric` gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GaugeType {
    /// Observed TTFT (s).
    Ttft,
    /// Predicted TTFT (s).
    PredictedTtft,
    /// TTFT prediction duration (s).
    TtftPredictionDuration,
    /// 1 when the last TTFT broke its SLO, else 0.
    TtftSloViolation,
    /// Observed TPOT (s).
    Tpot,
    /// Predicted TPOT (s).
    PredictedTpot,
    /// TPOT prediction duration (s).
    TpotPredictionDuration,
    /// 1 when the last TPOT broke its SLO, else 0.
    TpotSloViolation,
}

impl GaugeType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GaugeType::Ttft => "ttft",
            GaugeType::PredictedTtft => "predicted_ttft",
            GaugeType::TtftPredictionDuration => "ttft_prediction_duration",
            GaugeType::TtftSloViolation => "ttft_slo_violation",
            GaugeType::Tpot => "tpot",
            GaugeType::PredictedTpot => "predicted_tpot",
            GaugeType::TpotPredictionDuration => "tpot_prediction_duration",
            GaugeType::TpotSloViolation => "tpot_slo_violation",
        }
    }
}

/// One model's metrics (labels `model_name` = `target_model_name` = the request's model).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetrics {
    /// Observed TTFT (s): e2e latency when not streaming.
    pub ttft: Histogram,
    /// Predicted TTFT of the chosen endpoint (s).
    pub predicted_ttft: Histogram,
    /// Time a bulk prediction took (s).
    pub prediction_duration: Histogram,
    /// Observed mean TPOT (s).
    pub tpot: Histogram,
    /// Predicted TPOT of the chosen endpoint (s).
    pub predicted_tpot: Histogram,
    /// TTFT SLO violations.
    pub ttft_slo_violations: u64,
    /// TPOT SLO violations.
    pub tpot_slo_violations: u64,
    /// Last value per gauge type.
    pub gauges: BTreeMap<GaugeType, f64>,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            ttft: Histogram::new(LATENCY_BUCKETS),
            predicted_ttft: Histogram::new(LATENCY_BUCKETS),
            prediction_duration: Histogram::new(PREDICTION_DURATION_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            predicted_tpot: Histogram::new(TPOT_BUCKETS),
            ttft_slo_violations: 0,
            tpot_slo_violations: 0,
            gauges: BTreeMap::new(),
        }
    }
}

/// The producer's metrics by model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyMetrics {
    /// Per model name.
    pub models: BTreeMap<String, ModelMetrics>,
}

impl LatencyMetrics {
    fn model(&mut self, model: &str) -> &mut ModelMetrics {
        self.models.entry(model.to_string()).or_default()
    }

    /// A bulk prediction took `secs` (the router records it for both TTFT and TPOT).
    pub fn prediction_duration(&mut self, model: &str, secs: f64) {
        if secs < 0.0 {
            return;
        }
        let m = self.model(model);
        m.prediction_duration.observe(secs);
        m.gauges.insert(GaugeType::TtftPredictionDuration, secs);
        m.gauges.insert(GaugeType::TpotPredictionDuration, secs);
    }

    /// A request's observed and predicted TTFT (ms) against its SLO (ms, 0: none).
    pub fn ttft(&mut self, model: &str, actual_ms: f64, predicted_ms: f64, slo_ms: f64) {
        let m = self.model(model);
        if actual_ms >= 0.0 {
            m.ttft.observe(actual_ms / 1000.0);
            m.gauges.insert(GaugeType::Ttft, actual_ms / 1000.0);
        }
        if predicted_ms >= 0.0 {
            m.predicted_ttft.observe(predicted_ms / 1000.0);
            m.gauges.insert(GaugeType::PredictedTtft, predicted_ms / 1000.0);
        }
        if slo_ms > 0.0 && actual_ms >= 0.0 {
            let violated = actual_ms > slo_ms;
            m.ttft_slo_violations += u64::from(violated);
            m.gauges.insert(GaugeType::TtftSloViolation, f64::from(u8::from(violated)));
        }
    }

    /// A request's observed and predicted mean TPOT (ms) against its SLO (ms, 0: none).
    pub fn tpot(&mut self, model: &str, actual_ms: f64, predicted_ms: f64, slo_ms: f64) {
        let m = self.model(model);
        if actual_ms >= 0.0 {
            m.tpot.observe(actual_ms / 1000.0);
            m.gauges.insert(GaugeType::Tpot, actual_ms / 1000.0);
        }
        if predicted_ms >= 0.0 {
            m.predicted_tpot.observe(predicted_ms / 1000.0);
            m.gauges.insert(GaugeType::PredictedTpot, predicted_ms / 1000.0);
        }
        if slo_ms > 0.0 && actual_ms >= 0.0 {
            let violated = actual_ms > slo_ms;
            m.tpot_slo_violations += u64::from(violated);
            m.gauges.insert(GaugeType::TpotSloViolation, f64::from(u8::from(violated)));
        }
    }
}

impl LatencyMetrics {
    /// Appends these metrics to `out` in the Prometheus/OpenMetrics text format, under
    /// the router's `llm_d_epp_*` names ([`names`]) with its labels (`plugin_name` =
    /// `plugin`, `plugin_type` = `predicted-latency-producer`, `model_name` =
    /// `target_model_name` = the model). The deprecated `inference_objective_*` twins
    /// are not written. Nothing is written before the first request.
    pub fn encode_text(&self, plugin: &str, out: &mut String) {
        use std::fmt::Write;
        if self.models.is_empty() {
            return;
        }
        let labels = |model: &str| {
            format!(
                "plugin_name=\"{}\",plugin_type=\"predicted-latency-producer\",model_name=\"{}\",target_model_name=\"{}\"",
                escape(plugin),
                escape(model),
                escape(model)
            )
        };
        type Field = fn(&ModelMetrics) -> &Histogram;
        let histograms: [(&str, &str, Field); 4] = [
            (names::PREDICTED_TTFT, "Predicted time to first token of the chosen endpoint", |m| &m.predicted_ttft),
            (names::TTFT_PREDICTION_DURATION, "Time a bulk latency prediction took", |m| &m.prediction_duration),
            (names::PREDICTED_TPOT, "Predicted time per output token of the chosen endpoint", |m| &m.predicted_tpot),
            (names::TPOT_PREDICTION_DURATION, "Time a bulk latency prediction took", |m| &m.prediction_duration),
        ];
        // Writing to a String cannot fail.
        for (name, help, get) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} histogram");
            for (model, m) in &self.models {
                let (h, l) = (get(m), labels(model));
                let mut cumulative = 0;
                for (bound, n) in h.bounds.iter().zip(&h.counts) {
                    cumulative += n;
                    let _ = writeln!(out, "{name}_bucket{{{l},le=\"{bound:?}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{l}}} {:?}\n{name}_count{{{l}}} {}", h.sum, h.count);
            }
        }
        let family = names::SLO_VIOLATION.trim_end_matches("_total");
        let _ = writeln!(out, "# HELP {family} Requests whose latency broke their SLO.\n# TYPE {family} counter");
        for (model, m) in &self.models {
            let l = labels(model);
            let _ = writeln!(out, "{family}_total{{{l},type=\"ttft\"}} {}", m.ttft_slo_violations);
            let _ = writeln!(out, "{family}_total{{{l},type=\"tpot\"}} {}", m.tpot_slo_violations);
        }
        let name = names::REQUEST_METRIC;
        let _ = writeln!(out, "# HELP {name} The last value of each latency measure.\n# TYPE {name} gauge");
        for (model, m) in &self.models {
            let l = labels(model);
            for (t, v) in &m.gauges {
                let _ = writeln!(out, "{name}{{{l},type=\"{}\"}} {v:?}", t.as_str());
            }
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
    fn encodes_in_the_text_format_under_the_router_s_names() {
        let mut m = LatencyMetrics::default();
        let mut out = String::new();
        m.encode_text("plp", &mut out);
        assert_eq!(out, "", "nothing before the first request");
        m.ttft("llama \"3\"", 120.0, 100.0, 110.0);
        m.tpot("llama \"3\"", 20.0, 25.0, 50.0);
        m.prediction_duration("llama \"3\"", 0.0004);
        m.encode_text("plp", &mut out);
        let l = r#"plugin_name="plp",plugin_type="predicted-latency-producer",model_name="llama \"3\"",target_model_name="llama \"3\"""#;
        for line in [
            "# TYPE llm_d_epp_request_predicted_ttft_seconds histogram".to_string(),
            format!("llm_d_epp_request_predicted_ttft_seconds_bucket{{{l},le=\"0.1\"}} 1"),
            format!("llm_d_epp_request_predicted_ttft_seconds_bucket{{{l},le=\"0.05\"}} 0"),
            format!("llm_d_epp_request_predicted_ttft_seconds_bucket{{{l},le=\"+Inf\"}} 1"),
            format!("llm_d_epp_request_predicted_ttft_seconds_count{{{l}}} 1"),
            format!("llm_d_epp_request_ttft_prediction_duration_seconds_bucket{{{l},le=\"0.0005\"}} 1"),
            "# TYPE llm_d_epp_request_slo_violation counter".to_string(),
            format!("llm_d_epp_request_slo_violation_total{{{l},type=\"ttft\"}} 1"),
            format!("llm_d_epp_request_slo_violation_total{{{l},type=\"tpot\"}} 0"),
            format!("llm_d_epp_inference_request_metric{{{l},type=\"predicted_tpot\"}} 0.025"),
        ] {
            assert!(out.lines().any(|x| x == line), "missing {line:?} in\n{out}");
        }
    }

    #[test]
    fn records_as_the_router_does() {
        // Mirrors metrics_test.go TestRecordRequestLatencyMetrics and
        // TestRecordRequestLatencyMetricsRejectNegativeValues.
        let mut m = LatencyMetrics::default();
        m.ttft("m", 150.0, 120.0, 100.0);
        m.tpot("m", 20.0, 25.0, 30.0);
        m.prediction_duration("m", 0.0003);
        m.prediction_duration("m", -1.0);
        let mm = &m.models["m"];
        assert_eq!((mm.ttft.count, mm.predicted_ttft.count, mm.tpot.count), (1, 1, 1));
        assert_eq!((mm.ttft_slo_violations, mm.tpot_slo_violations), (1, 0));
        assert_eq!(mm.gauges[&GaugeType::TtftSloViolation], 1.0);
        assert_eq!(mm.gauges[&GaugeType::TpotSloViolation], 0.0);
        assert_eq!(mm.prediction_duration.count, 1, "negative durations are refused");
        // 0.15 s falls in the (0.1, 0.2] bucket.
        assert_eq!(mm.ttft.counts[LATENCY_BUCKETS.iter().position(|b| *b == 0.2).unwrap()], 1);
        assert!((mm.ttft.sum - 0.15).abs() < 1e-12);
        m.ttft("m", -5.0, -1.0, 100.0);
        assert_eq!(m.models["m"].ttft.count, 1);
        assert_eq!(GaugeType::PredictedTpot.as_str(), "predicted_tpot");
    }
}
