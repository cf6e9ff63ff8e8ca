//! Watch caches of the children (the informer pattern): one watch per kind, filtered to
//! what the operator manages, keeps a cache that reconciles read instead of GETting each
//! child, and wakes the owner's reconcile. A kind is re-listed only when its watch
//! restarts — never on a timer per memory.
//!
//! Not kube-runtime's reflector `Store`: it keeps each object as its typed struct, and a
//! StatefulSet or CronJob struct with its pod template is 10–15 KiB however few fields are
//! set (every optional field takes its room), which put 48 MiB of caches on 1,000 memories.
//! Here each object is kept as its JSON, LZ4-compressed against a dictionary — the first
//! object of its kind the watch delivered: the children of a thousand memories differ in
//! little more than names, uids and hashes, so an object costs what makes it different
//! (a StatefulSet ~1 KiB alone, ~0.2 KiB against the dictionary) — and decoded when a
//! reconcile reads it. `managedFields` are dropped on the way in.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use futures::{Stream, TryStreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodSpec, PodStatus, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;

use crate::children::NODES_SELECTOR;

/// The label every child carries; the caches watch only these objects.
pub const MANAGED: &str = "app.kubernetes.io/managed-by=phoenix-operator";

/// An object as cached: its resourceVersion, and its JSON compressed.
#[derive(Clone)]
struct Entry {
    version: Arc<str>,
    packed: Arc<[u8]>,
}

/// Objects by namespace and name.
type Objects = HashMap<(String, String), Entry>;

/// Deleted objects kept as tombstones (their last resourceVersion) at most: past this the
/// tombstones are dropped together and the epoch moves on, which voids every check that
/// relied on them (each then checks its children once in full).
const MAX_TOMBSTONES: usize = 10_000;

/// What one cache holds.
#[derive(Default)]
struct Contents {
    objects: Objects,
    /// Objects seen deleted since the last (re-)list, with the resourceVersion of their
    /// deletion: so that "deleted" is not mistaken for "not seen yet" (see [`Seen`]).
    deleted: HashMap<(String, String), Arc<str>>,
    /// Bumped by every complete (re-)list and whenever `deleted` is emptied: what the
    /// cache saw of an object before is comparable only within one epoch.
    epoch: u64,
}

/// What a cache last saw of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing since the cache's last (re-)list: absent, or created and not delivered yet.
    Never,
    /// Live at this resourceVersion.
    Live(Arc<str>),
    /// Deleted; the resourceVersion the deletion carried.
    Deleted(Arc<str>),
}

/// [`Seen`] with the cache's epoch at the time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// What the cache last saw of the object.
    pub seen: Seen,
    /// The cache's epoch.
    pub epoch: u64,
}

/// What every entry of a kind is compressed against: the JSON of the first object of the
/// kind that was packed (set once, never changed, so every entry stays decodable).
type Dictionary = Arc<OnceLock<Arc<[u8]>>>;

/// The cache of one kind.
pub struct Cache<K> {
    contents: Arc<RwLock<Contents>>,
    dictionary: Dictionary,
    /// True once the first complete list is in.
    ready: watch::Receiver<bool>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            contents: Arc::clone(&self.contents),
            dictionary: Arc::clone(&self.dictionary),
            ready: self.ready.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: DeserializeOwned> Cache<K> {
    /// The object's JSON, if the cache holds it.
    pub fn get_value(&self, namespace: &str, name: &str) -> Option<Value> {
        let entry = self.entry(namespace, name)?;
        let dictionary = self.dictionary.get()?;
        let json =
            lz4_flex::block::decompress_size_prepended_with_dict(&entry.packed, dictionary).ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// The object's resourceVersion (no decoding), if the cache holds it. The checks read
    /// [`Cache::sighting`], which also tells a deletion from "not delivered yet".
    #[cfg(test)]
    pub fn version(&self, namespace: &str, name: &str) -> Option<Arc<str>> {
        self.entry(namespace, name).map(|e| e.version)
    }

    /// What the cache last saw of the object, and its epoch.
    pub fn sighting(&self, namespace: &str, name: &str) -> Sighting {
        let contents = self.contents.read().unwrap_or_else(PoisonError::into_inner);
        let key = (namespace.to_string(), name.to_string());
        let seen = match (contents.objects.get(&key), contents.deleted.get(&key)) {
            (Some(entry), _) => Seen::Live(Arc::clone(&entry.version)),
            (None, Some(version)) => Seen::Deleted(Arc::clone(version)),
            (None, None) => Seen::Never,
        };
        Sighting {
            seen,
            epoch: contents.epoch,
        }
    }

    fn entry(&self, namespace: &str, name: &str) -> Option<Entry> {
        self.contents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The object, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<K> {
        serde_json::from_value(self.get_value(namespace, name)?).ok()
    }

    /// Objects cached.
    pub fn len(&self) -> usize {
        self.contents
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the first complete list; false if the watch is gone.
    pub async fn wait_until_ready(&self) -> bool {
        let mut ready = self.ready.clone();
        ready.wait_for(|r| *r).await.is_ok()
    }
}

/// What the watch writes into a cache.
struct Writer {
    contents: Arc<RwLock<Contents>>,
    dictionary: Dictionary,
    ready: watch::Sender<bool>,
    /// Objects of a re-list in progress (they replace the cache when it completes).
    relisting: Option<Objects>,
}

fn key<K: Resource>(object: &K) -> (String, String) {
    (object.namespace().unwrap_or_default(), object.name_any())
}

fn pack<K: Resource + Serialize>(object: &K, dictionary: &Dictionary) -> Option<Entry> {
    let json = serde_json::to_vec(object).ok()?;
    let dictionary = dictionary.get_or_init(|| Arc::from(json.as_slice()));
    Some(Entry {
        version: Arc::from(object.resource_version().unwrap_or_default()),
        packed: Arc::from(lz4_flex::block::compress_prepend_size_with_dict(
            &json, dictionary,
        )),
    })
}

impl Writer {
    fn apply<K: Resource + Serialize>(&mut self, event: &watcher::Event<K>) {
        let contents = || {
            self.contents
                .write()
                .unwrap_or_else(PoisonError::into_inner)
        };
        match event {
            watcher::Event::Init => self.relisting = Some(Objects::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(relisting), Some(packed)) =
                    (self.relisting.as_mut(), pack(object, &self.dictionary))
                {
                    relisting.insert(key(object), packed);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = self.relisting.take() {
                    let mut contents = contents();
                    contents.objects = relisted;
                    contents.deleted.clear();
                    contents.epoch += 1;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(object) => {
                if let Some(packed) = pack(object, &self.dictionary) {
                    let mut contents = contents();
                    let key = key(object);
                    contents.deleted.remove(&key);
                    contents.objects.insert(key, packed);
                }
            }
            watcher::Event::Delete(object) => {
                let mut contents = contents();
                let key = key(object);
                contents.objects.remove(&key);
                if contents.deleted.len() >= MAX_TOMBSTONES {
                    contents.deleted.clear();
                    contents.epoch += 1;
                }
                let version = object.resource_version().unwrap_or_default();
                contents.deleted.insert(key, Arc::from(version));
            }
        }
    }
}

/// An empty cache and what fills it.
fn cache_and_writer<K>() -> (Cache<K>, Writer) {
    let contents = Arc::new(RwLock::new(Contents::default()));
    let dictionary = Dictionary::default();
    let (ready_tx, ready) = watch::channel(false);
    let writer = Writer {
        contents: Arc::clone(&contents),
        dictionary: Arc::clone(&dictionary),
        ready: ready_tx,
        relisting: None,
    };
    let cache = Cache {
        contents,
        dictionary,
        ready,
        kind: PhantomData,
    };
    (cache, writer)
}

/// The watch of one kind, with `slim` applied to each object: the cache it fills, and a
/// stream of each changed object (for the controller to map to its owner).
fn watch_kind<K>(
    api: Api<K>,
    selector: &str,
    slim: fn(&mut K),
) -> (
    Cache<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug + Send + Sync + 'static,
{
    let (cache, mut writer) = cache_and_writer();
    let stream = watcher(api, watcher::Config::default().labels(selector))
        .default_backoff()
        .modify(slim)
        .inspect_ok(move |event| writer.apply(event))
        .touched_objects();
    (cache, stream)
}

/// The stores of every kind of child, and of the nodes' pods.
#[derive(Clone)]
pub struct Caches {
    /// Cached children of this kind.
    pub configmaps: Cache<ConfigMap>,
    /// Cached children of this kind.
    pub secrets: Cache<Secret>,
    /// Cached children of this kind.
    pub services: Cache<Service>,
    /// Cached children of this kind.
    pub statefulsets: Cache<StatefulSet>,
    /// Cached children of this kind.
    pub pdbs: Cache<PodDisruptionBudget>,
    /// Cached children of this kind.
    pub network_policies: Cache<NetworkPolicy>,
    /// Cached children of this kind.
    pub cronjobs: Cache<CronJob>,
    /// Every memory's nodes, slimmed to what observing reads (see [`watch_pods`]).
    pub pods: Cache<Pod>,
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("statefulsets", &self.statefulsets.len())
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

/// A kind the caches hold.
pub trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Its cache.
    fn cache(caches: &Caches) -> &Cache<Self>;
}

macro_rules! cached {
    ($kind:ty, $field:ident) => {
        impl Cached for $kind {
            fn cache(caches: &Caches) -> &Cache<Self> {
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
cached!(NetworkPolicy, network_policies);
cached!(CronJob, cronjobs);
cached!(Pod, pods);

impl Caches {
    /// The cached `K` named `name` in `namespace`, if the cache holds one.
    pub fn get<K: Cached>(&self, namespace: &str, name: &str) -> Option<K> {
        K::cache(self).get(namespace, name)
    }

    /// The cached `K`'s JSON.
    pub fn get_value<K: Cached>(&self, namespace: &str, name: &str) -> Option<Value> {
        K::cache(self).get_value(namespace, name)
    }

    /// What the cache of `K` last saw of the object.
    pub fn sighting<K: Cached>(&self, namespace: &str, name: &str) -> Sighting {
        K::cache(self).sighting(namespace, name)
    }

    /// Waits until every cache has had its first complete list, so that an object absent
    /// from a cache is absent from the cluster. False if a watch is gone for good.
    pub async fn ready(&self) -> bool {
        let waits = futures::join!(
            self.configmaps.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.services.wait_until_ready(),
            self.statefulsets.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.network_policies.wait_until_ready(),
            self.cronjobs.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
        waits.0 && waits.1 && waits.2 && waits.3 && waits.4 && waits.5 && waits.6 && waits.7
    }
}

/// Drops what no reader needs.
fn without_managed_fields<K: Resource>(object: &mut K) {
    object.managed_fields_mut().clear();
}

/// The watch of one kind of child (labelled [`MANAGED`]).
pub fn watch<K: Cached>(
    api: Api<K>,
) -> (
    Cache<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) {
    watch_kind(api, MANAGED, without_managed_fields::<K>)
}

/// The watch of every memory's nodes (pods labelled [`NODES_SELECTOR`]), filling the pod
/// cache: observing finds a memory's pods there instead of listing them. Pods are slimmed
/// on the way in to what observing reads (name, labels, IP, conditions, container ports).
/// It wakes no reconcile: a node's readiness reaches the memory through its StatefulSet's
/// status.
pub fn watch_pods(api: Api<Pod>) -> (Cache<Pod>, impl std::future::Future<Output = ()> + Send) {
    let (cache, stream) = watch_kind(api, NODES_SELECTOR, slim);
    let run = async move {
        use futures::StreamExt;
        stream
            .for_each(|event| {
                if let Err(error) = event {
                    tracing::warn!(%error, "the watch of the nodes' pods failed; retrying");
                }
                std::future::ready(())
            })
            .await;
    };
    (cache, run)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap(name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "data": {"k": value}
        }))
        .expect("configmap")
    }

    fn at(mut object: ConfigMap, version: &str) -> ConfigMap {
        object.metadata.resource_version = Some(version.into());
        object
    }

    /// A cache tells "not delivered yet" from "deleted", and a re-list (or dropped
    /// tombstones) moves its epoch so that nothing seen before it is trusted.
    #[test]
    fn sightings_tell_never_seen_from_deleted_within_an_epoch() {
        let (cache, mut writer) = cache_and_writer::<ConfigMap>();
        let sighting = |name: &str| cache.sighting("ns", name);
        writer.apply(&watcher::Event::<ConfigMap>::Init);
        writer.apply(&watcher::Event::InitApply(at(configmap("a", "1"), "5")));
        writer.apply(&watcher::Event::<ConfigMap>::InitDone);
        let listed = sighting("a").epoch;
        assert_eq!(sighting("a").seen, Seen::Live("5".into()));
        assert_eq!(sighting("b").seen, Seen::Never);
        writer.apply(&watcher::Event::Apply(at(configmap("b", "1"), "6")));
        writer.apply(&watcher::Event::Delete(at(configmap("b", "1"), "7")));
        assert_eq!(
            sighting("b"),
            Sighting {
                seen: Seen::Deleted("7".into()),
                epoch: listed
            }
        );
        assert_eq!(cache.get("ns", "b"), None::<ConfigMap>);
        assert_eq!(cache.version("ns", "b"), None);
        writer.apply(&watcher::Event::Apply(at(configmap("b", "2"), "8")));
        assert_eq!(sighting("b").seen, Seen::Live("8".into()));
        // A re-list forgets the tombstones and starts a new epoch.
        writer.apply(&watcher::Event::Delete(at(configmap("b", "2"), "9")));
        writer.apply(&watcher::Event::<ConfigMap>::Init);
        writer.apply(&watcher::Event::InitApply(at(configmap("a", "1"), "5")));
        writer.apply(&watcher::Event::<ConfigMap>::InitDone);
        assert_eq!(sighting("b").seen, Seen::Never);
        assert!(sighting("b").epoch > listed);
        // So do tombstones past their bound.
        let before = sighting("a").epoch;
        for i in 0..=MAX_TOMBSTONES {
            writer.apply(&watcher::Event::Delete(at(
                configmap(&format!("d{i}"), "x"),
                "10",
            )));
        }
        assert!(sighting("a").epoch > before);
        assert_eq!(sighting("a").seen, Seen::Live("5".into()));
    }

    #[test]
    fn similar_objects_cost_what_makes_them_different() {
        let (cache, mut writer) = cache_and_writer::<ConfigMap>();
        let config = |i: usize| {
            serde_json::from_value::<ConfigMap>(serde_json::json!({
                "metadata": {"name": format!("mem-{i}-config"), "namespace": "ns",
                    "uid": format!("{i:08}-aaaa-bbbb-cccc-{i:012}"),
                    "labels": {"app.kubernetes.io/name": "phoenix-memory",
                        "app.kubernetes.io/instance": format!("mem-{i}"),
                        "app.kubernetes.io/managed-by": "phoenix-operator"}},
                "data": {"node.yaml": format!("listen: 0.0.0.0:8080\ndataDir: /data\ncacheCapacity: 268435456\n\
                    durability: {{mode: periodic, flushEveryMs: 500}}\nadminTokenFile: /var/run/secrets/phoenix/token\n\
                    probe: {{intervalMs: 1000, samplesPerTick: 32, windowTicks: 30}}\n# mem-{i}\n")}
            }))
            .expect("configmap")
        };
        for i in 0..100 {
            writer.apply(&watcher::Event::Apply(config(i)));
        }
        let contents = cache.contents.read().expect("objects");
        let packed: usize = contents.objects.values().map(|e| e.packed.len()).sum();
        let plain = serde_json::to_vec(&config(50)).expect("json").len();
        let alone =
            lz4_flex::compress_prepend_size(&serde_json::to_vec(&config(50)).expect("json")).len();
        drop(contents);
        assert!(
            packed / 100 * 3 < alone,
            "{} bytes each against the dictionary, {alone} compressed alone, {plain} plain",
            packed / 100
        );
        for i in [0, 1, 99] {
            assert_eq!(cache.get("ns", &format!("mem-{i}-config")), Some(config(i)));
        }
    }

    #[test]
    fn a_cache_follows_its_watch_and_a_relist_replaces_it() {
        let (cache, mut writer) = cache_and_writer::<ConfigMap>();
        writer.apply(&watcher::Event::<ConfigMap>::Init);
        writer.apply(&watcher::Event::InitApply(configmap("a", "1")));
        writer.apply(&watcher::Event::InitApply(configmap("b", "1")));
        assert!(cache.is_empty(), "a list in progress is not served");
        assert!(!*cache.ready.borrow());
        writer.apply(&watcher::Event::<ConfigMap>::InitDone);
        assert!(*cache.ready.borrow());
        assert_eq!(cache.len(), 2);
        writer.apply(&watcher::Event::Apply(configmap("a", "2")));
        let a = cache.get("ns", "a").expect("a");
        assert_eq!(a.data.expect("data")["k"], "2");
        assert_eq!(cache.get_value("ns", "b").expect("b")["data"]["k"], "1");
        assert_eq!(
            cache.version("ns", "b").as_deref(),
            Some(""),
            "none set here"
        );
        writer.apply(&watcher::Event::Delete(configmap("b", "1")));
        assert!(cache.get("ns", "b").is_none());
        // A relist (the watch restarted): what it does not list is gone.
        writer.apply(&watcher::Event::<ConfigMap>::Init);
        writer.apply(&watcher::Event::InitApply(configmap("c", "1")));
        writer.apply(&watcher::Event::<ConfigMap>::InitDone);
        assert!(cache.get("ns", "a").is_none());
        assert!(cache.get("ns", "c").is_some());
    }
}
