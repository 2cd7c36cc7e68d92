//! SHA-256 for `sha256_cbor` block hashes, on the compression function of the `sha2`
//! crate (SHA-NI where the CPU has it).
//!
//! A block hash is about 100 bytes, two compressions, and each block's input starts
//! with the previous block's hash, so a prompt's hashes form a chain: whatever sits
//! between one compression and the next is paid in full, not overlapped. The message
//! is therefore padded in place and compressed at once (no streaming block buffer),
//! and on x86-64 the parent hash travels in vector registers into exactly the 16-byte
//! words the compression loads, so those loads are forwarded from the stores just
//! made instead of waiting for them to reach the cache (a store-forwarding stall on
//! the chain's critical path, about 10 ns a block on the machines measured).

use crate::cbor;

/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const H0: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The length of a `len`-byte message with SHA-256's padding (0x80, zeros, the length
/// in bits) to whole 64-byte blocks.
const fn padded_len(len: usize) -> usize {
    (len + 9).next_multiple_of(64)
}

/// SHA-256 of `msg`, padding it in place (the buffer is scratch: its contents are
/// unspecified afterwards). Equal to `Sha256::digest(msg)`.
pub(crate) fn scratch(msg: &mut Vec<u8>) -> [u8; 32] {
    let len = msg.len();
    msg.resize(padded_len(len), 0);
    padded(msg, len)
}

/// Writes the padding of `msg[..len]` (`msg` is exactly [`padded_len`] long) and
/// returns the digest.
fn padded(msg: &mut [u8], len: usize) -> [u8; 32] {
    let end = msg.len();
    debug_assert_eq!(end, padded_len(len));
    msg[len] = 0x80;
    msg[len + 1..end - 8].fill(0);
    msg[end - 8..].copy_from_slice(&(len as u64).wrapping_mul(8).to_be_bytes());
    let (blocks, _) = msg.as_chunks::<64>();
    let mut state = H0;
    sha2::block_api::compress256(&mut state, blocks);
    state_bytes(&state)
}

/// `sha256_cbor` of a block with no extra keys, `(parent, tokens, None)`, encoded in
/// `msg` (a scratch buffer kept at its largest size across blocks, so nothing is
/// cleared or reallocated per block).
pub(crate) fn plain_block(msg: &mut Vec<u8>, parent: &[u8], tokens: &[u32]) -> [u8; 32] {
    let (arr, arr_len) = cbor::array_head(3);
    let (bh, bh_len) = cbor::bytes_head(parent.len());
    let tokens_at = arr_len + bh_len + parent.len();
    let room = tokens_at + cbor::u32_array_room(tokens.len()) + 1;
    if msg.len() < padded_len(room) {
        msg.resize(padded_len(room), 0);
    }
    let Some(n) = cbor::u32_array_into(&mut msg[tokens_at..], tokens) else {
        // `msg` was sized for the longest encoding, so this does not happen; were it
        // to, the general path still gives the right hash (never a constant one).
        let mut general = Vec::new();
        cbor::array(&mut general, 3);
        cbor::bytes(&mut general, parent);
        cbor::u32_array(&mut general, tokens);
        cbor::null(&mut general);
        return scratch(&mut general);
    };
    let mut len = tokens_at + n;
    msg[len] = cbor::NULL_BYTE;
    len += 1;
    let msg = &mut msg[..padded_len(len)];
    #[cfg(target_arch = "x86_64")]
    if let Ok(p) = <&[u8; 32]>::try_from(parent)
        && msg.len() >= 64
    {
        x86::put_head_and_parent(msg, p);
        return padded(msg, len);
    }
    msg[..arr_len].copy_from_slice(&arr[..arr_len]);
    msg[arr_len..arr_len + bh_len].copy_from_slice(&bh[..bh_len]);
    msg[arr_len + bh_len..tokens_at].copy_from_slice(parent);
    padded(msg, len)
}

/// The digest's bytes: the state words big-endian.
#[inline]
fn state_bytes(state: &[u32; 8]) -> [u8; 32] {
    #[cfg(target_arch = "x86_64")]
    {
        x86::state_bytes(state)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

/// SSE2 only (part of x86-64 itself), so no runtime detection is needed.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_loadu_si128, _mm_or_si128, _mm_set_epi8, _mm_set1_epi32, _mm_slli_epi32,
        _mm_slli_si128, _mm_srli_epi32, _mm_srli_si128, _mm_storeu_si128,
    };

    /// Writes `[0x83, 0x58, 0x20, parent…]` over `msg[..35]` as three 16-byte stores
    /// at offsets 0, 16 and 32, keeping `msg[35..48]` (the first token bytes, already
    /// written) as they are.
    #[inline]
    pub(super) fn put_head_and_parent(msg: &mut [u8], parent: &[u8; 32]) {
        assert!(msg.len() >= 48);
        // SAFETY: `parent` is 32 bytes and `msg` at least 48 (checked above); unaligned
        // loads and stores of 16 bytes within them.
        unsafe {
            let p0 = _mm_loadu_si128(parent.as_ptr().cast::<__m128i>());
            let p1 = _mm_loadu_si128(parent.as_ptr().add(16).cast::<__m128i>());
            let m2 = _mm_loadu_si128(msg.as_ptr().add(32).cast::<__m128i>());
            // array(3), bytes(32): 0x83 0x58 0x20.
            let head = _mm_set_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x58, 0x83u8 as i8);
            let keep = _mm_set_epi8(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0);
            let c0 = _mm_or_si128(head, _mm_slli_si128::<3>(p0));
            let c1 = _mm_or_si128(_mm_srli_si128::<13>(p0), _mm_slli_si128::<3>(p1));
            let c2 = _mm_or_si128(_mm_srli_si128::<13>(p1), _mm_and_si128(m2, keep));
            let out = msg.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(out, c0);
            _mm_storeu_si128(out.add(1), c1);
            _mm_storeu_si128(out.add(2), c2);
        }
    }

    /// The state words big-endian, byte-swapped in registers and stored 16 bytes at a
    /// time, so the next block's 16-byte loads of its parent are forwarded too.
    #[inline]
    pub(super) fn state_bytes(state: &[u32; 8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // SAFETY: 32-byte source and destination, unaligned 16-byte accesses within them.
        unsafe {
            let s = state.as_ptr().cast::<__m128i>();
            let d = out.as_mut_ptr().cast::<__m128i>();
            _mm_storeu_si128(d, bswap32(_mm_loadu_si128(s)));
            _mm_storeu_si128(d.add(1), bswap32(_mm_loadu_si128(s.add(1))));
        }
        out
    }

    /// Reverses the bytes of each 32-bit lane with SSE2 shifts.
    #[inline]
    fn bswap32(x: __m128i) -> __m128i {
        // SAFETY: SSE2 register operations; SSE2 is part of every x86-64 CPU.
        unsafe {
            let outer = _mm_or_si128(_mm_slli_epi32::<24>(x), _mm_srli_epi32::<24>(x));
            let b1 = _mm_and_si128(_mm_slli_epi32::<8>(x), _mm_set1_epi32(0x00ff_0000));
            let b2 = _mm_and_si128(_mm_srli_epi32::<8>(x), _mm_set1_epi32(0x0000_ff00));
            _mm_or_si128(outer, _mm_or_si128(b1, b2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    proptest::proptest! {
        /// The in-place padding path equals the `Digest` API at every length, across
        /// the 55/56/64-byte padding boundaries included.
        #[test]
        fn scratch_equals_the_digest_api(msg in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let want: [u8; 32] = Sha256::digest(&msg).into();
            proptest::prop_assert_eq!(scratch(&mut msg.clone()), want);
        }

        /// A plain block equals SHA-256 over its CBOR written item by item, for any
        /// parent length and tokens, in a scratch buffer holding stale bytes.
        #[test]
        fn plain_block_equals_the_digest_of_its_cbor(
            // 32 bytes (a SHA-256 parent, the SSE2 path) half the time.
            parent in proptest::prop_oneof![
                proptest::collection::vec(proptest::num::u8::ANY, 32..33),
                proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            ],
            tokens in proptest::collection::vec(proptest::num::u32::ANY, 0..40),
            stale in proptest::num::u8::ANY,
        ) {
            let mut cbor_bytes = Vec::new();
            cbor::array(&mut cbor_bytes, 3);
            cbor::bytes(&mut cbor_bytes, &parent);
            cbor::u32_array(&mut cbor_bytes, &tokens);
            cbor::null(&mut cbor_bytes);
            let want: [u8; 32] = Sha256::digest(&cbor_bytes).into();
            let mut msg = vec![stale; 512];
            proptest::prop_assert_eq!(plain_block(&mut msg, &parent, &tokens), want);
        }
    }

    #[test]
    fn every_padding_boundary_and_a_negative_control() {
        for len in 0..200 {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let want: [u8; 32] = Sha256::digest(&msg).into();
            assert_eq!(scratch(&mut msg.clone()), want, "length {len}");
        }
        // Negative control: padding placed one byte late (the length off by one, the
        // likeliest padding bug) is caught by the same comparison.
        for len in [0usize, 54, 55, 56, 63, 64, 100] {
            let msg = vec![7u8; len];
            let mut late = msg.clone();
            late.push(0);
            let late_len = late.len();
            late.resize(padded_len(late_len), 0);
            let want: [u8; 32] = Sha256::digest(&msg).into();
            assert_ne!(padded(&mut late, late_len), want, "length {len}");
        }
    }
}
