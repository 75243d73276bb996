//! The real-Asterisk benchmark: the real Asterisk. N probe calls (ARI originate of
//! `Local/echo@rtpvisor-test`, whose far half runs `Echo()`) into the real service for S
//! seconds: round-trip time and loss as the service reports them, StasisStart to first echoed
//! probe per call, the service-side setup time (StasisStart handled -> every setup request sent
//! and answered), and the service's CPU.
//!
//! It only runs when `scripts/asterisk.sh status` says Asterisk runs, never starts or stops it,
//! and stays out of the way of others using it: its own Stasis app (`rtpvisor-bench`), its own
//! port range (28000-28199), channel ids of its own (`rvbench-<pid>-<i>`), and it checks that
//! none of its channels are left when it is done.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::report::{LatencyStats, ThreadCpu};
use crate::wire::{WireCapture, WireResult};
use crate::service_run::{ServiceUnderTest, SvcSettings, SERVICE_THREADS};
use crate::{logcap, sys};
use rtpvisor_actors::actors::channel::CallState;
use rtpvisor_actors::ari::client::{AriClient, AriSettings};
use rtpvisor_actors::latency::LatencySummary;
use rtpvisor_actors::mode::CallMode;

pub const APP: &str = "rtpvisor-bench";
pub const PORTS: (u16, u16) = (28000, 28199);
const ARI_URL: &str = "http://127.0.0.1:8088/ari";

#[derive(Debug, Clone, Copy)]
pub struct AsteriskOpts {
    pub calls: usize,
    pub measure: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct AsteriskResult {
    pub calls: usize,
    pub calls_active: usize,
    pub seconds: f64,
    /// The service's probe round-trip times over the whole run (`modes.probe.latency`), ms.
    pub rtt_service_ms: LatencySummary,
    pub probes_expected: u64,
    pub probes_lost: u64,
    pub loss_ratio: f64,
    /// Per call: StasisStart handled by the service -> first probe back, ms (+- 10 ms polling).
    pub stasis_to_first_probe: LatencyStats,
    /// Per call: StasisStart handled -> "Created channel" (every setup request sent and
    /// answered by Asterisk).
    pub setup: LatencyStats,
    pub service_cpu_cores: f64,
    pub threads: Vec<ThreadCpu>,
    /// Our channels still in Asterisk after the service shut down (should be 0).
    pub leftover_channels: usize,
    /// The same round trips seen on the loopback interface (None: capture not possible, see
    /// `wire_error`).
    pub wire: Option<WireResult>,
    pub wire_error: Option<String>,
    /// Service-reported p99 minus the wire's p99, ms.
    pub p99_above_wire_ms: Option<f64>,
    pub service_metrics: Option<serde_json::Value>,
}

/// Why the real-Asterisk item did not run, or what it measured.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AsteriskOutcome {
    Skipped { reason: String },
    Ran(Box<AsteriskResult>),
}

/// True when `scripts/asterisk.sh status` exits 0 (Asterisk runs and ARI answers).
pub fn asterisk_running(repo: &Path) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(repo.join("scripts/asterisk.sh"))
        .arg("status")
        .output()
        .map_err(|e| format!("cannot run scripts/asterisk.sh status: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "scripts/asterisk.sh status says Asterisk is not running ({})",
            String::from_utf8_lossy(&out.stdout).trim().lines().next().unwrap_or("no output")
        ))
    }
}

pub fn run(repo: &Path, opts: AsteriskOpts) -> AsteriskOutcome {
    if let Err(reason) = asterisk_running(repo) {
        return AsteriskOutcome::Skipped { reason };
    }
    match run_calls(opts) {
        Ok(r) => AsteriskOutcome::Ran(Box::new(r)),
        Err(e) => AsteriskOutcome::Skipped { reason: format!("failed: {e:#}") },
    }
}

fn ari_settings() -> AriSettings {
    AriSettings {
        url: ARI_URL.into(),
        user: std::env::var("RTPVISOR_ARI_USER").unwrap_or_else(|_| "rtpvisor".into()),
        password: std::env::var("RTPVISOR_ARI_PASSWORD").unwrap_or_else(|_| "rtpvisor".into()).into(),
        ca_file: None,
        app: APP.into(),
        request_timeout: Duration::from_secs(10),
    }
}

fn run_calls(opts: AsteriskOpts) -> anyhow::Result<AsteriskResult> {
    let s = ari_settings();
    let svc = ServiceUnderTest::start(&SvcSettings {
        ari_url: s.url.clone(),
        ari_user: s.user.clone(),
        ari_password: secrecy::ExposeSecret::expose_secret(&s.password).to_owned(),
        app: APP.into(),
        rtp_ports: PORTS,
        default_mode: CallMode::Probe,
        echo_guard: rtpvisor_actors::echo_guard::GuardSettings::default(),
        echo_workers: 1,
    })?;
    let connected = crate::fake_ari::wait_for(Duration::from_secs(15), || svc.ready().is_some_and(|r| r.ari.connected));
    if !connected {
        bail!("the service did not connect to Asterisk's ARI within 15 s");
    }
    thread::sleep(Duration::from_millis(300));
    let ari = AriThread::start(s)?;
    let (wire, mut wire_error) = match WireCapture::start(PORTS) {
        Ok(w) => (Some(w), None),
        Err(e) => (None, Some(format!("no packet capture: {e} (needs root / CAP_NET_RAW)"))),
    };
    let prefix = format!("rvbench-{}", std::process::id());
    logcap::start_capture();
    let ids: Vec<String> = (0..opts.calls).map(|i| format!("{prefix}-{i}")).collect();
    let failures = ari.originate(ids.clone())?;
    if failures.len() == ids.len() {
        bail!("every originate failed, e.g. {}", failures[0]);
    }
    for f in failures.iter().take(3) {
        eprintln!("   originate failed: {f}");
    }
    // Watch the calls come up and their first probe come back (polling, 10 ms).
    let mut first_probe: HashMap<String, Instant> = HashMap::new();
    let mut active = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let now = Instant::now();
        let views = svc.channels();
        active = views.iter().filter(|v| v.call.state == CallState::Active).count();
        for v in &views {
            if first_probe.contains_key(&v.call.channel_id) {
                continue;
            }
            if let Some(m) = &v.media {
                if m.probe.is_some_and(|p| p.returned > 0) {
                    let ago = Duration::from_millis(m.last_packet_ms_ago.unwrap_or(0));
                    let returned = m.probe.map_or(0, |p| p.returned);
                    // With exactly one probe back, the last packet is the first one.
                    let at = if returned == 1 { now.checked_sub(ago).unwrap_or(now) } else { now };
                    first_probe.insert(v.call.channel_id.clone(), at);
                }
            }
        }
        if first_probe.len() >= ids.len() - failures.len() {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let lines = logcap::take_captured();
    let cpu0 = sys::ThreadTimes::now();
    let t_measure = Instant::now();
    thread::sleep(opts.measure);
    let cpu1 = sys::ThreadTimes::now();
    let window = t_measure.elapsed().as_secs_f64();
    let metrics = svc.metrics();
    svc.stop();
    let wire = wire.map(WireCapture::stop);
    if wire.as_ref().is_some_and(|w| w.matched == 0) {
        wire_error = Some("the capture matched no probe round trip".into());
    }
    thread::sleep(Duration::from_millis(500));
    let leftover_channels = ari
        .channel_ids()
        .map(|v| v.iter().filter(|id| id.contains(&prefix)).count())
        .unwrap_or(usize::MAX);
    ari.stop();

    let threads: Vec<ThreadCpu> =
        cpu1.since(&cpu0).into_iter().map(|(name, secs)| ThreadCpu { cores: secs / window, name }).collect();
    let service_cpu_cores =
        threads.iter().filter(|t| SERVICE_THREADS.iter().any(|n| t.name.starts_with(n))).map(|t| t.cores).sum();
    let mut stasis: HashMap<String, Instant> = HashMap::new();
    let mut setup = hist();
    for (t, line) in &lines {
        if let Some(rest) = line.strip_prefix("StasisStart event received for channel ") {
            stasis.insert(rest.split_whitespace().next().unwrap_or("").to_string(), *t);
        } else if let Some(rest) = line.strip_prefix("Created channel ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            if let Some(s) = stasis.get(id) {
                let _ = setup.record(t.saturating_duration_since(*s).as_nanos().max(1) as u64);
            }
        }
    }
    let mut to_probe = hist();
    for (id, t) in &first_probe {
        if let Some(s) = stasis.get(id) {
            let _ = to_probe.record(t.saturating_duration_since(*s).as_nanos().max(1) as u64);
        }
    }
    let m = metrics.ok_or_else(|| anyhow!("the service gave no metrics"))?;
    let probe = &m.modes.probe;
    let p99_above_wire_ms =
        wire.as_ref().filter(|w| w.matched > 0).map(|w| probe.latency.p99_ms - w.rtt.p99_us / 1000.0);
    Ok(AsteriskResult {
        calls: opts.calls,
        calls_active: active,
        seconds: window,
        rtt_service_ms: probe.latency,
        probes_expected: probe.expected,
        probes_lost: probe.lost,
        loss_ratio: probe.packet_loss_ratio,
        stasis_to_first_probe: LatencyStats::from_ns(&to_probe),
        setup: LatencyStats::from_ns(&setup),
        service_cpu_cores,
        threads,
        leftover_channels,
        wire,
        wire_error,
        p99_above_wire_ms,
        service_metrics: serde_json::to_value(&m).ok(),
    })
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("constant bounds")
}

enum AriCmd {
    Originate(Vec<String>, oneshot::Sender<Vec<String>>),
    ChannelIds(oneshot::Sender<Result<Vec<String>, String>>),
}

/// An ARI client on its own thread ("bench-ari", its own actix System: awc is not Send), so
/// placing calls costs the service nothing.
struct AriThread {
    tx: mpsc::UnboundedSender<AriCmd>,
    join: thread::JoinHandle<()>,
}

impl AriThread {
    fn start(settings: AriSettings) -> anyhow::Result<Self> {
        let (tx, mut rx) = mpsc::unbounded_channel::<AriCmd>();
        let join = thread::Builder::new().name("bench-ari".into()).spawn(move || {
            actix_rt::System::new().block_on(async move {
                let ari = AriClient::new(settings).expect("no CA file: nothing that can fail");
                while let Some(cmd) = rx.recv().await {
                    match cmd {
                        AriCmd::Originate(ids, reply) => {
                            let mut failures = Vec::new();
                            // Ten at a time: fast, without flooding an Asterisk others use.
                            for chunk in ids.chunks(10) {
                                let calls = chunk.iter().map(|id| ari.originate("Local/echo@rtpvisor-test", "probe", Some(id)));
                                for r in futures_util::future::join_all(calls).await {
                                    if let Err(e) = r {
                                        failures.push(e.to_string());
                                    }
                                }
                            }
                            let _ = reply.send(failures);
                        }
                        AriCmd::ChannelIds(reply) => {
                            let r = ari.channels().await.map(|v| v.into_iter().map(|c| c.id).collect()).map_err(|e| e.to_string());
                            let _ = reply.send(r);
                        }
                    }
                }
            });
        })?;
        Ok(AriThread { tx, join })
    }

    fn originate(&self, ids: Vec<String>) -> anyhow::Result<Vec<String>> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(AriCmd::Originate(ids, tx)).map_err(|_| anyhow!("ARI thread gone"))?;
        rx.blocking_recv().context("ARI thread gone")
    }

    fn channel_ids(&self) -> Result<Vec<String>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(AriCmd::ChannelIds(tx)).map_err(|_| "ARI thread gone".to_string())?;
        rx.blocking_recv().map_err(|_| "ARI thread gone".to_string())?
    }

    fn stop(self) {
        drop(self.tx);
        let _ = self.join.join();
    }
}
