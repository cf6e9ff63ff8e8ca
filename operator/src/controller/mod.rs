//! The controller: a short `reconcile` driving named steps — validate (pure) → build (pure)
//! → apply (server-side apply, one field manager, a documented order, no write when the
//! cluster already matches) → status.

mod apply;
mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::build::{self, Inputs};
use crate::crd::PhoenixMemory;
use crate::validate;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "phoenix-operator";

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed.
    #[error("kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// A child could not be built.
    #[error("failed to build a child: {0}")]
    Build(#[from] serde_yaml::Error),
    /// The resource has no namespace (it is namespaced; the API server always sets one).
    #[error("the PhoenixMemory has no namespace")]
    NoNamespace,
}

impl Error {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code >= 500 => "server",
            Error::Kube(_) => "kube",
            Error::Build(_) => "build",
            Error::NoNamespace => "invalid",
        }
    }
}

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node image when a spec names none.
    pub default_image: String,
    /// Watch only this namespace (all when `None`).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Time between resyncs of a converged resource.
    pub resync: Duration,
    /// Leader election; `None` runs without (one replica only).
    pub leader_election: Option<LeaderElection>,
}

/// Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
/// only one reconciles.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Seconds a lock stays valid after its last renewal.
    pub lease_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub renew_margin_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_image: concat!("phoenix-memory:", env!("CARGO_PKG_VERSION")).into(),
            namespace: None,
            concurrency: 8,
            resync: Duration::from_secs(300),
            leader_election: None,
        }
    }
}

/// Shared by every reconcile.
#[derive(Clone)]
pub struct Context {
    /// The client.
    pub client: Client,
    /// Settings.
    pub settings: Settings,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs until `shutdown` resolves, then lets running reconciles finish. With leader election
/// it reconciles only while it holds the Lease, and stops reconciling when it loses it.
///
/// # Errors
/// The lease manager cannot be set up.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), kube_lease_manager::LeaseManagerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let Some(election) = settings.leader_election.clone() else {
        let mut stop = stop_rx.clone();
        run_controller(client, settings, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        return Ok(());
    };
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(election.lease_seconds)
            .with_grace(election.renew_margin_seconds)
            .build()
            .await?;
    let (mut leading, lease_task) = manager.watch().await;
    let mut stop = stop_rx.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = leading.wait_for(|l| *l) => {
                if changed.is_err() {
                    break;
                }
            }
        }
        tracing::info!(identity = %election.identity, "leading: reconciling");
        let mut lost = leading.clone();
        let mut stop_inner = stop_rx.clone();
        run_controller(client.clone(), settings.clone(), async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost the lease: stopping reconciles"),
                _ = stop_inner.wait_for(|s| *s) => {}
            }
        })
        .await;
        if *stop.borrow() {
            break;
        }
    }
    // Closing the channel ends the lease task; it releases the lease for the next replica.
    drop(leading);
    if let Ok(Ok(manager)) = lease_task.await {
        let _ = manager.release().await;
    }
    Ok(())
}

async fn run_controller(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.clone();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=phoenix-operator");
    let context = Arc::new(Context {
        client: client.clone(),
        settings: settings.clone(),
    });
    Controller::new(
        api::<PhoenixMemory>(&client, &ns),
        watcher::Config::default(),
    )
    .owns(api::<StatefulSet>(&client, &ns), owned.clone())
    .owns(api::<ConfigMap>(&client, &ns), owned.clone())
    .owns(api::<Secret>(&client, &ns), owned.clone())
    .owns(api::<Service>(&client, &ns), owned.clone())
    .owns(api::<PodDisruptionBudget>(&client, &ns), owned.clone())
    .owns(api::<CronJob>(&client, &ns), owned)
    .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        if let Err(error) = result {
            tracing::debug!(%error, "reconcile failed");
        }
    })
    .await;
}

/// One reconcile: validate → build → apply → status.
///
/// # Errors
/// API and build errors; the error policy retries with backoff.
pub async fn reconcile(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let valid = match validate::validate(&memory.spec) {
        Ok(valid) => valid,
        Err(problems) => {
            status::invalid(&ctx, &memory, &namespace, &problems).await?;
            return Ok(Action::await_change());
        }
    };
    let token = apply::admin_token(&ctx, &namespace, &memory.name_any()).await?;
    let children = build::build_all(&Inputs {
        memory: &memory,
        valid: &valid,
        default_image: &ctx.settings.default_image,
        admin_token: &token,
    })?;
    let statefulset = apply::children(&ctx, &namespace, &children).await?;
    status::ready(&ctx, &memory, &namespace, statefulset.as_ref()).await?;
    Ok(Action::requeue(ctx.settings.resync))
}

/// Retries failed reconciles after a pause.
pub fn error_policy(memory: Arc<PhoenixMemory>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(memory = %memory.name_any(), category = error.category(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
