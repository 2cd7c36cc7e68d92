//! Moving a cached prompt prefix between engines: [`Engine::export_prefix`] copies the
//! K/V of the cached full blocks of a prompt out, [`Engine::import_prefix`] writes them
//! into another engine's blocks and registers their hashes as if computed there, so a
//! later request with that prompt is served from them.
//!
//! Prefill/decode disaggregation goes through the request itself ([`KvTransfer`]): a
//! prefill request marked [`KvTransfer::Export`] copies its prompt's full blocks out
//! when it ends length-capped (as vLLM's NixlConnector answers only then), and a decode
//! request carrying [`RemoteBlocks`] has them written into its own blocks when it is
//! admitted, after whatever prefix this engine had cached, so only the rest is computed.
//! What happened is on the request's last output ([`KvTransferOutcome`]).

use bytes::Bytes;
use llmd_kvcache::{BlockHash, RequestKeys, Sequence};

use super::{Engine, FinishReason};
use crate::error::{EngineError, Result};
use crate::kv::KvBlockLayout;

/// What to do when KV computed elsewhere cannot be used (vLLM's
/// `kv_load_failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvLoadFailurePolicy {
    /// Compute the prompt here instead (our default: the request still succeeds).
    #[default]
    Recompute,
    /// Fail the request (vLLM's default).
    Fail,
}

impl std::str::FromStr for KvLoadFailurePolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "recompute" => Ok(KvLoadFailurePolicy::Recompute),
            "fail" => Ok(KvLoadFailurePolicy::Fail),
            other => Err(format!("unknown kv_load_failure_policy {other:?} (recompute, fail)")),
        }
    }
}

impl std::fmt::Display for KvLoadFailurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvLoadFailurePolicy::Recompute => "recompute",
            KvLoadFailurePolicy::Fail => "fail",
        })
    }
}

/// Blocks of a request's prompt computed by another engine (pulled before the request
/// was queued): prompt blocks `first_block..first_block + blocks.len()`.
#[derive(Clone, PartialEq)]
pub struct RemoteBlocks {
    /// The exporting engine's layout; refused at admission unless it matches ours.
    pub layout: KvBlockLayout,
    /// Index of the first block in the prompt (those before it were cached here when
    /// the pull started).
    pub first_block: usize,
    /// One buffer of [`KvBlockLayout::block_bytes`] per block.
    pub blocks: Vec<Bytes>,
    /// What to do if they cannot be used.
    pub on_failure: KvLoadFailurePolicy,
}

impl std::fmt::Debug for RemoteBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteBlocks")
            .field("layout", &self.layout)
            .field("first_block", &self.first_block)
            .field("blocks", &self.blocks.len())
            .field("on_failure", &self.on_failure)
            .finish()
    }
}

/// A request's part in moving KV between engines.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum KvTransfer {
    /// None: computed and decoded here.
    #[default]
    None,
    /// Prefill for a decode elsewhere: when the request ends length-capped, its
    /// prompt's full blocks are copied out ([`KvTransferOutcome::Exported`]).
    Export,
    /// Decode of a prompt prefilled elsewhere: these blocks are written in at admission.
    Import(Box<RemoteBlocks>),
}

/// What a transfer did, on the request's last output.
// It travels boxed (`RequestOutput::kv_transfer`), so the large variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum KvTransferOutcome {
    /// The prompt's full blocks, copied out for a decode elsewhere, and their ids here
    /// (vLLM's `remote_block_ids`).
    Exported {
        /// The blocks' contents and hashes.
        prefix: ExportedPrefix,
        /// Their block ids in this engine's pool.
        block_ids: Vec<u32>,
    },
    /// Remote blocks written in (none when this engine had them all cached already).
    Imported {
        /// Blocks written.
        blocks: usize,
    },
    /// The remote blocks could not be used.
    LoadFailed {
        /// Why.
        reason: String,
        /// Whether the prompt was computed here instead (else the request failed).
        recomputed: bool,
    },
}

/// How an admission uses a request's remote blocks.
pub(super) enum ImportPlan {
    /// Write prompt blocks from the local prefix hit up to `to`.
    Write { to: usize },
    /// Nothing to write: this engine has them cached.
    Nothing,
    /// They cannot be used.
    Refuse(String),
}

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

    /// The data as one buffer per block (split without copying).
    pub fn into_block_buffers(self) -> Vec<Bytes> {
        let n = self.num_blocks();
        let all = Bytes::from(self.data);
        let size = all.len().checked_div(n).unwrap_or(0);
        (0..n).map(|i| all.slice(i * size..(i + 1) * size)).collect()
    }
}

impl Engine {
    /// The layout of the blocks this engine exports and imports; `None` when its
    /// backend cannot move blocks.
    pub fn kv_block_layout(&self) -> Option<KvBlockLayout> {
        self.transfer_layout().ok()
    }

    /// For a simulated backend, the modelled time to move one token's K/V
    /// ([`Backend::simulated_transfer_per_token`](crate::Backend::simulated_transfer_per_token)).
    pub fn simulated_transfer_per_token(&self) -> Option<std::time::Duration> {
        self.backend.simulated_transfer_per_token()
    }

    /// How many leading full blocks of `token_ids` (hashed with `keys`) this engine has
    /// cached: what a decode need not pull.
    pub fn cached_prefix_blocks(&self, token_ids: &[u32], keys: &RequestKeys) -> Result<usize> {
        if !self.cfg.enable_prefix_caching {
            return Ok(0);
        }
        let hashes = self.cfg.hasher.hash_prompt(token_ids, self.cfg.block_size, keys)?;
        Ok(self.kv.pool().peek_cached_prefix(&hashes).len())
    }

    /// The plan for a waiting request's remote blocks, given `local` blocks of local
    /// prefix hit.
    pub(super) fn import_plan(&self, r: &RemoteBlocks, prompt_len: usize, local: usize) -> ImportPlan {
        let layout = match self.transfer_layout() {
            Ok(l) => l,
            Err(e) => return ImportPlan::Refuse(e.to_string()),
        };
        if let Err(e) = layout.check_compatible(&r.layout) {
            return ImportPlan::Refuse(e.to_string());
        }
        if let Some((i, b)) = r.blocks.iter().enumerate().find(|(_, b)| b.len() != layout.block_bytes()) {
            return ImportPlan::Refuse(format!(
                "remote block {} has {} bytes, expected {}",
                r.first_block + i,
                b.len(),
                layout.block_bytes()
            ));
        }
        // As for a local hit, the prompt's last token is always computed here (its
        // logits give the first token).
        let to = (r.first_block + r.blocks.len()).min(prompt_len.saturating_sub(1) / self.cfg.block_size);
        if to <= local {
            ImportPlan::Nothing
        } else if local < r.first_block {
            ImportPlan::Refuse(format!(
                "prompt blocks {local}..{} were cached here when the pull started and have been evicted since",
                r.first_block
            ))
        } else {
            ImportPlan::Write { to }
        }
    }

    /// Writes remote blocks `from..to` into the request's blocks (allocated).
    pub(super) fn write_remote(&mut self, id: &str, r: &RemoteBlocks, from: usize, to: usize) -> Result<()> {
        let table =
            self.kv.block_table(id).ok_or_else(|| EngineError::KvTransfer(format!("request {id} holds no blocks")))?;
        let targets = table
            .get(from..to)
            .ok_or_else(|| EngineError::KvTransfer(format!("request {id} holds {} blocks, need {to}", table.len())))?
            .to_vec();
        for (block, data) in targets.iter().zip(&r.blocks[from - r.first_block..to - r.first_block]) {
            self.backend.import_kv_blocks(std::slice::from_ref(block), &r.layout, data)?;
        }
        Ok(())
    }

    /// What a request's transfer did, for its last output; exports its prompt blocks if
    /// it was a prefill for a decode elsewhere that ended length-capped.
    pub(super) fn transfer_outcome(&mut self, id: &str, reason: FinishReason) -> Option<Box<KvTransferOutcome>> {
        let st = self.reqs.get_mut(id)?;
        if !matches!(st.transfer, KvTransfer::Export) {
            return st.transfer_outcome.take().map(Box::new);
        }
        if reason != FinishReason::Length {
            return None;
        }
        let full = st.prompt_len / self.cfg.block_size;
        let tokens = st.seq.tokens()[..full * self.cfg.block_size].to_vec();
        let hashes = st.seq.block_hashes()[..full.min(st.seq.block_hashes().len())].to_vec();
        let keys = st.seq.keys().clone();
        let exported = self.transfer_layout().and_then(|layout| {
            let block_ids = self.kv.block_table(id).and_then(|t| t.get(..full)).unwrap_or(&[]).to_vec();
            if block_ids.len() != full || hashes.len() != full {
                return Err(EngineError::KvTransfer(format!("request {id} holds fewer than {full} prompt blocks")));
            }
            let data = self.backend.export_kv_blocks(&block_ids)?;
            let prefix = ExportedPrefix { layout, token_ids: tokens, keys, block_hashes: hashes, data };
            Ok(KvTransferOutcome::Exported { prefix, block_ids })
        });
        match exported {
            Ok(o) => Some(Box::new(o)),
            Err(e) => {
                tracing::warn!(request = id, error = %e, "cannot export the prompt's blocks for the decode side");
                None
            }
        }
    }

    pub(super) fn transfer_layout(&self) -> Result<KvBlockLayout> {
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
        self.store_evicted();
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
