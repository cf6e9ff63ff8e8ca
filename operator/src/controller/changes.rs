//! Which memories' children changed since a point in time, from watches of the children.
//!
//! A reconcile that finds its memory's generation unchanged and no child changed since it
//! last verified them skips re-reading them: a converged memory then costs one pod list per
//! observe interval instead of a read of every child. A watch that restarts (or fails)
//! marks everything changed; a periodic full check (`resync`) bounds what a missed event
//! could cost.

use std::fmt::Debug;

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::state::{Key, Memories};
use crate::crd::PhoenixMemory;

/// The PhoenixMemory owners of `object`.
fn owners<K: Resource>(object: &K) -> impl Iterator<Item = Key> + '_ {
    let namespace = object.namespace().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == PhoenixMemory::kind(&()))
        .map(move |owner| Key::new(&owner.name).within(&namespace))
}

/// Watches `api` (the operator's children) until the stream ends, recording changes.
pub async fn track<K>(api: Api<K>, config: watcher::Config, changes: &Memories)
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
