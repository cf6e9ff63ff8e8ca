//! Runs the controller: the `Controller` over the memories with the watches of their
//! children, the context every reconcile shares, and the readiness signal.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};

use super::caches::{self, Caches};
use super::context::{Context, FIELD_MANAGER, Settings, api};
use super::state::{self, Memories};
use super::{events, reconcile};
use crate::crd::PhoenixMemory;
use crate::metrics::Metrics;

/// Reconcile requests for one object within this time are merged (a new memory's seven
/// children each trigger one; its status write another).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Runs the controller (and the watches of the children) until `shutdown` resolves.
pub async fn run_controller(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.clone();
    let (configmaps, configmap_changes) = caches::watch(api::<ConfigMap>(&client, &ns));
    let (secrets, secret_changes) = caches::watch(api::<Secret>(&client, &ns));
    let (services, service_changes) = caches::watch(api::<Service>(&client, &ns));
    let (statefulsets, statefulset_changes) = caches::watch(api::<StatefulSet>(&client, &ns));
    let (pdbs, pdb_changes) = caches::watch(api::<PodDisruptionBudget>(&client, &ns));
    let (network_policies, network_policy_changes) =
        caches::watch(api::<NetworkPolicy>(&client, &ns));
    let (cronjobs, cronjob_changes) = caches::watch(api::<CronJob>(&client, &ns));
    let (pods, pod_watch) = caches::watch_pods(api::<Pod>(&client, &ns));
    let pod_watch = tokio::spawn(pod_watch);
    let caches = Caches {
        configmaps,
        secrets,
        services,
        statefulsets,
        pdbs,
        network_policies,
        cronjobs,
        pods,
    };
    let context = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        events: events::Publisher::new(
            client.clone(),
            FIELD_MANAGER,
            settings
                .leader_election
                .as_ref()
                .map(|l| l.identity.clone()),
        ),
        http: reqwest::Client::new(),
        memories: Arc::new(Memories::default()),
        caches: caches.clone(),
    });
    // The memories' own watch and store, without `managedFields` (a status applied in full
    // lists every field it owns there: kilobytes per memory that nothing here reads).
    let (memories_store, memories_writer) = reflector::store();
    let memory_changes = watcher(
        api::<PhoenixMemory>(&client, &ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|memory: &mut PhoenixMemory| memory.managed_fields_mut().clear())
    .reflect(memories_writer)
    .applied_objects();
    let controller = Controller::for_stream(memory_changes, memories_store);
    // Ready once the memories can be listed (what the controller's watch starts with) and
    // every child cache holds its first complete list. (kube-runtime's
    // `Store::wait_until_ready` on the controller's own store did not resolve against the
    // in-process API server; a list is the same question, asked once.)
    let health = Arc::clone(&context.metrics.health);
    let lister = api::<PhoenixMemory>(&client, &ns);
    let synced = tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match lister
                .list(&kube::api::ListParams::default().limit(1))
                .await
            {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "cannot list the memories yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        if caches.ready().await {
            health.set_synced();
        }
    });
    // Each child's watch fills its cache and wakes its owner's reconcile.
    controller
        .owns_stream(statefulset_changes)
        .owns_stream(configmap_changes)
        .owns_stream(secret_changes)
        .owns_stream(service_changes)
        .owns_stream(pdb_changes)
        .owns_stream(network_policy_changes)
        .owns_stream(cronjob_changes)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(settings.concurrency)
                .debounce(DEBOUNCE),
        )
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile::measured,
            reconcile::error_policy,
            Arc::clone(&context),
        )
        .for_each(|result| {
            // A memory that is gone (deleted, then requeued or woken by its children's
            // deletion) keeps nothing behind.
            if let Err(kube::runtime::controller::Error::ObjectNotFound(object)) = &result {
                let mut memory = state::Key::new(&object.name);
                memory.namespace = object.namespace.clone();
                context.forget(&memory);
            }
            async move {
                match result {
                    // A watch that fails (a refused list or watch, the API server away) is
                    // retried with backoff; say so each time instead of waiting in silence
                    // (`/readyz` stays false until every cache has its first list).
                    Err(error @ kube::runtime::controller::Error::QueueError(_)) => {
                        tracing::warn!(%error, "a watch failed; retrying");
                    }
                    Err(error) => tracing::debug!(%error, "reconcile failed"),
                    Ok(_) => {}
                }
            }
        })
        .await;
    synced.abort();
    pod_watch.abort();
}
