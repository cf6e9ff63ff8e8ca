//! Group commit: durable-before-acknowledge writes that share one flush.
//!
//! Each write is applied to sled first and then asks for durability. The first writer to
//! find no flush in progress becomes the leader: it records how many writes had been applied
//! and flushes once; every write applied before that flush started is durable when it ends,
//! so all of their writers are released together. Writers that arrive during a flush wait
//! for the next one, which again covers all of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

/// Coordinates flushes among concurrent durable writers.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    applied: AtomicU64,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    durable: u64,
    flushing: bool,
    flushes: u64,
}

impl GroupCommit {
    /// Records that one more write has been applied; returns its sequence number.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Number of flushes performed so far (to observe grouping in tests and metrics).
    pub(crate) fn flushes(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flushes
    }

    /// Blocks until write `seq` is durable, flushing with `flush` when leading.
    pub(crate) fn wait_durable<E>(
        &self,
        seq: u64,
        flush: impl Fn() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.durable >= seq {
                return Ok(());
            }
            if state.flushing {
                state = self
                    .flushed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.flushing = true;
            let target = self.applied.load(Ordering::SeqCst);
            drop(state);
            let result = flush();
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.flushing = false;
            if result.is_ok() {
                state.durable = state.durable.max(target);
                state.flushes += 1;
            }
            self.flushed.notify_all();
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn concurrent_writers_share_flushes() {
        let commit = Arc::new(GroupCommit::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let commit = Arc::clone(&commit);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let seq = commit.applied();
                        commit
                            .wait_durable(seq, || {
                                std::thread::sleep(Duration::from_millis(1));
                                Ok::<_, ()>(())
                            })
                            .expect("flush succeeds");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let flushes = commit.flushes();
        assert!(
            flushes < 400,
            "400 writes took {flushes} flushes: no grouping"
        );
        assert!(flushes > 0);
    }

    #[test]
    fn a_failed_flush_is_reported_and_not_counted_durable() {
        let commit = GroupCommit::default();
        let seq = commit.applied();
        assert_eq!(
            commit.wait_durable(seq, || Err("disk full")),
            Err("disk full")
        );
        assert_eq!(commit.flushes(), 0);
        commit
            .wait_durable(seq, || Ok::<_, ()>(()))
            .expect("retry works");
        assert_eq!(commit.flushes(), 1);
    }
}
