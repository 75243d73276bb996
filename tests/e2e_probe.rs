#![cfg(feature = "e2e")]
//! End to end against the real Asterisk: 20 concurrent `probe` calls originated over ARI
//! (Local channel to the Echo() extension) for 5 s. Every probe packet goes rtpvisor ->
//! Asterisk -> bridge -> Local -> Echo() -> back, and its round trip is measured.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[test]
fn twenty_probe_calls_through_echo_measure_rtt_and_leave_nothing_behind() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_probe", Options::default());

    let ids: Vec<String> = (0..20).map(|i| originate("echo", "probe", &format!("probe-{i}"))).collect();
    wait_until("20 calls are active", Duration::from_secs(20), || {
        svc.metrics()["active_channels"].as_u64() == Some(20)
    });
    std::thread::sleep(Duration::from_secs(5));

    // 20 distinct ports from the range, each call with its Asterisk address.
    let chans = svc.get("/channels");
    let chans = chans.as_array().expect("channel list");
    assert_eq!(chans.len(), 20);
    let ports: HashSet<u64> = chans.iter().map(|c| c["port"].as_u64().expect("port")).collect();
    assert_eq!(ports.len(), 20, "ports must be distinct: {ports:?}");
    assert!(ports.iter().all(|p| (10000..=10100).contains(p)));
    for c in chans {
        assert_eq!(c["mode"], "probe");
        assert!(c["asterisk_address"].is_string(), "{c}");
        let probe = &c["media"]["probe"];
        assert!(probe["returned"].as_u64().unwrap() > 200, "each call ran 5 s at 50 packets/s: {c}");
    }
    let one = svc.get(&format!("/channels/{}", ids[0]));
    assert_eq!(one["channel_id"], ids[0].as_str());

    for id in &ids {
        ari_delete(&format!("/channels/{id}")).expect("hang up caller");
    }
    wait_until("no active channel", Duration::from_secs(20), || {
        svc.metrics()["active_channels"].as_u64() == Some(0)
    });

    let m = svc.metrics();
    eprintln!("metrics after 20 probe calls: {m:#}");
    let probe = &m["modes"]["probe"];
    let returned = u64_of(probe, "packets_in");
    assert!(returned >= 20 * 240, "20 calls x >= 5 s x 50/s should come back: {returned}");
    assert_eq!(u64_of(&m, "total_latencies"), returned, "one latency sample per returned probe");
    assert!(f64_of(&m, "p50_latency") > 0.0);
    assert!(f64_of(&m, "p99_latency") >= f64_of(&m, "p50_latency"));
    assert!(f64_of(&m, "packet_loss_ratio") < 0.01, "loss {}", m["packet_loss_ratio"]);
    assert_eq!(u64_of(&m, "total_channels"), 20);
    assert_eq!(u64_of(&m, "rejected_calls"), 0);

    // Nothing left: ports back in the pool, Asterisk lists no channel or bridge.
    let p = svc.get("/ports");
    assert_eq!(u64_of(&p, "leased"), 0, "{p}");
    assert_eq!(u64_of(&p, "free") + u64_of(&p, "quarantined"), 101, "{p}");
    wait_until("Asterisk lists no channel or bridge", Duration::from_secs(10), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    let log = svc.log_text();
    assert!(log.contains("[PortManager] INFO: Released port"), "log: {log}");
}

