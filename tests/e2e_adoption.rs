#![cfg(feature = "e2e")]
//! A crash cuts no call, against the real Asterisk: rtpvisor is killed (SIGKILL, or its own
//! escalation with exit 70) with live calls of every mode; a new process of the same instance
//! adopts them (same caller channel, same port, same mode) and their media flows again. Measured
//! per call: the media gap, from the kill to the first packet the new process got. A call whose
//! port another process took meanwhile ends alone (`adopt_failed`), cleanly; a restart that
//! cannot fit a call (another port range) leaves it to the reconciliation, which ends it.
mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const PORTS: &str = "10600-10619";

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn opts(echo_port: Option<u16>, faults: bool) -> Options {
    let mut env = vec![("RTPVISOR_NO_MEDIA_TIMEOUT_MS".to_string(), "30000".to_string())];
    if let Some(p) = echo_port {
        env.push(("RTPVISOR_ECHO_ADDR".into(), format!("127.0.0.1:{p}")));
    }
    if faults {
        env.push(("RTPVISOR_FAULT_INJECTION".into(), "true".into()));
    }
    Options { rtp_ports: PORTS.into(), env }
}

/// The live call of `caller` in `/channels`.
fn channel(svc: &Rtpvisor, caller: &str) -> Option<Value> {
    svc.get("/channels").as_array().unwrap().iter().find(|c| c["channel_id"] == caller).cloned()
}

/// What a call's media has done: returned probes, packets in, or datagrams the shared echo
/// reflected for it.
fn media_count(c: &Value) -> u64 {
    match c["mode"].as_str().unwrap() {
        "probe" => c["media"]["probe"]["returned"].as_u64().unwrap_or(0),
        "echo" => c["media"]["packets_in"].as_u64().unwrap_or(0),
        _ => c["shared_echo"]["packets"].as_u64().unwrap_or(0),
    }
}

/// Unix ms of the call's first packet in the process that serves it now.
fn first_media_at(c: &Value, now_ms: u64) -> Option<u64> {
    let ago = if c["mode"] == "shared-echo" { &c["shared_echo"]["first_packet_ms_ago"] } else { &c["media"]["first_packet_ms_ago"] };
    ago.as_u64().map(|a| now_ms - a)
}

/// (caller, mode, far end): probe toward Echo(), echo and shared echo toward a tone.
const CALLS: [(&str, &str, &str); 6] = [
    ("adopt-p1", "probe", "echo"),
    ("adopt-p2", "probe", "echo"),
    ("adopt-e1", "echo", "milliwatt"),
    ("adopt-e2", "echo", "milliwatt"),
    ("adopt-s1", "shared-echo", "milliwatt"),
    ("adopt-s2", "shared-echo", "milliwatt"),
];

fn place(svc: &Rtpvisor, calls: &[(&str, &str, &str)]) {
    for (id, mode, far) in calls {
        originate(far, mode, id);
    }
    wait_until("the calls carry media", Duration::from_secs(20), || {
        calls.iter().all(|(id, ..)| channel(svc, id).is_some_and(|c| c["state"] == "active" && media_count(&c) > 10))
    });
}

/// Waits until every call of `calls` is adopted by `svc` and its media flows; returns each
/// call's media gap since `killed_ms`.
fn wait_adopted(svc: &Rtpvisor, calls: &[(&str, &str, &str)], ports: &[(String, Option<u64>)], killed_ms: u64) -> Vec<(String, u64)> {
    wait_until("every call is adopted and carries media again", Duration::from_secs(10), || {
        calls.iter().all(|(id, ..)| channel(svc, id).is_some_and(|c| c["state"] == "active" && media_count(&c) > 0))
    });
    let now = unix_ms();
    let mut gaps = Vec::new();
    for (id, mode, _) in calls {
        let c = channel(svc, id).unwrap();
        assert_eq!(c["mode"], *mode, "{c}");
        assert!(c["adopted_at_ms"].as_u64().is_some_and(|t| t >= killed_ms), "marked adopted: {c}");
        let port = ports.iter().find(|(p, _)| p == id).unwrap().1;
        assert_eq!(c["port"].as_u64(), port, "the same port: {c}");
        let first = first_media_at(&c, now).unwrap_or_else(|| panic!("no first packet: {c}"));
        gaps.push((id.to_string(), first.saturating_sub(killed_ms)));
    }
    gaps
}

fn ports_of(svc: &Rtpvisor, calls: &[(&str, &str, &str)]) -> Vec<(String, Option<u64>)> {
    calls.iter().map(|(id, ..)| (id.to_string(), channel(svc, id).unwrap()["port"].as_u64())).collect()
}

fn hang_up_and_check_clean(svc: &Rtpvisor, calls: &[(&str, &str, &str)]) {
    for (id, ..) in calls {
        let _ = ari_delete(&format!("/channels/{id}"));
    }
    wait_until("Asterisk is clean", Duration::from_secs(10), || asterisk_channels().is_empty() && asterisk_bridges().is_empty());
    assert_all_released(svc, "after the adopted calls ended");
}

#[test]
fn kill_9_with_calls_of_every_mode_then_a_restart_adopts_them_all() {
    ensure_asterisk();
    clean_asterisk();
    let echo_port = free_udp_port();
    let mut svc = Rtpvisor::start("e2e_adoption_before", opts(Some(echo_port), false));
    place(&svc, &CALLS);
    let ports = ports_of(&svc, &CALLS);
    // Each bridge's name says what its call is, for whoever adopts it.
    let bridges = ari_get("/bridges").unwrap();
    for (id, mode, _) in CALLS {
        let b = bridges.as_array().unwrap().iter().find(|b| b["id"].as_str().unwrap().ends_with(&format!("-{id}"))).unwrap();
        assert!(b["name"].as_str().unwrap().starts_with(&format!("rtpvisor;mode={mode}")), "{b}");
    }

    let killed_ms = unix_ms();
    assert_eq!(svc.signal("KILL").0, None);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let svc2 = Rtpvisor::start("e2e_adoption_after", opts(Some(echo_port), false));
    let gaps = wait_adopted(&svc2, &CALLS, &ports, killed_ms);
    eprintln!("restarted in {} ms (300 ms after the kill); media gap per call since the kill (ms): {gaps:?}", t0.elapsed().as_millis());
    for (id, gap) in &gaps {
        assert!(*gap < 2000, "{id}: media flowed again {gap} ms after the kill");
    }
    wait_until("the reconciliation is reported", Duration::from_secs(5), || svc2.metrics()["reconcile"]["runs"] == 1);
    let m = svc2.metrics();
    assert_eq!(m["reconcile"]["adopted_calls"], 6, "{}", m["reconcile"]);
    assert_eq!(m["reconcile"]["orphans_cleaned"], 0, "nothing of a whole call is an orphan: {}", m["reconcile"]);
    for mode in ["probe", "echo", "shared-echo"] {
        assert_eq!(m["modes"][mode]["calls_adopted"], 2, "{mode}: {}", m["modes"][mode]);
        assert_eq!(m["modes"][mode]["calls_active"], 2, "{mode}");
    }

    // The adopted calls go on: media keeps flowing, probes are not lost.
    let before: Vec<u64> = CALLS.iter().map(|(id, ..)| media_count(&channel(&svc2, id).unwrap())).collect();
    std::thread::sleep(Duration::from_secs(1));
    for ((id, ..), b) in CALLS.iter().zip(before) {
        let c = channel(&svc2, id).unwrap();
        assert!(media_count(&c) >= b + 25, "{id} kept its media: {b} -> {}", media_count(&c));
        if c["mode"] == "probe" {
            assert_eq!(c["media"]["probe"]["lost"], 0, "{id}: {}", c["media"]["probe"]);
        }
    }

    // They end by their caller, and are recorded as adopted with their gap.
    hang_up_and_check_clean(&svc2, &CALLS);
    let ended = svc2.get("/calls/ended?since=0&limit=100");
    let calls = ended["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 6, "{ended}");
    for c in calls {
        assert_eq!(c["reason"], "hangup", "{c}");
        assert!(c["adopted_at_ms"].as_u64().is_some() && c["first_media_at_ms"].as_u64().is_some_and(|t| t > killed_ms), "{c}");
    }
    assert_eq!(svc2.metrics()["ended"]["hangup"], 6);
}

#[test]
fn a_port_taken_meanwhile_ends_only_that_call_and_cleanly() {
    ensure_asterisk();
    clean_asterisk();
    let calls = [("adopt-t1", "echo", "milliwatt"), ("adopt-t2", "echo", "milliwatt")];
    let echo_port = free_udp_port();
    let mut svc = Rtpvisor::start("e2e_adoption_taken_before", opts(Some(echo_port), false));
    place(&svc, &calls);
    let ports = ports_of(&svc, &calls);
    let killed_ms = unix_ms();
    svc.signal("KILL");
    // Someone else binds the first call's port before the new process comes.
    let taken = ports[0].1.unwrap() as u16;
    let squatter = UdpSocket::bind(("127.0.0.1", taken)).expect("the dead process's port is free");
    let svc2 = Rtpvisor::start("e2e_adoption_taken_after", opts(Some(echo_port), false));
    let gaps = wait_adopted(&svc2, &calls[1..], &ports[1..], killed_ms);
    wait_until("the call on the taken port is ended in Asterisk", Duration::from_secs(10), || {
        let chans = asterisk_channels();
        !chans.iter().any(|c| c.contains("adopt-t1")) && !asterisk_bridges().iter().any(|b| b.contains("adopt-t1"))
    });
    let m = svc2.metrics();
    assert_eq!(m["ended"]["adopt_failed"], 1, "{}", m["ended"]);
    assert_eq!(m["active_channels"], 1);
    let ended = svc2.get("/calls/ended?since=0&limit=10");
    assert_eq!(ended["calls"][0]["channel"], "adopt-t1", "{ended}");
    assert_eq!(ended["calls"][0]["reason"], "adopt_failed", "{ended}");
    assert!(svc2.log_text().contains(&format!("port {taken} is held by another process now")));
    eprintln!("port {taken} taken: that call ended (adopt_failed); the other adopted, media gap {gaps:?} ms");
    drop(squatter);
    hang_up_and_check_clean(&svc2, &calls[1..]);
}

#[test]
fn an_escalation_exit_70_then_restart_adopts_too() {
    ensure_asterisk();
    clean_asterisk();
    let calls = [("adopt-x1", "probe", "echo"), ("adopt-x2", "shared-echo", "milliwatt")];
    let echo_port = free_udp_port();
    let mut svc = Rtpvisor::start("e2e_adoption_exit70_before", opts(Some(echo_port), true));
    place(&svc, &calls);
    let ports = ports_of(&svc, &calls);
    let killed_ms = unix_ms();
    assert_eq!(svc.post("/faults/supervisor/panic").0, 202);
    assert_eq!(svc.wait_exit(Duration::from_secs(5)), Some(70), "escalated");
    let svc2 = Rtpvisor::start("e2e_adoption_exit70_after", opts(Some(echo_port), true));
    let gaps = wait_adopted(&svc2, &calls, &ports, killed_ms);
    eprintln!("after exit 70: media gap per call since the panic (ms): {gaps:?}");
    hang_up_and_check_clean(&svc2, &calls);
}

#[test]
fn a_restart_that_cannot_fit_the_calls_leaves_them_to_the_reconciliation() {
    ensure_asterisk();
    clean_asterisk();
    let calls = [("adopt-r1", "probe", "echo"), ("adopt-r2", "echo", "milliwatt")];
    let mut svc = Rtpvisor::start("e2e_adoption_misfit_before", opts(None, false));
    place(&svc, &calls);
    svc.signal("KILL");
    // Another port range: the calls' ports are not this process's to lease.
    let svc2 = Rtpvisor::start("e2e_adoption_misfit_after", Options { rtp_ports: "10620-10629".into(), ..opts(None, false) });
    wait_until("the reconciliation ended them", Duration::from_secs(10), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    let r = svc2.metrics()["reconcile"].clone();
    assert_eq!(r["adopted_calls"], 0, "{r}");
    assert_eq!(r["last"]["orphan_media_channels"], 2, "{r}");
    assert_eq!(r["last"]["orphan_bridges"], 2, "{r}");
    let log = svc2.log_text();
    assert!(log.contains("not adopting call adopt-r1: its port") && log.contains("is outside 10620-10629"), "{log}");
}
