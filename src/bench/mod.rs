//! `llmd bench`: named scenarios against a URL or against local clusters it starts, one
//! per routing configuration, compared in one run. Writes JSON, a Markdown table (each
//! routing's ratio against round robin) and an SVG plot of TTFT against request rate.

pub mod run;
pub mod scenario;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::cluster::{LocalCluster, Replica};
use run::RunStats;
use scenario::Scenario;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Routing presets (or `config:PATH`) to compare; ignored with `url`.
    pub routings: Vec<String>,
    /// Benchmark an existing endpoint instead of starting clusters.
    pub url: Option<String>,
    /// Replicas per started cluster.
    pub replicas: usize,
    /// Simulated replicas (else the built-in model on the CPU).
    pub sim: bool,
    /// Where to write `NAME.json`, `NAME.md` and `NAME.svg`.
    pub out: PathBuf,
}

/// One routing's runs.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingResult {
    /// Routing name.
    pub routing: String,
    /// One entry per rate.
    pub runs: Vec<RunStats>,
}

/// Everything a bench run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Replicas per cluster (0 for an external URL).
    pub replicas: usize,
    /// Simulated replicas.
    pub sim: bool,
    /// Results per routing.
    pub results: Vec<RoutingResult>,
}

/// Looks a scenario up by name in `benches/scenarios/` (or takes a path).
pub fn find_scenario(name_or_path: &str) -> Result<Scenario> {
    let p = Path::new(name_or_path);
    if p.exists() {
        return Scenario::from_file(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/scenarios");
    let file = dir.join(format!("{name_or_path}.yaml"));
    if !file.exists() {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().into_owned())).collect())
            .unwrap_or_default();
        bail!("no scenario {name_or_path:?} (known: {})", names.join(", "));
    }
    Scenario::from_file(&file)
}

async fn prefix_counters(client: &reqwest::Client, replicas: &[std::net::SocketAddr]) -> (f64, f64) {
    let (mut hits, mut queries) = (0.0, 0.0);
    for r in replicas {
        let Ok(resp) = client.get(format!("http://{r}/metrics")).send().await else { continue };
        let Ok(text) = resp.text().await else { continue };
        for line in text.lines() {
            let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            if line.starts_with("vllm:prefix_cache_hits_total{") {
                hits += value();
            } else if line.starts_with("vllm:prefix_cache_queries_total{") {
                queries += value();
            }
        }
    }
    (hits, queries)
}

/// Runs the benchmark.
pub async fn bench(opts: &BenchOptions) -> Result<Report> {
    let client = reqwest::Client::new();
    let s = &opts.scenario;
    let mut results = Vec::new();
    let routings: Vec<String> = match &opts.url {
        Some(_) => vec!["external".into()],
        None => opts.routings.clone(),
    };
    for routing in &routings {
        let mut runs = Vec::new();
        for &rate in &s.rates {
            let cluster = match &opts.url {
                Some(_) => None,
                None => {
                    let registry = llmd_scheduler::PluginRegistry::with_builtins();
                    let cfg = match routing.strip_prefix("config:") {
                        Some(path) => llmd_scheduler::SchedulerConfig::from_file(Path::new(path), &registry)?,
                        None => llmd_scheduler::presets::preset(routing, &registry)?,
                    };
                    let mut replicas = Vec::with_capacity(opts.replicas);
                    for _ in 0..opts.replicas {
                        replicas.push(if opts.sim {
                            Replica::simulated("llmd-sim", llmd_engine::LatencyModel::default(), 8192)?
                        } else {
                            Replica::builtin(2048)?
                        });
                    }
                    Some(LocalCluster::start(replicas, cfg, s.seed, "127.0.0.1:0").await?)
                }
            };
            let base = match (&cluster, &opts.url) {
                (Some(c), _) => format!("http://{}", c.addr),
                (None, Some(u)) => u.trim_end_matches('/').trim_end_matches("/v1").to_string(),
                (None, None) => unreachable!("either a URL or a cluster"),
            };
            let replicas = cluster.as_ref().map(|c| c.replicas.clone()).unwrap_or_default();
            let before = prefix_counters(&client, &replicas).await;
            let plan = s.plan(rate);
            eprintln!("llmd bench: {} / {routing} / {rate} req/s: {} requests…", s.name, plan.len());
            let started = Instant::now();
            let samples = run::run(&client, &base, None, &plan).await;
            let wall = started.elapsed();
            let after = prefix_counters(&client, &replicas).await;
            let queries = after.1 - before.1;
            let hit_rate = (queries > 0.0).then(|| (after.0 - before.0) / queries);
            let st = run::stats(&samples, rate, wall, s.slo, hit_rate);
            eprintln!(
                "llmd bench:   done in {:.1}s: {}/{} ok, TTFT p50 {:.1} ms p99 {:.1} ms, hit rate {}",
                wall.as_secs_f64(),
                st.completed,
                st.requests,
                st.ttft_ms[0],
                st.ttft_ms[2],
                st.hit_rate.map_or("n/a".into(), |h| format!("{h:.3}"))
            );
            runs.push(st);
            if let Some(c) = cluster {
                c.shutdown().await;
            }
        }
        results.push(RoutingResult { routing: routing.clone(), runs });
    }
    let report = Report { scenario: s.name.clone(), replicas: opts.replicas, sim: opts.sim, results };
    write_outputs(&report, &opts.out)?;
    Ok(report)
}

/// The Markdown table: one row per routing and rate, with ratios against round robin at
/// the same rate when it ran.
pub fn markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| scenario | routing | rate (req/s) | ok | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | tok/s | goodput (req/s) | hit rate | round-robin TTFT p50 ÷ this |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    let rr = r.results.iter().find(|x| x.routing == "round-robin");
    for res in &r.results {
        for run in &res.runs {
            let base = rr.and_then(|rr| rr.runs.iter().find(|b| b.rate == run.rate));
            let ratio = base
                .filter(|_| run.ttft_ms[0] > 0.0)
                .map_or("–".into(), |b| format!("{:.2}×", b.ttft_ms[0] / run.ttft_ms[0]));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}/{} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {} | {} |",
                r.scenario,
                res.routing,
                run.rate,
                run.completed,
                run.requests,
                run.ttft_ms[0],
                run.ttft_ms[2],
                run.itl_ms[0],
                run.output_tokens_per_s,
                run.goodput,
                run.hit_rate.map_or("–".into(), |h| format!("{h:.3}")),
                ratio
            );
        }
    }
    md
}

/// An SVG line chart of TTFT p50 against request rate, one line per routing.
pub fn svg(r: &Report) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let points: Vec<(f64, f64)> =
        r.results.iter().flat_map(|x| x.runs.iter().map(|s| (s.rate, s.ttft_ms[0]))).collect();
    let max_x = points.iter().map(|p| p.0).fold(1e-9, f64::max);
    let max_y = points.iter().map(|p| p.1).fold(1e-9, f64::max);
    let sx = |x: f64| pad + (w - 2.0 * pad) * x / max_x;
    let sy = |y: f64| h - pad - (h - 2.0 * pad) * y / max_y;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\">{}: TTFT p50 (ms, max {max_y:.1}) against request rate (req/s, max {max_x})</text>\n\
         <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>\n",
        r.scenario,
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    for (i, res) in r.results.iter().enumerate() {
        let c = colors[i % colors.len()];
        let pts: Vec<String> = res.runs.iter().map(|s| format!("{:.1},{:.1}", sx(s.rate), sy(s.ttft_ms[0]))).collect();
        let _ =
            writeln!(out, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", pts.join(" "));
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(out, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>");
        }
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            w - pad - 120.0,
            pad + 16.0 * i as f64,
            res.routing
        );
    }
    out.push_str("</svg>\n");
    out
}

fn write_outputs(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let base = dir.join(&r.scenario);
    std::fs::write(base.with_extension("json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(base.with_extension("md"), markdown(r))?;
    std::fs::write(base.with_extension("svg"), svg(r))?;
    Ok(())
}
