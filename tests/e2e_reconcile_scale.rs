#![cfg(feature = "e2e")]
//! Reconciliation on a busy Asterisk, against the real one: 500 channels that are not ours
//! (plain dialplan) are read and never touched, our orphans after a kill -9 are still found
//! and ended, and calls that begin while the reconciliation runs are never ended by it.
mod common;

use std::time::{Duration, Instant};

use common::*;

const APP_SCALE: &str = "rtpvisor-scale";

fn ours_named() -> usize {
    asterisk_channels()
        .into_iter()
        .chain(asterisk_bridges())
        .filter(|id| rtpvisor_actors::naming::parse(id).is_some_and(|o| o.app == APP_SCALE))
        .count()
}

fn bystanders() -> usize {
    asterisk_channels().iter().filter(|c| c.starts_with("bystander-")).count()
}

#[test]
fn five_hundred_unrelated_channels_untouched_orphans_found_new_calls_kept() {
    ensure_asterisk();
    let t = Instant::now();
    originate_dialplan("silence", "bystander", 250);
    wait_until("500 bystander channels", Duration::from_secs(60), || bystanders() == 500);
    eprintln!("500 dialplan channels up in {} ms", t.elapsed().as_millis());

    // The new instance leases other ports than the old one: the old calls do not fit it, so
    // they are orphans to clean, not calls to adopt.
    let opts = |ports: &str| Options { rtp_ports: ports.into(), env: vec![("RTPVISOR_ARI_APP".into(), APP_SCALE.into())] };
    let mut old = Rtpvisor::start("e2e_reconcile_scale_old", opts("10550-10559"));
    for i in 0..5 {
        originate_in(APP_SCALE, "echo", "probe", &format!("scale-old-{i}"));
    }
    wait_until("5 calls active", Duration::from_secs(20), || old.metrics()["active_channels"] == 5);
    assert_eq!(old.signal("KILL").0, None);
    assert_eq!(ours_named(), 10, "5 media channels and 5 bridges of the dead instance");

    // The new instance reconciles at connect; calls arrive while it does.
    let svc = Rtpvisor::start("e2e_reconcile_scale_new", opts("10560-10569"));
    for i in 0..5 {
        originate_in(APP_SCALE, "echo", "probe", &format!("scale-new-{i}"));
    }
    wait_until("the reconciliation is reported", Duration::from_secs(15), || {
        !svc.metrics()["reconcile"]["last"].is_null()
    });
    let r = svc.metrics()["reconcile"].clone();
    eprintln!("reconciliation beside 500 unrelated channels: {r}");
    let last = &r["last"];
    assert_eq!(last["orphan_media_channels"], 5, "{r}");
    assert_eq!(last["orphan_bridges"], 5, "{r}");
    assert_eq!(last["orphan_app_channels"], 5, "{r}");
    assert_eq!(last["vanished_calls"], 0, "no call that began during the reconciliation is ended: {r}");
    assert_eq!(last["errors"], 0, "{r}");
    assert!(last["listed"].as_u64() >= Some(500), "{r}");
    wait_until("the old calls are gone", Duration::from_secs(10), || {
        !asterisk_channels().iter().any(|c| c.starts_with("scale-old-"))
    });
    assert_eq!(bystanders(), 500, "no unrelated channel was touched");

    // The 5 new calls are up and carry media.
    wait_until("5 new calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 5);
    let returned = || svc.metrics()["modes"]["probe"]["packets_in"].as_u64().unwrap();
    let before = returned();
    std::thread::sleep(Duration::from_secs(1));
    assert!(returned() >= before + 5 * 40, "the new calls' probes come back");
    assert_eq!(ours_named(), 10, "exactly the new calls' media channels and bridges");

    hang_up_prefixed("scale-new-");
    wait_until("no live call", Duration::from_secs(10), || svc.metrics()["active_channels"] == 0);
    wait_until("nothing of ours left", Duration::from_secs(10), || ours_named() == 0);
    assert_eq!(bystanders(), 500, "still untouched");
    hang_up_prefixed("bystander-");
    wait_until("the bystanders are gone", Duration::from_secs(30), || bystanders() == 0);
}
