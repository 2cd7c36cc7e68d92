//! `llmd epp`: the endpoint picker, standalone (endpoints from flags or files) or as a
//! drop-in for llm-d's EPP in a cluster (`--pool-name`: the InferencePool's pods,
//! leader election, gRPC health, InferenceObjectives), with llm-d's flag names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{GatewayArgs, cached_renderer, serve_grpc};

/// A Go-style duration (`50ms`, `2s`, `1m30s`), as llm-d's flags take them.
fn go_duration(s: &str) -> Result<Duration, String> {
    llmd::scheduler::plugins::parse_duration(s)
}

#[derive(Args, Debug)]
pub(crate) struct EppArgs {
    /// EndpointPickerConfig YAML file (llm-d's format).
    #[arg(long = "config-file", visible_alias = "config", conflicts_with = "config_text")]
    config: Option<PathBuf>,
    /// EndpointPickerConfig YAML given inline.
    #[arg(long)]
    config_text: Option<String>,
    /// Built-in routing when no config is given.
    #[arg(long, default_value = "prefix", value_parser = clap::builder::PossibleValuesParser::new(llmd::scheduler::presets::PRESETS))]
    routing: String,
    /// An endpoint: `NAME=HOST:PORT`, optionally `,kv=tcp://HOST:PORT` (its KV events),
    /// `,role=prefill|decode|both`. Repeat for each.
    #[arg(long = "endpoint", conflicts_with_all = ["pool_name", "endpoint_selector"])]
    endpoints: Vec<String>,
    /// An endpoints file (YAML or JSON: `endpoints: [{name, address, port, role,
    /// kvEvents, labels}]`, llm-d's file-discovery format), followed for changes.
    #[arg(long, conflicts_with_all = ["pool_name", "endpoint_selector"])]
    endpoints_file: Option<PathBuf>,
    /// How often to look for changes in endpoints files, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    endpoints_poll_ms: u64,
    #[command(flatten)]
    gateway: GatewayArgs,

    /// Seconds to let requests in flight finish after SIGTERM or Ctrl-C (a second
    /// signal exits at once).
    #[arg(long, default_value_t = 25)]
    shutdown_timeout: u64,
    /// Address to bind. Default 127.0.0.1; in a pod with --pool-name or
    /// --endpoint-selector, the pod's own network (`$POD_IP`, else every interface of
    /// the pod's network namespace), as llm-d's EPP, which the gateway reaches there.
    #[arg(long)]
    host: Option<String>,
    /// ext-proc gRPC port (0 to disable).
    #[arg(long, default_value_t = 9002)]
    grpc_port: u16,
    /// HTTP gateway port (0 to disable). Default 8000 standalone; 0 with --pool-name or
    /// --endpoint-selector, as llm-d's EPP serves no HTTP (and the chart's tokenizer
    /// sidecar takes 8000 in the pod).
    #[arg(long)]
    http_port: Option<u16>,
    /// gRPC health port (`grpc.health.v1`, as llm-d's EPP): `liveness` serves from the
    /// start; `""`, `readiness`, the ext-proc service and `inference-extension` once the
    /// endpoints are discovered and this replica leads, until shutdown begins (0 to
    /// disable).
    #[arg(long, default_value_t = 9003)]
    grpc_health_port: u16,
    /// Prometheus metrics port (`/metrics`; 0 to disable).
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    /// InferenceObjective manifests (YAML, several documents allowed; other kinds are
    /// skipped): a request's `x-llm-d-inference-objective` header names one, and its
    /// `spec.priority` orders flow control (negative: sheddable). With --pool-name they
    /// come from the cluster instead.
    #[arg(long, conflicts_with_all = ["pool_name", "endpoint_selector"])]
    objectives: Option<PathBuf>,
    /// Checkpoint directory whose tokenizer.json and chat template the engines use; lets
    /// precise-prefix scoring hash text prompts (without it, only token-id prompts).
    #[arg(long)]
    tokenizer: Option<PathBuf>,

    #[command(flatten)]
    k8s: KubeArgs,
    #[command(flatten)]
    model_server: ModelServerArgs,
    #[command(flatten)]
    compat: CompatArgs,
}

/// Kubernetes mode, with llm-d's EPP flag names.
#[derive(Args, Debug)]
struct KubeArgs {
    /// The InferencePool to serve: its pods become the endpoints (Kubernetes mode).
    #[arg(long, conflicts_with = "endpoint_selector")]
    pool_name: Option<String>,
    /// The pool's namespace (default: $NAMESPACE, else `default`).
    #[arg(long, env = "NAMESPACE", default_value = "")]
    pool_namespace: String,
    /// The pool's API group: `inference.networking.k8s.io` (v1) or the legacy
    /// `inference.networking.x-k8s.io` (v1alpha2).
    #[arg(long, default_value = llmd::k8s::watch::POOL_GROUP_V1)]
    pool_group: String,
    /// Without a pool: the label selector (`k=v,k2=v2`) of the model-server pods in the
    /// namespace (llm-d's pool-less mode; needs --endpoint-target-ports).
    #[arg(long, requires = "endpoint_target_ports")]
    endpoint_selector: Option<String>,
    /// Without a pool: the model servers' ports, comma separated (one endpoint each).
    #[arg(long, requires = "endpoint_selector", value_delimiter = ',')]
    endpoint_target_ports: Vec<u16>,
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster
    /// service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Elect one leader among replicas on the Lease `epp-<ns>-<pool>.llm-d.ai`; followers
    /// keep their endpoints current but report not ready.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    ha_enable_leader_election: bool,
    /// How long a leader's claim lasts without renewal (llmd; llm-d fixes 15s).
    #[arg(long, default_value = "15s", value_parser = go_duration)]
    ha_lease_duration: Duration,
    /// How long a leader tries to renew before stepping down (llmd; llm-d fixes 10s).
    #[arg(long, default_value = "10s", value_parser = go_duration)]
    ha_renew_deadline: Duration,
    /// Time between election attempts (llmd; llm-d fixes 2s).
    #[arg(long, default_value = "2s", value_parser = go_duration)]
    ha_retry_period: Duration,
}

impl KubeArgs {
    fn enabled(&self) -> bool {
        self.pool_name.is_some() || self.endpoint_selector.is_some()
    }

    fn namespace(&self) -> String {
        if self.pool_namespace.is_empty() { "default".into() } else { self.pool_namespace.clone() }
    }
}

/// How model servers' metrics are read, with llm-d's flag names.
#[derive(Args, Debug)]
struct ModelServerArgs {
    /// How often to scrape each model server's metrics.
    #[arg(long, default_value = "50ms", value_parser = go_duration)]
    refresh_metrics_interval: Duration,
    /// Metrics older than this count as unknown.
    #[arg(long, default_value = "2s", value_parser = go_duration)]
    metrics_staleness_threshold: Duration,
    /// How often llm-d refreshes its own Prometheus gauges; llmd computes them on each
    /// scrape, so any value is accepted and has no effect.
    #[arg(long, default_value = "5s", value_parser = go_duration)]
    refresh_prometheus_metrics_interval: Duration,
    /// Scheme of the model servers' metrics endpoint.
    #[arg(long, default_value = "http")]
    model_server_metrics_scheme: String,
    /// Path of the model servers' metrics endpoint.
    #[arg(long, default_value = "/metrics")]
    model_server_metrics_path: String,
    /// Port of the model servers' metrics (default: the target port).
    #[arg(long)]
    model_server_metrics_port: Option<u16>,
    /// Accept any certificate from https metrics endpoints.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    model_server_metrics_https_insecure_skip_verify: bool,
    /// The waiting-requests metric.
    #[arg(long, default_value = "vllm:num_requests_waiting")]
    total_queued_requests_metric: String,
    /// The running-requests metric.
    #[arg(long, default_value = "vllm:num_requests_running")]
    total_running_requests_metric: String,
    /// The KV-cache usage metric.
    #[arg(long, default_value = "vllm:kv_cache_usage_perc")]
    kv_cache_usage_percentage_metric: String,
    /// The LoRA adapters metric.
    #[arg(long, default_value = "vllm:lora_requests_info")]
    lora_info_metric: String,
    /// The cache configuration metric.
    #[arg(long, default_value = "vllm:cache_config_info")]
    cache_info_metric: String,
}

impl ModelServerArgs {
    /// llmd reads vLLM's series over the endpoint's own port; other names and places
    /// are set in the config's data layer. A flag asking for something else is refused
    /// with the config that does it, rather than ignored.
    fn check(&self) -> Result<()> {
        let defaults = [
            ("--model-server-metrics-scheme", self.model_server_metrics_scheme.as_str(), "http"),
            ("--model-server-metrics-path", self.model_server_metrics_path.as_str(), "/metrics"),
            ("--total-queued-requests-metric", self.total_queued_requests_metric.as_str(), "vllm:num_requests_waiting"),
            (
                "--total-running-requests-metric",
                self.total_running_requests_metric.as_str(),
                "vllm:num_requests_running",
            ),
            (
                "--kv-cache-usage-percentage-metric",
                self.kv_cache_usage_percentage_metric.as_str(),
                "vllm:kv_cache_usage_perc",
            ),
            ("--lora-info-metric", self.lora_info_metric.as_str(), "vllm:lora_requests_info"),
            ("--cache-info-metric", self.cache_info_metric.as_str(), "vllm:cache_config_info"),
        ];
        for (flag, got, default) in defaults {
            if got != default {
                bail!(
                    "{flag} {got:?}: llmd takes other metric names and places from the config's data layer, not \
                     flags; declare a metrics-data-source (scheme, path, port, insecureSkipVerify) and a \
                     core-metrics-extractor with engineConfigs [{{name: vllm, queuedRequestsSpec, \
                     runningRequestsSpec, kvUsageSpec}}] under dataLayer.sources (see llmd-scheduler's README)"
                );
            }
        }
        if self.model_server_metrics_port.is_some() || self.model_server_metrics_https_insecure_skip_verify {
            bail!(
                "--model-server-metrics-port / --model-server-metrics-https-insecure-skip-verify: set port and \
                 insecureSkipVerify on a metrics-data-source in the config's dataLayer instead"
            );
        }
        Ok(())
    }
}

/// llm-d EPP flags a swapped-in deployment may still pass; what each does here is in
/// its help.
#[derive(Args, Debug)]
struct CompatArgs {
    /// Log encoding (`json` or `console`); llmd logs plain text either way.
    #[arg(long, value_parser = ["json", "console"])]
    zap_encoder: Option<String>,
    /// Log verbosity (llm-d's `-v`); use --log for llmd's filter.
    #[arg(long)]
    v: Option<u8>,
    /// Export OpenTelemetry traces: llmd has no OTLP exporter; spans go to the log.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    tracing: bool,
    /// Serve ext-proc over TLS, as llm-d's EPP does by default: default true with
    /// --pool-name or --endpoint-selector (what gateways set up for llm-d expect), false
    /// standalone. The certificate is --cert-path's, else self-signed at start-up.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    secure_serving: Option<bool>,
    /// Directory holding `tls.crt` and `tls.key` for --secure-serving (a mounted TLS
    /// Secret).
    #[arg(long)]
    cert_path: Option<PathBuf>,
    /// Reload --cert-path's files when they change.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_cert_reload: bool,
    /// Authenticate /metrics scrapes with TokenReviews (llm-d's default is true): llmd's
    /// /metrics is open; `true` is refused for the same reason as --secure-serving.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_endpoint_auth: bool,
    /// Go profiling endpoints: accepted, none served.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_pprof: Option<bool>,
    /// After SIGTERM: report not ready, give the Lease up, and keep serving ext-proc and
    /// health this long before stopping (llm-d's drain window). Default 30s with
    /// --pool-name or --endpoint-selector, 0 standalone.
    #[arg(long, value_parser = go_duration)]
    drain_timeout: Option<Duration>,
    /// Largest ext-proc message received (`4MiB`, `25MB`...; default 4MiB, tonic's).
    #[arg(long, value_parser = byte_size)]
    grpc_max_recv_msg_size: Option<usize>,
    /// Largest ext-proc message sent.
    #[arg(long, value_parser = byte_size)]
    grpc_max_send_msg_size: Option<usize>,
    /// Lowest TLS version for --secure-serving: `VersionTLS12` (default) or `VersionTLS13`.
    #[arg(long, value_parser = ["VersionTLS12", "VersionTLS13"])]
    tls_min_version: Option<String>,
    /// TLS cipher suites by Go name: refused when set (llmd uses rustls' safe defaults).
    #[arg(long, value_delimiter = ',')]
    tls_cipher_suites: Vec<String>,
    /// llm-d's ext-proc health checking: llmd always serves health on --grpc-health-port;
    /// accepted.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    health_checking: Option<bool>,
    /// Ignore Envoy's destination-endpoint subset hint: llmd does not read the hint, so
    /// it picks among all endpoints either way; accepted.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    disable_endpoint_subset_filter: Option<bool>,
    /// Per-endpoint scores in the response metadata: not emitted by llmd; `true` is
    /// refused.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    emit_endpoint_scores: bool,
    /// Allow alpha plugins: llmd loads every plugin it has; accepted.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_experimental_plugins: Option<bool>,
    /// ext-proc stream metrics: accepted; llmd's /metrics carries its own request
    /// counts.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_grpc_stream_metrics: Option<bool>,
    /// TLS on /metrics with client certificates: refused when set.
    #[arg(long)]
    metrics_client_ca_file: Option<PathBuf>,
    /// TLS on /metrics: refused when set.
    #[arg(long)]
    metrics_cert_dir: Option<PathBuf>,
}

/// A size like llm-d's gRPC flags take: `4194304`, `10MiB`, `25MB`, `512KiB`.
fn byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size like 10MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KB, KiB, MB, MiB, GB, GiB)")),
    };
    n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(|| format!("{s:?} is not a usable size"))
}

impl CompatArgs {
    fn check(&self) -> Result<()> {
        if self.secure_serving == Some(false) && self.cert_path.is_some() {
            bail!("--cert-path is given with --secure-serving=false: nothing would use it");
        }
        if self.enable_cert_reload && self.cert_path.is_none() {
            bail!("--enable-cert-reload needs --cert-path (a self-signed certificate has no files to watch)");
        }
        if self.metrics_endpoint_auth {
            bail!(
                "--metrics-endpoint-auth=true: llmd's /metrics has no authentication; pass --metrics-endpoint-auth=false and restrict it with a NetworkPolicy"
            );
        }
        if self.emit_endpoint_scores {
            bail!(
                "--emit-endpoint-scores=true: llmd does not emit per-endpoint scores in the ext-proc metadata (they are in its debug log)"
            );
        }
        if !self.tls_cipher_suites.is_empty() {
            bail!("--tls-cipher-suites: llmd serves TLS with rustls' safe default suites and takes no list");
        }
        if self.metrics_client_ca_file.is_some() || self.metrics_cert_dir.is_some() {
            bail!(
                "--metrics-client-ca-file / --metrics-cert-dir: llmd serves /metrics over plain HTTP; restrict it with a NetworkPolicy"
            );
        }
        if self.tracing {
            tracing::info!("--tracing: llmd has no OTLP exporter; spans go to the log");
        }
        Ok(())
    }
}

/// The configuration from --config-file, --config-text or the preset.
fn scheduler_config(a: &EppArgs) -> Result<llmd::scheduler::SchedulerConfig> {
    use llmd::scheduler::{PluginRegistry, SchedulerConfig, presets};
    let registry = PluginRegistry::with_builtins();
    Ok(match (&a.config, &a.config_text) {
        (Some(path), _) => SchedulerConfig::from_file(path, &registry)?,
        (None, Some(text)) => SchedulerConfig::from_yaml(text, "--config-text", &registry)?,
        (None, None) => presets::preset(&a.routing, &registry)?,
    })
}

/// The address to bind: the user's, else loopback outside a cluster, else the pod's.
fn bind_host(a: &EppArgs) -> String {
    a.host.clone().unwrap_or_else(|| crate::default_host(a.k8s.enabled()))
}

/// This replica's name in the Lease: the pod's, plus a random suffix (a restarted pod
/// is a new candidate), as controller-runtime names it.
fn identity() -> String {
    use std::hash::{BuildHasher, Hasher};
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "llmd-epp".into());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    format!("{base}_{:016x}", h.finish())
}

async fn kube_client(k: &KubeArgs) -> Result<llmd::k8s::kube::Client> {
    kube_client_from(k.kubeconfig.as_ref()).await
}

/// A client from `kubeconfig`, else $KUBECONFIG / ~/.kube/config, else the in-cluster
/// service account.
pub(crate) async fn kube_client_from(kubeconfig: Option<&PathBuf>) -> Result<llmd::k8s::kube::Client> {
    use llmd::k8s::kube;
    let config = match kubeconfig {
        Some(path) => {
            let file =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
        }
        None => {
            kube::Config::infer().await.context("finding the cluster (kubeconfig or in-cluster service account)")?
        }
    };
    Ok(kube::Client::try_from(config)?)
}

pub(crate) fn epp(a: EppArgs) -> Result<()> {
    use llmd::scheduler::discovery::{Discovery, FileDiscovery, StaticDiscovery, parse_endpoint_spec};
    use llmd::scheduler::extproc::ExtProc;
    use llmd::scheduler::gateway::Gateway;
    use llmd::scheduler::picker::EndpointPicker;
    use llmd::scheduler::{DiscoveryRef, Scheduler, SystemClock, datastore};

    a.model_server.check()?;
    a.compat.check()?;
    if a.k8s.ha_enable_leader_election && !a.k8s.enabled() {
        bail!("--ha-enable-leader-election needs --pool-name (or --endpoint-selector): it elects on the pool's Lease");
    }
    let cfg = scheduler_config(&a)?;
    let endpoints = a.endpoints.iter().map(|s| parse_endpoint_spec(s)).collect::<Result<Vec<_>, _>>()?;
    // Where endpoints come from: a pool (or selector) in the cluster, or --endpoint,
    // --endpoints-file, and the config's dataLayer.discovery, in any combination.
    let mut sources: Vec<Box<dyn Discovery>> = Vec::new();
    if !endpoints.is_empty() {
        sources.push(Box::new(StaticDiscovery::new(endpoints)));
    }
    let poll = Duration::from_millis(a.endpoints_poll_ms.max(10));
    if let Some(f) = &a.endpoints_file {
        sources.push(Box::new(FileDiscovery::new(f, Some(poll))));
    }
    match &cfg.discovery {
        Some(DiscoveryRef::File { path, watch }) => {
            sources.push(Box::new(FileDiscovery::new(path, watch.then_some(poll))));
        }
        // Peer clusters' EPPs as endpoints, scraped where their labels say.
        Some(DiscoveryRef::MultiClusterFile { path, watch }) => {
            sources.push(Box::new(FileDiscovery::multicluster(path, watch.then_some(poll))));
        }
        _ => {}
    }
    let pool_source = if let Some(name) = &a.k8s.pool_name {
        Some(llmd::k8s::watch::PoolSource::Named(llmd::k8s::watch::PoolRef {
            namespace: a.k8s.namespace(),
            name: name.clone(),
            api: llmd::k8s::watch::PoolApi::from_group(&a.k8s.pool_group)?,
        }))
    } else if let Some(sel) = &a.k8s.endpoint_selector {
        Some(llmd::k8s::watch::PoolSource::Selector(llmd::k8s::resources::PoolView::from_selector(
            &a.k8s.namespace(),
            sel,
            &a.k8s.endpoint_target_ports,
        )?))
    } else {
        None
    };
    if sources.is_empty() && pool_source.is_none() {
        bail!(
            "no endpoints: give --pool-name (Kubernetes), --endpoint NAME=HOST:PORT, --endpoints-file F, or a config with dataLayer.discovery"
        );
    }
    let http_port = a.http_port.unwrap_or(if a.k8s.enabled() { 0 } else { 8000 });
    // llm-d keeps ext-proc and health serving this long after SIGTERM.
    let drain =
        a.compat.drain_timeout.unwrap_or(if a.k8s.enabled() { Duration::from_secs(30) } else { Duration::ZERO });
    if a.grpc_port == 0 && http_port == 0 {
        bail!("both --grpc-port and --http-port are 0: nothing to serve");
    }
    let host = bind_host(&a);
    // The Lease of a pool-less picker is named after its Deployment, as llm-d names it,
    // so pickers of different Deployments in one namespace elect apart.
    let lease_target = match &a.k8s.pool_name {
        Some(p) => p.clone(),
        None => {
            let pod = std::env::var("POD_NAME").unwrap_or_default();
            match deployment_of(&pod) {
                Some(d) => d.to_string(),
                None if a.k8s.ha_enable_leader_election => bail!(
                    "--ha-enable-leader-election with --endpoint-selector names the Lease after the Deployment, \
                     read from $POD_NAME (<deployment>-<hash>-<id>); got {pod:?}"
                ),
                None => String::new(),
            }
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tokenizer = match &a.tokenizer {
            None => None,
            Some(dir) => {
                let t: Arc<dyn llmd::scheduler::picker::PromptTokenizer> =
                    Arc::new(cached_renderer(llmd::openai::PromptRenderer::from_dir(dir)?));
                Some(t)
            }
        };
        let clock = Arc::new(SystemClock::default());
        let store = datastore(clock.clone());
        let mut picker_cfg = a.gateway.picker();
        picker_cfg.scrape_interval = a.model_server.refresh_metrics_interval;
        picker_cfg.staleness = a.model_server.metrics_staleness_threshold;
        let picker = EndpointPicker::new(Scheduler::new(cfg, 0), store, picker_cfg, tokenizer);
        if let Some(path) = &a.objectives {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let objectives =
                llmd::scheduler::objectives::Objectives::from_manifests(&text, &path.display().to_string())?;
            tracing::info!(objectives = ?objectives.priorities(), "InferenceObjectives loaded");
            picker.set_objectives(objectives);
        }
        for s in sources {
            let name = s.name().to_string();
            let first = picker.run_discovery(s).with_context(|| format!("endpoint discovery ({name})"))?;
            tracing::info!(source = %name, added = first.added, "endpoints discovered");
        }
        // Scrapers and subscribers live as long as the process.
        picker.start();
        let shutdown = llmd::shutdown::Shutdown::install();
        let mut tasks = Vec::new();
        // The gRPC servers (ext-proc, health, metrics) stop after the drain window; the
        // elector stops at the signal, or when the picker exits for any other reason.
        let served_until = {
            let begun = shutdown.begun();
            futures_util::future::FutureExt::shared(Box::pin(async move {
                begun.await;
                tokio::time::sleep(drain).await;
            }))
        };
        let (stop_electing, electing) = tokio::sync::watch::channel(false);
        {
            let begun = shutdown.begun();
            let stop = stop_electing.clone();
            tokio::spawn(async move {
                begun.await;
                let _ = stop.send(true);
            });
        }

        // The health service first: liveness passes while the pool syncs.
        let health = if a.grpc_health_port != 0 {
            let listener = tokio::net::TcpListener::bind((host.as_str(), a.grpc_health_port)).await?;
            println!("llmd epp: gRPC health on grpc://{}", listener.local_addr()?);
            let (health, svc) = llmd::scheduler::grpchealth::GrpcHealth::new().await;
            // A check answers at once; one that does not is cut rather than held.
            let router = tonic::transport::Server::builder().timeout(Duration::from_secs(5)).add_service(svc);
            tasks.push(serve_grpc(router, listener, served_until.clone()));
            Some(health)
        } else {
            None
        };
        let set_ready = {
            let health = health.clone();
            move |f: Box<dyn FnOnce(&mut llmd::scheduler::grpchealth::Readiness) + Send>| {
                let health = health.clone();
                async move {
                    if let Some(h) = health {
                        h.update(f).await;
                    }
                }
            }
        };

        // Kubernetes: the pool's pods into the datastore, objectives, the Lease.
        let mut k8s_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        let mut pool_watch = None;
        let mut elected = None;
        if let Some(source) = pool_source {
            let client = tokio::time::timeout(Duration::from_secs(30), kube_client(&a.k8s))
                .await
                .context("connecting to the cluster timed out")??;
            let ns = a.k8s.namespace();
            let watch = llmd::k8s::watch::watch(client.clone(), source, picker.writer().clone());
            if let Some(pool) = &a.k8s.pool_name {
                let p = picker.clone();
                k8s_tasks.push(llmd::k8s::watch::watch_objectives(
                    client.clone(),
                    &ns,
                    pool,
                    Arc::new(move |o: llmd::scheduler::objectives::Objectives| p.set_objectives(o)),
                ));
            }
            if a.k8s.ha_enable_leader_election {
                let mut ecfg = llmd::k8s::election::ElectionConfig::for_pool(&ns, &lease_target, identity());
                ecfg.lease_duration = a.k8s.ha_lease_duration;
                ecfg.renew_deadline = a.k8s.ha_renew_deadline;
                ecfg.retry_period = a.k8s.ha_retry_period;
                tracing::info!(lease = %ecfg.name, identity = %ecfg.identity, "leader election on");
                let elector = llmd::k8s::election::LeaderElector::new(client, ecfg, clock.clone())?;
                let (tx, rx) = tokio::sync::watch::channel(false);
                let mut electing = electing.clone();
                let stop = async move {
                    let _ = electing.wait_for(|s| *s).await;
                };
                elected = Some(tokio::spawn(llmd::k8s::election::run(elector, tx, stop)));
                let mut rx2 = rx.clone();
                let set = set_ready.clone();
                k8s_tasks.push(tokio::spawn(async move {
                    loop {
                        let lead = *rx2.borrow_and_update();
                        tracing::info!(leader = lead, "leadership");
                        set(Box::new(move |r| r.leading = lead)).await;
                        if rx2.changed().await.is_err() {
                            return;
                        }
                    }
                }));
            } else {
                set_ready(Box::new(|r| r.leading = true)).await;
            }
            let mut synced = watch.synced();
            let set = set_ready.clone();
            k8s_tasks.push(tokio::spawn(async move {
                loop {
                    let s = *synced.borrow_and_update();
                    set(Box::new(move |r| r.synced = s)).await;
                    if synced.changed().await.is_err() {
                        return;
                    }
                }
            }));
            pool_watch = Some(watch);
        } else {
            // The first discovery sync has run: the endpoints are known.
            set_ready(Box::new(|r| {
                r.synced = true;
                r.leading = true;
            }))
            .await;
        }
        {
            let draining = shutdown.begun();
            let set = set_ready.clone();
            tokio::spawn(async move {
                draining.await;
                set(Box::new(|r| r.draining = true)).await;
            });
        }

        let mut http_gateway: Option<Arc<Gateway>> = None;
        if http_port != 0 {
            let listener = tokio::net::TcpListener::bind((host.as_str(), http_port)).await?;
            println!("llmd epp: HTTP gateway at http://{}/v1", listener.local_addr()?);
            let gateway = Gateway::new(picker.clone(), a.gateway.gateway());
            let stop = shutdown.begun();
            let served = gateway.clone();
            let draining = shutdown.begun();
            let readiness = gateway.clone();
            // Not ready from the first signal on, so load balancers stop sending.
            tokio::spawn(async move {
                draining.await;
                readiness.begin_drain();
            });
            http_gateway = Some(gateway);
            tasks.push(tokio::spawn(async move { served.serve(listener, stop).await.map_err(anyhow::Error::from) }));
        }
        if a.grpc_port != 0 {
            let listener = tokio::net::TcpListener::bind((host.as_str(), a.grpc_port)).await?;
            let mut svc = ExtProc::server(picker.clone());
            if let Some(n) = a.compat.grpc_max_recv_msg_size {
                svc = svc.max_decoding_message_size(n);
            }
            if let Some(n) = a.compat.grpc_max_send_msg_size {
                svc = svc.max_encoding_message_size(n);
            }
            let router = tonic::transport::Server::builder().add_service(svc);
            match serving_tls(&a, &host)? {
                None => {
                    println!("llmd epp: Envoy ext-proc on grpc://{}", listener.local_addr()?);
                    tasks.push(serve_grpc(router, listener, served_until.clone()));
                }
                Some(tls) => {
                    println!("llmd epp: Envoy ext-proc on grpcs://{} (TLS)", listener.local_addr()?);
                    if a.compat.enable_cert_reload
                        && let Some(t) = tls.spawn_reload(Duration::from_secs(5))
                    {
                        k8s_tasks.push(t);
                    }
                    let incoming = tls.incoming(listener);
                    let stop = served_until.clone();
                    tasks.push(tokio::spawn(async move {
                        router.serve_with_incoming_shutdown(incoming, stop).await.map_err(anyhow::Error::from)
                    }));
                }
            }
        }
        if a.metrics_port != 0 {
            let listener = tokio::net::TcpListener::bind((host.as_str(), a.metrics_port)).await?;
            println!("llmd epp: metrics on http://{}/metrics", listener.local_addr()?);
            tasks.push(serve_metrics(picker.clone(), listener, served_until.clone()));
        }
        // The first server to fail ends the picker; otherwise all run until shutdown.
        let all = async {
            let mut running: futures_util::stream::FuturesUnordered<_> = tasks.into_iter().collect();
            while let Some(done) = futures_util::StreamExt::next(&mut running).await {
                done??;
            }
            anyhow::Ok(())
        };
        tokio::pin!(all);
        if !drain.is_zero() {
            tracing::info!(
                ?drain,
                "on SIGTERM: not ready and the Lease released at once, serving on for the drain window"
            );
        }
        let outcome = shutdown.drain(&mut all, drain + Duration::from_secs(a.shutdown_timeout)).await;
        // The Lease goes back before the process ends (at the signal, or now when a
        // server failed), so a follower takes over at its next step.
        let _ = stop_electing.send(true);
        if let Some(e) = elected {
            let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
        }
        drop(pool_watch);
        k8s_tasks.iter().for_each(|t| t.abort());
        match outcome {
            Ok(done) => done?,
            Err(cut) => {
                // Streams still running end with an error event rather than a bare cut.
                if let Some(g) = &http_gateway {
                    g.cut_streams();
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), &mut all).await;
                return Err(cut.into());
            }
        }
        picker.shutdown();
        println!("llmd epp: stopped");
        Ok(())
    })
}

/// The Deployment a pod belongs to, from its name `<deployment>-<hash>-<id>`, as llm-d
/// reads it (`extractDeploymentName`).
fn deployment_of(pod: &str) -> Option<&str> {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let (rest, id) = pod.rsplit_once('-')?;
    let (deployment, hash) = rest.rsplit_once('-')?;
    (ok(id) && ok(hash) && !deployment.is_empty()).then_some(deployment)
}

/// The ext-proc listener's TLS, when secure serving is on (see --secure-serving).
fn serving_tls(a: &EppArgs, host: &str) -> Result<Option<llmd::scheduler::servingtls::ServingTls>> {
    use llmd::scheduler::servingtls::ServingTls;
    if !a.compat.secure_serving.unwrap_or(a.k8s.enabled()) {
        return Ok(None);
    }
    let tls = match &a.compat.cert_path {
        Some(dir) => ServingTls::from_dir(dir)?,
        None => {
            let mut names = vec!["localhost".to_string()];
            if host != "0.0.0.0" && host != "::" {
                names.push(host.to_string());
            }
            if let Ok(pod) = std::env::var("POD_NAME") {
                names.push(pod);
            }
            tracing::info!(?names, "secure serving with a self-signed certificate");
            ServingTls::self_signed(&names)?
        }
    };
    Ok(Some(if a.compat.tls_min_version.as_deref() == Some("VersionTLS13") { tls.tls13_only()? } else { tls }))
}

/// `/metrics` on its own port, as llm-d's EPP serves it on 9090.
fn serve_metrics(
    picker: Arc<llmd::scheduler::picker::EndpointPicker>,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<()>> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let picker = picker.clone();
            async move {
                match picker.metrics_text() {
                    Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                }
            }
        }),
    );
    tokio::spawn(
        async move { axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(anyhow::Error::from) },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_deployment_is_its_name_less_two_suffixes() {
        assert_eq!(deployment_of("qwen-epp-7d9f8b6c5d-x2k4p"), Some("qwen-epp"));
        assert_eq!(deployment_of("epp-abc-12"), Some("epp"));
        assert_eq!(deployment_of("single"), None);
        assert_eq!(deployment_of("a-b"), None);
        assert_eq!(deployment_of("x-Upper-abc"), None);
        assert_eq!(deployment_of(""), None);
    }

    #[test]
    fn sizes_read_as_llm_d_writes_them() {
        assert_eq!(byte_size("10MiB"), Ok(10 << 20));
        assert_eq!(byte_size("25MB"), Ok(25_000_000));
        assert_eq!(byte_size("4194304"), Ok(4_194_304));
        assert!(byte_size("10 parsecs").is_err());
        assert!(byte_size("0").is_err());
    }
}
