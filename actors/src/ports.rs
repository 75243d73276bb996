//! The RTP port pool: which UDP port of the configured range each call may use.
//!
//! A call leases one port, binds it, and releases it when the call ends. Two hazards shape the
//! design:
//! - **Stray packets.** After a call ends, Asterisk (or a network path) may still send a few
//!   packets to the old port. A released port therefore sits in *quarantine* for a while before
//!   it is offered again, and free ports are reused in FIFO order (the port free the longest
//!   goes first), so a port is reused as late as possible.
//! - **Ports held by someone else.** Another process may hold a port of our range. We only find
//!   out when the lease holder fails to bind it; it reports that with
//!   [`PortPool::mark_unavailable`], and the port is set aside (*unavailable*) and retried later.
//!
//! Pure state: no sockets, no clocks, no IO. Time comes in as [`Instant`] arguments, so tests
//! drive it with made-up instants. The PortManager actor owns one [`PortPool`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The longest quarantine or unavailable retry a pool honours. Longer settings are clamped to it:
/// a day is far beyond any sensible value, and the bound keeps `now + duration` from ever
/// overflowing `Instant` (which panics) whatever the configuration says.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 60 * 60);

/// The errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A range whose start is above its end.
    #[error("empty port range: start {start} is above end {end}")]
    EmptyRange {
        /// First port asked for.
        start: u16,
        /// Last port asked for.
        end: u16,
    },
    /// A range that could not be parsed or uses port 0; the text says why, for a human.
    #[error("bad port range: {0}")]
    BadRange(String),
    /// No port is free right now; the counts say where the ports are.
    #[error(
        "no free RTP port: {leased} leased, {quarantined} quarantined, {unavailable} unavailable"
    )]
    Exhausted {
        /// Ports currently leased to calls.
        leased: usize,
        /// Released ports still waiting out their quarantine.
        quarantined: usize,
        /// Ports another process held, waiting for their retry time.
        unavailable: usize,
    },
    /// The port is in the range but not leased (a double release, or a stale caller).
    #[error("port {0} is not leased")]
    NotLeased(u16),
    /// The port is outside the pool's range.
    #[error("port {0} is outside the pool's range")]
    OutOfRange(u16),
    /// A particular port was asked for and is leased, quarantined or unavailable.
    #[error("port {0} is not free")]
    NotFree(u16),
}

/// An inclusive range of UDP ports, e.g. `10000-10100` (101 ports).
///
/// The fields are public for reading and for tests; [`PortRange::new`] and [`str::parse`]
/// are the validating constructors (start <= end, no port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// A validated range. Port 0 is rejected because binding it asks the OS for *any* port,
    /// which would defeat the point of a configured range.
    pub fn new(start: u16, end: u16) -> Result<Self, PoolError> {
        if start > end {
            return Err(PoolError::EmptyRange { start, end });
        }
        if start == 0 {
            return Err(PoolError::BadRange(
                "port 0 is not a usable RTP port (binding it picks a random port)".to_owned(),
            ));
        }
        Ok(Self { start, end })
    }

    /// Number of ports in the range. Computed in `usize` so `1-65535` does not overflow; a
    /// range built by hand with start above end has length 0 rather than underflowing.
    pub fn len(&self) -> usize {
        (usize::from(self.end) + 1).saturating_sub(usize::from(self.start))
    }

    /// True only for a hand-built range with start above end; validated ranges are never empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        self.start <= p && p <= self.end
    }
}

impl PortRange {
    /// Parses `"10000-10100"` or a single port `"10000"`, whitespace around the numbers
    /// tolerated; the error is the reason alone, for a caller that names the input itself (the
    /// configuration names the setting and where it was written).
    pub fn parse_reason(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("no port given; expected START-END or a single PORT".to_owned());
        }
        let port = |part: &str, which: &str| -> Result<u16, String> {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("the {which} port is missing"));
            }
            part.parse::<u16>()
                .map_err(|_| format!("{which} port {part:?} is not a port number (1-65535)"))
        };
        let (start, end) = match s.split_once('-') {
            Some((a, b)) => {
                if b.contains('-') {
                    return Err("expected START-END or a single PORT".to_owned());
                }
                (port(a, "start")?, port(b, "end")?)
            }
            None => {
                let p = port(s, "the")?;
                (p, p)
            }
        };
        PortRange::new(start, end).map_err(|e| match e {
            PoolError::EmptyRange { start, end } => format!("start {start} is above end {end}"),
            PoolError::BadRange(why) => why,
            other => other.to_string(),
        })
    }
}

impl FromStr for PortRange {
    type Err = PoolError;

    /// [`PortRange::parse_reason`]; every failure is [`PoolError::BadRange`] with a message
    /// naming the input, because this is what a human typed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PortRange::parse_reason(s).map_err(|why| PoolError::BadRange(format!("{s:?}: {why}")))
    }
}

impl fmt::Display for PortRange {
    /// Always `START-END`, also for a single port, so the output parses back to the same range.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// What one port of the range is doing. Kept per port in a `Vec` indexed by `port - start`, so
/// "is this port leased?" is O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// In the free queue.
    Free,
    /// Leased to a call.
    Leased,
    /// Released; offered again once `until` has come. Also in the quarantine heap.
    Quarantined { until: Instant },
    /// Another process held it; retried once `until` has come. Also in the unavailable heap.
    Unavailable { until: Instant },
}

/// A min-heap of `(due time, port)`: the next port to come back is on top, in O(log n).
type DueHeap = BinaryHeap<Reverse<(Instant, u16)>>;

/// The pool of RTP ports. See the module docs for the life of a port:
/// free -> leased -> quarantined -> free, or leased -> unavailable -> free.
#[derive(Debug, Clone)]
pub struct PortPool {
    /// The configured range; ports are stored relative to `range.start`.
    range: PortRange,
    /// How long a released port waits before it is offered again (clamped to [`MAX_HOLD`]).
    quarantine: Duration,
    /// How long a port someone else held waits before we try it again (clamped).
    unavailable_retry: Duration,
    /// State of each port, indexed by `port - range.start`: the source of truth for
    /// `is_leased` and for rejecting a double release.
    slots: Vec<Slot>,
    /// Free ports, longest-free first: FIFO reuse keeps a port idle as long as possible.
    free: VecDeque<u16>,
    /// Quarantined ports by due time. Entries are never stale: a quarantined port can leave
    /// quarantine only by being promoted from this heap.
    quarantined: DueHeap,
    /// Unavailable ports by retry time; never stale for the same reason.
    unavailable: DueHeap,
    /// Number of `Slot::Leased`, kept so the counts are O(1).
    leased: usize,
    /// Successful leases since start.
    leases_total: u64,
    /// Successful releases since start.
    releases_total: u64,
    /// Lease attempts that found no free port.
    exhausted_total: u64,
    /// Leased ports reported unbindable (held by another process).
    skipped_total: u64,
}

/// A point-in-time view of the pool, for the HTTP API and metrics. Port lists are ascending.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolSnapshot {
    /// The configured range.
    pub range: PortRange,
    /// Ports in the range; always `leased + free + quarantined + unavailable`.
    pub size: usize,
    /// Ports leased to calls.
    pub leased: usize,
    /// Ports that a lease at the snapshot's instant could hand out.
    pub free: usize,
    /// Released ports still in quarantine at the snapshot's instant.
    pub quarantined: usize,
    /// Ports held by another process, not yet due for a retry.
    pub unavailable: usize,
    /// The leased ports.
    pub leased_ports: Vec<u16>,
    /// The quarantined ports.
    pub quarantined_ports: Vec<u16>,
    /// The unavailable ports.
    pub unavailable_ports: Vec<u16>,
    /// Successful leases since start.
    pub leases_total: u64,
    /// Successful releases since start.
    pub releases_total: u64,
    /// Lease attempts that found no free port.
    pub exhausted_total: u64,
    /// Leased ports reported unbindable (held by another process).
    pub skipped_total: u64,
}

impl PortPool {
    /// A pool with every port of `range` free, lowest first. `quarantine` and
    /// `unavailable_retry` are clamped to [`MAX_HOLD`].
    pub fn new(range: PortRange, quarantine: Duration, unavailable_retry: Duration) -> Self {
        // Iterating the range (not `start..=end` arithmetic on len) keeps a hand-built empty
        // range empty instead of panicking.
        let free: VecDeque<u16> = (range.start..=range.end).collect();
        Self {
            range,
            quarantine: quarantine.min(MAX_HOLD),
            unavailable_retry: unavailable_retry.min(MAX_HOLD),
            slots: vec![Slot::Free; free.len()],
            free,
            quarantined: BinaryHeap::new(),
            unavailable: BinaryHeap::new(),
            leased: 0,
            leases_total: 0,
            releases_total: 0,
            exhausted_total: 0,
            skipped_total: 0,
        }
    }

    /// Leases the port that has been free the longest (FIFO), after moving quarantined ports
    /// whose time has come (and unavailable ports whose retry time has come) back to free.
    /// `Err(PoolError::Exhausted { .. })` when none is free; that attempt is counted.
    pub fn lease(&mut self, now: Instant) -> Result<u16, PoolError> {
        self.promote(now);
        let Some(port) = self.free.pop_front() else {
            self.exhausted_total += 1;
            return Err(PoolError::Exhausted {
                leased: self.leased,
                quarantined: self.quarantined.len(),
                unavailable: self.unavailable.len(),
            });
        };
        let idx = self.index(port);
        debug_assert_eq!(self.slots[idx], Slot::Free);
        self.slots[idx] = Slot::Leased;
        self.leased += 1;
        self.leases_total += 1;
        Ok(port)
    }

    /// Leases exactly `port` (a call taken over from Asterisk keeps the port its externalMedia
    /// channel sends to), after the same promotion as [`PortPool::lease`]. `Err(NotFree)` when
    /// it is leased, quarantined or unavailable; `Err(OutOfRange)` outside the range. O(size)
    /// for the free queue's removal: adoptions are rare.
    pub fn lease_exact(&mut self, port: u16, now: Instant) -> Result<u16, PoolError> {
        if !self.range.contains(port) {
            return Err(PoolError::OutOfRange(port));
        }
        self.promote(now);
        let idx = self.index(port);
        if self.slots[idx] != Slot::Free {
            return Err(PoolError::NotFree(port));
        }
        let pos = self.free.iter().position(|&p| p == port).expect("a free slot is in the free queue");
        self.free.remove(pos);
        self.slots[idx] = Slot::Leased;
        self.leased += 1;
        self.leases_total += 1;
        Ok(port)
    }

    /// The lease ended: the port goes into quarantine until `now + quarantine` (a zero
    /// quarantine frees it at once). `Err(NotLeased)` if it was not leased, so a double release
    /// can never put a port in the free queue twice; `Err(OutOfRange)` for a foreign port.
    pub fn release(&mut self, port: u16, now: Instant) -> Result<(), PoolError> {
        let idx = self.leased_index(port)?;
        // Promote first so ports that became free earlier queue ahead of this one.
        self.promote(now);
        self.leased -= 1;
        self.releases_total += 1;
        if self.quarantine.is_zero() {
            self.slots[idx] = Slot::Free;
            self.free.push_back(port);
        } else {
            // Cannot overflow: the quarantine is clamped to MAX_HOLD.
            let until = now + self.quarantine;
            self.slots[idx] = Slot::Quarantined { until };
            self.quarantined.push(Reverse((until, port)));
        }
        Ok(())
    }

    /// The holder of this lease could not bind it (another process holds it): it is neither
    /// leased nor free, and is offered again after `unavailable_retry`. Counted in
    /// `skipped_total`. Same errors as [`PortPool::release`].
    pub fn mark_unavailable(&mut self, port: u16, now: Instant) -> Result<(), PoolError> {
        let idx = self.leased_index(port)?;
        self.leased -= 1;
        self.skipped_total += 1;
        // Even a zero retry goes through the heap: it then comes back at the next lease, behind
        // the ports already free, so the caller's immediate retry gets a different port.
        let until = now + self.unavailable_retry; // clamped: cannot overflow
        self.slots[idx] = Slot::Unavailable { until };
        self.unavailable.push(Reverse((until, port)));
        Ok(())
    }

    /// The configured range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Whether `port` is leased right now (false for ports outside the range).
    pub fn is_leased(&self, port: u16) -> bool {
        self.range.contains(port) && self.slots[self.index(port)] == Slot::Leased
    }

    /// The pool as seen at `now`: ports whose quarantine or retry time has come count as free,
    /// exactly as the next [`PortPool::lease`] would see them. O(size).
    pub fn snapshot(&self, now: Instant) -> PoolSnapshot {
        let mut leased_ports = Vec::new();
        let mut quarantined_ports = Vec::new();
        let mut unavailable_ports = Vec::new();
        let mut free = 0;
        for (port, slot) in (self.range.start..=self.range.end).zip(&self.slots) {
            match *slot {
                Slot::Leased => leased_ports.push(port),
                Slot::Quarantined { until } if until > now => quarantined_ports.push(port),
                Slot::Unavailable { until } if until > now => unavailable_ports.push(port),
                Slot::Free | Slot::Quarantined { .. } | Slot::Unavailable { .. } => free += 1,
            }
        }
        PoolSnapshot {
            range: self.range,
            size: self.slots.len(),
            leased: leased_ports.len(),
            free,
            quarantined: quarantined_ports.len(),
            unavailable: unavailable_ports.len(),
            leased_ports,
            quarantined_ports,
            unavailable_ports,
            leases_total: self.leases_total,
            releases_total: self.releases_total,
            exhausted_total: self.exhausted_total,
            skipped_total: self.skipped_total,
        }
    }

    /// Index of an in-range port in `slots`.
    fn index(&self, port: u16) -> usize {
        usize::from(port - self.range.start)
    }

    /// Index of `port` if it is leased; the shared precondition of release and
    /// mark_unavailable.
    fn leased_index(&self, port: u16) -> Result<usize, PoolError> {
        if !self.range.contains(port) {
            return Err(PoolError::OutOfRange(port));
        }
        let idx = self.index(port);
        if self.slots[idx] != Slot::Leased {
            return Err(PoolError::NotLeased(port));
        }
        Ok(idx)
    }

    /// Moves every quarantined or unavailable port that is due at `now` to the back of the
    /// free queue, earliest due first (across both heaps), so the queue stays ordered by the
    /// time each port became free.
    fn promote(&mut self, now: Instant) {
        loop {
            let q = self
                .quarantined
                .peek()
                .map(|r| r.0)
                .filter(|(t, _)| *t <= now);
            let u = self
                .unavailable
                .peek()
                .map(|r| r.0)
                .filter(|(t, _)| *t <= now);
            let port = match (q, u) {
                (None, None) => return,
                (Some(q), Some(u)) if u < q => self.pop_unavailable(),
                (Some(_), _) => self.pop_quarantined(),
                (None, Some(_)) => self.pop_unavailable(),
            };
            let idx = self.index(port);
            self.slots[idx] = Slot::Free;
            self.free.push_back(port);
        }
    }

    /// Pops the top of the quarantine heap (caller has seen it is there).
    fn pop_quarantined(&mut self) -> u16 {
        let Reverse((_, port)) = self.quarantined.pop().expect("peeked");
        debug_assert!(matches!(
            self.slots[self.index(port)],
            Slot::Quarantined { .. }
        ));
        port
    }

    /// Pops the top of the unavailable heap (caller has seen it is there).
    fn pop_unavailable(&mut self) -> u16 {
        let Reverse((_, port)) = self.unavailable.pop().expect("peeked");
        debug_assert!(matches!(
            self.slots[self.index(port)],
            Slot::Unavailable { .. }
        ));
        port
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const NS: Duration = Duration::from_nanos(1);
    const Q: Duration = Duration::from_secs(2);
    const RETRY: Duration = Duration::from_secs(30);

    fn range(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    /// Asserts the counting invariant and that the snapshot agrees with `is_leased`.
    fn check(pool: &PortPool, now: Instant) -> PoolSnapshot {
        let s = pool.snapshot(now);
        assert_eq!(s.leased + s.free + s.quarantined + s.unavailable, s.size);
        assert_eq!(s.leased, s.leased_ports.len());
        assert_eq!(s.quarantined, s.quarantined_ports.len());
        assert_eq!(s.unavailable, s.unavailable_ports.len());
        assert!(s.leased_ports.iter().all(|p| pool.is_leased(*p)));
        s
    }

    // ---- PortRange ----

    #[test]
    fn range_new_validates() {
        assert_eq!(range(10000, 10100).len(), 101);
        assert_eq!(range(5, 5).len(), 1);
        assert_eq!(range(1, 65535).len(), 65535);
        assert!(!range(5, 5).is_empty());
        assert_eq!(
            PortRange::new(10, 9),
            Err(PoolError::EmptyRange { start: 10, end: 9 })
        );
        assert!(matches!(PortRange::new(0, 10), Err(PoolError::BadRange(_))));
        assert!(matches!(PortRange::new(0, 0), Err(PoolError::BadRange(_))));
    }

    #[test]
    fn hand_built_inverted_range_is_empty_not_a_panic() {
        let r = PortRange { start: 10, end: 9 };
        assert_eq!(r.len(), 0);
        assert!(r.is_empty());
        let mut pool = PortPool::new(r, Q, RETRY);
        let now = Instant::now();
        assert!(matches!(pool.lease(now), Err(PoolError::Exhausted { .. })));
        assert_eq!(check(&pool, now).size, 0);
    }

    #[test]
    fn range_contains_is_inclusive() {
        let r = range(10000, 10100);
        assert!(!r.contains(9999));
        assert!(r.contains(10000));
        assert!(r.contains(10100));
        assert!(!r.contains(10101));
    }

    #[test]
    fn range_parses_and_displays() {
        assert_eq!("10000-10100".parse(), Ok(range(10000, 10100)));
        assert_eq!("  10000 - 10100\n".parse(), Ok(range(10000, 10100)));
        assert_eq!("10000".parse(), Ok(range(10000, 10000)));
        assert_eq!(" 7 ".parse(), Ok(range(7, 7)));
        assert_eq!("1-65535".parse(), Ok(range(1, 65535)));
        assert_eq!(range(10000, 10100).to_string(), "10000-10100");
        assert_eq!(range(7, 7).to_string(), "7-7");
        for r in [range(10000, 10100), range(7, 7), range(1, 65535)] {
            assert_eq!(r.to_string().parse(), Ok(r));
        }
    }

    #[test]
    fn range_parse_errors_are_bad_range_with_a_message() {
        let cases = [
            ("", "no port given"),
            ("   ", "no port given"),
            ("-10100", "start port is missing"),
            ("10000-", "end port is missing"),
            ("abc", "not a port number"),
            ("10000-x", "not a port number"),
            ("70000", "not a port number"),
            ("-5", "start port is missing"),
            ("1-2-3", "START-END"),
            ("10100-10000", "above end"),
            ("0-10", "port 0"),
            ("0", "port 0"),
        ];
        for (input, needle) in cases {
            match input.parse::<PortRange>() {
                Err(PoolError::BadRange(msg)) => {
                    assert!(msg.contains(needle), "{input:?}: {msg}");
                    assert!(msg.contains(&format!("{input:?}")), "{input:?}: {msg}");
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn error_messages_read_well() {
        let e = PoolError::Exhausted {
            leased: 1,
            quarantined: 2,
            unavailable: 3,
        };
        assert_eq!(
            e.to_string(),
            "no free RTP port: 1 leased, 2 quarantined, 3 unavailable"
        );
        assert_eq!(PoolError::NotLeased(5).to_string(), "port 5 is not leased");
        assert_eq!(
            PoolError::OutOfRange(5).to_string(),
            "port 5 is outside the pool's range"
        );
        assert_eq!(
            PoolError::EmptyRange { start: 2, end: 1 }.to_string(),
            "empty port range: start 2 is above end 1"
        );
    }

    #[test]
    fn serializes_for_the_api() {
        let pool = PortPool::new(range(10, 11), Q, RETRY);
        let json = serde_json::to_value(pool.snapshot(Instant::now())).unwrap();
        assert_eq!(json["range"], serde_json::json!({"start": 10, "end": 11}));
        assert_eq!(json["free"], 2);
        assert_eq!(json["leased_ports"], serde_json::json!([]));
    }

    // ---- PortPool ----

    #[test]
    fn default_range_leases_101_then_exhausted() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(10000, 10100), Q, RETRY);
        for expected in 10000..=10100 {
            assert_eq!(pool.lease(t0), Ok(expected));
        }
        assert_eq!(
            pool.lease(t0),
            Err(PoolError::Exhausted {
                leased: 101,
                quarantined: 0,
                unavailable: 0
            })
        );
        let s = check(&pool, t0);
        assert_eq!(
            (s.leased, s.free, s.leases_total, s.exhausted_total),
            (101, 0, 101, 1)
        );
    }

    #[test]
    fn exhaustion_is_counted_and_reports_where_ports_are() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 3), Q, RETRY);
        let (a, b, c) = (
            pool.lease(t0).unwrap(),
            pool.lease(t0).unwrap(),
            pool.lease(t0).unwrap(),
        );
        pool.release(a, t0).unwrap();
        pool.mark_unavailable(b, t0).unwrap();
        assert!(pool.is_leased(c));
        for n in 1..=3 {
            assert_eq!(
                pool.lease(t0),
                Err(PoolError::Exhausted {
                    leased: 1,
                    quarantined: 1,
                    unavailable: 1
                })
            );
            assert_eq!(pool.snapshot(t0).exhausted_total, n);
        }
    }

    #[test]
    fn quarantine_is_honoured_to_the_nanosecond() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(5000, 5000), Q, RETRY);
        let p = pool.lease(t0).unwrap();
        let t1 = t0 + Duration::from_millis(500);
        pool.release(p, t1).unwrap();
        assert!(!pool.is_leased(p));

        let almost = t1 + Q - NS;
        let s = check(&pool, almost);
        assert_eq!((s.quarantined, s.free), (1, 0));
        assert_eq!(s.quarantined_ports, vec![5000]);
        assert_eq!(
            pool.lease(almost),
            Err(PoolError::Exhausted {
                leased: 0,
                quarantined: 1,
                unavailable: 0
            })
        );

        // The snapshot at the due instant already counts it free, as lease would.
        let s = check(&pool, t1 + Q);
        assert_eq!((s.quarantined, s.free), (0, 1));
        assert_eq!(pool.lease(t1 + Q), Ok(5000));
    }

    #[test]
    fn zero_quarantine_frees_at_once() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(5000, 5000), Duration::ZERO, RETRY);
        let p = pool.lease(t0).unwrap();
        pool.release(p, t0).unwrap();
        let s = check(&pool, t0);
        assert_eq!((s.free, s.quarantined, s.releases_total), (1, 0, 1));
        assert_eq!(pool.lease(t0), Ok(p));
    }

    #[test]
    fn free_ports_are_reused_fifo() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 3), Duration::ZERO, RETRY);
        let all: Vec<u16> = (0..3).map(|_| pool.lease(t0).unwrap()).collect();
        assert_eq!(all, vec![1, 2, 3]);
        for p in [2, 3, 1] {
            pool.release(p, t0).unwrap();
        }
        let again: Vec<u16> = (0..3).map(|_| pool.lease(t0).unwrap()).collect();
        assert_eq!(again, vec![2, 3, 1]);
    }

    #[test]
    fn never_used_ports_go_before_released_ones() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 3), Duration::ZERO, RETRY);
        assert_eq!(pool.lease(t0), Ok(1));
        pool.release(1, t0).unwrap();
        assert_eq!(pool.lease(t0), Ok(2));
        assert_eq!(pool.lease(t0), Ok(3));
        assert_eq!(pool.lease(t0), Ok(1));
    }

    #[test]
    fn quarantined_ports_return_in_due_order() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 4), Q, RETRY);
        for _ in 0..4 {
            pool.lease(t0).unwrap();
        }
        // Released in the order 3, 1, 4, 2, a millisecond apart.
        for (i, p) in [3, 1, 4, 2].into_iter().enumerate() {
            pool.release(p, t0 + Duration::from_millis(i as u64))
                .unwrap();
        }
        let later = t0 + Q + Duration::from_secs(1);
        let order: Vec<u16> = (0..4).map(|_| pool.lease(later).unwrap()).collect();
        assert_eq!(order, vec![3, 1, 4, 2]);
    }

    #[test]
    fn promotion_merges_quarantine_and_unavailable_by_due_time() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 4), Duration::from_secs(10), Duration::from_secs(5));
        for _ in 0..4 {
            pool.lease(t0).unwrap();
        }
        pool.release(1, t0).unwrap(); // due t0+10
        pool.mark_unavailable(2, t0).unwrap(); // due t0+5
        pool.release(3, t0 + Duration::from_secs(1)).unwrap(); // due t0+11
        pool.mark_unavailable(4, t0 + Duration::from_secs(7))
            .unwrap(); // due t0+12
        let later = t0 + Duration::from_secs(60);
        let order: Vec<u16> = (0..4).map(|_| pool.lease(later).unwrap()).collect();
        assert_eq!(order, vec![2, 1, 3, 4]);
    }

    #[test]
    fn release_promotes_due_ports_first_so_order_stays_by_free_time() {
        // Zero quarantine: a release pushes straight onto the free queue. Port 1 became free
        // (retry due t0+1) before port 2 was released (t0+5), so port 1 must queue ahead.
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 2), Duration::ZERO, Duration::from_secs(1));
        pool.lease(t0).unwrap();
        pool.lease(t0).unwrap();
        pool.mark_unavailable(1, t0).unwrap();
        let t5 = t0 + Duration::from_secs(5);
        pool.release(2, t5).unwrap();
        let s = check(&pool, t5);
        assert_eq!((s.free, s.quarantined, s.unavailable), (2, 0, 0));
        assert_eq!(pool.lease(t5), Ok(1));
        assert_eq!(pool.lease(t5), Ok(2));
    }

    #[test]
    fn unavailable_port_is_skipped_then_retried() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(20000, 20002), Q, RETRY);
        let first = pool.lease(t0).unwrap();
        assert_eq!(first, 20000);
        // The caller could not bind it: another process holds 20000.
        pool.mark_unavailable(first, t0).unwrap();
        assert!(!pool.is_leased(first));
        assert_eq!(pool.lease(t0), Ok(20001));
        assert_eq!(pool.lease(t0), Ok(20002));
        assert_eq!(
            pool.lease(t0),
            Err(PoolError::Exhausted {
                leased: 2,
                quarantined: 0,
                unavailable: 1
            })
        );
        let s = check(&pool, t0);
        assert_eq!(s.unavailable_ports, vec![20000]);
        assert_eq!(
            (s.skipped_total, s.leases_total, s.releases_total),
            (1, 3, 0)
        );

        assert!(pool.lease(t0 + RETRY - NS).is_err());
        assert_eq!(check(&pool, t0 + RETRY).unavailable, 0);
        assert_eq!(pool.lease(t0 + RETRY), Ok(20000));
    }

    #[test]
    fn zero_retry_offers_other_free_ports_first() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 2), Q, Duration::ZERO);
        assert_eq!(pool.lease(t0), Ok(1));
        pool.mark_unavailable(1, t0).unwrap();
        assert_eq!(check(&pool, t0).free, 2);
        assert_eq!(pool.lease(t0), Ok(2));
        assert_eq!(pool.lease(t0), Ok(1));
    }

    #[test]
    fn release_and_mark_reject_ports_not_leased() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(100, 102), Q, RETRY);
        // Free, never leased.
        assert_eq!(pool.release(100, t0), Err(PoolError::NotLeased(100)));
        assert_eq!(
            pool.mark_unavailable(100, t0),
            Err(PoolError::NotLeased(100))
        );
        // Out of range on both sides.
        assert_eq!(pool.release(99, t0), Err(PoolError::OutOfRange(99)));
        assert_eq!(pool.release(103, t0), Err(PoolError::OutOfRange(103)));
        assert_eq!(pool.mark_unavailable(0, t0), Err(PoolError::OutOfRange(0)));
        // Double release: the second is refused and changes nothing.
        let p = pool.lease(t0).unwrap();
        pool.release(p, t0).unwrap();
        let before = pool.snapshot(t0);
        assert_eq!(pool.release(p, t0), Err(PoolError::NotLeased(p)));
        assert_eq!(pool.mark_unavailable(p, t0), Err(PoolError::NotLeased(p)));
        assert_eq!(pool.snapshot(t0), before);
        assert_eq!(before.releases_total, 1);
        // Unavailable ports are not leased either.
        let u = pool.lease(t0).unwrap();
        pool.mark_unavailable(u, t0).unwrap();
        assert_eq!(pool.release(u, t0), Err(PoolError::NotLeased(u)));
        assert_eq!(pool.mark_unavailable(u, t0), Err(PoolError::NotLeased(u)));
        assert_eq!(pool.snapshot(t0).skipped_total, 1);
    }

    #[test]
    fn is_leased_outside_range_is_false() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(100, 100), Q, RETRY);
        assert!(!pool.is_leased(100));
        pool.lease(t0).unwrap();
        assert!(pool.is_leased(100));
        assert!(!pool.is_leased(99));
        assert!(!pool.is_leased(101));
        assert!(!pool.is_leased(0));
        assert!(!pool.is_leased(u16::MAX));
    }

    #[test]
    fn durations_are_clamped_to_max_hold() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 2), Duration::MAX, Duration::MAX);
        pool.lease(t0).unwrap();
        pool.lease(t0).unwrap();
        pool.release(1, t0).unwrap(); // would panic on overflow without the clamp
        pool.mark_unavailable(2, t0).unwrap();
        assert!(pool.lease(t0 + MAX_HOLD - NS).is_err());
        assert_eq!(pool.lease(t0 + MAX_HOLD), Ok(1));
        assert_eq!(pool.lease(t0 + MAX_HOLD), Ok(2));
    }

    #[test]
    fn full_u16_range_is_fine() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(range(1, 65535), Duration::ZERO, RETRY);
        for expected in 1..=65535u16 {
            assert_eq!(pool.lease(t0), Ok(expected));
        }
        assert!(pool.lease(t0).is_err());
        assert!(pool.is_leased(65535));
        pool.release(65535, t0).unwrap();
        assert_eq!(pool.lease(t0), Ok(65535));
        let s = check(&pool, t0);
        assert_eq!((s.size, s.leased), (65535, 65535));
    }

    /// xorshift64: deterministic, so a failing sequence replays exactly.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_operations_keep_invariants() {
        let q = Duration::from_millis(40);
        let retry = Duration::from_millis(90);
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let t0 = Instant::now();
            let mut now = t0;
            let mut pool = PortPool::new(range(30000, 30015), q, retry);
            // Model: leased ports, and when each non-leased port may be offered again.
            let mut leased: Vec<u16> = Vec::new();
            let mut ready_at: HashMap<u16, Instant> = HashMap::new();
            for _ in 0..2_000 {
                now += Duration::from_millis(rng.below(15) as u64);
                match rng.below(10) {
                    0..=4 => match pool.lease(now) {
                        Ok(p) => {
                            assert!(!leased.contains(&p), "seed {seed}: {p} leased twice");
                            assert!(ready_at.get(&p).is_none_or(|t| *t <= now), "seed {seed}");
                            leased.push(p);
                        }
                        Err(PoolError::Exhausted { leased: n, .. }) => {
                            assert_eq!(n, leased.len());
                            // Nothing was due, or everything due is leased.
                            let due = (30000..=30015)
                                .filter(|p| !leased.contains(p))
                                .filter(|p| ready_at.get(p).is_none_or(|t| *t <= now))
                                .count();
                            assert_eq!(due, 0, "seed {seed}: exhausted with a free port");
                        }
                        Err(e) => panic!("seed {seed}: {e}"),
                    },
                    5..=7 if !leased.is_empty() => {
                        let p = leased.swap_remove(rng.below(leased.len()));
                        pool.release(p, now).unwrap();
                        ready_at.insert(p, now + q);
                    }
                    8 if !leased.is_empty() => {
                        let p = leased.swap_remove(rng.below(leased.len()));
                        pool.mark_unavailable(p, now).unwrap();
                        ready_at.insert(p, now + retry);
                    }
                    _ => {
                        // A stray release of a random port must fail unless it is leased.
                        let p = 29999 + rng.below(18) as u16;
                        if !leased.contains(&p) {
                            assert!(pool.release(p, now).is_err());
                        }
                    }
                }
                let s = check(&pool, now);
                let mut sorted = leased.clone();
                sorted.sort_unstable();
                assert_eq!(s.leased_ports, sorted, "seed {seed}");
            }
        }
    }

    #[test]
    fn lease_exact_takes_that_free_port_only() {
        let t0 = Instant::now();
        let mut pool = PortPool::new("10000-10004".parse().unwrap(), Duration::from_secs(2), Duration::from_secs(10));
        assert_eq!(pool.lease_exact(10003, t0), Ok(10003));
        assert!(pool.is_leased(10003));
        assert_eq!(pool.lease_exact(10003, t0), Err(PoolError::NotFree(10003)), "already leased");
        assert_eq!(pool.lease_exact(9999, t0), Err(PoolError::OutOfRange(9999)));
        // The others still come out in order, never 10003 twice.
        let rest: Vec<u16> = (0..4).map(|_| pool.lease(t0).unwrap()).collect();
        assert_eq!(rest, vec![10000, 10001, 10002, 10004]);
        pool.release(10003, t0).unwrap();
        assert_eq!(pool.lease_exact(10003, t0), Err(PoolError::NotFree(10003)), "quarantined");
        assert_eq!(pool.lease_exact(10003, t0 + Duration::from_secs(2)), Ok(10003), "free again after the quarantine");
        let snap = pool.snapshot(t0 + Duration::from_secs(2));
        assert_eq!((snap.leased, snap.free, snap.leases_total), (5, 0, 6));
    }
}
