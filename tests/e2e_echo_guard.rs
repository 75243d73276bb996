#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: the shared echo cannot be abused, and calls do not
//! notice when someone tries.
//!
//! The service answers only 127.0.0.1/32 at its echo (`RTPVISOR_ECHO_ALLOW`), 200 datagrams/s
//! per source with a burst of 400. Asterisk sends its shared-echo media from 127.0.0.1 (one
//! port per call), so its calls are inside. While a probe call (through `Echo()`) and two
//! shared-echo calls (to `Milliwatt`) run:
//! 1. a flood from 127.0.0.2 (outside the list) gets nothing back, every datagram counted in
//!    `echo.dropped.not_allowed`;
//! 2. a flood from an allowed source at 2,000/s for ~2 s is cut to 200/s + the burst (within
//!    15 %), while another allowed source under its rate gets every datagram back, and
//!    `rate_limited` grows by exactly what the flood lost (so no call's datagram was cut);
//! 3. oversized datagrams get nothing back (`too_large`).
//!
//! And the calls lose nothing: probe loss 0, the shared-echo calls' media keeps its pace.
//!
//! Shares the real Asterisk with other tests running at the same time: its own Stasis app
//! (`rtpvisor-guard`), ports 10800-10809, touches only its own channels, never restarts or
//! cleans Asterisk.
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const APP: &str = "rtpvisor-guard";
const PORTS: &str = "10800-10809";
const RATE: f64 = 200.0;
const BURST: f64 = 400.0;

fn start() -> Rtpvisor {
    Rtpvisor::start(
        "e2e_echo_guard",
        Options {
            rtp_ports: PORTS.into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), APP.into()),
                ("RTPVISOR_ECHO_ALLOW".into(), "127.0.0.1/32".into()),
                ("RTPVISOR_ECHO_RATE_PPS".into(), "200".into()),
                ("RTPVISOR_ECHO_BURST".into(), "400".into()),
                ("RTPVISOR_ECHO_MAX_BYTES".into(), "1500".into()),
            ],
        },
    )
}

fn calls(svc: &Rtpvisor) -> Vec<Value> {
    svc.get("/channels").as_array().cloned().unwrap_or_default()
}

fn call(svc: &Rtpvisor, id: &str) -> Value {
    calls(svc).into_iter().find(|c| c["channel_id"] == id).unwrap_or_else(|| panic!("call {id} is gone"))
}

fn shared_packets(svc: &Rtpvisor, id: &str) -> u64 {
    call(svc, id)["shared_echo"]["packets"].as_u64().unwrap_or(0)
}

fn echo(svc: &Rtpvisor) -> Value {
    svc.metrics()["echo"].clone()
}

fn dropped(e: &Value, reason: &str) -> u64 {
    e["dropped"][reason].as_u64().unwrap_or_else(|| panic!("no echo.dropped.{reason} in {e}"))
}

/// Sends `n` datagrams of `len` bytes at `pps` from `sock` to `to`, reading back whatever
/// comes meanwhile and for 300 ms after; returns (sent, came back, seconds from the first
/// send to the last).
fn flood(sock: &UdpSocket, to: SocketAddr, pps: f64, n: u64, len: usize) -> (u64, u64, f64) {
    sock.set_nonblocking(true).unwrap();
    let payload = vec![0x5au8; len];
    let mut buf = [0u8; 4096];
    let (mut sent, mut back) = (0u64, 0u64);
    let t0 = Instant::now();
    let mut last_send = t0;
    while sent < n {
        let due = t0 + Duration::from_secs_f64(sent as f64 / pps);
        let now = Instant::now();
        if now >= due {
            if sock.send_to(&payload, to).is_ok() {
                sent += 1;
                last_send = now;
            }
        } else {
            std::thread::sleep((due - now).min(Duration::from_micros(200)));
        }
        while let Ok((got, _)) = sock.recv_from(&mut buf) {
            assert!(got <= len, "never more bytes back than sent: {got} > {len}");
            back += 1;
        }
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        while let Ok((got, _)) = sock.recv_from(&mut buf) {
            assert!(got <= len);
            back += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (sent, back, (last_send - t0).as_secs_f64())
}

#[test]
fn the_echo_refuses_outsiders_and_cuts_floods_while_calls_lose_nothing() {
    ensure_asterisk();
    let svc = start();
    let echo_addr: SocketAddr = format!("127.0.0.1:{}", svc.echo_port).parse().unwrap();
    let probe = originate_in(APP, "echo", "probe", "guard-probe");
    let shared = [
        originate_in(APP, "milliwatt", "shared-echo", "guard-shared-1"),
        originate_in(APP, "milliwatt", "shared-echo", "guard-shared-2"),
    ];
    wait_until("probes return and shared-echo media flows", Duration::from_secs(20), || {
        let cs = calls(&svc);
        let probing = cs.iter().any(|c| c["channel_id"] == probe.as_str() && c["media"]["probe"]["returned"].as_u64() > Some(10));
        let flowing = shared.iter().all(|id| cs.iter().any(|c| c["channel_id"] == id.as_str() && c["shared_echo"]["packets"].as_u64() > Some(10)));
        probing && flowing
    });
    let e0 = echo(&svc);
    let shared0: Vec<u64> = shared.iter().map(|id| shared_packets(&svc, id)).collect();
    let t_calls = Instant::now();

    // 1. Outside the allow-list: nothing back, every datagram counted.
    let outsider = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 is loopback on Linux");
    let (sent, back, _) = flood(&outsider, echo_addr, 5000.0, 5000, 172);
    assert_eq!((sent, back), (5000, 0), "a source outside echo.allow gets nothing");
    wait_until("the outsider's datagrams are counted", Duration::from_secs(2), || {
        dropped(&echo(&svc), "not_allowed") == dropped(&e0, "not_allowed") + 5000
    });

    // 2. An allowed source over its rate, and another one within it, at the same time.
    let e1 = echo(&svc);
    let flooder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let polite = UdpSocket::bind("127.0.0.1:0").unwrap();
    let polite_job = std::thread::spawn(move || flood(&polite, echo_addr, 100.0, 220, 172));
    let (f_sent, f_back, secs) = flood(&flooder, echo_addr, 2000.0, 4400, 172);
    let (p_sent, p_back, _) = polite_job.join().unwrap();
    let expected = RATE * secs + BURST;
    eprintln!("flood: {f_sent} sent in {secs:.2} s, {f_back} back (rate x time + burst = {expected:.0}); polite {p_back}/{p_sent}");
    assert!(
        (f_back as f64 - expected).abs() <= 0.15 * expected,
        "the flood is cut to its rate: {f_back} back, expected {expected:.0} +-15 %"
    );
    assert_eq!(p_back, p_sent, "a source within its rate keeps all of it");
    wait_until("the flood's drops are counted", Duration::from_secs(2), || {
        dropped(&echo(&svc), "rate_limited") == dropped(&e1, "rate_limited") + (f_sent - f_back)
    });

    // 3. Oversized: nothing back.
    let big = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (b_sent, b_back, _) = flood(&big, echo_addr, 500.0, 100, 1501);
    assert_eq!((b_sent, b_back), (100, 0));
    wait_until("oversized datagrams are counted", Duration::from_secs(2), || {
        dropped(&echo(&svc), "too_large") == dropped(&e0, "too_large") + 100
    });

    // The calls went on: nothing of theirs was dropped, the shared echo kept their pace, and
    // the probe call lost nothing.
    let e2 = echo(&svc);
    assert_eq!(
        dropped(&e2, "rate_limited") - dropped(&e0, "rate_limited"),
        f_sent - f_back,
        "only the flood was rate limited"
    );
    let elapsed = t_calls.elapsed().as_secs_f64();
    for (id, before) in shared.iter().zip(&shared0) {
        let grew = shared_packets(&svc, id) - before;
        // Milliwatt sends 50 packets/s; allow for the 250 ms granularity of the readings.
        assert!(grew as f64 >= 50.0 * elapsed - 25.0, "{id}: {grew} in {elapsed:.1} s");
    }
    let p = &call(&svc, &probe)["media"]["probe"];
    assert_eq!(p["lost"].as_u64(), Some(0), "probe loss: {p}");
    assert!(p["returned"].as_u64().unwrap() as f64 >= 50.0 * elapsed * 0.9, "{p}");
    assert_eq!(svc.get_status("/ready").0, 200);

    // Prometheus has the same drops.
    let text = svc.get_text("/metrics/prometheus");
    for reason in ["not_allowed", "rate_limited", "too_large"] {
        let line = format!("rtpvisor_echo_dropped_total{{reason=\"{reason}\"}} ");
        let value: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{text}"))
            .parse()
            .unwrap();
        assert!(value >= dropped(&e2, reason), "{reason}: {value}");
    }

    for id in [probe.as_str(), shared[0].as_str(), shared[1].as_str()] {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("our calls ended", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
}
