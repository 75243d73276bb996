#![cfg(feature = "e2e")]
//! The media engine is supervised like the other singletons, against the real Asterisk: a
//! stall (no loop turn for `supervision.media_stall_ms`) or its death escalates (exit 70), and
//! a restarted process adopts the live calls. Requests to a stalled engine time out: the HTTP
//! API keeps answering meanwhile.
mod common;

use std::time::{Duration, Instant};

use common::*;

const APP_ME: &str = "rtpvisor-media-engine";

fn start(name: &str, stall_ms: &str) -> Rtpvisor {
    Rtpvisor::start(
        name,
        Options {
            rtp_ports: "10580-10589".into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), APP_ME.into()),
                ("RTPVISOR_FAULT_INJECTION".into(), "true".into()),
                ("RTPVISOR_MEDIA_STALL_MS".into(), stall_ms.into()),
            ],
        },
    )
}

fn ours_in_asterisk(prefix: &str) -> usize {
    asterisk_channels()
        .into_iter()
        .chain(asterisk_bridges())
        .filter(|id| id.starts_with(prefix) || rtpvisor_actors::naming::parse(id).is_some_and(|o| o.app == APP_ME))
        .count()
}

fn escalates(fault: &str, prefix: &str) {
    ensure_asterisk();
    let mut svc = start(&format!("e2e_media_{fault}"), "1500");
    originate_in(APP_ME, "echo", "probe", &format!("{prefix}-1"));
    originate_in(APP_ME, "milliwatt", "echo", &format!("{prefix}-2"));
    wait_until("2 calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 2);
    let tree = svc.get("/actors");
    let engine = tree["children"].as_array().unwrap().iter().find(|n| n["name"] == "media-engine").unwrap().clone();
    assert!(engine["policy"].as_str().unwrap().contains("escalate"), "{engine}");

    let t0 = Instant::now();
    let (code, _) = svc.post(&format!("/faults/media/{fault}"));
    assert_eq!(code, 202);
    if fault == "stall" {
        // The API answers while the engine stalls: requests to it time out, none hangs.
        let t = Instant::now();
        let (code, _) = svc.get_status("/channels");
        eprintln!("GET /channels during the stall: {code} after {} ms", t.elapsed().as_millis());
        assert_eq!(code, 200, "answered, without the media figures");
        assert!(t.elapsed() < Duration::from_millis(1200), "bounded by the request timeout (750 ms)");
    }
    let exit = svc.wait_exit(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("media engine {fault}: process exited {exit:?} after {} ms", took.as_millis());
    assert_eq!(exit, Some(70), "escalated");
    assert!(svc.log_text().contains("media engine"), "the log says why");

    // Its own supervisor restarts it; the new process adopts the 2 calls, whose media flows
    // again, and they end by their callers.
    let t1 = Instant::now();
    let svc2 = start(&format!("e2e_media_{fault}_restarted"), "1500");
    wait_until("the restart adopted both calls and their media flows", Duration::from_secs(10), || {
        let c = svc2.get("/channels");
        let c = c.as_array().unwrap();
        c.len() == 2 && c.iter().all(|c| c["adopted_at_ms"].is_u64() && c["media"]["packets_in"].as_u64() > Some(0))
    });
    eprintln!("restarted process: both calls adopted with media {} ms after its start", t1.elapsed().as_millis());
    for i in 1..=2 {
        ari_delete(&format!("/channels/{prefix}-{i}")).unwrap();
    }
    wait_until("Asterisk is clean once the callers hung up", Duration::from_secs(10), || ours_in_asterisk(prefix) == 0);
    assert_eq!(svc2.metrics()["ended"]["hangup"], 2);
}

#[test]
fn a_stalled_media_engine_escalates() {
    escalates("stall", "me-stall");
}

#[test]
fn a_dead_media_engine_escalates() {
    escalates("panic", "me-panic");
}
