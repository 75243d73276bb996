//! Receive statistics of one RTP stream.
//!
//! Owns extended sequence numbers and timestamps (wraparound), loss, duplicates, reordering,
//! RFC 3550 A.8 interarrival jitter, and each packet's delay against the stream's own schedule
//! (which marks it late). No IO here: arrival times come in as `Instant` arguments, so tests feed
//! made-up times. [`ReceiveStats::update`] runs once per packet and never allocates: the
//! duplicate window is a fixed bitmap inside the struct.

use std::time::{Duration, Instant};

/// RFC 3550 A.1: a forward jump of this many sequence numbers or more is not taken as loss but
/// as a possible restart of the stream (put on probation, see [`ReceiveStats`]).
pub const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet this many or more sequence numbers behind the highest is not taken as
/// reordered but as a possible restart of the stream.
pub const MAX_MISORDER: u16 = 100;
/// How many of the most recent extended sequence numbers the duplicate bitmap remembers.
pub const DUP_WINDOW: u64 = 2048;

const SEQ_MOD: u64 = 1 << 16;
const TS_MOD: u64 = 1 << 32;
const WINDOW_WORDS: usize = (DUP_WINDOW / 64) as usize;
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Extended (64-bit, unwrapped) sequence number.
///
/// Only differences between extended numbers of one [`SeqExtender`] carry meaning; the low 16
/// bits are the sequence number on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeqNo(pub u64);

impl SeqNo {
    /// The 16-bit sequence number as it was on the wire.
    pub fn wire(self) -> u16 {
        self.0 as u16
    }
}

/// Unwraps 16-bit RTP sequence numbers into [`SeqNo`] (RFC 3550 A.1's `cycles`, both ways).
///
/// Each number is placed in whichever cycle puts it nearest (within 32768) to the highest
/// number seen so far, so 65535 -> 0 moves into the next cycle and a late 65535 arriving after
/// 0 stays in the previous one. The first number is placed in cycle 1, not 0, so that such a
/// late packet from before the very first wrap still gets a lower number instead of underflowing.
#[derive(Debug, Clone, Default)]
pub struct SeqExtender {
    /// Highest extended number so far; `None` before the first packet.
    highest: Option<u64>,
}

impl SeqExtender {
    /// An extender that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`extend`](Self::extend) would return, without remembering `seq`.
    pub fn peek(&self, seq: u16) -> SeqNo {
        match self.highest {
            None => SeqNo(SEQ_MOD + u64::from(seq)),
            Some(h) => {
                // Reinterpreting the wrapped difference as i16 picks the nearest cycle.
                let delta = seq.wrapping_sub(h as u16) as i16;
                SeqNo(h.saturating_add_signed(i64::from(delta)))
            }
        }
    }

    /// Extends `seq` and raises the highest number seen if it is above.
    pub fn extend(&mut self, seq: u16) -> SeqNo {
        let ext = self.peek(seq);
        if self.highest.is_none_or(|h| ext.0 > h) {
            self.highest = Some(ext.0);
        }
        ext
    }

    /// Highest extended number seen, `None` before the first.
    pub fn highest(&self) -> Option<SeqNo> {
        self.highest.map(SeqNo)
    }
}

/// Unwraps 32-bit RTP timestamps to 64 bits, the same way [`SeqExtender`] does sequence
/// numbers: nearest (within 2^31) to the highest seen, first value in cycle 1.
#[derive(Debug, Clone, Default)]
pub struct TimestampExtender {
    /// Highest extended timestamp so far; `None` before the first packet.
    highest: Option<u64>,
}

impl TimestampExtender {
    /// An extender that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What [`extend`](Self::extend) would return, without remembering `ts`.
    pub fn peek(&self, ts: u32) -> u64 {
        match self.highest {
            None => TS_MOD + u64::from(ts),
            Some(h) => {
                let delta = ts.wrapping_sub(h as u32) as i32;
                h.saturating_add_signed(i64::from(delta))
            }
        }
    }

    /// Extends `ts` and raises the highest timestamp seen if it is above.
    pub fn extend(&mut self, ts: u32) -> u64 {
        let ext = self.peek(ts);
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        ext
    }
}

/// What one arriving packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrivalKind {
    /// Above every sequence number seen so far (gaps allowed: the missing ones count as lost).
    InOrder,
    /// Below the highest sequence number seen, and not seen before (or too old to tell).
    Reordered,
    /// Seen before, within the last [`DUP_WINDOW`] sequence numbers.
    Duplicate,
}

/// What [`ReceiveStats::update`] found about one packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// In order, reordered or duplicate.
    pub kind: ArrivalKind,
    /// Delay against the stream's schedule, relative to the fastest packet so far (>= 0).
    pub delay: Duration,
    /// `delay` is above the stream's late threshold.
    pub late: bool,
}

/// Counters of one stream, for the API and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ReceiveSnapshot {
    /// Every packet, duplicates included.
    pub received: u64,
    /// Highest extended sequence number - first + 1 (0 before any packet), summed over restarts.
    pub expected: u64,
    /// `expected` - unique packets received, saturating at 0.
    pub lost: u64,
    /// Packets seen before.
    pub duplicates: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets whose delay against the schedule was above the late threshold.
    pub late: u64,
    /// RFC 3550 A.8 interarrival jitter, converted to milliseconds.
    pub jitter_ms: f64,
    /// Largest delay against the schedule seen.
    pub max_delay_ms: f64,
}

/// One run of a stream between restarts: what loss and delay are measured against.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Lowest extended sequence number of the segment: the first packet's, lowered when an
    /// earlier one arrives later, so a reordered first packet does not count its predecessor
    /// as lost.
    base: u64,
    /// Packets of the segment counted once each (not duplicates, not on probation).
    unique: u64,
    /// Arrival of the segment's first packet: the zero of the schedule.
    anchor: Instant,
    /// Extended RTP timestamp of the segment's first packet.
    anchor_ts: u64,
    /// Smallest transit so far; the fastest packet defines "on time".
    min_transit_ns: i128,
    /// Transit of the previous packet that fed the jitter, for A.8's D(i-1, i).
    last_transit_ns: Option<i128>,
}

/// Receive statistics of one RTP stream: loss, duplicates, reordering, jitter, delay.
///
/// Per packet, in arrival order:
///
/// - **Sequence (RFC 3550 A.1).** With `udelta` = sequence - highest (mod 2^16): below
///   [`MAX_DROPOUT`] ahead, or less than [`MAX_MISORDER`] behind, the packet is part of the
///   stream. Anything else is a jump that A.1 treats as a possible restart (e.g. Asterisk
///   renumbering after a re-INVITE): the packet is put on probation: counted as received (and as
///   duplicate/reordered if it lies behind and the bitmap says so), but not as a unique packet,
///   and it feeds neither jitter nor delay, because its timestamp may belong to another stream.
///   When a later packet carries the sequence number right after the last probation packet
///   (A.1's `bad_seq`), the stream has restarted: the current run's expected/unique counts are
///   banked, and a new run starts at the probation packet with fresh extenders and a fresh
///   schedule, so a restart shows as no loss instead of thousands of lost packets. A single
///   stray packet costs nothing but one `received`. As in A.1, two consecutive packets that
///   are both very late (100 or more behind) also look like a restart.
/// - **Duplicates** are found with a bitmap of the last [`DUP_WINDOW`] extended sequence
///   numbers; a packet older than that is counted as reordered.
/// - **Delay against schedule.** `transit = (arrival - first arrival) - (ts - first ts) /
///   clock_rate` in signed nanoseconds; `delay = transit - min(transit so far, this one
///   included)`, so the fastest packet so far has delay 0. `late = delay > late_threshold`.
///   Computed for duplicates too (a copy that arrives late is late).
/// - **Jitter (RFC 3550 A.8)**: `J += (|D| - J) / 16` in timestamp units, with `D` the
///   difference of consecutive transits. Fed by every packet that is not a duplicate, in arrival
///   order (reordered ones included, as A.8 does); duplicates would repeat a timestamp and add
///   a spurious `D`. Unlike A.8's integer code, arrival is not truncated to whole clock ticks.
#[derive(Debug, Clone)]
pub struct ReceiveStats {
    /// Clock of the RTP timestamps (8000 for PCMU), at least 1.
    clock_rate: u32,
    /// Delay above which a packet is late.
    late_threshold: Duration,
    /// Unwraps sequence numbers of the current run; reset on restart.
    seq: SeqExtender,
    /// Unwraps timestamps of the current run; reset on restart.
    ts: TimestampExtender,
    /// The current run; `None` before the first packet.
    seg: Option<Segment>,
    /// Expected packets of earlier runs (before restarts).
    banked_expected: u64,
    /// Unique packets of earlier runs.
    banked_unique: u64,
    /// Sequence number that would confirm a restart: the one after the last probation packet.
    probation: Option<u16>,
    /// Bit `ext % DUP_WINDOW` is set when extended number `ext` (within the window below the
    /// highest) has arrived. Fixed size so `update` never allocates.
    seen: [u64; WINDOW_WORDS],
    received: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    /// A.8 jitter estimate in timestamp units; kept across restarts (it is a smoothed value).
    jitter: f64,
    max_delay: Duration,
}

impl ReceiveStats {
    /// Statistics of a stream whose timestamps tick at `clock_rate` Hz (0 is taken as 1, to
    /// keep the arithmetic defined); packets delayed more than `late_threshold` count as late.
    pub fn new(clock_rate: u32, late_threshold: Duration) -> Self {
        ReceiveStats {
            clock_rate: clock_rate.max(1),
            late_threshold,
            seq: SeqExtender::new(),
            ts: TimestampExtender::new(),
            seg: None,
            banked_expected: 0,
            banked_unique: 0,
            probation: None,
            seen: [0; WINDOW_WORDS],
            received: 0,
            duplicates: 0,
            reordered: 0,
            late: 0,
            jitter: 0.0,
            max_delay: Duration::ZERO,
        }
    }

    /// Account one packet. Allocation-free.
    pub fn update(&mut self, seq: u16, rtp_time: u32, arrival: Instant) -> Arrival {
        self.received += 1;
        let (Some(seg), Some(highest)) = (self.seg, self.seq.highest()) else {
            self.start_run(None, seq, rtp_time, arrival);
            return ON_TIME;
        };

        // A.1's test, in its own terms: udelta in [MAX_DROPOUT, 2^16 - MAX_MISORDER] is a jump.
        let udelta = seq.wrapping_sub(highest.wire());
        if (MAX_DROPOUT..=u16::MAX - MAX_MISORDER + 1).contains(&udelta) {
            return self.jump(seg, highest, seq, rtp_time, arrival);
        }

        let ext = self.seq.extend(seq).0;
        let kind = if ext > highest.0 {
            self.forget_up_to(highest.0, ext);
            ArrivalKind::InOrder
        } else if self.is_seen(ext) {
            ArrivalKind::Duplicate
        } else {
            ArrivalKind::Reordered
        };
        let mut seg = seg;
        match kind {
            ArrivalKind::Duplicate => self.duplicates += 1,
            ArrivalKind::Reordered => self.reordered += 1,
            ArrivalKind::InOrder => {}
        }
        if kind != ArrivalKind::Duplicate {
            self.mark_seen(ext);
            seg.unique += 1;
            seg.base = seg.base.min(ext);
        }

        let ext_ts = self.ts.extend(rtp_time);
        let transit = self.transit_ns(&seg, ext_ts, arrival);
        seg.min_transit_ns = seg.min_transit_ns.min(transit);
        if kind != ArrivalKind::Duplicate {
            if let Some(last) = seg.last_transit_ns {
                // A.8: D(i-1, i) in timestamp units; J += (|D| - J) / 16.
                let d = (transit - last) as f64 * f64::from(self.clock_rate) / 1e9;
                self.jitter += (d.abs() - self.jitter) / 16.0;
            }
            seg.last_transit_ns = Some(transit);
        }
        self.seg = Some(seg);

        let delay_ns = transit - seg.min_transit_ns;
        let delay = Duration::from_nanos(u64::try_from(delay_ns).unwrap_or(u64::MAX));
        let late = delay > self.late_threshold;
        if late {
            self.late += 1;
        }
        self.max_delay = self.max_delay.max(delay);
        Arrival { kind, delay, late }
    }

    /// Counters so far.
    pub fn snapshot(&self) -> ReceiveSnapshot {
        let (run_expected, run_unique) = match (self.seg, self.seq.highest()) {
            (Some(seg), Some(h)) => (h.0 - seg.base + 1, seg.unique),
            _ => (0, 0),
        };
        let expected = self.banked_expected + run_expected;
        let unique = self.banked_unique + run_unique;
        ReceiveSnapshot {
            received: self.received,
            expected,
            lost: expected.saturating_sub(unique),
            duplicates: self.duplicates,
            reordered: self.reordered,
            late: self.late,
            jitter_ms: self.jitter * 1000.0 / f64::from(self.clock_rate),
            max_delay_ms: self.max_delay.as_secs_f64() * 1000.0,
        }
    }

    /// A packet outside A.1's window: confirm a restart, or put it on probation.
    fn jump(
        &mut self,
        seg: Segment,
        highest: SeqNo,
        seq: u16,
        rtp_time: u32,
        arrival: Instant,
    ) -> Arrival {
        if self.probation == Some(seq) {
            // Two sequential packets far from the old stream: it restarted (A.1 `bad_seq`).
            self.banked_expected += highest.0 - seg.base + 1;
            self.banked_unique += seg.unique;
            self.start_run(Some(seq.wrapping_sub(1)), seq, rtp_time, arrival);
            return ON_TIME;
        }
        self.probation = Some(seq.wrapping_add(1));
        let ext = self.seq.peek(seq).0;
        if ext >= highest.0 {
            return ON_TIME;
        }
        let kind = if self.is_seen(ext) {
            self.duplicates += 1;
            ArrivalKind::Duplicate
        } else {
            self.reordered += 1;
            ArrivalKind::Reordered
        };
        Arrival { kind, ..ON_TIME }
    }

    /// Starts a run at this packet, preceded by the probation packet `prev` when restarting.
    fn start_run(&mut self, prev: Option<u16>, seq: u16, rtp_time: u32, arrival: Instant) {
        self.seq = SeqExtender::new();
        self.ts = TimestampExtender::new();
        self.seen = [0; WINDOW_WORDS];
        self.probation = None;
        let mut unique = 0;
        let mut base = None;
        for s in prev.into_iter().chain([seq]) {
            let ext = self.seq.extend(s).0;
            self.mark_seen(ext);
            base.get_or_insert(ext);
            unique += 1;
        }
        self.seg = Some(Segment {
            base: base.unwrap_or_default(),
            unique,
            anchor: arrival,
            anchor_ts: self.ts.extend(rtp_time),
            min_transit_ns: 0,
            last_transit_ns: Some(0),
        });
    }

    /// Transit of a packet relative to the run's first one, in signed nanoseconds.
    fn transit_ns(&self, seg: &Segment, ext_ts: u64, arrival: Instant) -> i128 {
        let since_anchor = match arrival.checked_duration_since(seg.anchor) {
            Some(d) => d.as_nanos() as i128,
            None => -(seg.anchor.duration_since(arrival).as_nanos() as i128),
        };
        let media = (i128::from(ext_ts) - i128::from(seg.anchor_ts)) * NANOS_PER_SEC
            / i128::from(self.clock_rate);
        since_anchor - media
    }

    /// The highest moved from `old` to `new`: the window's slots for old+1..=new now mean new
    /// numbers that have not arrived yet.
    fn forget_up_to(&mut self, old: u64, new: u64) {
        if new - old >= DUP_WINDOW {
            self.seen = [0; WINDOW_WORDS];
            return;
        }
        for ext in old + 1..=new {
            let (word, bit) = slot(ext);
            self.seen[word] &= !bit;
        }
    }

    /// Whether `ext` (at or below the highest) has arrived; false when older than the window.
    fn is_seen(&self, ext: u64) -> bool {
        let highest = self.seq.highest().map_or(0, |h| h.0);
        if highest - ext >= DUP_WINDOW {
            return false;
        }
        let (word, bit) = slot(ext);
        self.seen[word] & bit != 0
    }

    fn mark_seen(&mut self, ext: u64) {
        let (word, bit) = slot(ext);
        self.seen[word] |= bit;
    }
}

/// A packet that is in order, on time: the answer for a run's first packet and for a jump.
const ON_TIME: Arrival = Arrival {
    kind: ArrivalKind::InOrder,
    delay: Duration::ZERO,
    late: false,
};

/// Word and bit of `ext` in the duplicate bitmap.
fn slot(ext: u64) -> (usize, u64) {
    let i = ext % DUP_WINDOW;
    ((i / 64) as usize, 1 << (i % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A PCMU stream starting at `seq0`/`ts0` with 30 ms late threshold.
    struct Stream {
        stats: ReceiveStats,
        t0: Instant,
    }

    impl Stream {
        fn new() -> Self {
            Stream {
                stats: ReceiveStats::new(8000, ms(30)),
                t0: Instant::now(),
            }
        }
        /// Packet `seq` with timestamp `ts`, arriving at t0 + `at_us` microseconds.
        fn at_us(&mut self, seq: u16, ts: u32, at_us: u64) -> Arrival {
            self.stats
                .update(seq, ts, self.t0 + Duration::from_micros(at_us))
        }
        /// Packet `seq` of a perfectly paced 20 ms stream (timestamp and arrival derived).
        fn paced(&mut self, seq: u16) -> Arrival {
            let n = u64::from(seq);
            self.at_us(seq, (n * 160) as u32, n * 20_000)
        }
        fn snap(&self) -> ReceiveSnapshot {
            self.stats.snapshot()
        }
    }

    #[test]
    fn seq_extender_wraps_forward() {
        let mut e = SeqExtender::new();
        let a = e.extend(65534);
        let b = e.extend(65535);
        let c = e.extend(0);
        let d = e.extend(1);
        assert_eq!(b.0 - a.0, 1);
        assert_eq!(c.0 - b.0, 1);
        assert_eq!(d.0 - c.0, 1);
        assert_eq!(c.wire(), 0);
        assert_eq!(e.highest(), Some(d));
    }

    #[test]
    fn seq_extender_late_packet_from_before_the_wrap() {
        let mut e = SeqExtender::new();
        let zero = e.extend(0);
        let late = e.extend(65535);
        assert_eq!(
            zero.0 - late.0,
            1,
            "65535 before 0 belongs to the previous cycle"
        );
        assert_eq!(
            e.highest(),
            Some(zero),
            "a late packet does not move the highest"
        );
        let mut e = SeqExtender::new();
        e.extend(65535);
        let one = e.extend(1);
        let zero = e.extend(0);
        assert_eq!(one.0 - zero.0, 1);
        assert_eq!(e.extend(65535).0 + 2, one.0);
    }

    #[test]
    fn seq_extender_many_cycles() {
        let mut e = SeqExtender::new();
        let first = e.extend(100);
        let mut last = first;
        for i in 1..=300_000u64 {
            last = e.extend((100 + i) as u16);
        }
        assert_eq!(last.0 - first.0, 300_000);
    }

    #[test]
    fn seq_extender_nearest_cycle_limit() {
        let mut e = SeqExtender::new();
        let a = e.extend(0);
        assert_eq!(e.peek(32767).0, a.0 + 32767);
        assert_eq!(e.peek(32768).0, a.0 - 32768, "half-way is read as behind");
        assert_eq!(e.peek(0), a, "peek of the highest is itself");
        assert_eq!(e.highest(), Some(a), "peek changes nothing");
        assert_eq!(SeqExtender::default().highest(), None);
    }

    #[test]
    fn timestamp_extender_wraps_both_ways() {
        let mut e = TimestampExtender::new();
        let a = e.extend(u32::MAX - 159);
        let b = e.extend(0);
        assert_eq!(b - a, 160);
        let late = e.extend(u32::MAX - 319);
        assert_eq!(a - late, 160);
        assert_eq!(e.extend(160) - b, 160);
        let mut e = TimestampExtender::default();
        let zero = e.extend(0);
        assert_eq!(
            zero - e.extend(u32::MAX),
            1,
            "no underflow before the first wrap"
        );
        assert_eq!(e.peek(0x8000_0000), zero - 0x8000_0000);
    }

    #[test]
    fn no_packets_is_all_zero() {
        let s = ReceiveStats::new(8000, ms(30)).snapshot();
        assert_eq!(s, ReceiveSnapshot::default());
    }

    #[test]
    fn in_order_stream_has_no_loss() {
        let mut st = Stream::new();
        for seq in 10..60 {
            let a = st.paced(seq);
            assert_eq!(a.kind, ArrivalKind::InOrder);
            assert_eq!(a.delay, Duration::ZERO);
            assert!(!a.late);
        }
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (50, 50, 0));
        assert_eq!((s.duplicates, s.reordered, s.late), (0, 0, 0));
        assert_eq!(s.jitter_ms, 0.0);
        assert_eq!(s.max_delay_ms, 0.0);
    }

    #[test]
    fn loss_is_expected_minus_unique() {
        let mut st = Stream::new();
        for seq in [1, 2, 5, 6, 10] {
            assert_eq!(st.paced(seq).kind, ArrivalKind::InOrder);
        }
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (5, 10, 5));
    }

    #[test]
    fn reordered_packet_fills_its_gap() {
        let mut st = Stream::new();
        st.paced(1);
        st.paced(3);
        assert_eq!(st.snap().lost, 1);
        let a = st.at_us(2, 320, 61_000);
        assert_eq!(a.kind, ArrivalKind::Reordered);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost, s.reordered), (3, 3, 0, 1));
    }

    #[test]
    fn packet_before_the_first_lowers_the_base() {
        let mut st = Stream::new();
        st.paced(5);
        st.paced(6);
        assert_eq!(st.paced(4).kind, ArrivalKind::Reordered);
        let s = st.snap();
        assert_eq!((s.expected, s.lost, s.reordered), (3, 0, 1));
    }

    #[test]
    fn duplicates_are_counted_not_unique() {
        let mut st = Stream::new();
        st.paced(1);
        st.paced(2);
        assert_eq!(st.paced(2).kind, ArrivalKind::Duplicate);
        assert_eq!(st.paced(1).kind, ArrivalKind::Duplicate);
        st.paced(3);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost, s.duplicates), (5, 3, 0, 2));
        assert_eq!(s.reordered, 0);
    }

    #[test]
    fn duplicate_of_the_first_packet() {
        let mut st = Stream::new();
        st.paced(7);
        assert_eq!(st.paced(7).kind, ArrivalKind::Duplicate);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost, s.duplicates), (2, 1, 0, 1));
    }

    #[test]
    fn late_duplicate_reports_its_delay_without_touching_jitter() {
        let mut st = Stream::new();
        st.paced(1);
        st.paced(2);
        let a = st.at_us(1, 160, 100_000); // 80 ms after its original
        assert_eq!(a.kind, ArrivalKind::Duplicate);
        assert_eq!(a.delay, ms(80));
        assert!(a.late);
        let s = st.snap();
        assert_eq!(s.jitter_ms, 0.0);
        assert_eq!(s.late, 1);
        assert_eq!(s.max_delay_ms, 80.0);
    }

    #[test]
    fn sequence_wrap_65535_to_0() {
        let mut st = Stream::new();
        for (t, seq) in [65533u16, 65534, 65535, 0, 1, 2].into_iter().enumerate() {
            assert_eq!(
                st.at_us(seq, t as u32 * 160, t as u64 * 20_000).kind,
                ArrivalKind::InOrder
            );
        }
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (6, 6, 0));
        assert_eq!(s.max_delay_ms, 0.0);
    }

    #[test]
    fn loss_across_the_wrap() {
        let mut st = Stream::new();
        st.at_us(65534, 0, 0);
        st.at_us(1, 480, 60_000); // 65535 and 0 lost
        let s = st.snap();
        assert_eq!((s.expected, s.lost), (4, 2));
        // 0 turns up late, after the wrap: reordered, not a jump.
        assert_eq!(st.at_us(0, 320, 70_000).kind, ArrivalKind::Reordered);
        assert_eq!(st.snap().lost, 1);
    }

    #[test]
    fn reordered_across_the_wrap() {
        let mut st = Stream::new();
        st.at_us(65535, 0, 0);
        st.at_us(1, 320, 40_000);
        assert_eq!(st.at_us(0, 160, 41_000).kind, ArrivalKind::Reordered);
        assert_eq!(st.at_us(65535, 0, 42_000).kind, ArrivalKind::Duplicate);
        let s = st.snap();
        assert_eq!(
            (s.expected, s.lost, s.reordered, s.duplicates),
            (3, 0, 1, 1)
        );
    }

    #[test]
    fn timestamp_wrap_keeps_the_schedule() {
        let mut st = Stream::new();
        let ts0 = u32::MAX - 3 * 160 + 1; // three packets before the wrap, three after
        for i in 0..6u32 {
            let a = st.at_us(i as u16, ts0.wrapping_add(i * 160), u64::from(i) * 20_000);
            assert_eq!(a.delay, Duration::ZERO, "packet {i}");
        }
        // One 5 ms late after the wrap.
        let a = st.at_us(6, ts0.wrapping_add(6 * 160), 125_000);
        assert_eq!(a.delay, ms(5));
        assert!(!a.late);
    }

    /// RFC 3550 A.8 by hand, clock 8000 (1 tick = 125 us), timestamps every 160:
    ///
    /// | pkt | arrival | in ticks | ts  | transit | D  | J                          |
    /// |-----|---------|----------|-----|---------|----|----------------------------|
    /// | 0   | 0 ms    | 0        | 0   | 0       |    | 0                          |
    /// | 1   | 20 ms   | 160      | 160 | 0       | 0  | 0                          |
    /// | 2   | 41 ms   | 328      | 320 | 8       | 8  | 0 + (8-0)/16 = 0.5         |
    /// | 3   | 60 ms   | 480      | 480 | 0       | -8 | 0.5 + 7.5/16 = 0.96875     |
    /// | 4   | 79.5 ms | 636      | 640 | -4      | -4 | + 3.03125/16 = 1.158203125 |
    /// | 5   | 100 ms  | 800      | 800 | 0       | 4  | + 2.841796875/16 = 1.3358154296875 |
    ///
    /// Delay = transit - min transit so far: 0, 0, 1 ms, 0, 0 (new minimum), 0.5 ms.
    #[test]
    fn jitter_matches_hand_computed_a8() {
        let mut st = Stream::new();
        let arrivals_us = [0, 20_000, 41_000, 60_000, 79_500, 100_000];
        let want_j = [0.0, 0.0, 0.5, 0.96875, 1.158203125, 1.3358154296875];
        let want_delay_us = [0, 0, 1000, 0, 0, 500];
        for i in 0..6 {
            let a = st.at_us(i as u16, i as u32 * 160, arrivals_us[i]);
            assert_eq!(
                a.delay,
                Duration::from_micros(want_delay_us[i]),
                "packet {i}"
            );
            assert_eq!(st.stats.jitter, want_j[i], "packet {i}");
        }
        let s = st.snap();
        assert_eq!(s.jitter_ms, 1.3358154296875 / 8.0);
        assert_eq!(s.max_delay_ms, 1.0);
        assert_eq!(s.late, 0);
    }

    #[test]
    fn jitter_of_constant_offset_is_zero_and_converges_to_alternation() {
        // Every packet 7 ms behind schedule: transit constant, no jitter, no delay.
        let mut st = Stream::new();
        for i in 0..10u64 {
            let a = st.at_us(i as u16, i as u32 * 160, 7_000 + i * 20_000);
            assert_eq!(a.delay, Duration::ZERO);
        }
        assert_eq!(st.snap().jitter_ms, 0.0);
        // Alternating +-2 ms: |D| = 4 ms each time, so J tends to 4 ms.
        let mut st = Stream::new();
        for i in 0..400u64 {
            let wobble = if i % 2 == 0 { 0 } else { 4_000 };
            st.at_us(i as u16, i as u32 * 160, i * 20_000 + wobble);
        }
        assert!((st.snap().jitter_ms - 4.0).abs() < 1e-9);
    }

    #[test]
    fn reordered_packets_feed_jitter_duplicates_do_not() {
        let mut st = Stream::new();
        st.at_us(0, 0, 0);
        st.at_us(2, 320, 40_000);
        // 1 arrives 1 ms after 2: transit of 1 = 41 - 20 = 21 ms, D vs 2's transit (0) = 21 ms.
        st.at_us(1, 160, 41_000);
        assert_eq!(st.stats.jitter, 168.0 / 16.0);
        st.at_us(1, 160, 42_000);
        assert_eq!(st.stats.jitter, 168.0 / 16.0, "duplicate left J alone");
    }

    #[test]
    fn delay_is_against_the_fastest_packet_so_far() {
        let mut st = Stream::new();
        // First packet is slow (10 ms behind what comes next).
        assert_eq!(st.at_us(0, 0, 10_000).delay, Duration::ZERO);
        assert_eq!(st.at_us(1, 160, 30_000).delay, Duration::ZERO);
        // Packet 2 arrives early: 15 ms ahead of the first packet's pace.
        assert_eq!(st.at_us(2, 320, 35_000).delay, Duration::ZERO);
        // Packet 3 on the first packet's pace is now 15 ms late relative to the fastest.
        assert_eq!(st.at_us(3, 480, 70_000).delay, ms(15));
        assert_eq!(st.snap().max_delay_ms, 15.0);
    }

    #[test]
    fn late_threshold_is_strictly_greater() {
        let mut st = Stream::new();
        st.at_us(0, 0, 0);
        let a = st.at_us(1, 160, 50_000); // 30 ms delay: at the threshold
        assert_eq!(a.delay, 30 * MS);
        assert!(!a.late);
        let a = st.at_us(2, 320, 70_001);
        assert!(a.late);
        assert_eq!(st.snap().late, 1);
    }

    #[test]
    fn arrival_before_the_first_is_handled_signed() {
        // Instants earlier than the first packet's (e.g. a packet stamped by another thread a
        // moment before): transit goes negative, which only sets a new minimum.
        let mut st = Stream::new();
        st.at_us(1, 160, 30_000);
        let a = st.at_us(2, 320, 10_000);
        assert_eq!(a.delay, Duration::ZERO);
        let a = st.at_us(3, 480, 50_000);
        assert_eq!(a.delay, ms(20));
    }

    #[test]
    fn clock_rate_zero_is_clamped() {
        let mut s = ReceiveStats::new(0, ms(30));
        let t0 = Instant::now();
        s.update(0, 0, t0);
        let a = s.update(1, 1, t0 + Duration::from_secs(3));
        assert_eq!(
            a.delay,
            Duration::from_secs(2),
            "1 tick of a 1 Hz clock is 1 s"
        );
        assert!(s.snapshot().jitter_ms.is_finite());
    }

    #[test]
    fn gap_just_below_max_dropout_is_loss() {
        let mut st = Stream::new();
        st.paced(0);
        let a = st.paced(MAX_DROPOUT - 1);
        assert_eq!(a.kind, ArrivalKind::InOrder);
        let s = st.snap();
        assert_eq!((s.expected, s.lost), (3000, 2998));
    }

    #[test]
    fn gap_wider_than_the_duplicate_window_clears_it() {
        let mut st = Stream::new();
        for seq in 0..10 {
            st.paced(seq);
        }
        // 2490 lost: the highest moves by more than the window, so every slot is forgotten.
        st.paced(2500);
        // 2050 shares its slot with 2 (2048 apart), which did arrive; 2050 did not.
        assert_eq!(st.paced(2050).kind, ArrivalKind::Reordered);
        assert_eq!(st.paced(2450).kind, ArrivalKind::Reordered);
        assert_eq!(st.paced(2450).kind, ArrivalKind::Duplicate);
    }

    #[test]
    fn gap_within_the_window_forgets_only_reused_slots() {
        let mut st = Stream::new();
        for seq in 0..10 {
            st.paced(seq);
        }
        // Highest moves to 2049: slots of 10..=2049 are forgotten, those of 2..=9 are kept
        // (2..=9 are still within 2048 of the highest).
        st.paced(2049);
        assert_eq!(
            st.paced(5).kind,
            ArrivalKind::Duplicate,
            "on probation, still known"
        );
        assert_eq!(
            st.paced(2048).kind,
            ArrivalKind::Reordered,
            "slot of 0 was forgotten"
        );
        let s = st.snap();
        assert_eq!((s.received, s.duplicates, s.reordered), (13, 1, 1));
        assert_eq!((s.expected, s.lost), (2050, 2050 - 12));
    }

    #[test]
    fn misorder_limit() {
        let mut st = Stream::new();
        for seq in 1000..1200 {
            if seq != 1101 {
                st.paced(seq);
            }
        }
        // 1199 is highest; 1101 is 98 behind: reordered.
        assert_eq!(st.paced(1101).kind, ArrivalKind::Reordered);
        assert_eq!(st.snap().lost, 0);
        // 1100 is 99 behind (< MAX_MISORDER): a duplicate in the window.
        assert_eq!(st.paced(1100).kind, ArrivalKind::Duplicate);
        // 1099 is 100 behind: a jump, on probation, but the bitmap still tells a duplicate.
        let a = st.paced(1099);
        assert_eq!(a.kind, ArrivalKind::Duplicate);
        let s = st.snap();
        assert_eq!(
            (s.expected, s.lost, s.duplicates, s.reordered),
            (200, 0, 2, 1)
        );
    }

    #[test]
    fn stray_packet_is_probation_not_loss() {
        let mut st = Stream::new();
        for seq in 0..10 {
            st.paced(seq);
        }
        // One packet from nowhere, far ahead, with a wild timestamp.
        let a = st.at_us(20_000, 0x1234_5678, 200_001);
        assert_eq!(a.kind, ArrivalKind::InOrder);
        assert_eq!(a.delay, Duration::ZERO);
        assert!(!a.late);
        // The stream goes on as if nothing happened.
        for seq in 10..20 {
            let a = st.paced(seq);
            assert_eq!(a.kind, ArrivalKind::InOrder);
            assert_eq!(
                a.delay,
                Duration::ZERO,
                "stray timestamp did not poison the schedule"
            );
        }
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (21, 20, 0));
        assert_eq!((s.jitter_ms, s.max_delay_ms, s.late), (0.0, 0.0, 0));
    }

    #[test]
    fn very_old_packet_beyond_the_window_is_reordered() {
        let mut st = Stream::new();
        for seq in 0..3000 {
            st.paced(seq);
        }
        // 2500 behind: outside A.1's misorder limit and the duplicate window.
        let a = st.paced(499);
        assert_eq!(a.kind, ArrivalKind::Reordered);
        assert_eq!(a.delay, Duration::ZERO, "probation packets carry no delay");
        // 500 behind, inside the window: known duplicate.
        assert_eq!(st.paced(2499).kind, ArrivalKind::Duplicate);
        let s = st.snap();
        assert_eq!(
            (s.expected, s.lost, s.reordered, s.duplicates),
            (3000, 0, 1, 1)
        );
    }

    #[test]
    fn forward_restart_is_resynced_not_lost() {
        let mut st = Stream::new();
        for seq in 0..50 {
            st.paced(seq);
        }
        // Asterisk renumbers: new sequence and timestamp base, 5 ms later than schedule.
        let t = 1_005_000;
        let first = st.at_us(30_000, 90_000, t);
        assert_eq!(first.kind, ArrivalKind::InOrder);
        let s = st.snap();
        assert_eq!(
            (s.received, s.expected, s.lost),
            (51, 50, 0),
            "on probation"
        );
        let second = st.at_us(30_001, 90_160, t + 20_000);
        assert_eq!(second.kind, ArrivalKind::InOrder);
        assert_eq!(second.delay, Duration::ZERO);
        let s = st.snap();
        assert_eq!(
            (s.received, s.expected, s.lost),
            (52, 52, 0),
            "restart counts both"
        );
        // The new run is measured against its own schedule.
        for i in 2..20u64 {
            let a = st.at_us(30_000 + i as u16, 90_000 + i as u32 * 160, t + i * 20_000);
            assert_eq!(a.kind, ArrivalKind::InOrder);
            assert_eq!(a.delay, Duration::ZERO);
        }
        // Loss in the new run still counts.
        st.at_us(30_025, 90_000 + 25 * 160, t + 25 * 20_000);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (71, 76, 5));
        assert_eq!(s.jitter_ms, 0.0);
        assert_eq!(s.max_delay_ms, 0.0);
        // A late packet of the new run's first pair is a duplicate in the new run.
        assert_eq!(
            st.at_us(30_000, 90_000, t + 600_000).kind,
            ArrivalKind::Duplicate
        );
    }

    #[test]
    fn backward_restart_is_resynced_not_lost() {
        let mut st = Stream::new();
        for seq in 20_000..20_050 {
            st.paced(seq);
        }
        assert_eq!(st.at_us(5, 7, 2_000_000).kind, ArrivalKind::Reordered);
        assert_eq!(st.at_us(6, 167, 2_020_000).kind, ArrivalKind::InOrder);
        st.at_us(7, 327, 2_040_000);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (53, 53, 0));
        assert_eq!(s.reordered, 1);
    }

    #[test]
    fn restart_across_the_wrap() {
        let mut st = Stream::new();
        for seq in 100..110 {
            st.paced(seq);
        }
        st.at_us(65535, 0, 300_000);
        st.at_us(0, 160, 320_000);
        let a = st.at_us(1, 320, 340_000);
        assert_eq!(a.kind, ArrivalKind::InOrder);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (13, 13, 0));
    }

    #[test]
    fn probation_needs_the_next_number() {
        let mut st = Stream::new();
        for seq in 0..10 {
            st.paced(seq);
        }
        st.at_us(20_000, 0, 200_000);
        st.at_us(20_002, 0, 200_000); // not 20_001: another stray
        st.paced(10);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (13, 11, 0));
        // The pending number is now 20_003; 20_003 confirms.
        st.at_us(20_003, 0, 300_000);
        let s = st.snap();
        assert_eq!((s.received, s.expected, s.lost), (14, 13, 0));
    }

    #[test]
    fn update_is_fixed_size() {
        // The duplicate window lives inline: no heap, whatever the stream does.
        assert!(std::mem::size_of::<ReceiveStats>() >= (DUP_WINDOW / 8) as usize);
        assert!(std::mem::size_of::<ReceiveStats>() < 1024);
    }

    #[test]
    fn snapshot_serializes() {
        let mut st = Stream::new();
        st.paced(1);
        let json = serde_json::to_string(&st.snap()).unwrap();
        assert_eq!(
            json,
            r#"{"received":1,"expected":1,"lost":0,"duplicates":0,"reordered":0,"late":0,"jitter_ms":0.0,"max_delay_ms":0.0}"#
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of (sequence number, timestamp, arrival), arrivals in any order: no
        /// panic, and the counters stay consistent.
        #[test]
        fn any_packets_keep_the_counters_consistent(
            packets in proptest::collection::vec((any::<u16>(), any::<u32>(), 0u64..10_000_000_000), 0..300),
        ) {
            let t0 = Instant::now();
            let mut s = ReceiveStats::new(8000, Duration::from_millis(20));
            for &(seq, ts, at) in &packets {
                let a = s.update(seq, ts, t0 + Duration::from_nanos(at));
                prop_assert_eq!(a.late, a.delay > Duration::from_millis(20));
            }
            let n = s.snapshot();
            prop_assert_eq!(n.received, packets.len() as u64);
            prop_assert!(n.lost <= n.expected);
            prop_assert!(n.duplicates + n.reordered <= n.received);
            prop_assert!(n.late <= n.received);
            prop_assert!(n.jitter_ms.is_finite() && n.jitter_ms >= 0.0);
            prop_assert!(n.max_delay_ms.is_finite() && n.max_delay_ms >= 0.0);
        }

        /// A stream with losses, duplicates and local reordering, from any starting sequence
        /// number (wraps included): expected = highest - lowest + 1, lost + unique received =
        /// expected, and each duplicate counted once.
        #[test]
        fn losses_duplicates_and_reordering_are_counted_exactly(
            base in any::<u16>(),
            ts0 in any::<u32>(),
            arrives in proptest::collection::vec(any::<bool>(), 1..600),
            doubled in proptest::collection::vec(any::<bool>(), 600),
            shuffle in proptest::collection::vec(any::<u16>(), 1200),
        ) {
            let offsets: Vec<u32> = (0..arrives.len() as u32).filter(|&i| arrives[i as usize]).collect();
            prop_assume!(!offsets.is_empty());
            let mut wire: Vec<u32> = Vec::new();
            let mut dups = 0u64;
            for &o in &offsets {
                wire.push(o);
                if doubled[o as usize] {
                    wire.push(o);
                    dups += 1;
                }
            }
            // Reordered within chunks of 16: never 100 or more behind, never a restart.
            for (c, chunk) in wire.chunks_mut(16).enumerate() {
                let mut keyed: Vec<(u16, u32)> = chunk.iter().enumerate().map(|(i, &o)| (shuffle[c * 16 + i], o)).collect();
                keyed.sort();
                for (slot, (_, o)) in chunk.iter_mut().zip(keyed) {
                    *slot = o;
                }
            }
            let t0 = Instant::now();
            let mut s = ReceiveStats::new(8000, Duration::from_millis(20));
            for (i, &o) in wire.iter().enumerate() {
                s.update(base.wrapping_add(o as u16), ts0.wrapping_add(o * 160), t0 + Duration::from_millis(20 * i as u64));
            }
            let n = s.snapshot();
            let expected = u64::from(offsets[offsets.len() - 1] - offsets[0] + 1);
            let unique = offsets.len() as u64;
            prop_assert_eq!(n.received, wire.len() as u64);
            prop_assert_eq!(n.expected, expected);
            prop_assert_eq!(n.lost + unique, expected);
            prop_assert_eq!(n.duplicates, dups);
        }
    }
}
