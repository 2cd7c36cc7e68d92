//! The Kubernetes objects that deploy one model behind llmd's endpoint picker, shaped as
//! llm-d deploys itself (what `llmd k8s manifests` prints).
//!
//! [`render`] returns them in apply order; [`render_yaml`] as one multi-document YAML:
//!
//! 1. the endpoint picker's `ServiceAccount`, `Role` and `RoleBinding` (`<pool>-epp`):
//!    pods, InferencePools and InferenceObjectives read-only, and the election Lease
//!    only when `epp_replicas > 1` turns leader election on;
//! 2. its `ConfigMap` (the EndpointPickerConfig, mounted at `/config`), `Service`
//!    (ext-proc 9002, gRPC health 9003, metrics 9090) and `Deployment` (`llmd epp` with
//!    llm-d's EPP flags and the router chart's probes);
//! 3. the `InferencePool` (`inference.networking.k8s.io/v1`) naming that Service;
//! 4. the model servers: one workload, or a `prefill` and a `decode` one, each a
//!    `Deployment` or a `LeaderWorkerSet` (`leaderworkerset.x-k8s.io/v1`).
//!
//! The pool selects the serving pods by `llm-d.ai/inference-serving: "true"` and
//! `llm-d.ai/guide: <pool>`, the selector shape of llm-d's guides; pods also carry
//! `llm-d.ai/model` and, under prefill/decode, `llm-d.ai/role`. Model servers run
//! `vllm serve` (the default image is `vllm/vllm-openai`). Under prefill/decode, vLLM
//! moves KV blocks with NIXL (`kv_both`, as llm-d's P/D guide), and each decode pod runs
//! llm-d's routing sidecar on the target port in front of vLLM on
//! [`DECODE_MODEL_SERVER_PORT`]; the sidecar sends the prompt to the prefill pod the
//! picker chose.
//!
//! Prefill/decode on LeaderWorkerSets is two LeaderWorkerSets, one per role, as llm-d's
//! `wide-ep-lws` guide deploys them, rather than one LWS `DisaggregatedSet`
//! (`disaggregatedset.x-k8s.io/v1`, which llm-d's newest P/D guide uses): that API
//! first shipped in LWS v0.9.0 (June 2026), its shape moved between drafts, and two
//! LeaderWorkerSets run on any LWS release while giving the pods the same labels.
//!
//! ```
//! use llmd_k8s::manifests::{render, ManifestOptions, Topology};
//!
//! let opts = ManifestOptions { pool: "qwen".into(), topology: Topology::PrefillDecode, ..Default::default() };
//! let objects = render(&opts).unwrap();
//! let kinds: Vec<_> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
//! assert_eq!(
//!     kinds,
//!     ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "InferencePool", "Deployment", "Deployment"]
//! );
//! assert_eq!(objects[6]["spec"]["endpointPickerRef"]["name"], "qwen-epp");
//! ```

pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, GRPCAction,
    HTTPGetAction, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use llmd_scheduler::{PluginRegistry, SchedulerConfig};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{K8sError, Result};
use crate::resources::{self, EndpointPickerRef, InferencePool, InferencePoolSpec, Port};

/// The endpoint picker's ext-proc gRPC port (llm-d's `--grpc-port`).
pub const EXT_PROC_PORT: u16 = 9002;
/// The endpoint picker's gRPC health port (llm-d's `--grpc-health-port`).
pub const GRPC_HEALTH_PORT: u16 = 9003;
/// The endpoint picker's Prometheus port (llm-d's `--metrics-port`).
pub const METRICS_PORT: u16 = 9090;
/// Where the endpoint picker's ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/config";
/// The ConfigMap key (and file under [`CONFIG_DIR`]) holding the EndpointPickerConfig.
pub const CONFIG_FILE: &str = "epp-config.yaml";
/// On decode pods, the port vLLM listens on behind the routing sidecar (the sidecar's
/// `--model-server-port` default in llm-d-router v0.10).
pub const DECODE_MODEL_SERVER_PORT: u16 = 8200;
/// vLLM's NIXL side-channel port (`VLLM_NIXL_SIDE_CHANNEL_PORT`'s default).
pub const NIXL_SIDE_CHANNEL_PORT: u16 = 5600;

/// The label every serving model-server pod carries (`"true"`), as in llm-d's guides.
pub const SERVING_LABEL: &str = "llm-d.ai/inference-serving";
/// The label naming the deployment the pods belong to; here, the pool's name.
pub const GUIDE_LABEL: &str = "llm-d.ai/guide";
/// The label naming the served model (see [`model_label`]).
pub const MODEL_LABEL: &str = "llm-d.ai/model";
/// The label naming a pod's disaggregation role (`prefill` or `decode`); the picker's
/// prefill and decode filters read it.
pub const ROLE_LABEL: &str = llmd_scheduler::discovery::ROLE_LABEL;

/// The default model-server image.
pub const DEFAULT_MODEL_SERVER_IMAGE: &str = "vllm/vllm-openai:latest";
/// The default routing sidecar for decode pods: llm-d-router's P/D sidecar, the release
/// whose flags [`render`] passes.
pub const DEFAULT_ROUTING_SIDECAR_IMAGE: &str = "ghcr.io/llm-d/llm-d-router-disagg-sidecar:v0.10.0";
/// The default endpoint-picker image: an image whose `llmd` binary is on `PATH`, built
/// and loaded locally (it is pulled only if not present).
pub const DEFAULT_EPP_IMAGE: &str = "llmd:latest";

const LWS_API_VERSION: &str = "leaderworkerset.x-k8s.io/v1";
const NAME_LABEL: &str = "app.kubernetes.io/name";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
const POOL_GROUP: &str = "inference.networking.k8s.io";
/// The longest pool name: derived names (`<pool>-prefill`) stay short enough for the
/// StatefulSets a LeaderWorkerSet makes (llm-d's router chart truncates to 40 too).
const MAX_POOL_NAME: usize = 40;
/// LeaderWorkerSet's `spec.replicas` maximum (its CRD).
const MAX_LWS_REPLICAS: u32 = 1_000_000;
/// Ray's head port, taken on multi-node leaders.
const RAY_PORT: u16 = 6379;
/// vLLM's multi-node helper (Ray head or worker) in the `vllm/vllm-openai` images, as
/// LWS's own vLLM example starts it.
const MULTI_NODE_SCRIPT: &str = "/vllm-workspace/examples/online_serving/multi-node-serving.sh";
/// vLLM's KV transfer under P/D, as llm-d's `pd-disaggregation` guide sets it.
const KV_TRANSFER_CONFIG: &str = r#"{"kv_connector":"NixlConnector","kv_role":"kv_both"}"#;
/// The optional Secret llm-d's guides keep a Hugging Face token in (`HF_TOKEN`).
const HF_TOKEN_SECRET: &str = "llm-d-hf-token";

// The endpoint picker's probes and pod settings, as llm-d-router's chart has them
// (`config/charts/routerlib/templates/_deployment.yaml` @ ebab687): liveness
// `grpc {port: 9003}` with `initialDelaySeconds: 5`, `periodSeconds: 10`; readiness
// `grpc {port: 9003}` with `periodSeconds: 2`; readiness service `inference-extension`
// with one replica and `readiness` with more (llm-d's EPP answers SERVICE_UNKNOWN for
// other names once leader election is on; llmd answers both the same); liveness service
// `liveness` (the chart's choice with several replicas; with one it asks
// `inference-extension`, which llm-d's EPP then answers the same as `liveness`, while
// llmd's `liveness` serves before the pool syncs, so a slow first sync does not restart
// the pod); `terminationGracePeriodSeconds: 130`; `strategy: Recreate`.
const EPP_LIVENESS_SERVICE: &str = "liveness";
const EPP_LIVENESS_INITIAL_DELAY_S: i32 = 5;
const EPP_LIVENESS_PERIOD_S: i32 = 10;
const EPP_READINESS_PERIOD_S: i32 = 2;
const EPP_TERMINATION_GRACE_S: i64 = 130;

/// One model-server fleet, or prefill and decode fleets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Topology {
    /// Every model server prefills and decodes its own requests.
    #[default]
    Aggregated,
    /// Prefill and decode run on separate pods (`llm-d.ai/role: prefill|decode`); the
    /// picker's P/D profile handler picks one of each.
    PrefillDecode,
}

impl Topology {
    /// The name [`FromStr`] reads (`aggregated`, `prefill-decode`).
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Aggregated => "aggregated",
            Topology::PrefillDecode => "prefill-decode",
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Topology {
    type Err = K8sError;

    /// `aggregated`, or `prefill-decode` (also `pd`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "aggregated" => Ok(Topology::Aggregated),
            "prefill-decode" | "pd" => Ok(Topology::PrefillDecode),
            other => Err(invalid_option("topology", format!("{other:?} is not aggregated or prefill-decode (pd)"))),
        }
    }
}

/// What runs the model-server pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A `Deployment` per role: one pod per model-server replica.
    #[default]
    Deployment,
    /// A `LeaderWorkerSet` per role: `group_size` pods per replica (a leader serving
    /// the API and `group_size - 1` workers), for models larger than a node.
    LeaderWorkerSet,
}

impl Workload {
    /// The name [`FromStr`] reads (`deployment`, `leaderworkerset`).
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Deployment => "deployment",
            Workload::LeaderWorkerSet => "leaderworkerset",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = K8sError;

    /// `deployment`, or `leaderworkerset` (also `lws`).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "deployment" => Ok(Workload::Deployment),
            "leaderworkerset" | "lws" => Ok(Workload::LeaderWorkerSet),
            other => Err(invalid_option("workload", format!("{other:?} is not deployment or leaderworkerset (lws)"))),
        }
    }
}

/// What to deploy. [`Default`] gives one vLLM replica of a small model on one GPU behind
/// one endpoint picker, in namespace `default`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestOptions {
    /// The namespace of every object (and the pool's, which the picker watches).
    pub namespace: String,
    /// The InferencePool's name; the picker's objects are `<pool>-epp`, the model
    /// servers `<pool>-server` or `<pool>-prefill` / `<pool>-decode`. A DNS-1035 label
    /// of at most 40 characters.
    pub pool: String,
    /// The model vLLM serves (a Hugging Face id or a path in the image); its last path
    /// segment becomes the `llm-d.ai/model` label.
    pub model: String,
    /// The model-server image; it must run `vllm serve` (and, for `group_size > 1`,
    /// ship vLLM's multi-node helper script, as the `vllm/vllm-openai` images do).
    pub model_server_image: String,
    /// Extra `vllm serve` arguments, after the generated ones (so they win where vLLM
    /// takes the last value).
    pub model_server_args: Vec<String>,
    /// The routing sidecar on decode pods under [`Topology::PrefillDecode`] (llm-d's
    /// P/D sidecar flags: `--port`, `--model-server-port`, `--kv-connector`,
    /// `--secure-proxy`).
    pub routing_sidecar_image: String,
    /// The endpoint-picker image (`llmd epp` is run as `llmd` with `epp` first).
    pub epp_image: String,
    /// Aggregated or prefill/decode.
    pub topology: Topology,
    /// Deployments or LeaderWorkerSets.
    pub workload: Workload,
    /// Model-server replicas: decode replicas under prefill/decode, else all of them.
    pub replicas: u32,
    /// Prefill replicas (prefill/decode only).
    pub prefill_replicas: u32,
    /// Pods per model-server replica (LeaderWorkerSet `size`); more than 1 needs
    /// [`Workload::LeaderWorkerSet`] and GPUs, and runs vLLM over Ray with pipeline
    /// parallelism across the pods.
    pub group_size: u32,
    /// `nvidia.com/gpu` per model-server pod (0: none); vLLM's tensor parallelism.
    pub gpus_per_pod: u32,
    /// The port the pool routes to on each serving pod (vLLM's, or the routing
    /// sidecar's on decode pods).
    pub target_port: u16,
    /// Endpoint-picker replicas; more than one turns leader election on.
    pub epp_replicas: u32,
    /// The EndpointPickerConfig YAML (llm-d's format); `None` picks
    /// [`default_epp_config`] for the topology. [`render`] refuses one that does not
    /// load.
    pub epp_config: Option<String>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            namespace: "default".into(),
            pool: "llmd".into(),
            model: "Qwen/Qwen3-0.6B".into(),
            model_server_image: DEFAULT_MODEL_SERVER_IMAGE.into(),
            model_server_args: Vec::new(),
            routing_sidecar_image: DEFAULT_ROUTING_SIDECAR_IMAGE.into(),
            epp_image: DEFAULT_EPP_IMAGE.into(),
            topology: Topology::Aggregated,
            workload: Workload::Deployment,
            replicas: 1,
            prefill_replicas: 1,
            group_size: 1,
            gpus_per_pod: 1,
            target_port: 8000,
            epp_replicas: 1,
            epp_config: None,
        }
    }
}

/// llm-d-router's sample prefill/decode configuration, unchanged
/// (`deploy/config/pd-epp-config.yaml` @ ebab687): `disagg-profile-handler` sends a
/// request through the `prefill` profile too when `prefix-based-pd-decider` finds more
/// than 16 of its tokens uncached; each profile filters by role and scores prefix
/// affinity (weight 2) and queue depth (weight 1).
pub const PD_EPP_CONFIG: &str = "# Sample EPP configuration for running with P/D
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: approx-prefix-cache-producer
  parameters:
    maxPrefixTokensToMatch: 16384
    lruCapacityPerServer: 31250
- type: prefix-cache-scorer
- type: queue-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: prefix-based-pd-decider
- type: prefix-based-pd-decider
  parameters:
    nonCachedTokens: 16
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: max-score-picker
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: queue-scorer
    weight: 1
";

/// The llmd routing preset the aggregated default uses.
const AGGREGATED_PRESET: &str = "prefix";

/// The EndpointPickerConfig [`render`] uses when none is given: llmd's `prefix` preset
/// (`llmd epp`'s default routing: prefix affinity weighed against prefill load) for
/// [`Topology::Aggregated`], [`PD_EPP_CONFIG`] for [`Topology::PrefillDecode`].
pub fn default_epp_config(topology: Topology) -> Result<String> {
    match topology {
        Topology::PrefillDecode => Ok(PD_EPP_CONFIG.to_string()),
        Topology::Aggregated => {
            let preset = llmd_scheduler::presets::preset_yaml(AGGREGATED_PRESET).ok_or_else(|| K8sError::Invalid {
                kind: "EndpointPickerConfig",
                name: AGGREGATED_PRESET.into(),
                reason: "llmd-scheduler has no such preset".into(),
            })?;
            Ok(format!(
                "# llmd's `{AGGREGATED_PRESET}` routing preset (llmd-scheduler presets): prefix affinity weighed \
                 against prefill load.\napiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n{}",
                preset.trim_start_matches('\n')
            ))
        }
    }
}

/// The `llm-d.ai/model` label value for a model: its last path segment, with characters
/// a label value cannot hold replaced by `-`, at most 63 characters, starting and ending
/// alphanumeric (`Qwen/Qwen3-0.6B` → `Qwen3-0.6B`). `None` when nothing is left.
pub fn model_label(model: &str) -> Option<String> {
    let last = model.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

/// The labels the InferencePool selects serving model-server pods by.
pub fn pool_selector(opts: &ManifestOptions) -> BTreeMap<String, String> {
    labels([(SERVING_LABEL, "true"), (GUIDE_LABEL, opts.pool.as_str())])
}

/// The endpoint picker's object names: `<pool>-epp`.
pub fn epp_name(pool: &str) -> String {
    format!("{pool}-epp")
}

/// The Lease llm-d's EPP (and llmd's) elects its leader on: `epp-<namespace>-<pool>.llm-d.ai`.
pub fn lease_name(namespace: &str, pool: &str) -> String {
    format!("epp-{namespace}-{pool}.llm-d.ai")
}

/// The objects, in apply order (see the module docs), as JSON. Fails with
/// [`K8sError::Invalid`] on options that cannot make a working deployment (a name
/// Kubernetes refuses, `group_size > 1` on Deployments, a config that does not load…).
pub fn render(opts: &ManifestOptions) -> Result<Vec<Value>> {
    check(opts)?;
    let config = match &opts.epp_config {
        Some(c) => c.clone(),
        None => default_epp_config(opts.topology)?,
    };
    let origin = format!("ConfigMap {}/{} {CONFIG_FILE}", opts.namespace, epp_name(&opts.pool));
    SchedulerConfig::from_yaml(&config, &origin, &PluginRegistry::with_builtins()).map_err(|e| K8sError::Invalid {
        kind: "EndpointPickerConfig",
        name: format!("{}/{}", opts.namespace, epp_name(&opts.pool)),
        reason: e.to_string(),
    })?;

    let mut out = vec![
        to_json(&epp_service_account(opts))?,
        to_json(&epp_role(opts))?,
        to_json(&epp_role_binding(opts))?,
        to_json(&epp_config_map(opts, config))?,
        to_json(&epp_service(opts))?,
        to_json(&epp_deployment(opts))?,
        to_json(&inference_pool(opts))?,
    ];
    let roles: &[ServerRole] = match opts.topology {
        Topology::Aggregated => &[ServerRole::Both],
        Topology::PrefillDecode => &[ServerRole::Prefill, ServerRole::Decode],
    };
    for &role in roles {
        out.push(match opts.workload {
            Workload::Deployment => to_json(&model_server_deployment(opts, role))?,
            Workload::LeaderWorkerSet => model_server_lws(opts, role)?,
        });
    }
    Ok(out)
}

/// [`render`]'s objects as one multi-document YAML stream (`---` before each object),
/// after a comment naming what it deploys and what it needs installed.
pub fn render_yaml(opts: &ManifestOptions) -> Result<String> {
    let objects = render(opts)?;
    let mut out = format!(
        "# llmd k8s manifests: InferencePool {:?} in namespace {:?} ({}, {}).\n\
         # Needs the Gateway API Inference Extension CRDs (InferencePool v1){}.\n",
        opts.pool,
        opts.namespace,
        opts.topology,
        opts.workload,
        if opts.workload == Workload::LeaderWorkerSet { " and LeaderWorkerSet (LWS)" } else { "" },
    );
    for o in &objects {
        let text = serde_yaml_ng::to_string(o).map_err(|source| K8sError::Yaml {
            what: format!(
                "{} {}",
                o["kind"].as_str().unwrap_or("object"),
                o["metadata"]["name"].as_str().unwrap_or("")
            ),
            source,
        })?;
        out.push_str("---\n");
        out.push_str(&text);
    }
    Ok(out)
}

/// A model server's disaggregation role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerRole {
    Both,
    Prefill,
    Decode,
}

impl ServerRole {
    fn label(self) -> Option<&'static str> {
        match self {
            ServerRole::Both => None,
            ServerRole::Prefill => Some("prefill"),
            ServerRole::Decode => Some("decode"),
        }
    }

    fn suffix(self) -> &'static str {
        self.label().unwrap_or("server")
    }
}

fn invalid_option(field: &str, reason: String) -> K8sError {
    K8sError::Invalid { kind: "ManifestOptions", name: field.to_string(), reason }
}

/// Refuses options Kubernetes or the model servers would refuse later.
fn check(o: &ManifestOptions) -> Result<()> {
    if !is_dns_label(&o.namespace, 63) {
        return Err(invalid_option(
            "namespace",
            format!("{:?} is not a DNS-1123 label (lower-case alphanumerics and '-', at most 63)", o.namespace),
        ));
    }
    if !is_dns_label(&o.pool, MAX_POOL_NAME) || !o.pool.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid_option(
            "pool",
            format!(
                "{:?} is not a DNS-1035 label of at most {MAX_POOL_NAME} characters (a lower-case letter, then \
                 lower-case alphanumerics and '-')",
                o.pool
            ),
        ));
    }
    if model_label(&o.model).is_none() {
        return Err(invalid_option("model", format!("{:?} names no model", o.model)));
    }
    for (field, image) in [
        ("model_server_image", &o.model_server_image),
        ("routing_sidecar_image", &o.routing_sidecar_image),
        ("epp_image", &o.epp_image),
    ] {
        if image.trim().is_empty() || image.chars().any(char::is_whitespace) {
            return Err(invalid_option(field, format!("{image:?} is not an image reference")));
        }
    }
    if o.epp_replicas == 0 {
        return Err(invalid_option("epp_replicas", "at least one endpoint picker is needed".into()));
    }
    if o.group_size == 0 {
        return Err(invalid_option("group_size", "a replica needs at least one pod".into()));
    }
    if o.group_size > 1 && o.workload != Workload::LeaderWorkerSet {
        return Err(invalid_option(
            "group_size",
            format!("{} pods per replica need workload leaderworkerset", o.group_size),
        ));
    }
    if o.group_size > 1 && o.gpus_per_pod == 0 {
        return Err(invalid_option("group_size", "multi-node replicas (group_size > 1) need gpus_per_pod >= 1".into()));
    }
    for (field, n) in
        [("replicas", o.replicas), ("prefill_replicas", o.prefill_replicas), ("epp_replicas", o.epp_replicas)]
    {
        if i32::try_from(n).is_err() || (o.workload == Workload::LeaderWorkerSet && n > MAX_LWS_REPLICAS) {
            return Err(invalid_option(field, format!("{n} replicas is more than the workload allows")));
        }
    }
    if i32::try_from(o.group_size).is_err() {
        return Err(invalid_option("group_size", format!("{} pods per replica is out of range", o.group_size)));
    }
    let mut taken = vec![];
    if o.topology == Topology::PrefillDecode {
        taken.extend([DECODE_MODEL_SERVER_PORT, NIXL_SIDE_CHANNEL_PORT]);
    }
    if o.group_size > 1 {
        taken.push(RAY_PORT);
    }
    if o.target_port == 0 || taken.contains(&o.target_port) {
        return Err(invalid_option(
            "target_port",
            format!("{} is 0 or taken in the model-server pods (by {taken:?})", o.target_port),
        ));
    }
    Ok(())
}

/// A DNS-1123 label: 1 to `max` lower-case alphanumerics or '-', alphanumeric at both ends.
fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn meta(opts: &ManifestOptions, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(opts.namespace.clone()),
        labels: Some(labels),
        ..Default::default()
    }
}

fn to_json<T: Serialize + kube::Resource<DynamicType = ()>>(object: &T) -> Result<Value> {
    serde_json::to_value(object).map_err(|e| K8sError::Invalid {
        kind: "manifest",
        name: format!("{} {}", T::kind(&()), object.meta().name.as_deref().unwrap_or_default()),
        reason: format!("does not encode as JSON: {e}"),
    })
}

fn port_i32(p: u16) -> i32 {
    i32::from(p)
}

fn count_i32(n: u32) -> i32 {
    // `check` has refused counts above i32::MAX.
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn strings<const N: usize>(items: [&str; N]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------
// The endpoint picker

fn epp_labels(opts: &ManifestOptions) -> BTreeMap<String, String> {
    let name = epp_name(&opts.pool);
    labels([(NAME_LABEL, name.as_str()), (COMPONENT_LABEL, "endpoint-picker")])
}

fn epp_selector(opts: &ManifestOptions) -> BTreeMap<String, String> {
    let name = epp_name(&opts.pool);
    labels([(NAME_LABEL, name.as_str())])
}

fn election(opts: &ManifestOptions) -> bool {
    opts.epp_replicas > 1
}

fn epp_service_account(opts: &ManifestOptions) -> ServiceAccount {
    ServiceAccount { metadata: meta(opts, &epp_name(&opts.pool), epp_labels(opts)), ..Default::default() }
}

/// What `llmd epp` reads, and no more: pods (its pool's endpoints), the pool itself,
/// InferenceObjectives under both groups llmd reads, and, with election on, its Lease
/// (created by whichever replica comes first, then read and renewed by name).
fn epp_role(opts: &ManifestOptions) -> Role {
    let read = || strings(["get", "list", "watch"]);
    let mut rules = vec![
        PolicyRule {
            api_groups: Some(strings([""])),
            resources: Some(strings(["pods"])),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(strings([POOL_GROUP])),
            resources: Some(strings(["inferencepools"])),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(strings(["inference.networking.x-k8s.io", "llm-d.ai"])),
            resources: Some(strings(["inferenceobjectives"])),
            verbs: read(),
            ..Default::default()
        },
    ];
    if election(opts) {
        // `create` cannot be limited by name (the name is not known when it is
        // authorized); reads and renewals are limited to the one Lease.
        rules.push(PolicyRule {
            api_groups: Some(strings(["coordination.k8s.io"])),
            resources: Some(strings(["leases"])),
            verbs: strings(["create"]),
            ..Default::default()
        });
        rules.push(PolicyRule {
            api_groups: Some(strings(["coordination.k8s.io"])),
            resources: Some(strings(["leases"])),
            resource_names: Some(vec![lease_name(&opts.namespace, &opts.pool)]),
            verbs: strings(["get", "update"]),
            ..Default::default()
        });
    }
    Role { metadata: meta(opts, &epp_name(&opts.pool), epp_labels(opts)), rules: Some(rules) }
}

fn epp_role_binding(opts: &ManifestOptions) -> RoleBinding {
    let name = epp_name(&opts.pool);
    RoleBinding {
        metadata: meta(opts, &name, epp_labels(opts)),
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.clone() },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(opts.namespace.clone()),
            ..Default::default()
        }]),
    }
}

fn epp_config_map(opts: &ManifestOptions, config: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(opts, &epp_name(&opts.pool), epp_labels(opts)),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), config)])),
        ..Default::default()
    }
}

fn epp_service(opts: &ManifestOptions) -> Service {
    let port = |name: &str, port: u16, target: &str, app_protocol: Option<&str>| ServicePort {
        name: Some(name.into()),
        port: port_i32(port),
        target_port: Some(IntOrString::String(target.into())),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..Default::default()
    };
    Service {
        metadata: meta(opts, &epp_name(&opts.pool), epp_labels(opts)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(epp_selector(opts)),
            ports: Some(vec![
                // GAIE's conformance manifests mark the ext-proc port `http2`.
                port("grpc-ext-proc", EXT_PROC_PORT, "grpc", Some("http2")),
                port("grpc-health", GRPC_HEALTH_PORT, "grpc-health", None),
                port("http-metrics", METRICS_PORT, "metrics", None),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `llmd epp` with llm-d's EPP flags.
fn epp_args(opts: &ManifestOptions) -> Vec<String> {
    let mut args = vec![
        "epp".to_string(),
        "--pool-name".into(),
        opts.pool.clone(),
        "--pool-namespace".into(),
        opts.namespace.clone(),
        "--pool-group".into(),
        POOL_GROUP.into(),
        "--config-file".into(),
        format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        "--grpc-port".into(),
        EXT_PROC_PORT.to_string(),
        "--grpc-health-port".into(),
        GRPC_HEALTH_PORT.to_string(),
        "--metrics-port".into(),
        METRICS_PORT.to_string(),
        // Only ext-proc, as llm-d's EPP: llmd's own HTTP gateway stays off.
        "--http-port=0".into(),
        // `llmd epp` binds 127.0.0.1 unless told; the gateway and the kubelet reach it
        // on the pod's IP.
        "--host=$(POD_IP)".into(),
    ];
    if election(opts) {
        args.push("--ha-enable-leader-election".into());
    }
    args
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_port(name: &str, port: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port_i32(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn quantities<const N: usize>(items: [(&str, &str); N]) -> BTreeMap<String, Quantity> {
    items.iter().map(|(k, v)| (k.to_string(), Quantity(v.to_string()))).collect()
}

fn epp_deployment(opts: &ManifestOptions) -> Deployment {
    let name = epp_name(&opts.pool);
    let grpc_probe = |service: &str| GRPCAction { port: port_i32(GRPC_HEALTH_PORT), service: Some(service.into()) };
    let readiness_service = if election(opts) { "readiness" } else { "inference-extension" };
    let container = Container {
        name: "epp".into(),
        image: Some(opts.epp_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(strings(["llmd"])),
        args: Some(epp_args(opts)),
        env: Some(vec![
            field_env("NAMESPACE", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            container_port("grpc", EXT_PROC_PORT),
            container_port("grpc-health", GRPC_HEALTH_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        liveness_probe: Some(Probe {
            grpc: Some(grpc_probe(EPP_LIVENESS_SERVICE)),
            initial_delay_seconds: Some(EPP_LIVENESS_INITIAL_DELAY_S),
            period_seconds: Some(EPP_LIVENESS_PERIOD_S),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            grpc: Some(grpc_probe(readiness_service)),
            period_seconds: Some(EPP_READINESS_PERIOD_S),
            ..Default::default()
        }),
        // The router chart requests 8 CPUs and 8 GiB for llm-d's Go EPP at fleet scale,
        // which a development cluster cannot schedule; llmd's picker asks for less and,
        // like the chart, sets no CPU limit (bursts) and caps memory.
        resources: Some(ResourceRequirements {
            requests: Some(quantities([("cpu", "1"), ("memory", "1Gi")])),
            limits: Some(quantities([("memory", "4Gi")])),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "plugins-config-volume".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    Deployment {
        metadata: meta(opts, &name, epp_labels(opts)),
        spec: Some(DeploymentSpec {
            replicas: Some(count_i32(opts.epp_replicas)),
            // As the router chart: the old leader goes at once, so a new one can lead.
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), ..Default::default() }),
            selector: LabelSelector { match_labels: Some(epp_selector(opts)), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(epp_labels(opts)), ..Default::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    termination_grace_period_seconds: Some(EPP_TERMINATION_GRACE_S),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "plugins-config-volume".into(),
                        config_map: Some(ConfigMapVolumeSource { name: name.clone(), ..Default::default() }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------
// The pool

fn inference_pool(opts: &ManifestOptions) -> InferencePool {
    let mut pool = InferencePool::new(
        &opts.pool,
        InferencePoolSpec {
            selector: resources::LabelSelector { match_labels: pool_selector(opts) },
            target_ports: vec![Port { number: port_i32(opts.target_port) }],
            app_protocol: None,
            endpoint_picker_ref: Some(EndpointPickerRef {
                group: None,
                kind: Some("Service".into()),
                name: epp_name(&opts.pool),
                port: Some(Port { number: port_i32(EXT_PROC_PORT) }),
                // GAIE's default (llm-d-router's chart writes FailOpen): requests fail
                // rather than bypass the picker while it is down.
                failure_mode: Some("FailClose".into()),
            }),
        },
    );
    pool.metadata.namespace = Some(opts.namespace.clone());
    pool.metadata.labels = Some(labels([(GUIDE_LABEL, opts.pool.as_str())]));
    pool
}

// ---------------------------------------------------------------------------------
// Model servers

fn server_name(opts: &ManifestOptions, role: ServerRole) -> String {
    format!("{}-{}", opts.pool, role.suffix())
}

/// A model-server pod's labels; `serving` adds the pool's selector label.
fn server_labels(opts: &ManifestOptions, role: ServerRole, serving: bool) -> BTreeMap<String, String> {
    let model = model_label(&opts.model).unwrap_or_default();
    let name = server_name(opts, role);
    let mut l = labels([
        (GUIDE_LABEL, opts.pool.as_str()),
        (MODEL_LABEL, model.as_str()),
        (NAME_LABEL, name.as_str()),
        (COMPONENT_LABEL, "model-server"),
    ]);
    if let Some(r) = role.label() {
        l.insert(ROLE_LABEL.into(), r.into());
    }
    if serving {
        l.insert(SERVING_LABEL.into(), "true".into());
    }
    l
}

/// The port vLLM listens on: the target port, or behind the sidecar on decode pods.
fn engine_port(opts: &ManifestOptions, role: ServerRole) -> u16 {
    if role == ServerRole::Decode { DECODE_MODEL_SERVER_PORT } else { opts.target_port }
}

/// `vllm serve`'s arguments after `serve`.
fn vllm_args(opts: &ManifestOptions, role: ServerRole) -> Vec<String> {
    let mut args = vec![opts.model.clone(), format!("--port={}", engine_port(opts, role))];
    if opts.group_size > 1 {
        args.push(format!("--tensor-parallel-size={}", opts.gpus_per_pod));
        args.push(format!("--pipeline-parallel-size={}", opts.group_size));
        args.push("--distributed-executor-backend=ray".into());
    } else if opts.gpus_per_pod > 1 {
        args.push(format!("--tensor-parallel-size={}", opts.gpus_per_pod));
    }
    if role != ServerRole::Both {
        args.push("--kv-transfer-config".into());
        args.push(KV_TRANSFER_CONFIG.into());
    }
    args.extend(opts.model_server_args.iter().cloned());
    args
}

/// Quotes a word for `sh -c`.
fn sh_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '=' | ':' | ',' | '+' | '@' | '%')
        });
    if plain { s.to_string() } else { format!("'{}'", s.replace('\'', r"'\''")) }
}

fn http_probe(path: &str, port: &str) -> Option<HTTPGetAction> {
    Some(HTTPGetAction { path: Some(path.into()), port: IntOrString::String(port.into()), ..Default::default() })
}

fn gpu_resources(opts: &ManifestOptions) -> Option<ResourceRequirements> {
    (opts.gpus_per_pod > 0).then(|| {
        let gpus = opts.gpus_per_pod.to_string();
        ResourceRequirements {
            limits: Some(quantities([("nvidia.com/gpu", gpus.as_str())])),
            requests: Some(quantities([("nvidia.com/gpu", gpus.as_str())])),
            ..Default::default()
        }
    })
}

fn shm() -> (Volume, VolumeMount) {
    // As llm-d's P/D guide: NCCL and vLLM's workers share memory through /dev/shm.
    (
        Volume {
            name: "shm".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("20Gi".into())),
            }),
            ..Default::default()
        },
        VolumeMount { name: "shm".into(), mount_path: "/dev/shm".into(), ..Default::default() },
    )
}

fn vllm_env(role: ServerRole) -> Vec<EnvVar> {
    let mut env = vec![EnvVar {
        name: "HF_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: HF_TOKEN_SECRET.into(),
                key: "HF_TOKEN".into(),
                optional: Some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    if role != ServerRole::Both {
        env.push(field_env("VLLM_NIXL_SIDE_CHANNEL_HOST", "status.podIP"));
    }
    env
}

/// The pod that serves the API: vLLM alone, or (multi-node) the Ray head that then
/// serves; decode pods add the routing sidecar on the target port.
fn serving_pod(opts: &ManifestOptions, role: ServerRole) -> PodTemplateSpec {
    let (shm_volume, shm_mount) = shm();
    let (command, args) = if opts.group_size > 1 {
        let serve: Vec<String> = vllm_args(opts, role).iter().map(|a| sh_quote(a)).collect();
        let script = format!(
            "bash {MULTI_NODE_SCRIPT} leader --ray_cluster_size={} && exec vllm serve {}",
            opts.group_size,
            serve.join(" ")
        );
        (strings(["/bin/sh", "-c"]), vec![script])
    } else {
        (strings(["vllm", "serve"]), vllm_args(opts, role))
    };
    let mut ports = vec![container_port("modelserver", engine_port(opts, role))];
    if role != ServerRole::Both {
        ports.push(container_port("nixl", NIXL_SIDE_CHANNEL_PORT));
    }
    // llm-d's P/D guide's timings: an hour to load the model, then /health every 10 s
    // (alive) and every 5 s (ready).
    let vllm = Container {
        name: "vllm".into(),
        image: Some(opts.model_server_image.clone()),
        command: Some(command),
        args: Some(args),
        env: Some(vllm_env(role)),
        ports: Some(ports),
        startup_probe: Some(Probe {
            http_get: http_probe("/health", "modelserver"),
            initial_delay_seconds: Some(15),
            period_seconds: Some(30),
            timeout_seconds: Some(5),
            failure_threshold: Some(120),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: http_probe("/health", "modelserver"),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: http_probe("/health", "modelserver"),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: gpu_resources(opts),
        volume_mounts: Some(vec![shm_mount]),
        ..Default::default()
    };
    let sidecar = (role == ServerRole::Decode).then(|| Container {
        name: "routing-proxy".into(),
        image: Some(opts.routing_sidecar_image.clone()),
        args: Some(vec![
            format!("--port={}", opts.target_port),
            format!("--model-server-port={DECODE_MODEL_SERVER_PORT}"),
            "--kv-connector=nixlv2".into(),
            "--secure-proxy=false".into(),
        ]),
        ports: Some(vec![container_port("sidecar", opts.target_port)]),
        // The sidecar answers /health itself; vLLM's readiness is the probe above.
        readiness_probe: Some(Probe {
            http_get: http_probe("/health", "sidecar"),
            period_seconds: Some(5),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        // A native sidecar: started before vLLM, stopped after it.
        restart_policy: Some("Always".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            run_as_non_root: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    });
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(server_labels(opts, role, true)), ..Default::default() }),
        spec: Some(PodSpec {
            init_containers: sidecar.map(|s| vec![s]),
            containers: vec![vllm],
            volumes: Some(vec![shm_volume]),
            ..Default::default()
        }),
    }
}

/// A multi-node replica's other pods: Ray workers joining the leader's head.
fn ray_worker_pod(opts: &ManifestOptions, role: ServerRole) -> PodTemplateSpec {
    let (shm_volume, shm_mount) = shm();
    let worker = Container {
        name: "vllm-worker".into(),
        image: Some(opts.model_server_image.clone()),
        command: Some(strings(["/bin/sh", "-c"])),
        // LWS sets LWS_LEADER_ADDRESS; the kubelet expands $(…) before the shell runs.
        args: Some(vec![format!("bash {MULTI_NODE_SCRIPT} worker --ray_address=$(LWS_LEADER_ADDRESS)")]),
        env: Some(vllm_env(role)),
        resources: gpu_resources(opts),
        volume_mounts: Some(vec![shm_mount]),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(server_labels(opts, role, false)), ..Default::default() }),
        spec: Some(PodSpec { containers: vec![worker], volumes: Some(vec![shm_volume]), ..Default::default() }),
    }
}

fn replicas_for(opts: &ManifestOptions, role: ServerRole) -> u32 {
    if role == ServerRole::Prefill { opts.prefill_replicas } else { opts.replicas }
}

fn model_server_deployment(opts: &ManifestOptions, role: ServerRole) -> Deployment {
    let name = server_name(opts, role);
    Deployment {
        metadata: meta(opts, &name, server_labels(opts, role, false)),
        spec: Some(DeploymentSpec {
            replicas: Some(count_i32(replicas_for(opts, role))),
            selector: LabelSelector {
                match_labels: Some(labels([(GUIDE_LABEL, opts.pool.as_str()), (NAME_LABEL, name.as_str())])),
                ..Default::default()
            },
            template: serving_pod(opts, role),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A LeaderWorkerSet: with one pod per replica the worker template is the serving pod
/// (LWS uses it for the leader when no leader template is given); with more, the leader
/// serves and the workers join it.
fn model_server_lws(opts: &ManifestOptions, role: ServerRole) -> Result<Value> {
    let name = server_name(opts, role);
    let template = |t: PodTemplateSpec| {
        serde_json::to_value(t).map_err(|e| K8sError::Invalid {
            kind: "LeaderWorkerSet",
            name: name.clone(),
            reason: format!("pod template does not encode as JSON: {e}"),
        })
    };
    let mut lwt = json!({
        "size": opts.group_size,
        "restartPolicy": "RecreateGroupOnPodRestart",
    });
    if opts.group_size > 1 {
        lwt["leaderTemplate"] = template(serving_pod(opts, role))?;
        lwt["workerTemplate"] = template(ray_worker_pod(opts, role))?;
    } else {
        lwt["workerTemplate"] = template(serving_pod(opts, role))?;
    }
    Ok(json!({
        "apiVersion": LWS_API_VERSION,
        "kind": "LeaderWorkerSet",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": server_labels(opts, role, false),
        },
        "spec": {
            "replicas": replicas_for(opts, role),
            "leaderWorkerTemplate": lwt,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_label_values() {
        assert_eq!(model_label("Qwen/Qwen3-0.6B").as_deref(), Some("Qwen3-0.6B"));
        assert_eq!(model_label("/models/llama 3:8b/").as_deref(), Some("llama-3-8b"));
        assert_eq!(model_label(&format!("{}x", "a".repeat(70))).map(|l| l.len()), Some(63));
        assert_eq!(model_label("org/--"), None);
        assert_eq!(model_label(""), None);
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(sh_quote("--port=8000"), "--port=8000");
        assert_eq!(sh_quote(KV_TRANSFER_CONFIG), format!("'{KV_TRANSFER_CONFIG}'"));
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn names_topologies_and_workloads_parse() {
        assert_eq!("pd".parse::<Topology>().unwrap(), Topology::PrefillDecode);
        assert_eq!(Topology::PrefillDecode.to_string().parse::<Topology>().unwrap(), Topology::PrefillDecode);
        assert_eq!("lws".parse::<Workload>().unwrap(), Workload::LeaderWorkerSet);
        assert_eq!(Workload::Deployment.to_string().parse::<Workload>().unwrap(), Workload::Deployment);
        assert!("both".parse::<Topology>().unwrap_err().to_string().contains("topology"));
        assert!(is_dns_label("a-1", 63) && !is_dns_label("A", 63) && !is_dns_label("a-", 63));
        assert_eq!(lease_name("llm", "qwen"), "epp-llm-qwen.llm-d.ai");
    }
}
