//! The integrity tree's updates, off the write path. A writer appends its write's
//! (path, leaf) under the store's write lock — so the list is in the order the engine took
//! the writes — and returns; a thread of the store's own applies the list to the tree.
//! Every reader of the tree ([`TreeUpdates::lock`]) applies what is still listed first, so
//! a root, a proof or a checkpoint sees every write acknowledged before it, as when each
//! writer updated the tree itself. A single client's store no longer waits for ~20 blake3
//! calls, and while writes keep coming the thread takes them in batches without being woken
//! for each.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::merkle::{Hash, Tree};

/// The tree, the updates not yet in it, and the thread that applies them.
#[derive(Debug)]
pub(crate) struct TreeUpdates {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    /// The tree without the updates still in `pending`. Lock order: `tree`, then `pending`.
    tree: Mutex<Tree>,
    pending: Mutex<Pending>,
    /// Wakes the thread when an update arrives while it sleeps, or when it must stop.
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Pending {
    /// Updates in engine order (a later update of a path replaces an earlier one).
    updates: Vec<(Hash, Hash)>,
    /// The thread waits for `wake` (an append must wake it).
    asleep: bool,
    stop: bool,
}

impl TreeUpdates {
    /// Starts the thread that applies updates to `tree`.
    pub(crate) fn start(tree: Tree) -> std::io::Result<TreeUpdates> {
        let shared = Arc::new(Shared {
            tree: Mutex::new(tree),
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("phoenix-tree".into())
            .spawn(move || run(&worker))?;
        Ok(TreeUpdates {
            shared,
            thread: Some(thread),
        })
    }

    /// Appends one write's leaf update. Call it under the store's write lock: the list
    /// keeps the engine's order.
    pub(crate) fn push(&self, path: Hash, leaf: Hash) {
        let mut pending = self.shared.pending();
        pending.updates.push((path, leaf));
        // One wake per sleep: while the thread is awake it finds this update itself.
        if pending.asleep {
            pending.asleep = false;
            self.shared.wake.notify_one();
        }
    }

    /// The tree with every update so far applied.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Tree> {
        let mut tree = self.shared.tree();
        self.shared.apply(&mut tree);
        tree
    }

    /// The tree as the thread has left it, without applying what is pending (tests hold it
    /// to keep updates pending).
    #[cfg(test)]
    pub(crate) fn lock_as_applied(&self) -> MutexGuard<'_, Tree> {
        self.shared.tree()
    }

    /// Updates not yet applied.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.shared.pending().updates.len()
    }
}

impl Drop for TreeUpdates {
    fn drop(&mut self) {
        self.shared.pending().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies every pending update to `tree` (whose lock the caller holds), in order.
    fn apply(&self, tree: &mut Tree) {
        loop {
            let updates = std::mem::take(&mut self.pending().updates);
            if updates.is_empty() {
                return;
            }
            for (path, leaf) in updates {
                tree.insert(path, leaf);
            }
        }
    }
}

/// How long the thread waits for more updates after applying some before it asks writers
/// to wake it. Waking a sleeping thread costs the writer ~10 µs on these VMs (a futex wake
/// that sends the other vCPU an interrupt): about what the tree update itself costs. While
/// writes keep coming the thread finds them on its own, a batch per interval.
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);

/// The thread: applies pending updates as they come, until the store is dropped (what is
/// pending then is applied by the next reader, if any: the tree is in memory only).
fn run(shared: &Shared) {
    loop {
        {
            let mut pending = shared.pending();
            if pending.updates.is_empty() && !pending.stop {
                // Writers do not wake it for this wait (`asleep` stays false).
                pending = shared
                    .wake
                    .wait_timeout(pending, GATHER)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            while pending.updates.is_empty() {
                if pending.stop {
                    return;
                }
                pending.asleep = true;
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            pending.asleep = false;
            if pending.stop {
                return;
            }
        }
        let mut tree = shared.tree();
        shared.apply(&mut tree);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{key_path, leaf_hash};

    #[test]
    fn the_thread_applies_updates_in_order_and_readers_never_see_fewer() {
        let updates = TreeUpdates::start(Tree::default()).expect("start");
        let mut expected = Tree::default();
        for i in 0..2_000u32 {
            // Every key written twice: the later leaf must stay.
            let key = format!("k{}", i % 1_000);
            let leaf = leaf_hash(key.as_bytes(), &i.to_be_bytes());
            updates.push(key_path(key.as_bytes()), leaf);
            expected.insert(key_path(key.as_bytes()), leaf);
            if i % 97 == 0 {
                assert_eq!(updates.lock().root(), expected.root(), "after {i}");
            }
        }
        // The thread drains the rest on its own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while updates.pending() > 0 {
            assert!(std::time::Instant::now() < deadline, "never applied");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(updates.lock_as_applied().root(), expected.root());
    }
}
