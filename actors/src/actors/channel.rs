//! ChannelActor: one per call. It builds the call's media path in Asterisk (lease + bind a
//! port, externalMedia channel, mixing bridge with the caller), hands the socket to the media
//! engine, and tears everything down exactly once, whichever side ends first. It owns the
//! call's lease: the port goes back when the actor's state drops, even on panic.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::Notify;

use super::metrics::{CallEnded, CallOutcome, CallRejected, CallStarted, EndReason, MetricsActor};
use super::port_manager::{AcquirePort, Lease, PortManager};
use super::supervisor::{CallUpdate, ChannelDone, ChannelFailed, Supervisor};
use crate::ari::client::{AriClient, AriError};
use crate::ari::model::{ExternalMediaParams, HangupReason};
use crate::media::{MediaHandle, StreamReport, StreamSpec};
use crate::mode::CallMode;
use crate::naming::{bridge_id, external_media_id, host_port};
use crate::ports::PoolError;

/// Settings every call shares.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// Host (IP or name) Asterisk sends a call's RTP to: our leased ports are reached there.
    pub media_host: String,
    /// Address the call sockets bind to.
    pub bind_ip: IpAddr,
    /// Where Asterisk reaches the shared EchoActor (host:port) for shared-echo calls.
    pub echo_target: String,
    pub late_threshold: Duration,
    pub probe_timeout: Duration,
    /// End a call whose media stopped for this long (zero: never). Calls on the shared echo
    /// have no stream of their own and are not watched.
    pub no_media_timeout: Duration,
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    SettingUp,
    Active,
    TearingDown,
}

/// Which of the call's resources Asterisk reported gone (or asked to end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Caller,
    ExternalMedia,
    Bridge,
}

/// A resource of this call ended in Asterisk: tear the call down.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ResourceGone {
    pub which: Gone,
    pub event: &'static str,
}

/// The service decided to end the call (shutdown, no media, vanished caller, silent while the
/// ARI link is down).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct EndCall {
    pub reason: EndReason,
    /// For the log.
    pub why: &'static str,
}

/// Tells the supervisor when the actor ends without finishing its call: a panic in a handler
/// drops the actor (actix does not restart it) and with it this guard. An actor that ended its
/// call properly disarms it first.
#[derive(Debug)]
struct ExitGuard {
    supervisor: Addr<Supervisor>,
    caller_id: String,
    call_no: u64,
    mode: CallMode,
    armed: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if self.armed {
            self.supervisor.do_send(ChannelFailed {
                caller_id: self.caller_id.clone(),
                call_no: self.call_no,
                mode: self.mode,
            });
        }
    }
}

/// A fault injected for tests: panic in this actor's handler.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct InjectPanic;

/// What exists of the call so far: exactly what teardown must undo.
#[derive(Debug, Default)]
struct Built {
    lease: Option<Lease>,
    stream_added: bool,
    /// A shared-echo call's media is watched at the echo (from its Asterisk address).
    shared_watched: bool,
    em_created: bool,
    bridge_created: bool,
    peer: Option<SocketAddr>,
}

/// What every call's actor works with: the handles and settings the Supervisor shares.
#[derive(Clone)]
pub struct CallContext {
    pub ari: AriClient,
    pub ports: Addr<PortManager>,
    pub media: MediaHandle,
    pub metrics: Addr<MetricsActor>,
    pub supervisor: Addr<Supervisor>,
    pub settings: CallSettings,
}

pub struct ChannelActor {
    call_no: u64,
    caller_id: String,
    caller_state: String,
    mode: CallMode,
    cx: CallContext,
    state: CallState,
    built: Built,
    started_at: Instant,
    outcome: CallOutcome,
    /// Why the call ends: the first trigger of the teardown decides.
    end_reason: EndReason,
    guard: ExitGuard,
    /// Signalled by the supervisor when our externalMedia channel enters Stasis.
    media_in_stasis: Arc<Notify>,
}

impl ChannelActor {
    pub fn new(call_no: u64, caller_id: String, caller_state: String, mode: CallMode, cx: CallContext) -> Self {
        let guard =
            ExitGuard { supervisor: cx.supervisor.clone(), caller_id: caller_id.clone(), call_no, mode, armed: true };
        ChannelActor {
            call_no,
            caller_id,
            caller_state,
            mode,
            cx,
            state: CallState::SettingUp,
            built: Built::default(),
            started_at: Instant::now(),
            outcome: CallOutcome::Completed,
            end_reason: EndReason::Hangup,
            guard,
            media_in_stasis: Arc::new(Notify::new()),
        }
    }

    /// The signal the supervisor gives when this call's externalMedia channel enters Stasis
    /// (without it, setup falls back to retrying addChannel every 100 ms).
    pub fn with_media_in_stasis(mut self, signal: Arc<Notify>) -> Self {
        self.media_in_stasis = signal;
        self
    }

    fn update(&self) {
        self.cx.supervisor.do_send(CallUpdate {
            caller_id: self.caller_id.clone(),
            state: self.state,
            port: self.built.lease.as_ref().map(Lease::port),
            asterisk: self.built.peer,
        });
    }

    /// Starts the teardown once; later triggers are ignored. A call ended because it went
    /// silent while the ARI link is down is ended locally: Asterisk cannot be reached, and the
    /// reconciliation after the reconnect removes what is left there.
    fn teardown(&mut self, why: &str, reason: EndReason, ctx: &mut Context<Self>) {
        if self.state == CallState::TearingDown {
            return;
        }
        let local = reason == EndReason::SilentWhileLinkDown;
        log::info!("Tearing down channel {} ({why}{})", self.caller_id, if local { "; locally" } else { "" });
        self.end_reason = reason;
        self.state = CallState::TearingDown;
        self.update();
        let built = std::mem::take(&mut self.built);
        let ari = self.cx.ari.clone();
        let media = self.cx.media.clone();
        let caller_id = self.caller_id.clone();
        let call_no = self.call_no;
        let fut = async move {
            let report = teardown(&ari, &media, call_no, &caller_id, built, local).await;
            (report, caller_id)
        };
        ctx.wait(fut.into_actor(self).map(|(report, caller_id), act, ctx| {
            if let Some(r) = report {
                log::info!(
                    "Call {caller_id} media: {} in, {} out, latency p50 {:.3} ms p99 {:.3} ms ({} samples)",
                    r.packets_in, r.packets_out, r.latency.p50_ms, r.latency.p99_ms, r.latency.count
                );
            }
            act.cx.metrics.do_send(CallEnded { mode: act.mode, outcome: act.outcome, reason: act.end_reason });
            act.cx.supervisor.do_send(ChannelDone {
                caller_id: caller_id.clone(),
                setup_failed: act.outcome == CallOutcome::Failed,
            });
            log::info!("Cleaned up channel {caller_id} after {:.1} s", act.started_at.elapsed().as_secs_f64());
            act.guard.armed = false;
            ctx.stop();
        }));
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let job = SetupJob {
            media_in_stasis: self.media_in_stasis.clone(),
            call_no: self.call_no,
            caller_id: self.caller_id.clone(),
            caller_up: self.caller_state == "Up",
            mode: self.mode,
            cx: self.cx.clone(),
        };
        // `wait`: events for this call queue up until setup has finished, so teardown always
        // sees everything setup built.
        ctx.wait(job.run().into_actor(self).map(|result, act, ctx| {
            match result {
                Ok(built) => {
                    act.built = built;
                    act.state = CallState::Active;
                    act.cx.metrics.do_send(CallStarted { mode: act.mode });
                    let port = act.built.lease.as_ref().map(Lease::port);
                    match port {
                        Some(p) => log::info!("Created channel {} with RTP port {p}", act.caller_id),
                        None => log::info!("Created channel {} on the shared echo", act.caller_id),
                    }
                    act.update();
                }
                Err(SetupError::Rejected(e)) => {
                    log::warn!("Rejected call {}: {e}", act.caller_id);
                    act.cx.metrics.do_send(CallRejected { mode: act.mode });
                    act.cx.supervisor.do_send(ChannelDone { caller_id: act.caller_id.clone(), setup_failed: false });
                    act.guard.armed = false;
                    ctx.stop();
                }
                Err(SetupError::Failed(built, e)) => {
                    log::error!("Setup of call {} failed: {e}", act.caller_id);
                    act.cx.metrics.do_send(CallStarted { mode: act.mode });
                    act.outcome = CallOutcome::Failed;
                    act.built = built;
                    act.teardown("setup failed", EndReason::SetupFailed, ctx);
                }
            }
        }));
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
        self.teardown(&format!("{why}: {}", msg.event), EndReason::Hangup, ctx);
    }
}

impl Handler<InjectPanic> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected fault: panic in the ChannelActor of {}", self.caller_id);
    }
}

impl Handler<EndCall> for ChannelActor {
    type Result = ();
    fn handle(&mut self, msg: EndCall, ctx: &mut Context<Self>) {
        self.teardown(msg.why, msg.reason, ctx);
    }
}

#[derive(Debug, thiserror::Error)]
enum SetupError {
    /// Refused before anything was built (no port); the caller was hung up with congestion.
    #[error("{0}")]
    Rejected(String),
    /// Failed part way: what was built is torn down.
    #[error("{1}")]
    Failed(Built, String),
}

struct SetupJob {
    media_in_stasis: Arc<Notify>,
    call_no: u64,
    caller_id: String,
    caller_up: bool,
    mode: CallMode,
    cx: CallContext,
}

/// How long setup keeps trying to add a new externalMedia channel to the bridge (422).
const ADD_DEADLINE: Duration = Duration::from_secs(2);
/// Retry interval of that when the channel's StasisStart does not come.
const ADD_RETRY: Duration = Duration::from_millis(100);

/// How often setup tries another port when the leased one is held by another process.
const BIND_ATTEMPTS: usize = 4;

impl SetupJob {
    async fn run(self) -> Result<Built, SetupError> {
        let mut built = Built::default();
        let external_host = if self.mode.leases_port() {
            let (lease, socket) = match self.lease_and_bind().await {
                Ok(v) => v,
                Err(reason) => {
                    if let Err(e) = self.cx.ari.hangup(&self.caller_id, HangupReason::Congestion).await {
                        log::error!("hanging up rejected call {} failed: {e}", self.caller_id);
                    }
                    return Err(SetupError::Rejected(reason));
                }
            };
            let host = host_port(&self.cx.settings.media_host, lease.port());
            built.lease = Some(lease);
            Some((host, socket))
        } else {
            None
        };
        match self.build(&mut built, external_host).await {
            Ok(()) => Ok(built),
            Err(e) => Err(SetupError::Failed(built, e)),
        }
    }

    async fn lease_and_bind(&self) -> Result<(Lease, UdpSocket), String> {
        for _ in 0..BIND_ATTEMPTS {
            let lease = match self.cx.ports.send(AcquirePort).await {
                Ok(Ok(lease)) => lease,
                Ok(Err(e @ PoolError::Exhausted { .. })) => return Err(format!("no free RTP port: {e}")),
                Ok(Err(e)) => return Err(format!("port pool: {e}")),
                Err(e) => return Err(format!("port manager unreachable: {e}")),
            };
            match UdpSocket::bind((self.cx.settings.bind_ip, lease.port())) {
                Ok(sock) => return Ok((lease, sock)),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    log::warn!("port {} is in use by another process: skipping it", lease.port());
                    lease.mark_unavailable();
                }
                Err(e) => return Err(format!("binding port {}: {e}", lease.port())),
            }
        }
        Err(format!("no bindable RTP port after {BIND_ATTEMPTS} attempts"))
    }

    async fn build(&self, built: &mut Built, own: Option<(String, UdpSocket)>) -> Result<(), String> {
        let em_id = external_media_id(self.cx.ari.app(), &self.caller_id);
        let (host, socket) = match own {
            Some((h, s)) => (h, Some(s)),
            None => (self.cx.settings.echo_target.clone(), None),
        };
        let mut params = ExternalMediaParams::new(self.cx.ari.app().to_string(), host, "ulaw".to_string());
        params.channel_id = Some(em_id.clone());
        // Marked before the request: a request that timed out may still have created it, and
        // deleting one that does not exist is harmless.
        built.em_created = true;
        let em = self.cx.ari.external_media(&params).await.map_err(|e| e.to_string())?;
        let peer = em.unicast_rtp_local().ok_or_else(|| {
            "externalMedia answer has no UNICASTRTP_LOCAL_ADDRESS/PORT channel variables".to_string()
        })?;
        built.peer = Some(peer);
        if let Some(socket) = socket {
            let spec = StreamSpec {
                id: self.call_no,
                mode: self.mode,
                socket,
                peer,
                late_threshold: self.cx.settings.late_threshold,
                probe_timeout: self.cx.settings.probe_timeout,
                no_media_timeout: self.cx.settings.no_media_timeout,
            };
            self.cx.media
                .add(spec)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("media engine refused the socket: {e}"))?;
            built.stream_added = true;
        }
        let br = bridge_id(self.cx.ari.app(), &self.caller_id);
        built.bridge_created = true;
        self.cx.ari.create_bridge(&br, &br).await.map_err(|e| e.to_string())?;
        self.add_to_bridge(&br, &em_id).await?;
        if !self.caller_up {
            self.cx.ari.answer(&self.caller_id).await.map_err(|e: AriError| e.to_string())?;
        }
        if self.mode == CallMode::SharedEcho {
            // No socket of its own: the echo watches what arrives from this call's Asterisk
            // address, so the no-media timeout and the link-down silence apply to it too.
            built.shared_watched = true;
            self.cx.media
                .watch_shared(self.call_no, peer, self.cx.settings.no_media_timeout)
                .await
                .map_err(|e| e.to_string())?;
        }
        if self.mode == CallMode::Probe {
            self.cx.media.start_probing(self.call_no).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl SetupJob {
    /// Adds caller and externalMedia channel to the bridge. The externalMedia channel enters
    /// Stasis asynchronously, around when its creation request returns; until it has,
    /// Asterisk answers 422 "Channel not in Stasis application". Then this waits for the
    /// channel's StasisStart (the supervisor signals `media_in_stasis`; a signal that came
    /// earlier is kept) and tries again at once; if the event is slow to come, it tries again
    /// every [`ADD_RETRY`] anyway, for up to [`ADD_DEADLINE`].
    async fn add_to_bridge(&self, bridge: &str, em_id: &str) -> Result<(), String> {
        let deadline = Instant::now() + ADD_DEADLINE;
        loop {
            match self.cx.ari.add_to_bridge(bridge, &[&self.caller_id, em_id]).await {
                Ok(()) => return Ok(()),
                Err(e) if e.status() == Some(422) && Instant::now() < deadline => {
                    log::debug!("addChannel to {bridge} not yet possible ({e}); waiting for {em_id} to enter Stasis");
                    let wait = ADD_RETRY.min(deadline.saturating_duration_since(Instant::now()));
                    let _ = actix_rt::time::timeout(wait, self.media_in_stasis.notified()).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// Undo what exists, in an order that leaves Asterisk clean: stop our media, hang up our
/// externalMedia channel, destroy our bridge, hang up the caller. Every step runs even when
/// an earlier one failed; the lease drops last, when `built` goes out of scope. `local`: only
/// our side (media, port); Asterisk is left to the next reconciliation.
async fn teardown(
    ari: &AriClient,
    media: &MediaHandle,
    call_no: u64,
    caller_id: &str,
    built: Built,
    local: bool,
) -> Option<StreamReport> {
    let report = if built.stream_added {
        media.remove(call_no).await.ok().flatten()
    } else {
        None
    };
    if built.shared_watched {
        if let Ok(Some(r)) = media.unwatch_shared(call_no).await {
            log::info!("Call {caller_id} on the shared echo: {} packets from Asterisk", r.packets);
        }
    }
    if local {
        drop(built);
        return report;
    }
    if built.em_created {
        if let Err(e) = ari.hangup(&external_media_id(ari.app(), caller_id), HangupReason::Normal).await {
            log::error!("hanging up externalMedia channel of {caller_id} failed: {e}");
        }
    }
    if built.bridge_created {
        if let Err(e) = ari.destroy_bridge(&bridge_id(ari.app(), caller_id)).await {
            log::error!("destroying bridge of {caller_id} failed: {e}");
        }
    }
    if let Err(e) = ari.hangup(caller_id, HangupReason::Normal).await {
        log::error!("hanging up caller {caller_id} failed: {e}");
    }
    drop(built);
    report
}
