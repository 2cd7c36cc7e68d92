//! The benchmark scenarios behind `llmd autoscale simulate` (BENCHMARKS.md): one
//! variant of an 8B-class model on H100-class replicas, three traces, four policies.
//!
//! Simulator constants (assumptions the results depend on): a decode step of 12 ms plus
//! 0.1 ms per request, a prefill of 20 ms plus 0.1 ms per prompt token, at most 128
//! requests and 150 000 KV tokens per replica, 60 s from start to ready; prompts of 200
//! to 1 000 tokens, outputs of 50 to 400; objectives: mean TTFT 500 ms, ITL 50 ms;
//! decisions every 15 s, HPA's stabilization with a 120 s scale-down window (WVA's
//! guidance). The model-based policy starts
//! from a profile 1.5× too slow (a pessimistic offline benchmark) and learns the
//! replicas' own from their metrics.

use crate::error::{AutoscaleError, Result};
use crate::model_based::{ModelBasedConfig, ModelBasedPolicy};
use crate::policy::Policy;
use crate::profile::PerfProfile;
use crate::queue::{Slo, capacity};
use crate::saturation::{SaturationConfig, SaturationPolicy};
use crate::stabilize::StabilizeConfig;
use crate::threshold::{StaticPolicy, ThresholdConfig, ThresholdPolicy};

use super::{Shape, SimConfig, SimVariant, TraceSpec};

/// The replicas' true performance.
pub const PROFILE: PerfProfile = PerfProfile { alpha: 0.012, beta: 0.0001, gamma: 0.02, delta: 0.0001, max_batch: 128 };
/// Objectives: mean TTFT and ITL, seconds.
pub const SLO_TTFT: f64 = 0.5;
/// See [`SLO_TTFT`].
pub const SLO_ITL: f64 = 0.05;
/// Prompt and output lengths, uniform.
pub const INPUT_TOKENS: (u32, u32) = (200, 1000);
/// See [`INPUT_TOKENS`].
pub const OUTPUT_TOKENS: (u32, u32) = (50, 400);
/// The most replicas any policy may run.
pub const MAX_REPLICAS: u32 = 32;

/// The scenario names.
pub const TRACES: &[&str] = &["diurnal", "bursty", "step"];
/// The policy names, in report order.
pub const POLICIES: &[&str] = &["static", "threshold", "saturation", "model"];

/// One replica's capacity within the objectives (model-based planning's headroom
/// included), requests per second, for the scenarios' mean prompt and output.
pub fn replica_capacity() -> f64 {
    let mean = |r: (u32, u32)| f64::from(r.0 + r.1) / 2.0;
    capacity(
        &PROFILE,
        mean(INPUT_TOKENS),
        mean(OUTPUT_TOKENS),
        &Slo { ttft: SLO_TTFT, itl: SLO_ITL, max_blocking: 0.001 },
        0.2,
    )
}

/// The trace `name` over `duration` seconds, peaks at `peak_replicas` replicas' worth of
/// load, from `seed`.
pub fn trace(name: &str, duration: f64, peak_replicas: f64, seed: u64) -> Result<TraceSpec> {
    let cap = replica_capacity() * peak_replicas;
    let shape = match name {
        // One compressed day: a trough of 1/16 of the peak.
        "diurnal" => Shape::Diurnal { low: cap / 16.0, high: cap, period: duration },
        // A quarter of the peak, with bursts of the peak lasting 2 min on average
        // every 10 min.
        "bursty" => Shape::Bursty { low: cap / 4.0, high: cap, mean_burst: 120.0, mean_gap: 480.0 },
        // A quarter, the peak for the middle third, a quarter again.
        "step" => Shape::Step { low: cap / 4.0, high: cap, at: duration / 3.0, until: 2.0 * duration / 3.0 },
        other => return Err(AutoscaleError::config("trace", format!("{other:?}: expected one of {TRACES:?}"))),
    };
    Ok(TraceSpec { shape, duration, input_tokens: INPUT_TOKENS, output_tokens: OUTPUT_TOKENS, seed })
}

/// The simulation around a trace of `duration` seconds: one variant, `min` replicas
/// at least, starting with `initial`.
pub fn config(duration: f64, min: u32, initial: u32) -> SimConfig {
    SimConfig {
        variants: vec![SimVariant {
            name: "h100".into(),
            cost: 1.0,
            profile: PROFILE,
            kv_tokens: 150_000.0,
            startup: 60.0,
            min,
            max: MAX_REPLICAS,
            initial,
        }],
        interval: 15.0,
        slo_ttft: SLO_TTFT,
        horizon: duration,
        // WVA's guidance for the HPA that acts on its output: a window of at least 120 s.
        stabilize: StabilizeConfig { scale_down_window: 120.0, ..StabilizeConfig::default() },
    }
}

/// Replica-seconds of an oracle that knows each interval's load in advance and has
/// exactly `ceil(rate / capacity)` replicas ready for it (at least one): no start-up,
/// no stabilization, no headroom beyond the capacity's own. A floor for the adaptive
/// policies, not a policy.
pub fn oracle_replica_seconds(trace: &[super::TraceRequest], capacity: f64, interval: f64, horizon: f64) -> f64 {
    let windows = (horizon / interval).ceil() as usize;
    let mut counts = vec![0usize; windows.max(1)];
    for r in trace {
        let i = ((r.arrival / interval) as usize).min(counts.len() - 1);
        counts[i] += 1;
    }
    counts.iter().map(|&n| ((n as f64 / interval) / capacity).ceil().max(1.0) * interval).sum()
}

/// Policy `name` for the scenarios; `static` runs `peak` replicas.
pub fn policy(name: &str, peak: u32) -> Result<Box<dyn Policy>> {
    Ok(match name {
        "static" => Box::new(StaticPolicy::new(peak)),
        "threshold" => Box::new(ThresholdPolicy::new(ThresholdConfig::default())?),
        "saturation" => Box::new(SaturationPolicy::new(SaturationConfig::default())?),
        "model" => Box::new(ModelBasedPolicy::new(ModelBasedConfig {
            slo_ttft: SLO_TTFT,
            slo_itl: SLO_ITL,
            default_profile: PerfProfile {
                alpha: PROFILE.alpha * 1.5,
                beta: PROFILE.beta * 1.5,
                gamma: PROFILE.gamma * 1.5,
                delta: PROFILE.delta * 1.5,
                ..PROFILE
            },
            ..ModelBasedConfig::default()
        })?),
        other => return Err(AutoscaleError::config("policy", format!("{other:?}: expected one of {POLICIES:?}"))),
    })
}
