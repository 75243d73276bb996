#![cfg(feature = "e2e")]
//! Crash and shutdown against the real Asterisk, with live calls carrying media:
//! `kill -9` then restart (the new process adopts every live call: none is cut), and
//! SIGTERM / SIGINT (calls ended, Asterisk clean, ports released, exit 0 within the deadline).
mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;

fn start_probe_calls(svc: &Rtpvisor, prefix: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| originate("echo", "probe", &format!("{prefix}-{i}"))).collect();
    wait_until("the calls are active", Duration::from_secs(30), || {
        svc.metrics()["active_channels"].as_u64() == Some(n as u64)
    });
    ids
}

fn ours_in_asterisk() -> usize {
    asterisk_channels().iter().filter(|c| c.starts_with("rtpvisor-em-")).count()
        + asterisk_bridges().iter().filter(|b| b.starts_with("rtpvisor-br-")).count()
}

#[test]
fn kill_9_with_20_live_calls_then_restart_adopts_every_call() {
    ensure_asterisk();
    clean_asterisk();
    let mut svc = Rtpvisor::start("e2e_recovery_kill9", Options::default());
    let ids = start_probe_calls(&svc, "k9", 20);
    std::thread::sleep(Duration::from_secs(1));
    let (code, _) = svc.signal("KILL");
    assert_eq!(code, None, "killed by a signal");
    // Asterisk keeps everything of a dead app: 20 callers, 20 externalMedia channels, 20 bridges.
    assert_eq!(ours_in_asterisk(), 40, "Asterisk still holds our channels and bridges");

    let t0 = Instant::now();
    let svc2 = Rtpvisor::start("e2e_recovery_restart", Options::default());
    wait_until("all 20 calls are adopted and their probes come back", Duration::from_secs(10), || {
        let chans = svc2.get("/channels");
        let chans = chans.as_array().unwrap();
        chans.len() == 20
            && chans.iter().all(|c| c["adopted_at_ms"].is_u64() && c["media"]["probe"]["returned"].as_u64() > Some(0))
    });
    let took = t0.elapsed();
    wait_until("the reconciliation is reported", Duration::from_secs(5), || {
        svc2.metrics()["reconcile"]["runs"].as_u64() >= Some(1)
    });
    let r = svc2.metrics()["reconcile"].clone();
    eprintln!("restart to 20 adopted calls with media: {} ms; reconcile: {r}", took.as_millis());
    assert_eq!(r["adopted_calls"], 20, "{r}");
    assert_eq!(r["orphans_cleaned"], 0, "no call was cut: {r}");
    assert_eq!(ours_in_asterisk(), 40, "the same calls, nothing new and nothing ended");
    for id in &ids {
        assert!(asterisk_channels().contains(id), "caller {id} still up");
    }

    // The callers end them; then the restarted service serves new calls.
    for id in &ids {
        ari_delete(&format!("/channels/{id}")).unwrap();
    }
    wait_until("the adopted calls ended by their callers", Duration::from_secs(10), || {
        svc2.metrics()["ended"]["hangup"] == 20 && asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    let more = start_probe_calls(&svc2, "after", 2);
    std::thread::sleep(Duration::from_secs(1));
    assert!(svc2.metrics()["total_latencies"].as_u64().unwrap() > 50);
    for id in more {
        ari_delete(&format!("/channels/{id}")).unwrap();
    }
    assert_all_released(&svc2, "after the restart");
}

fn shutdown_with_live_calls(sig: &str) {
    ensure_asterisk();
    clean_asterisk();
    let mut svc = Rtpvisor::start(&format!("e2e_recovery_{sig}"), Options::default());
    start_probe_calls(&svc, sig, 5);
    let ports: Vec<u16> = svc.get("/channels").as_array().unwrap().iter()
        .map(|c| c["port"].as_u64().unwrap() as u16).collect();
    assert_eq!(ports.len(), 5);
    let (code, took) = svc.signal(sig);
    eprintln!("SIG{sig} with 5 live calls: exit {code:?} after {} ms", took.as_millis());
    assert_eq!(code, Some(0), "exit code 0 after SIG{sig}");
    assert!(took < Duration::from_secs(5), "within the 5 s deadline: {took:?}");
    // Everything ended in Asterisk and every port is free for anyone to bind.
    wait_until("Asterisk lists no channel or bridge", Duration::from_secs(5), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    for p in ports {
        UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} still held: {e}"));
    }
    let log = svc.log_text();
    assert!(log.contains(&format!("SIG{sig} received: shutting down")), "{log}");
    assert!(log.contains("all 5 call(s) ended"), "{log}");
}

#[test]
fn sigterm_with_live_calls_ends_them_all_and_exits_0() {
    shutdown_with_live_calls("TERM");
}

#[test]
fn sigint_with_live_calls_ends_them_all_and_exits_0() {
    shutdown_with_live_calls("INT");
}
