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
//! On one host the bytes need not cross a socket: [`TcpPuller::pull_shm`] asks the
//! server to write the transfer into a [`ShmStore`] and reads it from there.
//!
//! A pull may skip the first blocks (those the decode side has cached already): only
//! the blocks from `first` on are sent, and the hold ends all the same.
//!
//! Control messages, big-endian: a pull is `b"LLMDPUL2"`, u16 length and the request
//! id, the 32-byte layout hash, u32 part, u32 parts, u32 first block; a same-host pull
//! is `b"LLMDSHM2"` with the same fields (one part), answered by `b"LLMDPTH1"`, u16 length and the
//! file's path; a refusal is `b"LLMDERR1"`, u16 length and a UTF-8 reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Result, TransferError};
use crate::frame::{self, Decoded, FrameDecoder, Limits};
use crate::shm::ShmStore;

const PULL_MAGIC: &[u8; 8] = b"LLMDPUL2";
const ERR_MAGIC: &[u8; 8] = b"LLMDERR1";
const SHM_MAGIC: &[u8; 8] = b"LLMDSHM2";
const PATH_MAGIC: &[u8; 8] = b"LLMDPTH1";
/// How much a puller makes room for before each read.
const READ_CHUNK: usize = 1 << 20;
/// The most a puller allocates up front on a header's word.
const MAX_PREALLOC: usize = 256 << 20;

/// How long a partly served transfer keeps its blocks for the parts not yet asked for.
pub const PART_WINDOW: Duration = Duration::from_secs(60);

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
    shm: Option<ShmStore>,
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

    async fn connection(&self, mut sock: TcpStream) -> Result<()> {
        let _ = sock.set_nodelay(true);
        // A connection may carry several pulls, one after another.
        while let Some(p) = within(self.io_timeout, "reading a pull", read_pull(&mut sock)).await? {
            let started = Instant::now();
            if p.shm {
                let reply = match &self.shm {
                    None => Err(TransferError::Remote("this engine serves no same-host transfers".into())),
                    Some(store) => self.part(&p).and_then(|held| {
                        let (blocks, sums) = held.pick(p.first as usize, 0, 1);
                        let path = store.publish_with(&p.request, held.layout_hash, &blocks, sums.as_deref())?;
                        Ok((path, blocks.iter().map(Bytes::len).sum::<usize>()))
                    }),
                };
                let msg = match reply {
                    Ok((path, bytes)) => {
                        self.counters.done(bytes, started.elapsed());
                        encode_text(PATH_MAGIC, &path.to_string_lossy())
                    }
                    Err(e) => {
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        encode_err(&e.to_string())
                    }
                };
                within(self.io_timeout, "answering a same-host pull", async {
                    sock.write_all(&msg).await.map_err(io("answering a same-host pull"))
                })
                .await?;
                continue;
            }
            let reply = self.part(&p).and_then(|held| {
                let (mine, sums) = held.pick(p.first as usize, p.part as usize, p.parts as usize);
                let out = frame::encode_with(&p.request, held.layout_hash, &mine, sums.as_deref())?;
                Ok((out, mine.iter().map(Bytes::len).sum::<usize>()))
            });
            match reply {
                Ok((out, bytes)) => {
                    let write = async {
                        for b in &out {
                            sock.write_all(b).await.map_err(io("sending blocks"))?;
                        }
                        sock.flush().await.map_err(io("sending blocks"))
                    };
                    if let Err(e) = within(self.io_timeout, "sending blocks", write).await {
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                    self.counters.done(bytes, started.elapsed());
                }
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
    /// Where same-host pulls are written (`None`: they are refused).
    pub shm: Option<ShmStore>,
    /// Counts of what was served.
    pub counters: Arc<TransferCounters>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { io_timeout: Duration::from_secs(30), shm: None, counters: Arc::default() }
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

    /// A same-host pull: the server at `addr` writes the transfer into `store` (the
    /// same directory on this host) and says where; the blocks are read from there.
    pub async fn pull_shm(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        store: &ShmStore,
    ) -> Result<Vec<Bytes>> {
        self.pull_shm_from(addr, request, layout_hash, store, 0).await
    }

    /// [`pull_shm`](Self::pull_shm) less the first `first` blocks.
    pub async fn pull_shm_from(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        store: &ShmStore,
        first: u32,
    ) -> Result<Vec<Bytes>> {
        let started = Instant::now();
        let result = async {
            let mut sock = within(self.connect_timeout, "connecting for a pull", async {
                TcpStream::connect(addr).await.map_err(io("connecting for a pull"))
            })
            .await?;
            let ask = encode_pull(SHM_MAGIC, request, &layout_hash, 0, 1, first)?;
            within(self.io_timeout, "sending a pull", async {
                sock.write_all(&ask).await.map_err(io("sending a pull"))
            })
            .await?;
            let (magic, text) = within(self.io_timeout, "receiving the transfer's place", async {
                let mut magic = [0u8; 8];
                sock.read_exact(&mut magic).await.map_err(io("receiving the transfer's place"))?;
                let len = sock.read_u16().await.map_err(io("receiving the transfer's place"))? as usize;
                let mut text = vec![0u8; len];
                sock.read_exact(&mut text).await.map_err(io("receiving the transfer's place"))?;
                Ok((magic, String::from_utf8_lossy(&text).into_owned()))
            })
            .await?;
            match &magic {
                PATH_MAGIC => store.take(std::path::Path::new(&text), request, layout_hash, self.limits),
                ERR_MAGIC => Err(TransferError::Remote(text)),
                _ => Err(TransferError::Frame(format!("unexpected answer {magic:02x?}"))),
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

    async fn part(
        &self,
        addr: &str,
        request: &str,
        layout_hash: [u8; 32],
        part: u32,
        parts: u32,
        first: u32,
    ) -> Result<Vec<Bytes>> {
        let mut sock = within(self.connect_timeout, "connecting for a pull", async {
            TcpStream::connect(addr).await.map_err(io("connecting for a pull"))
        })
        .await?;
        let _ = sock.set_nodelay(true);
        let ask = encode_pull(PULL_MAGIC, request, &layout_hash, part, parts, first)?;
        within(self.io_timeout, "sending a pull", async { sock.write_all(&ask).await.map_err(io("sending a pull")) })
            .await?;
        // A buffer of an earlier pull whose blocks are all gone is taken over whole.
        let mut buf = self.buffers.get();
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
