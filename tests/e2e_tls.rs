#![cfg(feature = "e2e")]
//! ARI over TLS against the real Asterisk. `scripts/asterisk.sh start` gives the chroot's
//! Asterisk a TLS listener on 127.0.0.1:8089 whose certificate names IP 127.0.0.1 only, signed
//! by a test CA (`scripts/asterisk.sh tls-ca`). rtpvisor talks `https://` and `wss://` to it,
//! trusting that CA through `ari.ca_file`: a probe call works end to end. With a CA that did not
//! sign the certificate, or with a URL host the certificate is not for (`localhost`), the
//! service says why in its log and in `/ready` (503), keeps retrying, and does not crash.
//!
//! Beside other tests on the same Asterisk: own Stasis app, RTP ports 10700-10719, only its
//! own calls are touched.
mod common;
#[path = "support/unready.rs"]
mod unready;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use unready::Unready;

const APP: &str = "rtpvisor-tls";
const TLS_ARI: &str = "https://127.0.0.1:8089/ari";

/// The test CA's PEM file (host path).
fn test_ca() -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .arg("tls-ca")
        .output()
        .expect("scripts/asterisk.sh tls-ca");
    let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(std::path::Path::new(&path).is_file(), "no test CA at {path}");
    path
}

/// A CA certificate (another subject than the test CA's) that signed nothing Asterisk has.
const OTHER_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUVR+0M4lgldEHG3aJNLBuW1dJRZowCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNU29tZSBvdGhlciBDQTAeFw0yNjEyMDIxMzQ3MzRaFw0zNjEx
MjkxMzQ3MzRaMBgxFjAUBgNVBAMMDVNvbWUgb3RoZXIgQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASWdFdk7xLp7yfiusZNTjc3iSpPqJG8sKANHCfTC+VTwQhm
nuL2y4cnZHion3YyWXPT1GkUFOpy618WAb3cyPQjo1MwUTAdBgNVHQ4EFgQUAyys
w2gexCK6WZlWhi3aR0JbUeQwHwYDVR0jBBgwFoAUAyysw2gexCK6WZlWhi3aR0Jb
UeQwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiAknV59vKsiXTBL
Pci6SnFrKn+3mcI6QTuBN2S+opCrUwIhAK1juONZCWhKDjGGAOQahfJBkFIZAnNB
rqMutoiTJorj
-----END CERTIFICATE-----
";

/// Nothing of this test's app is left in Asterisk (other tests' resources are not looked at).
fn assert_nothing_of_ours(prefix: &str) {
    wait_until("Asterisk lists none of our channels or bridges", Duration::from_secs(20), || {
        asterisk_channels().iter().all(|c| !c.starts_with(prefix) && !c.contains(APP))
            && asterisk_bridges().iter().all(|b| !b.contains(APP))
    });
}

#[test]
fn a_probe_call_over_https_and_wss() {
    ensure_asterisk();
    let ca = test_ca();
    let svc = Rtpvisor::start(
        "e2e_tls",
        Options {
            rtp_ports: "10700-10709".into(),
            env: vec![
                ("RTPVISOR_ARI_URL".into(), TLS_ARI.into()),
                ("RTPVISOR_ARI_CA_FILE".into(), ca.clone()),
                ("RTPVISOR_ARI_APP".into(), APP.into()),
            ],
        },
    );
    let (status, ready) = svc.get_status("/ready");
    assert_eq!((status, &ready["ari"]["connected"]), (200, &Value::Bool(true)), "{ready}");

    let prefix = format!("tls-{}", std::process::id());
    let id = originate_in(APP, "echo", "probe", &format!("{prefix}-probe"));
    wait_until("probes come back over the call set up through TLS", Duration::from_secs(20), || {
        let (code, c) = svc.get_status(&format!("/channels/{id}"));
        code == 200 && c["media"]["probe"]["returned"].as_u64().unwrap_or(0) >= 50
    });
    let call = svc.get(&format!("/channels/{id}"));
    let port = call["port"].as_u64().unwrap();
    assert!((10700..=10709).contains(&port), "{call}");
    assert_eq!(call["state"], "active", "{call}");

    ari_delete(&format!("/channels/{id}")).expect("hang up the caller");
    wait_until("the call ended", Duration::from_secs(20), || svc.metrics()["active_channels"] == 0);
    // An ended call's figures reach /metrics with the media engine's next flush (250 ms).
    wait_until("the ended call's figures are in", Duration::from_secs(2), || {
        svc.metrics()["modes"]["probe"]["packets_in"].as_u64() >= Some(50)
    });
    let m = svc.metrics();
    assert_eq!(m["failed_calls"], 0, "{m}");
    assert_eq!(svc.get("/ports")["leased"], 0);
    assert_nothing_of_ours(&prefix);
    let log = svc.log_text();
    assert!(log.contains(&format!("ARI {TLS_ARI} app {APP} (TLS, CA file {ca})")), "{log}");
    assert!(log.contains("events WebSocket connected for app rtpvisor-tls"), "{log}");
}

#[test]
fn a_wrong_ca_or_host_name_is_a_clear_error_not_a_crash() {
    ensure_asterisk();
    let ca = test_ca();
    let other = std::env::temp_dir().join(format!("rtpvisor-e2e-tls-other-ca-{}.pem", std::process::id()));
    std::fs::write(&other, OTHER_CA).unwrap();
    let other = other.to_str().unwrap().to_owned();
    let cases = [
        // (name, URL, CA file, what the error must say)
        ("e2e_tls_wrong_ca", TLS_ARI.to_owned(), other.clone(), "UnknownIssuer"),
        ("e2e_tls_wrong_host", "https://localhost:8089/ari".to_owned(), ca.clone(), "not valid for name \"localhost\""),
    ];
    for (name, url, ca_file, expected) in cases {
        let env = [("RTPVISOR_ARI_URL", url.as_str()), ("RTPVISOR_ARI_CA_FILE", &ca_file), ("RTPVISOR_ARI_APP", APP)];
        let svc = Unready::start(name, &env);
        let (code, body) = svc.wait_for_error();
        eprintln!("{name}: /ready {code} {body}");
        assert_eq!(code, 503, "{name}: {body}");
        assert_eq!(body["ready"], false, "{name}: {body}");
        let reason = body["reason"].as_str().unwrap_or_else(|| panic!("{name}: no reason: {body}"));
        assert!(reason.starts_with("ARI: ") && reason.contains(expected), "{name}: {reason}");
        assert!(reason.contains("TLS") || reason.contains("certificate"), "{name}: {reason}");
        // Still running, still retrying: a later attempt reports the same.
        std::thread::sleep(Duration::from_millis(1500));
        let (code, body) = svc.ready();
        assert_eq!(code, 503, "{name}: {body}");
        assert!(body["ari"]["last_error"].as_str().unwrap().contains(expected), "{name}: {body}");
        let log = std::fs::read_to_string(&svc.log).unwrap();
        assert!(log.contains("connecting the events WebSocket failed") && log.contains(expected), "{name}: {log}");
        let log_path = svc.log.clone();
        assert_eq!(svc.stop(), Some(0), "{name}: clean exit on SIGTERM (log {})", log_path.display());
    }
    let _ = std::fs::remove_file(&other);
}
