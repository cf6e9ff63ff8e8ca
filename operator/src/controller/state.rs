//! What the operator keeps per memory between reconciles, in one place: one [`MemoryState`]
//! per memory, keyed by its `ObjectRef`, dropped by one [`Memories::forget`]. (The children
//! themselves are in the watch caches, see `caches`.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

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

/// Everything kept for one memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryState {
    /// Reconciles that failed in a row (the error policy's backoff).
    pub failures: u32,
    /// The last observation of the nodes.
    pub observed: Option<Observed>,
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

    /// Runs `f` on every memory's state.
    pub fn each(&self, mut f: impl FnMut(&Key, &MemoryState)) {
        for (key, state) in self.states().iter() {
            f(key, state);
        }
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
        let mut seen = 0;
        memories.each(|_, _| seen += 1);
        assert_eq!(seen, 2);
        memories.forget(&a);
        assert_eq!(memories.with(&a, |state| state.failures), 0);
    }
}
