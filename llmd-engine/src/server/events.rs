//! Publishing KV events the way vLLM does: a ZMQ PUB socket sending three-frame messages
//! `(topic, sequence number as 8 big-endian bytes, msgpack KVEventBatch)`, so the same
//! subscribers (llm-d's KV-cache indexer, llmd's scheduler) consume vLLM and llmd pods.

use llmd_kvcache::KvEventBatch;
use llmd_kvcache::codec::encode_batch;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::error::{EngineError, Result};

/// Where and under which topic to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventsConfig {
    /// ZMQ endpoint to bind, e.g. `tcp://*:5557` (vLLM's default).
    pub endpoint: String,
    /// Topic frame (vLLM's default is empty).
    pub topic: String,
}

impl Default for KvEventsConfig {
    fn default() -> Self {
        KvEventsConfig { endpoint: "tcp://*:5557".into(), topic: String::new() }
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
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<KvEventBatch>) {
        while let Some(batch) = rx.recv().await {
            let payload = match encode_batch(&batch) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a KV event batch that cannot be encoded");
                    continue;
                }
            };
            let mut msg = ZmqMessage::from(self.topic.clone());
            msg.push_back(bytes::Bytes::copy_from_slice(&self.seq.to_be_bytes()));
            msg.push_back(bytes::Bytes::from(payload));
            self.seq += 1;
            if let Err(e) = self.socket.send(msg).await {
                tracing::warn!(error = %e, "KV event publish failed");
            }
        }
    }
}
