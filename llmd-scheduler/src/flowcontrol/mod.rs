//! Flow control, as llm-d-router has it: a bounded queue in front of scheduling, with
//! priority bands, fairness between flows, ordering within a flow, saturation detection,
//! usage limits and in-flight eviction.
//!
//! The core is runtime-free: [`FlowController`] is a state machine on an injected clock
//! (enqueue, dispatch cycles against a [`PoolSample`], budget sweeps, cancellation,
//! completion), its policies are the traits of [`policies`] with the router's built-ins
//! registered under the router's type names ([`register`]), and [`resolve`] turns the
//! config file's `flowControl` section into a [`FlowControlConfig`]. With the `runtime`
//! feature, `gate::FlowGate` runs a controller for a gateway (requests wait in
//! `admit` until dispatched or refused) and `metrics` exports the router's metrics.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use llmd_scheduler::ManualClock;
//! use llmd_scheduler::flowcontrol::{FlowControlConfig, FlowController, FlowEvent, FlowRequest, PoolSample, QueueOutcome};
//!
//! let clock = Arc::new(ManualClock::new());
//! let mut fc = FlowController::new(&FlowControlConfig::default(), clock.clone());
//! let id = fc.enqueue(FlowRequest::new("r1", "tenant-a", 0, 512)).unwrap();
//! // Saturated: the request waits; below saturation it is dispatched.
//! assert_eq!(fc.dispatch_cycle(PoolSample::new(1.0, 2)), None);
//! assert_eq!(fc.dispatch_cycle(PoolSample::new(0.4, 2)), Some(id));
//! let Some(FlowEvent::Finalized(f)) = fc.drain_events().pop() else { unreachable!() };
//! assert_eq!(f.outcome, QueueOutcome::Dispatched);
//! // The request ran; its end frees its place.
//! assert!(fc.complete(id, None));
//!
//! // A request that waits past its budget (60s by default) is shed with the router's 429.
//! fc.enqueue(FlowRequest::new("r2", "tenant-a", 0, 512)).unwrap();
//! clock.advance(Duration::from_secs(60));
//! fc.sweep();
//! let Some(FlowEvent::Finalized(f)) = fc.drain_events().pop() else { unreachable!() };
//! let answer = f.rejection(fc.pool_empty()).unwrap();
//! assert_eq!((answer.status(), answer.reason), (429, Some("rejected-ttl-expired")));
//! ```

pub mod admitter;
pub mod config;
pub mod controller;
#[cfg(feature = "runtime")]
pub mod gate;
#[cfg(feature = "runtime")]
pub mod metrics;
mod params;
pub mod policies;
pub mod quantity;
pub mod queue;
mod reclaim;
pub mod types;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use admitter::{AdmitDenial, Admitter, ProbabilisticAdmitter, legacy_admit};
pub use config::{ControllerConfig, FlowControlConfig, PriorityBandConfig, RegistryConfig};
pub use controller::{ControllerStats, Finalized, FlowController, FlowEvent, Rejected};
pub use policies::saturation::{PoolSample, sample_pool};
pub use policies::{
    EvictionFilterPolicy, EvictionOrderingPolicy, FairnessPolicy, OrderingPolicy, SaturationDetector, UsageLimitPolicy,
};
pub use types::{
    ErrorCode, FlowKey, FlowRejection, FlowRequest, ItemId, QueueItem, QueueOutcome, TokenUsage, fairness_id,
    objective_name,
};

use crate::clock::Clock;
use crate::plugin::PluginHandle;
use crate::registry::PluginRegistry;

/// The role a flow-control plugin of the config's `plugins` list plays.
#[derive(Clone)]
pub enum FlowPlugin {
    /// Picks the flow within a band (`fairnessPolicyRef`).
    Fairness(Arc<dyn FairnessPolicy>),
    /// Orders a flow's items (`orderingPolicyRef`).
    Ordering(Arc<dyn OrderingPolicy>),
    /// Reads the pool's saturation (`saturationDetector.pluginRef`); also a filter.
    Detector(Arc<dyn SaturationDetector>),
    /// Gives bands their ceilings (`usageLimitPolicyPluginRef`).
    UsageLimit(Arc<dyn UsageLimitPolicy>),
    /// Chooses which running requests may be evicted.
    EvictionFilter(Arc<dyn EvictionFilterPolicy>),
    /// Orders eviction candidates.
    EvictionOrdering(Arc<dyn EvictionOrderingPolicy>),
    /// Admits or refuses a request before scheduling (router admitters run for every
    /// request, whatever the profiles).
    Admitter(Arc<dyn Admitter>),
}

impl FlowPlugin {
    /// The plugin type.
    pub fn type_name(&self) -> &'static str {
        match self {
            FlowPlugin::Fairness(p) => p.type_name(),
            FlowPlugin::Ordering(p) => p.type_name(),
            FlowPlugin::Detector(p) => p.type_name(),
            FlowPlugin::UsageLimit(p) => p.type_name(),
            FlowPlugin::EvictionFilter(p) => p.type_name(),
            FlowPlugin::EvictionOrdering(p) => p.type_name(),
            FlowPlugin::Admitter(p) => p.type_name(),
        }
    }

    /// Gives a detector the clock endpoint metrics are stamped with (the datastore's),
    /// so its filter role can judge staleness; other roles ignore it.
    pub fn bind_clock(&self, clock: Arc<dyn Clock>) {
        if let FlowPlugin::Detector(d) = self {
            d.bind_clock(clock);
        }
    }
}

impl std::fmt::Debug for FlowPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self {
            FlowPlugin::Fairness(_) => "Fairness",
            FlowPlugin::Ordering(_) => "Ordering",
            FlowPlugin::Detector(_) => "Detector",
            FlowPlugin::UsageLimit(_) => "UsageLimit",
            FlowPlugin::EvictionFilter(_) => "EvictionFilter",
            FlowPlugin::EvictionOrdering(_) => "EvictionOrdering",
            FlowPlugin::Admitter(_) => "Admitter",
        };
        write!(f, "{role}({})", self.type_name())
    }
}

fn handle(name: &str, type_name: &str, flow: FlowPlugin) -> PluginHandle {
    PluginHandle { name: name.into(), type_name: type_name.into(), flow: Some(flow), ..Default::default() }
}

/// Registers the flow-control plugin types (and `probabilistic-admitter`). Types that
/// take no parameters refuse any, naming the key (the router's factories ignore them).
pub fn register(r: &mut PluginRegistry) {
    use crate::plugins::Params;
    use policies::{eviction, fairness, ordering, program_aware, saturation, usage};

    let no_params = |t: &'static str, make: fn() -> FlowPlugin| {
        move |n: &str, p: &serde_json::Value| {
            Params(p).check(&[])?;
            Ok(handle(n, t, make()))
        }
    };
    r.register(
        fairness::GLOBAL_STRICT,
        no_params(fairness::GLOBAL_STRICT, || FlowPlugin::Fairness(Arc::new(fairness::GlobalStrict))),
    );
    r.register(
        fairness::ROUND_ROBIN,
        no_params(fairness::ROUND_ROBIN, || FlowPlugin::Fairness(Arc::new(fairness::RoundRobin))),
    );
    r.register(ordering::FCFS, no_params(ordering::FCFS, || FlowPlugin::Ordering(Arc::new(ordering::Fcfs))));
    r.register(ordering::EDF, no_params(ordering::EDF, || FlowPlugin::Ordering(Arc::new(ordering::Edf))));
    r.register(
        ordering::SLO_DEADLINE,
        no_params(ordering::SLO_DEADLINE, || FlowPlugin::Ordering(Arc::new(ordering::SloDeadline))),
    );
    r.register(
        eviction::SHEDDABLE_FILTER,
        no_params(eviction::SHEDDABLE_FILTER, || FlowPlugin::EvictionFilter(Arc::new(eviction::SheddableFilter))),
    );
    r.register(
        eviction::PRIORITY_THEN_TIME,
        no_params(eviction::PRIORITY_THEN_TIME, || FlowPlugin::EvictionOrdering(Arc::new(eviction::PriorityThenTime))),
    );
    r.register(program_aware::PROGRAM_AWARE, |n, p| {
        let f = Arc::new(program_aware::ProgramAware::from_params(p)?);
        Ok(handle(n, program_aware::PROGRAM_AWARE, FlowPlugin::Fairness(f)))
    });
    r.register(saturation::UTILIZATION, |n, p| {
        let d = Arc::new(saturation::Utilization::from_params(p)?);
        Ok(PluginHandle { filter: Some(d.clone()), ..handle(n, saturation::UTILIZATION, FlowPlugin::Detector(d)) })
    });
    r.register(saturation::CONCURRENCY, |n, p| {
        let d = Arc::new(saturation::Concurrency::from_params(p)?);
        Ok(PluginHandle { filter: Some(d.clone()), ..handle(n, saturation::CONCURRENCY, FlowPlugin::Detector(d)) })
    });
    r.register(usage::STATIC, |n, p| {
        let u = Arc::new(usage::StaticUsageLimit::from_params(p)?);
        Ok(handle(n, usage::STATIC, FlowPlugin::UsageLimit(u)))
    });
    r.register(usage::PRIORITY_HOLDBACK, |n, p| {
        let u = Arc::new(usage::PriorityHoldback::from_params(p)?);
        Ok(handle(n, usage::PRIORITY_HOLDBACK, FlowPlugin::UsageLimit(u)))
    });
    r.register(usage::SOFT_REFLECTIVE_CEILING, |n, p| {
        let u = Arc::new(usage::SoftReflectiveCeiling::from_params(p)?);
        Ok(handle(n, usage::SOFT_REFLECTIVE_CEILING, FlowPlugin::UsageLimit(u)))
    });
    r.register(admitter::PROBABILISTIC_ADMITTER, |n, p| {
        let a = Arc::new(ProbabilisticAdmitter::from_params(p)?);
        Ok(handle(n, admitter::PROBABILISTIC_ADMITTER, FlowPlugin::Admitter(a)))
    });
}

/// Resolves the `flowControl` section (`section`, as written; `None` when absent) and
/// the saturation detector it or the deprecated top-level `saturationDetector` names
/// (`(field, pluginRef)`), against the file's plugins. `gate` is the `flowControl`
/// feature gate.
///
/// Always `Ok(Some(_))` on success: the router always has an admission path. With the
/// gate on ([`FlowControlConfig::enabled`]) requests queue in a [`FlowController`]; with
/// it off, the legacy admission applies ([`legacy_admit`]) and only the section's syntax
/// and the detector are checked (the router ignores the rest, with a warning). The
/// detector defaults to `utilization-detector`, made with its defaults when no plugin has
/// that name; `fcfs-ordering-policy`, `global-strict-fairness-policy` and
/// `static-usage-limit-policy` exist implicitly under those names. Errors name the field
/// (`what`) and the reason.
pub fn resolve(
    section: Option<&serde_json::Value>,
    detector: Option<(&str, &str)>,
    plugins: &BTreeMap<String, PluginHandle>,
    gate: bool,
) -> Result<Option<FlowControlConfig>, (String, String)> {
    config::resolve(section, detector, plugins, gate).map(Some)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::registry::PluginRegistry;

    fn build(t: &str, p: Value) -> Result<super::PluginHandle, String> {
        let r = PluginRegistry::with_builtins();
        let f = r.get(t).unwrap_or_else(|| panic!("{t} is not registered"));
        f("p", &p)
    }

    #[test]
    fn every_flow_control_type_is_registered_with_its_role() {
        for (t, role) in [
            ("global-strict-fairness-policy", "Fairness"),
            ("round-robin-fairness-policy", "Fairness"),
            ("program-aware-fairness", "Fairness"),
            ("fcfs-ordering-policy", "Ordering"),
            ("edf-ordering-policy", "Ordering"),
            ("slo-deadline-ordering-policy", "Ordering"),
            ("utilization-detector", "Detector"),
            ("concurrency-detector", "Detector"),
            ("static-usage-limit-policy", "UsageLimit"),
            ("soft-reflective-ceiling-policy", "UsageLimit"),
            ("sheddable-eviction-filter", "EvictionFilter"),
            ("priority-then-time-eviction-order-policy", "EvictionOrdering"),
            ("probabilistic-admitter", "Admitter"),
        ] {
            let h = build(t, json!({})).unwrap_or_else(|e| panic!("{t}: {e}"));
            let flow = h.flow.unwrap_or_else(|| panic!("{t} has no flow role"));
            assert_eq!(format!("{flow:?}"), format!("{role}({t})"));
        }
        let h = build("priority-holdback-policy", json!({"minCeiling": 0.5})).unwrap();
        assert_eq!(h.flow.map(|f| f.type_name()), Some("priority-holdback-policy"));
        // Detectors are filters too.
        assert!(build("utilization-detector", json!({})).unwrap().filter.is_some());
        assert!(build("concurrency-detector", json!({})).unwrap().filter.is_some());
    }

    #[test]
    fn unknown_parameters_are_refused_by_name() {
        for (t, p) in [
            ("fcfs-ordering-policy", json!({"x": 1})),
            ("round-robin-fairness-policy", json!({"cursor": 1})),
            ("utilization-detector", json!({"queueDepth": 1})),
            ("concurrency-detector", json!({"maxConcurency": 1})),
            ("static-usage-limit-policy", json!({"treshold": 1})),
            ("priority-holdback-policy", json!({"minCeiling": 0.5, "min": 1})),
            ("probabilistic-admitter", json!({"pow": 1})),
            ("program-aware-fairness", json!({"strat": "las"})),
        ] {
            let key = p.as_object().and_then(|o| o.keys().find(|k| *k != "minCeiling")).cloned().unwrap_or_default();
            let e = build(t, p).unwrap_err();
            assert!(e.contains(&format!("{key:?}")), "{t}: {e}");
        }
    }
}
