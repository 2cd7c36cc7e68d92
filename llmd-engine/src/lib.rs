//! The llmd model server.
//!
//! Built so far: the model runner — a Llama-family decoder (Llama, Mistral, Qwen2
//! layouts: RMSNorm, RoPE with linear / dynamic / llama3 / YaRN scaling, grouped-query
//! attention, SwiGLU, tied or untied embeddings) loading Hugging Face checkpoints
//! (`config.json`, single or sharded `safetensors` in f32/f16/bf16, `tokenizer.json`,
//! chat templates), running over a paged KV cache whose block tables come from
//! `llmd-kvcache`, with a CPU attention kernel behind the [`AttentionBackend`] trait; and
//! a built-in model that needs no files.
//!
//! On top of it: the [`Engine`] — continuous batching with chunked prefill under a token
//! budget, prefix-cache reuse, preemption by recompute, sampling and stop conditions,
//! vLLM-named metrics and KV events — and, behind the `server` feature, an
//! OpenAI-compatible HTTP API. [`SimBackend`] replaces the model with a latency model on
//! an injected clock, for scheduler tests and benchmarks at scale.

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod attention;
pub mod backend;
pub mod builtin;
pub mod clock;
mod detok;
pub mod engine;
mod error;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
pub mod tokenizer;

pub use attention::{AttentionBackend, AttentionInput, CpuAttention, QueryPos};
pub use backend::{Backend, ModelBackend, StepLogits};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineConfig, FinishReason, NewRequest, RequestOutput};
pub use error::{EngineError, Result};
pub use kv::{KvDtype, KvShape, PagedKvCache};
pub use metrics::EngineMetrics;
pub use model::{GenerationConfig, LlamaModel, LogitsWanted, ModelConfig, SeqInput};
pub use sampling::{Sampled, SamplingParams, TokenLogprob};
pub use sim::{LatencyModel, SimBackend};
pub use tokenizer::{ByteTokenizer, ChatMessage, ChatTemplate, HfTokenizer, Tokenize};
