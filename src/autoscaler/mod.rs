//! The autoscaler acting on an in-process cluster (`llmd up --autoscale MIN:MAX`):
//! every interval it reads the picker's datastore (each replica's scraped
//! `vllm:` metrics), the picker's arrival count and flow-control queue, asks its
//! [`Policy`] through a [`Stabilizer`], and starts replicas or drains them. A drained
//! replica leaves the picker first and finishes what it holds: nothing accepted is lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use llmd_autoscale::{
    Decision, Load, ModelSnapshot, Policy, ReplicaMetrics, StabilizeConfig, Stabilizer, VariantState,
};
use llmd_scheduler::EndpointStatus;
use scrape::Windows;

use crate::cluster::{LocalCluster, Replica};

#[cfg(feature = "k8s")]
pub mod kube;
pub mod scrape;

/// Makes a new replica (the same model and settings as the others); run on a blocking
/// thread (it may load weights).
pub type ReplicaFactory = Arc<dyn Fn() -> anyhow::Result<Replica> + Send + Sync>;

/// The one variant a local cluster runs.
const VARIANT: &str = "local";

/// See the module docs.
pub struct LocalAutoscaler {
    cluster: Arc<LocalCluster>,
    factory: ReplicaFactory,
    policy: Box<dyn Policy>,
    stabilizer: Stabilizer,
    min: u32,
    max: u32,
    last: Option<(f64, u64)>,
    drains: Vec<tokio::task::JoinHandle<()>>,
    http: reqwest::Client,
    windows: Windows,
}

/// How long a replica's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for LocalAutoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAutoscaler")
            .field("policy", &self.policy.name())
            .field("min", &self.min)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl LocalAutoscaler {
    /// Scales `cluster` between `min` and `max` replicas. `min` 0 (scale to zero) needs
    /// the picker's flow control on: it holds requests while no replica runs, and the
    /// requests it holds bring one back.
    pub fn new(
        cluster: Arc<LocalCluster>,
        factory: ReplicaFactory,
        policy: Box<dyn Policy>,
        stabilize: StabilizeConfig,
        (min, max): (u32, u32),
    ) -> anyhow::Result<Self> {
        if min > max {
            anyhow::bail!("--autoscale {min}:{max}: expected MIN <= MAX");
        }
        let holds = cluster.picker.scheduler().config().flow_control.as_ref().is_some_and(|f| f.enabled);
        if min == 0 && !holds {
            anyhow::bail!(
                "--autoscale {min}:{max}: scaling to zero needs the picker's flow control, which holds requests \
                 while no replica runs"
            );
        }
        let http = reqwest::Client::builder().timeout(SCRAPE_TIMEOUT).build()?;
        Ok(LocalAutoscaler {
            cluster,
            factory,
            policy,
            stabilizer: Stabilizer::new(stabilize)?,
            min,
            max,
            last: None,
            drains: Vec::new(),
            http,
            windows: Windows::default(),
        })
    }

    /// What the policy sees at `now` (seconds on the caller's clock): each serving
    /// replica's `/metrics` read into a window (gauges, latency means), the picker's
    /// arrival count as the rate, its flow-control queue as held requests.
    pub async fn snapshot(&mut self, now: f64) -> ModelSnapshot {
        let running = self.cluster.replica_ids();
        let targets: Vec<(String, String)> = self.cluster.picker.datastore().with_endpoints(|all| {
            all.iter()
                .filter(|e| running.contains(&e.id) && e.status == EndpointStatus::Ready)
                .map(|e| (e.id.clone(), format!("http://{}/metrics", e.address)))
                .collect()
        });
        let mut readings = Vec::with_capacity(targets.len());
        for (id, url) in targets {
            match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.unwrap_or_default();
                    readings.push(self.windows.read(&id, VARIANT, &text, now));
                }
                Ok(r) => tracing::warn!(replica = %id, status = %r.status(), "reading metrics"),
                Err(e) => tracing::warn!(replica = %id, error = %e, "reading metrics"),
            }
        }
        self.windows.retain(&running);
        let mean = |pick: fn(&scrape::Reading) -> (f64, f64)| {
            let (sum, n) = readings.iter().map(pick).fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            if n > 0.0 { sum / n } else { 0.0 }
        };
        let (avg_input_tokens, avg_output_tokens) = (mean(|r| r.prompt), mean(|r| r.output));
        let replicas: Vec<ReplicaMetrics> = readings.into_iter().map(|r| r.metrics).collect();
        let arrived = self.cluster.picker.requests_arrived();
        let arrival_rate = match self.last {
            Some((t, n)) if now > t => arrived.saturating_sub(n) as f64 / (now - t),
            _ => 0.0,
        };
        self.last = Some((now, arrived));
        let current = running.len() as u32;
        let variant = VariantState {
            name: VARIANT.into(),
            cost: 1.0,
            current,
            // In-process replicas serve as soon as they are added.
            ready: current,
            min: self.min,
            max: self.max,
        };
        ModelSnapshot {
            model: String::new(),
            now,
            variants: vec![variant],
            replicas,
            load: Load {
                arrival_rate,
                avg_input_tokens,
                avg_output_tokens,
                queued: self.cluster.picker.flow_queued() as f64,
                ..Load::default()
            },
        }
    }

    /// One decision at `now` (seconds on the caller's clock), acted on: replicas
    /// started, or drained in the background (the least busy first).
    pub async fn tick(&mut self, now: f64) -> anyhow::Result<Decision> {
        let snapshot = self.snapshot(now).await;
        let decisions = self.policy.decide(&snapshot)?;
        let stabilized = self.stabilizer.apply_bounded(now, &decisions, &snapshot.variants);
        let Some(d) = stabilized.into_iter().next() else {
            anyhow::bail!("the policy decided nothing");
        };
        if d.desired != d.current {
            tracing::info!(
                policy = self.policy.name(),
                from = d.current,
                to = d.desired,
                reason = ?d.reason,
                arrival_rate = snapshot.load.arrival_rate,
                "scaling"
            );
        }
        for _ in d.current..d.desired {
            let make = self.factory.clone();
            let replica = tokio::task::spawn_blocking(move || make()).await??;
            self.cluster.add_replica(replica).await?;
        }
        if d.desired > d.current {
            // Read the new replicas now: the picker judges a replica it has never read as
            // saturated, and requests held for one would wait for its next scrape.
            self.cluster.picker.scrape_once().await;
        }
        if d.desired < d.current {
            let mut by_load: Vec<(f64, String)> =
                snapshot.replicas.iter().map(|r| (r.running + r.waiting, r.name.clone())).collect();
            by_load.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(&a.1)));
            for (_, id) in by_load.into_iter().take((d.current - d.desired) as usize) {
                let cluster = self.cluster.clone();
                self.drains.push(tokio::spawn(async move {
                    if let Err(e) = cluster.drain_replica(&id).await {
                        tracing::warn!(replica = %id, error = %e, "drain failed");
                    }
                }));
            }
        }
        self.drains.retain(|t| !t.is_finished());
        Ok(d)
    }

    /// Waits for the drains started so far.
    pub async fn drained(&mut self) {
        for t in self.drains.drain(..) {
            let _ = t.await;
        }
    }

    /// Decides every `interval` until `stop` resolves. Drains in flight go on: they are
    /// the cluster's tasks, which its shutdown waits for.
    pub async fn run(mut self, interval: Duration, stop: impl Future<Output = ()>) {
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => {
                    // The decision reads each replica's /metrics itself (snapshot).
                    if let Err(e) = self.tick(started.elapsed().as_secs_f64()).await {
                        tracing::warn!(error = %e, "autoscaling decision failed");
                    }
                }
            }
        }
    }
}
