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

/// Why a thread judged `liveness` failed; None while it runs.
fn failure(liveness: &Liveness) -> Option<String> {
    match liveness {
        Liveness::Running => None,
        Liveness::Stalled { since } => Some(format!("stalled: no loop turn for {} ms", since.as_millis())),
        Liveness::Dead { reason } => Some(reason.clone()),
    }
}

/// The decision for a thread judged `liveness` at `now`; a failure is counted in `intensity`.
pub fn decide(liveness: &Liveness, intensity: &mut Intensity, now: Instant) -> Decision {
    let Some(reason) = failure(liveness) else { return Decision::Keep };
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

/// The decisions for a group of like threads judged together at `now` (`liveness[i]` of
/// thread `i`): every failed one is restarted, and the failures of one judgement count as one
/// in `intensity`. They most likely share a cause (a fault that hits every worker, a host that
/// paused them all past the stall bound), and a machine with more workers than the intensity
/// allows must not end the process over one such event. Past the intensity the group gets one
/// [`Decision::Escalate`] (for the first failed thread) and nothing is restarted. Returns only
/// the threads that failed, in index order.
pub fn decide_group(liveness: &[Liveness], intensity: &mut Intensity, now: Instant) -> Vec<(usize, Decision)> {
    let mut failed = liveness.iter().enumerate().filter_map(|(i, l)| failure(l).map(|reason| (i, l, reason)));
    let Some((first, l, _)) = failed.next() else { return Vec::new() };
    let decision = decide(l, intensity, now);
    if let Decision::Escalate { .. } = decision {
        return vec![(first, decision)];
    }
    // The others of this judgement are restarted without counting again.
    std::iter::once((first, decision)).chain(failed.map(|(i, _, reason)| (i, Decision::Restart { reason }))).collect()
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

    #[test]
    fn a_group_failing_together_counts_once() {
        let t0 = Instant::now();
        let dead = Liveness::Dead { reason: "panicked: x".into() };
        let stalled = Liveness::Stalled { since: Duration::from_millis(600) };
        let mut i = Intensity::new(5, Duration::from_secs(10));
        assert!(decide_group(&[Liveness::Running, Liveness::Running], &mut i, t0).is_empty());
        // Eight workers fail at once (more than the intensity's 5): all restarted, one failure.
        let eight = vec![dead.clone(); 8];
        let d = decide_group(&eight, &mut i, t0);
        assert_eq!(d.len(), 8);
        assert!(d.iter().enumerate().all(|(k, (i, d))| *i == k && matches!(d, Decision::Restart { .. })), "{d:?}");
        assert_eq!(i.total(), 1, "one event");
        // Only the failed ones, each with its own reason.
        let mixed = [Liveness::Running, stalled.clone(), Liveness::Running, dead.clone()];
        assert_eq!(
            decide_group(&mixed, &mut i, t0 + Duration::from_secs(1)),
            vec![
                (1, Decision::Restart { reason: "stalled: no loop turn for 600 ms".into() }),
                (3, Decision::Restart { reason: "panicked: x".into() }),
            ]
        );
        assert_eq!(i.total(), 2);
        // Failing judgements past the intensity (6 within 10 s, max 5): one escalation.
        for k in 2..5 {
            assert!(decide_group(&eight, &mut i, t0 + Duration::from_secs(k)).len() == 8);
        }
        match decide_group(&eight, &mut i, t0 + Duration::from_secs(5)).as_slice() {
            [(0, Decision::Escalate { reason })] => {
                assert_eq!(reason, "panicked: x (more than 5 failures within 10000 ms)")
            }
            d => panic!("the sixth failing judgement within 10 s escalates once: {d:?}"),
        }
    }
}
