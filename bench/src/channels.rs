//! The channel benchmark: channel media at scale. For each channel count, three systems under
//! test are driven by the same generator with the same plan, one after the other:
//! - `rtpvisor`: the real actor system against the fake ARI; every channel an `echo` call set
//!   up through StasisStart -> externalMedia -> bridge -> answer;
//! - `bare-epoll`: the limit (see [`crate::baselines`]);
//! - `naive-tokio`: the naive design.
//!
//! Per run: turnaround percentiles, loss, CPU of the system's threads in cores over the
//! measured window, the generator's own CPU and pacing, RSS growth per channel, and
//! allocations during the window.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::alloc::AllocCount;
use crate::baselines::{self, EchoBaseline};
use crate::fake_ari::{wait_for, FakeAri};
use crate::generator::{GenResult, Generator, Plan};
use crate::report::{LatencyStats, ThreadCpu};
use crate::service_run::{self, ServiceUnderTest, SERVICE_THREADS};
use crate::{logcap, sys};

/// The systems under test, in the order they run for each channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sut {
    Rtpvisor,
    BareEpoll,
    NaiveTokio,
}

impl Sut {
    pub const ALL: [Sut; 3] = [Sut::Rtpvisor, Sut::BareEpoll, Sut::NaiveTokio];

    pub fn name(self) -> &'static str {
        match self {
            Sut::Rtpvisor => "rtpvisor",
            Sut::BareEpoll => "bare-epoll",
            Sut::NaiveTokio => "naive-tokio",
        }
    }

    fn threads(self) -> &'static [&'static str] {
        match self {
            Sut::Rtpvisor => SERVICE_THREADS,
            Sut::BareEpoll => baselines::BARE_THREADS,
            Sut::NaiveTokio => baselines::NAIVE_THREADS,
        }
    }
}

/// Port range the service leases from in these runs: below the ephemeral range (32768+) the
/// generator's sockets come from, and away from Asterisk's 31000-31999 and the default
/// 10000-10100 that the end-to-end tests use.
pub const RTP_PORTS: (u16, u16) = (20000, 27999);

/// A call's setup as the service saw it (StasisStart handled -> "Created channel" logged,
/// i.e. every ARI request of the setup sent and answered).
#[derive(Debug, Clone, Serialize)]
pub struct SetupStats {
    /// From the first StasisStart sent to the last call's answer request received.
    pub all_calls_s: f64,
    pub per_call: LatencyStats,
    /// ARI requests the fake served during setup, those it did not expect, and how often the
    /// events WebSocket connected (more than once: the service reconnected mid-run).
    pub ari_requests: u64,
    pub ari_unexpected: u64,
    pub ws_connects: u64,
}

/// One system at one channel count.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub system: Sut,
    pub channels: usize,
    pub turnaround: LatencyStats,
    /// Whether the generator kept to its schedule (sent every planned packet, p99 send lag
    /// <= 1 ms). When it did not, the machine was short of CPU and the figures of this run
    /// say more about that than about the system under test.
    pub generator_kept_pace: bool,
    pub planned: u64,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub worst_channel_lost: u64,
    pub misrouted: u64,
    pub send_errors: u64,
    pub no_kernel_stamp: u64,
    /// CPU of the system's threads over the measured window, in cores.
    pub sut_cpu_cores: f64,
    /// The same per reflected packet, microseconds: the cost of the design, which (unlike
    /// latency) a busy neighbour hardly changes, since a thread is charged only while it runs.
    pub sut_cpu_us_per_packet: f64,
    pub generator_cpu_cores: f64,
    /// Every thread's CPU over the window (cores), by name.
    pub threads: Vec<ThreadCpu>,
    /// What other processes (and the hypervisor) took from the machine meanwhile.
    pub neighbours: sys::Neighbours,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_per_channel_kib: f64,
    /// How late the generator sent against its schedule.
    pub generator_lag: LatencyStats,
    /// Allocations in the whole process during the window, per reflected packet and per second.
    pub allocs_per_packet: f64,
    pub alloc_bytes_per_s: f64,
    pub setup: Option<SetupStats>,
    /// The service's own view at the end of the window (`GET /metrics`), rtpvisor only.
    pub service_metrics: Option<serde_json::Value>,
    #[serde(skip)]
    pub hist: Option<Histogram<u64>>,
}

/// Runs every system at every count. A failed run is reported and the rest go on.
pub fn run_all(counts: &[usize], systems: &[Sut], plan: Plan) -> Vec<Result<RunResult, (Sut, usize, String)>> {
    let mut out = Vec::new();
    for &n in counts {
        for &sut in systems {
            eprintln!("== channels: {} x {n} ({:.0} s warm-up + {:.0} s measured)", sut.name(), plan.warmup.as_secs_f64(), plan.measure.as_secs_f64());
            let r = run_one(sut, n, plan).map_err(|e| (sut, n, format!("{e:#}")));
            match &r {
                Ok(r) => eprintln!(
                    "   p50 {:.1} us  p99 {:.1} us  p99.9 {:.1} us  lost {}/{}  cpu {:.2} cores  gen {:.2} cores{}",
                    r.turnaround.p50_us,
                    r.turnaround.p99_us,
                    r.turnaround.p999_us,
                    r.lost,
                    r.sent,
                    r.sut_cpu_cores,
                    r.generator_cpu_cores,
                    if r.generator_kept_pace { "" } else { "  (GENERATOR FELL BEHIND: machine short of CPU)" }
                ),
                Err((_, _, e)) => eprintln!("   FAILED: {e}"),
            }
            out.push(r);
            // Let the kernel finish closing the sockets of the previous run.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    out
}

enum Running {
    Service { svc: ServiceUnderTest, ari: FakeAri, callers: Vec<String> },
    Baseline(EchoBaseline),
}

fn caller_id(i: usize) -> String {
    format!("bench-{i}")
}

pub fn run_one(sut: Sut, n: usize, plan: Plan) -> anyhow::Result<RunResult> {
    let gen = Generator::bind(n, plan).context("binding the generator's sockets")?;
    let gen_addrs = gen.addrs()?;
    let mut setup = None;
    let (running, targets, rss_before) = match sut {
        Sut::Rtpvisor => {
            if n > usize::from(RTP_PORTS.1 - RTP_PORTS.0) + 1 {
                bail!("{n} channels do not fit the port range {RTP_PORTS:?}");
            }
            let (svc, ari) = service_run::start_with_fake_ari(RTP_PORTS)?;
            if !ari.wait_connected(Duration::from_secs(10)) {
                bail!("the service did not connect to the fake ARI within 10 s");
            }
            let callers: Vec<String> = (0..n).map(caller_id).collect();
            ari.set_peers(callers.iter().cloned().zip(gen_addrs.iter().copied()));
            // Let the connect-time reconciliation finish before calls arrive.
            std::thread::sleep(Duration::from_millis(200));
            let rss_before = sys::rss_bytes();
            logcap::start_capture();
            let t_setup = Instant::now();
            for c in &callers {
                if !ari.stasis_start(c, &["echo"]) {
                    bail!("the events WebSocket closed");
                }
            }
            let limit = Duration::from_secs(30) + Duration::from_millis(20 * n as u64);
            let all_up = wait_for(limit, || ari.answered() >= n);
            let all_calls_s = t_setup.elapsed().as_secs_f64();
            let lines = logcap::take_captured();
            if !all_up {
                bail!("only {} of {n} calls were set up within {limit:?}", ari.answered());
            }
            setup = Some(SetupStats {
                all_calls_s,
                per_call: setup_times(&lines),
                ari_requests: ari.requests(),
                ari_unexpected: ari.unexpected(),
                ws_connects: ari.ws_connects(),
            });
            let targets = callers
                .iter()
                .map(|c| ari.media_target(c).ok_or_else(|| anyhow!("no media port for {c}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (Running::Service { svc, ari, callers }, targets, rss_before)
        }
        Sut::BareEpoll | Sut::NaiveTokio => {
            let rss_before = sys::rss_bytes();
            let b = if sut == Sut::BareEpoll { baselines::start_bare(n)? } else { baselines::start_naive(n)? };
            let targets = b.addrs.clone();
            (Running::Baseline(b), targets, rss_before)
        }
    };

    let t0 = Instant::now() + Duration::from_millis(20);
    let gen = gen.start(&targets, t0)?;
    sleep_until(t0 + plan.warmup);
    // Ordered so the bench's own bookkeeping (reading /proc) falls outside the counted window.
    let rss_after = sys::rss_bytes();
    let cpu0 = sys::ThreadTimes::now();
    let machine0 = sys::MachineCpu::now();
    let alloc0 = AllocCount::now();
    sleep_until(t0 + plan.warmup + plan.measure);
    let allocs = AllocCount::now().since(alloc0);
    let neighbours = sys::MachineCpu::now().since(&machine0, plan.measure.as_secs_f64());
    let cpu1 = sys::ThreadTimes::now();
    let service_metrics = match &running {
        Running::Service { svc, .. } => svc.metrics().and_then(|m| serde_json::to_value(m).ok()),
        Running::Baseline(_) => None,
    };
    let g: GenResult = gen.join().map_err(|_| anyhow!("the generator panicked"))?;

    match running {
        Running::Service { svc, ari, callers } => {
            for c in &callers {
                ari.stasis_end(c);
            }
            let n64 = callers.len() as u64;
            if !wait_for(Duration::from_secs(30), || ari.caller_hangups() >= n64) {
                eprintln!("   warning: only {} of {n64} calls torn down within 30 s", ari.caller_hangups());
            }
            svc.stop();
            ari.stop();
        }
        Running::Baseline(b) => b.stop(),
    }

    let window = plan.measure.as_secs_f64();
    let threads: Vec<ThreadCpu> = cpu1
        .since(&cpu0)
        .into_iter()
        .map(|(name, secs)| ThreadCpu { cores: secs / window, name })
        .collect();
    let sum = |pred: &dyn Fn(&str) -> bool| threads.iter().filter(|t| pred(&t.name)).map(|t| t.cores).sum::<f64>();
    let sut_names = sut.threads();
    let sut_cpu_cores = sum(&|name| sut_names.iter().any(|p| name.starts_with(p)));
    let generator_cpu_cores = sum(&|name| name == "bench-gen");
    let lost = g.sent.saturating_sub(g.received);
    Ok(RunResult {
        system: sut,
        channels: n,
        turnaround: LatencyStats::from_ns(&g.turnaround),
        generator_kept_pace: g.sent >= g.planned && g.send_lag.value_at_quantile(0.99) <= 1_000_000,
        planned: g.planned,
        sent: g.sent,
        received: g.received,
        lost,
        loss_ratio: if g.sent == 0 { 0.0 } else { lost as f64 / g.sent as f64 },
        worst_channel_lost: g.worst_channel_lost,
        misrouted: g.misrouted,
        send_errors: g.send_errors,
        no_kernel_stamp: g.no_kernel_stamp,
        sut_cpu_cores,
        sut_cpu_us_per_packet: sut_cpu_cores * window * 1e6 / g.received.max(1) as f64,
        generator_cpu_cores,
        threads,
        neighbours,
        rss_before_kib: rss_before / 1024,
        rss_after_kib: rss_after / 1024,
        rss_per_channel_kib: (rss_after as f64 - rss_before as f64) / 1024.0 / n as f64,
        generator_lag: LatencyStats::from_ns(&g.send_lag),
        allocs_per_packet: allocs.allocs as f64 / g.received.max(1) as f64,
        alloc_bytes_per_s: allocs.bytes as f64 / window,
        setup,
        service_metrics,
        hist: Some(g.turnaround),
    })
}

/// Per-call setup time from the captured log lines: StasisStart handled -> channel created.
fn setup_times(lines: &[(Instant, String)]) -> LatencyStats {
    use std::collections::HashMap;
    let mut started: HashMap<&str, Instant> = HashMap::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("constant bounds");
    for (t, line) in lines {
        if let Some(rest) = line.strip_prefix("StasisStart event received for channel ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            started.insert(id, *t);
        } else if let Some(rest) = line.strip_prefix("Created channel ") {
            let id = rest.split_whitespace().next().unwrap_or("");
            if let Some(s) = started.get(id) {
                let _ = hist.record(t.saturating_duration_since(*s).as_nanos().max(1) as u64);
            }
        }
    }
    LatencyStats::from_ns(&hist)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}
