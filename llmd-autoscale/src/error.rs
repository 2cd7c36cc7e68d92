//! The crate's error.

/// What can go wrong in `llmd-autoscale`.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AutoscaleError {
    /// A setting is out of range; names the setting and why.
    #[error("autoscaler config: {field}: {reason}")]
    Config {
        /// The setting, as it is spelled in the config (e.g. `kvCacheThreshold`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot that cannot be decided on (e.g. a replica of an unknown variant).
    #[error("autoscaler input: {0}")]
    Input(String),
}

impl AutoscaleError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        AutoscaleError::Config { field, reason: reason.into() }
    }
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, AutoscaleError>;
