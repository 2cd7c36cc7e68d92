//! llmd end to end: the `llmd` binary, its commands and the crates together on loopback.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph (kube, tonic, aws-lc, ...), so one per file cost CI gigabytes of disk
//! and a link each. Add a module here rather than a file beside this directory.

mod common;

mod autoscale;
mod bench;
mod discovery;
mod gateway_process;
mod gguf;
mod kubernetes;
mod offload;
mod pd;
mod precise_pipeline;
mod serve;
mod sidecar;
mod up;
