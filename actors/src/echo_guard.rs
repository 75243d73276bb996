//! The shared echo's safeguards, as pure decisions: which datagrams the reflector (UDP 4000)
//! answers. A UDP echo that answers anyone is a reflector for spoofed traffic: an attacker
//! sends with a victim's address as the source and the echo floods the victim, or points two
//! echoes at each other (the old chargen/echo loop). So, per datagram, in this order:
//!
//! 1. **Allow-list** ([`AllowList`], CIDRs, IPv4 and IPv6): a source outside it is dropped
//!    (`not_allowed`) and never enters the per-source table, so a spoofed flood from outside
//!    cannot push a legitimate source out of it.
//! 2. **Size**: a datagram above `max_bytes` (or one the socket had to truncate) is dropped
//!    (`too_large`): RTP of a call fits an Ethernet frame; bigger ones are not media.
//! 3. **Rate** (a [`TokenBucket`] per source address and port): above `rate_pps` with a burst
//!    of `burst`, dropped (`rate_limited`). Keyed by address *and port* because one Asterisk
//!    sends every shared-echo call from its own port of one address: a per-address limit
//!    would cut calls as their number grows, a per-(address, port) one fits an RTP stream.
//!
//! The echo reflects what it accepts as it came, never more bytes than it received.
//!
//! Bounded memory whatever the number of sources: the per-source state is a fixed table of
//! [`TABLE_SLOTS`] entries in sets of [`WAYS`], allocated once; a source hashes (with a
//! per-process random seed, so sources cannot be chosen to collide) to one set, and a new one
//! takes the least recently seen entry of its set. An evicted source starts again with a full
//! bucket: under more live sources than the table holds the limit loosens for them (fails
//! open for calls), it never blocks one that keeps to its rate. Nothing here allocates after
//! construction, and no IO: the caller passes the time as an `Instant`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Instant;

/// Entries of the per-source table (a power of two).
pub const TABLE_SLOTS: usize = 4096;
/// Entries per set: a source lives in one set and evicts the least recently seen of it.
pub const WAYS: usize = 8;
const SETS: usize = TABLE_SLOTS / WAYS;
/// Tokens are kept in billionths, so refills of a few nanoseconds are not lost to rounding.
const NANO: u64 = 1_000_000_000;

/// One network: an address and a prefix length. Written `10.0.0.0/8`, `::1/128`, or a bare
/// address (a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a CIDR or allow-list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR (like 10.0.0.0/8 or fd00::/8)")]
    NotAnAddress(String),
    #[error("prefix length /{prefix} is too long for {net} (at most /{max})")]
    PrefixTooLong { net: IpAddr, prefix: u8, max: u8 },
    /// Strict, like Python's `ipaddress`: `10.0.0.1/8` is more likely a typo than a wish to
    /// allow all of 10/8.
    #[error("{given} has host bits set; the network is {net}/{prefix}")]
    HostBits { given: String, net: IpAddr, prefix: u8 },
    #[error("the list is empty; name at least one network (127.0.0.1/32 allows only this host)")]
    Empty,
}

impl Cidr {
    pub fn new(net: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError::PrefixTooLong { net, prefix, max });
        }
        let masked = mask(net, prefix);
        if masked != net {
            return Err(CidrError::HostBits { given: format!("{net}/{prefix}"), net: masked, prefix });
        }
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` is in this network. An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a
    /// dual-stack `[::]` socket reports for IPv4 senders) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.contains_canonical(canonical(ip))
    }

    fn contains_canonical(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => bits4(a) & mask4(self.prefix) == bits4(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask6(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// Covers every address of its family (`0.0.0.0/0`, `::/0`).
    pub fn is_everything(&self) -> bool {
        self.prefix == 0
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let bad = || CidrError::NotAnAddress(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                let p = p.trim();
                // Digits only: `u8::from_str` would take "+8".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (a.trim(), Some(p.parse::<u8>().map_err(|_| bad())?))
            }
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = prefix.unwrap_or(if net.is_ipv4() { 32 } else { 128 });
        Cidr::new(net, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The networks the echo answers: comma-separated [`Cidr`]s. At most a few entries in
/// practice; matching is a scan (a handful of compares per datagram).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<Cidr>,
}

impl AllowList {
    /// The built-in default: this host only (`127.0.0.0/8,::1/128`). See the README for why.
    pub fn loopback() -> AllowList {
        AllowList {
            nets: vec![
                Cidr { net: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix: 8 },
                Cidr { net: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix: 128 },
            ],
        }
    }

    /// Every address, IPv4 and IPv6: no allow-list.
    pub fn everything() -> AllowList {
        AllowList {
            nets: vec![
                Cidr { net: IpAddr::V4(Ipv4Addr::UNSPECIFIED), prefix: 0 },
                Cidr { net: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix: 0 },
            ],
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains_canonical(ip))
    }

    /// Both families entirely: the list filters nothing.
    pub fn is_everything(&self) -> bool {
        let v4 = self.nets.iter().any(|n| n.is_everything() && n.net.is_ipv4());
        let v6 = self.nets.iter().any(|n| n.is_everything() && n.net.is_ipv6());
        v4 && v6
    }

    pub fn nets(&self) -> &[Cidr] {
        &self.nets
    }
}

impl FromStr for AllowList {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<AllowList, CidrError> {
        let nets = s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect::<Result<Vec<Cidr>, _>>()?;
        if nets.is_empty() {
            return Err(CidrError::Empty);
        }
        Ok(AllowList { nets })
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn bits4(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0)
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(bits4(a) & mask4(prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask6(prefix))),
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` held; one token per datagram.
/// Integer arithmetic in billionths of a token, so it is exact for any rate and interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Billionths of a token held.
    nanotokens: u64,
    /// When `nanotokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { nanotokens: u64::from(burst) * NANO, at: now }
    }

    /// Refills for the time since the last call (a `now` earlier than that refills nothing)
    /// and takes one token if there is one.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> bool {
        let cap = u64::from(burst) * NANO;
        if let Some(dt) = now.checked_duration_since(self.at) {
            // rate <= u32::MAX tokens/s, so the product of nanoseconds (clamped to ~136 years)
            // and rate fits u128; the cap is what is ever kept.
            let add = dt.as_nanos().min(u128::from(u64::MAX)) * u128::from(rate);
            self.nanotokens = u128::from(self.nanotokens).saturating_add(add).min(u128::from(cap)) as u64;
            self.at = now;
        }
        if self.nanotokens >= NANO {
            self.nanotokens -= NANO;
            true
        } else {
            false
        }
    }

    /// Whole tokens held (as of the last `take`).
    pub fn tokens(&self) -> u64 {
        self.nanotokens / NANO
    }
}

/// Why the echo did not answer a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    NotAllowed,
    RateLimited,
    TooLarge,
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Reflect,
    Drop(DropReason),
}

/// Datagrams not answered, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EchoDrops {
    /// From a source outside `echo.allow`.
    pub not_allowed: u64,
    /// Over the source's `echo.rate_pps` / `echo.burst`.
    pub rate_limited: u64,
    /// Above `echo.max_bytes`.
    pub too_large: u64,
}

impl EchoDrops {
    pub fn total(&self) -> u64 {
        self.not_allowed + self.rate_limited + self.too_large
    }

    fn count(&mut self, r: DropReason) {
        match r {
            DropReason::NotAllowed => self.not_allowed += 1,
            DropReason::RateLimited => self.rate_limited += 1,
            DropReason::TooLarge => self.too_large += 1,
        }
    }
}

/// The echo's limits (`echo.allow`, `echo.rate_pps`, `echo.burst`, `echo.max_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    pub allow: AllowList,
    /// Datagrams per second answered per source (address and port); 0: no rate limit.
    pub rate_pps: u32,
    /// Datagrams a source may send at once above its rate (the bucket's size), at least 1.
    pub burst: u32,
    /// Largest datagram answered, bytes.
    pub max_bytes: usize,
}

impl Default for GuardSettings {
    /// Loopback only, 200 datagrams/s per source with a burst of 400, 1500 bytes: a call sends
    /// 50 packets/s of ~172 bytes, so four times its rate and a second of catching up fit.
    fn default() -> Self {
        GuardSettings { allow: AllowList::loopback(), rate_pps: 200, burst: 400, max_bytes: 1500 }
    }
}

impl GuardSettings {
    /// No limit at all: every source, any rate, any size up to `largest` (what the socket
    /// reads). The engine then skips the guard entirely.
    pub fn off(largest: usize) -> GuardSettings {
        GuardSettings { allow: AllowList::everything(), rate_pps: 0, burst: 1, max_bytes: largest }
    }

    /// Whether these settings filter nothing for datagrams of up to `largest` bytes.
    pub fn is_off(&self, largest: usize) -> bool {
        self.allow.is_everything() && self.rate_pps == 0 && self.max_bytes >= largest
    }
}

/// A source's key in the table: its address (IPv4 mapped into IPv6) and port; port 0 with the
/// reserved address `::` never occurs as a sender, so it marks an empty entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    ip: u128,
    port: u16,
}

const EMPTY: Key = Key { ip: 0, port: 0 };

impl Key {
    fn of(from: SocketAddr) -> Key {
        let ip = match canonical(from.ip()) {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a),
        };
        Key { ip, port: from.port() }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Key,
    bucket: TokenBucket,
    /// When the source was last seen: the set evicts the smallest.
    seen: Instant,
}

/// The decisions for every datagram the echo reads, and their counts.
pub struct EchoGuard {
    settings: GuardSettings,
    seed: u64,
    table: Box<[Entry]>,
    drops: EchoDrops,
    /// The last source refused by the allow-list, for an operator's log line.
    last_refused: Option<SocketAddr>,
}

impl fmt::Debug for EchoGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoGuard").field("settings", &self.settings).field("drops", &self.drops).finish_non_exhaustive()
    }
}

impl EchoGuard {
    /// `seed` keys the table's hash (draw it at random, so nobody can pick sources that
    /// collide); `now` is any instant (the empty entries' time).
    pub fn new(settings: GuardSettings, seed: u64, now: Instant) -> EchoGuard {
        let empty = Entry { key: EMPTY, bucket: TokenBucket { nanotokens: 0, at: now }, seen: now };
        EchoGuard { settings, seed, table: vec![empty; TABLE_SLOTS].into_boxed_slice(), drops: EchoDrops::default(), last_refused: None }
    }

    pub fn settings(&self) -> &GuardSettings {
        &self.settings
    }

    /// Decides on one datagram of `len` bytes from `from` at `now` and counts a drop.
    /// `truncated`: the socket's buffer was too small for it (its real size is above `len`).
    pub fn check(&mut self, from: SocketAddr, len: usize, truncated: bool, now: Instant) -> Verdict {
        let verdict = self.decide(from, len, truncated, now);
        if let Verdict::Drop(r) = verdict {
            self.drops.count(r);
            if r == DropReason::NotAllowed {
                self.last_refused = Some(from);
            }
        }
        verdict
    }

    fn decide(&mut self, from: SocketAddr, len: usize, truncated: bool, now: Instant) -> Verdict {
        if !self.settings.allow.contains(from.ip()) {
            return Verdict::Drop(DropReason::NotAllowed);
        }
        if truncated || len > self.settings.max_bytes {
            return Verdict::Drop(DropReason::TooLarge);
        }
        if self.settings.rate_pps == 0 {
            return Verdict::Reflect;
        }
        let (rate, burst) = (self.settings.rate_pps, self.settings.burst);
        let e = self.entry(Key::of(from), now);
        e.seen = now;
        if e.bucket.take(rate, burst, now) {
            Verdict::Reflect
        } else {
            Verdict::Drop(DropReason::RateLimited)
        }
    }

    /// The source's entry: found in its set, or the set's least recently seen one, reset to a
    /// full bucket for it.
    fn entry(&mut self, key: Key, now: Instant) -> &mut Entry {
        let base = self.set_of(key) * WAYS;
        let burst = self.settings.burst;
        let set = &mut self.table[base..base + WAYS];
        let mut found = None;
        let mut victim = 0;
        for (i, e) in set.iter().enumerate() {
            if e.key == key {
                found = Some(i);
                break;
            }
            if e.key == EMPTY {
                victim = i;
                break;
            }
            if e.seen < set[victim].seen {
                victim = i;
            }
        }
        match found {
            Some(i) => &mut set[i],
            None => {
                let e = &mut set[victim];
                *e = Entry { key, bucket: TokenBucket::full(burst, now), seen: now };
                e
            }
        }
    }

    fn set_of(&self, key: Key) -> usize {
        // A keyed mix (SplitMix64's finaliser over key ^ seed): cheap, and without the seed
        // an outsider cannot tell which sources share a set.
        let mut z = (key.ip as u64) ^ ((key.ip >> 64) as u64).rotate_left(17) ^ (u64::from(key.port) << 48) ^ self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % SETS as u64) as usize
    }

    pub fn drops(&self) -> EchoDrops {
        self.drops
    }

    /// The last source the allow-list refused (for a log line), taken.
    pub fn take_last_refused(&mut self) -> Option<SocketAddr> {
        self.last_refused.take()
    }

    /// Entries of the per-source table: constant, [`TABLE_SLOTS`].
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Entries in use (sources tracked now), at most [`TABLE_SLOTS`].
    pub fn tracked(&self) -> usize {
        self.table.iter().filter(|e| e.key != EMPTY).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_match_and_print() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.255.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped IPv6 is IPv4");
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let host: Cidr = " 127.0.0.1 ".parse().unwrap();
        assert_eq!(host.to_string(), "127.0.0.1/32");
        assert!(host.contains("127.0.0.1".parse().unwrap()) && !host.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains("203.0.113.9".parse().unwrap()) && all4.is_everything());
        assert!("::/0".parse::<Cidr>().unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!("172.31.250.0/24".parse::<Cidr>().unwrap().contains("172.31.250.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_are_refused_with_a_reason() {
        for bad in ["", "10.0.0.0/", "10.0.0.0/x", "10.0.0/8", "host.example", "10.0.0.0/+8", "10.0.0.0/0008", "/8"] {
            assert!(matches!(bad.parse::<Cidr>(), Err(CidrError::NotAnAddress(_))), "{bad:?}");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "prefix length /33 is too long for 10.0.0.0 (at most /32)"
        );
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::PrefixTooLong { .. })));
        assert_eq!(
            "10.0.0.1/8".parse::<Cidr>().unwrap_err().to_string(),
            "10.0.0.1/8 has host bits set; the network is 10.0.0.0/8"
        );
        assert_eq!(" , ".parse::<AllowList>().unwrap_err(), CidrError::Empty);
    }

    #[test]
    fn allow_lists_parse_match_and_round_trip() {
        let l: AllowList = "127.0.0.0/8, ::1/128,172.31.250.0/24".parse().unwrap();
        assert_eq!(l.to_string(), "127.0.0.0/8,::1/128,172.31.250.0/24");
        assert_eq!(l.to_string().parse::<AllowList>().unwrap(), l);
        assert!(l.contains("172.31.250.7".parse().unwrap()));
        assert!(l.contains("::1".parse().unwrap()));
        assert!(!l.contains("192.168.1.1".parse().unwrap()));
        assert!(!l.is_everything());
        assert_eq!(AllowList::loopback().to_string(), "127.0.0.0/8,::1/128");
        assert!(AllowList::everything().is_everything());
        assert!(!"0.0.0.0/0".parse::<AllowList>().unwrap().is_everything(), "IPv6 still filtered");
        assert!("10.0.0.0/8,x".parse::<AllowList>().is_err());
    }

    #[test]
    fn a_bucket_gives_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(4, t0);
        assert_eq!((0..10).filter(|_| b.take(100, 4, t0)).count(), 4, "the burst");
        assert!(!b.take(100, 4, t0 + ms(9)), "a token every 10 ms");
        assert!(b.take(100, 4, t0 + ms(10)));
        assert!(!b.take(100, 4, t0 + ms(10)));
        // Idle for long: refilled to the burst, not beyond.
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(100, 4, t1)).count(), 4);
        // A time before the last one refills nothing and does not move the clock back.
        assert!(!b.take(100, 4, t0));
        assert!(b.take(100, 4, t1 + ms(10)));
        // Fractions add up: 3 ms steps at 100/s give one token every 10 ms on average.
        let mut b = TokenBucket { nanotokens: 0, at: t0 };
        let got = (1..=1000u64).filter(|i| b.take(100, 2, t0 + ms(3 * i))).count();
        assert_eq!(got, 300);
        assert_eq!(b.tokens(), 0);
    }

    #[test]
    fn a_bucket_survives_extreme_settings() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(u32::MAX, t0);
        assert!(b.take(u32::MAX, u32::MAX, t0 + Duration::from_secs(u64::MAX / 4)));
        let mut b = TokenBucket::full(0, t0);
        assert!(!b.take(u32::MAX, 0, t0 + Duration::from_secs(10)), "burst 0 holds nothing");
    }

    fn guard(allow: &str, rate: u32, burst: u32, max: usize) -> EchoGuard {
        let s = GuardSettings { allow: allow.parse().unwrap(), rate_pps: rate, burst, max_bytes: max };
        EchoGuard::new(s, 0x1234_5678, Instant::now())
    }

    #[test]
    fn the_guard_checks_allow_list_then_size_then_rate() {
        let t0 = Instant::now();
        let mut g = guard("127.0.0.1/32,::1/128", 50, 2, 1500);
        let ok = sa("127.0.0.1:5000");
        assert_eq!(g.check(sa("127.0.0.2:5000"), 100, false, t0), Verdict::Drop(DropReason::NotAllowed));
        assert_eq!(g.take_last_refused(), Some(sa("127.0.0.2:5000")));
        assert_eq!(g.take_last_refused(), None);
        assert_eq!(g.check(sa("[::ffff:127.0.0.1]:5000"), 100, false, t0), Verdict::Reflect, "mapped v4");
        assert_eq!(g.check(ok, 1501, false, t0), Verdict::Drop(DropReason::TooLarge));
        assert_eq!(g.check(ok, 1500, true, t0), Verdict::Drop(DropReason::TooLarge), "truncated");
        assert_eq!(g.check(ok, 1500, false, t0), Verdict::Reflect, "the second token: the mapped one took the first");
        assert_eq!(g.check(ok, 10, false, t0), Verdict::Drop(DropReason::RateLimited));
        assert_eq!(g.check(ok, 0, false, t0 + ms(20)), Verdict::Reflect, "one token per 20 ms");
        // Another port of the same address has a bucket of its own.
        assert_eq!(g.check(sa("127.0.0.1:5002"), 172, false, t0), Verdict::Reflect);
        assert_eq!(g.check(sa("[::1]:7"), 172, false, t0), Verdict::Reflect);
        assert_eq!(g.drops(), EchoDrops { not_allowed: 1, rate_limited: 1, too_large: 2 });
        assert_eq!(g.drops().total(), 4);
        // A disallowed source never takes an entry.
        let tracked = g.tracked();
        for p in 1..1000 {
            g.check(SocketAddr::from(([10, 0, 0, 1], p)), 10, false, t0);
        }
        assert_eq!(g.tracked(), tracked);
    }

    #[test]
    fn rate_zero_means_no_rate_limit_and_off_settings_are_recognised() {
        let t0 = Instant::now();
        let mut g = guard("127.0.0.0/8", 0, 1, 2048);
        assert!((0..10_000).all(|_| g.check(sa("127.0.0.1:1"), 2048, false, t0) == Verdict::Reflect));
        assert_eq!(g.tracked(), 0, "no rate: no state");
        assert!(GuardSettings::off(2048).is_off(2048));
        assert!(!GuardSettings::off(1500).is_off(2048));
        assert!(!GuardSettings::default().is_off(2048));
    }

    #[test]
    fn a_flooding_source_is_cut_to_its_rate_while_a_call_keeps_all_of_it() {
        let t0 = Instant::now();
        let mut g = guard("127.0.0.0/8", 200, 400, 1500);
        let (flood, call) = (sa("127.0.0.1:4444"), sa("127.0.0.1:31000"));
        let (mut flood_ok, mut call_ok) = (0, 0);
        // Two seconds: the flood sends every 100 us (10,000/s), the call every 20 ms (50/s).
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_micros(100 * i);
            flood_ok += u64::from(g.check(flood, 172, false, now) == Verdict::Reflect);
            if i % 200 == 0 {
                call_ok += u64::from(g.check(call, 172, false, now) == Verdict::Reflect);
            }
        }
        assert_eq!(call_ok, 100, "the call loses nothing");
        // rate x time + burst = 200 x 2 + 400, less the refill of the last step.
        assert!((799..=800).contains(&flood_ok), "{flood_ok}");
        assert_eq!(g.drops().rate_limited, 20_000 - flood_ok);
    }

    #[test]
    fn the_table_stays_bounded_with_100k_sources_and_keeps_the_active_ones() {
        let t0 = Instant::now();
        let mut g = guard("0.0.0.0/0,::/0", 200, 400, 1500);
        let call = sa("10.9.9.9:31000");
        let mut call_ok = 0;
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 10);
            let src = if i % 2 == 0 {
                SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), (i % 60_000) as u16 + 1))
            } else {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i))), 9)
            };
            assert_eq!(g.check(src, 100, false, now), Verdict::Reflect, "a new source starts with a full bucket");
            // The call talks every 20 ms (every 2,000 steps): seen recently, never evicted.
            if i % 2000 == 0 {
                call_ok += u32::from(g.check(call, 172, false, now) == Verdict::Reflect);
            }
            assert_eq!(g.table_len(), TABLE_SLOTS);
        }
        assert_eq!(call_ok, 50);
        assert_eq!(g.tracked(), TABLE_SLOTS, "full, and no bigger");
        assert_eq!(g.table_len(), TABLE_SLOTS);
        assert_eq!(g.drops(), EchoDrops::default());
    }

    #[test]
    fn an_evicted_source_starts_again_with_a_full_bucket() {
        let t0 = Instant::now();
        let mut g = guard("0.0.0.0/0", 1, 1, 1500);
        let a = sa("10.0.0.1:1");
        assert_eq!(g.check(a, 1, false, t0), Verdict::Reflect);
        assert_eq!(g.check(a, 1, false, t0), Verdict::Drop(DropReason::RateLimited));
        // Enough newer sources to push `a` out of its set whatever the hash.
        for i in 0..(TABLE_SLOTS as u32 * 8) {
            g.check(SocketAddr::from((Ipv4Addr::from(0x0b00_0000 + i), 1)), 1, false, t0 + ms(1));
        }
        assert_eq!(g.check(a, 1, false, t0 + ms(2)), Verdict::Reflect);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any text: a list or an error, never a panic; what parses prints back to itself.
        #[test]
        fn any_text_parses_or_is_refused(s in "\\PC{0,40}") {
            if let Ok(l) = s.parse::<AllowList>() {
                prop_assert_eq!(l.to_string().parse::<AllowList>().unwrap(), l);
            }
        }

        /// Every network contains its own address and the addresses that share its prefix.
        #[test]
        fn a_network_contains_what_shares_its_prefix(a in any::<u32>(), b in any::<u32>(), p in 0u8..=32) {
            let net = Ipv4Addr::from(a & mask4(p));
            let c: Cidr = format!("{net}/{p}").parse().unwrap();
            prop_assert!(c.contains(IpAddr::V4(net)));
            let inside = (a & mask4(p)) == (b & mask4(p));
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(b))), inside);
            prop_assert_eq!(c.contains(IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())), inside);
        }

        #[test]
        fn v6_networks_too(a in any::<u128>(), b in any::<u128>(), p in 0u8..=128) {
            let net = Ipv6Addr::from(a & mask6(p));
            let c: Cidr = format!("{net}/{p}").parse().unwrap();
            prop_assert!(c.contains(IpAddr::V6(net)));
            prop_assert_eq!(c.contains(IpAddr::V6(Ipv6Addr::from(b))), (a & mask6(p)) == (b & mask6(p)) && Ipv6Addr::from(b).to_ipv4_mapped().is_none());
        }

        /// Over any schedule of takes, a bucket never gives more than burst + rate x elapsed.
        #[test]
        fn a_bucket_never_gives_more_than_burst_plus_rate_times_time(
            rate in 1u32..100_000,
            burst in 0u32..1000,
            steps in proptest::collection::vec(0u64..5_000_000, 1..400),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::full(burst, t0);
            let mut t = t0;
            let mut given = 0u64;
            for dt in steps {
                t += Duration::from_nanos(dt);
                given += u64::from(b.take(rate, burst, t));
                let allowed = u128::from(burst) + (t - t0).as_nanos() * u128::from(rate) / u128::from(NANO);
                prop_assert!(u128::from(given) <= allowed, "{} > {}", given, allowed);
                prop_assert!(b.tokens() <= u64::from(burst));
            }
        }
    }
}
