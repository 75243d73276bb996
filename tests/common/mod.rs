//! Helpers for the end-to-end tests: the real Asterisk (started by `scripts/asterisk.sh`), the
//! real rtpvisor binary started on free ports, and small ARI/HTTP clients. Tests that share
//! Asterisk's fixed ports (8088, 5060) run one at a time (`--test-threads=1`).
#![allow(dead_code)]

pub mod dup;
pub mod fault_proxy;
pub mod ws_frames;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ARI: &str = "http://127.0.0.1:8088/ari";
pub const ARI_USER: &str = "rtpvisor";
pub const ARI_PASSWORD: &str = "rtpvisor";
pub const APP: &str = "rtpvisor";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Starts the real Asterisk once per test binary (the script is idempotent: an Asterisk it
/// started before is reused) and waits until ARI answers.
pub fn ensure_asterisk() {
    static START: Once = Once::new();
    START.call_once(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/asterisk.sh"))
            .arg("start")
            .status()
            .expect("running scripts/asterisk.sh start");
        assert!(status.success(), "scripts/asterisk.sh start failed");
    });
    wait_until("ARI answers", Duration::from_secs(30), || ari_get("/asterisk/info").is_ok());
}

/// Polls `f` every 50 ms until it is true; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

/// ARI accepts the credentials as `api_key=user:password`, which keeps this client simple.
fn ari(method: &str, path: &str) -> ureq::Request {
    agent().request(method, &format!("{ARI}{path}")).query("api_key", &format!("{ARI_USER}:{ARI_PASSWORD}"))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build()
}

fn into_json(r: Result<ureq::Response, ureq::Error>) -> Result<Value, String> {
    match r {
        Ok(resp) => {
            let mut body = String::new();
            resp.into_reader().read_to_string(&mut body).map_err(|e| e.to_string())?;
            if body.trim().is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
            }
        }
        Err(ureq::Error::Status(code, resp)) => {
            Err(format!("status {code}: {}", resp.into_string().unwrap_or_default()))
        }
        Err(e) => Err(e.to_string()),
    }
}

pub fn ari_get(path: &str) -> Result<Value, String> {
    into_json(ari("GET", path).call())
}

pub fn ari_post(path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
    let mut req = ari("POST", path);
    for (k, v) in query {
        req = req.query(k, v);
    }
    into_json(req.call())
}

pub fn ari_delete(path: &str) -> Result<Value, String> {
    into_json(ari("DELETE", path).call())
}

/// `id` as one ARI path segment, as the service writes it: `format!("/channels/{}", seg(id))`
/// for an id from Asterisk, whatever it holds.
pub fn seg(id: &str) -> String {
    rtpvisor_actors::ari::path::segment(id).expect("a non-empty id")
}

/// `asterisk -rx CMD` in the test Asterisk (`scripts/asterisk.sh cli`); its output.
pub fn asterisk_cli(cmd: &str) -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .args(["cli", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/asterisk.sh cli");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The PID of the test Asterisk (from the pid file `scripts/asterisk.sh start` writes).
pub fn asterisk_pid() -> u32 {
    let out = Command::new("bash").arg(repo().join("scripts/asterisk.sh")).arg("root").output().expect("asterisk.sh root");
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let pid = std::fs::read_to_string(root.join("run/rtpvisor-asterisk.pid")).expect("Asterisk's pid file");
    pid.trim().parse().expect("a PID")
}

/// Originates a Local channel into our app: `exten@rtpvisor-test` runs the dialplan on the far
/// half, the near half enters Stasis with `mode` as its argument. Returns the Stasis channel id.
pub fn originate(exten: &str, mode: &str, id: &str) -> String {
    originate_in(APP, exten, mode, id)
}

/// [`originate`] into the Stasis application `app` (an instance of its own: tests that run
/// beside others use their own app, so they neither see nor disturb the others' calls).
pub fn originate_in(app: &str, exten: &str, mode: &str, id: &str) -> String {
    let endpoint = format!("Local/{exten}@rtpvisor-test");
    let v = ari_post(
        "/channels",
        &[
            ("endpoint", &endpoint),
            ("app", app),
            ("appArgs", mode),
            ("formats", "ulaw"),
            ("channelId", id),
            ("otherChannelId", &format!("{id}-far")),
        ],
    )
    .unwrap_or_else(|e| panic!("originate {endpoint}: {e}"));
    v["id"].as_str().expect("channel id").to_string()
}

/// Ids of every channel Asterisk lists.
pub fn asterisk_channels() -> Vec<String> {
    ids(ari_get("/channels").expect("GET /channels"))
}

pub fn asterisk_bridges() -> Vec<String> {
    ids(ari_get("/bridges").expect("GET /bridges"))
}

fn ids(v: Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|c| c["id"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Originates `n` Local channels that run plain dialplan on both halves (`exten` in
/// `rtpvisor-test`, e.g. `silence`): 2 × n channels of no Stasis application at all.
pub fn originate_dialplan(exten: &str, prefix: &str, n: usize) {
    let endpoint = format!("Local/{exten}@rtpvisor-test");
    for i in 0..n {
        ari_post(
            "/channels",
            &[
                ("endpoint", &endpoint),
                ("context", "rtpvisor-test"),
                ("extension", exten),
                ("priority", "1"),
                ("channelId", &format!("{prefix}-{i}")),
                ("otherChannelId", &format!("{prefix}-{i}-far")),
            ],
        )
        .unwrap_or_else(|e| panic!("originate {endpoint} into the dialplan: {e}"));
    }
}

/// Hangs up every channel whose id starts with `prefix` (a test's own calls only).
pub fn hang_up_prefixed(prefix: &str) {
    for id in asterisk_channels().into_iter().filter(|c| c.starts_with(prefix)) {
        let _ = ari_delete(&format!("/channels/{}", seg(&id)));
    }
}

/// Hangs up everything Asterisk still has (a previous failed test must not poison the next).
pub fn clean_asterisk() {
    for id in asterisk_channels() {
        let _ = ari_delete(&format!("/channels/{}", seg(&id)));
    }
    for id in asterisk_bridges() {
        let _ = ari_delete(&format!("/bridges/{}", seg(&id)));
    }
    wait_until("Asterisk has no channel or bridge", Duration::from_secs(10), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
}

/// The service ended every call and gave every port back, and Asterisk lists none of the
/// channels or bridges it had.
pub fn assert_all_released(svc: &Rtpvisor, what: &str) {
    wait_until(&format!("{what}: no active channel"), Duration::from_secs(30), || {
        svc.metrics()["active_channels"].as_u64() == Some(0)
    });
    let p = svc.get("/ports");
    assert_eq!(p["leased"].as_u64(), Some(0), "{what}: {p}");
    assert_eq!(
        p["free"].as_u64().unwrap() + p["quarantined"].as_u64().unwrap() + p["unavailable"].as_u64().unwrap(),
        p["size"].as_u64().unwrap(),
        "{what}: {p}"
    );
    wait_until(&format!("{what}: Asterisk lists no channel or bridge"), Duration::from_secs(20), || {
        asterisk_channels().is_empty() && asterisk_bridges().is_empty()
    });
}

/// 32 hex digits from the std hasher's per-process random keys.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let part = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:016x}{:016x}", part(), part())
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real rtpvisor binary, on free HTTP and echo ports. SIGTERM on drop.
pub struct Rtpvisor {
    child: Option<Child>,
    pub http: String,
    /// The API token of this run (`RTPVISOR_HTTP_TOKEN`, random unless a test sets its own);
    /// every helper request sends it.
    pub token: String,
    pub echo_port: u16,
    pub log: PathBuf,
}

pub struct Options {
    pub rtp_ports: String,
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options { rtp_ports: "10000-10100".into(), env: Vec::new() }
    }
}

impl Rtpvisor {
    pub fn start(name: &str, opts: Options) -> Rtpvisor {
        let http_port = free_tcp_port();
        // A test that restarts a service on the same echo port passes RTPVISOR_ECHO_ADDR.
        let echo_port = opts
            .env
            .iter()
            .find(|(k, _)| k == "RTPVISOR_ECHO_ADDR")
            .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(free_udp_port);
        let dir = repo().join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let token = opts.env.iter().find(|(k, _)| k == "RTPVISOR_HTTP_TOKEN").map_or_else(random_token, |(_, v)| v.clone());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtpvisor"));
        cmd.env("RTPVISOR_HTTP_TOKEN", &token)
            .env("RTPVISOR_HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("RTPVISOR_ECHO_ADDR", format!("127.0.0.1:{echo_port}"))
            .env("RTPVISOR_MEDIA_HOST", "127.0.0.1")
            .env("RTPVISOR_MEDIA_BIND_IP", "127.0.0.1")
            .env("RTPVISOR_RTP_PORTS", &opts.rtp_ports)
            .env("RTPVISOR_ARI_URL", ARI)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting rtpvisor");
        let svc = Rtpvisor { child: Some(child), http: format!("http://127.0.0.1:{http_port}"), token, echo_port, log };
        let start = Instant::now();
        wait_until("rtpvisor is ready", Duration::from_secs(20), || svc.get_status("/ready").0 == 200);
        eprintln!("rtpvisor ready in {} ms (log {})", start.elapsed().as_millis(), svc.log.display());
        svc
    }

    pub fn get_status(&self, path: &str) -> (u16, Value) {
        match self.api("GET", path).call() {
            Ok(r) => {
                let code = r.status();
                (code, into_json(Ok(r)).unwrap_or(Value::Null))
            }
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    pub fn get(&self, path: &str) -> Value {
        let (code, v) = self.get_status(path);
        assert_eq!(code, 200, "GET {path} answered {code}: {v}");
        v
    }

    /// POST without a body; returns the status and the JSON answer.
    pub fn post(&self, path: &str) -> (u16, Value) {
        match self.api("POST", path).call() {
            Ok(r) => {
                let code = r.status();
                (code, into_json(Ok(r)).unwrap_or(Value::Null))
            }
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap_or(Value::Null)),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rtpvisor did not exit within {limit:?}");
    }

    pub fn get_text(&self, path: &str) -> String {
        self.api("GET", path).call().unwrap().into_string().unwrap()
    }

    /// A request to the API with this run's token.
    pub fn api(&self, method: &str, path: &str) -> ureq::Request {
        agent().request(method, &format!("{}{}", self.http, path)).set("Authorization", &format!("Bearer {}", self.token))
    }

    pub fn metrics(&self) -> Value {
        self.get("/metrics")
    }

    /// Sends SIGTERM and waits for exit; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        self.signal("TERM")
    }

    /// Sends `sig` (e.g. "TERM", "INT", "KILL") and waits up to 15 s for the process to exit
    /// (then kills it); returns the exit code (None when killed by a signal) and the time.
    pub fn signal(&mut self, sig: &str) -> (Option<i32>, Duration) {
        let mut child = self.child.take().expect("running");
        let start = Instant::now();
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
        let limit = Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return (st.code(), start.elapsed());
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let st = child.wait().unwrap();
                return (st.code(), start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Rtpvisor {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

/// Runs sipp inside the Asterisk chroot; returns (exit code, combined output).
pub fn sipp(args: &[&str]) -> (i32, String) {
    let out = Command::new("bash")
        .arg(repo().join("scripts/asterisk.sh"))
        .arg("sipp")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running sipp");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

pub fn f64_of(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// xorshift64*: reproducible random sizes, contents and choices without a crate
/// (a run prints its seed; the same seed replays it).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}
