//! The data layer, as llm-d's router has it: **data sources** fetch raw data per
//! endpoint (a Prometheus scrape, a KV-event stream) and hand it to **extractors**,
//! which write what they find onto the endpoint — typed metrics the built-in scorers
//! read, and named **attributes** any filter or scorer can read by name
//! ([`Endpoint::attribute`]). The config's `dataLayer.sources[].extractors[]` wires
//! them; without a `dataLayer` section (or with `injectDefaults`), the defaults apply:
//! `metrics-data-source` → `core-metrics-extractor`, and `kv-events-data-source` → every
//! plugin that consumes KV events (the precise prefix index).
//!
//! New data (GPU telemetry, topology, served models) plugs in as another source or
//! extractor type in the [`PluginRegistry`](crate::PluginRegistry), without touching
//! the picker. The fetching itself runs in the picker's runtime (feature `runtime`);
//! everything here is plain code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::{AttributeValue, Endpoint, EndpointMetrics};
use crate::plugin::KvEventConsumer;
use crate::scrape;

/// Attribute names the core metrics extractor writes (llm-d's).
pub mod attributes {
    /// `vllm:num_requests_waiting`.
    pub const WAITING_QUEUE_SIZE: &str = "WaitingQueueSize";
    /// `vllm:num_requests_running`.
    pub const RUNNING_REQUESTS_SIZE: &str = "RunningRequestsSize";
    /// `vllm:kv_cache_usage_perc`.
    pub const KV_CACHE_USAGE_PERCENT: &str = "KVCacheUsagePercent";
    /// Loaded LoRA adapters.
    pub const ACTIVE_MODELS: &str = "ActiveModels";
    /// Requested LoRA adapters not loaded.
    pub const WAITING_MODELS: &str = "WaitingModels";
    /// Most adapters loaded at once.
    pub const MAX_ACTIVE_MODELS: &str = "MaxActiveModels";
    /// `block_size` of `vllm:cache_config_info`.
    pub const BLOCK_SIZE: &str = "BlockSize";
    /// `num_gpu_blocks` of `vllm:cache_config_info`: the KV cache's size in blocks.
    pub const NUM_GPU_BLOCKS: &str = "NumGpuBlocks";
}

/// What a data source fetched for one endpoint.
#[derive(Debug, Clone, Copy)]
pub enum SourceData<'a> {
    /// A Prometheus exposition.
    Metrics(&'a str),
}

/// What extractors found for one endpoint; the runtime writes it to the datastore.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// Typed metrics for the built-in scorers.
    pub metrics: Option<EndpointMetrics>,
    /// Named attributes.
    pub attributes: Vec<(String, AttributeValue)>,
    /// A KV-event stream the endpoint advertises.
    pub kv_events: Option<String>,
}

/// Turns a source's data into endpoint metrics and attributes.
pub trait Extractor: Send + Sync {
    /// Reads `data` fetched for `endpoint`; adds what it finds to `out`.
    fn extract(&self, endpoint: &Endpoint, data: SourceData<'_>, out: &mut Extracted);
}

/// A metric selector: `name` or `name{label="value",...}` (quotes optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSpec {
    name: String,
    labels: Vec<(String, String)>,
}

impl MetricSpec {
    /// Parses a selector; errors say what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        let (name, rest) = match spec.find('{') {
            None => (spec, ""),
            Some(i) => (&spec[..i], &spec[i..]),
        };
        if name.is_empty() {
            return Err(format!("metric spec {spec:?} has no metric name"));
        }
        let mut labels = Vec::new();
        if !rest.is_empty() {
            let inner = rest
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .ok_or_else(|| format!("metric spec {spec:?}: unbalanced braces"))?;
            for pair in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) =
                    pair.split_once('=').ok_or_else(|| format!("metric spec {spec:?}: {pair:?} is not k=v"))?;
                labels.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
            }
        }
        Ok(MetricSpec { name: name.to_string(), labels })
    }

    /// The sum of the matching samples in an exposition (data-parallel ranks add up);
    /// `None` when no sample matches.
    pub fn value(&self, text: &str) -> Option<f64> {
        let mut total = None;
        for (name, labels, v) in scrape::samples(text) {
            if name == self.name
                && self.labels.iter().all(|(k, want)| labels.iter().any(|(lk, lv)| lk == k && lv == want))
            {
                *total.get_or_insert(0.0) += v;
            }
        }
        total
    }
}

/// One engine type's metric names (`core-metrics-extractor`'s `engineConfigs`).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineMetricSpecs {
    /// Engine type name (the `llm-d.ai/engine-type` label value).
    pub name: String,
    /// Waiting requests.
    pub queued: Option<MetricSpec>,
    /// Running requests.
    pub running: Option<MetricSpec>,
    /// KV-cache usage in [0, 1].
    pub kv_usage: Option<MetricSpec>,
    /// Extra attributes: key → selector.
    pub custom: Vec<(String, MetricSpec)>,
}

/// `core-metrics-extractor`: vLLM's series (by default) into [`EndpointMetrics`] and
/// llm-d's attribute names ([`attributes`]); per-engine metric names and custom
/// attributes from `engineConfigs`, chosen by the endpoint's `engineLabelKey` label.
#[derive(Debug, Clone)]
pub struct CoreMetricsExtractor {
    engine_label: String,
    default_engine: String,
    engines: BTreeMap<String, EngineMetricSpecs>,
}

impl Default for CoreMetricsExtractor {
    fn default() -> Self {
        CoreMetricsExtractor {
            engine_label: "llm-d.ai/engine-type".into(),
            default_engine: "vllm".into(),
            engines: BTreeMap::new(),
        }
    }
}

impl CoreMetricsExtractor {
    /// From `parameters`: `engineLabelKey`, `defaultEngine`, `engineConfigs: [{name,
    /// queuedRequestsSpec, runningRequestsSpec, kvUsageSpec, customMetrics: [{attributeKey,
    /// metricSpec}]}]`. An engine's other llm-d-router keys (`loraSpec`, `cacheInfoSpec`,
    /// `cacheBlockSizeLabelName`, `cacheNumBlocksLabelName`, `cacheBlockSizeSpec`,
    /// `cacheNumBlocksSpec`) are accepted and not read; unknown keys are refused, at any
    /// depth, as the router refuses them.
    pub fn from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = crate::plugins::Params(p);
        q.check(&["engineLabelKey", "defaultEngine", "engineConfigs"])?;
        let mut x = CoreMetricsExtractor::default();
        if let Some(k) = q.string("engineLabelKey")? {
            x.engine_label = k;
        }
        if let Some(d) = q.string("defaultEngine")? {
            x.default_engine = d;
        }
        let configs = match q.value("engineConfigs") {
            None => Vec::new(),
            Some(serde_json::Value::Array(a)) => a.clone(),
            Some(v) => return Err(format!("parameter engineConfigs: expected a list, got {v}")),
        };
        for (i, c) in configs.iter().enumerate() {
            let at = |e: String| format!("engineConfigs[{i}]: {e}");
            let cq = crate::plugins::Params(c);
            cq.check_at(
                &format!("engineConfigs[{i}]"),
                &[
                    "name",
                    "queuedRequestsSpec",
                    "runningRequestsSpec",
                    "kvUsageSpec",
                    "loraSpec",
                    "cacheInfoSpec",
                    "cacheBlockSizeLabelName",
                    "cacheNumBlocksLabelName",
                    "cacheBlockSizeSpec",
                    "cacheNumBlocksSpec",
                    "customMetrics",
                ],
            )?;
            let name = cq.string("name").map_err(at)?.ok_or_else(|| at("name is required".into()))?;
            let spec = |key: &str| -> Result<Option<MetricSpec>, String> {
                cq.string(key).map_err(at)?.map(|s| MetricSpec::parse(&s).map_err(at)).transpose()
            };
            let mut custom = Vec::new();
            let list = match cq.value("customMetrics") {
                None => &[][..],
                Some(serde_json::Value::Array(a)) => &a[..],
                Some(v) => return Err(at(format!("customMetrics: expected a list, got {v}"))),
            };
            for (j, m) in list.iter().enumerate() {
                let mq = crate::plugins::Params(m);
                mq.check_at(&format!("engineConfigs[{i}].customMetrics[{j}]"), &["attributeKey", "metricSpec"])?;
                let key =
                    mq.string("attributeKey").map_err(at)?.ok_or_else(|| at("attributeKey is required".into()))?;
                let sel = mq.string("metricSpec").map_err(at)?.ok_or_else(|| at("metricSpec is required".into()))?;
                custom.push((key, MetricSpec::parse(&sel).map_err(at)?));
            }
            let e = EngineMetricSpecs {
                queued: spec("queuedRequestsSpec")?,
                running: spec("runningRequestsSpec")?,
                kv_usage: spec("kvUsageSpec")?,
                custom,
                name: name.clone(),
            };
            x.engines.insert(name, e);
        }
        Ok(x)
    }
}

impl Extractor for CoreMetricsExtractor {
    fn extract(&self, endpoint: &Endpoint, data: SourceData<'_>, out: &mut Extracted) {
        let SourceData::Metrics(text) = data;
        let engine = endpoint.labels.get(&self.engine_label).unwrap_or(&self.default_engine);
        let scraped = scrape::parse(text);
        let mut m = scraped.metrics;
        if let Some(spec) = self.engines.get(engine) {
            // An engine with its own names: its selectors replace vLLM's.
            if let Some(v) = spec.queued.as_ref().and_then(|s| s.value(text)) {
                m.waiting = v.max(0.0) as u64;
            }
            if let Some(v) = spec.running.as_ref().and_then(|s| s.value(text)) {
                m.running = v.max(0.0) as u64;
            }
            if let Some(v) = spec.kv_usage.as_ref().and_then(|s| s.value(text)) {
                m.kv_usage = v;
            }
            for (key, sel) in &spec.custom {
                if let Some(v) = sel.value(text) {
                    out.attributes.push((key.clone(), AttributeValue::Float(v)));
                }
            }
        }
        use attributes::*;
        out.attributes.extend([
            (WAITING_QUEUE_SIZE.to_string(), AttributeValue::Int(m.waiting as i64)),
            (RUNNING_REQUESTS_SIZE.to_string(), AttributeValue::Int(m.running as i64)),
            (KV_CACHE_USAGE_PERCENT.to_string(), AttributeValue::Float(m.kv_usage)),
            (ACTIVE_MODELS.to_string(), AttributeValue::List(m.active_loras.clone())),
            (WAITING_MODELS.to_string(), AttributeValue::List(m.waiting_loras.clone())),
            (MAX_ACTIVE_MODELS.to_string(), AttributeValue::Int(m.max_loras as i64)),
        ]);
        if let Some(b) = scraped.block_size {
            out.attributes.push((BLOCK_SIZE.to_string(), AttributeValue::Int(b as i64)));
        }
        if let Some(n) = scraped.num_gpu_blocks {
            out.attributes.push((NUM_GPU_BLOCKS.to_string(), AttributeValue::Int(n.min(i64::MAX as u64) as i64)));
        }
        out.kv_events = scraped.kv_events;
        out.metrics = Some(m);
    }
}

/// How a metrics source reaches its endpoints over https (`scheme: https`): the
/// server certificate is checked against `ca_cert` (else the system roots) unless
/// `insecure_skip_verify`, and `client_cert`/`client_key` are presented for mTLS. The
/// files are read when the config loads (a missing or invalid one is a load error)
/// and again when the picker builds the source's client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `caCertPath`: a PEM bundle of the CAs the server certificate must chain to.
    pub ca_cert: Option<std::path::PathBuf>,
    /// `clientCertPath`: a PEM client certificate (chain).
    pub client_cert: Option<std::path::PathBuf>,
    /// `clientKeyPath`: the client certificate's PEM private key.
    pub client_key: Option<std::path::PathBuf>,
    /// `insecureSkipVerify`: accept any server certificate.
    pub insecure_skip_verify: bool,
}

impl TlsSettings {
    /// The CA bundle's PEM text (`None` without `caCertPath`, or when verification is
    /// skipped: the router ignores the CA then); errors name the parameter and path.
    pub fn ca_pem(&self) -> Result<Option<Vec<u8>>, String> {
        match &self.ca_cert {
            Some(path) if !self.insecure_skip_verify => {
                let pem = read_param_file("caCertPath", path)?;
                if pem_blocks(&pem, "CERTIFICATE") == 0 {
                    return Err(format!("parameter caCertPath: {}: no PEM certificate in it", path.display()));
                }
                Ok(Some(pem))
            }
            _ => Ok(None),
        }
    }

    /// The client identity, certificate chain then key, as one PEM buffer (what
    /// rustls-backed reqwest reads); `None` without client certificates.
    pub fn identity_pem(&self) -> Result<Option<Vec<u8>>, String> {
        let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) else { return Ok(None) };
        let mut pem = read_param_file("clientCertPath", cert)?;
        if pem_blocks(&pem, "CERTIFICATE") == 0 {
            return Err(format!("parameter clientCertPath: {}: no PEM certificate in it", cert.display()));
        }
        let key_pem = read_param_file("clientKeyPath", key)?;
        if pem_blocks(&key_pem, "PRIVATE KEY") == 0 {
            return Err(format!("parameter clientKeyPath: {}: no PEM private key in it", key.display()));
        }
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
        Ok(Some(pem))
    }

    /// Reads every file now, so a config naming a missing or unreadable one fails to
    /// load (the router fails the plugin's creation the same way).
    pub fn validate(&self) -> Result<(), String> {
        self.ca_pem()?;
        self.identity_pem()?;
        Ok(())
    }
}

fn read_param_file(param: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("parameter {param}: cannot read {}: {e}", path.display()))
}

// PEM blocks whose label ends with `kind` ("CERTIFICATE"; "PRIVATE KEY" matches the
// PKCS#8, RSA and EC key labels alike).
fn pem_blocks(pem: &[u8], kind: &str) -> usize {
    String::from_utf8_lossy(pem)
        .lines()
        .filter(|l| {
            l.trim()
                .strip_prefix("-----BEGIN ")
                .and_then(|r| r.strip_suffix("-----"))
                .is_some_and(|label| label.ends_with(kind))
        })
        .count()
}

/// What a source fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// `metrics-data-source` (and `dcgm-data-source`, `multicluster-metrics-data-source`):
    /// GETs `path` on each endpoint (its metrics host: see
    /// [`METRICS_HOST_LABEL`](crate::discovery::METRICS_HOST_LABEL)), at `port` when set
    /// (else the endpoint's own), every `interval` (`None`: the picker's scrape
    /// interval), over https when `tls` is set.
    Metrics {
        /// The URL path.
        path: String,
        /// How often.
        interval: Option<Duration>,
        /// A port other than the endpoint's (a DCGM exporter's, say).
        port: Option<u16>,
        /// `scheme: https` and its certificates; `None`: plain http.
        tls: Option<TlsSettings>,
    },
    /// `kv-events-data-source`: subscribes to each endpoint's KV-event stream.
    KvEvents,
}

/// The most of a peer cluster's exposition a `multicluster-metrics-data-source` reads
/// (the router's cap: a broken or hostile peer cannot exhaust memory).
pub const MULTICLUSTER_MAX_RESPONSE_BYTES: usize = 8 << 20;

impl SourceKind {
    /// From a `metrics-data-source`'s parameters: `scheme` (`http` | `https`), `path`,
    /// `port`, `interval`, and for https `caCertPath`, `clientCertPath` + `clientKeyPath`
    /// (both or neither) and `insecureSkipVerify` (default true, the router's). The
    /// certificate files are read now: a missing or invalid one fails the load.
    pub fn metrics_from_params(p: &serde_json::Value) -> Result<Self, String> {
        Self::metrics_with_defaults(p, "http", true)
    }

    /// From a `multicluster-metrics-data-source`'s parameters: those of
    /// [`metrics_from_params`](Self::metrics_from_params), but `scheme` defaults to
    /// `https` and `insecureSkipVerify` to false, since a scrape across clusters
    /// crosses a trust boundary.
    pub fn multicluster_metrics_from_params(p: &serde_json::Value) -> Result<Self, String> {
        Self::metrics_with_defaults(p, "https", false)
    }

    fn metrics_with_defaults(p: &serde_json::Value, scheme: &str, skip_verify: bool) -> Result<Self, String> {
        let q = crate::plugins::Params(p);
        q.check(&[
            "scheme",
            "path",
            "port",
            "insecureSkipVerify",
            "caCertPath",
            "clientCertPath",
            "clientKeyPath",
            "interval",
        ])?;
        let scheme = q.string("scheme")?.unwrap_or_else(|| scheme.into());
        if scheme != "http" && scheme != "https" {
            return Err(format!("parameter scheme: {scheme:?} is not supported (http or https)"));
        }
        let file = |k: &str| -> Result<Option<std::path::PathBuf>, String> {
            Ok(q.string(k)?.filter(|s| !s.is_empty()).map(Into::into))
        };
        let settings = TlsSettings {
            ca_cert: file("caCertPath")?,
            client_cert: file("clientCertPath")?,
            client_key: file("clientKeyPath")?,
            insecure_skip_verify: q.bool("insecureSkipVerify", skip_verify)?,
        };
        if settings.client_cert.is_some() != settings.client_key.is_some() {
            return Err("parameters clientCertPath and clientKeyPath: set both or neither".into());
        }
        // The router reads the files only for https (an http source ignores them).
        let tls = if scheme == "https" {
            settings.validate()?;
            Some(settings)
        } else {
            None
        };
        let path = q.string("path")?.unwrap_or_else(|| "/metrics".into());
        if !path.starts_with('/') {
            return Err(format!("parameter path: {path:?} must start with /"));
        }
        let interval = q
            .string("interval")?
            .map(|s| crate::plugins::parse_duration(&s).map_err(|e| format!("parameter interval: {e}")))
            .transpose()?;
        let port = match q.u64("port", 0)? {
            0 if q.0.get("port").is_none_or(serde_json::Value::is_null) => None,
            p => Some(
                u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| format!("parameter port: {p} is not a port"))?,
            ),
        };
        Ok(SourceKind::Metrics { path, interval, port, tls })
    }

    /// From a `dcgm-data-source`'s parameters: a DCGM exporter on each endpoint's host
    /// (`port` 9400, `path` /metrics, `scheme` http or https, `insecureSkipVerify`
    /// default true, `interval`; the router's DCGM source takes no certificate files).
    /// `useNodeAddress` (scraping the node's address rather than the pod's) needs the
    /// Kubernetes reflector and is refused.
    pub fn dcgm_from_params(p: &serde_json::Value) -> Result<Self, String> {
        let q = crate::plugins::Params(p);
        q.check(&["scheme", "path", "port", "insecureSkipVerify", "useNodeAddress", "interval"])?;
        if q.bool("useNodeAddress", false)? {
            return Err(
                "parameter useNodeAddress: node addresses are not known to llmd yet (needs Kubernetes discovery)"
                    .into(),
            );
        }
        let mut plain = p.clone();
        if let Some(o) = plain.as_object_mut() {
            o.remove("useNodeAddress");
            o.entry("port").or_insert(9400.into());
        } else {
            plain = serde_json::json!({"port": 9400});
        }
        Self::metrics_from_params(&plain)
    }
}

/// `dcgm-extractor`: a DCGM exporter's `DCGM_FI_DEV_GPU_UTIL` (percent) for the
/// endpoint's pod — the samples whose `pod` label names it, or all of them when the
/// exporter labels none — as the attribute `GPUUtilization`, the busiest GPU's share
/// in [0, 1].
#[derive(Debug, Default)]
pub struct DcgmExtractor;

/// The attribute [`DcgmExtractor`] writes (llm-d-router's name).
pub const GPU_UTILIZATION: &str = "GPUUtilization";

impl Extractor for DcgmExtractor {
    fn extract(&self, endpoint: &Endpoint, data: SourceData<'_>, out: &mut Extracted) {
        let SourceData::Metrics(text) = data;
        // The pod's name: the endpoint id without a namespace.
        let pod = endpoint.id.rsplit('/').next().unwrap_or(&endpoint.id);
        let mut any_pod_label = false;
        let mut mine: Option<f64> = None;
        let mut all: Option<f64> = None;
        for (name, labels, value) in crate::scrape::samples(text) {
            if name != "DCGM_FI_DEV_GPU_UTIL" || !value.is_finite() {
                continue;
            }
            all = Some(all.map_or(value, |a: f64| a.max(value)));
            if let Some((_, p)) = labels.iter().find(|(k, _)| k == "pod") {
                any_pod_label = true;
                if p == pod {
                    mine = Some(mine.map_or(value, |m: f64| m.max(value)));
                }
            }
        }
        let util = if any_pod_label { mine } else { all };
        if let Some(u) = util {
            out.attributes.push((GPU_UTILIZATION.into(), AttributeValue::Float(u / 100.0)));
        }
    }
}

/// One source with the extractors (or KV-event consumers) it feeds.
#[derive(Clone)]
pub struct SourceBinding {
    /// The source plugin's name.
    pub name: String,
    /// What it fetches.
    pub kind: SourceKind,
    /// Extractors of a metrics source, by plugin name.
    pub extractors: Vec<(String, Arc<dyn Extractor>)>,
    /// Consumers of a KV-event source.
    pub consumers: Vec<Arc<dyn KvEventConsumer>>,
}

impl std::fmt::Debug for SourceBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBinding")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("extractors", &self.extractors.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("consumers", &self.consumers.len())
            .finish()
    }
}

/// The resolved data layer: what to fetch per endpoint and who reads it.
#[derive(Debug, Clone, Default)]
pub struct DataLayerConfig {
    /// Sources in config order.
    pub sources: Vec<SourceBinding>,
}

impl DataLayerConfig {
    /// The defaults: scrape `/metrics` into the core extractor; KV events to `consumers`.
    pub fn defaults(consumers: Vec<Arc<dyn KvEventConsumer>>) -> Self {
        let mut sources = vec![SourceBinding {
            name: "metrics-data-source".into(),
            kind: SourceKind::Metrics { path: "/metrics".into(), interval: None, port: None, tls: None },
            extractors: vec![("core-metrics-extractor".into(), Arc::new(CoreMetricsExtractor::default()))],
            consumers: Vec::new(),
        }];
        if !consumers.is_empty() {
            sources.push(SourceBinding {
                name: "kv-events-data-source".into(),
                kind: SourceKind::KvEvents,
                extractors: Vec::new(),
                consumers,
            });
        }
        DataLayerConfig { sources }
    }

    /// Every KV-event consumer fed by some source.
    pub fn consumers(&self) -> Vec<Arc<dyn KvEventConsumer>> {
        self.sources.iter().flat_map(|s| s.consumers.iter().cloned()).collect()
    }
}

/// Runs a metrics source's extractors over one fetch.
pub fn extract_all(binding: &SourceBinding, endpoint: &Endpoint, data: SourceData<'_>) -> Extracted {
    let mut out = Extracted::default();
    for (_, x) in &binding.extractors {
        x.extract(endpoint, data, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dcgm_extractor_reads_the_busiest_gpu_of_the_endpoint_s_pod() {
        let text = "# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n\
            DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",pod=\"vllm-0\",namespace=\"ns\"} 35\n\
            DCGM_FI_DEV_GPU_UTIL{gpu=\"1\",pod=\"vllm-0\",namespace=\"ns\"} 80\n\
            DCGM_FI_DEV_GPU_UTIL{gpu=\"2\",pod=\"vllm-1\",namespace=\"ns\"} 99\n\
            DCGM_FI_DEV_FB_USED{gpu=\"0\",pod=\"vllm-0\"} 1000\n";
        let got = |id: &str, text: &str| {
            let mut out = Extracted::default();
            DcgmExtractor.extract(
                &Endpoint::new(id, "10.0.0.1:8000", crate::endpoint::Role::Both),
                SourceData::Metrics(text),
                &mut out,
            );
            out.attributes
        };
        assert_eq!(got("ns/vllm-0", text), [(GPU_UTILIZATION.to_string(), AttributeValue::Float(0.8))]);
        assert_eq!(got("vllm-1", text), [(GPU_UTILIZATION.to_string(), AttributeValue::Float(0.99))]);
        assert!(got("vllm-9", text).is_empty(), "another pod's GPUs are not this one's");
        // An exporter that labels no pods: every GPU it reports.
        assert_eq!(
            got("any", "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 12\n"),
            [(GPU_UTILIZATION.to_string(), AttributeValue::Float(0.12))]
        );
        let k = SourceKind::dcgm_from_params(&serde_json::json!({"interval": "1s"})).unwrap();
        assert_eq!(
            k,
            SourceKind::Metrics {
                path: "/metrics".into(),
                interval: Some(Duration::from_secs(1)),
                port: Some(9400),
                tls: None
            }
        );
        assert!(
            SourceKind::dcgm_from_params(&serde_json::json!({"useNodeAddress": true}))
                .unwrap_err()
                .contains("useNodeAddress")
        );
        let m = SourceKind::metrics_from_params(&serde_json::json!({"port": 9090})).unwrap();
        assert!(matches!(m, SourceKind::Metrics { port: Some(9090), .. }));
        assert!(SourceKind::metrics_from_params(&serde_json::json!({"port": 70000})).is_err());
    }
    use crate::endpoint::Role;

    const VLLM: &str = "vllm:num_requests_waiting{engine=\"0\"} 3\nvllm:num_requests_waiting{engine=\"1\"} 2\n\
        vllm:num_requests_running 4\nvllm:kv_cache_usage_perc 0.25\ncustom_queue_depth{tier=\"gold\"} 7\n\
        custom_queue_depth{tier=\"bronze\"} 100\nmy_queue 11\n";

    #[test]
    fn core_extractor_writes_metrics_and_llm_d_attributes() {
        let x = CoreMetricsExtractor::default();
        let ep = Endpoint::new("a", "a:1", Role::Both);
        let mut out = Extracted::default();
        x.extract(&ep, SourceData::Metrics(VLLM), &mut out);
        let m = out.metrics.clone().unwrap();
        assert_eq!((m.waiting, m.running, m.kv_usage), (5, 4, 0.25));
        assert!(out.attributes.contains(&(attributes::WAITING_QUEUE_SIZE.into(), AttributeValue::Int(5))));
        assert!(out.attributes.contains(&(attributes::KV_CACHE_USAGE_PERCENT.into(), AttributeValue::Float(0.25))));
    }

    #[test]
    fn engine_configs_rename_series_and_add_custom_attributes() {
        // The custom-engine example of llm-d's core-metrics-extractor README.
        let p = serde_json::json!({"engineConfigs": [{
            "name": "my-custom-engine",
            "queuedRequestsSpec": "my_queue",
            "customMetrics": [{"attributeKey": "custom.queue_depth", "metricSpec": "custom_queue_depth{tier=gold}"}]
        }]});
        let x = CoreMetricsExtractor::from_params(&p).unwrap();
        let mut ep = Endpoint::new("a", "a:1", Role::Both);
        ep.labels.insert("llm-d.ai/engine-type".into(), "my-custom-engine".into());
        let mut out = Extracted::default();
        x.extract(&ep, SourceData::Metrics(VLLM), &mut out);
        assert_eq!(out.metrics.unwrap().waiting, 11);
        assert!(out.attributes.contains(&("custom.queue_depth".into(), AttributeValue::Float(7.0))));
        // Endpoints of other engines keep vLLM's names and get no custom attribute.
        let mut out = Extracted::default();
        x.extract(&Endpoint::new("b", "b:1", Role::Both), SourceData::Metrics(VLLM), &mut out);
        assert_eq!(out.metrics.unwrap().waiting, 5);
        assert!(!out.attributes.iter().any(|(k, _)| k == "custom.queue_depth"));
        let bad = serde_json::json!({"engineConfigs": [{"name": "e", "customMetrics": [{"attributeKey": "k"}]}]});
        assert!(CoreMetricsExtractor::from_params(&bad).unwrap_err().contains("metricSpec"));
    }

    #[test]
    fn metric_specs() {
        assert_eq!(MetricSpec::parse("custom_queue_depth{tier=\"gold\"}").unwrap().value(VLLM), Some(7.0));
        assert_eq!(MetricSpec::parse("vllm:num_requests_waiting").unwrap().value(VLLM), Some(5.0));
        assert_eq!(MetricSpec::parse("absent").unwrap().value(VLLM), None);
        assert!(MetricSpec::parse("{a=b}").is_err());
        assert!(MetricSpec::parse("m{a}").is_err());
        assert!(matches!(
            SourceKind::metrics_from_params(&serde_json::json!({"scheme": "https"})).unwrap(),
            SourceKind::Metrics { tls: Some(TlsSettings { insecure_skip_verify: true, .. }), .. }
        ));
        assert!(SourceKind::metrics_from_params(&serde_json::json!({"scheme": "ftp"})).unwrap_err().contains("scheme"));
        assert_eq!(
            SourceKind::metrics_from_params(&serde_json::json!({"interval": "1s"})).unwrap(),
            SourceKind::Metrics {
                path: "/metrics".into(),
                interval: Some(Duration::from_secs(1)),
                port: None,
                tls: None
            }
        );
    }
}
