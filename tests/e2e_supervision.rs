#![cfg(feature = "e2e")]
//! Supervision against the real Asterisk with live calls: a panic injected in a ChannelActor
//! is contained (the call ends cleanly, its port returns, the other calls go on), a restart
//! intensity overrun degrades the service until the window clears, and a panic in the
//! supervisor escalates (exit 70), after which a restarted service adopts the live calls.
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn faulty(name: &str) -> Rtpvisor {
    Rtpvisor::start(
        name,
        Options {
            env: vec![
                ("RTPVISOR_FAULT_INJECTION".into(), "true".into()),
                ("RTPVISOR_MAX_RESTARTS".into(), "2".into()),
                ("RTPVISOR_RESTART_WINDOW_MS".into(), "4000".into()),
            ],
            ..Options::default()
        },
    )
}

fn call_port(svc: &Rtpvisor, id: &str) -> u64 {
    svc.get(&format!("/channels/{id}"))["port"].as_u64().unwrap()
}

fn gone_from_asterisk(id: &str) -> bool {
    let chans = asterisk_channels();
    !chans.iter().any(|c| c == id || *c == rtpvisor_actors::naming::external_media_id(APP, id))
        && !asterisk_bridges().contains(&rtpvisor_actors::naming::bridge_id(APP, id))
}

fn supervisor_node(svc: &Rtpvisor) -> Value {
    let tree = svc.get("/actors");
    tree["children"].as_array().unwrap().iter().find(|n| n["name"] == "supervisor").cloned().unwrap()
}

#[test]
fn a_panicking_channel_actor_ends_its_call_cleanly_and_spares_the_others() {
    ensure_asterisk();
    clean_asterisk();
    let svc = faulty("e2e_supervision_panic");
    let ids: Vec<String> = (0..3).map(|i| originate("echo", "probe", &format!("sv-{i}"))).collect();
    wait_until("3 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 3);
    let port = call_port(&svc, &ids[0]);

    let t0 = Instant::now();
    let (code, body) = svc.post(&format!("/faults/channels/{}/panic", ids[0]));
    assert_eq!(code, 202, "{body}");
    wait_until("the failed call is gone from Asterisk", Duration::from_secs(10), || gone_from_asterisk(&ids[0]));
    eprintln!("panic to clean Asterisk: {} ms", t0.elapsed().as_millis());
    let m = svc.metrics();
    assert_eq!(m["active_channels"], 2, "{m}");
    assert_eq!(m["failed_calls"], 1, "{m}");
    let ports = svc.get("/ports");
    assert!(!ports["leased_ports"].as_array().unwrap().contains(&Value::from(port)), "{ports}");
    let sup = supervisor_node(&svc);
    assert_eq!(sup["state"], "running", "{sup}");
    assert_eq!(sup["child_failures"], 1, "{sup}");
    assert!(sup["last_failure"]["reason"].as_str().unwrap().contains("injected fault"), "{sup}");
    assert!(sup["last_failure"]["at"].is_string());

    // The other calls go on: their probes keep coming back.
    let before = svc.metrics()["total_latencies"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let after = svc.metrics()["total_latencies"].as_u64().unwrap();
    assert!(after >= before + 40, "2 calls x 50/s for 0.6 s: {before} -> {after}");

    for id in &ids[1..] {
        ari_delete(&format!("/channels/{id}")).unwrap();
    }
    assert_all_released(&svc, "after the panic");
}

#[test]
fn a_restart_intensity_overrun_degrades_until_the_window_clears() {
    ensure_asterisk();
    clean_asterisk();
    let svc = faulty("e2e_supervision_intensity");
    let ids: Vec<String> = (0..3).map(|i| originate("echo", "probe", &format!("in-{i}"))).collect();
    wait_until("3 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 3);
    for id in &ids {
        assert_eq!(svc.post(&format!("/faults/channels/{id}/panic")).0, 202);
    }
    // 3 failures > 2 allowed within 4 s: degraded, not ready, new calls refused.
    wait_until("the service reports degraded", Duration::from_secs(5), || {
        let (code, r) = svc.get_status("/ready");
        code == 503 && r["supervisor"] == "degraded"
    });
    let refused = originate("echo", "probe", "in-refused");
    wait_until("the call is refused", Duration::from_secs(10), || {
        svc.metrics()["rejected_calls"] == 1 && !asterisk_channels().contains(&refused)
    });
    // The window clears: ready again, calls accepted.
    wait_until("ready again after the window", Duration::from_secs(8), || svc.get_status("/ready").0 == 200);
    let ok = originate("echo", "probe", "in-after");
    wait_until("a new call is served", Duration::from_secs(10), || svc.metrics()["active_channels"] == 1);
    ari_delete(&format!("/channels/{ok}")).unwrap();
    assert_all_released(&svc, "after the overrun");
    assert_eq!(svc.metrics()["failed_calls"], 3);
}

#[test]
fn a_panicking_supervisor_escalates_and_the_restart_adopts_its_calls() {
    ensure_asterisk();
    clean_asterisk();
    let mut svc = faulty("e2e_supervision_escalate");
    let ids: Vec<String> = (0..3).map(|i| originate("echo", "probe", &format!("esc-{i}"))).collect();
    wait_until("3 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 3);
    assert_eq!(svc.post("/faults/supervisor/panic").0, 202);
    let code = svc.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(70), "escalation exits with status 70");
    assert!(svc.log_text().contains("escalating, exiting with status 70"));
    let svc2 = Rtpvisor::start("e2e_supervision_after_escalation", Options::default());
    wait_until("the restart adopted the 3 calls and their probes come back", Duration::from_secs(10), || {
        let c = svc2.get("/channels");
        let c = c.as_array().unwrap();
        c.len() == 3 && c.iter().all(|c| c["adopted_at_ms"].is_u64() && c["media"]["probe"]["returned"].as_u64() > Some(0))
    });
    for id in &ids {
        ari_delete(&format!("/channels/{id}")).unwrap();
    }
    wait_until("Asterisk is clean once the callers hung up", Duration::from_secs(10), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    assert_eq!(svc2.metrics()["ended"]["hangup"], 3);
}

#[test]
fn fault_routes_are_off_by_default() {
    ensure_asterisk();
    let svc = Rtpvisor::start("e2e_supervision_off", Options::default());
    let (code, body) = svc.post("/faults/supervisor/panic");
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("disabled"));
    assert_eq!(svc.get_status("/ready").0, 200, "the service is untouched");
}
