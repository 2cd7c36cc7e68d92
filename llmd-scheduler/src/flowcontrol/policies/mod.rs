//! The flow-control plugin seams (the router's `framework/interface/flowcontrol`):
//! fairness picks a flow within a band, ordering ranks items within a flow, a saturation
//! detector reads the pool's load, a usage-limit policy gives each band a ceiling, and
//! eviction policies choose which in-flight requests may be revoked. The built-ins live
//! in the submodules, under the router's type names.

pub mod eviction;
pub mod fairness;
pub mod ordering;
pub mod program_aware;
pub mod saturation;
pub mod usage;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::endpoint::Endpoint;

use super::queue::BandView;
use super::types::{PolicyError, QueueItem, TokenUsage};

/// A fairness policy's state for one band (a round-robin cursor, say): policies are
/// shared by every band they govern, so what they remember per band lives here.
pub type BandState = Box<dyn Any + Send + Sync>;

/// Chooses which flow of a band dispatches next.
pub trait FairnessPolicy: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// Fresh state for one band.
    fn new_state(&self) -> BandState {
        Box::new(())
    }

    /// The flow (by ID) whose head item dispatches next, `None` when no flow has work.
    /// Errors skip the band for this cycle.
    fn pick(&self, band: &BandView<'_>, state: &mut BandState) -> Result<Option<String>, PolicyError>;

    /// `item` of a band this policy governs was dispatched at `now`.
    fn on_dispatched(&self, _item: &QueueItem, _now: Duration) {}

    /// A dispatched request of flow `fairness_id` finished at `now`, having used `usage`
    /// when its response reported it.
    fn on_completed(&self, _fairness_id: &str, _usage: Option<TokenUsage>, _now: Duration) {}
}

/// Orders the items of a flow.
pub trait OrderingPolicy: Send + Sync {
    /// The plugin type (fairness across flows compares only items of one type).
    fn type_name(&self) -> &'static str;

    /// Whether `a` dispatches before `b`.
    fn less(&self, a: &QueueItem, b: &QueueItem) -> bool;
}

/// Reads how loaded the pool is: below 1.0 the fraction of capacity in use, at or above
/// 1.0 saturated (higher: deeper overload).
pub trait SaturationDetector: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// The saturation of `endpoints` at `now` (the clock endpoint metrics are stamped
    /// with); an empty list reads 1.0.
    fn saturation(&self, endpoints: &[&Endpoint], now: Duration) -> f64;

    /// Endpoints the last [`saturation`](Self::saturation) call counted as saturated
    /// because their metrics were missing or stale, for detectors that judge staleness.
    fn stale_endpoints(&self) -> Option<u64> {
        None
    }

    /// Gives the detector the clock endpoint metrics are stamped with, for its filter
    /// role (filters are not handed the time).
    fn bind_clock(&self, _clock: Arc<dyn Clock>) {}
}

/// Gives each priority band a saturation ceiling above which it does not dispatch.
pub trait UsageLimitPolicy: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// Writes the ceiling of `priorities[i]` (highest first) into `ceilings[i]`, which
    /// comes filled with 1.0 (no gating). Called once per dispatch cycle.
    fn compute_limit(&self, saturation: f64, priorities: &[i32], ceilings: &mut [f64]);
}

/// An in-flight (dispatched) request that eviction may revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionItem {
    /// Request ID.
    pub request_id: String,
    /// Its priority.
    pub priority: i32,
    /// When it was dispatched (controller clock).
    pub dispatch_time: Duration,
}

/// Decides which in-flight requests may be evicted.
pub trait EvictionFilterPolicy: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// Whether `item` may be evicted.
    fn accept(&self, item: &EvictionItem) -> bool;
}

/// Orders eviction candidates: the least is evicted first.
pub trait EvictionOrderingPolicy: Send + Sync {
    /// The plugin type.
    fn type_name(&self) -> &'static str;

    /// Whether `a` is evicted before `b`.
    fn less(&self, a: &EvictionItem, b: &EvictionItem) -> bool;
}
