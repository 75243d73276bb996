//! Whether a dedicated thread (the media engine, an echo worker) is alive, and what its
//! supervisor does about it. The thread publishes the time of its last loop turn in an atomic
//! and a guard on its stack records how it ended, so a watchdog judges it without sending it a
//! message (a stalled thread could not answer one). The judgement and the restart decision are
//! pure: they take the time as an argument.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::intensity::Intensity;

/// Whether a thread's loop is alive, for a watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Running,
    /// The loop has not turned for `since` (more than its stall bound).
    Stalled { since: Duration },
    /// The thread has ended: shut down, or panicked (with the panic's message).
    Dead { reason: String },
}

impl std::fmt::Display for Liveness {
    /// `running`, `stalled for N ms`, `dead: why`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Liveness::Running => f.write_str("running"),
            Liveness::Stalled { since } => write!(f, "stalled for {} ms", since.as_millis()),
            Liveness::Dead { reason } => write!(f, "dead: {reason}"),
        }
    }
}

/// What a thread shares with its watchers: written by the loop (one relaxed store per turn)
/// and by its exit guard, read by anyone, no messages, so a stalled thread can still be judged.
#[derive(Debug)]
pub struct Health {
    /// The origin of `last_turn_ms`: an `Instant` does not fit an atomic, milliseconds do.
    origin: Instant,
    /// When the loop last began a turn, in milliseconds since `origin`.
    last_turn_ms: AtomicU64,
    /// Why the thread ended; set once, by whoever knows most (see [`spawn`]).
    ended: OnceLock<String>,
    stall_bound: Duration,
}

impl Health {
    /// A thread that has just turned, judged stalled after `stall_bound` without a turn.
    pub fn new(stall_bound: Duration) -> Self {
        Health { origin: Instant::now(), last_turn_ms: AtomicU64::new(0), ended: OnceLock::new(), stall_bound }
    }

    fn ms_since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop began a turn at `now`.
    pub fn turn(&self, now: Instant) {
        self.last_turn_ms.store(self.ms_since_origin(now), Ordering::Relaxed);
    }

    pub fn liveness(&self, now: Instant) -> Liveness {
        let gap = Duration::from_millis(self.ms_since_origin(now).saturating_sub(self.last_turn_ms.load(Ordering::Relaxed)));
        judge(self.ended.get().map(String::as_str), gap, self.stall_bound)
    }

    fn record_end(&self, reason: String) {
        let _ = self.ended.set(reason);
    }
}

/// Liveness from what is known: an ended thread is dead whatever its last turn; a running
/// one is stalled when its last turn is more than `bound` ago.
pub fn judge(ended: Option<&str>, since_last_turn: Duration, bound: Duration) -> Liveness {
    match ended {
        Some(reason) => Liveness::Dead { reason: reason.to_string() },
        None if since_last_turn > bound => Liveness::Stalled { since: since_last_turn },
        None => Liveness::Running,
    }
}

/// Lives on the thread's stack: when the thread ends, by returning or by unwinding from a
/// panic, its drop marks it dead. The thread records a more precise reason (the panic's
/// message) first when it can; `OnceLock` keeps the first one.
struct ExitGuard(Arc<Health>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.record_end(if thread::panicking() { "panicked".into() } else { "ended".into() });
    }
}

/// The message of a panic payload (`panic!` with a literal gives `&str`, with arguments
/// `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Starts a named thread whose end, however it comes, is recorded in `health`: "shut down"
/// when `body` returns, "panicked: <message>" when it panics. The panic is caught only to
/// record its message, then unwound further, so the thread still ends as panicked (its
/// `JoinHandle` says so).
pub fn spawn(name: &str, health: Arc<Health>, body: impl FnOnce() + Send + 'static) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new().name(name.into()).spawn(move || {
        let guard = ExitGuard(health);
        match panic::catch_unwind(AssertUnwindSafe(body)) {
            Ok(()) => guard.0.record_end("shut down".into()),
            Err(payload) => {
                guard.0.record_end(format!("panicked: {}", panic_message(payload.as_ref())));
                panic::resume_unwind(payload)
            }
        }
    })
}

/// What a supervisor does about a thread it restarts in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Running: nothing.
    Keep,
    /// Dead or stalled, within the restart intensity: start a new one; `reason` says why.
    Restart { reason: String },
    /// Dead or stalled once too often (past the intensity): the process must end.
    Escalate { reason: String },
}

/// The decision for a thread judged `liveness` at `now`; a failure is counted in `intensity`.
pub fn decide(liveness: &Liveness, intensity: &mut Intensity, now: Instant) -> Decision {
    let reason = match liveness {
        Liveness::Running => return Decision::Keep,
        Liveness::Stalled { since } => format!("stalled: no loop turn for {} ms", since.as_millis()),
        Liveness::Dead { reason } => reason.clone(),
    };
    if intensity.record(now) {
        let why = format!(
            "{reason} (more than {} failures within {} ms)",
            intensity.max(),
            intensity.window().as_millis()
        );
        Decision::Escalate { reason: why }
    } else {
        Decision::Restart { reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_judged_from_the_exit_and_the_last_turn() {
        let bound = Duration::from_millis(500);
        assert_eq!(judge(None, Duration::ZERO, bound), Liveness::Running);
        assert_eq!(judge(None, bound, bound), Liveness::Running, "exactly the bound");
        let gap = bound + Duration::from_millis(1);
        assert_eq!(judge(None, gap, bound), Liveness::Stalled { since: gap });
        assert_eq!(
            judge(Some("panicked: x"), Duration::ZERO, bound),
            Liveness::Dead { reason: "panicked: x".into() },
            "an ended thread is dead however recent its last turn"
        );
        // Through `Health`, with made-up times.
        let origin = Instant::now();
        let h = Health { origin, last_turn_ms: AtomicU64::new(0), ended: OnceLock::new(), stall_bound: bound };
        h.turn(origin + Duration::from_millis(1000));
        assert_eq!(h.liveness(origin + Duration::from_millis(1400)), Liveness::Running);
        assert_eq!(
            h.liveness(origin + Duration::from_millis(1600)),
            Liveness::Stalled { since: Duration::from_millis(600) }
        );
        assert_eq!(h.liveness(origin), Liveness::Running, "a reading before the last turn");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let literal = panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "plain");
        let n = 3;
        let formatted = panic::catch_unwind(|| panic!("with {n}")).unwrap_err();
        assert_eq!(panic_message(formatted.as_ref()), "with 3");
        let other = panic::catch_unwind(|| panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "(no message)");
    }

    #[test]
    fn a_spawned_thread_records_how_it_ended() {
        let ok = Arc::new(Health::new(Duration::from_secs(1)));
        spawn("t-ok", Arc::clone(&ok), || {}).unwrap().join().unwrap();
        assert_eq!(ok.liveness(Instant::now()), Liveness::Dead { reason: "shut down".into() });
        let bad = Arc::new(Health::new(Duration::from_secs(1)));
        assert!(spawn("t-bad", Arc::clone(&bad), || panic!("boom")).unwrap().join().is_err());
        assert_eq!(bad.liveness(Instant::now()), Liveness::Dead { reason: "panicked: boom".into() });
    }

    #[test]
    fn failures_restart_until_the_intensity_is_exceeded() {
        let t0 = Instant::now();
        let mut i = Intensity::new(2, Duration::from_secs(10));
        assert_eq!(decide(&Liveness::Running, &mut i, t0), Decision::Keep);
        assert_eq!(i.total(), 0, "a running thread is no failure");
        let dead = Liveness::Dead { reason: "panicked: x".into() };
        assert_eq!(decide(&dead, &mut i, t0), Decision::Restart { reason: "panicked: x".into() });
        let stalled = Liveness::Stalled { since: Duration::from_millis(700) };
        assert_eq!(
            decide(&stalled, &mut i, t0 + Duration::from_secs(1)),
            Decision::Restart { reason: "stalled: no loop turn for 700 ms".into() }
        );
        match decide(&dead, &mut i, t0 + Duration::from_secs(2)) {
            Decision::Escalate { reason } => {
                assert_eq!(reason, "panicked: x (more than 2 failures within 10000 ms)")
            }
            d => panic!("a third failure within 10 s escalates: {d:?}"),
        }
        // Once the window has passed, a failure restarts again.
        let mut j = Intensity::new(2, Duration::from_secs(10));
        for k in 0..5u64 {
            let at = t0 + Duration::from_secs(11 * k);
            assert!(matches!(decide(&dead, &mut j, at), Decision::Restart { .. }), "failure {k}");
        }
    }
}
