//! The Envoy ext-proc server, with a gRPC client playing Envoy's part: headers, then the
//! body in two chunks; the answer carries the destination as a header and as `envoy.lb`
//! dynamic metadata, as llm-d's EPP does.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use llmd_scheduler::extproc::{ExtProc, LB_NAMESPACE};
use llmd_scheduler::picker::{DESTINATION_HEADER, EndpointPicker, PickerConfig};
use llmd_scheduler::{Endpoint, ManualClock, PluginRegistry, Role, Scheduler, datastore, presets};

/// How long any one exchange with the server may take before the test fails (instead
/// of hanging on a server that never answers).
const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `fut`, or a failure naming `what` after [`WAIT`].
async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("{what}: no answer within {WAIT:?}"))
}

async fn start(endpoints: Vec<Endpoint>) -> String {
    start_picker(endpoints).await.0
}

async fn start_picker(endpoints: Vec<Endpoint>) -> (String, std::sync::Arc<EndpointPicker>) {
    // Scraped load decides between the endpoints here (the prompt is too short to share).
    start_with(presets::preset("llm-d-prefix", &PluginRegistry::with_builtins()).unwrap(), endpoints).await
}

async fn start_with(
    config: llmd_scheduler::SchedulerConfig,
    endpoints: Vec<Endpoint>,
) -> (String, std::sync::Arc<EndpointPicker>) {
    let sched = Scheduler::new(config, 0);
    let store = datastore(std::sync::Arc::new(ManualClock::new()));
    for e in endpoints {
        store.upsert(e);
    }
    let picker = EndpointPicker::new(sched, store, PickerConfig::default(), None);
    let gw = picker.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExtProc::server(gw))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (addr, picker)
}

fn headers(end_of_stream: bool) -> ProcessingRequest {
    let hv = |k: &str, v: &str| HeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() };
    ProcessingRequest {
        request: Some(In::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![
                    hv(":path", "/v1/chat/completions"),
                    hv(":method", "POST"),
                    hv("x-request-id", "r-1"),
                    // A client trying to steer the P/D sidecar.
                    hv("x-prefiller-host-port", "evil:1"),
                    hv("X-LLM-D-Prefiller-Host-Port", "evil:2"),
                ],
            }),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(In::RequestBody(HttpBody { body: bytes.to_vec(), end_of_stream, ..Default::default() })),
        ..Default::default()
    }
}

async fn exchange(addr: String, msgs: Vec<ProcessingRequest>) -> Vec<ProcessingResponse> {
    let mut client = within("connect", ExternalProcessorClient::connect(addr)).await.unwrap();
    let n = msgs.len();
    let mut stream =
        within("open the stream", client.process(futures_util::stream::iter(msgs))).await.unwrap().into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match within("the next response", stream.message()).await.unwrap() {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

fn destination(r: &ProcessingResponse) -> (String, String) {
    let common = match &r.response {
        Some(Out::RequestBody(b)) => b.response.clone().unwrap(),
        Some(Out::RequestHeaders(h)) => h.response.clone().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(common.clear_route_cache);
    let set = &common.header_mutation.unwrap().set_headers;
    let hv = set.iter().find_map(|h| h.header.as_ref().filter(|h| h.key == DESTINATION_HEADER)).unwrap();
    let header = String::from_utf8(hv.raw_value.clone()).unwrap();
    let md = r.dynamic_metadata.as_ref().unwrap();
    let Some(Kind::StructValue(lb)) = &md.fields[LB_NAMESPACE].kind else { panic!("{md:?}") };
    let Some(Kind::StringValue(meta)) = &lb.fields[DESTINATION_HEADER].kind else { panic!("{lb:?}") };
    (header, meta.clone())
}

#[tokio::test]
async fn envoy_gets_the_destination_as_header_and_metadata() {
    let mut busy = Endpoint::new("busy", "10.0.0.1:8000", Role::Both);
    busy.metrics.waiting = 9;
    busy.metrics.kv_usage = 0.9;
    let idle = Endpoint::new("idle", "10.0.0.2:8000", Role::Both);
    let (addr, picker) = start_picker(vec![busy, idle]).await;
    let payload = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
    let replies =
        exchange(addr.clone(), vec![headers(false), body(&payload[..20], false), body(&payload[20..], true)]).await;
    // Headers are acknowledged; the first body chunk gets no answer; the last one the pick.
    assert!(matches!(replies[0].response, Some(Out::RequestHeaders(ref h)) if h.response.is_none()));
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(destination(&replies[1]), ("10.0.0.2:8000".into(), "10.0.0.2:8000".into()));
    // Not disaggregated: the client's own routing headers are removed before the sidecar.
    let Some(Out::RequestBody(b)) = &replies[1].response else { panic!("{replies:?}") };
    let removed = &b.response.as_ref().unwrap().header_mutation.as_ref().unwrap().remove_headers;
    assert_eq!(removed, &["x-prefiller-host-port".to_string(), "x-llm-d-prefiller-host-port".to_string()]);
    // The closed stream ends the request's in-flight count (the server sees it soon).
    within("the in-flight count to drop", async {
        while picker.datastore().requests_in_flight() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;

    // A request without a body is picked on its headers.
    let replies = exchange(addr, vec![headers(true)]).await;
    assert_eq!(destination(&replies[0]).0, "10.0.0.2:8000");
}

#[tokio::test]
async fn no_endpoint_and_bad_bodies_get_immediate_responses() {
    let addr = start(vec![]).await;
    let replies = exchange(addr.clone(), vec![headers(false), body(b"{}", true)]).await;
    let Some(Out::ImmediateResponse(r)) = &replies[1].response else { panic!("{replies:?}") };
    assert_eq!(r.status.as_ref().unwrap().code, 503);
    let err: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(err["error"]["code"], 503);

    let addr = start(vec![Endpoint::new("a", "10.0.0.3:8000", Role::Both)]).await;
    let replies = exchange(addr, vec![headers(false), body(b"{not json", true)]).await;
    let Some(Out::ImmediateResponse(r)) = &replies[1].response else { panic!("{replies:?}") };
    assert_eq!(r.status.as_ref().unwrap().code, 400);
}

#[tokio::test]
async fn a_request_is_in_flight_until_its_response_ends() {
    use envoy_types::pb::envoy::service::ext_proc::v3::HttpBody as Body;
    let (addr, picker) = start_picker(vec![Endpoint::new("a", "10.0.0.4:8000", Role::Both)]).await;
    let mut client = within("connect", ExternalProcessorClient::connect(addr)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ProcessingRequest>();
    let outbound = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut inbound = within("open the stream", client.process(outbound)).await.unwrap().into_inner();
    tx.send(headers(false)).unwrap();
    tx.send(body(br#"{"prompt": "hi"}"#, true)).unwrap();
    within("the headers response", inbound.message()).await.unwrap().unwrap();
    within("the body response", inbound.message()).await.unwrap().unwrap();
    assert_eq!(picker.datastore().get("a").unwrap().inflight.requests, 1, "picked and sent on");
    let response_end = ProcessingRequest {
        request: Some(In::ResponseBody(Body { body: b"done".to_vec(), end_of_stream: true, ..Default::default() })),
        ..Default::default()
    };
    tx.send(response_end).unwrap();
    within("the response-body response", inbound.message()).await.unwrap().unwrap();
    assert_eq!(picker.datastore().get("a").unwrap().inflight.requests, 0, "the response ended");
}

fn headers_for(path: &str) -> ProcessingRequest {
    let mut h = headers(false);
    if let Some(In::RequestHeaders(hh)) = &mut h.request {
        let map = hh.headers.as_mut().unwrap();
        map.headers.retain(|v| v.key != ":path");
        map.headers.push(HeaderValue {
            key: ":path".into(),
            raw_value: path.as_bytes().to_vec(),
            ..Default::default()
        });
    }
    h
}

#[tokio::test]
async fn request_parsers_decide_which_paths_and_bodies_are_read() {
    let reg = PluginRegistry::with_builtins();
    let profile = "schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: random-picker\n";
    let ep = || vec![Endpoint::new("a", "10.0.0.5:8000", Role::Both)];
    // Only the OpenAI parser: a path it does not claim is refused at once.
    let yaml = format!(
        "plugins:\n- type: random-picker\nrequestHandler:\n  parsers:\n  - pluginRef: openai-parser\n{profile}"
    );
    let c = llmd_scheduler::SchedulerConfig::from_yaml(&yaml, "epp.yaml", &reg).unwrap();
    let addr = start_with(c, ep()).await.0;
    let replies = exchange(addr, vec![headers_for("/v1/messages"), body(br#"{"messages": []}"#, true)]).await;
    let Some(Out::ImmediateResponse(r)) = &replies[1].response else { panic!("{replies:?}") };
    assert_eq!(r.status.as_ref().unwrap().code, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("no configured request parser"), "{r:?}");
    // The passthrough parser: any path, a body that is not JSON, still routed.
    let yaml = format!(
        "plugins:\n- type: random-picker\nrequestHandler:\n  parsers:\n  - pluginRef: passthrough-parser\n{profile}"
    );
    let c = llmd_scheduler::SchedulerConfig::from_yaml(&yaml, "epp.yaml", &reg).unwrap();
    let addr = start_with(c, ep()).await.0;
    let replies = exchange(addr, vec![headers_for("/v1/messages"), body(b"\x01binary", true)]).await;
    assert_eq!(destination(&replies[1]).0, "10.0.0.5:8000");
}

#[tokio::test]
async fn data_parallel_picks_name_the_rank_and_go_to_the_primary_port() {
    let yaml = "plugins:\n- type: data-parallel-profile-handler\n- type: max-score-picker\n\
                schedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: max-score-picker\n";
    let c = llmd_scheduler::SchedulerConfig::from_yaml(yaml, "dp.yaml", &PluginRegistry::with_builtins()).unwrap();
    let addr = start_with(c, vec![Endpoint::new("pod-rank-1", "10.0.0.6:8001", Role::Both)]).await.0;
    let mut h = headers(false);
    // A client naming a rank itself is overruled.
    if let Some(In::RequestHeaders(hh)) = &mut h.request {
        hh.headers.as_mut().unwrap().headers.push(HeaderValue {
            key: "x-data-parallel-host-port".into(),
            raw_value: b"10.9.9.9:1".to_vec(),
            ..Default::default()
        });
    }
    let replies = exchange(addr, vec![h, body(br#"{"prompt": "hi"}"#, true)]).await;
    assert_eq!(destination(&replies[1]).0, "10.0.0.6:8000");
    let Some(Out::RequestBody(b)) = &replies[1].response else { panic!("{replies:?}") };
    let set = &b.response.as_ref().unwrap().header_mutation.as_ref().unwrap().set_headers;
    let rank: Vec<String> = set
        .iter()
        .filter_map(|h| h.header.as_ref())
        .filter(|h| h.key == "x-data-parallel-host-port")
        .map(|h| String::from_utf8(h.raw_value.clone()).unwrap())
        .collect();
    assert_eq!(rank, ["10.0.0.6:8001"]);
}
