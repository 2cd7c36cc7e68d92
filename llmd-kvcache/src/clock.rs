//! Time, injected: every llmd crate reads (and the engine waits) through a [`Clock`] —
//! the engine's steps and the simulated backend, the scheduler's metric staleness and
//! in-flight expiry — so tests run on virtual time and never sleep.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of monotonic time that can also wait.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin.
    fn now(&self) -> Duration;
    /// Waits `d` (the simulated backend's latency); a virtual clock just advances.
    fn sleep(&self, d: Duration);
    /// Wall-clock Unix time in seconds, for event timestamps.
    fn unix_time(&self) -> f64;
}

/// Real time.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn unix_time(&self) -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
    }
}

/// Virtual time that moves only when told to (or when something sleeps on it).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
    // Serializes sleeps so concurrent sleepers advance time one after another.
    lock: Mutex<()>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward.
    pub fn advance(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn sleep(&self, d: Duration) {
        let _guard = self.lock.lock();
        self.advance(d);
    }

    fn unix_time(&self) -> f64 {
        1_700_000_000.0 + self.now().as_secs_f64()
    }
}
