//! Per-endpoint data sources: metrics scraping and KV-event subscription. Each runs as
//! a task the picker starts when the endpoint is added and aborts when it goes; the
//! tasks hold only a weak reference, so a dropped picker ends them too.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::EndpointPicker;
use crate::datalayer::{self, MULTICLUSTER_MAX_RESPONSE_BYTES, SourceData, SourceKind, TlsSettings};
use crate::discovery::METRICS_HOST_LABEL;

/// The client of a metrics source with TLS settings (`scheme: https`): verifies the
/// server against the `caCertPath` bundle only (as the router's root pool), or the
/// system roots without one, or nothing with `insecureSkipVerify`; presents the client
/// certificate when one is set. Errors name the parameter.
pub(super) fn tls_client(tls: &TlsSettings) -> Result<reqwest::Client, String> {
    // rustls picks its process-wide provider from its crate features, and panics when
    // a program links both of its providers (another dependency may bring `ring`):
    // this crate's TLS is aws-lc-rs, installed unless the program chose already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder();
    if tls.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    } else if let Some(pem) = tls.ca_pem()? {
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("parameter caCertPath: {e}"))?;
        b = b.tls_certs_only(certs);
    }
    if let Some(pem) = tls.identity_pem()? {
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("parameters clientCertPath and clientKeyPath: {e}"))?;
        b = b.identity(id);
    }
    b.build().map_err(|e| format!("TLS client: {e}"))
}

/// The URL a metrics source fetches for an endpoint: its metrics host (the
/// multicluster discovery's [`METRICS_HOST_LABEL`], else its address), at `port` when
/// the source overrides it, over https when the source has TLS settings.
pub(super) fn scrape_url(endpoint: &crate::endpoint::Endpoint, kind: &SourceKind) -> Option<String> {
    let SourceKind::Metrics { path, port, tls, .. } = kind else { return None };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = endpoint.labels.get(METRICS_HOST_LABEL).unwrap_or(&endpoint.address);
    Some(match port {
        // The host (`host:port` or `[v6]:port`) at another port.
        Some(p) => {
            let host = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            format!("{scheme}://{host}:{p}{path}")
        }
        None => format!("{scheme}://{host}{path}"),
    })
}

// A response body up to `cap` bytes; `None` past it (a broken or hostile peer cannot
// exhaust memory) or when the body fails.
async fn read_capped(mut r: reqwest::Response, cap: usize) -> Option<String> {
    if r.content_length().is_some_and(|n| n > cap as u64) {
        return None;
    }
    let mut buf = Vec::new();
    loop {
        match r.chunk().await {
            Ok(Some(c)) if buf.len() + c.len() <= cap => buf.extend_from_slice(&c),
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => return Some(String::from_utf8_lossy(&buf).into_owned()),
        }
    }
}

/// Fetches one endpoint's metrics for data source `source` and writes what its
/// extractors find into the datastore. Returns false when the endpoint is gone.
pub(super) async fn scrape_endpoint(picker: &EndpointPicker, source: usize, id: &str) -> bool {
    let Some(binding) = picker.scheduler.config().data_layer.sources.get(source) else { return false };
    let Some(endpoint) = picker.reader.get(id) else { return false };
    let Some(url) = scrape_url(&endpoint, &binding.kind) else { return false };
    let client = match picker.source_clients.get(source) {
        Some(Some(Ok(c))) => c,
        // Logged when the picker was built; an https source must not fall back to
        // the shared client (other roots, no client certificate).
        Some(Some(Err(_))) => return true,
        _ => &picker.client,
    };
    let res = client.get(&url).timeout(picker.cfg.scrape_timeout).send().await;
    let text = match res {
        Ok(r) if r.status().is_success() => read_capped(r, MULTICLUSTER_MAX_RESPONSE_BYTES).await,
        _ => None,
    };
    let Some(text) = text else {
        // Stale numbers expire on their own (housekeeping); nothing to write.
        tracing::debug!(endpoint = %id, source = %binding.name, "metrics scrape failed");
        return true;
    };
    let found = datalayer::extract_all(binding, &endpoint, SourceData::Metrics(&text));
    if let Some(m) = found.metrics {
        picker.writer.update_metrics(id, m);
    }
    for (k, v) in found.attributes {
        picker.writer.set_attribute(id, &k, v);
    }
    // An engine that advertises its KV-event stream need not be configured with it.
    if let Some(zmq) = found.kv_events
        && endpoint.kv_events.is_none()
    {
        let zmq = reachable(&zmq, &endpoint.address);
        tracing::info!(endpoint = %id, %zmq, "KV event stream learned from the endpoint's metrics");
        picker.writer.set_kv_events(id, Some(zmq));
    }
    true
}

/// An advertised `tcp://0.0.0.0:PORT` (an engine bound to every interface) is reached
/// at the host the endpoint itself is reached at.
pub(super) fn reachable(zmq: &str, address: &str) -> String {
    let Some(rest) = zmq.strip_prefix("tcp://") else { return zmq.to_string() };
    let Some((host, port)) = rest.rsplit_once(':') else { return zmq.to_string() };
    if !matches!(host, "0.0.0.0" | "*" | "[::]") {
        return zmq.to_string();
    }
    match address.rsplit_once(':') {
        Some((endpoint_host, _)) => format!("tcp://{endpoint_host}:{port}"),
        None => zmq.to_string(),
    }
}

/// Scrapes at the source's interval until aborted or the picker is gone.
pub(super) async fn scrape(picker: Weak<EndpointPicker>, source: usize, id: String) {
    let Some(interval) = picker.upgrade().map(|p| match p.scheduler.config().data_layer.sources.get(source) {
        Some(b) => match &b.kind {
            SourceKind::Metrics { interval: Some(i), .. } => *i,
            _ => p.cfg.scrape_interval,
        },
        None => p.cfg.scrape_interval,
    }) else {
        return;
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = picker.upgrade() else { return };
        if !scrape_endpoint(&p, source, &id).await {
            return;
        }
    }
}

/// Reads one endpoint's KV event stream into the plugins that consume events, until
/// aborted; reconnects after a failure.
pub(super) async fn subscribe(picker: Weak<EndpointPicker>, source: usize, endpoint: String, zmq: String) {
    let mut failures = 0u32;
    loop {
        // Gone with the picker or the endpoint.
        let Some(p) = picker.upgrade() else { return };
        if p.reader.get(&endpoint).is_none() {
            return;
        }
        drop(p);
        match read_events(&picker, source, &endpoint, &zmq).await {
            Ok(()) => return,
            Err(e) => {
                // A publisher that is not up yet: back off to 30 s, warn now and then.
                let wait = Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30));
                if failures.is_multiple_of(10) {
                    tracing::warn!(%endpoint, %zmq, error = %e, failures = failures + 1, ?wait, "KV event subscription failed; retrying");
                } else {
                    tracing::debug!(%endpoint, %zmq, error = %e, ?wait, "KV event subscription failed; retrying");
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The endpoint a global-socket message is from: the pod its topic names
/// (`kv@<pod>@<model>`, as llm-d has engines publish), matched to an endpoint's host,
/// id or name.
pub(super) fn topic_endpoint(topic: &[u8], endpoints: &[crate::endpoint::Endpoint]) -> Option<String> {
    let topic = std::str::from_utf8(topic).ok()?;
    let parts: Vec<&str> = topic.split('@').collect();
    let pod = if parts.len() == 3 { parts[1] } else { topic };
    endpoints
        .iter()
        .find(|e| {
            let host = e.address.rsplit_once(':').map_or(e.address.as_str(), |(h, _)| h);
            host == pod || e.id == pod || e.id.rsplit('/').next() == Some(pod)
        })
        .map(|e| e.id.clone())
}

/// Binds `zmq` and feeds the messages every engine publishes there to source
/// `source`'s consumers, attributed by topic, until the picker is gone.
pub(super) async fn subscribe_global(picker: Weak<EndpointPicker>, source: usize, zmq: String, topic: String) {
    use zeromq::{Socket, SocketRecv};
    let mut sock = zeromq::SubSocket::new();
    if let Err(e) = sock.bind(&zmq).await {
        tracing::error!(%zmq, error = %e, "cannot bind the KV event socket (kvEventsConfig.zmqEndpoint)");
        return;
    }
    if let Err(e) = sock.subscribe(&topic).await {
        tracing::error!(%zmq, error = %e, "cannot subscribe on the KV event socket");
        return;
    }
    tracing::info!(%zmq, %topic, "KV event socket bound: engines publish here");
    loop {
        let msg = match sock.recv().await {
            Ok(m) => m.into_vec(),
            Err(e) => {
                tracing::warn!(%zmq, error = %e, "KV event socket receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(p) = picker.upgrade() else { return };
        let Some(first) = msg.first() else { continue };
        match p.reader.with_endpoints(|all| topic_endpoint(first, all)) {
            Some(endpoint) => apply(&p, source, &endpoint, &msg),
            None => tracing::debug!(topic = %String::from_utf8_lossy(first), "KV events from no known endpoint"),
        }
    }
}

async fn read_events(picker: &Weak<EndpointPicker>, source: usize, endpoint: &str, zmq: &str) -> Result<(), String> {
    use zeromq::{Socket, SocketRecv};
    let mut sock = zeromq::SubSocket::new();
    tokio::time::timeout(Duration::from_secs(5), sock.connect(zmq))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    sock.subscribe("").await.map_err(|e| e.to_string())?;
    tracing::info!(%endpoint, %zmq, "subscribed to KV events");
    loop {
        // No timeout: an idle engine publishes nothing, and the task is aborted when
        // the endpoint goes away.
        let msg = sock.recv().await.map_err(|e| format!("stream ended: {e}"))?;
        let Some(p) = picker.upgrade() else { return Ok(()) };
        apply(&p, source, endpoint, &msg.into_vec());
    }
}

fn apply<F: AsRef<[u8]>>(p: &Arc<EndpointPicker>, source: usize, endpoint: &str, frames: &[F]) {
    let Some(binding) = p.scheduler.config().data_layer.sources.get(source) else { return };
    match llmd_kvcache::frames::decode_message(frames) {
        Ok((seq, batch)) => {
            for c in &binding.consumers {
                c.apply(endpoint, seq, &batch);
            }
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
            p.metrics.event_lag.observe((now - batch.ts).max(0.0));
        }
        Err(e) => tracing::warn!(%endpoint, error = %e, "undecodable KV event message"),
    }
}

/// Checks every endpoint's health path each `every` until the picker is gone: all at
/// once, each within the check timeout, so one hung endpoint delays no other.
pub(super) async fn health_checks(picker: Weak<EndpointPicker>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = picker.upgrade() else { return };
        let cfg = &p.cfg.health;
        let endpoints = p.reader.snapshot();
        let checks = endpoints.iter().map(|e| {
            let url = format!("http://{}{}", e.address, cfg.check_path);
            let req = p.client.get(url).timeout(cfg.check_timeout).send();
            async move { matches!(req.await, Ok(r) if r.status().is_success()) }
        });
        let results = futures_util::future::join_all(checks).await;
        for (e, ok) in endpoints.iter().zip(results) {
            match p.writer.record_check(&e.id, ok, cfg) {
                Some(true) => tracing::info!(endpoint = %e.id, "health check passes; endpoint back in picks"),
                Some(false) => {
                    tracing::warn!(endpoint = %e.id, path = %cfg.check_path, "health checks fail; endpoint out of picks")
                }
                None => {}
            }
        }
        for id in p.writer.readmit_due() {
            tracing::info!(endpoint = %id, "ejection over; endpoint back in picks");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn wildcard_event_hosts_become_the_endpoints_host() {
        assert_eq!(reachable("tcp://0.0.0.0:5557", "10.0.0.7:8000"), "tcp://10.0.0.7:5557");
        assert_eq!(reachable("tcp://[::]:5557", "[fd00::1]:8000"), "tcp://[fd00::1]:5557");
        assert_eq!(reachable("tcp://127.0.0.1:5557", "10.0.0.7:8000"), "tcp://127.0.0.1:5557");
        assert_eq!(reachable("ipc:///tmp/kv", "10.0.0.7:8000"), "ipc:///tmp/kv");
    }
}
