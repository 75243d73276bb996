#![cfg(feature = "e2e")]
//! Ids that a URL path would misread, against the real Asterisk: calls whose caller channel ids
//! hold `/`, `?`, `#`, `%`, `+`, spaces, dots and UTF-8 are set up (answer, a bridge named
//! after the caller, addChannel), carry media, and are torn down like any other: by the call's
//! own teardown after the caller hangs up, and by the next instance's reconciliation after a
//! kill -9 (DELETE of the caller, its externalMedia channel and its bridge), leaving nothing.
mod common;

use std::time::Duration;

use common::*;

const ODD: [&str; 5] = ["a/b?c=d#e", "50% +plus", "dots/../..", "..", "é ü 日本"];

#[test]
fn calls_whose_ids_need_escaping_set_up_carry_media_and_tear_down() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_ari_paths", Options::default());
    for id in ODD {
        assert_eq!(originate("echo", "probe", id), id, "Asterisk took the id as given");
    }
    wait_until("every call active with its probe back", Duration::from_secs(20), || {
        svc.get("/channels").as_array().is_some_and(|calls| {
            calls.len() == ODD.len()
                && calls.iter().all(|c| c["state"] == "active" && c["media"]["probe"]["returned"].as_u64() > Some(10))
        })
    });
    let calls = svc.get("/channels");
    let mut ids: Vec<&str> = calls.as_array().unwrap().iter().map(|c| c["channel_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    let mut odd = ODD.to_vec();
    odd.sort_unstable();
    assert_eq!(ids, odd, "each call under its own id");
    // Each bridge holds its caller and its externalMedia channel: addChannel reached it.
    for c in calls.as_array().unwrap() {
        let bridge = ari_get(&format!("/bridges/{}", seg(c["bridge"].as_str().unwrap()))).expect("the call's bridge");
        let members = bridge["channels"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{bridge}");
        assert!(members.contains(&c["channel_id"]) && members.contains(&c["external_media_channel"]), "{bridge}");
    }

    // Two end from the caller's side: the service's teardown deletes their externalMedia
    // channels and bridges.
    for id in &ODD[..2] {
        ari_delete(&format!("/channels/{}", seg(id))).expect("hang up the caller");
    }
    wait_until("two calls ended", Duration::from_secs(10), || svc.metrics()["active_channels"] == 3);
    let m = svc.metrics();
    assert_eq!(m["failed_calls"], 0, "{m}");
    assert_eq!(m["ended"]["hangup"], 2, "{m}");
    wait_until("their channels and bridges are gone", Duration::from_secs(10), || {
        asterisk_channels().len() == 3 * 3 && asterisk_bridges().len() == 3
    });

    // The other three survive a kill -9: the next instance adopts them (reading their
    // externalMedia channels' variables by escaped id).
    let mut svc = svc;
    assert_eq!(svc.signal("KILL").0, None);
    let mut svc = Rtpvisor::start("e2e_ari_paths_after_kill", Options::default());
    wait_until("the reconciliation is reported", Duration::from_secs(15), || {
        !svc.metrics()["reconcile"]["last"].is_null()
    });
    let r = svc.metrics()["reconcile"].clone();
    assert_eq!(r["adopted_calls"], 3, "{r}");
    assert_eq!(r["last"]["errors"], 0, "{r}");
    wait_until("the adopted calls carry media", Duration::from_secs(10), || {
        let c = svc.get("/channels");
        c.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|c| c["media"]["probe"]["returned"].as_u64() > Some(0)))
    });

    // Killed again and restarted on other ports, they no longer fit: the reconciliation ends
    // them, deleting by escaped id.
    assert_eq!(svc.signal("KILL").0, None);
    let mut svc = Rtpvisor::start("e2e_ari_paths_misfit", Options { rtp_ports: "10900-10909".into(), ..Options::default() });
    wait_until("the reconciliation is reported", Duration::from_secs(15), || {
        !svc.metrics()["reconcile"]["last"].is_null()
    });
    let r = svc.metrics()["reconcile"].clone();
    assert_eq!(r["last"]["orphan_media_channels"], 3, "{r}");
    assert_eq!(r["last"]["orphan_bridges"], 3, "{r}");
    assert_eq!(r["last"]["orphan_app_channels"], 3, "{r}");
    assert_eq!(r["last"]["errors"], 0, "{r}");
    wait_until("Asterisk lists nothing of the calls", Duration::from_secs(10), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
    assert_eq!(svc.terminate().0, Some(0));
}
