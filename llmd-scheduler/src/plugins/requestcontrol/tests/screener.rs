//! `disaggregatedset-rollout-screener` and label selectors.

use std::collections::BTreeMap;

use llmd_kvcache::rng::SplitMix64;
use serde_json::{Value, json};

use super::{build, req_with};
use crate::endpoint::{Endpoint, EndpointStatus, Role};
use crate::plugins::requestcontrol::screener::*;
use crate::plugins::requestcontrol::{
    RequestControl, RequestControlChain, ResponseContext, ResponseHeaderProcessor, Screener,
};
use crate::request::LlmRequest;

const REV: &str = "disaggregatedset.x-k8s.io/revision";
const ROLE: &str = "disaggregatedset.x-k8s.io/role";

/// `validConfig()`.
fn valid() -> Value {
    json!({
        "scope": {"labelSelector": "disaggregatedset.x-k8s.io/name=my-set"},
        "headerSelectors": [{"name": "revision", "headerName": "x-disagg-revision", "labelKey": REV, "mode": "strict"}],
        "revisionGating": {"revisionLabelKey": REV, "roleLabelKey": ROLE, "mode": "sum", "requireRoles": {"values": ["prefill", "decode"]}},
    })
}

fn with(mut v: Value, path: &[&str], x: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = match p.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*p],
        };
    }
    cur[path[path.len() - 1]] = x;
    v
}

fn err(p: Value) -> String {
    RolloutConfig::from_params(&p).unwrap_err()
}

#[test]
fn config_validation() {
    // config_test.go TestValidate_*
    assert!(RolloutConfig::from_params(&valid()).is_ok());
    assert!(err(with(valid(), &["scope", "labelSelector"], json!(""))).contains("scope.labelSelector"));
    assert!(
        err(with(valid(), &["scope", "labelSelector"], json!("not a valid selector!!")))
            .contains("scope.labelSelector")
    );
    assert!(RolloutConfig::from_params(&with(valid(), &["headerSelectors"], Value::Null)).is_ok());
    let sel = |k: &str, v: Value| with(valid(), &["headerSelectors", "0", k], v);
    assert!(err(sel("name", json!(""))).contains("headerSelectors[0].name"));
    assert!(err(sel("headerName", json!(""))).contains("headerSelectors[0].headerName"));
    assert!(err(sel("labelKey", json!(""))).contains("headerSelectors[0].labelKey"));
    assert!(err(sel("mode", json!("loose"))).contains("headerSelectors[0].mode"));
    let second = |name: &str, header: &str| {
        let mut v = valid();
        v["headerSelectors"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": name, "headerName": header, "labelKey": "foo", "mode": "strict"}));
        v
    };
    assert!(err(second("revision", "x-disagg-other")).contains("duplicate name"));
    assert!(err(second("other", "X-Disagg-Revision")).contains("duplicate headerName"));
    let gating = |k: &str, v: Value| with(valid(), &["revisionGating", k], v);
    let c = RolloutConfig::from_params(&gating("roleLabelKey", json!(""))).unwrap();
    assert_eq!(c.gating.role_label, DEFAULT_ROLE_LABEL);
    let c = RolloutConfig::from_params(&gating("revisionLabelKey", json!(""))).unwrap();
    assert_eq!(c.gating.revision_label, DEFAULT_REVISION_LABEL);
    assert!(
        err(with(valid(), &["revisionGating", "requireRoles", "values"], Value::Null))
            .contains("revisionGating.requireRoles.values")
    );
    assert!(
        err(with(valid(), &["revisionGating", "requireRoles", "values"], json!(["prefill", "prefill"])))
            .contains("duplicate role")
    );
    assert!(err(with(valid(), &["revisionGating"], Value::Null)).contains("revisionGating is required"));
    assert!(err(gating("mode", json!("bogus"))).contains("revisionGating.mode"));
    assert!(err(gating("requireRoles", Value::Null)).contains("revisionGating.requireRoles is required"));
    let max_role = gating("mode", json!("max-role"));
    assert!(RolloutConfig::from_params(&max_role).is_ok());
    assert!(
        err(with(max_role, &["revisionGating", "requireRoles"], Value::Null))
            .contains("revisionGating.requireRoles is required when revisionGating.mode=max-role")
    );
    let disabled = with(gating("mode", json!("disabled")), &["revisionGating", "requireRoles"], Value::Null);
    assert!(RolloutConfig::from_params(&disabled).is_ok());
    // TestSelector_UnmarshalJSON_LowercasesHeaderName and _RejectsUnknownFields.
    let c = RolloutConfig::from_params(&sel("headerName", json!("X-Disagg-Revision"))).unwrap();
    assert_eq!(c.header_selectors[0].header_name, "x-disagg-revision");
    assert!(err(sel("unknown", json!("value"))).contains("\"headerSelectors[0].unknown\""));
    assert!(build(ROLLOUT_SCREENER, valid()).is_ok());
    assert!(build(ROLLOUT_SCREENER, json!({})).unwrap_err().contains("scope.labelSelector is required"));
}

#[test]
fn gating_is_active_for_sum_and_max_role_with_roles() {
    // TestGating_Active
    let g = |mode, roles: Option<Vec<String>>| RevisionGating {
        revision_label: REV.into(),
        role_label: ROLE.into(),
        mode,
        require_roles: roles,
    };
    let r = || Some(vec!["r".to_string()]);
    assert!(g(GatingMode::Sum, r()).active());
    assert!(!g(GatingMode::Sum, None).active());
    assert!(g(GatingMode::MaxRole, r()).active());
    assert!(!g(GatingMode::MaxRole, None).active());
    assert!(!g(GatingMode::Disabled, r()).active());
}

/// `readyPod`: an endpoint in scope with a revision and a role.
fn pod(name: &str, revision: &str, role: &str) -> Endpoint {
    let mut e = Endpoint::new(format!("default/{name}"), "10.0.0.1:8000", Role::Both);
    e.labels = [(REV, revision), (ROLE, role), ("disaggregatedset.x-k8s.io/name", "my-set")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e
}

/// `seedCounts`.
fn pods(counts: &[(&str, &str, usize)]) -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (rev, role, n) in counts {
        for i in 0..*n {
            out.push(pod(&format!("{rev}-{role}-{i}"), rev, role));
        }
    }
    out
}

/// A scheduling candidate of `revision` (the Go tests' `endpoint(name, revLabels(..))`).
fn candidate(name: &str, revision: &str) -> Endpoint {
    let mut e = Endpoint::new(format!("default/{name}"), "10.0.0.1:8000", Role::Both);
    e.labels = BTreeMap::from([(REV.to_string(), revision.to_string()), (ROLE.to_string(), "prefill".to_string())]);
    e
}

fn screener(mode: &str) -> RolloutScreener {
    RolloutScreener::from_params("test-screener", &with(valid(), &["revisionGating", "mode"], json!(mode))).unwrap()
}

fn shares(s: &RolloutScreener, pool: &[Endpoint]) -> BTreeMap<String, f64> {
    s.distribution(&pool.iter().collect::<Vec<_>>()).shares
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn the_distribution_counts_ready_endpoints_in_scope() {
    // TestPodNotificationsTrackOnlyReadyPodsInScope
    let s = screener("sum");
    let mut out_of_scope = pod("p2", "v2", "decode");
    out_of_scope.labels.insert("disaggregatedset.x-k8s.io/name".into(), "other".into());
    let mut not_ready = pod("p3", "v1", "decode");
    not_ready.status = EndpointStatus::NotReady;
    let pool = [pod("p1", "v1", "prefill"), out_of_scope, not_ready];
    let d = s.distribution(&pool.iter().collect::<Vec<_>>());
    assert_eq!(d.role_counts, BTreeMap::from([("v1".to_string(), BTreeMap::from([("prefill".to_string(), 1)]))]));
    assert!(s.distribution(&[]).role_counts.is_empty(), "deleted");

    // TestPodNotificationsRefreshCachedRevisionShares
    let mut pool = pods(&[("v1", "prefill", 2), ("v1", "decode", 2), ("v2", "prefill", 1), ("v2", "decode", 1)]);
    let sh = shares(&s, &pool);
    assert!(close(sh["v1"], 2.0 / 3.0) && close(sh["v2"], 1.0 / 3.0), "{sh:?}");
    let moved = pool.iter_mut().find(|e| e.id == "default/v1-decode-0").unwrap();
    moved.labels.insert(REV.into(), "v2".into());
    let sh = shares(&s, &pool);
    assert!(close(sh["v1"], 0.5) && close(sh["v2"], 0.5), "{sh:?}");
    pool.iter_mut().find(|e| e.id == "default/v1-decode-0").unwrap().status = EndpointStatus::NotReady;
    let sh = shares(&s, &pool);
    assert!(close(sh["v1"], 3.0 / 5.0) && close(sh["v2"], 2.0 / 5.0), "{sh:?}");
}

#[test]
fn weights_coverage_and_dominant_role() {
    // TestRevisionSumWeightAndCoverage
    let req = ["prefill".to_string(), "decode".to_string()];
    let m = |p: usize, d: usize| {
        let mut m = BTreeMap::new();
        if p > 0 {
            m.insert("prefill".to_string(), p);
        }
        if d > 0 {
            m.insert("decode".to_string(), d);
        }
        m
    };
    assert_eq!(revision_sum_weight(&m(2, 8), &req), Some(10));
    assert_eq!(revision_sum_weight(&m(0, 8), &req), None);
    // TestDominantRoleUsesCountsAcrossCoveredRevisions
    let (v1, v2) = (m(8, 1), m(2, 4));
    let (k1, k2) = ("v1".to_string(), "v2".to_string());
    let covered = BTreeMap::from([(&k1, &v1), (&k2, &v2)]);
    let rev = ["decode".to_string(), "prefill".to_string()];
    assert_eq!(dominant_role(&covered, &req), "prefill");
    assert_eq!(dominant_role(&covered, &rev), "prefill");
    let (t1, t2) = (m(8, 2), m(2, 8));
    let tied = BTreeMap::from([(&k1, &t1), (&k2, &t2)]);
    assert_eq!(dominant_role(&tied, &req), "prefill");
}

/// The Go tables' counts: (mode, v1 prefill, v1 decode, v2 prefill, v2 decode, v2's share).
const MODES: [(&str, usize, usize, usize, usize, f64); 6] = [
    ("sum", 2, 8, 1, 2, 3.0 / 13.0),
    ("max-role", 2, 8, 1, 2, 2.0 / 10.0),
    ("sum", 8, 8, 2, 2, 2.0 / 10.0),
    ("max-role", 8, 8, 2, 2, 2.0 / 10.0),
    ("sum", 8, 2, 2, 1, 3.0 / 13.0),
    ("max-role", 8, 2, 2, 1, 2.0 / 10.0),
];

#[test]
fn modes_give_the_expected_shares() {
    // TestRevisionModesCacheExpectedShares
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str, usize)>, f64);
    let mut cases: Vec<Case> = MODES
        .iter()
        .map(|(m, a, b, c, d, w)| {
            (*m, vec![("v1", "prefill", *a), ("v1", "decode", *b), ("v2", "prefill", *c), ("v2", "decode", *d)], *w)
        })
        .collect();
    cases.push((
        "max-role",
        vec![("v1", "prefill", 8), ("v1", "decode", 1), ("v2", "prefill", 2), ("v2", "decode", 4)],
        0.2,
    ));
    cases.push((
        "max-role",
        vec![
            ("v1", "prefill", 2),
            ("v1", "decode", 8),
            ("v2", "prefill", 1),
            ("v2", "decode", 2),
            ("v3", "prefill", 100),
        ],
        0.2,
    ));
    for (mode, counts, want) in cases {
        let sh = shares(&screener(mode), &pods(&counts));
        assert!(close(sh["v2"], want) && close(sh["v1"], 1.0 - want), "{mode} {counts:?}: {sh:?}");
        assert!(!sh.contains_key("v3"));
    }
}

#[test]
fn weighted_pick() {
    // TestPickWeightedRevision
    let sh = BTreeMap::from([("v1".to_string(), 0.75), ("v2".to_string(), 0.25)]);
    assert_eq!(pick_weighted_revision(&sh, 0.0), "v1");
    assert_eq!(pick_weighted_revision(&sh, 0.9), "v2");
    assert_eq!(pick_weighted_revision(&BTreeMap::new(), 0.5), "");
}

fn screen(s: &RolloutScreener, req: &LlmRequest, pool: &[Endpoint], cands: &[Endpoint], draw: f64) -> Vec<String> {
    let pool: Vec<&Endpoint> = pool.iter().collect();
    s.screen(req, &pool, cands.iter().collect(), &mut || draw).iter().map(|e| e.id.clone()).collect()
}

#[test]
fn uncovered_revisions_fail_closed() {
    let s = screener("sum");
    let cands = [candidate("v1-p", "v1"), candidate("v2-p", "v2")];
    // TestScreenerPinnedUncoveredRevisionFailsClosed
    let pool = pods(&[("v1", "prefill", 3), ("v2", "prefill", 1), ("v2", "decode", 1)]);
    assert!(screen(&s, &req_with("r", &[("x-disagg-revision", "v1")]), &pool, &cands, 0.0).is_empty());
    // TestScreenerSingleRevisionStillChecksCrossRoleCoverage
    let pool = pods(&[("v1", "prefill", 2)]);
    assert!(screen(&s, &req_with("r", &[]), &pool, &cands[..1], 0.0).is_empty());
    // TestScreenerFailsClosedUntilPodNotificationsArrive
    assert!(screen(&s, &req_with("r", &[]), &[], &cands[..1], 0.0).is_empty());
}

#[test]
fn revisions_are_drawn_by_share() {
    // TestScreenerWeightedDistribution: 10 000 draws, v2's share within 0.03.
    for (mode, a, b, c, d, want) in MODES {
        let s = screener(mode);
        let pool = pods(&[("v1", "prefill", a), ("v1", "decode", b), ("v2", "prefill", c), ("v2", "decode", d)]);
        let pool_refs: Vec<&Endpoint> = pool.iter().collect();
        let cands: Vec<Endpoint> = (0..a)
            .map(|i| candidate(&format!("v1-{i}"), "v1"))
            .chain((0..c).map(|i| candidate(&format!("v2-{i}"), "v2")))
            .collect();
        let mut rng = SplitMix64::new(7);
        let req = req_with("r", &[]);
        let mut v2 = 0;
        for _ in 0..10_000 {
            let got = s.screen(&req, &pool_refs, cands.iter().collect(), &mut || rng.next_f64());
            assert!(!got.is_empty());
            assert!(got.iter().all(|e| e.labels[REV] == got[0].labels[REV]), "one revision survives");
            if got[0].labels[REV] == "v2" {
                v2 += 1;
            }
        }
        let share = v2 as f64 / 10_000.0;
        assert!((share - want).abs() <= 0.03, "{mode}: {share} vs {want}");
    }
}

#[test]
fn strict_selectors_screen_and_count_misses() {
    // TestStrictSelectors
    let s = screener("disabled");
    let cands = [candidate("v1", "v1"), candidate("v2", "v2")];
    assert_eq!(screen(&s, &req_with("r", &[("x-disagg-revision", "v2")]), &[], &cands, 0.0), ["default/v2"]);
    assert!(screen(&s, &req_with("r", &[("x-disagg-revision", "missing")]), &[], &cands, 0.0).is_empty());
    assert_eq!(s.strict_no_match("revision"), 1);
    // No header: no screening.
    assert_eq!(screen(&s, &req_with("r", &[]), &[], &cands, 0.0).len(), 2);
    // A prefer selector never screens.
    let p = with(
        with(valid(), &["headerSelectors", "0", "mode"], json!("prefer")),
        &["revisionGating", "mode"],
        json!("disabled"),
    );
    let s = RolloutScreener::from_params("p", &p).unwrap();
    assert_eq!(screen(&s, &req_with("r", &[("x-disagg-revision", "missing")]), &[], &cands, 0.0).len(), 2);
    // With gating on, a strict header skips the draw and pins its revision.
    let s = screener("sum");
    let pool = pods(&[("v1", "prefill", 1), ("v1", "decode", 1), ("v2", "prefill", 1), ("v2", "decode", 1)]);
    let pool_refs: Vec<&Endpoint> = pool.iter().collect();
    let mut draws = 0;
    let got = s.screen(&req_with("r", &[("x-disagg-revision", "v2")]), &pool_refs, cands.iter().collect(), &mut || {
        draws += 1;
        0.0
    });
    assert_eq!((got.len(), got[0].id.as_str(), draws), (1, "default/v2", 0));
}

#[test]
fn response_headers_stamp_every_selector() {
    // TestResponseHeaderStampsSelectors and _WithGatingDisabled
    let req = req_with("r", &[]);
    let target = candidate("v1-p", "v1");
    for mode in ["sum", "disabled"] {
        let s = screener(mode);
        let mut out = BTreeMap::new();
        s.response_header(
            &ResponseContext { request: &req, result: None, target: Some(&target), metadata: None },
            &mut out,
        );
        assert_eq!(out, BTreeMap::from([("x-disagg-revision".to_string(), "v1".to_string())]));
        let mut out = BTreeMap::new();
        s.response_header(&ResponseContext { request: &req, result: None, target: None, metadata: None }, &mut out);
        assert!(out.is_empty());
    }
}

#[test]
fn the_chain_keeps_what_every_screener_keeps() {
    // The director's runScreeners: each screener sees every candidate; the survivors
    // are the intersection, in candidate order.
    let by_rev = |rev: &str| {
        let p = json!({
            "scope": {"labelSelector": "x"},
            "headerSelectors": [{"name": rev, "headerName": format!("x-{rev}"), "labelKey": REV, "mode": "strict"}],
            "revisionGating": {"mode": "disabled"},
        });
        let s = std::sync::Arc::new(RolloutScreener::from_params(rev, &p).unwrap());
        (rev.to_string(), RequestControl { screener: Some(s), ..Default::default() })
    };
    let chain = RequestControlChain::new([by_rev("a"), by_rev("b")]);
    let cands = [candidate("1", "v1"), candidate("2", "v2"), candidate("3", "v1")];
    let req = req_with("r", &[("x-a", "v1")]);
    let got = chain.screen(&req, &[], cands.iter().collect(), &mut || 0.0);
    assert_eq!(got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["default/1", "default/3"]);
    let req = req_with("r", &[("x-a", "v1"), ("x-b", "v2")]);
    assert!(chain.screen(&req, &[], cands.iter().collect(), &mut || 0.0).is_empty());
}

#[test]
fn label_selectors_parse_and_match_as_kubernetes() {
    let labels: BTreeMap<String, String> =
        [("app", "vllm"), ("tier", "gpu"), ("n", "5"), ("example.com/role", "decode")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    for (sel, want) in [
        ("app=vllm", true),
        ("app==vllm,tier=gpu", true),
        ("app!=vllm", false),
        ("missing!=x", true),
        ("app in (vllm, sglang)", true),
        ("app notin (vllm)", false),
        ("tier", true),
        ("!tier", false),
        ("!missing", true),
        ("n>4,n<6", true),
        ("n>5", false),
        ("example.com/role=decode", true),
        ("app=", false),
        ("", true),
    ] {
        let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
        assert_eq!(s.matches(&labels), want, "{sel}");
    }
    for bad in
        ["not a valid selector!!", "app=vllm,", "app in vllm", "n>x", "-bad=1", "app=a b", "a=(", "Bad_Prefix.COM/x=1"]
    {
        assert!(LabelSelector::parse(bad).is_err(), "{bad}");
    }
}
