#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The objects `llmd k8s manifests` prints, checked strictly for every topology ×
//! workload × picker-replica combination: built-in kinds decode into k8s-openapi's types
//! and encode back unchanged (so no field is unknown), the InferencePool decodes into
//! this crate's type and validates against GAIE's published CRD, LeaderWorkerSets
//! validate against LWS's published CRD (`tests/fixtures`, each naming its source), and
//! the parts fit together: the pool selects the serving pods on their ports, the picker's
//! config loads, its flags and probes are llm-d's, and RBAC grants the Lease only with
//! leader election.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use llmd_k8s::discovery::pool_endpoints;
use llmd_k8s::manifests::schema::{round_trips, validate_custom_resource};
use llmd_k8s::manifests::{
    CONFIG_FILE, DECODE_MODEL_SERVER_PORT, ManifestOptions, PD_EPP_CONFIG, Topology, Workload, default_epp_config,
    lease_name, pool_selector, render, render_yaml,
};
use llmd_k8s::resources::{InferencePool, PoolView, decode};
use llmd_scheduler::{PluginRegistry, SchedulerConfig};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

/// The documents of a YAML stream as JSON, in order.
fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text).map(|d| serde::Deserialize::deserialize(d).expect("yaml")).collect()
}

fn crd_from(file: &str) -> Value {
    yaml_docs(&fixture(file)).into_iter().find(|d| d["kind"] == "CustomResourceDefinition").expect("a CRD")
}

fn lws_crd() -> &'static Value {
    static CRD: OnceLock<Value> = OnceLock::new();
    CRD.get_or_init(|| crd_from("lws-crd-leaderworkersets.yaml"))
}

fn pool_crd() -> &'static Value {
    static CRD: OnceLock<Value> = OnceLock::new();
    CRD.get_or_init(|| crd_from("gaie-crd-inferencepools.yaml"))
}

/// Every topology × workload × (1, 2) pickers, with one- and two-pod LWS groups, and a
/// CPU-only case.
fn combinations() -> Vec<ManifestOptions> {
    let mut all = Vec::new();
    for topology in [Topology::Aggregated, Topology::PrefillDecode] {
        for workload in [Workload::Deployment, Workload::LeaderWorkerSet] {
            for epp_replicas in [1, 2] {
                let groups: &[u32] = if workload == Workload::LeaderWorkerSet { &[1, 2] } else { &[1] };
                for &group_size in groups {
                    all.push(ManifestOptions {
                        namespace: "llm".into(),
                        pool: "qwen".into(),
                        topology,
                        workload,
                        epp_replicas,
                        group_size,
                        replicas: 2,
                        prefill_replicas: 3,
                        gpus_per_pod: 2,
                        ..Default::default()
                    });
                }
            }
        }
    }
    all.push(ManifestOptions { namespace: "llm".into(), pool: "qwen".into(), gpus_per_pod: 0, ..Default::default() });
    all
}

fn what(o: &ManifestOptions) -> String {
    format!("{}/{}/epp×{}/group {}/gpus {}", o.topology, o.workload, o.epp_replicas, o.group_size, o.gpus_per_pod)
}

fn kind(obj: &Value) -> (&str, &str) {
    (obj["apiVersion"].as_str().unwrap(), obj["kind"].as_str().unwrap())
}

fn of_kind<'a>(objects: &'a [Value], k: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == k).collect()
}

fn one<'a>(objects: &'a [Value], k: &str) -> &'a Value {
    let found = of_kind(objects, k);
    assert_eq!(found.len(), 1, "one {k} expected");
    found[0]
}

fn named<'a>(objects: &'a [Value], k: &str, name: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == k && o["metadata"]["name"] == name).unwrap_or_else(|| panic!("{k} {name}"))
}

/// Checks one object strictly against its type or CRD.
fn check_strict(obj: &Value) -> Result<(), Vec<String>> {
    match kind(obj) {
        ("apps/v1", "Deployment") => round_trips::<Deployment>(obj),
        ("v1", "Service") => round_trips::<Service>(obj),
        ("v1", "ServiceAccount") => round_trips::<ServiceAccount>(obj),
        ("v1", "ConfigMap") => round_trips::<ConfigMap>(obj),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trips::<Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trips::<RoleBinding>(obj),
        ("inference.networking.k8s.io/v1", "InferencePool") => {
            let pool: InferencePool = decode("InferencePool", obj.clone()).map_err(|e| vec![e.to_string()])?;
            PoolView::from_v1(&pool).map_err(|e| vec![e.to_string()])?;
            // Our type refuses unknown spec fields; the round trip catches the rest.
            round_trips::<InferencePool>(obj)?;
            validate_custom_resource(pool_crd(), obj)
        }
        ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet") => {
            validate_custom_resource(lws_crd(), obj)?;
            // The pod templates are Kubernetes' own type too.
            for t in ["leaderTemplate", "workerTemplate"] {
                let template = &obj["spec"]["leaderWorkerTemplate"][t];
                if !template.is_null() {
                    round_trips::<PodTemplateSpec>(template).map_err(|e| prefix(&format!("{t}: "), e))?;
                }
            }
            Ok(())
        }
        other => Err(vec![format!("unexpected object {other:?}")]),
    }
}

fn prefix(p: &str, errors: Vec<String>) -> Vec<String> {
    errors.into_iter().map(|e| format!("{p}{e}")).collect()
}

/// A model-server workload's pod templates: (serving, other) — the pod that serves the
/// API, and for multi-node LeaderWorkerSets the workers.
fn templates(workload: &Value) -> (PodTemplateSpec, Option<PodTemplateSpec>) {
    let t = |v: &Value| -> PodTemplateSpec { serde_json::from_value(v.clone()).unwrap() };
    match workload["kind"].as_str().unwrap() {
        "Deployment" => (t(&workload["spec"]["template"]), None),
        "LeaderWorkerSet" => {
            let lwt = &workload["spec"]["leaderWorkerTemplate"];
            if lwt["leaderTemplate"].is_null() {
                (t(&lwt["workerTemplate"]), None)
            } else {
                (t(&lwt["leaderTemplate"]), Some(t(&lwt["workerTemplate"])))
            }
        }
        other => panic!("{other} is not a model-server workload"),
    }
}

fn model_servers(objects: &[Value]) -> Vec<&Value> {
    objects
        .iter()
        .filter(|o| {
            o["kind"] == "LeaderWorkerSet"
                || (o["kind"] == "Deployment"
                    && o["metadata"]["labels"]["app.kubernetes.io/component"] == "model-server")
        })
        .collect()
}

fn pod_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn all_containers(t: &PodTemplateSpec) -> Vec<Container> {
    let spec = t.spec.clone().unwrap();
    spec.init_containers.unwrap_or_default().into_iter().chain(spec.containers).collect()
}

fn container<'a>(t: &'a PodTemplateSpec, name: &str) -> &'a Container {
    let spec = t.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("container {name}"))
}

fn epp_container(objects: &[Value]) -> (Deployment, Container) {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "Deployment" && o["metadata"]["labels"]["app.kubernetes.io/component"] == "endpoint-picker"
        })
        .collect();
    assert_eq!(found.len(), 1);
    let d: Deployment = serde_json::from_value(found[0].clone()).unwrap();
    let c = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
    (d, c)
}

/// `--flag value` and `--flag=value` pairs, as Go's flag packages read them; a flag
/// followed by another flag (or nothing) is a boolean `true`.
fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].strip_prefix("--").unwrap_or_else(|| panic!("{:?} is not a flag", args[i]));
        if let Some((k, v)) = a.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        } else if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) {
            out.insert(a.to_string(), args[i + 1].clone());
            i += 1;
        } else {
            out.insert(a.to_string(), "true".to_string());
        }
        i += 1;
    }
    out
}

#[test]
fn every_object_of_every_combination_is_strict() {
    for opts in combinations() {
        let w = what(&opts);
        let objects = render(&opts).unwrap_or_else(|e| panic!("{w}: {e}"));
        for obj in &objects {
            check_strict(obj).unwrap_or_else(|e| panic!("{w}: {} {}: {e:#?}", obj["kind"], obj["metadata"]["name"]));
            assert_eq!(obj["metadata"]["namespace"], opts.namespace.as_str(), "{w}: {}", obj["kind"]);
        }
        let kinds: Vec<&str> = objects.iter().map(|o| kind(o).1).collect();
        let servers = if opts.topology == Topology::PrefillDecode { 2 } else { 1 };
        let server_kind = if opts.workload == Workload::Deployment { "Deployment" } else { "LeaderWorkerSet" };
        let mut want =
            vec!["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "InferencePool"];
        want.extend(std::iter::repeat_n(server_kind, servers));
        assert_eq!(kinds, want, "{w}");
        // Every name is unique per kind.
        let names: BTreeSet<(&str, &str)> =
            objects.iter().map(|o| (kind(o).1, o["metadata"]["name"].as_str().unwrap())).collect();
        assert_eq!(names.len(), objects.len(), "{w}");
    }
}

#[test]
fn the_pool_selects_the_serving_pods_on_their_ports() {
    for opts in combinations() {
        let w = what(&opts);
        let objects = render(&opts).unwrap();
        let pool: InferencePool = decode("pool", one(&objects, "InferencePool").clone()).unwrap();
        let view = PoolView::from_v1(&pool).unwrap();
        assert_eq!(view.selector, pool_selector(&opts), "{w}");
        assert_eq!(view.target_ports, [opts.target_port], "{w}");

        let servers = model_servers(&objects);
        let mut roles = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let (serving, workers) = templates(server);
            let labels = pod_labels(&serving);
            assert!(selects(&view.selector, &labels), "{w}: {} {labels:?}", server["metadata"]["name"]);
            assert_eq!(labels["llm-d.ai/model"], "Qwen3-0.6B", "{w}");
            // The target port is a container port of the serving pod.
            let ports: BTreeSet<u16> = all_containers(&serving)
                .iter()
                .flat_map(|c| c.ports.clone().unwrap_or_default())
                .map(|p| u16::try_from(p.container_port).unwrap())
                .collect();
            assert!(view.target_ports.iter().all(|p| ports.contains(p)), "{w}: {ports:?}");
            // Multi-node workers are not endpoints: they serve no API.
            if let Some(workers) = workers {
                assert!(!selects(&view.selector, &pod_labels(&workers)), "{w}: workers selected");
                assert_eq!(pod_labels(&workers).get("llm-d.ai/role"), labels.get("llm-d.ai/role"), "{w}");
            }
            // Discovery turns a ready pod of this template into one endpoint on the
            // target port, with the template's role.
            let pod = Pod {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(format!("server-{i}")),
                    namespace: Some(opts.namespace.clone()),
                    labels: Some(labels.clone()),
                    ..Default::default()
                },
                spec: serving.spec.clone(),
                status: Some(
                    serde_json::from_value(json!({"podIP": format!("10.0.0.{i}"),
                    "conditions": [{"type": "Ready", "status": "True"}]}))
                    .unwrap(),
                ),
            };
            let eps = pool_endpoints(&view, [&pod]);
            assert_eq!(eps.len(), 1, "{w}");
            assert_eq!(eps[0].address, format!("10.0.0.{i}:{}", opts.target_port), "{w}");
            roles.push(eps[0].role);
        }
        use llmd_scheduler::Role::*;
        let want: &[llmd_scheduler::Role] =
            if opts.topology == Topology::PrefillDecode { &[Prefill, Decode] } else { &[Both] };
        assert_eq!(roles, want, "{w}");

        // The picker's own pods are not in the pool.
        let (epp, _) = epp_container(&objects);
        let epp_labels = epp.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert!(!selects(&view.selector, &epp_labels), "{w}");
    }
}

#[test]
fn model_servers_run_vllm_as_llm_d_does() {
    let pd = ManifestOptions {
        topology: Topology::PrefillDecode,
        model_server_args: vec!["--max-model-len=4096".into(), "--served-model-name".into(), "it's".into()],
        gpus_per_pod: 4,
        ..Default::default()
    };
    let objects = render(&pd).unwrap();
    let decode = named(&objects, "Deployment", "llmd-decode");
    let prefill = named(&objects, "Deployment", "llmd-prefill");
    assert_eq!(prefill["spec"]["replicas"], 1);
    let (t, _) = templates(decode);
    let vllm = container(&t, "vllm");
    assert_eq!(vllm.command.as_deref().unwrap(), ["vllm", "serve"]);
    let args = vllm.args.clone().unwrap();
    assert_eq!(args[0], "Qwen/Qwen3-0.6B");
    assert!(args.contains(&format!("--port={DECODE_MODEL_SERVER_PORT}")), "{args:?}");
    assert!(args.contains(&"--tensor-parallel-size=4".to_string()), "{args:?}");
    let kv = args.iter().position(|a| a == "--kv-transfer-config").unwrap();
    let kv: Value = serde_json::from_str(&args[kv + 1]).unwrap();
    assert_eq!(kv, json!({"kv_connector": "NixlConnector", "kv_role": "kv_both"}));
    // User arguments come last, so they win.
    assert_eq!(args[args.len() - 3..], ["--max-model-len=4096", "--served-model-name", "it's"]);
    let gpus = &vllm.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"];
    assert_eq!(gpus.0, "4");
    let env: BTreeMap<_, _> = vllm.env.iter().flatten().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"].value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path,
        "status.podIP"
    );
    let probe = vllm.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.path.as_deref(), Some("/health"));
    // The routing sidecar fronts vLLM on the target port, as a native sidecar.
    let sidecar = container(&t, "routing-proxy");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let f = flags(sidecar.args.as_deref().unwrap());
    assert_eq!(f["port"], "8000");
    assert_eq!(f["model-server-port"], DECODE_MODEL_SERVER_PORT.to_string());
    assert_eq!((f["kv-connector"].as_str(), f["secure-proxy"].as_str()), ("nixlv2", "false"));
    assert_eq!(sidecar.ports.as_ref().unwrap()[0].container_port, 8000);
    // Prefill pods serve on the target port themselves, without a sidecar.
    let (pt, _) = templates(prefill);
    assert!(pt.spec.as_ref().unwrap().init_containers.is_none());
    assert!(container(&pt, "vllm").args.as_ref().unwrap().contains(&"--port=8000".to_string()));

    // Multi-node: the leader starts Ray's head and serves across the group; workers join.
    let lws = ManifestOptions { workload: Workload::LeaderWorkerSet, group_size: 2, ..pd.clone() };
    let objects = render(&lws).unwrap();
    let decode = named(&objects, "LeaderWorkerSet", "llmd-decode");
    assert_eq!(decode["spec"]["leaderWorkerTemplate"]["size"], 2);
    assert_eq!(decode["spec"]["replicas"], 1);
    let (leader, workers) = templates(decode);
    let script = &container(&leader, "vllm").args.as_ref().unwrap()[0];
    assert!(script.contains("multi-node-serving.sh leader --ray_cluster_size=2 && exec vllm serve Qwen/Qwen3-0.6B"));
    assert!(script.contains("--tensor-parallel-size=4 --pipeline-parallel-size=2 --distributed-executor-backend=ray"));
    assert!(script.contains(r#"'{"kv_connector":"NixlConnector","kv_role":"kv_both"}'"#), "{script}");
    assert!(script.ends_with(r"--served-model-name 'it'\''s'"), "{script}");
    let worker = &workers.unwrap().spec.unwrap().containers[0];
    assert_eq!(
        worker.args.as_deref().unwrap(),
        [
            "bash /vllm-workspace/examples/online_serving/multi-node-serving.sh worker --ray_address=$(LWS_LEADER_ADDRESS)"
        ]
    );

    // CPU only: no GPU resources, no tensor parallelism.
    let cpu = render(&ManifestOptions { gpus_per_pod: 0, ..Default::default() }).unwrap();
    let (t, _) = templates(named(&cpu, "Deployment", "llmd-server"));
    let vllm = container(&t, "vllm");
    assert!(vllm.resources.is_none());
    assert!(!vllm.args.as_ref().unwrap().iter().any(|a| a.starts_with("--tensor-parallel-size")));
    assert!(!pod_labels(&t).contains_key("llm-d.ai/role"));
}

#[test]
fn the_picker_runs_with_llm_d_flags_and_the_charts_probes() {
    for opts in combinations() {
        let w = what(&opts);
        let objects = render(&opts).unwrap();
        let (epp, c) = epp_container(&objects);
        let spec = epp.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(i32::try_from(opts.epp_replicas).unwrap()), "{w}");
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"), "{w}");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(130), "{w}");

        assert_eq!(c.command.as_deref().unwrap(), ["llmd"], "{w}");
        let args = c.args.clone().unwrap();
        assert_eq!(args[0], "epp", "{w}");
        let f = flags(&args[1..]);
        assert_eq!(f["pool-name"], "qwen", "{w}");
        assert_eq!(f["pool-namespace"], "llm", "{w}");
        assert_eq!(f["pool-group"], "inference.networking.k8s.io", "{w}");
        assert_eq!(f["grpc-port"], "9002", "{w}");
        assert_eq!(f["grpc-health-port"], "9003", "{w}");
        assert_eq!(f["metrics-port"], "9090", "{w}");
        assert_eq!(f["http-port"], "0", "{w}");
        assert_eq!(f.contains_key("ha-enable-leader-election"), opts.epp_replicas > 1, "{w}");
        // The host is the pod IP, from the downward API.
        assert_eq!(f["host"], "$(POD_IP)", "{w}");
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value_from.clone().unwrap().field_ref.unwrap().field_path))
            .collect();
        assert_eq!(env["POD_IP"], "status.podIP", "{w}");
        assert_eq!(env["NAMESPACE"], "metadata.namespace", "{w}");

        // The config file is the ConfigMap's key, mounted where the flag says.
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        let volume = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
        let cm_name = &volume.config_map.as_ref().unwrap().name;
        let cm: ConfigMap = serde_json::from_value(named(&objects, "ConfigMap", cm_name).clone()).unwrap();
        let key = f["config-file"].strip_prefix(&format!("{}/", mount.mount_path)).unwrap();
        assert_eq!(key, CONFIG_FILE, "{w}");
        assert!(cm.data.as_ref().unwrap().contains_key(key), "{w}");

        // Probes: the router chart's (config/charts/routerlib/templates/_deployment.yaml).
        let live = c.liveness_probe.clone().unwrap();
        let grpc = live.grpc.unwrap();
        assert_eq!((grpc.port, grpc.service.as_deref()), (9003, Some("liveness")), "{w}");
        assert_eq!((live.initial_delay_seconds, live.period_seconds), (Some(5), Some(10)), "{w}");
        let ready = c.readiness_probe.clone().unwrap();
        let grpc = ready.grpc.unwrap();
        let service = if opts.epp_replicas > 1 { "readiness" } else { "inference-extension" };
        assert_eq!((grpc.port, grpc.service.as_deref()), (9003, Some(service)), "{w}");
        assert_eq!(ready.period_seconds, Some(2), "{w}");
        // Names llmd's health service answers (llmd-scheduler `grpchealth`, behind its
        // `ext-proc` feature): `liveness`, and readiness under these.
        assert!(["", "readiness", "inference-extension"].contains(&service), "{w}");

        // The Service reaches the container's named ports; the pool names its ext-proc port.
        let svc: Service = serde_json::from_value(one(&objects, "Service").clone()).unwrap();
        let svc_spec = svc.spec.unwrap();
        let pod_labels = epp.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert!(selects(svc_spec.selector.as_ref().unwrap(), &pod_labels), "{w}");
        let container_ports: BTreeMap<String, i32> =
            c.ports.iter().flatten().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
        let mut by_name = BTreeMap::new();
        for p in svc_spec.ports.unwrap() {
            let target = match p.target_port.unwrap() {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => container_ports[&s],
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i,
            };
            assert_eq!(target, p.port, "{w}: {:?}", p.name);
            by_name.insert(p.name.clone().unwrap(), (p.port, p.app_protocol));
        }
        assert_eq!(by_name["grpc-ext-proc"], (9002, Some("http2".to_string())), "{w}");
        assert_eq!(by_name["grpc-health"].0, 9003, "{w}");
        assert_eq!(by_name["http-metrics"].0, 9090, "{w}");
        let pool = one(&objects, "InferencePool");
        assert_eq!(
            pool["spec"]["endpointPickerRef"],
            json!({"kind": "Service", "name": svc.metadata.name.unwrap(), "port": {"number": 9002}, "failureMode": "FailClose"}),
            "{w}"
        );
    }
}

#[test]
fn rbac_is_least_privilege_and_grants_the_lease_only_with_election() {
    for opts in combinations() {
        let w = what(&opts);
        let objects = render(&opts).unwrap();
        let role: Role = serde_json::from_value(one(&objects, "Role").clone()).unwrap();
        let rules = role.rules.unwrap();
        let mut grants = BTreeSet::new();
        for r in &rules {
            for g in r.api_groups.iter().flatten() {
                for res in r.resources.iter().flatten() {
                    for v in &r.verbs {
                        let names = r.resource_names.clone().unwrap_or_default().join(",");
                        grants.insert(format!(
                            "{g}/{res}:{v}{}",
                            if names.is_empty() { String::new() } else { format!("@{names}") }
                        ));
                    }
                }
            }
        }
        let mut want: BTreeSet<String> = [
            "/pods",
            "inference.networking.k8s.io/inferencepools",
            "inference.networking.x-k8s.io/inferenceobjectives",
            "llm-d.ai/inferenceobjectives",
        ]
        .iter()
        .flat_map(|r| ["get", "list", "watch"].map(|v| format!("{r}:{v}")))
        .collect();
        if opts.epp_replicas > 1 {
            let lease = lease_name("llm", "qwen");
            assert_eq!(lease, "epp-llm-qwen.llm-d.ai");
            want.insert("coordination.k8s.io/leases:create".into());
            want.insert(format!("coordination.k8s.io/leases:get@{lease}"));
            want.insert(format!("coordination.k8s.io/leases:update@{lease}"));
        }
        assert_eq!(grants, want, "{w}");
        assert!(rules.iter().all(|r| r.non_resource_urls.is_none()), "{w}");

        // The binding gives the Role to the account the picker runs as.
        let rb: RoleBinding = serde_json::from_value(one(&objects, "RoleBinding").clone()).unwrap();
        assert_eq!((rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()), ("Role", "qwen-epp"), "{w}");
        let (epp, _) = epp_container(&objects);
        let sa = epp.spec.unwrap().template.spec.unwrap().service_account_name.unwrap();
        let subject = &rb.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str(), subject.namespace.as_deref()),
            ("ServiceAccount", sa.as_str(), Some("llm"))
        );
        assert_eq!(one(&objects, "ServiceAccount")["metadata"]["name"], sa.as_str(), "{w}");
    }
}

#[test]
fn the_picker_config_loads_and_fits_the_topology() {
    let registry = PluginRegistry::with_builtins();
    for topology in [Topology::Aggregated, Topology::PrefillDecode] {
        let objects = render(&ManifestOptions { topology, ..Default::default() }).unwrap();
        let cm: ConfigMap = serde_json::from_value(one(&objects, "ConfigMap").clone()).unwrap();
        let text = &cm.data.unwrap()[CONFIG_FILE];
        assert_eq!(*text, default_epp_config(topology).unwrap());
        let config = SchedulerConfig::from_yaml(text, CONFIG_FILE, &registry).unwrap();
        let profiles: Vec<&str> = config.profiles.iter().map(|p| p.name.as_str()).collect();
        match topology {
            Topology::Aggregated => {
                assert_eq!(profiles, ["default"]);
                assert!(config.plugins.contains_key("prefix-cache-scorer"));
            }
            Topology::PrefillDecode => {
                assert_eq!(profiles, ["prefill", "decode"]);
                assert!(config.plugins.contains_key("disagg-profile-handler"));
            }
        }
    }
    // The P/D default is llm-d-router's sample, unchanged.
    let upstream = fixture("router-pd-epp-config.yaml");
    let (header, body) = upstream.split_once('\n').unwrap();
    assert!(header.starts_with("# Source: llm-d/llm-d-router @ "), "{header}");
    assert_eq!(body, PD_EPP_CONFIG);

    // A given config is used as written; one that does not load is refused.
    let custom = "plugins:\n- type: round-robin-picker\nschedulingProfiles:\n- name: default\n  plugins:\n  - pluginRef: round-robin-picker\n";
    let objects = render(&ManifestOptions { epp_config: Some(custom.into()), ..Default::default() }).unwrap();
    assert_eq!(one(&objects, "ConfigMap")["data"][CONFIG_FILE], custom);
    let bad = render(&ManifestOptions {
        epp_config: Some("plugins:\n- type: no-such-scorer\n".into()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(bad.contains("no-such-scorer") && bad.contains("default/llmd-epp"), "{bad}");
}

#[test]
fn render_yaml_round_trips_to_the_same_objects() {
    for opts in combinations() {
        let w = what(&opts);
        let text = render_yaml(&opts).unwrap();
        assert!(text.starts_with("# llmd k8s manifests: InferencePool \"qwen\"") || opts.pool != "qwen", "{w}");
        assert_eq!(yaml_docs(&text), render(&opts).unwrap(), "{w}");
        assert_eq!(
            text.matches("\n---\n").count() + usize::from(text.starts_with("---")),
            render(&opts).unwrap().len(),
            "{w}"
        );
    }
}

#[test]
fn negative_controls_the_strict_checks_catch_mistakes() {
    let objects = render(&ManifestOptions {
        workload: Workload::LeaderWorkerSet,
        topology: Topology::PrefillDecode,
        ..Default::default()
    })
    .unwrap();

    // A misspelled Deployment field would be dropped by the API server's decoder.
    let mut epp = named(&objects, "Deployment", "llmd-epp").clone();
    assert!(check_strict(&epp).is_ok());
    epp["spec"]["replcas"] = json!(2);
    epp["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
    assert_eq!(
        check_strict(&epp).unwrap_err(),
        [
            "spec.replcas: dropped (unknown field?)",
            "spec.template.spec.containers[0].imagePullPolicyy: dropped (unknown field?)"
        ]
    );
    // So would one on a Service port, and a mistyped value does not decode.
    let mut svc = one(&objects, "Service").clone();
    svc["spec"]["ports"][0]["appProtocl"] = json!("http2");
    assert_eq!(check_strict(&svc).unwrap_err(), ["spec.ports[0].appProtocl: dropped (unknown field?)"]);
    let mut sa = one(&objects, "ServiceAccount").clone();
    sa["automountServiceAccountToken"] = json!("yes");
    assert!(check_strict(&sa).unwrap_err()[0].starts_with("does not decode"));

    // The LeaderWorkerSet CRD walker: unknown fields, wrong types, enums, required fields.
    let lws = named(&objects, "LeaderWorkerSet", "llmd-decode");
    assert!(check_strict(lws).is_ok());
    let mut bad = lws.clone();
    let lwt = &mut bad["spec"]["leaderWorkerTemplate"];
    lwt["sise"] = json!(2);
    lwt["size"] = json!("2");
    lwt["restartPolicy"] = json!("Sometimes");
    lwt["workerTemplate"]["spec"]["containers"][0]["comand"] = json!(["vllm"]);
    bad["metadata"]["lables"] = json!({"a": "b"});
    let errors = validate_custom_resource(lws_crd(), &bad).unwrap_err();
    for want in [
        "metadata.lables: dropped (unknown field?)",
        "spec.leaderWorkerTemplate.sise: unknown field",
        "spec.leaderWorkerTemplate.size: expected integer, got string",
        r#"spec.leaderWorkerTemplate.restartPolicy: "Sometimes" is not one of ["Default","RecreateGroupOnPodRestart","RecreateGroupAfterStart","None"]"#,
        "spec.leaderWorkerTemplate.workerTemplate.spec.containers[0].comand: unknown field",
    ] {
        assert!(errors.iter().any(|e| e == want), "{want} not in {errors:#?}");
    }
    let mut missing = lws.clone();
    missing["spec"]["leaderWorkerTemplate"].as_object_mut().unwrap().remove("workerTemplate");
    missing["spec"]["replicas"] = json!(2_000_000);
    assert_eq!(
        validate_custom_resource(lws_crd(), &missing).unwrap_err(),
        [
            "spec.leaderWorkerTemplate.workerTemplate: required field is missing",
            "spec.replicas: 2000000 is above the maximum 1000000",
        ]
    );
    let mut wrong_kind = lws.clone();
    wrong_kind["apiVersion"] = json!("leaderworkerset.x-k8s.io/v2");
    assert_eq!(
        validate_custom_resource(lws_crd(), &wrong_kind).unwrap_err(),
        [r#"apiVersion: the CRD serves no version "v2" with a schema"#]
    );

    // The pool: our type refuses unknown spec fields, and so does GAIE's CRD.
    let mut pool = one(&objects, "InferencePool").clone();
    pool["spec"]["targetPort"] = json!([{"number": 8000}]);
    let e = check_strict(&pool).unwrap_err();
    assert!(e[0].contains("unknown field `targetPort`"), "{e:?}");
    assert!(
        validate_custom_resource(pool_crd(), &pool)
            .unwrap_err()
            .contains(&"spec.targetPort: unknown field".to_string())
    );
}

#[test]
fn options_that_cannot_work_are_refused() {
    let base = ManifestOptions::default();
    let cases: Vec<(ManifestOptions, &str)> = vec![
        (ManifestOptions { pool: "Qwen".into(), ..base.clone() }, "pool"),
        (ManifestOptions { pool: "1qwen".into(), ..base.clone() }, "DNS-1035"),
        (ManifestOptions { pool: "a".repeat(41), ..base.clone() }, "at most 40"),
        (ManifestOptions { namespace: "my_ns".into(), ..base.clone() }, "namespace"),
        (ManifestOptions { model: "/".into(), ..base.clone() }, "names no model"),
        (ManifestOptions { epp_image: "".into(), ..base.clone() }, "epp_image"),
        (ManifestOptions { epp_replicas: 0, ..base.clone() }, "at least one endpoint picker"),
        (ManifestOptions { group_size: 2, ..base.clone() }, "need workload leaderworkerset"),
        (ManifestOptions { group_size: 0, workload: Workload::LeaderWorkerSet, ..base.clone() }, "at least one pod"),
        (
            ManifestOptions { group_size: 2, gpus_per_pod: 0, workload: Workload::LeaderWorkerSet, ..base.clone() },
            "need gpus_per_pod",
        ),
        (ManifestOptions { replicas: u32::MAX, ..base.clone() }, "replicas"),
        (ManifestOptions { replicas: 2_000_000, workload: Workload::LeaderWorkerSet, ..base.clone() }, "replicas"),
        (ManifestOptions { target_port: 0, ..base.clone() }, "target_port"),
        (
            ManifestOptions {
                target_port: DECODE_MODEL_SERVER_PORT,
                topology: Topology::PrefillDecode,
                ..base.clone()
            },
            "taken",
        ),
    ];
    for (opts, want) in cases {
        let err = render(&opts).unwrap_err().to_string();
        assert!(err.contains(want), "{opts:?}: {err}");
    }
    // 2 000 000 Deployment replicas are fine; an LWS caps them.
    assert!(render(&ManifestOptions { replicas: 2_000_000, ..base }).is_ok());
}
