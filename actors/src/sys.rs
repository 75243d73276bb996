//! The socket syscalls the media engine needs beyond std and mio: kernel receive timestamps
//! (SO_TIMESTAMPNS) and batched receive and send (recvmmsg, sendmmsg) into buffers allocated
//! once. Also how a kernel stamp becomes an `Instant` ([`ClockPair`], pure arithmetic).
//!
//! Everything goes through `nix`'s safe wrappers except sendmmsg: nix's version reads its
//! own never-written address slots when it reports how many datagrams were sent (an
//! `assume_init` on uninitialised memory), so [`raw::sendmmsg`] calls libc directly; and
//! setpriority(2), which nix lacks. Those are the crate's only `unsafe`, with their safety
//! arguments.
//!
//! Also a thread's scheduling priority ([`lower_thread_priority`]), for the shared echo's
//! workers.
//!
//! Linux only. Knows nothing of RTP or calls, and allocates nothing per packet or per batch.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, SockaddrIn6, SockaddrLike,
};
use nix::sys::time::TimeSpec;

/// Largest datagram we read; RTP over UDP on an Ethernet path fits well within it (a longer
/// one is truncated to this, as `recv_from` would).
pub const MAX_DATAGRAM: usize = 2048;

/// A kernel stamp older than this (against the clocks read at wake-up) is taken for a
/// realtime clock step, not for a datagram that waited that long in the socket.
pub const MAX_STAMP_AGE: Duration = Duration::from_secs(1);

/// Asks the kernel to stamp every datagram this socket receives with the time it was queued
/// (SO_TIMESTAMPNS, CLOCK_REALTIME nanoseconds), so the time a packet waits for us to wake
/// up and read it is not counted as latency.
pub fn enable_rx_timestamps<S: AsFd>(sock: &S) -> io::Result<()> {
    setsockopt(sock, sockopt::ReceiveTimestampns, &true).map_err(io::Error::from)
}

/// Keeps the kernel's software receive timestamping switched on while it lives.
///
/// Linux turns stamping on for every socket (a static key) when the first socket asks for it,
/// but asynchronously (a work item), and off again when the last such socket closes. A
/// datagram that arrives while it is off is stamped when it is *read*, which would count our
/// wake-up delay as network latency again. The media engine holds one of these for its whole
/// life, so only the first moments after start can see that, not each first call after an
/// idle period.
pub struct TimestampingOn {
    _sock: std::net::UdpSocket,
}

impl TimestampingOn {
    /// A loopback socket that asks for stamps and is never read.
    pub fn new() -> io::Result<Self> {
        let sock = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        enable_rx_timestamps(&sock)?;
        Ok(TimestampingOn { _sock: sock })
    }
}

/// Both clocks read at (nearly) one moment: the bridge from a kernel stamp (CLOCK_REALTIME)
/// to an `Instant` (CLOCK_MONOTONIC), which is what the pure measuring code takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockPair {
    pub instant: Instant,
    /// Nanoseconds since the Unix epoch on CLOCK_REALTIME.
    pub real_ns: u64,
}

impl ClockPair {
    /// Reads both clocks (two vDSO calls, no syscall).
    pub fn now() -> Self {
        let real_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        ClockPair { instant: Instant::now(), real_ns }
    }

    /// The `Instant` of a kernel stamp: this reading's instant minus the stamp's age. None
    /// when the stamp is later than this reading or older than [`MAX_STAMP_AGE`] (either
    /// means the realtime clock stepped), or when the instant would precede the monotonic
    /// clock's origin.
    pub fn instant_of(&self, stamp_ns: u64) -> Option<Instant> {
        let age = Duration::from_nanos(self.real_ns.checked_sub(stamp_ns)?);
        if age > MAX_STAMP_AGE {
            return None;
        }
        self.instant.checked_sub(age)
    }

    /// When a datagram arrived, from its kernel stamp; this reading's instant when it has no
    /// usable stamp. A stamp later than this reading (the datagram came after the reading
    /// was taken, typically while a long wake-up was being worked through) reads the clocks
    /// again first, so it is converted rather than discarded.
    pub fn arrival(&mut self, stamp_ns: Option<u64>) -> Instant {
        let Some(stamp) = stamp_ns else { return self.instant };
        if stamp > self.real_ns {
            *self = ClockPair::now();
        }
        self.instant_of(stamp).unwrap_or(self.instant)
    }
}

/// Milliseconds since the Unix epoch (0 before it): the wall-clock times of the API
/// (`GET /events`, `GET /calls/ended`).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Lowers the calling thread's scheduling priority to `nice` (0 to 19): under CPU contention
/// the kernel then gives other threads at the default priority more of the CPU (at nice 10,
/// about ten times this thread's share). Raising a priority needs privileges; lowering does not.
pub fn lower_thread_priority(nice: i32) -> io::Result<()> {
    raw::lower_thread_priority(nice.clamp(0, 19)).map_err(io::Error::from)
}

/// Address family of a socket: which preallocated headers its datagrams are read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// One datagram of the last [`Batch::recv`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub data: &'a [u8],
    pub from: SocketAddr,
    /// Kernel receive stamp, realtime nanoseconds (None: the socket does not stamp).
    pub stamp_ns: Option<u64>,
    /// The datagram was longer than [`MAX_DATAGRAM`]: `data` is its first part only.
    pub truncated: bool,
    /// Left out of [`Batch::send_back`] ([`Batch::skip`]).
    pub skipped: bool,
}

/// Up to `N` datagrams read with one recvmmsg (and, for an echo, sent back with sendmmsg),
/// with every buffer and header allocated once, in [`Batch::new`].
///
/// Headers are kept per address family because nix's `MultiHeaders` keeps the lengths the
/// kernel wrote back (`msg_namelen`, `msg_controllen`) from one call to the next: an IPv4
/// datagram would leave too little room for the next IPv6 address. For the same reason a
/// stamping batch must only read sockets that stamp ([`enable_rx_timestamps`]): a datagram
/// without a stamp leaves its slot no room for the next one's. [`Batch::repair`] rebuilds the
/// headers if that ever happened.
pub struct Batch<const N: usize> {
    bufs: Box<[[u8; MAX_DATAGRAM]; N]>,
    len: [usize; N],
    stamp: [Option<u64>; N],
    /// MSG_TRUNC: the datagram did not fit its buffer.
    trunc: [bool; N],
    /// Left out of [`Batch::send_back`] ([`Batch::skip`]): an echo's refused datagrams.
    skip: [bool; N],
    /// Senders, in nix's form so an echo can send back without converting.
    from4: [Option<SockaddrIn>; N],
    from6: [Option<SockaddrIn6>; N],
    /// Datagrams read by the last `recv`, and the family of the socket they came from.
    count: usize,
    family: Family,
    stamps: bool,
    rx4: MultiHeaders<SockaddrIn>,
    rx6: MultiHeaders<SockaddrIn6>,
    /// A stamping socket delivered a datagram without a stamp: rebuild the headers.
    stale: bool,
}

impl<const N: usize> Batch<N> {
    /// `stamps`: the sockets read through this batch stamp their datagrams, and the stamps
    /// are to be read.
    pub fn new(stamps: bool) -> Self {
        let bufs: Box<[[u8; MAX_DATAGRAM]; N]> = vec![[0u8; MAX_DATAGRAM]; N]
            .into_boxed_slice()
            .try_into()
            .unwrap_or_else(|_| unreachable!("a vec of N elements"));
        Batch {
            bufs,
            len: [0; N],
            stamp: [None; N],
            trunc: [false; N],
            skip: [false; N],
            from4: [None; N],
            from6: [None; N],
            count: 0,
            family: Family::V4,
            stamps,
            rx4: MultiHeaders::preallocate(N, cmsg_space(stamps)),
            rx6: MultiHeaders::preallocate(N, cmsg_space(stamps)),
            stale: false,
        }
    }

    /// Reads up to `N` queued datagrams from a non-blocking socket of `family` in one
    /// syscall; `WouldBlock` when none was queued. Fewer than `N` means the socket was
    /// drained: with edge-triggered polling a later datagram raises a new edge, so there is
    /// no need to read again until then.
    pub fn recv<S: AsRawFd>(&mut self, sock: &S, family: Family) -> io::Result<usize> {
        self.count = 0;
        let fd = sock.as_raw_fd();
        let stamps = self.stamps;
        let slots = Slots { bufs: &mut self.bufs, len: &mut self.len, stamp: &mut self.stamp, trunc: &mut self.trunc };
        let (n, unstamped) = match family {
            Family::V4 => recv_into(fd, &mut self.rx4, slots, &mut self.from4, stamps)?,
            Family::V6 => recv_into(fd, &mut self.rx6, slots, &mut self.from6, stamps)?,
        };
        self.skip[..n].fill(false);
        self.stale |= unstamped;
        self.count = n;
        self.family = family;
        Ok(n)
    }

    /// Datagram `i` of the last `recv` (`i` below what it returned).
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.count {
            return None;
        }
        let from = match self.family {
            Family::V4 => SocketAddr::V4(SocketAddrV4::from(self.from4[i]?)),
            Family::V6 => SocketAddr::V6(SocketAddrV6::from(self.from6[i]?)),
        };
        Some(Datagram { data: &self.bufs[i][..self.len[i]], from, stamp_ns: self.stamp[i], truncated: self.trunc[i], skipped: self.skip[i] })
    }

    /// Leaves datagram `i` of the last `recv` out of [`Batch::send_back`].
    pub fn skip(&mut self, i: usize) {
        if i < self.count {
            self.skip[i] = true;
        }
    }

    /// Bytes of the datagrams of the last `recv` that are not [skipped](Batch::skip).
    pub fn bytes(&self) -> u64 {
        (0..self.count).filter(|&i| !self.skip[i]).map(|i| self.len[i] as u64).sum()
    }

    /// Sends every datagram of the last `recv` not [skipped](Batch::skip) back to its sender,
    /// unchanged (the bytes received, never more), with as few sendmmsg calls as the kernel
    /// allows. Returns how many could not be sent.
    pub fn send_back<S: AsRawFd>(&mut self, sock: &S) -> u64 {
        let fd = sock.as_raw_fd();
        let n = self.count;
        match self.family {
            Family::V4 => send_each(fd, &self.bufs, &self.len, &self.from4, &self.skip, n),
            Family::V6 => send_each(fd, &self.bufs, &self.len, &self.from6, &self.skip, n),
        }
    }

    /// Rebuilds the receive headers if a datagram without a stamp shrank their control space
    /// (see the type's doc). Allocates, so it is for housekeeping, not the packet path.
    pub fn repair(&mut self) {
        if std::mem::take(&mut self.stale) {
            self.rx4 = MultiHeaders::preallocate(N, cmsg_space(self.stamps));
            self.rx6 = MultiHeaders::preallocate(N, cmsg_space(self.stamps));
        }
    }
}

/// Room for one SO_TIMESTAMPNS control message per datagram, or none.
fn cmsg_space(stamps: bool) -> Option<Vec<u8>> {
    stamps.then(|| nix::cmsg_space!(TimeSpec))
}

/// A batch's per-datagram arrays that one recvmmsg fills.
struct Slots<'a, const N: usize> {
    bufs: &'a mut [[u8; MAX_DATAGRAM]; N],
    len: &'a mut [usize; N],
    stamp: &'a mut [Option<u64>; N],
    trunc: &'a mut [bool; N],
}

/// One recvmmsg into `bufs`; returns how many datagrams came and whether one of them lacked
/// the stamp it should carry.
fn recv_into<S: SockaddrLike + Copy, const N: usize>(
    fd: RawFd,
    headers: &mut MultiHeaders<S>,
    slots: Slots<'_, N>,
    from: &mut [Option<S>; N],
    stamps: bool,
) -> io::Result<(usize, bool)> {
    let Slots { bufs, len, stamp, trunc } = slots;
    let mut iovs: [[IoSliceMut<'_>; 1]; N] = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
    let msgs = recvmmsg(fd, headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None).map_err(io::Error::from)?;
    let mut n = 0;
    let mut unstamped = false;
    for (i, m) in msgs.enumerate() {
        // Without MSG_TRUNC in the call's flags the kernel reports the bytes copied, at most
        // the buffer; the message's flags say whether the datagram was longer.
        len[i] = m.bytes.min(MAX_DATAGRAM);
        trunc[i] = m.flags.contains(MsgFlags::MSG_TRUNC);
        from[i] = m.address;
        stamp[i] = if stamps {
            m.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => timespec_ns(&ts),
                    _ => None,
                })
            })
        } else {
            None
        };
        unstamped |= stamps && stamp[i].is_none();
        n = i + 1;
    }
    Ok((n, unstamped))
}

/// Sends `bufs[i][..len[i]]` to `to[i]` for every `i < count` not marked in `skip`; returns
/// the number not sent. A datagram the kernel refuses is counted and skipped, like a failed
/// `send_to`; a full send buffer (`EAGAIN`) drops what is left of the batch (skipped ones not
/// counted). A slot without an address (cannot happen after a successful `recv`) is counted
/// as not sent.
fn send_each<S: SockaddrLike + Copy, const N: usize>(
    fd: RawFd,
    bufs: &[[u8; MAX_DATAGRAM]; N],
    len: &[usize; N],
    to: &[Option<S>; N],
    skip: &[bool; N],
    count: usize,
) -> u64 {
    let mut start = 0;
    let mut failed = 0;
    let unsent = |from: usize| (from..count).filter(|&i| !skip[i]).count() as u64;
    while start < count {
        if skip[start] {
            start += 1;
            continue;
        }
        let end = (start..count).find(|&i| to[i].is_none() || skip[i]).unwrap_or(count);
        if end == start {
            failed += 1;
            start += 1;
            continue;
        }
        match raw::sendmmsg(fd, &bufs[start..end], &len[start..end], &to[start..end]) {
            Ok(0) => {
                failed += unsent(start);
                break;
            }
            Ok(m) => start += m,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                failed += unsent(start);
                break;
            }
            Err(_) => {
                failed += 1;
                start += 1;
            }
        }
    }
    failed
}

/// The crate's only `unsafe` code.
#[allow(unsafe_code)]
mod raw {
    use super::{Errno, RawFd, SockaddrLike, MAX_DATAGRAM};

    /// setpriority(2) of the calling thread, which nix does not wrap. On Linux a thread has a
    /// nice value of its own, and `who` 0 with PRIO_PROCESS names the calling thread only
    /// (setpriority(2), NOTES).
    pub(super) fn lower_thread_priority(nice: i32) -> Result<(), Errno> {
        // SAFETY: setpriority takes three integers and touches no memory of ours.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if r < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    /// Most datagrams one call sends (the batches are smaller).
    const MAX_BATCH: usize = 64;

    /// One sendmmsg(2) of `bufs[i][..len[i]]` to `to[i]` (every `to[i]` is `Some`; at most
    /// [`MAX_BATCH`] datagrams, more are left for the next call), non-blocking. Returns how
    /// many datagrams the kernel took (the first ones), or the error of the first that failed.
    pub(super) fn sendmmsg<S: SockaddrLike>(
        fd: RawFd,
        bufs: &[[u8; MAX_DATAGRAM]],
        len: &[usize],
        to: &[Option<S>],
    ) -> Result<usize, Errno> {
        let n = bufs.len().min(len.len()).min(to.len()).min(MAX_BATCH);
        // Zeroed plain C structs: every pointer null, every length 0 (a valid, empty message).
        let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_BATCH];
        // SAFETY: mmsghdr is a plain C struct of integers and pointers, for which all-zero
        // bytes are a valid value.
        let mut msgs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            let Some(addr) = &to[i] else { return Err(Errno::EDESTADDRREQ) };
            let data = &bufs[i][..len[i].min(MAX_DATAGRAM)];
            iov[i] = libc::iovec { iov_base: data.as_ptr().cast_mut().cast(), iov_len: data.len() };
            msgs[i].msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            msgs[i].msg_hdr.msg_namelen = addr.len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..n]` point at `n` iovecs in `iov` and at addresses in `to`, each
        // valid for its stated length and borrowed for the whole call; the data they point at
        // lives in `bufs`, also borrowed. For sendmmsg the kernel only reads the messages'
        // names, iovecs and data (never writes through `iov_base` or `msg_name`; it writes
        // only `msg_len` of each mmsghdr, which `msgs` owns mutably). No control data
        // (`msg_control` null, length 0). `n <= MAX_BATCH` = the arrays' length.
        let sent = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
        if sent < 0 {
            Err(Errno::last())
        } else {
            Ok(sent as usize)
        }
    }
}

fn timespec_ns(ts: &TimeSpec) -> Option<u64> {
    let secs = u64::try_from(ts.tv_sec()).ok()?;
    let nanos = u64::try_from(ts.tv_nsec()).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair_at(instant: Instant, real_ns: u64) -> ClockPair {
        ClockPair { instant, real_ns }
    }

    #[test]
    fn a_stamp_becomes_the_instant_that_much_earlier() {
        let t = Instant::now();
        let c = pair_at(t, 1_700_000_000_000_000_000);
        assert_eq!(c.instant_of(c.real_ns), Some(t));
        assert_eq!(c.instant_of(c.real_ns - 2_500_000), Some(t - Duration::from_micros(2_500)));
        assert_eq!(c.instant_of(c.real_ns - 1), Some(t - Duration::from_nanos(1)));
    }

    #[test]
    fn implausible_stamps_are_refused() {
        let t = Instant::now() + Duration::from_secs(5);
        let c = pair_at(t, 1_700_000_000_000_000_000);
        assert_eq!(c.instant_of(c.real_ns + 1), None, "in the future");
        let limit = MAX_STAMP_AGE.as_nanos() as u64;
        assert_eq!(c.instant_of(c.real_ns - limit), Some(t - MAX_STAMP_AGE), "exactly the limit");
        assert_eq!(c.instant_of(c.real_ns - limit - 1), None, "older than the limit");
        assert_eq!(c.instant_of(0), None, "the epoch");
    }

    #[test]
    fn arrival_falls_back_to_the_reading_and_rereads_for_later_stamps() {
        let t = Instant::now();
        let mut c = pair_at(t, 1_000_000_000_000);
        assert_eq!(c.arrival(None), t);
        assert_eq!(c.arrival(Some(c.real_ns - 1_000)), t - Duration::from_micros(1));
        assert_eq!(c.arrival(Some(1)), t, "a clock step: the reading's instant");
        // A stamp after the reading: the clocks are read again, and a real, current stamp
        // then converts to an instant between the old and the new reading.
        let mut c = ClockPair::now();
        let before = c.instant;
        std::thread::sleep(Duration::from_millis(2));
        let stamp = ClockPair::now().real_ns;
        let at = c.arrival(Some(stamp));
        assert!(c.instant > before, "re-read");
        assert!(at > before && at <= c.instant, "{before:?} < {at:?} <= {:?}", c.instant);
    }

    #[test]
    fn timespecs_convert_to_nanoseconds() {
        assert_eq!(timespec_ns(&TimeSpec::new(2, 5)), Some(2_000_000_005));
        assert_eq!(timespec_ns(&TimeSpec::new(-1, 0)), None);
    }

    fn stamped_socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_nonblocking(true).unwrap();
        enable_rx_timestamps(&s).unwrap();
        s
    }

    /// Holds stamping on and waits (bounded) until the kernel stamps on arrival: a datagram
    /// left 5 ms in the socket carries a stamp at least 4 ms before it is read.
    fn stamping_on() -> TimestampingOn {
        let on = TimestampingOn::new().unwrap();
        let rx = stamped_socket();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch: Batch<1> = Batch::new(true);
        for _ in 0..200 {
            tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let read = ClockPair::now();
            assert_eq!(batch.recv(&rx, Family::V4).unwrap(), 1);
            let stamp = batch.get(0).unwrap().stamp_ns.unwrap();
            if stamp + 4_000_000 <= read.real_ns {
                return on;
            }
        }
        panic!("the kernel did not start stamping on arrival within 1 s");
    }

    #[test]
    fn a_batch_reads_what_is_queued_with_kernel_stamps() {
        let _on = stamping_on();
        let rx = stamped_socket();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch: Batch<4> = Batch::new(true);
        assert_eq!(batch.recv(&rx, Family::V4).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        let sent = ClockPair::now();
        for i in 0..3u8 {
            tx.send_to(&[i; 10], to).unwrap();
        }
        // The datagrams wait in the socket; their stamps must not include the wait.
        std::thread::sleep(Duration::from_millis(30));
        let mut now = ClockPair::now();
        assert_eq!(batch.recv(&rx, Family::V4).unwrap(), 3, "fewer than the capacity: drained");
        for i in 0..3 {
            let d = batch.get(i).unwrap();
            assert_eq!(d.data, &[i as u8; 10]);
            assert_eq!(d.from, tx.local_addr().unwrap());
            let stamp = d.stamp_ns.expect("stamped");
            assert!(stamp >= sent.real_ns && stamp <= now.real_ns, "stamp {stamp} sent {} now {} (stamp - sent = {} ns)", sent.real_ns, now.real_ns, stamp as i64 - sent.real_ns as i64);
            let at = now.arrival(Some(stamp));
            assert!(now.instant - at >= Duration::from_millis(25), "{:?}", now.instant - at);
        }
        assert!(batch.get(3).is_none());
        assert!(!batch.stale);

        // More than the capacity: a full batch, then the rest.
        for i in 0..6u8 {
            tx.send_to(&[i; 3], to).unwrap();
        }
        assert_eq!(batch.recv(&rx, Family::V4).unwrap(), 4);
        assert_eq!(batch.recv(&rx, Family::V4).unwrap(), 2);
        assert_eq!(batch.get(1).unwrap().data, &[5; 3]);
        assert!(batch.get(1).unwrap().stamp_ns.is_some(), "stamps survive reuse of the headers");
    }

    #[test]
    fn a_socket_without_stamps_marks_the_batch_for_repair() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch: Batch<2> = Batch::new(true);
        tx.send_to(b"x", rx.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv(&rx, Family::V4).unwrap(), 1);
        assert_eq!(batch.get(0).unwrap().stamp_ns, None);
        assert!(batch.stale);
        batch.repair();
        assert!(!batch.stale);
        // The repaired headers read stamps again.
        let stamped = stamped_socket();
        tx.send_to(b"y", stamped.local_addr().unwrap()).unwrap();
        assert_eq!(batch.recv(&stamped, Family::V4).unwrap(), 1);
        assert!(batch.get(0).unwrap().stamp_ns.is_some());
    }

    #[test]
    fn skipped_datagrams_are_not_sent_back_and_truncation_is_flagged() {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        echo.set_nonblocking(true).unwrap();
        let to = echo.local_addr().unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        client.send_to(&[1u8; 10], to).unwrap();
        client.send_to(&[2u8; MAX_DATAGRAM + 500], to).unwrap();
        client.send_to(&[3u8; 30], to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut batch: Batch<8> = Batch::new(false);
        assert_eq!(batch.recv(&echo, Family::V4).unwrap(), 3);
        let big = batch.get(1).unwrap();
        assert!(big.truncated, "longer than the buffer");
        assert_eq!(big.data.len(), MAX_DATAGRAM, "only what fits");
        assert!(!batch.get(0).unwrap().truncated && !batch.get(2).unwrap().truncated);
        batch.skip(1);
        batch.skip(99); // out of range: ignored
        assert!(batch.get(1).unwrap().skipped);
        assert_eq!(batch.bytes(), 40, "skipped ones are not counted");
        assert_eq!(batch.send_back(&echo), 0, "a skipped datagram is no failure");
        let mut buf = [0u8; 4096];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[1u8; 10]);
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[3u8; 30]);
        assert!(client.recv_from(&mut buf).is_err(), "nothing else came back");
        // The next read starts with nothing skipped.
        client.send_to(&[4u8; 5], to).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(batch.recv(&echo, Family::V4).unwrap(), 1);
        assert!(!batch.get(0).unwrap().skipped);
    }

    /// Says on the terminal, past the test harness's capture of `eprintln!` (which a passing
    /// test never shows), that part of a test did not run and why.
    fn say_skipped(what: &str, why: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
    }

    #[test]
    fn send_back_reflects_each_datagram_to_its_sender_ipv4_and_ipv6() {
        for any in ["127.0.0.1:0", "[::1]:0"] {
            let echo = match UdpSocket::bind(any) {
                Ok(echo) => echo,
                Err(e) if any.starts_with('[') => {
                    // scripts/isolated.sh gives its namespace ::1 wherever the kernel has IPv6.
                    say_skipped("sys::send_back over IPv6", &format!("no IPv6 on loopback here (bind {any}: {e})"));
                    continue;
                }
                Err(e) => panic!("bind {any}: {e}"),
            };
            echo.set_nonblocking(true).unwrap();
            let family = Family::of(&echo.local_addr().unwrap());
            let clients: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind(any).unwrap()).collect();
            for (i, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                c.send_to(&vec![i as u8; 100 + i], echo.local_addr().unwrap()).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
            let mut batch: Batch<8> = Batch::new(false);
            assert_eq!(batch.recv(&echo, family).unwrap(), 3);
            assert_eq!(batch.get(0).unwrap().stamp_ns, None);
            assert_eq!(batch.send_back(&echo), 0);
            let mut buf = [0u8; 2048];
            for (i, c) in clients.iter().enumerate() {
                let (n, from) = c.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &vec![i as u8; 100 + i][..]);
                assert_eq!(from, echo.local_addr().unwrap());
            }
        }
    }
}
