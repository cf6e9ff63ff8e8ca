//! What the operator keeps per memory between reconciles, in one place: one [`MemoryState`]
//! per memory, keyed by its `ObjectRef`, dropped by one [`Memories::forget`]. It also holds
//! the sequence of child changes the watches of the children record (see `changes`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSetStatus;
use kube::runtime::reflector::ObjectRef;

use crate::crd::PhoenixMemory;
use crate::policy::Observation;

/// A memory, as the controller names it.
pub type Key = ObjectRef<PhoenixMemory>;

/// A memory's last observation of its nodes, with what it was taken for.
#[derive(Clone, Debug)]
pub struct Observed {
    /// When.
    pub at: Instant,
    /// The memory's generation then.
    pub generation: Option<i64>,
    /// Ready nodes then.
    pub ready_replicas: i32,
    /// What the nodes said.
    pub observations: Vec<Observation>,
}

/// What a reconcile found when it last read (and applied) every child of a memory. Reused
/// while the generation is the same, no child changed since and `resync` has not passed.
/// No `Debug`: it holds the admin token.
#[derive(Clone)]
pub struct Verified {
    /// The memory's generation then.
    pub generation: Option<i64>,
    /// The point in the change sequence before the children were read.
    pub seq: u64,
    /// When they were read.
    pub at: Instant,
    /// The admin token the Secret holds.
    pub token: String,
    /// The StatefulSet's status (all a reuse needs of it; a change of it is a change).
    pub statefulset_status: Option<StatefulSetStatus>,
    /// A hash of the CronJob as last applied (or found already applied).
    pub cronjob: Option<blake3::Hash>,
}

/// Everything kept for one memory.
#[derive(Clone, Default)]
pub struct MemoryState {
    /// Reconciles that failed in a row (the error policy's backoff).
    pub failures: u32,
    /// The last observation of the nodes.
    pub observed: Option<Observed>,
    /// The last full check of the children.
    pub verified: Option<Verified>,
    /// The point in the change sequence when one of its children last changed.
    pub changed_at: u64,
}

/// Every memory's state, and the sequence of child changes.
#[derive(Default)]
pub struct Memories {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by every change.
    seq: u64,
    /// The last time every memory counted as changed (a watch restarted).
    reset_at: u64,
    states: HashMap<Key, MemoryState>,
}

impl std::fmt::Debug for Memories {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memories")
            .field("memories", &self.inner().states.len())
            .finish_non_exhaustive()
    }
}

impl Memories {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on `memory`'s state (a new one if it had none).
    pub fn with<T>(&self, memory: &Key, f: impl FnOnce(&mut MemoryState) -> T) -> T {
        f(self.inner().states.entry(memory.clone()).or_default())
    }

    /// Drops everything kept for `memory` (it is gone).
    pub fn forget(&self, memory: &Key) {
        self.inner().states.remove(memory);
    }

    /// The current point in the change sequence.
    pub fn now(&self) -> u64 {
        self.inner().seq
    }

    /// A child of `owner` was created, changed or deleted.
    pub fn touched(&self, owner: &Key) {
        let mut inner = self.inner();
        inner.seq += 1;
        let seq = inner.seq;
        inner.states.entry(owner.clone()).or_default().changed_at = seq;
    }

    /// Anything may have changed (a watch restarted or failed).
    pub fn reset(&self) {
        let mut inner = self.inner();
        inner.seq += 1;
        inner.reset_at = inner.seq;
    }

    /// Whether a child of `memory` may have changed after `seq`.
    pub fn changed_since(&self, memory: &Key, seq: u64) -> bool {
        let inner = self.inner();
        inner.reset_at > seq
            || inner
                .states
                .get(memory)
                .is_some_and(|state| state.changed_at > seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_is_changed_after_its_children_change_or_a_reset_and_forget_drops_all() {
        let memories = Memories::default();
        let a = Key::new("a").within("ns");
        let b = Key::new("b").within("ns");
        memories.touched(&a);
        let verified = memories.now();
        assert!(!memories.changed_since(&a, verified));
        assert!(!memories.changed_since(&b, verified));
        memories.touched(&b);
        assert!(!memories.changed_since(&a, verified));
        assert!(memories.changed_since(&b, verified));
        memories.touched(&a);
        assert!(memories.changed_since(&a, verified));
        let later = memories.now();
        assert!(!memories.changed_since(&a, later));
        memories.reset();
        assert!(memories.changed_since(&a, later));
        assert!(memories.changed_since(&Key::new("c").within("ns"), later));
        memories.with(&a, |state| state.failures = 3);
        assert_eq!(memories.with(&a, |state| state.failures), 3);
        memories.forget(&a);
        assert_eq!(memories.with(&a, |state| state.failures), 0);
    }
}
