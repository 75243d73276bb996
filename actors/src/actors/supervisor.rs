//! Supervisor: owns the PortManager and every ChannelActor. It turns ARI events into calls
//! (one ChannelActor per caller's StasisStart), routes later events to the call they concern,
//! keeps the registry the HTTP API lists, and ends every call on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use super::channel::{
    CallContext, CallOwner, CallSettings, CallState, CallUpdate, ChannelActor, ChannelDone, ChannelFailed, EndCall, Gone,
    InjectPanic, MediaInStasis, ResourceGone,
};
use super::failure::{take_last_panic, FailureRecord};
use crate::intensity::Intensity;
use super::metrics::{CallEnded, CallOutcome, CallRejected, EndReason, MetricsActor, Reconciled};
use super::port_manager::PortManager;
use crate::ari::client::AriClient;
use crate::ari::model::{Event, HangupReason};
use crate::media::{IdleReason, MediaHandle};
use crate::mode::CallMode;
use crate::naming::{self, bridge_id, external_media_id};
use crate::reconcile::{self, ReconcileReport};

/// An event from the ARI connection.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriEvent(pub Event);

/// The events WebSocket is (re)connected: compare what Asterisk holds for our app with our
/// calls, end what is orphaned.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriConnected {
    pub first: bool,
}

/// The events WebSocket is down (lost, declared dead, or the app was taken by another
/// client): no events can arrive until [`AriConnected`].
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct AriDisconnected {
    pub reason: String,
}

/// Interval of the background reconciliation.
const PERIODIC_RECONCILE: Duration = Duration::from_secs(60);

/// How long an unknown caller must stay unknown before it counts as an orphan: its
/// StasisStart may still be on its way to us.
const ORPHAN_GRACE: Duration = Duration::from_millis(1000);

/// The media engine saw no packet on this call's stream (or, for a shared-echo call, from its
/// Asterisk address at the echo) for the no-media timeout, or for the link-down silence while
/// the ARI link is down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct MediaIdle(pub u64, pub IdleReason);

/// Fault injection: make the ChannelActor of this call (channel id or call number) panic.
/// Answers whether such a call exists.
#[derive(Message, Debug)]
#[rtype(result = "bool")]
pub struct InjectChannelPanic(pub String);

/// Fault injection: panic in the supervisor itself (escalates: the process exits).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectSupervisorPanic;

#[derive(Message)]
#[rtype(result = "SupervisorStatus")]
pub struct GetSupervisorStatus;

/// The supervisor's own state, for `/actors`, `/ready` and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct SupervisorStatus {
    /// `running`, `degraded` (restart intensity exceeded: new calls refused until the window
    /// clears) or `shutting_down`.
    pub state: &'static str,
    /// ChannelActors that died without finishing their call, since start.
    pub channel_failures: u64,
    /// Failures within the current window, and its limits.
    pub recent_failures: usize,
    pub max_restarts: u32,
    pub window_ms: u64,
    pub last_failure: Option<FailureRecord>,
}

/// Stop taking calls, end every call, answer when all are gone or the deadline passed.
#[derive(Message, Debug)]
#[rtype(result = "ShutdownReport")]
pub struct Shutdown {
    pub deadline: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShutdownReport {
    pub calls_ended: usize,
    pub calls_left: usize,
    pub took_ms: u64,
}

#[derive(Message)]
#[rtype(result = "Vec<CallInfo>")]
pub struct GetCalls;

/// One live call as the registry knows it.
#[derive(Debug, Clone, Serialize)]
pub struct CallInfo {
    /// The call's number: also the media engine's stream id.
    pub call_no: u64,
    /// The caller's ARI channel id.
    pub channel_id: String,
    pub channel_name: String,
    pub mode: CallMode,
    pub state: CallState,
    pub port: Option<u16>,
    /// Asterisk's side of the externalMedia channel (where our RTP goes, and comes from).
    pub asterisk_address: Option<SocketAddr>,
    pub external_media_channel: String,
    pub bridge: String,
    pub age_ms: u64,
}

struct Call {
    info: CallInfo,
    addr: Addr<ChannelActor>,
    started: Instant,
}

pub struct Supervisor {
    ari: AriClient,
    ports: Addr<PortManager>,
    metrics: Addr<MetricsActor>,
    media: MediaHandle,
    settings: CallSettings,
    default_mode: CallMode,
    calls: HashMap<String, Call>,
    /// externalMedia channel id and bridge id -> caller id.
    resources: HashMap<String, String>,
    next_call_no: u64,
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
            ari,
            ports: ports.start(),
            metrics,
            media,
            settings,
            default_mode,
            calls: HashMap::new(),
            resources: HashMap::new(),
            next_call_no: 1,
            accepting: true,
            drained: Vec::new(),
            intensity,
            last_failure: None,
            max_calls: usize::MAX,
            reconcile_gate: reconcile::Gate::default(),
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

    fn reject(&self, channel_id: String, mode: CallMode, why: String, ctx: &mut Context<Self>) {
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

    fn on_stasis_start(
        &mut self,
        channel: crate::ari::model::Channel,
        args: Vec<String>,
        ctx: &mut Context<Self>,
    ) {
        if naming::parse(&channel.id).is_some() || channel.is_external_media() {
            let owner_live = self
                .resources
                .get(&channel.id)
                .and_then(|caller| self.calls.get(caller))
                .is_some_and(|c| c.info.state != CallState::TearingDown);
            if owner_live {
                log::debug!("externalMedia channel {} entered Stasis (ours)", channel.id);
                if let Some(call) = self.resources.get(&channel.id).and_then(|caller| self.calls.get(caller)) {
                    call.addr.do_send(MediaInStasis);
                }
            } else {
                // Created by a request Asterisk executed after its call had given up on it.
                log::warn!("externalMedia channel {} belongs to no live call: hanging it up", channel.id);
                let ari = self.ari.clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = ari.hangup(&channel.id, HangupReason::Normal).await {
                            log::error!("hanging up stray externalMedia channel {} failed: {e}", channel.id);
                        }
                    }
                    .into_actor(self),
                );
            }
            return;
        }
        log::info!("StasisStart event received for channel {} ({})", channel.id, channel.name);
        let mode = match args.first().filter(|a| !a.is_empty()) {
            None => self.default_mode,
            Some(a) => match a.parse::<CallMode>() {
                Ok(m) => m,
                Err(e) => return self.reject(channel.id, self.default_mode, e.to_string(), ctx),
            },
        };
        if !self.accepting {
            return self.reject(channel.id, mode, "shutting down".into(), ctx);
        }
        if self.intensity.exceeded(Instant::now()) {
            let why = format!(
                "degraded: more than {} call actor failures within {} ms",
                self.intensity.max(),
                self.intensity.window().as_millis()
            );
            return self.reject(channel.id, mode, why, ctx);
        }
        if self.calls.contains_key(&channel.id) {
            log::warn!("duplicate StasisStart for {}: ignored", channel.id);
            return;
        }
        if self.calls.len() >= self.max_calls {
            let why = format!("at the admission limit of {} concurrent calls", self.max_calls);
            return self.reject(channel.id, mode, why, ctx);
        }
        let call_no = self.next_call_no;
        self.next_call_no += 1;
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
        let addr = ChannelActor::new(call_no, channel.id.clone(), channel.state.clone(), mode, cx).start();
        let em = external_media_id(self.ari.app(), &channel.id);
        let br = bridge_id(self.ari.app(), &channel.id);
        self.resources.insert(em.clone(), channel.id.clone());
        self.resources.insert(br.clone(), channel.id.clone());
        let info = CallInfo {
            call_no,
            channel_id: channel.id.clone(),
            channel_name: channel.name.clone(),
            mode,
            state: CallState::SettingUp,
            port: None,
            asterisk_address: None,
            external_media_channel: em,
            bridge: br,
            age_ms: 0,
        };
        self.calls.insert(channel.id, Call { info, addr, started: Instant::now() });
    }

    pub fn port_manager(&self) -> Addr<PortManager> {
        self.ports.clone()
    }

    fn notify_drained(&mut self) {
        let left = self.calls.len();
        for w in self.drained.drain(..) {
            let _ = w.send(left);
        }
    }

    /// Routes an event about a channel or bridge to the call that owns it.
    fn route(&self, id: &str, event: &'static str, is_bridge: bool) {
        let (caller, which) = if let Some(c) = self.calls.get(id) {
            (c, Gone::Caller)
        } else if let Some(c) = self.resources.get(id).and_then(|cid| self.calls.get(cid)) {
            (c, if is_bridge { Gone::Bridge } else { Gone::ExternalMedia })
        } else {
            return;
        };
        caller.addr.do_send(ResourceGone { which, event });
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
            Event::ChannelHangupRequest { channel, .. } => {
                self.route(&channel.id, "ChannelHangupRequest", false)
            }
            Event::BridgeDestroyed { bridge } => self.route(&bridge.id, "BridgeDestroyed", true),
            // Asterisk does not always tell an app that a bridge it made was destroyed, but it
            // does tell it that its channels left: a channel leaving our bridge ends the call.
            Event::ChannelLeftBridge { bridge, .. } => self.route(&bridge.id, "ChannelLeftBridge", true),
            _ => {}
        }
    }
}

impl Handler<AriConnected> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: AriConnected, ctx: &mut Context<Self>) {
        if let Err(e) = self.media.set_link_down(None) {
            log::error!("[Supervisor] telling the media engine the link is up: {e}");
        }
        log::info!(
            "[Supervisor] ARI {}: reconciling with Asterisk",
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

impl Supervisor {
    /// Looks at Asterisk's side (our app's channels and bridges, every channel and bridge),
    /// then ends what no live call owns and the live calls whose caller is
    /// gone ([`reconcile::plan`] decides). Unknown callers get [`ORPHAN_GRACE`] to show up as
    /// calls before they are hung up. Three steps: fetch, [`Self::carry_out`], and
    /// [`Self::end_orphan_callers`] after the grace.
    ///
    /// At most one runs at a time; a request meanwhile makes one more run after it (never
    /// more than one waits). Calls that began after the fetch started are never ended by it.
    fn reconcile(&mut self, ctx: &mut Context<Self>) {
        if self.reconcile_gate.request() {
            self.run_reconcile(ctx);
        }
    }

    /// One reconciliation, admitted by the gate.
    fn run_reconcile(&mut self, ctx: &mut Context<Self>) {
        let ari = self.ari.clone();
        let started = Instant::now();
        // Calls numbered from here on began after the fetch started.
        let watermark = self.next_call_no;
        let fetch = async move {
            let app = ari.application().await?;
            let channels = ari.channels().await?;
            let bridges = ari.bridges().await?;
            Ok::<_, crate::ari::client::AriError>((app, channels, bridges))
        };
        ctx.spawn(fetch.into_actor(self).map(move |res, act, ctx| match res {
            Ok((app, channels, bridges)) => {
                let live = act.calls.values().map(|c| reconcile::LiveCall {
                    caller_id: &c.info.channel_id,
                    setting_up: c.info.state == CallState::SettingUp,
                    began_after_fetch: c.info.call_no >= watermark,
                });
                let known = |id: &str| act.calls.contains_key(id) || act.resources.contains_key(id);
                let plan = reconcile::plan(&app, &channels, &bridges, live, known);
                let fetched = Fetched {
                    fetch_ms: started.elapsed().as_millis() as u64,
                    listed: channels.len() + bridges.len(),
                };
                act.carry_out(plan, fetched, started, ctx);
            }
            Err(e) => {
                log::error!("[Supervisor] reconciliation could not read Asterisk's state: {e}");
                act.reconcile_done(ctx);
            }
        }));
    }

    /// The running reconciliation is over: start the one asked for meanwhile, if any.
    fn reconcile_done(&mut self, ctx: &mut Context<Self>) {
        if self.reconcile_gate.finished() {
            self.run_reconcile(ctx);
        }
    }

    /// A reconciliation no earlier than `delay` from now. One timer at a time: when it fires,
    /// one reconciliation serves every request due by then, and the timer is armed again for
    /// the latest request made meanwhile, if that one is due later.
    fn reconcile_later(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(at) = self.reconcile_gate.request_at(Instant::now() + delay) {
            ctx.run_later(at.saturating_duration_since(Instant::now()), Self::reconcile_timer_fired);
        }
    }

    fn reconcile_timer_fired(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some(at) = self.reconcile_gate.timer_fired(now) {
            ctx.run_later(at.saturating_duration_since(now), Self::reconcile_timer_fired);
        }
        self.reconcile(ctx);
    }

    /// Ends the vanished calls, hangs up the orphan media channels and destroys the orphan
    /// bridges, then schedules the look at the orphan callers.
    fn carry_out(&mut self, plan: reconcile::Plan, fetched: Fetched, started: Instant, ctx: &mut Context<Self>) {
        for id in &plan.vanished_calls {
            if let Some(c) = self.calls.get(id) {
                c.addr.do_send(EndCall { reason: EndReason::Vanished, why: "caller vanished while ARI was disconnected" });
            }
        }
        let mut report = ReconcileReport {
            vanished_calls: plan.vanished_calls.len(),
            orphan_media_channels: plan.media_orphans.len(),
            orphan_bridges: plan.bridge_orphans.len(),
            fetch_ms: fetched.fetch_ms,
            listed: fetched.listed,
            ..ReconcileReport::default()
        };
        let reconcile::Plan { media_orphans, bridge_orphans, caller_candidates, .. } = plan;
        let ari = self.ari.clone();
        let cleanup = async move {
            hang_up_all(&ari, &media_orphans, "orphan", HangupReason::Normal).await + destroy_all(&ari, &bridge_orphans).await
        };
        ctx.spawn(cleanup.into_actor(self).map(move |errors, _, ctx| {
            report.errors += errors;
            ctx.run_later(ORPHAN_GRACE, move |act, ctx| {
                act.end_orphan_callers(caller_candidates, report, started, ctx)
            });
        }));
    }

    /// Hangs up the candidates that still are no call of ours, then reports.
    fn end_orphan_callers(
        &mut self,
        candidates: Vec<String>,
        mut report: ReconcileReport,
        started: Instant,
        ctx: &mut Context<Self>,
    ) {
        let orphans: Vec<String> = candidates.into_iter().filter(|id| !self.calls.contains_key(id)).collect();
        report.orphan_app_channels = orphans.len();
        let ari = self.ari.clone();
        // Congestion: a caller still ringing (it entered Stasis while no process of ours could
        // answer it, e.g. just before a crash) is refused with 503 cause 34, which a SIP proxy
        // in front retries on another Asterisk; an answered one just gets its BYE.
        let hangups = async move { hang_up_all(&ari, &orphans, "orphan caller", HangupReason::Congestion).await };
        ctx.spawn(hangups.into_actor(self).map(move |errors, act, ctx| {
            report.errors += errors;
            report.took_ms = started.elapsed().as_millis() as u64;
            log::info!(
                "[Supervisor] reconciled in {} ms (fetch of {} channels and bridges {} ms): {} orphan caller(s), {} orphan media channel(s), {} orphan bridge(s) cleaned, {} vanished call(s) ended, {} error(s)",
                report.took_ms, report.listed, report.fetch_ms, report.orphan_app_channels, report.orphan_media_channels,
                report.orphan_bridges, report.vanished_calls, report.errors
            );
            act.metrics.do_send(Reconciled(report));
            act.reconcile_done(ctx);
        }));
    }
}

/// What the fetch of a reconciliation cost.
struct Fetched {
    fetch_ms: u64,
    listed: usize,
}

/// Hangs up every channel in `ids` with `reason`; returns how many failed (each logged).
async fn hang_up_all(ari: &AriClient, ids: &[String], what: &str, reason: HangupReason) -> usize {
    let mut errors = 0;
    for id in ids {
        if let Err(e) = ari.hangup(id, reason).await {
            log::error!("[Supervisor] hanging up {what} {id} failed: {e}");
            errors += 1;
        }
    }
    errors
}

/// Destroys every bridge in `ids`; returns how many failed (each logged).
async fn destroy_all(ari: &AriClient, ids: &[String]) -> usize {
    let mut errors = 0;
    for id in ids {
        if let Err(e) = ari.destroy_bridge(id).await {
            log::error!("[Supervisor] destroying orphan bridge {id} failed: {e}");
            errors += 1;
        }
    }
    errors
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
        // The dead actor's lease was dropped with it (port back in the pool); its socket is
        // still in the media engine and its channels and bridge in Asterisk.
        if let Some(c) = self.calls.remove(&f.caller_id) {
            self.resources.remove(&c.info.external_media_channel);
            self.resources.remove(&c.info.bridge);
        }
        self.metrics.do_send(CallEnded {
            mode: f.mode,
            outcome: CallOutcome::Failed,
            reason: EndReason::ActorFailed,
            channel: f.caller_id.clone(),
            summary: crate::ended::CallSummary::default(),
        });
        let (ari, media, caller) = (self.ari.clone(), self.media.clone(), f.caller_id);
        ctx.spawn(
            async move {
                let _ = media.remove(f.call_no).await;
                for (what, result) in [
                    ("externalMedia channel", ari.hangup(&external_media_id(ari.app(), &caller), HangupReason::Normal).await),
                    ("bridge", ari.destroy_bridge(&bridge_id(ari.app(), &caller)).await),
                    ("caller", ari.hangup(&caller, HangupReason::Normal).await),
                ] {
                    if let Err(e) = result {
                        log::error!("[Supervisor] cleaning up the {what} of failed call {caller}: {e}");
                    }
                }
                log::info!("Cleaned up channel {caller} after its actor failed");
            }
            .into_actor(self)
            .map(|_, act, _| {
                if !act.accepting && act.calls.is_empty() {
                    act.notify_drained();
                }
            }),
        );
    }
}

impl Handler<InjectChannelPanic> for Supervisor {
    type Result = bool;
    fn handle(&mut self, InjectChannelPanic(id): InjectChannelPanic, _: &mut Context<Self>) -> bool {
        match self.calls.values().find(|c| c.info.channel_id == id || c.info.call_no.to_string() == id) {
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
        if let Some(c) = self.calls.values().find(|c| c.info.call_no == call_no) {
            match why {
                IdleReason::NoMedia => {
                    log::warn!("No media on call {} for the no-media timeout: ending it", c.info.channel_id);
                    c.addr.do_send(EndCall { reason: EndReason::NoMedia, why: "no media" });
                }
                IdleReason::SilentWhileLinkDown => {
                    log::warn!(
                        "Call {} is silent while the ARI link is down: ending it locally (Asterisk is left to the reconciliation)",
                        c.info.channel_id
                    );
                    c.addr.do_send(EndCall {
                        reason: EndReason::SilentWhileLinkDown,
                        why: "media stopped while the ARI link is down",
                    });
                }
            }
        }
    }
}

impl Handler<CallUpdate> for Supervisor {
    type Result = ();
    fn handle(&mut self, u: CallUpdate, _: &mut Context<Self>) {
        if let Some(c) = self.calls.get_mut(&u.caller_id) {
            c.info.state = u.state;
            if u.port.is_some() {
                c.info.port = u.port;
            }
            if u.asterisk.is_some() {
                c.info.asterisk_address = u.asterisk;
            }
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
        if let Some(c) = self.calls.remove(&d.caller_id) {
            self.resources.remove(&c.info.external_media_channel);
            self.resources.remove(&c.info.bridge);
        }
        if !self.accepting && self.calls.is_empty() {
            self.notify_drained();
        }
    }
}

impl Handler<GetCalls> for Supervisor {
    type Result = MessageResult<GetCalls>;
    fn handle(&mut self, _: GetCalls, _: &mut Context<Self>) -> Self::Result {
        let mut v: Vec<CallInfo> = self
            .calls
            .values()
            .map(|c| {
                let mut i = c.info.clone();
                i.age_ms = c.started.elapsed().as_millis() as u64;
                i
            })
            .collect();
        v.sort_by_key(|c| c.call_no);
        MessageResult(v)
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
            ShutdownReport {
                calls_ended: n.saturating_sub(left),
                calls_left: left,
                took_ms: started.elapsed().as_millis() as u64,
            }
        })
    }
}
