//! The operator's own health, for its `/readyz` and `/healthz`.
//!
//! - Ready: a replica that does not lead stands by and is ready; the leader is ready once
//!   its watch of the memories has listed them all (its cache is synced), so a rollout
//!   waits until the new leader can act.
//! - Healthy: reconciles finish. The controller loop is stuck when a reconcile has been
//!   running with none finishing for [`STALL`]; the kubelet then restarts the operator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long reconciles may run with none finishing before the operator counts as stuck
/// (a reconcile makes a few API calls and scrapes nodes with a 5 s timeout).
pub const STALL: Duration = Duration::from_secs(300);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Shared between the controller and the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    leading: AtomicBool,
    synced: AtomicBool,
    running: AtomicU64,
    /// Unix seconds of the last finished reconcile, or of the first one to start after an
    /// idle spell.
    last_progress: AtomicU64,
}

impl Health {
    /// This replica starts (or stops) leading; a new leader is unsynced until told.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.synced.store(false, Ordering::SeqCst);
        }
    }

    /// The leader's cache of memories has listed them all.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// A reconcile starts.
    pub fn started(&self) {
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 {
            self.last_progress.store(now(), Ordering::SeqCst);
        }
    }

    /// A reconcile finished (either way).
    pub fn finished(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.last_progress.store(now(), Ordering::SeqCst);
    }

    /// Why `/readyz` fails, if it does.
    pub fn unready(&self) -> Option<&'static str> {
        (self.leading.load(Ordering::SeqCst) && !self.synced.load(Ordering::SeqCst))
            .then_some("leading, but the watch of the memories has not synced yet")
    }

    /// Why `/healthz` fails, if it does.
    pub fn unhealthy(&self) -> Option<String> {
        let running = self.running.load(Ordering::SeqCst);
        let quiet = now().saturating_sub(self.last_progress.load(Ordering::SeqCst));
        (running > 0 && quiet > STALL.as_secs())
            .then(|| format!("{running} reconciles running and none finished for {quiet} s"))
    }

    #[cfg(test)]
    fn age_progress(&self, by: Duration) {
        self.last_progress.fetch_sub(by.as_secs(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_ready_a_leader_once_synced() {
        let health = Health::default();
        assert!(health.unready().is_none(), "a follower stands by");
        health.set_leading(true);
        assert!(health.unready().is_some());
        health.set_synced();
        assert!(health.unready().is_none());
        health.set_leading(false);
        health.set_leading(true);
        assert!(health.unready().is_some(), "a new term syncs again");
    }

    #[test]
    fn reconciles_that_never_finish_make_it_unhealthy() {
        let health = Health::default();
        assert!(health.unhealthy().is_none(), "idle is healthy");
        health.started();
        assert!(health.unhealthy().is_none());
        health.age_progress(STALL + Duration::from_secs(5));
        assert!(health.unhealthy().is_some(), "stuck");
        health.finished();
        assert!(health.unhealthy().is_none());
    }
}
