//! The command line and the order of a run: allocation check, channel media, echo, real
//! Asterisk; then the tables on stdout, `results.json`, `results.md` and the latency plot in
//! the output directory (default `target/bench/`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde::Serialize;

use crate::asterisk::{self, AsteriskOpts, AsteriskOutcome};
use crate::channels::{self, RunResult, Sut};
use crate::echo::{self, EchoOpts, EchoResult, Load};
use crate::generator::Plan;
use crate::micro_alloc::{self, AllocCheck};
use crate::flood::{self, FloodResult};
use crate::removal::{self, RemovalResult};
use crate::scrape::{self, ScrapeResult};
use crate::report::{self, Curve, Target};
use crate::{logcap, sys};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// Everything below, in this order.
    All,
    /// Allocation check of the per-packet operations.
    Alloc,
    /// Item 1: channel media at scale against the bare-epoll and naive-tokio baselines.
    Channels,
    /// Item 2: the shared echo against a blocking UdpSocket loop.
    Echo,
    /// Item 3: probe calls through the real Asterisk (skipped unless it runs).
    Asterisk,
    /// The media engine ending many calls at once, against a few.
    Removal,
    /// A Prometheus scrape with many live calls, against a few.
    Scrape,
    /// A flood at live call ports: what it costs the other calls, against quiet windows.
    Flood,
}

/// rtpvisor's benchmark suite. Prints tables; writes results.json, results.md and
/// latency-<N>.svg into --out.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "rtpvisor-bench", version)]
pub struct Args {
    /// What to run (one or more, in the order of `all`).
    #[arg(value_enum, default_values_t = [What::All])]
    pub what: Vec<What>,
    /// A short run: 1 s warm-up, 3 s measured, channel counts 101,1000,2000 (unless given),
    /// 10 s of real Asterisk.
    #[arg(long)]
    pub quick: bool,
    /// Channel counts of item 1.
    #[arg(long, value_delimiter = ',')]
    pub channels: Option<Vec<usize>>,
    /// Systems of item 1.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub systems: Option<Vec<SutArg>>,
    /// Measured seconds per run (items 1 and 2).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Warm-up seconds per run (items 1 and 2).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Packets per second per channel.
    #[arg(long, default_value_t = 50)]
    pub pps: u32,
    /// Channel count whose latency distribution is plotted.
    #[arg(long, default_value_t = 2000)]
    pub plot_channels: usize,
    /// Item 2, saturation: client sockets.
    #[arg(long, default_value_t = 16)]
    pub echo_sockets: usize,
    /// Item 2, saturation: packets in flight per client socket.
    #[arg(long, default_value_t = 8)]
    pub echo_window: usize,
    /// Item 2, low load: echoes per second (from 10 sockets).
    #[arg(long, default_value_t = 1000)]
    pub echo_rate: u32,
    /// Item 3: probe calls placed through the real Asterisk.
    #[arg(long, default_value_t = 100)]
    pub asterisk_calls: usize,
    /// Item 3: measured seconds once every call is up (default 60; --quick: 10).
    #[arg(long)]
    pub asterisk_seconds: Option<f64>,
    /// Stream counts removed at once (`removal`); the smallest is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000])]
    pub removal_streams: Vec<usize>,
    /// Live call counts of `scrape`; the smallest is the baseline.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 1000])]
    pub scrape_calls: Vec<usize>,
    /// Output directory (default: the workspace's target/bench).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the service's info log lines too.
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum SutArg {
    Rtpvisor,
    BareEpoll,
    NaiveTokio,
}

impl From<SutArg> for Sut {
    fn from(s: SutArg) -> Sut {
        match s {
            SutArg::Rtpvisor => Sut::Rtpvisor,
            SutArg::BareEpoll => Sut::BareEpoll,
            SutArg::NaiveTokio => Sut::NaiveTokio,
        }
    }
}

/// Everything one invocation measured (sections not run are null).
#[derive(Debug, Serialize)]
struct Results<'a> {
    suite: &'static str,
    date: String,
    machine: sys::Machine,
    args: &'a Args,
    plan: PlanJson,
    alloc: Option<AllocCheck>,
    channels: Option<Vec<RunResult>>,
    channel_failures: Vec<String>,
    echo: Option<Vec<EchoResult>>,
    asterisk: Option<AsteriskOutcome>,
    removal: Option<RemovalResult>,
    scrape: Option<ScrapeResult>,
    flood: Option<FloodResult>,
    targets: Vec<Target>,
    log_lines_suppressed: u64,
}

#[derive(Debug, Serialize)]
struct PlanJson {
    pps: u32,
    warmup_s: f64,
    measure_s: f64,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    logcap::init(args.verbose);
    let root = repo_root();
    let out_dir = args.out.clone().unwrap_or_else(|| root.join("target/bench"));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let counts = args
        .channels
        .clone()
        .unwrap_or_else(|| if args.quick { vec![101, 1000, 2000] } else { vec![101, 1000, 2000, 4000] });
    let systems: Vec<Sut> = args.systems.as_ref().map_or_else(|| Sut::ALL.to_vec(), |v| v.iter().map(|s| (*s).into()).collect());
    let warmup = Duration::from_secs_f64(args.warmup.unwrap_or(if args.quick { 1.0 } else { 2.0 }));
    let measure = Duration::from_secs_f64(args.seconds.unwrap_or(if args.quick { 3.0 } else { 10.0 }));
    let plan = Plan { pps: args.pps, warmup, measure, grace: Duration::from_millis(500) };
    let max_n = counts.iter().chain(&args.removal_streams).copied().max().unwrap_or(0) as u64;
    let limit = sys::raise_nofile(3 * max_n + 1024);
    if limit < 2 * max_n + 256 {
        eprintln!("warning: open-files limit {limit} may be too low for {max_n} channels");
    }
    let want = |w: What| args.what.contains(&What::All) || args.what.contains(&w);
    let machine = sys::Machine::read();
    let date = sys::utc_now();
    eprintln!("rtpvisor-bench {date}: {} x {} ({:.1} GiB), kernel {}", machine.cpus, machine.cpu_model, machine.mem_total_gib, machine.kernel);

    let alloc = want(What::Alloc).then(micro_alloc::run);
    let mut channel_failures = Vec::new();
    let channel_runs = want(What::Channels).then(|| {
        channels::run_all(&counts, &systems, plan)
            .into_iter()
            .filter_map(|r| r.map_err(|(s, n, e)| channel_failures.push(format!("{} x {n}: {e}", s.name()))).ok())
            .collect::<Vec<_>>()
    });
    let echo_runs = if want(What::Echo) {
        let opts = EchoOpts {
            warmup,
            measure,
            low: Load::Paced { rate: args.echo_rate, sockets: 10 },
            saturate: Load::Saturate { sockets: args.echo_sockets, window: args.echo_window },
        };
        match echo::run_all(opts) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("echo: FAILED: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let asterisk_out = want(What::Asterisk).then(|| {
        let secs = args.asterisk_seconds.unwrap_or(if args.quick { 10.0 } else { 60.0 });
        eprintln!("== asterisk: {} probe calls for {secs:.0} s", args.asterisk_calls);
        asterisk::run(&root, AsteriskOpts { calls: args.asterisk_calls, measure: Duration::from_secs_f64(secs) })
    });

    let removal_out = if want(What::Removal) {
        eprintln!("== removal: {:?} streams removed at once", args.removal_streams);
        match removal::run(&args.removal_streams) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("removal: FAILED: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let scrape_out = if want(What::Scrape) {
        eprintln!("== scrape: Prometheus scrapes with {:?} live calls", args.scrape_calls);
        match scrape::run(&args.scrape_calls) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("scrape: FAILED: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let flood_out = if want(What::Flood) {
        eprintln!("== flood: {} call ports flooded, {} probe calls measured", flood::FLOODED, flood::PROBES);
        match flood::run() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("flood: FAILED: {e:#}");
                None
            }
        }
    } else {
        None
    };

    // Judge the targets.
    let mut targets = Vec::new();
    if let Some(runs) = &channel_runs {
        targets.extend(report::channel_targets(runs));
    }
    if let Some(e) = &echo_runs {
        targets.extend(echo_targets(e));
    }
    if let Some(a) = &alloc {
        targets.push(Target::new(
            "alloc_free",
            "histogram record and stats update allocation-free",
            format!("{} and {} allocations per call", a.histogram_record, a.stats_update),
            Some(a.histogram_record == 0.0 && a.stats_update == 0.0),
        ));
    }
    if let Some(a) = &asterisk_out {
        targets.extend(asterisk_targets(a));
    }
    if let Some(r) = &removal_out {
        targets.extend(removal_targets(r));
    }
    if let Some(r) = &scrape_out {
        targets.extend(scrape_targets(r));
    }
    if let Some(r) = &flood_out {
        targets.push(Target::new(
            "flood.samples",
            "a flood at live call ports leaves the other calls >= 95 % of their probe samples",
            format!(
                "{:.1} vs {:.1} samples per call per second = {:.3}x (control, at unread sockets: {:.3}x)",
                r.calls.flooded.samples_per_call_s, r.calls.quiet.samples_per_call_s, r.calls.samples_ratio, r.control.samples_ratio
            ),
            Some(r.calls.samples_ratio >= 0.95),
        ));
    }

    // Print and write.
    let mut md = String::new();
    md.push_str(&format!("Run of {date} on {} x {}\n\n", machine.cpus, machine.cpu_model));
    if let Some(a) = &alloc {
        println!("\nAllocations per call (after warm-up, {} calls): rtp parse {}, stats update {}, histogram record {}, port lease+release {}", a.ops, a.rtp_parse, a.stats_update, a.histogram_record, a.port_lease_release);
    }
    if let Some(runs) = &channel_runs {
        println!(
            "\nChannel media at scale: echo, {} pps per channel, {:.0} s measured after {:.0} s warm-up",
            plan.pps,
            measure.as_secs_f64(),
            warmup.as_secs_f64()
        );
        println!("{}", report::channels_table(runs, false));
        for l in report::ratio_lines(runs) {
            println!("{l}");
        }
        md.push_str("### Channel media at scale\n\n");
        md.push_str(&report::channels_table(runs, true));
        md.push('\n');
        for l in report::ratio_lines(runs) {
            md.push_str(&format!("- {l}\n"));
        }
        md.push('\n');
        if let Some(svg) = plot(runs, args.plot_channels, plan, &date, &machine) {
            let p = out_dir.join(format!("latency-{}.svg", args.plot_channels));
            std::fs::write(&p, svg).with_context(|| format!("writing {}", p.display()))?;
            println!("plot: {}", p.display());
        }
    }
    for f in &channel_failures {
        println!("FAILED run: {f}");
    }
    if let Some(e) = &echo_runs {
        let t = echo_table(e);
        println!("\nShared echo vs blocking UdpSocket loop, {:.0} s measured", measure.as_secs_f64());
        println!("{}", report::table(&ECHO_HEAD, &t, false));
        md.push_str("### Echo\n\n");
        md.push_str(&report::table(&ECHO_HEAD, &t, true));
        md.push('\n');
        for line in limits_ratios(e) {
            println!("{line}");
            md.push_str(&format!("- {line}\n"));
        }
    }
    if let Some(a) = &asterisk_out {
        let text = asterisk_text(a);
        println!("\nReal Asterisk\n{text}");
        md.push_str("### Real Asterisk\n\n");
        md.push_str(&text);
        md.push('\n');
    }
    if let Some(r) = &removal_out {
        println!("\nEnding many calls at once (the media engine, {} streams talking meanwhile)", removal::TALKERS);
        md.push_str("### Ending many calls at once\n\n");
        for line in removal::lines(r) {
            println!("{line}");
            md.push_str(&format!("- {line}\n"));
        }
        md.push('\n');
    }
    if let Some(r) = &scrape_out {
        println!("\nPrometheus scrape ({} scrapes per count and path)", scrape::ROUNDS * scrape::REPS);
        md.push_str("### Prometheus scrape\n\n");
        for line in scrape::lines(r) {
            println!("{line}");
            md.push_str(&format!("- {line}\n"));
        }
        md.push('\n');
    }
    if let Some(r) = &flood_out {
        println!("\nFlood at live call ports ({} ports, one sender each; {} quiet and {} flooded windows)", flood::FLOODED, flood::ROUNDS, flood::ROUNDS);
        md.push_str("### Flood at live call ports\n\n");
        for line in flood::lines(r) {
            println!("{line}");
            md.push_str(&format!("- {line}\n"));
        }
        md.push('\n');
    }
    println!("\nTargets");
    println!("{}", report::targets_table(&targets, false));
    md.push_str("### Targets\n\n");
    md.push_str(&report::targets_table(&targets, true));

    let results = Results {
        suite: "rtpvisor-bench",
        date,
        machine,
        args: &args,
        plan: PlanJson { pps: plan.pps, warmup_s: warmup.as_secs_f64(), measure_s: measure.as_secs_f64() },
        alloc,
        channels: channel_runs,
        channel_failures,
        echo: echo_runs,
        asterisk: asterisk_out,
        removal: removal_out,
        scrape: scrape_out,
        flood: flood_out,
        targets,
        log_lines_suppressed: logcap::suppressed(),
    };
    let json = out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?).with_context(|| format!("writing {}", json.display()))?;
    let mdp = out_dir.join("results.md");
    std::fs::write(&mdp, md).with_context(|| format!("writing {}", mdp.display()))?;
    println!("\nwrote {} and {}", json.display(), mdp.display());
    Ok(())
}

fn plot(runs: &[RunResult], n: usize, plan: Plan, date: &str, machine: &sys::Machine) -> Option<String> {
    let colors = [(Sut::Rtpvisor, "#d62728"), (Sut::BareEpoll, "#2ca02c"), (Sut::NaiveTokio, "#1f77b4")];
    let curves: Vec<Curve> = colors
        .iter()
        .filter_map(|(sut, color)| {
            let r = runs.iter().find(|r| r.system == *sut && r.channels == n)?;
            Some(Curve {
                label: format!(
                    "{}: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, lost {}",
                    sut.name(),
                    r.turnaround.p50_us,
                    r.turnaround.p99_us,
                    r.turnaround.p999_us,
                    r.lost
                ),
                color,
                hist: r.hist.as_ref()?,
            })
        })
        .collect();
    if curves.is_empty() {
        return None;
    }
    Some(report::latency_svg(
        &format!("Per-packet turnaround, {n} channels in echo mode, {} packets/s each", plan.pps),
        &format!("{date}, {} x {}, {:.0} s measured", machine.cpus, machine.cpu_model, plan.measure.as_secs_f64()),
        &curves,
    ))
}

const ECHO_HEAD: [&str; 11] = [
    "load", "system", "echoes/s", "p50 us", "p99 us", "p99.9 us", "echo CPU", "echo CPU us/echo", "client CPU", "refills",
    "others CPU",
];

fn load_name(l: &Load) -> String {
    match l {
        Load::Paced { rate, sockets } => format!("paced {rate}/s x{sockets}"),
        Load::Saturate { sockets, window } => format!("saturate {sockets}x{window}"),
    }
}

fn echo_table(e: &[EchoResult]) -> Vec<Vec<String>> {
    e.iter()
        .map(|r| {
            vec![
                load_name(&r.load),
                r.system.to_string(),
                format!("{:.0}", r.echoes_per_s),
                format!("{:.1}", r.rtt.p50_us),
                format!("{:.1}", r.rtt.p99_us),
                format!("{:.1}", r.rtt.p999_us),
                format!("{:.2}", r.echo_cpu_cores),
                format!("{:.2}", r.echo_cpu_us_per_echo),
                format!("{:.2}", r.client_cpu_cores),
                r.refills.to_string(),
                format!("{:.2}", r.neighbours.others_cores + r.neighbours.steal_cores),
            ]
        })
        .collect()
}

/// Median of what `f` gives over the runs of `system` under `load`.
fn median_of(e: &[EchoResult], system: &str, load: &str, f: impl Fn(&EchoResult) -> f64) -> Option<(f64, usize)> {
    let mut v: Vec<f64> = e.iter().filter(|r| r.system == system && load_name(&r.load) == load).map(f).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some((v[v.len() / 2], v.len()))
}

/// The echo with its limits on against off, per load: medians of echoes/s and of CPU per echo
/// over the alternated runs.
fn limits_ratios(e: &[EchoResult]) -> Vec<String> {
    let mut loads: Vec<String> = e.iter().map(|r| load_name(&r.load)).collect();
    loads.dedup();
    let mut out = Vec::new();
    for load in loads {
        let rate = |s| median_of(e, s, &load, |r| r.echoes_per_s);
        let cpu = |s| median_of(e, s, &load, |r| r.echo_cpu_us_per_echo);
        if let (Some((on, n)), Some((off, _)), Some((con, _)), Some((coff, _))) =
            (rate("rtpvisor-echo-limits"), rate("rtpvisor-echo"), cpu("rtpvisor-echo-limits"), cpu("rtpvisor-echo"))
        {
            out.push(format!(
                "echo limits on/off, {load} (medians of {n} alternated runs each): {on:.0} vs {off:.0} echoes/s = {:.3}x; \
                 CPU per echo {con:.2} vs {coff:.2} us = {:.3}x",
                on / off.max(1.0),
                con / coff.max(1e-9),
            ));
        }
    }
    out
}

fn echo_targets(e: &[EchoResult]) -> Vec<Target> {
    let sat = |sys: &str| e.iter().find(|r| r.system == sys && matches!(r.load, Load::Saturate { .. }));
    let mut t = Vec::new();
    match (sat("rtpvisor-echo"), sat("blocking-loop")) {
        (Some(s), Some(b)) => {
            t.push(Target::new(
                "echo.saturation",
                "echo: >= 300k echoes/s at saturation",
                format!("{:.0} echoes/s", s.echoes_per_s),
                Some(s.echoes_per_s >= 300_000.0),
            ));
            let load = load_name(&s.load);
            if let (Some((on, n)), Some((off, _))) = (
                median_of(e, "rtpvisor-echo-limits", &load, |r| r.echoes_per_s),
                median_of(e, "rtpvisor-echo", &load, |r| r.echoes_per_s),
            ) {
                let r = on / off.max(1.0);
                // Neighbours taking the machine move throughput by more than the 5 % judged:
                // no verdict then, as for a lagging load generator.
                let busiest = e
                    .iter()
                    .filter(|x| x.system.starts_with("rtpvisor-echo") && load_name(&x.load) == load)
                    .map(|x| x.neighbours.others_cores + x.neighbours.steal_cores)
                    .fold(0.0, f64::max);
                let quiet = busiest <= 0.1;
                let why = if quiet { String::new() } else { format!("; not valid: others used up to {busiest:.2} cores meanwhile") };
                t.push(Target::new(
                    "echo.limits_cost",
                    "echo: limits on cost at most 5 % of its throughput at saturation",
                    format!("medians of {n} alternated runs: {on:.0} vs {off:.0} echoes/s (on/off) = {r:.3}x{why}"),
                    quiet.then_some(r >= 0.95),
                ));
            }
            if let Some(c) = sat("rtpvisor-echo-cores") {
                t.push(Target::new(
                    "echo.workers",
                    "echo: one worker per core against one worker at saturation (reported; the client shares the cores)",
                    format!(
                        "{} workers {:.0} vs 1 worker {:.0} echoes/s = {:.2}x; echo CPU {:.2} vs {:.2} cores, client {:.2} vs {:.2}",
                        echo::cores(),
                        c.echoes_per_s,
                        s.echoes_per_s,
                        c.echoes_per_s / s.echoes_per_s.max(1.0),
                        c.echo_cpu_cores,
                        s.echo_cpu_cores,
                        c.client_cpu_cores,
                        s.client_cpu_cores,
                    ),
                    None,
                ));
            }
            let r = s.echoes_per_s / b.echoes_per_s.max(1.0);
            t.push(Target::new(
                "echo.vs_blocking",
                "echo: >= 1.0x the blocking loop",
                format!("{:.0} vs {:.0} echoes/s = {r:.2}x", s.echoes_per_s, b.echoes_per_s),
                Some(r >= 1.0),
            ));
        }
        _ => t.push(Target::new("echo.saturation", "echo: >= 300k echoes/s at saturation", "not run".into(), None)),
    }
    t
}

fn removal_targets(r: &RemovalResult) -> Vec<Target> {
    let mut t = Vec::new();
    if let Some(m) = r.medians.iter().max_by_key(|m| m.streams).filter(|m| m.streams >= 1000) {
        t.push(Target::new(
            "removal.time",
            &format!("{} calls ended at once in < 1 s on the media thread", m.streams),
            format!("{} streams: {:.1} ms media thread CPU, {:.1} ms wall", m.streams, m.media_cpu_ms, m.wall_ms),
            Some(m.media_cpu_ms < 1000.0 && m.wall_ms < 1000.0),
        ));
    }
    if let Some(c) = r.cpu_per_removal_ratio {
        t.push(Target::new(
            "removal.per_call",
            "a removal costs the media thread the same with many streams as with few (<= 2x per removal)",
            format!("media CPU per removal, largest count against smallest: {c:.2}x"),
            Some(c <= 2.0),
        ));
    }
    t
}

fn scrape_targets(r: &ScrapeResult) -> Vec<Target> {
    let (Some(ratio), Some(small), Some(large)) = (r.ratio, r.runs.first(), r.runs.last()) else { return Vec::new() };
    let all_live = r.runs.iter().all(|x| x.active_after == x.calls as u64);
    let why = if all_live { String::new() } else { "; not valid: calls ended during the run".into() };
    vec![Target::new(
        "scrape.per_call",
        &format!("a Prometheus scrape costs the same with {} as with {} live calls (<= 1.5x)", large.calls, small.calls),
        format!("median {:.0} vs {:.0} us = {ratio:.2}x{why}", large.median_us, small.median_us),
        all_live.then_some(ratio <= 1.5),
    )]
}

fn asterisk_targets(a: &AsteriskOutcome) -> Vec<Target> {
    match a {
        AsteriskOutcome::Skipped { reason } => vec![Target::new(
            "asterisk",
            "real Asterisk, 100 calls: 0 loss, RTT p99 <= 1.5 ms, <= 0.1 ms above the wire's p99",
            format!("skipped: {reason}"),
            None,
        )],
        AsteriskOutcome::Ran(r) => vec![
            Target::new(
                "asterisk.loss",
                "real Asterisk, 100 calls: 0 loss",
                format!("{} of {} probes lost ({} calls)", r.probes_lost, r.probes_expected, r.calls_active),
                Some(r.probes_lost == 0 && r.probes_expected > 0),
            ),
            Target::new(
                "asterisk.rtt_p99",
                "RTT p99 <= 1.5 ms as the service reports it",
                format!("{:.3} ms", r.rtt_service_ms.p99_ms),
                Some(r.rtt_service_ms.p99_ms <= 1.5 && r.rtt_service_ms.count > 0),
            ),
            match (r.p99_above_wire_ms, &r.wire) {
                (Some(d), Some(w)) => Target::new(
                    "asterisk.vs_wire",
                    "RTT p99 at most 0.1 ms above the wire's p99",
                    format!("service {:.3} ms - wire {:.3} ms = {d:.3} ms", r.rtt_service_ms.p99_ms, w.rtt.p99_us / 1000.0),
                    Some(d <= 0.1),
                ),
                _ => Target::new(
                    "asterisk.vs_wire",
                    "RTT p99 at most 0.1 ms above the wire's p99",
                    r.wire_error.clone().unwrap_or_else(|| "no capture".into()),
                    None,
                ),
            },
        ],
    }
}

fn asterisk_text(a: &AsteriskOutcome) -> String {
    match a {
        AsteriskOutcome::Skipped { reason } => format!("skipped: {reason}\n"),
        AsteriskOutcome::Ran(r) => {
            let l = &r.rtt_service_ms;
            format!(
                "- {} calls ({} active), {:.0} s measured\n\
                 - RTT as the service reports it: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} probes)\n\
                 - loss: {} of {} probes\n\
                 - StasisStart -> first echoed probe per call: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
                 - StasisStart -> setup complete (every ARI request sent and answered): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
                 - service CPU: {:.3} cores\n\
                 - our channels left in Asterisk afterwards: {}\n\
                 - on the wire (loopback capture): {}\n",
                r.calls,
                r.calls_active,
                r.seconds,
                l.p50_ms,
                l.p99_ms,
                l.p999_ms,
                l.max_ms,
                l.count,
                r.probes_lost,
                r.probes_expected,
                r.stasis_to_first_probe.p50_us / 1000.0,
                r.stasis_to_first_probe.p99_us / 1000.0,
                r.stasis_to_first_probe.max_us / 1000.0,
                r.setup.p50_us / 1000.0,
                r.setup.p99_us / 1000.0,
                r.setup.max_us / 1000.0,
                r.service_cpu_cores,
                r.leftover_channels,
                match &r.wire {
                    Some(w) if w.matched > 0 => format!(
                        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms over {} matched round trips; service p99 minus wire p99 = {:.3} ms",
                        w.rtt.p50_us / 1000.0,
                        w.rtt.p99_us / 1000.0,
                        w.rtt.p999_us / 1000.0,
                        w.matched,
                        r.p99_above_wire_ms.unwrap_or(f64::NAN)
                    ),
                    _ => r.wire_error.clone().unwrap_or_else(|| "no capture".into()),
                }
            )
        }
    }
}
