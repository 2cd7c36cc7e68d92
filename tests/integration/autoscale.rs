//! `llmd autoscale`.

/// `llmd autoscale simulate` prints the comparison table and writes the SVG; a bad
/// trace name is a clear error.
#[test]
fn simulate_prints_the_policies_and_writes_the_svg() {
    let svg = std::env::temp_dir().join(format!("llmd-autoscale-{}.svg", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["autoscale", "simulate", "--trace", "step", "--duration", "600", "--peak", "3"])
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for policy in ["| oracle", "| static |", "| threshold |", "| saturation |", "| model |"] {
        assert!(table.contains(policy), "{policy} missing:\n{table}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(text.starts_with("<svg") && text.contains("model:"), "{text}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .args(["autoscale", "simulate", "--trace", "weekly"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expected one of"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

use std::sync::Arc;
use std::time::Duration;

use llmd::autoscale::{Reason, SaturationConfig, SaturationPolicy, StabilizeConfig};
use llmd::autoscaler::LocalAutoscaler;
use llmd::cluster::{LocalCluster, Replica};
use llmd::engine::LatencyModel;
use llmd::scheduler::{PluginRegistry, presets};
use serde_json::json;

/// A simulated replica with a small KV cache (64 blocks of 16 tokens): three of the
/// test's requests fill it, the rest wait.
fn small() -> anyhow::Result<Replica> {
    let latency = LatencyModel {
        step_overhead: Duration::from_millis(2),
        per_prefill_token: Duration::from_micros(10),
        per_decode_seq: Duration::from_micros(50),
        per_context_token: Duration::ZERO,
        per_transfer_token: Duration::ZERO,
        per_onboard_token: Duration::ZERO,
        per_disk_token: Duration::ZERO,
    };
    let built = llmd::engine::EngineBuilder::sim(latency)
        .served_model_name("llmd-sim")
        .num_blocks(64)
        .max_model_len(1024)
        .seed(1)
        .build()?;
    Ok(Replica { engine: built.engine, template: built.template, generation: built.generation })
}

/// Sends `n` requests of 300 output tokens each; returns their tasks, each yielding the
/// HTTP status and the tokens generated.
#[allow(clippy::unwrap_used)] // a test helper outside #[test] fns
fn burst(base: &str, n: usize) -> Vec<tokio::task::JoinHandle<(u16, u64)>> {
    let client = reqwest::Client::new();
    (0..n)
        .map(|i| {
            let (client, url) = (client.clone(), format!("{base}/v1/completions"));
            tokio::spawn(async move {
                let body = json!({
                    "model": "llmd-sim",
                    "prompt": format!("request {i}: ") + &"word ".repeat(20),
                    "max_tokens": 300,
                    "ignore_eos": true,
                });
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                (status, v["usage"]["completion_tokens"].as_u64().unwrap_or(0))
            })
        })
        .collect()
}

/// Scrapes until every running replica reports saturation (≥ 5 waiting or KV ≥ 0.8),
/// at most 10 s.
async fn until_saturated(cluster: &LocalCluster) -> bool {
    crate::common::eventually(Duration::from_secs(10), async || {
        cluster.picker.scrape_once().await;
        let running = cluster.replica_ids();
        cluster.picker.datastore().with_endpoints(|all| {
            let mine: Vec<_> = all.iter().filter(|e| running.contains(&e.id)).collect();
            mine.len() == running.len() && mine.iter().all(|e| e.metrics.waiting >= 5 || e.metrics.kv_usage >= 0.8)
        })
    })
    .await
}

/// `llmd up --autoscale`'s actuator on simulated replicas under a stepped load: bursts
/// that saturate the replicas they reach add replicas (the picker routes to them), the
/// end of the load drains back to the minimum, a replica drained with requests in
/// flight finishes them, and every request is answered in full. Decisions are made at
/// chosen instants (no timer), so the test waits only on the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rise_under_load_and_drain_after_it_without_losing_a_request() {
    let reg = PluginRegistry::with_builtins();
    let cluster = LocalCluster::start(vec![small().unwrap()], presets::preset("load", &reg).unwrap(), 1, "127.0.0.1:0")
        .await
        .unwrap();
    let cluster = Arc::new(cluster);
    let base = format!("http://{}", cluster.addr);
    let policy = SaturationPolicy::new(SaturationConfig::default()).unwrap();
    let stabilize = StabilizeConfig { scale_down_window: 0.0, ..StabilizeConfig::default() };
    let mut scaler =
        LocalAutoscaler::new(cluster.clone(), Arc::new(small), Box::new(policy), stabilize, (1, 4)).unwrap();
    assert!(
        LocalAutoscaler::new(
            cluster.clone(),
            Arc::new(small),
            Box::new(SaturationPolicy::new(Default::default()).unwrap()),
            StabilizeConfig::default(),
            (0, 4)
        )
        .is_err()
    );

    // Step up: each burst saturates the replica it lands on, and a decision adds one.
    let mut requests = Vec::new();
    let mut sizes = vec![1];
    for step in 0..2 {
        requests.extend(burst(&base, 16));
        assert!(until_saturated(&cluster).await, "step {step}: no replica saturated");
        let d = scaler.tick(15.0 * f64::from(step)).await.unwrap();
        assert_eq!((d.desired, d.reason), (d.current + 1, Reason::Saturated), "{d:?}");
        sizes.push(cluster.replica_ids().len());
    }
    assert_eq!(sizes, [1, 2, 3], "replicas rose");

    // A replica drained with requests in flight finishes them.
    let busy = burst(&base, 6);
    let holding = crate::common::eventually(Duration::from_secs(10), async || {
        cluster
            .picker
            .datastore()
            .with_endpoints(|all| all.iter().any(|e| e.id == "replica-2" && e.inflight.requests > 0))
    })
    .await;
    assert!(holding, "the newest replica took some of the burst");
    cluster.drain_replica("replica-2").await.unwrap();
    requests.extend(busy);

    // Every request answered in full.
    for r in requests {
        assert_eq!(r.await.unwrap(), (200, 300));
    }

    // Step down: idle replicas drain, one per decision (WVA's step), to the minimum.
    cluster.add_replica(small().unwrap()).await.unwrap();
    let mut t = 60.0;
    while cluster.replica_ids().len() > 1 && t < 300.0 {
        cluster.picker.scrape_once().await;
        let d = scaler.tick(t).await.unwrap();
        assert!(d.desired <= d.current, "{d:?}");
        scaler.drained().await;
        t += 15.0;
    }
    assert_eq!(cluster.replica_ids().len(), 1, "back to the minimum");
    let after = burst(&base, 2);
    for r in after {
        assert_eq!(r.await.unwrap(), (200, 300), "the remaining replica serves");
    }
    drop(scaler);
    cluster.shutdown().await;
}

/// The Kubernetes actuator against the in-process API server: a `VariantAutoscaling`
/// names a Deployment whose two pods are simulated engines on loopback. Saturated, a
/// pass scales the Deployment 2 → 3 through its `scale` subresource and writes the
/// resource's status and WVA's metrics; a dry run (advisory) writes the status and
/// leaves the scale alone; a missing target is a condition, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_autoscaling_scales_its_deployment_on_a_fake_api_server() {
    use llmd::autoscaler::kube::KubeAutoscaler;
    use llmd::k8s::fake::FakeApiServer;
    use llmd::k8s::kube;

    const NS: &str = "llm";
    let server = FakeApiServer::start().await.unwrap();
    let reg = PluginRegistry::with_builtins();
    let cluster = LocalCluster::start(
        vec![small().unwrap(), small().unwrap()],
        presets::preset("load", &reg).unwrap(),
        1,
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    for (i, addr) in cluster.replicas.iter().enumerate() {
        server.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("vllm-{i}"), "namespace": NS, "labels": {"app": "vllm"},
                         "annotations": {"prometheus.io/port": addr.port().to_string()}},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    server.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm", "namespace": NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vllm"}},
                 "template": {"metadata": {"labels": {"app": "vllm"}}, "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}}},
        "status": {"replicas": 2, "readyReplicas": 2},
    }));
    // WVA v0.5's manifest, with llmd's bounds annotation.
    server.apply(json!({
        "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
        "metadata": {"name": "vllm-h100", "namespace": NS, "annotations": {"autoscaling.llmd.ai/max-replicas": "4"}},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}, "modelID": "llmd-sim", "variantCost": "10.0"},
    }));
    server.apply(json!({
        "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
        "metadata": {"name": "orphan", "namespace": NS},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "gone"}, "modelID": "other"},
    }));
    let config = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(NS)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let saturation = || -> anyhow::Result<Box<dyn llmd::autoscale::Policy>> {
        Ok(Box::new(SaturationPolicy::new(SaturationConfig::default())?))
    };

    // Both engines saturated by bursts through the gateway.
    let base = format!("http://{}", cluster.addr);
    let requests = burst(&base, 30);
    assert!(until_saturated(&cluster).await, "the engines never saturated");

    let stabilize = StabilizeConfig { scale_down_window: 0.0, ..StabilizeConfig::default() };
    let mut advisory = KubeAutoscaler::new(client.clone(), NS, Box::new(saturation), stabilize.clone(), true).unwrap();
    let decided = advisory.reconcile(0.0).await.unwrap();
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!((decided[0].1.current, decided[0].1.desired), (2, 3));
    let deployment = server.get("apps/v1", "Deployment", NS, "vllm").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2, "a dry run leaves the scale alone");
    let va = server.get("llmd.ai/v1alpha1", "VariantAutoscaling", NS, "vllm-h100").unwrap();
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["numReplicas"], 3, "{va}");
    assert_eq!(va["status"]["actuation"]["applied"], false);

    let mut scaler = KubeAutoscaler::new(client, NS, Box::new(saturation), stabilize, false).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    scaler.metrics().register(&mut registry);
    let decided = scaler.reconcile(0.0).await.unwrap();
    assert_eq!((decided[0].1.current, decided[0].1.desired), (2, 3));
    let deployment = server.get("apps/v1", "Deployment", NS, "vllm").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 3, "scaled through the scale subresource");
    let va = server.get("llmd.ai/v1alpha1", "VariantAutoscaling", NS, "vllm-h100").unwrap();
    assert_eq!(va["status"]["actuation"]["applied"], true);
    assert_eq!(va["status"]["desiredOptimizedAlloc"]["accelerator"], "unknown", "v0.5 requires one: {va}");
    let conditions = va["status"]["conditions"].as_array().unwrap();
    for kind in ["TargetResolved", "MetricsAvailable", "OptimizationReady"] {
        assert!(conditions.iter().any(|c| c["type"] == kind && c["status"] == "True"), "{kind}: {conditions:?}");
    }
    let orphan = server.get("llmd.ai/v1alpha1", "VariantAutoscaling", NS, "orphan").unwrap();
    let reasons: Vec<&str> =
        orphan["status"]["conditions"].as_array().unwrap().iter().filter_map(|c| c["reason"].as_str()).collect();
    assert!(reasons.contains(&"TargetNotFound"), "{orphan}");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("wva_desired_replicas{variant_name=\"vllm-h100\",namespace=\"llm\"} 3"), "{text}");
    assert!(
        text.contains("wva_replica_scaling_total{variant_name=\"vllm-h100\",namespace=\"llm\",direction=\"up\""),
        "{text}"
    );

    for r in requests {
        assert_eq!(r.await.unwrap(), (200, 300));
    }
    cluster.shutdown().await;
}

/// `llmd up --autoscale 0:N`: idle long enough (on the caller's clock), the last
/// replica drains; requests that come then wait in the picker's flow-control queue, and
/// that queue brings a replica back, which serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_when_idle_and_back_for_held_requests() {
    let reg = PluginRegistry::with_builtins();
    let mut routing = presets::preset("load", &reg).unwrap();
    routing.flow_control.get_or_insert_with(Default::default).enabled = true;
    let cluster = Arc::new(LocalCluster::start(vec![small().unwrap()], routing, 1, "127.0.0.1:0").await.unwrap());
    let base = format!("http://{}", cluster.addr);
    let policy =
        SaturationPolicy::new(SaturationConfig { scale_to_zero_after: 30.0, ..SaturationConfig::default() }).unwrap();
    let stabilize = StabilizeConfig { scale_down_window: 0.0, ..StabilizeConfig::default() };
    let mut scaler =
        LocalAutoscaler::new(cluster.clone(), Arc::new(small), Box::new(policy), stabilize, (0, 2)).unwrap();

    assert_eq!(scaler.tick(0.0).await.unwrap().desired, 1, "idle, but not for long enough");
    let d = scaler.tick(31.0).await.unwrap();
    assert_eq!((d.desired, d.reason), (0, Reason::ScaleToZero));
    scaler.drained().await;
    assert!(cluster.replica_ids().is_empty());

    let held = burst(&base, 3);
    let queued = crate::common::eventually(Duration::from_secs(10), async || cluster.picker.flow_queued() == 3).await;
    assert!(queued, "held: {}", cluster.picker.flow_queued());
    let d = scaler.tick(45.0).await.unwrap();
    assert_eq!((d.current, d.desired, d.reason), (0, 1, Reason::ScaleFromZero));
    for r in held {
        assert_eq!(r.await.unwrap(), (200, 300), "a held request is served once a replica is back");
    }
    drop(scaler);
    cluster.shutdown().await;
}

/// Scale from zero on Kubernetes: a Deployment at zero replicas, whose endpoint picker
/// holds requests (`llm_d_epp_flow_control_queue_size`), is scaled to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_scale_a_deployment_from_zero() {
    use llmd::autoscaler::kube::KubeAutoscaler;
    use llmd::k8s::fake::FakeApiServer;
    use llmd::k8s::kube;

    const NS: &str = "llm";
    let server = FakeApiServer::start().await.unwrap();
    server.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm", "namespace": NS},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "vllm"}}},
        "status": {"replicas": 0, "readyReplicas": 0},
    }));
    server.apply(json!({
        "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
        "metadata": {"name": "vllm-h100", "namespace": NS, "annotations": {"autoscaling.llmd.ai/min-replicas": "0"}},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}, "modelID": "llama"},
    }));
    // The picker's metrics: four requests held.
    let held = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let served = held.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let n = served.load(std::sync::atomic::Ordering::Relaxed);
            async move {
                format!(
                    "llm_d_epp_flow_control_queue_size{{fairness_id=\"a\",priority=\"0\",inference_pool=\"p\"}} {n}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let epp = format!("http://{}/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(NS)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
    let saturation = || -> anyhow::Result<Box<dyn llmd::autoscale::Policy>> {
        Ok(Box::new(SaturationPolicy::new(SaturationConfig::default())?))
    };
    let client = kube::Client::try_from(config).unwrap();
    let mut scaler = KubeAutoscaler::new(client, NS, Box::new(saturation), StabilizeConfig::default(), false).unwrap();
    scaler.epp_metrics("llama", &epp);
    let d = scaler.reconcile(0.0).await.unwrap();
    assert_eq!((d[0].1.current, d[0].1.desired), (0, 0), "nothing held: stays at zero");
    held.store(4, std::sync::atomic::Ordering::Relaxed);
    let d = scaler.reconcile(15.0).await.unwrap();
    assert_eq!((d[0].1.current, d[0].1.desired, d[0].1.reason), (0, 1, Reason::ScaleFromZero));
    assert_eq!(server.get("apps/v1", "Deployment", NS, "vllm").unwrap()["spec"]["replicas"], 1);
}

/// `llmd autoscale kube --once --dry-run` against the in-process API server: one pass,
/// its decisions printed, nothing scaled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_command_makes_one_advisory_pass() {
    use llmd::k8s::fake::FakeApiServer;

    const NS: &str = "llm";
    let server = FakeApiServer::start().await.unwrap();
    server.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm", "namespace": NS},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "vllm"}}},
        "status": {"replicas": 3, "readyReplicas": 3},
    }));
    server.apply(json!({
        "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
        "metadata": {"name": "vllm-h100", "namespace": NS, "annotations": {"autoscaling.llmd.ai/max-replicas": "2"}},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}, "modelID": "llama"},
    }));
    let kubeconfig = std::env::temp_dir().join(format!("llmd-autoscale-kubeconfig-{}", std::process::id()));
    std::fs::write(&kubeconfig, server.kubeconfig_yaml(NS)).unwrap();
    let path = kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
            .args(["autoscale", "kube", "--namespace", NS, "--once", "--dry-run", "--metrics-port", "0"])
            .arg("--kubeconfig")
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&kubeconfig);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Above its bound (2), the variant is brought inside it: advisory only.
    assert!(stdout.contains("vllm-h100: 3 -> 2 (Bounded)"), "{stdout}");
    assert_eq!(server.get("apps/v1", "Deployment", NS, "vllm").unwrap()["spec"]["replicas"], 3);
}

/// Ready endpoints on the gateway's `/metrics` (`llmd_epp_endpoints{status="ready"}`).
#[allow(clippy::unwrap_used)] // a test helper outside #[test] fns
async fn ready_endpoints(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("llmd_epp_endpoints{status=\"ready\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The binary: `llmd up --sim --autoscale 1:3` under a burst adds a replica (seen on the
/// gateway's `/metrics`), answers every request in full, drains back to one once idle,
/// and stops cleanly on SIGTERM. Bounded: fast simulated steps, 0.2 s decisions, no
/// scale-down window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmd_up_autoscale_rises_under_a_burst_and_falls_back() {
    let args: Vec<String> = [
        "up",
        "--sim",
        "--sim-latency",
        "step=1ms,prefill=10us,decode=20us,context=0ns",
        "--replicas",
        "1",
        "--autoscale",
        "1:3",
        "--autoscale-interval",
        "0.2",
        "--autoscale-down-window",
        "0",
        "--num-blocks",
        "64",
        "--max-model-len",
        "1024",
        "--port",
        "0",
    ]
    .map(String::from)
    .to_vec();
    let (mut up, line) = crate::common::start_llmd(&args, "llmd up:").expect("llmd up started");
    let base = line.split("http://").nth(1).and_then(|s| s.split("/v1").next()).map(|a| format!("http://{a}")).unwrap();
    assert!(line.contains("autoscaled between 1 and 3"), "{line}");
    let requests = burst(&base, 16);
    let rose = crate::common::eventually(Duration::from_secs(30), async || ready_endpoints(&base).await >= 2).await;
    assert!(rose, "no replica added: {} ready", ready_endpoints(&base).await);
    for r in requests {
        assert_eq!(r.await.unwrap(), (200, 300));
    }
    let fell = crate::common::eventually(Duration::from_secs(30), async || ready_endpoints(&base).await == 1).await;
    assert!(fell, "not back to one: {} ready", ready_endpoints(&base).await);
    crate::common::signal(&up.child, "TERM");
    let status = crate::common::wait_exit(&mut up.child, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

/// Bad pods do not stall a pass: one accepts and never answers (cut at the 3 s scrape
/// timeout), one resets every connection. The variant is still decided, and its status
/// says no metrics were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_resetting_pods_leave_the_pass_to_finish() {
    use llmd::autoscaler::kube::KubeAutoscaler;
    use llmd::k8s::fake::FakeApiServer;
    use llmd::k8s::kube;

    const NS: &str = "llm";
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resetting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = [silent.local_addr().unwrap().port(), resetting.local_addr().unwrap().port()];
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s); // kept open, never answered
        }
    });
    tokio::spawn(async move {
        while let Ok((s, _)) = resetting.accept().await {
            let _ = s.set_zero_linger();
            drop(s); // RST
        }
    });
    let server = FakeApiServer::start().await.unwrap();
    for (i, port) in ports.iter().enumerate() {
        server.apply(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("vllm-{i}"), "namespace": NS, "labels": {"app": "vllm"},
                         "annotations": {"prometheus.io/port": port.to_string()}},
            "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
    }
    server.apply(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "vllm", "namespace": NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vllm"}}},
        "status": {"replicas": 2, "readyReplicas": 2},
    }));
    server.apply(json!({
        "apiVersion": "llmd.ai/v1alpha1", "kind": "VariantAutoscaling",
        "metadata": {"name": "vllm-h100", "namespace": NS},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "vllm"}, "modelID": "llama"},
    }));
    let config = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(NS)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await.unwrap();
    let saturation = || -> anyhow::Result<Box<dyn llmd::autoscale::Policy>> {
        Ok(Box::new(SaturationPolicy::new(SaturationConfig::default())?))
    };
    let client = kube::Client::try_from(config).unwrap();
    let mut scaler = KubeAutoscaler::new(client, NS, Box::new(saturation), StabilizeConfig::default(), true).unwrap();
    let pass = tokio::time::timeout(Duration::from_secs(20), scaler.reconcile(0.0)).await;
    let decided = pass.expect("the pass finished despite the bad pods").unwrap();
    assert_eq!(decided.len(), 1, "{decided:?}");
    let va = server.get("llmd.ai/v1alpha1", "VariantAutoscaling", NS, "vllm-h100").unwrap();
    let conditions = va["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().any(|c| c["type"] == "MetricsAvailable" && c["status"] == "False"), "{conditions:?}");
}
