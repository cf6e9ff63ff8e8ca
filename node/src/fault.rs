//! Fault injection for tests and the sandbox: slow every retrieve down by a factor, so the
//! operator's observe → schedule loop can be driven through degradation on demand.
//!
//! Off unless the node runs with `faultInjection: true` (`--fault-injection`); even then it
//! is set only through the token-protected `PUT /v1/admin/faults`. A fault marked
//! `clearedByCleanup` stands for what a cleanup repairs (fragmentation, expired data); one
//! that is not stands for a cause cleanup cannot touch (a hot set larger than the cache).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The injected fault, as set and reported over HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Each retrieve takes this many times as long (1 = no fault), 1..=1000.
    pub retrieve_slowdown: f64,
    /// A cleanup removes the fault.
    #[serde(default)]
    pub cleared_by_cleanup: bool,
}

/// The live fault: read on every retrieve with one relaxed load.
#[derive(Debug, Default)]
pub struct RetrieveFault {
    /// Slowdown × 1000; 0 or 1000 mean none.
    slowdown_milli: AtomicU64,
    cleared_by_cleanup: AtomicBool,
}

impl RetrieveFault {
    /// Sets the fault.
    ///
    /// # Errors
    /// A slowdown outside 1..=1000.
    pub fn set(&self, spec: FaultSpec) -> Result<(), String> {
        if !(1.0..=1000.0).contains(&spec.retrieve_slowdown) {
            return Err(format!(
                "retrieveSlowdown must lie in 1..=1000, got {}",
                spec.retrieve_slowdown
            ));
        }
        self.cleared_by_cleanup
            .store(spec.cleared_by_cleanup, Ordering::Relaxed);
        self.slowdown_milli
            .store((spec.retrieve_slowdown * 1000.0) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The fault in force.
    pub fn get(&self) -> FaultSpec {
        let milli = self.slowdown_milli.load(Ordering::Relaxed).max(1000);
        FaultSpec {
            retrieve_slowdown: milli as f64 / 1000.0,
            cleared_by_cleanup: self.cleared_by_cleanup.load(Ordering::Relaxed),
        }
    }

    /// What a cleanup does to the fault: removes it when it is marked `clearedByCleanup`.
    pub fn on_cleanup(&self) {
        if self.cleared_by_cleanup.load(Ordering::Relaxed) {
            self.slowdown_milli.store(0, Ordering::Relaxed);
        }
    }

    /// When a fault is set, the start of the operation to stretch.
    pub fn start(&self) -> Option<Instant> {
        (self.slowdown_milli.load(Ordering::Relaxed) > 1000).then(Instant::now)
    }

    /// Spins until the operation started at `started` has taken `slowdown` times as long.
    pub fn stretch(&self, started: Instant) {
        let milli = self.slowdown_milli.load(Ordering::Relaxed);
        if milli <= 1000 {
            return;
        }
        let took = started.elapsed();
        let extra = took.mul_f64((milli - 1000) as f64 / 1000.0);
        let until = started + took + extra.min(Duration::from_millis(100));
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slowdown_stretches_and_a_transient_one_is_cleared_by_cleanup() {
        let fault = RetrieveFault::default();
        assert!(fault.start().is_none(), "no fault by default");
        assert!(
            fault
                .set(FaultSpec {
                    retrieve_slowdown: 0.5,
                    cleared_by_cleanup: false
                })
                .is_err()
        );
        let persistent = FaultSpec {
            retrieve_slowdown: 5.0,
            cleared_by_cleanup: false,
        };
        fault.set(persistent).expect("set");
        let started = fault.start().expect("armed");
        std::thread::sleep(Duration::from_millis(2));
        fault.stretch(started);
        assert!(started.elapsed() >= Duration::from_millis(10));
        fault.on_cleanup();
        assert_eq!(
            fault.get(),
            persistent,
            "a persistent fault survives cleanup"
        );
        fault
            .set(FaultSpec {
                cleared_by_cleanup: true,
                ..persistent
            })
            .expect("set");
        fault.on_cleanup();
        assert!(fault.start().is_none());
        assert_eq!(fault.get().retrieve_slowdown, 1.0);
    }
}
