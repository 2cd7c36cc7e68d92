//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `llmd-engine`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A model or tokenizer config that is malformed or unsupported.
    #[error("{file}: {field}: {reason}")]
    Config {
        /// The file (e.g. `config.json`).
        file: String,
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A GGUF file that cannot be read: truncated, wrong magic, an unsupported version,
    /// tensor type or architecture, or metadata that is missing or malformed.
    #[error("GGUF file {path}: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A Hugging Face model id that could not be resolved to files.
    #[error("model {id}: {reason}")]
    Hub {
        /// The id (`ORG/NAME`).
        id: String,
        /// Why.
        reason: String,
    },

    /// A checkpoint missing a tensor, or with one of the wrong shape or type.
    #[error("weights: {0}")]
    Weights(String),

    /// Tokenizer loading, encoding, decoding or chat-template failures.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// Inputs to a forward pass that do not fit the model or the KV cache.
    #[error("invalid model input: {0}")]
    Input(String),

    /// A request parameter out of range (an OpenAI `invalid_request_error`).
    #[error("{param}: {message}")]
    InvalidParam {
        /// The parameter, as the API names it.
        param: String,
        /// What is wrong.
        message: String,
    },

    /// A prompt that cannot fit the model's context.
    #[error(
        "this model's maximum context length is {max} tokens, but the request needs {needed} ({prompt} prompt + {max_tokens} to generate)"
    )]
    ContextTooLong {
        /// `max_model_len`.
        max: usize,
        /// Prompt tokens.
        prompt: usize,
        /// Tokens requested.
        max_tokens: usize,
        /// Total.
        needed: usize,
    },

    /// A request id already in use.
    #[error("request id {0:?} is already in use")]
    DuplicateRequest(String),

    /// Too many requests waiting; retry later (HTTP 429).
    #[error("server is overloaded: {waiting} requests already waiting")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
    },

    /// The engine stopped (its loop exited or the backend failed).
    #[error("engine is not running: {0}")]
    EngineDead(String),

    /// Exported KV blocks whose layout differs from this engine's: importing them would
    /// misread every element, so they are rejected.
    #[error("KV block layout mismatch: {field} is {got} in the exported blocks but {expected} here")]
    KvLayoutMismatch {
        /// The differing field of [`KvBlockLayout`](crate::kv::KvBlockLayout).
        field: &'static str,
        /// This engine's value.
        expected: String,
        /// The exported blocks' value.
        got: String,
    },

    /// Exporting or importing KV blocks failed (unsupported backend, malformed buffer,
    /// blocks that do not exist, hashes that disagree).
    #[error("KV transfer: {0}")]
    KvTransfer(String),

    /// An error from the KV block manager.
    #[error(transparent)]
    KvCache(#[from] llmd_kvcache::KvCacheError),

    /// The accelerator (no driver, no device, a kernel that failed to compile or run).
    #[error("device: {0}")]
    Device(String),
}

impl EngineError {
    pub(crate) fn config(file: &str, field: &str, reason: impl Into<String>) -> Self {
        EngineError::Config { file: file.into(), field: field.into(), reason: reason.into() }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { path: path.into(), source }
    }
}

/// Tokenizer and chat-template errors keep the variants (and so the HTTP statuses and
/// messages) they had before rendering moved to `llmd-openai`.
impl From<llmd_openai::OpenAiError> for EngineError {
    fn from(e: llmd_openai::OpenAiError) -> Self {
        use llmd_openai::OpenAiError as E;
        match e {
            E::Io { path, source } => EngineError::Io { path, source },
            E::Config { file, reason } => EngineError::Config { file, field: "(document)".into(), reason },
            E::Tokenizer(m) | E::Template(m) => EngineError::Tokenizer(m),
            e @ (E::UnsupportedContentPart { .. } | E::EmptyPrompt | E::BatchedPrompt) => EngineError::InvalidParam {
                param: llmd_openai::ErrorBody::from(&e).error.param.unwrap_or_default(),
                message: e.to_string(),
            },
            e => EngineError::Tokenizer(e.to_string()),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
