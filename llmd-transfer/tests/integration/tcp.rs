//! Pulls over TCP on loopback: blocks arrive whole and in order over any number of
//! streams, a hold is handed out once, and every fault (another layout, an unknown
//! request, a silent server, a cut connection, a corrupted byte) ends as an error that
//! names it, within the timeouts.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use llmd_transfer::TransferError;
use llmd_transfer::frame;
use llmd_transfer::shm::{ShmArena, ShmMaps};
use llmd_transfer::tcp::{BlockSource, HeldBlocks, ServeOptions, TcpPuller, TransferCounters, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HASH: [u8; 32] = [7; 32];

#[derive(Default)]
struct Holds(Mutex<HashMap<String, HeldBlocks>>);

impl BlockSource for Holds {
    fn take(&self, request: &str) -> llmd_transfer::Result<HeldBlocks> {
        self.0.lock().unwrap().remove(request).ok_or_else(|| TransferError::NoHold(request.into()))
    }
}

fn blocks(n: usize, size: usize, seed: u8) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from((0..size).map(|j| (i * 31 + j * 7) as u8 ^ seed).collect::<Vec<u8>>())).collect()
}

async fn server_with(holds: Arc<Holds>, shm: Option<ShmArena>) -> (String, Arc<TransferCounters>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counters = Arc::new(TransferCounters::default());
    let opts =
        ServeOptions { io_timeout: Duration::from_secs(5), shm, counters: counters.clone(), ..Default::default() };
    tokio::spawn(serve(listener, holds, opts, std::future::pending()));
    (addr, counters)
}

async fn server(holds: Arc<Holds>) -> (String, Arc<TransferCounters>) {
    server_with(holds, None).await
}

fn puller(streams: usize) -> TcpPuller {
    TcpPuller { streams, io_timeout: Duration::from_secs(5), ..TcpPuller::default() }
}

#[tokio::test]
async fn blocks_arrive_whole_and_in_order_over_any_number_of_streams() {
    let holds = Arc::new(Holds::default());
    let (addr, served) = server(holds.clone()).await;
    for (i, (n, streams)) in [(10, 1), (10, 3), (10, 4), (5, 16), (0, 4), (1, 2)].into_iter().enumerate() {
        let want = blocks(n, 4096, i as u8);
        let id = format!("req-{i}");
        holds.0.lock().unwrap().insert(id.clone(), HeldBlocks::new(HASH, want.clone()));
        let got = puller(streams).pull(&addr, &id, HASH).await.unwrap();
        assert_eq!(got, want, "{n} blocks over {streams} streams");
        // The hold was handed out once.
        let again = puller(1).pull(&addr, &id, HASH).await.unwrap_err();
        assert!(matches!(&again, TransferError::Remote(m) if m.contains("no held blocks")), "{again}");
    }
    assert!(served.bytes.load(std::sync::atomic::Ordering::Relaxed) >= (10 * 3 + 5 + 1) * 4096);
}

#[tokio::test]
async fn another_layout_is_refused_by_name() {
    let holds = Arc::new(Holds::default());
    let (addr, _) = server(holds.clone()).await;
    holds
        .0
        .lock()
        .unwrap()
        .insert("r".into(), HeldBlocks { layout_hash: HASH, blocks: blocks(2, 64, 0), checksums: None });
    let err = puller(2).pull(&addr, "r", [9; 32]).await.unwrap_err();
    assert!(matches!(&err, TransferError::Remote(m) if m.contains("incompatible")), "{err}");
}

/// A peer that accepts, reads what it is sent and answers with `reply` (then closes),
/// or never answers when `reply` is `None`.
async fn fake_server(reply: Option<Vec<u8>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut ask = [0u8; 256];
                let _ = sock.read(&mut ask).await;
                match reply {
                    Some(r) => {
                        let _ = sock.write_all(&r).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            });
        }
    });
    addr
}

fn frame_bytes(id: &str, bs: &[Bytes]) -> Vec<u8> {
    frame::encode(id, HASH, bs).unwrap().iter().flat_map(|b| b.to_vec()).collect()
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let addr = fake_server(None).await;
    let p = TcpPuller { streams: 1, io_timeout: Duration::from_millis(200), ..TcpPuller::default() };
    let err = p.pull(&addr, "r", HASH).await.unwrap_err();
    assert!(matches!(err, TransferError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn a_connection_cut_mid_transfer_is_an_error() {
    let mut cut = frame_bytes("r", &blocks(4, 1024, 1));
    cut.truncate(cut.len() / 2);
    let addr = fake_server(Some(cut)).await;
    let err = puller(1).pull(&addr, "r", HASH).await.unwrap_err();
    assert!(matches!(&err, TransferError::Frame(m) if m.contains("mid-transfer")), "{err}");
}

#[tokio::test]
async fn a_corrupted_byte_fails_its_checksum() {
    let mut bad = frame_bytes("r", &blocks(3, 1024, 2));
    let last = bad.len() - 10;
    bad[last] ^= 0x40;
    let addr = fake_server(Some(bad)).await;
    let err = puller(1).pull(&addr, "r", HASH).await.unwrap_err();
    assert!(matches!(err, TransferError::Checksum { block: 2, .. }), "{err}");
}

#[tokio::test]
async fn blocks_of_another_request_are_refused() {
    let addr = fake_server(Some(frame_bytes("other", &blocks(1, 16, 3)))).await;
    let err = puller(1).pull(&addr, "r", HASH).await.unwrap_err();
    assert!(matches!(&err, TransferError::Frame(m) if m.contains("asked for")), "{err}");
}

/// Waits (at most 5 s) until `cond` holds: a loan ends on the server's side of a
/// connection, after the puller's word has crossed it. Yields to the runtime rather
/// than sleeping: the server's task runs as soon as its socket is ready.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_same_host_pull_takes_the_blocks_in_place_until_they_are_dropped() {
    let arena = ShmArena::new(8192, 8).unwrap();
    let holds = Arc::new(Holds::default());
    let (addr, _) = server_with(holds.clone(), Some(arena.clone())).await;
    let want = blocks(6, 8192, 9);
    let held = arena.copy_in(&want).unwrap();
    holds.0.lock().unwrap().insert("r".into(), HeldBlocks::new(HASH, held));
    let maps = ShmMaps::default();
    let got = puller(1).pull_shm(&addr, "r", HASH, &maps).await.unwrap();
    assert_eq!(got, want);
    assert!(got.iter().all(|b| arena.locate(b).is_none()), "views of this side's own mapping of the arena");
    assert_eq!(maps.len(), 1, "the arena stays mapped for the next pull");
    // Lent while the views live, free once they are dropped.
    assert_eq!(arena.free_slots(), 2);
    drop(got);
    eventually("the loan ends when the views are dropped", || arena.free_slots() == 8).await;
    let err = puller(1).pull_shm(&addr, "r", HASH, &maps).await.unwrap_err();
    assert!(matches!(&err, TransferError::Remote(m) if m.contains("no held blocks")), "{err}");

    // Blocks that are not in the arena (it was full, say) come inline.
    holds.0.lock().unwrap().insert("heap".into(), HeldBlocks::new(HASH, want.clone()));
    assert_eq!(puller(1).pull_shm(&addr, "heap", HASH, &maps).await.unwrap(), want);
    // So do a server's without an arena.
    let (plain, _) = server(holds.clone()).await;
    holds.0.lock().unwrap().insert("s".into(), HeldBlocks::new(HASH, want.clone()));
    assert_eq!(puller(1).pull_shm(&plain, "s", HASH, &maps).await.unwrap(), want);
}

#[tokio::test]
async fn a_same_host_loan_ends_with_a_bad_checksum_or_a_vanished_puller() {
    let arena = ShmArena::new(4096, 4).unwrap();
    let holds = Arc::new(Holds::default());
    let (addr, _) = server_with(holds.clone(), Some(arena.clone())).await;
    let want = blocks(3, 4096, 1);
    // Checksums of other bytes: the puller refuses, and the slots come back.
    let mut held = HeldBlocks::new(HASH, arena.copy_in(&want).unwrap());
    held.checksums.as_mut().unwrap()[2] ^= 1;
    holds.0.lock().unwrap().insert("bad".into(), held);
    let err = puller(1).pull_shm(&addr, "bad", HASH, &ShmMaps::default()).await.unwrap_err();
    assert!(matches!(err, TransferError::Checksum { block: 2, .. }), "{err}");
    eventually("a refused loan ends", || arena.free_slots() == 4).await;
    // A puller that asks, hears where the blocks are and goes away without a word.
    holds.0.lock().unwrap().insert("gone".into(), HeldBlocks::new(HASH, arena.copy_in(&want).unwrap()));
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut ask = b"LLMDSHM3".to_vec();
    ask.extend_from_slice(&4u16.to_be_bytes());
    ask.extend_from_slice(b"gone");
    ask.extend_from_slice(&HASH);
    for v in [0u32, 1, 0] {
        ask.extend_from_slice(&v.to_be_bytes());
    }
    sock.write_all(&ask).await.unwrap();
    let mut magic = [0u8; 8];
    sock.read_exact(&mut magic).await.unwrap();
    assert_eq!(&magic, b"LLMDMAP1");
    assert_eq!(arena.free_slots(), 1);
    drop(sock);
    eventually("a closed connection ends its loan", || arena.free_slots() == 4).await;
}

#[tokio::test]
async fn a_silent_puller_loses_its_loan_at_the_lend_timeout() {
    let arena = ShmArena::new(4096, 2).unwrap();
    let holds = Arc::new(Holds::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let opts = ServeOptions {
        io_timeout: Duration::from_secs(5),
        shm: Some(arena.clone()),
        lend_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    tokio::spawn(serve(listener, holds.clone(), opts, std::future::pending()));
    holds.0.lock().unwrap().insert("quiet".into(), HeldBlocks::new(HASH, arena.copy_in(&blocks(2, 4096, 3)).unwrap()));
    // Asks, hears where the blocks are, then neither says it is done nor hangs up.
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut ask = b"LLMDSHM3".to_vec();
    ask.extend_from_slice(&5u16.to_be_bytes());
    ask.extend_from_slice(b"quiet");
    ask.extend_from_slice(&HASH);
    for v in [0u32, 1, 0] {
        ask.extend_from_slice(&v.to_be_bytes());
    }
    sock.write_all(&ask).await.unwrap();
    let mut magic = [0u8; 8];
    sock.read_exact(&mut magic).await.unwrap();
    assert_eq!(&magic, b"LLMDMAP1");
    assert_eq!(arena.free_slots(), 0);
    eventually("the lend timeout ends a silent puller's loan", || arena.free_slots() == 2).await;
    // And the server hung up on it.
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert!(n >= 8 * 3 + 4, "the MAP answer's body, then the end: {n}");
}

/// A proxy to `server` that rewrites the pid in a same-host answer to one no process
/// has, as a puller in another PID namespace would find it: the arena cannot be opened.
async fn elsewhere_proxy(server: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut ur, mut uw) = upstream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut cr, &mut uw).await });
            tokio::spawn(async move {
                let mut head = [0u8; 12];
                if ur.read_exact(&mut head).await.is_err() {
                    return;
                }
                if &head[..8] == b"LLMDMAP1" {
                    head[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
                }
                cw.write_all(&head).await.unwrap();
                let _ = tokio::io::copy(&mut ur, &mut cw).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_puller_that_cannot_map_the_arena_gets_the_blocks_inline() {
    let arena = ShmArena::new(4096, 4).unwrap();
    let holds = Arc::new(Holds::default());
    let (server, served) = server_with(holds.clone(), Some(arena.clone())).await;
    let addr = elsewhere_proxy(server).await;
    let want = blocks(3, 4096, 5);
    holds.0.lock().unwrap().insert("r".into(), HeldBlocks::new(HASH, arena.copy_in(&want).unwrap()));
    let maps = ShmMaps::default();
    let got = puller(1).pull_shm(&addr, "r", HASH, &maps).await.unwrap();
    assert_eq!(got, want);
    assert!(maps.is_empty() && !got.iter().any(|b| maps.contains(b)), "read from the socket, not mapped");
    assert_eq!(served.transfers.load(std::sync::atomic::Ordering::Relaxed), 1);
    eventually("the slots come back once sent inline", || arena.free_slots() == 4).await;
}

#[tokio::test]
async fn a_pull_can_skip_the_blocks_the_decode_side_has_cached() {
    let arena = ShmArena::new(1024, 16).unwrap();
    let holds = Arc::new(Holds::default());
    let (addr, _) = server_with(holds.clone(), Some(arena.clone())).await;
    let all = blocks(10, 1024, 3);
    for (i, (first, streams)) in [(3, 3), (0, 2), (9, 4), (10, 2), (12, 1)].into_iter().enumerate() {
        let id = format!("skip-{i}");
        holds.0.lock().unwrap().insert(id.clone(), HeldBlocks::new(HASH, all.clone()));
        let got = puller(streams).pull_from(&addr, &id, HASH, first).await.unwrap();
        assert_eq!(got, all.get(first as usize..).unwrap_or_default(), "from {first} over {streams} streams");
        // Skipping still ends the hold.
        assert!(!holds.0.lock().unwrap().contains_key(&id));
    }
    holds.0.lock().unwrap().insert("shm".into(), HeldBlocks::new(HASH, arena.copy_in(&all).unwrap()));
    let got = puller(1).pull_shm_from(&addr, "shm", HASH, &ShmMaps::default(), 4).await.unwrap();
    assert_eq!(got, all[4..].to_vec());
    drop(got);
    eventually("skipped blocks are not lent", || arena.free_slots() == 16).await;
}

#[tokio::test]
async fn checksums_made_at_hold_time_are_the_ones_sent_and_checked() {
    let holds = Arc::new(Holds::default());
    let (addr, _) = server(holds.clone()).await;
    let want = blocks(5, 2048, 4);
    let mut held = HeldBlocks::new(HASH, want.clone());
    assert_eq!(held.checksums.as_ref().unwrap()[2], frame::checksum(&want[2]));
    holds.0.lock().unwrap().insert("ok".into(), held.clone());
    assert_eq!(puller(2).pull(&addr, "ok", HASH).await.unwrap(), want);
    // A hold whose recorded checksum is wrong is caught by the puller: the sums are not
    // recomputed at send time.
    held.checksums.as_mut().unwrap()[3] ^= 1;
    holds.0.lock().unwrap().insert("bad".into(), held);
    let err = puller(2).pull(&addr, "bad", HASH).await.unwrap_err();
    assert!(matches!(err, TransferError::Checksum { .. }), "{err}");
}

#[tokio::test]
async fn receive_buffers_are_reused_once_their_blocks_are_gone() {
    let holds = Arc::new(Holds::default());
    let (addr, _) = server(holds.clone()).await;
    let p = puller(1);
    holds.0.lock().unwrap().insert("a".into(), HeldBlocks::new(HASH, blocks(8, 64 << 10, 1)));
    let first = p.pull(&addr, "a", HASH).await.unwrap();
    let at = first[0].as_ptr();
    drop(first);
    holds.0.lock().unwrap().insert("b".into(), HeldBlocks::new(HASH, blocks(8, 64 << 10, 2)));
    let second = p.pull(&addr, "b", HASH).await.unwrap();
    assert_eq!(second, blocks(8, 64 << 10, 2));
    assert_eq!(second[0].as_ptr(), at, "the second pull landed in the first one's memory");
    // Blocks still alive keep their memory: the next pull gets other memory.
    holds.0.lock().unwrap().insert("c".into(), HeldBlocks::new(HASH, blocks(8, 64 << 10, 3)));
    let third = p.pull(&addr, "c", HASH).await.unwrap();
    assert_ne!(third[0].as_ptr(), second[0].as_ptr());
    assert_eq!(second, blocks(8, 64 << 10, 2), "untouched by the later pull");
}
