//! `session-id-producer`, `session-affinity-filter` and the session-affinity scorer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{build, ep, headers, pick_result, req_with};
use crate::clock::ManualClock;
use crate::endpoint::Endpoint;
use crate::plugin::{CycleState, Filter, Scorer};
use crate::plugins::requestcontrol::conformance::HeaderBasedTestingFilter;
use crate::plugins::requestcontrol::identity::AgentIdentity;
use crate::plugins::requestcontrol::session::*;
use crate::plugins::requestcontrol::{
    DataKey, DataProducer, PreRequest, RequestAttributes, RequestHeaderProcessor, ResponseContext,
    ResponseHeaderProcessor,
};
use crate::request::LlmRequest;

/// The Go tests' `newTestSessionIDHeader`: one `x-session-token` header source.
fn session_id(extra: Value) -> SessionAffinity {
    let mut p = json!({
        "strategy": "session_id",
        "sessionIdConfig": {"sources": [{"header": "x-session-token"}], "evictionTtlSeconds": 300, "evictionSweepSeconds": 10},
    });
    if let (Some(o), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    SessionAffinity::from_params(SESSION_AFFINITY_FILTER, &p).unwrap()
}

/// `requestWithSession`.
fn with_session(session: &str) -> LlmRequest {
    req_with(&format!("req-{session}"), &[("x-session-token", session)])
}

fn bind(s: &SessionAffinity, req: &LlmRequest, endpoint: &str) {
    s.pre_request(req, &RequestAttributes::default(), &pick_result("default", &[("default", endpoint)]));
}

fn filtered(s: &dyn Filter, req: &LlmRequest, eps: &[&Endpoint]) -> Vec<String> {
    s.filter(&mut CycleState::default(), req, eps.to_vec()).iter().map(|e| e.id.clone()).collect()
}

fn store(s: &SessionAffinity) -> &SessionBindings {
    match s.strategy() {
        crate::plugins::requestcontrol::session::Strategy::SessionId(b) => b,
        crate::plugins::requestcontrol::session::Strategy::EncodedEndpointHeader { .. } => panic!("not session_id"),
    }
}

#[test]
fn choose_bound_session_present() {
    // TestSessionIDHeader_Choose_BoundSessionPresent
    let s = session_id(json!({}));
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    bind(&s, &with_session("s1"), "pod-b");
    assert_eq!(s.choose(&with_session("s1"), None, &[&a, &b]), Some(1));
}

#[test]
fn choose_abstains_without_a_usable_session() {
    // TestSessionIDHeader_Choose_UnboundAbstains, _NoEndpoints, _NoSessionAbstains
    let s = session_id(json!({}));
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    bind(&s, &with_session("s1"), "pod-a");
    assert_eq!(s.choose(&with_session("s2"), None, &[&a, &b]), None);
    assert_eq!(s.choose(&with_session("s1"), None, &[]), None);
    assert_eq!(s.choose(&req_with("req-no-session", &[]), None, &[&a, &b]), None);
}

#[test]
fn pre_request_binds_and_moves_only_on_genuine_absence() {
    // TestSessionIDHeader_PreRequest_FirstBind
    let s = session_id(json!({}));
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    bind(&s, &with_session("s1"), "pod-a");
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-a"));

    // TestSessionIDHeader_PreRequest_HoldsPinWhenPresentButOutvoted
    let req = with_session("s1");
    assert_eq!(s.choose(&req, None, &[&a, &b]), Some(0));
    bind(&s, &req, "pod-b");
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-a"));

    // TestSessionIDHeader_PreRequest_MigratesOnGenuineAbsence
    let req = with_session("s1");
    assert_eq!(s.choose(&req, None, &[&b]), None);
    bind(&s, &req, "pod-b");
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-b"));
}

#[test]
fn a_missing_presence_record_never_moves_a_session() {
    // TestSessionIDHeader_PreRequest_FirstBindRaceKeepsSingleBinding: concurrent first
    // binds of one session to different endpoints leave one of them.
    for _ in 0..200 {
        let s = Arc::new(session_id(json!({})));
        let r1 = with_session("new-session");
        let mut r2 = r1.clone();
        r2.id = "req-new-session-2".into();
        let threads: Vec<_> = [(r1, "pod-a"), (r2, "pod-b")]
            .into_iter()
            .map(|(r, e)| {
                let s = s.clone();
                std::thread::spawn(move || bind(&s, &r, e))
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = store(&s).bound("new-session");
        assert!(matches!(got.as_deref(), Some("pod-a" | "pod-b")), "{got:?}");
    }
    // With the order pinned: the first bind stands.
    let s = session_id(json!({}));
    let r1 = with_session("pinned-session");
    let mut r2 = r1.clone();
    r2.id = "req-pinned-session-2".into();
    bind(&s, &r1, "pod-a");
    bind(&s, &r2, "pod-b");
    assert_eq!(store(&s).bound("pinned-session").as_deref(), Some("pod-a"));
}

#[test]
fn profile_name_binds_that_profile_s_pick() {
    // TestSessionIDHeader_ProfileName_BindsProfilePod and _DecodeOnlyDoesNotBind
    let s = session_id(json!({"profileName": "prefill"}));
    let attrs = RequestAttributes::default();
    s.pre_request(&with_session("s1"), &attrs, &pick_result("decode", &[("prefill", "prefill-pod")]));
    assert_eq!(store(&s).bound("s1").as_deref(), Some("prefill-pod"));
    let s = session_id(json!({"profileName": "prefill"}));
    s.pre_request(&with_session("s1"), &attrs, &pick_result("decode", &[]));
    assert_eq!(store(&s).bound("s1"), None);
}

#[test]
fn bindings_expire_at_the_first_sweep_past_the_ttl() {
    // TestSessionIDHeader_Expired and _RunEvictionDropsExpiredBinding, on a manual
    // clock: TTL 60 s, sweeps every 10 s from the first access.
    let s =
        session_id(json!({"sessionIdConfig": {"sources": [{"header": "x-session-token"}], "evictionTtlSeconds": 60}}));
    let clock = Arc::new(ManualClock::new());
    s.bind_clock(clock.clone());
    bind(&s, &with_session("s1"), "pod-a");
    clock.advance(Duration::from_secs(10));
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-a"), "just seen: not expired");
    // Expiry is the sweeper's, not the read's: past the TTL but before the next sweep
    // the binding still reads.
    clock.advance(Duration::from_millis(59_900));
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-a"));
    clock.advance(Duration::from_millis(100));
    assert_eq!(store(&s).bound("s1"), None, "unused past the TTL: swept at 70 s");
    assert!(store(&s).is_empty());
}

#[test]
fn a_refreshed_binding_survives_the_sweep() {
    // TestSessionIDHeader_RunEvictionSparesRefreshedBinding: a pre-request on the bound
    // endpoint refreshes it.
    let s = session_id(json!({}));
    let clock = Arc::new(ManualClock::new());
    s.bind_clock(clock.clone());
    bind(&s, &with_session("s1"), "pod-a");
    clock.advance(Duration::from_secs(250));
    bind(&s, &with_session("s1"), "pod-a");
    clock.advance(Duration::from_secs(305));
    assert_eq!(store(&s).bound("s1").as_deref(), Some("pod-a"), "305 s after the refresh");
    clock.advance(Duration::from_secs(5));
    assert_eq!(store(&s).bound("s1"), None, "swept at 560 s");
    // A choose alone does not refresh.
    bind(&s, &with_session("s2"), "pod-a");
    let a = ep("pod-a");
    for _ in 0..31 {
        clock.advance(Duration::from_secs(10));
        s.choose(&with_session("s2"), None, &[&a]);
    }
    assert_eq!(store(&s).bound("s2"), None);
}

#[test]
fn session_id_writes_no_response_header() {
    // TestSessionIDHeader_ResponseHeader_IsNoOp
    let s = session_id(json!({}));
    let req = with_session("s1");
    let result = pick_result("default", &[("default", "pod-a")]);
    let mut out = BTreeMap::new();
    let cx = ResponseContext { request: &req, result: Some(&result), target: None, metadata: None };
    s.response_header(&cx, &mut out);
    assert!(out.is_empty());
}

#[test]
fn session_ids_resolve_from_sources_in_order() {
    // TestResolveSessionID
    let header = SessionIdSource { header: "x-session-id".into(), ..Default::default() };
    let attr = SessionIdSource { attribute: "agent-identity".into(), ..Default::default() };
    let key = DataKey::new("agent-identity", "");
    let with_attr = |v: Value| {
        let mut a = RequestAttributes::default();
        a.put(key.clone(), v);
        a
    };
    let h = |v: &str| headers(&[("x-session-id", v)]);
    let none = headers(&[]);
    type Case<'a> =
        (&'a str, Vec<SessionIdSource>, BTreeMap<String, String>, Option<RequestAttributes>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("header source resolves", vec![header.clone()], h("sess-1"), None, Some("sess-1")),
        (
            "attribute source resolves",
            vec![attr.clone()],
            none.clone(),
            Some(with_attr(json!("agent-42"))),
            Some("agent-42"),
        ),
        ("non-string attribute skipped", vec![attr.clone()], none.clone(), Some(with_attr(json!(42))), None),
        (
            "header wins over attribute",
            vec![header.clone(), attr.clone()],
            h("from-header"),
            Some(with_attr(json!("from-attr"))),
            Some("from-header"),
        ),
        (
            "falls through to attribute",
            vec![header.clone(), attr.clone()],
            none.clone(),
            Some(with_attr(json!("from-attr"))),
            Some("from-attr"),
        ),
        ("none match", vec![header.clone(), attr.clone()], none.clone(), None, None),
        ("whitespace-only is empty", vec![header.clone()], h("   "), None, None),
    ];
    for (name, sources, hs, attrs, want) in cases {
        assert_eq!(resolve_session_id(&sources, &hs, attrs.as_ref()).as_deref(), want, "{name}");
    }
    // A producer-qualified source reads that producer's key only.
    let mut a = RequestAttributes::default();
    a.put(DataKey::new(SESSION_ID_DATA_TYPE, "mine"), json!("x"));
    let src =
        |p: &str| SessionIdSource { attribute: SESSION_ID_DATA_TYPE.into(), producer: p.into(), ..Default::default() };
    assert_eq!(resolve_session_id(&[src("mine")], &none, Some(&a)).as_deref(), Some("x"));
    assert_eq!(resolve_session_id(&[src("other")], &none, Some(&a)), None);
}

#[test]
fn session_id_config_defaults_and_validation() {
    // TestSessionIDConfig_ApplyDefaults
    let mut c = SessionIdConfig::decode(&json!({}), "sessionIdConfig").unwrap();
    c.apply_defaults();
    assert_eq!(c, SessionIdConfig::default());
    assert_eq!(c.sources[0].header, DEFAULT_SESSION_ID_HEADER);
    assert_eq!((c.eviction_ttl_seconds, c.eviction_sweep_seconds), (300.0, 10.0));
    let mut c = SessionIdConfig::decode(&json!({"sources": [{"attribute": "agent-identity"}]}), "s").unwrap();
    c.apply_defaults();
    assert_eq!(c.sources, [SessionIdSource { attribute: "agent-identity".into(), ..Default::default() }]);
    // TestSessionIDConfig_Validate
    let cfg = |sources: Vec<(&str, &str)>, ttl: f64, sweep: f64| SessionIdConfig {
        sources: sources
            .into_iter()
            .map(|(h, a)| SessionIdSource { header: h.into(), attribute: a.into(), ..Default::default() })
            .collect(),
        eviction_ttl_seconds: ttl,
        eviction_sweep_seconds: sweep,
    };
    assert!(cfg(vec![("x-session-id", "")], 300.0, 10.0).validate().is_ok());
    assert!(cfg(vec![("h", "a")], 300.0, 10.0).validate().unwrap_err().contains("sources[0]: exactly one"));
    assert!(cfg(vec![("", "")], 300.0, 10.0).validate().is_err());
    assert!(cfg(vec![("x-session-id", "")], 0.0, 10.0).validate().unwrap_err().contains("evictionTtlSeconds"));
    assert!(cfg(vec![("x-session-id", "")], 300.0, -1.0).validate().unwrap_err().contains("evictionSweepSeconds"));
}

#[test]
fn encoded_endpoint_header_filter() {
    // filter TestSessionAffinity_Filter
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    let default = SessionAffinity::from_params(SESSION_AFFINITY_FILTER, &json!({})).unwrap();
    let custom = SessionAffinity::from_params(
        SESSION_AFFINITY_FILTER,
        &json!({"encodedEndpointHeaderConfig": {"header": "X-Custom-Session"}}),
    )
    .unwrap();
    let token_b = base64_encode(b"pod-b");
    let missing = base64_encode(b"pod-missing");
    let r = |h: &str, v: &str| req_with("r", &[(h, v)]);
    let all = vec!["pod-a".to_string(), "pod-b".to_string()];
    assert_eq!(filtered(&default, &r("x-session-token", &token_b), &[&a, &b]), ["pod-b"]);
    assert_eq!(filtered(&custom, &r("x-custom-session", &token_b), &[&a, &b]), ["pod-b"]);
    assert_eq!(filtered(&custom, &r("x-session-token", &token_b), &[&a, &b]), all);
    assert_eq!(filtered(&default, &req_with("r", &[]), &[&a, &b]), all);
    assert_eq!(filtered(&default, &r("x-session-token", "garbage-token"), &[&a, &b]), all);
    assert_eq!(filtered(&default, &r("x-session-token", &missing), &[&a, &b]), all);
    assert!(filtered(&default, &r("x-session-token", &token_b), &[]).is_empty());
}

#[test]
fn encoded_endpoint_header_scorer() {
    // scorer TestSessionAffinity_Score
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    let s = SessionAffinity::from_params(SESSION_AFFINITY_SCORER, &json!({})).unwrap();
    let custom = SessionAffinity::from_params(
        SESSION_AFFINITY_SCORER,
        &json!({"encodedEndpointHeaderConfig": {"header": "x-custom-session"}}),
    )
    .unwrap();
    let token_b = base64_encode(b"pod-b");
    let score = |s: &SessionAffinity, r: &LlmRequest, eps: &[&Endpoint]| s.score(&mut CycleState::default(), r, eps);
    let r = |h: &str, v: &str| req_with("r", &[(h, v)]);
    assert_eq!(score(&s, &r("x-session-token", &token_b), &[&a, &b]), [0.0, 1.0]);
    assert_eq!(score(&custom, &r("x-custom-session", &token_b), &[&a, &b]), [0.0, 1.0]);
    assert_eq!(score(&custom, &r("x-session-token", &token_b), &[&a, &b]), [0.0, 0.0]);
    assert_eq!(score(&s, &req_with("r", &[]), &[&a, &b]), [0.0, 0.0]);
    assert_eq!(score(&s, &r("x-session-token", "garbage-token"), &[&a, &b]), [0.0, 0.0]);
    assert!(score(&s, &r("x-session-token", &token_b), &[]).is_empty());
}

#[test]
fn session_id_filter_and_scorer() {
    // filter TestSessionIDHeaderFilter_* and scorer TestSessionIDHeaderScorer_*
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    let all = vec!["pod-a".to_string(), "pod-b".to_string()];
    let f = session_id(json!({}));
    bind(&f, &with_session("s1"), "pod-b");
    assert_eq!(filtered(&f, &with_session("s1"), &[&a, &b]), ["pod-b"]);
    assert_eq!(filtered(&f, &req_with("req-no-session", &[]), &[&a, &b]), all);
    assert_eq!(filtered(&f, &with_session("s2"), &[&a, &b]), all);
    // MigratesOnAbsence.
    let f = session_id(json!({}));
    bind(&f, &with_session("s1"), "pod-a");
    let req = with_session("s1");
    filtered(&f, &req, &[&b]);
    bind(&f, &req, "pod-b");
    assert_eq!(filtered(&f, &with_session("s1"), &[&a, &b]), ["pod-b"]);

    let s = SessionAffinity::from_params(
        SESSION_AFFINITY_SCORER,
        &json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"header": "x-session-token"}]}}),
    )
    .unwrap();
    let score = |r: &LlmRequest| s.score(&mut CycleState::default(), r, &[&a, &b]);
    bind(&s, &with_session("s1"), "pod-b");
    assert_eq!(score(&with_session("s1")), [0.0, 1.0]);
    assert_eq!(score(&req_with("req-no-session", &[])), [0.0, 0.0]);
    assert_eq!(score(&with_session("s2")), [0.0, 0.0]);
}

#[test]
fn the_encoded_strategy_writes_the_token_of_the_destination_or_the_profile() {
    // TestSessionAffinity_ResponseHeader (filter and scorer)
    let target = crate::endpoint::Endpoint::new("default/pod1", "1.2.3.4:8000", crate::endpoint::Role::Both);
    let want = base64_encode(b"default/pod1");
    let req = req_with("req-1", &[]);
    let write = |params: Value, result: Option<&crate::scheduler::PickResult>, target: Option<&Endpoint>| {
        let s = SessionAffinity::from_params(SESSION_AFFINITY_FILTER, &params).unwrap();
        let mut out = BTreeMap::new();
        s.response_header(&ResponseContext { request: &req, result, target, metadata: None }, &mut out);
        out.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(write(json!({}), None, Some(&target)), [("x-session-token".to_string(), want.clone())]);
    let custom = json!({"encodedEndpointHeaderConfig": {"header": "x-custom-session"}});
    assert_eq!(write(custom, None, Some(&target)), [("x-custom-session".to_string(), want.clone())]);
    assert!(write(json!({}), None, None).is_empty(), "nil targetPod");
    let prefill =
        json!({"encodedEndpointHeaderConfig": {"header": "x-session-token-prefill"}, "profileName": "prefill"});
    let with_prefill = pick_result("decode", &[("decode", "default/pod1"), ("prefill", "default/prefill-pod")]);
    assert_eq!(
        write(prefill.clone(), Some(&with_prefill), Some(&target)),
        [("x-session-token-prefill".to_string(), base64_encode(b"default/prefill-pod"))]
    );
    let decode_only = pick_result("decode", &[("decode", "default/pod1")]);
    assert!(write(prefill.clone(), Some(&decode_only), Some(&target)).is_empty());
    assert!(write(prefill, None, Some(&target)).is_empty(), "no scheduling result");
    // The destination pick names the endpoint when there is a result.
    assert_eq!(write(json!({}), Some(&decode_only), None), [("x-session-token".to_string(), want)]);
}

#[test]
fn factory_validation() {
    // TestSessionAffinity_FactoryValidation (filter and scorer)
    let ok = [
        json!({}),
        json!({"strategy": "encoded_endpoint_header"}),
        json!({"strategy": "session_id"}),
        json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"attribute": "agent-identity"}]}}),
        json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"header": "x-session-id"}, {"attribute": "agent-identity"}]}}),
        json!({"strategy": "session_id", "sessionIdConfig": {"sources": []}}),
        json!({"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 0}}),
        // The other strategy's config is decoded, not validated.
        json!({"sessionIdConfig": {"evictionTtlSeconds": -1}}),
    ];
    let bad = [
        (json!({"strategy": "bogus"}), "strategy"),
        (json!({"strategy": ""}), "strategy"),
        (
            json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"header": "h", "attribute": "a"}]}}),
            "sources[0]: exactly one",
        ),
        (json!({"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": -1}}), "evictionTtlSeconds"),
        (json!({"strategy": "session_id", "sessionIdConfig": {"evictionSweepSeconds": -1}}), "evictionSweepSeconds"),
        // Unknown keys are refused at any depth, named by path.
        (json!({"sessionIdConfig": {"sources": [{"headr": "h"}]}}), "\"sessionIdConfig.sources[0].headr\""),
        (json!({"encodedEndpointHeaderConfig": {"name": "h"}}), "\"encodedEndpointHeaderConfig.name\""),
        (json!({"stratgy": "session_id"}), "\"stratgy\""),
    ];
    for t in [SESSION_AFFINITY_FILTER, SESSION_AFFINITY_SCORER] {
        for p in &ok {
            assert!(SessionAffinity::from_params(t, p).is_ok(), "{t}: {p}");
        }
        for (p, want) in &bad {
            let e = SessionAffinity::from_params(t, p).unwrap_err();
            assert!(e.contains(want), "{t}: {p}: {e}");
        }
    }
    // Registered: the filter (the scorer stays the registry's until it is switched).
    let h = build(SESSION_AFFINITY_FILTER, json!({"strategy": "session_id"})).unwrap();
    assert!(h.filter.is_some() && h.scorer.is_none());
    let h = scorer_handle("s", &json!({"strategy": "session_id"})).unwrap();
    assert!(h.scorer.is_some() && h.filter.is_none());
}

#[test]
fn session_id_producer_factory() {
    // sessionid TestFactory_Validation
    let err = "requires exactly one of headerName or cookieName";
    for p in [
        json!({"headerName": "x-session-id"}),
        json!({"cookieName": "llm-d-session"}),
        json!({"headerName": " X-Session-ID "}),
    ] {
        assert!(SessionIdProducer::from_params("p", &p).is_ok(), "{p}");
    }
    for p in [
        json!({}),
        json!({"headerName": "x", "cookieName": "y"}),
        json!({"headerName": "", "cookieName": ""}),
        Value::Null,
    ] {
        assert!(SessionIdProducer::from_params("p", &p).unwrap_err().contains(err), "{p}");
    }
    let e = SessionIdProducer::from_params("p", &json!({"headerName": "x", "other": "y"})).unwrap_err();
    assert!(e.contains("\"other\""), "{e}");
    assert!(SessionIdProducer::from_params("p", &json!("not-json")).is_err());
    // TestProduces_DeclaresKey: SessionIDDataKey under the plugin's name.
    let p = SessionIdProducer::from_params("session-id-producer", &json!({"headerName": "x"})).unwrap();
    assert_eq!(p.key().to_string(), "SessionIDDataKey/session-id-producer");
    let p = SessionIdProducer::from_params("mine", &json!({"headerName": "x"})).unwrap();
    assert_eq!(p.key().to_string(), "SessionIDDataKey/mine");
    assert!(build(SESSION_ID_PRODUCER, json!({"cookieName": "c"})).is_ok());
}

#[test]
fn session_id_producer_reads_a_header_or_a_cookie() {
    // TestProduce_HeaderMode, TestProduce_CookieMode, TestProduce_NoSessionDoesNotAllocateStore
    let p = SessionIdProducer::from_params("session-id-producer", &json!({"headerName": "X-Session-ID"})).unwrap();
    let produce = |p: &SessionIdProducer, h: &[(&str, &str)]| {
        let mut a = RequestAttributes::default();
        p.produce(&headers(h), &mut a);
        a
    };
    let key = p.key().clone();
    for (h, want) in [
        (vec![("x-session-id", "user-42")], Some("user-42")),
        (vec![("x-session-id", "  user-42  ")], Some("user-42")),
        (vec![("other", "irrelevant")], None),
        (vec![("x-session-id", "")], None),
        (vec![], None),
    ] {
        let a = produce(&p, &h);
        assert_eq!(a.get_str(&key), want, "{h:?}");
        assert_eq!(a.is_empty(), want.is_none());
    }
    let c = SessionIdProducer::from_params("session-id-producer", &json!({"cookieName": "llm-d-session"})).unwrap();
    for (cookie, want) in [
        ("llm-d-session=abc123", Some("abc123")),
        ("csrf=xyz; llm-d-session=abc123; theme=dark", Some("abc123")),
        ("csrf=xyz; theme=dark", None),
        ("", None),
        ("no-equals; llm-d-session=abc", Some("abc")),
        ("llm-d-session=", None),
        ("llm-d-session= abc123 ; other=v", Some("abc123")),
    ] {
        assert_eq!(produce(&c, &[("cookie", cookie)]).get_str(c.key()), want, "{cookie:?}");
    }
}

#[test]
fn produced_attributes_reach_the_session_filter() {
    // The router's documented wiring: agent-identity, or session-id-producer, feeding a
    // session_id source by attribute.
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    let f = SessionAffinity::from_params(
        SESSION_AFFINITY_FILTER,
        &json!({"strategy": "session_id", "sessionIdConfig": {"sources": [
            {"attribute": "SessionIDDataKey", "producer": "session-id-producer"},
            {"attribute": "agent-identity"},
        ]}}),
    )
    .unwrap();
    let producer = SessionIdProducer::from_params("session-id-producer", &json!({"cookieName": "sid"})).unwrap();
    let agent = AgentIdentity::from_params(&json!({})).unwrap();
    let run = |req: &LlmRequest| {
        let mut attrs = RequestAttributes::default();
        agent.request_header(&req.headers, &mut attrs).unwrap();
        producer.produce(&req.headers, &mut attrs);
        let kept = f.choose(req, Some(&attrs), &[&a, &b]);
        (attrs, kept)
    };
    let claude = req_with("r1", &[("x-claude-code-session-id", "agent-1")]);
    let (attrs, kept) = run(&claude);
    assert_eq!(kept, None, "unbound");
    f.pre_request(&claude, &attrs, &pick_result("default", &[("default", "pod-b")]));
    assert_eq!(run(&req_with("r2", &[("x-claude-code-session-id", "agent-1")])).1, Some(1));
    // The producer's cookie comes first in the sources.
    let both = req_with("r3", &[("x-claude-code-session-id", "agent-1"), ("cookie", "sid=s9")]);
    assert_eq!(run(&both).1, None);
}

#[test]
fn filters_find_the_request_attributes() {
    let (a, b) = (ep("pod-a"), ep("pod-b"));
    let f = SessionAffinity::from_params(
        SESSION_AFFINITY_FILTER,
        &json!({"strategy": "session_id", "sessionIdConfig": {"sources": [{"attribute": "agent-identity"}]}}),
    )
    .unwrap();
    let mut attrs = RequestAttributes::default();
    attrs.put(DataKey::new("agent-identity", ""), json!("agent-1"));
    let mut req = req_with("r1", &[]);
    f.pre_request(&req, &attrs, &pick_result("default", &[("default", "pod-b")]));
    req.attributes = attrs;
    let kept: Vec<String> =
        f.filter(&mut CycleState::default(), &req, vec![&a, &b]).iter().map(|e| e.id.clone()).collect();
    assert_eq!(kept, ["pod-b"]);
    let fresh = req_with("r1", &[]);
    let bare: Vec<String> =
        f.filter(&mut CycleState::default(), &fresh, vec![&a, &b]).iter().map(|e| e.id.clone()).collect();
    assert_eq!(bare.len(), 2);
}

/// The invariant: a non-empty candidate set is never filtered to nothing, and what is
/// kept was a candidate.
fn keeps_some(f: &dyn Filter, req: &LlmRequest, cands: &[&Endpoint]) -> bool {
    let out = f.filter(&mut CycleState::default(), req, cands.to_vec());
    (cands.is_empty() || !out.is_empty()) && out.iter().all(|o| cands.iter().any(|c| c.id == o.id))
}

proptest! {
    #[test]
    fn the_session_filter_never_empties_a_non_empty_set(
        binds in proptest::collection::vec((0usize..4, 0usize..7, any::<bool>()), 0..12),
        session in proptest::option::of(0usize..5),
        mask in 1u32..32,
        token in proptest::option::of(0usize..7),
    ) {
        let universe: Vec<Endpoint> = (0..5).map(|i| ep(&format!("e{i}"))).collect();
        let cands: Vec<&Endpoint> = universe.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, e)| e).collect();
        let f = session_id(json!({}));
        for (i, (s, e, choose_first)) in binds.iter().enumerate() {
            let mut r = with_session(&format!("s{s}"));
            r.id = format!("bind-{i}");
            if *choose_first {
                f.choose(&r, None, &cands);
            }
            bind(&f, &r, &format!("e{e}"));
        }
        let req = match session {
            Some(s) => with_session(&format!("s{s}")),
            None => req_with("none", &[]),
        };
        prop_assert!(keeps_some(&f, &req, &cands));
        let enc = SessionAffinity::from_params(SESSION_AFFINITY_FILTER, &json!({})).unwrap();
        let req = match token {
            Some(t) => req_with("r", &[("x-session-token", &base64_encode(format!("e{t}").as_bytes()))]),
            None => req_with("r", &[("x-session-token", "%%%")]),
        };
        prop_assert!(keeps_some(&enc, &req, &cands));
    }
}

#[test]
fn the_invariant_check_catches_a_filter_that_empties() {
    // Negative control: the conformance filter drops every candidate of a request that
    // names none, and the same check says so.
    let eps = [ep("e0"), ep("e1")];
    let cands: Vec<&Endpoint> = eps.iter().collect();
    assert!(!keeps_some(&HeaderBasedTestingFilter, &req_with("r", &[]), &cands));
    assert!(keeps_some(&session_id(json!({})), &req_with("r", &[]), &cands));
}

#[test]
fn base64_matches_go_std_encoding() {
    for (raw, enc) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("default/pod1", "ZGVmYXVsdC9wb2Qx")] {
        assert_eq!(base64_encode(raw.as_bytes()), enc);
        assert_eq!(base64_decode(enc).unwrap(), raw.as_bytes());
    }
    for bad in ["garbage-token", "Zg=", "Zg==Zg==", "Z===", "Zm9v!"] {
        assert!(base64_decode(bad).is_err(), "{bad}");
    }
    assert_eq!(base64_decode("Zm9v\r\nYmFy").unwrap(), b"foobar");
    assert_eq!(decode_token("garbage-token"), "");
}
