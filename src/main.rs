//! The `llmd` reference binary.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Epp(EppArgs),
    /// The prefill/decode routing sidecar beside a decode engine.
    Sidecar(SidecarArgs),
    /// The SLO-aware autoscaler.
    Autoscale(AutoscaleArgs),
    /// Run a named benchmark scenario against a URL or a fresh `up`.
    Bench(BenchArgs),
    /// KV-cache tools: block hashes and KV event decoding.
    #[command(subcommand)]
    Kv(KvCommand),
}

#[derive(Args, Debug)]
struct UpArgs {
    /// Number of engine replicas.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// A Hugging Face Llama-family checkpoint directory (default: the built-in tiny model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Simulated replicas instead of real model execution.
    #[arg(long)]
    sim: bool,
    /// Gateway port.
    #[arg(long, default_value_t = 8000)]
    port: u16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    Prefill,
    Decode,
    Both,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Model checkpoint directory (default: the built-in tiny model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Disaggregation role.
    #[arg(long, value_enum, default_value_t = Role::Both)]
    role: Role,
    /// HTTP port.
    #[arg(long, default_value_t = 8001)]
    port: u16,
}

#[derive(Args, Debug)]
struct EppArgs {
    /// EndpointPickerConfig YAML.
    #[arg(long)]
    config: Option<PathBuf>,
    /// ext-proc gRPC port.
    #[arg(long, default_value_t = 9002)]
    grpc_port: u16,
}

#[derive(Args, Debug)]
struct SidecarArgs {
    /// Port the sidecar listens on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// URL of the decode engine beside it.
    #[arg(long, default_value = "http://127.0.0.1:8001")]
    decoder: String,
}

#[derive(Args, Debug)]
struct AutoscaleArgs {
    /// Replay a load trace offline instead of watching a cluster.
    #[arg(long)]
    simulate: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Scenario name.
    scenario: String,
    /// Target URL (default: start a fresh `up`).
    #[arg(long)]
    url: Option<String>,
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
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();

    match cli.command {
        Command::Kv(KvCommand::Hash(a)) => kv_hash(a),
        Command::Kv(KvCommand::DecodeEvents { file }) => kv_decode(file),
        Command::Up(_) => not_yet("up", "the engine and scheduler"),
        Command::Serve(_) => not_yet("serve", "the engine"),
        Command::Epp(_) => not_yet("epp", "the scheduler"),
        Command::Sidecar(_) => not_yet("sidecar", "the P/D sidecar"),
        Command::Autoscale(_) => not_yet("autoscale", "the autoscaler"),
        Command::Bench(_) => not_yet("bench", "the benchmark runner"),
    }
}

fn not_yet(cmd: &str, part: &str) -> Result<()> {
    bail!("`llmd {cmd}` is not available yet: {part} has not been built in this version")
}

fn kv_hash(a: HashArgs) -> Result<()> {
    use llmd::kvcache::{BlockHasher, HashAlgo};
    let algo: HashAlgo = a.algo.parse()?;
    let tokens = a
        .tokens
        .iter()
        .flat_map(|s| s.split_whitespace())
        .map(|t| {
            t.parse::<u32>()
                .with_context(|| format!("token id {t:?} is not a 32-bit unsigned integer"))
        })
        .collect::<Result<Vec<_>>>()?;
    let hasher = match (&a.seed, algo.is_cryptographic()) {
        (Some(seed), _) => BlockHasher::new(algo, seed),
        (None, true) => BlockHasher::default(),
        (None, false) => bail!(
            "{algo} needs --seed (vLLM seeds it randomly per process unless PYTHONHASHSEED is set)"
        ),
    };
    let hashes = hasher.hash_tokens(&tokens, a.block_size)?;
    println!(
        "# algo={algo} seed={:?} block_size={} none_hash={}",
        hasher.seed(),
        a.block_size,
        hasher.none_hash()
    );
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
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading stdin")?;
    } else {
        bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    }
    let batch = llmd::kvcache::codec::decode_batch(&bytes)?;
    println!("{batch:#?}");
    Ok(())
}
