//! The crate's error type.

/// Everything that can go wrong in `llmd-scheduler`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchedulerError {
    /// A configuration file that does not parse or does not make sense.
    #[error("{file}: {what}: {reason}")]
    Config {
        /// The file (or `<inline>`).
        file: String,
        /// The plugin, profile or field at fault.
        what: String,
        /// Why.
        reason: String,
    },

    /// No endpoint is left after filtering, or none is registered.
    #[error("no endpoint can serve this request: {0}")]
    NoEndpoint(String),

    /// A request the scheduler cannot route (e.g. no model).
    #[error("invalid request: {0}")]
    Request(String),
}

impl SchedulerError {
    /// The HTTP status a front end answers with: 503 when no endpoint can serve the
    /// request, 400 for a request that cannot be routed, 500 for a configuration fault.
    pub fn http_status(&self) -> u16 {
        match self {
            SchedulerError::NoEndpoint(_) => 503,
            SchedulerError::Request(_) => 400,
            SchedulerError::Config { .. } => 500,
        }
    }

    pub(crate) fn config(file: &str, what: impl Into<String>, reason: impl Into<String>) -> Self {
        SchedulerError::Config { file: file.into(), what: what.into(), reason: reason.into() }
    }
}

/// The crate's result type.
pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
