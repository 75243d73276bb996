#![cfg(feature = "e2e")]
//! `rtpvisor loadgen` against the real service and the real Asterisk: calls placed through ARI
//! into the service, every call's figures collected from `GET /calls/ended`, nothing left in
//! Asterisk, and the exit code set by the SLO flags (0 when they hold, 1 naming the broken one);
//! the service killed mid-run: exit 2, no more calls placed, every call placed hung up.

mod common;

use std::process::{Command, Output};
use std::time::Instant;

use common::*;
use serde_json::Value;

/// Runs `rtpvisor loadgen ARGS` with the settings of `svc` (its API address and token, ARI).
fn loadgen(svc: &Rtpvisor, args: &[&str]) -> (i32, String, String) {
    let start = Instant::now();
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_rtpvisor"))
        .arg("loadgen")
        .args(args)
        .env_clear()
        .env("RTPVISOR_ARI_URL", ARI)
        .env("RTPVISOR_HTTP_ADDR", svc.http.trim_start_matches("http://"))
        .env("RTPVISOR_HTTP_TOKEN", &svc.token)
        .output()
        .expect("running rtpvisor loadgen");
    let (out, err) = (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    eprintln!("loadgen {args:?}: exit {:?} after {:.1} s\n{out}{err}", status.code(), start.elapsed().as_secs_f64());
    (status.code().expect("exited"), out, err)
}

/// The service's ended calls whose channel ids say they were placed by a loadgen run.
fn recorded_loadgen_calls(svc: &Rtpvisor) -> Vec<Value> {
    let page = svc.get("/calls/ended?since=0");
    page["calls"].as_array().unwrap().iter().filter(|c| c["channel"].as_str().unwrap().starts_with("lg")).cloned().collect()
}

#[test]
fn loose_slos_hold_every_call_is_collected_and_asterisk_is_left_clean() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_loadgen_pass", Options::default());
    let (code, out, err) = loadgen(
        &svc,
        &[
            "--calls", "10", "--rate", "10", "--concurrency", "10", "--duration", "2", "--mode", "probe",
            "--endpoint", "Local/echo@rtpvisor-test", "--json",
            "--max-p99-ms", "200", "--max-loss", "0.05", "--min-mos", "3.5", "--max-failed", "0",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let s = &doc["summary"];
    assert_eq!(s["placed"], 10, "{s}");
    assert_eq!(s["served"], 10, "{s}");
    assert_eq!((s["refused"].as_u64(), s["failed"].as_u64(), s["missing"].as_u64()), (Some(0), Some(0), Some(0)), "{s}");
    assert_eq!((s["left_channels"].as_u64(), s["left_bridges"].as_u64()), (Some(0), Some(0)), "{s}");
    let calls = doc["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 10);
    for c in calls {
        assert_eq!(c["fate"], "served", "{c}");
        assert!(c["samples"].as_u64().unwrap() > 50, "2 s of probes at 50/s: {c}");
        let setup = c["setup_ms"].as_f64().unwrap();
        assert!(setup > 0.0 && setup < 5_000.0, "{c}");
        assert!(c["mos"].as_f64().unwrap() > 4.0, "{c}");
    }
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["setup_ms"]["p50"].as_f64().unwrap() > 0.0, "{s}");
    assert!(doc["slos"].as_array().unwrap().iter().all(|v| v["holds"] == true), "{doc}");
    // The service recorded exactly these 10 calls, and Asterisk lists nothing of them.
    let recorded = recorded_loadgen_calls(&svc);
    assert_eq!(recorded.len(), 10, "{recorded:?}");
    let run = doc["run"].as_str().unwrap();
    assert!(recorded.iter().all(|c| c["channel"].as_str().unwrap().starts_with(&format!("lg{run}-c"))));
    assert!(asterisk_channels().is_empty() && asterisk_bridges().is_empty(), "{:?} {:?}", asterisk_channels(), asterisk_bridges());
    // Plain progress lines when stderr is not a terminal.
    assert!(err.lines().any(|l| l.contains("placed ") && l.contains(" up ") && !l.contains('\r')), "{err}");
    assert_all_released(&svc, "after loadgen");
}

#[test]
fn a_broken_slo_exits_1_and_is_named() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_loadgen_fail", Options::default());
    // Echo mode toward a far end that sends (a 1004 Hz tone). MOS never exceeds 4.5:
    // --min-mos 5 must break; the loss limit holds.
    let (code, out, err) = loadgen(
        &svc,
        &[
            "--calls", "6", "--rate", "10", "--concurrency", "3", "--duration", "1", "--mode", "echo",
            "--endpoint", "Local/milliwatt@rtpvisor-test", "--min-mos", "5", "--max-loss", "0.5",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("broken: --min-mos"), "{out}");
    assert!(!out.contains("broken: --max-loss"), "{out}");
    assert!(out.contains("SLO --min-mos      >= 5: 4.") && out.contains("✗ BROKEN"), "a measured MOS, too low: {out}");
    assert!(out.contains("delay (ms)"), "{out}");
    assert!(out.contains("placed 6  served 6  refused 0  failed 0"), "{out}");
    assert!(out.contains("left in Asterisk   0 channels, 0 bridges"), "{out}");
    assert_eq!(recorded_loadgen_calls(&svc).len(), 6);
    // An impossible latency limit breaks too, named; on a terminal (a pty from `script`) the
    // progress is one line redrawn in place.
    let (code, out) = loadgen_on_terminal(&svc, "--calls 2 --rate 10 --duration 1 --max-p99-ms 0.001");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("broken: --max-p99-ms"), "{out}");
    assert!(out.contains("\r\x1b[2K") && out.contains("placed 2/2"), "a redrawn line: {out:?}");
    assert_all_released(&svc, "after loadgen");
}

/// `rtpvisor loadgen ARGS` under a pseudo-terminal (util-linux `script`): exit code and what
/// the terminal got (stdout and stderr together).
fn loadgen_on_terminal(svc: &Rtpvisor, args: &str) -> (i32, String) {
    let command = format!("{} loadgen {args}", env!("CARGO_BIN_EXE_rtpvisor"));
    let Output { status, stdout, .. } = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("RTPVISOR_ARI_URL", ARI)
        .env("RTPVISOR_HTTP_ADDR", svc.http.trim_start_matches("http://"))
        .env("RTPVISOR_HTTP_TOKEN", &svc.token)
        .output()
        .expect("running script (util-linux)");
    let out = String::from_utf8_lossy(&stdout).into_owned();
    eprintln!("loadgen {args} on a terminal: exit {:?}\n{out}", status.code());
    (status.code().expect("exited"), out)
}

#[test]
fn calls_to_a_pjsip_endpoint_reach_a_sip_phone() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_loadgen_pjsip", Options::default());
    // A SIP phone that answers 3 calls and echoes their RTP: sipp's UAS in the Asterisk chroot.
    let mut phone = Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .args(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", "5070", "-rtp_echo", "-m", "3", "-nostdin"])
        .args(["-min_rtp_port", "23000", "-max_rtp_port", "23100"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting sipp");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, out, err) = loadgen(
        &svc,
        &[
            "--calls", "3", "--rate", "5", "--duration", "2", "--mode", "probe",
            "--endpoint", "PJSIP/caller/sip:echo@127.0.0.1:5070", "--max-failed", "0", "--min-mos", "4",
        ],
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = phone.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > std::time::Duration::from_secs(15) {
            let _ = phone.kill();
            let _ = phone.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("placed 3  served 3  refused 0  failed 0"), "{out}");
    assert!(out.contains("left in Asterisk   0 channels, 0 bridges"), "{out}");
    assert!(status.is_some_and(|s| s.success()), "sipp took 3 calls and ended: {status:?}");
    assert_all_released(&svc, "after loadgen over SIP");
}

#[test]
fn the_service_dying_mid_run_stops_the_run_and_every_placed_call_is_hung_up() {
    ensure_asterisk();
    clean_asterisk();
    let mut svc = Rtpvisor::start("e2e_loadgen_service_dies", Options::default());
    // 20 calls at 4/s, 5 s each: the service is killed (SIGKILL) 2 s in, with calls up.
    let child = Command::new(env!("CARGO_BIN_EXE_rtpvisor"))
        .args(["loadgen", "--calls", "20", "--rate", "4", "--concurrency", "20", "--duration", "5"])
        .args(["--mode", "probe", "--endpoint", "Local/echo@rtpvisor-test", "--collect-timeout", "3"])
        .env_clear()
        .env("RTPVISOR_ARI_URL", ARI)
        .env("RTPVISOR_HTTP_ADDR", svc.http.trim_start_matches("http://"))
        .env("RTPVISOR_HTTP_TOKEN", &svc.token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running rtpvisor loadgen");
    wait_until("loadgen's calls are up", std::time::Duration::from_secs(10), || {
        asterisk_channels().iter().filter(|c| c.starts_with("lg") && c.contains("-c")).count() >= 4
    });
    let up = asterisk_channels().iter().filter(|c| c.starts_with("lg") && c.contains("-c")).count();
    svc.signal("KILL");
    let start = Instant::now();
    let Output { status, stdout, stderr } = child.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr));
    eprintln!("loadgen: exit {:?} {:.1} s after the kill, {up} calls up at the kill\n{out}{err}", status.code(), start.elapsed().as_secs_f64());
    // The fault was seen: no verdict, exit 2, the API's failure named, no more calls placed.
    assert_eq!(status.code(), Some(2), "{out}{err}");
    assert!(err.contains("the service's API failed"), "{err}");
    // "... N of 20 calls placed and hung up, ..."
    let placed: usize = err
        .find(" of 20 calls placed and hung up")
        .and_then(|at| err[..at].split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(placed >= up && placed < 20, "placing stopped at the failure: {placed} placed, {up} were up at the kill");
    // Nothing lost: every caller it placed (and its Local far half) is gone from Asterisk. The
    // killed service's own externalMedia channels and bridges are its reconciliation's to end.
    let ours: Vec<String> = asterisk_channels().into_iter().filter(|c| c.starts_with("lg")).collect();
    assert!(ours.is_empty(), "loadgen's calls left in Asterisk: {ours:?}");
    clean_asterisk();
}
