//! Registering a plugin type of your own, then naming it in an EndpointPickerConfig.
//!
//! The scorer here prefers endpoints carrying a label (say, newer accelerators);
//! `cargo run --example custom_scorer`.

use std::sync::Arc;

use anyhow::Result;
use llmd::scheduler::{
    CycleState, Endpoint, LlmRequest, PluginHandle, PluginRegistry, Role, Scheduler, SchedulerConfig, Scorer,
};

/// Scores 1 for endpoints whose `label` equals `value`, else 0.
struct LabelScorer {
    label: String,
    value: String,
}

impl Scorer for LabelScorer {
    fn score(&self, _: &mut CycleState, _: &LlmRequest, eps: &[&Endpoint]) -> Vec<f64> {
        eps.iter().map(|e| if e.labels.get(&self.label) == Some(&self.value) { 1.0 } else { 0.0 }).collect()
    }
}

fn main() -> Result<()> {
    let mut registry = PluginRegistry::with_builtins();
    registry.register("label-scorer", |name, params| {
        let get = |k: &str| params.get(k).and_then(|v| v.as_str()).map(String::from);
        let label = get("label").ok_or("parameter label: required")?;
        let value = get("value").ok_or("parameter value: required")?;
        Ok(PluginHandle {
            name: name.into(),
            type_name: "label-scorer".into(),
            scorer: Some(Arc::new(LabelScorer { label, value })),
            ..Default::default()
        })
    });
    let yaml = r#"
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: label-scorer
  name: prefer-h200
  parameters: {label: accelerator, value: h200}
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: prefer-h200
    weight: 2
  - pluginRef: queue-scorer
"#;
    let scheduler = Scheduler::new(SchedulerConfig::from_yaml(yaml, "inline", &registry)?, 0);
    let mut a = Endpoint::new("pod-a100", "10.0.0.1:8000", Role::Both);
    a.labels.insert("accelerator".into(), "a100".into());
    let mut h = Endpoint::new("pod-h200", "10.0.0.2:8000", Role::Both);
    h.labels.insert("accelerator".into(), "h200".into());
    h.metrics.waiting = 3;
    let pick = scheduler.pick(&LlmRequest::new("r1", "llama", "Hello"), &[a, h])?;
    let d = pick.destination().ok_or_else(|| anyhow::anyhow!("no destination"))?;
    println!("picked {} (score {:.2})", d.endpoint, d.score);
    for b in &d.breakdown {
        println!("  {}: {:.2} x {}", b.scorer, b.raw, b.weight);
    }
    Ok(())
}
