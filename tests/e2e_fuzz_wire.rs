#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: 100,000 random datagrams on the wire while calls run.
//!
//! A probe call (through `Echo()`), an echo call and a shared-echo call (both to `Milliwatt`)
//! run. The test sends 100,000 datagrams of random size (0-2,000 bytes) and random content
//! at both leased ports and at the echo port, from three loopback sources (127.0.0.1 and
//! 127.0.0.2, which the echo allows, and 127.0.0.3, which it does not), plus 2,000 spoofed
//! from Asterisk's own address to the probe call's port (raw socket). Paced at ~10,000/s so
//! the kernel drops none (checked: /proc/net/snmp's UDP receive-buffer errors).
//!
//! Then: the service is still ready; the calls lost nothing (probe loss 0, the echo call's
//! receive loss 0, no media loop, the shared-echo call kept its pace); and the counters
//! account for every datagram, exactly: on the call ports each one from a stranger is
//! `dropped_foreign`, each spoofed one `dropped_malformed` or a `foreign` probe; at the echo
//! each one is reflected (the sender got it back) or dropped as `not_allowed`, `too_large`
//! or `rate_limited`, and the echo's `packets` is what the senders got back plus what the
//! shared-echo call sent.
//!
//! Shares the real Asterisk with other tests running at the same time: its own Stasis app
//! (`rtpvisor-fuzz`), ports 10820-10829, touches only its own channels. Needs root (raw
//! socket).
mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::dup::send_spoofed;
use common::*;
use serde_json::Value;

const APP: &str = "rtpvisor-fuzz";
const PORTS: &str = "10820-10829";
const TOTAL: u64 = 100_000;
const SPOOFED: u64 = 2_000;
const MAX_BYTES: usize = 1500;

fn call(svc: &Rtpvisor, id: &str) -> Value {
    svc.get("/channels")
        .as_array()
        .and_then(|a| a.iter().find(|c| c["channel_id"] == id).cloned())
        .unwrap_or_else(|| panic!("call {id} is gone"))
}

/// UDP receive-buffer errors of the whole machine (`Udp: ... RcvbufErrors`).
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or_else(|| panic!("no {} in {v}", path.join(".")))
}

#[test]
fn random_datagrams_at_every_port_are_all_accounted_for_and_calls_lose_nothing() {
    ensure_asterisk();
    let svc = Rtpvisor::start(
        "e2e_fuzz_wire",
        Options {
            rtp_ports: PORTS.into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), APP.into()),
                ("RTPVISOR_ECHO_ALLOW".into(), "127.0.0.1/32,127.0.0.2/32".into()),
                ("RTPVISOR_ECHO_MAX_BYTES".into(), MAX_BYTES.to_string()),
            ],
        },
    );
    let probe = originate_in(APP, "echo", "probe", "fuzz-probe");
    let echo_call = originate_in(APP, "milliwatt", "echo", "fuzz-echo");
    let shared = originate_in(APP, "milliwatt", "shared-echo", "fuzz-shared");
    wait_until("media flows on every call", Duration::from_secs(20), || {
        let Some(cs) = svc.get("/channels").as_array().cloned() else { return false };
        let get = |id: &str| cs.iter().find(|c| c["channel_id"] == id).cloned().unwrap_or(Value::Null);
        get(&probe)["media"]["probe"]["returned"].as_u64() > Some(10)
            && get(&echo_call)["media"]["packets_out"].as_u64() > Some(10)
            && get(&shared)["shared_echo"]["packets"].as_u64() > Some(10)
    });
    let (p0, e0, s0) = (call(&svc, &probe), call(&svc, &echo_call), call(&svc, &shared));
    let echo0 = svc.metrics()["echo"].clone();
    let rcvbuf0 = udp_rcvbuf_errors();
    let probe_port = n(&p0, &["port"]) as u16;
    let echo_call_port = n(&e0, &["port"]) as u16;
    let asterisk_of_probe: SocketAddrV4 = p0["asterisk_address"].as_str().unwrap().parse().unwrap();
    let targets: [SocketAddr; 3] = [
        ([127, 0, 0, 1], probe_port).into(),
        ([127, 0, 0, 1], echo_call_port).into(),
        ([127, 0, 0, 1], svc.echo_port).into(),
    ];
    const ECHO: usize = 2;
    let sources: Vec<UdpSocket> = ["127.0.0.1:0", "127.0.0.2:0", "127.0.0.3:0"]
        .iter()
        .map(|a| {
            let s = UdpSocket::bind(a).expect("loopback source");
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    const ALLOWED: [bool; 3] = [true, true, false];

    // sent[source][target]; at the echo, from allowed sources, also how many were too large.
    let mut sent = [[0u64; 3]; 3];
    let mut too_large = [0u64; 3];
    let mut back = [0u64; 3];
    let mut spoofed = 0u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 2048];
    let mut rx = vec![0u8; 4096];
    let drain = |back: &mut [u64; 3], rx: &mut [u8]| {
        for (i, s) in sources.iter().enumerate() {
            while let Ok((len, from)) = s.recv_from(rx) {
                assert_eq!(from, targets[ECHO], "only the echo answers strangers");
                assert!(len <= MAX_BYTES, "nothing above echo.max_bytes is answered: {len}");
                back[i] += 1;
            }
        }
    };
    let t0 = Instant::now();
    let pace = 10_000.0; // datagrams per second
    for k in 0..TOTAL {
        let due = t0 + Duration::from_secs_f64(k as f64 / pace);
        while Instant::now() < due {
            drain(&mut back, &mut rx);
            std::thread::sleep(Duration::from_micros(300));
        }
        assert!(t0.elapsed() < Duration::from_secs(40), "bounded in time");
        let len = rng.below(2001) as usize;
        rng.fill(&mut buf[..len]);
        if k % (TOTAL / SPOOFED) == 0 {
            send_spoofed(asterisk_of_probe, SocketAddrV4::new([127, 0, 0, 1].into(), probe_port), &buf[..len])
                .expect("raw socket (root?)");
            spoofed += 1;
            continue;
        }
        let (s, t) = (rng.below(3) as usize, rng.below(3) as usize);
        sources[s].send_to(&buf[..len], targets[t]).expect("send");
        sent[s][t] += 1;
        if t == ECHO && ALLOWED[s] && len > MAX_BYTES {
            too_large[s] += 1;
        }
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let settle = Instant::now() + Duration::from_millis(800);
    while Instant::now() < settle {
        drain(&mut back, &mut rx);
        std::thread::sleep(Duration::from_millis(5));
    }
    let total_sent: u64 = sent.iter().flatten().sum::<u64>() + spoofed;
    assert_eq!(total_sent, TOTAL);
    let rcvbuf_drops = udp_rcvbuf_errors() - rcvbuf0;
    eprintln!("sent {total_sent} in {send_secs:.1} s: {sent:?} + {spoofed} spoofed; echo answered {back:?}; UDP receive-buffer errors on the machine meanwhile: {rcvbuf_drops}");

    // Still ready, still serving.
    assert_eq!(svc.get_status("/ready").0, 200);
    let (p1, e1, s1) = (call(&svc, &probe), call(&svc, &echo_call), call(&svc, &shared));
    let echo1 = svc.metrics()["echo"].clone();
    let d = |a: &Value, b: &Value, path: &[&str]| n(b, path) - n(a, path);

    // The calls lost nothing.
    assert_eq!(n(&p1, &["media", "probe", "lost"]), 0, "probe loss: {}", p1["media"]["probe"]);
    assert!(d(&p0, &p1, &["media", "probe", "returned"]) as f64 >= 50.0 * send_secs * 0.9, "{}", p1["media"]["probe"]);
    assert_eq!(n(&e1, &["media", "receive", "lost"]), 0, "echo call loss: {}", e1["media"]);
    assert_eq!(n(&e1, &["media", "dropped_loop"]), 0);
    assert_eq!(n(&e1, &["media", "packets_out"]), n(&e1, &["media", "packets_in"]), "every packet of the echo call reflected");
    let shared_grew = d(&s0, &s1, &["shared_echo", "packets"]);
    assert!(shared_grew as f64 >= 50.0 * send_secs - 25.0, "shared-echo call kept its pace: {shared_grew} in {send_secs:.1} s");

    // Every datagram accounted for. Call ports: strangers are foreign; the spoofed ones from
    // Asterisk's address are not RTP (malformed) or RTP but no probe of ours (foreign).
    // Exact when the kernel dropped nothing; on a busy machine a socket's receive queue can
    // overflow (counted in /proc/net/snmp RcvbufErrors, machine-wide): what a check misses must
    // then be within what the kernel says it dropped, all checks together.
    let mut short = 0u64;
    let mut account = |got: u64, want: u64, what: &str| {
        assert!(got <= want, "{what}: counted {got}, more than the {want} sent");
        if rcvbuf_drops == 0 {
            assert_eq!(got, want, "{what}");
        }
        short += want - got;
    };
    let to = |t: usize| sent.iter().map(|s| s[t]).sum::<u64>();
    account(d(&p0, &p1, &["media", "dropped_foreign"]), to(0), "probe port");
    account(
        d(&p0, &p1, &["media", "dropped_malformed"]) + d(&p0, &p1, &["media", "probe", "foreign"]),
        spoofed,
        "spoofed at the probe port",
    );
    assert_eq!(d(&p0, &p1, &["media", "probe", "duplicates"]), 0, "no random datagram passed for a probe");
    account(d(&e0, &e1, &["media", "dropped_foreign"]), to(1), "echo call's port");
    // The echo: reflected (and received back), or dropped for a reason.
    account(d(&echo0, &echo1, &["dropped", "not_allowed"]), sent[2][ECHO], "not allowed");
    account(d(&echo0, &echo1, &["dropped", "too_large"]), too_large.iter().sum::<u64>(), "too large");
    let within: u64 = (0..2).map(|s| sent[s][ECHO] - too_large[s]).sum();
    assert_eq!(back[2], 0, "the outsider got nothing");
    account(d(&echo0, &echo1, &["dropped", "rate_limited"]) + back[0] + back[1], within, "rate limited or answered");
    eprintln!("accounted for: every datagram but {short}; the kernel dropped {rcvbuf_drops} on full receive queues");
    assert!(short <= rcvbuf_drops, "{short} datagrams unaccounted for, more than the kernel's {rcvbuf_drops} drops");
    // Reflected = what our sources got back + what the shared-echo call sent meanwhile
    // (read from two views a few ms apart: the call keeps sending 50/s).
    let reflected = d(&echo0, &echo1, &["packets"]);
    let asterisk_part = reflected as i64 - (back[0] + back[1]) as i64;
    assert!((asterisk_part - shared_grew as i64).abs() <= 25, "echo packets {reflected}: ours {} + Asterisk's {shared_grew}", back[0] + back[1]);

    for id in [&probe, &echo_call, &shared] {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("our calls ended", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
}
