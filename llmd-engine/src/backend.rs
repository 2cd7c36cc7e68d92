//! The compute behind the engine. The scheduler and HTTP layer know only [`Backend`]:
//! [`ModelBackend`] runs a real model; the simulated backend (`sim`) stands in for it.
//!
//! The contract of a step lives here: the engine hands a backend one [`SeqInput`] per
//! scheduled sequence and gets one [`StepLogits`] back for each. Backends also copy KV
//! blocks out and in ([`Backend::export_kv_blocks`], [`Backend::import_kv_blocks`]) in
//! the layout [`KvBlockLayout`] documents, which is how a prefix moves between engines.

use crate::attention::{AttentionBackend, CpuAttention};
use crate::error::{EngineError, Result};
use crate::kv::{KvBlockLayout, KvDtype, KvShape, PagedKvCache};
use crate::model::LlamaModel;

/// Which logits a sequence wants back from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that does not end the prompt).
    None,
    /// The last token's (to sample the next token).
    Last,
    /// Every token's (prompt logprobs, tests).
    All,
}

/// One sequence's part of a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// New tokens to run.
    pub tokens: &'a [u32],
    /// Tokens of this sequence already in the KV cache (position of `tokens[0]`).
    pub start: usize,
    /// Blocks holding the sequence, enough for `start + tokens.len()` tokens.
    pub block_table: &'a [u32],
    /// Logits to return.
    pub logits: LogitsWanted,
}

/// The rows of a step's tokens (all sequences' tokens, in order) whose logits are
/// wanted, and how many of them each sequence has: one output projection over just
/// those rows serves the whole batch.
pub(crate) fn logits_rows(seqs: &[SeqInput<'_>]) -> (Vec<usize>, Vec<usize>) {
    let mut rows = Vec::new();
    let mut counts = Vec::with_capacity(seqs.len());
    let mut row = 0;
    for s in seqs {
        let n = s.tokens.len();
        let before = rows.len();
        match s.logits {
            LogitsWanted::None => {}
            LogitsWanted::Last => rows.extend((n > 0).then_some(row + n - 1)),
            LogitsWanted::All => rows.extend(row..row + n),
        }
        counts.push(rows.len() - before);
        row += n;
    }
    (rows, counts)
}

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

    /// For a simulated backend: the time moving one token's K/V between engines takes,
    /// which the decode side spends before queueing a request whose prompt was
    /// prefilled elsewhere. `None` (the default): transfers take the time they take.
    fn simulated_transfer_per_token(&self) -> Option<std::time::Duration> {
        None
    }

    /// For a simulated backend, the time copying `tokens` tokens' K/V back from KV
    /// offloading's lower tiers takes, `from_disk` of them read from disk first; the
    /// request waits that long before it runs. `None` (the default): copies take the
    /// time they take.
    fn simulated_onboard_time(&self, tokens: usize, from_disk: usize) -> Option<std::time::Duration> {
        let _ = (tokens, from_disk);
        None
    }

    /// Bytes one KV block takes (all layers, K and V): what KV offloading's capacities
    /// count. By default the exported size ([`kv_layout`](Self::kv_layout)).
    fn kv_block_bytes(&self) -> Option<usize> {
        self.kv_layout().map(|l| l.block_bytes())
    }

    /// The layout of this backend's exported KV blocks; `None` (the default) when it
    /// cannot export or import them.
    fn kv_layout(&self) -> Option<KvBlockLayout> {
        None
    }

    /// Copies the keys and values of `blocks` (all layers) into a host buffer, in the
    /// layout [`KvBlockLayout`] documents.
    fn export_kv_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        let _ = blocks;
        Err(EngineError::KvTransfer("this backend cannot export KV blocks".into()))
    }

    /// [`export_kv_blocks`](Self::export_kv_blocks) into `out` (replacing its contents),
    /// reusing its memory where the backend can: KV offloading copies every evicted
    /// block into a host-memory slot it reuses.
    fn export_kv_blocks_into(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<()> {
        *out = self.export_kv_blocks(blocks)?;
        Ok(())
    }

    /// Writes a buffer exported with `layout` into `blocks`, rejecting a layout that
    /// differs from [`kv_layout`](Self::kv_layout) and a buffer of the wrong length
    /// before writing anything.
    fn import_kv_blocks(&mut self, blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        let _ = (blocks, layout, data);
        Err(EngineError::KvTransfer("this backend cannot import KV blocks".into()))
    }
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
        // The CPU runs the model: make its kernels' weight layouts now, not in the first
        // request.
        model.prepare();
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

    fn kv_layout(&self) -> Option<KvBlockLayout> {
        Some(self.cache.block_layout())
    }

    fn export_kv_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        self.cache.export_blocks(blocks)
    }

    fn export_kv_blocks_into(&self, blocks: &[u32], out: &mut Vec<u8>) -> Result<()> {
        self.cache.export_blocks_into(blocks, out)
    }

    fn import_kv_blocks(&mut self, blocks: &[u32], layout: &KvBlockLayout, data: &[u8]) -> Result<()> {
        self.cache.import_blocks(blocks, layout, data)
    }
}
