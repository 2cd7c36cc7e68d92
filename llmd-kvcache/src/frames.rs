//! The ZMQ message layout of KV events, as vLLM publishes them: three frames — topic,
//! sequence number (8 bytes, big-endian), msgpack [`KvEventBatch`] — on a PUB socket.
//! Publishers and subscribers share these pure functions; the sockets live elsewhere.

use crate::codec::{decode_batch, encode_batch};
use crate::error::Result;
use crate::events::KvEventBatch;

/// The three frames of one message: topic, sequence number, payload.
pub fn encode_message(topic: &[u8], seq: u64, batch: &KvEventBatch) -> Result<[Vec<u8>; 3]> {
    Ok([topic.to_vec(), seq.to_be_bytes().to_vec(), encode_batch(batch)?])
}

/// The sequence number and payload of a message's frames: `(topic, seq, payload)` as
/// vLLM sends; a lone payload frame (no sequence number) is accepted too. `None` for a
/// message with no frames or a sequence frame that is not 8 bytes.
pub fn split_message<F: AsRef<[u8]>>(frames: &[F]) -> Option<(Option<u64>, &[u8])> {
    match frames {
        [_, seq, payload] => {
            let seq: [u8; 8] = seq.as_ref().try_into().ok()?;
            Some((Some(u64::from_be_bytes(seq)), payload.as_ref()))
        }
        [payload] => Some((None, payload.as_ref())),
        _ => None,
    }
}

/// Decodes a message's frames into its sequence number and batch.
pub fn decode_message<F: AsRef<[u8]>>(frames: &[F]) -> Result<(Option<u64>, KvEventBatch)> {
    let (seq, payload) = split_message(frames).ok_or_else(|| {
        crate::error::KvCacheError::Decode(format!(
            "a KV event message has 3 frames (topic, 8-byte sequence, payload) or 1; got {}",
            frames.len()
        ))
    })?;
    Ok((seq, decode_batch(payload)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_messages() {
        let batch = KvEventBatch { ts: 1.5, events: Vec::new(), data_parallel_rank: None };
        let frames = encode_message(b"kv", 42, &batch).unwrap();
        assert_eq!(frames[1], 42u64.to_be_bytes());
        let (seq, back) = decode_message(&frames).unwrap();
        assert_eq!((seq, back), (Some(42), batch.clone()));
        let (seq, _) = decode_message(&[frames[2].clone()]).unwrap();
        assert_eq!(seq, None);
        assert!(split_message(&[b"t".to_vec(), b"short".to_vec(), b"p".to_vec()]).is_none());
        assert!(decode_message::<Vec<u8>>(&[]).is_err());
        assert!(decode_message(&[b"t".to_vec(), vec![0; 8], b"garbage".to_vec()]).is_err());
    }
}
