//! Served models (llm-d-router's `models-data-source` and `models-data-extractor`):
//! the source GETs each endpoint's OpenAI model list (`/v1/models`) every scrape
//! interval; the extractor writes the ids it lists as the endpoint attribute
//! [`MODELS_ATTRIBUTE`] (a list). The source is an HTTP fetch like
//! `metrics-data-source`'s, so it is a [`SourceKind::Metrics`] with the models path:
//! the data plane fetches it and hands the body to the extractors as text.

use serde_json::Value;

use super::Fields;
use crate::datalayer::{Extracted, Extractor, SourceData, SourceKind};
use crate::endpoint::{AttributeValue, Endpoint};

/// `models-data-source`.
pub const MODELS_DATA_SOURCE: &str = "models-data-source";
/// `models-data-extractor`.
pub const MODELS_DATA_EXTRACTOR: &str = "models-data-extractor";
/// The attribute the extractor writes: the served model ids, base models and LoRA
/// adapters alike (the router's key is `/v1/models`).
pub const MODELS_ATTRIBUTE: &str = "/v1/models";
/// The default path.
pub const DEFAULT_MODELS_PATH: &str = "/v1/models";

/// The source for `models-data-source`'s `parameters`: `scheme` (`http`; `https` is
/// refused: llmd fetches over http only), `path` (`/v1/models`), `insecureSkipVerify`
/// (accepted, true by default, meaningless over http), `caCertPath` /
/// `clientCertPath` / `clientKeyPath` (refused: TLS), `interval` (a duration; default
/// the picker's scrape interval).
pub fn source_from_params(p: &Value) -> Result<SourceKind, String> {
    let known = ["scheme", "path", "insecureSkipVerify", "caCertPath", "clientCertPath", "clientKeyPath", "interval"];
    let f = Fields::new(p, "", &known)?;
    let scheme = match f.value("scheme") {
        None => "http".to_string(),
        Some(_) => f.string("scheme")?,
    };
    match scheme.as_str() {
        "http" => {}
        "https" => return Err("parameter scheme: \"https\" is not supported (http only)".into()),
        other => return Err(format!("parameter scheme: unsupported scheme: {other}")),
    }
    // Certificates matter only over https, which this source does not fetch yet.
    for tls in ["caCertPath", "clientCertPath", "clientKeyPath"] {
        if f.value(tls).is_some() {
            return Err(format!("parameter {tls}: TLS is not built for models-data-source yet (http only)"));
        }
    }
    // The router's overlay: a path given as "" stays "" (and fails to fetch); llmd
    // wants a path it can join to the address.
    let mut plain = serde_json::Map::new();
    for (k, v) in p.as_object().into_iter().flatten() {
        if !k.eq_ignore_ascii_case("scheme") {
            plain.insert(k.clone(), v.clone());
        }
    }
    if f.value("path").is_none() {
        plain.insert("path".into(), DEFAULT_MODELS_PATH.into());
    }
    SourceKind::metrics_from_params(&Value::Object(plain))
}

/// One entry of an OpenAI model list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelData {
    /// `id`.
    pub id: String,
    /// `object`.
    pub object: String,
    /// `created`.
    pub created: i64,
    /// `owned_by`.
    pub owned_by: String,
    /// `parent`: the base model of a LoRA adapter.
    pub parent: String,
}

/// `v[key]`: exactly, else ignoring ASCII case (Go's `encoding/json`); `null` is absent.
fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)).filter(|v| !v.is_null())
}

/// Parses a `/v1/models` answer as the router does (`{"object": "list", "data":
/// [...]}`; unknown fields ignored, a field of the wrong JSON type an error).
pub fn parse_models(body: &str) -> Result<Vec<ModelData>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("models response is not JSON: {e}"))?;
    if !(v.is_object() || v.is_null()) {
        return Err(format!("models response: expected an object, got {v}"));
    }
    let text = |m: &Value, k: &str| -> Result<String, String> {
        match field(m, k) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("models response: {k}: expected a string, got {other}")),
        }
    };
    text(&v, "object")?;
    let data = match field(&v, "data") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(format!("models response: data: expected a list, got {other}")),
    };
    data.iter()
        .map(|m| {
            if !(m.is_object() || m.is_null()) {
                return Err(format!("models response: expected a model object, got {m}"));
            }
            let created = match field(m, "created") {
                None => 0,
                Some(c) => {
                    c.as_i64().ok_or_else(|| format!("models response: created: expected an integer, got {c}"))?
                }
            };
            Ok(ModelData {
                id: text(m, "id")?,
                object: text(m, "object")?,
                created,
                owned_by: text(m, "owned_by")?,
                parent: text(m, "parent")?,
            })
        })
        .collect()
}

/// `models-data-extractor`: the ids of a parsed model list as [`MODELS_ATTRIBUTE`]; an
/// answer that does not parse changes nothing (the router's dispatcher drops it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelsExtractor;

impl Extractor for ModelsExtractor {
    fn extract(&self, endpoint: &Endpoint, data: SourceData<'_>, out: &mut Extracted) {
        let SourceData::Metrics(text) = data;
        match parse_models(text) {
            Ok(models) => {
                let ids = models.into_iter().map(|m| m.id).collect();
                out.attributes.push((MODELS_ATTRIBUTE.into(), AttributeValue::List(ids)));
            }
            Err(e) => tracing::debug!(endpoint = %endpoint.id, error = %e, "models-data-extractor: answer not read"),
        }
    }
}
