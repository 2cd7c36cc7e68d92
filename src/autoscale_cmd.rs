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
    }
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
