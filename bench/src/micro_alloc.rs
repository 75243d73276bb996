//! Allocation check of the per-packet operations ("histogram record and stats update
//! allocation-free"), run in this process under the counting allocator before anything else
//! starts, so no other thread allocates meanwhile. Timings are criterion's job
//! (`cargo bench -p rtpvisor-actors`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::alloc::AllocCount;
use rtpvisor_actors::latency::LatencyHistogram;
use rtpvisor_actors::ports::{PortPool, PortRange};
use rtpvisor_actors::probe::{PACKET_LEN, PAYLOAD_LEN, PTIME, SAMPLES_PER_PACKET};
use rtpvisor_actors::rtp::{write_packet, RtpHeader, RtpPacket};
use rtpvisor_actors::stats::ReceiveStats;

/// Allocations per call, after as many warm-up calls.
#[derive(Debug, Clone, Serialize)]
pub struct AllocCheck {
    pub ops: u64,
    pub rtp_parse: f64,
    pub stats_update: f64,
    pub histogram_record: f64,
    pub port_lease_release: f64,
}

fn per_op(n: u64, mut op: impl FnMut(u64)) -> f64 {
    for i in 0..n {
        op(i);
    }
    let before = AllocCount::now();
    for i in n..2 * n {
        op(i);
    }
    AllocCount::now().since(before).allocs as f64 / n as f64
}

pub fn run() -> AllocCheck {
    const N: u64 = 100_000;
    let mut pkt = [0u8; PACKET_LEN];
    let h = RtpHeader::pcmu(1, SAMPLES_PER_PACKET, 7);
    let _ = write_packet(&mut pkt, &h, &[0xff; PAYLOAD_LEN]);
    let t0 = Instant::now();
    let rtp_parse = per_op(N, |_| {
        black_box(RtpPacket::parse(black_box(&pkt)).ok());
    });
    let mut stats = ReceiveStats::new(8000, Duration::from_millis(20));
    let stats_update = per_op(N, |i| {
        black_box(stats.update(i as u16, (i as u32).wrapping_mul(SAMPLES_PER_PACKET), t0 + PTIME * i as u32));
    });
    let mut hist = LatencyHistogram::new();
    let histogram_record = per_op(N, |i| hist.record(Duration::from_micros(100 + i % 5000)));
    let range = PortRange::new(10000, 10999).expect("valid range");
    let mut pool = PortPool::new(range, Duration::from_secs(2), Duration::from_secs(10));
    let port_lease_release = per_op(N, |i| {
        let now = t0 + Duration::from_millis(20 * i);
        if let Ok(p) = pool.lease(now) {
            let _ = pool.release(p, now);
        }
    });
    AllocCheck { ops: N, rtp_parse, stats_update, histogram_record, port_lease_release }
}
