//! The state of the ARI link as the `AriConnection` actor keeps it: which connection is the
//! current one (its generation), whether it is up, why not, and how long to wait before the
//! next attempt.
//!
//! Every connect attempt gets a new [`Generation`]; everything that comes from an attempt or
//! its connection (the connect's outcome, each event, its end) carries it, and anything of an
//! older generation is ignored here: a closed connection's late end or event can never act on
//! a newer one.
//!
//! Backoff: capped exponential. It is reset only when a connection that had been up for at
//! least [`STABLE_AFTER`] is lost, not on every connect: a link that is lost again right after
//! each connect (another client taking the app back each time, an Asterisk that accepts and
//! drops) backs off instead of reconnecting in a tight loop.
//!
//! No IO and no clock here: inputs carry their `Instant`.

use std::fmt;
use std::time::{Duration, Instant};

/// A connection that lived at least this long counts as stable: its loss resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Which connect attempt (and so which connection) something belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Why the link is not up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Down {
    /// Never connected yet: the first attempt is under way.
    Connecting,
    /// An attempt failed (refused, timed out, HTTP error on the upgrade).
    ConnectFailed(String),
    /// The connection ended: a close frame from Asterisk, the TCP stream ending, a protocol
    /// error. The text says which.
    Closed(String),
    /// No answer to our pings (the text from [`super::liveness::Liveness::dead_reason`]).
    Silent(String),
    /// Asterisk sent ApplicationReplaced: another client registered our Stasis app on another
    /// WebSocket and gets its events now.
    Replaced {
        /// The app taken.
        app: String,
    },
}

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Down::Connecting => write!(f, "connecting to ARI"),
            Down::ConnectFailed(e) => write!(f, "connect error: {e}"),
            Down::Closed(why) => write!(f, "{why}"),
            Down::Silent(why) => write!(f, "{why}"),
            Down::Replaced { app } => write!(
                f,
                "another client took the Stasis app {app} (ApplicationReplaced): its events go there; \
                 reconnecting to take it back"
            ),
        }
    }
}

/// Capped exponential backoff (jitter is the caller's: it needs randomness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// `max` below `min` is raised to `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), next: min }
    }

    /// The wait before the next attempt; doubles the one after, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The link's status for `/ready` and `/actors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub connected: bool,
    /// Successful connects so far.
    pub connects: u64,
    /// The last error (connect failure or loss), kept after a reconnect.
    pub last_error: Option<String>,
    pub connected_for: Option<Duration>,
    /// Why not connected; `None` while connected.
    pub reason: Option<String>,
}

/// The link's state machine (see the module doc).
#[derive(Debug, Clone)]
pub struct LinkState {
    /// The generation of the latest attempt; only its connection is current.
    generation: Generation,
    /// When the current connection came up; `None` while down.
    up_since: Option<Instant>,
    connects: u64,
    /// Why down (meaningless while up).
    down: Down,
    /// The latest failed attempt since the link went down, shown beside `down` (which keeps
    /// the root cause: "silent link", not just the attempts' "timeout").
    retry_error: Option<String>,
    last_error: Option<String>,
    backoff: Backoff,
}

impl LinkState {
    pub fn new(backoff_min: Duration, backoff_max: Duration) -> Self {
        LinkState {
            generation: Generation(0),
            up_since: None,
            connects: 0,
            down: Down::Connecting,
            retry_error: None,
            last_error: None,
            backoff: Backoff::new(backoff_min, backoff_max),
        }
    }

    /// A connect attempt begins: its generation. Everything of older generations is stale
    /// from now on.
    pub fn attempt(&mut self) -> Generation {
        self.generation = Generation(self.generation.0 + 1);
        self.generation
    }

    /// Whether `g` is the latest attempt's (its events may act).
    pub fn is_current(&self, g: Generation) -> bool {
        g == self.generation
    }

    pub fn is_up(&self) -> bool {
        self.up_since.is_some()
    }

    /// Attempt `g` connected at `now`. True: it is the current connection (now up); false: a
    /// stale attempt, whose connection the caller drops at once.
    pub fn connected(&mut self, g: Generation, now: Instant) -> bool {
        if !self.is_current(g) || self.is_up() {
            return false;
        }
        self.up_since = Some(now);
        self.connects += 1;
        self.retry_error = None;
        true
    }

    /// Attempt `g` failed: the wait before the next one, or `None` when `g` is stale (some
    /// other attempt is already under way; nothing to schedule).
    pub fn connect_failed(&mut self, g: Generation, error: String) -> Option<Duration> {
        if !self.is_current(g) || self.is_up() {
            return None;
        }
        if self.connects == 0 {
            self.down = Down::ConnectFailed(error.clone());
        } else {
            self.retry_error = Some(error.clone());
        }
        self.last_error = Some(error);
        Some(self.backoff.next_wait())
    }

    /// Connection `g` went down at `now`, for `why`: the wait before reconnecting, or `None`
    /// when `g` is stale or already down (its end was reported before, e.g. a close after
    /// ApplicationReplaced): then nothing changes.
    pub fn lost(&mut self, g: Generation, why: Down, now: Instant) -> Option<Duration> {
        if !self.is_current(g) {
            return None;
        }
        let since = self.up_since.take()?;
        if now.saturating_duration_since(since) >= STABLE_AFTER {
            self.backoff.reset();
        }
        self.last_error = Some(why.to_string());
        self.down = why;
        self.retry_error = None;
        Some(self.backoff.next_wait())
    }

    pub fn connects(&self) -> u64 {
        self.connects
    }

    pub fn status(&self, now: Instant) -> LinkStatus {
        let reason = match (&self.up_since, &self.retry_error) {
            (Some(_), _) => None,
            (None, None) => Some(self.down.to_string()),
            (None, Some(e)) => Some(format!("{}; reconnect failed: {e}", self.down)),
        };
        LinkStatus {
            connected: self.is_up(),
            connects: self.connects,
            last_error: self.last_error.clone(),
            connected_for: self.up_since.map(|t| now.saturating_duration_since(t)),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn state() -> LinkState {
        LinkState::new(200 * MS, 5000 * MS)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(200 * MS, 5000 * MS);
        let waits: Vec<u64> = (0..7).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_wait(), 200 * MS);
        // A cap below the minimum is the minimum.
        let mut flat = Backoff::new(300 * MS, 100 * MS);
        assert_eq!((flat.next_wait(), flat.next_wait()), (300 * MS, 300 * MS));
        // Huge values saturate instead of overflowing.
        let mut big = Backoff::new(Duration::MAX / 2 + Duration::from_secs(1), Duration::MAX);
        big.next_wait();
        assert_eq!(big.next_wait(), Duration::MAX);
    }

    #[test]
    fn starts_connecting_then_up() {
        let t0 = Instant::now();
        let mut s = state();
        assert_eq!(s.status(t0).reason.as_deref(), Some("connecting to ARI"));
        assert!(!s.status(t0).connected);
        let g = s.attempt();
        assert!(s.connected(g, t0));
        let st = s.status(t0 + 3 * MS);
        assert_eq!(
            st,
            LinkStatus { connected: true, connects: 1, last_error: None, connected_for: Some(3 * MS), reason: None }
        );
    }

    #[test]
    fn first_connect_failures_say_connect_error_and_back_off() {
        let t0 = Instant::now();
        let mut s = state();
        let g1 = s.attempt();
        assert_eq!(s.connect_failed(g1, "Connection refused".into()), Some(200 * MS));
        assert_eq!(s.status(t0).reason.as_deref(), Some("connect error: Connection refused"));
        let g2 = s.attempt();
        assert_eq!(s.connect_failed(g2, "timeout".into()), Some(400 * MS));
        assert_eq!(s.status(t0).last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn a_silent_link_keeps_its_cause_while_reconnects_fail() {
        let t0 = Instant::now();
        let mut s = state();
        let g1 = s.attempt();
        s.connected(g1, t0);
        let silent = Down::Silent("ARI link silent: no answer to ping within 5000 ms".into());
        assert_eq!(s.lost(g1, silent, t0 + 60_000 * MS), Some(200 * MS));
        let st = s.status(t0);
        assert!(!st.connected);
        assert_eq!(st.reason.as_deref(), Some("ARI link silent: no answer to ping within 5000 ms"));
        let g2 = s.attempt();
        assert_eq!(s.connect_failed(g2, "Timeout while waiting for response".into()), Some(400 * MS));
        assert_eq!(
            s.status(t0).reason.as_deref(),
            Some(
                "ARI link silent: no answer to ping within 5000 ms; reconnect failed: Timeout while waiting \
                 for response"
            )
        );
        let g3 = s.attempt();
        assert!(s.connected(g3, t0 + 70_000 * MS));
        let st = s.status(t0 + 70_000 * MS);
        assert_eq!((st.connected, st.connects, st.reason), (true, 2, None));
        assert_eq!(st.last_error.as_deref(), Some("Timeout while waiting for response"));
    }

    #[test]
    fn replaced_says_another_client_took_the_app() {
        let t0 = Instant::now();
        let mut s = state();
        let g = s.attempt();
        s.connected(g, t0);
        assert!(s.lost(g, Down::Replaced { app: "rtpvisor".into() }, t0).is_some());
        let reason = s.status(t0).reason.unwrap();
        assert!(reason.starts_with("another client took the Stasis app rtpvisor"), "{reason}");
    }

    #[test]
    fn an_old_connections_late_end_does_not_touch_the_new_one() {
        let t0 = Instant::now();
        let mut s = state();
        let g1 = s.attempt();
        assert!(s.connected(g1, t0));
        assert!(s.lost(g1, Down::Silent("silent".into()), t0 + 20_000 * MS).is_some());
        let g2 = s.attempt();
        assert!(s.connected(g2, t0 + 21_000 * MS));
        // The first connection's stream finally ends (its close, its end of stream, a late
        // event): stale, ignored.
        assert!(!s.is_current(g1));
        assert_eq!(s.lost(g1, Down::Closed("connection closed".into()), t0 + 22_000 * MS), None);
        assert_eq!(s.connect_failed(g1, "late".into()), None);
        assert!(!s.connected(g1, t0 + 22_000 * MS));
        let st = s.status(t0 + 23_000 * MS);
        assert_eq!((st.connected, st.connects, st.reason), (true, 2, None));
        assert_eq!(st.connected_for, Some(2000 * MS));
        assert!(s.is_current(g2));
    }

    #[test]
    fn a_second_end_of_the_same_connection_is_ignored() {
        let t0 = Instant::now();
        let mut s = state();
        let g = s.attempt();
        s.connected(g, t0);
        assert_eq!(s.lost(g, Down::Replaced { app: "a".into() }, t0), Some(200 * MS));
        // Its stream ends after we dropped it, before the next attempt: nothing scheduled twice.
        assert_eq!(s.lost(g, Down::Closed("connection closed".into()), t0), None);
        assert!(s.status(t0).reason.unwrap().starts_with("another client took"));
    }

    #[test]
    fn a_stale_attempt_that_connects_late_is_refused() {
        let t0 = Instant::now();
        let mut s = state();
        let g1 = s.attempt();
        let g2 = s.attempt();
        assert!(!s.connected(g1, t0));
        assert!(s.connected(g2, t0));
        assert_eq!(s.connects(), 1);
    }

    #[test]
    fn flapping_links_back_off_stable_ones_reset() {
        let t0 = Instant::now();
        let mut s = state();
        let mut t = t0;
        let mut waits = Vec::new();
        // Taken over right after each connect: the waits grow.
        for _ in 0..4 {
            let g = s.attempt();
            s.connected(g, t);
            t += 100 * MS;
            waits.push(s.lost(g, Down::Replaced { app: "a".into() }, t).unwrap().as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1600]);
        // A connection that held STABLE_AFTER: its loss starts from the minimum again.
        let g = s.attempt();
        s.connected(g, t);
        assert_eq!(s.lost(g, Down::Closed("x".into()), t + STABLE_AFTER), Some(200 * MS));
    }
}
