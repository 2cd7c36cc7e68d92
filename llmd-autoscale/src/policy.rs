//! The policy seam: every autoscaling algorithm turns a [`ModelSnapshot`] into one
//! [`Decision`] per variant.

use crate::error::Result;
use crate::snapshot::{Decision, ModelSnapshot};

/// An autoscaling algorithm. Stateful ones (fitted profiles, idle timers) keep their
/// state between calls; time comes from the snapshot, never from a clock of their own.
pub trait Policy: Send {
    /// A short name for reports and metrics (`saturation`, `model`, ...).
    fn name(&self) -> &str;

    /// One decision per variant of `snapshot`, in its order.
    fn decide(&mut self, snapshot: &ModelSnapshot) -> Result<Vec<Decision>>;
}
