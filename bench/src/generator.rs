//! The load generator: plays "the Asterisk side" of N channels. One thread, one mio poll over
//! N UDP sockets (one per channel, so a service that accepts RTP only from its peer's address
//! accepts ours), each sending a 20 ms PCMU RTP stream (50 packets/s) to its channel's port,
//! the channels' send phases spread evenly over the 20 ms. Every packet carries its send time;
//! the reflected copy is stamped by the kernel on arrival (SO_TIMESTAMPNS), so turnaround =
//! kernel arrival − send time, whatever the generator was busy with when it came back.
//!
//! The same generator, with the same pacing, drives every system under test, so its own cost
//! and quirks are the same in each and cancel out in the ratios. It keeps its own cost per
//! packet low: connected sockets (no address per send), and a level-triggered epoll (nix) so
//! one `recvmsg` per reflection suffices (edge-triggered would need a second one that answers
//! EAGAIN to prove the socket empty).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use rtpvisor_actors::probe::{PACKET_LEN, SAMPLES_PER_PACKET};
use rtpvisor_actors::rtp::{write_header, RtpHeader, HEADER_LEN};

use crate::sys;

// A packet is what a call carries, as the service's own probes are: the RTP header and one
// 20 ms PCMU frame (`PACKET_LEN`), the timestamp advancing by `SAMPLES_PER_PACKET`.
/// Where our fields sit in the payload (right after the RTP header).
const AT_SENT: usize = HEADER_LEN;
const AT_CHANNEL: usize = AT_SENT + 8;
const AT_FLAGS: usize = AT_CHANNEL + 4;
const FLAG_MEASURED: u8 = 1;
/// Largest turnaround the histogram tells apart: 10 s (more is recorded as 10 s).
const HIST_MAX_NS: u64 = 10_000_000_000;

/// The timing of one run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Packets per second per channel.
    pub pps: u32,
    /// Sent but not measured: lets the system under test settle (caches, buffers, JIT-free
    /// but not cold).
    pub warmup: Duration,
    /// Packets sent in this window are measured.
    pub measure: Duration,
    /// After the last send, how long we still wait for reflections; later ones count as lost.
    pub grace: Duration,
}

/// N bound sockets and everything the run needs, made before the system under test so that
/// their addresses can be handed to it (the fake ARI reports them as Asterisk's side) and their
/// memory is not counted as its.
pub struct Generator {
    state: State,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct GenResult {
    /// Turnaround of every measured packet that came back, nanoseconds.
    pub turnaround: Histogram<u64>,
    /// How late the generator sent measured packets against their schedule, nanoseconds: its
    /// own pacing quality (bursts it sent after falling behind).
    pub send_lag: Histogram<u64>,
    /// Measured packets the plan called for (all channels x rate x measured window).
    pub planned: u64,
    /// Measured packets sent, and those that came back in time.
    pub sent: u64,
    pub received: u64,
    /// Every packet sent and received, warm-up included.
    pub sent_total: u64,
    pub received_total: u64,
    pub send_errors: u64,
    /// Reflections that came back on another channel's socket, or were not ours.
    pub misrouted: u64,
    /// Received without a kernel timestamp (timed in user space instead).
    pub no_kernel_stamp: u64,
    /// Largest count of measured packets one channel lost.
    pub worst_channel_lost: u64,
    /// CPU seconds of the generator thread over the whole run.
    pub cpu_s: f64,
}

impl Generator {
    /// Binds `n` sockets on 127.0.0.1 (ephemeral ports) and allocates the run's state.
    pub fn bind(n: usize, plan: Plan) -> io::Result<Self> {
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            sys::enable_rx_timestamps(&s)?;
            socks.push(s);
        }
        Ok(Generator { state: State::new(socks, plan)? })
    }

    pub fn addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.state.socks.iter().map(UdpSocket::local_addr).collect()
    }

    /// Starts the generator thread; channel `i` sends to `targets[i]`. Sending starts at `t0`
    /// (give the thread a few milliseconds to get there). The thread ends by itself after
    /// warm-up + measure + grace.
    pub fn start(mut self, targets: &[SocketAddr], t0: Instant) -> io::Result<thread::JoinHandle<GenResult>> {
        assert_eq!(targets.len(), self.state.socks.len(), "one target per channel");
        for (s, t) in self.state.socks.iter().zip(targets) {
            // Connected: the kernel drops anything not from the target, and send needs no
            // address per packet.
            s.connect(*t)?;
        }
        self.state.t0 = t0;
        let state = self.state;
        thread::Builder::new().name("bench-gen".into()).spawn(move || state.run())
    }
}

struct State {
    socks: Vec<UdpSocket>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    plan: Plan,
    t0: Instant,
    sent_measured: Vec<u32>,
    received_measured: Vec<u32>,
    result: GenResult,
    pkt: [u8; PACKET_LEN],
    buf: [u8; 2048],
    cmsg: Vec<u8>,
}

impl State {
    /// Everything the run needs is allocated here, before the thread starts.
    fn new(socks: Vec<UdpSocket>, plan: Plan) -> io::Result<Self> {
        let n = socks.len();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        for (i, s) in socks.iter().enumerate() {
            epoll.add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64)).map_err(io::Error::from)?;
        }
        let hist = || Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant bounds");
        let pkt = [0u8; PACKET_LEN];
        Ok(State {
            socks,
            epoll,
            events: vec![EpollEvent::empty(); 4096],
            plan,
            t0: Instant::now(),
            sent_measured: vec![0; n],
            received_measured: vec![0; n],
            result: GenResult {
                turnaround: hist(),
                send_lag: hist(),
                planned: 0,
                sent: 0,
                received: 0,
                sent_total: 0,
                received_total: 0,
                send_errors: 0,
                misrouted: 0,
                no_kernel_stamp: 0,
                worst_channel_lost: 0,
                cpu_s: 0.0,
            },
            pkt,
            buf: [0; 2048],
            cmsg: sys::cmsg_buffer(),
        })
    }

    fn run(mut self) -> GenResult {
        sys::fine_timer_slack();
        let cpu0 = thread_cpu_s();
        let n = self.socks.len() as u64;
        // Global send order: packet k of channel i is number g = k * n + i, due at
        // t0 + g * (period / n): channel phases spread evenly over the period.
        let period_ns = 1_000_000_000 / u64::from(self.plan.pps.max(1));
        let due = |g: u64| Duration::from_nanos(((g as u128 * period_ns as u128) / n as u128) as u64);
        let send_for = self.plan.warmup + self.plan.measure;
        let measure_from = self.plan.warmup;
        let end_g = (send_for.as_nanos() * n as u128 / period_ns as u128) as u64;
        let stop_at = self.t0 + send_for + self.plan.grace;
        let first_measured = (measure_from.as_nanos() * n as u128).div_ceil(period_ns as u128) as u64;
        self.result.planned = end_g.saturating_sub(first_measured);
        let mut g: u64 = 0;
        // Bounded: the loop ends at stop_at whatever happens.
        loop {
            let now = Instant::now();
            if now >= stop_at {
                break;
            }
            // Send what is due (at most one period's worth per turn, so receives interleave).
            let mut burst = 0;
            // No send after the sending window, even when behind: every measured packet gets
            // the full grace to come back, so a late generator does not fake losses.
            let sending = now < self.t0 + send_for;
            while sending && g < end_g && burst < n {
                let due_at = due(g);
                let since_t0 = now.saturating_duration_since(self.t0);
                if due_at > since_t0 {
                    break;
                }
                self.send(g, n, due_at >= measure_from, since_t0 - due_at);
                g += 1;
                burst += 1;
            }
            self.drain(0);
            // Wait for the next send: long waits in epoll (ms granularity), short ones asleep
            // (the kernel keeps what arrives meanwhile, stamped).
            let next = if sending && g < end_g { self.t0 + due(g) } else { stop_at };
            let wait = next.saturating_duration_since(Instant::now());
            if wait > Duration::from_millis(2) {
                self.drain((wait.as_millis() - 1).min(1000) as u16);
            } else if !wait.is_zero() {
                thread::sleep(wait);
            }
        }
        self.drain(0);
        let mut r = self.result;
        r.worst_channel_lost = self
            .sent_measured
            .iter()
            .zip(&self.received_measured)
            .map(|(s, rx)| u64::from(s.saturating_sub(*rx)))
            .max()
            .unwrap_or(0);
        r.cpu_s = thread_cpu_s() - cpu0;
        r
    }

    fn send(&mut self, g: u64, n: u64, measured: bool, lag: Duration) {
        let ch = (g % n) as usize;
        let k = g / n;
        let p = &mut self.pkt;
        let header = RtpHeader::pcmu(k as u16, (k as u32).wrapping_mul(SAMPLES_PER_PACKET), ch as u32 ^ 0x5eed_0000);
        write_header(p, &header).expect("a packet has room for its header");
        p[AT_CHANNEL..AT_CHANNEL + 4].copy_from_slice(&(ch as u32).to_le_bytes());
        p[AT_FLAGS] = if measured { FLAG_MEASURED } else { 0 };
        p[AT_SENT..AT_SENT + 8].copy_from_slice(&sys::realtime_ns().to_le_bytes());
        match self.socks[ch].send(&self.pkt) {
            Ok(_) => {
                self.result.sent_total += 1;
                if measured {
                    self.result.sent += 1;
                    self.sent_measured[ch] += 1;
                    let _ = self.result.send_lag.record(lag.as_nanos().min(u128::from(HIST_MAX_NS)) as u64);
                }
            }
            Err(_) => self.result.send_errors += 1,
        }
    }

    /// Reads the reflections that have arrived, one per ready socket (level-triggered: a
    /// socket with more queued is reported again next time), waiting up to `timeout_ms` for
    /// the first.
    fn drain(&mut self, timeout_ms: u16) {
        let ready = match self.epoll.wait(&mut self.events, timeout_ms) {
            Ok(n) => n,
            Err(_) => return,
        };
        for e in 0..ready {
            let ch = self.events[e].data() as usize;
            match sys::recv_stamped(&self.socks[ch], &mut self.buf, &mut self.cmsg) {
                Ok((len, stamp)) => self.on_reflection(ch, len, stamp),
                // WouldBlock (raced), or ECONNREFUSED from an ICMP of an earlier send: skip.
                Err(_) => continue,
            }
        }
    }

    fn on_reflection(&mut self, ch: usize, len: usize, stamp: Option<u64>) {
        self.result.received_total += 1;
        let b = &self.buf[..len];
        if len != PACKET_LEN || u32::from_le_bytes(b[AT_CHANNEL..AT_CHANNEL + 4].try_into().unwrap_or_default()) as usize != ch {
            self.result.misrouted += 1;
            return;
        }
        if b[AT_FLAGS] & FLAG_MEASURED == 0 {
            return;
        }
        let sent = u64::from_le_bytes(b[AT_SENT..AT_SENT + 8].try_into().unwrap_or_default());
        let arrived = stamp.unwrap_or_else(|| {
            self.result.no_kernel_stamp += 1;
            sys::realtime_ns()
        });
        self.result.received += 1;
        self.received_measured[ch] += 1;
        let _ = self.result.turnaround.record(arrived.saturating_sub(sent).clamp(1, HIST_MAX_NS));
    }
}

/// CPU seconds of the calling thread.
pub fn thread_cpu_s() -> f64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}
