//! The system under test: the real actor system (`Service::start`), in its own thread
//! ("rtpvisor-svc") with its own actix System, exactly as `rtpvisor` runs it (metrics, media
//! engine thread "rtpvisor-media", echo socket, supervisor, port manager, ARI connection).
//! The bench talks to it through a small command channel, as the HTTP API would.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use tokio::sync::{mpsc, oneshot};

use rtpvisor::app::service_config;
use rtpvisor::config::Config;
use rtpvisor_actors::actors::metrics::MetricsSnapshot;
use rtpvisor_actors::actors::service::{ChannelView, Readiness};
use rtpvisor_actors::actors::Service;
use rtpvisor_actors::echo_guard::GuardSettings;
use rtpvisor_actors::mode::CallMode;

/// Threads whose CPU time is the service's: the actix System (actors, ARI client, metrics)
/// and the media engine.
pub const SERVICE_THREADS: &[&str] = &["rtpvisor-svc", "rtpvisor-media", "rtpvisor-echo"];

/// How to start it.
#[derive(Debug, Clone)]
pub struct SvcSettings {
    pub ari_url: String,
    pub ari_user: String,
    pub ari_password: String,
    pub app: String,
    pub rtp_ports: (u16, u16),
    pub default_mode: CallMode,
    /// The shared echo's limits (`echo.allow`, `echo.rate_pps`, `echo.burst`,
    /// `echo.max_bytes`).
    pub echo_guard: GuardSettings,
    /// Shared echo worker threads (`echo.workers`).
    pub echo_workers: u32,
}

/// The real service in echo mode against a fresh fake ARI (app `rtpvisor`), leasing from
/// `rtp_ports`: how items 1 and 2 start the system under test.
pub fn start_with_fake_ari(rtp_ports: (u16, u16)) -> anyhow::Result<(ServiceUnderTest, crate::fake_ari::FakeAri)> {
    start_with_fake_ari_and_echo(rtp_ports, GuardSettings::default(), 1)
}

/// [`start_with_fake_ari`] with the shared echo's limits set to `echo_guard`, on
/// `echo_workers` workers.
pub fn start_with_fake_ari_and_echo(
    rtp_ports: (u16, u16),
    echo_guard: GuardSettings,
    echo_workers: u32,
) -> anyhow::Result<(ServiceUnderTest, crate::fake_ari::FakeAri)> {
    let ari = crate::fake_ari::FakeAri::start("rtpvisor")?;
    let svc = ServiceUnderTest::start(&SvcSettings {
        ari_url: ari.url.clone(),
        ari_user: "rtpvisor".into(),
        ari_password: "rtpvisor".into(),
        app: "rtpvisor".into(),
        rtp_ports,
        default_mode: CallMode::Echo,
        echo_guard,
        echo_workers,
    })?;
    Ok((svc, ari))
}

/// What a Prometheus scrape reads and renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrapePath {
    /// `GET /metrics/prometheus` as it is (`rtpvisor::http::prometheus_text`).
    Service,
    /// The same with the whole supervision tree, a node per live call, as the scrape read it
    /// before: the baseline.
    WholeTree,
}

enum Cmd {
    Metrics(oneshot::Sender<Option<MetricsSnapshot>>),
    Scrape(ScrapePath, usize, oneshot::Sender<(Vec<Duration>, usize)>),
    Channels(oneshot::Sender<Vec<ChannelView>>),
    Ready(oneshot::Sender<Option<Readiness>>),
    Shutdown(Duration, oneshot::Sender<()>),
}

/// The running service.
pub struct ServiceUnderTest {
    cmd: mpsc::UnboundedSender<Cmd>,
    join: Option<thread::JoinHandle<()>>,
    /// Where its shared echo (the EchoActor's workers) was bound.
    pub echo_addr: SocketAddr,
}

impl ServiceUnderTest {
    pub fn start(s: &SvcSettings) -> anyhow::Result<Self> {
        // Through the service crate's own defaults and mapping, exactly as `rtpvisor` builds
        // its ServiceConfig; only what the bench needs differs.
        let mut c = Config::default();
        c.ari.url = s.ari_url.clone();
        c.ari.user = s.ari_user.clone();
        c.ari.password = rtpvisor::config::Secret::new(&s.ari_password);
        c.ari.app = s.app.clone();
        c.ari.reconnect_max_ms = 2000;
        c.media.host = "127.0.0.1".into();
        c.media.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        c.media.rtp_ports = rtpvisor_actors::ports::PortRange { start: s.rtp_ports.0, end: s.rtp_ports.1 };
        c.media.default_mode = s.default_mode;
        c.echo.addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        c.echo.allow = s.echo_guard.allow.clone();
        c.echo.rate_pps = s.echo_guard.rate_pps;
        c.echo.burst = s.echo_guard.burst;
        c.echo.max_bytes = s.echo_guard.max_bytes as u32;
        c.echo.workers = s.echo_workers;
        let cfg = service_config(&c)?;
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let join = thread::Builder::new().name("rtpvisor-svc".into()).spawn(move || {
            actix_rt::System::new().block_on(async move {
                let svc = match Service::start(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let echo = svc.ready().await.ok().and_then(|r| r.echo.bound);
                let _ = ready_tx.send(echo.ok_or_else(|| "the echo socket is not bound".to_string()));
                // Ends on Shutdown or when the bench drops its handle.
                while let Some(cmd) = cmd_rx.recv().await {
                    match cmd {
                        Cmd::Metrics(r) => {
                            let _ = r.send(svc.metrics().await.ok());
                        }
                        Cmd::Scrape(path, reps, r) => {
                            let _ = r.send(scrapes(&svc, path, reps).await);
                        }
                        Cmd::Channels(r) => {
                            let _ = r.send(svc.channels().await.unwrap_or_default());
                        }
                        Cmd::Ready(r) => {
                            let _ = r.send(svc.ready().await.ok());
                        }
                        Cmd::Shutdown(deadline, r) => {
                            let _ = svc.shutdown(deadline).await;
                            let _ = r.send(());
                            break;
                        }
                    }
                }
            });
        })?;
        let echo_addr = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .context("the service did not start within 20 s")?
            .map_err(|e| anyhow!("the service did not start: {e}"))?;
        Ok(ServiceUnderTest { cmd: cmd_tx, join: Some(join), echo_addr })
    }

    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).ok()?;
        rx.blocking_recv().ok()
    }

    pub fn metrics(&self) -> Option<MetricsSnapshot> {
        self.ask(Cmd::Metrics).flatten()
    }

    /// Times `reps` scrapes one after the other, on the service's own thread (where the HTTP
    /// handlers' requests to the actors are answered); and the last body's length.
    pub fn scrape(&self, path: ScrapePath, reps: usize) -> (Vec<Duration>, usize) {
        self.ask(|r| Cmd::Scrape(path, reps, r)).unwrap_or_default()
    }

    pub fn channels(&self) -> Vec<ChannelView> {
        self.ask(Cmd::Channels).unwrap_or_default()
    }

    pub fn ready(&self) -> Option<Readiness> {
        self.ask(Cmd::Ready).flatten()
    }

    /// Ends every call (the service's own shutdown sequence) and stops its threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.ask(|r| Cmd::Shutdown(Duration::from_secs(10), r));
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for ServiceUnderTest {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn scrapes(svc: &Service, path: ScrapePath, reps: usize) -> (Vec<Duration>, usize) {
    let mut times = Vec::with_capacity(reps);
    let mut len = 0;
    for _ in 0..reps {
        let t = std::time::Instant::now();
        let body = match path {
            ScrapePath::Service => rtpvisor::http::prometheus_text(svc).await.ok(),
            ScrapePath::WholeTree => whole_tree_scrape(svc).await,
        };
        times.push(t.elapsed());
        match body {
            Some(b) => len = b.len(),
            None => break, // the service is going away: no figure
        }
    }
    (times, len)
}

async fn whole_tree_scrape(svc: &Service) -> Option<String> {
    let m = svc.metrics().await.ok()?;
    let ports = svc.ports().await.ok()?;
    let actors = svc.actors(true).await.ok()?;
    let mut body = rtpvisor::prometheus::render(&m, &ports);
    body.push_str(&rtpvisor::prometheus::render_actors(&actors));
    Some(body)
}
