//! The engine on its own thread, driven through a handle: submit a request, get a stream
//! of its outputs. Any caller can use it — the HTTP server, an embedding program with
//! plain threads, the prefill/decode transfer path — and none needs an async runtime:
//! a [`RequestStream`] can be read by blocking or by awaiting.
//!
//! The thread takes commands over a channel and steps while it has work. Dropping a
//! stream before its last output aborts the request, freeing its blocks. The handle
//! reports the loop's health: it goes down however the loop ends (shutdown, a failed
//! step, a panic), and every open stream then ends. KV event batches go, after each
//! step, to an optional subscriber channel (the server's ZMQ publisher is one).
//!
//! ```
//! use std::sync::Arc;
//!
//! use llmd_engine::handle::{EngineHandle, HandleConfig};
//! use llmd_engine::{
//!     builtin, ByteTokenizer, Engine, EngineConfig, KvDtype, ModelBackend, NewRequest, SamplingParams,
//!     SystemClock, Tokenize,
//! };
//!
//! # fn main() -> Result<(), llmd_engine::EngineError> {
//! let cfg = EngineConfig { num_blocks: 64, max_model_len: 512, ..Default::default() };
//! let backend = ModelBackend::new(builtin::model(0)?, 64, cfg.block_size, KvDtype::F16)?;
//! let tokenizer = Arc::new(ByteTokenizer);
//! let engine =
//!     Engine::new(cfg, Box::new(backend), tokenizer, vec![ByteTokenizer::EOS], Arc::new(SystemClock::default()))?;
//! let handle = EngineHandle::spawn(engine, HandleConfig::default())?;
//! let stream = handle.submit(NewRequest {
//!     id: "r1".into(),
//!     prompt: ByteTokenizer.encode("Hello", true)?,
//!     params: SamplingParams { max_tokens: 4, temperature: 0.0, ..Default::default() },
//!     keys: Default::default(),
//!     kv_transfer: Default::default(),
//! })?;
//! let text: String = stream.map(|out| out.text).collect();
//! assert!(!text.is_empty());
//! handle.shutdown();
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use llmd_kvcache::{KvEventBatch, RequestKeys};

use crate::channel::{Receiver, Sender, channel};
use crate::engine::{Engine, EngineConfig, ExportedPrefix, NewRequest, RequestOutput};
use crate::error::{EngineError, Result};
use crate::kv::KvBlockLayout;
use crate::metrics::EngineMetrics;
use crate::tokenizer::Tokenize;

/// Settings of the engine thread.
#[derive(Debug, Clone)]
pub struct HandleConfig {
    /// Requests allowed to wait for the engine before new ones are refused with
    /// [`EngineError::Overloaded`].
    pub max_queued_requests: usize,
    /// Where to send each step's KV event batch (from [`channel`]); events are dropped
    /// when `None` or once the receiver is gone.
    pub kv_events: Option<Sender<KvEventBatch>>,
}

impl Default for HandleConfig {
    fn default() -> Self {
        HandleConfig { max_queued_requests: 1024, kv_events: None }
    }
}

enum Command {
    Add { req: Box<NewRequest>, serial: u64, out: Sender<RequestOutput>, ack: Sender<Result<()>> },
    // The serial tells this stream's request from a later one reusing its id.
    Abort { id: String, serial: u64 },
    Export { token_ids: Vec<u32>, keys: RequestKeys, reply: Sender<Result<ExportedPrefix>> },
    Import { prefix: Box<ExportedPrefix>, reply: Sender<Result<usize>> },
    CachedBlocks { token_ids: Vec<u32>, keys: RequestKeys, reply: Sender<Result<usize>> },
    Shutdown,
}

struct Inner {
    commands: mpsc::Sender<Command>,
    alive: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    serial: AtomicU64,
    config: EngineConfig,
    vocab_size: usize,
    tokenizer: Arc<dyn Tokenize>,
    metrics: Arc<EngineMetrics>,
    kv_layout: Option<KvBlockLayout>,
    transfer_per_token: Option<std::time::Duration>,
    clock: Arc<dyn crate::clock::Clock>,
}

/// A running engine thread; cheap to clone (clones share the thread).
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("model", &self.inner.config.model_name)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

fn dead() -> EngineError {
    EngineError::EngineDead("the engine loop has stopped".into())
}

impl EngineHandle {
    /// Moves `engine` onto a new thread and starts its loop.
    pub fn spawn(engine: Engine, cfg: HandleConfig) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let config = engine.config().clone();
        let vocab_size = engine.vocab_size();
        let tokenizer = engine.tokenizer();
        let metrics = engine.metrics();
        let kv_layout = engine.kv_block_layout();
        let transfer_per_token = engine.simulated_transfer_per_token();
        let clock = engine.clock();
        let flag = alive.clone();
        let thread = std::thread::Builder::new()
            .name("llmd-engine".into())
            .spawn(move || engine_loop(engine, rx, cfg, flag))
            .map_err(|e| EngineError::EngineDead(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle {
            inner: Arc::new(Inner {
                commands: tx,
                alive,
                thread: Mutex::new(Some(thread)),
                serial: AtomicU64::new(0),
                config,
                vocab_size,
                tokenizer,
                metrics,
                kv_layout,
                transfer_per_token,
                clock,
            }),
        })
    }

    /// The engine's configuration (as it was when spawned).
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Checks `req` as the engine would before admitting it ([`Engine::validate`]'s
    /// sampling, prompt, vocabulary and context checks; not its duplicate-id check nor
    /// the queue limit), here on the caller's thread: nothing reaches the engine.
    pub fn validate(&self, req: &NewRequest) -> Result<()> {
        crate::engine::check_limits(self.inner.config.max_model_len, self.inner.vocab_size, req)
    }

    /// The `max_tokens` the engine would run `req` (valid by [`validate`](Self::validate))
    /// with: at most what the context leaves after the prompt.
    pub fn admitted_max_tokens(&self, req: &NewRequest) -> usize {
        crate::engine::admitted_max_tokens(self.inner.config.max_model_len, req)
    }

    /// The engine's clock.
    pub fn clock(&self) -> Arc<dyn crate::clock::Clock> {
        self.inner.clock.clone()
    }

    /// [`Engine::kv_block_layout`], as it was when spawned.
    pub fn kv_block_layout(&self) -> Option<KvBlockLayout> {
        self.inner.kv_layout
    }

    /// [`Engine::simulated_transfer_per_token`], as it was when spawned.
    pub fn simulated_transfer_per_token(&self) -> Option<std::time::Duration> {
        self.inner.transfer_per_token
    }

    /// [`Engine::cached_prefix_blocks`] on the engine thread, between steps.
    pub async fn cached_prefix_blocks_async(&self, token_ids: Vec<u32>, keys: RequestKeys) -> Result<usize> {
        let mut rx = self.ask(|reply| Command::CachedBlocks { token_ids, keys, reply })?;
        rx.recv().await.unwrap_or_else(|| Err(dead()))
    }

    /// The engine's tokenizer.
    pub fn tokenizer(&self) -> Arc<dyn Tokenize> {
        self.inner.tokenizer.clone()
    }

    /// The engine's metrics (register them with a Prometheus registry to export).
    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.inner.metrics.clone()
    }

    /// Whether the engine loop is running; false for good once it ended for any reason,
    /// a panic included.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.inner.commands.send(cmd).map_err(|_| dead())
    }

    fn start(&self, req: NewRequest) -> Result<(RequestStream, Receiver<Result<()>>)> {
        let serial = self.inner.serial.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = channel();
        let (ack, ack_rx) = channel();
        let id = req.id.clone();
        self.send(Command::Add { req: Box::new(req), serial, out, ack })?;
        let stream = RequestStream { id, serial, rx, commands: self.inner.commands.clone(), done: false };
        Ok((stream, ack_rx))
    }

    fn admitted(mut stream: RequestStream, ack: Option<Result<()>>) -> Result<RequestStream> {
        // Refused: there is no request of this stream's to abort.
        match ack {
            Some(Ok(())) => Ok(stream),
            Some(Err(e)) => {
                stream.done = true;
                Err(e)
            }
            None => {
                stream.done = true;
                Err(dead())
            }
        }
    }

    /// Queues a request and returns the stream of its outputs, blocking until the
    /// engine thread admits or refuses it (at most one step). Refusals:
    /// [`EngineError::Overloaded`] when `max_queued_requests` are waiting, the
    /// validation errors of [`Engine::validate`], [`EngineError::EngineDead`]. In async
    /// code use [`submit_async`](Self::submit_async).
    pub fn submit(&self, req: NewRequest) -> Result<RequestStream> {
        let (stream, mut ack) = self.start(req)?;
        let ack = ack.blocking_recv();
        Self::admitted(stream, ack)
    }

    /// [`submit`](Self::submit), awaiting the engine thread's answer.
    pub async fn submit_async(&self, req: NewRequest) -> Result<RequestStream> {
        let (stream, mut ack) = self.start(req)?;
        let ack = ack.recv().await;
        Self::admitted(stream, ack)
    }

    fn ask<T>(&self, make: impl FnOnce(Sender<Result<T>>) -> Command) -> Result<Receiver<Result<T>>> {
        let (tx, rx) = channel();
        self.send(make(tx))?;
        Ok(rx)
    }

    /// [`Engine::export_prefix`] on the engine thread, between steps; blocks for it.
    pub fn export_prefix(&self, token_ids: Vec<u32>, keys: RequestKeys) -> Result<ExportedPrefix> {
        let mut rx = self.ask(|reply| Command::Export { token_ids, keys, reply })?;
        rx.blocking_recv().unwrap_or_else(|| Err(dead()))
    }

    /// [`export_prefix`](Self::export_prefix), awaiting the answer.
    pub async fn export_prefix_async(&self, token_ids: Vec<u32>, keys: RequestKeys) -> Result<ExportedPrefix> {
        let mut rx = self.ask(|reply| Command::Export { token_ids, keys, reply })?;
        rx.recv().await.unwrap_or_else(|| Err(dead()))
    }

    /// [`Engine::import_prefix`] on the engine thread, between steps; blocks for it.
    pub fn import_prefix(&self, prefix: ExportedPrefix) -> Result<usize> {
        let mut rx = self.ask(|reply| Command::Import { prefix: Box::new(prefix), reply })?;
        rx.blocking_recv().unwrap_or_else(|| Err(dead()))
    }

    /// [`import_prefix`](Self::import_prefix), awaiting the answer.
    pub async fn import_prefix_async(&self, prefix: ExportedPrefix) -> Result<usize> {
        let mut rx = self.ask(|reply| Command::Import { prefix: Box::new(prefix), reply })?;
        rx.recv().await.unwrap_or_else(|| Err(dead()))
    }

    /// Stops the engine loop after its current step and waits for the thread. Open
    /// streams end; later submissions fail with [`EngineError::EngineDead`]. Blocks (for
    /// at most one step): in async code, call it where blocking is allowed.
    pub fn shutdown(&self) {
        let _ = self.inner.commands.send(Command::Shutdown);
        let thread = self.inner.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            tracing::error!("the engine thread panicked");
        }
    }
}

/// The outputs of one request, in order; the last has `finished` set. Read it by
/// blocking ([`blocking_recv`](Self::blocking_recv), or as an [`Iterator`]) or by
/// awaiting ([`recv`](Self::recv)). Dropping it before the last output aborts the
/// request. It ends early (with no finished output) if the engine loop stops.
pub struct RequestStream {
    id: String,
    serial: u64,
    rx: Receiver<RequestOutput>,
    commands: mpsc::Sender<Command>,
    done: bool,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream").field("id", &self.id).field("done", &self.done).finish_non_exhaustive()
    }
}

impl RequestStream {
    /// The request's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the stream has ended: the last output was taken, or the engine stopped.
    pub fn is_finished(&self) -> bool {
        self.done
    }

    fn note(&mut self, o: Option<RequestOutput>) -> Option<RequestOutput> {
        if o.as_ref().is_none_or(|o| o.finished.is_some()) {
            self.done = true;
        }
        o
    }

    /// The next output, awaiting it; `None` after the last.
    pub async fn recv(&mut self) -> Option<RequestOutput> {
        let o = self.rx.recv().await;
        self.note(o)
    }

    /// The next output, blocking the thread for it; `None` after the last.
    pub fn blocking_recv(&mut self) -> Option<RequestOutput> {
        let o = self.rx.blocking_recv();
        self.note(o)
    }
}

impl Iterator for RequestStream {
    type Item = RequestOutput;

    /// Blocks for the next output.
    fn next(&mut self) -> Option<RequestOutput> {
        self.blocking_recv()
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Abort { id: std::mem::take(&mut self.id), serial: self.serial });
        }
    }
}

fn engine_loop(mut engine: Engine, rx: mpsc::Receiver<Command>, cfg: HandleConfig, alive: Arc<AtomicBool>) {
    // Marks the engine down however the loop ends, a panic included, so health checks
    // fail and the orchestrator restarts the pod.
    struct Alive(Arc<AtomicBool>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let mut events = cfg.kv_events;
    let mut outs: HashMap<String, (u64, Sender<RequestOutput>)> = HashMap::new();
    // Declared after `outs` so it drops first: a stream that ends finds the engine down.
    let _alive = Alive(alive);
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
                Command::Add { req, serial, out, ack } => {
                    let (_, waiting) = engine.num_requests();
                    let result = if waiting >= cfg.max_queued_requests {
                        Err(EngineError::Overloaded { waiting })
                    } else {
                        let id = req.id.clone();
                        engine.add_request(*req).map(|()| {
                            outs.insert(id, (serial, out));
                        })
                    };
                    let _ = ack.send(result);
                }
                Command::Abort { id, serial } => {
                    if outs.get(&id).is_some_and(|(s, _)| *s == serial) {
                        engine.abort(&id);
                        outs.remove(&id);
                    }
                }
                Command::Export { token_ids, keys, reply } => {
                    let _ = reply.send(engine.export_prefix(&token_ids, &keys));
                }
                Command::Import { prefix, reply } => {
                    let _ = reply.send(engine.import_prefix(*prefix));
                }
                Command::CachedBlocks { token_ids, keys, reply } => {
                    let _ = reply.send(engine.cached_prefix_blocks(&token_ids, &keys));
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
                    let gone = outs.get(&id).is_none_or(|(_, tx)| tx.send(o).is_err());
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
        // Always drain: without a subscriber the batch is simply dropped.
        if let Some(batch) = engine.take_events()
            && let Some(tx) = &events
            && tx.send(batch).is_err()
        {
            events = None;
        }
    }
    // Requests still open when the loop stops are aborted (and counted so); dropping
    // their senders ends their streams.
    for id in outs.keys() {
        engine.abort(id);
    }
}
