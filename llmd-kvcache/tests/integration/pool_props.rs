//! Randomized operation sequences against the block pool, checked after every step
//! against a plain reference model (TGI's radix-allocator tests do the same), plus a
//! negative control proving the checks catch a broken pool.

use std::collections::{HashSet, VecDeque};

use llmd_kvcache::{BlockHash, BlockHasher, BlockId, BlockPool, KvCacheError, StoredInfo};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CAPACITY: usize = 12;
const SEQS: usize = 4;
const SEQ_BLOCKS: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(usize),
    Cache { held: usize, seq: usize, pos: usize },
    TouchPrefix { seq: usize, len: usize },
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..5usize).prop_map(Op::Alloc),
        3 => any::<usize>().prop_map(Op::Free),
        3 => (any::<usize>(), 0..SEQS, 0..SEQ_BLOCKS).prop_map(|(held, seq, pos)| Op::Cache { held, seq, pos }),
        2 => (0..SEQS, 1..=SEQ_BLOCKS).prop_map(|(seq, len)| Op::TouchPrefix { seq, len }),
        1 => Just(Op::Reset),
    ]
}

/// Hash chains of a few sequences; sequences 0 and 1 share their first two blocks.
fn chains() -> Vec<Vec<BlockHash>> {
    let h = BlockHasher::default();
    (0..SEQS)
        .map(|s| {
            let toks: Vec<u32> =
                (0..SEQ_BLOCKS * 2).map(|i| if s == 1 && i < 4 { i as u32 } else { (s * 1000 + i) as u32 }).collect();
            h.hash_tokens(&toks, 2).unwrap()
        })
        .collect()
}

/// The obvious, slow implementation of the pool's contract. A hash is cached while any
/// block carries it; which copy a lookup returns is the pool's choice.
#[derive(Default)]
struct Model {
    refs: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    free: VecDeque<BlockId>,
}

impl Model {
    fn new(cap: usize) -> Self {
        Model { refs: vec![0; cap], hash: vec![None; cap], free: (0..cap as u32).collect() }
    }

    fn alloc(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.free.len() {
            return None;
        }
        let ids: Vec<_> = self.free.drain(..n).collect();
        for &id in &ids {
            self.hash[id as usize] = None;
            self.refs[id as usize] = 1;
        }
        Some(ids)
    }

    fn free(&mut self, id: BlockId) {
        self.refs[id as usize] -= 1;
        if self.refs[id as usize] == 0 {
            if self.hash[id as usize].is_some() {
                self.free.push_back(id);
            } else {
                self.free.push_front(id);
            }
        }
    }

    fn cache(&mut self, id: BlockId, h: BlockHash) -> Result<(), KvCacheError> {
        match self.hash[id as usize] {
            _ if self.refs[id as usize] == 0 => Err(KvCacheError::CachingFreeBlock(id)),
            Some(old) if old != h => Err(KvCacheError::AlreadyCached(id)),
            Some(_) => Ok(()),
            None => {
                self.hash[id as usize] = Some(h);
                Ok(())
            }
        }
    }

    fn cached(&self) -> HashSet<BlockHash> {
        self.hash.iter().flatten().copied().collect()
    }

    fn prefix_len(&self, hashes: &[BlockHash]) -> usize {
        let cached = self.cached();
        hashes.iter().take_while(|h| cached.contains(h)).count()
    }

    fn touch(&mut self, ids: &[BlockId]) {
        for &id in ids {
            if self.refs[id as usize] == 0 {
                self.free.retain(|&f| f != id);
            }
            self.refs[id as usize] += 1;
        }
    }

    fn reset(&mut self) -> bool {
        if self.free.len() != self.refs.len() {
            return false;
        }
        *self = Model::new(self.refs.len());
        true
    }
}

type FreeFn = fn(&mut BlockPool, &[BlockId]) -> Result<(), KvCacheError>;

fn correct_free(p: &mut BlockPool, ids: &[BlockId]) -> Result<(), KvCacheError> {
    p.free(ids)
}

/// Runs `ops`, comparing pool and model after each step.
fn check(ops: &[Op], free: FreeFn) -> Result<(), TestCaseError> {
    let chains = chains();
    let mut pool = BlockPool::new(CAPACITY, 2).unwrap();
    let mut model = Model::new(CAPACITY);
    let mut held: Vec<BlockId> = Vec::new();

    for op in ops {
        match *op {
            Op::Alloc(n) => match (pool.allocate(n), model.alloc(n)) {
                (Ok(got), Some(want)) => {
                    prop_assert_eq!(&got, &want);
                    held.extend(got);
                }
                (Err(KvCacheError::OutOfBlocks { .. }), None) => {}
                (got, want) => {
                    prop_assert!(false, "alloc({}): pool {:?}, model {:?}", n, got, want)
                }
            },
            Op::Free(i) if !held.is_empty() => {
                let id = held.swap_remove(i % held.len());
                free(&mut pool, &[id]).map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.free(id);
            }
            Op::Free(_) => {
                // Nothing held: any free is a double free and must change nothing.
                prop_assert_eq!(pool.free(&[0]), Err(KvCacheError::DoubleFree(0)));
            }
            Op::Cache { held: i, seq, pos } if !held.is_empty() => {
                let id = held[i % held.len()];
                let h = chains[seq][pos];
                let got = pool.cache_blocks(&[id], &[h], StoredInfo::default());
                prop_assert_eq!(got, model.cache(id, h));
            }
            Op::Cache { .. } => {}
            Op::TouchPrefix { seq, len } => {
                let hashes = &chains[seq][..len];
                let got = pool.find_cached_prefix(hashes);
                prop_assert_eq!(got.len(), model.prefix_len(hashes));
                // Every returned block really holds the matching hash of the chain.
                for (i, &b) in got.iter().enumerate() {
                    prop_assert_eq!(pool.block_hash(b).unwrap(), Some(hashes[i]));
                }
                pool.touch(&got).unwrap();
                model.touch(&got);
                held.extend(got);
            }
            Op::Reset => prop_assert_eq!(pool.reset_prefix_cache(), model.reset()),
        }
        pool.check_invariants().map_err(TestCaseError::fail)?;
        prop_assert_eq!(pool.free_list(), Vec::from(model.free.clone()), "eviction order after {:?}", op);
        for id in 0..CAPACITY as u32 {
            prop_assert_eq!(pool.ref_count(id).unwrap(), model.refs[id as usize], "ref count of block {}", id);
        }
        prop_assert_eq!(pool.num_free() + model.refs.iter().filter(|&&r| r > 0).count(), CAPACITY);
        prop_assert!(pool.num_free() <= CAPACITY);
        prop_assert_eq!(pool.num_cached(), model.cached().len());
    }

    // Freeing everything returns the pool to full capacity.
    for id in held.drain(..) {
        free(&mut pool, &[id]).map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    prop_assert_eq!(pool.num_free(), CAPACITY);
    pool.check_invariants().map_err(TestCaseError::fail)?;
    prop_assert!(pool.reset_prefix_cache());
    prop_assert_eq!(pool.num_cached(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn pool_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        check(&ops, correct_free)?;
    }
}

/// Negative control: a pool whose `free` silently drops every third release (a leak,
/// the classic refcount bug) must be caught by the same checks.
#[test]
fn checks_catch_a_leaking_pool() {
    fn leaky_free(p: &mut BlockPool, ids: &[BlockId]) -> Result<(), KvCacheError> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        if CALLS.fetch_add(1, Ordering::Relaxed) % 3 == 2 { Ok(()) } else { p.free(ids) }
    }
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    let result = runner.run(&prop::collection::vec(op(), 1..80), |ops| check(&ops, leaky_free));
    assert!(result.is_err(), "the model check did not notice a leaking pool");
}

#[test]
fn allocation_is_all_or_nothing_and_names_the_shortfall() {
    let mut pool = BlockPool::new(4, 16).unwrap();
    let held = pool.allocate(3).unwrap();
    assert_eq!(pool.allocate(2), Err(KvCacheError::OutOfBlocks { requested: 2, free: 1 }));
    assert_eq!(pool.num_free(), 1);
    // A bad id in a batch free leaves every block as it was.
    assert_eq!(pool.free(&[held[0], 99]), Err(KvCacheError::NoSuchBlock(99)));
    assert_eq!(pool.ref_count(held[0]).unwrap(), 1);
    assert_eq!(pool.free(&[held[1], held[1]]), Err(KvCacheError::DoubleFree(held[1])));
    assert_eq!(pool.ref_count(held[1]).unwrap(), 1);
    pool.check_invariants().unwrap();
}
