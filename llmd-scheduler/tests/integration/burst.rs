//! `burst-prefix-cache-producer` through the picker: a burst of prompt-sharing requests
//! waits out its window and lands on one endpoint.

#![allow(clippy::unwrap_used)]
use std::collections::HashSet;
use std::path::PathBuf;

use llmd_scheduler::picker::{EndpointPicker, PickerConfig};
use llmd_scheduler::{Endpoint, LlmRequest, ManualClock, PluginRegistry, Role, Scheduler, SchedulerConfig, datastore};

#[tokio::test]
async fn a_burst_lands_on_one_endpoint_through_the_picker() {
    let f =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/configs/llm-d-router/epp-burst-prefix-cache-config.yaml");
    let config = SchedulerConfig::from_file(&f, &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(std::sync::Arc::new(ManualClock::new()));
    for i in 0..4 {
        store.upsert(Endpoint::new(format!("pod{i}"), format!("10.0.0.{i}:8000"), Role::Both));
    }
    let picker = EndpointPicker::new(Scheduler::new(config, 3), store, PickerConfig::default(), None);
    let reqs: Vec<LlmRequest> = (0..12)
        .map(|i| LlmRequest {
            id: format!("r{i}"),
            model: "m".into(),
            token_ids: Some(vec![if i < 8 { 1 } else { 2 }; 300]),
            ..Default::default()
        })
        .collect();
    let started = std::time::Instant::now();
    futures_util::future::join_all(reqs.iter().map(|r| picker.burst_join(r))).await;
    let waited = started.elapsed();
    assert!(waited >= std::time::Duration::from_millis(95), "{waited:?}");
    let mut held = Vec::new();
    let mut dests = Vec::new();
    for r in &reqs {
        let p = picker.pick_request(r, &HashSet::new()).unwrap();
        dests.push(p.destination_address().unwrap().to_string());
        held.push(p);
    }
    eprintln!("{dests:?} waited {waited:?}");
    assert!(dests[..8].iter().all(|d| *d == dests[0]));
    assert!(dests[8..].iter().all(|d| *d == dests[8]));
    assert_ne!(dests[0], dests[8]);
}
