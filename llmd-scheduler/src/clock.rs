//! Time, injected: staleness of scraped metrics and the expiry of in-flight requests are
//! read through a [`Clock`], so they are tested on a [`ManualClock`] without sleeping.
//! The clock is shared with the other llmd crates (it lives in `llmd-kvcache`).

pub use llmd_kvcache::clock::{Clock, ManualClock, SystemClock};
