//! The endpoint picker's gRPC health service (`grpc.health.v1.Health`), as llm-d's EPP
//! serves it on its health port (9003; `cmd/epp/runner/health.go`): `liveness` serves
//! from the start; readiness — the services `""`, `readiness`,
//! `envoy.service.ext_proc.v3.ExternalProcessor` and the chart's probe name
//! `inference-extension` — serves only while the picker is ready: its endpoints are
//! synced, it leads (or leader election is off), and it is not draining.

use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, health_reporter};

/// The service name liveness probes ask for.
pub const LIVENESS: &str = "liveness";
/// The service names readiness probes ask for (the chart's is `inference-extension`).
pub const READINESS: [&str; 4] =
    ["", "readiness", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"];

/// What readiness depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Endpoint discovery has synced at least once.
    pub synced: bool,
    /// This replica leads, or leader election is off.
    pub leading: bool,
    /// Shutting down: in-flight requests finish, new ones should go elsewhere.
    pub draining: bool,
}

impl Readiness {
    /// Whether readiness probes pass.
    pub fn ready(self) -> bool {
        self.synced && self.leading && !self.draining
    }
}

/// The health service and the handle that moves its readiness.
#[derive(Debug, Clone)]
pub struct GrpcHealth {
    reporter: HealthReporter,
    // Held across publishing, so two updates cannot publish out of order.
    state: std::sync::Arc<tokio::sync::Mutex<Readiness>>,
}

impl GrpcHealth {
    /// A service reporting live, and not ready until [`GrpcHealth::update`] says so; the
    /// server goes to `tonic`'s `Server::add_service`.
    pub async fn new()
    -> (Self, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
        let (reporter, server) = health_reporter();
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        let initial = Readiness { synced: false, leading: true, draining: false };
        let health = GrpcHealth { reporter, state: std::sync::Arc::new(tokio::sync::Mutex::new(initial)) };
        health.publish(initial).await;
        (health, server)
    }

    /// Changes what readiness depends on and publishes the result.
    pub async fn update(&self, f: impl FnOnce(&mut Readiness)) {
        let mut s = self.state.lock().await;
        f(&mut s);
        self.publish(*s).await;
    }

    /// The readiness inputs now.
    pub async fn readiness(&self) -> Readiness {
        *self.state.lock().await
    }

    async fn publish(&self, r: Readiness) {
        let status = if r.ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in READINESS {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_client::HealthClient;

    async fn status(c: &mut HealthClient<tonic::transport::Channel>, service: &str) -> Result<Wire, tonic::Code> {
        c.check(HealthCheckRequest { service: service.into() })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|s| s.code())
    }

    #[tokio::test]
    async fn liveness_serves_at_once_and_readiness_follows_sync_leadership_and_drain() {
        let (health, server) = GrpcHealth::new().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect(),
        )
        .await
        .expect("connect in time")
        .unwrap();
        let mut c = HealthClient::new(channel);
        // A peer that connects and never speaks holds nothing up.
        let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(status(&mut c, LIVENESS).await, Ok(Wire::Serving));
        for s in READINESS {
            assert_eq!(status(&mut c, s).await, Ok(Wire::NotServing), "{s:?} before the first sync");
        }
        health.update(|r| r.synced = true).await;
        for s in READINESS {
            assert_eq!(status(&mut c, s).await, Ok(Wire::Serving), "{s:?} once synced");
        }
        // A follower keeps its datastore warm but is not ready; liveness is untouched.
        health.update(|r| r.leading = false).await;
        assert_eq!(status(&mut c, "inference-extension").await, Ok(Wire::NotServing));
        assert_eq!(status(&mut c, LIVENESS).await, Ok(Wire::Serving));
        health.update(|r| r.leading = true).await;
        assert_eq!(status(&mut c, "readiness").await, Ok(Wire::Serving));
        health.update(|r| r.draining = true).await;
        assert_eq!(status(&mut c, "").await, Ok(Wire::NotServing));
        // A service nobody registered is unknown, as the gRPC health protocol says.
        assert_eq!(status(&mut c, "something-else").await, Err(tonic::Code::NotFound));
    }
}
