//! llmd: Kubernetes-native distributed LLM inference, in Rust.
//!
//! This facade re-exports each llmd crate behind a cargo feature of the same name (all
//! on by default), so `llmd::kvcache::BlockHasher` and `llmd_kvcache::BlockHasher` are
//! the same item. Depend on a single crate (`cargo add llmd-kvcache`) to take one piece
//! alone, or on the facade without default features and with the pieces you want
//! (`--no-default-features --features kvcache` builds no async runtime, HTTP or gRPC
//! stack); the `cli` feature is the `llmd` binary and its in-process cluster and bench.

#[cfg(feature = "autoscale")]
pub use llmd_autoscale as autoscale;
#[cfg(feature = "engine")]
pub use llmd_engine as engine;
#[cfg(feature = "k8s")]
pub use llmd_k8s as k8s;
#[cfg(feature = "kvcache")]
pub use llmd_kvcache as kvcache;
#[cfg(feature = "openai")]
pub use llmd_openai as openai;
#[cfg(feature = "scheduler")]
pub use llmd_scheduler as scheduler;
#[cfg(feature = "transfer")]
pub use llmd_transfer as transfer;

#[cfg(feature = "cli")]
pub mod cluster;

#[cfg(all(feature = "cli", feature = "autoscale"))]
pub mod autoscaler;

#[cfg(feature = "cli")]
pub mod bench;

#[cfg(feature = "cli")]
pub mod shutdown;
