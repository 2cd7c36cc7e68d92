//! GGUF files (llama.cpp's checkpoint format): the header, the metadata key/values and
//! the tensor directory, read from a memory map so tensor data is never copied.
//!
//! Layout (GGUF v2/v3, little-endian): `"GGUF"`, a `u32` version, `u64` tensor and
//! key/value counts, the key/values (`string` key, `u32` type, value), the tensor infos
//! (`string` name, `u32` rank, `u64` dims innermost first, `u32` ggml type, `u64`
//! offset), then the data from the next multiple of `general.alignment` (32 by default).
//! Every length and offset is checked against the file before use: a truncated or
//! corrupt file is an error naming the file and what was wrong, never a panic.

mod metadata;
pub mod tokenizer;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{EngineError, Result};
use crate::quant::GgmlType;
pub use metadata::Value;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bounds that keep a corrupt header from asking for absurd allocations.
const MAX_RANK: u32 = 4;

/// One tensor's directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Dimensions, innermost (contiguous) first, as GGUF stores them.
    pub dims: Vec<u64>,
    /// Element encoding.
    pub ggml_type: GgmlType,
    /// Offset of its data from the data section's start.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    /// Elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Rows and columns of the tensor seen as a matrix: `dims[0]` columns, the other
    /// dimensions' product rows (PyTorch's `[out, in]` for a linear weight).
    pub fn matrix(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        let rows = self.dims.iter().skip(1).product::<u64>();
        (rows as usize, cols as usize)
    }
}

/// An opened GGUF file.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<TensorInfo>,
    /// The whole file; tensor data is sliced out of it without copying.
    bytes: Bytes,
    /// The mapping behind `bytes`, where the file was mapped (not read into memory).
    map: Option<Arc<memmap2::Mmap>>,
    data_start: u64,
}

/// A shared mapping as the owner of a [`Bytes`].
struct Mapped(Arc<memmap2::Mmap>);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Reads little-endian values from a byte slice, every read bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let end =
            usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).filter(|&e| e <= self.buf.len()).ok_or_else(
                || format!("truncated: {what} needs {n} bytes at offset {}, file has {}", self.pos, self.buf.len()),
            )?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    /// A count of items each at least `min_item` bytes long, checked against what is left.
    fn count(&mut self, what: &str, min_item: u64) -> std::result::Result<u64, String> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item.max(1)) > left {
            return Err(format!("truncated or corrupt: {what} {n} cannot fit in the {left} bytes left"));
        }
        Ok(n)
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, reading its header, metadata and tensor directory.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the map is read-only (PROT_READ; memmap2 maps it shared). Another process
        // truncating the file underneath would fault on access, as it would for
        // llama.cpp; the file is a checkpoint nobody is expected to rewrite in place.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?);
        let mut f = Self::from_bytes(path, Bytes::from_owner(Mapped(map.clone())))?;
        f.map = Some(map);
        Ok(f)
    }

    /// The file's memory mapping, where it was opened from disk: a loader hands it to
    /// the matrices it builds, so pages it has copied elsewhere can be let go
    /// ([`crate::quant::QMatrix::with_mapping`]).
    pub fn mapping(&self) -> Option<&Arc<memmap2::Mmap>> {
        self.map.as_ref()
    }

    /// Parses a GGUF image already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Bytes) -> Result<Self> {
        let fail = |reason: String| EngineError::Gguf { path: path.to_path_buf(), reason };
        let mut c = Cursor { buf: &bytes, pos: 0 };
        let magic = c.array::<4>("magic").map_err(fail)?;
        if &magic != MAGIC {
            return Err(fail(format!("not a GGUF file: magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32("version").map_err(fail)?;
        if !(2..=3).contains(&version) {
            return Err(fail(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        // A tensor info is at least 8 (name) + 4 + 4 + 8 bytes, a key/value 8 + 4 + 1.
        let n_tensors = c.count("tensor count", 24).map_err(fail)?;
        let n_kv = c.count("metadata count", 13).map_err(fail)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}")).map_err(fail)?;
            let value = metadata::read_value(&mut c, &key).map_err(fail)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(fail(format!("metadata key {key} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(fail(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor {i} name")).map_err(fail)?;
            let rank = c.u32(&format!("tensor {name} rank")).map_err(fail)?;
            if rank == 0 || rank > MAX_RANK {
                return Err(fail(format!("tensor {name}: rank {rank} (1 to {MAX_RANK} supported)")));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(c.u64(&format!("tensor {name} dims")).map_err(fail)?);
            }
            if dims.contains(&0) {
                return Err(fail(format!("tensor {name}: dims {dims:?} include 0")));
            }
            if infos.iter().any(|t: &TensorInfo| t.name == name) {
                return Err(fail(format!("tensor {name} appears twice")));
            }
            let raw_type = c.u32(&format!("tensor {name} type")).map_err(fail)?;
            let ggml_type = GgmlType::from_id(raw_type).ok_or_else(|| {
                let what =
                    GgmlType::unsupported_name(raw_type).map_or(raw_type.to_string(), |n| format!("{n} ({raw_type})"));
                fail(format!(
                    "tensor {name}: ggml type {what} is not supported (F32, F16, BF16, Q8_0, Q4_0, \
                     Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K are)"
                ))
            })?;
            let offset = c.u64(&format!("tensor {name} offset")).map_err(fail)?;
            let elements = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let size = elements.and_then(|n| ggml_type.row_bytes(n)).ok_or_else(|| {
                fail(format!(
                    "tensor {name}: dims {dims:?} do not fit {ggml_type:?} (rows must be whole blocks of {})",
                    ggml_type.block_elements()
                ))
            })?;
            if dims[0] % ggml_type.block_elements() as u64 != 0 {
                return Err(fail(format!(
                    "tensor {name}: {} columns are not whole blocks of {} ({ggml_type:?})",
                    dims[0],
                    ggml_type.block_elements()
                )));
            }
            if offset % alignment != 0 {
                return Err(fail(format!("tensor {name}: offset {offset} is not aligned to {alignment}")));
            }
            infos.push(TensorInfo { name, dims, ggml_type, offset, size });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let len = bytes.len() as u64;
        for t in &infos {
            let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.size));
            if end.is_none_or(|e| e > len) {
                return Err(fail(format!(
                    "truncated: tensor {} needs bytes {}..{} of the data section, the file ends at {}",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.size),
                    len.saturating_sub(data_start)
                )));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors: infos, bytes, map: None, data_start })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key/value.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's entry.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw data (a view of the mapped file, not a copy). Entries of this
    /// file's directory are always in bounds; another file's are checked.
    pub fn data(&self, t: &TensorInfo) -> Result<Bytes> {
        let range = self
            .data_start
            .checked_add(t.offset)
            .and_then(|s| Some((s, s.checked_add(t.size)?)))
            .filter(|&(_, e)| e <= self.bytes.len() as u64);
        match range {
            Some((s, e)) => Ok(self.bytes.slice(s as usize..e as usize)),
            None => Err(self.error(format!("tensor {}: bytes beyond the end of the file", t.name))),
        }
    }

    /// An error about this file.
    pub(crate) fn error(&self, reason: impl Into<String>) -> EngineError {
        EngineError::Gguf { path: self.path.clone(), reason: reason.into() }
    }

    /// A required metadata value as an unsigned integer.
    pub(crate) fn req_u64(&self, key: &str) -> Result<u64> {
        match self.get(key) {
            None => Err(self.error(format!("metadata {key} is missing"))),
            Some(v) => v.as_u64().ok_or_else(|| self.error(format!("metadata {key} is {v:?}, expected an integer"))),
        }
    }

    /// An optional metadata value as a float.
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| self.error(format!("metadata {key} is {v:?}, expected a number")))
            }
        }
    }

    /// An optional metadata value as a string.
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.error(format!("metadata {key} is {v:?}, expected a string"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
