//! The OpenAI-compatible HTTP server (feature `server`).
//!
//! The engine runs on its own thread, taking commands over a channel and stepping while
//! it has work; each HTTP request gets a channel of [`RequestOutput`]s. A client that
//! goes away (dropped connection or stream) aborts its request, freeing its blocks.
//! Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with SSE
//! streaming), `GET /v1/models`, `GET /health`, `GET /metrics`.

mod events;
mod handlers;
mod openai;

pub use events::KvEventsConfig;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use axum::Router;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::engine::{Engine, NewRequest, RequestOutput};
use crate::error::{EngineError, Result};
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
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_queued_requests: 1024, kv_events: None, defaults: Default::default() }
    }
}

pub(crate) enum Command {
    Add { req: Box<NewRequest>, out: tmpsc::UnboundedSender<RequestOutput>, ack: oneshot::Sender<Result<()>> },
    Abort(String),
    Shutdown,
}

/// What the HTTP handlers share.
pub(crate) struct AppState {
    pub(crate) model_name: String,
    pub(crate) max_model_len: usize,
    pub(crate) tokenizer: Arc<dyn Tokenize>,
    pub(crate) template: ChatTemplate,
    pub(crate) defaults: crate::model::GenerationConfig,
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) registry: Registry,
    pub(crate) alive: Arc<AtomicBool>,
    pub(crate) next_id: AtomicU64,
    // Distinguishes this process's request ids from other replicas'.
    pub(crate) instance: u32,
    pub(crate) created: u64,
}

impl AppState {
    pub(crate) fn request_id(&self, prefix: &str) -> String {
        format!("{prefix}-{:08x}{:012x}", self.instance, self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running engine thread plus the router that serves it.
pub struct Server {
    router: Router,
    commands: mpsc::Sender<Command>,
    thread: Option<std::thread::JoinHandle<()>>,
    events_endpoint: Option<String>,
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
        let (events_tx, events_endpoint) = match &cfg.kv_events {
            None => (None, None),
            Some(ev) => {
                let (publisher, bound) = events::Publisher::bind(ev).await?;
                let (tx, rx) = tmpsc::unbounded_channel();
                tokio::spawn(publisher.run(rx));
                tracing::info!(endpoint = %bound, topic = %ev.topic, "publishing KV events");
                (Some(tx), Some(bound))
            }
        };
        let mut registry = Registry::default();
        engine.metrics().register(&mut registry);
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let state = Arc::new(AppState {
            model_name: engine.config().model_name.clone(),
            max_model_len: engine.config().max_model_len,
            tokenizer: engine.tokenizer(),
            template,
            defaults: cfg.defaults.clone(),
            commands: tx.clone(),
            registry,
            alive: alive.clone(),
            next_id: AtomicU64::new(0),
            instance: {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                (t as u32) ^ std::process::id().rotate_left(16)
            },
            created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        });
        let thread = std::thread::Builder::new()
            .name("llmd-engine".into())
            .spawn(move || engine_loop(engine, rx, cfg, alive, events_tx))
            .map_err(|e| EngineError::EngineDead(format!("cannot start the engine thread: {e}")))?;
        let router = Router::new()
            .route("/v1/completions", post(handlers::completions))
            .route("/v1/chat/completions", post(handlers::chat))
            .route("/v1/models", get(handlers::models))
            .route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .with_state(state);
        Ok(Server { router, commands: tx, thread: Some(thread), events_endpoint })
    }

    /// The endpoint KV events are published on, once bound (with the real port).
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.events_endpoint.as_deref()
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then stops the engine.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // Tokens stream as small writes: without TCP_NODELAY, Nagle holds each one until
        // the previous is acknowledged, which delayed acknowledgements can stretch to
        // tens of milliseconds of TTFT and ITL.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let result = axum::serve(listener, self.router.clone()).with_graceful_shutdown(shutdown).await;
        self.stop();
        result
    }

    fn stop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn engine_loop(
    mut engine: Engine,
    rx: mpsc::Receiver<Command>,
    cfg: ServerConfig,
    alive: Arc<AtomicBool>,
    events_tx: Option<tmpsc::UnboundedSender<llmd_kvcache::KvEventBatch>>,
) {
    use std::collections::HashMap;
    // Marks the server unhealthy however the loop ends, a panic included, so /health
    // fails and the orchestrator restarts the pod.
    struct Alive(Arc<AtomicBool>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _alive = Alive(alive);
    let mut outs: HashMap<String, tmpsc::UnboundedSender<RequestOutput>> = HashMap::new();
    let _span = tracing::info_span!("engine", model = %engine.config().model_name).entered();
    loop {
        // Idle: block for the next command. Busy: take what has arrived and step.
        let first = if engine.has_work() {
            None
        } else {
            match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            }
        };
        let mut shutdown = false;
        for cmd in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match cmd {
                Command::Add { req, out, ack } => {
                    let (_, waiting) = engine.num_requests();
                    let result = if waiting >= cfg.max_queued_requests {
                        Err(EngineError::Overloaded { waiting })
                    } else {
                        let id = req.id.clone();
                        engine.add_request(*req).map(|()| {
                            outs.insert(id, out);
                        })
                    };
                    let _ = ack.send(result);
                }
                Command::Abort(id) => {
                    engine.abort(&id);
                    outs.remove(&id);
                }
                Command::Shutdown => shutdown = true,
            }
        }
        if shutdown {
            break;
        }
        match engine.step() {
            Ok(outputs) => {
                for o in outputs {
                    let done = o.finished.is_some();
                    let id = o.id.clone();
                    let gone = outs.get(&id).is_none_or(|tx| tx.send(o).is_err());
                    if gone && !done {
                        // Nobody is listening any more: stop spending compute on it.
                        engine.abort(&id);
                    }
                    if done || gone {
                        outs.remove(&id);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "engine step failed; stopping");
                break;
            }
        }
        // Always drain: without a publisher the batch is simply dropped.
        let batch = engine.take_events();
        if let (Some(tx), Some(batch)) = (&events_tx, batch) {
            let _ = tx.send(batch);
        }
    }
    // Dropping the senders ends every open response stream.
}
