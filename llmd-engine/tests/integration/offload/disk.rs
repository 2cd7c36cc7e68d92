//! KV offloading's disk tier: blocks written through from host memory come back from
//! disk with the tokens a cold engine computes, survive a restart (the index is rebuilt
//! from the files), are shared by engines pointed at one directory, are never served
//! when damaged or written for another model, and a writer killed with SIGKILL in the
//! middle of heavy writing leaves only whole blocks behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use llmd_engine::Engine;
use llmd_engine::offload::{DiskConfig, DiskTier, Namespace};
use llmd_kvcache::tier::PolicyKind;
use llmd_kvcache::{BlockHash, KvEvent};

use super::{engine, offload, prompt, req, run};

/// A fresh directory under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llmd-offload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An engine drawn from `seed` with `host_blocks` of host memory and a disk tier under
/// `dir`.
fn disk_engine(seed: u64, dir: &Path, host_blocks: usize) -> Engine {
    let mut e = engine(seed);
    let cfg = offload(&e, host_blocks, Some(dir));
    e.enable_offload(&cfg).unwrap();
    e
}

/// Alpha, then three others that push it out of the device and of 4 blocks of host
/// memory; the writes are waited for.
fn alpha_then_others(e: &mut Engine, round: &str) -> Vec<u32> {
    let (t, _) = run(e, req(&format!("alpha{round}"), prompt("alpha")));
    for p in ["bravo", "charlie", "delta"] {
        run(e, req(&format!("{p}{round}"), prompt(p)));
    }
    e.flush_offload(Duration::from_secs(30));
    t
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(dir).unwrap().flatten() {
        for sub in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|x| x == "kv") {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

#[test]
fn a_prefix_comes_back_from_disk_and_survives_a_restart() {
    let dir = scratch("restart");
    let want = run(&mut engine(7), req("cold", prompt("alpha"))).0;

    let mut e = disk_engine(7, &dir, 4);
    assert_eq!(alpha_then_others(&mut e, "1"), want);
    let (again, cached) = run(&mut e, req("alpha2", prompt("alpha")));
    assert_eq!((again.as_slice(), cached), (want.as_slice(), 40), "all 10 full blocks came back");
    let disk = e.offload_disk_stats().unwrap();
    assert!(disk.read_blocks >= 6, "host memory holds 4 blocks, the rest came from disk: {disk:?}");
    let events = std::iter::from_fn(|| e.take_events()).flat_map(|b| b.events).collect::<Vec<_>>();
    assert!(
        events.iter().any(|ev| matches!(ev, KvEvent::BlockStored(s) if s.medium.as_deref() == Some("STORAGE") && s.token_ids.is_empty())),
        "the disk tier announces what it holds"
    );
    drop(e);

    // A new engine on the same directory: nothing on its device or in its host memory.
    let mut e = disk_engine(7, &dir, 4);
    assert!(e.offload_disk_stats().unwrap().adopted_blocks >= 10);
    let (after, cached) = run(&mut e, req("alpha3", prompt("alpha")));
    assert_eq!((after.as_slice(), cached), (want.as_slice(), 40), "served from the files alone");
    drop(e);

    // Another model (the built-in one with other weights) never sees those blocks.
    let mut other = disk_engine(8, &dir, 4);
    assert_eq!(other.offload_disk_stats().unwrap().adopted_blocks, 0);
    assert_eq!(run(&mut other, req("alpha", prompt("alpha"))).1, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn groups_of_device_blocks_go_to_disk_and_come_back_after_a_restart_in_their_own_namespace() {
    let dir = scratch("groups");
    let want = run(&mut engine(7), req("cold", prompt("alpha"))).0;
    let grouped = |k: usize, host_blocks: usize| {
        let mut e = engine(7);
        let cfg = llmd_engine::offload::OffloadConfig {
            block_size: Some(k * super::BS),
            ..offload(&e, host_blocks, Some(&dir))
        };
        e.enable_offload(&cfg).unwrap();
        e
    };
    // Host memory for two groups of two: the rest of alpha's five is on disk only.
    let mut e = grouped(2, 4);
    assert_eq!(alpha_then_others(&mut e, "1"), want);
    drop(e);
    let mut e = grouped(2, 4);
    assert!(e.offload_disk_stats().unwrap().adopted_blocks >= 5, "alpha's five groups, at least");
    let (after, cached) = run(&mut e, req("alpha2", prompt("alpha")));
    assert_eq!((after.as_slice(), cached), (want.as_slice(), 40), "five groups of two from the files");
    assert!(e.offload_disk_stats().unwrap().read_blocks >= 5);
    drop(e);
    // Groups of three hold other bytes under other hashes: another namespace, nothing read.
    let mut e = grouped(3, 6);
    assert_eq!(e.offload_disk_stats().unwrap().adopted_blocks, 0);
    assert_eq!(run(&mut e, req("alpha3", prompt("alpha"))).1, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_block_is_dropped_and_computed_never_served() {
    let dir = scratch("damage");
    let want = run(&mut engine(7), req("cold", prompt("alpha"))).0;
    let mut e = disk_engine(7, &dir, 4);
    alpha_then_others(&mut e, "1");
    let files_before = block_files(&dir).len();
    drop(e);
    // Damage every block file by one byte in its data: a restart adopts them, and each
    // read then fails its checksum.
    for f in block_files(&dir) {
        let mut b = std::fs::read(&f).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        std::fs::write(&f, b).unwrap();
    }
    let mut e = disk_engine(7, &dir, 4);
    let (tokens, cached) = run(&mut e, req("alpha2", prompt("alpha")));
    assert_eq!(tokens, want, "computed again, same tokens");
    assert_eq!(cached, 0, "nothing served from damaged files");
    let disk = e.offload_disk_stats().unwrap();
    assert!(disk.bad_blocks >= 1 && disk.read_blocks == 0, "{disk:?}");
    e.flush_offload(Duration::from_secs(30));
    assert!(block_files(&dir).len() < files_before, "the damaged file was deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replicas_sharing_a_directory_load_what_the_other_computed() {
    let dir = scratch("shared");
    let want = run(&mut engine(7), req("cold", prompt("alpha"))).0;
    // Both start before either wrote anything.
    let mut a = disk_engine(7, &dir, 4);
    let mut b = disk_engine(7, &dir, 4);
    alpha_then_others(&mut a, "a");
    let (tokens, cached) = run(&mut b, req("alpha-on-b", prompt("alpha")));
    assert_eq!(tokens, want);
    assert!(cached >= 24, "b loaded alpha's blocks a wrote: {cached} tokens");
    // Both write the same blocks now; every file stays whole.
    alpha_then_others(&mut b, "b");
    drop((a, b));
    let mut c = disk_engine(7, &dir, 4);
    assert_eq!(run(&mut c, req("alpha-on-c", prompt("alpha"))), (want, 40));
    assert_eq!(c.offload_disk_stats().unwrap().bad_blocks, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the crash test's writer writes: block `i` holds bytes drawn from `i`.
fn contents(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn hash_of(i: u64) -> BlockHash {
    BlockHash::from_bytes(&[i.to_be_bytes(), [0xab; 8], [0xcd; 8], [0xef; 8]].concat()).unwrap()
}

fn crash_tier(dir: &Path) -> DiskTier {
    let cfg = DiskConfig {
        root: dir.to_path_buf(),
        medium: "STORAGE".into(),
        blocks: 100_000,
        policy: PolicyKind::Lru,
        read_threads: 4,
        write_threads: 4,
    };
    let ns = Namespace { model: "crash".into(), layout: "64 KiB".into(), hasher: "test".into() };
    DiskTier::open(&cfg, &ns).unwrap()
}

const CHILD: &str = "LLMD_OFFLOAD_CRASH_CHILD";

/// The parent starts this same test in a child process (env `LLMD_OFFLOAD_CRASH_CHILD`
/// names the directory), which writes blocks as fast as it can until the parent kills
/// it with SIGKILL. Then a tier opened on the directory reads every block back: each
/// is whole and equal to what was written, or is dropped — a file damaged afterwards
/// included — and none is served damaged.
#[test]
fn a_writer_killed_mid_write_leaves_only_whole_blocks() {
    if let Ok(dir) = std::env::var(CHILD) {
        let mut tier = crash_tier(Path::new(&dir));
        for i in 0.. {
            while tier.queued_writes() >= 128 {
                tier.wait(Duration::from_millis(5));
                tier.poll();
            }
            tier.store(&[(hash_of(i), Bytes::from(contents(i)))]);
        }
        return;
    }
    let dir = scratch("crash");
    // This test's path in the binary (`offload::disk::...`): the module path less the
    // crate's name, so the child runs it and nothing else.
    let (_, module) = module_path!().split_once("::").unwrap();
    let name = format!("{module}::a_writer_killed_mid_write_leaves_only_whole_blocks");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &name, "--nocapture", "--test-threads", "1"])
        .env(CHILD, &dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Heavy writing under way: wait for 300 files (polled; the child is a process).
    let deadline = Instant::now() + Duration::from_secs(60);
    while block_files(&dir).len() < 300 {
        assert!(Instant::now() < deadline, "the writer wrote too little");
        assert!(child.try_wait().unwrap().is_none(), "the writer stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // A power loss's leftovers, too: one file truncated, one with a flipped byte.
    let files = block_files(&dir);
    let mut b = std::fs::read(&files[0]).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&files[0], b).unwrap();
    let mut b = std::fs::read(&files[1]).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&files[1], b).unwrap();

    let mut tier = crash_tier(&dir);
    let found = tier.stats().adopted_blocks;
    assert!(found >= 300, "{found} blocks adopted");
    // Every block the child may have started: the written ones are adopted, in order.
    let hashes: Vec<BlockHash> = (0..found + 64).map(hash_of).collect();
    let mut ok = 0;
    let mut dropped = 0;
    for chunk in hashes.chunks(32) {
        let present: Vec<BlockHash> =
            chunk.iter().copied().filter(|h| tier.lookup(std::slice::from_ref(h)) == 1).collect();
        for h in &present {
            tier.read(std::slice::from_ref(h));
        }
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < present.len() {
            assert!(Instant::now() < deadline, "reads stuck");
            tier.wait(Duration::from_millis(20));
            got.extend(tier.poll());
        }
        for r in got {
            let i = u64::from_be_bytes(r.hash.as_bytes()[..8].try_into().unwrap());
            match r.data {
                Some(d) => {
                    assert_eq!(&d[..], &contents(i)[..], "block {i} served with other contents");
                    ok += 1;
                }
                None => dropped += 1,
            }
        }
    }
    assert_eq!(dropped, 2, "exactly the two damaged files are dropped; {ok} verified");
    assert!(ok >= 298);
    assert_eq!(tier.stats().bad_blocks, 2);
    drop(tier);
    let _ = std::fs::remove_dir_all(&dir);
}
