//! `llmd bench`: named scenarios against a URL or against local clusters it starts, one
//! per routing configuration, compared in one run, each run sent by the built-in client
//! or by a field tool (inference-perf, aiperf; see [`drivers`]). Writes JSON, a Markdown
//! table (each routing's ratio against round robin with the same load generator) and an
//! SVG plot of TTFT against request rate.

pub mod drivers;
pub mod run;
pub mod scenario;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cluster::{LocalCluster, Replica};
use drivers::{Driver, Target};
use run::RunStats;
use scenario::Scenario;

/// Longest a single request of the built-in client may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The scenario.
    pub scenario: Scenario,
    /// Routing presets (or `config:PATH`) to compare; ignored with `url`.
    pub routings: Vec<String>,
    /// Load generators; each routing runs once per driver, on a fresh cluster.
    pub drivers: Vec<Driver>,
    /// Benchmark an existing endpoint instead of starting clusters.
    pub url: Option<String>,
    /// Name for `url`'s routing in reports (default `external`).
    pub label: Option<String>,
    /// Model name to send (default: the first one `/v1/models` lists).
    pub model: Option<String>,
    /// Tokenizer directory for external drivers (default: the built-in model's, written
    /// into `out`, when the served model is llmd's own).
    pub tokenizer: Option<PathBuf>,
    /// Replicas per started cluster.
    pub replicas: usize,
    /// Simulated replicas (else the built-in model on the CPU).
    pub sim: bool,
    /// The simulated replicas' costs.
    pub sim_latency: llmd_engine::LatencyModel,
    /// KV-cache blocks per started replica (default: the scenario's, else 8192 simulated
    /// or 2048 built-in).
    pub kv_blocks: Option<usize>,
    /// Hot-prefix replication in the started clusters' gateways (on by default, as in
    /// `llmd up`).
    pub replication: bool,
    /// Where to write `NAME.json`, `NAME.md` and `NAME.svg`.
    pub out: PathBuf,
}

/// One routing's runs with one load generator.
#[derive(Debug, Clone, Serialize)]
pub struct RoutingResult {
    /// Routing name.
    pub routing: String,
    /// Load generator (`builtin`, `inference-perf`, `aiperf`).
    pub driver: String,
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
    /// The simulator's costs, when simulated (`LatencyModel`'s spelling).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_latency: Option<String>,
    /// KV-cache blocks per replica (0 for an external URL).
    pub kv_blocks: usize,
    /// Whether the started clusters' gateways replicated hot prefixes.
    pub replication: bool,
    /// Results per routing and driver.
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

/// Prefix-cache hits and queries of the device caches, and hits from offloading's tiers
/// (tokens, summed over replicas).
async fn prefix_counters(client: &reqwest::Client, replicas: &[std::net::SocketAddr]) -> (f64, f64, f64) {
    let (mut hits, mut queries, mut external) = (0.0, 0.0, 0.0);
    for r in replicas {
        let Ok(resp) = client.get(format!("http://{r}/metrics")).send().await else { continue };
        let Ok(text) = resp.text().await else { continue };
        for line in text.lines() {
            let value = || line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            if line.starts_with("vllm:prefix_cache_hits_total{") {
                hits += value();
            } else if line.starts_with("vllm:prefix_cache_queries_total{") {
                queries += value();
            } else if line.starts_with("vllm:external_prefix_cache_hits_total{") {
                external += value();
            }
        }
    }
    (hits, queries, external)
}

async fn served_model(client: &reqwest::Client, base: &str) -> Result<String> {
    let text = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("asking {base}/v1/models which model it serves"))?
        .text()
        .await?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{base}/v1/models answered {text:?}"))?;
    v["data"][0]["id"].as_str().map(str::to_string).with_context(|| format!("{base}/v1/models lists no model"))
}

fn progress(len: u64, prefix: String) -> ProgressBar {
    // Hidden when stderr is not a terminal (CI logs get the summary lines only).
    let pb = ProgressBar::new(len).with_prefix(prefix);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {elapsed}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb
}

/// Runs the benchmark.
pub async fn bench(opts: &BenchOptions) -> Result<Report> {
    // Bounded in time as well as count: a request that hangs fails instead of the run.
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()?;
    let s = &opts.scenario;
    let kv_blocks = opts.kv_blocks.or(s.kv_blocks).unwrap_or(if opts.sim { 8192 } else { 2048 });
    let mut results = Vec::new();
    let routings: Vec<String> = match &opts.url {
        Some(_) => vec![opts.label.clone().unwrap_or_else(|| "external".into())],
        None => opts.routings.clone(),
    };
    for routing in &routings {
        for driver in &opts.drivers {
            let mut runs = Vec::new();
            for &rate in &s.rates {
                let cluster = match &opts.url {
                    Some(_) => None,
                    None => Some(start_cluster(routing, opts, kv_blocks).await?),
                };
                let base = match (&cluster, &opts.url) {
                    (Some(c), _) => format!("http://{}", c.addr),
                    (None, Some(u)) => u.trim_end_matches('/').trim_end_matches("/v1").to_string(),
                    (None, None) => unreachable!("either a URL or a cluster"),
                };
                let result = one_run(&client, opts, routing, driver, rate, &base, cluster.as_ref()).await;
                if let Some(c) = cluster {
                    c.shutdown().await;
                }
                runs.push(result?);
            }
            results.push(RoutingResult { routing: routing.clone(), driver: driver.name().into(), runs });
        }
    }
    let report = Report {
        scenario: s.name.clone(),
        replicas: if opts.url.is_some() { 0 } else { opts.replicas },
        sim: opts.sim,
        sim_latency: (opts.sim && opts.url.is_none()).then(|| opts.sim_latency.to_string()),
        kv_blocks: if opts.url.is_some() { 0 } else { kv_blocks },
        replication: opts.replication && opts.url.is_none(),
        results,
    };
    write_outputs(&report, &opts.out)?;
    Ok(report)
}

/// The prefill/decode split a `pd` routing names: `pd` halves the replicas (at least
/// one of each), `pd:P:D` says.
fn pd_shape(routing: &str, replicas: usize) -> Result<Option<(usize, usize)>> {
    let Some(rest) = routing.strip_prefix("pd") else {
        return Ok(None);
    };
    let shape = match rest.strip_prefix(':') {
        None if rest.is_empty() => {
            let p = (replicas / 2).max(1);
            (p, replicas.saturating_sub(p).max(1))
        }
        Some(pd) => {
            let (p, d) = pd.split_once(':').unwrap_or((pd, ""));
            match (p.parse::<usize>(), d.parse::<usize>()) {
                (Ok(p), Ok(d)) if p > 0 && d > 0 => (p, d),
                _ => bail!("routing {routing:?}: expected pd or pd:P:D with positive counts"),
            }
        }
        None => return Ok(None),
    };
    Ok(Some(shape))
}

/// KV offloading a routing names after `@`: `cpu` (host memory), `cpu-disk` (and a disk
/// tier per replica under `disk_root`), `shared-disk` (one disk tier all replicas share).
/// Returns one configuration per replica.
fn offload_for(
    routing: &str,
    opts: &BenchOptions,
    replicas: usize,
    disk_root: &Path,
) -> Result<Option<Vec<llmd_engine::offload::OffloadConfig>>> {
    use llmd_engine::offload::{OffloadConfig, SecondaryTier};
    let Some((_, kind)) = routing.split_once('@') else { return Ok(None) };
    let blocks = opts.scenario.offload_blocks.unwrap_or(0);
    if blocks == 0 {
        bail!("routing {routing:?}: the scenario sets no offload_blocks (host memory per replica, in KV blocks)");
    }
    // The simulator counts 128 KiB a token, the built-in model its own size.
    let block_bytes = if opts.sim {
        (128 << 10) * 16
    } else {
        let e = llmd_engine::EngineBuilder::builtin().num_blocks(256).max_model_len(4096).build()?.engine;
        e.kv_block_layout().map_or(0, |l| l.block_bytes())
    };
    let cpu = OffloadConfig { cpu_bytes: (blocks * block_bytes) as u64, ..OffloadConfig::from_size_gib(1.0)? };
    let fs = |dir: PathBuf| SecondaryTier::Fs {
        root_dir: dir.display().to_string(),
        read_threads: 4,
        write_threads: 4,
        max_bytes: None,
        medium: None,
    };
    Ok(Some(
        (0..replicas)
            .map(|i| match kind {
                "cpu" => Ok(cpu.clone()),
                "cpu-disk" => {
                    Ok(OffloadConfig { secondary: vec![fs(disk_root.join(format!("replica-{i}")))], ..cpu.clone() })
                }
                "shared-disk" => Ok(OffloadConfig { secondary: vec![fs(disk_root.join("shared"))], ..cpu.clone() }),
                other => bail!("routing {routing:?}: offloading {other:?} (cpu, cpu-disk, shared-disk)"),
            })
            .collect::<Result<_>>()?,
    ))
}

async fn start_cluster(routing: &str, opts: &BenchOptions, kv_blocks: usize) -> Result<LocalCluster> {
    let registry = llmd_scheduler::PluginRegistry::with_builtins();
    let full = routing;
    let routing = routing.split_once('@').map_or(routing, |(r, _)| r);
    let pd = pd_shape(routing, opts.replicas)?;
    let cfg = match (routing.strip_prefix("config:"), pd) {
        (Some(path), _) => llmd_scheduler::SchedulerConfig::from_file(Path::new(path), &registry)?,
        (None, Some(_)) => {
            llmd_scheduler::SchedulerConfig::from_yaml(crate::cluster::PD_ROUTING, "the P/D routing", &registry)?
        }
        (None, None) => llmd_scheduler::presets::preset(routing, &registry)?,
    };
    let count = pd.map_or(opts.replicas, |(p, d)| p + d);
    // Disk tiers start empty for every run: files of an earlier one would be hits.
    let disk_root = opts.out.join("kv-disk").join(full.replace(['/', ':', '@'], "_"));
    let _ = std::fs::remove_dir_all(&disk_root);
    let mut offload = offload_for(full, opts, count, &disk_root)?.map(Vec::into_iter);
    let mut replicas = Vec::with_capacity(count);
    for _ in 0..count {
        let o = offload.as_mut().and_then(Iterator::next);
        replicas.push(if opts.sim {
            Replica::simulated_with("llmd-sim", opts.sim_latency, kv_blocks, o)?
        } else {
            Replica::builtin_with(kv_blocks, o)?
        });
    }
    let picker = llmd_scheduler::picker::PickerConfig {
        replication: opts.replication.then(Default::default),
        ..Default::default()
    };
    let cluster = crate::cluster::ClusterOptions { picker, pd_prefill: pd.map(|(p, _)| p), ..Default::default() };
    LocalCluster::start_opts(replicas, cfg, opts.scenario.seed, "127.0.0.1:0", cluster).await
}

async fn one_run(
    client: &reqwest::Client,
    opts: &BenchOptions,
    routing: &str,
    driver: &Driver,
    rate: f64,
    base: &str,
    cluster: Option<&LocalCluster>,
) -> Result<RunStats> {
    let s = &opts.scenario;
    let replicas = cluster.map(|c| c.replicas.clone()).unwrap_or_default();
    let model = match &opts.model {
        Some(m) => m.clone(),
        None => served_model(client, base).await?,
    };
    let plan = s.plan(rate);
    let label = format!("{} / {routing} / {} / {rate} req/s", s.name, driver.name());
    eprintln!("llmd bench: {label}: {} requests…", plan.len());
    let before = prefix_counters(client, &replicas).await;
    let started = Instant::now();
    let mut st = match driver {
        Driver::Builtin => {
            let pb = progress(plan.len() as u64, label.clone());
            let samples = run::run(client, base, Some(&model), &plan, &pb).await;
            pb.finish_and_clear();
            run::stats(&samples, rate, started.elapsed(), s.slo, s.warmup())
        }
        external if s.slo_headers => {
            bail!("{}: slo_headers are sent by the built-in client only, not by {}", s.name, external.name())
        }
        external => {
            let tokenizer = match &opts.tokenizer {
                Some(t) => t.clone(),
                None if model.starts_with("llmd-") => {
                    let dir = opts.out.join("tokenizer");
                    llmd_engine::ByteTokenizer::write_hf_files(&dir)?;
                    dir
                }
                None => {
                    bail!("{} counts tokens client-side: give --tokenizer DIR for model {model:?}", external.name())
                }
            };
            let workdir =
                opts.out.join(format!("{}/{}-{}-{rate}", s.name, routing.replace(['/', ':'], "_"), external.name()));
            let pb = ProgressBar::new_spinner().with_prefix(label.clone());
            pb.set_style(ProgressStyle::with_template("{prefix} {spinner} {msg} {elapsed}")?);
            pb.set_message(format!("{} running (log: {}/driver.log)", external.name(), workdir.display()));
            pb.enable_steady_tick(Duration::from_millis(200));
            let target = Target { base, model: &model, tokenizer: &tokenizer, workdir: &workdir };
            let stats = drivers::run_external(external, &plan, rate, s.slo, &target).await;
            pb.finish_and_clear();
            stats?
        }
    };
    let after = prefix_counters(client, &replicas).await;
    let queries = after.1 - before.1;
    if queries > 0.0 {
        st.hit_rate = Some((after.0 - before.0) / queries);
        if routing.contains('@') {
            st.offload_hit_rate = Some((after.2 - before.2) / queries);
        }
    }
    if let Some(c) = cluster {
        st.latency_model = latency_model(c);
    }
    if cluster.is_some() {
        // The gateway's own metrics (picks per endpoint; a latency predictor's predicted
        // and observed TTFT and TPOT, SLO violations) for what the table cannot show.
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let dir = opts.out.join(&s.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let file = dir.join(format!("{}-{}-{rate}.metrics.txt", routing.replace(['/', ':'], "_"), driver.name()));
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    eprintln!(
        "llmd bench:   done in {:.1}s: {}/{} ok, TTFT p50 {:.1} ms p99 {:.1} ms, hit rate {}",
        started.elapsed().as_secs_f64(),
        st.completed,
        st.requests,
        st.ttft_ms[0],
        st.ttft_ms[2],
        st.hit_rate.map_or("n/a".into(), |h| format!("{h:.3}"))
    );
    Ok(st)
}

/// What the routing's latency producers learned in a run (see
/// [`RunStats::latency_model`]); `None` without one.
fn latency_model(cluster: &LocalCluster) -> Option<serde_json::Value> {
    use serde_json::json;
    let producers = llmd_scheduler::plugins::latency::latency_producers(cluster.picker.scheduler().config());
    if producers.is_empty() {
        return None;
    }
    let hist = |h: &llmd_scheduler::plugins::latency::metrics::Histogram| json!({"count": h.count, "sum_s": h.sum});
    let out: Vec<serde_json::Value> = producers
        .iter()
        .map(|p| {
            let stats = p.model().map(|m| m.stats());
            let models: serde_json::Map<String, serde_json::Value> = p
                .metrics()
                .models
                .iter()
                .map(|(name, m)| {
                    let v = json!({
                        "ttft": hist(&m.ttft),
                        "predicted_ttft": hist(&m.predicted_ttft),
                        "tpot": hist(&m.tpot),
                        "predicted_tpot": hist(&m.predicted_tpot),
                        "ttft_slo_violations": m.ttft_slo_violations,
                        "tpot_slo_violations": m.tpot_slo_violations,
                    });
                    (name.clone(), v)
                })
                .collect();
            json!({
                "producer": p.name(),
                "ttft_samples_seen": stats.map(|s| s.ttft_seen),
                "tpot_samples_seen": stats.map(|s| s.tpot_seen),
                "ttft_refits": stats.map(|s| s.ttft_refits),
                "tpot_refits": stats.map(|s| s.tpot_refits),
                "models": models,
            })
        })
        .collect();
    Some(serde_json::Value::Array(out))
}

/// The Markdown table for one or more reports: one row per scenario, routing, driver and
/// rate, whole-run and steady-state (after the warm-up) figures, with round robin's
/// TTFT at the same rate with the same driver divided by this routing's (above 1: this
/// routing is faster), steady state where both have it.
pub fn markdown(reports: &[Report]) -> String {
    let mut md = String::new();
    // What every simulated figure follows from.
    let mut setups: Vec<String> = reports
        .iter()
        .map(|r| {
            let gateway = if r.replication { "hot-prefix replication on" } else { "hot-prefix replication off" };
            match &r.sim_latency {
                Some(l) => {
                    format!("{} simulated replicas ({l}), {} KV blocks each, {gateway}", r.replicas, r.kv_blocks)
                }
                None if r.replicas > 0 => {
                    format!("{} CPU replicas, {} KV blocks each, {gateway}", r.replicas, r.kv_blocks)
                }
                None => "an external endpoint".to_string(),
            }
        })
        .collect();
    setups.dedup();
    let _ = writeln!(md, "Setup: {}.\n", setups.join("; "));
    let _ = writeln!(
        md,
        "| scenario | routing | driver | rate (req/s) | ok | TTFT p50 / p99 (ms) | steady TTFT p50 / p99 (ms) | ITL p50 (ms) | tok/s | goodput (req/s) | steady goodput | hit rate | RR ÷ this p50 | RR ÷ this p99 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ratio = |rr: f64, this: f64| if this > 0.0 { format!("{:.2}×", rr / this) } else { "–".into() };
    for r in reports {
        for res in &r.results {
            let rr = r.results.iter().find(|x| x.routing == "round-robin" && x.driver == res.driver);
            for run in &res.runs {
                let base = rr.and_then(|rr| rr.runs.iter().find(|b| b.rate == run.rate));
                // Steady state where both runs have it, else whole runs.
                let (this, theirs) = match (run.steady.as_deref(), base.and_then(|b| b.steady.as_deref())) {
                    (Some(a), Some(b)) => (a, Some(b)),
                    _ => (run, base),
                };
                let steady = run
                    .steady
                    .as_deref()
                    .map_or("–".into(), |st| format!("{:.1} / {:.1}", st.ttft_ms[0], st.ttft_ms[2]));
                let steady_goodput =
                    run.steady.as_deref().and_then(|st| st.goodput).map_or("–".into(), |g| format!("{g:.1}"));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {}/{} | {:.1} / {:.1} | {} | {:.1} | {:.0} | {} | {} | {} | {} | {} |",
                    r.scenario,
                    res.routing,
                    res.driver,
                    run.rate,
                    run.completed,
                    run.requests,
                    run.ttft_ms[0],
                    run.ttft_ms[2],
                    steady,
                    run.itl_ms[0],
                    run.output_tokens_per_s,
                    run.goodput.map_or("–".into(), |g| format!("{g:.1}")),
                    steady_goodput,
                    match (run.hit_rate, run.offload_hit_rate) {
                        (Some(h), Some(o)) => format!("{h:.3} + {o:.3}"),
                        (h, _) => h.map_or("–".into(), |h| format!("{h:.3}")),
                    },
                    theirs.map_or("–".into(), |b| ratio(b.ttft_ms[0], this.ttft_ms[0])),
                    theirs.map_or("–".into(), |b| ratio(b.ttft_ms[2], this.ttft_ms[2])),
                );
            }
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
            w - pad - 200.0,
            pad + 16.0 * i as f64,
            if res.driver == "builtin" { res.routing.clone() } else { format!("{} ({})", res.routing, res.driver) }
        );
    }
    out.push_str("</svg>\n");
    out
}

fn write_outputs(r: &Report, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Not `with_extension`: a name like `cache-pressure@0.25x` has a dot of its own.
    let file = |ext: &str| dir.join(format!("{}.{ext}", r.scenario));
    std::fs::write(file("json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(file("md"), markdown(std::slice::from_ref(r)))?;
    std::fs::write(file("svg"), svg(r))?;
    Ok(())
}
