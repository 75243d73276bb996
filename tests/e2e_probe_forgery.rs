#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: probe returns cannot be forged from what the API
//! shows.
//!
//! A probe call through `Echo()` runs. From `/channels` anyone learns its call number (which
//! was all a probe's identity derived from: magic, a tag from the call number, an index) and
//! Asterisk's address and port. The test builds probes the way they could be built before
//! they carried a secret, for indexes already sent and returned, in flight, and about to be
//! sent, and sends them to the call's port from Asterisk's address (spoofed through a raw
//! socket: the port is Asterisk's). rtpvisor counts every one as `foreign`; none is taken for
//! a return (which would also make the genuine return a `duplicate`), and the call's own
//! probes keep coming back with no loss.
//!
//! Shares the real Asterisk with other tests running at the same time: its own Stasis app
//! (`rtpvisor-forge`), ports 10810-10819, touches only its own channels. Needs root (raw
//! socket).
mod common;

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use common::dup::send_spoofed;
use common::*;
use serde_json::Value;

const APP: &str = "rtpvisor-forge";
const PORTS: &str = "10810-10819";

fn call(svc: &Rtpvisor, id: &str) -> Value {
    svc.get("/channels")
        .as_array()
        .and_then(|a| a.iter().find(|c| c["channel_id"] == id).cloned())
        .unwrap_or_else(|| panic!("call {id} is gone"))
}

/// A probe as anyone could make it before probes carried a secret: magic, the tag derived
/// from the call number, the index, and the filler derived from tag and index alone
/// (SplitMix64's finaliser), behind a PCMU RTP header.
fn forged(call_no: u64, index: u64, seq: u16) -> Vec<u8> {
    let tag = call_no as u32;
    let mut p = vec![0u8; 12 + 160];
    p[0] = 0x80;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(index as u32 * 160).to_be_bytes());
    p[8..12].copy_from_slice(&0x5256_0000u32.to_be_bytes());
    let payload = &mut p[12..];
    payload[..4].copy_from_slice(b"RVPB");
    payload[4..8].copy_from_slice(&tag.to_be_bytes());
    payload[8..16].copy_from_slice(&index.to_be_bytes());
    let mut z = index ^ (u64::from(tag) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let seed = z ^ (z >> 31);
    for (i, b) in payload[16..].iter_mut().enumerate() {
        *b = (seed >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(37);
    }
    p
}

#[test]
fn forged_probe_returns_are_foreign_not_returned() {
    ensure_asterisk();
    let svc = Rtpvisor::start(
        "e2e_probe_forgery",
        Options { rtp_ports: PORTS.into(), env: vec![("RTPVISOR_ARI_APP".into(), APP.into())] },
    );
    let id = originate_in(APP, "echo", "probe", "forge-probe");
    wait_until("probes come back", Duration::from_secs(20), || {
        svc.get("/channels")
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["channel_id"] == id.as_str() && c["media"]["probe"]["returned"].as_u64() > Some(50)))
    });
    // Everything the forger uses comes from the public API.
    let c = call(&svc, &id);
    let call_no = c["call_no"].as_u64().expect("call_no");
    let port = c["port"].as_u64().expect("port") as u16;
    let asterisk: SocketAddrV4 = c["asterisk_address"].as_str().expect("asterisk_address").parse().unwrap();
    let target = SocketAddrV4::new([127, 0, 0, 1].into(), port);
    let before = c["media"]["probe"].clone();
    eprintln!("call {call_no} on port {port}, Asterisk at {asterisk}, probe {before}");

    // For 2 s, every 5 ms: forgeries of the last few indexes sent, of the one due now and of
    // the next few, so some are in the air while the genuine probe is in flight.
    let t0 = Instant::now();
    let sent0 = before["sent"].as_u64().unwrap();
    let mut forgeries = 0u64;
    let mut seq = 40_000u16;
    while t0.elapsed() < Duration::from_secs(2) {
        let now_index = sent0 + (t0.elapsed().as_millis() / 20) as u64;
        for index in now_index.saturating_sub(3)..now_index + 3 {
            send_spoofed(asterisk, target, &forged(call_no, index, seq)).expect("raw socket (root?)");
            seq = seq.wrapping_add(1);
            forgeries += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = call(&svc, &id)["media"]["probe"].clone();
    eprintln!("{forgeries} forgeries; probe after {after}");
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(d("foreign"), forgeries, "every forgery is foreign");
    assert_eq!(after["duplicates"].as_u64(), Some(0), "no forgery was taken for a return");
    assert_eq!(after["lost"].as_u64(), Some(0), "the genuine probes keep coming back");
    assert!(d("returned") >= 90, "2.5 s of genuine returns: {}", d("returned"));
    assert_eq!(
        after["sent"].as_u64(),
        Some(after["returned"].as_u64().unwrap() + after["lost"].as_u64().unwrap() + after["in_flight"].as_u64().unwrap())
    );
    // The secret shows nowhere: not in the call's view, not in the log.
    let view = call(&svc, &id).to_string();
    assert!(!view.contains("secret"), "{view}");
    assert!(!svc.log_text().to_lowercase().contains("secret"), "the log mentions a secret");

    let _ = ari_delete(&format!("/channels/{id}"));
    wait_until("our call ended", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
}
