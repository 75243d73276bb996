//! ChannelActor: one per call, the thin driver of the call's [`CallProcedure`]. The procedure
//! (pure, in `crate::call`) decides each step; this actor performs it (the port pool, ARI, the
//! media engine, timers) and feeds the outcome back, and tells the call's owner and the metrics
//! what happened. It owns the call's lease: the port goes back when the actor's state drops,
//! even on panic.
//!
//! It reports to its owner through recipients ([`CallOwner`]), not the owner's address: the
//! Supervisor depends on this module, never the other way round.

mod messages;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt;

use super::call_io::{self, FinalMedia};
use super::metrics::{CallEnded, CallOutcome, CallRejected, CallStarted, EndReason};
use super::port_manager::Lease;
use crate::ari::model::{ExternalMediaParams, HangupReason};
pub use crate::call::CallState;
pub use messages::*;
use crate::call::{Action, Adopted, CallProcedure, End, Input, Report, Step, Why};
use crate::ended::{self, CallSummary, Times};
use crate::media::StreamSpec;
use crate::mode::CallMode;
use crate::naming::{bridge_id, call_tag, external_media_id, host_port, CallTag};
pub use crate::registry::Gone;
use crate::sys::unix_ms;

/// Why a call ends, as the procedure carries it to the end: the reason counted, and the words
/// for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    pub reason: EndReason,
    pub why: &'static str,
    pub event: Option<&'static str>,
}

/// Tells the owner when the actor ends without finishing its call: a panic in a handler drops
/// the actor (actix does not restart it) and with it this guard. An actor that ended its call
/// properly disarms it first.
struct ExitGuard {
    failed: Recipient<ChannelFailed>,
    caller_id: String,
    call_no: u64,
    mode: CallMode,
    armed: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.armed {
            self.failed.do_send(ChannelFailed {
                caller_id: self.caller_id.clone(),
                call_no: self.call_no,
                mode: self.mode,
            });
        }
    }
}

pub struct ChannelActor {
    call_no: u64,
    caller_id: String,
    mode: CallMode,
    cx: CallContext,
    call: CallProcedure<Ending>,
    /// The call's port, once leased; dropped last in teardown (or with the actor).
    lease: Option<Lease>,
    /// The bound socket until the media engine takes it.
    socket: Option<UdpSocket>,
    started_at: Instant,
    /// When the call became live: the instant, and Unix ms (`GET /calls/ended`).
    active_at: Option<(Instant, u64)>,
    /// When its teardown began: the end of its live time.
    ending_at: Option<Instant>,
    /// Unix ms when this process took the call over from Asterisk (None: it set it up).
    adopted_at_ms: Option<u64>,
    /// The call's final media figures, from the media engine at teardown.
    final_media: FinalMedia,
    guard: ExitGuard,
    /// What the owner's registry was last told.
    reported: Option<(CallState, Option<u16>, Option<SocketAddr>)>,
}

/// How a call's actor begins.
#[derive(Debug, Clone, Copy)]
pub enum CallStart {
    /// A new caller: set the call up (`caller_up`: already answered).
    New { caller_up: bool },
    /// A call found whole in Asterisk after a restart: take it over.
    Adopt(Adopted),
}

impl ChannelActor {
    pub fn new(call_no: u64, caller_id: String, start: CallStart, mode: CallMode, cx: CallContext) -> Self {
        let guard = ExitGuard {
            failed: cx.owner.failed.clone(),
            caller_id: caller_id.clone(),
            call_no,
            mode,
            armed: true,
        };
        ChannelActor {
            call_no,
            caller_id,
            mode,
            call: match start {
                CallStart::New { caller_up } => CallProcedure::new(mode, caller_up),
                CallStart::Adopt(a) => CallProcedure::adopt(mode, a),
            },
            adopted_at_ms: matches!(start, CallStart::Adopt(_)).then(unix_ms),
            cx,
            lease: None,
            socket: None,
            started_at: Instant::now(),
            active_at: None,
            ending_at: None,
            final_media: FinalMedia::default(),
            guard,
            reported: None,
        }
    }

    /// Tells the owner's registry when the state, port or Asterisk address changed.
    fn update(&mut self) {
        let now = (self.call.state(), self.call.port(), self.call.peer());
        if self.reported == Some(now) {
            return;
        }
        self.reported = Some(now);
        self.cx.owner.updates.do_send(CallUpdate {
            caller_id: self.caller_id.clone(),
            state: now.0,
            port: now.1,
            asterisk: now.2,
        });
    }

    fn feed(&mut self, input: Input<Ending>, ctx: &mut Context<Self>) {
        let actions = self.call.handle(input, Instant::now());
        for a in actions {
            self.perform(a, ctx);
        }
        self.update();
    }

    /// Feeds the outcome of `step`'s request when it arrives.
    fn request<F, T>(&mut self, step: Step, fut: F, ok: fn(T) -> Input<Ending>, ctx: &mut Context<Self>)
    where
        F: std::future::Future<Output = Result<T, String>> + 'static,
        T: 'static,
    {
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            let input = match res {
                Ok(v) => ok(v),
                Err(error) => Input::Failed { step, error },
            };
            act.feed(input, ctx);
        }));
    }

    fn perform(&mut self, action: Action<Ending>, ctx: &mut Context<Self>) {
        let ari = self.cx.ari.clone();
        let media = self.cx.media.clone();
        let caller = self.caller_id.clone();
        let call_no = self.call_no;
        match action {
            Action::LeaseAndBind | Action::Rebind { .. } => {
                let (ports, ip) = (self.cx.ports.clone(), self.cx.settings.bind_ip);
                let leased = match action {
                    Action::Rebind { port } => call_io::rebind(ports, ip, port).boxed_local(),
                    _ => call_io::lease_and_bind(ports, ip).boxed_local(),
                };
                ctx.spawn(leased.into_actor(self).map(|res, act, ctx| match res {
                    Ok((lease, socket)) => {
                        let port = lease.port();
                        act.lease = Some(lease);
                        act.socket = Some(socket);
                        act.feed(Input::Leased { port }, ctx);
                    }
                    Err(reason) => act.feed(Input::LeaseFailed { reason }, ctx),
                }));
            }
            Action::ReadPeer => {
                let fut = call_io::read_peer(ari, caller);
                self.request(Step::ReadPeer, fut, |peer| Input::PeerRead { peer }, ctx);
            }
            Action::CreateExternalMedia { own_port } => {
                let host = match own_port {
                    Some(p) => host_port(&self.cx.settings.media_host, p),
                    None => self.cx.settings.echo_target.clone(),
                };
                let mut params = ExternalMediaParams::new(ari.app().to_string(), host, "ulaw".to_string());
                params.channel_id = Some(external_media_id(ari.app(), &caller));
                let fut = async move {
                    let ch = ari.external_media(&params).await.map_err(|e| e.to_string())?;
                    Ok(ch.unicast_rtp_local())
                };
                self.request(Step::ExternalMedia, fut, |peer| Input::ExternalMediaCreated { peer }, ctx);
            }
            Action::AddStream { peer } => {
                let Some(socket) = self.socket.take() else {
                    return self.feed(Input::Failed { step: Step::AddStream, error: "no bound socket".into() }, ctx);
                };
                let spec = StreamSpec {
                    id: call_no,
                    mode: self.mode,
                    socket,
                    peer,
                    late_threshold: self.cx.settings.late_threshold,
                    probe_timeout: self.cx.settings.probe_timeout,
                    no_media_timeout: self.cx.settings.no_media_timeout,
                };
                let fut = async move {
                    media
                        .add(spec)
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("media engine refused the socket: {e}"))
                };
                self.request(Step::AddStream, fut, |()| Input::StreamAdded, ctx);
            }
            Action::CreateBridge => {
                let br = bridge_id(ari.app(), &caller);
                // The name says what the call is, so a later process can take it over.
                let tag = call_tag(CallTag { mode: self.mode, port: self.call.port() });
                let fut = async move { ari.create_bridge(&br, &tag).await.map(|_| ()).map_err(|e| e.to_string()) };
                self.request(Step::CreateBridge, fut, |()| Input::BridgeCreated, ctx);
            }
            Action::AddToBridge => {
                let (br, em) = (bridge_id(ari.app(), &caller), external_media_id(ari.app(), &caller));
                let fut = async move {
                    match ari.add_to_bridge(&br, &[&caller, &em]).await {
                        Ok(()) => Ok(true),
                        Err(e) if e.status() == Some(422) => {
                            log::debug!("addChannel to {br} not yet possible ({e}); waiting for {em} to enter Stasis");
                            Ok(false)
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                self.request(
                    Step::AddToBridge,
                    fut,
                    |added| if added { Input::AddedToBridge } else { Input::AddToBridgeNotYet },
                    ctx,
                );
            }
            Action::Answer => {
                let fut = async move { ari.answer(&caller).await.map_err(|e| e.to_string()) };
                self.request(Step::Answer, fut, |()| Input::Answered, ctx);
            }
            Action::StartProbing => {
                let input = match media.start_probing(call_no) {
                    Ok(()) => Input::MediaStarted,
                    Err(e) => Input::Failed { step: Step::StartMedia, error: e.to_string() },
                };
                self.feed(input, ctx);
            }
            Action::WatchShared { peer } => {
                let timeout = self.cx.settings.no_media_timeout;
                let fut = async move { media.watch_shared(call_no, peer, timeout).await.map_err(|e| e.to_string()) };
                self.request(Step::StartMedia, fut, |()| Input::MediaStarted, ctx);
            }
            Action::Timer { token, after } => {
                ctx.run_later(after, move |act, ctx| act.feed(Input::TimerFired { token }, ctx));
            }
            Action::Reject { reason } => {
                log::warn!("Rejected call {caller}: {reason}");
                // The actor lives until the hang-up is done (stopping would cancel it).
                ctx.spawn(
                    async move {
                        if let Err(e) = ari.hangup(&caller, HangupReason::Congestion).await {
                            log::error!("hanging up rejected call {caller} failed: {e}");
                        }
                    }
                    .into_actor(self)
                    .map(|(), act, ctx| act.finish(false, ctx)),
                );
            }
            Action::Teardown(plan) => {
                let lease = self.lease.take();
                self.ending_at.get_or_insert_with(Instant::now);
                ctx.spawn(call_io::teardown(ari, media, call_no, caller, plan, lease).into_actor(self).map(
                    |report, act, ctx| {
                        if let Some(r) = &report.stream {
                            log::info!(
                                "Call {} media: {} in, {} out, latency p50 {:.3} ms p99 {:.3} ms ({} samples)",
                                act.caller_id, r.packets_in, r.packets_out, r.latency.p50_ms, r.latency.p99_ms, r.latency.count
                            );
                        }
                        act.final_media = report;
                        act.feed(Input::TornDown, ctx);
                    },
                ));
            }
            Action::Report(r) => self.report(r, ctx),
        }
    }

    fn report(&mut self, report: Report<Ending>, ctx: &mut Context<Self>) {
        match report {
            Report::Active => {
                self.active_at = Some((Instant::now(), unix_ms()));
                let adopted = self.call.is_adopted();
                self.cx.metrics.do_send(CallStarted { mode: self.mode, channel: self.caller_id.clone(), adopted });
                let verb = if adopted { "Adopted" } else { "Created" };
                match self.call.port() {
                    Some(p) => log::info!("{verb} channel {} with RTP port {p}", self.caller_id),
                    None => log::info!("{verb} channel {} on the shared echo", self.caller_id),
                }
            }
            Report::SetupFailed { step, error } => {
                let what = if self.call.is_adopted() { "Taking over" } else { "Setup of" };
                log::error!("{what} call {} failed at {}: {error}", self.caller_id, step.as_str());
                // A call whose setup failed was accepted all the same: counted, then failed.
                let adopted = self.call.is_adopted();
                self.cx.metrics.do_send(CallStarted { mode: self.mode, channel: self.caller_id.clone(), adopted });
            }
            Report::TearingDown { why } => {
                let text = match why {
                    Why::Ended(e) => match e.event {
                        Some(ev) => format!("{}: {ev}", e.why),
                        None => e.why.to_string(),
                    },
                    Why::SetupFailed => "setup failed".to_string(),
                    Why::AdoptFailed => "taking the call over failed".to_string(),
                };
                let local = matches!(why, Why::Ended(e) if e.reason == EndReason::SilentWhileLinkDown);
                log::info!("Tearing down channel {} ({text}{})", self.caller_id, if local { "; locally" } else { "" });
            }
            Report::Rejected { reason } => {
                self.cx.metrics.do_send(CallRejected { mode: self.mode, channel: self.caller_id.clone(), why: reason })
            }
            Report::Finished { why, setup_failed } => {
                let (outcome, reason) = match why {
                    Why::Ended(e) if !setup_failed => (CallOutcome::Completed, e.reason),
                    Why::AdoptFailed => (CallOutcome::Failed, EndReason::AdoptFailed),
                    _ => (CallOutcome::Failed, EndReason::SetupFailed),
                };
                let summary = self.summary();
                self.cx.metrics.do_send(CallEnded { mode: self.mode, outcome, reason, channel: self.caller_id.clone(), summary });
                log::info!("Cleaned up channel {} after {:.1} s", self.caller_id, self.started_at.elapsed().as_secs_f64());
                self.finish(setup_failed, ctx);
            }
        }
    }

    /// What the call measured, for the store of ended calls.
    fn summary(&self) -> CallSummary {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let times = Times {
            active_at_ms: self.active_at.map(|(_, ms)| ms),
            setup_ms: self.active_at.map(|(at, _)| ms(at.duration_since(self.started_at))),
            live_ms: self.active_at.map(|(at, _)| ms(self.ending_at.unwrap_or_else(Instant::now).saturating_duration_since(at))),
            adopted_at_ms: self.adopted_at_ms,
        };
        ended::summarize(times, self.final_media.stream.as_ref(), self.final_media.shared.as_ref(), unix_ms())
    }

    fn finish(&mut self, setup_failed: bool, ctx: &mut Context<Self>) {
        self.cx.owner.done.do_send(ChannelDone { caller_id: self.caller_id.clone(), setup_failed });
        self.guard.armed = false;
        ctx.stop();
    }

    fn end(&mut self, end: End<Ending>, ctx: &mut Context<Self>) {
        self.feed(Input::End(end), ctx);
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for a in self.call.start() {
            self.perform(a, ctx);
        }
    }
}

impl Handler<ResourceGone> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: ResourceGone, ctx: &mut Context<Self>) {
        let why = match msg.which {
            Gone::Caller => "caller ended",
            Gone::ExternalMedia => "externalMedia channel ended",
            Gone::Bridge => "bridge destroyed",
        };
        self.end(End::Normal(Ending { reason: EndReason::Hangup, why, event: Some(msg.event) }), ctx);
    }
}

impl Handler<EndCall> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: EndCall, ctx: &mut Context<Self>) {
        let e = Ending { reason: msg.reason, why: msg.why, event: None };
        // Silent while the ARI link is down: Asterisk is out of reach; only our side ends.
        let end = if msg.reason == EndReason::SilentWhileLinkDown { End::Local(e) } else { End::Normal(e) };
        self.end(end, ctx);
    }
}

impl Handler<MediaInStasis> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: MediaInStasis, ctx: &mut Context<Self>) {
        self.feed(Input::MediaInStasis, ctx);
    }
}

impl Handler<InjectPanic> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected fault: panic in the ChannelActor of {}", self.caller_id);
    }
}
