//! A duplicating test peer on loopback, for the e2e tests of duplicate and loop handling
//! (there is no netem here): it sniffs the UDP datagrams from one address to another on `lo`
//! with a packet socket and re-injects each one once through a raw IP socket (`IPPROTO_RAW`,
//! which implies `IP_HDRINCL`) with the same source address and port, i.e. a spoofed copy
//! that the receiver cannot tell from a network duplicate. It can also send a spoofed
//! datagram of its own ([`send_spoofed`]).
//!
//! Its copies carry a marker (IP ID [`MARK_ID`] and TTL [`MARK_TTL`]) so it never duplicates
//! its own copies. Bounded: it stops by itself after a count or a time, whichever comes
//! first. Loopback only (127.0.0.0/8 both ways), and needs root (CAP_NET_RAW).
//!
//! No `#[test]` here: every e2e binary compiles `common`; the pure helpers are tested in
//! `tests/e2e_duplicates.rs`.

use std::io::{self, IoSliceMut};
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::{TimeVal, TimeValLike};

/// IP ID of our copies (with [`MARK_TTL`]: an original would need both by chance).
pub const MARK_ID: u16 = 0xd0f1;
/// TTL of our copies: loopback needs no hops, and senders use 64.
pub const MARK_TTL: u8 = 3;
/// `PACKET_OUTGOING` of `sockaddr_ll.sll_pkttype`: on `lo` every packet is seen twice, going
/// out and coming in; only the incoming one is kept.
const PACKET_OUTGOING: u8 = 4;
const UDP: u8 = 17;
const IP_HEADER: usize = 20;
const UDP_HEADER: usize = 8;

/// An IPv4 UDP datagram as the packet socket hands it over (the buffer starts at the IP
/// header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp4<'a> {
    pub from: SocketAddrV4,
    pub to: SocketAddrV4,
    pub id: u16,
    pub ttl: u8,
    pub payload: &'a [u8],
}

/// Parses an IPv4 packet carrying UDP; None for anything else or a truncated one.
pub fn parse_udp4(b: &[u8]) -> Option<Udp4<'_>> {
    if b.len() < IP_HEADER + UDP_HEADER || b[0] >> 4 != 4 || b[9] != UDP {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let ip = b.get(..total)?;
    let udp = ip.get(ihl..)?;
    if ihl < IP_HEADER || udp.len() < UDP_HEADER {
        return None;
    }
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let addr = |o: usize, p: &[u8]| SocketAddrV4::new([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]].into(), u16::from_be_bytes([p[0], p[1]]));
    Some(Udp4 {
        from: addr(12, &udp[0..2]),
        to: addr(16, &udp[2..4]),
        id: u16::from_be_bytes([ip[4], ip[5]]),
        ttl: ip[8],
        payload: udp.get(UDP_HEADER..ulen.max(UDP_HEADER))?,
    })
}

/// Builds an IPv4 UDP packet `from` -> `to` with the given IP ID and TTL, both checksums
/// computed (the kernel fills the IP one in again for a raw send; the UDP one it leaves).
pub fn build_udp4(from: SocketAddrV4, to: SocketAddrV4, id: u16, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let udp_len = UDP_HEADER + payload.len();
    let total = IP_HEADER + udp_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45; // version 4, 5 words of header
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = ttl;
    p[9] = UDP;
    p[12..16].copy_from_slice(&from.ip().octets());
    p[16..20].copy_from_slice(&to.ip().octets());
    let ip_sum = checksum(&[&p[..IP_HEADER]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    p[20..22].copy_from_slice(&from.port().to_be_bytes());
    p[22..24].copy_from_slice(&to.port().to_be_bytes());
    p[24..26].copy_from_slice(&(udp_len as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    // RFC 768: over the pseudo-header (addresses, zero, protocol, UDP length) and the datagram.
    let mut pseudo = [0u8; 12];
    pseudo[0..8].copy_from_slice(&p[12..20]);
    pseudo[9] = UDP;
    pseudo[10..12].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut udp_sum = checksum(&[&pseudo, &p[IP_HEADER..]]);
    if udp_sum == 0 {
        udp_sum = 0xffff; // 0 would mean "no checksum"
    }
    p[26..28].copy_from_slice(&udp_sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each but the last of
/// even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for w in &mut words {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn loopback(a: &SocketAddrV4) -> bool {
    a.ip().is_loopback()
}

fn raw_sender() -> io::Result<OwnedFd> {
    socket(AddressFamily::Inet, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::Raw).map_err(io::Error::from)
}

fn send_raw(fd: &OwnedFd, packet: &[u8], to: SocketAddrV4) -> io::Result<()> {
    // For a raw socket the port of the address is ignored; the destination is in the header.
    sendto(fd.as_raw_fd(), packet, &SockaddrIn::from(to), MsgFlags::empty()).map(drop).map_err(io::Error::from)
}

/// Sends one UDP datagram that claims to come from `from` (spoofed), on loopback only; it
/// carries the copy marker, so a running [`Duplicator`] does not copy it.
pub fn send_spoofed(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> io::Result<()> {
    if !loopback(&from) || !loopback(&to) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "spoofing only on loopback"));
    }
    send_raw(&raw_sender()?, &build_udp4(from, to, MARK_ID, MARK_TTL, payload), to)
}

/// What a [`Duplicator`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DupCounts {
    /// Datagrams `from` -> `to` seen (originals only).
    pub seen: u64,
    /// Copies sent.
    pub injected: u64,
    /// Copies the kernel refused.
    pub failed: u64,
}

/// Duplicates every datagram `from` -> `to` once, in a thread of its own, until `max` copies
/// are sent or `limit` has passed (or [`Duplicator::stop`]).
pub struct Duplicator {
    stop: Arc<AtomicBool>,
    join: thread::JoinHandle<DupCounts>,
}

impl Duplicator {
    pub fn start(from: SocketAddrV4, to: SocketAddrV4, max: u64, limit: Duration) -> io::Result<Duplicator> {
        if !loopback(&from) || !loopback(&to) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "duplicating only on loopback"));
        }
        let sniff = socket(AddressFamily::Packet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, SockProtocol::EthAll)
            .map_err(io::Error::from)?;
        // Wakes up at least every 50 ms to see the stop flag and the time limit.
        setsockopt(&sniff, sockopt::ReceiveTimeout, &TimeVal::milliseconds(50)).map_err(io::Error::from)?;
        let _ = setsockopt(&sniff, sockopt::RcvBufForce, &(4 << 20));
        let inject = raw_sender()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let join = thread::Builder::new()
            .name("test-dup".into())
            .spawn(move || duplicate(&sniff, &inject, from, to, max, Instant::now() + limit, &flag))?;
        Ok(Duplicator { stop, join })
    }

    /// Waits until it has stopped by itself (count or time).
    pub fn wait(self) -> DupCounts {
        self.join.join().expect("the duplicator thread panicked")
    }

    pub fn stop(self) -> DupCounts {
        self.stop.store(true, Ordering::Relaxed);
        self.wait()
    }
}

fn duplicate(
    sniff: &OwnedFd,
    inject: &OwnedFd,
    from: SocketAddrV4,
    to: SocketAddrV4,
    max: u64,
    until: Instant,
    stop: &AtomicBool,
) -> DupCounts {
    let mut c = DupCounts::default();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) && Instant::now() < until && c.injected + c.failed < max {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, outgoing) = match recvmsg::<LinkAddr>(sniff.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
            Ok(m) => (m.bytes, m.address.is_some_and(|a| a.pkttype() == PACKET_OUTGOING)),
            Err(_) => continue, // the 50 ms timeout (EAGAIN) or EINTR
        };
        if outgoing {
            continue;
        }
        let Some(d) = parse_udp4(&buf[..len]) else { continue };
        if d.from != from || d.to != to || (d.id == MARK_ID && d.ttl == MARK_TTL) {
            continue;
        }
        c.seen += 1;
        let copy = build_udp4(from, to, MARK_ID, MARK_TTL, d.payload);
        match send_raw(inject, &copy, to) {
            Ok(()) => c.injected += 1,
            Err(_) => c.failed += 1,
        }
    }
    c
}
