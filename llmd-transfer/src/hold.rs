//! The prefill side's held blocks: after a prefill for remote decode, its KV blocks stay
//! allocated until the decode side pulls them, says it no longer needs them (vLLM's
//! notification, also sent on a full prefix hit), or the lease runs out (vLLM's
//! `kv_lease_duration`, 30 s by default, renewed by the decode side's heartbeats).
//!
//! Every hold leaves the table exactly once, with its payload (the block ids to free):
//! [`HoldTable::take`] for a pull, [`HoldTable::release`] for a notification,
//! [`HoldTable::expire`] for a lease that ran out. Nothing is freed behind the caller's
//! back, so the engine frees each block once and none leaks. The table bounds the bytes
//! it holds: a prefill that would pass the bound is refused up front (the caller then
//! serves it without a hold, and the decode side recomputes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use llmd_kvcache::clock::Clock;

use crate::error::{Result, TransferError};

/// Lease and memory bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldConfig {
    /// How long blocks wait for their pull without a renewal (vLLM's
    /// `kv_lease_duration`, 30 s).
    pub lease: Duration,
    /// The most bytes held at once.
    pub max_bytes: usize,
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig { lease: Duration::from_secs(30), max_bytes: 8 << 30 }
    }
}

/// How many holds ended which way, since the table was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldStats {
    /// Holds made.
    pub held: u64,
    /// Pulled by the decode side.
    pub pulled: u64,
    /// Released on notification.
    pub released: u64,
    /// Lease ran out.
    pub expired: u64,
    /// Refused at the memory bound.
    pub refused: u64,
}

#[derive(Debug)]
struct Entry<T> {
    payload: T,
    bytes: usize,
    expires_at: Duration,
}

/// Held payloads by request id.
pub struct HoldTable<T> {
    cfg: HoldConfig,
    clock: Arc<dyn Clock>,
    entries: HashMap<String, Entry<T>>,
    bytes: usize,
    stats: HoldStats,
}

impl<T> std::fmt::Debug for HoldTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HoldTable")
            .field("cfg", &self.cfg)
            .field("holds", &self.entries.len())
            .field("bytes", &self.bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<T> HoldTable<T> {
    /// An empty table on `clock`.
    pub fn new(cfg: HoldConfig, clock: Arc<dyn Clock>) -> Self {
        HoldTable { cfg, clock, entries: HashMap::new(), bytes: 0, stats: HoldStats::default() }
    }

    /// Holds `payload` (`bytes` of KV) for `request`, until taken, released or expired.
    /// Refused when `request` already holds blocks, or past the memory bound; the
    /// payload is dropped then ([`HoldTable::try_hold`] hands it back).
    pub fn hold(&mut self, request: &str, payload: T, bytes: usize) -> Result<()> {
        self.try_hold(request, payload, bytes).map_err(|(e, _)| e)
    }

    /// [`HoldTable::hold`], handing the payload back with the error so the caller can
    /// free its blocks at once.
    pub fn try_hold(&mut self, request: &str, payload: T, bytes: usize) -> std::result::Result<(), (TransferError, T)> {
        if self.entries.contains_key(request) {
            return Err((TransferError::DuplicateHold(request.to_string()), payload));
        }
        if self.bytes.saturating_add(bytes) > self.cfg.max_bytes {
            self.stats.refused += 1;
            let err = TransferError::Capacity { wanted: bytes, held: self.bytes, limit: self.cfg.max_bytes };
            return Err((err, payload));
        }
        let expires_at = self.clock.now() + self.cfg.lease;
        self.entries.insert(request.to_string(), Entry { payload, bytes, expires_at });
        self.bytes += bytes;
        self.stats.held += 1;
        Ok(())
    }

    fn remove(&mut self, request: &str) -> Option<Entry<T>> {
        let e = self.entries.remove(request)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    fn live(&self, request: &str) -> bool {
        self.entries.get(request).is_some_and(|e| self.clock.now() < e.expires_at)
    }

    /// The decode side pulls: the hold ends and its payload comes back (the caller
    /// sends the blocks, then frees them). A hold whose lease ran out is not handed
    /// out; it stays for [`HoldTable::expire`].
    pub fn take(&mut self, request: &str) -> Result<T> {
        if !self.live(request) {
            return Err(TransferError::NoHold(request.to_string()));
        }
        let e = self.remove(request).ok_or_else(|| TransferError::NoHold(request.to_string()))?;
        self.stats.pulled += 1;
        Ok(e.payload)
    }

    /// The decode side no longer needs the blocks (it had them cached, or gave up):
    /// the hold ends and its payload comes back to be freed. Works on an expired hold
    /// too (it ends it early).
    pub fn release(&mut self, request: &str) -> Result<T> {
        let e = self.remove(request).ok_or_else(|| TransferError::NoHold(request.to_string()))?;
        self.stats.released += 1;
        Ok(e.payload)
    }

    /// A heartbeat from the decode side: the lease starts again from now.
    pub fn renew(&mut self, request: &str) -> Result<()> {
        let now = self.clock.now();
        let lease = self.cfg.lease;
        match self.entries.get_mut(request) {
            Some(e) if now < e.expires_at => {
                e.expires_at = now + lease;
                Ok(())
            }
            _ => Err(TransferError::NoHold(request.to_string())),
        }
    }

    /// Ends every hold whose lease has run out and hands their payloads back to be
    /// freed (call it periodically, e.g. every engine step).
    pub fn expire(&mut self) -> Vec<(String, T)> {
        let now = self.clock.now();
        let gone: Vec<String> =
            self.entries.iter().filter(|(_, e)| now >= e.expires_at).map(|(k, _)| k.clone()).collect();
        let mut out = Vec::with_capacity(gone.len());
        for k in gone {
            if let Some(e) = self.remove(&k) {
                self.stats.expired += 1;
                out.push((k, e.payload));
            }
        }
        out
    }

    /// Ends every hold (shutdown) and hands the payloads back.
    pub fn drain(&mut self) -> Vec<(String, T)> {
        self.bytes = 0;
        self.entries.drain().map(|(k, e)| (k, e.payload)).collect()
    }

    /// Whether `request` holds blocks now (and its lease has not run out).
    pub fn contains(&self, request: &str) -> bool {
        self.live(request)
    }

    /// Holds in the table, expired ones not yet collected included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// How holds ended so far.
    pub fn stats(&self) -> HoldStats {
        self.stats
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use llmd_kvcache::clock::ManualClock;
    use proptest::prelude::*;

    fn table(max_bytes: usize) -> (HoldTable<Vec<u32>>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (HoldTable::new(HoldConfig { lease: Duration::from_secs(30), max_bytes }, clock.clone()), clock)
    }

    #[test]
    fn a_hold_ends_once_by_pull_release_or_expiry() {
        let (mut t, clock) = table(1000);
        t.hold("a", vec![1, 2], 100).unwrap();
        t.hold("b", vec![3], 100).unwrap();
        t.hold("c", vec![4], 100).unwrap();
        assert_eq!(t.held_bytes(), 300);
        assert!(matches!(t.hold("a", vec![9], 1), Err(TransferError::DuplicateHold(_))));
        assert_eq!(t.take("a").unwrap(), vec![1, 2]);
        assert!(matches!(t.take("a"), Err(TransferError::NoHold(_))));
        assert_eq!(t.release("b").unwrap(), vec![3]);
        // c's lease: renewed at 20 s, so alive at 40 s, gone at 50 s.
        clock.advance(Duration::from_secs(20));
        t.renew("c").unwrap();
        clock.advance(Duration::from_secs(20));
        assert!(t.expire().is_empty());
        clock.advance(Duration::from_secs(10));
        // Expired: not handed out for a pull, but collected with its payload.
        assert!(matches!(t.take("c"), Err(TransferError::NoHold(_))));
        assert!(matches!(t.renew("c"), Err(TransferError::NoHold(_))));
        assert_eq!(t.expire(), vec![("c".to_string(), vec![4])]);
        assert_eq!((t.len(), t.held_bytes()), (0, 0));
        assert_eq!(t.stats(), HoldStats { held: 3, pulled: 1, released: 1, expired: 1, refused: 0 });
    }

    #[test]
    fn the_memory_bound_refuses_and_hands_the_payload_back() {
        let (mut t, _) = table(250);
        t.hold("a", vec![1], 200).unwrap();
        let (err, back) = t.try_hold("b", vec![2, 3], 100).unwrap_err();
        assert!(matches!(err, TransferError::Capacity { wanted: 100, held: 200, limit: 250 }), "{err}");
        assert_eq!(back, vec![2, 3]);
        t.take("a").unwrap();
        t.hold("b", vec![2, 3], 100).unwrap();
        assert_eq!(t.stats().refused, 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hold(u8, usize),
        Take(u8),
        Release(u8),
        Renew(u8),
        Advance(u64),
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0usize..400).prop_map(|(r, b)| Op::Hold(r, b)),
            (0u8..6).prop_map(Op::Take),
            (0u8..6).prop_map(Op::Release),
            (0u8..6).prop_map(Op::Renew),
            (0u64..40).prop_map(Op::Advance),
            Just(Op::Expire),
        ]
    }

    /// Runs `ops`; checks that held bytes always equal the live holds' sum, stay within
    /// the bound, and that every payload put in comes out exactly once (after a final
    /// drain). `leak` skips handing back expired payloads (the negative control).
    fn run(ops: &[Op], leak: bool) -> std::result::Result<(), TestCaseError> {
        let (mut t, clock) = table(1000);
        let mut next = 0u32;
        let mut put: Vec<u32> = Vec::new();
        let mut out: Vec<u32> = Vec::new();
        let mut sizes: HashMap<String, usize> = HashMap::new();
        for o in ops {
            match o {
                Op::Hold(r, b) => {
                    let id = next;
                    next += 1;
                    match t.try_hold(&r.to_string(), vec![id], *b) {
                        Ok(()) => {
                            put.push(id);
                            sizes.insert(r.to_string(), *b);
                        }
                        Err((_, back)) => prop_assert_eq!(back, vec![id]),
                    }
                }
                Op::Take(r) => {
                    if let Ok(p) = t.take(&r.to_string()) {
                        out.extend(p);
                        sizes.remove(&r.to_string());
                    }
                }
                Op::Release(r) => {
                    if let Ok(p) = t.release(&r.to_string()) {
                        out.extend(p);
                        sizes.remove(&r.to_string());
                    }
                }
                Op::Renew(r) => {
                    let _ = t.renew(&r.to_string());
                }
                Op::Advance(s) => clock.advance(Duration::from_secs(*s)),
                Op::Expire => {
                    for (k, p) in t.expire() {
                        sizes.remove(&k);
                        if !leak {
                            out.extend(p);
                        }
                    }
                }
            }
            prop_assert_eq!(t.held_bytes(), sizes.values().sum::<usize>());
            prop_assert!(t.held_bytes() <= 1000);
        }
        out.extend(t.drain().into_iter().flat_map(|(_, p)| p));
        put.sort_unstable();
        out.sort_unstable();
        prop_assert_eq!(put, out, "every held payload comes back exactly once");
        Ok(())
    }

    proptest! {
        #[test]
        fn every_payload_comes_back_once_and_bytes_stay_bounded(ops in proptest::collection::vec(op(), 0..80)) {
            run(&ops, false)?;
        }
    }

    #[test]
    fn negative_control_a_leaked_expiry_is_caught() {
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut runner =
            TestRunner::new_with_rng(Config::with_cases(256), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let result = runner.run(&proptest::collection::vec(op(), 0..80), |ops| run(&ops, true));
        assert!(result.is_err(), "the property must notice payloads dropped at expiry");
    }
}
