//! Moving KV-cache blocks between engines, for prefill/decode disaggregation.
//!
//! **Not built yet.** This crate will hold the transfer agent: registered memory
//! regions, block descriptors, a `Transport` trait with TCP multi-stream and same-host
//! shared-memory implementations, completion notifications and timeouts.
//!
//! Nothing is exported yet.
