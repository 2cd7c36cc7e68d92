//! Moving a cached prompt prefix between engines: [`Engine::export_prefix`] copies the
//! K/V of the cached full blocks of a prompt out, [`Engine::import_prefix`] writes them
//! into another engine's blocks and registers their hashes as if computed there, so a
//! later request with that prompt is served from them. What prefill/decode
//! disaggregation moves.

use llmd_kvcache::{BlockHash, RequestKeys, Sequence};

use super::Engine;
use crate::error::{EngineError, Result};
use crate::kv::KvBlockLayout;

/// The cached full blocks of a prompt prefix, copied out of an engine.
#[derive(Clone, PartialEq)]
pub struct ExportedPrefix {
    /// Layout of [`data`](Self::data).
    pub layout: KvBlockLayout,
    /// Tokens the blocks cover: the first `block_hashes.len() * layout.block_size`
    /// tokens of the prompt.
    pub token_ids: Vec<u32>,
    /// Extra hash keys the blocks were hashed with (LoRA, cache salt).
    pub keys: RequestKeys,
    /// Each block's hash, in order; the importer checks that its own hashing agrees.
    pub block_hashes: Vec<BlockHash>,
    /// The blocks' keys and values, in the layout [`KvBlockLayout`] documents.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ExportedPrefix {
    // The K/V bytes are summarized: they can be megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedPrefix")
            .field("layout", &self.layout)
            .field("tokens", &self.token_ids.len())
            .field("keys", &self.keys)
            .field("blocks", &self.block_hashes.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl ExportedPrefix {
    /// Blocks held.
    pub fn num_blocks(&self) -> usize {
        self.block_hashes.len()
    }
}

impl Engine {
    fn transfer_layout(&self) -> Result<KvBlockLayout> {
        let layout = self
            .backend
            .kv_layout()
            .ok_or_else(|| EngineError::KvTransfer("this engine's backend cannot export or import KV blocks".into()))?;
        if layout.block_size != self.cfg.block_size {
            return Err(EngineError::KvTransfer(format!(
                "the backend's blocks hold {} tokens but the engine's hold {}",
                layout.block_size, self.cfg.block_size
            )));
        }
        Ok(layout)
    }

    /// Copies out the longest cached prefix of `token_ids` (hashed with `keys`) in whole
    /// blocks: possibly none. Blocks are only cached once computed, so between steps
    /// every cached block holds valid K/V.
    pub fn export_prefix(&self, token_ids: &[u32], keys: &RequestKeys) -> Result<ExportedPrefix> {
        let layout = self.transfer_layout()?;
        let bs = self.cfg.block_size;
        let mut hashes = self.cfg.hasher.hash_prompt(token_ids, bs, keys)?;
        let blocks = self.kv.pool().peek_cached_prefix(&hashes);
        hashes.truncate(blocks.len());
        let data = self.backend.export_kv_blocks(&blocks)?;
        Ok(ExportedPrefix {
            layout,
            token_ids: token_ids[..blocks.len() * bs].to_vec(),
            keys: keys.clone(),
            block_hashes: hashes,
            data,
        })
    }

    /// Writes an exported prefix into free blocks and registers their hashes in the
    /// prefix cache exactly as if this engine had computed them (KV events included), so
    /// a later request with that prompt gets prefix hits. Blocks already cached here are
    /// kept, not rewritten. Returns the blocks written. All or nothing: a layout that
    /// differs, hashes that disagree, too few free blocks or a failed write leave the
    /// cache as it was.
    pub fn import_prefix(&mut self, prefix: ExportedPrefix) -> Result<usize> {
        let layout = self.transfer_layout()?;
        layout.check_compatible(&prefix.layout)?;
        let bs = self.cfg.block_size;
        let n = prefix.block_hashes.len();
        if prefix.token_ids.len() != n * bs {
            return Err(EngineError::KvTransfer(format!(
                "{} tokens for {n} blocks of {bs} tokens",
                prefix.token_ids.len()
            )));
        }
        if prefix.data.len() != n * layout.block_bytes() {
            return Err(EngineError::KvTransfer(format!(
                "{} bytes for {n} blocks of {} bytes",
                prefix.data.len(),
                layout.block_bytes()
            )));
        }
        if !self.cfg.enable_prefix_caching {
            return Err(EngineError::KvTransfer("prefix caching is off, so imported blocks could not be found".into()));
        }
        if self.cfg.hasher.hash_prompt(&prefix.token_ids, bs, &prefix.keys)? != prefix.block_hashes {
            return Err(EngineError::KvTransfer(
                "the exported block hashes differ from this engine's for the same tokens (hash algorithm or seed)"
                    .into(),
            ));
        }
        let cached = self.kv.pool().peek_cached_prefix(&prefix.block_hashes).len();
        if cached == n {
            return Ok(0);
        }
        // The blocks are allocated for a request of their own that is freed at once: the
        // manager then caches them (the hashes stay registered) and they become
        // evictable like any finished request's prefix.
        let id = loop {
            self.imports += 1;
            let id = format!("\u{0}import-{}", self.imports);
            if !self.reqs.contains_key(&id) && self.kv.num_tokens(&id).is_none() {
                break id;
            }
        };
        let seq = Sequence::new(id.clone(), prefix.token_ids, prefix.keys, bs, &self.cfg.hasher)?;
        let hit = self.kv.computed_blocks(&seq)?;
        let from = hit.blocks().len();
        let before = self.kv.prefix_stats();
        self.kv.allocate_slots(&seq, (n - from) * bs, hit)?;
        let after = self.kv.prefix_stats();
        self.import_stats.queries += after.queries - before.queries;
        self.import_stats.hits += after.hits - before.hits;
        let written = match self.kv.block_table(&id) {
            Some(table) if table.len() == n => {
                let blocks = table[from..].to_vec();
                let bytes = &prefix.data[from * layout.block_bytes()..];
                self.backend.import_kv_blocks(&blocks, &prefix.layout, bytes).map(|()| blocks.len())
            }
            table => {
                Err(EngineError::KvTransfer(format!("allocated {} blocks for {n}", table.map_or(0, <[u32]>::len))))
            }
        };
        if written.is_err()
            && let Err(e) = self.kv.uncache_since(&id, from)
        {
            tracing::warn!(error = %e, "cannot un-register the blocks of a failed import");
        }
        if let Err(e) = self.kv.free(&id) {
            tracing::warn!(error = %e, "cannot free the blocks of an import");
        }
        self.update_gauges();
        written
    }
}
