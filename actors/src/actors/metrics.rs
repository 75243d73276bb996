//! MetricsActor: aggregates what the calls and the media engine report into the service-wide
//! figures `GET /metrics` shows. Latency percentiles come from HdrHistograms fed with every
//! sample the media engine recorded (sent in deltas, never one message per packet).

use actix::prelude::*;
use serde::Serialize;

use std::collections::VecDeque;

use crate::ended::{CallSummary, EndedCall, EndedCalls, EndedPage, Outcome};
use crate::latency::{BucketCounts, LatencyHistogram, LatencySummary, BUCKET_BOUNDS_US};
use crate::quality;
use crate::media::{EngineCounters, MediaFlush, ModeTotals};
use crate::shared_echo::ReflectorCounters;
use crate::mode::CallMode;
use crate::reconcile::ReconcileReport;
use crate::sys::unix_ms;

/// A call was accepted and is being set up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CallStarted {
    pub mode: CallMode,
    /// The caller's channel id (for the event log).
    pub channel: String,
    /// Taken over from Asterisk after a restart, not set up by this process.
    pub adopted: bool,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Served: media was set up and the call was torn down normally.
    Completed,
    /// Setup failed part way (ARI error, bind error); what was built was torn down.
    Failed,
}

/// Why a call that was accepted ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The caller hung up, or Asterisk ended one of the call's resources.
    Hangup,
    /// No media for `media.no_media_timeout_ms`.
    NoMedia,
    /// The ARI link was down and the call's media had stopped too: ended locally (nothing
    /// sent to Asterisk; the reconciliation after the reconnect removes what is left there).
    SilentWhileLinkDown,
    /// Its caller was gone from Asterisk when a reconciliation looked.
    Vanished,
    /// The service shut down.
    Shutdown,
    /// Setup failed part way.
    SetupFailed,
    /// Its actor failed (panicked); the call was ended cleanly.
    ActorFailed,
    /// A call found live in Asterisk could not be taken over (its port is held by another
    /// process now, or its Asterisk side could not be read): ended cleanly.
    AdoptFailed,
}

impl EndReason {
    pub const ALL: [EndReason; 8] = [
        EndReason::Hangup,
        EndReason::NoMedia,
        EndReason::SilentWhileLinkDown,
        EndReason::Vanished,
        EndReason::Shutdown,
        EndReason::SetupFailed,
        EndReason::ActorFailed,
        EndReason::AdoptFailed,
    ];

    /// The JSON and Prometheus label name.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Hangup => "hangup",
            EndReason::NoMedia => "no_media",
            EndReason::SilentWhileLinkDown => "silent_while_link_down",
            EndReason::Vanished => "vanished",
            EndReason::Shutdown => "shutdown",
            EndReason::SetupFailed => "setup_failed",
            EndReason::ActorFailed => "actor_failed",
            EndReason::AdoptFailed => "adopt_failed",
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CallEnded {
    pub mode: CallMode,
    pub outcome: CallOutcome,
    pub reason: EndReason,
    /// The caller's channel id (for the event log).
    pub channel: String,
    /// What the call measured (`GET /calls/ended`).
    pub summary: CallSummary,
}

/// Calls ended, by why (`GET /metrics` `ended`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct EndedCounters {
    pub hangup: u64,
    pub no_media: u64,
    pub silent_while_link_down: u64,
    pub vanished: u64,
    pub shutdown: u64,
    pub setup_failed: u64,
    pub actor_failed: u64,
    pub adopt_failed: u64,
}

impl EndedCounters {
    /// The counter of reason `r` (exhaustive: a new reason needs its field).
    fn slot(&mut self, r: EndReason) -> &mut u64 {
        match r {
            EndReason::Hangup => &mut self.hangup,
            EndReason::NoMedia => &mut self.no_media,
            EndReason::SilentWhileLinkDown => &mut self.silent_while_link_down,
            EndReason::Vanished => &mut self.vanished,
            EndReason::Shutdown => &mut self.shutdown,
            EndReason::SetupFailed => &mut self.setup_failed,
            EndReason::ActorFailed => &mut self.actor_failed,
            EndReason::AdoptFailed => &mut self.adopt_failed,
        }
    }

    /// (label, count) pairs in [`EndReason::ALL`] order.
    pub fn pairs(&self) -> [(&'static str, u64); EndReason::ALL.len()] {
        let mut c = *self;
        EndReason::ALL.map(|r| (r.as_str(), *c.slot(r)))
    }
}

/// A call was refused before any resource was taken (no free port).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CallRejected {
    pub mode: CallMode,
    /// The caller's channel id (for the event log).
    pub channel: String,
    /// Why it was refused.
    pub why: String,
}

/// ARI events seen by the connection: counted for the operator.
#[derive(Message, Default, Clone, Copy, Debug, PartialEq, Serialize)]
#[rtype(result = "()")]
pub struct AriEventCounts {
    pub events: u64,
    #[serde(rename = "unknown_events")]
    pub unknown: u64,
    #[serde(rename = "malformed_events")]
    pub malformed: u64,
}

#[derive(Message)]
#[rtype(result = "MetricsSnapshot")]
pub struct GetMetrics;

/// The last call events, oldest first (`GET /events`).
#[derive(Message)]
#[rtype(result = "Vec<CallEvent>")]
pub struct GetEvents;

/// Recently ended calls after `since` (`GET /calls/ended`).
#[derive(Message)]
#[rtype(result = "EndedPage")]
pub struct GetEndedCalls {
    pub since: u64,
    pub limit: usize,
}

/// The latency distribution per mode as counts per bucket (`GET /metrics/latency_histogram`).
#[derive(Message)]
#[rtype(result = "LatencyHistogramView")]
pub struct GetLatencyHistogram;

/// What happened to a call, as the event log shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEventKind {
    /// Accepted and set up.
    Started,
    /// Taken over from Asterisk after a restart.
    Adopted,
    /// Ended after it was served.
    Ended,
    /// Refused before any resource was taken.
    Refused,
    /// Setup failed, or its actor failed.
    Failed,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallEvent {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: CallEventKind,
    pub mode: CallMode,
    pub channel: String,
    /// Why it ended, failed or was refused (null for `started`).
    pub reason: Option<String>,
}

/// How many call events [`EventRing`] keeps.
pub const EVENT_RING_LEN: usize = 50;

/// The last `capacity` call events: pushing past it drops the oldest. Pure.
#[derive(Debug, Clone)]
pub struct EventRing {
    events: VecDeque<CallEvent>,
    capacity: usize,
}

impl Default for EventRing {
    fn default() -> Self {
        EventRing::with_capacity(EVENT_RING_LEN)
    }
}

impl EventRing {
    pub fn with_capacity(capacity: usize) -> Self {
        EventRing { events: VecDeque::with_capacity(capacity), capacity }
    }

    pub fn push(&mut self, e: CallEvent) {
        if self.capacity == 0 {
            return;
        }
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Oldest first.
    pub fn to_vec(&self) -> Vec<CallEvent> {
        self.events.iter().cloned().collect()
    }
}

/// Counts per latency bucket, not cumulative: `counts[i]` samples in `(bounds_ms[i-1],
/// bounds_ms[i]]`, and `counts[bounds_ms.len()]` those above the last bound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyHistogramView {
    /// Upper bounds of the buckets, ms ([`BUCKET_BOUNDS_US`]).
    pub bounds_ms: Vec<f64>,
    pub echo: Vec<u64>,
    pub probe: Vec<u64>,
}

/// Per-bucket counts from cumulative ones and the total count (the last entry: above the last
/// bound).
pub fn bucket_counts(cumulative: &BucketCounts, total: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(cumulative.len() + 1);
    let mut below = 0;
    for &c in cumulative {
        out.push(c.saturating_sub(below));
        below = below.max(c);
    }
    out.push(total.saturating_sub(below));
    out
}

/// A reconciliation with Asterisk finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconciled(pub ReconcileReport);

/// A reconciliation could not read Asterisk's state (the error): nothing was adopted or ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReconcileFailed(pub String);

/// Reconciliations since start (at every ARI connect and reconnect, after a failed setup, and
/// every 60 s).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ReconcileMetrics {
    pub runs: u64,
    /// Orphan callers, externalMedia channels and bridges cleaned up, all runs together.
    pub orphans_cleaned: u64,
    /// Live calls ended because their caller had vanished, all runs together.
    pub vanished_calls: u64,
    /// Live calls found whole in Asterisk and taken over (after a restart), all runs together.
    pub adopted_calls: u64,
    /// Reconciliations that could not read Asterisk's state (not in `runs`), and the last
    /// such error.
    pub failed: u64,
    pub last_error: Option<String>,
    pub last: Option<ReconcileReport>,
}

/// One media flush from the engine thread.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush(pub MediaFlush);

/// The shared echo's counters, sent by the EchoActor on its supervision tick.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EchoCounters(pub ReflectorCounters);

/// Per-mode figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModeMetrics {
    pub calls_total: u64,
    pub calls_active: u64,
    pub calls_rejected: u64,
    pub calls_failed: u64,
    /// Calls taken over from Asterisk after a restart (also counted in `calls_total`).
    pub calls_adopted: u64,
    /// Echo: per-packet delay against the stream's schedule; probe: round-trip time (ms).
    pub latency: LatencySummary,
    /// The same samples as cumulative counts at [`BUCKET_BOUNDS_US`], for the Prometheus
    /// histogram (summed across instances by PromQL). Not in the JSON.
    #[serde(skip)]
    pub latency_buckets: BucketCounts,
    pub packets_in: u64,
    pub packets_out: u64,
    pub expected: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub packet_loss_ratio: f64,
    pub late_ratio: f64,
    /// Mean over calls of each call's RFC 3550 interarrival jitter (echo mode), ms.
    pub jitter_ms_avg: f64,
    pub loops_detected: u64,
    /// MOS of the mode's figures ([`quality`]): probe from the median and 95th percentile round
    /// trip and the loss ratio, echo from the mean jitter and the loss ratio; null until
    /// something was measured (and always for shared-echo, which measures nothing).
    pub mos_avg: Option<f64>,
}

/// Datagrams that reached a call's port but were not processed.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct DroppedCounters {
    /// From an address other than the call's Asterisk address.
    pub foreign_source: u64,
    /// From Asterisk but not RTP.
    pub malformed: u64,
    /// Echo mode: our own reflection came back (media loop), not reflected again.
    pub media_loop: u64,
}

/// Everything `GET /metrics` returns. The first ten fields are the keys every dashboard of ours reads; they stay as they are.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    pub total_channels: u64,
    pub active_channels: u64,
    pub total_latencies: u64,
    pub p50_latency: f64,
    pub p95_latency: f64,
    pub p99_latency: f64,
    pub max_latency: f64,
    pub avg_latency: f64,
    pub late_ratio: f64,
    pub packet_loss_ratio: f64,
    pub rejected_calls: u64,
    pub failed_calls: u64,
    pub jitter_ms_avg: f64,
    pub modes: ModesMetrics,
    pub echo: ReflectorCounters,
    pub dropped: DroppedCounters,
    pub ari: AriEventCounts,
    pub reconcile: ReconcileMetrics,
    /// Calls ended since start, by reason.
    pub ended: EndedCounters,
    /// The media engine's command queue: refused commands, abandoned requests. Read from the
    /// engine's handle by the service (the MetricsActor leaves it zero), so it is current
    /// while the engine is stuck, which is when it grows.
    pub media_engine: EngineCounters,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModesMetrics {
    pub echo: ModeMetrics,
    pub probe: ModeMetrics,
    #[serde(rename = "shared-echo")]
    pub shared_echo: ModeMetrics,
}

#[derive(Default)]
pub struct MetricsActor {
    /// Per mode (CallMode::index): total, active, rejected, failed, adopted.
    calls: [[u64; 5]; 3],
    /// Cumulative latency samples of echo and probe mode.
    latency: [LatencyHistogram; 2],
    /// Totals of streams that ended, and of the streams live at the last flush.
    ended: [ModeTotals; 2],
    live: [ModeTotals; 2],
    reflector: ReflectorCounters,
    ari: AriEventCounts,
    reconcile: ReconcileMetrics,
    /// Calls ended, by [`EndReason`] index.
    ended_by: EndedCounters,
    events: EventRing,
    /// The last calls that ended (or were refused), with their figures.
    ended_calls: EndedCalls,
}

impl Actor for MetricsActor {
    type Context = Context<Self>;
}

impl Handler<CallStarted> for MetricsActor {
    type Result = ();
    fn handle(&mut self, m: CallStarted, _: &mut Context<Self>) {
        let c = &mut self.calls[m.mode.index()];
        c[0] += 1;
        c[1] += 1;
        c[4] += u64::from(m.adopted);
        let kind = if m.adopted { CallEventKind::Adopted } else { CallEventKind::Started };
        self.event(kind, m.mode, m.channel, None);
    }
}

impl Handler<CallEnded> for MetricsActor {
    type Result = ();
    fn handle(&mut self, m: CallEnded, _: &mut Context<Self>) {
        let c = &mut self.calls[m.mode.index()];
        c[1] = c[1].saturating_sub(1);
        let kind = if m.outcome == CallOutcome::Failed {
            c[3] += 1;
            CallEventKind::Failed
        } else {
            CallEventKind::Ended
        };
        *self.ended_by.slot(m.reason) += 1;
        let outcome = if kind == CallEventKind::Failed { Outcome::Failed } else { Outcome::Ended };
        self.ended_calls.push(EndedCall {
            seq: 0,
            channel: m.channel.clone(),
            mode: m.mode,
            outcome,
            reason: m.reason.as_str().to_string(),
            ended_at_ms: unix_ms(),
            summary: m.summary,
        });
        self.event(kind, m.mode, m.channel, Some(m.reason.as_str().to_string()));
    }
}

impl Handler<CallRejected> for MetricsActor {
    type Result = ();
    fn handle(&mut self, m: CallRejected, _: &mut Context<Self>) {
        self.calls[m.mode.index()][2] += 1;
        self.ended_calls.push(EndedCall {
            seq: 0,
            channel: m.channel.clone(),
            mode: m.mode,
            outcome: Outcome::Refused,
            reason: m.why.clone(),
            ended_at_ms: unix_ms(),
            summary: CallSummary::default(),
        });
        self.event(CallEventKind::Refused, m.mode, m.channel, Some(m.why));
    }
}

impl Handler<AriEventCounts> for MetricsActor {
    type Result = ();
    fn handle(&mut self, m: AriEventCounts, _: &mut Context<Self>) {
        self.ari.events += m.events;
        self.ari.unknown += m.unknown;
        self.ari.malformed += m.malformed;
    }
}

impl Handler<Flush> for MetricsActor {
    type Result = ();
    fn handle(&mut self, Flush(f): Flush, _: &mut Context<Self>) {
        for (i, d) in f.latency_delta.iter().enumerate() {
            if let Some(h) = d {
                self.latency[i].merge(h);
            }
        }
        self.live = f.live;
        for (total, ended) in self.ended.iter_mut().zip(&f.ended) {
            total.add(ended);
        }
    }
}

impl Handler<EchoCounters> for MetricsActor {
    type Result = ();
    fn handle(&mut self, EchoCounters(c): EchoCounters, _: &mut Context<Self>) {
        self.reflector = c;
    }
}

impl Handler<ReconcileFailed> for MetricsActor {
    type Result = ();
    fn handle(&mut self, ReconcileFailed(e): ReconcileFailed, _: &mut Context<Self>) {
        self.reconcile.failed += 1;
        self.reconcile.last_error = Some(e);
    }
}

impl Handler<Reconciled> for MetricsActor {
    type Result = ();
    fn handle(&mut self, Reconciled(r): Reconciled, _: &mut Context<Self>) {
        self.reconcile.runs += 1;
        self.reconcile.orphans_cleaned += (r.orphan_app_channels + r.orphan_media_channels + r.orphan_bridges) as u64;
        self.reconcile.vanished_calls += r.vanished_calls as u64;
        self.reconcile.adopted_calls += r.adopted_calls as u64;
        self.reconcile.last = Some(r);
    }
}

impl Handler<GetMetrics> for MetricsActor {
    type Result = MessageResult<GetMetrics>;
    fn handle(&mut self, _: GetMetrics, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot())
    }
}

impl Handler<GetEvents> for MetricsActor {
    type Result = MessageResult<GetEvents>;
    fn handle(&mut self, _: GetEvents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.events.to_vec())
    }
}

impl Handler<GetEndedCalls> for MetricsActor {
    type Result = MessageResult<GetEndedCalls>;
    fn handle(&mut self, m: GetEndedCalls, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.ended_calls.page(m.since, m.limit))
    }
}

impl Handler<GetLatencyHistogram> for MetricsActor {
    type Result = MessageResult<GetLatencyHistogram>;
    fn handle(&mut self, _: GetLatencyHistogram, _: &mut Context<Self>) -> Self::Result {
        let per_mode = |h: &LatencyHistogram| bucket_counts(&h.cumulative_counts(&BUCKET_BOUNDS_US), h.count());
        MessageResult(LatencyHistogramView {
            bounds_ms: BUCKET_BOUNDS_US.iter().map(|&us| us as f64 / 1000.0).collect(),
            echo: per_mode(&self.latency[0]),
            probe: per_mode(&self.latency[1]),
        })
    }
}

/// The MOS of a mode's figures; `None` until a packet's fate was known.
fn mode_mos(mode: CallMode, m: &ModeMetrics) -> Option<f64> {
    if m.expected == 0 {
        return None;
    }
    let inputs = match mode {
        CallMode::Probe => quality::probe_inputs(m.latency.p50_ms, m.latency.p95_ms, m.packet_loss_ratio),
        CallMode::Echo => quality::echo_inputs(m.jitter_ms_avg, m.packet_loss_ratio),
        CallMode::SharedEcho => return None,
    };
    Some(quality::estimate(&inputs).mos)
}

fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl MetricsActor {
    fn event(&mut self, kind: CallEventKind, mode: CallMode, channel: String, reason: Option<String>) {
        self.events.push(CallEvent { at_ms: unix_ms(), kind, mode, channel, reason });
    }

    fn mode_metrics(&self, mode: CallMode) -> ModeMetrics {
        let c = self.calls[mode.index()];
        let mut m = ModeMetrics {
            calls_total: c[0],
            calls_active: c[1],
            calls_rejected: c[2],
            calls_failed: c[3],
            calls_adopted: c[4],
            ..ModeMetrics::default()
        };
        if mode == CallMode::SharedEcho {
            return m;
        }
        let i = mode.index();
        let mut t = self.ended[i];
        t.add(&self.live[i]);
        m.latency = self.latency[i].summary();
        m.latency_buckets = self.latency[i].cumulative_counts(&BUCKET_BOUNDS_US);
        m.packets_in = t.packets_in;
        m.packets_out = t.packets_out;
        m.expected = t.expected;
        m.lost = t.lost;
        m.late = t.late;
        m.duplicates = t.duplicates;
        m.reordered = t.reordered;
        m.packet_loss_ratio = ratio(t.lost, t.expected);
        m.late_ratio = ratio(t.late, m.latency.count);
        m.jitter_ms_avg = if t.streams == 0 { 0.0 } else { t.jitter_ms_sum / t.streams as f64 };
        m.loops_detected = t.loops_detected;
        m.mos_avg = mode_mos(mode, &m);
        m
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let modes = ModesMetrics {
            echo: self.mode_metrics(CallMode::Echo),
            probe: self.mode_metrics(CallMode::Probe),
            shared_echo: self.mode_metrics(CallMode::SharedEcho),
        };
        let mut all = self.latency[0].clone();
        all.merge(&self.latency[1]);
        let s = all.summary();
        let mut t = self.ended[0];
        t.add(&self.ended[1]);
        t.add(&self.live[0]);
        t.add(&self.live[1]);
        let echo_t = {
            let mut e = self.ended[0];
            e.add(&self.live[0]);
            e
        };
        let calls = |k: usize| self.calls.iter().map(|c| c[k]).sum::<u64>();
        MetricsSnapshot {
            total_channels: calls(0),
            active_channels: calls(1),
            total_latencies: s.count,
            p50_latency: s.p50_ms,
            p95_latency: s.p95_ms,
            p99_latency: s.p99_ms,
            max_latency: s.max_ms,
            avg_latency: s.avg_ms,
            late_ratio: ratio(t.late, s.count),
            packet_loss_ratio: ratio(t.lost, t.expected),
            rejected_calls: calls(2),
            failed_calls: calls(3),
            jitter_ms_avg: if echo_t.streams == 0 { 0.0 } else { echo_t.jitter_ms_sum / echo_t.streams as f64 },
            modes,
            echo: self.reflector,
            dropped: DroppedCounters {
                foreign_source: t.dropped_foreign,
                malformed: t.dropped_malformed,
                media_loop: t.dropped_loop,
            },
            ari: self.ari,
            reconcile: self.reconcile.clone(),
            ended: self.ended_by,
            media_engine: EngineCounters::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> CallEvent {
        CallEvent { at_ms: n as u64, kind: CallEventKind::Started, mode: CallMode::Probe, channel: format!("c{n}"), reason: None }
    }

    #[test]
    fn event_ring_keeps_the_last_ones_oldest_first() {
        let mut r = EventRing::with_capacity(3);
        assert!(r.to_vec().is_empty());
        for n in 0..5 {
            r.push(ev(n));
        }
        let names: Vec<_> = r.to_vec().into_iter().map(|e| e.channel).collect();
        assert_eq!(names, ["c2", "c3", "c4"]);
        let mut none = EventRing::with_capacity(0);
        none.push(ev(0));
        assert!(none.to_vec().is_empty());
        assert_eq!(EventRing::default().capacity, EVENT_RING_LEN);
    }

    #[test]
    fn bucket_counts_from_cumulative() {
        let mut cum = [0u64; BUCKET_BOUNDS_US.len()];
        // 2 samples <= 50 us, 3 more <= 1 ms, none after; 4 above 2 s.
        for (i, c) in cum.iter_mut().enumerate() {
            *c = if i == 0 { 2 } else if BUCKET_BOUNDS_US[i] >= 1_000 { 5 } else { 2 };
        }
        let b = bucket_counts(&cum, 9);
        assert_eq!(b.len(), BUCKET_BOUNDS_US.len() + 1);
        assert_eq!(b[0], 2);
        assert_eq!(b[4], 3, "the 1 ms bucket");
        assert_eq!(b.iter().sum::<u64>(), 9);
        assert_eq!(*b.last().unwrap(), 4);
        assert!(bucket_counts(&[0; BUCKET_BOUNDS_US.len()], 0).iter().all(|&c| c == 0));
    }

    #[test]
    fn the_actor_counts_events_and_histograms() {
        let mut a = MetricsActor::default();
        a.latency[1].record_us(30);
        a.latency[1].record_us(700);
        a.latency[1].record_us(5_000_000);
        let h = |h: &LatencyHistogram| bucket_counts(&h.cumulative_counts(&BUCKET_BOUNDS_US), h.count());
        let probe = h(&a.latency[1]);
        assert_eq!((probe[0], probe[4], probe[BUCKET_BOUNDS_US.len()]), (1, 1, 1));
        assert_eq!(h(&a.latency[0]).iter().sum::<u64>(), 0);
        a.event(CallEventKind::Refused, CallMode::Echo, "x".into(), Some("no free RTP port".into()));
        assert_eq!(a.events.to_vec()[0].reason.as_deref(), Some("no free RTP port"));
    }

    #[actix_rt::test]
    async fn ended_and_refused_calls_are_kept_with_their_figures() {
        let m = MetricsActor::default().start();
        let summary = CallSummary { active_at_ms: Some(5), mos: Some(4.4), expected: 50, ..CallSummary::default() };
        m.do_send(CallStarted { mode: CallMode::Probe, channel: "a".into(), adopted: false });
        m.do_send(CallEnded { mode: CallMode::Probe, outcome: CallOutcome::Completed, reason: EndReason::Hangup, channel: "a".into(), summary: summary.clone() });
        m.do_send(CallRejected { mode: CallMode::Echo, channel: "b".into(), why: "no free RTP port".into() });
        m.do_send(CallEnded { mode: CallMode::Echo, outcome: CallOutcome::Failed, reason: EndReason::SetupFailed, channel: "c".into(), summary: CallSummary::default() });
        let page = m.send(GetEndedCalls { since: 0, limit: 10 }).await.unwrap();
        let got: Vec<_> = page.calls.iter().map(|c| (c.seq, c.channel.as_str(), c.outcome, c.reason.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "a", Outcome::Ended, "hangup"),
                (2, "b", Outcome::Refused, "no free RTP port"),
                (3, "c", Outcome::Failed, "setup_failed")
            ]
        );
        assert_eq!(page.calls[0].summary, summary);
        assert_eq!(m.send(GetEndedCalls { since: 2, limit: 10 }).await.unwrap().calls.len(), 1);
    }

    #[test]
    fn mos_is_null_until_measured_and_for_shared_echo() {
        let a = MetricsActor::default();
        let s = a.snapshot();
        assert_eq!(s.modes.echo.mos_avg, None);
        assert_eq!(s.modes.probe.mos_avg, None);
        assert_eq!(s.modes.shared_echo.mos_avg, None);
        let m = ModeMetrics { expected: 100, ..ModeMetrics::default() };
        // Only the codec's 10 ms: R 92.96, MOS 4.40.
        assert_eq!(mode_mos(CallMode::Echo, &m), Some(4.4));
        let lossy = ModeMetrics { expected: 100, packet_loss_ratio: 0.05, ..ModeMetrics::default() };
        assert!(mode_mos(CallMode::Probe, &lossy).unwrap() < 4.0);
        assert_eq!(mode_mos(CallMode::SharedEcho, &m), None);
    }
}
