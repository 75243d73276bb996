#![cfg(feature = "e2e")]
//! Real SIP callers (sipp inside the Asterisk chroot) through PJSIP into each mode. Media
//! reaching the caller is proven from Asterisk's side: the RTP statistics of the caller's PJSIP
//! channel count what Asterisk sent it, and in these bridges only rtpvisor's media is there
//! to send.
mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Starts one sipp UAC call to `exten` in the background.
fn sip_call(exten: &str, extra: &[&str]) -> thread::JoinHandle<(i32, String)> {
    let mut args: Vec<String> = [
        "-s", exten, "127.0.0.1:5060", "-i", "127.0.0.1", "-p", "5070", "-m", "1", "-l", "1",
        "-min_rtp_port", "23000", "-max_rtp_port", "23100", "-nostdin", "-timeout", "30s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sipp(&refs)
    })
}

/// Waits for the SIP call to show up in rtpvisor; returns its channel view.
fn wait_for_sip_channel(svc: &Rtpvisor) -> Value {
    let mut found = Value::Null;
    wait_until("the SIP call is active in rtpvisor", Duration::from_secs(15), || {
        let chans = svc.get("/channels");
        if let Some(c) = chans.as_array().and_then(|a| a.first()) {
            if c["state"] == "active" {
                found = c.clone();
                return true;
            }
        }
        false
    });
    found
}

/// Polls Asterisk's RTP statistics of the caller's channel while the call lasts; returns the
/// highest txcount (packets Asterisk sent to the caller) seen.
fn max_txcount_while(channel_id: &str, call: &thread::JoinHandle<(i32, String)>) -> u64 {
    let mut max = 0;
    let start = Instant::now();
    while !call.is_finished() && start.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = ari_get(&format!("/channels/{channel_id}/rtp_statistics")) {
            max = max.max(s["txcount"].as_u64().unwrap_or(0));
        }
        thread::sleep(Duration::from_millis(250));
    }
    max
}

#[test]
fn sip_caller_into_probe_mode_echoes_probes_back() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_sip_probe", Options::default());
    let call = sip_call("101", &["-sn", "uac", "-d", "4000", "-rtp_echo"]);
    let chan = wait_for_sip_channel(&svc);
    assert_eq!(chan["mode"], "probe");
    assert!(chan["channel_name"].as_str().unwrap().starts_with("PJSIP/"), "{chan}");
    let (code, out) = call.join().unwrap();
    assert_eq!(code, 0, "sipp failed: {out}");
    assert_all_released(&svc, "after the SIP call");
    let m = svc.metrics();
    eprintln!("probe via SIP: {}", m["modes"]["probe"]);
    let returned = u64_of(&m["modes"]["probe"], "packets_in");
    assert!(returned >= 150, "a 4 s call at 50 packets/s: {returned} came back");
    assert_eq!(u64_of(&m, "total_latencies"), returned);
    assert!(f64_of(&m, "p50_latency") > 0.0);
    assert!(f64_of(&m, "packet_loss_ratio") < 0.01, "{m}");
}

/// A sipp caller plays its pcap into `exten`; returns what rtpvisor reported, the call's view
/// and how many packets Asterisk sent the caller (only rtpvisor's media is in the bridge).
fn pcap_call(name: &str, exten: &str) -> (Value, Value, u64) {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start(name, Options::default());
    let call = sip_call(exten, &["-sn", "uac_pcap"]);
    let chan = wait_for_sip_channel(&svc);
    let caller = chan["channel_id"].as_str().unwrap().to_string();
    let tx = max_txcount_while(&caller, &call);
    let (code, out) = call.join().unwrap();
    assert_eq!(code, 0, "sipp failed: {out}");
    assert_all_released(&svc, "after the SIP call");
    let mut m = svc.metrics();
    m["ports_after"] = svc.get("/ports");
    (m, chan, tx)
}

#[test]
fn sip_caller_into_echo_mode_hears_itself() {
    let (m, chan, tx) = pcap_call("e2e_sip_echo", "100");
    assert_eq!(chan["mode"], "echo");
    let echo = &m["modes"]["echo"];
    eprintln!("echo via SIP: Asterisk sent the caller {tx} packets; rtpvisor {echo}");
    assert!(u64_of(echo, "packets_in") >= 100, "{echo}");
    assert!(u64_of(echo, "packets_out") >= 100, "{echo}");
    assert!(tx >= 100, "Asterisk sent the caller only {tx} packets");
    assert!(u64_of(&m, "total_latencies") >= 100);
}

#[test]
fn sip_caller_into_shared_echo_mode_uses_the_echo_port() {
    let (m, chan, tx) = pcap_call("e2e_sip_shared", "102");
    assert_eq!(chan["mode"], "shared-echo");
    assert!(chan["port"].is_null(), "shared-echo leases no port: {chan}");
    eprintln!("shared echo via SIP: Asterisk sent the caller {tx} packets; echo {}", m["echo"]);
    assert!(u64_of(&m["echo"], "packets") >= 100, "{m}");
    assert!(tx >= 100, "Asterisk sent the caller only {tx} packets");
    assert_eq!(u64_of(&m["ports_after"], "leases_total"), 0);
}
