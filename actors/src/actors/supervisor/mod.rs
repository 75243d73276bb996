//! Supervisor: owns the PortManager and every ChannelActor. It turns ARI events into calls
//! (one ChannelActor per caller's StasisStart, [`crate::admission`] decides), routes later
//! events to the call they concern ([`crate::registry`]), adopts the live calls a previous
//! process left in Asterisk ([`crate::adopt`]) and reconciles ([`crate::reconcile`]) at every
//! (re)connect, and ends every call on shutdown. The decisions are the pure modules'; this
//! actor does the IO they ask for.

mod messages;
mod reconciliation;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::call_io;
use super::channel::{
    CallContext, CallOwner, CallSettings, CallStart, CallUpdate, ChannelActor, ChannelDone, ChannelFailed, EndCall,
    InjectPanic, MediaInStasis, ResourceGone,
};
use super::failure::{take_last_panic, FailureRecord};
use super::metrics::{CallEnded, CallOutcome, CallRejected, EndReason, MetricsActor};
use super::port_manager::PortManager;
use crate::admission::{self, Decision, Load};
use crate::adopt::Found;
use crate::ari::client::AriClient;
use crate::ari::model::{Channel, Event, HangupReason};
use crate::call::{Adopted, CallState};
use crate::intensity::Intensity;
use crate::media::{IdleReason, MediaHandle};
use crate::mode::CallMode;
use crate::naming;
use crate::ports::PortRange;
use crate::reconcile;
pub use messages::*;
use crate::registry::{NewCall, Registry};
use crate::sys::unix_ms;

/// Interval of the background reconciliation.
const PERIODIC_RECONCILE: Duration = Duration::from_secs(60);

pub struct Supervisor {
    ari: AriClient,
    ports: Addr<PortManager>,
    /// The pool's range: an adopted call's port must be in it.
    rtp_ports: PortRange,
    metrics: Addr<MetricsActor>,
    media: MediaHandle,
    settings: CallSettings,
    default_mode: CallMode,
    calls: Registry<Addr<ChannelActor>>,
    accepting: bool,
    /// Shutdown requests waiting for the last call to end; each gets the count left.
    drained: Vec<tokio::sync::oneshot::Sender<usize>>,
    /// ChannelActor failures within the restart window.
    intensity: Intensity,
    last_failure: Option<FailureRecord>,
    /// Admission limit: live calls of every mode together (shared-echo calls lease no port
    /// but take Asterisk RTP ports all the same).
    max_calls: usize,
    /// When reconciliations run: one at a time, at most one waiting, one timer for delayed
    /// requests.
    reconcile_gate: reconcile::Gate,
    /// Ids of channels and bridges Asterisk reported ended, with no live call of ours to route
    /// to, while a reconciliation's lists were being read (None: no read in flight). A call
    /// they belong to may still be in those lists: it is not adopted.
    gone_during_fetch: Option<HashSet<String>>,
    /// While the ARI link is down, a call whose media stopped this long is ended locally
    /// (zero: never).
    link_down_silence: Duration,
}

impl Supervisor {
    /// The supervisor starts and owns the PortManager (`port_manager` gives its address).
    pub fn new(
        ari: AriClient,
        ports: PortManager,
        metrics: Addr<MetricsActor>,
        media: MediaHandle,
        settings: CallSettings,
        default_mode: CallMode,
        intensity: Intensity,
    ) -> Self {
        Supervisor {
            calls: Registry::new(ari.app()),
            ari,
            rtp_ports: ports.range(),
            ports: ports.start(),
            metrics,
            media,
            settings,
            default_mode,
            accepting: true,
            drained: Vec::new(),
            intensity,
            last_failure: None,
            max_calls: usize::MAX,
            reconcile_gate: reconcile::Gate::default(),
            gone_during_fetch: None,
            link_down_silence: Duration::ZERO,
        }
    }

    /// While the ARI link is down, end calls locally whose media stopped for `silence`.
    pub fn with_link_down_silence(mut self, silence: Duration) -> Self {
        self.link_down_silence = silence;
        self
    }

    /// At most `max_calls` live calls, every mode counted; more are refused with congestion.
    pub fn with_max_calls(mut self, max_calls: usize) -> Self {
        self.max_calls = max_calls;
        self
    }

    pub fn port_manager(&self) -> Addr<PortManager> {
        self.ports.clone()
    }

    /// Hangs `channel_id` up with congestion and counts the refusal.
    fn refuse(&self, channel_id: String, mode: CallMode, why: String, ctx: &mut Context<Self>) {
        log::warn!("Rejecting call {channel_id}: {why}");
        self.metrics.do_send(CallRejected { mode, channel: channel_id.clone(), why });
        let ari = self.ari.clone();
        ctx.spawn(
            async move {
                if let Err(e) = ari.hangup(&channel_id, HangupReason::Congestion).await {
                    log::error!("hanging up rejected call {channel_id} failed: {e}");
                }
            }
            .into_actor(self),
        );
    }

    fn on_stasis_start(&mut self, channel: Channel, args: Vec<String>, ctx: &mut Context<Self>) {
        if naming::parse(&channel.id).is_some() || channel.is_external_media() {
            return self.on_media_in_stasis(channel.id, ctx);
        }
        log::info!("StasisStart event received for channel {} ({})", channel.id, channel.name);
        let now = Instant::now();
        let load = Load {
            accepting: self.accepting,
            degraded: self
                .intensity
                .exceeded(now)
                .then(|| (self.intensity.max(), self.intensity.window().as_millis() as u64)),
            live: self.calls.len(),
            max_calls: self.max_calls,
        };
        match admission::decide(&args, self.default_mode, self.calls.get(&channel.id).is_some(), load) {
            Decision::Duplicate => log::warn!("duplicate StasisStart for live call {}: ignored", channel.id),
            Decision::Refuse { mode, why } => self.refuse(channel.id, mode, why, ctx),
            Decision::Start(mode) => {
                let start = CallStart::New { caller_up: channel.state == "Up" };
                self.start_call(NewCall { caller_id: channel.id, caller_name: channel.name, mode, adopted_at_ms: None }, start, ctx);
            }
        }
    }

    /// An externalMedia channel of ours entered Stasis: its call may bridge it now. One that
    /// belongs to no live call was created by a request Asterisk executed after its call had
    /// given up on it: hung up.
    fn on_media_in_stasis(&mut self, id: String, ctx: &mut Context<Self>) {
        match self.calls.owner_of(&id).filter(|c| c.info.state != CallState::TearingDown) {
            Some(call) => {
                log::debug!("externalMedia channel {id} entered Stasis (ours)");
                call.addr.do_send(MediaInStasis);
            }
            None => {
                log::warn!("externalMedia channel {id} belongs to no live call: hanging it up");
                let ari = self.ari.clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = ari.hangup(&id, HangupReason::Normal).await {
                            log::error!("hanging up stray externalMedia channel {id} failed: {e}");
                        }
                    }
                    .into_actor(self),
                );
            }
        }
    }

    /// Registers a call and starts its actor.
    fn start_call(&mut self, call: NewCall, start: CallStart, ctx: &mut Context<Self>) {
        let cx = CallContext {
            ari: self.ari.clone(),
            ports: self.ports.clone(),
            media: self.media.clone(),
            metrics: self.metrics.clone(),
            owner: CallOwner {
                updates: ctx.address().recipient(),
                done: ctx.address().recipient(),
                failed: ctx.address().recipient(),
            },
            settings: self.settings.clone(),
        };
        let (caller, mode) = (call.caller_id.clone(), call.mode);
        self.calls.insert(call, Instant::now(), |call_no| ChannelActor::new(call_no, caller, start, mode, cx).start());
    }

    /// Takes over a call a previous process left whole in Asterisk.
    fn adopt(&mut self, found: Found, ctx: &mut Context<Self>) {
        log::info!(
            "Adopting live call {} ({}, {}{}) found in Asterisk",
            found.caller_id,
            found.caller_name,
            found.mode,
            found.port.map(|p| format!(", port {p}")).unwrap_or_default()
        );
        if self.calls.len() >= self.max_calls {
            log::warn!("adopting call {} beyond the admission limit of {}: it is live already", found.caller_id, self.max_calls);
        }
        let start = CallStart::Adopt(Adopted { port: found.port });
        let call = NewCall { caller_id: found.caller_id, caller_name: found.caller_name, mode: found.mode, adopted_at_ms: Some(unix_ms()) };
        self.start_call(call, start, ctx);
    }

    fn notify_drained(&mut self) {
        let left = self.calls.len();
        for w in self.drained.drain(..) {
            let _ = w.send(left);
        }
    }

    /// Routes an event about a channel or bridge to the call that owns it; an event that
    /// routes nowhere while a reconciliation reads Asterisk's lists is remembered for it.
    fn route(&mut self, id: &str, event: &'static str, is_bridge: bool) {
        match self.calls.route(id, is_bridge) {
            Some((call, which)) => call.addr.do_send(ResourceGone { which, event }),
            None => {
                if let Some(gone) = &mut self.gone_during_fetch {
                    gone.insert(id.to_string());
                }
            }
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        log::info!("[Supervisor] started: app {}, default mode {}", self.ari.app(), self.default_mode);
        // Besides every (re)connect: a slow sweep catches what events cannot tell us (a
        // request Asterisk executed long after we gave up on it).
        ctx.run_interval(PERIODIC_RECONCILE, |act, ctx| act.reconcile(ctx));
    }
}

impl Handler<AriEvent> for Supervisor {
    type Result = ();

    fn handle(&mut self, AriEvent(ev): AriEvent, ctx: &mut Context<Self>) {
        match ev {
            Event::StasisStart { channel, args, .. } => self.on_stasis_start(channel, args, ctx),
            Event::StasisEnd { channel, .. } => self.route(&channel.id, "StasisEnd", false),
            Event::ChannelDestroyed { channel, .. } => self.route(&channel.id, "ChannelDestroyed", false),
            Event::ChannelHangupRequest { channel, .. } => self.route(&channel.id, "ChannelHangupRequest", false),
            Event::BridgeDestroyed { bridge } => self.route(&bridge.id, "BridgeDestroyed", true),
            // Asterisk does not always tell an app that a bridge it made was destroyed, but it
            // does tell it that its channels left: a channel leaving our bridge ends the call.
            Event::ChannelLeftBridge { bridge, channel } => {
                if let Some(gone) = self.gone_during_fetch.as_mut().filter(|_| !self.calls.knows(&bridge.id)) {
                    gone.insert(channel.id);
                }
                self.route(&bridge.id, "ChannelLeftBridge", true)
            }
            _ => {}
        }
    }
}

impl Handler<UndecodableStasisStart> for Supervisor {
    type Result = ();

    fn handle(&mut self, m: UndecodableStasisStart, ctx: &mut Context<Self>) {
        if self.calls.get(&m.channel_id).is_some() {
            return log::warn!("undecodable duplicate StasisStart for live call {}: ignored ({})", m.channel_id, m.error);
        }
        self.refuse(m.channel_id, self.default_mode, format!("undecodable StasisStart: {}", m.error), ctx);
    }
}

impl Handler<AriConnected> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AriConnected, ctx: &mut Context<Self>) {
        if let Err(e) = self.media.set_link_down(None) {
            log::error!("[Supervisor] telling the media engine the link is up: {e}");
        }
        log::info!(
            "[Supervisor] ARI {}: adopting live calls and reconciling with Asterisk",
            if msg.first { "connected" } else { "reconnected" }
        );
        self.reconcile(ctx);
    }
}

impl Handler<AriDisconnected> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AriDisconnected, _: &mut Context<Self>) {
        log::warn!("[Supervisor] ARI link down: {}", msg.reason);
        // No event can end a call now, and no reconciliation can run: a call whose media
        // stops too (Asterisk gone) is ended locally after the silence.
        if !self.link_down_silence.is_zero() {
            if let Err(e) = self.media.set_link_down(Some(self.link_down_silence)) {
                log::error!("[Supervisor] telling the media engine the link is down: {e}");
            }
        }
    }
}

impl Handler<ChannelFailed> for Supervisor {
    type Result = ();

    fn handle(&mut self, f: ChannelFailed, ctx: &mut Context<Self>) {
        let reason = take_last_panic().unwrap_or_else(|| "ended without finishing its call".into());
        log::error!("[Supervisor] ChannelActor of {} died ({reason}): ending the call cleanly", f.caller_id);
        self.last_failure = Some(FailureRecord::now(format!("channel {}: {reason}", f.caller_id)));
        if self.intensity.record(Instant::now()) {
            log::error!(
                "[Supervisor] restart intensity exceeded ({} failures within {} ms): degraded, refusing new calls until the window clears",
                self.intensity.max() + 1,
                self.intensity.window().as_millis()
            );
        }
        self.metrics.do_send(CallEnded {
            mode: f.mode,
            outcome: CallOutcome::Failed,
            reason: EndReason::ActorFailed,
            channel: f.caller_id.clone(),
            summary: crate::ended::CallSummary::default(),
        });
        // The dead actor's lease was dropped with it (port back in the pool); its socket is
        // still in the media engine and its channels and bridge in Asterisk. The call stays
        // known (tearing down) until they are gone, so no reconciliation meanwhile adopts it.
        if let Some(c) = self.calls.get_mut(&f.caller_id) {
            c.info.state = CallState::TearingDown;
        }
        let cleanup = call_io::clean_up_failed(self.ari.clone(), self.media.clone(), f.call_no, f.caller_id.clone());
        ctx.spawn(cleanup.into_actor(self).map(move |(), act, _| {
            act.calls.remove(&f.caller_id);
            if !act.accepting && act.calls.is_empty() {
                act.notify_drained();
            }
        }));
    }
}

impl Handler<InjectChannelPanic> for Supervisor {
    type Result = bool;
    fn handle(&mut self, InjectChannelPanic(id): InjectChannelPanic, _: &mut Context<Self>) -> bool {
        match self.calls.find(&id) {
            Some(c) => {
                log::warn!("[Supervisor] fault injection: panic in the ChannelActor of {}", c.info.channel_id);
                c.addr.do_send(InjectPanic);
                true
            }
            None => false,
        }
    }
}

impl Handler<InjectSupervisorPanic> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: InjectSupervisorPanic, _: &mut Context<Self>) {
        panic!("injected fault: panic in the Supervisor");
    }
}

impl Handler<GetSupervisorStatus> for Supervisor {
    type Result = MessageResult<GetSupervisorStatus>;
    fn handle(&mut self, _: GetSupervisorStatus, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        let state = if !self.accepting {
            "shutting_down"
        } else if self.intensity.exceeded(now) {
            "degraded"
        } else {
            "running"
        };
        MessageResult(SupervisorStatus {
            state,
            channel_failures: self.intensity.total(),
            recent_failures: self.intensity.recent(now),
            max_restarts: self.intensity.max(),
            window_ms: self.intensity.window().as_millis() as u64,
            last_failure: self.last_failure.clone(),
        })
    }
}

impl Handler<MediaIdle> for Supervisor {
    type Result = ();
    fn handle(&mut self, MediaIdle(call_no, why): MediaIdle, _: &mut Context<Self>) {
        let Some(c) = self.calls.by_call_no(call_no) else { return };
        let end = match why {
            IdleReason::NoMedia => {
                log::warn!("No media on call {} for the no-media timeout: ending it", c.info.channel_id);
                EndCall { reason: EndReason::NoMedia, why: "no media" }
            }
            IdleReason::SilentWhileLinkDown => {
                log::warn!(
                    "Call {} is silent while the ARI link is down: ending it locally (Asterisk is left to the reconciliation)",
                    c.info.channel_id
                );
                EndCall { reason: EndReason::SilentWhileLinkDown, why: "media stopped while the ARI link is down" }
            }
        };
        c.addr.do_send(end);
    }
}

impl Handler<CallUpdate> for Supervisor {
    type Result = ();
    fn handle(&mut self, u: CallUpdate, _: &mut Context<Self>) {
        if let Some(c) = self.calls.get_mut(&u.caller_id) {
            c.info.state = u.state;
            c.info.port = u.port.or(c.info.port);
            c.info.asterisk_address = u.asterisk.or(c.info.asterisk_address);
        }
    }
}

impl Handler<ChannelDone> for Supervisor {
    type Result = ();
    fn handle(&mut self, d: ChannelDone, ctx: &mut Context<Self>) {
        if d.setup_failed {
            // A timed-out request may still be executed by Asterisk; look again once any
            // such request must have been answered.
            let later = self.ari.settings().request_timeout * 2 + Duration::from_secs(1);
            self.reconcile_later(later, ctx);
        }
        self.calls.remove(&d.caller_id);
        if !self.accepting && self.calls.is_empty() {
            self.notify_drained();
        }
    }
}

impl Handler<GetCalls> for Supervisor {
    type Result = MessageResult<GetCalls>;
    fn handle(&mut self, _: GetCalls, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.calls.list(Instant::now()))
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<ShutdownReport>;

    fn handle(&mut self, s: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.accepting = false;
        let started = Instant::now();
        let n = self.calls.len();
        log::info!("[Supervisor] shutting down: ending {n} call(s)");
        for c in self.calls.values() {
            c.addr.do_send(EndCall { reason: EndReason::Shutdown, why: "service shutting down" });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.drained.push(tx);
        if self.calls.is_empty() {
            self.notify_drained();
        }
        ctx.run_later(s.deadline, |act, _| act.notify_drained());
        Box::pin(async move {
            let left = rx.await.unwrap_or(0);
            ShutdownReport { calls_ended: n.saturating_sub(left), calls_left: left, took_ms: started.elapsed().as_millis() as u64 }
        })
    }
}
