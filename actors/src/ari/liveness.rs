//! The liveness rule of the events WebSocket: when to ping, and when a silent link is dead.
//!
//! A WebSocket over a connection whose state a NAT or firewall lost stays "open" on our side
//! for as long as the kernel's TCP timers allow (many minutes): no close, no error, just no
//! events. Only asking tells it apart from a quiet Asterisk. We ping every `ping_interval`;
//! Asterisk answers every ping with a pong (verified on 22.10.1), and any frame at all proves
//! the link alive. When no frame arrives within `ping_timeout` after the first unanswered ping,
//! the link is dead: a silent link is declared dead within `ping_interval + ping_timeout`.
//!
//! No IO and no clock here: every input carries the `Instant` it happened at, so tests feed
//! made-up times (str0m style).

use std::time::{Duration, Instant};

/// The smallest interval or timeout the rule accepts; zero would ping in a busy loop.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// How often to ping and how long to wait for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessSettings {
    /// Time between pings (from one ping to the next, whatever else arrives).
    pub ping_interval: Duration,
    /// How long after a ping some frame (the pong, an event, anything) must arrive.
    pub ping_timeout: Duration,
}

impl Default for LivenessSettings {
    /// 5 s and 5 s: a silent link is declared dead within 10 s.
    fn default() -> Self {
        LivenessSettings { ping_interval: Duration::from_secs(5), ping_timeout: Duration::from_secs(5) }
    }
}

/// What the link needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing to do before [`Liveness::next_deadline`].
    Alive,
    /// Send a ping now (then call [`Liveness::on_ping_sent`]).
    PingDue,
    /// No frame for `ping_timeout` after a ping: drop the connection.
    Dead {
        /// Since the first unanswered ping.
        silent_for: Duration,
    },
}

/// The liveness state of one connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    settings: LivenessSettings,
    /// When the next ping is due: one interval after the last ping (or after the connect).
    next_ping: Instant,
    /// The first ping sent since the last frame arrived; `None` when every ping was answered.
    /// Measured from the first one, not the last, so that a timeout longer than the interval
    /// does not push the verdict back with every new ping.
    unanswered_since: Option<Instant>,
}

impl Liveness {
    /// A connection opened at `now` (the handshake's answer counts as a frame). Interval and
    /// timeout are raised to [`MIN_PERIOD`].
    pub fn new(settings: LivenessSettings, now: Instant) -> Self {
        let settings = LivenessSettings {
            ping_interval: settings.ping_interval.max(MIN_PERIOD),
            ping_timeout: settings.ping_timeout.max(MIN_PERIOD),
        };
        Liveness { settings, next_ping: now + settings.ping_interval, unanswered_since: None }
    }

    pub fn settings(&self) -> LivenessSettings {
        self.settings
    }

    /// Some frame arrived at `now`: the link is alive, every ping so far counts as answered.
    pub fn on_frame(&mut self, _now: Instant) {
        self.unanswered_since = None;
    }

    /// A ping was written at `now`.
    pub fn on_ping_sent(&mut self, now: Instant) {
        self.next_ping = now + self.settings.ping_interval;
        self.unanswered_since.get_or_insert(now);
    }

    /// What to do at `now`. Dead wins over a due ping.
    pub fn check(&self, now: Instant) -> Check {
        if let Some(since) = self.unanswered_since {
            let silent_for = now.saturating_duration_since(since);
            if silent_for >= self.settings.ping_timeout {
                return Check::Dead { silent_for };
            }
        }
        if now >= self.next_ping {
            Check::PingDue
        } else {
            Check::Alive
        }
    }

    /// When [`Liveness::check`] next has something to say (a ping due, or the verdict).
    pub fn next_deadline(&self) -> Instant {
        match self.unanswered_since {
            Some(since) => self.next_ping.min(since + self.settings.ping_timeout),
            None => self.next_ping,
        }
    }

    /// The reason given when the link is declared dead.
    pub fn dead_reason(&self) -> String {
        format!("ARI link silent: no answer to ping within {} ms", self.settings.ping_timeout.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn settings(interval_s: u64, timeout_s: u64) -> LivenessSettings {
        LivenessSettings { ping_interval: S * interval_s as u32, ping_timeout: S * timeout_s as u32 }
    }

    #[test]
    fn defaults_are_five_and_five_seconds() {
        let d = LivenessSettings::default();
        assert_eq!((d.ping_interval, d.ping_timeout), (5 * S, 5 * S));
    }

    #[test]
    fn first_ping_one_interval_after_connect() {
        let t0 = Instant::now();
        let l = Liveness::new(settings(5, 5), t0);
        assert_eq!(l.next_deadline(), t0 + 5 * S);
        assert_eq!(l.check(t0), Check::Alive);
        assert_eq!(l.check(t0 + 5 * S - Duration::from_millis(1)), Check::Alive);
        assert_eq!(l.check(t0 + 5 * S), Check::PingDue);
    }

    #[test]
    fn answered_pings_keep_it_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(5, 5), t0);
        for i in 1..=100u32 {
            let ping_at = t0 + 5 * S * i;
            assert_eq!(l.check(ping_at), Check::PingDue, "ping {i}");
            l.on_ping_sent(ping_at);
            assert_eq!(l.next_deadline(), ping_at + 5 * S);
            l.on_frame(ping_at + Duration::from_millis(1)); // the pong
            assert_eq!(l.check(ping_at + 5 * S - Duration::from_millis(1)), Check::Alive);
        }
    }

    #[test]
    fn silent_link_is_dead_timeout_after_the_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(5, 5), t0);
        let ping_at = t0 + 5 * S;
        l.on_ping_sent(ping_at);
        assert_eq!(l.next_deadline(), ping_at + 5 * S);
        assert_eq!(l.check(ping_at + 5 * S - Duration::from_millis(1)), Check::Alive);
        assert_eq!(l.check(ping_at + 5 * S), Check::Dead { silent_for: 5 * S });
        // Within ping_interval + ping_timeout of the last frame (the connect), the default 10 s.
        assert!(ping_at + 5 * S - t0 <= 10 * S);
        assert_eq!(l.dead_reason(), "ARI link silent: no answer to ping within 5000 ms");
    }

    #[test]
    fn any_frame_answers_the_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(5, 5), t0);
        l.on_ping_sent(t0 + 5 * S);
        l.on_frame(t0 + 9 * S); // an event, not the pong
        assert_eq!(l.check(t0 + 10 * S), Check::PingDue);
        assert_eq!(l.next_deadline(), t0 + 10 * S);
    }

    #[test]
    fn frames_do_not_postpone_pings() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(5, 5), t0);
        l.on_frame(t0 + 4 * S);
        assert_eq!(l.check(t0 + 5 * S), Check::PingDue);
    }

    #[test]
    fn timeout_longer_than_interval_counts_from_the_first_unanswered_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(2, 5), t0);
        l.on_ping_sent(t0 + 2 * S);
        assert_eq!(l.check(t0 + 4 * S), Check::PingDue);
        l.on_ping_sent(t0 + 4 * S);
        l.on_ping_sent(t0 + 6 * S);
        // The second and third pings do not move the verdict: 5 s after the first one.
        assert_eq!(l.next_deadline(), t0 + 7 * S);
        assert_eq!(l.check(t0 + 7 * S), Check::Dead { silent_for: 5 * S });
    }

    #[test]
    fn dead_wins_over_a_due_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(settings(5, 5), t0);
        l.on_ping_sent(t0 + 5 * S);
        // Woken late (a busy thread): both a ping and the verdict are due.
        assert_eq!(l.check(t0 + 30 * S), Check::Dead { silent_for: 25 * S });
    }

    #[test]
    fn zero_settings_are_raised_to_the_minimum() {
        let t0 = Instant::now();
        let l = Liveness::new(settings(0, 0), t0);
        assert_eq!(l.settings(), LivenessSettings { ping_interval: MIN_PERIOD, ping_timeout: MIN_PERIOD });
        assert_eq!(l.next_deadline(), t0 + MIN_PERIOD);
        assert_eq!(l.dead_reason(), "ARI link silent: no answer to ping within 1 ms");
    }

    #[test]
    fn time_going_nowhere_is_harmless() {
        // A check at an instant before the ping (reordered inputs) is not dead.
        let t0 = Instant::now() + 60 * S;
        let mut l = Liveness::new(settings(5, 5), t0);
        l.on_ping_sent(t0 + 5 * S);
        assert_eq!(l.check(t0 + S), Check::Alive);
    }
}
