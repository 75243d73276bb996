#![cfg(feature = "e2e")]
//! Two rtpvisor instances on one real Asterisk, each with its own Stasis app, port range and
//! HTTP/echo ports, each carrying calls of every mode. Restarting either one (SIGTERM, and
//! kill -9 followed by a restart that adopts its own calls) must leave the other's calls up with
//! their media flowing; at the end nothing of either is left in Asterisk.
mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const APP_A: &str = "rtpvisor-inst-a";
const APP_B: &str = "rtpvisor-inst-b";

fn start(app: &str, ports: &str, log: &str) -> Rtpvisor {
    start_on(app, ports, log, free_udp_port())
}

fn start_on(app: &str, ports: &str, log: &str, echo_port: u16) -> Rtpvisor {
    let env = vec![("RTPVISOR_ARI_APP".into(), app.into()), ("RTPVISOR_ECHO_ADDR".into(), format!("127.0.0.1:{echo_port}"))];
    Rtpvisor::start(log, Options { rtp_ports: ports.into(), env })
}

/// One call of each mode into `app`: probe toward Echo(), echo and shared-echo toward a
/// Milliwatt tone (Asterisk sends media all the time; that far end does not echo).
fn place_calls(svc: &Rtpvisor, app: &str, prefix: &str) -> Vec<String> {
    let ids = vec![
        originate_in(app, "echo", "probe", &format!("{prefix}-probe")),
        originate_in(app, "milliwatt", "echo", &format!("{prefix}-echo")),
        originate_in(app, "milliwatt", "shared-echo", &format!("{prefix}-shared")),
    ];
    wait_until(&format!("{app}: 3 calls active"), Duration::from_secs(20), || {
        svc.metrics()["active_channels"] == 3
    });
    ids
}

/// Media counters of every live call, plus the instance's shared-echo packets.
fn media_counts(svc: &Rtpvisor) -> (Vec<(String, u64)>, u64) {
    let chans = svc.get("/channels");
    let per_call = chans
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["media"].is_null())
        .map(|c| {
            let m = &c["media"];
            let n = if c["mode"] == "probe" { m["probe"]["returned"].as_u64() } else { m["packets_in"].as_u64() };
            (c["channel_id"].as_str().unwrap().to_string(), n.unwrap_or(0))
        })
        .collect();
    (per_call, svc.metrics()["echo"]["packets"].as_u64().unwrap())
}

/// Every call of `svc` carries media now: each counter grows within 1.5 s, the shared echo
/// too, and the instance still has `n` live calls.
fn assert_flowing(svc: &Rtpvisor, n: u64, what: &str) {
    let (before, echo_before) = media_counts(svc);
    assert_eq!(before.len(), 2, "{what}: the probe and echo calls have streams");
    std::thread::sleep(Duration::from_millis(1500));
    let (after, echo_after) = media_counts(svc);
    for (id, b) in &before {
        let a = after.iter().find(|(i, _)| i == id).map(|(_, a)| *a);
        assert!(a.is_some_and(|a| a >= b + 25), "{what}: call {id} media stalled: {b} -> {a:?}");
    }
    assert!(echo_after >= echo_before + 25, "{what}: shared echo stalled: {echo_before} -> {echo_after}");
    assert_eq!(svc.metrics()["active_channels"], n, "{what}");
}

/// Channel ids of a test's callers (and their Local far halves) and every resource named
/// after one of `apps`.
fn leftovers(apps: &[&str], prefixes: &[&str]) -> Vec<String> {
    let owned = |id: &str| rtpvisor_actors::naming::parse(id).is_some_and(|o| apps.contains(&o.app));
    asterisk_channels()
        .into_iter()
        .chain(asterisk_bridges())
        .filter(|id| owned(id) || prefixes.iter().any(|p| id.starts_with(p)))
        .collect()
}

fn reconcile(svc: &Rtpvisor) -> Value {
    svc.metrics()["reconcile"].clone()
}

#[test]
fn restarting_one_instance_leaves_the_others_calls_and_media_alone() {
    ensure_asterisk();
    let mut a = start(APP_A, "10500-10509", "e2e_instances_a");
    let mut b = start(APP_B, "10510-10519", "e2e_instances_b");
    place_calls(&a, APP_A, "inst-a1");
    place_calls(&b, APP_B, "inst-b1");
    assert_flowing(&a, 3, "A before anything");
    assert_flowing(&b, 3, "B before anything");

    // A stops in order: it ends its own calls, none of B's.
    let (code, took) = a.terminate();
    assert_eq!(code, Some(0));
    eprintln!("A stopped by SIGTERM in {} ms", took.as_millis());
    wait_until("A's calls are gone from Asterisk", Duration::from_secs(10), || {
        leftovers(&[APP_A], &["inst-a1"]).is_empty()
    });
    assert_flowing(&b, 3, "B after A's SIGTERM");

    // A comes back: its reconciliation at connect must not touch B.
    let mut a = start(APP_A, "10500-10509", "e2e_instances_a2");
    wait_until("A reconciled", Duration::from_secs(10), || reconcile(&a)["runs"].as_u64() >= Some(1));
    let ra = reconcile(&a);
    eprintln!("A's reconciliation after its restart: {ra}");
    assert_eq!(ra["orphans_cleaned"], 0, "nothing of A's was left, and B's is not A's: {ra}");
    place_calls(&a, APP_A, "inst-a2");
    assert_flowing(&b, 3, "B after A's restart and reconciliation");
    assert_flowing(&a, 3, "A's new calls");

    // B dies without a word and comes back (same echo port): it adopts its own calls, and
    // touches nothing of A's.
    let echo_b = b.echo_port;
    let (code, _) = b.signal("KILL");
    assert_eq!(code, None);
    let left = leftovers(&[APP_B], &["inst-b1"]).len();
    assert!(left >= 3 + 3 + 3 + 3, "B's callers, far halves, media channels and bridges stay: {left}");
    assert_flowing(&a, 3, "A after B's kill -9");
    let b2 = start_on(APP_B, "10510-10519", "e2e_instances_b2", echo_b);
    wait_until("B's reconciliation is reported", Duration::from_secs(5), || {
        reconcile(&b2)["runs"].as_u64() >= Some(1) && !reconcile(&b2)["last"].is_null()
    });
    let rb = reconcile(&b2);
    eprintln!("B's reconciliation after kill -9: {rb}");
    assert_eq!(rb["adopted_calls"], 3, "B took its 3 calls over: {rb}");
    assert_eq!(rb["orphans_cleaned"], 0, "{rb}");
    assert_eq!(leftovers(&[APP_B], &["inst-b1"]).len(), left, "none of B's calls was cut");
    assert_flowing(&b2, 3, "B's adopted calls");
    assert_flowing(&a, 3, "A after B's restart and adoption");
    assert_eq!(reconcile(&a)["adopted_calls"], 0, "A adopted nothing of B's");

    // Both stop: nothing of either is left.
    let mut b2 = b2;
    assert_eq!(a.terminate().0, Some(0));
    assert_eq!(b2.terminate().0, Some(0));
    wait_until("nothing of either instance is left in Asterisk", Duration::from_secs(10), || {
        leftovers(&[APP_A, APP_B], &["inst-a", "inst-b"]).is_empty()
    });
}
