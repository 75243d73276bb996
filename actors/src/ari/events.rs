//! The events WebSocket as a stream of typed [`LinkItem`]s: the connection task owns the framed
//! socket, speaks the protocol (answers pings, pings on the [`Liveness`] schedule, answers a
//! close, decodes text frames into [`Event`]s) and yields what the `AriConnection` actor needs
//! to know: an event, an unknown or malformed one, or the end of the link ([`LinkItem::Closed`]
//! or [`LinkItem::Dead`], always the last item).
//!
//! The actor never sees frames, pings or timers. Dropping the stream drops the socket.
//!
//! Generic over the transport (awc gives a `BoxedSocket`), so the tests here run the whole
//! protocol over an in-memory pipe against a server-side codec: no network.

use std::time::{Duration, Instant};

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use awc::ws::{CloseReason, Codec, Frame, Message};
use futures_util::{SinkExt, Stream, StreamExt};

use super::liveness::{Check, Liveness, LivenessSettings};
use super::model::{decode_event, DecodeError, Event};

/// What the events WebSocket delivered.
// Large like `Event` (see there): moved once per event, at signalling rate.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkItem {
    /// An event of a type we handle (never [`Event::Unknown`]).
    Event(Event),
    /// An event of a type we do not handle: tolerated, counted.
    Unknown { kind: String },
    /// A text frame that is no ARI event (bad JSON, no type, a known type with bad fields), or
    /// a fragmented message; logged and skipped, never fatal.
    Malformed { error: String },
    /// A StasisStart that names its channel but could not be decoded: its caller waits in
    /// Stasis and must be answered.
    BadStasisStart { channel_id: String, error: String },
    /// The connection ended: close frame, end of stream, protocol or write error. Last item.
    Closed { reason: String },
    /// No answer to our pings within the timeout (or a ping could not even be written). Last
    /// item.
    Dead { reason: String },
}

impl LinkItem {
    /// True for the items that end the link.
    pub fn is_terminal(&self) -> bool {
        matches!(self, LinkItem::Closed { .. } | LinkItem::Dead { .. })
    }
}

/// Decodes a text frame's payload.
pub fn decode_text(payload: &[u8]) -> LinkItem {
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => return LinkItem::Malformed { error: format!("text frame is not UTF-8: {e}") },
    };
    match decode_event(text) {
        Ok(Event::Unknown { kind }) => LinkItem::Unknown { kind },
        Ok(ev) => LinkItem::Event(ev),
        Err(e) => match &e {
            DecodeError::BadStasisStart { channel_id, .. } => {
                LinkItem::BadStasisStart { channel_id: channel_id.clone(), error: e.to_string() }
            }
            _ => LinkItem::Malformed { error: e.to_string() },
        },
    }
}

/// The reason given for a close frame from Asterisk.
pub fn close_reason(reason: Option<&CloseReason>) -> String {
    match reason {
        None => "closed by Asterisk (no close code)".into(),
        Some(CloseReason { code, description: None }) => {
            format!("closed by Asterisk (code {})", u16::from(*code))
        }
        Some(CloseReason { code, description: Some(d) }) => {
            format!("closed by Asterisk (code {}: {d})", u16::from(*code))
        }
    }
}

/// The connection task's state.
struct Link<T> {
    framed: Framed<T, Codec>,
    liveness: Liveness,
    pings: u64,
    /// The terminal item was yielded: the stream ends.
    done: bool,
}

/// What woke the task.
enum Wake {
    Frame(Option<Result<Frame, awc::error::WsProtocolError>>),
    Timer,
}

impl<T: AsyncRead + AsyncWrite + Unpin> Link<T> {
    async fn next_item(&mut self) -> LinkItem {
        loop {
            let deadline = tokio::time::Instant::from_std(self.liveness.next_deadline());
            let wake = tokio::select! {
                f = self.framed.next() => Wake::Frame(f),
                () = tokio::time::sleep_until(deadline) => Wake::Timer,
            };
            let now = Instant::now();
            let frame = match wake {
                Wake::Timer => match self.liveness.check(now) {
                    Check::Alive => continue,
                    Check::Dead { .. } => return LinkItem::Dead { reason: self.liveness.dead_reason() },
                    Check::PingDue => {
                        self.pings += 1;
                        let payload = format!("rtpvisor-ping-{}", self.pings);
                        if let Err(item) = self.send(Message::Ping(payload.into()), "a ping").await {
                            return item;
                        }
                        self.liveness.on_ping_sent(now);
                        continue;
                    }
                },
                Wake::Frame(None) => {
                    return LinkItem::Closed { reason: "connection closed (no close frame)".into() }
                }
                Wake::Frame(Some(Err(e))) => return LinkItem::Closed { reason: format!("protocol error: {e}") },
                Wake::Frame(Some(Ok(frame))) => frame,
            };
            self.liveness.on_frame(now);
            match frame {
                Frame::Text(payload) => return decode_text(&payload),
                Frame::Ping(payload) => {
                    if let Err(item) = self.send(Message::Pong(payload), "a pong").await {
                        return item;
                    }
                }
                Frame::Close(reason) => {
                    // Answer the close as the protocol asks; the link is over either way.
                    let _ = self.send(Message::Close(reason.clone()), "the close").await;
                    return LinkItem::Closed { reason: close_reason(reason.as_ref()) };
                }
                Frame::Continuation(_) => {
                    return LinkItem::Malformed { error: "fragmented message (not sent by Asterisk)".into() }
                }
                Frame::Pong(_) | Frame::Binary(_) => {}
            }
        }
    }

    /// Writes one message, bounded by the ping timeout: a peer that does not even take our
    /// bytes is as dead as one that does not answer.
    async fn send(&mut self, msg: Message, what: &str) -> Result<(), LinkItem> {
        let limit: Duration = self.liveness.settings().ping_timeout;
        match tokio::time::timeout(limit, self.framed.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LinkItem::Closed { reason: format!("writing {what} failed: {e}") }),
            Err(_) => Err(LinkItem::Dead {
                reason: format!("ARI link stuck: {what} could not be written within {} ms", limit.as_millis()),
            }),
        }
    }
}

/// The events of a connected WebSocket (as `awc::ws::WebsocketsRequest::connect` gives it),
/// pinged per `liveness`. Ends after its terminal item.
pub fn event_stream<T>(framed: Framed<T, Codec>, liveness: LivenessSettings) -> impl Stream<Item = LinkItem>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let link = Link { framed, liveness: Liveness::new(liveness, Instant::now()), pings: 0, done: false };
    futures_util::stream::unfold(link, |mut link| async move {
        if link.done {
            return None;
        }
        let item = link.next_item().await;
        link.done = item.is_terminal();
        Some((item, link))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use awc::ws::CloseCode;
    use tokio::io::DuplexStream;

    const CHANNEL: &str = r#"{"id": "1.1", "name": "Local/x@y-1;1", "state": "Up"}"#;

    #[test]
    fn decode_text_sorts_events() {
        let replaced = br#"{"type": "ApplicationReplaced", "application": "rtpvisor-x",
            "timestamp": "2026-12-02T12:54:01.062+0000", "asterisk_id": "02:fc:00:00:00:01"}"#;
        assert_eq!(
            decode_text(replaced),
            LinkItem::Event(Event::ApplicationReplaced { application: "rtpvisor-x".into() })
        );
        assert_eq!(decode_text(br#"{"type": "Dial"}"#), LinkItem::Unknown { kind: "Dial".into() });
        assert!(matches!(decode_text(b"{"), LinkItem::Malformed { .. }));
        assert!(matches!(decode_text(br#"{"type": "StasisEnd"}"#), LinkItem::Malformed { .. }));
        // A StasisStart that names its channel is told apart: its caller waits for an answer.
        let bad = br#"{"type": "StasisStart", "application": "rtpvisor", "channel": {"id": "c1", "name": 7}}"#;
        let LinkItem::BadStasisStart { channel_id, error } = decode_text(bad) else { panic!("{:?}", decode_text(bad)) };
        assert_eq!(channel_id, "c1");
        assert!(error.contains("bad StasisStart event for channel c1"), "{error}");
        let nameless = br#"{"type": "StasisStart", "application": "rtpvisor", "channel": {"name": "x"}}"#;
        assert!(matches!(decode_text(nameless), LinkItem::Malformed { .. }));
        let LinkItem::Malformed { error } = decode_text(&[0xff, 0xfe]) else { panic!() };
        assert!(error.starts_with("text frame is not UTF-8"), "{error}");
    }

    #[test]
    fn close_reasons_read_well() {
        assert_eq!(close_reason(None), "closed by Asterisk (no close code)");
        assert_eq!(close_reason(Some(&CloseCode::Away.into())), "closed by Asterisk (code 1001)");
        let r = CloseReason { code: CloseCode::Normal, description: Some("bye".into()) };
        assert_eq!(close_reason(Some(&r)), "closed by Asterisk (code 1000: bye)");
    }

    #[test]
    fn only_closed_and_dead_are_terminal() {
        assert!(LinkItem::Closed { reason: String::new() }.is_terminal());
        assert!(LinkItem::Dead { reason: String::new() }.is_terminal());
        assert!(!LinkItem::Unknown { kind: String::new() }.is_terminal());
        assert!(!LinkItem::Malformed { error: String::new() }.is_terminal());
    }

    /// Our side (client codec) and a fake Asterisk (server codec) over an in-memory pipe.
    fn pair() -> (Framed<DuplexStream, Codec>, Framed<DuplexStream, Codec>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Framed::new(a, Codec::new().client_mode()), Framed::new(b, Codec::new()))
    }

    fn fast(interval_ms: u64, timeout_ms: u64) -> LivenessSettings {
        LivenessSettings {
            ping_interval: Duration::from_millis(interval_ms),
            ping_timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[actix_rt::test]
    async fn events_pass_and_pings_are_answered() {
        let (ours, mut asterisk) = pair();
        let mut events = Box::pin(event_stream(ours, fast(10_000, 10_000)));
        let start = format!(r#"{{"type": "StasisStart", "application": "a", "args": ["probe"], "channel": {CHANNEL}}}"#);
        asterisk.send(Message::Text(start.into())).await.unwrap();
        asterisk.send(Message::Text(r#"{"type": "ChannelVarset"}"#.into())).await.unwrap();
        asterisk.send(Message::Text("nonsense".into())).await.unwrap();
        asterisk.send(Message::Ping("p1".into())).await.unwrap();
        asterisk.send(Message::Text(r#"{"type": "ApplicationReplaced", "application": "a"}"#.into())).await.unwrap();

        let Some(LinkItem::Event(Event::StasisStart { args, .. })) = events.next().await else { panic!() };
        assert_eq!(args, ["probe"]);
        assert_eq!(events.next().await, Some(LinkItem::Unknown { kind: "ChannelVarset".into() }));
        assert!(matches!(events.next().await, Some(LinkItem::Malformed { .. })));
        assert_eq!(
            events.next().await,
            Some(LinkItem::Event(Event::ApplicationReplaced { application: "a".into() }))
        );
        // The ping got its pong, with its payload.
        let Some(Ok(Frame::Pong(p))) = asterisk.next().await else { panic!() };
        assert_eq!(&p[..], b"p1");
    }

    #[actix_rt::test]
    async fn a_silent_peer_is_declared_dead_after_ping_timeout() {
        let (ours, mut asterisk) = pair();
        let t0 = Instant::now();
        let mut events = Box::pin(event_stream(ours, fast(50, 100)));
        // The fake Asterisk reads our pings but never answers (a black hole).
        let item = tokio::select! {
            item = events.next() => item,
            _ = async { loop { let _ = asterisk.next().await; } } => unreachable!(),
        };
        let took = t0.elapsed();
        assert_eq!(
            item,
            Some(LinkItem::Dead { reason: "ARI link silent: no answer to ping within 100 ms".into() })
        );
        assert!(took >= Duration::from_millis(150) && took < Duration::from_millis(1000), "{took:?}");
        assert_eq!(events.next().await, None, "nothing after the terminal item");
    }

    #[actix_rt::test]
    async fn an_answering_peer_stays_alive() {
        let (ours, asterisk) = pair();
        let mut events = Box::pin(event_stream(ours, fast(20, 60)));
        // A fake Asterisk that answers pings (the codec leaves that to us).
        let answerer = actix_rt::spawn(async move {
            let mut asterisk = asterisk;
            let mut pings = 0;
            while let Some(Ok(f)) = asterisk.next().await {
                if let Frame::Ping(p) = f {
                    pings += 1;
                    if asterisk.send(Message::Pong(p)).await.is_err() {
                        break; // we dropped our side
                    }
                }
            }
            pings
        });
        let quiet = tokio::time::timeout(Duration::from_millis(400), events.next()).await;
        assert!(quiet.is_err(), "no item while the pongs come: {quiet:?}");
        drop(events);
        let pings = answerer.await.unwrap();
        assert!(pings >= 10, "pinged every 20 ms: {pings}");
    }

    #[actix_rt::test]
    async fn a_close_frame_ends_the_link_with_its_reason() {
        let (ours, mut asterisk) = pair();
        let mut events = Box::pin(event_stream(ours, fast(10_000, 10_000)));
        let reason = CloseReason { code: CloseCode::Away, description: Some("shutting down".into()) };
        asterisk.send(Message::Close(Some(reason))).await.unwrap();
        assert_eq!(
            events.next().await,
            Some(LinkItem::Closed { reason: "closed by Asterisk (code 1001: shutting down)".into() })
        );
        assert_eq!(events.next().await, None);
        // We answered the close.
        assert!(matches!(asterisk.next().await, Some(Ok(Frame::Close(_)))));
    }

    #[actix_rt::test]
    async fn the_end_of_the_stream_ends_the_link() {
        let (ours, asterisk) = pair();
        let mut events = Box::pin(event_stream(ours, fast(10_000, 10_000)));
        drop(asterisk);
        assert_eq!(
            events.next().await,
            Some(LinkItem::Closed { reason: "connection closed (no close frame)".into() })
        );
        assert_eq!(events.next().await, None);
    }
}
