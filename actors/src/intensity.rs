//! Restart intensity, OTP style: at most `max` failures within a sliding `window`. Pure: the
//! caller passes the time. Past the limit the supervisor escalates (see ARCHITECTURE.md).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Failures seen within the last `window`.
#[derive(Debug, Clone)]
pub struct Intensity {
    max: u32,
    window: Duration,
    /// Times of the failures still inside the window, oldest first; never longer than max + 1.
    recent: VecDeque<Instant>,
    total: u64,
}

impl Intensity {
    /// `max` is clamped to at least 1: a limit of zero failures would escalate on the first.
    pub fn new(max: u32, window: Duration) -> Self {
        let max = max.max(1);
        Intensity { max, window, recent: VecDeque::with_capacity(max as usize + 1), total: 0 }
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some(&t) = self.recent.front() {
            if now.saturating_duration_since(t) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
    }

    /// Records a failure at `now`; true when the limit is now exceeded (more than `max`
    /// failures within the window).
    pub fn record(&mut self, now: Instant) -> bool {
        self.total += 1;
        self.forget_old(now);
        self.recent.push_back(now);
        while self.recent.len() > self.max as usize + 1 {
            self.recent.pop_front();
        }
        self.recent.len() > self.max as usize
    }

    /// True while more than `max` failures lie within the window ending at `now`.
    pub fn exceeded(&mut self, now: Instant) -> bool {
        self.forget_old(now);
        self.recent.len() > self.max as usize
    }

    /// Failures within the window ending at `now`.
    pub fn recent(&mut self, now: Instant) -> usize {
        self.forget_old(now);
        self.recent.len()
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(10);

    #[test]
    fn up_to_max_failures_within_the_window_are_tolerated() {
        let t0 = Instant::now();
        let mut i = Intensity::new(3, W);
        assert!(!i.record(t0));
        assert!(!i.record(t0 + Duration::from_secs(1)));
        assert!(!i.record(t0 + Duration::from_secs(2)));
        assert!(i.record(t0 + Duration::from_secs(3)), "the 4th within 10 s exceeds 3");
        assert!(i.exceeded(t0 + Duration::from_secs(9)));
        assert_eq!(i.total(), 4);
    }

    #[test]
    fn failures_leave_the_window_exactly_after_it() {
        let t0 = Instant::now();
        let mut i = Intensity::new(1, W);
        i.record(t0);
        assert!(i.record(t0 + Duration::from_secs(5)));
        // At t0 + 10 s the first failure is out: one left, within the limit.
        assert!(i.exceeded(t0 + W - Duration::from_nanos(1)));
        assert!(!i.exceeded(t0 + W));
        assert_eq!(i.recent(t0 + W), 1);
        assert_eq!(i.recent(t0 + Duration::from_secs(15)), 0);
    }

    #[test]
    fn spread_out_failures_never_exceed() {
        let t0 = Instant::now();
        let mut i = Intensity::new(2, W);
        for k in 0..100u64 {
            assert!(!i.record(t0 + Duration::from_secs(6 * k)), "failure {k}");
        }
        assert_eq!(i.total(), 100);
    }

    #[test]
    fn zero_max_is_clamped_to_one_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut i = Intensity::new(0, W);
        assert_eq!(i.max(), 1);
        assert!(!i.record(t0));
        for _ in 0..1000 {
            i.record(t0);
        }
        assert!(i.recent.len() <= 2);
        assert_eq!(i.window(), W);
    }
}
