#![cfg(feature = "e2e")]
//! End to end in a real browser: the real service and the real Asterisk carry a few live probe
//! calls; Debian's chromium (headless) opens the dashboard with the API token in `?token=`,
//! runs its JavaScript (which fetches the data routes with `Authorization: Bearer`), and the
//! dumped DOM must show the numbers `/metrics` gives. A screenshot is kept as
//! `target/test-artifacts/dashboard.png`. Chromium is installed by `scripts/test.sh`, not here.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const APP_DASH: &str = "rtpvisor-dash";
const PORTS: &str = "10900-10919";
const CALLS: usize = 3;

/// The text of the element with `id` in serialized HTML (elements whose content is plain text).
fn text_by_id(dom: &str, id: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let open = at + dom[at..].find('>')? + 1;
    let close = open + dom[open..].find('<')?;
    Some(dom[open..close].trim().to_string())
}

fn chromium(args: &[&str], profile: &Path) -> (bool, String, String) {
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("running chromium (scripts/test.sh installs it: apt-get install -y chromium)");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Bytes and milliseconds of one GET with the token.
fn timed_get(svc: &Rtpvisor, path: &str) -> (usize, f64) {
    let t = Instant::now();
    let body = svc.get_text(path);
    (body.len(), t.elapsed().as_secs_f64() * 1000.0)
}

#[test]
fn the_dashboard_in_chromium_shows_the_live_figures() {
    ensure_asterisk();
    let svc = Rtpvisor::start(
        "e2e_dashboard",
        Options { rtp_ports: PORTS.into(), env: vec![("RTPVISOR_ARI_APP".into(), APP_DASH.into())] },
    );
    wait_until("the first reconciliation is done", Duration::from_secs(10), || svc.log_text().contains("reconciled in"));
    let prefix = format!("dash-{}", std::process::id());
    for i in 0..CALLS {
        originate_in(APP_DASH, "echo", "probe", &format!("{prefix}-{i}"));
    }
    wait_until("the probe calls are active", Duration::from_secs(20), || {
        svc.metrics()["active_channels"].as_u64() == Some(CALLS as u64)
    });
    // Long enough for round trips and a loss verdict on each call (probe timeout).
    wait_until("every call has a quality", Duration::from_secs(15), || {
        svc.get("/channels").as_array().is_some_and(|c| c.len() == CALLS && c.iter().all(|c| c["quality"].is_object()))
    });

    // The media engine flushes its figures to the metrics every so often.
    wait_until("the probe mode has a MOS", Duration::from_secs(10), || svc.metrics()["modes"]["probe"]["mos_avg"].is_f64());

    // The API side of what the page shows.
    let channels = svc.get("/channels");
    for c in channels.as_array().unwrap() {
        let q = &c["quality"];
        let mos = q["mos"].as_f64().unwrap_or_else(|| panic!("{c}"));
        assert!((1.0..=4.5).contains(&mos), "{c}");
        assert!(q["r_factor"].as_f64().unwrap() > 80.0, "a loopback call is good: {c}");
    }
    let m = svc.metrics();
    let mos_avg = m["modes"]["probe"]["mos_avg"].as_f64().unwrap_or_else(|| panic!("probe mos_avg: {m}"));
    assert!(m["modes"]["echo"]["mos_avg"].is_null(), "no echo call: {m}");
    let events = svc.get("/events");
    let started = events.as_array().unwrap().iter().filter(|e| e["kind"] == "started" && e["mode"] == "probe").count();
    assert_eq!(started, CALLS, "{events}");
    let hist = svc.get("/metrics/latency_histogram");
    let probe_samples: u64 = hist["probe"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).sum();
    let count = |m: &serde_json::Value| m["modes"]["probe"]["latency"]["count"].as_u64().unwrap();
    // The same samples as /metrics (a flush may land between the two requests).
    assert!(probe_samples >= count(&m) && probe_samples <= count(&svc.metrics()), "{hist} {m}");
    assert!(probe_samples > 0, "{hist}");
    let prom = svc.get_text("/metrics/prometheus");
    assert!(prom.lines().any(|l| l.starts_with("rtpvisor_mos_avg{mode=\"probe\"} ")), "{prom}");

    // The page, in a real browser.
    let artifacts = repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let profile = artifacts.join(format!("chromium-profile-{}", std::process::id()));
    let url = format!("{}/?token={}", svc.http, svc.token);
    let t = Instant::now();
    let (ok, dom, err) = chromium(&["--dump-dom", &url], &profile);
    let dump_ms = t.elapsed().as_millis();
    assert!(ok, "chromium --dump-dom failed: {err}");
    let after = svc.metrics();
    let show = |id: &str| text_by_id(&dom, id).unwrap_or_else(|| panic!("no #{id} in the DOM:\n{dom}"));
    assert_eq!(show("error"), "", "the page reported an error");
    assert!(dom.contains("data-loaded=\"true\""), "the page never loaded its data:\n{dom}");
    assert!(!dom.contains(&svc.token), "the token stays out of the page");
    for (id, key) in [("active-calls", "active_channels"), ("total-calls", "total_channels")] {
        let shown: u64 = show(id).parse().unwrap_or_else(|e| panic!("#{id} {:?}: {e}", show(id)));
        assert!(
            shown == m[key].as_u64().unwrap() && shown == after[key].as_u64().unwrap(),
            "#{id} shows {shown}; /metrics {key} before {} after {}",
            m[key],
            after[key]
        );
    }
    assert_eq!(show("active-calls"), CALLS.to_string());
    let ports = svc.get("/ports");
    assert_eq!(show("pool-size"), ports["size"].to_string());
    assert_eq!(show("pool-leased"), ports["leased"].to_string());
    assert_eq!(show("calls-shown"), format!("({CALLS})"));
    let shown_mos: f64 = show("mos-probe").parse().unwrap_or_else(|e| panic!("#mos-probe {:?}: {e}", show("mos-probe")));
    let after_mos = after["modes"]["probe"]["mos_avg"].as_f64().unwrap();
    assert!(
        (shown_mos - mos_avg).abs() <= 0.05 || (shown_mos - after_mos).abs() <= 0.05,
        "#mos-probe {shown_mos}, /metrics {mos_avg} then {after_mos}"
    );
    assert_eq!(show("mos-echo"), "–");
    let calls_table = dom.split("id=\"calls\">").nth(1).and_then(|t| t.split("</tbody>").next()).unwrap_or_default();
    assert_eq!(calls_table.matches("<tr>").count(), CALLS, "one table row per call: {calls_table}");
    assert!(dom.matches("<td class=\"ok\">started</td>").count() >= CALLS, "the started events are listed");
    assert!(dom.contains("port-manager"), "the supervision tree is drawn");
    eprintln!("chromium --dump-dom took {dump_ms} ms");

    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let (ok, _, err) =
        chromium(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,1000", &url], &profile);
    assert!(ok, "chromium --screenshot failed: {err}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "screenshot {} is {size} bytes", shot.display());
    eprintln!("screenshot: {} ({size} bytes)", shot.display());

    // What one refresh fetches (the page's six requests), with these calls.
    let mut total = (0, 0.0);
    for path in ["/metrics", "/ports", "/channels?limit=100", "/actors?channels=false", "/events", "/metrics/latency_histogram"] {
        let (bytes, ms) = timed_get(&svc, path);
        eprintln!("refresh cost: GET {path}: {bytes} bytes in {ms:.2} ms");
        total = (total.0 + bytes, total.1 + ms);
    }
    let per_call = svc.get_text("/channels").len() / CALLS;
    eprintln!("refresh cost: {} bytes in {:.2} ms with {CALLS} calls; /channels is {per_call} bytes per call", total.0, total.1);

    // Unauthenticated, the page and its data are refused.
    let open = |path: &str| match ureq::get(&format!("{}{path}", svc.http)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{path}: {e}"),
    };
    assert_eq!(open("/"), 401);
    assert_eq!(open("/?token=wrong"), 401);
    assert_eq!(open(&format!("/events?token={}", svc.token)), 401);

    hang_up_prefixed(&prefix);
    wait_until("no active channel", Duration::from_secs(20), || svc.metrics()["active_channels"].as_u64() == Some(0));
    wait_until("every port back", Duration::from_secs(10), || svc.get("/ports")["leased"].as_u64() == Some(0));
    let events = svc.get("/events");
    let ended = events.as_array().unwrap().iter().filter(|e| e["kind"] == "ended" && e["reason"] == "hangup").count();
    assert_eq!(ended, CALLS, "{events}");
    let _ = std::fs::remove_dir_all(&profile);
}
