//! The model runner: config, weights, RoPE, layers and the Llama-family decoder.

pub mod config;
mod layers;
mod llama;
mod rope;
pub mod weights;

pub use config::{GenerationConfig, ModelConfig, RopeScaling};
pub use layers::Linear;
pub use llama::{LlamaModel, LogitsWanted, SeqInput};
pub use rope::Rope;
