//! Scraping over TLS (a CA of its own, client certificates) and llm-d-router's
//! multicluster plugins end to end: peer clusters found in a file, their pickers'
//! pool averages scraped over https, the least loaded peer picked.
//!
//! The certificates are `tests/fixtures/tls/` (made by its `generate.sh`).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmd_scheduler::picker::{EndpointPicker, PickerConfig};
use llmd_scheduler::{
    AttributeValue, Endpoint, FileDiscovery, ManualClock, PluginRegistry, Role, Scheduler, SchedulerConfig, datastore,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls")
}

fn fixture(name: &str) -> String {
    tls_dir().join(name).display().to_string()
}

/// An HTTPS server on 127.0.0.1 answering every request with `body`, its certificate
/// signed by the fixture CA; with `client_auth` it refuses clients without a
/// certificate of that CA. Returns its port.
async fn https_server(body: String, client_auth: bool) -> u16 {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(tls_dir().join("server.crt")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(tls_dir().join("server.key")).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap();
    let cfg = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(tls_dir().join("ca.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap();
        builder.with_client_cert_verifier(verifier).with_single_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth().with_single_cert(certs, key).unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn picker(yaml: &str, endpoints: &[(&str, u16)]) -> Arc<EndpointPicker> {
    let config = SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let store = datastore(Arc::new(ManualClock::new()));
    for (id, port) in endpoints {
        store.upsert(Endpoint::new(*id, format!("127.0.0.1:{port}"), Role::Both));
    }
    EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None)
}

fn waiting(p: &EndpointPicker, id: &str) -> Option<u64> {
    let e = p.datastore().get(id).unwrap();
    e.metrics.updated_at.map(|_| e.metrics.waiting)
}

fn source(params: &str) -> String {
    format!(
        "plugins:\n- type: metrics-data-source\n  parameters: {params}\n- type: core-metrics-extractor\n\
         - type: queue-scorer\ndataLayer:\n  sources:\n  - pluginRef: metrics-data-source\n    extractors:\n    \
         - pluginRef: core-metrics-extractor\n"
    )
}

#[tokio::test]
async fn metrics_are_scraped_over_https_with_the_configured_ca() {
    let port = https_server("vllm:num_requests_waiting 7\n".into(), false).await;
    let ca = fixture("ca.crt");
    // Verified against the fixture CA (the server's name is its IP, in the certificate).
    let p =
        picker(&source(&format!("{{scheme: https, caCertPath: {ca:?}, insecureSkipVerify: false}}")), &[("e", port)]);
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), Some(7));
    // Without the CA the system roots do not know the server: no metrics.
    let p = picker(&source("{scheme: https, insecureSkipVerify: false}"), &[("e", port)]);
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), None, "an unknown CA must fail verification");
    // metrics-data-source skips verification by default, as the router's does.
    let p = picker(&source("{scheme: https}"), &[("e", port)]);
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), Some(7));
    // Plain http to a TLS server gets nothing.
    let p = picker(&source("{scheme: http}"), &[("e", port)]);
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), None);
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let port = https_server("vllm:num_requests_waiting 2\n".into(), true).await;
    let (ca, cert, key) = (fixture("ca.crt"), fixture("client.crt"), fixture("client.key"));
    let p = picker(
        &source(&format!(
            "{{scheme: https, caCertPath: {ca:?}, insecureSkipVerify: false, clientCertPath: {cert:?}, clientKeyPath: {key:?}}}"
        )),
        &[("e", port)],
    );
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), Some(2));
    let p =
        picker(&source(&format!("{{scheme: https, caCertPath: {ca:?}, insecureSkipVerify: false}}")), &[("e", port)]);
    p.scrape_once().await;
    assert_eq!(waiting(&p, "e"), None, "the server requires a client certificate");
}

#[test]
fn missing_or_invalid_certificate_files_fail_the_load() {
    let reg = PluginRegistry::with_builtins();
    let load = |params: &str| SchedulerConfig::from_yaml(&source(params), "epp.yaml", &reg).map(|_| ()).unwrap_err();
    let e = load("{scheme: https, caCertPath: /nonexistent/ca.crt, insecureSkipVerify: false}").to_string();
    assert!(e.contains("caCertPath") && e.contains("/nonexistent/ca.crt"), "{e}");
    // metrics-data-source skips verification by default, and then ignores the CA (the
    // router's order).
    SchedulerConfig::from_yaml(&source("{scheme: https, caCertPath: /nonexistent/ca.crt}"), "epp.yaml", &reg).unwrap();
    // A file that holds no certificate.
    let key = fixture("client.key");
    let e = load(&format!("{{scheme: https, caCertPath: {key:?}, insecureSkipVerify: false}}")).to_string();
    assert!(e.contains("caCertPath") && e.contains("no PEM certificate"), "{e}");
    let cert = fixture("client.crt");
    let e =
        load(&format!("{{scheme: https, clientCertPath: {cert:?}, clientKeyPath: /nonexistent/k.pem}}")).to_string();
    assert!(e.contains("clientKeyPath") && e.contains("/nonexistent/k.pem"), "{e}");
    let e = load(&format!("{{scheme: https, clientCertPath: {cert:?}}}")).to_string();
    assert!(e.contains("clientKeyPath"), "{e}");
    // Over http the files are not read (the router ignores them there).
    SchedulerConfig::from_yaml(&source("{caCertPath: /nonexistent/ca.crt}"), "epp.yaml", &reg).unwrap();
}

/// What a peer cluster's picker exports of its pool.
fn pool(kv: f64, queue: f64) -> String {
    format!(
        "# TYPE llm_d_epp_average_kv_cache_utilization gauge\nllm_d_epp_average_kv_cache_utilization {kv}\n\
         # TYPE llm_d_epp_average_queue_size gauge\nllm_d_epp_average_queue_size {queue}\n"
    )
}

#[tokio::test]
async fn the_router_s_multicluster_config_picks_the_least_loaded_peer() {
    let busy = https_server(pool(0.9, 12.0), false).await;
    let idle = https_server(pool(0.1, 1.0), false).await;
    let dir = std::env::temp_dir().join(format!("llmd-multicluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clusters = dir.join("clusters.yaml");
    // Peers by gateway hostname; their pickers' metrics at metricsAddress/metricsPort.
    std::fs::write(
        &clusters,
        format!(
            "endpoints:\n\
             - {{name: us-east, address: gateway.us-east.invalid, port: '443', labels: {{metricsAddress: 127.0.0.1, metricsPort: '{busy}'}}}}\n\
             - {{name: eu-west, address: gateway.eu-west.invalid, port: '443', labels: {{metricsAddress: 127.0.0.1, metricsPort: '{idle}'}}}}\n"
        ),
    )
    .unwrap();
    // The router's README example, its paths made this test's.
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/llm-d-router/extra/plugins-readme-multicluster.yaml");
    let yaml = std::fs::read_to_string(file)
        .unwrap()
        .replace("/etc/epp/clusters.yaml", &clusters.display().to_string())
        .replace("/etc/epp/tls/ca.crt", &fixture("ca.crt"));
    let config = SchedulerConfig::from_yaml(&yaml, "multicluster.yaml", &PluginRegistry::with_builtins()).unwrap();
    assert_eq!(
        config.discovery,
        Some(llmd_scheduler::DiscoveryRef::MultiClusterFile { path: clusters.clone(), watch: false })
    );
    let p = EndpointPicker::new(
        Scheduler::new(config, 0),
        datastore(Arc::new(ManualClock::new())),
        PickerConfig::default(),
        None,
    );
    p.run_discovery(Box::new(FileDiscovery::multicluster(&clusters, None))).unwrap();
    p.scrape_once().await;
    let attr = |id: &str, k: &str| p.datastore().get(id).unwrap().attributes.get(k).cloned();
    assert_eq!(
        attr("us-east", "llm-d.ai/multicluster-queue-size"),
        Some(AttributeValue::Float(12.0)),
        "scraped over https at the peer's metrics host"
    );
    assert_eq!(attr("eu-west", "llm-d.ai/multicluster-kv-cache-utilization"), Some(AttributeValue::Float(0.1)));
    let req = llmd_scheduler::LlmRequest::new("r", "m", "hi");
    for _ in 0..3 {
        let pick = p.pick_request(&req, &Default::default()).unwrap();
        let dest = pick.result.destination().unwrap();
        assert_eq!(dest.endpoint, "eu-west");
        assert_eq!(dest.address, "gateway.eu-west.invalid:443", "requests go to the gateway, not the metrics host");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_router_s_multicluster_fixture_names_a_ca_that_must_exist() {
    // As the router fails creating the source when its CA file cannot be read, the
    // README example fails to load where /etc/epp/tls/ca.crt does not exist (the
    // discovery file is only read when discovery runs).
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/llm-d-router/extra/plugins-readme-multicluster.yaml");
    if Path::new("/etc/epp/tls/ca.crt").exists() {
        return;
    }
    let e = SchedulerConfig::from_file(&file, &PluginRegistry::with_builtins()).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("caCertPath") && e.contains("/etc/epp/tls/ca.crt"), "{e}");
}
