#![cfg(feature = "e2e")]
//! Secrets stay secret, checked on the real binary:
//! - startup refuses what would expose something, with one line and exit 2: fault injection
//!   without an API token, credentials inside the ARI URL (not echoed), the development password
//!   toward a non-loopback ARI host, an API beyond loopback without a token;
//! - the API listens on loopback by default; `http.allow_open` opens it beyond loopback without
//!   a token, on purpose, with a warning in the log;
//! - the API token guards every route but `/health` and `/ready` (401 with the challenge), and
//!   `/ready` says nothing of the live calls;
//! - a full call cycle against the real Asterisk with `RUST_LOG=trace`, as a test ARI user whose
//!   random password (`scripts/asterisk.sh ari-test-user`) comes from `ari.password_file`: the
//!   password, and the base64 of `user:password` that goes on the wire, appear in no log line,
//!   no API answer and not in `--print-config`; neither does a wrong password Asterisk refuses.
//!
//! Beside other tests on the same Asterisk: own Stasis app, RTP ports 10700-10719.
mod common;
#[path = "support/unready.rs"]
mod unready;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use unready::Unready;

const APP: &str = "rtpvisor-secrets";

/// Runs the binary with `env` and `args` until it exits: (exit code, stdout, stderr).
fn run(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtpvisor"));
    cmd.args(args).env("RTPVISOR_HTTP_ADDR", "127.0.0.1:0").env("RTPVISOR_ECHO_ADDR", "127.0.0.1:4999");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running rtpvisor");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Standard base64 (RFC 4648), for the `Authorization: Basic` form of a secret.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn startup_refuses_what_would_expose_a_secret() {
    let (code, _, err) = run(&[("RTPVISOR_FAULT_INJECTION", "true")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("rtpvisor: invalid RTPVISOR_FAULT_INJECTION=\"true\": the /faults routes need an API token"), "{err}");

    let (code, _, err) = run(&[("RTPVISOR_ARI_URL", "http://rtpvisor:Zq9-in-url@127.0.0.1:8088/ari")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("must not contain credentials") && !err.contains("Zq9"), "{err}");

    let (code, _, err) = run(&[("RTPVISOR_ARI_URL", "http://pbx.example:8088/ari")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("the development ARI password is refused toward the non-loopback host pbx.example"), "{err}");
    let allowed = [("RTPVISOR_ARI_URL", "http://pbx.example:8088/ari"), ("RTPVISOR_ARI_ALLOW_DEV_PASSWORD", "true")];
    let (code, out, err) = run(&allowed, &["--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("allow_dev_password = true"), "{out}");

    let secrets = [("RTPVISOR_ARI_PASSWORD", "Zq9-pw-printed"), ("RTPVISOR_HTTP_TOKEN", "Zq9-token-printed-0123")];
    let (code, out, err) = run(&secrets, &["--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("Zq9") && out.contains("password = \"***\"") && out.contains("token = \"***\""), "{out}");
}

#[test]
fn the_api_leaves_loopback_only_with_a_token_or_on_purpose() {
    let (code, _, err) = run(&[("RTPVISOR_HTTP_ADDR", "0.0.0.0:9090")], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("rtpvisor: invalid RTPVISOR_HTTP_ADDR=\"0.0.0.0:9090\": the HTTP API would answer other hosts without a token"),
        "{err}"
    );
    assert!(err.contains("openssl rand -hex 32 > FILE") && err.contains("http.token_file (RTPVISOR_HTTP_TOKEN_FILE)"), "how and where: {err}");
    let token = random_token();
    let (code, _, err) = run(&[("RTPVISOR_HTTP_ADDR", "0.0.0.0:9090"), ("RTPVISOR_HTTP_TOKEN", &token)], &["--print-config"]);
    assert_eq!(code, Some(0), "with a token: {err}");

    // The default: loopback, so a first start by hand needs no token.
    let out = Command::new(env!("CARGO_BIN_EXE_rtpvisor"))
        .arg("--print-config")
        .env_remove("RTPVISOR_HTTP_ADDR")
        .env_remove("RTPVISOR_HTTP_TOKEN")
        .env_remove("RTPVISOR_HTTP_TOKEN_FILE")
        .env_remove("RTPVISOR_CONFIG")
        .output()
        .expect("running rtpvisor");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("[http]\naddr = \"127.0.0.1:9090\"\nallow_open = false\n"), "{printed}");

    // The opt-in: it starts open beyond loopback, says so in its log, and serves without a token.
    let port = free_tcp_port();
    let addr = format!("0.0.0.0:{port}");
    let svc = Unready::start(
        "e2e_secrets_open",
        &[("RTPVISOR_ARI_URL", "http://127.0.0.1:1/ari"), ("RTPVISOR_HTTP_ADDR", &addr), ("RTPVISOR_HTTP_ALLOW_OPEN", "true")],
    );
    let get = |path: &str| match ureq::get(&format!("http://127.0.0.1:{port}{path}")).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    };
    wait_until("the open API answers", Duration::from_secs(10), || get("/health") == 200);
    assert_eq!(get("/channels"), 200, "no token asked");
    let log = std::fs::read_to_string(&svc.log).unwrap();
    assert!(
        log.contains(&format!("the HTTP API on {addr} is reachable from other hosts and has no token (http.allow_open)")),
        "the warning stays: {log}"
    );
    assert!(log.contains(&format!("serving HTTP on {addr} (no token)")), "{log}");
    assert_eq!(svc.stop(), Some(0));
}

#[test]
fn the_token_guards_every_route_but_the_probes() {
    let token = random_token();
    let svc = Unready::start(
        "e2e_secrets_token",
        &[
            ("RTPVISOR_ARI_URL", "http://127.0.0.1:1/ari"),
            ("RTPVISOR_HTTP_TOKEN", &token),
            ("RTPVISOR_FAULT_INJECTION", "true"),
            ("RUST_LOG", "trace"),
        ],
    );
    let get = |path: &str, auth: Option<&str>| {
        let mut req = ureq::get(&format!("{}{path}", svc.http)).timeout(Duration::from_secs(5));
        if let Some(auth) = auth {
            req = req.set("Authorization", auth);
        }
        match req.call() {
            Ok(r) => (r.status(), None),
            Err(ureq::Error::Status(code, r)) => (code, r.header("WWW-Authenticate").map(String::from)),
            Err(_) => (0, None),
        }
    };
    wait_until("the API answers", Duration::from_secs(10), || get("/health", None).0 == 200);
    assert_eq!(get("/ready", None).0, 503, "open, not ready without ARI");
    let bearer = format!("Bearer {token}");
    for path in ["/metrics", "/metrics/prometheus", "/channels", "/ports", "/actors"] {
        for auth in [None, Some("Bearer wrong-token-0123456789"), Some(token.as_str())] {
            let (code, challenge) = get(path, auth);
            assert_eq!(code, 401, "{path} {auth:?}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"rtpvisor\""), "{path}");
        }
        assert_eq!(get(path, Some(&bearer)).0, 200, "{path}");
    }
    let post = |auth: Option<&str>| {
        let mut req = ureq::post(&format!("{}/faults/channels/nope/panic", svc.http));
        if let Some(auth) = auth {
            req = req.set("Authorization", auth);
        }
        match req.call() {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(post(None), 401, "fault routes need the token");
    assert_eq!(post(Some(&bearer)), 404, "with it: no such channel");
    let log = std::fs::read_to_string(&svc.log).unwrap();
    assert!(log.contains("TRACE"), "at trace level");
    assert!(!log.contains(&token), "the token is in the trace log");
    assert_eq!(svc.stop(), Some(0));
}

/// The test ARI user and its password file, from the chroot (`scripts/asterisk.sh`).
fn test_user() -> (String, String, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .arg("ari-test-user")
        .output()
        .expect("scripts/asterisk.sh ari-test-user");
    let text = String::from_utf8(out.stdout).unwrap();
    let (user, file) = text.trim().split_once(' ').expect("user and file");
    let password = std::fs::read_to_string(file).expect("the test user's password file").trim_end().to_owned();
    assert!(password.len() >= 20, "a distinctive password");
    (user.to_owned(), file.to_owned(), password)
}

/// Every form of the secret that must not appear anywhere.
fn forms(user: &str, password: &str) -> Vec<String> {
    vec![
        password.to_owned(),
        base64(format!("{user}:{password}").as_bytes()),
        base64(password.as_bytes()),
        // The distinctive middle of it, should something print it cut or escaped.
        password[7..27].to_owned(),
    ]
}

fn assert_absent(what: &str, text: &str, forms: &[String]) {
    for form in forms {
        assert!(!text.contains(form.as_str()), "{what} shows the password (form {form:?})");
    }
}

#[test]
fn the_ari_password_is_in_no_log_line_at_trace_nor_any_answer() {
    ensure_asterisk();
    let (user, file, password) = test_user();
    let forms = forms(&user, &password);
    assert!(base64(b"rtpvisor:rtpvisor") == "cnRwdmlzb3I6cnRwdmlzb3I=", "the base64 helper");

    let env = vec![
        ("RTPVISOR_ARI_USER".to_owned(), user.clone()),
        ("RTPVISOR_ARI_PASSWORD_FILE".to_owned(), file.clone()),
        ("RTPVISOR_ARI_APP".to_owned(), APP.to_owned()),
        ("RUST_LOG".to_owned(), "trace".to_owned()),
    ];
    let mut svc = Rtpvisor::start("e2e_secrets_trace", Options { rtp_ports: "10700-10709".into(), env: env.clone() });

    // A whole call: setup (externalMedia, bridge, addChannel, answer), media, hangup, teardown.
    let prefix = format!("secrets-{}", std::process::id());
    let id = originate_in(APP, "echo", "probe", &format!("{prefix}-probe"));
    wait_until("probes come back", Duration::from_secs(20), || {
        let (code, c) = svc.get_status(&format!("/channels/{id}"));
        code == 200 && c["media"]["probe"]["returned"].as_u64().unwrap_or(0) >= 20
    });
    // `/ready` is open: while the call is up it names none of its channels, bridge or port.
    let call = svc.get(&format!("/channels/{id}"));
    let ready = svc.get_text("/ready");
    for field in ["channel_id", "channel_name", "external_media_channel", "bridge"] {
        let value = call[field].as_str().unwrap_or_else(|| panic!("{field} of {call}"));
        assert!(!ready.contains(value), "/ready shows the call's {field}: {ready}");
    }
    assert!(!ready.contains("\"port\"") && !ready.contains("calls"), "/ready shows calls: {ready}");
    let mut answers = String::new();
    for path in ["/ready", "/actors", "/metrics", "/metrics/prometheus", "/channels", "/ports", "/health"] {
        answers.push_str(&svc.get_text(path));
    }
    ari_delete(&format!("/channels/{id}")).expect("hang up the caller");
    wait_until("the call ended", Duration::from_secs(20), || svc.metrics()["active_channels"] == 0);
    wait_until("Asterisk lists none of our channels or bridges", Duration::from_secs(20), || {
        asterisk_channels().iter().all(|c| !c.starts_with(&prefix) && !c.contains(APP))
            && asterisk_bridges().iter().all(|b| !b.contains(APP))
    });
    let (code, _) = svc.terminate();
    assert_eq!(code, Some(0));

    let log = svc.log_text();
    let trace_lines = log.lines().filter(|l| l.contains("TRACE")).count();
    assert!(trace_lines > 100, "the log is at trace level: {trace_lines} TRACE lines");
    assert!(log.contains("events WebSocket connected for app rtpvisor-secrets"), "connected as the test user");
    eprintln!("log: {} lines, {trace_lines} at TRACE, {} bytes", log.lines().count(), log.len());
    assert_absent("the trace log", &log, &forms);
    assert_absent("the API answers", &answers, &forms);

    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run(&env_ref, &["--print-config"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("password_file = {file:?}")), "{out}");
    assert_absent("--print-config", &format!("{out}{err}"), &forms);

    // A wrong password: Asterisk refuses it, the service says so, and shows neither password.
    let wrong = format!("{password}-wrong");
    let svc = Unready::start(
        "e2e_secrets_refused",
        &[("RTPVISOR_ARI_USER", &user), ("RTPVISOR_ARI_PASSWORD", &wrong), ("RTPVISOR_ARI_APP", APP), ("RUST_LOG", "trace")],
    );
    let (code, body) = svc.wait_for_error();
    assert_eq!(code, 503, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("401 Unauthorized (check ari.user and ari.password)"), "{body}");
    let log_path = svc.log.clone();
    assert_eq!(svc.stop(), Some(0));
    let log = std::fs::read_to_string(log_path).unwrap();
    let mut wrong_forms = forms.clone();
    wrong_forms.extend(self::forms(&user, &wrong));
    assert_absent("the refused run's log", &log, &wrong_forms);
    assert_absent("/ready", &body.to_string(), &wrong_forms);
    let _: Value = body;
}
