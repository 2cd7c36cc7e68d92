//! Picks end to end through loaded configurations.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;

use llmd_scheduler::{Endpoint, LlmRequest, PluginRegistry, Role, Scheduler, SchedulerConfig, SchedulerError};

fn scheduler(file: &str) -> Scheduler {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs").join(file);
    Scheduler::new(SchedulerConfig::from_file(&p, &PluginRegistry::with_builtins()).unwrap(), 42)
}

fn ep(id: &str, role: Role, waiting: u64) -> Endpoint {
    let mut e = Endpoint::new(id, format!("{id}:8000"), role);
    e.metrics.waiting = waiting;
    e
}

#[test]
fn shared_prefixes_stick_to_one_endpoint_unless_it_is_much_busier() {
    let s = scheduler("prefix-aware.yaml");
    let eps: Vec<Endpoint> = (0..4).map(|i| ep(&format!("pod-{i}"), Role::Both, 0)).collect();
    let system = "You are a helpful assistant. Answer in one sentence. ".repeat(4);
    let first = s.pick(&LlmRequest::new("r0", "m", format!("{system} Q0")), &eps).unwrap();
    let home = first.destination().unwrap().endpoint.clone();
    for i in 1..10 {
        let p = s.pick(&LlmRequest::new(format!("r{i}"), "m", format!("{system} Q{i}")), &eps).unwrap();
        let d = p.destination().unwrap();
        assert_eq!(d.endpoint, home, "request {i}");
        let prefix = d.breakdown.iter().find(|b| b.scorer == "prefix-cache-scorer").unwrap();
        assert!(prefix.raw > 0.9 && prefix.weight == 3.0, "{prefix:?}");
    }
    // The home endpoint's queue fills up: queue score 0 against 1 elsewhere, and the
    // prefix weight of 3 still wins — as configured.
    let busy: Vec<Endpoint> = eps.iter().map(|e| ep(&e.id, Role::Both, if e.id == home { 50 } else { 0 })).collect();
    let p = s.pick(&LlmRequest::new("rb", "m", format!("{system} Qb")), &busy).unwrap();
    assert_eq!(p.destination().unwrap().endpoint, home);
}

#[test]
fn pd_profiles_add_a_prefill_pick_only_for_long_uncached_prompts() {
    let s = scheduler("pd.yaml");
    let eps = [ep("prefill-0", Role::Prefill, 0), ep("decode-0", Role::Decode, 0), ep("decode-1", Role::Decode, 0)];
    let prompt = "Paged attention stores keys and values in fixed-size blocks. ".repeat(8);
    let first = s.pick(&LlmRequest::new("a", "m", prompt.clone()), &eps).unwrap();
    assert_eq!(first.primary, "decode");
    assert!(first.picks["decode"].endpoint.starts_with("decode-"));
    assert_eq!(first.picks["prefill"].endpoint, "prefill-0", "a cold 120-token prompt is disaggregated");
    // Same prompt again: the decode endpoint now holds it; nothing left to prefill remotely.
    let again = s.pick(&LlmRequest::new("b", "m", prompt), &eps).unwrap();
    assert_eq!(again.picks["decode"].endpoint, first.picks["decode"].endpoint);
    assert!(!again.picks.contains_key("prefill"), "{again:?}");
    // A short prompt is never disaggregated.
    let short = s.pick(&LlmRequest::new("c", "m", "hi"), &eps).unwrap();
    assert!(!short.picks.contains_key("prefill"));
}

#[test]
fn no_fitting_endpoint_is_a_clear_error() {
    let s = scheduler("pd.yaml");
    let only_prefill = [ep("prefill-0", Role::Prefill, 0)];
    match s.pick(&LlmRequest::new("a", "m", "x"), &only_prefill) {
        Err(SchedulerError::NoEndpoint(m)) => assert!(m.contains("decode-filter"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(s.pick(&LlmRequest::new("a", "m", "x"), &[]), Err(SchedulerError::NoEndpoint(_))));
}

#[test]
fn renamed_pd_profiles_still_name_their_prefill_and_decode_picks() {
    let s = scheduler("pd-renamed.yaml");
    let eps = [ep("prefill-0", Role::Prefill, 0), ep("decode-0", Role::Decode, 0)];
    let prompt = "Paged attention stores keys and values in fixed-size blocks. ".repeat(8);
    let pick = s.pick(&LlmRequest::new("a", "m", prompt), &eps).unwrap();
    assert_eq!(pick.primary, "generate");
    assert_eq!(pick.destination().unwrap().endpoint, "decode-0");
    assert_eq!(pick.prefill().expect("the prefill profile ran").endpoint, "prefill-0");
    assert_eq!(pick.endpoints(), ["decode-0", "prefill-0"]);
    // Negative control: the old lookup by the literal name "prefill" finds nothing here.
    assert!(!pick.picks.contains_key("prefill"));
    // A config without P/D has no prefill pick.
    let single = scheduler("prefix-aware.yaml").pick(&LlmRequest::new("b", "m", "hi"), &eps).unwrap();
    assert!(single.prefill().is_none());
}

#[test]
fn llm_d_router_topology_config_places_the_prefill_on_the_decode_host() {
    let s = scheduler("llm-d-router/pd-topology-epp-config.yaml");
    let mut eps = Vec::new();
    for (id, role, host) in [
        ("decode-a", Role::Decode, "n1"),
        ("decode-b", Role::Decode, "n2"),
        ("prefill-a", Role::Prefill, "n1"),
        ("prefill-b", Role::Prefill, "n2"),
    ] {
        let mut e = ep(id, role, 0);
        e.labels.insert("kubernetes.io/hostname".into(), host.into());
        eps.push(e);
    }
    let host = |id: &str| eps.iter().find(|e| e.id == id).unwrap().labels["kubernetes.io/hostname"].clone();
    let mut decodes = std::collections::BTreeSet::new();
    for i in 0..12 {
        let prompt = format!("request {i}: ") + &"Paged attention stores keys and values in blocks. ".repeat(10);
        let pick = s.pick(&LlmRequest::new(format!("r{i}"), "m", prompt), &eps).unwrap();
        let decode = &pick.destination().unwrap().endpoint;
        let prefill = &pick.prefill().expect("a cold 500-token prompt is disaggregated").endpoint;
        assert_eq!(host(prefill), host(decode), "{pick:?}");
        decodes.insert(decode.clone());
    }
    // Negative control: both hosts served decodes, so the match is not by chance.
    assert_eq!(decodes.len(), 2, "{decodes:?}");
}

#[test]
fn the_prefix_decider_without_a_prefix_scorer_reads_the_auto_created_producer() {
    // llm-d-router's own E/P/D sample: a prefix-based decider and no prefix scorer. The
    // router's handler consumes `approx-prefix-cache-producer`'s match and auto-creates
    // that producer; so does llmd, which then learns the decode and prefill picks.
    let s = scheduler("llm-d-router/sim-e-p-d-epp-config.yaml");
    let producer = &s.config().plugins["approx-prefix-cache-producer"];
    assert_eq!(producer.type_name, "approx-prefix-cache-producer");
    assert!(producer.prefix_source.is_some());
    let eps = [ep("prefill-0", Role::Prefill, 0), ep("decode-0", Role::Decode, 0)];
    let prompt = "Paged attention stores keys and values in fixed-size blocks. ".repeat(8);
    let first = s.pick(&LlmRequest::new("a", "m", prompt.clone()), &eps).unwrap();
    assert_eq!(first.picks["decode"].endpoint, "decode-0");
    assert_eq!(first.picks["prefill"].endpoint, "prefill-0", "a cold 120-token prompt is disaggregated");
    // The decode endpoint now holds the prompt: 16 of it, at most, left to compute.
    let again = s.pick(&LlmRequest::new("b", "m", prompt.clone()), &eps).unwrap();
    assert!(!again.picks.contains_key("prefill"), "{again:?}");
    // A new tail longer than the threshold after the shared head: disaggregated again.
    let longer = format!("{prompt}{}", "A different question about the cache this time. ".repeat(2));
    assert!(s.pick(&LlmRequest::new("c", "m", longer), &eps).unwrap().picks.contains_key("prefill"));
    assert!(!s.pick(&LlmRequest::new("d", "m", "hi"), &eps).unwrap().picks.contains_key("prefill"));

    // Every decision was counted under the router's names and labels.
    let mut text = String::new();
    s.config().handler.encode_metrics(&mut text);
    let labels = r#"plugin_name="disagg-profile-handler",plugin_type="disagg-profile-handler",model_name="m""#;
    for line in [
        format!(r#"llm_d_epp_disagg_decision_total{{{labels},decision_type="prefill-decode"}} 2"#),
        format!(r#"llm_d_epp_disagg_decision_total{{{labels},decision_type="decode-only"}} 2"#),
        r#"llm_d_inference_scheduler_disagg_decision_total{model_name="m",decision_type="prefill-decode"} 2"#.into(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
}

#[test]
fn pd_profile_handler_runs_with_a_decode_profile_alone_and_a_primary_port() {
    // The router's pd-profile-handler takes a decode profile alone (it never asks its
    // decider then) and, with primaryPort, sends the request to that port of the decode
    // pod, naming the pick in x-data-parallel-host-port.
    let yaml = "plugins:\n- type: decode-filter\n- type: always-disagg-pd-decider\n\
                - type: pd-profile-handler\n  parameters: {deciderPluginName: always-disagg-pd-decider, primaryPort: 8000}\n\
                schedulingProfiles:\n- name: decode\n  plugins:\n  - pluginRef: decode-filter\n";
    let cfg = SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let s = Scheduler::new(cfg, 0);
    let mut d = Endpoint::new("decode-0", "10.0.0.1:8002", Role::Decode);
    d.metrics.waiting = 0;
    let p = s.pick(&LlmRequest::new("a", "m", "hello"), &[d]).unwrap();
    assert_eq!(p.picks.keys().collect::<Vec<_>>(), ["decode"]);
    assert_eq!(p.picks["decode"].address, "10.0.0.1:8000");
    assert_eq!(p.headers, [("x-data-parallel-host-port".to_string(), "10.0.0.1:8002".to_string())]);
    let mut text = String::new();
    s.config().handler.encode_metrics(&mut text);
    assert_eq!(text, "", "nothing asked, nothing counted");
}

#[test]
fn pd_profile_handler_counts_its_decider_s_answers() {
    let s = scheduler("pd.yaml");
    let eps = [ep("prefill-0", Role::Prefill, 0), ep("decode-0", Role::Decode, 0)];
    let prompt = "Paged attention stores keys and values in fixed-size blocks. ".repeat(8);
    for (id, p) in [("a", prompt.as_str()), ("b", prompt.as_str()), ("c", "hi")] {
        s.pick(&LlmRequest::new(id, "m", p), &eps).unwrap();
    }
    s.pick(&LlmRequest::new("d", "", "hi"), &eps).unwrap();
    let mut text = String::new();
    s.config().handler.encode_metrics(&mut text);
    let labels = r#"plugin_name="pd-profile-handler",plugin_type="pd-profile-handler""#;
    for line in [
        format!(r#"llm_d_epp_pd_decision_total{{{labels},model_name="m",decision_type="prefill-decode"}} 1"#),
        format!(r#"llm_d_epp_pd_decision_total{{{labels},model_name="m",decision_type="decode-only"}} 2"#),
        format!(r#"llm_d_epp_pd_decision_total{{{labels},model_name="unknown",decision_type="decode-only"}} 1"#),
        r#"llm_d_inference_scheduler_pd_decision_total{model_name="m",decision_type="decode-only"} 2"#.into(),
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    assert!(!text.contains("disagg_decision"), "{text}");
}
