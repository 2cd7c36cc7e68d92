//! vLLM's KV event wire format: msgpack as `msgspec` writes `KVEventBatch`.
//!
//! A batch is the array `[ts, events, data_parallel_rank]`. Since vLLM 0.33 each event
//! is a map whose first entry is `"type": <class name>`, followed by the fields in
//! declaration order, optional fields left out when `None`; older engines sent events
//! as positional arrays (`["BlockStored", hashes, parent, ...]`). [`decode_batch`]
//! reads both and ignores fields it does not know; [`encode_batch`] writes exactly the
//! bytes vLLM 0.33 writes for the same batch (same map header widths, shortest
//! integers, `float64` timestamps), which the golden tests check byte for byte.
//!
//! On the wire (ZMQ PUB) each batch is the payload of a 3-frame message
//! `(topic, seq: u64 big-endian, payload)`; framing belongs to the transport, not here.

use rmp::encode as enc;
use rmpv::Value;

use crate::error::{KvCacheError, Result};
use crate::events::{BlockRemoved, BlockStored, ExternalBlockHash, KvEvent, KvEventBatch};
use crate::extra_keys::KeyValue;
use crate::hash::BlockHash;

// msgspec sizes a struct's map header for its largest possible field count (the tag
// included): fixmap below 16 fields, map16 from 16. BlockStored has 15 fields + tag.
const BLOCK_STORED_MAX_FIELDS: usize = 16;
const BLOCK_REMOVED_MAX_FIELDS: usize = 6;

// A batch nests about six levels deep (batch, events, event, extra_keys, block, tuple).
// A low cap keeps hostile input from exhausting the stack while decoding.
const MAX_NESTING: usize = 32;

/// Encodes a batch as vLLM 0.33 does.
pub fn encode_batch(batch: &KvEventBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(64 + batch.events.len() * 128);
    encode_batch_into(&mut out, batch)?;
    Ok(out)
}

/// Encodes a batch, appending to `out`.
pub fn encode_batch_into(out: &mut Vec<u8>, batch: &KvEventBatch) -> Result<()> {
    let mut w = Writer(out);
    w.array(3);
    w.f64(batch.ts);
    w.array(batch.events.len());
    for e in &batch.events {
        match e {
            KvEvent::BlockStored(s) => w.stored(s),
            KvEvent::BlockRemoved(r) => w.removed(r),
            KvEvent::AllBlocksCleared { medium } => {
                // vLLM's event is the tag alone; a tier, when named, follows it.
                w.map_header(1 + usize::from(medium.is_some()), 2);
                w.str("type");
                w.str("AllBlocksCleared");
                if let Some(m) = medium {
                    w.str("medium");
                    w.str(m);
                }
            }
            KvEvent::Unknown { tag } => {
                return Err(KvCacheError::Encode(format!("event of unknown type {tag:?}")));
            }
        }
    }
    w.opt_int(batch.data_parallel_rank);
    Ok(())
}

struct Writer<'a>(&'a mut Vec<u8>);

// Writing into a Vec cannot fail, so rmp's results are discarded.
impl Writer<'_> {
    fn array(&mut self, len: usize) {
        let _ = enc::write_array_len(self.0, len as u32);
    }

    fn map_header(&mut self, len: usize, max_fields: usize) {
        if max_fields < 16 {
            self.0.push(0x80 | len as u8);
        } else {
            self.0.push(0xde);
            self.0.extend_from_slice(&(len as u16).to_be_bytes());
        }
    }

    fn f64(&mut self, v: f64) {
        let _ = enc::write_f64(self.0, v);
    }

    fn str(&mut self, s: &str) {
        let _ = enc::write_str(self.0, s);
    }

    fn bin(&mut self, b: &[u8]) {
        let _ = enc::write_bin(self.0, b);
    }

    fn nil(&mut self) {
        let _ = enc::write_nil(self.0);
    }

    fn int(&mut self, v: i64) {
        let _ = enc::write_sint(self.0, v);
    }

    fn uint(&mut self, v: u64) {
        let _ = enc::write_uint(self.0, v);
    }

    fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.nil(),
        }
    }

    fn opt_str(&mut self, v: Option<&str>) {
        match v {
            Some(v) => self.str(v),
            None => self.nil(),
        }
    }

    fn hash(&mut self, h: &ExternalBlockHash) {
        match h {
            ExternalBlockHash::Bytes(b) => self.bin(b.as_bytes()),
            ExternalBlockHash::Int(i) => self.uint(*i),
        }
    }

    fn hashes(&mut self, hs: &[ExternalBlockHash]) {
        self.array(hs.len());
        for h in hs {
            self.hash(h);
        }
    }

    fn tokens(&mut self, ts: &[u32]) {
        self.array(ts.len());
        for &t in ts {
            self.uint(u64::from(t));
        }
    }

    fn value(&mut self, v: &KeyValue) {
        match v {
            KeyValue::Nil => self.nil(),
            KeyValue::Bool(b) => {
                let _ = enc::write_bool(self.0, *b);
            }
            KeyValue::Int(i) => self.int(*i),
            KeyValue::UInt(u) => self.uint(*u),
            KeyValue::Float(f) => self.f64(*f),
            KeyValue::Str(s) => self.str(s),
            KeyValue::Bytes(b) => self.bin(b),
            KeyValue::Array(items) => {
                self.array(items.len());
                for i in items {
                    self.value(i);
                }
            }
        }
    }

    fn stored(&mut self, s: &BlockStored) {
        let optional = [
            s.extra_keys.is_some(),
            s.group_idx.is_some(),
            s.kv_cache_spec_kind.is_some(),
            s.kv_cache_spec_sliding_window.is_some(),
            s.locality.is_some(),
            s.ownership.is_some(),
            s.session_id.is_some(),
            s.lookahead_token_ids.is_some(),
        ];
        let n = 8 + optional.iter().filter(|&&p| p).count();
        self.map_header(n, BLOCK_STORED_MAX_FIELDS);
        self.str("type");
        self.str("BlockStored");
        self.str("block_hashes");
        self.hashes(&s.block_hashes);
        self.str("parent_block_hash");
        match &s.parent_block_hash {
            Some(h) => self.hash(h),
            None => self.nil(),
        }
        self.str("token_ids");
        self.tokens(&s.token_ids);
        self.str("block_size");
        self.uint(u64::from(s.block_size));
        self.str("lora_id");
        self.opt_int(s.lora_id);
        self.str("medium");
        self.opt_str(s.medium.as_deref());
        self.str("lora_name");
        self.opt_str(s.lora_name.as_deref());
        if let Some(keys) = &s.extra_keys {
            self.str("extra_keys");
            self.array(keys.len());
            for block in keys {
                match block {
                    None => self.nil(),
                    Some(vals) => self.value(&KeyValue::Array(vals.clone())),
                }
            }
        }
        self.opt_field_int("group_idx", s.group_idx);
        self.opt_field_str("kv_cache_spec_kind", s.kv_cache_spec_kind.as_deref());
        self.opt_field_int("kv_cache_spec_sliding_window", s.kv_cache_spec_sliding_window);
        self.opt_field_str("locality", s.locality.as_deref());
        self.opt_field_str("ownership", s.ownership.as_deref());
        self.opt_field_str("session_id", s.session_id.as_deref());
        if let Some(look) = &s.lookahead_token_ids {
            self.str("lookahead_token_ids");
            self.array(look.len());
            for t in look {
                self.tokens(t);
            }
        }
    }

    fn removed(&mut self, r: &BlockRemoved) {
        let optional = [r.group_idx.is_some(), r.locality.is_some(), r.ownership.is_some()];
        let n = 3 + optional.iter().filter(|&&p| p).count();
        self.map_header(n, BLOCK_REMOVED_MAX_FIELDS);
        self.str("type");
        self.str("BlockRemoved");
        self.str("block_hashes");
        self.hashes(&r.block_hashes);
        self.str("medium");
        self.opt_str(r.medium.as_deref());
        self.opt_field_int("group_idx", r.group_idx);
        self.opt_field_str("locality", r.locality.as_deref());
        self.opt_field_str("ownership", r.ownership.as_deref());
    }

    fn opt_field_int(&mut self, name: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.str(name);
            self.int(v);
        }
    }

    fn opt_field_str(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.str(name);
            self.str(v);
        }
    }
}

/// Decodes a batch from vLLM (0.33 map-form events or older array-form events).
pub fn decode_batch(bytes: &[u8]) -> Result<KvEventBatch> {
    let mut rd = bytes;
    let v = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_NESTING).map_err(|e| err("batch", &e.to_string()))?;
    if !rd.is_empty() {
        return Err(err("batch", &format!("{} trailing bytes after the batch", rd.len())));
    }
    let items = match v {
        Value::Array(items) if items.len() >= 2 => items,
        other => {
            return Err(err("batch", &format!("expected [ts, events, dp_rank], got {}", kind(&other))));
        }
    };
    let mut it = items.into_iter();
    let ts = match it.next() {
        Some(Value::F64(f)) => f,
        Some(Value::F32(f)) => f64::from(f),
        Some(Value::Integer(i)) => i.as_f64().unwrap_or(0.0),
        other => {
            return Err(err("batch.ts", &format!("expected a number, got {}", opt_kind(other.as_ref()))));
        }
    };
    let events = match it.next() {
        Some(Value::Array(evs)) => evs
            .into_iter()
            .enumerate()
            .map(|(i, e)| decode_event(e).map_err(|e| prefix(&format!("batch.events[{i}]"), e)))
            .collect::<Result<Vec<_>>>()?,
        other => {
            return Err(err("batch.events", &format!("expected an array, got {}", opt_kind(other.as_ref()))));
        }
    };
    let data_parallel_rank = match it.next() {
        None => None,
        Some(v) => opt_i64(v, "batch.data_parallel_rank")?,
    };
    Ok(KvEventBatch { ts, events, data_parallel_rank })
}

/// The fields of one event, by name or by position.
enum Fields {
    Named(Vec<(Value, Value)>),
    Positional(std::vec::IntoIter<Value>),
}

impl Fields {
    /// Takes the next field: by name for map events, in order for array events.
    fn take(&mut self, name: &str) -> Option<Value> {
        match self {
            Fields::Named(pairs) => {
                let i = pairs.iter().position(|(k, _)| k.as_str() == Some(name))?;
                Some(pairs.swap_remove(i).1)
            }
            Fields::Positional(it) => it.next(),
        }
    }
}

fn decode_event(v: Value) -> Result<KvEvent> {
    let (tag, mut f) = match v {
        Value::Map(mut pairs) => {
            let i = pairs
                .iter()
                .position(|(k, _)| k.as_str() == Some("type"))
                .ok_or_else(|| err("event", "map without a \"type\" tag"))?;
            let tag = pairs.swap_remove(i).1;
            (tag, Fields::Named(pairs))
        }
        Value::Array(items) => {
            let mut it = items.into_iter();
            let tag = it.next().ok_or_else(|| err("event", "empty array"))?;
            (tag, Fields::Positional(it))
        }
        other => {
            return Err(err("event", &format!("expected a map or array, got {}", kind(&other))));
        }
    };
    let tag = match tag {
        Value::String(s) => s.into_str().ok_or_else(|| err("event.type", "not UTF-8"))?,
        other => {
            return Err(err("event.type", &format!("expected a string, got {}", kind(&other))));
        }
    };
    match tag.as_str() {
        "BlockStored" => {
            let block_hashes = hashes(req(&mut f, "BlockStored.block_hashes")?, "BlockStored.block_hashes")?;
            let parent_block_hash = match req(&mut f, "BlockStored.parent_block_hash")? {
                Value::Nil => None,
                v => Some(hash(v, "BlockStored.parent_block_hash")?),
            };
            let token_ids = tokens(req(&mut f, "BlockStored.token_ids")?, "BlockStored.token_ids")?;
            // A location-only event (vLLM's offloader announcing a block in host memory:
            // no tokens) may carry block size 0, as some vLLM versions send it.
            let block_size = match req(&mut f, "BlockStored.block_size")?.as_u64() {
                Some(b) if (b > 0 || token_ids.is_empty()) && b <= u64::from(u32::MAX) => b as u32,
                _ => {
                    return Err(err("BlockStored.block_size", "expected a positive 32-bit integer"));
                }
            };
            let mut s = BlockStored { block_hashes, parent_block_hash, token_ids, block_size, ..Default::default() };
            // Fields added over vLLM versions: absent in older senders' batches.
            s.lora_id = opt_field(&mut f, "lora_id", opt_i64)?;
            s.medium = opt_field(&mut f, "medium", opt_string)?;
            s.lora_name = opt_field(&mut f, "lora_name", opt_string)?;
            s.extra_keys = opt_field(&mut f, "extra_keys", extra_keys)?;
            s.group_idx = opt_field(&mut f, "group_idx", opt_i64)?;
            s.kv_cache_spec_kind = opt_field(&mut f, "kv_cache_spec_kind", opt_string)?;
            s.kv_cache_spec_sliding_window = opt_field(&mut f, "kv_cache_spec_sliding_window", opt_i64)?;
            s.locality = opt_field(&mut f, "locality", opt_string)?;
            s.ownership = opt_field(&mut f, "ownership", opt_string)?;
            s.session_id = opt_field(&mut f, "session_id", opt_string)?;
            s.lookahead_token_ids = opt_field(&mut f, "lookahead_token_ids", lookahead)?;
            Ok(KvEvent::BlockStored(s))
        }
        "BlockRemoved" => Ok(KvEvent::BlockRemoved(BlockRemoved {
            block_hashes: hashes(req(&mut f, "BlockRemoved.block_hashes")?, "BlockRemoved.block_hashes")?,
            medium: opt_field(&mut f, "medium", opt_string)?,
            group_idx: opt_field(&mut f, "group_idx", opt_i64)?,
            locality: opt_field(&mut f, "locality", opt_string)?,
            ownership: opt_field(&mut f, "ownership", opt_string)?,
        })),
        "AllBlocksCleared" => Ok(KvEvent::AllBlocksCleared { medium: opt_field(&mut f, "medium", opt_string)? }),
        _ => Ok(KvEvent::Unknown { tag }),
    }
}

fn req(f: &mut Fields, what: &str) -> Result<Value> {
    f.take(what.rsplit('.').next().unwrap_or(what)).ok_or_else(|| err(what, "missing"))
}

fn opt_field<T>(f: &mut Fields, name: &str, conv: impl FnOnce(Value, &str) -> Result<Option<T>>) -> Result<Option<T>> {
    match f.take(name) {
        None => Ok(None),
        Some(v) => conv(v, name),
    }
}

fn opt_i64(v: Value, what: &str) -> Result<Option<i64>> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(i) => i.as_i64().map(Some).ok_or_else(|| err(what, "integer out of range")),
        other => Err(err(what, &format!("expected an integer or nil, got {}", kind(&other)))),
    }
}

fn opt_string(v: Value, what: &str) -> Result<Option<String>> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => s.into_str().map(Some).ok_or_else(|| err(what, "not UTF-8")),
        other => Err(err(what, &format!("expected a string or nil, got {}", kind(&other)))),
    }
}

fn hash(v: Value, what: &str) -> Result<ExternalBlockHash> {
    match v {
        Value::Binary(b) => BlockHash::from_bytes(&b)
            .map(ExternalBlockHash::Bytes)
            .ok_or_else(|| err(what, &format!("hash of {} bytes (expected 1 to 32)", b.len()))),
        Value::Integer(i) => i
            .as_u64()
            .or_else(|| i.as_i64().map(|s| s as u64))
            .map(ExternalBlockHash::Int)
            .ok_or_else(|| err(what, "integer hash out of range")),
        other => Err(err(what, &format!("expected bytes or an integer, got {}", kind(&other)))),
    }
}

fn hashes(v: Value, what: &str) -> Result<Vec<ExternalBlockHash>> {
    match v {
        Value::Array(items) => items.into_iter().map(|h| hash(h, what)).collect(),
        other => Err(err(what, &format!("expected an array, got {}", kind(&other)))),
    }
}

fn tokens(v: Value, what: &str) -> Result<Vec<u32>> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| err(what, "token ids must be integers in 0..2^32"))
            })
            .collect(),
        other => Err(err(what, &format!("expected an array, got {}", kind(&other)))),
    }
}

fn lookahead(v: Value, what: &str) -> Result<Option<Vec<Vec<u32>>>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(items) => items.into_iter().map(|t| tokens(t, what)).collect::<Result<_>>().map(Some),
        other => Err(err(what, &format!("expected an array or nil, got {}", kind(&other)))),
    }
}

fn extra_keys(v: Value, what: &str) -> Result<Option<Vec<Option<Vec<KeyValue>>>>> {
    match v {
        Value::Nil => Ok(None),
        Value::Array(blocks) => blocks
            .into_iter()
            .map(|b| match b {
                Value::Nil => Ok(None),
                Value::Array(vals) => vals.into_iter().map(|x| key_value(x, what)).collect::<Result<_>>().map(Some),
                other => Err(err(what, &format!("expected an array or nil per block, got {}", kind(&other)))),
            })
            .collect::<Result<_>>()
            .map(Some),
        other => Err(err(what, &format!("expected an array or nil, got {}", kind(&other)))),
    }
}

fn key_value(v: Value, what: &str) -> Result<KeyValue> {
    Ok(match v {
        Value::Nil => KeyValue::Nil,
        Value::Boolean(b) => KeyValue::Bool(b),
        Value::Integer(i) => match (i.as_i64(), i.as_u64()) {
            (Some(s), _) => KeyValue::Int(s),
            (None, Some(u)) => KeyValue::UInt(u),
            _ => return Err(err(what, "integer out of range")),
        },
        Value::F32(f) => KeyValue::Float(f64::from(f)),
        Value::F64(f) => KeyValue::Float(f),
        Value::String(s) => KeyValue::Str(s.into_str().ok_or_else(|| err(what, "not UTF-8"))?),
        Value::Binary(b) => KeyValue::Bytes(b),
        Value::Array(items) => KeyValue::Array(items.into_iter().map(|x| key_value(x, what)).collect::<Result<_>>()?),
        other => return Err(err(what, &format!("unsupported value {}", kind(&other)))),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "a boolean",
        Value::Integer(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::String(_) => "a string",
        Value::Binary(_) => "bytes",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension value",
    }
}

fn opt_kind(v: Option<&Value>) -> &'static str {
    v.map_or("nothing", kind)
}

fn err(what: &str, why: &str) -> KvCacheError {
    KvCacheError::Decode(format!("{what}: {why}"))
}

fn prefix(p: &str, e: KvCacheError) -> KvCacheError {
    match e {
        KvCacheError::Decode(m) => KvCacheError::Decode(format!("{p}: {m}")),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_a_clear_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x93",
            b"\xc0",
            b"\x92\xcb\0\0\0\0\0\0\0\0\x91\x05",
            b"\x93\x01\x90\xc0\xc0",
            // Lengths claiming 4 GiB of elements or bytes that are not there.
            b"\x93\x01\xdd\xff\xff\xff\xff",
            b"\x93\x01\x91\xc6\xff\xff\xff\xff",
        ] {
            let e = decode_batch(bytes).unwrap_err();
            assert!(matches!(e, KvCacheError::Decode(_)), "{e}");
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let mut bytes = vec![0x93, 0x01];
        bytes.extend(std::iter::repeat_n(0x91, 200_000));
        bytes.push(0xc0);
        assert!(matches!(decode_batch(&bytes), Err(KvCacheError::Decode(_))));
    }

    #[test]
    fn location_only_stores_may_carry_block_size_zero_as_some_vllm_offloaders_send() {
        let stored = |tokens: Vec<u32>| BlockStored {
            block_hashes: vec![ExternalBlockHash::Int(7)],
            token_ids: tokens,
            block_size: 0,
            medium: Some("CPU".into()),
            ..Default::default()
        };
        let batch = |s| KvEventBatch { ts: 1.0, events: vec![KvEvent::BlockStored(s)], ..Default::default() };
        let cpu = batch(stored(Vec::new()));
        assert_eq!(decode_batch(&encode_batch(&cpu).unwrap()).unwrap(), cpu);
        // Tokens without a block size cannot be split into blocks.
        let e = decode_batch(&encode_batch(&batch(stored(vec![1, 2]))).unwrap()).unwrap_err();
        assert!(e.to_string().contains("block_size"), "{e}");
    }

    #[test]
    fn a_clear_may_name_its_tier_and_vllms_plain_one_is_unchanged() {
        let batch = |medium: Option<&str>| KvEventBatch {
            ts: 1.0,
            events: vec![KvEvent::AllBlocksCleared { medium: medium.map(Into::into) }],
            ..Default::default()
        };
        for m in [None, Some("CPU")] {
            assert_eq!(decode_batch(&encode_batch(&batch(m)).unwrap()).unwrap(), batch(m));
        }
        // vLLM's event, the tag alone: the same bytes as before tiers could be named.
        let plain = encode_batch(&batch(None)).unwrap();
        let mut event = vec![0x81, 0xa4];
        event.extend(b"type");
        event.push(0xb0);
        event.extend(b"AllBlocksCleared");
        assert!(plain.windows(event.len()).any(|w| w == event.as_slice()), "{plain:02x?}");
        // An array-form event with a trailing medium (newer engines' schema).
        let mut arr = vec![0x93, 0x01, 0x91, 0x92, 0xb0];
        arr.extend(b"AllBlocksCleared");
        arr.push(0xa3);
        arr.extend(b"CPU");
        arr.push(0xc0);
        assert_eq!(decode_batch(&arr).unwrap().events, batch(Some("CPU")).events);
    }

    #[test]
    fn unknown_event_types_are_kept_not_fatal() {
        let batch = [0x93, 0x01, 0x91, 0x81, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'N', b'e', b'w', 0xc0];
        let b = decode_batch(&batch).unwrap();
        assert_eq!(b.events, vec![KvEvent::Unknown { tag: "New".into() }]);
        assert!(encode_batch(&b).is_err());
    }
}
