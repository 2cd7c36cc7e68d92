//! Prefill/decode disaggregation in the server: the roles vLLM's NixlConnector gives an
//! engine, driven by the request's `kv_transfer_params` (`llmd-transfer`'s
//! [`KvTransferParams`]).
//!
//! - **Prefill** (`do_remote_decode: true`, non-streaming): the request runs as usual
//!   (llm-d's sidecar caps it at one token); when it ends length-capped its prompt's
//!   full blocks are copied out and held under its request id, and the response carries
//!   the params naming them (block ids, engine id, request id, side-channel host and
//!   port), as vLLM's. The engine's own blocks go back to its pool at once (cached,
//!   evictable): a slow decoder pins a bounded host copy, never the prefiller's KV pool.
//! - **Decode** (`do_remote_prefill: true` with the fields a pull needs): the blocks this
//!   engine lacks are pulled from the prefiller's side channel (over TCP, several
//!   streams, or through shared memory from a prefiller on this host; the blocks it has
//!   cached are skipped, and a pull of nothing still ends the prefiller's hold), then the request is queued with them and writes them in at
//!   admission. A pull or write that fails is recomputed here (our default
//!   `kv_load_failure_policy`) or fails the request (`fail`, vLLM's default).
//!
//! Held copies end when pulled, when their lease runs out (vLLM's `kv_lease_duration`,
//! on the engine's clock) or at shutdown, within a memory bound. Metrics are `llmd:kv_transfer_*`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmd_kvcache::RequestKeys;
use llmd_transfer::hold::{HoldConfig, HoldTable};
use llmd_transfer::layout::KvLayout;
use llmd_transfer::params::KvTransferParams;
use llmd_transfer::shm::{ShmArena, ShmMaps};
use llmd_transfer::tcp::{BlockSource, HeldBlocks, ServeOptions, TcpPuller};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};

use crate::engine::{KvLoadFailurePolicy, KvTransfer, KvTransferOutcome, RemoteBlocks};
use crate::error::{EngineError, Result};
use crate::handle::EngineHandle;
use crate::kv::KvBlockLayout;

/// How this engine takes part in prefill/decode disaggregation: vLLM's
/// `--kv-transfer-config` plus the side channel it serves held blocks on
/// (vLLM's `VLLM_NIXL_SIDE_CHANNEL_HOST` / `_PORT`).
#[derive(Debug, Clone, PartialEq)]
pub struct KvTransferConfig {
    /// `kv_connector`: `NixlConnector` (the name llm-d's configs use; llmd speaks its
    /// `kv_transfer_params`, over its own transport).
    pub connector: String,
    /// `engine_id` (default: a fresh random id, as vLLM's).
    pub engine_id: String,
    /// `kv_role` as given (NIXL ignores it; every engine can both prefill and decode).
    pub role: String,
    /// What a decode does when the remote KV cannot be had.
    pub load_failure_policy: KvLoadFailurePolicy,
    /// Address the side channel binds and advertises in prefill answers.
    pub side_channel_host: String,
    /// Its port (0: any free port; the bound one is advertised).
    pub side_channel_port: u16,
    /// How long a held copy waits for its pull (`kv_connector_extra_config.kv_lease_duration`).
    pub lease: Duration,
    /// The most bytes held at once (`kv_connector_extra_config.max_held_bytes`); a prefill
    /// past it answers without params, and its decode recomputes.
    pub max_held_bytes: usize,
    /// Connections per pull (`kv_connector_extra_config.streams`).
    pub streams: usize,
    /// Move blocks between engines on this host through shared memory
    /// (`kv_connector_extra_config.same_host`: `shm`, or `tcp`, the default). A prefill
    /// engine holds its blocks in a shared-memory arena (a sealed `memfd` of
    /// `max_held_bytes`, taken as used); a decode engine maps it and reads the blocks in
    /// place, no socket carrying them. Linux only; either side without it falls back to
    /// TCP. Opt-in: the arena's pages, once used, stay allocated for reuse.
    pub same_host_shm: bool,
    /// The longest any connect, read or write of a transfer may take
    /// (`kv_connector_extra_config.io_timeout`, seconds).
    pub io_timeout: Duration,
}

impl Default for KvTransferConfig {
    fn default() -> Self {
        KvTransferConfig {
            connector: "NixlConnector".into(),
            engine_id: random_engine_id(),
            role: "kv_both".into(),
            load_failure_policy: KvLoadFailurePolicy::Recompute,
            side_channel_host: "127.0.0.1".into(),
            side_channel_port: 5600,
            lease: Duration::from_secs(30),
            max_held_bytes: 1 << 30,
            streams: 4,
            same_host_shm: false,
            io_timeout: Duration::from_secs(30),
        }
    }
}

fn random_engine_id() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mixed = t ^ (u128::from(std::process::id()) << 64);
    // A 128-bit id in uuid4's text form (vLLM's engine ids are uuid4 strings).
    let h = format!("{:032x}", mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The top-level keys of vLLM's `KVTransferConfig`.
const VLLM_KEYS: &[&str] = &[
    "kv_connector",
    "engine_id",
    "kv_buffer_device",
    "kv_buffer_size",
    "kv_role",
    "kv_rank",
    "kv_parallel_size",
    "kv_ip",
    "kv_port",
    "kv_connector_extra_config",
    "kv_connector_module_path",
    "enable_permute_local_kv",
    "kv_load_failure_policy",
];

fn bad(field: &str, message: impl std::fmt::Display) -> EngineError {
    EngineError::config("kv-transfer-config", field, message.to_string())
}

impl KvTransferConfig {
    /// Reads vLLM's `--kv-transfer-config` JSON, e.g.
    /// `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`. Keys vLLM knows but llmd
    /// does not use (`kv_buffer_device`, …) are accepted; unknown keys and other
    /// connectors are refused by name. The side channel keeps its defaults.
    pub fn from_vllm_json(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).map_err(|e| bad("(json)", format!("not JSON: {e}")))?;
        let Value::Object(m) = v else {
            return Err(bad("(json)", "expected a JSON object"));
        };
        if let Some(k) = m.keys().find(|k| !VLLM_KEYS.contains(&k.as_str())) {
            return Err(bad(k, format!("unknown key (vLLM's keys: {})", VLLM_KEYS.join(", "))));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match m.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(k, format!("expected a string, got {other}"))),
            }
        };
        let mut cfg = KvTransferConfig::default();
        let connector = text("kv_connector")?.ok_or_else(|| bad("kv_connector", "missing (use NixlConnector)"))?;
        if connector != "NixlConnector" {
            return Err(bad(
                "kv_connector",
                format!("{connector:?} is not supported; llmd engines speak NixlConnector's kv_transfer_params"),
            ));
        }
        cfg.connector = connector;
        if let Some(role) = text("kv_role")? {
            if !["kv_both", "kv_producer", "kv_consumer"].contains(&role.as_str()) {
                return Err(bad("kv_role", format!("{role:?} (kv_both, kv_producer, kv_consumer)")));
            }
            cfg.role = role;
        }
        if let Some(id) = text("engine_id")? {
            cfg.engine_id = id;
        }
        if let Some(p) = text("kv_load_failure_policy")? {
            cfg.load_failure_policy = p.parse().map_err(|e| bad("kv_load_failure_policy", e))?;
        }
        match m.get("kv_connector_extra_config") {
            None | Some(Value::Null) => {}
            Some(Value::Object(extra)) => cfg.read_extra(extra)?,
            Some(other) => return Err(bad("kv_connector_extra_config", format!("expected an object, got {other}"))),
        }
        Ok(cfg)
    }

    fn read_extra(&mut self, extra: &Map<String, Value>) -> Result<()> {
        let secs = |k: &str| -> Result<Option<Duration>> {
            match extra.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .map(Some)
                    .ok_or_else(|| {
                        bad(
                            &format!("kv_connector_extra_config.{k}"),
                            format!("{v} is not a positive number of seconds"),
                        )
                    }),
            }
        };
        let count = |k: &str| -> Result<Option<usize>> {
            match extra.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    v.as_u64().and_then(|n| usize::try_from(n).ok()).filter(|&n| n > 0).map(Some).ok_or_else(|| {
                        bad(&format!("kv_connector_extra_config.{k}"), format!("{v} is not a positive integer"))
                    })
                }
            }
        };
        if let Some(d) = secs("kv_lease_duration")? {
            self.lease = d;
        }
        if let Some(d) = secs("io_timeout")? {
            self.io_timeout = d;
        }
        if let Some(n) = count("max_held_bytes")? {
            self.max_held_bytes = n;
        }
        match extra.get("same_host") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v == "shm" => self.same_host_shm = true,
            Some(Value::String(v)) if v == "tcp" => self.same_host_shm = false,
            Some(v) => return Err(bad("kv_connector_extra_config.same_host", format!("{v} (shm or tcp)"))),
        }
        if let Some(n) = count("streams")? {
            if n > 64 {
                return Err(bad("kv_connector_extra_config.streams", format!("{n} (at most 64)")));
            }
            self.streams = n;
        }
        // Other keys (NIXL's `backends`, …) are the connector's business: ignored.
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// `llmd:kv_transfer_*`.
struct PdMetrics {
    held: Gauge,
    held_bytes: Gauge,
    holds_ended: Family<OutcomeLabel, Counter>,
    served_bytes: Counter,
    pulls: Family<OutcomeLabel, Counter>,
    pulled_bytes: Counter,
    in_place_bytes: Counter,
    pull_seconds: Histogram,
    loads: Family<OutcomeLabel, Counter>,
}

impl PdMetrics {
    fn new() -> Self {
        PdMetrics {
            held: Gauge::default(),
            held_bytes: Gauge::default(),
            holds_ended: Family::default(),
            served_bytes: Counter::default(),
            pulls: Family::default(),
            pulled_bytes: Counter::default(),
            in_place_bytes: Counter::default(),
            pull_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            loads: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register("llmd:kv_transfer_holds", "Prefills whose blocks are held for a decode's pull", self.held.clone());
        r.register("llmd:kv_transfer_held_bytes", "Bytes of blocks held for pulls", self.held_bytes.clone());
        r.register(
            "llmd:kv_transfer_holds_ended",
            "Holds ended, by how (pulled, expired, refused at the memory bound)",
            self.holds_ended.clone(),
        );
        r.register("llmd:kv_transfer_served_bytes", "Bytes of held blocks handed to pulls", self.served_bytes.clone());
        r.register("llmd:kv_transfer_pulls", "Pulls of remote blocks, by outcome", self.pulls.clone());
        r.register("llmd:kv_transfer_pulled_bytes", "Bytes of remote blocks pulled", self.pulled_bytes.clone());
        r.register(
            "llmd:kv_transfer_pulled_in_place_bytes",
            "Bytes of remote blocks read in place from a same-host prefiller's shared memory",
            self.in_place_bytes.clone(),
        );
        r.register("llmd:kv_transfer_pull_seconds", "Time to pull a prefill's blocks", self.pull_seconds.clone());
        r.register(
            "llmd:kv_transfer_loads",
            "Decodes of remote prefills, by outcome (imported, recomputed, failed)",
            self.loads.clone(),
        );
    }

    fn ended(&self, outcome: &'static str, n: usize) {
        self.holds_ended.get_or_create(&OutcomeLabel { outcome }).inc_by(n as u64);
    }
}

/// The held copies, served to pulls.
struct Holds {
    table: Mutex<HoldTable<HeldBlocks>>,
    metrics: Arc<PdMetrics>,
}

impl Holds {
    fn with<T>(&self, f: impl FnOnce(&mut HoldTable<HeldBlocks>) -> T) -> T {
        let mut t = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f(&mut t);
        self.metrics.held.set(t.len() as i64);
        self.metrics.held_bytes.set(i64::try_from(t.held_bytes()).unwrap_or(i64::MAX));
        out
    }
}

impl BlockSource for Holds {
    fn take(&self, request: &str) -> llmd_transfer::Result<HeldBlocks> {
        let held = self.with(|t| t.take(request))?;
        self.metrics.ended("pulled", 1);
        self.metrics.served_bytes.inc_by(held.blocks.iter().map(|b| b.len() as u64).sum());
        Ok(held)
    }
}

/// The wire layout of an engine's blocks.
pub(crate) fn wire_layout(model: &str, l: &KvBlockLayout) -> KvLayout {
    KvLayout {
        model: model.to_string(),
        dtype: l.dtype.to_string(),
        block_size: l.block_size,
        num_layers: l.num_layers,
        kv_heads: l.kv_heads,
        head_dim: l.head_dim,
        layout: "NHD".into(),
    }
}

/// A server's P/D state.
pub(crate) struct Pd {
    cfg: KvTransferConfig,
    /// `host:port` the side channel is bound to (advertised in prefill answers).
    advertised: (String, u16),
    holds: Arc<Holds>,
    puller: TcpPuller,
    /// The prefill side's shared-memory arena, when the same-host path is on.
    arena: Option<ShmArena>,
    /// The decode side's mappings of prefill engines' arenas, when it is on.
    maps: Option<ShmMaps>,
    /// This engine's block layout and its compatibility hash.
    layout: Option<(KvBlockLayout, [u8; 32])>,
    block_size: usize,
    transfer_per_token: Option<Duration>,
    metrics: Arc<PdMetrics>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Pd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pd").field("engine_id", &self.cfg.engine_id).field("side_channel", &self.advertised).finish()
    }
}

/// Why a decode's remote KV cannot be had, for its policy.
pub(crate) struct LoadFailed(pub(crate) String);

impl Pd {
    /// Binds the side channel and starts serving held blocks, and the lease sweeper.
    pub(crate) async fn start(cfg: KvTransferConfig, engine: &EngineHandle) -> Result<Self> {
        let bind = if cfg.side_channel_host.contains(':') && !cfg.side_channel_host.starts_with('[') {
            format!("[{}]:{}", cfg.side_channel_host, cfg.side_channel_port)
        } else {
            format!("{}:{}", cfg.side_channel_host, cfg.side_channel_port)
        };
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| EngineError::KvTransfer(format!("binding the KV side channel on {bind}: {e}")))?;
        let port = listener.local_addr().map_err(|e| EngineError::KvTransfer(e.to_string()))?.port();
        let metrics = Arc::new(PdMetrics::new());
        let hold_cfg = HoldConfig { lease: cfg.lease, max_bytes: cfg.max_held_bytes };
        let holds =
            Arc::new(Holds { table: Mutex::new(HoldTable::new(hold_cfg, engine.clock())), metrics: metrics.clone() });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let model = engine.config().model_name.clone();
        let layout = engine.kv_block_layout().map(|l| (l, wire_layout(&model, &l).compatibility_hash()));
        if layout.is_none() {
            tracing::warn!("this engine's backend cannot move KV blocks: it will prefill and decode on its own");
        }
        // The simulator's blocks have no bytes: nothing to share.
        let block_bytes = layout.map_or(0, |(l, _)| l.block_bytes());
        let arena = if cfg.same_host_shm && block_bytes > 0 {
            match ShmArena::new(block_bytes, (cfg.max_held_bytes / block_bytes).max(1)) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, "no shared-memory arena: same-host pulls of this engine's blocks go over TCP");
                    None
                }
            }
        } else {
            None
        };
        let opts = ServeOptions { io_timeout: cfg.io_timeout, shm: arena.clone(), ..ServeOptions::default() };
        let source: Arc<dyn BlockSource> = holds.clone();
        tokio::spawn(llmd_transfer::tcp::serve(listener, source, opts, until_stopped(stopped.clone())));
        // Leases run out on their own: a decode that never pulls costs its copy for one
        // lease, no more.
        let sweeper = holds.clone();
        let mut rx = stopped;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1).min(cfg_tick(&hold_cfg)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|s| *s) => break,
                }
                let gone = sweeper.with(HoldTable::expire);
                if !gone.is_empty() {
                    tracing::info!(holds = gone.len(), "KV holds expired before their pull");
                    sweeper.metrics.ended("expired", gone.len());
                }
            }
            let left = sweeper.with(HoldTable::drain);
            sweeper.metrics.ended("dropped", left.len());
        });
        let puller = TcpPuller {
            streams: cfg.streams,
            connect_timeout: cfg.io_timeout.min(Duration::from_secs(5)),
            io_timeout: cfg.io_timeout,
            ..TcpPuller::default()
        };
        tracing::info!(
            engine_id = %cfg.engine_id,
            side_channel = %format!("{}:{port}", cfg.side_channel_host),
            policy = %cfg.load_failure_policy,
            "KV transfer (NixlConnector's kv_transfer_params) on"
        );
        Ok(Pd {
            advertised: (cfg.side_channel_host.clone(), port),
            holds,
            puller,
            arena,
            maps: cfg.same_host_shm.then(ShmMaps::default),
            layout,
            block_size: engine.config().block_size,
            transfer_per_token: engine.simulated_transfer_per_token(),
            metrics,
            stop,
            cfg,
        })
    }

    /// Adds the `llmd:kv_transfer_*` metrics to `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// `host:port` of the side channel.
    pub(crate) fn side_channel(&self) -> String {
        format!("{}:{}", self.advertised.0, self.advertised.1)
    }

    /// Stops serving; held copies are dropped.
    pub(crate) fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// What a request's `kv_transfer_params` make of it. `Err` only under policy `fail`.
    pub(crate) async fn plan(
        &self,
        engine: &EngineHandle,
        params: Option<&Value>,
        stream: bool,
        prompt: &[u32],
        keys: &RequestKeys,
    ) -> std::result::Result<KvTransfer, LoadFailed> {
        let Some(v) = params.filter(|v| !v.is_null()) else {
            return Ok(KvTransfer::None);
        };
        let params = match KvTransferParams::from_value(v) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "Got invalid KVTransferParams; ignoring them");
                return Ok(KvTransfer::None);
            }
        };
        if params.do_remote_decode {
            if stream {
                // The params travel in the answer's body, which a stream does not have.
                tracing::warn!("do_remote_decode on a streamed request: prefilling without holding the blocks");
                return Ok(KvTransfer::None);
            }
            return Ok(if self.layout.is_some() { KvTransfer::Export } else { KvTransfer::None });
        }
        let remote = match params.remote_prefill() {
            Ok(None) => return Ok(KvTransfer::None),
            Ok(Some(r)) => r,
            Err(e) => {
                // vLLM logs this and computes the prompt itself.
                tracing::warn!(error = %e, "Got invalid KVTransferParams; computing the prompt here");
                return Ok(KvTransfer::None);
            }
        };
        match self.pull(engine, &remote, prompt, keys).await {
            Ok(r) => Ok(KvTransfer::Import(Box::new(r))),
            Err(e) => {
                let msg = format!("pulling the prompt's KV from {}: {e}", remote.side_channel());
                match self.cfg.load_failure_policy {
                    KvLoadFailurePolicy::Recompute => {
                        tracing::warn!(request = %remote.request_id, error = %msg, "computing the prompt here");
                        self.metrics.loads.get_or_create(&OutcomeLabel { outcome: "recomputed" }).inc();
                        Ok(KvTransfer::None)
                    }
                    KvLoadFailurePolicy::Fail => {
                        tracing::warn!(request = %remote.request_id, error = %msg, "failing the request");
                        self.metrics.loads.get_or_create(&OutcomeLabel { outcome: "failed" }).inc();
                        Err(LoadFailed(msg))
                    }
                }
            }
        }
    }

    async fn pull(
        &self,
        engine: &EngineHandle,
        remote: &llmd_transfer::params::RemotePrefill,
        prompt: &[u32],
        keys: &RequestKeys,
    ) -> Result<RemoteBlocks> {
        let (layout, hash) = self
            .layout
            .ok_or_else(|| EngineError::KvTransfer("this engine's backend cannot import KV blocks".into()))?;
        if remote.block_ids.len() > 1 {
            return Err(EngineError::KvTransfer(format!(
                "{} KV-cache groups (llmd engines have one)",
                remote.block_ids.len()
            )));
        }
        let n = remote.block_ids.first().map_or(0, Vec::len);
        let cached = engine.cached_prefix_blocks_async(prompt.to_vec(), keys.clone()).await?;
        let first = cached.min(n);
        let started = Instant::now();
        let addr = remote.side_channel();
        let pulled = match self.maps.as_ref().filter(|_| self.same_host(&remote.host)) {
            Some(maps) => self.puller.pull_shm_from(&addr, &remote.request_id, hash, maps, first as u32).await,
            None => self.puller.pull_from(&addr, &remote.request_id, hash, first as u32).await,
        }
        .map_err(|e| EngineError::KvTransfer(e.to_string()));
        let blocks = match pulled {
            Ok(b) if b.len() == n - first => b,
            Ok(b) => {
                self.metrics.pulls.get_or_create(&OutcomeLabel { outcome: "failed" }).inc();
                return Err(EngineError::KvTransfer(format!("{} blocks came, {} were named", b.len(), n - first)));
            }
            Err(e) => {
                self.metrics.pulls.get_or_create(&OutcomeLabel { outcome: "failed" }).inc();
                return Err(e);
            }
        };
        if let Some(per_token) = self.transfer_per_token {
            // The simulator's blocks are empty: spend the time their bytes would take.
            let tokens = u32::try_from((n - first) * self.block_size).unwrap_or(u32::MAX);
            tokio::time::sleep(per_token.saturating_mul(tokens)).await;
        }
        self.metrics.pulls.get_or_create(&OutcomeLabel { outcome: "ok" }).inc();
        let bytes = blocks.iter().map(|b| b.len() as u64).sum();
        self.metrics.pulled_bytes.inc_by(bytes);
        if self.maps.as_ref().is_some_and(|m| blocks.first().is_some_and(|b| m.contains(b))) {
            self.metrics.in_place_bytes.inc_by(bytes);
        }
        self.metrics.pull_seconds.observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            request = %remote.request_id,
            cached_here = first,
            pulled = n - first,
            ms = started.elapsed().as_millis() as u64,
            "pulled remote KV"
        );
        Ok(RemoteBlocks { layout, first_block: first, blocks, on_failure: self.cfg.load_failure_policy })
    }

    /// Whether a prefiller advertising `host` runs on this host.
    fn same_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == self.advertised.0
            || host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// After a request ended: holds a prefill's exported blocks under `request_id` and
    /// returns the params naming them; counts a decode's load.
    pub(crate) fn finish(
        &self,
        request_id: &str,
        prompt_tokens: usize,
        outcome: Option<Box<KvTransferOutcome>>,
    ) -> Option<Value> {
        match *outcome? {
            KvTransferOutcome::Exported { prefix, block_ids } => {
                let (_, hash) = self.layout?;
                let mut blocks = prefix.into_block_buffers();
                // In the arena, a decode on this host reads them in place; when it is
                // full they stay on the heap and go inline.
                if let Some(in_arena) = self.arena.as_ref().and_then(|a| a.copy_in(&blocks)) {
                    blocks = in_arena;
                }
                let bytes = blocks.iter().map(bytes::Bytes::len).sum();
                let held = HeldBlocks::new(hash, blocks);
                if let Err(e) = self.holds.with(|t| t.try_hold(request_id, held, bytes).map_err(|(e, _)| e)) {
                    tracing::warn!(request = request_id, error = %e, "cannot hold the prompt's blocks; the decode side will recompute");
                    self.metrics.ended("refused", 1);
                    return None;
                }
                let (host, port) = &self.advertised;
                let params = KvTransferParams::prefill_response(
                    vec![block_ids],
                    &self.cfg.engine_id,
                    request_id,
                    host,
                    *port,
                    1,
                )
                .with_num_tokens(prompt_tokens as u64);
                Some(params.to_value())
            }
            KvTransferOutcome::Imported { .. } => {
                self.metrics.loads.get_or_create(&OutcomeLabel { outcome: "imported" }).inc();
                None
            }
            KvTransferOutcome::LoadFailed { recomputed, .. } => {
                let outcome = if recomputed { "recomputed" } else { "failed" };
                self.metrics.loads.get_or_create(&OutcomeLabel { outcome }).inc();
                None
            }
        }
    }
}

fn cfg_tick(cfg: &HoldConfig) -> Duration {
    (cfg.lease / 4).max(Duration::from_millis(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllms_kv_transfer_config_is_read() {
        let c = KvTransferConfig::from_vllm_json(r#"{"kv_connector":"NixlConnector","kv_role":"kv_both"}"#).unwrap();
        assert_eq!((c.connector.as_str(), c.role.as_str()), ("NixlConnector", "kv_both"));
        assert_eq!(c.load_failure_policy, KvLoadFailurePolicy::Recompute, "llmd's default");
        assert!(!c.same_host_shm, "TCP unless asked");
        assert_eq!(c.engine_id.len(), 36);
        let c = KvTransferConfig::from_vllm_json(
            r#"{"kv_connector":"NixlConnector","kv_role":"kv_consumer","engine_id":"e1",
                "kv_buffer_device":"cuda","kv_load_failure_policy":"fail",
                "kv_connector_extra_config":{"kv_lease_duration":5,"streams":2,"max_held_bytes":1024,"backends":["UCX"],
                                             "same_host":"shm"}}"#,
        )
        .unwrap();
        assert_eq!(c.engine_id, "e1");
        assert_eq!(c.load_failure_policy, KvLoadFailurePolicy::Fail);
        assert_eq!((c.lease, c.streams, c.max_held_bytes), (Duration::from_secs(5), 2, 1024));
        assert!(c.same_host_shm);
    }

    #[test]
    fn what_cannot_be_followed_is_refused_by_name() {
        for (json, field) in [
            ("[]", "(json)"),
            ("{", "(json)"),
            (r#"{"kv_role":"kv_both"}"#, "kv_connector"),
            (r#"{"kv_connector":"LMCacheConnectorV1"}"#, "kv_connector"),
            (r#"{"kv_connector":"NixlConnector","kv_role":"both"}"#, "kv_role"),
            (r#"{"kv_connector":"NixlConnector","kv_load_failure_policy":"retry"}"#, "kv_load_failure_policy"),
            (r#"{"kv_connector":"NixlConnector","kv_conector_extra_config":{}}"#, "kv_conector_extra_config"),
            (r#"{"kv_connector":"NixlConnector","kv_connector_extra_config":{"streams":0}}"#, "streams"),
            (r#"{"kv_connector":"NixlConnector","kv_connector_extra_config":{"same_host":"rdma"}}"#, "same_host"),
            (
                r#"{"kv_connector":"NixlConnector","kv_connector_extra_config":{"kv_lease_duration":-1}}"#,
                "kv_lease_duration",
            ),
        ] {
            let e = KvTransferConfig::from_vllm_json(json).unwrap_err().to_string();
            assert!(e.contains(field), "{json}: {e}");
        }
    }
}
