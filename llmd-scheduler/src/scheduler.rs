//! The pick: run the profiles the handler asks for, each as filters → weighted scorers
//! → picker, over the datastore's endpoints.

use std::sync::Mutex;

use crate::config::{Profile, SchedulerConfig};
use crate::endpoint::Endpoint;
use crate::error::{Result, SchedulerError};
use crate::plugin::{CycleState, ProfilePick, ProfileResults, ProfileRoles, ScoreBreakdown};
use crate::plugins::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::plugins::profiles::{FAILED_PROFILES_KEY, FailedProfiles};
use crate::plugins::topology::{PEER_ENDPOINT_KEY, PeerEndpoint};
use crate::request::LlmRequest;
use llmd_kvcache::rng::SplitMix64;

/// The outcome of scheduling one request.
#[derive(Debug, Clone, PartialEq)]
pub struct PickResult {
    /// The profile whose pick is the destination.
    pub primary: String,
    /// Every profile's pick (e.g. `decode` and, for long uncached prompts, `prefill`).
    pub picks: ProfileResults,
    /// The profile handler's P/D roles.
    pub roles: ProfileRoles,
    /// Request headers the profile handler asks front ends to set (after dropping any
    /// copy the client sent).
    pub headers: Vec<(String, String)>,
}

impl PickResult {
    /// The destination pick (the decode endpoint of a disaggregated request).
    pub fn destination(&self) -> Option<&ProfilePick> {
        self.picks.get(&self.primary)
    }

    /// The prefill endpoint, when the request is disaggregated: the pick of the profile
    /// the handler names for prefill, if it ran and is not the destination itself.
    pub fn prefill(&self) -> Option<&ProfilePick> {
        let name = self.roles.prefill.as_ref()?;
        if *name == self.primary {
            return None;
        }
        self.picks.get(name)
    }

    /// Every endpoint picked (destination first), each once.
    pub fn endpoints(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.destination().map(|d| d.endpoint.as_str()).into_iter().collect();
        for p in self.picks.values() {
            if !out.contains(&p.endpoint.as_str()) {
                out.push(&p.endpoint);
            }
        }
        out
    }
}

/// SplitMix64 behind a lock: the only randomness in a pick, seeded for reproducibility.
#[derive(Debug)]
struct Draws(Mutex<SplitMix64>);

impl Draws {
    fn next(&self) -> f64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).next_f64()
    }
}

/// The endpoint picker.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    draws: Draws,
}

impl Scheduler {
    /// A scheduler over a loaded configuration; `seed` drives random tie-breaks.
    pub fn new(config: SchedulerConfig, seed: u64) -> Self {
        Scheduler { config, draws: Draws(Mutex::new(SplitMix64::new(seed))) }
    }

    /// A uniform draw in [0, 1) from the scheduler's seeded source.
    #[cfg_attr(not(feature = "runtime"), allow(dead_code))]
    pub(crate) fn draw(&self) -> f64 {
        self.draws.next()
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Picks endpoints for `req` among `endpoints`.
    pub fn pick(&self, req: &LlmRequest, endpoints: &[Endpoint]) -> Result<PickResult> {
        self.pick_among(req, endpoints.iter().collect())
    }

    /// Picks endpoints for `req` among `candidates` (a datastore's ready endpoints, say).
    pub fn pick_among(&self, req: &LlmRequest, candidates: Vec<&Endpoint>) -> Result<PickResult> {
        let mut state = CycleState::default();
        let mut results = ProfileResults::new();
        let names: Vec<String> = self.config.profiles.iter().map(|p| p.name.clone()).collect();
        let roles = self.config.handler.roles();
        // Profiles that found no endpoint: the handler decides whether the request goes
        // on without them (an encode or prefill stage) or fails (its destination's).
        let mut failed: Vec<(String, SchedulerError)> = Vec::new();
        'stages: loop {
            let next = self.config.handler.next_profiles(&state, req, &names, &results);
            if next.is_empty() {
                break;
            }
            for name in next {
                if results.contains_key(&name) {
                    return Err(SchedulerError::Request(format!("profile handler asked for {name:?} twice")));
                }
                if failed.iter().any(|(f, _)| *f == name) {
                    // Asked again for a profile that found nothing: nothing more to run.
                    break 'stages;
                }
                let profile = self.config.profiles.iter().find(|p| p.name == name).ok_or_else(|| {
                    SchedulerError::Request(format!("profile handler asked for unknown profile {name:?}"))
                })?;
                // A profile running after the decode pick knows it as the request's peer
                // (topology affinity places the prefill near it); a decode running after
                // the prefill pick (stage order prefill-first) knows that one.
                let other = if roles.decode.as_deref() == Some(name.as_str()) { &roles.prefill } else { &roles.decode };
                let peer = other.as_ref().filter(|d| **d != name).and_then(|d| results.get(d));
                if let Some(e) = peer.and_then(|p| candidates.iter().find(|e| e.id == p.endpoint)) {
                    state.put(PEER_ENDPOINT_KEY, PeerEndpoint { id: e.id.clone(), labels: e.labels.clone() });
                }
                match self.run_profile(profile, &mut state, req, candidates.clone()) {
                    Ok(pick) => {
                        results.insert(name, pick);
                    }
                    Err(e @ SchedulerError::NoEndpoint(_)) => {
                        tracing::debug!(request = %req.id, profile = %name, error = %e, "profile found no endpoint");
                        failed.push((name, e));
                        let names = failed.iter().map(|(n, _)| n.clone()).collect();
                        state.put(FAILED_PROFILES_KEY, FailedProfiles(names));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let primary = match self.config.handler.primary(&results) {
            Some(p) if results.contains_key(&p) => p,
            // The destination's own failure says best why there is none.
            want => {
                let i = failed.iter().position(|(n, _)| Some(n) == want.as_ref()).or(failed.len().checked_sub(1));
                return Err(match i {
                    Some(i) => failed.swap_remove(i).1,
                    None => SchedulerError::NoEndpoint("no profile produced a destination".into()),
                });
            }
        };
        let headers = self.config.handler.finish(&primary, &mut results);
        Ok(PickResult { primary, picks: results, roles, headers })
    }

    fn run_profile(
        &self,
        profile: &Profile,
        state: &mut CycleState,
        req: &LlmRequest,
        mut cands: Vec<&Endpoint>,
    ) -> Result<ProfilePick> {
        for (name, f) in &profile.filters {
            cands = f.filter(state, req, cands);
            if cands.is_empty() {
                return Err(SchedulerError::NoEndpoint(format!(
                    "profile {:?}: filter {name:?} left no endpoint",
                    profile.name
                )));
            }
        }
        if cands.is_empty() {
            return Err(SchedulerError::NoEndpoint(format!("profile {:?}: no endpoints registered", profile.name)));
        }
        // raw[s][e]: scorer s's score for candidate e (clamped to [0, 1]), summed into
        // the totals as each scorer returns.
        let mut totals: Vec<(&Endpoint, f64)> = cands.iter().map(|e| (*e, 0.0)).collect();
        let raw: Vec<Vec<f64>> = profile
            .scorers
            .iter()
            .map(|(_, s, w)| {
                let mut v = s.score(state, req, &cands);
                v.resize(cands.len(), 0.0);
                for (x, t) in v.iter_mut().zip(totals.iter_mut()) {
                    *x = if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 };
                    t.1 += w * *x;
                }
                v
            })
            .collect();
        let chosen =
            profile.picker.1.pick(&totals, &mut || self.draws.next()).ok_or_else(|| {
                SchedulerError::NoEndpoint(format!("profile {:?}: picker chose nothing", profile.name))
            })?;
        let idx = cands
            .iter()
            .position(|c| std::ptr::eq(*c, chosen))
            .or_else(|| cands.iter().position(|c| c.id == chosen.id))
            .unwrap_or(0);
        let breakdown: Vec<ScoreBreakdown> = profile
            .scorers
            .iter()
            .zip(&raw)
            .map(|((name, _, w), r)| ScoreBreakdown { scorer: name.clone(), raw: r[idx], weight: *w })
            .collect();
        if tracing::enabled!(tracing::Level::DEBUG) {
            let detail: Vec<String> = cands
                .iter()
                .enumerate()
                .map(|(e, c)| {
                    let parts: Vec<String> =
                        profile.scorers.iter().zip(&raw).map(|((n, _, w), r)| format!("{n}={:.3}x{w}", r[e])).collect();
                    format!("{}: {:.3} [{}]", c.id, totals[e].1, parts.join(" "))
                })
                .collect();
            tracing::debug!(
                request = %req.id,
                profile = %profile.name,
                picked = %chosen.id,
                picker = %profile.picker.0,
                scores = %detail.join("; "),
                "pick"
            );
        }
        for o in &profile.observers {
            o.on_pick(state, req, &profile.name, chosen);
        }
        let matched = state.get::<PrefixMatch>(PREFIX_MATCH_KEY);
        Ok(ProfilePick {
            endpoint: chosen.id.clone(),
            address: chosen.address.clone(),
            score: totals[idx].1,
            breakdown,
            candidates: cands.len(),
            uncached_tokens: matched.map(|m| m.uncached_tokens(&chosen.id)),
            held_prefix: matched.and_then(PrefixMatch::longest_held),
        })
    }
}
