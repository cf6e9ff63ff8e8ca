//! The storage engine: sled 0.34 under a Merkle integrity root. The only module that
//! imports sled; everything else uses the typed API and [`StoreError`].
//!
//! Layout, all in one sled tree so that a record and its expiry index entry commit in one
//! atomic batch:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `d` | user key | a flag byte (1: an expiry follows), the expiry (unix ms, big-endian u64) when flagged, the value |
//! | `e` | expiry (big-endian u64) then user key | empty: the expiry index prune walks |
//! | `x` | meta name | format, checkpoint id, probe baseline, last cleanup |
//!
//! A retrieve is one point lookup of the `d` record. The Merkle tree ([`Tree`]) is derived
//! state held in memory: a write rehashes one path of it and adds no I/O. At open it is
//! loaded from a checkpoint when the data has not changed since that checkpoint (see
//! [`checkpoint`]), and otherwise rebuilt by hashing the records. Records carry one byte of
//! overhead (nine with an expiry), so disk stays close to the logical bytes. Writes are serialised by one mutex (the tree must see them in order); reads
//! never take it.
//!
//! sled 0.34 does two kinds of maintenance on whichever operation comes next, which is
//! usually a retrieve: freeing replaced pages (crossbeam-epoch's deferred frees) and
//! merging leaves that deletes left under-full. Writes here do both before they return
//! ([`reclaim_write_garbage`], and a lookup of a deleted key that walks its leaf), so
//! retrieves do not. Measured in the sustained benchmark: retrieve p99 ~28 µs without,
//! ~3–6 µs with.
//!
//! A database lives in `DATA_DIR/gen-N`; `DATA_DIR/CURRENT` names the live generation. A
//! rebuild copies the live generation into `gen-(N+1)`, reopens it, switches `CURRENT`
//! atomically and swaps the handle, so a crash at any point leaves one complete generation.
//! A replicated node keeps its Raft log and vote in `DATA_DIR/raft` ([`raft_log`]).

mod checkpoint;
mod chunks;
mod commit;
mod generations;
pub mod raft_log;
mod rebuild;
mod scrub;
mod space;
mod tree_updates;

use crate::stages::{Laps, Stage};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash, Proof, Tree};
use commit::Flusher;
pub use commit::{FlushError, FlushHealth};
pub use rebuild::RebuildReport;
pub use scrub::{Corruption, ScrubCursor, ScrubStep};
use space::SpaceGuard;
pub use space::{FreeSpace, LowSpace, VolumeSpace};

const DATA: u8 = b'd';
const EXPIRY: u8 = b'e';
const META: u8 = b'x';

const META_FORMAT: &[u8] = b"xformat";
/// Present (holding the checkpoint's id) only while the data is exactly what the
/// checkpoint file describes; the first write after a checkpoint removes it atomically.
const META_CHECKPOINT: &[u8] = b"xcheckpoint";
/// Version 4 may hold chunked values (see [`chunks`]); a version-3 database (values inline
/// only) opens and is marked 4, so that an older node refuses it ("unknown data format")
/// instead of failing on the chunked records it cannot read.
const FORMAT_VERSION: &[u8] = b"phoenix-store-4";
const FORMAT_INLINE_ONLY: &[u8] = b"phoenix-store-3";

const RECORD_PLAIN: u8 = 0;
const RECORD_EXPIRES: u8 = 1;
const LONGEST_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
const SAMPLE_CAPACITY: usize = 4096;
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Errors of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key is longer than the configured limit.
    #[error("key is {len} bytes, longer than the limit of {max}")]
    KeyTooLong {
        /// Length of the rejected key.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The value is empty.
    #[error("value must not be empty")]
    EmptyValue,
    /// The value is larger than the configured limit.
    #[error("value is {len} bytes, larger than the limit of {max}")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The time-to-live is zero or absurdly long.
    #[error("time-to-live {ttl:?} is out of range (1 ms to 100 years)")]
    InvalidTtl {
        /// The rejected time-to-live.
        ttl: Duration,
    },
    /// A rebuild is swapping databases; the write was not applied and may be retried.
    #[error("the store is being rebuilt; retry in {retry_after:?}")]
    Busy {
        /// When a retry is likely to succeed.
        retry_after: Duration,
    },
    /// Not enough free disk for a rebuild.
    #[error("rebuild needs {needed} free bytes but only {available} are available")]
    InsufficientSpace {
        /// Estimated bytes the rebuilt copy needs.
        needed: u64,
        /// Bytes available on the data volume.
        available: u64,
    },
    /// Free space on the data volume is below the reserve; the write was not applied.
    /// Reads keep working and writes resume by themselves once space returns (a margin
    /// above the reserve).
    #[error(
        "the data volume has {} bytes free and keeps a reserve of {} bytes; writes resume by themselves once {} bytes are free",
        .0.available, .0.reserve, .0.resume_at
    )]
    NoSpace(LowSpace),
    /// The store cannot make writes durable (a flush failed or hangs); the write was not
    /// applied.
    #[error(transparent)]
    NotDurable(#[from] FlushError),
    /// Stored data does not decode or does not match the integrity tree.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A file-system operation failed.
    #[error("failed to {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The embedded database failed.
    #[error("storage engine failed: {0}")]
    Engine(#[from] EngineError),
}

impl StoreError {
    /// Whether the error says stored data is damaged (it does not decode, or the database
    /// cannot read a page of it).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt(_)
                | StoreError::Engine(EngineError(sled::Error::Corruption { .. }))
        )
    }
}

/// An opaque error from the embedded database.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EngineError(#[from] sled::Error);

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Engine(EngineError(error))
    }
}

/// What [`Store::export`] calls for each memory: key, value, expiry (unix ms).
pub type Exported<'a> = dyn FnMut(&[u8], &[u8], Option<u64>) -> Result<()> + 'a;

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io(action: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { action, source }
}

/// When writes become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// sled's background flusher writes dirty data every `flush_every_ms`; a crash may lose
    /// the writes of the last interval.
    Periodic {
        /// Flush interval in milliseconds.
        flush_every_ms: u64,
    },
    /// Every write is durable before it is acknowledged; concurrent writers share flushes.
    Sync,
}

/// Size limits on input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted key in bytes.
    pub max_key_bytes: usize,
    /// Largest accepted value in bytes.
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
        }
    }
}

/// When cleanup rebuilds the database.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RebuildPolicy {
    /// Rebuild when on-disk bytes exceed this multiple of logical bytes.
    pub disk_ratio: f64,
    /// Never rebuild a database smaller than this on disk (sled's fixed overhead dominates).
    pub min_disk_bytes: u64,
    /// Free bytes to leave on the volume beyond the rebuilt copy's estimate.
    pub free_space_margin_bytes: u64,
}

impl Default for RebuildPolicy {
    fn default() -> Self {
        RebuildPolicy {
            disk_ratio: 2.0,
            min_disk_bytes: 32 << 20,
            free_space_margin_bytes: 64 << 20,
        }
    }
}

/// A source of wall-clock time in unix milliseconds (replaceable in tests).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Configuration of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Data directory (holds `CURRENT` and the `gen-N` databases).
    pub path: PathBuf,
    /// sled's page cache size in bytes. It counts on-disk (serialised) page bytes; the
    /// process's resident memory can exceed it.
    pub cache_capacity: u64,
    /// When writes become durable.
    pub durability: Durability,
    /// Time-to-live given to memories stored without one (`None`: they never expire).
    pub default_ttl: Option<Duration>,
    /// Input size limits.
    pub limits: Limits,
    /// When cleanup rebuilds.
    pub rebuild: RebuildPolicy,
    /// The clock used for expiry.
    pub clock: Arc<dyn Clock>,
    /// Free bytes to keep on the data volume: writes are refused below it (0: no guard).
    /// The checkpoint's size (about [`CHECKPOINT_BYTES_PER_KEY`] per key) is added to it.
    pub min_free_bytes: u64,
    /// Where free space is read from.
    pub free_space: Arc<dyn FreeSpace>,
    /// A flush running (or none succeeding) for this long refuses writes and fails health.
    pub stall_after: Duration,
    /// A pause before a rebuild starts copying (zero in service: tests use it to watch a
    /// rebuild that lasts).
    pub rebuild_pause: Duration,
}

/// Bytes a key takes in the tree checkpoint (an upper estimate), reserved on the volume.
pub const CHECKPOINT_BYTES_PER_KEY: u64 = 100;

impl StoreConfig {
    /// Defaults for a store in `path`: 256 MiB cache, flush every 500 ms.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            cache_capacity: 256 << 20,
            durability: Durability::Periodic {
                flush_every_ms: 500,
            },
            default_ttl: None,
            limits: Limits::default(),
            rebuild: RebuildPolicy::default(),
            clock: Arc::new(SystemClock),
            min_free_bytes: 64 << 20,
            free_space: Arc::new(VolumeSpace),
            stall_after: Duration::from_secs(10),
            rebuild_pause: Duration::ZERO,
        }
    }
}

/// A retrieved value. An inline value holds the database's buffer (no copy); a chunked one
/// (larger than 4 KiB, see [`chunks`]) is assembled once.
#[derive(Clone, Debug)]
pub struct Value {
    bytes: ValueBytes,
    expires_at_ms: Option<u64>,
}

#[derive(Clone, Debug)]
enum ValueBytes {
    /// The record; the value starts after `header` bytes.
    Record {
        record: sled::IVec,
        header: usize,
    },
    Assembled(Vec<u8>),
}

impl Value {
    /// The stored bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.bytes {
            ValueBytes::Record { record, header } => record.get(*header..).unwrap_or_default(),
            ValueBytes::Assembled(bytes) => bytes,
        }
    }

    /// When the memory expires (unix ms), if it does.
    pub fn expires_at_ms(&self) -> Option<u64> {
        self.expires_at_ms
    }
}

/// The value of a record with its bytes, reading chunks when it has them; `Corrupt` when
/// the record does not decode or its chunks are missing.
fn full_value<'a>(db: &sled::Db, record: &'a [u8]) -> Result<std::borrow::Cow<'a, [u8]>> {
    match chunks::body(record).ok_or_else(corrupt_record)? {
        chunks::Body::Inline(value) => Ok(std::borrow::Cow::Borrowed(value)),
        chunks::Body::Chunked { len, id } => chunks::read(db, id, len)?
            .map(std::borrow::Cow::Owned)
            .ok_or_else(|| StoreError::Corrupt("a chunked value is missing chunks".into())),
    }
}

fn corrupt_record() -> StoreError {
    StoreError::Corrupt("a record does not decode".into())
}

/// Outcome of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// The key did not exist before.
    pub created: bool,
    /// When the memory expires (unix ms), if it does.
    pub expires_at_ms: Option<u64>,
}

/// One listed memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: Vec<u8>,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// When it expires (unix ms), if it does.
    pub expires_at_ms: Option<u64>,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in byte order.
    pub items: Vec<Listed>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<Vec<u8>>,
}

/// Size figures of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Stored memories (expired ones count until pruned).
    pub keys: u64,
    /// Sum of key and value lengths.
    pub logical_bytes: u64,
    /// Bytes the database occupies on disk.
    pub disk_bytes: u64,
    /// Configured cache capacity.
    pub cache_capacity_bytes: u64,
}

/// Outcome of an offline integrity check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Memories found.
    pub keys: u64,
    /// The root recomputed from the data.
    #[serde(with = "merkle::hex_hash")]
    pub computed_root: Hash,
    /// The root the store keeps.
    #[serde(with = "merkle::hex_hash")]
    pub stored_root: Hash,
    /// Key count and logical bytes agree with the data too.
    pub counters_match: bool,
}

impl VerifyReport {
    /// Everything agrees.
    pub fn ok(&self) -> bool {
        self.computed_root == self.stored_root && self.counters_match
    }
}

/// One open generation of the database.
#[derive(Debug)]
struct Engine {
    db: sled::Db,
    generation: u64,
}

impl Engine {
    fn open(dir: &Path, config: &StoreConfig, generation: u64) -> Result<Engine> {
        let flush_every_ms = match config.durability {
            Durability::Periodic { flush_every_ms } => Some(flush_every_ms.max(1)),
            // Group commit flushes; a slow background flush still bounds work at shutdown.
            Durability::Sync => Some(1000),
        };
        let sled_config = sled::Config::new()
            .path(generations::dir_of(dir, generation))
            .cache_capacity(config.cache_capacity)
            .flush_every_ms(flush_every_ms);
        // A handle dropped a moment ago may still hold the directory's lock while sled's
        // background threads wind down (seen when a rebuild reopens its fresh copy).
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        loop {
            match sled_config.open() {
                Ok(db) => return Ok(Engine { db, generation }),
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(prefix);
    out.extend_from_slice(key);
    out
}

fn expiry_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.len());
    out.push(EXPIRY);
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Whether an I/O error says the volume is full (ENOSPC).
fn no_space(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
}

/// A failed flush as the flusher records it: the message and whether the volume was full.
fn describe_flush_error(error: sled::Error) -> (String, bool) {
    let full = matches!(&error, sled::Error::Io(io) if no_space(io));
    (error.to_string(), full)
}

/// Looks `key` up under the `d` prefix without allocating for ordinary key lengths.
fn get_data(db: &sled::Db, key: &[u8]) -> Result<Option<sled::IVec>, sled::Error> {
    let mut buffer = [0u8; 256];
    if key.len() < buffer.len() {
        buffer[0] = DATA;
        buffer[1..=key.len()].copy_from_slice(key);
        db.get(&buffer[..=key.len()])
    } else {
        db.get(prefixed(DATA, key))
    }
}

/// State only writers touch, behind the write mutex.
#[derive(Debug)]
struct WriteState {
    keys: u64,
    logical: u64,
    /// The data matches the checkpoint file (`META_CHECKPOINT` says clean).
    checkpointed: bool,
    /// The newest checkpoint's sequence number.
    checkpoint_seq: u64,
    /// A uniform sample of stored keys for the latency probe.
    sample: Reservoir,
}

/// A uniform sample of at most `SAMPLE_CAPACITY` keys (reservoir sampling, Algorithm R).
#[derive(Debug)]
struct Reservoir {
    keys: Vec<Vec<u8>>,
    offered: u64,
    rng: fastrand::Rng,
}

impl Reservoir {
    fn new() -> Reservoir {
        Reservoir {
            keys: Vec::new(),
            offered: 0,
            rng: fastrand::Rng::new(),
        }
    }

    fn offer(&mut self, key: &[u8]) {
        self.offered += 1;
        if self.keys.len() < SAMPLE_CAPACITY {
            self.keys.push(key.to_vec());
        } else if let Ok(slot) = usize::try_from(self.rng.u64(0..self.offered))
            && slot < SAMPLE_CAPACITY
        {
            self.keys[slot] = key.to_vec();
        }
    }
}

/// The memory store. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    engine: Arc<ArcSwap<Engine>>,
    write: Mutex<WriteState>,
    /// The integrity tree and the leaf updates of acknowledged writes not yet in it (pushed
    /// under `write`, in engine order), which a thread of its own applies off the write
    /// path. Lock order: `write`, then the tree. Read it through [`Store::lock_tree`], which
    /// applies the pending updates first; whoever needs records and tree in step takes
    /// `write` too.
    tree: tree_updates::TreeUpdates,
    rebuilding: AtomicBool,
    /// True only while a rebuild switches `CURRENT` and the live handle.
    swapping: AtomicBool,
    keys: AtomicU64,
    logical: AtomicU64,
    flusher: Flusher,
    space: SpaceGuard,
    corruption: Mutex<Corruption>,
    fault: crate::fault::RetrieveFault,
}

impl Store {
    /// Opens (or creates) the store in `config.path`, removing any half-built generation a
    /// crash left behind.
    ///
    /// # Errors
    /// File-system and database errors; [`StoreError::Corrupt`] when the stored format is
    /// not ours.
    pub fn open(config: StoreConfig) -> Result<Store> {
        std::fs::create_dir_all(&config.path).map_err(io("create the data directory"))?;
        let started = std::time::Instant::now();
        let opening = generations::choose(&config.path)?;
        let generation = opening.live;
        // Read the tree checkpoint while sled opens; both take a few hundred ms at 1M keys.
        let (engine, checkpoint) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| checkpoint::read(&config.path));
            let engine = Engine::open(&config.path, &config, generation);
            // A reader that panicked leaves no checkpoint: the scan below recovers.
            (engine, reader.join().unwrap_or(Ok(None)))
        });
        let engine = engine?;
        let engine_opened = started.elapsed();
        let mark_format = match engine.db.get(META_FORMAT)? {
            Some(format) if format.as_ref() == FORMAT_VERSION => false,
            Some(format) if format.as_ref() == FORMAT_INLINE_ONLY => true,
            Some(format) => {
                return Err(StoreError::Corrupt(format!(
                    "unknown data format {:?}",
                    String::from_utf8_lossy(&format)
                )));
            }
            None => true,
        };
        // The database must hold everything the last checkpoint says it had made durable.
        let marker_seq = checkpoint::marker_seq(&engine.db)?;
        let (loaded, checkpoint_seq) = match checkpoint? {
            Some(checkpoint) => {
                let seq = checkpoint.seq().max(marker_seq);
                match checkpoint.judge(&engine.db, generation)? {
                    checkpoint::Verdict::Matches(scanned) => (Some(scanned), seq),
                    checkpoint::Verdict::Stale => (None, seq),
                }
            }
            None => (None, marker_seq),
        };
        // The live generation is open, ours and whole: only now is anything written or
        // deleted.
        if mark_format {
            engine.db.insert(META_FORMAT, FORMAT_VERSION)?;
            engine.db.flush()?;
        }
        if opening.fresh || opening.mark_complete {
            generations::mark_complete(&config.path, generation)?;
        }
        if opening.rewrite_current {
            generations::write_current(&config.path, generation)?;
        }
        generations::remove(&config.path, &opening.stale)?;
        let recovered = loaded.is_none();
        let Scanned {
            tree,
            counters: Counters { keys, logical },
        } = match loaded {
            Some(loaded) => loaded,
            None => scan_tree(&engine.db)?,
        };
        tracing::debug!(
            ?engine_opened,
            tree_ready = ?started.elapsed() - engine_opened,
            from_checkpoint = !recovered,
            keys,
            "store opened"
        );
        let engine = Arc::new(ArcSwap::from_pointee(engine));
        let flushed = Arc::clone(&engine);
        let flusher = Flusher::start(
            match config.durability {
                Durability::Periodic { flush_every_ms } => {
                    Duration::from_millis(flush_every_ms.max(1))
                }
                // Idle sync stores still flush now and then, so a failure shows in health.
                Durability::Sync => Duration::from_secs(1),
            },
            config.stall_after,
            move || {
                flushed
                    .load()
                    .db
                    .flush()
                    .map(drop)
                    .map_err(describe_flush_error)
            },
        )
        .map_err(io("start the flusher thread"))?;
        let space = SpaceGuard::new(
            config.path.clone(),
            config.min_free_bytes,
            Arc::clone(&config.free_space),
        );
        let store = Store {
            engine,
            flusher,
            space,
            corruption: Mutex::new(Corruption::default()),
            tree: tree_updates::TreeUpdates::start(tree).map_err(io("start the tree thread"))?,
            write: Mutex::new(WriteState {
                keys,
                logical,
                checkpointed: !recovered,
                checkpoint_seq,
                sample: Reservoir::new(),
            }),
            rebuilding: AtomicBool::new(false),
            swapping: AtomicBool::new(false),
            fault: crate::fault::RetrieveFault::default(),
            keys: AtomicU64::new(keys),
            logical: AtomicU64::new(logical),
            config,
        };
        if recovered && keys > 0 {
            // Recovered by a scan: checkpoint now so the next open is fast again.
            store.checkpoint()?;
        }
        Ok(store)
    }

    /// Closes the store cleanly: a checkpoint (so the next open skips the scan) and a flush.
    /// The caller owns the last handle; other clones of an `Arc<Store>` keep it open.
    ///
    /// # Errors
    /// I/O and engine errors; nothing acknowledged is lost (the next open scans instead).
    pub fn close(self) -> Result<()> {
        self.checkpoint()?;
        self.flush()
    }

    /// Writes a checkpoint of the tree so the next open skips the scan. Called at shutdown
    /// and after cleanup; cheap to call when nothing changed.
    ///
    /// # Errors
    /// I/O and engine errors; the store stays usable (the next open rebuilds by scanning).
    pub fn checkpoint(&self) -> Result<()> {
        let mut state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checkpointed {
            return Ok(());
        }
        let engine = self.engine.load();
        let seq = state.checkpoint_seq + 1;
        checkpoint::save(
            &self.config.path,
            &engine.db,
            seq,
            engine.generation,
            &Counters {
                keys: state.keys,
                logical: state.logical,
            },
            &self.lock_tree(),
        )?;
        state.checkpoint_seq = seq;
        state.checkpointed = true;
        Ok(())
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The tree with every write so far applied.
    fn lock_tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock()
    }

    fn lock_write(&self) -> Result<MutexGuard<'_, WriteState>> {
        let busy = || StoreError::Busy {
            retry_after: Duration::from_secs(1),
        };
        if self.rebuilding.load(Ordering::SeqCst) {
            return Err(busy());
        }
        let guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        // A rebuild may have started while this writer waited for the lock.
        if self.rebuilding.load(Ordering::SeqCst) {
            return Err(busy());
        }
        Ok(guard)
    }

    /// [`Store::lock_write`], waiting while a rebuild copies or swaps (replicated applies
    /// must not fail: every replica applies the same entries).
    fn lock_write_waiting(&self) -> Result<MutexGuard<'_, WriteState>> {
        loop {
            match self.lock_write() {
                Err(StoreError::Busy { .. }) => std::thread::sleep(Duration::from_millis(5)),
                other => return other,
            }
        }
    }

    fn validate(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let limits = self.config.limits;
        if key.is_empty() {
            return Err(StoreError::EmptyKey);
        }
        if key.len() > limits.max_key_bytes {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: limits.max_key_bytes,
            });
        }
        if let Some(value) = value {
            if value.is_empty() {
                return Err(StoreError::EmptyValue);
            }
            if value.len() > limits.max_value_bytes {
                return Err(StoreError::ValueTooLarge {
                    len: value.len(),
                    max: limits.max_value_bytes,
                });
            }
        }
        Ok(())
    }

    /// Stores `value` under `key`, replacing any previous value. `ttl` overrides the
    /// configured default time-to-live.
    ///
    /// # Errors
    /// Invalid input (nothing changes), [`StoreError::Busy`] during a rebuild swap, engine
    /// errors.
    pub fn store(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<Stored> {
        let mut laps = Laps::start();
        self.validate(key, Some(value))?;
        let expires_at = self.expiry_of(ttl)?;
        laps.lap(Stage::Validate);
        self.admit_write(key.len() + value.len(), false)?;
        laps.lap(Stage::Admit);
        let (seq, stored) = self.write_record(key, value, expires_at, false, &mut laps)?;
        reclaim_write_garbage();
        laps.lap(Stage::Reclaim);
        self.make_durable(seq)?;
        laps.lap(Stage::Durable);
        Ok(stored)
    }

    /// The absolute expiry (unix ms) a store with `ttl` (or the default) gets now.
    ///
    /// # Errors
    /// [`StoreError::InvalidTtl`].
    pub fn expiry_of(&self, ttl: Option<Duration>) -> Result<Option<u64>> {
        let ttl = ttl.or(self.config.default_ttl);
        match ttl {
            None => Ok(None),
            Some(ttl) if ttl < Duration::from_millis(1) || ttl > LONGEST_TTL => {
                Err(StoreError::InvalidTtl { ttl })
            }
            Some(ttl) => {
                Ok(Some(self.config.clock.now_ms().saturating_add(
                    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                )))
            }
        }
    }

    /// Whether a store of `value` (or a delete, `None`) under `key` would be taken now:
    /// input limits, durability and the free-space reserve. What a Raft leader checks
    /// before it proposes a write (every replica then applies it unconditionally).
    ///
    /// # Errors
    /// The error the write itself would get.
    pub fn check_write(&self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.validate(key, value)?;
        match value {
            Some(value) => self.admit_write(key.len() + value.len(), false),
            None => self.admit_write(key.len(), true),
        }
    }

    /// Applies a replicated store: no admission checks (the leader made them) and no wait
    /// for a flush (the Raft log is what makes it durable). A rebuild swap in progress is
    /// waited out.
    ///
    /// # Errors
    /// Engine errors.
    pub fn apply_store(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
    ) -> Result<Stored> {
        let (_, stored) = self.write_record(key, value, expires_at_ms, true, &mut Laps::off())?;
        reclaim_write_garbage();
        Ok(stored)
    }

    /// Applies a replicated delete (see [`Store::apply_store`]); false when absent.
    ///
    /// # Errors
    /// Engine errors.
    pub fn apply_delete(&self, key: &[u8]) -> Result<bool> {
        let mut state = self.lock_write_waiting()?;
        let deleted = self.delete_locked(&mut state, key);
        let deleted = deleted.map_err(|e| self.write_failed(e))?.is_some();
        drop(state);
        reclaim_write_garbage();
        Ok(deleted)
    }

    /// Writes one record under the write lock; the commit sequence and what was stored.
    /// During a rebuild it answers [`StoreError::Busy`], or with `wait` waits the rebuild out.
    fn write_record(
        &self,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        wait: bool,
        laps: &mut Laps,
    ) -> Result<(u64, Stored)> {
        let expires_at = expires_at_ms.unwrap_or(0);
        let (path, leaf) = (merkle::key_path(key), merkle::leaf_hash(key, value));
        laps.lap(Stage::Merkle);
        let mut state = if wait {
            self.lock_write_waiting()?
        } else {
            self.lock_write()?
        };
        laps.lap(Stage::Lock);
        let mut applied = || {
            let engine = self.engine.load();
            self.invalidate_checkpoint(&mut state, &engine)?;
            // A large value's chunks go first, under a new set the record then names.
            let record = if value.len() > chunks::INLINE_MAX {
                let id = chunks::write(&engine.db, value)?;
                chunks::encode(
                    expires_at,
                    chunks::Body::Chunked {
                        len: value.len() as u64,
                        id,
                    },
                )
            } else {
                chunks::encode(expires_at, chunks::Body::Inline(value))
            };
            laps.lap(Stage::Encode);
            // The index entry goes first: an entry without its record (a crash between the
            // two) is harmless, prune drops it; a record never lacks its entry.
            if expires_at != 0 {
                engine.db.insert(expiry_key(expires_at, key), &[][..])?;
            }
            laps.lap(Stage::ExpiryIndex);
            let old = engine.db.insert(prefixed(DATA, key), record)?;
            laps.lap(Stage::SledInsert);
            let added = (key.len() + value.len()) as u64;
            let (keys, logical) = match &old {
                Some(old) => {
                    if let Some(at) = chunks::expiry(old).filter(|at| *at != expires_at) {
                        engine.db.remove(expiry_key(at, key))?;
                    }
                    let old_body = chunks::body(old);
                    if let Some((id, len)) = old_body.and_then(|b| b.chunk_set()) {
                        chunks::remove(&engine.db, id, len)?;
                    }
                    let old_len = key.len() as u64 + old_body.map_or(0, |b| b.len());
                    (state.keys, state.logical.saturating_sub(old_len) + added)
                }
                None => (state.keys + 1, state.logical + added),
            };
            laps.lap(Stage::Bookkeeping);
            state.keys = keys;
            state.logical = logical;
            if old.is_none() {
                state.sample.offer(key);
            }
            self.keys.store(keys, Ordering::Relaxed);
            self.logical.store(logical, Ordering::Relaxed);
            // In engine order: pushed before the next writer gets `write`.
            self.tree.push(path, leaf);
            laps.lap(Stage::Sample);
            Ok((self.flusher.applied(), old.is_none()))
        };
        let applied = applied();
        drop(state);
        laps.lap(Stage::Merkle);
        let (seq, created) = applied.map_err(|e| self.write_failed(e))?;
        Ok((
            seq,
            Stored {
                created,
                expires_at_ms: Some(expires_at).filter(|at| *at != 0),
            },
        ))
    }

    /// Marks the checkpoint dirty before the first write after it. sled recovers a prefix
    /// of its log, so any write that survives a crash finds the mark.
    fn invalidate_checkpoint(&self, state: &mut WriteState, engine: &Engine) -> Result<()> {
        if state.checkpointed {
            checkpoint::mark_dirty(&engine.db, state.checkpoint_seq)?;
            state.checkpointed = false;
        }
        Ok(())
    }

    fn make_durable(&self, seq: u64) -> Result<()> {
        if self.config.durability == Durability::Sync {
            self.flusher.wait_durable(seq)?;
        }
        Ok(())
    }

    /// Refuses a write of `bytes` bytes that could not be made durable: a flush failed or
    /// hangs, or (unless `freeing`, a delete) the volume is below its free-space reserve.
    fn admit_write(&self, bytes: usize, freeing: bool) -> Result<()> {
        self.flusher.admit()?;
        if !freeing {
            let checkpoint = self
                .keys
                .load(Ordering::Relaxed)
                .saturating_mul(CHECKPOINT_BYTES_PER_KEY);
            self.space
                .admit(bytes, checkpoint)
                .map_err(StoreError::NoSpace)?;
        }
        Ok(())
    }

    /// A write sled refused with an I/O error: sled keeps such an error for good (nothing
    /// reaches its log again in this process), so the store stops acknowledging writes.
    fn write_failed(&self, error: StoreError) -> StoreError {
        let StoreError::Engine(EngineError(sled::Error::Io(io))) = &error else {
            return error;
        };
        let failure = FlushError::Failed {
            message: io.to_string(),
            no_space: no_space(io),
        };
        tracing::error!(%error, "a write failed: refusing writes from now on; restart the node to recover");
        self.flusher.fail(failure.clone());
        StoreError::NotDurable(failure)
    }

    /// Whether writes can be made durable, with flush counts and the last success.
    pub fn flush_health(&self) -> FlushHealth {
        self.flusher.health()
    }

    /// The value under `key`, unless absent or expired. One point lookup.
    ///
    /// # Errors
    /// Engine errors.
    pub fn retrieve(&self, key: &[u8]) -> Result<Option<Value>> {
        let Some(started) = self.fault.start() else {
            return self.retrieve_unfaulted(key);
        };
        let result = self.retrieve_unfaulted(key);
        self.fault.stretch(started);
        result
    }

    /// The injected retrieve fault (see [`crate::fault`]); inert unless set.
    pub fn fault(&self) -> &crate::fault::RetrieveFault {
        &self.fault
    }

    fn retrieve_unfaulted(&self, key: &[u8]) -> Result<Option<Value>> {
        let engine = self.engine.load();
        let record = match get_data(&engine.db, key) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(error @ sled::Error::Corruption { .. }) => {
                self.found_corruption(Some(key), "a read hit a page the database cannot read");
                return Err(error.into());
            }
            Err(error) => return Err(error.into()),
        };
        let Some(body) = chunks::body(&record) else {
            self.found_corruption(Some(key), "a read found a record that does not decode");
            return Err(corrupt_record());
        };
        let expires_at_ms = chunks::expiry(&record);
        if expires_at_ms.is_some_and(|at| at <= self.config.clock.now_ms()) {
            return Ok(None);
        }
        let bytes = match body {
            chunks::Body::Inline(value) => ValueBytes::Record {
                header: record.len() - value.len(),
                record: record.clone(),
            },
            chunks::Body::Chunked { len, id } => match chunks::read(&engine.db, id, len)? {
                Some(value) => {
                    // Reading chunks pages leaves in and others out; sled frees what it
                    // paged out only once the epoch moves on. Measured without this: a
                    // read pass over 800 × 1 MiB held ~360 MiB with a 64 MiB cache.
                    reclaim_write_garbage();
                    ValueBytes::Assembled(value)
                }
                None => {
                    self.found_corruption(Some(key), "a read found a value with missing chunks");
                    return Err(StoreError::Corrupt(
                        "a chunked value is missing chunks".into(),
                    ));
                }
            },
        };
        Ok(Some(Value {
            bytes,
            expires_at_ms,
        }))
    }

    /// Deletes `key`; false when it was absent.
    ///
    /// # Errors
    /// Invalid key, [`StoreError::Busy`] during a rebuild swap, engine errors.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        self.validate(key, None)?;
        self.admit_write(key.len(), true)?;
        let seq = {
            let mut state = self.lock_write()?;
            let deleted = self.delete_locked(&mut state, key);
            let Some(seq) = deleted.map_err(|e| self.write_failed(e))? else {
                return Ok(false);
            };
            seq
        };
        reclaim_write_garbage();
        self.make_durable(seq)?;
        Ok(true)
    }

    /// Deletes `key` with the write lock held; the commit sequence, or `None` if absent.
    fn delete_locked(&self, state: &mut WriteState, key: &[u8]) -> Result<Option<u64>> {
        let engine = self.engine.load();
        self.invalidate_checkpoint(state, &engine)?;
        let data_key = prefixed(DATA, key);
        let Some(old) = engine.db.remove(&data_key)? else {
            return Ok(None);
        };
        // Walk the key's leaf now, so that a merge the removal made due happens here and
        // not on the next retrieve that passes (sled merges cooperatively).
        engine.db.get(&data_key)?;
        if let Some(at) = chunks::expiry(&old) {
            engine.db.remove(expiry_key(at, key))?;
        }
        let old_body = chunks::body(&old);
        if let Some((id, len)) = old_body.and_then(|b| b.chunk_set()) {
            chunks::remove(&engine.db, id, len)?;
        }
        let old_len = key.len() as u64 + old_body.map_or(0, |b| b.len());
        state.keys = state.keys.saturating_sub(1);
        state.logical = state.logical.saturating_sub(old_len);
        if !self.lock_tree().remove(&merkle::key_path(key)) {
            return Err(StoreError::Corrupt("stored key has no merkle leaf".into()));
        }
        self.keys.store(state.keys, Ordering::Relaxed);
        self.logical.store(state.logical, Ordering::Relaxed);
        Ok(Some(self.flusher.applied()))
    }

    /// Up to `limit` live memories whose keys start with `prefix`, after key `after`.
    ///
    /// # Errors
    /// Engine errors.
    pub fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<ListPage> {
        let engine = self.engine.load();
        let lower = match after {
            Some(after) if after >= prefix => Bound::Excluded(prefixed(DATA, after)),
            _ => Bound::Included(prefixed(DATA, prefix)),
        };
        let full_prefix = prefixed(DATA, prefix);
        let now = self.config.clock.now_ms();
        let mut page = ListPage::default();
        for entry in engine.db.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            let (key, record) = entry?;
            if !key.starts_with(&full_prefix) {
                break;
            }
            let expires_at_ms = chunks::expiry(&record);
            if expires_at_ms.is_some_and(|at| at <= now) {
                continue;
            }
            if page.items.len() == limit {
                page.next_after = page.items.last().map(|item| item.key.clone());
                break;
            }
            page.items.push(Listed {
                key: key[1..].to_vec(),
                value_bytes: chunks::body(&record)
                    .map_or(0, |b| usize::try_from(b.len()).unwrap_or(usize::MAX)),
                expires_at_ms,
            });
        }
        Ok(page)
    }

    /// The Merkle root over every stored (key, value) pair.
    pub fn root(&self) -> Hash {
        self.lock_tree().root()
    }

    /// The live value of `key` with its inclusion proof and the root it proves against.
    ///
    /// # Errors
    /// Engine errors; [`StoreError::Corrupt`] when the tree is inconsistent.
    pub fn prove(&self, key: &[u8]) -> Result<Option<(Value, Proof, Hash)>> {
        // The write lock keeps records and tree still while the proof is collected.
        let _state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let tree = self.lock_tree();
        let Some(value) = self.retrieve(key)? else {
            return Ok(None);
        };
        let proof = tree
            .prove(&merkle::key_path(key))
            .ok_or_else(|| StoreError::Corrupt("stored key has no merkle leaf".into()))?;
        Ok(Some((value, proof, tree.root())))
    }

    /// Stored memories (expired ones count until pruned). Reads a counter: no I/O.
    pub fn key_count(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Key count, logical and on-disk bytes, cache capacity. Reads the file sizes.
    ///
    /// # Errors
    /// Engine errors reading the on-disk size.
    pub fn stats(&self) -> Result<Stats> {
        Ok(Stats {
            keys: self.keys.load(Ordering::Relaxed),
            logical_bytes: self.logical.load(Ordering::Relaxed),
            disk_bytes: self.engine.load().db.size_on_disk()?,
            cache_capacity_bytes: self.config.cache_capacity,
        })
    }

    /// Deletes every expired memory; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Busy`] during a rebuild swap, engine errors. Memories pruned before
    /// an error stay pruned.
    pub fn prune_expired(&self) -> Result<u64> {
        self.prune_until(self.config.clock.now_ms(), false)
    }

    /// Memories whose expiry has passed but which are not pruned yet, counted up to `cap`
    /// (a scan of the expiry index; an entry left by an overwrite counts until the next
    /// prune clears it).
    ///
    /// # Errors
    /// Engine errors.
    pub fn expired_keys(&self, cap: u64) -> Result<u64> {
        let now = self.config.clock.now_ms();
        let engine = self.engine.load();
        let mut count = 0;
        for entry in engine
            .db
            .range(vec![EXPIRY]..expiry_key(now.saturating_add(1), b""))
        {
            entry?;
            count += 1;
            if count >= cap {
                break;
            }
        }
        Ok(count)
    }

    /// Applies a replicated prune: deletes every memory that expired at or before `now_ms`
    /// (the leader's clock, so every replica deletes the same ones), without admission
    /// checks or flush waits, waiting out a rebuild swap.
    ///
    /// # Errors
    /// Engine errors.
    pub fn apply_prune(&self, now_ms: u64) -> Result<u64> {
        self.prune_until(now_ms, true)
    }

    fn prune_until(&self, now: u64, replicated: bool) -> Result<u64> {
        let mut pruned = 0;
        loop {
            // Collect a bounded chunk, then delete it, so writers are not starved.
            let engine = self.engine.load();
            let mut due = Vec::with_capacity(256);
            for entry in engine
                .db
                .range(vec![EXPIRY]..expiry_key(now.saturating_add(1), b""))
            {
                let (index_key, _) = entry?;
                due.push(index_key.to_vec());
                if due.len() == 256 {
                    break;
                }
            }
            drop(engine);
            if due.is_empty() {
                break;
            }
            let mut last = 0;
            {
                let mut state = if replicated {
                    self.lock_write_waiting()?
                } else {
                    self.admit_write(0, true)?;
                    self.lock_write()?
                };
                let engine = self.engine.load();
                for index_key in &due {
                    let (at, key) = index_key[1..].split_at(8);
                    let at = u64::from_be_bytes(at.try_into().unwrap_or_default());
                    let record = get_data(&engine.db, key)?;
                    if record.as_deref().and_then(chunks::expiry) == Some(at) {
                        let deleted = self.delete_locked(&mut state, key);
                        if let Some(seq) = deleted.map_err(|e| self.write_failed(e))? {
                            pruned += 1;
                            last = seq;
                        }
                    } else {
                        // Left by an overwrite or a crash between the two writes.
                        engine.db.remove(index_key)?;
                    }
                }
            }
            if !replicated {
                self.make_durable(last)?;
            }
        }
        Ok(pruned)
    }

    /// Makes every applied write durable.
    ///
    /// # Errors
    /// Engine errors.
    pub fn flush(&self) -> Result<()> {
        self.engine.load().db.flush()?;
        Ok(())
    }

    /// Number of group-commit flushes so far.
    pub fn durable_flushes(&self) -> u64 {
        self.flusher.flushes()
    }

    /// Recomputes the root and counters from the stored keys and values and compares them
    /// with the live tree and counters.
    ///
    /// # Errors
    /// Engine errors; undecodable records are reported as [`StoreError::Corrupt`].
    pub fn verify(&self) -> Result<VerifyReport> {
        let state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let scanned = scan_tree(&self.engine.load().db)?;
        Ok(VerifyReport {
            keys: scanned.counters.keys,
            computed_root: scanned.tree.root(),
            stored_root: self.lock_tree().root(),
            counters_match: scanned.counters
                == Counters {
                    keys: state.keys,
                    logical: state.logical,
                },
        })
    }

    /// Up to `n` distinct stored keys drawn at random from the probe's sample.
    pub fn sample_keys(&self, n: usize, rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
        let state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let len = state.sample.keys.len();
        if len <= n {
            return state.sample.keys.clone();
        }
        rand_indices(rng, len, n)
            .into_iter()
            .map(|i| state.sample.keys[i].clone())
            .collect()
    }

    /// Size of the probe's key sample.
    pub fn sample_len(&self) -> usize {
        self.write
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample
            .keys
            .len()
    }

    /// Drops a key the probe found missing from the sample.
    pub fn forget_sample(&self, key: &[u8]) {
        let mut state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = state.sample.keys.iter().position(|k| k == key) {
            state.sample.keys.swap_remove(i);
        }
    }

    /// Refills the probe's sample by one pass over the stored keys (reservoir sampling).
    /// Runs without the write lock; used after open and after mass deletes.
    ///
    /// # Errors
    /// Engine errors.
    pub fn refill_sample(&self) -> Result<usize> {
        let mut sample = Reservoir::new();
        let engine = self.engine.load();
        for entry in engine.db.scan_prefix([DATA]) {
            let (key, _) = entry?;
            sample.offer(&key[1..]);
        }
        drop(engine);
        let mut state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        state.sample = sample;
        Ok(state.sample.keys.len())
    }

    /// A small named record kept with the data (probe baseline, last cleanup).
    ///
    /// # Errors
    /// Engine errors.
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .engine
            .load()
            .db
            .get(prefixed(META, name.as_bytes()))?
            .map(|v| v.to_vec()))
    }

    /// Stores a named record with the data, without a flush: it becomes durable with the
    /// writes before it (sled recovers a prefix of its log), which is what a replicated
    /// node's applied index needs.
    ///
    /// # Errors
    /// Engine errors.
    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        let _state = self.lock_write_waiting()?;
        self.engine
            .load()
            .db
            .insert(prefixed(META, name.as_bytes()), value)?;
        Ok(())
    }

    /// Removes a named record and flushes.
    ///
    /// # Errors
    /// Engine errors.
    pub fn delete_meta(&self, name: &str) -> Result<()> {
        let _state = self.lock_write_waiting()?;
        let engine = self.engine.load();
        engine.db.remove(prefixed(META, name.as_bytes()))?;
        engine.db.flush()?;
        Ok(())
    }

    /// Calls `each(key, value, expires_at_ms)` for every stored memory, expired ones not
    /// yet pruned included, in key order, with writes held off: a consistent export (what
    /// a replication snapshot is).
    ///
    /// # Errors
    /// Engine errors, a record that does not decode, or `each`'s error.
    pub fn export(&self, each: &mut Exported<'_>) -> Result<()> {
        let _state = self.lock_write_waiting()?;
        let engine = self.engine.load();
        for entry in engine.db.scan_prefix([DATA]) {
            let (data_key, record) = entry?;
            let key = &data_key[1..];
            let body = chunks::body(&record).ok_or_else(corrupt_record)?;
            let expires = chunks::expiry(&record);
            match body {
                chunks::Body::Inline(value) => each(key, value, expires)?,
                chunks::Body::Chunked { len, id } => {
                    let value = chunks::read(&engine.db, id, len)?.ok_or_else(|| {
                        StoreError::Corrupt("a chunked value is missing chunks".into())
                    })?;
                    each(key, &value, expires)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes every stored memory (before a replication snapshot is installed).
    ///
    /// # Errors
    /// Engine errors.
    pub fn clear(&self) -> Result<u64> {
        let mut cleared = 0;
        loop {
            let keys: Vec<Vec<u8>> = self
                .engine
                .load()
                .db
                .scan_prefix([DATA])
                .keys()
                .take(1024)
                .map(|k| k.map(|k| k[1..].to_vec()))
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(cleared);
            }
            let mut state = self.lock_write_waiting()?;
            for key in keys {
                let deleted = self.delete_locked(&mut state, &key);
                if deleted.map_err(|e| self.write_failed(e))?.is_some() {
                    cleared += 1;
                }
            }
        }
    }

    /// Stores a named record with the data and flushes it.
    ///
    /// # Errors
    /// Engine errors.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        // Under the write lock so a rebuild copy cannot miss it.
        let _state = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let engine = self.engine.load();
        engine.db.insert(prefixed(META, name.as_bytes()), value)?;
        engine.db.flush()?;
        Ok(())
    }

    /// Whether a rebuild is copying or swapping the database (writes are refused meanwhile).
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::SeqCst)
    }

    /// Whether a rebuild is switching to its copy (the moment readiness goes false; reads
    /// are served throughout the copy before it).
    pub fn is_swapping(&self) -> bool {
        self.swapping.load(Ordering::SeqCst)
    }

    /// The generation number of the live database (bumped by every rebuild).
    pub fn generation(&self) -> u64 {
        self.engine.load().generation
    }

    /// Whether a rebuild is due: on-disk bytes above the policy's multiple of logical bytes.
    ///
    /// # Errors
    /// Engine errors reading the on-disk size.
    pub fn needs_rebuild(&self) -> Result<bool> {
        Ok(self.rebuild_due(&self.stats()?))
    }

    /// [`Store::needs_rebuild`] for `stats` already read from this store.
    pub fn rebuild_due(&self, stats: &Stats) -> bool {
        let policy = self.config.rebuild;
        stats.disk_bytes >= policy.min_disk_bytes
            && stats.disk_bytes as f64 > policy.disk_ratio * stats.logical_bytes as f64
    }
}

/// Counters kept beside the tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    keys: u64,
    logical: u64,
}

/// The tree and counters, as loaded at open.
#[derive(Debug)]
struct Scanned {
    tree: Tree,
    counters: Counters,
}

/// Frees the page versions this thread's write replaced, now, on the write path.
///
/// sled 0.34 retires replaced pages through crossbeam-epoch's default collector, and the
/// collector runs deferred frees on whichever thread pins next — usually a retrieve. Flushing
/// the writer's garbage here moves that work off the read path.
fn reclaim_write_garbage() {
    crossbeam_epoch::pin().flush();
}

/// Rebuilds the tree and counters by hashing every record (recovery and `verify`).
fn scan_tree(db: &sled::Db) -> Result<Scanned> {
    let mut leaves = Vec::new();
    let mut logical = 0u64;
    for entry in db.scan_prefix([DATA]) {
        let (key, record) = entry?;
        let value = full_value(db, &record)?;
        logical += (key.len() - 1 + value.len()) as u64;
        leaves.push((
            merkle::key_path(&key[1..]),
            merkle::leaf_hash(&key[1..], &value),
        ));
    }
    Ok(Scanned {
        counters: Counters {
            keys: leaves.len() as u64,
            logical,
        },
        tree: Tree::from_leaves(leaves),
    })
}

/// `n` distinct indices below `len` (`n < len`, and small next to it), by rejection.
fn rand_indices(rng: &mut fastrand::Rng, len: usize, n: usize) -> Vec<usize> {
    let mut picked = std::collections::HashSet::with_capacity(n);
    while picked.len() < n {
        picked.insert(rng.usize(0..len));
    }
    picked.into_iter().collect()
}

#[cfg(test)]
mod tests;
