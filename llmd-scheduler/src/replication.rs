//! Hot-prefix replication: copy a popular prefix onto another endpoint before the ones
//! holding it become the fleet's bottleneck.
//!
//! Prefix-aware routing sends each prefix to the endpoints that hold it, which is right
//! for each request (a hit costs a fraction of a miss) but wrong for a prefix that draws
//! a large share of the traffic: its holders queue while endpoints without it idle, and
//! no single request is worth the miss that would make another holder. Round robin,
//! which pays that miss on every endpoint once, then spreads such a prefix evenly.
//!
//! The [`Replicator`] watches each request's longest held prefix and its arrival rate (an
//! exponentially decayed count, on the picker's clock), and plans a **warm-up** — the
//! front end sends the request once more, generating one token and answering nobody —
//! to the least loaded endpoint without the prefix, in two cases:
//! - *more than its share*: the prefix's share of all arrivals, divided among its
//!   holders, exceeds `spread` times an even share of the serving endpoints; the target
//!   needs free KV blocks for the prefix, so nothing cached is evicted for it (when the
//!   picker cannot count blocks, the share alone decides);
//! - *spare room*: the prefix has at least `spare_min_share` of an even share, and the
//!   target, no busier than the least busy holder, would stay at most `spare_fill` full
//!   after the copy (known only when the picker counts blocks). Caches that a small
//!   working set leaves mostly empty are filled with its popular prefixes, which is what
//!   round robin ends up doing.
//!
//! No user request pays the miss; the warm-up is counted as in-flight prefill on its endpoint,
//! so picks steer around it while it runs; once the endpoint's KV events (or the
//! approximate index) show the prefix there, the prefix-cost scorer spreads the
//! prefix's requests over one more holder. At most `max_in_flight` warm-ups run at once,
//! one per prefix, and a prefix seen fewer than `min_arrivals` times (decayed) is never
//! copied. Cold prefixes, conversations and long-tail prefixes, each a small share, are
//! never copied.
//!
//! Runtime-free: the picker calls [`Replicator::observe`] after a pick and executes the
//! plan it returns.

use std::collections::HashMap;
use std::time::Duration;

use crate::endpoint::Endpoint;

/// The longest prefix of a prompt some endpoint holds, from a prefix scorer's match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldPrefix {
    /// The hash of its last block (chained, so it names the whole prefix).
    pub key: u64,
    /// Its length in tokens.
    pub tokens: usize,
    /// Its length in the scorer's blocks.
    pub blocks: usize,
    /// Endpoints holding it (sorted).
    pub holders: Vec<String>,
}

/// When to replicate.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationConfig {
    /// Shorter prefixes are cheap to recompute: never copied.
    pub min_prefix_tokens: usize,
    /// Copies into spare room only while the target's cache stays at most this full.
    pub spare_fill: f64,
    /// Copies into spare room only for prefixes with at least this fraction of an even
    /// share of the traffic (`share × serving endpoints`).
    pub spare_min_share: f64,
    /// Half-life of the decayed arrival counts.
    pub half_life: Duration,
    /// Replicate while `share / holders > spread / serving endpoints`: the default, a
    /// quarter above an even share, leaves prefixes that merely have their share alone.
    pub spread: f64,
    /// A prefix seen fewer times than this (decayed) is not judged yet.
    pub min_arrivals: f64,
    /// Warm-ups running at once, fleet-wide.
    pub max_in_flight: usize,
    /// After a warm-up ends, the endpoint counts as a holder this long while its KV
    /// events catch up; after a failed one, the prefix is not tried again for this long.
    pub settle: Duration,
    /// Prefixes whose heat is tracked; the coldest are forgotten beyond this.
    pub max_tracked: usize,
    /// How long a warm-up request may take.
    pub timeout: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            min_prefix_tokens: 512,
            spare_fill: 0.5,
            spare_min_share: 1.0,
            half_life: Duration::from_secs(5),
            spread: 1.25,
            min_arrivals: 8.0,
            max_in_flight: 2,
            settle: Duration::from_secs(2),
            max_tracked: 4096,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A warm-up to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPlan {
    /// The prefix.
    pub key: u64,
    /// The endpoint to copy it to.
    pub endpoint: String,
    /// The prefix's length in tokens.
    pub tokens: usize,
}

/// What the replicator needs to know about an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Blocks in its KV cache (`vllm:cache_config_info`'s `num_gpu_blocks`), if known.
    pub total_blocks: Option<u64>,
    /// Blocks the picker's index believes it holds, if it keeps one.
    pub held_blocks: Option<u64>,
}

impl Capacity {
    /// Free blocks, when both figures are known.
    fn free(&self) -> Option<u64> {
        Some(self.total_blocks?.saturating_sub(self.held_blocks?))
    }
}

/// An exponentially decayed count.
#[derive(Debug, Clone, Copy, Default)]
struct Decayed {
    value: f64,
    at: Duration,
}

impl Decayed {
    fn at(&self, now: Duration, half_life: Duration) -> f64 {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.value * 0.5f64.powf(dt / half_life.as_secs_f64().max(1e-9))
    }

    fn add(&mut self, now: Duration, half_life: Duration) {
        self.value = self.at(now, half_life) + 1.0;
        self.at = self.at.max(now);
    }
}

#[derive(Debug, Default)]
struct PrefixState {
    heat: Decayed,
    // The warm-up in flight, if any.
    warming: Option<String>,
    // Endpoints warmed recently, counted as holders until the deadline.
    settling: Vec<(String, Duration)>,
    // No new warm-up before this (after a failure).
    retry_at: Duration,
}

fn least_loaded<'a>(eps: impl Iterator<Item = &'a &'a Endpoint>) -> Option<&'a Endpoint> {
    eps.min_by_key(|e| (e.inflight.requests, e.inflight.prefill_remaining, e.id.as_str())).copied()
}

/// Decides which prefixes to copy where. See the module docs.
#[derive(Debug)]
pub struct Replicator {
    cfg: ReplicationConfig,
    total: Decayed,
    prefixes: HashMap<u64, PrefixState>,
    in_flight: usize,
}

impl Replicator {
    /// A replicator with `cfg`.
    pub fn new(cfg: ReplicationConfig) -> Self {
        Replicator { cfg, total: Decayed::default(), prefixes: HashMap::new(), in_flight: 0 }
    }

    /// The settings.
    pub fn config(&self) -> &ReplicationConfig {
        &self.cfg
    }

    /// Warm-ups running.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Records a request arriving at `now` whose longest held prefix is `prefix`, among
    /// the `serving` endpoints (with `capacity` of each, by id), and returns a warm-up to
    /// send, if this prefix needs another holder: [`arrive`](Self::arrive), then
    /// [`plan`](Self::plan).
    pub fn observe(
        &mut self,
        now: Duration,
        prefix: Option<&HeldPrefix>,
        serving: &[&Endpoint],
        capacity: impl Fn(&Endpoint) -> Capacity,
    ) -> Option<WarmPlan> {
        if !self.arrive(now, prefix) {
            return None;
        }
        self.plan(now, prefix?, serving, capacity)
    }

    /// Counts a request arriving at `now` with longest held prefix `prefix`; whether that
    /// prefix may get a warm-up now (long and hot enough, none of its own in flight, not
    /// backing off, room under `max_in_flight`). Only then is [`plan`](Self::plan) worth
    /// its look at the endpoints.
    pub fn arrive(&mut self, now: Duration, prefix: Option<&HeldPrefix>) -> bool {
        let hl = self.cfg.half_life;
        self.total.add(now, hl);
        let Some(prefix) = prefix.filter(|p| p.tokens >= self.cfg.min_prefix_tokens) else { return false };
        self.forget_cold(now);
        let st = self.prefixes.entry(prefix.key).or_default();
        st.heat.add(now, hl);
        st.settling.retain(|(_, until)| *until > now);
        st.heat.at(now, hl) >= self.cfg.min_arrivals
            && st.warming.is_none()
            && now >= st.retry_at
            && self.in_flight < self.cfg.max_in_flight
    }

    /// The warm-up for `prefix` (just counted by [`arrive`](Self::arrive)) among the
    /// `serving` endpoints, if it needs another holder and one has room.
    pub fn plan(
        &mut self,
        now: Duration,
        prefix: &HeldPrefix,
        serving: &[&Endpoint],
        capacity: impl Fn(&Endpoint) -> Capacity,
    ) -> Option<WarmPlan> {
        let hl = self.cfg.half_life;
        let total = self.total.at(now, hl);
        let st = self.prefixes.get_mut(&prefix.key)?;
        let heat = st.heat.at(now, hl);
        if serving.is_empty() || st.warming.is_some() {
            return None;
        }
        let holds = |id: &str| prefix.holders.iter().any(|h| h == id) || st.settling.iter().any(|(e, _)| e == id);
        let holders = serving.iter().filter(|e| holds(&e.id)).count();
        if holders == 0 || holders == serving.len() {
            return None;
        }
        let share = heat / total.max(heat);
        let n = serving.len() as f64;
        let need = prefix.blocks as u64;
        let target = if share / holders as f64 > self.cfg.spread / n {
            // More than its share: any endpoint with free blocks for it.
            least_loaded(serving.iter().filter(|e| !holds(&e.id) && capacity(e).free().is_none_or(|f| f >= need)))
        } else if share * n >= self.cfg.spare_min_share {
            // Its share or more, and room to spare somewhere no busier than its holders.
            let calmest = serving.iter().filter(|e| holds(&e.id)).map(|e| e.inflight.requests).min().unwrap_or(0);
            let spare = |e: &Endpoint| match capacity(e) {
                Capacity { total_blocks: Some(total), held_blocks: Some(held) } => {
                    (held + need) as f64 <= self.cfg.spare_fill * total as f64
                }
                _ => false,
            };
            least_loaded(serving.iter().filter(|e| !holds(&e.id) && e.inflight.requests <= calmest && spare(e)))
        } else {
            None
        }?;
        st.warming = Some(target.id.clone());
        self.in_flight += 1;
        Some(WarmPlan { key: prefix.key, endpoint: target.id.clone(), tokens: prefix.tokens })
    }

    /// A warm-up planned by [`observe`](Self::observe) ended at `now`, successfully or not.
    pub fn finished(&mut self, now: Duration, plan: &WarmPlan, ok: bool) {
        let Some(st) = self.prefixes.get_mut(&plan.key) else { return };
        if st.warming.as_deref() != Some(plan.endpoint.as_str()) {
            return;
        }
        st.warming = None;
        self.in_flight = self.in_flight.saturating_sub(1);
        if ok {
            st.settling.push((plan.endpoint.clone(), now + self.cfg.settle));
        } else {
            st.retry_at = now + self.cfg.settle;
        }
    }

    // Bounds memory: past `max_tracked` prefixes, forget the colder half (never one
    // whose warm-up is in flight).
    fn forget_cold(&mut self, now: Duration) {
        if self.prefixes.len() < self.cfg.max_tracked.max(1) {
            return;
        }
        let hl = self.cfg.half_life;
        let mut heats: Vec<f64> = self.prefixes.values().map(|s| s.heat.at(now, hl)).collect();
        heats.sort_by(f64::total_cmp);
        let median = heats[heats.len() / 2];
        self.prefixes.retain(|_, s| s.warming.is_some() || s.heat.at(now, hl) > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n).map(|i| Endpoint::new(format!("e{i}"), format!("h:{i}"), Role::Both)).collect()
    }

    fn prefix(key: u64, holders: &[&str]) -> HeldPrefix {
        HeldPrefix { key, tokens: 2400, blocks: 150, holders: holders.iter().map(|h| h.to_string()).collect() }
    }

    const ROOMY: Capacity = Capacity { total_blocks: Some(1024), held_blocks: Some(0) };

    /// Feeds `n` arrivals 10 ms apart, alternating over `prefixes`; returns the plans.
    fn feed(
        r: &mut Replicator,
        start: Duration,
        n: usize,
        prefixes: &[HeldPrefix],
        eps: &[Endpoint],
        cap: Capacity,
    ) -> Vec<WarmPlan> {
        let refs: Vec<&Endpoint> = eps.iter().collect();
        (0..n)
            .filter_map(|i| {
                let now = start + Duration::from_millis(10 * i as u64);
                r.observe(now, Some(&prefixes[i % prefixes.len()]), &refs, |_| cap)
            })
            .collect()
    }

    #[test]
    fn a_prefix_with_half_the_traffic_on_one_of_eight_endpoints_is_copied_to_the_idlest() {
        let mut eps = eps(8);
        eps[1].inflight.requests = 3;
        eps[2].inflight.requests = 1;
        let hot = [prefix(1, &["e1"]), prefix(2, &["e2"])];
        let mut r = Replicator::new(ReplicationConfig::default());
        let plans = feed(&mut r, Duration::ZERO, 40, &hot, &eps, ROOMY);
        // One warm-up per prefix (the next waits for the first to end), each to an idle
        // endpoint without it.
        assert_eq!(plans.len(), 2, "{plans:?}");
        assert_eq!(r.in_flight(), 2);
        assert!(plans.iter().all(|p| p.endpoint != "e1" && p.endpoint != "e2" && p.tokens == 2400));
        // Finished: the new holder counts while its events catch up, so the next
        // warm-up goes elsewhere.
        let now = Duration::from_millis(400);
        for p in &plans {
            r.finished(now, p, true);
        }
        let first = plans[0].clone();
        let again = feed(&mut r, now, 2, &hot, &eps, ROOMY);
        assert!(again.iter().all(|p| p.endpoint != first.endpoint), "{again:?} vs {first:?}");
    }

    // Room for the prefix (150 blocks), but not to spare: 600 + 150 > half of 1 024.
    const TIGHT: Capacity = Capacity { total_blocks: Some(1024), held_blocks: Some(600) };

    #[test]
    fn a_prefix_with_its_even_share_is_left_alone_when_room_is_tight() {
        // 8 prefixes on 8 endpoints, each held once: share 1/8 per holder is even.
        let eps = eps(8);
        let prefixes: Vec<HeldPrefix> = (0..8).map(|i| prefix(i as u64, &[eps[i].id.as_str()])).collect();
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 400, &prefixes, &eps, TIGHT).is_empty());
        // Negative control: the same traffic over 2 prefixes is not even, and is copied.
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(!feed(&mut r, Duration::ZERO, 400, &prefixes[..2], &eps, TIGHT).is_empty());
    }

    #[test]
    fn spare_room_takes_prefixes_with_their_share_onto_endpoints_no_busier_than_holders() {
        let mut eps = eps(8);
        let prefixes: Vec<HeldPrefix> = (0..8).map(|i| prefix(i as u64, &[eps[i].id.as_str()])).collect();
        // Caches mostly empty: even shares are copied.
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(!feed(&mut r, Duration::ZERO, 400, &prefixes, &eps, ROOMY).is_empty());
        // Not without a block count (the share alone is not enough to fill caches).
        let unknown = Capacity { total_blocks: Some(1024), held_blocks: None };
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 400, &prefixes, &eps, unknown).is_empty());
        // Not onto an endpoint busier than the prefix's calmest holder: e0 holds all 8
        // prefixes and idles, the rest are busy.
        for e in &mut eps[1..] {
            e.inflight.requests = 2;
        }
        let on_e0: Vec<HeldPrefix> = (0..8).map(|i| prefix(i as u64, &["e0"])).collect();
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 400, &on_e0, &eps, ROOMY).is_empty());
        eps[1].inflight.requests = 0;
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(!feed(&mut r, Duration::ZERO, 400, &on_e0, &eps, ROOMY).is_empty(), "the control");
        // A prefix with less than its share (1 of 16 prefixes) is not copied.
        let eps = self::eps(8);
        let many: Vec<HeldPrefix> = (0..16).map(|i| prefix(i as u64, &[eps[i % 8].id.as_str()])).collect();
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 800, &many, &eps, ROOMY).is_empty());
    }

    #[test]
    fn nothing_is_copied_without_room_nor_for_short_or_rare_prefixes() {
        let eps = eps(4);
        let hot = [prefix(1, &["e0"])];
        // No endpoint has 150 free blocks.
        let full = Capacity { total_blocks: Some(1024), held_blocks: Some(1000) };
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 50, &hot, &eps, full).is_empty());
        // Unknown capacity does not block (the approximate index keeps no count).
        let unknown = Capacity { total_blocks: None, held_blocks: None };
        assert_eq!(feed(&mut r, Duration::from_secs(1), 1, &hot, &eps, unknown).len(), 1);
        // Short prefixes are never copied.
        let mut short = prefix(2, &["e0"]);
        short.tokens = 256;
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 50, &[short], &eps, ROOMY).is_empty());
        // Seven arrivals are not enough to judge (eight, decayed a little, neither); nine are.
        let mut r = Replicator::new(ReplicationConfig::default());
        assert!(feed(&mut r, Duration::ZERO, 8, &hot, &eps, ROOMY).is_empty());
        assert_eq!(feed(&mut r, Duration::from_millis(80), 1, &hot, &eps, ROOMY).len(), 1);
    }

    #[test]
    fn heat_decays_and_failures_back_off() {
        let eps = eps(4);
        let hot = [prefix(1, &["e0"])];
        let mut r = Replicator::new(ReplicationConfig::default());
        let plans = feed(&mut r, Duration::ZERO, 20, &hot, &eps, ROOMY);
        assert_eq!(plans.len(), 1);
        r.finished(Duration::from_millis(300), &plans[0], false);
        assert_eq!(r.in_flight(), 0);
        // Within the back-off nothing; after it, a new try.
        assert!(feed(&mut r, Duration::from_millis(400), 5, &hot, &eps, ROOMY).is_empty());
        assert_eq!(feed(&mut r, Duration::from_millis(2400), 1, &hot, &eps, ROOMY).len(), 1);
        // A finish for a plan that is not in flight changes nothing.
        r.finished(Duration::from_secs(3), &WarmPlan { key: 9, endpoint: "e3".into(), tokens: 1 }, true);
        assert_eq!(r.in_flight(), 1);
        // A prefix last seen a minute ago has decayed below the judging threshold.
        let mut r = Replicator::new(ReplicationConfig::default());
        let cold = [prefix(5, &["e0"])];
        let _ = feed(&mut r, Duration::ZERO, 5, &cold, &eps, ROOMY);
        assert!(feed(&mut r, Duration::from_secs(60), 5, &cold, &eps, ROOMY).is_empty());
    }

    #[test]
    fn tracked_prefixes_stay_bounded() {
        let eps = eps(2);
        let cfg = ReplicationConfig { max_tracked: 16, ..Default::default() };
        let mut r = Replicator::new(cfg);
        let many: Vec<HeldPrefix> = (0..200).map(|i| prefix(i, &["e0"])).collect();
        let _ = feed(&mut r, Duration::ZERO, 200, &many, &eps, ROOMY);
        assert!(r.prefixes.len() <= 16, "{}", r.prefixes.len());
    }
}
