//! Endpoint health: passive outlier ejection and active health checks, as Envoy does
//! them (`outlier_detection` and `health_checks`).
//!
//! - **Passive**: front ends report each attempt's outcome. `consecutive_failures`
//!   connect failures, timeouts or cut streams in a row eject the endpoint for
//!   `base_ejection × times ejected` (capped at `max_ejection`); it comes back when that
//!   passes, or earlier on a passing active check. An ejection that would leave no
//!   endpoint serving is skipped (Envoy's panic threshold in its simplest form): with
//!   every endpoint failing, trying them beats refusing everything.
//! - **Active**: the picker asks each endpoint's `/health` every `check_interval`;
//!   `unhealthy_threshold` failures in a row take it out of picks, `healthy_threshold`
//!   passes bring it back.
//!
//! Pure state: the datastore applies it under its lock with its injected clock.

use std::time::Duration;

/// How endpoints are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Failed attempts in a row that eject an endpoint (0 turns passive ejection off).
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// How often to check each endpoint's health path; `None` turns active checks off.
    pub check_interval: Option<Duration>,
    /// Time a check may take.
    pub check_timeout: Duration,
    /// Path checked (vLLM's `/health`).
    pub check_path: String,
    /// Failed checks in a row that mark an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that mark it healthy again.
    pub healthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            // Envoy's consecutive_gateway_failure is 5; a refused connection or a timeout
            // is a stronger signal than a 5xx, so fewer suffice.
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            check_interval: Some(Duration::from_secs(5)),
            check_timeout: Duration::from_secs(2),
            check_path: "/health".into(),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

/// Why an attempt on an endpoint failed (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Failure {
    /// The connection was refused, reset or timed out before the request was sent.
    Connect,
    /// No response headers in time.
    Timeout,
    /// The response stopped mid-way (reset, or silent past the idle timeout).
    Cut,
}

impl Failure {
    /// The failure as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Cut => "cut",
        }
    }
}

/// What the health machinery knows about one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointHealth {
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// Ejected until this time (datastore clock), if ejected.
    pub ejected_until: Option<Duration>,
    /// Times ejected so far (lengthens the next ejection).
    pub ejections: u32,
    /// Whether active checks currently fail it.
    pub unhealthy: bool,
    // Checks in a row with the same outcome, toward a threshold.
    check_streak: u32,
    check_streak_ok: bool,
}

impl EndpointHealth {
    /// Neither ejected nor failing its checks.
    pub fn serving(&self) -> bool {
        self.ejected_until.is_none() && !self.unhealthy
    }

    /// Records a failed attempt at `now`. Returns whether the endpoint is now to be
    /// ejected (the caller decides whether ejecting it is allowed, and then calls
    /// [`eject`](Self::eject)).
    pub fn failed(&mut self, cfg: &HealthConfig) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        cfg.consecutive_failures > 0
            && self.ejected_until.is_none()
            && self.consecutive_failures >= cfg.consecutive_failures
    }

    /// Ejects the endpoint from `now`; returns for how long.
    pub fn eject(&mut self, cfg: &HealthConfig, now: Duration) -> Duration {
        self.ejections = self.ejections.saturating_add(1);
        let span = cfg.base_ejection.saturating_mul(self.ejections).min(cfg.max_ejection);
        self.ejected_until = Some(now + span);
        self.consecutive_failures = 0;
        span
    }

    /// Records a successful attempt.
    pub fn succeeded(&mut self) {
        self.consecutive_failures = 0;
    }

    /// Ends an ejection whose time has passed; returns whether it did.
    pub fn readmit_if_due(&mut self, now: Duration) -> bool {
        match self.ejected_until {
            Some(t) if t <= now => {
                self.ejected_until = None;
                true
            }
            _ => false,
        }
    }

    /// Records an active check's outcome. Returns `Some(serving)` when the endpoint's
    /// standing changed.
    pub fn checked(&mut self, ok: bool, cfg: &HealthConfig) -> Option<bool> {
        if self.check_streak_ok == ok {
            self.check_streak = self.check_streak.saturating_add(1);
        } else {
            self.check_streak_ok = ok;
            self.check_streak = 1;
        }
        let was = self.serving();
        if ok && self.check_streak >= cfg.healthy_threshold.max(1) {
            self.unhealthy = false;
            // A passing check ends an ejection (Envoy's
            // successful_active_health_check_uneject_host, on by default).
            self.ejected_until = None;
            self.consecutive_failures = 0;
        } else if !ok && self.check_streak >= cfg.unhealthy_threshold.max(1) {
            self.unhealthy = true;
        }
        (was != self.serving()).then_some(self.serving())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig { consecutive_failures: 3, base_ejection: Duration::from_secs(10), ..Default::default() }
    }

    #[test]
    fn third_failure_in_a_row_ejects_and_success_resets_the_count() {
        let c = cfg();
        let mut h = EndpointHealth::default();
        assert!(!h.failed(&c));
        assert!(!h.failed(&c));
        h.succeeded();
        assert!(!h.failed(&c));
        assert!(!h.failed(&c));
        assert!(h.failed(&c));
    }

    #[test]
    fn ejections_lengthen_and_are_capped() {
        let c = HealthConfig { max_ejection: Duration::from_secs(25), ..cfg() };
        let mut h = EndpointHealth::default();
        assert_eq!(h.eject(&c, Duration::ZERO), Duration::from_secs(10));
        assert!(!h.serving());
        assert!(!h.readmit_if_due(Duration::from_secs(9)));
        assert!(h.readmit_if_due(Duration::from_secs(10)));
        assert!(h.serving());
        assert_eq!(h.eject(&c, Duration::from_secs(10)), Duration::from_secs(20));
        h.readmit_if_due(Duration::from_secs(30));
        assert_eq!(h.eject(&c, Duration::from_secs(30)), Duration::from_secs(25));
    }

    #[test]
    fn checks_need_their_thresholds_and_a_pass_ends_an_ejection() {
        let c = HealthConfig { unhealthy_threshold: 2, healthy_threshold: 2, ..cfg() };
        let mut h = EndpointHealth::default();
        assert_eq!(h.checked(false, &c), None);
        assert_eq!(h.checked(true, &c), None);
        assert_eq!(h.checked(false, &c), None);
        assert_eq!(h.checked(false, &c), Some(false));
        assert_eq!(h.checked(true, &c), None);
        assert_eq!(h.checked(true, &c), Some(true));
        h.eject(&c, Duration::ZERO);
        assert_eq!(h.checked(true, &c), Some(true));
        assert!(h.serving());
    }

    #[test]
    fn passive_ejection_can_be_turned_off() {
        let c = HealthConfig { consecutive_failures: 0, ..cfg() };
        let mut h = EndpointHealth::default();
        assert!((0..10).all(|_| !h.failed(&c)));
    }
}
