#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The projects' own manifests (checked in under `tests/fixtures`, each naming its
//! source) read into this crate's types, and the CRDs it generates against the
//! projects' published CRDs.

use kube::CustomResourceExt;
use llmd_k8s::resources::{InferenceObjective, InferencePool, PoolView, decode, v1alpha2};
use serde_json::Value;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

/// The YAML documents of a file as JSON, skipping empty ones.
fn docs(name: &str) -> Vec<Value> {
    let text = fixture(name);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], api_version: &str, kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["apiVersion"] == api_version && d["kind"] == kind).collect()
}

#[test]
fn gaie_v1_pools_read_whole() {
    let mut pools = Vec::new();
    for file in ["gaie-conformance-base.yaml"] {
        let all = docs(file);
        for d in of_kind(&all, "inference.networking.k8s.io/v1", "InferencePool") {
            let pool: InferencePool = decode(file, d.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
            let view = PoolView::from_v1(&pool).unwrap_or_else(|e| panic!("{file}: {e}"));
            pools.push((pool, view));
        }
    }
    assert_eq!(pools.len(), 5);
    let (primary, view) =
        pools.iter().find(|(p, _)| p.metadata.name.as_deref() == Some("primary-inference-pool")).unwrap();
    assert_eq!(view.namespace, "inference-conformance-app-backend");
    assert_eq!(view.target_ports, vec![3000]);
    assert_eq!(view.selector.get("app").map(String::as_str), Some("primary-inference-model-server"));
    let epp = primary.spec.endpoint_picker_ref.as_ref().unwrap();
    assert_eq!((epp.name.as_str(), epp.port.map(|p| p.number)), ("primary-endpoint-picker-svc", Some(9002)));
    // The app-protocol pools say which protocol their servers speak.
    let protocols: Vec<_> = pools.iter().filter_map(|(p, _)| p.spec.app_protocol.clone()).collect();
    assert!(protocols.iter().any(|p| p == "kubernetes.io/h2c"), "{protocols:?}");
    // Written back, a pool reads the same.
    let again: InferencePool = decode("round trip", serde_json::to_value(primary).unwrap()).unwrap();
    assert_eq!((&again.metadata, &again.spec), (&primary.metadata, &primary.spec));
}

#[test]
fn the_legacy_v1alpha2_pool_reads_whole() {
    let all = docs("gaie-v1alpha2-inferencepool-resources.yaml");
    let pools = of_kind(&all, "inference.networking.x-k8s.io/v1alpha2", "InferencePool");
    assert_eq!(pools.len(), 1);
    let pool: v1alpha2::InferencePool = decode("legacy pool", pools[0].clone()).unwrap();
    let view = PoolView::from_v1alpha2(&pool).unwrap();
    assert_eq!(view.target_ports, vec![8000]);
    assert_eq!(view.namespace, "default", "no namespace: the default one");
    assert_eq!(view.selector.get("app").map(String::as_str), Some("vllm-llama3-8b-instruct"));
    assert_eq!(pool.spec.extension_ref.unwrap().name, "vllm-llama3-8b-instruct-epp");
}

#[test]
fn router_objectives_read_whole() {
    let all = docs("router-inferenceobjective.yaml");
    let objectives: Vec<InferenceObjective> = of_kind(&all, "llm-d.ai/v1alpha2", "InferenceObjective")
        .into_iter()
        .map(|d| decode("objective", d.clone()).unwrap())
        .collect();
    let got: Vec<(String, Option<i32>, String)> = objectives
        .iter()
        .map(|o| (o.metadata.name.clone().unwrap(), o.spec.priority, o.spec.pool_ref.name.clone()))
        .collect();
    assert_eq!(
        got,
        [("small-segment-lora", 1), ("base-model", 2), ("base-model-cpu", 2)].map(|(n, p)| (
            n.to_string(),
            Some(p),
            "vllm-qwen3-32b".to_string()
        ))
    );
    // The same objective under its earlier group.
    let mut old = all[0].clone();
    old["apiVersion"] = "inference.networking.x-k8s.io/v1alpha2".into();
    let old: v1alpha2::InferenceObjective = decode("objective", old).unwrap();
    assert_eq!(old.spec.priority, Some(1));
}

#[test]
fn what_the_types_do_not_know_is_refused_by_name() {
    let bad = serde_json::json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "p"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "targetPortNumber": 8000},
    });
    let err = decode::<InferencePool>("pool p", bad).unwrap_err().to_string();
    assert!(err.contains("targetPortNumber") && err.contains("pool p"), "{err}");
    let no_ports = serde_json::json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "p", "namespace": "ns"}, "spec": {"selector": {"matchLabels": {"app": "a"}}},
    });
    let pool: InferencePool = decode("pool p", no_ports).unwrap();
    let err = PoolView::from_v1(&pool).unwrap_err().to_string();
    assert!(err.contains("ns/p") && err.contains("targetPorts"), "{err}");
}

/// The fields of a CRD that say what it is and how it is addressed.
fn identity(crd: &Value) -> Value {
    let versions: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            serde_json::json!({"name": v["name"], "served": v["served"], "storage": v["storage"],
                               "status": v["subresources"].get("status").is_some()})
        })
        .collect();
    let names = &crd["spec"]["names"];
    serde_json::json!({
        "name": crd["metadata"]["name"], "group": crd["spec"]["group"], "scope": crd["spec"]["scope"],
        "kind": names["kind"], "plural": names["plural"], "singular": names["singular"],
        "shortNames": names.get("shortNames").filter(|s| s.as_array().is_some_and(|a| !a.is_empty())).cloned(),
        "versions": versions,
    })
}

#[test]
fn generated_crds_name_what_the_projects_publish() {
    for (file, ours) in [
        ("gaie-crd-inferencepools.yaml", serde_json::to_value(InferencePool::crd()).unwrap()),
        ("router-crd-inferenceobjectives.yaml", serde_json::to_value(InferenceObjective::crd()).unwrap()),
    ] {
        let theirs = docs(file).remove(0);
        assert_eq!(identity(&ours), identity(&theirs), "{file}");
        // Every spec field the published schema lists, ours lists too.
        let props = |crd: &Value| -> Vec<String> {
            let v = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(props(&ours), props(&theirs), "{file}");
    }
}

/// The rest of the conformance base (the model servers, EPPs and their RBAC) reads into
/// Kubernetes' own types, which is what `llmd k8s manifests` output will be held to.
#[test]
fn the_conformance_base_reads_into_kubernetes_types() {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1, rbac::v1 as rbac};
    let all = docs("gaie-conformance-base.yaml");
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for d in &all {
        let kind = d["kind"].as_str().unwrap_or_default().to_string();
        let ok = match kind.as_str() {
            "Deployment" => decode::<Deployment>("Deployment", d.clone()).map(drop),
            "Service" => decode::<v1::Service>("Service", d.clone()).map(drop),
            "Namespace" => decode::<v1::Namespace>("Namespace", d.clone()).map(drop),
            "ServiceAccount" => decode::<v1::ServiceAccount>("ServiceAccount", d.clone()).map(drop),
            "Role" => decode::<rbac::Role>("Role", d.clone()).map(drop),
            "RoleBinding" => decode::<rbac::RoleBinding>("RoleBinding", d.clone()).map(drop),
            _ => Ok(()),
        };
        ok.unwrap_or_else(|e| panic!("{kind}: {e}"));
        *kinds.entry(kind).or_default() += 1;
    }
    assert!(kinds.get("Deployment").is_some_and(|&n| n >= 5), "{kinds:?}");
}
