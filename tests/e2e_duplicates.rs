#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: echo mode tells a network duplicate from a media loop.
//!
//! 1. An echo-mode call to `Milliwatt` (Asterisk sends a tone; the far end does not echo).
//!    A duplicating peer on `lo` ([`common::dup`]) copies every datagram Asterisk sends to the
//!    call's port for ~3 s. Each copy is a network duplicate (same source, SSRC, sequence,
//!    timestamp, payload): counted in `duplicates`, never taken for a loop.
//! 2. An echo-mode call to `Echo()` (a far end that really echoes). Nothing flows by itself
//!    (neither side originates media), so the test sends a few RTP packets to the call's port
//!    from Asterisk's address (spoofed); rtpvisor reflects them to Asterisk, Asterisk's Echo()
//!    returns them through the bridge with its own SSRC and sequence numbers: our reflection
//!    coming back, a loop, detected and dropped, so the loop dies out.
//!
//! Shares the real Asterisk with other tests running at the same time: its own Stasis app
//! (`rtpvisor-dup`), its own port range, touches only its own channels, never restarts or
//! cleans Asterisk. Needs root (packet and raw sockets).
mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::dup::{build_udp4, checksum, parse_udp4, send_spoofed, Duplicator, MARK_ID, MARK_TTL};
use common::*;
use serde_json::Value;

const APP: &str = "rtpvisor-dup";
const PORTS: &str = "10300-10309";

/// Originates a Local channel into our own app; returns the Stasis (caller) channel id.
fn originate_dup(exten: &str, id: &str) -> String {
    let endpoint = format!("Local/{exten}@rtpvisor-test");
    let far = format!("{id}-far");
    let v = ari_post(
        "/channels",
        &[
            ("endpoint", endpoint.as_str()),
            ("app", APP),
            ("appArgs", "echo"),
            ("formats", "ulaw"),
            ("channelId", id),
            ("otherChannelId", far.as_str()),
        ],
    )
    .unwrap_or_else(|e| panic!("originate {endpoint}: {e}"));
    v["id"].as_str().expect("channel id").to_string()
}

/// Our service's view of the call `id` (None while it is not listed).
fn call(svc: &Rtpvisor, id: &str) -> Option<Value> {
    svc.get("/channels").as_array()?.iter().find(|c| c["channel_id"] == id).cloned()
}

/// The call's leased port and Asterisk's address, once its media stream is up.
fn endpoints(svc: &Rtpvisor, id: &str) -> (SocketAddrV4, SocketAddrV4) {
    let mut found = None;
    wait_until(&format!("call {id} has its media stream"), Duration::from_secs(20), || {
        found = call(svc, id).and_then(|c| {
            let port = c["port"].as_u64()?;
            let peer: SocketAddrV4 = c["asterisk_address"].as_str()?.parse().ok()?;
            c["media"].is_object().then_some((SocketAddrV4::new([127, 0, 0, 1].into(), port as u16), peer))
        });
        found.is_some()
    });
    found.expect("endpoints")
}

fn media(svc: &Rtpvisor, id: &str) -> Value {
    call(svc, id).unwrap_or_else(|| panic!("call {id} is gone"))["media"].clone()
}

fn duplicates(m: &Value) -> u64 {
    m["receive"]["duplicates"].as_u64().unwrap_or_else(|| panic!("no receive.duplicates in {m}"))
}

/// A PCMU RTP packet: SSRC, sequence number, timestamp, and a payload distinct per packet.
fn rtp(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
    let mut p = vec![0u8; 12 + 160];
    p[0] = 0x80;
    p[1] = 0; // PCMU
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in p[12..].iter_mut().enumerate() {
        *b = (seq as usize * 7 + i) as u8 | 0x80;
    }
    p
}

/// Ends our calls and checks the service released everything, and that Asterisk lists none of
/// the channels and bridges of these calls (others' may exist: shared Asterisk).
fn end_and_check_released(svc: &Rtpvisor, callers: &[String]) {
    for id in callers {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("no active channel", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
    let p = svc.get("/ports");
    assert_eq!(u64_of(&p, "leased"), 0, "{p}");
    assert_eq!(
        u64_of(&p, "free") + u64_of(&p, "quarantined") + u64_of(&p, "unavailable"),
        u64_of(&p, "size"),
        "{p}"
    );
    let ours = |id: &String| callers.iter().any(|c| id.contains(c.as_str()));
    wait_until("Asterisk lists none of our channels or bridges", Duration::from_secs(20), || {
        !asterisk_channels().iter().any(ours) && !asterisk_bridges().iter().any(ours)
    });
}

#[test]
fn the_spoofing_helpers_build_what_they_parse() {
    let from: SocketAddrV4 = "127.0.0.1:31000".parse().unwrap();
    let to: SocketAddrV4 = "127.0.0.1:10300".parse().unwrap();
    let p = build_udp4(from, to, MARK_ID, MARK_TTL, b"hello");
    let d = parse_udp4(&p).expect("parses");
    assert_eq!((d.from, d.to, d.id, d.ttl, d.payload), (from, to, MARK_ID, MARK_TTL, &b"hello"[..]));
    // Both checksums verify: summing a header with its checksum gives 0.
    assert_eq!(checksum(&[&p[..20]]), 0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = 17;
    pseudo[10..].copy_from_slice(&((p.len() - 20) as u16).to_be_bytes());
    assert_eq!(checksum(&[&pseudo, &p[20..]]), 0);
    // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
    assert_eq!(checksum(&[&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), 0x220d);
    assert_eq!(parse_udp4(&p[..27]), None, "truncated");
    assert!(send_spoofed("10.0.0.1:1".parse().unwrap(), to, b"x").is_err(), "loopback only");
}

#[test]
fn echo_mode_counts_network_duplicates_and_still_detects_real_loops() {
    ensure_asterisk();
    let svc = Rtpvisor::start(
        "e2e_duplicates",
        Options {
            rtp_ports: PORTS.into(),
            env: vec![("RTPVISOR_ARI_APP".into(), APP.into())],
        },
    );
    // The reconciliation at ARI connect can take a call being set up meanwhile for an orphan
    // and hang up its externalMedia channel (seen here): originate only after it.
    wait_until("the first reconciliation is done", Duration::from_secs(10), || {
        svc.log_text().contains("reconciled in")
    });
    let tag = std::process::id();
    let mut callers = Vec::new();

    // 1. Network duplicates of Asterisk's tone.
    let mw = originate_dup("milliwatt", &format!("dup-mw-{tag}"));
    callers.push(mw.clone());
    let (port, asterisk) = endpoints(&svc, &mw);
    wait_until("the tone flows", Duration::from_secs(10), || media(&svc, &mw)["packets_in"].as_u64() > Some(20));
    let before = media(&svc, &mw);
    let dup = Duplicator::start(asterisk, port, 1000, Duration::from_secs(3)).expect("packet and raw sockets (root?)");
    let counts = dup.wait();
    std::thread::sleep(Duration::from_millis(300));
    let after = media(&svc, &mw);
    eprintln!("duplicator: {counts:?}; before {before}\nafter {after}");
    assert_eq!(counts.failed, 0, "{counts:?}");
    assert!(counts.injected >= 100, "3 s of a 50 packet/s tone: {counts:?}");
    let grew = duplicates(&after) - duplicates(&before);
    assert!(
        grew.abs_diff(counts.injected) <= 3,
        "duplicates grew by {grew}, {} copies were injected",
        counts.injected
    );
    assert_eq!(after["dropped_loop"].as_u64(), Some(0), "{after}");
    assert_eq!(after["loop_detected"].as_bool(), Some(false), "{after}");
    // An echo returns what it gets: every copy was reflected too.
    let out = after["packets_out"].as_u64().unwrap() - before["packets_out"].as_u64().unwrap();
    let inn = after["packets_in"].as_u64().unwrap() - before["packets_in"].as_u64().unwrap();
    assert_eq!(out, inn, "reflected everything received: {after}");

    // 2. A far end that echoes: our reflection comes back through Asterisk, a loop.
    let echo = originate_dup("echo", &format!("dup-echo-{tag}"));
    callers.push(echo.clone());
    let (port, asterisk) = endpoints(&svc, &echo);
    std::thread::sleep(Duration::from_millis(500));
    let quiet = media(&svc, &echo);
    eprintln!("echo call before injection: {quiet}");
    const INJECT: u16 = 25;
    for i in 0..INJECT {
        send_spoofed(asterisk, port, &rtp(0x7e57_d0b1, 1000 + i, 8000 + 160 * u32::from(i))).expect("spoofed RTP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut m = Value::Null;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        m = media(&svc, &echo);
        if m["loop_detected"].as_bool() == Some(true) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("echo call after injection: {m}");
    assert_eq!(m["loop_detected"].as_bool(), Some(true), "Echo() returned our reflection: a loop. {m}");
    let dropped = m["dropped_loop"].as_u64().unwrap();
    assert!(dropped >= 1, "{m}");
    // Dropped loop packets are not reflected again: the traffic dies out.
    std::thread::sleep(Duration::from_millis(500));
    let settled = media(&svc, &echo);
    std::thread::sleep(Duration::from_millis(1000));
    let later = media(&svc, &echo);
    assert_eq!(settled["packets_in"], later["packets_in"], "the loop died out: {settled} vs {later}");
    assert_eq!(later["receive"]["duplicates"].as_u64(), Some(0), "no loop packet was taken for a duplicate: {later}");
    eprintln!(
        "loop: injected {INJECT}, reflected {}, came back and dropped {}",
        later["packets_out"], later["dropped_loop"]
    );

    end_and_check_released(&svc, &callers);
}
