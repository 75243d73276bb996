//! Probe streams: what a probe packet carries and how its round trip is matched.
//!
//! rtpvisor's probe mode sends PCMU RTP (20 ms, 160-byte payload, clock 8000) toward the caller
//! through Asterisk; the far end echoes it back and we measure each packet's round trip.
//! Asterisk rewrites sequence numbers and SSRC (and clears the marker) but passes the payload
//! byte-identical, so a returned packet is recognised by its payload alone. No IO here: the
//! caller sends and receives, passes the time in as `Instant`s, and draws each stream's
//! [`ProbeSecret`] from the OS.
//!
//! # Payload layout (160 bytes, big-endian)
//!
//! ```text
//! offset  len  field
//!      0    4  magic b"RVPB" (RtpVisor ProBe)
//!      4    4  tag: the stream's per-call value (public: the call number)
//!      8    8  probe index: 0, 1, 2, ... within the stream
//!     16    8  auth: SipHash-2-4 of (tag, index) keyed with the stream's secret
//!     24  136  filler: a pattern derived from auth (see `filler_byte`)
//! ```
//!
//! Why the secret: magic, tag and index are public or guessable (the tag is the call number
//! `/channels` shows, indexes count up at 50 a second), so without it anyone who can send to
//! a call's port from Asterisk's address could forge returns and fake a healthy round trip.
//! The secret is 128 random bits drawn per stream, kept out of every API, log and `Debug`;
//! a payload whose auth does not match is `foreign`. The filler keeps the audio from being a
//! constant (any byte is a valid PCMU sample, so it plays as noise) and is checked too, so a
//! corrupted probe is foreign as well.

use std::time::{Duration, Instant};

use crate::rtp::{self, RtpHeader};

/// Packetisation time of a probe packet.
pub const PTIME: Duration = Duration::from_millis(20);
/// Payload bytes of a probe packet: 20 ms of 8 kHz PCMU.
pub const PAYLOAD_LEN: usize = 160;
/// RTP timestamp increment per packet.
pub const SAMPLES_PER_PACKET: u32 = 160;
/// A probe packet on the wire: fixed RTP header and payload.
pub const PACKET_LEN: usize = crate::rtp::HEADER_LEN + PAYLOAD_LEN;
/// First four payload bytes of every probe.
pub const MAGIC: [u8; 4] = *b"RVPB";
/// Send times remembered, one per probe index (index % RING_SLOTS).
pub const RING_SLOTS: usize = 512;
/// Longest timeout a stream accepts: what the ring covers at 20 ms pacing, less a margin of 12
/// slots (240 ms) for sends that run a little ahead of schedule. Longer timeouts are clamped.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(20 * (RING_SLOTS as u64 - 12));
/// Sending this many packets' worth behind schedule re-anchors it instead of catching up.
pub const MAX_BEHIND: u32 = 5;

const TAG_AT: usize = 4;
const INDEX_AT: usize = 8;
const AUTH_AT: usize = 16;
const FILLER_AT: usize = 24;

/// A stream's key for the probes' auth field. Drawn at random per stream by the caller
/// ([`ProbeSecret::random`]); never shown: its `Debug` is redacted and it has no accessor.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ProbeSecret([u64; 2]);

impl ProbeSecret {
    /// A key from these bits (tests; the engine uses [`ProbeSecret::random`]).
    pub fn from_bits(k0: u64, k1: u64) -> ProbeSecret {
        ProbeSecret([k0, k1])
    }

    /// 128 bits from the OS's random source (`getrandom(2)`: one syscall, no file).
    pub fn random() -> Result<ProbeSecret, getrandom::Error> {
        Ok(ProbeSecret([getrandom::u64()?, getrandom::u64()?]))
    }

    /// The auth field of probe `id`: SipHash-2-4 keyed with the secret, a PRF made for short
    /// inputs. std keeps it as `SipHasher`, deprecated only because `HashMap` moved on to an
    /// unnamed hasher, not for a weakness; its output is fixed by the algorithm.
    fn auth(&self, id: ProbeId) -> u64 {
        use std::hash::Hasher;
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.0[0], self.0[1]);
        h.write(&id.tag.to_be_bytes());
        h.write(&id.index.to_be_bytes());
        h.finish()
    }

    /// Deterministic start values for sequence number and timestamp (RFC 3550 wants them
    /// unpredictable).
    fn start_values(&self) -> (u16, u32) {
        let z = self.auth(ProbeId { tag: 0, index: u64::MAX });
        (z as u16, (z >> 32) as u32)
    }
}

impl std::fmt::Debug for ProbeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeSecret(***)")
    }
}

/// What an arriving payload turned out to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeOutcome {
    /// One of ours, back for the first time within the timeout.
    Returned {
        /// Time from send to this arrival.
        rtt: Duration,
        /// `rtt` is above the stream's late threshold.
        late: bool,
    },
    /// One of ours that already came back.
    Duplicate,
    /// One of ours that came back after being counted lost (or older than the ring remembers).
    Expired,
    /// Not a probe of this stream: wrong length, magic, tag, auth or filler, or an index
    /// never sent.
    Foreign,
}

/// Counters of one probe stream. `sent == returned + lost + in_flight` always.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProbeSnapshot {
    /// Probes written.
    pub sent: u64,
    /// Probes back within the timeout (each counted once).
    pub returned: u64,
    /// Probes not back within the timeout.
    pub lost: u64,
    /// Returned probes whose round trip was above the late threshold.
    pub late: u64,
    /// Probes sent, neither back nor lost yet.
    pub in_flight: u64,
    /// Extra copies of probes already returned.
    pub duplicates: u64,
    /// Probes that came back after being counted lost.
    pub expired_returns: u64,
    /// Payloads that were not probes of this stream (forged ones included: no valid auth).
    pub foreign: u64,
}

/// Identity of a probe payload, as decoded by [`decode_payload`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProbeId {
    /// The stream's tag.
    pub tag: u32,
    /// The probe's index within its stream.
    pub index: u64,
}

/// Where one sent probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Never used.
    Empty,
    InFlight,
    Returned,
    Lost,
}

/// One ring slot: the probe that last used it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Probe index; a slot is reused every [`RING_SLOTS`] probes, so this tells whose it is.
    index: u64,
    sent_at: Instant,
    state: SlotState,
}

/// One probe stream: builds probe packets on a 20 ms schedule and matches what comes back.
///
/// Send times live in a fixed ring of [`RING_SLOTS`] slots allocated at construction; nothing
/// on the per-packet path allocates.
#[derive(Clone)]
pub struct ProbeStream {
    /// Identifies this stream inside payloads, so two calls' probes never match each other.
    tag: u32,
    /// Keys each probe's auth field: without it nobody can make a payload we accept.
    secret: ProbeSecret,
    ssrc: u32,
    /// Clamped to [`MAX_TIMEOUT`] so the ring still remembers a probe until it times out.
    timeout: Duration,
    late_threshold: Duration,
    next_due: Instant,
    /// Index of the next probe to write; also how many were written.
    next_index: u64,
    seq: u16,
    rtp_ts: u32,
    /// Indices below this are returned or lost: where [`expire`](Self::expire) resumes.
    oldest_open: u64,
    ring: Box<[Slot]>,
    snap: ProbeSnapshot,
}

impl ProbeStream {
    /// `tag` identifies this stream inside payloads (a per-call value); `secret` keys every
    /// probe's auth field (draw it at random per stream); `ssrc` goes in the header. Probes
    /// not back within `timeout` (clamped to [`MAX_TIMEOUT`]) are lost; a round trip above
    /// `late_threshold` is late. The first packet is due at `start`.
    pub fn new(
        tag: u32,
        secret: ProbeSecret,
        ssrc: u32,
        timeout: Duration,
        late_threshold: Duration,
        start: Instant,
    ) -> Self {
        let empty = Slot {
            index: 0,
            sent_at: start,
            state: SlotState::Empty,
        };
        let (seq, rtp_ts) = secret.start_values();
        ProbeStream {
            tag,
            secret,
            ssrc,
            timeout: timeout.min(MAX_TIMEOUT),
            late_threshold,
            next_due: start,
            next_index: 0,
            // RFC 3550 wants unpredictable initial values: from the secret.
            seq,
            rtp_ts,
            oldest_open: 0,
            ring: vec![empty; RING_SLOTS].into_boxed_slice(),
            snap: ProbeSnapshot::default(),
        }
    }

    /// The tag written into every payload.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The key of the auth field (to rebuild the stream with the same one).
    pub fn secret(&self) -> ProbeSecret {
        self.secret
    }

    /// The SSRC written into every header.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The timeout in force, after clamping.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When the next packet is to be sent (start, start + 20 ms, ...).
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Writes the next probe packet (RTP header + payload) into `buf`, records its send time as
    /// `now`, advances the schedule by one [`PTIME`] and returns [`PACKET_LEN`].
    ///
    /// If `now` is more than [`MAX_BEHIND`] packets behind schedule (the caller stalled), the
    /// schedule restarts from `now` instead of bursting the missed packets out to catch up.
    /// A slot whose earlier probe is still in flight when it is reused (sending faster than
    /// pacing, or `expire` not called) counts that probe lost now.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`PACKET_LEN`]: a fixed-size buffer of the caller's, so a
    /// short one is a bug, not a runtime condition.
    pub fn write_next(&mut self, now: Instant, buf: &mut [u8]) -> usize {
        assert!(
            buf.len() >= PACKET_LEN,
            "probe buffer of {} bytes, needs {PACKET_LEN}",
            buf.len()
        );
        let index = self.next_index;
        let header = RtpHeader { marker: index == 0, ..RtpHeader::pcmu(self.seq, self.rtp_ts, self.ssrc) };
        let n = rtp::write_header(buf, &header).expect("length checked above");
        encode_payload(
            ProbeId {
                tag: self.tag,
                index,
            },
            &self.secret,
            &mut buf[n..PACKET_LEN],
        );

        let slot = &mut self.ring[ring_pos(index)];
        if slot.state == SlotState::InFlight {
            self.snap.in_flight -= 1;
            self.snap.lost += 1;
        }
        *slot = Slot {
            index,
            sent_at: now,
            state: SlotState::InFlight,
        };
        self.snap.sent += 1;
        self.snap.in_flight += 1;
        self.next_index += 1;
        self.seq = self.seq.wrapping_add(1);
        self.rtp_ts = self.rtp_ts.wrapping_add(SAMPLES_PER_PACKET);

        self.next_due = if now > self.next_due + PTIME * MAX_BEHIND {
            now + PTIME
        } else {
            self.next_due + PTIME
        };
        PACKET_LEN
    }

    /// A packet arrived: look at its RTP payload.
    pub fn on_payload(&mut self, payload: &[u8], now: Instant) -> ProbeOutcome {
        let id = match decode_payload(payload, &self.secret) {
            Some(id) if id.tag == self.tag && id.index < self.next_index => id,
            _ => {
                self.snap.foreign += 1;
                return ProbeOutcome::Foreign;
            }
        };
        if self.next_index - id.index > RING_SLOTS as u64 {
            // Its slot was reused, so the ring no longer says whether it returned before; it
            // was resolved long ago (returned, or lost by `expire` or by the reuse).
            self.snap.expired_returns += 1;
            return ProbeOutcome::Expired;
        }
        let timeout = self.timeout;
        let slot = &mut self.ring[ring_pos(id.index)];
        debug_assert_eq!(slot.index, id.index, "slot of a recent index belongs to it");
        match slot.state {
            SlotState::InFlight => {
                let rtt = now.saturating_duration_since(slot.sent_at);
                self.snap.in_flight -= 1;
                if rtt >= timeout {
                    // Back, but after the timeout: lost, whether or not `expire` ran yet, so
                    // the outcome does not depend on when the caller calls it.
                    slot.state = SlotState::Lost;
                    self.snap.lost += 1;
                    self.snap.expired_returns += 1;
                    return ProbeOutcome::Expired;
                }
                slot.state = SlotState::Returned;
                self.snap.returned += 1;
                let late = rtt > self.late_threshold;
                if late {
                    self.snap.late += 1;
                }
                ProbeOutcome::Returned { rtt, late }
            }
            SlotState::Returned => {
                self.snap.duplicates += 1;
                ProbeOutcome::Duplicate
            }
            SlotState::Lost => {
                self.snap.expired_returns += 1;
                ProbeOutcome::Expired
            }
            SlotState::Empty => {
                // Unreachable: every index below next_index was written. Count it as foreign
                // rather than panic on the packet path.
                self.snap.foreign += 1;
                ProbeOutcome::Foreign
            }
        }
    }

    /// Counts packets not back within `timeout` as lost; returns how many became lost now.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let mut newly_lost = 0;
        // Probes are sent in index order with non-decreasing times, so the first one still
        // in time ends the scan; resolved ones are skipped once, which keeps this amortised O(1).
        while self.oldest_open < self.next_index {
            let slot = &mut self.ring[ring_pos(self.oldest_open)];
            if slot.index == self.oldest_open && slot.state == SlotState::InFlight {
                if now.saturating_duration_since(slot.sent_at) < self.timeout {
                    break;
                }
                slot.state = SlotState::Lost;
                self.snap.in_flight -= 1;
                self.snap.lost += 1;
                newly_lost += 1;
            }
            self.oldest_open += 1;
        }
        newly_lost
    }

    /// Counters so far.
    pub fn snapshot(&self) -> ProbeSnapshot {
        self.snap
    }
}

impl std::fmt::Debug for ProbeStream {
    /// Everything but the 512 ring slots and the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeStream")
            .field("tag", &self.tag)
            .field("ssrc", &self.ssrc)
            .field("timeout", &self.timeout)
            .field("late_threshold", &self.late_threshold)
            .field("next_due", &self.next_due)
            .field("next_index", &self.next_index)
            .field("snapshot", &self.snap)
            .finish_non_exhaustive()
    }
}

/// Writes the payload of probe `id` of the stream keyed by `secret` into `out` (at least
/// [`PAYLOAD_LEN`] bytes; only the first [`PAYLOAD_LEN`] are written).
///
/// # Panics
///
/// If `out` is shorter than [`PAYLOAD_LEN`].
pub fn encode_payload(id: ProbeId, secret: &ProbeSecret, out: &mut [u8]) {
    let out = &mut out[..PAYLOAD_LEN];
    out[..TAG_AT].copy_from_slice(&MAGIC);
    out[TAG_AT..INDEX_AT].copy_from_slice(&id.tag.to_be_bytes());
    out[INDEX_AT..AUTH_AT].copy_from_slice(&id.index.to_be_bytes());
    let auth = secret.auth(id);
    out[AUTH_AT..FILLER_AT].copy_from_slice(&auth.to_be_bytes());
    for (i, b) in out[FILLER_AT..].iter_mut().enumerate() {
        *b = filler_byte(auth, i);
    }
}

/// Decodes a probe payload of the stream keyed by `secret`: `None` unless it is exactly
/// [`PAYLOAD_LEN`] bytes with the magic, the auth only that secret gives its tag and index,
/// and the filler that auth calls for.
pub fn decode_payload(payload: &[u8], secret: &ProbeSecret) -> Option<ProbeId> {
    let id = peek_id(payload)?;
    let payload: &[u8; PAYLOAD_LEN] = payload.try_into().ok()?;
    let auth = u64::from_be_bytes(payload[AUTH_AT..FILLER_AT].try_into().ok()?);
    if auth != secret.auth(id) {
        return None;
    }
    let filler_ok = payload[FILLER_AT..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == filler_byte(auth, i));
    filler_ok.then_some(id)
}

/// What a payload *claims* to be: tag and index of anything [`PAYLOAD_LEN`] bytes long with
/// the magic, verified by nothing. For tools that pair probes seen on the wire (a capture
/// has no secret); never to count a return.
pub fn peek_id(payload: &[u8]) -> Option<ProbeId> {
    let payload: &[u8; PAYLOAD_LEN] = payload.try_into().ok()?;
    if payload[..TAG_AT] != MAGIC {
        return None;
    }
    let tag = u32::from_be_bytes(payload[TAG_AT..INDEX_AT].try_into().ok()?);
    let index = u64::from_be_bytes(payload[INDEX_AT..AUTH_AT].try_into().ok()?);
    Some(ProbeId { tag, index })
}

/// Filler byte `i`: one byte of the seed, varied by position so the pattern does not repeat
/// every 8 bytes.
fn filler_byte(seed: u64, i: usize) -> u8 {
    (seed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(37)
}

fn ring_pos(index: u64) -> usize {
    (index % RING_SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpPacket;

    const TAG: u32 = 0xcafe_f00d;
    const SSRC: u32 = 0x1122_3344;
    const KEY: ProbeSecret = ProbeSecret([0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908]);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn stream(t0: Instant) -> ProbeStream {
        ProbeStream::new(TAG, KEY, SSRC, ms(2000), ms(300), t0)
    }

    /// Sends one probe at `now`, returning the payload as it would come back.
    fn send(s: &mut ProbeStream, now: Instant) -> [u8; PAYLOAD_LEN] {
        let mut buf = [0u8; PACKET_LEN];
        assert_eq!(s.write_next(now, &mut buf), PACKET_LEN);
        buf[rtp::HEADER_LEN..].try_into().unwrap()
    }

    fn assert_balanced(s: &ProbeStream) {
        let n = s.snapshot();
        assert_eq!(n.sent, n.returned + n.lost + n.in_flight, "{n:?}");
    }

    #[test]
    fn packet_layout() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut buf = [0u8; 200];
        assert_eq!(s.write_next(t0, &mut buf), PACKET_LEN);
        assert_eq!(
            buf[PACKET_LEN..],
            [0u8; 200 - PACKET_LEN],
            "nothing past the packet"
        );
        let p = RtpPacket::parse(&buf[..PACKET_LEN]).unwrap();
        assert_eq!(p.header.payload_type, rtp::PT_PCMU);
        assert_eq!(p.header.ssrc, SSRC);
        assert!(p.header.marker, "first packet carries the marker");
        assert_eq!(p.header_len, rtp::HEADER_LEN);
        assert_eq!(p.payload.len(), PAYLOAD_LEN);
        assert_eq!(&p.payload[..4], b"RVPB");
        assert_eq!(p.payload[4..8], TAG.to_be_bytes());
        assert_eq!(p.payload[8..16], 0u64.to_be_bytes());
        assert_eq!(
            decode_payload(p.payload, &KEY),
            Some(ProbeId { tag: TAG, index: 0 })
        );
    }

    #[test]
    fn headers_advance_by_one_packet() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let mut prev: Option<RtpHeader> = None;
        for i in 0..5u32 {
            let mut buf = [0u8; PACKET_LEN];
            s.write_next(t0 + PTIME * i, &mut buf);
            let h = RtpPacket::parse(&buf).unwrap().header;
            assert_eq!(h.marker, i == 0);
            if let Some(p) = prev {
                assert_eq!(h.sequence, p.sequence.wrapping_add(1));
                assert_eq!(h.timestamp, p.timestamp.wrapping_add(SAMPLES_PER_PACKET));
            }
            prev = Some(h);
        }
    }

    #[test]
    fn sequence_and_timestamp_wrap() {
        // A tag whose derived start values sit just below the wrap.
        let t0 = Instant::now();
        let mut s = ProbeStream::new(TAG, KEY, 1, ms(1000), ms(100), t0);
        s.seq = 0xfffe;
        s.rtp_ts = u32::MAX - 159;
        let mut seqs = [0u16; 4];
        let mut tss = [0u32; 4];
        for i in 0..4 {
            let mut buf = [0u8; PACKET_LEN];
            s.write_next(t0, &mut buf);
            let h = RtpPacket::parse(&buf).unwrap().header;
            seqs[i] = h.sequence;
            tss[i] = h.timestamp;
        }
        assert_eq!(seqs, [0xfffe, 0xffff, 0, 1]);
        assert_eq!(tss, [u32::MAX - 159, 0, 160, 320]);
    }

    #[test]
    fn payloads_differ_between_probes_and_streams() {
        let mut a = [0u8; PAYLOAD_LEN];
        let mut b = [0u8; PAYLOAD_LEN];
        let mut c = [0u8; PAYLOAD_LEN];
        encode_payload(ProbeId { tag: 1, index: 0 }, &KEY, &mut a);
        encode_payload(ProbeId { tag: 1, index: 1 }, &KEY, &mut b);
        encode_payload(ProbeId { tag: 2, index: 0 }, &KEY, &mut c);
        assert_ne!(a[FILLER_AT..], b[FILLER_AT..]);
        assert_ne!(a[FILLER_AT..], c[FILLER_AT..]);
        // Not a constant: many distinct byte values.
        let mut seen = [false; 256];
        for &x in &a[FILLER_AT..] {
            seen[usize::from(x)] = true;
        }
        assert!(seen.iter().filter(|&&x| x).count() > 50);
    }

    #[test]
    fn decode_rejects_bad_payloads() {
        let mut p = [0u8; PAYLOAD_LEN];
        let id = ProbeId {
            tag: TAG,
            index: 12345,
        };
        encode_payload(id, &KEY, &mut p);
        assert_eq!(decode_payload(&p, &KEY), Some(id));
        assert_eq!(decode_payload(&p[..159], &KEY), None, "short");
        let mut long = [0u8; PAYLOAD_LEN + 1];
        long[..PAYLOAD_LEN].copy_from_slice(&p);
        assert_eq!(decode_payload(&long, &KEY), None, "long");
        assert_eq!(decode_payload(&[], &KEY), None, "empty");
        let mut bad = p;
        bad[0] = b'X';
        assert_eq!(decode_payload(&bad, &KEY), None, "magic");
        let mut bad = p;
        bad[159] ^= 1;
        assert_eq!(decode_payload(&bad, &KEY), None, "filler");
        let mut bad = p;
        bad[15] ^= 1; // another index: its filler no longer matches
        assert_eq!(decode_payload(&bad, &KEY), None, "index");
        assert_eq!(decode_payload(&[0xff; PAYLOAD_LEN], &KEY), None, "PCMU silence");
    }

    /// What anyone could build before probes carried a secret: magic, the call's tag, an
    /// index, and a filler derived from those alone.
    fn forged_from_public_data(tag: u32, index: u64) -> [u8; PAYLOAD_LEN] {
        let mut p = [0u8; PAYLOAD_LEN];
        p[..4].copy_from_slice(&MAGIC);
        p[4..8].copy_from_slice(&tag.to_be_bytes());
        p[8..16].copy_from_slice(&index.to_be_bytes());
        for (i, b) in p[16..].iter_mut().enumerate() {
            *b = filler_byte(index ^ u64::from(tag), i);
        }
        p
    }

    #[test]
    fn returns_without_the_secret_are_foreign() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let real = send(&mut s, t0);
        send(&mut s, t0 + ms(20));
        for index in 0..4 {
            assert_eq!(s.on_payload(&forged_from_public_data(TAG, index), t0 + ms(30)), ProbeOutcome::Foreign);
        }
        // The same probe made with another key (another call's, or a guess).
        let mut other_key = [0u8; PAYLOAD_LEN];
        encode_payload(ProbeId { tag: TAG, index: 1 }, &ProbeSecret::from_bits(1, 2), &mut other_key);
        assert_eq!(s.on_payload(&other_key, t0 + ms(30)), ProbeOutcome::Foreign);
        // A real probe with its auth changed, or its index moved to a neighbour's.
        let mut bad = real;
        bad[AUTH_AT] ^= 0x80;
        assert_eq!(s.on_payload(&bad, t0 + ms(30)), ProbeOutcome::Foreign);
        let mut moved = real;
        moved[15] = 1;
        assert_eq!(s.on_payload(&moved, t0 + ms(30)), ProbeOutcome::Foreign);
        let n = s.snapshot();
        assert_eq!((n.returned, n.foreign, n.in_flight), (0, 7, 2));
        assert!(matches!(s.on_payload(&real, t0 + ms(40)), ProbeOutcome::Returned { .. }));
        // On the wire anyone can read what a probe claims, and nothing more.
        assert_eq!(peek_id(&real), Some(ProbeId { tag: TAG, index: 0 }));
        assert_eq!(peek_id(&forged_from_public_data(TAG, 3)), Some(ProbeId { tag: TAG, index: 3 }));
    }

    #[test]
    fn the_secret_never_shows() {
        let key = ProbeSecret::from_bits(0xdead_beef_dead_beef, 0x1234_5678_9abc_def0);
        let s = ProbeStream::new(TAG, key, SSRC, ms(2000), ms(300), Instant::now());
        for text in [format!("{key:?}"), format!("{s:?}"), format!("{s:#?}")] {
            for needle in ["deadbeef", "3735928559", "16045690984503098046", "123456789abcdef0", "1311768467463790320"] {
                assert!(!text.to_lowercase().contains(needle), "{text}");
            }
        }
        assert_eq!(format!("{key:?}"), "ProbeSecret(***)");
        let a = ProbeSecret::random().unwrap();
        let b = ProbeSecret::random().unwrap();
        assert_ne!(a, b, "128 random bits twice");
    }

    #[test]
    fn start_values_come_from_the_secret() {
        let t0 = Instant::now();
        let first = |k: ProbeSecret| {
            let mut s = ProbeStream::new(TAG, k, SSRC, ms(2000), ms(300), t0);
            let mut buf = [0u8; PACKET_LEN];
            s.write_next(t0, &mut buf);
            let h = RtpPacket::parse(&buf).unwrap().header;
            (h.sequence, h.timestamp)
        };
        assert_eq!(first(KEY), first(KEY));
        assert_ne!(first(KEY), first(ProbeSecret::from_bits(5, 6)));
    }

    #[test]
    fn returned_measures_rtt() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p0 = send(&mut s, t0);
        let p1 = send(&mut s, t0 + ms(20));
        assert_eq!(s.snapshot().in_flight, 2);
        assert_eq!(
            s.on_payload(&p1, t0 + ms(80)),
            ProbeOutcome::Returned {
                rtt: ms(60),
                late: false
            }
        );
        assert_eq!(
            s.on_payload(&p0, t0 + ms(400)),
            ProbeOutcome::Returned {
                rtt: ms(400),
                late: true
            }
        );
        let n = s.snapshot();
        assert_eq!(
            (n.sent, n.returned, n.late, n.in_flight, n.lost),
            (2, 2, 1, 0, 0)
        );
        assert_balanced(&s);
    }

    #[test]
    fn late_threshold_is_strictly_greater() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p = send(&mut s, t0);
        assert_eq!(
            s.on_payload(&p, t0 + ms(300)),
            ProbeOutcome::Returned {
                rtt: ms(300),
                late: false
            }
        );
    }

    #[test]
    fn arrival_before_send_is_zero_rtt() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p = send(&mut s, t0 + ms(10));
        assert_eq!(
            s.on_payload(&p, t0),
            ProbeOutcome::Returned {
                rtt: Duration::ZERO,
                late: false
            }
        );
    }

    #[test]
    fn duplicate_return() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p = send(&mut s, t0);
        assert!(matches!(
            s.on_payload(&p, t0 + ms(50)),
            ProbeOutcome::Returned { .. }
        ));
        assert_eq!(s.on_payload(&p, t0 + ms(51)), ProbeOutcome::Duplicate);
        assert_eq!(s.on_payload(&p, t0 + ms(5000)), ProbeOutcome::Duplicate);
        let n = s.snapshot();
        assert_eq!((n.returned, n.duplicates), (1, 2));
        assert_balanced(&s);
    }

    #[test]
    fn foreign_payloads() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p = send(&mut s, t0);
        let mut other = [0u8; PAYLOAD_LEN];
        encode_payload(
            ProbeId {
                tag: TAG + 1,
                index: 0,
            },
            &KEY,
            &mut other,
        );
        assert_eq!(s.on_payload(&other, t0), ProbeOutcome::Foreign, "other tag");
        let mut future = [0u8; PAYLOAD_LEN];
        encode_payload(ProbeId { tag: TAG, index: 1 }, &KEY, &mut future);
        assert_eq!(
            s.on_payload(&future, t0),
            ProbeOutcome::Foreign,
            "never sent"
        );
        assert_eq!(s.on_payload(&p[..100], t0), ProbeOutcome::Foreign, "short");
        assert_eq!(
            s.on_payload(&[0xff; 160], t0),
            ProbeOutcome::Foreign,
            "silence"
        );
        let n = s.snapshot();
        assert_eq!((n.foreign, n.in_flight), (4, 1));
        assert_balanced(&s);
    }

    #[test]
    fn expire_counts_lost_once() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p0 = send(&mut s, t0);
        let _p1 = send(&mut s, t0 + ms(20));
        let p2 = send(&mut s, t0 + ms(40));
        assert!(matches!(
            s.on_payload(&p2, t0 + ms(100)),
            ProbeOutcome::Returned { .. }
        ));
        assert_eq!(s.expire(t0 + ms(1999)), 0, "not yet");
        assert_eq!(s.expire(t0 + ms(2000)), 1, "p0 at exactly the timeout");
        assert_eq!(s.expire(t0 + ms(2020)), 1, "p1");
        assert_eq!(s.expire(t0 + ms(9000)), 0, "p2 returned, nothing left");
        let n = s.snapshot();
        assert_eq!((n.sent, n.returned, n.lost, n.in_flight), (3, 1, 2, 0));
        assert_eq!(s.on_payload(&p0, t0 + ms(9000)), ProbeOutcome::Expired);
        assert_eq!(s.snapshot().expired_returns, 1);
        assert_eq!(s.snapshot().lost, 2, "an expired return stays lost");
        assert_balanced(&s);
    }

    #[test]
    fn return_after_timeout_is_expired_even_before_expire_runs() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        let p = send(&mut s, t0);
        assert_eq!(s.on_payload(&p, t0 + ms(2000)), ProbeOutcome::Expired);
        let n = s.snapshot();
        assert_eq!(
            (n.returned, n.lost, n.expired_returns, n.in_flight),
            (0, 1, 1, 0)
        );
        assert_eq!(s.expire(t0 + ms(3000)), 0, "already lost");
        assert_eq!(s.on_payload(&p, t0 + ms(3000)), ProbeOutcome::Expired);
        assert_balanced(&s);
    }

    #[test]
    fn older_than_the_ring_is_expired() {
        let t0 = Instant::now();
        let mut s = ProbeStream::new(TAG, KEY, SSRC, ms(500), ms(300), t0);
        let first = send(&mut s, t0);
        let mut t = t0;
        for _ in 0..RING_SLOTS {
            t += PTIME;
            s.expire(t);
            send(&mut s, t);
        }
        assert_eq!(s.on_payload(&first, t), ProbeOutcome::Expired);
        let n = s.snapshot();
        assert_eq!(n.sent, RING_SLOTS as u64 + 1);
        assert_eq!(n.in_flight, 25, "the last 500 ms");
        assert_eq!(n.expired_returns, 1);
        assert_balanced(&s);
    }

    #[test]
    fn reused_slot_still_in_flight_is_lost_on_overwrite() {
        // The caller neither paces nor expires: the ring wraps with probes still in flight.
        let t0 = Instant::now();
        let mut s = stream(t0);
        let first = send(&mut s, t0);
        for _ in 0..RING_SLOTS {
            send(&mut s, t0);
        }
        let n = s.snapshot();
        assert_eq!((n.sent, n.lost, n.in_flight), (513, 1, 512));
        assert_eq!(s.on_payload(&first, t0), ProbeOutcome::Expired);
        assert_eq!(s.expire(t0 + ms(2000)), 512);
        assert_balanced(&s);
    }

    #[test]
    fn timeout_is_clamped_to_the_ring() {
        let t0 = Instant::now();
        let s = ProbeStream::new(TAG, KEY, SSRC, Duration::from_secs(3600), ms(300), t0);
        assert_eq!(s.timeout(), MAX_TIMEOUT);
        assert_eq!(MAX_TIMEOUT, Duration::from_secs(10));
        let s = ProbeStream::new(TAG, KEY, SSRC, ms(1500), ms(300), t0);
        assert_eq!(s.timeout(), ms(1500));
        assert_eq!((s.tag(), s.ssrc()), (TAG, SSRC));
    }

    #[test]
    fn clamped_timeout_is_covered_by_the_ring() {
        // At 20 ms pacing, a probe sent just before the wrap is still remembered at its timeout.
        let t0 = Instant::now();
        let mut s = ProbeStream::new(TAG, KEY, SSRC, Duration::from_secs(60), ms(300), t0);
        let p = send(&mut s, t0);
        while s.next_due() < t0 + MAX_TIMEOUT {
            let due = s.next_due();
            send(&mut s, due);
        }
        assert_eq!(s.snapshot().lost, 0);
        assert!(matches!(
            s.on_payload(&p, t0 + MAX_TIMEOUT - ms(1)),
            ProbeOutcome::Returned { .. }
        ));
    }

    #[test]
    fn schedule_advances_by_ptime() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        assert_eq!(s.next_due(), t0);
        send(&mut s, t0);
        assert_eq!(s.next_due(), t0 + ms(20));
        // Sending a little late does not shift the schedule.
        send(&mut s, t0 + ms(27));
        assert_eq!(s.next_due(), t0 + ms(40));
        // Nor does being exactly MAX_BEHIND packets behind.
        send(&mut s, t0 + ms(40) + PTIME * MAX_BEHIND);
        assert_eq!(s.next_due(), t0 + ms(60));
    }

    #[test]
    fn stall_reanchors_the_schedule() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        send(&mut s, t0);
        let after_stall = t0 + ms(20) + PTIME * MAX_BEHIND + ms(1);
        send(&mut s, after_stall);
        assert_eq!(s.next_due(), after_stall + PTIME, "no burst to catch up");
    }

    #[test]
    #[should_panic(expected = "probe buffer of 171 bytes")]
    fn short_buffer_panics() {
        let t0 = Instant::now();
        let mut s = stream(t0);
        s.write_next(t0, &mut [0u8; PACKET_LEN - 1]);
    }

    #[test]
    fn counters_balance_through_a_lossy_session() {
        // 2000 probes at 20 ms; a deterministic mix of returns (some late, some duplicated),
        // losses, returns after the timeout, and foreign packets.
        let t0 = Instant::now();
        let mut s = ProbeStream::new(TAG, KEY, SSRC, ms(1000), ms(150), t0);
        let mut pending: Vec<(Instant, [u8; PAYLOAD_LEN])> = Vec::new();
        let mut now = t0;
        for i in 0..2000u64 {
            now = s.next_due();
            let p = send(&mut s, now);
            match i % 10 {
                0 | 1 => {}                             // lost
                2 => pending.push((now + ms(1200), p)), // after the timeout
                3 => pending.push((now + ms(200), p)),  // late
                4 => {
                    pending.push((now + ms(50), p));
                    pending.push((now + ms(60), p)); // duplicated
                }
                _ => pending.push((now + ms(40 + i % 30), p)),
            }
            if i % 97 == 0 {
                pending.push((now, [0x55; PAYLOAD_LEN]));
            }
            pending.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
            while pending.last().is_some_and(|(t, _)| *t <= now) {
                let (t, p) = pending.pop().unwrap();
                s.on_payload(&p, t);
                assert_balanced(&s);
            }
            s.expire(now);
            assert_balanced(&s);
        }
        for (t, p) in pending.into_iter().rev() {
            s.on_payload(&p, t);
            assert_balanced(&s);
        }
        s.expire(now + ms(5000));
        let n = s.snapshot();
        assert_balanced(&s);
        assert_eq!(n.sent, 2000);
        assert_eq!(n.in_flight, 0);
        assert_eq!(n.returned, 1400);
        assert_eq!(n.lost, 600);
        assert_eq!(n.late, 200);
        assert_eq!(n.duplicates, 200);
        assert_eq!(n.expired_returns, 200);
        assert_eq!(n.foreign, 21);
    }

    #[test]
    fn snapshot_serializes() {
        let json = serde_json::to_string(&ProbeSnapshot::default()).unwrap();
        assert_eq!(
            json,
            r#"{"sent":0,"returned":0,"lost":0,"late":0,"in_flight":0,"duplicates":0,"expired_returns":0,"foreign":0}"#
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any payload: no panic, and never a return. A random 160 bytes, or one that starts
        /// like a probe of this stream (magic, tag, a sent index) with random rest.
        #[test]
        fn no_payload_without_the_secret_is_a_return(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            index in 0u64..8,
            like_probe in any::<bool>(),
        ) {
            let t0 = Instant::now();
            let key = ProbeSecret::from_bits(11, 22);
            let mut s = ProbeStream::new(7, key, 1, Duration::from_secs(2), Duration::from_millis(20), t0);
            let mut buf = [0u8; PACKET_LEN];
            for i in 0..8u32 {
                s.write_next(t0 + PTIME * i, &mut buf);
            }
            let mut p = bytes.clone();
            if like_probe && p.len() >= 16 {
                p[..4].copy_from_slice(&MAGIC);
                p[4..8].copy_from_slice(&7u32.to_be_bytes());
                p[8..16].copy_from_slice(&index.to_be_bytes());
            }
            let outcome = s.on_payload(&p, t0 + Duration::from_millis(200));
            prop_assert_eq!(outcome, ProbeOutcome::Foreign);
            let n = s.snapshot();
            prop_assert_eq!((n.returned, n.foreign), (0, 1));
            prop_assert_eq!(n.sent, n.returned + n.lost + n.in_flight);
            prop_assert_eq!(decode_payload(&p, &key), None);
        }

        /// Every real probe decodes to itself with its own key and to nothing with another.
        #[test]
        fn real_probes_round_trip(tag in any::<u32>(), index in any::<u64>(), k0 in any::<u64>(), k1 in any::<u64>()) {
            let key = ProbeSecret::from_bits(k0, k1);
            let mut p = [0u8; PAYLOAD_LEN];
            encode_payload(ProbeId { tag, index }, &key, &mut p);
            prop_assert_eq!(decode_payload(&p, &key), Some(ProbeId { tag, index }));
            prop_assert_eq!(decode_payload(&p, &ProbeSecret::from_bits(k0 ^ 1, k1)), None);
            prop_assert_eq!(peek_id(&p), Some(ProbeId { tag, index }));
        }
    }
}
