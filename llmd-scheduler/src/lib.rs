//! The inference scheduler (Endpoint Picker, EPP) of llmd.
//!
//! **Not built yet.** This crate will hold, as synchronous runtime-free code: the
//! datastore of endpoints and their scraped metrics, the plugin traits (`Filter`,
//! `Scorer`, `Picker`, `ProfileHandler`) and llm-d's built-in plugins, parsing of llm-d's
//! `EndpointPickerConfig` YAML, the global prefix index fed by engines' KV events (built
//! on `llmd-kvcache`), and the pick API. Behind features it will offer the Envoy
//! `ext_proc` gRPC server and an HTTP gateway.
//!
//! Nothing is exported yet: the API lands with the scheduler issue rather than as a
//! placeholder users could come to depend on.
