//! Profile handlers: one profile, or prefill/decode disaggregation.

use std::sync::Arc;

use super::Params;
use super::decisions::{Decision, DecisionCounter, DecisionMetrics};
use super::latency::PrefixSource;
use super::prefix::{PREFIX_MATCH_KEY, PrefixMatch};
use crate::endpoint::{Endpoint, Role};
use crate::plugin::{CycleState, Decider, ProfileHandler, ProfilePick, ProfileResults, ProfileRoles};
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

/// `header-profile-handler`: runs the one profile a request header names (`headerName`,
/// default `EPP-Profile`, matched without case), or `defaultProfile` (`decode`) when the
/// header is absent; with a single profile configured, always that one. A name that is
/// not a profile leaves the request without a destination.
#[derive(Debug)]
pub struct HeaderProfileHandler {
    header: String,
    default_profile: String,
}

impl HeaderProfileHandler {
    /// From `parameters`: `headerName`, `defaultProfile`.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["headerName", "defaultProfile"])?;
        let header = q.string("headerName")?.map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty());
        let default_profile = q.string("defaultProfile")?.map(|d| d.trim().to_string()).filter(|d| !d.is_empty());
        Ok(HeaderProfileHandler {
            header: header.unwrap_or_else(|| "epp-profile".into()),
            default_profile: default_profile.unwrap_or_else(|| "decode".into()),
        })
    }
}

impl ProfileHandler for HeaderProfileHandler {
    fn next_profiles(
        &self,
        _: &CycleState,
        req: &LlmRequest,
        profiles: &[String],
        results: &ProfileResults,
    ) -> Vec<String> {
        if !results.is_empty() {
            return Vec::new();
        }
        if let [only] = profiles {
            return vec![only.clone()];
        }
        let named = req.headers.get(&self.header).map(|v| v.trim()).filter(|v| !v.is_empty());
        let want = named.unwrap_or(&self.default_profile);
        if profiles.iter().any(|p| p == want) {
            vec![want.to_string()]
        } else {
            tracing::info!(header = %self.header, profile = %want, ?profiles, "no scheduling profile selected for the request");
            Vec::new()
        }
    }

    fn primary(&self, results: &ProfileResults) -> Option<String> {
        results.keys().next().cloned()
    }
}

/// The header naming the data-parallel rank a request was picked for (llm-d's).
pub const DATA_PARALLEL_HEADER: &str = "x-data-parallel-host-port";

/// `data-parallel-profile-handler`: runs the only profile over endpoints that are the
/// data-parallel ranks of vLLM pods (one `host:port` each), then sends the request to
/// the pod's `primaryPort` (default 8000) with the chosen rank's `host:port` in
/// `x-data-parallel-host-port`, as llm-d-router does.
#[derive(Debug)]
pub struct DataParallelProfileHandler {
    primary_port: u16,
}

impl DataParallelProfileHandler {
    /// From `parameters`: `primaryPort` (1–65535).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["primaryPort"])?;
        let port = q.u64("primaryPort", 8000)?;
        let primary_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("parameter primaryPort: {port} is not a port (1-65535)"))?;
        Ok(DataParallelProfileHandler { primary_port })
    }
}

impl ProfileHandler for DataParallelProfileHandler {
    fn next_profiles(
        &self,
        s: &CycleState,
        r: &LlmRequest,
        profiles: &[String],
        results: &ProfileResults,
    ) -> Vec<String> {
        SingleProfileHandler.next_profiles(s, r, profiles, results)
    }

    fn primary(&self, results: &ProfileResults) -> Option<String> {
        SingleProfileHandler.primary(results)
    }

    fn finish(&self, primary: &str, results: &mut ProfileResults) -> Vec<(String, String)> {
        let rank = results.get(primary).map(|p| p.address.clone());
        for pick in results.values_mut() {
            pick.address = with_port(&pick.address, self.primary_port);
        }
        rank.map(|r| vec![(DATA_PARALLEL_HEADER.to_string(), r)]).unwrap_or_default()
    }
}

/// `address` (`host:port`, `[v6]:port`, or a bare host) with its port set to `port`.
fn with_port(address: &str, port: u16) -> String {
    let host = match address.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => address,
    };
    format!("{host}:{port}")
}

/// `pd-profile-handler` / `disagg-profile-handler`: runs the `decode` profile, then the
/// `prefill` profile when the prefill decider says so. The decode pick is the
/// destination; the prefill pick travels in a header for the routing sidecar. Without a
/// decider (`disagg-profile-handler` with no `deciders.prefill`) every request stays
/// on its decode endpoint, as in llm-d-router. A stage runs only when its profile
/// exists: both handlers work with a decode profile alone, as the router's do.
///
/// Each decision is counted ([`DecisionMetrics`], under the router's
/// `llm_d_epp_disagg_decision_total` or, for `pd-profile-handler`,
/// `llm_d_epp_pd_decision_total`). `pd-profile-handler`'s `primaryPort` (1–65535;
/// 0 or absent: off) sends the request to that port of the decode pod and names the
/// decode pick's own `host:port` in `x-data-parallel-host-port`, as the router's does.
pub struct PdProfileHandler {
    prefill: String,
    decode: String,
    encode: String,
    decider: Option<Arc<dyn Decider>>,
    encode_decider: Option<Arc<dyn Decider>>,
    // `pd-profile-handler`: counts into `pd_decision_total` when its decider is asked,
    // and takes `primaryPort`.
    legacy: bool,
    primary_port: Option<u16>,
    // `stageOrder: prefill-first`: prefill, encode, then decode (the router's
    // alternative order; no prefill decider then).
    prefill_first: bool,
    metrics: Arc<DecisionMetrics>,
    // The prefill decider's private prefix index, told the decode and prefill picks once
    // the stages are done (the router's producer records them in its PreRequest).
    learner: Option<Arc<PrefixSource>>,
}

impl std::fmt::Debug for PdProfileHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdProfileHandler")
            .field("prefill", &self.prefill)
            .field("decode", &self.decode)
            .field("encode", &self.encode)
            .field("decider", &self.decider.is_some())
            .field("encode_decider", &self.encode_decider.is_some())
            .field("legacy", &self.legacy)
            .field("primary_port", &self.primary_port)
            .finish()
    }
}

/// The decider a P/D handler's parameters name, if any: `pd-profile-handler`'s
/// `deciderPluginName` (default `prefix-based-pd-decider`), `disagg-profile-handler`'s
/// `deciders.prefill` or its older flat `prefillDeciderPluginName` / `deciderPluginName`.
pub fn decider_ref(type_name: &str, p: &serde_json::Value) -> Result<Option<String>, String> {
    let q = Params(p);
    let nested = q.value("deciders").cloned().unwrap_or(serde_json::Value::Null);
    // An empty name is no name, as llm-d reads it (a disagg stage off, pd's default).
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let named = nonempty(Params(&nested).string("prefill")?)
        .or(nonempty(q.string("prefillDeciderPluginName")?))
        .or(nonempty(q.string("deciderPluginName")?));
    Ok(match type_name {
        "pd-profile-handler" => {
            // The router's default applies only when the key is absent: named empty, it
            // refuses the handler.
            if q.string("deciderPluginName")?.is_some_and(|s| s.is_empty()) {
                return Err("parameter deciderPluginName: decider plugin name is not defined (it is empty)".into());
            }
            Some(named.unwrap_or_else(|| "prefix-based-pd-decider".into()))
        }
        _ => named,
    })
}

/// `pd-profile-handler`'s `primaryPort`: `None` when absent or 0 (off), else a port;
/// anything else is refused as the router refuses it (a number outside 1–65535, a
/// fraction, a string).
pub(crate) fn pd_primary_port(p: &serde_json::Value) -> Result<Option<u16>, String> {
    let q = Params(p);
    let Some(v) = q.value("primaryPort") else { return Ok(None) };
    let n = v.as_i64().ok_or_else(|| format!("parameter primaryPort: expected an integer, got {v}"))?;
    if n == 0 {
        return Ok(None);
    }
    u16::try_from(n)
        .ok()
        .filter(|&port| port > 0)
        .map(Some)
        .ok_or_else(|| format!("parameter primaryPort: invalid primaryPort: must be between 1 and 65535, got {n}"))
}

/// `pd-profile-handler`'s parameters in llm-d-router (`prefixPluginType`,
/// `prefixPluginName` and `prefixMatchInfoProducerName` are accepted and not built: the
/// prefix-based decider reads `approx-prefix-cache-producer`, as the router's does).
const PD_PROFILE_HANDLER_PARAMS: &[&str] = &[
    "decodeProfile",
    "prefillProfile",
    "prefixPluginType",
    "prefixPluginName",
    "primaryPort",
    "deciderPluginName",
    "prefixMatchInfoProducerName",
];

/// `disagg-profile-handler`'s nested schema, and `stageOrder`, which both schemas take.
const DISAGG_NESTED_PARAMS: &[&str] = &["profiles", "deciders"];

/// `disagg-profile-handler`'s deprecated flat schema (and `stageOrder`).
const DISAGG_FLAT_PARAMS: &[&str] = &[
    "decodeProfile",
    "prefillProfile",
    "encodeProfile",
    "prefillDeciderPluginName",
    "encodeDeciderPluginName",
    "deciderPluginName",
];

/// Refuses parameters the P/D handler `type_name` (`pd-profile-handler` or
/// `disagg-profile-handler`) does not take, as llm-d-router's strict decoding does:
/// `disagg-profile-handler` takes its nested schema (`profiles: {decode, prefill,
/// encode}`, `deciders: {prefill, encode}`) or the deprecated flat one (`decodeProfile`,
/// `prefillDeciderPluginName`, ...), not a mix of the two, and `stageOrder` with either.
pub(crate) fn check_pd_params(type_name: &str, p: &serde_json::Value) -> Result<(), String> {
    if type_name != "disagg-profile-handler" {
        Params(p).check(PD_PROFILE_HANDLER_PARAMS)?;
        // Accepted for llm-d's configs, but the decider reads its own producer: say so
        // rather than seem to honour them.
        for k in ["prefixPluginType", "prefixPluginName", "prefixMatchInfoProducerName"] {
            if let Some(v) = p.get(k).filter(|v| !v.is_null()) {
                tracing::warn!(
                    parameter = k,
                    value = %v,
                    "pd-profile-handler: parameter accepted but not used; the prefix decider reads approx-prefix-cache-producer"
                );
            }
        }
        pd_primary_port(p)?;
        return decider_ref(type_name, p).map(|_| ());
    }
    let all: Vec<&str> =
        std::iter::once("stageOrder").chain(DISAGG_NESTED_PARAMS.iter().chain(DISAGG_FLAT_PARAMS).copied()).collect();
    let fields = super::known_fields(p, "", &all)?;
    if let Some(v) = fields.get("profiles") {
        Params(v).check_at("profiles", &["decode", "prefill", "encode"])?;
    }
    if let Some(v) = fields.get("deciders") {
        Params(v).check_at("deciders", &["prefill", "encode"])?;
    }
    let nested = fields.keys().find(|k| DISAGG_NESTED_PARAMS.contains(&k.as_str()));
    let flat = fields.keys().find(|k| DISAGG_FLAT_PARAMS.contains(&k.as_str()));
    if let (Some(n), Some(f)) = (nested, flat) {
        return Err(format!(
            "parameters {n:?} and {f:?}: use either the nested profiles/deciders or the deprecated flat keys, not both"
        ));
    }
    Ok(())
}

/// The encode decider a `disagg-profile-handler` names (`deciders.encode`, or the
/// flat `encodeDeciderPluginName`); none turns the encode stage off.
pub fn encode_decider_ref(p: &serde_json::Value) -> Result<Option<String>, String> {
    let q = Params(p);
    let nested = q.value("deciders").cloned().unwrap_or(serde_json::Value::Null);
    Ok(Params(&nested).string("encode")?.or(q.string("encodeDeciderPluginName")?))
}

/// The producer whose prefix match the prefix-based decider reads (the router's
/// decider reads `PrefixCacheMatchInfo` of the default producer only).
const DECIDER_PREFIX_PRODUCER: &str = "approx-prefix-cache-producer";

/// Gives each P/D handler of a file the deciders it names ([`decider_ref`],
/// [`encode_decider_ref`]), which must be configured decider plugins, its name and type
/// (for its decision counts) and, for `pd-profile-handler`, its `primaryPort`. A
/// `prefix-based-pd-decider` gets the prefix match of `approx-prefix-cache-producer`:
/// the `prefix-cache-scorer` reading it, the configured producer, or (none configured)
/// a default one created here, as the router auto-creates it. A private index learns
/// the handler's decode and prefill picks from the handler, once its stages are done.
/// Run after the prefix scorers are bound to their producers. `named` is every plugin
/// of the file: (name, type, parameters).
pub(crate) fn bind(
    named: &[(String, String, serde_json::Value)],
    plugins: &mut std::collections::BTreeMap<String, crate::plugin::PluginHandle>,
) -> Result<(), (String, String)> {
    let mut sources = std::collections::BTreeMap::new();
    for (name, ty, params) in
        named.iter().filter(|(_, t, _)| t == "pd-profile-handler" || t == "disagg-profile-handler")
    {
        let fail = |e: String| (name.clone(), e);
        let mut learner: Option<Arc<PrefixSource>> = None;
        let mut resolve = |r: Option<String>| -> Result<Option<Arc<dyn Decider>>, (String, String)> {
            let Some(d) = r else { return Ok(None) };
            let h = plugins.get(&d).ok_or_else(|| fail(format!("decider {d:?} is not a configured plugin")))?;
            let decider =
                h.decider.clone().ok_or_else(|| fail(format!("{d:?} ({}) is not a P/D decider", h.type_name)))?;
            if h.type_name != "prefix-based-pd-decider" {
                return Ok(Some(decider));
            }
            let decider_params = named.iter().find(|(n, _, _)| *n == d).map(|(_, _, p)| p.clone());
            let source = super::latency::resolve_prefix(named, plugins, DECIDER_PREFIX_PRODUCER, &d, &mut sources)
                .map_err(|e| (d.clone(), e))?;
            if source.is_private() {
                learner = Some(source.clone());
            }
            let p = decider_params.unwrap_or(serde_json::Value::Null);
            let bound = PrefixBasedPdDecider::from_params(&p).map_err(|e| (d.clone(), e))?.with_source(Some(source));
            Ok(Some(Arc::new(bound)))
        };
        let decider = resolve(decider_ref(ty, params).map_err(fail)?)?;
        let encode = match ty.as_str() {
            "disagg-profile-handler" => resolve(encode_decider_ref(params).map_err(fail)?)?,
            _ => None,
        };
        let mut handler = PdProfileHandler::from_params(params).map_err(fail)?.with_decider(decider);
        handler.encode_decider = encode;
        handler.legacy = ty == "pd-profile-handler";
        if handler.legacy {
            handler.primary_port = pd_primary_port(params).map_err(fail)?;
        }
        let counter = if handler.legacy { DecisionCounter::Pd } else { DecisionCounter::Disagg };
        handler.metrics = Arc::new(DecisionMetrics::new(name.clone(), ty.clone(), counter));
        handler.learner = learner;
        if let Some(h) = plugins.get_mut(name) {
            h.profile_handler = Some(Arc::new(handler));
        }
    }
    Ok(())
}

impl PdProfileHandler {
    /// From `parameters`: the profile names as `pd-profile-handler` spells them
    /// (`prefillProfile` / `decodeProfile`) or as `disagg-profile-handler` does
    /// (`profiles: {prefill, decode}`); the decider is bound by [`with_decider`](Self::with_decider)
    /// once every plugin exists (the config loader does it).
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        let nested = q.value("profiles").cloned().unwrap_or(serde_json::Value::Null);
        let n = Params(&nested);
        // An empty profile name falls back to the default, as in llm-d.
        let name = |flat: &str, key: &str| -> Result<String, String> {
            let set = |s: Option<String>| s.filter(|s| !s.is_empty());
            Ok(set(q.string(flat)?).or(set(n.string(key)?)).unwrap_or_else(|| key.to_string()))
        };
        // llm-d ignores case, `-` and `_`, and takes the bare stage name too.
        let order = q.string("stageOrder")?;
        let canon = order.as_deref().map(|o| o.to_ascii_lowercase().replace(['-', '_'], ""));
        let prefill_first = match canon.as_deref() {
            None | Some("") | Some("decodefirst") | Some("decode") => false,
            Some("prefillfirst") | Some("prefill") => true,
            Some(_) => {
                let o = order.unwrap_or_default();
                return Err(format!(
                    "parameter stageOrder: invalid stage order {o:?}, must be \"decode-first\" or \"prefill-first\""
                ));
            }
        };
        if prefill_first && decider_ref("disagg-profile-handler", p)?.is_some() {
            return Err("prefill decider is not supported in prefill-first stage order".into());
        }
        Ok(PdProfileHandler {
            prefill: name("prefillProfile", "prefill")?,
            decode: name("decodeProfile", "decode")?,
            encode: name("encodeProfile", "encode")?,
            decider: None,
            encode_decider: None,
            legacy: false,
            primary_port: None,
            prefill_first,
            metrics: Arc::new(DecisionMetrics::new(
                "disagg-profile-handler",
                "disagg-profile-handler",
                DecisionCounter::Disagg,
            )),
            learner: None,
        })
    }

    /// The handler's decision counts.
    pub fn decision_metrics(&self) -> &DecisionMetrics {
        &self.metrics
    }

    // Tells the decider's private prefix index the decode and prefill picks.
    fn learn(&self, state: &CycleState, req: &LlmRequest, results: &ProfileResults) {
        let Some(source) = &self.learner else { return };
        for profile in [&self.decode, &self.prefill] {
            if let Some(pick) = results.get(profile) {
                let chosen = Endpoint::new(pick.endpoint.clone(), pick.address.clone(), Role::Both);
                source.observe(state, req, profile, &chosen);
            }
        }
    }

    /// The same handler consulting `decider` on whether to add a prefill pick.
    pub fn with_decider(mut self, decider: Option<Arc<dyn Decider>>) -> Self {
        self.decider = decider;
        self
    }
}

impl ProfileHandler for PdProfileHandler {
    // Decode first, as llm-d-router's default stage order: then encode when its profile
    // exists and its decider says the request needs it, then prefill likewise. A stage
    // whose profile found no endpoint is dropped; the request goes on without it.
    fn next_profiles(
        &self,
        state: &CycleState,
        req: &LlmRequest,
        profiles: &[String],
        results: &ProfileResults,
    ) -> Vec<String> {
        let failed = state.get::<FailedProfiles>(FAILED_PROFILES_KEY);
        let done = |p: &String| results.contains_key(p) || failed.is_some_and(|f| f.0.contains(p));
        // The router's decision: the stages whose profile ran and found an endpoint.
        let decided = || {
            let d = Decision::of(results.contains_key(&self.encode), results.contains_key(&self.prefill));
            self.metrics.record(&req.model, d);
        };
        let finished = || {
            self.learn(state, req, results);
            Vec::new()
        };
        if self.prefill_first {
            // Prefill when its profile exists, encode when its decider says so (it sees no
            // decode pick yet), then decode, which knows the prefill pick as its peer.
            if done(&self.decode) {
                if results.contains_key(&self.decode) {
                    decided();
                }
                return finished();
            }
            if profiles.contains(&self.prefill) && !done(&self.prefill) {
                return vec![self.prefill.clone()];
            }
            let none = ProfilePick::default();
            if profiles.contains(&self.encode)
                && !done(&self.encode)
                && self.encode_decider.as_ref().is_some_and(|d| d.disaggregate(state, req, &none))
            {
                return vec![self.encode.clone()];
            }
            return vec![self.decode.clone()];
        }
        let Some(decode) = results.get(&self.decode) else {
            return if done(&self.decode) { Vec::new() } else { vec![self.decode.clone()] };
        };
        if self.legacy {
            // `pd-profile-handler` counts what its decider says, when it asks it.
            if !profiles.contains(&self.prefill) || done(&self.prefill) {
                return finished();
            }
            let yes = self.decider.as_ref().is_some_and(|d| d.disaggregate(state, req, decode));
            let d = if yes { Decision::PrefillDecode } else { Decision::DecodeOnly };
            self.metrics.record(&req.model, d);
            return if yes { vec![self.prefill.clone()] } else { finished() };
        }
        let stages = [(&self.encode, &self.encode_decider), (&self.prefill, &self.decider)];
        for (profile, decider) in stages {
            if profiles.contains(profile)
                && !done(profile)
                && decider.as_ref().is_some_and(|d| d.disaggregate(state, req, decode))
            {
                return vec![profile.clone()];
            }
        }
        decided();
        finished()
    }

    fn primary(&self, _: &ProfileResults) -> Option<String> {
        Some(self.decode.clone())
    }

    fn roles(&self) -> ProfileRoles {
        ProfileRoles { prefill: Some(self.prefill.clone()), decode: Some(self.decode.clone()) }
    }

    // The decode profile: without it every request would fail (the router's handlers
    // fail each one). The prefill and encode stages run when their profiles exist.
    fn required_profiles(&self) -> Vec<String> {
        vec![self.decode.clone()]
    }

    // The encode picks travel to the decode sidecar in `x-encoder-hosts-ports`. With
    // `primaryPort`, the request goes to that port of the decode pod and the decode
    // pick's own `host:port` travels in `x-data-parallel-host-port`.
    fn finish(&self, _primary: &str, results: &mut ProfileResults) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = results
            .get(&self.encode)
            .map(|e| vec![(ENCODER_HEADER.to_string(), e.address.clone())])
            .unwrap_or_default();
        if let (Some(port), Some(decode)) = (self.primary_port, results.get_mut(&self.decode)) {
            headers.push((DATA_PARALLEL_HEADER.to_string(), decode.address.clone()));
            decode.address = with_port(&decode.address, port);
        }
        headers
    }

    fn encode_metrics(&self, out: &mut String) {
        self.metrics.encode_text(out);
    }
}

/// The header naming the encode endpoints of an E/P/D request (llm-d's).
pub const ENCODER_HEADER: &str = "x-encoder-hosts-ports";

/// The cycle-state key of [`FailedProfiles`].
pub const FAILED_PROFILES_KEY: &str = "failed-profiles";

/// Profiles of this pick that found no endpoint (the scheduler records them).
#[derive(Debug, Clone, Default)]
pub struct FailedProfiles(pub Vec<String>);

/// `always-disagg-multimodal-decider`: run the encode stage for every request with
/// multimodal content.
#[derive(Debug, Default)]
pub struct AlwaysDisaggMultimodalDecider;

impl Decider for AlwaysDisaggMultimodalDecider {
    fn disaggregate(&self, _: &CycleState, req: &LlmRequest, _: &ProfilePick) -> bool {
        req.multimodal > 0
    }
}

/// `prefix-based-pd-decider`: disaggregate when the part of the prompt the decode
/// endpoint's cache lacks is at least `nonCachedTokens` (0, the default, never
/// disaggregates), and the prompt is at least `promptTokens` long (0: no such gate).
///
/// Counted as llm-d-router counts it: the prompt's tokens
/// ([`LlmRequest::prompt_tokens`]: its token ids, else a token per four bytes rounded
/// up, as the router's `estimate` token producer packs them) less the decode endpoint's
/// matched blocks times the tokens a block covers. The match is that of
/// `approx-prefix-cache-producer` (the config loader binds the source, creating the
/// default producer when none is configured); unbound, the match a prefix scorer left
/// in the cycle state. Without a match for the decode endpoint it does not
/// disaggregate.
#[derive(Debug, Default)]
pub struct PrefixBasedPdDecider {
    non_cached_tokens: u64,
    prompt_tokens: u64,
    source: Option<Arc<PrefixSource>>,
}

impl PrefixBasedPdDecider {
    /// From `parameters`: `nonCachedTokens`, `promptTokens`.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["nonCachedTokens", "promptTokens"])?;
        Ok(PrefixBasedPdDecider {
            non_cached_tokens: q.u64("nonCachedTokens", 0)?,
            prompt_tokens: q.u64("promptTokens", 0)?,
            source: None,
        })
    }

    /// The same decider reading its prefix match from `source`.
    pub fn with_source(mut self, source: Option<Arc<PrefixSource>>) -> Self {
        self.source = source;
        self
    }

    // The decode endpoint's matched blocks and the tokens a block covers.
    fn matched(&self, state: &CycleState, req: &LlmRequest, decode: &ProfilePick) -> Option<(usize, usize)> {
        match &self.source {
            Some(s) => {
                s.match_on(state, req, &Endpoint::new(decode.endpoint.clone(), decode.address.clone(), Role::Both))
            }
            None => state
                .get::<PrefixMatch>(PREFIX_MATCH_KEY)
                .map(|m| (m.matched.get(&decode.endpoint).copied().unwrap_or(0), m.tokens_per_block)),
        }
    }

    /// The prompt tokens the decode endpoint would compute: `None` without a match.
    pub fn non_cached_tokens(&self, state: &CycleState, req: &LlmRequest, decode: &ProfilePick) -> Option<u64> {
        let (blocks, per_block) = self.matched(state, req, decode)?;
        Some((req.prompt_tokens() as u64).saturating_sub(blocks.saturating_mul(per_block) as u64))
    }
}

impl Decider for PrefixBasedPdDecider {
    fn disaggregate(&self, state: &CycleState, req: &LlmRequest, decode: &ProfilePick) -> bool {
        let len = req.prompt_tokens() as u64;
        if self.non_cached_tokens == 0 || len < self.prompt_tokens || len < self.non_cached_tokens {
            return false;
        }
        self.non_cached_tokens(state, req, decode).is_some_and(|n| n >= self.non_cached_tokens)
    }
}

/// `always-disagg-pd-decider`: every request gets a prefill pick.
#[derive(Debug, Default)]
pub struct AlwaysDisaggPdDecider;

impl Decider for AlwaysDisaggPdDecider {
    fn disaggregate(&self, _: &CycleState, _: &LlmRequest, _: &ProfilePick) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pick(endpoint: &str) -> ProfilePick {
        ProfilePick {
            endpoint: endpoint.into(),
            address: endpoint.into(),
            score: 0.0,
            breakdown: Vec::new(),
            candidates: 1,
            uncached_tokens: None,
            held_prefix: None,
        }
    }

    #[test]
    fn prefix_based_decider_follows_llm_d_router() {
        // A 100-token prompt (token ids given) of which "warm" holds 6 blocks of 16.
        let req = LlmRequest { token_ids: Some(vec![1; 100]), ..Default::default() };
        let mut st = CycleState::default();
        let matched = [("warm".to_string(), 6), ("cold".to_string(), 0)].into_iter().collect();
        st.put(
            PREFIX_MATCH_KEY,
            PrefixMatch { hashes: vec![], prompt_tokens: 100, tokens_per_block: 16, matched, ..Default::default() },
        );
        let d = |n: u64, p: u64| {
            PrefixBasedPdDecider::from_params(&serde_json::json!({"nonCachedTokens": n, "promptTokens": p})).unwrap()
        };
        // 100 uncached on cold, 4 on warm.
        assert!(d(16, 0).disaggregate(&st, &req, &decode_pick("cold")));
        assert!(!d(16, 0).disaggregate(&st, &req, &decode_pick("warm")));
        assert!(d(4, 0).disaggregate(&st, &req, &decode_pick("warm")));
        // 0 never disaggregates; nor does a prompt shorter than the threshold or the gate.
        assert!(!d(0, 0).disaggregate(&st, &req, &decode_pick("cold")));
        assert!(!d(101, 0).disaggregate(&st, &req, &decode_pick("cold")));
        assert!(!d(16, 200).disaggregate(&st, &req, &decode_pick("cold")));
        // No prefix match known: stay on the decode endpoint.
        assert!(!d(16, 0).disaggregate(&CycleState::default(), &req, &decode_pick("cold")));
        assert!(AlwaysDisaggPdDecider.disaggregate(&CycleState::default(), &req, &decode_pick("cold")));
    }

    #[test]
    fn data_parallel_sends_to_the_primary_port_and_names_the_rank() {
        let h = DataParallelProfileHandler::from_params(&serde_json::json!({})).unwrap();
        let mut results = ProfileResults::new();
        results.insert("default".into(), ProfilePick { address: "10.0.0.7:8002".into(), ..decode_pick("pod-rank-2") });
        let headers = h.finish("default", &mut results);
        assert_eq!(results["default"].address, "10.0.0.7:8000");
        assert_eq!(headers, [(DATA_PARALLEL_HEADER.to_string(), "10.0.0.7:8002".to_string())]);
        let h = DataParallelProfileHandler::from_params(&serde_json::json!({"primaryPort": 9000})).unwrap();
        let mut results = ProfileResults::new();
        results.insert("default".into(), ProfilePick { address: "[fd00::7]:8001".into(), ..decode_pick("p") });
        h.finish("default", &mut results);
        assert_eq!(results["default"].address, "[fd00::7]:9000");
        for bad in [0, 70000] {
            let e = DataParallelProfileHandler::from_params(&serde_json::json!({"primaryPort": bad})).unwrap_err();
            assert!(e.contains("primaryPort"), "{e}");
        }
    }

    #[test]
    fn the_header_names_the_profile() {
        let h = HeaderProfileHandler::from_params(&serde_json::json!({"headerName": "X-Route"})).unwrap();
        let profiles = ["decode".to_string(), "batch".to_string()];
        let mut req = LlmRequest::default();
        let next = |req: &LlmRequest, profiles: &[String]| {
            h.next_profiles(&CycleState::default(), req, profiles, &ProfileResults::new())
        };
        assert_eq!(next(&req, &profiles), ["decode"], "no header: the default profile");
        req.headers.insert("x-route".into(), " batch ".into());
        assert_eq!(next(&req, &profiles), ["batch"]);
        req.headers.insert("x-route".into(), "gpu-9".into());
        assert!(next(&req, &profiles).is_empty(), "an unknown profile runs nothing");
        assert_eq!(next(&req, &profiles[1..]), ["batch"], "a single profile always runs");
        let mut done = ProfileResults::new();
        done.insert("batch".into(), decode_pick("e"));
        assert!(h.next_profiles(&CycleState::default(), &req, &profiles, &done).is_empty());
        assert_eq!(h.primary(&done).as_deref(), Some("batch"));
    }

    #[test]
    fn handlers_name_their_deciders() {
        let none = serde_json::json!({});
        assert_eq!(decider_ref("pd-profile-handler", &none).unwrap().as_deref(), Some("prefix-based-pd-decider"));
        assert_eq!(decider_ref("disagg-profile-handler", &none).unwrap(), None);
        let nested = serde_json::json!({"deciders": {"prefill": "d1"}});
        assert_eq!(decider_ref("disagg-profile-handler", &nested).unwrap().as_deref(), Some("d1"));
        let flat = serde_json::json!({"prefillDeciderPluginName": "d2"});
        assert_eq!(decider_ref("disagg-profile-handler", &flat).unwrap().as_deref(), Some("d2"));
        assert!(PdProfileHandler::from_params(&serde_json::json!({"stageOrder": "prefill-first"})).is_ok());
        assert!(PdProfileHandler::from_params(&serde_json::json!({"stageOrder": "sideways"})).is_err());
        // llm-d's spellings: any case, `-` or `_`, or the bare stage.
        for (o, prefill_first) in [
            ("PrefillFirst", true),
            ("prefill_first", true),
            ("prefill", true),
            ("DECODE", false),
            ("decode_first", false),
        ] {
            let h = PdProfileHandler::from_params(&serde_json::json!({"stageOrder": o})).unwrap();
            assert_eq!(h.prefill_first, prefill_first, "{o}");
        }
        // Empty names: the stage off for disagg, the default for pd, default profiles.
        let empty = serde_json::json!({"deciders": {"prefill": ""}, "profiles": {"decode": "", "prefill": ""}});
        assert_eq!(decider_ref("disagg-profile-handler", &empty).unwrap(), None);
        // pd-profile-handler's default stands for an absent key only: empty, it is refused.
        let pd = serde_json::json!({"deciderPluginName": ""});
        let e = decider_ref("pd-profile-handler", &pd).unwrap_err();
        assert!(e.contains("deciderPluginName") && e.contains("not defined"), "{e}");
        let pd = serde_json::json!({"deciderPluginName": null});
        assert_eq!(decider_ref("pd-profile-handler", &pd).unwrap().as_deref(), Some("prefix-based-pd-decider"));
        let h = PdProfileHandler::from_params(&empty).unwrap();
        assert_eq!((h.decode.as_str(), h.prefill.as_str()), ("decode", "prefill"));
    }

    #[test]
    fn pd_profile_handler_refuses_what_the_router_refuses() {
        let check = |p: serde_json::Value| check_pd_params("pd-profile-handler", &p);
        // The router's range check, for a port set (0 is off).
        for bad in [serde_json::json!(-10), serde_json::json!(65536), serde_json::json!(70000)] {
            let e = check(serde_json::json!({"primaryPort": bad})).unwrap_err();
            assert!(e.contains("primaryPort") && e.contains("between 1 and 65535"), "{e}");
        }
        // Not an integer: the router's JSON decoding into an int fails.
        for bad in [serde_json::json!(8080.5), serde_json::json!("8000"), serde_json::json!(true)] {
            let e = check(serde_json::json!({"primaryPort": bad})).unwrap_err();
            assert!(e.contains("primaryPort") && e.contains("integer"), "{e}");
        }
        for ok in [0, 1, 8000, 65535] {
            check(serde_json::json!({"primaryPort": ok})).unwrap();
        }
        assert_eq!(pd_primary_port(&serde_json::json!({"primaryPort": 0})).unwrap(), None);
        assert_eq!(pd_primary_port(&serde_json::json!({"primaryPort": 9000})).unwrap(), Some(9000));
        // An empty decider name.
        let e = check(serde_json::json!({"deciderPluginName": ""})).unwrap_err();
        assert!(e.contains("deciderPluginName"), "{e}");
        // disagg-profile-handler takes no primaryPort at all (the router's strict decoding).
        let e = check_pd_params("disagg-profile-handler", &serde_json::json!({"primaryPort": 8000})).unwrap_err();
        assert!(e.contains("primaryPort"), "{e}");
    }

    #[test]
    fn pd_profile_handler_with_a_primary_port_sends_decode_there() {
        let mut h = PdProfileHandler::from_params(&serde_json::json!({})).unwrap();
        h.legacy = true;
        h.primary_port = pd_primary_port(&serde_json::json!({"primaryPort": 8000})).unwrap();
        let mut results = ProfileResults::new();
        results.insert("decode".into(), ProfilePick { address: "10.0.0.1:8002".into(), ..decode_pick("d") });
        results.insert("prefill".into(), ProfilePick { address: "10.0.0.2:8001".into(), ..decode_pick("p") });
        let headers = h.finish("decode", &mut results);
        assert_eq!(headers, [(DATA_PARALLEL_HEADER.to_string(), "10.0.0.1:8002".to_string())]);
        assert_eq!(results["decode"].address, "10.0.0.1:8000");
        assert_eq!(results["prefill"].address, "10.0.0.2:8001", "the prefill pick keeps its port");
        // Without one, nothing changes.
        h.primary_port = None;
        let mut results = ProfileResults::new();
        results.insert("decode".into(), ProfilePick { address: "10.0.0.1:8002".into(), ..decode_pick("d") });
        assert!(h.finish("decode", &mut results).is_empty());
        assert_eq!(results["decode"].address, "10.0.0.1:8002");
    }

    #[test]
    fn decisions_are_counted_as_each_handler_counts_them() {
        let yes: Arc<dyn Decider> = Arc::new(AlwaysDisaggPdDecider);
        let profiles = ["decode".to_string(), "prefill".to_string()];
        let req = LlmRequest::new("r", "m", "hi");
        let st = CycleState::default();
        let mut done = ProfileResults::new();
        done.insert("decode".into(), decode_pick("d"));
        // disagg: once the stages are done, by the stages that found an endpoint.
        let h = PdProfileHandler::from_params(&serde_json::json!({})).unwrap().with_decider(Some(yes.clone()));
        assert_eq!(h.next_profiles(&st, &req, &profiles, &done), ["prefill"]);
        assert_eq!(h.metrics.count("m", Decision::PrefillDecode), 0, "not counted before the stages are done");
        let mut both = done.clone();
        both.insert("prefill".into(), decode_pick("p"));
        assert!(h.next_profiles(&st, &req, &profiles, &both).is_empty());
        assert_eq!(h.metrics.count("m", Decision::PrefillDecode), 1);
        // The prefill profile found nothing: decode only.
        let mut failed = CycleState::default();
        failed.put(FAILED_PROFILES_KEY, FailedProfiles(vec!["prefill".into()]));
        assert!(h.next_profiles(&failed, &req, &profiles, &done).is_empty());
        assert_eq!(h.metrics.count("m", Decision::DecodeOnly), 1);
        // The decode profile found nothing: no decision.
        let mut no_decode = CycleState::default();
        no_decode.put(FAILED_PROFILES_KEY, FailedProfiles(vec!["decode".into()]));
        assert!(h.next_profiles(&no_decode, &req, &profiles, &ProfileResults::new()).is_empty());
        assert_eq!(h.metrics.count("m", Decision::DecodeOnly), 1);
        // pd: what the decider said, when it is asked; not again once prefill ran.
        let mut pd = PdProfileHandler::from_params(&serde_json::json!({})).unwrap().with_decider(Some(yes));
        pd.legacy = true;
        pd.metrics = Arc::new(DecisionMetrics::new("pd", "pd-profile-handler", DecisionCounter::Pd));
        assert_eq!(pd.next_profiles(&st, &req, &profiles, &done), ["prefill"]);
        assert!(pd.next_profiles(&st, &req, &profiles, &both).is_empty());
        assert_eq!(pd.metrics.count("m", Decision::PrefillDecode), 1);
        pd.decider = Some(Arc::new(PrefixBasedPdDecider::default()));
        assert!(pd.next_profiles(&st, &req, &profiles, &done).is_empty());
        assert_eq!(pd.metrics.count("m", Decision::DecodeOnly), 1);
        // A decode profile alone: the router's pd handler asks nothing and counts nothing.
        assert!(pd.next_profiles(&st, &req, &profiles[..1], &done).is_empty());
        assert_eq!(pd.metrics.count("m", Decision::DecodeOnly), 1);
        let mut out = String::new();
        pd.encode_metrics(&mut out);
        assert!(out.contains(r#"llm_d_epp_pd_decision_total{plugin_name="pd",plugin_type="pd-profile-handler",model_name="m",decision_type="decode-only"} 1"#), "{out}");
    }

    #[test]
    fn the_decider_counts_the_prompt_as_the_router_does_at_the_boundary() {
        // A 64-byte block is 16 tokens; the decode endpoint holds the first block.
        let source = Arc::new(
            PrefixSource::approximate("approx-prefix-cache-producer", &serde_json::json!({"blockSizeTokens": 16}))
                .unwrap(),
        );
        let head = "h".repeat(64);
        let decode = Endpoint::new("d", "d:8000", Role::Decode);
        source.observe(&CycleState::default(), &LlmRequest::new("warm", "m", head.clone()), "decode", &decode);
        let decider = PrefixBasedPdDecider::from_params(&serde_json::json!({"nonCachedTokens": 17}))
            .unwrap()
            .with_source(Some(source));
        let st = CycleState::default();
        let ask = |prompt: String| {
            let req = LlmRequest::new("r", "m", prompt);
            (
                decider.non_cached_tokens(&st, &req, &decode_pick("d")),
                decider.disaggregate(&st, &req, &decode_pick("d")),
            )
        };
        // 128 bytes: 32 tokens, 16 cached, 16 to compute: under the threshold.
        assert_eq!(ask(format!("{head}{}", "t".repeat(64))), (Some(16), false));
        // 129 bytes: 33 tokens (a partial token counts, as the router's estimate packs
        // the bytes), 16 cached, 17 to compute: at the threshold. Rounding down (the
        // scorer's old estimate) made it 16, and no prefill.
        assert_eq!(ask(format!("{head}{}", "t".repeat(65))), (Some(17), true));
        // Cold on another endpoint: 65 bytes is 17 tokens, all to compute.
        let req = LlmRequest::new("r", "m", "t".repeat(65));
        assert_eq!(decider.non_cached_tokens(&st, &req, &decode_pick("other")), Some(17));
        assert!(decider.disaggregate(&st, &req, &decode_pick("other")));
        assert!(!decider.disaggregate(&st, &LlmRequest::new("r", "m", "t".repeat(64)), &decode_pick("other")));
    }

    #[test]
    fn the_default_prefix_producer_is_created_once_and_shared() {
        use std::collections::BTreeMap;
        // The decider and a latency consumer both read `approx-prefix-cache-producer`:
        // one index, whose handle (the auto-created producer's) carries it.
        let named = vec![("d".to_string(), "prefix-based-pd-decider".to_string(), serde_json::json!({}))];
        let mut plugins = BTreeMap::new();
        let resolve = |plugins: &mut BTreeMap<_, _>, consumer: &str| {
            super::super::latency::resolve_prefix(
                &named,
                plugins,
                DECIDER_PREFIX_PRODUCER,
                consumer,
                &mut BTreeMap::new(),
            )
            .unwrap()
        };
        let a = resolve(&mut plugins, "d");
        let b = resolve(&mut plugins, "latency-scorer");
        assert!(Arc::ptr_eq(&a, &b) && a.is_private());
        let h: &crate::plugin::PluginHandle = &plugins[DECIDER_PREFIX_PRODUCER];
        assert_eq!(h.type_name, "approx-prefix-cache-producer");
        assert!(h.observer.is_some(), "endpoint removals reach the index");
    }
}
