//! Several engine replicas behind one gateway, in one process: what `llmd up` runs, and
//! what end-to-end tests start.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use llmd_engine::server::{KvEventsConfig, KvTransferConfig, Server, ServerConfig};
use llmd_engine::{ChatTemplate, Engine, GenerationConfig, PromptRenderer};
use llmd_scheduler::gateway::{Gateway, GatewayConfig};
use llmd_scheduler::picker::{EndpointPicker, PickerConfig, PromptTokenizer};
use llmd_scheduler::{Endpoint, Role, Scheduler, SchedulerConfig, StaticDiscovery, SystemClock, datastore};

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
    /// Each replica's address at start (`replica-0`, `replica-1`, …): a decode replica's
    /// sidecar under P/D. [`add_replica`](Self::add_replica) and
    /// [`drain_replica`](Self::drain_replica) change the running set.
    pub replicas: Vec<SocketAddr>,
    /// Each replica at start as an endpoint (id, address, KV-event stream).
    pub endpoints: Vec<Endpoint>,
    /// The picker core behind the gateway (its datastore takes endpoints at run time).
    pub picker: Arc<EndpointPicker>,
    /// The gateway (drain and cut its streams through it).
    pub gateway: Arc<Gateway>,
    stop: tokio::sync::broadcast::Sender<()>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    // Each engine server: its own stop, so one can be drained alone.
    servers: std::sync::Mutex<Vec<ServerSlot>>,
    next_index: std::sync::atomic::AtomicUsize,
    pd: bool,
}

/// How long a draining replica waits for requests already sent to it to arrive before
/// its server stops listening.
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// One engine server of the cluster.
struct ServerSlot {
    id: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A replica's server, stopped by the cluster's stop or its own.
struct Started {
    server: Server,
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    kv_events: Option<String>,
}

impl Started {
    /// Starts serving; the returned slot stops this server alone.
    fn spawn(self, id: String, cluster_stop: &tokio::sync::broadcast::Sender<()>) -> ServerSlot {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let all = until_stopped(cluster_stop);
        let Started { server, listener, .. } = self;
        let task = tokio::spawn(async move {
            let stopped = async move {
                tokio::select! {
                    () = all => {}
                    _ = rx => {}
                }
            };
            let _ = server.serve(listener, stopped).await;
        });
        ServerSlot { id, stop: Some(tx), task: Some(task) }
    }
}

/// Starts replica `r`'s engine server on a free loopback port (not yet serving).
async fn start_server(r: Replica, index: usize, kv_transfer: Option<KvTransferConfig>) -> anyhow::Result<Started> {
    let events = KvEventsConfig { endpoint: "tcp://127.0.0.1:0".into(), topic: format!("replica-{index}") };
    let server = Server::start(
        r.engine,
        r.template,
        ServerConfig { defaults: r.generation, kv_events: Some(events), kv_transfer, ..Default::default() },
    )
    .await?;
    let kv_events = server.kv_events_endpoint().map(String::from);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok(Started { server, addr, listener, kv_events })
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster").field("addr", &self.addr).field("replicas", &self.replicas).finish()
    }
}

/// Resolves when the cluster is told to stop.
fn until_stopped(stop: &tokio::sync::broadcast::Sender<()>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.recv().await;
    }
}

/// How a [`LocalCluster`] is set up beyond its replicas and routing.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Register the replicas with the picker (otherwise a discovery source of the
    /// caller's adds them).
    pub register: bool,
    /// The gateway's timeouts, retries and API key.
    pub gateway: GatewayConfig,
    /// The picker's scraping and health settings.
    pub picker: PickerConfig,
    /// Prefill/decode disaggregation: the first this many replicas prefill, the others
    /// decode, each behind its own routing sidecar (`llmd sidecar`), and every engine
    /// moves KV blocks (NixlConnector's `kv_transfer_params`). `None`: every replica
    /// does both.
    pub pd_prefill: Option<usize>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            register: true,
            gateway: GatewayConfig::default(),
            picker: PickerConfig::default(),
            pd_prefill: None,
        }
    }
}

/// The routing `llmd up --pd` uses: llm-d's P/D guide's (every request disaggregated by
/// `always-disagg-pd-decider`; the prefill profile weighs prefix affinity and prompt
/// tokens in flight, the decode profile requests in flight), on llm-d's role labels.
pub const PD_ROUTING: &str = "
plugins:
- type: approx-prefix-cache-producer
- type: prefix-cache-scorer
- type: token-load-scorer
- type: active-request-scorer
- type: prefill-filter
- type: decode-filter
- type: max-score-picker
  parameters:
    tieBreak: least-recent
- type: always-disagg-pd-decider
- type: disagg-profile-handler
  parameters:
    deciders:
      prefill: always-disagg-pd-decider
schedulingProfiles:
- name: prefill
  plugins:
  - pluginRef: prefill-filter
  - pluginRef: prefix-cache-scorer
    weight: 2
  - pluginRef: token-load-scorer
  - pluginRef: max-score-picker
- name: decode
  plugins:
  - pluginRef: decode-filter
  - pluginRef: active-request-scorer
  - pluginRef: max-score-picker
";

impl LocalCluster {
    /// Starts every replica on a free loopback port and the gateway on `bind`.
    pub async fn start(
        replicas: Vec<Replica>,
        scheduler: SchedulerConfig,
        seed: u64,
        bind: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(replicas, scheduler, seed, bind, true, GatewayConfig::default()).await
    }

    /// [`start`](Self::start) with the gateway's settings, registering the replicas with
    /// the gateway only when `register` (otherwise a discovery source of the caller's
    /// adds them).
    pub async fn start_with(
        replicas: Vec<Replica>,
        scheduler: SchedulerConfig,
        seed: u64,
        bind: &str,
        register: bool,
        gateway: GatewayConfig,
    ) -> anyhow::Result<Self> {
        let opts = ClusterOptions { register, gateway, ..ClusterOptions::default() };
        Self::start_opts(replicas, scheduler, seed, bind, opts).await
    }

    /// [`start`](Self::start) with every setting.
    pub async fn start_opts(
        replicas: Vec<Replica>,
        scheduler: SchedulerConfig,
        seed: u64,
        bind: &str,
        opts: ClusterOptions,
    ) -> anyhow::Result<Self> {
        let ClusterOptions { register, gateway, picker: picker_cfg, pd_prefill } = opts;
        if let Some(p) = pd_prefill
            && (p == 0 || p >= replicas.len())
        {
            anyhow::bail!("P/D needs at least one prefill and one decode replica ({p} prefill of {})", replicas.len());
        }
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut endpoints = Vec::new();
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        let mut servers = Vec::new();
        let mut tokenizer = None;
        let count = replicas.len();
        for (i, r) in replicas.into_iter().enumerate() {
            if tokenizer.is_none() {
                // Tokenized exactly as the engines will: the same tokenizer and template.
                // (cached by text prefix: the gateway tokenizes for routing only)
                let cached = llmd_scheduler::tokencache::PrefixCachedTokenizer::new(r.engine.tokenizer());
                let t: Arc<dyn PromptTokenizer> =
                    Arc::new(PromptRenderer { tokenizer: Arc::new(cached), template: r.template.clone() });
                tokenizer = Some(t);
            }
            let role = match pd_prefill {
                None => Role::Both,
                Some(p) if i < p => Role::Prefill,
                Some(_) => Role::Decode,
            };
            let kv_transfer = pd_prefill.map(|_| KvTransferConfig {
                engine_id: format!("replica-{i}"),
                side_channel_host: "127.0.0.1".into(),
                side_channel_port: 0,
                // Every replica runs here: blocks move through shared memory, in place.
                same_host_shm: true,
                ..Default::default()
            });
            let started = start_server(r, i, kv_transfer).await?;
            let (addr, kv_events) = (started.addr, started.kv_events.clone());
            servers.push(started.spawn(format!("replica-{i}"), &stop));
            // A decode engine is reached through its sidecar, which runs the prefill leg.
            let target = if role == Role::Decode {
                let sidecar = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let at = sidecar.local_addr()?;
                let cfg = llmd_transfer::sidecar::SidecarConfig::new(format!("http://{addr}"));
                let stopped = until_stopped(&stop);
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = llmd_transfer::sidecar::serve(sidecar, cfg, stopped).await {
                        tracing::error!(error = %e, "sidecar stopped");
                    }
                }));
                at
            } else {
                addr
            };
            let mut ep = Endpoint::new(format!("replica-{i}"), target.to_string(), role);
            ep.kv_events = kv_events;
            endpoints.push(ep);
            addrs.push(target);
        }
        let store = datastore(Arc::new(SystemClock::default()));
        let picker = EndpointPicker::new(Scheduler::new(scheduler, seed), store, picker_cfg, tokenizer);
        if register {
            picker.run_discovery(Box::new(StaticDiscovery::new(endpoints.clone())))?;
        }
        picker.start();
        picker.scrape_once().await;
        let gateway = Gateway::new(picker.clone(), gateway);
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let stopped = until_stopped(&stop);
        let served = gateway.clone();
        tasks.push(tokio::spawn(async move {
            let _ = served.serve(listener, stopped).await;
        }));
        Ok(LocalCluster {
            addr,
            replicas: addrs,
            endpoints,
            picker,
            gateway,
            stop,
            tasks: std::sync::Mutex::new(tasks),
            servers: std::sync::Mutex::new(servers),
            next_index: std::sync::atomic::AtomicUsize::new(count),
            pd: pd_prefill.is_some(),
        })
    }

    /// Starts one more replica and adds it to the picker's datastore; returns its
    /// endpoint (`replica-N`, N counting on from the replicas started before). Not
    /// under P/D (each decode replica has its sidecar, each prefill its role).
    pub async fn add_replica(&self, r: Replica) -> anyhow::Result<Endpoint> {
        if self.pd {
            anyhow::bail!("replicas cannot be added to a P/D cluster");
        }
        let i = self.next_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = start_server(r, i, None).await?;
        let id = format!("replica-{i}");
        let mut ep = Endpoint::new(id.clone(), started.addr.to_string(), Role::Both);
        ep.kv_events = started.kv_events.clone();
        let slot = started.spawn(id, &self.stop);
        self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(slot);
        self.picker.writer().upsert(ep.clone());
        tracing::info!(endpoint = %ep.id, address = %ep.address, "replica added");
        Ok(ep)
    }

    /// Drains replica `id`: the picker stops sending it requests, those already sent
    /// to it reach it (up to [`DRAIN_GRACE`]), its server finishes what it holds (the
    /// engine's drain), then it leaves the datastore. Nothing accepted is lost: the
    /// drain is one of the cluster's tasks, which [`shutdown`](Self::shutdown) waits for.
    pub async fn drain_replica(&self, id: &str) -> anyhow::Result<()> {
        let (stop, task) = {
            let mut servers = self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let i =
                servers.iter().position(|s| s.id == id).ok_or_else(|| anyhow::anyhow!("no running replica {id}"))?;
            let slot = servers.remove(i);
            (slot.stop, slot.task)
        };
        self.picker.writer().set_status(id, llmd_scheduler::EndpointStatus::Draining);
        // Requests picked just before have yet to connect: let them, before the server
        // stops listening.
        let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
        while self.picker.datastore().get(id).is_some_and(|e| e.inflight.requests > 0)
            && tokio::time::Instant::now() < deadline
        {
            let held = self.picker.datastore().get(id).map_or(0, |e| e.inflight.requests);
            tracing::debug!(endpoint = %id, held, "waiting for requests sent to a draining replica");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let picker = self.picker.clone();
        let gone = id.to_string();
        let t = tokio::spawn(async move {
            if let Some(task) = task {
                let _ = task.await;
            }
            picker.writer().remove(&gone);
            tracing::info!(endpoint = %gone, "replica drained");
            let _ = done.send(());
        });
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(t);
        let _ = finished.await;
        Ok(())
    }

    /// The replicas serving now (started and not drained), by id.
    pub fn replica_ids(&self) -> Vec<String> {
        self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|s| s.id.clone()).collect()
    }

    /// Stops the gateway and every replica (requests in flight finish), and waits for
    /// them. [`Gateway::cut_streams`] ends the streams still running when waiting
    /// longer is not an option.
    pub async fn shutdown(&self) {
        self.gateway.begin_drain();
        let _ = self.stop.send(());
        // Scrapers and KV subscribers would otherwise reconnect to the stopped replicas.
        self.picker.shutdown();
        let servers = std::mem::take(&mut *self.servers.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for t in servers.into_iter().filter_map(|s| s.task).chain(tasks) {
            let _ = t.await;
        }
    }
}

impl Replica {
    /// A simulated replica (latency model on the system clock, byte tokenizer).
    pub fn simulated(name: &str, latency: llmd_engine::LatencyModel, num_blocks: usize) -> anyhow::Result<Self> {
        Self::simulated_with(name, latency, num_blocks, None)
    }

    /// A simulated replica with KV offloading.
    pub fn simulated_with(
        name: &str,
        latency: llmd_engine::LatencyModel,
        num_blocks: usize,
        offload: Option<llmd_engine::offload::OffloadConfig>,
    ) -> anyhow::Result<Self> {
        let mut b = llmd_engine::EngineBuilder::sim(latency)
            .served_model_name(name)
            .num_blocks(num_blocks)
            .max_model_len(8192)
            .seed(1);
        if let Some(o) = offload {
            b = b.offload(o);
        }
        let built = b.build()?;
        Ok(Replica { engine: built.engine, template: built.template, generation: built.generation })
    }

    /// A replica of the built-in model on the CPU.
    pub fn builtin(num_blocks: usize) -> anyhow::Result<Self> {
        Self::builtin_with(num_blocks, None)
    }

    /// A replica of the built-in model on the CPU with KV offloading.
    pub fn builtin_with(
        num_blocks: usize,
        offload: Option<llmd_engine::offload::OffloadConfig>,
    ) -> anyhow::Result<Self> {
        let mut b = llmd_engine::EngineBuilder::builtin().num_blocks(num_blocks).max_model_len(4096);
        if let Some(o) = offload {
            b = b.offload(o);
        }
        let built = b.build()?;
        Ok(Replica { engine: built.engine, template: built.template, generation: built.generation })
    }
}
