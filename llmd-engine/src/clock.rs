//! Time, injected: the engine reads and waits through a [`Clock`], so tests and the
//! simulated backend run on virtual time and never sleep. The clock is shared with the
//! other llmd crates (it lives in `llmd-kvcache`).

pub use llmd_kvcache::clock::{Clock, ManualClock, SystemClock};
