//! The gRPC listeners over TLS (`llmd epp --secure-serving`): a tonic client that
//! trusts the served certificate negotiates h2 and gets answers; a certificate written
//! over the files is picked up on reload; a peer that never finishes its handshake
//! holds no one up.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;
use std::time::Duration;

use llmd_scheduler::servingtls::ServingTls;
use rustls::pki_types::CertificateDer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Serves gRPC health over `tls` on a fresh port.
async fn serve(tls: &ServingTls) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, svc) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let incoming = tls.incoming(listener);
    tokio::spawn(async move {
        let _keep = reporter;
        tonic::transport::Server::builder().add_service(svc).serve_with_incoming(incoming).await
    });
    addr
}

/// A channel over TLS trusting only `root`, for the name `name`.
async fn channel(addr: std::net::SocketAddr, root: CertificateDer<'static>, name: &str) -> tonic::transport::Channel {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let connect = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let tls = connector.connect(name, tcp).await?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 is negotiated");
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_static("http://llmd.invalid");
    tokio::time::timeout(Duration::from_secs(10), endpoint.connect_with_connector(connect)).await.unwrap().unwrap()
}

async fn check(ch: tonic::transport::Channel) -> i32 {
    let mut c = HealthClient::new(ch);
    let r = tokio::time::timeout(Duration::from_secs(10), c.check(HealthCheckRequest { service: String::new() }));
    r.await.unwrap().unwrap().into_inner().status
}

#[tokio::test]
async fn a_self_signed_certificate_serves_grpc_over_tls() {
    let tls = ServingTls::self_signed(&["localhost".into()]).unwrap();
    let addr = serve(&tls).await;
    // A silent peer that never starts its handshake does not block others.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let root = tls.certificate_chain()[0].clone();
    assert_eq!(check(channel(addr, root, "localhost").await).await, 1, "SERVING");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_is_refused() {
    let tls = ServingTls::self_signed(&["localhost".into()]).unwrap();
    let addr = serve(&tls).await;
    // Negative control: another certificate as the only root.
    let other = ServingTls::self_signed(&["localhost".into()]).unwrap().certificate_chain()[0].clone();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let r = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await;
    assert!(r.is_err(), "the handshake must fail against an untrusted certificate");
}

fn write_pair(dir: &std::path::Path, name: &str) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    // The key first, then the certificate: a reload between the two writes sees a
    // mismatched pair, which must be refused and retried.
    std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), made.cert.pem()).unwrap();
    made.cert.der().clone()
}

#[tokio::test]
async fn certificates_from_a_directory_are_reloaded_when_they_change() {
    let dir = std::env::temp_dir().join(format!("llmd-servingtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = write_pair(&dir, "first.llmd.test");
    let tls = ServingTls::from_dir(&dir).unwrap();
    assert_eq!(tls.certificate_chain()[0], first);
    let addr = serve(&tls).await;
    assert_eq!(check(channel(addr, first.clone(), "first.llmd.test").await).await, 1);
    let reload = tls.spawn_reload(Duration::from_millis(20)).unwrap();
    let second = write_pair(&dir, "second.llmd.test");
    // File times can be coarse: date the new pair ahead rather than wait a tick.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    for f in ["tls.crt", "tls.key"] {
        std::fs::File::options().write(true).open(dir.join(f)).unwrap().set_modified(later).unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tls.certificate_chain()[0] != second {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate was never loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(check(channel(addr, second, "second.llmd.test").await).await, 1);
    reload.abort();
    // Bad files are refused with their names.
    std::fs::write(dir.join("tls.crt"), "not a certificate").unwrap();
    let err = ServingTls::from_dir(&dir).unwrap_err().to_string();
    assert!(err.contains("tls.crt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
