//! Pickers.

use crate::endpoint::Endpoint;
use crate::plugin::Picker;

/// llm-d-router's one picker parameter (`random-picker`, `weighted-random-picker`,
/// `max-score-picker`): how many endpoints to pick. Accepted; llmd picks one.
pub(crate) const MAX_NUM_OF_ENDPOINTS: &str = "maxNumOfEndpoints";

/// The parameters of llm-d's pickers: `maxNumOfEndpoints`, of which llmd builds 1 (the
/// router reads 0 and below as 1 too).
pub(crate) fn one_endpoint(p: &serde_json::Value) -> Result<(), String> {
    let q = super::Params(p);
    q.check(&[MAX_NUM_OF_ENDPOINTS])?;
    check_max_endpoints(&q)
}

// `maxNumOfEndpoints` above 1 asks for more than llmd picks.
fn check_max_endpoints(q: &super::Params<'_>) -> Result<(), String> {
    match q.number(MAX_NUM_OF_ENDPOINTS)? {
        Some(n) if n > 1.0 => {
            Err(format!("parameter {MAX_NUM_OF_ENDPOINTS}: {n} is not built in llmd yet (one endpoint per pick)"))
        }
        _ => Ok(()),
    }
}

/// `max-score-picker`: the highest total. Ties are broken at random (llm-d's way), or
/// with `tieBreak: least-recent` (an llmd addition) in favour of the endpoint the picker
/// sent a request to longest ago — round robin among equals, which under load is the
/// one most likely done with its last prefill. `tieTolerance` (an llmd addition, default
/// 0) counts totals within that much of the best as tied, so that differences too small
/// to change latency do not override the tie-break.
#[derive(Debug, Default)]
pub struct MaxScorePicker {
    least_recent: bool,
    tolerance: f64,
}

impl MaxScorePicker {
    /// From `parameters`: `tieBreak` (`random` | `least-recent`), `tieTolerance` (a
    /// non-negative number); llm-d's `maxNumOfEndpoints` is accepted and not built.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = super::Params(p);
        q.check(&[MAX_NUM_OF_ENDPOINTS, "tieBreak", "tieTolerance"])?;
        check_max_endpoints(&q)?;
        let least_recent = match q.string("tieBreak")?.as_deref() {
            None | Some("random") => false,
            Some("least-recent") => true,
            Some(o) => return Err(format!("parameter tieBreak: {o:?} is not random or least-recent")),
        };
        let tolerance = q.f64("tieTolerance", 0.0)?;
        Ok(MaxScorePicker { least_recent, tolerance })
    }
}

impl Picker for MaxScorePicker {
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
        let best = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let mut top: Vec<&Endpoint> = scored.iter().filter(|s| s.1 >= best - self.tolerance).map(|s| s.0).collect();
        if self.least_recent {
            // Never-picked endpoints (None) sort first; still-equal ones go to the draw.
            let oldest = top.iter().map(|e| e.inflight.last_sent).min().flatten();
            top.retain(|e| e.inflight.last_sent.is_none() || e.inflight.last_sent == oldest);
            if top.iter().any(|e| e.inflight.last_sent.is_none()) {
                top.retain(|e| e.inflight.last_sent.is_none());
            }
        }
        pick_uniform(&top, draw)
    }
}

fn pick_uniform<'a>(eps: &[&'a Endpoint], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
    if eps.is_empty() {
        return None;
    }
    let i = ((draw() * eps.len() as f64) as usize).min(eps.len() - 1);
    Some(eps[i])
}

/// `random-picker`: uniform over the candidates.
#[derive(Debug, Default)]
pub struct RandomPicker;

impl Picker for RandomPicker {
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
        let eps: Vec<&Endpoint> = scored.iter().map(|s| s.0).collect();
        pick_uniform(&eps, draw)
    }
}

/// `weighted-random-picker`: probability proportional to the total score (uniform when
/// every score is zero).
#[derive(Debug, Default)]
pub struct WeightedRandomPicker;

impl Picker for WeightedRandomPicker {
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
        let total: f64 = scored.iter().map(|s| s.1.max(0.0)).sum();
        if total <= 0.0 {
            return RandomPicker.pick(scored, draw);
        }
        let mut r = draw() * total;
        for (e, s) in scored {
            let w = s.max(0.0);
            if r < w {
                return Some(e);
            }
            r -= w;
        }
        scored.last().map(|s| s.0)
    }
}

#[cfg(test)]
mod tie_tests {
    use super::*;
    use crate::endpoint::Role;
    use std::time::Duration;

    #[test]
    fn least_recent_tie_break_is_round_robin_among_equals() {
        let mut eps: Vec<Endpoint> = ["a", "b", "c"].iter().map(|n| Endpoint::new(*n, *n, Role::Both)).collect();
        eps[0].inflight.last_sent = Some(Duration::from_millis(30));
        eps[1].inflight.last_sent = Some(Duration::from_millis(10));
        eps[2].inflight.last_sent = Some(Duration::from_millis(20));
        let p = MaxScorePicker::from_params(&serde_json::json!({"tieBreak": "least-recent"})).unwrap();
        let scored: Vec<(&Endpoint, f64)> = eps.iter().map(|e| (e, 1.0)).collect();
        assert_eq!(p.pick(&scored, &mut || 0.99).unwrap().id, "b");
        // A higher score still wins over an older pick.
        let scored = [(&eps[0], 2.0), (&eps[1], 1.0), (&eps[2], 1.0)];
        assert_eq!(p.pick(&scored, &mut || 0.0).unwrap().id, "a");
        eps[2].inflight.last_sent = None;
        let scored: Vec<(&Endpoint, f64)> = eps.iter().map(|e| (e, 1.0)).collect();
        assert_eq!(p.pick(&scored, &mut || 0.0).unwrap().id, "c", "never picked comes first");
        assert!(MaxScorePicker::from_params(&serde_json::json!({"tieBreak": "coin"})).is_err());
    }

    #[test]
    fn tie_tolerance_lets_the_tie_break_decide_close_calls() {
        let mut eps: Vec<Endpoint> = ["a", "b", "c"].iter().map(|n| Endpoint::new(*n, *n, Role::Both)).collect();
        eps[0].inflight.last_sent = Some(Duration::from_millis(30));
        eps[1].inflight.last_sent = Some(Duration::from_millis(10));
        eps[2].inflight.last_sent = Some(Duration::from_millis(5));
        let scored = [(&eps[0], 4.0), (&eps[1], 3.8), (&eps[2], 3.0)];
        let strict = MaxScorePicker::from_params(&serde_json::json!({"tieBreak": "least-recent"})).unwrap();
        assert_eq!(strict.pick(&scored, &mut || 0.0).unwrap().id, "a");
        let p =
            MaxScorePicker::from_params(&serde_json::json!({"tieBreak": "least-recent", "tieTolerance": 0.3})).unwrap();
        // b is within 0.3 of the best and was sent to longer ago; c, older still, is not close.
        assert_eq!(p.pick(&scored, &mut || 0.0).unwrap().id, "b");
        for bad in [serde_json::json!(-0.1), serde_json::json!("0.3")] {
            let err = MaxScorePicker::from_params(&serde_json::json!({"tieTolerance": bad})).unwrap_err();
            assert!(err.contains("tieTolerance"), "{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    #[test]
    fn pickers_choose_as_described() {
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let scored = [(&eps[0], 0.2), (&eps[1], 0.8)];
        assert_eq!(MaxScorePicker::default().pick(&scored, &mut || 0.0).map(|e| e.id.as_str()), Some("b"));
        assert_eq!(WeightedRandomPicker.pick(&scored, &mut || 0.1).map(|e| e.id.as_str()), Some("a"));
        assert_eq!(WeightedRandomPicker.pick(&scored, &mut || 0.5).map(|e| e.id.as_str()), Some("b"));
        assert_eq!(RandomPicker.pick(&scored, &mut || 0.99).map(|e| e.id.as_str()), Some("b"));
        let tie = [(&eps[0], 1.0), (&eps[1], 1.0)];
        assert_eq!(MaxScorePicker::default().pick(&tie, &mut || 0.7).map(|e| e.id.as_str()), Some("b"));
        assert!(MaxScorePicker::default().pick(&[], &mut || 0.0).is_none());
        let rr = RoundRobinPicker::default();
        let order: Vec<&str> = (0..4).map(|_| rr.pick(&scored, &mut || 0.0).unwrap().id.as_str()).collect();
        assert_eq!(order, vec!["a", "b", "a", "b"]);
    }
}

/// `round-robin-picker` (an llmd addition): cycles through the candidates in id order,
/// ignoring scores — the baseline routing benchmarks compare against.
#[derive(Debug, Default)]
pub struct RoundRobinPicker {
    next: std::sync::atomic::AtomicUsize,
}

impl Picker for RoundRobinPicker {
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], _: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
        if scored.is_empty() {
            return None;
        }
        let mut eps: Vec<&Endpoint> = scored.iter().map(|s| s.0).collect();
        eps.sort_by(|a, b| a.id.cmp(&b.id));
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(eps[n % eps.len()])
    }
}
