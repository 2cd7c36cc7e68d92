//! Moving KV-cache blocks between engines, for prefill/decode disaggregation.
//!
//! The runtime-free core:
//! - [`params`]: vLLM NixlConnector's `kv_transfer_params`, as the prefill side returns
//!   them and the decode side reads them (unknown keys pass through);
//! - [`layout`]: what a block is (model, dtype, block size, layers, heads, layout) and
//!   the compatibility check made before any byte moves;
//! - [`frame`]: the wire form of a block transfer, with a checksum per block;
//! - [`hold`]: the prefill side's held blocks, released when pulled, on notification or
//!   when their lease runs out, within a memory bound.
//!
//! - [`shm`]: the same-host path, held blocks in a shared-memory arena a puller maps
//!   and reads in place;
//! - `tcp` (feature `tcp`): the prefill side serves held blocks, the decode side pulls
//!   them over several connections at once;
//! - `sidecar` (feature `sidecar`): the P/D routing sidecar beside a decode engine, as
//!   llm-d's (`llmd sidecar`).

// The README's example runs as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod error;
pub mod frame;
pub mod hold;
pub mod layout;
pub mod params;
pub mod shm;
#[cfg(feature = "sidecar")]
pub mod sidecar;
#[cfg(feature = "tcp")]
pub mod tcp;

pub use error::{Result, TransferError};
