//! TLS for the gRPC listeners, as llm-d's EPP serves ext-proc (`--secure-serving`, on
//! by default there): a certificate from `--cert-path` (`tls.crt` and `tls.key`, the
//! names a Kubernetes TLS Secret mounts), reloaded when the files change
//! (`--enable-cert-reload`), or a self-signed one made at start-up, which is what
//! gateways configured for llm-d expect (they skip verification of the EPP).
//!
//! Handshakes run beside the accept loop, each cut after [`HANDSHAKE_TIMEOUT`], so a
//! client that connects and says nothing holds no one up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::error::SchedulerError;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_error(what: &str, reason: impl std::fmt::Display) -> SchedulerError {
    SchedulerError::Config { file: "--secure-serving".into(), what: what.into(), reason: reason.to_string() }
}

/// The certificate presented, swapped in place on reload.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A serving certificate and the rustls configuration built on it (ALPN `h2`, for gRPC).
#[derive(Clone)]
pub struct ServingTls {
    current: Arc<Current>,
    config: Arc<rustls::ServerConfig>,
    source: Option<PathBuf>,
}

impl std::fmt::Debug for ServingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingTls").field("source", &self.source).finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<CertifiedKey, SchedulerError> {
    let signing = provider().key_provider.load_private_key(key).map_err(|e| tls_error("the private key", e))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// `tls.crt` and `tls.key` under `dir`, read and checked.
fn load_dir(dir: &Path) -> Result<CertifiedKey, SchedulerError> {
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let read = |p: &Path| std::fs::read(p).map_err(|e| tls_error(&p.display().to_string(), e));
    let (crt_pem, key_pem) = (read(&crt)?, read(&key)?);
    let chain = CertificateDer::pem_slice_iter(&crt_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&crt.display().to_string(), e))?;
    if chain.is_empty() {
        return Err(tls_error(&crt.display().to_string(), "no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| tls_error(&key.display().to_string(), e))?;
    certified(chain, key_der)
}

impl ServingTls {
    fn with(key: CertifiedKey, source: Option<PathBuf>) -> Result<Self, SchedulerError> {
        let current = Arc::new(Current(RwLock::new(Arc::new(key))));
        let config = Self::config(&current, rustls::DEFAULT_VERSIONS)?;
        Ok(ServingTls { current, config, source })
    }

    fn config(
        current: &Arc<Current>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<rustls::ServerConfig>, SchedulerError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| tls_error("protocol versions", e))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// Refuses clients below TLS 1.3 (`--tls-min-version VersionTLS13`; TLS 1.2 and 1.3
    /// are accepted otherwise).
    pub fn tls13_only(mut self) -> Result<Self, SchedulerError> {
        self.config = Self::config(&self.current, &[&rustls::version::TLS13])?;
        Ok(self)
    }

    /// A self-signed certificate for `names` (DNS names or IPs), made now.
    pub fn self_signed(names: &[String]) -> Result<Self, SchedulerError> {
        let made =
            rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| tls_error("self-signed certificate", e))?;
        let key =
            PrivateKeyDer::try_from(made.signing_key.serialize_der()).map_err(|e| tls_error("self-signed key", e))?;
        Self::with(certified(vec![made.cert.der().clone()], key)?, None)
    }

    /// `tls.crt` (the chain) and `tls.key` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, SchedulerError> {
        Self::with(load_dir(dir)?, Some(dir.to_path_buf()))
    }

    /// The certificate presented now (leaf first).
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.0.read().unwrap_or_else(|p| p.into_inner()).cert.clone()
    }

    /// Looks at the files every `every` and swaps the certificate in when they change;
    /// a bad pair (half-written, mismatched) is reported and the old one kept. Returns
    /// `None` for a self-signed certificate (no files).
    pub fn spawn_reload(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let dir = self.source.clone()?;
        let current = self.current.clone();
        let stamp = |dir: &Path| -> Option<(SystemTime, SystemTime)> {
            let m = |f: &str| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok();
            Some((m("tls.crt")?, m("tls.key")?))
        };
        // Stamped now, not when the task first runs: files changed in between count.
        let mut seen = stamp(&dir);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = stamp(&dir);
                if now == seen {
                    continue;
                }
                match load_dir(&dir) {
                    Ok(key) => {
                        *current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
                        seen = now;
                        tracing::info!(dir = %dir.display(), "serving certificate reloaded");
                    }
                    // Retried at the next tick: the other file may still be on its way.
                    Err(e) => tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one"),
                }
            }
        }))
    }

    /// Accepted connections on `listener`, TLS handshakes done, as a stream tonic
    /// serves (`serve_with_incoming*`). A failed or slow handshake drops that
    /// connection only.
    pub fn incoming(&self, listener: TcpListener) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + use<> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<TlsStream<TcpStream>>>(64);
        tokio::spawn(async move {
            loop {
                // Stop accepting (and free the port) once the server drops the stream.
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tx.closed() => return,
                };
                let (sock, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors, say: wait a little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // gRPC's small frames should not wait on Nagle (Go's servers set it too).
                let _ = sock.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }
}
