#![cfg(feature = "e2e")]
//! Teardown against the real Asterisk, whichever side ends first: the caller's far end hangs
//! up, our externalMedia channel is hung up by someone else, our bridge is destroyed by someone
//! else, or the call has no media. Each time: the call ends, its port returns to the pool and
//! Asterisk lists none of its channels or bridges.
mod common;

use std::time::{Duration, Instant};

use common::*;

fn wait_active(svc: &Rtpvisor, n: u64) -> serde_json::Value {
    wait_until("the call is active", Duration::from_secs(15), || {
        let c = svc.get("/channels");
        c.as_array().map(|a| a.len() as u64 == n && a.iter().all(|c| c["state"] == "active")) == Some(true)
    });
    svc.get("/channels")
}

#[test]
fn every_side_ending_first_tears_the_whole_call_down() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_teardown", Options::default());

    // 1. The far end hangs up by itself after 2 s (dialplan Hangup()).
    originate("hangup", "echo", "td-far");
    wait_active(&svc, 1);
    assert_all_released(&svc, "far end hung up");

    // 2. Someone else hangs up our externalMedia channel.
    originate("silence", "echo", "td-em");
    let c = wait_active(&svc, 1);
    let em = c[0]["external_media_channel"].as_str().unwrap().to_string();
    assert!(asterisk_channels().contains(&em), "the externalMedia channel exists in Asterisk");
    ari_delete(&format!("/channels/{em}")).expect("hang up externalMedia");
    assert_all_released(&svc, "externalMedia channel hung up");

    // 3. Someone else destroys our bridge.
    originate("silence", "probe", "td-br");
    let c = wait_active(&svc, 1);
    let br = c[0]["bridge"].as_str().unwrap().to_string();
    assert!(asterisk_bridges().contains(&br), "the bridge exists in Asterisk");
    ari_delete(&format!("/bridges/{br}")).expect("destroy bridge");
    assert_all_released(&svc, "bridge destroyed");

    let m = svc.metrics();
    assert_eq!(u64_of(&m, "total_channels"), 3);
    assert_eq!(u64_of(&m, "failed_calls"), 0);
}

#[test]
fn a_call_without_media_is_ended_after_the_no_media_timeout() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start(
        "e2e_no_media",
        Options {
            env: vec![("RTPVISOR_NO_MEDIA_TIMEOUT_MS".into(), "1000".into())],
            ..Options::default()
        },
    );
    // Echo and shared-echo toward a far end that sends nothing: no packet ever reaches our
    // port or, from that call's Asterisk address, the shared echo.
    originate("silence", "echo", "nomedia");
    originate("silence", "shared-echo", "nomedia-shared");
    wait_active(&svc, 2);
    let t0 = Instant::now();
    assert_all_released(&svc, "no media");
    let took = t0.elapsed();
    eprintln!("calls without media ended {} ms after they were active", took.as_millis());
    assert!(took >= Duration::from_millis(500), "ended too early: {took:?}");
    assert!(svc.log_text().contains("No media on call nomedia"));
    assert!(svc.log_text().contains("No media on call nomedia-shared"));
    let m = svc.metrics();
    assert_eq!(m["ended"]["no_media"], 2, "counted as their own end reason: {m}");
}

/// The no-media timeout the service declares as its default (`--print-config`, run with the
/// same environment as the service the test starts).
fn declared_no_media_timeout() -> Duration {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtpvisor")).arg("--print-config").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("no_media_timeout_ms = "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no no_media_timeout_ms in --print-config: {text}"));
    Duration::from_millis(ms)
}

/// The no-media timeout is on in a service started without any setting for it: beside a call
/// with media, which it leaves alone, a call whose far end sends nothing is ended for it, as
/// `no_media`, after the declared default.
#[test]
fn the_no_media_timeout_is_on_by_default() {
    ensure_asterisk();
    clean_asterisk();
    assert!(std::env::var_os("RTPVISOR_NO_MEDIA_TIMEOUT_MS").is_none(), "the service must run on its default");
    let default = declared_no_media_timeout();
    assert!(default > Duration::ZERO, "on by default: {default:?}");
    assert!(default <= Duration::from_secs(60), "a default this test can wait for: {default:?}");
    let svc = Rtpvisor::start("e2e_no_media_default", Options::default());
    originate("echo", "probe", "withmedia");
    originate("silence", "echo", "silent");
    wait_active(&svc, 2);
    let t0 = Instant::now();
    wait_until("the silent call is ended", default + Duration::from_secs(15), || {
        svc.metrics()["active_channels"] == 1
    });
    let took = t0.elapsed();
    eprintln!("the silent call ended {} ms after it was active (default {} ms)", took.as_millis(), default.as_millis());
    assert!(took >= default.mul_f64(0.8), "ended before the timeout: {took:?} of {default:?}");
    let m = svc.metrics();
    assert_eq!(m["ended"]["no_media"], 1, "ended for the silence: {m}");
    assert!(svc.log_text().contains("No media on call silent"));
    let left = svc.get("/channels");
    assert_eq!(left[0]["channel_id"], "withmedia", "the call with media stays: {left}");
    let returned = || svc.get("/channels/withmedia")["media"]["probe"]["returned"].as_u64().unwrap();
    let before = returned();
    std::thread::sleep(Duration::from_secs(1));
    assert!(returned() >= before + 40, "and its probe still comes back");
    ari_delete("/channels/withmedia").unwrap();
    assert_all_released(&svc, "after the call");
    assert_eq!(svc.metrics()["ended"]["hangup"], 1);
}
