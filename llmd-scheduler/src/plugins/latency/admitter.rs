//! `latency-slo-admitter` (the router's `requestcontrol/admitter/latencyslo`): refuses a
//! sheddable request with an SLO when no endpoint is predicted to meet it, none is idle
//! and none is cold.

use std::sync::Arc;

use serde_json::Value;

use super::producer::PredictedLatencyProducer;
use super::{LatencyPredictionInfo, SloHeaders, lpi_producer_name};
use crate::endpoint::Endpoint;
use crate::flowcontrol::admitter::{AdmitDenial, Admitter};
use crate::flowcontrol::types::ErrorCode;
use crate::plugin::CycleState;
use crate::plugins::Params;
use crate::request::LlmRequest;

/// `latency-slo-admitter`'s type name.
pub const LATENCY_SLO_ADMITTER: &str = "latency-slo-admitter";

/// The router's refusal message.
pub const NO_VALID_ENDPOINT: &str = "no valid endpoint available to serve the request";

/// KV use under which an endpoint is cold (its predictions may not be reliable yet).
const COLD_KV: f64 = 0.02;

/// The decision, given each endpoint's prediction: `Err` when a sheddable request with
/// an SLO has predictions and no endpoint is valid, idle (no running requests) or cold
/// (KV use under 2%).
pub fn admit_with(
    priority: i32,
    slo: SloHeaders,
    endpoints: &[&Endpoint],
    infos: &[Option<LatencyPredictionInfo>],
) -> Result<(), AdmitDenial> {
    if priority >= 0 || !(slo.ttft > 0.0 || slo.tpot > 0.0) {
        return Ok(());
    }
    // No predictions: fail open.
    if infos.iter().all(Option::is_none) {
        return Ok(());
    }
    let valid = infos.iter().flatten().any(LatencyPredictionInfo::is_valid);
    let idle = endpoints.iter().any(|e| e.metrics.running == 0);
    let cold = endpoints.iter().any(|e| e.metrics.kv_usage < COLD_KV);
    if valid || idle || cold {
        Ok(())
    } else {
        // The router returns a plain error, which its director answers as Internal (500).
        Err(AdmitDenial { code: ErrorCode::Internal, message: NO_VALID_ENDPOINT.into() })
    }
}

/// `latency-slo-admitter`.
#[derive(Debug)]
pub struct LatencySloAdmitter {
    producer: Option<Arc<PredictedLatencyProducer>>,
}

impl LatencySloAdmitter {
    /// Checks `parameters` (`latencyPredictionInfoProducerName`).
    pub fn check_params(p: &Value) -> Result<(), String> {
        Params(p).check(&["latencyPredictionInfoProducerName"])?;
        lpi_producer_name(p).map(|_| ())
    }

    /// An admitter reading `producer`'s predictions (none: admits everything).
    pub fn new(producer: Option<Arc<PredictedLatencyProducer>>) -> Self {
        LatencySloAdmitter { producer }
    }
}

impl Admitter for LatencySloAdmitter {
    fn type_name(&self) -> &'static str {
        LATENCY_SLO_ADMITTER
    }

    fn admit(
        &self,
        req: &LlmRequest,
        priority: i32,
        endpoints: &[&Endpoint],
        _draw: &mut dyn FnMut() -> f64,
    ) -> Result<(), AdmitDenial> {
        let slo = SloHeaders::parse(&req.headers);
        if priority >= 0 || !(slo.ttft > 0.0 || slo.tpot > 0.0) {
            return Ok(());
        }
        let Some(p) = &self.producer else { return Ok(()) };
        // Admission runs before the pick: its own cycle state.
        let infos = p.predictions(&mut CycleState::default(), req, endpoints);
        admit_with(priority, slo, endpoints, &infos)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::endpoint::Role;
    use crate::plugins::latency::{OLD_TPOT_SLO_HEADER, OLD_TTFT_SLO_HEADER, TPOT_SLO_HEADER, TTFT_SLO_HEADER};

    fn ep(kv: f64, running: u64) -> Endpoint {
        let mut e = Endpoint::new("pod", "pod:8000", Role::Both);
        e.metrics.kv_usage = kv;
        e.metrics.running = running;
        e
    }

    fn info(valid: bool) -> Option<LatencyPredictionInfo> {
        let h = if valid { 10.0 } else { -10.0 };
        Some(LatencyPredictionInfo {
            ttft_valid: valid,
            tpot_valid: valid,
            ttft_headroom: h,
            tpot_headroom: h,
            ttft: 100.0,
            tpot: 30.0,
            dispatched_request_count: 0,
        })
    }

    fn slo(pairs: &[(&str, &str)]) -> SloHeaders {
        let h: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SloHeaders::parse(&h)
    }

    #[test]
    fn admit_cases() {
        // Mirrors latencyslo/plugin_test.go TestAdmit, case by case.
        let with = slo(&[(TTFT_SLO_HEADER, "100"), (TPOT_SLO_HEADER, "30")]);
        let busy = [ep(0.5, 5), ep(0.4, 3)];
        let refs: Vec<&Endpoint> = busy.iter().collect();
        assert!(admit_with(1, with, &refs[..1], &[info(false)]).is_ok(), "non-sheddable");
        assert!(admit_with(-1, slo(&[]), &refs[..1], &[None]).is_ok(), "no SLO headers");
        let e = admit_with(-1, with, &refs, &[info(false), info(false)]).unwrap_err();
        assert_eq!(e.message, NO_VALID_ENDPOINT, "all invalid, all busy, none cold");
        let old = slo(&[(OLD_TTFT_SLO_HEADER, "100"), (OLD_TPOT_SLO_HEADER, "30")]);
        assert!(admit_with(-1, old, &refs[..1], &[info(false)]).is_err(), "old SLO aliases");
        let both = slo(&[
            (TTFT_SLO_HEADER, "0"),
            (OLD_TTFT_SLO_HEADER, "100"),
            (TPOT_SLO_HEADER, "0"),
            (OLD_TPOT_SLO_HEADER, "30"),
        ]);
        assert!(admit_with(-1, both, &refs[..1], &[info(false)]).is_ok(), "new headers take precedence");
        let idle = [ep(0.5, 5), ep(0.4, 0)];
        let idle: Vec<&Endpoint> = idle.iter().collect();
        assert!(admit_with(-1, with, &idle, &[info(false), info(false)]).is_ok(), "one idle");
        let cold = [ep(0.5, 5), ep(0.01, 3)];
        let cold: Vec<&Endpoint> = cold.iter().collect();
        assert!(admit_with(-1, with, &cold, &[info(false), info(false)]).is_ok(), "one cold");
        assert!(admit_with(-1, with, &refs, &[info(false), info(true)]).is_ok(), "one valid");
        assert!(admit_with(-1, with, &refs[..1], &[None]).is_ok(), "no predictions: fail open");
        // The director's answer for it.
        assert_eq!(e.rejection().status(), 500);
    }

    #[test]
    fn the_admitter_without_a_producer_admits() {
        let a = LatencySloAdmitter::new(None);
        let mut req = LlmRequest::default();
        req.headers.insert(TTFT_SLO_HEADER.into(), "100".into());
        let e = ep(0.5, 5);
        assert!(a.admit(&req, -1, &[&e], &mut || 0.0).is_ok());
        assert_eq!(a.type_name(), "latency-slo-admitter");
        assert!(
            LatencySloAdmitter::check_params(&serde_json::json!({"latencyPredictionInfoProducerName": "p"})).is_ok()
        );
        assert!(
            LatencySloAdmitter::check_params(&serde_json::json!({"producer": "p"}))
                .unwrap_err()
                .contains("\"producer\"")
        );
    }
}
