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
}

/// The crate's result type.
pub type Result<T, E = K8sError> = std::result::Result<T, E>;
