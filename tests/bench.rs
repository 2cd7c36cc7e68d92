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
        kv_blocks: None,
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
        assert!(run.ttft_ms[0] > 0.0 && run.ttft_ms[0] <= run.ttft_ms[2]);
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
    assert_eq!(md.lines().count(), 4, "{md}");
    assert!(md.contains("| builtin |"), "{md}");
    assert!(md.lines().all(|l| l.starts_with('|') && l.ends_with('|')), "{md}");
    assert!(md.contains("1.00×"), "{md}");
    let svg = std::fs::read_to_string(out.join("smoke.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.matches("<polyline").count() == 2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// inference-perf and aiperf drive the same clusters with the same scenario and their
/// reports land in the same table. Runs where `scripts/loadgen/setup.sh` installed them
/// (CI does); elsewhere it says why it skips, and under CI a missing tool fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_load_generators_report_next_to_the_builtin_client() {
    let drivers = vec![Driver::parse("inference-perf").unwrap(), Driver::parse("aiperf").unwrap()];
    if let Some(missing) = drivers.iter().find(|d| !d.available()) {
        assert!(std::env::var_os("CI").is_none(), "CI must install the load generators (scripts/loadgen/setup.sh)");
        eprintln!("skipped: {missing:?} is not installed (run scripts/loadgen/setup.sh)");
        return;
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
        assert!(run.ttft_ms[0] > 0.0 && run.ttft_ms[0] <= run.ttft_ms[2] && run.itl_ms[0] > 0.0, "{r:?}");
        assert!(run.output_tokens_per_s > 0.0 && run.goodput.is_some() && run.hit_rate.is_some(), "{r:?}");
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
