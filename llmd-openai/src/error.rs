//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in `llmd-openai`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAiError {
    /// A chat content part this crate cannot turn into text (an image, audio, …).
    #[error("content part type {} is not supported (only text)", .kind.as_deref().unwrap_or("(missing)"))]
    UnsupportedContentPart {
        /// The part's `type`, or `None` when it has none or a text part has no `text`.
        kind: Option<String>,
    },

    /// A `prompt` that holds no prompt (`[]`).
    #[error("the prompt is empty")]
    EmptyPrompt,

    /// A `prompt` that holds several prompts where one is expected.
    #[error("batched prompts are not supported; send one prompt per request")]
    BatchedPrompt,

    /// A stream event whose data is neither `[DONE]` nor the expected JSON.
    #[error("stream event data is not a valid chunk: {0}")]
    StreamData(#[source] serde_json::Error),

    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },

    /// A malformed tokenizer config file.
    #[error("{file}: {reason}")]
    Config {
        /// The file (e.g. `tokenizer_config.json`).
        file: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Tokenizer loading, encoding or decoding failures.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A request body that did not arrive whole within the server's body-read timeout.
    #[error("the request body was not received within {after:?}")]
    BodyReadTimeout {
        /// The timeout.
        after: std::time::Duration,
    },

    /// A chat template that does not parse or fails while rendering (the message says
    /// which: `chat template does not parse: …` or `chat template failed: …`).
    #[error("{0}")]
    Template(String),
}

/// The crate's result type.
pub type Result<T, E = OpenAiError> = std::result::Result<T, E>;
