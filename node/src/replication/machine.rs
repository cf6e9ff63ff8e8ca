//! The state machine: the node's [`Store`] itself, Merkle tree included.
//!
//! Applying an entry is a store write without admission checks (the leader checked before
//! it proposed) and without a flush wait (the Raft log is durable). After each batch the
//! applied log id and membership are written into the store (`raft.applied`) after the
//! writes they cover: sled recovers a prefix of its log, so after a crash the recorded
//! index never runs ahead of the data, and openraft re-applies the rest from the log (a
//! store or delete applied twice ends the same).
//!
//! A snapshot is the store's consistent export (key, value, expiry) with its Merkle root;
//! a receiver recomputes the root from the data and refuses a mismatch before it touches
//! its store. The store is its own persisted snapshot: building one flushes the store (so
//! the log can be compacted up to it), and sending one exports the store as it is.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::metrics::Counters;
use super::{Command, NodeId, Reply, TypeConfig};
use crate::merkle::{self, Hash};
use crate::store::{Store, StoreError};

/// The store record naming the last applied log id and membership.
pub(super) const APPLIED: &str = "raft.applied";
/// Snapshot format version.
const SNAPSHOT_FORMAT: u32 = 1;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What has been applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last applied log id.
    pub last: Option<LogId<NodeId>>,
    /// The membership in force at it.
    pub membership: StoredMembership<NodeId, BasicNode>,
}

/// State shared between the machine and the request handlers.
#[derive(Debug, Default)]
pub struct Shared {
    /// Applied index + 1 (0: nothing applied), read by local reads.
    applied: AtomicU64,
    /// Held while a batch applies, so a root and its applied index are read together.
    gate: Mutex<()>,
}

impl Shared {
    /// The applied index, if any entry has been applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied.load(Ordering::SeqCst).checked_sub(1)
    }

    fn set_applied(&self, last: Option<LogId<NodeId>>) {
        self.applied
            .store(last.map_or(0, |l| l.index + 1), Ordering::SeqCst);
    }

    /// Runs `read` with no batch half-applied; returns it with the applied index.
    pub fn consistent<T>(&self, read: impl FnOnce() -> T) -> (T, Option<u64>) {
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        (read(), self.applied_index())
    }
}

/// The state machine handed to openraft.
pub struct Machine {
    store: Arc<Store>,
    state: AppliedState,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    snapshot_seq: u64,
}

impl Machine {
    /// The machine over `store`, resuming from the applied state recorded in it.
    ///
    /// # Errors
    /// An unreadable record.
    pub fn open(
        store: Arc<Store>,
        shared: Arc<Shared>,
        counters: Arc<Counters>,
    ) -> Result<Machine, StoreError> {
        let state = match store.meta(APPLIED)? {
            None => AppliedState::default(),
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|e| {
                StoreError::Corrupt(format!("the applied Raft state does not decode: {e}"))
            })?,
        };
        shared.set_applied(state.last);
        Ok(Machine {
            store,
            state,
            shared,
            counters,
            snapshot_seq: 0,
        })
    }

    fn snapshot_meta(&mut self) -> SnapshotMeta<NodeId, BasicNode> {
        self.snapshot_seq += 1;
        let id = match self.state.last {
            Some(last) => format!("{}-{}-{}", last.leader_id, last.index, self.snapshot_seq),
            None => format!("--{}", self.snapshot_seq),
        };
        SnapshotMeta {
            last_log_id: self.state.last,
            last_membership: self.state.membership.clone(),
            snapshot_id: id,
        }
    }
}

/// Applies one command to the store.
fn apply_command(store: &Store, command: &Command) -> Result<Reply, StoreError> {
    Ok(match command {
        Command::Store {
            key,
            value,
            expires_at_ms,
        } => {
            let stored = store.apply_store(key, value, *expires_at_ms)?;
            Reply::Stored {
                created: stored.created,
                expires_at_ms: stored.expires_at_ms,
            }
        }
        Command::Delete { key } => Reply::Deleted(store.apply_delete(key)?),
        Command::Prune { now_ms } => Reply::Pruned(store.apply_prune(*now_ms)?),
        Command::Batch(commands) => Reply::Batch(
            commands
                .iter()
                .map(|c| apply_command(store, c))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// The header of a snapshot's data.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    format: u32,
    root: Hash,
    keys: u64,
}

/// One memory in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotRecord {
    key: Vec<u8>,
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

/// Exports the store: header (root, count) then every record.
pub fn export(store: &Store) -> Result<Vec<u8>, StoreError> {
    let encode = |e: postcard::Error| StoreError::Corrupt(format!("snapshot encoding: {e}"));
    let mut records = Vec::new();
    let mut keys = 0u64;
    let mut leaves = Vec::new();
    store.export(&mut |key, value, expires_at_ms| {
        keys += 1;
        leaves.push((merkle::key_path(key), merkle::leaf_hash(key, value)));
        let record = SnapshotRecord {
            key: key.to_vec(),
            value: value.to_vec(),
            expires_at_ms,
        };
        records = postcard::to_extend(&record, std::mem::take(&mut records)).map_err(encode)?;
        Ok(())
    })?;
    let header = SnapshotHeader {
        format: SNAPSHOT_FORMAT,
        root: merkle::compute_root(leaves),
        keys,
    };
    let mut data = postcard::to_stdvec(&header).map_err(encode)?;
    data.extend_from_slice(&records);
    Ok(data)
}

/// Decodes a snapshot and checks its records against its root and count.
fn decode_checked(data: &[u8]) -> Result<(Hash, Vec<SnapshotRecord>), String> {
    let (header, mut rest) = postcard::take_from_bytes::<SnapshotHeader>(data)
        .map_err(|e| format!("the snapshot header does not decode: {e}"))?;
    if header.format != SNAPSHOT_FORMAT {
        return Err(format!("unknown snapshot format {}", header.format));
    }
    let mut records = Vec::new();
    while !rest.is_empty() {
        let (record, tail) = postcard::take_from_bytes::<SnapshotRecord>(rest)
            .map_err(|e| format!("snapshot record {} does not decode: {e}", records.len()))?;
        records.push(record);
        rest = tail;
    }
    if records.len() as u64 != header.keys {
        return Err(format!(
            "the snapshot names {} memories and holds {}",
            header.keys,
            records.len()
        ));
    }
    let leaves = records
        .iter()
        .map(|r| {
            (
                merkle::key_path(&r.key),
                merkle::leaf_hash(&r.key, &r.value),
            )
        })
        .collect();
    let root = merkle::compute_root(leaves);
    if root != header.root {
        return Err(format!(
            "the snapshot's data hashes to {} but it names root {}",
            merkle::hex_hash::to_hex(&root),
            merkle::hex_hash::to_hex(&header.root)
        ));
    }
    Ok((header.root, records))
}

/// Builds snapshots: flushes the store so the log can be compacted up to the state it
/// reports.
pub struct Builder {
    store: Arc<Store>,
    meta: SnapshotMeta<NodeId, BasicNode>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))?
            .map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))?;
        // The data is not kept: the store is the snapshot (see get_current_snapshot).
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.state.last, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let store = Arc::clone(&self.store);
        let shared = Arc::clone(&self.shared);
        let mut state = self.state.clone();
        let (replies, state) = tokio::task::spawn_blocking(move || {
            let _gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
            let mut replies = Vec::with_capacity(entries.len());
            for entry in entries {
                let reply = match &entry.payload {
                    EntryPayload::Blank => Reply::None,
                    EntryPayload::Normal(command) => apply_command(&store, command)
                        .map_err(|e| StorageIOError::apply(entry.log_id, &e))?,
                    EntryPayload::Membership(membership) => {
                        state.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        Reply::None
                    }
                };
                state.last = Some(entry.log_id);
                replies.push(reply);
            }
            let record =
                postcard::to_stdvec(&state).map_err(|e| StorageIOError::write_state_machine(&e))?;
            store
                .put_meta(APPLIED, &record)
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
            shared.set_applied(state.last);
            Ok::<_, StorageIOError<NodeId>>((replies, state))
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))??;
        self.state = state;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            store: Arc::clone(&self.store),
            meta: self.snapshot_meta(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let store = Arc::clone(&self.store);
        let shared = Arc::clone(&self.shared);
        let counters = Arc::clone(&self.counters);
        let state = AppliedState {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let signature = meta.signature();
        let installed = state.clone();
        tokio::task::spawn_blocking(move || {
            let (root, records) = decode_checked(&data).map_err(|message| {
                counters.snapshots_refused.inc();
                tracing::error!(%message, "refused a snapshot whose data does not match its root");
                StorageIOError::read_snapshot(Some(signature.clone()), &std::io::Error::other(message))
            })?;
            let write = |e: StoreError| StorageIOError::write_snapshot(Some(signature.clone()), &e);
            let _gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
            store.clear().map_err(write)?;
            for record in &records {
                store
                    .apply_store(&record.key, &record.value, record.expires_at_ms)
                    .map_err(write)?;
            }
            if store.root() != root {
                return Err(write(StoreError::Corrupt(
                    "the store's root after installing a snapshot differs from the snapshot's".into(),
                )));
            }
            let record = postcard::to_stdvec(&installed)
                .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?;
            store.put_meta(APPLIED, &record).map_err(write)?;
            store.flush().map_err(write)?;
            shared.set_applied(installed.last);
            counters.snapshots_installed.inc();
            tracing::info!(keys = records.len(), root = %merkle::hex_hash::to_hex(&root), "installed a snapshot");
            Ok::<_, StorageIOError<NodeId>>(())
        })
        .await
        .map_err(|e| StorageError::from(StorageIOError::write_state_machine(&e)))??;
        self.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        if self.state.last.is_none() {
            return Ok(None);
        }
        let meta = self.snapshot_meta();
        let store = Arc::clone(&self.store);
        let data = tokio::task::spawn_blocking(move || export(&store))
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_state_machine(&e)))?
            .map_err(|e| StorageError::from(StorageIOError::read_state_machine(&e)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;

    #[test]
    fn a_snapshot_round_trips_and_a_tampered_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(StoreConfig::new(dir.path())).expect("open");
        for i in 0..50u32 {
            store
                .store(
                    format!("k{i}").as_bytes(),
                    &vec![i as u8 + 1; 10 + i as usize * 100],
                    None,
                )
                .expect("store");
        }
        let data = export(&store).expect("export");
        let (root, records) = decode_checked(&data).expect("decodes");
        assert_eq!(root, store.root());
        assert_eq!(records.len(), 50);
        let mut tampered = data.clone();
        let middle = tampered.len() / 2;
        tampered[middle] ^= 1;
        let error = decode_checked(&tampered).expect_err("tampered data is refused");
        assert!(error.contains("hashes to"), "{error}");
        assert!(decode_checked(&data[..data.len() - 3]).is_err());
    }
}
