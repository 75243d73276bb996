//! What a Prometheus scrape costs with few and with many live calls: the real service
//! (`Service::start`, its fake ARI) with 10 calls, then with 1,000 (the counts are flags), each
//! time `GET /metrics/prometheus`'s body built [`REPS`] times in a row on the service's own
//! thread (after as many not counted), alternating with the baseline: the same scrape reading the whole supervision tree,
//! a node per call, as it did before. The calls are in echo mode without media (their media
//! would load the machine more at 1,000 than at 10, which is not what is compared here); the
//! no-media timeout (30 s) is longer than the run.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use crate::channels::RTP_PORTS;
use crate::fake_ari::wait_for;
use crate::service_run::{self, ScrapePath};

/// Scrapes timed per path, count and round.
pub const REPS: usize = 100;
/// Rounds of (service, whole tree) per count; the median over all of them is reported.
pub const ROUNDS: usize = 3;

/// Scrape times at one call count.
#[derive(Debug, Clone, Serialize)]
pub struct ScrapeRun {
    pub calls: usize,
    /// Median and 90th percentile of the service's scrape, microseconds.
    pub median_us: f64,
    pub p90_us: f64,
    /// The same for the baseline reading the whole tree.
    pub whole_tree_median_us: f64,
    pub whole_tree_p90_us: f64,
    /// Live calls at the end of the measurement (must equal `calls`).
    pub active_after: u64,
    /// The body's size, bytes (the same at every count: no per-call series).
    pub body_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScrapeResult {
    pub runs: Vec<ScrapeRun>,
    /// The service's median scrape at the largest count / at the smallest.
    pub ratio: Option<f64>,
    /// The same for the whole-tree baseline.
    pub whole_tree_ratio: Option<f64>,
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i].as_secs_f64() * 1e6
}

pub fn run(counts: &[usize]) -> anyhow::Result<ScrapeResult> {
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    let (svc, ari) = service_run::start_with_fake_ari(RTP_PORTS)?;
    if !ari.wait_connected(Duration::from_secs(10)) {
        bail!("the service did not connect to the fake ARI within 10 s");
    }
    std::thread::sleep(Duration::from_millis(200));
    let caller = |i: usize| format!("scrape-{i}");
    // Asterisk's side of each call: addresses nobody sends from (no media).
    let peer = |i: usize| SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 10_000 + i as u16));
    let mut runs = Vec::new();
    let mut up = 0;
    for &n in &counts {
        ari.set_peers((up..n).map(|i| (caller(i), peer(i))));
        for i in up..n {
            if !ari.stasis_start(&caller(i), &["echo"]) {
                bail!("the events WebSocket closed");
            }
        }
        up = n;
        let limit = Duration::from_secs(30);
        if !wait_for(limit, || ari.answered() >= n) {
            bail!("only {} of {n} calls were set up within {limit:?}", ari.answered());
        }
        // A round not counted: the first scrapes after calls arrive pay for warming caches.
        svc.scrape(ScrapePath::Service, REPS);
        svc.scrape(ScrapePath::WholeTree, REPS);
        let (mut ours, mut tree, mut body_bytes) = (Vec::new(), Vec::new(), 0);
        for _ in 0..ROUNDS {
            let (times, len) = svc.scrape(ScrapePath::Service, REPS);
            ours.extend(times);
            body_bytes = len;
            tree.extend(svc.scrape(ScrapePath::WholeTree, REPS).0);
        }
        let active_after = svc.metrics().map_or(0, |m| m.active_channels);
        let run = ScrapeRun {
            calls: n,
            median_us: quantile(&mut ours, 0.5),
            p90_us: quantile(&mut ours, 0.9),
            whole_tree_median_us: quantile(&mut tree, 0.5),
            whole_tree_p90_us: quantile(&mut tree, 0.9),
            active_after,
            body_bytes,
        };
        eprintln!(
            "   {n} live calls: scrape median {:.0} us (p90 {:.0}), whole tree {:.0} us (p90 {:.0}); {} bytes; {active_after} calls live",
            run.median_us, run.p90_us, run.whole_tree_median_us, run.whole_tree_p90_us, run.body_bytes
        );
        if active_after != n as u64 {
            eprintln!("   warning: {active_after} calls live, not {n}");
        }
        runs.push(run);
    }
    for i in 0..up {
        ari.stasis_end(&caller(i));
    }
    let _ = wait_for(Duration::from_secs(30), || ari.caller_hangups() >= up as u64);
    svc.stop();
    ari.stop();
    let ratio = |f: fn(&ScrapeRun) -> f64| {
        let (small, large) = (runs.first()?, runs.last()?);
        (large.calls > small.calls).then(|| f(large) / f(small))
    };
    Ok(ScrapeResult { ratio: ratio(|r| r.median_us), whole_tree_ratio: ratio(|r| r.whole_tree_median_us), runs })
}

/// The lines printed and written for it.
pub fn lines(r: &ScrapeResult) -> Vec<String> {
    let mut out: Vec<String> = r
        .runs
        .iter()
        .map(|x| {
            format!(
                "{} live calls: scrape median {:.0} us (p90 {:.0} us), {} bytes; reading the whole tree (before): median {:.0} us (p90 {:.0} us)",
                x.calls, x.median_us, x.p90_us, x.body_bytes, x.whole_tree_median_us, x.whole_tree_p90_us
            )
        })
        .collect();
    if let (Some(a), Some(b), Some(small), Some(large)) = (r.ratio, r.whole_tree_ratio, r.runs.first(), r.runs.last()) {
        out.push(format!(
            "{} against {} live calls: scrape {a:.2}x; reading the whole tree {b:.2}x",
            large.calls, small.calls
        ));
    }
    out
}
