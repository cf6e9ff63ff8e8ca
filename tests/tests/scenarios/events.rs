//! The operator's Event publisher against the in-process API server: a repeated note is
//! one Event with a series count; a new note is a new Event (kube's `Recorder` would keep
//! the first note for every Event of a reason).

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use phoenix_operator::controller::events::{Kind, Publisher};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_tests::apiserver::ApiServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_note_is_a_new_event_and_a_repeated_one_a_series() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let mut memory = PhoenixMemory::new("mem", serde_json::from_str("{}").expect("spec"));
    memory.metadata.namespace = Some("default".into());
    memory.metadata.uid = Some("uid-1".into());
    let events = Publisher::new(client.clone(), "phoenix-operator", None);
    events
        .publish(&memory, Kind::Normal, "PlanChanged", "a → b".into())
        .await;
    events
        .publish(&memory, Kind::Normal, "PlanChanged", "a → b".into())
        .await;
    events
        .publish(&memory, Kind::Normal, "PlanChanged", "b → a".into())
        .await;
    let listed = Api::<Event>::namespaced(client, "default")
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    let mut seen: Vec<(String, i32)> = listed
        .iter()
        .map(|e| {
            (
                e.note.clone().unwrap_or_default(),
                e.series.as_ref().map_or(1, |s| s.count),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen, [("a → b".to_string(), 2), ("b → a".to_string(), 1)]);
    let first = listed
        .iter()
        .find(|e| e.note.as_deref() == Some("a → b"))
        .expect("event");
    assert_eq!(first.reason.as_deref(), Some("PlanChanged"));
    assert_eq!(
        first.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("mem")
    );
    assert_eq!(
        first.reporting_controller.as_deref(),
        Some("phoenix-operator")
    );
}
