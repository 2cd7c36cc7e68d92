//! Publishing KV events the way vLLM does: a ZMQ PUB socket sending three-frame messages
//! `(topic, sequence number as 8 big-endian bytes, msgpack KVEventBatch)`, so the same
//! subscribers (llm-d's KV-cache indexer, llmd's scheduler) consume vLLM and llmd pods.

use llmd_kvcache::KvEventBatch;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::error::{EngineError, Result};

/// Where and under which topic to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsConfig {
    /// ZMQ endpoint to bind, e.g. `tcp://127.0.0.1:5557`; `*` binds every interface
    /// (vLLM's `tcp://*:5557`), port 0 a free port.
    pub endpoint: String,
    /// Topic frame (vLLM's default is empty).
    pub topic: String,
}

impl KvEventsConfig {
    /// Events on `host` (the host HTTP binds: token ids in events reveal prompts, so
    /// they are exposed no wider than the API) at a free port, advertised in
    /// `/metrics` as `llmd:kv_events_info{endpoint=...}` for pickers to find.
    pub fn on_host(host: &str) -> Self {
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        KvEventsConfig { endpoint: format!("tcp://{host}:0"), topic: String::new() }
    }
}

impl Default for KvEventsConfig {
    /// Loopback at a free port.
    fn default() -> Self {
        Self::on_host("127.0.0.1")
    }
}

/// A bound publisher socket.
pub(crate) struct Publisher {
    socket: zeromq::PubSocket,
    topic: bytes::Bytes,
    seq: u64,
}

impl Publisher {
    /// Binds the socket (`*` means all interfaces, as in vLLM's endpoints).
    pub(crate) async fn bind(cfg: &KvEventsConfig) -> Result<(Self, String)> {
        let endpoint = cfg.endpoint.replacen("://*:", "://0.0.0.0:", 1);
        let mut socket = zeromq::PubSocket::new();
        let bound = socket
            .bind(&endpoint)
            .await
            .map_err(|e| EngineError::config("kv-events", "endpoint", format!("cannot bind {endpoint}: {e}")))?;
        Ok((Publisher { socket, topic: bytes::Bytes::from(cfg.topic.clone().into_bytes()), seq: 0 }, bound.to_string()))
    }

    /// Publishes batches until the channel closes.
    pub(crate) async fn run(mut self, mut rx: crate::channel::Receiver<KvEventBatch>) {
        while let Some(batch) = rx.recv().await {
            let [topic, seq, payload] = match llmd_kvcache::frames::encode_message(&self.topic, self.seq, &batch) {
                Ok(frames) => frames,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a KV event batch that cannot be encoded");
                    continue;
                }
            };
            let mut msg = ZmqMessage::from(bytes::Bytes::from(topic));
            msg.push_back(bytes::Bytes::from(seq));
            msg.push_back(bytes::Bytes::from(payload));
            self.seq += 1;
            if let Err(e) = self.socket.send(msg).await {
                tracing::warn!(error = %e, "KV event publish failed");
            }
        }
    }
}
