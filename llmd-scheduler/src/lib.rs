//! The llm-d endpoint picker (EPP), in Rust.
//!
//! For each request, pick the model-server endpoint that already holds the prompt's KV
//! cache and is not overloaded. The core is synchronous and runtime-free: endpoints and
//! their metrics ([`Endpoint`]), plugin traits ([`Filter`], [`Scorer`], [`Picker`],
//! [`ProfileHandler`], [`PickObserver`]) with llm-d's built-ins registered under llm-d's
//! type names ([`PluginRegistry`]), llm-d's `EndpointPickerConfig` files
//! ([`SchedulerConfig`]), and the pick itself ([`Scheduler`]), which logs each
//! candidate's per-scorer breakdown at debug level.
//!
//! Endpoints live in a [`mod@datastore`] that [`discovery`] sources write (a static list,
//! an endpoints file; Kubernetes in `llmd-k8s`) and pickers read. [`kvindex`] is the
//! precise prefix index fed by engines' KV events; [`scrape`] reads engines' Prometheus
//! metrics. The `runtime` feature adds the picker core (`picker`: datastore following,
//! scraping, KV subscriptions, in-flight accounting, metrics); `gateway` puts the HTTP
//! gateway on it and `ext-proc` the Envoy external processor, each without the other.
//!
//! ```
//! use llmd_scheduler::{Endpoint, LlmRequest, PluginRegistry, Role, Scheduler, SchedulerConfig};
//!
//! let yaml = r#"
//! apiVersion: inference.networking.x-k8s.io/v1alpha1
//! kind: EndpointPickerConfig
//! plugins:
//! - type: queue-scorer
//! - type: kv-cache-utilization-scorer
//! - type: max-score-picker
//! schedulingProfiles:
//! - name: default
//!   plugins:
//!   - pluginRef: queue-scorer
//!     weight: 2
//!   - pluginRef: kv-cache-utilization-scorer
//!   - pluginRef: max-score-picker
//! "#;
//! let config = SchedulerConfig::from_yaml(yaml, "epp.yaml", &PluginRegistry::with_builtins()).unwrap();
//! let scheduler = Scheduler::new(config, 0);
//! let mut busy = Endpoint::new("pod-a", "10.0.0.1:8000", Role::Both);
//! busy.metrics.waiting = 12;
//! let idle = Endpoint::new("pod-b", "10.0.0.2:8000", Role::Both);
//! let pick = scheduler.pick(&LlmRequest::new("r1", "llama", "Hello"), &[busy, idle]).unwrap();
//! assert_eq!(pick.destination().unwrap().endpoint, "pod-b");
//! ```

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod clock;
pub mod config;
pub mod datalayer;
pub mod datastore;
pub mod discovery;
pub mod endpoint;
mod error;
#[cfg(feature = "ext-proc")]
pub mod extproc;
pub mod flowcontrol;
#[cfg(feature = "gateway")]
pub mod gateway;
#[cfg(feature = "ext-proc")]
pub mod grpchealth;
pub mod health;
pub mod kvindex;
pub mod objectives;
pub mod parsers;
#[cfg(feature = "runtime")]
pub mod picker;
pub mod plugin;
pub mod plugins;
pub mod presets;
pub mod registry;
pub mod replication;
pub mod request;
pub mod scheduler;
pub mod scrape;
#[cfg(feature = "ext-proc")]
pub mod servingtls;
#[cfg(feature = "render")]
pub mod tokencache;
pub mod tokenproducer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{DiscoveryRef, Profile, SchedulerConfig};
pub use datastore::{Change, DatastoreReader, DatastoreWriter, RequestTicket, datastore};
pub use discovery::{Discovery, FileDiscovery, StaticDiscovery, SyncOutcome};
pub use endpoint::{AttributeValue, Endpoint, EndpointMetrics, EndpointStatus, InFlightLoad, Role};
pub use error::{Result, SchedulerError};
pub use health::{EndpointHealth, Failure, HealthConfig};
pub use plugin::{
    CycleState, Decider, Filter, PickObserver, Picker, PluginHandle, ProfileHandler, ProfilePick, ProfileRoles, Scorer,
};
pub use registry::PluginRegistry;
pub use replication::{HeldPrefix, ReplicationConfig, Replicator, WarmPlan};
pub use request::LlmRequest;
pub use scheduler::{PickResult, Scheduler};
