//! Pulls over TCP (feature `tcp`): the prefill side serves the blocks it holds
//! ([`serve`] over a [`BlockSource`]), the decode side pulls them ([`TcpPuller`]) over
//! several connections at once, each carrying every n-th block as one [`crate::frame`]
//! (checksummed, written without copying the payloads).
//!
//! A pull names the prefill request and the layout hash the puller expects; the server
//! ends the hold at the first part asked for, refuses a layout that differs, and frees
//! its copy once every part has been sent (or after [`PART_WINDOW`], if a puller gives
//! up half way). Every wait on the network has a timeout; a refusal travels back as a
//! message the puller turns into [`TransferError::Remote`].
//!
//! On one host the bytes need not cross a socket: when the server's held blocks lie in
//! a shared-memory arena ([`ShmArena`]), [`TcpPuller::pull_shm`] is told where, maps
//! the arena ([`ShmMaps`]) and takes the blocks in place; the server lends them until
//! the puller's views are dropped (it says so on the connection) or the connection
//! ends. Blocks that are not in an arena come back inline, as a frame.
//!
//! A pull may skip the first blocks (those the decode side has cached already): only
//! the blocks from `first` on are sent, and the hold ends all the same.
//!
//! Control messages, big-endian: a pull is `b"LLMDPUL2"`, u16 length and the request
//! id, the 32-byte layout hash, u32 part, u32 parts, u32 first block; a same-host pull
//! is `b"LLMDSHM3"` with the same fields (one part), answered by a frame or by
//! `b"LLMDMAP1"`: the arena's pid, fd (u32 each), id, inode, length (u64 each), u32
//! block count, then per block its offset, length and checksum (u64 each); the puller
//! ends the loan with `b"LLMDREL1"`, or asks for the blocks inline after all with
//! `b"LLMDINL1"` (it could not map the arena: another PID namespace, say). A refusal is `b"LLMDERR1"`, u16 length and a UTF-8
//! reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Result, TransferError};
use crate::frame::{self, Decoded, FrameDecoder, Limits};
use crate::shm::{ArenaPlace, PlacedBlock, ShmArena, ShmMaps};

const PULL_MAGIC: &[u8; 8] = b"LLMDPUL2";
const ERR_MAGIC: &[u8; 8] = b"LLMDERR1";
const SHM_MAGIC: &[u8; 8] = b"LLMDSHM3";
const MAP_MAGIC: &[u8; 8] = b"LLMDMAP1";
const REL_MAGIC: &[u8; 8] = b"LLMDREL1";
const INLINE_MAGIC: &[u8; 8] = b"LLMDINL1";
/// How much a puller makes room for before each read.
const READ_CHUNK: usize = 1 << 20;
/// The most a puller allocates up front on a header's word.
const MAX_PREALLOC: usize = 256 << 20;

/// How long a partly served transfer keeps its blocks for the parts not yet asked for.
pub const PART_WINDOW: Duration = Duration::from_secs(60);

/// How long a same-host puller may keep a transfer's blocks lent by default.
pub const LEND_TIMEOUT: Duration = Duration::from_secs(600);

/// Blocks held for one prefill request, with the layout they were written under.
#[derive(Debug, Clone)]
pub struct HeldBlocks {
    /// The prefill engine's [`crate::layout::KvLayout::compatibility_hash`].
    pub layout_hash: [u8; 32],
    /// The blocks' bytes, in the order of the ids the prefill answer named.
    pub blocks: Vec<Bytes>,
    /// Each block's [`frame::checksum`], computed once when the hold was made; `None`:
    /// computed at each send.
    pub checksums: Option<Vec<u64>>,
}

impl HeldBlocks {
    /// Blocks to hold, checksummed now (once) rather than at every send.
    pub fn new(layout_hash: [u8; 32], blocks: Vec<Bytes>) -> Self {
        let checksums = Some(blocks.iter().map(|b| frame::checksum(b)).collect());
        HeldBlocks { layout_hash, blocks, checksums }
    }

    /// Blocks `from..` in every `step`-th place from `offset` on, with their checksums.
    fn pick(&self, from: usize, offset: usize, step: usize) -> (Vec<Bytes>, Option<Vec<u64>>) {
        let blocks = self.blocks.iter().skip(from).skip(offset).step_by(step).cloned().collect();
        let sums = self.checksums.as_ref().map(|c| c.iter().skip(from).skip(offset).step_by(step).copied().collect());
        (blocks, sums)
    }
}

/// Receive buffers a puller reuses: a pull's blocks are views of one buffer, which
/// comes back for the next pull once they are all dropped (imported, say), so a pull
/// writes into memory already mapped instead of faulting in fresh pages (NIXL
/// registers its buffers once for the same reason). Shared by a puller's clones.
#[derive(Debug, Clone, Default)]
pub struct ReceiveBuffers {
    free: Arc<Mutex<Vec<BytesMut>>>,
}

impl ReceiveBuffers {
    /// Buffers kept for reuse at most (their memory stays allocated).
    const KEEP: usize = 16;

    fn get(&self) -> BytesMut {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop().unwrap_or_default()
    }

    fn put(&self, mut buf: BytesMut) {
        buf.clear();
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if free.len() < Self::KEEP {
            free.push(buf);
        }
    }
}

/// Where the server gets held blocks: the prefill engine, which ends the hold
/// (e.g. [`crate::hold::HoldTable::take`]) and reads the blocks out.
pub trait BlockSource: Send + Sync + 'static {
    /// Ends `request`'s hold and hands its blocks out; the error is told to the puller.
    fn take(&self, request: &str) -> Result<HeldBlocks>;
}

/// Transfer counts, for metrics (`llmd_transfer_*`).
#[derive(Debug, Default)]
pub struct TransferCounters {
    /// Transfers completed.
    pub transfers: AtomicU64,
    /// Payload bytes moved.
    pub bytes: AtomicU64,
    /// Transfers that failed.
    pub failures: AtomicU64,
    /// Total time of completed transfers, in microseconds.
    pub micros: AtomicU64,
}

impl TransferCounters {
    fn done(&self, bytes: usize, took: Duration) {
        self.transfers.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.micros.fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io { what: what.to_string(), source }
}

async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| TransferError::Timeout(what.to_string()))?
}

fn encode_pull(
    magic: &[u8; 8],
    request: &str,
    layout_hash: &[u8; 32],
    part: u32,
    parts: u32,
    first: u32,
) -> Result<Bytes> {
    let len =
        u16::try_from(request.len()).map_err(|_| TransferError::Frame("request id longer than 65535 bytes".into()))?;
    let mut b = BytesMut::with_capacity(8 + 2 + request.len() + 32 + 12);
    b.put_slice(magic);
    b.put_u16(len);
    b.put_slice(request.as_bytes());
    b.put_slice(layout_hash);
    b.put_u32(part);
    b.put_u32(parts);
    b.put_u32(first);
    Ok(b.freeze())
}

fn encode_err(reason: &str) -> Bytes {
    encode_text(ERR_MAGIC, reason)
}

fn encode_text(magic: &[u8; 8], text: &str) -> Bytes {
    let mut end = text.len().min(4096);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &text[..end];
    let mut b = BytesMut::with_capacity(8 + 2 + reason.len());
    b.put_slice(magic);
    b.put_u16(reason.len() as u16);
    b.put_slice(reason.as_bytes());
    b.freeze()
}

/// A pull as the server reads it.
struct Pull {
    /// Written to shared memory rather than sent.
    shm: bool,
    request: String,
    layout_hash: [u8; 32],
    part: u32,
    parts: u32,
    /// Blocks before this one are not sent.
    first: u32,
}

/// Reads one pull; `None` at a clean end of the connection.
async fn read_pull(sock: &mut TcpStream) -> Result<Option<Pull>> {
    let mut magic = [0u8; 8];
    match sock.read_exact(&mut magic).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(io("reading a pull")(e)),
    }
    let shm = match &magic {
        PULL_MAGIC => false,
        SHM_MAGIC => true,
        _ => return Err(TransferError::Frame(format!("not a pull (magic {magic:02x?})"))),
    };
    let len = sock.read_u16().await.map_err(io("reading a pull"))? as usize;
    let mut id = vec![0u8; len];
    sock.read_exact(&mut id).await.map_err(io("reading a pull"))?;
    let request = String::from_utf8(id).map_err(|_| TransferError::Frame("request id is not UTF-8".into()))?;
    let mut layout_hash = [0u8; 32];
    sock.read_exact(&mut layout_hash).await.map_err(io("reading a pull"))?;
    let part = sock.read_u32().await.map_err(io("reading a pull"))?;
    let parts = sock.read_u32().await.map_err(io("reading a pull"))?;
    let first = sock.read_u32().await.map_err(io("reading a pull"))?;
    if parts == 0 || part >= parts || parts > 64 {
        return Err(TransferError::Frame(format!("part {part} of {parts}")));
    }
    Ok(Some(Pull { shm, request, layout_hash, part, parts, first }))
}

/// Transfers being served part by part.
struct Serving {
    held: Arc<HeldBlocks>,
    left: u32,
    since: Instant,
}

/// The server's state: the source and the transfers in progress.
struct Server {
    source: Arc<dyn BlockSource>,
    serving: Mutex<HashMap<String, Serving>>,
    counters: Arc<TransferCounters>,
    io_timeout: Duration,
    shm: Option<ShmArena>,
    lend_timeout: Duration,
}

impl Server {
    /// The blocks for one part: the first part asked for ends the hold.
    fn part(&self, p: &Pull) -> Result<Arc<HeldBlocks>> {
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        serving.retain(|_, s| s.since.elapsed() < PART_WINDOW);
        let held = match serving.get_mut(&p.request) {
            Some(s) => {
                s.left = s.left.saturating_sub(1);
                s.held.clone()
            }
            None => {
                let held = Arc::new(self.source.take(&p.request)?);
                if p.parts > 1 {
                    let s = Serving { held: held.clone(), left: p.parts - 1, since: Instant::now() };
                    serving.insert(p.request.clone(), s);
                }
                held
            }
        };
        if serving.get(&p.request).is_some_and(|s| s.left == 0) {
            serving.remove(&p.request);
        }
        if held.layout_hash != p.layout_hash {
            return Err(TransferError::Incompatible {
                field: "layout (compatibility hash)",
                local: hex(&held.layout_hash),
                remote: hex(&p.layout_hash),
            });
        }
        Ok(held)
    }

    /// Answers a same-host pull: blocks lying in the arena are lent in place until the
    /// puller lets go of them; others are sent inline as a frame.
    async fn same_host(&self, sock: &mut TcpStream, p: &Pull, started: Instant) -> Result<()> {
        let held = match self.part(p) {
            Ok(h) => h,
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                let msg = encode_err(&e.to_string());
                return within(self.io_timeout, "sending a refusal", async {
                    sock.write_all(&msg).await.map_err(io("sending a refusal"))
                })
                .await;
            }
        };
        let (blocks, sums) = held.pick(p.first as usize, 0, 1);
        let bytes = blocks.iter().map(Bytes::len).sum::<usize>();
        let placed = self.shm.as_ref().and_then(|arena| {
            let sums = sums.clone().unwrap_or_else(|| blocks.iter().map(|b| frame::checksum(b)).collect());
            blocks
                .iter()
                .zip(sums)
                .map(|(b, checksum)| {
                    arena.locate(b).map(|offset| PlacedBlock { offset, len: b.len() as u64, checksum })
                })
                .collect::<Option<Vec<_>>>()
                .map(|placed| (arena.place(), placed))
        });
        let send_inline = async |sock: &mut TcpStream| {
            let out = frame::encode_with(&p.request, held.layout_hash, &blocks, sums.as_deref())?;
            self.send(sock, &out, bytes, started).await
        };
        let Some((place, placed)) = placed else {
            // Not in shared memory (none here, or the arena was full): inline.
            return send_inline(sock).await;
        };
        let msg = encode_map(&place, &placed);
        within(self.io_timeout, "answering a same-host pull", async {
            sock.write_all(&msg).await.map_err(io("answering a same-host pull"))
        })
        .await?;
        // The blocks stay alive (their slots taken) until the puller lets go: it says
        // so, or its connection ends (it exited, or gave up).
        let mut magic = [0u8; 8];
        match tokio::time::timeout(self.lend_timeout, sock.read_exact(&mut magic)).await {
            Ok(Ok(_)) if &magic == REL_MAGIC => {
                self.counters.done(bytes, started.elapsed());
                Ok(())
            }
            // It cannot map the arena: the same blocks, over this connection.
            Ok(Ok(_)) if &magic == INLINE_MAGIC => send_inline(sock).await,
            Ok(Ok(_)) => Err(TransferError::Frame(format!("expected the end of a loan, got {magic:02x?}"))),
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                tracing::warn!(request = %p.request, "a same-host puller kept its blocks past the lend timeout; they are reused");
                Err(TransferError::Timeout("a same-host loan".into()))
            }
        }
    }

    /// Writes an encoded frame (`bytes` of payload), counting it.
    async fn send(&self, sock: &mut TcpStream, out: &[Bytes], bytes: usize, started: Instant) -> Result<()> {
        let write = async {
            for b in out {
                sock.write_all(b).await.map_err(io("sending blocks"))?;
            }
            sock.flush().await.map_err(io("sending blocks"))
        };
        if let Err(e) = within(self.io_timeout, "sending blocks", write).await {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.counters.done(bytes, started.elapsed());
        Ok(())
    }

    async fn connection(&self, mut sock: TcpStream) -> Result<()> {
        let _ = sock.set_nodelay(true);
        // A connection may carry several pulls, one after another.
        while let Some(p) = within(self.io_timeout, "reading a pull", read_pull(&mut sock)).await? {
            let started = Instant::now();
            if p.shm {
                self.same_host(&mut sock, &p, started).await?;
                continue;
            }
            let reply = self.part(&p).and_then(|held| {
                let (mine, sums) = held.pick(p.first as usize, p.part as usize, p.parts as usize);
                let out = frame::encode_with(&p.request, held.layout_hash, &mine, sums.as_deref())?;
                Ok((out, mine.iter().map(Bytes::len).sum::<usize>()))
            });
            match reply {
                Ok((out, bytes)) => self.send(&mut sock, &out, bytes, started).await?,
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    let msg = encode_err(&e.to_string());
                    within(self.io_timeout, "sending a refusal", async {
                        sock.write_all(&msg).await.map_err(io("sending a refusal"))
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().take(8).map(|x| format!("{x:02x}")).collect::<String>() + "…"
}

/// How the server serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The most any one read or write on a connection may take.
    pub io_timeout: Duration,
    /// The arena held blocks may lie in: same-host pulls of those are lent in place
    /// (`None`, or a block outside it: they are sent inline).
    pub shm: Option<ShmArena>,
    /// How long a same-host puller may keep lent blocks before their slots are reused.
    pub lend_timeout: Duration,
    /// Counts of what was served.
    pub counters: Arc<TransferCounters>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            io_timeout: Duration::from_secs(30),
            shm: None,
            lend_timeout: LEND_TIMEOUT,
            counters: Arc::default(),
        }
    }
}

/// Serves pulls on `listener` from `source` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn BlockSource>,
    opts: ServeOptions,
    stop: impl std::future::Future<Output = ()>,
) {
    let server = Arc::new(Server {
        source,
        serving: Mutex::new(HashMap::new()),
        counters: opts.counters,
        io_timeout: opts.io_timeout,
        shm: opts.shm,
        lend_timeout: opts.lend_timeout,
    });
    tokio::pin!(stop);
    loop {
        let (sock, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a pull failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(e) = server.connection(sock).await {
                tracing::debug!(%peer, error = %e, "pull connection ended");
            }
        });
    }
}

/// The decode side: pulls a prefill request's blocks over `streams` connections.
#[derive(Debug, Clone)]
pub struct TcpPuller {
    /// Connections per transfer (each carries every n-th block).
    pub streams: usize,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Time for any one read or write.
    pub io_timeout: Duration,
    /// What a frame may announce before it is refused.
    pub limits: Limits,
    /// Counts of what was pulled.
    pub counters: Arc<TransferCounters>,
    /// Where pulls land, reused across pulls.
    pub buffers: ReceiveBuffers,
}

impl Default for TcpPuller {
    fn default() -> Self {
        TcpPuller {
            streams: 4,
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            counters: Arc::default(),
            buffers: ReceiveBuffers::default(),
        }
    }
}

impl TcpPuller {
    /// Pulls `request`'s blocks from the server at `addr` (`host:port`), expecting
    /// `layout_hash`; the blocks come back in the prefill answer's order, each checked
    /// against its checksum. Dropping the future cancels the pull.
    pub async fn pull(&self, addr: &str, request: &str, layout_hash: [u8; 32]) -> Result<Vec<Bytes>> {
        self.pull_from(addr, request, layout_hash, 0).await
    }

    /// [`pull`](Self::pull) less the first `first` blocks (cached on this side
    /// already): the blocks from `first` on come back; the hold ends all the same.
    pub async fn pull_from(&self, addr: &str, request: &str, layout_hash: [u8; 32], first: u32) -> Result<Vec<Bytes>> {
        let started = Instant::now();
        let parts = self.streams.clamp(1, 64) as u32;
        // The legs run as tasks of their own, so that on a machine with cores to spare
        // each receives and checks its blocks in parallel; the first error ends them all,
        // and dropping this future aborts them (the set aborts its tasks when dropped).
        let mut legs = tokio::task::JoinSet::new();
        for part in 0..parts {
            let (me, addr, request) = (self.clone(), addr.to_string(), request.to_string());
            legs.spawn(async move { (part, me.part(&addr, &request, layout_hash, part, parts, first).await) });
        }
        let result = async {
            let mut got: Vec<Vec<Bytes>> = vec![Vec::new(); parts as usize];
            while let Some(leg) = legs.join_next().await {
                let (part, blocks) =
                    leg.map_err(|e| TransferError::Io { what: "a pull leg".into(), source: std::io::Error::other(e) })?;
                got[part as usize] = blocks?;
            }
            Ok(got)
        }
        .await;
        let got = match result {
            Ok(got) => got,
            Err(e) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        // Part i carried blocks i, i+n, i+2n...: interleave them back.
        let total: usize = got.iter().map(Vec::len).sum();
        for (i, g) in got.iter().enumerate() {
            let want = total.saturating_sub(i).div_ceil(parts as usize);
            if g.len() != want {
                return Err(TransferError::Frame(format!(
                    "part {i} carried {} blocks of {total}, expected {want}",
                    g.len()
                )));
            }
        }
        let mut iters: Vec<_> = got.into_iter().map(Vec::into_iter).collect();
        let mut out = Vec::with_capacity(total);
        for k in 0..total {
            if let Some(b) = iters[k % parts as usize].next() {
                out.push(b);
            }
        }
        self.counters.done(out.iter().map(Bytes::len).sum(), started.elapsed());
        Ok(out)
    }

    /// A same-host pull: blocks the server at `addr` holds in a shared-memory arena
    /// are taken in place through `maps` (checked against their checksums); others
    /// come inline. The server's slots stay lent until the returned blocks are all
    /// dropped.
    pub async fn pull_shm(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        maps: &ShmMaps,
    ) -> Result<Vec<Bytes>> {
        self.pull_shm_from(addr, request, layout_hash, maps, 0).await
    }

    /// [`pull_shm`](Self::pull_shm) less the first `first` blocks.
    pub async fn pull_shm_from(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        maps: &ShmMaps,
        first: u32,
    ) -> Result<Vec<Bytes>> {
        let started = Instant::now();
        let result = async {
            let mut sock = self.connect(addr).await?;
            let ask = encode_pull(SHM_MAGIC, request, &layout_hash, 0, 1, first)?;
            within(self.io_timeout, "sending a pull", async {
                sock.write_all(&ask).await.map_err(io("sending a pull"))
            })
            .await?;
            let mut magic = [0u8; 8];
            within(self.io_timeout, "receiving a same-host answer", async {
                sock.read_exact(&mut magic).await.map_err(io("receiving a same-host answer"))
            })
            .await?;
            if &magic != MAP_MAGIC {
                // A frame or a refusal: read as any pull's.
                let mut buf = self.buffers.get();
                buf.extend_from_slice(&magic);
                return self.receive(&mut sock, buf, request, layout_hash).await;
            }
            let (place, placed) =
                within(self.io_timeout, "receiving a same-host answer", read_map(&mut sock, self.limits)).await?;
            // The loan ends when the last view is dropped: a task that owns the
            // connection is told so, and tells the server.
            let (done, ended) = tokio::sync::oneshot::channel::<()>();
            let loan = Arc::new(Loan(Mutex::new(Some(done))));
            let lease: Arc<dyn Send + Sync> = loan.clone();
            match maps.views(&place, request, &placed, lease) {
                Ok(views) => {
                    let io_timeout = self.io_timeout;
                    tokio::spawn(async move {
                        let _ = ended.await;
                        let _ = tokio::time::timeout(io_timeout, sock.write_all(REL_MAGIC)).await;
                    });
                    Ok(views)
                }
                // Damaged bytes: the loan ends with the connection.
                Err(e @ TransferError::Checksum { .. }) => Err(e),
                Err(e) => {
                    // No views were made; nobody is to be told through the loan.
                    loan.disarm();
                    tracing::debug!(error = %e, "cannot read a same-host arena; asking for the blocks inline");
                    within(self.io_timeout, "asking for blocks inline", async {
                        sock.write_all(INLINE_MAGIC).await.map_err(io("asking for blocks inline"))
                    })
                    .await?;
                    self.receive(&mut sock, self.buffers.get(), request, layout_hash).await
                }
            }
        }
        .await;
        match &result {
            Ok(blocks) => self.counters.done(blocks.iter().map(Bytes::len).sum(), started.elapsed()),
            Err(_) => {
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream> {
        let sock = within(self.connect_timeout, "connecting for a pull", async {
            TcpStream::connect(addr).await.map_err(io("connecting for a pull"))
        })
        .await?;
        let _ = sock.set_nodelay(true);
        Ok(sock)
    }

    async fn part(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        part: u32,
        parts: u32,
        first: u32,
    ) -> Result<Vec<Bytes>> {
        let mut sock = self.connect(addr).await?;
        let ask = encode_pull(PULL_MAGIC, request, &layout_hash, part, parts, first)?;
        within(self.io_timeout, "sending a pull", async { sock.write_all(&ask).await.map_err(io("sending a pull")) })
            .await?;
        // A buffer of an earlier pull whose blocks are all gone is taken over whole.
        let buf = self.buffers.get();
        self.receive(&mut sock, buf, request, layout_hash).await
    }

    /// Reads one frame (or a refusal) of `request`'s blocks into `buf` (which may hold
    /// its first bytes already).
    async fn receive(
        &self,
        sock: &mut TcpStream,
        mut buf: BytesMut,
        request: &str,
        layout_hash: [u8; 32],
    ) -> Result<Vec<Bytes>> {
        let mut decoder = FrameDecoder::new(self.limits);
        let mut blocks = Vec::new();
        loop {
            // A refusal instead of a frame.
            if buf.len() >= 8 && &buf[..8] == ERR_MAGIC {
                if buf.len() >= 10 {
                    let len = u16::from_be_bytes([buf[8], buf[9]]) as usize;
                    if buf.len() >= 10 + len {
                        buf.advance(10);
                        let reason = String::from_utf8_lossy(&buf[..len]).into_owned();
                        return Err(TransferError::Remote(reason));
                    }
                }
            } else {
                while let Some(d) = decoder.feed(&mut buf)? {
                    match d {
                        Decoded::Header(h) => {
                            if h.layout_hash != layout_hash {
                                return Err(TransferError::Frame("blocks sent under another layout".into()));
                            }
                            if h.transfer != request {
                                return Err(TransferError::Frame(format!(
                                    "blocks of {:?}, asked for {request:?}",
                                    h.transfer
                                )));
                            }
                            blocks.reserve(h.block_count());
                            // One allocation for the whole part (bounded: a header is
                            // only a claim); the blocks are split off it without copies.
                            buf.reserve(h.payload_len().min(MAX_PREALLOC));
                        }
                        Decoded::Block { data, .. } => blocks.push(data),
                        Decoded::Done => {
                            self.buffers.put(buf);
                            return Ok(blocks);
                        }
                    }
                }
            }
            // Room for large reads: BytesMut alone grows by 64 bytes at a time.
            if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                buf.reserve(READ_CHUNK);
            }
            let n = within(self.io_timeout, "receiving blocks", async {
                sock.read_buf(&mut buf).await.map_err(io("receiving blocks"))
            })
            .await?;
            if n == 0 {
                return Err(TransferError::Frame("the connection ended mid-transfer".into()));
            }
        }
    }
}

/// Ends a same-host loan when dropped (with the last view of its blocks).
struct Loan(Mutex<Option<tokio::sync::oneshot::Sender<()>>>);

impl Loan {
    fn disarm(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(done) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = done.send(());
        }
    }
}

fn encode_map(place: &ArenaPlace, blocks: &[PlacedBlock]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + 8 + 24 + 4 + blocks.len() * 24);
    b.put_slice(MAP_MAGIC);
    b.put_u32(place.pid);
    b.put_u32(place.fd);
    b.put_u64(place.id);
    b.put_u64(place.inode);
    b.put_u64(place.len);
    b.put_u32(blocks.len() as u32);
    for p in blocks {
        b.put_u64(p.offset);
        b.put_u64(p.len);
        b.put_u64(p.checksum);
    }
    b.freeze()
}

/// Reads the rest of a `MAP` answer (its magic read already).
async fn read_map(sock: &mut TcpStream, limits: Limits) -> Result<(ArenaPlace, Vec<PlacedBlock>)> {
    let mut head = [0u8; 4 + 4 + 8 + 8 + 8 + 4];
    sock.read_exact(&mut head).await.map_err(io("receiving a same-host answer"))?;
    let mut h = &head[..];
    let place = ArenaPlace { pid: h.get_u32(), fd: h.get_u32(), id: h.get_u64(), inode: h.get_u64(), len: h.get_u64() };
    let n = h.get_u32() as usize;
    if n > limits.max_blocks {
        return Err(TransferError::Frame(format!("{n} blocks, more than the {} allowed", limits.max_blocks)));
    }
    let mut raw = vec![0u8; n * 24];
    sock.read_exact(&mut raw).await.map_err(io("receiving a same-host answer"))?;
    let mut r = &raw[..];
    let mut blocks = Vec::with_capacity(n);
    for _ in 0..n {
        let b = PlacedBlock { offset: r.get_u64(), len: r.get_u64(), checksum: r.get_u64() };
        if b.len > limits.max_block_bytes as u64 {
            return Err(TransferError::Frame(format!("a block of {} bytes", b.len)));
        }
        blocks.push(b);
    }
    Ok((place, blocks))
}
