//! The same-host path: the prefill side writes a transfer (one [`crate::frame`], blocks
//! checksummed) into a shared-memory directory (`/dev/shm/llmd` where there is one),
//! the decode side reads it. No socket carries the bytes; the side channel only says
//! where the file is.
//!
//! Files are slots, reused: a writer claims a free slot by renaming it to the
//! transfer's name (`slot-<id>.<request>.kvx`; atomic, so two writers never share one)
//! or makes a new one, writes the frame, and only then hands out its path, so a reader
//! never sees half a transfer. The reader copies it out and renames the slot free
//! (`slot-<id>.free.kvx`) for the next writer, whose pages are then already allocated:
//! a transfer costs a copy in and a copy out, not fresh tmpfs pages each time. The
//! reader's buffers are reused too, coming back when the last block of a transfer is
//! dropped. [`ShmStore::sweep`] removes slots idle past an age: transfers nobody pulled
//! (their holds expired), a crashed writer's, spare free ones. Files are read rather
//! than mapped: a peer truncating a mapped file would crash the reader.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::{Result, TransferError};
use crate::frame::{self, Limits};

const SUFFIX: &str = "kvx";
const FREE: &str = "free";
/// Read buffers kept for reuse at most.
const KEEP_BUFFERS: usize = 8;

type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

/// A directory of transfers on this host.
#[derive(Debug, Clone)]
pub struct ShmStore {
    dir: PathBuf,
    buffers: Pool,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> TransferError {
    move |source| TransferError::Io { what, source }
}

// A file name from a request id: its safe characters, then a hash of the whole id so
// two ids never share a file.
fn file_name(request: &str) -> String {
    let safe: String =
        request.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).take(64).collect();
    format!("{safe}-{:016x}.{SUFFIX}", frame::checksum(request.as_bytes()))
}

/// A slot's id from its file name (`slot-<16 hex>.…`).
fn slot_id(name: &str) -> Option<&str> {
    let id = name.strip_prefix("slot-")?.get(..16)?;
    (id.bytes().all(|b| b.is_ascii_hexdigit()) && name.as_bytes().get(21) == Some(&b'.')).then_some(id)
}

/// A read buffer lent to a transfer's blocks; it goes back to the pool with the last.
struct Pooled {
    data: Vec<u8>,
    len: usize,
    pool: Pool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut pool = self.pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < KEEP_BUFFERS {
            pool.push(std::mem::take(&mut self.data));
        }
    }
}

impl ShmStore {
    /// `/dev/shm/llmd` when `/dev/shm` exists (Linux), else `llmd-shm` under the
    /// temporary directory; created if missing.
    pub fn default_dir() -> PathBuf {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() { shm.join("llmd") } else { std::env::temp_dir().join("llmd-shm") }
    }

    /// A store in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(ShmStore { dir, buffers: Pool::default() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A slot for `name`: a free one renamed, else a new file.
    fn claim(&self, name: &str) -> Result<(PathBuf, std::fs::File)> {
        let free_suffix = format!(".{FREE}.{SUFFIX}");
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let file = e.file_name();
                let file = file.to_string_lossy();
                let Some(id) = slot_id(&file).filter(|_| file.ends_with(&free_suffix)) else { continue };
                let path = self.dir.join(format!("slot-{id}.{name}"));
                // Another writer may have taken it first: then try the next.
                if std::fs::rename(e.path(), &path).is_ok()
                    && let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path)
                {
                    return Ok((path, f));
                }
            }
        }
        let fresh = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ frame::checksum(name.as_bytes());
        let path = self.dir.join(format!("slot-{fresh:016x}.{name}"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
        Ok((path, f))
    }

    /// Writes `request`'s blocks, returning the file's path for the puller.
    pub fn publish(&self, request: &str, layout_hash: [u8; 32], blocks: &[Bytes]) -> Result<PathBuf> {
        self.publish_with(request, layout_hash, blocks, None)
    }

    /// [`publish`](Self::publish) with the blocks' checksums computed already.
    pub fn publish_with(
        &self,
        request: &str,
        layout_hash: [u8; 32],
        blocks: &[Bytes],
        checksums: Option<&[u64]>,
    ) -> Result<PathBuf> {
        let parts = frame::encode_with(request, layout_hash, blocks, checksums)?;
        let total: usize = parts.iter().map(Bytes::len).sum();
        let (path, mut f) = self.claim(&file_name(request))?;
        let mut write = || -> std::io::Result<()> {
            for p in &parts {
                f.write_all(p)?;
            }
            // A reused slot may be longer: the rest is another transfer's.
            if f.metadata()?.len() > total as u64 {
                f.set_len(total as u64)?;
            }
            f.flush()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&path);
            return Err(TransferError::Io { what: format!("writing {}", path.display()), source: e });
        }
        Ok(path)
    }

    /// Reads the transfer at `path` (which must lie in this store), checking that it
    /// is `request`'s, written under `layout_hash`, and every block's checksum; the
    /// slot is freed once read, whatever the outcome. The blocks are views of one
    /// reused buffer.
    pub fn take(&self, path: &Path, request: &str, layout_hash: [u8; 32], limits: Limits) -> Result<Vec<Bytes>> {
        // Only slots of this store: a path from the wire must not name anything else.
        let name = path.file_name().ok_or_else(|| TransferError::Frame(format!("{} is not a file", path.display())))?;
        let name = name.to_string_lossy();
        let id = slot_id(&name).filter(|_| name.get(22..) == Some(file_name(request).as_str()));
        let Some(id) = id.filter(|_| path.parent() == Some(self.dir.as_path())) else {
            return Err(TransferError::Frame(format!(
                "{} is not {request:?}'s transfer in {}",
                path.display(),
                self.dir.display()
            )));
        };
        let read = || -> std::io::Result<Pooled> {
            let mut f = std::fs::File::open(path)?;
            let len = usize::try_from(f.metadata()?.len()).unwrap_or(usize::MAX);
            let mut data =
                self.buffers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().unwrap_or_default();
            if data.len() < len {
                data.resize(len, 0);
            }
            f.read_exact(&mut data[..len])?;
            Ok(Pooled { data, len, pool: self.buffers.clone() })
        };
        let data = read().map_err(io(format!("reading {}", path.display())));
        // Free the slot for the next writer (or drop it if that fails).
        if std::fs::rename(path, self.dir.join(format!("slot-{id}.{FREE}.{SUFFIX}"))).is_err() {
            let _ = std::fs::remove_file(path);
        }
        let data = Bytes::from_owner(data?);
        let (header, blocks) = frame::decode_whole(&data, limits)?;
        if header.transfer != request || header.layout_hash != layout_hash {
            return Err(TransferError::Frame(format!("{} holds another transfer or layout", path.display())));
        }
        Ok(blocks)
    }

    /// Removes slots untouched for `age`: transfers never pulled, a crashed writer's,
    /// free slots nobody reused. Returns how many went.
    pub fn sweep(&self, age: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let now = SystemTime::now();
        let mut removed = 0;
        for e in entries.flatten() {
            let old =
                e.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
            let name = e.file_name();
            let ours = slot_id(&name.to_string_lossy()).is_some();
            if old && ours && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn store(name: &str) -> ShmStore {
        ShmStore::new(std::env::temp_dir().join(format!("llmd-shm-test-{name}-{}", std::process::id()))).unwrap()
    }

    fn blocks(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(vec![i as u8; 4096])).collect()
    }

    #[test]
    fn a_transfer_is_read_once_whole() {
        let s = store("once");
        let path = s.publish("req/1 ü", [3; 32], &blocks(5)).unwrap();
        assert!(path.starts_with(s.dir()));
        assert_eq!(s.take(&path, "req/1 ü", [3; 32], Limits::default()).unwrap(), blocks(5));
        // Gone once read.
        assert!(matches!(s.take(&path, "req/1 ü", [3; 32], Limits::default()), Err(TransferError::Io { .. })));
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn slots_and_read_buffers_are_reused() {
        let s = store("reuse");
        let a = s.publish("a", [3; 32], &blocks(4)).unwrap();
        let got = s.take(&a, "a", [3; 32], Limits::default()).unwrap();
        let at = got[0].as_ptr();
        drop(got);
        // The next transfer, smaller, lands in the same slot and the same buffer.
        let b = s.publish("b", [3; 32], &blocks(2)).unwrap();
        let slot = |p: &Path| p.file_name().unwrap().to_string_lossy()[..21].to_string();
        assert_eq!(slot(&a), slot(&b));
        let got = s.take(&b, "b", [3; 32], Limits::default()).unwrap();
        assert_eq!(got, blocks(2));
        // (The header is shorter, so block 0 starts a little earlier in the buffer.)
        assert!((got[0].as_ptr() as usize).abs_diff(at as usize) < 64, "the first transfer's buffer");
        // A buffer whose blocks are alive is not lent again.
        let c = s.publish("c", [3; 32], &blocks(2)).unwrap();
        let other = s.take(&c, "c", [3; 32], Limits::default()).unwrap();
        assert!((other[0].as_ptr() as usize).abs_diff(got[0].as_ptr() as usize) >= 4096);
        assert_eq!(got, blocks(2));
        assert_eq!(std::fs::read_dir(s.dir()).unwrap().count(), 1, "one slot served all three");
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn the_wrong_request_layout_or_place_is_refused() {
        let s = store("wrong");
        let path = s.publish("a", [3; 32], &blocks(1)).unwrap();
        assert!(s.take(&path, "b", [3; 32], Limits::default()).is_err(), "another request's name");
        assert!(s.take(Path::new("/etc/passwd"), "a", [3; 32], Limits::default()).is_err(), "outside the store");
        let err = s.take(&path, "a", [4; 32], Limits::default()).unwrap_err().to_string();
        assert!(err.contains("another transfer or layout"), "{err}");
        let _ = std::fs::remove_dir_all(s.dir());
    }

    #[test]
    fn a_corrupted_file_fails_its_checksum_and_stale_files_are_swept() {
        let s = store("corrupt");
        let path = s.publish("a", [3; 32], &blocks(2)).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(matches!(
            s.take(&path, "a", [3; 32], Limits::default()),
            Err(TransferError::Checksum { block: 1, .. })
        ));
        // The failed read freed the slot; the next transfer takes it.
        s.publish("b", [3; 32], &blocks(1)).unwrap();
        assert_eq!(std::fs::read_dir(s.dir()).unwrap().count(), 1);
        assert_eq!(s.sweep(Duration::from_secs(3600)), 0);
        assert_eq!(s.sweep(Duration::ZERO), 1);
        let _ = std::fs::remove_dir_all(s.dir());
    }
}
