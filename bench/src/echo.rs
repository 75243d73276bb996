//! The echo benchmark: the shared echo (the EchoActor's workers, started through
//! `Service::start` with the echo on 127.0.0.1:0) against a minimal blocking
//! `std::net::UdpSocket` recv/send loop, each at low load and at saturation, one after the
//! other with the same client. The echo runs with one worker twice: with its limits off (every
//! source, no rate, any size: the worker skips the checks), and on as a deployment has them (an
//! allow-list that holds the client's 127.0.0.1, a size limit of 1500, a per-source rate far
//! above what one client socket sends, so nothing is dropped and only the checks' cost shows);
//! and with limits off on one worker per core (`rtpvisor-echo-cores`: the client's sockets
//! spread over the workers' sockets by SO_REUSEPORT), which on a small machine shares the
//! cores with the client:
//! - low load: a paced stream (default 1,000 echoes/s from 10 sockets);
//! - saturation: closed loop, K sockets each keeping W packets in flight (a reflection comes
//!   back, the next packet goes out), so the echo is never idle.
//!
//! Round trips are timed like the channel runs: send time in the payload, kernel receive
//! stamp on the way back.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;

use rtpvisor_actors::echo_guard::GuardSettings;
use rtpvisor_actors::probe::PACKET_LEN;
use rtpvisor_actors::rtp::{write_header, RtpHeader, HEADER_LEN};
use rtpvisor_actors::sys::MAX_DATAGRAM;

use crate::baselines;
use crate::fake_ari::FakeAri;
use crate::generator::thread_cpu_s;
use crate::report::{LatencyStats, ThreadCpu};
use crate::service_run::{self, ServiceUnderTest, SERVICE_THREADS};
use crate::sys;

/// A call's packet size (`PACKET_LEN`); where our fields sit, right after the RTP header.
const AT_SENT: usize = HEADER_LEN;
const AT_FLAGS: usize = AT_SENT + 8;
const MEASURED: u8 = 1;

/// How the client loads the echo.
#[derive(Debug, Clone, Copy, Serialize)]
pub enum Load {
    /// `rate` echoes per second in total, spread over `sockets`.
    Paced { rate: u32, sockets: usize },
    /// `sockets` x `window` packets always in flight.
    Saturate { sockets: usize, window: usize },
}

#[derive(Debug, Clone, Copy)]
pub struct EchoOpts {
    pub warmup: Duration,
    pub measure: Duration,
    pub low: Load,
    pub saturate: Load,
}

/// One echo under one load.
#[derive(Debug, Clone, Serialize)]
pub struct EchoResult {
    pub system: &'static str,
    pub load: Load,
    pub echoes_per_s: f64,
    pub rtt: LatencyStats,
    pub sent: u64,
    pub received: u64,
    /// Closed loop only: times the client found every socket silent for 50 ms and refilled
    /// its windows (a sign of drops).
    pub refills: u64,
    pub echo_cpu_cores: f64,
    /// The echo's CPU per echo, microseconds.
    pub echo_cpu_us_per_echo: f64,
    pub client_cpu_cores: f64,
    pub threads: Vec<ThreadCpu>,
    /// What other processes (and the hypervisor) took from the machine meanwhile.
    pub neighbours: sys::Neighbours,
}

/// The limits of the "on" run: the client's sources allowed (and a few networks besides, as a
/// deployment lists), 1500 bytes, and a per-source rate no client socket reaches (each sends
/// well under 100,000/s), so every datagram goes through every check and none is dropped.
fn limits_on() -> GuardSettings {
    GuardSettings {
        allow: "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.1/32".parse().expect("constant CIDRs"),
        rate_pps: 10_000_000,
        burst: 10_000_000,
        max_bytes: 1500,
    }
}

/// One echo worker per core, as `echo.workers` defaults to.
pub fn cores() -> u32 {
    thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
}

struct ClientResult {
    rtt: Histogram<u64>,
    sent: u64,
    received: u64,
    refills: u64,
    cpu_s: f64,
}

/// Runs of the echo with limits off and on, alternated, at saturation: on a shared machine
/// neighbours come and go within seconds, so one pair says little; the medians of alternated
/// runs see the same neighbours.
pub const LIMIT_ROUNDS: usize = 3;

pub fn run_all(opts: EchoOpts) -> anyhow::Result<Vec<EchoResult>> {
    let mut out = Vec::new();
    for load in [opts.low, opts.saturate] {
        let rounds = if matches!(load, Load::Saturate { .. }) { LIMIT_ROUNDS } else { 1 };
        let mut systems: Vec<&'static str> = Vec::new();
        for _ in 0..rounds {
            systems.extend(["rtpvisor-echo", "rtpvisor-echo-limits"]);
        }
        systems.extend(["rtpvisor-echo-cores", "blocking-loop"]);
        for system in systems {
            eprintln!("== echo: {system}, {load:?}");
            let r = run_one(system, load, opts)?;
            eprintln!(
                "   {:.0} echoes/s  p50 {:.1} us  p99 {:.1} us  echo cpu {:.2}  client cpu {:.2}",
                r.echoes_per_s, r.rtt.p50_us, r.rtt.p99_us, r.echo_cpu_cores, r.client_cpu_cores
            );
            out.push(r);
            thread::sleep(Duration::from_millis(300));
        }
    }
    Ok(out)
}

fn run_one(system: &'static str, load: Load, opts: EchoOpts) -> anyhow::Result<EchoResult> {
    enum Sut {
        Service(ServiceUnderTest, FakeAri),
        Blocking(baselines::EchoBaseline),
    }
    let (sut, target, names): (Sut, SocketAddr, &[&str]) = if system.starts_with("rtpvisor-echo") {
        let guard = if system == "rtpvisor-echo-limits" { limits_on() } else { GuardSettings::off(MAX_DATAGRAM) };
        let workers = if system == "rtpvisor-echo-cores" { cores() } else { 1 };
        let (svc, ari) = service_run::start_with_fake_ari_and_echo(crate::channels::RTP_PORTS, guard, workers)?;
        let addr = svc.echo_addr;
        (Sut::Service(svc, ari), addr, SERVICE_THREADS)
    } else {
        let b = baselines::start_blocking_echo()?;
        let addr = b.addrs[0];
        (Sut::Blocking(b), addr, &["blocking-echo"])
    };
    let client = Client::new(target, load)?;
    let t0 = Instant::now() + Duration::from_millis(20);
    let join = thread::Builder::new().name("bench-echo-cli".into()).spawn(move || client.run(t0, opts.warmup, opts.measure))?;
    thread::sleep((t0 + opts.warmup).saturating_duration_since(Instant::now()));
    let cpu0 = sys::ThreadTimes::now();
    let machine0 = sys::MachineCpu::now();
    thread::sleep((t0 + opts.warmup + opts.measure).saturating_duration_since(Instant::now()));
    let neighbours = sys::MachineCpu::now().since(&machine0, opts.measure.as_secs_f64());
    let cpu1 = sys::ThreadTimes::now();
    let c = join.join().map_err(|_| anyhow!("the echo client panicked"))??;
    match sut {
        Sut::Service(svc, ari) => {
            svc.stop();
            ari.stop();
        }
        Sut::Blocking(b) => b.stop(),
    }
    let window = opts.measure.as_secs_f64();
    let threads: Vec<ThreadCpu> =
        cpu1.since(&cpu0).into_iter().map(|(name, secs)| ThreadCpu { cores: secs / window, name }).collect();
    let echo_cpu_cores = threads.iter().filter(|t| names.iter().any(|n| t.name.starts_with(n))).map(|t| t.cores).sum();
    if c.received == 0 {
        bail!("{system}: nothing came back");
    }
    Ok(EchoResult {
        system,
        load,
        echoes_per_s: c.received as f64 / window,
        rtt: LatencyStats::from_ns(&c.rtt),
        sent: c.sent,
        received: c.received,
        refills: c.refills,
        echo_cpu_cores,
        echo_cpu_us_per_echo: echo_cpu_cores * 1e6 / (c.received as f64 / window).max(1.0),
        client_cpu_cores: c.cpu_s / (opts.warmup + opts.measure).as_secs_f64(),
        threads,
        neighbours,
    })
}

struct Client {
    socks: Vec<mio::net::UdpSocket>,
    poll: Poll,
    load: Load,
    buf: [u8; 2048],
    pkt: [u8; PACKET_LEN],
    cmsg: Vec<u8>,
    res: ClientResult,
}

impl Client {
    fn new(target: SocketAddr, load: Load) -> io::Result<Self> {
        let k = match load {
            Load::Paced { sockets, .. } | Load::Saturate { sockets, .. } => sockets.max(1),
        };
        let poll = Poll::new()?;
        let mut socks = Vec::with_capacity(k);
        for i in 0..k {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            s.connect(target)?;
            sys::enable_rx_timestamps(&s)?;
            let mut m = mio::net::UdpSocket::from_std(s);
            poll.registry().register(&mut m, Token(i), Interest::READABLE)?;
            socks.push(m);
        }
        let mut pkt = [0u8; PACKET_LEN];
        write_header(&mut pkt, &RtpHeader::pcmu(0, 0, 0)).expect("a packet has room for its header");
        Ok(Client {
            socks,
            poll,
            load,
            buf: [0; 2048],
            pkt,
            cmsg: sys::cmsg_buffer(),
            res: ClientResult {
                rtt: Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("constant bounds"),
                sent: 0,
                received: 0,
                refills: 0,
                cpu_s: 0.0,
            },
        })
    }

    fn run(mut self, t0: Instant, warmup: Duration, measure: Duration) -> io::Result<ClientResult> {
        sys::fine_timer_slack();
        let cpu0 = thread_cpu_s();
        thread::sleep(t0.saturating_duration_since(Instant::now()));
        let (m0, m1) = (t0 + warmup, t0 + warmup + measure);
        let stop = m1 + Duration::from_millis(200);
        let mut events = Events::with_capacity(1024);
        match self.load {
            Load::Saturate { window, .. } => {
                for s in 0..self.socks.len() {
                    for _ in 0..window {
                        self.send(s, m0, m1);
                    }
                }
                let mut last_rx = Instant::now();
                // Bounded by `stop`.
                while Instant::now() < stop {
                    let got = self.drain(&mut events, Duration::from_millis(10), true, m0, m1)?;
                    let now = Instant::now();
                    if got > 0 {
                        last_rx = now;
                    } else if now < m1 && now - last_rx > Duration::from_millis(50) {
                        self.res.refills += 1;
                        for s in 0..self.socks.len() {
                            for _ in 0..window {
                                self.send(s, m0, m1);
                            }
                        }
                        last_rx = now;
                    }
                }
            }
            Load::Paced { rate, .. } => {
                let k = self.socks.len() as u64;
                let interval_ns = 1_000_000_000 / u64::from(rate.max(1));
                let mut g: u64 = 0;
                while Instant::now() < stop {
                    let now = Instant::now();
                    while now < m1 && t0 + Duration::from_nanos(g * interval_ns) <= now {
                        self.send((g % k) as usize, m0, m1);
                        g += 1;
                    }
                    self.drain(&mut events, Duration::ZERO, false, m0, m1)?;
                    let next = t0 + Duration::from_nanos(g * interval_ns);
                    let wait = next.saturating_duration_since(Instant::now()).min(Duration::from_millis(5));
                    if !wait.is_zero() {
                        thread::sleep(wait);
                    }
                }
            }
        }
        self.res.cpu_s = thread_cpu_s() - cpu0;
        Ok(self.res)
    }

    fn send(&mut self, s: usize, m0: Instant, m1: Instant) {
        let now = Instant::now();
        if now >= m1 {
            return;
        }
        self.pkt[AT_FLAGS] = u8::from(now >= m0) * MEASURED;
        self.pkt[AT_SENT..AT_SENT + 8].copy_from_slice(&sys::realtime_ns().to_le_bytes());
        if self.socks[s].send(&self.pkt).is_ok() {
            self.res.sent += 1;
        }
    }

    /// Reads what came back; in closed loop each reflection sends the next packet.
    fn drain(&mut self, events: &mut Events, timeout: Duration, refill: bool, m0: Instant, m1: Instant) -> io::Result<u64> {
        let mut got = 0;
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        for ev in events.iter() {
            let s = ev.token().0;
            loop {
                let (len, stamp) = match sys::recv_stamped(&self.socks[s], &mut self.buf, &mut self.cmsg) {
                    Ok(v) => v,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                got += 1;
                if len == PACKET_LEN && self.buf[AT_FLAGS] & MEASURED != 0 {
                    let sent = u64::from_le_bytes(self.buf[AT_SENT..AT_SENT + 8].try_into().unwrap_or_default());
                    let back = stamp.unwrap_or_else(sys::realtime_ns);
                    self.res.received += 1;
                    let _ = self.res.rtt.record(back.saturating_sub(sent).clamp(1, 10_000_000_000));
                }
                if refill {
                    self.send(s, m0, m1);
                }
            }
        }
        Ok(got)
    }
}
