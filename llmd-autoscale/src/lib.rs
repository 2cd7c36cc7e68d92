//! SLO-aware autoscaling for LLM serving, as runtime-free code: what to scale to, not
//! how (actuators live with the runtime: the `llmd` crate's `autoscaler` scales an
//! in-process cluster for `llmd up --autoscale`, and Deployments named by
//! `VariantAutoscaling` resources for `llmd autoscale kube`).
//!
//! - [`ModelSnapshot`]: one model's variants, their replicas' metrics (vLLM's names) and
//!   the load, including the requests the picker's flow control holds.
//! - [`Policy`], with [`SaturationPolicy`] (llm-d's workload-variant-autoscaler v0.5,
//!   with its defaults), [`ModelBasedPolicy`] (performance profiles fitted online, a
//!   queueing model of a replica, the cheapest replica counts that meet the TTFT and
//!   ITL objectives with headroom), and two baselines: [`ThresholdPolicy`] (HPA's
//!   proportional rule on KV usage) and [`StaticPolicy`].
//! - Scale from zero (requests held, no replica: one replica of the cheapest variant)
//!   and to zero (idle long enough, `min` 0) in every adaptive policy.
//! - [`Stabilizer`]: HPA-style windows and step limits, so decisions do not flap.
//! - [`sim`]: a trace simulator comparing policies on SLO attainment and
//!   replica-seconds, with an SVG of the runs.
//!
//! ```
//! use llmd_autoscale::{ModelSnapshot, Policy, ReplicaMetrics, SaturationConfig, SaturationPolicy, VariantState};
//!
//! let mut policy = SaturationPolicy::new(SaturationConfig::default())?;
//! let replica = |name: &str, kv: f64, waiting: f64| ReplicaMetrics {
//!     name: name.into(),
//!     variant: "h100".into(),
//!     kv_usage: kv,
//!     waiting,
//!     running: 8.0,
//!     itl: None,
//!     ttft: None,
//!     prefill_time: None,
//!     prefill_rate: None,
//! };
//! let snapshot = ModelSnapshot {
//!     model: "llama".into(),
//!     now: 0.0,
//!     variants: vec![VariantState { name: "h100".into(), cost: 10.0, current: 2, ready: 2, min: 1, max: 8 }],
//!     // Both replicas nearly full: the average spare KV (0.05) is under the trigger (0.10).
//!     replicas: vec![replica("a", 0.75, 1.0), replica("b", 0.75, 0.0)],
//!     load: Default::default(),
//! };
//! let decisions = policy.decide(&snapshot)?;
//! assert_eq!(decisions[0].desired, 3);
//! # Ok::<(), llmd_autoscale::AutoscaleError>(())
//! ```

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod error;
pub mod forecast;
mod model_based;
mod policy;
pub mod profile;
pub mod queue;
mod saturation;
pub mod sim;
mod snapshot;
mod stabilize;
mod threshold;
mod zero;

pub use error::{AutoscaleError, Result};
pub use forecast::{ForecastConfig, RateForecaster};
pub use model_based::{ModelBasedConfig, ModelBasedPolicy};
pub use policy::Policy;
pub use profile::{PerfProfile, ProfileFit};
pub use saturation::{Analysis, SaturationConfig, SaturationPolicy, analyze};
pub use snapshot::{Decision, Load, ModelSnapshot, Reason, ReplicaMetrics, VariantState};
pub use stabilize::{StabilizeConfig, Stabilizer};
pub use threshold::{StaticPolicy, ThresholdConfig, ThresholdPolicy};
pub use zero::ZeroGate;

#[cfg(test)]
mod tests;
