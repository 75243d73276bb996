#![cfg(feature = "e2e")]
//! One admission limit for every mode, against the real Asterisk: shared-echo calls lease no
//! port, but they take Asterisk's RTP ports all the same (and Asterisk 22 crashes when those
//! run out, asterisk/asterisk#1757), so they count against the limit like the others.
mod common;

use std::time::Duration;

use common::*;

const APP_ADM: &str = "rtpvisor-admission";

fn ours(prefix: &str) -> (usize, usize, usize) {
    let chans = asterisk_channels();
    let callers = chans.iter().filter(|c| c.starts_with(prefix) && !c.ends_with("-far")).count();
    let media = chans
        .iter()
        .filter(|c| rtpvisor_actors::naming::parse(c).is_some_and(|o| o.app == APP_ADM))
        .count();
    let bridges = asterisk_bridges()
        .iter()
        .filter(|b| rtpvisor_actors::naming::parse(b).is_some_and(|o| o.app == APP_ADM))
        .count();
    (callers, media, bridges)
}

#[test]
fn twelve_shared_echo_calls_on_a_four_port_pool_four_served_eight_refused() {
    ensure_asterisk();
    let svc = Rtpvisor::start(
        "e2e_admission",
        Options { rtp_ports: "10540-10543".into(), env: vec![("RTPVISOR_ARI_APP".into(), APP_ADM.into())] },
    );
    let ready = svc.get("/ready");
    eprintln!("ready: {ready}");
    for i in 0..12 {
        originate_in(APP_ADM, "milliwatt", "shared-echo", &format!("adm-{i}"));
    }
    wait_until("12 calls decided: 4 served, 8 refused", Duration::from_secs(20), || {
        let m = svc.metrics();
        m["active_channels"] == 4 && m["rejected_calls"] == 8
    });
    // The refused callers were hung up (congestion) and nothing was created for them.
    wait_until("Asterisk holds exactly the 4 served calls", Duration::from_secs(10), || ours("adm-") == (4, 4, 4));
    let m = svc.metrics();
    assert_eq!(m["modes"]["shared-echo"]["calls_rejected"], 8, "{m}");
    assert_eq!(m["failed_calls"], 0, "{m}");
    let log = svc.log_text();
    assert_eq!(log.matches("at the admission limit of 4 concurrent calls").count(), 8, "each refusal says why");

    // The limit counts live calls: after one ends, the next call is served.
    ari_delete("/channels/adm-0").unwrap();
    wait_until("3 active", Duration::from_secs(10), || svc.metrics()["active_channels"] == 3);
    originate_in(APP_ADM, "echo", "probe", "adm-next");
    wait_until("the next call is served", Duration::from_secs(10), || svc.metrics()["active_channels"] == 4);
    assert_eq!(svc.metrics()["rejected_calls"], 8);
    hang_up_prefixed("adm-");
    wait_until("no live call", Duration::from_secs(10), || svc.metrics()["active_channels"] == 0);
    wait_until("nothing of ours left in Asterisk", Duration::from_secs(10), || ours("adm-") == (0, 0, 0));
    assert_eq!(svc.get("/ports")["leased"], 0);
}
