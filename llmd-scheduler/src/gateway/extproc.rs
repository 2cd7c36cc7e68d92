//! The Envoy external processor (feature `ext-proc`): the Endpoint Picker as the Gateway
//! API Inference Extension runs it. Envoy streams a request's headers and body; once the
//! body is complete the picker answers with the chosen endpoint as the
//! `x-gateway-destination-endpoint` header (route cache cleared) and as
//! `envoy.lb` dynamic metadata, the way llm-d's EPP does. Response phases pass through.

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

use super::{DESTINATION_HEADER, Gateway, PREFILL_HEADER};

/// Dynamic-metadata namespace Envoy's load balancer reads the destination from.
pub const LB_NAMESPACE: &str = "envoy.lb";

/// The ext-proc service over a [`Gateway`]'s scheduler and endpoints.
#[derive(Debug, Clone)]
pub struct ExtProc {
    gateway: Arc<Gateway>,
}

impl ExtProc {
    /// The service, ready to add to a tonic server.
    pub fn server(gateway: Arc<Gateway>) -> ExternalProcessorServer<ExtProc> {
        ExternalProcessorServer::new(ExtProc { gateway })
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
        let gateway = self.gateway.clone();
        tokio::spawn(async move {
            let mut headers: Vec<(String, String)> = Vec::new();
            let mut body = Vec::new();
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
                            Some(decide(&gateway, &headers, b"", true))
                        } else {
                            Some(Out::RequestHeaders(HeadersResponse::default()))
                        }
                    }
                    Some(In::RequestBody(b)) => {
                        body.extend_from_slice(&b.body);
                        // Streamed bodies arrive in pieces; the pick waits for the end.
                        b.end_of_stream.then(|| decide(&gateway, &headers, &body, false))
                    }
                    Some(In::ResponseHeaders(_)) => Some(Out::ResponseHeaders(HeadersResponse::default())),
                    Some(In::ResponseBody(_)) => Some(Out::ResponseBody(BodyResponse::default())),
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
fn decide(gateway: &Gateway, headers: &[(String, String)], body: &[u8], in_headers: bool) -> Out {
    let path = headers.iter().find(|(k, _)| k == ":path").map_or("/v1/completions", |(_, v)| v.as_str());
    let parsed: serde_json::Value = if body.is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return immediate(400, &format!("request body is not valid JSON: {e}")),
        }
    };
    let header_map = headers.iter().cloned().collect();
    match gateway.pick_for(path, &header_map, &parsed, &Default::default()) {
        Ok(pick) => {
            let Some(dest) = pick.destination() else { return immediate(503, "no destination") };
            let mut set = vec![header(DESTINATION_HEADER, &dest.address)];
            if let Some(pf) = pick.picks.get("prefill").filter(|_| pick.primary != "prefill") {
                set.push(header(PREFILL_HEADER, &pf.address));
            }
            let common = CommonResponse {
                header_mutation: Some(HeaderMutation { set_headers: set, ..Default::default() }),
                clear_route_cache: true,
                ..Default::default()
            };
            if in_headers {
                Out::RequestHeaders(HeadersResponse { response: Some(common) })
            } else {
                Out::RequestBody(BodyResponse { response: Some(common) })
            }
        }
        Err((code, msg)) => immediate(code, &msg),
    }
}

fn immediate(code: u16, message: &str) -> Out {
    let body = serde_json::json!({"error": {"message": message, "type": if code == 400 { "BadRequestError" } else { "ServiceUnavailableError" }, "param": null, "code": code}});
    Out::ImmediateResponse(ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(code) }),
        body: body.to_string().into_bytes(),
        details: message.into(),
        ..Default::default()
    })
}
