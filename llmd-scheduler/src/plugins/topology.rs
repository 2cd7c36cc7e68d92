//! Topology affinity (llm-d-router's `topology-extractor`, `topology-affinity-filter`,
//! `topology-affinity-scorer`): in a disaggregated request the second pick (prefill,
//! after decode) prefers endpoints near the first — same host, rack, zone or region, as
//! the endpoints' node labels say — so the KV cache crosses as short a link as possible.

use std::collections::BTreeMap;

use serde_json::Value;

use super::Params;
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter, PluginHandle, Scorer};
use crate::request::LlmRequest;

/// Cycle-state key of the endpoint the request already has (the decode pick, while the
/// prefill profile runs): llm-d-router's `peer-endpoint` request attribute.
pub const PEER_ENDPOINT_KEY: &str = "disagg/peer-endpoint";

/// The request's peer endpoint and its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerEndpoint {
    /// Endpoint id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Which labels hold each topology level (`topology-extractor`'s parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyLabels {
    hostname: String,
    rack: String,
    zone: String,
    region: String,
}

impl Default for TopologyLabels {
    fn default() -> Self {
        TopologyLabels {
            hostname: "kubernetes.io/hostname".into(),
            rack: "topology.kubernetes.io/rack".into(),
            zone: "topology.kubernetes.io/zone".into(),
            region: "topology.kubernetes.io/region".into(),
        }
    }
}

impl TopologyLabels {
    /// From `topology-extractor`'s `parameters`: `hostname`, `rack`, `zone`, `region`
    /// (label keys; empty keeps the default).
    pub fn from_params(p: &Value) -> Result<Self, String> {
        let q = Params(p);
        q.check(&["hostname", "rack", "zone", "region"])?;
        let d = TopologyLabels::default();
        let key = |k: &str, def: String| -> Result<String, String> {
            Ok(q.string(k)?.filter(|s| !s.is_empty()).unwrap_or(def))
        };
        Ok(TopologyLabels {
            hostname: key("hostname", d.hostname)?,
            rack: key("rack", d.rack)?,
            zone: key("zone", d.zone)?,
            region: key("region", d.region)?,
        })
    }

    fn read(&self, labels: &BTreeMap<String, String>) -> [String; 4] {
        [&self.hostname, &self.rack, &self.zone, &self.region].map(|k| labels.get(k).cloned().unwrap_or_default())
    }
}

/// How close two endpoints are: the first level they share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Same host.
    Host,
    /// Same rack.
    Rack,
    /// Same zone.
    Zone,
    /// Same region.
    Region,
    /// Nothing shared (or unknown).
    None,
}

impl Level {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(Level::Host),
            "rack" => Ok(Level::Rack),
            "zone" => Ok(Level::Zone),
            "region" => Ok(Level::Region),
            o => Err(format!(
                "parameter minAffinity: invalid topology level {o:?}, must be one of host, rack, zone, region"
            )),
        }
    }

    // llm-d-router's scores per level.
    fn score(self) -> f64 {
        match self {
            Level::Host => 1.0,
            Level::Rack => 0.2,
            Level::Zone => 0.05,
            Level::Region => 0.02,
            Level::None => 0.0,
        }
    }
}

/// The closest level two topologies share; empty values never match.
fn compare(peer: &[String; 4], candidate: &[String; 4]) -> Level {
    let levels = [Level::Host, Level::Rack, Level::Zone, Level::Region];
    peer.iter().zip(candidate).zip(levels).find(|((a, b), _)| !a.is_empty() && a == b).map_or(Level::None, |(_, l)| l)
}

// The peer's topology, when there is a peer and a topology extractor to read it with.
fn peer_topology(labels: Option<&TopologyLabels>, state: &CycleState) -> Option<[String; 4]> {
    let labels = labels?;
    state.get::<PeerEndpoint>(PEER_ENDPOINT_KEY).map(|p| labels.read(&p.labels))
}

/// `topology-affinity-filter`: keeps the candidates at least as close to the peer as
/// `minAffinity` (`host` default, `rack`, `zone`, `region`); all of them when there is
/// no peer or none is that close.
#[derive(Debug)]
pub struct TopologyAffinityFilter {
    min: Level,
    labels: Option<TopologyLabels>,
}

impl Filter for TopologyAffinityFilter {
    fn filter<'a>(&self, state: &mut CycleState, _: &LlmRequest, eps: Vec<&'a Endpoint>) -> Vec<&'a Endpoint> {
        let (Some(peer), Some(labels)) = (peer_topology(self.labels.as_ref(), state), self.labels.as_ref()) else {
            return eps;
        };
        let near: Vec<&Endpoint> =
            eps.iter().copied().filter(|e| compare(&peer, &labels.read(&e.labels)) <= self.min).collect();
        if near.is_empty() { eps } else { near }
    }
}

/// `topology-affinity-scorer`: 1 for the peer's host, 0.2 its rack, 0.05 its zone,
/// 0.02 its region, else 0 (all 0 without a peer).
#[derive(Debug)]
pub struct TopologyAffinityScorer {
    labels: Option<TopologyLabels>,
}

impl Scorer for TopologyAffinityScorer {
    fn score(&self, state: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        let (Some(peer), Some(labels)) = (peer_topology(self.labels.as_ref(), state), self.labels.as_ref()) else {
            return vec![0.0; eps.len()];
        };
        eps.iter().map(|e| compare(&peer, &labels.read(&e.labels)).score()).collect()
    }
}

fn producer(p: &Value) -> Result<String, String> {
    Ok(Params(p)
        .string("topologyProducerName")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "topology-extractor".into()))
}

fn filter(p: &Value, labels: Option<TopologyLabels>) -> Result<TopologyAffinityFilter, String> {
    Params(p).check(&["minAffinity", "topologyProducerName"])?;
    producer(p)?;
    let min = Level::parse(&Params(p).string("minAffinity")?.unwrap_or_else(|| "host".into()))?;
    Ok(TopologyAffinityFilter { min, labels })
}

/// Registers the three types; the filter and scorer are bound to their extractor by
/// [`bind`] once every plugin of a file exists.
pub(crate) fn register(r: &mut crate::registry::PluginRegistry) {
    r.register("topology-extractor", |n, p| {
        TopologyLabels::from_params(p)?;
        Ok(PluginHandle { name: n.into(), type_name: "topology-extractor".into(), ..Default::default() })
    });
    r.register("topology-affinity-filter", |n, p| {
        Ok(PluginHandle {
            name: n.into(),
            type_name: "topology-affinity-filter".into(),
            filter: Some(std::sync::Arc::new(filter(p, None)?)),
            ..Default::default()
        })
    });
    r.register("topology-affinity-scorer", |n, p| {
        Params(p).check(&["topologyProducerName"])?;
        producer(p)?;
        Ok(PluginHandle {
            name: n.into(),
            type_name: "topology-affinity-scorer".into(),
            scorer: Some(std::sync::Arc::new(TopologyAffinityScorer { labels: None })),
            ..Default::default()
        })
    });
}

/// Gives each topology filter and scorer the label keys of the `topology-extractor` it
/// names (`topologyProducerName`); without one they find no topology and stand aside,
/// as in llm-d-router. `raw` is every plugin of the file: (name, type, parameters).
pub(crate) fn bind(
    raw: &[(String, String, Value)],
    plugins: &mut BTreeMap<String, PluginHandle>,
) -> Result<(), (String, String)> {
    for (name, ty, params) in raw.iter().filter(|(_, t, _)| t.starts_with("topology-affinity-")) {
        let fail = |e: String| (name.clone(), e);
        let want = producer(params).map_err(fail)?;
        let labels = match raw.iter().find(|(n, t, _)| *n == want && t == "topology-extractor") {
            Some((_, _, p)) => Some(TopologyLabels::from_params(p).map_err(fail)?),
            None => None,
        };
        let Some(h) = plugins.get_mut(name) else { continue };
        if ty == "topology-affinity-filter" {
            h.filter = Some(std::sync::Arc::new(filter(params, labels).map_err(fail)?));
        } else {
            h.scorer = Some(std::sync::Arc::new(TopologyAffinityScorer { labels }));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::Role;

    fn ep(id: &str, host: &str, rack: &str, zone: &str) -> Endpoint {
        let mut e = Endpoint::new(id, id, Role::Prefill);
        for (k, v) in [
            ("kubernetes.io/hostname", host),
            ("topology.kubernetes.io/rack", rack),
            ("topology.kubernetes.io/zone", zone),
        ] {
            if !v.is_empty() {
                e.labels.insert(k.into(), v.into());
            }
        }
        e
    }

    #[test]
    fn closeness_to_the_peer_filters_and_scores() {
        let peer = ep("decode", "n1", "r1", "z1");
        let eps = [
            ep("same-host", "n1", "r1", "z1"),
            ep("same-rack", "n2", "r1", "z1"),
            ep("same-zone", "n3", "r2", "z1"),
            ep("far", "n4", "r3", "z2"),
            ep("unlabelled", "", "", ""),
        ];
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let mut st = CycleState::default();
        st.put(PEER_ENDPOINT_KEY, PeerEndpoint { id: peer.id.clone(), labels: peer.labels.clone() });
        let scorer = TopologyAffinityScorer { labels: Some(TopologyLabels::default()) };
        assert_eq!(scorer.score(&mut st, &LlmRequest::default(), &refs), [1.0, 0.2, 0.05, 0.0, 0.0]);
        let rack = filter(&serde_json::json!({"minAffinity": "rack"}), Some(TopologyLabels::default())).unwrap();
        let kept: Vec<&str> =
            rack.filter(&mut st, &LlmRequest::default(), refs.clone()).iter().map(|e| e.id.as_str()).collect();
        assert_eq!(kept, ["same-host", "same-rack"]);
        // None close enough: all stay.
        let host = filter(&serde_json::json!({}), Some(TopologyLabels::default())).unwrap();
        assert_eq!(host.filter(&mut st, &LlmRequest::default(), refs[1..].to_vec()).len(), 4);
        // No peer, or no extractor: nothing is filtered, nothing scores.
        let mut none = CycleState::default();
        assert_eq!(rack.filter(&mut none, &LlmRequest::default(), refs.clone()).len(), 5);
        let unbound = TopologyAffinityScorer { labels: None };
        assert_eq!(unbound.score(&mut st, &LlmRequest::default(), &refs), [0.0; 5]);
        assert!(filter(&serde_json::json!({"minAffinity": "planet"}), None).unwrap_err().contains("minAffinity"));
        // Custom label keys.
        let custom = TopologyLabels::from_params(&serde_json::json!({"hostname": "node"})).unwrap();
        assert_eq!(
            custom.read(&[("node".to_string(), "n9".to_string())].into()),
            ["n9".to_string(), String::new(), String::new(), String::new()]
        );
    }
}
