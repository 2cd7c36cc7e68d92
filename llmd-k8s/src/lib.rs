//! Kubernetes integration.
//!
//! **Not built yet.** This crate will hold the `InferencePool` and `InferenceObjective`
//! CRD types, a pod watcher feeding the scheduler's datastore, leader election, replica
//! actuation, and the manifests under `deploy/`.
//!
//! Nothing is exported yet.
