//! `llmd sidecar`: the P/D routing sidecar beside a decode engine, with llm-d's flags
//! (`pkg/sidecar/proxy/options.go`): requests carrying `x-prefiller-host-port` are
//! prefilled there first and decoded here with the prefill's `kv_transfer_params`.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use llmd::transfer::sidecar::{Connector, SidecarConfig};

#[derive(Args, Debug)]
pub(crate) struct SidecarArgs {
    /// Port the sidecar listens on (the pool's target port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to bind. Default 127.0.0.1; in a pod, the pod's own network (`$POD_IP`,
    /// else every interface of the pod's network namespace), where the gateway sends.
    #[arg(long)]
    host: Option<String>,
    /// Port of the decode engine beside it, on localhost.
    #[arg(long, default_value_t = 8200)]
    model_server_port: u16,
    /// Deprecated spelling of --model-server-port (llm-d's older sidecar).
    #[arg(long, conflicts_with = "model_server_port")]
    vllm_port: Option<u16>,
    /// The P/D protocol: `nixlv2` (vLLM's NixlConnector `kv_transfer_params`).
    #[arg(long, visible_alias = "connector", default_value = "nixlv2")]
    kv_connector: Connector,
    /// Allow prefill targets only from --allowed-prefillers (403 otherwise).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_ssrf_protection: bool,
    /// With --enable-ssrf-protection: the prefill targets allowed, `host` or
    /// `host:port`, comma separated (llm-d reads them from the InferencePool's pods).
    #[arg(long, value_delimiter = ',')]
    allowed_prefillers: Vec<String>,
    /// Pick one of several prefill targets at random instead of the first.
    #[arg(long, env = "ENABLE_PREFILLER_SAMPLING", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    enable_prefiller_sampling: bool,
    /// Serve TLS (llm-d's default is true; its guides pass false): llmd's sidecar serves
    /// plain HTTP, so `true` is refused.
    #[arg(long, visible_alias = "secure-serving", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    secure_proxy: bool,
    /// Seconds the prefill leg may take before the request is decoded alone.
    #[arg(long, default_value_t = 600)]
    prefill_timeout: u64,
}

pub(crate) fn sidecar(a: SidecarArgs) -> Result<()> {
    if a.secure_proxy {
        bail!(
            "--secure-proxy=true: llmd's sidecar serves plain HTTP; pass --secure-proxy=false (as llm-d's guides do)"
        );
    }
    if a.enable_ssrf_protection && a.allowed_prefillers.is_empty() {
        bail!(
            "--enable-ssrf-protection needs --allowed-prefillers (llmd does not watch the InferencePool for them yet)"
        );
    }
    let port = a.vllm_port.unwrap_or(a.model_server_port);
    let mut cfg = SidecarConfig::new(format!("http://127.0.0.1:{port}"));
    cfg.connector = a.kv_connector;
    cfg.enable_prefiller_sampling = a.enable_prefiller_sampling;
    cfg.allowed_prefillers = a.enable_ssrf_protection.then(|| a.allowed_prefillers.clone());
    cfg.prefill_timeout = Duration::from_secs(a.prefill_timeout.max(1));
    // The sidecar always faces the cluster: in a pod it binds the pod's network.
    let host = a.host.clone().unwrap_or_else(|| crate::default_host(true));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), a.port)).await?;
        println!(
            "llmd sidecar: P/D routing at http://{} for the decode engine at http://127.0.0.1:{port} ({})",
            listener.local_addr()?,
            a.kv_connector
        );
        let shutdown = llmd::shutdown::Shutdown::install();
        let serving = llmd::transfer::sidecar::serve(listener, cfg, shutdown.begun());
        tokio::pin!(serving);
        match shutdown.drain(&mut serving, Duration::from_secs(25)).await {
            Ok(done) => done?,
            Err(cut) => return Err(cut.into()),
        }
        println!("llmd sidecar: stopped");
        Ok(())
    })
}
