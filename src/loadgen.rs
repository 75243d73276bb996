//! `rtpvisor loadgen`: places calls into a running rtpvisor through Asterisk and reports what
//! the service measured for each of them.
//!
//! Calls are originated over ARI (the service's own `RTPVISOR_*` settings: ARI URL,
//! credentials, app) to `--endpoint` with `--mode` as the Stasis argument, at `--rate` per
//! second, never more than `--concurrency` at once, each hung up after `--duration` seconds.
//! Every call has a channel id of this run (`lg<run>-c<n>`), so the generator finds its calls'
//! records in the service's store of ended calls (`GET /calls/ended`) and its leftovers in
//! Asterisk. Setup time is from the originate request to the call being live in the service
//! (its `active_at_ms`): both clocks are this host's when the generator runs beside the
//! service. SLO flags decide the exit code: 0 all hold, 1 one broke (named), 2 the run could
//! not be made (configuration, service not ready).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use rtpvisor_actors::ari::client::AriClient;
use rtpvisor_actors::mode::CallMode;
use serde_json::{json, Value};

use crate::loadgen_report::{self as report, CallResult, Fate, Progress, Slos};
use crate::ops::{self, ApiClient, EndedReader, Placed};

/// `rtpvisor loadgen` flags.
#[derive(Debug, Parser)]
#[command(
    name = "rtpvisor loadgen",
    bin_name = "rtpvisor loadgen",
    about = "Place calls into a running rtpvisor through Asterisk (ARI) and report what it measured",
    after_help = "ARI and the service's HTTP API come from the service's settings (RTPVISOR_* \
                  environment, --config file). Exit code: 0 every SLO held, 1 an SLO broke, 2 the \
                  run could not be made."
)]
pub struct LoadgenArgs {
    /// Calls to place
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Calls started per second
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Most calls up at once
    #[arg(long, default_value_t = 10)]
    pub concurrency: usize,
    /// How long each call lasts, seconds (then the generator hangs it up)
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Where Asterisk originates each call, e.g. Local/echo@rtpvisor-test or PJSIP/100@trunk
    #[arg(long, default_value = "Local/echo@rtpvisor-test")]
    pub endpoint: String,
    /// Stasis argument: the call mode (echo, probe, shared-echo)
    #[arg(long, default_value = "probe")]
    pub mode: String,
    /// The service's TOML config file (as `rtpvisor --config`)
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Print the results as JSON on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// SLO: p99 latency (RTT in probe mode, delay in echo mode) at most this, ms
    #[arg(long, value_name = "MS")]
    pub max_p99_ms: Option<f64>,
    /// SLO: packet loss at most this ratio (0..1)
    #[arg(long, value_name = "RATIO")]
    pub max_loss: Option<f64>,
    /// SLO: mean MOS of the calls at least this
    #[arg(long, value_name = "MOS")]
    pub min_mos: Option<f64>,
    /// SLO: at most this many failed calls (originate refused, setup failed, never recorded)
    #[arg(long, value_name = "N")]
    pub max_failed: Option<usize>,
    /// How long to wait for the service's records after the last hang-up, seconds
    #[arg(long, default_value_t = 15.0)]
    pub collect_timeout: f64,
}

impl LoadgenArgs {
    fn slos(&self) -> Slos {
        Slos { max_p99_ms: self.max_p99_ms, max_loss: self.max_loss, min_mos: self.min_mos, max_failed: self.max_failed }
    }

    fn check(&self) -> Result<(), String> {
        self.mode.parse::<CallMode>().map_err(|e| format!("--mode: {e}"))?;
        if !(0.001..=100_000.0).contains(&self.rate) {
            return Err("--rate must be 0.001-100000 calls per second".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if !(self.duration >= 0.0 && self.duration <= 86_400.0) {
            return Err("--duration must be 0-86400 seconds".into());
        }
        if !(self.collect_timeout >= 0.0 && self.collect_timeout <= 3_600.0) {
            return Err("--collect-timeout must be 0-3600 seconds".into());
        }
        Ok(())
    }
}

/// Runs `rtpvisor loadgen ARGS...` (`argv[0]` is `loadgen`); returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let args = match LoadgenArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Err(e) = args.check() {
        eprintln!("rtpvisor loadgen: {e}");
        return 2;
    }
    let cfg = match ops::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rtpvisor loadgen: {e}");
            return 2;
        }
    };
    actix_rt::System::new().block_on(async move {
        match run(&args, &cfg).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("rtpvisor loadgen: {e}");
                2
            }
        }
    })
}

/// What the running calls and the collector share (one thread: `Rc<RefCell<_>>`).
#[derive(Default)]
struct Shared {
    placed: Vec<Placed>,
    /// The service's record of each of this run's calls, by channel id.
    records: HashMap<String, Value>,
    /// Calls placed (or being placed) and not hung up yet.
    live: usize,
}

async fn run(args: &LoadgenArgs, cfg: &crate::config::Config) -> Result<i32, String> {
    let ari = ops::ari_client(cfg).map_err(|e| e.to_string())?;
    let api = ApiClient::for_service(cfg);
    match api.get("/ready").await? {
        (200, _) => {}
        (code, v) => return Err(format!("the service at {} is not ready ({code}): {}", api.base(), v["reason"])),
    }
    let run = ops::run_id();
    let marker = format!("lg{run}-");
    let caller_prefix = format!("lg{run}-c");
    let shared = Rc::new(RefCell::new(Shared::default()));
    let out = ProgressOut::new();
    eprintln!(
        "rtpvisor loadgen: run {run}: {} calls to {} in mode {}, {}/s, at most {} at once, {} s each; service {}, ARI {}",
        args.calls,
        args.endpoint,
        args.mode,
        args.rate,
        args.concurrency,
        args.duration,
        api.base(),
        cfg.ari.url
    );

    let start = Instant::now();
    let hold = Duration::from_secs_f64(args.duration);
    let mut collector = Collector { reader: EndedReader::from_now(&api).await?, api: api.clone(), caller_prefix: caller_prefix.clone(), last: None };
    // Place the calls at the rate, within the concurrency. A call held back by the concurrency
    // limit moves the schedule on: starts never come faster than the rate (no catch-up burst).
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut due = start;
    // The first error of the service's API: no more calls are placed, those placed are still
    // held and hung up, then the run ends without a verdict.
    let mut api_error: Option<String> = None;
    'placing: for i in 0..args.calls {
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() && shared.borrow().live < args.concurrency {
                break;
            }
            collector.tick_shown(&shared, false, &out, args.calls, start, &mut api_error).await;
            if api_error.is_some() {
                break 'placing;
            }
            actix_rt::time::sleep(wait.clamp(Duration::from_millis(1), Duration::from_millis(20))).await;
        }
        shared.borrow_mut().live += 1;
        due = next_start(due, Instant::now(), interval);
        let (ari, shared, endpoint, mode) = (ari.clone(), shared.clone(), args.endpoint.clone(), args.mode.clone());
        let (channel, far) = (format!("{caller_prefix}{i:06}"), format!("lg{run}-f{i:06}"));
        actix_rt::spawn(async move { one_call(&ari, &shared, &endpoint, &mode, &channel, &far, hold).await });
    }
    // Wait for every call to be hung up (bounded: the hold time plus ARI's answers).
    let placed_all = Instant::now();
    while shared.borrow().live > 0 && placed_all.elapsed() < hold + Duration::from_secs(60) {
        collector.tick_shown(&shared, false, &out, args.calls, start, &mut api_error).await;
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    // Collect the records of every call Asterisk took.
    let deadline = Instant::now() + Duration::from_secs_f64(args.collect_timeout);
    while api_error.is_none() {
        collector.tick_shown(&shared, true, &out, args.calls, start, &mut api_error).await;
        let done = {
            let s = shared.borrow();
            s.placed.len() == args.calls && s.placed.iter().all(|p| p.error.is_some() || s.records.contains_key(&p.channel))
        };
        if done || Instant::now() >= deadline {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    out.finish(&progress(&shared.borrow(), args.calls, start));
    let left = ops::wait_asterisk_clean(&ari, &marker, Duration::from_secs(5)).await.map_err(|e| e.to_string())?;
    if let Some(e) = api_error {
        let placed = shared.borrow().placed.len();
        return Err(format!(
            "the service's API failed ({e}): {placed} of {} calls placed and hung up, {} channels and {} bridges of the run left in Asterisk; no verdict",
            args.calls, left.0, left.1
        ));
    }

    let s = shared.borrow();
    let placed: HashMap<&str, &Placed> = s.placed.iter().map(|p| (p.channel.as_str(), p)).collect();
    let results: Vec<CallResult> = (0..args.calls)
        .map(|i| {
            let channel = format!("{caller_prefix}{i:06}");
            match placed.get(channel.as_str()) {
                Some(p) => report::call_result(&channel, p.sent_at_ms, p.error.as_deref(), s.records.get(&channel)),
                None => report::call_result(&channel, 0, Some("the originate request did not return"), None),
            }
        })
        .collect();
    let summary = report::summarize(&results, left);
    let verdict = report::judge(&summary, &args.slos());
    let code = report::exit_code(&verdict);
    if collector.reader.missed > 0 {
        eprintln!("rtpvisor loadgen: the service's store of ended calls dropped {} entries before they were read", collector.reader.missed);
    }
    if args.json {
        let doc = json!({
            "run": run,
            "endpoint": args.endpoint,
            "mode": args.mode,
            "rate": args.rate,
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "elapsed_s": start.elapsed().as_secs_f64(),
            "summary": summary,
            "slos": verdict,
            "exit_code": code,
            "calls": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
    } else {
        let label = match args.mode.as_str() {
            "probe" => "RTT",
            "echo" => "delay",
            _ => "latency",
        };
        print!("{}", report::table(&summary, label, &verdict));
        for v in verdict.iter().filter(|v| !v.holds) {
            println!("broken: {}", v.flag);
        }
    }
    Ok(code)
}

/// When the call after one placed at `placed_at` (scheduled for `due`) may start: one interval
/// after `due`, so the timer's slack does not slow the rate down; but after a start later than
/// that (held back by the concurrency limit), one interval after it, so no burst catches up
/// with the schedule.
fn next_start(due: Instant, placed_at: Instant, interval: Duration) -> Instant {
    if placed_at > due + interval {
        placed_at + interval
    } else {
        due + interval
    }
}

/// Reads the service's ended calls into [`Shared::records`], at most every 250 ms unless forced.
struct Collector {
    reader: EndedReader,
    api: ApiClient,
    /// Channel ids of this run's calls start with it.
    caller_prefix: String,
    last: Option<Instant>,
}

impl Collector {
    /// [`Collector::tick`], then the progress shown when it read; an error is kept in `error`
    /// (the first one) instead of ending the run, so that the calls placed are still hung up.
    async fn tick_shown(
        &mut self,
        shared: &Rc<RefCell<Shared>>,
        force: bool,
        out: &ProgressOut,
        total: usize,
        start: Instant,
        error: &mut Option<String>,
    ) {
        match self.tick(shared, force).await {
            Ok(true) => out.show(&progress(&shared.borrow(), total, start)),
            Ok(false) => {}
            Err(e) => {
                if error.is_none() {
                    eprintln!("rtpvisor loadgen: reading the service's ended calls: {e}; placing no more calls");
                }
                error.get_or_insert(e);
            }
        }
    }

    /// Whether it read (and the progress is worth showing again).
    async fn tick(&mut self, shared: &Rc<RefCell<Shared>>, force: bool) -> Result<bool, String> {
        if !force && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return Ok(false);
        }
        self.last = Some(Instant::now());
        let records = self.reader.read(&self.api).await?;
        let mut s = shared.borrow_mut();
        for r in records {
            if let Some(ch) = r["channel"].as_str().filter(|c| c.starts_with(&self.caller_prefix)) {
                s.records.insert(ch.to_string(), r);
            }
        }
        Ok(true)
    }
}

/// Originates one call, holds it for `hold` (less if the service ended it first), hangs it up.
async fn one_call(ari: &AriClient, shared: &Rc<RefCell<Shared>>, endpoint: &str, mode: &str, channel: &str, far: &str, hold: Duration) {
    let placed = ops::originate(ari, endpoint, mode, channel, far).await;
    let ok = placed.error.is_none();
    shared.borrow_mut().placed.push(placed);
    if ok {
        let start = Instant::now();
        while start.elapsed() < hold && !shared.borrow().records.contains_key(channel) {
            actix_rt::time::sleep(hold.saturating_sub(start.elapsed()).min(Duration::from_millis(100))).await;
        }
        if let Err(e) = ops::hang_up(ari, channel).await {
            eprintln!("rtpvisor loadgen: hanging up {channel}: {e}");
        }
    }
    shared.borrow_mut().live -= 1;
}

fn progress(s: &Shared, total: usize, start: Instant) -> Progress {
    let fates: Vec<CallResult> = s
        .records
        .iter()
        .map(|(ch, r)| report::call_result(ch, 0, None, Some(r)))
        .collect();
    let count = |f: Fate| fates.iter().filter(|r| r.fate == f).count();
    let p99s: Vec<f64> = fates.iter().filter_map(|r| r.p99_ms).collect();
    let originate_failed = s.placed.iter().filter(|p| p.error.is_some()).count();
    Progress {
        elapsed_s: start.elapsed().as_secs_f64(),
        placed: s.placed.len(),
        total,
        up: s.placed.len().saturating_sub(originate_failed + s.records.len()),
        served: count(Fate::Served),
        refused: count(Fate::Refused),
        failed: count(Fate::Failed) + originate_failed,
        p99_ms: report::percentile(&p99s, 0.99),
    }
}

/// Live progress on stderr: one redrawn line on a terminal, a plain line a second otherwise.
struct ProgressOut {
    terminal: bool,
    last: RefCell<Option<Instant>>,
}

impl ProgressOut {
    fn new() -> Self {
        ProgressOut { terminal: std::io::stderr().is_terminal(), last: RefCell::new(None) }
    }

    fn show(&self, p: &Progress) {
        let line = report::progress_line(p);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let mut last = self.last.borrow_mut();
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            *last = Some(Instant::now());
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// The last state, always shown, and the line ended.
    fn finish(&self, p: &Progress) {
        *self.last.borrow_mut() = None;
        self.show(p);
        if self.terminal {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadgenArgs, String> {
        let a = LoadgenArgs::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        a.check()?;
        Ok(a)
    }

    #[test]
    fn starts_never_come_faster_than_the_rate() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(100);
        // On time, or a little after (the timer's slack): the schedule does not drift.
        assert_eq!(next_start(t0, t0, tick), t0 + tick);
        assert_eq!(next_start(t0 + tick, t0 + tick + Duration::from_millis(3), tick), t0 + 2 * tick);
        // Held back 1 s by the concurrency limit: the next start is one interval later, not due.
        assert_eq!(next_start(t0 + tick, t0 + Duration::from_secs(1), tick), t0 + Duration::from_secs(1) + tick);
    }

    #[test]
    fn flags_and_their_checks() {
        let a = parse(&["--calls", "3", "--rate", "2.5", "--mode", "echo", "--max-p99-ms", "5", "--min-mos", "4"]).unwrap();
        assert_eq!((a.calls, a.rate, a.mode.as_str(), a.concurrency), (3, 2.5, "echo", 10));
        assert_eq!(a.slos(), Slos { max_p99_ms: Some(5.0), min_mos: Some(4.0), ..Slos::default() });
        assert!(parse(&["--mode", "loud"]).unwrap_err().contains("--mode"));
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--concurrency", "0"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
