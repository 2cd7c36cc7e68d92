//! `llmd epp --pool-name` as llm-d's EPP in a cluster, with the cluster played by the
//! in-process API server (`llmd_k8s::fake`) and the model servers by `llmd serve --sim`
//! processes on their own loopback addresses (one target port, as pods share one):
//! picks through ext-proc and HTTP reach Ready pods only, follow pods as they change,
//! and two replicas elect one leader, the follower taking over when the leader dies.
//!
//! A real cluster: `llmd-k8s/tests/integration/watch.rs`, `needs_hardware::` (run by hand).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use llmd_k8s::fake::FakeApiServer;
use serde_json::{Value, json};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::common::{self, eventually};

const NS: &str = "llm";

fn pod(name: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "vllm"}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn pool_with_port(port: u16) -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "qwen", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": port}],
                 "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002}}},
    })
}

/// A port free on each of `hosts` (the model servers share one target port).
fn shared_port(hosts: &[&str]) -> u16 {
    for _ in 0..50 {
        let port = std::net::TcpListener::bind((hosts[0], 0)).unwrap().local_addr().unwrap().port();
        if hosts.iter().all(|h| std::net::TcpListener::bind((*h, port)).is_ok()) {
            return port;
        }
    }
    panic!("no port free on all of {hosts:?}");
}

fn engine(host: &str, port: u16) -> common::Llmd {
    let args: Vec<String> = ["serve", "--sim", "--host", host, "--port", &port.to_string()].map(String::from).to_vec();
    common::start_llmd(&args, "llmd serve:").expect("llmd serve did not start").0
}

/// The address in a start-up line (`... at http://HOST:PORT/...` or `grpc://HOST:PORT`).
fn addr(line: &str) -> String {
    let rest = line.split("://").nth(1).unwrap();
    rest.split(['/', ' ']).next().unwrap().to_string()
}

struct Epp {
    proc: common::Llmd,
    http: String,
    grpc: String,
    health: String,
}

fn start_epp(kubeconfig: &std::path::Path, extra: &[&str]) -> Epp {
    let mut args: Vec<String> = [
        "epp",
        "--pool-name",
        "qwen",
        "--pool-namespace",
        NS,
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--routing",
        "round-robin",
        "--expose-destination",
        "--health-check-interval",
        "0",
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--grpc-health-port",
        "0",
        "--metrics-port",
        "0",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    // A free port for each listener (0 turns a listener off).
    for flag in ["--http-port", "--grpc-port", "--grpc-health-port"] {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = port.to_string();
    }
    let (proc, health_line) = common::start_llmd(&args, "llmd epp: gRPC health").expect("llmd epp did not start");
    let http = addr(&proc.line_starting("llmd epp: HTTP gateway", Duration::from_secs(30)).unwrap());
    let grpc = addr(&proc.line_starting("llmd epp: Envoy ext-proc", Duration::from_secs(30)).unwrap());
    Epp { proc, http, grpc, health: addr(&health_line) }
}

async fn health(addr: &str, service: &str) -> Option<ServingStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?;
    let channel = tokio::time::timeout(Duration::from_secs(5), endpoint.connect()).await.ok()?.ok()?;
    let mut c = HealthClient::new(channel);
    let check = c.check(HealthCheckRequest { service: service.into() });
    match tokio::time::timeout(Duration::from_secs(5), check).await.ok()? {
        Ok(r) => ServingStatus::try_from(r.into_inner().status).ok(),
        Err(_) => None,
    }
}

/// Sends `n` completions through the HTTP gateway; the endpoints that served them.
async fn http_destinations(gateway: &str, n: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for i in 0..n {
        let send = client
            .post(format!("http://{gateway}/v1/completions"))
            .header("content-type", "application/json")
            .body(json!({"prompt": format!("request {i}"), "max_tokens": 2}).to_string())
            .send();
        let r = tokio::time::timeout(Duration::from_secs(30), send).await.unwrap().unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        out.push(r.headers()["x-gateway-destination-endpoint"].to_str().unwrap().to_string());
    }
    out
}

/// A TLS channel to `addr` trusting only `root` (the EPP's --cert-path certificate),
/// as a gateway set up for llm-d's secure serving connects.
async fn tls_channel(addr: &str, root: &rustls::pki_types::CertificateDer<'static>) -> tonic::transport::Channel {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let addr = addr.to_string();
    let connect = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let (connector, addr) = (connector.clone(), addr.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await?;
            let name = rustls::pki_types::ServerName::try_from("qwen-epp.llm.svc").unwrap();
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(connector.connect(name, tcp).await?))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_static("http://qwen-epp.llm.svc");
    tokio::time::timeout(Duration::from_secs(10), endpoint.connect_with_connector(connect)).await.unwrap().unwrap()
}

/// One request through ext-proc over TLS, as Envoy sends it; the destination the EPP set.
async fn extproc_destination(grpc: &str, root: &rustls::pki_types::CertificateDer<'static>) -> String {
    let hv = |k: &str, v: &str| HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() };
    let body = br#"{"model": "m", "prompt": "hello", "max_tokens": 2}"#;
    let msgs = vec![
        ProcessingRequest {
            request: Some(In::RequestHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: vec![hv(":path", "/v1/completions"), hv(":method", "POST"), hv("x-request-id", "k8s-1")],
                }),
                end_of_stream: false,
                ..Default::default()
            })),
            ..Default::default()
        },
        ProcessingRequest {
            request: Some(In::RequestBody(HttpBody { body: body.to_vec(), end_of_stream: true, ..Default::default() })),
            ..Default::default()
        },
    ];
    let mut client = ExternalProcessorClient::new(tls_channel(grpc, root).await);
    let mut stream = tokio::time::timeout(Duration::from_secs(10), client.process(futures_util::stream::iter(msgs)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        let common = match &m.response {
            Some(Out::RequestBody(b)) => b.response.clone(),
            Some(Out::RequestHeaders(h)) => h.response.clone(),
            other => panic!("{other:?}"),
        };
        let Some(common) = common else { continue };
        let set = common.header_mutation.unwrap().set_headers;
        let h = set.iter().find_map(|h| h.header.as_ref().filter(|h| h.key == "x-gateway-destination-endpoint"));
        return String::from_utf8(h.unwrap().raw_value.clone()).unwrap();
    }
}

fn kubeconfig(server: &FakeApiServer, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, server.kubeconfig_yaml(NS)).unwrap();
    path
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("llmd-k8s-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epp_serves_the_ready_pods_of_its_pool_through_ext_proc_and_http() {
    let hosts = ["127.0.0.2", "127.0.0.3"];
    let port = shared_port(&hosts);
    let _a = engine(hosts[0], port);
    let _b = engine(hosts[1], port);
    let (a, b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool_with_port(port));
    server.apply(pod("vllm-a", "127.0.0.2", true));
    server.apply(pod("vllm-b", "127.0.0.3", true));
    // Not ready: nothing listens there, and nothing may be sent there.
    server.apply(pod("vllm-c", "127.0.0.4", false));
    let dir = scratch("serve");
    // ext-proc over TLS (on by default with --pool-name, as llm-d), with a certificate
    // from a mounted Secret's files.
    let made = rcgen::generate_simple_self_signed(vec!["qwen-epp.llm.svc".to_string()]).unwrap();
    std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
    let root = made.cert.der().clone();
    let epp = start_epp(&kubeconfig(&server, &dir), &["--cert-path", dir.to_str().unwrap()]);
    assert!(
        eventually(Duration::from_secs(20), async || health(&epp.health, "inference-extension").await
            == Some(ServingStatus::Serving))
        .await,
        "the EPP never became ready"
    );
    assert_eq!(health(&epp.health, "liveness").await, Some(ServingStatus::Serving));

    // Round robin over the two Ready pods, through both front doors.
    let seen: BTreeSet<String> = http_destinations(&epp.http, 6).await.into_iter().collect();
    assert_eq!(seen, BTreeSet::from([a.clone(), b.clone()]));
    let mut by_extproc = BTreeSet::new();
    for _ in 0..4 {
        by_extproc.insert(extproc_destination(&epp.grpc, &root).await);
    }
    assert_eq!(by_extproc, BTreeSet::from([a.clone(), b.clone()]));

    // b turns unready: once the EPP has seen it, nothing more goes there.
    server.apply(pod("vllm-b", "127.0.0.3", false));
    assert!(
        eventually(Duration::from_secs(10), async || http_destinations(&epp.http, 1).await == [a.clone()]).await,
        "b was never dropped"
    );
    assert!(http_destinations(&epp.http, 8).await.iter().all(|d| *d == a));
    // b is ready again, then a is deleted.
    server.apply(pod("vllm-b", "127.0.0.3", true));
    assert!(
        eventually(Duration::from_secs(10), async || http_destinations(&epp.http, 2).await.contains(&b)).await,
        "b never came back"
    );
    server.delete("v1", "Pod", NS, "vllm-a");
    assert!(
        eventually(Duration::from_secs(10), async || http_destinations(&epp.http, 1).await == [b.clone()]).await,
        "a's deletion was never seen"
    );
    // No request goes to a pod after its deletion is seen.
    let after = http_destinations(&epp.http, 8).await;
    assert!(after.iter().all(|d| *d == b), "{after:?}");
    for _ in 0..3 {
        assert_eq!(extproc_destination(&epp.grpc, &root).await, b);
    }
    drop(epp);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_one_leads_and_the_follower_takes_over_from_a_dead_leader() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool_with_port(8000));
    server.apply(pod("vllm-a", "127.0.0.2", true));
    let dir = scratch("election");
    let kc = kubeconfig(&server, &dir);
    // Short timings (llm-d's are 15 s / 10 s / 2 s) keep the test short.
    let ha = [
        "--ha-enable-leader-election",
        "--ha-lease-duration",
        "2s",
        "--ha-renew-deadline",
        "1500ms",
        "--ha-retry-period",
        "200ms",
    ];
    let first = start_epp(&kc, &ha);
    let second = start_epp(&kc, &ha);
    let ready = async |e: &Epp| health(&e.health, "readiness").await == Some(ServingStatus::Serving);
    assert!(
        eventually(Duration::from_secs(20), async || ready(&first).await || ready(&second).await).await,
        "no replica became the leader"
    );
    // Over three election rounds never both are ready; then exactly one is, both live.
    let both = async || ready(&first).await && ready(&second).await;
    assert!(common::holds_for(Duration::from_millis(600), async || !both().await).await, "two leaders at once");
    let (r1, r2) = (ready(&first).await, ready(&second).await);
    assert!(r1 ^ r2, "ready: first {r1}, second {r2}");
    for e in [&first, &second] {
        assert_eq!(health(&e.health, "liveness").await, Some(ServingStatus::Serving));
    }
    let (leader, follower) = if r1 { (first, second) } else { (second, first) };
    let leader = failover(leader, follower).await;
    // A third replica follows; the leader is stopped properly (SIGTERM): it releases
    // the Lease, and the third takes over without waiting for it to run out.
    let third = start_epp(&kc, &ha);
    assert!(
        eventually(Duration::from_secs(10), async || health(&third.health, "liveness").await
            == Some(ServingStatus::Serving))
        .await
    );
    assert!(
        common::holds_for(Duration::from_millis(600), async || !ready(&third).await).await,
        "the third replica leads beside the leader"
    );
    let stopped = Instant::now();
    common::signal(&leader.proc.child, "TERM");
    assert!(
        eventually(Duration::from_secs(10), async || ready(&third).await).await,
        "the third replica never took over"
    );
    let took = stopped.elapsed();
    assert!(took < Duration::from_millis(1800), "a released lease was taken only after {took:?}");
    // The stopped leader serves on through its drain window: live, not ready.
    assert_eq!(health(&leader.health, "liveness").await, Some(ServingStatus::Serving));
    assert_eq!(health(&leader.health, "readiness").await, Some(ServingStatus::NotServing));
    let _ = std::fs::remove_dir_all(dir);
}

/// Kills the leader without letting it release the Lease (SIGKILL): the follower takes
/// over once the lease runs out on its clock, within the lease duration and a retry.
async fn failover(mut leader: Epp, follower: Epp) -> Epp {
    let killed = Instant::now();
    common::signal(&leader.proc.child, "KILL");
    let _ = leader.proc.child.wait();
    assert!(
        eventually(Duration::from_secs(10), async || health(&follower.health, "readiness").await
            == Some(ServingStatus::Serving))
        .await,
        "the follower never took over"
    );
    let took = killed.elapsed();
    // Lease 2 s, retry 200 ms; the follower's clock started when it last saw a renewal.
    assert!(took < Duration::from_millis(2000 + 200 + 1500), "takeover took {took:?}");
    assert!(took >= Duration::from_millis(1000), "took over in {took:?}, before the lease could have run out");
    follower
}

/// `llmd epp ARGS` that must refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llmd"))
        .arg("epp")
        .args(args)
        .env_remove("NAMESPACE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "llmd epp {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn conflicting_or_unhonourable_flags_fail_with_a_clear_message() {
    let cases: [(&[&str], &str); 9] = [
        (&["--pool-name", "qwen", "--endpoint", "a=127.0.0.1:8000"], "cannot be used with"),
        (
            &["--pool-name", "qwen", "--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000"],
            "cannot be used with",
        ),
        (&["--config-file", "a.yaml", "--config-text", "b", "--endpoint", "a=127.0.0.1:8000"], "cannot be used with"),
        (&["--endpoint-selector", "app=vllm"], "--endpoint-target-ports"),
        (&["--endpoint", "a=127.0.0.1:8000", "--ha-enable-leader-election"], "needs --pool-name"),
        (&["--pool-name", "qwen", "--total-queued-requests-metric", "sglang:num_queue_reqs"], "dataLayer"),
        (&["--pool-name", "qwen", "--metrics-endpoint-auth=true"], "no authentication"),
        (&["--pool-name", "qwen", "--no-such-flag"], "unexpected argument"),
        (&["--pool-name", "qwen", "--emit-endpoint-scores=true"], "per-endpoint scores"),
    ];
    for (args, says) in cases {
        let err = refused(args);
        assert!(err.contains(says), "llmd epp {args:?} should say {says:?}; it said:\n{err}");
    }
    // The flags a swapped-in llm-d chart passes are accepted (checked up to the point
    // where the cluster is needed: a kubeconfig that names no server).
    let err = refused(&[
        "--pool-name",
        "qwen",
        "--pool-namespace",
        "llm",
        "--pool-group",
        "inference.networking.k8s.io",
        "--zap-encoder",
        "json",
        "--config-text",
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n",
        "--grpc-health-port",
        "0",
        "--tracing=false",
        "--metrics-endpoint-auth=false",
        "--v",
        "2",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert!(err.contains("/nonexistent/kubeconfig"), "{err}");
}
