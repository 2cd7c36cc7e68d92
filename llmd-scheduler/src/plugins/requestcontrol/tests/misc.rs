//! `agent-identity`, the conformance plugins, served models, the chain and registration.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::{build, ep_at, headers, pick_result, registry, req_with};
use crate::datalayer::{Extracted, Extractor, SourceData, SourceKind};
use crate::endpoint::{AttributeValue, Endpoint};
use crate::plugin::{CycleState, Filter};
use crate::plugins::requestcontrol::conformance::*;
use crate::plugins::requestcontrol::identity::*;
use crate::plugins::requestcontrol::models::*;
use crate::plugins::requestcontrol::session::{SESSION_AFFINITY_FILTER, SESSION_ID_PRODUCER, SessionAffinity};
use crate::plugins::requestcontrol::*;

fn identity(p: &AgentIdentity, h: &[(&str, &str)]) -> Option<String> {
    let mut a = RequestAttributes::default();
    p.request_header(&headers(h), &mut a).unwrap();
    agent_identity(&a).map(String::from)
}

#[test]
fn agent_identity_reads_provider_headers_in_priority_order() {
    // agentidentity TestRequestHeader
    let p = AgentIdentity::from_params(&json!({})).unwrap();
    for (h, want) in [
        (vec![(CLAUDE_CODE_SESSION_HEADER, "session-abc")], Some("session-abc")),
        (vec![(OPENCODE_SESSION_HEADER, "oc-session-1")], Some("oc-session-1")),
        (vec![(CODEX_SESSION_HEADER, "codex-session-1")], Some("codex-session-1")),
        (vec![(CODEX_SESSION_HEADER_LEGACY, "codex-legacy-1")], Some("codex-legacy-1")),
        (vec![(CODEX_SESSION_HEADER, "codex-new"), (CODEX_SESSION_HEADER_LEGACY, "codex-old")], Some("codex-new")),
        (
            vec![(CLAUDE_CODE_SESSION_HEADER, "session-abc"), (OPENCODE_SESSION_HEADER, "oc-session-1")],
            Some("session-abc"),
        ),
        (
            vec![(OPENCODE_SESSION_HEADER, "oc-session-1"), (CODEX_SESSION_HEADER, "codex-session-1")],
            Some("oc-session-1"),
        ),
        (vec![("x-unrelated", "value")], None),
        (vec![], None),
        // An empty value does not count.
        (vec![(CLAUDE_CODE_SESSION_HEADER, ""), (OPENCODE_SESSION_HEADER, "oc")], Some("oc")),
    ] {
        assert_eq!(identity(&p, &h).as_deref(), want, "{h:?}");
    }
}

#[test]
fn agent_identity_factory() {
    // TestPluginFactory_PriorityHeaders, TestRequestHeader_CustomHeader,
    // TestAgentIdentityKeyMatchesDocumentedConfig
    let defaults: Vec<String> = DEFAULT_PRIORITY_HEADERS.iter().map(|s| s.to_string()).collect();
    let headers_of = |p| AgentIdentity::from_params(&p).unwrap().priority_headers().to_vec();
    assert_eq!(headers_of(json!({})), defaults);
    assert_eq!(headers_of(serde_json::Value::Null), defaults);
    assert_eq!(headers_of(json!({"additionalSessionHeaders": []})), defaults);
    let mut want = vec!["x-custom-1".to_string(), "x-custom-2".to_string()];
    want.extend(defaults.clone());
    assert_eq!(headers_of(json!({"additionalSessionHeaders": ["x-custom-1", "x-custom-2"]})), want);
    let mut want = vec!["x-tenant-id".to_string(), "x-user-session".to_string()];
    want.extend(defaults);
    assert_eq!(headers_of(json!({"additionalSessionHeaders": ["X-Tenant-ID", "X-User-Session"]})), want);
    assert!(AgentIdentity::from_params(&json!({"additionalSessionHeaders": "x"})).is_err());
    assert!(AgentIdentity::from_params(&json!({"sessionHeaders": []})).unwrap_err().contains("\"sessionHeaders\""));
    let p = AgentIdentity::from_params(&json!({"additionalSessionHeaders": ["x-tenant-id"]})).unwrap();
    assert_eq!(identity(&p, &[("x-tenant-id", "tenant-42")]).as_deref(), Some("tenant-42"));
    assert_eq!(
        identity(&p, &[("x-tenant-id", "tenant-42"), (CLAUDE_CODE_SESSION_HEADER, "claude-session")]).as_deref(),
        Some("tenant-42")
    );
    assert_eq!(agent_identity_key(), DataKey::new("agent-identity", ""));
    assert_eq!(agent_identity_key().to_string(), "agent-identity/");
    assert!(build(AGENT_IDENTITY, json!({"additionalSessionHeaders": ["x"]})).is_ok());
}

#[test]
fn fairness_comes_from_the_header_then_the_agent() {
    // director.go: the fairness header, else the agent-identity attribute, else default.
    let p = AgentIdentity::from_params(&json!({})).unwrap();
    let fairness = |h: &[(&str, &str)]| {
        let hs = headers(h);
        let mut a = RequestAttributes::default();
        p.request_header(&hs, &mut a).unwrap();
        fairness_id(&hs, &a).to_string()
    };
    assert_eq!(fairness(&[]), "default-flow");
    assert_eq!(fairness(&[(CLAUDE_CODE_SESSION_HEADER, "agent")]), "agent");
    assert_eq!(fairness(&[(CLAUDE_CODE_SESSION_HEADER, "agent"), ("x-llm-d-inference-fairness-id", "t")]), "t");
    assert_eq!(fairness(&[(CLAUDE_CODE_SESSION_HEADER, "agent"), ("x-gateway-inference-fairness-id", "old")]), "old");
}

fn kept(h: Option<&str>, eps: &[Endpoint]) -> Vec<String> {
    let req = match h {
        Some(v) => req_with("r", &[(ENDPOINT_SELECTION_HEADER, v)]),
        None => req_with("r", &[]),
    };
    HeaderBasedTestingFilter
        .filter(&mut CycleState::default(), &req, eps.iter().collect())
        .iter()
        .map(|e| e.address.clone())
        .collect()
}

#[test]
fn header_based_testing_filter() {
    // filter TestFilter
    let e = |a: &str| ep_at(a, a);
    assert!(kept(None, &[e("10.0.0.1:3000")]).is_empty());
    assert!(kept(Some("10.0.0.99"), &[e("10.0.0.1:3000")]).is_empty());
    assert_eq!(kept(Some("10.0.0.1"), &[e("10.0.0.1:3002")]), ["10.0.0.1:3002"]);
    assert_eq!(
        kept(Some("10.0.0.1:3002"), &[e("10.0.0.1:3000"), e("10.0.0.1:3002"), e("10.0.0.2:3002")]),
        ["10.0.0.1:3002"]
    );
    assert!(kept(Some("10.0.0.1:9999"), &[e("10.0.0.1:3002")]).is_empty());
    assert_eq!(
        kept(Some("10.0.0.3:3004, 10.0.0.2, 10.0.0.3"), &[e("10.0.0.1:3000"), e("10.0.0.2:3002"), e("10.0.0.3:3004")]),
        ["10.0.0.3:3004", "10.0.0.2:3002"]
    );
    assert_eq!(kept(Some("[fd00::1]:3002"), &[e("[fd00::1]:3002"), e("[fd00::2]:3002")]), ["[fd00::1]:3002"]);
    assert_eq!(kept(Some("fd00::2"), &[e("[fd00::1]:3002"), e("[fd00::2]:3004")]), ["[fd00::2]:3004"]);
    assert!(kept(Some("  "), &[e("10.0.0.1:3000")]).is_empty());
    // Registered, taking any parameters (the router's factory ignores them).
    assert!(build(HEADER_BASED_TESTING_FILTER, json!({"anything": 1})).unwrap().filter.is_some());
    assert_eq!(split_host_port("h:"), Some(("h", "")));
    assert_eq!(split_host_port("[::1]"), None);
}

#[test]
fn served_verifier() {
    // TestDestinationEndpointServedVerifier_ResponseReceived
    let req = req_with("r", &[]);
    let run = |md: Option<serde_json::Value>| {
        let mut out = BTreeMap::new();
        let cx = ResponseContext { request: &req, result: None, target: None, metadata: md.as_ref() };
        DestinationEndpointServedVerifier.response_header(&cx, &mut out);
        out.get(SERVED_ENDPOINT_RESULT_HEADER).cloned().unwrap_or_default()
    };
    assert_eq!(
        run(Some(json!({"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.1:8080"}}))),
        "10.0.0.1:8080"
    );
    assert_eq!(run(Some(json!({}))), "fail: missing envoy lb metadata");
    assert_eq!(
        run(Some(json!({"envoy.lb": {"some-other-key": "some-value"}}))),
        "fail: missing destination endpoint served metadata"
    );
    assert_eq!(run(None), "fail: missing envoy lb metadata");
    assert!(build(SERVED_VERIFIER, json!({"x": 1})).is_ok());
}

fn extract(body: &str) -> Extracted {
    let mut out = Extracted::default();
    ModelsExtractor.extract(&ep_at("e", "10.0.0.1:8000"), SourceData::Metrics(body), &mut out);
    out
}

#[test]
fn models_extractor() {
    // TestExtractorExtract and TestParseModels_Contract
    let list = |ids: &[&str]| {
        vec![(MODELS_ATTRIBUTE.to_string(), AttributeValue::List(ids.iter().map(|s| s.to_string()).collect()))]
    };
    assert_eq!(extract("{}").attributes, list(&[]));
    assert_eq!(extract(r#"{"object":"list","data":[]}"#).attributes, list(&[]));
    assert_eq!(
        extract(r#"{"object":"list","data":[{"id":"food-review"},{"id":"lora1","parent":"food-review"}]}"#).attributes,
        list(&["food-review", "lora1"])
    );
    let m =
        parse_models(r#"{"object":"list","data":[{"id":"a","parent":"a","created":5,"owned_by":"vllm","root":"x"}]}"#)
            .unwrap();
    assert_eq!(
        m,
        [ModelData { id: "a".into(), object: String::new(), created: 5, owned_by: "vllm".into(), parent: "a".into() }]
    );
    // An answer that does not parse writes nothing.
    for bad in ["not json", r#"{"data": {}}"#, r#"{"data": [{"id": 5}]}"#, "[1]"] {
        assert!(extract(bad).attributes.is_empty(), "{bad}");
        assert!(parse_models(bad).is_err(), "{bad}");
    }
    assert!(build(MODELS_DATA_EXTRACTOR, json!({"whatever": true})).unwrap().extractor.is_some());
}

#[test]
fn models_source_parameters() {
    // TestDatasource, TestModelDataSourceFactory_TLS (llmd fetches over http only)
    let kind = |p| source_from_params(&p);
    let metrics = |path: &str, interval| SourceKind::Metrics { path: path.into(), interval, port: None, tls: None };
    assert_eq!(kind(json!({})), Ok(metrics("/v1/models", None)));
    assert_eq!(kind(json!({"path": "/models", "insecureSkipVerify": true})), Ok(metrics("/models", None)));
    assert_eq!(
        kind(json!({"scheme": "http", "interval": "5s"})),
        Ok(metrics("/v1/models", Some(std::time::Duration::from_secs(5))))
    );
    assert!(kind(json!({"scheme": "https"})).unwrap_err().contains("http only"));
    assert!(kind(json!({"scheme": "ftp"})).unwrap_err().contains("unsupported scheme"));
    assert!(kind(json!({"caCertPath": "/nope/ca.pem"})).unwrap_err().contains("caCertPath"));
    assert!(
        kind(json!({"clientCertPath": "/c.pem", "clientKeyPath": "/k.pem"})).unwrap_err().contains("clientCertPath")
    );
    assert!(kind(json!({"port": 8000})).unwrap_err().contains("\"port\""));
    assert!(kind(json!({"interval": "soon"})).unwrap_err().contains("interval"));
    let h = build(MODELS_DATA_SOURCE, json!({})).unwrap();
    assert_eq!(h.source, Some(metrics("/v1/models", None)));
}

#[test]
fn models_pair_is_wired_by_a_config_file() {
    // The data layer resolves the pair like metrics-data-source's: the source is an
    // HTTP fetch, its extractor reads the body.
    let mut r = crate::registry::PluginRegistry::with_builtins();
    super::super::register(&mut r);
    let yaml = "plugins:\n- type: models-data-source\n- type: models-data-extractor\n- type: queue-scorer\n\
                dataLayer:\n  sources:\n  - pluginRef: models-data-source\n    extractors:\n    - pluginRef: models-data-extractor\n";
    let cfg = crate::config::SchedulerConfig::from_yaml(yaml, "epp.yaml", &r).unwrap();
    let models = cfg.data_layer.sources.iter().find(|s| s.name == MODELS_DATA_SOURCE).unwrap();
    assert!(matches!(&models.kind, SourceKind::Metrics { path, .. } if path == "/v1/models"));
    let got =
        crate::datalayer::extract_all(models, &ep_at("e", "a:1"), SourceData::Metrics(r#"{"data":[{"id":"m"}]}"#));
    assert_eq!(got.attributes, [(MODELS_ATTRIBUTE.to_string(), AttributeValue::List(vec!["m".into()]))]);
    assert_eq!(got.metrics, None);
    // The default metrics source still comes.
    assert!(cfg.data_layer.sources.iter().any(|s| s.name == "metrics-data-source"));
}

#[test]
fn the_chain_runs_each_stage_in_order() {
    let agent: Arc<dyn RequestHeaderProcessor> = Arc::new(AgentIdentity::from_params(&json!({})).unwrap());
    let producer: Arc<dyn DataProducer> = Arc::new(
        crate::plugins::requestcontrol::session::SessionIdProducer::from_params(
            SESSION_ID_PRODUCER,
            &json!({"headerName": "x-session-id"}),
        )
        .unwrap(),
    );
    let session = Arc::new(
        SessionAffinity::from_params(
            SESSION_AFFINITY_FILTER,
            &json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"attribute": "agent-identity"}]}}),
        )
        .unwrap(),
    );
    let encoded = Arc::new(SessionAffinity::from_params(SESSION_AFFINITY_FILTER, &json!({})).unwrap());
    let chain = RequestControlChain::new([
        ("agent".to_string(), RequestControl { request_header: Some(agent), ..Default::default() }),
        ("producer".to_string(), RequestControl { producer: Some(producer), ..Default::default() }),
        (
            "session".to_string(),
            RequestControl {
                pre_request: Some(session.clone()),
                response_header: Some(session.clone()),
                ..Default::default()
            },
        ),
        ("encoded".to_string(), RequestControl { response_header: Some(encoded), ..Default::default() }),
    ]);
    assert!(!chain.is_empty());
    chain.bind_clock(&(Arc::new(crate::clock::ManualClock::new()) as Arc<dyn crate::clock::Clock>));
    let req = req_with("r", &[(CLAUDE_CODE_SESSION_HEADER, "agent-7"), ("x-session-id", "s")]);
    let mut attrs = RequestAttributes::default();
    chain.request_headers(&req.headers, &mut attrs).unwrap();
    chain.produce(&req.headers, &mut attrs);
    assert_eq!(
        attrs.keys().map(ToString::to_string).collect::<Vec<_>>(),
        ["SessionIDDataKey/session-id-producer", "agent-identity/"]
    );
    let result = pick_result("default", &[("default", "pod-b")]);
    chain.pre_request(&req, &attrs, &result);
    let (a, b) = (ep_at("pod-a", "a:1"), ep_at("pod-b", "b:1"));
    assert_eq!(session.choose(&req, Some(&attrs), &[&a, &b]), Some(1));
    let mut out = BTreeMap::new();
    chain.response_headers(
        &ResponseContext { request: &req, result: Some(&result), target: Some(&b), metadata: None },
        &mut out,
    );
    assert_eq!(out.into_iter().collect::<Vec<_>>(), [("x-session-token".to_string(), "cG9kLWI=".to_string())]);
    let mut md = serde_json::Map::new();
    chain.response_complete(
        &ResponseContext { request: &req, result: None, target: None, metadata: None },
        &Usage::default(),
        &mut md,
    );
    assert!(md.is_empty());
}

#[test]
fn every_type_is_registered_and_refuses_misspelt_keys() {
    let r = registry();
    let types: Vec<&str> = r.types().collect();
    assert_eq!(
        types,
        [
            "agent-identity",
            "destination-endpoint-served-verifier",
            "disaggregatedset-rollout-screener",
            "header-based-testing-filter",
            "models-data-extractor",
            "models-data-source",
            "multicluster-session-affinity-filter",
            "request-attribute-reporter",
            "session-affinity-filter",
            "session-id-producer",
        ]
    );
    for (t, params, key) in [
        ("agent-identity", json!({"additionalSessionHeader": []}), "additionalSessionHeader"),
        ("session-id-producer", json!({"header": "x"}), "header"),
        ("session-affinity-filter", json!({"profile": "p"}), "profile"),
        ("multicluster-session-affinity-filter", json!({"profile": "p"}), "profile"),
        ("request-attribute-reporter", json!({"attributes": [], "ns": 1}), "ns"),
        ("disaggregatedset-rollout-screener", json!({"scopes": {}}), "scopes"),
        ("models-data-source", json!({"paths": "/x"}), "paths"),
    ] {
        let e = build(t, params).err().unwrap_or_else(|| panic!("{t} took a misspelt key"));
        assert!(e.starts_with(&format!("parameter {key:?} is not ")), "{t}: {e}");
    }
}
