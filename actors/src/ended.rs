//! Recently ended calls and what each measured, kept after the call is gone from `/channels`
//! (`GET /calls/ended`): a bounded ring with a sequence number per entry, so that a client
//! (the load generator) can page through it with `since=` and see when it fell behind. Pure:
//! no IO, no actix.

use std::collections::VecDeque;

use serde::Serialize;

use crate::latency::LatencySummary;
use crate::media::{ModeTotals, SharedReport, StreamReport};
use crate::mode::CallMode;
use crate::quality::stream_quality;

/// How many ended calls the service keeps (~0.5 KiB each).
pub const ENDED_CALLS_LEN: usize = 10_000;

/// Most entries one page returns.
pub const PAGE_MAX: usize = 1_000;

/// How a call that reached the service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Served: set up, carried media, torn down.
    Ended,
    /// Setup failed part way, or its actor failed; torn down.
    Failed,
    /// Refused before any resource was taken (admission limit, no free port, degraded, ...).
    Refused,
}

/// What a call measured, as it stood when it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CallSummary {
    /// Unix ms when the call became live in the service (bridged, media started); null when it
    /// never did.
    pub active_at_ms: Option<u64>,
    /// From the call's StasisStart reaching the service to the call being live, ms: the
    /// service's part of the setup.
    pub service_setup_ms: Option<f64>,
    /// How long the call was live, ms.
    pub live_ms: Option<f64>,
    /// Echo: delay against the schedule; probe: round-trip time. Null without a stream of its
    /// own (shared-echo, or a call that ended before its media started).
    pub latency: Option<LatencySummary>,
    /// Packets from Asterisk, and sent to it; for shared-echo, both are the datagrams the
    /// shared echo reflected for the call.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Echo: packets expected from sequence numbers; probe: probes back or lost.
    pub expected: u64,
    pub lost: u64,
    pub late: u64,
    /// `lost / expected` (0 when nothing was expected).
    pub loss_ratio: f64,
    pub r_factor: Option<f64>,
    pub mos: Option<f64>,
    /// Unix ms when this process took the call over from Asterisk after a restart (null: it set
    /// the call up itself). The figures above count from then.
    pub adopted_at_ms: Option<u64>,
    /// Unix ms of the first packet of the call's media in this process: for an adopted call,
    /// when its media flowed again (the gap of a restart ends there).
    pub first_media_at_ms: Option<u64>,
}

/// When a call's life in this process passed its marks, for [`summarize`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    /// Unix ms when it became live.
    pub active_at_ms: Option<u64>,
    /// From its StasisStart (or its takeover) to live, ms.
    pub setup_ms: Option<f64>,
    /// From live to the start of its teardown, ms.
    pub live_ms: Option<f64>,
    pub adopted_at_ms: Option<u64>,
}

/// A call's summary from its times and the media engine's final report of its own stream
/// (echo, probe) or of what the shared echo reflected for it, taken at Unix ms `now_ms`.
pub fn summarize(t: Times, stream: Option<&StreamReport>, shared: Option<&SharedReport>, now_ms: u64) -> CallSummary {
    let mut s = CallSummary {
        active_at_ms: t.active_at_ms,
        service_setup_ms: t.setup_ms,
        live_ms: t.live_ms,
        adopted_at_ms: t.adopted_at_ms,
        ..CallSummary::default()
    };
    let first_ago = stream.and_then(|r| r.first_packet_ms_ago).or(shared.and_then(|r| r.first_packet_ms_ago));
    s.first_media_at_ms = first_ago.map(|ago| now_ms.saturating_sub(ago));
    if let Some(r) = shared {
        // What the shared echo reflected for the call: every datagram it took was sent back.
        s.packets_in = r.packets;
        s.packets_out = r.packets;
    }
    if let Some(r) = stream {
        let mut totals = ModeTotals::default();
        totals.add_report(r);
        s.latency = Some(r.latency);
        s.packets_in = r.packets_in;
        s.packets_out = r.packets_out;
        s.expected = totals.expected;
        s.lost = totals.lost;
        s.late = totals.late;
        s.loss_ratio = if totals.expected == 0 { 0.0 } else { totals.lost as f64 / totals.expected as f64 };
        if let Some(q) = stream_quality(r) {
            s.r_factor = Some(q.r_factor);
            s.mos = Some(q.mos);
        }
    }
    s
}

/// One ended call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndedCall {
    /// Position in the service's sequence of ended calls, from 1, without gaps.
    pub seq: u64,
    /// The caller's channel id.
    pub channel: String,
    pub mode: CallMode,
    pub outcome: Outcome,
    /// Why: an end reason (`hangup`, `no_media`, `setup_failed`, ...) or why it was refused.
    pub reason: String,
    /// Unix ms when the service recorded the end.
    pub ended_at_ms: u64,
    #[serde(flatten)]
    pub summary: CallSummary,
}

/// A page of [`EndedCalls`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndedPage {
    /// Entries with `seq > since`, oldest first, at most the page size.
    pub calls: Vec<EndedCall>,
    /// What to pass as `since` next: the last returned `seq`, or `since` when none.
    pub next: u64,
    /// The oldest `seq` still kept (0 when empty): `since + 1 < oldest` means entries were
    /// dropped before the client read them.
    pub oldest: u64,
    /// The newest `seq` given so far (0 before any).
    pub newest: u64,
}

/// The last `capacity` ended calls.
#[derive(Debug, Clone)]
pub struct EndedCalls {
    calls: VecDeque<EndedCall>,
    capacity: usize,
    last_seq: u64,
}

impl Default for EndedCalls {
    fn default() -> Self {
        EndedCalls::with_capacity(ENDED_CALLS_LEN)
    }
}

impl EndedCalls {
    pub fn with_capacity(capacity: usize) -> Self {
        EndedCalls { calls: VecDeque::new(), capacity, last_seq: 0 }
    }

    /// Records a call; its `seq` is the next one, whatever `call.seq` said. Drops the oldest
    /// entry when full.
    pub fn push(&mut self, mut call: EndedCall) {
        self.last_seq += 1;
        call.seq = self.last_seq;
        if self.capacity == 0 {
            return;
        }
        if self.calls.len() == self.capacity {
            self.calls.pop_front();
        }
        self.calls.push_back(call);
    }

    /// Entries after `since`, oldest first, at most `limit` (capped at [`PAGE_MAX`]).
    pub fn page(&self, since: u64, limit: usize) -> EndedPage {
        let limit = limit.clamp(1, PAGE_MAX);
        let oldest = self.calls.front().map_or(0, |c| c.seq);
        // Sequence numbers are consecutive, so the first entry after `since` is found by index.
        let skip = since.saturating_sub(oldest.saturating_sub(1)) as usize;
        let calls: Vec<EndedCall> = self.calls.iter().skip(skip).take(limit).cloned().collect();
        let next = calls.last().map_or(since, |c| c.seq);
        EndedPage { calls, next, oldest, newest: self.last_seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> EndedCall {
        EndedCall {
            seq: 0,
            channel: id.into(),
            mode: CallMode::Probe,
            outcome: Outcome::Ended,
            reason: "hangup".into(),
            ended_at_ms: 1,
            summary: CallSummary::default(),
        }
    }

    #[test]
    fn pages_follow_the_sequence() {
        let mut e = EndedCalls::with_capacity(10);
        let empty = e.page(0, 100);
        assert_eq!((empty.calls.len(), empty.next, empty.oldest, empty.newest), (0, 0, 0, 0));
        for i in 0..5 {
            e.push(call(&format!("c{i}")));
        }
        let p = e.page(0, 2);
        assert_eq!(p.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((p.next, p.oldest, p.newest), (2, 1, 5));
        let p = e.page(p.next, 100);
        assert_eq!(p.calls.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(), ["c2", "c3", "c4"]);
        assert_eq!(p.next, 5);
        let p = e.page(5, 100);
        assert!(p.calls.is_empty());
        assert_eq!(p.next, 5, "nothing new: since stays");
        assert!(e.page(99, 100).calls.is_empty(), "a since beyond the newest gives nothing");
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_says_so() {
        let mut e = EndedCalls::with_capacity(3);
        for i in 0..7 {
            e.push(call(&format!("c{i}")));
        }
        let p = e.page(0, 100);
        assert_eq!(p.calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(p.oldest, 5, "a client at since=0 learns that 1..4 are gone");
        assert_eq!(e.page(5, 100).calls.iter().map(|c| c.seq).collect::<Vec<_>>(), [6, 7]);
        let mut none = EndedCalls::with_capacity(0);
        none.push(call("x"));
        assert_eq!(none.page(0, 10).newest, 1);
        assert!(none.page(0, 10).calls.is_empty());
        assert_eq!(EndedCalls::default().capacity, ENDED_CALLS_LEN);
    }

    #[test]
    fn the_page_size_is_bounded() {
        let mut e = EndedCalls::with_capacity(PAGE_MAX + 10);
        for _ in 0..PAGE_MAX + 10 {
            e.push(call("c"));
        }
        assert_eq!(e.page(0, usize::MAX).calls.len(), PAGE_MAX);
        assert_eq!(e.page(0, 0).calls.len(), 1, "limit 0 counts as 1");
    }

    #[test]
    fn an_entry_serializes_flat() {
        let mut e = EndedCalls::default();
        e.push(call("c"));
        let v = serde_json::to_value(&e.page(0, 1).calls[0]).unwrap();
        assert_eq!(v["outcome"], "ended");
        assert_eq!(v["mode"], "probe");
        assert_eq!(v["seq"], 1);
        assert!(v["mos"].is_null());
        assert!(v.get("summary").is_none());
    }
}
