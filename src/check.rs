//! `rtpvisor check`: a doctor for a deployment. With the service's own settings it checks, one
//! line each (✓ or ✗ with what to do): the configuration is valid; the HTTP API does not
//! answer other hosts without a token (`http.allow_open` lets the service start so, not this
//! check pass); whether an rtpvisor already
//! answers on `http.addr`; ARI answers with these credentials (Asterisk's version shown); the
//! Stasis app is free, or held by that running rtpvisor; the RTP port range and the echo
//! address are bindable (ports a running rtpvisor holds itself count as fine); and with
//! `--call ENDPOINT`, one probe call end to end through the running service (setup time, RTT).
//! Exit code 0 when nothing failed, 1 otherwise, 2 for bad flags.
//!
//! Whether someone holds the app is what Asterisk 22 shows: `GET /applications/{app}` answers
//! 404 while no events WebSocket has registered it and 200 while one does (and 404 again once
//! it closed).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use clap::Parser;
use rtpvisor_actors::ari::client::{AriClient, AriError};
use serde_json::Value;

use crate::config::{Config, TOKEN_HOWTO};
use crate::loadgen_report::{self as report, Fate};
use crate::ops::{self, ApiClient, EndedReader};

/// `rtpvisor check` flags.
#[derive(Debug, Parser)]
#[command(
    name = "rtpvisor check",
    bin_name = "rtpvisor check",
    about = "Check a deployment: configuration, ARI, Stasis app, ports, and optionally one call end to end",
    after_help = "Reads the service's settings (RTPVISOR_* environment, --config file). Exit code: 0 \
                  every check passed, 1 one failed, 2 bad flags."
)]
pub struct CheckArgs {
    /// The service's TOML config file (as `rtpvisor --config`)
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Place one call to ENDPOINT through the running rtpvisor, e.g. Local/echo@rtpvisor-test
    #[arg(long, value_name = "ENDPOINT")]
    pub call: Option<String>,
    /// The probe call's mode (its Stasis argument)
    #[arg(long, default_value = "probe")]
    pub call_mode: String,
    /// How long the probe call lasts, seconds
    #[arg(long, default_value_t = 2.0)]
    pub call_secs: f64,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    Fail,
    /// Not a verdict: what was found (e.g. no service running yet) or a check that could not run.
    Note,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub status: Status,
    pub text: String,
    /// What to do about a failure.
    pub fix: Option<String>,
}

impl Line {
    fn pass(text: impl Into<String>) -> Self {
        Line { status: Status::Pass, text: text.into(), fix: None }
    }
    fn fail(text: impl Into<String>, fix: impl Into<String>) -> Self {
        Line { status: Status::Fail, text: text.into(), fix: Some(fix.into()) }
    }
    fn note(text: impl Into<String>) -> Self {
        Line { status: Status::Note, text: text.into(), fix: None }
    }

    /// `✓ text`, `✗ text` with `  → fix` below, or `· text`.
    pub fn render(&self) -> String {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Note => "·",
        };
        match &self.fix {
            Some(fix) => format!("{mark} {}\n    → {fix}\n", self.text),
            None => format!("{mark} {}\n", self.text),
        }
    }
}

/// 0 when no line failed, else 1.
pub fn exit_code(lines: &[Line]) -> i32 {
    i32::from(lines.iter().any(|l| l.status == Status::Fail))
}

/// Runs `rtpvisor check ARGS...` (`argv[0]` is `check`), prints the lines; the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let args = match CheckArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Err(e) = args.call_mode.parse::<rtpvisor_actors::mode::CallMode>() {
        eprintln!("rtpvisor check: --call-mode: {e}");
        return 2;
    }
    if !(args.call_secs > 0.0 && args.call_secs <= 600.0) {
        eprintln!("rtpvisor check: --call-secs must be above 0 and at most 600");
        return 2;
    }
    let mut lines = Vec::new();
    let print = |l: Line, lines: &mut Vec<Line>| {
        print!("{}", l.render());
        lines.push(l);
    };
    let cfg = match ops::load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print(
                Line::fail(format!("configuration: {e}"), "fix the setting named above (rtpvisor --print-config shows the effective values)"),
                &mut lines,
            );
            return exit_code(&lines);
        }
    };
    let source = args.config.as_deref().or(std::env::var("RTPVISOR_CONFIG").ok().as_deref()).map_or_else(
        || "defaults and RTPVISOR_* environment".to_string(),
        |f| format!("{f}, defaults and RTPVISOR_* environment"),
    );
    print(Line::pass(format!("configuration is valid ({source})")), &mut lines);
    print(api_line(&cfg), &mut lines);
    actix_rt::System::new().block_on(async {
        let mut emit = |l: Line| print(l, &mut lines);
        checks(&args, &cfg, &mut emit).await;
    });
    exit_code(&lines)
}

/// What a running rtpvisor on `http.addr` said, if one answers.
struct Running {
    ready: bool,
    /// Ports it leases to live calls now (busy by design).
    leased: Vec<u16>,
}

async fn checks(args: &CheckArgs, cfg: &Config, emit: &mut dyn FnMut(Line)) {
    let api = ApiClient::for_service(cfg);
    let running = service_line(&api, emit).await;
    let ari = match ops::ari_client(cfg) {
        Ok(a) => a,
        Err(e) => {
            emit(Line::fail(format!("ARI client: {e}"), "fix ari.ca_file (RTPVISOR_ARI_CA_FILE): a PEM file with the CA that signed Asterisk's certificate"));
            return;
        }
    };
    let ari_ok = ari_line(&ari, cfg, emit).await;
    if ari_ok {
        emit(app_line(&ari, cfg, running.as_ref(), api.base()).await);
    } else {
        emit(Line::note(format!("Stasis app '{}': not checked (ARI does not answer)", cfg.ari.app)));
    }
    let leased = running.as_ref().map(|r| r.leased.clone()).unwrap_or_default();
    emit(ports_line(cfg.media.bind_ip, cfg.media.rtp_ports.start, cfg.media.rtp_ports.end, &leased));
    emit(echo_line(cfg.echo.addr, running.as_ref().is_some_and(|r| r.ready)));
    if let Some(endpoint) = &args.call {
        let line = match &running {
            Some(r) if r.ready && ari_ok => probe_call(&ari, &api, endpoint, &args.call_mode, Duration::from_secs_f64(args.call_secs)).await,
            _ => Line::fail(
                format!("call to {endpoint}: no ready rtpvisor at {} to take it", api.base()),
                "start rtpvisor with these settings (and fix the failures above), then run the check again",
            ),
        };
        emit(line);
    }
}

/// Who can read the HTTP API, from the settings alone. Open beyond loopback is a failure even
/// when `http.allow_open` let the service start: the doctor says what the start only warns of.
pub fn api_line(cfg: &Config) -> Line {
    let addr = cfg.http.addr;
    if cfg.http.token.is_some() {
        Line::pass(format!("HTTP API on {addr} requires a token"))
    } else if !cfg.http.open_beyond_loopback() {
        Line::pass(format!("HTTP API on {addr} answers this host only (no token)"))
    } else {
        Line::fail(
            format!("HTTP API on {addr} answers other hosts without a token (http.allow_open): anyone who reaches it reads every live call"),
            format!("{TOKEN_HOWTO}; or bind http.addr (RTPVISOR_HTTP_ADDR) to 127.0.0.1"),
        )
    }
}

/// Whether an rtpvisor answers on `http.addr`, and whether it is ready.
async fn service_line(api: &ApiClient, emit: &mut dyn FnMut(Line)) -> Option<Running> {
    let (code, ready) = match api.get("/ready").await {
        Ok(answer) => answer,
        Err(_) => {
            emit(Line::note(format!("no rtpvisor answers at {}: checking as before its start", api.base())));
            return None;
        }
    };
    if code != 200 {
        emit(Line::fail(
            format!("the rtpvisor at {} is not ready ({code}): {}", api.base(), ready["reason"].as_str().unwrap_or("no reason given")),
            "see its log and GET /ready; the lines below say what else is wrong",
        ));
        return Some(Running { ready: false, leased: Vec::new() });
    }
    let leased = match api.get_ok("/ports").await {
        Ok(p) => p["leased_ports"].as_array().map_or_else(Vec::new, |a| {
            a.iter().filter_map(Value::as_u64).map(|p| p as u16).collect()
        }),
        Err(e) => {
            emit(Line::fail(format!("the rtpvisor at {} answers, but not to its API: {e}", api.base()), "set http.token (RTPVISOR_HTTP_TOKEN) to the service's token"));
            Vec::new()
        }
    };
    emit(Line::pass(format!("rtpvisor at {} is running and ready", api.base())));
    Some(Running { ready: true, leased })
}

async fn ari_line(ari: &AriClient, cfg: &Config, emit: &mut dyn FnMut(Line)) -> bool {
    let url = &cfg.ari.url;
    let user = &cfg.ari.user;
    match ari.asterisk_info().await {
        Ok(info) => {
            let version = info.system.map_or_else(|| "version not shown".to_string(), |s| s.version);
            emit(Line::pass(format!("ARI at {url} answers user '{user}': Asterisk {version}")));
            true
        }
        Err(e) => {
            emit(ari_failure(&e, url, user));
            false
        }
    }
}

/// What an ARI failure means for the operator.
pub fn ari_failure(e: &AriError, url: &str, user: &str) -> Line {
    match e.status() {
        Some(401) | Some(403) => Line::fail(
            format!("ARI at {url} refused user '{user}' ({}): wrong user or password", e.status().unwrap_or(401)),
            "set ari.user and ari.password (RTPVISOR_ARI_USER, RTPVISOR_ARI_PASSWORD or RTPVISOR_ARI_PASSWORD_FILE) to a user of Asterisk's ari.conf",
        ),
        Some(code) => Line::fail(
            format!("ARI at {url} answered {code}: {e}"),
            "check ari.url (RTPVISOR_ARI_URL): it must end in /ari, and ari.conf must have enabled=yes",
        ),
        None => Line::fail(
            format!("ARI at {url} does not answer: {e}"),
            "start Asterisk, or fix ari.url (RTPVISOR_ARI_URL); Asterisk's http.conf needs enabled=yes and the bindaddr/bindport of that URL",
        ),
    }
}

async fn app_line(ari: &AriClient, cfg: &Config, running: Option<&Running>, api_base: &str) -> Line {
    let app = &cfg.ari.app;
    let ready = running.is_some_and(|r| r.ready);
    match (ari.application().await, ready) {
        (Err(e), false) if e.is_not_found() => Line::pass(format!("Stasis app '{app}' is free (no client holds it)")),
        (Err(e), true) if e.is_not_found() => Line::fail(
            format!("Stasis app '{app}' is not registered, yet the rtpvisor at {api_base} is ready"),
            "that rtpvisor uses another app (its ari.app): check with the same settings as it runs with",
        ),
        (Ok(_), true) => Line::pass(format!("Stasis app '{app}' is held by the running rtpvisor at {api_base}")),
        (Ok(a), false) => Line::fail(
            format!(
                "Stasis app '{app}' is held by another client ({} channels, {} bridges in it)",
                a.channel_ids.len(),
                a.bridge_ids.len()
            ),
            "stop the other rtpvisor or ARI client using it, or give this one an app of its own: ari.app (RTPVISOR_ARI_APP) and a dialplan Stasis() to it",
        ),
        (Err(e), _) => Line::fail(format!("Stasis app '{app}': {e}"), "check the ARI user's rights in ari.conf"),
    }
}

/// Which ports of `start..=end` on `ip` cannot be bound now (and why), leaving out `leased`.
pub fn unbindable_ports(ip: IpAddr, start: u16, end: u16, leased: &[u16]) -> Vec<(u16, std::io::ErrorKind)> {
    (start..=end)
        .filter(|p| !leased.contains(p))
        .filter_map(|p| UdpSocket::bind(SocketAddr::new(ip, p)).err().map(|e| (p, e.kind())))
        .collect()
}

fn ports_line(ip: IpAddr, start: u16, end: u16, leased: &[u16]) -> Line {
    let size = usize::from(end - start) + 1;
    let busy = unbindable_ports(ip, start, end, leased);
    let range = format!("UDP ports {start}-{end} on {ip}");
    if busy.is_empty() {
        let own = if leased.is_empty() { String::new() } else { format!(" ({} leased by the running rtpvisor)", leased.len()) };
        return Line::pass(format!("{range}: all {size} bindable{own}"));
    }
    let shown: Vec<String> = busy.iter().take(5).map(|(p, _)| p.to_string()).collect();
    let more = if busy.len() > 5 { format!(" and {} more", busy.len() - 5) } else { String::new() };
    let first = busy[0].0;
    Line::fail(
        format!("{range}: {} of {size} cannot be bound ({}{more}): {:?}", busy.len(), shown.join(", "), busy[0].1),
        format!(
            "another process holds them (`ss -ulpn 'sport = :{first}'` shows which): stop it, or move media.rtp_ports (RTPVISOR_RTP_PORTS) to a free range disjoint from Asterisk's rtp.conf range"
        ),
    )
}

fn echo_line(addr: SocketAddr, service_ready: bool) -> Line {
    match UdpSocket::bind(addr) {
        Ok(_) => Line::pass(format!("echo address {addr} (UDP) is bindable")),
        Err(_) if service_ready => Line::pass(format!("echo address {addr} (UDP) is held by the running rtpvisor")),
        Err(e) => Line::fail(
            format!("echo address {addr} (UDP) cannot be bound: {e}"),
            format!("another process holds it (`ss -ulpn 'sport = :{}'` shows which): stop it, or set echo.addr (RTPVISOR_ECHO_ADDR)", addr.port()),
        ),
    }
}

/// One call through the running service: originate, hold, hang up, read its record.
async fn probe_call(ari: &AriClient, api: &ApiClient, endpoint: &str, mode: &str, hold: Duration) -> Line {
    let what = format!("{mode} call to {endpoint}");
    let mut reader = match EndedReader::from_now(api).await {
        Ok(r) => r,
        Err(e) => return Line::fail(format!("{what}: the service's API: {e}"), "set http.token (RTPVISOR_HTTP_TOKEN) to the service's token"),
    };
    let run = ops::run_id();
    let (channel, far) = (format!("chk{run}-c"), format!("chk{run}-f"));
    let placed = ops::originate(ari, endpoint, mode, &channel, &far).await;
    if let Some(e) = &placed.error {
        return Line::fail(format!("{what}: Asterisk refused the originate: {e}"), "check the endpoint (Local/EXTEN@CONTEXT of extensions.conf, or PJSIP/...)");
    }
    let start = Instant::now();
    let (mut record, mut hung_up) = (None, false);
    while record.is_none() && start.elapsed() < hold + Duration::from_secs(10) {
        if !hung_up && start.elapsed() >= hold {
            let _ = ops::hang_up(ari, &channel).await;
            hung_up = true;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        match reader.read(api).await {
            Ok(records) => record = records.into_iter().find(|r| r["channel"] == channel.as_str()),
            Err(e) => {
                // The call is up: end it before saying so.
                let _ = ops::hang_up(ari, &channel).await;
                return Line::fail(format!("{what}: the service's API: {e} (the call was hung up)"), "see GET /ready of the service and its log");
            }
        }
    }
    let _ = ops::hang_up(ari, &channel).await;
    let left = ops::wait_asterisk_clean(ari, &format!("chk{run}-"), Duration::from_secs(5)).await.unwrap_or((usize::MAX, 0));
    call_line(&what, &report::call_result(&channel, placed.sent_at_ms, None, record.as_ref()), left)
}

/// The line of a probe call's result.
pub fn call_line(what: &str, r: &report::CallResult, left: (usize, usize)) -> Line {
    let reason = r.reason.as_deref().unwrap_or("no reason given");
    match r.fate {
        Fate::Missing => {
            return Line::fail(
                format!("{what}: the service recorded nothing for it within the wait"),
                "the call never reached the app: check that the endpoint leads to Stasis (its app is ari.app) and the service's log",
            )
        }
        Fate::Refused => return Line::fail(format!("{what}: refused by the service: {reason}"), "see GET /ready and /ports of the service"),
        Fate::Failed => return Line::fail(format!("{what}: failed: {reason}"), "see the service's log for the failed setup step"),
        Fate::Served => {}
    }
    let shared = what.starts_with("shared-echo");
    if shared && r.packets == 0 || !shared && r.samples == 0 {
        return Line::fail(
            format!("{what}: set up in {:.0} ms but no media measured", r.setup_ms.unwrap_or(0.0)),
            "the far end must send (echo mode) or echo back (probe mode) RTP: e.g. Local/echo@rtpvisor-test runs Echo()",
        );
    }
    if left != (0, 0) {
        return Line::fail(
            format!("{what}: served, but Asterisk still lists {} channels and {} bridges of it", left.0, left.1),
            "see the service's log for the teardown",
        );
    }
    if shared {
        // The shared echo measures nothing per call: it reflects.
        return Line::pass(format!(
            "{what}: setup {:.0} ms, {} packets reflected by the shared echo",
            r.setup_ms.unwrap_or(0.0),
            r.packets
        ));
    }
    let kind = if what.starts_with("probe") { "RTT" } else { "delay" };
    Line::pass(format!(
        "{what}: setup {:.0} ms, {kind} p50 {:.2} ms p99 {:.2} ms, {} of {} packets lost, MOS {}",
        r.setup_ms.unwrap_or(0.0),
        r.p50_ms.unwrap_or(0.0),
        r.p99_ms.unwrap_or(0.0),
        r.lost,
        r.expected,
        r.mos.map_or_else(|| "-".to_string(), |m| format!("{m:.2}"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_render_with_their_fix_and_decide_the_exit_code() {
        let ok = Line::pass("ARI answers");
        let bad = Line::fail("port busy", "free it");
        assert_eq!(ok.render(), "✓ ARI answers\n");
        assert_eq!(bad.render(), "✗ port busy\n    → free it\n");
        assert_eq!(Line::note("no service").render(), "· no service\n");
        assert_eq!(exit_code(&[ok.clone(), Line::note("x")]), 0);
        assert_eq!(exit_code(&[ok, bad]), 1);
    }

    #[test]
    fn an_api_open_beyond_loopback_fails_the_check() {
        let mut cfg = Config::default();
        let l = api_line(&cfg);
        assert_eq!((l.status, l.text.as_str()), (Status::Pass, "HTTP API on 127.0.0.1:9090 answers this host only (no token)"));
        cfg.http.addr = "0.0.0.0:9090".parse().unwrap();
        cfg.http.allow_open = true;
        let l = api_line(&cfg);
        assert_eq!(l.status, Status::Fail, "{l:?}");
        assert!(l.text.contains("0.0.0.0:9090 answers other hosts without a token"), "{l:?}");
        let fix = l.fix.unwrap();
        assert!(fix.contains("openssl rand -hex 32") && fix.contains("RTPVISOR_HTTP_TOKEN_FILE"), "{fix}");
        cfg.http.addr = "[::ffff:127.0.0.1]:9090".parse().unwrap();
        assert_eq!(api_line(&cfg).status, Status::Pass, "a v4-mapped loopback is loopback");
        cfg.http.addr = "[::]:9090".parse().unwrap();
        cfg.http.token = Some(crate::config::Secret::new("0123456789abcdef"));
        let l = api_line(&cfg);
        assert_eq!((l.status, l.text.as_str()), (Status::Pass, "HTTP API on [::]:9090 requires a token"));
    }

    #[test]
    fn ari_failures_say_what_to_do() {
        let denied = AriError::Status { method: "GET", path: "/asterisk/info".into(), status: 401, body: String::new() };
        let l = ari_failure(&denied, "http://h/ari", "u");
        assert!(l.text.contains("refused user 'u' (401)"), "{l:?}");
        assert!(l.fix.unwrap().contains("RTPVISOR_ARI_PASSWORD"));
        let down = AriError::Transport { method: "GET", path: "/asterisk/info".into(), reason: "Connection refused".into() };
        let l = ari_failure(&down, "http://h/ari", "u");
        assert!(l.text.contains("does not answer"), "{l:?}");
        assert!(l.fix.unwrap().contains("http.conf"));
    }

    #[test]
    fn a_held_port_is_found_and_a_leased_one_is_not_blamed() {
        let held = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let busy = unbindable_ports(ip, port, port, &[]);
        assert_eq!(busy.len(), 1);
        assert_eq!(busy[0].0, port);
        assert!(unbindable_ports(ip, port, port, &[port]).is_empty());
        let l = ports_line(ip, port, port, &[]);
        assert_eq!(l.status, Status::Fail);
        assert!(l.fix.unwrap().contains(&format!("sport = :{port}")));
        let e = echo_line(held.local_addr().unwrap(), false);
        assert_eq!(e.status, Status::Fail);
        assert_eq!(echo_line(held.local_addr().unwrap(), true).status, Status::Pass);
        drop(held);
        assert_eq!(ports_line(ip, port, port, &[]).status, Status::Pass);
    }

    #[test]
    fn a_probe_call_line() {
        let rec = serde_json::json!({"outcome": "ended", "reason": "hangup", "active_at_ms": 1_085,
            "latency": {"count": 99, "p50_ms": 0.41, "p99_ms": 0.62, "p999_ms": 0.7}, "expected": 100, "lost": 1, "mos": 4.39});
        let r = report::call_result("c", 1_000, None, Some(&rec));
        let l = call_line("probe call to Local/echo@t", &r, (0, 0));
        assert_eq!(l.status, Status::Pass, "{l:?}");
        assert_eq!(l.text, "probe call to Local/echo@t: setup 85 ms, RTT p50 0.41 ms p99 0.62 ms, 1 of 100 packets lost, MOS 4.39");
        assert_eq!(call_line("probe call", &r, (1, 0)).status, Status::Fail);
        let silent = report::call_result("c", 1_000, None, Some(&serde_json::json!({"outcome": "ended", "active_at_ms": 1_050})));
        assert!(call_line("probe call", &silent, (0, 0)).text.contains("no media"));
        assert_eq!(call_line("x", &report::call_result("c", 0, None, None), (0, 0)).status, Status::Fail);
        let refused = report::call_result("c", 0, None, Some(&serde_json::json!({"outcome": "refused", "reason": "no free RTP port"})));
        assert!(call_line("x", &refused, (0, 0)).text.contains("no free RTP port"));
    }

    #[test]
    fn a_shared_echo_call_line_is_judged_by_what_the_echo_reflected() {
        // The shared echo measures no latency per call: its record has packets and no latency.
        let rec = serde_json::json!({"outcome": "ended", "reason": "hangup", "active_at_ms": 1_020, "latency": null,
            "packets_in": 101, "packets_out": 101, "expected": 0, "lost": 0, "mos": null});
        let r = report::call_result("c", 1_000, None, Some(&rec));
        let l = call_line("shared-echo call to Local/echo@t", &r, (0, 0));
        assert_eq!(l.status, Status::Pass, "{l:?}");
        assert_eq!(l.text, "shared-echo call to Local/echo@t: setup 20 ms, 101 packets reflected by the shared echo");
        let silent = serde_json::json!({"outcome": "ended", "active_at_ms": 1_020, "packets_in": 0});
        let l = call_line("shared-echo call", &report::call_result("c", 1_000, None, Some(&silent)), (0, 0));
        assert!(l.text.contains("no media"), "{l:?}");
    }
}
