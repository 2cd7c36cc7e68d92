//! The same-host path: the prefill side keeps the blocks it holds in a shared-memory
//! arena ([`ShmArena`]), the decode side maps that arena once ([`ShmMaps`]) and takes
//! each transfer's blocks as views of it, checking their checksums. No byte is copied
//! between the two processes; the side channel only says where the blocks lie.
//!
//! The arena is a `memfd` of fixed-size slots, one block each, sealed against
//! shrinking and growing before anyone sees it: a reader's mapping can never lose the
//! pages under it (reading a mapped file that a peer truncated would kill the reader
//! with `SIGBUS`; the seal makes that impossible, and the reader checks the seals
//! before it maps). A reader opens it through `/proc/<pid>/fd/<fd>`, checks that it is
//! the arena named (its `memfd` name, inode and size), and keeps the mapping for the
//! next transfers, so a pull costs no page-table work once the arena's slots have been
//! seen. The prefill side lends a transfer's slots until the reader says it is done
//! with them (its views dropped) or its connection ends; only then are they reused.
//!
//! Linux only; elsewhere an arena cannot be made and pulls go over TCP. A reader that
//! cannot open the arena (another PID namespace, another user) gets the blocks inline
//! on the side channel instead.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Result, TransferError};
use crate::frame;

/// Mappings of other engines' arenas a reader keeps at most.
const KEEP_MAPPINGS: usize = 8;

/// Where an arena is, as its owner tells a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaPlace {
    /// The owner's process id.
    pub pid: u32,
    /// The arena's file descriptor in the owner.
    pub fd: u32,
    /// A random id, in the `memfd`'s name: another arena at a reused pid and fd differs.
    pub id: u64,
    /// The `memfd`'s inode number.
    pub inode: u64,
    /// Its size in bytes (fixed by its seals).
    pub len: u64,
}

/// One block of a transfer in an arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacedBlock {
    /// Offset in the arena.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// [`frame::checksum`] of its bytes, from the owner.
    pub checksum: u64,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> TransferError {
    move |source| TransferError::Io { what, source }
}

fn memfd_name(id: u64) -> String {
    format!("llmd-kv-{id:016x}")
}

#[cfg(target_os = "linux")]
mod sys {
    //! The system calls: `memfd_create`, seals, `mmap`.

    use std::fs::File;
    use std::os::fd::AsFd;
    use std::ptr::NonNull;

    use rustix::fs::{MemfdFlags, SealFlags};
    use rustix::mm::{MapFlags, ProtFlags};

    /// The seals that keep an arena's size fixed.
    pub(super) fn size_seals() -> SealFlags {
        SealFlags::SHRINK | SealFlags::GROW
    }

    /// A sealed `memfd` of `len` bytes.
    pub(super) fn memfd(name: &str, len: u64) -> std::io::Result<File> {
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len)?;
        rustix::fs::fcntl_add_seals(&fd, size_seals() | SealFlags::SEAL)?;
        Ok(File::from(fd))
    }

    /// Whether `file`'s size can no longer change.
    pub(super) fn size_sealed(file: &File) -> std::io::Result<bool> {
        Ok(rustix::fs::fcntl_get_seals(file.as_fd())?.contains(size_seals()))
    }

    /// A mapping of a whole file, unmapped when dropped.
    #[derive(Debug)]
    pub(super) struct Mapping {
        ptr: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the mapping is plain memory; who may write where is the arena's business
    // (one slot, one owner), so sharing the handle across threads is sound.
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// Maps `len` bytes of `file` (whose size must be sealed at `len` or more).
        pub(super) fn new(file: &File, len: usize, writable: bool) -> std::io::Result<Self> {
            let prot = if writable { ProtFlags::READ | ProtFlags::WRITE } else { ProtFlags::READ };
            // SAFETY: a fresh mapping at an address the kernel picks aliases nothing in
            // this process; the file's size is sealed (checked by both callers), so no
            // page of the mapping can disappear under a reader.
            let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, file, 0)? };
            let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
            Ok(Mapping { ptr, len })
        }

        pub(super) fn len(&self) -> usize {
            self.len
        }

        pub(super) fn base(&self) -> usize {
            self.ptr.as_ptr() as usize
        }

        /// `len` bytes at `offset`, `None` past the end.
        pub(super) fn get(&self, offset: usize, len: usize) -> Option<&[u8]> {
            let end = offset.checked_add(len)?;
            // SAFETY: in bounds, and the mapping lives as long as `self`.
            (end <= self.len).then(|| unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) })
        }

        /// `len` bytes at `offset` to write. The caller owns that range alone (one
        /// slot, one owner) and the mapping is writable.
        #[allow(clippy::mut_from_ref)]
        pub(super) fn get_mut(&self, offset: usize, len: usize) -> Option<&mut [u8]> {
            let end = offset.checked_add(len)?;
            // SAFETY: in bounds; the arena hands each slot to one owner at a time, so
            // no other reference to this range exists in this process.
            (end <= self.len).then(|| unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) })
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // SAFETY: the range is this mapping's, and nothing borrows it any more (every
            // view holds the mapping alive).
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! No shared-memory arenas off Linux.

    use std::fs::File;

    fn unsupported() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Unsupported, "shared-memory arenas need Linux")
    }

    pub(super) fn memfd(_name: &str, _len: u64) -> std::io::Result<File> {
        Err(unsupported())
    }

    pub(super) fn size_sealed(_file: &File) -> std::io::Result<bool> {
        Err(unsupported())
    }

    #[derive(Debug)]
    pub(super) struct Mapping;

    impl Mapping {
        pub(super) fn new(_file: &File, _len: usize, _writable: bool) -> std::io::Result<Self> {
            Err(unsupported())
        }
        pub(super) fn len(&self) -> usize {
            0
        }
        pub(super) fn base(&self) -> usize {
            0
        }
        pub(super) fn get(&self, _offset: usize, _len: usize) -> Option<&[u8]> {
            None
        }
        #[allow(clippy::mut_from_ref)]
        pub(super) fn get_mut(&self, _offset: usize, _len: usize) -> Option<&mut [u8]> {
            None
        }
    }
}

use sys::Mapping;

#[derive(Debug)]
struct Arena {
    file: File,
    map: Mapping,
    id: u64,
    inode: u64,
    slot_bytes: usize,
    slots: usize,
    /// Free slots; the most recently freed is reused first (its pages are mapped on
    /// both sides already).
    free: Mutex<Vec<u32>>,
}

impl Arena {
    fn release(&self, slot: u32) {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(slot);
    }
}

/// The prefill side's shared memory: `slots` blocks of `slot_bytes` each. Blocks
/// copied in ([`ShmArena::copy_in`]) are [`Bytes`] like any other, served over TCP as
/// well; a same-host puller takes them in place. A slot is free again when the last
/// view of its block is dropped. Cheap to clone (one arena).
#[derive(Debug, Clone)]
pub struct ShmArena {
    inner: Arc<Arena>,
}

/// A slot being filled ([`ShmArena::alloc`]); [`freeze`](Self::freeze) it into a block.
/// Dropped unfrozen, the slot is free again.
#[derive(Debug)]
pub struct SlotMut {
    arena: Arc<Arena>,
    slot: Option<u32>,
}

/// A frozen slot, the owner behind a block's [`Bytes`].
struct Slot {
    arena: Arc<Arena>,
    slot: u32,
    len: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        let off = self.slot as usize * self.arena.slot_bytes;
        self.arena.map.get(off, self.len).unwrap_or_default()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.arena.release(self.slot);
    }
}

impl std::ops::Deref for SlotMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let off = self.slot.unwrap_or(0) as usize * self.arena.slot_bytes;
        self.arena.map.get(off, self.arena.slot_bytes).unwrap_or_default()
    }
}

impl std::ops::DerefMut for SlotMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        let off = self.slot.unwrap_or(0) as usize * self.arena.slot_bytes;
        self.arena.map.get_mut(off, self.arena.slot_bytes).unwrap_or_default()
    }
}

impl SlotMut {
    /// The slot's first `len` bytes (at most the slot's size) as a block.
    pub fn freeze(mut self, len: usize) -> Bytes {
        let slot = self.slot.take().unwrap_or(0);
        let len = len.min(self.arena.slot_bytes);
        Bytes::from_owner(Slot { arena: self.arena.clone(), slot, len })
    }
}

impl Drop for SlotMut {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.arena.release(slot);
        }
    }
}

impl ShmArena {
    /// An arena of `slots` slots of `slot_bytes` each (neither may be 0). Memory is
    /// taken as slots are first written, and kept for reuse.
    pub fn new(slot_bytes: usize, slots: usize) -> Result<Self> {
        if slot_bytes == 0 || slots == 0 || slots > u32::MAX as usize {
            return Err(TransferError::Frame(format!("an arena of {slots} slots of {slot_bytes} bytes")));
        }
        let len = slot_bytes
            .checked_mul(slots)
            .ok_or_else(|| TransferError::Frame(format!("an arena of {slots} slots of {slot_bytes} bytes")))?;
        let id = arena_id();
        let what = || format!("making a {len}-byte shared-memory arena");
        let file = sys::memfd(&memfd_name(id), len as u64).map_err(io(what()))?;
        let map = Mapping::new(&file, len, true).map_err(io(what()))?;
        let inode = inode(&file).map_err(io(what()))?;
        // Slot 0 on top: handed out first.
        let free = Mutex::new((0..slots as u32).rev().collect());
        Ok(ShmArena { inner: Arc::new(Arena { file, map, id, inode, slot_bytes, slots, free }) })
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.inner.slot_bytes
    }

    /// Slots in all.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// Slots free now.
    pub fn free_slots(&self) -> usize {
        self.inner.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// A free slot to fill, if any.
    pub fn alloc(&self) -> Option<SlotMut> {
        let slot = self.inner.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()?;
        Some(SlotMut { arena: self.inner.clone(), slot: Some(slot) })
    }

    /// Copies `blocks` into slots of their own, all or none: `None` when a block is
    /// larger than a slot or too few slots are free (the caller keeps its own copy).
    pub fn copy_in<B: AsRef<[u8]>>(&self, blocks: &[B]) -> Option<Vec<Bytes>> {
        if blocks.iter().any(|b| b.as_ref().len() > self.inner.slot_bytes) {
            return None;
        }
        let mut slots = Vec::with_capacity(blocks.len());
        {
            let mut free = self.inner.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if free.len() < blocks.len() {
                return None;
            }
            for _ in blocks {
                slots.push(SlotMut { arena: self.inner.clone(), slot: free.pop() });
            }
        }
        Some(
            slots
                .into_iter()
                .zip(blocks)
                .map(|(mut s, b)| {
                    let b = b.as_ref();
                    s[..b.len()].copy_from_slice(b);
                    s.freeze(b.len())
                })
                .collect(),
        )
    }

    /// Where `block` lies in this arena, if it lies wholly in it.
    pub fn locate(&self, block: &[u8]) -> Option<u64> {
        let base = self.inner.map.base();
        let at = (block.as_ptr() as usize).checked_sub(base)?;
        (at.checked_add(block.len())? <= self.inner.map.len()).then_some(at as u64)
    }

    /// What a reader needs to find the arena.
    pub fn place(&self) -> ArenaPlace {
        ArenaPlace {
            pid: std::process::id(),
            fd: raw_fd(&self.inner.file),
            id: self.inner.id,
            inode: self.inner.inode,
            len: self.inner.map.len() as u64,
        }
    }
}

#[cfg(unix)]
fn raw_fd(f: &File) -> u32 {
    use std::os::fd::AsRawFd;
    f.as_raw_fd() as u32
}

#[cfg(not(unix))]
fn raw_fd(_f: &File) -> u32 {
    u32::MAX
}

#[cfg(unix)]
fn inode(f: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(f.metadata()?.ino())
}

#[cfg(not(unix))]
fn inode(_f: &File) -> std::io::Result<u64> {
    Ok(0)
}

/// A random-enough arena id: time, pid and an address mixed.
fn arena_id() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let local = 0u8;
    let mixed = t ^ u64::from(std::process::id()).rotate_left(40) ^ (&local as *const u8 as u64).rotate_left(17);
    frame::checksum(&mixed.to_le_bytes())
}

/// One mapped arena of another engine.
#[derive(Debug)]
struct Mapped {
    place: ArenaPlace,
    map: Mapping,
    /// Kept open: the mapping needs no fd, but closing it early gains nothing.
    _file: File,
}

/// A block's view of a mapped arena; `lease` goes with the last view of a transfer.
struct View {
    mapped: Arc<Mapped>,
    offset: usize,
    len: usize,
    _lease: Arc<dyn Send + Sync>,
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        self.mapped.map.get(self.offset, self.len).unwrap_or_default()
    }
}

/// Mappings by arena id, each with when it was last used.
type MapCache = HashMap<u64, (Arc<Mapped>, u64)>;

/// Whether the arena at `place` is still its owner's (the owner lives and keeps it).
fn owned(place: &ArenaPlace) -> bool {
    std::fs::read_link(format!("/proc/{}/fd/{}", place.pid, place.fd))
        .is_ok_and(|t| t.to_string_lossy().starts_with(&format!("/memfd:{}", memfd_name(place.id))))
}

/// The decode side's mappings of prefill engines' arenas, kept for reuse (a few, the
/// most recently used). Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct ShmMaps {
    maps: Arc<Mutex<MapCache>>,
    uses: Arc<std::sync::atomic::AtomicU64>,
}

impl ShmMaps {
    /// Mappings held now.
    pub fn len(&self) -> usize {
        self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `block` lies in one of the arenas mapped here: it was read in place.
    pub fn contains(&self, block: &[u8]) -> bool {
        let at = block.as_ptr() as usize;
        let maps = self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        maps.values().any(|(m, _)| {
            at.checked_sub(m.map.base())
                .and_then(|off| off.checked_add(block.len()))
                .is_some_and(|end| end <= m.map.len())
        })
    }

    fn mapping(&self, place: &ArenaPlace) -> Result<Arc<Mapped>> {
        let tick = self.uses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut maps = self.maps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((m, used)) = maps.get_mut(&place.id)
            && m.map.len() as u64 == place.len
        {
            *used = tick;
            return Ok(m.clone());
        }
        let mapped = Arc::new(open(place)?);
        // A restarted prefiller has a new arena: the old one's memory is let go (once
        // no view of it is left) rather than kept until evicted.
        maps.retain(|_, (m, _)| owned(&m.place));
        if maps.len() >= KEEP_MAPPINGS
            && let Some(oldest) = maps.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id)
        {
            maps.remove(&oldest);
        }
        maps.insert(place.id, (mapped.clone(), tick));
        Ok(mapped)
    }

    /// `transfer`'s blocks as views of the arena at `place`, each checked against its
    /// checksum; `lease` is dropped with the last view (or at once on an error).
    pub fn views(
        &self,
        place: &ArenaPlace,
        transfer: &str,
        blocks: &[PlacedBlock],
        lease: Arc<dyn Send + Sync>,
    ) -> Result<Vec<Bytes>> {
        let mapped = self.mapping(place)?;
        let mut out = Vec::with_capacity(blocks.len());
        for (i, b) in blocks.iter().enumerate() {
            let (offset, len) = (usize::try_from(b.offset), usize::try_from(b.len));
            let (Ok(offset), Ok(len)) = (offset, len) else {
                return Err(TransferError::Frame(format!("block {i} lies past the arena")));
            };
            let data = mapped.map.get(offset, len).ok_or_else(|| {
                TransferError::Frame(format!(
                    "block {i} ({len} bytes at {offset}) lies past the {}-byte arena",
                    place.len
                ))
            })?;
            let got = frame::checksum(data);
            if got != b.checksum {
                return Err(TransferError::Checksum {
                    transfer: transfer.to_string(),
                    block: i,
                    expected: b.checksum,
                    got,
                });
            }
            out.push(Bytes::from_owner(View { mapped: mapped.clone(), offset, len, _lease: lease.clone() }));
        }
        Ok(out)
    }
}

/// Opens and maps another process's arena, after checking it is the one named.
fn open(place: &ArenaPlace) -> Result<Mapped> {
    let path = format!("/proc/{}/fd/{}", place.pid, place.fd);
    let what = || format!("opening the shared-memory arena {path}");
    let target = std::fs::read_link(&path).map_err(io(what()))?;
    let want = format!("/memfd:{}", memfd_name(place.id));
    if !target.to_string_lossy().starts_with(&want) {
        return Err(TransferError::Frame(format!("{path} is {}, not arena {:016x}", target.display(), place.id)));
    }
    let file = File::open(&path).map_err(io(what()))?;
    let meta = file.metadata().map_err(io(what()))?;
    let ino = inode(&file).map_err(io(what()))?;
    if ino != place.inode || meta.len() != place.len {
        return Err(TransferError::Frame(format!("{path} is not arena {:016x} (inode or size differ)", place.id)));
    }
    // Only a file whose size cannot change is safe to map: a shrink would leave the
    // reader's pages dangling (SIGBUS).
    if !sys::size_sealed(&file).map_err(io(what()))? {
        return Err(TransferError::Frame(format!("{path} can change size; it is not mapped")));
    }
    let len = usize::try_from(place.len).map_err(|_| TransferError::Frame(format!("{path} is too large")))?;
    let map = Mapping::new(&file, len, false).map_err(io(what()))?;
    Ok(Mapped { place: *place, map, _file: file })
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn blocks(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| (0..len).map(|j| (i * 31 + j) as u8).collect()).collect()
    }

    fn placed(arena: &ShmArena, got: &[Bytes]) -> Vec<PlacedBlock> {
        got.iter()
            .map(|b| PlacedBlock {
                offset: arena.locate(b).unwrap(),
                len: b.len() as u64,
                checksum: frame::checksum(b),
            })
            .collect()
    }

    #[test]
    fn blocks_copied_in_are_read_in_place_and_their_slots_come_back() {
        let arena = ShmArena::new(4096, 4).unwrap();
        let want = blocks(3, 4000);
        let held = arena.copy_in(&want).unwrap();
        assert_eq!(arena.free_slots(), 1);
        assert!(arena.copy_in(&blocks(2, 10)).is_none(), "all or none");
        assert_eq!(arena.free_slots(), 1);
        let maps = ShmMaps::default();
        let lease: Arc<dyn Send + Sync> = Arc::new(());
        let got = maps.views(&arena.place(), "r", &placed(&arena, &held), lease.clone()).unwrap();
        assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), want);
        assert!(got.iter().all(|b| maps.contains(b)) && !maps.contains(&want[0]));
        // The reader's views are another mapping of the same pages, not copies.
        assert_ne!(got[0].as_ptr(), held[0].as_ptr());
        assert_eq!(Arc::strong_count(&lease), 4, "one lease per view, and ours");
        drop(got);
        assert_eq!(Arc::strong_count(&lease), 1, "the lease goes with the last view");
        drop(held);
        assert_eq!(arena.free_slots(), 4);
        // The mapping is kept for the next transfer.
        assert_eq!(maps.len(), 1);
        let again = arena.copy_in(&blocks(1, 4096)).unwrap();
        maps.views(&arena.place(), "r", &placed(&arena, &again), lease).unwrap();
        assert_eq!(maps.len(), 1);
    }

    #[test]
    fn a_wrong_checksum_or_place_is_refused() {
        let arena = ShmArena::new(1024, 2).unwrap();
        let held = arena.copy_in(&blocks(2, 1024)).unwrap();
        let maps = ShmMaps::default();
        let lease: Arc<dyn Send + Sync> = Arc::new(());
        let mut p = placed(&arena, &held);
        p[1].checksum ^= 1;
        let err = maps.views(&arena.place(), "r", &p, lease.clone()).unwrap_err();
        assert!(matches!(err, TransferError::Checksum { block: 1, .. }), "{err}");
        assert_eq!(Arc::strong_count(&lease), 1, "no view outlives an error");
        let mut p = placed(&arena, &held);
        p[0].offset = 2048;
        let err = maps.views(&arena.place(), "r", &p, lease.clone()).unwrap_err().to_string();
        assert!(err.contains("past the 2048-byte arena"), "{err}");
        // Another arena's id at this fd, or a file that is no arena.
        let mut place = arena.place();
        place.id ^= 1;
        let err = maps.views(&place, "r", &placed(&arena, &held), lease.clone()).unwrap_err().to_string();
        assert!(err.contains("not arena"), "{err}");
        let f = File::open("/proc/self/exe").unwrap();
        let place = ArenaPlace { fd: raw_fd(&f), ..arena.place() };
        let err = ShmMaps::default().views(&place, "r", &[], lease).unwrap_err().to_string();
        assert!(err.contains("not arena"), "{err}");
    }

    #[test]
    fn an_arena_its_owner_dropped_is_let_go_when_another_is_mapped() {
        let maps = ShmMaps::default();
        let lease: Arc<dyn Send + Sync> = Arc::new(());
        let old = ShmArena::new(64, 1).unwrap();
        let held = old.copy_in(&[[1u8; 64]]).unwrap();
        let view = maps.views(&old.place(), "r", &placed(&old, &held), lease.clone()).unwrap();
        drop((held, old));
        let new = ShmArena::new(64, 1).unwrap();
        let held = new.copy_in(&[[2u8; 64]]).unwrap();
        maps.views(&new.place(), "r", &placed(&new, &held), lease).unwrap();
        assert_eq!(maps.len(), 1, "only the live arena stays mapped");
        assert_eq!(&view[0][..], &[1u8; 64], "a view keeps its own mapping");
    }

    #[test]
    fn a_file_that_can_shrink_is_not_mapped() {
        // A memfd without the seals, named as an arena would be.
        let fd = rustix::fs::memfd_create(memfd_name(7), rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        let f = File::from(fd);
        let place = ArenaPlace { pid: std::process::id(), fd: raw_fd(&f), id: 7, inode: inode(&f).unwrap(), len: 4096 };
        let err = ShmMaps::default().views(&place, "r", &[], Arc::new(())).unwrap_err().to_string();
        assert!(err.contains("can change size"), "{err}");
    }

    #[test]
    fn slots_not_frozen_come_back_and_odd_sizes_are_refused() {
        assert!(ShmArena::new(0, 4).is_err());
        assert!(ShmArena::new(4096, 0).is_err());
        let arena = ShmArena::new(64, 2).unwrap();
        let mut s = arena.alloc().unwrap();
        s.fill(7);
        drop(s);
        assert_eq!(arena.free_slots(), 2);
        assert!(arena.copy_in(&[vec![0u8; 65]]).is_none(), "a block larger than a slot");
        assert!(arena.locate(&[0u8; 4]).is_none(), "memory outside the arena");
    }
}
