#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: the shared echo stands on its own, beside the media
//! engine that serves the calls' own sockets.
//!
//! 1. Its workers killed (`POST /faults/echo/panic`) while probe, echo and shared-echo calls
//!    run: the EchoActor restarts them in place, the echo answers again within 1 s, the
//!    restarts are counted in `/actors` and Prometheus, and no call loses a probe or a packet.
//! 2. The converse: the media engine stalled (`POST /faults/media/stall`), the echo keeps
//!    answering until the process escalates (exit 70).
//! 3. A bounded loopback flood at the echo port (a sender per echo worker) leaves the calls
//!    their full media: probe calls keep at least 95 % of their quiet sample rate and lose
//!    nothing, echo calls keep reflecting without loss, and the probes' p99 over the flooded
//!    windows (from the service's latency buckets, as Prometheus computes it) is less than 2x
//!    their p99 over the quiet windows that alternate with them.
//!
//! Own Stasis app and port range per test; touches only its own channels.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn start(name: &str, app: &str, ports: &str, extra: &[(&str, &str)]) -> Rtpvisor {
    let mut env: Vec<(String, String)> = vec![
        ("RTPVISOR_ARI_APP".into(), app.into()),
        ("RTPVISOR_FAULT_INJECTION".into(), "true".into()),
        ("RTPVISOR_ECHO_WORKERS".into(), "2".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Rtpvisor::start(name, Options { rtp_ports: ports.into(), env })
}

fn calls(svc: &Rtpvisor) -> Vec<Value> {
    svc.get("/channels").as_array().cloned().unwrap_or_default()
}

fn call(svc: &Rtpvisor, id: &str) -> Value {
    calls(svc).into_iter().find(|c| c["channel_id"] == id).unwrap_or_else(|| panic!("call {id} is gone"))
}

/// Whether call `id` is listed and has more than `n` at `path` (false before it is set up).
fn above(svc: &Rtpvisor, id: &str, path: &[&str], n: u64) -> bool {
    calls(svc).iter().find(|c| c["channel_id"] == id).is_some_and(|c| {
        path.iter().fold(c, |v, k| &v[*k]).as_u64().is_some_and(|v| v > n)
    })
}

fn probe_of(svc: &Rtpvisor, id: &str) -> (u64, u64) {
    let p = &call(svc, id)["media"]["probe"];
    (p["returned"].as_u64().unwrap_or(0), p["lost"].as_u64().unwrap_or(0))
}

/// An echo call's (packets reflected, packets lost from sequence gaps).
fn echo_of(svc: &Rtpvisor, id: &str) -> (u64, u64) {
    let m = &call(svc, id)["media"];
    (m["packets_out"].as_u64().unwrap_or(0), m["receive"]["lost"].as_u64().unwrap_or(0))
}

const RETURNED: &[&str] = &["media", "probe", "returned"];
const REFLECTED: &[&str] = &["media", "packets_out"];

fn echo_node(svc: &Rtpvisor) -> Value {
    let root = svc.get("/actors");
    root["children"].as_array().unwrap().iter().find(|n| n["name"] == "echo").cloned().expect("an echo node")
}

/// Asks the echo every 5 ms from its own socket and keeps the time of every answer, for at
/// most `limit`.
struct Pinger {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Instant>>>,
    job: Option<JoinHandle<u64>>,
}

impl Pinger {
    fn start(to: SocketAddr, limit: Duration) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), answers.clone());
        let job = std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let until = Instant::now() + limit;
            let mut buf = [0u8; 64];
            let mut sent = 0;
            while !s.load(Ordering::Relaxed) && Instant::now() < until {
                if sock.send_to(b"are you there", to).is_ok() {
                    sent += 1;
                }
                while let Ok((13, _)) = sock.recv_from(&mut buf) {
                    a.lock().unwrap().push(Instant::now());
                }
            }
            sent
        });
        Pinger { stop, answers, job: Some(job) }
    }

    fn answered_after(&self, t: Instant) -> Option<Instant> {
        self.answers.lock().unwrap().iter().copied().find(|&a| a > t)
    }

    fn last_answer(&self) -> Option<Instant> {
        self.answers.lock().unwrap().last().copied()
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.job.take().map(|j| j.join().unwrap()).unwrap_or(0)
    }
}

fn hang_up(svc: &Rtpvisor, ids: &[String]) {
    for id in ids {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("our calls ended", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
}

#[test]
fn killed_echo_workers_are_restarted_in_place_and_calls_lose_nothing() {
    ensure_asterisk();
    let svc = start("e2e_echo_standalone_restart", "rtpvisor-echo-restart", "10840-10859", &[]);
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", svc.echo_port).parse().unwrap();
    let probes: Vec<String> =
        (0..2).map(|i| originate_in("rtpvisor-echo-restart", "echo", "probe", &format!("er-probe-{i}"))).collect();
    let echo = originate_in("rtpvisor-echo-restart", "milliwatt", "echo", "er-echo");
    let shared = originate_in("rtpvisor-echo-restart", "milliwatt", "shared-echo", "er-shared");
    wait_until("probes return, echo and shared-echo media flow", Duration::from_secs(20), || {
        probes.iter().all(|p| above(&svc, p, RETURNED, 10))
            && above(&svc, &echo, REFLECTED, 10)
            && above(&svc, &shared, &["shared_echo", "packets"], 10)
    });
    let node = echo_node(&svc);
    assert_eq!(node["restarts"], 0);
    assert_eq!(node["children"].as_array().unwrap().len(), 2, "two workers: {node}");
    let probes0: Vec<(u64, u64)> = probes.iter().map(|p| probe_of(&svc, p)).collect();
    let echo0 = echo_of(&svc, &echo);

    let pinger = Pinger::start(echo_addr, Duration::from_secs(15));
    wait_until("the echo answers the pinger", Duration::from_secs(2), || pinger.last_answer().is_some());
    let t_fault = Instant::now();
    assert_eq!(svc.post("/faults/echo/panic").0, 202);
    wait_until("both workers restarted", Duration::from_secs(2), || echo_node(&svc)["restarts"] == 2);
    let back = loop {
        if let Some(t) = pinger.answered_after(t_fault + Duration::from_millis(20)) {
            break t;
        }
        assert!(t_fault.elapsed() < Duration::from_secs(3), "the echo did not answer again");
        std::thread::sleep(Duration::from_millis(10));
    };
    let gap = back - t_fault;
    eprintln!("echo answered again {} ms after the panic", gap.as_millis());
    assert!(gap <= Duration::from_secs(1), "answered again within 1 s: {gap:?}");

    // Let the calls run on, then check nothing was lost.
    std::thread::sleep(Duration::from_secs(2));
    let node = echo_node(&svc);
    assert_eq!(node["state"], "running", "{node}");
    assert!(node["last_failure"]["reason"].as_str().unwrap().contains("injected fault: panic in an echo worker"), "{node}");
    for w in node["children"].as_array().unwrap() {
        assert_eq!((w["state"].as_str(), w["restarts"].as_u64()), (Some("running"), Some(1)), "{w}");
    }
    for (p, (r0, l0)) in probes.iter().zip(&probes0) {
        let (r, l) = probe_of(&svc, p);
        assert_eq!(l, *l0, "{p}: no probe lost");
        assert!(r >= r0 + 100, "{p}: probes went on ({r0} -> {r})");
    }
    let (e, lost) = echo_of(&svc, &echo);
    assert_eq!(lost, echo0.1, "the echo call lost nothing");
    assert!(e >= echo0.0 + 100, "the echo call reflected on ({} -> {e})", echo0.0);
    let shared_before = call(&svc, &shared)["shared_echo"]["packets"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(call(&svc, &shared)["shared_echo"]["packets"].as_u64().unwrap() > shared_before, "the shared-echo call is reflected again");
    assert_eq!(svc.get_status("/ready").0, 200);
    assert_eq!(svc.metrics()["active_channels"], 4);

    let text = svc.get_text("/metrics/prometheus");
    for line in ["rtpvisor_actor_restarts_total{actor=\"echo\"} 2", "rtpvisor_echo_workers{state=\"running\"} 2"] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }
    pinger.stop();
    let mut ids = probes.clone();
    ids.extend([echo, shared]);
    hang_up(&svc, &ids);
}

#[test]
fn the_echo_keeps_answering_while_the_media_engine_is_stalled() {
    ensure_asterisk();
    let mut svc = start(
        "e2e_echo_standalone_media_stall",
        "rtpvisor-echo-stall",
        "10860-10869",
        &[("RTPVISOR_MEDIA_STALL_MS", "1500")],
    );
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", svc.echo_port).parse().unwrap();
    let pinger = Pinger::start(echo_addr, Duration::from_secs(10));
    wait_until("the echo answers the pinger", Duration::from_secs(2), || pinger.last_answer().is_some());
    let t_stall = Instant::now();
    assert_eq!(svc.post("/faults/media/stall").0, 202);
    let code = svc.wait_exit(Duration::from_secs(5));
    let t_exit = Instant::now();
    assert_eq!(code, Some(70), "a stalled media engine escalates");
    let last = pinger.last_answer().expect("answers");
    pinger.stop();
    eprintln!(
        "media engine stalled at 0 ms, process exited at {} ms, last echo answer at {} ms",
        (t_exit - t_stall).as_millis(),
        last.saturating_duration_since(t_stall).as_millis()
    );
    assert!(t_exit - t_stall >= Duration::from_millis(1400), "the watchdog waited for the stall bound");
    // The echo answered until the process went: its last answer within 150 ms of the exit.
    assert!(last > t_stall + Duration::from_millis(1300), "the echo kept answering through the stall");
    assert!(t_exit - last < Duration::from_millis(150), "last answer {:?} before the exit", t_exit - last);
}

/// Senders that flood `to` with 172-byte datagrams from a socket each, as fast as they can,
/// until stopped, each at most `max` datagrams and `limit` long. On loopback the kernel's
/// delivery of each datagram is charged to its sender's thread too.
struct Flood {
    stop: Arc<AtomicBool>,
    started: Instant,
    senders: Vec<JoinHandle<u64>>,
}

impl Flood {
    fn start(to: SocketAddr, senders: usize, max: u64, limit: Duration) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..senders)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
                    sock.connect(to).unwrap();
                    let payload = [0x5au8; 172];
                    let t0 = Instant::now();
                    let mut sent = 0u64;
                    while sent < max && t0.elapsed() < limit && !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            if sock.send(&payload).is_ok() {
                                sent += 1;
                            }
                        }
                    }
                    sent
                })
            })
            .collect();
        Flood { stop, started: Instant::now(), senders }
    }

    /// Stops every sender; the datagrams they sent, and for how long.
    fn stop(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.senders.into_iter().map(|j| j.join().unwrap()).sum();
        (sent, self.started.elapsed())
    }
}

/// The counters a measurement adds up: per probe call (returned, lost), per echo call
/// (reflected, lost), the probe mode's latency samples per bucket, and the datagrams the echo
/// read. A reading holds their values at one moment, a window their growth over its time.
#[derive(Default)]
struct Counts {
    probes: Vec<(u64, u64)>,
    echoes: Vec<(u64, u64)>,
    buckets: Vec<u64>,
    echo_read: u64,
}

/// The counters at one moment.
struct Reading {
    at: Instant,
    counts: Counts,
}

/// What the calls did over some windows of time (the sum of their growth).
#[derive(Default)]
struct Window {
    secs: f64,
    counts: Counts,
}

fn read(svc: &Rtpvisor, probes: &[String], echoes: &[String]) -> Reading {
    let h = svc.get("/metrics/latency_histogram");
    let e = &svc.metrics()["echo"];
    Reading {
        at: Instant::now(),
        counts: Counts {
            probes: probes.iter().map(|p| probe_of(svc, p)).collect(),
            echoes: echoes.iter().map(|e| echo_of(svc, e)).collect(),
            buckets: h["probe"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect(),
            echo_read: e["packets"].as_u64().unwrap()
                + ["not_allowed", "rate_limited", "too_large"].iter().map(|r| e["dropped"][r].as_u64().unwrap()).sum::<u64>(),
        },
    }
}

impl Counts {
    /// Adds the growth from `a` to `b`.
    fn add_growth(&mut self, a: &Counts, b: &Counts) {
        let grow = |sum: &mut Vec<(u64, u64)>, x: &[(u64, u64)], y: &[(u64, u64)]| {
            sum.resize(x.len(), (0, 0));
            for (s, (x, y)) in sum.iter_mut().zip(x.iter().zip(y)) {
                *s = (s.0 + y.0 - x.0, s.1 + y.1 - x.1);
            }
        };
        grow(&mut self.probes, &a.probes, &b.probes);
        grow(&mut self.echoes, &a.echoes, &b.echoes);
        self.buckets.resize(a.buckets.len(), 0);
        for (s, (x, y)) in self.buckets.iter_mut().zip(a.buckets.iter().zip(&b.buckets)) {
            *s += y - x;
        }
        self.echo_read += b.echo_read - a.echo_read;
    }
}

impl Window {
    /// Adds what happened between readings `a` and `b`.
    fn add(&mut self, a: &Reading, b: &Reading) {
        self.secs += (b.at - a.at).as_secs_f64();
        self.counts.add_growth(&a.counts, &b.counts);
    }

    /// Probe samples per second per call, and echo packets per second per call.
    fn rates(&self) -> (Vec<f64>, Vec<f64>) {
        let per = |x: &[(u64, u64)]| x.iter().map(|x| x.0 as f64 / self.secs).collect();
        (per(&self.counts.probes), per(&self.counts.echoes))
    }

    /// The `q` quantile of the window's probe samples, in ms, interpolated within its bucket as
    /// Prometheus's `histogram_quantile` does (infinite past the last bound); and the samples.
    fn quantile(&self, q: f64, bounds_ms: &[f64]) -> (f64, u64) {
        let total: u64 = self.counts.buckets.iter().sum();
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = bounds_ms.get(i) else { return (f64::INFINITY, total) };
                let lower = if i == 0 { 0.0 } else { bounds_ms[i - 1] };
                return (lower + (upper - lower) * (rank - below as f64) / n as f64, total);
            }
            below += n;
        }
        (0.0, total)
    }
}

/// Flood senders: as many as the echo has workers in these tests, so every worker (and so
/// every core of a 2-core machine) is kept busy.
const FLOODERS: usize = 2;
/// Quiet and flooded windows alternate, so that what else the machine does weighs on both.
const ROUNDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(2);
/// After a flood starts or stops, before a window is measured.
const SETTLE: Duration = Duration::from_millis(300);

#[test]
fn a_flood_at_the_echo_leaves_calls_their_full_media() {
    ensure_asterisk();
    const APP: &str = "rtpvisor-echo-flood";
    let svc = start("e2e_echo_standalone_flood", APP, "10870-10889", &[]);
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", svc.echo_port).parse().unwrap();
    let probes: Vec<String> = (0..6).map(|i| originate_in(APP, "echo", "probe", &format!("ef-probe-{i}"))).collect();
    let echoes: Vec<String> = (0..2).map(|i| originate_in(APP, "milliwatt", "echo", &format!("ef-echo-{i}"))).collect();
    wait_until("probes return and echo media flows", Duration::from_secs(20), || {
        probes.iter().all(|p| above(&svc, p, RETURNED, 10)) && echoes.iter().all(|e| above(&svc, e, REFLECTED, 10))
    });
    let bounds_ms: Vec<f64> =
        svc.get("/metrics/latency_histogram")["bounds_ms"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    let first = read(&svc, &probes, &echoes);

    // The control: the same senders at a socket nobody reads, so the machine's cores are as
    // busy as under the flood but the echo does nothing. What the flood costs the calls beyond
    // the control is the echo's share; what both cost is the senders' own CPU on this machine.
    let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let (mut quiet, mut control, mut flooded, mut sent, mut flood_time) =
        (Window::default(), Window::default(), Window::default(), 0, Duration::ZERO);
    for _ in 0..ROUNDS {
        let q0 = read(&svc, &probes, &echoes);
        std::thread::sleep(WINDOW);
        quiet.add(&q0, &read(&svc, &probes, &echoes));
        let senders = Flood::start(sink_addr, FLOODERS, 6_000_000, WINDOW + SETTLE * 2 + Duration::from_secs(2));
        std::thread::sleep(SETTLE);
        let c0 = read(&svc, &probes, &echoes);
        std::thread::sleep(WINDOW);
        control.add(&c0, &read(&svc, &probes, &echoes));
        senders.stop();
        std::thread::sleep(SETTLE);
        // Each sender: at most 6 million datagrams and 5 s.
        let flood = Flood::start(echo_addr, FLOODERS, 6_000_000, WINDOW + SETTLE * 2 + Duration::from_secs(2));
        std::thread::sleep(SETTLE);
        let f0 = read(&svc, &probes, &echoes);
        std::thread::sleep(WINDOW);
        flooded.add(&f0, &read(&svc, &probes, &echoes));
        let (n, took) = flood.stop();
        (sent, flood_time) = (sent + n, flood_time + took);
        std::thread::sleep(SETTLE);
    }
    let last = read(&svc, &probes, &echoes);

    let (quiet_p99, quiet_n) = quiet.quantile(0.99, &bounds_ms);
    let (flood_p99, flood_n) = flooded.quantile(0.99, &bounds_ms);
    let (control_p99, _) = control.quantile(0.99, &bounds_ms);
    let ((q_probe, q_echo), (f_probe, f_echo)) = (quiet.rates(), flooded.rates());
    eprintln!(
        "flood: {FLOODERS} senders, {sent} datagrams over {ROUNDS} windows of {WINDOW:?} ({:.0}/s), the echo read {} of them; \
         probe samples/s per call quiet {q_probe:.1?} flood {f_probe:.1?}; echo packets/s quiet {q_echo:.1?} flood {f_echo:.1?}; \
         probe p99 quiet {quiet_p99:.3} ms ({quiet_n} samples), control (senders at an unread socket) {control_p99:.3} ms, \
         flood {flood_p99:.3} ms ({flood_n} samples): {:.2}x quiet, {:.2}x control",
        sent as f64 / flood_time.as_secs_f64(),
        flooded.counts.echo_read,
        flood_p99 / quiet_p99,
        flood_p99 / control_p99,
    );
    assert!(sent >= 1_000_000, "a real flood: {sent}");
    for (q, f) in q_probe.iter().zip(&f_probe) {
        assert!(f >= &(0.95 * q), "probe sample rate under the flood {f:.1}/s, quiet {q:.1}/s");
    }
    for (q, f) in q_echo.iter().zip(&f_echo) {
        assert!(f >= &(0.95 * q), "echo call rate under the flood {f:.1}/s, quiet {q:.1}/s");
    }
    for (p, (a, b)) in probes.iter().zip(first.counts.probes.iter().zip(&last.counts.probes)) {
        assert_eq!(a.1, b.1, "{p}: no probe lost");
    }
    for (e, (a, b)) in echoes.iter().zip(first.counts.echoes.iter().zip(&last.counts.echoes)) {
        assert_eq!(a.1, b.1, "{e}: no echo packet lost");
    }
    // Starved calls (the echo sharing their loop) showed a p99 of 70-80 ms under such a flood.
    // The bound is the echo's own share: within 2x of the quiet p99, or of the control's when
    // the senders alone already cost the machine more (a loaded 2-core machine).
    let base = quiet_p99.max(control_p99);
    assert!(
        flood_p99 < 2.0 * base,
        "probe p99 {flood_p99:.3} ms under the flood, {quiet_p99:.3} ms quiet, {control_p99:.3} ms with the senders at an unread socket"
    );
    assert_eq!(svc.get_status("/ready").0, 200);
    let mut ids = probes.clone();
    ids.extend(echoes);
    hang_up(&svc, &ids);
}
