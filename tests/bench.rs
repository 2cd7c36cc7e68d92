//! `llmd bench` smoke run: a few seconds on simulated replicas; checks that the JSON,
//! Markdown and SVG outputs are produced and well formed.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use llmd::bench::{BenchOptions, bench, find_scenario};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_scenario_produces_well_formed_outputs() {
    let out = std::env::temp_dir().join(format!("llmd-bench-{}", std::process::id()));
    let opts = BenchOptions {
        scenario: find_scenario("smoke").unwrap(),
        routings: vec!["round-robin".into(), "precise-prefix".into()],
        url: None,
        replicas: 3,
        sim: true,
        out: out.clone(),
    };
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
    let md = std::fs::read_to_string(out.join("smoke.md")).unwrap();
    assert_eq!(md.lines().count(), 4, "{md}");
    assert!(md.lines().all(|l| l.starts_with('|') && l.ends_with('|')), "{md}");
    assert!(md.contains("1.00×"), "{md}");
    let svg = std::fs::read_to_string(out.join("smoke.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.matches("<polyline").count() == 2);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn unknown_scenarios_list_the_known_ones() {
    let e = find_scenario("nope").unwrap_err().to_string();
    assert!(e.contains("shared-prefix") && e.contains("smoke"), "{e}");
}
