//! llmd-k8s's integration tests: the manifests `llmd k8s manifests` prints and the
//! projects' own, against the published CRDs; with the client, the watchers and leader
//! election through the real kube-rs client against the in-process API server.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each.

mod deploy_manifests;
mod manifests;

#[cfg(all(feature = "client", feature = "fake-apiserver"))]
mod fake_apiserver;
#[cfg(all(feature = "client", feature = "fake-apiserver"))]
mod watch;
