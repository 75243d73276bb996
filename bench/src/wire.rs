//! The probes' round trips as seen on the wire (the loopback interface), to compare with the
//! round trips the service reports: how much the service itself adds (socket queueing, epoll
//! wake-up, its own processing before it reads the clock).
//!
//! A packet socket (AF_PACKET, cooked, all protocols) on every interface, kernel-stamped
//! (SO_TIMESTAMPNS). On loopback each packet passes twice (outgoing, then incoming); only the
//! incoming copy is kept. An outbound probe is a UDP datagram from a port of the service's
//! range carrying a probe payload; its echo is one to such a port carrying the same payload
//! (Asterisk rewrites sequence numbers and SSRC, not the payload). Needs root (CAP_NET_RAW).

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use hdrhistogram::Histogram;
use nix::sys::socket::{
    recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::{TimeVal, TimeValLike};
use serde::Serialize;

use rtpvisor_actors::probe::{peek_id, ProbeId, PAYLOAD_LEN};
use rtpvisor_actors::rtp::HEADER_LEN;

/// `PACKET_OUTGOING` of `sockaddr_ll.sll_pkttype`.
const PACKET_OUTGOING: u8 = 4;
const UDP: u8 = 17;

/// What the capture saw.
#[derive(Debug, Clone, Serialize)]
pub struct WireResult {
    /// Probe round trips on the wire, in microseconds (see [`crate::report::LatencyStats`]).
    pub rtt: crate::report::LatencyStats,
    pub probes_out: u64,
    pub echoes_in: u64,
    pub matched: u64,
    /// Datagrams to or from the service's ports that were not probes.
    pub other: u64,
}

pub struct WireCapture {
    stop: Arc<AtomicBool>,
    join: thread::JoinHandle<WireResult>,
}

impl WireCapture {
    /// Starts capturing datagrams to and from `ports` (the service's range, inclusive).
    pub fn start(ports: (u16, u16)) -> io::Result<WireCapture> {
        let fd = socket(AddressFamily::Packet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll)
            .map_err(io::Error::from)?;
        setsockopt(&fd, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)?;
        // Wakes up at least every 50 ms to see the stop flag.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::milliseconds(50)).map_err(io::Error::from)?;
        let _ = setsockopt(&fd, sockopt::RcvBufForce, &(16 << 20));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = thread::Builder::new().name("bench-wire".into()).spawn(move || capture(fd, ports, &flag))?;
        Ok(WireCapture { stop, join })
    }

    pub fn stop(self) -> WireResult {
        self.stop.store(true, Ordering::Relaxed);
        self.join.join().unwrap_or_else(|_| WireResult {
            rtt: Default::default(),
            probes_out: 0,
            echoes_in: 0,
            matched: 0,
            other: 0,
        })
    }
}

fn capture(fd: OwnedFd, ports: (u16, u16), stop: &AtomicBool) -> WireResult {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("constant bounds");
    let mut pending: HashMap<ProbeId, u64> = HashMap::new();
    let (mut out, mut inb, mut matched, mut other) = (0u64, 0u64, 0u64, 0u64);
    let mut buf = vec![0u8; 65536];
    let mut cmsg = crate::sys::cmsg_buffer();
    let ours = |p: u16| (ports.0..=ports.1).contains(&p);
    // Bounded by the stop flag (checked at least every 50 ms).
    while !stop.load(Ordering::Relaxed) {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, stamp, outgoing) = match recvmsg::<LinkAddr>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()) {
            Ok(m) => {
                let mut stamp = None;
                if let Ok(c) = m.cmsgs() {
                    for c in c {
                        if let ControlMessageOwned::ScmTimestampns(ts) = c {
                            stamp = Some(ts.num_nanoseconds() as u64);
                        }
                    }
                }
                let outgoing = m.address.is_some_and(|a| a.pkttype() == PACKET_OUTGOING);
                (m.bytes, stamp, outgoing)
            }
            Err(_) => continue, // timeout (EAGAIN) or EINTR
        };
        if outgoing {
            continue;
        }
        let Some(stamp) = stamp else { continue };
        let Some((sport, dport, payload)) = udp4(&buf[..len]) else { continue };
        let (from_us, to_us) = (ours(sport), ours(dport));
        if !from_us && !to_us {
            continue;
        }
        let id = (payload.len() == HEADER_LEN + PAYLOAD_LEN).then(|| peek_id(&payload[HEADER_LEN..])).flatten();
        let Some(id) = id else {
            other += 1;
            continue;
        };
        if from_us {
            out += 1;
            pending.insert(id, stamp);
        } else {
            inb += 1;
            if let Some(sent) = pending.remove(&id) {
                matched += 1;
                let _ = hist.record(stamp.saturating_sub(sent).clamp(1, 10_000_000_000));
            }
        }
    }
    WireResult {
        rtt: crate::report::LatencyStats::from_ns(&hist),
        probes_out: out,
        echoes_in: inb,
        matched,
        other,
    }
}

/// Source port, destination port and payload of an IPv4 UDP datagram (cooked capture: the
/// buffer starts at the IP header).
fn udp4(b: &[u8]) -> Option<(u16, u16, &[u8])> {
    if b.len() < 28 || b[0] >> 4 != 4 || b[9] != UDP {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let udp = b.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let payload = udp.get(8..ulen.max(8))?;
    Some((sport, dport, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_ipv4_udp_datagram() {
        let mut p = vec![0u8; 20 + 8 + 4];
        p[0] = 0x45;
        p[9] = UDP;
        p[20..22].copy_from_slice(&28000u16.to_be_bytes());
        p[22..24].copy_from_slice(&31000u16.to_be_bytes());
        p[24..26].copy_from_slice(&12u16.to_be_bytes());
        p[28..32].copy_from_slice(b"abcd");
        assert_eq!(udp4(&p), Some((28000, 31000, &b"abcd"[..])));
        p[9] = 6;
        assert_eq!(udp4(&p), None);
    }

    /// Needs root (a packet socket): `cargo test -p rtpvisor-bench -- --ignored`.
    #[test]
    #[ignore]
    fn matches_a_probe_and_its_echo_on_loopback() {
        use rtpvisor_actors::probe::{encode_payload, ProbeSecret};
        use rtpvisor_actors::rtp::{write_header, RtpHeader};
        let cap = WireCapture::start((28190, 28199)).expect("packet socket (root?)");
        std::thread::sleep(std::time::Duration::from_millis(100));
        let us = std::net::UdpSocket::bind("127.0.0.1:28199").unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut pkt = [0u8; HEADER_LEN + PAYLOAD_LEN];
        write_header(&mut pkt, &RtpHeader::pcmu(0, 0, 0)).unwrap();
        encode_payload(ProbeId { tag: 7, index: 3 }, &ProbeSecret::from_bits(1, 2), &mut pkt[HEADER_LEN..]);
        us.send_to(&pkt, far.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = far.recv_from(&mut buf).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        far.send_to(&buf[..n], from).unwrap();
        us.recv_from(&mut buf).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = cap.stop();
        assert_eq!((r.probes_out, r.echoes_in, r.matched), (1, 1, 1), "{r:?}");
        assert!(r.rtt.p50_us >= 2000.0, "{r:?}");
    }
}
