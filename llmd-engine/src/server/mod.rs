//! The OpenAI-compatible HTTP server (feature `server`).
//!
//! One user of the [`EngineHandle`]: each HTTP request gets a [`RequestStream`] of
//! [`RequestOutput`]s. A client that goes away (dropped connection or stream) drops its
//! stream, which aborts its request and frees its blocks.
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with SSE
//! streaming), vLLM's render routes `POST /v1/completions/render` and
//! `POST /v1/chat/completions/render` (the prompt token ids those would run, computed
//! here and never sent to the engine), `GET /v1/models`, `GET /health`, `GET /metrics`.

mod events;
mod handlers;
mod openai;
mod pd;
mod render;

pub use events::KvEventsConfig;
pub use llmd_openai::http::{Lifecycle, Phase, ServeConfig};
pub use pd::KvTransferConfig;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;

use crate::engine::Engine;
#[cfg(doc)]
use crate::engine::RequestOutput;
use crate::error::Result;
#[cfg(doc)]
use crate::handle::RequestStream;
use crate::handle::{EngineHandle, HandleConfig};
use crate::tokenizer::{ChatTemplate, Tokenize};

/// Server settings beyond the engine's.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Requests allowed to wait for the engine before new ones get 429.
    pub max_queued_requests: usize,
    /// Publish KV events over ZMQ (off when `None`).
    pub kv_events: Option<KvEventsConfig>,
    /// Sampling defaults from the checkpoint's `generation_config.json`.
    pub defaults: crate::model::GenerationConfig,
    /// Require `Authorization: Bearer <key>` on `/v1/...` (vLLM's `--api-key`).
    pub api_key: Option<String>,
    /// Take part in prefill/decode disaggregation (vLLM's `--kv-transfer-config`):
    /// requests' `kv_transfer_params` are acted on, and held blocks are served on the
    /// side channel. Off when `None` (the params are then ignored, as vLLM does without
    /// a connector).
    pub kv_transfer: Option<KvTransferConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_queued_requests: 1024,
            kv_events: None,
            defaults: Default::default(),
            api_key: None,
            kv_transfer: None,
        }
    }
}

/// What the HTTP handlers share.
pub(crate) struct AppState {
    pub(crate) model_name: String,
    pub(crate) max_model_len: usize,
    pub(crate) tokenizer: Arc<dyn Tokenize>,
    pub(crate) template: ChatTemplate,
    pub(crate) defaults: crate::model::GenerationConfig,
    pub(crate) engine: EngineHandle,
    pub(crate) registry: Registry,
    pub(crate) next_id: AtomicU64,
    // Distinguishes this process's request ids from other replicas'.
    pub(crate) instance: u32,
    pub(crate) created: u64,
    // Draining: /health answers 503; cut: open streams end with an error event.
    pub(crate) lifecycle: Lifecycle,
    pub(crate) pd: Option<Arc<pd::Pd>>,
}

impl AppState {
    pub(crate) fn request_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.base_id())
    }

    /// A fresh id unique to this process and replica (the part after the prefix).
    pub(crate) fn base_id(&self) -> String {
        format!("{:08x}{:012x}", self.instance, self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running engine thread plus the router that serves it.
pub struct Server {
    router: Router,
    engine: EngineHandle,
    events_endpoint: Option<String>,
    lifecycle: Lifecycle,
    pd: Option<Arc<pd::Pd>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    /// Starts the engine thread (and the KV event publisher, which needs a tokio
    /// runtime). `template` renders chat requests.
    pub async fn start(engine: Engine, template: ChatTemplate, cfg: ServerConfig) -> Result<Self> {
        let (kv_events, events_endpoint) = match &cfg.kv_events {
            None => (None, None),
            Some(ev) => {
                let (publisher, bound) = events::Publisher::bind(ev).await?;
                let (tx, rx) = crate::channel::channel();
                tokio::spawn(publisher.run(rx));
                tracing::info!(endpoint = %bound, topic = %ev.topic, "publishing KV events");
                (Some(tx), Some(bound))
            }
        };
        let handle =
            EngineHandle::spawn(engine, HandleConfig { max_queued_requests: cfg.max_queued_requests, kv_events })?;
        let advertised = events_endpoint.clone().zip(cfg.kv_events.as_ref().map(|e| e.topic.clone()));
        let pd = match cfg.kv_transfer {
            Some(t) => match pd::Pd::start(t, &handle).await {
                Ok(pd) => Some(Arc::new(pd)),
                Err(e) => {
                    handle.shutdown();
                    return Err(e);
                }
            },
            None => None,
        };
        let mut server = Self::build(handle, template, cfg.defaults, advertised, pd);
        server.events_endpoint = events_endpoint;
        if let Some(key) = cfg.api_key {
            server.router = llmd_openai::http::require_api_key(server.router.clone(), key);
        }
        Ok(server)
    }

    /// Serves an engine already running behind `handle` (whose KV events, if any, the
    /// caller consumes). `defaults` are the checkpoint's sampling defaults. Like
    /// [`start`](Self::start)'s, the engine stops when the server is dropped or
    /// [`serve`](Self::serve) returns.
    pub fn with_handle(handle: EngineHandle, template: ChatTemplate, defaults: crate::model::GenerationConfig) -> Self {
        Self::build(handle, template, defaults, None, None)
    }

    // `events`: the bound KV-event endpoint and topic, advertised in /metrics as
    // `llmd:kv_events_info` so a picker told only the HTTP address finds the stream.
    fn build(
        handle: EngineHandle,
        template: ChatTemplate,
        defaults: crate::model::GenerationConfig,
        events: Option<(String, String)>,
        pd: Option<Arc<pd::Pd>>,
    ) -> Self {
        let mut registry = Registry::default();
        handle.metrics().register(&mut registry);
        if let Some(pd) = &pd {
            pd.register(&mut registry);
        }
        let lifecycle = Lifecycle::new();
        if let Some((endpoint, topic)) = events {
            let info = prometheus_client::metrics::info::Info::new(vec![("endpoint", endpoint), ("topic", topic)]);
            registry.register("llmd:kv_events", "Where this engine publishes KV events", info);
        }
        let state = Arc::new(AppState {
            model_name: handle.config().model_name.clone(),
            max_model_len: handle.config().max_model_len,
            tokenizer: handle.tokenizer(),
            template,
            defaults,
            engine: handle.clone(),
            registry,
            next_id: AtomicU64::new(0),
            instance: {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                (t as u32) ^ std::process::id().rotate_left(16)
            },
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            lifecycle: lifecycle.clone(),
            pd: pd.clone(),
        });
        let router = Router::new()
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/chat/completions", post(handlers::chat))
            .route("/v1/completions/render", post(render::completions))
            .route("/v1/chat/completions/render", post(render::chat))
            .route("/v1/models", get(handlers::models))
            .route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .with_state(state)
            // 404, 405, 413 and the like in the same OpenAI shape as every other error.
            .layer(axum::middleware::map_response(llmd_openai::http::json_errors));
        Server { router, engine: handle, events_endpoint: None, lifecycle, pd }
    }

    /// Where held KV blocks are served to decode engines (`host:port`), when
    /// [`ServerConfig::kv_transfer`] is on.
    pub fn kv_transfer_side_channel(&self) -> Option<String> {
        self.pd.as_ref().map(|pd| pd.side_channel())
    }

    /// The engine behind the routes (to export or import KV prefixes, for instance).
    pub fn handle(&self) -> &EngineHandle {
        &self.engine
    }

    /// The endpoint KV events are published on, once bound (with the real port).
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.events_endpoint.as_deref()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Where the server stands in its shutdown (what `/health` and open streams follow).
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Serves on `listener` with [`ServeConfig::default`] until `shutdown` resolves, lets
    /// the requests in flight finish, then stops the engine. See
    /// [`serve_with`](Self::serve_with).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_with(listener, shutdown, ServeConfig::default()).await
    }

    /// Serves on `listener` as `cfg` says (timeouts, connection limit, drain deadline)
    /// until `shutdown` resolves, then stops the engine. From `shutdown` on, `/health`
    /// answers 503 so that load balancers stop sending; requests in flight finish, up to
    /// `cfg.drain_timeout`, past which each open stream ends with an OpenAI error event
    /// (`data: {"error": ...}` then `[DONE]`), each waiting non-streamed request gets a
    /// 503, and this fails with [`std::io::ErrorKind::TimedOut`]. `cfg.lifecycle` is
    /// replaced by this server's own ([`lifecycle`](Self::lifecycle)).
    pub async fn serve_with(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
        cfg: ServeConfig,
    ) -> std::io::Result<()> {
        let cfg = ServeConfig { lifecycle: Some(self.lifecycle.clone()), ..cfg };
        let result = llmd_openai::http::serve_with(listener, self.router.clone(), shutdown, &cfg).await;
        self.stop();
        result
    }

    fn stop(&mut self) {
        if let Some(pd) = &self.pd {
            pd.stop();
        }
        // Blocks for at most one engine step.
        self.engine.shutdown();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
