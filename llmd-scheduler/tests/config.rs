//! llm-d-style EndpointPickerConfig files load unchanged; mistakes are errors naming the
//! file, the plugin or profile, and the reason.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;

use llmd_scheduler::{PluginRegistry, SchedulerConfig, SchedulerError};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs").join(name)
}

#[test]
fn llm_d_files_load() {
    let reg = PluginRegistry::with_builtins();
    let c = SchedulerConfig::from_file(&path("prefix-aware.yaml"), &reg).unwrap();
    assert_eq!(c.profiles.len(), 1);
    let weights: Vec<(&str, f64)> = c.profiles[0].scorers.iter().map(|s| (s.0.as_str(), s.2)).collect();
    assert_eq!(
        weights,
        vec![("prefix-cache-scorer", 3.0), ("queue-scorer", 1.0), ("kv-cache-utilization-scorer", 1.0)]
    );

    let pd = SchedulerConfig::from_file(&path("pd.yaml"), &reg).unwrap();
    assert_eq!(pd.feature_gates, vec!["prepareDataPlugins"]);
    assert_eq!(pd.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["prefill", "decode"]);
    assert_eq!(pd.profiles[0].filters[0].0, "prefill-filter");

    let newer = SchedulerConfig::from_file(&path("by-label-llm-d-ai.yaml"), &reg).unwrap();
    assert_eq!(newer.profiles[1].filters[0].0, "decode-pods");
}

fn err(yaml: &str) -> String {
    match SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()) {
        Err(e @ SchedulerError::Config { .. }) => e.to_string(),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn mistakes_name_file_plugin_and_reason() {
    let profile = "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: queue-scorer\n";
    let cases = [
        (format!("plugins:\n- type: magic-scorer\n{profile}"), "epp.yaml: plugin \"magic-scorer\": unknown plugin type \"magic-scorer\""),
        ("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: nope\n".into(), "epp.yaml: schedulingProfiles[\"default\"]: pluginRef \"nope\" names no plugin"),
        (format!("plugins:\n- type: load-aware-scorer\n  parameters: {{threshold: many}}\n{profile}"), "epp.yaml: plugin \"load-aware-scorer\": parameter threshold"),
        (format!("plugins:\n- type: queue-scorer\n- type: queue-scorer\n{profile}"), "two plugins have this name"),
        (format!("apiVersion: v2\nplugins:\n- type: queue-scorer\n{profile}"), "epp.yaml: apiVersion:"),
        ("plugins:\n- type: queue-scorer\n".into(), "at least one profile"),
        (format!("plugins: 7\n{profile}"), "epp.yaml: (document):"),
        ("plugins:\n- type: queue-scorer\n- type: pd-profile-handler\nschedulingProfiles:\n- name: only\n  plugins:\n  - pluginRef: queue-scorer\n".into(), "needs a profile named \"prefill\""),
    ];
    for (yaml, want) in cases {
        let e = err(&yaml);
        assert!(e.contains(want), "{e:?} does not contain {want:?}");
    }
}

#[test]
fn the_data_layer_and_discovery_are_wired_from_the_config() {
    use llmd_scheduler::DiscoveryRef;
    use llmd_scheduler::datalayer::SourceKind;
    let reg = PluginRegistry::with_builtins();
    let c = SchedulerConfig::from_file(&path("data-layer.yaml"), &reg).unwrap();
    let kinds: Vec<&SourceKind> = c.data_layer.sources.iter().map(|s| &s.kind).collect();
    assert_eq!(
        kinds,
        [
            &SourceKind::Metrics { path: "/metrics".into(), interval: Some(std::time::Duration::from_secs(1)) },
            &SourceKind::KvEvents
        ]
    );
    assert_eq!(c.data_layer.sources[0].extractors[0].0, "core-metrics-extractor");
    assert_eq!(c.data_layer.sources[1].consumers.len(), 1);
    assert_eq!(c.discovery, Some(DiscoveryRef::File { path: "/etc/epp/endpoints.yaml".into(), watch: true }));
    assert_eq!(c.request_timeout, std::time::Duration::from_secs(30));
    // Without a dataLayer section the defaults apply: metrics → core extractor, KV events → consumers.
    let d = SchedulerConfig::from_file(&path("prefix-aware.yaml"), &reg).unwrap();
    assert_eq!(d.data_layer.sources.len(), 1, "no KV consumers, no KV source");
    assert_eq!(d.request_timeout, std::time::Duration::from_secs(120));
}

#[test]
fn data_layer_mistakes_are_named() {
    let base = "plugins:\n- type: max-score-picker\n- type: queue-scorer\n- type: core-metrics-extractor\n\
                - type: kv-events-data-source\nschedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: queue-scorer\n";
    let e = err(&format!("{base}dataLayer:\n  sources:\n  - pluginRef: nothing\n    extractors: []\n"));
    assert!(e.contains("dataLayer.sources[0]") && e.contains("nothing"), "{e}");
    let e = err(&format!("{base}dataLayer:\n  sources:\n  - pluginRef: queue-scorer\n    extractors: []\n"));
    assert!(e.contains("is not a data source"), "{e}");
    let e = err(&format!(
        "{base}dataLayer:\n  sources:\n  - pluginRef: kv-events-data-source\n    extractors:\n    - pluginRef: core-metrics-extractor\n"
    ));
    assert!(e.contains("cannot read"), "{e}");
    let e = err(&format!("{base}dataLayer:\n  discovery:\n    pluginRef: queue-scorer\n"));
    assert!(e.contains("not a discovery plugin"), "{e}");
}
