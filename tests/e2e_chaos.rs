#![cfg(feature = "e2e")]
//! The chaos run, against the real Asterisk: calls of all three modes arrive and end all the
//! time while faults are injected one after another in a random order: the events WebSocket
//! dropped, the ARI link gone silent, ARI answering 500, ARI requests timing out, rtpvisor
//! killed (-9) and restarted, Asterisk restarted, a call actor panicking, a UDP flood at the
//! echo port and at a live call's port.
//!
//! After each fault the traffic pauses and the run waits for the service to settle; then it
//! checks: nothing of ours is left in Asterisk, no port is leased without a live call, no call
//! is stuck. At the end every placed call is accounted for from both sides, the service's logs
//! and Asterisk's own events (an observer subscribed to all of them): served (and bridged by
//! us), refused (and ended with congestion), failed in setup, refused as an orphan by a
//! reconciliation, refused by Asterisk while no rtpvisor held the app, hung up by its caller
//! while the link was down, or gone with an Asterisk restart; a call that fits none, or whose
//! two sides disagree, is a violation. And from every process's log: no port was ever leased
//! twice.
//!
//! Length: `RTPVISOR_CHAOS_SECS` (the test command runs 90 s; `scripts/chaos.sh` runs 600 s by
//! default). `RTPVISOR_CHAOS_SEED` replays a run's order of faults and calls.
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy, PathMatch, Rule};
use common::*;

const APP_CHAOS: &str = "rtpvisor-chaos";
const PORTS: &str = "10600-10615";
/// A fault has settled when the service is clean within this; longer is a failed invariant.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum FaultKind {
    WebSocketDrop,
    SilentLink,
    Ari500,
    AriTimeout,
    Kill9,
    AsteriskRestart,
    ActorPanic,
    FloodEcho,
    FloodCallPort,
}

const ALL_FAULTS: [FaultKind; 9] = [
    FaultKind::WebSocketDrop,
    FaultKind::SilentLink,
    FaultKind::Ari500,
    FaultKind::AriTimeout,
    FaultKind::Kill9,
    FaultKind::AsteriskRestart,
    FaultKind::ActorPanic,
    FaultKind::FloodEcho,
    FaultKind::FloodCallPort,
];

/// The call traffic: a thread that places a call every 200 ms while `on`, and hangs each up
/// after its hold time (1-4 s), whatever `on` says.
struct Traffic {
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// Every call placed: its id, when, and when its hang-up was due.
    placed: Arc<Mutex<Vec<(String, Instant, Instant)>>>,
    pending: Arc<Mutex<Vec<(Instant, String)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(seed: u64) -> Traffic {
        let on = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let placed = Arc::new(Mutex::new(Vec::new()));
        let pending: Arc<Mutex<Vec<(Instant, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let (on2, stop2, placed2, pending2) = (on.clone(), stop.clone(), placed.clone(), pending.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
            let mut n = 0u64;
            let mut next_call = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                let now = Instant::now();
                let due: Vec<String> = {
                    let mut p = pending2.lock().unwrap();
                    let (due, keep): (Vec<_>, Vec<_>) = p.drain(..).partition(|(t, _)| *t <= now);
                    *p = keep;
                    due.into_iter().map(|(_, id)| id).collect()
                };
                for id in due {
                    // 404: it was refused, or ended already. Any error: Asterisk restarting;
                    // the settle check finds whatever is left.
                    let _ = ari_delete(&format!("/channels/{id}"));
                }
                if on2.load(Ordering::SeqCst) && now >= next_call {
                    next_call = now + Duration::from_millis(200);
                    let (exten, mode) = match rng.below(3) {
                        0 => ("echo", "probe"),
                        1 => ("milliwatt", "echo"),
                        _ => ("milliwatt", "shared-echo"),
                    };
                    let id = format!("chaos-{n}");
                    n += 1;
                    let endpoint = format!("Local/{exten}@rtpvisor-test");
                    let placed_ok = ari_post(
                        "/channels",
                        &[
                            ("endpoint", &endpoint),
                            ("app", APP_CHAOS),
                            ("appArgs", mode),
                            ("formats", "ulaw"),
                            ("channelId", &id),
                            ("otherChannelId", &format!("{id}-far")),
                        ],
                    )
                    .is_ok();
                    if placed_ok {
                        let hold = Duration::from_millis(1000 + rng.below(3000));
                        placed2.lock().unwrap().push((id.clone(), now, now + hold));
                        pending2.lock().unwrap().push((now + hold, id));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic { on, stop, placed, pending, thread: Some(thread) }
    }

    fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// Waits until every placed call's hold time is over and its hang-up was sent.
    fn drain(&self, limit: Duration) {
        wait_until("every placed call hung up", limit, || self.pending.lock().unwrap().is_empty());
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What Asterisk itself says of each call of the run: an ARI client of its own
/// (`subscribeAll`, straight to Asterisk, not through the fault proxy) records whether the
/// caller entered a bridge of the chaos instance and with which cause it was destroyed.
/// Reconnects after an Asterisk restart (events meanwhile are lost: the calls alive then are
/// accounted for by the restart's window).
struct Observer {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    bridged: bool,
    cause: Option<i64>,
}

impl Observer {
    fn start() -> Observer {
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let url = format!("ws://127.0.0.1:8088/ari/events?app=chaos-observer&subscribeAll=true&api_key={ARI_USER}:{ARI_PASSWORD}");
        let connect = move || -> Option<tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>> {
            let (ws, _) = tungstenite::connect(&url).ok()?;
            if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
                s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
            }
            Some(ws)
        };
        let first = connect().expect("the observer connects to Asterisk");
        let thread = std::thread::spawn(move || {
            let mut ws = Some(first);
            while !stop2.load(Ordering::SeqCst) {
                let Some(sock) = ws.as_mut() else {
                    std::thread::sleep(Duration::from_millis(100));
                    ws = connect();
                    continue;
                };
                match sock.read() {
                    Ok(tungstenite::Message::Text(t)) => {
                        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                        let Some(id) = v["channel"]["id"].as_str().filter(|id| id.starts_with("chaos-") && !id.ends_with("-far")) else {
                            continue;
                        };
                        let mut map = seen2.lock().unwrap();
                        let e = map.entry(id.to_string()).or_default();
                        match v["type"].as_str() {
                            Some("ChannelEnteredBridge") => {
                                let ours = v["bridge"]["id"].as_str().and_then(rtpvisor_actors::naming::parse).is_some_and(|o| o.app == APP_CHAOS);
                                e.bridged |= ours;
                            }
                            Some("ChannelDestroyed") => e.cause = v["cause"].as_i64(),
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => ws = None,
                }
            }
        });
        Observer { seen, stop, thread: Some(thread) }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the service's logs say of a call (every process of the run).
#[derive(Debug, Default, Clone, Copy)]
struct Said {
    served: bool,
    refused: bool,
    failed: bool,
    orphan: bool,
}

impl Said {
    fn of(text: &str, id: &str) -> Said {
        Said {
            served: text.contains(&format!("Created channel {id} ")) || text.contains(&format!("Adopted channel {id} ")),
            refused: text.contains(&format!("Rejecting call {id}:")) || text.contains(&format!("Rejected call {id}:")),
            failed: text.contains(&format!("Setup of call {id} failed")) || text.contains(&format!("Taking over call {id} failed")),
            orphan: text.contains(&format!("Hanging up orphan caller {id} ")),
        }
    }
}

/// A call's fate from both sides, or why the two do not fit. `cause`: the Q.850 cause of the
/// caller's end as Asterisk reported it; `restart`: an Asterisk restart fell within the call's
/// life (its end may have gone unseen); `link_down`: it was placed while the instance could not
/// hear Asterisk (WebSocket dropped or silent, the process killed).
fn fate(said: Said, seen: Option<Seen>, restart: bool, link_down: bool) -> Result<&'static str, String> {
    const CONGESTION: i64 = 34;
    const NORMAL: i64 = 16;
    let seen = seen.unwrap_or_default();
    let ended = |causes: &[i64]| restart || seen.cause.is_some_and(|c| causes.contains(&c));
    let fits = match (said.served, said.refused, said.failed, said.orphan) {
        (true, false, false, _) => (seen.bridged || restart).then_some("served"),
        (false, true, false, false) => ended(&[CONGESTION]).then_some("refused (congestion)"),
        (false, false, true, false) => (seen.cause.is_some() || restart).then_some("failed in setup, torn down"),
        // An orphan arises only when the instance could not hear Asterisk; its caller may have
        // hung up itself (16) before the reconciliation's congestion (34) reached it.
        (false, false, false, true) => (ended(&[CONGESTION]) || (link_down && ended(&[NORMAL])))
            .then_some("orphan caller ended by a reconciliation or its caller"),
        // No process saw it: Asterisk had no rtpvisor to give it to (cause 0), or the caller hung up
        // while the instance could not hear Asterisk, or Asterisk restarted under it.
        (false, false, false, false) => match seen.cause {
            Some(0) => Some("refused by Asterisk: no rtpvisor held the app"),
            Some(NORMAL) if link_down => Some("hung up by its caller while the link was down"),
            None if restart => Some("gone with Asterisk's restart before any rtpvisor saw it"),
            _ => None,
        },
        _ => None,
    };
    fits.ok_or_else(|| format!("rtpvisor says {said:?}, Asterisk says {seen:?} (restart {restart}, link down {link_down})"))
}

fn start_service(proxy: &FaultProxy, generation: usize) -> Rtpvisor {
    Rtpvisor::start(
        &format!("e2e_chaos_{generation}"),
        Options {
            rtp_ports: PORTS.into(),
            env: vec![
                ("RTPVISOR_ARI_APP".into(), APP_CHAOS.into()),
                ("RTPVISOR_ARI_URL".into(), proxy.url()),
                ("RTPVISOR_FAULT_INJECTION".into(), "true".into()),
                ("RTPVISOR_ARI_REQUEST_TIMEOUT_MS".into(), "1000".into()),
                ("RTPVISOR_ARI_PING_INTERVAL_MS".into(), "1000".into()),
                ("RTPVISOR_ARI_PING_TIMEOUT_MS".into(), "1000".into()),
                ("RTPVISOR_MAX_RESTARTS".into(), "50".into()),
            ],
        },
    )
}

/// What of ours Asterisk still lists: the test's callers and far halves, and every channel or
/// bridge named after the chaos app.
fn ours_in_asterisk() -> Vec<String> {
    let chans = ari_get("/channels").ok().and_then(|v| v.as_array().cloned()).unwrap_or_default();
    let bridges = ari_get("/bridges").ok().and_then(|v| v.as_array().cloned()).unwrap_or_default();
    chans
        .iter()
        .chain(bridges.iter())
        .filter_map(|c| c["id"].as_str())
        .filter(|id| {
            id.starts_with("chaos-")
                || rtpvisor_actors::naming::parse(id).is_some_and(|o| o.app == APP_CHAOS)
        })
        .map(String::from)
        .collect()
}

/// Sends datagrams to `to` from a fresh socket for `for_`, at most `max` of them.
fn flood(to: std::net::SocketAddr, for_: Duration, max: u64) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_nonblocking(true).unwrap();
    let payload = [0x80u8; 172];
    let end = Instant::now() + for_;
    let mut sent = 0;
    while sent < max && Instant::now() < end {
        for _ in 0..256 {
            if s.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        // Drain what the echo sends back, so the socket's receive queue never backs up.
        let mut buf = [0u8; 2048];
        while s.recv_from(&mut buf).is_ok() {}
    }
    sent
}

fn asterisk(cmd: &str) {
    let ok = std::process::Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .arg(cmd)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "scripts/asterisk.sh {cmd} failed");
}

/// Checks, from one process's log, that no port was leased while it was leased already.
fn double_leases(log: &str) -> Vec<String> {
    let mut leased: HashMap<u16, usize> = HashMap::new();
    let mut bad = Vec::new();
    for (n, line) in log.lines().enumerate() {
        if let Some(p) = line.split("Allocated port ").nth(1).and_then(|p| p.trim().parse::<u16>().ok()) {
            if let Some(prev) = leased.insert(p, n) {
                bad.push(format!("port {p} leased at line {} and again at line {}", prev + 1, n + 1));
            }
        } else if let Some(p) = line.split("Released port ").nth(1).and_then(|p| p.trim().parse::<u16>().ok()) {
            leased.remove(&p);
        }
    }
    bad
}

#[test]
fn chaos_calls_of_every_mode_under_random_faults_settle_clean() {
    ensure_asterisk();
    let secs: u64 = std::env::var("RTPVISOR_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    let seed: u64 = std::env::var("RTPVISOR_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("chaos run: {secs} s, seed {seed} (RTPVISOR_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let proxy = FaultProxy::start("127.0.0.1:8088");
    let mut generation = 0;
    let mut svc = start_service(&proxy, generation);
    let mut logs = vec![svc.log.clone()];
    let observer = Observer::start();
    let traffic = Traffic::start(seed);
    // Each fault's window: from its injection until the service settled.
    let mut windows: Vec<(FaultKind, Instant, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);

    // Each fault once in a random order, then again in another, until the time is up.
    let mut order: Vec<FaultKind> = Vec::new();
    let mut settle: BTreeMap<FaultKind, (u32, Duration)> = BTreeMap::new();
    let mut violations: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        if order.is_empty() {
            order = ALL_FAULTS.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let fault = order.pop().unwrap();
        traffic.set(true);
        std::thread::sleep(Duration::from_secs(3));
        let live_before = svc.metrics()["active_channels"].as_u64().unwrap_or(0);
        let fault_at = Instant::now();
        eprintln!("[{:>5.1} s] fault {fault:?} with {live_before} live call(s)", secs as f64 - deadline.saturating_duration_since(Instant::now()).as_secs_f64());
        match fault {
            FaultKind::WebSocketDrop => {
                assert!(proxy.drop_websockets() >= 1, "a WebSocket was open");
                std::thread::sleep(Duration::from_secs(2));
            }
            FaultKind::SilentLink => {
                proxy.freeze_websockets(true);
                wait_until("the silent link is noticed", Duration::from_secs(15), || svc.get_status("/ready").0 == 503);
                std::thread::sleep(Duration::from_secs(1));
                proxy.freeze_websockets(false);
            }
            FaultKind::Ari500 => {
                proxy.add_rule(Rule::new("POST", PathMatch::exact("/ari/channels/externalMedia"), Fault::status_500()).times(3));
                proxy.add_rule(Rule::new("POST", PathMatch::exact("/ari/bridges"), Fault::status_500()).times(2));
                std::thread::sleep(Duration::from_secs(3));
                proxy.clear_rules();
            }
            FaultKind::AriTimeout => {
                proxy.add_rule(
                    Rule::new("POST", PathMatch::glob("/ari/bridges/*/addChannel"), Fault::Delay(Duration::from_millis(1500))).times(3),
                );
                std::thread::sleep(Duration::from_secs(3));
                proxy.clear_rules();
            }
            FaultKind::Kill9 => {
                assert_eq!(svc.signal("KILL").0, None);
                std::thread::sleep(Duration::from_secs(1));
                generation += 1;
                svc = start_service(&proxy, generation);
                logs.push(svc.log.clone());
            }
            FaultKind::AsteriskRestart => {
                asterisk("restart");
            }
            FaultKind::ActorPanic => {
                let chans = svc.get("/channels");
                let victim = chans.as_array().and_then(|a| a.iter().find(|c| c["state"] == "active")).cloned();
                if let Some(c) = victim {
                    let (code, _) = svc.post(&format!("/faults/channels/{}/panic", c["call_no"]));
                    assert_eq!(code, 202, "panic injected");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            FaultKind::FloodEcho => {
                let to = format!("127.0.0.1:{}", svc.echo_port).parse().unwrap();
                let sent = flood(to, Duration::from_secs(2), 2_000_000);
                eprintln!("          flooded the echo port with {sent} datagrams");
            }
            FaultKind::FloodCallPort => {
                let chans = svc.get("/channels");
                let port = chans.as_array().and_then(|a| a.iter().find_map(|c| c["port"].as_u64()));
                if let Some(p) = port {
                    let sent = flood(format!("127.0.0.1:{p}").parse().unwrap(), Duration::from_secs(2), 2_000_000);
                    eprintln!("          flooded call port {p} with {sent} datagrams");
                }
            }
        }
        // The fault is over: stop placing calls, let the placed ones end, and time how long
        // the service takes to be clean.
        traffic.set(false);
        traffic.drain(Duration::from_secs(10));
        // Settling is timed from the last hang-up: what the service needs to be clean again.
        let t0 = Instant::now();
        let clean = |svc: &Rtpvisor| {
            svc.get_status("/ready").0 == 200
                && svc.get_status("/metrics").1["active_channels"] == 0
                && svc.get_status("/ports").1["leased"] == 0
                && ours_in_asterisk().is_empty()
        };
        let mut settled = false;
        while t0.elapsed() < SETTLE_LIMIT {
            if clean(&svc) {
                settled = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = t0.elapsed();
        if !settled {
            violations.push(format!(
                "{fault:?}: not clean {} s after the last hang-up: ready {}, metrics active {}, ports leased {}, Asterisk {:?}",
                SETTLE_LIMIT.as_secs(),
                svc.get_status("/ready").0,
                svc.get_status("/metrics").1["active_channels"],
                svc.get_status("/ports").1["leased"],
                ours_in_asterisk()
            ));
            // Clean by hand so the next fault starts from a known state.
            hang_up_prefixed("chaos-");
        }
        windows.push((fault, fault_at, Instant::now()));
        let e = settle.entry(fault).or_insert((0, Duration::ZERO));
        e.0 += 1;
        e.1 = e.1.max(took);
        eprintln!("          settled in {} ms", took.as_millis());
    }
    let all_placed = traffic.placed.lock().unwrap().clone();
    drop(traffic);
    // Asterisk's last events (a hang-up sent at the end) reach the observer.
    std::thread::sleep(Duration::from_millis(500));
    let seen = observer.seen.lock().unwrap().clone();
    drop(observer);

    // Every placed call, from both sides: what the service's logs say of it and what Asterisk
    // reported (bridged by us, the cause it ended with). Each call must fit exactly one fate in
    // which the two agree; there is no bucket for the rest.
    let text: String = logs.iter().map(|l| std::fs::read_to_string(l).unwrap_or_default()).collect();
    let mut outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, placed_at, hangup_at) in &all_placed {
        // A call placed up to 2 s before a fault may still have been on its way (its
        // StasisStart in flight, its setup under way) when the fault hit.
        let within = |kinds: &[FaultKind], t: Instant| {
            windows.iter().any(|(k, a, b)| kinds.contains(k) && t + Duration::from_secs(2) >= *a && t <= *b)
        };
        // The call's life overlapped an Asterisk restart (placed before it or while the old
        // Asterisk was still going down): its end may have gone unseen.
        let restart = windows.iter().any(|(k, a, b)| {
            *k == FaultKind::AsteriskRestart && *placed_at <= *b && *a <= *hangup_at + Duration::from_secs(1)
        });
        let link_down = within(&[FaultKind::WebSocketDrop, FaultKind::SilentLink, FaultKind::Kill9, FaultKind::AsteriskRestart], *placed_at);
        match fate(Said::of(&text, id), seen.get(id).copied(), restart, link_down) {
            Ok(f) => *outcome.entry(f).or_default() += 1,
            Err(why) => violations.push(format!("call {id}: {why}")),
        }
    }
    for (i, log) in logs.iter().enumerate() {
        for bad in double_leases(&std::fs::read_to_string(log).unwrap_or_default()) {
            violations.push(format!("process {i}: {bad}"));
        }
    }
    if !ours_in_asterisk().is_empty() {
        violations.push(format!("left in Asterisk at the end: {:?}", ours_in_asterisk()));
    }

    eprintln!("\nchaos run summary ({secs} s, seed {seed}, {} service process(es)):", logs.len());
    eprintln!("  calls: {outcome:?}");
    eprintln!("  settling: from the last hang-up after the fault until ready, no live call, no leased port, nothing of ours in Asterisk");
    eprintln!("  {:<18} {:>6} {:>16}", "fault", "times", "worst settle ms");
    for (f, (n, worst)) in &settle {
        eprintln!("  {:<18} {:>6} {:>16}", format!("{f:?}"), n, worst.as_millis());
    }
    eprintln!("  ports leased twice: {}", violations.iter().filter(|v| v.contains("leased at line")).count());
    eprintln!("  invariant violations: {}", violations.len());
    for v in &violations {
        eprintln!("    {v}");
    }
    assert!(violations.is_empty(), "chaos invariants broken: {violations:#?}");
    assert!(outcome.get("served").copied().unwrap_or(0) > 0, "calls were served");
    assert_eq!(outcome.values().sum::<usize>(), all_placed.len(), "every placed call has one fate");
}
