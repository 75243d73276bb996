//! Ending many calls at once, in the media engine alone (`MediaHandle::start` as the service
//! calls it): N echo streams talking at 50 packets/s each (a call's pace), beside
//! [`TALKERS`] more that stay and keep talking; after 300 ms of media the N fall silent and
//! are removed at once: N `remove` requests sent together, as N ChannelActors tearing down
//! together, every answer (each with the stream's final report) awaited. They fall silent
//! first so that what the media thread spends is the removals' cost alone: the engine reads
//! the call sockets between batches of commands, and packets of the streams being removed
//! would add their own cost, which grows with N. Measured: the wall
//! time from the first request to the last answer, and the CPU time the media thread used
//! meanwhile (its thread CPU clock). Baseline: the same with a small N on the same engine in
//! the same process, a few seconds apart: per removal, the large N against the small one
//! (1.0: a removal costs the same whatever the number of streams).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use serde::Serialize;

use rtpvisor_actors::media::{EngineOptions, MediaHandle, StreamSpec};
use rtpvisor_actors::mode::CallMode;
use rtpvisor_actors::probe::{PACKET_LEN, SAMPLES_PER_PACKET};
use rtpvisor_actors::rtp::{write_header, RtpHeader};

use crate::sys;

/// Streams that stay and talk during the removals.
pub const TALKERS: usize = 20;
/// How long the N streams talk before they are removed: a flush or two.
const TALK_BEFORE: Duration = Duration::from_millis(300);
/// Rounds per stream count; the median is reported.
const ROUNDS: usize = 3;

/// One removal of `streams` streams at once.
#[derive(Debug, Clone, Serialize)]
pub struct RemovalRun {
    pub streams: usize,
    /// First request sent to last answer received.
    pub wall_ms: f64,
    /// CPU time of the media thread over the same window.
    pub media_cpu_ms: f64,
    /// Final reports received (one per stream, or the run is invalid).
    pub reports: usize,
    /// Flushes the engine sent during the window.
    pub flushes: u64,
}

/// The median run of one stream count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RemovalMedian {
    pub streams: usize,
    pub wall_ms: f64,
    pub media_cpu_ms: f64,
}

/// The runs of every stream count, and the per-removal ratio of the largest to the smallest.
#[derive(Debug, Clone, Serialize)]
pub struct RemovalResult {
    pub runs: Vec<RemovalRun>,
    /// Medians per stream count.
    pub medians: Vec<RemovalMedian>,
    /// Media CPU per removal at the largest count / at the smallest.
    pub cpu_per_removal_ratio: Option<f64>,
    /// Wall time per removal at the largest count / at the smallest.
    pub wall_per_removal_ratio: Option<f64>,
}

fn rtp(seq: u16, ssrc: u32) -> [u8; PACKET_LEN] {
    let mut pkt = [0x5a; PACKET_LEN];
    let ts = u32::from(seq).wrapping_mul(SAMPLES_PER_PACKET);
    write_header(&mut pkt, &RtpHeader::pcmu(seq, ts, ssrc)).expect("a packet has room for its header");
    pkt
}

fn spec(id: u64, socket: UdpSocket, peer: SocketAddr) -> StreamSpec {
    StreamSpec {
        id,
        mode: CallMode::Echo,
        socket,
        peer,
        late_threshold: Duration::from_millis(40),
        probe_timeout: Duration::from_millis(500),
        no_media_timeout: Duration::ZERO,
    }
}

/// The far end of the streams at `targets`: one socket (every stream's peer), a packet to each
/// stream every 20 ms, reflections read and dropped.
fn talk(sock: UdpSocket, targets: Vec<SocketAddr>, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let _ = sock.set_nonblocking(true);
        let mut buf = [0u8; 2048];
        let mut seq = 0u16;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            for (i, t) in targets.iter().enumerate() {
                let _ = sock.send_to(&rtp(seq, 0x7a1c_0000 + i as u32), t);
            }
            seq = seq.wrapping_add(1);
            while sock.recv_from(&mut buf).is_ok() {}
            next += Duration::from_millis(20);
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    })
}

pub fn run(counts: &[usize]) -> anyhow::Result<RemovalResult> {
    let flushes = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&flushes);
    let (media, join) = MediaHandle::start(
        Box::new(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        }),
        Box::new(|_, _| {}),
        EngineOptions::default(),
    )
    .context("starting the media engine")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // The thread names itself once it runs.
    let mut tid = None;
    let deadline = Instant::now() + Duration::from_secs(2);
    while tid.is_none() && Instant::now() < deadline {
        tid = sys::thread_id("rtpvisor-media");
        thread::sleep(Duration::from_millis(5));
    }
    let tid = tid.ok_or_else(|| anyhow!("no thread named rtpvisor-media"))?;
    let cpu = || sys::thread_cpu_ns(tid).map_or(f64::NAN, |ns| ns as f64 / 1e6);

    let talker_peer = UdpSocket::bind("127.0.0.1:0")?;
    let mut talker_addrs = Vec::with_capacity(TALKERS);
    for i in 0..TALKERS {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        talker_addrs.push(s.local_addr()?);
        rt.block_on(media.add(spec(1_000_000 + i as u64, s, talker_peer.local_addr()?)))?
            .context("adding a talker")?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let talker = talk(talker_peer, talker_addrs, Arc::clone(&stop));

    let mut runs = Vec::new();
    let mut next_id = 0u64;
    for round in 0..ROUNDS {
        for &n in counts {
            let peer = UdpSocket::bind("127.0.0.1:0")?;
            let peer_addr = peer.local_addr()?;
            let mut ids = Vec::with_capacity(n);
            let mut targets = Vec::with_capacity(n);
            for _ in 0..n {
                let s = UdpSocket::bind("127.0.0.1:0")?;
                targets.push(s.local_addr()?);
                next_id += 1;
                rt.block_on(media.add(spec(next_id, s, peer_addr)))?.context("adding a stream")?;
                ids.push(next_id);
            }
            let hush = Arc::new(AtomicBool::new(false));
            let far = talk(peer, targets, Arc::clone(&hush));
            thread::sleep(TALK_BEFORE);
            hush.store(true, Ordering::Relaxed);
            let _ = far.join();
            // Their last packets read.
            thread::sleep(Duration::from_millis(50));
            let f0 = flushes.load(Ordering::Relaxed);
            let c0 = cpu();
            let t0 = Instant::now();
            let answers = rt.block_on(futures_util::future::join_all(ids.iter().map(|&id| media.remove(id))));
            let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
            let media_cpu_ms = cpu() - c0;
            let reports = answers.iter().filter(|a| matches!(a, Ok(Some(_)))).count();
            let run = RemovalRun { streams: n, wall_ms, media_cpu_ms, reports, flushes: flushes.load(Ordering::Relaxed) - f0 };
            eprintln!(
                "   round {}: {n} streams removed at once: {wall_ms:.2} ms wall, {media_cpu_ms:.2} ms media CPU, {reports} reports",
                round + 1
            );
            if reports != n {
                eprintln!("   warning: {} of {n} removals gave no report", n - reports);
            }
            runs.push(run);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = talker.join();
    media.shutdown();
    let _ = join.join();

    let median = |n: usize, f: fn(&RemovalRun) -> f64| {
        let mut v: Vec<f64> = runs.iter().filter(|r| r.streams == n).map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let medians: Vec<RemovalMedian> = counts
        .iter()
        .map(|&n| RemovalMedian { streams: n, wall_ms: median(n, |r| r.wall_ms), media_cpu_ms: median(n, |r| r.media_cpu_ms) })
        .collect();
    // Per removal, the largest count against the smallest.
    let ratio = |value: fn(&RemovalMedian) -> f64| {
        let small = medians.iter().min_by_key(|m| m.streams)?;
        let large = medians.iter().max_by_key(|m| m.streams)?;
        let per = |m: &RemovalMedian| value(m) / m.streams as f64;
        (large.streams > small.streams).then(|| per(large) / per(small))
    };
    Ok(RemovalResult {
        cpu_per_removal_ratio: ratio(|m| m.media_cpu_ms),
        wall_per_removal_ratio: ratio(|m| m.wall_ms),
        medians,
        runs,
    })
}

/// The lines printed and written for it.
pub fn lines(r: &RemovalResult) -> Vec<String> {
    let mut out: Vec<String> = r
        .medians
        .iter()
        .map(|m| {
            format!(
                "{} streams removed at once (median of {ROUNDS}): {:.2} ms wall, {:.2} ms media thread CPU; \
                 per removal {:.1} us wall, {:.1} us CPU",
                m.streams,
                m.wall_ms,
                m.media_cpu_ms,
                m.wall_ms * 1e3 / m.streams as f64,
                m.media_cpu_ms * 1e3 / m.streams as f64
            )
        })
        .collect();
    if let (Some(c), Some(w)) = (r.cpu_per_removal_ratio, r.wall_per_removal_ratio) {
        out.push(format!("per removal, largest against smallest count: media CPU {c:.2}x, wall {w:.2}x (1.0: independent of the count)"));
    }
    out
}
