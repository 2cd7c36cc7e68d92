//! llmd-kvcache's integration tests: vLLM's golden hashes and event bytes, the
//! request-level API, randomized pool operations against a reference model, and random
//! inputs checked against the Python libraries vLLM uses.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

mod golden;
mod manager;
mod pool_props;
mod python_interop;
