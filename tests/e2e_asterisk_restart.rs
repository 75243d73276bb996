#![cfg(feature = "e2e")]
//! Asterisk restarts while calls are live: the service notices (not ready), reconnects when
//! Asterisk is back, ends the calls Asterisk forgot, releases every port, and serves new calls.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn asterisk(cmd: &str) {
    let run = |cmd: &str| Command::new("bash").arg(repo().join("scripts/asterisk.sh")).arg(cmd).status().unwrap().success();
    if run(cmd) {
        return;
    }
    // The script said why (its error line). A restart whose stop part is done but whose start
    // failed gets one more start: this test is about the service across Asterisk's restart,
    // not about the test tooling's.
    assert!(cmd == "restart", "scripts/asterisk.sh {cmd} failed");
    eprintln!("scripts/asterisk.sh restart failed; starting Asterisk once more");
    assert!(run("start"), "scripts/asterisk.sh restart failed, and start after it too");
}

/// Asterisk dies without a word (kill -9): no StasisEnd, no hangup events. Only the
/// reconciliation after the reconnect can tell the service that its calls are gone.
#[test]
fn asterisk_killed_with_live_calls_then_back_every_call_is_reconciled() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_asterisk_kill", Options::default());
    for i in 0..5 {
        originate("echo", "probe", &format!("ak-{i}"));
    }
    wait_until("5 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 5);
    let pidfile = String::from_utf8(
        Command::new("bash").arg(repo().join("scripts/asterisk.sh")).arg("root").output().unwrap().stdout,
    )
    .unwrap();
    let pid = std::fs::read_to_string(format!("{}/run/rtpvisor-asterisk.pid", pidfile.trim())).unwrap();
    let t0 = Instant::now();
    assert!(Command::new("kill").arg("-9").arg(pid.trim()).status().unwrap().success());
    wait_until("the service notices (not ready)", Duration::from_secs(5), || svc.get_status("/ready").0 == 503);
    let noticed = t0.elapsed();
    assert_eq!(svc.metrics()["active_channels"], 5, "nothing told the service yet");
    asterisk("start");
    wait_until("ready again", Duration::from_secs(15), || svc.get_status("/ready").0 == 200);
    let ready = t0.elapsed();
    assert_all_released(&svc, "after Asterisk came back");
    wait_until("the reconnect's reconciliation is reported", Duration::from_secs(5), || {
        svc.metrics()["reconcile"]["runs"].as_u64() >= Some(2)
    });
    let m = svc.metrics();
    eprintln!(
        "Asterisk killed: noticed after {} ms, ready {} ms, all released {} ms after the kill; reconcile {}",
        noticed.as_millis(), ready.as_millis(), t0.elapsed().as_millis(), m["reconcile"]
    );
    assert_eq!(u64_of(&m["reconcile"], "vanished_calls"), 5, "{m}");
    let id = originate("echo", "probe", "ak-after");
    wait_until("a new call is active", Duration::from_secs(10), || svc.metrics()["active_channels"] == 1);
    ari_delete(&format!("/channels/{id}")).unwrap();
    assert_all_released(&svc, "after the new call");
}

/// Asterisk is restarted in order: it hangs up its channels first, and the service hears it.
#[test]
fn asterisk_restart_with_live_calls_releases_everything_and_recovers() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_asterisk_restart", Options::default());
    for i in 0..5 {
        originate("echo", "probe", &format!("ar-{i}"));
    }
    wait_until("5 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 5);

    let t0 = Instant::now();
    asterisk("restart");
    let restarted = t0.elapsed();
    wait_until("ready again after the restart", Duration::from_secs(15), || svc.get_status("/ready").0 == 200);
    let ready = t0.elapsed();
    assert_all_released(&svc, "after the Asterisk restart");
    let released = t0.elapsed();
    let m = svc.metrics();
    eprintln!(
        "Asterisk restart took {} ms; service ready {} ms, all released {} ms after it began; reconcile {}",
        restarted.as_millis(), ready.as_millis(), released.as_millis(), m["reconcile"]
    );
    let tree = svc.get("/actors");
    let ari = tree["children"].as_array().unwrap().iter().find(|n| n["name"] == "ari-connection").unwrap().clone();
    assert!(ari["restarts"].as_u64().unwrap() >= 1, "{ari}");

    // New calls work.
    let id = originate("echo", "probe", "ar-after");
    wait_until("a new call carries media", Duration::from_secs(10), || {
        svc.get("/channels").as_array().map(|a| a.len() == 1 && a[0]["media"]["probe"]["returned"].as_u64() > Some(10)) == Some(true)
    });
    ari_delete(&format!("/channels/{id}")).unwrap();
    assert_all_released(&svc, "after the new call");
}
