//! Which memories' children changed since a point in time, from watches of the children.
//!
//! A reconcile that finds its memory's generation unchanged and no child changed since it
//! last verified them skips re-reading them: a converged memory then costs one pod list per
//! observe interval instead of a read of every child. A watch that restarts (or fails)
//! marks everything changed; a periodic full check (`resync`) bounds what a missed event
//! could cost.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Mutex, PoisonError};

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::crd::PhoenixMemory;

/// A sequence of child changes, by owner (`namespace/name`).
#[derive(Debug, Default)]
pub struct Changes {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped by every change.
    seq: u64,
    /// The last time every owner counted as changed (a watch restarted).
    reset_at: u64,
    /// The last change of a child of each owner.
    last: HashMap<String, u64>,
}

impl Changes {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current point in the sequence.
    pub fn now(&self) -> u64 {
        self.inner().seq
    }

    /// A child of `owner` was created, changed or deleted.
    pub fn touched(&self, owner: &str) {
        let mut inner = self.inner();
        inner.seq += 1;
        let seq = inner.seq;
        inner.last.insert(owner.to_string(), seq);
    }

    /// Anything may have changed (a watch restarted or failed).
    pub fn reset(&self) {
        let mut inner = self.inner();
        inner.seq += 1;
        inner.reset_at = inner.seq;
    }

    /// Whether a child of `owner` may have changed after `seq`.
    pub fn changed_since(&self, owner: &str, seq: u64) -> bool {
        let inner = self.inner();
        inner.reset_at > seq || inner.last.get(owner).is_some_and(|last| *last > seq)
    }

    /// Forgets a deleted owner.
    pub fn forget(&self, owner: &str) {
        self.inner().last.remove(owner);
    }
}

/// The PhoenixMemory owners of `object`, as `namespace/name`.
fn owners<K: Resource>(object: &K) -> impl Iterator<Item = String> + '_ {
    let namespace = object.namespace().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == PhoenixMemory::kind(&()))
        .map(move |owner| format!("{namespace}/{}", owner.name))
}

/// Watches `api` (the operator's children) until the stream ends, recording changes.
pub async fn track<K>(api: Api<K>, config: watcher::Config, changes: &Changes)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .for_each(|event| {
            match event {
                Ok(
                    watcher::Event::Apply(object)
                    | watcher::Event::Delete(object)
                    | watcher::Event::InitApply(object),
                ) => owners(&object).for_each(|owner| changes.touched(&owner)),
                Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => changes.reset(),
            }
            std::future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_is_changed_after_its_children_change_or_a_reset() {
        let changes = Changes::default();
        changes.touched("ns/a");
        let verified = changes.now();
        assert!(!changes.changed_since("ns/a", verified));
        assert!(!changes.changed_since("ns/b", verified));
        changes.touched("ns/b");
        assert!(!changes.changed_since("ns/a", verified));
        assert!(changes.changed_since("ns/b", verified));
        changes.touched("ns/a");
        assert!(changes.changed_since("ns/a", verified));
        let later = changes.now();
        assert!(!changes.changed_since("ns/a", later));
        changes.reset();
        assert!(changes.changed_since("ns/a", later));
        assert!(changes.changed_since("ns/c", later));
    }
}
