//! Which block a full tier gives up: LRU or ARC, the two policies vLLM's offloader
//! offers (`kv_connector_extra_config.eviction_policy`: `lru`, the default, or `arc`).
//!
//! A policy tracks the tier's resident keys and picks victims; the tier owns the slots
//! and the data. Blocks being copied in or out must not be evicted, so a victim is
//! chosen among the keys the caller says are evictable.
//!
//! ARC (Megiddo & Modha, FAST '03) keeps recently used keys (`T1`, seen once) apart
//! from frequently used ones (`T2`), remembers the keys it evicted from each (ghosts
//! `B1`, `B2`), and moves its target size for `T1` toward whichever ghost list a new
//! key comes back from: a one-off scan of many prefixes then evicts the scan, not the
//! prefixes in steady use, which plain LRU would.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// The policies by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Least recently used.
    #[default]
    Lru,
    /// Adaptive replacement cache.
    Arc,
}

impl std::str::FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lru" => Ok(PolicyKind::Lru),
            "arc" => Ok(PolicyKind::Arc),
            other => Err(format!("unknown eviction_policy {other:?} (lru, arc)")),
        }
    }
}

impl PolicyKind {
    /// A policy of this kind for a tier of `capacity` blocks.
    pub fn build<K: Hash + Eq + Clone + Send + 'static>(self, capacity: usize) -> Box<dyn EvictionPolicy<K>> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new()),
            PolicyKind::Arc => Box::new(Arc::new(capacity)),
        }
    }
}

/// Resident keys and the choice of victims.
pub trait EvictionPolicy<K>: Send {
    /// `key` (resident) was used.
    fn hit(&mut self, key: &K);
    /// `key` became resident (it was not).
    fn insert(&mut self, key: K);
    /// `key` stops being resident without being a victim (invalidated); whether it was.
    fn remove(&mut self, key: &K) -> bool;
    /// Picks a resident key that `evictable` allows and removes it, to make room for
    /// `incoming` (if known); `None` when no resident key may go.
    fn victim(&mut self, incoming: Option<&K>, evictable: &dyn Fn(&K) -> bool) -> Option<K>;
    /// Whether `key` is resident.
    fn contains(&self, key: &K) -> bool;
    /// Resident keys.
    fn len(&self) -> usize;
    /// No resident keys.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keys in use order, least recent first; O(log n) per operation.
#[derive(Debug)]
struct Ordered<K> {
    at: HashMap<K, u64>,
    order: BTreeMap<u64, K>,
    next: u64,
}

impl<K: Hash + Eq + Clone> Ordered<K> {
    fn new() -> Self {
        Ordered { at: HashMap::new(), order: BTreeMap::new(), next: 0 }
    }

    fn len(&self) -> usize {
        self.at.len()
    }

    fn contains(&self, k: &K) -> bool {
        self.at.contains_key(k)
    }

    /// Makes `k` the most recent (inserting it if absent).
    fn push(&mut self, k: K) {
        self.remove(&k);
        self.next += 1;
        self.order.insert(self.next, k.clone());
        self.at.insert(k, self.next);
    }

    fn remove(&mut self, k: &K) -> bool {
        match self.at.remove(k) {
            Some(seq) => {
                self.order.remove(&seq);
                true
            }
            None => false,
        }
    }

    fn pop_lru(&mut self) -> Option<K> {
        let (_, k) = self.order.pop_first()?;
        self.at.remove(&k);
        Some(k)
    }

    /// Removes and returns the least recent key `ok` allows.
    fn take_lru(&mut self, ok: &dyn Fn(&K) -> bool) -> Option<K> {
        let k = self.order.values().find(|k| ok(k))?.clone();
        self.remove(&k);
        Some(k)
    }
}

/// Least recently used.
#[derive(Debug)]
pub struct Lru<K> {
    keys: Ordered<K>,
}

impl<K: Hash + Eq + Clone> Lru<K> {
    /// An empty policy.
    pub fn new() -> Self {
        Lru { keys: Ordered::new() }
    }
}

impl<K: Hash + Eq + Clone> Default for Lru<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone + Send> EvictionPolicy<K> for Lru<K> {
    fn hit(&mut self, key: &K) {
        if self.keys.contains(key) {
            self.keys.push(key.clone());
        }
    }

    fn insert(&mut self, key: K) {
        self.keys.push(key);
    }

    fn remove(&mut self, key: &K) -> bool {
        self.keys.remove(key)
    }

    fn victim(&mut self, _incoming: Option<&K>, evictable: &dyn Fn(&K) -> bool) -> Option<K> {
        self.keys.take_lru(evictable)
    }

    fn contains(&self, key: &K) -> bool {
        self.keys.contains(key)
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Adaptive replacement cache for a tier of `capacity` blocks.
#[derive(Debug)]
pub struct Arc<K> {
    capacity: usize,
    /// Target size of `t1`.
    p: usize,
    t1: Ordered<K>,
    t2: Ordered<K>,
    b1: Ordered<K>,
    b2: Ordered<K>,
}

impl<K: Hash + Eq + Clone> Arc<K> {
    /// An empty policy for `capacity` resident keys (ghosts: as many again).
    pub fn new(capacity: usize) -> Self {
        Arc { capacity, p: 0, t1: Ordered::new(), t2: Ordered::new(), b1: Ordered::new(), b2: Ordered::new() }
    }

    /// The current target size of the recency list (for tests and metrics).
    pub fn target(&self) -> usize {
        self.p
    }

    /// Ghost keys remembered.
    pub fn ghosts(&self) -> usize {
        self.b1.len() + self.b2.len()
    }

    // ARC's bounds: |T1| + |B1| <= c and everything <= 2c.
    fn trim_ghosts(&mut self) {
        while self.t1.len() + self.b1.len() > self.capacity && self.b1.pop_lru().is_some() {}
        while self.t1.len() + self.t2.len() + self.b1.len() + self.b2.len() > 2 * self.capacity
            && self.b2.pop_lru().is_some()
        {}
    }
}

impl<K: Hash + Eq + Clone + Send> EvictionPolicy<K> for Arc<K> {
    fn hit(&mut self, key: &K) {
        if self.t1.remove(key) || self.t2.contains(key) {
            self.t2.push(key.clone());
        }
    }

    fn insert(&mut self, key: K) {
        if self.b1.remove(&key) {
            // Came back after being evicted as recent: recency deserves more room.
            let step = (self.b2.len() / (self.b1.len() + 1)).max(1);
            self.p = (self.p + step).min(self.capacity);
            self.t2.push(key);
        } else if self.b2.remove(&key) {
            let step = (self.b1.len() / (self.b2.len() + 1)).max(1);
            self.p = self.p.saturating_sub(step);
            self.t2.push(key);
        } else {
            self.t1.push(key);
        }
        self.trim_ghosts();
    }

    fn remove(&mut self, key: &K) -> bool {
        self.t1.remove(key) || self.t2.remove(key)
    }

    fn victim(&mut self, incoming: Option<&K>, evictable: &dyn Fn(&K) -> bool) -> Option<K> {
        let from_t1 = !self.t1.is_empty_of(evictable)
            && (self.t1.len() > self.p || (incoming.is_some_and(|k| self.b2.contains(k)) && self.t1.len() == self.p));
        let (k, t1) = if from_t1 {
            (self.t1.take_lru(evictable), true)
        } else {
            match self.t2.take_lru(evictable) {
                Some(k) => (Some(k), false),
                None => (self.t1.take_lru(evictable), true),
            }
        };
        let k = k?;
        if t1 {
            self.b1.push(k.clone());
        } else {
            self.b2.push(k.clone());
        }
        self.trim_ghosts();
        Some(k)
    }

    fn contains(&self, key: &K) -> bool {
        self.t1.contains(key) || self.t2.contains(key)
    }

    fn len(&self) -> usize {
        self.t1.len() + self.t2.len()
    }
}

impl<K: Hash + Eq + Clone> Ordered<K> {
    /// Whether no key `ok` allows is here.
    fn is_empty_of(&self, ok: &dyn Fn(&K) -> bool) -> bool {
        !self.order.values().any(ok)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    fn any(_: &u32) -> bool {
        true
    }

    #[test]
    fn lru_gives_up_the_least_recently_used_evictable_key() {
        let mut p = Lru::new();
        for k in 0..4u32 {
            p.insert(k);
        }
        p.hit(&0);
        assert_eq!(p.victim(None, &any), Some(1));
        assert_eq!(p.victim(None, &|k: &u32| *k != 2), Some(3), "2 is pinned");
        assert!(p.remove(&2));
        assert_eq!(p.victim(None, &any), Some(0));
        assert_eq!(p.victim(None, &any), None);
        assert!(p.is_empty());
    }

    /// Uses `k` as a full cache of `cap` would: a hit, or an insert after evicting.
    fn touch(p: &mut dyn EvictionPolicy<u32>, cap: usize, k: u32) {
        if p.contains(&k) {
            p.hit(&k);
        } else {
            if p.len() == cap {
                p.victim(Some(&k), &any).unwrap();
            }
            p.insert(k);
        }
    }

    /// Keys in steady use, then a scan of one-off keys through a cache of `cap`: how
    /// many of the steady keys survive.
    fn survivors(kind: PolicyKind) -> usize {
        let cap = 8;
        let mut p = kind.build::<u32>(cap);
        let steady: Vec<u32> = (0..4).collect();
        for _ in 0..3 {
            for &k in &steady {
                touch(p.as_mut(), cap, k);
            }
        }
        for k in 100..130 {
            touch(p.as_mut(), cap, k);
        }
        steady.iter().filter(|k| p.contains(k)).count()
    }

    #[test]
    fn arc_keeps_keys_in_steady_use_through_a_scan_where_lru_loses_them() {
        assert_eq!(survivors(PolicyKind::Arc), 4);
        assert_eq!(survivors(PolicyKind::Lru), 0);
    }

    #[test]
    fn arc_grows_its_recency_target_when_evicted_recent_keys_come_back() {
        let mut p = Arc::new(4);
        // 0 and 1 in steady use (T2), 2 and 3 seen once (T1).
        for k in 0..2u32 {
            p.insert(k);
            p.hit(&k);
        }
        p.insert(2);
        p.insert(3);
        assert_eq!(p.victim(Some(&9), &any), Some(2), "recent keys go first while the target is 0");
        p.insert(9);
        assert_eq!(p.target(), 0);
        // 2 comes back from the recency ghosts: the target grows, and 2 is now frequent.
        assert_eq!(p.victim(Some(&2), &any), Some(3));
        p.insert(2);
        assert!(p.target() > 0);
        assert!(p.contains(&2) && p.contains(&0) && p.contains(&1));
    }

    #[test]
    fn policies_are_named_as_vllm_names_them() {
        assert_eq!("lru".parse(), Ok(PolicyKind::Lru));
        assert_eq!("arc".parse(), Ok(PolicyKind::Arc));
        assert!("lfu".parse::<PolicyKind>().unwrap_err().contains("lfu"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Use(u8),
        Remove(u8),
        Pin(u8),
        Unpin(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..24).prop_map(Op::Use),
            1 => (0u8..24).prop_map(Op::Remove),
            1 => (0u8..24).prop_map(Op::Pin),
            1 => (0u8..24).prop_map(Op::Unpin),
        ]
    }

    /// Drives a policy as a tier would and checks, after every operation, that it holds
    /// exactly the keys the tier thinks resident, never more than `cap`, and never
    /// gives up a pinned key. `broken` makes the tier ignore pins (negative control).
    fn run(kind: PolicyKind, ops: &[Op], broken: bool) -> Result<(), TestCaseError> {
        let cap = 6;
        let mut p = kind.build::<u8>(cap);
        let mut resident: HashSet<u8> = HashSet::new();
        let mut pinned: HashSet<u8> = HashSet::new();
        for o in ops {
            match *o {
                Op::Use(k) if resident.contains(&k) => p.hit(&k),
                Op::Use(k) => {
                    if resident.len() == cap {
                        let pins = pinned.clone();
                        let ok = move |x: &u8| broken || !pins.contains(x);
                        match p.victim(Some(&k), &ok) {
                            Some(v) => {
                                prop_assert!(resident.remove(&v), "victim {v} was not resident");
                                prop_assert!(!pinned.contains(&v), "pinned {v} was evicted");
                            }
                            // Everything pinned: the block is not stored.
                            None => continue,
                        }
                    }
                    p.insert(k);
                    resident.insert(k);
                }
                Op::Remove(k) => {
                    prop_assert_eq!(p.remove(&k), resident.remove(&k));
                    pinned.remove(&k);
                }
                Op::Pin(k) if resident.contains(&k) => {
                    pinned.insert(k);
                }
                Op::Pin(_) => {}
                Op::Unpin(k) => {
                    pinned.remove(&k);
                }
            }
            prop_assert_eq!(p.len(), resident.len());
            prop_assert!(p.len() <= cap);
            for k in 0..24u8 {
                prop_assert_eq!(p.contains(&k), resident.contains(&k), "key {}", k);
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn lru_holds_what_the_tier_holds(ops in proptest::collection::vec(op(), 0..200)) {
            run(PolicyKind::Lru, &ops, false)?;
        }

        #[test]
        fn arc_holds_what_the_tier_holds(ops in proptest::collection::vec(op(), 0..200)) {
            run(PolicyKind::Arc, &ops, false)?;
        }

        #[test]
        fn arc_ghosts_stay_bounded(keys in proptest::collection::vec(0u32..64, 0..400)) {
            let cap = 8;
            let mut p = Arc::new(cap);
            for k in keys {
                touch(&mut p, cap, k);
                prop_assert!(p.len() <= cap && p.len() + p.ghosts() <= 2 * cap && p.target() <= cap);
            }
        }
    }

    #[test]
    fn negative_control_a_tier_ignoring_pins_is_caught() {
        // Fill, pin everything, then store one more: the broken tier evicts a pinned key.
        let mut ops: Vec<Op> = (0..6).map(Op::Use).collect();
        ops.extend((0..6).map(Op::Pin));
        ops.push(Op::Use(7));
        for kind in [PolicyKind::Lru, PolicyKind::Arc] {
            assert!(run(kind, &ops, false).is_ok());
            assert!(run(kind, &ops, true).is_err(), "{kind:?}");
        }
    }
}
