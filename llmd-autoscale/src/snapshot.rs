//! What a policy decides on: one model's variants, their replicas' metrics and the load,
//! as engines and the picker export them (vLLM's and llm-d's metric names in the docs).

use serde::{Deserialize, Serialize};

use crate::error::{AutoscaleError, Result};

/// One replica, from its engine's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaMetrics {
    /// The replica (pod) name.
    pub name: String,
    /// The variant it belongs to.
    pub variant: String,
    /// `vllm:kv_cache_usage_perc`, 0..=1.
    pub kv_usage: f64,
    /// `vllm:num_requests_waiting`.
    pub waiting: f64,
    /// `vllm:num_requests_running`.
    pub running: f64,
    /// Mean inter-token latency over the window (`vllm:time_per_output_token_seconds`
    /// sum/count rates), where tokens were generated.
    #[serde(default)]
    pub itl: Option<f64>,
    /// Mean time to first token over the window (`vllm:time_to_first_token_seconds`).
    #[serde(default)]
    pub ttft: Option<f64>,
    /// Mean prefill time over the window, from admission to first token, queueing
    /// excluded (`vllm:request_prefill_time_seconds`).
    #[serde(default)]
    pub prefill_time: Option<f64>,
    /// Prefills per second over the window (that histogram's count, as a rate).
    #[serde(default)]
    pub prefill_rate: Option<f64>,
}

/// One variant of a model: a deployment of it on one kind of accelerator or config,
/// scaled as a whole (WVA's `VariantAutoscaling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantState {
    /// Its name (the scale target's).
    pub name: String,
    /// Cost of one replica per unit time (`variantCost`; WVA's default is 10).
    pub cost: f64,
    /// Replicas the target has now, ready or not.
    pub current: u32,
    /// Replicas reporting metrics (ready); `current - ready` are pending.
    pub ready: u32,
    /// Fewest replicas (0 allows scale to zero).
    pub min: u32,
    /// Most replicas.
    pub max: u32,
}

impl VariantState {
    /// Replicas started but not yet ready.
    pub fn pending(&self) -> u32 {
        self.current.saturating_sub(self.ready)
    }
}

/// Load on the model over the last window, from the engines' counters and histograms
/// and the picker's flow-control queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Requests per second arriving (`vllm:request_success_total` rate plus the
    /// requests held by the picker).
    pub arrival_rate: f64,
    /// Mean prompt tokens (`vllm:request_prompt_tokens`).
    pub avg_input_tokens: f64,
    /// Mean generated tokens (`vllm:request_generation_tokens`).
    pub avg_output_tokens: f64,
    /// Requests held by the picker's flow control because no replica can take them
    /// (`llm_d_epp_flow_control_queue_size`): what scale from zero reacts to.
    pub queued: f64,
    /// Mean time to first token over the window (`vllm:time_to_first_token_seconds`),
    /// where any request finished.
    pub ttft: Option<f64>,
    /// Mean inter-token latency (`vllm:time_per_output_token_seconds`).
    pub itl: Option<f64>,
}

/// Everything a policy sees at one decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSnapshot {
    /// The model (`modelID`).
    pub model: String,
    /// Seconds since the autoscaler started (an injected clock).
    pub now: f64,
    /// Its variants.
    pub variants: Vec<VariantState>,
    /// Every ready replica's metrics.
    pub replicas: Vec<ReplicaMetrics>,
    /// The load.
    pub load: Load,
}

impl ModelSnapshot {
    /// Checks the snapshot is coherent: every replica names a known variant, bounds are
    /// ordered, usage and counts are finite and not negative.
    pub fn validate(&self) -> Result<()> {
        for v in &self.variants {
            if v.min > v.max {
                return Err(AutoscaleError::Input(format!("variant {}: min {} > max {}", v.name, v.min, v.max)));
            }
            if !(v.cost.is_finite() && v.cost >= 0.0) {
                return Err(AutoscaleError::Input(format!("variant {}: cost {} is not a cost", v.name, v.cost)));
            }
        }
        for r in &self.replicas {
            if !self.variants.iter().any(|v| v.name == r.variant) {
                return Err(AutoscaleError::Input(format!("replica {} names unknown variant {}", r.name, r.variant)));
            }
            for (what, x) in [("kv_usage", r.kv_usage), ("waiting", r.waiting), ("running", r.running)] {
                if !(x.is_finite() && x >= 0.0) {
                    return Err(AutoscaleError::Input(format!("replica {}: {what} {x}", r.name)));
                }
            }
        }
        let l = &self.load;
        for (what, x) in [
            ("arrival_rate", l.arrival_rate),
            ("avg_input_tokens", l.avg_input_tokens),
            ("avg_output_tokens", l.avg_output_tokens),
            ("queued", l.queued),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return Err(AutoscaleError::Input(format!("load: {what} {x}")));
            }
        }
        Ok(())
    }

    /// The variant named `name`.
    pub fn variant(&self, name: &str) -> Option<&VariantState> {
        self.variants.iter().find(|v| v.name == name)
    }
}

/// Why a policy chose a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Nothing to change.
    Hold,
    /// Spare capacity fell below a trigger (saturation policy).
    Saturated,
    /// Spare capacity survives losing a replica (saturation policy).
    Spare,
    /// Requests are waiting and no replica is ready: 0 → 1.
    ScaleFromZero,
    /// No load for long enough: → 0 (when min is 0).
    ScaleToZero,
    /// The fewest replicas predicted to meet the SLOs at the observed load (model-based).
    SloModel,
    /// Replicas are still starting: no further scale-up until they are ready.
    PendingReplicas,
    /// Held at a bound (min or max).
    Bounded,
    /// A recommendation held back by the stabilization window or step limit.
    Stabilized,
}

/// One variant's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The variant.
    pub variant: String,
    /// Replicas it has.
    pub current: u32,
    /// Replicas it should have.
    pub desired: u32,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// `current → desired`, signed.
    pub fn delta(&self) -> i64 {
        i64::from(self.desired) - i64::from(self.current)
    }
}
