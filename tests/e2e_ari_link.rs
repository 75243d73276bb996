#![cfg(feature = "e2e")]
//! The ARI events link against the real Asterisk: known to be alive, and taken back.
//!
//! - A silent link (the fault proxy freezes the WebSocket: TCP stays open, nothing passes, as
//!   after a NAT/firewall state loss) is declared dead by the ping timeout: `/ready` 503 with
//!   the silent-link reason; once WebSockets pass again the service reconnects, reconciles, and
//!   a call that was live all along still carries media.
//! - Another client registering our Stasis app on a second WebSocket (Asterisk sends us
//!   ApplicationReplaced): not ready at once, an error logged, and the app taken back by
//!   reconnecting.
//!
//! Other suites use the same Asterisk at the same time: each test has a Stasis app of its own,
//! touches only its own channels, and never cleans or restarts Asterisk. The stale-connection
//! rule (an old connection's late end or event never acts on the new one) is unit-tested in
//! `actors/src/ari/link.rs`.
mod common;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fault_proxy::{FaultProxy, Outcome};
use common::*;
use serde_json::Value;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Our own slice of RTP ports (other suites run beside us).
const RTP_PORTS: &str = "10400-10409";
/// Within ping_interval + ping_timeout (10 s by default), plus slack for a loaded machine.
const SILENT_DETECT_LIMIT: Duration = Duration::from_secs(15);

fn unique_app(tag: &str) -> String {
    format!("rtpvisor-link-{tag}-{}", std::process::id())
}

fn config_file(name: &str, toml: &str) -> PathBuf {
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).unwrap();
    path
}

/// rtpvisor for `app`, its ARI at `ari_url`, settings from `toml`; returns once it is ready
/// and its first reconciliation is reported (so a later one is told apart).
fn start(name: &str, app: &str, ari_url: &str, toml: &str) -> Rtpvisor {
    let config = config_file(name, toml);
    let svc = Rtpvisor::start(
        name,
        Options {
            rtp_ports: RTP_PORTS.into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), app.into()),
                ("RTPVISOR_ARI_URL".into(), ari_url.into()),
                ("RTPVISOR_CONFIG".into(), config.display().to_string()),
            ],
        },
    );
    wait_until("the first reconciliation is reported", Duration::from_secs(10), || reconcile_runs(&svc) >= 1);
    svc
}

/// Originates `Local/echo@rtpvisor-test` into `app` as a probe call with channel id `id`.
fn originate_into(app: &str, id: &str) {
    ari_post(
        "/channels",
        &[
            ("endpoint", "Local/echo@rtpvisor-test"),
            ("app", app),
            ("appArgs", "probe"),
            ("formats", "ulaw"),
            ("channelId", id),
            ("otherChannelId", &format!("{id}-far")),
        ],
    )
    .unwrap_or_else(|e| panic!("originate {id} into {app}: {e}"));
}

fn probes_back(svc: &Rtpvisor) -> u64 {
    u64_of(&svc.metrics()["modes"]["probe"]["latency"], "count")
}

fn reconcile_runs(svc: &Rtpvisor) -> u64 {
    u64_of(&svc.metrics()["reconcile"], "runs")
}

fn ready(svc: &Rtpvisor) -> (u16, Value) {
    svc.get_status("/ready")
}

fn ari_reason(r: &Value) -> String {
    r["ari"]["reason"].as_str().unwrap_or_default().to_string()
}

/// Asterisk's channels and bridges whose id names `id` (ours only).
fn asterisk_leftovers(id: &str) -> Vec<String> {
    asterisk_channels().into_iter().chain(asterisk_bridges()).filter(|r| r.contains(id)).collect()
}

fn hang_up_and_check(svc: &Rtpvisor, id: &str) {
    ari_delete(&format!("/channels/{id}")).expect("hang up our call");
    wait_until("the service ended the call", Duration::from_secs(20), || {
        svc.metrics()["active_channels"].as_u64() == Some(0)
    });
    assert_eq!(u64_of(&svc.get("/ports"), "leased"), 0);
    wait_until("Asterisk lists nothing of our call", Duration::from_secs(20), || asterisk_leftovers(id).is_empty());
}

#[test]
fn a_silent_link_is_declared_dead_and_recovers_with_the_live_call() {
    ensure_asterisk();
    let app = unique_app("silent");
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let svc = start("e2e_ari_link_silent", &app, &proxy.url(), "");
    assert_eq!(proxy.open_websockets(), 1, "the events WebSocket goes through the proxy");

    let call = format!("{app}-call");
    originate_into(&app, &call);
    wait_until("the call is active", Duration::from_secs(20), || {
        let c = svc.get("/channels");
        c.as_array().is_some_and(|a| a.len() == 1 && a[0]["state"] == "active")
    });
    let p0 = probes_back(&svc);
    wait_until("probes come back", Duration::from_secs(10), || probes_back(&svc) >= p0 + 25);
    let runs_before = reconcile_runs(&svc);

    // The link goes silent: nothing passes, nothing closes.
    let t_freeze = Instant::now();
    assert_eq!(proxy.freeze_websockets(true), 1);
    let mut seen = Value::Null;
    wait_until("/ready is 503 with the silent-link reason", SILENT_DETECT_LIMIT, || {
        let (code, r) = ready(&svc);
        let hit = code == 503 && ari_reason(&r).starts_with("ARI link silent: no answer to ping within 5000 ms");
        if hit {
            seen = r;
        }
        hit
    });
    let detect = t_freeze.elapsed();
    assert_eq!(seen["ari"]["connected"], false, "{seen}");
    assert_eq!(seen["ready"], false, "{seen}");
    let log = svc.log_text();
    assert!(log.contains("ARI link silent"), "the loss is logged");

    // While frozen, reconnect attempts are held unanswered: still not ready.
    wait_until("a reconnect attempt was made (and held)", Duration::from_secs(10), || {
        proxy.requests().iter().any(|r| r.outcome == Outcome::WebSocketHeld)
    });
    let (code, r) = ready(&svc);
    assert_eq!(code, 503, "{r}");
    // Media does not need the link: the call kept probing.
    let p1 = probes_back(&svc);
    wait_until("probes still come back while the link is down", Duration::from_secs(5), || {
        probes_back(&svc) >= p1 + 25
    });

    let t_thaw = Instant::now();
    proxy.freeze_websockets(false);
    wait_until("/ready is 200 again", Duration::from_secs(20), || ready(&svc).0 == 200);
    let recover = t_thaw.elapsed();
    let r = ready(&svc).1;
    assert!(r["ari"]["reason"].is_null(), "{r}");
    assert!(u64_of(&r["ari"], "connects") >= 2, "{r}");
    wait_until("the service reconciled after the reconnect", Duration::from_secs(10), || {
        reconcile_runs(&svc) > runs_before
    });
    let runs_after = reconcile_runs(&svc);

    // The call survived it all and still carries media.
    let calls = svc.get("/channels");
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls}");
    assert_eq!(calls[0]["channel_id"], call.as_str());
    let p2 = probes_back(&svc);
    wait_until("probes still come back after the reconnect", Duration::from_secs(5), || {
        probes_back(&svc) >= p2 + 50
    });
    eprintln!(
        "silent link: declared dead (/ready 503, reason {:?}) {} ms after the freeze; ready again {} ms \
         after the thaw; reconcile runs {runs_before} -> {runs_after}; probes back {p0} -> {}",
        ari_reason(&seen),
        detect.as_millis(),
        recover.as_millis(),
        probes_back(&svc)
    );
    assert!(detect <= SILENT_DETECT_LIMIT);

    hang_up_and_check(&svc, &call);
}

/// A second client's events WebSocket for `app`, straight to Asterisk.
fn second_client(app: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let url = format!("ws://127.0.0.1:8088/ari/events?app={app}&api_key={ARI_USER}:{ARI_PASSWORD}");
    let (ws, resp) = tungstenite::connect(url).expect("second client connects");
    assert_eq!(resp.status().as_u16(), 101);
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    }
    ws
}

/// Reads the second client's events until an ApplicationReplaced for `app`; false after `limit`.
fn wait_replaced(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, app: &str, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                if v["type"] == "ApplicationReplaced" && v["application"] == app {
                    return true;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("second client: {e}"),
        }
    }
    false
}

#[test]
fn another_client_taking_the_app_makes_it_unready_until_it_is_taken_back() {
    ensure_asterisk();
    let app = unique_app("takeover");
    // A first reconnect wait of 0.5-1 s (jittered) so the short unready window is seen for sure.
    let svc = start("e2e_ari_link_takeover", &app, ARI, "[ari]\nreconnect_min_ms = 1000\n");
    let runs_before = reconcile_runs(&svc);

    let t0 = Instant::now();
    let mut other = second_client(&app);
    let mut seen = Value::Null;
    wait_until("/ready is 503 with the replaced reason", Duration::from_secs(2), || {
        let (code, r) = ready(&svc);
        let hit = code == 503 && ari_reason(&r).starts_with(&format!("another client took the Stasis app {app}"));
        if hit {
            seen = r;
        }
        hit
    });
    let unready = t0.elapsed();
    assert_eq!(seen["ari"]["connected"], false, "{seen}");

    // The service reconnects, which takes the app back: Asterisk tells the other client.
    assert!(wait_replaced(&mut other, &app, Duration::from_secs(10)), "the other client lost the app again");
    let taken_back = t0.elapsed();
    wait_until("/ready is 200 again", Duration::from_secs(5), || ready(&svc).0 == 200);
    let ready_again = t0.elapsed();
    let r = ready(&svc).1;
    assert_eq!(u64_of(&r["ari"], "connects"), 2, "{r}");
    assert!(r["ari"]["reason"].is_null(), "{r}");
    let log = svc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("another client took the Stasis app"))
        .unwrap_or_else(|| panic!("the takeover is logged: {log}"));
    assert!(line.contains("ERROR"), "logged as an error: {line}");
    wait_until("the service reconciled after taking the app back", Duration::from_secs(10), || {
        reconcile_runs(&svc) > runs_before
    });
    eprintln!(
        "takeover: /ready 503 {} ms after the second client connected (reason {:?}); app taken back at {} ms, \
         ready again at {} ms",
        unready.as_millis(),
        ari_reason(&seen),
        taken_back.as_millis(),
        ready_again.as_millis()
    );

    // And it holds it: a call into the app works.
    let _ = other.close(None);
    let call = format!("{app}-call");
    originate_into(&app, &call);
    let p0 = probes_back(&svc);
    wait_until("a call after the takeback carries media", Duration::from_secs(20), || probes_back(&svc) >= p0 + 25);
    hang_up_and_check(&svc, &call);
}
