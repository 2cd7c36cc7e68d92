//! Discovery sources: where endpoints come from. Each writes the [datastore](mod@crate::datastore)
//! through one trait, [`Discovery`]; a runtime calls [`Discovery::sync`] at start and
//! then every [`Discovery::poll_interval`].
//!
//! - [`StaticDiscovery`]: a fixed list (`llmd epp --endpoint NAME=HOST:PORT,...`).
//! - [`FileDiscovery`]: an endpoints file, YAML or JSON, re-read when it changes
//!   (`llmd epp --endpoints-file F`). It reads llm-d's `file-discovery` format
//!   (`endpoints: [{name, namespace, address, port, labels}]`) plus llmd's fields
//!   `role` and `kvEvents`; an entry that does not validate is logged and skipped, a
//!   file that does not parse keeps the endpoints of the last good read. Labels are
//!   kept as given: an `llm-d.ai/role` value that names no role does not drop the
//!   endpoint (llm-d's file discovery does not read it either); the role filters
//!   leave it out.
//!
//! Kubernetes (`llmd-k8s`) is a third source behind the same trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::datastore::DatastoreWriter;
use crate::endpoint::{Endpoint, Role};
use crate::error::{Result, SchedulerError};

/// llm-d's label naming a pod's P/D role.
pub const ROLE_LABEL: &str = "llm-d.ai/role";

/// The label a `multicluster-file-discovery` endpoint carries when its metrics are
/// scraped somewhere other than its address: `host:port`, from the peer's
/// `metricsAddress` label and its `metricsPort` label (default the endpoint's port).
/// Metrics sources scrape this host instead of the address. Only the multicluster
/// discovery writes it; the pod discovery drops it from a file, as the router's pod
/// discovery never reads cluster-only labels.
pub const METRICS_HOST_LABEL: &str = "llmd.ai/metrics-host";

/// The largest endpoints file read (llm-d's limit too).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// What one [`Discovery::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Endpoints added.
    pub added: usize,
    /// Endpoints removed.
    pub removed: usize,
    /// Whether the source had changed since the last sync.
    pub changed: bool,
}

/// A source of endpoints.
pub trait Discovery: Send {
    /// Names the source (endpoints it adds are its own: a sync removes only those).
    fn name(&self) -> &str;

    /// Brings the datastore up to date with the source. An error leaves the datastore
    /// as it was.
    fn sync(&mut self, writer: &DatastoreWriter) -> Result<SyncOutcome>;

    /// How often to sync again; `None` for a source that never changes.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}

/// Parses `NAME=HOST:PORT[,kv=tcp://HOST:PORT][,role=prefill|decode|both]`, the form of
/// `llmd epp --endpoint`.
pub fn parse_endpoint_spec(spec: &str) -> Result<Endpoint> {
    let bad = |reason: String| SchedulerError::config("--endpoint", spec, reason);
    let mut parts = spec.split(',');
    let first = parts.next().unwrap_or_default();
    let (name, addr) = first.split_once('=').ok_or_else(|| bad("expected NAME=HOST:PORT".into()))?;
    if name.is_empty() {
        return Err(bad("the name is empty".into()));
    }
    check_address(addr).map_err(bad)?;
    let mut ep = Endpoint::new(name, addr, Role::Both);
    for p in parts {
        match p.split_once('=') {
            Some(("kv", v)) => ep.kv_events = Some(v.to_string()),
            Some(("role", v)) => ep.role = Role::parse(v).ok_or_else(|| bad(format!("unknown role {v:?}")))?,
            _ => return Err(bad(format!("unknown option {p:?} (kv=..., role=...)"))),
        }
    }
    Ok(ep)
}

// HOST:PORT with a port in 1..=65535 (IPv6 hosts in brackets).
fn check_address(addr: &str) -> std::result::Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("{addr:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not in 1..65535")),
    }
}

/// A fixed list of endpoints.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    endpoints: Vec<Endpoint>,
    done: bool,
}

impl StaticDiscovery {
    /// The list.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        StaticDiscovery { endpoints, done: false }
    }
}

impl Discovery for StaticDiscovery {
    fn name(&self) -> &str {
        "static"
    }

    fn sync(&mut self, writer: &DatastoreWriter) -> Result<SyncOutcome> {
        if self.done {
            return Ok(SyncOutcome::default());
        }
        self.done = true;
        let (added, removed) = writer.reconcile(self.name(), self.endpoints.clone());
        Ok(SyncOutcome { added, removed, changed: true })
    }
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(default)]
    endpoints: Vec<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEntry {
    name: String,
    namespace: Option<String>,
    address: String,
    // llm-d writes the port as a string; numbers are accepted too.
    port: serde_yaml_ng::Value,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    role: Option<String>,
    kv_events: Option<String>,
}

/// An endpoints file, re-read when its contents change.
#[derive(Debug)]
pub struct FileDiscovery {
    path: PathBuf,
    // `file:<path>`: two files are two sources, each owning its own endpoints.
    name: String,
    poll: Option<Duration>,
    last: Option<Vec<u8>>,
    // `multicluster-file-discovery`: entries are peer clusters (see `multicluster`).
    multicluster: bool,
}

impl FileDiscovery {
    /// Reads `path`; `poll` is how often to look for changes (`None`: read once).
    pub fn new(path: impl Into<PathBuf>, poll: Option<Duration>) -> Self {
        let path = path.into();
        FileDiscovery { name: format!("file:{}", path.display()), path, poll, last: None, multicluster: false }
    }

    /// `multicluster-file-discovery`: the same file format, whose entries are peer
    /// clusters (reached at their gateway, a hostname or an IP); an entry's
    /// `metricsAddress` label (with `metricsPort`, default its port) sets where its
    /// metrics are scraped ([`METRICS_HOST_LABEL`]).
    pub fn multicluster(path: impl Into<PathBuf>, poll: Option<Duration>) -> Self {
        FileDiscovery { multicluster: true, ..Self::new(path, poll) }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Parses an endpoints file. Entries that do not validate are returned as warnings
    /// (`entry N (name): reason`) and left out; a document that does not parse is an error.
    pub fn parse(text: &str, file: &str) -> Result<(Vec<Endpoint>, Vec<String>)> {
        Self::parse_as(text, file, false)
    }

    /// Parses an endpoints file of peer clusters, as [`multicluster`](Self::multicluster)
    /// reads it.
    pub fn parse_multicluster(text: &str, file: &str) -> Result<(Vec<Endpoint>, Vec<String>)> {
        Self::parse_as(text, file, true)
    }

    fn parse_as(text: &str, file: &str, multicluster: bool) -> Result<(Vec<Endpoint>, Vec<String>)> {
        let raw: RawFile =
            serde_yaml_ng::from_str(text).map_err(|e| SchedulerError::config(file, "(document)", e.to_string()))?;
        let mut out: Vec<Endpoint> = Vec::new();
        let mut warnings = Vec::new();
        for (i, v) in raw.endpoints.into_iter().enumerate() {
            match entry(v, multicluster) {
                Ok(e) if out.iter().any(|o| o.id == e.id) => {
                    warnings.push(format!("entry {i} ({}): the name appears twice; the first is kept", e.id))
                }
                Ok(e) => out.push(e),
                Err(reason) => warnings.push(format!("entry {i}: {reason}")),
            }
        }
        Ok((out, warnings))
    }
}

fn entry(v: serde_yaml_ng::Value, multicluster: bool) -> std::result::Result<Endpoint, String> {
    let raw: RawEntry = serde_yaml_ng::from_value(v).map_err(|e| e.to_string())?;
    let at = |r: String| format!("({}) {r}", raw.name);
    if raw.name.is_empty() {
        return Err("the name is empty".into());
    }
    let port = match &raw.port {
        serde_yaml_ng::Value::String(s) => s.clone(),
        serde_yaml_ng::Value::Number(n) => n.to_string(),
        other => return Err(at(format!("port {other:?} is neither a number nor a string"))),
    };
    let host = if raw.address.contains(':') && !raw.address.starts_with('[') {
        format!("[{}]", raw.address)
    } else {
        raw.address.clone()
    };
    let address = format!("{host}:{port}");
    check_address(&address).map_err(at)?;
    let id = match raw.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{}", raw.name),
        _ => raw.name.clone(),
    };
    // llmd's own `role` field must name a role. The `llm-d.ai/role` label is kept as it
    // is, whatever its value, as llm-d's file discovery keeps labels: a value that is no
    // role leaves the endpoint to filters that read it as such (no role filter takes
    // it; `by-label` and `label-selector-filter` may), and its role field `both`.
    let role = match raw.role.as_deref() {
        Some(r) => Role::parse(r).ok_or_else(|| at(format!("unknown role {r:?}")))?,
        None => raw.labels.get(ROLE_LABEL).and_then(|l| Role::parse(l)).unwrap_or(Role::Both),
    };
    let mut labels = raw.labels;
    labels.remove(METRICS_HOST_LABEL);
    if multicluster && let Some(host) = labels.get("metricsAddress").filter(|a| !a.is_empty()) {
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.clone() };
        let port = labels.get("metricsPort").filter(|p| !p.is_empty()).unwrap_or(&port);
        let metrics = format!("{host}:{port}");
        check_address(&metrics).map_err(|e| at(format!("metricsAddress/metricsPort: {e}")))?;
        labels.insert(METRICS_HOST_LABEL.into(), metrics);
    }
    let mut ep = Endpoint::new(id, address, role);
    ep.labels = labels;
    ep.kv_events = raw.kv_events;
    Ok(ep)
}

impl Discovery for FileDiscovery {
    fn name(&self) -> &str {
        &self.name
    }

    fn sync(&mut self, writer: &DatastoreWriter) -> Result<SyncOutcome> {
        let file = self.path.display().to_string();
        let read_err = |e: std::io::Error| SchedulerError::config(&file, "(file)", e.to_string());
        let size = std::fs::metadata(&self.path).map_err(read_err)?.len();
        if size > MAX_FILE_BYTES {
            return Err(SchedulerError::config(
                &file,
                "(file)",
                format!("{size} bytes is over the {MAX_FILE_BYTES}-byte limit"),
            ));
        }
        let bytes = std::fs::read(&self.path).map_err(read_err)?;
        if self.last.as_deref() == Some(bytes.as_slice()) {
            return Ok(SyncOutcome::default());
        }
        let text =
            String::from_utf8(bytes.clone()).map_err(|_| SchedulerError::config(&file, "(file)", "not UTF-8 text"))?;
        let (endpoints, warnings) = Self::parse_as(&text, &file, self.multicluster)?;
        for w in &warnings {
            tracing::warn!(file = %file, "endpoints file: {w}; skipped");
        }
        let (added, removed) = writer.reconcile(self.name(), endpoints);
        self.last = Some(bytes);
        tracing::info!(file = %file, added, removed, endpoints = writer.reader().len(), "endpoints file read");
        Ok(SyncOutcome { added, removed, changed: true })
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::datastore::datastore;
    use std::sync::Arc;

    #[test]
    fn reads_llm_d_file_discovery_format() {
        // The example in llm-d's file-discovery README, plus llmd's own fields.
        let text = r#"
endpoints:
  - name: vllm-0
    address: "10.0.0.1"
    port: "8000"
  - name: vllm-1
    namespace: prod
    address: "10.0.0.2"
    port: 8000
    labels:
      llm-d.ai/role: decode
  - name: local
    address: localhost
    port: "8001"
    role: prefill
    kvEvents: tcp://127.0.0.1:5557
"#;
        let (eps, warnings) = FileDiscovery::parse(text, "f.yaml").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(eps[0].address, "10.0.0.1:8000");
        assert_eq!((eps[1].id.as_str(), eps[1].role), ("prod/vllm-1", Role::Decode));
        assert_eq!(eps[2].kv_events.as_deref(), Some("tcp://127.0.0.1:5557"));
        assert_eq!(eps[2].role, Role::Prefill);
        // JSON is YAML too.
        let (eps, _) =
            FileDiscovery::parse(r#"{"endpoints":[{"name":"a","address":"::1","port":"9"}]}"#, "f.json").unwrap();
        assert_eq!(eps[0].address, "[::1]:9");
    }

    #[test]
    fn bad_entries_are_skipped_with_a_reason_and_bad_files_fail() {
        let text = "endpoints:\n- {name: a, address: 10.0.0.1, port: '0'}\n- {name: b, address: 10.0.0.2, port: '8000', role: chef}\n- {address: x, port: '1'}\n- {name: c, address: 10.0.0.3, port: '8000'}\n";
        let (eps, warnings) = FileDiscovery::parse(text, "f.yaml").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(warnings.len(), 3);
        assert!(warnings[0].contains("port \"0\""), "{warnings:?}");
        assert!(warnings[1].contains("chef"), "{warnings:?}");
        assert!(warnings[2].contains("name"), "{warnings:?}");
        let err = FileDiscovery::parse("endpoints: {oops", "f.yaml").unwrap_err().to_string();
        assert!(err.starts_with("f.yaml"), "{err}");
    }

    #[test]
    fn unknown_role_label_values_are_kept_as_llm_d_keeps_them() {
        use crate::plugin::Filter;
        use crate::plugins::filters::{ByLabel, DecodeFilter, EncodeFilter, PrefillFilter};
        // llm-d's file discovery passes labels through; whatever `llm-d.ai/role` says,
        // the endpoint is there. Only llmd's own `role` field must name a role.
        let text = "endpoints:\n\
                    - {name: gw, address: 10.0.0.1, port: '8000', labels: {llm-d.ai/role: router}}\n\
                    - {name: d, address: 10.0.0.2, port: '8000', labels: {llm-d.ai/role: decode}}\n\
                    - {name: bare, address: 10.0.0.3, port: '8000'}\n\
                    - {name: bad, address: 10.0.0.4, port: '8000', role: router}\n";
        let (eps, warnings) = FileDiscovery::parse(text, "f.yaml").unwrap();
        let ids: Vec<&str> = eps.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["gw", "d", "bare"]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("router"), "{warnings:?}");
        assert_eq!(eps[0].labels[ROLE_LABEL], "router", "the label is kept as given");
        assert_eq!(eps[0].role, Role::Both);
        // The router's role filters: none takes the unknown value (decode-filter takes
        // endpoints without the label, not with another value); a label filter can.
        let refs: Vec<&Endpoint> = eps.iter().collect();
        let run = |f: &dyn Filter| -> Vec<String> {
            f.filter(&mut Default::default(), &Default::default(), refs.clone()).iter().map(|e| e.id.clone()).collect()
        };
        assert_eq!(run(&DecodeFilter), ["d", "bare"]);
        assert!(run(&PrefillFilter).is_empty());
        assert!(run(&EncodeFilter).is_empty());
        let by_label =
            ByLabel::from_params(&serde_json::json!({"label": ROLE_LABEL, "validValues": ["router"]})).unwrap();
        assert_eq!(run(&by_label), ["gw"]);
    }

    #[test]
    fn file_changes_reconcile_and_a_broken_file_keeps_the_last_good_set() {
        let dir = std::env::temp_dir().join(format!("llmd-discovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.yaml");
        std::fs::write(
            &path,
            "endpoints:\n- {name: a, address: 127.0.0.1, port: 1}\n- {name: b, address: 127.0.0.1, port: 2}\n",
        )
        .unwrap();
        let w = datastore(Arc::new(ManualClock::new()));
        let mut d = FileDiscovery::new(&path, Some(Duration::from_secs(1)));
        assert_eq!(d.sync(&w).unwrap(), SyncOutcome { added: 2, removed: 0, changed: true });
        assert!(!d.sync(&w).unwrap().changed, "unchanged file, no work");
        std::fs::write(
            &path,
            "endpoints:\n- {name: b, address: 127.0.0.1, port: 2}\n- {name: c, address: 127.0.0.1, port: 3}\n",
        )
        .unwrap();
        assert_eq!(d.sync(&w).unwrap(), SyncOutcome { added: 1, removed: 1, changed: true });
        std::fs::write(&path, "endpoints: [").unwrap();
        assert!(d.sync(&w).is_err());
        let ids: Vec<String> = w.reader().snapshot().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["b", "c"]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn multicluster_entries_name_their_metrics_host() {
        // The router's multicluster example: peers by hostname, one publishing its
        // metrics elsewhere.
        let text = r#"
endpoints:
  - name: us-east
    address: gateway.us-east.example.com
    port: "443"
    labels: {metricsAddress: epp.us-east.example.com, metricsPort: "9090"}
  - name: eu-west
    address: gateway.eu-west.example.com
    port: "443"
    labels: {metricsAddress: 10.1.0.9}
  - name: ap-south
    address: 10.2.0.1
    port: "8443"
"#;
        let (eps, warnings) = FileDiscovery::parse_multicluster(text, "clusters.yaml").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let host = |i: usize| eps[i].labels.get(METRICS_HOST_LABEL).map(String::as_str);
        assert_eq!(eps[0].address, "gateway.us-east.example.com:443");
        assert_eq!(host(0), Some("epp.us-east.example.com:9090"));
        assert_eq!(host(1), Some("10.1.0.9:443"), "metricsPort defaults to the endpoint's port");
        assert_eq!(host(2), None);
        // The pod discovery reads no cluster-only labels, nor a planted metrics host.
        let planted = "endpoints:\n- {name: a, address: 10.0.0.1, port: 1, labels: {metricsAddress: x, llmd.ai/metrics-host: 'evil:1'}}\n";
        let (eps, _) = FileDiscovery::parse(planted, "f.yaml").unwrap();
        assert_eq!(eps[0].labels.get(METRICS_HOST_LABEL), None);
        let (eps, w) = FileDiscovery::parse_multicluster(
            "endpoints:\n- {name: a, address: h, port: 1, labels: {metricsAddress: m, metricsPort: '0'}}\n",
            "f.yaml",
        )
        .unwrap();
        assert!(eps.is_empty() && w[0].contains("metricsPort"), "{w:?}");
    }

    #[test]
    fn endpoint_specs() {
        let e = parse_endpoint_spec("a=127.0.0.1:8001,kv=tcp://127.0.0.1:5557,role=decode").unwrap();
        assert_eq!((e.id.as_str(), e.address.as_str(), e.role), ("a", "127.0.0.1:8001", Role::Decode));
        assert!(parse_endpoint_spec("a=127.0.0.1").unwrap_err().to_string().contains("HOST:PORT"));
        assert!(parse_endpoint_spec("a=h:1,x=y").unwrap_err().to_string().contains("unknown option"));
    }
}
