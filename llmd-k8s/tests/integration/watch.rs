//! The pool watcher, the objectives watcher and leader election, with the real kube-rs
//! client against the in-process API server: pods turning ready, unready and deleted;
//! a selector change; a dropped watch; a 410 forcing a relist; two replicas contending
//! for the Lease and the follower taking over from a dead leader.
//!
//! Waits are on conditions with a deadline, never bare sleeps; the election steps run
//! on a manual clock, so expiry is decided by the test, not by the wall.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmd_k8s::election::{ElectionConfig, LeaderElector};
use llmd_k8s::fake::FakeApiServer;
use llmd_k8s::watch::{PoolApi, PoolRef, PoolSource, watch, watch_objectives};
use llmd_scheduler::objectives::Objectives;
use llmd_scheduler::{DatastoreWriter, ManualClock, datastore};
use serde_json::{Value, json};

const NS: &str = "llm";

async fn client(server: &FakeApiServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(NS)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn pool(app: &str, ports: &[u16]) -> Value {
    json!({
        "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
        "metadata": {"name": "qwen", "namespace": NS},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "targetPorts": ports.iter().map(|p| json!({"number": p})).collect::<Vec<_>>(),
            "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002}},
        },
    })
}

fn pod(name: &str, app: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
    })
}

fn ids(w: &DatastoreWriter) -> Vec<String> {
    let mut v: Vec<String> = w.reader().snapshot().into_iter().map(|e| e.id).collect();
    v.sort();
    v
}

/// Waits (up to 10 s) until the datastore holds exactly `want`.
async fn until_ids(w: &DatastoreWriter, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ids(w) == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "datastore holds {:?}, want {want:?}", ids(w));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn named() -> PoolSource {
    PoolSource::Named(PoolRef { namespace: NS.into(), name: "qwen".into(), api: PoolApi::V1 })
}

#[tokio::test]
async fn only_ready_pods_of_the_pool_are_endpoints_as_they_change() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool("vllm", &[8000]));
    server.apply(pod("a", "vllm", "10.0.0.1", true));
    server.apply(pod("b", "vllm", "10.0.0.2", false));
    server.apply(pod("c", "other", "10.0.0.3", true));
    let w = datastore(Arc::new(ManualClock::new()));
    let pw = watch(client(&server).await, named(), w.clone());
    tokio::time::timeout(Duration::from_secs(10), pw.wait_synced()).await.unwrap();
    assert_eq!(ids(&w), ["llm/a-rank-0"]);
    assert_eq!(w.reader().get("llm/a-rank-0").unwrap().address, "10.0.0.1:8000");

    // b turns ready; a turns unready; c takes the pool's label.
    server.apply(pod("b", "vllm", "10.0.0.2", true));
    until_ids(&w, &["llm/a-rank-0", "llm/b-rank-0"]).await;
    server.apply(pod("a", "vllm", "10.0.0.1", false));
    until_ids(&w, &["llm/b-rank-0"]).await;
    server.apply(pod("c", "vllm", "10.0.0.3", true));
    until_ids(&w, &["llm/b-rank-0", "llm/c-rank-0"]).await;
    // A pod being deleted (deletionTimestamp set) leaves at once, before it is gone.
    let mut terminating = pod("b", "vllm", "10.0.0.2", true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-26T00:00:00Z");
    server.apply(terminating);
    until_ids(&w, &["llm/c-rank-0"]).await;
    server.delete("v1", "Pod", NS, "c");
    until_ids(&w, &[]).await;
    // The watch stays synced throughout.
    assert!(*pw.synced().borrow());
}

#[tokio::test]
async fn a_pool_change_takes_effect_without_a_restart() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool("vllm", &[8000]));
    server.apply(pod("a", "vllm", "10.0.0.1", true));
    server.apply(pod("b", "next", "10.0.0.2", true));
    let w = datastore(Arc::new(ManualClock::new()));
    let pw = watch(client(&server).await, named(), w.clone());
    tokio::time::timeout(Duration::from_secs(10), pw.wait_synced()).await.unwrap();
    assert_eq!(ids(&w), ["llm/a-rank-0"]);
    // New selector and a second port: the pods are watched again under it.
    server.apply(pool("next", &[8000, 8001]));
    until_ids(&w, &["llm/b-rank-0", "llm/b-rank-1"]).await;
    assert_eq!(w.reader().get("llm/b-rank-1").unwrap().address, "10.0.0.2:8001");
    // A field this version does not know (a newer CRD's) does not break a live pool.
    let mut newer = pool("next", &[8000, 8001]);
    newer["spec"]["someFutureField"] = json!({"enabled": true});
    newer["metadata"]["labels"] = json!({"bump": "1"});
    server.apply(newer);
    // Pods under the new selector keep coming.
    server.apply(pod("c", "next", "10.0.0.3", true));
    until_ids(&w, &["llm/b-rank-0", "llm/b-rank-1", "llm/c-rank-0", "llm/c-rank-1"]).await;
    // The pool goes: so do its endpoints, and the watch is no longer synced.
    server.delete("inference.networking.k8s.io/v1", "InferencePool", NS, "qwen");
    until_ids(&w, &[]).await;
    let mut synced = pw.synced();
    tokio::time::timeout(Duration::from_secs(10), synced.wait_for(|s| !*s)).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_dropped_watch_resumes_without_losing_changes() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool("vllm", &[8000]));
    server.apply(pod("a", "vllm", "10.0.0.1", true));
    let w = datastore(Arc::new(ManualClock::new()));
    let pw = watch(client(&server).await, named(), w.clone());
    tokio::time::timeout(Duration::from_secs(10), pw.wait_synced()).await.unwrap();
    for round in 0..3 {
        server.drop_watches();
        let name = format!("p{round}");
        server.apply(pod(&name, "vllm", "10.0.1.1", true));
        let want = format!("llm/{name}-rank-0");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ids(&w).contains(&want) {
            assert!(tokio::time::Instant::now() < deadline, "{want} never arrived after the watch dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    until_ids(&w, &["llm/a-rank-0", "llm/p0-rank-0", "llm/p1-rank-0", "llm/p2-rank-0"]).await;
}

#[tokio::test]
async fn a_410_forces_a_relist_that_drops_pods_deleted_meanwhile() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pool("vllm", &[8000]));
    server.apply(pod("a", "vllm", "10.0.0.1", true));
    server.apply(pod("b", "vllm", "10.0.0.2", true));
    let w = datastore(Arc::new(ManualClock::new()));
    let pw = watch(client(&server).await, named(), w.clone());
    tokio::time::timeout(Duration::from_secs(10), pw.wait_synced()).await.unwrap();
    assert_eq!(ids(&w), ["llm/a-rank-0", "llm/b-rank-0"]);
    // The API server goes away; meanwhile a is deleted and c added, and the history
    // that would replay them is compacted: the watch's resourceVersion is too old.
    server.set_available(false);
    server.drop_watches();
    server.delete("v1", "Pod", NS, "a");
    server.apply(pod("c", "vllm", "10.0.0.3", true));
    server.compact();
    server.set_available(true);
    until_ids(&w, &["llm/b-rank-0", "llm/c-rank-0"]).await;
    let log = server.requests().join("\n");
    assert!(log.matches("watch=").count() >= 2, "the watcher watched again:\n{log}");
}

#[tokio::test]
async fn an_endpoint_selector_without_a_pool() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", "vllm", "10.0.0.1", true));
    server.apply(pod("b", "other", "10.0.0.2", true));
    let w = datastore(Arc::new(ManualClock::new()));
    let view = llmd_k8s::resources::PoolView::from_selector(NS, "app=vllm", &[8000, 8001]).unwrap();
    let pw = watch(client(&server).await, PoolSource::Selector(view), w.clone());
    tokio::time::timeout(Duration::from_secs(10), pw.wait_synced()).await.unwrap();
    assert_eq!(ids(&w), ["llm/a-rank-0", "llm/a-rank-1"]);
}

#[tokio::test]
async fn objectives_for_the_pool_follow_the_cluster() {
    let server = FakeApiServer::start().await.unwrap();
    let objective = |name: &str, group: &str, pool: &str, priority: Option<i32>| {
        let mut spec = json!({"poolRef": {"name": pool}});
        if let Some(p) = priority {
            spec["priority"] = json!(p);
        }
        json!({"apiVersion": format!("{group}/v1alpha2"), "kind": "InferenceObjective",
               "metadata": {"name": name, "namespace": NS}, "spec": spec})
    };
    server.apply(objective("critical", "llm-d.ai", "qwen", Some(10)));
    server.apply(objective("batch", "inference.networking.x-k8s.io", "qwen", Some(-1)));
    server.apply(objective("elsewhere", "llm-d.ai", "other-pool", Some(5)));
    let seen: Arc<Mutex<Vec<Objectives>>> = Arc::default();
    let sink = seen.clone();
    let task = watch_objectives(
        client(&server).await,
        NS,
        "qwen",
        Arc::new(move |o: Objectives| sink.lock().unwrap().push(o)),
    );
    let until = |want: Vec<(&'static str, Option<i32>)>| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(last) = seen.lock().unwrap().last()
                    && want.iter().all(|(n, p)| last.priority(n) == *p)
                {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "objectives never became {want:?}: {seen:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until(vec![("critical", Some(10)), ("batch", Some(-1)), ("elsewhere", None)]).await;
    // A nil priority is 0; deletion removes.
    server.apply(objective("critical", "llm-d.ai", "qwen", None));
    server.delete("inference.networking.x-k8s.io/v1alpha2", "InferenceObjective", NS, "batch");
    until(vec![("critical", Some(0)), ("batch", None)]).await;
    task.abort();
}

fn election(identity: &str) -> ElectionConfig {
    ElectionConfig::for_pool(NS, "qwen", identity)
}

#[tokio::test]
async fn the_follower_takes_over_within_the_lease_duration_of_a_dead_leader() {
    let server = FakeApiServer::start().await.unwrap();
    let clock = Arc::new(ManualClock::new());
    let mut a = LeaderElector::new(client(&server).await, election("a"), clock.clone()).unwrap();
    let mut b = LeaderElector::new(client(&server).await, election("b"), clock.clone()).unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap(), "a creates the Lease and leads");
    assert!(!b.try_acquire_or_renew().await.unwrap(), "b sees a's fresh claim");
    let lease = server.get("coordination.k8s.io/v1", "Lease", NS, "epp-llm-qwen.llm-d.ai").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    // a renews every 2 s; b keeps following.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(2));
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
    }
    // a dies (no more renewals). b has watched the record unchanged for under 15 s:
    // still a follower; once 15 s have passed on its clock, it takes over.
    clock.advance(Duration::from_secs(2));
    assert!(!b.try_acquire_or_renew().await.unwrap());
    clock.advance(Duration::from_secs(12));
    assert!(!b.try_acquire_or_renew().await.unwrap(), "14 s since b saw the last renewal");
    clock.advance(Duration::from_secs(2));
    assert!(b.try_acquire_or_renew().await.unwrap(), "16 s: the lease expired, b leads");
    let lease = server.get("coordination.k8s.io/v1", "Lease", NS, "epp-llm-qwen.llm-d.ai").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // a comes back: it sees b's claim as new and follows.
    assert!(!a.try_acquire_or_renew().await.unwrap());
    assert!(b.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    let server = FakeApiServer::start().await.unwrap();
    let clock = Arc::new(ManualClock::new());
    let mut a = LeaderElector::new(client(&server).await, election("a"), clock.clone()).unwrap();
    let mut b = LeaderElector::new(client(&server).await, election("b"), clock.clone()).unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    assert!(!a.is_leader());
    // No wait for expiry: the holder is cleared.
    assert!(b.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn of_replicas_racing_for_a_free_lease_exactly_one_wins() {
    let server = FakeApiServer::start().await.unwrap();
    let clock = Arc::new(ManualClock::new());
    for round in 0..10 {
        let name = format!("round-{round}");
        let cfg = |id: &str| ElectionConfig { name: name.clone(), ..election(id) };
        let mut electors = Vec::new();
        for id in ["a", "b", "c"] {
            electors.push(LeaderElector::new(client(&server).await, cfg(id), clock.clone()).unwrap());
        }
        let results = futures_util::future::join_all(electors.iter_mut().map(|e| e.try_acquire_or_renew())).await;
        let winners = results.into_iter().map(Result::unwrap).filter(|&w| w).count();
        assert_eq!(winners, 1, "round {round}: {winners} replicas believe they lead");
    }
}

#[tokio::test]
async fn timings_that_allow_two_leaders_are_refused() {
    let mut cfg = election("a");
    cfg.renew_deadline = cfg.lease_duration;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("renew deadline"), "{err}");
    let mut cfg = election("a");
    cfg.retry_period = Duration::from_secs(10);
    assert!(cfg.validate().is_err());
    assert!(election("").validate().is_err());
}

/// Against a real cluster (kind or any) with a pool and its model servers running, e.g.
/// from `llmd k8s manifests | kubectl apply -f -`, and a kubeconfig allowed to read
/// pods and pools and to write Leases in the namespace:
/// `LLMD_K8S_TEST_POOL=<namespace>/<pool> cargo test -p llmd-k8s --features client,fake-apiserver
/// --test integration -- --ignored needs_hardware::`
mod needs_hardware {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn target() -> (String, String) {
        let v = std::env::var("LLMD_K8S_TEST_POOL").expect("set LLMD_K8S_TEST_POOL=<namespace>/<pool>");
        let (ns, pool) = v.split_once('/').expect("LLMD_K8S_TEST_POOL is <namespace>/<pool>");
        (ns.to_string(), pool.to_string())
    }

    #[tokio::test]
    #[ignore = "needs a Kubernetes cluster: LLMD_K8S_TEST_POOL=<namespace>/<pool> and a kubeconfig"]
    async fn the_watcher_holds_the_ready_pods_of_a_real_pool() {
        let (ns, name) = target();
        let client = kube::Client::try_default().await.unwrap();
        let w = datastore(Arc::new(ManualClock::new()));
        let source = PoolSource::Named(PoolRef { namespace: ns.clone(), name: name.clone(), api: PoolApi::V1 });
        let pw = watch(client.clone(), source, w.clone());
        tokio::time::timeout(Duration::from_secs(60), pw.wait_synced()).await.expect("never synced");
        // The same rule applied to a fresh list of the pods.
        let pools: kube::Api<llmd_k8s::resources::InferencePool> = kube::Api::namespaced(client.clone(), &ns);
        let view = llmd_k8s::resources::PoolView::from_v1(&pools.get(&name).await.unwrap()).unwrap();
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, &ns);
        let listed = pods.list(&Default::default()).await.unwrap().items;
        let mut want: Vec<String> =
            llmd_k8s::discovery::pool_endpoints(&view, listed.iter()).into_iter().map(|e| e.id).collect();
        want.sort();
        assert!(!want.is_empty(), "no Ready pod in the pool: nothing to compare");
        assert_eq!(ids(&w), want);
    }

    #[tokio::test]
    #[ignore = "needs a Kubernetes cluster: LLMD_K8S_TEST_POOL=<namespace>/<pool> and a kubeconfig"]
    async fn a_lease_is_taken_renewed_and_released_on_a_real_cluster() {
        let (ns, _) = target();
        let client = kube::Client::try_default().await.unwrap();
        let cfg = |id: &str| ElectionConfig {
            name: format!("llmd-test-{}", std::process::id()),
            ..ElectionConfig::for_pool(&ns, "test", id)
        };
        let clock = Arc::new(ManualClock::new());
        let mut a = LeaderElector::new(client.clone(), cfg("a"), clock.clone()).unwrap();
        let mut b = LeaderElector::new(client.clone(), cfg("b"), clock.clone()).unwrap();
        assert!(a.try_acquire_or_renew().await.unwrap());
        assert!(!b.try_acquire_or_renew().await.unwrap());
        assert!(a.try_acquire_or_renew().await.unwrap());
        a.release().await.unwrap();
        assert!(b.try_acquire_or_renew().await.unwrap());
        b.release().await.unwrap();
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client, &ns);
        leases.delete(&cfg("a").name, &Default::default()).await.unwrap();
    }
}
