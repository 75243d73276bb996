//! Service: starts the actor system in order and is the typed handle the HTTP API and `main`
//! talk to (never raw addresses). Start order follows the dependencies: metrics, media engine,
//! echo socket, supervisor (with its port manager), and last the ARI connection, so no event
//! can arrive before there is someone to handle it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::ari_conn::{AriConnection, AriStatus, GetAriStatus};
use super::channel::CallSettings;
use super::echo::{EchoActor, EchoStatus, GetEchoStatus};
use super::metrics::{Flush, GetMetrics, MetricsActor, MetricsSnapshot};
use super::port_manager::{GetPorts, PortManager};
use super::failure::FailureRecord;
use super::supervisor::{
    CallInfo, GetCalls, GetSupervisorStatus, InjectChannelPanic, InjectSupervisorPanic, MediaIdle, Shutdown,
    ShutdownReport, Supervisor,
};
use crate::intensity::Intensity;
use crate::ari::client::{AriClient, AriSettings};
use crate::media::{EngineOptions, IdleReason, MediaHandle, StreamReport};
use crate::mode::CallMode;
use crate::ports::{PoolSnapshot, PortRange};

/// Everything the actor system needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub ari: AriSettings,
    pub call: CallSettings,
    pub rtp_ports: PortRange,
    pub quarantine: Duration,
    pub echo_addr: SocketAddr,
    pub default_mode: CallMode,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Restart intensity for call actors: at most this many failures within `restart_window`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// Whether the fault-injection entry points may be used (tests only).
    pub faults_enabled: bool,
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
}

/// What `GET /ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
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
    pub media: Option<StreamReport>,
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
    /// Starts every actor; call from inside a running actix System.
    pub async fn start(cfg: ServiceConfig) -> Result<Service, StartError> {
        let metrics = MetricsActor::default().start();
        let sink_addr = metrics.clone();
        // The supervisor starts after the engine; idle notices before then have nowhere to go
        // (and cannot happen: there are no streams yet).
        let idle_to: Arc<OnceLock<Addr<Supervisor>>> = Arc::new(OnceLock::new());
        let idle_sup = idle_to.clone();
        let (media, join) = MediaHandle::start(
            Box::new(move |f| sink_addr.do_send(Flush(f))),
            Box::new(move |id, reason| {
                if let Some(s) = idle_sup.get() {
                    if reason == IdleReason::NoMedia {
                        s.do_send(MediaIdle(id));
                    }
                }
            }),
            EngineOptions::default(),
        )
        .map_err(StartError::Media)?;
        let echo_sock = UdpSocket::bind(cfg.echo_addr)
            .map_err(|source| StartError::EchoBind { addr: cfg.echo_addr, source })?;
        let echo_bound = echo_sock.local_addr().map_err(StartError::Media)?;
        media
            .set_reflector(echo_sock)
            .await
            .map_err(|e| StartError::Media(std::io::Error::other(e)))?
            .map_err(StartError::Media)?;
        let echo = EchoActor::new(echo_bound).start();
        let ari = AriClient::new(cfg.ari.clone());
        let sup = Supervisor::new(
            ari.clone(),
            PortManager::new(cfg.rtp_ports, cfg.quarantine),
            metrics.clone(),
            media.clone(),
            cfg.call.clone(),
            cfg.default_mode,
            Intensity::new(cfg.max_restarts, cfg.restart_window),
        );
        let ports = sup.port_manager();
        let supervisor = sup.start();
        let _ = idle_to.set(supervisor.clone());
        let ari_conn =
            AriConnection::new(ari, supervisor.clone(), metrics.clone(), cfg.reconnect_min, cfg.reconnect_max)
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
        })
    }

    pub async fn metrics(&self) -> Result<MetricsSnapshot, MailboxError> {
        self.metrics.send(GetMetrics).await
    }

    pub async fn ports(&self) -> Result<PoolSnapshot, MailboxError> {
        self.ports.send(GetPorts).await
    }

    /// Live calls joined with their media streams.
    pub async fn channels(&self) -> Result<Vec<ChannelView>, MailboxError> {
        let calls = self.supervisor.send(GetCalls).await?;
        let mut streams: std::collections::HashMap<u64, StreamReport> =
            self.media.snapshot().await.unwrap_or_default().streams.into_iter().map(|s| (s.id, s)).collect();
        Ok(calls
            .into_iter()
            .map(|call| {
                let media = streams.remove(&call.call_no);
                ChannelView { call, media }
            })
            .collect())
    }

    pub async fn ready(&self) -> Result<Readiness, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let echo = self.echo.send(GetEchoStatus).await?;
        let media_engine = self.media.snapshot().await.is_ok();
        let supervisor = self.supervisor.send(GetSupervisorStatus).await?.state;
        Ok(Readiness {
            ready: ari.connected && echo.bound.is_some() && media_engine && supervisor == "running",
            supervisor,
            ari,
            echo,
            media_engine,
        })
    }

    /// The supervision tree with each actor's state.
    pub async fn actors(&self) -> Result<ActorNode, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let calls = self.supervisor.send(GetCalls).await?;
        let media_running = self.media.snapshot().await.is_ok();
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
            escalate(ActorNode::leaf("media-engine", "MediaThread", running(media_running))),
            escalate(ActorNode::leaf("echo", "EchoActor", running(self.echo.connected()))),
            sup,
            ari_node,
        ];
        Ok(root)
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults_enabled
    }

    /// Fault injection: panic in the ChannelActor of a call. `Ok(false)`: no such call.
    pub async fn inject_channel_panic(&self, id: &str) -> Result<bool, MailboxError> {
        self.supervisor.send(InjectChannelPanic(id.to_string())).await
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
        self.media.shutdown();
        let join = self.media_thread.lock().ok().and_then(|mut j| j.take());
        if let Some(j) = join {
            let _ = actix_rt::task::spawn_blocking(move || j.join()).await;
        }
        report
    }
}
