//! Helpers shared by the end-to-end tests.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses some of them

use std::time::Duration;

use llmd::cluster::Replica;
use llmd::engine::LatencyModel;

/// A simulated replica whose prefill costs 100 µs per uncached token.
pub(crate) fn sim() -> Replica {
    let latency = LatencyModel {
        step_overhead: Duration::from_micros(500),
        per_prefill_token: Duration::from_micros(100),
        per_decode_seq: Duration::from_micros(50),
        per_context_token: Duration::ZERO,
    };
    Replica::simulated("llmd-sim", latency, 2048).unwrap()
}

/// Sends signal `name` (`TERM`, `INT`) to `child`.
pub(crate) fn signal(child: &std::process::Child, name: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for `child` to exit, at most `limit`.
pub(crate) fn wait_exit(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "still running {limit:?} after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
}
