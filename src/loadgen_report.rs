//! The figures of a load run (`rtpvisor loadgen`): each call's result from what the service
//! recorded for it, the run's summary, the SLO verdict, the progress line and the final table.
//! Pure: no IO, fed with the service's JSON records and the times the generator noted.

use serde::Serialize;
use serde_json::Value;

/// What became of one call the generator placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Set up by the service, carried media, ended.
    Served,
    /// Refused by the service (admission limit, no free port, degraded, ...).
    Refused,
    /// Asterisk refused the originate, or the service's setup failed part way.
    Failed,
    /// Originated, but the service recorded nothing for it in time.
    Missing,
}

/// One call's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallResult {
    pub channel: String,
    pub fate: Fate,
    /// The service's reason (end reason, why refused) or Asterisk's error.
    pub reason: Option<String>,
    /// From the originate request to the call being live in the service, ms.
    pub setup_ms: Option<f64>,
    /// The call's own latency figures (RTT in probe mode, delay in echo mode), ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub samples: u64,
    /// Packets the service took in for the call (for shared-echo: what the echo reflected).
    pub packets: u64,
    pub expected: u64,
    pub lost: u64,
    pub late: u64,
    pub mos: Option<f64>,
}

/// A call's result: `originate_error` when Asterisk refused it, else the service's `record`
/// (an entry of `GET /calls/ended`) if one came; `sent_at_ms` is when the originate was sent.
pub fn call_result(channel: &str, sent_at_ms: u64, originate_error: Option<&str>, record: Option<&Value>) -> CallResult {
    let mut r = CallResult {
        channel: channel.to_string(),
        fate: Fate::Missing,
        reason: None,
        setup_ms: None,
        p50_ms: None,
        p99_ms: None,
        p999_ms: None,
        samples: 0,
        packets: 0,
        expected: 0,
        lost: 0,
        late: 0,
        mos: None,
    };
    if let Some(e) = originate_error {
        r.fate = Fate::Failed;
        r.reason = Some(e.to_string());
        return r;
    }
    let Some(rec) = record else { return r };
    r.reason = rec["reason"].as_str().map(String::from);
    r.fate = match rec["outcome"].as_str() {
        Some("ended") => Fate::Served,
        Some("refused") => Fate::Refused,
        _ => Fate::Failed,
    };
    r.setup_ms = rec["active_at_ms"].as_u64().map(|at| at.saturating_sub(sent_at_ms) as f64);
    let lat = &rec["latency"];
    r.samples = lat["count"].as_u64().unwrap_or(0);
    if r.samples > 0 {
        r.p50_ms = lat["p50_ms"].as_f64();
        r.p99_ms = lat["p99_ms"].as_f64();
        r.p999_ms = lat["p999_ms"].as_f64();
    }
    r.packets = rec["packets_in"].as_u64().unwrap_or(0);
    r.expected = rec["expected"].as_u64().unwrap_or(0);
    r.lost = rec["lost"].as_u64().unwrap_or(0);
    r.late = rec["late"].as_u64().unwrap_or(0);
    r.mos = rec["mos"].as_f64();
    r
}

/// The `q` quantile (0..=1) of `values` by nearest rank; `None` when empty.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// p50 / p99 / p99.9 of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

impl Quantiles {
    fn of(values: &[f64]) -> Self {
        Quantiles { p50: percentile(values, 0.5), p99: percentile(values, 0.99), p999: percentile(values, 0.999) }
    }
}

/// The run as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub placed: usize,
    pub served: usize,
    pub refused: usize,
    /// Originate refused by Asterisk, setup failed in the service, or nothing recorded.
    pub failed: usize,
    /// Of `failed`: calls the service recorded nothing for.
    pub missing: usize,
    /// Setup time over the calls that became live, ms.
    pub setup_ms: Quantiles,
    /// Latency over the calls that measured any: p50 is the median of the calls' medians,
    /// p99 the 99th percentile of the calls' p99s, p99.9 that of their p99.9s, ms.
    pub latency_ms: Quantiles,
    /// Latency samples over all calls.
    pub samples: u64,
    pub expected: u64,
    pub lost: u64,
    pub late: u64,
    /// `lost / expected` over all calls (0 when nothing was expected).
    pub loss_ratio: f64,
    /// `late / samples` over all calls.
    pub late_ratio: f64,
    /// Mean and lowest MOS of the calls that have one.
    pub mos_mean: Option<f64>,
    pub mos_min: Option<f64>,
    /// What Asterisk still listed of the run's calls after it (channels, bridges).
    pub left_channels: usize,
    pub left_bridges: usize,
}

pub fn summarize(results: &[CallResult], left: (usize, usize)) -> Summary {
    let count = |f: Fate| results.iter().filter(|r| r.fate == f).count();
    let collect = |f: fn(&CallResult) -> Option<f64>| results.iter().filter_map(f).collect::<Vec<f64>>();
    let setups = collect(|r| r.setup_ms);
    let (p50s, p99s, p999s) = (collect(|r| r.p50_ms), collect(|r| r.p99_ms), collect(|r| r.p999_ms));
    let moss = collect(|r| r.mos);
    let samples: u64 = results.iter().map(|r| r.samples).sum();
    let expected: u64 = results.iter().map(|r| r.expected).sum();
    let lost: u64 = results.iter().map(|r| r.lost).sum();
    let late: u64 = results.iter().map(|r| r.late).sum();
    let ratio = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    Summary {
        placed: results.len(),
        served: count(Fate::Served),
        refused: count(Fate::Refused),
        failed: count(Fate::Failed) + count(Fate::Missing),
        missing: count(Fate::Missing),
        setup_ms: Quantiles { p999: None, ..Quantiles::of(&setups) },
        latency_ms: Quantiles {
            p50: percentile(&p50s, 0.5),
            p99: percentile(&p99s, 0.99),
            p999: percentile(&p999s, 0.999),
        },
        samples,
        expected,
        lost,
        late,
        loss_ratio: ratio(lost, expected),
        late_ratio: ratio(late, samples),
        mos_mean: if moss.is_empty() { None } else { Some(moss.iter().sum::<f64>() / moss.len() as f64) },
        mos_min: moss.iter().copied().reduce(f64::min),
        left_channels: left.0,
        left_bridges: left.1,
    }
}

/// The service levels a run must meet (each optional).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Slos {
    pub max_p99_ms: Option<f64>,
    pub max_loss: Option<f64>,
    pub min_mos: Option<f64>,
    pub max_failed: Option<usize>,
}

/// One SLO's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloResult {
    /// The flag that set it, e.g. `--max-p99-ms`.
    pub flag: &'static str,
    pub limit: f64,
    /// The run's figure; `None` when the run measured nothing to judge (which breaks it).
    pub actual: Option<f64>,
    pub holds: bool,
}

/// Every SLO that was set, judged against the run.
pub fn judge(s: &Summary, slos: &Slos) -> Vec<SloResult> {
    let mut out = Vec::new();
    let mut at_most = |flag, limit: Option<f64>, actual: Option<f64>| {
        if let Some(limit) = limit {
            out.push(SloResult { flag, limit, actual, holds: actual.is_some_and(|a| a <= limit) });
        }
    };
    at_most("--max-p99-ms", slos.max_p99_ms, s.latency_ms.p99);
    at_most("--max-loss", slos.max_loss, (s.expected > 0).then_some(s.loss_ratio));
    at_most("--max-failed", slos.max_failed.map(|n| n as f64), Some(s.failed as f64));
    if let Some(limit) = slos.min_mos {
        out.push(SloResult { flag: "--min-mos", limit, actual: s.mos_mean, holds: s.mos_mean.is_some_and(|m| m >= limit) });
    }
    out
}

/// The exit code: 0 when every SLO holds, 1 when one breaks.
pub fn exit_code(verdict: &[SloResult]) -> i32 {
    i32::from(verdict.iter().any(|v| !v.holds))
}

/// What the live progress shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    pub elapsed_s: f64,
    pub placed: usize,
    pub total: usize,
    /// Placed and not ended yet.
    pub up: usize,
    pub served: usize,
    pub refused: usize,
    pub failed: usize,
    /// p99 latency over the calls ended so far.
    pub p99_ms: Option<f64>,
}

pub fn progress_line(p: &Progress) -> String {
    format!(
        "{:6.1} s  placed {}/{}  up {}  ended {}  refused {}  failed {}  p99 {}",
        p.elapsed_s,
        p.placed,
        p.total,
        p.up,
        p.served,
        p.refused,
        p.failed,
        ms(p.p99_ms)
    )
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"))
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

/// A whole number as such (a count), anything else with 4 decimals.
fn figure(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.4}")
    }
}

fn pct(r: f64) -> String {
    format!("{:.3} %", r * 100.0)
}

/// The final table. `latency_label`: `RTT` (probe) or `delay` (echo).
pub fn table(s: &Summary, latency_label: &str, verdict: &[SloResult]) -> String {
    let mut t = String::new();
    let row = |t: &mut String, name: &str, q: &Quantiles, with_p999: bool| {
        let p999 = if with_p999 { num(q.p999) } else { "-".into() };
        t.push_str(&format!("{name:<18} {:>10} {:>10} {:>10}\n", num(q.p50), num(q.p99), p999));
    };
    t.push_str(&format!("{:<18} {:>10} {:>10} {:>10}\n", "", "p50", "p99", "p99.9"));
    row(&mut t, "setup time (ms)", &s.setup_ms, false);
    row(&mut t, &format!("{latency_label} (ms)"), &s.latency_ms, true);
    t.push_str(&format!(
        "calls              placed {}  served {}  refused {}  failed {}{}\n",
        s.placed,
        s.served,
        s.refused,
        s.failed,
        if s.missing > 0 { format!(" ({} never recorded)", s.missing) } else { String::new() }
    ));
    t.push_str(&format!(
        "packets            expected {}  lost {} ({})  late {} ({})\n",
        s.expected,
        s.lost,
        pct(s.loss_ratio),
        s.late,
        pct(s.late_ratio)
    ));
    t.push_str(&format!("MOS                mean {}  min {}\n", num(s.mos_mean), num(s.mos_min)));
    t.push_str(&format!("left in Asterisk   {} channels, {} bridges\n", s.left_channels, s.left_bridges));
    for v in verdict {
        let op = if v.flag == "--min-mos" { ">=" } else { "<=" };
        t.push_str(&format!(
            "SLO {:<14} {} {}: {} {}\n",
            v.flag,
            op,
            v.limit,
            v.actual.map_or_else(|| "nothing measured".to_string(), figure),
            if v.holds { "✓" } else { "✗ BROKEN" }
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn served(channel: &str, setup: f64, p99: f64, mos: f64, lost: u64) -> CallResult {
        CallResult {
            channel: channel.into(),
            fate: Fate::Served,
            reason: Some("hangup".into()),
            setup_ms: Some(setup),
            p50_ms: Some(p99 / 2.0),
            p99_ms: Some(p99),
            p999_ms: Some(p99 * 1.5),
            samples: 100,
            packets: 100,
            expected: 100,
            lost,
            late: 1,
            mos: Some(mos),
        }
    }

    #[test]
    fn percentile_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.999), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[f64::NAN], 0.5), None);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0), "unsorted input");
    }

    #[test]
    fn a_call_result_from_the_service_record() {
        let rec = json!({
            "seq": 7, "channel": "c", "mode": "probe", "outcome": "ended", "reason": "hangup",
            "active_at_ms": 1_000_120, "latency": {"count": 98, "p50_ms": 0.4, "p99_ms": 0.9, "p999_ms": 1.1},
            "expected": 100, "lost": 2, "late": 0, "mos": 4.38
        });
        let r = call_result("c", 1_000_000, None, Some(&rec));
        assert_eq!(r.fate, Fate::Served);
        assert_eq!(r.setup_ms, Some(120.0));
        assert_eq!((r.p50_ms, r.p99_ms, r.p999_ms), (Some(0.4), Some(0.9), Some(1.1)));
        assert_eq!((r.samples, r.expected, r.lost, r.mos), (98, 100, 2, Some(4.38)));

        let refused = json!({"outcome": "refused", "reason": "no free RTP port", "active_at_ms": null, "latency": null});
        let r = call_result("c", 5, None, Some(&refused));
        assert_eq!((r.fate, r.setup_ms, r.p99_ms), (Fate::Refused, None, None));
        assert_eq!(r.reason.as_deref(), Some("no free RTP port"));

        let failed = json!({"outcome": "failed", "reason": "setup_failed", "latency": {"count": 0, "p99_ms": 0.0}});
        let r = call_result("c", 5, None, Some(&failed));
        assert_eq!((r.fate, r.p99_ms), (Fate::Failed, None), "no samples: no latency");

        let r = call_result("c", 5, Some("ARI POST /channels answered 500"), None);
        assert_eq!(r.fate, Fate::Failed);
        assert_eq!(call_result("c", 5, None, None).fate, Fate::Missing);
        // A clock step between the hosts never gives a negative setup time.
        let early = json!({"outcome": "ended", "active_at_ms": 3});
        assert_eq!(call_result("c", 5, None, Some(&early)).setup_ms, Some(0.0));
    }

    #[test]
    fn the_summary_adds_up() {
        let mut results: Vec<CallResult> = (0..10).map(|i| served(&format!("c{i}"), 80.0 + i as f64, 1.0, 4.4, 0)).collect();
        results[9] = served("slow", 300.0, 20.0, 3.0, 10);
        results.push(call_result("r", 0, None, Some(&json!({"outcome": "refused"}))));
        results.push(call_result("f", 0, Some("500"), None));
        results.push(call_result("m", 0, None, None));
        let s = summarize(&results, (0, 1));
        assert_eq!((s.placed, s.served, s.refused, s.failed, s.missing), (13, 10, 1, 2, 1));
        assert_eq!(s.setup_ms.p50, Some(84.0));
        assert_eq!(s.setup_ms.p99, Some(300.0));
        assert_eq!(s.setup_ms.p999, None, "setup time has no p99.9 row");
        assert_eq!(s.latency_ms.p50, Some(0.5));
        assert_eq!(s.latency_ms.p99, Some(20.0), "the worst call's p99");
        assert_eq!((s.expected, s.lost), (1000, 10));
        assert!((s.loss_ratio - 0.01).abs() < 1e-12);
        assert!((s.late_ratio - 0.01).abs() < 1e-12);
        assert!((s.mos_mean.unwrap() - (9.0 * 4.4 + 3.0) / 10.0).abs() < 1e-12);
        assert_eq!(s.mos_min, Some(3.0));
        assert_eq!((s.left_channels, s.left_bridges), (0, 1));
        let empty = summarize(&[], (0, 0));
        assert_eq!((empty.loss_ratio, empty.mos_mean, empty.latency_ms.p99), (0.0, None, None));
    }

    #[test]
    fn slos_decide_the_exit_code_and_name_the_broken_one() {
        let s = summarize(&[served("a", 80.0, 1.0, 4.4, 1)], (0, 0));
        let loose = Slos { max_p99_ms: Some(50.0), max_loss: Some(0.05), min_mos: Some(3.5), max_failed: Some(0) };
        let v = judge(&s, &loose);
        assert_eq!(v.len(), 4);
        assert_eq!(exit_code(&v), 0);
        assert_eq!(exit_code(&judge(&s, &Slos::default())), 0, "no SLO: nothing breaks");

        let v = judge(&s, &Slos { min_mos: Some(5.0), ..loose });
        assert_eq!(exit_code(&v), 1);
        let broken: Vec<_> = v.iter().filter(|r| !r.holds).map(|r| r.flag).collect();
        assert_eq!(broken, ["--min-mos"]);
        assert!(table(&s, "RTT", &v).contains("SLO --min-mos      >= 5: 4.4000 ✗ BROKEN"), "{}", table(&s, "RTT", &v));

        let v = judge(&s, &Slos { max_p99_ms: Some(0.001), ..Slos::default() });
        assert_eq!((exit_code(&v), v[0].flag, v[0].actual), (1, "--max-p99-ms", Some(1.0)));
        assert!(table(&s, "RTT", &judge(&s, &Slos { max_failed: Some(0), ..Slos::default() })).contains("SLO --max-failed   <= 0: 0 ✓"));
        // At the limit holds; nothing measured breaks.
        assert!(judge(&s, &Slos { max_p99_ms: Some(1.0), ..Slos::default() })[0].holds);
        let nothing = summarize(&[call_result("f", 0, Some("500"), None)], (0, 0));
        let v = judge(&nothing, &Slos { max_p99_ms: Some(1e9), min_mos: Some(1.0), max_failed: Some(0), ..Slos::default() });
        assert!(v.iter().all(|r| !r.holds), "{v:?}");
    }

    #[test]
    fn the_table_and_the_progress_line() {
        let s = summarize(&[served("a", 80.0, 1.0, 4.4, 0)], (2, 1));
        let t = table(&s, "RTT", &[]);
        assert!(t.contains("setup time (ms)         80.00      80.00          -"), "{t}");
        assert!(t.contains("RTT (ms)                 0.50       1.00       1.50"), "{t}");
        assert!(t.contains("placed 1  served 1  refused 0  failed 0\n"), "{t}");
        assert!(t.contains("left in Asterisk   2 channels, 1 bridges"), "{t}");
        let line = progress_line(&Progress { elapsed_s: 1.3, placed: 3, total: 10, up: 2, served: 1, p99_ms: Some(0.5), ..Progress::default() });
        assert_eq!(line, "   1.3 s  placed 3/10  up 2  ended 1  refused 0  failed 0  p99 0.50 ms");
        assert!(progress_line(&Progress::default()).ends_with("p99 -"));
    }
}
