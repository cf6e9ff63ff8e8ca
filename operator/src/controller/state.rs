//! What the operator keeps per memory between reconciles, in one place: one [`MemoryState`]
//! per memory, keyed by its `ObjectRef`, dropped by one [`Memories::forget`]. (The children
//! themselves are in the watch caches, see `caches`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use crate::crd::PhoenixMemory;
use crate::policy::Observation;

/// A memory, as the controller names it.
pub type Key = ObjectRef<PhoenixMemory>;

/// A memory's last observation of its nodes, with what it was taken for.
#[derive(Clone, Debug)]
pub struct Observed {
    /// When (for its age).
    pub at: Instant,
    /// When, as status shows it (whole seconds).
    pub taken: Timestamp,
    /// The memory's generation then.
    pub generation: Option<i64>,
    /// Ready nodes then.
    pub ready_replicas: i32,
    /// What the nodes said.
    pub observations: Vec<Observation>,
}

/// A check of the children that found nothing to apply: while the memory's generation and
/// the cached children's resourceVersions are these, the next reconcile need not build and
/// compare them again (at 10,000 memories that was a core's worth of work every observe
/// interval). No `Debug`: it holds the tokens.
#[derive(Clone)]
pub struct Checked {
    /// The memory's generation.
    pub generation: Option<i64>,
    /// The serving children's resourceVersions, in apply order.
    pub versions: Vec<Option<Arc<str>>>,
    /// The StatefulSet's size and replication then.
    pub sizing: crate::controller::replication::Sizing,
    /// The cache in force then (`node.autoCache` raises it in status).
    pub cache_capacity_bytes: u64,
    /// The tokens the Secret held.
    pub tokens: crate::children::Tokens,
    /// The StatefulSet's status then.
    pub statefulset_status: Option<StatefulSetStatus>,
}

/// The CronJob as last found matching what was wanted: its resourceVersion and a hash of
/// the wanted object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronJobChecked {
    /// Its resourceVersion in the cache.
    pub version: Option<Arc<str>>,
    /// A hash of the CronJob wanted.
    pub wanted: blake3::Hash,
}

/// Everything kept for one memory.
#[derive(Clone, Default)]
pub struct MemoryState {
    /// Reconciles that failed in a row (the error policy's backoff).
    pub failures: u32,
    /// The last observation of the nodes.
    pub observed: Option<Observed>,
    /// The last check of the serving children that found nothing to apply.
    pub checked: Option<Checked>,
    /// The last check of the CronJob that found nothing to apply.
    pub cronjob: Option<CronJobChecked>,
    /// The last schedule planned: for this generation and cadence.
    pub schedule: Option<(Option<i64>, std::time::Duration, crate::plan::Schedule)>,
}

/// Every memory's state.
#[derive(Default)]
pub struct Memories {
    states: Mutex<HashMap<Key, MemoryState>>,
}

impl std::fmt::Debug for Memories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memories")
            .field("memories", &self.states().len())
            .finish()
    }
}

impl Memories {
    fn states(&self) -> MutexGuard<'_, HashMap<Key, MemoryState>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `memory`'s state (a new one if it had none).
    pub fn with<T>(&self, memory: &Key, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        f(self.states().entry(memory.clone()).or_default())
    }

    /// Drops everything kept for `memory` (it is gone).
    pub fn forget(&self, memory: &Key) {
        self.states().remove(memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_kept_per_memory_and_forget_drops_it() {
        let memories = Memories::default();
        let a = Key::new("a").within("ns");
        let b = Key::new("b").within("ns");
        memories.with(&a, |state| state.failures = 3);
        assert_eq!(memories.with(&a, |state| state.failures), 3);
        assert_eq!(memories.with(&b, |state| state.failures), 0);
        memories.forget(&a);
        assert_eq!(memories.with(&a, |state| state.failures), 0);
    }
}
