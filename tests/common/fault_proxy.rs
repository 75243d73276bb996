//! An HTTP/1.1 fault proxy for ARI, for the end-to-end tests: rtpvisor talks to it instead of
//! Asterisk (`RTPVISOR_ARI_URL` = [`FaultProxy::url`]), and it forwards every request to the
//! real ARI unless a [`Rule`] says to inject a [`Fault`] into it. The events WebSocket is piped
//! through too, so a test can cut it ([`FaultProxy::drop_websockets`]), keep the service from
//! getting it back for a while ([`FaultProxy::refuse_websockets`]), or make it silent without
//! closing anything ([`FaultProxy::freeze_websockets`]: a half-open link, as after a NAT or
//! firewall lost the connection's state). In the Asterisk-to-client direction it reads the
//! WebSocket's frames ([`super::ws_frames`]) and can rewrite a StasisStart a [`StasisRule`]
//! matches: send it twice (the second copy possibly later), or make it undecodable; every
//! other byte passes unchanged.
//!
//! Plain std threads and blocking sockets: one thread per accepted connection (two for a
//! WebSocket), no async runtime. Each REST request is forwarded on a fresh upstream connection
//! with `Connection: close` and answered with `Connection: close`, so neither side keeps a
//! connection the proxy would have to parse further requests from. Every request and what
//! became of it is logged ([`FaultProxy::requests`]) so a test can tell which step was faulted
//! and what teardown did afterwards.
//!
//! Everything is bounded: socket reads have timeouts (except the WebSocket pipes, which end when
//! either side closes or the proxy shuts them), delays wake up when the proxy is dropped, and
//! dropping the proxy shuts every socket it holds and joins every thread it started.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ws_frames::{Downstream, Insert, Out, StasisRewrite, StasisStart};

/// A request head larger than this is refused (ARI heads are a few hundred bytes).
const MAX_HEAD: usize = 64 * 1024;
/// Request and response bodies larger than this are refused (ARI answers are small).
const MAX_BODY: usize = 8 * 1024 * 1024;
/// A WebSocket frame larger than this is not held back until it is complete: the rest of that
/// WebSocket passes through raw (ARI events are a few KiB).
const MAX_WS_FRAME: usize = 16 * 1024 * 1024;
/// How long a delayed frame waits for a fragmented message to end before it is dropped.
const INSERT_WAIT: Duration = Duration::from_secs(10);
/// How long the proxy waits for a client to send its request.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy waits for Asterisk to answer a forwarded request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Granularity of interruptible sleeps and polls.
const TICK: Duration = Duration::from_millis(10);

/// Which request paths (without the query string) a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path exactly: `/ari/bridges` matches `POST /ari/bridges?type=mixing`, not
    /// `/ari/bridges/x/addChannel`.
    Exact(String),
    /// Every path starting with this.
    Prefix(String),
    /// `*` stands for any run of characters (possibly empty), e.g. `/ari/bridges/*/addChannel`;
    /// everything else is literal.
    Glob(String),
}

impl PathMatch {
    pub fn exact(p: &str) -> PathMatch {
        PathMatch::Exact(p.to_string())
    }
    pub fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.to_string())
    }
    pub fn glob(p: &str) -> PathMatch {
        PathMatch::Glob(p.to_string())
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Glob(g) => glob_matches(g, path),
        }
    }
}

/// `*`-only glob: the first piece is a prefix, the last a suffix, the middle ones appear in
/// order in between.
fn glob_matches(glob: &str, s: &str) -> bool {
    let pieces: Vec<&str> = glob.split('*').collect();
    if pieces.len() == 1 {
        return glob == s;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    true
}

/// What the proxy does to a request a rule matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer this status with this JSON body at once; Asterisk never sees the request.
    Status(u16, String),
    /// Hold the request this long, then forward it: Asterisk executes it late, possibly after
    /// the client gave up on it (an overloaded Asterisk that queued the request).
    Delay(Duration),
    /// Forward the request at once (Asterisk executes it) and hold the answer this long (the
    /// answer is slow or lost on the way back).
    DelayResponse(Duration),
    /// Close the connection without answering; Asterisk never sees the request. A plain close
    /// (FIN; std cannot set SO_LINGER 0 for a real RST): the client sees its connection end
    /// before any answer, which awc reports as a transport error like a reset.
    Reset,
}

impl Fault {
    /// `500 {"message":"injected"}`.
    pub fn status_500() -> Fault {
        Fault::Status(500, r#"{"message":"injected"}"#.to_string())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status(code, _) => write!(f, "status {code}"),
            Fault::Delay(d) => write!(f, "delay request {} ms", d.as_millis()),
            Fault::DelayResponse(d) => write!(f, "delay response {} ms", d.as_millis()),
            Fault::Reset => write!(f, "reset"),
        }
    }
}

/// How many matching requests a rule faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next n matching requests; later ones pass.
    Next(u32),
    Always,
}

/// Fault the requests with this method whose path matches.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: String,
    pub path: PathMatch,
    pub fault: Fault,
    pub times: Times,
}

impl Rule {
    /// A rule that faults every matching request (see [`Rule::times`]).
    pub fn new(method: &str, path: PathMatch, fault: Fault) -> Rule {
        Rule { method: method.to_string(), path, fault, times: Times::Always }
    }

    /// Fault only the next `n` matching requests.
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Times::Next(n);
        self
    }
}

/// Rewrite the StasisStart events (Asterisk to the client) of channels whose id starts with
/// `channel_prefix`.
#[derive(Debug, Clone)]
pub struct StasisRule {
    pub rewrite: StasisRewrite,
    pub channel_prefix: String,
    pub times: Times,
}

impl StasisRule {
    /// Pass the StasisStart, and send it again `delay` later (zero: right behind it).
    pub fn duplicate(channel_prefix: &str, delay: Duration) -> StasisRule {
        StasisRule { rewrite: StasisRewrite::Duplicate { delay }, channel_prefix: channel_prefix.into(), times: Times::Always }
    }

    /// Send the StasisStart with `channel.name` a number instead (its `channel.id` kept).
    pub fn corrupt(channel_prefix: &str) -> StasisRule {
        StasisRule { rewrite: StasisRewrite::Corrupt, channel_prefix: channel_prefix.into(), times: Times::Always }
    }

    /// Rewrite only the next `n` matching StasisStarts.
    pub fn times(mut self, n: u32) -> StasisRule {
        self.times = Times::Next(n);
        self
    }
}

/// Handle of an added [`StasisRule`], to read its hit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StasisRuleId(usize);

/// A StasisStart the proxy rewrote.
#[derive(Debug, Clone)]
pub struct StasisRewritten {
    pub channel_id: String,
    pub rewrite: StasisRewrite,
    /// The event's `timestamp` as Asterisk wrote it.
    pub asterisk_timestamp: Option<String>,
    /// When the (first, or corrupted) frame was written to the client.
    pub sent_at: Instant,
    /// When a delayed duplicate was written (None: not yet, dropped, or none was due).
    pub again_at: Option<Instant>,
}

/// Handle of an added rule, to read its hit count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(usize);

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still being handled (delayed, or waiting for Asterisk).
    InFlight,
    /// The client got an answer with this status (from Asterisk, or injected).
    Answered(u16),
    /// An answer with this status was ready but the client had already closed its connection
    /// (it gave up: its request timed out).
    ClientGone(u16),
    /// The connection was closed without an answer.
    Reset,
    /// Asterisk could not be reached or answered garbage; the client got a 502.
    UpstreamFailed(String),
    /// A WebSocket upgrade piped through to Asterisk, still open.
    WebSocketOpen,
    /// A WebSocket that was piped and has ended.
    WebSocketClosed,
    /// A WebSocket upgrade answered 503 because the proxy refuses WebSockets.
    WebSocketRefused,
    /// A WebSocket upgrade that came while WebSockets were frozen: held open, never forwarded
    /// nor answered.
    WebSocketHeld,
}

/// One request the proxy received, in arrival order.
#[derive(Debug, Clone)]
pub struct Request {
    pub seq: u64,
    /// When it arrived, relative to the proxy's start.
    pub at: Duration,
    pub method: String,
    /// The path without the query string, e.g. `/ari/bridges/rtpvisor-br-x/addChannel`.
    pub path: String,
    /// The raw query string (without `?`), e.g. `channelId=rtpvisor-em-x&app=rtpvisor...`.
    pub query: String,
    /// The fault a rule injected, if one matched.
    pub fault: Option<Fault>,
    /// The status Asterisk answered the forwarded request with (None: not forwarded, or no
    /// answer).
    pub upstream: Option<u16>,
    pub outcome: Outcome,
}

impl Request {
    /// True when the path or query names `s` (a channel or bridge id).
    pub fn mentions(&self, s: &str) -> bool {
        self.path.contains(s) || self.query.contains(s)
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} +{}ms {} {}", self.seq, self.at.as_millis(), self.method, self.path)?;
        if let Some(fault) = &self.fault {
            write!(f, " [{fault}]")?;
        }
        if let Some(up) = self.upstream {
            write!(f, " asterisk={up}")?;
        }
        write!(f, " -> {:?}", self.outcome)
    }
}

struct RuleState {
    rule: Rule,
    hits: u32,
    active: bool,
}

/// A socket the proxy holds, so dropping the proxy (or `drop_websockets`) can shut it.
struct Live {
    websocket: bool,
    sockets: Vec<TcpStream>,
}

struct Shared {
    upstream: SocketAddr,
    started: Instant,
    stop: AtomicBool,
    refuse_ws: AtomicBool,
    /// New WebSocket upgrades are held unanswered (see [`FaultProxy::freeze_websockets`]).
    freeze_ws: AtomicBool,
    /// One flag per piped WebSocket: set, its pipes drop whatever they read. Never cleared: a
    /// frozen connection stays dead, as a connection whose NAT state is gone.
    ws_frozen: Mutex<Vec<Arc<AtomicBool>>>,
    next_id: AtomicU64,
    rules: Mutex<Vec<RuleState>>,
    stasis_rules: Mutex<Vec<(StasisRule, u32, bool)>>,
    stasis_log: Mutex<Vec<StasisRewritten>>,
    log: Mutex<Vec<Request>>,
    live: Mutex<HashMap<u64, Live>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A test panicking while holding a lock must not hide its own message behind a poison error.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, waking early when the proxy is dropped; false if it was.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stopped() {
                return false;
            }
            std::thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
        !self.stopped()
    }

    /// Registers a socket of connection `conn` (a clone of it) so it can be shut from outside.
    fn hold(&self, conn: u64, websocket: bool, s: &TcpStream) {
        let Ok(clone) = s.try_clone() else { return };
        if self.stopped() {
            let _ = clone.shutdown(Shutdown::Both);
        }
        let mut live = lock(&self.live);
        let entry = live.entry(conn).or_insert_with(|| Live { websocket, sockets: Vec::new() });
        entry.websocket |= websocket;
        entry.sockets.push(clone);
    }

    fn release(&self, conn: u64) {
        lock(&self.live).remove(&conn);
    }

    fn shut(&self, only_websockets: bool) -> usize {
        let live = lock(&self.live);
        let mut n = 0;
        for l in live.values().filter(|l| l.websocket || !only_websockets) {
            n += 1;
            for s in &l.sockets {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        n
    }

    /// The first active rule for this request takes it (and counts the hit).
    fn take_fault(&self, method: &str, path: &str) -> Option<Fault> {
        let mut rules = lock(&self.rules);
        let r = rules
            .iter_mut()
            .find(|r| r.active && r.rule.method.eq_ignore_ascii_case(method) && r.rule.path.matches(path))?;
        r.hits += 1;
        if let Times::Next(n) = r.rule.times {
            if r.hits >= n {
                r.active = false;
            }
        }
        Some(r.rule.fault.clone())
    }

    /// The first active StasisStart rule for this channel takes it (and counts the hit).
    fn take_stasis_rewrite(&self, start: &StasisStart) -> Option<StasisRewrite> {
        let mut rules = lock(&self.stasis_rules);
        let (rule, hits, active) =
            rules.iter_mut().find(|(r, _, active)| *active && start.channel_id.starts_with(r.channel_prefix.as_str()))?;
        *hits += 1;
        if let Times::Next(n) = rule.times {
            if *hits >= n {
                *active = false;
            }
        }
        Some(rule.rewrite.clone())
    }

    fn log_new(&self, head: &RequestHead, fault: Option<Fault>) -> u64 {
        let mut log = lock(&self.log);
        let seq = log.len() as u64 + 1;
        log.push(Request {
            seq,
            at: self.started.elapsed(),
            method: head.method.clone(),
            path: head.path.clone(),
            query: head.query.clone(),
            fault,
            upstream: None,
            outcome: Outcome::InFlight,
        });
        seq
    }

    fn log_update(&self, seq: u64, upstream: Option<u16>, outcome: Outcome) {
        let mut log = lock(&self.log);
        if let Some(r) = log.get_mut(seq as usize - 1) {
            if upstream.is_some() {
                r.upstream = upstream;
            }
            r.outcome = outcome;
        }
    }
}

/// The proxy. Dropping it stops it: every socket is shut, every thread joined.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port` of ARI's
    /// HTTP server, e.g. `127.0.0.1:8088`).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("fault proxy: bad upstream {upstream}: {e}"))
            .next()
            .expect("fault proxy: upstream resolves");
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault proxy: bind");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            refuse_ws: AtomicBool::new(false),
            freeze_ws: AtomicBool::new(false),
            ws_frozen: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            rules: Mutex::new(Vec::new()),
            stasis_rules: Mutex::new(Vec::new()),
            stasis_log: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn(move || accept_loop(listener, sh))
            .unwrap();
        FaultProxy { addr, shared, acceptor: Some(acceptor) }
    }

    /// The ARI base URL to give the service: `http://127.0.0.1:<port>/ari`.
    pub fn url(&self) -> String {
        format!("http://{}/ari", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut rules = lock(&self.shared.rules);
        rules.push(RuleState { rule, hits: 0, active: true });
        RuleId(rules.len() - 1)
    }

    /// How many requests the rule faulted.
    pub fn hits(&self, id: RuleId) -> u32 {
        lock(&self.shared.rules)[id.0].hits
    }

    /// Deactivates every rule, StasisStart rules too (their hit counts stay readable).
    pub fn clear_rules(&self) {
        for r in lock(&self.shared.rules).iter_mut() {
            r.active = false;
        }
        for r in lock(&self.shared.stasis_rules).iter_mut() {
            r.2 = false;
        }
    }

    /// Rewrites the StasisStarts the rule matches, on every piped WebSocket (the first active
    /// matching rule takes an event).
    pub fn add_stasis_rule(&self, rule: StasisRule) -> StasisRuleId {
        let mut rules = lock(&self.shared.stasis_rules);
        rules.push((rule, 0, true));
        StasisRuleId(rules.len() - 1)
    }

    /// How many StasisStarts the rule rewrote.
    pub fn stasis_hits(&self, id: StasisRuleId) -> u32 {
        lock(&self.shared.stasis_rules)[id.0].1
    }

    /// Every StasisStart rewritten so far, in order.
    pub fn stasis_rewrites(&self) -> Vec<StasisRewritten> {
        lock(&self.shared.stasis_log).clone()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    /// Requests whose path or query names `id`.
    pub fn requests_mentioning(&self, id: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.mentions(id)).collect()
    }

    /// Answer 503 to WebSocket upgrades while `refuse` is true (the open ones stay open; see
    /// [`FaultProxy::drop_websockets`]).
    pub fn refuse_websockets(&self, refuse: bool) {
        self.shared.refuse_ws.store(refuse, Ordering::SeqCst);
    }

    /// Shuts both sides of every piped WebSocket: the service sees its events connection end,
    /// Asterisk sees the app's WebSocket go away. Returns how many were open.
    pub fn drop_websockets(&self) -> usize {
        self.shared.shut(true)
    }

    /// `true`: every piped WebSocket goes silent in both directions (what either side sends is
    /// read and dropped; neither sees a close, even when the other side closes), and new
    /// WebSocket upgrades are held open without being forwarded or answered. `false`: new
    /// WebSockets are piped again; the frozen ones stay silent until they are closed (by
    /// [`FaultProxy::drop_websockets`] or dropping the proxy). Frozen ones still count in
    /// [`FaultProxy::open_websockets`]. Returns how many piped WebSockets were frozen now.
    pub fn freeze_websockets(&self, freeze: bool) -> usize {
        let flags = lock(&self.shared.ws_frozen);
        self.shared.freeze_ws.store(freeze, Ordering::SeqCst);
        if !freeze {
            return 0;
        }
        flags.iter().filter(|f| !f.swap(true, Ordering::SeqCst)).count()
    }

    /// WebSockets piped right now.
    pub fn open_websockets(&self) -> usize {
        lock(&self.shared.live).values().filter(|l| l.websocket).count()
    }

    /// Waits until no REST request is in flight (delayed requests have reached Asterisk and been
    /// answered); false after `limit`.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if !lock(&self.shared.log).iter().any(|r| r.outcome == Outcome::InFlight) {
                return true;
            }
            std::thread::sleep(TICK);
        }
        false
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblocks accept(); the loop sees the flag and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        self.shared.shut(false);
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

fn spawn(shared: &Arc<Shared>, name: &str, f: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new().name(name.into()).spawn(f).expect("fault proxy: spawn");
    let mut threads = lock(&shared.threads);
    threads.retain(|t| !t.is_finished());
    threads.push(handle);
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopped() {
            break;
        }
        let Ok(stream) = conn else {
            std::thread::sleep(TICK);
            continue;
        };
        let sh = shared.clone();
        spawn(&shared, "fault-proxy-conn", move || {
            let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
            handle_connection(&sh, id, stream);
            sh.release(id);
        });
    }
}

/// A parsed request head.
struct RequestHead {
    method: String,
    /// The request target as sent (path and query).
    target: String,
    version: String,
    path: String,
    query: String,
    /// Header lines as (name, value), in order.
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }

    fn content_length(&self) -> Result<usize, String> {
        if self.header("transfer-encoding").is_some() {
            return Err("chunked request bodies are not supported".into());
        }
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v.trim().parse().map_err(|_| format!("bad Content-Length {v:?}")),
        }
    }

    /// The head to send upstream: same request line and headers, but `Connection: close`.
    fn forwarded(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (n, v) in &self.headers {
            if !n.eq_ignore_ascii_case("connection") && !n.eq_ignore_ascii_case("keep-alive") {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Reads until the end of a message head; returns the head (with its blank line) and whatever
/// was read past it.
fn read_head(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the end of the head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until `body` holds `len` bytes.
fn read_exact_into(s: &mut TcpStream, body: &mut Vec<u8>, len: usize) -> io::Result<()> {
    if len > MAX_BODY {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "body too large"));
    }
    let mut chunk = [0u8; 8192];
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the end of the body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(())
}

fn parse_request_head(head: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn simple_response(code: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason_phrase(code),
        body.len()
    )
    .into_bytes()
}

/// True when the client has closed its side (it gave up waiting), checked without blocking.
fn client_gone(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let gone = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    gone
}

fn handle_connection(shared: &Arc<Shared>, conn: u64, mut client: TcpStream) {
    if shared.stopped() {
        return;
    }
    shared.hold(conn, false, &client);
    let _ = client.set_read_timeout(Some(CLIENT_READ_TIMEOUT));
    let _ = client.set_nodelay(true);
    let Ok((head_bytes, mut body)) = read_head(&mut client) else { return };
    let Some(head) = parse_request_head(&head_bytes) else {
        let _ = client.write_all(&simple_response(400, r#"{"message":"fault proxy: bad request head"}"#));
        return;
    };
    if head.is_websocket_upgrade() {
        return websocket(shared, conn, client, &head_bytes, &body, &head);
    }
    let fault = shared.take_fault(&head.method, &head.path);
    let seq = shared.log_new(&head, fault.clone());
    let len = match head.content_length() {
        Ok(n) => n,
        Err(e) => {
            let _ = client.write_all(&simple_response(501, &format!(r#"{{"message":"fault proxy: {e}"}}"#)));
            shared.log_update(seq, None, Outcome::Answered(501));
            return;
        }
    };
    if read_exact_into(&mut client, &mut body, len).is_err() {
        shared.log_update(seq, None, Outcome::Reset);
        return;
    }
    match fault {
        Some(Fault::Status(code, text)) => {
            let _ = client.write_all(&simple_response(code, &text));
            shared.log_update(seq, None, Outcome::Answered(code));
        }
        Some(Fault::Reset) => {
            let _ = client.shutdown(Shutdown::Both);
            shared.log_update(seq, None, Outcome::Reset);
        }
        Some(Fault::Delay(d)) => {
            if !shared.sleep(d) {
                shared.log_update(seq, None, Outcome::Reset);
                return;
            }
            forward_and_answer(shared, conn, seq, &mut client, &head, &body, Duration::ZERO);
        }
        Some(Fault::DelayResponse(d)) => forward_and_answer(shared, conn, seq, &mut client, &head, &body, d),
        None => forward_and_answer(shared, conn, seq, &mut client, &head, &body, Duration::ZERO),
    }
}

/// Forwards the request on a fresh upstream connection, waits `hold`, then answers the client
/// with what Asterisk said.
fn forward_and_answer(
    shared: &Arc<Shared>,
    conn: u64,
    seq: u64,
    client: &mut TcpStream,
    head: &RequestHead,
    body: &[u8],
    hold: Duration,
) {
    match forward(shared, conn, head, body) {
        Ok((status, response)) => {
            shared.log_update(seq, Some(status), Outcome::InFlight);
            if !shared.sleep(hold) {
                shared.log_update(seq, Some(status), Outcome::Reset);
                return;
            }
            if client_gone(client) {
                shared.log_update(seq, Some(status), Outcome::ClientGone(status));
                return;
            }
            let outcome = match client.write_all(&response) {
                Ok(()) => Outcome::Answered(status),
                Err(_) => Outcome::ClientGone(status),
            };
            let _ = client.shutdown(Shutdown::Write);
            shared.log_update(seq, Some(status), outcome);
        }
        Err(e) => {
            let _ = client.write_all(&simple_response(502, r#"{"message":"fault proxy: upstream failed"}"#));
            shared.log_update(seq, None, Outcome::UpstreamFailed(e));
        }
    }
}

/// Sends the request to Asterisk and reads its whole answer; returns the status and the answer
/// to give the client (head rewritten to `Connection: close`).
fn forward(shared: &Arc<Shared>, conn: u64, head: &RequestHead, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut up = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    shared.hold(conn, false, &up);
    let _ = up.set_read_timeout(Some(UPSTREAM_TIMEOUT));
    let _ = up.set_write_timeout(Some(UPSTREAM_TIMEOUT));
    let _ = up.set_nodelay(true);
    let mut req = head.forwarded();
    req.extend_from_slice(body);
    up.write_all(&req).map_err(|e| format!("send: {e}"))?;
    let (resp_head, mut resp_body) = read_head(&mut up).map_err(|e| format!("answer head: {e}"))?;
    let text = std::str::from_utf8(&resp_head).map_err(|_| "answer head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_string();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(&str, &str)> =
        lines.filter(|l| !l.is_empty()).filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim(), v.trim())).collect();
    let content_length = headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| *v);
    let bodyless = status == 204 || status == 304 || (100..200).contains(&status) || head.method == "HEAD";
    match content_length {
        Some(v) => {
            let len: usize = v.parse().map_err(|_| format!("bad answer Content-Length {v:?}"))?;
            read_exact_into(&mut up, &mut resp_body, len).map_err(|e| format!("answer body: {e}"))?;
        }
        None if bodyless => resp_body.clear(),
        // No length: the body (raw, maybe chunked) ends when Asterisk closes, as asked.
        None => {
            let mut rest = Vec::new();
            up.take(MAX_BODY as u64).read_to_end(&mut rest).map_err(|e| format!("answer body: {e}"))?;
            resp_body.extend_from_slice(&rest);
        }
    }
    let mut out = format!("{status_line}\r\n");
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case("connection") && !n.eq_ignore_ascii_case("keep-alive") {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&resp_body);
    Ok((status, out))
}

/// Pipes an upgraded connection both ways, or refuses it.
fn websocket(
    shared: &Arc<Shared>,
    conn: u64,
    mut client: TcpStream,
    head_bytes: &[u8],
    rest: &[u8],
    head: &RequestHead,
) {
    let seq = shared.log_new(head, None);
    if shared.freeze_ws.load(Ordering::SeqCst) {
        shared.hold(conn, true, &client);
        shared.log_update(seq, None, Outcome::WebSocketHeld);
        hold_silent(shared, &mut client);
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    if shared.refuse_ws.load(Ordering::SeqCst) {
        let _ = client.write_all(&simple_response(503, r#"{"message":"fault proxy: WebSockets refused"}"#));
        shared.log_update(seq, None, Outcome::WebSocketRefused);
        return;
    }
    let mut up = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => {
            let _ = client.write_all(&simple_response(502, r#"{"message":"fault proxy: upstream failed"}"#));
            shared.log_update(seq, None, Outcome::UpstreamFailed(format!("connect: {e}")));
            return;
        }
    };
    let _ = up.set_nodelay(true);
    if up.write_all(head_bytes).and_then(|()| up.write_all(rest)).is_err() {
        shared.log_update(seq, None, Outcome::UpstreamFailed("send".into()));
        return;
    }
    // Idle WebSockets are normal: no read timeouts; the pipes end when a side closes or the
    // proxy shuts the sockets.
    let _ = client.set_read_timeout(None);
    shared.hold(conn, true, &client);
    shared.hold(conn, true, &up);
    shared.log_update(seq, None, Outcome::WebSocketOpen);
    let (Ok(c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
        shared.log_update(seq, None, Outcome::WebSocketClosed);
        return;
    };
    // Registered before the global flag is read, under the lock freeze_websockets takes: a
    // WebSocket set up during a freeze is frozen either here or there.
    let frozen = Arc::new(AtomicBool::new(false));
    {
        let mut flags = lock(&shared.ws_frozen);
        flags.retain(|f| Arc::strong_count(f) > 1);
        flags.push(frozen.clone());
        if shared.freeze_ws.load(Ordering::SeqCst) {
            frozen.store(true, Ordering::SeqCst);
        }
    }
    let frozen_down = frozen.clone();
    let sh = shared.clone();
    let down = std::thread::Builder::new()
        .name("fault-proxy-ws-down".into())
        .spawn(move || {
            // A frozen link does not pass the end on either: the other side keeps its socket.
            if !pipe_down(&sh, &mut u2, c2, &frozen_down) {
                let _ = u2.shutdown(Shutdown::Both);
            }
        })
        .expect("fault proxy: spawn");
    if !pipe(&mut client, &frozen, |bytes| up.write_all(bytes).is_ok()) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
    }
    let _ = down.join();
    shared.log_update(seq, None, Outcome::WebSocketClosed);
}

/// Hands what `from` sends to `write` until `from` ends or `write` fails (returns false);
/// while `frozen` is set, drops what it reads instead. Returns whether the link was frozen
/// when it ended.
fn pipe(from: &mut TcpStream, frozen: &AtomicBool, mut write: impl FnMut(&[u8]) -> bool) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if !write(&buf[..n]) {
            break;
        }
    }
    frozen.load(Ordering::SeqCst)
}

/// The client's end of a WebSocket and what was written to it, shared by the pipe from
/// Asterisk and the threads that write delayed frames.
struct DownWriter {
    client: TcpStream,
    stream: Downstream,
}

/// [`pipe`] from Asterisk to the client, reading frames: StasisStarts a rule matches are
/// rewritten, every other byte is written as it came. Shuts the client's socket at the end
/// unless frozen; returns whether the link was frozen when it ended.
fn pipe_down(shared: &Arc<Shared>, from: &mut TcpStream, client: TcpStream, frozen: &Arc<AtomicBool>) -> bool {
    let writer = Arc::new(Mutex::new(DownWriter { client, stream: Downstream::new(MAX_WS_FRAME) }));
    let frozen_now = pipe(from, frozen, |bytes| {
        let mut w = lock(&writer);
        let outs = w.stream.feed(bytes, &mut |start| shared.take_stasis_rewrite(start));
        let mut ok = true;
        // The rewrite log's entry of the last rewrite, which a delayed copy belongs to.
        let mut last = 0;
        for out in outs {
            match out {
                Out::Send(bytes) => ok &= w.client.write_all(&bytes).is_ok(),
                Out::Rewrote { start, rewrite } => {
                    let mut log = lock(&shared.stasis_log);
                    last = log.len();
                    log.push(StasisRewritten {
                        channel_id: start.channel_id,
                        rewrite,
                        asterisk_timestamp: start.timestamp,
                        sent_at: Instant::now(),
                        again_at: None,
                    });
                }
                Out::SendLater(frame, delay) => {
                    let (sh, wr, fr) = (shared.clone(), writer.clone(), frozen.clone());
                    spawn(shared, "fault-proxy-ws-later", move || send_later(&sh, &wr, &fr, frame, delay, last));
                }
            }
        }
        ok
    });
    if !frozen_now {
        let _ = lock(&writer).client.shutdown(Shutdown::Both);
    }
    frozen_now
}

/// Writes `frame` to the client `delay` from now, between two frames and outside any
/// fragmented message; records it in the rewrite log's entry `index`. Dropped when the link is
/// frozen, the stream is passed raw, or the proxy stops.
fn send_later(shared: &Shared, writer: &Mutex<DownWriter>, frozen: &AtomicBool, frame: Vec<u8>, delay: Duration, index: usize) {
    if !shared.sleep(delay) {
        return;
    }
    let end = Instant::now() + INSERT_WAIT;
    while Instant::now() < end {
        {
            let mut w = lock(writer);
            match w.stream.insert() {
                Insert::Now => {
                    if frozen.load(Ordering::SeqCst) || w.client.write_all(&frame).is_err() {
                        return;
                    }
                    if let Some(r) = lock(&shared.stasis_log).get_mut(index) {
                        r.again_at = Some(Instant::now());
                    }
                    return;
                }
                Insert::Never => return,
                Insert::Wait => {}
            }
        }
        if !shared.sleep(TICK) {
            return;
        }
    }
}

/// Keeps a held (frozen) upgrade's connection open, reading and dropping what the client
/// sends, until the client closes it or the proxy stops.
fn hold_silent(shared: &Shared, client: &mut TcpStream) {
    let _ = client.set_read_timeout(Some(TICK * 10));
    let mut buf = [0u8; 4096];
    while !shared.stopped() {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}
