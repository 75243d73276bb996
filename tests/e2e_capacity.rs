#![cfg(feature = "e2e")]
//! Pool capacity against the real Asterisk: 102 calls on the default 101-port
//! range (40 of them then hung up by their callers, the other 61 ended by a SIGTERM of the
//! service), and a 3-port range where another process holds one port.
mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

#[test]
fn calls_beyond_the_pool_are_rejected_cleanly_and_everything_is_released() {
    ensure_asterisk();
    clean_asterisk();
    let mut svc = Rtpvisor::start("e2e_capacity_102", Options::default());

    let ids: Vec<String> = (0..102).map(|i| originate("silence", "echo", &format!("cap-{i}"))).collect();
    wait_until("101 calls active and 1 rejected", Duration::from_secs(60), || {
        let m = svc.metrics();
        m["active_channels"].as_u64() == Some(101) && m["rejected_calls"].as_u64() == Some(1)
    });
    let p = svc.get("/ports");
    assert_eq!(u64_of(&p, "leased"), 101, "{p}");
    assert_eq!(u64_of(&p, "free"), 0, "{p}");
    // The admission limit (the pool's size by default) refuses call 102 before the pool is
    // asked for a port it does not have.
    assert_eq!(u64_of(&p, "exhausted_total"), 0, "{p}");
    assert!(svc.log_text().contains("at the admission limit of 101 concurrent calls"));
    let live: Vec<String> = svc.get("/channels").as_array().unwrap().iter()
        .map(|c| c["channel_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(live.len(), 101);
    let rejected: Vec<&String> = ids.iter().filter(|id| !live.contains(id)).collect();
    assert_eq!(rejected.len(), 1);
    // The rejected caller was hung up (congestion): Asterisk no longer lists it.
    wait_until("the rejected caller is gone from Asterisk", Duration::from_secs(10), || {
        !asterisk_channels().contains(rejected[0])
    });
    let prom = svc.get_text("/metrics/prometheus");
    assert!(prom.contains("rtpvisor_calls_rejected_total{mode=\"echo\"} 1"), "{prom}");

    // 40 callers hang up; the service's own shutdown ends the other 61 calls, all at once
    // (~250 ARI requests, more than Asterisk's HTTP session limit of 100 takes at once).
    for id in &live[..40] {
        ari_delete(&format!("/channels/{id}")).expect("hang up");
    }
    wait_until("61 calls active", Duration::from_secs(30), || {
        svc.metrics()["active_channels"].as_u64() == Some(61)
    });
    let ports: Vec<u16> = svc.get("/channels").as_array().unwrap().iter()
        .map(|c| c["port"].as_u64().unwrap() as u16).collect();
    let (code, took) = svc.signal("TERM");
    eprintln!("SIGTERM with 61 live calls: exit {code:?} after {} ms", took.as_millis());
    assert_eq!(code, Some(0), "exit code 0 after SIGTERM");
    assert!(took < Duration::from_secs(5), "within the 5 s deadline: {took:?}");
    assert!(svc.log_text().contains("all 61 call(s) ended"), "{}", svc.log_text());
    wait_until("Asterisk lists no channel or bridge", Duration::from_secs(20), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    for p in ports {
        std::net::UdpSocket::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("port {p} still held: {e}"));
    }
}

#[test]
fn a_port_held_by_another_process_is_skipped_not_fatal() {
    ensure_asterisk();
    clean_asterisk();
    let held = UdpSocket::bind("127.0.0.1:10201").expect("hold port 10201");
    let svc = Rtpvisor::start(
        "e2e_capacity_3",
        Options { rtp_ports: "10200-10202".into(), ..Options::default() },
    );
    let ids: Vec<String> = (0..3).map(|i| originate("silence", "echo", &format!("three-{i}"))).collect();
    wait_until("2 calls active and 1 rejected", Duration::from_secs(20), || {
        let m = svc.metrics();
        m["active_channels"].as_u64() == Some(2) && m["rejected_calls"].as_u64() == Some(1)
    });
    let mut ports: Vec<u64> = svc.get("/channels").as_array().unwrap().iter()
        .map(|c| c["port"].as_u64().unwrap()).collect();
    ports.sort();
    assert_eq!(ports, vec![10200, 10202]);
    let p = svc.get("/ports");
    assert_eq!(p["unavailable_ports"], serde_json::json!([10201]), "{p}");
    assert_eq!(u64_of(&p, "skipped_total"), 1, "{p}");
    assert!(svc.log_text().contains("port 10201 is in use by another process"));

    for id in &ids {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("no active channel", Duration::from_secs(20), || {
        svc.metrics()["active_channels"].as_u64() == Some(0)
    });
    assert_eq!(u64_of(&svc.get("/ports"), "leased"), 0);
    wait_until("Asterisk lists no channel or bridge", Duration::from_secs(20), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    drop(held);
}
