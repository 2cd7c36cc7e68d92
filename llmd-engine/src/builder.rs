//! Assembling an engine from a few choices: which model (the built-in one, a Hugging
//! Face checkpoint directory, or the simulator), the KV cache (blocks, block size,
//! dtype), and the batching limits. What `llmd serve`, `llmd up` and embedding programs
//! share, so they build engines the same way.
//!
//! ```
//! use llmd_engine::EngineBuilder;
//!
//! # fn main() -> Result<(), llmd_engine::EngineError> {
//! let built = EngineBuilder::builtin().num_blocks(64).max_model_len(512).build()?;
//! assert_eq!(built.engine.config().model_name, "llmd-tiny");
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::{Backend, ModelBackend};
use crate::builtin;
use crate::clock::{Clock, SystemClock};
use crate::engine::{Engine, EngineConfig};
use crate::error::{EngineError, Result};
use crate::kv::KvDtype;
use crate::model::{GenerationConfig, LlamaModel, ModelConfig};
use crate::offload::OffloadConfig;
use crate::sim::{LatencyModel, SimBackend};
use crate::tokenizer::{ByteTokenizer, ChatTemplate, DEFAULT_CHAT_TEMPLATE, HfTokenizer, PromptRenderer, Tokenize};

/// Name a simulated engine is served under by default.
pub const SIM_MODEL_NAME: &str = "llmd-sim";

/// Longest default context: a model's own limit, capped here.
const DEFAULT_MAX_MODEL_LEN: usize = 8192;

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// The built-in tiny Llama, its weights drawn from the builder's seed.
    Builtin,
    /// A Hugging Face checkpoint directory (`config.json`, safetensors,
    /// `tokenizer.json`, optionally a chat template and `generation_config.json`).
    Checkpoint(PathBuf),
    /// The simulator (byte tokenizer, latency model, no weights).
    Sim(LatencyModel),
    /// The simulator speaking a checkpoint's language: its tokenizer, chat template,
    /// generation defaults, vocabulary, context length and end-of-sequence tokens, read
    /// from the directory (`config.json`, `tokenizer.json`, …; weights are not read), with
    /// the latency model's compute. Load generators that count tokens with the
    /// checkpoint's tokenizer (inference-perf, aiperf) see the lengths they planned.
    SimCheckpoint(PathBuf, LatencyModel),
}

/// An engine with what serving it needs besides.
#[derive(Debug)]
pub struct BuiltEngine {
    /// The engine.
    pub engine: Engine,
    /// Its chat template.
    pub template: ChatTemplate,
    /// Sampling defaults from the checkpoint (empty for the built-in model and the
    /// simulator).
    pub generation: GenerationConfig,
}

/// Where the model runs (`--device`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU (the reference).
    #[default]
    Cpu,
    /// NVIDIA GPU `N` (feature `cuda`).
    Cuda(usize),
    /// AMD GPU `N` (feature `rocm`).
    Rocm(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0), `cuda:N`, `rocm` or `rocm:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let ordinal = |prefix: &str| s.strip_prefix(prefix).and_then(|n| n.parse().ok());
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "rocm" => Ok(Device::Rocm(0)),
            _ => ordinal("cuda:")
                .map(Device::Cuda)
                .or_else(|| ordinal("rocm:").map(Device::Rocm))
                .ok_or_else(|| format!("{s:?}: expected cpu, cuda, cuda:N, rocm or rocm:N")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Rocm(n) => write!(f, "rocm:{n}"),
        }
    }
}

/// Builds an [`Engine`]; see the [module docs](self).
#[derive(Clone)]
pub struct EngineBuilder {
    source: ModelSource,
    device: Device,
    gpu_memory_utilization: f64,
    served_model_name: Option<String>,
    block_size: usize,
    num_blocks: Option<usize>,
    kv_cache_bytes: usize,
    kv_dtype: KvDtype,
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    max_model_len: Option<usize>,
    enable_prefix_caching: bool,
    seed: u64,
    clock: Option<Arc<dyn Clock>>,
    offload: Option<OffloadConfig>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder").field("source", &self.source).finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// A builder for `source` with the defaults: 16-token blocks, as many blocks as
    /// 256 MiB holds (8192 for the simulator), f16 KV, 64 sequences and 2048 tokens per
    /// step, the model's context capped at 8192, prefix caching on, seed 0, the system
    /// clock.
    pub fn new(source: ModelSource) -> Self {
        let defaults = EngineConfig::default();
        EngineBuilder {
            source,
            device: Device::Cpu,
            gpu_memory_utilization: 0.9,
            served_model_name: None,
            block_size: defaults.block_size,
            num_blocks: None,
            kv_cache_bytes: 256 << 20,
            kv_dtype: defaults.kv_dtype,
            max_num_seqs: defaults.max_num_seqs,
            max_num_batched_tokens: defaults.max_num_batched_tokens,
            max_model_len: None,
            enable_prefix_caching: defaults.enable_prefix_caching,
            seed: 0,
            clock: None,
            offload: None,
        }
    }

    /// The built-in model.
    pub fn builtin() -> Self {
        Self::new(ModelSource::Builtin)
    }

    /// A checkpoint directory.
    pub fn checkpoint(dir: impl Into<PathBuf>) -> Self {
        Self::new(ModelSource::Checkpoint(dir.into()))
    }

    /// The simulator with `latency`.
    pub fn sim(latency: LatencyModel) -> Self {
        Self::new(ModelSource::Sim(latency))
    }

    /// The simulator with `latency`, speaking the checkpoint in `dir`'s tokenizer
    /// ([`ModelSource::SimCheckpoint`]).
    pub fn sim_checkpoint(dir: impl Into<PathBuf>, latency: LatencyModel) -> Self {
        Self::new(ModelSource::SimCheckpoint(dir.into(), latency))
    }

    /// Name clients use in the `model` field (default: the checkpoint directory's name,
    /// `llmd-tiny` or `llmd-sim`).
    pub fn served_model_name(mut self, name: impl Into<String>) -> Self {
        self.served_model_name = Some(name.into());
        self
    }

    /// Where the model runs (default: the CPU).
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// On a GPU, the share of its memory this engine may take for weights and KV
    /// cache (vLLM's `--gpu-memory-utilization`, default 0.9); the KV cache gets what
    /// the weights leave when no block count is given.
    pub fn gpu_memory_utilization(mut self, share: f64) -> Self {
        self.gpu_memory_utilization = share;
        self
    }

    /// Tokens per KV block.
    pub fn block_size(mut self, n: usize) -> Self {
        self.block_size = n;
        self
    }

    /// KV blocks (overrides [`kv_cache_bytes`](Self::kv_cache_bytes)).
    pub fn num_blocks(mut self, n: usize) -> Self {
        self.num_blocks = Some(n);
        self
    }

    /// KV cache memory budget, used to size the cache when no block count is given.
    pub fn kv_cache_bytes(mut self, bytes: usize) -> Self {
        self.kv_cache_bytes = bytes;
        self
    }

    /// KV cache element type.
    pub fn kv_dtype(mut self, dtype: KvDtype) -> Self {
        self.kv_dtype = dtype;
        self
    }

    /// Most requests per batch.
    pub fn max_num_seqs(mut self, n: usize) -> Self {
        self.max_num_seqs = n;
        self
    }

    /// Most tokens per step (the chunked prefill budget).
    pub fn max_num_batched_tokens(mut self, n: usize) -> Self {
        self.max_num_batched_tokens = n;
        self
    }

    /// Longest prompt + output.
    pub fn max_model_len(mut self, n: usize) -> Self {
        self.max_model_len = Some(n);
        self
    }

    /// Reuse cached prefixes (on by default).
    pub fn enable_prefix_caching(mut self, on: bool) -> Self {
        self.enable_prefix_caching = on;
        self
    }

    /// Seed of the built-in weights, of the simulator's tokens, and of requests that
    /// bring none.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The clock (default: the system clock); a manual one makes the simulator run on
    /// virtual time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// KV offloading to host memory (and below), as vLLM's
    /// `--kv-offloading-size` / OffloadingConnector.
    pub fn offload(mut self, cfg: OffloadConfig) -> Self {
        self.offload = Some(cfg);
        self
    }

    /// Loads the model and assembles the engine.
    pub fn build(self) -> Result<BuiltEngine> {
        let clock = self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock::default()));
        let byte_template = || ChatTemplate::new(DEFAULT_CHAT_TEMPLATE, "<s>", "</s>");
        // A simulated GGUF's shape, read with its tokenizer (one pass over the file).
        let mut gguf_shape = None;
        let (model, tokenizer, template, generation, name): (
            Option<LlamaModel>,
            Arc<dyn Tokenize>,
            ChatTemplate,
            GenerationConfig,
            String,
        ) = match &self.source {
            ModelSource::Builtin => (
                Some(builtin::model(self.seed)?),
                Arc::new(ByteTokenizer),
                byte_template(),
                GenerationConfig::default(),
                builtin::BUILTIN_MODEL_NAME.into(),
            ),
            ModelSource::Sim(_) => {
                (None, Arc::new(ByteTokenizer), byte_template(), GenerationConfig::default(), SIM_MODEL_NAME.into())
            }
            ModelSource::SimCheckpoint(file, _) if is_gguf(file) => {
                let f = crate::gguf::GgufFile::open(file)?;
                gguf_shape = Some(crate::model::gguf::config_from_gguf(&f)?);
                let (tokenizer, template) = renderer_of(&crate::gguf::tokenizer::from_gguf(&f)?)?;
                (None, tokenizer, template, GenerationConfig::default(), served_name(file))
            }
            ModelSource::SimCheckpoint(dir, _) => {
                let r = PromptRenderer::from_dir(dir)?;
                (None, r.tokenizer, r.template, GenerationConfig::from_dir(dir)?, served_name(dir))
            }
            ModelSource::Checkpoint(file) if is_gguf(file) => {
                tracing::info!(file = %file.display(), "loading GGUF model");
                let (model, tok) = LlamaModel::load_gguf(file)?;
                let (tokenizer, template) = renderer_of(&tok)?;
                (Some(model), tokenizer, template, GenerationConfig::default(), served_name(file))
            }
            ModelSource::Checkpoint(dir) => {
                tracing::info!(dir = %dir.display(), "loading checkpoint");
                let model = LlamaModel::load(dir)?;
                let r = PromptRenderer::from_dir(dir)?;
                (Some(model), r.tokenizer, r.template, GenerationConfig::from_dir(dir)?, served_name(dir))
            }
        };
        // The checkpoint's shape without its weights, for the simulator.
        let sim_shape = match &self.source {
            ModelSource::SimCheckpoint(file, _) if is_gguf(file) => gguf_shape,
            ModelSource::SimCheckpoint(dir, _) => Some(ModelConfig::from_dir(dir)?),
            _ => None,
        };
        let (mut eos, max_ctx) = match (&model, &sim_shape) {
            (Some(m), _) => (m.config().eos_token_ids.clone(), m.config().max_position_embeddings),
            (None, Some(c)) => (c.eos_token_ids.clone(), c.max_position_embeddings),
            (None, None) => (vec![ByteTokenizer::EOS], DEFAULT_MAX_MODEL_LEN),
        };
        for id in &generation.eos_token_ids {
            if !eos.contains(id) {
                eos.push(*id);
            }
        }
        let max_model_len = self.max_model_len.unwrap_or(max_ctx.min(DEFAULT_MAX_MODEL_LEN));
        if self.device != Device::Cpu {
            let Some(m) = model else {
                return Err(EngineError::config("engine", "device", "the simulator runs on the CPU only"));
            };
            let (backend, num_blocks) = gpu_backend(&m, self.device, &self)?;
            return self.assemble(
                backend,
                num_blocks,
                max_model_len,
                tokenizer,
                eos,
                clock,
                name,
                template,
                generation,
            );
        }
        let num_blocks = match (self.num_blocks, &model) {
            (Some(n), _) => n,
            (None, Some(m)) => {
                self.kv_cache_bytes / ModelBackend::kv_bytes(m, 1, self.block_size, self.kv_dtype).max(1)
            }
            // The simulator holds no KV memory; size it like a mid-sized accelerator.
            (None, None) => 8192,
        };
        if self.block_size == 0 {
            return Err(EngineError::config("engine", "block_size", "must be positive"));
        }
        let backend: Box<dyn Backend> = match (model, &self.source) {
            (Some(m), _) => Box::new(ModelBackend::new(m, num_blocks, self.block_size, self.kv_dtype)?),
            (None, ModelSource::Sim(latency)) => Box::new(
                SimBackend::new(*latency, clock.clone(), ByteTokenizer::VOCAB, max_ctx, 32..127, self.seed)
                    .with_block_size(self.block_size),
            ),
            (None, ModelSource::SimCheckpoint(_, latency)) => {
                let vocab = sim_shape.as_ref().map_or(tokenizer.vocab_size(), |c| c.vocab_size).max(2);
                // Ordinary tokens: past the low ids (bytes, specials in most vocabularies)
                // and short of the end, where added special tokens usually sit.
                let tokens = (vocab / 16) as u32..(vocab * 3 / 4).max(vocab / 16 + 1) as u32;
                let mut sim = SimBackend::new(*latency, clock.clone(), vocab, max_ctx, tokens, self.seed)
                    .with_block_size(self.block_size);
                // What the checkpoint's K/V would take in bf16, for offloading's capacities.
                if let Some(c) = &sim_shape {
                    sim = sim.with_kv_bytes_per_token(c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 2);
                }
                Box::new(sim)
            }
            (None, _) => return Err(EngineError::config("engine", "model", "no model to run")),
        };
        self.assemble(backend, num_blocks, max_model_len, tokenizer, eos, clock, name, template, generation)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        self,
        backend: Box<dyn Backend>,
        num_blocks: usize,
        max_model_len: usize,
        tokenizer: Arc<dyn Tokenize>,
        eos: Vec<u32>,
        clock: Arc<dyn Clock>,
        name: String,
        template: ChatTemplate,
        generation: GenerationConfig,
    ) -> Result<BuiltEngine> {
        let cfg = EngineConfig {
            model_name: self.served_model_name.unwrap_or(name),
            block_size: self.block_size,
            num_blocks,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len,
            enable_prefix_caching: self.enable_prefix_caching,
            kv_dtype: self.kv_dtype,
            seed: self.seed,
            ..Default::default()
        };
        let mut engine = Engine::new(cfg, backend, tokenizer, eos, clock)?;
        if let Some(o) = &self.offload {
            engine.enable_offload(o)?;
        }
        Ok(BuiltEngine { engine, template, generation })
    }
}

/// The model on GPU `device`, with as many KV blocks as asked or as the memory share
/// leaves after the weights.
fn gpu_backend(m: &LlamaModel, device: Device, b: &EngineBuilder) -> Result<(Box<dyn Backend>, usize)> {
    #[cfg(not(any(feature = "cuda", feature = "rocm")))]
    let _ = (m, b);
    match device {
        Device::Cpu => Err(EngineError::Device("the CPU is not a GPU".into())),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => gpu_backend_on::<crate::cuda::Cuda>(m, n, b, crate::cuda::probe),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err(EngineError::Device(
            "this llmd was built without CUDA support: rebuild it with `--features cuda`".into(),
        )),
        #[cfg(feature = "rocm")]
        Device::Rocm(n) => gpu_backend_on::<crate::rocm::Rocm>(m, n, b, crate::rocm::probe),
        #[cfg(not(feature = "rocm"))]
        Device::Rocm(_) => Err(EngineError::Device(
            "this llmd was built without ROCm support: rebuild it with `--features rocm`".into(),
        )),
    }
}

#[cfg(any(feature = "cuda", feature = "rocm"))]
fn gpu_backend_on<A: crate::gpu::GpuApi>(
    m: &LlamaModel,
    ordinal: usize,
    b: &EngineBuilder,
    probe: fn(usize) -> Result<crate::gpu::DeviceInfo>,
) -> Result<(Box<dyn Backend>, usize)> {
    use crate::gpu::GpuBackend;
    if !(b.gpu_memory_utilization > 0.0 && b.gpu_memory_utilization <= 1.0) {
        return Err(EngineError::config(
            "engine",
            "gpu_memory_utilization",
            format!("{} is not in (0, 1]", b.gpu_memory_utilization),
        ));
    }
    let num_blocks = match b.num_blocks {
        Some(n) => n,
        None => {
            let info = probe(ordinal)?;
            let c = m.config();
            let per_block = c.num_hidden_layers * 2 * b.block_size * c.num_key_value_heads * c.head_dim * 2;
            let weights = GpuBackend::<A>::weight_bytes(m);
            // Room for activations, the BLAS workspace and the context: 5 %, at least 512 MiB.
            let reserve = (info.total_memory / 20).max(512 << 20);
            let share = (info.total_memory as f64 * b.gpu_memory_utilization) as usize;
            let used_elsewhere = info.total_memory.saturating_sub(info.free_memory);
            let kv = share.saturating_sub(used_elsewhere).saturating_sub(weights).saturating_sub(reserve);
            let blocks = kv / per_block.max(1);
            if blocks == 0 {
                return Err(EngineError::Device(format!(
                    "no GPU memory left for the KV cache: {} GiB × {} leaves nothing after {} GiB of weights \
                     ({} GiB used by others); raise --gpu-memory-utilization or use a smaller model",
                    info.total_memory >> 30,
                    b.gpu_memory_utilization,
                    weights >> 30,
                    used_elsewhere >> 30
                )));
            }
            tracing::info!(vendor = A::VENDOR, device = %info.name, blocks, kv_gib = (blocks * per_block) as f64 / (1u64 << 30) as f64, "KV cache sized from GPU memory");
            blocks
        }
    };
    let backend = GpuBackend::<A>::new(m, ordinal, num_blocks, b.block_size, b.kv_dtype)?;
    Ok((Box::new(backend), num_blocks))
}

/// A GGUF file rather than a checkpoint directory: a path named `*.gguf` (one that
/// does not exist then fails as a missing file, not as a directory without
/// `config.json`).
pub fn is_gguf(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The name a checkpoint is served under: its directory's name, or a GGUF file's stem.
fn served_name(path: &std::path::Path) -> String {
    let n = if is_gguf(path) { path.file_stem() } else { path.file_name() };
    n.map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
}

/// The tokenizer and chat template a GGUF file's metadata describes.
fn renderer_of(tok: &crate::gguf::tokenizer::GgufTokenizer) -> Result<(Arc<dyn Tokenize>, ChatTemplate)> {
    let template = match &tok.chat_template {
        Some(t) => ChatTemplate::new(
            t.clone(),
            tok.bos.clone().unwrap_or_default(),
            tok.eos.as_ref().map(|e| e.1.clone()).unwrap_or_default(),
        ),
        None => ChatTemplate::fallback(),
    };
    Ok((Arc::new(HfTokenizer::from_bytes(tok.json.as_bytes())?), template))
}
