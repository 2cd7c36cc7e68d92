//! Pickers.

use crate::endpoint::Endpoint;
use crate::plugin::Picker;

/// `max-score-picker`: the highest total; ties broken at random.
#[derive(Debug, Default)]
pub struct MaxScorePicker;

impl Picker for MaxScorePicker {
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint> {
        let best = scored.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
        let top: Vec<&Endpoint> = scored.iter().filter(|s| s.1 >= best).map(|s| s.0).collect();
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
mod tests {
    use super::*;
    use crate::endpoint::Role;

    #[test]
    fn pickers_choose_as_described() {
        let eps = [Endpoint::new("a", "a", Role::Both), Endpoint::new("b", "b", Role::Both)];
        let scored = [(&eps[0], 0.2), (&eps[1], 0.8)];
        assert_eq!(MaxScorePicker.pick(&scored, &mut || 0.0).map(|e| e.id.as_str()), Some("b"));
        assert_eq!(WeightedRandomPicker.pick(&scored, &mut || 0.1).map(|e| e.id.as_str()), Some("a"));
        assert_eq!(WeightedRandomPicker.pick(&scored, &mut || 0.5).map(|e| e.id.as_str()), Some("b"));
        assert_eq!(RandomPicker.pick(&scored, &mut || 0.99).map(|e| e.id.as_str()), Some("b"));
        let tie = [(&eps[0], 1.0), (&eps[1], 1.0)];
        assert_eq!(MaxScorePicker.pick(&tie, &mut || 0.7).map(|e| e.id.as_str()), Some("b"));
        assert!(MaxScorePicker.pick(&[], &mut || 0.0).is_none());
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
