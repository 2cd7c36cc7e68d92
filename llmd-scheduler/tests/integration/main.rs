//! llmd-scheduler's integration tests: config files, picks, flow control, and (with the
//! runtime features) the gateway, ext-proc, TLS and the KV-event pipeline end to end.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each. A module
//! that needs a feature is compiled only with it.

mod config;
mod flowcontrol;
mod pick;

#[cfg(feature = "runtime")]
mod burst;
#[cfg(feature = "runtime")]
mod multicluster;

#[cfg(feature = "gateway")]
mod gateway;
#[cfg(feature = "gateway")]
mod tokens;

#[cfg(feature = "ext-proc")]
mod extproc;
#[cfg(feature = "ext-proc")]
mod servingtls;
