//! The operator's real kube `Controller` against the in-process API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use phoenix_operator::controller::{self, Settings};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_operator::metrics::Metrics;
use phoenix_tests::apiserver::{ApiServer, FaultAction, Verb};
use serde_json::json;

struct Harness {
    server: ApiServer,
    client: Client,
    metrics: Arc<Metrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    /// Reconciles that succeeded so far.
    fn reconciles(&self) -> f64 {
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("phoenix_operator_reconciles_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    async fn start() -> Harness {
        Harness::start_with(Settings {
            default_image: "phoenix-memory:test".into(),
            resync: Duration::from_secs(1),
            ..Settings::default()
        })
        .await
    }

    /// Observes every second, resyncs only after ten minutes: every reconcile in a few
    /// seconds is an observation's.
    async fn observing_every_second() -> Harness {
        Harness::start_with(Settings {
            default_image: "phoenix-memory:test".into(),
            resync: Duration::from_secs(600),
            observe_interval: Duration::from_secs(1),
            ..Settings::default()
        })
        .await
    }

    async fn start_with(settings: Settings) -> Harness {
        let server = ApiServer::start().await.expect("server");
        let client = server.client().expect("client");
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &PhoenixMemory::crd())
            .await
            .expect("install CRD");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client_for_task = client.clone();
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let metrics_for_task = Arc::clone(&metrics);
        let task = tokio::spawn(async move {
            let _ = controller::run(client_for_task, settings, metrics_for_task, async move {
                let _ = stopped.await;
            })
            .await;
        });
        Harness {
            server,
            client,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    fn memories(&self) -> Api<PhoenixMemory> {
        Api::default_namespaced(self.client.clone())
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::default_namespaced(self.client.clone())
    }

    async fn exists<K>(&self, name: &str) -> bool
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        self.api::<K>().get_opt(name).await.expect("get").is_some()
    }

    async fn create(&self, name: &str, spec: serde_json::Value) {
        let memory: PhoenixMemory = serde_json::from_value(json!({
            "apiVersion": "phoenix.dev/v1alpha1", "kind": "PhoenixMemory",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("memory");
        self.memories()
            .create(&PostParams::default(), &memory)
            .await
            .expect("create memory");
    }

    /// Waits for `Ready=True` on memory `name`.
    async fn ready_true(&self, name: &str) {
        eventually("Ready=True", || async {
            let status = self.memories().get(name).await.ok()?.status?;
            status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
    }

    /// The StatefulSet controller's and the kubelet's part: every node of `name` runs and is
    /// ready (there are no pods here).
    async fn nodes_ready(&self, name: &str) {
        let sts = eventually("the StatefulSet", || async {
            self.api::<StatefulSet>().get_opt(name).await.ok().flatten()
        })
        .await;
        let replicas = sts.spec.and_then(|s| s.replicas).unwrap_or(1);
        self.api::<StatefulSet>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "replicas": replicas, "readyReplicas": replicas,
                    "updatedReplicas": replicas, "currentReplicas": replicas,
                }})),
            )
            .await
            .expect("StatefulSet status");
    }

    /// `Ready=False` with reason `ChildRejected` at the memory's current generation,
    /// waiting for it.
    async fn rejected(
        &self,
        name: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        eventually("Ready=False ChildRejected", || async {
            let m = self.memories().get(name).await.ok()?;
            let status = m.status?;
            if status.observed_generation != m.metadata.generation {
                return None;
            }
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Ready" && c.reason == "ChildRejected")
        })
        .await
    }

    /// Sets `spec.storage.size` of memory `name`.
    async fn storage_size(&self, name: &str, size: &str) {
        self.memories()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"storage": {"size": size}}})),
            )
            .await
            .expect("change storage.size");
    }

    /// The first Event with `reason`, waiting for it.
    async fn event(&self, reason: &str) -> k8s_openapi::api::events::v1::Event {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.api();
        eventually(&format!("a {reason} event"), || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Polls `check` until it returns Some, or panics after 15 s naming `what`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reconciles of a converged memory (here every second, the observe interval) read its
/// children from the watch caches, never by GET; a change is seen and repaired at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_memory_is_not_reread_until_a_child_changes() {
    let h = Harness::observing_every_second().await;
    h.create("mem", json!({"replicas": 1})).await;
    h.nodes_ready("mem").await;
    h.ready_true("mem").await;
    // Let the reconciles woken by the operator's own writes pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.server.reset_counts();
    let before = h.reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads: u64 = h
        .server
        .request_counts()
        .iter()
        .filter(|((verb, resource), _)| *verb == Verb::Get && resource != "phoenixmemories")
        .map(|(_, n)| n)
        .sum();
    assert!(
        h.reconciles() - before >= 2.0,
        "the observe interval requeues"
    );
    assert_eq!(reads, 0, "{:?}", h.server.request_counts());
    // Nor writes: nothing a reader or a decision uses changed (no heartbeat writes).
    let writes = h.server.mutations();
    assert!(writes.is_empty(), "a converged memory wrote: {writes:?}");

    // A child changed behind the operator's back: read, and repaired.
    let configmaps: Api<ConfigMap> = h.api();
    configmaps
        .patch(
            "mem-config",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"node.yaml": "tampered"}})),
        )
        .await
        .expect("tamper");
    eventually("the ConfigMap repaired", || async {
        let data = configmaps.get("mem-config").await.ok()?.data?;
        (data.get("node.yaml").map(String::as_str) != Some("tampered")).then_some(())
    })
    .await;
    // Seen in the watch cache, repaired by an apply (the GETs here are the test's own).
    assert!(h.server.requests(Verb::Patch, "configmaps") >= 1);
    h.stop().await;
}

/// A memory whose StatefulSet has made no pod has nothing to observe: it is not reconciled
/// every observe interval (at 10,000 memories those re-reconciles of the first ones slowed
/// the convergence of the rest), and the StatefulSet's first pod, shown in its status, wakes
/// it and its observations resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_without_pods_is_not_polled_until_its_statefulset_makes_one() {
    let h = Harness::observing_every_second().await;
    h.create("mem", json!({"replicas": 1})).await;
    eventually("converged at its generation", || async {
        let memory = h.memories().get("mem").await.ok()?;
        let status = memory.status?;
        (status.observed_generation == memory.metadata.generation
            && status.conditions.iter().any(|c| c.type_ == "Ready"))
        .then_some(())
    })
    .await;
    // Let the reconciles woken by the operator's own writes pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = h.reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        h.reconciles() - before,
        0.0,
        "a memory without pods was reconciled every observe interval"
    );

    h.nodes_ready("mem").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = h.reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        h.reconciles() - before >= 2.0,
        "a memory with a pod is observed every interval again"
    );
    h.stop().await;
}

/// The real StatefulSet and disruption controllers write their children's status all the
/// time. Such a status-only change wakes the memory's reconcile for what depends on it (its
/// readiness and replica counts) and nothing else: no GET of any child, no apply, and a
/// status write only when what it shows changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_status_only_change_reads_and_writes_nothing_else() {
    let h = Harness::start_with(Settings {
        default_image: "phoenix-memory:test".into(),
        observe_interval: Duration::from_secs(600),
        ..Settings::default()
    })
    .await;
    h.create("mem", json!({"replicas": 2})).await;
    h.nodes_ready("mem").await;
    h.ready_true("mem").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let operator_writes = |h: &Harness| -> Vec<_> {
        h.server
            .mutations()
            .into_iter()
            .filter(|m| m.field_manager.as_deref() == Some("phoenix-operator"))
            .collect()
    };
    h.server.reset_counts();
    let before = h.reconciles();
    // Status churn that changes nothing the memory shows: the PDB's and the StatefulSet's
    // observed generations and revisions, every 100 ms for 2 s.
    for round in 0..20 {
        h.api::<PodDisruptionBudget>()
            .patch_status(
                "mem",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": round, "currentHealthy": 2, "desiredHealthy": 1,
                    "disruptionsAllowed": 1, "expectedPods": 2
                }})),
            )
            .await
            .expect("PDB status");
        h.api::<StatefulSet>()
            .patch_status(
                "mem",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"observedGeneration": round, "collisionCount": 0}}),
                ),
            )
            .await
            .expect("StatefulSet status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.reconciles() > before, "the changes woke the reconcile");
    let reads: Vec<_> = h
        .server
        .request_counts()
        .into_iter()
        .filter(|((verb, resource), _)| *verb == Verb::Get && resource != "phoenixmemories")
        .collect();
    assert!(reads.is_empty(), "children read: {reads:?}");
    let writes = operator_writes(&h);
    assert!(writes.is_empty(), "the operator wrote: {writes:?}");

    // A status change that matters (a node no longer ready) is written, and only status.
    h.server.reset_counts();
    h.api::<StatefulSet>()
        .patch_status(
            "mem",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
        )
        .await
        .expect("StatefulSet status");
    eventually("Ready=False NodesNotReady", || async {
        let status = h.memories().get("mem").await.ok()?.status?;
        (status.ready_replicas == 1
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "NodesNotReady"))
        .then_some(())
    })
    .await;
    let writes = operator_writes(&h);
    assert!(
        writes
            .iter()
            .all(|m| m.resource == "phoenixmemories/status"),
        "{writes:?}"
    );
    h.stop().await;
}

/// The admin token is generated once and kept, even when the Secret drops out of the
/// operator's cache (someone removed its `managed-by` label): the operator looks it up
/// before making a new one, and puts the label back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_survives_its_secret_leaving_the_cache() {
    let h = Harness::start().await;
    h.create("mem", json!({"replicas": 1})).await;
    let secrets: Api<Secret> = h.api();
    let token = |secret: &Secret| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .map(|t| t.0.clone())
    };
    let before = eventually("the Secret", || async {
        secrets.get_opt("mem-admin").await.ok().flatten()
    })
    .await;
    secrets
        .patch(
            "mem-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}})),
        )
        .await
        .expect("unlabel");
    let after = eventually("the label back", || async {
        let secret = secrets.get("mem-admin").await.ok()?;
        secret
            .metadata
            .labels
            .as_ref()?
            .contains_key("app.kubernetes.io/managed-by")
            .then_some(secret)
    })
    .await;
    assert_eq!(token(&after), token(&before), "the token was replaced");
    h.stop().await;
}

/// Waits for `name`, deletes it at once, and waits for a new one.
async fn deleted_comes_back<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let first = eventually(name, || async { api.get_opt(name).await.ok().flatten() }).await;
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete");
    let again = eventually(&format!("{name} again"), || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await;
    assert_ne!(again.meta().uid, first.meta().uid, "{name} created anew");
}

/// The operator vouches for the children it just wrote before their watch events arrive;
/// a child deleted at once after its create must still come back (the caches tell a
/// deletion from "not delivered yet").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_deleted_right_after_its_create_comes_back() {
    let h = Harness::start().await;
    h.create("mem", json!({"replicas": 1})).await;
    deleted_comes_back(&h.api::<Service>(), "mem").await;
    deleted_comes_back(&h.api::<CronJob>(), "mem-cleanup").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_update_repair_scale_and_delete() {
    let h = Harness::start().await;
    h.create("mem", json!({"replicas": 2})).await;

    // Every child exists with the right shape.
    let sts: Api<StatefulSet> = h.api();
    let first = eventually("the statefulset", || async {
        sts.get_opt("mem").await.ok().flatten()
    })
    .await;
    assert_eq!(first.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert!(h.exists::<ConfigMap>("mem-config").await);
    assert!(h.exists::<Secret>("mem-admin").await);
    assert!(h.exists::<Service>("mem").await);
    assert!(h.exists::<Service>("mem-nodes").await);
    assert!(h.exists::<PodDisruptionBudget>("mem").await);
    assert!(h.exists::<CronJob>("mem-cleanup").await);
    // Children applied, no node ready yet: not Ready, progressing.
    let waiting = eventually("Ready=False NodesNotReady", || async {
        let status = h.memories().get("mem").await.ok()?.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "NodesNotReady")
            .then_some(status)
    })
    .await;
    assert!(
        waiting
            .conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.status == "True"),
        "{:?}",
        waiting.conditions
    );
    h.nodes_ready("mem").await;
    let ready = eventually("Ready=True", || async {
        let m = h.memories().get("mem").await.ok()?;
        let status = m.status?;
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(status)
    })
    .await;
    assert_eq!(ready.observed_generation, Some(1));
    assert!(ready.selector.is_some());
    // The operator's own /readyz: it leads (no election here) and its cache has synced.
    eventually("the operator ready", || async {
        h.metrics.health.unready().is_none().then_some(())
    })
    .await;
    assert_eq!(h.metrics.health.unhealthy(), None);
    let cron = h
        .api::<CronJob>()
        .get("mem-cleanup")
        .await
        .expect("cronjob");
    assert_eq!(
        ready.plan.as_ref().map(|p| p.schedule.clone()),
        cron.spec.map(|s| s.schedule),
        "status shows the CronJob's schedule"
    );
    // An Event says what was applied; the metrics count the reconcile.
    let applied = h.event("Applied").await;
    assert!(applied.note.unwrap_or_default().contains("StatefulSet"));
    let text = h.metrics.render();
    assert!(
        text.contains("phoenix_operator_reconciles_total{result=\"ok\"}"),
        "{text}"
    );
    assert!(text.contains("phoenix_operator_leader 1"), "{text}");
    let token = h
        .api::<Secret>()
        .get("mem-admin")
        .await
        .expect("secret")
        .data
        .expect("data")["token"]
        .clone();

    // A spec change updates the children and advances observedGeneration.
    h.memories()
        .patch(
            "mem",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"node": {"cacheCapacity": "64Mi"}}})),
        )
        .await
        .expect("patch");
    eventually("the new config", || async {
        let cm = h.api::<ConfigMap>().get("mem-config").await.ok()?;
        cm.data?
            .get("node.yaml")?
            .contains("67108864")
            .then_some(())
    })
    .await;
    eventually("observedGeneration 2", || async {
        (h.memories()
            .get("mem")
            .await
            .ok()?
            .status?
            .observed_generation
            == Some(2))
        .then_some(())
    })
    .await;
    let restarted = sts.get("mem").await.expect("sts");
    let hash = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .and_then(|a| a.get("phoenix.dev/config-hash").cloned())
    };
    assert_ne!(
        hash(&restarted),
        hash(&first),
        "a config change must restart the pods"
    );
    // The admin token is generated once and kept.
    assert_eq!(
        h.api::<Secret>()
            .get("mem-admin")
            .await
            .expect("secret")
            .data
            .expect("data")["token"],
        token
    );

    // Drift: a deleted child comes back, an edited one is repaired.
    h.api::<Service>()
        .delete("mem", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually("the client service again", || async {
        h.api::<Service>().get_opt("mem").await.ok().flatten()
    })
    .await;
    h.api::<PodDisruptionBudget>()
        .patch(
            "mem",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxUnavailable": 5}})),
        )
        .await
        .expect("edit pdb");
    eventually("the pdb repaired", || async {
        let pdb = h.api::<PodDisruptionBudget>().get("mem").await.ok()?;
        (pdb.spec?.max_unavailable
            == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1)))
        .then_some(())
    })
    .await;

    // kubectl scale: the scale subresource moves spec.replicas, the StatefulSet follows.
    h.memories()
        .patch_scale(
            "mem",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("scale");
    eventually("4 replicas", || async {
        (sts.get("mem").await.ok()?.spec?.replicas == Some(4)).then_some(())
    })
    .await;

    // Converged: a resync (every second here) makes no mutating request, and reads its
    // children from the watch caches (no GET).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.server.reset_counts();
    let before = h.reconciles();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let writes = h.server.mutations();
    assert!(writes.is_empty(), "a converged resync wrote: {writes:?}");
    assert!(h.reconciles() - before >= 2.0, "the resync did run");
    assert_eq!(h.server.requests(Verb::Get, "statefulsets"), 0);

    // Deleting the memory deletes its children.
    h.memories()
        .delete("mem", &DeleteParams::default())
        .await
        .expect("delete memory");
    eventually("children gone", || async {
        let sts_gone = sts.get_opt("mem").await.ok()?.is_none();
        let cm_gone = h
            .api::<ConfigMap>()
            .get_opt("mem-config")
            .await
            .ok()?
            .is_none();
        let cron_gone = h
            .api::<CronJob>()
            .get_opt("mem-cleanup")
            .await
            .ok()?
            .is_none();
        (sts_gone && cm_gone && cron_gone).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_combination_gives_ready_false_and_no_children() {
    let h = Harness::start().await;
    // The schema accepts it (each field is in bounds); only the operator sees minInterval > maxInterval.
    h.create(
        "odd",
        json!({"cleanup": {"minInterval": "48h", "maxInterval": "1h"}}),
    )
    .await;
    let condition = eventually("Ready=False", || async {
        let m = h.memories().get("odd").await.ok()?;
        m.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason, "InvalidSpec");
    let warning = h.event("InvalidSpec").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(
        condition.message.contains("must not exceed"),
        "{}",
        condition.message
    );
    assert!(
        h.api::<StatefulSet>()
            .get_opt("odd")
            .await
            .expect("get")
            .is_none()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_500s_and_409s_are_retried_until_converged() {
    let h = Harness::start().await;
    h.server.inject(
        Some(Verb::Patch),
        Some("statefulsets"),
        3,
        FaultAction::Fail(500),
    );
    h.server.inject(
        Some(Verb::Patch),
        Some("cronjobs"),
        2,
        FaultAction::Fail(409),
    );
    h.create("flaky", json!({"replicas": 1})).await;
    eventually("the cronjob despite faults", || async {
        h.api::<CronJob>()
            .get_opt("flaky-cleanup")
            .await
            .ok()
            .flatten()
    })
    .await;
    let failed = h
        .server
        .mutations()
        .iter()
        .filter(|m| m.status >= 409)
        .count();
    assert_eq!(failed, 5, "every injected fault was hit");
    h.stop().await;
}

/// A child the API server refuses for good (422) is reported, not retried in silence: before,
/// the operator kept patching with backoff while `Ready` stayed as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_the_api_server_refuses_is_shown_and_retried_calmly() {
    let h = Harness::start().await;
    h.server.inject(
        Some(Verb::Patch),
        Some("statefulsets"),
        1000,
        FaultAction::Fail(422),
    );
    h.create("refused", json!({"replicas": 1})).await;
    let condition = h.rejected("refused").await;
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.contains("StatefulSet refused") && condition.message.contains("422"),
        "{}",
        condition.message
    );
    let warning = h.event("ChildRejected").await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    // No loop: once the status says so (its own write wakes one more reconcile, which finds
    // nothing new to write), the refused patch is not sent again, although the harness
    // resyncs every second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let patches = || {
        h.server
            .mutations()
            .iter()
            .filter(|m| m.resource == "statefulsets" && m.status == 422)
            .count()
    };
    let before = patches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        patches(),
        before,
        "the refused StatefulSet was patched again"
    );
    // The first reconciles (each new child and the status write wake one) may meet it a
    // few times; then it stops.
    assert!(
        before <= 6,
        "{before} refused patches before the status said so"
    );
    h.stop().await;
}

/// Quantities the server rewrites (`0.5` → `500m`, `1024Mi` → `1Gi`) are not a difference:
/// before, every full check force-applied the StatefulSet again and published `Applied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_the_server_rewrites_cause_no_writes() {
    let h = Harness::start().await;
    h.create(
        "sized",
        json!({"replicas": 1, "resources": {
            "requests": {"cpu": "0.5", "memory": "1024Mi"},
            "limits": {"memory": "1536Mi"}}}),
    )
    .await;
    let stored = eventually("the StatefulSet", || async {
        h.api::<StatefulSet>().get_opt("sized").await.ok().flatten()
    })
    .await;
    let requests = stored
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.into_iter().next())
        .and_then(|c| c.resources)
        .and_then(|r| r.requests)
        .expect("requests");
    assert_eq!(
        requests.get("cpu").map(|q| q.0.as_str()),
        Some("500m"),
        "stored canonically"
    );
    h.nodes_ready("sized").await;
    h.ready_true("sized").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.server.reset_counts();
    // Full checks every second (resync) for three seconds: nothing to write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> = h
        .server
        .mutations()
        .into_iter()
        .filter(|m| m.resource != "events" && m.resource != "leases")
        .map(|m| (m.resource, m.name))
        .collect();
    assert!(
        writes.is_empty(),
        "writes for a converged memory: {writes:?}"
    );
    h.stop().await;
}

/// Shrinking `storage.size` cannot be done in place: said at once (before, the
/// StatefulSet patch was refused by the API server, silently retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_change_the_volumes_cannot_take_is_shown() {
    let h = Harness::start().await;
    h.create("disk", json!({"replicas": 1, "storage": {"size": "2Gi"}}))
        .await;
    eventually("the StatefulSet", || async {
        h.api::<StatefulSet>().get_opt("disk").await.ok().flatten()
    })
    .await;
    h.storage_size("disk", "1Gi").await;
    let condition = h.rejected("disk").await;
    assert!(
        condition.message.contains("StatefulSet disk") && condition.message.contains("only grow"),
        "{}",
        condition.message
    );
    h.stop().await;
}

/// The claims and the memory of `grow`: a StorageClass, one node's claim and pod.
async fn storage_fixture(h: &Harness, memory: &str, class: &str, expandable: bool) -> String {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    use k8s_openapi::api::storage::v1::StorageClass;
    Api::<StorageClass>::all(h.client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": class}, "provisioner": "test.example.com",
                "allowVolumeExpansion": expandable
            }))
            .expect("class"),
        )
        .await
        .expect("create the StorageClass");
    h.create(
        memory,
        json!({"replicas": 1, "storage": {"size": "1Gi", "storageClassName": class}}),
    )
    .await;
    let sts = eventually("the StatefulSet", || async {
        h.api::<StatefulSet>().get_opt(memory).await.ok().flatten()
    })
    .await;
    let uid = sts.metadata.uid.clone().expect("uid");
    h.api::<PersistentVolumeClaim>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("data-{memory}-0")},
                "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}}
            }))
            .expect("claim"),
        )
        .await
        .expect("create the claim");
    h.api::<Pod>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{memory}-0"), "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "StatefulSet", "name": memory,
                    "uid": uid, "controller": true}]},
                "spec": {"containers": [{"name": "node", "image": "x"}]}
            }))
            .expect("pod"),
        )
        .await
        .expect("create the pod");
    uid
}

fn claim_size(claim: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> Option<String> {
    claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
}

/// A larger `storage.size` grows each claim and replaces the StatefulSet with its pods
/// orphaned (kept running), as CloudNativePG does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_grows_in_place_without_deleting_a_pod() {
    use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
    let h = Harness::start().await;
    let old_uid = storage_fixture(&h, "grow", "expandable", true).await;
    h.storage_size("grow", "2Gi").await;
    let replaced = eventually("a StatefulSet with 2Gi claims", || async {
        let sts = h
            .api::<StatefulSet>()
            .get_opt("grow")
            .await
            .ok()
            .flatten()?;
        let size = sts
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.as_ref())
            .and_then(|t| t.first())
            .and_then(claim_size);
        (size.as_deref() == Some("2Gi")).then_some(sts)
    })
    .await;
    assert_ne!(
        replaced.metadata.uid.as_deref(),
        Some(old_uid.as_str()),
        "replaced"
    );
    let claim = h
        .api::<PersistentVolumeClaim>()
        .get("data-grow-0")
        .await
        .expect("the claim");
    assert_eq!(claim_size(&claim).as_deref(), Some("2Gi"), "the claim grew");
    let pod = h
        .api::<Pod>()
        .get("grow-0")
        .await
        .expect("the pod was kept");
    assert!(
        pod.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .all(|r| r.uid != old_uid),
        "orphaned from the old StatefulSet"
    );
    h.stop().await;
}

/// A StorageClass without volume expansion: nothing is touched and the memory says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_that_cannot_expand_is_left_alone_and_shown() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let h = Harness::start().await;
    let uid = storage_fixture(&h, "fixed", "fixed-class", false).await;
    h.storage_size("fixed", "2Gi").await;
    let condition = h.rejected("fixed").await;
    assert!(
        condition
            .message
            .contains("does not allow volume expansion"),
        "{}",
        condition.message
    );
    let claim = h
        .api::<PersistentVolumeClaim>()
        .get("data-fixed-0")
        .await
        .expect("the claim");
    assert_eq!(claim_size(&claim).as_deref(), Some("1Gi"), "untouched");
    let sts = h.api::<StatefulSet>().get("fixed").await.expect("kept");
    assert_eq!(
        sts.metadata.uid.as_deref(),
        Some(uid.as_str()),
        "not replaced"
    );
    h.stop().await;
}

/// A name whose children the API server would refuse (the CronJob `NAME-cleanup` must be at
/// most 52 characters) is refused at validation: Ready=False InvalidSpec, no children.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_name_too_long_for_its_children_is_an_invalid_spec() {
    let h = Harness::start().await;
    let name = "m".repeat(45);
    h.create(&name, json!({"replicas": 1})).await;
    let condition = eventually("Ready=False", || async {
        let m = h.memories().get(&name).await.ok()?;
        m.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason, "InvalidSpec");
    assert!(
        condition.message.contains("metadata.name"),
        "{}",
        condition.message
    );
    assert!(
        h.api::<StatefulSet>()
            .get_opt(&name)
            .await
            .expect("get")
            .is_none()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_only_the_leader_writes_and_the_other_takes_over() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &PhoenixMemory::crd())
        .await
        .expect("install CRD");
    // Two replicas that would fight: each wants its own image in the StatefulSet.
    let start = |identity: &str, image: &str| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = Settings {
            default_image: image.into(),
            resync: Duration::from_secs(1),
            leader_election: Some(controller::LeaderElection {
                namespace: "default".into(),
                lease_name: "phoenix-operator-leader".into(),
                identity: identity.into(),
                lease_seconds: 3,
                renew_margin_seconds: 1,
            }),
            ..Settings::default()
        };
        let client = client.clone();
        let task = tokio::spawn(async move {
            let metrics = Arc::new(Metrics::new().expect("metrics"));
            controller::run(client, settings, metrics, async move {
                let _ = stopped.await;
            })
            .await
            .expect("lease manager");
        });
        (stop, task)
    };
    let (stop_a, task_a) = start("replica-a", "image:a");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stop_b, task_b) = start("replica-b", "image:b");
    let memory: PhoenixMemory = serde_json::from_value(json!({
        "apiVersion": "phoenix.dev/v1alpha1", "kind": "PhoenixMemory",
        "metadata": {"name": "led"}, "spec": {"replicas": 1},
    }))
    .expect("memory");
    Api::<PhoenixMemory>::default_namespaced(client.clone())
        .create(&PostParams::default(), &memory)
        .await
        .expect("create");
    let sts: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let image = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].image.clone())
    };
    let first = eventually("the statefulset", || async {
        sts.get_opt("led").await.ok().flatten()
    })
    .await;
    let leader_image = image(&first).expect("image");
    // Several resyncs later nobody has overwritten the leader's choice: one writer only.
    server.reset_counts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sts_writes = server
        .mutations()
        .iter()
        .filter(|m| m.resource == "statefulsets")
        .count();
    assert_eq!(sts_writes, 0, "the follower wrote the StatefulSet");
    assert_eq!(
        image(&sts.get("led").await.expect("sts")),
        Some(leader_image.clone())
    );
    // The leader stops; the other replica takes the lease and reconciles with its image.
    let (stop_leader, task_leader, other_image) = if leader_image == "image:a" {
        (stop_a, task_a, "image:b")
    } else {
        (stop_b, task_b, "image:a")
    };
    let _ = stop_leader.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task_leader).await;
    eventually("the other replica takes over", || async {
        (image(&sts.get("led").await.ok()?)? == other_image).then_some(())
    })
    .await;
}
