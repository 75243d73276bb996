//! Micro benchmarks of the per-packet path: RTP parse, receive statistics
//! update, latency histogram record, probe write + match, and a port lease + release (pure
//! pool and through the PortManager actor). Also the shared echo (the media engine's
//! reflector, over loopback) with 0 and 100 watched shared-echo calls, and the watch lookup
//! that adds per datagram.
//!
//! Run: `cargo bench -p rtpvisor-actors` (criterion; `-- --quick` for a short run).
//!
//! Before the timings, each per-packet operation is run under a counting allocator and the
//! allocations per operation are printed. Histogram record and statistics update are documented
//! as allocation-free: the bench fails if either allocates once warmed up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::Actor;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rtpvisor_actors::actors::port_manager::{AcquirePort, PortManager};
use rtpvisor_actors::echo_guard::{EchoGuard, GuardSettings};
use rtpvisor_actors::latency::LatencyHistogram;
use rtpvisor_actors::media::{EngineOptions, MediaHandle};
use rtpvisor_actors::intensity::Intensity;
use rtpvisor_actors::shared_echo::{EchoSettings, EchoWorkers};
use rtpvisor_actors::ports::{PortPool, PortRange};
use rtpvisor_actors::probe::{ProbeSecret, ProbeStream, PACKET_LEN};
use rtpvisor_actors::rtp::{write_packet, RtpHeader, RtpPacket, HEADER_LEN};
use rtpvisor_actors::stats::ReceiveStats;
use rtpvisor_actors::sys::MAX_DATAGRAM;

/// Counts every allocation of the process, so a bench can tell how many an operation makes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the counter has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A 20 ms PCMU packet (12-byte header, 160-byte payload), as Asterisk sends it.
fn pcmu_packet(seq: u16, ts: u32) -> [u8; HEADER_LEN + 160] {
    let mut buf = [0u8; HEADER_LEN + 160];
    let h = RtpHeader::pcmu(seq, ts, 0x1234_5678);
    write_packet(&mut buf, &h, &[0xff; 160]).expect("172 bytes hold a PCMU packet");
    buf
}

/// Allocations per call of `op` over `n` calls, after `n` warm-up calls.
fn allocs_per_op(n: u64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..n {
        op(i);
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in n..2 * n {
        op(i);
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

/// Prints allocations per operation; fails the run if record or update allocate.
fn allocation_check() {
    const N: u64 = 100_000;
    let pkt = pcmu_packet(1, 160);
    let parse = allocs_per_op(N, |_| {
        black_box(RtpPacket::parse(black_box(&pkt)).ok());
    });
    let mut stats = ReceiveStats::new(8000, Duration::from_millis(20));
    let t0 = Instant::now();
    let update = allocs_per_op(N, |i| {
        let arrival = t0 + Duration::from_millis(20 * i);
        black_box(stats.update(i as u16, (i as u32).wrapping_mul(160), arrival));
    });
    let mut hist = LatencyHistogram::new();
    let record = allocs_per_op(N, |i| hist.record(Duration::from_micros(100 + i % 5000)));
    let mut pool = PortPool::new(port_range(), Duration::ZERO, Duration::from_secs(10));
    let lease = allocs_per_op(N, |_| {
        let p = pool.lease(t0).expect("a free port");
        pool.release(p, t0).expect("leased");
    });
    println!("allocations per operation (after warm-up, {N} ops each):");
    println!("  rtp parse            {parse}");
    println!("  stats update         {update}");
    println!("  histogram record     {record}");
    println!("  port lease+release   {lease}");
    assert_eq!(update, 0.0, "ReceiveStats::update must not allocate");
    assert_eq!(record, 0.0, "LatencyHistogram::record must not allocate");
}

fn port_range() -> PortRange {
    PortRange::new(10000, 10100).expect("valid range")
}

fn rtp(c: &mut Criterion) {
    let pkt = pcmu_packet(4711, 160 * 4711);
    let mut g = c.benchmark_group("rtp");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse", |b| b.iter(|| RtpPacket::parse(black_box(&pkt)).map(|p| p.header.sequence)));
    let h = RtpPacket::parse(&pkt).expect("valid").header;
    let mut out = [0u8; HEADER_LEN + 160];
    g.bench_function("write", |b| b.iter(|| write_packet(black_box(&mut out), black_box(&h), &[0xff; 160])));
    g.finish();
}

fn stats(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats");
    g.throughput(Throughput::Elements(1));
    // In-order stream, one packet per 20 ms with a little arrival jitter: the common case.
    g.bench_function("update_in_order", |b| {
        let mut s = ReceiveStats::new(8000, Duration::from_millis(20));
        let t0 = Instant::now();
        let mut i: u64 = 0;
        b.iter(|| {
            i += 1;
            let arrival = t0 + Duration::from_micros(20_000 * i + (i * 7919) % 900);
            s.update(i as u16, (i as u32).wrapping_mul(160), arrival)
        });
    });
    // Every 50th packet swapped with its neighbour: exercises the reorder path.
    g.bench_function("update_reordered_2pct", |b| {
        let mut s = ReceiveStats::new(8000, Duration::from_millis(20));
        let t0 = Instant::now();
        let mut i: u64 = 0;
        b.iter(|| {
            i += 1;
            let seq = match i % 50 {
                0 => i + 1,
                1 if i > 1 => i - 1,
                _ => i,
            };
            let arrival = t0 + Duration::from_micros(20_000 * i);
            s.update(seq as u16, (seq as u32).wrapping_mul(160), arrival)
        });
    });
    g.finish();
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency");
    g.throughput(Throughput::Elements(1));
    g.bench_function("histogram_record", |b| {
        let mut h = LatencyHistogram::new();
        let mut i: u64 = 0;
        b.iter(|| {
            i += 1;
            // Spread over 0.1..5 ms, where a live call's samples land.
            h.record(black_box(Duration::from_micros(100 + (i * 7919) % 4900)));
        });
    });
    g.bench_function("histogram_summary", |b| {
        let mut h = LatencyHistogram::new();
        for i in 0..10_000u64 {
            h.record(Duration::from_micros(100 + (i * 7919) % 4900));
        }
        b.iter(|| black_box(&h).summary());
    });
    g.finish();
}

fn probe(c: &mut Criterion) {
    let mut g = c.benchmark_group("probe");
    g.throughput(Throughput::Elements(1));
    // Write the next probe and match it coming back: the probe mode's per-packet work.
    g.bench_function("write_and_match", |b| {
        let t0 = Instant::now();
        let mut p = ProbeStream::new(7, ProbeSecret::from_bits(1, 2), 7, Duration::from_secs(2), Duration::from_millis(20), t0);
        let mut buf = [0u8; PACKET_LEN];
        let mut now = t0;
        b.iter(|| {
            now += Duration::from_millis(20);
            let n = p.write_next(now, &mut buf);
            p.on_payload(&buf[HEADER_LEN..n], now + Duration::from_micros(300))
        });
    });
    g.finish();
}

fn ports(c: &mut Criterion) {
    let mut g = c.benchmark_group("ports");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pool_lease_release", |b| {
        let mut pool = PortPool::new(port_range(), Duration::ZERO, Duration::from_secs(10));
        let now = Instant::now();
        b.iter(|| {
            let p = pool.lease(now).expect("a free port");
            pool.release(p, now).expect("leased");
        });
    });
    // With the default 2 s quarantine, time advancing 20 ms per call: released ports go through
    // the quarantine heap and come back later, as in service.
    g.bench_function("pool_lease_release_quarantined", |b| {
        let mut pool = PortPool::new(
            PortRange::new(10000, 14999).expect("valid range"),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        let t0 = Instant::now();
        let mut i: u64 = 0;
        b.iter(|| {
            i += 1;
            let now = t0 + Duration::from_millis(20 * i);
            let p = pool.lease(now).expect("a free port");
            pool.release(p, now).expect("leased");
        });
    });
    // Through the actor: AcquirePort round trip, then the Lease drop's Release message.
    g.bench_function("actor_acquire_release", |b| {
        b.iter_custom(|iters| {
            actix_rt::System::new().block_on(async move {
                let pm = PortManager::new(port_range(), Duration::ZERO).start();
                let start = Instant::now();
                for _ in 0..iters {
                    let lease = pm.send(AcquirePort).await.expect("mailbox").expect("a free port");
                    drop(black_box(lease));
                }
                start.elapsed()
            })
        });
    });
    g.finish();
}

/// The shared echo (one worker) beside a media engine with no sinks, and `watched` shared-echo calls: the first
/// `hits` of them are the client's own sockets (every datagram is counted for a call), the
/// rest are addresses that never send.
struct Reflector {
    media: MediaHandle,
    echo: EchoWorkers,
    join: Option<std::thread::JoinHandle<()>>,
    clients: Vec<std::net::UdpSocket>,
}

/// Datagrams in flight per round: 8 sockets x 4, one full recvmmsg batch of the reflector.
const CLIENTS: usize = 8;
const PER_CLIENT: usize = 4;

impl Reflector {
    fn start(watched: usize, hits: bool) -> Reflector {
        Self::with(watched, hits, GuardSettings::off(MAX_DATAGRAM))
    }

    fn with(watched: usize, hits: bool, guard: GuardSettings) -> Reflector {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (media, join) = MediaHandle::start(Box::new(|_| {}), Box::new(|_, _| {}), EngineOptions::default())
            .expect("media engine");
        let settings = EchoSettings { addr: "127.0.0.1:0".parse().expect("addr"), workers: 1, guard };
        let echo = EchoWorkers::start(&settings, media.shared_watches(), Intensity::new(5, Duration::from_secs(10)))
            .expect("echo workers");
        let echo_addr = echo.local_addr();
        let clients: Vec<std::net::UdpSocket> = (0..CLIENTS)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
                s.connect(echo_addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
                s
            })
            .collect();
        for i in 0..watched {
            let peer = match clients.get(i) {
                Some(c) if hits => c.local_addr().expect("bound"),
                // Addresses that never send: port 1..=watched of 127.0.0.2.
                _ => std::net::SocketAddr::from(([127, 0, 0, 2], 1 + i as u16)),
            };
            rt.block_on(media.watch_shared(i as u64, peer, Duration::ZERO)).expect("watch");
        }
        Reflector { media, echo, join: Some(join), clients }
    }

    /// One round: every client sends PER_CLIENT datagrams, then reads them back.
    fn round(&self, pkt: &[u8], buf: &mut [u8]) {
        for c in &self.clients {
            for _ in 0..PER_CLIENT {
                c.send(pkt).expect("send");
            }
        }
        for c in &self.clients {
            for _ in 0..PER_CLIENT {
                c.recv(buf).expect("echo back");
            }
        }
    }
}

impl Drop for Reflector {
    fn drop(&mut self) {
        self.echo.shutdown(Duration::from_secs(1));
        self.media.shutdown();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn shared_echo(c: &mut Criterion) {
    let pkt = pcmu_packet(1, 160);
    let mut buf = [0u8; 2048];
    // Allocations per echo with every datagram counted for a watched call (the engine thread
    // allocates through the same counting allocator).
    {
        let r = Reflector::start(100, true);
        for _ in 0..1000 {
            r.round(&pkt, &mut buf);
        }
        let n = 5000u64;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..n {
            r.round(&pkt, &mut buf);
        }
        let per_echo = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / (n * (CLIENTS * PER_CLIENT) as u64) as f64;
        println!("allocations per shared echo, 100 watched calls: {per_echo:.4} (housekeeping flushes only)");
    }
    let mut g = c.benchmark_group("shared_echo");
    g.throughput(Throughput::Elements((CLIENTS * PER_CLIENT) as u64));
    for (name, watched, hits) in [("0_watches", 0, false), ("100_watches_misses", 100, false), ("100_watches_hits", 100, true)] {
        let r = Reflector::start(watched, hits);
        g.bench_function(name, |b| b.iter(|| r.round(black_box(&pkt), &mut buf)));
    }
    // Limits on (allow-list, size, a rate no client reaches): what the guard adds per round.
    let r = Reflector::with(0, false, bench_limits());
    g.bench_function("0_watches_limits_on", |b| b.iter(|| r.round(black_box(&pkt), &mut buf)));
    g.finish();

    // The guard's decision alone, per datagram: an allowed source with a bucket, one of
    // 1,000 sources taking turns (the table's set scan), and a refused one.
    let mut guard = EchoGuard::new(bench_limits(), 42, Instant::now());
    let t0 = Instant::now();
    let one = std::net::SocketAddr::from(([127, 0, 0, 1], 31000));
    let outsider = std::net::SocketAddr::from(([203, 0, 113, 9], 31000));
    let many: Vec<std::net::SocketAddr> = (0..1000u16).map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 20000 + i))).collect();
    let allocs = allocs_per_op(100_000, |i| {
        black_box(guard.check(many[(i % 1000) as usize], 172, false, t0 + Duration::from_nanos(i * 100)));
    });
    println!("allocations per echo guard check: {allocs}");
    assert_eq!(allocs, 0.0, "EchoGuard::check must not allocate");
    let mut g = c.benchmark_group("echo_guard");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("check_one_source", |b| {
        b.iter(|| {
            i += 1;
            guard.check(black_box(one), 172, false, t0 + Duration::from_nanos(i * 100))
        })
    });
    g.bench_function("check_1000_sources", |b| {
        b.iter(|| {
            i += 1;
            guard.check(black_box(many[(i % 1000) as usize]), 172, false, t0 + Duration::from_nanos(i * 100))
        })
    });
    g.bench_function("check_not_allowed", |b| b.iter(|| guard.check(black_box(outsider), 172, false, t0)));
    g.finish();

    // The lookup each datagram pays when something is watched.
    let mut g = c.benchmark_group("watch_lookup");
    let map: std::collections::HashMap<std::net::SocketAddr, usize> =
        (0..100u16).map(|i| (std::net::SocketAddr::from(([127, 0, 0, 1], 31000 + i)), usize::from(i))).collect();
    let hit = std::net::SocketAddr::from(([127, 0, 0, 1], 31042));
    let miss = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    g.bench_function("hashmap_100_hit", |b| b.iter(|| map.get(black_box(&hit)).copied()));
    g.bench_function("hashmap_100_miss", |b| b.iter(|| map.get(black_box(&miss)).copied()));
    g.finish();
}

/// A deployment's limits with a rate no bench client reaches: every check runs, none drops.
fn bench_limits() -> GuardSettings {
    GuardSettings {
        allow: "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8,127.0.0.1/32".parse().expect("constant CIDRs"),
        rate_pps: 10_000_000,
        burst: 10_000_000,
        max_bytes: 1500,
    }
}

fn all(c: &mut Criterion) {
    allocation_check();
    rtp(c);
    stats(c);
    latency(c);
    probe(c);
    ports(c);
    shared_echo(c);
}

criterion_group!(benches, all);
criterion_main!(benches);
