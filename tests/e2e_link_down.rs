#![cfg(feature = "e2e")]
//! No call outlives its media or its Asterisk, against the real one: Asterisk is killed with
//! live calls of every mode and left down. No event will ever end those calls and no
//! reconciliation can run, so the service ends each call locally once its media has stopped
//! too (`media.link_down_silence_ms`): stream removed, port back in the pool, counted. When
//! Asterisk is back, the reconnect's reconciliation leaves nothing of ours in it.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const APP_LD: &str = "rtpvisor-linkdown";

fn asterisk(cmd: &str) {
    let status = Command::new("bash").arg(repo().join("scripts/asterisk.sh")).arg(cmd).status().unwrap();
    assert!(status.success(), "scripts/asterisk.sh {cmd} failed");
}

fn asterisk_pid() -> String {
    let root = String::from_utf8(
        Command::new("bash").arg(repo().join("scripts/asterisk.sh")).arg("root").output().unwrap().stdout,
    )
    .unwrap();
    std::fs::read_to_string(format!("{}/run/rtpvisor-asterisk.pid", root.trim())).unwrap().trim().to_string()
}

#[test]
fn asterisk_killed_and_left_down_every_port_free_within_10_s() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start(
        "e2e_link_down",
        Options { rtp_ports: "10560-10569".into(), env: vec![("RTPVISOR_ARI_APP".into(), APP_LD.into())] },
    );
    originate_in(APP_LD, "echo", "probe", "ld-probe-1");
    originate_in(APP_LD, "echo", "probe", "ld-probe-2");
    originate_in(APP_LD, "milliwatt", "echo", "ld-echo-1");
    originate_in(APP_LD, "milliwatt", "echo", "ld-echo-2");
    originate_in(APP_LD, "milliwatt", "shared-echo", "ld-shared-1");
    wait_until("5 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 5);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(svc.get("/ports")["leased"], 4);

    let t0 = Instant::now();
    assert!(Command::new("kill").arg("-9").arg(asterisk_pid()).status().unwrap().success());
    wait_until("the service notices (not ready)", Duration::from_secs(5), || svc.get_status("/ready").0 == 503);
    let noticed = t0.elapsed();
    wait_until("every call ended and every port back", Duration::from_secs(10), || {
        let m = svc.get_status("/metrics").1;
        let p = svc.get_status("/ports").1;
        m["active_channels"] == 0 && p["leased"] == 0
    });
    let released = t0.elapsed();
    assert!(released <= Duration::from_secs(10), "{released:?}");
    let m = svc.metrics();
    eprintln!(
        "Asterisk killed with 5 calls: noticed after {} ms, all calls ended locally and ports back {} ms after the kill; ended {}",
        noticed.as_millis(),
        released.as_millis(),
        m["ended"]
    );
    assert_eq!(m["ended"]["silent_while_link_down"], 5, "{m}");
    assert_eq!(m["failed_calls"], 0, "{m}");
    // The ports are free for anyone to bind (the sockets are closed).
    for port in 10560..=10569u16 {
        std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("port {port} still bound: {e}"));
    }
    assert_eq!(svc.get_status("/ready").0, 503, "still no Asterisk");

    // Asterisk comes back: ready again, and nothing of ours is left in it.
    asterisk("start");
    wait_until("ready again", Duration::from_secs(20), || svc.get_status("/ready").0 == 200);
    wait_until("the reconnect's reconciliation is reported", Duration::from_secs(10), || {
        svc.metrics()["reconcile"]["runs"].as_u64() >= Some(2)
    });
    assert!(asterisk_channels().is_empty() && asterisk_bridges().is_empty(), "nothing of ours left in Asterisk");
    let id = originate_in(APP_LD, "echo", "probe", "ld-after");
    wait_until("a new call carries media", Duration::from_secs(10), || {
        svc.get("/channels").as_array().is_some_and(|a| {
            a.len() == 1 && a[0]["media"]["probe"]["returned"].as_u64() > Some(10)
        })
    });
    ari_delete(&format!("/channels/{id}")).unwrap();
    assert_all_released(&svc, "after the new call");
}

/// The converse: the events WebSocket drops while Asterisk and the calls' media are fine. No
/// call is ended for it: their media goes on.
#[test]
fn a_websocket_drop_with_media_flowing_ends_no_call() {
    ensure_asterisk();
    clean_asterisk();
    let proxy = common::fault_proxy::FaultProxy::start("127.0.0.1:8088");
    let svc = Rtpvisor::start(
        "e2e_link_down_ws",
        Options {
            rtp_ports: "10560-10569".into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), APP_LD.into()),
                ("RTPVISOR_ARI_URL".into(), proxy.url()),
                ("RTPVISOR_LINK_DOWN_SILENCE_MS".into(), "1000".into()),
            ],
        },
    );
    originate_in(APP_LD, "echo", "probe", "ldw-probe");
    originate_in(APP_LD, "milliwatt", "echo", "ldw-echo");
    originate_in(APP_LD, "milliwatt", "shared-echo", "ldw-shared");
    wait_until("3 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 3);
    proxy.refuse_websockets(true);
    assert!(proxy.drop_websockets() >= 1);
    wait_until("not ready", Duration::from_secs(5), || svc.get_status("/ready").0 == 503);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(svc.metrics()["active_channels"], 3, "media flows: no call is ended while the link is down");
    proxy.refuse_websockets(false);
    wait_until("ready again", Duration::from_secs(15), || svc.get_status("/ready").0 == 200);
    std::thread::sleep(Duration::from_secs(2));
    let m = svc.metrics();
    assert_eq!(m["active_channels"], 3, "{m}");
    assert_eq!(m["ended"]["silent_while_link_down"], 0, "{m}");
    hang_up_prefixed("ldw-");
    assert_all_released(&svc, "after the calls");
}
