//! The `llmd` reference binary.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

mod autoscale_cmd;
mod epp;
mod manifests_cmd;
mod sidecar_cmd;

/// Kubernetes-native distributed LLM inference.
#[derive(Parser, Debug)]
#[command(name = "llmd", version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. `info` or `llmd_scheduler=debug` (overrides RUST_LOG).
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Everything on one machine: engine replicas plus the gateway on one
    /// OpenAI-compatible port.
    Up(UpArgs),
    /// One engine (model server).
    Serve(ServeArgs),
    /// The endpoint picker: Envoy ext-proc gRPC and/or an HTTP gateway.
    Epp(Box<epp::EppArgs>),
    /// The prefill/decode routing sidecar beside a decode engine.
    Sidecar(sidecar_cmd::SidecarArgs),
    /// The SLO-aware autoscaler.
    Autoscale(autoscale_cmd::AutoscaleArgs),
    /// Run a named benchmark scenario against a URL or a fresh `up`.
    Bench(BenchArgs),
    /// KV-cache tools: block hashes and KV event decoding.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Kubernetes: manifests for a deployment with `llmd epp` as its endpoint picker.
    #[command(subcommand)]
    K8s(K8sCommand),
    /// Write the built-in model's tokenizer (`tokenizer.json`, `tokenizer_config.json`)
    /// into DIR, for Hugging Face-based tools such as inference-perf and aiperf.
    ExportTokenizer {
        /// Directory to write (created if missing).
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Number of engine replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Address the gateway binds.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Gateway port (the one OpenAI-compatible endpoint).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Built-in routing (see BENCHMARKS.md for how they compare).
    #[arg(long, default_value = "prefix", value_parser = clap::builder::PossibleValuesParser::new(llmd::scheduler::presets::PRESETS))]
    routing: String,
    /// An EndpointPickerConfig file instead of a built-in routing.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prefill/decode disaggregation, `P:D` (e.g. `2:1`): P prefill and D decode
    /// replicas (instead of --replicas), a routing sidecar per decode replica, KV moved
    /// between them, and llm-d's P/D routing (or --config).
    #[arg(long, value_parser = parse_pd, conflicts_with = "replicas")]
    pd: Option<(usize, usize)>,
    /// Autoscale between MIN and MAX replicas, `MIN:MAX` (e.g. `1:8`), starting from
    /// --replicas (kept within them, at least 1): every --autoscale-interval the
    /// autoscaler reads the replicas' metrics, adds replicas or drains them (a drained
    /// replica finishes what it holds). MIN 0 scales to zero after
    /// --scale-to-zero-after idle seconds, with the picker's flow control on to hold
    /// requests until a replica is back. Not with --pd.
    #[arg(long, value_parser = parse_autoscale, conflicts_with = "pd")]
    autoscale: Option<(u32, u32)>,
    /// The autoscaling policy: saturation (llm-d WVA's, with its defaults), threshold
    /// (HPA's rule on KV usage and waiting requests) or model (model-based: profiles
    /// fitted from the replicas' latency histograms, mean TTFT 500 ms and ITL 50 ms
    /// objectives).
    #[arg(long, default_value = "saturation", value_parser = ["saturation", "threshold", "model"])]
    autoscale_policy: String,
    /// With `--autoscale 0:N`: idle seconds before the last replica goes.
    #[arg(long, default_value_t = 300.0)]
    scale_to_zero_after: f64,
    /// Seconds of recommendations a scale-down takes the highest of (HPA's
    /// `behavior.scaleDown.stabilizationWindowSeconds`, 300 by default).
    #[arg(long, default_value_t = 300.0)]
    autoscale_down_window: f64,
    /// Seconds between autoscaling decisions.
    #[arg(long, default_value_t = 15.0)]
    autoscale_interval: f64,
    #[command(flatten)]
    gateway: GatewayArgs,

    #[command(flatten)]
    engine: EngineArgs,
}

/// `P:D`, both at least 1.
fn parse_pd(s: &str) -> std::result::Result<(usize, usize), String> {
    let (p, d) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected P:D, e.g. 1:1"))?;
    let n = |x: &str| x.trim().parse::<usize>().ok().filter(|&n| n > 0);
    match (n(p), n(d)) {
        (Some(p), Some(d)) => Ok((p, d)),
        _ => Err(format!("{s:?}: P and D must be positive counts, e.g. 2:1")),
    }
}

fn parse_autoscale(s: &str) -> std::result::Result<(u32, u32), String> {
    let (lo, hi) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected MIN:MAX, e.g. 1:8"))?;
    let n = |x: &str| x.trim().parse::<u32>().ok();
    match (n(lo), n(hi)) {
        (Some(lo), Some(hi)) if hi >= 1 && lo <= hi => Ok((lo, hi)),
        _ => Err(format!("{s:?}: expected MIN <= MAX with MAX at least 1, e.g. 1:8 or 0:4")),
    }
}

/// A renderer whose tokenizer caches by text prefix (routing only needs the ids).
fn cached_renderer(mut r: llmd::openai::PromptRenderer) -> llmd::openai::PromptRenderer {
    r.tokenizer = std::sync::Arc::new(llmd::scheduler::tokencache::PrefixCachedTokenizer::new(r.tokenizer));
    r
}

/// The address a cluster-facing listener binds when the user gave none: in a pod
/// (`KUBERNETES_SERVICE_HOST` set) and `in_cluster_mode`, the pod's own network
/// (`$POD_IP`, else every interface of the pod's network namespace, which holds only
/// its own); otherwise loopback.
fn default_host(in_cluster_mode: bool) -> String {
    if in_cluster_mode && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return std::env::var("POD_IP").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "0.0.0.0".into());
    }
    "127.0.0.1".into()
}

/// Parses seconds, fractions allowed (`0.5`).
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("{s:?} is not a usable number of seconds"))
}

/// The gateway's exposure, key, timeouts, retries and endpoint health (`up` and `epp`).
#[derive(Args, Debug, Clone)]
struct GatewayArgs {
    /// Tell clients which endpoint served them (`x-gateway-destination-endpoint` on
    /// responses); off by default, as it shows internal addresses.
    #[arg(long)]
    expose_destination: bool,
    /// Require `Authorization: Bearer <KEY>` on the OpenAI API (vLLM's `--api-key`;
    /// also read from VLLM_API_KEY). /health and /metrics stay open.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Attempts per request, the first included: a refused connection, a 429 or an
    /// endpoint silent past --first-byte-timeout moves the request to another endpoint.
    #[arg(long, default_value_t = 3)]
    max_attempts: usize,
    /// Seconds to connect to an endpoint.
    #[arg(long, default_value = "5", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds for an endpoint to send response headers (streams send them at once;
    /// for other replies the endpoint's /health then decides whether to wait on).
    #[arg(long, default_value = "30", value_parser = seconds)]
    first_byte_timeout: Duration,
    /// Seconds a live endpoint may take to start a non-stream reply (then 504).
    #[arg(long, default_value = "300", value_parser = seconds)]
    response_timeout: Duration,
    /// Seconds of silence between stream chunks before the stream ends with an error
    /// event.
    #[arg(long, default_value = "60", value_parser = seconds)]
    stream_idle_timeout: Duration,
    /// Seconds between active checks of each endpoint's /health (0: none).
    #[arg(long, default_value = "5", value_parser = seconds)]
    health_check_interval: Duration,
    /// Failed attempts in a row that eject an endpoint from picks for a while (0: never).
    #[arg(long, default_value_t = 3)]
    eject_after_failures: u32,
    /// Copy a prefix that draws more than its share of traffic onto another endpoint
    /// with room for it, by a one-token warm-up request, before its holders queue.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hot_prefix_replication: bool,
}

impl GatewayArgs {
    fn gateway(&self) -> llmd::scheduler::gateway::GatewayConfig {
        llmd::scheduler::gateway::GatewayConfig {
            max_attempts: self.max_attempts.max(1),
            connect_timeout: self.connect_timeout,
            first_byte_timeout: self.first_byte_timeout,
            response_timeout: self.response_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            expose_destination: self.expose_destination,
            api_key: self.api_key.clone(),
        }
    }

    fn picker(&self) -> llmd::scheduler::picker::PickerConfig {
        let mut p = llmd::scheduler::picker::PickerConfig::default();
        p.health.check_interval = (!self.health_check_interval.is_zero()).then_some(self.health_check_interval);
        p.health.consecutive_failures = self.eject_after_failures;
        if !self.hot_prefix_replication {
            p.replication = None;
        }
        p
    }
}

/// Engine settings shared by `serve` and `up`.
#[derive(Args, Debug, Clone)]
struct EngineArgs {
    /// Seconds to let requests in flight finish after SIGTERM or Ctrl-C (a second
    /// signal exits at once).
    #[arg(long, default_value_t = 25)]
    shutdown_timeout: u64,
    /// The model: a Hugging Face checkpoint directory, a GGUF file, or a Hugging Face id
    /// (`ORG/NAME[@REVISION]`, resolved through the Hugging Face cache: `HF_HOME`,
    /// `HF_HUB_CACHE`, `HF_HUB_OFFLINE`) (default: the built-in tiny model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Name clients use in the `model` field (default: the directory name, or llmd-tiny).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Simulate the model: real scheduling, blocks, metrics and events; compute replaced
    /// by a latency model. With --model DIR, the checkpoint's tokenizer, chat template
    /// and context length (its weights are not read).
    #[arg(long)]
    sim: bool,
    /// The simulator's costs, e.g. `step=9.3ms,prefill=33.5us,decode=10.7us,context=42ns`
    /// (keys left out keep the default: Llama-3.1-8B on one H100, see BENCHMARKS.md).
    #[arg(long, requires = "sim")]
    sim_latency: Option<llmd::engine::LatencyModel>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV blocks per replica (default: as many as --kv-cache-mib holds).
    #[arg(long)]
    num_blocks: Option<usize>,
    /// KV cache memory budget per replica in MiB, used when --num-blocks is not given.
    #[arg(long, default_value_t = 256)]
    kv_cache_mib: usize,
    /// KV cache element type: f32, f16 or bf16 (on a GPU, also the weights' type; f16
    /// or bf16 there).
    #[arg(long, default_value = "f16")]
    kv_cache_dtype: String,
    /// Where the model runs: cpu, cuda or cuda:N (an NVIDIA GPU; needs an llmd built with
    /// `--features cuda` and an NVIDIA driver), rocm or rocm:N (an AMD GPU; `--features
    /// rocm` and ROCm).
    #[arg(long, default_value = "cpu")]
    device: llmd::engine::Device,
    /// On a GPU, the share of its memory for weights and KV cache (vLLM's flag); the KV
    /// cache gets what the weights leave unless --num-blocks is given. `up` divides it
    /// among the replicas sharing the device.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// Most requests per batch.
    #[arg(long, default_value_t = 64)]
    max_num_seqs: usize,
    /// Most tokens per step (chunked prefill budget).
    #[arg(long, default_value_t = 2048)]
    max_num_batched_tokens: usize,
    /// Longest prompt + output (default: the model's limit, capped at 8192).
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Turn prefix caching off.
    #[arg(long)]
    no_enable_prefix_caching: bool,
    /// Seed for built-in weights and for requests without a seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Host memory for KV blocks evicted from the engine's cache, in GiB (vLLM's flag):
    /// a later prompt with that prefix gets them copied back instead of computed.
    #[arg(long)]
    kv_offloading_size: Option<f64>,
    /// What offloads (vLLM's flag): `native` (llmd's own host-memory tier).
    #[arg(long, default_value = "native", requires = "kv_offloading_size")]
    kv_offloading_backend: String,
    /// A directory for a disk tier below host memory (llmd's shorthand for vLLM's
    /// `secondary_tiers: [{"type": "fs", "root_dir": DIR}]`); replicas pointed at the
    /// same directory share what they write.
    #[arg(long, requires = "kv_offloading_size")]
    kv_offloading_dir: Option<PathBuf>,
}

impl EngineArgs {
    fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }

    /// KV offloading from the flags, or from vLLM's OffloadingConnector JSON.
    fn offload(&self, connector_json: Option<&str>) -> Result<Option<llmd::engine::offload::OffloadConfig>> {
        use llmd::engine::offload::{OffloadConfig, SecondaryTier};

        let mut cfg = match (self.kv_offloading_size, connector_json) {
            (Some(_), Some(_)) => {
                bail!(
                    "--kv-offloading-size and an OffloadingConnector --kv-transfer-config both configure offloading; give one"
                )
            }
            (None, None) => return Ok(None),
            (None, Some(json)) => OffloadConfig::from_vllm_json(json)?,
            (Some(gib), None) => {
                if self.kv_offloading_backend != "native" {
                    bail!(
                        "--kv-offloading-backend {:?}: llmd offloads natively only (native)",
                        self.kv_offloading_backend
                    );
                }
                OffloadConfig::from_size_gib(gib)?
            }
        };
        if let Some(dir) = &self.kv_offloading_dir {
            cfg.secondary.push(SecondaryTier::Fs {
                root_dir: dir.display().to_string(),
                read_threads: 16,
                write_threads: 16,
                max_bytes: None,
                medium: None,
            });
        }
        Ok(Some(cfg))
    }
}

/// Whether vLLM's `--kv-transfer-config` JSON names the OffloadingConnector (else it is
/// a P/D connector).
fn is_offloading_connector(json: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("kv_connector")?.as_str().map(|c| c == "OffloadingConnector"))
        .unwrap_or(false)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    Prefill,
    Decode,
    Both,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Disaggregation role: `prefill` or `decode` turn KV transfer on (NixlConnector's
    /// `kv_transfer_params`, as --kv-transfer-config '{"kv_connector":"NixlConnector"}');
    /// as in vLLM, either engine can do both, and the router's sidecar picks the legs.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    role: Role,
    /// vLLM's KV transfer config as JSON, e.g.
    /// '{"kv_connector":"NixlConnector","kv_role":"kv_both","kv_load_failure_policy":"recompute"}'
    /// (llmd's default policy is recompute; extra config keys: kv_lease_duration,
    /// max_held_bytes, streams, io_timeout).
    #[arg(long)]
    kv_transfer_config: Option<String>,
    /// Where held KV blocks are served to decode engines (vLLM's env of the same name;
    /// default: --host). Advertised to decoders in the prefill answer.
    #[arg(long, env = "VLLM_NIXL_SIDE_CHANNEL_HOST")]
    side_channel_host: Option<String>,
    /// Port of the side channel (0: any free port).
    #[arg(long, env = "VLLM_NIXL_SIDE_CHANNEL_PORT", default_value_t = 5600)]
    side_channel_port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// HTTP port.
    #[arg(long, default_value_t = 8001)]
    port: u16,
    /// ZMQ endpoint to publish KV events on, e.g. `tcp://127.0.0.1:5557` (`*` for every
    /// interface, as vLLM's `tcp://*:5557`). Default: --host at a free port, advertised
    /// in /metrics (`llmd:kv_events_info`), where `llmd epp` finds it.
    #[arg(long)]
    kv_events_endpoint: Option<String>,
    /// Topic frame of KV event messages.
    #[arg(long, default_value = "")]
    kv_events_topic: String,
    /// Do not publish KV events.
    #[arg(long)]
    no_kv_events: bool,
    /// Require `Authorization: Bearer <KEY>` on the OpenAI API (vLLM's `--api-key`;
    /// also read from VLLM_API_KEY). /health and /metrics stay open.
    #[arg(long, env = "VLLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Scenario names (files in benches/scenarios/) or paths to scenario YAMLs, comma
    /// separated; `all` runs every scenario but `smoke`.
    #[arg(required = true, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Benchmark this OpenAI-compatible URL instead of starting local clusters.
    #[arg(long)]
    url: Option<String>,
    /// Model name to send (default: the first one the server's /v1/models lists).
    #[arg(long)]
    model: Option<String>,
    /// With --url: the routing's name in reports (default "external").
    #[arg(long, requires = "url")]
    label: Option<String>,
    /// Routings to compare, comma separated (each gets its own fresh cluster): the
    /// presets, and `pd` (prefill/decode disaggregation as `llmd up --pd`, the replicas
    /// split in half) or `pd:P:D`.
    #[arg(long, value_delimiter = ',', default_value = "round-robin,load,prefix,precise-prefix")]
    routing: Vec<String>,
    /// Also compare this EndpointPickerConfig.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Load generators, comma separated: builtin, inference-perf, aiperf (programs from
    /// LLMD_INFERENCE_PERF / LLMD_AIPERF or PATH; `scripts/loadgen/setup.sh` installs them).
    #[arg(long, value_delimiter = ',', default_value = "builtin")]
    driver: Vec<String>,
    /// Hugging Face tokenizer directory for inference-perf/aiperf (default: the built-in
    /// model's, when the served model is llmd's own).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Replicas per cluster.
    #[arg(long, default_value_t = 8)]
    replicas: usize,
    /// Simulated replicas (default: the built-in model on the CPU).
    #[arg(long)]
    sim: bool,
    /// The simulator's costs (see `llmd up --help`), for sensitivity runs.
    #[arg(long, requires = "sim")]
    sim_latency: Option<llmd::engine::LatencyModel>,
    /// KV-cache blocks per replica (default: the scenario's, else 8192 simulated, 2048 built-in).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// Hot-prefix replication in the started clusters' gateways (as `up`'s flag).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    hot_prefix_replication: bool,
    /// Replace the scenario's rates (comma separated, requests/s).
    #[arg(long, value_delimiter = ',')]
    rate: Vec<f64>,
    /// Replace the scenario's request count.
    #[arg(long)]
    requests: Option<usize>,
    /// Output directory for NAME.json, NAME.md, NAME.svg and results.md.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum K8sCommand {
    /// Print the objects (InferencePool, model servers as Deployments or
    /// LeaderWorkerSets, the picker's Deployment, Service, RBAC and config) as YAML for
    /// `kubectl apply -f -`.
    Manifests(manifests_cmd::ManifestArgs),
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// Print vLLM-compatible block hashes for token ids.
    Hash(HashArgs),
    /// Decode a msgpack KV event batch (from a file or stdin) and print it.
    DecodeEvents {
        /// File holding one batch's bytes; `-` for stdin.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct HashArgs {
    /// Token ids, comma or space separated.
    #[arg(required = true, num_args = 1.., value_delimiter = ',')]
    tokens: Vec<String>,
    /// Tokens per block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// `sha256_cbor` or `xxhash_cbor`.
    #[arg(long, default_value = "sha256_cbor")]
    algo: String,
    /// The engine's PYTHONHASHSEED (default: vLLM's fixed seed; required for xxhash_cbor).
    #[arg(long, env = "PYTHONHASHSEED")]
    seed: Option<String>,
    /// Print the 64-bit event form (VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES).
    #[arg(long)]
    int: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = cli.log.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log filter")?)
        .with_writer(std::io::stderr)
        .init();
    // Every connection (served or made) is a descriptor; the usual 1 024 is a few hundred clients.
    llmd::openai::http::raise_fd_limit();
    // One TLS provider for every client and server (kube, scraping, serving): rustls
    // cannot choose one itself when dependencies enable two (hf-hub's ureq brings ring).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    match cli.command {
        Command::Kv(KvCommand::Hash(a)) => kv_hash(a),
        Command::Kv(KvCommand::DecodeEvents { file }) => kv_decode(file),
        Command::K8s(K8sCommand::Manifests(a)) => manifests_cmd::manifests(a),
        Command::Up(a) => up(a),
        Command::Serve(a) => serve(a),
        Command::Epp(a) => epp::epp(*a),
        Command::Sidecar(a) => sidecar_cmd::sidecar(a),
        Command::Autoscale(a) => autoscale_cmd::autoscale(a),
        Command::Bench(a) => bench(a),
        Command::ExportTokenizer { dir } => {
            llmd::engine::ByteTokenizer::write_hf_files(&dir)?;
            println!("{}", dir.display());
            Ok(())
        }
    }
}

fn kv_hash(a: HashArgs) -> Result<()> {
    use llmd::kvcache::{BlockHasher, HashAlgo};
    let algo: HashAlgo = a.algo.parse()?;
    let tokens = a
        .tokens
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(|t| t.parse::<u32>().with_context(|| format!("token id {t:?} is not a 32-bit unsigned integer")))
        .collect::<Result<Vec<_>>>()?;
    let hasher = match (&a.seed, algo.is_cryptographic()) {
        (Some(seed), _) => BlockHasher::new(algo, seed),
        (None, true) => BlockHasher::default(),
        (None, false) => bail!("{algo} needs --seed (vLLM seeds it randomly per process unless PYTHONHASHSEED is set)"),
    };
    let hashes = hasher.hash_tokens(&tokens, a.block_size)?;
    println!("# algo={algo} seed={:?} block_size={} none_hash={}", hasher.seed(), a.block_size, hasher.none_hash());
    for (i, h) in hashes.iter().enumerate() {
        if a.int {
            println!("{i}\t{}", h.to_u64());
        } else {
            println!("{i}\t{h}");
        }
    }
    if hashes.len() * a.block_size < tokens.len() {
        println!(
            "# {} trailing tokens do not fill a block and have no hash",
            tokens.len() - hashes.len() * a.block_size
        );
    }
    Ok(())
}

fn kv_decode(file: PathBuf) -> Result<()> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
    } else {
        bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    }
    let batch = llmd::kvcache::codec::decode_batch(&bytes)?;
    println!("{batch:#?}");
    Ok(())
}

/// An engine built from the command line, and what serving it needs.
struct Built {
    engine: llmd::engine::Engine,
    template: llmd::engine::ChatTemplate,
    generation: llmd::engine::GenerationConfig,
}

/// `--model ORG/NAME[@REVISION]`: resolved once to its snapshot in the Hugging Face
/// cache (downloaded there unless `HF_HUB_OFFLINE` is set; no weights for `--sim`), and
/// served under the id unless `--served-model-name` says otherwise.
fn resolve_model_id(a: &mut EngineArgs) -> Result<()> {
    use llmd::engine::hub::{HubOptions, is_model_id, resolve};
    let Some(m) = a.model.as_ref().filter(|m| is_model_id(m)) else { return Ok(()) };
    let id = m.to_string_lossy().into_owned();
    let opts = HubOptions::from_env();
    tracing::info!(%id, cache = %opts.cache.display(), offline = opts.offline, "resolving a Hugging Face model id");
    let dir = resolve(&id, &opts, !a.sim)?;
    let name = id.split_once('@').map_or(id.as_str(), |(n, _)| n).to_string();
    a.served_model_name.get_or_insert(name);
    a.model = Some(dir);
    Ok(())
}

fn build_engine(
    a: &EngineArgs,
    offload: Option<&llmd::engine::offload::OffloadConfig>,
    gpu_share: f64,
) -> Result<Built> {
    use llmd::engine::{EngineBuilder, KvDtype};

    let kv_dtype: KvDtype = a.kv_cache_dtype.parse().map_err(anyhow::Error::msg)?;
    let builder = match (&a.model, a.sim) {
        (Some(dir), true) => EngineBuilder::sim_checkpoint(dir, a.sim_latency.unwrap_or_default()),
        (None, false) => EngineBuilder::builtin(),
        (None, true) => EngineBuilder::sim(a.sim_latency.unwrap_or_default()),
        (Some(dir), false) => EngineBuilder::checkpoint(dir),
    };
    let mut builder = builder
        .block_size(a.block_size)
        .kv_cache_bytes(a.kv_cache_mib << 20)
        .kv_dtype(kv_dtype)
        .max_num_seqs(a.max_num_seqs)
        .max_num_batched_tokens(a.max_num_batched_tokens)
        .enable_prefix_caching(!a.no_enable_prefix_caching)
        .seed(a.seed)
        .device(a.device)
        .gpu_memory_utilization(gpu_share);
    if let Some(name) = &a.served_model_name {
        builder = builder.served_model_name(name.clone());
    }
    if let Some(n) = a.num_blocks {
        builder = builder.num_blocks(n);
    }
    if let Some(n) = a.max_model_len {
        builder = builder.max_model_len(n);
    }
    if let Some(o) = offload {
        builder = builder.offload(o.clone());
    }
    let built = match &a.model {
        Some(dir) => builder.build().with_context(|| format!("loading {}", dir.display()))?,
        None => builder.build()?,
    };
    Ok(Built { engine: built.engine, template: built.template, generation: built.generation })
}

fn serve(mut a: ServeArgs) -> Result<()> {
    resolve_model_id(&mut a.engine)?;
    use llmd::engine::server::{KvEventsConfig, KvTransferConfig, ServeConfig, Server, ServerConfig};

    // One --kv-transfer-config names one connector: offloading, or P/D transfer.
    let (offload_json, pd_json) = match a.kv_transfer_config.as_deref() {
        Some(j) if is_offloading_connector(j) => (Some(j), None),
        other => (None, other),
    };
    let offload = a.engine.offload(offload_json)?;
    let kv_transfer = match (pd_json, a.role) {
        (Some(json), _) => Some(KvTransferConfig::from_vllm_json(json)?),
        (None, Role::Prefill | Role::Decode) => Some(KvTransferConfig::default()),
        (None, Role::Both) => None,
    }
    .map(|mut t| {
        t.side_channel_host = a.side_channel_host.clone().unwrap_or_else(|| a.host.clone());
        t.side_channel_port = a.side_channel_port;
        t
    });
    let Built { engine, template, generation } =
        build_engine(&a.engine, offload.as_ref(), a.engine.gpu_memory_utilization)?;
    let cfg = engine.config().clone();
    let server_cfg = ServerConfig {
        kv_events: (!a.no_kv_events).then(|| KvEventsConfig {
            endpoint: a.kv_events_endpoint.clone().unwrap_or_else(|| KvEventsConfig::on_host(&a.host).endpoint),
            topic: a.kv_events_topic.clone(),
        }),
        defaults: generation,
        api_key: a.api_key.clone(),
        kv_transfer,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = Server::start(engine, template, server_cfg).await?;
        if let Some(side) = server.kv_transfer_side_channel() {
            println!(
                "llmd serve: KV transfer (role {}) serving held blocks on {side}",
                format!("{:?}", a.role).to_lowercase()
            );
        }
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            model = %cfg.model_name,
            sim = a.engine.sim,
            blocks = cfg.num_blocks,
            block_size = cfg.block_size,
            max_model_len = cfg.max_model_len,
            kv_events = server.kv_events_endpoint().unwrap_or("off"),
            "engine ready"
        );
        println!(
            "llmd serve: OpenAI-compatible API at http://{local}/v1 (model {:?}); KV events on {}",
            cfg.model_name,
            server.kv_events_endpoint().unwrap_or("off")
        );
        let shutdown = llmd::shutdown::Shutdown::install();
        // The server drains itself: /health is 503 from the signal on, and streams still
        // open at the deadline end with an error event before the connections close.
        let http = ServeConfig { drain_timeout: Some(a.engine.shutdown_timeout()), ..Default::default() };
        server.serve_with(listener, shutdown.begun(), http).await.context("serving")?;
        println!("llmd serve: stopped");
        Ok(())
    })
}

fn up(mut a: UpArgs) -> Result<()> {
    resolve_model_id(&mut a.engine)?;
    use llmd::cluster::{LocalCluster, Replica};
    use llmd::scheduler::{PluginRegistry, SchedulerConfig, presets};

    if a.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let registry = PluginRegistry::with_builtins();
    let sched_cfg = match (&a.config, a.pd) {
        (Some(path), _) => SchedulerConfig::from_file(path, &registry)?,
        (None, Some(_)) => SchedulerConfig::from_yaml(llmd::cluster::PD_ROUTING, "the P/D routing", &registry)?,
        (None, None) => presets::preset(&a.routing, &registry)?,
    };
    let count = match (a.pd, a.autoscale) {
        (Some((p, d)), _) => p + d,
        (None, Some((lo, hi))) => a.replicas.clamp(lo.max(1) as usize, hi as usize),
        (None, None) => a.replicas,
    };
    let mut sched_cfg = sched_cfg;
    if a.autoscale.is_some_and(|(lo, _)| lo == 0) {
        // Held, not refused, while no replica runs: the queue brings one back.
        let fc = sched_cfg.flow_control.get_or_insert_with(Default::default);
        fc.enabled = true;
    }
    if a.autoscale.is_some() && !(a.autoscale_interval > 0.0 && a.autoscale_interval.is_finite()) {
        bail!("--autoscale-interval {}: expected a positive number of seconds", a.autoscale_interval);
    }
    let offload = a.engine.offload(None)?;
    // Replicas on one GPU share its memory: as many as may run at once.
    let share = a.engine.gpu_memory_utilization / a.autoscale.map_or(count, |(_, hi)| hi as usize) as f64;
    // Same arguments, same seed: every replica serves the same weights.
    let make = {
        let (args, offload) = (a.engine.clone(), offload.clone());
        move || -> Result<Replica> {
            let Built { engine, template, generation } = build_engine(&args, offload.as_ref(), share)?;
            Ok(Replica { engine, template, generation })
        }
    };
    let replicas = (0..count).map(|_| make()).collect::<Result<Vec<_>>>()?;
    let model_name = replicas[0].engine.config().model_name.clone();
    let routing = match (&a.config, a.pd) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(_)) => "P/D".into(),
        (None, None) => a.routing.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let bind = format!("{}:{}", a.host, a.port);
        let opts = llmd::cluster::ClusterOptions {
            register: true,
            gateway: a.gateway.gateway(),
            picker: a.gateway.picker(),
            pd_prefill: a.pd.map(|(p, _)| p),
        };
        let cluster = LocalCluster::start_opts(replicas, sched_cfg, a.engine.seed, &bind, opts)
            .await
            .with_context(|| format!("starting the local cluster on {bind}"))?;
        let cluster = std::sync::Arc::new(cluster);
        let shape = match (a.pd, a.autoscale) {
            (Some((p, d)), _) => format!("{p} prefill + {d} decode replicas (a routing sidecar per decode replica)"),
            (None, Some((lo, hi))) => {
                format!("{count} replicas, autoscaled between {lo} and {hi} ({} policy)", a.autoscale_policy)
            }
            (None, None) => format!("{count} replicas"),
        };
        let (stop_scaling, scaling) = match a.autoscale {
            None => (None, None),
            Some(bounds) => {
                use llmd::autoscale::{
                    ForecastConfig, ModelBasedConfig, ModelBasedPolicy, SaturationConfig, SaturationPolicy,
                    StabilizeConfig, ThresholdConfig, ThresholdPolicy,
                };
                if !(a.scale_to_zero_after >= 0.0 && a.scale_to_zero_after.is_finite()) {
                    bail!("--scale-to-zero-after {}: expected seconds", a.scale_to_zero_after);
                }
                let idle = if bounds.0 == 0 { a.scale_to_zero_after } else { f64::INFINITY };
                let policy: Box<dyn llmd::autoscale::Policy> = match a.autoscale_policy.as_str() {
                    "threshold" => Box::new(ThresholdPolicy::new(ThresholdConfig::default())?),
                    "model" => Box::new(ModelBasedPolicy::new(ModelBasedConfig {
                        scale_to_zero_after: idle,
                        // A fall is planned for at the end of the window that holds
                        // each recommendation.
                        forecast: ForecastConfig {
                            lookahead_down: a.autoscale_down_window,
                            ..ForecastConfig::default()
                        },
                        ..ModelBasedConfig::default()
                    })?),
                    _ => Box::new(SaturationPolicy::new(SaturationConfig {
                        scale_to_zero_after: idle,
                        ..SaturationConfig::default()
                    })?),
                };
                let scaler = llmd::autoscaler::LocalAutoscaler::new(
                    cluster.clone(),
                    std::sync::Arc::new(make),
                    policy,
                    StabilizeConfig { scale_down_window: a.autoscale_down_window, ..StabilizeConfig::default() },
                    bounds,
                )?;
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let interval = Duration::from_secs_f64(a.autoscale_interval);
                let task = tokio::spawn(scaler.run(interval, async move {
                    let _ = rx.await;
                }));
                (Some(tx), Some(task))
            }
        };
        println!(
            "llmd up: {shape} of {model_name:?} behind http://{}/v1 (routing: {routing}); Ctrl-C to stop",
            cluster.addr
        );
        let shutdown = llmd::shutdown::Shutdown::install();
        shutdown.begun().await;
        // No more scaling (drains in flight finish within the cluster's shutdown).
        if let (Some(stop), Some(task)) = (stop_scaling, scaling) {
            let _ = stop.send(());
            let _ = task.await;
        }
        let gateway = cluster.gateway.clone();
        let stopping = cluster.shutdown();
        tokio::pin!(stopping);
        if let Err(cut) = shutdown.drain(&mut stopping, a.engine.shutdown_timeout()).await {
            // Streams still running end with an error event rather than a bare cut.
            gateway.cut_streams();
            let _ = tokio::time::timeout(Duration::from_secs(1), stopping).await;
            return Err(cut.into());
        }
        println!("llmd up: stopped");
        Ok(())
    })
}

/// Serves a gRPC router on `listener` until `stop` resolves.
fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: tokio::net::TcpListener,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop,
            )
            .await
            .map_err(anyhow::Error::from)
    })
}

fn bench(a: BenchArgs) -> Result<()> {
    use llmd::bench::{BenchOptions, drivers::Driver, find_scenario, markdown};
    let mut routings = a.routing.clone();
    if let Some(c) = &a.config {
        routings.push(format!("config:{}", c.display()));
    }
    let drivers = a.driver.iter().map(|d| Driver::parse(d)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = if a.scenarios == ["all"] {
        ["shared-prefix", "code-completion", "multi-turn", "random", "mixed"].map(String::from).to_vec()
    } else {
        a.scenarios.clone()
    };
    // Check every scenario before the first (long) run starts.
    let mut scenarios = Vec::with_capacity(names.len());
    for name in &names {
        let mut s = find_scenario(name)?;
        if !a.rate.is_empty() {
            if a.rate.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
                bail!("--rate takes positive request rates, got {:?}", a.rate);
            }
            s.rates = a.rate.clone();
        }
        if let Some(n) = a.requests {
            if n == 0 {
                bail!("--requests must be at least 1");
            }
            s.requests = n;
        }
        // A cache-pressure sweep is one scenario per factor, sized to the replicas' cache.
        let kv_blocks = a.kv_blocks.or(s.kv_blocks).unwrap_or(if a.sim { 8192 } else { 2048 });
        scenarios.extend(s.pressure_variants(kv_blocks, 16));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut reports = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let opts = BenchOptions {
            scenario,
            routings: routings.clone(),
            drivers: drivers.clone(),
            url: a.url.clone(),
            label: a.label.clone(),
            model: a.model.clone(),
            tokenizer: a.tokenizer.clone(),
            replicas: a.replicas,
            sim: a.sim,
            sim_latency: a.sim_latency.unwrap_or_default(),
            kv_blocks: a.kv_blocks,
            replication: a.hot_prefix_replication,
            out: a.out.clone(),
        };
        let report = rt.block_on(llmd::bench::bench(&opts))?;
        println!("wrote {}/{}.{{json,md,svg}}", a.out.display(), report.scenario);
        reports.push(report);
    }
    let table = markdown(&reports);
    std::fs::write(a.out.join("results.md"), &table)?;
    println!("{table}");
    println!("wrote {}/results.md", a.out.display());
    Ok(())
}
