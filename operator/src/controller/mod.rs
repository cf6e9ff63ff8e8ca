//! The controller: a short `reconcile` driving named steps — validate (pure) → build (pure)
//! → apply (server-side apply, one field manager, a documented order, no write when the
//! cluster already matches, no read when no child changed since the last check — see
//! `changes`) → observe the nodes (at most about once per observe interval) → decide (pure, `crate::schedule`) → apply
//! the CronJob with the decided cadence and any emergency Job → status → Events.

mod apply;
pub mod changes;
pub mod cleanup;
pub mod events;
mod status;
pub mod storage;

use std::sync::Arc;
use std::time::Duration;

use events::Kind as EventType;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::build::{self, Inputs};
use crate::crd::{CleanupPlan, PhoenixMemory, conditions};
use crate::metrics::Metrics;
use crate::schedule;
use crate::validate;

/// Reconcile requests for one object within this time are merged (a new memory's seven
/// children each trigger one; its status write another).
const DEBOUNCE: Duration = Duration::from_millis(200);

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
    /// The StatefulSet is being replaced to grow its claims; applied again shortly.
    #[error("the StatefulSet {0} is being replaced to grow its volumes")]
    Resizing(String),
    /// The operating system's random generator failed (no token is made without it).
    #[error("the system's random generator failed: {0}")]
    Random(String),
    /// The API server refused a child for good (400, 403 or 422): retrying the same object
    /// cannot help. Shown as `Ready=False`, reason `ChildRejected`, and a Warning Event.
    #[error("the API server refused {child} ({code}): {message}")]
    Rejected {
        /// Kind and name of the child.
        child: String,
        /// The HTTP status.
        code: u16,
        /// The server's message.
        message: String,
    },
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
            Error::Rejected { .. } => "rejected",
            Error::Random(_) => "random",
            Error::Resizing(_) => "resizing",
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
    /// Time between observations of a memory's nodes (a reconcile also observes).
    pub observe_interval: Duration,
    /// Timeout of one node scrape.
    pub scrape_timeout: Duration,
    /// When a node's report is fresh enough to decide on.
    pub freshness: crate::observe::Freshness,
    /// Longest time node figures that only jitter stay unwritten in status.
    pub status_refresh: Duration,
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
            observe_interval: Duration::from_secs(30),
            scrape_timeout: Duration::from_secs(5),
            freshness: crate::observe::Freshness::default(),
            status_refresh: Duration::from_secs(300),
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
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events on the PhoenixMemory.
    pub events: events::Publisher,
    /// Scrapes the nodes.
    pub http: reqwest::Client,
    /// Consecutive failures per object, for the error policy's backoff.
    failures: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
    /// Each memory's last observation (see `cleanup::observe_at_most_every`).
    observed: Arc<std::sync::Mutex<std::collections::HashMap<String, cleanup::Observed>>>,
    /// Which memories' children changed, from watches of the children.
    changes: Arc<changes::Changes>,
    /// What the last full check of each memory's children found.
    verified: Arc<std::sync::Mutex<std::collections::HashMap<String, Verified>>>,
}

/// What a reconcile found when it last read (and applied) every child of a memory. Reused
/// while the generation is the same, no child changed since (`changes`) and `resync` has
/// not passed. No `Debug`: it holds the admin token.
#[derive(Clone)]
struct Verified {
    generation: Option<i64>,
    /// The point in `changes` before the children were read.
    seq: u64,
    at: std::time::Instant,
    token: String,
    /// The StatefulSet's status (all a reuse needs of it; a change of it is a change).
    statefulset_status: Option<k8s_openapi::api::apps::v1::StatefulSetStatus>,
    /// A hash of the CronJob as last applied (or found already applied).
    cronjob: blake3::Hash,
}

impl Context {
    /// Forgets what is kept for a memory that is gone: its metric series, its last
    /// observation, its failure count.
    fn forget(&self, namespace: &str, name: &str) {
        self.metrics.forget(namespace, name);
        let key = format!("{namespace}/{name}");
        self.changes.forget(&key);
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
    }
}

/// Event reasons (a fixed set).
pub mod reasons {
    /// Children were created or changed.
    pub const APPLIED: &str = "Applied";
    /// The spec has a problem the schema could not catch.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The cleanup schedule changed.
    pub const PLAN_CHANGED: &str = "PlanChanged";
    /// An emergency cleanup Job was created.
    pub const EMERGENCY_CLEANUP: &str = "EmergencyCleanup";
    /// A node crossed the degradation threshold.
    pub const DEGRADED: &str = "Degraded";
    /// The nodes are back below the recover threshold.
    pub const RECOVERED: &str = "Recovered";
    /// Some nodes' metrics are missing or too old.
    pub const METRICS_STALE: &str = "MetricsStale";
    /// A node found corruption in its data.
    pub const NODE_CORRUPTED: &str = "NodeCorrupted";
    /// The API server refused a child for good.
    pub const CHILD_REJECTED: &str = "ChildRejected";
    /// Cleanups stopped helping; automatic cleanup backed off.
    pub const CLEANUP_INEFFECTIVE: &str = "CleanupIneffective";
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
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), kube_lease_manager::LeaseManagerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let Some(election) = settings.leader_election.clone() else {
        let mut stop = stop_rx.clone();
        metrics.leader.set(1);
        metrics.health.set_leading(true);
        run_controller(client, settings, Arc::clone(&metrics), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        metrics.leader.set(0);
        metrics.health.set_leading(false);
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
        metrics.leader.set(1);
        metrics.health.set_leading(true);
        run_controller(client.clone(), settings.clone(), Arc::clone(&metrics), async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost the lease: stopping reconciles"),
                _ = stop_inner.wait_for(|s| *s) => {}
            }
                })
        .await;
        metrics.leader.set(0);
        metrics.health.set_leading(false);
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
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.clone();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=phoenix-operator");
    let changes = Arc::new(changes::Changes::default());
    let trackers = [
        track(api::<ConfigMap>(&client, &ns), &owned, &changes),
        track(api::<Secret>(&client, &ns), &owned, &changes),
        track(api::<Service>(&client, &ns), &owned, &changes),
        track(api::<StatefulSet>(&client, &ns), &owned, &changes),
        track(api::<PodDisruptionBudget>(&client, &ns), &owned, &changes),
        track(api::<CronJob>(&client, &ns), &owned, &changes),
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
        failures: Arc::default(),
        observed: Arc::default(),
        changes: Arc::clone(&changes),
        verified: Arc::default(),
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
        .run(measured_reconcile, error_policy, Arc::clone(&context))
        .for_each(|result| {
            // A memory that is gone (deleted, then requeued or woken by its children's
            // deletion) keeps nothing behind.
            if let Err(kube::runtime::controller::Error::ObjectNotFound(object)) = &result {
                context.forget(
                    object.namespace.as_deref().unwrap_or_default(),
                    &object.name,
                );
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
    changes: &Arc<changes::Changes>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = config.clone();
    let changes = Arc::clone(changes);
    tokio::spawn(async move { changes::track(api, config, &changes).await })
}

/// [`reconcile`], timed and counted; success resets the object's backoff.
async fn measured_reconcile(
    memory: Arc<PhoenixMemory>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    ctx.metrics.health.started();
    let result = reconcile(Arc::clone(&memory), Arc::clone(&ctx)).await;
    ctx.metrics.health.finished();
    ctx.metrics.reconciled(
        started.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&object_key(&memory));
    }
    result
}

fn object_key(memory: &PhoenixMemory) -> String {
    format!(
        "{}/{}",
        memory.namespace().unwrap_or_default(),
        memory.name_any()
    )
}

async fn publish(
    ctx: &Context,
    memory: &PhoenixMemory,
    kind: EventType,
    reason: &str,
    note: String,
) {
    ctx.events.publish(memory, kind, reason, note).await;
}

/// How often a memory whose child the API server refused is tried again: a calm, fixed pace
/// (the same after an operator restart), not a backoff that starts over at half a second.
pub const REJECTED_RETRY: Duration = Duration::from_secs(300);

/// One reconcile (see [`reconcile_once`]); a child the API server refuses for good becomes
/// `Ready=False`, reason `ChildRejected`, with the server's message and a Warning Event, and
/// is tried again every [`REJECTED_RETRY`].
///
/// # Errors
/// API and build errors; the error policy retries with backoff.
pub async fn reconcile(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    match reconcile_once(Arc::clone(&memory), Arc::clone(&ctx)).await {
        Err(rejected @ Error::Rejected { .. }) => {
            let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
            let message = rejected.to_string();
            tracing::warn!(memory = %memory.name_any(), %message, "child rejected");
            ctx.metrics.child_rejected();
            if status::not_ready(&ctx, &memory, &namespace, reasons::CHILD_REJECTED, &message)
                .await?
            {
                publish(
                    &ctx,
                    &memory,
                    EventType::Warning,
                    reasons::CHILD_REJECTED,
                    message,
                )
                .await;
            }
            Ok(Action::requeue(REJECTED_RETRY))
        }
        other => other,
    }
}

/// One reconcile: validate → build → apply (all but the CronJob) → observe → decide →
/// apply the CronJob with the decided cadence → emergency Job → status → Events.
///
/// # Errors
/// API and build errors; the error policy retries with backoff.
async fn reconcile_once(memory: Arc<PhoenixMemory>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let valid = match validate::validate_named(&memory.name_any(), &memory.spec) {
        Ok(valid) => valid,
        Err(problems) => {
            if status::invalid(&ctx, &memory, &namespace, &problems).await? {
                publish(
                    &ctx,
                    &memory,
                    EventType::Warning,
                    reasons::INVALID_SPEC,
                    problems.join("; "),
                )
                .await;
            }
            return Ok(Action::await_change());
        }
    };
    let name = memory.name_any();
    let key = object_key(&memory);

    // Apply every child but the CronJob (its cadence is decided below), in order — unless
    // they were all checked at this generation and none changed since (see `changes`).
    let seq = ctx.changes.now();
    let verified = ctx
        .verified
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        .filter(|v| {
            v.generation == memory.metadata.generation
                && v.at.elapsed() < ctx.settings.resync
                && !ctx.changes.changed_since(&key, v.seq)
        })
        .cloned();
    let token = match &verified {
        Some(v) => v.token.clone(),
        None => apply::admin_token(&ctx, &namespace, &name).await?,
    };
    let now = cleanup::now_unix();
    let current = memory.status.clone().unwrap_or_default();
    let keep = current.plan.as_ref().map_or(valid.max_interval, |p| {
        Duration::from_secs(p.interval_seconds)
    });
    let in_force = Inputs {
        memory: &memory,
        valid: &valid,
        default_image: &ctx.settings.default_image,
        admin_token: &token,
        cleanup_interval: keep,
    };
    let (statefulset, mut written) = match &verified {
        Some(v) => (
            StatefulSet {
                status: v.statefulset_status.clone(),
                ..StatefulSet::default()
            },
            Vec::new(),
        ),
        None => apply::children(&ctx, &namespace, &build::build_all(&in_force)?).await?,
    };

    // Observe → decide.
    let sts_status = statefulset.status.as_ref();
    let ready_replicas = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let present_replicas = sts_status.map_or(0, |s| s.replicas);
    let observations = cleanup::observe_at_most_every(
        &ctx,
        &namespace,
        &memory,
        (ready_replicas, present_replicas),
        ctx.settings.observe_interval,
    )
    .await?;
    let nodes = cleanup::node_statuses(
        &observations,
        &current.nodes,
        valid.spec.cleanup.recover_threshold,
    );
    let history = cleanup::history(&current, &nodes, now);
    let decision = schedule::decide(&observations, &cleanup::policy_spec(&valid), &history);
    let outcome = cleanup::outcome(&decision, &history, valid.max_interval);
    ctx.metrics.decided(decision.rule);

    // Act: the CronJob with the decided cadence, then the emergency Job.
    let inputs = Inputs {
        cleanup_interval: decision.interval,
        ..in_force
    };
    let cronjob = build::build_cronjob(&inputs);
    let desired = blake3::hash(&serde_json::to_vec(&cronjob).map_err(kube::Error::SerdeError)?);
    let unchanged = verified.as_ref().is_some_and(|v| v.cronjob == desired);
    if !unchanged && apply::cronjob(&ctx, &namespace, &cronjob).await? {
        written.push("CronJob");
    }
    ctx.verified
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(
            key,
            Verified {
                generation: memory.metadata.generation,
                seq: verified.as_ref().map_or(seq, |v| v.seq),
                at: verified
                    .as_ref()
                    .map_or_else(std::time::Instant::now, |v| v.at),
                token: token.clone(),
                statefulset_status: statefulset.status.clone(),
                cronjob: desired,
            },
        );
    if !written.is_empty() {
        publish(
            &ctx,
            &memory,
            EventType::Normal,
            reasons::APPLIED,
            format!("applied {}", written.join(", ")),
        )
        .await;
    }
    let emergency = if decision.emergency_job {
        Some(cleanup::emergency_job(&ctx, &inputs, &cronjob, now).await?)
    } else {
        None
    };
    let plan = cleanup::plan(&valid, &cronjob, &decision, now);
    ctx.metrics
        .cadence(&namespace, &name, decision.interval.as_secs_f64());
    let record = cleanup::record(
        &decision,
        outcome,
        &observations,
        current.last_decision.as_ref(),
        now,
    );
    let conditions =
        cleanup::decision_conditions(&memory, &valid, &observations, &decision, &history, &plan);
    let newly_corrupted: Vec<String> = nodes
        .iter()
        .filter(|n| n.corrupted)
        .filter(|n| {
            !current
                .nodes
                .iter()
                .any(|p| p.name == n.name && p.corrupted)
        })
        .map(|n| n.name.clone())
        .collect();
    let update = status::Observed {
        worst_ratio: decision.worst_ratio.map(|r| (r * 100.0).round() / 100.0),
        nodes,
        plan: plan.clone(),
        last_decision: record,
        last_emergency_job: emergency.clone().or(current.last_emergency_job.clone()),
        conditions: conditions.clone(),
    };
    status::ready(&ctx, &memory, &namespace, &statefulset, update, now).await?;
    if !newly_corrupted.is_empty() {
        publish(
            &ctx,
            &memory,
            EventType::Warning,
            reasons::NODE_CORRUPTED,
            format!(
                "{} found corruption in its data: unready, serving what it can read; restore \
                 its volume (see status.nodes[].staleReason)",
                newly_corrupted.join(", ")
            ),
        )
        .await;
    }
    explain(
        &ctx,
        &memory,
        &current,
        &plan,
        &conditions,
        emergency.as_ref(),
        &decision,
    )
    .await;
    Ok(Action::requeue(
        ctx.settings.resync.min(ctx.settings.observe_interval),
    ))
}

/// Events for what changed: the plan, an emergency Job, conditions turning True or
/// `Degraded` turning False.
async fn explain(
    ctx: &Context,
    memory: &PhoenixMemory,
    before: &crate::crd::PhoenixMemoryStatus,
    plan: &CleanupPlan,
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    emergency: Option<&crate::crd::EmergencyJob>,
    decision: &schedule::Decision,
) {
    // The first plan comes with the `Applied` Event of the new CronJob; changes get their own.
    if let Some(old_plan) = before.plan.as_ref()
        && (&old_plan.schedule, old_plan.interval_seconds)
            != (&plan.schedule, plan.interval_seconds)
    {
        let from = old_plan.schedule.clone();
        let cadence = match plan.runs_every_seconds {
            Some(every) if every != plan.interval_seconds => {
                format!("every {every} s; decided {} s", plan.interval_seconds)
            }
            _ => format!("{} s", plan.interval_seconds),
        };
        publish(
            ctx,
            memory,
            EventType::Normal,
            reasons::PLAN_CHANGED,
            format!(
                "cleanup schedule {from} → {} ({cadence}): {}",
                plan.schedule, plan.reason
            ),
        )
        .await;
    }
    if let Some(job) = emergency
        && before.last_emergency_job.as_ref().map(|j| &j.name) != Some(&job.name)
    {
        publish(
            ctx,
            memory,
            EventType::Warning,
            reasons::EMERGENCY_CLEANUP,
            format!("created Job {}: {}", job.name, decision.reason),
        )
        .await;
    }
    let old = &before.conditions;
    for (type_, reason) in [
        (conditions::DEGRADED, reasons::DEGRADED),
        (conditions::METRICS_STALE, reasons::METRICS_STALE),
        (
            conditions::CLEANUP_INEFFECTIVE,
            reasons::CLEANUP_INEFFECTIVE,
        ),
    ] {
        if let Some(message) = cleanup::turned_true(old, conditions, type_) {
            publish(ctx, memory, EventType::Warning, reason, message).await;
        }
    }
    let was_degraded = old
        .iter()
        .any(|c| c.type_ == conditions::DEGRADED && c.status == "True");
    if was_degraded && !decision.degraded {
        publish(
            ctx,
            memory,
            EventType::Normal,
            reasons::RECOVERED,
            format!(
                "worst ratio {} is below the recover threshold {:.2}×; now: {}",
                decision
                    .worst_ratio
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.2}×")),
                memory.spec.cleanup.recover_threshold,
                decision.reason
            ),
        )
        .await;
    }
}

/// Retries a failed reconcile with exponential backoff per object: 0.5 s, 1 s, 2 s, … up to
/// 5 minutes, with jitter so many objects do not retry in step.
pub fn error_policy(memory: Arc<PhoenixMemory>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = {
        let mut failures = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(object_key(&memory)).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(attempt);
    tracing::warn!(memory = %memory.name_any(), category = error.category(), attempt, ?delay, %error, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The delay before retry `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let base_ms = 500u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(10))
        .min(300_000);
    Duration::from_millis(base_ms + fastrand::u64(0..=base_ms / 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let base = (500u64 << (attempt - 1).min(10)).min(300_000);
            let delay = backoff(attempt).as_millis() as u64;
            assert!(
                delay >= base && delay <= base + base / 4,
                "attempt {attempt}: {delay} ms"
            );
        }
        assert!(backoff(30) <= Duration::from_millis(375_000));
    }
}
