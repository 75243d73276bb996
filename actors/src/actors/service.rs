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
use super::supervisor::{CallInfo, GetCalls, MediaIdle, Shutdown, ShutdownReport, Supervisor};
use crate::ari::client::{AriClient, AriSettings};
use crate::media::{MediaHandle, StreamReport};
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
}

/// What `GET /ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
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
    pub restarts: u64,
    pub last_failure: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ActorNode>,
}

impl ActorNode {
    fn leaf(name: impl Into<String>, kind: &'static str, state: impl Into<String>) -> Self {
        ActorNode {
            name: name.into(),
            kind,
            state: state.into(),
            restarts: 0,
            last_failure: None,
            children: Vec::new(),
        }
    }
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
            Box::new(move |id| {
                if let Some(s) = idle_sup.get() {
                    s.do_send(MediaIdle(id));
                }
            }),
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
        let mut streams = self.media.snapshot().await.unwrap_or_default();
        Ok(calls
            .into_iter()
            .map(|call| {
                let media = streams
                    .iter()
                    .position(|s| s.id == call.call_no)
                    .map(|i| streams.swap_remove(i));
                ChannelView { call, media }
            })
            .collect())
    }

    pub async fn ready(&self) -> Result<Readiness, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let echo = self.echo.send(GetEchoStatus).await?;
        let media_engine = self.media.snapshot().await.is_ok();
        Ok(Readiness { ready: ari.connected && echo.bound.is_some() && media_engine, ari, echo, media_engine })
    }

    /// The supervision tree with each actor's state.
    pub async fn actors(&self) -> Result<ActorNode, MailboxError> {
        let ari = self.ari_conn.send(GetAriStatus).await?;
        let calls = self.supervisor.send(GetCalls).await?;
        let media_running = self.media.snapshot().await.is_ok();
        let running = |alive: bool| if alive { "running" } else { "stopped" };
        let mut sup = ActorNode::leaf("supervisor", "Supervisor", running(self.supervisor.connected()));
        sup.children.push(ActorNode::leaf("port-manager", "PortManager", running(self.ports.connected())));
        for c in calls {
            let state = serde_json::to_value(c.state).ok().and_then(|v| v.as_str().map(String::from));
            sup.children.push(ActorNode::leaf(
                format!("channel:{}", c.channel_id),
                "ChannelActor",
                state.unwrap_or_default(),
            ));
        }
        let mut ari_node = ActorNode::leaf(
            "ari-connection",
            "AriConnection",
            if ari.connected { "connected" } else { "reconnecting" },
        );
        ari_node.restarts = ari.connects.saturating_sub(1);
        ari_node.last_failure = ari.last_error;
        let mut root = ActorNode::leaf("rtpvisor", "Service", "running");
        root.children = vec![
            ActorNode::leaf("metrics", "MetricsActor", running(self.metrics.connected())),
            ActorNode::leaf("media-engine", "MediaThread", running(media_running)),
            ActorNode::leaf("echo", "EchoActor", running(self.echo.connected())),
            sup,
            ari_node,
        ];
        Ok(root)
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
