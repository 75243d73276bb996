//! Service: starts the actor system in order and is the typed handle the HTTP API and `main`
//! talk to (never raw addresses). Start order follows the dependencies: metrics, media engine,
//! echo socket, supervisor (with its port manager), and last the ARI connection, so no event
//! can arrive before there is someone to handle it. The ARI connection takes the Stasis app
//! only when told ([`Service::take_app`]), after the process holds every local resource.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::ari_conn::{AriConnection, AriStatus, GetAriStatus, TakeApp};
use super::channel::CallSettings;
use super::echo::{EchoActor, EchoStatus, GetEchoStatus, InjectEchoFault};
use super::metrics::{
    CallEvent, Flush, GetEndedCalls, GetEvents, GetLatencyHistogram, GetMetrics, LatencyHistogramView, MetricsActor, MetricsSnapshot,
};
use super::port_manager::{GetPorts, PortManager};
use super::failure::FailureRecord;
use super::supervisor::{
    CallInfo, GetCalls, GetSupervisorStatus, InjectChannelPanic, InjectSupervisorPanic, MediaIdle, Shutdown,
    ShutdownReport, Supervisor,
};
use crate::echo_guard::GuardSettings;
use crate::intensity::Intensity;
use crate::ari::client::{AriClient, AriSettings};
use crate::ari::liveness::LivenessSettings;
use crate::media::{EngineOptions, IdleReason, Liveness, MediaHandle, SharedReport, StreamReport};
use crate::shared_echo::{EchoSettings, EchoWorkers};
use crate::mode::CallMode;
use crate::quality::{self, Quality};
use crate::ports::{PoolSnapshot, PortRange};

/// Everything the actor system needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub ari: AriSettings,
    pub call: CallSettings,
    pub rtp_ports: PortRange,
    pub quarantine: Duration,
    pub echo_addr: SocketAddr,
    /// Shared echo worker threads, one SO_REUSEPORT socket each.
    pub echo_workers: usize,
    /// What the shared echo answers: allow-list, per-source rate, size limit.
    pub echo_guard: GuardSettings,
    pub default_mode: CallMode,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Restart intensity for call actors: at most this many failures within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Whether the fault-injection entry points may be used (tests only).
    pub faults_enabled: bool,
    /// Admission limit, every mode counted; 0 means the pool's size.
    pub max_calls: usize,
    /// While the ARI link is down, a call whose media stopped this long ends locally (0: off).
    pub link_down_silence: Duration,
    /// The media engine is stalled after this long without a loop turn; its requests time out
    /// after half of it, so a caller learns of a stall before the watchdog acts on it.
    pub media_stall: Duration,
    /// Events WebSocket keep-alive: ping interval, and how long a ping may go unanswered.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind the echo address {addr}: {source}")]
    EchoBind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the media engine: {0}")]
    Media(std::io::Error),
    #[error("an actor did not answer during startup: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("ARI TLS: {0}")]
    Tls(#[from] crate::ari::tls::TlsError),
}

/// The running service; cheap to clone, `Send`.
#[derive(Clone)]
pub struct Service {
    supervisor: Addr<Supervisor>,
    ports: Addr<PortManager>,
    metrics: Addr<MetricsActor>,
    ari_conn: Addr<AriConnection>,
    echo: Addr<EchoActor>,
    media: MediaHandle,
    media_thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    faults_enabled: bool,
    /// Shutdown has begun: the media engine stops on purpose.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// What `GET /ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not ready (the first cause found); null when ready.
    pub reason: Option<String>,
    /// The supervisor's state: `running`, `degraded` or `shutting_down`.
    pub supervisor: &'static str,
    pub ari: AriStatus,
    pub echo: EchoStatus,
    pub media_engine: bool,
}

/// One live call with its media figures (`GET /channels`).
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    #[serde(flatten)]
    pub call: CallInfo,
    /// The call's own stream (echo, probe); null for shared-echo.
    pub media: Option<StreamReport>,
    /// Shared-echo: what the echo reflected for this call's Asterisk address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_echo: Option<SharedReport>,
    /// R-factor and MOS from the call's media figures ([`quality`]); null while nothing is
    /// measured yet, and for shared-echo (no measures of its own).
    pub quality: Option<Quality>,
}

/// A node of the supervision tree (`GET /actors`).
#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub name: String,
    pub kind: &'static str,
    pub state: String,
    /// What happens when it fails (see ARCHITECTURE.md).
    pub policy: &'static str,
    /// Times it was restarted (the ARI connection: reconnects).
    pub restarts: u64,
    /// Supervisor: children that failed (call actors are not restarted; their calls end).
    #[serde(skip_serializing_if = "is_zero")]
    pub child_failures: u64,
    pub last_failure: Option<FailureRecord>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ActorNode>,
}

impl ActorNode {
    fn leaf(name: impl Into<String>, kind: &'static str, state: impl Into<String>) -> Self {
        ActorNode {
            name: name.into(),
            kind,
            state: state.into(),
            policy: "",
            restarts: 0,
            child_failures: 0,
            last_failure: None,
            children: Vec::new(),
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Service {
    /// Starts every actor and takes the Stasis app at once; call from inside a running actix
    /// System. A process that binds more of its own (an HTTP server) uses
    /// [`Service::start_local`], binds, then [`Service::take_app`].
    pub async fn start(cfg: ServiceConfig) -> Result<Service, StartError> {
        let service = Self::start_local(cfg).await?;
        service.take_app();
        Ok(service)
    }

    /// Starts every actor and holds every local resource (media engine, echo port) but does
    /// not connect to ARI yet: the Stasis app stays with whoever holds it until
    /// [`Service::take_app`].
    pub async fn start_local(cfg: ServiceConfig) -> Result<Service, StartError> {
        let metrics = MetricsActor::default().start();
        let sink_addr = metrics.clone();
        // The supervisor starts after the engine; idle notices before then have nowhere to go
        // (and cannot happen: there are no streams yet).
        let idle_to: Arc<OnceLock<Addr<Supervisor>>> = Arc::new(OnceLock::new());
        let idle_sup = idle_to.clone();
        let (media, join) = MediaHandle::start(
            Box::new(move |f| sink_addr.do_send(Flush(f))),
            Box::new(move |id, reason: IdleReason| {
                if let Some(s) = idle_sup.get() {
                    s.do_send(MediaIdle(id, reason));
                }
            }),
            EngineOptions { request_timeout: cfg.media_stall / 2, stall_bound: cfg.media_stall, ..EngineOptions::default() },
        )
        .map_err(StartError::Media)?;
        // Restarted in place like call actors are not: under the same intensity.
        let echo_workers = EchoWorkers::start(
            &EchoSettings { addr: cfg.echo_addr, workers: cfg.echo_workers, guard: cfg.echo_guard.clone() },
            media.shared_watches(),
            Intensity::new(cfg.max_restarts, cfg.restart_window),
        )
        .map_err(|source| StartError::EchoBind { addr: cfg.echo_addr, source })?;
        let echo = EchoActor::new(echo_workers, metrics.clone()).start();
        let ari = AriClient::new(cfg.ari.clone())?;
        let sup = Supervisor::new(
            ari.clone(),
            PortManager::new(cfg.rtp_ports, cfg.quarantine),
            metrics.clone(),
            media.clone(),
            cfg.call.clone(),
            cfg.default_mode,
            Intensity::new(cfg.max_restarts, cfg.restart_window),
        );
        let max_calls = if cfg.max_calls == 0 { cfg.rtp_ports.len() } else { cfg.max_calls };
        let sup = sup.with_max_calls(max_calls).with_link_down_silence(cfg.link_down_silence);
        let ports = sup.port_manager();
        let supervisor = sup.start();
        let _ = idle_to.set(supervisor.clone());
        let ari_conn = AriConnection::new(
            ari,
            supervisor.clone(),
            metrics.clone(),
            cfg.reconnect_min,
            cfg.reconnect_max,
            LivenessSettings { ping_interval: cfg.ping_interval, ping_timeout: cfg.ping_timeout },
        )
        .start();
        Ok(Service {
            supervisor,
            ports,
            metrics,
            ari_conn,
            echo,
            media,
            media_thread: Arc::new(Mutex::new(Some(join))),
            faults_enabled: cfg.faults_enabled,
            stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        })
    }

    /// Connects the events WebSocket, which takes our Stasis app (then adopts and reconciles).
    pub fn take_app(&self) {
        self.ari_conn.do_send(TakeApp);
    }

    pub async fn metrics(&self) -> Result<MetricsSnapshot, MailboxError> {
        let mut m = self.metrics.send(GetMetrics).await?;
        m.media_engine = self.media.counters();
        Ok(m)
    }

    /// The last call events, oldest first.
    pub async fn events(&self) -> Result<Vec<CallEvent>, MailboxError> {
        self.metrics.send(GetEvents).await
    }

    /// Calls that ended (or were refused) after `since`, with their figures, oldest first.
    pub async fn ended_calls(&self, since: u64, limit: usize) -> Result<crate::ended::EndedPage, MailboxError> {
        self.metrics.send(GetEndedCalls { since, limit }).await
    }

    /// Per-mode latency counts per bucket.
    pub async fn latency_histogram(&self) -> Result<LatencyHistogramView, MailboxError> {
        self.metrics.send(GetLatencyHistogram).await
    }

    pub async fn ports(&self) -> Result<PoolSnapshot, MailboxError> {
        self.ports.send(GetPorts).await
    }

    /// Live calls joined with their media streams.
    pub async fn channels(&self) -> Result<Vec<ChannelView>, MailboxError> {
        let calls = self.supervisor.send(GetCalls).await?;
        // Shared with whoever asked at the same time: read, not taken.
        let snapshot = self.media.snapshot().await.unwrap_or_default();
        let mut streams: std::collections::HashMap<u64, &StreamReport> =
            snapshot.streams.iter().map(|s| (s.id, s)).collect();
        let mut shared: std::collections::HashMap<u64, &SharedReport> =
            snapshot.shared.iter().map(|s| (s.id, s)).collect();
        Ok(calls
            .into_iter()
            .map(|call| {
                let media = streams.remove(&call.call_no).cloned();
                let shared_echo = shared.remove(&call.call_no).cloned();
                let quality = media.as_ref().and_then(quality::stream_quality);
                ChannelView { call, media, shared_echo, quality }
            })
            .collect())
    }

    pub async fn ready(&self) -> Result<Readiness, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let echo = self.echo.send(GetEchoStatus).await?;
        let liveness = self.media.liveness();
        let media_engine = liveness == Liveness::Running;
        let supervisor = self.supervisor.send(GetSupervisorStatus).await?.state;
        let reason = if supervisor != "running" {
            Some(format!("supervisor {supervisor}"))
        } else if !media_engine {
            Some(format!("media engine {liveness}"))
        } else if echo.bound.is_none() {
            Some("echo socket not bound".to_string())
        } else if !echo.answering() {
            Some("echo: no worker running".to_string())
        } else {
            ari.reason.clone().map(|r| format!("ARI: {r}"))
        };
        Ok(Readiness {
            ready: reason.is_none() && ari.connected,
            reason,
            supervisor,
            ari,
            echo,
            media_engine,
        })
    }

    /// The supervision tree with each actor's state; with a node per live call when
    /// `with_calls` (without, it costs the same whatever the number of calls: what a metrics
    /// scrape asks for).
    pub async fn actors(&self, with_calls: bool) -> Result<ActorNode, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let calls = if with_calls { self.supervisor.send(GetCalls).await? } else { Vec::new() };
        let liveness = self.media.liveness();
        let status = self.supervisor.send(GetSupervisorStatus).await?;
        let running = |alive: bool| if alive { "running" } else { "stopped" };
        let mut sup = ActorNode::leaf("supervisor", "Supervisor", status.state);
        sup.policy = "escalate: the process exits (70) and is restarted by its supervisor";
        sup.child_failures = status.channel_failures;
        sup.last_failure = status.last_failure;
        let mut pm = ActorNode::leaf("port-manager", "PortManager", running(self.ports.connected()));
        pm.policy = "escalate";
        sup.children.push(pm);
        for c in calls {
            let state = serde_json::to_value(c.state).ok().and_then(|v| v.as_str().map(String::from));
            let mut node =
                ActorNode::leaf(format!("channel:{}", c.channel_id), "ChannelActor", state.unwrap_or_default());
            node.policy = "no restart: on failure the call is ended cleanly; counted against the restart intensity";
            sup.children.push(node);
        }
        let mut ari_node = ActorNode::leaf(
            "ari-connection",
            "AriConnection",
            if ari.connected { "connected" } else { "reconnecting" },
        );
        ari_node.restarts = ari.connects.saturating_sub(1);
        ari_node.policy = "reconnect with capped exponential backoff and jitter; not ready meanwhile";
        ari_node.last_failure = ari.last_failure;
        let mut root = ActorNode::leaf("rtpvisor", "Service", "running");
        let escalate = |mut n: ActorNode| {
            n.policy = "escalate";
            n
        };
        root.children = vec![
            escalate(ActorNode::leaf("metrics", "MetricsActor", running(self.metrics.connected()))),
            {
                let mut n = ActorNode::leaf("media-engine", "MediaThread", liveness.to_string());
                n.policy = "escalate: a death or a stall (no loop turn for supervision.media_stall_ms) exits the process (70)";
                if let Liveness::Dead { reason } = &liveness {
                    n.last_failure = Some(FailureRecord::now(reason.clone()));
                }
                n
            },
            self.echo_node().await,
            sup,
            ari_node,
        ];
        Ok(root)
    }

    /// The EchoActor and its workers; a stopped actor (escalated) has no status to give.
    async fn echo_node(&self) -> ActorNode {
        let status = self.echo.send(GetEchoStatus).await.ok();
        let mut n = ActorNode::leaf("echo", "EchoActor", if status.is_some() { "running" } else { "stopped" });
        n.policy = "restart in place: a dead or stalled worker gets a new thread and socket within 1 s; \
                    past the restart intensity, escalate (exit 70)";
        if let Some(s) = status {
            n.restarts = s.restarts;
            n.last_failure = s.last_failure;
            n.children = s
                .workers
                .into_iter()
                .map(|w| {
                    let mut c = ActorNode::leaf(format!("echo-worker:{}", w.index), "EchoWorker", w.state);
                    c.policy = "restarted in place by the EchoActor";
                    c.restarts = w.restarts;
                    c
                })
                .collect();
        }
        n
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults_enabled
    }

    /// Fault injection: panic in the ChannelActor of a call. `Ok(false)`: no such call.
    pub async fn inject_channel_panic(&self, id: &str) -> Result<bool, MailboxError> {
        self.supervisor.send(InjectChannelPanic(id.to_string())).await
    }

    /// Fault injection: the media engine's thread blocks for `d` (a stall: the process
    /// escalates once it passes `supervision.media_stall_ms`).
    pub fn inject_media_stall(&self, d: Duration) -> Result<(), crate::media::EngineError> {
        self.media.inject_stall(d)
    }

    /// Fault injection: the media engine's thread panics (the process escalates).
    pub fn inject_media_panic(&self) -> Result<(), crate::media::EngineError> {
        self.media.inject_panic()
    }

    /// The media engine's health, for the watchdog: a stall or death escalates, except once
    /// shutdown has stopped the engine on purpose.
    pub fn media_failure(&self) -> Option<String> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        match self.media.liveness() {
            Liveness::Running => None,
            l => Some(format!("media engine {l}")),
        }
    }

    /// Fault injection: every shared echo worker panics (the EchoActor restarts them).
    pub fn inject_echo_panic(&self) {
        self.echo.do_send(InjectEchoFault::Panic);
    }

    /// Fault injection: every shared echo worker blocks for `d` (the EchoActor replaces them).
    pub fn inject_echo_stall(&self, d: Duration) {
        self.echo.do_send(InjectEchoFault::Stall(d));
    }

    /// Fault injection: panic in the Supervisor (the process escalates and exits).
    pub fn inject_supervisor_panic(&self) {
        self.supervisor.do_send(InjectSupervisorPanic);
    }

    /// Long-lived actors that are gone (a panic killed them): the process must escalate.
    pub fn dead_actors(&self) -> Vec<&'static str> {
        let mut dead = Vec::new();
        for (name, alive) in [
            ("supervisor", self.supervisor.connected()),
            ("port-manager", self.ports.connected()),
            ("metrics", self.metrics.connected()),
            ("echo", self.echo.connected()),
            ("ari-connection", self.ari_conn.connected()),
        ] {
            if !alive {
                dead.push(name);
            }
        }
        dead
    }

    /// Ends every call (hang up, destroy bridges, release ports) within `deadline`, then stops
    /// the media engine.
    pub async fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport, MailboxError> {
        let report = self.supervisor.send(Shutdown { deadline }).await;
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.media.shutdown();
        let join = self.media_thread.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            let _ = actix_rt::task::spawn_blocking(move || j.join()).await;
        }
        report
    }
}
