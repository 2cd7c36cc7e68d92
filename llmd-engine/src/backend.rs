//! The compute behind the engine. The scheduler and HTTP layer know only [`Backend`]:
//! [`ModelBackend`] runs a real model; the simulated backend (`sim`) stands in for it.

use crate::attention::{AttentionBackend, CpuAttention};
use crate::error::Result;
use crate::kv::{KvDtype, KvShape, PagedKvCache};
use crate::model::{LlamaModel, SeqInput};

/// What a backend returns for one sequence of a step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepLogits {
    /// No logits (a prefill chunk that does not finish the prompt).
    None,
    /// Logits over the vocabulary, to be sampled.
    Dense(Vec<f32>),
    /// A token chosen by the backend itself (the simulator).
    Token(u32),
}

/// Runs forward passes over the engine's KV blocks.
pub trait Backend: Send {
    /// Runs one step; returns one entry per input, in order.
    fn execute(&mut self, inputs: &[SeqInput<'_>]) -> Result<Vec<StepLogits>>;
    /// Vocabulary size (token ids must be below it).
    fn vocab_size(&self) -> usize;
    /// Longest context the model supports.
    fn max_context(&self) -> usize;
}

/// A real model on a paged KV cache.
pub struct ModelBackend {
    model: LlamaModel,
    cache: PagedKvCache,
    attention: Box<dyn AttentionBackend>,
}

impl std::fmt::Debug for ModelBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBackend").field("model", &self.model).field("kv", &self.cache.shape()).finish()
    }
}

impl ModelBackend {
    /// A backend with a cache of `num_blocks` blocks of `block_size` tokens, using the
    /// CPU attention kernel.
    pub fn new(model: LlamaModel, num_blocks: usize, block_size: usize, dtype: KvDtype) -> Result<Self> {
        let c = model.config();
        let shape = KvShape { num_blocks, block_size, kv_heads: c.num_key_value_heads, head_dim: c.head_dim };
        let cache = PagedKvCache::new(c.num_hidden_layers, shape, dtype)?;
        Ok(ModelBackend { model, cache, attention: Box::new(CpuAttention) })
    }

    /// Replaces the attention kernel (e.g. a GPU one).
    pub fn with_attention(mut self, attention: Box<dyn AttentionBackend>) -> Self {
        self.attention = attention;
        self
    }

    /// Bytes the KV cache of `num_blocks` blocks takes for this model.
    pub fn kv_bytes(model: &LlamaModel, num_blocks: usize, block_size: usize, dtype: KvDtype) -> usize {
        let c = model.config();
        KvShape { num_blocks, block_size, kv_heads: c.num_key_value_heads, head_dim: c.head_dim }
            .bytes(c.num_hidden_layers, dtype)
    }

    /// The model.
    pub fn model(&self) -> &LlamaModel {
        &self.model
    }
}

impl Backend for ModelBackend {
    fn execute(&mut self, inputs: &[SeqInput<'_>]) -> Result<Vec<StepLogits>> {
        let rows = self.model.forward(inputs, &mut self.cache, self.attention.as_ref())?;
        Ok(rows.into_iter().map(|r| if r.is_empty() { StepLogits::None } else { StepLogits::Dense(r) }).collect())
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn max_context(&self) -> usize {
        self.model.config().max_position_embeddings
    }
}
