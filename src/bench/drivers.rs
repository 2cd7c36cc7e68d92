//! Load generators other than the built-in client: llm-d's `inference-perf` and NVIDIA's
//! `aiperf`, run as subprocesses against the same endpoint with the same scenario, their
//! reports read back into [`RunStats`] so the figures sit side by side.
//!
//! Both replay the scenario's own prompts in order. inference-perf reads them as a local
//! ShareGPT file and draws its own Poisson arrivals at the same rate (an independent
//! load); aiperf reads them as a `mooncake_trace` with the plan's send times and replays
//! that fixed schedule (the very load the built-in client sends, measured by another
//! client). Their synthetic generators sample random token ids, which a byte-level
//! tokenizer like the built-in model's decodes to invalid UTF-8, so they cannot build
//! exact-length prompts for it; with a real checkpoint's tokenizer they can.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::run::RunStats;
use super::scenario::{Planned, Slo};

/// Which program sends a run's requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Driver {
    /// `llmd bench`'s own streaming client.
    Builtin,
    /// kubernetes-sigs/inference-perf (llm-d's benchmark tool), by program path.
    InferencePerf(PathBuf),
    /// ai-dynamo/aiperf, by program path.
    Aiperf(PathBuf),
}

impl Driver {
    /// Parses `builtin`, `inference-perf` or `aiperf`. External programs come from
    /// `LLMD_INFERENCE_PERF` / `LLMD_AIPERF`, else the venvs `scripts/loadgen/setup.sh`
    /// makes in this checkout, else `PATH`.
    pub fn parse(name: &str) -> Result<Self> {
        let find = |var: &str, venv: &str, program: &str| {
            if let Some(p) = std::env::var_os(var) {
                return PathBuf::from(p);
            }
            let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(venv).join("bin").join(program);
            if local.exists() { local } else { PathBuf::from(program) }
        };
        Ok(match name {
            "builtin" => Driver::Builtin,
            "inference-perf" => {
                Driver::InferencePerf(find("LLMD_INFERENCE_PERF", ".venv-inference-perf", "inference-perf"))
            }
            "aiperf" => Driver::Aiperf(find("LLMD_AIPERF", ".venv-aiperf", "aiperf")),
            other => bail!("unknown driver {other:?} (builtin, inference-perf, aiperf)"),
        })
    }

    /// Whether the driver's program can be started (a path that exists, or a name on
    /// `PATH`).
    pub fn available(&self) -> bool {
        let program = match self {
            Driver::Builtin => return true,
            Driver::InferencePerf(p) | Driver::Aiperf(p) => p,
        };
        if program.components().count() > 1 {
            return program.is_file();
        }
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
    }

    /// The name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Driver::Builtin => "builtin",
            Driver::InferencePerf(_) => "inference-perf",
            Driver::Aiperf(_) => "aiperf",
        }
    }
}

/// Where an external tool sends its requests and keeps its files.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Base URL without `/v1`.
    pub base: &'a str,
    /// Model name to send.
    pub model: &'a str,
    /// Hugging Face tokenizer directory for client-side token counting.
    pub tokenizer: &'a Path,
    /// Directory for the tool's inputs, logs and report (created).
    pub workdir: &'a Path,
}

/// Runs `plan` at `rate` with an external tool and reads its report.
pub async fn run_external(driver: &Driver, plan: &[Planned], rate: f64, slo: Slo, t: &Target<'_>) -> Result<RunStats> {
    std::fs::create_dir_all(t.workdir).with_context(|| format!("creating {}", t.workdir.display()))?;
    let expected = plan.last().map_or(0.0, |p| p.at.as_secs_f64());
    // Generous: the tools start Python, load a tokenizer and may queue behind a slow server.
    let limit = Duration::from_secs_f64(expected * 4.0 + 300.0);
    match driver {
        Driver::Builtin => bail!("the built-in client is not an external tool"),
        Driver::InferencePerf(program) => {
            let config = inference_perf_config(plan, rate, slo, t)?;
            let path = t.workdir.join("config.yaml");
            std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.arg("--config_file").arg(&path);
            // Everything is local; never let `datasets`/`transformers` reach for the hub.
            cmd.env("HF_HUB_OFFLINE", "1").env("HF_DATASETS_OFFLINE", "1");
            spawn_logged(cmd, program, t.workdir, limit).await?;
            let report = t.workdir.join("report/summary_lifecycle_metrics.json");
            let v = read_json(&report)?;
            inference_perf_stats(&v, rate).with_context(|| format!("reading {}", report.display()))
        }
        Driver::Aiperf(program) => {
            let input = t.workdir.join("plan.jsonl");
            let mut lines = String::new();
            for p in plan {
                lines.push_str(
                    &json!({"text_input": p.prompt, "output_length": p.max_tokens,
                        "timestamp": p.at.as_secs_f64() * 1e3})
                    .to_string(),
                );
                lines.push('\n');
            }
            std::fs::write(&input, lines)?;
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(aiperf_args(plan.len(), slo, t, &input));
            // aiperf's offline mode only looks in the hub cache and rejects a local
            // tokenizer directory, so HF_HUB_OFFLINE stays unset; a local path never
            // touches the network.
            spawn_logged(cmd, program, t.workdir, limit).await?;
            let report = t.workdir.join("report/profile_export_aiperf.json");
            let v = read_json(&report)?;
            aiperf_stats(&v, rate).with_context(|| format!("reading {}", report.display()))
        }
    }
}

/// inference-perf's config: the plan as a local ShareGPT file, Poisson arrivals at
/// `rate`, streaming completions with `ignore_eos`, goodput against the SLO.
fn inference_perf_config(plan: &[Planned], rate: f64, slo: Slo, t: &Target<'_>) -> Result<Value> {
    let tokenizer = llmd_openai::HfTokenizer::from_dir(t.tokenizer)
        .with_context(|| format!("loading {}/tokenizer.json", t.tokenizer.display()))?;
    // inference-perf sets max_tokens to the token count of the recorded answer, so the
    // answer is text that counts exactly `max_tokens` with this tokenizer.
    let mut answers = std::collections::HashMap::new();
    let mut conversations = Vec::with_capacity(plan.len() + 1);
    // Its ShareGPT reader skips the first record when it opens the file.
    conversations
        .push(json!({"conversations": [{"from": "human", "value": "skipped"}, {"from": "gpt", "value": "x"}]}));
    for p in plan {
        let answer = match answers.entry(p.max_tokens) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(answer_of_length(&tokenizer, p.max_tokens)?),
        };
        conversations.push(json!({"conversations": [
            {"from": "human", "value": p.prompt},
            {"from": "gpt", "value": answer},
        ]}));
    }
    let data = t.workdir.join("plan.json");
    std::fs::write(&data, serde_json::to_string(&conversations)?)?;
    // Stages are whole seconds at a rate: the nearest duration to the plan's count.
    let duration = (plan.len() as f64 / rate).round().max(1.0) as u64;
    Ok(json!({
        "api": {"type": "completion", "streaming": true},
        "data": {"type": "shareGPT", "path": data},
        "load": {"type": "poisson", "stages": [{"rate": rate, "duration": duration}]},
        "server": {"type": "vllm", "model_name": t.model, "base_url": t.base, "ignore_eos": true},
        "tokenizer": {"pretrained_model_name_or_path": t.tokenizer},
        "report": {
            "request_lifecycle": {"summary": true, "per_stage": false, "per_request": false},
            "goodput": {"constraints": {"ttft": slo.ttft_ms / 1e3, "tpot": slo.itl_ms / 1e3}},
        },
        "storage": {"local_storage": {"path": t.workdir.join("report")}},
    }))
}

/// A string the tokenizer counts as exactly `n` tokens (special tokens included), by
/// growing a run of short words.
fn answer_of_length(tokenizer: &dyn llmd_openai::Tokenize, n: usize) -> Result<String> {
    let mut text = String::new();
    for _ in 0..=4 * n + 8 {
        let count = tokenizer.encode(&text, true)?.len();
        if count == n {
            return Ok(text);
        }
        if count > n {
            break;
        }
        text.push_str(if text.is_empty() { "x" } else { " x" });
    }
    bail!("cannot make an answer of exactly {n} tokens with this tokenizer")
}

fn aiperf_args(count: usize, slo: Slo, t: &Target<'_>, input: &Path) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let p = |x: &Path| x.display().to_string();
    vec![
        s("profile"),
        s("--model"),
        s(t.model),
        s("--url"),
        s(t.base),
        s("--endpoint-type"),
        s("completions"),
        s("--streaming"),
        s("--tokenizer"),
        p(t.tokenizer),
        s("--input-file"),
        p(input),
        s("--custom-dataset-type"),
        s("mooncake_trace"),
        s("--fixed-schedule"),
        s("--request-count"),
        count.to_string(),
        s("--extra-inputs"),
        s("ignore_eos:true"),
        s("--use-legacy-max-tokens"),
        s("--use-server-token-count"),
        s("--goodput"),
        format!("time_to_first_token:{} inter_token_latency:{}", slo.ttft_ms, slo.itl_ms),
        s("--output-artifact-dir"),
        p(&t.workdir.join("report")),
        s("--ui"),
        s("none"),
        s("--no-server-metrics"),
        s("--no-gpu-telemetry"),
    ]
}

async fn spawn_logged(mut cmd: tokio::process::Command, program: &Path, workdir: &Path, limit: Duration) -> Result<()> {
    let log_path = workdir.join("driver.log");
    let log = std::fs::File::create(&log_path)?;
    cmd.stdout(log.try_clone()?).stderr(log).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (install it with scripts/loadgen/setup.sh, or point LLMD_INFERENCE_PERF / LLMD_AIPERF at it)",
            program.display()
        )
    })?;
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.kill().await;
            bail!("{} ran past {} s; its log: {}", program.display(), limit.as_secs(), log_path.display())
        }
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
        bail!("{} failed ({status}); last lines of {}:\n{}", program.display(), log_path.display(), tail.join("\n"));
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("the tool wrote no {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn num(v: &Value, path: &[&str]) -> Result<f64> {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_f64().with_context(|| format!("no number at {}", path.join(".")))
}

/// inference-perf's `summary_lifecycle_metrics.json` (seconds) as [`RunStats`] (ms).
/// Its `time_per_output_token` is the per-request mean gap, which is what the built-in
/// client's ITL means.
pub fn inference_perf_stats(v: &Value, rate: f64) -> Result<RunStats> {
    let lat = |metric: &str| -> Result<[f64; 3]> {
        let p = |q: &str| num(v, &["successes", "latency", metric, q]).map(|s| s * 1e3);
        Ok([p("median")?, p("p90")?, p("p99")?])
    };
    let completed = num(v, &["successes", "count"])? as usize;
    let failed = num(v, &["failures", "count"]).unwrap_or(0.0) as usize;
    Ok(RunStats {
        requests: completed + failed,
        completed,
        rate,
        ttft_ms: lat("time_to_first_token")?,
        itl_ms: lat("time_per_output_token")?,
        e2e_ms: lat("request_latency")?,
        output_tokens_per_s: num(v, &["successes", "throughput", "output_tokens_per_sec"])?,
        goodput: num(v, &["successes", "goodput_metrics", "request_goodput"]).ok(),
        hit_rate: num(v, &["successes", "prompt_tokens", "cached"])
            .ok()
            .zip(num(v, &["successes", "prompt_tokens", "total"]).ok())
            .and_then(|(cached, total)| (total > 0.0).then(|| cached / total)),
        ..Default::default()
    })
}

/// aiperf's `profile_export_aiperf.json` (ms) as [`RunStats`].
pub fn aiperf_stats(v: &Value, rate: f64) -> Result<RunStats> {
    let lat = |metric: &str| -> Result<[f64; 3]> {
        let p = |q: &str| num(v, &[metric, q]);
        Ok([p("p50")?, p("p90")?, p("p99")?])
    };
    let requests = num(v, &["request_count", "avg"])? as usize;
    let errors: f64 =
        v["error_summary"].as_array().map(|errs| errs.iter().filter_map(|e| e["count"].as_f64()).sum()).unwrap_or(0.0);
    Ok(RunStats {
        requests,
        completed: requests.saturating_sub(errors as usize),
        rate,
        ttft_ms: lat("time_to_first_token")?,
        itl_ms: lat("inter_token_latency")?,
        e2e_ms: lat("request_latency")?,
        output_tokens_per_s: num(v, &["output_token_throughput", "avg"])?,
        goodput: num(v, &["goodput", "avg"]).ok(),
        hit_rate: num(v, &["overall_usage_prompt_cache_read_pct", "avg"]).ok().map(|pct| pct / 100.0),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_reports() {
        let ip = json!({
            "successes": {"count": 38,
                "latency": {
                    "time_to_first_token": {"median": 0.018, "p90": 0.116, "p99": 0.120},
                    "time_per_output_token": {"median": 0.0084, "p90": 0.0097, "p99": 0.0175},
                    "request_latency": {"median": 0.092, "p90": 0.185, "p99": 0.194}},
                "throughput": {"output_tokens_per_sec": 93.2},
                "goodput_metrics": {"request_goodput": 9.26}},
            "failures": {"count": 2}});
        let s = inference_perf_stats(&ip, 10.0).unwrap();
        assert_eq!((s.requests, s.completed), (40, 38));
        assert!((s.ttft_ms[0] - 18.0).abs() < 1e-9 && (s.e2e_ms[2] - 194.0).abs() < 1e-9);
        assert_eq!(s.goodput, Some(9.26));
        let ap = json!({
            "request_count": {"avg": 40.0},
            "time_to_first_token": {"p50": 13.9, "p90": 44.6, "p99": 47.6},
            "inter_token_latency": {"p50": 8.4, "p90": 8.6, "p99": 8.8},
            "request_latency": {"p50": 70.8, "p90": 75.3, "p99": 80.4},
            "output_token_throughput": {"avg": 69.6},
            "error_summary": [{"count": 3}]});
        let s = aiperf_stats(&ap, 10.0).unwrap();
        assert_eq!((s.requests, s.completed, s.goodput), (40, 37, None));
        // A report missing a metric is an error naming it, not a zero.
        let err = aiperf_stats(&json!({"request_count": {"avg": 1.0}}), 1.0).unwrap_err();
        assert!(format!("{err:#}").contains("time_to_first_token"), "{err:#}");
    }

    #[test]
    fn answers_count_exactly() {
        let dir = std::env::temp_dir().join(format!("llmd-drivers-{}", std::process::id()));
        llmd_engine::ByteTokenizer::write_hf_files(&dir).unwrap();
        let tok = llmd_openai::HfTokenizer::from_dir(&dir).unwrap();
        use llmd_openai::Tokenize;
        for n in [1, 2, 8, 16] {
            let a = answer_of_length(&tok, n).unwrap();
            assert_eq!(tok.encode(&a, true).unwrap().len(), n);
        }
        assert!(Driver::parse("wrk").is_err());
    }
}
