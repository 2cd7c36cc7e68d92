//! The wire form of a block transfer: a header, then the blocks' bytes, each with a
//! checksum.
//!
//! One transfer (one prefill request's KV blocks) is one frame. Integers are big-endian:
//!
//! | field        | bytes        | value                                                  |
//! |--------------|--------------|--------------------------------------------------------|
//! | magic        | 8            | `b"LLMDKV\x00\x01"`                                    |
//! | version      | 2            | 1                                                      |
//! | flags        | 2            | 0 (any other value is refused)                         |
//! | id length    | 2            | at most [`MAX_TRANSFER_ID`]                            |
//! | transfer id  | id length    | UTF-8: the prefill request id                          |
//! | layout hash  | 32           | the sender's compatibility hash, opaque here           |
//! | block bytes  | 4            | every block's size; 0 for a backend with no K/V memory |
//! | block count  | 4            | N                                                      |
//! | checksums    | 8 × N        | xxh3-64 of each block ([`checksum`])                   |
//! | payloads     | N × size     | the blocks, concatenated                               |
//!
//! [`encode_header`] builds the header only: the sender writes it, then each block's
//! [`Bytes`] as is, with no copy. [`FrameDecoder`] reads frames from bytes arriving in
//! any chunking, checks each block as it completes, and hands it out without copying.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use llmd_transfer::frame::{encode, Decoded, FrameDecoder, Limits};
//!
//! let blocks = vec![Bytes::from_static(b"k0v0"), Bytes::from_static(b"k1v1")];
//! let mut buf = BytesMut::new();
//! for part in encode("req-1", [7; 32], &blocks)? {
//!     buf.extend_from_slice(&part);
//! }
//! let mut decoder = FrameDecoder::new(Limits::default());
//! let mut events = Vec::new();
//! while let Some(event) = decoder.feed(&mut buf)? {
//!     events.push(event);
//! }
//! assert!(matches!(&events[0], Decoded::Header(h) if h.transfer == "req-1" && h.block_count() == 2));
//! assert_eq!(events[2], Decoded::Block { index: 1, data: blocks[1].clone() });
//! assert_eq!(events[3], Decoded::Done);
//! # Ok::<(), llmd_transfer::TransferError>(())
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::Result;
use crate::error::TransferError;

/// The first 8 bytes of every frame.
pub const MAGIC: [u8; 8] = *b"LLMDKV\x00\x01";
/// The frame version this build writes and reads.
pub const VERSION: u16 = 1;
/// The longest transfer id, in bytes.
pub const MAX_TRANSFER_ID: usize = 1024;

/// Magic, version, flags and id length.
const PREFIX_LEN: usize = 8 + 2 + 2 + 2;
/// Layout hash, block bytes and block count, after the id.
const MIDDLE_LEN: usize = 32 + 4 + 4;

/// xxh3-64 of a block's bytes: the checksum frames carry. (twox-hash's, which uses
/// AVX2 where the CPU has it: the same value as any xxh3-64, a fifth faster than
/// SSE2 on a 512 KiB block.)
pub fn checksum(data: &[u8]) -> u64 {
    twox_hash::XxHash3_64::oneshot(data)
}

/// A frame's header, as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameHeader {
    /// The transfer id: the prefill request id.
    pub transfer: String,
    /// The sender's layout compatibility hash; the caller compares it with its own.
    pub layout_hash: [u8; 32],
    /// Every block's size in bytes (0 when the frame has no blocks).
    pub block_bytes: usize,
    /// One checksum per block, in order.
    pub checksums: Vec<u64>,
}

impl FrameHeader {
    /// How many blocks follow the header.
    pub fn block_count(&self) -> usize {
        self.checksums.len()
    }

    /// The bytes that follow the header: block count × block size.
    pub fn payload_len(&self) -> usize {
        self.block_bytes.saturating_mul(self.checksums.len())
    }
}

fn frame_err(msg: impl Into<String>) -> TransferError {
    TransferError::Frame(msg.into())
}

/// The header of a frame carrying `blocks`, with their checksums.
///
/// The blocks are not copied: write the header, then each block as is. Fails when the
/// blocks differ in size, when a block passes `u32::MAX` bytes, when there are more than
/// `u32::MAX` blocks or when `transfer` is longer than [`MAX_TRANSFER_ID`] bytes.
pub fn encode_header(transfer: &str, layout_hash: [u8; 32], blocks: &[Bytes]) -> Result<Bytes> {
    encode_header_with(transfer, layout_hash, blocks, None)
}

/// [`encode_header`] with the blocks' checksums computed already (e.g. once, when a
/// hold is made, rather than at every send); `None` computes them.
pub fn encode_header_with(
    transfer: &str,
    layout_hash: [u8; 32],
    blocks: &[Bytes],
    checksums: Option<&[u64]>,
) -> Result<Bytes> {
    if let Some(c) = checksums
        && c.len() != blocks.len()
    {
        return Err(frame_err(format!("{} checksums for {} blocks", c.len(), blocks.len())));
    }
    if transfer.len() > MAX_TRANSFER_ID {
        return Err(frame_err(format!("transfer id is {} bytes, at most {MAX_TRANSFER_ID}", transfer.len())));
    }
    let block_bytes = blocks.first().map_or(0, Bytes::len);
    if let Some((i, b)) = blocks.iter().enumerate().find(|(_, b)| b.len() != block_bytes) {
        return Err(frame_err(format!("block {i} is {} bytes, block 0 is {block_bytes}", b.len())));
    }
    let size = u32::try_from(block_bytes).map_err(|_| frame_err(format!("blocks of {block_bytes} bytes")))?;
    let count = u32::try_from(blocks.len()).map_err(|_| frame_err(format!("{} blocks", blocks.len())))?;
    let mut out = BytesMut::with_capacity(PREFIX_LEN + transfer.len() + MIDDLE_LEN + 8 * blocks.len());
    out.put_slice(&MAGIC);
    out.put_u16(VERSION);
    out.put_u16(0);
    out.put_u16(transfer.len() as u16); // checked against MAX_TRANSFER_ID above
    out.put_slice(transfer.as_bytes());
    out.put_slice(&layout_hash);
    out.put_u32(size);
    out.put_u32(count);
    match checksums {
        Some(c) => c.iter().for_each(|&x| out.put_u64(x)),
        None => blocks.iter().for_each(|b| out.put_u64(checksum(b))),
    }
    Ok(out.freeze())
}

/// The whole frame as parts to write in order: the header, then the blocks (shared, not
/// copied).
pub fn encode(transfer: &str, layout_hash: [u8; 32], blocks: &[Bytes]) -> Result<Vec<Bytes>> {
    encode_with(transfer, layout_hash, blocks, None)
}

/// [`encode`] with precomputed checksums ([`encode_header_with`]).
pub fn encode_with(
    transfer: &str,
    layout_hash: [u8; 32],
    blocks: &[Bytes],
    checksums: Option<&[u64]>,
) -> Result<Vec<Bytes>> {
    let mut parts = Vec::with_capacity(1 + blocks.len());
    parts.push(encode_header_with(transfer, layout_hash, blocks, checksums)?);
    parts.extend(blocks.iter().cloned());
    Ok(parts)
}

/// What a decoder accepts; a header past these is refused before anything is allocated
/// for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most blocks in one frame.
    pub max_blocks: usize,
    /// The largest block, in bytes.
    pub max_block_bytes: usize,
}

impl Default for Limits {
    /// 65 536 blocks of at most 64 MiB.
    fn default() -> Self {
        Limits { max_blocks: 65_536, max_block_bytes: 64 << 20 }
    }
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A frame's header: its blocks follow.
    Header(FrameHeader),
    /// A block, checked against its checksum.
    Block {
        /// The block's position in the frame.
        index: usize,
        /// The block's bytes, split off the input without copying.
        data: Bytes,
    },
    /// The frame's last block has been read; the next bytes start a new frame.
    Done,
}

#[derive(Debug)]
enum State {
    /// Waiting for (the rest of) a header.
    Header,
    /// Reading a frame's blocks; `next` is the index of the next one.
    Blocks { transfer: String, block_bytes: usize, checksums: Vec<u64>, next: usize },
    /// An error was returned; the stream cannot be trusted any more.
    Failed,
}

/// An incremental decoder of frames, for bytes arriving in arbitrary chunks.
///
/// Append what arrives to a [`BytesMut`] and call [`feed`](FrameDecoder::feed) until it
/// returns `Ok(None)`: it consumes what it uses, and incomplete input stays in the
/// buffer for the next call. A truncated frame never errors and never completes; after
/// [`Decoded::Done`] the decoder reads the next frame. After an error the decoder only
/// returns errors: the connection should be dropped.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    state: State,
}

impl FrameDecoder {
    /// A decoder refusing frames past `limits`.
    pub fn new(limits: Limits) -> Self {
        FrameDecoder { limits, state: State::Header }
    }

    /// Whether the decoder is between frames: no header read whose frame is unfinished,
    /// and no error. At the end of input, a clean end is this and an empty buffer.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header)
    }

    /// The next event from `buf`, consuming its bytes; `Ok(None)` when more input is
    /// needed.
    ///
    /// Fails with [`TransferError::Frame`] on a malformed or over-limit header and with
    /// [`TransferError::Checksum`] on a block whose bytes do not match.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>> {
        let step = self.step(buf);
        if step.is_err() {
            self.state = State::Failed;
        }
        step
    }

    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>> {
        match &mut self.state {
            State::Failed => Err(frame_err("the decoder stopped at an earlier error")),
            State::Header => {
                let Some(header) = parse_header(buf, &self.limits)? else { return Ok(None) };
                self.state = State::Blocks {
                    transfer: header.transfer.clone(),
                    block_bytes: header.block_bytes,
                    checksums: header.checksums.clone(),
                    next: 0,
                };
                Ok(Some(Decoded::Header(header)))
            }
            State::Blocks { transfer, block_bytes, checksums, next } => {
                let index = *next;
                let Some(&expected) = checksums.get(index) else {
                    self.state = State::Header;
                    return Ok(Some(Decoded::Done));
                };
                if buf.len() < *block_bytes {
                    return Ok(None);
                }
                let data = buf.split_to(*block_bytes).freeze();
                let got = checksum(&data);
                if got != expected {
                    return Err(TransferError::Checksum {
                        transfer: std::mem::take(transfer),
                        block: index,
                        expected,
                        got,
                    });
                }
                *next += 1;
                Ok(Some(Decoded::Block { index, data }))
            }
        }
    }
}

/// Decodes one whole frame already in memory (a same-host transfer): the header, then
/// each block as a view of `data` (no copy), checked against its checksum. Bytes after
/// the frame are ignored.
pub fn decode_whole(data: &Bytes, limits: Limits) -> Result<(FrameHeader, Vec<Bytes>)> {
    // The header's length, from its id length and block count (validated below).
    let truncated = || frame_err(format!("{} bytes end inside a frame header", data.len()));
    let id_len = usize::from(be_u16(data.get(..PREFIX_LEN).ok_or_else(truncated)?, 12));
    let id_end = PREFIX_LEN + id_len.min(MAX_TRANSFER_ID);
    let count = be_u32(data.get(..id_end + MIDDLE_LEN).ok_or_else(truncated)?, id_end + 36) as usize;
    let len = (id_end + MIDDLE_LEN).saturating_add(count.min(limits.max_blocks).saturating_mul(8));
    let mut head = BytesMut::from(&data[..len.min(data.len())]);
    let header = parse_header(&mut head, &limits)?.ok_or_else(truncated)?;
    let size = header.block_bytes;
    let end = len.saturating_add(header.checksums.len().saturating_mul(size));
    if data.len() < end {
        return Err(frame_err(format!("transfer {:?}: {} bytes, the frame needs {end}", header.transfer, data.len())));
    }
    let mut blocks = Vec::with_capacity(header.checksums.len());
    for (i, &expected) in header.checksums.iter().enumerate() {
        let b = data.slice(len + i * size..len + (i + 1) * size);
        let got = checksum(&b);
        if got != expected {
            return Err(TransferError::Checksum { transfer: header.transfer.clone(), block: i, expected, got });
        }
        blocks.push(b);
    }
    Ok((header, blocks))
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A whole header from the front of `buf`, consumed; `None`, consuming nothing, while
/// it is incomplete. Each field is checked as soon as its bytes are there, so garbage
/// and over-limit headers fail before the rest arrives.
fn parse_header(buf: &mut BytesMut, limits: &Limits) -> Result<Option<FrameHeader>> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(frame_err(format!("bad magic \"{}\"", buf[..seen].escape_ascii())));
    }
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    let version = be_u16(buf, 8);
    if version != VERSION {
        return Err(frame_err(format!("unsupported version {version} (this build reads {VERSION})")));
    }
    let flags = be_u16(buf, 10);
    if flags != 0 {
        return Err(frame_err(format!("unknown flags {flags:#06x}")));
    }
    let id_len = usize::from(be_u16(buf, 12));
    if id_len > MAX_TRANSFER_ID {
        return Err(frame_err(format!("transfer id of {id_len} bytes, at most {MAX_TRANSFER_ID}")));
    }
    let fixed = PREFIX_LEN + id_len + MIDDLE_LEN;
    if buf.len() < fixed {
        return Ok(None);
    }
    let id_end = PREFIX_LEN + id_len;
    let transfer = std::str::from_utf8(&buf[PREFIX_LEN..id_end])
        .map_err(|e| frame_err(format!("transfer id is not UTF-8: {e}")))?;
    let block_bytes = be_u32(buf, id_end + 32) as usize;
    let count = be_u32(buf, id_end + 36) as usize;
    if count > limits.max_blocks {
        return Err(frame_err(format!("transfer {transfer:?}: {count} blocks, limit {}", limits.max_blocks)));
    }
    if block_bytes > limits.max_block_bytes {
        return Err(frame_err(format!(
            "transfer {transfer:?}: blocks of {block_bytes} bytes, limit {}",
            limits.max_block_bytes
        )));
    }
    if buf.len() < fixed + 8 * count {
        return Ok(None);
    }
    let transfer = transfer.to_owned();
    let mut layout_hash = [0; 32];
    layout_hash.copy_from_slice(&buf[id_end..id_end + 32]);
    buf.advance(fixed);
    let checksums = (0..count).map(|_| buf.get_u64()).collect();
    Ok(Some(FrameHeader { transfer, layout_hash, block_bytes, checksums }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_xxh3_64_at_every_length() {
        // The empty input's xxh3-64, from the reference implementation's test vectors.
        assert_eq!(checksum(b""), 0x2d06_8005_38d3_94c2);
        let data: Vec<u8> = (0..(1usize << 20) + 7).map(|i| (i * 131 + i / 7) as u8).collect();
        for len in [1, 3, 4, 8, 16, 17, 128, 129, 240, 241, 1024, 4099, 65536, 512 << 10, data.len()] {
            assert_eq!(checksum(&data[..len]), xxhash_rust::xxh3::xxh3_64(&data[..len]), "{len} bytes");
        }
    }
    use proptest::prelude::*;

    fn blocks(count: usize, size: usize) -> Vec<Bytes> {
        (0..count).map(|i| (0..size).map(|j| (i * 31 + j * 7) as u8).collect::<Vec<u8>>().into()).collect()
    }

    fn stream(frames: &[(&str, [u8; 32], Vec<Bytes>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, hash, b) in frames {
            for part in encode(id, *hash, b).unwrap() {
                out.extend_from_slice(&part);
            }
        }
        out
    }

    /// The events a decoder gives for `input` arriving in chunks of the sizes given,
    /// cycled; the first error ends it.
    fn decode(input: &[u8], chunks: &[usize], limits: Limits) -> (Vec<Decoded>, Result<()>) {
        let mut dec = FrameDecoder::new(limits);
        let (mut buf, mut events, mut at) = (BytesMut::new(), Vec::new(), 0);
        for &n in chunks.iter().cycle() {
            let end = input.len().min(at + n.max(1));
            buf.extend_from_slice(&input[at..end]);
            at = end;
            loop {
                match dec.feed(&mut buf) {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => return (events, Err(e)),
                }
            }
            if at == input.len() {
                break;
            }
        }
        (events, Ok(()))
    }

    fn expected(frames: &[(&str, [u8; 32], Vec<Bytes>)]) -> Vec<Decoded> {
        let mut out = Vec::new();
        for (id, hash, b) in frames {
            let block_bytes = b.first().map_or(0, Bytes::len);
            let checksums = b.iter().map(|d| checksum(d)).collect();
            out.push(Decoded::Header(FrameHeader {
                transfer: id.to_string(),
                layout_hash: *hash,
                block_bytes,
                checksums,
            }));
            out.extend(b.iter().enumerate().map(|(index, data)| Decoded::Block { index, data: data.clone() }));
            out.push(Decoded::Done);
        }
        out
    }

    #[test]
    fn round_trips_zero_one_many_and_empty_blocks() {
        for (count, size) in [(0, 0), (1, 100), (50, 64), (3, 0), (1, 0)] {
            let frames = [("req-é", [9; 32], blocks(count, size))];
            let (events, end) = decode(&stream(&frames), &[usize::MAX], Limits::default());
            end.unwrap();
            assert_eq!(events, expected(&frames), "{count} blocks of {size}");
            let Decoded::Header(h) = &events[0] else { panic!() };
            assert_eq!((h.block_count(), h.payload_len()), (count, count * size));
        }
    }

    #[test]
    fn wire_layout_is_pinned() {
        let b = [Bytes::from_static(b"abc"), Bytes::from_static(b"xyz")];
        let mut want = b"LLMDKV\x00\x01\x00\x01\x00\x00\x00\x02id".to_vec();
        want.extend_from_slice(&[5; 32]);
        want.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 2]);
        want.extend_from_slice(&checksum(b"abc").to_be_bytes());
        want.extend_from_slice(&checksum(b"xyz").to_be_bytes());
        assert_eq!(&encode_header("id", [5; 32], &b).unwrap()[..], &want[..]);
        // The parts share the caller's block memory.
        let parts = encode("id", [5; 32], &b).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2].as_ptr(), b[1].as_ptr());
    }

    #[test]
    fn blocks_are_split_off_the_input_without_copying() {
        let input = stream(&[("r", [0; 32], blocks(2, 16))]);
        let mut buf = BytesMut::from(&input[..]);
        let base = buf.as_ptr() as usize;
        let mut dec = FrameDecoder::new(Limits::default());
        let Some(Decoded::Header(_)) = dec.feed(&mut buf).unwrap() else { panic!() };
        let Some(Decoded::Block { index: 0, data }) = dec.feed(&mut buf).unwrap() else { panic!() };
        assert_eq!(data.as_ptr() as usize, base + input.len() - 32);
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let frames = [("a", [1; 32], blocks(4, 33)), ("b", [2; 32], blocks(0, 0)), ("c", [3; 32], blocks(2, 0))];
        let input = stream(&frames);
        let (whole, end) = decode(&input, &[usize::MAX], Limits::default());
        end.unwrap();
        let (bytewise, end) = decode(&input, &[1], Limits::default());
        end.unwrap();
        assert_eq!(whole, expected(&frames));
        assert_eq!(bytewise, whole);
    }

    #[test]
    fn a_flipped_payload_bit_fails_exactly_that_block() {
        let b = blocks(5, 40);
        let mut input = stream(&[("req-7", [0; 32], b.clone())]);
        let flip = input.len() - 40 * 3 + 17; // inside block 2
        input[flip] ^= 0x10;
        let (events, end) = decode(&input, &[7], Limits::default());
        assert_eq!(events.len(), 3, "header and blocks 0 and 1 come through");
        match end {
            Err(TransferError::Checksum { transfer, block: 2, expected, got }) => {
                assert_eq!(transfer, "req-7");
                assert_eq!(expected, checksum(&b[2]));
                assert_ne!(got, expected);
            }
            other => panic!("{other:?}"),
        }
        // The decoder stays failed.
        let mut dec = FrameDecoder::new(Limits::default());
        let mut buf = BytesMut::from(&input[..]);
        while dec.feed(&mut buf).is_ok() {}
        assert!(!dec.is_idle());
        assert!(matches!(dec.feed(&mut BytesMut::new()), Err(TransferError::Frame(_))));
    }

    #[test]
    fn truncation_waits_and_never_completes() {
        let input = stream(&[("req", [4; 32], blocks(3, 10))]);
        for len in 0..input.len() {
            let (events, end) = decode(&input[..len], &[usize::MAX], Limits::default());
            end.unwrap();
            assert!(!events.contains(&Decoded::Done), "{len} bytes");
        }
        let (events, _) = decode(&input, &[usize::MAX], Limits::default());
        assert_eq!(events.last(), Some(&Decoded::Done));
    }

    fn header_claiming(count: u32, size: u32) -> Vec<u8> {
        let mut h = b"LLMDKV\x00\x01\x00\x01\x00\x00\x00\x01x".to_vec();
        h.extend_from_slice(&[0; 32]);
        h.extend_from_slice(&size.to_be_bytes());
        h.extend_from_slice(&count.to_be_bytes());
        h
    }

    #[test]
    fn limits_refuse_oversized_headers_before_the_checksums_arrive() {
        let limits = Limits { max_blocks: 4, max_block_bytes: 1024 };
        for (count, size, what) in [(u32::MAX, 16, "blocks, limit 4"), (5, 16, "5 blocks"), (1, 1025, "limit 1024")] {
            let (events, end) = decode(&header_claiming(count, size), &[usize::MAX], limits);
            assert!(events.is_empty());
            let Err(TransferError::Frame(msg)) = end else { panic!("{count} × {size}: {end:?}") };
            assert!(msg.contains(what), "{msg}");
        }
        let ok = header_claiming(4, 1024);
        assert!(decode(&ok, &[usize::MAX], limits).1.is_ok());
    }

    #[test]
    fn garbage_is_refused_naming_what_is_wrong() {
        let good = stream(&[("r", [0; 32], blocks(1, 4))]);
        let cases: [(usize, &[u8], &str); 4] = [
            (0, b"X", "bad magic"),
            (9, b"\x02", "unsupported version 2"),
            (11, b"\x01", "unknown flags 0x0001"),
            (12, b"\x04\x01", "at most 1024"),
        ];
        for (at, bytes, what) in cases {
            let mut input = good.clone();
            input[at..at + bytes.len()].copy_from_slice(bytes);
            let (_, end) = decode(&input, &[1], Limits::default());
            let Err(TransferError::Frame(msg)) = end else { panic!("{what}: {end:?}") };
            assert!(msg.contains(what), "{msg}");
        }
        // Bad magic is seen on the first wrong byte.
        let mut dec = FrameDecoder::new(Limits::default());
        assert!(dec.feed(&mut BytesMut::from(&b"LLMX"[..])).is_err());
        let mut bad_id = good.clone();
        bad_id[14] = 0xff;
        let Err(TransferError::Frame(msg)) = decode(&bad_id, &[1], Limits::default()).1 else { panic!() };
        assert!(msg.contains("not UTF-8"), "{msg}");
    }

    #[test]
    fn a_whole_frame_in_memory_decodes_to_views_and_any_damage_is_an_error() {
        let bs = blocks(3, 100);
        let wire = Bytes::from(stream(&[("t", [5; 32], bs.clone())]));
        let (h, got) = decode_whole(&wire, Limits::default()).unwrap();
        assert_eq!((h.transfer.as_str(), got.clone()), ("t", bs));
        assert!(got.iter().all(|b| wire.as_ptr_range().contains(&b.as_ptr())), "views, not copies");
        // Trailing bytes (a reused slot's) are ignored; any truncation is an error.
        let mut longer = wire.to_vec();
        longer.extend_from_slice(&[9; 50]);
        assert_eq!(decode_whole(&Bytes::from(longer), Limits::default()).unwrap().1, got);
        for n in 0..wire.len() {
            assert!(decode_whole(&wire.slice(..n), Limits::default()).is_err(), "{n} bytes");
        }
        let mut bad = wire.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            decode_whole(&Bytes::from(bad), Limits::default()),
            Err(TransferError::Checksum { block: 2, .. })
        ));
    }

    #[test]
    fn encoder_refuses_what_the_wire_cannot_carry() {
        let uneven = [Bytes::from_static(b"ab"), Bytes::from_static(b"abc")];
        assert!(matches!(encode_header("r", [0; 32], &uneven), Err(TransferError::Frame(m)) if m.contains("block 1")));
        let long = "x".repeat(MAX_TRANSFER_ID + 1);
        assert!(matches!(encode_header(&long, [0; 32], &[]), Err(TransferError::Frame(_))));
        let longest = "x".repeat(MAX_TRANSFER_ID);
        let frames = [(longest.as_str(), [0; 32], blocks(1, 1))];
        assert_eq!(decode(&stream(&frames), &[3], Limits::default()).0, expected(&frames));
    }

    type Frames = Vec<(String, [u8; 32], Vec<Bytes>)>;

    fn frames_and_chunks() -> impl Strategy<Value = (Frames, Vec<usize>)> {
        let frame = ("[a-z0-9é-]{0,12}", any::<[u8; 32]>(), 0usize..6, 0usize..48, any::<u64>()).prop_map(
            |(id, hash, count, size, seed)| {
                let b = (0..count)
                    .map(|i| {
                        (0..size).map(|j| (seed.rotate_left((i * 7 + j) as u32) ^ j as u64) as u8).collect::<Vec<_>>()
                    })
                    .map(Bytes::from)
                    .collect();
                (id, hash, b)
            },
        );
        (prop::collection::vec(frame, 1..4), prop::collection::vec(1usize..64, 1..8))
    }

    fn as_refs(frames: &Frames) -> Vec<(&str, [u8; 32], Vec<Bytes>)> {
        frames.iter().map(|(id, h, b)| (id.as_str(), *h, b.clone())).collect()
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity_in_any_chunking((frames, chunks) in frames_and_chunks()) {
            let frames = as_refs(&frames);
            let (events, end) = decode(&stream(&frames), &chunks, Limits::default());
            prop_assert!(end.is_ok(), "{:?}", end);
            prop_assert_eq!(events, expected(&frames));
        }

        /// Every byte of a frame counts: changing any one gives an error or other events.
        #[test]
        fn any_corrupted_byte_is_noticed(
            (frames, chunks) in frames_and_chunks(), at in any::<prop::sample::Index>(), x in 1u8..,
        ) {
            let frames = as_refs(&frames);
            let mut input = stream(&frames);
            let at = at.index(input.len());
            input[at] ^= x;
            let (events, end) = decode(&input, &chunks, Limits::default());
            prop_assert!(end.is_err() || events != expected(&frames));
        }
    }

    /// Negative control: the same property, on a stream with one byte changed, fails.
    #[test]
    fn the_round_trip_property_catches_a_corrupted_byte() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
        let mut runner = TestRunner::new_with_rng(Config { cases: 64, ..Config::default() }, rng);
        let result =
            runner.run(&(frames_and_chunks(), any::<prop::sample::Index>(), 1u8..), |((frames, chunks), at, x)| {
                let frames = as_refs(&frames);
                let mut input = stream(&frames);
                let at = at.index(input.len());
                input[at] ^= x;
                let (events, end) = decode(&input, &chunks, Limits::default());
                prop_assert!(end.is_ok(), "{:?}", end);
                prop_assert_eq!(events, expected(&frames));
                Ok(())
            });
        assert!(result.is_err(), "a corrupted byte went unnoticed");
    }
}
