//! The plugin seams of the endpoint picker, as in llm-d's EPP: filters narrow the
//! candidates, scorers rate them in [0, 1] (combined by profile weights), a picker
//! chooses, and a profile handler decides which scheduling profiles run (one, or a
//! prefill and a decode profile for disaggregation). Observers learn each pick (the
//! approximate prefix scorer records routing history that way).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};

use crate::endpoint::Endpoint;
use crate::request::LlmRequest;

/// Scratch space shared by the plugins of one scheduling cycle.
#[derive(Default)]
pub struct CycleState {
    data: HashMap<String, Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for CycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CycleState").field("keys", &self.data.keys().collect::<Vec<_>>()).finish()
    }
}

impl CycleState {
    /// Stores a value under `key`.
    pub fn put<T: Any + Send + Sync>(&mut self, key: &str, value: T) {
        self.data.insert(key.to_string(), Box::new(value));
    }

    /// The value under `key`, if it has type `T`.
    pub fn get<T: Any + Send + Sync>(&self, key: &str) -> Option<&T> {
        self.data.get(key).and_then(|b| b.downcast_ref())
    }
}

/// Narrows the candidate endpoints.
pub trait Filter: Send + Sync {
    /// The endpoints that may serve `req`.
    fn filter<'a>(&self, state: &mut CycleState, req: &LlmRequest, endpoints: Vec<&'a Endpoint>) -> Vec<&'a Endpoint>;
}

/// Rates candidates.
pub trait Scorer: Send + Sync {
    /// One score in [0, 1] per endpoint, in the order given.
    fn score(&self, state: &mut CycleState, req: &LlmRequest, endpoints: &[&Endpoint]) -> Vec<f64>;

    /// Whether this scorer reads the request's token ids when a front end can supply
    /// them (tokenizing costs more than a pick, so front ends only do it when asked).
    fn wants_token_ids(&self) -> bool {
        false
    }
}

/// Chooses among scored candidates.
pub trait Picker: Send + Sync {
    /// The chosen endpoint; `draw` yields uniform numbers in [0, 1) for tie-breaks and
    /// random picks (injected, so picks are reproducible under a seed).
    fn pick<'a>(&self, scored: &[(&'a Endpoint, f64)], draw: &mut dyn FnMut() -> f64) -> Option<&'a Endpoint>;
}

/// The results of the profiles run so far in a cycle.
pub type ProfileResults = BTreeMap<String, ProfilePick>;

/// Decides which profiles run for a request.
pub trait ProfileHandler: Send + Sync {
    /// The next profiles to run given those already run (`results`); empty when done.
    fn next_profiles(
        &self,
        state: &CycleState,
        req: &LlmRequest,
        profiles: &[String],
        results: &ProfileResults,
    ) -> Vec<String>;

    /// The profile whose pick is the request's destination.
    fn primary(&self, results: &ProfileResults) -> Option<String>;

    /// Which profiles pick the prefill and decode endpoints of a disaggregated request,
    /// by the handler's own configuration (so renamed profiles work). The default: no
    /// disaggregation, the primary pick is the destination.
    fn roles(&self) -> ProfileRoles {
        ProfileRoles::default()
    }

    /// Profiles that must exist in the configuration.
    fn required_profiles(&self) -> Vec<String> {
        Vec::new()
    }

    /// Last changes to the picks before the request is sent, and request headers the
    /// front end sets on it (data parallelism sends to the pod's primary port and names
    /// the chosen rank in a header). The default changes nothing.
    fn finish(&self, _primary: &str, _results: &mut ProfileResults) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Appends the handler's own Prometheus series (text format, without an end
    /// marker) to `out`: the P/D handlers' decision counters. The default has none.
    fn encode_metrics(&self, _out: &mut String) {}
}

/// Decides whether a request whose decode endpoint is picked also gets a separate
/// prefill (llm-d's P/D deciders, named by `disagg-profile-handler`'s `deciders`).
pub trait Decider: Send + Sync {
    /// Whether to disaggregate `req`, whose decode profile picked `decode`.
    fn disaggregate(&self, state: &CycleState, req: &LlmRequest, decode: &ProfilePick) -> bool;
}

/// The profiles that play each part of prefill/decode disaggregation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRoles {
    /// The profile that picks the prefill endpoint.
    pub prefill: Option<String>,
    /// The profile that picks the decode endpoint (the destination).
    pub decode: Option<String>,
}

/// Learns the outcome of each profile's pick.
pub trait PickObserver: Send + Sync {
    /// `chosen` was picked for `req` by `profile`.
    fn on_pick(&self, state: &CycleState, req: &LlmRequest, profile: &str, chosen: &Endpoint);

    /// An endpoint went away: drop what was learned about it.
    fn forget(&self, _endpoint: &str) {}

    /// Blocks this observer believes `endpoint` holds, if it keeps such a count (the
    /// approximate prefix index does).
    fn endpoint_blocks(&self, _endpoint: &str) -> Option<usize> {
        None
    }
}

/// One scorer's contribution to an endpoint's total.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreBreakdown {
    /// Scorer plugin name.
    pub scorer: String,
    /// Raw score in [0, 1].
    pub raw: f64,
    /// Its weight in the profile.
    pub weight: f64,
}

/// What one profile picked, and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfilePick {
    /// The chosen endpoint's id.
    pub endpoint: String,
    /// Its address.
    pub address: String,
    /// Its weighted total.
    pub score: f64,
    /// Per-scorer detail of the chosen endpoint.
    pub breakdown: Vec<ScoreBreakdown>,
    /// Candidates that survived the filters.
    pub candidates: usize,
    /// Prompt tokens the chosen endpoint's cache lacks, when a prefix scorer ran (the
    /// picker counts these, not the whole prompt, as the prefill it queued there).
    pub uncached_tokens: Option<usize>,
    /// The longest prefix of the prompt some candidate holds, when a prefix scorer ran
    /// (hot-prefix replication reads it).
    pub held_prefix: Option<crate::replication::HeldPrefix>,
}

/// A configured plugin instance: one type can play several roles (a scorer that also
/// observes picks, say).
#[derive(Clone, Default)]
pub struct PluginHandle {
    /// Instance name (`name`, defaulting to the type).
    pub name: String,
    /// Type name, as in the config file.
    pub type_name: String,
    /// Filter role.
    pub filter: Option<std::sync::Arc<dyn Filter>>,
    /// Scorer role.
    pub scorer: Option<std::sync::Arc<dyn Scorer>>,
    /// Picker role.
    pub picker: Option<std::sync::Arc<dyn Picker>>,
    /// Profile-handler role.
    pub profile_handler: Option<std::sync::Arc<dyn ProfileHandler>>,
    /// P/D decider role.
    pub decider: Option<std::sync::Arc<dyn Decider>>,
    /// Request-parser role.
    pub parser: Option<crate::parsers::BodyParser>,
    /// Observer role.
    pub observer: Option<std::sync::Arc<dyn PickObserver>>,
    /// KV-event consumer role.
    pub kv_events: Option<std::sync::Arc<dyn KvEventConsumer>>,
    /// Data-layer extractor role.
    pub extractor: Option<std::sync::Arc<dyn crate::datalayer::Extractor>>,
    /// Data-layer source role.
    pub source: Option<crate::datalayer::SourceKind>,
    /// Token-producer role.
    pub tokens: Option<std::sync::Arc<crate::tokenproducer::TokenProducer>>,
    /// A `predicted-latency-producer` (the front ends report each request's latencies
    /// to it).
    pub latency: Option<std::sync::Arc<crate::plugins::latency::PredictedLatencyProducer>>,
    /// A `burst-prefix-cache-producer` (the front ends join its window before the pick).
    pub burst: Option<std::sync::Arc<crate::plugins::burst::BurstPrefixProducer>>,
    /// Request-control roles (request-header processor, screener, data producer,
    /// pre-request, response-header and response-body processors).
    pub request_control: Option<crate::plugins::requestcontrol::RequestControl>,
    /// Flow-control role (a policy or saturation detector).
    pub flow: Option<crate::flowcontrol::FlowPlugin>,
    /// The prefix match a prefix producer gives consumers outside the profiles (the P/D
    /// decider, the latency plugins): set by the config loader on an
    /// `approx-prefix-cache-producer` it reads privately, configured or auto-created, so
    /// every consumer of it shares one index.
    pub prefix_source: Option<std::sync::Arc<crate::plugins::latency::PrefixSource>>,
}

impl std::fmt::Debug for PluginHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHandle")
            .field("name", &self.name)
            .field("type", &self.type_name)
            .field("filter", &self.filter.is_some())
            .field("scorer", &self.scorer.is_some())
            .field("picker", &self.picker.is_some())
            .field("profile_handler", &self.profile_handler.is_some())
            .field("decider", &self.decider.is_some())
            .field("extractor", &self.extractor.is_some())
            .field("source", &self.source)
            .finish()
    }
}

/// Takes engines' KV event batches (the precise prefix scorer's index).
pub trait KvEventConsumer: Send + Sync {
    /// A batch from `endpoint` with transport sequence number `seq`.
    fn apply(&self, endpoint: &str, seq: Option<u64>, batch: &llmd_kvcache::KvEventBatch);
    /// Forgets an endpoint that went away.
    fn forget(&self, endpoint: &str);
    /// Distinct blocks indexed.
    fn blocks(&self) -> usize;
    /// The publisher to subscribe to for endpoint `e` (`None`: none): by default the
    /// stream the endpoint advertises.
    fn events_address(&self, e: &crate::endpoint::Endpoint) -> Option<String> {
        e.kv_events.clone()
    }
    /// A socket to bind where every engine publishes (`zmqEndpoint`), with the topic
    /// prefix to subscribe to; `None` by default.
    fn global_socket(&self) -> Option<(String, String)> {
        None
    }
    /// Blocks indexed as held by `endpoint`.
    fn endpoint_blocks(&self, _endpoint: &str) -> usize {
        0
    }
    /// Endpoints with blocks indexed (a removed endpoint must not be among them).
    fn endpoints(&self) -> Vec<String> {
        Vec::new()
    }
}
