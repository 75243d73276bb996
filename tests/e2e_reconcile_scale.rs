#![cfg(feature = "e2e")]
//! Reconciliation on a busy Asterisk, against the real one: channels that are not ours are read
//! and never touched, our orphans after a kill -9 are still found and ended, and calls that
//! begin while the reconciliation runs are never ended by it. Twice: beside 500 plain dialplan
//! channels, and beside thousands of channels of another Stasis application, where the size of
//! Asterisk's listing and the fetch time are reported: 2,000 in a plain run (~15 s), as many as
//! `RTPVISOR_SCALE_CHANNELS` says otherwise (20,000: ~80 s on 2 cores, most of it Asterisk
//! creating them; fewer when Asterisk's open-file limit has no room for them, said on stderr).
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::*;

const APP_SCALE: &str = "rtpvisor-scale";

fn ours_named() -> usize {
    asterisk_channels()
        .into_iter()
        .chain(asterisk_bridges())
        .filter(|id| rtpvisor_actors::naming::parse(id).is_some_and(|o| o.app == APP_SCALE))
        .count()
}

fn count_prefixed(prefix: &str) -> usize {
    asterisk_channels().iter().filter(|c| c.starts_with(prefix)).count()
}

/// With `bystanders` channels not ours in Asterisk (all named `prefix`...): an instance killed
/// with 5 calls up leaves orphans that the next instance's reconciliation at connect ends, while
/// 5 calls that arrive meanwhile stay up with media, and no bystander is touched. Returns the
/// reconciliation's report.
fn orphans_found_and_new_calls_kept_beside(bystanders: usize, prefix: &str) -> Value {
    // The new instance leases other ports than the old one: the old calls do not fit it, so
    // they are orphans to clean, not calls to adopt.
    let opts = |ports: &str| Options { rtp_ports: ports.into(), env: vec![("RTPVISOR_ARI_APP".into(), APP_SCALE.into())] };
    let mut old = Rtpvisor::start("e2e_reconcile_scale_old", opts("10550-10559"));
    for i in 0..5 {
        originate_in(APP_SCALE, "echo", "probe", &format!("scale-old-{i}"));
    }
    wait_until("5 calls active", Duration::from_secs(20), || old.metrics()["active_channels"] == 5);
    assert_eq!(old.signal("KILL").0, None);
    assert_eq!(ours_named(), 10, "5 media channels and 5 bridges of the dead instance");

    // The new instance reconciles at connect; calls arrive while it does.
    let svc = Rtpvisor::start("e2e_reconcile_scale_new", opts("10560-10569"));
    for i in 0..5 {
        originate_in(APP_SCALE, "echo", "probe", &format!("scale-new-{i}"));
    }
    wait_until("the reconciliation is reported", Duration::from_secs(30), || {
        !svc.metrics()["reconcile"]["last"].is_null()
    });
    let r = svc.metrics()["reconcile"].clone();
    eprintln!("reconciliation beside {bystanders} unrelated channels: {r}");
    let last = &r["last"];
    assert_eq!(last["orphan_media_channels"], 5, "{r}");
    assert_eq!(last["orphan_bridges"], 5, "{r}");
    assert_eq!(last["orphan_app_channels"], 5, "{r}");
    assert_eq!(last["vanished_calls"], 0, "no call that began during the reconciliation is ended: {r}");
    assert_eq!(last["errors"], 0, "{r}");
    assert!(last["listed"].as_u64() >= Some(bystanders as u64), "{r}");
    wait_until("the old calls are gone", Duration::from_secs(10), || {
        !asterisk_channels().iter().any(|c| c.starts_with("scale-old-"))
    });
    assert_eq!(count_prefixed(prefix), bystanders, "no unrelated channel was touched");

    // The 5 new calls are up and carry media.
    wait_until("5 new calls active", Duration::from_secs(20), || svc.metrics()["active_channels"] == 5);
    let returned = || svc.metrics()["modes"]["probe"]["packets_in"].as_u64().unwrap();
    let before = returned();
    std::thread::sleep(Duration::from_secs(1));
    assert!(returned() >= before + 5 * 40, "the new calls' probes come back");
    assert_eq!(ours_named(), 10, "exactly the new calls' media channels and bridges");

    hang_up_prefixed("scale-new-");
    wait_until("no live call", Duration::from_secs(10), || svc.metrics()["active_channels"] == 0);
    wait_until("nothing of ours left", Duration::from_secs(10), || ours_named() == 0);
    assert_eq!(count_prefixed(prefix), bystanders, "still untouched");
    r
}

#[test]
fn five_hundred_unrelated_channels_untouched_orphans_found_new_calls_kept() {
    ensure_asterisk();
    let t = Instant::now();
    originate_dialplan("silence", "bystander", 250);
    wait_until("500 bystander channels", Duration::from_secs(60), || count_prefixed("bystander-") == 500);
    eprintln!("500 dialplan channels up in {} ms", t.elapsed().as_millis());
    let (bytes, ms) = timed_listing();
    eprintln!("GET /channels beside them: {bytes} bytes in {ms} ms");

    orphans_found_and_new_calls_kept_beside(500, "bystander-");

    hang_up_prefixed("bystander-");
    wait_until("the bystanders are gone", Duration::from_secs(30), || count_prefixed("bystander-") == 0);
}

/// GET /channels straight from Asterisk: the answer's length and how long it took.
fn timed_listing() -> (usize, u128) {
    let t = Instant::now();
    let resp = ureq::get(&format!("{ARI}/channels"))
        .query("api_key", &format!("{ARI_USER}:{ARI_PASSWORD}"))
        .timeout(Duration::from_secs(30))
        .call()
        .expect("GET /channels");
    // Not into_string: that stops at 10 MB.
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body).expect("the listing");
    (body.len(), t.elapsed().as_millis())
}

/// How many channels the scale test asks for (`RTPVISOR_SCALE_CHANNELS`, default 2,000).
fn scale_target() -> usize {
    std::env::var("RTPVISOR_SCALE_CHANNELS").ok().map_or(2_000, |v| v.parse().expect("RTPVISOR_SCALE_CHANNELS: a count"))
}

const APP_BYSTANDER: &str = "scale-bystander";
const BY_PREFIX: &str = "scale-by-";
const TIMING_MODULES: [&str; 2] = ["res_timing_timerfd.so", "res_timing_pthread.so"];
/// Requests in flight at once while creating bystanders (Asterisk's HTTP `sessionlimit` is 100).
const WORKERS: usize = 16;

/// Channels of another Stasis application, as many as asked and Asterisk can hold: Local
/// pairs created (`POST /channels/create`) and never dialled, so that each pair costs Asterisk
/// one thread (the ;1 half waits in Stasis; the ;2 half has none), where a dialplan channel
/// takes one each. Each ;1 half carries a caller ID, as a call would. The application's events
/// WebSocket stays open while they exist (without it Asterisk hangs them up at once). Dropping
/// this hangs them all up and loads again what was unloaded for them.
struct Bystanders {
    /// The ;1 halves' ids, in creation order (a ;1 hung up takes its ;2 with it).
    pairs: Vec<String>,
    stop: Arc<AtomicBool>,
    drain: Option<JoinHandle<()>>,
    unloaded: Vec<&'static str>,
}

/// A bystander pair's ids: UUID-shaped, as ARI applications tend to choose.
fn bystander_ids(i: usize) -> (String, String) {
    let id = format!("{BY_PREFIX}{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i, i % 0xffff, i % 0xfff, (i * 7) % 0xfff, i * 2654435761);
    let other = format!("{id}-2");
    (id, other)
}

/// Open files of a process: (in use, its soft limit).
fn open_files(pid: u32) -> (usize, usize) {
    let used = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("Asterisk's fds").count();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let soft = line.split_whitespace().nth(3).expect("the soft limit");
    (used, soft.parse().unwrap_or(usize::MAX))
}

/// Sends `requests` (method, path with query, JSON body) to ARI over `workers` kept-alive
/// connections; returns how many failed and the first failures' text.
fn ari_parallel(requests: Vec<(&'static str, String, Option<Value>)>, workers: usize) -> (usize, Vec<String>) {
    let queue = Arc::new(Mutex::new(requests));
    let failed = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, failed, first) = (queue.clone(), failed.clone(), first.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                loop {
                    let Some((method, path, body)) = queue.lock().unwrap().pop() else { return };
                    let req = agent
                        .request(method, &format!("{ARI}{path}"))
                        .query("api_key", &format!("{ARI_USER}:{ARI_PASSWORD}"));
                    let res = match body {
                        Some(b) => req.send_json(b),
                        None => req.call(),
                    };
                    if let Err(e) = res {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut first = first.lock().unwrap();
                        if first.len() < 3 {
                            first.push(format!("{method} {path}: {e}"));
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let first = first.lock().unwrap().clone();
    (failed.load(Ordering::Relaxed), first)
}

impl Bystanders {
    /// Up to `target` channels (`target / 2` pairs), fewer if Asterisk's open-file limit leaves
    /// no room for them (said on stderr). Each channel holds an eventfd and, while a timing
    /// module is loaded, a timer fd: when the limit is short of two per channel, the timing
    /// modules are unloaded for the test (nothing here needs a timer; the calls' media does not
    /// either).
    fn create(target: usize) -> Bystanders {
        let pid = asterisk_pid();
        let (used, limit) = open_files(pid);
        // Our two instances' calls, their ARI connections and WebSockets, the test's own.
        let headroom = 400;
        let mut unloaded = Vec::new();
        if limit < used + 2 * target + headroom {
            for m in TIMING_MODULES {
                if asterisk_cli(&format!("module unload {m}")).contains("Unloaded") {
                    unloaded.push(m);
                }
            }
            eprintln!("Asterisk may open {limit} files: unloaded {unloaded:?} (a timer fd per channel)");
        }
        let (url, stop) = (
            format!("ws://127.0.0.1:8088/ari/events?app={APP_BYSTANDER}&api_key={ARI_USER}:{ARI_PASSWORD}"),
            Arc::new(AtomicBool::new(false)),
        );
        let (mut ws, resp) = tungstenite::connect(url).expect("the bystander application connects");
        assert_eq!(resp.status().as_u16(), 101);
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        }
        let drain = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(900);
                while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                    match ws.read() {
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
                let _ = ws.close(None);
            })
        };
        let mut me = Bystanders { pairs: Vec::new(), stop, drain: Some(drain), unloaded };

        // A first 100 pairs tell what a channel costs in open files here.
        let (used_before, _) = open_files(pid);
        me.add(100);
        let per_channel = (open_files(pid).0.saturating_sub(used_before) as f64 / 200.0).max(0.5);
        let room = ((limit.saturating_sub(open_files(pid).0 + headroom)) as f64 / per_channel) as usize;
        let pairs = (target / 2).min(100 + room / 2);
        if pairs * 2 < target {
            eprintln!(
                "SCALED DOWN: Asterisk may open {limit} files at {per_channel:.1} per channel: room for {} channels, not {target}",
                pairs * 2
            );
        }
        me.add(pairs.saturating_sub(100));
        me
    }

    /// Creates `n` more pairs ([`WORKERS`] connections at once) and waits until Asterisk lists
    /// them.
    fn add(&mut self, n: usize) {
        let t = Instant::now();
        let from = self.pairs.len();
        let requests = (from..from + n)
            .map(|i| {
                let (id, other) = bystander_ids(i);
                self.pairs.push(id.clone());
                let path = format!(
                    "/channels/create?endpoint=Local/silence@rtpvisor-test&app={APP_BYSTANDER}&formats=ulaw&channelId={}&otherChannelId={}",
                    seg(&id),
                    seg(&other)
                );
                let caller = json!({"variables": {
                    "CALLERID(name)": format!("Bystander {i}"),
                    "CALLERID(num)": format!("+4930{:08}", i),
                }});
                ("POST", path, Some(caller))
            })
            .collect();
        let (failed, first) = ari_parallel(requests, WORKERS);
        assert_eq!(failed, 0, "every bystander pair is created: {first:?}");
        let want = self.pairs.len() * 2;
        wait_until("Asterisk lists every bystander", Duration::from_secs(60), || count_prefixed(BY_PREFIX) == want);
        if n > 100 {
            eprintln!("{} bystander channels created in {} ms", n * 2, t.elapsed().as_millis());
        }
    }

    fn channels(&self) -> usize {
        self.pairs.len() * 2
    }
}

impl Drop for Bystanders {
    /// Asterisk's own `channel request hangup all` (~3 s for 10,000 channels, where one DELETE
    /// each takes ~40 s): by now the bystanders are all there is, as after `clean_asterisk`.
    /// Then one DELETE for each that is left.
    fn drop(&mut self) {
        let t = Instant::now();
        asterisk_cli("channel request hangup all");
        let mut left = 0;
        for _ in 0..60 {
            left = count_prefixed(BY_PREFIX);
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if left > 0 {
            let ids: Vec<String> = asterisk_channels().into_iter().filter(|c| c.starts_with(BY_PREFIX)).collect();
            let _ = ari_parallel(ids.iter().map(|id| ("DELETE", format!("/channels/{}", seg(id)), None)).collect(), WORKERS);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        for m in &self.unloaded {
            asterisk_cli(&format!("module load {m}"));
        }
        eprintln!("bystanders hung up in {} ms ({left} one by one)", t.elapsed().as_millis());
    }
}

#[test]
fn thousands_of_unrelated_channels_orphans_found_and_fetch_timed() {
    ensure_asterisk();
    clean_asterisk();
    let t = Instant::now();
    let bystanders = Bystanders::create(scale_target());
    let n = bystanders.channels();
    eprintln!("{n} bystander channels up in {} ms", t.elapsed().as_millis());
    let (bytes, ms) = timed_listing();
    eprintln!("GET /channels beside them: {bytes} bytes ({} per channel) in {ms} ms", bytes / n);

    let r = orphans_found_and_new_calls_kept_beside(n, BY_PREFIX);
    eprintln!(
        "reconciliation beside {n} channels: fetch {} ms (application, channels, bridges), whole run {} ms",
        r["last"]["fetch_ms"], r["last"]["took_ms"]
    );
    let t = Instant::now();
    drop(bystanders);
    assert_eq!(count_prefixed(BY_PREFIX), 0, "every bystander is gone");
    eprintln!("cleaned up in {} ms", t.elapsed().as_millis());
}
