//! The shared echo (UDP 4000): worker threads, each with its own socket on the one port
//! (SO_REUSEPORT, so the kernel spreads senders over them by address and port), that read
//! datagrams in batches (recvmmsg), ask the guard ([`crate::echo_guard`]) about each, and send
//! the accepted ones back as they came (sendmmsg). Reflected datagrams from the Asterisk
//! address of a watched shared-echo call are counted for that call ([`SharedWatches`]).
//!
//! Separate from the media engine on purpose: a flood at the echo port keeps these threads
//! busy, not the loop that serves the calls' own sockets, and either can stall or die without
//! taking the other with it. [`EchoWorkers`] is the supervisor's side: it judges each worker
//! from its heartbeat and exit record ([`crate::thread_health`]) and restarts a dead or stalled
//! one in place (a new thread on a new socket), within the restart intensity.
//!
//! Bounded work per wake-up: a worker handles at most [`BUDGET`] batches before it beats its
//! heart and looks at its flags again, and waits at most [`READ_WAIT`] for a datagram, so it
//! turns at least every few milliseconds whether it is flooded or idle. The workers run at a
//! lower priority ([`WORKER_NICE`]): a flood costs the echo's own answers, not the CPU the
//! calls' media needs.
//!
//! Knows nothing of actors; allocates nothing per datagram.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::echo_guard::{EchoDrops, EchoGuard, GuardSettings, Verdict};
use crate::intensity::Intensity;
use crate::media::SharedWatches;
use crate::sys::{self, Batch, Family};
use crate::thread_health::{self, Decision, Health, Liveness};

/// Datagrams read (recvmmsg) and sent back (sendmmsg) per pair of syscalls.
const ECHO_BATCH: usize = 32;
/// Batches a worker handles per wake-up (2,048 datagrams) before it turns again: under a
/// flood it still beats its heart and sees its flags every few milliseconds.
pub const BUDGET: usize = 64;
/// How long an idle worker waits for a datagram before it turns again.
pub const READ_WAIT: Duration = Duration::from_millis(50);
/// A worker that has not turned for this long is stalled and replaced. It turns at least every
/// [`READ_WAIT`], or after [`BUDGET`] batches (a few milliseconds).
pub const STALL_BOUND: Duration = Duration::from_millis(500);
/// The workers' scheduling priority (nice): under CPU contention the kernel gives the media
/// engine, the actors and Asterisk (all at 0) about ten times a worker's share, so a flood
/// the workers are busy with cannot starve the calls' own media.
pub const WORKER_NICE: i32 = 10;
/// Receive buffer asked for each worker's socket (the kernel caps it at `net.core.rmem_max`):
/// room for ~1,000 RTP datagrams, so a worker the scheduler holds back (its nice 10 on a busy
/// machine) catches up instead of losing shared-echo media.
const RECV_BUFFER: usize = 1 << 20;
/// What an injected panic says.
pub const INJECTED_PANIC: &str = "injected fault: panic in an echo worker";
/// Fault flag: no fault pending.
const NO_FAULT: u64 = 0;
/// Fault flag: panic; any other value is a stall of that many milliseconds.
const PANIC_FAULT: u64 = u64::MAX;

/// Counters of the shared echo, over every worker and restart. Every datagram read is either
/// reflected (`packets`) or dropped (`dropped`, by reason).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ReflectorCounters {
    /// Datagrams reflected.
    pub packets: u64,
    /// Bytes reflected.
    pub bytes: u64,
    pub send_errors: u64,
    /// Datagrams not answered, by reason (see [`crate::echo_guard`]).
    pub dropped: EchoDrops,
}

/// The shared echo's settings.
#[derive(Debug, Clone)]
pub struct EchoSettings {
    /// Where every worker's socket binds (port 0: the first one picks, the others join it).
    pub addr: SocketAddr,
    /// Worker threads, one socket each; at least 1.
    pub workers: usize,
    /// What the echo answers.
    pub guard: GuardSettings,
}

/// The counters every worker adds its deltas to, once per wake-up: they live as long as the
/// echo, so a restarted worker carries them on.
#[derive(Default)]
struct Totals {
    packets: AtomicU64,
    bytes: AtomicU64,
    send_errors: AtomicU64,
    not_allowed: AtomicU64,
    rate_limited: AtomicU64,
    too_large: AtomicU64,
}

impl Totals {
    fn add(&self, c: &ReflectorCounters) {
        let pairs = [
            (&self.packets, c.packets),
            (&self.bytes, c.bytes),
            (&self.send_errors, c.send_errors),
            (&self.not_allowed, c.dropped.not_allowed),
            (&self.rate_limited, c.dropped.rate_limited),
            (&self.too_large, c.dropped.too_large),
        ];
        for (total, n) in pairs {
            if n > 0 {
                total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> ReflectorCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ReflectorCounters {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            send_errors: get(&self.send_errors),
            dropped: EchoDrops {
                not_allowed: get(&self.not_allowed),
                rate_limited: get(&self.rate_limited),
                too_large: get(&self.too_large),
            },
        }
    }
}

/// What the workers share.
struct Common {
    totals: Totals,
    watches: Arc<SharedWatches>,
    /// The limits; None when they filter nothing (the per-datagram checks are skipped).
    guard: Option<GuardSettings>,
    /// Shutdown: every worker ends at its next turn.
    stop: AtomicBool,
}

/// One worker as its supervisor sees it.
struct Slot {
    health: Arc<Health>,
    /// Tells this worker's thread to end: it was replaced after a stall.
    retire: Arc<AtomicBool>,
    /// A pending fault ([`NO_FAULT`], [`PANIC_FAULT`] or a stall in milliseconds).
    fault: Arc<AtomicU64>,
    /// A second handle on the worker's socket, so a stalled worker's socket can be taken out
    /// of the port's group (a connected UDP socket is not chosen for other senders).
    socket: std::net::UdpSocket,
    join: Option<JoinHandle<()>>,
    restarts: u64,
}

/// One worker's state, for the supervision tree.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub index: usize,
    pub liveness: Liveness,
    pub restarts: u64,
}

/// What [`EchoWorkers::supervise`] did about a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervised {
    /// Worker `index` was dead or stalled and runs again on a new socket.
    Restarted { index: usize, reason: String },
    /// A worker failed past the restart intensity, or could not be restarted: the process
    /// must end (escalate).
    Escalate { reason: String },
}

/// The shared echo's workers, from the supervisor's side: starts them, judges them, restarts
/// them in place, stops them.
pub struct EchoWorkers {
    /// The address every socket is bound to (the real port when the settings said 0).
    addr: SocketAddr,
    common: Arc<Common>,
    slots: Vec<Slot>,
    intensity: Intensity,
}

/// A UDP socket on `addr` in the port's SO_REUSEPORT group, non-blocking.
fn bind_shared(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReusePort, &true).map_err(io::Error::from)?;
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
        log::warn!("[Echo] cannot set the receive buffer of an echo socket to {RECV_BUFFER} bytes: {e}");
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl EchoWorkers {
    /// Binds `settings.workers` sockets on `settings.addr` and starts a worker on each.
    /// `intensity`: how many restarts are tolerated before [`Supervised::Escalate`].
    pub fn start(settings: &EchoSettings, watches: Arc<SharedWatches>, intensity: Intensity) -> io::Result<Self> {
        let guard = if settings.guard.is_off(sys::MAX_DATAGRAM) {
            log::warn!("[Echo] the shared echo answers every source at any rate: no allow-list, no rate limit");
            None
        } else {
            watches.set_allow(settings.guard.allow.clone());
            Some(settings.guard.clone())
        };
        // SO_REUSEPORT would let another process of this user (a second instance with the same
        // echo address) join the port's group and take part of its senders, unnoticed: a plain
        // bind first fails while anyone holds the port.
        if settings.addr.port() != 0 {
            drop(std::net::UdpSocket::bind(settings.addr)?);
        }
        let first = bind_shared(settings.addr)?;
        let addr = first.local_addr()?;
        let common = Arc::new(Common { totals: Totals::default(), watches, guard, stop: AtomicBool::new(false) });
        let mut pool = EchoWorkers { addr, common, slots: Vec::new(), intensity };
        let mut socket = Some(first);
        for index in 0..settings.workers.max(1) {
            let s = match socket.take() {
                Some(s) => s,
                None => bind_shared(addr)?,
            };
            let slot = pool.spawn(index, s)?;
            pool.slots.push(slot);
        }
        log::info!("[Echo] reflecting UDP on {addr} with {} worker(s)", pool.slots.len());
        Ok(pool)
    }

    fn spawn(&self, index: usize, socket: std::net::UdpSocket) -> io::Result<Slot> {
        let health = Arc::new(Health::new(STALL_BOUND));
        let retire = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(AtomicU64::new(NO_FAULT));
        let kept = socket.try_clone()?;
        let poll = Poll::new()?;
        let family = Family::of(&socket.local_addr()?);
        let mut socket = UdpSocket::from_std(socket);
        poll.registry().register(&mut socket, Token(0), Interest::READABLE)?;
        let worker = Worker {
            index,
            socket,
            family,
            poll,
            common: Arc::clone(&self.common),
            retire: Arc::clone(&retire),
            fault: Arc::clone(&fault),
            health: Arc::clone(&health),
        };
        let join = thread_health::spawn(&format!("rtpvisor-echo-{index}"), Arc::clone(&health), move || worker.run())?;
        Ok(Slot { health, retire, fault, socket: kept, join: Some(join), restarts: 0 })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters over every worker since the start.
    pub fn counters(&self) -> ReflectorCounters {
        self.common.totals.load()
    }

    /// Every worker's state as of `now`.
    pub fn workers(&self, now: Instant) -> Vec<WorkerStatus> {
        self.slots
            .iter()
            .enumerate()
            .map(|(index, s)| WorkerStatus { index, liveness: s.health.liveness(now), restarts: s.restarts })
            .collect()
    }

    /// Restarts of every worker since the start.
    pub fn restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.restarts).sum()
    }

    /// Judges every worker at `now` and restarts the dead and stalled ones in place (a new
    /// thread on a new socket on the same port; a stalled one's socket is taken out of the
    /// group and its thread told to end when it wakes). The workers that fail in one judgement
    /// count as one failure toward the restart intensity ([`thread_health::decide_group`]).
    /// Past the intensity, or when a new socket cannot be bound, it says
    /// [`Supervised::Escalate`] and restarts nothing more.
    pub fn supervise(&mut self, now: Instant) -> Vec<Supervised> {
        let liveness: Vec<Liveness> = self.slots.iter().map(|s| s.health.liveness(now)).collect();
        let mut done = Vec::new();
        for (index, decision) in thread_health::decide_group(&liveness, &mut self.intensity, now) {
            match decision {
                Decision::Keep => {}
                Decision::Escalate { reason } => {
                    done.push(Supervised::Escalate { reason: format!("echo worker {index}: {reason}") });
                    return done;
                }
                Decision::Restart { reason } => match self.restart(index, &liveness[index]) {
                    Ok(()) => {
                        log::warn!("[Echo] worker {index} restarted: {reason}");
                        done.push(Supervised::Restarted { index, reason });
                    }
                    Err(e) => {
                        let reason = format!("echo worker {index} ({reason}) could not be restarted: {e}");
                        done.push(Supervised::Escalate { reason });
                        return done;
                    }
                },
            }
        }
        done
    }

    fn restart(&mut self, index: usize, liveness: &Liveness) -> io::Result<()> {
        let socket = bind_shared(self.addr)?;
        let mut fresh = self.spawn(index, socket)?;
        let old = &mut self.slots[index];
        fresh.restarts = old.restarts + 1;
        old.retire.store(true, Ordering::Relaxed);
        if let Liveness::Stalled { .. } = liveness {
            // Its thread still holds the socket; connected, it gets no other sender's datagrams.
            let away: SocketAddr = match self.addr {
                SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 9).into(),
                SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 9).into(),
            };
            if let Err(e) = old.socket.connect(away) {
                log::warn!("[Echo] could not take the stalled worker {index}'s socket out of the group: {e}");
            }
        }
        let old = std::mem::replace(&mut self.slots[index], fresh);
        if let (Liveness::Dead { .. }, Some(join)) = (liveness, old.join) {
            let _ = join.join(); // it has ended: reaps the thread
        }
        Ok(())
    }

    /// Fault injection: every worker panics at its next turn.
    pub fn inject_panic(&self) {
        for s in &self.slots {
            s.fault.store(PANIC_FAULT, Ordering::Relaxed);
        }
    }

    /// Fault injection: every worker sleeps `d` at its next turn (as if stuck in a syscall).
    pub fn inject_stall(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(PANIC_FAULT - 1).clamp(1, PANIC_FAULT - 1);
        for s in &self.slots {
            s.fault.store(ms, Ordering::Relaxed);
        }
    }

    /// Stops every worker and waits up to `deadline` for them (a stalled one is left behind).
    pub fn shutdown(&mut self, deadline: Duration) {
        self.common.stop.store(true, Ordering::Relaxed);
        let until = Instant::now() + deadline;
        for s in &mut self.slots {
            while s.join.as_ref().is_some_and(|j| !j.is_finished()) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(j) = s.join.take_if(|j| j.is_finished()) {
                let _ = j.join();
            }
        }
    }
}

impl Drop for EchoWorkers {
    fn drop(&mut self) {
        self.common.stop.store(true, Ordering::Relaxed);
    }
}

/// One worker thread's state; built by the supervisor, run on its own thread.
struct Worker {
    index: usize,
    socket: UdpSocket,
    family: Family,
    poll: Poll,
    common: Arc<Common>,
    retire: Arc<AtomicBool>,
    fault: Arc<AtomicU64>,
    health: Arc<Health>,
}

/// What one worker counted since it last added to the totals, and its guard.
struct Reflecting {
    /// Built on the worker's thread: its preallocated headers hold raw pointers into itself,
    /// so nix does not let it cross threads.
    batch: Batch<ECHO_BATCH>,
    guard: Option<EchoGuard>,
    /// Counted since the last [`Totals::add`] (drops: the guard's totals at that point).
    pending: ReflectorCounters,
    drops_published: EchoDrops,
    /// Drops at the last log line about them, and when it was written: at most one line a
    /// minute, so a flood cannot flood the log too.
    drops_logged: (EchoDrops, Option<Instant>),
}

impl Worker {
    fn run(mut self) {
        if let Err(e) = sys::lower_thread_priority(WORKER_NICE) {
            log::warn!("[Echo] worker {}: cannot lower its priority to nice {WORKER_NICE}: {e}", self.index);
        }
        // The table's hash seed: unknown outside, so nobody can pick sources that share a set.
        // Without one, the worker panics and its supervisor tries again.
        let guard = self.common.guard.clone().map(|g| {
            let seed = getrandom::u64().expect("a random seed for the echo's table");
            EchoGuard::new(g, seed, Instant::now())
        });
        let mut r = Reflecting {
            batch: Batch::new(false),
            guard,
            pending: ReflectorCounters::default(),
            drops_published: EchoDrops::default(),
            drops_logged: (EchoDrops::default(), None),
        };
        let mut events = Events::with_capacity(4);
        // Datagrams may be queued before the first edge: read first.
        let mut drained = false;
        loop {
            let now = Instant::now();
            self.health.turn(now);
            if self.retire.load(Ordering::Relaxed) || self.common.stop.load(Ordering::Relaxed) {
                break;
            }
            match self.fault.swap(NO_FAULT, Ordering::Relaxed) {
                NO_FAULT => {}
                PANIC_FAULT => panic!("{INJECTED_PANIC}"),
                ms => {
                    log::warn!("[Echo] injected fault: worker {} stalls for {ms} ms", self.index);
                    std::thread::sleep(Duration::from_millis(ms));
                    continue;
                }
            }
            if drained {
                match self.poll.poll(&mut events, Some(READ_WAIT)) {
                    Ok(()) if events.is_empty() => continue,
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::error!("[Echo] worker {}: poll failed: {e}", self.index);
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            drained = self.reflect(&mut r);
            self.publish(&mut r, now);
        }
    }

    /// Up to [`BUDGET`] batches: every datagram the guard accepts goes back to its sender as
    /// it came, the refused ones are left out of the batch and counted by reason. True when
    /// the socket is drained (the next datagram raises a new edge).
    fn reflect(&mut self, r: &mut Reflecting) -> bool {
        let c = &mut r.pending;
        for _ in 0..BUDGET {
            let n = match r.batch.recv(&self.socket, self.family) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors from an earlier send surface here (ECONNREFUSED): keep going.
                Err(_) => {
                    c.send_errors += 1;
                    continue;
                }
            };
            // One pass over the batch, each sender's address built once: the guard decides
            // (a dropped datagram is skipped by the send), then a watched call counts what was
            // reflected for it.
            let mut dropped = 0;
            let mut watches = self.common.watches.counting();
            if r.guard.is_some() || watches.is_some() {
                // One clock read per batch: a flood is read in many batches within one
                // wake-up, and the buckets must refill between them.
                let now = Instant::now();
                for i in 0..n {
                    let Some(d) = r.batch.get(i) else { break };
                    if let Some(guard) = &mut r.guard {
                        if let Verdict::Drop(_) = guard.check(d.from, d.data.len(), d.truncated, now) {
                            r.batch.skip(i);
                            dropped += 1;
                            continue;
                        }
                    }
                    if let Some(t) = &mut watches {
                        t.count(d.from, d.data.len(), now);
                    }
                }
            }
            drop(watches);
            c.packets += (n - dropped) as u64;
            c.bytes += r.batch.bytes();
            c.send_errors += r.batch.send_back(&self.socket);
            if n < ECHO_BATCH {
                return true;
            }
        }
        false
    }

    /// Adds what was counted to the totals; at most once a minute, logs what was refused.
    fn publish(&self, r: &mut Reflecting, now: Instant) {
        if let Some(guard) = &mut r.guard {
            let d = guard.drops();
            let p = r.drops_published;
            r.pending.dropped = EchoDrops {
                not_allowed: d.not_allowed - p.not_allowed,
                rate_limited: d.rate_limited - p.rate_limited,
                too_large: d.too_large - p.too_large,
            };
            r.drops_published = d;
            let (before, at) = r.drops_logged;
            if d != before && at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60)) {
                let last = guard.take_last_refused().map(|a| format!(" (last refused source {a})")).unwrap_or_default();
                log::warn!(
                    "[Echo] worker {} dropped {} datagram(s) from sources outside echo.allow{last}, {} over echo.rate_pps, {} over echo.max_bytes",
                    self.index,
                    d.not_allowed - before.not_allowed,
                    d.rate_limited - before.rate_limited,
                    d.too_large - before.too_large,
                );
                r.drops_logged = (d, Some(now));
            }
        }
        self.common.totals.add(&r.pending);
        r.pending = ReflectorCounters::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(workers: usize, guard: GuardSettings) -> EchoSettings {
        EchoSettings { addr: "127.0.0.1:0".parse().unwrap(), workers, guard }
    }

    fn start(workers: usize, guard: GuardSettings) -> EchoWorkers {
        EchoWorkers::start(
            &settings(workers, guard),
            Arc::new(SharedWatches::default()),
            Intensity::new(5, Duration::from_secs(10)),
        )
        .unwrap()
    }

    fn client() -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        s
    }

    /// Whether the echo at `to` answers `c` (one datagram, one answer within 300 ms).
    fn answers(c: &std::net::UdpSocket, to: SocketAddr) -> bool {
        let mut buf = [0u8; 64];
        c.send_to(b"ping", to).unwrap();
        matches!(c.recv_from(&mut buf), Ok((4, _)))
    }

    /// Runs `supervise` every 20 ms until `done` says so, for at most `within`.
    fn supervise_until(w: &mut EchoWorkers, within: Duration, mut done: impl FnMut(&[Supervised]) -> bool) -> Vec<Supervised> {
        let until = Instant::now() + within;
        let mut all = Vec::new();
        while Instant::now() < until {
            all.extend(w.supervise(Instant::now()));
            if done(&all) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        all
    }

    #[test]
    fn every_worker_answers_on_the_one_port_and_the_counters_add_up() {
        let mut w = start(3, GuardSettings::default());
        let addr = w.local_addr();
        assert_ne!(addr.port(), 0);
        // Many senders: the kernel spreads them over the three sockets.
        let clients: Vec<_> = (0..24).map(|_| client()).collect();
        for c in &clients {
            assert!(answers(c, addr), "{:?} got no answer", c.local_addr());
        }
        let until = Instant::now() + Duration::from_secs(2);
        while w.counters().packets < 24 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!((w.counters().packets, w.counters().bytes), (24, 96));
        assert!(w.workers(Instant::now()).iter().all(|s| s.liveness == Liveness::Running));
        w.shutdown(Duration::from_secs(1));
        assert!(w.workers(Instant::now()).iter().all(|s| matches!(s.liveness, Liveness::Dead { .. })));
    }

    #[test]
    fn a_panicked_worker_is_restarted_in_place_and_answers_again() {
        let mut w = start(2, GuardSettings::default());
        let addr = w.local_addr();
        w.inject_panic();
        let done = supervise_until(&mut w, Duration::from_secs(2), |d| d.len() >= 2);
        assert_eq!(done.len(), 2, "{done:?}");
        for d in &done {
            assert!(
                matches!(d, Supervised::Restarted { reason, .. } if reason == &format!("panicked: {INJECTED_PANIC}")),
                "{d:?}"
            );
        }
        assert_eq!(w.restarts(), 2);
        let c = client();
        assert!((0..5).any(|_| answers(&c, addr)), "the restarted workers answer");
        w.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn a_stalled_worker_is_replaced_and_its_socket_leaves_the_group() {
        let mut w = start(1, GuardSettings::default());
        let addr = w.local_addr();
        w.inject_stall(Duration::from_secs(3));
        let t0 = Instant::now();
        let done = supervise_until(&mut w, Duration::from_secs(2), |d| !d.is_empty());
        let took = t0.elapsed();
        assert!(matches!(&done[..], [Supervised::Restarted { index: 0, reason }] if reason.starts_with("stalled")), "{done:?}");
        assert!(took < Duration::from_secs(1), "replaced within a second: {took:?}");
        // The stalled thread still holds its socket, yet every sender reaches the new worker.
        for _ in 0..10 {
            assert!(answers(&client(), addr));
        }
        w.shutdown(Duration::from_millis(100));
    }

    #[test]
    fn a_second_echo_on_a_port_in_use_does_not_start() {
        let mut w = start(2, GuardSettings::default());
        let taken = EchoSettings { addr: w.local_addr(), workers: 2, guard: GuardSettings::default() };
        let second = EchoWorkers::start(&taken, Arc::new(SharedWatches::default()), Intensity::new(5, Duration::from_secs(10)));
        assert_eq!(second.err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        w.shutdown(Duration::from_secs(1));
        drop(w);
        // Once the port is free again, an echo starts on it.
        let mut again = EchoWorkers::start(&taken, Arc::new(SharedWatches::default()), Intensity::new(5, Duration::from_secs(10)))
            .expect("the freed port");
        assert!(answers(&client(), again.local_addr()));
        again.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn failures_past_the_intensity_escalate() {
        let mut w = EchoWorkers::start(
            &settings(1, GuardSettings::default()),
            Arc::new(SharedWatches::default()),
            Intensity::new(1, Duration::from_secs(10)),
        )
        .unwrap();
        w.inject_panic();
        let done = supervise_until(&mut w, Duration::from_secs(2), |d| !d.is_empty());
        assert!(matches!(&done[..], [Supervised::Restarted { .. }]), "{done:?}");
        w.inject_panic();
        let done = supervise_until(&mut w, Duration::from_secs(2), |d| !d.is_empty());
        assert!(
            matches!(&done[..], [Supervised::Escalate { reason }] if reason.contains("more than 1 failures")),
            "{done:?}"
        );
    }

    #[test]
    fn the_echo_answers_only_within_its_limits_and_counts_every_drop() {
        let settings = GuardSettings { allow: "127.0.0.1/32".parse().unwrap(), rate_pps: 10, burst: 3, max_bytes: 1500 };
        let mut w = start(1, settings);
        let echo_addr = w.local_addr();
        let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
        stranger.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (big, small) = (client(), client());
        let mut buf = [0u8; 4096];
        stranger.send_to(b"spoofed", echo_addr).unwrap();
        assert!(stranger.recv_from(&mut buf).is_err(), "outside the allow-list: nothing back");
        // Too large, and larger than the socket reads (truncated): nothing back, whatever fits.
        big.send_to(&[7u8; 1501], echo_addr).unwrap();
        big.send_to(&[7u8; 3000], echo_addr).unwrap();
        assert!(big.recv_from(&mut buf).is_err(), "too large: nothing back");
        big.send_to(&[9u8; 1500], echo_addr).unwrap();
        let (n, _) = big.recv_from(&mut buf).expect("1500 bytes is within the limit");
        assert_eq!(&buf[..n], &[9u8; 1500][..], "as it came, no byte more");
        // A burst of 3: three answered at once, the rest of a quick volley dropped.
        for i in 0..8u8 {
            small.send_to(&[i; 20], echo_addr).unwrap();
        }
        let mut back = Vec::new();
        while let Ok((n, _)) = small.recv_from(&mut buf) {
            back.push(buf[..n].to_vec());
        }
        assert_eq!(back, vec![vec![0u8; 20], vec![1u8; 20], vec![2u8; 20]]);
        // The worker adds to the totals after each wake-up.
        let until = Instant::now() + Duration::from_secs(2);
        while w.counters().dropped.rate_limited < 5 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let c = w.counters();
        assert_eq!((c.packets, c.bytes), (4, 1500 + 60));
        assert_eq!(c.dropped, EchoDrops { not_allowed: 1, rate_limited: 5, too_large: 2 });
        w.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn settings_that_filter_nothing_skip_the_guard() {
        let mut w = start(1, GuardSettings::off(sys::MAX_DATAGRAM));
        let c = client();
        let mut buf = [0u8; 4096];
        for _ in 0..300 {
            c.send_to(&[1u8; 2000], w.local_addr()).unwrap();
            assert_eq!(c.recv_from(&mut buf).unwrap().0, 2000);
        }
        w.shutdown(Duration::from_secs(1));
    }
}
