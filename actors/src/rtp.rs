//! RTP header parse and write (RFC 3550 section 5.1).
//!
//! Owns the wire format of one RTP packet: turning bytes into an [`RtpPacket`] that borrows the
//! buffer, and writing a fixed header back. No IO here, no allocation: parsing returns views into
//! the caller's buffer and a small `Copy` error, so it is safe on the per-packet path.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC   |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |           synchronization source (SSRC) identifier            |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |            contributing source (CSRC) identifiers             |
//! |                             ....                              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   profile-specific ext. id    |     ext. length (32-bit words)|  (if X, 5.3.1)
//! |                       extension data ...                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     payload ...       | padding ... | count   |  (if P)
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Parsing a packet and writing it back gives the same bytes:
//!
//! ```
//! use rtpvisor_actors::rtp::{write_header, RtpPacket, HEADER_LEN, PT_PCMU};
//!
//! let wire = [
//!     0x80, 0x80, 0xff, 0xff, // V=2, marker, PT 0 (PCMU), sequence 65535
//!     0x00, 0x00, 0x00, 0xa0, // timestamp 160
//!     0x12, 0x34, 0x56, 0x78, // SSRC
//!     0xff, 0x7f, 0xfe, 0x7e, // payload
//! ];
//! let pkt = RtpPacket::parse(&wire)?;
//! assert_eq!(pkt.header.payload_type, PT_PCMU);
//! assert!(pkt.header.marker);
//! assert_eq!(pkt.header.sequence, 65535);
//!
//! let mut out = [0u8; 16];
//! let n = write_header(&mut out, &pkt.header)?;
//! out[n..n + pkt.payload.len()].copy_from_slice(pkt.payload);
//! assert_eq!(n, HEADER_LEN);
//! assert_eq!(out, wire);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The only RTP version there is (RFC 3550 section 5.1, `V`).
pub const VERSION: u8 = 2;
/// Length of the fixed header: no CSRC list, no header extension.
pub const HEADER_LEN: usize = 12;
/// Static payload type of G.711 mu-law (RFC 3551 section 6, table 4).
pub const PT_PCMU: u8 = 0;

// Bits of the first two octets, named so the parse reads like the diagram above.
const VERSION_SHIFT: u8 = 6;
const PADDING_BIT: u8 = 0x20;
const EXTENSION_BIT: u8 = 0x10;
const CSRC_COUNT_MASK: u8 = 0x0f;
const MARKER_BIT: u8 = 0x80;
const PAYLOAD_TYPE_MASK: u8 = 0x7f;
/// Each CSRC identifier is one 32-bit word.
const CSRC_LEN: usize = 4;
/// The extension's own header: 16-bit profile id and 16-bit length in words (section 5.3.1).
const EXTENSION_HEADER_LEN: usize = 4;

/// The fields of an RTP header (RFC 3550 section 5.1) that rtpvisor looks at.
///
/// CSRC identifiers and the extension body are not copied out: nothing in rtpvisor mixes
/// streams, and keeping the header `Copy` and fixed-size keeps parsing allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// `P`: the packet ends in padding whose last octet counts the padding octets.
    pub padding: bool,
    /// `X`: one header extension follows the CSRC list.
    pub extension: bool,
    /// `CC`: number of 32-bit CSRC identifiers after the fixed header (0..=15).
    pub csrc_count: u8,
    /// `M`: profile-defined; for audio (RFC 3551) the first packet of a talkspurt.
    pub marker: bool,
    /// `PT`: 7-bit payload type.
    pub payload_type: u8,
    /// Sequence number, wraps at 65535 -> 0; see [`crate::stats::SeqExtender`].
    pub sequence: u16,
    /// Sampling instant of the first payload octet, in clock-rate units; wraps at 2^32.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// A plain PCMU (G.711 u-law) header: no padding, extension, CSRCs or marker.
    pub fn pcmu(sequence: u16, timestamp: u32, ssrc: u32) -> Self {
        RtpHeader {
            padding: false,
            extension: false,
            csrc_count: 0,
            marker: false,
            payload_type: PT_PCMU,
            sequence,
            timestamp,
            ssrc,
        }
    }
}

/// One parsed RTP packet, borrowing the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The header fields.
    pub header: RtpHeader,
    /// Payload without CSRCs, extension and padding.
    pub payload: &'a [u8],
    /// Bytes before the payload (12 + 4*CSRC + extension).
    pub header_len: usize,
}

/// Why bytes are not an RTP packet. Small and `Copy` so the per-packet path never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the fixed header.
    #[error("RTP packet too short: {len} bytes, the fixed header alone is 12")]
    TooShort {
        /// Length of the buffer that was given.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list or the header extension runs past the end of the packet.
    #[error("RTP header truncated: CSRC list or header extension runs past the packet's end")]
    Truncated,
    /// `P` is set but the padding count is 0 or longer than what follows the header.
    #[error("RTP padding count is zero or longer than the packet's payload")]
    BadPadding,
}

/// Why a header could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The output buffer is shorter than [`HEADER_LEN`].
    #[error("buffer too small for an RTP header (needs 12 bytes)")]
    BufferTooSmall,
}

impl<'a> RtpPacket<'a> {
    /// Parses one RTP packet (RFC 3550 section 5.1), validating what A.1 asks of a header:
    /// version 2, a CSRC list and extension that fit, and a padding count that fits.
    ///
    /// The payload type is not checked against a list: which types are acceptable is the
    /// caller's policy, not the wire format's.
    ///
    /// # Errors
    ///
    /// [`ParseError`]: too short for the fixed header, version not 2, CSRC list or extension
    /// past the end ([`ParseError::Truncated`]), or a padding count of 0 or past the header.
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort { len: buf.len() });
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let version = b0 >> VERSION_SHIFT;
        if version != VERSION {
            return Err(ParseError::BadVersion(version));
        }
        let header = RtpHeader {
            padding: b0 & PADDING_BIT != 0,
            extension: b0 & EXTENSION_BIT != 0,
            csrc_count: b0 & CSRC_COUNT_MASK,
            marker: b1 & MARKER_BIT != 0,
            payload_type: b1 & PAYLOAD_TYPE_MASK,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        };

        let mut header_len = HEADER_LEN + CSRC_LEN * usize::from(header.csrc_count);
        if header_len > buf.len() {
            return Err(ParseError::Truncated);
        }
        if header.extension {
            // Section 5.3.1: the length counts 32-bit words after the 4-octet extension header.
            let ext = buf
                .get(header_len..header_len + EXTENSION_HEADER_LEN)
                .ok_or(ParseError::Truncated)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            header_len += EXTENSION_HEADER_LEN + 4 * words;
            if header_len > buf.len() {
                return Err(ParseError::Truncated);
            }
        }

        let mut end = buf.len();
        if header.padding {
            // Section 5.1: the last octet counts the padding including itself, so 0 is invalid,
            // and A.1 requires the count to fit in what follows the header.
            let count = usize::from(buf[end - 1]);
            if count == 0 || count > end - header_len {
                return Err(ParseError::BadPadding);
            }
            end -= count;
        }

        Ok(RtpPacket {
            header,
            payload: &buf[header_len..end],
            header_len,
        })
    }
}

/// Writes a fixed 12-byte header into `buf[..12]` and returns [`HEADER_LEN`].
///
/// No CSRC, no extension, no padding: the `csrc_count`, `extension` and `padding` fields of `h`
/// are ignored and written as 0, because a header that announced them without their bytes
/// would be a malformed packet. The payload type is masked to its 7 bits. Bytes of `buf` past
/// the header are left alone so a caller can write the payload before or after.
///
/// # Errors
///
/// [`WriteError::BufferTooSmall`] if `buf` is shorter than [`HEADER_LEN`]; nothing is written.
pub fn write_header(buf: &mut [u8], h: &RtpHeader) -> Result<usize, WriteError> {
    let out = buf
        .get_mut(..HEADER_LEN)
        .ok_or(WriteError::BufferTooSmall)?;
    out[0] = VERSION << VERSION_SHIFT;
    out[1] = (h.payload_type & PAYLOAD_TYPE_MASK) | if h.marker { MARKER_BIT } else { 0 };
    out[2..4].copy_from_slice(&h.sequence.to_be_bytes());
    out[4..8].copy_from_slice(&h.timestamp.to_be_bytes());
    out[8..12].copy_from_slice(&h.ssrc.to_be_bytes());
    Ok(HEADER_LEN)
}

/// Writes a fixed header (see [`write_header`]) followed by `payload`; returns the total length.
///
/// # Errors
///
/// [`WriteError::BufferTooSmall`] if header and payload do not fit; nothing is written.
pub fn write_packet(buf: &mut [u8], h: &RtpHeader, payload: &[u8]) -> Result<usize, WriteError> {
    let len = HEADER_LEN + payload.len();
    if buf.len() < len {
        return Err(WriteError::BufferTooSmall);
    }
    write_header(buf, h)?;
    buf[HEADER_LEN..len].copy_from_slice(payload);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, PT 0, seq 0x1234, ts 0xdeadbeef, ssrc 0x01020304, payload "ab".
    const SIMPLE: [u8; 14] = [
        0x80, 0x00, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, b'a', b'b',
    ];

    #[test]
    fn parses_fixed_header() {
        let p = RtpPacket::parse(&SIMPLE).unwrap();
        assert_eq!(
            p.header,
            RtpHeader {
                padding: false,
                extension: false,
                csrc_count: 0,
                marker: false,
                payload_type: PT_PCMU,
                sequence: 0x1234,
                timestamp: 0xdead_beef,
                ssrc: 0x0102_0304,
            }
        );
        assert_eq!(p.header_len, HEADER_LEN);
        assert_eq!(p.payload, b"ab");
    }

    #[test]
    fn header_only_packet_has_empty_payload() {
        let p = RtpPacket::parse(&SIMPLE[..12]).unwrap();
        assert_eq!(p.payload, b"");
        assert_eq!(p.header_len, 12);
    }

    #[test]
    fn marker_and_payload_type_share_an_octet() {
        let mut b = SIMPLE;
        b[1] = 0x80 | 96;
        let h = RtpPacket::parse(&b).unwrap().header;
        assert!(h.marker);
        assert_eq!(h.payload_type, 96);
        b[1] = 0x7f;
        let h = RtpPacket::parse(&b).unwrap().header;
        assert!(!h.marker);
        assert_eq!(h.payload_type, 127);
    }

    #[test]
    fn too_short() {
        assert_eq!(RtpPacket::parse(&[]), Err(ParseError::TooShort { len: 0 }));
        assert_eq!(
            RtpPacket::parse(&SIMPLE[..11]),
            Err(ParseError::TooShort { len: 11 })
        );
    }

    #[test]
    fn bad_version() {
        for (b0, v) in [(0x00, 0), (0x40, 1), (0xc0, 3)] {
            let mut b = SIMPLE;
            b[0] = b0;
            assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadVersion(v)));
        }
    }

    #[test]
    fn version_checked_before_csrc_length() {
        // A version-1 packet claiming 15 CSRCs is reported as the version it is.
        let mut b = SIMPLE;
        b[0] = 0x4f;
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadVersion(1)));
    }

    #[test]
    fn csrc_list_is_skipped() {
        let b = [
            0x82, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, // CC=2
            0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, // two CSRCs
            0x7f, 0xff,
        ];
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.header.csrc_count, 2);
        assert_eq!(p.header_len, 20);
        assert_eq!(p.payload, [0x7f, 0xff]);
    }

    #[test]
    fn csrc_list_exactly_filling_the_packet() {
        let mut b = [0u8; 12 + 60];
        b[0] = 0x8f; // CC=15, the most there can be
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.header.csrc_count, 15);
        assert_eq!(p.header_len, 72);
        assert!(p.payload.is_empty());
    }

    #[test]
    fn truncated_csrc_list() {
        let b = [
            0x82, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb,
        ];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::Truncated));
    }

    #[test]
    fn header_extension_is_skipped() {
        let b = [
            0x90, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, // X=1
            0xbe, 0xde, 0x00, 0x01, // profile 0xbede, one word
            0x10, 0xff, 0x00, 0x00, // the word
            b'x',
        ];
        let p = RtpPacket::parse(&b).unwrap();
        assert!(p.header.extension);
        assert_eq!(p.header_len, 20);
        assert_eq!(p.payload, b"x");
    }

    #[test]
    fn empty_extension_after_csrc() {
        let b = [
            0x91, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, // X=1, CC=1
            0x11, 0x11, 0x11, 0x11, // CSRC
            0x00, 0x01, 0x00, 0x00, // extension with zero words
            b'y',
        ];
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.header_len, 20);
        assert_eq!(p.payload, b"y");
    }

    #[test]
    fn truncated_extension_header() {
        let b = [0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0x00];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::Truncated));
        // X set on a bare fixed header: the extension header itself is missing.
        assert_eq!(RtpPacket::parse(&b[..12]), Err(ParseError::Truncated));
    }

    #[test]
    fn truncated_extension_body() {
        let b = [
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0x00, 0x02, // two words
            1, 2, 3, 4, 5, 6, 7, // one octet short
        ];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::Truncated));
        // The largest length the field can say, with nothing behind it.
        let b = [
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff,
        ];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::Truncated));
    }

    #[test]
    fn padding_is_removed() {
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', b'q', 0, 0, 3];
        let p = RtpPacket::parse(&b).unwrap();
        assert!(p.header.padding);
        assert_eq!(p.payload, b"pq");
    }

    #[test]
    fn padding_of_one_is_just_the_count() {
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 1];
        assert_eq!(RtpPacket::parse(&b).unwrap().payload, b"p");
    }

    #[test]
    fn padding_may_fill_everything_after_the_header() {
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 3];
        assert_eq!(RtpPacket::parse(&b).unwrap().payload, b"");
    }

    #[test]
    fn padding_after_csrc_and_extension() {
        let b = [
            0xb1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, // P, X, CC=1
            9, 9, 9, 9, // CSRC
            0, 0, 0, 0, // empty extension
            b'z', 0, 2,
        ];
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.header_len, 20);
        assert_eq!(p.payload, b"z");
    }

    #[test]
    fn bad_padding() {
        // Count 0 cannot be: the count octet is itself padding.
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 0];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding));
        // Count reaching into the header.
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, b'p', 3];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding));
        // P on a bare header: the count octet would be the SSRC's last octet.
        let b = [0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding));
        // Padding that would eat the CSRC list.
        let b = [0xa1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 7, 7, 7, 7, 2];
        assert_eq!(RtpPacket::parse(&b), Err(ParseError::BadPadding));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            ParseError::TooShort { len: 3 }.to_string(),
            "RTP packet too short: 3 bytes, the fixed header alone is 12"
        );
        assert_eq!(
            ParseError::BadVersion(1).to_string(),
            "RTP version 1, expected 2"
        );
        assert!(ParseError::Truncated.to_string().contains("truncated"));
        assert!(ParseError::BadPadding.to_string().contains("padding"));
        assert!(WriteError::BufferTooSmall.to_string().contains("12"));
    }

    #[test]
    fn write_header_round_trips() {
        let mut out = [0u8; 14];
        let h = RtpPacket::parse(&SIMPLE).unwrap().header;
        assert_eq!(write_header(&mut out, &h), Ok(HEADER_LEN));
        out[12..].copy_from_slice(b"ab");
        assert_eq!(out, SIMPLE);
    }

    #[test]
    fn write_header_ignores_csrc_extension_and_padding() {
        let h = RtpHeader {
            padding: true,
            extension: true,
            csrc_count: 15,
            marker: true,
            payload_type: 0xff, // masked to 0x7f
            sequence: 65535,
            timestamp: u32::MAX,
            ssrc: 7,
        };
        let mut out = [0x55u8; 13];
        assert_eq!(write_header(&mut out, &h), Ok(12));
        assert_eq!(
            out,
            [0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 7, 0x55]
        );
        let back = RtpPacket::parse(&out[..12]).unwrap().header;
        assert_eq!(
            back,
            RtpHeader {
                padding: false,
                extension: false,
                csrc_count: 0,
                payload_type: 127,
                ..h
            }
        );
    }

    #[test]
    fn write_header_buffer_too_small() {
        let h = RtpPacket::parse(&SIMPLE).unwrap().header;
        let mut out = [0u8; 11];
        assert_eq!(write_header(&mut out, &h), Err(WriteError::BufferTooSmall));
        assert_eq!(out, [0u8; 11], "nothing written on error");
    }

    #[test]
    fn write_packet_copies_payload() {
        let h = RtpPacket::parse(&SIMPLE).unwrap().header;
        let mut out = [0u8; 20];
        assert_eq!(write_packet(&mut out, &h, b"ab"), Ok(14));
        assert_eq!(out[..14], SIMPLE);
        let mut small = [0u8; 13];
        assert_eq!(
            write_packet(&mut small, &h, b"ab"),
            Err(WriteError::BufferTooSmall)
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes: a packet or an error, never a panic; a packet's parts lie inside the
        /// buffer and its header length counts CSRCs and extension.
        #[test]
        fn any_bytes_parse_or_are_refused(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(p) = RtpPacket::parse(&buf) {
                prop_assert!(p.header_len >= HEADER_LEN);
                prop_assert!(p.header_len + p.payload.len() <= buf.len());
                let fixed = HEADER_LEN + 4 * usize::from(p.header.csrc_count);
                let ext = if p.header.extension {
                    4 + 4 * usize::from(u16::from_be_bytes([buf[fixed + 2], buf[fixed + 3]]))
                } else {
                    0
                };
                prop_assert_eq!(p.header_len, fixed + ext);
                prop_assert_eq!(&buf[p.header_len..p.header_len + p.payload.len()], p.payload);
                prop_assert!(p.header.csrc_count <= 15 && p.header.payload_type < 128);
            }
        }

        /// Valid fixed headers with any payload survive write then parse unchanged.
        #[test]
        fn valid_headers_round_trip(
            marker in any::<bool>(),
            payload_type in 0u8..128,
            sequence in any::<u16>(),
            timestamp in any::<u32>(),
            ssrc in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let h = RtpHeader { marker, payload_type, ..RtpHeader::pcmu(sequence, timestamp, ssrc) };
            let mut buf = vec![0u8; HEADER_LEN + payload.len()];
            prop_assert_eq!(write_packet(&mut buf, &h, &payload), Ok(buf.len()));
            let p = RtpPacket::parse(&buf).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.payload, &payload[..]);
            prop_assert_eq!(p.header_len, HEADER_LEN);
        }
    }
}
