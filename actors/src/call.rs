//! The call procedure as a state machine: pure, no IO (sans-IO, in the spirit of quinn-proto's
//! `Connection` and str0m's `Rtc`). It decides what to ask for next; the `ChannelActor` performs
//! each request (ARI, the port pool, the media engine, timers) and feeds the outcome back.
//!
//! Inputs ([`Input`]): outcomes of the requests it asked for, the externalMedia channel entering
//! Stasis, timer fires, and the end of the call (a resource gone in Asterisk, or the service
//! ending it). Outputs ([`Action`]): the next requests, in order, and reports for the
//! registry and the metrics.
//!
//! The procedure: lease and bind a port (not for shared-echo), create the externalMedia
//! channel, hand the socket to the media engine, create the bridge, add caller and
//! externalMedia channel (Asterisk answers 422 until the externalMedia channel has entered
//! Stasis: wait for that, retrying every [`ADD_RETRY`] for up to [`ADD_DEADLINE`]), answer the
//! caller if needed, start the media (probing, or the shared echo's watch). Then active until
//! the call ends. Teardown undoes exactly what may exist: a resource is counted as built from
//! the moment its request is sent, since a request that timed out may still be executed by
//! Asterisk (deleting one that does not exist is harmless).
//!
//! One request is in flight at a time during setup. An end that arrives meanwhile is kept and
//! acted on when that request's outcome arrives, so teardown always sees everything setup may
//! have built.
//!
//! Adoption ([`CallProcedure::adopt`]): a call a previous process of this instance set up and
//! left live in Asterisk (its externalMedia channel and bridge exist, the caller is bridged).
//! Only our side is rebuilt: lease and bind the same port again, read Asterisk's side of the
//! externalMedia channel, hand the socket to the media engine, start the media. A step that
//! fails ends the call (everything in Asterisk is ours to undo: it all exists).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::mode::CallMode;

/// How long setup keeps trying to add a new externalMedia channel to the bridge (422).
pub const ADD_DEADLINE: Duration = Duration::from_secs(2);
/// Retry interval of that when the channel's StasisStart does not come.
pub const ADD_RETRY: Duration = Duration::from_millis(100);

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    SettingUp,
    Active,
    TearingDown,
}

/// A setup step, named in failures and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Lease,
    ExternalMedia,
    AddStream,
    CreateBridge,
    AddToBridge,
    Answer,
    StartMedia,
    /// Adoption: read Asterisk's side of the existing externalMedia channel.
    ReadPeer,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Lease => "lease",
            Step::ExternalMedia => "externalMedia",
            Step::AddStream => "media stream",
            Step::CreateBridge => "bridge",
            Step::AddToBridge => "addChannel",
            Step::Answer => "answer",
            Step::StartMedia => "start media",
            Step::ReadPeer => "read Asterisk's media address",
        }
    }
}

/// Why the call ends, as the machine's user names it (kept as given, reported at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<R> {
    /// Tear down normally (hang up and destroy in Asterisk).
    Normal(R),
    /// Only our side (stream, port): Asterisk is out of reach; a reconciliation cleans there.
    Local(R),
}

/// What happens to the call, fed by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<R> {
    /// The port was leased and bound.
    Leased { port: u16 },
    /// No port: the call is refused.
    LeaseFailed { reason: String },
    /// Asterisk created the externalMedia channel; `peer` is its side (`UNICASTRTP_LOCAL_*`),
    /// None when the answer lacked it.
    ExternalMediaCreated { peer: Option<SocketAddr> },
    StreamAdded,
    BridgeCreated,
    AddedToBridge,
    /// addChannel answered 422: the externalMedia channel has not entered Stasis yet.
    AddToBridgeNotYet,
    /// Our externalMedia channel's StasisStart arrived (it may be added to the bridge now).
    MediaInStasis,
    Answered,
    MediaStarted,
    /// Adoption: Asterisk's side of the existing externalMedia channel (None: its channel
    /// variables were missing or unreadable).
    PeerRead { peer: Option<SocketAddr> },
    /// The request of `step` failed (error answer, timeout, reset, refusal).
    Failed { step: Step, error: String },
    /// A timer asked for with [`Action::Timer`] fired.
    TimerFired { token: u64 },
    /// End the call: from Asterisk (a resource gone) or the service.
    End(End<R>),
    /// The teardown asked for has been carried out.
    TornDown,
}

/// What to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<R> {
    LeaseAndBind,
    /// Adoption: lease exactly this port and bind it (it must be free).
    Rebind { port: u16 },
    /// Adoption: read Asterisk's side of the existing externalMedia channel.
    ReadPeer,
    /// Create the externalMedia channel toward our leased port (`Some`) or the shared echo.
    CreateExternalMedia { own_port: Option<u16> },
    /// Hand the bound socket to the media engine, accepting RTP from `peer` only.
    AddStream { peer: SocketAddr },
    CreateBridge,
    AddToBridge,
    Answer,
    StartProbing,
    /// Shared-echo: watch what reaches the echo from `peer`.
    WatchShared { peer: SocketAddr },
    /// Feed [`Input::TimerFired`] with this token after `after`.
    Timer { token: u64, after: Duration },
    /// Refused before anything was built: hang up the caller with congestion.
    Reject { reason: String },
    Teardown(Teardown),
    Report(Report<R>),
}

/// What teardown undoes, in this order: stop our media, hang up our externalMedia channel,
/// destroy our bridge, hang up the caller; the lease drops last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Teardown {
    pub remove_stream: bool,
    pub unwatch_shared: bool,
    pub hangup_media: bool,
    pub destroy_bridge: bool,
    pub hangup_caller: bool,
    /// Only our side: no request to Asterisk (it is out of reach).
    pub local: bool,
}

/// Facts for the registry, the metrics and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report<R> {
    /// Setup went as far as the media path: the call is live.
    Active,
    /// Setup failed at `step`; teardown follows.
    SetupFailed { step: Step, error: String },
    /// Teardown began.
    TearingDown { why: Why<R> },
    /// Refused before anything was built.
    Rejected { reason: String },
    /// All done: `setup_failed` tells a call that never went live.
    Finished { why: Why<R>, setup_failed: bool },
}

/// Why the teardown: the end asked for, a failed setup, or a failed adoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why<R> {
    Ended(R),
    SetupFailed,
    /// A step of taking the call over failed (e.g. its port is held by another process now).
    AdoptFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the outcome of this step's request.
    InFlight(Step),
    /// addChannel answered 422: waiting for the StasisStart or the retry timer.
    WaitingForStasis,
    Active,
    TearingDown,
    Done,
}

/// What exists of the call (or may: a request was sent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Built {
    port: Option<u16>,
    peer: Option<SocketAddr>,
    stream: bool,
    watch: bool,
    media_channel: bool,
    bridge: bool,
}

/// One call's procedure.
#[derive(Debug)]
pub struct CallProcedure<R> {
    mode: CallMode,
    caller_up: bool,
    phase: Phase,
    built: Built,
    /// An end that arrived while a request was in flight.
    pending_end: Option<End<R>>,
    /// The externalMedia channel's StasisStart arrived (kept for the next 422).
    media_in_stasis: bool,
    add_deadline: Option<Instant>,
    /// Token of the live retry timer; older fires are ignored.
    timer: u64,
    why: Option<Why<R>>,
    /// Taken over from Asterisk ([`CallProcedure::adopt`]), not set up by us.
    adopted: Option<Adopted>,
}

/// What an adopted call already has in Asterisk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The port its externalMedia channel sends to (None for shared-echo: the echo's).
    pub port: Option<u16>,
}

impl<R: Copy> CallProcedure<R> {
    /// A call of `mode` whose caller is already answered (`caller_up`) or not.
    pub fn new(mode: CallMode, caller_up: bool) -> Self {
        CallProcedure {
            mode,
            caller_up,
            phase: Phase::Done,
            built: Built::default(),
            pending_end: None,
            media_in_stasis: false,
            add_deadline: None,
            timer: 0,
            why: None,
            adopted: None,
        }
    }

    /// A call of `mode` that Asterisk holds set up (caller, externalMedia channel and bridge,
    /// bridged and answered): [`CallProcedure::start`] rebuilds only our side of it.
    pub fn adopt(mode: CallMode, adopted: Adopted) -> Self {
        let mut c = Self::new(mode, true);
        c.adopted = Some(adopted);
        c.built.media_channel = true;
        c.built.bridge = true;
        c
    }

    /// True for a call taken over from Asterisk.
    pub fn is_adopted(&self) -> bool {
        self.adopted.is_some()
    }

    /// Begins the setup (or, adopted, the takeover).
    pub fn start(&mut self) -> Vec<Action<R>> {
        if let Some(a) = self.adopted {
            return match a.port.filter(|_| self.mode.leases_port()) {
                Some(port) => {
                    self.phase = Phase::InFlight(Step::Lease);
                    vec![Action::Rebind { port }]
                }
                None => self.read_peer(),
            };
        }
        if self.mode.leases_port() {
            self.phase = Phase::InFlight(Step::Lease);
            vec![Action::LeaseAndBind]
        } else {
            self.request_external_media()
        }
    }

    /// Where the call is, for the registry.
    pub fn state(&self) -> CallState {
        if self.is_ending() {
            CallState::TearingDown
        } else if self.is_active() {
            CallState::Active
        } else {
            CallState::SettingUp
        }
    }

    /// True once setup went as far as the media path and the call has not begun to end.
    pub fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// True once teardown (or a refusal) has begun.
    pub fn is_ending(&self) -> bool {
        matches!(self.phase, Phase::TearingDown | Phase::Done) || self.why.is_some()
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done && self.why.is_some()
    }

    /// The leased port, once leased.
    pub fn port(&self) -> Option<u16> {
        self.built.port
    }

    /// Asterisk's side of the externalMedia channel, once known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.built.peer
    }

    /// Feeds one input at `now`; returns what to do next, in order.
    pub fn handle(&mut self, input: Input<R>, now: Instant) -> Vec<Action<R>> {
        match (self.phase, input) {
            (Phase::Done, _) => Vec::new(),
            (_, Input::End(end)) => self.on_end(end),
            (Phase::TearingDown, Input::TornDown) => {
                self.phase = Phase::Done;
                let why = self.why.unwrap_or(Why::SetupFailed);
                let setup_failed = matches!(why, Why::SetupFailed | Why::AdoptFailed);
                vec![Action::Report(Report::Finished { why, setup_failed })]
            }
            (Phase::TearingDown, _) => Vec::new(),
            (_, Input::MediaInStasis) => {
                self.media_in_stasis = true;
                if self.phase == Phase::WaitingForStasis {
                    self.phase = Phase::InFlight(Step::AddToBridge);
                    self.timer += 1; // the pending retry timer is stale now
                    vec![Action::AddToBridge]
                } else {
                    Vec::new()
                }
            }
            (Phase::WaitingForStasis, Input::TimerFired { token }) if token == self.timer => {
                self.phase = Phase::InFlight(Step::AddToBridge);
                vec![Action::AddToBridge]
            }
            (_, Input::TimerFired { .. }) => Vec::new(),
            (Phase::InFlight(step), input) => self.on_outcome(step, input, now),
            (Phase::WaitingForStasis | Phase::Active, _) => Vec::new(),
        }
    }

    fn on_end(&mut self, end: End<R>) -> Vec<Action<R>> {
        match self.phase {
            Phase::TearingDown | Phase::Done => Vec::new(),
            // The outcome of the request in flight decides what exists: end then.
            Phase::InFlight(_) => {
                if self.pending_end.is_none() {
                    self.pending_end = Some(end);
                }
                Vec::new()
            }
            Phase::WaitingForStasis | Phase::Active => self.teardown_for(end),
        }
    }

    /// The outcome of `step`'s request.
    fn on_outcome(&mut self, step: Step, input: Input<R>, now: Instant) -> Vec<Action<R>> {
        // Record what the outcome built before anything else: teardown must see it.
        match (&input, step) {
            (Input::Leased { port }, Step::Lease) => self.built.port = Some(*port),
            (Input::ExternalMediaCreated { peer }, Step::ExternalMedia) => self.built.peer = *peer,
            (Input::StreamAdded, Step::AddStream) => self.built.stream = true,
            (Input::PeerRead { peer }, Step::ReadPeer) => self.built.peer = *peer,
            _ => {}
        }
        match (step, input) {
            (Step::Lease, Input::LeaseFailed { reason }) if self.adopted.is_some() => self.fail(step, reason),
            (Step::Lease, Input::LeaseFailed { reason }) => {
                self.phase = Phase::Done;
                self.why = Some(Why::SetupFailed);
                vec![Action::Reject { reason: reason.clone() }, Action::Report(Report::Rejected { reason })]
            }
            (_, Input::Failed { step: failed, error }) if failed == step => self.fail(step, error),
            (_, _) if self.pending_end.is_some() => {
                let end = self.pending_end.take().expect("checked");
                self.teardown_for(end)
            }
            (Step::Lease, Input::Leased { .. }) if self.adopted.is_some() => self.read_peer(),
            (Step::ReadPeer, Input::PeerRead { peer }) => match peer {
                None => self.fail(step, "the externalMedia channel has no UNICASTRTP_LOCAL_ADDRESS/PORT variables".into()),
                Some(peer) if self.mode.leases_port() => {
                    self.phase = Phase::InFlight(Step::AddStream);
                    vec![Action::AddStream { peer }]
                }
                Some(_) => self.start_media(),
            },
            (Step::AddStream, Input::StreamAdded) if self.adopted.is_some() => self.start_media(),
            (Step::Lease, Input::Leased { port }) => {
                self.phase = Phase::InFlight(Step::ExternalMedia);
                self.built.media_channel = true;
                vec![Action::CreateExternalMedia { own_port: Some(port) }]
            }
            (Step::ExternalMedia, Input::ExternalMediaCreated { peer }) => match peer {
                None => self.fail(step, "externalMedia answer has no UNICASTRTP_LOCAL_ADDRESS/PORT channel variables".into()),
                Some(peer) if self.mode.leases_port() => {
                    self.phase = Phase::InFlight(Step::AddStream);
                    vec![Action::AddStream { peer }]
                }
                Some(_) => self.request_bridge(),
            },
            (Step::AddStream, Input::StreamAdded) => self.request_bridge(),
            (Step::CreateBridge, Input::BridgeCreated) => {
                self.phase = Phase::InFlight(Step::AddToBridge);
                self.add_deadline = Some(now + ADD_DEADLINE);
                vec![Action::AddToBridge]
            }
            (Step::AddToBridge, Input::AddedToBridge) => {
                if self.caller_up {
                    self.start_media()
                } else {
                    self.phase = Phase::InFlight(Step::Answer);
                    vec![Action::Answer]
                }
            }
            (Step::AddToBridge, Input::AddToBridgeNotYet) => {
                let deadline = self.add_deadline.unwrap_or(now);
                if now >= deadline {
                    let error = format!(
                        "addChannel still refused (422) {} ms after the bridge was created: the externalMedia channel never entered Stasis",
                        ADD_DEADLINE.as_millis()
                    );
                    self.fail(step, error)
                } else if std::mem::take(&mut self.media_in_stasis) {
                    // The StasisStart came meanwhile: try again at once.
                    vec![Action::AddToBridge]
                } else {
                    self.phase = Phase::WaitingForStasis;
                    self.timer += 1;
                    vec![Action::Timer { token: self.timer, after: ADD_RETRY.min(deadline - now) }]
                }
            }
            (Step::Answer, Input::Answered) => self.start_media(),
            (Step::StartMedia, Input::MediaStarted) => {
                self.phase = Phase::Active;
                vec![Action::Report(Report::Active)]
            }
            // An outcome that is not this step's (a stale or misrouted input): ignored.
            _ => Vec::new(),
        }
    }

    /// `step` failed: report it and tear down what may exist.
    fn fail(&mut self, step: Step, error: String) -> Vec<Action<R>> {
        let why = if self.adopted.is_some() { Why::AdoptFailed } else { Why::SetupFailed };
        let mut out = vec![Action::Report(Report::SetupFailed { step, error })];
        out.extend(self.teardown(why, false));
        out
    }

    fn read_peer(&mut self) -> Vec<Action<R>> {
        self.phase = Phase::InFlight(Step::ReadPeer);
        vec![Action::ReadPeer]
    }

    fn request_external_media(&mut self) -> Vec<Action<R>> {
        self.phase = Phase::InFlight(Step::ExternalMedia);
        self.built.media_channel = true;
        vec![Action::CreateExternalMedia { own_port: None }]
    }

    fn request_bridge(&mut self) -> Vec<Action<R>> {
        self.phase = Phase::InFlight(Step::CreateBridge);
        self.built.bridge = true;
        vec![Action::CreateBridge]
    }

    fn start_media(&mut self) -> Vec<Action<R>> {
        self.phase = Phase::InFlight(Step::StartMedia);
        match (self.mode, self.built.peer) {
            (CallMode::Probe, _) => vec![Action::StartProbing],
            (CallMode::SharedEcho, Some(peer)) => {
                self.built.watch = true;
                vec![Action::WatchShared { peer }]
            }
            // Echo reflects from the moment its stream was added.
            _ => {
                self.phase = Phase::Active;
                vec![Action::Report(Report::Active)]
            }
        }
    }

    fn teardown_for(&mut self, end: End<R>) -> Vec<Action<R>> {
        match end {
            End::Normal(r) => self.teardown(Why::Ended(r), false),
            End::Local(r) => self.teardown(Why::Ended(r), true),
        }
    }

    fn teardown(&mut self, why: Why<R>, local: bool) -> Vec<Action<R>> {
        self.phase = Phase::TearingDown;
        self.why = Some(why);
        self.pending_end = None;
        self.timer += 1;
        let b = self.built;
        vec![
            Action::Report(Report::TearingDown { why }),
            Action::Teardown(Teardown {
                remove_stream: b.stream,
                unwatch_shared: b.watch,
                hangup_media: b.media_channel && !local,
                destroy_bridge: b.bridge && !local,
                hangup_caller: !local,
                local,
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Act = Action<&'static str>;
    type In = Input<&'static str>;

    fn peer() -> SocketAddr {
        "127.0.0.1:31000".parse().unwrap()
    }

    /// Drives a call through `inputs`, returning every action in order.
    fn run(mode: CallMode, caller_up: bool, inputs: Vec<In>) -> (CallProcedure<&'static str>, Vec<Act>) {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(mode, caller_up);
        let mut out = c.start();
        for (i, input) in inputs.into_iter().enumerate() {
            out.extend(c.handle(input, t0 + Duration::from_millis(i as u64)));
        }
        (c, out)
    }

    fn teardown_of(out: &[Act]) -> Teardown {
        let t: Vec<Teardown> = out.iter().filter_map(|a| if let Action::Teardown(t) = a { Some(*t) } else { None }).collect();
        assert_eq!(t.len(), 1, "exactly one teardown: {out:?}");
        t[0]
    }

    fn up_to_bridge() -> Vec<In> {
        vec![In::Leased { port: 10000 }, In::ExternalMediaCreated { peer: Some(peer()) }, In::StreamAdded, In::BridgeCreated]
    }

    #[test]
    fn a_probe_call_is_set_up_in_order() {
        let mut inputs = up_to_bridge();
        inputs.extend([In::AddedToBridge, In::Answered, In::MediaStarted]);
        let (c, out) = run(CallMode::Probe, false, inputs);
        assert_eq!(
            out,
            vec![
                Act::LeaseAndBind,
                Act::CreateExternalMedia { own_port: Some(10000) },
                Act::AddStream { peer: peer() },
                Act::CreateBridge,
                Act::AddToBridge,
                Act::Answer,
                Act::StartProbing,
                Act::Report(Report::Active),
            ]
        );
        assert!(c.is_active());
        assert_eq!((c.port(), c.peer()), (Some(10000), Some(peer())));
    }

    #[test]
    fn an_answered_echo_call_skips_answer_and_is_active_once_bridged() {
        let mut inputs = up_to_bridge();
        inputs.push(In::AddedToBridge);
        let (c, out) = run(CallMode::Echo, true, inputs);
        assert_eq!(out.last(), Some(&Act::Report(Report::Active)));
        assert!(!out.contains(&Act::Answer));
        assert!(c.is_active());
    }

    #[test]
    fn a_shared_echo_call_leases_nothing_and_is_watched() {
        let (c, out) = run(
            CallMode::SharedEcho,
            true,
            vec![In::ExternalMediaCreated { peer: Some(peer()) }, In::BridgeCreated, In::AddedToBridge, In::MediaStarted],
        );
        assert_eq!(out[0], Act::CreateExternalMedia { own_port: None });
        assert!(out.contains(&Act::WatchShared { peer: peer() }));
        assert!(!out.iter().any(|a| matches!(a, Act::LeaseAndBind | Act::AddStream { .. })));
        assert!(c.is_active());
    }

    #[test]
    fn no_port_refuses_the_call_and_builds_nothing() {
        let (c, out) = run(CallMode::Echo, false, vec![In::LeaseFailed { reason: "no free RTP port".into() }]);
        assert_eq!(
            out,
            vec![
                Act::LeaseAndBind,
                Act::Reject { reason: "no free RTP port".into() },
                Act::Report(Report::Rejected { reason: "no free RTP port".into() }),
            ]
        );
        assert!(c.is_done());
    }

    /// Each setup step failing (error, timeout, reset: all arrive as `Failed`) tears down
    /// exactly what was requested up to it.
    #[test]
    fn each_step_failing_tears_down_what_was_requested() {
        let steps: [(Step, usize, Teardown); 6] = [
            (Step::ExternalMedia, 1, Teardown { hangup_media: true, hangup_caller: true, ..Teardown::default() }),
            (Step::AddStream, 2, Teardown { hangup_media: true, hangup_caller: true, ..Teardown::default() }),
            (Step::CreateBridge, 3, Teardown { remove_stream: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }),
            (Step::AddToBridge, 4, Teardown { remove_stream: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }),
            (Step::Answer, 5, Teardown { remove_stream: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }),
            (Step::StartMedia, 6, Teardown { remove_stream: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }),
        ];
        let ok: Vec<In> = vec![
            In::Leased { port: 10000 },
            In::ExternalMediaCreated { peer: Some(peer()) },
            In::StreamAdded,
            In::BridgeCreated,
            In::AddedToBridge,
            In::Answered,
        ];
        for (step, n, want) in steps {
            let mut inputs: Vec<In> = ok[..n].to_vec();
            inputs.push(In::Failed { step, error: "ARI answered 500".into() });
            let (mut c, out) = run(CallMode::Probe, false, inputs);
            assert!(out.contains(&Act::Report(Report::SetupFailed { step, error: "ARI answered 500".into() })), "{step:?}: {out:?}");
            assert_eq!(teardown_of(&out), want, "{step:?}");
            assert!(!c.is_done(), "waits for the teardown");
            let fin = c.handle(In::TornDown, Instant::now());
            assert_eq!(fin, vec![Act::Report(Report::Finished { why: Why::SetupFailed, setup_failed: true })]);
            assert!(c.is_done());
        }
    }

    #[test]
    fn an_external_media_answer_without_its_address_fails_the_setup() {
        let (_, out) = run(CallMode::Echo, false, vec![In::Leased { port: 1 }, In::ExternalMediaCreated { peer: None }]);
        assert!(matches!(out[2], Act::Report(Report::SetupFailed { step: Step::ExternalMedia, .. })));
        assert_eq!(teardown_of(&out), Teardown { hangup_media: true, hangup_caller: true, ..Teardown::default() });
    }

    #[test]
    fn a_hangup_during_setup_waits_for_the_request_in_flight_then_tears_down_all_it_built() {
        // The caller hangs up while the bridge request is in flight: the bridge may exist.
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, false);
        c.start();
        c.handle(In::Leased { port: 7 }, t0);
        c.handle(In::ExternalMediaCreated { peer: Some(peer()) }, t0);
        assert_eq!(c.handle(In::StreamAdded, t0), vec![Act::CreateBridge]);
        assert_eq!(c.handle(In::End(End::Normal("caller hung up")), t0), vec![], "kept until the outcome");
        let out = c.handle(In::BridgeCreated, t0);
        assert_eq!(
            teardown_of(&out),
            Teardown { remove_stream: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, local: false, ..Teardown::default() }
        );
        assert!(out.contains(&Act::Report(Report::TearingDown { why: Why::Ended("caller hung up") })));
        assert!(!out.contains(&Act::AddToBridge), "setup goes no further");
        // A second end, or late outcomes, change nothing.
        assert_eq!(c.handle(In::End(End::Normal("again")), t0), vec![]);
        assert_eq!(c.handle(In::AddedToBridge, t0), vec![]);
        assert_eq!(
            c.handle(In::TornDown, t0),
            vec![Act::Report(Report::Finished { why: Why::Ended("caller hung up"), setup_failed: false })]
        );
    }

    #[test]
    fn an_end_while_the_lease_is_in_flight_hangs_up_the_caller_only() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Probe, false);
        c.start();
        c.handle(In::End(End::Normal("shutdown")), t0);
        let out = c.handle(In::Leased { port: 9 }, t0);
        assert_eq!(teardown_of(&out), Teardown { hangup_caller: true, ..Teardown::default() });
        assert_eq!(c.port(), Some(9), "the lease is the driver's to drop");
    }

    #[test]
    fn a_request_that_fails_after_an_end_was_asked_is_still_a_failed_setup() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, false);
        c.start();
        c.handle(In::Leased { port: 9 }, t0);
        c.handle(In::End(End::Normal("hangup")), t0);
        let out = c.handle(In::Failed { step: Step::ExternalMedia, error: "timeout".into() }, t0);
        assert_eq!(teardown_of(&out), Teardown { hangup_media: true, hangup_caller: true, ..Teardown::default() });
        assert!(out.contains(&Act::Report(Report::TearingDown { why: Why::SetupFailed })));
    }

    #[test]
    fn addchannel_422_waits_for_the_stasis_start_then_retries_at_once() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, true);
        c.start();
        for i in up_to_bridge() {
            c.handle(i, t0);
        }
        let out = c.handle(In::AddToBridgeNotYet, t0);
        assert_eq!(out, vec![Act::Timer { token: 1, after: ADD_RETRY }]);
        assert_eq!(c.handle(In::MediaInStasis, t0), vec![Act::AddToBridge]);
        assert_eq!(c.handle(In::TimerFired { token: 1 }, t0), vec![], "the timer is stale: no second addChannel");
        assert_eq!(c.handle(In::AddedToBridge, t0), vec![Act::Report(Report::Active)]);
    }

    #[test]
    fn a_stasis_start_before_the_422_is_kept() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, true);
        c.start();
        for i in up_to_bridge() {
            c.handle(i, t0);
        }
        assert_eq!(c.handle(In::MediaInStasis, t0), vec![], "addChannel is in flight");
        assert_eq!(c.handle(In::AddToBridgeNotYet, t0), vec![Act::AddToBridge], "retried at once");
    }

    #[test]
    fn addchannel_retries_on_the_timer_and_gives_up_at_the_deadline() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, true);
        c.start();
        for i in up_to_bridge() {
            c.handle(i, t0);
        }
        let mut now = t0;
        let mut tries = 0;
        loop {
            let out = c.handle(In::AddToBridgeNotYet, now);
            match out.as_slice() {
                [Act::Timer { token, after }] => {
                    now += *after;
                    assert_eq!(c.handle(In::TimerFired { token: *token }, now), vec![Act::AddToBridge]);
                    tries += 1;
                }
                _ => {
                    assert!(matches!(out[0], Act::Report(Report::SetupFailed { step: Step::AddToBridge, .. })), "{out:?}");
                    assert!(teardown_of(&out).destroy_bridge);
                    break;
                }
            }
            assert!(tries < 100, "bounded");
        }
        assert_eq!(now - t0, ADD_DEADLINE, "retried every 100 ms up to the deadline");
        assert_eq!(tries, 20);
    }

    #[test]
    fn a_hangup_while_waiting_for_stasis_tears_down_at_once() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, true);
        c.start();
        for i in up_to_bridge() {
            c.handle(i, t0);
        }
        c.handle(In::AddToBridgeNotYet, t0);
        let out = c.handle(In::End(End::Normal("caller hung up")), t0);
        assert!(teardown_of(&out).destroy_bridge);
        assert_eq!(c.handle(In::TimerFired { token: 1 }, t0), vec![], "the timer is dead");
    }

    #[test]
    fn an_active_call_ends_once_and_a_local_end_sends_nothing_to_asterisk() {
        let mut inputs = up_to_bridge();
        inputs.extend([In::AddedToBridge, In::Answered, In::MediaStarted]);
        let (mut c, _) = run(CallMode::Probe, false, inputs);
        let out = c.handle(In::End(End::Local("silent while the link is down")), Instant::now());
        assert_eq!(
            teardown_of(&out),
            Teardown { remove_stream: true, local: true, ..Teardown::default() },
            "stream and port only"
        );
        assert_eq!(c.handle(In::End(End::Normal("caller hung up")), Instant::now()), vec![], "the first end wins");
        let fin = c.handle(In::TornDown, Instant::now());
        assert_eq!(
            fin,
            vec![Act::Report(Report::Finished { why: Why::Ended("silent while the link is down"), setup_failed: false })]
        );
        assert_eq!(c.handle(In::TornDown, Instant::now()), vec![], "done is done");
    }

    #[test]
    fn a_shared_echo_call_ended_unwatches_its_peer() {
        let (mut c, _) = run(
            CallMode::SharedEcho,
            true,
            vec![In::ExternalMediaCreated { peer: Some(peer()) }, In::BridgeCreated, In::AddedToBridge, In::MediaStarted],
        );
        let out = c.handle(In::End(End::Normal("shutdown")), Instant::now());
        assert_eq!(
            teardown_of(&out),
            Teardown { unwatch_shared: true, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }
        );
    }

    #[test]
    fn outcomes_of_another_step_are_ignored() {
        let t0 = Instant::now();
        let mut c = CallProcedure::new(CallMode::Echo, true);
        c.start();
        assert_eq!(c.handle(In::BridgeCreated, t0), vec![], "not the lease's outcome");
        assert_eq!(c.handle(In::Failed { step: Step::Answer, error: "x".into() }, t0), vec![], "not this step");
        assert_eq!(c.handle(In::Leased { port: 1 }, t0), vec![Act::CreateExternalMedia { own_port: Some(1) }]);
    }

    fn adopt_run(mode: CallMode, port: Option<u16>, inputs: Vec<In>) -> (CallProcedure<&'static str>, Vec<Act>) {
        let t0 = Instant::now();
        let mut c = CallProcedure::adopt(mode, Adopted { port });
        let mut out = c.start();
        for input in inputs {
            out.extend(c.handle(input, t0));
        }
        (c, out)
    }

    #[test]
    fn an_adopted_call_rebuilds_only_our_side() {
        for (mode, last) in [(CallMode::Probe, Some(Act::StartProbing)), (CallMode::Echo, None)] {
            let mut inputs = vec![In::Leased { port: 10007 }, In::PeerRead { peer: Some(peer()) }, In::StreamAdded];
            if last.is_some() {
                inputs.push(In::MediaStarted);
            }
            let (c, out) = adopt_run(mode, Some(10007), inputs);
            let mut want = vec![Act::Rebind { port: 10007 }, Act::ReadPeer, Act::AddStream { peer: peer() }];
            want.extend(last);
            want.push(Act::Report(Report::Active));
            assert_eq!(out, want, "{mode:?}");
            assert!(c.is_active() && c.is_adopted());
            assert_eq!((c.port(), c.peer()), (Some(10007), Some(peer())));
        }
    }

    #[test]
    fn an_adopted_shared_echo_call_reads_its_peer_and_is_watched() {
        let (c, out) = adopt_run(CallMode::SharedEcho, None, vec![In::PeerRead { peer: Some(peer()) }, In::MediaStarted]);
        assert_eq!(out, vec![Act::ReadPeer, Act::WatchShared { peer: peer() }, Act::Report(Report::Active)]);
        assert!(c.is_active());
        assert_eq!(c.port(), None);
    }

    #[test]
    fn a_port_taken_meanwhile_ends_the_adopted_call_with_everything_in_asterisk() {
        let (mut c, out) = adopt_run(CallMode::Echo, Some(10007), vec![In::LeaseFailed { reason: "port 10007 in use".into() }]);
        assert!(matches!(out[1], Act::Report(Report::SetupFailed { step: Step::Lease, .. })), "{out:?}");
        assert_eq!(
            teardown_of(&out),
            Teardown { hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() },
            "not a refusal: the call exists in Asterisk and is ended there"
        );
        assert!(!out.iter().any(|a| matches!(a, Act::Reject { .. })));
        let fin = c.handle(In::TornDown, Instant::now());
        assert_eq!(fin, vec![Act::Report(Report::Finished { why: Why::AdoptFailed, setup_failed: true })]);
    }

    #[test]
    fn each_adoption_step_failing_ends_the_call_cleanly() {
        let steps: Vec<(Vec<In>, Step, bool)> = vec![
            (vec![In::Leased { port: 10007 }, In::PeerRead { peer: None }], Step::ReadPeer, false),
            (vec![In::Leased { port: 10007 }, In::Failed { step: Step::ReadPeer, error: "404".into() }], Step::ReadPeer, false),
            (
                vec![In::Leased { port: 10007 }, In::PeerRead { peer: Some(peer()) }, In::Failed { step: Step::AddStream, error: "x".into() }],
                Step::AddStream,
                false,
            ),
            (
                vec![In::Leased { port: 10007 }, In::PeerRead { peer: Some(peer()) }, In::StreamAdded, In::Failed { step: Step::StartMedia, error: "x".into() }],
                Step::StartMedia,
                true,
            ),
        ];
        for (inputs, step, stream) in steps {
            let (c, out) = adopt_run(CallMode::Probe, Some(10007), inputs);
            assert!(out.iter().any(|a| matches!(a, Act::Report(Report::SetupFailed { step: s, .. }) if *s == step)), "{step:?}: {out:?}");
            assert_eq!(
                teardown_of(&out),
                Teardown { remove_stream: stream, hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() },
                "{step:?}"
            );
            assert!(c.is_ending());
        }
    }

    #[test]
    fn a_hangup_during_adoption_waits_for_the_request_in_flight_and_counts_as_a_hangup() {
        let (mut c, out) = adopt_run(CallMode::Echo, Some(10007), vec![In::Leased { port: 10007 }, In::End(End::Normal("caller ended"))]);
        assert_eq!(out, vec![Act::Rebind { port: 10007 }, Act::ReadPeer], "kept until the read answers");
        let out = c.handle(In::PeerRead { peer: Some(peer()) }, Instant::now());
        assert_eq!(
            teardown_of(&out),
            Teardown { hangup_media: true, destroy_bridge: true, hangup_caller: true, ..Teardown::default() }
        );
        let fin = c.handle(In::TornDown, Instant::now());
        assert_eq!(fin, vec![Act::Report(Report::Finished { why: Why::Ended("caller ended"), setup_failed: false })]);
    }
}
