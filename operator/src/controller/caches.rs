//! Watch caches of the children (kube-runtime reflector stores, the informer pattern): one
//! watch per kind, filtered to what the operator manages, fills a store that reconciles
//! read instead of GETting each child, and triggers the owner's reconcile. A child is
//! re-listed only when its kind's watch restarts — never on a timer per memory. `managedFields`
//! are dropped on the way in (nothing reads them; they are the bulk of a small object).

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, PodStatus, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};

use crate::children::NODES_SELECTOR;
use serde::de::DeserializeOwned;

/// The label every child carries; the caches watch only these objects.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=phoenix-operator";

/// The stores of every kind of child.
#[derive(Clone)]
pub struct Caches {
    /// Cached children of this kind.
    pub configmaps: Store<ConfigMap>,
    /// Cached children of this kind.
    pub secrets: Store<Secret>,
    /// Cached children of this kind.
    pub services: Store<Service>,
    /// Cached children of this kind.
    pub statefulsets: Store<StatefulSet>,
    /// Cached children of this kind.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Cached children of this kind.
    pub cronjobs: Store<CronJob>,
    /// Every memory's nodes, slimmed to what observing reads (see [`watch_pods`]).
    pub pods: Store<Pod>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("statefulsets", &self.statefulsets.len())
            .finish_non_exhaustive()
    }
}

/// A kind of child the caches hold.
pub trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Its store.
    fn store(caches: &Caches) -> &Store<Self>;
}

macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn store(caches: &Caches) -> &Store<Self> {
                &caches.$field
            }
        }
    };
}

cached!(ConfigMap, configmaps);
cached!(Secret, secrets);
cached!(Service, services);
cached!(StatefulSet, statefulsets);
cached!(PodDisruptionBudget, pdbs);
cached!(CronJob, cronjobs);
cached!(Pod, pods);

impl Caches {
    /// The cached `K` named `name` in `namespace`, if the cache holds one.
    pub fn get<K: Cached>(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        K::store(self).get(&ObjectRef::new(name).within(namespace))
    }

    /// Waits until every store has had its first complete list, so that an object absent
    /// from a cache is absent from the cluster. False if a watch is gone for good.
    pub async fn ready(&self) -> bool {
        let waits = futures::join!(
            self.configmaps.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.services.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.cronjobs.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
        waits.0.is_ok()
            && waits.1.is_ok()
            && waits.2.is_ok()
            && waits.3.is_ok()
            && waits.4.is_ok()
            && waits.5.is_ok()
            && waits.6.is_ok()
    }
}

/// The watch of one kind, filling its store; the stream yields each changed object (for
/// the controller to map to its owner).
pub fn watch<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Cached,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().labels(MANAGED))
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// The watch of every memory's nodes (pods labelled [`NODES_SELECTOR`]), filling the pod
/// cache: observing finds a memory's pods there instead of listing them. Pods are slimmed
/// on the way in to what observing reads (name, labels, IP, conditions, container ports),
/// so the cache stays small at thousands of memories. It wakes no reconcile: a node's
/// readiness reaches the memory through its StatefulSet's status.
pub fn watch_pods(api: Api<Pod>) -> (Store<Pod>, impl std::future::Future<Output = ()> + Send) {
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().labels(NODES_SELECTOR))
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    let run = async move {
        use futures::StreamExt;
        stream.for_each(|_| std::future::ready(())).await;
    };
    (store, run)
}

/// `pod` with only what observing reads.
fn slim(pod: &mut Pod) {
    pod.managed_fields_mut().clear();
    pod.annotations_mut().clear();
    pod.metadata.owner_references = None;
    pod.spec = pod.spec.take().map(|spec| PodSpec {
        containers: spec
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|status| PodStatus {
        pod_ip: status.pod_ip,
        conditions: status.conditions,
        ..PodStatus::default()
    });
}
