#![cfg(feature = "e2e")]
//! Pool exhaustion under churn against the real Asterisk: 300 calls arriving over 10 s at a
//! 20-port range, each far end hanging up by itself after 2 s. Every call is either served or
//! rejected cleanly, no port is ever leased twice at once, and everything is free at the end.
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// Replays the PortManager's log: every Allocated must be followed by a Released of the same
/// port before it is allocated again. Returns how many leases there were.
fn check_no_double_lease(log: &str) -> usize {
    let mut leased: HashMap<u16, bool> = HashMap::new();
    let mut leases = 0;
    for line in log.lines() {
        if let Some(p) = line.split("Allocated port ").nth(1) {
            let port: u16 = p.trim().parse().unwrap();
            assert!(!leased.get(&port).copied().unwrap_or(false), "port {port} leased twice: {line}");
            leased.insert(port, true);
            leases += 1;
        } else if let Some(p) = line.split("Released port ").nth(1) {
            let port: u16 = p.trim().parse().unwrap();
            assert!(leased.get(&port).copied().unwrap_or(false), "port {port} released while not leased");
            leased.insert(port, false);
        }
    }
    assert!(leased.values().all(|l| !l), "ports still leased at the end: {leased:?}");
    leases
}

#[test]
fn three_hundred_calls_in_ten_seconds_on_twenty_ports() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start(
        "e2e_churn",
        Options { rtp_ports: "10300-10319".into(), ..Options::default() },
    );
    let t0 = Instant::now();
    for i in 0..300 {
        // 30 calls/s: call i is placed at i/30 s.
        let due = Duration::from_millis(i * 1000 / 30);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        originate("hangup", "echo", &format!("churn-{i}"));
    }
    let placed_in = t0.elapsed();
    wait_until("every call ended or was rejected", Duration::from_secs(60), || {
        let m = svc.metrics();
        m["active_channels"] == 0 && m["total_channels"].as_u64().unwrap() + m["rejected_calls"].as_u64().unwrap() == 300
    });
    assert_all_released(&svc, "after the churn");
    let m = svc.metrics();
    let (served, rejected) = (u64_of(&m, "total_channels"), u64_of(&m, "rejected_calls"));
    eprintln!("300 calls placed in {} ms: {served} served, {rejected} rejected, {} failed", placed_in.as_millis(), m["failed_calls"]);
    assert_eq!(served + rejected, 300);
    assert!(rejected > 0, "20 ports cannot carry ~60 concurrent 2 s calls");
    assert!(served >= 40, "ports are reused after their quarantine: {served}");
    assert_eq!(u64_of(&m, "failed_calls"), 0, "{m}");
    let leases = check_no_double_lease(&svc.log_text());
    assert_eq!(leases as u64, served, "one lease per served call");
    // Refused either by the admission limit (20 live calls, the pool's size) or by the pool
    // (fewer live calls, but their ports still in quarantine).
    let p = svc.get("/ports");
    let by_admission = svc.log_text().matches("at the admission limit of 20 concurrent calls").count() as u64;
    eprintln!("refused: {by_admission} by the admission limit, {} by the pool", p["exhausted_total"]);
    assert_eq!(u64_of(&p, "exhausted_total") + by_admission, rejected, "{p}");
}
