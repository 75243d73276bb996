#![cfg(feature = "e2e")]
//! ARI faults against the real Asterisk, injected by a fault proxy between rtpvisor and ARI
//! (`common::fault_proxy`). The test itself talks to Asterisk directly.
//!
//! - Every REST step of call setup (externalMedia, create bridge, addChannel) failing each way
//!   (an error status, an answer that comes after the request timeout, a request that reaches
//!   Asterisk only after the timeout, a connection closed without answer): the call is torn
//!   down and counted failed, its port released, Asterisk left with nothing of it, and the next
//!   call works.
//! - The events WebSocket dropping while calls are live: `/ready` goes false, the service
//!   reconnects with backoff once it can, and reconciles the calls whose callers vanished while
//!   it was disconnected.
mod common;

use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy, Outcome, PathMatch, Request, Rule};
use common::*;
use serde_json::Value;

/// The service's bound on each ARI request in these tests (`ari.request_timeout_ms`).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// A delay well past that timeout.
const LATE: Duration = Duration::from_millis(2500);
/// How long Asterisk gets to drop what a failed call had, after the service is done with it.
const SETTLE: Duration = Duration::from_secs(10);

/// One REST request of call setup, as the proxy sees it.
struct Step {
    tag: &'static str,
    name: &'static str,
    method: &'static str,
    path: PathMatch,
}

fn setup_steps() -> Vec<Step> {
    vec![
        Step {
            tag: "em",
            name: "externalMedia",
            method: "POST",
            path: PathMatch::exact("/ari/channels/externalMedia"),
        },
        Step { tag: "br", name: "create bridge", method: "POST", path: PathMatch::exact("/ari/bridges") },
        Step { tag: "add", name: "addChannel", method: "POST", path: PathMatch::glob("/ari/bridges/*/addChannel") },
    ]
}

/// rtpvisor with its ARI behind `proxy` and a short ARI request timeout (only settable in the
/// TOML file).
fn start_behind(proxy: &FaultProxy, name: &str) -> Rtpvisor {
    let dir = repo().join("target/test-logs");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, format!("[ari]\nrequest_timeout_ms = {}\n", REQUEST_TIMEOUT.as_millis())).unwrap();
    Rtpvisor::start(
        name,
        Options {
            env: vec![
                ("RTPVISOR_ARI_URL".into(), proxy.url()),
                ("RTPVISOR_CONFIG".into(), config.display().to_string()),
            ],
            ..Options::default()
        },
    )
}

fn active_calls(svc: &Rtpvisor) -> Vec<Value> {
    svc.get("/channels").as_array().cloned().unwrap_or_default()
}

fn wait_active(svc: &Rtpvisor, n: usize, limit: Duration) {
    wait_until(&format!("{n} call(s) active"), limit, || {
        let c = active_calls(svc);
        c.len() == n && c.iter().all(|c| c["state"] == "active")
    });
}

/// Waits up to [`SETTLE`] for Asterisk to list none of `ids`; returns those it still lists.
fn leftovers_of(what: &str, ids: &[&str]) -> Vec<String> {
    let listed = || -> Vec<String> {
        asterisk_channels().into_iter().chain(asterisk_bridges()).filter(|r| ids.contains(&r.as_str())).collect()
    };
    let start = Instant::now();
    loop {
        let left = listed();
        if left.is_empty() || start.elapsed() > SETTLE {
            if !left.is_empty() {
                eprintln!(
                    "{what}: still listed {} ms after the service was done: {left:?}",
                    start.elapsed().as_millis()
                );
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_requests(what: &str, reqs: &[Request]) {
    eprintln!("  {what}:");
    for r in reqs {
        eprintln!("    {r}");
    }
}

/// A probe call through `Echo()` without faults: it becomes active, probes come back (the
/// probe latency count grows), and hanging it up leaves nothing behind.
fn a_clean_call_works(svc: &Rtpvisor, id: &str) {
    let before = u64_of(&svc.metrics()["modes"]["probe"]["latency"], "count");
    originate("echo", "probe", id);
    wait_active(svc, 1, Duration::from_secs(15));
    wait_until("probes come back on the clean call", Duration::from_secs(10), || {
        u64_of(&svc.metrics()["modes"]["probe"]["latency"], "count") >= before + 25
    });
    ari_delete(&format!("/channels/{id}")).expect("hang up the clean call");
    assert_all_released(svc, &format!("{id}: clean call hung up"));
}

/// For each setup step: fault it once with `fault`, place a probe call, and check the call
/// failed and left nothing; then a clean call works.
fn each_setup_step_failing(kind: &str, fault: Fault) {
    ensure_asterisk();
    clean_asterisk();
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let svc = start_behind(&proxy, &format!("e2e_faults_ari_{kind}"));
    eprintln!("fault kind {kind}: {fault}");
    let mut leaks = Vec::new();
    for (i, step) in setup_steps().into_iter().enumerate() {
        let id = format!("fa-{kind}-{}", step.tag);
        let failed_before = u64_of(&svc.metrics(), "failed_calls");
        let rule = proxy.add_rule(Rule::new(step.method, step.path.clone(), fault.clone()).times(1));
        let t0 = Instant::now();
        originate("echo", "probe", &id);
        wait_until(&format!("{id}: the call failed and ended"), Duration::from_secs(15), || {
            let m = svc.metrics();
            u64_of(&m, "failed_calls") == failed_before + 1 && u64_of(&m, "active_channels") == 0
        });
        let ended_after = t0.elapsed();
        assert_eq!(proxy.hits(rule), 1, "{id}: the {} request was faulted once", step.name);
        let p = svc.get("/ports");
        assert_eq!(u64_of(&p, "leased"), 0, "{id}: port released: {p}");
        assert!(active_calls(&svc).is_empty(), "{id}: the call is gone from /channels");
        // A request held by the proxy reaches Asterisk late: wait for it before judging what
        // Asterisk has left.
        assert!(proxy.wait_idle(LATE * 3), "{id}: the proxy finished every request");

        let em = rtpvisor_actors::naming::external_media_id(APP, &id);
        let br = rtpvisor_actors::naming::bridge_id(APP, &id);
        let reqs = proxy.requests_mentioning(&id);
        eprintln!("{id}: {} faulted ({fault}): call ended {} ms after originate", step.name, ended_after.as_millis());
        print_requests("ARI requests of the call", &reqs);

        // The faulted request is the setup step we meant, and setup went no further.
        let faulted: Vec<&Request> = reqs.iter().filter(|r| r.fault.is_some()).collect();
        assert_eq!(faulted.len(), 1, "{id}: one faulted request");
        assert!(step.path.matches(&faulted[0].path), "{id}: faulted {}", faulted[0]);
        if let Fault::Delay(_) | Fault::DelayResponse(_) = fault {
            // The service gave up on its own request timeout, before the answer came.
            assert!(matches!(faulted[0].outcome, Outcome::ClientGone(_)), "{id}: {}", faulted[0]);
            assert!(ended_after >= REQUEST_TIMEOUT, "{id}: ended after {ended_after:?}, before the request timeout");
        }
        let posts_after = reqs
            .iter()
            .filter(|r| r.method == "POST" && r.seq > faulted[0].seq && !r.path.ends_with("/answer"))
            .count();
        assert_eq!(posts_after, 0, "{id}: setup stopped at the faulted step");
        // Teardown deletes what was marked before its request: the externalMedia channel from
        // the first step on, the bridge from the second on, and the caller.
        let deleted = |path: &str| reqs.iter().any(|r| r.method == "DELETE" && r.path == path);
        assert!(deleted(&format!("/ari/channels/{em}")), "{id}: teardown hangs up the externalMedia channel");
        assert_eq!(deleted(&format!("/ari/bridges/{br}")), i >= 1, "{id}: teardown destroys the bridge iff requested");
        assert!(deleted(&format!("/ari/channels/{id}")), "{id}: teardown hangs up the caller");
        if let Fault::DelayResponse(_) = fault {
            // Asterisk executed the request whose answer never reached the service in time:
            // the resource existed, and teardown's delete found it.
            let gone_by_teardown = |path: &str| {
                reqs.iter().any(|r| r.method == "DELETE" && r.path == path && r.upstream.is_some_and(|s| s < 300))
            };
            if i == 0 {
                assert!(
                    gone_by_teardown(&format!("/ari/channels/{em}")),
                    "{id}: the externalMedia channel created after the timeout was deleted by teardown"
                );
            }
            if i == 1 {
                assert!(
                    gone_by_teardown(&format!("/ari/bridges/{br}")),
                    "{id}: the bridge created after the timeout was destroyed by teardown"
                );
            }
        }
        assert!(
            svc.log_text().contains(&format!("Setup of call {id} failed")),
            "{id}: the service logged the failed setup"
        );
        // What Asterisk still holds of the call once the service is done with it. Collected
        // for every step (then cleaned, so the next step starts from nothing) and judged at
        // the end, so one run shows every step that leaks.
        let left = leftovers_of(&id, &[em.as_str(), br.as_str(), id.as_str(), &format!("{id}-far")]);
        if !left.is_empty() {
            eprintln!("{id}: LEFT IN ASTERISK after the call ended: {left:?}");
            leaks.push(format!("{} ({fault}): {left:?}", step.name));
            clean_asterisk();
        }
    }
    assert!(
        leaks.is_empty(),
        "SERVICE BUG: a setup request faulted with `{fault}` leaves resources in Asterisk that the \
         service never removes: {leaks:?}"
    );
    proxy.clear_rules();
    a_clean_call_works(&svc, &format!("fa-{kind}-ok"));
    let m = svc.metrics();
    assert_eq!(u64_of(&m, "total_channels"), 4, "{m}");
    assert_eq!(u64_of(&m, "failed_calls"), 3, "{m}");
    assert_eq!(u64_of(&m["modes"]["probe"], "calls_failed"), 3, "{m}");
}

#[test]
fn path_rules_match_exactly_by_prefix_or_glob() {
    assert!(PathMatch::exact("/ari/bridges").matches("/ari/bridges"));
    assert!(!PathMatch::exact("/ari/bridges").matches("/ari/bridges/x/addChannel"));
    assert!(PathMatch::prefix("/ari/bridges").matches("/ari/bridges/x/addChannel"));
    let g = PathMatch::glob("/ari/bridges/*/addChannel");
    assert!(g.matches("/ari/bridges/rtpvisor-br-1/addChannel"));
    assert!(!g.matches("/ari/bridges/rtpvisor-br-1/removeChannel"));
    assert!(!g.matches("/ari/bridges"));
    assert!(PathMatch::glob("/a/*/b/*/c").matches("/a/x/b/y/c"));
    assert!(!PathMatch::glob("/a/*/b/*/c").matches("/a/x/c"));
}

#[test]
fn setup_step_answering_500_fails_the_call_cleanly() {
    each_setup_step_failing("500", Fault::status_500());
}

#[test]
fn setup_step_answer_after_the_timeout_fails_the_call_cleanly() {
    each_setup_step_failing("slowanswer", Fault::DelayResponse(LATE));
}

#[test]
fn setup_step_reaching_asterisk_after_the_timeout_fails_the_call_cleanly() {
    each_setup_step_failing("latereq", Fault::Delay(LATE));
}

#[test]
fn setup_step_connection_reset_fails_the_call_cleanly() {
    each_setup_step_failing("reset", Fault::Reset);
}

fn ready(svc: &Rtpvisor) -> (u16, Value) {
    svc.get_status("/ready")
}

fn ari_node(svc: &Rtpvisor) -> Value {
    let tree = svc.get("/actors");
    tree["children"]
        .as_array()
        .and_then(|c| c.iter().find(|n| n["name"] == "ari-connection").cloned())
        .unwrap_or_else(|| panic!("no ari-connection in /actors: {tree}"))
}

#[test]
fn websocket_drop_with_live_calls_reconnects_and_reconciles() {
    ensure_asterisk();
    clean_asterisk();
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let svc = start_behind(&proxy, "e2e_faults_ari_ws_drop");
    assert_eq!(proxy.open_websockets(), 1, "the service's events WebSocket goes through the proxy");

    let ids: Vec<String> = (0..5).map(|i| format!("ws-drop-{i}")).collect();
    for id in &ids {
        originate("echo", "probe", id);
    }
    wait_active(&svc, 5, Duration::from_secs(20));
    let ports_of = |ids: &[String]| -> Vec<u64> {
        let calls = active_calls(&svc);
        ids.iter()
            .filter_map(|id| calls.iter().find(|c| c["channel_id"] == id.as_str()).and_then(|c| c["port"].as_u64()))
            .collect()
    };
    let vanishing = &ids[..2];
    let vanishing_ports = ports_of(vanishing);
    assert_eq!(vanishing_ports.len(), 2);

    // Cut the events WebSocket and keep it from coming back.
    proxy.refuse_websockets(true);
    let t_drop = Instant::now();
    assert_eq!(proxy.drop_websockets(), 1);
    wait_until("/ready is 503 with ari.connected false", Duration::from_secs(2), || {
        let (code, r) = ready(&svc);
        code == 503 && r["ari"]["connected"] == false
    });
    let detect = t_drop.elapsed();

    // While the service is deaf, two callers vanish: their StasisEnd never reaches it.
    for id in vanishing {
        ari_delete(&format!("/channels/{id}")).expect("hang up a caller directly in Asterisk");
    }
    wait_until("the vanished callers are gone from Asterisk", Duration::from_secs(5), || {
        let ch = asterisk_channels();
        vanishing.iter().all(|id| !ch.contains(id))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (code, r) = ready(&svc);
    assert_eq!(code, 503, "still disconnected while WebSockets are refused: {r}");
    let refused = proxy.requests().iter().filter(|r| r.outcome == Outcome::WebSocketRefused).count();
    assert!(refused >= 1, "the service kept trying to reconnect");

    // Let it back in.
    proxy.refuse_websockets(false);
    let t_allow = Instant::now();
    wait_until("/ready is 200 again", Duration::from_secs(10), || ready(&svc).0 == 200);
    let reconnect = t_allow.elapsed();
    let node = ari_node(&svc);
    assert!(u64_of(&node, "restarts") >= 1, "ari-connection restarted: {node}");
    assert_eq!(node["state"], "connected", "{node}");
    assert_eq!(ready(&svc).1["ari"]["connects"].as_u64(), Some(2));

    // Reconciliation after the reconnect ends the two calls whose callers vanished: the
    // supervisor reconciles with Asterisk at every (re)connect.
    let t_rec = Instant::now();
    let reconciled = (|| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if u64_of(&svc.metrics(), "active_channels") == 3 && active_calls(&svc).len() == 3 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    let reconcile = t_rec.elapsed();
    eprintln!(
        "WebSocket drop: detected (/ready 503) in {} ms; reconnected {} ms after WebSockets were allowed \
         again ({} refused attempts); reconciled {}",
        detect.as_millis(),
        reconnect.as_millis(),
        refused,
        if reconciled { format!("{} ms after reconnect", reconcile.as_millis()) } else { "NOT within 10 s".into() }
    );
    assert!(
        reconciled,
        "no reconciliation after the reconnect: the 2 calls whose callers vanished while \
         disconnected are still live: {}",
        svc.get("/channels")
    );
    // The service's own account of it (published after its grace for unknown callers).
    wait_until("the reconciliation after the reconnect is reported", Duration::from_secs(5), || {
        u64_of(&svc.metrics()["reconcile"], "runs") >= 2
    });
    let rec = svc.metrics()["reconcile"].clone();
    eprintln!("reconciliation as the service reports it: {rec}");
    assert_eq!(u64_of(&rec, "vanished_calls"), 2, "{rec}");
    // ... and it must not have ended the three survivors (e.g. by taking the far `;2` halves of
    // their Local channels, listed in the app but running dialplan, for orphan callers).
    let survivors = active_calls(&svc);
    assert_eq!(
        survivors.len(),
        3,
        "SERVICE BUG: reconciliation after the reconnect ended surviving calls too: reconcile {rec}; \
         live calls {survivors:?}"
    );
    let p = svc.get("/ports");
    assert_eq!(u64_of(&p, "leased"), 3, "{p}");
    let leased: Vec<u64> =
        p["leased_ports"].as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
    for port in &vanishing_ports {
        assert!(!leased.contains(port), "port {port} of a vanished call released: {p}");
    }
    wait_until("Asterisk lists nothing of the vanished calls", Duration::from_secs(10), || {
        let ch = asterisk_channels();
        let br = asterisk_bridges();
        vanishing
            .iter()
            .all(|id| !ch.contains(&rtpvisor_actors::naming::external_media_id(APP, id)) && !br.contains(&rtpvisor_actors::naming::bridge_id(APP, id)))
    });
    // The three survivors still carry media.
    let before = u64_of(&svc.metrics()["modes"]["probe"]["latency"], "count");
    wait_until("probes still come back on the surviving calls", Duration::from_secs(5), || {
        u64_of(&svc.metrics()["modes"]["probe"]["latency"], "count") >= before + 50
    });

    for id in &ids[2..] {
        ari_delete(&format!("/channels/{id}")).expect("hang up a surviving call");
    }
    assert_all_released(&svc, "after the WebSocket drop");
}
