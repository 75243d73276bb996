#![cfg(feature = "e2e")]
//! StasisStart events Asterisk never sends by itself, made by the fault proxy
//! (`common::fault_proxy`, frames read by `common::ws_frames`) in front of the real Asterisk:
//!
//! - A live call's StasisStart sent again, while the service is degraded (restart intensity
//!   exceeded) and while it is at its admission limit: the duplicate reaches the service, and the
//!   call is not hung up (still listed on both sides, its probes keep coming back), nothing is
//!   refused because of it.
//! - A StasisStart made undecodable (`channel.name` a number, `channel.id` kept): the caller is
//!   hung up at once with congestion (Q.850 34, as Asterisk itself reports), counted as a
//!   malformed event and a refused call, recorded in `/calls/ended`; the next call is served.
//!
//! Asterisk's side is watched by an ARI client of the test's own (`subscribeAll`, straight to
//! Asterisk). Shares the real Asterisk with other tests: its own Stasis app, its own port range,
//! touches only its own channels (`se-`), never restarts or cleans Asterisk.
//!
//! Without Asterisk: the frame reader and the rewrites (`common::ws_frames`) byte for byte, and
//! the proxy's WebSocket pipe against a fake ARI server.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault_proxy::{FaultProxy, StasisRule};
use common::ws_frames::{
    corrupt, encode, parse_head, stasis_start, Downstream, Insert, Out, StasisRewrite, OP_BINARY, OP_CLOSE,
    OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use common::*;
use proptest::prelude::*;
use serde_json::Value;

const APP_SE: &str = "rtpvisor-stasis";
const PORTS: &str = "10940-10951";
/// Q.850 cause of a refused call's hang-up.
const CONGESTION: i64 = 34;

// ---------------------------------------------------------------------------------------------
// The frame reader and the rewrites, without IO.

fn stasis_json(id: &str) -> String {
    format!(
        r#"{{"type":"StasisStart","timestamp":"2026-11-27T10:00:00.123+0000","args":["probe"],"channel":{{"id":"{id}","name":"Local/echo@rtpvisor-test-00000001;1","state":"Up","caller":{{"name":"","number":""}}}},"application":"{APP_SE}"}}"#
    )
}

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

fn never(_: &common::ws_frames::StasisStart) -> Option<StasisRewrite> {
    None
}

/// What a stream writes now, concatenated (delayed frames and log entries left out).
fn sent(outs: &[Out]) -> Vec<u8> {
    outs.iter().flat_map(|o| if let Out::Send(b) = o { b.clone() } else { Vec::new() }).collect()
}

#[test]
fn frame_heads_of_every_length_encoding() {
    for (len, head_len) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
        let f = encode(true, OP_BINARY, &vec![7u8; len]);
        let h = parse_head(&f).expect("a whole head");
        assert_eq!((h.fin, h.rsv, h.opcode, h.masked, h.head_len, h.payload_len), (true, 0, OP_BINARY, false, head_len, len as u64));
        assert_eq!(h.frame_len(), Some(f.len()));
        assert_eq!(parse_head(&f[..head_len - 1]), None, "a head cut short is incomplete");
    }
    // A masked (client) frame: 4 more bytes of head; FIN clear, RSV1 set.
    let h = parse_head(&[0x41, 0x80 | 5, 1, 2, 3, 4]).unwrap();
    assert_eq!((h.fin, h.rsv, h.opcode, h.masked, h.head_len, h.payload_len), (false, 4, OP_TEXT, true, 6, 5));
    assert_eq!(parse_head(&[0x89, 0x00]).map(|h| h.is_control()), Some(true));
    // A 64-bit length too large for memory is read, not trusted.
    let huge = parse_head(&[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(huge.payload_len, u64::MAX);
    assert_eq!(huge.frame_len(), None);
}

#[test]
fn untouched_streams_pass_byte_for_byte_however_they_are_cut() {
    let mut stream = SWITCHING.to_vec();
    stream.extend(encode(true, OP_PING, b"p"));
    stream.extend(encode(true, OP_TEXT, stasis_json("se-x").as_bytes()));
    stream.extend(encode(true, OP_TEXT, &vec![b'x'; 300]));
    stream.extend(encode(true, OP_CLOSE, &[0x03, 0xe8]));
    for cut in [1, 2, 3, 7, 64, stream.len()] {
        let mut d = Downstream::new(1 << 20);
        let mut out = Vec::new();
        for piece in stream.chunks(cut) {
            out.extend(sent(&d.feed(piece, &mut never)));
        }
        assert_eq!(out, stream, "cut in pieces of {cut}");
        assert_eq!(d.insert(), Insert::Now);
    }
}

#[test]
fn a_stasis_start_is_duplicated_at_once_or_later() {
    let ss = encode(true, OP_TEXT, stasis_json("se-dup").as_bytes());
    let other = encode(true, OP_TEXT, stasis_json("other").as_bytes());
    let mut input = SWITCHING.to_vec();
    input.extend(&ss);
    input.extend(&other);

    let mut asked = Vec::new();
    let mut now = |s: &common::ws_frames::StasisStart| {
        asked.push(s.channel_id.clone());
        s.channel_id.starts_with("se-").then_some(StasisRewrite::Duplicate { delay: Duration::ZERO })
    };
    let outs = Downstream::new(1 << 20).feed(&input, &mut now);
    assert_eq!(asked, ["se-dup", "other"], "asked once per StasisStart");
    assert_eq!(sent(&outs), [SWITCHING, &ss, &ss, &other].concat());
    let Some(Out::Rewrote { start, rewrite }) = outs.iter().find(|o| matches!(o, Out::Rewrote { .. })) else { panic!("{outs:?}") };
    assert_eq!(start.channel_id, "se-dup");
    assert_eq!(start.timestamp.as_deref(), Some("2026-11-27T10:00:00.123+0000"));
    assert_eq!(*rewrite, StasisRewrite::Duplicate { delay: Duration::ZERO });

    let d = Duration::from_millis(300);
    let mut later = |s: &common::ws_frames::StasisStart| (s.channel_id == "se-dup").then_some(StasisRewrite::Duplicate { delay: d });
    let outs = Downstream::new(1 << 20).feed(&input, &mut later);
    assert_eq!(sent(&outs), [SWITCHING, &ss, &other].concat());
    // The copy follows the entry that logs it.
    let i = outs.iter().position(|o| matches!(o, Out::Rewrote { .. })).unwrap();
    assert_eq!(outs[i + 1], Out::SendLater(ss.clone(), d));
}

#[test]
fn a_corrupted_stasis_start_names_its_channel_and_no_longer_decodes() {
    use rtpvisor_actors::ari::model::{decode_event, DecodeError, Event};
    let json = stasis_json("se-bad");
    assert!(matches!(decode_event(&json), Ok(Event::StasisStart { .. })), "the original decodes");
    let mut input = SWITCHING.to_vec();
    input.extend(encode(true, OP_TEXT, json.as_bytes()));
    let outs = Downstream::new(1 << 20).feed(&input, &mut |_| Some(StasisRewrite::Corrupt));
    let bytes = sent(&outs);
    assert!(bytes.starts_with(SWITCHING));
    let frame = &bytes[SWITCHING.len()..];
    let h = parse_head(frame).unwrap();
    assert_eq!((h.fin, h.opcode, h.frame_len()), (true, OP_TEXT, Some(frame.len())));
    let payload = std::str::from_utf8(&frame[h.head_len..]).unwrap();
    let v: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(v["channel"]["id"], "se-bad");
    assert!(v["channel"]["name"].is_number(), "{v}");
    assert_eq!(v["type"], "StasisStart");
    // The service's own decoder: undecodable, but it still knows whom to answer.
    match decode_event(payload) {
        Err(DecodeError::BadStasisStart { channel_id, reason }) => {
            assert_eq!(channel_id, "se-bad");
            assert!(reason.contains("invalid type"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stasis_start(payload.as_bytes()).map(|s| s.channel_id), Some("se-bad".to_string()));
}

#[test]
fn fragmented_messages_and_control_frames_pass_untouched_and_hold_back_insertions() {
    let json = stasis_json("se-frag");
    let (a, b) = json.as_bytes().split_at(40);
    let first = encode(false, OP_TEXT, a);
    let ping = encode(true, OP_PING, b"");
    let last = encode(true, OP_CONTINUATION, b);
    let pong = encode(true, OP_PONG, b"x");
    let mut d = Downstream::new(1 << 20);
    let asked = std::cell::Cell::new(0);
    let mut decide = |_: &common::ws_frames::StasisStart| {
        asked.set(asked.get() + 1);
        Some(StasisRewrite::Corrupt)
    };
    assert_eq!(d.insert(), Insert::Never, "not before the upgrade's answer");
    assert_eq!(sent(&d.feed(SWITCHING, &mut decide)), SWITCHING);
    assert_eq!(d.insert(), Insert::Now);
    assert_eq!(sent(&d.feed(&first, &mut decide)), first);
    assert_eq!(d.insert(), Insert::Wait, "inside a fragmented message");
    assert_eq!(sent(&d.feed(&ping, &mut decide)), ping, "a control frame inside it passes");
    assert_eq!(d.insert(), Insert::Wait, "a control frame does not end it");
    assert_eq!(sent(&d.feed(&last, &mut decide)), last);
    assert_eq!(d.insert(), Insert::Now);
    assert_eq!(sent(&d.feed(&pong, &mut decide)), pong);
    assert_eq!(asked.get(), 0, "a fragmented StasisStart is not read");
    // Frames of an extension (RSV1, e.g. compressed) and masked frames are not read either.
    let mut rsv = encode(true, OP_TEXT, json.as_bytes());
    rsv[0] |= 0x40;
    assert_eq!(sent(&d.feed(&rsv, &mut decide)), rsv);
    let masked = [&[0x81, 0x80 | 2, 0, 0, 0, 0][..], b"{}"].concat();
    assert_eq!(sent(&d.feed(&masked, &mut decide)), masked);
    assert_eq!(asked.get(), 0);
}

#[test]
fn no_upgrade_or_a_frame_too_large_passes_raw() {
    let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    let mut d = Downstream::new(1 << 20);
    let ss = encode(true, OP_TEXT, stasis_json("se-x").as_bytes());
    let input = [&refused[..], &ss].concat();
    assert_eq!(sent(&d.feed(&input, &mut |_| Some(StasisRewrite::Corrupt))), input);
    assert_eq!(d.insert(), Insert::Never);

    let mut d = Downstream::new(64);
    let big = encode(true, OP_TEXT, &[b' '; 100]);
    let input = [SWITCHING, &big[..10]].concat();
    assert_eq!(sent(&d.feed(&input, &mut |_| Some(StasisRewrite::Corrupt))), input, "not held back");
    assert_eq!(d.insert(), Insert::Never);
    let rest = [&big[10..], &ss].concat();
    assert_eq!(sent(&d.feed(&rest, &mut |_| Some(StasisRewrite::Corrupt))), rest, "raw from then on");
}

fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![Just(OP_TEXT), Just(OP_BINARY), Just(OP_PING), Just(OP_PONG), Just(OP_CLOSE)];
    (op, prop_oneof![0usize..130, 65_530usize..65_540], any::<u8>()).prop_map(|(op, len, fill)| encode(true, op, &vec![fill; len]))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    /// Whatever the frames and wherever the reads cut them, a stream nothing is rewritten in
    /// comes out as it went in.
    #[test]
    fn any_stream_cut_anywhere_passes_unchanged(frames in proptest::collection::vec(any_frame(), 0..12), cuts in proptest::collection::vec(1usize..70_000, 1..20)) {
        let stream = [SWITCHING.to_vec(), frames.concat()].concat();
        let mut d = Downstream::new(1 << 20);
        let (mut out, mut at, mut i) = (Vec::new(), 0, 0);
        while at < stream.len() {
            let end = (at + cuts[i % cuts.len()]).min(stream.len());
            out.extend(sent(&d.feed(&stream[at..end], &mut never)));
            at = end;
            i += 1;
        }
        prop_assert_eq!(out, stream);
    }
}

/// A fake ARI: accepts one WebSocket upgrade, answers 101, then writes `script` (bytes, or a
/// pause), then closes.
fn fake_ari(script: Vec<Result<Vec<u8>, Duration>>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let t = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return;
            }
            head.push(b[0]);
        }
        s.write_all(SWITCHING).unwrap();
        for step in script {
            match step {
                Ok(bytes) => s.write_all(&bytes).unwrap(),
                Err(pause) => std::thread::sleep(pause),
            }
        }
    });
    (addr, t)
}

#[test]
fn the_proxy_rewrites_stasis_starts_and_passes_everything_else() {
    let dup = encode(true, OP_TEXT, stasis_json("dup-1").as_bytes());
    let bad_json = stasis_json("bad-1");
    let bad = encode(true, OP_TEXT, bad_json.as_bytes());
    let bad_again = encode(true, OP_TEXT, stasis_json("bad-2").as_bytes());
    let ping = encode(true, OP_PING, b"hello");
    let frag1 = encode(false, OP_TEXT, b"{\"type\":\"Stasis");
    let frag2 = encode(true, OP_CONTINUATION, b"Start\"}");
    let close = encode(true, OP_CLOSE, &[0x03, 0xe8]);
    // The delayed copy falls due while the fragmented message is open: it must wait for its end.
    let delay = Duration::from_millis(250);
    let (upstream, server) = fake_ari(vec![
        Ok([&ping[..], &dup, &bad, &bad_again].concat()),
        Err(Duration::from_millis(100)),
        Ok(frag1.clone()),
        Err(Duration::from_millis(400)),
        Ok([&ping[..], &frag2].concat()),
        Err(Duration::from_millis(300)),
        Ok(close.clone()),
        Err(Duration::from_millis(100)),
    ]);
    let proxy = FaultProxy::start(&upstream);
    let dup_rule = proxy.add_stasis_rule(StasisRule::duplicate("dup-", delay).times(1));
    let bad_rule = proxy.add_stasis_rule(StasisRule::corrupt("bad-").times(1));
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(b"GET /ari/events?app=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("the proxy closes when the server does");
    server.join().unwrap();

    let corrupted = encode(true, OP_TEXT, &corrupt(bad_json.as_bytes()).unwrap());
    let want = [SWITCHING, &ping, &dup, &corrupted, &bad_again, &frag1, &ping, &frag2, &dup, &close].concat();
    assert_eq!(got, want, "the copy after the fragmented message, everything else as sent");
    assert_eq!((proxy.stasis_hits(dup_rule), proxy.stasis_hits(bad_rule)), (1, 1), "each rule limited to once");
    let log = proxy.stasis_rewrites();
    assert_eq!(log.iter().map(|r| (r.channel_id.as_str(), r.rewrite.clone())).collect::<Vec<_>>(), [
        ("dup-1", StasisRewrite::Duplicate { delay }),
        ("bad-1", StasisRewrite::Corrupt)
    ]);
    let waited = log[0].again_at.expect("the copy was sent") - log[0].sent_at;
    assert!(waited >= Duration::from_millis(450), "held until the message ended (~500 ms), not {waited:?}");
    assert_eq!(log[1].again_at, None);
}

// ---------------------------------------------------------------------------------------------
// Against the real Asterisk.

/// What Asterisk says of our channels (`se-` callers): hang-up requests and their end, with
/// the cause, when the test heard of it and Asterisk's own timestamp.
#[derive(Debug, Clone)]
struct Heard {
    channel: String,
    kind: String,
    cause: Option<i64>,
    at: Instant,
    timestamp: Option<String>,
}

/// An ARI client of the test's own, straight to Asterisk (not through the proxy), subscribed to
/// every channel's events under an app of its own.
struct Observer {
    heard: Arc<Mutex<Vec<Heard>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    fn start() -> Observer {
        let url = format!("ws://127.0.0.1:8088/ari/events?app=stasis-observer&subscribeAll=true&api_key={ARI_USER}:{ARI_PASSWORD}");
        let (mut ws, _) = tungstenite::connect(&url).expect("the observer connects to Asterisk");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (heard2, stop2) = (heard.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match ws.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                        let kind = v["type"].as_str().unwrap_or_default();
                        let Some(id) = v["channel"]["id"].as_str().filter(|id| id.starts_with("se-")) else { continue };
                        if kind == "ChannelHangupRequest" || kind == "ChannelDestroyed" {
                            heard2.lock().unwrap().push(Heard {
                                channel: id.to_string(),
                                kind: kind.to_string(),
                                cause: v["cause"].as_i64(),
                                at: Instant::now(),
                                timestamp: v["timestamp"].as_str().map(String::from),
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("the observer lost Asterisk: {e}"),
                }
            }
        });
        Observer { heard, stop, thread: Some(thread) }
    }

    fn of(&self, channel: &str) -> Vec<Heard> {
        self.heard.lock().unwrap().iter().filter(|h| h.channel == channel).cloned().collect()
    }

    fn destroyed(&self, channel: &str) -> Option<Heard> {
        self.of(channel).into_iter().find(|h| h.kind == "ChannelDestroyed")
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_behind(proxy: &FaultProxy, name: &str, env: &[(&str, &str)]) -> Rtpvisor {
    let mut all = vec![
        ("RTPVISOR_ARI_APP".to_string(), APP_SE.to_string()),
        ("RTPVISOR_ARI_URL".to_string(), proxy.url()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Rtpvisor::start(name, Options { rtp_ports: PORTS.into(), env: all })
}

fn call(svc: &Rtpvisor, id: &str) -> Option<Value> {
    svc.get("/channels").as_array()?.iter().find(|c| c["channel_id"] == id).cloned()
}

/// Probes of call `id` that came back (0 while it has none).
fn returned(svc: &Rtpvisor, id: &str) -> u64 {
    call(svc, id).and_then(|c| c["media"]["probe"]["returned"].as_u64()).unwrap_or(0)
}

fn wait_serving(svc: &Rtpvisor, id: &str) {
    wait_until(&format!("{id} is active and its probes come back"), Duration::from_secs(20), || {
        call(svc, id).is_some_and(|c| c["state"] == "active") && returned(svc, id) > 0
    });
}

/// The live call `id` is untouched: active in the service, listed by Asterisk, no hang-up heard
/// for it, and its probes keep coming back (50 a second).
fn assert_untouched(svc: &Rtpvisor, observer: &Observer, id: &str) {
    let before = returned(svc, id);
    std::thread::sleep(Duration::from_millis(1000));
    let after = returned(svc, id);
    let c = call(svc, id).unwrap_or_else(|| panic!("{id} is no longer a call of the service"));
    assert_eq!(c["state"], "active", "{c}");
    assert!(asterisk_channels().iter().any(|c| c == id), "{id} is gone from Asterisk");
    assert!(observer.of(id).is_empty(), "Asterisk reported {id} hung up: {:?}", observer.of(id));
    assert!(after >= before + 30, "{id}'s probes keep coming back: {before} -> {after} in 1 s");
    eprintln!("{id}: still live, {before} -> {after} probes back in 1 s");
}

/// Refused records in `/calls/ended`.
fn refused(svc: &Rtpvisor) -> Vec<Value> {
    let page = svc.get("/calls/ended?since=0&limit=1000");
    page["calls"].as_array().unwrap().iter().filter(|c| c["outcome"] == "refused").cloned().collect()
}

/// Our leftovers in Asterisk: the test's callers and far halves, and what the app made.
fn ours_in_asterisk() -> Vec<String> {
    asterisk_channels()
        .into_iter()
        .chain(asterisk_bridges())
        .filter(|id| id.starts_with("se-") || rtpvisor_actors::naming::parse(id).is_some_and(|o| o.app == APP_SE))
        .collect()
}

fn hang_up_and_check_clean(svc: &Rtpvisor, prefix: &str) {
    hang_up_prefixed(prefix);
    wait_until("no live call", Duration::from_secs(15), || svc.metrics()["active_channels"] == 0);
    wait_until("nothing of ours left in Asterisk", Duration::from_secs(15), || ours_in_asterisk().is_empty());
    let p = svc.get("/ports");
    assert_eq!(p["leased"], 0, "{p}");
}

fn degraded(svc: &Rtpvisor) -> bool {
    let (code, r) = svc.get_status("/ready");
    code == 503 && r["supervisor"] == "degraded"
}

/// How many StasisStarts of `id` the service handled (its log says so before it decides).
fn stasis_starts_handled(svc: &Rtpvisor, id: &str) -> usize {
    svc.log_text().matches(&format!("StasisStart event received for channel {id} ")).count()
}

fn duplicate_ignored(svc: &Rtpvisor, id: &str) -> bool {
    svc.log_text().contains(&format!("duplicate StasisStart for live call {id}: ignored"))
}

#[test]
fn a_duplicate_stasis_start_while_degraded_leaves_the_live_call_alone() {
    ensure_asterisk();
    let proxy = FaultProxy::start("127.0.0.1:8088");
    // 3 failures > 2 within 30 s: degraded for long enough to see the duplicate arrive.
    let svc = start_behind(
        &proxy,
        "e2e_stasis_dup_degraded",
        &[("RTPVISOR_FAULT_INJECTION", "true"), ("RTPVISOR_MAX_RESTARTS", "2"), ("RTPVISOR_RESTART_WINDOW_MS", "30000")],
    );
    let observer = Observer::start();
    let victims: Vec<String> = (0..3).map(|i| originate_in(APP_SE, "echo", "probe", &format!("se-dg-victim-{i}"))).collect();
    wait_until("3 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 3);

    // The keeper's StasisStart passes now and again 4 s later: by then the service is degraded.
    let delay = Duration::from_secs(4);
    let rule = proxy.add_stasis_rule(StasisRule::duplicate("se-dg-keep", delay).times(1));
    let keeper = originate_in(APP_SE, "echo", "probe", "se-dg-keep");
    wait_serving(&svc, &keeper);
    for v in &victims {
        let (code, body) = svc.post(&format!("/faults/channels/{v}/panic"));
        assert_eq!(code, 202, "{body}");
    }
    wait_until("the service is degraded", Duration::from_secs(5), || degraded(&svc));
    let degraded_at = Instant::now();
    let rw = proxy.stasis_rewrites();
    assert_eq!(rw.len(), 1, "{rw:?}");
    assert_eq!(rw[0].again_at, None, "the duplicate must come after the service is degraded (raise the delay on a slow machine)");
    wait_until("the 3 failed calls counted", Duration::from_secs(5), || svc.metrics()["failed_calls"] == 3);

    wait_until("the duplicate reached the service", delay + Duration::from_secs(5), || stasis_starts_handled(&svc, &keeper) == 2);
    assert_untouched(&svc, &observer, &keeper);
    assert!(duplicate_ignored(&svc, &keeper), "the log says the duplicate was ignored");
    let again = proxy.stasis_rewrites()[0].again_at.expect("the proxy sent the copy");
    assert!(again > degraded_at, "the copy was sent while degraded");
    assert!(degraded(&svc), "still degraded after the duplicate was handled");
    assert_eq!(proxy.stasis_hits(rule), 1);
    eprintln!(
        "duplicate sent {} ms after the original, {} ms after the service was degraded",
        (again - rw[0].sent_at).as_millis(),
        (again - degraded_at).as_millis()
    );

    let m = svc.metrics();
    assert_eq!(m["rejected_calls"], 0, "nothing refused: {m}");
    assert_eq!(m["active_channels"], 1, "{m}");
    assert_eq!(m["failed_calls"], 3, "{m}");
    assert!(refused(&svc).is_empty(), "{:?}", refused(&svc));
    let log = svc.log_text();
    assert!(!log.contains("Rejecting call"), "no refusal in the log");
    assert_eq!(log.matches("Created channel se-dg-keep ").count(), 1, "one call set up for both copies");

    hang_up_and_check_clean(&svc, "se-dg-");
}

#[test]
fn a_duplicate_stasis_start_at_the_admission_limit_leaves_the_live_call_alone() {
    ensure_asterisk();
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let svc = start_behind(&proxy, "e2e_stasis_dup_limit", &[("RTPVISOR_MAX_CALLS", "2")]);
    let observer = Observer::start();
    // a's copy comes 2 s later, when b has filled the second slot; b's right behind it, when
    // b itself filled it.
    let delay = Duration::from_secs(2);
    proxy.add_stasis_rule(StasisRule::duplicate("se-lim-a", delay).times(1));
    proxy.add_stasis_rule(StasisRule::duplicate("se-lim-b", Duration::ZERO).times(1));
    let a = originate_in(APP_SE, "echo", "probe", "se-lim-a");
    let b = originate_in(APP_SE, "echo", "probe", "se-lim-b");
    wait_until("b's copy, right behind it, reached the service", Duration::from_secs(10), || stasis_starts_handled(&svc, &b) == 2);
    wait_serving(&svc, &a);
    wait_serving(&svc, &b);
    assert_eq!(svc.metrics()["active_channels"], 2);
    let of_a = || proxy.stasis_rewrites().into_iter().find(|r| r.channel_id == a).expect("a's StasisStart was rewritten");
    assert_eq!(of_a().again_at, None, "a's copy must come after both calls are live (raise the delay on a slow machine)");
    wait_until("a's duplicate reached the service", delay + Duration::from_secs(5), || stasis_starts_handled(&svc, &a) == 2);
    assert_eq!(svc.metrics()["active_channels"], 2, "at the limit when it came");

    assert_untouched(&svc, &observer, &a);
    assert_untouched(&svc, &observer, &b);
    assert!(duplicate_ignored(&svc, &a) && duplicate_ignored(&svc, &b), "the log says both duplicates were ignored");
    eprintln!("a's duplicate sent {} ms after the original, both calls live", (of_a().again_at.unwrap() - of_a().sent_at).as_millis());
    let m = svc.metrics();
    assert_eq!(m["rejected_calls"], 0, "nothing refused: {m}");
    assert!(refused(&svc).is_empty());

    // The limit was real: a new caller is refused, with congestion, and only it.
    let c = originate_in(APP_SE, "echo", "probe", "se-lim-c");
    wait_until("the third caller is refused and gone", Duration::from_secs(10), || observer.destroyed(&c).is_some());
    assert_eq!(observer.destroyed(&c).unwrap().cause, Some(CONGESTION));
    let r = refused(&svc);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["channel"], "se-lim-c");
    assert!(r[0]["reason"].as_str().unwrap().contains("admission limit of 2"), "{}", r[0]);
    assert_eq!(svc.metrics()["active_channels"], 2);

    hang_up_and_check_clean(&svc, "se-lim-");
}

/// Milliseconds between two Asterisk timestamps (`2026-11-27T10:00:00.123+0000`) of one day.
fn asterisk_ms(from: &str, to: &str) -> Option<i64> {
    let ms = |t: &str| -> Option<i64> {
        let time = t.split('T').nth(1)?.get(..12)?;
        let mut hms = time.split(':');
        let (h, m): (i64, i64) = (hms.next()?.parse().ok()?, hms.next()?.parse().ok()?);
        let s: f64 = hms.next()?.parse().ok()?;
        Some((h * 3600 + m * 60) * 1000 + (s * 1000.0).round() as i64)
    };
    Some((ms(to)? - ms(from)?).rem_euclid(86_400_000))
}

#[test]
fn an_undecodable_stasis_start_is_answered_at_once_and_the_next_call_is_served() {
    ensure_asterisk();
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let svc = start_behind(&proxy, "e2e_stasis_undecodable", &[]);
    let observer = Observer::start();
    let rule = proxy.add_stasis_rule(StasisRule::corrupt("se-bad").times(1));
    let m0 = svc.metrics();
    let (malformed0, rejected0) = (u64_of(&m0["ari"], "malformed_events"), u64_of(&m0, "rejected_calls"));

    let bad = originate_in(APP_SE, "echo", "probe", "se-bad-1");
    wait_until("the caller of the undecodable StasisStart is gone", Duration::from_secs(10), || {
        observer.destroyed(&bad).is_some()
    });
    let rw = proxy.stasis_rewrites();
    assert_eq!((rw.len(), rw[0].channel_id.as_str(), &rw[0].rewrite), (1, "se-bad-1", &StasisRewrite::Corrupt));
    let gone = observer.destroyed(&bad).unwrap();
    let took = gone.at - rw[0].sent_at;
    let by_asterisk = rw[0].asterisk_timestamp.as_deref().zip(gone.timestamp.as_deref()).and_then(|(a, b)| asterisk_ms(a, b));
    eprintln!(
        "undecodable StasisStart: caller hung up {} ms after the proxy passed it on ({:?} ms by Asterisk's timestamps, StasisStart to ChannelDestroyed)",
        took.as_millis(),
        by_asterisk
    );
    assert!(took < Duration::from_secs(2), "answered at once, not at the next reconciliation: {took:?}");
    assert_eq!(gone.cause, Some(CONGESTION), "{gone:?}");
    assert!(!asterisk_channels().iter().any(|c| c == &bad));

    let m = svc.metrics();
    assert_eq!(u64_of(&m["ari"], "malformed_events"), malformed0 + 1, "{m}");
    assert_eq!(u64_of(&m, "rejected_calls"), rejected0 + 1, "{m}");
    assert_eq!(m["failed_calls"], 0, "{m}");
    assert_eq!(m["active_channels"], 0, "{m}");
    let r = refused(&svc);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["channel"], "se-bad-1");
    let reason = r[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("undecodable StasisStart"), "{reason}");
    assert!(reason.contains("se-bad-1"), "{reason}");
    assert!(svc.log_text().contains("bad StasisStart event for channel se-bad-1"));

    // The rule is spent: the next caller's StasisStart passes as Asterisk wrote it, and is served.
    let good = originate_in(APP_SE, "echo", "probe", "se-bad-2");
    wait_serving(&svc, &good);
    assert_untouched(&svc, &observer, &good);
    assert_eq!(proxy.stasis_hits(rule), 1);
    let m = svc.metrics();
    assert_eq!(u64_of(&m["ari"], "malformed_events"), malformed0 + 1, "{m}");
    assert_eq!(u64_of(&m, "rejected_calls"), rejected0 + 1, "{m}");

    hang_up_and_check_clean(&svc, "se-bad-");
    wait_until("Asterisk reports the served call's end", Duration::from_secs(5), || observer.destroyed(&good).is_some());
    assert_eq!(observer.destroyed(&good).and_then(|h| h.cause), Some(16), "the served call ended by its caller (normal clearing)");
}
