//! llmd-openai's integration tests: prompt rendering from a checkpoint directory
//! (`render`) and `http::serve_with` over real sockets (`axum`), each compiled with its
//! feature.
//!
//! One test binary, a module per area: every integration-test binary links the whole
//! dependency graph, so one per file cost CI gigabytes of disk and a link each.

#[cfg(feature = "render")]
mod prompt_renderer;
#[cfg(feature = "axum")]
mod serve;
