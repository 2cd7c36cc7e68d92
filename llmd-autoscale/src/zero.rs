//! Scale to and from zero, shared by the policies: a model with no ready replica and
//! requests held by the picker's flow control (`llm_d_epp_flow_control_queue_size`)
//! gets one replica of its cheapest variant, as WVA's scale-from-zero loop does; a
//! model idle for `after` seconds with `min` 0 goes to zero.

use crate::snapshot::{ModelSnapshot, VariantState};

/// Tracks how long the model has been idle.
#[derive(Debug, Clone)]
pub struct ZeroGate {
    after: f64,
    idle_since: Option<f64>,
}

impl ZeroGate {
    /// Scale to zero after `after` idle seconds (`f64::INFINITY`: never).
    pub fn new(after: f64) -> Self {
        ZeroGate { after, idle_since: None }
    }

    /// Whether nothing is arriving, queued, running or waiting.
    fn idle(s: &ModelSnapshot) -> bool {
        s.load.arrival_rate == 0.0
            && s.load.queued == 0.0
            && s.replicas.iter().all(|r| r.running == 0.0 && r.waiting == 0.0)
    }

    /// Notes the snapshot; true when the model has been idle for `after` seconds.
    pub fn idle_long_enough(&mut self, s: &ModelSnapshot) -> bool {
        if !Self::idle(s) {
            self.idle_since = None;
            return false;
        }
        let since = *self.idle_since.get_or_insert(s.now);
        s.now - since >= self.after
    }

    /// The variant to start from zero: requests wait (held by the picker, or arriving)
    /// and no variant has a replica, ready or starting. The cheapest that may run one
    /// (ties: the first by name).
    pub fn from_zero(s: &ModelSnapshot) -> Option<&VariantState> {
        let waiting = s.load.queued > 0.0 || s.load.arrival_rate > 0.0;
        if !waiting || s.variants.iter().any(|v| v.current > 0) {
            return None;
        }
        cheapest(s.variants.iter().filter(|v| v.max > 0))
    }
}

/// The cheapest variant (ties: the first by name).
pub(crate) fn cheapest<'a>(vs: impl Iterator<Item = &'a VariantState>) -> Option<&'a VariantState> {
    vs.min_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)))
}

/// The most expensive variant (ties: the last by name).
pub(crate) fn dearest<'a>(vs: impl Iterator<Item = &'a VariantState>) -> Option<&'a VariantState> {
    vs.max_by(|a, b| a.cost.total_cmp(&b.cost).then_with(|| a.name.cmp(&b.name)))
}
