//! `llmd bench` smoke run: a few seconds on simulated replicas; checks that the JSON,
//! Markdown and SVG outputs are produced and well formed.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use llmd::bench::drivers::Driver;
use llmd::bench::{BenchOptions, bench, find_scenario};

fn smoke(out: &std::path::Path, drivers: Vec<Driver>) -> BenchOptions {
    BenchOptions {
        scenario: find_scenario("smoke").unwrap(),
        routings: vec!["round-robin".into(), "precise-prefix".into()],
        drivers,
        url: None,
        label: None,
        model: None,
        tokenizer: None,
        replicas: 3,
        sim: true,
        sim_latency: Default::default(),
        kv_blocks: None,
        replication: true,
        out: out.to_path_buf(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_produces_well_formed_outputs() {
    let out = std::env::temp_dir().join(format!("llmd-bench-{}", std::process::id()));
    let opts = smoke(&out, vec![Driver::Builtin]);
    let report = bench(&opts).await.unwrap();
    assert_eq!(report.results.len(), 2);
    for r in &report.results {
        let run = &r.runs[0];
        assert_eq!((run.requests, run.completed), (24, 24), "{r:?}");
        // The table's percentiles are those of the requests' own TTFTs: p50 is a sample
        // with at least half the samples on each side, p99 of 24 samples is the slowest.
        let ttfts: Vec<f64> = run.samples.iter().map(|s| s.ttft * 1e3).collect();
        let [p50, _, p99] = run.ttft_ms;
        assert!(ttfts.iter().all(|&t| t > 0.0), "{ttfts:?}");
        assert!(ttfts.contains(&p50), "p50 {p50} is no sample's TTFT: {ttfts:?}");
        assert!(ttfts.iter().filter(|&&t| t <= p50).count() >= 12, "p50 {p50} of {ttfts:?}");
        assert!(ttfts.iter().filter(|&&t| t >= p50).count() >= 12, "p50 {p50} of {ttfts:?}");
        assert_eq!(p99, ttfts.iter().copied().fold(f64::MIN, f64::max), "{ttfts:?}");
        assert!(run.output_tokens_per_s > 0.0 && run.hit_rate.is_some());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("smoke.json")).unwrap()).unwrap();
    assert_eq!(json["scenario"], "smoke");
    // Per-request figures are kept for analysis.
    let samples = json["results"][0]["runs"][0]["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 24);
    assert!(samples.iter().all(|s| s["ok"] == true && s["ttft"].as_f64().unwrap() > 0.0 && s["prompt_tokens"] != 0));
    let md = std::fs::read_to_string(out.join("smoke.md")).unwrap();
    // One table (header, separator, a row per routing), whatever prose surrounds it.
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 4, "{md}");
    assert!(table.iter().all(|l| l.ends_with('|') && l.matches('|').count() == table[0].matches('|').count()), "{md}");
    assert!(md.contains("| builtin |"), "{md}");
    assert!(md.contains("1.00×"), "{md}");
    let svg = std::fs::read_to_string(out.join("smoke.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.matches("<polyline").count() == 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// inference-perf and aiperf drive the same clusters with the same scenario and their
/// reports land in the same table. Needs the tools `scripts/loadgen/setup.sh` installs,
/// so ignored unless run by `scripts/test.sh` (which installs them); run that way, a
/// missing tool is a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the load-generator venvs: run scripts/test.sh (or scripts/loadgen/setup.sh)"]
async fn field_load_generators_report_next_to_the_builtin_client() {
    let drivers = vec![Driver::parse("inference-perf").unwrap(), Driver::parse("aiperf").unwrap()];
    if let Some(missing) = drivers.iter().find(|d| !d.available()) {
        panic!("{missing:?} is not installed: run scripts/test.sh or scripts/loadgen/setup.sh");
    }
    let out = std::env::temp_dir().join(format!("llmd-bench-tools-{}", std::process::id()));
    let mut opts = smoke(&out, [vec![Driver::Builtin], drivers].concat());
    // Whole seconds at the rate: inference-perf sends rate x duration requests.
    opts.scenario.rates = vec![12.0];
    let report = bench(&opts).await.unwrap();
    assert_eq!(report.results.len(), 6);
    for r in &report.results {
        let run = &r.runs[0];
        assert!(run.requests >= 20 && run.completed == run.requests, "{r:?}");
        assert!(run.ttft_ms[0] > 0.0 && run.itl_ms[0] > 0.0, "{r:?}");
        assert!(run.output_tokens_per_s > 0.0 && run.goodput.is_some() && run.hit_rate.is_some(), "{r:?}");
    }
    // The table shows what each tool measured: its figures are those of the tool's own
    // report, read back here independently of the driver's parser.
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("smoke").join(p)).unwrap()).unwrap()
    };
    let find = |routing: &str, driver: &str| {
        &report.results.iter().find(|r| r.routing == routing && r.driver == driver).unwrap().runs[0]
    };
    let ip = read("round-robin-inference-perf-12/report/summary_lifecycle_metrics.json");
    let ttft = &ip["successes"]["latency"]["time_to_first_token"];
    let run = find("round-robin", "inference-perf");
    for (i, q) in ["median", "p99"].into_iter().enumerate() {
        let want = ttft[q].as_f64().unwrap() * 1e3;
        assert!((run.ttft_ms[i * 2] - want).abs() < 1e-6, "{q}: {} vs the report's {want}", run.ttft_ms[i * 2]);
    }
    let ap = read("precise-prefix-aiperf-12/report/profile_export_aiperf.json");
    let run = find("precise-prefix", "aiperf");
    for (i, q) in ["p50", "p99"].into_iter().enumerate() {
        let want = ap["time_to_first_token"][q].as_f64().unwrap();
        assert!((run.ttft_ms[i * 2] - want).abs() < 1e-6, "{q}: {} vs the report's {want}", run.ttft_ms[i * 2]);
    }
    let md = std::fs::read_to_string(out.join("smoke.md")).unwrap();
    for tool in ["| inference-perf |", "| aiperf |"] {
        assert_eq!(md.matches(tool).count(), 2, "{md}");
    }
    // The tools' own reports are kept beside the table.
    assert!(out.join("smoke/round-robin-inference-perf-12/report/summary_lifecycle_metrics.json").exists());
    assert!(out.join("smoke/precise-prefix-aiperf-12/report/profile_export_aiperf.json").exists());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn unknown_scenarios_list_the_known_ones() {
    let e = find_scenario("nope").unwrap_err().to_string();
    assert!(e.contains("shared-prefix") && e.contains("smoke"), "{e}");
}

/// With `slo_headers`, predicted-latency routing gets what it needs from the built-in
/// client: each request's SLO and an id to match its latencies to its pick, so the
/// producer trains on every request's streamed TTFT and TPOT and counts SLO violations
/// against the scenario's own objectives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicted_latency_trains_on_every_request_of_a_run() {
    let out = std::env::temp_dir().join(format!("llmd-bench-latency-{}", std::process::id()));
    let mut opts = smoke(&out, vec![Driver::Builtin]);
    opts.routings = vec!["predicted-latency".into(), "llm-d-prefix".into()];
    opts.scenario.slo_headers = true;
    opts.scenario.requests = 64;
    // An SLO every request breaks, so the violation counts are exact.
    opts.scenario.slo = llmd::bench::scenario::Slo { ttft_ms: 0.001, itl_ms: 0.001 };
    let report = bench(&opts).await.unwrap();
    let run = &report.results[0].runs[0];
    assert_eq!((run.requests, run.completed), (64, 64), "{run:?}");
    let model = run.latency_model.as_ref().expect("the preset has a latency producer");
    let p = &model[0];
    assert_eq!(p["producer"], "predicted-latency-producer");
    assert_eq!(p["ttft_samples_seen"], 64, "{model}");
    // Four tokens each: a mean TPOT from every request.
    assert_eq!(p["tpot_samples_seen"], 64, "{model}");
    let m = &p["models"]["llmd-sim"];
    assert_eq!((m["ttft"]["count"].as_u64(), m["predicted_ttft"]["count"].as_u64()), (Some(64), Some(64)), "{m}");
    assert_eq!((m["ttft_slo_violations"].as_u64(), m["tpot_slo_violations"].as_u64()), (Some(64), Some(64)), "{m}");
    // Trained after 32 samples (the default), it predicted for the requests after.
    assert!(m["predicted_ttft"]["sum_s"].as_f64().is_some_and(|s| s > 0.0), "{m}");
    // The baseline has no producer; every run keeps the gateway's metrics.
    assert!(report.results[1].runs[0].latency_model.is_none());
    assert!(out.join("smoke/predicted-latency-builtin-40.metrics.txt").exists());
    // An external driver cannot send the headers: refused, not silently dropped.
    opts.drivers = vec![Driver::parse("aiperf").unwrap()];
    opts.routings = vec!["round-robin".into()];
    let e = bench(&opts).await.unwrap_err().to_string();
    assert!(e.contains("slo_headers"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}
