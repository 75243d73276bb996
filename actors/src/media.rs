//! The media engine: one dedicated thread that owns every call's RTP socket, waits on them
//! with one epoll loop (mio), and does the per-packet work: reflect, probe, measure. Actors
//! never see packets; they send it control commands (add, start, remove, snapshot, watch a
//! shared-echo call) and it sends them reports and periodic metric flushes. The shared echo
//! (UDP 4000) is not here: it has workers of its own ([`crate::shared_echo`]), which count
//! what they reflect for watched shared-echo calls into [`SharedWatches`].
//!
//! Echo mode tells a media loop from a network duplicate: a packet whose (RTP timestamp,
//! payload) matches one reflected recently is our reflection coming back only if it arrived
//! with another SSRC or sequence number (Asterisk rewrites both on the way back); with the same
//! ones it is a copy the network made, counted as a duplicate and reflected like any packet.
//!
//! Why a thread of its own: the per-packet path must not share an event loop with ARI, HTTP
//! and actor mailboxes, must not allocate, and must stay replaceable (batched syscalls, more
//! threads) without changing the actors' messages. The measuring itself is pure code
//! ([`crate::stats`], [`crate::probe`], [`crate::latency`]); this module only does IO around it,
//! and the syscalls beyond mio's (batched reads and sends, kernel receive stamps) are in
//! [`crate::sys`].
//!
//! Times: a packet's arrival is the kernel's receive stamp (not when this thread woke up and
//! read it), and a probe's send time is read right before its own `send_to`.
//!
//! Health: every request of [`MediaHandle`] that waits for an answer gives up after
//! [`EngineOptions::request_timeout`] ([`EngineError::Timeout`]), so no actor hangs on a stuck
//! engine; [`MediaHandle::liveness`] tells a watchdog whether the loop still turns (atomics,
//! no message), and whether its thread has ended, panic message included.
//!
//! Bounds: the command queue refuses new streams and watches past [`QUEUE_CAPACITY`]
//! ([`EngineError::Busy`], counted), never removals ([`crate::command_queue`] says why);
//! snapshot requests made while one is queued share its answer, computed once; a request whose
//! asker gave up (timed out) is not computed when the engine gets to it; the loop handles at
//! most [`COMMANDS_PER_TURN`] commands between reads of the call sockets. A removal costs the
//! same whatever the number of streams: the stream's figures move from the live totals to the
//! ended ones at the next periodic flush, which computes the live totals anyway.
//!
//! Silence: a stream (or a watched shared-echo call) without media is reported once through
//! the idle sink after its own `no_media_timeout` ([`IdleReason::NoMedia`]) and, while the
//! service says its link to Asterisk is down ([`MediaHandle::set_link_down`]), once after that
//! silence ([`IdleReason::SilentWhileLinkDown`]).

use std::collections::{BinaryHeap, HashMap};
use std::cmp::Reverse;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::oneshot;

use crate::command_queue::{Coalesced, Gate, Waiter};
use crate::echo_guard::AllowList;
use crate::latency::{LatencyHistogram, LatencySummary};
use crate::mode::CallMode;
use crate::probe::{ProbeOutcome, ProbeSecret, ProbeSnapshot, ProbeStream, PACKET_LEN};
use crate::rtp::RtpPacket;
use crate::stats::{ArrivalKind, ReceiveSnapshot, ReceiveStats};
use crate::sys::{self, Batch, ClockPair, Family, TimestampingOn};
use crate::thread_health::{self, Health};
pub use crate::thread_health::Liveness;

/// Identifies one call's media stream (the supervisor's call number).
pub type StreamId = u64;

const WAKER: Token = Token(0);
const FIRST_STREAM: usize = 1;
/// How often live totals and latency deltas go to the metrics sink, and probes are expired.
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// Datagrams read from a call socket per recvmmsg. A call brings 50 packets/s, so one read
/// usually returns one; a short read tells the socket is drained, which saves the `EAGAIN`
/// read per packet that reading until `WouldBlock` costs.
const CALL_BATCH: usize = 8;
/// How many recently reflected packets echo mode remembers to recognise a media loop.
const LOOP_RING: usize = 64;
/// Commands the engine may refuse (a new stream or watch, fault injection) that its queue holds
/// at most: the default of [`EngineOptions::queue_capacity`]. A running engine takes each in
/// microseconds, and new streams come no faster than Asterisk answers externalMedia requests
/// (the ARI client keeps at most 64 in flight), so it holds a few at most; it fills only while
/// the engine is stuck, and then a command queued behind a thousand others would time out
/// before its turn anyway. At ~0.2 KiB per queued command the bound is ~0.2 MiB.
pub const QUEUE_CAPACITY: usize = 1024;
/// Commands handled per loop turn: a burst (a thousand calls ending at once) is worked through
/// between reads of the call sockets instead of ahead of all of them.
pub const COMMANDS_PER_TURN: usize = 64;
/// What an injected panic says (tests look for it in [`Liveness::Dead`]).
pub const INJECTED_PANIC: &str = "injected fault: panic in the media engine";

/// How the engine answers and when it counts as stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// How long a request that waits for the engine's answer (add, remove, snapshot, ...)
    /// waits before it gives up with [`EngineError::Timeout`]. The engine answers within
    /// microseconds when it runs; a stuck engine must not hang the actor that asked.
    pub request_timeout: Duration,
    /// A loop that has not turned for longer than this is [`Liveness::Stalled`]. The loop
    /// wakes at least every 250 ms for housekeeping, so this must be longer than that.
    pub stall_bound: Duration,
    /// Refusable commands queued at most ([`QUEUE_CAPACITY`]).
    pub queue_capacity: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            request_timeout: Duration::from_secs(2),
            stall_bound: Duration::from_secs(2),
            queue_capacity: QUEUE_CAPACITY,
        }
    }
}

impl EngineOptions {
    fn check(&self) -> io::Result<()> {
        let invalid = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if self.request_timeout.is_zero() {
            return invalid("the media engine's request timeout must not be zero".into());
        }
        if self.queue_capacity == 0 {
            return invalid("the media engine's command queue must hold at least one command".into());
        }
        if self.stall_bound <= HOUSEKEEPING {
            return invalid(format!(
                "the media engine's stall bound ({:?}) must exceed its housekeeping interval ({HOUSEKEEPING:?}), \
                 or an idle engine would look stalled",
                self.stall_bound
            ));
        }
        Ok(())
    }
}

/// A request to the engine failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// Its thread has ended (shut down or panicked): nothing can be added or reported.
    #[error("the media engine is not running")]
    Gone,
    /// It did not answer in time (stalled, or overloaded). The request may still be carried
    /// out later: requests are handled in order, so a `remove` sent after a timed-out `add`
    /// undoes it, and an `add` or `watch_shared` whose asker gave up is undone by the engine.
    #[error("the media engine did not answer within {0:?}")]
    Timeout(Duration),
    /// Its command queue holds as many refusable commands as it may (the engine is stuck or
    /// far behind): refused at once, counted in [`EngineCounters::commands_refused`]. Nothing
    /// was queued, so nothing is carried out later.
    #[error("the media engine's command queue is full ({0} commands waiting): refused")]
    Busy(usize),
}

/// How the engine's command queue fared since start (`media_engine` in `GET /metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineCounters {
    /// Commands refused because the queue was full ([`EngineError::Busy`]).
    pub commands_refused: u64,
    /// Requests whose asker had given up (timed out) when the engine got to them, not computed
    /// (a removal is still carried out, without its report), or by the time it answered (an
    /// add or a watch is then undone).
    pub requests_abandoned: u64,
}

/// Why a stream or watched call was reported through the idle sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum IdleReason {
    /// No media for its own `no_media_timeout`.
    NoMedia,
    /// No media for the silence given to [`MediaHandle::set_link_down`] while the link to
    /// Asterisk is down.
    SilentWhileLinkDown,
}

/// What a new stream is to do.
#[derive(Debug)]
pub struct StreamSpec {
    pub id: StreamId,
    /// Echo or Probe (SharedEcho calls have no stream of their own).
    pub mode: CallMode,
    /// The call's leased port, already bound by its ChannelActor.
    pub socket: std::net::UdpSocket,
    /// The only address we accept RTP from and send RTP to: Asterisk's side of the
    /// externalMedia channel (`UNICASTRTP_LOCAL_ADDRESS:UNICASTRTP_LOCAL_PORT`).
    pub peer: SocketAddr,
    pub late_threshold: Duration,
    pub probe_timeout: Duration,
    /// Report the stream idle when no packet came from `peer` for this long (zero: never).
    /// Counted from when media should flow: stream added (echo), probing started (probe).
    pub no_media_timeout: Duration,
}

/// One stream as it stands: what the HTTP API shows for a call, and the final report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StreamReport {
    pub id: StreamId,
    pub mode: CallMode,
    pub local_port: u16,
    pub peer: SocketAddr,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams from any address but `peer`: counted, never processed.
    pub dropped_foreign: u64,
    /// Datagrams from `peer` that are not RTP.
    pub dropped_malformed: u64,
    /// Echo mode: packets not reflected because they were our own reflection coming back.
    pub dropped_loop: u64,
    pub send_errors: u64,
    /// Echo mode: a reflected packet came back to us (the far end echoes too).
    pub loop_detected: bool,
    /// Milliseconds since the last packet from `peer` (None: nothing yet).
    pub last_packet_ms_ago: Option<u64>,
    /// Milliseconds since the first packet from `peer` (None: nothing yet).
    pub first_packet_ms_ago: Option<u64>,
    /// Echo mode's inbound stream statistics.
    pub receive: Option<ReceiveSnapshot>,
    /// Probe mode's round-trip accounting.
    pub probe: Option<ProbeSnapshot>,
    /// Echo: delay against schedule; probe: round-trip time.
    pub latency: LatencySummary,
}

/// A shared-echo call the engine watches: what the shared echo reflected for that call's
/// address (datagrams the echo's limits dropped are not counted).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SharedReport {
    pub id: StreamId,
    /// Asterisk's side of the call's externalMedia channel, where its datagrams come from.
    pub peer: SocketAddr,
    pub packets: u64,
    pub bytes: u64,
    /// Milliseconds since the last datagram from `peer` (None: nothing yet).
    pub last_packet_ms_ago: Option<u64>,
    /// Milliseconds since the first datagram from `peer` (None: nothing yet).
    pub first_packet_ms_ago: Option<u64>,
}

/// Everything the engine handles now: what [`MediaHandle::snapshot`] returns.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MediaSnapshot {
    /// Calls with a socket of their own (echo, probe).
    pub streams: Vec<StreamReport>,
    /// Watched shared-echo calls.
    pub shared: Vec<SharedReport>,
}

/// Sums over a set of streams of one mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ModeTotals {
    pub streams: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped_foreign: u64,
    pub dropped_malformed: u64,
    pub dropped_loop: u64,
    pub loops_detected: u64,
    /// Echo: packets expected from sequence numbers; probe: probes sent and no longer in flight.
    pub expected: u64,
    pub lost: u64,
    pub late: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Sum of each stream's jitter (echo mode), to average over `streams`.
    pub jitter_ms_sum: f64,
}

impl ModeTotals {
    pub fn add_report(&mut self, r: &StreamReport) {
        self.add_counts(r.packets_in, r.packets_out, r.dropped_foreign, r.dropped_malformed, r.dropped_loop, r.loop_detected);
        self.add_measures(r.receive.as_ref(), r.probe.as_ref());
    }

    fn add_counts(&mut self, pin: u64, pout: u64, foreign: u64, malformed: u64, looped: u64, loop_detected: bool) {
        self.streams += 1;
        self.packets_in += pin;
        self.packets_out += pout;
        self.dropped_foreign += foreign;
        self.dropped_malformed += malformed;
        self.dropped_loop += looped;
        self.loops_detected += u64::from(loop_detected);
    }

    fn add_measures(&mut self, receive: Option<&ReceiveSnapshot>, probe: Option<&ProbeSnapshot>) {
        if let Some(rx) = receive {
            self.expected += rx.expected;
            self.lost += rx.lost;
            self.late += rx.late;
            self.duplicates += rx.duplicates;
            self.reordered += rx.reordered;
            self.jitter_ms_sum += rx.jitter_ms;
        }
        if let Some(p) = probe {
            self.expected += p.returned + p.lost;
            self.lost += p.lost;
            self.late += p.late;
            self.duplicates += p.duplicates;
        }
    }

    pub fn add(&mut self, o: &ModeTotals) {
        self.streams += o.streams;
        self.packets_in += o.packets_in;
        self.packets_out += o.packets_out;
        self.dropped_foreign += o.dropped_foreign;
        self.dropped_malformed += o.dropped_malformed;
        self.dropped_loop += o.dropped_loop;
        self.loops_detected += o.loops_detected;
        self.expected += o.expected;
        self.lost += o.lost;
        self.late += o.late;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.jitter_ms_sum += o.jitter_ms_sum;
    }
}

/// What the engine tells the metrics sink, every [`HOUSEKEEPING`].
#[derive(Debug, Clone)]
pub struct MediaFlush {
    /// Latency samples recorded since the previous flush, per mode ([`CallMode::index`]).
    pub latency_delta: [Option<LatencyHistogram>; 2],
    /// Sums over the streams live now, per mode (echo, probe).
    pub live: [ModeTotals; 2],
    /// Sums over the streams that ended since the previous flush, per mode, as they stood at
    /// their end: they were in the previous flush's `live` and are not in this one's, so adding
    /// these to the ended totals counts every stream once.
    pub ended: [ModeTotals; 2],
}

/// Where flushes go (the MetricsActor's address, wrapped); called on the media thread.
pub type FlushSink = Box<dyn Fn(MediaFlush) + Send>;
/// Told once per stream or watched call and reason when it has been silent too long; called
/// on the media thread.
pub type IdleSink = Box<dyn Fn(StreamId, IdleReason) + Send>;

enum Command {
    Add(Box<StreamSpec>, oneshot::Sender<io::Result<()>>),
    StartProbing(StreamId),
    Remove(StreamId, oneshot::Sender<Option<StreamReport>>),
    /// Answers everyone in [`Queue::snapshots`].
    Snapshot,
    Watch { id: StreamId, peer: SocketAddr, no_media_timeout: Duration, reply: oneshot::Sender<()> },
    Unwatch(StreamId, oneshot::Sender<Option<SharedReport>>),
    LinkDown(Option<Duration>),
    /// Fault injection: the engine thread sleeps this long.
    Stall(Duration),
    /// Fault injection: the engine thread panics.
    Panic,
    Shutdown,
}

impl Command {
    /// Whether the queue may refuse it when full. Never what undoes or ends state the engine
    /// holds (remove, unwatch, start probing a stream already added, link state, shutdown):
    /// each call sends those once, so they are bounded by the calls, and refusing one would
    /// leak a socket or leave a call half set up. A snapshot is not gated either: at most one is
    /// queued ([`Queue::snapshots`]).
    fn refusable(&self) -> bool {
        matches!(self, Command::Add(..) | Command::Watch { .. } | Command::Stall(_) | Command::Panic)
    }
}

impl<T> Waiter for oneshot::Sender<T> {
    fn gave_up(&self) -> bool {
        self.is_closed()
    }
}

/// What the handles and the engine share about the command queue.
struct Queue {
    /// Refusable commands queued, and refusals.
    gate: Gate,
    /// Who waits for the one queued snapshot.
    snapshots: Coalesced<oneshot::Sender<Arc<MediaSnapshot>>>,
    /// Requests whose asker had given up when the engine got to them or answered them.
    abandoned: AtomicU64,
}

/// Send + Clone handle to the media thread: what actors hold.
#[derive(Clone)]
pub struct MediaHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    health: Arc<Health>,
    watches: Arc<SharedWatches>,
    queue: Arc<Queue>,
    request_timeout: Duration,
}

impl MediaHandle {
    /// Starts the media thread. Fails on invalid `opts` (see [`EngineOptions`]) or when the
    /// poll or the thread cannot be created.
    pub fn start(
        sink: FlushSink,
        idle: IdleSink,
        opts: EngineOptions,
    ) -> io::Result<(MediaHandle, thread::JoinHandle<()>)> {
        opts.check()?;
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let stamping = TimestampingOn::new()
            .map_err(|e| log::warn!("[Media] cannot hold kernel receive timestamps on ({e}): the first packets after an idle period may be stamped late"))
            .ok();
        let health = Arc::new(Health::new(opts.stall_bound));
        let thread_health = Arc::clone(&health);
        let watches = Arc::new(SharedWatches::default());
        let engine_watches = Arc::clone(&watches);
        let queue = Arc::new(Queue {
            gate: Gate::new(opts.queue_capacity),
            snapshots: Coalesced::default(),
            abandoned: AtomicU64::new(0),
        });
        let engine_queue = Arc::clone(&queue);
        // Built on its thread: the batches' preallocated syscall headers hold raw pointers
        // into themselves, so nix does not let them cross threads.
        let join = thread_health::spawn("rtpvisor-media", Arc::clone(&health), move || {
            let _stamping = stamping;
            Engine::new(poll, rx, engine_queue, sink, idle, thread_health, engine_watches).run()
        })?;
        Ok((MediaHandle { tx, waker, health, watches, queue, request_timeout: opts.request_timeout }, join))
    }

    fn send(&self, cmd: Command) -> Result<(), EngineError> {
        let gated = cmd.refusable();
        if gated && !self.queue.gate.enter() {
            return Err(EngineError::Busy(self.queue.gate.capacity()));
        }
        if self.tx.send(cmd).is_err() {
            if gated {
                self.queue.gate.leave();
            }
            return Err(EngineError::Gone);
        }
        self.waker.wake().map_err(|_| EngineError::Gone)
    }

    /// Sends the command `make` builds and waits, at most the request timeout, for its answer.
    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        self.answer(rx).await
    }

    /// Waits, at most the request timeout, for an answer. Giving up drops `rx`, which the
    /// engine sees before it computes the answer.
    async fn answer<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, EngineError> {
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            // The engine dropped the question unanswered: its thread ended.
            Ok(Err(_)) => Err(EngineError::Gone),
            Err(_) => Err(EngineError::Timeout(self.request_timeout)),
        }
    }

    /// Hands a bound socket to the engine; media is handled from now on (probing waits for
    /// [`MediaHandle::start_probing`]). On a timeout the engine drops (or undoes) the add when
    /// it gets to it, so the socket is closed and the id free again. Refused with
    /// [`EngineError::Busy`] when the queue is full (the socket is closed).
    pub async fn add(&self, spec: StreamSpec) -> Result<io::Result<()>, EngineError> {
        self.request(|tx| Command::Add(Box::new(spec), tx)).await
    }

    /// Probe streams start sending once the call's bridge is complete.
    pub fn start_probing(&self, id: StreamId) -> Result<(), EngineError> {
        self.send(Command::StartProbing(id))
    }

    /// Ends a stream: the engine closes its socket and returns its final report (None when
    /// it had no such stream). Never refused; on a timeout the stream is still removed when
    /// the engine gets to it (its figures still reach the metrics).
    pub async fn remove(&self, id: StreamId) -> Result<Option<StreamReport>, EngineError> {
        self.request(|tx| Command::Remove(id, tx)).await
    }

    /// Every stream and watched shared-echo call as it stands. Requests made while one is
    /// queued share its answer (one snapshot computed for all).
    pub async fn snapshot(&self) -> Result<Arc<MediaSnapshot>, EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.queue.snapshots.join(tx) {
            if let Err(e) = self.send(Command::Snapshot) {
                self.queue.snapshots.cancel();
                return Err(e);
            }
        }
        self.answer(rx).await
    }

    /// Refused commands and abandoned requests since start (atomics: answered while the
    /// engine is stuck too).
    pub fn counters(&self) -> EngineCounters {
        EngineCounters {
            commands_refused: self.queue.gate.refused(),
            requests_abandoned: self.queue.abandoned.load(Ordering::Relaxed),
        }
    }

    /// The table of watched shared-echo calls, which the shared echo's workers
    /// ([`crate::shared_echo`]) count into.
    pub fn shared_watches(&self) -> Arc<SharedWatches> {
        Arc::clone(&self.watches)
    }

    /// Watches a shared-echo call: datagrams reaching the shared echo socket from `peer`
    /// (Asterisk's side of the call's externalMedia channel) are counted for `id`, and the
    /// call is reported idle after `no_media_timeout` without one (zero: never), counted from
    /// now, so call this when media should flow. Watching an id again replaces its watch; a
    /// `peer` already watched for another id moves to this one (that address now belongs to
    /// this call). On a timeout the engine drops the watch when it gets to it. Refused with
    /// [`EngineError::Busy`] when the queue is full.
    pub async fn watch_shared(&self, id: StreamId, peer: SocketAddr, no_media_timeout: Duration) -> Result<(), EngineError> {
        self.request(|reply| Command::Watch { id, peer, no_media_timeout, reply }).await
    }

    /// Stops watching a shared-echo call; its final counters (None when it was not watched).
    /// Never refused, and carried out even after a timeout.
    pub async fn unwatch_shared(&self, id: StreamId) -> Result<Option<SharedReport>, EngineError> {
        self.request(|tx| Command::Unwatch(id, tx)).await
    }

    /// While `Some(silence)`, every stream and watched call whose media has stopped for at
    /// least `silence` (counted from its last packet, or from when media became expected) is
    /// reported once through the idle sink with [`IdleReason::SilentWhileLinkDown`]; setting
    /// `Some` again keeps what was reported. `None` ends that and re-arms the reports for the
    /// next time. Probe streams that have not started probing are never reported.
    pub fn set_link_down(&self, silence: Option<Duration>) -> Result<(), EngineError> {
        self.send(Command::LinkDown(silence))
    }

    /// Whether the engine's loop turns: answered from atomics, without asking the engine.
    pub fn liveness(&self) -> Liveness {
        self.health.liveness(Instant::now())
    }

    /// Fault injection: the engine thread sleeps for `d` (as if stuck in a syscall), so
    /// [`MediaHandle::liveness`] reports it stalled and requests time out.
    pub fn inject_stall(&self, d: Duration) -> Result<(), EngineError> {
        self.send(Command::Stall(d))
    }

    /// Fault injection: the engine thread panics with [`INJECTED_PANIC`].
    pub fn inject_panic(&self) -> Result<(), EngineError> {
        self.send(Command::Panic)
    }

    pub fn shutdown(&self) {
        let _ = self.send(Command::Shutdown);
    }
}

// One per stream, never moved after creation: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Work {
    Echo {
        stats: ReceiveStats,
        /// Keys (RTP timestamp, payload hash) of recently reflected packets.
        reflected: [u64; LOOP_RING],
        /// The (SSRC, sequence number) each of those packets arrived with: the same key with
        /// the same origin again is a network duplicate, with another origin it is our
        /// reflection coming back (Asterisk rewrote SSRC and sequence on the way).
        origin: [(u32, u16); LOOP_RING],
        next: usize,
    },
    Probe {
        probe: Box<ProbeStream>,
        /// Probing waits for the bridge: packets sent before it exists would count as lost.
        started: bool,
        timeout: Duration,
        late: Duration,
    },
}

/// What echo mode makes of a packet, from the ring of recently reflected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Not reflected recently.
    New,
    /// A copy of a packet we received (same key, same SSRC and sequence number): the network
    /// duplicated it. An echo returns what it gets, so it is reflected (and counted a duplicate).
    Duplicate,
    /// Our own reflection coming back (same key, another SSRC or sequence number).
    Loop,
}

/// Looks `key`, which arrived as `origin` (SSRC, sequence number), up in the ring.
fn seen(keys: &[u64; LOOP_RING], origins: &[(u32, u16); LOOP_RING], key: u64, origin: (u32, u16)) -> Seen {
    // Almost every packet is new: one scan of the keys alone settles that.
    if !keys.contains(&key) {
        return Seen::New;
    }
    // A duplicate wins over a loop: the copy of a packet whose reflection has also come back.
    let mut found = Seen::Loop;
    for (k, o) in keys.iter().zip(origins) {
        if *k == key && *o == origin {
            found = Seen::Duplicate;
        }
    }
    found
}

/// When media was last seen on a stream or watched call, and which silence reports it has
/// had. Pure: takes the time as an argument.
#[derive(Debug, Clone, Copy)]
struct Silence {
    last_rx: Option<Instant>,
    /// The first packet (how long after its start, or its takeover, a call's media flowed).
    first_rx: Option<Instant>,
    /// Since when media is expected (None: not yet, a probe stream before its bridge is up).
    expected_since: Option<Instant>,
    /// Report [`IdleReason::NoMedia`] after this long without media (zero: never).
    no_media_timeout: Duration,
    idle_reported: bool,
    link_down_reported: bool,
}

impl Silence {
    fn new(expected_since: Option<Instant>, no_media_timeout: Duration) -> Self {
        Silence {
            last_rx: None,
            first_rx: None,
            expected_since,
            no_media_timeout,
            idle_reported: false,
            link_down_reported: false,
        }
    }

    /// Media arrived at `at`.
    fn saw(&mut self, at: Instant) {
        self.last_rx = Some(at);
        self.first_rx.get_or_insert(at);
    }

    /// How long media has been missing: since the last packet or since it became expected,
    /// whichever is later. None while media is not expected.
    fn silent_for(&self, now: Instant) -> Option<Duration> {
        let since = self.expected_since?;
        let last = self.last_rx.map_or(since, |t| t.max(since));
        Some(now.saturating_duration_since(last))
    }

    /// The reason to report now, at most once each: no media for `no_media_timeout`; silent
    /// for `link_down` (the link to Asterisk is down). NoMedia first when both are due; the
    /// other follows at the next call.
    fn due(&mut self, now: Instant, link_down: Option<Duration>) -> Option<IdleReason> {
        let silent = self.silent_for(now)?;
        if !self.idle_reported && !self.no_media_timeout.is_zero() && silent >= self.no_media_timeout {
            self.idle_reported = true;
            return Some(IdleReason::NoMedia);
        }
        if !self.link_down_reported && link_down.is_some_and(|s| silent >= s) {
            self.link_down_reported = true;
            return Some(IdleReason::SilentWhileLinkDown);
        }
        None
    }
}

struct Stream {
    id: StreamId,
    mode: CallMode,
    socket: UdpSocket,
    /// Which of the batch's headers read this socket.
    family: Family,
    local_port: u16,
    peer: SocketAddr,
    work: Work,
    hist: LatencyHistogram,
    packets_in: u64,
    packets_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    dropped_foreign: u64,
    dropped_malformed: u64,
    dropped_loop: u64,
    send_errors: u64,
    loop_detected: bool,
    silence: Silence,
}

impl Stream {
    /// Adds this stream's counters to `t`: what the periodic flush needs, without the latency
    /// summary (percentiles walk the whole histogram; they are computed only on request).
    fn add_to(&self, t: &mut ModeTotals) {
        t.add_counts(
            self.packets_in,
            self.packets_out,
            self.dropped_foreign,
            self.dropped_malformed,
            self.dropped_loop,
            self.loop_detected,
        );
        match &self.work {
            Work::Echo { stats, .. } => t.add_measures(Some(&stats.snapshot()), None),
            Work::Probe { probe, .. } => t.add_measures(None, Some(&probe.snapshot())),
        }
    }

    /// Handles one RTP packet from `peer` that arrived at `at`: echo reflects it, probe
    /// matches it. Returns the latency sample it gave, in microseconds, already recorded in
    /// this stream's histogram (the caller adds it to the service-wide one).
    fn on_rtp(&mut self, pkt: &RtpPacket<'_>, data: &[u8], at: Instant) -> Option<u64> {
        self.packets_in += 1;
        self.bytes_in += data.len() as u64;
        self.silence.saw(at);
        let sample = match &mut self.work {
            Work::Echo { stats, reflected, origin, next } => {
                let key = loop_key(pkt.header.timestamp, pkt.payload);
                let from = (pkt.header.ssrc, pkt.header.sequence);
                let seen = seen(reflected, origin, key, from);
                if seen == Seen::Loop {
                    // Our own reflection came back: the far end echoes too. Reflecting it
                    // again would circulate media forever.
                    self.dropped_loop += 1;
                    if !self.loop_detected {
                        self.loop_detected = true;
                        log::warn!(
                            "[Media] media loop detected on port {} (far end echoes): loop packets are dropped",
                            self.local_port
                        );
                    }
                    return None;
                }
                let arrival = stats.update(pkt.header.sequence, pkt.header.timestamp, at);
                // A duplicate's original is in the ring already; a second entry would only
                // push an older packet out sooner.
                if seen == Seen::New {
                    reflected[*next] = key;
                    origin[*next] = from;
                    *next = (*next + 1) % LOOP_RING;
                }
                match self.socket.send_to(data, self.peer) {
                    Ok(_) => {
                        self.packets_out += 1;
                        self.bytes_out += data.len() as u64;
                    }
                    Err(_) => self.send_errors += 1,
                }
                (arrival.kind != ArrivalKind::Duplicate).then_some(arrival.delay)
            }
            Work::Probe { probe, .. } => match probe.on_payload(pkt.payload, at) {
                ProbeOutcome::Returned { rtt, .. } => Some(rtt),
                _ => None,
            },
        }?;
        // Converted once for both histograms.
        let us = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
        self.hist.record_us(us);
        Some(us)
    }

    fn report(&self, now: Instant) -> StreamReport {
        let (receive, probe) = match &self.work {
            Work::Echo { stats, .. } => (Some(stats.snapshot()), None),
            Work::Probe { probe, .. } => (None, Some(probe.snapshot())),
        };
        StreamReport {
            id: self.id,
            mode: self.mode,
            local_port: self.local_port,
            peer: self.peer,
            packets_in: self.packets_in,
            packets_out: self.packets_out,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            dropped_foreign: self.dropped_foreign,
            dropped_malformed: self.dropped_malformed,
            dropped_loop: self.dropped_loop,
            send_errors: self.send_errors,
            loop_detected: self.loop_detected,
            last_packet_ms_ago: ms_ago(self.silence.last_rx, now),
            first_packet_ms_ago: ms_ago(self.silence.first_rx, now),
            receive,
            probe,
            latency: self.hist.summary(),
        }
    }
}

/// Milliseconds from `t` to `now` (None: never).
fn ms_ago(t: Option<Instant>, now: Instant) -> Option<u64> {
    t.map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX))
}

/// A watched shared-echo call: counters of what reached the echo socket from its peer.
struct Watch {
    id: StreamId,
    peer: SocketAddr,
    packets: u64,
    bytes: u64,
    silence: Silence,
}

/// The watched shared-echo calls: the engine adds and removes watches and judges their
/// silence; the shared echo's workers ([`crate::shared_echo`], threads of their own) count what
/// they reflect into it, one lock per batch of datagrams and none while nothing is watched.
#[derive(Default)]
pub struct SharedWatches {
    table: Mutex<WatchTable>,
    /// How many calls are watched: read by the workers before they take the lock.
    watched: AtomicUsize,
    /// The echo's allow-list (unset when it answers everyone): a call whose Asterisk address
    /// it refuses is logged when its watch starts.
    allow: OnceLock<AllowList>,
}

/// Watched calls, in no order (removal swaps the last one in), and an index of them by peer:
/// the per-datagram lookup (a hash lookup of a `SocketAddr`, no allocation).
#[derive(Default)]
pub struct WatchTable {
    watches: Vec<Watch>,
    by_peer: HashMap<SocketAddr, usize>,
}

impl SharedWatches {
    /// The table, also after a worker panicked holding it (it holds counters only).
    fn lock(&self) -> MutexGuard<'_, WatchTable> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The table to count a batch into; None while no call is watched.
    pub fn counting(&self) -> Option<MutexGuard<'_, WatchTable>> {
        (self.watched.load(Ordering::Relaxed) > 0).then(|| self.lock())
    }

    /// The echo's allow-list, for the warning about calls it refuses (set once).
    pub fn set_allow(&self, allow: AllowList) {
        let _ = self.allow.set(allow);
    }

    fn publish_count(&self, t: &WatchTable) {
        self.watched.store(t.watches.len(), Ordering::Relaxed);
    }

    fn watch(&self, id: StreamId, peer: SocketAddr, no_media_timeout: Duration) {
        if let Some(allow) = self.allow.get() {
            if !allow.contains(peer.ip()) {
                log::warn!(
                    "[Media] shared-echo call {id}: Asterisk sends from {peer}, outside echo.allow ({allow}): its media will not be reflected"
                );
            }
        }
        let mut t = self.lock();
        t.unwatch(id);
        if let Some(&i) = t.by_peer.get(&peer) {
            let old = t.watches[i].id;
            log::warn!("[Media] shared-echo peer {peer} moves from call {old} to call {id}");
            t.unwatch(old);
        }
        let i = t.watches.len();
        t.by_peer.insert(peer, i);
        t.watches.push(Watch {
            id,
            peer,
            packets: 0,
            bytes: 0,
            silence: Silence::new(Some(Instant::now()), no_media_timeout),
        });
        self.publish_count(&t);
    }

    fn unwatch(&self, id: StreamId) -> Option<SharedReport> {
        let mut t = self.lock();
        let report = t.unwatch(id);
        self.publish_count(&t);
        report
    }
}

impl WatchTable {
    /// A datagram of `len` bytes from `from`, reflected; `at`: when it was read (idle
    /// detection needs milliseconds).
    pub fn count(&mut self, from: SocketAddr, len: usize, at: Instant) {
        if let Some(&w) = self.by_peer.get(&from) {
            let w = &mut self.watches[w];
            w.packets += 1;
            w.bytes += len as u64;
            w.silence.saw(at);
        }
    }

    fn unwatch(&mut self, id: StreamId) -> Option<SharedReport> {
        let i = self.watches.iter().position(|w| w.id == id)?;
        let w = self.watches.swap_remove(i);
        self.by_peer.remove(&w.peer);
        if let Some(moved) = self.watches.get(i) {
            self.by_peer.insert(moved.peer, i);
        }
        Some(w.report(Instant::now()))
    }
}

impl Watch {
    fn report(&self, now: Instant) -> SharedReport {
        SharedReport {
            id: self.id,
            peer: self.peer,
            packets: self.packets,
            bytes: self.bytes,
            last_packet_ms_ago: ms_ago(self.silence.last_rx, now),
            first_packet_ms_ago: ms_ago(self.silence.first_rx, now),
        }
    }
}

struct Engine {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    queue: Arc<Queue>,
    sink: FlushSink,
    idle: IdleSink,
    health: Arc<Health>,
    /// Slab of streams; index = token - FIRST_STREAM.
    streams: Vec<Option<Stream>>,
    free_slots: Vec<usize>,
    by_id: HashMap<StreamId, usize>,
    /// Probe send times, earliest first; entries of removed streams are skipped lazily.
    due: BinaryHeap<Reverse<(Instant, usize, StreamId)>>,
    /// Watched shared-echo calls, counted into by the shared echo's workers.
    watches: Arc<SharedWatches>,
    /// The silence after which streams are reported while the link to Asterisk is down.
    link_down: Option<Duration>,
    /// Latency samples since the last flush, per mode (echo, probe).
    delta: [LatencyHistogram; 2],
    delta_dirty: [bool; 2],
    /// Totals of the streams removed since the last flush, per mode (echo, probe).
    ended: [ModeTotals; 2],
    /// Call sockets are read through this, with kernel receive stamps.
    call_rx: Batch<CALL_BATCH>,
    /// Both clocks, read once per wake-up: turns kernel receive stamps into `Instant`s.
    clock: ClockPair,
    out: Box<[u8; PACKET_LEN]>,
    running: bool,
}

impl Drop for Engine {
    /// However the thread ends (shutdown, panic): the queue is closed first, so a request
    /// made from now on fails at once, then whoever waits for a queued snapshot is told there
    /// will be none ([`EngineError::Gone`]) instead of waiting out the timeout.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.rx, mpsc::channel().1));
        self.queue.snapshots.cancel();
    }
}

impl Engine {
    fn new(
        poll: Poll,
        rx: mpsc::Receiver<Command>,
        queue: Arc<Queue>,
        sink: FlushSink,
        idle: IdleSink,
        health: Arc<Health>,
        watches: Arc<SharedWatches>,
    ) -> Self {
        Engine {
            poll,
            rx,
            queue,
            sink,
            idle,
            health,
            streams: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::new(),
            due: BinaryHeap::new(),
            watches,
            link_down: None,
            delta: [LatencyHistogram::new(), LatencyHistogram::new()],
            delta_dirty: [false; 2],
            ended: [ModeTotals::default(); 2],
            call_rx: Batch::new(true),
            clock: ClockPair::now(),
            out: Box::new([0; PACKET_LEN]),
            running: true,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        // Commands were left on the queue at the end of the last turn: no wake-up will say so.
        let mut commands_left = false;
        while self.running {
            let now = Instant::now();
            self.health.turn(now);
            let mut wake_at = next_housekeeping;
            if let Some(Reverse((t, _, _))) = self.due.peek() {
                wake_at = wake_at.min(*t);
            }
            let timeout = if commands_left { Duration::ZERO } else { wake_at.saturating_duration_since(now) };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("[Media] poll failed: {e}");
                    thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            self.clock = ClockPair::now();
            let mut woken = commands_left;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => woken = true,
                    Token(t) => self.on_readable(t - FIRST_STREAM),
                }
            }
            if woken {
                commands_left = self.drain_commands();
            }
            let now = Instant::now();
            self.send_due_probes(now);
            if now >= next_housekeeping {
                self.housekeeping(now);
                next_housekeeping = now + HOUSEKEEPING;
            }
        }
        log::info!("[Media] engine stopped");
    }

    /// Handles at most [`COMMANDS_PER_TURN`] queued commands; true when some are left.
    fn drain_commands(&mut self) -> bool {
        for _ in 0..COMMANDS_PER_TURN {
            let Ok(cmd) = self.rx.try_recv() else { return false };
            if cmd.refusable() {
                self.queue.gate.leave();
            }
            self.handle(cmd);
        }
        true
    }

    fn abandoned(&self, n: usize) {
        self.queue.abandoned.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Add(spec, reply) => {
                if reply.is_closed() {
                    // The asker timed out and counts the add as failed; dropping the spec
                    // closes its socket.
                    self.abandoned(1);
                    return;
                }
                let id = spec.id;
                let added = self.add(*spec);
                let ok = added.is_ok();
                if reply.send(added).is_err() && ok {
                    // The asker gave up meanwhile: undo it, or the socket would stay open with
                    // nobody to remove it.
                    self.abandoned(1);
                    self.discard(id);
                }
            }
            Command::StartProbing(id) => self.start_probing(id),
            Command::Remove(id, reply) => {
                // Carried out even when the asker gave up: the stream must not outlive its
                // call. Only its report is not computed then.
                if reply.is_closed() {
                    self.abandoned(1);
                    self.remove(id, false);
                } else {
                    let _ = reply.send(self.remove(id, true));
                }
            }
            Command::Snapshot => {
                let (waiters, gave_up) = self.queue.snapshots.take();
                self.abandoned(gave_up);
                if !waiters.is_empty() {
                    let snapshot = Arc::new(self.snapshot(Instant::now()));
                    for w in waiters {
                        let _ = w.send(Arc::clone(&snapshot));
                    }
                }
            }
            Command::Watch { id, peer, no_media_timeout, reply } => {
                if reply.is_closed() {
                    self.abandoned(1);
                    return;
                }
                self.watches.watch(id, peer, no_media_timeout);
                if reply.send(()).is_err() {
                    self.abandoned(1);
                    self.watches.unwatch(id); // the asker gave up meanwhile
                }
            }
            Command::Unwatch(id, reply) => {
                let report = self.watches.unwatch(id);
                let _ = reply.send(report);
            }
            Command::LinkDown(silence) => {
                if silence.is_none() {
                    self.rearm_link_down();
                }
                self.link_down = silence;
            }
            Command::Stall(d) => {
                log::warn!("[Media] injected fault: the engine stalls for {d:?}");
                thread::sleep(d);
            }
            Command::Panic => panic!("{INJECTED_PANIC}"),
            Command::Shutdown => self.running = false,
        }
    }

    fn snapshot(&self, now: Instant) -> MediaSnapshot {
        MediaSnapshot {
            streams: self.streams.iter().flatten().map(|s| s.report(now)).collect(),
            shared: self.watches.lock().watches.iter().map(|w| w.report(now)).collect(),
        }
    }

    fn add(&mut self, spec: StreamSpec) -> io::Result<()> {
        if self.by_id.contains_key(&spec.id) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "stream id in use"));
        }
        // Drawn per stream, so a return cannot be forged from what `/channels` shows; kept by
        // `start_probing`'s rebuild. Before anything is registered: a failure leaves nothing.
        let secret = ProbeSecret::random().map_err(|e| io::Error::other(format!("no random probe secret: {e}")))?;
        spec.socket.set_nonblocking(true)?;
        // Every socket read through `call_rx` must stamp (see `sys::Batch`); a probe's round trip
        // and an echo packet's delay then end when the packet arrived, not when we read it.
        sys::enable_rx_timestamps(&spec.socket)?;
        let local = spec.socket.local_addr()?;
        let local_port = local.port();
        let mut socket = UdpSocket::from_std(spec.socket);
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.streams.push(None);
            self.streams.len() - 1
        });
        if let Err(e) = self.poll.registry().register(&mut socket, Token(slot + FIRST_STREAM), Interest::READABLE) {
            self.free_slots.push(slot);
            return Err(e);
        }
        let now = Instant::now();
        let work = match spec.mode {
            CallMode::Probe => Work::Probe {
                probe: Box::new(ProbeStream::new(
                    spec.id as u32,
                    secret,
                    0x5256_0000 ^ spec.id as u32,
                    spec.probe_timeout,
                    spec.late_threshold,
                    now,
                )),
                started: false,
                timeout: spec.probe_timeout,
                late: spec.late_threshold,
            },
            _ => Work::Echo {
                stats: ReceiveStats::new(8000, spec.late_threshold),
                reflected: [u64::MAX; LOOP_RING],
                origin: [(0, 0); LOOP_RING],
                next: 0,
            },
        };
        self.streams[slot] = Some(Stream {
            id: spec.id,
            mode: spec.mode,
            socket,
            family: Family::of(&local),
            local_port,
            peer: spec.peer,
            work,
            hist: LatencyHistogram::per_call(),
            packets_in: 0,
            packets_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            dropped_foreign: 0,
            dropped_malformed: 0,
            dropped_loop: 0,
            send_errors: 0,
            loop_detected: false,
            silence: Silence::new((spec.mode != CallMode::Probe).then_some(now), spec.no_media_timeout),
        });
        self.by_id.insert(spec.id, slot);
        Ok(())
    }

    fn start_probing(&mut self, id: StreamId) {
        let Some(&slot) = self.by_id.get(&id) else { return };
        if let Some(Stream { work: Work::Probe { probe, started, timeout, late }, silence, .. }) =
            self.streams[slot].as_mut()
        {
            if !*started {
                *started = true;
                let now = Instant::now();
                silence.expected_since = Some(now);
                // Re-anchored at the start so the schedule begins now, not at setup time.
                **probe = ProbeStream::new(id as u32, probe.secret(), 0x5256_0000 ^ id as u32, *timeout, *late, now);
                self.due.push(Reverse((now, slot, id)));
            }
        }
    }

    /// Takes a stream out of the poll and the slab; its socket closes when the result drops.
    fn take(&mut self, id: StreamId) -> Option<Stream> {
        let slot = self.by_id.remove(&id)?;
        let mut stream = self.streams[slot].take()?;
        let _ = self.poll.registry().deregister(&mut stream.socket);
        self.free_slots.push(slot);
        Some(stream)
    }

    /// Ends a stream: its final report when `report` (None when there is no such stream).
    /// Costs the same whatever the number of streams: no walk over the others.
    fn remove(&mut self, id: StreamId, report: bool) -> Option<StreamReport> {
        let mut stream = self.take(id)?;
        let now = Instant::now();
        if let Work::Probe { probe, .. } = &mut stream.work {
            probe.expire(now);
        }
        // The next flush computes `live` without this stream and carries these in `ended`:
        // the metrics never count it twice or not at all.
        stream.add_to(&mut self.ended[stream.mode.index().min(1)]);
        report.then(|| stream.report(now))
    }

    /// Drops a stream that was added in this same drain of commands (so no flush counted it
    /// yet) and that nobody knows of: no report.
    fn discard(&mut self, id: StreamId) {
        if self.take(id).is_some() {
            log::warn!("[Media] stream {id} dropped: its add was answered after the asker had given up");
        }
    }

    fn rearm_link_down(&mut self) {
        for s in self.streams.iter_mut().flatten() {
            s.silence.link_down_reported = false;
        }
        for w in &mut self.watches.lock().watches {
            w.silence.link_down_reported = false;
        }
    }

    fn on_readable(&mut self, slot: usize) {
        let Some(Some(stream)) = self.streams.get_mut(slot) else { return };
        loop {
            let n = match self.call_rx.recv(&stream.socket, stream.family) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    stream.send_errors += 1;
                    continue;
                }
            };
            for i in 0..n {
                let Some(d) = self.call_rx.get(i) else { break };
                if d.from != stream.peer {
                    stream.dropped_foreign += 1;
                    continue;
                }
                let Ok(pkt) = RtpPacket::parse(d.data) else {
                    stream.dropped_malformed += 1;
                    continue;
                };
                let at = self.clock.arrival(d.stamp_ns);
                if let Some(sample) = stream.on_rtp(&pkt, d.data, at) {
                    let mi = stream.mode.index();
                    self.delta[mi].record_us(sample);
                    self.delta_dirty[mi] = true;
                }
            }
            if n < CALL_BATCH {
                break; // drained: the next datagram raises a new edge
            }
        }
    }

    fn send_due_probes(&mut self, now: Instant) {
        while let Some(Reverse((t, slot, id))) = self.due.peek().copied() {
            if t > now {
                break;
            }
            self.due.pop();
            let Some(Some(stream)) = self.streams.get_mut(slot) else { continue };
            if stream.id != id {
                continue; // the slot was reused by another stream
            }
            let Work::Probe { probe, .. } = &mut stream.work else { continue };
            // Each probe's own send time: in a burst of due probes the last one leaves
            // hundreds of microseconds after `now`, which its round trip must not include.
            let len = probe.write_next(Instant::now(), &mut self.out[..]);
            match stream.socket.send_to(&self.out[..len], stream.peer) {
                Ok(_) => {
                    stream.packets_out += 1;
                    stream.bytes_out += len as u64;
                }
                Err(_) => stream.send_errors += 1,
            }
            self.due.push(Reverse((probe.next_due(), slot, id)));
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.call_rx.repair();
        let mut live = [ModeTotals::default(); 2];
        for stream in self.streams.iter_mut().flatten() {
            if let Work::Probe { probe, .. } = &mut stream.work {
                probe.expire(now);
            }
            while let Some(reason) = stream.silence.due(now, self.link_down) {
                (self.idle)(stream.id, reason);
            }
            stream.add_to(&mut live[stream.mode.index().min(1)]);
        }
        {
            let mut t = self.watches.lock();
            for w in &mut t.watches {
                while let Some(reason) = w.silence.due(now, self.link_down) {
                    (self.idle)(w.id, reason);
                }
            }
        }
        let mut latency_delta = [None, None];
        for (i, slot) in latency_delta.iter_mut().enumerate() {
            if self.delta_dirty[i] {
                *slot = Some(self.delta[i].clone());
                self.delta[i].reset();
                self.delta_dirty[i] = false;
            }
        }
        (self.sink)(MediaFlush { latency_delta, live, ended: std::mem::take(&mut self.ended) });
    }

}

/// Identifies a reflected packet when it comes back: Asterisk rewrites sequence numbers and
/// SSRC but passes the RTP timestamp and payload through unchanged.
fn loop_key(timestamp: u32, payload: &[u8]) -> u64 {
    // FNV-1a's constants, eight bytes at a time (a 160-byte payload: 20 dependent multiplies
    // instead of 160, ~9 ns instead of ~150 ns). Every step (xor, multiply by an odd number,
    // rotate) is a bijection of the state, so two payloads that differ in one word never
    // collide; the rotation carries high bits back into the low ones. Good enough to tell
    // packets of one stream apart, which is all the ring needs.
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(timestamp);
    let mut words = payload.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("chunks of 8"));
        h = (h ^ w).wrapping_mul(PRIME).rotate_left(23);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::echo_guard::GuardSettings;
    use crate::intensity::Intensity;
    use crate::rtp::{write_header, RtpHeader, HEADER_LEN};
    use crate::shared_echo::{EchoSettings, EchoWorkers};

    #[test]
    fn loop_key_tells_timestamp_and_payload_apart() {
        let a = loop_key(160, &[0xff; 160]);
        assert_eq!(a, loop_key(160, &[0xff; 160]));
        assert_ne!(a, loop_key(320, &[0xff; 160]));
        for at in [0, 7, 8, 159] {
            let mut p = [0xffu8; 160];
            p[at] = 0xfe;
            assert_ne!(a, loop_key(160, &p), "byte {at}");
        }
        // Lengths that are not a multiple of 8 use their tail too.
        assert_ne!(loop_key(160, &[1, 2, 3]), loop_key(160, &[1, 2, 4]));
        assert_ne!(loop_key(160, &[0; 9]), loop_key(160, &[0; 10]));
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    struct Harness {
        media: MediaHandle,
        flushes: mpsc::Receiver<MediaFlush>,
        idle: mpsc::Receiver<(StreamId, IdleReason)>,
        join: Option<thread::JoinHandle<()>>,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(EngineOptions::default(), || {})
        }

        fn with_flush_hook(hook: impl Fn() + Send + 'static) -> Self {
            Self::with(EngineOptions::default(), hook)
        }

        /// `hook` runs on the media thread at every flush, before the flush is passed on.
        fn with(opts: EngineOptions, hook: impl Fn() + Send + 'static) -> Self {
            let (ftx, flushes) = mpsc::channel();
            let (itx, idle) = mpsc::channel();
            let ftx = std::sync::Mutex::new(ftx);
            let itx = std::sync::Mutex::new(itx);
            let (media, join) = MediaHandle::start(
                Box::new(move |f| {
                    hook();
                    let _ = ftx.lock().unwrap().send(f);
                }),
                Box::new(move |id, reason| {
                    let _ = itx.lock().unwrap().send((id, reason));
                }),
                opts,
            )
            .unwrap();
            Harness { media, flushes, idle, join: Some(join) }
        }

        /// Idle notices that arrive within `within`.
        fn idle_within(&self, within: Duration) -> Vec<(StreamId, IdleReason)> {
            let until = Instant::now() + within;
            let mut got = Vec::new();
            while let Ok(n) = self.idle.recv_timeout(until.saturating_duration_since(Instant::now())) {
                got.push(n);
            }
            got
        }
    }

    impl Harness {
        /// The shared echo, one worker, counting into this engine's watches.
        fn echo(&self) -> EchoWorkers {
            let settings = EchoSettings { addr: "127.0.0.1:0".parse().unwrap(), workers: 1, guard: GuardSettings::default() };
            EchoWorkers::start(&settings, self.media.shared_watches(), Intensity::new(5, Duration::from_secs(10))).unwrap()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.media.shutdown();
            if let Some(j) = self.join.take() {
                // A test that made the engine panic has already joined it.
                j.join().unwrap();
            }
        }
    }

    fn udp() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    }

    fn rtp(seq: u16, ts: u32, fill: u8) -> Vec<u8> {
        let mut buf = vec![fill; HEADER_LEN + 160];
        let h = RtpHeader::pcmu(seq, ts, 7);
        write_header(&mut buf, &h).unwrap();
        buf
    }

    fn spec(id: StreamId, mode: CallMode, socket: std::net::UdpSocket, peer: SocketAddr) -> StreamSpec {
        StreamSpec {
            id,
            mode,
            socket,
            peer,
            late_threshold: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(500),
            no_media_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn echo_reflects_only_asterisk_and_breaks_media_loops() {
        let h = Harness::new();
        let asterisk = udp();
        let stranger = udp();
        let call = udp();
        let call_addr = call.local_addr().unwrap();
        block_on(h.media.add(spec(1, CallMode::Echo, call, asterisk.local_addr().unwrap()))).unwrap().unwrap();

        let first = rtp(1, 160, 0x11);
        asterisk.send_to(&first, call_addr).unwrap();
        let mut buf = [0u8; 2048];
        let (n, from) = asterisk.recv_from(&mut buf).expect("reflected");
        assert_eq!((&buf[..n], from), (&first[..], call_addr));

        // Anyone else is counted and ignored.
        stranger.send_to(&rtp(9, 999, 0x22), call_addr).unwrap();
        assert!(stranger.recv_from(&mut buf).is_err(), "a stranger must get nothing back");

        // The far end echoes our reflection back (Asterisk rewrote the sequence number): a loop.
        let mut looped = first.clone();
        looped[2..4].copy_from_slice(&500u16.to_be_bytes());
        asterisk.send_to(&looped, call_addr).unwrap();
        assert!(asterisk.recv_from(&mut buf).is_err(), "a looped packet must not be reflected again");

        // Not RTP.
        asterisk.send_to(b"hello", call_addr).unwrap();
        // New media still flows.
        let second = rtp(2, 320, 0x33);
        asterisk.send_to(&second, call_addr).unwrap();
        let (n, _) = asterisk.recv_from(&mut buf).expect("second reflected");
        assert_eq!(&buf[..n], &second[..]);

        let r = block_on(h.media.remove(1)).unwrap().expect("report");
        assert_eq!(r.packets_out, 2);
        assert_eq!(r.dropped_foreign, 1);
        assert_eq!(r.dropped_loop, 1);
        assert!(r.loop_detected);
        assert_eq!(r.dropped_malformed, 1);
        assert_eq!(r.receive.unwrap().lost, 0);
        assert_eq!(r.latency.count, 2);
        // Its figures travelled with a flush, for the metrics.
        let ended = h
            .flushes
            .iter()
            .find_map(|f| (f.ended[0].streams > 0).then_some(f.ended[0]))
            .expect("a flush with the ended stream");
        assert_eq!((ended.streams, ended.packets_out, ended.dropped_loop), (1, 2, 1));
        assert_eq!(block_on(h.media.remove(1)).unwrap(), None, "removing twice finds nothing");
    }

    #[test]
    fn probe_measures_round_trips_through_an_echoing_far_end() {
        let h = Harness::new();
        let far = udp();
        let call = udp();
        block_on(h.media.add(spec(2, CallMode::Probe, call, far.local_addr().unwrap()))).unwrap().unwrap();
        // Before start_probing nothing is sent.
        let mut buf = [0u8; 2048];
        assert!(far.recv_from(&mut buf).is_err());
        h.media.start_probing(2).unwrap();
        let mut echoed = 0;
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                far.send_to(&buf[..n], from).unwrap();
                echoed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let r = block_on(h.media.remove(2)).unwrap().expect("report");
        let p = r.probe.unwrap();
        assert!(echoed >= 15, "20 ms pacing over 400 ms: {echoed}");
        assert_eq!(p.returned, echoed);
        assert_eq!(p.lost, 0);
        assert_eq!(r.latency.count, p.returned);
        assert!(r.latency.max_ms < 50.0, "{:?}", r.latency);
    }

    #[test]
    fn a_probe_round_trip_excludes_the_time_the_engine_was_busy() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // Once armed, the next flush blocks the media thread for BUSY, telling the test when
        // it starts. The far end answers one probe during that time: the answer waits in the
        // socket until the engine is free, and that wait is not part of the round trip.
        const BUSY: Duration = Duration::from_millis(150);
        let armed = Arc::new(AtomicBool::new(false));
        let (busy_tx, busy_rx) = mpsc::channel();
        let busy_tx = std::sync::Mutex::new(busy_tx);
        let hook_armed = Arc::clone(&armed);
        let h = Harness::with_flush_hook(move || {
            if hook_armed.swap(false, Ordering::SeqCst) {
                let _ = busy_tx.lock().unwrap().send(());
                thread::sleep(BUSY);
            }
        });
        let far = udp();
        far.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        block_on(h.media.add(spec(4, CallMode::Probe, udp(), far.local_addr().unwrap()))).unwrap().unwrap();
        h.media.start_probing(4).unwrap();

        let mut buf = [0u8; 2048];
        let mut latest: Option<(Vec<u8>, SocketAddr)> = None;
        let until = Instant::now() + Duration::from_secs(3);
        let mut seen = 0;
        loop {
            assert!(Instant::now() < until, "the engine never blocked");
            if let Ok((n, from)) = far.recv_from(&mut buf) {
                latest = Some((buf[..n].to_vec(), from));
                seen += 1;
                if seen == 3 {
                    armed.store(true, Ordering::SeqCst);
                }
            }
            if busy_rx.try_recv().is_ok() {
                // The engine is blocked now: take what it sent last, and answer at once.
                while let Ok((n, from)) = far.recv_from(&mut buf) {
                    latest = Some((buf[..n].to_vec(), from));
                }
                let (pkt, from) = latest.take().expect("a probe before the block");
                far.send_to(&pkt, from).unwrap();
                break;
            }
        }
        thread::sleep(BUSY + Duration::from_millis(50));
        let r = block_on(h.media.remove(4)).unwrap().expect("report");
        assert_eq!(r.probe.unwrap().returned, 1);
        assert_eq!(r.latency.count, 1);
        // The probe was sent at most one 20 ms interval (plus scheduling) before the block;
        // counting the engine's busy time would make it >= 150 ms.
        assert!(r.latency.max_ms < 60.0, "round trip {} ms includes the engine's busy time", r.latency.max_ms);
    }

    #[test]
    fn a_stream_without_media_is_reported_idle_once() {
        let h = Harness::new();
        let asterisk = udp();
        let mut s = spec(3, CallMode::Echo, udp(), asterisk.local_addr().unwrap());
        s.no_media_timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        block_on(h.media.add(s)).unwrap().unwrap();
        let notice = h.idle.recv_timeout(Duration::from_secs(2)).expect("idle notice");
        assert_eq!(notice, (3, IdleReason::NoMedia));
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(h.idle.recv_timeout(Duration::from_millis(600)).is_err(), "reported once");
    }

    fn opts(request_ms: u64, stall_ms: u64) -> EngineOptions {
        EngineOptions {
            request_timeout: Duration::from_millis(request_ms),
            stall_bound: Duration::from_millis(stall_ms),
            ..EngineOptions::default()
        }
    }

    fn rtp_from(ssrc: u32, seq: u16, ts: u32, fill: u8) -> Vec<u8> {
        let mut buf = vec![fill; HEADER_LEN + 160];
        write_header(&mut buf, &RtpHeader::pcmu(seq, ts, ssrc)).unwrap();
        buf
    }

    // ---- pure parts ----

    #[test]
    fn options_need_a_timeout_and_a_stall_bound_beyond_housekeeping() {
        assert!(EngineOptions::default().check().is_ok());
        assert!(opts(0, 1000).check().is_err());
        assert!(opts(100, 250).check().is_err(), "an idle loop sleeps 250 ms");
        assert!(opts(100, 251).check().is_ok());
        assert!(EngineOptions { queue_capacity: 0, ..opts(100, 1000) }.check().is_err());
        let err = MediaHandle::start(Box::new(|_| {}), Box::new(|_, _| {}), opts(100, 100)).err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("stall bound"), "{err}");
    }

    #[test]
    fn engine_errors_say_what_happened() {
        assert_eq!(EngineError::Gone.to_string(), "the media engine is not running");
        assert_eq!(
            EngineError::Timeout(Duration::from_millis(1500)).to_string(),
            "the media engine did not answer within 1.5s"
        );
        assert_eq!(
            EngineError::Busy(1024).to_string(),
            "the media engine's command queue is full (1024 commands waiting): refused"
        );
    }

    #[test]
    fn the_ring_tells_new_duplicate_and_loop_apart() {
        let mut keys = [u64::MAX; LOOP_RING];
        let mut origins = [(0, 0); LOOP_RING];
        keys[5] = 42;
        origins[5] = (7, 100);
        assert_eq!(seen(&keys, &origins, 41, (7, 100)), Seen::New);
        assert_eq!(seen(&keys, &origins, 42, (7, 100)), Seen::Duplicate);
        assert_eq!(seen(&keys, &origins, 42, (7, 101)), Seen::Loop, "another sequence number");
        assert_eq!(seen(&keys, &origins, 42, (8, 100)), Seen::Loop, "another SSRC");
        // Two entries with one key (two received packets with equal timestamp and payload):
        // matching either's origin makes a duplicate, matching neither a loop.
        keys[60] = 42;
        origins[60] = (9, 1);
        assert_eq!(seen(&keys, &origins, 42, (7, 100)), Seen::Duplicate);
        assert_eq!(seen(&keys, &origins, 42, (9, 1)), Seen::Duplicate);
        assert_eq!(seen(&keys, &origins, 42, (9, 2)), Seen::Loop);
    }

    #[test]
    fn silence_is_reported_once_per_reason_and_link_down_rearms() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut s = Silence::new(Some(t0), Duration::from_millis(1000));
        assert_eq!(s.silent_for(ms(300)), Some(Duration::from_millis(300)));
        assert_eq!(s.due(ms(300), None), None);
        assert_eq!(s.due(ms(300), Some(Duration::from_millis(500))), None);
        assert_eq!(s.due(ms(500), Some(Duration::from_millis(500))), Some(IdleReason::SilentWhileLinkDown));
        assert_eq!(s.due(ms(900), Some(Duration::from_millis(500))), None, "once");
        assert_eq!(s.due(ms(1000), Some(Duration::from_millis(500))), Some(IdleReason::NoMedia));
        assert_eq!(s.due(ms(5000), Some(Duration::from_millis(500))), None);
        // A packet: silence counts from it.
        let mut s = Silence::new(Some(t0), Duration::ZERO);
        s.last_rx = Some(ms(800));
        assert_eq!(s.silent_for(ms(1000)), Some(Duration::from_millis(200)));
        assert_eq!(s.due(ms(1000), Some(Duration::from_millis(500))), None, "traffic 200 ms ago");
        assert_eq!(s.due(ms(60_000), None), None, "no_media_timeout zero: never idle");
        assert_eq!(s.due(ms(1300), Some(Duration::from_millis(500))), Some(IdleReason::SilentWhileLinkDown));
        s.link_down_reported = false; // what `set_link_down(None)` does
        assert_eq!(s.due(ms(1300), Some(Duration::from_millis(500))), Some(IdleReason::SilentWhileLinkDown));
        // Media not expected yet (a probe before its bridge): never reported.
        let mut s = Silence::new(None, Duration::from_millis(1));
        assert_eq!(s.silent_for(ms(60_000)), None);
        assert_eq!(s.due(ms(60_000), Some(Duration::ZERO)), None);
        // A packet before media was expected does not shorten the silence.
        let mut s = Silence::new(Some(ms(1000)), Duration::ZERO);
        s.last_rx = Some(ms(10));
        assert_eq!(s.silent_for(ms(1500)), Some(Duration::from_millis(500)));
    }

    // ---- the engine, with real sockets ----

    /// The next flush that `pick` finds something in, within 2 s.
    fn flush_where<T>(h: &Harness, mut pick: impl FnMut(&MediaFlush) -> Option<T>) -> T {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let f = h.flushes.recv_timeout(left).expect("no such flush within 2 s");
            if let Some(t) = pick(&f) {
                return t;
            }
        }
    }

    #[test]
    fn a_removed_streams_figures_move_from_live_to_ended_in_one_flush() {
        let h = Harness::new();
        let asterisk = udp();
        let (a, b) = (udp(), udp());
        let a_addr = a.local_addr().unwrap();
        block_on(h.media.add(spec(40, CallMode::Echo, a, asterisk.local_addr().unwrap()))).unwrap().unwrap();
        block_on(h.media.add(spec(41, CallMode::Echo, b, asterisk.local_addr().unwrap()))).unwrap().unwrap();
        let mut buf = [0u8; 2048];
        for seq in 0..3 {
            asterisk.send_to(&rtp(seq, u32::from(seq) * 160, 1), a_addr).unwrap();
            asterisk.recv_from(&mut buf).expect("reflected");
        }
        let live = flush_where(&h, |f| (f.live[0].packets_in == 3).then_some(f.live[0]));
        assert_eq!((live.streams, live.packets_out), (2, 3));
        let report = block_on(h.media.remove(40)).unwrap().expect("its report");
        assert_eq!(report.packets_in, 3);
        // The first flush without it in `live` carries it in `ended`, with the same figures.
        let (live, ended) = flush_where(&h, |f| (f.live[0].streams == 1).then_some((f.live[0], f.ended[0])));
        assert_eq!((live.packets_in, live.packets_out), (0, 0), "stream 41 got nothing");
        assert_eq!((ended.streams, ended.packets_in, ended.packets_out, ended.expected), (1, 3, 3, 3));
        let next = flush_where(&h, |f| Some(f.ended[0]));
        assert_eq!(next, ModeTotals::default(), "counted once");
    }

    #[test]
    fn more_removals_than_one_turn_handles_are_all_answered() {
        let h = Harness::new();
        let asterisk = udp().local_addr().unwrap();
        let n = 3 * COMMANDS_PER_TURN as u64 + 5;
        for id in 0..n {
            block_on(h.media.add(spec(id, CallMode::Echo, udp(), asterisk))).unwrap().unwrap();
        }
        let reports = block_on(futures_util::future::join_all((0..n).map(|id| h.media.remove(id))));
        let mut ids: Vec<StreamId> = reports.into_iter().map(|r| r.unwrap().expect("a report").id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
        // In the next flush or two (one may have come between the removals).
        let mut ended = 0;
        while ended < n {
            ended += flush_where(&h, |f| (f.ended[0].streams > 0).then_some(f.ended[0].streams));
        }
        assert_eq!(ended, n, "each counted once");
    }

    #[test]
    fn snapshots_asked_together_are_computed_once() {
        let h = Harness::with(opts(1000, 2000), || {});
        let asterisk = udp().local_addr().unwrap();
        block_on(h.media.add(spec(50, CallMode::Echo, udp(), asterisk))).unwrap().unwrap();
        h.media.inject_stall(Duration::from_millis(200)).unwrap();
        let snaps = block_on(futures_util::future::join_all((0..5).map(|_| h.media.snapshot())));
        let snaps: Vec<Arc<MediaSnapshot>> = snaps.into_iter().map(Result::unwrap).collect();
        assert!(snaps.iter().all(|s| Arc::ptr_eq(s, &snaps[0])), "one snapshot for the five");
        assert_eq!(snaps[0].streams.len(), 1);
        // Asked after that answer: computed anew.
        block_on(h.media.remove(50)).unwrap();
        let again = block_on(h.media.snapshot()).unwrap();
        assert!(!Arc::ptr_eq(&again, &snaps[0]));
        assert!(again.streams.is_empty());
    }

    #[test]
    fn requests_whose_asker_gave_up_are_not_computed_but_removals_are_carried_out() {
        let h = Harness::with(opts(100, 2000), || {});
        let asterisk = udp().local_addr().unwrap();
        block_on(h.media.add(spec(60, CallMode::Echo, udp(), asterisk))).unwrap().unwrap();
        h.media.inject_stall(Duration::from_millis(400)).unwrap();
        let timeout = EngineError::Timeout(Duration::from_millis(100));
        assert_eq!(block_on(h.media.snapshot()), Err(timeout));
        let peer = "127.0.0.1:9".parse().unwrap();
        assert_eq!(block_on(h.media.watch_shared(61, peer, Duration::ZERO)), Err(timeout));
        assert_eq!(block_on(h.media.remove(60)), Err(timeout));
        thread::sleep(Duration::from_millis(400));
        let snap = block_on(h.media.snapshot()).unwrap();
        assert!(snap.streams.is_empty(), "the removal was carried out: {snap:?}");
        assert!(snap.shared.is_empty(), "the watch was not: {snap:?}");
        assert_eq!(h.media.counters(), EngineCounters { commands_refused: 0, requests_abandoned: 3 });
        // The removed stream's figures still reached the metrics.
        let ended = flush_where(&h, |f| (f.ended[0].streams > 0).then_some(f.ended[0]));
        assert_eq!(ended.streams, 1);
    }

    #[test]
    fn a_full_queue_refuses_new_streams_and_counts_it_but_never_a_removal() {
        let h = Harness::with(EngineOptions { queue_capacity: 3, ..opts(100, 2000) }, || {});
        let asterisk = udp().local_addr().unwrap();
        block_on(h.media.add(spec(70, CallMode::Echo, udp(), asterisk))).unwrap().unwrap();
        h.media.inject_stall(Duration::from_millis(400)).unwrap();
        // Taken off the queue at once (the engine sleeps in it): three places are free.
        thread::sleep(Duration::from_millis(50));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let peer = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let queued: Vec<_> = (0..3u16)
            .map(|i| {
                let m = h.media.clone();
                rt.spawn(async move { m.watch_shared(80 + u64::from(i), peer(9000 + i), Duration::ZERO).await })
            })
            .collect();
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        assert_eq!(rt.block_on(h.media.watch_shared(90, peer(9100), Duration::ZERO)), Err(EngineError::Busy(3)));
        let r = rt.block_on(h.media.add(spec(91, CallMode::Echo, udp(), asterisk)));
        assert_eq!(r.unwrap_err(), EngineError::Busy(3));
        assert_eq!(h.media.inject_stall(Duration::from_millis(1)), Err(EngineError::Busy(3)));
        // A removal is never refused: it waits its turn (and times out here, stall or not).
        assert!(matches!(rt.block_on(h.media.remove(70)), Err(EngineError::Timeout(_))));
        for q in queued {
            assert!(matches!(rt.block_on(q).unwrap(), Err(EngineError::Timeout(_))));
        }
        assert_eq!(h.media.counters().commands_refused, 3);
        thread::sleep(Duration::from_millis(400));
        let snap = rt.block_on(h.media.snapshot()).unwrap();
        assert!(snap.streams.is_empty(), "stream 70 was removed: {snap:?}");
        // Room again once the engine has worked the queue off.
        rt.block_on(h.media.watch_shared(92, peer(9200), Duration::ZERO)).unwrap();
    }

    #[test]
    fn requests_time_out_while_the_engine_is_stuck_and_work_after() {
        let h = Harness::with(opts(150, 300), || {});
        h.media.inject_stall(Duration::from_millis(900)).unwrap();
        let t = Instant::now();
        assert_eq!(block_on(h.media.snapshot()), Err(EngineError::Timeout(Duration::from_millis(150))));
        assert_eq!(block_on(h.media.remove(1)), Err(EngineError::Timeout(Duration::from_millis(150))));
        assert!(matches!(
            block_on(h.media.watch_shared(9, "127.0.0.1:9".parse().unwrap(), Duration::ZERO)),
            Err(EngineError::Timeout(_))
        ));
        assert!(matches!(block_on(h.media.unwatch_shared(9)), Err(EngineError::Timeout(_))));
        assert!(t.elapsed() < Duration::from_millis(880), "each request waited only its timeout");
        // The engine answers again once the stall is over, and undid the watch whose asker
        // had given up.
        let snap = block_on(async {
            tokio::time::sleep(Duration::from_millis(900)).await;
            h.media.snapshot().await
        })
        .expect("answers after the stall");
        assert!(snap.shared.is_empty(), "{snap:?}");
    }

    #[test]
    fn an_add_answered_after_its_asker_gave_up_is_undone() {
        let h = Harness::with(opts(100, 2000), || {});
        let asterisk = udp();
        let call = udp();
        let call_addr = call.local_addr().unwrap();
        h.media.inject_stall(Duration::from_millis(400)).unwrap();
        let r = block_on(h.media.add(spec(5, CallMode::Echo, call, asterisk.local_addr().unwrap())));
        assert_eq!(r.unwrap_err(), EngineError::Timeout(Duration::from_millis(100)));
        thread::sleep(Duration::from_millis(400));
        let snap = block_on(h.media.snapshot()).unwrap();
        assert!(snap.streams.is_empty(), "the stream was dropped: {snap:?}");
        // Its socket is closed: nothing reflects, and the id is free again.
        asterisk.send_to(&rtp(1, 160, 1), call_addr).unwrap();
        let mut buf = [0u8; 2048];
        assert!(asterisk.recv_from(&mut buf).is_err());
        block_on(h.media.add(spec(5, CallMode::Echo, udp(), asterisk.local_addr().unwrap()))).unwrap().unwrap();
    }

    #[test]
    fn liveness_reports_an_injected_stall_and_recovers() {
        let h = Harness::with(opts(1000, 300), || {});
        assert_eq!(h.media.liveness(), Liveness::Running);
        // Idle for a while: the housekeeping wake-ups keep it running.
        thread::sleep(Duration::from_millis(700));
        assert_eq!(h.media.liveness(), Liveness::Running);
        h.media.inject_stall(Duration::from_millis(1200)).unwrap();
        let t = Instant::now();
        let stalled = loop {
            if let Liveness::Stalled { since } = h.media.liveness() {
                break since;
            }
            assert!(t.elapsed() < Duration::from_secs(1), "never stalled");
            thread::sleep(Duration::from_millis(20));
        };
        assert!(stalled > Duration::from_millis(300), "{stalled:?}");
        let t = Instant::now();
        while h.media.liveness() != Liveness::Running {
            assert!(t.elapsed() < Duration::from_secs(2), "never recovered: {:?}", h.media.liveness());
            thread::sleep(Duration::from_millis(20));
        }
        assert!(block_on(h.media.snapshot()).is_ok());
    }

    #[test]
    fn an_injected_panic_makes_the_engine_dead_with_its_message() {
        let mut h = Harness::new();
        h.media.inject_panic().unwrap();
        let join = h.join.take().unwrap();
        assert!(join.join().is_err(), "the thread ends as panicked");
        match h.media.liveness() {
            Liveness::Dead { reason } => assert_eq!(reason, format!("panicked: {INJECTED_PANIC}")),
            other => panic!("{other:?}"),
        }
        assert_eq!(block_on(h.media.snapshot()), Err(EngineError::Gone));
        assert_eq!(h.media.start_probing(1), Err(EngineError::Gone));
        assert_eq!(h.media.inject_stall(Duration::from_secs(1)), Err(EngineError::Gone));
    }

    #[test]
    fn an_engine_that_dies_with_a_snapshot_queued_says_so_at_once() {
        let mut h = Harness::with(opts(2000, 3000), || {});
        h.media.inject_stall(Duration::from_millis(200)).unwrap();
        h.media.inject_panic().unwrap();
        let t = Instant::now();
        // Queued behind the panic: the engine never gets to it.
        assert_eq!(block_on(h.media.snapshot()), Err(EngineError::Gone));
        assert_eq!(block_on(h.media.snapshot()), Err(EngineError::Gone));
        assert!(t.elapsed() < Duration::from_millis(1500), "no wait for the timeout: {:?}", t.elapsed());
        assert!(h.join.take().unwrap().join().is_err());
    }

    #[test]
    fn a_shut_down_engine_is_dead_too() {
        let mut h = Harness::new();
        h.media.shutdown();
        h.join.take().unwrap().join().unwrap();
        assert_eq!(h.media.liveness(), Liveness::Dead { reason: "shut down".into() });
        assert_eq!(block_on(h.media.remove(1)), Err(EngineError::Gone));
    }

    #[test]
    fn a_network_duplicate_is_reflected_and_counted_not_taken_for_a_loop() {
        let h = Harness::new();
        let asterisk = udp();
        let call = udp();
        let call_addr = call.local_addr().unwrap();
        block_on(h.media.add(spec(6, CallMode::Echo, call, asterisk.local_addr().unwrap()))).unwrap().unwrap();
        let mut buf = [0u8; 2048];
        let packets: Vec<Vec<u8>> = (0..4u16).map(|i| rtp_from(0xabc, 10 + i, 160 * u32::from(i), 0x40 + i as u8)).collect();
        for p in &packets {
            // The original, then the network's copy (same SSRC, sequence, timestamp, payload).
            asterisk.send_to(p, call_addr).unwrap();
            asterisk.send_to(p, call_addr).unwrap();
            for copy in 0..2 {
                let (n, _) = asterisk.recv_from(&mut buf).unwrap_or_else(|e| panic!("copy {copy} not reflected: {e}"));
                assert_eq!(&buf[..n], &p[..]);
            }
        }
        let snap = block_on(h.media.snapshot()).unwrap();
        let r = &snap.streams[0];
        let rx = r.receive.as_ref().unwrap();
        assert_eq!((r.packets_in, r.packets_out), (8, 8));
        assert_eq!((rx.duplicates, rx.lost, rx.expected), (4, 0, 4));
        assert_eq!((r.dropped_loop, r.loop_detected), (0, false));
        assert_eq!(r.latency.count, 4, "a duplicate gives no latency sample");

        // Our reflection of packet 3 coming back with Asterisk's SSRC and sequence: a loop,
        // even after the duplicates.
        let looped = rtp_from(0x5555, 9000, 160 * 3, 0x43);
        asterisk.send_to(&looped, call_addr).unwrap();
        assert!(asterisk.recv_from(&mut buf).is_err(), "a looped packet must not be reflected");
        let r = block_on(h.media.remove(6)).unwrap().unwrap();
        assert_eq!((r.dropped_loop, r.loop_detected), (1, true));
        assert_eq!(r.receive.unwrap().duplicates, 4);
    }

    #[test]
    fn watched_shared_calls_are_counted_reported_and_unwatched() {
        let h = Harness::new();
        let echo = h.echo();
        let echo_addr = echo.local_addr();
        let (a, b, c) = (udp(), udp(), udp());
        block_on(h.media.watch_shared(10, a.local_addr().unwrap(), Duration::ZERO)).unwrap();
        block_on(h.media.watch_shared(11, b.local_addr().unwrap(), Duration::ZERO)).unwrap();
        let mut buf = [0u8; 2048];
        for (sock, count, len) in [(&a, 3, 172), (&b, 1, 50), (&c, 2, 10)] {
            for _ in 0..count {
                sock.send_to(&vec![0x5a; len], echo_addr).unwrap();
                sock.recv_from(&mut buf).expect("reflected, watched or not");
            }
        }
        let snap = block_on(h.media.snapshot()).unwrap();
        let mut shared = snap.shared.clone();
        shared.sort_by_key(|s| s.id);
        assert_eq!(shared.len(), 2);
        assert_eq!((shared[0].id, shared[0].peer, shared[0].packets, shared[0].bytes), (10, a.local_addr().unwrap(), 3, 516));
        assert_eq!((shared[1].id, shared[1].packets, shared[1].bytes), (11, 1, 50));
        assert!(shared[0].last_packet_ms_ago.unwrap() < 1000);

        // Unwatching 10 moves 11 in the list; its counting goes on.
        let r = block_on(h.media.unwatch_shared(10)).unwrap().expect("final report");
        assert_eq!(r.packets, 3);
        assert_eq!(block_on(h.media.unwatch_shared(10)).unwrap(), None);
        a.send_to(b"x", echo_addr).unwrap();
        b.send_to(b"yy", echo_addr).unwrap();
        a.recv_from(&mut buf).unwrap();
        b.recv_from(&mut buf).unwrap();
        let snap = block_on(h.media.snapshot()).unwrap();
        assert_eq!(snap.shared.len(), 1);
        assert_eq!((snap.shared[0].id, snap.shared[0].packets, snap.shared[0].bytes), (11, 2, 52));

        // The same peer for another call: the address now belongs to that call.
        block_on(h.media.watch_shared(12, b.local_addr().unwrap(), Duration::ZERO)).unwrap();
        let snap = block_on(h.media.snapshot()).unwrap();
        assert_eq!(snap.shared.iter().map(|s| (s.id, s.packets)).collect::<Vec<_>>(), vec![(12, 0)]);
        assert_eq!(block_on(h.media.unwatch_shared(11)).unwrap(), None);
    }

    #[test]
    fn a_silent_shared_call_is_reported_idle_once() {
        let h = Harness::new();
        let echo = h.echo();
        let echo_addr = echo.local_addr();
        let talker = udp();
        let silent = udp();
        block_on(h.media.watch_shared(20, talker.local_addr().unwrap(), Duration::from_millis(300))).unwrap();
        block_on(h.media.watch_shared(21, silent.local_addr().unwrap(), Duration::from_millis(300))).unwrap();
        let until = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < until {
            talker.send_to(b"rtp", echo_addr).unwrap();
            thread::sleep(Duration::from_millis(40));
        }
        let got = h.idle_within(Duration::from_millis(100));
        assert_eq!(got, vec![(21, IdleReason::NoMedia)]);
    }

    #[test]
    fn link_down_reports_silent_streams_once_and_clearing_rearms() {
        let h = Harness::new();
        let echo = h.echo();
        let echo_addr = echo.local_addr();
        let talker = udp();
        let talker_call = udp();
        let talker_addr = talker_call.local_addr().unwrap();
        let asterisk = udp();
        let shared_peer = udp();
        block_on(h.media.add(spec(30, CallMode::Echo, talker_call, talker.local_addr().unwrap()))).unwrap().unwrap();
        block_on(h.media.add(spec(31, CallMode::Echo, udp(), asterisk.local_addr().unwrap()))).unwrap().unwrap();
        // A probe stream that has not started probing: no media expected, never reported.
        block_on(h.media.add(spec(32, CallMode::Probe, udp(), asterisk.local_addr().unwrap()))).unwrap().unwrap();
        block_on(h.media.watch_shared(33, shared_peer.local_addr().unwrap(), Duration::ZERO)).unwrap();

        // Stream 30 has traffic every 40 ms throughout.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_talking = Arc::clone(&stop);
        let chatter = thread::spawn(move || {
            let mut seq = 0u16;
            while !stop_talking.load(Ordering::SeqCst) {
                talker.send_to(&rtp(seq, u32::from(seq) * 160, seq as u8), talker_addr).unwrap();
                seq = seq.wrapping_add(1);
                thread::sleep(Duration::from_millis(40));
            }
        });
        // No report before the link is down.
        assert_eq!(h.idle_within(Duration::from_millis(600)), vec![]);

        h.media.set_link_down(Some(Duration::from_millis(300))).unwrap();
        let mut got = h.idle_within(Duration::from_millis(800));
        got.sort_by_key(|n| n.0);
        assert_eq!(got, vec![(31, IdleReason::SilentWhileLinkDown), (33, IdleReason::SilentWhileLinkDown)]);
        // Setting it again does not report again.
        h.media.set_link_down(Some(Duration::from_millis(200))).unwrap();
        assert_eq!(h.idle_within(Duration::from_millis(600)), vec![]);

        // Cleared: nothing; down again: reported again. The shared call talks meanwhile.
        h.media.set_link_down(None).unwrap();
        assert_eq!(h.idle_within(Duration::from_millis(400)), vec![]);
        shared_peer.send_to(b"rtp", echo_addr).unwrap();
        h.media.set_link_down(Some(Duration::from_millis(1500))).unwrap();
        let mut got = h.idle_within(Duration::from_millis(600));
        got.sort_by_key(|n| n.0);
        assert_eq!(got, vec![(31, IdleReason::SilentWhileLinkDown)], "33 spoke less than 1.5 s ago");
        stop.store(true, Ordering::SeqCst);
        chatter.join().unwrap();
    }
}
