//! The Envoy external processor (feature `ext-proc`): the Endpoint Picker as the Gateway
//! API Inference Extension runs it. Envoy streams a request's headers and body; once the
//! body is complete the picker answers with the chosen endpoint as the
//! `x-gateway-destination-endpoint` header (route cache cleared) and as
//! `envoy.lb` dynamic metadata, the way llm-d's EPP does. Response phases pass through;
//! the request counts as in flight on its endpoint until the response body ends (or
//! the stream closes). It needs only the [picker core](crate::picker), not the HTTP gateway.
//!
//! Configure Envoy's ext_proc filter with `request_body_mode: BUFFERED` (or
//! `STREAMED`) and `response_body_mode: STREAMED`, as llm-d's EPP expects: the first
//! response body chunk tells the picker a prompt is prefilled (its tokens stop counting
//! as pending work), the last one that the request is done. With `response_body_mode:
//! NONE` a request's tokens count until its stream closes.

use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as In;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::picker::{DESTINATION_HEADER, EndpointPicker, PREFILL_HEADER, Picked, is_routing_header, parse_body};
use crate::request::LlmRequest;

/// Dynamic-metadata namespace Envoy's load balancer reads the destination from.
pub const LB_NAMESPACE: &str = "envoy.lb";

/// The ext-proc service over an [`EndpointPicker`].
#[derive(Debug, Clone)]
pub struct ExtProc {
    picker: Arc<EndpointPicker>,
}

impl ExtProc {
    /// The service, ready to add to a tonic server.
    pub fn server(picker: Arc<EndpointPicker>) -> ExternalProcessorServer<ExtProc> {
        ExternalProcessorServer::new(ExtProc { picker })
    }
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), raw_value: value.as_bytes().to_vec(), ..Default::default() }),
        ..Default::default()
    }
}

fn string_value(s: &str) -> PbValue {
    PbValue { kind: Some(Kind::StringValue(s.into())) }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = OutStream;

    async fn process(&self, request: Request<Streaming<ProcessingRequest>>) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ProcessingResponse, Status>>(8);
        let picker = self.picker.clone();
        tokio::spawn(async move {
            let mut headers: Vec<(String, String)> = Vec::new();
            let mut body = Vec::new();
            // The pick of this stream's request: in flight until the response ends.
            let mut picked: Option<Picked> = None;
            // The parsed request, for the response plugins.
            let mut parsed_req: Option<LlmRequest> = None;
            loop {
                let msg = match inbound.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "ext-proc stream ended");
                        return;
                    }
                };
                let reply = match msg.request {
                    Some(In::RequestHeaders(h)) => {
                        headers = h
                            .headers
                            .map(|m| {
                                m.headers
                                    .into_iter()
                                    .map(|hv| {
                                        let v = if hv.raw_value.is_empty() {
                                            hv.value
                                        } else {
                                            String::from_utf8_lossy(&hv.raw_value).into_owned()
                                        };
                                        (hv.key.to_ascii_lowercase(), v)
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if h.end_of_stream {
                            Some(decide(&picker, &headers, b"", true, &mut picked, &mut parsed_req).await)
                        } else {
                            Some(Out::RequestHeaders(HeadersResponse::default()))
                        }
                    }
                    Some(In::RequestBody(b)) => {
                        body.extend_from_slice(&b.body);
                        // Streamed bodies arrive in pieces; the pick waits for the end.
                        if b.end_of_stream {
                            Some(decide(&picker, &headers, &body, false, &mut picked, &mut parsed_req).await)
                        } else {
                            None
                        }
                    }
                    Some(In::ResponseHeaders(h)) => {
                        // Request-control plugins' response headers (a session token).
                        let set: Vec<HeaderValueOption> = match (&picked, &parsed_req) {
                            (Some(p), Some(r)) => {
                                let metadata = msg.metadata_context.as_ref().map(metadata_json);
                                picker
                                    .response_headers(r, &p.result, metadata.as_ref())
                                    .iter()
                                    .map(|(k, v)| header(k, v))
                                    .collect()
                            }
                            _ => Vec::new(),
                        };
                        if h.end_of_stream {
                            picked = None;
                        }
                        let response = (!set.is_empty()).then(|| CommonResponse {
                            header_mutation: Some(HeaderMutation { set_headers: set, ..Default::default() }),
                            ..Default::default()
                        });
                        Some(Out::ResponseHeaders(HeadersResponse { response }))
                    }
                    Some(In::ResponseBody(b)) => {
                        if let Some(p) = &picked {
                            p.first_byte();
                            p.chunk();
                            if b.end_of_stream {
                                p.complete(None);
                            }
                        }
                        if b.end_of_stream {
                            picked = None;
                        }
                        Some(Out::ResponseBody(BodyResponse::default()))
                    }
                    Some(In::RequestTrailers(_)) => Some(Out::RequestTrailers(TrailersResponse::default())),
                    Some(In::ResponseTrailers(_)) => Some(Out::ResponseTrailers(TrailersResponse::default())),
                    None => None,
                };
                if let Some(r) = reply {
                    let (response, dynamic_metadata) = match r {
                        Out::RequestBody(b) => {
                            let md = destination_metadata(&b);
                            (Out::RequestBody(b), md)
                        }
                        Out::RequestHeaders(h) => {
                            let md = h.response.as_ref().and_then(destination_from_common).map(lb_metadata);
                            (Out::RequestHeaders(h), md)
                        }
                        other => (other, None),
                    };
                    let msg = ProcessingResponse { response: Some(response), dynamic_metadata, ..Default::default() };
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn destination_from_common(c: &CommonResponse) -> Option<String> {
    c.header_mutation.as_ref()?.set_headers.iter().find_map(|h| {
        let hv = h.header.as_ref()?;
        (hv.key == DESTINATION_HEADER).then(|| String::from_utf8_lossy(&hv.raw_value).into_owned())
    })
}

/// Envoy's metadata for the request as JSON, by namespace (`filter_metadata`).
fn metadata_json(m: &envoy_types::pb::envoy::config::core::v3::Metadata) -> serde_json::Value {
    fn value(v: &PbValue) -> serde_json::Value {
        match &v.kind {
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::NumberValue(n)) => serde_json::json!(n),
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StructValue(s)) => object(s),
            Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value).collect()),
            Some(Kind::NullValue(_)) | None => serde_json::Value::Null,
        }
    }
    fn object(s: &Struct) -> serde_json::Value {
        serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value(v))).collect())
    }
    serde_json::Value::Object(m.filter_metadata.iter().map(|(k, v)| (k.clone(), object(v))).collect())
}

fn destination_metadata(b: &BodyResponse) -> Option<Struct> {
    b.response.as_ref().and_then(destination_from_common).map(lb_metadata)
}

fn lb_metadata(dest: String) -> Struct {
    let inner = Struct { fields: [(DESTINATION_HEADER.to_string(), string_value(&dest))].into_iter().collect() };
    Struct {
        fields: [(LB_NAMESPACE.to_string(), PbValue { kind: Some(Kind::StructValue(inner)) })].into_iter().collect(),
    }
}

/// Picks for a complete request; answers in the phase that completed it.
async fn decide(
    picker: &Arc<EndpointPicker>,
    headers: &[(String, String)],
    body: &[u8],
    in_headers: bool,
    picked: &mut Option<Picked>,
    parsed_req: &mut Option<LlmRequest>,
) -> Out {
    let path = headers.iter().find(|(k, _)| k == ":path").map_or("/v1/completions", |(_, v)| v.as_str());
    let reads_body = match picker.reads_body(path) {
        Ok(r) => r,
        Err(e) => return immediate(e.http_status(), &e.to_string()),
    };
    let parsed = match parse_body(body) {
        Ok(v) => v,
        // A path the passthrough parser takes (the body is the backend's business), or a
        // gRPC parser's (it reads the protobuf).
        Err(_) if !reads_body || picker.reads_grpc(path) => serde_json::Value::Null,
        Err(e) => return immediate(e.http_status(), &e.to_string()),
    };
    // Clients must not choose the destination themselves.
    let header_map = headers.iter().filter(|(k, _)| k != PREFILL_HEADER && k != DESTINATION_HEADER).cloned().collect();
    let req = match picker.parse_request_raw(path, &header_map, &parsed, body).await {
        Ok(r) => r,
        Err(e) => return immediate(e.http_status(), &e.to_string()),
    };
    // Flow control and admitters first; the permit is held with the pick until the
    // response ends (the stream's `picked`).
    let permit = match picker.admit(&req, body.len() as u64).await {
        Ok(p) => p,
        Err(r) => return rejected(&r),
    };
    picker.burst_join(&req).await;
    match picker.pick_request(&req, &Default::default()) {
        Ok(mut pick) => {
            pick.hold(permit);
            picker.replicate(path, &parsed, &req, &pick.result);
            let Some(dest) = pick.destination_address().map(String::from) else {
                return immediate(503, "no destination");
            };
            *parsed_req = Some(req.clone());
            let mut set = vec![header(DESTINATION_HEADER, &dest)];
            // A client's own routing headers must not reach the sidecar: ours replace
            // them, the rest are removed.
            if let Some(pf) = pick.prefill_address() {
                set.push(header(PREFILL_HEADER, pf));
            }
            for (k, v) in &pick.result.headers {
                set.push(header(k, v));
            }
            let remove_headers: Vec<String> = headers
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| is_routing_header(k) && set.iter().all(|h| h.header.as_ref().is_none_or(|h| h.key != *k)))
                .map(String::from)
                .collect();
            *picked = Some(pick);
            let common = CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: set, remove_headers }),
                clear_route_cache: true,
                ..Default::default()
            };
            if in_headers {
                Out::RequestHeaders(HeadersResponse { response: Some(common) })
            } else {
                Out::RequestBody(BodyResponse { response: Some(common) })
            }
        }
        Err(e) => immediate(e.http_status(), &e.to_string()),
    }
}

/// Flow control's refusal: its status, body, and the router's
/// `x-llm-d-request-dropped-reason` header.
fn rejected(r: &crate::flowcontrol::FlowRejection) -> Out {
    let mut out = immediate(r.status(), &r.body());
    if let (Out::ImmediateResponse(i), Some(reason)) = (&mut out, r.reason) {
        i.headers = Some(HeaderMutation {
            set_headers: vec![header("x-llm-d-request-dropped-reason", reason)],
            ..Default::default()
        });
    }
    out
}

fn immediate(code: u16, message: &str) -> Out {
    Out::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(code) }),
        body: llmd_openai::ErrorBody::from_status(code, message).to_json().into_bytes(),
        details: message.into(),
        ..Default::default()
    })
}
