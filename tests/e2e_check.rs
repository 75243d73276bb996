#![cfg(feature = "e2e")]
//! `rtpvisor check` against the real Asterisk: a healthy setup passes, and each failure it
//! claims to detect is detected (exit 1, that line and no other one ✗): the app held by another
//! client, wrong ARI credentials, ARI unreachable, a port of the range busy, the echo address
//! busy, an invalid configuration, an API open beyond loopback; and `--call` places a probe call (and a shared-echo call)
//! through a running rtpvisor.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Output};

use common::*;

/// Settings of a deployment that is not started: free HTTP and echo ports, a small free range.
fn idle_env() -> Vec<(String, String)> {
    let base = 10_000 + (std::process::id() % 2_000) as u16 * 10;
    [
        ("RTPVISOR_ARI_URL", ARI.to_string()),
        ("RTPVISOR_HTTP_ADDR", format!("127.0.0.1:{}", free_tcp_port())),
        ("RTPVISOR_ECHO_ADDR", format!("127.0.0.1:{}", free_udp_port())),
        ("RTPVISOR_MEDIA_BIND_IP", "127.0.0.1".to_string()),
        ("RTPVISOR_RTP_PORTS", format!("{base}-{}", base + 9)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

/// Runs `rtpvisor check ARGS` with exactly `env`; the exit code and stdout.
fn check(env: &[(String, String)], args: &[&str]) -> (i32, String) {
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_rtpvisor"))
        .arg("check")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running rtpvisor check");
    let out = String::from_utf8_lossy(&stdout).into_owned();
    eprintln!("check {args:?}: exit {:?}\n{out}{}", status.code(), String::from_utf8_lossy(&stderr));
    (status.code().expect("exited"), out)
}

/// The ✗ lines of a report.
fn failures(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with('✗')).collect()
}

/// Exit 1 with exactly one ✗ line, containing `what`, followed by its fix.
fn assert_one_failure(code: i32, out: &str, what: &str) {
    assert_eq!(code, 1, "{out}");
    let f = failures(out);
    assert_eq!(f.len(), 1, "exactly one failure expected: {out}");
    assert!(f[0].contains(what), "expected '{what}': {out}");
    assert!(out.contains(&format!("{}\n    → ", f[0])), "a failure says what to do: {out}");
}

#[test]
fn a_healthy_setup_passes() {
    ensure_asterisk();
    let (code, out) = check(&idle_env(), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(failures(&out).is_empty(), "{out}");
    assert!(out.contains("✓ configuration is valid"), "{out}");
    assert!(out.contains("answers this host only (no token)\n"), "{out}");
    assert!(out.contains("answers user 'rtpvisor': Asterisk 22"), "the version is shown: {out}");
    assert!(out.contains("✓ Stasis app 'rtpvisor' is free"), "{out}");
    assert!(out.contains(": all 10 bindable"), "{out}");
    assert!(out.contains("(UDP) is bindable"), "{out}");
    assert!(out.contains("· no rtpvisor answers at"), "{out}");
}

#[test]
fn the_app_held_by_another_client_is_detected() {
    ensure_asterisk();
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_ARI_APP", "chk-held");
    let url = format!("ws://127.0.0.1:8088/ari/events?app=chk-held&api_key={ARI_USER}:{ARI_PASSWORD}");
    let (ws, resp) = tungstenite::connect(url).expect("a test client takes the app");
    assert_eq!(resp.status().as_u16(), 101);
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, "Stasis app 'chk-held' is held by another client");
    drop(ws);
    // Once the client is gone, the app is free again.
    wait_until("the app is free", std::time::Duration::from_secs(5), || ari_get("/applications/chk-held").is_err());
    let (code, out) = check(&env, &[]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn wrong_credentials_are_detected() {
    ensure_asterisk();
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_ARI_PASSWORD", "not-the-password");
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, "refused user 'rtpvisor' (401)");
    assert!(out.contains("· Stasis app 'rtpvisor': not checked"), "{out}");
}

#[test]
fn an_unreachable_ari_is_detected() {
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_ARI_URL", &format!("http://127.0.0.1:{}/ari", free_tcp_port()));
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, "does not answer");
}

#[test]
fn a_busy_port_of_the_range_is_detected() {
    ensure_asterisk();
    let held = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_RTP_PORTS", &format!("{port}-{port}"));
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, &format!("1 of 1 cannot be bound ({port})"));
    assert!(out.contains(&format!("ss -ulpn 'sport = :{port}'")), "{out}");
}

#[test]
fn a_busy_echo_address_is_detected() {
    ensure_asterisk();
    let held = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_ECHO_ADDR", &addr.to_string());
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, &format!("echo address {addr} (UDP) cannot be bound"));
}

#[test]
fn an_invalid_configuration_is_detected() {
    let mut env = idle_env();
    set(&mut env, "RTPVISOR_RTP_PORTS", "banana");
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, "configuration");
    assert!(out.contains("RTPVISOR_RTP_PORTS") || out.contains("rtp_ports"), "the setting is named: {out}");
    assert_eq!(out.lines().filter(|l| !l.starts_with("    →")).count(), 1, "nothing else is checked: {out}");
}

#[test]
fn an_api_open_beyond_loopback_is_detected() {
    ensure_asterisk();
    let mut env = idle_env();
    let addr = format!("0.0.0.0:{}", free_tcp_port());
    set(&mut env, "RTPVISOR_HTTP_ADDR", &addr);
    // As the service would: the configuration is refused, and says how to make a token.
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, "configuration: invalid RTPVISOR_HTTP_ADDR");
    assert!(out.contains("the HTTP API would answer other hosts without a token") && out.contains("openssl rand -hex 32"), "{out}");
    // Open on purpose: the service starts, the check still fails.
    set(&mut env, "RTPVISOR_HTTP_ALLOW_OPEN", "true");
    let (code, out) = check(&env, &[]);
    assert_one_failure(code, &out, &format!("HTTP API on {addr} answers other hosts without a token (http.allow_open)"));
    assert!(out.contains("RTPVISOR_HTTP_TOKEN_FILE"), "where to put a token: {out}");
    // With a token it passes.
    set(&mut env, "RTPVISOR_HTTP_TOKEN", &random_token());
    let (code, out) = check(&env, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("✓ HTTP API on {addr} requires a token\n")), "{out}");
}

#[test]
fn a_probe_call_through_the_running_service() {
    ensure_asterisk();
    clean_asterisk();
    let svc = Rtpvisor::start("e2e_check_call", Options::default());
    let env: Vec<(String, String)> = [
        ("RTPVISOR_ARI_URL", ARI.to_string()),
        ("RTPVISOR_HTTP_ADDR", svc.http.trim_start_matches("http://").to_string()),
        ("RTPVISOR_HTTP_TOKEN", svc.token.clone()),
        ("RTPVISOR_ECHO_ADDR", format!("127.0.0.1:{}", svc.echo_port)),
        ("RTPVISOR_MEDIA_BIND_IP", "127.0.0.1".to_string()),
        ("RTPVISOR_RTP_PORTS", "10000-10100".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, out) = check(&env, &["--call", "Local/echo@rtpvisor-test", "--call-secs", "1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is running and ready"), "{out}");
    assert!(out.contains("requires a token\n"), "{out}");
    assert!(out.contains("✓ Stasis app 'rtpvisor' is held by the running rtpvisor"), "{out}");
    assert!(out.contains("is held by the running rtpvisor\n"), "{out}");
    let call = out.lines().find(|l| l.contains("probe call to Local/echo@rtpvisor-test")).unwrap_or_else(|| panic!("{out}"));
    assert!(call.starts_with("✓") && call.contains("setup ") && call.contains("RTT p50 "), "{call}");
    // A shared-echo call (a tone, reflected by the shared echo): judged by what the echo
    // reflected for it, the only figure the service keeps for such a call.
    let (code, out) =
        check(&env, &["--call", "Local/milliwatt@rtpvisor-test", "--call-mode", "shared-echo", "--call-secs", "2"]);
    assert_eq!(code, 0, "{out}");
    let call = out.lines().find(|l| l.contains("shared-echo call to Local/milliwatt")).unwrap_or_else(|| panic!("{out}"));
    let reflected: u64 = call
        .split(", ")
        .find_map(|part| part.strip_suffix(" packets reflected by the shared echo"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{call}"));
    assert!(call.starts_with("✓") && reflected >= 25, "2 s of 20 ms packets, less the setup: {call}");
    // Without a running service, --call fails and says so.
    drop(svc);
    wait_until("the stopped service's app is free", std::time::Duration::from_secs(5), || ari_get("/applications/rtpvisor").is_err());
    let (code, out) = check(&idle_env(), &["--call", "Local/echo@rtpvisor-test"]);
    assert_one_failure(code, &out, "no ready rtpvisor");
    assert!(asterisk_channels().is_empty(), "{:?}", asterisk_channels());
}

#[test]
fn settings_come_from_the_config_file_too() {
    ensure_asterisk();
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("e2e_check_good.toml");
    std::fs::write(&good, "[ari]\napp = \"chk-from-file\"\n").unwrap();
    let (code, out) = check(&idle_env(), &["--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("configuration is valid ({}", good.display())), "{out}");
    assert!(out.contains("✓ Stasis app 'chk-from-file' is free"), "the file's app is checked: {out}");
    let bad = dir.join("e2e_check_bad.toml");
    std::fs::write(&bad, "[media]\nrtp_ports = \"2-1\"\n").unwrap();
    let (code, out) = check(&idle_env(), &["--config", bad.to_str().unwrap()]);
    assert_one_failure(code, &out, "configuration");
    assert!(out.contains("e2e_check_bad.toml"), "the file is named: {out}");
}
