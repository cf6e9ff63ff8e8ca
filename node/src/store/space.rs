//! The disk guard: writes are refused while free space on the data volume is below a
//! reserve, before the volume is full (like etcd's NOSPACE alarm), so a flush and a
//! checkpoint always find room. Reads are never affected; writes resume by themselves once
//! space returns — once free space is a margin above the reserve (a quarter of it, at least
//! 1 MiB), so that writes do not flap between refused and accepted while the volume hovers
//! at the line (sled's files grow and shrink in segments, and a small write would otherwise
//! slip in right after a large one was refused).
//!
//! Asking the file system for its free space on every write would cost a system call per
//! write; instead a write spends from a budget of half the space above the reserve, and the
//! file system is asked again when the budget runs out (so checks come more often as the
//! volume fills). The budget counts each write twice its bytes plus a page, for sled's log
//! and page rewrites.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Where free space is read from (replaceable in tests).
pub trait FreeSpace: Send + Sync + std::fmt::Debug {
    /// Bytes available to this process on the volume holding `path`.
    ///
    /// # Errors
    /// The file system's.
    fn available(&self, path: &Path) -> std::io::Result<u64>;
}

/// The real volume (`statvfs`).
#[derive(Debug, Default)]
pub struct VolumeSpace;

impl FreeSpace for VolumeSpace {
    fn available(&self, path: &Path) -> std::io::Result<u64> {
        fs4::available_space(path)
    }
}

/// A refused write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowSpace {
    /// Bytes available on the volume.
    pub available: u64,
    /// The reserve the node keeps.
    pub reserve: u64,
    /// Free bytes at which writes are accepted again (the reserve plus the resume margin).
    pub resume_at: u64,
}

/// How far above the reserve free space must climb before refused writes resume (from the
/// configured reserve, `disk.minFreeBytes`).
fn resume_margin(reserve: u64) -> u64 {
    (reserve / 4).max(1 << 20)
}

/// Admits writes while the volume has more free space than the reserve.
#[derive(Debug)]
pub(crate) struct SpaceGuard {
    path: PathBuf,
    reserve: u64,
    source: Arc<dyn FreeSpace>,
    budget: AtomicI64,
    /// Whether the last check refused: writes stay refused until the margin is regained.
    check: Mutex<bool>,
}

const PAGE: i64 = 4096;

impl SpaceGuard {
    /// A guard over the volume of `path`; `reserve` 0 turns it off.
    pub(crate) fn new(path: PathBuf, reserve: u64, source: Arc<dyn FreeSpace>) -> SpaceGuard {
        SpaceGuard {
            path,
            reserve,
            source,
            budget: AtomicI64::new(0),
            check: Mutex::new(false),
        }
    }

    /// Admits a write of `bytes` bytes, or refuses it while space is below the reserve
    /// (`extra_reserve` is added to the configured one: the checkpoint's size grows with
    /// the keys); once refused, writes resume only when space is the margin above it.
    ///
    /// # Errors
    /// [`LowSpace`]; an unreadable free space counts as none being available.
    pub(crate) fn admit(&self, bytes: usize, extra_reserve: u64) -> Result<(), LowSpace> {
        if self.reserve == 0 {
            return Ok(());
        }
        let cost = i64::try_from(bytes)
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
            .saturating_add(PAGE);
        if self.budget.fetch_sub(cost, Ordering::SeqCst) >= cost {
            return Ok(());
        }
        let mut refusing = self.check.lock().unwrap_or_else(PoisonError::into_inner);
        // Another writer may have refilled the budget while this one waited.
        if self.budget.load(Ordering::SeqCst) >= cost {
            self.budget.fetch_sub(cost, Ordering::SeqCst);
            return Ok(());
        }
        let reserve = self.reserve.saturating_add(extra_reserve);
        let available = match self.source.available(&self.path) {
            Ok(available) => available,
            Err(error) => {
                tracing::warn!(%error, "cannot read free disk space: refusing writes");
                0
            }
        };
        let resume_at = reserve.saturating_add(resume_margin(self.reserve));
        let above = available.saturating_sub(reserve);
        let budget = i64::try_from(above / 2).unwrap_or(i64::MAX);
        if budget < cost || (*refusing && available < resume_at) {
            *refusing = true;
            self.budget.store(0, Ordering::SeqCst);
            return Err(LowSpace {
                available,
                reserve,
                resume_at,
            });
        }
        *refusing = false;
        self.budget.store(budget - cost, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Debug, Default)]
    struct Fake {
        available: AtomicU64,
        asked: AtomicU64,
    }

    impl FreeSpace for Fake {
        fn available(&self, _: &Path) -> std::io::Result<u64> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            Ok(self.available.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn writes_are_refused_below_the_reserve_and_resume_when_space_returns() {
        let fake = Arc::new(Fake::default());
        fake.available.store(100 << 20, Ordering::SeqCst);
        let guard = SpaceGuard::new(PathBuf::from("/data"), 64 << 20, fake.clone());
        let mut admitted = 0u64;
        while guard.admit(32 << 10, 0).is_ok() {
            admitted += 1;
            // The writes use the space they were admitted for.
            fake.available.fetch_sub(32 << 10, Ordering::SeqCst);
            assert!(admitted < 10_000, "never refused");
        }
        let refused = guard.admit(32 << 10, 0).expect_err("refused");
        assert_eq!(refused.reserve, 64 << 20);
        assert_eq!(
            refused.resume_at,
            80 << 20,
            "a quarter of the reserve above it"
        );
        assert!(
            refused.available >= 64 << 20,
            "refused before the reserve was used"
        );
        assert!(
            fake.asked.load(Ordering::SeqCst) < admitted,
            "asked on every write"
        );
        fake.available.store(200 << 20, Ordering::SeqCst);
        assert!(guard.admit(32 << 10, 0).is_ok());
    }

    #[test]
    fn once_refused_writes_resume_only_a_margin_above_the_reserve() {
        let fake = Arc::new(Fake::default());
        let reserve = 8 << 20;
        let guard = SpaceGuard::new(PathBuf::from("/data"), reserve, fake.clone());
        // A large write is refused just above the line; a small one would still fit.
        fake.available
            .store(reserve + (100 << 10), Ordering::SeqCst);
        assert!(guard.admit(64 << 10, 0).is_err());
        let small = guard
            .admit(10, 0)
            .expect_err("no small write slips in after a refusal");
        assert_eq!(small.resume_at, reserve + (2 << 20));
        // Space creeping back (a segment freed) is not enough...
        fake.available.store(reserve + (1 << 20), Ordering::SeqCst);
        assert!(guard.admit(10, 0).is_err());
        // ...the margin is, and then writes run on their budget again.
        fake.available.store(reserve + (2 << 20), Ordering::SeqCst);
        assert!(guard.admit(10, 0).is_ok());
        assert!(guard.admit(64 << 10, 0).is_ok());
        // Before any refusal, the line is the reserve itself.
        let fresh = SpaceGuard::new(PathBuf::from("/data"), reserve, fake.clone());
        fake.available
            .store(reserve + (100 << 10), Ordering::SeqCst);
        assert!(fresh.admit(10, 0).is_ok());
    }

    #[test]
    fn the_margin_is_a_quarter_of_the_reserve_and_at_least_a_mebibyte() {
        assert_eq!(resume_margin(64 << 20), 16 << 20);
        assert_eq!(resume_margin(1 << 20), 1 << 20);
        assert_eq!(resume_margin(1), 1 << 20);
    }

    #[test]
    fn the_extra_reserve_counts_and_zero_turns_the_guard_off() {
        let fake = Arc::new(Fake::default());
        fake.available.store(100 << 20, Ordering::SeqCst);
        let guard = SpaceGuard::new(PathBuf::from("/data"), 64 << 20, fake.clone());
        assert!(guard.admit(1, 40 << 20).is_err());
        let off = SpaceGuard::new(PathBuf::from("/data"), 0, fake.clone());
        fake.available.store(0, Ordering::SeqCst);
        assert!(off.admit(1 << 20, 0).is_ok());
    }
}
