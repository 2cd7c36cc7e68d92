//! llmd-transfer's integration tests over real sockets: pulls over TCP (`tcp`) and the
//! P/D routing sidecar (`sidecar`), each compiled with its feature.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each.

#[cfg(feature = "sidecar")]
mod sidecar;
#[cfg(feature = "tcp")]
mod tcp;
