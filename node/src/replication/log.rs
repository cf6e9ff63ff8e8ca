//! openraft's log storage over [`crate::store::raft_log::RaftLog`].
//!
//! Appends are written at once and made durable by one flusher thread that takes every
//! append waiting, flushes once and then reports them all (group commit: four concurrent
//! writers share one fsync). A vote is flushed before it is reported, whatever the mode.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote,
};

use super::metrics::Counters;
use super::{NodeId, TypeConfig};
use crate::store::raft_log::RaftLog;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The log storage handed to openraft (cheap to clone: readers share it).
#[derive(Clone)]
pub struct LogStore {
    log: RaftLog,
    flushes: mpsc::Sender<LogFlushed<TypeConfig>>,
    counters: Arc<Counters>,
}

impl LogStore {
    /// A log store over `log`. Appends are reported to openraft only once flushed, whatever
    /// the memory's durability mode (which governs the store): an entry counted toward a
    /// commit must survive the node's crash, or a restarted leader without it can be elected
    /// by a follower that never had it, and an acknowledged write is lost
    /// (`a_leader_killed_before_its_periodic_flush_loses_no_acknowledged_write`).
    pub fn new(log: RaftLog, counters: Arc<Counters>) -> LogStore {
        let (flushes, waiting) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let flushed_log = log.clone();
        let flush_counters = Arc::clone(&counters);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || group_commit(&flushed_log, &waiting, &flush_counters))
            .map_or_else(
                |error| tracing::error!(%error, "failed to start the Raft log flusher"),
                |_| (),
            );
        LogStore {
            log,
            flushes,
            counters,
        }
    }

    fn put<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), StorageIOError<NodeId>> {
        let bytes = postcard::to_stdvec(value).map_err(|e| StorageIOError::write(&e))?;
        self.log
            .set_meta(name, &bytes)
            .map_err(|e| StorageIOError::write(&e))
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StorageIOError<NodeId>> {
        match self.log.meta(name).map_err(|e| StorageIOError::read(&e))? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|e| StorageIOError::read(&e)),
        }
    }
}

/// One flush for every append waiting; then each is reported, in order.
fn group_commit(
    log: &RaftLog,
    waiting: &mpsc::Receiver<LogFlushed<TypeConfig>>,
    counters: &Counters,
) {
    while let Ok(first) = waiting.recv() {
        let mut batch = vec![first];
        batch.extend(waiting.try_iter());
        let result = log.flush();
        counters.log_flushes.inc();
        counters.log_flushed_appends.inc_by(batch.len() as u64);
        for callback in batch {
            let result = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(result);
        }
    }
}

fn decode(bytes: &[u8]) -> StorageResult<Entry<TypeConfig>> {
    postcard::from_bytes(bytes).map_err(|e| StorageIOError::read_logs(&e).into())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let from = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let rows = self
            .log
            .range(from, to)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        rows.iter().map(|(_, bytes)| decode(bytes)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get(PURGED)?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, bytes)) => Some(*decode(&bytes)?.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put(VOTE, vote)?;
        self.log
            .flush()
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.get(VOTE)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: a committed index lost in a crash is learnt again from the leader.
        self.counters.committed.store(
            committed.map_or(0, |c| c.index + 1),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(self.put(COMMITTED, &committed)?)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|entry| {
                postcard::to_stdvec(&entry)
                    .map(|bytes| (entry.get_log_id().index, bytes))
                    .map_err(|e| StorageIOError::write_logs(&e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.log
            .append(rows)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        if let Err(mpsc::SendError(callback)) = self.flushes.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other("the log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.log
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The purge mark first: a crash between the two leaves entries below it, which
        // reads never ask for.
        self.put(PURGED, &log_id)?;
        self.log
            .flush()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.log
            .purge_upto(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}
