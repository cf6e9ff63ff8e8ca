//! Per-stage timing of the store path, for `phoenix-node bench --http`: off unless the
//! bench turns it on (then each stage boundary costs one clock read and two relaxed atomic
//! adds; off, one relaxed load per store). The sums are process-wide, so the bench reads
//! what the server's worker threads measured.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A stage of a store, in the order a store passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    /// The whole request inside the server's router (the `observe` middleware's span).
    Server,
    /// The handler's extraction: key, query, body, TTL.
    Extract,
    /// The store call as the handler sees it (admission, the inline or pooled run).
    Write,
    /// Building the JSON response.
    Response,
    /// Key and value limits, TTL.
    Validate,
    /// Durability and free-space admission.
    Admit,
    /// The Merkle leaf hash, and letting go of the write lock once the tree update is
    /// listed (the tree's own thread applies it).
    Merkle,
    /// Waiting for the write lock.
    Lock,
    /// The checkpoint mark and the record's encoding (and a large value's chunks).
    Encode,
    /// The expiry index entry.
    ExpiryIndex,
    /// sled's insert of the record.
    SledInsert,
    /// What the replaced record leaves: its expiry entry and chunks, the counters.
    Bookkeeping,
    /// The probe's reservoir and the counters' atomics.
    Sample,
    /// Freeing the replaced page versions (crossbeam-epoch's garbage) on the write path.
    Reclaim,
    /// Waiting for durability (sync mode only).
    Durable,
}

const STAGES: usize = Stage::Durable as usize + 1;

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; STAGES] = [
        Stage::Server,
        Stage::Extract,
        Stage::Write,
        Stage::Response,
        Stage::Validate,
        Stage::Admit,
        Stage::Merkle,
        Stage::Lock,
        Stage::Encode,
        Stage::ExpiryIndex,
        Stage::SledInsert,
        Stage::Bookkeeping,
        Stage::Sample,
        Stage::Reclaim,
        Stage::Durable,
    ];

    /// Its name in the bench's breakdown.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Server => "server",
            Stage::Extract => "extract",
            Stage::Write => "write",
            Stage::Response => "response",
            Stage::Validate => "validate",
            Stage::Admit => "admit",
            Stage::Merkle => "merkle",
            Stage::Lock => "lock",
            Stage::Encode => "encode",
            Stage::ExpiryIndex => "expiry index",
            Stage::SledInsert => "sled insert",
            Stage::Bookkeeping => "bookkeeping",
            Stage::Sample => "sample",
            Stage::Reclaim => "epoch reclaim",
            Stage::Durable => "durable wait",
        }
    }
}

static ON: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];
static COUNTS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];

/// Turns timing on or off, and clears the sums.
pub fn enable(on: bool) {
    for i in 0..STAGES {
        NANOS[i].store(0, Ordering::Relaxed);
        COUNTS[i].store(0, Ordering::Relaxed);
    }
    ON.store(on, Ordering::Relaxed);
}

/// Each stage's total, nanoseconds, and how many laps it got (stages never timed are
/// left out; a stage may be lapped more than once per operation).
pub fn totals() -> Vec<(Stage, u64, u64)> {
    Stage::ALL
        .iter()
        .filter_map(|&stage| {
            let count = COUNTS[stage as usize].load(Ordering::Relaxed);
            let nanos = NANOS[stage as usize].load(Ordering::Relaxed);
            (count > 0).then_some((stage, nanos, count))
        })
        .collect()
}

/// Laps of one operation: each [`Laps::lap`] adds the time since the previous one to a stage.
#[derive(Debug)]
pub struct Laps {
    last: Option<Instant>,
}

impl Laps {
    /// Starts timing (a no-op when timing is off).
    pub fn start() -> Laps {
        Laps {
            last: ON.load(Ordering::Relaxed).then(Instant::now),
        }
    }

    /// Laps that time nothing.
    pub fn off() -> Laps {
        Laps { last: None }
    }

    /// Adds the time since the last lap to `stage`.
    pub fn lap(&mut self, stage: Stage) {
        if let Some(last) = self.last {
            let now = Instant::now();
            let nanos = u64::try_from((now - last).as_nanos()).unwrap_or(u64::MAX);
            NANOS[stage as usize].fetch_add(nanos, Ordering::Relaxed);
            COUNTS[stage as usize].fetch_add(1, Ordering::Relaxed);
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_add_up_only_while_on() {
        enable(false);
        let mut off = Laps::start();
        off.lap(Stage::Validate);
        assert!(totals().is_empty());
        enable(true);
        let mut on = Laps::start();
        std::thread::sleep(std::time::Duration::from_millis(2));
        on.lap(Stage::Validate);
        on.lap(Stage::Admit);
        let totals = totals();
        enable(false);
        let validate = totals
            .iter()
            .find(|m| m.0 == Stage::Validate)
            .expect("timed");
        assert!(validate.1 >= 2_000_000 && validate.2 >= 1, "{validate:?}");
        assert!(totals.iter().any(|m| m.0 == Stage::Admit));
    }
}
