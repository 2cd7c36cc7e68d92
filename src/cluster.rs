//! Several engine replicas behind one gateway, in one process: what `llmd up` runs, and
//! what end-to-end tests start.

use std::net::SocketAddr;

use llmd_engine::server::{Server, ServerConfig};
use llmd_engine::{ChatTemplate, Engine, GenerationConfig};
use llmd_scheduler::gateway::{Gateway, GatewayConfig};
use llmd_scheduler::{Endpoint, Role, Scheduler, SchedulerConfig};

/// One replica to start: its engine and how to serve it.
pub struct Replica {
    /// The engine.
    pub engine: Engine,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Sampling defaults from the checkpoint.
    pub generation: GenerationConfig,
}

/// A running local cluster.
pub struct LocalCluster {
    /// The gateway's address.
    pub addr: SocketAddr,
    /// Each replica's address (`replica-0`, `replica-1`, …).
    pub replicas: Vec<SocketAddr>,
    stop: tokio::sync::broadcast::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("addr", &self.addr).field("replicas", &self.replicas).finish()
    }
}

impl LocalCluster {
    /// Starts every replica on a free loopback port and the gateway on `bind`.
    pub async fn start(
        replicas: Vec<Replica>,
        scheduler: SchedulerConfig,
        seed: u64,
        bind: &str,
    ) -> anyhow::Result<Self> {
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut endpoints = Vec::new();
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for (i, r) in replicas.into_iter().enumerate() {
            let server =
                Server::start(r.engine, r.template, ServerConfig { defaults: r.generation, ..Default::default() })
                    .await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            endpoints.push(Endpoint::new(format!("replica-{i}"), addr.to_string(), Role::Both));
            addrs.push(addr);
            let mut rx = stop.subscribe();
            tasks.push(tokio::spawn(async move {
                let _ = server
                    .serve(listener, async move {
                        let _ = rx.recv().await;
                    })
                    .await;
            }));
        }
        let gateway = Gateway::new(Scheduler::new(scheduler, seed), endpoints, GatewayConfig::default());
        gateway.scrape_once().await;
        let scraper = gateway.clone();
        let mut rx = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = scraper.scrape_loop() => {}
                _ = rx.recv() => {}
            }
        }));
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let router = gateway.router();
        let mut rx = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = rx.recv().await;
                })
                .await;
        }));
        Ok(LocalCluster { addr, replicas: addrs, stop, tasks })
    }

    /// Stops the gateway and every replica, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
