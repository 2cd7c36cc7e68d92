//! The crate's error type.

/// What went wrong reading Kubernetes resources.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// A resource did not have the shape its kind requires.
    #[error("{kind} {name:?}: {reason}")]
    Invalid {
        /// The resource's kind.
        kind: &'static str,
        /// Its `namespace/name` (or what is known of it).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest could not be decoded.
    #[error("decoding {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest could not be written as YAML.
    #[error("writing {what} as YAML: {source}")]
    Yaml {
        /// What was being written.
        what: String,
        /// The encoder's error.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// A call to the API server failed.
    #[cfg(feature = "client")]
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// kube-rs's error (boxed: it is large, and errors travel by value).
        #[source]
        source: Box<kube::Error>,
    },
    /// Another replica changed the Lease between our read and our write.
    #[cfg(feature = "client")]
    #[error("lease {name}: {reason}")]
    Lease {
        /// The Lease's `namespace/name`.
        name: String,
        /// What happened.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = K8sError> = std::result::Result<T, E>;
