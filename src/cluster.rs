//! Several engine replicas behind one gateway, in one process: what `llmd up` runs, and
//! what end-to-end tests start.

use std::net::SocketAddr;

use std::sync::Arc;

use llmd_engine::server::{KvEventsConfig, Server, ServerConfig};
use llmd_engine::{ChatMessage, ChatTemplate, Engine, GenerationConfig, Tokenize};
use llmd_scheduler::gateway::{Gateway, GatewayConfig, PromptTokenizer};
use llmd_scheduler::{Endpoint, Role, Scheduler, SchedulerConfig};
use serde_json::Value;

/// Tokenizes requests exactly as the engines will: chat through the chat template
/// without added special tokens, completions with them.
pub struct EnginePromptTokenizer {
    /// The model's tokenizer.
    pub tokenizer: Arc<dyn Tokenize>,
    /// Its chat template.
    pub template: ChatTemplate,
}

impl PromptTokenizer for EnginePromptTokenizer {
    fn tokenize(&self, path: &str, body: &Value) -> Option<Vec<u32>> {
        if path.ends_with("/chat/completions") {
            let messages = body
                .get("messages")?
                .as_array()?
                .iter()
                .map(|m| {
                    let content = match m.get("content") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Array(parts)) => {
                            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()
                        }
                        _ => String::new(),
                    };
                    Some(ChatMessage { role: m.get("role")?.as_str()?.to_string(), content })
                })
                .collect::<Option<Vec<_>>>()?;
            let add_generation_prompt = body.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(true);
            let text = self.template.render(&messages, add_generation_prompt).ok()?;
            self.tokenizer.encode(&text, false).ok()
        } else {
            self.tokenizer.encode(body.get("prompt")?.as_str()?, true).ok()
        }
    }
}

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
    subscribers: Vec<tokio::task::JoinHandle<()>>,
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
        let mut tokenizer = None;
        for (i, r) in replicas.into_iter().enumerate() {
            if tokenizer.is_none() {
                let t: Arc<dyn PromptTokenizer> =
                    Arc::new(EnginePromptTokenizer { tokenizer: r.engine.tokenizer(), template: r.template.clone() });
                tokenizer = Some(t);
            }
            let events = KvEventsConfig { endpoint: "tcp://127.0.0.1:0".into(), topic: format!("replica-{i}") };
            let server = Server::start(
                r.engine,
                r.template,
                ServerConfig { defaults: r.generation, kv_events: Some(events), ..Default::default() },
            )
            .await?;
            let kv_events = server.kv_events_endpoint().map(String::from);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let mut ep = Endpoint::new(format!("replica-{i}"), addr.to_string(), Role::Both);
            ep.kv_events = kv_events;
            endpoints.push(ep);
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
        let gateway =
            Gateway::with_tokenizer(Scheduler::new(scheduler, seed), endpoints, GatewayConfig::default(), tokenizer);
        let subscribers = gateway.start_kv_subscribers();
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
        let mut rx = stop.subscribe();
        tasks.push(tokio::spawn(async move {
            let _ = gateway
                .serve(listener, async move {
                    let _ = rx.recv().await;
                })
                .await;
        }));
        Ok(LocalCluster { addr, replicas: addrs, stop, tasks, subscribers })
    }

    /// Stops the gateway and every replica, and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        for s in &self.subscribers {
            s.abort();
        }
        for t in self.tasks.into_iter().chain(self.subscribers) {
            let _ = t.await;
        }
    }
}

impl Replica {
    /// A simulated replica (latency model on the system clock, byte tokenizer).
    pub fn simulated(name: &str, latency: llmd_engine::LatencyModel, num_blocks: usize) -> anyhow::Result<Self> {
        use llmd_engine::{ByteTokenizer, EngineConfig, SimBackend, SystemClock, tokenizer::DEFAULT_CHAT_TEMPLATE};
        let clock = Arc::new(SystemClock::default());
        let backend = SimBackend::new(latency, clock.clone(), ByteTokenizer::VOCAB, 8192, 32..127, 1);
        let cfg = EngineConfig { model_name: name.into(), num_blocks, max_model_len: 8192, ..Default::default() };
        Ok(Replica {
            engine: Engine::new(cfg, Box::new(backend), Arc::new(ByteTokenizer), vec![ByteTokenizer::EOS], clock)?,
            template: ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, "<s>", "</s>"),
            generation: GenerationConfig::default(),
        })
    }

    /// A replica of the built-in model on the CPU.
    pub fn builtin(num_blocks: usize) -> anyhow::Result<Self> {
        use llmd_engine::{
            ByteTokenizer, EngineConfig, KvDtype, ModelBackend, SystemClock, builtin, tokenizer::DEFAULT_CHAT_TEMPLATE,
        };
        let cfg = EngineConfig { num_blocks, max_model_len: 4096, ..Default::default() };
        let backend = ModelBackend::new(builtin::model(0)?, num_blocks, cfg.block_size, KvDtype::F16)?;
        Ok(Replica {
            engine: Engine::new(
                cfg,
                Box::new(backend),
                Arc::new(ByteTokenizer),
                vec![ByteTokenizer::EOS],
                Arc::new(SystemClock::default()),
            )?,
            template: ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, "<s>", "</s>"),
            generation: GenerationConfig::default(),
        })
    }
}
