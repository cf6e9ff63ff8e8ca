//! What several scenario modules share.

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use phoenix_operator::crd::PhoenixMemoryStatus;
use phoenix_tests::sandbox::Sandbox;

/// Every Event's reason and note.
pub async fn event_reasons(sandbox: &Sandbox) -> Vec<(String, String)> {
    sandbox
        .api::<Event>()
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// `name`'s status now.
pub async fn status_of(sandbox: &Sandbox, name: &str) -> PhoenixMemoryStatus {
    sandbox
        .api::<phoenix_operator::crd::PhoenixMemory>()
        .get(name)
        .await
        .expect("memory")
        .status
        .unwrap_or_default()
}

/// [`Sandbox::wait_status`], failing the test on a timeout.
pub async fn wait_status<F>(
    sandbox: &Sandbox,
    name: &str,
    what: &str,
    seconds: u64,
    check: F,
) -> PhoenixMemoryStatus
where
    F: FnMut(&PhoenixMemoryStatus) -> bool,
{
    match sandbox.wait_status(name, what, seconds, check).await {
        Ok(status) => status,
        Err(error) => panic!("{error:#}"),
    }
}

/// A PhoenixMemory `name` of `replicas` nodes with a fast cleanup policy (degraded at 2×,
/// emergency at 6×, minInterval 1m).
pub fn manifest(name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: phoenix.dev/v1alpha1
kind: PhoenixMemory
metadata:
  name: {name}
  namespace: default
spec:
  replicas: {replicas}
  cleanup:
    degradationThreshold: 2.0
    recoverThreshold: 1.5
    emergencyThreshold: 6.0
    minInterval: 1m
    maxInterval: 24h
"#
    )
}
