//! A flood at live call ports, and what it costs the other calls: the media engine alone
//! (`MediaHandle::start` as the service calls it) with [`PROBES`] probe calls whose far end is
//! a reflector thread (Asterisk's `Echo()` in miniature), and [`FLOODED`] echo calls whose
//! ports [`FLOODED`] sender threads flood from addresses that are not the call's Asterisk
//! address, as fast as they can. Quiet and flooded windows alternate ([`ROUNDS`] of each), so
//! that whatever else the machine does weighs on both sides. Per window: the probe calls'
//! samples (probes back) per second, probes lost, and the round trip's p99 from the engine's
//! own latency deltas; flooded against quiet, in the same process.
//!
//! Then the control: the same senders at sockets nobody reads (the kernel drops what does not
//! fit), the probe calls as before. On one machine the senders take CPU from everyone (the
//! reflector, which plays Asterisk, included), which a remote attacker would not: what the
//! call-port flood costs beyond the control is the engine's share.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use rtpvisor_actors::latency::LatencyHistogram;
use rtpvisor_actors::media::{EngineOptions, MediaHandle, MediaSnapshot, StreamSpec};
use rtpvisor_actors::mode::CallMode;
use rtpvisor_actors::probe::PACKET_LEN;

/// Probe calls measured.
pub const PROBES: usize = 20;
/// Flooded call ports, one sender each.
pub const FLOODED: usize = 2;
/// Quiet and flooded windows, alternated.
pub const ROUNDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(2);
/// Flushes in the first part of a window carry samples of the window before: not counted.
const SETTLE: Duration = Duration::from_millis(300);

/// One side (quiet or flooded), all its windows together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FloodSide {
    pub seconds: f64,
    /// Probes back per call per second.
    pub samples_per_call_s: f64,
    pub probes_lost: u64,
    /// Round trip, from the engine's latency deltas.
    pub rtt_p99_ms: f64,
    pub rtt_samples: u64,
    /// Flood datagrams sent per second, and read (and dropped) by the engine.
    pub flood_sent_per_s: f64,
    pub flood_read_per_s: f64,
}

/// Where the senders aim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Target {
    /// Live calls' ports, read by the engine.
    CallPorts,
    /// Sockets nobody reads: the control.
    Unread,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodRun {
    pub target: Target,
    pub quiet: FloodSide,
    pub flooded: FloodSide,
    /// Samples per call per second, flooded / quiet.
    pub samples_ratio: f64,
    pub p99_ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FloodResult {
    /// At live call ports.
    pub calls: FloodRun,
    /// At sockets nobody reads.
    pub control: FloodRun,
}

fn spec(id: u64, mode: CallMode, socket: UdpSocket, peer: SocketAddr) -> StreamSpec {
    StreamSpec {
        id,
        mode,
        socket,
        peer,
        late_threshold: Duration::from_millis(20),
        probe_timeout: Duration::from_millis(500),
        no_media_timeout: Duration::ZERO,
    }
}

/// Sends back whatever reaches `sock`, until `stop`.
fn reflector(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::io::Result<thread::JoinHandle<()>> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    thread::Builder::new().name("bench-reflector".into()).spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })
}

/// Floods `to` while `on`, as fast as it can, until `stop`; counts what it sent.
fn flooder(to: SocketAddr, on: Arc<AtomicBool>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> std::io::Result<thread::JoinHandle<()>> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(to)?;
    thread::Builder::new().name("bench-flood".into()).spawn(move || {
        let junk = [0x5a; PACKET_LEN];
        while !stop.load(Ordering::Relaxed) {
            if !on.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            let mut n = 0;
            for _ in 0..64 {
                n += u64::from(sock.send(&junk).is_ok());
            }
            sent.fetch_add(n, Ordering::Relaxed);
        }
    })
}

/// What a window reads from a snapshot: probes back, probes lost, flood datagrams the engine
/// read.
fn counts(s: &MediaSnapshot) -> (u64, u64, u64) {
    s.streams.iter().fold((0, 0, 0), |(back, lost, read), r| match &r.probe {
        Some(p) => (back + p.returned, lost + p.lost, read),
        None => (back, lost, read + r.dropped_foreign),
    })
}

pub fn run() -> anyhow::Result<FloodResult> {
    Ok(FloodResult { calls: run_one(Target::CallPorts)?, control: run_one(Target::Unread)? })
}

fn run_one(target: Target) -> anyhow::Result<FloodRun> {
    let flushes: Arc<Mutex<Vec<(Instant, LatencyHistogram)>>> = Arc::default();
    let sink_flushes = Arc::clone(&flushes);
    let (media, join) = MediaHandle::start(
        Box::new(move |f| {
            if let Some(h) = f.latency_delta[CallMode::Probe.index()].clone() {
                sink_flushes.lock().expect("not poisoned").push((Instant::now(), h));
            }
        }),
        Box::new(|_, _| {}),
        EngineOptions::default(),
    )
    .context("starting the media engine")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let far = UdpSocket::bind("127.0.0.1:0")?;
    let far_addr = far.local_addr()?;
    let mut threads = vec![reflector(far, Arc::clone(&stop))?];
    for i in 0..PROBES as u64 {
        rt.block_on(media.add(spec(i, CallMode::Probe, UdpSocket::bind("127.0.0.1:0")?, far_addr)))?.context("adding a probe call")?;
        media.start_probing(i)?;
    }
    let on = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let silent_peer = UdpSocket::bind("127.0.0.1:0")?;
    // The control's targets, held open (unread) until the end.
    let mut unread = Vec::new();
    for i in 0..FLOODED as u64 {
        let port = UdpSocket::bind("127.0.0.1:0")?;
        let to = port.local_addr()?;
        match target {
            Target::CallPorts => {
                rt.block_on(media.add(spec(100 + i, CallMode::Echo, port, silent_peer.local_addr()?)))?
                    .context("adding a flooded call")?;
            }
            Target::Unread => unread.push(port),
        }
        threads.push(flooder(to, Arc::clone(&on), Arc::clone(&stop), Arc::clone(&sent))?);
    }
    thread::sleep(Duration::from_millis(500)); // probing under way

    let mut sides = [FloodSide::default(), FloodSide::default()];
    let mut hists = [LatencyHistogram::new(), LatencyHistogram::new()];
    for round in 0..2 * ROUNDS {
        let flooded = round % 2 == 1;
        on.store(flooded, Ordering::Relaxed);
        let s0 = rt.block_on(media.snapshot())?;
        let (t0, sent0) = (Instant::now(), sent.load(Ordering::Relaxed));
        thread::sleep(WINDOW);
        let s1 = rt.block_on(media.snapshot())?;
        let (secs, sent1) = (t0.elapsed().as_secs_f64(), sent.load(Ordering::Relaxed));
        let ((b0, l0, r0), (b1, l1, r1)) = (counts(&s0), counts(&s1));
        let side = &mut sides[usize::from(flooded)];
        side.seconds += secs;
        side.samples_per_call_s += (b1 - b0) as f64; // per second and call below
        side.probes_lost += l1 - l0;
        side.flood_sent_per_s += (sent1 - sent0) as f64;
        side.flood_read_per_s += (r1 - r0) as f64;
        for (at, h) in flushes.lock().expect("not poisoned").drain(..) {
            if at >= t0 + SETTLE {
                hists[usize::from(flooded)].merge(&h);
            }
        }
        eprintln!(
            "   {target:?}: {} window {}: {:.1} samples per call per second, {} lost, {:.0} flood datagrams/s sent, {:.0}/s read",
            if flooded { "flooded" } else { "quiet" },
            round / 2 + 1,
            (b1 - b0) as f64 / secs / PROBES as f64,
            l1 - l0,
            (sent1 - sent0) as f64 / secs,
            (r1 - r0) as f64 / secs,
        );
    }
    on.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    media.shutdown();
    let _ = join.join();

    for (side, h) in sides.iter_mut().zip(&hists) {
        side.samples_per_call_s /= side.seconds * PROBES as f64;
        side.flood_sent_per_s /= side.seconds;
        side.flood_read_per_s /= side.seconds;
        side.rtt_p99_ms = h.value_at_quantile_us(0.99) as f64 / 1000.0;
        side.rtt_samples = h.count();
    }
    drop(unread);
    let [quiet, flooded] = sides;
    Ok(FloodRun {
        target,
        samples_ratio: flooded.samples_per_call_s / quiet.samples_per_call_s.max(1e-9),
        p99_ratio: flooded.rtt_p99_ms / quiet.rtt_p99_ms.max(1e-9),
        quiet,
        flooded,
    })
}

/// The lines printed and written for it.
pub fn lines(r: &FloodResult) -> Vec<String> {
    let side = |name: &str, s: &FloodSide| {
        format!(
            "{name}: {:.1} probe samples per call per second, {} lost, RTT p99 {:.3} ms ({} samples); flood {:.0} datagrams/s sent, {:.0}/s read by the engine",
            s.samples_per_call_s, s.probes_lost, s.rtt_p99_ms, s.rtt_samples, s.flood_sent_per_s, s.flood_read_per_s
        )
    };
    let mut out = Vec::new();
    for (what, run) in [("at live call ports", &r.calls), ("control, at sockets nobody reads", &r.control)] {
        out.push(side(&format!("{what}, quiet"), &run.quiet));
        out.push(side(&format!("{what}, flooded"), &run.flooded));
        out.push(format!("{what}: flooded / quiet: probe samples {:.3}x, RTT p99 {:.2}x", run.samples_ratio, run.p99_ratio));
    }
    out
}
