//! The autoscaler on Kubernetes (`llmd autoscale kube`): llm-d WVA's controller in
//! shape. Each pass lists the namespace's `VariantAutoscaling` resources, resolves each
//! one's Deployment and its ready pods, and reads every pod's `/metrics` directly (no
//! Prometheus needed). The variants of one model are decided together by the policy,
//! through HPA-style stabilization. The decision is written as:
//! - the Deployment's `scale` subresource (unless `--dry-run`: advisory mode);
//! - the resource's status: `desiredOptimizedAlloc`, `currentAlloc`,
//!   `actuation.applied`, and the conditions `TargetResolved`, `MetricsAvailable`,
//!   `OptimizationReady`;
//! - WVA's metrics for an HPA or KEDA to consume: `wva_desired_replicas`,
//!   `wva_current_replicas`, `wva_desired_ratio`, `wva_replica_scaling_total`.
//!
//! Scale from zero: with a model's endpoint picker named ([`KubeAutoscaler::epp_metrics`]),
//! the requests its flow control holds count as load, and a variant at zero replicas
//! gets one.
//!
//! The arrival rate is the rate requests finish (`vllm:request_success_total`), as WVA
//! reads it: under overload it is the served rate, below the demand; the picker's held
//! requests make up part of the difference.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use llmd_autoscale::{Decision, Load, ModelSnapshot, Policy, StabilizeConfig, Stabilizer, VariantState};
use llmd_k8s::autoscaling::{Actuation, Allocation, METRICS_PORT, OptimizedAlloc, VariantAutoscaling};
use llmd_k8s::{k8s_openapi, kube};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::scrape::Windows;

/// How long a pod's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// The field manager named on writes.
const MANAGER: &str = "llmd-autoscale";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VariantLabels {
    variant_name: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScalingLabels {
    variant_name: String,
    namespace: String,
    direction: String,
    reason: String,
}

/// WVA's output metrics.
#[derive(Default)]
pub struct WvaMetrics {
    desired: Family<VariantLabels, Gauge>,
    current: Family<VariantLabels, Gauge>,
    ratio: Family<VariantLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    scaling: Family<ScalingLabels, Counter>,
}

impl WvaMetrics {
    /// Registers the metrics in `registry` under WVA's names.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("wva_desired_replicas", "Replicas the autoscaler wants per variant", self.desired.clone());
        registry.register("wva_current_replicas", "Replicas the variant's target has", self.current.clone());
        registry.register("wva_desired_ratio", "Desired over current replicas", self.ratio.clone());
        registry.register("wva_replica_scaling", "Scaling decisions, by direction and reason", self.scaling.clone());
    }
}

/// Per model: its policy and stabilizer (they keep state between passes).
struct ModelState {
    policy: Box<dyn Policy>,
    stabilizer: Stabilizer,
}

/// A variant resolved for one pass.
struct Resolved {
    va: VariantAutoscaling,
    state: Option<VariantState>,
    problem: Option<String>,
}

/// See the module docs.
pub struct KubeAutoscaler {
    client: kube::Client,
    namespace: String,
    make_policy: Box<dyn Fn() -> Result<Box<dyn Policy>> + Send + Sync>,
    stabilize: StabilizeConfig,
    dry_run: bool,
    models: BTreeMap<String, ModelState>,
    windows: Windows,
    http: reqwest::Client,
    metrics: Arc<WvaMetrics>,
    epp: BTreeMap<String, String>,
}

impl std::fmt::Debug for KubeAutoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAutoscaler").field("namespace", &self.namespace).field("dry_run", &self.dry_run).finish()
    }
}

fn condition(kind: &str, ok: bool, reason: &str, message: String, now: &Time) -> Condition {
    Condition {
        type_: kind.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: None,
    }
}

impl KubeAutoscaler {
    /// Decides for the `VariantAutoscaling` resources of `namespace`, one policy from
    /// `make_policy` per model; `dry_run` writes status and metrics only.
    pub fn new(
        client: kube::Client,
        namespace: impl Into<String>,
        make_policy: Box<dyn Fn() -> Result<Box<dyn Policy>> + Send + Sync>,
        stabilize: StabilizeConfig,
        dry_run: bool,
    ) -> Result<Self> {
        Stabilizer::new(stabilize.clone())?;
        let http = reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build()?;
        Ok(KubeAutoscaler {
            client,
            namespace: namespace.into(),
            make_policy,
            stabilize,
            dry_run,
            models: BTreeMap::new(),
            windows: Windows::default(),
            http,
            metrics: Arc::new(WvaMetrics::default()),
            epp: BTreeMap::new(),
        })
    }

    /// Reads `model`'s held requests from its endpoint picker's `/metrics` at `url`
    /// (`llm_d_epp_flow_control_queue_size`, or its deprecated name): requests held
    /// with no replica bring one back (scale from zero, as WVA's loop does).
    pub fn epp_metrics(&mut self, model: impl Into<String>, url: impl Into<String>) {
        self.epp.insert(model.into(), url.into());
    }

    /// Requests `model`'s picker holds; 0 when unknown (logged).
    async fn held(&self, model: &str) -> f64 {
        let Some(url) = self.epp.get(model) else { return 0.0 };
        let text = match self.http.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                tracing::warn!(model, status = %r.status(), "reading the picker's metrics");
                return 0.0;
            }
            Err(e) => {
                tracing::warn!(model, error = %e, "reading the picker's metrics");
                return 0.0;
            }
        };
        llmd_scheduler::scrape::samples(&text)
            .filter(|(name, _, _)| {
                matches!(*name, "llm_d_epp_flow_control_queue_size" | "inference_extension_flow_control_queue_size")
            })
            .map(|(_, _, v)| v.max(0.0))
            .sum()
    }

    /// Its WVA metrics (register them with [`WvaMetrics::register`]).
    pub fn metrics(&self) -> Arc<WvaMetrics> {
        self.metrics.clone()
    }

    /// The target's replicas (spec and ready) and the ready pods' metrics endpoints.
    async fn resolve(&self, va: &VariantAutoscaling) -> Result<(i32, i32, Vec<(String, String)>)> {
        let target = &va.spec.scale_target_ref;
        if target.kind != "Deployment" {
            anyhow::bail!("scaleTargetRef kind {:?}: only Deployment is supported", target.kind);
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let d = deployments.get(&target.name).await.with_context(|| format!("Deployment {}", target.name))?;
        let spec = d.spec.unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1);
        let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let selector = spec
            .selector
            .match_labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        if selector.is_empty() {
            // An empty selector lists every pod of the namespace; expressions are not read.
            anyhow::bail!("Deployment {} selects its pods without matchLabels, which is not supported", target.name);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = pods.list(&ListParams::default().labels(&selector)).await.context("listing the target's pods")?;
        let endpoints = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| {
                let ip = p.status.as_ref()?.pod_ip.clone()?;
                let port = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(METRICS_PORT))
                    .cloned()
                    .or_else(|| {
                        let c = p.spec.as_ref()?.containers.first()?;
                        Some(c.ports.as_ref()?.first()?.container_port.to_string())
                    })
                    .unwrap_or_else(|| "8000".into());
                Some((p.metadata.name.clone().unwrap_or_default(), format!("http://{ip}:{port}/metrics")))
            })
            .collect();
        Ok((replicas, ready, endpoints))
    }

    /// One pass at `now` (seconds on the caller's clock): every variant decided, its
    /// decision written (scale unless dry-run, status, metrics). Returns the decisions
    /// by resource name.
    pub async fn reconcile(&mut self, now: f64) -> Result<Vec<(String, Decision)>> {
        let vas: Api<VariantAutoscaling> = Api::namespaced(self.client.clone(), &self.namespace);
        let list = vas.list(&ListParams::default()).await.context("listing VariantAutoscaling resources")?;
        let stamp = Time(k8s_openapi::jiff::Timestamp::now());
        // Resolve every variant, read its pods.
        let mut by_model: BTreeMap<String, Vec<Resolved>> = BTreeMap::new();
        let mut readings: BTreeMap<String, Vec<super::scrape::Reading>> = BTreeMap::new();
        let mut live = Vec::new();
        for va in list.items {
            let name = va.metadata.name.clone().unwrap_or_default();
            let checked = va.cost().and_then(|c| va.bounds().map(|b| (c, b)));
            let (cost, (min, max)) = match checked {
                Ok(x) => x,
                Err(e) => {
                    let problem = Some(e.to_string());
                    by_model.entry(va.spec.model_id.clone()).or_default().push(Resolved { va, state: None, problem });
                    continue;
                }
            };
            match self.resolve(&va).await {
                Ok((replicas, ready, endpoints)) => {
                    let mut got = Vec::new();
                    for (pod, url) in endpoints {
                        let text = match self.http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                            Ok(r) => {
                                tracing::warn!(pod, status = %r.status(), "scraping metrics");
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(pod, error = %e, "scraping metrics");
                                continue;
                            }
                        };
                        live.push(pod.clone());
                        got.push(self.windows.read(&pod, &name, &text, now));
                    }
                    let current = replicas.max(0) as u32;
                    let state = VariantState {
                        name: name.clone(),
                        cost,
                        current,
                        ready: (ready.max(0) as u32).min(current),
                        min,
                        max,
                    };
                    readings.insert(name, got);
                    by_model.entry(va.spec.model_id.clone()).or_default().push(Resolved {
                        va,
                        state: Some(state),
                        problem: None,
                    });
                }
                Err(e) => {
                    let problem = Some(format!("{e:#}"));
                    by_model.entry(va.spec.model_id.clone()).or_default().push(Resolved { va, state: None, problem });
                }
            }
        }
        self.windows.retain(&live);
        let mut out = Vec::new();
        for (model, variants) in by_model {
            let states: Vec<VariantState> = variants.iter().filter_map(|v| v.state.clone()).collect();
            let reads: Vec<&super::scrape::Reading> =
                states.iter().flat_map(|s| readings.get(&s.name).into_iter().flatten()).collect();
            let mean = |pick: fn(&super::scrape::Reading) -> (f64, f64)| {
                let (sum, n) = reads.iter().map(|r| pick(r)).fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
                if n > 0.0 { sum / n } else { 0.0 }
            };
            let load = Load {
                arrival_rate: reads.iter().map(|r| r.finished_rate).sum(),
                avg_input_tokens: mean(|r| r.prompt),
                avg_output_tokens: mean(|r| r.output),
                queued: self.held(&model).await,
                ..Load::default()
            };
            let snapshot = ModelSnapshot {
                model: model.clone(),
                now,
                variants: states,
                replicas: reads.iter().map(|r| r.metrics.clone()).collect(),
                load,
            };
            let decisions = if snapshot.variants.is_empty() {
                Vec::new()
            } else {
                if !self.models.contains_key(&model) {
                    let state = ModelState {
                        policy: (self.make_policy)()?,
                        stabilizer: Stabilizer::new(self.stabilize.clone())?,
                    };
                    self.models.insert(model.clone(), state);
                }
                let Some(m) = self.models.get_mut(&model) else { continue };
                let decided = match m.policy.decide(&snapshot) {
                    Ok(d) => d,
                    Err(e) => {
                        // One model's failure leaves the others to be decided.
                        tracing::warn!(model, error = %e, "deciding");
                        continue;
                    }
                };
                m.stabilizer.apply_bounded(now, &decided, &snapshot.variants)
            };
            for v in variants {
                let name = v.va.metadata.name.clone().unwrap_or_default();
                let decision = decisions.iter().find(|d| d.variant == name).cloned();
                if let Err(e) = self.write(&vas, &v, decision.as_ref(), &snapshot, &stamp).await {
                    // Logged; the other variants are still written.
                    tracing::warn!(variant = %name, error = %format!("{e:#}"), "writing a decision");
                    continue;
                }
                if let Some(d) = decision {
                    out.push((name, d));
                }
            }
        }
        Ok(out)
    }

    /// Writes one variant's decision: scale, status, metrics.
    async fn write(
        &self,
        vas: &Api<VariantAutoscaling>,
        v: &Resolved,
        d: Option<&Decision>,
        snapshot: &ModelSnapshot,
        now: &Time,
    ) -> Result<()> {
        let name = v.va.metadata.name.clone().unwrap_or_default();
        let mut status = v.va.status.clone().unwrap_or_default();
        let mut conditions = Vec::new();
        let mut applied = false;
        match (&v.problem, d) {
            (Some(problem), _) => {
                conditions.push(condition("TargetResolved", false, "TargetNotFound", problem.clone(), now));
                conditions.push(condition("OptimizationReady", false, "InvalidConfiguration", problem.clone(), now));
            }
            (None, Some(d)) => {
                let target = &v.va.spec.scale_target_ref.name;
                conditions.push(condition(
                    "TargetResolved",
                    true,
                    "TargetFound",
                    format!("Deployment {target} found"),
                    now,
                ));
                let pods = snapshot.replicas.iter().filter(|r| r.variant == name).count();
                conditions.push(condition(
                    "MetricsAvailable",
                    pods > 0,
                    if pods > 0 { "MetricsFound" } else { "MetricsMissing" },
                    format!("metrics read from {pods} ready pods"),
                    now,
                ));
                conditions.push(condition(
                    "OptimizationReady",
                    true,
                    "OptimizationSucceeded",
                    format!("{:?}: {} -> {}", d.reason, d.current, d.desired),
                    now,
                ));
                if d.desired != d.current && !self.dry_run {
                    let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
                    let patch = serde_json::json!({"spec": {"replicas": d.desired}});
                    deployments
                        .patch_scale(target, &PatchParams::apply(MANAGER), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("scaling Deployment {target} to {}", d.desired))?;
                    applied = true;
                    let direction = if d.desired > d.current { "up" } else { "down" };
                    let labels = ScalingLabels {
                        variant_name: name.clone(),
                        namespace: self.namespace.clone(),
                        direction: direction.into(),
                        reason: format!("{:?}", d.reason),
                    };
                    self.metrics.scaling.get_or_create(&labels).inc();
                    tracing::info!(variant = %name, from = d.current, to = d.desired, reason = ?d.reason, "scaled");
                }
                let labels = VariantLabels { variant_name: name.clone(), namespace: self.namespace.clone() };
                self.metrics.desired.get_or_create(&labels).set(i64::from(d.desired));
                self.metrics.current.get_or_create(&labels).set(i64::from(d.current));
                let ratio =
                    if d.current > 0 { f64::from(d.desired) / f64::from(d.current) } else { f64::from(d.desired) };
                self.metrics.ratio.get_or_create(&labels).set(ratio);
                status.current_alloc = Some(Allocation { num_replicas: d.current as i32 });
                status.desired_optimized_alloc = Some(OptimizedAlloc {
                    last_run_time: Some(now.clone()),
                    // WVA v0.5 requires it (at least 2 characters): the spec's, else
                    // WVA's accelerator label, else "unknown".
                    accelerator: Some(
                        v.va.spec
                            .accelerator
                            .clone()
                            .or_else(|| {
                                v.va.metadata.labels.as_ref()?.get("inference.optimization/acceleratorName").cloned()
                            })
                            .filter(|a| a.len() >= 2)
                            .unwrap_or_else(|| "unknown".into()),
                    ),
                    num_replicas: d.desired as i32,
                });
            }
            (None, None) => return Ok(()),
        }
        status.actuation = Some(Actuation { applied });
        // A condition's transition time moves only when its status does.
        for c in &mut conditions {
            if let Some(old) = status.conditions.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
                c.last_transition_time = old.last_transition_time.clone();
            }
        }
        status.conditions = conditions;
        let patch = serde_json::json!({"status": status});
        vas.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("writing VariantAutoscaling {name}'s status"))?;
        Ok(())
    }
}
