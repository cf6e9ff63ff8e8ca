//! What the operator keeps per memory between reconciles, in one place: one [`MemoryState`]
//! per memory, keyed by its `ObjectRef`, dropped by one [`Memories::forget`]. (The children
//! themselves are in the watch caches, see `caches`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;

use super::caches::{Seen, Sighting};
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
    /// The memory's pods the pod cache held then (ready or not).
    pub pods: usize,
    /// What the nodes said.
    pub observations: Vec<Observation>,
}

/// A check of the children that left them as wanted: while the memory's generation is this
/// and the caches show the children as the check left them, the next reconcile need not
/// build and compare them again (at 10,000 memories that was a core's worth of work every
/// observe interval, and a new memory's own writes woke one more full check each). No
/// `Debug`: it holds the tokens.
#[derive(Clone)]
pub struct Checked {
    /// The memory's generation.
    pub generation: Option<i64>,
    /// The serving children, in apply order.
    pub children: Vec<CheckedChild>,
    /// The StatefulSet's size and replication then.
    pub sizing: crate::controller::replication::Sizing,
    /// The cache in force then (`node.autoCache` raises it in status).
    pub cache_capacity_bytes: u64,
    /// The tokens the Secret held.
    pub tokens: crate::children::Tokens,
    /// The StatefulSet's status then.
    pub statefulset_status: Option<StatefulSetStatus>,
}

/// One serving child as a check left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedChild {
    /// What its cache shows when nothing changed since: the child as found, or at the
    /// resourceVersion the API server gave the check's own write.
    pub seen: Seen,
    /// For a child the check wrote: what its cache showed before the write. Until the cache
    /// delivers the write it still shows that — nothing anyone else did (their change, or a
    /// deletion, has a version of its own). Never a stale [`Seen::Never`] across a deletion:
    /// the cache keeps tombstones within an epoch.
    pub superseded: Option<Seen>,
    /// The cache's epoch at the check (a re-list voids it).
    pub epoch: u64,
}

impl Checked {
    /// Whether the caches (`now`, in apply order) still show the children as this check
    /// left them.
    pub fn stands(&self, now: &[Sighting]) -> bool {
        self.children.len() == now.len()
            && self
                .children
                .iter()
                .zip(now)
                .all(|(child, now)| child.stands(now))
    }
}

impl CheckedChild {
    /// The child as a check found it (`before`), or — when `write` is `Some` — at the
    /// resourceVersion its write got; `None` when the write came back without one.
    pub fn left(before: &Sighting, write: Option<Option<&Arc<str>>>) -> Option<CheckedChild> {
        match write {
            None => Some(CheckedChild {
                seen: before.seen.clone(),
                superseded: None,
                epoch: before.epoch,
            }),
            Some(Some(version)) => Some(CheckedChild {
                seen: Seen::Live(Arc::clone(version)),
                superseded: Some(before.seen.clone()),
                epoch: before.epoch,
            }),
            Some(None) => None,
        }
    }

    /// Whether the cache (`now`) still shows the child as the check left it.
    pub fn stands(&self, now: &Sighting) -> bool {
        self.epoch == now.epoch
            && (self.seen == now.seen || self.superseded.as_ref() == Some(&now.seen))
    }
}

/// The CronJob as the last check left it (found matching, or written), and a hash of the
/// wanted object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronJobChecked {
    /// The CronJob as the check left it.
    pub child: CheckedChild,
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
    /// Boxed: unboxed, a slot (key and state) took several hundred bytes and the table
    /// keeps up to twice as many slots as memories — 10.6 MiB at 10,000 memories in a heap
    /// profile (`heaptrack`), most of it empty slots.
    states: Mutex<HashMap<Key, Box<MemoryState>>>,
}

impl std::fmt::Debug for Memories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memories")
            .field("memories", &self.states().len())
            .finish()
    }
}

impl Memories {
    fn states(&self) -> MutexGuard<'_, HashMap<Key, Box<MemoryState>>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `memory`'s state (a new one if it had none; the key is copied only then).
    pub fn with<T>(&self, memory: &Key, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        let mut states = self.states();
        if let Some(state) = states.get_mut(memory) {
            return f(state);
        }
        f(states.entry(memory.clone()).or_default())
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

    fn sighting(seen: Seen, epoch: u64) -> Sighting {
        Sighting { seen, epoch }
    }

    fn live(version: &str) -> Seen {
        Seen::Live(version.into())
    }

    /// A check stands on the child as it found it, or as it wrote it whether or not the
    /// write was delivered; never on anyone else's change, a deletion, or another epoch.
    #[test]
    fn a_check_stands_on_what_it_found_or_wrote_and_nothing_else() {
        let v: Arc<str> = "12".into();
        let found = CheckedChild::left(&sighting(live("7"), 1), None).expect("found");
        assert!(found.stands(&sighting(live("7"), 1)));
        for other in [live("8"), Seen::Never, Seen::Deleted("8".into())] {
            assert!(!found.stands(&sighting(other, 1)));
        }
        assert!(!found.stands(&sighting(live("7"), 2)), "a re-list voids it");

        let created =
            CheckedChild::left(&sighting(Seen::Never, 1), Some(Some(&v))).expect("created");
        assert!(
            created.stands(&sighting(Seen::Never, 1)),
            "not delivered yet"
        );
        assert!(created.stands(&sighting(live("12"), 1)), "delivered");
        assert!(
            !created.stands(&sighting(Seen::Deleted("13".into()), 1)),
            "deleted after the create: check again (and create it again)"
        );
        assert!(
            !created.stands(&sighting(live("13"), 1)),
            "changed by someone"
        );
        assert!(
            !created.stands(&sighting(Seen::Never, 2)),
            "a re-list voids it"
        );

        let replaced =
            CheckedChild::left(&sighting(live("7"), 1), Some(Some(&v))).expect("replaced");
        assert!(replaced.stands(&sighting(live("7"), 1)));
        assert!(replaced.stands(&sighting(live("12"), 1)));
        assert!(!replaced.stands(&sighting(live("13"), 1)));
        assert!(!replaced.stands(&sighting(Seen::Never, 1)));

        assert!(
            CheckedChild::left(&sighting(live("7"), 1), Some(None)).is_none(),
            "a write without a version vouches for nothing"
        );
    }
}
