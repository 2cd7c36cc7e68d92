//! Prefix block hashing, identical to vLLM's v1 prefix caching.
//!
//! A prompt is cut into full blocks of `block_size` tokens. Block `i`'s hash is
//! `H(cbor((parent, tokens_i, extra_keys_i)))`, where `parent` is block `i-1`'s hash, or
//! for the first block `NONE_HASH = H(cbor(seed))`. `H` is SHA-256 (`sha256_cbor`) or
//! XXH3-128 (`xxhash_cbor`) over canonical CBOR, exactly as `vllm.utils.hashing` computes
//! them; the seed follows `vllm.v1.core.kv_cache_utils.resolve_none_hash_seed`. Only full
//! blocks are hashed: a partial last block has no hash.
//!
//! vLLM's other two algorithms, `sha256` and `xxhash`, hash a Python *pickle* of the
//! tuple. Pickle bytes depend on the Python version and object identity details, so they
//! cannot be reproduced outside Python; engines whose hashes llmd must match should run
//! with `--prefix-caching-hash-algo sha256_cbor` (vLLM's and llmd's default) or
//! `xxhash_cbor`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::error::{KvCacheError, Result};
use crate::extra_keys::{ExtraKey, RequestKeys};
use crate::{cbor, sha256};

/// The seed vLLM uses for cryptographic hashes when `PYTHONHASHSEED` is unset
/// (`DEFAULT_NONE_HASH_SEED`), so independent processes agree on block hashes.
pub const DEFAULT_NONE_HASH_SEED: &str = "vllm-none-hash";

/// A prefix-caching hash function, named as vLLM's `--prefix-caching-hash-algo` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgo {
    /// SHA-256 of canonical CBOR (`sha256_cbor`): 32-byte hashes, reproducible across
    /// processes and languages. The default.
    #[default]
    Sha256Cbor,
    /// XXH3-128 of canonical CBOR (`xxhash_cbor`): 16-byte hashes, much faster, but not
    /// collision resistant, so vLLM seeds it randomly unless `PYTHONHASHSEED` is set.
    XxHashCbor,
}

impl HashAlgo {
    /// vLLM's name for the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha256Cbor => "sha256_cbor",
            HashAlgo::XxHashCbor => "xxhash_cbor",
        }
    }

    /// Whether the algorithm is collision resistant (only then may the seed be public).
    pub fn is_cryptographic(self) -> bool {
        matches!(self, HashAlgo::Sha256Cbor)
    }

    /// Length in bytes of the hashes this algorithm produces.
    pub fn output_len(self) -> usize {
        match self {
            HashAlgo::Sha256Cbor => 32,
            HashAlgo::XxHashCbor => 16,
        }
    }

    /// Hashes already-encoded CBOR bytes.
    pub fn digest(self, cbor_bytes: &[u8]) -> BlockHash {
        match self {
            HashAlgo::Sha256Cbor => {
                let d = Sha256::digest(cbor_bytes);
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(&d);
                BlockHash { len: 32, bytes }
            }
            HashAlgo::XxHashCbor => {
                // xxhash's `xxh3_128_digest` is the 128-bit value in big-endian order.
                let d = xxhash_rust::xxh3::xxh3_128(cbor_bytes).to_be_bytes();
                let mut bytes = [0u8; 32];
                bytes[..16].copy_from_slice(&d);
                BlockHash { len: 16, bytes }
            }
        }
    }
}

impl FromStr for HashAlgo {
    type Err = KvCacheError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sha256_cbor" => Ok(HashAlgo::Sha256Cbor),
            "xxhash_cbor" => Ok(HashAlgo::XxHashCbor),
            other => Err(KvCacheError::UnknownHashFunction(other.to_string())),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hash of one full KV block: 32 bytes for `sha256_cbor`, 16 for `xxhash_cbor`.
///
/// Stored inline (no allocation); compares and hashes by its bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockHash {
    len: u8,
    bytes: [u8; 32],
}

impl BlockHash {
    /// Longest hash the type can hold.
    pub const MAX_LEN: usize = 32;

    /// Wraps raw hash bytes (1 to 32 of them), as found in a KV event.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.is_empty() || b.len() > Self::MAX_LEN {
            return None;
        }
        let mut bytes = [0u8; 32];
        bytes[..b.len()].copy_from_slice(b);
        Some(BlockHash { len: b.len() as u8, bytes })
    }

    /// The hash bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The 64-bit form vLLM publishes in KV events when
    /// `VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES` is set: the hash read as a big-endian
    /// integer, masked to its low 64 bits (that is, its last eight bytes).
    pub fn to_u64(&self) -> u64 {
        let b = self.as_bytes();
        let tail = &b[b.len().saturating_sub(8)..];
        tail.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    }

    /// Lower-case hex of the bytes.
    pub fn to_hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(self.len as usize * 2);
        for b in self.as_bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl std::hash::Hash for BlockHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.as_bytes());
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", self.to_hex())
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl AsRef<[u8]> for BlockHash {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Computes vLLM-compatible block hashes for one algorithm and seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHasher {
    algo: HashAlgo,
    seed: String,
    none_hash: BlockHash,
}

impl BlockHasher {
    /// A hasher whose root parent is derived from `seed` (vLLM: the `PYTHONHASHSEED`
    /// value, or [`DEFAULT_NONE_HASH_SEED`]).
    pub fn new(algo: HashAlgo, seed: &str) -> Self {
        let mut buf = Vec::with_capacity(seed.len() + 9);
        cbor::text(&mut buf, seed);
        BlockHasher { algo, seed: seed.to_string(), none_hash: algo.digest(&buf) }
    }

    /// The hasher vLLM's `init_none_hash` sets up, given the value of `PYTHONHASHSEED`
    /// (if any) and 32 bytes of randomness (used only for non-cryptographic algorithms
    /// without a seed, as vLLM does; pass fresh random bytes there, since a predictable
    /// seed lets an attacker precompute colliding blocks).
    pub fn resolve(algo: HashAlgo, python_hash_seed: Option<&str>, random: [u8; 32]) -> Self {
        match python_hash_seed {
            Some(seed) => Self::new(algo, seed),
            None if algo.is_cryptographic() => Self::new(algo, DEFAULT_NONE_HASH_SEED),
            None => {
                let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
                Self::new(algo, &hex)
            }
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The seed the root parent was derived from.
    pub fn seed(&self) -> &str {
        &self.seed
    }

    /// The root parent hash (`NONE_HASH`).
    pub fn none_hash(&self) -> BlockHash {
        self.none_hash
    }

    /// Hashes one full block. `parent` is `None` for the first block of a sequence.
    pub fn hash_block(&self, parent: Option<&BlockHash>, tokens: &[u32], extra_keys: Option<&[ExtraKey]>) -> BlockHash {
        let mut buf = Vec::with_capacity(48 + tokens.len() * 5);
        self.hash_block_with(&mut buf, parent, tokens, extra_keys)
    }

    /// [`hash_block`](Self::hash_block) reusing `buf` for the CBOR encoding.
    fn hash_block_with(
        &self,
        buf: &mut Vec<u8>,
        parent: Option<&BlockHash>,
        tokens: &[u32],
        extra_keys: Option<&[ExtraKey]>,
    ) -> BlockHash {
        if self.algo == HashAlgo::Sha256Cbor && matches!(extra_keys, None | Some([])) {
            let parent = parent.unwrap_or(&self.none_hash).as_bytes();
            return BlockHash { len: 32, bytes: sha256::plain_block(buf, parent, tokens) };
        }
        self.block_input(buf, parent, tokens, extra_keys);
        match self.algo {
            HashAlgo::Sha256Cbor => BlockHash { len: 32, bytes: sha256::scratch(buf) },
            HashAlgo::XxHashCbor => self.algo.digest(buf),
        }
    }

    /// Writes into `buf` (cleared first) the exact bytes [`hash_block`](Self::hash_block)
    /// hashes: canonical CBOR of `(parent, tokens, extra_keys)`. For debugging interop.
    pub fn block_input(
        &self,
        buf: &mut Vec<u8>,
        parent: Option<&BlockHash>,
        tokens: &[u32],
        extra_keys: Option<&[ExtraKey]>,
    ) {
        buf.clear();
        // (parent_block_hash, tuple(token_ids), extra_keys)
        cbor::array(buf, 3);
        cbor::bytes(buf, parent.unwrap_or(&self.none_hash).as_bytes());
        cbor::u32_array(buf, tokens);
        match extra_keys {
            // vLLM passes None, never an empty tuple, for "no extra keys".
            None | Some([]) => cbor::null(buf),
            Some(keys) => {
                cbor::array(buf, keys.len());
                for k in keys {
                    k.encode_cbor(buf);
                }
            }
        }
    }

    /// Hashes every full block of `tokens` with no extra keys.
    pub fn hash_tokens(&self, tokens: &[u32], block_size: usize) -> Result<Vec<BlockHash>> {
        self.hash_prompt(tokens, block_size, &RequestKeys::default())
    }

    /// Hashes every full block of `tokens` with the request's extra keys (LoRA,
    /// multimodal items, cache salt, prompt embeddings), as vLLM's request block hasher.
    pub fn hash_prompt(&self, tokens: &[u32], block_size: usize, keys: &RequestKeys) -> Result<Vec<BlockHash>> {
        let mut hashes = Vec::with_capacity(tokens.len() / block_size.max(1));
        self.extend_hashes(&mut hashes, None, tokens, block_size, keys)?;
        Ok(hashes)
    }

    /// Appends the hashes of the full blocks of `tokens` not yet in `hashes` (so a
    /// growing sequence is hashed incrementally). When `extra_out` is given, each new
    /// block's extra keys are appended to it as well.
    pub fn extend_hashes(
        &self,
        hashes: &mut Vec<BlockHash>,
        mut extra_out: Option<&mut Vec<Option<Vec<ExtraKey>>>>,
        tokens: &[u32],
        block_size: usize,
        keys: &RequestKeys,
    ) -> Result<()> {
        if block_size == 0 {
            return Err(KvCacheError::ZeroBlockSize);
        }
        let mut start = hashes.len() * block_size;
        if start + block_size > tokens.len() {
            return Ok(());
        }
        let mut mm_idx = keys.first_mm_index_at(start);
        let mut buf = Vec::with_capacity(48 + block_size * 5);
        let mut parent = hashes.last().copied();
        while start + block_size <= tokens.len() {
            let end = start + block_size;
            let extra = keys.block_keys(start / block_size, start, end, &mut mm_idx);
            let h = self.hash_block_with(&mut buf, parent.as_ref(), &tokens[start..end], extra.as_deref());
            hashes.push(h);
            if let Some(out) = extra_out.as_deref_mut() {
                out.push(extra);
            }
            parent = Some(h);
            start = end;
        }
        Ok(())
    }
}

impl Default for BlockHasher {
    /// `sha256_cbor` with vLLM's default seed: matches a vLLM engine run with default
    /// settings and no `PYTHONHASHSEED`.
    fn default() -> Self {
        Self::new(HashAlgo::Sha256Cbor, DEFAULT_NONE_HASH_SEED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algo_names_round_trip_and_pickle_is_rejected_clearly() {
        for a in [HashAlgo::Sha256Cbor, HashAlgo::XxHashCbor] {
            assert_eq!(a.name().parse::<HashAlgo>(), Ok(a));
        }
        let err = "sha256".parse::<HashAlgo>().unwrap_err().to_string();
        assert!(err.contains("\"sha256\"") && err.contains("pickle"), "{err}");
    }

    #[test]
    fn to_u64_takes_low_64_bits_big_endian() {
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        b[0] = 0xff;
        assert_eq!(BlockHash::from_bytes(&b).map(|h| h.to_u64()), Some(0x0102_0304_0506_0708));
        assert_eq!(BlockHash::from_bytes(&[1, 2]).map(|h| h.to_u64()), Some(0x0102));
    }

    #[test]
    fn resolve_follows_vllm_seed_rules() {
        let r = [7u8; 32];
        let sha = BlockHasher::resolve(HashAlgo::Sha256Cbor, None, r);
        assert_eq!(sha.seed(), DEFAULT_NONE_HASH_SEED);
        let xx = BlockHasher::resolve(HashAlgo::XxHashCbor, None, r);
        assert_eq!(xx.seed(), "07".repeat(32));
        let seeded = BlockHasher::resolve(HashAlgo::XxHashCbor, Some("0"), r);
        assert_eq!(seeded.seed(), "0");
    }

    #[test]
    fn zero_block_size_is_an_error() {
        let h = BlockHasher::default();
        assert_eq!(h.hash_tokens(&[1, 2], 0), Err(KvCacheError::ZeroBlockSize));
    }

    #[test]
    fn partial_blocks_are_not_hashed_and_chains_extend() {
        let h = BlockHasher::default();
        let toks: Vec<u32> = (0..10).collect();
        let all = h.hash_tokens(&toks, 4).unwrap();
        assert_eq!(all.len(), 2);
        let mut inc = h.hash_tokens(&toks[..5], 4).unwrap();
        assert_eq!(inc.len(), 1);
        h.extend_hashes(&mut inc, None, &toks, 4, &RequestKeys::default()).unwrap();
        assert_eq!(inc, all);
    }
}
