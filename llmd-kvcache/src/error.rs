//! The crate's error type.

use crate::pool::BlockId;

/// Everything that can go wrong in `llmd-kvcache`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KvCacheError {
    /// A hash function name that is neither `sha256_cbor` nor `xxhash_cbor`.
    #[error(
        "unknown prefix-caching hash function {0:?} (expected \"sha256_cbor\" or \"xxhash_cbor\"; \
         vLLM's pickle-based \"sha256\"/\"xxhash\" cannot be reproduced outside Python)"
    )]
    UnknownHashFunction(String),

    /// A block size of zero.
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,

    /// A block pool created with no blocks, or more than `u32::MAX - 1`.
    #[error("block pool capacity must be between 1 and {max} blocks, got {got}")]
    BadCapacity {
        /// The requested capacity.
        got: usize,
        /// The largest capacity supported.
        max: usize,
    },

    /// Not enough free blocks for an allocation. Nothing was allocated.
    #[error("out of KV blocks: requested {requested}, {free} free")]
    OutOfBlocks {
        /// Blocks asked for.
        requested: usize,
        /// Blocks that were free.
        free: usize,
    },

    /// A block id outside the pool.
    #[error("block {0} does not exist in this pool")]
    NoSuchBlock(BlockId),

    /// Freeing a block whose reference count is already zero.
    #[error("block {0} is already free (double free)")]
    DoubleFree(BlockId),

    /// Caching a block that no request holds.
    #[error("block {0} is free and cannot be cached")]
    CachingFreeBlock(BlockId),

    /// Caching a block that already carries a different hash.
    #[error("block {0} already caches a different hash")]
    AlreadyCached(BlockId),

    /// Arguments whose lengths must agree but do not.
    #[error("{what}: expected {expected}, got {got}")]
    LengthMismatch {
        /// What was being matched.
        what: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },

    /// A block size above what the pool supports.
    #[error("block size {0} is too large (at most {max})", max = u32::MAX)]
    BlockSizeTooLarge(usize),

    /// A sequence hashed with a block size other than the manager's.
    #[error("sequence {id:?} uses block size {sequence}, the manager {manager}")]
    BlockSizeMismatch {
        /// The request.
        id: String,
        /// The sequence's block size.
        sequence: usize,
        /// The manager's block size.
        manager: usize,
    },

    /// A sequence extended with a hasher other than the one that started it.
    #[error("sequence {0:?} was extended with a different hash algorithm or seed")]
    HasherMismatch(String),

    /// Computed blocks that no longer hold the sequence's prefix (another request
    /// reused them since the lookup), or that repeat a block.
    #[error("computed block {block} no longer holds block {index} of request {id:?}; look the prefix up again")]
    StaleComputedBlocks {
        /// The request.
        id: String,
        /// Position in the prefix.
        index: usize,
        /// The block.
        block: BlockId,
    },

    /// An allocation of zero tokens for a request with nothing computed.
    #[error("request {0:?}: nothing to allocate (zero new tokens and no computed blocks)")]
    EmptyAllocation(String),

    /// A count that would overflow.
    #[error("{0} overflows")]
    Overflow(&'static str),

    /// A request id the manager does not know.
    #[error("unknown request {0:?}")]
    UnknownRequest(String),

    /// Multimodal spans that are not sorted by offset or that overlap.
    #[error("multimodal spans must be sorted by offset and not overlap: {0}")]
    BadMultimodalSpans(String),

    /// Bytes that are not a valid KV event batch.
    #[error("malformed KV event batch: {0}")]
    Decode(String),

    /// An event batch that cannot be encoded (for example, a value out of range).
    #[error("cannot encode KV event batch: {0}")]
    Encode(String),
}

/// The crate's result type.
pub type Result<T, E = KvCacheError> = std::result::Result<T, E>;
