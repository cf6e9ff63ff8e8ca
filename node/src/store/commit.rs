//! The flusher: one thread that makes writes durable, and the record of whether it can.
//!
//! Each write is applied to sled and takes a sequence number. In `Sync` mode the writer then
//! waits for a flush that started after its write (group commit: every write applied before
//! a flush starts is durable when it ends, so concurrent writers share one flush). In
//! `Periodic` mode nobody waits; the thread flushes every interval.
//!
//! A flush that fails is never hidden. sled 0.34 keeps an I/O error of its log as a global
//! error: nothing written after it ever reaches the disk again in this process. So the
//! first failure is sticky: every later write is refused (the node stops acknowledging what
//! it cannot make durable), `/healthz` fails, and the kubelet restarts the node, which
//! recovers everything flushed before the failure. A flush that does not return (seen after
//! ENOSPC) is a stall: writers stop waiting for it after `stall_after` and get an error,
//! new writes are refused while it lasts, and health fails too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a write cannot be made durable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// A flush failed; the process cannot make anything durable again.
    #[error("a flush failed ({message}); the node no longer acknowledges writes until it restarts")]
    Failed {
        /// The first failure.
        message: String,
        /// The failure was the volume running out of space.
        no_space: bool,
    },
    /// A flush has been running for longer than the stall limit.
    #[error("a flush has not returned for {0:?}; writes are refused until it does")]
    Stalled(Duration),
}

/// A snapshot of the flusher's state, for health and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlushHealth {
    /// Successful flushes so far.
    pub flushes: u64,
    /// Failed flushes so far.
    pub errors: u64,
    /// Unix time of the last successful flush, seconds (None before the first).
    pub last_success_unix: Option<f64>,
    /// Why writes are refused, if they are.
    pub refusing: Option<FlushError>,
}

impl FlushHealth {
    /// Whether the node can make writes durable.
    pub fn ok(&self) -> bool {
        self.refusing.is_none()
    }
}

type FlushFn = Box<dyn Fn() -> Result<(), (String, bool)> + Send + Sync>;

struct Shared {
    applied: AtomicU64,
    state: Mutex<State>,
    /// Wakes the flusher thread.
    wake: Condvar,
    /// Wakes writers waiting for durability.
    flushed: Condvar,
    flush: FlushFn,
    period: Duration,
    stall_after: Duration,
}

#[derive(Default)]
struct State {
    durable: u64,
    requested: u64,
    flushes: u64,
    errors: u64,
    last_success: Option<(Instant, SystemTime)>,
    flushing_since: Option<Instant>,
    failed: Option<FlushError>,
    stop: bool,
}

impl State {
    /// Why writes are refused now, if they are.
    fn refusing(&self, stall_after: Duration) -> Option<FlushError> {
        if let Some(failed) = &self.failed {
            return Some(failed.clone());
        }
        let since = self
            .flushing_since
            .map(|since| since.elapsed())
            .filter(|running| *running > stall_after);
        since.map(FlushError::Stalled)
    }
}

/// Coordinates flushes: the group commit of `Sync` writers and the periodic flush.
pub(crate) struct Flusher {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("period", &self.shared.period)
            .field("stall_after", &self.shared.stall_after)
            .finish_non_exhaustive()
    }
}

impl Flusher {
    /// Starts the flusher thread. `flush` makes everything applied so far durable; its
    /// error says what failed and whether the volume was full. The thread flushes every
    /// `period` and whenever a writer waits.
    pub(crate) fn start(
        period: Duration,
        stall_after: Duration,
        flush: impl Fn() -> Result<(), (String, bool)> + Send + Sync + 'static,
    ) -> std::io::Result<Flusher> {
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            flush: Box::new(flush),
            period,
            stall_after,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("phoenix-flusher".into())
            .spawn(move || run(&worker))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails when writes cannot be made durable (call before applying a write).
    pub(crate) fn admit(&self) -> Result<(), FlushError> {
        match self.lock().refusing(self.shared.stall_after) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Refuses every later write (for failures found outside a flush).
    pub(crate) fn fail(&self, error: FlushError) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(error);
        }
        self.shared.flushed.notify_all();
    }

    /// Records that one more write has been applied; returns its sequence number.
    pub(crate) fn applied(&self) -> u64 {
        self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Writes applied so far.
    pub(crate) fn applied_count(&self) -> u64 {
        self.shared.applied.load(Ordering::SeqCst)
    }

    /// Number of successful flushes so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.lock().flushes
    }

    /// The flusher's state for health checks and metrics.
    pub(crate) fn health(&self) -> FlushHealth {
        let state = self.lock();
        FlushHealth {
            flushes: state.flushes,
            errors: state.errors,
            last_success_unix: state
                .last_success
                .and_then(|(_, at)| at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())),
            refusing: state.refusing(self.shared.stall_after).or_else(|| {
                // Periodic mode: no flush has succeeded for the stall limit (the thread
                // itself may be stuck before it marks a flush as running).
                let last = state.last_success.map(|(at, _)| at.elapsed());
                last.filter(|age| *age > self.shared.stall_after + self.shared.period)
                    .map(FlushError::Stalled)
            }),
        }
    }

    /// Blocks until write `seq` is durable (group commit).
    ///
    /// # Errors
    /// [`FlushError::Failed`] when a flush failed (now or before), [`FlushError::Stalled`]
    /// when no flush completed within the stall limit.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<(), FlushError> {
        let deadline = Instant::now() + self.shared.stall_after;
        let mut state = self.lock();
        if state.requested < seq {
            state.requested = seq;
            self.shared.wake.notify_one();
        }
        loop {
            if let Some(failed) = &state.failed {
                return Err(failed.clone());
            }
            if state.durable >= seq {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FlushError::Stalled(self.shared.stall_after));
            }
            state = self
                .shared
                .flushed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        // A flush that hangs must not hang the process: the thread is left behind then.
        if let Some(thread) = self.thread.take()
            && self.lock().flushing_since.is_none()
        {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let mut next_periodic = Instant::now() + shared.period;
    loop {
        if state.stop {
            return;
        }
        let asked = state.requested > state.durable;
        let now = Instant::now();
        if !asked && now < next_periodic {
            state = shared
                .wake
                .wait_timeout(state, next_periodic - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        if state.failed.is_some() {
            // Nothing can become durable any more; writers are told at once.
            state.requested = state.durable;
            shared.flushed.notify_all();
            next_periodic = Instant::now() + shared.period;
            continue;
        }
        let target = shared.applied.load(Ordering::SeqCst);
        state.flushing_since = Some(Instant::now());
        drop(state);
        let result = (shared.flush)();
        state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.flushing_since = None;
        match result {
            Ok(()) => {
                state.durable = state.durable.max(target);
                state.flushes += 1;
                state.last_success = Some((Instant::now(), SystemTime::now()));
            }
            Err((message, no_space)) => {
                state.errors += 1;
                tracing::error!(
                    error = %message,
                    no_space,
                    "flush failed: refusing writes from now on; restart the node to recover"
                );
                state.failed = Some(FlushError::Failed { message, no_space });
            }
        }
        next_periodic = Instant::now() + shared.period;
        shared.flushed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn concurrent_writers_share_flushes() {
        let flusher = Arc::new(
            Flusher::start(Duration::from_secs(60), Duration::from_secs(10), || {
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            })
            .expect("start"),
        );
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let flusher = Arc::clone(&flusher);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let seq = flusher.applied();
                        flusher.wait_durable(seq).expect("flush succeeds");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let flushes = flusher.flushes();
        assert!(
            flushes < 400,
            "400 writes took {flushes} flushes: no grouping"
        );
        assert!(flushes > 0);
    }

    #[test]
    fn a_failed_flush_refuses_every_later_write() {
        let fail = Arc::new(AtomicBool::new(true));
        let failing = Arc::clone(&fail);
        let flusher = Flusher::start(
            Duration::from_secs(60),
            Duration::from_secs(10),
            move || {
                if failing.load(Ordering::SeqCst) {
                    Err(("No space left on device".to_string(), true))
                } else {
                    Ok(())
                }
            },
        )
        .expect("start");
        let seq = flusher.applied();
        let error = flusher.wait_durable(seq).expect_err("the flush fails");
        assert!(matches!(error, FlushError::Failed { no_space: true, .. }));
        assert_eq!(flusher.flushes(), 0);
        // Space came back: sled still cannot write, so the failure stays.
        fail.store(false, Ordering::SeqCst);
        assert!(flusher.admit().is_err());
        let seq = flusher.applied();
        assert!(flusher.wait_durable(seq).is_err());
        let health = flusher.health();
        assert!(!health.ok());
        assert_eq!(health.errors, 1);
    }

    #[test]
    fn a_flush_that_never_returns_stalls_writers_and_health() {
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = Arc::clone(&release);
        let flusher = Flusher::start(
            Duration::from_secs(60),
            Duration::from_millis(200),
            move || {
                let (lock, cvar) = &*gate;
                let mut open = lock.lock().unwrap_or_else(PoisonError::into_inner);
                while !*open {
                    open = cvar.wait(open).unwrap_or_else(PoisonError::into_inner);
                }
                Ok(())
            },
        )
        .expect("start");
        let seq = flusher.applied();
        let started = Instant::now();
        assert!(matches!(
            flusher.wait_durable(seq),
            Err(FlushError::Stalled(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(flusher.admit(), Err(FlushError::Stalled(_))));
        assert!(!flusher.health().ok());
        // The flush returns: writes are accepted again.
        *release.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        release.1.notify_all();
        let seq = flusher.applied();
        flusher
            .wait_durable(seq)
            .expect("durable once the flush returned");
        assert!(flusher.admit().is_ok());
    }

    #[test]
    fn periodic_flushes_run_without_writers() {
        let flusher = Flusher::start(
            Duration::from_millis(10),
            Duration::from_secs(10),
            || Ok(()),
        )
        .expect("start");
        let deadline = Instant::now() + Duration::from_secs(5);
        while flusher.flushes() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(flusher.flushes() >= 3);
        assert!(flusher.health().last_success_unix.is_some());
    }
}
