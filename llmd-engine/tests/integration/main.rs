//! llmd-engine's integration tests: the engine core, its handle, KV transfer and
//! offloading, checkpoint parity and the tokenizer; with the `server` feature, the HTTP
//! server, P/D between two servers on loopback and the official `openai` client.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each. A module
//! that needs a feature is compiled only with it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod disagg;
mod embedded_example;
mod engine;
mod gguf;
mod handle;
mod kv_transfer;
mod offload;
mod parity;
mod sim_checkpoint;
mod tokenizer;

#[cfg(feature = "server")]
mod common;
#[cfg(feature = "server")]
mod hardening;
#[cfg(feature = "server")]
mod openai_client;
#[cfg(feature = "server")]
mod pd_server;
#[cfg(feature = "server")]
mod server;
