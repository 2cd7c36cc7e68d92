//! The OpenAI / vLLM wire format and prompt rendering, in one place for every part of
//! llmd that speaks it: the engine's HTTP server, the scheduler's gateway and Envoy
//! ext-proc, and the `llmd bench` client.
//!
//! * [`request`]: completions and chat request bodies ([`CompletionRequest`],
//!   [`ChatCompletionRequest`], [`ChatMessage`] with string or part-list content, the
//!   prompt forms of [`Prompt`]), and lenient readers of raw JSON bodies for routers
//!   ([`prompt_text`], [`prompt_token_ids`], [`chat_messages`]).
//! * [`response`]: completion and chat responses, [`Usage`] with
//!   `prompt_tokens_details.cached_tokens`, logprobs as vLLM emits them.
//! * [`generate`]: vLLM's token-in / token-out [`GenerateRequest`], what its render
//!   routes (`/v1/completions/render`, `/v1/chat/completions/render`) answer with: the
//!   prompt's token ids and the sampling parameters the engine will run.
//! * [`stream`]: stream chunk types and an SSE decoder ([`SseDecoder`], [`parse_data`]).
//! * [`error_body`]: `{"error": {"message", "type", "param", "code"}}` bodies with the
//!   type names vLLM uses for each HTTP status ([`ErrorBody`], [`ErrorKind`]).
//! * [`json`]: request bodies as Python writes them ([`replace_lone_surrogates`] turns a
//!   lone UTF-16 surrogate, which `serde_json` refuses, into U+FFFD; [`json::from_slice`]).
//! * `http` (feature `axum`): error bodies as axum responses and `http::serve_with`,
//!   which serves a router with `TCP_NODELAY`, header-read, idle and body timeouts, a
//!   connection limit (a clear 503 beyond it) and a graceful drain; `raise_fd_limit`.
//! * `render` (feature `render`): the `Tokenize` trait, Hugging Face tokenizers,
//!   chat templates, and `PromptRenderer`, which loads both from a checkpoint
//!   directory and turns a request into the token ids an engine computes on.
//!
//! The default build needs only `serde`, `serde_json` and `thiserror`, and no async
//! runtime or HTTP stack: HTTP frameworks wrap these types at the edge.
//!
//! ```
//! use llmd_openai::{ChatCompletionRequest, ErrorBody, ErrorKind};
//!
//! let req: ChatCompletionRequest = serde_json::from_str(
//!     r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}"#,
//! )?;
//! assert_eq!(req.messages[0].text(), "Hi");
//! let err = ErrorBody::new(ErrorKind::RateLimit, "server is overloaded");
//! assert_eq!(err.status(), 429);
//! # Ok::<(), serde_json::Error>(())
//! ```

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod error;
pub mod error_body;
pub mod generate;
#[cfg(feature = "axum")]
pub mod http;
pub mod json;
#[cfg(feature = "render")]
pub mod render;
pub mod request;
pub mod response;
pub mod stream;

pub use error::{OpenAiError, Result};
pub use error_body::{ErrorBody, ErrorDetail, ErrorKind};
pub use generate::{GenerateRequest, GenerateSamplingParams};
pub use json::replace_lone_surrogates;
#[cfg(feature = "render")]
pub use render::{ChatTemplate, DEFAULT_CHAT_TEMPLATE, HfTokenizer, PromptRenderer, Tokenize};
pub use request::{
    ChatCompletionRequest, ChatMessage, CommonParams, CompletionRequest, ContentPart, MessageContent, Prompt,
    SinglePrompt, Stop, StreamOptions, chat_messages, prompt_text, prompt_token_ids,
};
pub use response::{
    ChatChoice, ChatCompletionResponse, ChatLogprobs, ChatTokenLogprob, CompletionChoice, CompletionLogprobs,
    CompletionResponse, PromptTokensDetails, TopLogprob, Usage,
};
pub use stream::{ChatChunkChoice, ChatCompletionChunk, CompletionChunk, Delta, SseDecoder, StreamItem, parse_data};
