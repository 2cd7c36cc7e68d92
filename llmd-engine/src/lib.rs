//! The llmd model server.
//!
//! **Not built yet.** This crate will hold a Llama-family model runner, paged-attention
//! kernels (the CPU kernel as the reference; CUDA and ROCm behind features), continuous
//! batching with chunked prefill over the `llmd-kvcache` block pool, an OpenAI-compatible
//! HTTP API talking to a `Backend` trait, vLLM-named Prometheus metrics, KV events, and
//! prefill/decode roles.
//!
//! Nothing is exported yet.
