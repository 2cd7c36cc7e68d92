//! The same-host path: the prefill side writes a transfer (one [`crate::frame`], blocks
//! checksummed) into a shared-memory directory (`/dev/shm/llmd` where there is one),
//! the decode side reads it and removes it. No socket carries the bytes; the side
//! channel only says where the file is.
//!
//! A file is written under a temporary name and renamed into place, so a reader never
//! sees half a transfer, even after a crash; [`ShmStore::sweep`] removes files nobody
//! pulled (their holds expired). Files are read rather than mapped: a peer truncating
//! a mapped file would crash the reader, and a read from tmpfs runs at memcpy speed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::error::{Result, TransferError};
use crate::frame::{self, Decoded, FrameDecoder, Limits};

const SUFFIX: &str = "kvx";

/// A directory of transfers on this host.
#[derive(Debug, Clone)]
pub struct ShmStore {
    dir: PathBuf,
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
        Ok(ShmStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let path = self.dir.join(file_name(request));
        let tmp = path.with_extension(format!("{SUFFIX}.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            for p in &parts {
                f.write_all(p)?;
            }
            f.flush()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(TransferError::Io { what: format!("writing {}", tmp.display()), source: e });
        }
        std::fs::rename(&tmp, &path).map_err(io(format!("publishing {}", path.display())))?;
        Ok(path)
    }

    /// Reads the transfer at `path` (which must lie in this store), checking that it
    /// is `request`'s, written under `layout_hash`, and every block's checksum; the
    /// file is removed once read, whatever the outcome.
    pub fn take(&self, path: &Path, request: &str, layout_hash: [u8; 32], limits: Limits) -> Result<Vec<Bytes>> {
        // Only files of this store: a path from the wire must not name anything else.
        let name = path.file_name().ok_or_else(|| TransferError::Frame(format!("{} is not a file", path.display())))?;
        if path.parent() != Some(self.dir.as_path()) || name.to_string_lossy() != file_name(request) {
            return Err(TransferError::Frame(format!(
                "{} is not {request:?}'s transfer in {}",
                path.display(),
                self.dir.display()
            )));
        }
        let data = std::fs::read(path).map_err(io(format!("reading {}", path.display())));
        let _ = std::fs::remove_file(path);
        // Vec → Bytes → BytesMut takes the allocation over: no copy.
        let mut buf = BytesMut::from(Bytes::from(data?));
        let mut decoder = FrameDecoder::new(limits);
        let mut blocks = Vec::new();
        while let Some(d) = decoder.feed(&mut buf)? {
            match d {
                Decoded::Header(h) => {
                    if h.transfer != request || h.layout_hash != layout_hash {
                        return Err(TransferError::Frame(format!(
                            "{} holds another transfer or layout",
                            path.display()
                        )));
                    }
                }
                Decoded::Block { data, .. } => blocks.push(data),
                Decoded::Done => return Ok(blocks),
            }
        }
        Err(TransferError::Frame(format!("{} ends mid-transfer", path.display())))
    }

    /// Removes transfers (and leftover temporary files) older than `age`: pulls that
    /// never came. Returns how many went.
    pub fn sweep(&self, age: Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let now = SystemTime::now();
        let mut removed = 0;
        for e in entries.flatten() {
            let old =
                e.metadata().and_then(|m| m.modified()).is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
            let ours = e.file_name().to_string_lossy().contains(&format!(".{SUFFIX}"));
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
        s.publish("b", [3; 32], &blocks(1)).unwrap();
        assert_eq!(s.sweep(Duration::from_secs(3600)), 0);
        assert_eq!(s.sweep(Duration::ZERO), 1);
        let _ = std::fs::remove_dir_all(s.dir());
    }
}
