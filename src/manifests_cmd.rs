//! `llmd k8s manifests`: the objects of an llm-d-style deployment with `llmd epp` as
//! its endpoint picker, as YAML for `kubectl apply -f -`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use llmd::k8s::manifests::{self, ManifestOptions, Topology, Workload};

#[derive(Args, Debug)]
pub(crate) struct ManifestArgs {
    /// Namespace of every object.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// InferencePool name (the picker's objects are `<pool>-epp`).
    #[arg(long, default_value = "llmd")]
    pool: String,
    /// Model vLLM serves.
    #[arg(long, default_value = "Qwen/Qwen3-0.6B")]
    model: String,
    /// `aggregated` or `prefill-decode` (`pd`).
    #[arg(long, default_value = "aggregated")]
    topology: Topology,
    /// `deployment` or `leaderworkerset` (`lws`; multi-node model servers).
    #[arg(long, default_value = "deployment")]
    workload: Workload,
    /// Model-server replicas (decode replicas under prefill-decode).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Prefill replicas (prefill-decode only).
    #[arg(long, default_value_t = 1)]
    prefill_replicas: u32,
    /// Pods per model-server replica (LeaderWorkerSet size).
    #[arg(long, default_value_t = 1)]
    group_size: u32,
    /// GPUs per model-server pod (0: CPU only).
    #[arg(long, default_value_t = 1)]
    gpus_per_pod: u32,
    /// The port the pool routes to on each model-server pod.
    #[arg(long, default_value_t = 8000)]
    target_port: u16,
    /// Endpoint-picker replicas; more than one turns leader election on.
    #[arg(long, default_value_t = 1)]
    epp_replicas: u32,
    /// Model-server image.
    #[arg(long, default_value = manifests::DEFAULT_MODEL_SERVER_IMAGE)]
    model_server_image: String,
    /// Endpoint-picker image (runs `llmd epp`).
    #[arg(long, default_value = manifests::DEFAULT_EPP_IMAGE)]
    epp_image: String,
    /// P/D routing sidecar image on decode pods.
    #[arg(long, default_value = manifests::DEFAULT_ROUTING_SIDECAR_IMAGE)]
    routing_sidecar_image: String,
    /// EndpointPickerConfig for the picker's ConfigMap (default: one for the topology).
    #[arg(long)]
    epp_config: Option<PathBuf>,
    /// Extra `vllm serve` argument (repeat for each).
    #[arg(long = "model-server-arg", allow_hyphen_values = true)]
    model_server_args: Vec<String>,
}

pub(crate) fn manifests(a: ManifestArgs) -> Result<()> {
    let epp_config = match &a.epp_config {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let opts = ManifestOptions {
        namespace: a.namespace,
        pool: a.pool,
        model: a.model,
        model_server_image: a.model_server_image,
        model_server_args: a.model_server_args,
        routing_sidecar_image: a.routing_sidecar_image,
        epp_image: a.epp_image,
        topology: a.topology,
        workload: a.workload,
        replicas: a.replicas,
        prefill_replicas: a.prefill_replicas,
        group_size: a.group_size,
        gpus_per_pod: a.gpus_per_pod,
        target_port: a.target_port,
        epp_replicas: a.epp_replicas,
        epp_config,
    };
    print!("{}", manifests::render_yaml(&opts)?);
    Ok(())
}
