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
//! vLLM-named metrics and KV events; the [`EngineHandle`], which runs it on a thread
//! for any caller (no async runtime needed); the [`EngineBuilder`]; KV prefix export and
//! import between engines ([`Engine::export_prefix`], [`KvBlockLayout`]) — and, behind
//! the `server` feature, an OpenAI-compatible HTTP API over the handle. [`SimBackend`] replaces the model with a latency model on
//! an injected clock, for scheduler tests and benchmarks at scale.

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod attention;
pub mod backend;
pub mod builder;
pub mod builtin;
pub mod channel;
pub mod clock;
#[cfg(feature = "cuda")]
pub mod cuda;
mod detok;
pub mod engine;
mod error;
pub mod gguf;
#[cfg(any(feature = "cuda", feature = "rocm"))]
pub mod gpu;
pub mod handle;
#[cfg(feature = "hub")]
pub mod hub;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod offload;
pub mod quant;
#[cfg(feature = "rocm")]
pub mod rocm;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod sim;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod tokenizer;

pub use attention::{AttentionBackend, AttentionInput, CpuAttention, QueryPos};
pub use backend::{Backend, LogitsWanted, ModelBackend, SeqInput, StepLogits};
pub use builder::{BuiltEngine, Device, EngineBuilder, ModelSource};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    Engine, EngineConfig, ExportedPrefix, FinishReason, KvLoadFailurePolicy, KvTransfer, KvTransferOutcome, NewRequest,
    RemoteBlocks, RequestOutput,
};
pub use error::{EngineError, Result};
pub use handle::{EngineHandle, HandleConfig, RequestStream};
pub use kv::{KvBlockLayout, KvDtype, KvShape, PagedKvCache};
pub use metrics::EngineMetrics;
pub use model::{GenerationConfig, LlamaModel, ModelConfig};
pub use sampling::{Sampled, SamplingParams, TokenLogprob};
pub use sim::{LatencyModel, SimBackend};
pub use tokenizer::{ByteTokenizer, ChatMessage, ChatTemplate, HfTokenizer, PromptRenderer, Tokenize};
