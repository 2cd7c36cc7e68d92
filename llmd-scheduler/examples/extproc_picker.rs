//! An endpoint picker with only the Envoy external processor: no HTTP gateway, no
//! reverse proxy — what a platform team runs beside its own Envoy (or Istio, or kgateway).
//!
//! It reads endpoints from a file (llm-d's `file-discovery` format), serves ext-proc on
//! loopback, and then plays Envoy once: request headers and body in, the chosen
//! endpoint out, as the `x-gateway-destination-endpoint` header and `envoy.lb` metadata.
//!
//! Run: `cargo run -p llmd-scheduler --no-default-features --features ext-proc --example extproc_picker`

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use llmd_scheduler::extproc::ExtProc;
use llmd_scheduler::picker::{DESTINATION_HEADER, EndpointPicker, PickerConfig};
use llmd_scheduler::{FileDiscovery, PluginRegistry, Scheduler, SystemClock, datastore, presets};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Two model servers, as a discovery file lists them (nothing needs to listen there:
    // ext-proc only names the destination, Envoy connects).
    let dir = std::env::temp_dir().join(format!("llmd-extproc-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("endpoints.yaml");
    std::fs::write(
        &file,
        "endpoints:\n- {name: vllm-0, address: 10.0.0.1, port: '8000'}\n- {name: vllm-1, address: 10.0.0.2, port: '8000'}\n",
    )?;

    let config = presets::preset("load", &PluginRegistry::with_builtins())?;
    let store = datastore(Arc::new(SystemClock::default()));
    let picker = EndpointPicker::new(Scheduler::new(config, 0), store, PickerConfig::default(), None);
    let found = picker.run_discovery(Box::new(FileDiscovery::new(&file, Some(Duration::from_secs(1)))))?;
    println!("discovered {} endpoints from {}", found.added, file.display());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExtProc::server(picker.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    println!("ext-proc listening on grpc://{addr}");

    // Envoy's side of one request.
    let hv = |k: &str, v: &str| HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() };
    let headers = HttpHeaders {
        headers: Some(HeaderMap { headers: vec![hv(":path", "/v1/completions"), hv(":method", "POST")] }),
        ..Default::default()
    };
    let body =
        HttpBody { body: br#"{"model": "m", "prompt": "Hello"}"#.to_vec(), end_of_stream: true, ..Default::default() };
    let msgs = vec![
        ProcessingRequest { request: Some(In::RequestHeaders(headers)), ..Default::default() },
        ProcessingRequest { request: Some(In::RequestBody(body)), ..Default::default() },
    ];
    let mut client = ExternalProcessorClient::connect(format!("http://{addr}")).await?;
    let mut replies = client.process(futures_util::stream::iter(msgs)).await?.into_inner();
    let mut destination = None;
    while destination.is_none() {
        let Some(reply) = tokio::time::timeout(Duration::from_secs(5), replies.message()).await?? else { break };
        if let Some(Out::RequestBody(b)) = reply.response {
            let set = b.response.and_then(|c| c.header_mutation).map(|m| m.set_headers).unwrap_or_default();
            destination = set
                .into_iter()
                .filter_map(|h| h.header)
                .find(|h| h.key == DESTINATION_HEADER)
                .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned());
        }
    }
    let destination = destination.ok_or("ext-proc named no destination")?;
    println!("Envoy is told: {DESTINATION_HEADER}: {destination}");
    picker.shutdown();
    server.abort();
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
