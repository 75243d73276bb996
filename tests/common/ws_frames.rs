//! The server-to-client side of an ARI events WebSocket as the fault proxy sees it, and the
//! StasisStart rewrites it can make there: pure, no IO (the proxy's pipe thread feeds bytes and
//! writes what comes out).
//!
//! Server frames (RFC 6455 §5.2) are unmasked:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! ```
//!
//! Only what a test wants changed is touched: a whole (FIN, unfragmented, no RSV bit, unmasked)
//! text frame whose JSON `type` is `StasisStart`. Everything else (the HTTP head of the
//! upgrade, control frames, fragmented messages, frames of an extension, anything unparsable)
//! goes out byte for byte as it came in. Bytes are only ever written as whole frames, so a
//! frame sent later (a delayed duplicate) can be put between two frames, never inside one, and
//! never inside a fragmented message.
//!
//! No `#[test]` here (every e2e binary compiles `common`): tested in
//! `tests/e2e_stasis_events.rs`.

use std::time::Duration;

use serde_json::Value;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

const FIN: u8 = 0x80;
const RSV: u8 = 0x70;
const OPCODE: u8 = 0x0f;
const MASK: u8 = 0x80;
const LEN7: u8 = 0x7f;
/// 7-bit length values that announce a 16-bit and a 64-bit extended length.
const LEN_16: u8 = 126;
const LEN_64: u8 = 127;
/// The end of an HTTP head.
const HEAD_END: &[u8] = b"\r\n\r\n";
/// An upgrade answer's head larger than this is not one: the rest is passed through raw.
const MAX_HEAD: usize = 64 * 1024;

/// The head of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    /// RSV1-3 (an extension's bits; permessage-deflate sets RSV1).
    pub rsv: u8,
    pub opcode: u8,
    /// A server must not mask; a masked frame is passed through, never read.
    pub masked: bool,
    /// Bytes before the payload (2-14).
    pub head_len: usize,
    pub payload_len: u64,
}

impl FrameHead {
    /// The whole frame's length, if it fits a `usize`.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len).ok()?.checked_add(self.head_len)
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Parses the head of the frame `buf` starts with; None until all of the head is there.
pub fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let masked = b1 & MASK != 0;
    let (ext, payload_len) = match b1 & LEN7 {
        LEN_16 => (2, u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?))),
        LEN_64 => (8, u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)),
        n => (0, u64::from(n)),
    };
    let head_len = 2 + ext + if masked { 4 } else { 0 };
    (buf.len() >= head_len).then_some(FrameHead {
        fin: b0 & FIN != 0,
        rsv: (b0 & RSV) >> 4,
        opcode: b0 & OPCODE,
        masked,
        head_len,
        payload_len,
    })
}

/// An unmasked frame as a server writes it, with the shortest length encoding.
pub fn encode(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(if fin { FIN } else { 0 } | (opcode & OPCODE));
    match payload.len() {
        n if n < usize::from(LEN_16) => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(LEN_16);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(LEN_64);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// What to do to a StasisStart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StasisRewrite {
    /// Pass it, then send the same bytes again `delay` later (zero: right after it).
    Duplicate { delay: Duration },
    /// Make `channel.name` a number, keeping `channel.id`: the event names its caller but no
    /// longer decodes.
    Corrupt,
}

/// The StasisStart in a text frame's payload: its channel id and Asterisk's `timestamp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StasisStart {
    pub channel_id: String,
    pub timestamp: Option<String>,
}

/// The StasisStart `payload` holds, if it is one that names its channel.
pub fn stasis_start(payload: &[u8]) -> Option<StasisStart> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    if v["type"] != "StasisStart" {
        return None;
    }
    Some(StasisStart {
        channel_id: v.pointer("/channel/id")?.as_str()?.to_string(),
        timestamp: v["timestamp"].as_str().map(String::from),
    })
}

/// The StasisStart `payload` with `channel.name` turned into a number; None when it has no
/// `channel` object.
pub fn corrupt(payload: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(payload).ok()?;
    *v.get_mut("channel")?.as_object_mut()?.entry("name").or_insert(Value::Null) = Value::from(404);
    serde_json::to_vec(&v).ok()
}

/// What the proxy must do with the bytes it fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Out {
    /// Write these bytes to the client now (whole frames, or raw bytes once the stream is no
    /// longer read as frames).
    Send(Vec<u8>),
    /// Write this whole frame to the client `delay` from now, at a frame boundary outside any
    /// fragmented message ([`Downstream::insert`]): the delayed copy of the StasisStart of the
    /// [`Out::Rewrote`] just before it.
    SendLater(Vec<u8>, Duration),
    /// The StasisStart of `start.channel_id` was rewritten so (for the proxy's log); comes
    /// right after the [`Out::Send`] that wrote it.
    Rewrote { start: StasisStart, rewrite: StasisRewrite },
}

/// Whether a frame may be written between what was sent so far and what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Now,
    /// A fragmented data message is open: wait for its last frame.
    Wait,
    /// The stream is passed through raw (not frames, or not known to be): never.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the HTTP answer to the upgrade.
    Head,
    /// Reading frames.
    Frames,
    /// Passing bytes through unread: the answer was no 101, or a frame was too large.
    Raw,
}

/// The server-to-client byte stream of one WebSocket, fed as it is read.
#[derive(Debug)]
pub struct Downstream {
    state: State,
    /// Read but not yet written: an incomplete head or frame.
    buf: Vec<u8>,
    /// A fragmented data message is open (its first frame passed, its FIN frame not yet).
    in_message: bool,
    /// A frame larger than this switches to raw (its bytes are not held back until complete).
    max_frame: usize,
}

impl Downstream {
    pub fn new(max_frame: usize) -> Downstream {
        Downstream { state: State::Head, buf: Vec::new(), in_message: false, max_frame }
    }

    pub fn insert(&self) -> Insert {
        match self.state {
            State::Frames if self.in_message => Insert::Wait,
            State::Frames => Insert::Now,
            State::Head | State::Raw => Insert::Never,
        }
    }

    /// Feeds bytes read from the server; `decide` says what to do to the StasisStart of a
    /// channel (it is asked once per StasisStart, so it may count). Returns what to write, in
    /// order.
    pub fn feed(&mut self, data: &[u8], decide: &mut dyn FnMut(&StasisStart) -> Option<StasisRewrite>) -> Vec<Out> {
        let mut out = Vec::new();
        if self.state == State::Raw {
            if !data.is_empty() {
                out.push(Out::Send(data.to_vec()));
            }
            return out;
        }
        self.buf.extend_from_slice(data);
        // Untouched bytes are gathered and written together.
        let mut pass = Vec::new();
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            match self.state {
                State::Head => match rest.windows(HEAD_END.len()).position(|w| w == HEAD_END) {
                    Some(i) => {
                        let head = &rest[..i + HEAD_END.len()];
                        let switching = head.starts_with(b"HTTP/1.1 101 ") || head.starts_with(b"HTTP/1.0 101 ");
                        self.state = if switching { State::Frames } else { State::Raw };
                        pass.extend_from_slice(head);
                        at += head.len();
                    }
                    None if rest.len() > MAX_HEAD => self.state = State::Raw,
                    None => break,
                },
                State::Raw => {
                    pass.extend_from_slice(rest);
                    at = self.buf.len();
                    break;
                }
                State::Frames => {
                    let Some(head) = parse_head(rest) else { break };
                    let Some(len) = head.frame_len().filter(|&l| l <= self.max_frame) else {
                        self.state = State::Raw;
                        continue;
                    };
                    if rest.len() < len {
                        break;
                    }
                    let frame = &rest[..len];
                    at += len;
                    if !head.is_control() {
                        // A data frame without FIN opens a message, a continuation with FIN
                        // closes it.
                        self.in_message = !head.fin;
                    }
                    let whole_text = head.opcode == OP_TEXT && head.fin && head.rsv == 0 && !head.masked;
                    let start = whole_text.then(|| stasis_start(&frame[head.head_len..])).flatten();
                    let Some((start, rewrite)) = start.and_then(|s| decide(&s).map(|r| (s, r))) else {
                        pass.extend_from_slice(frame);
                        continue;
                    };
                    let mut later = None;
                    match &rewrite {
                        StasisRewrite::Duplicate { delay } if delay.is_zero() => {
                            pass.extend_from_slice(frame);
                            pass.extend_from_slice(frame);
                        }
                        StasisRewrite::Duplicate { delay } => {
                            pass.extend_from_slice(frame);
                            later = Some(Out::SendLater(frame.to_vec(), *delay));
                        }
                        StasisRewrite::Corrupt => match corrupt(&frame[head.head_len..]) {
                            Some(payload) => pass.extend_from_slice(&encode(true, OP_TEXT, &payload)),
                            // Not reached: a StasisStart that names its channel has a `channel`.
                            None => {
                                pass.extend_from_slice(frame);
                                continue;
                            }
                        },
                    }
                    flush(&mut out, &mut pass);
                    out.push(Out::Rewrote { start, rewrite });
                    out.extend(later);
                }
            }
        }
        self.buf.drain(..at);
        flush(&mut out, &mut pass);
        out
    }
}

fn flush(out: &mut Vec<Out>, pass: &mut Vec<u8>) {
    if !pass.is_empty() {
        out.push(Out::Send(std::mem::take(pass)));
    }
}
