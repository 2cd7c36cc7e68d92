//! `llmd autoscale`: the autoscaler's commands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use llmd::autoscale::sim::{self, SimReport, scenario};

#[derive(Args, Debug)]
pub(crate) struct AutoscaleArgs {
    #[command(subcommand)]
    command: AutoscaleCommand,
}

#[derive(Subcommand, Debug)]
enum AutoscaleCommand {
    /// Replay an arrival trace against simulated replicas under each policy (static for
    /// the peak, HPA-style threshold, WVA saturation, model-based) and compare SLO
    /// attainment and replica-seconds. Scenario constants: llmd-autoscale's
    /// `sim::scenario` (BENCHMARKS.md).
    Simulate(SimulateArgs),
    /// Decide for the `VariantAutoscaling` resources (`llmd.ai/v1alpha1`, llm-d WVA's)
    /// of a namespace: every interval, read each target Deployment's ready pods'
    /// `/metrics`, decide per model, and write the Deployment's scale (unless
    /// --dry-run), the resource's status and WVA's metrics (`wva_desired_replicas`...).
    Kube(KubeArgs),
}

#[derive(Args, Debug)]
struct KubeArgs {
    /// The namespace to watch (default: $NAMESPACE, else `default`).
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    namespace: String,
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else the in-cluster
    /// service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// saturation (llm-d WVA's, with its defaults) or model (model-based: profiles
    /// fitted from the pods' latency histograms, TTFT/ITL objectives below).
    #[arg(long, default_value = "saturation", value_parser = ["saturation", "model"])]
    policy: String,
    /// The model-based policy's mean TTFT objective, seconds.
    #[arg(long, default_value_t = 0.5)]
    slo_ttft: f64,
    /// The model-based policy's mean ITL objective, seconds.
    #[arg(long, default_value_t = 0.05)]
    slo_itl: f64,
    /// Seconds between passes.
    #[arg(long, default_value_t = 15.0)]
    interval: f64,
    /// Advisory: write status and metrics, never the scale.
    #[arg(long)]
    dry_run: bool,
    /// One pass, then exit (for scripts and CronJobs).
    #[arg(long)]
    once: bool,
    /// Address for `/metrics` (WVA's metrics); loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    metrics_host: String,
    /// Port for `/metrics` (0: none).
    #[arg(long, default_value_t = 9090)]
    metrics_port: u16,
    /// `MODEL=URL`: the endpoint picker's `/metrics` for a model (repeatable). Requests
    /// its flow control holds (`llm_d_epp_flow_control_queue_size`) count as load, and
    /// bring a variant at zero replicas back to one.
    #[arg(long, value_parser = parse_epp)]
    epp_metrics: Vec<(String, String)>,
}

fn parse_epp(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((m, u)) if !m.is_empty() && (u.starts_with("http://") || u.starts_with("https://")) => {
            Ok((m.to_string(), u.to_string()))
        }
        _ => Err(format!("{s:?}: expected MODEL=http://HOST:PORT/metrics")),
    }
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// The trace: diurnal, bursty or step.
    #[arg(long, default_value = "diurnal")]
    trace: String,
    /// Seconds of trace.
    #[arg(long, default_value_t = 7200.0)]
    duration: f64,
    /// The peak load, in replicas' worth (one replica's capacity within the objectives).
    #[arg(long, default_value_t = 12.0)]
    peak: f64,
    /// The trace's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Policies to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "static,threshold,saturation,model")]
    policies: Vec<String>,
    /// Write an SVG of the runs (replicas and TTFT over time) here.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Print the reports as JSON (timelines included) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn autoscale(a: AutoscaleArgs) -> Result<()> {
    match a.command {
        AutoscaleCommand::Simulate(s) => simulate(s),
        AutoscaleCommand::Kube(k) => kube(k),
    }
}

fn kube(a: KubeArgs) -> Result<()> {
    use llmd::autoscale::{
        ForecastConfig, ModelBasedConfig, ModelBasedPolicy, SaturationConfig, SaturationPolicy, StabilizeConfig,
    };
    use llmd::autoscaler::kube::KubeAutoscaler;

    if !(a.interval > 0.0 && a.interval.is_finite()) {
        anyhow::bail!("--interval {}: expected a positive number of seconds", a.interval);
    }
    let (policy, ttft, itl) = (a.policy.clone(), a.slo_ttft, a.slo_itl);
    let make: Box<dyn Fn() -> Result<Box<dyn llmd::autoscale::Policy>> + Send + Sync> = Box::new(move || {
        Ok(match policy.as_str() {
            "model" => Box::new(ModelBasedPolicy::new(ModelBasedConfig {
                slo_ttft: ttft,
                slo_itl: itl,
                // A fall is planned for at the end of the window that holds each
                // recommendation.
                forecast: ForecastConfig {
                    lookahead_down: StabilizeConfig::default().scale_down_window,
                    ..ForecastConfig::default()
                },
                ..Default::default()
            })?),
            _ => Box::new(SaturationPolicy::new(SaturationConfig::default())?),
        })
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = crate::epp::kube_client_from(a.kubeconfig.as_ref()).await?;
        let mut scaler = KubeAutoscaler::new(client, &a.namespace, make, StabilizeConfig::default(), a.dry_run)?;
        for (model, url) in &a.epp_metrics {
            scaler.epp_metrics(model, url);
        }
        let mut registry = prometheus_client::registry::Registry::default();
        scaler.metrics().register(&mut registry);
        let registry = std::sync::Arc::new(registry);
        if a.metrics_port != 0 {
            let bind = format!("{}:{}", a.metrics_host, a.metrics_port);
            let listener = tokio::net::TcpListener::bind(&bind).await.with_context(|| format!("binding {bind}"))?;
            println!("llmd autoscale: metrics on http://{}/metrics", listener.local_addr()?);
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move {
                        let mut text = String::new();
                        match prometheus_client::encoding::text::encode(&mut text, &registry) {
                            Ok(()) => (axum::http::StatusCode::OK, text),
                            Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                        }
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        let started = std::time::Instant::now();
        let mode = if a.dry_run { "advisory (dry run)" } else { "scaling" };
        println!("llmd autoscale: {} policy on namespace {:?}, {mode}", a.policy, a.namespace);
        let shutdown = llmd::shutdown::Shutdown::install();
        loop {
            match scaler.reconcile(started.elapsed().as_secs_f64()).await {
                Ok(decisions) => {
                    for (va, d) in decisions {
                        println!("{va}: {} -> {} ({:?})", d.current, d.desired, d.reason);
                    }
                }
                Err(e) => {
                    if a.once {
                        return Err(e);
                    }
                    tracing::warn!(error = %format!("{e:#}"), "autoscaling pass failed");
                }
            }
            if a.once {
                return Ok(());
            }
            tokio::select! {
                () = shutdown.begun() => return Ok(()),
                () = tokio::time::sleep(std::time::Duration::from_secs_f64(a.interval)) => {}
            }
        }
    })
}

fn simulate(a: SimulateArgs) -> Result<()> {
    let spec = scenario::trace(&a.trace, a.duration, a.peak, a.seed)?;
    let trace = sim::generate(&spec)?;
    // Static provisioning: what the capacity model says the peak needs.
    let peak = a.peak.ceil() as u32;
    let mut reports: Vec<SimReport> = Vec::new();
    for name in &a.policies {
        let mut policy = scenario::policy(name, peak)?;
        let initial = if name == "static" { peak } else { 1 };
        let cfg = scenario::config(a.duration, 1, initial);
        eprintln!("running {name} over {} requests", trace.len());
        reports.push(sim::simulate(&cfg, &trace, policy.as_mut()).with_context(|| format!("simulating {name}"))?);
    }
    if let Some(path) = &a.svg {
        let title = format!(
            "{} trace, {:.0} s, peak {} replicas' worth ({} requests)",
            a.trace,
            a.duration,
            a.peak,
            trace.len()
        );
        std::fs::write(path, sim::svg::render(&title, &reports, scenario::SLO_TTFT))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    let baseline = reports.iter().find(|r| r.policy == "static").map(|r| r.replica_seconds);
    println!(
        "{} trace, {:.0} s, {} requests, peak {} replicas' worth (one replica: {:.2} req/s)\n",
        a.trace,
        a.duration,
        trace.len(),
        a.peak,
        scenario::replica_capacity()
    );
    println!(
        "| policy | TTFT ≤ {} s | TTFT p50 | TTFT p99 | mean ITL | replica-seconds | vs static | scaling actions |",
        scenario::SLO_TTFT
    );
    println!("|---|---|---|---|---|---|---|---|");
    let oracle = scenario::oracle_replica_seconds(&trace, scenario::replica_capacity(), 15.0, a.duration);
    let ratio = |x: f64| baseline.map_or("-".to_string(), |b| format!("{:.2}", x / b));
    println!(
        "| oracle (a floor: each interval's load known ahead, no start-up) | | | | | {oracle:.0} | {} | |",
        ratio(oracle)
    );
    for r in &reports {
        let ratio = ratio(r.replica_seconds);
        println!(
            "| {} | {:.2} % | {:.3} s | {:.3} s | {:.1} ms | {:.0} | {ratio} | {} |",
            r.policy,
            r.attainment * 100.0,
            r.ttft_p50,
            r.ttft_p99,
            r.itl_mean * 1e3,
            r.replica_seconds,
            r.actions
        );
    }
    Ok(())
}
