//! The engine core: continuous batching with chunked prefill over the `llmd-kvcache`
//! block manager, sampling, stop conditions, streaming outputs, metrics and KV events.
//!
//! Synchronous and deterministic: [`Engine::step`] schedules one batch under the token
//! budget, runs it on the [`Backend`], samples, and returns what each request produced.
//! The [`EngineHandle`](crate::handle::EngineHandle) drives it from a thread; tests
//! drive it directly.
//!
//! This file orchestrates; the scheduling policy (admission, chunked prefill budget,
//! preemption) is in `engine/schedule.rs`, output processing (stop conditions,
//! detokenization, [`RequestOutput`]) in `engine/output.rs`, and KV prefix export and
//! import in `engine/transfer.rs`.

mod offload;
mod output;
mod schedule;
mod transfer;

pub use output::{FinishReason, RequestOutput, StopReason};
pub use transfer::{ExportedPrefix, KvLoadFailurePolicy, KvTransfer, KvTransferOutcome, RemoteBlocks};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use llmd_kvcache::{
    BlockHasher, BlockPool, EventBatcher, KvCacheManager, KvEventBatch, PrefixCacheStats, RequestKeys, Sequence,
};

use crate::backend::{Backend, LogitsWanted, SeqInput, StepLogits};
use crate::clock::Clock;
use crate::detok::IncrementalDecoder;
use crate::error::{EngineError, Result};
use crate::kv::KvDtype;
use crate::metrics::{EngineMetrics, FinishLabel};
use crate::sampling::{Rng, Sampled, SamplingParams, sample};
use crate::tokenizer::Tokenize;

/// Engine limits and cache layout.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Name the model is served under (the `model` field of API requests).
    pub model_name: String,
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV blocks.
    pub num_blocks: usize,
    /// Most requests in one batch.
    pub max_num_seqs: usize,
    /// Most tokens (prefill + decode) in one step.
    pub max_num_batched_tokens: usize,
    /// Longest prompt + output.
    pub max_model_len: usize,
    /// Reuse cached prefixes.
    pub enable_prefix_caching: bool,
    /// Element type of the KV cache (reported in metrics).
    pub kv_dtype: KvDtype,
    /// Block hashing (vLLM-compatible).
    pub hasher: BlockHasher,
    /// Seed for requests that do not bring one.
    pub seed: u64,
    /// Data-parallel rank stamped on KV event batches.
    pub data_parallel_rank: Option<i64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            model_name: crate::builtin::BUILTIN_MODEL_NAME.into(),
            block_size: 16,
            num_blocks: 1024,
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            max_model_len: 4096,
            enable_prefix_caching: true,
            kv_dtype: KvDtype::F16,
            hasher: BlockHasher::default(),
            seed: 0,
            data_parallel_rank: None,
        }
    }
}

/// A request as the engine takes it.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Unique id.
    pub id: String,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Extra hash keys (LoRA, cache salt).
    pub keys: RequestKeys,
    /// Its part in prefill/decode disaggregation, if any.
    pub kv_transfer: KvTransfer,
}

#[derive(Debug)]
struct ReqState {
    seq: Sequence,
    params: SamplingParams,
    prompt_len: usize,
    num_computed: usize,
    cached_tokens: usize,
    output: Vec<u32>,
    decoder: IncrementalDecoder,
    text: String,
    emitted: usize,
    rng: Rng,
    arrival: Duration,
    scheduled_at: Option<Duration>,
    first_token_at: Option<Duration>,
    last_token_at: Option<Duration>,
    // Remote KV to write in at admission, or an export to make at the end.
    transfer: KvTransfer,
    transfer_outcome: Option<KvTransferOutcome>,
    // For a simulated backend: blocks copied back from offloading's tiers are ready then.
    ready_at: Option<Duration>,
    // Offloaded blocks being read back from disk, then ready to be written in.
    load: Option<offload::PendingLoad>,
    // Offloaded groups of device blocks (block_size a multiple of the engine's) stored
    // so far from this request's computed blocks: the next to store.
    offload_groups: usize,
}

/// The engine.
pub struct Engine {
    cfg: EngineConfig,
    backend: Box<dyn Backend>,
    tokenizer: Arc<dyn Tokenize>,
    eos: Vec<u32>,
    kv: KvCacheManager<EventBatcher>,
    waiting: VecDeque<String>,
    running: Vec<String>,
    reqs: HashMap<String, ReqState>,
    clock: Arc<dyn Clock>,
    rng: Rng,
    metrics: Arc<EngineMetrics>,
    // Prefix-cache lookups made by imports, which are not requests: left out of the
    // vLLM counters, which mirror the manager's totals.
    import_stats: PrefixCacheStats,
    imports: u64,
    // Requests ended at admission (remote KV unusable, policy `fail`), for the next
    // step's outputs.
    ended_at_admission: Vec<RequestOutput>,
    // Host memory (and below) for evicted blocks, when KV offloading is on.
    offload: Option<crate::offload::Offloader>,
    // Requests out of the waiting queue while their offloaded blocks are read from disk.
    loading: Vec<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.cfg.model_name)
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish_non_exhaustive()
    }
}

/// [`Engine::validate`] less what needs the engine's state (duplicate ids): what an
/// [`EngineHandle`](crate::EngineHandle) checks on the caller's thread.
pub(crate) fn check_limits(max_model_len: usize, vocab: usize, r: &NewRequest) -> Result<()> {
    r.params.validate()?;
    if r.prompt.is_empty() {
        return Err(EngineError::InvalidParam { param: "prompt".into(), message: "the prompt is empty".into() });
    }
    if let Some(&t) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::InvalidParam {
            param: "prompt".into(),
            message: format!("token id {t} is out of vocabulary (size {vocab})"),
        });
    }
    // As vLLM: the prompt must leave room for one token; max_tokens may not exceed
    // the context and is otherwise clamped to what is left.
    if r.prompt.len() >= max_model_len || r.params.max_tokens > max_model_len {
        return Err(EngineError::ContextTooLong {
            max: max_model_len,
            prompt: r.prompt.len(),
            max_tokens: r.params.max_tokens,
            needed: r.prompt.len().saturating_add(r.params.max_tokens),
        });
    }
    Ok(())
}

/// The `max_tokens` a request that passed [`check_limits`] runs with: what it asked
/// for, at most what the context leaves after its prompt.
pub(crate) fn admitted_max_tokens(max_model_len: usize, r: &NewRequest) -> usize {
    r.params.max_tokens.min(max_model_len.saturating_sub(r.prompt.len()))
}

impl Engine {
    /// An engine over `backend`, whose KV cache must have `cfg.num_blocks` blocks of
    /// `cfg.block_size` tokens.
    pub fn new(
        cfg: EngineConfig,
        backend: Box<dyn Backend>,
        tokenizer: Arc<dyn Tokenize>,
        eos: Vec<u32>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let mut cfg = cfg;
        if cfg.max_model_len > backend.max_context() {
            tracing::warn!(
                requested = cfg.max_model_len,
                model = backend.max_context(),
                "max_model_len exceeds the model's context; using the model's"
            );
            cfg.max_model_len = backend.max_context();
        }
        if cfg.max_num_seqs == 0 || cfg.max_num_batched_tokens == 0 {
            return Err(EngineError::config("engine", "max_num_seqs", "limits must be positive"));
        }
        if cfg.num_blocks * cfg.block_size < cfg.max_model_len {
            return Err(EngineError::config(
                "engine",
                "num_blocks",
                format!(
                    "{} blocks of {} tokens cannot hold one request of max_model_len {}",
                    cfg.num_blocks, cfg.block_size, cfg.max_model_len
                ),
            ));
        }
        let pool = BlockPool::with_sink(cfg.num_blocks, cfg.block_size, EventBatcher::new(cfg.data_parallel_rank))?;
        let mut kv = KvCacheManager::with_pool(pool);
        kv.set_prefix_caching(cfg.enable_prefix_caching);
        let metrics = Arc::new(EngineMetrics::new(&cfg.model_name, cfg.max_model_len));
        let dtype = match cfg.kv_dtype {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
            KvDtype::BF16 => "bfloat16",
        };
        metrics.set_cache_config(cfg.block_size, cfg.num_blocks, dtype, cfg.enable_prefix_caching);
        Ok(Engine {
            rng: Rng::new(cfg.seed),
            cfg,
            backend,
            tokenizer,
            eos,
            kv,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reqs: HashMap::new(),
            clock,
            metrics,
            import_stats: PrefixCacheStats::default(),
            imports: 0,
            ended_at_admission: Vec::new(),
            offload: None,
            loading: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The metrics (register them with a Prometheus registry to export).
    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.metrics.clone()
    }

    /// The clock it reads.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> Arc<dyn Tokenize> {
        self.tokenizer.clone()
    }

    /// Requests running and waiting (those whose offloaded blocks are being read back
    /// count as waiting).
    pub fn num_requests(&self) -> (usize, usize) {
        (self.running.len(), self.waiting.len() + self.loading.len())
    }

    /// Whether a step would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty() || !self.loading.is_empty()
    }

    /// KV cache usage (0..1).
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }

    /// The KV events since the last call, as one batch.
    pub fn take_events(&mut self) -> Option<KvEventBatch> {
        let ts = self.clock.unix_time();
        self.kv.sink_mut().flush(ts)
    }

    /// The model's vocabulary size (token ids at or above it are refused).
    pub fn vocab_size(&self) -> usize {
        self.backend.vocab_size()
    }

    /// Checks a request against the model's limits without admitting it.
    pub fn validate(&self, r: &NewRequest) -> Result<()> {
        check_limits(self.cfg.max_model_len, self.backend.vocab_size(), r)?;
        if self.reqs.contains_key(&r.id) {
            return Err(EngineError::DuplicateRequest(r.id.clone()));
        }
        Ok(())
    }

    /// Queues a request.
    pub fn add_request(&mut self, mut r: NewRequest) -> Result<()> {
        self.validate(&r)?;
        r.params.max_tokens = admitted_max_tokens(self.cfg.max_model_len, &r);
        self.metrics.request_max_tokens.observe(r.params.max_tokens as f64);
        let seq = Sequence::new(r.id.clone(), r.prompt.clone(), r.keys, self.cfg.block_size, &self.cfg.hasher)?;
        let rng = Rng::new(r.params.seed.unwrap_or_else(|| self.rng.next_u64()));
        self.reqs.insert(
            r.id.clone(),
            ReqState {
                seq,
                prompt_len: r.prompt.len(),
                params: r.params,
                num_computed: 0,
                cached_tokens: 0,
                output: Vec::new(),
                decoder: IncrementalDecoder::new(r.prompt.len()),
                text: String::new(),
                emitted: 0,
                rng,
                arrival: self.clock.now(),
                scheduled_at: None,
                first_token_at: None,
                last_token_at: None,
                transfer: r.kv_transfer,
                transfer_outcome: None,
                ready_at: None,
                load: None,
                offload_groups: 0,
            },
        );
        self.waiting.push_back(r.id);
        self.update_gauges();
        Ok(())
    }

    /// Cancels a request, freeing its blocks; returns its final output if it existed.
    pub fn abort(&mut self, id: &str) -> Option<RequestOutput> {
        let out = self.reqs.get(id)?.final_output(id, FinishReason::Abort);
        self.finish(id, FinishReason::Abort);
        Some(out)
    }

    fn finish(&mut self, id: &str, reason: FinishReason) {
        self.waiting.retain(|w| w != id);
        self.loading.retain(|w| w != id);
        self.running.retain(|r| r != id);
        // A request that never got blocks is unknown to the KV manager; nothing to free.
        let _ = self.kv.free(id);
        let Some(st) = self.reqs.remove(id) else {
            self.update_gauges();
            return;
        };
        // Aborts (client gone, engine stopping) count under vLLM's `abort` label, which
        // vLLM itself exports but leaves at zero (vllm-project/vllm#31503).
        let m = &self.metrics;
        m.request_success.get_or_create(&FinishLabel { finished_reason: reason.as_str().into() }).inc();
        // An abort's timings and sizes measure the client's patience, not the engine: only
        // requests that ran to their end feed the histograms, as in vLLM.
        if reason != FinishReason::Abort {
            let now = self.clock.now();
            let secs = |d: Duration| d.as_secs_f64();
            m.e2e.observe(secs(now.saturating_sub(st.arrival)));
            m.request_prompt_tokens.observe(st.prompt_len as f64);
            m.request_generation_tokens.observe(st.output.len() as f64);
            if let Some(sched) = st.scheduled_at {
                m.inference_time.observe(secs(now.saturating_sub(sched)));
                if let Some(first) = st.first_token_at {
                    m.prefill_time.observe(secs(first.saturating_sub(sched)));
                    let decode = now.saturating_sub(first);
                    m.decode_time.observe(secs(decode));
                    if st.output.len() > 1 {
                        m.time_per_output_token.observe(secs(decode) / (st.output.len() - 1) as f64);
                    }
                }
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        self.metrics.running.set(self.running.len() as i64);
        self.metrics.waiting.set((self.waiting.len() + self.loading.len()) as i64);
        self.metrics.kv_usage.set(self.kv.usage());
    }

    /// Runs one step; returns the outputs of every request that produced tokens or
    /// finished.
    pub fn step(&mut self) -> Result<Vec<RequestOutput>> {
        let sched = self.schedule()?;
        let ended = std::mem::take(&mut self.ended_at_admission);
        let _span = tracing::debug_span!(
            "step",
            seqs = sched.len(),
            tokens = sched.iter().map(|s| s.1).sum::<usize>(),
            waiting = self.waiting.len()
        )
        .entered();
        if sched.is_empty() {
            // Only requests whose offloaded blocks are still coming back (simulated
            // copy time): wait for the first of them rather than spin.
            let now = self.clock.now();
            if let Some(t) = self.running.iter().filter_map(|id| self.reqs.get(id)?.ready_at).filter(|&t| t > now).min()
            {
                self.clock.sleep(t - now);
            } else if !self.loading.is_empty() {
                self.wait_for_disk();
            }
            self.update_gauges();
            return Ok(ended);
        }
        let inputs: Vec<SeqInput<'_>> = sched
            .iter()
            .map(|(id, n)| {
                let st = &self.reqs[id];
                let end = st.num_computed + n;
                SeqInput {
                    tokens: &st.seq.tokens()[st.num_computed..end],
                    start: st.num_computed,
                    block_table: self.kv.block_table(id).unwrap_or(&[]),
                    logits: if end == st.seq.tokens().len() { LogitsWanted::Last } else { LogitsWanted::None },
                }
            })
            .collect();
        // Blocks whose hashes were registered for this step's tokens; if the step fails
        // they hold no valid KV and must stop being offered as cache hits.
        let cached_before: Vec<usize> =
            sched.iter().map(|(id, _)| self.reqs[id].num_computed / self.cfg.block_size).collect();
        let results = match self.backend.execute(&inputs) {
            Ok(r) => r,
            Err(e) => {
                drop(inputs);
                tracing::error!(error = %e, "backend step failed; failing the batch");
                let mut outs = ended;
                for ((id, _), from) in sched.iter().zip(cached_before) {
                    if let Err(e) = self.kv.uncache_since(id, from) {
                        tracing::warn!(request = %id, error = %e, "cannot un-register blocks of a failed step");
                    }
                    if let Some(st) = self.reqs.get(id) {
                        outs.push(st.final_output(id, FinishReason::Error));
                    }
                    self.finish(id, FinishReason::Error);
                }
                return Ok(outs);
            }
        };
        drop(inputs);
        // Groups of device blocks this step completed go down now, while their request
        // holds them all (before any of them is freed).
        self.store_computed(&sched);
        self.metrics.iteration_tokens.observe(sched.iter().map(|s| s.1).sum::<usize>() as f64);

        let now = self.clock.now();
        let mut outputs = ended;
        for ((id, n), result) in sched.into_iter().zip(results) {
            let Some(st) = self.reqs.get_mut(&id) else {
                continue;
            };
            st.num_computed += n;
            let sampled = match result {
                StepLogits::None => continue,
                // Before min_tokens, EOS and the stop tokens cannot be drawn (vLLM masks
                // their logits the same way).
                StepLogits::Dense(logits) if st.output.len() < st.params.min_tokens => {
                    let mut masked = logits.to_vec();
                    for &t in self.eos.iter().filter(|_| !st.params.ignore_eos).chain(&st.params.stop_token_ids) {
                        if let Some(l) = masked.get_mut(t as usize) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                    sample(&masked, &st.params, &mut st.rng)
                }
                StepLogits::Dense(logits) => sample(&logits, &st.params, &mut st.rng),
                StepLogits::Token(t) => Sampled { token: t, logprob: None, top: Vec::new() },
            };
            st.seq.extend(&[sampled.token], &self.cfg.hasher)?;
            st.output.push(sampled.token);
            let m = &self.metrics;
            m.generation_tokens.inc();
            match st.last_token_at {
                None => {
                    st.first_token_at = Some(now);
                    m.ttft.observe(now.saturating_sub(st.arrival).as_secs_f64());
                    m.prompt_tokens.inc_by(st.prompt_len as u64);
                    m.prompt_tokens_cached.inc_by(st.cached_tokens as u64);
                }
                Some(t) => m.itl.observe(now.saturating_sub(t).as_secs_f64()),
            }
            st.last_token_at = Some(now);

            let mut out = st.token_output(&id, sampled, &self.eos, self.tokenizer.as_ref(), self.cfg.max_model_len);
            let finished = out.finished;
            if let Some(reason) = finished {
                out.kv_transfer = self.transfer_outcome(&id, reason);
                outputs.push(out);
                self.finish(&id, reason);
            } else {
                outputs.push(out);
            }
        }
        // Counters mirror the manager's running totals.
        let stats = self.kv.prefix_stats();
        let (queries, hits) = (stats.queries - self.import_stats.queries, stats.hits - self.import_stats.hits);
        let (q, h) = (&self.metrics.prefix_queries, &self.metrics.prefix_hits);
        q.inc_by(queries.saturating_sub(q.get()));
        h.inc_by(hits.saturating_sub(h.get()));
        self.update_gauges();
        Ok(outputs)
    }
}
