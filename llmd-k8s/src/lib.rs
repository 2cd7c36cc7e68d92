//! Kubernetes integration for llmd: the Gateway API Inference Extension's
//! `InferencePool` (v1 and the legacy v1alpha2) and llm-d's `InferenceObjective` as
//! kube-rs types that read the projects' own manifests and generate their CRDs
//! ([`resources`]), and the rule by which a pool's pods become the scheduler's endpoints
//! ([`discovery`]), as llm-d's endpoint picker applies it, kept in the scheduler's
//! datastore by a [`pool::PoolDiscovery`] as pods come, change and go.
//!
//! ```
//! use llmd_k8s::resources::{InferencePool, PoolView};
//! use llmd_k8s::discovery::pool_endpoints;
//! use k8s_openapi::api::core::v1::Pod;
//!
//! let pool: InferencePool = serde_json::from_value(serde_json::json!({
//!     "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
//!     "metadata": {"name": "qwen", "namespace": "llm"},
//!     "spec": {"selector": {"matchLabels": {"app": "vllm"}}, "targetPorts": [{"number": 8000}],
//!              "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002}}},
//! })).unwrap();
//! let pool = PoolView::from_v1(&pool).unwrap();
//! let pod: Pod = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "vllm-0", "namespace": "llm", "labels": {"app": "vllm", "llm-d.ai/role": "decode"}},
//!     "status": {"podIP": "10.0.0.7", "conditions": [{"type": "Ready", "status": "True"}]},
//! })).unwrap();
//! let eps = pool_endpoints(&pool, [&pod]);
//! assert_eq!(eps[0].id, "llm/vllm-0-rank-0");
//! assert_eq!(eps[0].address, "10.0.0.7:8000");
//! ```

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod autoscaling;
pub mod discovery;
#[cfg(feature = "client")]
pub mod election;
pub mod error;
#[cfg(feature = "fake-apiserver")]
pub mod fake;
pub mod manifests;
pub mod pool;
pub mod resources;
#[cfg(feature = "client")]
pub mod watch;

pub use error::{K8sError, Result};
// The versions these types are built on, for callers that build clients or objects.
pub use k8s_openapi;
pub use kube;
