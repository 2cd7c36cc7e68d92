//! Profile handlers: one profile, or prefill/decode disaggregation.

use super::Params;
use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::plugin::{CycleState, ProfileHandler, ProfileResults, ProfileRoles};
use crate::request::LlmRequest;

/// `single-profile-handler`: runs the only profile.
#[derive(Debug, Default)]
pub struct SingleProfileHandler;

impl ProfileHandler for SingleProfileHandler {
    fn next_profiles(
        &self,
        _: &CycleState,
        _: &LlmRequest,
        profiles: &[String],
        results: &ProfileResults,
    ) -> Vec<String> {
        if results.is_empty() { profiles.iter().take(1).cloned().collect() } else { Vec::new() }
    }

    fn primary(&self, results: &ProfileResults) -> Option<String> {
        results.keys().next().cloned()
    }
}

/// `pd-profile-handler`: runs the `decode` profile, then the `prefill` profile when the
/// part of the prompt the chosen decode endpoint lacks is at least `threshold` tokens
/// (`prefix-based-pd-decider`'s `nonCachedTokens`). The decode pick is the destination;
/// the prefill pick travels in a header for the routing sidecar.
#[derive(Debug)]
pub struct PdProfileHandler {
    threshold: usize,
    prefill: String,
    decode: String,
}

impl PdProfileHandler {
    /// From `parameters`: `threshold` (or a decider's `nonCachedTokens`, merged in by the
    /// config loader); the profile names as `pd-profile-handler` spells them
    /// (`prefillProfile` / `decodeProfile`) or as `disagg-profile-handler` does
    /// (`profiles: {prefill, decode}`).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        let threshold = match q.u64("nonCachedTokens", u64::MAX)? {
            u64::MAX => q.u64("threshold", 0)?,
            n => n,
        } as usize;
        let nested = p.get("profiles").cloned().unwrap_or(serde_json::Value::Null);
        let n = Params(&nested);
        let name = |flat: &str, key: &str| -> Result<String, String> {
            Ok(q.string(flat)?.or(n.string(key)?).unwrap_or_else(|| key.to_string()))
        };
        Ok(PdProfileHandler {
            threshold,
            prefill: name("prefillProfile", "prefill")?,
            decode: name("decodeProfile", "decode")?,
        })
    }
}

impl ProfileHandler for PdProfileHandler {
    fn next_profiles(&self, state: &CycleState, _: &LlmRequest, _: &[String], results: &ProfileResults) -> Vec<String> {
        let Some(decode) = results.get(&self.decode) else { return vec![self.decode.clone()] };
        if results.contains_key(&self.prefill) {
            return Vec::new();
        }
        let uncached =
            state.get::<PrefixMatch>(PREFIX_MATCH_KEY).map_or(usize::MAX, |m| m.uncached_tokens(&decode.endpoint));
        if uncached >= self.threshold { vec![self.prefill.clone()] } else { Vec::new() }
    }

    fn primary(&self, _: &ProfileResults) -> Option<String> {
        Some(self.decode.clone())
    }

    fn roles(&self) -> ProfileRoles {
        ProfileRoles { prefill: Some(self.prefill.clone()), decode: Some(self.decode.clone()) }
    }

    fn required_profiles(&self) -> Vec<String> {
        vec![self.prefill.clone(), self.decode.clone()]
    }
}
