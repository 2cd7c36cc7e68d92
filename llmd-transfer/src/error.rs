//! The crate's error type.

/// What went wrong moving KV blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The two engines' KV caches cannot exchange blocks (vLLM refuses the same pairs
    /// through its compatibility hash); `field` is the first that differs.
    #[error("incompatible KV layouts: {field} is {local} here and {remote} on the remote engine")]
    Incompatible {
        /// The field that differs (`model`, `dtype`, `block_size`...).
        field: &'static str,
        /// This engine's value.
        local: String,
        /// The remote engine's value.
        remote: String,
    },
    /// `kv_transfer_params` that cannot drive a transfer (vLLM logs "Got invalid
    /// KVTransferParams" and recomputes).
    #[error("invalid kv_transfer_params: {0}")]
    InvalidParams(String),
    /// A transfer frame that does not parse.
    #[error("bad transfer frame: {0}")]
    Frame(String),
    /// A block's bytes do not match the checksum the sender computed.
    #[error("transfer {transfer}: block {block} checksum {got:016x}, sender said {expected:016x}")]
    Checksum {
        /// The transfer (the prefill request id).
        transfer: String,
        /// The block's position in the transfer.
        block: usize,
        /// The sender's checksum.
        expected: u64,
        /// The checksum of the bytes received.
        got: u64,
    },
    /// No hold for this request: never made, already pulled, released or expired.
    #[error("no held blocks for request {0:?} (pulled, released or expired)")]
    NoHold(String),
    /// The request already holds blocks.
    #[error("request {0:?} already holds blocks")]
    DuplicateHold(String),
    /// A socket or file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A network wait ran past its limit.
    #[error("{0} timed out")]
    Timeout(String),
    /// The other side refused the transfer and said why.
    #[error("the remote engine refused: {0}")]
    Remote(String),
    /// Holding these bytes would pass the configured limit.
    #[error("holding {wanted} more bytes would pass the limit of {limit} ({held} held)")]
    Capacity {
        /// Bytes asked for.
        wanted: usize,
        /// Bytes held now.
        held: usize,
        /// The limit.
        limit: usize,
    },
}

/// The crate's result type.
pub type Result<T, E = TransferError> = std::result::Result<T, E>;
