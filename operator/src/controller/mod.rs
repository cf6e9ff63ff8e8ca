//! The controller. [`reconcile::reconcile`] is a short driver over named steps, each in its
//! own module:
//!
//! validate ([`crate::validate`]) → apply the serving children ([`apply`]) → observe the
//! nodes ([`nodes`]) → decide ([`decision`], over the pure [`crate::policy`]) → plan the
//! schedule ([`crate::plan`]) → act (the CronJob, an emergency Job: [`apply`],
//! [`emergency`]) → status ([`status`], [`conditions`]) → Events ([`explain`], published by [`events`]).
//!
//! Around it: [`context`] (what reconciles share, the error type, Event reasons),
//! [`state`] (what is kept per memory), [`changes`] (watches of the children), [`lease`]
//! (leader election), [`storage`] (growing volumes in place).

pub mod apply;
pub mod changes;
pub mod conditions;
pub mod context;
pub mod decision;
pub mod emergency;
pub mod events;
pub mod explain;
pub mod lease;
pub mod nodes;
pub mod reconcile;
pub mod state;
pub mod status;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;
use kube::{Api, Client};

pub use context::{Context, Error, FIELD_MANAGER, LeaderElection, Settings, api, reasons};
pub use lease::run;
pub use reconcile::{REJECTED_RETRY, backoff, error_policy, reconcile};

use crate::crd::PhoenixMemory;
use crate::metrics::Metrics;
use state::Memories;

/// Reconcile requests for one object within this time are merged (a new memory's seven
/// children each trigger one; its status write another).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Runs the controller (and the watches of the children) until `shutdown` resolves.
async fn run_controller(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.clone();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=phoenix-operator");
    let memories = Arc::new(Memories::default());
    let trackers = [
        track(api::<ConfigMap>(&client, &ns), &owned, &memories),
        track(api::<Secret>(&client, &ns), &owned, &memories),
        track(api::<Service>(&client, &ns), &owned, &memories),
        track(api::<StatefulSet>(&client, &ns), &owned, &memories),
        track(api::<PodDisruptionBudget>(&client, &ns), &owned, &memories),
        track(api::<CronJob>(&client, &ns), &owned, &memories),
    ];
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
        memories,
    });
    let controller = Controller::new(
        api::<PhoenixMemory>(&client, &ns),
        watcher::Config::default(),
    );
    // Ready once the memories can be listed: what the controller's watch starts with.
    // (kube-runtime's `Store::wait_until_ready` on the controller's own store did not
    // resolve against the in-process API server; a list is the same question, asked once.)
    let health = Arc::clone(&context.metrics.health);
    let lister = api::<PhoenixMemory>(&client, &ns);
    let synced = tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            match lister
                .list(&kube::api::ListParams::default().limit(1))
                .await
            {
                Ok(_) => {
                    health.set_synced();
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot list the memories yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
    controller
        .owns(api::<StatefulSet>(&client, &ns), owned.clone())
        .owns(api::<ConfigMap>(&client, &ns), owned.clone())
        .owns(api::<Secret>(&client, &ns), owned.clone())
        .owns(api::<Service>(&client, &ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &ns), owned.clone())
        .owns(api::<CronJob>(&client, &ns), owned)
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
                if let Err(error) = result {
                    tracing::debug!(%error, "reconcile failed");
                }
            }
        })
        .await;
    synced.abort();
    for tracker in trackers {
        tracker.abort();
    }
}

/// Records changes of the children in `api` (see `changes`) until aborted.
fn track<K>(
    api: Api<K>,
    config: &watcher::Config,
    memories: &Arc<Memories>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = config.clone();
    let memories = Arc::clone(memories);
    tokio::spawn(async move { changes::track(api, config, &memories).await })
}
