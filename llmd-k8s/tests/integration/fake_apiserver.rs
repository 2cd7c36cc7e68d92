//! The fake API server against the real kube-rs client: lists with selectors, the
//! runtime watcher's list-then-watch (selector transitions as deletes, a relist after
//! 410, resuming from a bookmark), Lease optimistic concurrency, errors as Status, an
//! outage. Waits are on events with a deadline, never bare sleeps.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use llmd_k8s::fake::FakeApiServer;
use serde_json::{Value, json};

const NS: &str = "llm";
const WAIT: Duration = Duration::from_secs(10);

async fn client(server: &FakeApiServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml(NS)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
    })
}

fn names(pods: impl IntoIterator<Item = Pod>) -> Vec<String> {
    let mut v: Vec<String> = pods.into_iter().map(|p| p.metadata.name.unwrap()).collect();
    v.sort();
    v
}

fn api_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The watcher's next event, skipping the errors it reports and recovers from (the 410
/// that forces a relist).
async fn next_event<S>(w: &mut S) -> Event<Pod>
where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, w.next()).await.expect("no watcher event in time") {
            Some(Ok(e)) => return e,
            Some(Err(_)) => continue,
            None => panic!("watcher ended"),
        }
    }
}

fn describe(e: &Event<Pod>) -> String {
    let name = |p: &Pod| p.metadata.name.clone().unwrap();
    match e {
        Event::Init => "init".into(),
        Event::InitApply(p) => format!("init-apply {}", name(p)),
        Event::InitDone => "init-done".into(),
        Event::Apply(p) => format!("apply {}", name(p)),
        Event::Delete(p) => format!("delete {}", name(p)),
    }
}

/// Events up to and including the next `InitDone`.
async fn init_round<S>(w: &mut S) -> Vec<String>
where
    S: Stream<Item = Result<Event<Pod>, watcher::Error>> + Unpin,
{
    let mut out = Vec::new();
    loop {
        let e = describe(&next_event(w).await);
        let done = e == "init-done";
        out.push(e);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn lists_with_label_and_field_selectors() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({"app": "vllm", "tier": "gpu"})));
    server.apply(pod("b", json!({"app": "vllm"})));
    server.apply(pod("c", json!({"app": "other"})));
    server.apply(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "elsewhere", "namespace": "kube-system"}}),
    );
    let client = client(&server).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    let list = |sel: &str| {
        let (pods, sel) = (pods.clone(), sel.to_owned());
        async move { names(pods.list(&ListParams::default().labels(&sel)).await.unwrap()) }
    };
    assert_eq!(list("app=vllm").await, ["a", "b"]);
    assert_eq!(list("app==vllm,tier").await, ["a"]);
    assert_eq!(list("app!=vllm").await, ["c"]);
    assert_eq!(list("app in (vllm, other),!tier").await, ["b", "c"]);
    assert_eq!(list("app notin (vllm)").await, ["c"]);
    assert_eq!(list("").await, ["a", "b", "c"]);
    let by_name = pods.list(&ListParams::default().fields("metadata.name=b")).await.unwrap();
    assert_eq!(names(by_name), ["b"]);
    let not_b = pods.list(&ListParams::default().fields("metadata.name!=b")).await.unwrap();
    assert_eq!(names(not_b), ["a", "c"]);

    // The list's version is the store's; items carry their type.
    let all = pods.list(&ListParams::default()).await.unwrap();
    let last = server.get("v1", "Pod", "kube-system", "elsewhere").unwrap();
    assert_eq!(all.metadata.resource_version.as_deref(), last["metadata"]["resourceVersion"].as_str());
    assert_eq!(all.items[0].metadata.uid.as_deref().map(str::len), Some(36));

    // All namespaces.
    let everywhere: Api<Pod> = Api::all(client);
    assert_eq!(names(everywhere.list(&ListParams::default()).await.unwrap()), ["a", "b", "c", "elsewhere"]);

    let err = pods.list(&ListParams::default().labels("app in vllm")).await.unwrap_err();
    assert_eq!(api_code(&err), 400);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/llm/pods?") && r.contains("labelSelector=app"))
    );
}

#[tokio::test]
async fn watcher_lists_then_follows_changes_and_selector_transitions() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({"app": "vllm"})));
    server.apply(pod("b", json!({"app": "vllm"})));
    server.apply(pod("c", json!({"app": "other"})));
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    let mut w = watcher::watcher(pods, watcher::Config::default().labels("app=vllm")).boxed();

    assert_eq!(init_round(&mut w).await, ["init", "init-apply a", "init-apply b", "init-done"]);
    // Written before the watch opens: replayed from the list's resourceVersion.
    server.apply(pod("d", json!({"app": "vllm"})));
    assert_eq!(describe(&next_event(&mut w).await), "apply d");
    assert_eq!(server.open_watches(), 1);

    // Out of the selector: a delete; into it: an apply; unrelated pods: nothing.
    server.apply(pod("a", json!({"app": "other"})));
    server.apply(pod("e", json!({"app": "other"})));
    server.apply(pod("c", json!({"app": "vllm"})));
    server.delete("v1", "Pod", NS, "b").unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(describe(&next_event(&mut w).await));
    }
    assert_eq!(seen, ["delete a", "apply c", "delete b"]);

    let log = server.requests();
    assert!(log.iter().any(|r| r.contains("/pods?") && r.contains("watch=true") && r.contains("resourceVersion=")));
    assert!(log.iter().any(|r| r.contains("allowWatchBookmarks=true")));
}

#[tokio::test]
async fn watcher_relists_after_410_without_missing_a_delete() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({"app": "vllm"})));
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    let mut w = watcher::watcher(pods, watcher::Config::default()).boxed();
    assert_eq!(init_round(&mut w).await, ["init", "init-apply a", "init-done"]);
    server.apply(pod("b", json!({"app": "vllm"})));
    assert_eq!(describe(&next_event(&mut w).await), "apply b");

    // The watch is cut; while the client is away (it is not polled) `a` goes and the
    // history is compacted, so the resumed watch gets 410 and the watcher relists.
    server.drop_watches();
    assert_eq!(server.open_watches(), 0);
    server.delete("v1", "Pod", NS, "a").unwrap();
    server.apply(pod("c", json!({"app": "vllm"})));
    server.compact();
    match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
        Some(Err(watcher::Error::WatchError(s))) => assert_eq!((s.code, s.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 watch error, got {other:?}"),
    }
    assert_eq!(init_round(&mut w).await, ["init", "init-apply b", "init-apply c", "init-done"]);

    // And it watches on from the new list.
    server.apply(pod("d", json!({"app": "vllm"})));
    assert_eq!(describe(&next_event(&mut w).await), "apply d");
    let lists = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/llm/pods?") && !r.contains("watch="))
        .count();
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn bookmarks_reach_watches_and_the_watcher_resumes_from_them() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({"app": "vllm"})));
    let client = client(&server).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());

    // A raw watch: the bookmark carries the current version, even one bumped by another type.
    let rv = pods.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut raw = pods.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    let mut plain = pods.watch(&WatchParams::default().disable_bookmarks(), &rv).await.unwrap().boxed();
    server.wait_for_watches(2).await;
    let lease = server.apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": NS}}),
    );
    let lease_rv = lease["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    server.bookmark();
    match tokio::time::timeout(WAIT, raw.next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, lease_rv);
            assert_eq!((b.types.api_version.as_str(), b.types.kind.as_str()), ("v1", "Pod"));
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // Only watches that asked for bookmarks get them.
    server.apply(pod("z", json!({})));
    match tokio::time::timeout(WAIT, plain.next()).await.unwrap().unwrap().unwrap() {
        WatchEvent::Added(p) => assert_eq!(p.metadata.name.as_deref(), Some("z")),
        other => panic!("expected the pod, got {other:?}"),
    }
    server.delete("v1", "Pod", NS, "z");
    drop((raw, plain));

    // The runtime watcher consumes the bookmark silently; after a cut it resumes from it.
    let mut w = watcher::watcher(pods, watcher::Config::default()).boxed();
    assert_eq!(init_round(&mut w).await, ["init", "init-apply a", "init-done"]);
    server.apply(pod("b", json!({})));
    assert_eq!(describe(&next_event(&mut w).await), "apply b");
    let lease = server.apply(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l", "namespace": NS}}),
    );
    let lease_rv = lease["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    server.bookmark();
    server.drop_watches();
    server.apply(pod("c", json!({})));
    assert_eq!(describe(&next_event(&mut w).await), "apply c");
    let resumed = format!("resourceVersion={lease_rv}");
    assert!(
        server.requests().iter().any(|r| r.contains("watch=true") && r.contains(&resumed)),
        "{:#?}",
        server.requests()
    );
}

#[tokio::test]
async fn watch_ends_at_its_timeout_and_when_the_server_goes() {
    let server = FakeApiServer::start().await.unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    let mut short = pods.watch(&WatchParams::default().timeout(1), "0").await.unwrap().boxed();
    assert!(tokio::time::timeout(WAIT, short.next()).await.unwrap().is_none());

    let mut open = pods.watch(&WatchParams::default(), "0").await.unwrap().boxed();
    assert_eq!(server.open_watches(), 1);
    drop(server);
    assert!(tokio::time::timeout(WAIT, open.next()).await.unwrap().is_none());
}

#[tokio::test]
async fn lease_replace_is_optimistic() {
    let server = FakeApiServer::start().await.unwrap();
    let leases: Api<Lease> = Api::default_namespaced(client(&server).await);

    let err = leases.get("epp").await.unwrap_err();
    assert_eq!(api_code(&err), 404);
    let kube::Error::Api(s) = &err else { unreachable!() };
    assert_eq!(s.reason, "NotFound");
    assert_eq!(s.message, "leases.coordination.k8s.io \"epp\" not found");
    assert!(leases.get_opt("epp").await.unwrap().is_none());

    let mut lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "epp"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(created.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(api_code(&leases.create(&PostParams::default(), &lease).await.unwrap_err()), 409);

    // Two writers from the same read: the first wins, the second conflicts.
    let read = leases.get("epp").await.unwrap();
    let mut first = read.clone();
    first.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let written = leases.replace("epp", &PostParams::default(), &first).await.unwrap();
    assert_ne!(written.metadata.resource_version, read.metadata.resource_version);
    let mut second = read.clone();
    second.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = leases.replace("epp", &PostParams::default(), &second).await.unwrap_err();
    assert_eq!(api_code(&err), 409);
    let kube::Error::Api(s) = &err else { unreachable!() };
    assert_eq!(s.reason, "Conflict");
    let holder = server.get("coordination.k8s.io/v1", "Lease", NS, "epp").unwrap()["spec"]["holderIdentity"].clone();
    assert_eq!(holder, "b");

    // Replacing what is not there is a 404; a merge patch applies and keeps identity.
    lease.metadata.name = Some("gone".into());
    assert_eq!(api_code(&leases.replace("gone", &PostParams::default(), &lease).await.unwrap_err()), 404);
    let patched = leases
        .patch("epp", &PatchParams::default(), &Patch::Merge(json!({"spec": {"leaseDurationSeconds": 30}})))
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().lease_duration_seconds, Some(30));
    assert_eq!(patched.spec.unwrap().holder_identity.as_deref(), Some("b"));
    assert_eq!(patched.metadata.uid, created.metadata.uid);

    leases.delete("epp", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(&leases.delete("epp", &DeleteParams::default()).await.unwrap_err()), 404);
}

#[tokio::test]
async fn status_subresource_patch_touches_only_status() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({"app": "vllm"})));
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    let patch = json!({"metadata": {"labels": {"app": "changed"}}, "status": {"podIP": "10.0.0.9"}});
    let p = pods.patch_status("a", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(p.metadata.labels.unwrap()["app"], "vllm");
}

#[tokio::test]
async fn outage_answers_503_then_recovers() {
    let server = FakeApiServer::start().await.unwrap();
    server.apply(pod("a", json!({})));
    let pods: Api<Pod> = Api::default_namespaced(client(&server).await);
    server.set_available(false);
    assert_eq!(api_code(&pods.list(&ListParams::default()).await.unwrap_err()), 503);
    assert_eq!(api_code(&pods.get("a").await.unwrap_err()), 503);
    server.set_available(true);
    assert_eq!(names(pods.list(&ListParams::default()).await.unwrap()), ["a"]);
    assert!(server.requests().iter().filter(|r| r.starts_with("GET /api/v1/namespaces/llm/pods")).count() >= 3);
    let version = kube::Client::apiserver_version(&client(&server).await).await.unwrap();
    assert_eq!(version.major, "1");
}
