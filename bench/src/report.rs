//! What the suite prints and writes: latency summaries, the tables (terminal and Markdown),
//! the performance targets judged against the figures, `results.json`, and the latency plot (an
//! SVG written by hand: complementary CDF, log-log, one curve per system).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::channels::{RunResult, Sut};

/// Percentiles of a histogram of nanoseconds, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl LatencyStats {
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencyStats::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyStats {
            count: h.len(),
            min_us: us(h.min()),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// One thread's CPU over a window.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    pub name: String,
    pub cores: f64,
}

/// One performance target and how the run fared.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: String,
    pub target: String,
    pub measured: String,
    /// None: not measured in this run.
    pub met: Option<bool>,
}

impl Target {
    pub fn new(id: &str, target: &str, measured: String, met: Option<bool>) -> Self {
        Target { id: id.into(), target: target.into(), measured, met }
    }

    pub fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "not measured (see why)",
        }
    }
}

fn find(runs: &[RunResult], sut: Sut, n: usize) -> Option<&RunResult> {
    runs.iter().find(|r| r.system == sut && r.channels == n)
}

/// A verdict that only counts when every run involved offered its full load on schedule: when
/// the generator fell behind, the machine was short of CPU and the run proves nothing either way.
fn judged(id: &str, target: &str, runs: &[&RunResult], measured: String, met: bool) -> Target {
    match runs.iter().find(|r| !r.generator_kept_pace) {
        None => Target::new(id, target, measured, Some(met)),
        Some(r) => Target::new(
            id,
            target,
            format!(
                "{measured}; not valid: the generator fell behind in the {} run ({} of {} planned packets sent, p99 lag {:.0} us)",
                r.system.name(),
                r.sent,
                r.planned,
                r.generator_lag.p99_us
            ),
            None,
        ),
    }
}

/// The channel-media targets, judged on the runs at 2,000 and 4,000 channels.
pub fn channel_targets(runs: &[RunResult]) -> Vec<Target> {
    let mut t = Vec::new();
    let svc = find(runs, Sut::Rtpvisor, 2000);
    let bare = find(runs, Sut::BareEpoll, 2000);
    let naive = find(runs, Sut::NaiveTokio, 2000);
    let not_run = |id: &str, target: &str| Target::new(id, target, "not run".into(), None);
    const LOSS: &str = "2,000 channels: 0 loss";
    t.push(match svc {
        Some(s) => judged("2000ch.loss", LOSS, &[s], format!("{} of {} lost", s.lost, s.sent), s.lost == 0),
        None => not_run("2000ch.loss", LOSS),
    });
    const VS_BARE: &str = "p99 <= 1.5x the bare epoll loop's p99";
    t.push(match (svc, bare) {
        (Some(s), Some(b)) => {
            let r = s.turnaround.p99_us / b.turnaround.p99_us.max(0.001);
            let m = format!("{:.1} us vs {:.1} us = {r:.2}x", s.turnaround.p99_us, b.turnaround.p99_us);
            judged("2000ch.p99_vs_bare", VS_BARE, &[s, b], m, r <= 1.5)
        }
        _ => not_run("2000ch.p99_vs_bare", VS_BARE),
    });
    const VS_NAIVE: &str = "p99 >= 2x better than the naive baseline's";
    t.push(match (svc, naive) {
        (Some(s), Some(nv)) => {
            let r = nv.turnaround.p99_us / s.turnaround.p99_us.max(0.001);
            let m = format!("naive {:.1} us / rtpvisor {:.1} us = {r:.2}x", nv.turnaround.p99_us, s.turnaround.p99_us);
            judged("2000ch.p99_vs_naive", VS_NAIVE, &[s, nv], m, r >= 2.0)
        }
        _ => not_run("2000ch.p99_vs_naive", VS_NAIVE),
    });
    const ABS: &str = "p99 <= 1 ms";
    t.push(match svc {
        Some(s) => judged("2000ch.p99_abs", ABS, &[s], format!("{:.1} us", s.turnaround.p99_us), s.turnaround.p99_us <= 1000.0),
        None => not_run("2000ch.p99_abs", ABS),
    });
    const CPU: &str = "service CPU <= 1 core";
    t.push(match svc {
        Some(s) => judged("2000ch.cpu", CPU, &[s], format!("{:.2} cores", s.sut_cpu_cores), s.sut_cpu_cores <= 1.0),
        None => not_run("2000ch.cpu", CPU),
    });
    const SUSTAINED: &str = "4,000 channels sustained with 0 loss";
    t.push(match find(runs, Sut::Rtpvisor, 4000) {
        Some(s) => judged("4000ch.loss", SUSTAINED, &[s], format!("{} of {} lost", s.lost, s.sent), s.lost == 0),
        None => not_run("4000ch.loss", SUSTAINED),
    });
    // Memory does not depend on the generator's pace: judged whatever the load.
    let big: Vec<&RunResult> = runs.iter().filter(|r| r.system == Sut::Rtpvisor && r.channels >= 1000).collect();
    t.push(if big.is_empty() {
        not_run("rss_per_channel", "<= 32 KiB RSS per active channel")
    } else {
        let worst = big.iter().map(|r| r.rss_per_channel_kib).fold(f64::MIN, f64::max);
        let each: Vec<String> = big.iter().map(|r| format!("{}ch {:.1}", r.channels, r.rss_per_channel_kib)).collect();
        Target::new(
            "rss_per_channel",
            "<= 32 KiB RSS per active channel",
            format!("{} KiB", each.join(", ")),
            Some(worst <= 32.0),
        )
    });
    t
}

fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

/// The channel table, for the terminal (`md = false`) or Markdown.
pub fn channels_table(runs: &[RunResult], md: bool) -> String {
    let head = [
        "channels", "system", "p50 us", "p99 us", "p99.9 us", "max us", "sent", "lost", "CPU cores", "CPU us/pkt", "gen CPU", "gen pace",
        "RSS KiB/ch", "allocs/pkt", "others CPU",
    ];
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.channels.to_string(),
                r.system.name().to_string(),
                fmt_us(r.turnaround.p50_us),
                fmt_us(r.turnaround.p99_us),
                fmt_us(r.turnaround.p999_us),
                fmt_us(r.turnaround.max_us),
                r.sent.to_string(),
                r.lost.to_string(),
                format!("{:.2}", r.sut_cpu_cores),
                format!("{:.2}", r.sut_cpu_us_per_packet),
                format!("{:.2}", r.generator_cpu_cores),
                if r.generator_kept_pace {
                    "ok".to_string()
                } else {
                    format!("behind ({:.0} us p99)", r.generator_lag.p99_us)
                },
                format!("{:.1}", r.rss_per_channel_kib),
                format!("{:.3}", r.allocs_per_packet),
                format!("{:.2}", r.neighbours.others_cores + r.neighbours.steal_cores),
            ]
        })
        .collect();
    table(&head, &rows, md)
}

/// Ratios of rtpvisor's p99 to the baselines' at each channel count.
pub fn ratio_lines(runs: &[RunResult]) -> Vec<String> {
    let mut counts: Vec<usize> = runs.iter().map(|r| r.channels).collect();
    counts.sort_unstable();
    counts.dedup();
    let mut out = Vec::new();
    for n in counts {
        let (Some(s), b, nv) = (find(runs, Sut::Rtpvisor, n), find(runs, Sut::BareEpoll, n), find(runs, Sut::NaiveTokio, n)) else {
            continue;
        };
        let mut line = format!("{n} channels: p99 rtpvisor {:.1} us", s.turnaround.p99_us);
        if let Some(b) = b {
            let _ = write!(line, "; rtpvisor/bare-epoll {:.2}x (target <= 1.5x)", s.turnaround.p99_us / b.turnaround.p99_us.max(0.001));
        }
        if let Some(nv) = nv {
            let _ = write!(line, "; naive/rtpvisor {:.2}x (target >= 2x)", nv.turnaround.p99_us / s.turnaround.p99_us.max(0.001));
        }
        out.push(line);
    }
    out
}

pub fn targets_table(targets: &[Target], md: bool) -> String {
    let rows: Vec<Vec<String>> = targets
        .iter()
        .map(|t| vec![t.target.clone(), t.measured.clone(), t.verdict().to_string()])
        .collect();
    table(&["target", "measured", "verdict"], &rows, md)
}

/// A plain aligned table, or a Markdown one.
pub fn table(head: &[&str], rows: &[Vec<String>], md: bool) -> String {
    let mut out = String::new();
    if md {
        let _ = writeln!(out, "| {} |", head.join(" | "));
        let _ = writeln!(out, "|{}", head.iter().map(|_| "---|").collect::<String>());
        for r in rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        return out;
    }
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 1 || i == 0 && head[0] == "target" { format!("{c:<w$}", w = w[i]) } else { format!("{c:>w$}", w = w[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let _ = writeln!(out, "{}", line(head.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// One curve of the plot.
pub struct Curve<'a> {
    pub label: String,
    pub color: &'a str,
    pub hist: &'a Histogram<u64>,
}

/// Complementary CDF of turnaround (fraction of packets slower than x), log-log, one curve per
/// system: the tail is where designs differ, and a log y-axis shows it down to 1 in 10^6.
pub fn latency_svg(title: &str, subtitle: &str, curves: &[Curve]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 520.0;
    const L: f64 = 80.0;
    const R: f64 = 30.0;
    const T: f64 = 70.0;
    const B: f64 = 60.0;
    let pw = W - L - R;
    let ph = H - T - B;
    let nonempty: Vec<&Curve> = curves.iter().filter(|c| !c.hist.is_empty()).collect();
    let min_ns = nonempty.iter().map(|c| c.hist.min().max(1)).min().unwrap_or(1_000);
    let max_ns = nonempty.iter().map(|c| c.hist.max().max(1)).max().unwrap_or(1_000_000);
    let x_lo = ((min_ns as f64 / 1000.0).max(0.1)).log10().floor();
    let x_hi = ((max_ns as f64 / 1000.0).log10().ceil()).max(x_lo + 1.0);
    let most = nonempty.iter().map(|c| c.hist.len()).max().unwrap_or(10).max(10);
    let y_lo = -((most as f64).log10().ceil()).min(7.0);
    let xp = |us: f64| L + (us.max(1e-3).log10() - x_lo) / (x_hi - x_lo) * pw;
    let yp = |frac: f64| T + (0.0 - frac.max(1e-12).log10()) / (0.0 - y_lo) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#, W / 2.0, xml(title));
    let _ = writeln!(s, r##"<text x="{}" y="44" fill="#555" text-anchor="middle">{}</text>"##, W / 2.0, xml(subtitle));
    // Grid and axes.
    let mut d = x_lo;
    while d <= x_hi + 1e-9 {
        let x = xp(10f64.powf(d));
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##, T + ph);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, T + ph + 18.0, us_label(10f64.powf(d)));
        d += 1.0;
    }
    let mut e = 0.0;
    while e >= y_lo - 1e-9 {
        let y = yp(10f64.powf(e));
        let _ = writeln!(s, r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, L + pw);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#, L - 6.0, y + 4.0, frac_label(10f64.powf(e)));
        e -= 1.0;
    }
    for (q, name) in [(0.5, "p50"), (0.01, "p99"), (0.001, "p99.9")] {
        let y = yp(q);
        let _ = writeln!(s, r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#999" stroke-dasharray="4 3"/>"##, L + pw);
        let _ = writeln!(s, r##"<text x="{}" y="{:.1}" fill="#777">{name}</text>"##, L + pw - 40.0, y - 3.0);
    }
    let _ = writeln!(s, r#"<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">turnaround (generator send -> reflected packet back), log scale</text>"#, L + pw / 2.0, H - 16.0);
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">fraction of packets slower (log)</text>"#,
        T + ph / 2.0,
        T + ph / 2.0
    );
    // Curves: a step for every recorded bucket.
    for c in &nonempty {
        let total = c.hist.len() as f64;
        let mut pts = String::new();
        let mut prev = 1.0f64;
        let mut last_x = f64::NEG_INFINITY;
        for v in c.hist.iter_recorded() {
            let us = v.value_iterated_to() as f64 / 1000.0;
            let above = 1.0 - v.quantile_iterated_to();
            let x = xp(us);
            if (x - last_x).abs() >= 0.5 || above <= 0.0 {
                let _ = write!(pts, "{x:.1},{:.1} ", yp(prev));
                if above > 0.0 {
                    let _ = write!(pts, "{x:.1},{:.1} ", yp(above));
                }
                last_x = x;
            }
            if above <= 0.0 {
                let _ = write!(pts, "{x:.1},{:.1} ", yp(1.0 / total));
                break;
            }
            prev = above;
        }
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, c.color, pts.trim_end());
    }
    // Legend, bottom left: the curves fall from top left to bottom right, leaving it empty.
    for (i, c) in curves.iter().enumerate() {
        let y = T + ph - 12.0 - (curves.len() - 1 - i) as f64 * 18.0;
        let x = L + 12.0;
        let _ = writeln!(s, r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="3"/>"#, x + 24.0, c.color);
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, x + 30.0, y + 4.0, xml(&c.label));
    }
    s.push_str("</svg>\n");
    s
}

fn us_label(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{} us", us)
    }
}

fn frac_label(f: f64) -> String {
    let pct = f * 100.0;
    if pct >= 1.0 {
        format!("{pct:.0}%")
    } else {
        let digits = (-pct.log10()).ceil() as usize;
        format!("{pct:.digits$}%")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_one_polyline_per_nonempty_curve() {
        let mut a = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        for i in 1..1000u64 {
            a.record(10_000 + i * 100).unwrap();
        }
        let empty = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        let svg = latency_svg(
            "t",
            "s",
            &[Curve { label: "a".into(), color: "red", hist: &a }, Curve { label: "b".into(), color: "blue", hist: &empty }],
        );
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(frac_label(0.001), "0.1%");
        assert_eq!(us_label(1000.0), "1 ms");
    }
}
