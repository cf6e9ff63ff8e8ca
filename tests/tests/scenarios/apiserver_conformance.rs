//! Conformance of the in-process API server, driven only through the real kube client and
//! kube-runtime (no direct state poking).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use phoenix_tests::apiserver::{ApiServer, FaultAction, Verb};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A small custom resource with status and scale subresources.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "test.phoenix.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    )
)]
struct WidgetSpec {
    #[schemars(range(min = 0, max = 10))]
    replicas: i32,
    #[serde(default)]
    color: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
struct WidgetStatus {
    replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..ConfigMap::default()
    }
}

fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A widget `w` with one replica.
fn one_replica_widget() -> Widget {
    Widget::new(
        "w",
        WidgetSpec {
            replicas: 1,
            color: None,
        },
    )
}

async fn with_widgets(server: &ApiServer) -> (Client, Api<Widget>) {
    let client = server.client().expect("client");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Widget::crd())
        .await
        .expect("create CRD");
    (client.clone(), Api::default_namespaced(client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_round_trips_and_stale_writes_conflict() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    let created = api
        .create(&PostParams::default(), &config_map("a", &[]))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_code(
            &api.create(&PostParams::default(), &config_map("a", &[]))
                .await
                .expect_err("exists")
        ),
        Some(409)
    );
    let mut fetched = api.get("a").await.expect("get");
    assert_eq!(fetched.data, created.data);
    fetched.data = Some(BTreeMap::from([("k".to_string(), "changed".to_string())]));
    let replaced = api
        .replace("a", &PostParams::default(), &fetched)
        .await
        .expect("replace");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    // Replacing with the old resourceVersion conflicts.
    let stale = api
        .replace("a", &PostParams::default(), &created)
        .await
        .expect_err("stale");
    assert_eq!(api_code(&stale), Some(409));
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"extra": "1"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(patched.data.as_ref().map(|d| d.len()), Some(2));
    assert_eq!(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    api.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    assert_eq!(api_code(&api.get("a").await.expect_err("gone")), Some(404));
    assert_eq!(server.requests(Verb::Create, "configmaps"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors_and_pagination() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        api.create(
            &PostParams::default(),
            &config_map(&format!("cm-{i}"), &[("tier", tier), ("app", "x")]),
        )
        .await
        .expect("create");
    }
    let even = api
        .list(&ListParams::default().labels("tier=even"))
        .await
        .expect("list");
    assert_eq!(even.items.len(), 4);
    let set = api
        .list(&ListParams::default().labels("tier in (odd),app"))
        .await
        .expect("list");
    assert_eq!(set.items.len(), 3);
    let named = api
        .list(&ListParams::default().fields("metadata.name=cm-3"))
        .await
        .expect("list");
    assert_eq!(
        named.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["cm-3"]
    );
    // limit/continue walks every item once.
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(3);
    loop {
        let page = api.list(&params).await.expect("page");
        seen.extend(page.items.iter().map(|c| c.name_any()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let bad = api
        .list(&ListParams::default().fields("spec.x=y"))
        .await
        .expect_err("unsupported field");
    assert_eq!(api_code(&bad), Some(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_a_version_and_get_410_after_compaction() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    api.create(&PostParams::default(), &config_map("first", &[]))
        .await
        .expect("create");
    let version = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");

    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &version)
        .await
        .expect("watch")
        .boxed();
    api.create(&PostParams::default(), &config_map("second", &[]))
        .await
        .expect("create");
    let seen_rv = match stream.try_next().await.expect("event") {
        Some(WatchEvent::Added(cm)) => {
            assert_eq!(cm.name_any(), "second");
            cm.resource_version().expect("rv")
        }
        other => panic!("expected ADDED second, got {other:?}"),
    };
    drop(stream);
    // Changes made while no watch is open are delivered to a watch resumed from the last version.
    api.create(&PostParams::default(), &config_map("third", &[]))
        .await
        .expect("create");
    api.delete("first", &DeleteParams::default())
        .await
        .expect("delete");
    let mut resumed = api
        .watch(&WatchParams::default().timeout(10), &seen_rv)
        .await
        .expect("watch")
        .boxed();
    match resumed.try_next().await.expect("event") {
        Some(WatchEvent::Added(cm)) => assert_eq!(cm.name_any(), "third"),
        other => panic!("expected ADDED third, got {other:?}"),
    }
    match resumed.try_next().await.expect("event") {
        Some(WatchEvent::Deleted(cm)) => assert_eq!(cm.name_any(), "first"),
        other => panic!("expected DELETED first, got {other:?}"),
    }
    drop(resumed);

    server.compact();
    let mut gone = api
        .watch(&WatchParams::default().timeout(10), &seen_rv)
        .await
        .expect("watch")
        .boxed();
    match gone.try_next().await.expect("event") {
        Some(WatchEvent::Error(status)) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }

    // Bookmarks arrive when asked for.
    let current = server.resource_version().to_string();
    let mut bookmarks = api
        .watch(&WatchParams::default().timeout(10), &current)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(5), bookmarks.try_next()).await {
        Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_creates_updates_tracks_managers_and_conflicts() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "2"}});
    let params = PatchParams::apply("phoenix-operator");
    let created = api
        .patch("ssa", &params, &Patch::Apply(&manifest))
        .await
        .expect("apply creates");
    let managed = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].manager.as_deref(), Some("phoenix-operator"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));
    // Applying again without a field removes it; the version changes.
    let smaller = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let updated = api
        .patch("ssa", &params, &Patch::Apply(&smaller))
        .await
        .expect("apply updates");
    assert_eq!(
        updated.data,
        Some(BTreeMap::from([("a".to_string(), "1".to_string())]))
    );
    // The same apply again changes nothing: no new version.
    let again = api
        .patch("ssa", &params, &Patch::Apply(&smaller))
        .await
        .expect("apply again");
    assert_eq!(
        again.metadata.resource_version,
        updated.metadata.resource_version
    );
    // Another manager changing an owned field conflicts, unless forced.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "theirs"}});
    let conflict = api
        .patch(
            "ssa",
            &PatchParams::apply("someone-else"),
            &Patch::Apply(&other),
        )
        .await
        .expect_err("conflict");
    assert_eq!(api_code(&conflict), Some(409));
    let forced = api
        .patch(
            "ssa",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("forced");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(String::as_str),
        Some("theirs")
    );
    let managers: Vec<_> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"someone-else".to_string()),
        "{managers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_have_status_and_scale_subresources_and_schema_validation() {
    let server = ApiServer::start().await.expect("server");
    let (_client, widgets) = with_widgets(&server).await;
    let widget = one_replica_widget();
    let created = widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create widget");
    assert_eq!(created.metadata.generation, Some(1));

    // Status through the subresource only.
    let with_status = widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 1}})),
        )
        .await
        .expect("patch status");
    assert_eq!(with_status.status.as_ref().map(|s| s.replicas), Some(1));
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );
    let ignored = widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 9}, "spec": {"color": "red"}})),
        )
        .await
        .expect("patch main");
    assert_eq!(
        ignored.status.as_ref().map(|s| s.replicas),
        Some(1),
        "status ignored on the main resource"
    );
    assert_eq!(
        ignored.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    // Scale: read and write replicas.
    let scale = widgets.get_scale("w").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    widgets
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(widgets.get("w").await.expect("get").spec.replicas, 5);

    // Schema: out of bounds and wrong types are refused with 422 and a message.
    let bad = Widget::new(
        "bad",
        WidgetSpec {
            replicas: -1,
            color: None,
        },
    );
    let error = widgets
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid");
    match &error {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("spec.replicas"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let raw: Api<kube::core::DynamicObject> = Api::default_namespaced_with(
        server.client().expect("client"),
        &kube::discovery::ApiResource::erase::<Widget>(&()),
    );
    let mut wrong = kube::core::DynamicObject::new(
        "wrong",
        &kube::discovery::ApiResource::erase::<Widget>(&()),
    );
    wrong.data = json!({"spec": {"replicas": "three"}});
    let error = raw
        .create(&PostParams::default(), &wrong)
        .await
        .expect_err("wrong type");
    assert_eq!(api_code(&error), Some(422));
}

/// Server-side apply of the status subresource, as the operator writes status: the
/// manager owns what it applied there, a field it stops applying is removed, an apply to the
/// object never touches status, and `managedFields` says `subresource: status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_applies_own_and_remove_their_fields() {
    let server = ApiServer::start().await.expect("server");
    let (_client, widgets) = with_widgets(&server).await;
    let widget = one_replica_widget();
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("create widget");
    let apply = |status: serde_json::Value| json!({"apiVersion": "test.phoenix.dev/v1", "kind": "Widget", "status": status});
    let params = PatchParams::apply("op").force();
    let first = widgets
        .patch_status(
            "w",
            &params,
            &Patch::Apply(apply(json!({"replicas": 2, "note": "n"}))),
        )
        .await
        .expect("apply status");
    let status = first.status.expect("status");
    assert_eq!((status.replicas, status.note.as_deref()), (2, Some("n")));
    let entry = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|e| e.manager.as_deref() == Some("op"))
        .expect("an entry for op");
    assert_eq!(
        (entry.operation.as_deref(), entry.subresource.as_deref()),
        (Some("Apply"), Some("status"))
    );
    // The note is no longer applied: the server removes it.
    let second = widgets
        .patch_status("w", &params, &Patch::Apply(apply(json!({"replicas": 3}))))
        .await
        .expect("apply status again");
    let status = second.status.expect("status");
    assert_eq!((status.replicas, status.note), (3, None));
    // An apply to the object by another manager ignores status and leaves op's fields.
    let main = widgets
        .patch(
            "w",
            &PatchParams::apply("other").force(),
            &Patch::Apply(json!({
                "apiVersion": "test.phoenix.dev/v1", "kind": "Widget",
                "metadata": {"name": "w"},
                "spec": {"replicas": 1, "color": "blue"},
                "status": {"replicas": 9}
            })),
        )
        .await
        .expect("apply object");
    assert_eq!(main.status.map(|s| s.replicas), Some(3));
    // A status apply that changes nothing makes no new version.
    let again = widgets
        .patch_status("w", &params, &Patch::Apply(apply(json!({"replicas": 3}))))
        .await
        .expect("no-op apply");
    assert_eq!(
        again.metadata.resource_version,
        main.metadata.resource_version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_cascades_to_dependents_and_waits_for_finalizers() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    let owner = api
        .create(&PostParams::default(), &config_map("owner", &[]))
        .await
        .expect("owner");
    let mut dependent = config_map("dependent", &[]);
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("uid"),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &dependent)
        .await
        .expect("dependent");
    api.create(&PostParams::default(), &config_map("bystander", &[]))
        .await
        .expect("bystander");
    api.delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    assert_eq!(
        api_code(&api.get("dependent").await.expect_err("cascaded")),
        Some(404)
    );
    assert!(api.get("bystander").await.is_ok());

    let mut guarded = config_map("guarded", &[]);
    guarded.metadata.finalizers = Some(vec!["phoenix.dev/cleanup".into()]);
    api.create(&PostParams::default(), &guarded)
        .await
        .expect("guarded");
    api.delete("guarded", &DeleteParams::default())
        .await
        .expect("delete guarded");
    let terminating = api.get("guarded").await.expect("still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    api.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove finalizer");
    assert_eq!(
        api_code(&api.get("guarded").await.expect_err("gone")),
        Some(404)
    );
}

/// What the garbage collector does with a child a controller applied just after its owner
/// was deleted (its cache still held the owner): a dependent whose owners are all gone is
/// deleted; one with a live owner left loses only the references to the missing ones; an
/// owner in another namespace does not count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_written_for_a_missing_owner_is_collected() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let reference = |owner: &ConfigMap| OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: owner.metadata.name.clone().expect("name"),
        uid: owner.metadata.uid.clone().expect("uid"),
        ..Default::default()
    };
    let with_owners = |name: &str, owners: Vec<OwnerReference>| {
        let mut object = config_map(name, &[]);
        object.metadata.owner_references = Some(owners);
        object
    };
    let gone = api
        .create(&PostParams::default(), &config_map("gone", &[]))
        .await
        .expect("owner");
    let live = api
        .create(&PostParams::default(), &config_map("live", &[]))
        .await
        .expect("owner");
    api.delete("gone", &DeleteParams::background())
        .await
        .expect("delete owner");

    // Created (the answer is the created object) and then collected.
    let late = api
        .create(
            &PostParams::default(),
            &with_owners("late", vec![reference(&gone)]),
        )
        .await
        .expect("the write itself is accepted");
    assert_eq!(late.metadata.name.as_deref(), Some("late"));
    assert_eq!(
        api_code(&api.get("late").await.expect_err("collected")),
        Some(404)
    );
    // The same by server-side apply (what the operator does).
    api.patch(
        "applied",
        &PatchParams::apply("phoenix-operator").force(),
        &Patch::Apply(with_owners("applied", vec![reference(&gone)])),
    )
    .await
    .expect("apply");
    assert_eq!(
        api_code(&api.get("applied").await.expect_err("collected")),
        Some(404)
    );
    // A live owner keeps its dependent; only the missing owner's reference goes.
    api.create(
        &PostParams::default(),
        &with_owners("shared", vec![reference(&gone), reference(&live)]),
    )
    .await
    .expect("shared");
    let shared = api.get("shared").await.expect("kept");
    let owners: Vec<String> = shared
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(owners, ["live"]);
    // An owner must be in the dependent's namespace.
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    Api::<Namespace>::all(client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "other"}})).expect("namespace"),
        )
        .await
        .expect("namespace");
    other
        .create(
            &PostParams::default(),
            &with_owners("foreign", vec![reference(&live)]),
        )
        .await
        .expect("foreign");
    assert_eq!(
        api_code(&other.get("foreign").await.expect_err("collected")),
        Some(404)
    );
}

/// A namespaced object is refused in a namespace that does not exist (create and apply
/// alike), as a real API server refuses it; it is accepted once the namespace is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespaced_object_needs_its_namespace() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "missing");
    let error = missing
        .create(&PostParams::default(), &config_map("c", &[]))
        .await
        .expect_err("no such namespace");
    assert_eq!(api_code(&error), Some(404), "{error}");
    assert!(
        error
            .to_string()
            .contains("namespaces \"missing\" not found"),
        "{error}"
    );
    let error = missing
        .patch(
            "c",
            &PatchParams::apply("phoenix-operator"),
            &Patch::Apply(config_map("c", &[])),
        )
        .await
        .expect_err("no such namespace");
    assert_eq!(api_code(&error), Some(404), "{error}");
    Api::<Namespace>::all(client)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "missing"}})).expect("namespace"),
        )
        .await
        .expect("namespace");
    missing
        .create(&PostParams::default(), &config_map("c", &[]))
        .await
        .expect("accepted once the namespace exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_answer_then_clear() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    server.inject(
        Some(Verb::Create),
        Some("configmaps"),
        2,
        FaultAction::Fail(500),
    );
    for _ in 0..2 {
        let error = api
            .create(&PostParams::default(), &config_map("f", &[]))
            .await
            .expect_err("fault");
        assert_eq!(api_code(&error), Some(500));
    }
    api.create(&PostParams::default(), &config_map("f", &[]))
        .await
        .expect("fault cleared");
    server.inject(Some(Verb::Patch), None, 1, FaultAction::Fail(409));
    let error = api
        .patch(
            "f",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"x": "y"}})),
        )
        .await
        .expect_err("409");
    assert_eq!(api_code(&error), Some(409));
    server.inject(
        Some(Verb::Get),
        Some("configmaps"),
        1,
        FaultAction::Delay(Duration::from_millis(300)),
    );
    let started = std::time::Instant::now();
    api.get("f").await.expect("delayed get");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let mutations = server.mutations();
    assert_eq!(mutations.iter().filter(|m| m.status == 500).count(), 2);
    assert!(
        mutations
            .iter()
            .any(|m| m.status == 409 && m.verb == Verb::Patch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_and_a_controller_converge() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    for i in 0..5 {
        api.create(
            &PostParams::default(),
            &config_map(&format!("c{i}"), &[("managed", "yes")]),
        )
        .await
        .expect("create");
    }
    // A reflector sees every object.
    let (reader, writer) = reflector::store::<ConfigMap>();
    let reflector_task = tokio::spawn(
        reflector(writer, watcher(api.clone(), watcher::Config::default()))
            .applied_objects()
            .for_each(|_| async {}),
    );
    reader.wait_until_ready().await.expect("reflector ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reader.state().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reflector saw {}",
            reader.state().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A tiny controller stamps every managed ConfigMap, by server-side apply.
    async fn reconcile(
        cm: Arc<ConfigMap>,
        api: Arc<Api<ConfigMap>>,
    ) -> Result<Action, kube::Error> {
        let patch = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm.name_any(), "annotations": {"reconciled": "true"}},
        });
        api.patch(
            &cm.name_any(),
            &PatchParams::apply("tiny-controller"),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(Action::await_change())
    }
    fn error_policy(_: Arc<ConfigMap>, _: &kube::Error, _: Arc<Api<ConfigMap>>) -> Action {
        Action::requeue(Duration::from_millis(100))
    }
    let tiny = Controller::new(
        api.clone(),
        watcher::Config::default().labels("managed=yes"),
    );
    let cache = tiny.store();
    let controller = tokio::spawn(
        tiny.run(reconcile, error_policy, Arc::new(api.clone()))
            .for_each(|_| async {}),
    );
    // The controller's own cache syncs too.
    tokio::time::timeout(Duration::from_secs(5), cache.wait_until_ready())
        .await
        .expect("the controller's cache syncs within 5 s")
        .expect("writer alive");
    api.create(
        &PostParams::default(),
        &config_map("late", &[("managed", "yes")]),
    )
    .await
    .expect("create");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let all = api
            .list(&ListParams::default().labels("managed=yes"))
            .await
            .expect("list");
        let stamped = all
            .items
            .iter()
            .filter(|c| c.annotations().get("reconciled").map(String::as_str) == Some("true"))
            .count();
        if stamped == 6 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {stamped} of 6 reconciled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Converged: a resync makes no further writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.reset_counts();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let writes: Vec<_> = server.mutations();
    assert!(writes.is_empty(), "writes after convergence: {writes:?}");
    controller.abort();
    reflector_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_builtins_and_registered_kinds() {
    let server = ApiServer::start().await.expect("server");
    let (client, _) = with_widgets(&server).await;
    let discovery = kube::Discovery::new(client).run().await.expect("discovery");
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for group in [
        "",
        "apps",
        "batch",
        "policy",
        "coordination.k8s.io",
        "test.phoenix.dev",
    ] {
        assert!(
            groups.contains(&group.to_string()),
            "{group} missing from {groups:?}"
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(server.client().expect("client"));
    let crd = crds.get("widgets.test.phoenix.dev").await.expect("crd");
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_relists_after_410_and_keeps_delivering() {
    let server = ApiServer::start().await.expect("server");
    let api: Api<ConfigMap> = Api::default_namespaced(server.client().expect("client"));
    api.create(&PostParams::default(), &config_map("before", &[]))
        .await
        .expect("create");
    // Short server-side timeouts make the watcher re-watch from its last version often.
    let mut events = watcher(api.clone(), watcher::Config::default().timeout(1))
        .default_backoff()
        .applied_objects()
        .boxed();
    let first = events.try_next().await.expect("event").expect("object");
    assert_eq!(first.name_any(), "before");
    // The watch drops (its 1 s timeout) and the next one fails, so the watcher's version
    // falls behind; a write and a compaction later, re-watching from it gets 410 Gone and
    // the watcher must relist to see the write.
    server.inject(
        Some(Verb::Watch),
        Some("configmaps"),
        1,
        FaultAction::Fail(500),
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    api.create(&PostParams::default(), &config_map("after", &[]))
        .await
        .expect("create");
    server.compact();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("an event before the deadline")
            .expect("stream open");
        // The injected failure surfaces as one error item; the watcher carries on.
        if next.is_ok_and(|cm| cm.name_any() == "after") {
            break;
        }
    }
    assert!(
        server.requests(Verb::List, "configmaps") >= 2,
        "the watcher relisted"
    );
}

/// A watcher that falls behind (more events than the server buffers while it does not
/// read) is cut off and resumes from the last version it was promised, losing nothing: a
/// bookmark never promises a version past events still queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_cut_off_for_lagging_resumes_without_losing_events() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let configmaps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let mut seen = std::collections::HashSet::new();
    let mut changes = watcher(configmaps.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    // A slow reader while far more is written than the server buffers (4,096 events, and
    // objects large enough that the sockets' buffers cannot hold them either): bookmarks
    // pass between events, and the watch is cut off for lagging.
    let total = 6000;
    let big = "x".repeat(16 << 10);
    let writer = tokio::spawn(async move {
        futures::stream::iter(0..total)
            .map(|i| {
                let configmaps = configmaps.clone();
                let mut configmap = config_map(&format!("cm-{i}"), &[]);
                configmap.data = Some([("big".to_string(), big.clone())].into());
                async move {
                    configmaps
                        .create(&PostParams::default(), &configmap)
                        .await
                        .expect("create")
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < total {
        match tokio::time::timeout_at(deadline, changes.next()).await {
            Ok(Some(Ok(cm))) => {
                seen.insert(cm.metadata.name.unwrap_or_default());
                if seen.len() < total / 4 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    writer.await.expect("writer");
    assert_eq!(seen.len(), total, "the watcher lost events");
}

/// A paged list promises the first page's version on every page, so that a watch from it
/// sees what changed while the client paged: here an object of the first page changes
/// before the second page is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_list_then_a_watch_misses_no_change_made_while_paging() {
    use futures::StreamExt;
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let configmaps: Api<ConfigMap> = Api::default_namespaced(client);
    for name in ["a", "b", "c", "d"] {
        configmaps
            .create(&PostParams::default(), &config_map(name, &[]))
            .await
            .expect("create");
    }
    let first = configmaps
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    assert_eq!(first.items.len(), 2);
    configmaps
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"changed": "while paging"}})),
        )
        .await
        .expect("change a");
    let second = configmaps
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(first.metadata.continue_.as_deref().unwrap_or_default()),
        )
        .await
        .expect("page 2");
    assert_eq!(second.items.len(), 2);
    let version = second.metadata.resource_version.unwrap_or_default();
    assert_eq!(Some(version.clone()), first.metadata.resource_version);
    let mut events = configmaps
        .watch(&kube::api::WatchParams::default(), &version)
        .await
        .expect("watch")
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .expect("an event");
    match event {
        kube::api::WatchEvent::Modified(cm) => {
            assert_eq!(cm.metadata.name.as_deref(), Some("a"));
        }
        other => panic!("expected a's change, got {other:?}"),
    }
}
