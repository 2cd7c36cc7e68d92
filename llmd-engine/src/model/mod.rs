//! The model runner: config, weights, RoPE, layers and the Llama-family decoder.

pub mod config;
pub mod gguf;
pub(crate) mod layers;
mod llama;
mod rope;
pub mod weights;

pub use config::{GenerationConfig, ModelConfig, RopeScaling};
pub use layers::Linear;
// The step contract lives with the backend; re-exported here for older paths.
pub use crate::backend::{LogitsWanted, SeqInput};
pub use llama::{LayerWeights, LlamaModel, ModelWeights};
pub use rope::Rope;
