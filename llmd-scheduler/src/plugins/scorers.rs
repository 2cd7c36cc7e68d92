//! Load, cache-pressure, session and LoRA scorers.

use super::Params;
use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Scorer};
use crate::request::LlmRequest;

/// `queue-scorer`: fewer waiting requests score higher, min-max normalised over the
/// candidates (all equal → 1).
#[derive(Debug, Default)]
pub struct QueueScorer;

impl Scorer for QueueScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        fewer_is_better(eps.iter().map(|e| e.metrics.waiting))
    }
}

/// Min-max normalised, lower values scoring higher; 1 for all when they are equal
/// (llm-d's queue and running-requests scorers).
pub(crate) fn fewer_is_better(values: impl Iterator<Item = u64>) -> Vec<f64> {
    let q: Vec<u64> = values.collect();
    let (min, max) = (q.iter().copied().min().unwrap_or(0), q.iter().copied().max().unwrap_or(0));
    q.iter().map(|&v| if max == min { 1.0 } else { (max - v) as f64 / (max - min) as f64 }).collect()
}

/// `active-request-scorer` (llm-d's): fewer requests in flight from this picker score
/// higher: `(max - n) / max` over the candidates, 1 for all when none has any. The
/// counts are the picker's own ([`Endpoint::inflight`]), exact the moment a request is
/// sent, where scraped queue lengths lag by a scrape interval.
#[derive(Debug)]
pub struct ActiveRequestScorer {
    request_timeout: std::time::Duration,
}

/// How long a request counts as in flight when its end is never seen (llm-d's default).
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

impl ActiveRequestScorer {
    /// From `parameters`: `requestTimeout` (a duration such as `"30s"`, `"2m"`).
    /// llm-d-router's other keys (`idleThreshold`, `maxBusyScore`,
    /// `inFlightLoadProducerName`) are accepted and not built; others are refused.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["requestTimeout", "idleThreshold", "maxBusyScore", "inFlightLoadProducerName"])?;
        q.unbuilt("idleThreshold", &0.into(), "only 0")?;
        q.unbuilt("maxBusyScore", &1.into(), "only 1")?;
        let request_timeout = match q.string("requestTimeout")? {
            None => DEFAULT_REQUEST_TIMEOUT,
            Some(s) => super::parse_duration(&s).map_err(|e| format!("parameter requestTimeout: {e}"))?,
        };
        Ok(ActiveRequestScorer { request_timeout })
    }

    /// After this long in flight a request no longer counts (its end was never seen).
    pub fn request_timeout(&self) -> std::time::Duration {
        self.request_timeout
    }
}

impl Scorer for ActiveRequestScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let max = eps.iter().map(|e| e.inflight.requests).max().unwrap_or(0);
        eps.iter()
            .map(|e| if max == 0 { 1.0 } else { (max - e.inflight.requests.min(max)) as f64 / max as f64 })
            .collect()
    }
}

/// `attribute-scorer` (llmd's): scores a numeric endpoint attribute that a data-layer
/// extractor wrote, min-max normalised over the candidates; `prefer: lower` (default)
/// or `higher`. Endpoints without the attribute score 0.
#[derive(Debug)]
pub struct AttributeScorer {
    attribute: String,
    higher: bool,
}

impl AttributeScorer {
    /// From `parameters`: `attribute` (required), `prefer` (`lower` | `higher`).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["attribute", "prefer"])?;
        let attribute = q.string("attribute")?.ok_or("parameter attribute is required")?;
        let higher = match q.string("prefer")?.as_deref() {
            None | Some("lower") => false,
            Some("higher") => true,
            Some(o) => return Err(format!("parameter prefer: {o:?} is not lower or higher")),
        };
        Ok(AttributeScorer { attribute, higher })
    }
}

impl Scorer for AttributeScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let vals: Vec<Option<f64>> =
            eps.iter().map(|e| e.attribute(&self.attribute).and_then(|v| v.as_f64())).collect();
        let present = vals.iter().flatten();
        let (min, max) = present.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        vals.iter()
            .map(|v| match v {
                None => 0.0,
                Some(_) if max <= min => 1.0,
                Some(v) if self.higher => (v - min) / (max - min),
                Some(v) => (max - v) / (max - min),
            })
            .collect()
    }
}

/// `token-load-scorer` (llm-d's): fewer prompt tokens waiting to be prefilled score
/// higher, `1 - min(1, tokens / queueThresholdTokens)`. The tokens are the picker's own
/// count ([`Endpoint::inflight`]): a request's prompt counts from the pick until the
/// first byte of its response — the work that delays the next request's first token —
/// aged by the endpoint's observed prefill rate (an llmd refinement: a prefill about to
/// finish weighs less than one just begun; until a rate is learned, llm-d's raw count).
#[derive(Debug)]
pub struct TokenLoadScorer {
    threshold: u64,
}

impl TokenLoadScorer {
    /// From `parameters`: `queueThresholdTokens` (default 4 194 304, llm-d's);
    /// `inFlightLoadProducerName` is accepted (the picker keeps the counts itself).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["queueThresholdTokens", "inFlightLoadProducerName"])?;
        let threshold = q.u64("queueThresholdTokens", 4_194_304)?;
        if threshold == 0 {
            return Err("parameter queueThresholdTokens: must be positive".into());
        }
        Ok(TokenLoadScorer { threshold })
    }
}

impl Scorer for TokenLoadScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter().map(|e| 1.0 - (e.inflight.prefill_remaining as f64 / self.threshold as f64).min(1.0)).collect()
    }
}

/// `prefill-cost-scorer` (llmd's): the prefill work a request would wait behind and do
/// on each endpoint — the prompt tokens still pending there (the picker's own count,
/// aged by the endpoint's prefill rate) plus the tokens of this prompt its cache lacks —
/// scored against the cheapest candidate, `min_cost / cost`. It weighs prefix affinity
/// against load in one unit (tokens to prefill, which is what delays a first token):
/// a cache hit wins until the queue in front of it costs more than a miss elsewhere,
/// and a prefix no endpoint holds goes to the least loaded one. What each endpoint's
/// cache holds comes from a prefix scorer listed before it in the profile
/// (`prefix-cache-scorer` or `precise-prefix-cache-scorer`); without one every prompt
/// counts whole.
#[derive(Debug, Default)]
pub struct PrefillCostScorer;

impl Scorer for PrefillCostScorer {
    fn score(&self, state: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let prompt = req.prompt_tokens();
        let cost = |e: &Endpoint, uncached: usize| {
            (e.inflight.prefill_remaining.saturating_add(uncached as u64)).max(1) as f64
        };
        let costs: Vec<f64> = match state.get::<PrefixMatch>(PREFIX_MATCH_KEY) {
            // As `PrefixMatch::uncached_tokens`, for every candidate at once.
            Some(m) => eps
                .iter()
                .zip(m.blocks_for(eps))
                .map(|(e, blocks)| cost(e, m.prompt_tokens.saturating_sub(blocks * m.tokens_per_block).min(prompt)))
                .collect(),
            None => eps.iter().map(|e| cost(e, prompt)).collect(),
        };
        let min = costs.iter().copied().fold(f64::INFINITY, f64::min);
        costs.iter().map(|c| min / c).collect()
    }
}

/// `kv-cache-utilization-scorer`: `1 - kv_cache_usage`.
#[derive(Debug, Default)]
pub struct KvCacheUtilizationScorer;

impl Scorer for KvCacheUtilizationScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter().map(|e| (1.0 - e.metrics.kv_usage).clamp(0.0, 1.0)).collect()
    }
}

/// `load-aware-scorer`: an idle queue scores 0.5, a queue at or past `threshold` 0,
/// linearly in between (llm-d's scorer).
#[derive(Debug)]
pub struct LoadAwareScorer {
    threshold: u64,
}

impl LoadAwareScorer {
    /// From `parameters` (`threshold`, default 128).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["threshold"])?;
        let threshold = q.u64("threshold", 128)?;
        if threshold == 0 {
            return Err("parameter threshold: must be at least 1".into());
        }
        Ok(LoadAwareScorer { threshold })
    }
}

impl Scorer for LoadAwareScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter()
            .map(|e| match e.metrics.waiting {
                0 => 0.5,
                w if w > self.threshold => 0.0,
                w => 0.5 * (1.0 - w as f64 / self.threshold as f64),
            })
            .collect()
    }
}

/// The header carrying a session's endpoint (set by the gateway on responses).
pub const SESSION_HEADER: &str = "x-session-token";

/// `session-affinity-scorer`: 1 for the endpoint named by the request's session token.
#[derive(Debug, Default)]
pub struct SessionAffinityScorer;

impl Scorer for SessionAffinityScorer {
    fn score(&self, _: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let token = req.headers.get(SESSION_HEADER);
        eps.iter().map(|e| if token == Some(&e.id) { 1.0 } else { 0.0 }).collect()
    }
}

/// `lora-affinity-scorer`: prefers endpoints with the request's adapter loaded (1.0),
/// then with room for another adapter (0.8), then with it queued for loading (0.6), as
/// llm-d-router scores them.
#[derive(Debug, Default)]
pub struct LoraAffinityScorer;

impl Scorer for LoraAffinityScorer {
    fn score(&self, _: &mut CycleState, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter()
            .map(|e| {
                let m = &e.metrics;
                // llm-d-router's order: loaded, then room to load it, then already queued.
                if m.active_loras.contains(&req.model) {
                    1.0
                } else if m.active_loras.len() + m.waiting_loras.len() < m.max_loras {
                    0.8
                } else if m.waiting_loras.contains(&req.model) {
                    0.6
                } else {
                    0.0
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    fn ep(id: &str, waiting: u64, kv: f64) -> Endpoint {
        let mut e = Endpoint::new(id, id, Role::Both);
        e.metrics.waiting = waiting;
        e.metrics.kv_usage = kv;
        e
    }

    #[test]
    fn token_load_scales_to_the_threshold() {
        let mut eps = [ep("a", 0, 0.0), ep("b", 0, 0.0), ep("c", 0, 0.0)];
        eps[0].inflight.prefill_remaining = 1024;
        eps[1].inflight.prefill_remaining = 9000;
        let (mut st, req) = (CycleState::default(), LlmRequest::default());
        let s = TokenLoadScorer::from_params(&serde_json::json!({"queueThresholdTokens": 4096})).unwrap();
        assert_eq!(s.score(&mut st, &req, &eps.iter().collect::<Vec<_>>()), [0.75, 0.0, 1.0]);
        assert!(TokenLoadScorer::from_params(&serde_json::json!({"queueThresholdTokens": 0})).is_err());
    }

    #[test]
    fn prefill_cost_weighs_a_cache_hit_against_the_queue_in_front_of_it() {
        // a holds 900 of the 1 000 prompt tokens but has 1 500 queued; b is idle and
        // cold; c is cold with 200 queued.
        let mut eps = [ep("a", 0, 0.0), ep("b", 0, 0.0), ep("c", 0, 0.0)];
        eps[0].inflight.prefill_remaining = 1500;
        eps[2].inflight.prefill_remaining = 200;
        let req = LlmRequest { token_ids: Some(vec![1; 1000]), ..Default::default() };
        let mut st = CycleState::default();
        let matched = [("a".to_string(), 9)].into_iter().collect();
        st.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: vec![], prompt_tokens: 1000, tokens_per_block: 100, matched, ..Default::default() },
        );
        let refs: Vec<&Endpoint> = eps.iter().collect();
        // Costs 1 600, 1 000, 1 200 tokens: the idle cold endpoint beats the busy holder.
        assert_eq!(PrefillCostScorer.score(&mut st, &req, &refs), [1000.0 / 1600.0, 1.0, 1000.0 / 1200.0]);
        // With a shorter queue the holder wins: 100 + 600 < 1 000.
        eps[0].inflight.prefill_remaining = 600;
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let s = PrefillCostScorer.score(&mut st, &req, &refs);
        assert_eq!(s[0], 1.0);
        assert!(s[1] < 1.0 && s[2] < s[1]);
        // No prefix scorer ran: every prompt counts whole, so load alone decides.
        let s = PrefillCostScorer.score(&mut CycleState::default(), &req, &refs);
        assert_eq!(s, [1000.0 / 1600.0, 1.0, 1000.0 / 1200.0]);
    }

    #[test]
    fn attribute_scorer_reads_by_name() {
        use crate::endpoint::AttributeValue;
        let mut eps = [ep("a", 0, 0.0), ep("b", 0, 0.0), ep("c", 0, 0.0)];
        eps[0].attributes.insert("gpu.temp".into(), AttributeValue::Float(80.0));
        eps[1].attributes.insert("gpu.temp".into(), AttributeValue::Int(40));
        let (mut st, req) = (CycleState::default(), LlmRequest::default());
        let s = AttributeScorer::from_params(&serde_json::json!({"attribute": "gpu.temp"})).unwrap();
        assert_eq!(s.score(&mut st, &req, &eps.iter().collect::<Vec<_>>()), [0.0, 1.0, 0.0]);
        let h =
            AttributeScorer::from_params(&serde_json::json!({"attribute": "gpu.temp", "prefer": "higher"})).unwrap();
        assert_eq!(h.score(&mut st, &req, &eps.iter().collect::<Vec<_>>()), [1.0, 0.0, 0.0]);
        assert!(AttributeScorer::from_params(&serde_json::json!({})).is_err());
    }

    #[test]
    fn active_requests_score_like_llm_d() {
        let mut eps = [ep("a", 0, 0.0), ep("b", 0, 0.0), ep("c", 0, 0.0)];
        let (mut st, req) = (CycleState::default(), LlmRequest::default());
        let s = ActiveRequestScorer::from_params(&serde_json::json!({})).unwrap();
        assert_eq!(s.score(&mut st, &req, &eps.iter().collect::<Vec<_>>()), [1.0, 1.0, 1.0]);
        eps[0].inflight.requests = 4;
        eps[1].inflight.requests = 1;
        assert_eq!(s.score(&mut st, &req, &eps.iter().collect::<Vec<_>>()), [0.0, 0.75, 1.0]);
        let t = ActiveRequestScorer::from_params(&serde_json::json!({"requestTimeout": "30s"})).unwrap();
        assert_eq!(t.request_timeout(), std::time::Duration::from_secs(30));
        let e = ActiveRequestScorer::from_params(&serde_json::json!({"requestTimeout": "soon"})).unwrap_err();
        assert!(e.contains("requestTimeout"), "{e}");
    }

    #[test]
    fn queue_and_kv_scores() {
        let eps = [ep("a", 0, 0.2), ep("b", 5, 0.9), ep("c", 10, 1.5)];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let (mut st, req) = (CycleState::default(), LlmRequest::default());
        assert_eq!(QueueScorer.score(&mut st, &req, &refs), vec![1.0, 0.5, 0.0]);
        let kv = KvCacheUtilizationScorer.score(&mut st, &req, &refs);
        assert!((kv[0] - 0.8).abs() < 1e-12 && (kv[1] - 0.1).abs() < 1e-12 && kv[2] == 0.0);
        let same = [ep("a", 3, 0.0), ep("b", 3, 0.0)];
        assert_eq!(QueueScorer.score(&mut st, &req, &same.iter().collect::<Vec<_>>()), vec![1.0, 1.0]);
    }

    #[test]
    fn load_aware_thresholds() {
        let s = LoadAwareScorer::from_params(&serde_json::json!({"threshold": 10})).unwrap();
        let eps = [ep("a", 0, 0.0), ep("b", 5, 0.0), ep("c", 11, 0.0)];
        let got = s.score(&mut CycleState::default(), &LlmRequest::default(), &eps.iter().collect::<Vec<_>>());
        assert_eq!(got, vec![0.5, 0.25, 0.0]);
        assert!(
            LoadAwareScorer::from_params(&serde_json::json!({"threshold": "x"})).unwrap_err().contains("threshold")
        );
    }

    #[test]
    fn session_and_lora_affinity() {
        let mut a = ep("a", 0, 0.0);
        a.metrics.active_loras = vec!["sql".into()];
        a.metrics.max_loras = 1;
        let mut b = ep("b", 0, 0.0);
        b.metrics.max_loras = 2;
        let eps = [a, b];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut req = LlmRequest::new("r", "sql", "");
        req.headers.insert(SESSION_HEADER.into(), "b".into());
        let mut st = CycleState::default();
        assert_eq!(SessionAffinityScorer.score(&mut st, &req, &refs), vec![0.0, 1.0]);
        assert_eq!(LoraAffinityScorer.score(&mut st, &req, &refs), vec![1.0, 0.8]);
    }

    #[test]
    fn lora_affinity_orders_as_llm_d_router() {
        let mut eps = [ep("loaded", 0, 0.0), ep("room", 0, 0.0), ep("queued", 0, 0.0), ep("full", 0, 0.0)];
        eps[0].metrics.active_loras = vec!["sql".into()];
        eps[0].metrics.max_loras = 1;
        eps[1].metrics.active_loras = vec!["chat".into()];
        eps[1].metrics.max_loras = 2;
        eps[2].metrics.active_loras = vec!["chat".into()];
        eps[2].metrics.waiting_loras = vec!["sql".into()];
        eps[2].metrics.max_loras = 2;
        eps[3].metrics.active_loras = vec!["chat".into()];
        eps[3].metrics.max_loras = 1;
        let req = LlmRequest::new("r", "sql", "hi");
        let refs: Vec<&Endpoint> = eps.iter().collect();
        assert_eq!(LoraAffinityScorer.score(&mut CycleState::default(), &req, &refs), [1.0, 0.8, 0.6, 0.0]);
    }
}
